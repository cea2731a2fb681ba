"""Figures of a sweep's report, each from tidy tables written by experiments.aggregate.

    accuracy_by_component(components)   mean best accuracy per train set (bars, across datasets)
    gain_by_component(components)       mean relative gain over the linear probe (bars)
    accuracy_over_lrs(runs)             seed-mean accuracy vs lr, one line per train set
    curves(curves, best, metric)        mean curve over seeds at each train set's best lr
Each function takes DataFrames and a file stem, writes PNG + PDF, and returns the paths.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from vitplas.models.components import THEORETICAL_RANK
from vitplas.plots import style


def component_order(names: Iterable[str]) -> list[str]:
    """Train sets in the paper's order: by theoretical plasticity rank, then the others."""
    names = list(dict.fromkeys(names))
    ranked = sorted((n for n in names if n in THEORETICAL_RANK), key=THEORETICAL_RANK.get)
    return ranked + sorted(n for n in names if n not in THEORETICAL_RANK)


def _bars(table: pd.DataFrame, value: str, ylabel: str, stem: Path, scale: float) -> list[Path]:
    order = component_order(table["train"])
    means = table.groupby("train")[value].mean().reindex(order) * scale
    with style.figure(size=(5.0, 3.6)) as (fig, ax):
        ax.bar(
            [style.label(n) for n in order], means.to_numpy(),
            color=[style.color(n) for n in order], edgecolor="#333333", linewidth=0.5,
        )  # fmt: skip
        low, high = float(np.nanmin(means)), float(np.nanmax(means))
        pad = max((high - low) * 0.5, abs(high) * 0.005, 1e-6)
        ax.set_ylim(low - pad, high + pad)  # from the data: no hard-coded limits
        ax.set_ylabel(ylabel)
        ax.set_xlabel("trained component (by theoretical plasticity rank)")
        return style.save(fig, stem)


def accuracy_by_component(components: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Bars of `mean_acc` (mean over datasets of the best-lr seed-mean) per train set."""
    return _bars(components, "mean_acc", "test accuracy (%)", Path(stem), 1.0)


def gain_by_component(components: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Bars of `mean_gain` ((finetune - probe) / probe, mean over datasets) per train set."""
    return _bars(components, "mean_gain", "relative gain over linear probe (%)", Path(stem), 100.0)


def _grid(n: int) -> tuple[int, int]:
    ncols = min(n, 3)
    return math.ceil(n / ncols), ncols


def accuracy_over_lrs(runs: pd.DataFrame, stem: str | Path, metric: str = "test_acc") -> list[Path]:
    """Per dataset, seed-mean `metric` (%) vs lr (log axis), one line per train set."""
    datasets = list(dict.fromkeys(runs["dataset"]))
    nrows, ncols = _grid(len(datasets))
    with style.figure(nrows, ncols, size=(4.0 * ncols, 3.2 * nrows)) as (fig, axes):
        flat = np.atleast_1d(axes).ravel()
        for ax, dataset in zip(flat, datasets, strict=False):
            part = runs[runs["dataset"] == dataset]
            for train in component_order(part["train"]):
                line = part[part["train"] == train].groupby("lr")[metric].mean().sort_index()
                ax.plot(line.index, line.to_numpy(), marker="o", color=style.color(train),
                        label=style.label(train))  # fmt: skip
            ax.set_xscale("log")
            lrs = sorted(part["lr"].unique())  # ticks at the swept lrs, not at decades
            ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
            ax.minorticks_off()
            ax.set_title(str(dataset))
            ax.set_xlabel("learning rate")
            ax.set_ylabel("test accuracy (%)")
        for ax in flat[len(datasets) :]:
            ax.set_visible(False)
        flat[0].legend(fontsize=8)
        return style.save(fig, stem)


def curves(curves: pd.DataFrame, best: pd.DataFrame, metric: str, stem: str | Path) -> list[Path]:
    """Per dataset, the seed-mean curve of `metric` (e.g. grad_norm, val_loss) over steps for
    each train set at its best lr (from the `best` table)."""
    part = curves[curves["metric"] == metric]
    datasets = list(dict.fromkeys(part["dataset"]))
    nrows, ncols = _grid(max(len(datasets), 1))
    with style.figure(nrows, ncols, size=(4.0 * ncols, 3.2 * nrows)) as (fig, axes):
        flat = np.atleast_1d(axes).ravel()
        for ax, dataset in zip(flat, datasets, strict=False):
            rows = best[best["dataset"] == dataset]
            for train in component_order(rows["train"]):
                lr = rows.loc[rows["train"] == train, "best_lr"].iloc[0]
                sel = part[(part["dataset"] == dataset) & (part["train"] == train)]
                sel = sel[np.isclose(sel["lr"].astype(float), float(lr))]
                line = sel.groupby("step")["value"].mean().sort_index()
                ax.plot(line.index, line.to_numpy(), color=style.color(train),
                        label=f"{style.label(train)} (lr {lr:g})")  # fmt: skip
            ax.set_title(str(dataset))
            ax.set_xlabel("step")
            ax.set_ylabel(metric.replace("_", " "))
            ax.legend(fontsize=7)
        for ax in flat[len(datasets) :]:
            ax.set_visible(False)
        return style.save(fig, stem)
