"""Each real on-disk layout, written small in tmp_path, read through the users' code path."""

from __future__ import annotations

import gzip
import io
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from vitplas.data import DataError, get_dataset, is_available


def _jpeg(color: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, "JPEG")
    return buffer.getvalue()


def _pickle(path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _cifar_rows(n: int, offset: int) -> np.ndarray:
    """(n, 3072) uint8 channel-major rows; red of pixel (0, 0) = offset + row index."""
    rows = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    rows[:, 0, 0, 0] = offset + np.arange(n)
    rows[:, 1, 0, 1] = 7  # green of pixel (0, 1): checks the channel-last transpose
    return rows.reshape(n, 3072)


def write_cifar10(root, per_batch: int = 4, n_test: int = 6) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(1, 6):
        labels = [(b + i) % 10 for i in range(per_batch)]
        data = {b"batch_label": b"x", b"labels": labels, b"data": _cifar_rows(per_batch, 10 * b)}
        _pickle(folder / f"data_batch_{b}", data)
    test = {b"labels": [i % 10 for i in range(n_test)], b"data": _cifar_rows(n_test, 200)}
    _pickle(folder / "test_batch", test)
    names = [f"c{i}".encode() for i in range(10)]
    _pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})


def test_cifar10_pickled_batches(tmp_path):
    write_cifar10(tmp_path)
    train = get_dataset("cifar10", "train", root=tmp_path)
    val = get_dataset("cifar10", "val", root=tmp_path)
    test = get_dataset("cifar10", "test", root=tmp_path)
    assert (len(train), len(val), len(test)) == (16, 4, 6)  # 20 official train -> 80/20
    assert set(train.indices).isdisjoint(val.indices)
    assert sorted([*train.indices, *val.indices]) == list(range(20))
    assert train.classes == [f"c{i}" for i in range(10)] and train.num_classes == 10
    image, label = test[5]
    pixels = np.asarray(image)  # (32, 32, 3)
    assert pixels.shape == (32, 32, 3) and pixels[0, 0, 0] == 205 and pixels[0, 1, 1] == 7
    assert label == 5
    row = int(train.indices[0])  # batch 1 row `row` when row < 4
    assert np.asarray(train[0][0])[0, 0, 0] == 10 + row and train[0][1] == (1 + row) % 10


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for part, n in (("train", 10), ("test", 5)):
        fine = [(7 * i) % 100 for i in range(n)]
        data = {b"fine_labels": fine, b"coarse_labels": [0] * n, b"data": _cifar_rows(n, 0)}
        _pickle(folder / part, data)
    meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)], b"coarse_label_names": []}
    _pickle(folder / "meta", meta)
    test = get_dataset("cifar100", "test", root=tmp_path)
    assert [test[i][1] for i in range(5)] == [0, 7, 14, 21, 28]
    assert len(get_dataset("cifar100", "train", root=tmp_path)) == 8
    assert test.num_classes == 100 and test.classes[99] == "f99"


def write_cifar_c(root, folder: str, corruption: str, per_severity: int, classes: int) -> None:
    base = root / folder
    base.mkdir(parents=True, exist_ok=True)
    n = 5 * per_severity
    images = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.repeat(np.arange(1, 6), per_severity)  # severity
    images[:, 0, 0, 1] = np.tile(np.arange(per_severity), 5)  # row within the severity
    np.save(base / f"{corruption}.npy", images)
    np.save(base / "labels.npy", np.tile(np.arange(per_severity) % classes, 5).astype(np.uint8))


@pytest.mark.parametrize(
    ("family", "folder", "classes"),
    [("cifar10-c", "CIFAR-10-C", 10), ("cifar100-c", "CIFAR-100-C", 100)],
)
def test_cifar_c_severity_rows_and_split(tmp_path, family, folder, classes):
    write_cifar_c(tmp_path, folder, "snow", per_severity=50, classes=classes)
    name = f"{family}/snow/3"
    assert is_available(name, tmp_path) == (True, str(tmp_path / folder / "snow.npy"))
    parts = {s: get_dataset(name, s, root=tmp_path) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [32, 8, 10]  # 50 -> 40/10, 32/8
    rows = []
    for split, data in parts.items():
        for i in range(len(data)):
            pixels = np.asarray(data[i][0])
            assert pixels[0, 0, 0] == 3, split  # every image comes from severity 3's block
            assert data[i][1] == pixels[0, 0, 1] % classes  # labels travel with their rows
            rows.append(int(pixels[0, 0, 1]))
    assert sorted(rows) == list(range(50))  # disjoint and complete
    assert is_available(f"{family}/fog/3", tmp_path)[0] is False


def test_cifar_c_rejects_bad_names_and_arrays(tmp_path):
    with pytest.raises(DataError, match=r"corruption 'snowy' is unknown.*gaussian_noise"):
        get_dataset("cifar10-c/snowy/5", "test", root=tmp_path)
    with pytest.raises(DataError, match=r"severity '6' is unknown; severity is one of: 1, 2, 3"):
        get_dataset("cifar10-c/snow/6", "test", root=tmp_path)
    with pytest.raises(DataError, match=r"lacks <severity>"):
        get_dataset("cifar10-c/snow", "test", root=tmp_path)
    with pytest.raises(DataError, match=r"is a family; name one member as cifar10-c/<corruption>"):
        get_dataset("cifar10-c", "test", root=tmp_path)
    with pytest.raises(DataError, match=r"CIFAR-10-C/contrast.npy is missing.*zenodo.org"):
        get_dataset("cifar10-c/contrast/5", "test", root=tmp_path)
    (tmp_path / "CIFAR-10-C").mkdir()
    np.save(tmp_path / "CIFAR-10-C" / "fog.npy", np.zeros((12, 32, 32, 3), np.uint8))
    np.save(tmp_path / "CIFAR-10-C" / "labels.npy", np.zeros(12, np.uint8))
    with pytest.raises(DataError, match=r"5 equal blocks"):
        get_dataset("cifar10-c/fog/1", "test", root=tmp_path)


def test_flowers102_official_splits(tmp_path):
    from scipy.io import savemat

    folder = tmp_path / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    labels = np.array([(7 * i) % 102 + 1 for i in range(12)])  # 1-based
    for i in range(1, 13):
        (folder / "jpg" / f"image_{i:05d}.jpg").write_bytes(_jpeg())
    savemat(folder / "imagelabels.mat", {"labels": labels[None, :]})
    ids = {"trnid": [1, 2, 3, 4], "valid": [5, 6, 7], "tstid": [8, 9, 10, 11, 12]}
    savemat(folder / "setid.mat", {k: np.array(v)[None, :] for k, v in ids.items()})
    for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        data = get_dataset("flowers102", split, root=tmp_path)
        assert list(data.labels) == [labels[i - 1] - 1 for i in ids[key]]  # official, 0-based
        assert data.num_classes == 102
    image, _ = get_dataset("flowers102", "test", root=tmp_path)[0]
    assert image.mode == "RGB" and image.size == (8, 8)


def test_pet_annotation_lists(tmp_path):
    folder = tmp_path / "oxford-iiit-pet"
    (folder / "images").mkdir(parents=True)
    (folder / "annotations").mkdir()
    breeds = ["Abyssinian", "american_bulldog", "Bengal"]
    lines = {"trainval": [], "test": []}
    for i in range(15):
        class_id = i % 3 + 1
        name = f"{breeds[class_id - 1]}_{i}"
        (folder / "images" / f"{name}.jpg").write_bytes(_jpeg())
        lines["test" if i >= 10 else "trainval"].append(f"{name} {class_id} 1 {class_id}")
    for part, rows in lines.items():
        (folder / "annotations" / f"{part}.txt").write_text("\n".join(rows) + "\n")
    train = get_dataset("pet", "train", root=tmp_path)
    val = get_dataset("pet", "val", root=tmp_path)
    test = get_dataset("pet", "test", root=tmp_path)
    assert (len(train), len(val), len(test)) == (8, 2, 5)
    assert list(test.labels) == [1, 2, 0, 1, 2]  # images 10..14, class ids 2,3,1,2,3
    assert test.classes[:3] == breeds and test.num_classes == 37


def _write_folder(base, classes: list[str], per_class: int) -> None:
    blob = _jpeg()
    for name in classes:
        (base / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (base / name / f"{name}_{i}.jpg").write_bytes(blob)


def test_domainnet_domain_split_and_class_count(tmp_path):
    classes = [f"class{i:03d}" for i in range(345)]
    _write_folder(tmp_path / "domainnet" / "sketch", classes, per_class=1)
    (tmp_path / "domainnet" / "sketch" / "class000" / "extra.jpg").write_bytes(_jpeg())
    splits = {
        s: get_dataset("domainnet/sketch", s, root=tmp_path) for s in ("train", "val", "test")
    }
    assert [len(splits[s]) for s in ("train", "val", "test")] == [
        222,
        55,
        69,
    ]  # 346 -> 277/69 -> 222/55/69
    all_labels = np.concatenate([d.labels for d in splits.values()])
    assert np.bincount(all_labels).tolist() == [2] + [1] * 344
    assert set(splits["train"].indices).isdisjoint(splits["test"].indices)
    with pytest.raises(DataError, match=r"domainnet/clipart is missing.*groundtruth/clipart.zip"):
        get_dataset("domainnet/clipart", "test", root=tmp_path)
    _write_folder(tmp_path / "domainnet" / "real", classes[:3], per_class=2)
    with pytest.raises(DataError, match=r"found 3 classes on disk, expected 345"):
        get_dataset("domainnet/real", "train", root=tmp_path)


def test_imagenet_val_and_imagenet_c_folders(tmp_path):
    wnids = [f"n{i:08d}" for i in range(1000)]
    _write_folder(tmp_path / "imagenet" / "val", wnids, per_class=1)
    val = get_dataset("imagenet", "val", root=tmp_path)
    assert len(val) == 1000 and val[999][1] == 999 and val.classes[0] == "n00000000"
    assert list(get_dataset("imagenet", "test", root=tmp_path).labels) == list(val.labels)
    with pytest.raises(DataError, match=r"has splits val, test; got 'train'"):
        get_dataset("imagenet", "train", root=tmp_path)
    _write_folder(tmp_path / "imagenet-c" / "fog" / "2", wnids, per_class=1)
    assert is_available("imagenet-c/fog/2", tmp_path)[0]
    assert len(get_dataset("imagenet-c/fog/2", "val", root=tmp_path)) == 1000
    with pytest.raises(DataError, match=r"imagenet-c/fog/3 is missing"):
        get_dataset("imagenet-c/fog/3", "val", root=tmp_path)


def _idx_gz(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_fashion(folder, n_train: int = 20, n_test: int = 5) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.arange(n * 28 * 28).reshape(n, 28, 28) % 251
        _idx_gz(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _idx_gz(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_fashion_mnist_idx_files(tmp_path):
    write_fashion(tmp_path / "FashionMNIST" / "raw")
    assert is_available("fashion-mnist", tmp_path) == (True, str(tmp_path / "FashionMNIST/raw"))
    test = get_dataset("fashion-mnist", "test", root=tmp_path)
    image, label = test[3]
    assert image.mode == "L" and image.size == (28, 28) and label == 3
    expected = (np.arange(5 * 784).reshape(5, 28, 28) % 251)[3]
    assert np.array_equal(np.asarray(image), expected)
    assert len(get_dataset("fashion-mnist", "train", root=tmp_path)) == 16
    assert test.classes[9] == "Ankle boot"


def test_idx_reader_rejects_bad_files(tmp_path):
    from vitplas.data.layouts import read_idx

    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab")
    with pytest.raises(DataError, match="not a uint8 idx file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(DataError, match=r"header says \(5,\) but holds 3 values"):
        read_idx(tmp_path / "short")


def test_missing_files_name_path_layout_and_fix(tmp_path):
    with pytest.raises(DataError) as err:
        get_dataset("cifar10", "train", root=tmp_path)
    text = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in text
    assert "batches.meta" in text and "download=True" in text
    with pytest.raises(DataError, match=r"setid.mat is missing.*download=True"):
        get_dataset("flowers102", "train", root=tmp_path)
    with pytest.raises(DataError, match=r"imagenet/val is missing.*image-net.org"):
        get_dataset("imagenet", "val", root=tmp_path)


def test_download_fetches_into_the_layout_then_reads_it(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    def fake_cifar10(root, download):  # stands in for torchvision's downloader
        calls.append((root, download))
        write_cifar10(tmp_path)

    monkeypatch.setattr(tvd, "CIFAR10", fake_cifar10)
    assert len(get_dataset("cifar10", "test", root=tmp_path, download=True)) == 6
    assert calls == [(str(tmp_path), True)]
    get_dataset("cifar10", "train", root=tmp_path, download=True)
    assert len(calls) == 1  # files present: never fetched again


def test_download_failure_is_a_data_error(tmp_path, monkeypatch):
    from urllib.error import URLError

    import torchvision.datasets.utils as tvu

    def offline(url, download_root, **kwargs):
        raise URLError(f"unreachable: {url}")

    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match=r"download failed \(URLError.*groundtruth/clipart.zip"):
        get_dataset("domainnet/clipart", "train", root=tmp_path, download=True)
    with pytest.raises(DataError, match=r"download failed.*CIFAR-10-C.tar.*Offline\? Put"):
        get_dataset("cifar10-c/snow/5", "train", root=tmp_path, download=True)
