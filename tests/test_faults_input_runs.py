"""A job whose input is another run folder ties its numbers to that run's content, not only to
its name (vitplas.jobs.inputs): a rerun into a finished (or a resumed) folder whose input run has
changed since is refused, naming the folder and the fix, never the old numbers read back. Tried:
a plasticity run of an unfinished finetuning run (allow_unfinished) that trained on; bounds of a
plasticity run deleted and recomputed into the same folder; a folder made before inputs were
recorded; a model run deleted since. An unchanged input (an evaluation added to it included) is
still read back.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_faults_references import MEASURED, bounds, invoke, last_line
from test_finetuned_models import finetuned

from vitplas.jobs.inputs import INPUTS_FILE
from vitplas.runs import RunDir

READ_BACK = "read back from"
ON_RUN = ["--target", "digits", "--pairs", "8", "--batch-size", "8", "--no-bounds"]
ON_RUN += ["--device", "cpu", "figures=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny finetuning run (seconds)."""
    return finetuned(tmp_path_factory.mktemp("ft"))


@pytest.fixture
def stopped(trained, tmp_path):
    """A copy of it that has not finished (no DONE, no seal): still training."""
    run = shutil.copytree(trained, tmp_path / "ft")
    (run / "DONE").unlink()
    (run / "checksums.json").unlink()
    return run


def plasticity_of(model, out, *extra: str):
    return invoke("plasticity", "--model", str(model), *ON_RUN, *extra, "--out", str(out))


def train_further(run):
    """What a few more steps of training do to the run's best weights."""
    best = run / "checkpoints" / "best.safetensors"
    weights = load_file(best)
    save_file({k: v + 0.01 * torch.ones_like(v) for k, v in weights.items()}, best)


def test_an_unfinished_model_run_that_trained_on_is_not_read_back(stopped, tmp_path):
    out = tmp_path / "p"
    first = plasticity_of(stopped, out, "allow_unfinished=true")
    assert first.exit_code == 0, first.output
    again = plasticity_of(stopped, out, "allow_unfinished=true")
    assert again.exit_code == 0 and READ_BACK in again.output  # unchanged: read back
    train_further(stopped)
    refused = plasticity_of(stopped, out, "allow_unfinished=true")
    assert refused.exit_code == 2, refused.output
    line = last_line(refused)
    assert f"error: {out} was computed from its model run {stopped} as it was then" in line
    assert "it holds another content now (unfinished run" in line
    assert f"use another run folder (--out) for a run of its content now, or delete {out}" in line
    assert READ_BACK not in refused.output
    (out / "DONE").unlink()  # a resume of a stopped job: refused alike
    assert last_line(plasticity_of(stopped, out, "allow_unfinished=true")) == line
    other = plasticity_of(stopped, tmp_path / "p2", "allow_unfinished=true")
    assert other.exit_code == 0, other.output  # the run as it is now: in another folder
    record = json.loads((out / INPUTS_FILE).read_text())["model"]
    assert record["run"] == str(stopped) and record["state"] == "unfinished"


def test_an_unfinished_run_that_finished_since_is_not_read_back(stopped, trained, tmp_path):
    out = tmp_path / "p"
    assert plasticity_of(stopped, out, "allow_unfinished=true").exit_code == 0
    for name in ("DONE", "checksums.json"):
        shutil.copy(trained / name, stopped / name)
    refused = plasticity_of(stopped, out, "allow_unfinished=true")
    assert refused.exit_code == 2, refused.output
    assert "it holds another content now (finished run" in last_line(refused)


def test_a_finished_model_run_reads_back_after_an_evaluation_of_it(trained, tmp_path):
    run, out = shutil.copytree(trained, tmp_path / "ft"), tmp_path / "p"
    assert plasticity_of(run, out).exit_code == 0
    assert json.loads((out / INPUTS_FILE).read_text())["model"]["state"] == "finished"
    evaluated = invoke("evaluate", str(run), "split=val", "batch_size=64", "num_workers=0")
    assert evaluated.exit_code == 0, evaluated.output
    again = plasticity_of(run, out)  # the evaluation added a table: none of the run's changed
    assert again.exit_code == 0, again.output
    assert READ_BACK in again.output


def test_bounds_of_a_plasticity_run_recomputed_into_its_folder_are_not_read_back(tmp_path):
    measured, out = tmp_path / "measured", tmp_path / "b"
    assert invoke("plasticity", *MEASURED, "--out", str(measured)).exit_code == 0
    assert bounds(measured, out).exit_code == 0
    ratio = (out / "bound_ratio.csv").read_bytes()
    again = bounds(measured, out)
    assert again.exit_code == 0 and READ_BACK in again.output  # unchanged: read back
    shutil.rmtree(measured)  # deleted, and recomputed with the same settings
    assert invoke("plasticity", *MEASURED, "--out", str(measured)).exit_code == 0
    refused = bounds(measured, out)
    assert refused.exit_code == 2, refused.output
    line = last_line(refused)
    assert f"error: {out} was computed from its plasticity run {measured} as it was then" in line
    assert "it holds another content now (finished run" in line and f"delete {out}" in line
    assert (out / "bound_ratio.csv").read_bytes() == ratio  # left as it was, not read back
    assert bounds(measured, tmp_path / "b2").exit_code == 0


def test_a_folder_without_the_fingerprint_of_its_input_run_is_refused(trained, tmp_path):
    out = tmp_path / "p"
    assert plasticity_of(trained, out).exit_code == 0
    for name in ("DONE", "checksums.json", INPUTS_FILE):  # sealed as an older vitplas did
        (out / name).unlink()
    RunDir(out).mark_done(("config.yaml", "manifest.json", "result.json", "*.csv", "*.parquet"))
    refused = plasticity_of(trained, out)
    assert refused.exit_code == 2, refused.output
    assert f"error: {out} records no fingerprint of the content of its model run {trained}" in (
        last_line(refused)
    )


def test_a_deleted_model_run_is_not_read_back(trained, tmp_path):
    run, out = shutil.copytree(trained, tmp_path / "ft"), tmp_path / "p"
    assert plasticity_of(run, out).exit_code == 0
    shutil.rmtree(run)
    refused = plasticity_of(run, out)
    assert refused.exit_code == 2, refused.output
    assert f"error: {out} was computed from its model run {run} as it was then" in (
        last_line(refused)
    )
    assert "that folder holds no run now" in last_line(refused)
