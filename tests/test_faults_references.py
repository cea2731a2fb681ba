"""A command that reads another run checks it first: it reads that run's records through their
seal, refuses a run that has not finished, and refuses one of other settings, naming the
difference. Tried: `bounds --plasticity RUN` on an edited table, a run without DONE, a run of
another seed, of other weights under the same model name, of another component set; a model
spec that is an unfinished finetuning run (plasticity, export; allowed with allow_unfinished,
which the manifest then states); a finetuned run measured at another input size. And the
compare-base folder is sealed like every job's.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_finetuned_models import finetuned
from typer.testing import CliRunner

from vitplas.cli import app
from vitplas.runs import RunDir

TINY = ["--model", "tiny-random", "--random-init", "--device", "cpu"]
MEASURED = [*TINY, "--target", "digits", "--pairs", "16", "--batch-size", "8"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def last_line(result) -> str:
    return result.output.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A finished plasticity run of tiny-random (random weights, seed 0) with its bounds."""
    out = tmp_path_factory.mktemp("measured") / "run"
    assert invoke("plasticity", *MEASURED, "--out", str(out)).exit_code == 0
    return out


def bounds(plasticity, out, *extra: str):
    args = [*TINY, "--dataset", "digits", "radius_images=16", "--plasticity", str(plasticity)]
    return invoke("bounds", *args, *extra, "--out", str(out))


def test_bounds_of_the_same_model_divide_its_measured_means(measured, tmp_path):
    result = bounds(measured, tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "bound_ratio.csv").is_file()


def test_an_edited_plasticity_table_is_refused_naming_it(measured, tmp_path):
    run = shutil.copytree(measured, tmp_path / "run")
    table = run / "plasticity.csv"
    table.write_text(table.read_text().replace("digits", "digits", 1).replace(",0.", ",9.", 1))
    result = bounds(run, tmp_path / "b")
    assert result.exit_code == 2, result.output
    line = last_line(result)
    assert f"error: {table} is damaged: its content was changed since the run finished" in line
    assert f"`vitplas plasticity` with its config, `--out {run} --repair`" in line
    assert not (tmp_path / "b" / "bound_ratio.csv").exists()


def test_a_plasticity_run_without_done_is_refused(measured, tmp_path):
    run = shutil.copytree(measured, tmp_path / "run")
    (run / "DONE").unlink()
    result = bounds(run, tmp_path / "b")
    assert result.exit_code == 2, result.output
    assert f"the plasticity run '{run}' is not a finished run (no DONE" in last_line(result)


def test_a_plasticity_run_of_another_seed_is_refused_for_random_weights(measured, tmp_path):
    result = bounds(measured, tmp_path / "b", "--seed", "1")
    assert result.exit_code == 2, result.output
    assert "measured another setting (seed: 0 there, 1 here)" in last_line(result)


def test_a_plasticity_run_of_other_weights_under_the_same_name_is_refused(tmp_path):
    from vitplas.models import load_model

    weights = tmp_path / "w.pth"
    spec = f"vit_tiny_patch16_224.augreg_in21k@{weights}"
    model = load_model("vit_tiny_patch16_224.augreg_in21k", random_init=True, img_size=32)
    torch.save(model.model.state_dict(), weights)
    common = ["--model", spec, "--device", "cpu", "--img-size", "32"]
    run = tmp_path / "run"
    measure = [*common, "--target", "digits", "--pairs", "8", "--batch-size", "8", "--no-bounds"]
    assert invoke("plasticity", *measure, "--out", str(run)).exit_code == 0
    state = model.model.state_dict()
    state["blocks.0.attn.qkv.weight"] *= 2  # the file behind the same spec changed
    torch.save(state, weights)
    args = [*common, "--radius", "1.0", "--ln-bound", "abs", "--mha-bound", "paper"]
    result = invoke("bounds", *args, "--plasticity", str(run), "--out", str(tmp_path / "b"))
    assert result.exit_code == 2, result.output
    assert f"the plasticity run '{run}' measured other weights (its model's sha256" in (
        last_line(result)
    )


def test_a_plasticity_run_of_other_components_is_refused(tmp_path):
    run = tmp_path / "run"
    assert invoke("plasticity", *MEASURED, "components=[mha,fc1]", "--out", str(run)).exit_code == 0
    result = bounds(run, tmp_path / "b")
    assert result.exit_code == 2, result.output
    assert "measured components fc1, mha; these bounds are of fc1, fc2, ln1, ln2, mha: set " \
        "components=[fc1,mha]" in last_line(result)  # fmt: skip


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A finetuning run that stopped before its DONE (its best weights already written)."""
    run = finetuned(tmp_path_factory.mktemp("stopped"))
    (run / "DONE").unlink()
    (run / "checksums.json").unlink()
    return run


def test_an_unfinished_run_is_no_model_spec_unless_allowed(stopped_run, tmp_path):
    measure = ["--model", str(stopped_run), "--target", "digits", "--pairs", "8"]
    measure += ["--batch-size", "8", "--no-bounds", "--device", "cpu"]
    refused = invoke("plasticity", *measure, "--out", str(tmp_path / "p"))
    assert refused.exit_code == 2, refused.output
    assert f"error: {stopped_run} is not a finished finetuning run (no DONE" in last_line(refused)
    assert "allow_unfinished=true" in last_line(refused)
    assert not (tmp_path / "p").exists()  # a failed start leaves no folder
    allowed = invoke("plasticity", *measure, "allow_unfinished=true", "--out", str(tmp_path / "p"))
    assert allowed.exit_code == 0, allowed.output
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    what = f"UNFINISHED (no DONE, allow_unfinished) finetuned run {stopped_run}"
    assert manifest["model_description"].startswith(what)


def test_export_refuses_an_unfinished_run(stopped_run, tmp_path):
    out = tmp_path / "model.safetensors"
    result = invoke("export", str(stopped_run), "--out", str(out))
    assert result.exit_code == 2
    assert f"{stopped_run} is not a finished finetuning run (no DONE" in result.output
    assert not out.exists()


def test_a_finetuned_run_is_measured_at_its_own_input_size_only(tmp_path):
    from vitplas.models import ModelError, load_model

    run = finetuned(tmp_path)  # trained at 32 px
    assert load_model(str(run), img_size=32).input_size == (3, 32, 32)
    with pytest.raises(ModelError, match=r"trained at img_size 32; at 64 its position embedding"):
        load_model(str(run), img_size=64)


def test_the_compare_base_folder_is_sealed_like_every_job(tmp_path):
    run = finetuned(tmp_path / "ft")
    out = tmp_path / "cmp"
    args = ["--model", str(run), "--target", "digits", "--pairs", "8", "--batch-size", "8"]
    args += ["--no-bounds", "--device", "cpu", "--compare-base", "--out", str(out)]
    assert invoke("plasticity", *args).exit_code == 0
    present = {p.name for p in out.iterdir()}
    assert {"config.yaml", "manifest.json", "result.json", "checksums.json", "DONE"} <= present
    assert (out / ".lock").is_file()
    assert set(RunDir(out).checksums()) >= {"compare_base.csv", "compare_base_pooled.csv"}
    table = out / "compare_base_pooled.csv"
    table.write_text(table.read_text().replace(",1.0", ",2.0"))
    again = invoke("plasticity", *args)
    assert again.exit_code == 2 and f"{table} is damaged" in last_line(again)
