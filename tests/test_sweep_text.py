"""A tiny text study through `vitplas reproduce`: two finetuning runs (mha, lora) of the tiny
random BERT (text_fixtures) on Rotten Tomatoes texts in the real format and a linear-probe job
of the same model (analysis.probes), aggregated into the study's tables (the gain over the
probe) and report; a second call does no work."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from text_fixtures import text_world
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.experiments.spec import expand, load_spec
from vitplas.experiments.store import counts, scan


@pytest.mark.slow  # about 30 s: each run a worker process, then the report (as test_sweep_e2e)
def test_reproduce_a_tiny_text_study(tmp_path):
    world = text_world(tmp_path / "text")
    base = {"model": str(world["bert"]), "data_root": str(world["data"]), "max_length": 12,
            "batch_size": 6, "steps": 2, "warmup_steps": 0, "eval_every": 2,
            "num_workers": 0, "device": "cpu", "tensorboard": False}  # fmt: skip
    probe = {"model": base["model"], "data_root": base["data_root"], "max_length": 12,
             "dataset": "rotten-tomatoes", "layers": [0], "components": ["mha"],
             "num_workers": 0, "device": "cpu"}  # fmt: skip
    spec = {"name": "tiny-text", "root": str(tmp_path / "study"), "base": base,
            "grid": {"dataset": ["rotten-tomatoes"], "seed": [0], "lr": [0.1],
                     "train": ["mha", "lora"]}, "analysis": {"probes": [probe]},
            "executor": {"max_parallel": 1, "threads_per_run": 1}}  # fmt: skip
    path = tmp_path / "tiny-text.yaml"
    path.write_text("# vitplas reproduce tiny-text.yaml\n" + yaml.safe_dump(spec))
    first = CliRunner().invoke(app, ["reproduce", str(path)])
    assert first.exit_code == 0, first.output
    loaded = load_spec(path)
    assert counts(scan(loaded, expand(loaded)))["done"] == 2
    runs = pd.read_csv(tmp_path / "study" / "tables" / "runs.csv").set_index("train")
    assert set(runs.index) == {"mha", "lora"}
    assert (runs["test_n"] == 6).all() and runs["test_acc"].between(0, 100).all()
    probes = pd.read_csv(tmp_path / "study" / "tables" / "probe.csv")
    assert list(zip(probes["layer"], probes["component"], strict=True)) == [
        (0, "mha"),
        (1, "block"),
    ]
    assert set(probes["n_test"]) == {6} and probes["acc"].between(0, 100).all()
    gain = pd.read_csv(tmp_path / "study" / "tables" / "gain.csv").set_index("train")
    assert (gain["probe_acc"] == probes["acc"].iloc[-1]).all()  # the baseline: the last block
    assert "| rotten-tomatoes |" in (tmp_path / "study" / "report" / "report.md").read_text()
    second = CliRunner().invoke(app, ["reproduce", str(path)])
    assert second.exit_code == 0 and "launched 0" in second.output, second.output
