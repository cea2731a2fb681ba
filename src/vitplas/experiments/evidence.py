"""How well each criterion predicts finetuning: the evidence tables of a selection study.

Inputs are tidy tables: `best` (per model, dataset, train set: the seed-mean accuracy `mean` at
the best lr; aggregate's table) and `selection` (per model, dataset: the criteria's scores of the
component types, layer 'all', as selection.csv; gathered from the study's train=[auto] runs).

    criterion_evidence   per (model, dataset, criterion): Spearman and Kendall correlation
                         between the criterion's scores (sign-flipped where lower ranks first)
                         and the accuracies of the single components finetuned; the oracle (the
                         best of those components that fit the budget), the criterion's pick
                         (its train=[auto:criterion] run; else its top component's run), what
                         the pick trained (`pick_trained`, the run's resolved set: two criteria
                         that picked the same set read the same) and the regret = oracle - pick,
                         in accuracy points
    evidence_summary     per (model, criterion) across datasets: mean and std of each
    rival_table          per (model, train set): mean accuracy and trainable parameters across
                         datasets, the sets it trained, paired tests against
                         train=[auto:plasticity]
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from vitplas.experiments import stats
from vitplas.selection.criteria import ALL, HIGHER_FIRST

AUTO_REFERENCE = "auto:plasticity"
EVIDENCE_COLUMNS = ["model", "dataset", "criterion", "n", "spearman", "kendall", "oracle",
                    "oracle_acc", "pick", "pick_trained", "pick_acc", "regret"]  # fmt: skip


def selection_table(folders: list[tuple[dict, Path]]) -> pd.DataFrame:
    """selection.csv of finished runs, each with its (model, dataset) keys; duplicates dropped
    (the scores do not depend on the run's seed or lr)."""
    parts = []
    for keys, folder in folders:
        path = Path(folder) / "selection.csv"
        if path.is_file():
            frame = pd.read_csv(path)
            parts.append(frame.assign(**{k: keys[k] for k in ("model", "dataset") if k in keys}))
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    return table.drop_duplicates(["model", "dataset", "criterion", "layer", "component"])


def _correlations(scores: np.ndarray, acc: np.ndarray) -> tuple[float, float]:
    """(Spearman, Kendall); NaN below 3 points or when one side is constant."""
    if len(scores) < 3 or np.ptp(scores) == 0 or np.ptp(acc) == 0:
        return math.nan, math.nan
    return (
        float(sps.spearmanr(scores, acc).statistic),
        float(sps.kendalltau(scores, acc).statistic),
    )


def criterion_evidence(best: pd.DataFrame, selection: pd.DataFrame, budget: float) -> pd.DataFrame:
    """See the module docstring; budget: the fraction of the block parameters a pick may use."""
    rows = []
    types = selection[selection["layer"].astype(str) == ALL]
    for (model, dataset, crit), part in types.groupby(
        ["model", "dataset", "criterion"], sort=False
    ):
        runs = best[(best["model"] == model) & (best["dataset"] == dataset)].set_index("train")
        acc = runs["mean"]
        trained = runs["trained"] if "trained" in runs else pd.Series(acc.index, index=acc.index)
        scored = part[part["component"].isin(acc.index)]
        sign = 1.0 if HIGHER_FIRST[crit] else -1.0
        rho, tau = _correlations(
            sign * scored["score"].to_numpy(), acc[scored["component"]].to_numpy()
        )
        fits = scored[scored["params"] <= budget * part["params"].sum()]
        oracle = acc[fits["component"]].idxmax() if len(fits) else None
        pick = f"auto:{crit}"
        if pick not in acc.index:
            top = fits.sort_values("rank")["component"]
            pick = top.iloc[0] if len(top) else None
        oracle_acc = float(acc[oracle]) if oracle is not None else math.nan
        pick_acc = float(acc[pick]) if pick is not None else math.nan
        rows.append(
            {"model": model, "dataset": dataset, "criterion": crit, "n": len(scored),
             "spearman": rho, "kendall": tau, "oracle": oracle, "oracle_acc": oracle_acc,
             "pick": pick, "pick_trained": trained.get(pick) if pick is not None else None,
             "pick_acc": pick_acc, "regret": oracle_acc - pick_acc}
        )  # fmt: skip
    return pd.DataFrame(rows, columns=EVIDENCE_COLUMNS)


def evidence_summary(evidence: pd.DataFrame) -> pd.DataFrame:
    """Per (model, criterion): mean and std over datasets of spearman, kendall and regret."""
    if evidence.empty:
        return pd.DataFrame()
    agg = evidence.groupby(["model", "criterion"], sort=False)[["spearman", "kendall", "regret"]]
    out = agg.agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out["n_datasets"] = evidence.groupby(["model", "criterion"], sort=False).size()
    return out.reset_index()


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
    best: pd.DataFrame, runs: pd.DataFrame, selection: pd.DataFrame, budget: float
) -> dict[str, pd.DataFrame]:
    """Every evidence table a study's tables allow (empty dict without selection scores)."""
    if selection.empty or best.empty or "model" not in best:
        return {}
    evidence = criterion_evidence(best, selection, budget)
    rivals, tests = rival_table(best, runs)
    return {
        "selection": selection,
        "evidence": evidence,
        "evidence_summary": evidence_summary(evidence),
        "rivals": rivals,
        "rival_tests": tests,
    }


def heat(evidence: pd.DataFrame, value: str = "spearman") -> pd.DataFrame:
    """criterion x dataset matrix of `value` (the figure's data)."""
    table = evidence.pivot_table(index="criterion", columns="dataset", values=value, aggfunc="mean")
    return table.astype(np.float64)


def study_evidence(states, spec, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """aggregate's hook: the evidence tables of a study whose auto runs wrote selection.csv."""
    from vitplas.training.trainsets import SelectOptions

    done = [(item.run.config, item.folder) for item in states if item.state == "done"]
    budget = spec.base.get("select", {}).get("budget", SelectOptions().budget)
    runs = tables.get("runs", pd.DataFrame())
    return evidence_tables(tables.get("best", pd.DataFrame()), runs, selection_table(done), budget)


REPORT_SECTIONS = {
    "evidence_summary": "Criteria across datasets: correlation with the finetuned accuracies of "
    "the components, regret of the pick (accuracy points)",
    "evidence": "Criteria per dataset (oracle: best single component within the budget; "
    "pick_trained: what the pick's run trained)",
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
    "regret": ("Regret (points): best single component in budget - pick", False),
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
