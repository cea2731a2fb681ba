"""Component-wise finetuning: what is frozen stays bit-identical; NaN stops with a clear error;
the run folder holds the result contract; a finished run is skipped."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_support import params, toy_config, toy_sources

from vitplas.config import ConfigError
from vitplas.jobs.runners import run_finetune
from vitplas.models.components import component_map
from vitplas.records import read_metrics
from vitplas.runs import RunDir
from vitplas.training.checkpoint import list_checkpoints
from vitplas.training.finetune import TrainingDivergedError


def _component_of(name: str, cmap) -> str:
    for comp in ("emb", *cmap.block_components, "norm", "head"):
        if any(n == name for n, _ in cmap.named_parameters(comp)):
            return comp
    raise AssertionError(name)


@pytest.mark.parametrize("train", [["mha"], ["ln1"], ["fc2", "ln2"]])
def test_only_trained_components_change(tmp_path, train):
    sources = toy_sources()
    before = params(sources.model)
    run_finetune(toy_config(f"train={train}", "steps=4"), tmp_path, sources=sources)
    cmap = component_map(sources.model)
    trained = {*train, "head", "norm"}
    for name, value in sources.model.named_parameters():
        if _component_of(name, cmap) in trained:
            assert not torch.equal(value, before[name]), f"{name} should have changed"
        else:
            assert torch.equal(value, before[name]), f"{name} should be bit-identical"


def test_head_and_norm_frozen_when_config_says_so(tmp_path):
    sources = toy_sources()
    before = params(sources.model)
    cfg = toy_config("train=[fc1]", "train_head=false", "train_norm=false", "steps=4")
    run_finetune(cfg, tmp_path, sources=sources)
    after = dict(sources.model.named_parameters())
    assert torch.equal(after["head.weight"], before["head.weight"])
    assert torch.equal(after["norm.weight"], before["norm.weight"])
    assert not torch.equal(after["blocks.1.mlp.fc1.weight"], before["blocks.1.mlp.fc1.weight"])


def test_all_trains_every_parameter(tmp_path):
    sources = toy_sources()
    before = params(sources.model)
    result = run_finetune(toy_config("train=[all]", "steps=4"), tmp_path, sources=sources)
    changed = [not torch.equal(p, before[n]) for n, p in sources.model.named_parameters()]
    assert all(changed)
    assert result["trainable_params"] == sum(p.numel() for p in sources.model.parameters())


def test_run_folder_contract_and_learning(tmp_path):
    result = run_finetune(toy_config("steps=24", "lr=0.1"), tmp_path, sources=toy_sources())
    run = RunDir(tmp_path)
    assert run.is_done()
    for name in ("config.yaml", "manifest.json", "metrics.jsonl", "result.json"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "checkpoints" / "best.safetensors").is_file()
    stored = json.loads((tmp_path / "result.json").read_text())
    assert stored == result
    keys = {"best_val_acc", "test_acc", "test_loss", "best_step", "steps", "wall_time_s"}
    keys |= {"images_per_s", "trainable_params", "train", "lr", "seed", "dataset", "model"}
    assert keys <= set(result)
    assert result["best_step"] in (4, 8, 12, 16, 20, 24) and result["steps"] == 24
    vals = [r for r in read_metrics(run.path, unfinished=True) if r["kind"] == "val"]
    assert [r["step"] for r in vals] == [4, 8, 12, 16, 20, 24]
    assert result["best_val_acc"] == max(r["val_acc"] for r in vals)
    assert result["best_val_acc"] > 40.0  # 4 classes, colour-coded: well above 25% chance
    train = [r for r in read_metrics(run.path, unfinished=True) if r["kind"] == "train"]
    assert {"grad_norm", "grad_norm/mha", "grad_norm/head", "grad_norm/norm"} <= set(train[0])
    # total norm^2 = sum of component norms^2 (before clipping)
    parts = sum(train[0][f"grad_norm/{c}"] ** 2 for c in ("mha", "head", "norm"))
    assert train[0]["grad_norm"] == pytest.approx(parts**0.5, rel=1e-5)


def test_finished_run_is_skipped(tmp_path):
    first = run_finetune(toy_config("steps=4"), tmp_path, sources=toy_sources())

    def must_not_train(trainer, step):
        raise AssertionError("a finished run trained again")

    again = run_finetune(
        toy_config("steps=4"), tmp_path, sources=toy_sources(), callbacks=[must_not_train]
    )
    assert again == first


def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(tmp_path):
    def poison(trainer, step):
        if step == 4:  # after the checkpoint of step 4: the next loss is NaN
            with torch.no_grad():
                trainer.model.head.weight.fill_(float("nan"))

    cfg = toy_config("steps=8", "ckpt_every=2", "eval_every=2")
    with pytest.raises(TrainingDivergedError, match=r"at step 5\b.*checkpoint \(step 4\)"):
        run_finetune(cfg, tmp_path, sources=toy_sources(), callbacks=[poison])
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [
        "step_00000002",
        "step_00000004",
    ]
    assert not RunDir(tmp_path).is_done()


def test_rerun_with_a_different_config_is_refused(tmp_path):
    def stop(trainer, step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_finetune(toy_config("steps=4"), tmp_path, sources=toy_sources(), callbacks=[stop])
    with pytest.raises(ConfigError, match=r"lr: 0.05 -> 0.1"):
        run_finetune(toy_config("steps=4", "lr=0.1"), tmp_path, sources=toy_sources())


def test_unknown_component_and_key_are_errors():
    with pytest.raises(ConfigError, match="component 'attn' is unknown"):
        toy_config("train=[attn]")
    with pytest.raises(ConfigError, match="unknown config key"):
        toy_config("learning_rate=0.1")
    assert toy_config("lr=1e-3").lr == pytest.approx(1e-3)
