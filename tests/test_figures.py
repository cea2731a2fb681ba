"""Figure properties a reviewer checks, read from the matplotlib artists (never pixels)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.container import ErrorbarContainer

from vitplas.plots import plasticity as pp
from vitplas.plots import report as rp

TARGETS = ["cifar10", "pet"]


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _plasticity(depth: int = 2) -> pd.DataFrame:
    rows = []
    for t, target in enumerate(TARGETS):
        for layer in range(depth):
            for c, comp in enumerate(["ln1", "mha", "fc1"]):
                mean = (c + 1) * (1 + t) + 0.1 * layer
                rows.append({"model": "vit-b16", "reference": "imagenet", "target": target,
                             "inputs": "embedding", "layer": layer, "component": comp,
                             "mean": mean, "std": 0.1, "n": 64, "ci95": 0.05})  # fmt: skip
    return pd.DataFrame(rows)


def _bounds() -> pd.DataFrame:
    """Bounds of one model at two radii (two datasets), as a sweep concatenates them."""
    frame = _plasticity()[["layer", "component"]].drop_duplicates()
    parts = [
        frame.assign(model="vit-b16", radius=r, bound=r * (1 + frame["layer"])) for r in (2, 5)
    ]
    return pd.concat(parts, ignore_index=True)


def _lines(ax) -> dict[str, np.ndarray]:
    return {
        line.get_label(): line.get_ydata() for line in ax.get_lines() if line.get_label()[0] != "_"
    }


def _outside(fig, legend) -> bool:
    fig.canvas.draw()
    box = legend.get_window_extent()
    return all(not box.overlaps(ax.get_window_extent()) for ax in fig.axes if ax.get_visible())


def test_depth_has_one_panel_per_target_integer_ticks_title_and_outside_legend():
    fig = pp.depth_figure(_plasticity())
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == TARGETS
    for t, ax in enumerate(panels):
        lines = _lines(ax)
        assert sorted(lines) == ["FC1", "LN1", "MHA"]  # one line per component, no zig-zag
        np.testing.assert_allclose(lines["MHA"], [2 * (1 + t), 2 * (1 + t) + 0.1])
        ticks = [t for t in ax.get_xticks() if 0 <= t <= 1]
        assert ticks == [0.0, 1.0]  # two layers: whole-number ticks only
    title = fig._suptitle.get_text()
    assert "vit-b16" in title and "imagenet vs cifar10, pet" in title and "embedding" in title
    assert len(fig.legends) == 1 and _outside(fig, fig.legends[0])
    assert len(fig.legends[0].get_texts()) == 3


def test_bounds_at_two_radii_are_two_series_not_one_zigzag():
    fig = pp.bounds_figure(_bounds())
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["r = 2", "r = 5"]
    np.testing.assert_allclose(_lines(panels[1])["MHA"], [5.0, 10.0])  # monotone in layer


def test_bound_ratio_per_target_with_reference_line():
    frame = _plasticity().assign(ratio=lambda f: f["mean"] / 10)
    fig = pp.bound_ratio_figure(frame)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 2
    assert all(any(np.allclose(line.get_ydata(), 1.0) for line in ax.get_lines()) for ax in panels)


def test_box_plot_says_what_it_pools():
    frame = _plasticity(depth=4)
    ax = pp.box_figure(frame).axes[0]
    assert "one point per layer and target" in ax.get_ylabel()
    assert len(ax.artists) + len(ax.patches) == 3  # one box per component
    single = pp.box_figure(frame[frame["target"] == "pet"]).axes[0]
    assert single.get_ylabel().endswith("one point per layer)")
    assert "imagenet vs pet" in single.get_title()
    # whiskers, caps and medians all black: a median in matplotlib's default orange would be
    # lost on the orange FC1 box
    assert {to_hex(line.get_color()) for line in single.get_lines()} == {"#000000"}


def _components(gains) -> pd.DataFrame:
    return pd.DataFrame({"train": ["mha", "fc1", "ln1"], "mean_acc": [91.0, 90.0, 85.0],
                         "mean_gain": gains})  # fmt: skip


def test_gain_bars_start_at_zero_and_negative_bars_go_down():
    fig = rp.gain_figure(_components([0.05, -0.02, -0.10]), context="vit-b16 · study paper")
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert low < -10 < 0 < 5 < high  # 0 on the axis, the -10% bar inside it
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [5.0, -2.0, -10.0])
    assert all(p.get_y() == 0 for p in ax.patches)  # every bar hangs from 0
    assert "vit-b16 · study paper" in ax.get_title()


def test_accuracy_bars_from_zero_with_seed_error_bars():
    trains = ["mha"] * 2 + ["fc1"] * 2 + ["ln1"] * 2
    best = pd.DataFrame({"dataset": ["a", "b"] * 3, "train": trains,
                         "std": [0.3, 0.4, 0.0, 0.0, 1.0, 1.0], "best_lr": 0.01})  # fmt: skip
    fig = rp.accuracy_figure(_components([0, 0, 0]), best)
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 0.0
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1
    segments = bars[0].lines[2][0].get_segments()
    half = [abs(s[1][1] - s[0][1]) / 2 for s in segments]
    np.testing.assert_allclose(half, [0.25, 0.0, np.sqrt(2) / 2])  # sqrt(sum std^2) / D
    assert "error bars: seed std" in ax.get_title()


def _curves() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    for train, comps in (("mha", ["mha"]), ("all", ["mha", "fc1"])):
        for lr in (0.01, 0.03):
            for step in (10, 20):
                for comp in comps:
                    rows.append({"dataset": "cifar10", "train": train, "lr": lr, "seed": 0,
                                 "step": step, "metric": f"grad_norm/{comp}",
                                 "value": lr * step * (2 if comp == "fc1" else 1)})  # fmt: skip
    best = pd.DataFrame({"dataset": ["cifar10"] * 2, "train": ["mha", "all"],
                         "best_lr": [0.03, 0.01], "mean": [90.0, 91.0],
                         "std": [0.0, 0.0]})  # fmt: skip
    return pd.DataFrame(rows), best


def test_gradient_norm_per_component_at_best_lr():
    curves, best = _curves()
    fig = rp.component_grads_figure(curves, best, context="m")
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(panels) == {"trained: MHA", "trained: Full"}
    np.testing.assert_allclose(_lines(panels["trained: MHA"])["MHA"], [0.3, 0.6])  # lr 0.03
    full = _lines(panels["trained: Full"])
    np.testing.assert_allclose(full["FC1"], [0.2, 0.4])
    assert len(fig.legends) == 1 and _outside(fig, fig.legends[0])


def test_lr_figure_legend_outside_and_titled():
    runs = pd.DataFrame({"dataset": "cifar10", "train": ["mha", "fc1"] * 2,
                         "lr": [0.01, 0.01, 0.03, 0.03], "seed": 0,
                         "test_acc": [90.0, 89.0, 91.0, 88.0]})  # fmt: skip
    fig = rp.lrs_figure(runs, context="vit-b16 · study paper")
    assert "vit-b16" in fig._suptitle.get_text()
    assert _outside(fig, fig.legends[0])


def test_writers_save_png_and_pdf(tmp_path):
    paths = pp.plasticity_depth(_plasticity(), tmp_path / "d")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(
        p.stat().st_size > 1000 for p in paths
    )


def test_titles_name_inputs_protocol_and_pairs_so_two_measurements_differ():
    frame = _plasticity()[lambda f: f["target"] == "pet"]
    facts = {"reference": "imagenet [val]", "target": "pet [test]", "protocol": "paper"}
    depth = pp.depth_figure(frame, facts)._suptitle.get_text()
    assert depth.splitlines() == [
        "Plasticity per layer (95% CI bands)",
        "vit-b16 · imagenet [val] vs pet [test] · embedding inputs · protocol paper · 64 pairs",
    ]
    hidden = frame.assign(inputs="hidden", n=128)
    box = pp.box_figure(hidden, {**facts, "protocol": "model"}).axes[0].get_title()
    assert box.splitlines()[1] == (
        "vit-b16 · imagenet [val] vs pet [test] · hidden inputs · protocol model · 128 pairs"
    )
    bounds = _bounds()[lambda f: f["radius"] == 2]
    facts = {"inputs": "embedding", "protocol": "model", "radius": "2", "dataset": "r from pet"}
    line = pp.bounds_figure(bounds, facts)._suptitle.get_text().splitlines()[1]
    assert line == "vit-b16 · r from pet · embedding inputs · protocol model · r = 2"


def test_identity_line_drops_empty_facts():
    from vitplas.plots import style

    assert style.titled("What", ["m", "", None, "x inputs"]) == "What\nm · x inputs"
    assert style.titled("What", ["", None]) == "What"


def test_a_plasticity_run_titles_its_figures_from_its_config(tmp_path, monkeypatch):
    from vitplas.analysis.job import PlasticityConfig
    from vitplas.jobs.runners import run_plasticity

    titles = {}

    def keep_title(fig, stem):
        texts = [fig._suptitle.get_text() if fig._suptitle else "", fig.axes[0].get_title()]
        titles[stem.name] = max(texts, key=len)
        plt.close(fig)
        return []

    monkeypatch.setattr(pp, "write", keep_title)
    cfg = PlasticityConfig(model="tiny-random", random_init=True, target="digits", pairs=16,
                           batch_size=8, device="cpu", protocol="paper", inputs="hidden",
                           components=["mha", "fc1"], bounds=False)  # fmt: skip
    run_plasticity(cfg, tmp_path / "run")
    line = "tiny-random · photos [val] vs digits [test] · hidden inputs · protocol paper · 16 pairs"
    assert {name: t.splitlines()[1] for name, t in titles.items()} == {
        "plasticity_box": line,
        "plasticity_depth": line,
    }
