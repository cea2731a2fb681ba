"""`vitplas bounds` and `vitplas radius`: theoretical bounds per layer, in their own run folder.

Given the folder of a plasticity run (`plasticity`), the measured means are divided by the
bounds too: a finished plasticity run, its tables read through its seal, of the same model (its
weights' checksum), input size, protocol, inputs mode and components (a ConfigError naming the
difference otherwise). The fraction of pairs above a bound needs the per-pair ratios, so it
comes from the plasticity run itself (its bound_ratio table), not from here. The default
LayerNorm bound ("data", max|gamma| / s_min) needs the smallest token scale of the pairs it
covers, and the default MHA bound ("data") their largest token norm r_max: both are taken from
that plasticity run (its bounds table; r_max may also be given); without one they stay NaN,
their definitions saying why.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from vitplas.analysis.bound_table import bounds_matrix, fill_data_bounds
from vitplas.analysis.configs import BoundsConfig, needs_measured_bounds, plasticity_damaged
from vitplas.analysis.plasticity import resolve_components
from vitplas.analysis.setup import (
    config_bounds,
    measured_radius,
    model_checksum,
    open_model_stream,
    setup_for,
)
from vitplas.config import ConfigError
from vitplas.records import read_json, read_table, read_yaml
from vitplas.runs import Computed, DamagedRecordError, RunDir, write_table


def _measured(cfg: BoundsConfig, setup, components) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(plasticity.csv, bounds.csv or an empty table) of the plasticity run cfg.plasticity,
    read through its seal and checked to be of this model (its weights' checksum), of these
    components and of its depth: a ConfigError naming the difference."""
    folder = cfg.plasticity
    try:
        manifest = read_json(folder, "manifest.json")
        measured = read_table(folder, "plasticity.csv")
        needed = needs_measured_bounds(cfg)
        bounds = read_table(folder, "bounds.csv") if needed else pd.DataFrame()
    except DamagedRecordError as err:
        raise plasticity_damaged(err) from None
    what = f"the plasticity run '{folder}'"
    checksum, of = model_checksum(setup)
    if manifest.get("model_checksum") != checksum:
        raise ConfigError(
            f"{what} measured other weights (its model's sha256 "
            f"{str(manifest.get('model_checksum'))[:12]}..., this one's {checksum[:12]}..., of "
            f"its {of}); bound the model it measured, or measure this one"
        )
    there, here = sorted(set(measured["component"])), sorted(components)
    if there != here:
        raise ConfigError(f"{what} measured components {', '.join(there)}; these bounds are of "
                          f"{', '.join(here)}: set components=[{','.join(there)}]")  # fmt: skip
    depth = measured["layer"].nunique()
    if depth != setup.cmap.depth:
        raise ConfigError(f"{what} measured {depth} layers; this model has {setup.cmap.depth}")
    if setup.text and (there := (read_yaml(folder) or {}).get("max_length")) != cfg.max_length:
        raise ConfigError(f"{what} tokenised its texts to max_length {there}; these bounds are at "
                          f"{cfg.max_length}: set max_length={there}")  # fmt: skip
    return measured, bounds


def _ratio_table(bounds: pd.DataFrame, measured: pd.DataFrame) -> pd.DataFrame:
    frame = measured.merge(bounds.drop(columns=["model"]), on=["layer", "component"])
    frame["ratio"] = frame["mean"] / frame["bound"]
    return frame


def _data_bounds(bounds: pd.DataFrame, measured: pd.DataFrame, cfg: BoundsConfig, setup,
                 components) -> pd.DataFrame:  # fmt: skip
    """Data bounds from the token extremes a plasticity run measured (its bounds table: s_min;
    r_max unless given; for text, the MHA bound's n: the pairs' largest real length)."""
    depth = setup.cmap.depth
    scale = bounds_matrix(measured, depth, components, "norm_scale")
    largest = None if cfg.r_max is not None else bounds_matrix(measured, depth, components, "r_max")
    longest = None
    if setup.text and largest is not None:  # NaN (a run from before n_tokens): n stays L
        # only the data rows hold the pairs' real lengths (the paper's rows keep n = L)
        data_rows = measured[measured["kind"] == "mha-data"] if "kind" in measured else measured[:0]
        n = bounds_matrix(data_rows, depth, components, "n_tokens")
        longest = float(n.nan_to_num(0).max()) or None
    return fill_data_bounds(bounds, components, scale, largest, longest)


def _radius(cfg: BoundsConfig, setup) -> tuple[Any, str]:
    """r (a number, or one per layer for hidden inputs) and where it came from."""
    if cfg.radius is not None:
        return cfg.radius, "given"
    data = open_model_stream(setup, cfg.dataset, cfg.split, cfg.data_root, False, cfg.protocol)
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
    return {**run.read_json(), "bounds": read_table(run.path, "bounds.csv")}


def compute_bounds(cfg: BoundsConfig, run: RunDir, on_phase=None) -> Computed:
    """Bounds per (layer, component) for `cfg`; tables and figure under `run`.
    on_phase(name, done, total) follows the layers."""
    from vitplas.plots import plasticity as plots

    t0 = time.perf_counter()
    setup = setup_for(cfg)
    components = resolve_components(setup.cmap, cfg.components)
    radius, source = _radius(cfg, setup)
    bounds = config_bounds(cfg, setup, components, radius, on_phase)
    measured = None
    if cfg.plasticity is not None:
        measured, scales = _measured(cfg, setup, components)
        if not scales.empty:
            bounds = _data_bounds(bounds, scales, cfg, setup, components)
    bounds.insert(0, "model", cfg.model)
    files = list(write_table(bounds, run / "bounds"))
    if measured is not None:
        files += write_table(_ratio_table(bounds, measured), run / "bound_ratio")
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
