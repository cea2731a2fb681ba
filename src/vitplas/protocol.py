"""What `protocol: paper` and `protocol: model` mean, item by item: one record per protocol.

Every job reads its recipe details from here (README "Where the paper's protocol is
questionable"); a branch on a protocol's name elsewhere is a missing field of this table.

    item                paper (the original release)              model (the plain default)
    mean/std            ImageNet's (constants.IMAGENET_*)         the checkpoint's own
    interpolation       bilinear                                  the checkpoint's (bicubic)
    crop_pct            1.0: Resize(size) + CenterCrop(size)      the checkpoint's (0.875)
    warmup              lr * k / W (update 0 uses lr 0)           lr * (k + 1) / W
    new head            torch.nn.Linear's default init            timm's (trunc normal 0.02)
    amp: auto           float32                                   bf16 autocast on CUDA
    val_split: auto     seeded (moves with the run's seed)        fixed (own generator)
    test split          NumPy seed 42 permutation, first 80%      our fixed generator
    linear probe        L2-normalised features, max_iter 5000,    plain features, max_iter
                        augmented shuffled train features,        1000, eval transform, every
                        last partial batch dropped                train image
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vitplas.constants import IMAGENET_MEAN, IMAGENET_STD, Triple

Name = Literal["model", "paper"]  # the type of every config's `protocol` key
DEFAULT: Name = "model"


@dataclass(frozen=True)
class Protocol:
    """One protocol's recipe. None in a preprocessing field: the checkpoint's own value."""

    name: str
    mean: Triple | None  # None: the checkpoint's mean
    std: Triple | None
    interpolation: str | None
    crop_pct: float | None
    warmup: Literal["paper", "ahead"]  # training.optim.lr_at's rule
    head_init: Literal["torch", "timm"]  # a new classification head's initialisation
    amp_auto: Literal["none", "auto"]  # what finetuning's `amp: auto` resolves to
    val_split: Literal["seeded", "fixed"]  # what `val_split: auto` resolves to
    test_split: Literal["paper", "fixed"]  # how a dataset without a test split is carved
    probe_l2: bool  # each pooled probe feature scaled to unit L2 norm
    probe_max_iter: int  # the probe's default max_iter
    probe_augmented_train: bool  # probe train features drawn with the training augmentation,
    # shuffled, the last partial batch dropped


PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol(
        name="paper",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation="bilinear",  # torchvision's default, used by the original everywhere
        crop_pct=1.0,  # Resize(224) + CenterCrop(224): the short side is the crop
        warmup="paper",
        head_init="torch",
        amp_auto="none",
        val_split="seeded",
        test_split="paper",
        probe_l2=True,
        probe_max_iter=5000,
        probe_augmented_train=True,
    ),
    "model": Protocol(
        name="model",
        mean=None,
        std=None,
        interpolation=None,
        crop_pct=None,
        warmup="ahead",
        head_init="timm",
        amp_auto="auto",
        val_split="fixed",
        test_split="fixed",
        probe_l2=False,
        probe_max_iter=1000,
        probe_augmented_train=False,
    ),
}
NAMES = tuple(PROTOCOLS)


def get(name: str) -> Protocol:
    """The record of protocol `name`; an unknown name is a ValueError naming the known ones."""
    if name not in PROTOCOLS:
        raise ValueError(f"protocol '{name}' is unknown; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
