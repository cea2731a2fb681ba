"""Damaged records of a finished run: each one, damaged in turn, is an error naming the file,
what is wrong and the fix, never a silently different number; --repair recomputes. And a
divergence that gradient clipping hides stops the run, marked failed with step and loss."""

from __future__ import annotations

import json
import shutil

import pytest
from test_train_support import toy_config, toy_sources
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.config import ConfigError
from vitplas.jobs.runners import run_finetune, run_probe
from vitplas.records import read_metrics
from vitplas.runs import DamagedRecordError, RunDir, read_verified
from vitplas.training.evaluate import load_best_model
from vitplas.training.finetune import TrainingDivergedError


def _truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _drop_img_size(path):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in lines if not line.startswith("img_size")))


DAMAGE = [
    ("result.json", _truncate, "truncated"),
    ("config.yaml", _drop_img_size, "truncated"),
    ("manifest.json", _flip, "changed"),
    ("metrics.jsonl", _truncate, "truncated"),
    ("checkpoints/best.safetensors", _flip, "changed"),
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    result = run_finetune(toy_config("steps=4"), root / "run", sources=toy_sources())
    return root / "run", result


@pytest.mark.parametrize("name,damage,what", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_each_damaged_record_is_an_error_naming_it(tmp_path, finished, name, damage, what):
    run_dir = tmp_path / "run"
    shutil.copytree(finished[0], run_dir)
    damage(run_dir / name)
    with pytest.raises(DamagedRecordError) as info:
        run_finetune(toy_config("steps=4"), run_dir, sources=toy_sources())
    message = str(info.value)
    assert info.value.name == name
    assert f"{run_dir / name} is damaged" in message and what in message
    assert "--repair" in message and f"delete {run_dir}" in message
    with pytest.raises(DamagedRecordError, match=name.replace(".", r"\.")):
        RunDir(run_dir).verify()
    if name not in ("result.json", "metrics.jsonl"):  # what evaluate reads: checked first
        with pytest.raises(DamagedRecordError, match=name.replace(".", r"\.")):
            load_best_model(run_dir)


def test_read_verified_parses_and_refuses_unfinished(tmp_path, finished):
    assert read_verified(finished[0]) == finished[1]
    assert read_verified(finished[0], "config.yaml")["steps"] == 4
    with pytest.raises(FileNotFoundError, match="not a finished run"):
        read_verified(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(finished[0], broken)
    (broken / "checksums.json").write_text("{not json")  # DONE records the seal's sha256
    with pytest.raises(DamagedRecordError, match=r"checksums\.json is damaged: its content was"):
        read_verified(broken)


def test_an_empty_done_is_damage_and_never_turns_the_seal_off(tmp_path, finished):
    from vitplas.experiments.store import run_state
    from vitplas.runs import file_sha256

    run_dir = tmp_path / "run"
    shutil.copytree(finished[0], run_dir)
    result = run_dir / "result.json"
    result.write_text(json.dumps({**finished[1], "test_acc": 99.9}))  # edited, and the seal
    sums = json.loads((run_dir / "checksums.json").read_text())  # rewritten to match it
    sums["result.json"] = {"sha256": file_sha256(result), "bytes": result.stat().st_size}
    (run_dir / "checksums.json").write_text(json.dumps(sums))
    (run_dir / "DONE").write_text("")  # what DONE's record of the seal would give away
    with pytest.raises(DamagedRecordError) as info:
        run_finetune(toy_config("steps=4"), run_dir, sources=toy_sources())
    assert info.value.name == "DONE"
    assert f"{run_dir / 'DONE'} is damaged: empty: it names no seal" in str(info.value)
    with pytest.raises(DamagedRecordError, match="DONE is damaged"):
        load_best_model(run_dir)
    state, detail = run_state(run_dir)
    assert state == "damaged" and "DONE is damaged: empty" in detail
    repaired = run_finetune(toy_config("steps=4"), run_dir, sources=toy_sources(), repair=True)
    assert repaired["test_acc"] == finished[1]["test_acc"] != 99.9


def test_repair_recomputes_a_damaged_run_to_the_same_result(tmp_path, finished):
    run_dir = tmp_path / "run"
    shutil.copytree(finished[0], run_dir)
    _truncate(run_dir / "result.json")
    repaired = run_finetune(toy_config("steps=4"), run_dir, sources=toy_sources(), repair=True)
    drop = {"wall_time_s", "images_per_s"}
    assert {k: v for k, v in repaired.items() if k not in drop} == {
        k: v for k, v in finished[1].items() if k not in drop
    }
    RunDir(run_dir).verify()


def test_finished_folder_with_another_config_is_refused_before_any_work(finished):
    with pytest.raises(ConfigError) as info:
        run_finetune(toy_config("steps=4", "lr=0.3"), finished[0], sources=toy_sources())
    assert "different config (lr: 0.05 -> 0.3)" in str(info.value)
    assert "use another run folder (--out)" in str(info.value)
    assert json.loads((finished[0] / "result.json").read_text()) == finished[1]


def test_cli_damaged_result_is_one_line_exit_2(tmp_path):
    run_dir = tmp_path / "run"
    args = ["finetune", "model=tiny-random", "dataset=digits", "img_size=32", "steps=2"]
    args += ["warmup_steps=1", "batch_size=8", "eval_every=2", "max_eval_samples=16"]
    args += ["num_workers=0", "device=cpu", "tensorboard=false", "--out", str(run_dir)]
    runner = CliRunner()
    assert runner.invoke(app, [*args, "--no-progress"]).exit_code == 0
    _truncate(run_dir / "result.json")
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith(f"error: {run_dir}/result.json is")
    again = runner.invoke(app, [*args, "--no-progress", "--repair"])
    assert again.exit_code == 0, again.output
    assert RunDir(run_dir).is_done()


def test_divergence_under_clipping_stops_the_run_marked_failed(tmp_path):
    cfg = toy_config("lr=1e6", "grad_clip=1.0", "diverge_window=2", "steps=12", "warmup_steps=1")
    with pytest.raises(TrainingDivergedError) as info:
        run_finetune(cfg, tmp_path, sources=toy_sources())
    failed = json.loads((tmp_path / "failed.json").read_text())
    assert failed["reason"] == "diverged" and failed["step"] >= 3
    assert failed["loss"] > 10 * read_metrics(tmp_path, unfinished=True)[0]["loss"]
    assert f"reaching {failed['loss']:.4g} at step {failed['step']}" in str(info.value)
    assert not RunDir(tmp_path).is_done()


def test_a_healthy_run_is_not_stopped(finished):
    assert not (finished[0] / "failed.json").exists()


@pytest.mark.slow
def test_probe_checks_its_folder_before_computing(tmp_path, monkeypatch):
    from vitplas.config import load_config
    from vitplas.training import probe

    args = ["model=tiny-random", "random_init=true", "dataset=digits", "img_size=32"]
    args += ["layers=[-1]", "components=[block]", "max_train=64", "max_test=32"]
    args += ["num_workers=0", "device=cpu"]
    cfg = load_config(probe.ProbeConfig, None, args)
    first = run_probe(cfg, tmp_path)

    def no_work(_cfg):
        raise AssertionError("the probe was computed again")

    monkeypatch.setattr(probe, "_probe_table", no_work)
    again = run_probe(cfg, tmp_path)  # read back, verified
    assert again["acc"].tolist() == first["acc"].tolist()
    with pytest.raises(ConfigError, match=r"different config \(C: 1.0 -> 2.0\)"):
        run_probe(load_config(probe.ProbeConfig, None, [*args, "C=2.0"]), tmp_path)
