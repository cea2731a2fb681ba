"""Published numbers of the paper (PAPER.md sections 1 and 5), as data files loaded here."""

from __future__ import annotations

import io
from importlib import resources

import pandas as pd


def _read(name: str) -> pd.DataFrame:
    text = resources.files(__name__).joinpath(name).read_text()
    return pd.read_csv(io.StringIO(text), comment="#")


def published_accuracy() -> pd.DataFrame:
    """Test accuracy (%) per (model, dataset, train); the paper's 'average' rows included."""
    return _read("vit_b16_in21k_test_acc.csv")


def published_plasticity() -> pd.DataFrame:
    """Approximate plasticity medians per component (read off a figure) and theoretical rank."""
    return _read("plasticity_medians.csv")
