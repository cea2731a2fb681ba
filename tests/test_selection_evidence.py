"""The evidence tables on synthetic tables whose answers are known: a regret against the best
feasible set chosen on validation, each set at its own best-validation lr, bootstrap intervals
over seeds and test images, the permutation test, Holm, the partial correlation, the words."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from vitplas.experiments import stats
from vitplas.experiments.evidence import (
    block_share,
    criterion_evidence,
    evidence_tables,
    heat,
    rival_table,
)
from vitplas.experiments.resample import build_cube, resample
from vitplas.plots.selection import criterion_heatmap

PARAMS = {"mha": 40, "fc1": 50, "fc2": 50, "ln1": 2}  # total 142


def _selection(datasets=("a",)) -> pd.DataFrame:
    scores = {
        "plasticity": {"mha": 4.0, "fc1": 3.0, "fc2": 2.0, "ln1": 1.0},
        "condition": {"mha": 1.0, "fc1": 2.0, "fc2": 3.0, "ln1": 4.0},  # lowest first
    }
    rows = []
    for dataset in datasets:
        for crit, by in scores.items():
            ranks = sorted(by, key=by.get, reverse=crit != "condition")
            for comp, score in by.items():
                rows.append(
                    {"model": "m", "dataset": dataset, "criterion": crit, "layer": "all",
                     "component": comp, "score": score, "rank": ranks.index(comp) + 1,
                     "params": PARAMS[comp], "matrix": comp != "ln1", "note": ""}
                )  # fmt: skip
    return pd.DataFrame(rows)


# (train label, trained, lr, val, test) per seed: validation and test disagree on purpose
RUNS = [
    ("mha", "mha", 0.01, 88.0, 87.0), ("mha", "mha", 0.1, 80.0, 89.0),  # val picks 0.01
    ("fc1", "fc1", 0.03, 90.0, 85.0),  # the best validation: the oracle, though not on test
    ("fc2", "fc2", 0.03, 84.0, 84.0),
    ("ln1", "ln1", 0.3, 70.0, 70.0),
    ("auto:plasticity", "ln1+mha", 0.03, 86.0, 86.0),
    ("lora", "lora", 0.001, 95.0, 95.0),  # a rival: not in the feasible family
]  # fmt: skip


def _runs(datasets=("a",), seeds=(0, 1)) -> pd.DataFrame:
    rows = [
        {"model": "m", "dataset": d, "train": t, "trained": k, "lr": lr, "seed": s,
         "best_val_acc": v + s, "test_acc": te + s, "run_id": f"{d}-{k}-{lr}-{s}",
         "trainable_params": 1}
        for d in datasets for t, k, lr, v, te in RUNS for s in seeds
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_regret_is_against_the_best_feasible_set_chosen_on_validation():
    out = criterion_evidence(_runs(), _selection(), budget=0.5, replicates=200)
    ev = out["evidence"].set_index("criterion")
    row = ev.loc["plasticity"]
    # oracle: fc1 by validation (90.5 seed-mean) although mha is better on test; lora (95) is
    # no block train set, so not in the family
    assert row["oracle"] == "fc1" and row["oracle_acc"] == pytest.approx(85.5)
    assert row["pick"] == "ln1+mha" and row["pick_acc"] == pytest.approx(86.5)
    assert row["regret"] == pytest.approx(-1.0)  # the pick beat the val-chosen oracle on test
    # no auto:condition run: its pick is what its ranking picks at budget 0.5 (mha: 0.28, fc1
    # would bring it to 0.63): `mha`, at its best-validation lr 0.01 (test 87.5, not 89.5)
    assert ev.loc["condition", "pick"] == "mha"
    assert ev.loc["condition", "pick_lr"] == 0.01
    assert ev.loc["condition", "pick_acc"] == pytest.approx(87.5)
    assert ev.loc["condition", "regret"] == pytest.approx(85.5 - 87.5)
    sets = out["set_lrs"].set_index("train")
    assert sets.loc["mha", "best_lr"] == 0.01 and sets.loc["mha", "lrs"] == "0.01, 0.1"
    assert sets.loc["ln1+mha", "share"] == pytest.approx(42 / 142)
    assert not sets.loc["lora", "feasible"] and math.isnan(sets.loc["lora", "share"])
    # a budget of 0.3: fc1 (0.35) no longer fits, mha does: the oracle moves
    tight = criterion_evidence(_runs(), _selection(), budget=0.3, replicates=200)
    assert tight["evidence"].set_index("criterion").loc["plasticity", "oracle"] == "mha"


def test_correlations_and_the_partial_on_log_params():
    ev = criterion_evidence(_runs(), _selection(), 0.5, replicates=200)["evidence"]
    row = ev.set_index("criterion").loc["plasticity"]
    # accuracies at the best-validation lr: mha 87.5, fc1 85.5, fc2 84.5, ln1 70.5: the order of
    # plasticity's scores exactly; condition ranks lowest first: flipped, the same +1
    assert row["spearman"] == pytest.approx(1.0) and row["kendall"] == pytest.approx(1.0)
    assert ev.set_index("criterion").loc["condition", "spearman"] == pytest.approx(1.0)
    # the partial Spearman by hand: residuals of the ranks on the ranks of log(params)
    x, y = np.array([4.0, 3, 2, 1]), np.array([87.5, 85.5, 84.5, 70.5])
    z = np.log([40.0, 50, 50, 2])
    from scipy.stats import rankdata

    rx, ry, rz = rankdata(x), rankdata(y), rankdata(z)
    res = [r - np.polyval(np.polyfit(rz, r, 1), rz) for r in (rx, ry)]
    assert row["partial_spearman"] == pytest.approx(np.corrcoef(*res)[0, 1])
    assert row["n"] == 4


def _images(n_sets: int, correct: dict[int, range], n: int = 100) -> dict[str, pd.DataFrame]:
    return {
        f"r{k}": pd.DataFrame({"index": range(n), "label": 1,
                               "pred": [int(i in correct[k]) for i in range(n)]})
        for k in range(n_sets)
    }  # fmt: skip


def _two_sets(correct_a: range, correct_b: range):
    runs = pd.DataFrame(
        [{"trained": t, "lr": 0.1, "seed": 0, "best_val_acc": v, "test_acc": 0.0, "run_id": r}
         for t, v, r in (("a", 2.0, "r0"), ("b", 1.0, "r1"))]
    )  # fmt: skip
    cube = build_cube(runs, _images(2, {0: correct_a, 1: correct_b}))
    reps = resample(cube, 2000, seed=1)
    return cube, reps.test[:, 0] - reps.test[:, 1]


def test_image_bootstrap_knows_a_real_difference_from_noise():
    # a is right on images 0-79, b on 0-69 (a subset): a - b = 10 points, never below 0
    cube, diff = _two_sets(range(80), range(70))
    assert cube.unit == "1 seeds and 100 test images"
    assert diff[0] == pytest.approx(10.0)
    lo, hi = stats.percentile_interval(diff[1:])
    assert 3.0 < lo < 10.0 < hi < 17.0  # binomial: sd = 100 sqrt(0.1 x 0.9 / 100) = 3
    # equal accuracy (70 each) on different images: the difference is noise around 0
    _, diff = _two_sets(range(70), range(10, 80))
    lo, hi = stats.percentile_interval(diff[1:])
    assert diff[0] == 0.0 and lo < 0 < hi


def test_without_per_image_records_only_seeds_are_resampled():
    runs = _runs(seeds=(0, 1, 2))
    cube = build_cube(runs[runs["dataset"] == "a"], predictions=None)
    assert cube.correct is None and cube.unit == "3 seeds"
    reps = resample(cube, 500)
    k = cube.sets.index("fc1")
    assert reps.test[0, k] == pytest.approx(86.0)  # 85 + mean(0, 1, 2)
    assert set(np.round(reps.test[1:, k], 6)) <= {round(85 + s / 3, 6) for s in range(7)}


def test_permutation_test_and_holm_with_known_answers():
    perfect = (np.arange(5.0), np.arange(5.0) * 2)
    # one unit, rho = 1: exactly 2 of the 120 orders reach |rho| = 1, p = 2/120
    assert stats.permutation_p([perfect], 9999) == pytest.approx(2 / 120, abs=0.006)
    # two units both perfect: p = 2 / 120^2, below what 9,999 draws resolve
    assert stats.permutation_p([perfect, perfect], 9999) < 0.002
    assert math.isnan(stats.permutation_p([(np.arange(2.0), np.arange(2.0))]))
    assert stats.holm([0.01, 0.04, 0.03, math.nan])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(stats.holm([0.01, math.nan])[1])


def test_summary_findings_say_what_is_inside_the_noise():
    out = criterion_evidence(_runs(("a", "b")), _selection(("a", "b")), 0.5, replicates=300)
    summary = out["evidence_summary"].set_index("criterion")
    assert summary.loc["plasticity", "n_datasets"] == 2
    assert summary.loc["plasticity", "n_units"] == 4  # 2 datasets x 2 seeds
    assert summary.loc["plasticity", "regret_mean"] == pytest.approx(-1.0)
    # seeds only shift every accuracy alike: no spread, the interval is the point
    assert summary.loc["plasticity", "regret_lo"] == pytest.approx(-1.0)
    assert summary.loc["plasticity", "holm_p"] >= summary.loc["plasticity", "perm_p"]
    text = " ".join(out["findings"]["finding"])
    assert "m, plasticity at budget 0.5, over 2 datasets: Spearman +1.00" in text
    assert "regret -1.00 points (interval -1.00 to -1.00): outside the noise" in text
    assert "Intervals resample 2 seeds per dataset" in text


def test_block_share_of_train_sets():
    units = _selection()
    layers = pd.DataFrame(
        [{"criterion": "plasticity", "layer": i, "component": "mha", "params": 20}
         for i in (0, 1)]
    )  # fmt: skip
    units = pd.concat([units, layers])
    assert block_share("mha", units) == pytest.approx(40 / 142)
    assert block_share("ln1+fc1", units) == pytest.approx(52 / 142)
    assert block_share("mha@1", units) == pytest.approx(20 / 142)
    assert math.isnan(block_share("lora", units)) and math.isnan(block_share("all", units))


def test_tables_rivals_and_heatmap(tmp_path):
    runs = _runs(("a", "b"))
    best = runs.groupby(["model", "dataset", "train"], as_index=False)["test_acc"].mean()
    best = best.rename(columns={"test_acc": "mean"})
    tables = evidence_tables(best, runs, _selection(("a", "b")), 0.5, replicates=100)
    assert {"selection", "set_lrs", "evidence", "evidence_summary", "findings", "rivals",
            "rival_tests"} == set(tables)  # fmt: skip
    assert evidence_tables(best, runs, pd.DataFrame(), 0.5) == {}
    matrix = heat(tables["evidence"])
    assert matrix.shape == (2, 2) and matrix.loc["plasticity", "a"] == pytest.approx(1.0)
    paths = criterion_heatmap(matrix, tmp_path / "spearman", "Spearman")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    table, tests = rival_table(best, runs)
    assert table.set_index("train").loc["lora", "mean_acc"] == pytest.approx(95.5)
    assert tests.set_index("other").loc["lora", "reference"] == "auto:plasticity"


def test_study_hook_reads_selection_files_and_refuses_an_old_version(tmp_path):
    import json
    from types import SimpleNamespace

    from vitplas.experiments.evidence import report_sections, study_evidence
    from vitplas.runs import RunDir

    SEALED = ("selection.csv", "picks.json")
    states = []
    for dataset, part in _selection(("a", "b")).groupby("dataset"):
        folder = tmp_path / dataset
        folder.mkdir()
        part.drop(columns=["model", "dataset"]).to_csv(folder / "selection.csv", index=False)
        (folder / "picks.json").write_text(json.dumps({"criteria_version": 2}))
        RunDir(folder).mark_done(SEALED)  # finished runs: their records read through the seal
        run = SimpleNamespace(config={"model": "m", "dataset": dataset}, run_id=dataset)
        states += [SimpleNamespace(run=run, folder=folder, state="done")] * 2  # two seeds
    spec = SimpleNamespace(base={"select": {"budget": 0.5}})
    runs = _runs(("a", "b"))
    tables = study_evidence(states, spec, {"runs": runs, "best": pd.DataFrame()})
    assert len(tables["selection"]) == len(_selection(("a", "b")))  # duplicates dropped
    ev = tables["evidence"].set_index(["dataset", "criterion"])
    assert ev.loc[("b", "plasticity"), "regret"] == pytest.approx(-1.0)
    titles = [t for t, _ in report_sections(tables)]
    assert titles[0].startswith("What the evidence says, in words")
    (tmp_path / "a" / "picks.json").write_text(json.dumps({"criteria_version": 1}))
    RunDir(tmp_path / "a").mark_done(SEALED)  # sealed as such: an old version, not a damaged file
    with pytest.raises(ValueError, match="scored by criteria version 1, not 2"):
        study_evidence(states, spec, {"runs": runs})
