"""The config of `vitplas select` (and of train=[auto]'s scoring): no torch here, so that a
command's --help, which lists every key from this class, stays fast."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from vitplas import protocol as protocols
from vitplas.config import ConfigError, at_least

FORMATS = ("peft", "timm", "names")  # the export formats (vitplas.selection.export)


@dataclass
class SelectConfig:
    """What `vitplas select` scores, on which data, and the budget it chooses under."""

    model: str = "dinov2-s14"  # model spec (preset, timm name, ARCH@FILE, run folder, HF id)
    random_init: bool = False  # random weights on purpose (never a silent fallback)
    allow_unfinished: bool = False  # a model that is a finetuning run without DONE (still
    # training, stopped) is used as it is, marked UNFINISHED in the manifest, not refused
    img_size: int | None = None  # input size (None: the model's own)
    protocol: protocols.Name = protocols.DEFAULT  # preprocessing: the model's or the original's
    target: str = "fashion-mnist"  # the downstream dataset the components are scored on
    data_root: str | None = None  # dataset folder (None: $VITPLAS_DATA, then <VITPLAS_HOME>/data)
    criteria: list[str] = field(default_factory=list)  # criteria to score (empty: the defaults)
    budget: float = 0.35  # trained fraction of the blocks' parameters, in (0, 1]
    granularity: Literal["component", "layer"] = "component"  # pick component types, or
    # (layer, component) units
    rule: Literal["prefix", "fill"] = "prefix"  # prefix: the longest prefix of the ranking that
    # fits; fill: a greedy knapsack fill (may train units ranked below one left out)
    reference: str | None = None  # plasticity: the reference stream paired with the target's
    # train split (None: photos for an image model, wordnet-glosses for a text model)
    inputs: Literal["embedding", "hidden", "insitu"] = "embedding"  # plasticity inputs
    pairs: int = 128  # plasticity: image (text) pairs
    pair_lengths: Literal["any", "equal"] = "any"  # plasticity on texts: any (pairs as drawn)
    # or equal (each pair's two texts of one real length, as `vitplas plasticity` pairs them)
    grad_batches: int = 2  # gradient and FPS criteria: target train batches (gradients one
    # image at a time) through a fresh head
    batch_size: int = 16  # images (texts) per batch
    max_length: int = 128  # a text target: each text tokenised by the model's tokenizer to this
    # many tokens (as finetuning's max_length)
    seed: int = 0  # seed of the data draws, the fresh head and the random control
    device: str = "auto"  # auto, cpu or cuda
    export: list[str] = field(default_factory=list)  # also write each pick for peft, timm
    # and/or names under export/<criterion>/ (vitplas.selection.export); a rerun may add formats

    def validate(self) -> None:
        from vitplas.selection.budget import RULES
        from vitplas.selection.criteria import parse_criteria

        try:
            self.criteria = parse_criteria(self.criteria)
        except ValueError as err:
            raise ConfigError(f"criteria: {err}") from err
        if not 0 < self.budget <= 1:
            raise ConfigError(f"budget is a fraction in (0, 1], got {self.budget}")
        if self.rule not in RULES:
            raise ConfigError(f"rule '{self.rule}' is unknown; choose {' or '.join(RULES)}")
        try:
            self.export = parse_formats(self.export)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        at_least(self, 1, "pairs", "grad_batches", "batch_size", "max_length")


def parse_formats(text: str | Sequence[str] | None) -> list[str]:
    """'peft,timm' -> ['peft', 'timm']; a ValueError naming the known formats otherwise."""
    if not text:
        return []
    items = [text] if isinstance(text, str) else list(text)
    out = [f.strip().lower() for raw in items for f in str(raw).split(",") if f.strip()]
    unknown = [f for f in out if f not in FORMATS]
    if unknown:
        known = ", ".join(FORMATS)
        raise ValueError(f"export format '{unknown[0]}' is unknown; choose from {known}")
    return list(dict.fromkeys(out))
