"""The paper's splits, drawn by a generator whose seed is fixed and independent of training seeds.

Rules (a dataset's `split_rule`), with n images in the part read:
    official        train / val / test are the dataset's own (Flowers102)
    val-from-train  val = 20% of the official train, train = the other 80%; test official
    from-all        one pool: test = 20%, then val = 20% of the rest (CIFAR-10-C, DomainNet:
                    10,000 images -> 8,000 train+val / 2,000 test -> 6,400 / 1,600 / 2,000)
    stream          each split is its own stream read as is (ImageNet val, photo crops)

A labelled pool with no split of its own (the offline text sets) has its test part carved by
its reader with `stratified_split` (20% of each class, fixed seed), then val-from-train.

Two choices change how a carving is drawn (a `SplitPlan`; the `paper` protocol picks the
original's, PAPER.md section 7):
    test  fixed   from-all test = 20% drawn by our own generator (SPLIT_SEED)
          paper   the original's: NumPy's global generator seeded 42, permutation(n), the first
                  int(0.8 n) indices train, the rest test, each sorted; the global state is
                  restored afterwards (CIFAR-10-C, DomainNet)
    val   fixed   val = 20% of the train part drawn by our generator: it never moves with the
                  training seed (our choice, DESIGN.md)
          seeded  the original's torch `random_split` with the run's seed: a fresh generator
                  seeded with it, randperm(n), first int(0.8 n) train, the rest val (the
                  validation set moves with the seed)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from vitplas import protocol as protocols

SPLIT_SEED = 0  # never the training seed: the val set must not move when the seed does
HELD_FRACTION = 0.2
RULES = ("official", "val-from-train", "from-all", "stream")

_SALT_TEST = 1  # distinct generator streams for the two carvings
_SALT_VAL = 2
PAPER_TEST_SEED = 42  # the original's NumPy global seed for the CIFAR-10-C / DomainNet split


@dataclass(frozen=True)
class SplitPlan:
    """How the test and val carvings are drawn (module docstring); `seed` is the run's seed,
    used only by val='seeded'."""

    test: Literal["fixed", "paper"] = "fixed"
    val: Literal["fixed", "seeded"] = "fixed"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.test not in ("fixed", "paper") or self.val not in ("fixed", "seeded"):
            raise ValueError(
                f"split plan test='{self.test}', val='{self.val}' unknown; "
                "test is fixed or paper, val is fixed or seeded"
            )


FIXED = SplitPlan()


def plan_for(protocol: str, val: str = "auto", seed: int = 0) -> SplitPlan:
    """The split plan of a protocol: paper = the original's test carving and, with val
    'auto', its seeded val split; model = ours (fixed). `val` fixed/seeded overrides."""
    recipe = protocols.get(protocol)
    val = recipe.val_split if val == "auto" else val
    return SplitPlan(test=recipe.test_split, val=val, seed=seed)  # type: ignore[arg-type]


def paper_test_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) of range(n) by the original's rule, each sorted int64 (module docstring).

    NumPy's global generator is seeded with 42 for the draw and given back its state after,
    so no other user of np.random sees a difference.
    """
    state = np.random.get_state()
    try:
        np.random.seed(PAPER_TEST_SEED)
        order = np.random.permutation(n)
    finally:
        np.random.set_state(state)
    n_train = int(0.8 * n)
    return np.sort(order[:n_train]).astype(np.int64), np.sort(order[n_train:]).astype(np.int64)


def seeded_val_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) of range(n) as torch's random_split(range(n), [int(0.8 n), rest]) draws it
    from a generator seeded with `seed`; each sorted int64."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).numpy()
    n_train = int(0.8 * n)
    return np.sort(order[:n_train]).astype(np.int64), np.sort(order[n_train:]).astype(np.int64)


def split_indices(
    n: int, held_fraction: float = HELD_FRACTION, seed: int = SPLIT_SEED, salt: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split range(n) into (kept, held), each sorted int64; len(held) = round(n * held_fraction).

    The permutation depends on (seed, salt, n) only.
    """
    if not 0.0 <= held_fraction <= 1.0:
        raise ValueError(f"held_fraction must be in [0, 1], got {held_fraction}")
    order = np.random.default_rng([seed, salt]).permutation(n)
    n_held = round(n * held_fraction)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def stratified_split(
    labels: np.ndarray, held_fraction: float = HELD_FRACTION, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Split range(len(labels)) into (kept, held), each sorted int64, with round(n_c *
    held_fraction) of each class c held: the class proportions survive in both parts.

    One generator of (seed, salt) draws the classes in sorted order, so the split depends on
    the labels and the seed only (not on the training seed)."""
    if not 0.0 <= held_fraction <= 1.0:
        raise ValueError(f"held_fraction must be in [0, 1], got {held_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, _SALT_TEST])
    held = [
        rng.permutation(members)[: round(len(members) * held_fraction)]
        for members in (np.flatnonzero(labels == c) for c in np.unique(labels))
    ]
    held_all = np.sort(np.concatenate(held or [np.empty(0, np.int64)])).astype(np.int64)
    kept = np.setdiff1d(np.arange(len(labels), dtype=np.int64), held_all)
    return kept, held_all


def part_for(rule: str, split: str) -> str:
    """Which official part a split is cut from: 'train', 'val', 'test' or 'all'."""
    if rule in ("official", "stream"):
        return split
    if rule == "val-from-train":
        return "test" if split == "test" else "train"
    if rule == "from-all":
        return "all"
    raise ValueError(f"unknown split rule '{rule}'; known: {', '.join(RULES)}")


def select(
    rule: str, split: str, n: int, seed: int = SPLIT_SEED, plan: SplitPlan = FIXED
) -> np.ndarray:
    """Indices, into the part `part_for(rule, split)` of n images, that form `split`.

    `seed` drives the fixed carvings; `plan` picks the original's where asked.
    """
    part_for(rule, split)  # rejects an unknown rule
    everything = np.arange(n, dtype=np.int64)
    if rule in ("official", "stream") or (rule == "val-from-train" and split == "test"):
        return everything
    if rule == "from-all":
        if plan.test == "paper":
            rest, test = paper_test_split(n)
        else:
            rest, test = split_indices(n, seed=seed, salt=_SALT_TEST)
        if split == "test":
            return test
        everything = rest
    if plan.val == "seeded":
        train, val = seeded_val_split(len(everything), plan.seed)
    else:
        train, val = split_indices(len(everything), seed=seed, salt=_SALT_VAL)
    return everything[val] if split == "val" else everything[train]
