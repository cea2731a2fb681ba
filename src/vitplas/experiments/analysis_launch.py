"""A study's analysis jobs through the study's executor, in the order their dependencies set.

Each analysis job (spec.analysis_jobs) runs in its folder <root>/analysis/<kind>/<job id>/
through the sweep's job wrapper (launch.RunJob: the folder's lock, status, traceback, DONE):
locally as a process of submitit's LocalExecutor (at most executor.max_parallel at once, like
the runs), on SLURM as a job of its own with the spec's SLURM settings. A done job is never
launched again; a failed one is, by the next launch.

What a job needs done first is experiments.analysis_plan's. Locally a job starts once all it
needs is done; on SLURM it is submitted with a dependency (afterok) on the SLURM jobs of what
is not done yet, and dropped by SLURM when one of them fails (kill-on-invalid-dep). A job that
needs something failed, or something nobody launches, is blocked: not launched, and reported
with what it waits for.

Progress inside a job (the stages of `progress_hooks`) crosses the process boundary through
progress.json in the job's folder, which the launcher relays to `on_stage`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit

from vitplas.config import ConfigError, config_from_dict
from vitplas.experiments.analysis_plan import Planned, readiness, state_of
from vitplas.experiments.launch import RunJob, reaped_python, slurm_executor, stop_on_signals
from vitplas.experiments.spec import AnalysisJob, SweepSpec
from vitplas.experiments.store import read_json, run_dir, write_status
from vitplas.jobs.registry import ANALYSIS_RUNNERS, import_path
from vitplas.runs import atomic_write_json

Stage = Callable[[str, int, int], None]  # (stage name, done, total)
PROGRESS_FILE = "progress.json"  # in a job's folder: {stage: [done, total]}


# ---- progress across processes ---------------------------------------------------------------


class ProgressFile:
    """Stage updates of a job, written into its folder's progress.json (at most every
    `every_s` seconds, and at each stage's end) for the launcher to relay; picklable."""

    def __init__(self, folder: str | Path, every_s: float = 1.0) -> None:
        self.path, self.every_s = Path(folder) / PROGRESS_FILE, every_s
        self.stages: dict[str, list[int]] = {}
        self.written = 0.0

    def __call__(self, name: str, done: int, total: int) -> None:
        self.stages[name] = [int(done), int(total)]
        if done >= total or time.monotonic() - self.written >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.stages:
            atomic_write_json(self.path, self.stages)
            self.written = time.monotonic()


class _Relay:
    """Relays the progress.json of running jobs, and the count of finished jobs (the
    'analysis' stage), to `on_stage`, each change once."""

    def __init__(self, on_stage: Stage | None) -> None:
        self.on_stage, self.seen = on_stage, {}

    def count(self, done: int, total: int) -> None:
        if self.on_stage is not None and self.seen.get("analysis") != (done, total):
            self.seen["analysis"] = (done, total)
            self.on_stage("analysis", done, total)

    def poll(self, folders: list[Path]) -> None:
        if self.on_stage is None:
            return
        for folder in folders:
            stages = read_json(folder / PROGRESS_FILE) or {}
            for name, value in stages.items():
                if self.seen.get((folder, name)) != value and len(value) == 2:
                    self.seen[(folder, name)] = value
                    self.on_stage(name, *value)


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
    pairs = config_from_dict(import_path(ANALYSIS_RUNNERS["plasticity"][1]), job.config).pairs
    name = f"plasticity {job.config.get('target', '')}:"

    def on_pairs(_batches: int, done: int) -> None:
        on_stage(f"{name} pairs", min(done, pairs), pairs)

    def on_phase(phase: str, done: int, total: int) -> None:
        on_stage(f"{name} {phase}", done, total)

    return {"progress": on_pairs, "on_phase": on_phase}


class AnalysisCall(RunJob):
    """One analysis job in its own process (or SLURM job): the sweep's job wrapper with the
    job's progress stages written to its folder."""

    def __call__(  # type: ignore[override]
        self, job: AnalysisJob, folder: str, executor: str, threads: int | None = None
    ) -> dict[str, Any]:
        progress = ProgressFile(folder)
        hooks = progress_hooks(job, progress)
        try:
            record = super().__call__(
                job.function, job.config_class, folder, job.config, executor, threads, hooks
            )
        finally:
            progress.flush()
        return {k: v for k, v in record.items() if isinstance(v, int | float | str | bool)}


# ---- the executors ---------------------------------------------------------------------------


def _submitit_folder(spec: SweepSpec, root: Path) -> Path:
    return Path(spec.executor.folder or Path(root) / "submitit") / "analysis"


def _prepared(item: Planned) -> None:
    """The job's folder, cleared of a previous attempt's status, traceback and progress."""
    item.folder.mkdir(parents=True, exist_ok=True)
    for name in ("error.txt", "status.json", PROGRESS_FILE):
        (item.folder / name).unlink(missing_ok=True)


def run_local(
    spec: SweepSpec,
    planned: list[Planned],
    root: Path,
    on_stage: Stage | None = None,
    *,
    poll_s: float = 0.5,
    counted: tuple[int, int] | None = None,
) -> dict[str, str]:
    """Run the planned jobs that are not done as local processes, each once what it needs is
    done, at most executor.max_parallel at once; {job name: why it failed or is blocked}.
    `counted` = (jobs counted before these, all jobs) of the 'analysis' stage (default: these).
    Ctrl-C, SIGTERM or SIGHUP cancel the jobs it started."""
    before, total = counted or (0, len(planned))
    todo = [item for item in planned if state_of(item.folder)[0] != "done"]
    failed: dict[str, str] = {}
    active: dict[str, tuple[Planned, submitit.Job]] = {}
    relay = _Relay(on_stage)
    executor = submitit.LocalExecutor(folder=_submitit_folder(spec, root))
    executor.update_parameters(timeout_min=spec.executor.timeout_min)
    with stop_on_signals():
        try:
            while True:
                _start_ready(spec, planned, root, todo, active, failed, executor)
                relay.poll([item.folder for item, _ in active.values()])
                for name, (item, job) in list(active.items()):
                    if job.done():
                        relay.poll([item.folder])
                        del active[name]
                        _record_end(item, todo, failed)
                relay.count(before + len(planned) - len(todo) - len(active), total)
                if not todo and not active:
                    return failed
                time.sleep(poll_s)
        except BaseException:
            for _, job in active.values():
                job.cancel(check=False)
            raise


def _start_ready(spec, planned, root, todo, active, failed, executor) -> None:
    """Launch the jobs of `todo` whose needs are done, while fewer than max_parallel run."""
    threads = spec.executor.threads_per_run
    for item in list(todo):
        if len(active) >= spec.executor.max_parallel:
            return
        own = state_of(item.folder)[0]
        if own == "done":  # done since (another launcher): nothing to launch
            todo.remove(item)
        if own in ("done", "running"):  # running: another process owns it; waited for
            continue
        coming = {p.name for p in todo} | set(active)
        verdict, why = readiness(item, root, planned, coming, failed)
        if verdict == "wait":
            continue
        todo.remove(item)
        if verdict == "blocked":
            failed[item.name] = why
            continue
        _prepared(item)
        write_status(item.folder, "queued", executor="local")
        executor.python = reaped_python(item.folder)
        job = executor.submit(AnalysisCall(), item.job, str(item.folder), "local", threads)
        write_status(item.folder, None, controller_pid=int(job.job_id))
        active[item.name] = (item, job)


def _record_end(item: Planned, todo: list[Planned], failed: dict[str, str]) -> None:
    """After a job's process ended: failed (with why), or back to `todo` when another
    process owns its folder (then it is waited for)."""
    state, detail = state_of(item.folder)
    if state == "running":
        todo.append(item)
    elif state != "done":
        failed[item.name] = detail or state


def submit_slurm(
    spec: SweepSpec,
    planned: list[Planned],
    root: Path,
    submitted: dict[str, str] | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Submit the planned jobs that are not done (nor in flight) as SLURM jobs, each with a
    dependency (afterok) on the SLURM jobs of what it needs that is not done yet; `submitted`
    holds {job name: SLURM job id} of earlier calls. ({name: job id}, {name: why blocked})."""
    submitted = dict(submitted or {})
    executor = slurm_executor(spec, _submitit_folder(spec, root), spec.executor.max_parallel)
    limits, blocked, new = _time_limits(spec, planned), {}, {}
    for item in planned:
        if state_of(item.folder)[0] in ("done", "running"):
            continue
        after, why = _slurm_dependencies(item, root, planned, submitted, blocked)
        if why:
            blocked[item.name] = why
            continue
        extra = {"dependency": "afterok:" + ":".join(after), "kill_on_invalid_dep": "yes"}
        executor.update_parameters(
            timeout_min=limits.get(item.job.job_id, limits[""]),
            slurm_additional_parameters=extra if after else {},
        )
        _prepared(item)
        write_status(item.folder, "queued", executor="slurm")
        job = executor.submit(AnalysisCall(), item.job, str(item.folder), "slurm")
        write_status(item.folder, None, job_id=job.job_id)
        submitted[item.name] = new[item.name] = job.job_id
    return new, blocked


def _slurm_dependencies(item, root, planned, submitted, blocked) -> tuple[list[str], str]:
    """(SLURM job ids `item` must wait for, '') or ([], why it is blocked)."""
    folders = {p.name: p.folder for p in planned}
    after = []
    for name in item.needs_jobs:
        if name in submitted:
            after.append(submitted[name])
            continue
        if name in blocked:
            return [], f"needs analysis job {name}, which is blocked: {blocked[name]}"
        found, why = _in_flight(folders[name], f"analysis job {name}")
        after += found
        if why:
            return [], why
    for rid in item.needs_runs:
        found, why = _in_flight(run_dir(root, rid), f"run {rid}")
        after += found
        if why:
            return [], why
    return after, ""


def _in_flight(folder: Path, what: str) -> tuple[list[str], str]:
    """([], '') when `folder` is done; ([its SLURM job id], '') while it is queued or running
    on SLURM; ([], why) otherwise (failed, missing, or running outside SLURM)."""
    state, detail = state_of(folder)
    if state == "done":
        return [], ""
    status = read_json(folder / "status.json") or {}
    if state == "running" and status.get("executor") == "slurm" and status.get("job_id"):
        return [str(status["job_id"])], ""
    return [], f"needs {what}, which is {state}" + (f" ({detail})" if detail else "")


def _time_limits(spec: SweepSpec, planned: list[Planned]) -> dict[str, int]:
    """job id -> SLURM time limit in minutes ('' for any other): the spec's `time_min`, else
    the job's estimate (experiments.cost) x its margin, rounded up to 30 min; a study whose
    jobs cannot be estimated before their dependencies are done gets UNCOUNTED_TIME_MIN."""
    from vitplas.experiments.cost import UNCOUNTED_TIME_MIN, slurm_minutes, study_cost

    if spec.executor.slurm.time_min is not None:
        return {"": spec.executor.slurm.time_min}
    try:
        jobs = study_cost(spec, runs=[]).jobs
    except ConfigError:  # a config naming a dependency not done yet
        return {"": UNCOUNTED_TIME_MIN}
    limits = {job.job_id: 30 * -(-slurm_minutes(job) // 30) for job in jobs}
    return {"": UNCOUNTED_TIME_MIN, **limits}


def wait_for(
    planned: list[Planned],
    on_stage: Stage | None = None,
    *,
    poll_s: float = 0.5,
    counted: tuple[int, int] | None = None,
) -> dict[str, str]:
    """Wait while any planned job is queued or running (SLURM jobs, or another launcher's);
    {job name: why it is not done} at the end."""
    before, total = counted or (0, len(planned))
    relay = _Relay(on_stage)
    while True:
        states = {item.name: state_of(item.folder) for item in planned}
        running = [item for item in planned if states[item.name][0] == "running"]
        relay.poll([item.folder for item in (running or planned)])
        relay.count(before + len(planned) - len(running), total)
        if not running:
            break
        time.sleep(poll_s)
    return {name: detail or state for name, (state, detail) in states.items() if state != "done"}
