"""One plasticity run: config -> run folder with the tidy tables, figures, config and manifest.

Files: config.yaml, manifest.json, plasticity.{csv,parquet} (per layer), plasticity_pooled
(per component, pooled over layers, with ranks), bounds and bound_ratio (when bounds are on),
summary.txt, result.json, figures/*.{png,pdf}, pairs.parquet (with save_pairs: the ratio of
every pair, layer and component, vitplas.analysis.pair_file), checksums.json, DONE.

The job's lifecycle (lock, config check, read-back, manifest, seal) is vitplas.jobs.lifecycle's;
this module is its compute and read-back (the config: analysis.configs). While it runs, the
streaming statistics and the position in the pair stream are saved every SAVE_EVERY batches
(estimate_state.pt, with the settings they were computed under and the pair parts they cover),
so a killed run resumes to the same final numbers as an unbroken one; a state of other
settings (another seed, copied from another run) is refused, naming the keys that differ.
"""

from __future__ import annotations

import io
import time
from typing import Any

import pandas as pd
import torch

from vitplas.analysis import invariance, tables
from vitplas.analysis.bound_table import estimate_bounds
from vitplas.analysis.configs import DEFAULT_PAIRS as DEFAULT_PAIRS  # re-exported
from vitplas.analysis.configs import PlasticityConfig
from vitplas.analysis.estimate import Estimate, estimate
from vitplas.analysis.length_pairs import stream_match
from vitplas.analysis.pair_file import PAIRS_FILE, PARTS_DIR, PairWriter
from vitplas.analysis.pairs import config_pairs, pair_units
from vitplas.analysis.plasticity import resolve_components
from vitplas.analysis.setup import (
    ModelSetup,
    check_modality,
    config_bounds,
    measured_radius,
    model_checksum,
    model_stream,
    setup_for,
    stream_label,
)
from vitplas.records import read_state, read_table, settings_of, stamp
from vitplas.runs import (
    ANALYSIS_RUNTIME_KEYS,
    Computed,
    RunDir,
    atomic_write_bytes,
    atomic_write_text,
    fault_point,
    write_table,
)

STATE_FILE = "estimate_state.pt"  # resumable streaming statistics; deleted once DONE
SAVE_EVERY = 8  # batches between two saves of the statistics


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
        inputs=cfg.inputs,
        num_workers=cfg.num_workers,
    )


def _bounds(cfg, setup, components, target, on_phase) -> tuple[pd.DataFrame | None, Any, str]:
    if not cfg.bounds:
        return None, None, "off"
    radius, source = _radius(cfg, setup, target)
    frame = config_bounds(cfg, setup, components, radius, on_phase)
    return frame, radius, source


def _settings(cfg: PlasticityConfig) -> dict[str, Any]:
    """What the saved statistics must have been computed under: the config, runtime keys
    aside (vitplas.records.settings_of)."""
    return settings_of(cfg, ANALYSIS_RUNTIME_KEYS)


def _resume_fix(run: RunDir) -> str:
    return (
        f"delete {run / STATE_FILE} to compute the statistics from the first pair (a run "
        "started elsewhere belongs in a folder of its own, --out)"
    )


def _saver(run: RunDir, writer: PairWriter | None, settings: dict[str, Any]):
    def save(state: dict) -> None:
        if writer is not None:  # the pairs up to this state, before the state itself
            writer.flush()
            fault_point("plasticity_pairs_saved")
            state = {**state, "pair_parts": list(writer.written)}
        buffer = io.BytesIO()
        torch.save(stamp(state, settings), buffer)
        atomic_write_bytes(run / STATE_FILE, buffer.getvalue())
        fault_point("plasticity_saved")

    return save


def _estimate(cfg, setup, components, reference, target, bounds, progress, run, writer) -> Estimate:
    # the images' indices go with each pair: their units (the CI's) and the pair file's
    batches = config_pairs(cfg, reference, target, cfg.pairs, with_indices=True)
    settings = _settings(cfg)
    resume = read_state(run.path, STATE_FILE, settings, _resume_fix(run))
    if writer is not None:
        done = (0, 0) if resume is None else (int(resume["batches"]), int(resume["pairs"]))
        writer.resume(*done, parts=[] if resume is None else resume.get("pair_parts", []))
    checks = {} if bounds is None else estimate_bounds(bounds, setup.cmap.depth, components)
    return estimate(
        setup.cmap,
        batches,
        components=components,
        inputs=cfg.inputs,
        device=setup.device,
        dtype=cfg.dtype,
        **checks,
        units=pair_units(reference, target),
        until_ci=cfg.until_ci,
        check_every=cfg.check_every,
        on_batch=_with_fault(progress),
        on_ratios=None if writer is None else writer.add,
        save=_saver(run, writer, settings),
        save_every=SAVE_EVERY,
        resume=resume,
    )


def _length_notes(cfg: PlasticityConfig, reference, target) -> list[str]:
    """With pair_lengths equal: what the pairing keeps of each stream (checked here, before
    the bounds: a stream too short, or of images, is refused in one line)."""
    if cfg.pair_lengths != "equal":
        return []
    names = (cfg.reference, cfg.target)
    return [stream_match(reference, target, cfg.batch_size, names).note(names, cfg.max_length)]


def _with_fault(progress):
    def on_batch(batches: int, pairs: int) -> None:
        fault_point("plasticity_batch")
        if progress is not None:
            progress(batches, pairs)

    return on_batch


def _manifest(cfg: PlasticityConfig, setup: ModelSetup, result: dict) -> dict[str, Any]:
    checksum, checksum_of = model_checksum(setup)
    return {
        **result,
        "seed": cfg.seed,
        "device_used": str(setup.device),
        "dtype": cfg.dtype,
        "model_checksum": checksum,
        "model_checksum_of": checksum_of,
    }


def read_plasticity(run: RunDir) -> dict[str, Any]:
    """The stored result of a finished run, with its pooled table, every record verified."""
    result = run.read_json("result.json")
    pooled = read_table(run.path, "plasticity_pooled.csv")
    return {**result, "pooled": pooled}


def compute_plasticity(cfg: PlasticityConfig, run: RunDir, progress=None, on_phase=None):
    """Run the estimator (and the bounds) for `cfg`, resuming a killed run's statistics; write
    the tables, figures and summary under `run` (vitplas.jobs.lifecycle does the rest).
    progress(batches, pairs) follows the pairs; on_phase(name, done, total) the bounds."""
    t0 = time.perf_counter()
    setup = setup_for(cfg)
    check_modality(setup, cfg.reference, cfg.target)  # before any data is read
    components = resolve_components(setup.cmap, cfg.components)
    reference = model_stream(setup, cfg, cfg.reference, cfg.reference_split)
    target = model_stream(setup, cfg, cfg.target, cfg.target_split)
    length_notes = _length_notes(cfg, reference, target)
    t_setup = time.perf_counter()
    bounds, radius, radius_source = _bounds(cfg, setup, components, target, on_phase)
    t_bounds = time.perf_counter()
    writer = None
    if cfg.save_pairs:
        writer = PairWriter(run / PAIRS_FILE, components, run / PARTS_DIR, _resume_fix(run))
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
    checked = None
    if cfg.check_invariance:  # on the run's first pairs, the same for every rescaled model
        checked = invariance.check_run(cfg, setup, components, reference, target)
        table = checked.pop("table")
        if table is not None:  # None: no rescaling this family declares (summary: why)
            paths = write_table(table, run / "invariance")
            written["files"] += [str(p.relative_to(run.path)) for p in paths]
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
        "bound_lines": written["bound_lines"],
        "notes": length_notes + written["notes"],
        "units": written["units"],
        "timings": timings,
        "files": written["files"] + ([PAIRS_FILE] if writer is not None else []),
    }
    if checked is not None:
        result["invariance"] = checked
    sizes = {"reference_size": len(reference), "target_size": len(target)}
    summary = tables.summary_text(result, written["pooled"])
    if checked is not None:
        summary += "\n" + "\n".join(checked["summary"]) + "\n"
    atomic_write_text(run / "summary.txt", summary)
    (run / STATE_FILE).unlink(missing_ok=True)  # a kill from here recomputes: still right
    if writer is not None:
        writer.remove_parts()
    manifest = _manifest(cfg, setup, {**result, **sizes})
    return Computed(result, manifest, {"pooled": written["pooled"]})
