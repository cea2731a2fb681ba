"""One owner per run folder: an OS lock (fcntl.flock) on `<run>/.lock`.

The kernel releases a flock when its process dies, however it dies (kill -9 included), so a
lock is never stale. The lock file holds who took it (pid, host, command, since) for the
message a second process prints, and for `holder()`, which the sweep asks before launching.

    with run_lock(folder, command="finetune"):   # RunLockedError at once when held,
        ...                                       # or waits with wait=True / VITPLAS_WAIT_LOCK=1
    holder(folder) -> {"pid", "host", "command", "since"} | None

The lock is re-entrant within one process (a job that calls another job on the same folder).
flock is advisory and local to one machine's kernel; on a network file system whose flock does
not reach other hosts, two hosts may still both write (run one job per folder there).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_FILE = ".lock"
WAIT_ENV = "VITPLAS_WAIT_LOCK"  # "1": wait for a held lock instead of stopping (CLI --wait)

_held: dict[Path, list] = {}  # resolved folder -> [fd, depth]: re-entrant within a process


class RunLockedError(RuntimeError):
    """Another process owns the run folder."""


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process (its details are not readable)"
    return (
        f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')}, "
        f"since {info.get('since')})"
    )


def _read_info(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text() or "null")
    except (OSError, json.JSONDecodeError):
        return None


def holder(folder: str | Path) -> dict[str, Any] | None:
    """Who holds the lock of `folder` (pid, host, command, since), or None when it is free."""
    folder = Path(folder)
    path = folder / LOCK_FILE
    if folder.resolve() in _held:
        return _read_info(path)
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_info(path) or {}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _acquire(path: Path, wait: bool, poll_s: float) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    announced = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if not wait:
                os.close(fd)
                info = _read_info(path)
                raise RunLockedError(
                    f"{path.parent} is in use by {_describe(info)}; wait for it to finish, "
                    "rerun with --wait, or use another run folder"
                ) from None
            if not announced:
                print(f"waiting for {path.parent}: held by {_describe(_read_info(path))}",
                      file=sys.stderr, flush=True)  # fmt: skip
                announced = True
            time.sleep(poll_s)


@contextlib.contextmanager
def run_lock(
    folder: str | Path,
    *,
    command: str = "",
    wait: bool | None = None,
    poll_s: float = 0.5,
) -> Iterator[None]:
    """Own `folder` for the duration of the block (created if missing). wait=None reads
    VITPLAS_WAIT_LOCK."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    if wait is None:
        wait = os.environ.get(WAIT_ENV) == "1"
    fd = _acquire(folder / LOCK_FILE, wait, poll_s)
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command or " ".join(sys.argv[:3]),
        "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        del _held[key]
        os.ftruncate(fd, 0)  # the file stays (removing it would race with a waiter's open)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def is_main_process() -> bool:
    """Rank 0 under torchrun (or no torchrun): the process that owns a DDP run's folder."""
    return os.environ.get("RANK", "0") == "0"
