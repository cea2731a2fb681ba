"""`vitplas reproduce SPEC`: analysis jobs (plasticity, bounds, probes) + sweep + aggregate +
report, resumable (every stage skips what is done), with one progress view.

Analysis jobs run in this process, one folder each under <root>/analysis/<kind>/<job id>/,
through the same RunJob wrapper as the sweep (status, traceback, DONE). Each entry of the
spec's `analysis.<kind>` list is the config of that kind's runner; an entry may name another
runner with `function:` / `config:` import paths, and `for_each_dataset: true` makes it one job
per dataset of the grid.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitplas.experiments.spec import (  # noqa: F401  (what a study is: its home is spec)
    AnalysisJob,
    SweepSpec,
    analysis_jobs,
    check_analysis,
    check_runs,
    expand,
)
from vitplas.jobs.registry import ANALYSIS_RUNNERS, import_path

Stage = Callable[[str, int, int], None]  # (stage name, done, total)


def progress_hooks(job: AnalysisJob, on_stage: Stage | None) -> dict[str, Any] | None:
    """Progress inside a plasticity job (its bounds, then its pairs) or a probe job (its
    features, then its fits) as stages of their own, e.g. 'plasticity cifar10: pairs'; None for
    other jobs and runners."""
    if on_stage is None or job.function != ANALYSIS_RUNNERS.get(job.kind, ("",))[0]:
        return None
    if job.kind == "probes":
        probe_name = f"probes {job.config.get('dataset', '')}:"
        return {
            "on_phase": lambda phase, done, total: on_stage(f"{probe_name} {phase}", done, total)
        }
    if job.kind != "plasticity":
        return None
    from vitplas.config import config_from_dict

    pairs = config_from_dict(import_path(ANALYSIS_RUNNERS["plasticity"][1]), job.config).pairs
    name = f"plasticity {job.config.get('target', '')}:"

    def on_pairs(_batches: int, done: int) -> None:
        on_stage(f"{name} pairs", min(done, pairs), pairs)

    def on_phase(phase: str, done: int, total: int) -> None:
        on_stage(f"{name} {phase}", done, total)

    return {"progress": on_pairs, "on_phase": on_phase}


def run_analysis(spec: SweepSpec, root: Path, on_stage: Stage | None = None) -> list[str]:
    """Run the analysis jobs that are not done; returns the ids of the ones that failed."""
    from vitplas.experiments.launch import RunJob
    from vitplas.experiments.store import run_state

    jobs, failed = check_analysis(spec), []
    for i, job in enumerate(jobs):
        folder = root / "analysis" / job.kind / job.job_id
        if on_stage:
            on_stage("analysis", i, len(jobs))
        if folder.exists() and run_state(folder)[0] == "done":
            continue
        folder.mkdir(parents=True, exist_ok=True)
        hooks = progress_hooks(job, on_stage)
        try:
            RunJob()(job.function, job.config_class, str(folder), job.config, "inline", None, hooks)
        except Exception:
            failed.append(f"{job.kind}/{job.job_id}")
    if on_stage:
        on_stage("analysis", len(jobs), len(jobs))
    return failed


def reproduce(
    spec: SweepSpec,
    *,
    executor: str | None = None,
    max_parallel: int | None = None,
    root: str | Path | None = None,
    on_stage: Stage | None = None,
) -> dict[str, Any]:
    """All stages in order; each one resumes. Returns what happened per stage."""
    from vitplas.config import ConfigError
    from vitplas.experiments.aggregate import aggregate
    from vitplas.experiments.launch import run_sweep
    from vitplas.experiments.report import write_report

    root = Path(root) if root is not None else spec.root_path
    runs = expand(spec)
    bad = check_runs(spec, runs)
    if bad:
        rid, error = next(iter(bad.items()))
        raise ConfigError(
            f"{len(bad)} of {len(runs)} runs have an invalid config, e.g. {rid}: {error}; "
            "`vitplas sweep SPEC --dry-run` lists each; nothing was run"
        )
    summary: dict[str, Any] = {"analysis_failed": run_analysis(spec, root, on_stage)}

    def sweep_progress(counts: dict[str, int]) -> None:
        if on_stage:
            on_stage("sweep", counts["done"] + counts["failed"], counts["total"])

    outcome = run_sweep(
        spec, runs, executor=executor, max_parallel=max_parallel, root=root,  # type: ignore[arg-type]
        progress=sweep_progress,
    )  # fmt: skip
    summary["sweep"] = outcome.counts
    summary["launched"] = len(outcome.launched)
    summary["failed_runs"] = [(s.run.run_id, s.detail) for s in outcome.failed]
    if on_stage:
        on_stage("aggregate", 0, 1)
    tables = aggregate(spec, runs, root)
    summary["tables"] = sorted(tables)
    if on_stage:
        on_stage("aggregate", 1, 1)
        on_stage("report", 0, 1)
    summary["report"] = str(write_report(spec, root))
    if on_stage:
        on_stage("report", 1, 1)
    return summary
