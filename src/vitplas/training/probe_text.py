"""Linear probes of text transformers: what training.probe needs besides the image path.

A text set is read as finetuning reads it (training.sources.load_text_sources: the model as its
sequence classifier, each split tokenised once by the model's own tokenizer to max_length,
items (tokens (2, L) int64, label) as data.pack_tokens packs them, max_length checked against
the model's positions), and the model is called as finetuning calls it
(models.text.forward_logits: input_ids and attention_mask). A feature is pooled over the real
tokens only, the positions where the attention mask is 1, so padding a text further or changing
the pad id changes no feature:

- `mean`: the mean over the real tokens, sum_t m_t h_t / sum_t m_t;
- `cls`: the token the family's sequence classifier reads (Family.classifier_token): BERT's
  first token ([CLS], which its pooler and classifier read), GPT-2's last real token (which
  GPT2ForSequenceClassification scores).

`protocol: paper` is the original image release's probe (L2-normalised features of augmented
train images) and is refused for a text set in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from vitplas.config import ConfigError
from vitplas.training.config import FinetuneConfig, ProbeConfig

# Family.classifier_token -> (B, L) attention mask -> (B,) position of the token it names
READ_TOKEN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "first": lambda mask: mask.argmax(dim=1),  # the first real position
    "last": lambda mask: mask.shape[1] - 1 - mask.flip(1).argmax(dim=1),  # the last real one
}


def real_token_mask(tokens: torch.Tensor) -> torch.Tensor:
    """The attention mask (B, L) of a data.pack_tokens batch (B, 2, L); a text with no real
    token (nothing to pool) is a ValueError."""
    mask = tokens[:, 1]
    if not bool(mask.any(dim=1).all()):
        raise ValueError("a text has no real token (an empty text): it has no feature to pool")
    return mask


def pool_real_tokens(
    tokens: torch.Tensor, mask: torch.Tensor, pool: str, classifier_token: str = "first"
) -> torch.Tensor:
    """(B, D) features of tokens (B, L, D) over the real positions of mask (B, L): their mean
    (`pool` mean) or the token READ_TOKEN[classifier_token] names (`pool` cls)."""
    if pool == "cls":
        where = READ_TOKEN[classifier_token](mask)  # (B,)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), where]  # (B, D)
    real = mask.bool()[:, :, None]  # (B, L, 1)
    total = torch.where(real, tokens, tokens.new_zeros(()))  # a pad value, even NaN, is 0
    return total.sum(dim=1) / real.sum(dim=1).to(tokens.dtype)  # (B, D)


def text_probe_inputs(
    cfg: ProbeConfig, finetune: FinetuneConfig
) -> tuple[nn.Module, list[DataLoader], dict[str, Any]]:
    """(model, [train, test] loaders, description) of a probe on a text set: finetuning's
    model and tokenised splits (load_text_sources under `finetune`), each split capped by
    max_train / max_test to a fixed random subset (seed 0) as an image split is."""
    from vitplas.training.sources import load_text_sources
    from vitplas.training.stream import eval_loader

    if cfg.protocol == "paper":
        raise ConfigError(
            "protocol=paper is the original image release's probe (L2-normalised features of "
            f"augmented train images); {cfg.dataset} is a text set: probe it under protocol=model"
        )
    sources = load_text_sources(finetune, ("train", "test"))
    splits = ((sources.train, cfg.max_train), (sources.test, cfg.max_test))
    loaders = [
        eval_loader(data, cfg.batch_size, max_samples=cap, num_workers=cfg.num_workers)
        for data, cap in splits
    ]
    return sources.model, loaders, sources.description
