"""Figures of plasticity and bounds, drawn from tidy tables only (never from models or runs).

Each figure has a builder (`*_figure`, returns an open matplotlib Figure) and a writer (saves
PNG + PDF, returns the paths). A table that mixes several targets (or models, datasets, radii)
gets one panel per series, never one zig-zag line through them; one legend sits right of the
panels. Components appear in the order of their theoretical rank (THEORETICAL_RANK), then any
others (LayerScale) in table order. Axis limits come from the data; layer ticks are integers.
Under each title, one line names the measurement (model, data, inputs mode, protocol, pairs:
`title`), so figures of different runs never read alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from vitplas.constants import THEORETICAL_RANK
from vitplas.plots.style import (
    MEDIAN_PROPS,
    color,
    integer_ticks,
    label,
    legend_outside,
    new_figure,
    titled,
    write,
)

SERIES = ["model", "reference", "target", "dataset", "inputs"]  # what can tell series apart


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


def _lines(frame, value: str, what: str, ylabel: str, band: str | None = None, facts=None):
    """One panel per series, one line per component over layers (CI band from `band`)."""
    groups = series(frame)
    fig, axes = _panels(len(groups), (5.0, 3.6), sharey=True)
    for ax, (name, part) in zip(axes.flat, groups, strict=False):
        for comp in component_order(part["component"]):
            rows = part[part["component"] == comp].sort_values("layer")
            x, y = rows["layer"].to_numpy(dtype=float), rows[value].to_numpy(dtype=float)
            ax.plot(x, y, "-o", ms=3, color=color(comp), label=label(comp))
            if band is not None:
                ci = rows[band].to_numpy(dtype=float)
                ax.fill_between(x, y - ci, y + ci, color=color(comp), alpha=0.2, lw=0)
        integer_ticks(ax)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("layer (block index)")
    if _wide_range(frame[value].to_numpy(dtype=float)):
        axes.flat[0].set_yscale("log")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    fig.suptitle(title(frame, what, facts), fontsize=10)
    legend_outside(fig, axes)
    return fig


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
    ax.set_title(title(frame, "Plasticity by component", facts), fontsize=9)
    return fig


def depth_figure(frame: pd.DataFrame, facts: Mapping[str, object] | None = None):
    """Plasticity against layer depth, one line per component, 95% CI bands."""
    what = "Plasticity per layer (95% CI bands)"
    return _lines(frame, "mean", what, "plasticity (mean over pairs)", "ci95", facts)


def bounds_figure(frame: pd.DataFrame, facts: Mapping[str, object] | None = None):
    """Theoretical bound per layer and component."""
    what = "Upper bound on plasticity per layer"
    return _lines(frame, "bound", what, "upper bound", facts=facts)


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
