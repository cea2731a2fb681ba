"""The paper's datasets (PAPER.md section 3) and the ImageNet reference streams (section 1)."""

from __future__ import annotations

from vitplas.data.layouts import (
    read_cifar_batches,
    read_corruption,
    read_flowers,
    read_pet,
    scan_image_folder,
)
from vitplas.data.records import ArrayImages, FileImages
from vitplas.data.registry import Param, Source, register

# The 15 corruptions of Hendrycks & Dietterich plus the 4 extra ones, shared by the three
# -C datasets (same file / folder names in CIFAR-10-C, CIFAR-100-C and ImageNet-C).
CORRUPTIONS = (
    "brightness", "contrast", "defocus_blur", "elastic_transform", "fog", "frost",
    "gaussian_blur", "gaussian_noise", "glass_blur", "impulse_noise", "jpeg_compression",
    "motion_blur", "pixelate", "saturate", "shot_noise", "snow", "spatter",
    "speckle_noise", "zoom_blur",
)  # fmt: skip
SEVERITY = Param("severity", tuple("12345"))
DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
_DOMAINNET_URL = "http://csr.bu.edu/ftp/visda/2019/multi-source/"
_DOMAINNET_ZIPS = {  # two domains sit under groundtruth/ on the server
    d: _DOMAINNET_URL + ("groundtruth/" if d in ("clipart", "painting") else "") + f"{d}.zip"
    for d in DOMAINS
}
_IMAGENET_C_TARS = {  # which zenodo tar holds each ImageNet-C corruption
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
    "extra": ("speckle_noise", "gaussian_blur", "spatter", "saturate"),
}
_TORCHVISION_HOW = "pass download=True to get_dataset: torchvision fetches it into the root"
_CIFAR_C_URL = {
    "cifar10-c": "https://zenodo.org/record/2535967/files/CIFAR-10-C.tar",
    "cifar100-c": "https://zenodo.org/record/3555552/files/CIFAR-100-C.tar",
}


def _torchvision(src: Source, cls_name: str, **kwargs) -> None:
    if src.download and not src.path.exists():  # present files are read, never re-fetched
        import torchvision.datasets as tvd

        src.fetch(lambda: getattr(tvd, cls_name)(str(src.root), download=True, **kwargs))


_CIFAR_COMMON = dict(
    splits=("train", "val", "test"),
    split_rule="val-from-train",
    source="torchvision download",
    how_to_get=_TORCHVISION_HOW,
    image_size="32x32",
)


@register(
    "cifar10",
    num_classes=10,
    location="cifar-10-batches-py",
    layout="cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (pickled dicts)",
    description="CIFAR-10: 50,000 train + 10,000 test, 32x32 RGB, 10 classes",
    **_CIFAR_COMMON,
)
def _cifar10(src: Source, part: str) -> ArrayImages:
    _torchvision(src, "CIFAR10")
    files = [f"data_batch_{i}" for i in range(1, 6)] if part == "train" else ["test_batch"]
    return read_cifar_batches(src, files, b"labels", "batches.meta", b"label_names")


@register(
    "cifar100",
    num_classes=100,
    location="cifar-100-python",
    layout="cifar-100-python/{train, test, meta} (pickled dicts, fine labels)",
    description="CIFAR-100: 50,000 train + 10,000 test, 32x32 RGB, 100 fine classes",
    **_CIFAR_COMMON,
)
def _cifar100(src: Source, part: str) -> ArrayImages:
    _torchvision(src, "CIFAR100")
    return read_cifar_batches(src, [part], b"fine_labels", "meta", b"fine_label_names")


def _cifar_c(src: Source, part: str) -> ArrayImages:
    if src.download and not src.path.exists():
        from torchvision.datasets.utils import download_and_extract_archive

        url = _CIFAR_C_URL[src.info.family]
        src.fetch(lambda: download_and_extract_archive(url, str(src.root)))
    classes = [str(c) for c in range(src.info.num_classes or 0)]
    values = src.info.values
    return read_corruption(src, values["corruption"], int(values["severity"]), classes)


def _locate_cifar_c(src: Source) -> tuple[bool, str]:
    """The corruption's .npy and labels.npy (the folder alone for the family)."""
    if not src.info.complete:
        return src.path.is_dir(), str(src.path)
    files = [src.path / f"{src.info.values['corruption']}.npy", src.path / "labels.npy"]
    return all(f.is_file() for f in files), str(files[0])


for _family, _classes, _folder in (
    ("cifar10-c", 10, "CIFAR-10-C"),
    ("cifar100-c", 100, "CIFAR-100-C"),
):
    register(
        _family,
        num_classes=_classes,
        splits=("train", "val", "test"),
        split_rule="from-all",
        location=_folder,
        layout=f"{_folder}/<corruption>.npy (5 severities x 10,000, 32, 32, 3) uint8 + labels.npy",
        source="zenodo download",
        how_to_get=f"pass download=True, or fetch {_CIFAR_C_URL[_family]} and untar it in the root",
        description=f"{_folder}: one corruption at one severity, 10,000 test images of "
        f"CIFAR-{_classes} split 8,000 train (6,400 train + 1,600 val) / 2,000 test",
        image_size="32x32",
        params=(Param("corruption", CORRUPTIONS), SEVERITY),
        locate=_locate_cifar_c,
    )(_cifar_c)


@register(
    "flowers102",
    num_classes=102,
    splits=("train", "val", "test"),
    split_rule="official",
    location="flowers-102",
    layout="flowers-102/{jpg/image_00001.jpg.., imagelabels.mat, setid.mat}",
    source="torchvision download",
    how_to_get=_TORCHVISION_HOW,
    description="Oxford Flowers102: official 1,020 train / 1,020 val / 6,149 test, 102 classes",
)
def _flowers(src: Source, part: str) -> FileImages:
    _torchvision(src, "Flowers102")
    return read_flowers(src, part)


@register(
    "pet",
    num_classes=37,
    splits=("train", "val", "test"),
    split_rule="val-from-train",
    location="oxford-iiit-pet",
    layout="oxford-iiit-pet/{images/<name>.jpg, annotations/trainval.txt, annotations/test.txt}",
    source="torchvision download",
    how_to_get=_TORCHVISION_HOW,
    description="Oxford-IIIT Pet: 3,680 trainval (80/20 train/val) + 3,669 test, 37 breeds",
)
def _pet(src: Source, part: str) -> FileImages:
    _torchvision(src, "OxfordIIITPet")
    return read_pet(src, part)


@register(
    "domainnet",
    num_classes=345,
    splits=("train", "val", "test"),
    split_rule="from-all",
    location="domainnet/{domain}",
    layout="domainnet/<domain>/<class>/<image>.jpg (345 class folders per domain)",
    source="URL download",
    how_to_get=f"pass download=True, or unzip {_DOMAINNET_URL}[groundtruth/]<domain>.zip "
    "into <root>/domainnet/",
    description="DomainNet (cleaned): one domain, 80/20 train/test with a fixed seed, "
    "val = 20% of train, 345 classes",
    params=(Param("domain", DOMAINS),),
)
def _domainnet(src: Source, part: str) -> FileImages:
    url = _DOMAINNET_ZIPS[src.info.values["domain"]]
    if src.download and not src.path.exists():
        from torchvision.datasets.utils import download_and_extract_archive

        src.fetch(lambda: download_and_extract_archive(url, str(src.root / "domainnet")))
    if not src.path.is_dir():
        raise src.missing(src.path, "folder", hint=f" (this domain: {url})")
    return scan_image_folder(src, src.path)


_IMAGENET_NOTE = "'val' and 'test' both read the 50,000 official validation images"


@register(
    "imagenet",
    num_classes=1000,
    splits=("val", "test"),
    split_rule="stream",
    location="imagenet/val",
    layout="imagenet/val/<wnid>/*.JPEG (1,000 wnid folders)",
    source="local root",
    how_to_get="no automatic download (ImageNet needs an account at https://image-net.org); "
    "put the validation images in one folder per wnid under <root>/imagenet/val/",
    description=f"ImageNet-1k validation, the paper's near-pretraining stream; {_IMAGENET_NOTE}",
)
def _imagenet(src: Source, part: str) -> FileImages:
    return scan_image_folder(src, src.path)


@register(
    "imagenet-c",
    num_classes=1000,
    splits=("val", "test"),
    split_rule="stream",
    location="imagenet-c/{corruption}/{severity}",
    layout="imagenet-c/<corruption>/<severity>/<wnid>/*.JPEG",
    source="zenodo download",
    how_to_get="pass download=True, or untar the zenodo record 2235448 (extra: 2536630) "
    "tar holding the corruption into <root>/imagenet-c/",
    description=f"ImageNet-C: ImageNet val under one corruption and severity; {_IMAGENET_NOTE}",
    params=(Param("corruption", CORRUPTIONS), SEVERITY),
)
def _imagenet_c(src: Source, part: str) -> FileImages:
    if src.download and not src.path.exists():
        from torchvision.datasets.utils import download_and_extract_archive

        corruption = src.info.values["corruption"]
        tar = next(t for t, names in _IMAGENET_C_TARS.items() if corruption in names)
        record = "2536630" if tar == "extra" else "2235448"
        url = f"https://zenodo.org/record/{record}/files/{tar}.tar"
        src.fetch(lambda: download_and_extract_archive(url, str(src.root / "imagenet-c")))
    return scan_image_folder(src, src.path)
