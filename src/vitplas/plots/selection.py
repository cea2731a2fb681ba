"""Figures of a selection study, from the evidence tables (vitplas.experiments.evidence).

    criterion_heatmap(matrix, title)   criterion x dataset heat map of a correlation or regret,
                                       each cell annotated with its value
    ranks_figure(scores, picks)        criterion x component grid of the ranks `vitplas select`
                                       gives (1 = chosen first), each criterion's pick framed
The heat map takes DataFrames and a file stem, writes PNG + PDF, returns the paths; the rank
grid is a builder (an open Figure; `style.write` saves it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from vitplas.plots import style
from vitplas.plots.plasticity import component_order


def criterion_heatmap(
    matrix: pd.DataFrame, stem: str | Path, title: str, *, higher_is_better: bool = True
) -> list[Path]:
    """matrix: rows criteria, columns datasets; NaN cells are left blank. Blue is better:
    `higher_is_better=False` (regret) flips the colours so that a high value is red."""
    values = matrix.to_numpy(dtype=np.float64)
    finite = values[np.isfinite(values)]
    limit = float(np.abs(finite).max()) if finite.size else 1.0  # symmetric: 0 is white
    limit = limit or 1.0
    size = (1.6 + 1.1 * matrix.shape[1], 1.2 + 0.42 * matrix.shape[0])
    cmap = "RdBu" if higher_is_better else "RdBu_r"
    with style.figure(size=size) as (fig, ax):
        image = ax.imshow(values, cmap=cmap, vmin=-limit, vmax=limit, aspect="auto")
        ax.grid(False)
        ax.set_xticks(range(matrix.shape[1]), [str(c) for c in matrix.columns], rotation=30)
        ax.set_yticks(range(matrix.shape[0]), [str(r) for r in matrix.index])
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                dark = abs(value) > 0.6 * limit  # white text on the deep colours
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="small",
                        color="white" if dark else "black")  # fmt: skip
        ax.set_title(title)
        fig.colorbar(image, ax=ax, shrink=0.8)
        return style.save(fig, stem)


@style.styled
def ranks_figure(scores: pd.DataFrame, picks=None, title: str = ""):
    """Rows: criteria; columns: components (theoretical rank first); cell: the component's
    rank under that criterion (1 = first), darker when better, from the `selection` table
    (criterion, layer, component, rank) at component granularity (layer 'all'). A criterion's
    picked train set (`picks`: criterion -> components) is framed in black. A component the
    criterion cannot score (score NaN, e.g. a spectrum of a norm) is a blank cell marked '-',
    not its last-place rank, and the table's `note` says why below the grid."""
    rows = scores[scores["layer"].astype(str) == "all"]
    if "score" in rows:
        rows = rows.assign(rank=rows["rank"].where(rows["score"].notna()))
    ranks = rows.pivot(index="criterion", columns="component", values="rank")
    ranks = ranks.reindex(index=list(dict.fromkeys(rows["criterion"])),
                          columns=component_order(rows["component"]))  # fmt: skip
    values = ranks.to_numpy(dtype=np.float64)
    unscored = rows[rows["rank"].isna()]
    fig, axes = style.new_figure(size=(1.6 + 0.75 * ranks.shape[1], 1.3 + 0.45 * ranks.shape[0]))
    ax = axes[0, 0]
    image = ax.imshow(values, cmap="Blues_r", vmin=1, vmax=np.nanmax(values) + 1, aspect="auto")
    ax.grid(False)
    ax.set_xticks(range(ranks.shape[1]), [style.label(c) for c in ranks.columns])
    ax.set_yticks(range(ranks.shape[0]), list(ranks.index))
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            dark = value <= 0.4 * np.nanmax(values)
            ax.text(j, i, f"{value:.0f}", ha="center", va="center",
                    color="white" if dark else "black")  # fmt: skip
        else:
            ax.text(j, i, "-", ha="center", va="center", color="#888888")
        if picks and ranks.columns[j] in picks.get(ranks.index[i], ()):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.5, ec="black"))
    fig.colorbar(image, ax=ax, shrink=0.8, label="rank (1 = chosen first)")
    ax.set_title(title or "Rank of each component by criterion (framed: the picked train set)")
    if not unscored.empty:
        style.note(fig, _unscored_note(unscored))
    return fig


def _unscored_note(unscored: pd.DataFrame) -> str:
    """One line per reason: '-: not scored by CRITERIA: REASON' (the rows' `note`)."""
    why = unscored["note"].fillna("") if "note" in unscored else ""
    lines = []
    for reason, group in unscored.assign(why=why).groupby("why", sort=False):
        criteria = ", ".join(dict.fromkeys(group["criterion"]))
        lines.append(f"-: not scored by {criteria}" + (f": {reason}" if reason else ""))
    return "\n".join(lines)
