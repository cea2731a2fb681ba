"""Tidy tables of a plasticity run, the component ranking, and the text summary."""

from __future__ import annotations

from typing import Any

import pandas as pd

from vitplas.analysis.bounds import fill_norm_bounds
from vitplas.analysis.estimate import Estimate
from vitplas.constants import THEORETICAL_RANK
from vitplas.runs import RunDir, write_table

LABELS = ("model", "reference", "target", "inputs")
PLASTICITY_COLUMNS = [*LABELS, "layer", "component", "mean", "std", "n", "ci95"]


def plasticity_table(est: Estimate, labels: dict[str, str]) -> pd.DataFrame:
    """Per (layer, component): the tidy table the issue and the plots read. ci95 is the
    half-width of the 95% CI of the mean: t_0.975(n - 1) std / sqrt(n) below n = 30 pairs
    (ratio_stats.T_BELOW), the paper's 1.96 std / sqrt(n) from 30 on."""
    frame = est.frame()
    for key in reversed(LABELS):
        frame.insert(0, key, labels[key])
    return frame[PLASTICITY_COLUMNS]


def pooled_table(est: Estimate, labels: dict[str, str]) -> pd.DataFrame:
    """Per component, pooled over layers (per-pair mean over layers), ranked by mean."""
    frame = est.frame(pooled=True).drop(columns=["layer", "max", "exceed_frac"])
    frame = frame.sort_values("mean", ascending=False).reset_index(drop=True)
    frame["rank"] = range(1, len(frame) + 1)
    ranks = [THEORETICAL_RANK.get(c) for c in frame["component"]]
    frame["theory_rank"] = pd.array(ranks, dtype="Int64")  # an integer, blank where none
    for key in reversed(LABELS):
        frame.insert(0, key, labels[key])
    return frame


def ranking_settled(pooled: pd.DataFrame) -> bool:
    """True when the 95% CIs of every two neighbours in the ranking do not overlap."""
    lo = (pooled["mean"] - pooled["ci95"]).to_numpy()
    hi = (pooled["mean"] + pooled["ci95"]).to_numpy()
    return bool(all(lo[i] > hi[i + 1] for i in range(len(pooled) - 1)))


def bound_ratio_table(est: Estimate, labels: dict[str, str], bounds: pd.DataFrame) -> pd.DataFrame:
    """Measured / bound per (layer, component), with the fraction of pairs above the bound."""
    frame = est.frame().merge(bounds, on=["layer", "component"], how="left")
    frame["ratio"] = frame["mean"] / frame["bound"]
    frame["max_ratio"] = frame["max"] / frame["bound"]
    for key in reversed(LABELS):
        frame.insert(0, key, labels[key])
    keep = ["layer", "component", "mean", "bound", "ratio", "max", "max_ratio", "exceed_frac"]
    extra = ["bound_padded", "radius", "definition", "assumption", "norm_gain", "norm_scale"]
    return frame[[*LABELS, *keep, *[c for c in extra if c in frame]]]


def exceedance_lines(ratio: pd.DataFrame) -> list[str]:
    """One line per component (and run, in a table of several) whose bound some pairs exceed,
    with the bound's assumption in words; [] when every bound held (a bound_ratio table in)."""
    runs = [k for k in LABELS if k in ratio and ratio[k].nunique() > 1]
    lines = []
    above = ratio[ratio["exceed_frac"] > 0]
    for key, rows in above.groupby([*runs, "component"], sort=False):
        key = key if isinstance(key, tuple) else (key,)
        of = ratio
        for column, value in zip([*runs, "component"], key, strict=True):
            of = of[of[column] == value]
        worst = rows.loc[rows["exceed_frac"].idxmax()]
        where = ", ".join(map(str, key))
        lines.append(
            f"{where}: pairs above the bound in {len(rows)} of {len(of)} layers "
            f"(up to {worst['exceed_frac']:.0%} of pairs, layer {worst['layer']}; "
            f"max measured/bound {rows['max_ratio'].max():.3g}); bound {worst['definition']}, "
            f"assumes {worst.get('assumption') or 'nothing stated'}"
        )
    return lines


def write_all(
    run: RunDir,
    est: Estimate,
    labels: dict[str, str],
    bounds: pd.DataFrame | None,
    figures: bool = True,
    facts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write every table (CSV + Parquet) and figure of a run; return what the summary needs.
    `facts`: what the figures' titles name beyond the tables (plots.plasticity.title)."""
    from vitplas.plots import plasticity as plots

    per_layer = plasticity_table(est, labels)
    pooled = pooled_table(est, labels)
    files = [
        *write_table(per_layer, run / "plasticity"),
        *write_table(pooled, run / "plasticity_pooled"),
    ]
    exceedances: list[str] = []
    if bounds is not None:
        if est.norm_scale is not None:  # data-scale norm bounds: s_min came with the pairs
            bounds = fill_norm_bounds(bounds, est.norm_scale, est.components)
        bound_frame = bounds.copy()
        for key in reversed(LABELS[:1]):
            bound_frame.insert(0, key, labels[key])
        ratio = bound_ratio_table(est, labels, bounds)
        exceedances = exceedance_lines(ratio)
        files += [
            *write_table(bound_frame, run / "bounds"),
            *write_table(ratio, run / "bound_ratio"),
        ]
    if figures:
        figs = run / "figures"
        files += plots.plasticity_box(per_layer, figs / "plasticity_box", facts)
        files += plots.plasticity_depth(per_layer, figs / "plasticity_depth", facts)
        if bounds is not None:
            files += plots.bounds_per_layer(bound_frame, figs / "bounds", facts)
            files += plots.bound_ratio(ratio, figs / "bound_ratio", facts)
    return {
        "files": [str(p.relative_to(run.path)) for p in files],
        "pooled": pooled,
        "ranking": list(pooled["component"]),
        "settled": ranking_settled(pooled),
        "exceedances": exceedances,
    }


def summary_text(result: dict[str, Any], pooled: pd.DataFrame) -> str:
    """The terminal summary as plain text: what was measured, then the ranking with CIs."""
    lines = [
        f"model:     {result['model']} ({result['model_description']})",
        f"reference: {result['reference_label']}",
        f"target:    {result['target_label']}",
        f"pairs:     {result['pairs']} ({result['inputs']} inputs)"
        + (", stopped early: CIs narrow enough" if result["stopped_early"] else ""),
        "",
        f"{'rank':>4}  {'component':<9} {'mean':>9} {'95% CI':>9}  {'theory':>6}",
    ]
    for row in pooled.itertuples(index=False):
        theory = "-" if pd.isna(row.theory_rank) else str(int(row.theory_rank))
        lines.append(
            f"{row.rank:>4}  {row.component:<9} {row.mean:>9.4g} {'±':>2}{row.ci95:>7.2g}  "
            f"{theory:>6}"
        )
    verdict = "yes" if result["settled"] else "no (neighbouring CIs overlap: add --pairs)"
    lines += ["", f"ranking settled by the 95% CIs: {verdict}"]
    if result.get("exceedances"):
        lines += ["", "bounds exceeded (the bound's assumption does not hold for those pairs):"]
        lines += [f"  {line}" for line in result["exceedances"]]
    return "\n".join(lines) + "\n"
