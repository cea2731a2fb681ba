"""Progress of long commands: plain lines without a terminal (SLURM logs, nohup, CI)."""

from __future__ import annotations

import io

from rich.console import Console

from vitplas.cli import progress as progress_module
from vitplas.cli.progress import progress_view


def test_without_terminal_lines_at_start_end_and_throttled(monkeypatch, capsys):
    clock = iter([0.0, 0.0, 1.0, 40.0, 41.0, 42.0, 43.0])  # start, then one per update
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    console = Console(file=io.StringIO(), force_terminal=False)
    with progress_view(console, every=30) as update:
        update("sweep", 0, 4)  # first: printed
        update("sweep", 1, 4)  # 1 s later: quiet
        update("sweep", 2, 4)  # 40 s after the last line: printed
        update("sweep", 2, 4)  # nothing new: quiet
        update("sweep", 4, 4)  # finished: printed
        update("sweep", 4, 4)  # finished already: quiet
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["[00:00:00] sweep 0/4", "[00:00:40] sweep 2/4", "[00:00:42] sweep 4/4"]
    assert console.file.getvalue() == ""  # stdout is left to the results


def test_on_a_terminal_bars_print_no_lines(capsys):
    console = Console(file=io.StringIO(), force_terminal=True)
    with progress_view(console) as update:
        update("pairs", 5, 10)
    assert capsys.readouterr().err == ""
    assert "pairs" in console.file.getvalue()
