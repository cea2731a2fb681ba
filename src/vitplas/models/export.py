"""Export a model (a finetuned run above all) as one safetensors file that timm loads.

The file holds the full state dict in timm's layout; its metadata holds `arch` (a timm name),
`pretrained_cfg` (JSON: num_classes, input_size, mean, std, interpolation, crop_pct,
fixed_input_size) and `timm_kwargs` (JSON: architecture arguments beyond the name's own, e.g.
for the kwargs-built `tiny-random`). Loading it back, offline:

    meta = safetensors.safe_open(FILE, "pt").metadata()
    timm.create_model(meta["arch"], pretrained=True,
                      pretrained_cfg_overlay=dict(json.loads(meta["pretrained_cfg"]), file=FILE),
                      **json.loads(meta["timm_kwargs"]))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitplas.models.build import LoadedModel, load_model
from vitplas.models.errors import ModelError
from vitplas.models.registry import get_preset, is_preset
from vitplas.runs import atomic_write_bytes

FORMAT = "vitplas-export/1"
# A timm name whose VisionTransformer arguments are all overridden by a kwargs-built preset's
# (patch_size, embed_dim, depth, num_heads); every other argument is VisionTransformer's default.
KWARGS_ARCH = "vit_tiny_patch16_224"
RUN_EVAL = {"interpolation": "bicubic", "crop_pct": 0.875}  # data.transforms' eval protocol


@dataclass(frozen=True)
class Exported:
    path: Path
    arch: str
    pretrained_cfg: dict[str, Any]
    timm_kwargs: dict[str, Any]

    def timm_call(self) -> str:
        """The timm.create_model call that loads the file (for messages and the README)."""
        kwargs = "".join(f", {k}={v!r}" for k, v in self.timm_kwargs.items())
        overlay = ", ".join(f"{k}={v!r}" for k, v in self.pretrained_cfg.items())
        return (
            f"timm.create_model({self.arch!r}, pretrained=True, pretrained_cfg_overlay=dict("
            f"file={str(self.path)!r}, {overlay}){kwargs})"
        )


def timm_arch(loaded: LoadedModel, spec: str) -> tuple[str, dict[str, Any]]:
    """(timm name, extra timm kwargs) that rebuild `loaded`'s architecture, or a ModelError."""
    import timm

    from vitplas.models.timm_models import split_name

    if loaded.modality == "text":
        raise ModelError(
            f"{spec} is a text model ({type(loaded.model).__name__}): export writes timm ViT "
            "checkpoints; use the run itself as a model spec (model: RUN, vitplas evaluate RUN)"
        )
    base = _base_spec(spec)
    if is_preset(base) and get_preset(base).source == "random":
        kwargs = {k: v for k, v in get_preset(base).arch_kwargs.items() if k != "img_size"}
        if any(not isinstance(v, int | float | str | bool) for v in kwargs.values()):
            raise ModelError(f"preset '{base}' has arguments timm cannot take from JSON: {kwargs}")
        return KWARGS_ARCH, kwargs
    if loaded.arch and timm.is_model(split_name(loaded.arch)[0]):
        return loaded.arch, {}
    raise ModelError(
        f"model '{spec}' ({loaded.description}) has no timm architecture name, so timm could not "
        "rebuild it; export works for timm names, presets and runs finetuned from them"
    )


def _base_spec(spec: str) -> str:
    from vitplas.models.finetuned import read_run_config, run_folder

    run = run_folder(spec)
    return str(read_run_config(run)["model"]) if run is not None else spec


def pretrained_cfg(loaded: LoadedModel, arch: str, *, finetuned: bool) -> dict[str, Any]:
    from vitplas.models.timm_models import pretrained_cfg as timm_cfg

    # a run's own eval preprocessing (models.finetuned records it), else the checkpoint's
    own = (getattr(loaded.model, "pretrained_cfg", None) or {}) if finetuned else timm_cfg(arch)
    return {
        "num_classes": loaded.num_classes,
        "input_size": list(loaded.input_size),
        "fixed_input_size": True,  # timm then builds the model for input_size
        "mean": list(loaded.mean),
        "std": list(loaded.std),
        "interpolation": own.get("interpolation", RUN_EVAL["interpolation"]),
        "crop_pct": own.get("crop_pct", RUN_EVAL["crop_pct"]),
    }


def export_model(spec: str, out: str | Path) -> Exported:
    """Write model `spec` (usually a finetuned run folder) to `out` as timm-loadable safetensors."""
    from safetensors.torch import save

    from vitplas.models.finetuned import run_folder

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ModelError(f"export file {out} must end in .safetensors")
    loaded = load_model(spec)
    arch, kwargs = timm_arch(loaded, spec)
    cfg = pretrained_cfg(loaded, arch, finetuned=run_folder(spec) is not None)
    meta = {
        "format": FORMAT,
        "arch": arch,
        "pretrained_cfg": json.dumps(cfg),
        "timm_kwargs": json.dumps(kwargs),
        "source": spec,
        "description": loaded.description,
        "source_sha256": loaded.checksum or "",
    }
    state = {k: v.detach().contiguous().cpu() for k, v in loaded.model.state_dict().items()}
    atomic_write_bytes(out, save(state, metadata=meta))
    return Exported(out, arch, cfg, kwargs)
