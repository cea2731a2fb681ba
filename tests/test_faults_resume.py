"""A resume checks what it resumes from: every state file records the settings it was computed
under (vitplas.records.stamp), and the pair parts are those the saved statistics count.

Tried: a plasticity state of another seed copied into a run folder, a --save-pairs run whose
first part was deleted, a finetuning checkpoint of another run (another lr, the same seed), a
resume with another log_every. Each is refused (exit 2; vitplas.records.StateMismatchError, a
ConfigError) naming the file and what differs,
never continued into a silently different result; the fix it names gives the unbroken
run's numbers.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from test_checkpoint import Interrupted, _interrupt_at
from test_save_pairs import ARGS as PAIR_ARGS
from test_save_pairs import CLI
from test_train_support import toy_config, toy_sources, without_timing
from typer.testing import CliRunner

from vitplas.analysis.job import SAVE_EVERY, STATE_FILE
from vitplas.analysis.pair_file import PAIRS_FILE, PARTS_DIR
from vitplas.cli import app
from vitplas.config import ConfigError
from vitplas.jobs.runners import run_finetune

PLAIN = [a for a in PAIR_ARGS if a != "--save-pairs"]  # 64 pairs, 16 batches, no bounds


def read_metrics(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _killed(out, args, batch: int = SAVE_EVERY + 3) -> None:
    """A plasticity run killed (SIGKILL) at `batch`, after its save at batch SAVE_EVERY."""
    import os
    import subprocess

    env = {**os.environ, "VITPLAS_FAULT": f"plasticity_batch:{batch}"}
    command = [*CLI, "plasticity", *args, "--out", str(out)]
    assert subprocess.run(command, env=env, capture_output=True, timeout=300).returncode == -9
    assert (out / STATE_FILE).is_file() and not (out / "DONE").exists()


def _plasticity(out, args):
    return CliRunner().invoke(app, ["plasticity", *args, "--out", str(out)])


@pytest.fixture(scope="module")
def plain_pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs") / "run"
    assert _plasticity(out, PAIR_ARGS).exit_code == 0
    return out


def test_a_state_of_another_seed_is_refused_naming_it(tmp_path):
    other = tmp_path / "seed1"
    _killed(other, [*PLAIN, "--seed", "1"])
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(other / STATE_FILE, run / STATE_FILE)  # the state of another run
    result = _plasticity(run, PLAIN)
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert f"error: {run / STATE_FILE} cannot be resumed from: it was saved under other " in line
    assert "(seed: 1 there, 0 here)" in line and f"delete {run / STATE_FILE}" in line
    assert not (run / "DONE").exists()
    (run / STATE_FILE).unlink()  # the fix it names: statistics from the first pair
    assert _plasticity(run, PLAIN).exit_code == 0


def test_a_lost_first_part_is_refused_never_half_the_pairs(tmp_path, plain_pairs):
    run = tmp_path / "run"
    _killed(run, PAIR_ARGS)
    first = run / PARTS_DIR / "part-00000.parquet"
    assert first.is_file()
    first.unlink()
    result = _plasticity(run, PAIR_ARGS)
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert f"error: {first} is damaged: the file is missing (it held the ratios of batches " \
        f"0-{SAVE_EVERY - 1}, which the saved statistics count)" in line  # fmt: skip
    assert f"delete {run / STATE_FILE}" in line
    assert not (run / PAIRS_FILE).exists() and not (run / "DONE").exists()
    (run / STATE_FILE).unlink()
    assert _plasticity(run, PAIR_ARGS).exit_code == 0
    pairs, plain = pd.read_parquet(run / PAIRS_FILE), pd.read_parquet(plain_pairs / PAIRS_FILE)
    assert len(pairs) == len(plain) and pairs.equals(plain)


def test_a_changed_part_is_refused_naming_it(tmp_path):
    run = tmp_path / "run"
    _killed(run, PAIR_ARGS)
    first = run / PARTS_DIR / "part-00000.parquet"
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(data))
    result = _plasticity(run, PAIR_ARGS)
    assert result.exit_code == 2
    assert f"{first} is damaged: its content changed since it was written" in result.output


def test_a_checkpoint_of_another_run_is_refused_naming_the_difference(tmp_path):
    other = tmp_path / "lr0.05"
    with pytest.raises(Interrupted):  # checkpoints at steps 4 and 8 (eval_every=4)
        run_finetune(toy_config(), other, sources=toy_sources(), callbacks=[_interrupt_at(9)])
    run = tmp_path / "lr0.1"
    shutil.copytree(other / "checkpoints", run / "checkpoints")  # same seed, other lr
    with pytest.raises(ConfigError) as info:
        run_finetune(toy_config("lr=0.1"), run, sources=toy_sources())
    message = str(info.value)
    assert f"{run / 'checkpoints' / 'step_00000008' / 'state.pt'} cannot be resumed from" in message
    assert "(lr: 0.05 there, 0.1 here)" in message and "--out" in message
    assert not (run / "DONE").exists()


def test_another_log_every_on_resume_is_refused_and_the_curve_keeps_one_rhythm(tmp_path):
    plain = run_finetune(toy_config("log_every=2"), tmp_path / "plain", sources=toy_sources())
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        run_finetune(toy_config("log_every=2"), run, sources=toy_sources(),
                     callbacks=[_interrupt_at(9)])  # fmt: skip
    with pytest.raises(ConfigError, match=r"\(log_every: 2 there, 3 here\)"):
        run_finetune(toy_config("log_every=3"), run, sources=toy_sources())
    resumed = run_finetune(toy_config("log_every=2"), run, sources=toy_sources())
    drop = {"wall_time_s", "images_per_s"}
    assert {k: v for k, v in resumed.items() if k not in drop} == {
        k: v for k, v in plain.items() if k not in drop
    }
    steps = [r["step"] for r in read_metrics(run) if r["kind"] == "train"]
    assert steps == [2, 4, 6, 8, 10, 12]
    assert without_timing(read_metrics(run)) == without_timing(read_metrics(tmp_path / "plain"))
