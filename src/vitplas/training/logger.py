"""Training metrics: metrics.jsonl (the record), TensorBoard (the view), a progress bar (ETA)."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

from vitplas.runs import RunDir, atomic_write_text


def truncate_metrics(run: RunDir, step: int) -> None:
    """Drop metric records after `step` (written by a run killed after its last checkpoint),
    so that a resumed run's metrics.jsonl equals an uninterrupted run's."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return
    import json

    from vitplas.records import read_metrics

    records = read_metrics(run.path, unfinished=True)  # a resume: the state as it is
    kept = [r for r in records if r.get("step", 0) <= step and r.get("kind") != "test"]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class TrainLogger:
    """Writes records to metrics.jsonl and TensorBoard, and draws a progress bar with ETA."""

    def __init__(self, run: RunDir, *, start_step: int, steps: int, tensorboard: bool, show: bool):
        self.run, self.steps = run, steps
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run wrote after its last checkpoint
            self.writer = SummaryWriter(str(run / "tensorboard"), purge_step=start_step + 1)
        self.progress = None
        if show:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("finetune"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                disable=not sys.stderr.isatty(),
            )
            self.task = self.progress.add_task("train", total=steps, completed=start_step, info="")
            self.progress.start()
        self._last_print = time.monotonic()

    def log(self, record: Mapping[str, Any]) -> None:
        """One record: {"kind": "train"|"val", "step": int, metric: float, ...}."""
        self.run.append_metrics(record)
        if self.writer is not None:
            kind, step = record["kind"], record["step"]
            for key, value in record.items():
                if key not in ("kind", "step") and isinstance(value, int | float):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def advance(self, step: int, info: str = "") -> None:
        """Move the bar to `step`; without a terminal, print a line every ~30 s instead."""
        if self.progress is not None:
            self.progress.update(self.task, completed=step, info=info)
            if not self.progress.disable:
                return
        now = time.monotonic()
        if info and (now - self._last_print > 30 or step == self.steps):
            print(f"step {step}/{self.steps} {info}", file=sys.stderr, flush=True)
            self._last_print = now

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.close()
