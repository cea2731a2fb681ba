"""The per-image test record of a finetuning run (test_predictions.csv): one row per test image,
sealed with the run, and its accuracy is the run's test_acc."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import torch
from test_train_support import tiny_vit, toy_config, toy_data, toy_sources

from vitplas.jobs.runners import run_finetune
from vitplas.runs import RunDir
from vitplas.training.distributed import DistInfo
from vitplas.training.evaluate import evaluate_model, predictions_table
from vitplas.training.finetune import PREDICTIONS
from vitplas.training.stream import eval_loader


def test_a_finished_run_records_every_test_image(tmp_path):
    result = run_finetune(toy_config("steps=4", "max_eval_samples=20"), tmp_path,
                          sources=toy_sources())  # fmt: skip
    run = RunDir(tmp_path, create=False)
    table = pd.read_csv(io.BytesIO(run.read_verified(PREDICTIONS)))  # sealed with the run
    assert list(table.columns) == ["index", "label", "pred"]
    assert len(table) == result["test_n"] == 20  # the capped evaluation's images, each once
    assert table["index"].is_unique and table["index"].max() < 32
    labels = toy_data(32, seed=2).tensors[1]
    assert table["label"].tolist() == [int(labels[i]) for i in table["index"]]
    acc = 100.0 * float((table["label"] == table["pred"]).mean())
    assert acc == pytest.approx(result["test_acc"], abs=1e-9)


def test_shards_of_two_processes_make_one_record():
    """Each rank's shard (every second image) is recorded by its index in the split, so the
    ranks' records together are the whole split's, image by image."""
    data, model = toy_data(10, seed=3), tiny_vit().eval()
    whole = evaluate_model(model, eval_loader(data, 4), torch.device("cpu"), per_image=True)
    expect = predictions_table(eval_loader(data, 4), whole)
    parts = []
    for rank in (0, 1):
        loader = eval_loader(data, 4, rank=rank, world_size=2)
        scores = evaluate_model(model, loader, torch.device("cpu"), per_image=True)
        parts.append(predictions_table(loader, scores, DistInfo()))
    merged = pd.concat(parts).sort_values("index").reset_index(drop=True)
    pd.testing.assert_frame_equal(merged, expect)
    assert expect["index"].tolist() == list(range(10))
