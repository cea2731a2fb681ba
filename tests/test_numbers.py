"""A ratio near 1 keeps the digits that tell a change from none (vitplas.numbers), in the
compare-base table (vitplas.jobs.render.comparison) and the figure's panel titles."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from vitplas.numbers import ratio_text


@pytest.mark.parametrize(
    ("ratio", "text"),
    [
        (1.0007, "1.0007"),
        (0.99996, "0.99996"),
        (1.0401, "1.04"),
        (1.5, "1.5"),
        (0.2345, "0.234"),
        (12.34, "12.3"),
        (1.0, "1"),
        (0.0, "0"),
        (math.nan, "nan"),
    ],
)
def test_ratio_text(ratio, text):
    assert ratio_text(ratio) == text


def test_a_changed_ratio_never_reads_one():
    for k in range(1, 13):
        for ratio in (1 + 10.0**-k, 1 - 10.0**-k, 1 + 7 * 10.0**-k):
            assert float(ratio_text(ratio)) != 1.0, ratio
            assert abs(float(ratio_text(ratio)) - ratio) <= 0.1 * abs(ratio - 1)


def _pooled(ratio: float) -> pd.DataFrame:
    return pd.DataFrame(
        {"component": ["mha"], "base_mean": [0.5], "base_ci95": [0.01],
         "finetuned_mean": [0.5 * ratio], "finetuned_ci95": [0.01], "ratio": [ratio]}
    )  # fmt: skip


def test_the_compare_base_table_prints_a_small_change(capsys):
    from types import SimpleNamespace

    from vitplas.jobs.render import comparison

    result = {"pooled": _pooled(1.0007), "model_description": "m", "run_dir": "runs/x"}
    comparison(result, SimpleNamespace(model="runs/ft"))
    row = next(line for line in capsys.readouterr().out.splitlines() if "mha" in line)
    cells = [cell.strip() for cell in row.split("│")]
    assert cells[1:5] == ["mha", "0.5 ± 0.01", "0.5003 ± 0.01", "1.0007"], row


def test_the_compare_base_figure_titles_a_small_change():
    from vitplas.plots.plasticity import compare_base_figure

    frame = _pooled(1.0007).assign(layer=0)
    fig = compare_base_figure(frame)
    assert fig.axes[0].get_title() == "MHA: finetuned / base 1.0007"
    same = compare_base_figure(_pooled(1.0).assign(layer=0))
    assert same.axes[0].get_title() == "MHA: unchanged"
