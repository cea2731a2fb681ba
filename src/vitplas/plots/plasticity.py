"""Figures of plasticity and bounds, drawn from tidy tables only (never from models or runs).

Each figure has a builder (`*_figure`, returns an open matplotlib Figure) and a writer (saves
PNG + PDF, returns the paths). A table that mixes several targets (or models, datasets, radii)
gets one panel per series, never one zig-zag line through them; one legend sits right of the
panels. Components appear in the order of their theoretical rank (THEORETICAL_RANK), then any
others (LayerScale) in table order. Axis limits come from the data; layer ticks are integers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vitplas.models.components import THEORETICAL_RANK
from vitplas.plots.style import color, integer_ticks, label, legend_outside, new_figure, write

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


def title(frame: pd.DataFrame, what: str) -> str:
    """'what' plus the model, data and inputs the table holds (several joined by commas)."""

    def values(key: str) -> str:
        return ", ".join(map(str, dict.fromkeys(frame[key]))) if key in frame else ""

    parts = [values("model")]
    if "reference" in frame and "target" in frame:
        parts.append(f"{values('reference')} vs {values('target')}")
    elif "dataset" in frame:
        parts.append(values("dataset"))
    if "inputs" in frame:
        parts.append(f"{values('inputs')} inputs")
    return what + "\n" + " · ".join(p for p in parts if p)


def _panels(n: int, size: tuple[float, float], **kw):
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig, axes = new_figure(nrows, ncols, (size[0] * ncols, size[1] * nrows), **kw)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def _lines(frame: pd.DataFrame, value: str, what: str, ylabel: str, band: str | None = None):
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
    fig.suptitle(title(frame, what), fontsize=10)
    legend_outside(fig, axes)
    return fig


def box_figure(frame: pd.DataFrame):
    """A box per component of the per-layer means, pooled over whatever else varies in
    `frame` (targets, models), as the paper's figure pools them; the y label says so."""
    order = component_order(frame["component"])
    data = [frame.loc[frame["component"] == c, "mean"].to_numpy() for c in order]
    fig, axes = new_figure(size=(1.1 * len(order) + 2.5, 4.0))
    ax = axes[0, 0]
    boxes = ax.boxplot(data, patch_artist=True, widths=0.6)
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
    ax.set_title(title(frame, "Plasticity by component"), fontsize=9)
    return fig


def depth_figure(frame: pd.DataFrame):
    """Plasticity against layer depth, one line per component, 95% CI bands."""
    what = "Plasticity per layer (95% CI bands)"
    return _lines(frame, "mean", what, "plasticity (mean over pairs)", band="ci95")


def bounds_figure(frame: pd.DataFrame):
    """Theoretical bound per layer and component."""
    return _lines(frame, "bound", "Upper bound on plasticity per layer", "upper bound")


def bound_ratio_figure(frame: pd.DataFrame):
    """Measured plasticity divided by its bound, per layer and component (1 = the bound)."""
    fig = _lines(frame, "ratio", "Measured plasticity / bound", "measured / bound")
    for ax in fig.axes:
        if ax.get_visible():
            ax.axhline(1.0, color="black", lw=0.8, ls="--")
    return fig


def plasticity_box(frame: pd.DataFrame, stem: str | Path) -> list[Path]:
    return write(box_figure(frame), stem)


def plasticity_depth(frame: pd.DataFrame, stem: str | Path) -> list[Path]:
    return write(depth_figure(frame), stem)


def bounds_per_layer(frame: pd.DataFrame, stem: str | Path) -> list[Path]:
    return write(bounds_figure(frame), stem)


def bound_ratio(frame: pd.DataFrame, stem: str | Path) -> list[Path]:
    return write(bound_ratio_figure(frame), stem)
