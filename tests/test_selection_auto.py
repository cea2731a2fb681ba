"""train=[auto] end to end on the tiny random ViT and scikit-learn's digits (offline), and
`vitplas select` on the same."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.config import ConfigError
from vitplas.jobs.runners import run_finetune as finetune
from vitplas.runs import DamagedRecordError, RunDir
from vitplas.selection.auto import resolve_auto, select_config
from vitplas.training.config import load_finetune_config

BASE = [
    "model=tiny-random",
    "random_init=true",
    "dataset=digits",
    "img_size=32",
    "steps=2",
    "warmup_steps=1",
    "batch_size=16",
    "eval_every=2",
    "max_eval_samples=32",
    "num_workers=0",
    "device=cpu",
    "tensorboard=false",
    "select.extra={grad_batches: 1, batch_size: 8, pairs: 8}",
]
SELECT_EXTRA = {"pairs": 8, "grad_batches": 1, "batch_size": 8}


def test_auto_resolves_records_and_trains(tmp_path):
    # params: mha (2 x 9,408) > fc1 (2 x 7,056) = fc2 > ln1 = ln2 (2 x 96); total 47,424.
    # budget 0.45 (21,340): mha (18,816) fits, fc1 does not: the prefix stops there, so ln1
    # and ln2, ranked below fc1, stay out
    cfg = load_finetune_config(None, [*BASE, "train=[auto:params]", "select.budget=0.45"])
    result = finetune(cfg, tmp_path)
    assert result["train"] == ["mha"]
    stored = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert stored["train"] == ["mha"]
    assert stored["select"]["criterion"] == "params" and stored["select"]["resolved"] is True
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["selected_by"]["budget"] == 0.45
    frame = pd.read_csv(tmp_path / "selection.csv")
    assert set(frame["criterion"]) == {"params"}
    # a rerun reuses the stored pick (the finished run is skipped)
    again = resolve_auto(cfg, tmp_path)
    assert again.train == ["mha"]
    # a pick scored by an earlier version of the criteria is not reused
    record = json.loads((tmp_path / "picks.json").read_text())
    (tmp_path / "picks.json").write_text(json.dumps({**record, "criteria_version": 1}))
    with pytest.raises(DamagedRecordError, match=r"picks\.json is damaged"):  # edited: unsealed
        resolve_auto(cfg, tmp_path)
    RunDir(tmp_path, create=False).seal(["picks.json"])  # as a finished run of version 1 has it
    with pytest.raises(ConfigError, match="criteria scored before version 2"):
        resolve_auto(cfg, tmp_path)


def test_auto_scores_the_extra_criteria_and_trains_its_own_pick(tmp_path):
    """select.extra's criteria are scored into selection.csv beside the run's criterion (a
    study's evidence reads every ranking from one scoring); the run trains its own pick."""
    extra = "select.extra={grad_batches: 1, batch_size: 8, pairs: 8, criteria: [random, params]}"
    cfg = load_finetune_config(None, [*BASE, "train=[auto:params]", "select.budget=0.45", extra])
    assert finetune(cfg, tmp_path)["train"] == ["mha"]
    frame = pd.read_csv(tmp_path / "selection.csv")
    assert set(frame["criterion"]) == {"params", "random"}
    picked = json.loads((tmp_path / "picks.json").read_text())
    assert set(picked["picks"]) == {"params", "random"}
    comma = "select.extra={grad_batches: 1, batch_size: 8, pairs: 8, criteria: 'random,params'}"
    cfg = load_finetune_config(None, [*BASE, "train=[auto:params]", "select.budget=0.45", comma])
    assert select_config(cfg, "params").criteria == ["params", "random"]  # a comma list too


def test_auto_fill_rule_and_a_pick_of_nothing(tmp_path):
    extra = "select.extra={grad_batches: 1, batch_size: 8, pairs: 8, rule: fill}"
    cfg = load_finetune_config(None, [*BASE, "train=[auto:params]", "select.budget=0.45", extra])
    assert resolve_auto(cfg, tmp_path / "fill").train == ["ln1", "mha", "ln2"]
    cfg = load_finetune_config(None, [*BASE, "train=[auto:params]", "select.budget=0.2"])
    with pytest.raises(ConfigError, match=r"picks nothing at budget 0.2: its first-ranked unit, "
                       r"mha, needs 0\.3984"):  # fmt: skip
        resolve_auto(cfg, tmp_path / "none")


def test_auto_with_an_unknown_criterion_says_so(tmp_path):
    cfg = load_finetune_config(None, [*BASE, "train=[auto:kappa]"])
    with pytest.raises(ConfigError, match="criterion 'kappa' is unknown; known: plasticity"):
        resolve_auto(cfg, tmp_path)


def test_select_command_writes_ranking_and_picks(tmp_path):
    args = ["select", "--model", "tiny-random", "--random-init", "--target", "digits"]
    args += ["--pairs", "8", "--grad-batches", "1", "--batch-size", "8", "--budget", "0.4"]
    args += ["--export", "names"]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "selection.csv")
    assert list(frame.columns) == ["criterion", "layer", "component", "score", "rank", "params",
                                   "matrix", "note"]  # fmt: skip
    assert len(frame) == 9 * (2 * 5 + 5)  # the 9 default criteria
    assert "rule: prefix (the longest prefix of the ranking that fits)" in result.output
    assert "    out fc1        rank 2   share 0.2988  does not fit: 0.3984 + 0.2988 > 0.4" in (
        result.output
    )
    picks = json.loads((tmp_path / "picks.json").read_text())["picks"]
    assert picks["params"] == ["mha"]  # 0.4 x 47,424 = 18,970: mha (18,816) + ln1 (192) is over
    names = json.loads((tmp_path / "export" / "params" / "names.json").read_text())
    assert names["train"] == ["mha"] and set(names["groups"]) == {"mha", "head", "norm"}
    assert "blocks.1.attn.qkv.weight" in names["parameters"]
    assert f"exported params: {tmp_path / 'export' / 'params' / 'names.json'}" in result.output
    assert "params       mha > fc1 > fc2 > ln1 > ln2" in result.output
    assert "    out fc2, ln1, ln2 (ranks 3-5, share 0.3028): ranked below fc1 (rank 2)" in (
        result.output
    )


@pytest.mark.slow
def test_selection_study_end_to_end(tmp_path):
    """A tiny selection study: components, auto picks and a rival; the report holds the
    evidence tables and the criterion x dataset figures."""
    base = {"model": "tiny-random", "random_init": True, "img_size": 32, "batch_size": 8,
            "steps": 2, "warmup_steps": 1, "eval_every": 2, "max_eval_samples": 32,
            "num_workers": 0, "device": "cpu", "tensorboard": False,
            "select": {"budget": 0.45, "extra": SELECT_EXTRA}}  # fmt: skip
    spec = {"name": "tiny-selection", "root": str(tmp_path / "study"), "base": base,
            "select_by": "best_val_acc",
            "grid": {"dataset": ["digits"], "seed": [0], "lr": [0.05],
                     "train": ["ln1", "mha", "fc1", "fc2", "auto:params", "auto:plasticity",
                               "bitfit"]},
            "runner": {"function": "vitplas.selection.auto:finetune"},
            "executor": {"max_parallel": 1, "threads_per_run": 1}}  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text("# vitplas reproduce tiny.yaml\n" + yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["reproduce", str(path)])
    assert result.exit_code == 0, result.output
    tables = tmp_path / "study" / "tables"
    evidence = pd.read_csv(tables / "evidence.csv").set_index("criterion")
    assert set(evidence.index) == {"params", "plasticity"}
    # the run row keeps its grid label; the evidence names what the pick's run trained
    runs = pd.read_csv(tables / "runs.csv").set_index("train")
    trained = runs.loc["auto:params", "trained"]
    assert evidence.loc["params", "pick"] == trained and not trained.startswith("auto")
    assert evidence.loc["params", "n"] == 4 and runs.loc["mha", "trained"] == "mha"
    # every run recorded its test images: the intervals resample them
    assert evidence.loc["params", "resampled"] == "1 seeds and 32 test images"
    text = (tmp_path / "study" / "report" / "report.md").read_text()
    assert "What the evidence says, in words" in text and "criteria_regret.png" in text


def test_finetune_command_resolves_auto(tmp_path):
    args = ["finetune", *BASE, "train=[auto:params]", "select.budget=0.45", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "result.json").read_text())["train"] == ["mha"]


def test_auto_token_carries_criterion_and_budget(tmp_path):
    from vitplas.selection.auto import _criterion

    cfg = load_finetune_config(None, [*BASE, "train=[auto:fisher:0.2]"])
    assert _criterion(cfg) == ("fisher", 0.2)
    cfg = load_finetune_config(None, [*BASE, "train=[auto]", "select.criterion=rgn"])
    assert _criterion(cfg) == ("rgn", 0.35)
    cfg = load_finetune_config(None, [*BASE, "train=[auto:fisher:2]"])
    with pytest.raises(ConfigError, match=r"write auto:<criterion>:<budget in \(0, 1\]>"):
        _criterion(cfg)


def test_the_pick_is_scored_on_the_inputs_the_run_trains_on():
    from vitplas.selection.auto import select_config

    for protocol in ("paper", "model"):
        cfg = load_finetune_config(None, [*BASE, "train=[auto:params]", f"protocol={protocol}"])
        assert select_config(cfg, "params").protocol == protocol
