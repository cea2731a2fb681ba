"""What `vitplas landscape` reads, by modality: the model, its three streams, the pair tokens
of the rate of change and the parameters the SGD path moves (analysis.landscape).

The modality is the dataset's (as finetuning decides it): an image set needs an image model,
a text set a text model, and the reference defaults to that modality's (DEFAULT_REFERENCE, as
`vitplas select` chooses it). One record per modality (MODALITIES) holds what differs:

    image  streams through the model's eval transform; pairs embedded by embed_images
           (2P, N, D), every token counts; a component's parameters are its module's.
    text   texts tokenised by the model's own tokenizer to max_length (data.TokenizedTexts,
           finetuning's and the estimator's: (2, L) ids and mask per text), the loss through
           the sequence classifier with its attention mask (models.text.forward_logits, as
           finetuning computes it); pairs embedded by embed_tokens (2P, L, D) with their
           masks (2P, L), so the rate is the estimator's masked ratio (analysis.token_inputs);
           a component's parameters are the model's own (GPT-2's Conv1D probes are views, and
           a view moved would not move the model). img_size is not read.

`blocks` keeps the first blocks of the model's block list wherever its family keeps it
(Family.blocks_path: a ViT's `blocks`, BERT's `encoder.layer`, GPT-2's `h`); the rest of the
model (final norm, pooler, classifier) reads the last kept block's output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vitplas.analysis.configs import DEFAULT_REFERENCE, LandscapeConfig
from vitplas.analysis.plasticity import embed_images
from vitplas.analysis.setup import open_stream
from vitplas.data import TokenizedTexts, dataset_info, transform_for
from vitplas.models.build import load_configured
from vitplas.models.components import ComponentMap
from vitplas.models.errors import ModelError
from vitplas.models.families import find_family
from vitplas.models.registry import get_preset, is_preset
from vitplas.models.text import embed_tokens

HOLDS = {"image": "images", "text": "texts"}  # what a stream of each modality holds


@dataclass(frozen=True)
class Streams:
    """The train split (SGD steps, loss batch), the reference's val and the dataset's test
    split (the pairs), as the model reads them: items (image (3, H, W) | tokens (2, L), label)."""

    train: Dataset
    reference: Dataset
    target: Dataset


def reference_of(cfg: LandscapeConfig) -> str:
    """cfg.reference, else the default of the dataset's modality; another modality refused."""
    modality = dataset_info(cfg.dataset).modality
    name = cfg.reference or DEFAULT_REFERENCE[modality]
    if (kind := dataset_info(name).modality) != modality:
        raise ModelError(
            f"reference '{name}' holds {HOLDS[kind]} but dataset '{cfg.dataset}' holds "
            f"{HOLDS[modality]}: name a reference of {HOLDS[modality]} (e.g. "
            f"reference={DEFAULT_REFERENCE[modality]})"
        )
    return name


def _image_streams(cfg: LandscapeConfig, loaded: Any) -> Streams:
    transform = transform_for(loaded, False, cfg.protocol)
    opened = (
        open_stream(name, split, transform, cfg.data_root, False, cfg.protocol)
        for name, split in ((cfg.dataset, "train"), (reference_of(cfg), "val"),
                            (cfg.dataset, "test"))
    )  # fmt: skip
    return Streams(*opened)


def _text_streams(cfg: LandscapeConfig, loaded: Any) -> Streams:
    from vitplas.models.hf_text import check_max_length, load_tokenizer

    check_max_length(loaded.spec, loaded.model, cfg.max_length)
    tokenizer = load_tokenizer(loaded.tokenizer, loaded.model)  # GPT-2: its pad id set
    opened = (
        TokenizedTexts(open_stream(name, split, None, cfg.data_root, False), tokenizer,
                       cfg.max_length)
        for name, split in ((cfg.dataset, "train"), (reference_of(cfg), "val"),
                            (cfg.dataset, "test"))
    )  # fmt: skip
    return Streams(*opened)


def _embed_images(cmap: ComponentMap, batch: torch.Tensor) -> tuple[torch.Tensor, None]:
    return embed_images(cmap, batch), None


def _embed_texts(cmap: ComponentMap, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ids, masks = batch.unbind(1)  # (2P, L) each
    return embed_tokens(cmap, ids, masks), masks


def _module_params(cmap: ComponentMap, layer: int, name: str) -> list[nn.Parameter]:
    return list(cmap.module(layer, name).parameters())


def _owned_params(cmap: ComponentMap, layer: int, name: str) -> list[nn.Parameter]:
    prefix = f"{cmap.family.blocks_path}.{layer}."
    return [p for n, p in cmap.named_parameters(name) if n.startswith(prefix)]


def _image_head(cmap: ComponentMap) -> list[nn.Parameter]:
    return list(cmap.model.head.parameters())


def _text_head(cmap: ComponentMap) -> list[nn.Parameter]:
    return [p for _, p in cmap.named_parameters("head")]  # BERT: pooler + classifier


@dataclass(frozen=True)
class Modality:
    """What differs between image and text landscapes (module docstring)."""

    unit: str  # what a stream item is, for the figure's title
    streams: Callable[[LandscapeConfig, Any], Streams]
    embed: Callable[[ComponentMap, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
    params: Callable[[ComponentMap, int, str], list[nn.Parameter]]  # a component's, one block
    head: Callable[[ComponentMap], list[nn.Parameter]]  # the new head's
    size: Callable[[LandscapeConfig], str]  # the input size, for the figure's title


MODALITIES: dict[str, Modality] = {
    "image": Modality("image", _image_streams, _embed_images, _module_params, _image_head,
                      lambda cfg: f"{cfg.img_size} px" if cfg.img_size else ""),
    "text": Modality("text", _text_streams, _embed_texts, _owned_params, _text_head,
                     lambda cfg: f"{cfg.max_length} tokens (padding masked)"),
}  # fmt: skip


def load_for(cfg: LandscapeConfig, num_classes: int) -> tuple[Any, Modality]:
    """The configured model with a new `num_classes` head (a text model: its sequence
    classifier) and its modality's record; a model of the other modality refused."""
    modality = dataset_info(cfg.dataset).modality
    if modality == "image" and is_preset(cfg.model) and get_preset(cfg.model).modality == "text":
        raise ModelError(_other(cfg.dataset, modality, cfg.model, "text"))  # before img_size
    if modality == "text":
        if cfg.protocol == "paper":
            raise ModelError(
                f"protocol=paper is the original's ViT recipe; {cfg.dataset} is a text set: "
                "use protocol=model"
            )
        cfg = replace(cfg, img_size=None)  # a text set: img_size is not read
    loaded = load_configured(cfg, num_classes)
    if (reads := getattr(loaded, "modality", "image")) != modality:
        raise ModelError(_other(cfg.dataset, modality, loaded.spec, reads))
    return loaded, MODALITIES[modality]


def _other(dataset: str, modality: str, spec: str, reads: str) -> str:
    return (
        f"dataset '{dataset}' holds {HOLDS[modality]} but {spec} reads {HOLDS[reads]}: name a "
        f"dataset of {HOLDS[reads]} (vitplas datasets lists each one's modality)"
    )


def keep_blocks(model: nn.Module, blocks: int | None) -> None:
    """Keep the first `blocks` blocks of `model` (None: all), where its family holds them."""
    if blocks is None:
        return
    parent, _, attr = find_family(model).blocks_path.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    setattr(owner, attr, getattr(owner, attr)[:blocks])  # shallow: the loss needs only these
