"""Readers of the real datasets' on-disk layouts. Each missing file is a DataError naming it.

Layouts (under the data root):
    cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}     pickled dicts
    cifar-100-python/{train,test,meta}                               pickled dicts
    CIFAR-10-C/<corruption>.npy (5 x 10,000, 32, 32, 3) uint8 + labels.npy (50,000,)
    flowers-102/{jpg/image_00001.jpg, imagelabels.mat, setid.mat}
    oxford-iiit-pet/{images/<name>.jpg, annotations/{trainval,test}.txt}
    <folder>/<class>/<image>                                        ImageFolder
    <dir>/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]          idx files
"""

from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vitplas.data.records import ArrayImages, FileImages
from vitplas.data.registry import DataError, Source

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
SEVERITIES = 5


def _require(src: Source, path: Path) -> Path:
    if not path.exists():
        raise src.missing(path)
    return path


# the only globals a CIFAR batch may name: numpy arrays and dtypes (numpy 1 and 2 module
# names), and the str -> bytes encoder that Python 3 pickles of bytes use (protocol 2)
PICKLE_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # bytes in protocol 2


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles data only: dicts, lists, tuples, numbers, strings, bytes and numpy arrays.
    Any other global (a function, a class) is refused, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused to load '{module}.{name}': a dataset pickle may hold only arrays, "
                "lists, dicts, numbers, strings and bytes"
            )
        return super().find_class(module, name)


def _unpickle(src: Source, path: Path) -> dict:
    """A CIFAR batch (a dict), read with ArrayUnpickler; a DataError naming a bad file."""
    with open(_require(src, path), "rb") as handle:
        try:  # the batches were pickled by Python 2: bytes keys
            data = ArrayUnpickler(handle, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            raise DataError(f"{path}: not a CIFAR batch ({err}); download it again") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: a {type(data).__name__}, not a CIFAR batch (a dict)")
    return data


def read_cifar_batches(
    src: Source, files: list[str], label_key: bytes, meta_file: str, meta_key: bytes
) -> ArrayImages:
    """Concatenate pickled CIFAR batches: b'data' (N, 3072) uint8 rows, channel-major."""
    folder = src.path
    images, labels = [], []
    for name in files:
        batch = _unpickle(src, folder / name)
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # (N, 32, 32, 3)
        labels.extend(batch[label_key])
    meta = _unpickle(src, folder / meta_file)
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[meta_key]]
    return ArrayImages(np.concatenate(images), np.asarray(labels), classes)


def read_corruption(src: Source, corruption: str, severity: int, classes: list[str]) -> ArrayImages:
    """Rows (s-1)*m : s*m of <corruption>.npy and labels.npy, m = N / 5 (10,000 published)."""
    folder = src.path
    images = np.load(_require(src, folder / f"{corruption}.npy"), mmap_mode="r")
    labels = np.load(_require(src, folder / "labels.npy"), mmap_mode="r")
    n = len(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(
            f"{folder / corruption}.npy: expected uint8 (N, H, W, 3), got "
            f"{images.dtype} {images.shape}"
        )
    if n % SEVERITIES or len(labels) != n:
        raise DataError(
            f"{folder}: {corruption}.npy has {n} images and labels.npy {len(labels)}; "
            f"both must hold {SEVERITIES} equal blocks (one per severity)"
        )
    m = n // SEVERITIES
    rows = slice((severity - 1) * m, severity * m)
    return ArrayImages(np.array(images[rows]), np.array(labels[rows]), classes)


def read_flowers(src: Source, part: str) -> FileImages:
    """Flowers102's official part ('train', 'val', 'test'); labels 1..102 become 0..101."""
    from scipy.io import loadmat

    folder = src.path
    key = {"train": "trnid", "val": "valid", "test": "tstid"}[part]
    ids = np.atleast_1d(loadmat(_require(src, folder / "setid.mat"), squeeze_me=True)[key])
    labels = np.atleast_1d(
        loadmat(_require(src, folder / "imagelabels.mat"), squeeze_me=True)["labels"]
    )
    paths = [folder / "jpg" / f"image_{int(i):05d}.jpg" for i in ids]
    if paths:
        _require(src, paths[0])
    classes = [str(c) for c in range(1, 103)]
    return FileImages(paths, labels[np.asarray(ids, dtype=np.int64) - 1] - 1, classes)


def read_pet(src: Source, part: str) -> FileImages:
    """Oxford-IIIT Pet: annotations/{trainval,test}.txt lines '<image> <class 1..37> ...'."""
    folder = src.path
    listing = _require(
        src, folder / "annotations" / f"{'test' if part == 'test' else 'trainval'}.txt"
    )
    paths, labels, names = [], [], {}
    for line in listing.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        image, class_id = line.split()[:2]
        paths.append(folder / "images" / f"{image}.jpg")
        labels.append(int(class_id) - 1)
        names[int(class_id) - 1] = image.rsplit("_", 1)[0]
    if paths:
        _require(src, paths[0])
    classes = [names.get(c, str(c + 1)) for c in range(37)]
    return FileImages(paths, np.asarray(labels), classes)


def scan_image_folder(src: Source, folder: Path, classes: list[str] | None = None) -> FileImages:
    """ImageFolder: one sub-folder per class (sorted names = labels 0..C-1), images inside.

    `classes` fixes the label order (a test folder labelled like its train folder).
    """
    if not folder.is_dir():
        raise src.missing(folder, "folder")
    found = class_folders(folder)
    classes = found if classes is None else classes
    if extra := sorted(set(found) - set(classes)):
        raise DataError(
            f"{folder}: class folders {extra[:5]} are not among the {len(classes)} "
            "classes of the train folder"
        )
    paths, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                labels.append(label)
    if not paths:
        raise DataError(
            f"dataset '{src.info.name}': no image in {folder} "
            f"(expected {folder}/<class>/<image>.jpg); layout: {src.info.layout}"
        )
    if src.skip_unreadable:
        return keep_readable(src, folder, FileImages(paths, np.asarray(labels), classes))
    if src.info.family == "folder":  # the user's own files: checked before any training
        check_images(paths)
    return FileImages(paths, np.asarray(labels), classes)


def keep_readable(src: Source, folder: Path, records: FileImages) -> FileImages:
    """`records` without the files PIL cannot decode, which `skipped` lists (same labels)."""
    bad = {path for path, _ in unreadable(records.paths, decode=True)}
    if not bad:
        return records
    keep = [i for i, path in enumerate(records.paths) if path not in bad]
    if not keep:
        raise DataError(
            f"dataset '{src.info.name}': none of the {len(bad)} images in {folder} can be read"
        )
    paths = [records.paths[i] for i in keep]
    skipped = tuple(p for p in records.paths if p in bad)
    return FileImages(paths, records.labels[keep], records.classes, skipped)


_UNREADABLE: dict[tuple, list[tuple[Path, str]]] = {}  # file lists checked in this process


def unreadable(paths: Sequence[Path], decode: bool = False) -> list[tuple[Path, str]]:
    """(path, why) of the files among `paths` PIL cannot open and verify; with `decode`, also
    those it cannot decode in full (a truncated JPEG passes verify). Cached per process while
    no file changes (size and mtime), so the splits of one folder check it once."""
    key = (decode, *((p, _stamp(p)) for p in paths))
    if key not in _UNREADABLE:
        _UNREADABLE[key] = [(p, why) for p in paths if (why := _why_unreadable(p, decode))]
    return _UNREADABLE[key]


def _stamp(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (-1, -1)
    return (stat.st_size, stat.st_mtime_ns)


def _why_unreadable(path: Path, decode: bool) -> str:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        if decode:
            with Image.open(path) as img:
                img.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ...
        return f"{type(err).__name__}: {err}"
    return ""


def check_images(paths: list[Path]) -> None:
    """A DataError naming the unreadable files among `paths` (opened and verified by PIL)."""
    bad = [f"{path} ({why})" for path, why in unreadable(paths)]
    if bad:
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(
            f"{len(bad)} of {len(paths)} images cannot be read: {'; '.join(bad[:5])}{more}. "
            "Remove or replace them (finetune and probe: skip_unreadable=true leaves them out)"
        )


def class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST format), gzipped or not, as a uint8 array of its stored shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not a uint8 idx file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} but holds {array.size} values (truncated?)")
    return array.reshape(shape)


def find_idx(folder: Path, stem: str) -> Path | None:
    """`stem` or `stem.gz` in `folder`, whichever exists."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None
