"""The runs a job reads as its input, fingerprinted by content: what a read-back or a resume
checks besides the config.

A config value may name another run folder (the keys of the Job record's `input_runs`: a model
given as a finetuning run, `RUN#base` or `RUN/checkpoints/best.safetensors`; bounds'
`plasticity: RUN`). The config names the folder, not what it holds: an unfinished run
(allow_unfinished) trains on, a run is deleted and recomputed into the same folder. So the
lifecycle records, at the job's start, a fingerprint of each such run's content in inputs.json
(sealed with the job's records):

    finished run     sha256 of its seal (checksums.json's entries, verified against DONE), less
                     the tables of the jobs that work in a finished run (evaluate's): those add
                     to a run, they change none of its records
    unfinished run   sha256 of the records a model is built from, as they are now (config.yaml,
                     manifest.json, checkpoints/*.safetensors)

A read-back or a resume in a folder whose inputs.json records other fingerprints (or none: made
by an older vitplas) is an InputChangedError naming the folder and what to do, never the old
numbers; so is an input that changed while the job ran.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from pathlib import Path
from typing import Any

from vitplas.config import ConfigError
from vitplas.jobs.job import Job
from vitplas.runs import DamagedRecordError, RunDir, atomic_write_json, file_sha256, read_record

INPUTS_FILE = "inputs.json"  # {config key: {"run", "state", "sha256"}} of the job's input runs
MODEL_RECORDS = ("config.yaml", "manifest.json", "checkpoints/*.safetensors")  # of an unfinished
# run: what a model is built from
Fingerprints = dict[str, dict[str, str]]


class InputChangedError(ConfigError):
    """A run folder's numbers were computed from an input run whose content has changed since."""


def named_run(value: Any) -> Path | None:
    """The run folder (a folder holding config.yaml) that config value `value` names: the
    folder itself, or a file in its checkpoints/ (RUN/checkpoints/best.safetensors); a '#...'
    tail (RUN#base) names the same run. None for any other value."""
    if not isinstance(value, str | Path) or not str(value):
        return None
    path = Path(str(value).partition("#")[0]).expanduser()
    if path.is_file() and path.parent.name == "checkpoints":
        path = path.parent.parent
    return path if path.is_dir() and (path / "config.yaml").is_file() else None


def _extension_records() -> tuple[str, ...]:
    """The records that jobs working in another job's finished run add to it (evaluate's)."""
    from vitplas.jobs.table import JOBS

    return tuple(p for job in JOBS if job.on_finished_run for p in job.records)


def content_fingerprint(folder: Path) -> dict[str, str]:
    """{"run", "state" (finished / unfinished / damaged), "sha256"} of run folder `folder`
    (module docstring); a damaged seal (no content to tie to) adds its "problem"."""
    run = RunDir(folder, create=False)
    if not run.is_done():
        sums = {name: file_sha256(folder / name) for name in run.record_names(MODEL_RECORDS)}
        return {"run": str(folder), "state": "unfinished", "sha256": _digest(sums)}
    try:
        sealed = run.checksums()
    except DamagedRecordError as err:  # the job's own reading of that run says so and how
        problem = f"{err.run / err.name}: {err.problem}"
        return {"run": str(folder), "state": "damaged", "sha256": "", "problem": problem}
    added = _extension_records()
    kept = {k: v for k, v in sealed.items() if not any(fnmatch.fnmatch(k, p) for p in added)}
    return {"run": str(folder), "state": "finished", "sha256": _digest(kept)}


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def input_fingerprints(job: Job, cfg: Any) -> Fingerprints:
    """{config key: content_fingerprint} of every run folder that `cfg` names in one of
    `job.input_runs`' keys ({} when it names none)."""
    named = {key: named_run(getattr(cfg, key, None)) for key in job.input_runs}
    return {key: content_fingerprint(folder) for key, folder in named.items() if folder}


def write_inputs(run: RunDir, inputs: Fingerprints) -> None:
    """Record `inputs` in the folder (none: no record), before its config: a folder with a
    config from this vitplas holds its inputs too."""
    if inputs:
        atomic_write_json(run / INPUTS_FILE, inputs)


def stored_inputs(run: RunDir) -> Fingerprints | None:
    """The folder's inputs.json (verified when the run is finished), or None when absent."""
    if not run.is_done() and not (run / INPUTS_FILE).is_file():
        return None
    if run.is_done() and INPUTS_FILE not in run.checksums():
        return None
    data = read_record(run.path, INPUTS_FILE, unfinished=True)
    try:
        stored = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedRecordError(run.path, INPUTS_FILE, f"not valid JSON ({err})") from err
    return stored if isinstance(stored, dict) else {}


def check_inputs(run: RunDir, inputs: Fingerprints) -> None:
    """An InputChangedError when the folder holds a run (its config) computed from input runs
    other than `inputs`, their content now; nothing to check in a folder without a config."""
    if not (run / "config.yaml").is_file():
        return
    stored = stored_inputs(run)
    if stored is None and not inputs:
        return
    for key in sorted(set(stored or {}) | set(inputs)):
        then, now = (stored or {}).get(key), inputs.get(key)
        if stored is None or _changed(then, now):
            raise InputChangedError(_message(run.path, key, then, now))


def check_unchanged(job: Job, cfg: Any, run: RunDir, inputs: Fingerprints) -> None:
    """After the compute: an InputChangedError when an input run changed while the job ran (its
    numbers may be of either version)."""
    for key, now in input_fingerprints(job, cfg).items():
        if _changed(inputs.get(key), now):
            raise InputChangedError(
                f"{now['run']} ({key}) changed while this job ran, so the numbers computed in "
                f"{run.path} may be of either version; delete {run.path} and rerun once that "
                "run holds still"
            )


def _changed(then: dict | None, now: dict | None) -> bool:
    if then is None or now is None:
        return then is not now
    return (then.get("state"), then.get("sha256")) != (now["state"], now["sha256"])


def _message(path: Path, key: str, then: dict | None, now: dict | None) -> str:
    """The one line of an InputChangedError; `then` None: the folder records no fingerprint."""
    fix = (f"use another run folder (--out) for a run of its content now, or delete {path} to "
           "replace that run")  # fmt: skip
    if then is None:
        assert now is not None  # a key recorded neither then nor now is never asked about
        return (f"{path} records no fingerprint of the content of its {key} run {now['run']} "
                f"(made before vitplas recorded one), so its numbers cannot be tied to that "
                f"run as it is now; {fix}")  # fmt: skip
    old = f"{then.get('state')} run, content sha256 {str(then.get('sha256'))[:12]}..."
    if now is None:
        what = "that folder holds no run now"
    elif now["state"] == "damaged":
        what = f"it is damaged now ({now['problem']})"
    else:
        what = f"it holds another content now ({now['state']} run, {now['sha256'][:12]}...)"
    return (f"{path} was computed from its {key} run {then.get('run')} as it was then ({old}); "
            f"{what}, so {path}'s numbers are not of it: {fix}")  # fmt: skip


__all__ = [
    "INPUTS_FILE",
    "InputChangedError",
    "check_inputs",
    "check_unchanged",
    "content_fingerprint",
    "input_fingerprints",
    "named_run",
    "write_inputs",
]
