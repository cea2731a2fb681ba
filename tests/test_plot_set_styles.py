"""Train sets that are not one component get looks of their own, the same in every panel."""

from __future__ import annotations

import pandas as pd

from vitplas.plots import style
from vitplas.plots.report import lrs_figure


def test_every_set_looks_apart_and_components_keep_their_colours():
    names = ["mha", "ln1", "auto:plasticity", "ln1+mha", "lora", "bitfit"]
    looks = style.set_styles(names)
    keys = {(v["color"], v["marker"], v["linestyle"]) for v in looks.values()}
    assert len(keys) == len(names)
    assert looks["mha"]["color"] == style.color("mha") and looks["mha"]["linestyle"] == "-"
    assert all(looks[n]["linestyle"] == "--" for n in names[2:])


def test_a_set_missing_from_one_panel_does_not_shift_the_others_looks():
    rows = [
        {"dataset": d, "train": t, "lr": lr, "test_acc": 50.0 + i}
        for d, sets in (("a", ["mha", "ln1+mha", "lora"]), ("b", ["mha", "lora"]))
        for i, t in enumerate(sets)
        for lr in (0.01, 0.1)
    ]
    fig = lrs_figure(pd.DataFrame(rows))
    colours = [{ln.get_label(): ln.get_color() for ln in ax.get_lines()} for ax in fig.axes[:2]]
    lora, pick = style.label("lora"), style.label("ln1+mha")
    assert colours[0][lora] == colours[1][lora] != colours[0][pick]
