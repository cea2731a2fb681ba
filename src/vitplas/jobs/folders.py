"""Where a job runs when no folder is given, alike for the command line and the API, and the
rule that run folders do not nest.

    default_run_dir(job, cfg)  runs/<kind>/<UTC time>-<model> (a fresh folder), or for a job
                               whose record says `folder: hash` (finetune)
                               runs/<kind>/<name>-<hash of the config>: the same command finds
                               the same folder again, so rerunning it resumes or skips
    check_not_nested(path)     a ConfigError when `path` is inside another run folder, or holds
                               run folders of its own without being one
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vitplas.config import ConfigError, config_from_dict, config_to_dict
from vitplas.jobs.job import Job
from vitplas.locks import LOCK_FILE, holds
from vitplas.runs import default_run_dir as stamped_dir

ROOT = "runs"


def config_hash_dir(cfg: Any, kind: str, runtime_keys, root: str | Path = ROOT) -> Path:
    """runs/<kind>/<cfg.run_name()>-<hash>: the hash covers the keys that differ from the
    defaults (runtime keys aside), so a key added to vitplas renames no folder."""
    default = config_to_dict(config_from_dict(type(cfg), {}))
    data = {
        k: v
        for k, v in config_to_dict(cfg).items()
        if k not in runtime_keys and (k not in default or v != default[k])
    }
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]
    safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in cfg.run_name())
    return Path(root) / kind / f"{safe}-{digest}"


def default_run_dir(job: Job, cfg: Any, root: str | Path = ROOT) -> Path:
    """The default run folder of `job` for `cfg` (module docstring)."""
    if job.folder == "hash":
        return config_hash_dir(cfg, job.kind, job.runtime_keys, root)
    name = "-".join(str(getattr(cfg, key)) for key in job.folder_name)
    return stamped_dir(job.kind, name.replace("/", "_"), root)


def _is_run(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() and (
        (folder / "DONE").exists() or (folder / LOCK_FILE).exists()
    )


def check_not_nested(path: str | Path) -> None:
    """Run folders do not nest: `path` inside another run folder (unless this process owns
    that one: a job's own parts, compare-base's base/ and finetuned/) or a folder of run
    folders that is not one itself is a ConfigError saying which folder to give instead."""
    path = Path(path)
    for parent in path.resolve().parents:
        if _is_run(parent) and not holds(parent):
            raise ConfigError(
                f"{path} is inside the run folder {parent}; give the run a folder of its own "
                f"(e.g. beside it: {parent.parent / path.name})"
            )
    if path.is_dir() and not (path / "config.yaml").is_file():
        runs = [c for c in path.iterdir() if c.is_dir() and _is_run(c)]
        if runs:
            raise ConfigError(
                f"{path} holds run folders ({runs[0].name}, ...); give this run a folder of "
                f"its own, e.g. {path / 'my-run'}"
            )


def default_finetune_dir(cfg: Any, root: str | Path = ROOT) -> Path:
    """The folder `vitplas finetune` picks for `cfg` (runs/finetune/<name>-<config hash>)."""
    from vitplas.jobs.table import get

    return default_run_dir(get("finetune"), cfg, root)
