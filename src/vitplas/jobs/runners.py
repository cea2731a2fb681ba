"""The public runner of each job kind: `run_<kind>(cfg, run_dir, **hooks)`, the lifecycle of
vitplas.jobs.lifecycle around the job's compute. A sweep spec's `runner.function` and analysis
`function:` name these (vitplas.jobs.registry); the command line and the API call them.

    run_plasticity(cfg, run_dir, progress=None, on_phase=None, *, repair, wait) -> result
    run_compare_base(cfg, run_dir, progress=None, on_phase=None, *, repair, wait)
    run_bounds(cfg, run_dir, on_phase=None, *, repair, wait)
    run_radius(cfg, run_dir, progress=None, *, repair, wait)
    run_finetune(cfg, run_dir, *, sources, callbacks, show_progress, repair, wait)
        (train=[auto]: the criterion's pick is made inside the lifecycle, under the lock)
    run_evaluate(cfg, run_dir=None, *, wait)       the run folder is cfg.run
    run_probe(cfg, run_dir, on_phase=None, *, repair, wait) -> the probe table
    run_select(cfg, run_dir, *, repair, wait) -> (scores table, {criterion: train set})
    run_landscape(cfg, run_dir, progress=None, *, repair, wait)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitplas.jobs.lifecycle import run_job
from vitplas.jobs.table import get

Lifecycle = dict[str, Any]  # repair, wait


def _run(kind: str, cfg: Any, run_dir, hooks: dict[str, Any], **lifecycle: Any) -> dict:
    hooks = {k: v for k, v in hooks.items() if v is not None}
    return run_job(get(kind), cfg, run_dir, hooks=hooks, **lifecycle)


def run_plasticity(cfg, run_dir, progress=None, on_phase=None, **lifecycle: Any) -> dict:
    """The plasticity job: tables, figures, config, manifest; resumable (analysis.job)."""
    return _run("plasticity", cfg, run_dir, {"progress": progress, "on_phase": on_phase},
                **lifecycle)  # fmt: skip


def run_compare_base(cfg, run_dir, progress=None, on_phase=None, **lifecycle: Any) -> dict:
    """Plasticity of finetuned run cfg.model and of its base, joined (vitplas.jobs.compare)."""
    return _run("compare-base", cfg, run_dir, {"progress": progress, "on_phase": on_phase},
                **lifecycle)  # fmt: skip


def run_bounds(cfg, run_dir, on_phase=None, **lifecycle: Any) -> dict:
    """The bounds job (analysis.bounds_job)."""
    return _run("bounds", cfg, run_dir, {"on_phase": on_phase}, **lifecycle)


def run_radius(cfg, run_dir, progress=None, **lifecycle: Any) -> dict:
    """The radius job (analysis.radius): radius.json."""
    return _run("radius", cfg, run_dir, {"progress": progress}, **lifecycle)


def run_finetune(
    cfg,
    run_dir,
    *,
    sources=None,
    callbacks=(),
    show_progress: bool = False,
    **lifecycle: Any,
) -> dict:
    """The finetuning job (training.finetune); train=[auto] resolved inside its lifecycle. Its
    result is the run's record as result.json holds it, alike for a new and a finished run."""
    hooks = {"sources": sources, "callbacks": callbacks, "show_progress": show_progress}
    result = _run("finetune", cfg, run_dir, hooks, **lifecycle)
    return {k: v for k, v in result.items() if k not in ("run_dir", "skipped")}


def run_evaluate(cfg, run_dir: str | Path | None = None, *, wait: bool | None = None):
    """The evaluation job in finished run cfg.run (or `run_dir`): its table (DataFrame)."""
    folder = run_dir if run_dir is not None else cfg.run
    return _run("evaluate", cfg, folder, {}, wait=wait)["table"]


def run_probe(cfg, run_dir, on_phase=None, **lifecycle: Any):
    """The probe job (training.probe): its tidy table (DataFrame)."""
    return _run("probe", cfg, run_dir, {"on_phase": on_phase}, **lifecycle)["table"]


def run_select(cfg, run_dir, **lifecycle: Any):
    """The selection job (selection.select): (scores table, {criterion: train set})."""
    result = _run("select", cfg, run_dir, {}, **lifecycle)
    return result["frame"], result["picks"]


def run_landscape(cfg, run_dir, progress=None, **lifecycle: Any) -> dict:
    """The landscape job (analysis.landscape)."""
    return _run("landscape", cfg, run_dir, {"progress": progress}, **lifecycle)
