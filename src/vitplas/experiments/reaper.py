"""The parent of one local sweep worker: records how the worker ended when it could not.

`python -m vitplas.experiments.reaper RUN_FOLDER -- ARGS...` runs `python ARGS...` (submitit's
worker), forwards the signals it receives to it, and when the worker dies by a signal (kill -9,
the OOM killer) or exits non-zero without recording an end itself, writes that into the run's
status.json (`killed`, with the signal or exit code), so `vitplas status -v` can say why the
run is missing. On Linux the worker dies with its reaper (PR_SET_PDEATHSIG), so stopping a
launcher's jobs never leaves an orphan worker behind.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def _die_with_parent() -> None:
    """In the worker, before exec: receive SIGTERM when the reaper dies (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def record_end(folder: Path, returncode: int) -> None:
    """Write `killed` into status.json unless the worker recorded its own end (done/failed)."""
    from vitplas.experiments.store import read_json, write_status
    from vitplas.runs import DONE_MARKER, now_iso

    if returncode == 0 or (folder / DONE_MARKER).exists():
        return
    status = read_json(folder / "status.json") or {}
    if status.get("state") not in (None, "queued", "running"):
        return
    how = {"signal": -returncode} if returncode < 0 else {"exit_code": returncode}
    write_status(folder, "killed", ended_at=now_iso(), **how)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m vitplas.experiments.reaper RUN_FOLDER -- ARGS...", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    child = subprocess.Popen([sys.executable, *argv[2:]], preexec_fn=_die_with_parent)
    for sig in FORWARDED:
        signal.signal(sig, lambda number, _frame: child.send_signal(number))
    returncode = child.wait()
    record_end(folder, returncode)
    return returncode if returncode >= 0 else 128 - returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
