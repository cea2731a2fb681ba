"""Figures of a sweep's report, each from tidy tables written by experiments.aggregate.

    accuracy_by_component(components)   mean best accuracy per train set (bars, across datasets)
    gain_by_component(components)       mean relative gain over the linear probe (bars)
    accuracy_over_lrs(runs)             seed-mean accuracy vs lr, one line per train set
    curves(curves, best, metric)        mean curve over seeds at each train set's best lr
    component_grads(curves, best)       gradient norm per component (grad_norm/<c> curves)
Each writer takes DataFrames and a file stem, writes PNG + PDF, and returns the paths; its
builder (`*_figure`) returns the open Figure. `context` (model, data, protocol) goes in the
title. Bars start at 0; legends sit outside the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from vitplas.constants import THEORETICAL_RANK
from vitplas.plots import style


def component_order(names: Iterable[str]) -> list[str]:
    """Train sets in the paper's order: by theoretical plasticity rank, then the others."""
    names = list(dict.fromkeys(names))
    ranked = sorted((n for n in names if n in THEORETICAL_RANK), key=THEORETICAL_RANK.get)
    return ranked + sorted(n for n in names if n not in THEORETICAL_RANK)


def seed_error(best: pd.DataFrame, order: list[str]) -> np.ndarray:
    """Per train set, the seed std of its mean over datasets: sqrt(sum_d std_d^2) / D (seeds
    independent across datasets); 0 where a dataset has one seed."""
    std = best.assign(var=best["std"].fillna(0.0) ** 2).groupby("train")
    return np.sqrt(std["var"].sum() / std.size() ** 2).reindex(order).fillna(0.0).to_numpy()


def _bars(table, value, ylabel, what, scale, best=None, context=""):
    order = component_order(table["train"])
    means = (table.groupby("train")[value].mean().reindex(order) * scale).to_numpy()
    err = None if best is None else seed_error(best, order) * scale
    fig, axes = style.new_figure(size=(5.4, 3.8))
    ax = axes[0, 0]
    ax.bar(
        [style.label(n) for n in order], means, yerr=err, capsize=4,
        color=[style.color(n) for n in order], edgecolor="#333333", linewidth=0.5,
    )  # fmt: skip
    ax.axhline(0.0, color="black", lw=0.8)
    spread = 0 if err is None else err
    low = min(0.0, float(np.nanmin(means - spread)))
    high = max(0.0, float(np.nanmax(means + spread)))
    pad = 0.05 * max(high - low, 1e-6)
    ax.set_ylim(low - (pad if low < 0 else 0), high + pad)  # bars from 0, 0 on the axis
    ax.set_ylabel(ylabel)
    ax.set_xlabel("trained component (by theoretical plasticity rank)")
    note = "; error bars: seed std of the mean over datasets" if err is not None else ""
    ax.set_title(what + (f"\n{context}" if context else "") + note)
    return fig


@style.styled
def accuracy_figure(components: pd.DataFrame, best: pd.DataFrame | None = None, context=""):
    """Bars of `mean_acc` (mean over datasets of the best-lr seed-mean) per train set, from 0,
    with seed error bars from `best` (columns train, std) when given."""
    what = "Test accuracy at the best lr, mean over datasets"
    return _bars(components, "mean_acc", "test accuracy (%)", what, 1.0, best, context)


@style.styled
def gain_figure(components: pd.DataFrame, context: str = ""):
    """Bars of `mean_gain` ((finetune - probe) / probe, mean over datasets), 0 on the axis."""
    what = "Relative gain over the linear probe"
    return _bars(components, "mean_gain", "gain over probe (%)", what, 100.0, None, context)


def accuracy_by_component(components, stem, best=None, context: str = "") -> list[Path]:
    return style.write(accuracy_figure(components, best, context), Path(stem))


def gain_by_component(components: pd.DataFrame, stem, context: str = "") -> list[Path]:
    return style.write(gain_figure(components, context), Path(stem))


def _grid(n: int) -> tuple[int, int]:
    ncols = min(n, 3)
    return math.ceil(n / ncols), ncols


def _panels(n: int, context: str, what: str):
    nrows, ncols = _grid(max(n, 1))
    fig, axes = style.new_figure(nrows, ncols, size=(4.0 * ncols, 3.2 * nrows))
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(what + (f"\n{context}" if context else ""))
    return fig, axes


@style.styled
def lrs_figure(runs: pd.DataFrame, metric: str = "test_acc", context: str = ""):
    """Per dataset, seed-mean `metric` (%) vs lr (log axis), one line per train set."""
    datasets = list(dict.fromkeys(runs["dataset"]))
    fig, axes = _panels(len(datasets), context, "Test accuracy against learning rate (seed mean)")
    looks = style.set_styles(component_order(runs["train"]))  # one look per set in every panel
    for ax, dataset in zip(axes.flat, datasets, strict=False):
        part = runs[runs["dataset"] == dataset]
        for train in component_order(part["train"]):
            look = looks[train]
            line = part[part["train"] == train].groupby("lr")[metric].mean().sort_index()
            ax.plot(line.index, line.to_numpy(), **look, label=style.label(train))
        ax.set_xscale("log")
        lrs = sorted(part["lr"].unique())  # ticks at the swept lrs, not at decades
        ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
        ax.minorticks_off()
        ax.set_title(str(dataset))
        ax.set_xlabel("learning rate")
        ax.set_ylabel("test accuracy (%)")
    style.legend_outside(fig, axes)
    return fig


def accuracy_over_lrs(runs, stem, metric: str = "test_acc", context: str = "") -> list[Path]:
    return style.write(lrs_figure(runs, metric, context), Path(stem))


def _best_rows(curves: pd.DataFrame, best: pd.DataFrame, dataset: str, train: str):
    """(best lr, the curve rows of `dataset`/`train` at that lr)."""
    rows = best[(best["dataset"] == dataset) & (best["train"] == train)]
    lr = float(rows["best_lr"].iloc[0])
    sel = curves[(curves["dataset"] == dataset) & (curves["train"] == train)]
    return lr, sel[np.isclose(sel["lr"].astype(float), lr)]


@style.styled
def curves_figure(curves: pd.DataFrame, best: pd.DataFrame, metric: str, context: str = ""):
    """Per dataset, the seed-mean curve of `metric` (e.g. grad_norm, val_loss) over steps for
    each train set at its best lr (from the `best` table)."""
    part = curves[curves["metric"] == metric]
    datasets = list(dict.fromkeys(part["dataset"]))
    what = f"{metric.replace('_', ' ')} during training (seed mean at the best lr)"
    fig, axes = _panels(len(datasets), context, what)
    looks = style.set_styles(component_order(best["train"]))  # one look per set in every panel
    for ax, dataset in zip(axes.flat, datasets, strict=False):
        for train in component_order(best.loc[best["dataset"] == dataset, "train"]):
            look = looks[train]
            lr, sel = _best_rows(part, best, dataset, train)
            line = sel.groupby("step")["value"].mean().sort_index()
            ax.plot(line.index, line.to_numpy(), color=look["color"], linestyle=look["linestyle"],
                    label=f"{style.label(train)} (lr {lr:g})")  # fmt: skip
        ax.set_title(str(dataset))
        ax.set_xlabel("step")
        style.integer_ticks(ax)
        ax.set_ylabel(metric.replace("_", " "))
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # lrs differ per panel
    return fig


def curves(curves, best, metric: str, stem, context: str = "") -> list[Path]:
    return style.write(curves_figure(curves, best, metric, context), Path(stem))


@style.styled
def component_grads_figure(curves: pd.DataFrame, best: pd.DataFrame, context: str = ""):
    """Per train set, the gradient norm of each component (metrics `grad_norm/<component>`)
    over steps: mean over seeds at each dataset's best lr, then over datasets."""
    part = curves[curves["metric"].str.startswith("grad_norm/")]
    trains = component_order(part["train"])
    what = "Gradient norm per component (mean over seeds at the best lr, then datasets)"
    fig, axes = _panels(len(trains), context, what)
    for ax, train in zip(axes.flat, trains, strict=False):
        lines = []
        for dataset in dict.fromkeys(part.loc[part["train"] == train, "dataset"]):
            if ((best["dataset"] == dataset) & (best["train"] == train)).any():
                lines.append(_best_rows(part, best, dataset, train)[1])
        rows = pd.concat(lines) if lines else part.iloc[:0]
        means = rows.groupby(["metric", "step"])["value"].mean()
        names = component_order(m.split("/", 1)[1] for m in means.index.get_level_values(0))
        for comp in names:
            line = means.loc[f"grad_norm/{comp}"].sort_index()
            ax.plot(line.index, line.to_numpy(), **style.line_style(comp))
        _log_if_wide(ax, means.to_numpy())
        ax.set_title(f"trained: {style.label(train)}")
        ax.set_xlabel("step")
        style.integer_ticks(ax)
        ax.set_ylabel("gradient norm")
    every = component_order(m.split("/", 1)[1] for m in part["metric"].unique())
    style.legend_outside(fig, axes, order=[style.label(c) for c in every])
    return fig


def _log_if_wide(ax, values: np.ndarray) -> None:
    """A log y axis when the panel's positive values span over 20x (small curves would lie
    flat on 0 beside the large ones)."""
    values = values[np.isfinite(values) & (values > 0)]
    if len(values) > 1 and values.max() / values.min() > 20:
        ax.set_yscale("log")


def component_grads(curves, best, stem, context: str = "") -> list[Path]:
    return style.write(component_grads_figure(curves, best, context), Path(stem))
