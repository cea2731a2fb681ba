"""End to end: `vitplas reproduce` on a tiny study with the real finetuning (tiny random ViT on
scikit-learn's digits), then again: the second call does no work and leaves the same report."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.experiments.spec import expand, load_spec
from vitplas.experiments.store import counts, scan


@pytest.mark.slow
def test_reproduce_tiny_study_twice(tmp_path):
    spec_path = tmp_path / "tiny.yaml"
    base = {"model": "tiny-random", "random_init": True, "img_size": 32, "batch_size": 8,
            "steps": 4, "warmup_steps": 1, "eval_every": 2, "log_every": 1,
            "max_eval_samples": 32, "num_workers": 0, "device": "cpu",
            "tensorboard": False}  # fmt: skip
    spec = {"name": "tiny", "root": str(tmp_path / "study"), "base": base,
            "grid": {"dataset": ["digits"], "seed": [0, 1], "lr": [0.01, 0.1],
                     "train": ["all", "mha"]},
            "executor": {"max_parallel": 2, "threads_per_run": 1}}  # fmt: skip
    spec_path.write_text("# vitplas reproduce tiny.yaml\n" + yaml.safe_dump(spec))
    first = CliRunner().invoke(app, ["reproduce", str(spec_path)])
    assert first.exit_code == 0, first.output
    loaded = load_spec(spec_path)
    assert counts(scan(loaded, expand(loaded)))["done"] == 8
    report = tmp_path / "study" / "report" / "report.md"
    text = report.read_text()
    assert "| digits |" in text and "accuracy_over_lrs.png" in text
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "study").rglob("*") if p.is_file()}
    second = CliRunner().invoke(app, ["reproduce", str(spec_path)])
    assert second.exit_code == 0, second.output
    assert "launched 0" in second.output
    assert report.read_text() == text
    changed = [p for p, t in stamps.items() if p.stat().st_mtime_ns != t]
    # only the aggregated tables are rewritten (same content) and the launcher lock names its
    # new holder; no run, figure or report file
    assert all(Path(p).parent.name == "tables" or p.name == "launcher.lock" for p in changed)
