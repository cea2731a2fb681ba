"""A cheap stand-in analysis job, for tests of how a study launches its analysis jobs.

`fake_analysis(cfg, run_dir)` takes its config as a plain dict (spec entry `config: null`) and
records the process it ran in (pid, parent pid) and when, in its result. Knobs read from cfg:
`needs` (folders that must be finished, DONE, when it starts: it fails otherwise, so a test
sees a job start before what it depends on), `fail` (raise), `sleep_s`. It computes nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def fake_analysis(cfg: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Pretend to analyse: check what it needs is done, sleep, record the process."""
    started = time.time()
    with open(Path(run_dir) / "executions.log", "a") as handle:  # counts real executions
        handle.write(f"{os.getpid()}\n")
    unfinished = [str(f) for f in cfg.get("needs", []) if not (Path(f) / "DONE").exists()]
    if unfinished:
        raise RuntimeError(f"fake analysis started before {unfinished} were done")
    if cfg.get("fail"):
        raise RuntimeError("fake analysis asked to fail")
    time.sleep(float(cfg.get("sleep_s", 0.0)))
    return {"pid": os.getpid(), "ppid": os.getppid(), "started": started, "ended": time.time()}
