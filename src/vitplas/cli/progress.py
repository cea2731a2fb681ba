"""Progress of long commands: live bars on a terminal, plain timestamped lines elsewhere.

A job under SLURM, nohup or CI writes to a file, where a live bar shows nothing until the end;
there each task prints a line to stderr when it starts, when it ends, and at most every
`every` seconds in between (stdout keeps only the results).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console

Update = Callable[[str, int, int], None]  # (task name, done, total)


@contextlib.contextmanager
def progress_view(
    console: Console, every: float = 30.0, transient: bool = False
) -> Iterator[Update]:
    """Yields update(name, done, total); one bar (or line stream) per task name."""
    if console.is_terminal:
        with _bars(console, transient) as update:
            yield update
    else:
        yield _lines(every)


@contextlib.contextmanager
def _bars(console: Console, transient: bool) -> Iterator[Update]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=transient) as progress:
        tasks: dict[str, int] = {}

        def update(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=total)
            progress.update(tasks[name], completed=done, total=total)

        yield update


def _lines(every: float) -> Update:
    start = time.monotonic()
    last: dict[str, tuple[float, int]] = {}  # name -> (time printed, done printed)

    def update(name: str, done: int, total: int) -> None:
        now = time.monotonic()
        printed_at, printed_done = last.get(name, (-1.0, -1))
        first, finished = printed_at < 0, done >= total and printed_done < total
        if not (first or finished or (now - printed_at >= every and done != printed_done)):
            return
        elapsed = time.strftime("%H:%M:%S", time.gmtime(now - start))
        print(f"[{elapsed}] {name} {done}/{total}", file=sys.stderr, flush=True)
        last[name] = (now, done)

    return update
