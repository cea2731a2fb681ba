"""Sweep specs, run ids, dry runs and idempotent launching (with the cheap fake runner)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.config import ConfigError
from vitplas.experiments.launch import run_sweep
from vitplas.experiments.spec import check_runs, expand, load_spec
from vitplas.experiments.store import counts, scan

REPO = Path(__file__).resolve().parents[1]
FAKE = {"function": "vitplas_testjobs.fake:fake_finetune", "config": None}


def sweep_specs() -> list[Path]:
    """Every sweep spec in configs/ (finetune presets start with '# vitplas finetune')."""
    out = []
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        first = path.read_text().lstrip().splitlines()[0]
        if "vitplas sweep" in first or "vitplas reproduce" in first:
            out.append(path)
    return out


def write_spec(tmp_path: Path, **changes) -> Path:
    data = {
        "name": "t",
        "root": str(tmp_path / "study"),
        "base": {"model": "tiny-random", "steps": 10},
        "grid": {"dataset": ["a", "b"], "seed": [0, 1], "lr": [0.01, 0.03], "train": ["mha"]},
        "runner": FAKE,
        "executor": {"max_parallel": 2},
    }
    data.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_sweep_specs_in_configs_load_strictly():
    specs = sweep_specs()
    assert {p.name for p in specs} >= {"main.yaml", "adam.yaml", "model_size.yaml", "mini.yaml"}
    for path in specs:
        spec = load_spec(path)
        runs = expand(spec, with_presets=False)
        assert runs, path
        assert check_runs(spec, runs) == {}, path  # every run's config builds strictly


def test_paper_spec_run_counts():
    n = {p: len(expand(load_spec(REPO / "configs/paper" / p), with_presets=False))
         for p in ("main.yaml", "adam.yaml", "model_size.yaml")}  # fmt: skip
    assert n == {"main.yaml": 11 * 3 * 4 * 7, "adam.yaml": 4 * 3 * 4 * 6, "model_size.yaml": 144}
    main = expand(load_spec(REPO / "configs/paper/main.yaml"), with_presets=False)
    clipart = {r.config["lr"] for r in main if r.config["dataset"] == "domainnet/clipart"}
    assert clipart == {0.003, 0.01, 0.03, 0.06}
    size = expand(load_spec(REPO / "configs/paper/model_size.yaml"), with_presets=False)
    micro = {r.config["model"]: r.config["micro_batch_size"] for r in size}
    assert micro == {"vit-l16-in21k": 128, "vit-h14-in21k": 64}


def test_unknown_key_and_text_lr_are_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"known keys.*grid"):
        load_spec(write_spec(tmp_path, gird={"lr": [0.1]}))
    bad = {"dataset": ["a"], "lr": ["1e-3"]}
    with pytest.raises(ConfigError, match="lr '1e-3' is text"):
        load_spec(write_spec(tmp_path, grid=bad))


def test_run_ids_come_from_values_not_positions(tmp_path):
    runs = expand(load_spec(write_spec(tmp_path)))
    assert len(runs) == 8 and len({r.run_id for r in runs}) == 8
    assert all(re.fullmatch(r"[a-z]_0\.0[13]_[01]_mha_[0-9a-f]{8}", r.run_id) for r in runs)
    grid = {"train": ["mha"], "lr": [0.03, 0.01], "seed": [1, 0], "dataset": ["b", "a"]}
    shuffled = expand(load_spec(write_spec(tmp_path, grid=grid)))
    assert {r.run_id: r.config for r in shuffled} == {r.run_id: r.config for r in runs}
    changed = expand(load_spec(write_spec(tmp_path, base={"model": "tiny-random", "steps": 11})))
    assert not {r.run_id for r in changed} & {r.run_id for r in runs}


def test_dry_run_lists_runs_and_ends_with_count(tmp_path):
    spec = str(write_spec(tmp_path))
    result = CliRunner().invoke(app, ["sweep", spec, "--dry-run", "--runs"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == "8 runs"
    assert len(lines) == 9 and all("[missing]" in line for line in lines[:-1])
    summary = CliRunner().invoke(app, ["sweep", spec, "--dry-run"])  # as reproduce: the summary
    assert summary.output.strip().splitlines() == ["8 runs (--runs lists each)"]
    assert not (tmp_path / "study").exists()  # a dry run writes nothing


def test_finished_skipped_failed_listed_with_traceback(tmp_path):
    path = write_spec(tmp_path, base_by={"dataset": {"b": {"fail": True}}})
    spec = load_spec(path)
    runs = expand(spec)
    first = run_sweep(spec, runs, poll_s=0.1)
    expected = {"done": 4, "running": 0, "failed": 4, "damaged": 0, "missing": 0, "total": 8}
    assert first.counts == expected
    for item in first.failed:
        assert item.run.config["dataset"] == "b"
        error = (item.folder / "error.txt").read_text()
        assert "Traceback" in error and "RuntimeError: fake run asked to fail" in error
    again = run_sweep(spec, runs, poll_s=0.1)
    assert again.launched == [] and again.counts == first.counts
    retry = run_sweep(spec, runs, retry_failed=True, poll_s=0.1)
    assert sorted(retry.launched) == sorted(s.run.run_id for s in first.failed)
    for item in retry.states:  # the finished runs ran once, the failed ones twice
        lines = (item.folder / "executions.log").read_text().splitlines()
        assert len(lines) == (1 if item.state == "done" else 2)
    result = CliRunner().invoke(app, ["status", str(path)])
    assert "done 4, running 0, failed 4, damaged 0, missing 0, total 8" in result.output
    assert result.output.count("FAILED") == 4


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from vitplas.cli import main; main()", *args]


def test_killed_sweep_resumes_only_missing_runs(tmp_path):
    base = {"model": "tiny-random", "steps": 10, "sleep_s": 1.5}
    grid = {"dataset": ["a"], "seed": [0, 1, 2], "lr": [0.01, 0.03], "train": ["mha"]}
    path = write_spec(tmp_path, base=base, grid=grid, executor={"max_parallel": 1})
    spec = load_spec(path)
    runs = expand(spec)
    proc = subprocess.Popen(_cli("sweep", str(path)), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while counts(scan(spec, runs))["done"] < 2 and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its runs, as a crash would
    proc.wait()
    time.sleep(0.5)
    killed = counts(scan(spec, runs))
    assert 2 <= killed["done"] < 6 and killed["running"] == 0
    assert killed["missing"] == 6 - killed["done"]
    done_before = {s.run.run_id for s in scan(spec, runs) if s.state == "done"}
    outcome = run_sweep(spec, runs, poll_s=0.1)
    assert outcome.counts["done"] == 6
    assert set(outcome.launched) == {r.run_id for r in runs} - done_before
    for item in outcome.states:
        if item.run.run_id in done_before:
            assert len((item.folder / "executions.log").read_text().splitlines()) == 1


def test_paper_specs_read_their_finetune_presets_and_name_known_datasets():
    from vitplas.data import dataset_info

    for name in ("main.yaml", "adam.yaml", "model_size.yaml"):
        spec = load_spec(REPO / "configs/paper" / name)
        runs = expand(spec)
        for run in runs:
            assert dataset_info(run.config["dataset"]).num_classes  # a registered dataset
            assert run.config["batch_size"] == 512  # from the preset (PAPER.md section 3)
        steps = {r.config["dataset"]: r.config["steps"] for r in runs}
        assert all(v == 20_000 for k, v in steps.items() if k.startswith("domainnet"))
    for path in sweep_specs():
        for run in expand(load_spec(path)):
            assert dataset_info(run.config["dataset"]).num_classes


def test_analysis_entries_of_every_spec_build_strictly_before_anything_runs():
    from vitplas.experiments.spec import check_analysis

    kinds = {}
    for path in sweep_specs():
        kinds[path.name] = [job.kind for job in check_analysis(load_spec(path))]
    # the paper's study: plasticity (with bounds) and the probe baseline for each of 11 datasets
    assert kinds["main.yaml"].count("plasticity") == kinds["main.yaml"].count("probes") == 11
    assert kinds["mini.yaml"] == ["plasticity", "plasticity", "probes", "probes"]


def test_for_each_dataset_expands_over_the_grid_and_bad_keys_name_the_entry(tmp_path):
    from vitplas.experiments.spec import analysis_jobs, check_analysis

    entry = {"for_each_dataset": True, "model": "tiny-random", "reference": "photos"}
    spec = load_spec(write_spec(tmp_path, analysis={"plasticity": [entry]}))
    jobs = analysis_jobs(spec)
    assert [job.config["target"] for job in jobs] == ["a", "b"]
    assert all("for_each_dataset" not in job.config for job in jobs)
    bad = {"plasticity": [{"model": "tiny-random", "target": "digits", "pairs_": 3}]}
    with pytest.raises(ConfigError, match=r"analysis\.plasticity entry .*pairs_"):
        check_analysis(load_spec(write_spec(tmp_path, analysis=bad)))


def test_a_killed_unreaped_run_process_is_not_running():
    from vitplas.experiments.store import _pid_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while _pid_alive(child.pid) and time.time() < deadline:
        time.sleep(0.05)  # it exits at once and stays a zombie: this test does not reap it
    assert not _pid_alive(child.pid)
    assert _pid_alive(os.getpid())
    child.wait()


def test_base_by_and_grid_by_read_a_joint_train_set_by_its_label(tmp_path):
    """A train value that is a list ([mha, ls1]) is named 'mha+ls1' in base_by and grid_by."""
    from vitplas.experiments.spec import expand, load_spec

    path = write_spec(
        tmp_path,
        grid={"dataset": ["a"], "train": [["mha", "ls1"], "fc1"], "lr": [0.1]},
        base_by={"train": {"mha+ls1": {"steps": 3}}},
        grid_by={"train": {"mha+ls1": {"lr": [0.5, 0.7]}}},
    )
    runs = expand(load_spec(path), with_presets=False)
    joint = [r for r in runs if r.params["train"] == ["mha", "ls1"]]
    assert sorted(r.params["lr"] for r in joint) == [0.5, 0.7]
    assert all(r.config["steps"] == 3 for r in joint)
    assert [r.config.get("steps") != 3 for r in runs if r.params["train"] == "fc1"] == [True]
