"""Option records of the model layer that configs hold (no torch here: a config's --help
imports this module)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoraOptions:
    """LoRA rival (the original's branch: r=8, alpha=16, AdamW at lr/100)."""

    r: int = 8  # LoRA rank
    alpha: int = 16  # LoRA scaling alpha (the update is scaled by alpha / r)
    dropout: float = 0.0  # dropout on the LoRA branch
