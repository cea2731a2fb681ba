"""Launching a sweep through submitit: local processes (default) or SLURM job arrays.

Idempotent: finished runs are skipped, runs in flight are left alone, failed runs are listed
(with their tracebacks in error.txt) and rerun only when asked. A preempted or timed-out job
requeues itself (submitit Checkpointable) and the runner resumes from its own checkpoint.
"""

from __future__ import annotations

import importlib
import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping
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
    scan,
    write_status,
)
from vitplas.runs import DONE_MARKER, atomic_write_json, atomic_write_text, now_iso

Progress = Callable[[dict[str, int]], None]


def import_path(path: str) -> Any:
    """'package.module:attr' -> the object; a clear error when it is not there."""
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"import path '{path}' must look like 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import '{module_name}' (from '{path}'): {err}") from err
    if not hasattr(module, attr):
        raise ValueError(f"'{module_name}' has no '{attr}' (from '{path}')")
    return getattr(module, attr)


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
                atomic_write_text(path / DONE_MARKER, now_iso() + "\n")
        except Exception:
            atomic_write_text(path / "error.txt", traceback.format_exc())
            write_status(path, "failed", ended_at=now_iso())
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
    """Launch the runs that are not done (and not in flight); wait for them unless told not to."""
    root = Path(root) if root is not None else spec.root_path
    kind = executor or spec.executor.kind
    parallel = max_parallel or spec.executor.max_parallel
    todo, skipped = _to_launch(scan(spec, runs, root), retry_failed)
    outcome = SweepOutcome(skipped=skipped)
    for item in todo:
        prepare(root, item.run, spec.name)
        (item.folder / "error.txt").unlink(missing_ok=True)
        (item.folder / "status.json").unlink(missing_ok=True)
    folder = Path(spec.executor.folder or root / "submitit")
    if kind == "local":
        outcome.job_ids = _run_local(spec, todo, folder, parallel, progress, runs, root, poll_s)
    elif kind == "slurm":
        # waiting goes through the store + squeue (wait_idle), not sacct: a cluster without
        # accounting storage still reports its jobs correctly
        outcome.job_ids = [j.job_id for j in _submit_slurm(spec, todo, folder, parallel)]
    else:
        raise ValueError(f"executor '{kind}' is unknown; choose local or slurm")
    outcome.launched = [s.run.run_id for s in todo]
    if wait:
        wait_idle(spec, runs, root, progress, poll_s)
    outcome.states = scan(spec, runs, root)
    return outcome


def _job_args(spec: SweepSpec, item: RunState, kind: str) -> tuple:
    runner = spec.runner
    threads = spec.executor.threads_per_run if kind == "local" else None
    return (runner.function, runner.config, str(item.folder), item.run.config, kind, threads)


def _run_local(
    spec: SweepSpec,
    todo: list[RunState],
    folder: Path,
    parallel: int,
    progress: Progress | None,
    runs: list[Run],
    root: Path,
    poll_s: float,
) -> list[str]:
    """At most `parallel` local processes at once; Ctrl-C cancels the ones in flight."""
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=spec.executor.timeout_min)
    pending, active, job_ids = list(todo), [], []
    try:
        while pending or active:
            while pending and len(active) < parallel:
                item = pending.pop(0)
                # queued before submit: a job that ends at once must not be overwritten
                write_status(item.folder, "queued", executor="local", host=socket.gethostname())
                job = executor.submit(RunJob(), *_job_args(spec, item, "local"))
                write_status(item.folder, None, controller_pid=int(job.job_id))
                active.append(job)
                job_ids.append(job.job_id)
            time.sleep(poll_s)
            active = [j for j in active if not j.done()]
            if progress:
                progress(counts(scan(spec, runs, root)))
    except BaseException:
        for job in active:
            job.cancel(check=False)
        raise
    return job_ids


def _submit_slurm(
    spec: SweepSpec, todo: list[RunState], folder: Path, parallel: int
) -> list[submitit.Job]:
    """One SLURM job array for all runs to launch (array parallelism = `parallel`)."""
    if not todo:
        return []
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
