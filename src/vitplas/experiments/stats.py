"""The paper's summaries of a sweep (PAPER.md section 4), as pure functions over DataFrames.

Input: the tidy run table, one row per run, with a `lr` and a `seed` column, a metric column
(e.g. `test_acc`) and key columns (e.g. model, dataset, train). Conventions carried over from
the paper's protocol: the std over seeds is the population std (ddof=0); the best lr is the
one with the highest seed-mean of the selection metric (`select_by`), the smallest lr winning a
tie; the paired t-test is two-sided and the Wilcoxon signed-rank test one-sided (reference >
other).

The 95% confidence interval of a seed-mean (`ci95`, a half-width) is q * s / sqrt(n) with s the
sample std (ddof=1), by the one CI rule of vitplas.intervals: over a few seeds the normal
quantile 1.96 is too narrow, so q is Student's t quantile with n - 1 degrees of freedom
whenever n < T_UNTIL (4.30 at n = 3, 3.18 at n = 4), and 1.96 from n = T_UNTIL on (where the
two differ by under 4%); n = 1 has no interval (NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from vitplas.intervals import T_BELOW, quantile95  # the one CI rule

T_UNTIL = T_BELOW  # below this many seeds the CI uses Student's t quantile, from it on 1.96


def ci95_quantile(n: int) -> float:
    """The two-sided 95% quantile for a mean of n values (vitplas.intervals.quantile95):
    t(0.975, n - 1) below T_UNTIL, 1.96 from it on; NaN for n < 2."""
    return float(quantile95(n))


def ci95_halfwidth(values: np.ndarray) -> float:
    """Half-width of the 95% CI of the mean of `values`: quantile x sample std / sqrt(n)."""
    n = len(values)
    if n < 2:
        return float("nan")
    return ci95_quantile(n) * float(np.std(values, ddof=1)) / float(np.sqrt(n))


def seed_stats(table: pd.DataFrame, keys: Sequence[str], metric: str) -> pd.DataFrame:
    """Per (keys, lr): mean, std (ddof=0), n and ci95 (module docstring) of `metric` over
    seeds."""
    grouped = table.groupby([*keys, "lr"], sort=True, dropna=False)[metric]
    out = grouped.agg(
        mean="mean",
        std=lambda v: float(np.std(v.to_numpy(), ddof=0)),
        n="count",
        ci95=lambda v: ci95_halfwidth(v.to_numpy()),
    )
    return out.reset_index()


def best_lr(
    table: pd.DataFrame, keys: Sequence[str], metric: str = "test_acc", select_by: str | None = None
) -> pd.DataFrame:
    """Per keys: the lr with the best seed-mean of `select_by` (default: `metric`), and the
    seed-mean, std, n and ci95 of `metric` at that lr. Columns: *keys, best_lr, mean, std, n,
    ci95."""
    select_by = select_by or metric
    picked = seed_stats(table, keys, select_by)
    # highest mean first, then smallest lr: a tie goes to the smallest lr
    picked = picked.sort_values([*keys, "mean", "lr"], ascending=[True] * len(keys) + [False, True])
    picked = picked.groupby(list(keys), sort=True, dropna=False).head(1)[[*keys, "lr"]]
    values = seed_stats(table, keys, metric).merge(picked, on=[*keys, "lr"])
    values = values.rename(columns={"lr": "best_lr"})
    return values[[*keys, "best_lr", "mean", "std", "n", "ci95"]].reset_index(drop=True)


def lr_gap(table: pd.DataFrame, keys: Sequence[str], metric: str = "test_acc") -> pd.DataFrame:
    """LR sensitivity per keys: max - min over lrs of the seed-mean. Columns: *keys, gap, n_lrs."""
    means = seed_stats(table, keys, metric)
    grouped = means.groupby(list(keys), sort=True, dropna=False)["mean"]
    out = grouped.agg(gap=lambda v: float(v.max() - v.min()), n_lrs="count")
    return out.reset_index()


def with_trained(frame: pd.DataFrame, source: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """`frame` with a `trained` column: per `keys`, the distinct sets the rows of `source`
    trained (its `trained` column), sorted and ' | '-joined; `frame` as is when `source` has
    no such column. Two grid labels that trained the same set show the same text."""
    if "trained" not in source or "trained" in frame:
        return frame
    keys = [k for k in keys if k in source and k in frame]
    sets = source.dropna(subset=["trained"]).groupby(keys, sort=False, dropna=False)["trained"]
    joined = sets.agg(lambda v: " | ".join(sorted(set(v)))).reset_index()
    return frame.merge(joined, on=keys, how="left")


def relative_gain(
    best: pd.DataFrame, probe: pd.DataFrame, on: Sequence[str], value: str = "mean"
) -> pd.DataFrame:
    """(finetune - probe) / probe, joined on `on` (e.g. ['dataset']).

    `probe` has the columns of `on` plus `probe_acc`; the result adds probe_acc and gain.
    """
    merged = best.merge(probe[[*on, "probe_acc"]], on=list(on), how="inner")
    merged["gain"] = (merged[value] - merged["probe_acc"]) / merged["probe_acc"]
    return merged


def paired_tests(
    best: pd.DataFrame,
    *,
    component: str = "train",
    pair_on: str = "dataset",
    reference: str = "mha",
    value: str = "mean",
    groups: Sequence[str] = (),
) -> pd.DataFrame:
    """Reference component vs each other one, paired over `pair_on` (datasets).

    Columns: *groups, reference, other, n, mean_diff, t_stat, t_p (two-sided paired t-test),
    w_stat, w_p (one-sided Wilcoxon signed-rank, alternative: reference > other).
    """
    rows = []
    grouped = best.groupby(list(groups), sort=True) if groups else [((), best)]
    for key, part in grouped:
        wide = part.pivot_table(index=pair_on, columns=component, values=value, aggfunc="first")
        if reference not in wide:
            continue
        for other in [c for c in wide.columns if c != reference]:
            pair = wide[[reference, other]].dropna()
            row = dict(zip(groups, key if isinstance(key, tuple) else (key,), strict=True))
            row.update(_test_pair(pair[reference].to_numpy(), pair[other].to_numpy()))
            rows.append({**row, "reference": reference, "other": other})
    columns = [*groups, "reference", "other", "n", "mean_diff", "t_stat", "t_p", "w_stat", "w_p"]
    return pd.DataFrame(rows, columns=columns)


def _test_pair(ref: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Both tests on paired samples; NaN where a test is undefined (n < 2, all equal)."""
    n = len(ref)
    out = {"n": n, "mean_diff": float(np.mean(ref - other)) if n else float("nan")}
    nan = float("nan")
    out.update(t_stat=nan, t_p=nan, w_stat=nan, w_p=nan)
    if n < 2:
        return out
    diff = ref - other
    if np.ptp(diff) > 0:
        t = stats.ttest_rel(ref, other)
        out.update(t_stat=float(t.statistic), t_p=float(t.pvalue))
    if np.any(diff != 0):
        w = stats.wilcoxon(ref, other, alternative="greater")
        out.update(w_stat=float(w.statistic), w_p=float(w.pvalue))
    return out


# ---- resampling statistics of a selection study (vitplas.experiments.evidence) ---------------
def rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho of two vectors; NaN below 3 points or when one side is constant."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def partial_rank_correlation(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    """Spearman's rho of x and y with z partialled out: the Pearson correlation of the ranks'
    residuals after a least-squares fit on z's ranks (with intercept). NaN below 4 points or
    when a residual is constant (z explains one side entirely)."""
    if len(x) < 4:
        return float("nan")
    rx, ry, rz = (stats.rankdata(v) for v in (x, y, z))
    design = np.column_stack([np.ones(len(rz)), rz])
    res = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in (rx, ry)]
    if min(np.ptp(r) for r in res) < 1e-9:
        return float("nan")
    return float(np.corrcoef(res[0], res[1])[0, 1])


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap replicates (NaN replicates left
    out); (NaN, NaN) when fewer than 100 replicates are finite."""
    finite = np.asarray(samples, dtype=float)
    finite = finite[np.isfinite(finite)]
    if len(finite) < 100:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN ones stay NaN and do not count
    in the family): p_(i) * (m - i + 1), made monotone, capped at 1."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    running, m = 0.0, len(order)
    for i, k in enumerate(order):
        running = max(running, min(1.0, p[k] * (m - i)))
        out[k] = running
    return out.tolist()


def permutation_p(units, permutations: int = 9999, seed: int = 0) -> float:
    """Two-sided Monte-Carlo p-value of the mean Spearman over `units` (score vector, accuracy
    vector; e.g. one per (dataset, seed)): the accuracies permuted among the components within
    each unit, independently (the null: the scores say nothing about the order in any unit);
    (1 + extreme) / (1 + permutations). NaN without a unit of 3+ components that vary."""
    units = [(s, a) for s, a in units
             if len(s) >= 3 and np.all(np.isfinite(a)) and np.ptp(a) and np.ptp(s)]  # fmt: skip
    if not units:
        return float("nan")
    rng = np.random.default_rng(seed)
    observed = np.mean([rank_correlation(s, a) for s, a in units])
    null = np.zeros(permutations)
    for s, a in units:
        rs = stats.rankdata(s)
        shuffled = rng.permuted(np.tile(a, (permutations, 1)), axis=1)
        ra = stats.rankdata(shuffled, axis=1)
        null += _row_corr(rs, ra) / len(units)
    extreme = np.sum(np.abs(null) >= abs(observed) - 1e-12)
    return float((1 + extreme) / (1 + permutations))


def _row_corr(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Pearson correlation of vector x with each row of `rows`."""
    xc = x - x.mean()
    rc = rows - rows.mean(axis=1, keepdims=True)
    return (rc @ xc) / (np.linalg.norm(rc, axis=1) * np.linalg.norm(xc))
