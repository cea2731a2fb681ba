"""Pairs of images: pair i = (i-th image of the shuffled reference stream, i-th of the target).

Each stream is shuffled by its own generator derived from (seed, stream, pass), so one seed
gives the same pairs and another seed different ones. When more pairs are asked for than a
stream holds, the stream starts a new pass in a new order (the paper's 12,800 pairs exceed
CIFAR's 10,000 test images); the number of passes is reported.

The independent units of a stream (`stream_units`) are what a confidence interval may count:
its images, or for a stream cut from a few sources (the photo stream's crops), the sources.
A pair belongs to two units, its reference image's and its target image's (`PairUnits`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from vitplas.analysis.length_pairs import equal_length_batches
from vitplas.data import make_loader

_STREAM_SALT = {"reference": 1, "target": 2}
TEXTS = "distinct texts"  # the units of a text stream


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


@dataclass(frozen=True)
class StreamUnits:
    """The independent units of one stream: `count` of them; `of(items)` maps dataset
    indices (B,) int64 to unit ids (B,) in [0, count); `what` names them for people."""

    count: int
    of: Callable[[np.ndarray], np.ndarray]
    what: str


def stream_units(dataset: Dataset) -> StreamUnits:
    """Units of a stream: the source each item is cut from where its records name one (the
    photo stream's `source_of`: 17 photos), a text stream's distinct texts, else each image
    its own unit."""
    records = getattr(dataset, "records", None)
    rows = getattr(dataset, "indices", None)
    if records is not None and rows is not None and hasattr(records, "source_of"):
        count = len(records.sources)
        return StreamUnits(count, lambda items: records.source_of(rows[items]), "photos")
    if hasattr(dataset, "source_of"):  # the records themselves
        return StreamUnits(len(dataset.sources), dataset.source_of, "photos")
    if hasattr(dataset, "text_units"):  # analysis.text_pairs: one unit per distinct text
        count, codes = dataset.text_units()
        return StreamUnits(count, lambda items: codes[np.asarray(items, dtype=np.int64)], TEXTS)
    return StreamUnits(len(dataset), lambda items: np.asarray(items, dtype=np.int64), "images")


@dataclass(frozen=True)
class PairUnits:
    """The units of both streams of the pairs; `ids` maps a batch's dataset indices (the
    extras of pair_batches(with_indices=True)) to the pairs' unit ids."""

    reference: StreamUnits
    target: StreamUnits

    @property
    def sizes(self) -> tuple[int, int]:
        return self.reference.count, self.target.count

    def ids(self, extra: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """((B,), (B,)) int64 unit ids of the pairs whose images have indices extra[:2]."""
        if len(extra) < 2:
            raise ValueError("clustering by units needs each pair's image indices (with_indices)")
        out = []
        for units, items in zip((self.reference, self.target), extra[:2], strict=True):
            ids = np.asarray(units.of(np.asarray(items, dtype=np.int64)), dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= units.count):
                raise ValueError(f"unit ids outside [0, {units.count}) for {units.what}")
            out.append(torch.from_numpy(ids))
        return out[0], out[1]


def pair_units(reference: Dataset, target: Dataset) -> PairUnits:
    """PairUnits of two datasets (stream_units of each)."""
    return PairUnits(stream_units(reference), stream_units(target))


# pair_lengths (length_pairs.PAIR_LENGTHS) -> how pairs are drawn: as the streams come, or
# every pair of one real length; both take the same arguments and give the same batches
PAIR_DRAWS = {"any": pair_batches, "equal": equal_length_batches}


def draw_pairs(pair_lengths: str, reference: Dataset, target: Dataset, **kwargs) -> Iterator:
    """The pair stream of `pair_lengths` (PAIR_DRAWS; kwargs: pairs, batch_size, seed, ...
    of pair_batches); an unknown pair_lengths is a ValueError naming the known ones."""
    if pair_lengths not in PAIR_DRAWS:
        known = " or ".join(PAIR_DRAWS)
        raise ValueError(f"pair_lengths '{pair_lengths}' is unknown; choose {known}")
    return PAIR_DRAWS[pair_lengths](reference, target, **kwargs)


def config_pairs(cfg, reference: Dataset, target: Dataset, pairs: int, with_indices: bool):
    """The pair stream of a plasticity config `cfg` (its pair_lengths, batch size, seed,
    workers and stream names): its first `pairs` pairs (draw_pairs)."""
    return draw_pairs(
        getattr(cfg, "pair_lengths", "any"),
        reference,
        target,
        pairs=pairs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        names=(cfg.reference, cfg.target),
        with_indices=with_indices,
    )
