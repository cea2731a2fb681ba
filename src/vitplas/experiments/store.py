"""The store of a sweep: one folder per run under <root>/runs/, read through files, not names.

Each run folder holds
    sweep.json    run id, grid values and the finetune config (written before launch)
    status.json   queued | running | failed | killed | done, with pid/host/job id and times
                  (a failure a rerun resumes, a full disk, says so: `resumable`, and counts as
                  missing, so a plain rerun of the sweep launches the run again)
    error.txt     the traceback of the last failure (failed.json: the runner's own reason,
                  e.g. {"reason": "diverged", "step", "loss"})
    result.json + DONE   written by the runner when it finishes
A run is found by the run id stored in sweep.json, never by parsing a folder name.

A finished run (DONE) any of whose sealed records (result, config, manifest, curves, weights)
differs from its sealed checksum (vitplas.records), whose DONE names no seal, or whose
result.json is no record with finite accuracies, is `damaged` (runs.DamagedRecordError, naming
the file): counted on its own, never folded into the results.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitplas import records
from vitplas.experiments.spec import Run, SweepSpec, trained_label
from vitplas.locks import describe, holder
from vitplas.runs import DONE_MARKER, DamagedRecordError, RunDir, atomic_write_json, now_iso

STATES = ("done", "running", "failed", "damaged", "missing")
NOT_LAUNCHED = "not launched yet"
FAILED_RECORD = "failed.json"  # written by a runner that stopped a run on purpose (diverged)
# the numbers of a run's result that the tables aggregate: a non-finite one marks it damaged
RESULT_METRICS = ("test_acc", "best_val_acc")


def run_dir(root: str | Path, run_id: str) -> Path:
    """<root>/runs/<run_id>; a run id that is not one plain folder name is refused."""
    if run_id in ("", ".", "..") or any(c in run_id for c in "/\\\0"):
        raise ValueError(f"run id {run_id!r} is not a plain folder name; it cannot be a run")
    return Path(root) / "runs" / run_id


def read_result(folder: Path) -> dict[str, Any]:
    """result.json of a finished run, read through its seal (vitplas.records): a JSON object
    whose RESULT_METRICS are finite.

    Raises runs.DamagedRecordError naming the file, what is wrong and the sweep's fix.
    """
    try:
        data = records.read_json(folder, "result.json")
    except DamagedRecordError as err:
        raise _damaged(folder, err.problem, err.name) from err
    if not isinstance(data, dict):
        raise _damaged(folder, f"a {type(data).__name__}, not a record")
    values = {k: data.get(k) for k in RESULT_METRICS}
    bad = [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise _damaged(folder, f"non-finite value in {', '.join(bad)}")
    return data


def check_finished(folder: Path) -> dict[str, Any]:
    """The result of finished run `folder`, after every record its seal covers was checked
    (the config, manifest, curves and weights as well as result.json: what aggregate reads).
    A DamagedRecordError with the sweep's fix names the first damaged one."""
    result = read_result(folder)
    try:
        RunDir(folder, create=False).verify()
    except DamagedRecordError as err:
        raise _damaged(folder, err.problem, err.name) from err
    return result


def _damaged(folder: Path, problem: str, name: str = "result.json") -> DamagedRecordError:
    fix = f"delete the run folder {folder} and rerun the sweep to recompute it"
    return DamagedRecordError(folder, name, problem, fix=fix)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_status(folder: Path, state: str | None, **extra: Any) -> None:
    """Record the run's state (atomic; None keeps it); keeps earlier fields such as the job id."""
    status = read_json(folder / "status.json") or {}
    status.update(extra, updated_at=now_iso())
    if state is not None:
        status["state"] = state
    atomic_write_json(folder / "status.json", status)


def prepare(root: str | Path, run: Run, spec_name: str) -> Path:
    """Create the run folder and its sweep.json (the record that ties the folder to the run)."""
    folder = run_dir(root, run.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"run_id": run.run_id, "sweep": spec_name, "params": run.params, "config": run.config}
    if read_json(folder / "sweep.json") != record:
        atomic_write_json(folder / "sweep.json", record)
    return folder


def _pid_alive(pid: int) -> bool:
    """True while process `pid` runs; a zombie (killed, not yet reaped: PID 1 of a container
    may never reap it) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: the state letter follows the parenthesised command name
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def live_slurm_jobs() -> set[str] | None:
    """Job ids SLURM still knows (running or pending), or None without squeue."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def _slurm_alive(job_id: str, live: set[str] | None) -> bool:
    if live is None:
        return True  # cannot tell: trust the status file
    if job_id in live:
        return True
    array = job_id.split("_")[0]
    return any(j.startswith(array + "_[") for j in live)  # pending array tasks: 12_[3-9]


@dataclass
class RunState:
    run: Run
    folder: Path
    state: str  # one of STATES
    detail: str = ""  # job id / host, or the last traceback line of a failure


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_state(folder: Path, slurm_live: set[str] | None = None) -> tuple[str, str]:
    """(state, detail) of one run folder, from its files; detail says why a run is not done.
    A folder that another process owns (vitplas.locks: a `vitplas finetune --out` there, say)
    is running, whatever its status file says."""
    if (folder / DONE_MARKER).exists():
        try:
            check_finished(folder)
        except DamagedRecordError as err:
            return "damaged", str(err)
        return "done", ""
    state, detail = _unfinished_state(folder, slurm_live)
    if state == "missing" and (owner := holder(folder)) is not None:
        return "running", f"owned by {describe(owner)}"
    return state, detail


def _unfinished_state(folder: Path, slurm_live: set[str] | None) -> tuple[str, str]:
    """(state, detail) of a run folder without a finished result, from its status file."""
    status = read_json(folder / "status.json") or {}
    state = status.get("state")
    if state == "killed":
        return "missing", _end_reason(status)
    if state == "failed" and status.get("resumable"):  # a full disk: a rerun resumes it
        when = f" at {status['ended_at']}" if status.get("ended_at") else ""
        return "missing", f"stopped by {status['resumable']}{when}; rerun the sweep to resume it"
    if state == "failed":
        return "failed", failure_reason(folder)
    if state in ("queued", "running"):
        job = str(status.get("job_id", ""))
        if status.get("executor") == "slurm" and job:
            if _slurm_alive(job, slurm_live):
                return "running", f"slurm job {job}"
            return "missing", f"slurm job {job} is gone"
        pid, host = status.get("pid"), status.get("host")
        if host == socket.gethostname() and pid and _pid_alive(int(pid)):
            return "running", f"pid {pid}"
        controller = status.get("controller_pid")
        if state == "queued" and not pid and controller and _pid_alive(int(controller)):
            return "running", "queued"
        if host and host != socket.gethostname():
            return "running", f"on {host}"
        return "missing", (
            f"interrupted: process {pid or controller} ended without recording an end "
            "(killed with its launcher, SIGKILL or out of memory?); rerun the sweep to resume it"
        )
    return "missing", NOT_LAUNCHED if not status else f"status {state!r}"


def resumable_reason(err: BaseException) -> str | None:
    """What stopped a run that a plain rerun resumes (a full disk, in `err` or what caused
    it), or None: the failure is the run's own (diverged, a bad config, a bug)."""
    import errno

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return "a full disk" + (f" (writing {err.filename})" if err.filename else "")
        err = err.__cause__ or err.__context__
    return None


def failure_reason(folder: Path) -> str:
    """Why a run failed: 'diverged at step S (loss L)' from the runner's failed.json
    (training/divergence.py), else the last line of its traceback (error.txt)."""
    failed = read_json(folder / FAILED_RECORD)
    if isinstance(failed, dict) and failed.get("reason"):
        where = f" at step {failed['step']}" if failed.get("step") is not None else ""
        loss = failed.get("loss")
        where += f" (loss {loss:.4g})" if isinstance(loss, int | float) else ""
        return f"{failed['reason']}{where}; see {folder / FAILED_RECORD}"
    path = folder / "error.txt"
    lines = path.read_text().strip().splitlines() if path.exists() else []
    return lines[-1] if lines else "(no traceback recorded)"


def _end_reason(status: dict[str, Any]) -> str:
    """'killed by signal 9 (SIGKILL) at T' / 'exited with code 3 at T' from a status record."""
    when = f" at {status['ended_at']}" if status.get("ended_at") else ""
    if status.get("signal"):
        number = int(status["signal"])
        how = f"killed by signal {number} ({signal_name(number)}){when}"
        return f"{how}; rerun the sweep to resume it"
    return f"exited with code {status.get('exit_code')}{when} without a result; rerun the sweep"


def scan(spec: SweepSpec, runs: list[Run], root: str | Path | None = None) -> list[RunState]:
    """The state of every run of the spec (one squeue call at most)."""
    root = Path(root) if root is not None else spec.root_path
    needs_squeue = any(
        (read_json(run_dir(root, r.run_id) / "status.json") or {}).get("executor") == "slurm"
        for r in runs
    )
    live = live_slurm_jobs() if needs_squeue else None
    out = []
    for run in runs:
        folder = run_dir(root, run.run_id)
        state, detail = run_state(folder, live) if folder.exists() else ("missing", NOT_LAUNCHED)
        out.append(RunState(run, folder, state, detail))
    return out


def counts(states: list[RunState]) -> dict[str, int]:
    """{'done': n, 'running': n, 'failed': n, 'missing': n, 'total': n}."""
    out = {s: 0 for s in STATES}
    for item in states:
        out[item.state] += 1
    out["total"] = len(states)
    return out


def traceback_of(folder: Path) -> str:
    path = folder / "error.txt"
    return path.read_text() if path.exists() else "(no traceback recorded)"


ROW_KEYS = ("model", "dataset", "optimizer", "train", "lr")  # columns of every run's rows


def _resolved_config(folder: Path) -> dict[str, Any]:
    """The resolved config.yaml (defaults included) of finished run `folder`, verified, or {}
    (fake runs write none)."""
    if not (folder / "config.yaml").is_file():
        return {}
    data = records.read_yaml(folder)
    return data if isinstance(data, dict) else {}


def trained_of(resolved: dict[str, Any], grid: dict[str, Any]) -> str | None:
    """The label of what a run trained (spec.trained_label): the train list of its resolved
    config.yaml (train=[auto] resolved there), else the grid's when it is concrete, else None."""
    from vitplas.training.trainsets import is_auto

    train = resolved.get("train", grid.get("train"))
    if train is None:
        return None
    tokens = train if isinstance(train, list | tuple) else [train]
    if "train" not in resolved and any(is_auto(str(t)) for t in tokens):
        return None  # an auto run that recorded no resolved config: what it trained is unknown
    return trained_label(train)


def key_values(item: RunState, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's ROW_KEYS values: its grid config over its resolved config.yaml, so a value
    the spec sets in `base` (not a grid axis, e.g. one lr) is a column too."""
    resolved = _resolved_config(item.folder) if resolved is None else resolved
    grid = (read_json(item.folder / "sweep.json") or {}).get("config", item.run.config)
    config = {**resolved, **grid}
    return {key: config[key] for key in ROW_KEYS if key in config}


def result_rows(states: list[RunState]) -> list[dict[str, Any]]:
    """One row per finished run: run id, grid values (`train` as the grid names it, e.g.
    'auto:fisher'), key config values, `trained` (what the run trained) and result.json."""
    rows = []
    for item in states:
        if item.state != "done":
            continue
        result = read_result(item.folder)
        resolved = _resolved_config(item.folder)
        grid = (read_json(item.folder / "sweep.json") or {}).get("config", item.run.config)
        row: dict[str, Any] = {"run_id": item.run.run_id, **key_values(item, resolved)}
        row.update(item.run.params)
        if "train" in row:
            row["trained"] = trained_of(resolved, grid)
        for key, value in result.items():
            if isinstance(value, int | float | str | bool) or value is None:
                row.setdefault(key, value)
        rows.append(row)
    return rows
