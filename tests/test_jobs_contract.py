"""The lifecycle's guarantees, for every job of the table (vitplas.jobs.table): strict config,
one owner (the lock), read-back of a finished run, refusal of other settings, a damaged record
named, --repair, a manifest. A new job kind is covered by adding its tiny config below (a test
checks that every record has one)."""

from __future__ import annotations

import json

import pytest

from vitplas.config import ConfigError, config_from_dict
from vitplas.jobs.lifecycle import run_job
from vitplas.jobs.registry import import_path
from vitplas.jobs.table import JOBS, get
from vitplas.locks import FileLock, RunLockedError
from vitplas.runs import DamagedRecordError

TINY = {"model": "tiny-random", "random_init": True}
CONFIGS = {  # job kind -> a config that runs in seconds, offline
    "plasticity": {**TINY, "target": "digits", "pairs": 16, "batch_size": 8, "figures": False},
    "bounds": {**TINY, "dataset": "digits", "radius_images": 16, "figures": False},
    "radius": {**TINY, "dataset": "digits", "images": 16, "batch_size": 8},
    "finetune": {
        **TINY,
        "dataset": "digits",
        "img_size": 32,
        "steps": 2,
        "eval_every": 1,
        "warmup_steps": 0,
        "batch_size": 16,
        "num_workers": 0,
        "tensorboard": False,
        "max_eval_samples": 32,
    },
    "probe": {
        **TINY,
        "dataset": "digits",
        "img_size": 32,
        "layers": [-1],
        "components": ["mha"],
        "max_train": 64,
        "max_test": 32,
        "num_workers": 0,
    },
    "select": {**TINY, "target": "digits", "pairs": 8, "grad_batches": 1, "batch_size": 8},
    "landscape": {
        **TINY,
        "img_size": 32,
        "dataset": "digits",
        "grid": 2,
        "steps": 2,
        "components": ["ln1"],
        "pairs": 4,
        "eval_images": 4,
        "batch_size": 4,
    },
}
OTHER = {
    "plasticity": {"seed": 1},
    "bounds": {"seed": 1},
    "radius": {"seed": 1},
    "finetune": {"seed": 1},
    "probe": {"seed": 1},
    "select": {"seed": 1},
    "landscape": {"seed": 1},
}
OWN_FOLDER = [job.kind for job in JOBS if not job.on_finished_run and job.kind != "compare-base"]


def _cfg(kind: str, **change):
    return config_from_dict(import_path(get(kind).config), {**CONFIGS[kind], **change})


def test_every_job_of_the_table_has_a_contract_config():
    covered = {*CONFIGS, "compare-base", "evaluate"}  # those two: tests/test_plasticity_cli.py,
    # tests/test_evaluate_cli.py (they need a finished finetuning run)
    assert {job.kind for job in JOBS} <= covered


@pytest.mark.parametrize("job", JOBS, ids=lambda job: job.kind)
def test_the_input_run_keys_of_every_job_are_keys_of_its_config(job):
    """What the lifecycle fingerprints (vitplas.jobs.inputs) is a key the config has."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(import_path(job.config))}
    assert set(job.input_runs) <= fields


@pytest.mark.parametrize("kind", OWN_FOLDER)
def test_strict_config(kind):
    with pytest.raises(ConfigError, match="unknown config key"):
        config_from_dict(import_path(get(kind).config), {**CONFIGS[kind], "no_such_key": 1})


@pytest.mark.parametrize("kind", OWN_FOLDER)
def test_lifecycle_guarantees(kind, tmp_path):
    job, run = get(kind), tmp_path / "run"
    holder = FileLock(run / ".lock")
    assert holder.acquire("another process")
    with pytest.raises(RunLockedError, match="in use by"):
        run_job(job, _cfg(kind), run)
    holder.release()
    first = run_job(job, _cfg(kind), run)
    assert not first.get("skipped")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["versions"]["vitplas"] and (run / "DONE").exists()
    sealed = json.loads((run / "checksums.json").read_text())
    assert {"config.yaml", "manifest.json"} <= set(sealed)
    again = run_job(job, _cfg(kind), run)
    assert again["skipped"] is True
    with pytest.raises(ConfigError, match="different config"):
        run_job(job, _cfg(kind, **OTHER[kind]), run)
    damaged = sorted(n for n in sealed if n not in ("config.yaml", "manifest.json"))[0]
    (run / damaged).write_bytes((run / damaged).read_bytes()[:-1] + b"#")
    with pytest.raises(DamagedRecordError, match=damaged.replace(".", r"\.")):
        run_job(job, _cfg(kind), run)
    repaired = run_job(job, _cfg(kind), run, repair=True)
    assert not repaired.get("skipped") and (run / "DONE").exists()
    assert run_job(job, _cfg(kind), run)["skipped"] is True


def test_run_folders_do_not_nest(tmp_path):
    """A run inside a finished run folder, or in a folder of runs, is refused (API and CLI
    place default folders alike: runs/<kind>/<time>-<model>, never runs/<kind> itself)."""
    run_job(get("radius"), _cfg("radius"), tmp_path / "runs" / "radius" / "a")
    with pytest.raises(ConfigError, match="holds run folders"):
        run_job(get("radius"), _cfg("radius"), tmp_path / "runs" / "radius")
    with pytest.raises(ConfigError, match="inside the run folder"):
        run_job(get("radius"), _cfg("radius"), tmp_path / "runs" / "radius" / "a" / "b")


@pytest.mark.parametrize("kind", ["radius", "finetune"])
def test_a_failed_start_leaves_no_folder_for_the_api_either(kind, tmp_path):
    """The lifecycle (not only the CLI) removes a folder its failed start made, so the
    corrected call is not refused as 'a different config'."""
    from vitplas.data import DataError

    run = tmp_path / "run"
    with pytest.raises(DataError, match="dataset 'cifar11' is unknown"):
        run_job(get(kind), _cfg(kind, dataset="cifar11"), run)
    assert not run.exists()
    assert not run_job(get(kind), _cfg(kind), run).get("skipped")
