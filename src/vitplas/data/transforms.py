"""Image transforms that follow a model's config: input size, mean and std (PAPER.md section 3).

train: RandomResizedCrop(size) + horizontal flip; eval: Resize(size / crop_pct) + CenterCrop(size).
Both start by converting to RGB (grey sources get 3 equal channels) and end with
ToTensor + Normalize: a float32 tensor (3, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image
from torchvision import transforms as T

DEFAULT_CROP_PCT = 0.875  # 224 -> resize 256 -> crop 224, the usual eval protocol
_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


class ToRGB:
    """PIL image of any mode -> RGB (a grey image repeated on 3 channels). Picklable."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    dims = tuple(int(s) for s in size)
    return dims[-2:] if len(dims) >= 2 else (dims[0], dims[0])  # (3, H, W) or (H, W)


def eval_resize(size: int | Sequence[int], crop_pct: float = DEFAULT_CROP_PCT) -> tuple[int, int]:
    """The eval resize before the center crop: round(side / crop_pct), never below the crop.

    At 32 px this is 37 (a 2-3 px border trimmed), at 224 px 256.
    """
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return tuple(max(side, round(side / crop_pct)) for side in _hw(size))  # type: ignore[return-value]


def build_transform(
    mean: Sequence[float],
    std: Sequence[float],
    size: int | Sequence[int],
    train: bool,
    *,
    crop_pct: float = DEFAULT_CROP_PCT,
    scale: tuple[float, float] = (0.08, 1.0),
    interpolation: str = "bicubic",
) -> T.Compose:
    """PIL image -> normalised float32 tensor (3, H, W); `size` is an int, (H, W) or (3, H, W)."""
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std must be 3 values with std > 0, got {mean}, {std}")
    if interpolation not in _INTERPOLATION:
        raise ValueError(f"interpolation '{interpolation}' unknown; known: {list(_INTERPOLATION)}")
    mode = _INTERPOLATION[interpolation]
    height, width = _hw(size)
    if train:
        geometry = [
            T.RandomResizedCrop((height, width), scale=scale, interpolation=mode),
            T.RandomHorizontalFlip(),
        ]
    else:
        resize_h, resize_w = eval_resize((height, width), crop_pct)
        # a square target resizes the short side (keeps the aspect ratio), as usual
        resize = resize_h if height == width else (resize_h, resize_w)
        geometry = [
            T.Resize(resize, interpolation=mode),
            T.CenterCrop((height, width)),
        ]
    normalise = [T.ToTensor(), T.Normalize([float(m) for m in mean], [float(s) for s in std])]
    return T.Compose([ToRGB(), *geometry, *normalise])


def transform_for(loaded: Any, train: bool, **kwargs: Any) -> T.Compose:
    """build_transform from anything with .mean, .std and .input_size (3, H, W): a LoadedModel."""
    return build_transform(loaded.mean, loaded.std, loaded.input_size, train, **kwargs)
