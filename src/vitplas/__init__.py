"""vitplas: plasticity of vision transformer components and component-wise finetuning.

The Python API (imported on first use, so `import vitplas` stays fast):

    plasticity(model, reference, target, **options) -> PlasticityResult (.table, .pooled,
        .ranking, .plot())
    bounds(model, data, radius=None) -> per-layer bounds table
    radius(model, data) -> token radius r
    finetune(run_dir, config=None, **keys) -> result dict
    probe(run_dir, config=None, **keys) -> probe table
    select(model, target, **keys) -> (scores table, {criterion: train set})
    load_model(spec) -> LoadedModel;  component_map(model) -> ComponentMap
See vitplas.api for the details.
"""

from __future__ import annotations

from typing import Any

from vitplas.version import __version__ as __version__

__all__ = [
    "PlasticityResult",
    "bounds",
    "component_map",
    "finetune",
    "load_model",
    "plasticity",
    "probe",
    "radius",
    "select",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from vitplas import api

        return getattr(api, name)
    raise AttributeError(f"module 'vitplas' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
