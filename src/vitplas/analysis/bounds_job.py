"""`vitplas bounds` and `vitplas radius`: theoretical bounds per layer, in their own run folder.

Given the folder of a plasticity run (`plasticity`), the measured means are divided by the
bounds too. The fraction of pairs above a bound needs the per-pair ratios, so it comes from
the plasticity run itself (its bound_ratio table), not from here. The default LayerNorm bound
("data", max|gamma| / s_min) needs the smallest token scale of the pairs it covers: it is taken
from that plasticity run (its bounds table); without one it stays NaN, its definition saying why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from vitplas.analysis.bounds import bounds_matrix, fill_norm_bounds, layer_bounds
from vitplas.analysis.plasticity import resolve_components
from vitplas.analysis.setup import (
    measured_radius,
    model_checksum,
    open_stream,
    setup_for,
)
from vitplas.config import ConfigError
from vitplas.locks import run_lock
from vitplas.runs import RunDir, atomic_write_json, write_table


@dataclass
class BoundsConfig:
    """`vitplas bounds` settings. The radius is given, or measured on dataset/split."""

    model: str = "dinov2-s14"  # preset, timm name, HF id or ARCH@FILE (vitplas models)
    random_init: bool = False  # random weights on purpose (a baseline)
    img_size: int | None = None  # input side in px, a multiple of the patch (None: the model's own)
    protocol: Literal["model", "paper"] = "model"  # preprocessing and splits (data.transforms)
    dataset: str = "fashion-mnist"  # dataset the radius r is measured on
    split: str = "test"  # split of that dataset
    data_root: str | None = None  # dataset folder (None: $VITPLAS_DATA, then <VITPLAS_HOME>/data)
    radius: float | None = None  # token radius r (None: measured on dataset/split)
    radius_images: int = 256  # images the radius r is measured on
    batch_size: int = 32  # images per forward pass while measuring r
    inputs: Literal["embedding", "hidden"] = "embedding"  # embedding (the paper) or hidden (each
    # block's input, r per layer)
    components: list[str] | None = None  # components to bound (None: every block component)
    ln_bound: Literal["data", "abs", "signed"] = "data"  # LayerNorm/RmsNorm bound: data
    # (max|gamma| / smallest token scale of a plasticity run's pairs), abs (max|gamma|) or signed
    # (the original's)
    mha_slicing: Literal["rows", "columns"] = "rows"  # MHA bound slicing: rows (per-head rows) or
    # columns (the original's)
    plasticity: str | None = None  # a plasticity run folder to divide by the bounds
    seed: int = 0  # seed of the images r is measured on, and of random_init weights
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda ...
    figures: bool = True  # draw the figures (PNG + PDF)

    def validate(self) -> None:
        if self.radius is not None and not self.radius > 0:
            raise ConfigError(f"radius must be > 0, got {self.radius}")
        if self.radius_images < 1 or self.batch_size < 1:
            raise ConfigError("radius_images and batch_size must be >= 1")
        if self.plasticity is not None:
            _check_plasticity_run(Path(self.plasticity), self)


# what a plasticity run must share with the bounds it is divided by
SAME_AS_PLASTICITY = ("model", "random_init", "img_size", "protocol", "inputs")


def _check_plasticity_run(folder: Path, cfg: BoundsConfig) -> None:
    """`folder` is a finished plasticity run of the same model, input size and inputs mode."""
    import yaml

    if not (folder / "plasticity.csv").is_file() or not (folder / "config.yaml").is_file():
        raise ConfigError(f"'{folder}' holds no plasticity.csv and config.yaml (a plasticity run)")
    measured = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    other = [k for k in SAME_AS_PLASTICITY if measured.get(k) != getattr(cfg, k)]
    if other:
        details = ", ".join(
            f"{k}: {measured.get(k)!r} there, {getattr(cfg, k)!r} here" for k in other
        )
        raise ConfigError(f"the plasticity run '{folder}' measured another setting ({details})")
    if cfg.ln_bound == "data" and not (folder / "bounds.csv").is_file():
        raise ConfigError(
            f"the plasticity run '{folder}' has no bounds.csv (run with --no-bounds), so no token "
            "scales for the data LayerNorm bound: rerun it with bounds, or pass --ln-bound "
            "abs|signed"
        )


def _ratio_table(bounds: pd.DataFrame, run: str) -> pd.DataFrame:
    measured = pd.read_csv(Path(run) / "plasticity.csv")
    frame = measured.merge(bounds.drop(columns=["model"]), on=["layer", "component"])
    frame["ratio"] = frame["mean"] / frame["bound"]
    return frame


def _norm_scales(bounds: pd.DataFrame, run: str, depth: int, components) -> pd.DataFrame:
    """Data-scale norm bounds from the smallest token scales a plasticity run measured."""
    measured = pd.read_csv(Path(run) / "bounds.csv")
    scale = bounds_matrix(measured, depth, components, "norm_scale")
    return fill_norm_bounds(bounds, scale, components)


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
        per_layer=cfg.inputs == "hidden",
    )


def _facts(cfg: BoundsConfig, radius) -> dict[str, str]:
    """What the figure's title names beyond the table: inputs, protocol, r and its data."""
    facts = {"inputs": cfg.inputs, "protocol": cfg.protocol}
    facts["radius"] = f"{radius:.3g}" if isinstance(radius, float | int) else "per layer"
    if cfg.radius is None:
        facts["dataset"] = f"r from {cfg.dataset} [{cfg.split}]"
    return facts


def run_bounds(
    cfg: BoundsConfig,
    run_dir: str | Path,
    on_phase=None,
    *,
    repair: bool = False,
    wait: bool | None = None,
) -> dict[str, Any]:
    """Bounds per (layer, component) for `cfg`; tables and figure under `run_dir`. The folder
    is locked and its config checked first: a finished run of `cfg` is read back, verified.
    on_phase(name, done, total) follows the layers."""
    import io

    run = RunDir(run_dir)
    with run_lock(run.path, command="bounds", wait=wait):
        if run.begin(cfg, repair=repair):
            bounds = pd.read_csv(io.BytesIO(run.read_verified("bounds.csv")))
            return {**run.read_json(), "bounds": bounds, "run_dir": str(run.path)}
        run.start(cfg)
        return _compute(cfg, run, on_phase)


def _compute(cfg: BoundsConfig, run: RunDir, on_phase=None) -> dict[str, Any]:
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
        width=setup.width,
        ln_bound=cfg.ln_bound,
        mha_slicing=cfg.mha_slicing,
        progress=None if on_phase is None else lambda done, n: on_phase("bounds", done, n),
    )
    if cfg.ln_bound == "data" and cfg.plasticity is not None:
        bounds = _norm_scales(bounds, cfg.plasticity, setup.cmap.depth, components)
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
        "mha_slicing": cfg.mha_slicing,
        "files": [str(Path(p).relative_to(run.path)) for p in files],
        "timings": {"total_s": time.perf_counter() - t0},
    }
    run.write_manifest({**result, "model_checksum": checksum, "model_checksum_of": checksum_of})
    atomic_write_json(run / "result.json", result)
    run.mark_done()
    return {**result, "bounds": bounds, "run_dir": str(run.path)}
