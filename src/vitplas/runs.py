"""Run folders: atomic writes, resolved configs, manifests, metrics and tidy tables.

Every run of vitplas writes into one folder:
    config.yaml     the resolved config
    manifest.json   versions, git commit, device, timings, seed, ...
    metrics.jsonl   one JSON object per line (training curves, progress)
    <table>.csv / <table>.parquet   tidy result tables
    DONE            written last: a run folder with DONE is finished
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DONE_MARKER = "DONE"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, set | tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_table(frame: Any, stem: str | Path) -> tuple[Path, Path]:
    """Write a pandas DataFrame as `stem.csv` and `stem.parquet`, each atomically."""
    import io

    stem = Path(stem)
    csv_path = atomic_write_text(stem.with_suffix(".csv"), frame.to_csv(index=False))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    parquet_path = atomic_write_bytes(stem.with_suffix(".parquet"), buffer.getvalue())
    return csv_path, parquet_path


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The git commit of the checkout vitplas runs from (with '+dirty'), or None."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty=+dirty", "--abbrev=40"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_manifest() -> dict[str, Any]:
    """Versions, host, device and git commit: the part of a manifest that every run shares."""
    import numpy
    import torch

    import vitplas

    versions = {"vitplas": vitplas.__version__, "python": platform.python_version()}
    versions.update({"torch": torch.__version__, "numpy": numpy.__version__})
    for name in ("timm", "torchvision", "pandas", "sklearn", "scipy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            continue
    device = {"cuda": torch.cuda.is_available(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        device["gpu"] = torch.cuda.get_device_name(0)
        device["gpu_count"] = torch.cuda.device_count()
    return {
        "versions": versions,
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "device": device,
    }


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# config keys of an analysis run that change no number (hardware and display only)
ANALYSIS_RUNTIME_KEYS = frozenset({"device", "num_workers"})


class RunDir:
    """One run folder. All writes are atomic; `mark_done` is the last one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def write_config(self, cfg: Any) -> Path:
        from vitplas.config import dump_config

        return atomic_write_text(self.path / "config.yaml", dump_config(cfg))

    def start(self, cfg: Any, runtime_keys: frozenset[str] = ANALYSIS_RUNTIME_KEYS) -> Path:
        """Write `cfg` as this run's config. A finished run with other settings is a
        ConfigError: its results are never overwritten by another experiment's."""
        from vitplas.config import check_same_config

        if self.is_done():
            check_same_config(self.path, cfg, runtime_keys)
        return self.write_config(cfg)

    def write_manifest(self, extra: Mapping[str, Any]) -> Path:
        """Environment facts plus `extra` (seed, model checksum, timings, ...)."""
        manifest = {"written_at": now_iso(), **environment_manifest(), **dict(extra)}
        return atomic_write_json(self.path / "manifest.json", manifest)

    def read_manifest(self) -> dict[str, Any]:
        return json.loads((self.path / "manifest.json").read_text())

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl (flushed; a torn last line is ignored on read)."""
        with open(self.path / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(dict(record), default=_json_default) + "\n")
            handle.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill
        return records

    def is_done(self) -> bool:
        return (self.path / DONE_MARKER).exists()

    def mark_done(self) -> None:
        atomic_write_text(self.path / DONE_MARKER, now_iso() + "\n")


def default_run_dir(kind: str, name: str, root: str | Path = "runs") -> Path:
    """`runs/<kind>/<UTC timestamp>-<name>`: a fresh folder for an ad-hoc run."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(root) / kind / f"{stamp}-{safe}"


def vitplas_home() -> Path:
    """Cache root for weights and offline assets: $VITPLAS_HOME or ~/.cache/vitplas."""
    return Path(os.environ.get("VITPLAS_HOME", Path.home() / ".cache" / "vitplas"))
