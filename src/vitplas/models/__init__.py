"""Models: build a timm VisionTransformer from a name, an id, a file or a preset.

The names below load on first use (PEP 562), so that a module of this package that imports no
torch (models.options, read by configs) costs nothing more when imported."""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "LoadedModel": "build",
    "load_model": "build",
    "ComponentMap": "components",
    "component_map": "components",
    "count_parameters": "components",
    "set_trainable": "components",
    "ModelError": "errors",
    "WeightsStatus": "presence",
    "preset_catalog": "presence",
    "weights_status": "presence",
    "NORMALIZATIONS": "registry",
    "PAPER_MEAN_STD": "registry",
    "Preset": "registry",
    "get_preset": "registry",
    "list_presets": "registry",
    "register_preset": "registry",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"vitplas.models.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'vitplas.models' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
