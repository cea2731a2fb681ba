"""Pairs of images: pair i = (i-th image of the shuffled reference stream, i-th of the target).

Each stream is shuffled by its own generator derived from (seed, stream, pass), so one seed
gives the same pairs and another seed different ones. When more pairs are asked for than a
stream holds, the stream starts a new pass in a new order (the paper's 12,800 pairs exceed
CIFAR's 10,000 test images); the number of passes is reported.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from vitplas.data import make_loader

_STREAM_SALT = {"reference": 1, "target": 2}


def stream_seed(seed: int, stream: str, epoch: int) -> int:
    """A 31-bit seed for one pass of one stream."""
    state = np.random.SeedSequence([seed, _STREAM_SALT[stream], epoch]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


@dataclass
class PairPlan:
    """How `pairs` pairs are drawn in batches of `batch_size`."""

    pairs: int
    batch_size: int
    reference_size: int
    target_size: int

    def validate(self, reference: str = "reference", target: str = "target") -> None:
        if self.pairs < 1:
            raise ValueError(f"pairs must be >= 1, got {self.pairs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        for name, size in ((reference, self.reference_size), (target, self.target_size)):
            if size < self.batch_size:
                raise ValueError(
                    f"stream '{name}' has {size} images, fewer than one batch of "
                    f"{self.batch_size}; lower --batch-size or use a longer stream"
                )

    def passes(self, size: int) -> int:
        """Passes over a stream of `size` images (whole batches per pass) to give all pairs."""
        per_pass = (size // self.batch_size) * self.batch_size
        return -(-self.pairs // per_pass)


class _Indexed(Dataset):
    """`dataset` with each image's index in place of its label."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index][0], index


def _stream(dataset: Dataset, name: str, plan: PairPlan, seed: int, workers: int) -> Iterator:
    """(images, labels) batches, pass after pass, each pass in its own seeded order."""
    epoch = 0
    while True:
        loader = make_loader(
            dataset,
            plan.batch_size,
            shuffle=True,
            seed=stream_seed(seed, name, epoch),
            num_workers=workers,
            drop_last=True,  # x and y batches always line up
        )
        yield from loader
        epoch += 1


def pair_batches(
    reference: Dataset,
    target: Dataset,
    *,
    pairs: int,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    names: tuple[str, str] = ("reference", "target"),
    with_indices: bool = False,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """(x, y) image batches (B, 3, H, W) until `pairs` pairs; the last one may be short.
    with_indices: (x, y, x_index, y_index), the images' (B,) int64 indices in their datasets
    (the same images, in the same order).

    Checked here, before any image is read: pairs >= 1, and each stream holds a batch."""
    plan = PairPlan(pairs, batch_size, len(reference), len(target))
    plan.validate(*names)
    if with_indices:
        reference, target = _Indexed(reference), _Indexed(target)
    xs = _stream(reference, "reference", plan, seed, num_workers)
    ys = _stream(target, "target", plan, seed, num_workers)
    return _zip(xs, ys, pairs, with_indices)


def _zip(xs: Iterator, ys: Iterator, pairs: int, with_indices: bool) -> Iterator[tuple]:
    left = pairs
    while left > 0:
        (x, ix), (y, iy) = next(xs), next(ys)
        take = min(left, x.shape[0])
        yield (x[:take], y[:take], ix[:take], iy[:take]) if with_indices else (x[:take], y[:take])
        left -= take
