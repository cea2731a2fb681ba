"""One plasticity run: config -> run folder with the tidy tables, figures, config and manifest.

Files: config.yaml, manifest.json, plasticity.{csv,parquet} (per layer), plasticity_pooled
(per component, pooled over layers, with ranks), bounds and bound_ratio (when bounds are on),
summary.txt, result.json, figures/*.{png,pdf}, pairs.parquet (with save_pairs: the ratio of
every pair, layer and component, vitplas.analysis.pair_file), checksums.json, DONE.

The folder is locked (vitplas.locks) and its config checked first: a finished run of the same
config is read back, verified, instead of recomputed. While it runs, the streaming statistics
and the position in the pair stream are saved every SAVE_EVERY batches (estimate_state.pt), so
a killed run resumes to the same final numbers as an unbroken one.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch

from vitplas.analysis import tables
from vitplas.analysis.bounds import bounds_matrix, layer_bounds
from vitplas.analysis.estimate import Estimate, estimate
from vitplas.analysis.pair_file import PAIRS_FILE, PARTS_DIR, PairWriter
from vitplas.analysis.pairs import pair_batches
from vitplas.analysis.plasticity import resolve_components
from vitplas.analysis.setup import (
    ModelSetup,
    measured_radius,
    model_checksum,
    open_stream,
    setup_for,
    stream_label,
)
from vitplas.config import ConfigError
from vitplas.locks import run_lock
from vitplas.runs import (
    RunDir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fault_point,
)

# The embedded default (DESIGN.md): DINOv2 ViT-S/14, photos vs Fashion-MNIST test, ~2 min on a
# 2-core CPU. Its pooled CIs already stand apart at 128 pairs; 512 leave a wide margin.
DEFAULT_PAIRS = 512
STATE_FILE = "estimate_state.pt"  # resumable streaming statistics; deleted once DONE
SAVE_EVERY = 8  # batches between two saves of the statistics


@dataclass
class PlasticityConfig:
    """`vitplas plasticity` settings; defaults are the embedded offline default."""

    model: str = "dinov2-s14"  # preset, timm name, HF id or ARCH@FILE (vitplas models)
    random_init: bool = False  # random weights on purpose (a baseline; the model says RANDOM INIT)
    img_size: int | None = None  # input side in px, a multiple of the patch (None: the model's own)
    protocol: Literal["model", "paper"] = "model"  # preprocessing and splits: model = the
    # checkpoint's own (the default, any model); paper = the original release's (ImageNet
    # mean/std, bilinear Resize + CenterCrop, its test split)
    reference: str = "photos"  # reference stream x of the pairs (vitplas datasets)
    reference_split: str = "val"  # split of the reference stream
    target: str = "fashion-mnist"  # target dataset y of the pairs
    target_split: str = "test"  # split of the target dataset
    data_root: str | None = None  # dataset folder (None: $VITPLAS_DATA, then <VITPLAS_HOME>/data)
    download: bool = False  # download missing datasets where a download exists
    inputs: Literal["embedding", "hidden"] = "embedding"  # embedding: every block fed the embedding
    # output (the paper); hidden: each block's own input
    components: list[str] = field(default_factory=list)  # empty: every block component
    pairs: int = DEFAULT_PAIRS  # (reference, target) pairs to average over (the paper: 12800)
    batch_size: int = 32  # pairs per forward pass
    seed: int = 0  # seed of the pairs' order
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...
    dtype: Literal["float32", "tf32", "bfloat16", "float16"] = "float32"  # compute precision of the
    # forward passes
    until_ci: float | None = None  # stop when every CI half-width < until_ci * mean
    check_every: int = 4  # batches between two sequential-stop checks
    num_workers: int = 0  # DataLoader worker processes
    bounds: bool = True  # also compute the theoretical bounds and the exceedances
    radius: float | None = None  # token radius r; None: measured on the target stream
    radius_images: int = 256  # target images the radius r is measured on
    ln_bound: Literal["data", "abs", "signed"] = "data"  # LayerNorm/RmsNorm bound: data
    # (max|gamma| / the smallest token scale of the measured pairs: holds for every pair), abs
    # (max|gamma|) or signed (the original's)
    mha_slicing: Literal["rows", "columns"] = "rows"  # MHA bound slicing: rows (per-head rows) or
    # columns (the original's)
    figures: bool = True  # draw the figures (PNG + PDF)
    save_pairs: bool = False  # also keep every pair's ratios (pair, its images' dataset indices,
    # layer, component, ratio) in pairs.parquet, for custom analyses

    def validate(self) -> None:
        if self.pairs < 1:
            raise ConfigError(f"pairs must be >= 1, got {self.pairs}")
        if self.batch_size < 1 or self.check_every < 1 or self.radius_images < 1:
            raise ConfigError("batch_size, check_every and radius_images must be >= 1")
        if self.until_ci is not None and not 0 < self.until_ci < 1:
            raise ConfigError(f"until_ci is a fraction of the mean in (0, 1), got {self.until_ci}")
        if self.radius is not None and not self.radius > 0:
            raise ConfigError(f"radius must be > 0, got {self.radius}")


def _radius(cfg: PlasticityConfig, setup: ModelSetup, target) -> tuple[Any, str]:
    """r (a number, or one per layer for hidden inputs) and where it came from."""
    if cfg.radius is not None:
        return cfg.radius, "given"
    return measured_radius(
        setup,
        target,
        cfg.target,
        cfg.target_split,
        images=cfg.radius_images,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        per_layer=cfg.inputs == "hidden",
        num_workers=cfg.num_workers,
    )


def _bounds(cfg, setup, components, target, on_phase) -> tuple[pd.DataFrame | None, Any, str]:
    if not cfg.bounds:
        return None, None, "off"
    radius, source = _radius(cfg, setup, target)
    frame = layer_bounds(
        setup.cmap,
        components,
        n_tokens=setup.n_tokens,
        radius=radius,
        width=setup.width,
        ln_bound=cfg.ln_bound,
        mha_slicing=cfg.mha_slicing,
        progress=None if on_phase is None else lambda done, n: on_phase("bounds", done, n),
    )
    return frame, radius, source


def _saver(run: RunDir, writer: PairWriter | None):
    def save(state: dict) -> None:
        if writer is not None:  # the pairs up to this state, before the state itself
            writer.flush()
            fault_point("plasticity_pairs_saved")
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(run / STATE_FILE, buffer.getvalue())
        fault_point("plasticity_saved")

    return save


def _saved(run: RunDir) -> dict | None:
    """The statistics a killed run saved, or None (none, or unreadable: start over)."""
    path = run / STATE_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file: recomputing is always correct
        return None


def _estimate(cfg, setup, components, reference, target, bounds, progress, run, writer) -> Estimate:
    batches = pair_batches(
        reference,
        target,
        pairs=cfg.pairs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        names=(cfg.reference, cfg.target),
        with_indices=writer is not None,
    )
    resume = _saved(run)
    if writer is not None:
        done = (0, 0) if resume is None else (int(resume["batches"]), int(resume["pairs"]))
        writer.resume(*done)
    matrix = gains = None
    if bounds is not None:
        matrix = bounds_matrix(bounds, setup.cmap.depth, components)
        gains = bounds_matrix(bounds, setup.cmap.depth, components, "norm_gain")
    return estimate(
        setup.cmap,
        batches,
        components=components,
        inputs=cfg.inputs,
        device=setup.device,
        dtype=cfg.dtype,
        bounds=matrix,
        norm_gains=gains,
        until_ci=cfg.until_ci,
        check_every=cfg.check_every,
        on_batch=_with_fault(progress),
        on_ratios=None if writer is None else writer.add,
        save=_saver(run, writer),
        save_every=SAVE_EVERY,
        resume=resume,
    )


def _with_fault(progress):
    def on_batch(batches: int, pairs: int) -> None:
        fault_point("plasticity_batch")
        if progress is not None:
            progress(batches, pairs)

    return on_batch


def _write_manifest(run: RunDir, cfg: PlasticityConfig, setup: ModelSetup, result: dict) -> None:
    checksum, checksum_of = model_checksum(setup)
    run.write_manifest(
        {
            **result,
            "seed": cfg.seed,
            "device_used": str(setup.device),
            "dtype": cfg.dtype,
            "model_checksum": checksum,
            "model_checksum_of": checksum_of,
        }
    )


def run_plasticity(
    cfg: PlasticityConfig,
    run_dir: str | Path,
    progress=None,
    on_phase=None,
    *,
    repair: bool = False,
    wait: bool | None = None,
) -> dict[str, Any]:
    """Run the estimator (and the bounds) for `cfg`; write everything under `run_dir`.
    A finished run of `cfg` there is returned as stored (verified), a killed one resumed.
    progress(batches, pairs) follows the pairs; on_phase(name, done, total) the bounds."""
    run = RunDir(run_dir)
    with run_lock(run.path, command="plasticity", wait=wait):
        if run.begin(cfg, repair=repair):
            return _finished(run)
        run.start(cfg)
        return _measure(cfg, run, progress, on_phase)


def _finished(run: RunDir) -> dict[str, Any]:
    """The stored result of a finished run, with its pooled table, every record verified."""
    result = run.read_json("result.json")
    pooled = pd.read_csv(io.BytesIO(run.read_verified("plasticity_pooled.csv")))
    return {**result, "pooled": pooled, "run_dir": str(run.path), "skipped": True}


def _measure(cfg: PlasticityConfig, run: RunDir, progress, on_phase=None) -> dict[str, Any]:
    t0 = time.perf_counter()
    setup = setup_for(cfg)
    components = resolve_components(setup.cmap, cfg.components)
    transform = setup.transform(cfg.protocol)
    streams = (transform, cfg.data_root, cfg.download, cfg.protocol)
    reference = open_stream(cfg.reference, cfg.reference_split, *streams)
    target = open_stream(cfg.target, cfg.target_split, *streams)
    t_setup = time.perf_counter()
    bounds, radius, radius_source = _bounds(cfg, setup, components, target, on_phase)
    t_bounds = time.perf_counter()
    writer = None
    if cfg.save_pairs:
        writer = PairWriter(run / PAIRS_FILE, components, run / PARTS_DIR)
    est = _estimate(cfg, setup, components, reference, target, bounds, progress, run, writer)
    if writer is not None:
        writer.finish()
    labels = {
        "model": cfg.model,
        "reference": cfg.reference,
        "target": cfg.target,
        "inputs": cfg.inputs,
    }
    facts = {  # what the figures' titles name beyond the tables
        "reference": f"{cfg.reference} [{cfg.reference_split}]",
        "target": f"{cfg.target} [{cfg.target_split}]",
        "inputs": cfg.inputs,
        "protocol": cfg.protocol,
        "pairs": est.pairs,
    }
    written = tables.write_all(run, est, labels, bounds, cfg.figures, facts)
    timings = {
        "setup_s": t_setup - t0,
        "bounds_s": t_bounds - t_setup,
        "estimate_s": est.seconds,
        "total_s": time.perf_counter() - t0,
        "pairs_per_s": est.pairs_per_s,
    }
    result = {
        **labels,
        "model_description": setup.loaded.description,
        "reference_label": f"{stream_label(cfg.reference)} [{cfg.reference_split}]",
        "target_label": f"{stream_label(cfg.target)} [{cfg.target_split}]",
        "pairs": est.pairs,
        "batches": est.batches,
        "stopped_early": est.stopped_early,
        "radius": radius,
        "radius_source": radius_source,
        "n_tokens": setup.n_tokens,
        "ranking": written["ranking"],
        "settled": written["settled"],
        "exceedances": written["exceedances"],
        "timings": timings,
        "files": written["files"] + ([PAIRS_FILE] if writer is not None else []),
    }
    sizes = {"reference_size": len(reference), "target_size": len(target)}
    _write_manifest(run, cfg, setup, {**result, **sizes})
    atomic_write_json(run / "result.json", result)
    atomic_write_text(run / "summary.txt", tables.summary_text(result, written["pooled"]))
    run.mark_done()
    (run / STATE_FILE).unlink(missing_ok=True)
    if writer is not None:
        writer.remove_parts()
    return {**result, "pooled": written["pooled"], "run_dir": str(run.path)}
