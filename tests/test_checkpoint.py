"""Checkpoints and resume: killed + rerun == uninterrupted (bit for bit on CPU); a corrupt
newest checkpoint falls back to the previous one; RNG states round-trip."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train_support import params, toy_config, toy_sources, without_timing

from vitplas.jobs.runners import run_finetune
from vitplas.records import read_metrics
from vitplas.training import checkpoint as ckpt

CFG = ("steps=10", "ckpt_every=3", "eval_every=2", "keep_checkpoints=2", "train=[mha,fc1]")


class Interrupted(Exception):
    pass


def _interrupt_at(at: int):
    def hook(trainer, step):
        if step == at:
            raise Interrupted(f"killed after step {step}")

    return hook


def _finished(tmp_path, name, *callbacks):
    sources = toy_sources()
    result = run_finetune(toy_config(*CFG), tmp_path / name, sources=sources, callbacks=callbacks)
    return sources, result


def _assert_same_run(a_dir, a_sources, a_result, b_dir, b_sources, b_result):
    pa, pb = params(a_sources.model), params(b_sources.model)
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    drop = {"wall_time_s", "images_per_s"}
    assert {k: v for k, v in a_result.items() if k not in drop} == {
        k: v for k, v in b_result.items() if k not in drop
    }
    assert without_timing(read_metrics(a_dir, unfinished=True)) == without_timing(
        read_metrics(b_dir, unfinished=True)
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain")
    sources, result = _finished(root, "run")
    return root / "run", sources, result


@pytest.mark.parametrize("kill_at", [5, 7])
def test_interrupted_then_rerun_equals_uninterrupted(tmp_path, uninterrupted, kill_at):
    with pytest.raises(Interrupted):
        _finished(tmp_path, "run", _interrupt_at(kill_at))
    # the killed run left metrics past its last checkpoint (step 3 or 6): they must go
    assert max(r["step"] for r in read_metrics(tmp_path / "run", unfinished=True)) == kill_at
    sources, result = _finished(tmp_path, "run")
    _assert_same_run(*uninterrupted, tmp_path / "run", sources, result)


def test_corrupt_newest_checkpoint_falls_back_with_warning(tmp_path, uninterrupted):
    with pytest.raises(Interrupted):
        _finished(tmp_path, "run", _interrupt_at(8))
    found = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in found] == ["step_00000003", "step_00000006"]
    state = found[-1] / ckpt.STATE_FILE
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"step_00000006 is corrupt.*falling back"):
        sources, result = _finished(tmp_path, "run")
    _assert_same_run(*uninterrupted, tmp_path / "run", sources, result)


def test_every_checkpoint_corrupt_is_an_error(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, {"x": torch.ones(2)})
    (tmp_path / "step_00000001" / ckpt.STATE_FILE).write_bytes(b"garbage")
    with (
        pytest.warns(UserWarning, match="is corrupt"),
        pytest.raises(ckpt.CheckpointError, match=r"step_00000001.*delete their step folders"),
    ):
        ckpt.load_latest(tmp_path)


def test_checkpoints_sort_prune_and_ignore_partial_folders(tmp_path):
    for step in (5, 10, 100, 1000):
        ckpt.save_checkpoint(tmp_path, step, {"step": step}, keep=3)
    (tmp_path / ".tmp-step_00002000").mkdir()  # a save killed half way
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step_00000010", "step_00000100", "step_00001000"]
    state, path = ckpt.load_latest(tmp_path)
    assert state["step"] == 1000 and path.name == "step_00001000"
    meta = json.loads((path / ckpt.META_FILE).read_text())
    assert meta["step"] == 1000 and len(meta["sha256"]) == 64


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    ckpt.save_checkpoint(tmp_path, 1, {"rng": ckpt.rng_state()})
    first = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(ckpt.load_latest(tmp_path)[0]["rng"])
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1]) and first[2] == second[2]


KILL_ARGS = [
    "model=tiny-random",
    "dataset=digits",
    "img_size=32",
    "steps=30",
    "warmup_steps=5",
    "batch_size=16",
    "eval_every=5",
    "max_eval_samples=64",
    "num_workers=0",
    "device=cpu",
    "tensorboard=false",
]


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_equals_uninterrupted(tmp_path):
    """A real kill: the CLI in a subprocess, SIGKILLed after its second checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from vitplas.training.config import load_finetune_config

    killed = tmp_path / "killed"
    cli = [sys.executable, "-c", "from vitplas.cli import main; main()"]
    proc = subprocess.Popen([*cli, "finetune", *KILL_ARGS, "--out", str(killed), "--no-progress"])
    deadline = time.monotonic() + 240
    while not (killed / "checkpoints" / "step_00000010").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint within 4 minutes"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "DONE").exists()
    cfg = load_finetune_config(None, KILL_ARGS)
    resumed = run_finetune(cfg, killed)
    plain = run_finetune(cfg, tmp_path / "plain")
    drop = {"wall_time_s", "images_per_s"}
    assert {k: v for k, v in resumed.items() if k not in drop} == {
        k: v for k, v in plain.items() if k not in drop
    }
    assert without_timing(read_metrics(killed, unfinished=True)) == without_timing(
        read_metrics(tmp_path / "plain", unfinished=True)
    )
    best = [load_file(d / "checkpoints" / ckpt.BEST_FILE) for d in (killed, tmp_path / "plain")]
    assert all(torch.equal(best[0][k], best[1][k]) for k in best[0])
