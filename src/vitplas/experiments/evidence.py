"""How well each criterion predicts finetuning: the evidence tables of a selection study.

Inputs: the run table (one row per run: model, dataset, train (the grid label), trained (what
it trained), lr, seed, best_val_acc, test_acc, run_id), the runs' per-image test records where
they exist (test_predictions.csv), and `selection` (per model, dataset: the criteria's scores,
as selection.csv, gathered from the study's train=[auto] runs).

Every accuracy is taken at the train set's own lr chosen on validation (the seed-mean
best_val_acc; the test split is only measured), whatever the spec's select_by.

    set_lrs     per (model, dataset, train set): its share of the block parameters, the lr that
                won on validation, validation and test accuracy there, seeds
    evidence    per (model, dataset, criterion, budget): Spearman and Kendall correlation of the
                criterion's scores (sign-flipped where lower ranks first) with the accuracies of
                the single components, the partial Spearman on log(params) (does it rank by
                more than size?), the oracle (the best FEASIBLE set, i.e. made of block
                components within the budget, chosen on validation, measured on test), the
                pick (the criterion's set: its train=[auto:criterion] runs, else the set its
                ranking picks under the budget rule, if the study ran it) and regret = oracle's
                test accuracy - pick's, in points; both sets come from one feasible family, so a
                pick that is the oracle has regret 0 and a negative regret is noise. Each with a
                95% bootstrap interval (vitplas.experiments.resample: seeds and test images).
    evidence_summary per (model, criterion, budget) across datasets: the means and their
                intervals (the datasets as given: not resampled), a permutation test of the
                mean Spearman over (dataset, seed) units, Holm-adjusted over the criteria
    findings    the same in words: which correlations and regrets are inside the noise
    rival_table per (model, train set): mean accuracy and trainable parameters across datasets,
                paired tests against train=[auto:plasticity]
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from vitplas.experiments import stats
from vitplas.experiments.resample import REPLICATES, Cube, build_cube, resample
from vitplas.records import read_json, read_table
from vitplas.selection.budget import choose, train_set
from vitplas.selection.criteria import ALL, CRITERIA_VERSION, HIGHER_FIRST

AUTO_REFERENCE = "auto:plasticity"
PERMUTATIONS = 9999
EVIDENCE_COLUMNS = [
    "model", "dataset", "criterion", "budget", "n", "spearman", "spearman_lo", "spearman_hi",
    "kendall", "partial_spearman", "partial_lo", "partial_hi", "oracle", "oracle_lr",
    "oracle_acc", "pick", "pick_lr", "pick_acc", "regret", "regret_lo", "regret_hi", "resampled",
]  # fmt: skip


def selection_table(folders: list[tuple[dict, Path]]) -> pd.DataFrame:
    """selection.csv of finished runs, each with its (model, dataset) keys, read verified;
    duplicates dropped (the scores do not depend on the run's seed or lr). A selection scored
    by another version of the criteria is refused (its scores mean something else)."""
    parts = []
    for keys, folder in folders:
        if not (Path(folder) / "selection.csv").is_file():
            continue
        picks = Path(folder) / "picks.json"
        version = read_json(folder, picks.name).get("criteria_version") if (
            picks.is_file()) else None  # fmt: skip
        if version != CRITERIA_VERSION:
            raise ValueError(
                f"{folder} was scored by criteria version {version}, not {CRITERIA_VERSION} "
                "(fisher was the squared batch gradient, spectra read norms, plasticity pairs "
                "the test split); delete that run folder and launch the study again"
            )
        frame = read_table(folder, "selection.csv")  # verified against the run's seal
        parts.append(frame.assign(**{k: keys[k] for k in ("model", "dataset") if k in keys}))
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    return table.drop_duplicates(["model", "dataset", "criterion", "layer", "component"])


def block_share(label: str, units: pd.DataFrame) -> float:
    """The fraction of the block parameters train set `label` trains ('mha+fc1@3'), from the
    selection's unit rows; NaN for a set that is not made of block components (all, rivals)."""
    if "criterion" in units:  # every criterion scores the same units: one's rows suffice
        units = units[units["criterion"] == units["criterion"].iloc[0]]
    types = units[units["layer"].astype(str) == ALL].set_index("component")["params"]
    layers = units[units["layer"].astype(str) != ALL]
    total, used = float(types.sum()), 0.0
    for token in str(label).split("+"):
        name, _, span = token.partition("@")
        if name not in types.index:
            return math.nan
        if not span:
            used += float(types[name])
            continue
        a, _, b = span.partition("-")
        chosen = layers[(layers["component"] == name)
                        & layers["layer"].astype(int).between(int(a), int(b or a))]  # fmt: skip
        used += float(chosen["params"].sum())
    return used / total


def _auto_budget(label: str, default: float) -> tuple[str | None, float]:
    """(criterion, budget) of a grid label `auto:criterion[:budget]`; (None, _) otherwise."""
    parts = str(label).split(":")
    if parts[0] != "auto" or len(parts) < 2:
        return None, default
    return parts[1], float(parts[2]) if len(parts) > 2 else default


def _picks(runs: pd.DataFrame, sel: pd.DataFrame, budget: float) -> dict[tuple[str, float], str]:
    """{(criterion, budget): the trained label of its pick}: its auto runs' set, else the set
    its ranking picks under the budget rule (which the study may or may not have run)."""
    from vitplas.experiments.spec import trained_label

    out: dict[tuple[str, float], str] = {}
    for label, part in runs.groupby("train", sort=False):
        crit, b = _auto_budget(label, budget)
        if crit is not None:
            out[(crit, b)] = " | ".join(sorted(set(part["trained"])))
    for crit in dict.fromkeys(sel["criterion"]):
        if not any(c == crit for c, _ in out):
            chosen = train_set(choose(sel, crit, budget, "component"))
            if chosen:
                out[(crit, budget)] = trained_label(chosen)
    return out


def cell_evidence(runs, sel, budget, predictions, replicates, seed):
    """Evidence rows of one (model, dataset) cell, the set_lrs rows, and per (criterion,
    budget) the replicate arrays and per-seed units the summary needs."""
    cube = build_cube(runs, predictions)
    reps = resample(cube, replicates, seed)
    shares = np.array([block_share(s, sel) for s in cube.sets])
    set_rows = _set_rows(cube, reps, shares, budget)
    types = sel[sel["layer"].astype(str) == ALL]
    rows, extra = [], {}
    for (crit, b), pick in _picks(runs, sel, budget).items():
        scored = types[(types["criterion"] == crit) & types["component"].isin(cube.sets)]
        row, arrays = _criterion_row(cube, reps, shares, scored, crit, b, pick)
        rows.append(row)
        extra[(crit, b)] = arrays
    return rows, set_rows, extra


def _set_rows(cube: Cube, reps, shares, budget) -> list[dict]:
    return [
        {"train": s, "share": shares[k], "feasible": bool(shares[k] <= budget + 1e-12),
         "best_lr": reps.lr[0, k], "val_acc": reps.val[0, k], "test_acc": reps.test[0, k],
         "n_seeds": int(np.isfinite(reps.per_seed[k]).sum()),
         "lrs": ", ".join(f"{v:g}" for v, present in zip(cube.lrs, ~np.isnan(cube.val[k]).all(1),
                                                          strict=True) if present)}
        for k, s in enumerate(cube.sets)
    ]  # fmt: skip


def _criterion_row(cube, reps, shares, scored, crit, budget, pick):
    """One evidence row and its replicates (rho, regret: (B,)) and per-seed units."""
    sign = 1.0 if HIGHER_FIRST[crit] else -1.0
    comps = [cube.sets.index(c) for c in scored["component"]]
    score = sign * scored["score"].to_numpy(dtype=float)
    ok = np.isfinite(score)
    comps, score = [c for c, keep in zip(comps, ok, strict=True) if keep], score[ok]
    size = np.log(scored["params"].to_numpy(dtype=float)[ok])
    acc = reps.test[:, comps]  # (B, n)
    rho = np.array([stats.rank_correlation(score, a) for a in acc])
    partial = np.array([stats.partial_rank_correlation(score, a, size) for a in acc])
    feasible = np.flatnonzero(shares <= budget + 1e-12)
    val = np.where(np.isnan(reps.val[:, feasible]), -np.inf, reps.val[:, feasible])
    oracle = feasible[np.argmax(val, axis=1)] if len(feasible) else None
    k_pick = cube.sets.index(pick) if pick in cube.sets else None
    regret = np.full(len(rho), np.nan)
    if oracle is not None and k_pick is not None:
        regret = reps.test[np.arange(len(rho)), oracle] - reps.test[:, k_pick]
    kendall = (float(sps.kendalltau(score, acc[0]).statistic)
               if np.isfinite(rho[0]) else math.nan)  # fmt: skip
    row = {"criterion": crit, "budget": budget, "n": len(comps), "spearman": rho[0],
           **_interval("spearman", rho), "kendall": kendall, "partial_spearman": partial[0],
           **_interval("partial", partial),
           "oracle": cube.sets[oracle[0]] if oracle is not None else None,
           "oracle_lr": reps.lr[0, oracle[0]] if oracle is not None else math.nan,
           "oracle_acc": reps.test[0, oracle[0]] if oracle is not None else math.nan,
           "pick": pick, "pick_lr": reps.lr[0, k_pick] if k_pick is not None else math.nan,
           "pick_acc": reps.test[0, k_pick] if k_pick is not None else math.nan,
           "regret": regret[0], **_interval("regret", regret), "resampled": cube.unit}  # fmt: skip
    units = [(score, reps.per_seed[comps, s]) for s in range(len(cube.seeds))]
    return row, {"rho": rho, "regret": regret, "units": units}


def _interval(name: str, replicates: np.ndarray) -> dict[str, float]:
    lo, hi = stats.percentile_interval(replicates[1:])
    return {f"{name}_lo": lo, f"{name}_hi": hi}


def criterion_evidence(
    runs: pd.DataFrame,
    selection: pd.DataFrame,
    budget: float,
    predictions: dict[str, pd.DataFrame] | None = None,
    replicates: int = REPLICATES,
) -> dict[str, pd.DataFrame]:
    """{set_lrs, evidence, evidence_summary, findings} (module docstring) from the run table,
    the per-image records by run_id, and the selection scores; budget: the fraction of the
    block parameters a pick may use (an auto:criterion:budget label brings its own)."""
    runs = runs if "trained" in runs else runs.assign(trained=runs["train"])
    rows, set_rows, summary = [], [], {}
    cells = selection.groupby(["model", "dataset"], sort=False)
    for i, ((model, dataset), sel) in enumerate(cells):
        part = runs[(runs["model"] == model) & (runs["dataset"] == dataset)]
        if part.empty:
            continue
        keys = {"model": model, "dataset": dataset}
        cell_rows, cell_sets, extra = cell_evidence(part, sel, budget, predictions, replicates, i)
        rows += [{**keys, **r} for r in cell_rows]
        set_rows += [{**keys, **r} for r in cell_sets]
        for (crit, b), arrays in extra.items():
            summary.setdefault((model, crit, b), []).append(arrays)
    evidence = pd.DataFrame(rows, columns=EVIDENCE_COLUMNS)
    summ = evidence_summary(summary)
    return {
        "set_lrs": pd.DataFrame(set_rows),
        "evidence": evidence,
        "evidence_summary": summ,
        "findings": findings(summ, evidence),
    }


def evidence_summary(cells: dict[tuple, list[dict]]) -> pd.DataFrame:
    """Per (model, criterion, budget): replicate-wise means over its datasets (each dataset
    resampled on its own), the permutation test over (dataset, seed) units, and Holm's
    adjustment over the criteria of each model."""
    rows = []
    for (model, crit, b), arrays in cells.items():
        rho, regret = (np.stack([a[k] for a in arrays]).mean(axis=0) for k in ("rho", "regret"))
        units = [u for a in arrays for u in a["units"]]
        rows.append(
            {"model": model, "criterion": crit, "budget": b, "n_datasets": len(arrays),
             "n_units": len(units), "spearman_mean": rho[0], **_interval("spearman", rho),
             "perm_p": stats.permutation_p(units), "regret_mean": regret[0],
             **_interval("regret", regret)}
        )  # fmt: skip
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["holm_p"] = np.nan
    for _, part in out.groupby("model", sort=False):
        out.loc[part.index, "holm_p"] = stats.holm(part["perm_p"].tolist())
    return out


def findings(summary: pd.DataFrame, evidence: pd.DataFrame) -> pd.DataFrame:
    """One sentence per (model, criterion, budget): its correlation and its regret, each said
    to be inside or outside the noise (a 95% interval that holds 0, a Holm p >= 0.05)."""
    lines = []
    for r in summary.itertuples(index=False):
        where = f"{r.model}, {r.criterion} at budget {r.budget:g}, over {r.n_datasets} datasets"
        if math.isnan(r.spearman_mean):
            corr = "no correlation (fewer than 3 components, or constant scores)"
        else:
            noisy = not (r.spearman_lo > 0 or r.spearman_hi < 0) or not r.holm_p < 0.05
            corr = (f"Spearman {r.spearman_mean:+.2f} (95% interval {r.spearman_lo:+.2f} to "
                    f"{r.spearman_hi:+.2f}; permutation p {r.perm_p:.2g}, Holm {r.holm_p:.2g}, "
                    f"over {r.n_units} (dataset, seed) units): "
                    + ("inside the noise" if noisy else "outside the noise"))  # fmt: skip
        if math.isnan(r.regret_mean):
            reg = "no regret (its pick was not run, or no set fits the budget)"
        else:
            zero = r.regret_lo <= 0 <= r.regret_hi
            reg = (f"regret {r.regret_mean:.2f} points (interval {r.regret_lo:.2f} to "
                   f"{r.regret_hi:.2f}): " + ("inside the noise: the pick is not told apart from "
                   "the best feasible set" if zero else "outside the noise"))  # fmt: skip
        lines.append({"finding": f"{where}: {corr}; {reg}."})
    unit = ", ".join(sorted(set(evidence["resampled"]))) if len(evidence) else ""
    if lines:
        lines.append({"finding": f"Intervals resample {unit} per dataset (seeds paired across "
                      "train sets, test images shared by every run); the criteria's scores and "
                      "the datasets are held fixed."})  # fmt: skip
    return pd.DataFrame(lines, columns=["finding"])


def rival_table(best: pd.DataFrame, runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per model and train set: mean accuracy, mean trainable parameters, n datasets;
    paired tests of auto:plasticity against every other train set across datasets)."""
    params = runs.groupby(["model", "dataset", "train"])["trainable_params"].mean()
    merged = best.join(params, on=["model", "dataset", "train"])
    table = merged.groupby(["model", "train"], sort=False).agg(
        mean_acc=("mean", "mean"),
        trainable_params=("trainable_params", "mean"),
        n_datasets=("dataset", "nunique"),
    )
    tests = stats.paired_tests(best, reference=AUTO_REFERENCE, groups=["model"])
    return stats.with_trained(table.reset_index(), runs, ["model", "train"]), tests


def evidence_tables(
    best: pd.DataFrame,
    runs: pd.DataFrame,
    selection: pd.DataFrame,
    budget: float,
    predictions: dict[str, pd.DataFrame] | None = None,
    replicates: int = REPLICATES,
) -> dict[str, pd.DataFrame]:
    """Every evidence table a study's tables allow (empty dict without selection scores)."""
    if selection.empty or runs.empty or "model" not in runs:
        return {}
    out = {"selection": selection}
    out.update(criterion_evidence(runs, selection, budget, predictions, replicates))
    if not best.empty and "trainable_params" in runs:
        out["rivals"], out["rival_tests"] = rival_table(best, runs)
    return out


def heat(evidence: pd.DataFrame, value: str = "spearman") -> pd.DataFrame:
    """criterion x dataset matrix of `value` (the figure's data)."""
    table = evidence.pivot_table(index="criterion", columns="dataset", values=value, aggfunc="mean")
    return table.astype(np.float64)


def study_evidence(states, spec, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """aggregate's hook: the evidence tables of a study whose auto runs wrote selection.csv,
    with the finished runs' per-image test records."""
    from vitplas.training.trainsets import SelectOptions

    done = [item for item in states if item.state == "done"]
    budget = spec.base.get("select", {}).get("budget", SelectOptions().budget)
    selection = selection_table([(item.run.config, item.folder) for item in done])
    runs = tables.get("runs", pd.DataFrame())
    return evidence_tables(
        tables.get("best", pd.DataFrame()), runs, selection, budget, read_predictions(done)
    )


def read_predictions(done) -> dict[str, pd.DataFrame]:
    """{run_id: per-image test record} of the finished runs that wrote one (read verified)."""
    from vitplas.training.finetune import PREDICTIONS

    out = {}
    for item in done:
        if (Path(item.folder) / PREDICTIONS).is_file():
            out[item.run.run_id] = read_table(item.folder, PREDICTIONS)
    return out


REPORT_SECTIONS = {
    "findings": "What the evidence says, in words (inside the noise: a 95% interval that holds "
    "0, or a Holm-adjusted p >= 0.05)",
    "evidence_summary": "Criteria across datasets: mean Spearman with the single components' "
    "accuracies and mean regret (points), 95% bootstrap intervals, permutation test, Holm",
    "evidence": "Criteria per dataset (oracle: the best feasible set at the budget, chosen on "
    "validation; pick: the criterion's set; both at their own best-validation lr)",
    "set_lrs": "Train sets: share of the block parameters, the lr that won on validation, "
    "accuracies there",
    "rivals": "Train sets and rivals: mean accuracy, trainable parameters and the sets trained "
    "across datasets",
    "rival_tests": "auto:plasticity vs each train set across datasets (paired t-test two-sided; "
    "Wilcoxon one-sided)",
}


def report_sections(tables: dict[str, pd.DataFrame]) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) of every evidence table present, in reading order."""
    return [(t, tables[n]) for n, t in REPORT_SECTIONS.items() if n in tables and len(tables[n])]


FIGURES = {  # value: (title, higher is better)
    "spearman": ("Spearman: criterion score vs finetuned accuracy", True),
    "regret": ("Regret (points): best feasible set (chosen on validation) - pick", False),
}


def evidence_figures(tables: dict[str, pd.DataFrame], out: Path) -> dict[str, list[Path]]:
    """criterion x dataset heat maps of Spearman correlation and regret, titled with the
    models and the number of components ranked."""
    from vitplas.plots import style
    from vitplas.plots.selection import criterion_heatmap

    if "evidence" not in tables or tables["evidence"].empty:
        return {}
    ev = tables["evidence"]
    facts = [", ".join(map(str, ev["model"].unique())), f"{int(ev['n'].max())} components"]
    return {
        f"criteria_{v}": criterion_heatmap(
            heat(ev, v), out / f"criteria_{v}", style.titled(title, facts), higher_is_better=up
        )
        for v, (title, up) in FIGURES.items()
        if ev[v].notna().any()
    }
