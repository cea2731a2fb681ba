"""A natural-image stream that needs no download: random crops of photos bundled in packages.

Stands in for ImageNet val as the "close to pretraining" stream when offline (ASSETS.md); every
output that uses it must say so. Crop i of a split depends only on (seed, split, i) and on the
photos that load here (listed in `PhotoStream.sources`); crops are cut on access.

The crops are not independent images: all crops of one photo share it, so a statistic over the
stream rests on the photos (17 here), not on its crops. `source_of` names each crop's photo:
the unit a confidence interval clusters by (analysis/ratio_stats.py).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from vitplas.data.registry import DataError

# Natural photos bundled in the scikit-image wheel (others, e.g. eagle or lily, need a
# download; binary masks and synthetic images such as horse or checkerboard are left out).
SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket", "stereo_motorcycle",
)  # fmt: skip
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
DEFAULT_LENGTH = 10_000
MIN_SIDE = 16  # px: smaller crops carry almost no content once resized
SIDE_RANGE = (0.2, 1.0)  # crop side as a fraction of the photo's short side
_SPLIT_SALT = {"train": 11, "val": 12, "test": 13}


def _as_rgb(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3]).astype(np.uint8)  # (H, W, 3)


@lru_cache(maxsize=1)
def load_photos() -> tuple[tuple[str, np.ndarray], ...]:
    """(name, (H, W, 3) uint8) for every bundled photo that loads offline, in a fixed order."""
    photos = []
    try:
        import skimage.data
    except ImportError:
        skimage = None
    for name in SKIMAGE_PHOTOS if skimage is not None else ():
        try:
            image = getattr(skimage.data, name)()
        except Exception:  # a photo that needs a download (no pooch / offline)
            continue
        photos.append((f"skimage:{name}", _as_rgb(image[0] if isinstance(image, tuple) else image)))
    try:
        from sklearn.datasets import load_sample_image

        photos += [(f"sklearn:{n}", _as_rgb(load_sample_image(n))) for n in SKLEARN_PHOTOS]
    except Exception:
        pass
    if not photos:
        raise DataError(
            "dataset 'photos': no bundled photo loads; install scikit-image "
            "(pip install 'vitplas[offline]') or scikit-learn"
        )
    return tuple(photos)


class PhotoStream:
    """`length` square RGB crops with label -1 (Records interface; nothing cut up front)."""

    def __init__(self, length: int, split: str, seed: int = 0):
        self.classes: list[str] = []
        self.length = length
        self.seed = seed
        self.salt = _SPLIT_SALT[split]
        self.labels = np.full(length, -1, dtype=np.int64)
        self.sources = [name for name, _ in load_photos()]

    def __len__(self) -> int:
        return self.length

    def _draws(self, index: int) -> np.random.Generator:
        """The generator of crop `index`; its first draw is the photo."""
        if not 0 <= index < self.length:
            raise IndexError(f"crop {index} out of range for {self.length} crops")
        return np.random.default_rng([self.seed, self.salt, index])

    def source_of(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) int64: the photo (index into `sources`) each crop row is cut from."""
        count = len(self.sources)
        return np.array([int(self._draws(int(i)).integers(count)) for i in rows], dtype=np.int64)

    def crop_box(self, index: int) -> tuple[int, int, int, int, bool]:
        """(photo index, top, left, side, flip) of crop `index`."""
        photos = load_photos()
        rng = self._draws(index)
        k = int(rng.integers(len(photos)))
        height, width = photos[k][1].shape[:2]
        side = max(MIN_SIDE, int(rng.uniform(*SIDE_RANGE) * min(height, width)))
        top = int(rng.integers(height - side + 1))
        left = int(rng.integers(width - side + 1))
        return k, top, left, side, bool(rng.random() < 0.5)

    def image(self, index: int) -> Image.Image:
        k, top, left, side, flip = self.crop_box(index)
        crop = load_photos()[k][1][top : top + side, left : left + side]  # (side, side, 3)
        return Image.fromarray(np.ascontiguousarray(crop[:, ::-1] if flip else crop))
