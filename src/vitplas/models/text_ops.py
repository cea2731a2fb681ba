"""The family registry's code for Hugging Face text transformers (BERT-style encoders, GPT-2):
embedding outputs from token ids, the attention masks the blocks receive, and the modules the
plasticity estimator calls on a (2B, L, D) token batch. families_ops merges these tables into
its own (EMBEDDERS, PROBES) and holds MASKS.

- EMBEDDERS[kind](model, input_ids (B, L)) -> tokens (B, L, D): what the first block reads,
  as the model's forward computes it without position or token-type ids. BERT: word + position
  + token type 0 embeddings, then the embedding LayerNorm (RoBERTa: positions counted from its
  padding index, pad tokens at the padding position); GPT-2: wte + wpe at positions 0..L-1.
- MASKS[kind](config, h (B, L, D), attention_mask (B, L): 1 a real token, 0 padding, or None)
  -> the mask the model passes its blocks, from transformers' masking_utils for the config's
  attention implementation (a 4D boolean or additive mask, or None where that implementation
  needs none). "bert": bidirectional (causal for a BERT built as a decoder); "causal": GPT-2.
- PROBES[kind](block, parts) -> the module the estimator calls for one component, `parts` the
  block's modules at that component's present paths (families.BlockSpec.parts):
    bert_mha  MaskedAttention(attention.self, attention.output.dense): the attention with its
              output projection, without the residual and the post-LN after it;
    gpt2_mha  MaskedAttention(attn): c_attn, causal softmax attention, c_proj;
    conv1d    a GPT-2 Conv1D (x @ W + b, W (in, out)) as an nn.Linear on W^T (mlp.c_fc, c_proj),
              so fc1 / fc2 are linear maps the estimator and the bounds read as nn.Linear.
  MaskedAttention is called f(x, attention_mask=None) (mask (B, L) as above; None: every token
  real); its forward hooks fire on the model's own attention call with f's output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from vitplas.models.hooks import ViewLinear, frozen_linear, hook_via


def _embed_bert(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    return model.base_model.embeddings(input_ids=input_ids)  # (B, L, D), LayerNorm included


def _embed_gpt2(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    base = model.base_model
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]  # (1, L)
    return base.drop(base.wte(input_ids) + base.wpe(positions))  # (B, L, D)


EMBEDDERS: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "bert": _embed_bert,
    "gpt2": _embed_gpt2,
}


def _causal(config: Any, h: torch.Tensor, attention_mask: torch.Tensor | None) -> Any:
    from transformers.masking_utils import create_causal_mask

    return create_causal_mask(
        config=config, inputs_embeds=h, attention_mask=attention_mask, cache=None
    )


def _bert(config: Any, h: torch.Tensor, attention_mask: torch.Tensor | None) -> Any:
    if config.is_decoder:
        return _causal(config, h, attention_mask)
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=config, inputs_embeds=h, attention_mask=attention_mask)


MASKS: dict[str, Callable[[Any, torch.Tensor, torch.Tensor | None], Any]] = {
    "bert": _bert,
    "causal": _causal,
}


def conv1d_linear(conv: nn.Module) -> nn.Linear:
    """A Conv1D (weight (in, out)) as an nn.Linear with weight (out, in), sharing its storage (no
    gradient); its forward hooks fire when the model runs `conv`, with conv's output."""
    return ViewLinear(conv.weight.T, conv.bias, conv, lambda _inputs, out: out)


class MaskedAttention(nn.Module):
    """One block's self-attention with its output projection: f(x) = proj(attention(x, mask)),
    x (B, L, D) -> (B, L, D), no residual and no norm. `projection` None: `attention` applies
    its own (GPT-2's c_proj) and returns (output, weights). `mask`: a MASKS kind. parts():
    (q|k|v as one (3A, D) linear with its bias, the output projection, the number of heads)."""

    def __init__(
        self,
        attention: nn.Module,
        projection: nn.Module | None,
        mask: str,
        parts: Callable[[], tuple[nn.Linear, nn.Linear, int]],
    ) -> None:
        super().__init__()
        self.attention = attention
        self.projection = projection
        self.mask = mask
        self._parts = parts

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = MASKS[self.mask](self.attention.config, x, attention_mask)
        out = self.attention(x, attention_mask=mask)[0]  # (B, L, A)
        return out if self.projection is None else self.projection(out)

    def attention_parts(self) -> tuple[nn.Linear, nn.Linear, int]:
        return self._parts()

    def register_forward_hook(self, hook, *args, **kwargs):  # type: ignore[override]
        if self.projection is not None:  # its output is f's: the model's own call
            return hook_via(self, self.projection, lambda _i, out: out, hook, *args, **kwargs)
        return hook_via(self, self.attention, lambda _i, out: out[0], hook, *args, **kwargs)

    def input_site(self) -> tuple[nn.Module, str]:
        return self.attention, "input"


def _bert_mha(_block: nn.Module, parts: Sequence[nn.Module]) -> MaskedAttention:
    attention, projection = parts  # attention.self, attention.output.dense

    def qkv_proj() -> tuple[nn.Linear, nn.Linear, int]:
        linears = (attention.query, attention.key, attention.value)
        weight = torch.cat([lin.weight for lin in linears])  # (3A, D)
        bias = (
            torch.cat([lin.bias for lin in linears]) if attention.query.bias is not None else None
        )
        return frozen_linear(weight, bias), projection, attention.num_attention_heads

    return MaskedAttention(attention, projection, "bert", qkv_proj)


def _gpt2_mha(_block: nn.Module, parts: Sequence[nn.Module]) -> MaskedAttention:
    (attn,) = parts

    def qkv_proj() -> tuple[nn.Linear, nn.Linear, int]:
        return conv1d_linear(attn.c_attn), conv1d_linear(attn.c_proj), attn.num_heads

    return MaskedAttention(attn, None, "causal", qkv_proj)


PROBES: dict[str, Callable[[nn.Module, Sequence[nn.Module]], nn.Module]] = {
    "bert_mha": _bert_mha,
    "gpt2_mha": _gpt2_mha,
    "conv1d": lambda _block, parts: conv1d_linear(parts[0]),
}
