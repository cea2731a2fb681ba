"""One owner per folder: OS locks (flock, through the `filelock` library) on a lock file, for run
folders and studies.

The kernel releases a flock when its process dies, however it dies (kill -9 included), so a
lock is never stale. The lock file holds who took it (pid, host, command, since) for the
message a second process prints, and for `holder()`, which the sweep asks before launching.

    with run_lock(folder, command="finetune"):   # RunLockedError at once when held,
        ...                                       # or waits with wait=True / VITPLAS_WAIT_LOCK=1
    holder(folder) -> {"pid", "host", "command", "since"} | None

`run_lock` is re-entrant within one process (a sweep job owns its run folder, then calls the
runner, which takes the same lock again): filelock's one instance per lock file and process,
counted. `FileLock` is the plain, non-re-entrant lock under it (an instance of its own), for
other lock files (a study's launcher.lock) and for code that polls (`acquire() -> bool`).

Written here rather than by filelock, each for a reason: the holder record (filelock writes
none; its own soft-lock marker would replace it, so its soft fallback is off and the lock file
is kept on release, for waiters to share its inode); `lock_holder`, which asks who holds a
lock without taking it (filelock can only acquire, which would hold, for an instant, a lock
that a starting job then finds taken); the wait loop (it reports the holder on every poll);
and a file system without flock (some NFS: filelock raises there), where a lock is taken
without protection, with a warning, and counted here so that it stays re-entrant. flock is
advisory and local to one machine's kernel; on a network file system whose flock does not reach
other hosts, two hosts may still both write (run one job per folder there).
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

import filelock

LOCK_FILE = ".lock"
WAIT_ENV = "VITPLAS_WAIT_LOCK"  # "1": wait for a held lock instead of stopping (CLI --wait)
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # a file system without flock

_unprotected: dict[Path, int] = {}  # resolved lock file -> depth: run_locks taken without flock


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


def _write_info(path: Path, command: str) -> None:
    """The holder record, written into the lock file by the process that holds the lock."""
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command or " ".join(sys.argv[:3]),
        "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    finally:
        os.close(fd)


def _clear_info(path: Path) -> None:
    """Empty the lock file before its release (the file stays: waiters share its inode)."""
    with contextlib.suppress(FileNotFoundError):
        os.truncate(path, 0)


def _os_lock(path: Path, own: bool = False) -> filelock.BaseFileLock:
    """filelock's flock on `path`: the process's one instance for that file (re-entrant, from
    any thread), or with `own` an instance of its own (conflicting with every other holder)."""
    return filelock.FileLock(
        path,
        mode=0o644,
        thread_local=False,
        blocking=False,
        is_singleton=not own,
        preserve_lock_file=True,
        fallback_to_soft=False,
    )


def _take(
    lock: filelock.BaseFileLock,
    path: Path,
    wait: bool,
    poll_s: float,
    on_wait: Callable[[dict[str, Any] | None], None] | None,
) -> bool:
    """Take `lock` (once, or polling while `wait`); True when taken, or when this file system
    has no flock (then with a warning: nothing protects the folder); False when held."""
    while True:
        try:
            lock.acquire(blocking=False)
            return True
        except filelock.Timeout:
            if not wait:
                return False
            if on_wait is not None:
                on_wait(_read_info(path))
            time.sleep(poll_s)
        except OSError as err:
            if err.errno not in NO_FLOCK:
                raise
            warnings.warn(
                f"{path}: this file system has no locks ({err}); nothing stops a second "
                "process from writing the same folder",
                stacklevel=4,
            )
            return True


def _held_here(path: Path) -> bool:
    """Whether this process holds the lock file `path` through run_lock."""
    return path.resolve() in _unprotected or _os_lock(path).is_locked


def lock_holder(path: str | Path) -> dict[str, Any] | None:
    """Who holds the lock file `path` (pid, host, command, since), or None when it is free."""
    path = Path(path)
    if not path.is_file():
        return None
    if _held_here(path):
        return _read_info(path)
    fd = os.open(path, os.O_RDONLY)
    try:  # a shared flock probe: it never holds the lock a holder could be taking
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
        self._lock: filelock.BaseFileLock | None = None

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
        lock = _os_lock(self.path, own=True)
        if not _take(lock, self.path, wait, poll_s, on_wait):
            return False
        _write_info(self.path, command)
        self._lock = lock
        return True

    def holder(self) -> str:
        """'pid N on HOST (command)' of the process that holds the lock, as far as written."""
        return describe(_read_info(self.path), since=False)

    def release(self) -> None:
        if self._lock is None:
            return
        lock, self._lock = self._lock, None
        _clear_info(self.path)
        if lock.is_locked:
            lock.release()


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
    path = folder / LOCK_FILE
    key, lock = path.resolve(), _os_lock(path)
    if key in _unprotected or lock.is_locked:  # this process owns it: enter again
        with _entered_again(key, lock):
            yield
        return
    if wait is None:
        wait = os.environ.get(WAIT_ENV) == "1"
    announced: list[bool] = []

    def announce(info: dict[str, Any] | None) -> None:
        if not announced:
            print(f"waiting for {folder}: held by {describe(info)}", file=sys.stderr, flush=True)
            announced.append(True)

    if not _take(lock, path, wait, poll_s, announce):
        raise RunLockedError(
            f"{folder} is in use by {describe(_read_info(path))}; wait for it to finish, "
            "rerun with --wait, or use another run folder"
        )
    _write_info(path, command)
    if not lock.is_locked:  # no flock here: counted by hand
        _unprotected[key] = 1
    try:
        yield
    finally:
        _clear_info(path)
        _unprotected.pop(key, None)
        if lock.is_locked:
            lock.release()


@contextlib.contextmanager
def _entered_again(key: Path, lock: filelock.BaseFileLock) -> Iterator[None]:
    """One more level of a run_lock this process holds (filelock's count, or the hand count)."""
    if key in _unprotected:
        _unprotected[key] += 1
    else:
        lock.acquire(blocking=False)
    try:
        yield
    finally:
        if key in _unprotected:
            _unprotected[key] -= 1
        else:
            lock.release()


def holds(folder: str | Path) -> bool:
    """Whether this process owns run folder `folder` (run_lock, re-entrant)."""
    return _held_here(Path(folder) / LOCK_FILE)


def is_main_process() -> bool:
    """Rank 0 under torchrun (or no torchrun): the process that owns a DDP run's folder."""
    return os.environ.get("RANK", "0") == "0"
