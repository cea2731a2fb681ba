"""Image transforms: input size, mean/std, interpolation and crop fraction (PAPER.md section 3).

train: RandomResizedCrop(size) + horizontal flip; eval: Resize(size / crop_pct) + CenterCrop(size).
Both start by converting to RGB (grey sources get 3 equal channels) and end with
ToTensor + Normalize: a float32 tensor (3, H, W).

A protocol (vitplas.protocol) names where mean/std, interpolation and crop fraction come
from: paper = the original release's (ImageNet mean/std, bilinear, eval Resize(size) + CenterCrop
(size)); model = the checkpoint's pretrained config (bicubic and 0.875 where it states none).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image
from torchvision import transforms as T

from vitplas import protocol as protocols
from vitplas.constants import IMAGENET_MEAN as IMAGENET_MEAN  # re-exported
from vitplas.constants import IMAGENET_STD as IMAGENET_STD  # re-exported

DEFAULT_CROP_PCT = 0.875  # 224 -> resize 256 -> crop 224, the usual eval protocol
DEFAULT_INTERPOLATION = "bicubic"
PROTOCOLS = protocols.NAMES  # re-exported: the protocols' home is vitplas.protocol
DEFAULT_PROTOCOL = protocols.DEFAULT  # FinetuneConfig's, and a run config that names none
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
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    flip: bool = True,
    interpolation: str = "bicubic",
) -> T.Compose:
    """PIL image -> normalised float32 tensor (3, H, W); `size` is an int, (H, W) or (3, H, W).

    train: RandomResizedCrop with area fraction in `scale` and aspect ratio in `ratio`, then a
    horizontal flip with probability 0.5 when `flip`."""
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std must be 3 values with std > 0, got {mean}, {std}")
    if interpolation not in _INTERPOLATION:
        raise ValueError(f"interpolation '{interpolation}' unknown; known: {list(_INTERPOLATION)}")
    mode = _INTERPOLATION[interpolation]
    height, width = _hw(size)
    if train:
        crop = T.RandomResizedCrop(
            (height, width), scale=tuple(scale), ratio=tuple(ratio), interpolation=mode
        )
        geometry = [crop, T.RandomHorizontalFlip()] if flip else [crop]
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


def preprocessing(
    protocol: str,
    model_mean: Sequence[float],
    model_std: Sequence[float],
    pretrained_cfg: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """build_transform's keywords for `protocol` (module docstring): mean, std, crop_pct,
    interpolation. `pretrained_cfg` is the checkpoint's (timm's model.pretrained_cfg)."""
    recipe = protocols.get(protocol)
    cfg = pretrained_cfg or {}
    interpolation = recipe.interpolation or cfg.get("interpolation") or DEFAULT_INTERPOLATION
    return {
        "mean": tuple(float(m) for m in (recipe.mean or model_mean)),
        "std": tuple(float(s) for s in (recipe.std or model_std)),
        "crop_pct": float(recipe.crop_pct or cfg.get("crop_pct") or DEFAULT_CROP_PCT),
        "interpolation": interpolation if interpolation in _INTERPOLATION else "bicubic",
    }


def preprocessing_for(protocol: str, description: dict[str, Any]) -> dict[str, Any]:
    """preprocessing from a model description (training.sources.load_model_for's, also a
    finetuning run's manifest.json): its model_mean, model_std, model_interpolation and
    model_crop_pct. Under protocol paper none of them is needed."""
    geometry = {
        "interpolation": description.get("model_interpolation"),
        "crop_pct": description.get("model_crop_pct"),
    }
    mean, std = description.get("model_mean"), description.get("model_std")
    if protocols.get(protocol).mean is None and (mean is None or std is None):
        raise ValueError("protocol model needs the model's model_mean and model_std; none given")
    return preprocessing(protocol, mean or (), std or (), geometry)


def protocol_transform(
    protocol: str,
    train: bool,
    size: int | Sequence[int],
    model_mean: Sequence[float],
    model_std: Sequence[float],
    pretrained_cfg: dict[str, Any] | None = None,
) -> T.Compose:
    """build_transform with the preprocessing of `protocol` (PIL -> float32 (3, H, W))."""
    return build_transform(
        size=size, train=train, **preprocessing(protocol, model_mean, model_std, pretrained_cfg)
    )


def transform_for(loaded: Any, train: bool, protocol: str = "model") -> T.Compose:
    """protocol_transform from anything with .mean, .std, .input_size (3, H, W) and .model
    (whose .pretrained_cfg, when present, gives interpolation and crop_pct): a LoadedModel."""
    cfg = getattr(getattr(loaded, "model", None), "pretrained_cfg", None)
    return protocol_transform(protocol, train, loaded.input_size, loaded.mean, loaded.std, cfg)
