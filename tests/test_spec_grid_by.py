"""An axis whose values depend on another's: the lr grid per train set (grid_by), in the spec
as data, in the run ids and in --dry-run; a selection study chooses lrs on validation."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.config import ConfigError
from vitplas.experiments.axes import grid_by_lines
from vitplas.experiments.spec import expand, load_spec

FAKE = {"function": "vitplas_testjobs.fake:fake_finetune", "config": None}
GRID = {"dataset": ["a"], "seed": [0, 1], "lr": [0.03], "train": ["ln1", "mha", ["mha", "fc1"]]}
BY = {"train": {"ln1": {"lr": [0.1, 0.3, 1.0]}, "mha+fc1": {"lr": [0.01, 0.1]}}}


def _spec(tmp_path, **changes):
    data = {"name": "t", "root": str(tmp_path / "study"), "base": {"model": "tiny-random"},
            "grid": GRID, "grid_by": BY, "runner": FAKE, **changes}  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_each_train_set_gets_its_own_lr_grid(tmp_path):
    runs = expand(load_spec(_spec(tmp_path)))
    lrs = {}
    for run in runs:
        label = "+".join(run.params["train"]) if isinstance(run.params["train"], list) else (
            run.params["train"])  # fmt: skip
        lrs.setdefault(label, set()).add(run.params["lr"])
        assert run.config["lr"] == run.params["lr"]
    assert lrs == {"ln1": {0.1, 0.3, 1.0}, "mha": {0.03}, "mha+fc1": {0.01, 0.1}}
    assert len(runs) == 2 * (3 + 1 + 2)  # seeds x the sets' own lrs
    # a spec without grid_by keeps its run ids: the unchanged sets' runs are the same runs
    plain = expand(load_spec(_spec(tmp_path, grid_by={})))
    mha = {r.run_id for r in runs if r.params["train"] == "mha"}
    assert mha == {r.run_id for r in plain if r.params["train"] == "mha"}
    assert grid_by_lines(load_spec(_spec(tmp_path))) == [
        "lr by train: ln1: 0.1, 0.3, 1; mha+fc1: 0.01, 0.1; others: 0.03"
    ]


def test_dry_run_shows_the_lr_per_train_set(tmp_path):
    result = CliRunner().invoke(app, ["sweep", str(_spec(tmp_path)), "--dry-run", "--runs"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert "12 runs" in lines
    assert "lr by train: ln1: 0.1, 0.3, 1; mha+fc1: 0.01, 0.1; others: 0.03" in lines
    assert sum("_0.3_" in line and "ln1" in line for line in lines) == 2  # two seeds


@pytest.mark.parametrize(
    ("grid_by", "message"),
    [
        ({"optimizer": {"sgd": {"lr": [0.1]}}}, "grid_by names 'optimizer', which is not a grid"),
        ({"train": {"fc2": {"lr": [0.1]}}}, r"grid_by.train names 'fc2', not a value of grid"),
        ({"train": {"ln1": {"steps": [5]}}}, r"overrides 'steps', which must be another grid"),
        ({"train": {"ln1": {"lr": []}}}, r"grid_by.train.ln1.lr must be a non-empty list"),
        ({"train": {"ln1": {"lr": ["1e-3"]}}}, r"lr '1e-3' is text"),
    ],
)
def test_bad_grid_by_says_what_to_write(tmp_path, grid_by, message):
    with pytest.raises(ConfigError, match=message):
        load_spec(_spec(tmp_path, grid_by=grid_by))


def test_a_selection_study_chooses_on_validation(tmp_path):
    grid = {**GRID, "train": ["ln1", "auto:fisher"]}
    with pytest.raises(ConfigError, match="must choose each train set's lr on validation: set "
                       "`select_by: best_val_acc`"):  # fmt: skip
        load_spec(_spec(tmp_path, grid=grid, grid_by={}))
    assert load_spec(_spec(tmp_path, grid=grid, grid_by={}, select_by="best_val_acc"))
