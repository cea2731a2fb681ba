"""Figures of plasticity and bounds, drawn from tidy tables only (never from models or runs).

Each figure has a builder (`*_figure`, returns an open matplotlib Figure) and a writer (saves
PNG + PDF, returns the paths). A table that mixes several targets (or models, datasets, radii)
gets one panel per series, never one zig-zag line through them; one legend sits right of the
panels. Components appear in the order of their theoretical rank (THEORETICAL_RANK), then any
others (LayerScale) in table order. Axis limits come from the data; layer ticks are integers.
Under each title, one line names the measurement (model, data, inputs mode, protocol, pairs:
`title`), so figures of different runs never read alike. A component with no finite value gets
no line and a note under the figure saying why (`undrawn_note`). `compare_base_figure` draws a
finetuned run against its base, from `--compare-base`'s joined table.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from vitplas.constants import THEORETICAL_RANK
from vitplas.numbers import ratio_text
from vitplas.plots.style import (
    MEDIAN_PROPS,
    color,
    integer_ticks,
    label,
    legend_outside,
    line_style,
    new_figure,
    note,
    styled,
    titled,
    write,
)

SERIES = ["model", "reference", "target", "dataset", "inputs"]  # what can tell series apart
BASE_LOOK = {"color": "#bbbbbb", "lw": 6.0, "solid_capstyle": "round"}  # a wide grey under the
# finetuned line: where the two agree it is a halo around it


def component_order(components) -> list[str]:
    """Theoretical rank first (MHA, FC1, FC2, LN2, LN1), then the rest in the order given."""
    seen = list(dict.fromkeys(components))
    ranked = sorted((c for c in seen if c in THEORETICAL_RANK), key=THEORETICAL_RANK.get)
    return ranked + [c for c in seen if c not in THEORETICAL_RANK]


def _wide_range(values: np.ndarray) -> bool:
    values = values[np.isfinite(values) & (values > 0)]
    return len(values) > 1 and values.max() / values.min() > 50


def series(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per series: one per value of the label columns that vary; rows that still
    repeat a (layer, component) (bounds at several radii) are split by radius."""
    keys = [k for k in SERIES if k in frame.columns and frame[k].nunique() > 1]
    parts = [("", frame)] if not keys else [
        (" / ".join(map(str, k if isinstance(k, tuple) else (k,))), p)
        for k, p in frame.groupby(keys, sort=False)
    ]  # fmt: skip
    out = []
    for name, part in parts:
        nth = part.groupby(["layer", "component"]).cumcount()
        if nth.max() == 0:
            out.append((name, part))
            continue
        for i in range(int(nth.max()) + 1):
            rows = part[nth == i]
            r = f"r = {rows['radius'].iloc[0]:.3g}" if "radius" in rows else f"set {i + 1}"
            out.append((f"{name} ({r})" if name else r, rows))
    return out


def title(frame: pd.DataFrame, what: str, facts: Mapping[str, object] | None = None) -> str:
    """'what', then the measurement's identity: model, data, inputs mode, protocol, pairs
    (a radius for bounds). Values come from the table's columns (several joined by commas);
    `facts` (from the run's config: protocol, split-labelled streams, pairs) name what the
    table does not hold and win over its columns."""
    facts = dict(facts or {})

    def values(key: str) -> str:
        if key in facts:
            return str(facts[key])
        return ", ".join(map(str, dict.fromkeys(frame[key]))) if key in frame else ""

    parts = [values("model")]
    if values("reference") and values("target"):
        parts.append(f"{values('reference')} vs {values('target')}")
    else:
        parts.append(values("dataset"))
    parts.append(f"{values('inputs')} inputs" if values("inputs") else "")
    parts.append(f"protocol {values('protocol')}" if values("protocol") else "")
    pairs = values("pairs") or values("n")
    parts.append(f"{pairs} pairs" if pairs else "")
    parts.append(f"r = {facts['radius']}" if "radius" in facts else "")
    return titled(what, parts)


def _panels(n: int, size: tuple[float, float], **kw):
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig, axes = new_figure(nrows, ncols, (size[0] * ncols, size[1] * nrows), **kw)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def _finite_components(frame: pd.DataFrame, value: str) -> list[str]:
    return list(frame.loc[np.isfinite(frame[value].to_numpy(dtype=float)), "component"])


def undrawn_note(frame: pd.DataFrame, value: str) -> str:
    """'' when every component has a finite `value`; else which have none (not drawn) and,
    from the table's `definition` column, why: its text up to the first '; ' (the bounds
    tables say why first, then the formula), one line per reason."""
    finite = set(_finite_components(frame, value))
    reasons: dict[str, list[str]] = {}
    for comp in component_order(frame["component"]):
        if comp in finite:
            continue
        why = frame.loc[frame["component"] == comp].get("definition", pd.Series([None])).iloc[0]
        why = why.split("; ")[0].removeprefix("undefined: ") if isinstance(why, str) else ""
        reasons.setdefault(why or f"no finite {value}", []).append(label(comp))
    return "\n".join(f"{', '.join(names)}: no line, {why}" for why, names in reasons.items())


def _lines(frame, value: str, what: str, ylabel: str, band: str | None = None, facts=None):
    """One panel per series, one line per component over layers (CI band from `band`); a
    component with no finite value gets no line and a note under the figure saying why."""
    groups = series(frame)
    fig, axes = _panels(len(groups), (5.0, 3.6), sharey=True)
    for ax, (name, part) in zip(axes.flat, groups, strict=False):
        finite = set(_finite_components(part, value))
        drawn = [c for c in component_order(part["component"]) if c in finite]
        for comp in drawn:
            rows = part[part["component"] == comp].sort_values("layer")
            x, y = rows["layer"].to_numpy(dtype=float), rows[value].to_numpy(dtype=float)
            ax.plot(x, y, **line_style(comp))
            if band is not None:
                ci = rows[band].to_numpy(dtype=float)
                ax.fill_between(x, y - ci, y + ci, color=color(comp), alpha=0.3, lw=0)
        integer_ticks(ax)
        ax.set_title(name)
        ax.set_xlabel("layer (block index)")
    if _wide_range(frame[value].to_numpy(dtype=float)):
        axes.flat[0].set_yscale("log")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    fig.suptitle(title(frame, what, facts))
    legend_outside(fig, axes)
    if undrawn := undrawn_note(frame, value):
        note(fig, undrawn)
    return fig


@styled
def box_figure(frame: pd.DataFrame, facts: Mapping[str, object] | None = None):
    """A box per component of the per-layer means, pooled over whatever else varies in
    `frame` (targets, models), as the paper's figure pools them; the y label says so."""
    order = component_order(frame["component"])
    data = [frame.loc[frame["component"] == c, "mean"].to_numpy() for c in order]
    fig, axes = new_figure(size=(1.1 * len(order) + 2.5, 4.0))
    ax = axes[0, 0]
    boxes = ax.boxplot(data, patch_artist=True, widths=0.6, medianprops=MEDIAN_PROPS)
    ax.set_xticks(range(1, len(order) + 1), [label(c) for c in order])
    for patch, comp in zip(boxes["boxes"], order, strict=True):
        patch.set_facecolor(color(comp))
        patch.set_alpha(0.6)
    if _wide_range(np.concatenate(data)):
        ax.set_yscale("log")
    pooled = [k for k in SERIES if k in frame.columns and frame[k].nunique() > 1]
    per = " and ".join(["layer", *pooled])
    ax.set_ylabel(f"plasticity (mean over pairs;\none point per {per})")
    ax.set_xlabel("component, by theoretical rank")
    ax.set_title(title(frame, "Plasticity by component", facts))
    return fig


@styled
def depth_figure(frame: pd.DataFrame, facts: Mapping[str, object] | None = None):
    """Plasticity against layer depth, one line per component, 95% CI bands; the title says
    the widest band relative to its mean, so a band too thin to see reads as a narrow CI."""
    relative = (frame["ci95"] / frame["mean"].abs()).replace(np.inf, np.nan).max()
    widest = f", at most ±{100 * relative:.2g}% of the mean" if np.isfinite(relative) else ""
    what = f"Plasticity per layer (95% CI bands{widest})"
    return _lines(frame, "mean", what, "plasticity (mean over pairs)", "ci95", facts)


@styled
def bounds_figure(frame: pd.DataFrame, facts: Mapping[str, object] | None = None):
    """Theoretical bound per layer and component."""
    what = "Upper bound on plasticity per layer"
    return _lines(frame, "bound", what, "upper bound", facts=facts)


@styled
def bound_ratio_figure(frame: pd.DataFrame, facts: Mapping[str, object] | None = None):
    """Measured plasticity divided by its bound, per layer and component (1 = the bound)."""
    what = "Measured plasticity / bound"
    fig = _lines(frame, "ratio", what, "measured / bound", facts=facts)
    for ax in fig.axes:
        if ax.get_visible():
            ax.axhline(1.0, color="black", lw=0.8, ls="--")
    return fig


# Writers: `facts` as in `title` (the run's config: protocol, streams, pairs).
def plasticity_box(frame: pd.DataFrame, stem: str | Path, facts=None) -> list[Path]:
    return write(box_figure(frame, facts), stem)


def plasticity_depth(frame: pd.DataFrame, stem: str | Path, facts=None) -> list[Path]:
    return write(depth_figure(frame, facts), stem)


def bounds_per_layer(frame: pd.DataFrame, stem: str | Path, facts=None) -> list[Path]:
    return write(bounds_figure(frame, facts), stem)


def bound_ratio(frame: pd.DataFrame, stem: str | Path, facts=None) -> list[Path]:
    return write(bound_ratio_figure(frame, facts), stem)


@styled
def compare_base_figure(frame: pd.DataFrame, trained: str = "", facts=None):
    """Base against finetuned plasticity per layer, one panel per component, from the joined
    table of `--compare-base` (layer, component, base_mean, base_ci95, finetuned_mean,
    finetuned_ci95): the base a wide grey line (a halo where the two agree), the finetuned a
    thin one in the component's colour, 95% CI bands. Each panel's title gives the pooled
    finetuned / base (as the pooled table), or says the component is unchanged; `trained`
    (the run's train list) goes in the figure's title."""
    order = component_order(frame["component"])
    fig, axes = _panels(len(order), (4.2, 3.2))
    for ax, comp in zip(axes.flat, order, strict=False):
        rows = frame[frame["component"] == comp].sort_values("layer")
        x = rows["layer"].to_numpy(dtype=float)
        for kind, look in (
            ("base", BASE_LOOK),
            ("finetuned", {**line_style(comp), "lw": 1.6, "ms": 4}),
        ):
            y = rows[f"{kind}_mean"].to_numpy(dtype=float)
            ci = rows[f"{kind}_ci95"].to_numpy(dtype=float)
            ax.plot(x, y, **{**look, "label": kind})
            ax.fill_between(x, y - ci, y + ci, color=look["color"], alpha=0.3, lw=0)
        ratio = rows["finetuned_mean"].mean() / rows["base_mean"].mean()  # the pooled table's
        change = "unchanged" if ratio == 1 else f"finetuned / base {ratio_text(ratio)}"
        ax.set_title(f"{label(comp)}: {change}")
        integer_ticks(ax)
        ax.set_xlabel("layer (block index)")
    for ax in axes[:, 0]:
        ax.set_ylabel("plasticity (mean over pairs)")
    what = "Plasticity before (base) and after finetuning, per layer (95% CI bands)"
    what += f"; the run trained {trained}" if trained else ""
    fig.suptitle(title(frame, what, facts))
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], **{**BASE_LOOK, "label": "base (before)"}),
        Line2D([], [], color="black", lw=1.6, label="finetuned\n(the component's colour)"),
    ]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def compare_base(
    frame: pd.DataFrame, stem: str | Path, trained: str = "", facts=None
) -> list[Path]:
    return write(compare_base_figure(frame, trained, facts), stem)
