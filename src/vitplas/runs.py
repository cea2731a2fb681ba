"""Run folders: atomic writes, resolved configs, manifests, metrics and tidy tables.

Every run of vitplas writes into one folder:
    config.yaml     the resolved config
    manifest.json   versions, git commit, device, timings, seed, ...
    metrics.jsonl   one JSON object per line (training curves, progress)
    <table>.csv / <table>.parquet   tidy result tables
    checksums.json  sha256 of every record (RECORD_PATTERNS), taken just before DONE
    DONE            written last: a run folder with DONE is finished; it records the sha256 of
                    checksums.json, so that the seal itself is checked

Every read of a run's record goes through one function, `read_record(run_dir, name)` (the
typed readers of vitplas.records parse what it returns): a finished run's record is checked
against its seal, and a file whose checksum differs from the sealed one (truncated, edited,
flipped bytes), or that the seal does not cover, is a DamagedRecordError naming the file and
the fix, never a silently different number. So is a missing checksums.json, one whose sha256
differs from DONE's (replaced to match an edited record), and a DONE that names no seal (empty,
unreadable, or of another format). An unfinished run's files are refused
(RunNotFinishedError), unless the caller asks for the unfinished state on purpose
(`unfinished=True`: a resume, `vitplas status`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import secrets
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitplas.paths import vitplas_home as vitplas_home  # re-exported (its home: paths)

DONE_MARKER = "DONE"
CHECKSUMS = "checksums.json"
# DONE's keys: the sha256 of checksums.json, and of the one an extended seal is replacing it by
SEAL_KEY, PENDING_KEY = "checksums_sha256", "pending_checksums_sha256"
# the records a seal covers by default (paths relative to the run folder): what vitplas reads
# back. A job of vitplas.jobs seals its own records (its Job record's `records`); these are
# for a runner outside the job table. Not sealed: the lock, the markers, a launcher's
# bookkeeping (sweep.json, status.json, error.txt, rewritten after DONE), figures (views of the
# tables), TensorBoard events and the resumable state.
RECORD_PATTERNS = (
    "config.yaml",
    "manifest.json",
    "metrics.jsonl",
    "result.json",
    "*.csv",
    "*.parquet",
    "checkpoints/*.safetensors",
)


class DamagedRecordError(ValueError):
    """A record of a finished run is missing, changed since the run sealed it, or unreadable.
    `.run` is the run folder, `.name` the record (relative path), `.problem` what is wrong;
    `fix` replaces the default advice (a sweep's run has no --repair: it is deleted and rerun)."""

    def __init__(self, run: str | Path, name: str, problem: str, fix: str | None = None):
        self.run, self.name, self.problem = Path(run), name, problem
        fix = fix or (
            f"rerun the same command with --repair to recompute the run, or delete {run} to "
            "start over"
        )
        super().__init__(f"{Path(run) / name} is damaged: {problem}; {fix}")


class RunNotFinishedError(FileNotFoundError):
    """A record of a run that has not finished (no DONE) was asked for as a finished one's."""


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temp file in the same folder and a rename. The file
    gets the mode a plain open() gives (0o666 less the umask: a group may read a shared
    study); an OSError (a full disk) names `path`, not the temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = _open_temp(path)
    except OSError as err:
        raise _naming(err, path) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _naming(err, path) from err
        raise
    return path


def temp_beside(path: str | Path) -> Path:
    """A new empty file beside `path` (.NAME.<random>.tmp) with a plain open()'s mode, for a
    writer that fills it by name and renames it over `path` (os.replace)."""
    path = Path(path)
    try:
        fd, tmp = _open_temp(path)
    except OSError as err:
        raise _naming(err, path) from None
    os.close(fd)
    return tmp


def _open_temp(path: Path) -> tuple[int, Path]:
    """(fd, name) of a new file beside `path`, created exclusively with mode 0o666 (the
    kernel applies the umask, as for open(); tempfile.mkstemp would give 0o600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp name beside {path}")


def _naming(err: OSError, path: Path) -> OSError:
    """`err` as an OSError of `path` when it names no file or only the temp file."""
    named = err.filename is not None and not Path(str(err.filename)).name.startswith(
        f".{path.name}."
    )
    if named or err.errno is None:
        return err
    return OSError(err.errno, err.strerror, str(path))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_bytes(path, _json_bytes(data))


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, default=_json_default) + "\n").encode()


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

    from vitplas.version import __version__

    versions = {"vitplas": __version__, "python": platform.python_version()}
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


@dataclass
class Computed:
    """What a compute function gives back.

    result: the JSON-able result (written as result.json unless the job writes its own);
    manifest: the facts manifest.json records beside the environment's (None: none);
    returned: what the caller gets besides, not written (tables as DataFrames)."""

    result: dict[str, Any]
    manifest: dict[str, Any] | None = None
    returned: dict[str, Any] = field(default_factory=dict)


class RunDir:
    """One run folder. All writes are atomic; `mark_done` is the last one."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if create:
            self.path.mkdir(parents=True, exist_ok=True)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def write_config(self, cfg: Any) -> Path:
        from vitplas.config import dump_config

        return atomic_write_text(self.path / "config.yaml", dump_config(cfg))

    def start(self, cfg: Any, runtime_keys: frozenset[str] = ANALYSIS_RUNTIME_KEYS) -> Path:
        """Write `cfg` as this run's config; a folder holding other settings is a ConfigError."""
        from vitplas.config import check_same_config

        check_same_config(self.path, cfg, runtime_keys, self._stored_config())
        return self.write_config(cfg)

    def _stored_config(self) -> Any:
        """The folder's config.yaml parsed (verified when the run is finished), or None."""
        import yaml

        from vitplas.config import ConfigError

        if not (self.path / "config.yaml").is_file() and not self.is_done():
            return None
        data = read_record(self.path, "config.yaml", unfinished=True)
        try:
            return yaml.safe_load(data) or {}
        except yaml.YAMLError as err:
            raise ConfigError(
                f"{self.path / 'config.yaml'} is not valid YAML ({err}); restore it, or delete "
                f"{self.path} to start over"
            ) from err

    def begin(
        self,
        cfg: Any,
        runtime_keys: frozenset[str] | set[str] = ANALYSIS_RUNTIME_KEYS,
        repair: bool = False,
    ) -> bool:
        """The config check, first thing: True when the folder holds a finished run of `cfg`
        (skip it; its records verified), False when there is work to do. A run of other
        settings, finished or not, is a ConfigError; a damaged record a DamagedRecordError,
        unless `repair`, which clears the folder so that the run is recomputed."""
        from vitplas.config import check_same_config

        self.check_seal(repair)
        check_same_config(self.path, cfg, runtime_keys, self._stored_config())
        return self.is_done()

    def check_seal(self, repair: bool = False) -> None:
        """A finished run's records verified (none: nothing to check): a damaged one is a
        DamagedRecordError, unless `repair`, which clears the folder to recompute the run."""
        if not self.is_done():
            return
        try:
            self.verify()
            self.read_verified("config.yaml")
        except DamagedRecordError:
            if not repair:
                raise
            self.clear()

    def clear(self) -> None:
        """Delete everything in the folder but its lock (a --repair recomputes from zero)."""
        import shutil

        for path in self.path.iterdir():
            if path.name == ".lock":
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()

    def write_manifest(self, extra: Mapping[str, Any]) -> Path:
        """Environment facts plus `extra` (seed, model checksum, timings, ...)."""
        manifest = {"written_at": now_iso(), **environment_manifest(), **dict(extra)}
        return atomic_write_json(self.path / "manifest.json", manifest)

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl (flushed; a torn last line is ignored on read)."""
        with open(self.path / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(dict(record), default=_json_default) + "\n")
            handle.flush()

    def is_done(self) -> bool:
        return (self.path / DONE_MARKER).exists()

    def mark_done(self, patterns: tuple[str, ...] = RECORD_PATTERNS) -> None:
        """Seal every record (`patterns`, checksums.json), then write DONE naming the seal:
        the last write of a run."""
        fault_point("before_seal")
        digest = self.seal(patterns=patterns)
        fault_point("before_done")
        self._write_done({"finished_at": now_iso(), SEAL_KEY: digest})

    def done_record(self) -> dict[str, Any]:
        """DONE's record: {"finished_at", SEAL_KEY: sha256 of checksums.json}. A DONE that
        names no seal (empty, unreadable, not this record) is a DamagedRecordError: the run
        says it finished, and nothing it says can be checked."""
        try:
            data = (self.path / DONE_MARKER).read_bytes()
        except FileNotFoundError:
            raise DamagedRecordError(self.path, DONE_MARKER, "the file is missing") from None
        except OSError as err:
            raise DamagedRecordError(self.path, DONE_MARKER, f"unreadable ({err})") from err
        try:
            record = json.loads(data) if data.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get(SEAL_KEY), str):
            what = "empty" if not data.strip() else "not the record vitplas writes"
            problem = f"{what}: it names no seal ({SEAL_KEY}), so no record can be checked"
            raise DamagedRecordError(self.path, DONE_MARKER, problem)
        return record

    def _write_done(self, record: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / DONE_MARKER, dict(record))

    # ---- verified records ---------------------------------------------------------------
    def record_names(self, patterns: tuple[str, ...] = RECORD_PATTERNS) -> list[str]:
        """Relative paths of the records present that a seal covers (`patterns`)."""
        import fnmatch

        names = []
        for pattern in patterns:
            folder, _, glob = pattern.rpartition("/")
            for path in sorted((self.path / folder).glob(glob)):
                rel = path.relative_to(self.path).as_posix()
                if path.is_file() and fnmatch.fnmatch(rel, pattern) and rel not in names:
                    names.append(rel)
        return names

    def seal(
        self, names: list[str] | None = None, patterns: tuple[str, ...] = RECORD_PATTERNS
    ) -> str:
        """Record sha256 and size of `names` (default: every record of `patterns`) in
        checksums.json; the
        sha256 of checksums.json is returned. Extending a finished run's seal (evaluate) names
        the new seal in DONE first, next to the current one: a kill in between damages nothing."""
        sums = self.checksums() if names is not None else {}
        for name in self.record_names(patterns) if names is None else names:
            path = self.path / name
            sums[name] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        data = _json_bytes(sums)
        digest = hashlib.sha256(data).hexdigest()
        if not self.is_done():
            atomic_write_bytes(self.path / CHECKSUMS, data)
            return digest
        record = {k: v for k, v in self.done_record().items() if k != PENDING_KEY}
        sealed = self.path / CHECKSUMS  # checked by checksums() when `names` are given
        current = file_sha256(sealed) if sealed.exists() else digest
        self._write_done({**record, SEAL_KEY: current, PENDING_KEY: digest})
        fault_point("before_reseal")
        atomic_write_bytes(self.path / CHECKSUMS, data)
        self._write_done({**record, SEAL_KEY: digest})
        return digest

    def checksums(self) -> dict[str, dict[str, Any]]:
        """The sealed checksums; {} while the run is unfinished and unsealed. A finished run's
        checksums.json must exist and match the sha256 that DONE records."""
        path = self.path / CHECKSUMS
        if not self.is_done():
            return self._parse_checksums(self._read_seal()) if path.exists() else {}
        for _ in range(3):  # DONE read again: a seal extended meanwhile (evaluate) is no damage
            record = self.done_record()
            data = self._read_seal()
            accepted = {record.get(SEAL_KEY), record.get(PENDING_KEY)} - {None}
            if hashlib.sha256(data).hexdigest() in accepted:
                return self._parse_checksums(data)
            if self.done_record() == record:
                break
        raise DamagedRecordError(
            self.path,
            CHECKSUMS,
            f"its content was changed since the run finished (sha256 differs from the one "
            f"{DONE_MARKER} records)",
        )

    def _read_seal(self) -> bytes:
        try:
            return (self.path / CHECKSUMS).read_bytes()
        except FileNotFoundError:
            problem = "the file is missing (the seal of a finished run)"
            raise DamagedRecordError(self.path, CHECKSUMS, problem) from None
        except OSError as err:
            raise DamagedRecordError(self.path, CHECKSUMS, f"unreadable ({err})") from err

    def _parse_checksums(self, data: bytes) -> dict[str, dict[str, Any]]:
        try:
            sums = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DamagedRecordError(self.path, CHECKSUMS, f"unreadable ({err})") from err
        if not isinstance(sums, dict):
            raise DamagedRecordError(self.path, CHECKSUMS, "not a mapping of checksums")
        return sums

    def _sealed_bytes(self, name: str) -> bytes:
        """The bytes of record `name` of this finished run, checked against its seal."""
        expected = self.checksums().get(name)
        path = self.path / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DamagedRecordError(self.path, name, "the file is missing") from None
        except OSError as err:
            raise DamagedRecordError(self.path, name, f"unreadable ({err})") from err
        if expected is None:
            raise DamagedRecordError(
                self.path, name, "the run's seal does not cover it (written after the run "
                "finished, or by another run)")  # fmt: skip
        if hashlib.sha256(data).hexdigest() != expected["sha256"]:
            what = "truncated" if len(data) < expected["bytes"] else "changed"
            raise DamagedRecordError(
                self.path,
                name,
                f"its content was {what} since the run finished ({len(data)} bytes, "
                f"sealed with {expected['bytes']}; checksum differs)",
            )
        return data

    def read_verified(self, name: str) -> bytes:
        """read_record(this folder, name): a finished run's record, verified."""
        return read_record(self.path, name)

    def read_json(self, name: str = "result.json") -> Any:
        """A verified JSON record; unparsable JSON is a DamagedRecordError too."""
        return parse_json(self.path, name, self.read_verified(name))

    def verify(self, names: list[str] | None = None) -> None:
        """Check `names` (default: every sealed record); the first damaged one is raised."""
        for name in self.checksums() if names is None else names:
            self.read_verified(name)


def read_record(run_dir: str | Path, name: str, *, unfinished: bool = False) -> bytes:
    """The bytes of record `name` (a path relative to the run folder) of the run in `run_dir`:
    the one reader of a run's records (module docstring).

    A finished run (DONE): checked against its seal, else a DamagedRecordError naming the
    file, the problem and the fix. An unfinished run: a RunNotFinishedError, unless
    `unfinished` (the caller reads the state of a run in progress on purpose: a resume, a
    status); then the file as it is (FileNotFoundError when absent)."""
    run = RunDir(run_dir, create=False)
    if run.is_done():
        return run._sealed_bytes(name)
    if not unfinished:
        raise RunNotFinishedError(
            f"{run.path} is not a finished run (no {DONE_MARKER}: still going, or stopped); "
            f"finish it (rerun its command) before using {name}"
        )
    return (run.path / name).read_bytes()


def parse_json(run_dir: str | Path, name: str, data: bytes) -> Any:
    """`data` (record `name` of `run_dir`) as JSON; unparsable JSON is a DamagedRecordError."""
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DamagedRecordError(run_dir, name, f"not valid JSON ({err})") from err


def read_verified(run_dir: str | Path, name: str = "result.json") -> Any:
    """A finished run's record, verified: JSON (.json) parsed, YAML (.yaml) parsed, else bytes.
    DamagedRecordError when damaged; RunNotFinishedError when the run is not finished."""
    data = read_record(run_dir, name)
    if name.endswith(".json"):
        return parse_json(run_dir, name, data)
    if name.endswith((".yaml", ".yml")):
        import yaml

        try:
            return yaml.safe_load(data)
        except yaml.YAMLError as err:
            raise DamagedRecordError(run_dir, name, f"not valid YAML ({err})") from err
    return data


def disk_full(err: OSError) -> str | None:
    """The one line to print for a full disk (ENOSPC/EDQUOT), or None for another OSError."""
    import errno

    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    where = f" writing {err.filename}" if err.filename else ""
    return (
        f"no space left on device{where}; free space (vitplas clean RUNS deletes the train "
        "state of finished runs) and rerun the same command: it resumes where it stopped"
    )


def fault_point(name: str) -> None:
    """Test hook: with VITPLAS_FAULT=name:count, the count-th call at `name` kills this
    process with SIGKILL (as a crash or `kill -9` would). Unset (always in normal use): no-op."""
    spec = os.environ.get("VITPLAS_FAULT")
    if not spec or spec.rsplit(":", 1)[0] != name:
        return
    count = int(spec.rsplit(":", 1)[1]) if ":" in spec else 1
    _FAULT_CALLS[name] = _FAULT_CALLS.get(name, 0) + 1
    if _FAULT_CALLS[name] >= count:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


_FAULT_CALLS: dict[str, int] = {}


def default_run_dir(kind: str, name: str, root: str | Path = "runs") -> Path:
    """`runs/<kind>/<UTC timestamp>-<name>`: a fresh folder for an ad-hoc run."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(root) / kind / f"{stamp}-{safe}"
