"""Run folders: atomic writes, manifests, metrics that survive a torn line, tidy tables."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from vitplas.runs import RunDir, atomic_write_text, file_sha256, write_table


def test_atomic_write_leaves_no_temp_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "first")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "second")
    assert path.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_manifest_metrics_and_done(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_manifest({"seed": 3})
    manifest = run.read_manifest()
    assert manifest["seed"] == 3
    assert {"torch", "vitplas", "python"} <= set(manifest["versions"])
    run.append_metrics({"step": 1, "loss": 0.5})
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 2, "lo')  # a line torn by a kill
    assert run.read_metrics() == [{"step": 1, "loss": 0.5}]
    assert not run.is_done()
    run.mark_done()
    assert run.is_done()


def test_write_table_csv_and_parquet_agree(tmp_path):
    frame = pd.DataFrame({"component": ["mha", "ln1"], "mean": [7.5, 0.25]})
    csv_path, parquet_path = write_table(frame, tmp_path / "table")
    pd.testing.assert_frame_equal(pd.read_csv(csv_path), frame)
    pd.testing.assert_frame_equal(pd.read_parquet(parquet_path), frame)
    digest = file_sha256(csv_path)
    assert len(digest) == 64 and digest == file_sha256(csv_path)
    json.dumps({"digest": digest})
