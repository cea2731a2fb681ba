"""Tidy tables of a plasticity run, the component ranking, the bound lines and the text summary."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vitplas.analysis.bound_table import fill_data_bounds
from vitplas.analysis.bounds import ASSUMPTIONS
from vitplas.analysis.estimate import Estimate
from vitplas.analysis.pairs import TEXTS
from vitplas.constants import THEORETICAL_RANK
from vitplas.intervals import T_BELOW
from vitplas.runs import RunDir, write_table

LABELS = ("model", "reference", "target", "inputs")
PLASTICITY_COLUMNS = [*LABELS, "layer", "component", "mean", "std", "n", "units", "ci95"]
PAPER_KINDS = ("signed", "mha-paper", "linear")  # kinds that are the paper's bound itself
FREE_KINDS = ("data", "mha-data", "linear")  # kinds that assume nothing


def plasticity_table(est: Estimate, labels: dict[str, str]) -> pd.DataFrame:
    """Per (layer, component): the tidy table the issue and the plots read. n: pairs; units:
    the independent units the CI rests on (ratio_stats.py: min of the reference and target
    sources seen; the pairs when none are known); ci95: the half-width of the 95% CI of the
    mean, two-way clustered by those units, Student's t with units - 1 degrees of freedom
    below 30 units (vitplas.intervals), 1.96 from 30 on."""
    frame = est.frame()
    for key in reversed(LABELS):
        frame.insert(0, key, labels[key])
    return frame[PLASTICITY_COLUMNS]


def pooled_table(est: Estimate, labels: dict[str, str]) -> pd.DataFrame:
    """Per component, pooled over layers (per-pair mean over layers), ranked by mean."""
    frame = est.frame(pooled=True).drop(
        columns=["layer", "max", "exceed_frac", "paper_exceed_frac"]
    )
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
    """Measured / bound per (layer, component), with the fraction of pairs above the bound
    and whether its assumptions held; the paper's bound beside (paper_*)."""
    frame = est.frame().merge(bounds, on=["layer", "component"], how="left")
    frame["ratio"] = frame["mean"] / frame["bound"]
    frame["max_ratio"] = frame["max"] / frame["bound"]
    frame["paper_max_ratio"] = frame["max"] / frame["paper_bound"]
    for key in reversed(LABELS):
        frame.insert(0, key, labels[key])
    keep = ["layer", "component", "mean", "bound", "ratio", "max", "max_ratio", "exceed_frac"]
    keep += ["held", "paper_bound", "paper_max_ratio", "paper_exceed_frac", "paper_held"]
    extra = ["bound_padded", "radius", "r_max", "query_bias", "definition", "assumption"]
    extra += ["kind", "norm_gain", "norm_scale"]
    return frame[[*LABELS, *keep, *[c for c in extra if c in frame]]]


def _share(value: float) -> str:
    """A fraction of pairs for people: 0% only when none."""
    if value == 0:
        return "0%"
    return "<0.1%" if value < 0.001 else f"{value:.1%}" if value < 0.1 else f"{value:.0%}"


def _held(values: pd.Series) -> str:
    known = [v for v in values if v is not None and not pd.isna(v)]
    if not known:
        return "assumptions not checked (no measured data)"
    broken = sum(1 for v in known if not v)
    return f"assumptions held in {len(known) - broken} of {len(known)} layers"


def _one_bound(rows: pd.DataFrame, frac: str, held: str | None) -> str:
    """The pairs above one bound over a component's layers, and its assumptions (held: the
    column saying whether they held; None: the bound assumes nothing)."""
    if held is None:
        checked = "no assumption"
    else:
        checked = _held(rows[held] if held in rows else pd.Series([None] * len(rows)))
    if rows[frac].isna().all():
        return f"pairs not counted against it, {checked}"
    above = rows[rows[frac] > 0]
    if not len(above):
        return f"0% of pairs above it in all {len(rows)} layers, {checked}"
    worst = above.loc[above[frac].idxmax()]
    return (
        f"up to {_share(worst[frac])} of pairs above it (layer {worst['layer']}; "
        f"{len(above)} of {len(rows)} layers), {checked}"
    )


def bound_lines(ratio: pd.DataFrame) -> list[str]:
    """One line per component (and run, in a table of several) with a bound: the fraction of
    pairs above the configured bound and whether its assumptions held on the measured data,
    then the same for the paper's bound beside where it differs. [] without bounds."""
    if "exceed_frac" not in ratio:
        return []
    runs = [k for k in LABELS if k in ratio and ratio[k].nunique() > 1]
    lines = []
    defined = ratio[ratio["bound"].notna()] if "bound" in ratio else ratio
    for key, rows in defined.groupby([*runs, "component"], sort=False):
        key = key if isinstance(key, tuple) else (key,)
        kind = rows["kind"].iloc[0] if "kind" in rows else ""
        said = rows["assumption"].iloc[0] if "assumption" in rows else ASSUMPTIONS.get(kind)
        free = kind in FREE_KINDS and said == ASSUMPTIONS.get(kind)
        held = None if free else "held"  # text MHA: one real length per pair, checked
        line = f"{', '.join(map(str, key))} ({kind or 'bound'}): "
        if infinite := int(np.isposinf(rows["bound"].astype(float)).sum()):
            line += (
                f"no finite bound in {infinite} of {len(rows)} layers (text pairs of different "
                "real lengths: x's own tokens move f(x) where x and y agree; pair_lengths=equal "
                "pairs texts of one length); "
            )
        line += _one_bound(rows, "exceed_frac", held)
        if kind not in PAPER_KINDS and "paper_exceed_frac" in rows:
            line += "; the paper's: " + _one_bound(rows, "paper_exceed_frac", "paper_held")
        lines.append(line)
    return lines


def unit_notes(units: dict | None) -> list[str]:
    """A note for each stream whose independent units are few (< 30: a CI on them is wide
    and uses Student's t), or that the pairs are taken as independent (no unit ids)."""
    if units is None:
        return ["CIs take every pair as independent (no image ids: tensors or loaders)"]
    notes = []
    df = min(count for count, _ in units.values()) - 1  # the CI's t: the smaller stream's
    for stream, (count, what) in units.items():
        if what == TEXTS:
            notes.append(
                f"the {stream} stream's CI units are its distinct texts ({count} in the pairs): "
                "a text it holds twice is one unit"
            )
        if count < 2:
            notes.append(
                f"the {stream} stream has {count} independent unit ({what}): no 95% CI (nan), "
                "which needs 2 or more; draw its pairs from more sources"
            )
        elif count < T_BELOW:
            notes.append(
                f"the {stream} stream has {count} independent units ({what}): the 95% CIs "
                f"rest on them (Student's t, {df} degrees of freedom), not on the pairs"
            )
    return notes


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
    checked: list[str] = []
    if bounds is not None:  # data bounds at the token extremes that came with the pairs
        bounds = fill_data_bounds(
            bounds, est.components, est.norm_scale, est.token_max, est.longest
        )
        bound_frame = bounds.copy()
        for key in reversed(LABELS[:1]):
            bound_frame.insert(0, key, labels[key])
        ratio = bound_ratio_table(est, labels, bounds)
        exceedances = exceedance_lines(ratio)
        checked = bound_lines(ratio)
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
        "bound_lines": checked,
        "notes": unit_notes(est.units),
        "units": None if est.units is None else {k: v[0] for k, v in est.units.items()},
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
        f"{'rank':>4}  {'component':<9} {'mean':>9} {'95% CI':>9}  {'units':>5}  {'theory':>6}",
    ]
    for row in pooled.itertuples(index=False):
        theory = "-" if pd.isna(row.theory_rank) else str(int(row.theory_rank))
        units = getattr(row, "units", row.n)
        lines.append(
            f"{row.rank:>4}  {row.component:<9} {row.mean:>9.4g} {'±':>2}{row.ci95:>7.2g}  "
            f"{units:>5}  {theory:>6}"
        )
    verdict = "yes" if result["settled"] else "no (neighbouring CIs overlap: add --pairs)"
    lines += ["", f"ranking settled by the 95% CIs: {verdict}"]
    lines += [f"note: {note}" for note in result.get("notes") or []]
    if result.get("bound_lines"):
        lines += ["", "bounds (pairs above each; assumptions checked on the measured data):"]
        lines += [f"  {line}" for line in result["bound_lines"]]
    if result.get("exceedances"):
        lines += ["", "bounds exceeded (the bound's assumption does not hold for those pairs):"]
        lines += [f"  {line}" for line in result["exceedances"]]
    return "\n".join(lines) + "\n"
