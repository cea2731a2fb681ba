"""Tests over the whole registry, name parsing, split generation, roots and availability."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitplas.data import (
    SPLIT_SEED,
    DataError,
    dataset_info,
    get_dataset,
    is_available,
    list_datasets,
    resolve_root,
    split_indices,
)
from vitplas.data.splits import RULES, part_for, select

PAPER_FAMILIES = {"cifar10", "cifar100", "cifar10-c", "cifar100-c", "flowers102", "pet"}
PAPER_FAMILIES |= {"domainnet", "imagenet", "imagenet-c"}
OFFLINE_FAMILIES = {"fashion-mnist", "mnist-5k", "digits", "photos", "folder"}
TEXT_FAMILIES = {
    "rotten-tomatoes",
    "wordnet-glosses",
    "fortunes",
    "ag-news",
    "wikitext-103",
    "sst2",
}


def _example(info) -> str:
    """A concrete member of a family: the first choice (or default) of each parameter."""
    if info.family == "folder":
        return "folder:/nonexistent/images"
    return "/".join([info.family, *((p.choices or (p.default,))[0] for p in info.params)])


def test_registry_holds_the_paper_and_offline_datasets():
    families = [info.family for info in list_datasets()]
    assert set(families) == PAPER_FAMILIES | OFFLINE_FAMILIES | TEXT_FAMILIES
    assert {i.family for i in list_datasets() if i.modality == "text"} == TEXT_FAMILIES
    assert len(families) == len(set(families))


@pytest.mark.parametrize("info", list_datasets(), ids=lambda i: i.family)
def test_every_entry_is_complete(info):
    assert len(info.description) > 20 and info.layout and info.source and info.how_to_get
    assert info.split_rule in RULES
    assert set(info.splits) <= {"train", "val", "test"} and "test" in info.splits
    if info.labelled and info.family != "folder":  # folder counts its class folders
        assert isinstance(info.num_classes, int) and info.num_classes > 1
    else:
        assert info.num_classes is None
    if info.modality == "text":  # a text set has no image geometry to show
        assert (info.image_size, info.channels) == ("", 0)
    else:
        assert info.modality == "image" and info.channels in (1, 3)
    member = dataset_info(_example(info))
    assert member.complete and member.family == info.family
    present, where = is_available(member.name, "/nonexistent-root")
    assert isinstance(present, bool) and where


def test_class_counts_and_split_rules_follow_the_paper():
    expected = {"cifar10": 10, "cifar100": 100, "flowers102": 102, "pet": 37}
    expected |= {"domainnet/sketch": 345, "cifar10-c/snow/5": 10, "cifar100-c/fog/1": 100}
    expected |= {"imagenet": 1000, "fashion-mnist": 10, "mnist-5k": 10, "digits": 10}
    expected |= {"rotten-tomatoes": 3, "wordnet-glosses": 41, "fortunes": 40, "ag-news": 4}
    expected |= {"sst2": 2}
    for name, classes in expected.items():
        assert dataset_info(name).num_classes == classes, name
    assert dataset_info("flowers102").split_rule == "official"  # its own val split
    assert dataset_info("cifar10").split_rule == "val-from-train"
    assert dataset_info("cifar10-c/contrast/5").split_rule == "from-all"
    assert dataset_info("domainnet/clipart").split_rule == "from-all"
    assert dataset_info("photos").labelled is False


def test_unknown_names_list_the_known_ones():
    with pytest.raises(DataError) as err:
        dataset_info("cifar11")
    text = str(err.value)
    assert "'cifar11' is unknown (did you mean 'cifar10'?)" in text
    assert "cifar10-c/<corruption>/<severity>" in text and "folder:<path>" in text
    with pytest.raises(DataError, match=r"domain 'cartoon' is unknown; domain is one of: clipart"):
        dataset_info("domainnet/cartoon")
    with pytest.raises(DataError, match="too many parts"):
        dataset_info("cifar10/extra")
    with pytest.raises(DataError, match="<length> must be a positive integer"):
        dataset_info("photos/0")
    with pytest.raises(DataError, match="has splits train, val, test; got 'dev'"):
        get_dataset("digits", "dev")


def test_names_are_canonical():
    assert dataset_info("photos").name == "photos/10000"
    assert dataset_info("photos/0128").name == "photos/128"
    assert dataset_info("cifar10-c/snow/5").values == {"corruption": "snow", "severity": "5"}
    assert dataset_info("cifar10-c").complete is False


def test_split_indices_sizes_disjoint_and_fixed():
    kept, held = split_indices(10_000)
    assert (len(kept), len(held)) == (8_000, 2_000)
    assert np.intersect1d(kept, held).size == 0
    assert np.array_equal(np.union1d(kept, held), np.arange(10_000))
    assert np.all(np.diff(kept) > 0) and kept.dtype == np.int64
    again = split_indices(10_000, seed=SPLIT_SEED)
    assert np.array_equal(again[1], held)
    assert not np.array_equal(split_indices(10_000, seed=SPLIT_SEED + 1)[1], held)
    assert len(split_indices(50_000)[1]) == 10_000  # CIFAR: 40,000 / 10,000


def test_paper_split_sizes_from_index_ranges():
    sizes = {s: len(select("from-all", s, 10_000)) for s in ("train", "val", "test")}
    assert sizes == {"train": 6_400, "val": 1_600, "test": 2_000}  # CIFAR-10-C: 8,000 / 2,000
    parts = [select("from-all", s, 10_000) for s in ("train", "val", "test")]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(10_000))
    assert len(select("val-from-train", "train", 50_000)) == 40_000
    assert len(select("val-from-train", "val", 50_000)) == 10_000
    assert len(select("val-from-train", "test", 10_000)) == 10_000
    assert (part_for("val-from-train", "val"), part_for("from-all", "test")) == ("train", "all")
    with pytest.raises(ValueError, match="unknown split rule"):
        select("random", "train", 10)


def test_val_split_ignores_the_training_seed(tmp_path):
    seen = []
    for seed in (0, 42, 3407):  # the paper's training seeds
        torch.manual_seed(seed)
        np.random.seed(seed)
        seen.append(get_dataset("digits", "val").indices)
    assert all(np.array_equal(seen[0], s) for s in seen[1:])
    moved = get_dataset("digits", "val", split_seed=SPLIT_SEED + 1).indices
    assert not np.array_equal(moved, seen[0])


def test_resolve_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("VITPLAS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VITPLAS_DATA", raising=False)
    assert resolve_root() == tmp_path / "home" / "data"
    monkeypatch.setenv("VITPLAS_DATA", str(tmp_path / "env"))
    assert resolve_root() == tmp_path / "env"
    assert resolve_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert is_available("cifar10")[1] == str(tmp_path / "env" / "cifar-10-batches-py")


def test_folder_pool_and_split_folders(tmp_path):
    from PIL import Image

    for sub, classes in (("pool", "abc"), ("split/train", "ab"), ("split/test", "ab")):
        for c in classes:
            (tmp_path / sub / c).mkdir(parents=True)
            for i in range(5):
                Image.new("RGB", (4, 4)).save(tmp_path / sub / c / f"{i}.png")
    pool = f"folder:{tmp_path / 'pool'}"
    assert dataset_info(pool).num_classes == 3 and dataset_info(pool).split_rule == "from-all"
    sizes = [len(get_dataset(pool, s)) for s in ("train", "val", "test")]
    assert sizes == [10, 2, 3]  # 15 -> 12 / 3 -> 10 / 2 / 3
    split = f"folder:{tmp_path / 'split'}"
    assert dataset_info(split).split_rule == "val-from-train"
    assert len(get_dataset(split, "test")) == 10 and len(get_dataset(split, "train")) == 8
    assert is_available(split) == (True, str(tmp_path / "split"))
    (tmp_path / "split" / "test" / "z").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "split" / "test" / "z" / "0.png")
    with pytest.raises(DataError, match=r"class folders \['z'\] are not among the 2 classes"):
        get_dataset(split, "test")
    with pytest.raises(DataError, match=r"folder .*missing"):
        get_dataset(f"folder:{tmp_path / 'none'}", "test")
