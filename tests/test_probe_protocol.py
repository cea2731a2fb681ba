"""The probe under protocol paper: L2-normalised features, StandardScaler + logistic regression
(max_iter 5000), train features from the augmented 80% train split, last partial batch dropped."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from test_train_support import tiny_vit, toy_data
from torch.utils.data import DataLoader
from torchvision import transforms as T

from vitplas.data.splits import paper_test_split, seeded_val_split
from vitplas.training.probe import ProbeConfig, extract_features, fit_and_score, probe_loaders


def test_paper_probe_agrees_with_the_original_sklearn_pipeline_on_fixed_features():
    x, y = load_digits(return_X_y=True)
    x = F.normalize(torch.tensor(x, dtype=torch.float64), dim=1).float()  # the original's L2
    y = torch.tensor(y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:1200], order[1200:]
    original = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    original.fit(x[train].numpy(), y[train].numpy())
    reference = 100.0 * original.score(x[test].numpy(), y[test].numpy())
    ours = fit_and_score(x[train], y[train], x[test], y[test], 10, max_iter=5000)
    assert reference > 90.0
    assert abs(ours - reference) <= 0.5


def test_l2_features_are_unit_vectors_of_the_pooled_tokens():
    model = tiny_vit().eval()
    loader = DataLoader(toy_data(16), batch_size=8)
    plain, _ = extract_features(model, loader, [(1, "block")])
    unit, _ = extract_features(model, loader, [(1, "block")], l2=True)
    assert torch.allclose(unit[(1, "block")].norm(dim=1), torch.ones(16), atol=1e-6)
    assert torch.allclose(unit[(1, "block")], F.normalize(plain[(1, "block")], dim=1), atol=1e-6)


def test_paper_probe_loaders_augment_and_drop_the_last_batch():
    cfg = ProbeConfig(
        model="tiny-random", dataset="digits", img_size=32, protocol="paper", batch_size=64,
        seed=42, num_workers=0,
    )  # fmt: skip
    cfg.validate()
    assert cfg.max_iter == 5000 and cfg.l2
    description = {"model_mean": [0.5] * 3, "model_std": [0.5] * 3}
    train, test = probe_loaders(cfg, description)
    steps = [type(t).__name__ for t in train.dataset.transform.transforms]
    assert "RandomResizedCrop" in steps and "RandomHorizontalFlip" in steps
    crop = next(t for t in train.dataset.transform.transforms if isinstance(t, T.RandomResizedCrop))
    assert crop.interpolation == T.InterpolationMode.BILINEAR and crop.scale == (0.08, 1.0)
    assert train.drop_last and not test.drop_last
    # digits is one pool (from-all): the original's 80% train part, then its 80% random_split
    part, _ = paper_test_split(1797)
    kept, _ = seeded_val_split(len(part), 42)
    assert np.array_equal(train.dataset.indices, part[kept])
    assert len(kept) == int(0.8 * int(0.8 * 1797)) == 1149
    assert sum(len(labels) for _, labels in train) == len(kept) // 64 * 64
    assert "RandomResizedCrop" not in [
        type(t).__name__ for t in test.dataset.dataset.transform.transforms
    ]
    model_cfg = ProbeConfig(protocol="model")
    model_cfg.validate()
    assert model_cfg.max_iter == 1000 and not model_cfg.l2


def test_cli_probe_paper_protocol(tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from vitplas.cli import app

    args = ["probe", "--model", "tiny-random", "--dataset", "digits", "img_size=32"]
    args += [
        "layers=[0]",
        "components=[mha]",
        "max_train=200",
        "max_test=100",
        "--protocol",
        "paper",
    ]
    args += ["batch_size=64", "num_workers=0", "device=cpu", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "probe.parquet")
    assert set(table["n_train"]) == {192} and set(table["n_test"]) == {100}  # 3 full batches
    assert np.isfinite(table["acc"]).all()
