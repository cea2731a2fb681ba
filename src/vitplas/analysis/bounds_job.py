"""`vitplas bounds` and `vitplas radius`: theoretical bounds per layer, in their own run folder.

Given the folder of a plasticity run (`plasticity`), the measured means are divided by the
bounds too. The fraction of pairs above a bound needs the per-pair ratios, so it comes from
the plasticity run itself (its bound_ratio table), not from here. The default LayerNorm bound
("data", max|gamma| / s_min) needs the smallest token scale of the pairs it covers, and the
default MHA bound ("data") their largest token norm r_max: both are taken from that plasticity
run (its bounds table; r_max may also be given); without one they stay NaN, their definitions
saying why.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from vitplas.analysis.bound_table import bounds_matrix, fill_data_bounds, layer_bounds
from vitplas.analysis.configs import BoundsConfig
from vitplas.analysis.plasticity import resolve_components
from vitplas.analysis.setup import (
    bound_width,
    measured_radius,
    model_checksum,
    open_stream,
    setup_for,
)
from vitplas.runs import Computed, RunDir, write_table


def _ratio_table(bounds: pd.DataFrame, run: str) -> pd.DataFrame:
    measured = pd.read_csv(Path(run) / "plasticity.csv")
    frame = measured.merge(bounds.drop(columns=["model"]), on=["layer", "component"])
    frame["ratio"] = frame["mean"] / frame["bound"]
    return frame


def _measured(bounds: pd.DataFrame, cfg: BoundsConfig, depth: int, components) -> pd.DataFrame:
    """Data bounds from the token extremes a plasticity run measured (s_min; r_max unless
    given)."""
    measured = pd.read_csv(Path(cfg.plasticity) / "bounds.csv")
    scale = bounds_matrix(measured, depth, components, "norm_scale")
    largest = None if cfg.r_max is not None else bounds_matrix(measured, depth, components, "r_max")
    return fill_data_bounds(bounds, components, scale, largest)


def _radius(cfg: BoundsConfig, setup) -> tuple[Any, str]:
    """r (a number, or one per layer for hidden inputs) and where it came from."""
    if cfg.radius is not None:
        return cfg.radius, "given"
    transform = setup.transform(cfg.protocol)
    data = open_stream(cfg.dataset, cfg.split, transform, cfg.data_root, False, cfg.protocol)
    return measured_radius(
        setup,
        data,
        cfg.dataset,
        cfg.split,
        images=cfg.radius_images,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        inputs=cfg.inputs,
    )


def _facts(cfg: BoundsConfig, radius) -> dict[str, str]:
    """What the figure's title names beyond the table: inputs, protocol, r and its data."""
    facts = {"inputs": cfg.inputs, "protocol": cfg.protocol}
    facts["radius"] = f"{radius:.3g}" if isinstance(radius, float | int) else "per layer"
    if cfg.radius is None:
        facts["dataset"] = f"r from {cfg.dataset} [{cfg.split}]"
    return facts


def read_bounds(run: RunDir) -> dict[str, Any]:
    """A finished bounds run's result and bounds table, verified."""
    import io

    bounds = pd.read_csv(io.BytesIO(run.read_verified("bounds.csv")))
    return {**run.read_json(), "bounds": bounds}


def compute_bounds(cfg: BoundsConfig, run: RunDir, on_phase=None) -> Computed:
    """Bounds per (layer, component) for `cfg`; tables and figure under `run`.
    on_phase(name, done, total) follows the layers."""
    from vitplas.plots import plasticity as plots

    t0 = time.perf_counter()
    setup = setup_for(cfg)
    components = resolve_components(setup.cmap, cfg.components)
    radius, source = _radius(cfg, setup)
    bounds = layer_bounds(
        setup.cmap,
        components,
        n_tokens=setup.n_tokens,
        radius=radius,
        width=bound_width(setup, cfg.inputs),
        ln_bound=cfg.ln_bound,
        mha_bound=cfg.mha_bound,
        mha_slicing=cfg.mha_slicing,
        r_max=cfg.r_max,
        progress=None if on_phase is None else lambda done, n: on_phase("bounds", done, n),
    )
    if cfg.plasticity is not None and (Path(cfg.plasticity) / "bounds.csv").is_file():
        bounds = _measured(bounds, cfg, setup.cmap.depth, components)
    bounds.insert(0, "model", cfg.model)
    files = list(write_table(bounds, run / "bounds"))
    if cfg.plasticity is not None:
        files += write_table(_ratio_table(bounds, cfg.plasticity), run / "bound_ratio")
    if cfg.figures:
        files += plots.bounds_per_layer(bounds, run / "figures" / "bounds", _facts(cfg, radius))
    checksum, checksum_of = model_checksum(setup)
    result = {
        "model": cfg.model,
        "model_description": setup.loaded.description,
        "radius": radius,
        "radius_source": source,
        "n_tokens": setup.n_tokens,
        "ln_bound": cfg.ln_bound,
        "mha_bound": cfg.mha_bound,
        "mha_slicing": cfg.mha_slicing,
        "files": [str(Path(p).relative_to(run.path)) for p in files],
        "timings": {"total_s": time.perf_counter() - t0},
    }
    manifest = {**result, "model_checksum": checksum, "model_checksum_of": checksum_of}
    return Computed(result, manifest, {"bounds": bounds})
