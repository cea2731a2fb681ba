"""The landscape figure: per component, the loss surface beside the rate-of-change surface on
the plane of the top two PCA directions of its SGD trajectory, with the trajectory drawn."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vitplas.plots.style import label, new_figure


def _surface(rows: pd.DataFrame, value: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, Z) with Z[j, i] = value at (a_i, b_j), for contourf."""
    wide = rows.pivot(index="j", columns="i", values=value).sort_index().sort_index(axis=1)
    a = rows.drop_duplicates("i").sort_values("i")["a"].to_numpy()
    b = rows.drop_duplicates("j").sort_values("j")["b"].to_numpy()
    return a, b, wide.to_numpy()


def landscape_figure(grid: pd.DataFrame, path: pd.DataFrame, title: str = ""):
    """One row per component: loss (left) and rate of change (right) over the (a, b) plane,
    from the `landscape` table (component, i, j, a, b, loss, rate) and `trajectory` table
    (component, step, a, b)."""
    names = list(dict.fromkeys(grid["component"]))
    fig, axes = new_figure(len(names), 2, size=(9.0, 3.6 * len(names)))
    for row, name in zip(axes, names, strict=True):
        rows, steps = grid[grid["component"] == name], path[path["component"] == name]
        for ax, value, cmap, what in (
            (row[0], "loss", "viridis", "loss"),
            (row[1], "rate", "magma", "rate of change (plasticity)"),
        ):
            a, b, z = _surface(rows, value)
            filled = ax.contourf(a, b, z, levels=20, cmap=cmap)
            fig.colorbar(filled, ax=ax, label=what)
            ax.plot(steps["a"], steps["b"], "w.-", ms=4, lw=1, label="SGD steps")
            ax.plot(steps["a"].iloc[-1:], steps["b"].iloc[-1:], "r*", ms=9, label="last step")
            ax.set_xlim(a[0], a[-1])  # the grid; a path that leaves it is cut at its edge
            ax.set_ylim(b[0], b[-1])
            ax.set_title(f"{label(name)}: {what}", fontsize=9)
            ax.set_xlabel("PCA direction 1")
            ax.set_ylabel("PCA direction 2")
            ax.grid(False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
