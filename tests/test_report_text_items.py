"""The report's throughput line names what the runs counted: images, texts or examples."""

from __future__ import annotations

import pandas as pd

from vitplas.experiments.report import _items


def test_throughput_counts_images_texts_or_examples():
    assert _items(pd.DataFrame({"dataset": ["fashion-mnist", "mnist-5k"]})) == "images"
    assert _items(pd.DataFrame({"dataset": ["rotten-tomatoes", "wordnet-glosses"]})) == "texts"
    assert _items(pd.DataFrame({"dataset": ["rotten-tomatoes", "mnist-5k"]})) == "examples"
    assert _items(pd.DataFrame({"dataset": ["a"]})) == "examples"  # a name no registry knows
