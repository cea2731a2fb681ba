"""What a run trains on: the model (with a new head) and the train/val/test datasets.

`load_sources(cfg)` builds them from the registries (vitplas.models, vitplas.data). Tests and
callers with their own model or tensors build a `Sources` directly and pass it in.

A text set (DatasetInfo.modality "text") needs a text model: it becomes the transformers
*ForSequenceClassification of its config with a new head (models.hf_text.with_classifier: BERT
classifies the pooler's output of the first token, GPT-2 its last real token), and each split
is tokenised once by the model's own tokenizer to cfg.max_length (data.TokenizedTexts: items
(tokens (2, L) int64, label)). The image options (img_size, crops, hflip) are not read; those
that would change a number (protocol paper, augment device) are refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vitplas.config import ConfigError
from vitplas.data.transforms import IMAGENET_MEAN, IMAGENET_STD, preprocessing_for
from vitplas.models.build import reset_head as reset_head  # re-exported
from vitplas.models.build import start_model
from vitplas.training.config import FinetuneConfig


@dataclass
class Sources:
    """A model whose head has `num_classes` outputs, its datasets, and where they came from.

    Images of `train` are float (3, H, W) normalised tensors, or uint8 (3, H, W) tensors when
    the config asks for augmentation on the device.
    """

    model: nn.Module
    train: Dataset | None
    val: Dataset | None
    test: Dataset | None
    num_classes: int
    mean: tuple[float, ...] = IMAGENET_MEAN  # normalisation used for the inputs
    std: tuple[float, ...] = IMAGENET_STD
    description: dict[str, Any] = field(default_factory=dict)  # model/dataset provenance


def load_model_for(
    cfg: FinetuneConfig, num_classes: int, text: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """The configured model with a new `num_classes` head drawn from cfg.seed (as the run's
    protocol says: models.build.start_model), and its description for the manifest. `text`:
    the model is read without an image size; it must be a text model."""
    loaded = start_loaded(cfg, num_classes, text)
    pretrained = getattr(loaded.model, "pretrained_cfg", None) or {}
    info = {
        "model_spec": loaded.spec,
        "model_description": loaded.description,
        "model_checksum": loaded.checksum,
        "model_random_init": loaded.random_init,
        "model_mean": list(loaded.mean),
        "model_std": list(loaded.std),
        "model_interpolation": pretrained.get("interpolation"),
        "model_crop_pct": pretrained.get("crop_pct"),
    }
    return loaded.model, info


def start_loaded(cfg: FinetuneConfig, num_classes: int, text: bool = False):
    """The LoadedModel a run of `cfg` starts from (load_model_for's model and facts)."""
    if text and cfg.protocol == "paper":
        raise ConfigError(
            f"protocol=paper is the original's ViT recipe; {cfg.dataset} is a text set: "
            "finetune text models under protocol=model"
        )
    if not text and _is_text_preset(cfg.model):
        raise ConfigError(
            f"model {cfg.model} is a text model; dataset {cfg.dataset} holds images: finetune "
            "it on a text set (rotten-tomatoes, wordnet-glosses, fortunes, ...)"
        )
    loaded = start_model(
        cfg.model,
        num_classes=num_classes,
        random_init=cfg.random_init,
        img_size=None if text else cfg.img_size,
        seed=cfg.seed,
        protocol=cfg.protocol,
        allow_unfinished=cfg.allow_unfinished,
    )
    if text and loaded.modality != "text":
        raise ConfigError(
            f"dataset {cfg.dataset} is a text set; model {cfg.model} reads images: finetune a "
            "text model on it (minilm-l6, gpt2, a BERT / GPT-2 folder)"
        )
    return loaded


def uint8_transform(size: int):
    """Train transform for augmentation on the device: PIL/array -> uint8 (3, size, size).

    The shorter side is resized to `size` and the centre square kept, so that a non-square
    image keeps its aspect ratio (the device's RandomResizedCrop then draws its own)."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.ToImage(),
            v2.RGB(),
            v2.Resize(size, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.uint8, scale=True),
        ]
    )


def load_sources(
    cfg: FinetuneConfig, splits: tuple[str, ...] = ("train", "val", "test")
) -> Sources:
    """Model and datasets of `cfg` from the registries; unrequested splits are None."""
    from vitplas.data import build_transform, dataset_info, get_dataset, skipped_report

    info = dataset_info(cfg.dataset)
    if info.modality == "text":
        return load_text_sources(cfg, splits)
    model, description = load_model_for(cfg, info.num_classes)
    prep = preprocessing_for(cfg.protocol, description)
    plan = cfg.split_plan()
    data: dict[str, Dataset | None] = {}
    for split in ("train", "val", "test"):
        if split not in splits:
            data[split] = None
            continue
        train = split == "train"
        if train and cfg.augment == "device":
            transform = uint8_transform(cfg.load_size or cfg.img_size)
        else:
            augment = dict(scale=cfg.crop_scale, ratio=cfg.crop_ratio, flip=cfg.hflip)
            transform = build_transform(size=cfg.img_size, train=train, **augment, **prep)
        data[split] = get_dataset(
            cfg.dataset,
            split,
            transform=transform,
            root=cfg.data_root,
            download=cfg.download,
            plan=plan,
            skip_unreadable=cfg.skip_unreadable,
        )
    description.update({"dataset": cfg.dataset, "dataset_source": str(info.source)})
    if cfg.skip_unreadable:
        description.update(skipped_report(data.values()))
    return Sources(
        model=model,
        train=data["train"],
        val=data["val"],
        test=data["test"],
        num_classes=info.num_classes,
        mean=prep["mean"],
        std=prep["std"],
        description=description,
    )


def _is_text_preset(spec: str) -> bool:
    from vitplas.models.registry import get_preset, is_preset

    return is_preset(spec) and get_preset(spec).modality == "text"


def load_text_sources(cfg: FinetuneConfig, splits: tuple[str, ...]) -> Sources:
    """load_sources of a text set (module docstring): a sequence classifier, tokenised splits."""
    from vitplas.data import TokenizedTexts, dataset_info, get_dataset
    from vitplas.models.hf_text import check_max_length, load_tokenizer

    if cfg.augment == "device":
        raise ConfigError(f"augment=device crops images; {cfg.dataset} is a text set: drop it")
    info = dataset_info(cfg.dataset)
    loaded = start_loaded(cfg, info.num_classes, text=True)
    check_max_length(loaded.spec, loaded.model, cfg.max_length)
    tokenizer = load_tokenizer(loaded.tokenizer, loaded.model)
    plan = cfg.split_plan()
    data: dict[str, Dataset | None] = dict.fromkeys(("train", "val", "test"))
    for split in splits:
        texts = get_dataset(
            cfg.dataset, split, root=cfg.data_root, download=cfg.download, plan=plan
        )
        data[split] = TokenizedTexts(texts, tokenizer, cfg.max_length)
    description = {
        "model_spec": loaded.spec,
        "model_description": loaded.description,
        "model_checksum": loaded.checksum,
        "model_random_init": loaded.random_init,
        "model_modality": "text",
        "model_tokenizer": loaded.tokenizer,
        "max_length": cfg.max_length,
        "dataset": cfg.dataset,
        "dataset_source": str(info.source),
    }
    return Sources(
        model=loaded.model, train=data["train"], val=data["val"], test=data["test"],
        num_classes=info.num_classes, mean=(), std=(), description=description,
    )  # fmt: skip
