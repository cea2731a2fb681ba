"""Aggregation and statistics against values computed by hand on small synthetic tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy.stats import t as t_dist

from vitplas.experiments import stats
from vitplas.experiments.aggregate import probe_baseline, summarize
from vitplas.experiments.spec import SweepSpec


def _runs(cells: dict[tuple[str, str, float], list[float]]) -> pd.DataFrame:
    """{(dataset, train, lr): [acc per seed]} -> a tidy run table (seeds 0, 1, ...)."""
    rows = []
    for (dataset, train, lr), accs in cells.items():
        for seed, acc in enumerate(accs):
            rows.append({"model": "m", "dataset": dataset, "train": train, "lr": lr,
                         "seed": seed, "test_acc": acc, "best_val_acc": acc - 1})  # fmt: skip
    return pd.DataFrame(rows)


TABLE = _runs({
    ("d1", "mha", 0.01): [80.0, 82.0],  # mean 81, std 1
    ("d1", "mha", 0.1): [84.0, 86.0],  # mean 85, std 1   <- best
    ("d1", "ln1", 0.01): [70.0, 76.0],  # mean 73, std 3   <- best
    ("d1", "ln1", 0.1): [60.0, 60.0],  # mean 60, std 0
    ("d2", "mha", 0.01): [50.0, 54.0],  # mean 52, std 2   <- tie, smaller lr wins
    ("d2", "mha", 0.1): [52.0, 52.0],  # mean 52, std 0
    ("d2", "ln1", 0.01): [40.0, 40.0],  # mean 40
    ("d2", "ln1", 0.1): [41.0, 45.0],  # mean 43, std 2   <- best
})  # fmt: skip
KEYS = ["model", "dataset", "train"]


def _cell(frame: pd.DataFrame, dataset: str, train: str) -> pd.Series:
    sel = frame[(frame["dataset"] == dataset) & (frame["train"] == train)]
    assert len(sel) == 1
    return sel.iloc[0]


def test_best_lr_mean_and_std_at_best_lr():
    best = stats.best_lr(TABLE, KEYS)
    assert len(best) == 4
    expected = {("d1", "mha"): (0.1, 85.0, 1.0), ("d1", "ln1"): (0.01, 73.0, 3.0),
                ("d2", "mha"): (0.01, 52.0, 2.0), ("d2", "ln1"): (0.1, 43.0, 2.0)}  # fmt: skip
    for (dataset, train), (lr, mean, std) in expected.items():
        row = _cell(best, dataset, train)
        assert row["best_lr"] == lr
        assert abs(row["mean"] - mean) < 1e-9
        assert abs(row["std"] - std) < 1e-9  # population std over seeds (ddof=0)
        assert row["n"] == 2


def test_best_lr_can_select_by_another_metric():
    table = TABLE.copy()
    # make validation prefer lr 0.01 for d1/mha while test prefers 0.1
    mask = (table["dataset"] == "d1") & (table["train"] == "mha") & (table["lr"] == 0.01)
    table.loc[mask, "best_val_acc"] = 99.0
    row = _cell(stats.best_lr(table, KEYS, select_by="best_val_acc"), "d1", "mha")
    assert row["best_lr"] == 0.01
    assert abs(row["mean"] - 81.0) < 1e-9  # the test accuracy at the lr validation picked


def test_lr_gap_is_max_minus_min_of_seed_means():
    gap = stats.lr_gap(TABLE, KEYS)
    expected = {("d1", "mha"): 4.0, ("d1", "ln1"): 13.0, ("d2", "mha"): 0.0, ("d2", "ln1"): 3.0}
    for (dataset, train), value in expected.items():
        assert abs(_cell(gap, dataset, train)["gap"] - value) < 1e-9


def test_relative_gain_over_probe():
    best = stats.best_lr(TABLE, KEYS)
    probe = pd.DataFrame({"dataset": ["d1", "d2"], "probe_acc": [80.0, 40.0]})
    gain = stats.relative_gain(best, probe, on=["dataset"])
    assert abs(_cell(gain, "d1", "mha")["gain"] - (85 - 80) / 80) < 1e-12
    assert abs(_cell(gain, "d1", "ln1")["gain"] - (73 - 80) / 80) < 1e-12
    assert abs(_cell(gain, "d2", "ln1")["gain"] - (43 - 40) / 40) < 1e-12


def _best_over_datasets(mha: list[float], other: list[float]) -> pd.DataFrame:
    rows = [{"dataset": f"d{i}", "train": "mha", "mean": a} for i, a in enumerate(mha)]
    rows += [{"dataset": f"d{i}", "train": "fc1", "mean": b} for i, b in enumerate(other)]
    return pd.DataFrame(rows)


def test_paired_t_test_and_one_sided_wilcoxon_by_hand():
    mha = [90.0, 85.0, 80.0, 75.0, 70.0]
    fc1 = [89.0, 87.0, 77.0, 71.0, 65.0]  # differences 1, -2, 3, 4, 5
    out = stats.paired_tests(_best_over_datasets(mha, fc1))
    assert len(out) == 1
    row = out.iloc[0]
    assert row["other"] == "fc1" and row["n"] == 5
    # paired t: mean diff 2.2, sample sd sqrt(30.8 / 4), t = mean / (sd / sqrt(5))
    t_value = 2.2 / (math.sqrt(30.8 / 4) / math.sqrt(5))
    assert abs(row["mean_diff"] - 2.2) < 1e-12
    assert abs(row["t_stat"] - t_value) < 1e-9
    assert abs(row["t_p"] - 2 * t_dist.sf(t_value, df=4)) < 1e-9
    # Wilcoxon: ranks of |d| are 1..5, W+ = 1 + 3 + 4 + 5 = 13; exact one-sided
    # p = P(W+ >= 13) = #{sign patterns with W+ >= 13} / 2^5 = 3 / 32
    assert row["w_stat"] == 13.0
    assert abs(row["w_p"] - 3 / 32) < 1e-12


def test_tests_are_nan_when_undefined():
    out = stats.paired_tests(_best_over_datasets([90.0], [80.0]))
    assert out.iloc[0]["n"] == 1
    assert math.isnan(out.iloc[0]["t_p"]) and math.isnan(out.iloc[0]["w_p"])


def test_probe_baseline_picks_last_layer_and_converts_fractions():
    probes = pd.DataFrame({
        "model": ["m"] * 6, "dataset": ["d1", "d1", "d1", "d2", "d2", "d2"],
        "layer": [0, 1, 2, 0, 1, 2], "component": ["block"] * 6,
        "test_acc": [0.5, 0.6, 0.8, 0.3, 0.35, 0.4],
    })  # fmt: skip
    base = probe_baseline(probes, layer=-1, component="block")
    assert base.set_index("dataset")["probe_acc"].to_dict() == pytest.approx(
        {"d1": 80.0, "d2": 40.0}
    )


def test_summarize_puts_it_together():
    spec = SweepSpec(name="t", grid={"dataset": ["d1", "d2"], "seed": [0, 1],
                                     "lr": [0.01, 0.1], "train": ["mha", "ln1"]})  # fmt: skip
    probes = pd.DataFrame({"model": ["m", "m"], "dataset": ["d1", "d2"], "layer": [11, 11],
                           "component": ["block", "block"], "test_acc": [80.0, 40.0]})  # fmt: skip
    out = summarize(TABLE, spec, probes)
    comp = out["components"].set_index("train")
    assert abs(comp.loc["mha", "mean_acc"] - (85 + 52) / 2) < 1e-9
    assert abs(comp.loc["ln1", "mean_gap"] - (13 + 3) / 2) < 1e-9
    expected_gain = ((85 - 80) / 80 + (52 - 40) / 40) / 2
    assert abs(comp.loc["mha", "mean_gain"] - expected_gain) < 1e-12
    tests = out["tests"]
    assert list(tests["other"]) == ["ln1"] and tests.iloc[0]["n"] == 2
    assert abs(tests.iloc[0]["mean_diff"] - ((85 - 73) + (52 - 43)) / 2) < 1e-9
