"""Token streams of a text transformer: the embedding output and each block's input, from token
ids and a padding mask, as the Hugging Face model's own forward computes them (plasticity's
`embedding` and `hidden` input modes for the text families of models.families).

input_ids (B, L) int64 and attention_mask (B, L) with 1 for a real token and 0 for padding
(None: every token real). Positions are 0..L-1 as the model assigns them without position ids
(RoBERTa: counted from its padding index), so sequences are right-padded as tokenizers pad
them. Block l reads the attention mask the model makes of the padding mask (bidirectional for
BERT, causal for GPT-2), families_ops.MASKS.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vitplas.models.components import ComponentMap
from vitplas.models.errors import ModelError


def _check(cmap: ComponentMap, input_ids: torch.Tensor, mask: torch.Tensor | None) -> None:
    if cmap.family.modality != "text":
        raise TypeError(f"this {cmap.family.name} model reads images, not token ids")
    if input_ids.ndim != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"input_ids must be a (B, L) integer batch, got {input_ids.dtype} "
            f"{tuple(input_ids.shape)}"
        )
    if mask is not None and mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(mask.shape)} differs from input_ids {tuple(input_ids.shape)}"
        )


def embed_tokens(
    cmap: ComponentMap, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The embedding output (B, L, D): what the first block reads (the mask is checked only:
    the embeddings of a token do not depend on the others)."""
    _check(cmap, input_ids, attention_mask)
    return cmap.embed(input_ids)


def block_inputs(
    cmap: ComponentMap, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """[the input (B, L, D) of block l for l in 0..depth-1]: the embedding output, then each
    block's output on the previous one with the model's attention mask."""
    h = embed_tokens(cmap, input_ids, attention_mask)
    inputs = [h]
    for layer in range(cmap.depth - 1):
        h = cmap.forward_block(layer, h, attention_mask)
        inputs.append(h)
    return inputs


def load_tokenizer(loaded: Any) -> Any:
    """The Hugging Face tokenizer of a text LoadedModel (models.hf_text.load_tokenizer: its
    `tokenizer` folder or hub id, right-padding, GPT-2's eos as its pad); an image model is a
    ModelError."""
    from vitplas.models.hf_text import load_tokenizer as from_source

    if loaded.modality != "text":
        raise ModelError(f"{loaded.spec} reads images: it has no tokenizer")
    return from_source(loaded.tokenizer, loaded.model)


def is_token_batch(x: torch.Tensor) -> bool:
    """Whether `x` is a data.text.pack_tokens batch (N, 2, L) of integers (images: float)."""
    return x.ndim == 3 and x.shape[1] == 2 and not torch.is_floating_point(x)


def forward_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class logits (N, classes) of `model` on a batch: images (N, C, H, W) through the model's
    own call, a data.text.pack_tokens batch (N, 2, L) through a transformers sequence
    classifier (or its DDP / compiled wrapper) as input_ids and attention_mask."""
    if not is_token_batch(x):
        return model(x)
    return model(input_ids=x[:, 0], attention_mask=x[:, 1]).logits


def real_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What `model` outputs on a batch, at what a reader of it sees: images (N, C, H, W) through
    the model's own call; a pack_tokens batch (N, 2, L) as input_ids and attention_mask, a
    sequence classifier's logits (N, classes), else the last hidden state at the real tokens
    only (R, D), R the batch's real tokens (pad positions are read by nothing)."""
    if not is_token_batch(x):
        return model(x)
    ids, mask = x[:, 0], x[:, 1]
    out = model(input_ids=ids, attention_mask=mask)
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out.last_hidden_state[mask.bool()]
