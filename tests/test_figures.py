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
        "Plasticity per layer (95% CI bands, at most ±2.5% of the mean)",  # 0.05 on 2.0
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


def _notes(fig) -> list[str]:
    return [t.get_text() for t in fig.texts if t is not fig._suptitle]


def _visible(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def test_a_component_without_a_finite_bound_gets_a_note_not_an_empty_legend_entry():
    from vitplas.analysis.bounds import DATA_UNDEFINED, ONCE_MEASURED

    frame = _bounds()[lambda f: f["radius"] == 2].assign(definition="||W||_2")
    ln1 = frame["component"] == "ln1"
    frame.loc[ln1, "bound"] = np.nan
    frame.loc[ln1, "definition"] = DATA_UNDEFINED + ONCE_MEASURED + "max|gamma| / s_min, ..."
    fig = pp.bounds_figure(frame)
    assert sorted(_lines(_visible(fig)[0])) == ["FC1", "MHA"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["MHA", "FC1"]
    assert _notes(fig) == [f"LN1: no line, {DATA_UNDEFINED}"]
    assert "--" not in _notes(fig)[0]  # keys, not flags: the API draws it too
    assert _notes(pp.bounds_figure(frame.dropna())) == []  # all drawn: no note
    frame.loc[frame["component"] == "mha", ["bound", "definition"]] = np.nan, "undefined: rope"
    frame.loc[frame["component"] == "fc1", ["bound", "definition"]] = np.nan, DATA_UNDEFINED
    assert _notes(pp.bounds_figure(frame))[0].splitlines() == [  # a line per reason
        "MHA: no line, rope", f"FC1, LN1: no line, {DATA_UNDEFINED}"]  # fmt: skip


def _model_level_curves() -> tuple[pd.DataFrame, pd.DataFrame]:
    """train=all: MHA, and the embedding and final norm with equal norms, the head 300x."""
    values = {"mha": 0.5, "emb": 0.01, "norm": 0.01, "head": 3.0}
    rows = [{"dataset": "d", "train": "all", "lr": 0.01, "seed": 0, "step": step,
             "metric": f"grad_norm/{comp}", "value": v * step}
            for step in (1, 2, 3) for comp, v in values.items()]  # fmt: skip
    best = pd.DataFrame({"dataset": ["d"], "train": ["all"], "best_lr": [0.01], "mean": [90.0],
                         "std": [0.0]})  # fmt: skip
    return pd.DataFrame(rows), best


def test_gradient_norms_of_every_component_are_told_apart_even_when_equal():
    fig = rp.component_grads_figure(*_model_level_curves())
    ax = _visible(fig)[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["MHA", "Embedding", "Head", "Final norm"]  # theory rank, then a-z
    looks = {(to_hex(ln.get_color()), ln.get_linestyle(), ln.get_marker()) for ln in lines.values()}
    assert len(looks) == 4  # no two look alike: colour, dashes and marker
    greys = {
        c
        for c in map(to_hex, (ln.get_color() for ln in lines.values()))
        if c[1:3] == c[3:5] == c[5:]
    }
    assert len(greys) <= 1  # at most one grey (the final norm is black)
    emb, norm = lines["Embedding"], lines["Final norm"]
    np.testing.assert_allclose(emb.get_ydata(), norm.get_ydata())  # drawn on each other ...
    assert emb.get_marker() != norm.get_marker()  # ... both marker shapes show
    assert ax.get_yscale() == "log"  # 0.01 and 3: a linear axis would lay the small on 0


def test_every_figure_takes_its_text_sizes_from_the_one_style():
    from vitplas.plots.style import RC

    runs = pd.DataFrame({"dataset": "cifar10", "train": ["mha", "fc1"], "lr": 0.01, "seed": 0,
                         "test_acc": [90.0, 89.0]})  # fmt: skip
    figures = [pp.depth_figure(_plasticity()), pp.box_figure(_plasticity()),
               pp.bounds_figure(_bounds()), rp.gain_figure(_components([0.1, 0.0, -0.1])),
               rp.lrs_figure(runs), rp.component_grads_figure(*_model_level_curves())]  # fmt: skip
    for fig in figures:
        fig.canvas.draw()  # outside the style's context: what a notebook shows
        for ax in _visible(fig):
            assert ax.title.get_fontsize() == RC["axes.titlesize"]
            assert ax.xaxis.label.get_fontsize() == RC["axes.labelsize"]
            sizes = {t.get_fontsize() for t in ax.get_xticklabels() + ax.get_yticklabels()}
            assert sizes == {RC["xtick.labelsize"]}
        if fig._suptitle is not None:
            assert fig._suptitle.get_fontsize() == RC["figure.titlesize"]
        for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]:
            assert {t.get_fontsize() for t in legend.get_texts()} == {RC["legend.fontsize"]}


def test_depth_bands_say_how_wide_they_are_and_show():
    frame = _plasticity().assign(ci95=lambda f: 0.1 * f["mean"])
    fig = pp.depth_figure(frame)
    assert "95% CI bands, at most ±10% of the mean" in fig._suptitle.get_text()
    bands = _visible(fig)[0].collections
    assert len(bands) == 3 and all(band.get_alpha() >= 0.3 for band in bands)


def _compare() -> pd.DataFrame:
    means = (("ln1", 7.0), ("mha", 0.1))
    rows = [{"layer": layer, "component": comp, "base_mean": base + layer, "base_ci95": 0.01,
             "finetuned_mean": (base + layer) * (2.0 if comp == "mha" else 1.0),
             "finetuned_ci95": 0.01} for layer in range(3) for comp, base in means]  # fmt: skip
    return pd.DataFrame(rows)


def test_compare_base_draws_base_against_finetuned_per_component_and_layer(tmp_path):
    facts = {"model": "runs/ft", "reference": "photos", "target": "digits", "pairs": 32}
    fig = pp.compare_base_figure(_compare(), "[mha]", facts)
    panels = _visible(fig)
    assert [ax.get_title() for ax in panels] == [
        "MHA: finetuned / base 2", "LN1: unchanged",
    ]  # fmt: skip
    mha = {ln.get_label(): ln for ln in panels[0].get_lines()}
    np.testing.assert_allclose(mha["base"].get_ydata(), [0.1, 1.1, 2.1])
    np.testing.assert_allclose(mha["finetuned"].get_ydata(), [0.2, 2.2, 4.2])
    ln1 = {ln.get_label(): ln for ln in panels[1].get_lines()}
    np.testing.assert_allclose(ln1["base"].get_ydata(), ln1["finetuned"].get_ydata())
    assert ln1["base"].get_linewidth() > ln1["finetuned"].get_linewidth()  # both show
    assert to_hex(ln1["base"].get_color()) != to_hex(ln1["finetuned"].get_color())
    title = fig._suptitle.get_text()
    assert "the run trained [mha]" in title and "runs/ft · photos vs digits" in title
    assert fig.legends[0].get_texts()[0].get_text() == "base (before)"
    paths = pp.compare_base(_compare(), tmp_path / "c", "[mha]", facts)
    assert all(path.stat().st_size > 1000 for path in paths)


def _landscape(extent: float):
    grid = pd.DataFrame([{"component": "ln1", "i": i, "j": j, "a": a, "b": b, "loss": a + b,
                          "rate": a * b} for i, a in enumerate((-0.5, 0.0, 0.5))
                         for j, b in enumerate((-0.5, 0.0, 0.5))])  # fmt: skip
    steps = np.linspace(extent, 0.0, 5)
    path = pd.DataFrame({"component": "ln1", "step": range(5), "a": steps, "b": -steps})
    return grid, path


def test_landscape_explains_its_marks_and_zooms_into_a_short_path():
    from vitplas.plots.landscape import landscape_figure

    fig = landscape_figure(*_landscape(0.002), title="t")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["SGD path (4 steps)", "last step (the plane's origin)"]
    loss_panel = fig.axes[0]
    insets = [child for child in loss_panel.child_axes]
    assert len(insets) == 1  # the path spans 0.002 of a 1.0-wide grid: drawn again, zoomed
    np.testing.assert_allclose(insets[0].get_lines()[0].get_xdata(), np.linspace(0.002, 0, 5))
    assert "0.002 wide" in insets[0].texts[0].get_text()
    assert landscape_figure(*_landscape(0.3)).axes[0].child_axes == []  # a long path: no zoom


def test_rank_grid_shows_each_criterions_ranks_and_frames_its_pick():
    from matplotlib.patches import Rectangle

    from vitplas.plots.selection import ranks_figure

    rows = [{"criterion": crit, "layer": "all", "component": comp, "rank": rank}
            for crit, order in (("plasticity", ["ln1", "fc1", "mha"]),
                                ("grad_norm", ["mha", "fc1", "ln1"]))
            for rank, comp in enumerate(order, start=1)]  # fmt: skip
    rows.append({"criterion": "plasticity", "layer": 0, "component": "mha", "rank": 9})
    fig = ranks_figure(pd.DataFrame(rows), {"plasticity": ["ln1"], "grad_norm": ["mha", "fc1"]})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["MHA", "FC1", "LN1"]  # theory order
    assert [t.get_text() for t in ax.get_yticklabels()] == ["plasticity", "grad_norm"]
    assert [t.get_text() for t in ax.texts] == ["3", "2", "1", "1", "2", "3"]  # layer 0 left out
    framed = sorted((p.get_x() + 0.5, p.get_y() + 0.5) for p in ax.patches
                    if isinstance(p, Rectangle) and not p.get_fill())  # fmt: skip
    assert framed == [(0.0, 1.0), (1.0, 1.0), (2.0, 0.0)]  # (column, row) of each picked cell


def test_rank_grid_leaves_an_unscored_component_blank_and_says_why():
    """condition scores no norm: its LN1 row is '-', not the last rank its NaN sorts to."""
    from vitplas.plots.selection import ranks_figure

    why = "no weight matrix (a norm or layer scale)"
    rows = [{"criterion": crit, "layer": "all", "component": comp, "rank": rank, "score": score,
             "note": note}
            for crit, ranked in (("plasticity", [("ln1", 3.0, ""), ("mha", 1.0, "")]),
                                 ("condition", [("mha", 5.0, ""), ("ln1", None, why)]))
            for rank, (comp, score, note) in enumerate(ranked, start=1)]  # fmt: skip
    fig = ranks_figure(pd.DataFrame(rows))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["2", "1", "1", "-"]  # MHA, LN1 per row
    assert [t.get_text() for t in fig.texts] == [f"-: not scored by condition: {why}"]


def test_a_component_looks_the_same_in_every_panel_and_the_legend_is_in_rank_order():
    curves, best = _model_level_curves()
    ln1 = curves[curves["metric"] == "grad_norm/mha"].assign(train="ln1", metric="grad_norm/ln1")
    head = curves[curves["metric"] == "grad_norm/head"].assign(train="ln1")
    curves = pd.concat([curves, ln1, head], ignore_index=True)
    best = pd.concat([best, best.assign(train="ln1")], ignore_index=True)
    fig = rp.component_grads_figure(curves, best)
    looks = {}
    for ax in _visible(fig):
        for line in ax.get_lines():
            look = (to_hex(line.get_color()), line.get_linestyle(), line.get_marker())
            assert looks.setdefault(line.get_label(), look) == look  # one look per component
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["MHA", "LN1", "Embedding", "Head", "Final norm"]
