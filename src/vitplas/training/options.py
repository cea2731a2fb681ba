"""Option records of a finetuning config (no torch here: `vitplas finetune --help` imports this
module): how train=[auto] chooses, and the LoRA rival's options (models.options)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vitplas.models.options import LoraOptions

__all__ = ["LoraOptions", "SelectOptions"]


@dataclass
class SelectOptions:
    """How train=[auto] chooses (vitplas.selection): criterion, budget fraction, granularity."""

    criterion: str = "plasticity"  # criterion that ranks the components (vitplas select)
    budget: float = 0.35  # trained fraction of the blocks' parameters, in (0, 1]
    granularity: str = "component"  # component (a type in every block) or layer
    extra: dict = field(default_factory=dict)  # SelectConfig keys (pairs, grad_batches, ...)
    resolved: bool = False  # set when train=[auto] was resolved into the train list
