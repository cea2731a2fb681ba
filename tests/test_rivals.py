"""Richer train sets end to end on a tiny ViT: layer-restricted and joint sets, BitFit, peft's
LoRA and LayerNorm tuning, few-shot subsets; each trains exactly the expected parameters."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_support import params, toy_config, toy_data, toy_sources

from vitplas.config import ConfigError
from vitplas.jobs.runners import run_finetune
from vitplas.training.trainsets import few_shot, parse_train

HEAD_NORM = {"head.weight", "head.bias", "norm.weight", "norm.bias"}


def _changed(before: dict, model: torch.nn.Module) -> set[str]:
    now = dict(model.named_parameters())
    return {n for n, v in before.items() if not torch.equal(now[n], v)}


def test_parse_train_grammar():
    assert parse_train(["mha+fc1", "fc2@1", "ln1@0-1"]) == ["mha", "fc1", "fc2@1", "ln1@0-1"]
    with pytest.raises(ValueError, match="stands alone"):
        parse_train(["lora", "mha"])
    with pytest.raises(ValueError, match="runs backwards; write mha@3-5"):
        parse_train(["mha@5-3"])
    with pytest.raises(ValueError, match="component 'mlp' is unknown"):
        parse_train(["mlp@1"])


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ("[mha@1]", {"blocks.1.attn.qkv.weight", "blocks.1.attn.qkv.bias",
                     "blocks.1.attn.proj.weight", "blocks.1.attn.proj.bias"}),
        ("[mha+fc1]", {f"blocks.{i}.{m}.{k}" for i in (0, 1)
                       for m in ("attn.qkv", "attn.proj", "mlp.fc1") for k in ("weight", "bias")}),
        ("[bitfit]", {n for n in params(toy_sources().model) if n.endswith("bias")} - HEAD_NORM),
    ],
)  # fmt: skip
def test_restricted_joint_and_bitfit_train_exactly_their_parameters(tmp_path, train, expected):
    sources = toy_sources()
    before = params(sources.model)
    result = run_finetune(toy_config(f"train={train}", "steps=4"), tmp_path, sources=sources)
    assert _changed(before, sources.model) == expected | HEAD_NORM
    assert result["trainable_params"] == sum(before[n].numel() for n in expected | HEAD_NORM)


def test_lora_trains_only_adapters_on_attention_linears(tmp_path):
    sources = toy_sources()
    before = params(sources.model)
    cfg = toy_config("train=[lora]", "lora.r=2", "lora.alpha=4", "steps=4", "optimizer=adamw")
    result = run_finetune(cfg, tmp_path, sources=sources)
    now = dict(sources.model.named_parameters())
    adapters = {n for n in now if "lora_" in n}
    assert len(adapters) == 2 * 2 * 2  # 2 blocks x (qkv, proj) x (A, B)
    assert now["blocks.0.attn.qkv.lora_A.default.weight"].shape == (2, 48)
    assert now["blocks.0.attn.proj.lora_B.default.weight"].shape == (48, 2)
    assert {n for n, p in now.items() if p.requires_grad} == adapters | HEAD_NORM
    base = {n.replace(".base_layer", ""): v for n, v in now.items() if "lora_" not in n}
    assert {n for n, v in before.items() if not torch.equal(base[n], v)} == HEAD_NORM
    lora = 2 * (2 * 48 + 144 * 2 + 2 * 48 + 48 * 2)  # blocks x (qkv A, B + proj A, B)
    assert result["trainable_params"] == lora + (48 * 4 + 4) + 2 * 48
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["trained_parameters"]) == {"lora", "head", "norm"}
    assert manifest["parameter_counts"]["total"] == sum(v.numel() for v in before.values())


def test_lntuning_trains_copies_of_block_norms(tmp_path):
    sources = toy_sources()
    run_finetune(toy_config("train=[lntuning]", "steps=4"), tmp_path, sources=sources)
    now = dict(sources.model.named_parameters())
    tuned = {n for n, p in now.items() if p.requires_grad} - HEAD_NORM
    assert len(tuned) == 2 * 2 * 2  # 2 blocks x (norm1, norm2) x (weight, bias)
    assert all("ln_tuning_layers" in n for n in tuned)
    changed = {
        n for n in tuned if not torch.equal(now[n], torch.ones_like(now[n])) and "weight" in n
    }
    assert changed  # the tuned copies moved away from their start (LayerNorm weight = 1)


def test_few_shot_subset_is_fixed_across_seeds(tmp_path):
    data = toy_data(64)
    subset = few_shot(data, 3)
    labels = data.tensors[1][subset.indices]
    assert len(subset) == 12 and torch.bincount(labels).tolist() == [3, 3, 3, 3]
    assert few_shot(data, 3).indices == subset.indices
    with pytest.raises(ValueError, match="have fewer examples; lower it"):
        few_shot(data, 40)
    cfg = toy_config("train_per_class=3", "steps=2", "warmup_steps=1", "batch_size=4", "seed=5")
    result = run_finetune(cfg, tmp_path, sources=toy_sources())
    assert result["steps"] == 2


def test_auto_must_be_resolved_first(tmp_path):
    """The training itself refuses train=[auto] (its job's lifecycle resolves it first)."""
    from vitplas.runs import RunDir
    from vitplas.training.finetune import compute_finetune

    with pytest.raises(ConfigError, match="resolved before finetuning"):
        compute_finetune(
            toy_config("train=[auto]", "steps=2", "warmup_steps=1"),
            RunDir(tmp_path),
            sources=toy_sources(),
        )
