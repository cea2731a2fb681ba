"""A finished text finetuning run used as a model (`model: RUN`, load_model(RUN), `vitplas
evaluate RUN`): its text model's sequence classifier with the trained weights and its tokenizer,
rebuilt offline from a tiny random BERT / GPT-2 folder (tests/text_fixtures.py)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from text_fixtures import text_world
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.models import ModelError, load_model
from vitplas.training.config import load_finetune_config

SHORT = ["steps=2", "eval_every=2", "warmup_steps=0", "batch_size=6", "max_length=12", "lr=0.5"]
SHORT += ["tensorboard=false", "num_workers=0", "device=cpu", "dataset=rotten-tomatoes"]
runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return text_world(tmp_path_factory.mktemp("text"))


@pytest.fixture(scope="module")
def runs(world, tmp_path_factory):
    """{family: (run folder, its result)} of a 2-step train=[all] finetuning each."""
    from vitplas.jobs.runners import run_finetune

    out = {}
    for family in ("bert", "gpt2"):
        cfg = load_finetune_config(
            None, [*SHORT, f"model={world[family]}", f"data_root={world['data']}", "train=[all]"]
        )
        run = tmp_path_factory.mktemp(f"run-{family}")
        out[family] = (run, run_finetune(cfg, run))
    return out


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_a_text_run_loads_as_its_classifier_with_the_trained_weights(runs, world, family):
    run, _ = runs[family]
    loaded = load_model(str(run))
    base = load_model(f"{run}#base")
    assert loaded.modality == base.modality == "text" and loaded.num_classes == 3
    assert loaded.tokenizer == str(world[family]) and loaded.input_size == ()
    assert type(loaded.model).__name__.endswith("ForSequenceClassification")
    from safetensors.torch import load_file

    trained = load_file(run / "checkpoints" / "best.safetensors")
    params = dict(loaded.model.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in trained.items())
    moved = [k for k, p in base.model.named_parameters() if not torch.equal(p, params[k])]
    assert moved  # the base differs from the run only in the trained weights
    assert set(moved) <= set(trained)
    with pytest.raises(ModelError, match=r"is a text model .* no image size"):
        load_model(str(run), img_size=32)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_evaluate_of_a_text_run_recomputes_its_recorded_test_accuracy(runs, family):
    run, result = runs[family]
    args = ["evaluate", str(run), "--num-workers", "0", "--device", "cpu"]
    evaluated = runner.invoke(app, args)
    assert evaluated.exit_code == 0, evaluated.output
    table = pd.read_csv(run / "evaluation.csv")
    assert table["dataset"].tolist() == ["rotten-tomatoes"]
    assert table.loc[0, "n"] == result["test_n"] and table.loc[0, "acc"] == result["test_acc"]
    assert table.loc[0, "loss"] == pytest.approx(result["test_loss"], rel=1e-5)


def test_plasticity_of_a_text_run_differs_from_its_base(runs, world, tmp_path):
    run, _ = runs["bert"]
    means = {}
    for name, spec in (("run", str(run)), ("base", f"{run}#base")):
        args = ["plasticity", "--model", spec, "--reference", "rotten-tomatoes"]
        args += ["--target", "rotten-tomatoes", "--pairs", "8", "--batch-size", "4"]
        args += [f"data_root={world['data']}", "max_length=12", "figures=false", "bounds=false"]
        result = runner.invoke(app, [*args, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        table = pd.read_csv(tmp_path / name / "plasticity.csv")
        means[name] = table.set_index(["layer", "component"])["mean"]
    run_means, base_means = means["run"], means["base"]
    assert run_means.index.equals(base_means.index) and run_means.notna().all()
    ln = base_means.index.get_level_values("component").isin(["ln1", "ln2"])
    assert base_means[ln].to_numpy() == pytest.approx(1.0, abs=1e-6)  # untrained gains of 1
    assert (run_means - base_means).abs().max() > 1e-4  # the trained weights moved the ratios


def test_export_of_a_text_run_is_refused_in_one_line(runs, tmp_path):
    run, _ = runs["bert"]
    result = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 2, result.output
    assert "is a text model" in result.output and "export writes timm" in result.output
    assert "Traceback" not in result.output
