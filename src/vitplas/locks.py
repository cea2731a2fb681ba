"""One owner per folder: OS locks (fcntl.flock) on a lock file, for run folders and studies.

The kernel releases a flock when its process dies, however it dies (kill -9 included), so a
lock is never stale. The lock file holds who took it (pid, host, command, since) for the
message a second process prints, and for `holder()`, which the sweep asks before launching.

    with run_lock(folder, command="finetune"):   # RunLockedError at once when held,
        ...                                       # or waits with wait=True / VITPLAS_WAIT_LOCK=1
    holder(folder) -> {"pid", "host", "command", "since"} | None

`run_lock` is re-entrant within one process (a sweep job owns its run folder, then calls the
runner, which takes the same lock again). `FileLock` is the plain, non-re-entrant lock under
it, for other lock files (a study's launcher.lock) and for code that polls (`acquire() -> bool`).
flock is advisory and local to one machine's kernel; on a file system without flock (some
NFS) a lock is taken without protection and a warning says so; on a network file system whose
flock does not reach other hosts, two hosts may still both write (run one job per folder there).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOCK_FILE = ".lock"
WAIT_ENV = "VITPLAS_WAIT_LOCK"  # "1": wait for a held lock instead of stopping (CLI --wait)
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # a file system without flock

_held: dict[Path, list] = {}  # resolved lock file -> [FileLock, depth]: run_lock re-entrance


class RunLockedError(RuntimeError):
    """Another process owns the run folder."""


def describe(info: dict[str, Any] | None, since: bool = True) -> str:
    """'pid N on HOST (command, since T)' of a lock holder's info."""
    if not info:
        return "another process (its details are not readable)"
    text = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
    details = [str(info["command"])] if info.get("command") else []
    details += [f"since {info['since']}"] if since and info.get("since") else []
    return text + (f" ({', '.join(details)})" if details else "")


def _read_info(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text() or "null")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def lock_holder(path: str | Path) -> dict[str, Any] | None:
    """Who holds the lock file `path` (pid, host, command, since), or None when it is free."""
    path = Path(path)
    if path.resolve() in _held:
        return _read_info(path)
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_info(path) or {}
    except OSError as err:
        if err.errno not in NO_FLOCK:
            raise
        return None  # no locks here: nobody can be seen holding one
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def holder(folder: str | Path) -> dict[str, Any] | None:
    """Who holds the lock of run folder `folder`, or None when it is free."""
    return lock_holder(Path(folder) / LOCK_FILE)


class FileLock:
    """An exclusive flock on the file `path` (created, with its folder, if missing), not
    re-entrant: a second FileLock on the same file conflicts, also within one process."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(
        self,
        command: str = "",
        wait: bool = False,
        poll_s: float = 0.5,
        on_wait: Callable[[dict[str, Any] | None], None] | None = None,
    ) -> bool:
        """Take the lock and write who holds it; False when another holds it and not `wait`.
        While waiting, `on_wait(holder info)` is called before each poll."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    os.close(fd)
                    return False
                if on_wait is not None:
                    on_wait(_read_info(self.path))
                time.sleep(poll_s)
            except OSError as err:
                if err.errno not in NO_FLOCK:
                    os.close(fd)
                    raise
                warnings.warn(
                    f"{self.path}: this file system has no locks ({err}); nothing stops a "
                    "second process from writing the same folder",
                    stacklevel=2,
                )
                break
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command or " ".join(sys.argv[:3]),
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return True

    def holder(self) -> str:
        """'pid N on HOST (command)' of the process that holds the lock, as far as written."""
        return describe(_read_info(self.path), since=False)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.ftruncate(fd, 0)  # the file stays (removing it would race with a waiter's open)
        os.close(fd)  # closing the descriptor drops the flock


@contextlib.contextmanager
def run_lock(
    folder: str | Path,
    *,
    command: str = "",
    wait: bool | None = None,
    poll_s: float = 0.5,
) -> Iterator[None]:
    """Own run folder `folder` for the duration of the block (created if missing); re-entrant
    within a process. RunLockedError when another process owns it, unless `wait` (None reads
    VITPLAS_WAIT_LOCK)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = (folder / LOCK_FILE).resolve()
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    if wait is None:
        wait = os.environ.get(WAIT_ENV) == "1"
    lock = FileLock(folder / LOCK_FILE)
    announced: list[bool] = []

    def announce(info: dict[str, Any] | None) -> None:
        if not announced:
            print(f"waiting for {folder}: held by {describe(info)}", file=sys.stderr, flush=True)
            announced.append(True)

    if not lock.acquire(command, wait=wait, poll_s=poll_s, on_wait=announce):
        raise RunLockedError(
            f"{folder} is in use by {describe(_read_info(lock.path))}; wait for it to finish, "
            "rerun with --wait, or use another run folder"
        )
    _held[key] = [lock, 1]
    try:
        yield
    finally:
        del _held[key]
        lock.release()


def holds(folder: str | Path) -> bool:
    """Whether this process owns run folder `folder` (run_lock, re-entrant)."""
    return (Path(folder) / LOCK_FILE).resolve() in _held


def is_main_process() -> bool:
    """Rank 0 under torchrun (or no torchrun): the process that owns a DDP run's folder."""
    return os.environ.get("RANK", "0") == "0"
