"""Fault injection on `vitplas finetune`: a real SIGKILL (VITPLAS_FAULT=point:count) at every
stage of a run, then a rerun: the result, the curves and the best weights equal an unbroken
run's. Two processes on one folder: the work is done once. A full disk: one clear line, and
a rerun after freeing space finishes identical."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_support import without_timing

from vitplas.jobs.runners import run_finetune
from vitplas.locks import holder, run_lock
from vitplas.records import read_metrics
from vitplas.runs import RunDir
from vitplas.training import checkpoint as ckpt
from vitplas.training.config import load_finetune_config

ARGS = [
    "model=tiny-random",
    "dataset=digits",
    "img_size=32",
    "steps=12",
    "warmup_steps=2",
    "batch_size=16",
    "eval_every=4",
    "max_eval_samples=64",
    "num_workers=0",
    "device=cpu",
    "log_every=1",
    "tensorboard=false",
]
CLI = [sys.executable, "-c", "from vitplas.cli import main; main()"]
TIMING = {"wall_time_s", "images_per_s"}

# (point, count): startup, mid-step, inside a checkpoint write, validation, test evaluation,
# best weights written, result written, before the seal, between the seal and DONE
FAULTS = [
    ("startup", 1),
    ("step", 6),
    ("checkpoint_write", 2),
    ("validation", 2),
    ("test", 1),
    ("best_weights", 1),
    ("after_result", 1),
    ("before_seal", 1),
    ("before_done", 1),
]


def cli(out: Path, *extra: str, fault: str | None = None, **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "VITPLAS_FAULT"}
    if fault:
        env["VITPLAS_FAULT"] = fault
    command = [*CLI, "finetune", *ARGS, *extra, "--out", str(out), "--no-progress"]
    return subprocess.Popen(command, env=env, text=True, **popen)


def run_cli(out: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    proc = cli(out, *extra, fault=fault, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def same_run(a: Path, b: Path) -> None:
    """Result (timings aside), metrics (timings aside) and best weights are identical."""
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    assert {k: v for k, v in ra.items() if k not in TIMING} == {
        k: v for k, v in rb.items() if k not in TIMING
    }
    assert without_timing(read_metrics(a, unfinished=True)) == without_timing(
        read_metrics(b, unfinished=True)
    )
    best = [(d / "checkpoints" / ckpt.BEST_FILE).read_bytes() for d in (a, b)]
    assert best[0] == best[1]


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """An unbroken run (in this process), the reference of every faulty one."""
    out = tmp_path_factory.mktemp("plain") / "run"
    run_finetune(load_finetune_config(None, ARGS), out)
    return out


def test_finished_run_keeps_records_and_best_weights_not_the_train_state(plain):
    assert sorted(p.name for p in (plain / "checkpoints").iterdir()) == [ckpt.BEST_FILE]
    sums = RunDir(plain).checksums()
    for name in ("config.yaml", "manifest.json", "metrics.jsonl", "result.json"):
        assert name in sums
    assert f"checkpoints/{ckpt.BEST_FILE}" in sums


# the first three run in the quick suite; every point runs in CI (scripts/test)
KILLS = [
    pytest.param(p, c, id=p, marks=[pytest.mark.slow] if i >= 3 else [])
    for i, (p, c) in enumerate(FAULTS)
]


@pytest.mark.parametrize("point,count", KILLS)
def test_kill_at_each_point_then_rerun_equals_unbroken(tmp_path, plain, point, count):
    out = tmp_path / "run"
    killed = run_cli(out, fault=f"{point}:{count}")
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL, as `kill -9` would
    assert not (out / "DONE").exists()
    run_finetune(load_finetune_config(None, ARGS), out)
    same_run(out, plain)


def test_a_second_process_stops_at_once_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    with run_lock(out, command="finetune (test holder)"):
        assert holder(out)["pid"] == os.getpid()
        second = run_cli(out)
    assert second.returncode == 3
    assert f"is in use by pid {os.getpid()}" in second.stderr
    assert "--wait" in second.stderr
    assert not (out / "metrics.jsonl").exists()
    assert holder(out) is None  # released with its owner


@pytest.mark.slow
def test_two_concurrent_finetunes_do_the_work_once(tmp_path, plain):
    out = tmp_path / "run"
    procs = [cli(out, "--wait", stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in "ab"]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    printed = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    assert printed[0]["test_acc"] == printed[1]["test_acc"]
    keys = [(r["kind"], r["step"]) for r in read_metrics(out, unfinished=True)]
    assert len(keys) == len(set(keys)), "a metrics record was written twice"
    same_run(out, plain)


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    return done.returncode == 0


@pytest.mark.slow
def test_full_disk_is_one_clear_line_and_a_rerun_after_freeing_finishes_identical(tmp_path, plain):
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a small tmpfs, which only root can mount here")
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "4m"):
        pytest.skip("mount -t tmpfs failed (no privilege in this container)")
    try:
        ballast = disk / "ballast"
        ballast.write_bytes(b"\0" * (4 * 2**20 - 96 * 2**10))  # leaves ~96 KiB
        out = disk / "run"
        full = run_cli(out)
        assert full.returncode == 2, full.stderr[-2000:]
        lines = full.stderr.strip().splitlines()
        assert "Traceback" not in full.stderr
        assert lines[-1].startswith("error: no space left on device"), lines[-1]
        ballast.unlink()
        again = run_cli(out)
        assert again.returncode == 0, again.stderr[-2000:]
        same_run(out, plain)
    finally:
        shutil.rmtree(disk / "run", ignore_errors=True)
        subprocess.run(["umount", str(disk)])
