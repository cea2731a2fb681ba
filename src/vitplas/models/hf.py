"""Hugging Face ViT, DeiT, DINOv2 (+ registers) and BEiT converted to timm's layout.

A spec is a hub id (`google/vit-base-patch16-224-in21k`, `facebook/dinov2-small`) or a local
folder holding `config.json` and `model.safetensors` (or `pytorch_model.bin`). The HF state
dict is renamed key by key (vitplas.models.hf_layouts, one layout per `model_type`) into the
timm model built from `config.json`; q, k and v are fused into `qkv`. Every HF key must be
used (except the pre-logits `pooler`, a `mask_token` and BEiT's relative position index,
which timm has no place for) and every timm key filled with the right shape, or loading
fails listing keys.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from vitplas.models.checkpoints import load_checked, read_state_dict
from vitplas.models.errors import RANDOM_INIT_ADVICE, ModelError, hub_advice, reason
from vitplas.models.hf_layouts import layout_for
from vitplas.models.registry import HALF

HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class HFFiles:
    """Where a HF ViT's files are; `weights` is None when only the config is needed."""

    config: Path
    weights: Path | None
    preprocessor: Path | None


def is_hf_id(spec: str) -> bool:
    return HF_ID.fullmatch(spec) is not None


def is_hf_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file()


def cached_file(repo: str, filename: str) -> Path | None:
    """`filename` of hub repo `repo` if it is in the local HF cache (no network call)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename)
    return Path(found) if isinstance(found, str) else None


def hub_cached_weights(repo: str) -> Path | None:
    for filename in WEIGHTS:
        if (path := cached_file(repo, filename)) is not None:
            return path
    return None


def locate(spec: str, *, need_weights: bool) -> HFFiles:
    """Files of a local HF folder, or of a hub repo (downloaded when online, else from cache)."""
    if Path(spec).is_dir():
        folder = Path(spec)
        if not (folder / CONFIG).is_file():
            raise ModelError(f"folder {folder} has no {CONFIG}; it is not a Hugging Face model")
        weights = next((folder / w for w in WEIGHTS if (folder / w).is_file()), None)
        if need_weights and weights is None:
            raise ModelError(f"folder {folder} has none of {', '.join(WEIGHTS)}")
        pre = folder / PREPROCESSOR
        return HFFiles(folder / CONFIG, weights, pre if pre.is_file() else None)
    config = _download(spec, CONFIG, local_only=not need_weights)
    weights = None
    if need_weights:
        for filename in WEIGHTS:
            if (weights := _download(spec, filename, optional=True)) is not None:
                break
        if weights is None:
            raise _missing(spec, None)
    return HFFiles(config, weights, _download(spec, PREPROCESSOR, optional=True))


def _download(repo: str, filename: str, *, optional: bool = False, local_only: bool = False):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo, filename, local_files_only=local_only))
    except LocalEntryNotFoundError as err:  # offline and not cached (a subclass: check first)
        if optional and filename != CONFIG and cached_file(repo, CONFIG) is not None:
            return None  # the repo is cached, just without this file
        raise _missing(repo, err) from err
    except EntryNotFoundError:
        if optional:
            return None
        raise ModelError(f"Hugging Face repo '{repo}' has no {filename}") from None
    except (OSError, RuntimeError, ValueError) as err:  # repo not found, no network, ...
        raise _missing(repo, err) from err


def _missing(repo: str, err: BaseException | None) -> ModelError:
    from huggingface_hub import constants

    why = f" ({reason(err)})" if err else ""
    return ModelError(
        f"cannot get Hugging Face model '{repo}': looked in the hub cache "
        f"{constants.HF_HUB_CACHE} and on the hub{why}. To fix: {hub_advice()}; or download "
        f"the repo and pass its folder (with {CONFIG} and {WEIGHTS[0]} or {WEIGHTS[1]}) as the "
        f"spec; or pass {RANDOM_INIT_ADVICE}"
    )


def model_type(config: Path) -> str | None:
    """The `model_type` of a config.json, None when it cannot be read."""
    try:
        return str(json.loads(config.read_text()).get("model_type"))
    except (OSError, ValueError, AttributeError):
        return None


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot read Hugging Face config {path}: {err}") from err
    layout_for(str(config.get("model_type")), str(path))  # a model type we convert
    if config.get("hidden_act", "gelu") != "gelu":  # timm's MLPs use exact (erf) GELU
        raise ModelError(f"{path}: hidden_act {config['hidden_act']!r} is not supported (gelu)")
    return config


def mean_std(preprocessor: Path | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation from preprocessor_config.json; ViTImageProcessor's default is 0.5/0.5."""
    if preprocessor is None:
        return HALF, HALF
    cfg = json.loads(preprocessor.read_text())
    return tuple(cfg.get("image_mean", HALF)), tuple(cfg.get("image_std", HALF))


def load_hf_vit(spec: str, *, random_init: bool) -> tuple[nn.Module, HFFiles, str]:
    """(timm model, its files, HF model_type) for an HF id or folder; random_init needs only
    config.json."""
    files = locate(spec, need_weights=not random_init)
    config = read_config(files.config)
    layout = layout_for(config["model_type"], str(files.config))
    if random_init:
        return layout.build(config, 0, False), files, layout.model_type
    state = layout.to_timm(read_state_dict(files.weights))
    model = layout.build(config, layout.num_classes(state), True)
    source = f"Hugging Face {layout.model_type} {files.weights}"
    return load_checked(model, state, source), files, layout.model_type
