"""Linear probes: hooked features are the real component outputs; torch L-BFGS matches
scikit-learn within 0.5 points; the baseline is the last block's output."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from test_train_support import NUM_CLASSES, tiny_vit, toy_data
from torch.utils.data import DataLoader

from vitplas.config import ConfigError
from vitplas.training.probe import (
    ProbeConfig,
    extract_features,
    fit_and_score,
    point_groups,
    probe_model,
    probe_points,
)


def _loader(n=48, seed=0):
    return DataLoader(toy_data(n, seed), batch_size=16)


def test_hooked_features_are_the_component_outputs():
    model = tiny_vit().eval()
    loader = _loader(16)
    points = [(0, "mha"), (1, "fc1"), (1, "block")]
    feats, labels = extract_features(model, loader, points, pool="mean")
    images, targets = next(iter(DataLoader(toy_data(16), batch_size=16)))
    with torch.no_grad():
        h0 = model.norm_pre(model._pos_embed(model.patch_embed(images)))  # (B, N, D)
        mha0 = model.blocks[0].attn(model.blocks[0].norm1(h0))
        h1 = model.blocks[0](h0)
        fc1 = model.blocks[1].mlp.fc1(
            model.blocks[1].norm2(h1 + model.blocks[1].attn(model.blocks[1].norm1(h1)))
        )
        out = model.blocks[1](h1)
    assert torch.allclose(feats[(0, "mha")], mha0.mean(1), atol=1e-6)
    assert torch.allclose(feats[(1, "fc1")], fc1.mean(1), atol=1e-5)
    assert feats[(1, "fc1")].shape == (16, 144)  # MLP ratio 3: width read from the module
    assert torch.allclose(feats[(1, "block")], out.mean(1), atol=1e-6)
    cls, _ = extract_features(model, loader, [(1, "block")], pool="cls")
    assert torch.allclose(cls[(1, "block")], out[:, 0], atol=1e-6)
    assert torch.equal(labels, targets)


def test_extraction_stops_after_the_deepest_layer():
    model = tiny_vit()
    calls = []
    model.blocks[1].register_forward_pre_hook(lambda *_: calls.append(1))
    extract_features(model, _loader(16), [(0, "ln2")])
    assert calls == []


def test_torch_lbfgs_matches_sklearn_on_digits():
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=gen)
    train, test = order[:1200], order[1200:]
    accs = {
        backend: fit_and_score(x[train], y[train], x[test], y[test], 10, backend=backend, C=0.1)
        for backend in ("torch", "sklearn")
    }
    assert accs["sklearn"] > 90.0
    assert abs(accs["torch"] - accs["sklearn"]) <= 0.5


def test_probe_rows_match_sklearn_and_carry_the_baseline():
    model = tiny_vit()
    points = probe_points(model, layers=[0], components=["mha", "fc2"])
    rows = {}
    for backend in ("torch", "sklearn"):
        cfg = ProbeConfig(backend=backend, C=0.5)
        rows[backend] = probe_model(
            model, _loader(96), _loader(64, seed=3), NUM_CLASSES, points, cfg, torch.device("cpu")
        )
    # the baseline (last block output) is added when it was not asked for
    keys = [(r["layer"], r["component"]) for r in rows["torch"]]
    assert keys == [(0, "mha"), (0, "fc2"), (1, "block")]
    base = rows["torch"][-1]["acc"]
    for row in rows["torch"]:
        assert row["baseline_acc"] == base
        assert row["rel_to_baseline"] == pytest.approx((row["acc"] - base) / base)
    for a, b in zip(rows["torch"], rows["sklearn"], strict=True):
        assert abs(a["acc"] - b["acc"]) <= 0.5 + 1e-9, (a, b)


def test_points_and_groups():
    model = tiny_vit()
    assert probe_points(model, [-1], ["all"]) == [
        (1, c) for c in ("ln1", "mha", "ln2", "fc1", "fc2", "block")
    ]
    with pytest.raises(ConfigError, match="cannot be probed"):
        probe_points(model, None, ["attn"])
    with pytest.raises(ConfigError, match="out of range"):
        probe_points(model, [2], ["mha"])
    widths = {(0, "a"): 10, (0, "b"): 10, (0, "c"): 30}
    # 100 samples x 10 floats x 4 bytes = 4,000 bytes per point of width 10
    assert point_groups(list(widths), widths, 100, 8_000) == [[(0, "a"), (0, "b")], [(0, "c")]]


def test_cli_probe_writes_a_tidy_table(tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from vitplas.cli import app

    args = ["probe", "--model", "tiny-random", "--dataset", "digits", "img_size=32"]
    args += ["layers=[0]", "components=[mha]", "max_train=200", "max_test=100"]
    args += ["num_workers=0", "device=cpu", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "probe.parquet")
    assert list(zip(table["layer"], table["component"], strict=True)) == [(0, "mha"), (1, "block")]
    assert set(table["n_train"]) == {200} and set(table["n_test"]) == {100}
    assert table["acc"].between(0, 100).all() and (tmp_path / "DONE").exists()
    assert table["rel_to_baseline"].iloc[-1] == 0.0


def test_probe_reports_its_feature_images_and_fits_as_phases():
    seen: dict[str, list[tuple[int, int]]] = {}

    def on_phase(phase: str, done: int, total: int) -> None:
        seen.setdefault(phase, []).append((done, total))

    points = [(0, "mha")]  # the baseline (1, "block") is added
    cpu = torch.device("cpu")
    train, test = _loader(48), _loader(32, seed=3)
    probe_model(tiny_vit(), train, test, NUM_CLASSES, points, ProbeConfig(), cpu, on_phase)
    assert seen["features"][-1] == (80, 80)  # train + test images, one group of points
    assert seen["fits"] == [(1, 2), (2, 2)]
