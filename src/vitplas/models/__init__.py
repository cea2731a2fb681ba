"""Models: build a timm VisionTransformer from a name, an id, a file or a preset."""

from vitplas.models.components import (
    ComponentMap,
    component_map,
    count_parameters,
    set_trainable,
)

__all__ = ["ComponentMap", "component_map", "count_parameters", "set_trainable"]
