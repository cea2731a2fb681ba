"""A cheap stand-in runner with run_finetune's contract, for tests and demos of the machinery.

`fake_finetune(cfg, run_dir)` takes the finetune config as a plain dict (spec runner.config:
null), writes metrics.jsonl, result.json and DONE like a real run, and is deterministic in its
config values. Knobs read from cfg: `sleep_s` (seconds per run), `fail` (raise), `base_acc`,
`disk_full_while` (a path: while it exists, the run stops as a full disk would), `write_mib`
(write a record of that many MiB),
`slots_dir` (a folder shared by the runs of a test: each run line in executions.log then says
how many fake runs were alive when it started, so tests can check `max_parallel`).
It never trains anything: its numbers only exercise launching, aggregation and reports.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from vitplas.runs import RunDir, atomic_write_bytes, atomic_write_json

# A made-up, fixed preference so that fake studies have structure to find (not a result).
_FAKE_OFFSET = {"mha": 0.02, "fc1": 0.015, "fc2": 0.01, "ln2": 0.0, "ln1": -0.005, "all": 0.025}


def _noise(cfg: dict[str, Any], salt: str) -> float:
    """A deterministic number in [-0.5, 0.5) from the config values."""
    text = json.dumps(cfg, sort_keys=True, default=str) + salt
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2**32 - 0.5


def _count_alive(slots: Path) -> int:
    """Register this process in `slots`; the number of registered processes still alive."""
    slots.mkdir(parents=True, exist_ok=True)
    (slots / str(os.getpid())).touch()
    alive = 0
    for entry in slots.iterdir():
        try:
            os.kill(int(entry.name), 0)
            alive += int(not _is_zombie(int(entry.name)))
        except (ProcessLookupError, ValueError):
            continue
        except PermissionError:
            alive += 1
    return alive


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] in "ZX"
    except OSError:
        return False


def fake_finetune(cfg: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Pretend to finetune: write curves and a result; raise when cfg['fail'] is true."""
    run = RunDir(run_dir)
    alive = _count_alive(Path(cfg["slots_dir"])) if cfg.get("slots_dir") else ""
    with open(run.path / "executions.log", "a") as handle:  # lets tests count real executions
        handle.write(f"{os.getpid()} {alive}".strip() + "\n")
    try:
        return _fake_run(cfg, run)
    except BaseException:
        _leave_slot(cfg)
        raise


def _leave_slot(cfg: dict[str, Any]) -> None:
    """A run that ends leaves its slot before its result (a killed one is found dead by pid)."""
    if cfg.get("slots_dir"):
        (Path(cfg["slots_dir"]) / str(os.getpid())).unlink(missing_ok=True)


def _fake_run(cfg: dict[str, Any], run: RunDir) -> dict[str, Any]:
    if cfg.get("fail"):
        raise RuntimeError(f"fake run asked to fail (dataset={cfg.get('dataset')})")
    if cfg.get("disk_full_while") and Path(cfg["disk_full_while"]).exists():
        raise OSError(errno.ENOSPC, "No space left on device", str(run.path / "metrics.jsonl"))
    time.sleep(float(cfg.get("sleep_s", 0.0)))
    if cfg.get("write_mib"):  # a record of this size (a real full disk on a small tmpfs)
        atomic_write_bytes(run.path / "weights.bin", b"\0" * int(cfg["write_mib"] * 2**20))
    train = cfg.get("train", ["all"])
    train = train[0] if isinstance(train, list) and len(train) == 1 else str(train)
    lr = float(cfg.get("lr", 0.01))
    steps = int(cfg.get("steps", 10))
    acc = float(cfg.get("base_acc", 0.8)) + _FAKE_OFFSET.get(train, 0.0)
    acc += -0.02 * abs(math.log10(lr) + 2) + 0.01 * _noise(cfg, "test")
    every = max(1, steps // 5)
    (run.path / "metrics.jsonl").unlink(missing_ok=True)
    for step in range(every, steps + 1, every):
        decay = math.exp(-3 * step / steps)
        train = {"loss": 2.3 * decay + 0.1, "grad_norm": 1 + decay}
        run.append_metrics({"kind": "train", "step": step, **train})
        val = {"val_loss": 2.0 * decay + 0.2, "val_acc": 100 * (acc - decay)}
        run.append_metrics({"kind": "val", "step": step, **val})
    result = {  # percent, like run_finetune
        "best_val_acc": round(100 * (acc + 0.01 * _noise(cfg, "val")), 6),
        "test_acc": round(100 * acc, 6),
        "best_step": steps,
        "steps": steps,
        "wall_time_s": float(cfg.get("sleep_s", 0.0)),
        "images_per_s": 1000.0,
        "fake": True,
    }
    _leave_slot(cfg)
    atomic_write_json(run.path / "result.json", result)
    run.mark_done()
    return result
