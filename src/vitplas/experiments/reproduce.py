"""`vitplas reproduce SPEC`: analysis jobs (plasticity, bounds, probes) + sweep + aggregate +
report, resumable (every stage skips what is done), with one progress view.

Analysis jobs go through the study's executor, like its runs (experiments.analysis_launch):
local processes, or SLURM jobs, one folder each under <root>/analysis/<kind>/<job id>/, in
the order their dependencies set. Locally, the jobs that need no run of the sweep run first,
then the sweep, then the jobs that read its runs; on SLURM all are submitted at once, the
ones that need runs (or other jobs) with a SLURM dependency on them, and the launcher waits
for everything before the tables. Each entry of the spec's `analysis.<kind>` list is the
config of that kind's runner; an entry may name another runner with `function:` / `config:`
import paths, and `for_each_dataset: true` makes it one job per dataset of the grid.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitplas.experiments.analysis_launch import (  # noqa: F401  (progress_hooks: its home)
    progress_hooks,
    run_local,
    submit_slurm,
    wait_for,
)
from vitplas.experiments.analysis_plan import check, needs_runs, plan
from vitplas.experiments.spec import (  # noqa: F401  (what a study is: its home is spec)
    AnalysisJob,
    SweepSpec,
    analysis_jobs,
    check_analysis,
    check_runs,
    expand,
)

Stage = Callable[[str, int, int], None]  # (stage name, done, total)


def _failures(failed: dict[str, str]) -> list[str]:
    """'kind/id: why' per failed or blocked analysis job, for the summary's one-line report."""
    return [f"{name}: {why}" for name, why in failed.items()]


def run_analysis(spec: SweepSpec, root: Path, on_stage: Stage | None = None) -> list[str]:
    """Run the analysis jobs that are not done as local processes (what they need done
    first); 'kind/id: why' of each job that failed or is blocked."""
    planned = plan(spec, root, expand(spec, with_presets=False))
    check(planned, root)
    return _failures(run_local(spec, planned, root, on_stage))


def reproduce(
    spec: SweepSpec,
    *,
    executor: str | None = None,
    max_parallel: int | None = None,
    root: str | Path | None = None,
    on_stage: Stage | None = None,
    poll_s: float = 0.5,
) -> dict[str, Any]:
    """All stages in order; each one resumes. Returns what happened per stage."""
    from vitplas.config import ConfigError
    from vitplas.experiments.aggregate import aggregate
    from vitplas.experiments.coverage import COVERAGE, is_complete
    from vitplas.experiments.coverage import summary as summary_of
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
    planned = plan(spec, root, runs)
    check(planned, root)
    kind = executor or spec.executor.kind
    launch = _on_slurm if kind == "slurm" else _locally
    outcome, failed = launch(spec, runs, planned, root, max_parallel, on_stage, poll_s)
    summary: dict[str, Any] = {"analysis_failed": _failures(failed)}
    summary["sweep"] = outcome.counts
    summary["launched"] = len(outcome.launched)
    summary["failed_runs"] = [(s.run.run_id, s.detail) for s in outcome.failed]
    if on_stage:
        on_stage("aggregate", 0, 1)
    tables = aggregate(spec, runs, root)
    summary["tables"] = sorted(tables)
    summary["incomplete"] = "" if is_complete(tables[COVERAGE]) else summary_of(tables[COVERAGE])
    if on_stage:
        on_stage("aggregate", 1, 1)
        on_stage("report", 0, 1)
    summary["report"] = str(write_report(spec, root, partial=True))  # marked partial when a
    # run or job failed (reproduce then exits 1, listing them)
    if on_stage:
        on_stage("report", 1, 1)
    return summary


def _sweep_progress(on_stage: Stage | None):
    def progress(counts: dict[str, int]) -> None:
        if on_stage:
            on_stage("sweep", counts["done"] + counts["failed"], counts["total"])

    return progress


def _locally(spec, runs, planned, root, max_parallel, on_stage, poll_s):
    """The jobs that need no run, the sweep, then the jobs that read its runs."""
    from vitplas.experiments.launch import run_sweep

    first = [item for item in planned if not needs_runs(item, planned)]
    then = [item for item in planned if item not in first]
    counted = len(first), len(planned)
    failed = run_local(spec, first, root, on_stage, poll_s=poll_s, counted=(0, len(planned)))
    outcome = run_sweep(
        spec, runs, executor="local", max_parallel=max_parallel, root=root,
        progress=_sweep_progress(on_stage), poll_s=poll_s,
    )  # fmt: skip
    failed |= run_local(spec, then, root, on_stage, poll_s=poll_s, counted=counted)
    return outcome, failed


def _on_slurm(spec, runs, planned, root, max_parallel, on_stage, poll_s):
    """Every job submitted at once (dependencies as SLURM dependencies), then wait for all."""
    from vitplas.experiments.launch import run_sweep, wait_idle
    from vitplas.experiments.store import scan

    first = [item for item in planned if not needs_runs(item, planned)]
    then = [item for item in planned if item not in first]
    submitted, blocked = submit_slurm(spec, first, root)
    progress = _sweep_progress(on_stage)
    outcome = run_sweep(
        spec, runs, executor="slurm", max_parallel=max_parallel, root=root, wait=False,
        progress=progress, poll_s=poll_s,
    )  # fmt: skip
    blocked |= submit_slurm(spec, then, root, submitted)[1]
    wait_idle(spec, runs, root, progress, poll_s)
    failed = wait_for(planned, on_stage, poll_s=poll_s) | blocked
    outcome.states = scan(spec, runs, root)
    return outcome, failed
