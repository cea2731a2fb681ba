"""`vitplas landscape` on tiny-random: the plane, the grid table, the figure and the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from vitplas.analysis.landscape import LandscapeConfig, pca_plane
from vitplas.cli import app
from vitplas.config import ConfigError
from vitplas.jobs.runners import run_landscape

TINY = dict(model="tiny-random", random_init=True, img_size=None, dataset="digits", grid=3,
            steps=3, batch_size=8, eval_images=8, pairs=8, device="cpu")  # fmt: skip


def test_pca_plane_of_a_straight_path_with_a_kink():
    line = torch.tensor([[float(t), 0.0, 0.0] for t in range(5)] + [[4.0, 0.5, 0.0]])
    directions, coords = pca_plane(line)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), [1.0, 1.0], atol=1e-12)
    assert abs(directions[0] @ directions[1]) < 1e-12
    assert abs(abs(directions[0, 0]) - 1) < 0.01  # the path's main direction is x
    np.testing.assert_allclose(coords[-1], [0.0, 0.0], atol=1e-12)  # centred on the last step


def test_run_writes_grid_trajectory_and_figure(tmp_path):
    cfg = LandscapeConfig(**TINY, components=["ln1", "fc1"], threads=1)
    torch.set_num_threads(2)
    out = run_landscape(cfg, tmp_path / "run")
    assert torch.get_num_threads() == 2  # the run's thread setting is undone
    grid = pd.read_csv(tmp_path / "run" / "landscape.csv")
    assert len(grid) == 2 * 3 * 3 and set(grid["component"]) == {"ln1", "fc1"}
    assert sorted(grid["a"].unique()) == [-0.5, 0.0, 0.5]
    assert grid["loss"].gt(0).all() and grid["rate"].gt(0).all()
    path = pd.read_csv(tmp_path / "run" / "trajectory.csv")
    assert len(path) == 2 * (3 + 1)  # steps + the start, per component
    last = path.groupby("component").tail(1)
    np.testing.assert_allclose(last[["a", "b"]].to_numpy(), 0.0, atol=1e-9)
    # the rate of a linear map changes as its weight moves; LN1's too (its gain moves)
    assert grid.groupby("component")["rate"].nunique().gt(1).all()
    for suffix in ("png", "pdf"):
        assert (tmp_path / "run" / "figures" / f"landscape.{suffix}").stat().st_size > 1000
    assert (tmp_path / "run" / "DONE").exists() and out["components"] == ["ln1", "fc1"]


def test_config_checks():
    with pytest.raises(ConfigError, match="layer 2 is not among the first 1 blocks"):
        LandscapeConfig(layer=2, blocks=1).validate()
    with pytest.raises(ConfigError, match="grid must be >= 2, got 1"):
        LandscapeConfig(grid=1).validate()


def test_cli_help_example_runs(tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(app, ["landscape", "--help"]).output
    example = "--model tiny-random random_init=true img_size=32 dataset=digits grid=5 steps=4"
    assert example in " ".join(help_text.split())
    args = ["landscape", *example.split(), "--out", str(tmp_path / "cli")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "75 grid points" in result.output
    bad = runner.invoke(app, ["landscape", "--preset", "huge"])
    assert bad.exit_code == 2 and "preset 'huge' is unknown" in bad.output
