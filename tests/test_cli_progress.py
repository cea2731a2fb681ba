"""Progress of long commands: plain lines without a terminal (SLURM logs, nohup, CI)."""

from __future__ import annotations

import io
import json

import pytest
import yaml
from rich.console import Console

from vitplas.cli import progress as progress_module
from vitplas.cli.progress import clock, eta_seconds, progress_view


def test_without_terminal_lines_at_start_end_and_throttled(monkeypatch, capsys):
    clock = iter([0.0, 0.0, 1.0, 40.0, 41.0, 80.0, 82.0, 83.0])  # start, then one per update
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    console = Console(file=io.StringIO(), force_terminal=False)
    with progress_view(console, every=30) as update:
        update("sweep", 0, 4)  # first: printed
        update("sweep", 1, 4)  # 1 s later: quiet
        update("sweep", 2, 4)  # 40 s after the last line: printed
        update("sweep", 2, 4)  # 1 s later: quiet
        update("sweep", 2, 4)  # 40 s without progress: a heartbeat, the ETA from the rate
        update("sweep", 4, 4)  # finished: printed
        update("sweep", 4, 4)  # finished already: quiet
    lines = capsys.readouterr().err.splitlines()
    # 2 done in 40 s since the first update: 2 left take 40 s more; at 80 s, 80 s more
    assert lines == [
        "[00:00:00] sweep 0/4",
        "[00:00:40] sweep 2/4, ETA 00:00:40",
        "[00:01:20] sweep 2/4, ETA 00:01:20",
        "[00:01:22] sweep 4/4",
    ]
    assert console.file.getvalue() == ""  # stdout is left to the results


def test_on_a_terminal_bars_print_no_lines(capsys):
    console = Console(file=io.StringIO(), force_terminal=True)
    with progress_view(console) as update:
        update("pairs", 5, 10)
    assert capsys.readouterr().err == ""
    assert "pairs" in console.file.getvalue()


def test_eta_counts_only_the_work_done_since_the_first_update():
    # a resumed sweep: 90 of 100 runs were done before; 5 more in 50 s -> 5 left take 50 s
    assert eta_seconds((10.0, 90), 60.0, 95, 100) == 50.0
    assert eta_seconds((10.0, 90), 60.0, 90, 100) is None  # no progress yet: no ETA
    assert clock(3 * 3600 + 61) == "03:01:01"
    assert clock(2 * 86400 + 5) == "2d 00:00:05"


def test_a_terminal_bar_shows_the_eta(monkeypatch):
    times = [0.0, 10.0]  # our two updates; rich's own calls (if any) get the last value

    def fake_monotonic() -> float:
        return times.pop(0) if len(times) > 1 else times[0]

    monkeypatch.setattr(progress_module.time, "monotonic", fake_monotonic)
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with progress_view(console) as update:
        update("runs", 0, 4)
        update("runs", 1, 4)  # 1 in 10 s: 3 left take 30 s
    assert "ETA 00:00:30" in console.file.getvalue()


def test_radius_shows_progress_and_writes_its_run_folder(tmp_path):
    from typer.testing import CliRunner

    from vitplas.cli import app

    out = tmp_path / "radius"
    args = ["radius", "--model", "tiny-random", "--random-init", "--dataset", "digits"]
    args += ["--images", "40", "--batch-size", "16", "--out", str(out)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "images 40/40" in result.stderr  # a line per update at most every 30 s, and the end
    saved = json.loads((out / "radius.json").read_text())
    printed = float(result.stdout.split()[2])
    assert saved["radius"] == pytest.approx(printed, rel=1e-5)  # printed with 6 digits
    assert saved["images"] == 40 and saved["n_tokens"] == 17 and not saved["per_layer"]
    assert (out / "DONE").exists() and (out / "manifest.json").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["dataset"] == "digits"


def test_radius_says_how_many_images_it_measured(tmp_path):
    """--images above the split's size: r is measured on the whole split, and says so."""
    from typer.testing import CliRunner

    from vitplas.cli import app

    out = tmp_path / "radius"
    args = ["radius", "--model", "tiny-random", "--random-init", "--dataset", "digits"]
    args += ["--images", "5000", "--batch-size", "64", "--device", "cpu", "--out", str(out)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "radius.json").read_text())
    assert (saved["images"], saved["images_measured"]) == (5000, 359)  # digits' test split
    assert "digits/test, 359 images)" in result.stdout and "images 359/359" in result.stderr


def test_bounds_show_their_progress_per_layer(tmp_path):
    from typer.testing import CliRunner

    from vitplas.cli import app

    args = ["bounds", "--model", "tiny-random", "--random-init", "--radius", "2.0"]
    args += ["--out", str(tmp_path / "bounds")]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "bounds 0/2" not in result.stderr  # the first update comes after block 0
    assert "bounds 1/2" in result.stderr and "bounds 2/2" in result.stderr


def test_reproduce_follows_the_bounds_and_pairs_inside_a_plasticity_job(tmp_path):
    from vitplas.experiments.reproduce import analysis_jobs, progress_hooks
    from vitplas.experiments.spec import load_spec

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        "name: t\nbase: {model: tiny-random, dataset: digits}\ngrid: {seed: [0]}\n"
        "analysis:\n  plasticity:\n    - {model: tiny-random, target: digits, pairs: 8}\n"
        "  probes:\n    - {model: tiny-random, dataset: digits}\n"
    )
    plasticity, probes = analysis_jobs(load_spec(spec_file))
    seen = []
    hooks = progress_hooks(plasticity, lambda *update: seen.append(update))
    hooks["on_phase"]("bounds", 1, 2)
    hooks["progress"](1, 16)  # the last batch may overshoot the pairs asked for
    assert seen == [("plasticity digits: bounds", 1, 2), ("plasticity digits: pairs", 8, 8)]
    stages = []
    hooks = progress_hooks(probes, lambda *update: stages.append(update))
    hooks["on_phase"]("features", 8, 80)  # a probe job reports its phases as stages too
    assert stages == [("probes digits: features", 8, 80)]
    assert progress_hooks(plasticity, None) is None


def test_reproduce_analysis_reports_a_plasticity_job_from_inside(tmp_path):
    from vitplas.experiments.reproduce import run_analysis
    from vitplas.experiments.spec import load_spec

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        "name: t\nbase: {model: tiny-random, dataset: digits}\ngrid: {seed: [0]}\n"
        "analysis:\n  plasticity:\n    - {model: tiny-random, random_init: true, target: digits,"
        " pairs: 8, batch_size: 4, radius_images: 8, device: cpu, figures: false}\n"
    )
    seen = []
    failed = run_analysis(load_spec(spec_file), tmp_path / "study", lambda *u: seen.append(u))
    assert failed == []
    assert ("plasticity digits: bounds", 2, 2) in seen
    assert seen[-2:] == [("plasticity digits: pairs", 8, 8), ("analysis", 1, 1)]
