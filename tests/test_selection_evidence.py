"""The evidence tables on synthetic tidy tables: correlations, oracle, pick, regret, rivals'
paired tests, and the criterion x dataset figure."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from vitplas.experiments.evidence import (
    criterion_evidence,
    evidence_summary,
    evidence_tables,
    heat,
    rival_table,
)
from vitplas.plots.selection import criterion_heatmap

PARAMS = {"mha": 40, "fc1": 50, "fc2": 50, "ln1": 2}


def _best() -> pd.DataFrame:
    acc = {
        "a": {"mha": 90.0, "fc1": 88.0, "fc2": 85.0, "ln1": 70.0, "auto:plasticity": 89.0,
              "lora": 87.0},
        "b": {"mha": 80.0, "fc1": 82.0, "fc2": 75.0, "ln1": 60.0, "auto:plasticity": 78.0,
              "lora": 79.0},
    }  # fmt: skip
    return pd.DataFrame(
        [
            {"model": "m", "dataset": d, "train": t, "mean": v}
            for d, r in acc.items()
            for t, v in r.items()
        ]
    )


def _selection() -> pd.DataFrame:
    scores = {
        "plasticity": {"mha": 4.0, "fc1": 3.0, "fc2": 2.0, "ln1": 1.0},
        "condition": {"mha": 1.0, "fc1": 2.0, "fc2": 3.0, "ln1": 4.0},  # lowest first
    }
    rows = []
    for dataset in ("a", "b"):
        for crit, by in scores.items():
            ranks = sorted(by, key=by.get, reverse=crit != "condition")
            for comp, score in by.items():
                rows.append(
                    {"model": "m", "dataset": dataset, "criterion": crit, "layer": "all",
                     "component": comp, "score": score, "rank": ranks.index(comp) + 1,
                     "params": PARAMS[comp]}
                )  # fmt: skip
    return pd.DataFrame(rows)


def test_correlations_oracle_and_regret():
    ev = criterion_evidence(_best(), _selection(), budget=0.5).set_index(["dataset", "criterion"])
    # dataset a: accuracy order mha > fc1 > fc2 > ln1 = plasticity's order exactly
    assert ev.loc[("a", "plasticity"), "spearman"] == pytest.approx(1.0)
    assert ev.loc[("a", "plasticity"), "kendall"] == pytest.approx(1.0)
    # condition ranks lowest first: its scores are flipped, so the same order correlates +1
    assert ev.loc[("a", "condition"), "spearman"] == pytest.approx(1.0)
    # dataset b: fc1 > mha > fc2 > ln1: one swapped pair of 6 -> tau = (5 - 1) / 6
    assert ev.loc[("b", "plasticity"), "kendall"] == pytest.approx(4 / 6)
    assert ev.loc[("b", "plasticity"), "spearman"] == pytest.approx(1 - 6 * 2 / (4 * 15))
    # budget 0.5 of 142 = 71: each single component fits; the oracle is the best one
    assert ev.loc[("b", "plasticity"), "oracle"] == "fc1"
    assert ev.loc[("b", "plasticity"), "pick"] == "auto:plasticity"
    assert ev.loc[("b", "plasticity"), "regret"] == pytest.approx(82.0 - 78.0)
    # no auto:condition run: its pick is its top component that fits (mha)
    assert ev.loc[("b", "condition"), "pick"] == "mha"
    assert ev.loc[("b", "condition"), "regret"] == pytest.approx(82.0 - 80.0)
    # budget 0.3 (42.6): fc1 and fc2 no longer fit
    tight = criterion_evidence(_best(), _selection(), budget=0.3).set_index(
        ["dataset", "criterion"]
    )
    assert tight.loc[("b", "plasticity"), "oracle"] == "mha"


def test_summary_and_rivals():
    ev = criterion_evidence(_best(), _selection(), budget=0.5)
    summary = evidence_summary(ev).set_index("criterion")
    assert summary.loc["plasticity", "regret_mean"] == pytest.approx(2.5)  # (1 + 4) / 2
    assert summary.loc["plasticity", "n_datasets"] == 2
    runs = _best().rename(columns={"mean": "test_acc"})
    runs["trainable_params"] = runs["train"].map({**PARAMS, "auto:plasticity": 40, "lora": 7})
    table, tests = rival_table(_best(), runs)
    lora = table.set_index("train").loc["lora"]
    assert lora["mean_acc"] == pytest.approx(83.0) and lora["trainable_params"] == 7
    row = tests.set_index("other").loc["lora"]
    assert row["reference"] == "auto:plasticity" and row["n"] == 2
    assert row["mean_diff"] == pytest.approx(((89 - 87) + (78 - 79)) / 2)


def test_tables_and_heatmap(tmp_path):
    runs = _best().assign(trainable_params=1)
    tables = evidence_tables(_best(), runs, _selection(), 0.5)
    assert set(tables) == {"selection", "evidence", "evidence_summary", "rivals", "rival_tests"}
    assert evidence_tables(_best(), runs, pd.DataFrame(), 0.5) == {}
    matrix = heat(tables["evidence"])
    assert matrix.shape == (2, 2) and matrix.loc["plasticity", "a"] == pytest.approx(1.0)
    paths = criterion_heatmap(matrix, tmp_path / "spearman", "Spearman")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert not math.isnan(matrix.loc["condition", "b"])


def test_study_hook_reads_selection_files_and_feeds_the_report(tmp_path):
    from types import SimpleNamespace

    from vitplas.experiments.evidence import evidence_figures, report_sections, study_evidence

    states = []
    for dataset, part in _selection().groupby("dataset"):
        folder = tmp_path / dataset
        folder.mkdir()
        part.drop(columns=["model", "dataset"]).to_csv(folder / "selection.csv", index=False)
        run = SimpleNamespace(config={"model": "m", "dataset": dataset})
        states += [SimpleNamespace(run=run, folder=folder, state="done")] * 2  # two seeds
    spec = SimpleNamespace(base={"select": {"budget": 0.5}})
    runs = _best().assign(trainable_params=1)
    tables = study_evidence(states, spec, {"best": _best(), "runs": runs})
    assert len(tables["selection"]) == len(_selection())  # the seeds' duplicates dropped
    assert (
        tables["evidence"].set_index(["dataset", "criterion"]).loc[("b", "plasticity"), "regret"]
        == 4.0
    )
    titles = [t for t, _ in report_sections(tables)]
    assert titles[0].startswith("Criteria across datasets") and len(titles) == 4
    figures = evidence_figures(tables, tmp_path / "fig")
    assert set(figures) == {"criteria_spearman", "criteria_regret"}


def test_pick_and_rivals_show_what_was_trained():
    trained = {"auto:plasticity": "mha+fc1"}  # the set its run resolved to
    best = _best().assign(trained=lambda f: f["train"].replace(trained))
    ev = criterion_evidence(best, _selection(), budget=0.5).set_index(["dataset", "criterion"])
    assert ev.loc[("b", "plasticity"), "pick"] == "auto:plasticity"
    assert ev.loc[("b", "plasticity"), "pick_trained"] == "mha+fc1"
    assert ev.loc[("b", "condition"), "pick_trained"] == "mha"  # a component pick: itself
    runs = best.rename(columns={"mean": "test_acc"}).assign(trainable_params=1)
    runs.loc[(runs["dataset"] == "b") & (runs["train"] == "auto:plasticity"), "trained"] = "fc1"
    table, _ = rival_table(best, runs)
    assert table.set_index("train").loc["auto:plasticity", "trained"] == "fc1 | mha+fc1"
    # without a trained column (older tables) the pick names itself
    plain = criterion_evidence(_best(), _selection(), budget=0.5)
    assert plain.set_index(["dataset", "criterion"]).loc[("a", "plasticity"), "pick_trained"] == (
        "auto:plasticity"
    )
