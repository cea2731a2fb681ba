"""The paper's splits, drawn by a generator whose seed is fixed and independent of training seeds.

Rules (a dataset's `split_rule`), with n images in the part read:
    official        train / val / test are the dataset's own (Flowers102)
    val-from-train  val = 20% of the official train, train = the other 80%; test official
    from-all        one pool: test = 20%, then val = 20% of the rest (CIFAR-10-C, DomainNet:
                    10,000 images -> 8,000 train+val / 2,000 test -> 6,400 / 1,600 / 2,000)
    stream          each split is its own stream read as is (ImageNet val, photo crops)
"""

from __future__ import annotations

import numpy as np

SPLIT_SEED = 0  # never the training seed: the val set must not move when the seed does
HELD_FRACTION = 0.2
RULES = ("official", "val-from-train", "from-all", "stream")

_SALT_TEST = 1  # distinct generator streams for the two carvings
_SALT_VAL = 2


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


def part_for(rule: str, split: str) -> str:
    """Which official part a split is cut from: 'train', 'val', 'test' or 'all'."""
    if rule in ("official", "stream"):
        return split
    if rule == "val-from-train":
        return "test" if split == "test" else "train"
    if rule == "from-all":
        return "all"
    raise ValueError(f"unknown split rule '{rule}'; known: {', '.join(RULES)}")


def select(rule: str, split: str, n: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """Indices, into the part `part_for(rule, split)` of n images, that form `split`."""
    part_for(rule, split)  # rejects an unknown rule
    everything = np.arange(n, dtype=np.int64)
    if rule in ("official", "stream") or (rule == "val-from-train" and split == "test"):
        return everything
    if rule == "from-all":
        rest, test = split_indices(n, seed=seed, salt=_SALT_TEST)
        if split == "test":
            return test
        everything = rest
    train, val = split_indices(len(everything), seed=seed, salt=_SALT_VAL)
    return everything[val] if split == "val" else everything[train]
