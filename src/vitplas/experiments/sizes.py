"""How many images (texts) each split of a dataset holds, as its split rule cuts it, for the
cost of a study before it runs (experiments/cost.py): the sizes of the parts the registry's
datasets read are recorded here, the split rules (data/splits.py) cut them."""

from __future__ import annotations

# Images in the part of each dataset that its split rule cuts (data/splits.py). Families with
# parameters are keyed by the full name where the size depends on it.
PART_SIZES: dict[str, dict[str, int]] = {
    "cifar10": {"train": 50_000, "test": 10_000},
    "cifar100": {"train": 50_000, "test": 10_000},
    "cifar10-c": {"all": 10_000},
    "cifar100-c": {"all": 10_000},
    "flowers102": {"train": 1_020, "val": 1_020, "test": 6_149},
    "pet": {"train": 3_680, "test": 3_669},
    "domainnet/clipart": {"all": 48_129},  # the cleaned DomainNet
    "domainnet/infograph": {"all": 51_605},
    "domainnet/painting": {"all": 72_266},
    "domainnet/quickdraw": {"all": 172_500},
    "domainnet/real": {"all": 172_947},
    "domainnet/sketch": {"all": 69_128},
    "imagenet": {"val": 50_000, "test": 50_000},
    "imagenet-c": {"val": 50_000, "test": 50_000},
    "fashion-mnist": {"train": 60_000, "test": 10_000},
    "mnist-5k": {"all": 5_000},
    "digits": {"all": 1_797},
    # text sets: texts; the offline ones' train and test are their readers' stratified 80/20
    # carving of the pool (data/text_sets.py), as counted on the files they read
    "rotten-tomatoes": {"train": 11_067, "test": 2_768},
    "wordnet-glosses": {"train": 76_705, "test": 19_177},
    "fortunes": {"train": 11_517, "test": 2_879},
    "ag-news": {"train": 120_000, "test": 7_600},
    "sst2": {"train": 67_349, "test": 872},
}
ASSUMED_SPLIT = 10_000  # a split of unknown size (a folder: dataset) is assumed this large


def split_sizes(dataset: str) -> tuple[dict[str, int], bool]:
    """{train, val, test: images} of a dataset as its split rule cuts it, and whether the
    sizes are known (False: ASSUMED_SPLIT each)."""
    from vitplas.data.registry import dataset_info
    from vitplas.data.splits import HELD_FRACTION

    info = dataset_info(dataset)
    parts = PART_SIZES.get(info.name.rstrip("/")) or PART_SIZES.get(info.family)
    if info.family == "domainnet":
        parts = PART_SIZES.get(f"domainnet/{info.values.get('domain')}")
    if info.family == "photos":
        length = int(info.values.get("length", ASSUMED_SPLIT))
        parts = {"val": length, "test": length}
    if parts is None:
        return {s: ASSUMED_SPLIT for s in ("train", "val", "test")}, False
    rule = info.split_rule
    if rule in ("official", "stream"):
        return {s: parts.get(s, 0) for s in ("train", "val", "test")}, True
    if rule == "val-from-train":
        rest, test = parts["train"], parts["test"]
    else:  # from-all: test = 20% of everything, val = 20% of the rest
        test = round(parts["all"] * HELD_FRACTION)
        rest = parts["all"] - test
    val = round(rest * HELD_FRACTION)
    return {"train": rest - val, "val": val, "test": test}, True
