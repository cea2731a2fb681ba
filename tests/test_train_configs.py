"""Every finetuning preset YAML in the repo loads strictly; the paper presets hold the paper's
protocol; `base:` chains merge; the CLI runs, resumes and evaluates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.config import ConfigError
from vitplas.training.config import is_finetune_preset, load_finetune_config

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p for p in ROOT.glob("configs/**/*.yaml") if is_finetune_preset(p))
PAPER = {  # dataset -> (steps, eval_every), PAPER.md section 3
    "cifar10": (10_000, 500),
    "cifar100": (10_000, 500),
    **{f"cifar10-c/{c}/5": (10_000, 350) for c in ("contrast", "gaussian_noise")},
    **{f"cifar10-c/{c}/5": (10_000, 350) for c in ("motion_blur", "snow", "speckle_noise")},
    "domainnet/clipart": (20_000, 500),
    "domainnet/sketch": (20_000, 500),
    "flowers102": (5_000, 250),
    "pet": (4_000, 200),
}


def test_presets_are_found():
    assert len(PRESETS) >= 13  # 11 paper datasets + the offline ones


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_preset_loads_and_names_a_known_dataset(path):
    from vitplas.data import dataset_info

    cfg = load_finetune_config(path)
    assert dataset_info(cfg.dataset).num_classes > 0
    assert path.read_text().splitlines()[0].startswith("# vitplas finetune")


def test_paper_presets_hold_the_paper_protocol():
    found = {}
    for path in ROOT.glob("configs/paper/*.yaml"):
        if is_finetune_preset(path):
            cfg = load_finetune_config(path)
            found[cfg.dataset] = cfg
    assert set(found) == set(PAPER)
    for name, cfg in found.items():
        assert (cfg.steps, cfg.eval_every) == PAPER[name], name
        assert (cfg.model, cfg.img_size, cfg.batch_size) == ("vit-b16-in21k", 224, 512)
        assert (cfg.optimizer, cfg.momentum, cfg.weight_decay) == ("sgd", 0.9, 0.0)
        assert (cfg.warmup_steps, cfg.grad_clip) == (2000, 1.0)
        assert cfg.train_head and cfg.train_norm and cfg.protocol == "paper"


def test_base_chain_and_overrides(tmp_path):
    (tmp_path / "parent.yaml").write_text("steps: 50\nwarmup_steps: 5\nlr: 3e-2\ndataset: digits\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nsteps: 40\n")
    cfg = load_finetune_config(tmp_path / "child.yaml", ["seed=7", "train=mha,fc1"])
    assert (cfg.steps, cfg.lr, cfg.dataset, cfg.seed) == (40, 0.03, "digits", 7)
    assert cfg.train == ["mha", "fc1"]
    (tmp_path / "bad.yaml").write_text("base: parent.yaml\nstepz: 40\n")
    with pytest.raises(ConfigError, match=r"unknown config key.*stepz"):
        load_finetune_config(tmp_path / "bad.yaml")


SMOKE = [
    "model=tiny-random",
    "dataset=digits",
    "img_size=32",
    "steps=6",
    "warmup_steps=2",
    "batch_size=16",
    "eval_every=3",
    "num_workers=0",
    "device=cpu",
    "tensorboard=false",
]


def test_cli_finetune_then_skip_then_evaluate(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    first = runner.invoke(app, ["finetune", *SMOKE, "--out", str(out), "--no-progress"])
    assert first.exit_code == 0, first.output
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 6 and result["dataset"] == "digits"
    assert (out / "DONE").exists()
    again = runner.invoke(app, ["finetune", *SMOKE, "--out", str(out), "--no-progress"])
    assert again.exit_code == 0
    assert json.loads(again.stdout.strip().splitlines()[-1])["test_acc"] == result["test_acc"]
    evaluated = runner.invoke(
        app, ["evaluate", str(out), "-d", "mnist-5k", "--device", "cpu", "--num-workers", "0"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    import pandas as pd

    table = pd.read_csv(out / "evaluation.csv")
    assert list(table["dataset"]) == ["digits", "mnist-5k"]
    assert table.loc[0, "acc"] == pytest.approx(result["test_acc"], abs=1e-9)
    before = (out / "evaluation.csv").read_bytes()
    other = runner.invoke(app, ["evaluate", str(out), "-d", "mnist-5k", "-d", "cifar100"])
    assert other.exit_code != 0 and "'cifar100' has 100 classes" in other.output
    assert (out / "evaluation.csv").read_bytes() == before  # checked before any work


def test_cli_errors_are_clear(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["finetune", "train=[attn]", "--out", str(tmp_path)])
    assert bad.exit_code == 2
    assert "component 'attn' is unknown" in bad.output


def test_dataset_wildcards_expand_over_the_registry():
    from vitplas.training.evaluate import expand_datasets

    names = expand_datasets(["cifar10-c/*/5", "digits"])
    assert "cifar10-c/snow/5" in names and "cifar10-c/contrast/5" in names
    assert all(n.endswith("/5") for n in names[:-1]) and names[-1] == "digits"
    assert len(names) == 1 + len({n.split("/")[1] for n in names[:-1]})
