"""What a reader returns (images in memory or files on disk, with labels) and the one Dataset.

Every dataset of the registry, whatever its layout, becomes an `ImageDataset` over records:
item i is (transform(PIL image), int label); labels are -1 for unlabelled streams.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


class Records(Protocol):
    """N images with int64 labels (N,) and class names; image(i) is a PIL image."""

    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int: ...

    def image(self, index: int) -> Image.Image: ...


@dataclass
class ArrayImages:
    """Images held as a uint8 array (N, H, W) grey or (N, H, W, 3) RGB."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4):
            raise ValueError(
                f"images must be uint8 (N,H,W) or (N,H,W,3), got {self.images.dtype} "
                f"{self.images.shape}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(self.images[index]))


@dataclass
class FileImages:
    """Image files, decoded on access and converted to RGB (some JPEGs are grey or CMYK).
    `skipped`: unreadable files of the layout left out (the `skip_unreadable` option)."""

    paths: Sequence[Path]
    labels: np.ndarray
    classes: list[str]
    skipped: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} files but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except OSError as err:  # missing, truncated or not an image: name the file
            raise OSError(f"{path}: cannot read this image ({err}); remove or replace it") from err


@dataclass(eq=False)
class ImageDataset(Dataset):
    """The rows `indices` of `records` as a torch Dataset of (image, label: int).

    Without a transform an item's image is a PIL image (grey 'L' for grey sources).
    """

    records: Records
    indices: np.ndarray
    transform: Callable[[Image.Image], Any] | None = None
    name: str = ""
    split: str = ""
    num_classes: int | None = None
    info: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.indices = np.asarray(self.indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[Any, int]:
        row = int(self.indices[item])
        image = self.records.image(row)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.records.labels[row])

    @property
    def labels(self) -> np.ndarray:
        """Labels of this split, int64 (len(self),)."""
        return self.records.labels[self.indices]

    @property
    def classes(self) -> list[str]:
        return self.records.classes

    @property
    def skipped(self) -> tuple[Path, ...]:
        """Unreadable files left out of the records this split is drawn from."""
        return tuple(getattr(self.records, "skipped", ()))
