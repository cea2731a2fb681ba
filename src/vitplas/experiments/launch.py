"""Launching a sweep through submitit: local processes (default) or SLURM job arrays.

Idempotent: finished runs are skipped, runs in flight are left alone, failed runs are listed
(with their tracebacks in error.txt) and rerun only when asked (--retry-failed); a run stopped
by what a rerun resumes (killed, a full disk, a SLURM job gone) is launched again by a plain
rerun. A preempted or timed-out job
requeues itself (submitit Checkpointable) and the runner resumes from its own checkpoint.

No double work: one launcher per study at a time (an OS lock on <root>/launcher.lock; a second
`vitplas sweep` waits for the first), each run's state is read again right before it is
launched (a run whose folder another process owns, such as a `vitplas finetune --out` there, is
left alone), and a job that finds its run done or its folder owned (vitplas.locks.run_lock: the
job owns the folder, the runner re-enters that lock) exits without work. Runs still in flight
from a killed launcher are adopted: they count against `max_parallel` and are waited for. A
launcher stopped by SIGTERM, SIGINT or SIGHUP stops its local workers.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import submitit

from vitplas.config import config_from_dict
from vitplas.experiments.spec import Run, SweepSpec
from vitplas.experiments.store import (
    RunState,
    counts,
    prepare,
    read_result,
    resumable_reason,
    run_state,
    scan,
    write_status,
)
from vitplas.jobs.registry import import_path
from vitplas.locks import FileLock, RunLockedError, holder, run_lock
from vitplas.runs import DONE_MARKER, RunDir, atomic_write_json, atomic_write_text, now_iso

Progress = Callable[[dict[str, int]], None]
LAUNCHER_LOCK = "launcher.lock"  # in a study root: held by the launcher of its runs


class RunJob(submitit.helpers.Checkpointable):
    """One run inside a job: calls `function(cfg, run_dir)`, records status and tracebacks.

    As a Checkpointable, a preempted/timed-out job is requeued with the same arguments; the
    runner (run_finetune) resumes from its last checkpoint in run_dir.
    """

    def __call__(
        self,
        function: str,
        config_class: str | None,
        folder: str,
        config: dict[str, Any],
        executor: str,
        threads: int | None = None,
        hooks: dict[str, Any] | None = None,  # keyword arguments for the function (inline)
    ) -> dict[str, Any]:
        path = Path(folder)
        with contextlib.ExitStack() as owned:
            try:  # the run folder's own lock; the runner takes it again (re-entrant)
                owned.enter_context(run_lock(path, command="vitplas sweep job", wait=False))
            except RunLockedError:  # another job (or command) runs it: no work
                return {}
            if (path / DONE_MARKER).exists() and (path / "result.json").exists():  # done
                return read_result(path)
            return self._run(function, config_class, path, config, executor, threads, hooks)

    def _run(
        self,
        function: str,
        config_class: str | None,
        path: Path,
        config: dict[str, Any],
        executor: str,
        threads: int | None,
        hooks: dict[str, Any] | None,
    ) -> dict[str, Any]:
        try:
            job_id = submitit.JobEnvironment().job_id
        except RuntimeError:  # called outside submitit (tests, inline use)
            job_id = ""
        write_status(
            path, "running", pid=os.getpid(), host=socket.gethostname(), job_id=job_id,
            executor=executor, started_at=now_iso(),
        )  # fmt: skip
        if threads:
            import torch

            torch.set_num_threads(threads)
        try:
            fn = import_path(function)
            cfg = config_from_dict(import_path(config_class), config) if config_class else config
            result = fn(cfg, path, **(hooks or {}))
            record = dict(result) if isinstance(result, Mapping) else {}  # probes: a table
            if not (path / "result.json").exists():  # a runner that only returns its result
                atomic_write_json(path / "result.json", record)
            if not (path / DONE_MARKER).exists():
                RunDir(path, create=False).mark_done()  # seals result.json and the records
        except Exception as err:
            resumable = resumable_reason(err)
            with contextlib.suppress(OSError):  # a full disk may refuse these too: the reaper
                # then records the worker's end, which counts as missing (resumed) as well
                atomic_write_text(path / "error.txt", traceback.format_exc())
                extra = {"resumable": resumable} if resumable else {}
                write_status(path, "failed", ended_at=now_iso(), **extra)
            raise
        (path / "error.txt").unlink(missing_ok=True)
        write_status(path, "done", ended_at=now_iso())
        return record


@dataclass
class SweepOutcome:
    """What a sweep call did; `states` is the final scan of every run of the spec."""

    launched: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    states: list[RunState] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    busy: str = ""  # the holder of the launcher lock when another launcher was at work

    @property
    def counts(self) -> dict[str, int]:
        return counts(self.states)

    @property
    def failed(self) -> list[RunState]:
        return [s for s in self.states if s.state == "failed"]


def _to_launch(states: list[RunState], retry_failed: bool) -> tuple[list[RunState], dict]:
    todo = [s for s in states if s.state == "missing" or (retry_failed and s.state == "failed")]
    skipped = counts([s for s in states if s not in todo])
    skipped.pop("total")
    return todo, skipped


class LauncherStopped(KeyboardInterrupt):
    """SIGTERM/SIGHUP reached the launcher: stop its local workers, then exit (like Ctrl-C)."""

    def __init__(self, number: int):
        super().__init__(number)
        self.signal = number


@contextmanager
def stop_on_signals():
    """Turn SIGTERM and SIGHUP into LauncherStopped (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(number: int, _frame: Any) -> None:
        raise LauncherStopped(number)

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _take_launcher_lock(
    root: Path,
    wait: bool,
    progress: Progress | None,
    poll_s: float,
    spec: SweepSpec,
    runs: list[Run],
) -> FileLock | None:
    """The study's launcher lock; while another launcher holds it, wait (or None: no wait)."""

    def report(_holder: Any) -> None:
        if progress:
            progress(counts(scan(spec, runs, root)))

    lock = FileLock(root / LAUNCHER_LOCK)
    taken = lock.acquire("vitplas sweep", wait=wait, poll_s=poll_s, on_wait=report)
    return lock if taken else None


def run_sweep(
    spec: SweepSpec,
    runs: list[Run],
    *,
    executor: Literal["local", "slurm"] | None = None,
    max_parallel: int | None = None,
    retry_failed: bool = False,
    wait: bool = True,
    root: str | Path | None = None,
    progress: Progress | None = None,
    poll_s: float = 0.5,
) -> SweepOutcome:
    """Launch the runs that are not done (and not in flight); wait for them unless told not to.

    While another launcher of the same study is at work, wait for it (`wait=False`: return at
    once with `busy` naming it and nothing launched).
    """
    root = Path(root) if root is not None else spec.root_path
    kind = executor or spec.executor.kind
    if kind not in ("local", "slurm"):
        raise ValueError(f"executor '{kind}' is unknown; choose local or slurm")
    parallel = max_parallel or spec.executor.max_parallel
    with stop_on_signals():
        lock = _take_launcher_lock(root, wait, progress, poll_s, spec, runs)
        if lock is None:
            busy = FileLock(root / LAUNCHER_LOCK).holder()
            return SweepOutcome(busy=busy, states=scan(spec, runs, root))
        try:
            outcome = _launch(spec, runs, kind, parallel, retry_failed, root, progress, poll_s)
        finally:
            lock.release()
        if wait:
            wait_idle(spec, runs, root, progress, poll_s)
    outcome.states = scan(spec, runs, root)
    return outcome


def _launch(
    spec: SweepSpec,
    runs: list[Run],
    kind: str,
    parallel: int,
    retry_failed: bool,
    root: Path,
    progress: Progress | None,
    poll_s: float,
) -> SweepOutcome:
    """Launch what is to launch (the caller holds the launcher lock)."""
    todo, skipped = _to_launch(scan(spec, runs, root), retry_failed)
    outcome = SweepOutcome(skipped=skipped)
    folder = Path(spec.executor.folder or root / "submitit")
    if kind == "local":
        launched, outcome.job_ids = _run_local(
            spec, todo, folder, parallel, progress, runs, root, poll_s, retry_failed
        )
    else:
        # waiting goes through the store + squeue (wait_idle), not sacct: a cluster without
        # accounting storage still reports its jobs correctly
        launched = [s for s in todo if _claim_for_launch(s, root, spec, retry_failed)]
        outcome.job_ids = [j.job_id for j in _submit_slurm(spec, launched, folder, parallel)]
    outcome.launched = [s.run.run_id for s in launched]
    return outcome


def _claim_for_launch(item: RunState, root: Path, spec: SweepSpec, retry_failed: bool) -> bool:
    """Read the run's state again right before launching it; prepare its folder if still to do."""
    state = run_state(item.folder)[0] if item.folder.exists() else "missing"
    if not (state == "missing" or (retry_failed and state == "failed")):
        return False
    if holder(item.folder) is not None:  # another process owns the folder: not ours to launch
        return False
    prepare(root, item.run, spec.name)
    (item.folder / "error.txt").unlink(missing_ok=True)
    (item.folder / "status.json").unlink(missing_ok=True)
    return True


def _job_args(spec: SweepSpec, item: RunState, kind: str) -> tuple:
    runner = spec.runner
    threads = spec.executor.threads_per_run if kind == "local" else None
    return (runner.function, runner.config, str(item.folder), item.run.config, kind, threads)


def reaped_python(folder: Path) -> str:
    """The worker's interpreter command, through the reaper that records how it ended."""
    python = shlex.quote(sys.executable)
    return f"{python} -m vitplas.experiments.reaper {shlex.quote(str(folder))} -- "


def _run_local(
    spec: SweepSpec,
    todo: list[RunState],
    folder: Path,
    parallel: int,
    progress: Progress | None,
    runs: list[Run],
    root: Path,
    poll_s: float,
    retry_failed: bool = False,
) -> tuple[list[RunState], list[str]]:
    """At most `parallel` runs in flight at once, counting runs of the spec that are already
    in flight (an earlier launcher's); Ctrl-C, SIGTERM or SIGHUP cancel the ones it started."""
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=spec.executor.timeout_min)
    pending, active, launched, job_ids = list(todo), {}, [], []
    try:
        while pending or active:
            states = scan(spec, runs, root)
            others = sum(s.state == "running" and s.run.run_id not in active for s in states)
            while pending and len(active) + others < parallel:
                item = pending.pop(0)
                if not _claim_for_launch(item, root, spec, retry_failed):
                    continue
                # queued before submit: a job that ends at once must not be overwritten
                write_status(item.folder, "queued", executor="local", host=socket.gethostname())
                executor.python = reaped_python(item.folder)
                job = executor.submit(RunJob(), *_job_args(spec, item, "local"))
                write_status(item.folder, None, controller_pid=int(job.job_id))
                active[item.run.run_id] = job
                launched.append(item)
                job_ids.append(job.job_id)
            if progress:
                progress(counts(states))
            time.sleep(poll_s)
            active = {rid: j for rid, j in active.items() if not j.done()}
    except BaseException:
        for job in active.values():
            job.cancel(check=False)
        raise
    return launched, job_ids


def _submit_slurm(
    spec: SweepSpec, todo: list[RunState], folder: Path, parallel: int
) -> list[submitit.Job]:
    """One SLURM job array for all runs to launch (array parallelism = `parallel`)."""
    if not todo:
        return []
    executor = slurm_executor(spec, folder, parallel)
    for item in todo:
        write_status(item.folder, "queued", executor="slurm")
    # one array per time limit: the spec's, or each run's estimated cost with a margin
    limits = _time_limits(spec, todo)
    jobs: dict[str, submitit.Job] = {}
    for minutes in sorted(set(limits.values())):
        group = [item for item in todo if limits[item.run.run_id] == minutes]
        executor.update_parameters(timeout_min=minutes)
        with executor.batch():
            submitted = [executor.submit(RunJob(), *_job_args(spec, i, "slurm")) for i in group]
        jobs |= {item.run.run_id: job for item, job in zip(group, submitted, strict=True)}
    for item in todo:
        write_status(item.folder, None, job_id=jobs[item.run.run_id].job_id)
    return [jobs[item.run.run_id] for item in todo]


def slurm_executor(spec: SweepSpec, folder: Path, parallel: int) -> submitit.AutoExecutor:
    """submitit's SLURM executor with the spec's settings (executor.slurm) for one job each:
    the study's runs (as job arrays of parallelism `parallel`) and its analysis jobs alike."""
    slurm = spec.executor.slurm
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params: dict[str, Any] = {
        "gpus_per_node": slurm.gpus_per_node,
        "cpus_per_task": slurm.cpus_per_task,
        "tasks_per_node": 1,
        "nodes": 1,
        "slurm_array_parallelism": parallel,
        "name": f"vitplas-{spec.name}",
    }
    if slurm.mem_gb:
        params["mem_gb"] = slurm.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(slurm, key):
            params[f"slurm_{key}"] = getattr(slurm, key)
    if slurm.setup:
        params["slurm_setup"] = list(slurm.setup)
    if not slurm.gpus_per_node:
        params.pop("gpus_per_node")
    executor.update_parameters(**params)
    return executor


def _time_limits(spec: SweepSpec, todo: list[RunState]) -> dict[str, int]:
    """run id -> SLURM time limit (minutes): the spec's `time_min`, else the run's estimate."""
    if spec.executor.slurm.time_min is not None:
        return {item.run.run_id: spec.executor.slurm.time_min for item in todo}
    from vitplas.experiments.cost import slurm_time_limits

    return slurm_time_limits(spec, [item.run for item in todo])


def wait_idle(
    spec: SweepSpec,
    runs: list[Run],
    root: Path,
    progress: Progress | None = None,
    poll_s: float = 0.5,
) -> dict[str, int]:
    """Wait until no run of the spec is in flight (also runs launched by an earlier call)."""
    while True:
        state = counts(scan(spec, runs, root))
        if progress:
            progress(state)
        if state["running"] == 0:
            return state
        time.sleep(poll_s)
