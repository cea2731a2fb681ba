"""One lifecycle for every job in a run folder, written once.

    run_job(job, cfg, run_dir, *, repair=False, wait=None, hooks=None) -> result dict

1. own the folder (vitplas.locks.run_lock: the OS lock, the holder record, re-entrant; under
   torchrun only rank 0 owns it); with `wait` (or VITPLAS_WAIT_LOCK=1) wait for its holder
2. settle the config inside the lock (job.prepare: train=[auto]'s pick)
3. check the config first (RunDir.begin): a finished run of these settings is read back,
   every record verified (job.read_back); other settings are a ConfigError; a damaged record
   a DamagedRecordError, unless `repair`, which clears the folder and recomputes. The runs
   the config names as inputs (job.input_runs: a model that is a finetuning run, bounds'
   plasticity run) are checked by content too (vitplas.jobs.inputs): a folder computed from
   an input run that has changed since is an InputChangedError, read back or resumed never
4. write the input runs' fingerprints (inputs.json) and the resolved config, compute
   (job.compute), check that no input run changed meanwhile, then the manifest and result.json
5. seal every record (checksums.json) and write DONE; job.after_done (e.g. prune train state)
6. job.extend, after the compute or the read-back alike: records a runtime key asks for
   (select's export), added to the seal

A job that works in another job's finished run (evaluate: job.on_finished_run) owns that
folder the same way, checks that it is finished and verified, and extends its seal with the
tables it writes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vitplas.jobs.folders import check_not_nested
from vitplas.jobs.inputs import (
    INPUTS_FILE,
    check_inputs,
    check_unchanged,
    input_fingerprints,
    write_inputs,
)
from vitplas.jobs.job import Computed, Job
from vitplas.jobs.registry import import_path
from vitplas.locks import is_main_process, run_lock
from vitplas.runs import DamagedRecordError, RunDir, atomic_write_json

COMMON_RECORDS = ("config.yaml", "manifest.json", "result.json", INPUTS_FILE)  # every job's


def records(job: Job) -> tuple[str, ...]:
    """The record patterns the seal of `job`'s run folder covers."""
    return tuple(dict.fromkeys((*COMMON_RECORDS, *job.records)))


def run_job(
    job: Job,
    cfg: Any,
    run_dir: str | Path,
    *,
    repair: bool = False,
    wait: bool | None = None,
    hooks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run `job` with config `cfg` in `run_dir` (module docstring); its result, with
    'run_dir' and, when read back, 'skipped': True."""
    if job.on_finished_run:
        return _in_finished_run(job, cfg, Path(run_dir), wait, hooks or {})
    check_not_nested(run_dir)
    owner = is_main_process()
    guard = removed_if_unused(Path(run_dir)) if owner else contextlib.nullcontext()
    with guard:
        return _in_own_folder(job, cfg, RunDir(run_dir), owner, repair, wait, hooks or {})


def _in_own_folder(job: Job, cfg: Any, run: RunDir, owner: bool, repair, wait, hooks):
    """Steps 1-5 of the module docstring in `run`, the job's own folder."""
    lock = run_lock(run.path, command=job.kind, wait=wait) if owner else contextlib.nullcontext()
    with lock:
        if job.prepare:  # it may read the folder's records: damage first, and --repair
            run.check_seal(repair and owner)
            cfg = import_path(job.prepare)(cfg, run.path)
        inputs = input_fingerprints(job, cfg)
        done = run.begin(cfg, job.runtime_keys, repair=repair and owner)
        check_inputs(run, inputs)  # after a --repair's clearing: nothing left to check then
        if done:
            back = import_path(job.read_back)(run)
            result = {**back, "run_dir": str(run.path), "skipped": True}
            return _extended(job, cfg, run, result) if owner else result
        if owner:
            write_inputs(run, inputs)  # before the config: a folder with one holds both
            run.start(cfg, job.runtime_keys)
        t0 = time.perf_counter()
        computed: Computed = import_path(job.compute)(cfg, run, **hooks)
        result = {**computed.result, **computed.returned, "run_dir": str(run.path)}
        if owner:
            check_unchanged(job, cfg, run, inputs)
            _finish(job, cfg, run, computed, time.perf_counter() - t0)
            result = _extended(job, cfg, run, result)
    return result


def _extended(job: Job, cfg: Any, run: RunDir, result: dict[str, Any]) -> dict[str, Any]:
    """Step 6: job.extend's records in the finished run, sealed; its additions to `result`."""
    if not job.extend:
        return result
    more, names = import_path(job.extend)(cfg, run, result)
    if names:
        run.seal(list(names))
    return {**result, **more}


START_FILES = ("config.yaml", "manifest.json", INPUTS_FILE)  # a start's, before any work


@contextlib.contextmanager
def removed_if_unused(path: Path) -> Iterator[Path]:
    """Yield `path`; when the job fails and `path` is a folder this call created that holds
    nothing but lock files and what its start wrote (config, manifest, inputs), remove it: a
    failed start leaves no run folder behind, and no config that would refuse the corrected
    command. A folder with any work in it (statistics, checkpoints) stays, to resume."""
    existed = path.exists()
    try:
        yield path
    except BaseException:
        if not existed and path.is_dir():
            entries = list(path.iterdir())
            if all(e.is_file() and (e.name.endswith(".lock") or e.name in START_FILES)
                   for e in entries):  # fmt: skip
                for entry in entries:
                    entry.unlink()
                path.rmdir()
        raise


def _finish(job: Job, cfg: Any, run: RunDir, computed: Computed, seconds: float) -> None:
    """Manifest, result.json, the seal and DONE; then the job's after_done."""
    if job.manifest:
        facts = computed.manifest or {}
        run.write_manifest({"job": job.kind, **facts, "job_seconds": seconds})
    if job.result_file:
        atomic_write_json(run / "result.json", computed.result)
    run.mark_done(records(job))
    if job.after_done:
        import_path(job.after_done)(cfg, run)


def _in_finished_run(job: Job, cfg: Any, folder: Path, wait, hooks) -> dict[str, Any]:
    """A job whose tables go into a finished run of another job: owned, verified, resealed."""
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {folder} does not exist")
    owner, work = job.on_finished_run or ("", "")
    with run_lock(folder, command=job.kind, wait=wait):
        run = RunDir(folder, create=False)
        try:
            computed: Computed = import_path(job.compute)(cfg, run, **hooks)
        except DamagedRecordError as err:  # the run's own record: only its job remakes it
            fix = (f"recompute the run with `vitplas {owner}` and its config, `--out {folder} "
                   f"--repair`, or rerun the {work} into a new folder")  # fmt: skip
            raise DamagedRecordError(err.run, err.name, err.problem, fix=fix) from None
        run.seal([name for name in job.records if (folder / name).is_file()])
    return {**computed.result, **computed.returned, "run_dir": str(folder)}
