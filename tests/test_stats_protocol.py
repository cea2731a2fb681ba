"""Seed statistics: Student's t CI for few seeds; the report names the lr selection rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from vitplas.experiments import stats
from vitplas.experiments.report import build_markdown, selection_rule
from vitplas.experiments.spec import SweepSpec


def test_ci95_uses_t_below_30_seeds_and_196_from_30():
    assert stats.ci95_quantile(3) == pytest.approx(4.302653, abs=1e-6)
    assert stats.ci95_quantile(4) == pytest.approx(3.182446, abs=1e-6)
    assert stats.ci95_quantile(29) == pytest.approx(sps.t.ppf(0.975, 28))
    assert stats.ci95_quantile(30) == 1.96
    assert np.isnan(stats.ci95_quantile(1))
    values = np.array([90.0, 91.0, 93.0])
    expected = 4.302653 * np.std(values, ddof=1) / np.sqrt(3)  # 3.7947...
    assert stats.ci95_halfwidth(values) == pytest.approx(expected, rel=1e-6)


def test_best_lr_carries_the_t_interval():
    table = pd.DataFrame(
        {
            "dataset": ["d"] * 6,
            "lr": [0.01] * 3 + [0.03] * 3,
            "seed": [0, 42, 3407] * 2,
            "test_acc": [90.0, 91.0, 93.0, 80.0, 80.0, 80.0],
        }
    )
    best = stats.best_lr(table, ["dataset"])
    assert list(best.columns) == ["dataset", "best_lr", "mean", "std", "n", "ci95"]
    row = best.iloc[0]
    assert (row["best_lr"], row["n"]) == (0.01, 3)
    assert row["ci95"] == pytest.approx(4.302653 * np.std([90, 91, 93], ddof=1) / np.sqrt(3))
    assert row["std"] == pytest.approx(np.std([90, 91, 93]))  # the paper's population std


@pytest.mark.parametrize("select_by", ["test_acc", "best_val_acc"])
def test_report_says_which_rule_picked_the_lr(select_by, tmp_path):
    spec = SweepSpec(name="s", study="custom", grid={"lr": [0.01]}, select_by=select_by)
    sentence = selection_rule(spec)
    assert f"highest seed-mean of `{select_by}`" in sentence
    assert "smallest lr" in sentence and "Student's t quantile below 30 seeds" in sentence
    best = pd.DataFrame({"dataset": ["d"], "train": ["mha"], "best_lr": [0.01], "mean": [90.0],
                         "std": [1.0], "n": [3], "ci95": [2.5]})  # fmt: skip
    page = build_markdown(spec, {"best": best}, {}, tmp_path)
    assert sentence in page
