"""Sweeps under faults: concurrent launchers, killed workers and launchers, damaged records.

The runs are the cheap fake runner's (tests/plugins/vitplas_testjobs): what is tested is the
launcher.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.experiments.launch import run_sweep
from vitplas.experiments.spec import expand, load_spec
from vitplas.experiments.store import counts, read_json, scan
from vitplas.runs import RunDir

FAKE = {"function": "vitplas_testjobs.fake:fake_finetune", "config": None}


def write_spec(tmp_path: Path, sleep_s: float, seeds: int, max_parallel: int) -> Path:
    base = {"model": "tiny-random", "steps": 10, "sleep_s": sleep_s,
            "slots_dir": str(tmp_path / "slots")}  # fmt: skip
    data = {
        "name": "faults",
        "root": str(tmp_path / "study"),
        "base": base,
        "grid": {"dataset": ["a"], "seed": list(range(seeds)), "lr": [0.01], "train": ["mha"]},
        "runner": FAKE,
        "executor": {"max_parallel": max_parallel},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from vitplas.cli import main; main()", *args]


def _launch(*args: str) -> subprocess.Popen:
    return subprocess.Popen(_cli(*args), start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def _wait_for(predicate, what: str, limit_s: float = 120) -> None:
    deadline = time.time() + limit_s
    while not predicate():
        assert time.time() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def _executions(states) -> list[list[str]]:
    """Per run, its lines of executions.log: 'pid alive-fake-runs-at-start'."""
    out = []
    for item in states:
        log = item.folder / "executions.log"
        out.append(log.read_text().split("\n")[:-1] if log.exists() else [])
    return out


def _running_pids(states) -> list[int]:
    pids = []
    for item in states:
        status = read_json(item.folder / "status.json") or {}
        if item.state == "running" and status.get("pid"):
            pids.append(int(status["pid"]))
    return pids


def test_two_concurrent_sweeps_do_the_work_once(tmp_path):
    path = write_spec(tmp_path, sleep_s=0.5, seeds=4, max_parallel=2)
    spec = load_spec(path)
    runs = expand(spec)
    first, second = _launch("sweep", str(path)), _launch("sweep", str(path))
    outputs = [first.communicate(timeout=240)[0], second.communicate(timeout=240)[0]]
    assert first.returncode == 0 and second.returncode == 0, outputs
    launched = sorted(int(o.split("launched ")[1].split(";")[0]) for o in outputs)
    assert launched == [0, 4], outputs
    executions = _executions(scan(spec, runs))
    assert [len(lines) for lines in executions] == [1] * 4
    assert max(int(line.split()[1]) for lines in executions for line in lines) <= 2


def test_a_killed_worker_fails_the_sweep_and_status_says_why(tmp_path):
    path = write_spec(tmp_path, sleep_s=30, seeds=1, max_parallel=1)
    spec = load_spec(path)
    runs = expand(spec)
    launcher = _launch("sweep", str(path))
    _wait_for(lambda: _running_pids(scan(spec, runs)), "the run to start")
    os.kill(_running_pids(scan(spec, runs))[0], signal.SIGKILL)
    output = launcher.communicate(timeout=120)[0]
    assert launcher.returncode == 1, output
    assert "missing 1, total 1" in output
    assert "killed by signal 9 (SIGKILL)" in output
    status = CliRunner().invoke(app, ["status", str(path), "-v"])
    assert status.exit_code == 0
    assert "done 0, running 0, failed 0, damaged 0, missing 1, total 1" in status.output
    assert f"MISSING {runs[0].run_id}: killed by signal 9 (SIGKILL) at " in status.output


def test_a_killed_launcher_leaves_runs_that_a_rerun_adopts_within_max_parallel(tmp_path):
    path = write_spec(tmp_path, sleep_s=3, seeds=5, max_parallel=2)
    spec = load_spec(path)
    runs = expand(spec)
    launcher = _launch("sweep", str(path))
    _wait_for(lambda: len(_running_pids(scan(spec, runs))) == 2, "two runs to start")
    orphans = _running_pids(scan(spec, runs))
    os.kill(launcher.pid, signal.SIGKILL)  # the launcher only: its workers go on
    launcher.wait()
    assert counts(scan(spec, runs))["running"] == 2
    outcome = run_sweep(spec, runs, poll_s=0.1)
    assert outcome.counts["done"] == 5
    assert len(outcome.launched) == 3  # the two orphans were adopted, not launched again
    executions = _executions(outcome.states)
    assert [len(lines) for lines in executions] == [1] * 5
    assert {int(lines[0].split()[0]) for lines in executions} >= set(orphans)
    assert max(int(lines[0].split()[1]) for lines in executions) <= 2


def test_a_terminated_launcher_stops_its_workers(tmp_path):
    path = write_spec(tmp_path, sleep_s=60, seeds=2, max_parallel=2)
    spec = load_spec(path)
    runs = expand(spec)
    launcher = _launch("sweep", str(path))
    _wait_for(lambda: len(_running_pids(scan(spec, runs))) == 2, "two runs to start")
    workers = _running_pids(scan(spec, runs))
    os.kill(launcher.pid, signal.SIGTERM)
    output = launcher.communicate(timeout=60)[0]
    assert launcher.returncode == 1, output
    assert "sweep stopped by signal 15 (SIGTERM); rerun it to resume" in output

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] in "ZX"

    _wait_for(lambda: all(gone(pid) for pid in workers), "the workers to stop", 30)
    state = counts(scan(spec, runs))
    assert state["running"] == 0 and state["missing"] == 2


def test_damaged_results_are_counted_apart_and_never_aggregated(tmp_path):
    path = write_spec(tmp_path, sleep_s=0, seeds=4, max_parallel=2)
    spec = load_spec(path)
    runs = expand(spec)
    run_sweep(spec, runs, poll_s=0.1)
    folders = [s.folder for s in scan(spec, runs)]
    good = json.loads((folders[0] / "result.json").read_text())
    (folders[0] / "result.json").write_text(json.dumps(good)[:25])  # truncated
    (folders[1] / "result.json").write_text("[1, 2]")  # valid JSON, not a record: sealed so
    (folders[2] / "result.json").write_text(json.dumps({**good, "test_acc": float("nan")}))
    for folder in folders[1:3]:  # as a runner that wrote them would have sealed them
        (folder / "DONE").unlink()
        RunDir(folder).mark_done()
    status = CliRunner().invoke(app, ["status", str(path)])
    assert "done 1, running 0, failed 0, damaged 3, missing 0, total 4" in status.output
    assert f"{folders[0] / 'result.json'} is damaged: its content was truncated" in status.output
    assert "is damaged: a list, not a record" in status.output
    assert "is damaged: non-finite value in test_acc" in status.output
    result = CliRunner().invoke(app, ["aggregate", str(path)])
    assert result.exit_code == 1
    assert "1 finished runs" in result.output
    assert "3 damaged runs are not in the tables" in result.output
    table = (tmp_path / "study" / "tables" / "runs.csv").read_text().strip().splitlines()
    assert len(table) == 2 and "nan" not in table[1].lower()
    sweep = CliRunner().invoke(app, ["sweep", str(path)])
    assert sweep.exit_code == 1 and "launched 0" in sweep.output


def test_an_edited_curve_or_config_of_a_finished_run_is_damage_never_a_curve(tmp_path):
    path = write_spec(tmp_path, sleep_s=0, seeds=3, max_parallel=2)
    spec = load_spec(path)
    runs = expand(spec)
    run_sweep(spec, runs, poll_s=0.1)
    folders = [s.folder for s in scan(spec, runs)]
    config = folders[1] / "config.yaml"
    config.write_text("lr: 0.01\ntrain: [mha]\n")  # a run that sealed its config, as real
    (folders[1] / "DONE").unlink()  # finetuning runs do
    RunDir(folders[1]).mark_done()
    metrics = folders[0] / "metrics.jsonl"
    metrics.write_text(metrics.read_text().replace('"loss": ', '"loss": 1', 1))  # one value
    config.write_text(config.read_text().replace("mha", "fc1"))
    status = CliRunner().invoke(app, ["status", str(path)])
    assert "done 1, running 0, failed 0, damaged 2, missing 0, total 3" in status.output
    assert f"{metrics} is damaged: its content was changed since the run" in status.output
    assert f"{config} is damaged: its content was changed since the run" in status.output
    result = CliRunner().invoke(app, ["aggregate", str(path)])
    assert result.exit_code == 1 and "2 damaged runs are not in the tables" in result.output
    curves = pd.read_csv(tmp_path / "study" / "tables" / "curves.csv")
    assert set(curves["run_id"]) == {runs[2].run_id}  # the edited curve is in no table


def test_a_sweep_that_must_not_wait_returns_at_once_while_another_launches(tmp_path):
    from vitplas.experiments.launch import LAUNCHER_LOCK
    from vitplas.locks import FileLock

    path = write_spec(tmp_path, sleep_s=0, seeds=2, max_parallel=1)
    spec = load_spec(path)
    other = FileLock(tmp_path / "study" / LAUNCHER_LOCK)
    assert other.acquire(command="vitplas sweep (the other one)")
    try:
        outcome = run_sweep(spec, expand(spec), wait=False)
        assert outcome.launched == [] and outcome.counts["missing"] == 2
        assert (
            outcome.busy
            == f"pid {os.getpid()} on {os.uname().nodename} (vitplas sweep (the other one))"
        )
        result = CliRunner().invoke(app, ["sweep", str(path), "--no-wait"])
        assert result.exit_code == 0
        assert "another sweep of this study is launching its runs (pid" in result.output
    finally:
        other.release()
    assert run_sweep(spec, expand(spec), poll_s=0.1).counts["done"] == 2


def test_a_job_whose_run_is_done_or_claimed_exits_without_work(tmp_path):
    from vitplas.experiments.launch import RunJob
    from vitplas.locks import LOCK_FILE, FileLock

    folder = tmp_path / "run"
    folder.mkdir()
    args = (FAKE["function"], None, str(folder), {"steps": 5}, "inline")
    claim = FileLock(folder / LOCK_FILE)  # the run folder's own lock, held by another owner
    assert claim.acquire(command="another job")
    try:
        assert RunJob()(*args) == {}
        assert not (folder / "executions.log").exists() and not (folder / "status.json").exists()
    finally:
        claim.release()
    first = RunJob()(*args)
    assert RunJob()(*args) == first  # done: the recorded result, no second execution
    assert len((folder / "executions.log").read_text().splitlines()) == 1


def test_status_says_where_a_diverged_run_stopped(tmp_path):
    from test_train_support import toy_config, toy_sources

    from vitplas.config import config_to_dict
    from vitplas.experiments.launch import RunJob
    from vitplas.training.finetune import TrainingDivergedError

    path = write_spec(tmp_path, sleep_s=0, seeds=1, max_parallel=1)
    spec = load_spec(path)
    folder = scan(spec, expand(spec))[0].folder
    cfg = toy_config("lr=1e6", "grad_clip=1.0", "diverge_window=2", "steps=12", "warmup_steps=1")
    finetune = "vitplas.training.finetune:"
    job = (finetune + "run_finetune", finetune + "FinetuneConfig", str(folder))
    with pytest.raises(TrainingDivergedError):
        RunJob()(*job, config_to_dict(cfg), "inline", hooks={"sources": toy_sources()})
    failed = json.loads((folder / "failed.json").read_text())
    status = CliRunner().invoke(app, ["status", str(path), "-v"])
    assert "done 0, running 0, failed 1, damaged 0, missing 0, total 1" in status.output
    reason = f"diverged at step {failed['step']} (loss {failed['loss']:.4g})"
    assert f"FAILED {folder.name}: {reason}; see {folder / 'failed.json'}" in status.output
    assert "TrainingDivergedError" in status.output  # -v: the traceback follows


def test_a_run_whose_folder_another_process_owns_is_left_to_it(tmp_path):
    path = write_spec(tmp_path, sleep_s=0, seeds=2, max_parallel=2)
    spec = load_spec(path)
    runs = expand(spec)
    owned = scan(spec, runs)[0]
    code = "import sys, time; from vitplas.locks import run_lock\n"
    code += "with run_lock(sys.argv[1], command='vitplas finetune (test)'):\n"
    code += "    print('held', flush=True); time.sleep(60)\n"
    args = [sys.executable, "-c", code, str(owned.folder)]
    owner = subprocess.Popen(args, stdout=subprocess.PIPE)
    try:
        assert owner.stdout.readline() == b"held\n"
        outcome = run_sweep(spec, runs, wait=False, poll_s=0.1)
        assert outcome.launched == [runs[1].run_id]
        state = {s.run.run_id: s for s in outcome.states}[owned.run.run_id]
        assert state.state == "running"
        assert state.detail.startswith(f"owned by pid {owner.pid} on ")
        assert "(vitplas finetune (test), since " in state.detail
    finally:
        owner.kill()
        owner.wait()
    assert not (owned.folder / "executions.log").exists()  # no work done on the owned run
    assert run_sweep(spec, runs, poll_s=0.1).counts["done"] == 2
