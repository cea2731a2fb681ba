"""The landscape figure: per component, the loss surface beside the rate-of-change surface on
the plane of the top two PCA directions of its SGD trajectory, with the trajectory drawn.

The plane's origin is the last SGD step (a red star); the white line is the path that led
there. A path much shorter than the grid (a LayerNorm's, whose few parameters barely move)
would hide under the star: it is drawn again in a zoomed inset, with its extent written.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vitplas.plots.style import label, new_figure, styled

ZOOM_BELOW = 0.05  # a path spanning under this fraction of the grid gets a zoomed inset
PATH_STYLE = {"color": "white", "marker": ".", "ms": 4, "lw": 1.2}
END_STYLE = {"color": "red", "marker": "*", "ms": 11, "ls": "none"}


def _surface(rows: pd.DataFrame, value: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, Z) with Z[j, i] = value at (a_i, b_j), for contourf."""
    wide = rows.pivot(index="j", columns="i", values=value).sort_index().sort_index(axis=1)
    a = rows.drop_duplicates("i").sort_values("i")["a"].to_numpy()
    b = rows.drop_duplicates("j").sort_values("j")["b"].to_numpy()
    return a, b, wide.to_numpy()


def path_extent(steps: pd.DataFrame) -> float:
    """The larger side of the path's bounding box in the plane."""
    return float(max(np.ptp(steps["a"].to_numpy()), np.ptp(steps["b"].to_numpy())))


def _zoom(ax, steps: pd.DataFrame, extent: float) -> None:
    """An inset (upper right) with the path at its own scale, on a dark ground."""
    inset = ax.inset_axes([0.56, 0.56, 0.42, 0.42])
    inset.set_facecolor("#333333")
    inset.plot(steps["a"], steps["b"], **PATH_STYLE)
    inset.plot(steps["a"].iloc[-1:], steps["b"].iloc[-1:], **END_STYLE)
    inset.set_xticks([])
    inset.set_yticks([])
    inset.text(0.04, 0.03, f"zoomed in:\n{extent:.2g} wide", transform=inset.transAxes,
               color="white", ha="left", va="bottom", fontsize="x-small")  # fmt: skip
    low, high = inset.get_ylim()
    inset.set_ylim(low - 0.6 * (high - low), high)  # room for the text under the path
    inset.grid(False)


def _panel(fig, ax, rows, steps, value: str, cmap: str, what: str, name: str) -> None:
    a, b, z = _surface(rows, value)
    filled = ax.contourf(a, b, z, levels=20, cmap=cmap)
    fig.colorbar(filled, ax=ax, label=what)
    ax.plot(steps["a"], steps["b"], **PATH_STYLE, label=f"SGD path ({len(steps) - 1} steps)")
    ax.plot(steps["a"].iloc[-1:], steps["b"].iloc[-1:], **END_STYLE,
            label="last step (the plane's origin)")  # fmt: skip
    ax.set_xlim(a[0], a[-1])  # the grid; a path that leaves it is cut at its edge
    ax.set_ylim(b[0], b[-1])
    extent = path_extent(steps)
    if extent < ZOOM_BELOW * (a[-1] - a[0]):
        _zoom(ax, steps, extent)
    ax.set_title(f"{label(name)}: {what}")
    ax.set_xlabel("PCA direction 1")
    ax.set_ylabel("PCA direction 2")
    ax.grid(False)


@styled
def landscape_figure(grid: pd.DataFrame, path: pd.DataFrame, title: str = ""):
    """One row per component: loss (left) and rate of change (right) over the (a, b) plane,
    from the `landscape` table (component, i, j, a, b, loss, rate) and `trajectory` table
    (component, step, a, b). One legend under the panels says what the path and star are."""
    names = list(dict.fromkeys(grid["component"]))
    fig, axes = new_figure(len(names), 2, size=(9.0, 3.6 * len(names)))
    for row, name in zip(axes, names, strict=True):
        rows, steps = grid[grid["component"] == name], path[path["component"] == name]
        _panel(fig, row[0], rows, steps, "loss", "viridis", "loss", name)
        _panel(fig, row[1], rows, steps, "rate", "magma", "rate of change (plasticity)", name)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    legend = fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=2)
    legend.get_frame().set_facecolor("#999999")  # the white path shows on it
    legend.set_frame_on(True)
    if title:
        fig.suptitle(title)
    return fig
