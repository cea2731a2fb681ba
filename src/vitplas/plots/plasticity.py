"""Figures of plasticity and bounds, drawn from tidy tables only (never from models or runs).

Components appear in the order of their theoretical rank (THEORETICAL_RANK), then any others
(LayerScale) in table order. Axis limits come from the data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vitplas.models.components import THEORETICAL_RANK
from vitplas.plots.style import color, figure, label, save

GROUP = ["model", "reference", "target", "inputs"]


def component_order(components) -> list[str]:
    """Theoretical rank first (MHA, FC1, FC2, LN2, LN1), then the rest in the order given."""
    seen = list(dict.fromkeys(components))
    ranked = sorted((c for c in seen if c in THEORETICAL_RANK), key=THEORETICAL_RANK.get)
    return ranked + [c for c in seen if c not in THEORETICAL_RANK]


def _wide_range(values: np.ndarray) -> bool:
    values = values[np.isfinite(values) & (values > 0)]
    return len(values) > 1 and values.max() / values.min() > 50


def _groups(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    keys = [k for k in GROUP if k in frame.columns and frame[k].nunique() > 1]
    if not keys:
        return [("", frame)]
    return [(" / ".join(map(str, name)), part) for name, part in frame.groupby(keys)]


def plasticity_box(frame: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Box plot of the per-layer means by component (pooled over whatever else is in `frame`)."""
    order = component_order(frame["component"])
    data = [frame.loc[frame["component"] == c, "mean"].to_numpy() for c in order]
    with figure(size=(1.1 * len(order) + 2.5, 4.0)) as (fig, ax):
        boxes = ax.boxplot(data, patch_artist=True, widths=0.6)
        ax.set_xticks(range(1, len(order) + 1), [label(c) for c in order])
        for patch, name in zip(boxes["boxes"], order, strict=True):
            patch.set_facecolor(color(name))
            patch.set_alpha(0.6)
        if _wide_range(np.concatenate(data)):
            ax.set_yscale("log")
        ax.set_ylabel("plasticity (mean over pairs, one point per layer)")
        ax.set_xlabel("component, in order of theoretical rank")
        return save(fig, stem)


def plasticity_depth(frame: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Plasticity against layer depth, one line per component, 95% CI bands."""
    styles = ["-", "--", ":", "-."]
    with figure(size=(6.5, 4.2)) as (fig, ax):
        for g, (group, part) in enumerate(_groups(frame)):
            for name in component_order(part["component"]):
                rows = part[part["component"] == name].sort_values("layer")
                x = rows["layer"].to_numpy(dtype=float)
                mean, ci = rows["mean"].to_numpy(), rows["ci95"].to_numpy()
                text = label(name) + (f" ({group})" if group else "")
                ax.plot(x, mean, styles[g % 4], color=color(name), label=text, marker="o", ms=3)
                ax.fill_between(x, mean - ci, mean + ci, color=color(name), alpha=0.2, lw=0)
        if _wide_range(frame["mean"].to_numpy()):
            ax.set_yscale("log")
        ax.set_xlabel("layer (block index)")
        ax.set_ylabel("plasticity (mean, 95% CI band)")
        ax.legend(fontsize=8, ncols=2)
        return save(fig, stem)


def bounds_per_layer(frame: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Theoretical bound per layer and component on a log axis."""
    with figure(size=(6.5, 4.2)) as (fig, ax):
        for name in component_order(frame["component"]):
            rows = frame[frame["component"] == name].sort_values("layer")
            ax.plot(rows["layer"], rows["bound"], "-o", ms=3, color=color(name), label=label(name))
        ax.set_yscale("log")
        ax.set_xlabel("layer (block index)")
        ax.set_ylabel("upper bound on plasticity")
        ax.legend(fontsize=8, ncols=2)
        return save(fig, stem)


def bound_ratio(frame: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Measured plasticity divided by its bound, per layer and component (log axis)."""
    with figure(size=(6.5, 4.2)) as (fig, ax):
        for name in component_order(frame["component"]):
            rows = frame[frame["component"] == name].sort_values("layer")
            ax.plot(rows["layer"], rows["ratio"], "-o", ms=3, color=color(name), label=label(name))
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xlabel("layer (block index)")
        ax.set_ylabel("measured plasticity / bound")
        ax.legend(fontsize=8, ncols=2)
        return save(fig, stem)
