"""Models: build a timm VisionTransformer from a name, an id, a file or a preset."""

from vitplas.models.build import LoadedModel, load_model
from vitplas.models.components import (
    ComponentMap,
    component_map,
    count_parameters,
    set_trainable,
)
from vitplas.models.errors import ModelError
from vitplas.models.presence import WeightsStatus, preset_catalog, weights_status
from vitplas.models.registry import (
    NORMALIZATIONS,
    PAPER_MEAN_STD,
    Preset,
    get_preset,
    list_presets,
    register_preset,
)

__all__ = [
    "NORMALIZATIONS",
    "PAPER_MEAN_STD",
    "ComponentMap",
    "LoadedModel",
    "ModelError",
    "Preset",
    "WeightsStatus",
    "component_map",
    "count_parameters",
    "get_preset",
    "list_presets",
    "load_model",
    "preset_catalog",
    "register_preset",
    "set_trainable",
    "weights_status",
]
