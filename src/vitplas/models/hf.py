"""Hugging Face ViTs (`ViTModel`, `ViTForImageClassification`) converted to timm's layout.

A spec is a hub id (`google/vit-base-patch16-224-in21k`) or a local folder holding
`config.json` and `model.safetensors` (or `pytorch_model.bin`). The HF state dict is
renamed key by key into a timm VisionTransformer built from `config.json`; q, k and v are
fused into `qkv` (rows stacked q | k | v, as timm's attention splits them). Every HF key
must be used (except the pre-logits `pooler` and a `mask_token`, which timm's ViT has no
place for) and every timm key filled with the right shape, or loading fails listing keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitplas.models.checkpoints import load_checked, read_state_dict
from vitplas.models.errors import RANDOM_INIT_ADVICE, ModelError, hub_advice, short_list
from vitplas.models.registry import HALF
from vitplas.models.timm_models import reason

HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# HF ViT names (after an optional "vit." prefix) -> timm names.
_RENAMES = (
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (r"classifier\.(weight|bias)", r"head.\1"),
)
_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)")
_QKV_ORDER = ("query", "key", "value")
# Pre-logits pooler (dense + tanh, unused by ViTForImageClassification) and the masked
# image modelling token: no counterpart in timm's VisionTransformer.
_DROPPED = re.compile(r"(pooler\.dense\.(weight|bias)|embeddings\.mask_token)")


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


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot read Hugging Face config {path}: {err}") from err
    if config.get("model_type") != "vit":
        raise ModelError(
            f"{path} describes a '{config.get('model_type')}' model; vitplas converts only "
            "Hugging Face ViT ('vit') checkpoints"
        )
    if config.get("hidden_act", "gelu") != "gelu":  # timm's ViT MLP uses exact (erf) GELU
        raise ModelError(f"{path}: hidden_act {config['hidden_act']!r} is not supported (gelu)")
    return config


def build_vit(config: Mapping[str, Any], num_classes: int, *, on_meta: bool) -> nn.Module:
    """timm VisionTransformer with the sizes (and LayerNorm eps) of an HF ViT config."""
    from timm.models.vision_transformer import VisionTransformer

    dim, hidden = int(config["hidden_size"]), int(config["intermediate_size"])
    if int(dim * (hidden / dim)) != hidden:
        raise ModelError(f"MLP width {hidden} is not representable as dim {dim} x a ratio")
    kwargs = dict(
        img_size=int(config.get("image_size", 224)),
        patch_size=int(config.get("patch_size", 16)),
        in_chans=int(config.get("num_channels", 3)),
        num_classes=num_classes,
        embed_dim=dim,
        depth=int(config["num_hidden_layers"]),
        num_heads=int(config["num_attention_heads"]),
        mlp_ratio=hidden / dim,
        qkv_bias=bool(config.get("qkv_bias", True)),
        global_pool="token",  # HF's classifier reads the CLS token after the final norm
        norm_layer=partial(nn.LayerNorm, eps=float(config.get("layer_norm_eps", 1e-12))),
    )
    with torch.device("meta" if on_meta else "cpu"):
        return VisionTransformer(**kwargs)


def hf_to_timm(hf: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an HF ViT state dict to timm keys; fuse q, k, v. Unknown keys are an error."""
    state: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for name, tensor in hf.items():
        short = name.removeprefix("vit.")
        if _DROPPED.fullmatch(short):
            continue
        if match := _QKV.fullmatch(short):
            layer, part, kind = match.groups()
            qkv.setdefault((layer, kind), {})[part] = tensor
            continue
        for pattern, target in _RENAMES:
            if re.fullmatch(pattern, short):
                state[re.sub(pattern, target, short)] = tensor
                break
        else:
            unknown.append(name)
    if unknown:
        raise ModelError(f"HF ViT keys with no timm counterpart: {short_list(sorted(unknown))}")
    for (layer, kind), parts in sorted(qkv.items()):
        if set(parts) != set(_QKV_ORDER):
            raise ModelError(f"layer {layer} {kind}: has {sorted(parts)}, needs query, key, value")
        # (3*D, D) weight or (3*D,) bias: timm reshapes qkv output to (3, heads, head_dim).
        state[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts[p] for p in _QKV_ORDER])
    return state


def mean_std(preprocessor: Path | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation from preprocessor_config.json; ViTImageProcessor's default is 0.5/0.5."""
    if preprocessor is None:
        return HALF, HALF
    cfg = json.loads(preprocessor.read_text())
    return tuple(cfg.get("image_mean", HALF)), tuple(cfg.get("image_std", HALF))


def load_hf_vit(spec: str, *, random_init: bool) -> tuple[nn.Module, HFFiles]:
    """(timm model, its files) for an HF id or folder; random_init needs only config.json."""
    files = locate(spec, need_weights=not random_init)
    config = read_config(files.config)
    if random_init:
        return build_vit(config, 0, on_meta=False), files
    hf_state = read_state_dict(files.weights)
    state = hf_to_timm(hf_state)
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    model = build_vit(config, num_classes, on_meta=True)
    return load_checked(model, state, f"Hugging Face ViT {files.weights}"), files
