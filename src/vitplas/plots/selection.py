"""Figures of a selection study, from the evidence tables (vitplas.experiments.evidence).

    criterion_heatmap(matrix, title)   criterion x dataset heat map of a correlation or regret,
                                       each cell annotated with its value
Takes DataFrames and a file stem, writes PNG + PDF, returns the paths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vitplas.plots import style


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
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")  # fmt: skip
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
        return style.save(fig, stem)
