"""The one parametrised wrapper: name + split -> torch Dataset, and the seeded DataLoader."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vitplas.data.records import ImageDataset
from vitplas.data.registry import DataError, Source, dataset_info, entry_reader, resolve_root
from vitplas.data.splits import FIXED, SPLIT_SEED, SplitPlan, part_for, select
from vitplas.data.text import TextDataset


def get_dataset(
    name: str,
    split: str,
    *,
    transform: Callable[[Any], Any] | None = None,
    root: str | Path | None = None,
    download: bool = False,
    split_seed: int = SPLIT_SEED,
    plan: SplitPlan = FIXED,
    skip_unreadable: bool = False,
) -> ImageDataset | TextDataset:
    """Dataset `name` (see list_datasets) restricted to `split`: items (image, label: int), or
    (text: str, label: int) for a text dataset (modality 'text'; it takes no transform).

    Splits are the paper's: 'train' / 'val' / 'test', val carved from the official train split
    with `split_seed` (fixed; never the training seed), or as `plan` asks (splits.SplitPlan:
    the original's carvings for the paper protocol). Files are read under
    resolve_root(root); `download=True` fetches what has a download when it is missing.
    `skip_unreadable=True` leaves out image files that cannot be decoded (listed in the
    dataset's `skipped`; the splits are drawn over the readable files) instead of an error.
    """
    info = dataset_info(name)
    if not info.complete:
        raise DataError(
            f"dataset '{name}' is a family; name one member as {info.pattern}"
            + "".join(
                f"; {p.name}: {', '.join(p.choices)}" for p in info.params if p.choices is not None
            )
        )
    if split not in info.splits:
        raise DataError(f"dataset '{info.name}' has splits {', '.join(info.splits)}; got '{split}'")
    if info.modality == "text" and transform is not None:
        raise DataError(
            f"dataset '{info.name}' is text (items are (str, label)): an image transform or "
            "an image model cannot take it; tokenize with vitplas.data.text.tokenize_texts"
        )
    source = Source(info, resolve_root(root), download, skip_unreadable)
    records = entry_reader(info)(source, part_for(info.split_rule, split))
    _check_labels(info.name, records.labels, info.num_classes, len(records.classes))
    indices = select(info.split_rule, split, len(records), split_seed, plan)
    if info.modality == "text":
        return TextDataset(records, indices, info.name, split, info.num_classes, info=info)
    return ImageDataset(records, indices, transform, info.name, split, info.num_classes, info=info)


def _check_labels(name: str, labels: np.ndarray, num_classes: int | None, found: int) -> None:
    """A partial copy (a missing class folder) would shift every label after it: refuse it."""
    if num_classes is None:
        return
    if found != num_classes:
        raise DataError(
            f"dataset '{name}': found {found} classes on disk, expected {num_classes}; "
            "the copy is incomplete (a missing class would shift the labels)"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"dataset '{name}': labels span {labels.min()}..{labels.max()}, "
            f"expected 0..{num_classes - 1}"
        )


def skipped_report(datasets: Iterable[Dataset | None], shown: int = 10) -> dict[str, Any]:
    """Manifest entries for the unreadable files `skip_unreadable` left out of `datasets`
    (Subsets unwrapped; a file shared by several splits counted once), and a one-line warning
    when there are any: {"skipped_unreadable": count, "skipped_unreadable_files": first few}."""
    skipped: dict[Path, None] = {}
    for data in datasets:
        while hasattr(data, "dataset"):  # torch Subset
            data = data.dataset
        skipped.update(dict.fromkeys(getattr(data, "skipped", ())))
    names = [str(path) for path in skipped][:shown]
    if skipped:
        more = f" and {len(skipped) - shown} more" if len(skipped) > shown else ""
        warnings.warn(
            f"skip_unreadable: left out {len(skipped)} image file(s) that cannot be decoded: "
            f"{', '.join(names)}{more} (listed in the run's manifest)",
            stacklevel=2,
        )
    return {"skipped_unreadable": len(skipped), "skipped_unreadable_files": names}


def _seed_worker(worker_id: int) -> None:
    # Each worker's torch seed comes from the loader's generator; numpy and random follow it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader whose order (and worker RNG) depends only on `seed`.

    With num_workers=0 random transforms draw from the global torch RNG, which the entry point
    seeds; with workers each worker is seeded from `seed`.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
    )
