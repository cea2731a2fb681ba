"""Progress of long commands: live bars on a terminal, plain timestamped lines elsewhere.

A job under SLURM, nohup or CI writes to a file, where a live bar shows nothing until the end;
there each task prints a line to stderr when it starts, when it ends, and every `every` seconds
in between while it runs, moving or not (stdout keeps only the results). Both forms show an ETA: the
task's rate since its first update (work already done when it started, e.g. finished runs of
a resumed sweep, does not count as speed).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console

Update = Callable[[str, int, int], None]  # (task name, done, total)


def eta_seconds(start: tuple[float, int], now: float, done: int, total: int) -> float | None:
    """Seconds left at the rate since `start` = (time, done then); None before any progress."""
    started_at, done_then = start
    if done <= done_then or now <= started_at:
        return None
    rate = (done - done_then) / (now - started_at)
    return max(total - done, 0) / rate


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS (days as 'Nd H:MM:SS')."""
    days, rest = divmod(round(seconds), 86400)
    text = time.strftime("%H:%M:%S", time.gmtime(rest))
    return f"{days}d {text}" if days else text


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
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    eta = TextColumn("{task.fields[eta]}")
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), eta)
    with Progress(*columns, console=console, transient=transient) as progress:
        tasks: dict[str, tuple[int, tuple[float, int]]] = {}  # name -> (task id, start)

        def update(name: str, done: int, total: int) -> None:
            now = time.monotonic()
            if name not in tasks:
                tasks[name] = (progress.add_task(name, total=total, eta=""), (now, done))
            task, start = tasks[name]
            left = eta_seconds(start, now, done, total)
            text = f"ETA {clock(left)}" if left is not None and done < total else ""
            progress.update(task, completed=done, total=total, eta=text)

        yield update


def _lines(every: float) -> Update:
    start = time.monotonic()
    last: dict[str, tuple[float, int]] = {}  # name -> (time printed, done printed)
    first_seen: dict[str, tuple[float, int]] = {}  # name -> (time, done) of its first update

    def update(name: str, done: int, total: int) -> None:
        now = time.monotonic()
        first_seen.setdefault(name, (now, done))
        printed_at, printed_done = last.get(name, (-1.0, -1))
        first, finished = printed_at < 0, done >= total and printed_done < total
        # a heartbeat every `every` seconds even without progress: a long phase (one slow
        # job) still shows it is alive, with its elapsed time and ETA
        if not (first or finished or (now - printed_at >= every and done < total)):
            return
        left = eta_seconds(first_seen[name], now, done, total)
        eta = f", ETA {clock(left)}" if left is not None and done < total else ""
        print(f"[{clock(now - start)}] {name} {done}/{total}{eta}", file=sys.stderr, flush=True)
        last[name] = (now, done)

    return update
