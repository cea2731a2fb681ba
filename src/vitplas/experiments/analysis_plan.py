"""What a study's analysis jobs need done before they start, read from their configs.

A job needs what a value of its config (or a part of an ARCH@FILE value, or a value nested in
a list) names a path inside of: another analysis job's folder <root>/analysis/<kind>/<id> (a
bounds job's `plasticity:` run), or a run folder <root>/runs/<run id> of the sweep (a job on a
finetuned model, `model: <root>/runs/<run id>`). `plan` orders the jobs so that what a job
needs comes first (a circle is a ConfigError); `check` builds every config strictly before
anything runs, except the keys that name a dependency not done yet, which are checked when
the job starts (the folder they name does not exist before). experiments.analysis_launch
runs the plan.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitplas.config import ConfigError, config_from_dict
from vitplas.experiments.spec import AnalysisJob, Run, SweepSpec, analysis_jobs
from vitplas.experiments.store import NOT_LAUNCHED, run_dir, run_state
from vitplas.jobs.registry import import_path


@dataclass
class Planned:
    """One analysis job of a study with its folder and what it needs done first."""

    job: AnalysisJob
    folder: Path
    needs_jobs: list[str] = field(default_factory=list)  # names kind/id of analysis jobs
    needs_runs: list[str] = field(default_factory=list)  # run ids of the sweep
    keys: list[str] = field(default_factory=list)  # config keys that name a dependency

    @property
    def name(self) -> str:
        return f"{self.job.kind}/{self.job.job_id}"


def job_folder(root: Path, job: AnalysisJob) -> Path:
    return Path(root) / "analysis" / job.kind / job.job_id


def _named_paths(value: Any) -> Iterator[Path]:
    """Every path a config value may name (a string, its ARCH@FILE parts, nested values)."""
    if isinstance(value, str):
        yield from (Path(part) for part in value.split("@") if part)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _named_paths(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _named_paths(item)


def _dependency(path: Path, root: Path, jobs: set[str], runs: set[str]) -> tuple[str, str] | None:
    """('job', kind/id) or ('run', run id) of the study folder `path` lies in, else None."""
    try:
        parts = path.resolve().relative_to(root.resolve()).parts
    except ValueError:
        return None
    if len(parts) >= 3 and parts[0] == "analysis" and f"{parts[1]}/{parts[2]}" in jobs:
        return "job", f"{parts[1]}/{parts[2]}"
    if len(parts) >= 2 and parts[0] == "runs" and parts[1] in runs:
        return "run", parts[1]
    return None


def plan(spec: SweepSpec, root: Path, runs: list[Run]) -> list[Planned]:
    """The spec's analysis jobs with their dependencies, dependencies first."""
    jobs = analysis_jobs(spec)
    names = {f"{job.kind}/{job.job_id}" for job in jobs}
    run_ids = {run.run_id for run in runs}
    planned = []
    for job in jobs:
        item = Planned(job, job_folder(root, job))
        for key, value in job.config.items():
            for path in _named_paths(value):
                found = _dependency(path, Path(root), names, run_ids)
                if found is None:
                    continue
                needs = item.needs_jobs if found[0] == "job" else item.needs_runs
                needs += [found[1]] if found[1] not in needs else []
                item.keys += [key] if key not in item.keys else []
        planned.append(item)
    return _in_order(planned)


def _in_order(planned: list[Planned]) -> list[Planned]:
    """Dependencies first (a topological order); a circle is a ConfigError."""
    by_name = {item.name: item for item in planned}
    order: list[Planned] = []
    marks: dict[str, str] = {}

    def visit(item: Planned, path: list[str]) -> None:
        if marks.get(item.name) == "placed":
            return
        if marks.get(item.name) == "visiting":
            circle = " -> ".join([*path, item.name])
            raise ConfigError(f"analysis jobs that need each other in a circle: {circle}")
        marks[item.name] = "visiting"
        for name in item.needs_jobs:
            visit(by_name[name], [*path, item.name])
        marks[item.name] = "placed"
        order.append(item)

    for item in planned:
        visit(item, [])
    return order


def needs_runs(item: Planned, planned: list[Planned]) -> bool:
    """Whether `item` needs a run of the sweep, itself or through the jobs it needs."""
    by_name = {p.name: p for p in planned}
    return bool(item.needs_runs) or any(needs_runs(by_name[n], planned) for n in item.needs_jobs)


def state_of(folder: Path) -> tuple[str, str]:
    """(state, detail) of a job or run folder (store.run_state; missing when absent)."""
    return run_state(folder) if folder.exists() else ("missing", NOT_LAUNCHED)


def check(planned: list[Planned], root: Path) -> None:
    """Build every job's config strictly before anything runs (a ConfigError naming the
    entry); keys naming a dependency that is not done yet are checked when the job starts."""
    for item in planned:
        if item.job.config_class is None:
            continue
        config = dict(item.job.config)
        if not all(s == "done" for s, _ in _need_states(item, root, planned).values()):
            config = {k: v for k, v in config.items() if k not in item.keys}
        try:
            config_from_dict(import_path(item.job.config_class), config)
        except ValueError as err:  # ConfigError included
            raise ConfigError(f"analysis.{item.job.kind} entry {item.job.job_id}: {err}") from err


def _need_states(item: Planned, root: Path, planned: list[Planned]) -> dict[str, tuple[str, str]]:
    """{'analysis job kind/id' or 'run id': (state, detail)} of what `item` needs."""
    folders = {p.name: p.folder for p in planned}
    out = {f"analysis job {name}": state_of(folders[name]) for name in item.needs_jobs}
    out |= {f"run {rid}": state_of(run_dir(root, rid)) for rid in item.needs_runs}
    return out


def readiness(item: Planned, root: Path, planned: list[Planned], coming: set[str], failed):
    """('ready' | 'wait' | 'blocked', why) of a job to launch locally."""
    for what, (state, detail) in _need_states(item, root, planned).items():
        name = what.removeprefix("analysis job ")
        if state == "done":
            continue
        if state == "running" or name in coming:
            return "wait", ""
        if name in failed:
            return "blocked", f"needs {what}, which failed: {failed[name]}"
        return "blocked", f"needs {what}, which is {state}" + (f" ({detail})" if detail else "")
    return "ready", ""
