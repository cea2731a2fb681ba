"""timm architectures: validate a name, build it (random or pretrained), find cached weights."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitplas.models.errors import RANDOM_INIT_ADVICE, ModelError, hub_advice, reason

# timm modules whose models vitplas.models.families covers (some of their blocks may be refused)
VIT_MODULES = (
    "vision_transformer",
    "vision_transformer_hybrid",
    "vision_transformer_relpos",
    "deit",
    "eva",
    "beit",
    "naflexvit",
)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's files in a hub repo


def split_name(name: str) -> tuple[str, str | None]:
    """`arch.tag` -> (arch, tag); `arch` -> (arch, None)."""
    arch, _, tag = name.partition(".")
    return arch, tag or None


def is_timm_vit(name: str) -> bool:
    import timm

    arch, _ = split_name(name)
    return timm.is_model(arch) and timm.models.is_model_in_modules(arch, VIT_MODULES)


def check_timm_vit(name: str) -> None:
    """Raise unless `name` is a timm architecture of a supported family with a known tag."""
    import timm

    from vitplas.models.families import supported_names

    arch, tag = split_name(name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(module=list(VIT_MODULES)), n=5)
        hint = f"; close timm names: {', '.join(close)}" if close else ""
        raise ModelError(f"'{arch}' is not a timm architecture{hint}")
    if not timm.models.is_model_in_modules(arch, VIT_MODULES):
        module = _timm_module(arch)
        raise ModelError(
            f"timm model '{arch}' (timm module {module}) is not a supported family; "
            f"supported families: {supported_names()} (see `vitplas models --families`)"
        )
    if tag is not None and not pretrained_cfg(name):
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        raise ModelError(f"timm '{arch}' has no weights tagged '{tag}'; known tags: {tags}")


def _timm_module(arch: str) -> str:
    import timm

    for module in timm.list_modules():
        if timm.models.is_model_in_modules(arch, [module]):
            return module
    return "unknown"


def pretrained_cfg(name: str) -> dict[str, Any]:
    """timm's pretrained config of `arch.tag` (or the arch's default tag) as a dict."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown tag
        return {}
    return cfg.to_dict() if cfg is not None else {}


def hub_repo(name: str) -> str | None:
    """The Hugging Face hub repo timm downloads `name`'s weights from (None: not on the hub)."""
    return pretrained_cfg(name).get("hf_hub_id") or None


def cached_weights(name: str) -> Path | None:
    """The weights file of `name` in the local HF hub cache, without any network call."""
    from vitplas.models.hf import cached_file

    repo = hub_repo(name)
    if repo is None:
        return None
    for filename in WEIGHT_FILES:
        path = cached_file(repo, filename)
        if path is not None:
            return path
    return None


def create(name: str, *, pretrained: bool, on_meta: bool = False, **kwargs: Any) -> nn.Module:
    """timm.create_model(name, ...), checked to be of a supported family (its component map
    builds; a refused block type is a one-line ModelError).

    on_meta builds on the meta device (no memory, no init) for weights loaded with assign.
    A failure to get pretrained weights is a ModelError saying where we looked and what to do.
    """
    import timm
    from safetensors import SafetensorError

    from vitplas.models.components import component_map

    check_timm_vit(name)
    try:
        if on_meta:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, **kwargs)
        else:
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError, SafetensorError) as err:  # not found / corrupt
        if not pretrained:
            raise ModelError(f"cannot build timm '{name}' with {kwargs}: {err}") from err
        raise missing_weights_error(name, err) from err
    try:
        component_map(model)
    except TypeError as err:
        raise ModelError(f"timm '{name}': {err}") from err
    return model


def missing_weights_error(name: str, err: BaseException | None) -> ModelError:
    from huggingface_hub import constants

    repo = hub_repo(name)
    where = (
        f"Hugging Face hub repo '{repo}' (cache {constants.HF_HUB_CACHE})"
        if repo
        else f"timm's download URL ({pretrained_cfg(name).get('url') or 'none'})"
    )
    why = f" ({reason(err)})" if err else ""
    arch, _ = split_name(name)
    return ModelError(
        f"no pretrained weights for timm '{name}': looked in {where}{why}. To fix: "
        f"{hub_advice()}; or load a local file with the spec "
        f"'{arch}@path/to/weights.safetensors'; or pass {RANDOM_INIT_ADVICE}"
    )
