"""A run's records, parsed: what every module outside the run-folder layer reads a run with.

Each reader takes the bytes from vitplas.runs.read_record, the one reader of a run's records:
a finished run's record is checked against its seal (a damaged one is a DamagedRecordError
naming the file and the fix); an unfinished run's is refused (RunNotFinishedError) unless the
caller asks for it on purpose (`unfinished=True`: a resume, `vitplas status`).

    read_json(run_dir, name="result.json")      read_yaml(run_dir, name="config.yaml")
    read_table(run_dir, name) -> DataFrame       (.csv or .parquet)
    read_metrics(run_dir) -> [record, ...]       (metrics.jsonl; a line torn by a kill skipped)
    read_weights(run_dir, name) -> ({name: tensor}, sha256)   (safetensors)

State files (what a killed run resumes from: train checkpoints, estimate_state.pt, the pair
parts) are read unfinished on purpose, and each records the settings that determine its
numbers (`settings_of`: the run's config minus its runtime keys) and their `fingerprint`. A
resume under other settings is a StateMismatchError naming the keys that differ, never a run
continued from another run's numbers:

    stamp(state, settings) -> state with "settings" and "fingerprint"
    check_settings(state, settings, path, fix)
    read_state(run_dir, name, settings, fix) -> the torch state (weights_only) or None
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vitplas.config import ConfigError, config_to_dict
from vitplas.runs import DamagedRecordError, parse_json, read_record

__all__ = [
    "StateMismatchError",
    "check_settings",
    "fingerprint",
    "read_json",
    "read_metrics",
    "read_state",
    "read_table",
    "read_weights",
    "read_yaml",
    "settings_of",
    "stamp",
]


def read_json(run_dir: str | Path, name: str = "result.json", *, unfinished: bool = False) -> Any:
    """Record `name` as JSON; unparsable JSON is a DamagedRecordError."""
    return parse_json(run_dir, name, read_record(run_dir, name, unfinished=unfinished))


def read_yaml(run_dir: str | Path, name: str = "config.yaml", *, unfinished: bool = False) -> Any:
    """Record `name` as YAML (safe_load: plain data only); unparsable is a DamagedRecordError."""
    import yaml

    data = read_record(run_dir, name, unfinished=unfinished)
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as err:
        raise DamagedRecordError(run_dir, name, f"not valid YAML ({err})") from err


def read_table(run_dir: str | Path, name: str, *, unfinished: bool = False):
    """Record `name` (.csv or .parquet) as a pandas DataFrame."""
    import pandas as pd

    data = io.BytesIO(read_record(run_dir, name, unfinished=unfinished))
    try:
        return pd.read_parquet(data) if name.endswith(".parquet") else pd.read_csv(data)
    except (ValueError, OSError) as err:  # pyarrow's errors are ValueError / OSError
        raise DamagedRecordError(run_dir, name, f"not a readable table ({err})") from err


def read_metrics(run_dir: str | Path, *, unfinished: bool = False) -> list[dict[str, Any]]:
    """metrics.jsonl's records ([] for an unfinished run that wrote none yet); a line torn by
    a kill (only an unfinished run can hold one: a sealed file is checked whole) is skipped."""
    try:
        data = read_record(run_dir, "metrics.jsonl", unfinished=unfinished)
    except FileNotFoundError as err:
        if type(err) is not FileNotFoundError:  # RunNotFinishedError: not asked for
            raise
        return []
    records = []
    for line in data.decode(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_weights(run_dir: str | Path, name: str, *, unfinished: bool = False):
    """({name: tensor} of safetensors record `name`, its sha256); unparsable: damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = read_record(run_dir, name, unfinished=unfinished)
    try:
        return load(data), hashlib.sha256(data).hexdigest()
    except (SafetensorError, OSError, ValueError) as err:
        raise DamagedRecordError(run_dir, name, f"not a safetensors file ({err})") from err


# ---- state files: the settings they were computed under -------------------------------------
class StateMismatchError(ConfigError):
    """A state file of a run folder was computed under other settings than the run's."""


def settings_of(cfg: Any, runtime_keys: Iterable[str] = (), keep: Iterable[str] = ()) -> dict:
    """The settings that determine a run's numbers: its config (a dataclass or mapping) as
    plain data, without `runtime_keys` (hardware, display) but with `keep` among them."""
    data = config_to_dict(cfg) if not isinstance(cfg, dict) else dict(cfg)
    drop = set(runtime_keys) - set(keep)
    return json.loads(json.dumps({k: v for k, v in data.items() if k not in drop}, default=str))


def fingerprint(settings: dict[str, Any]) -> str:
    """sha256 of `settings` as canonical JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def stamp(state: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """`state` with its settings and their fingerprint recorded (what check_settings reads)."""
    return {**state, "settings": settings, "fingerprint": fingerprint(settings)}


def _differences(saved: dict[str, Any], settings: dict[str, Any]) -> str:
    keys = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
    shown = ", ".join(f"{k}: {saved.get(k)!r} there, {settings.get(k)!r} here" for k in keys[:4])
    return shown + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def check_settings(state: Any, settings: dict[str, Any], path: Path, fix: str) -> None:
    """A StateMismatchError when `state` (read from `path`) was not computed under `settings`
    (no fingerprint: of an unknown run); the message names the keys that differ and `fix`."""
    recorded = state.get("fingerprint") if isinstance(state, dict) else None
    if recorded == fingerprint(settings):
        return
    saved = state.get("settings") if isinstance(state, dict) else None
    if recorded is None or not isinstance(saved, dict):
        why = "it records no settings (not saved by this run)"
    else:
        why = f"it was saved under other settings ({_differences(saved, settings)})"
    raise StateMismatchError(f"{path} cannot be resumed from: {why}; {fix}")


def read_state(run_dir: str | Path, name: str, settings: dict[str, Any], fix: str):
    """The torch state file `name` of an unfinished run (weights_only), checked to be of
    `settings` (check_settings); None when there is none. An unreadable one is a
    DamagedRecordError naming it and `fix`."""
    import torch

    try:
        data = read_record(run_dir, name, unfinished=True)
    except FileNotFoundError:
        return None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged pickle
        raise DamagedRecordError(run_dir, name, f"unreadable ({err})", fix=fix) from None
    check_settings(state, settings, Path(run_dir) / name, fix)
    return state
