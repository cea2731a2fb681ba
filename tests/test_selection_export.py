"""Picks exported for peft, timm and plain PyTorch: each file is loaded back in the library it
targets, and exactly the picked parameters (plus the head and the final norm) train."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from vitplas.selection.export import export_picks, module_cover, parse_formats, trained_groups

PICKS = {
    "component": ["ln1", "ls2", "fc1"],  # a norm, a layer scale, a matrix component
    "layer": ["mha@1-2", "fc2@0"],  # per-layer picks
}


def _vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=3, num_heads=2,
                             mlp_ratio=2.0, num_classes=4, init_values=1e-5)  # fmt: skip


def _expected(train) -> set[str]:
    return {n for ns in trained_groups(_vit(), train).values() for n in ns}


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    model = _vit()
    written = export_picks(model, PICKS, ["peft", "timm", "names"], out, {"model": "tiny"})
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was
    return out, written


@pytest.mark.parametrize("kind", list(PICKS))
def test_names_export_trains_exactly_the_pick(exported, kind):
    out, _ = exported
    record = json.loads((out / kind / "names.json").read_text())
    assert record["criterion"] == kind and record["train"] == PICKS[kind]
    model = _vit()
    for n, p in model.named_parameters():
        p.requires_grad_(n in set(record["parameters"]))
    assert _trainable(model) == _expected(PICKS[kind])
    if kind == "component":  # by hand: every block's norm1, ls2 and mlp.fc1, the head, the norm
        hand = {
            f"blocks.{i}.{m}"
            for i in range(3)
            for m in ("norm1.weight", "norm1.bias", "ls2.gamma", "mlp.fc1.weight", "mlp.fc1.bias")
        }
        hand |= {"head.weight", "head.bias", "norm.weight", "norm.bias"}  # fmt: skip
        assert _trainable(model) == hand
    else:
        assert "blocks.0.attn.qkv.weight" not in _trainable(model)
        assert {"blocks.1.attn.qkv.weight", "blocks.2.attn.proj.bias", "blocks.0.mlp.fc2.weight"
                } <= _trainable(model)  # fmt: skip


@pytest.mark.parametrize("kind", list(PICKS))
def test_timm_export_freezes_and_groups_exactly_the_pick(exported, kind):
    import timm.optim
    import timm.utils

    out, _ = exported
    record = json.loads((out / kind / "timm.json").read_text())
    model = _vit()
    timm.utils.freeze(model)
    timm.utils.unfreeze(model, record["unfreeze"])
    assert _trainable(model) == _expected(PICKS[kind])
    named = dict(_vit().named_parameters())
    groups = [{"params": [named[n] for n in g["params"]]} for g in record["param_groups"]]
    optimizer = timm.optim.create_optimizer_v2(groups, opt="sgd", lr=0.1)
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(named[n]) for n in _expected(PICKS[kind])}
    assert {"head", "norm", *PICKS[kind]} == {g["name"] for g in record["param_groups"]}


@pytest.mark.parametrize("kind", list(PICKS))
def test_peft_export_loads_in_peft_and_trains_exactly_the_pick(exported, kind):
    from peft import PeftConfig, get_peft_model

    out, _ = exported
    config = PeftConfig.from_pretrained(str(out / kind / "peft"))
    with warnings.catch_warnings():  # peft: "Unsupported layer type" for a non-norm target
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(_vit(), config)
    trained = set()
    for name in _trainable(peft_model):
        name = name.removeprefix("base_model.model.")
        for marker in (".ln_tuning_layers.default", ".modules_to_save.default"):
            name = name.replace(marker, "")
        trained.add(name)
    assert trained == _expected(PICKS[kind])
    n_trained = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert n_trained == sum(p.numel() for n, p in _vit().named_parameters()
                            if n in _expected(PICKS[kind]))  # fmt: skip
    assert config.modules_to_save == ["head"]  # `norm` would also catch patch_embed.norm
    assert peft_model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    side = json.loads((out / kind / "peft" / "vitplas_export.json").read_text())
    assert set(side["parameters"]) == _expected(PICKS[kind])


def test_module_cover_and_refusals():
    model = _vit()
    assert module_cover(model, ["blocks.0.norm1.weight", "blocks.0.norm1.bias"]) == [
        "blocks.0.norm1"
    ]
    with pytest.raises(ValueError, match=r"trains blocks.0.norm1.weight but not all of "
                       r"blocks.0.norm1's parameters, .*use --export names"):  # fmt: skip
        module_cover(model, ["blocks.0.norm1.weight"])
    with pytest.raises(ValueError, match="rival method"):
        trained_groups(model, ["lora"])
    with pytest.raises(ValueError, match="export format 'onnx' is unknown; choose from peft, timm"):
        parse_formats("peft,onnx")
    assert parse_formats("timm, names") == ["timm", "names"]


def test_a_criterion_that_picks_nothing_exports_nothing(tmp_path):
    written = export_picks(_vit(), {"a": [], "b": ["ln1"]}, ["names"], tmp_path, {})
    assert set(written) == {"b"} and not (tmp_path / "a").exists()


def _selection(**keys):
    from vitplas.selection.config import SelectConfig

    tiny = {"model": "tiny-random", "random_init": True, "target": "digits", "device": "cpu"}
    return SelectConfig(**tiny, criteria=["params"], budget=0.4, grad_batches=1, batch_size=4,
                        **keys)  # fmt: skip


def test_a_rerun_adds_export_formats_to_a_finished_selection_without_scoring(tmp_path, monkeypatch):
    import dataclasses

    import vitplas.selection.select as select
    from vitplas.jobs.runners import run_select
    from vitplas.runs import RunDir

    folder = tmp_path / "sel"
    cfg = _selection(export=["names"])
    _, chosen = run_select(cfg, folder)
    assert chosen == {"params": ["mha"]}
    names = folder / "export" / "params" / "names.json"
    first = names.read_bytes()
    monkeypatch.setattr(select, "score_config", lambda *a, **k: pytest.fail("scored again"))
    run_select(dataclasses.replace(cfg, export=["names", "peft"]), folder)  # read back + peft
    sealed = RunDir(folder, create=False).checksums()
    assert {"export/params/names.json", "export/params/peft/adapter_config.json",
            "export/params/peft/vitplas_export.json"} <= set(sealed)  # fmt: skip
    RunDir(folder, create=False).verify()
    assert names.read_bytes() == first
    side = json.loads((folder / "export/params/peft/vitplas_export.json").read_text())
    assert side["train"] == ["mha"] and side["criterion"] == "params" and side["rule"] == "prefix"


def test_a_selection_of_an_earlier_criteria_version_is_refused_not_read_back(tmp_path, monkeypatch):
    import vitplas.selection.criteria as criteria
    from vitplas.config import ConfigError
    from vitplas.jobs.runners import run_select

    run_select(_selection(), tmp_path / "sel")
    monkeypatch.setattr(criteria, "CRITERIA_VERSION", criteria.CRITERIA_VERSION + 1)
    with pytest.raises(ConfigError, match=r"scored by criteria version \d+ \(this vitplas scores "
                       r"version \d+: other definitions"):  # fmt: skip
        run_select(_selection(), tmp_path / "sel")


def test_an_unknown_export_format_is_a_config_error():
    from vitplas.config import ConfigError

    with pytest.raises(ConfigError, match="export format 'onnx' is unknown"):
        _selection(export=["onnx"]).validate()
