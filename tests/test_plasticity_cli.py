"""`vitplas plasticity`, `bounds` and `radius` end to end: tiny-random model, offline streams
(photos, digits), tiny pair counts; run folder contents; bad input; the embedded default."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from vitplas.cli import app

TINY = ["--model", "tiny-random", "--random-init", "--target", "digits", "--device", "cpu"]
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    result = run("plasticity", *TINY, "--pairs", "24", "--batch-size", "8", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "ranking settled by the 95% CIs" in result.output
    assert "offline stand-in for ImageNet val" in result.output  # the photos stream, labelled
    assert result.output.count("note: the reference stream has") == 1  # few units, said once
    return out


def test_run_folder_holds_tables_figures_config_manifest(tiny_run):
    table = pd.read_csv(tiny_run / "plasticity.csv")
    assert list(table.columns) == [
        "model",
        "reference",
        "target",
        "inputs",
        "layer",
        "component",
        "mean",
        "std",
        "n",
        "units",
        "ci95",
    ]
    assert len(table) == 2 * 5 and (table["n"] == 24).all()
    # the 24 crops come from at most 17 photos: the CI rests on those (test_intervals.py)
    assert table["units"].between(2, 17).all() and table["units"].nunique() == 1
    naive = 2.0686576 * table["std"] / 24**0.5  # t_0.975(23), as if the pairs were independent
    assert ((table["ci95"] - naive).abs() > 1e-6).any()
    pd.testing.assert_frame_equal(table, pd.read_parquet(tiny_run / "plasticity.parquet"))
    for stem in ("plasticity_box", "plasticity_depth", "bounds", "bound_ratio"):
        for suffix in (".png", ".pdf"):
            assert (tiny_run / "figures" / f"{stem}{suffix}").stat().st_size > 1000
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert config["pairs"] == 24 and config["target"] == "digits"
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert manifest["model_checksum_of"] == "state dict tensors"
    assert len(manifest["model_checksum"]) == 64 and manifest["pairs"] == 24
    assert {"versions", "git_commit", "device", "timings"} <= set(manifest)
    assert "RANDOM INIT" in manifest["model_description"]
    assert (tiny_run / "DONE").exists()


def test_bound_ratio_table_divides_and_counts(tiny_run):
    ratio = pd.read_csv(tiny_run / "bound_ratio.csv")
    assert ((ratio["ratio"] - ratio["mean"] / ratio["bound"]).abs() < 1e-9).all()
    linear = ratio[ratio["component"].isin(["fc1", "fc2"])]
    assert (linear["exceed_frac"] == 0).all() and (linear["max_ratio"] <= 1 + 1e-6).all()
    assert ratio["exceed_frac"].between(0, 1).all()


def test_same_seed_same_table_other_seed_other_numbers(tiny_run, tmp_path):
    args = ["plasticity", *TINY, "--pairs", "24", "--batch-size", "8", "--no-bounds"]
    assert run(*args, "--out", str(tmp_path / "a")).exit_code == 0
    assert run(*args, "--seed", "1", "--out", str(tmp_path / "b")).exit_code == 0
    base = pd.read_csv(tiny_run / "plasticity.csv")
    same = pd.read_csv(tmp_path / "a" / "plasticity.csv")
    other = pd.read_csv(tmp_path / "b" / "plasticity.csv")
    pd.testing.assert_frame_equal(base, same)
    assert (base["mean"] - other["mean"]).abs().max() > 1e-6
    assert not (tmp_path / "a" / "bounds.csv").exists()


def test_hidden_inputs_and_component_subset(tmp_path):
    result = run(
        "plasticity",
        *TINY,
        "--pairs",
        "8",
        "--batch-size",
        "8",
        "--inputs",
        "hidden",
        "--components",
        "mha,fc2",
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "plasticity.csv")
    assert set(table["component"]) == {"mha", "fc2"} and (table["inputs"] == "hidden").all()
    bounds = pd.read_csv(tmp_path / "bounds.csv")
    assert bounds["radius"].nunique() == 2  # one measured radius per block input


def test_bounds_and_radius_commands(tiny_run, tmp_path):
    result = run(
        "bounds",
        "--model",
        "tiny-random",
        "--random-init",
        "--radius",
        "2.0",
        "--plasticity",
        str(tiny_run),
        "--ln-bound",
        "signed",
        "--out",
        str(tmp_path / "bounds"),
    )
    assert result.exit_code == 0, result.output
    bounds = pd.read_csv(tmp_path / "bounds" / "bounds.csv")
    assert (bounds.loc[bounds["component"] == "mha", "radius"] == 2.0).all()
    assert (bounds.loc[bounds["component"] == "ln1", "definition"] == "max gamma (signed)").all()
    ratio = pd.read_csv(tmp_path / "bounds" / "bound_ratio.csv")
    assert len(ratio) == 10 and (ratio["ratio"] > 0).all()
    assert (tmp_path / "bounds" / "figures" / "bounds.pdf").exists()
    # run folders do not nest (vitplas.jobs.folders): the radius run goes beside the bounds run
    args = ["--random-init", "--dataset", "digits", "--out", str(tmp_path / "radius")]
    radius = run("radius", "--model", "tiny-random", *args)
    assert radius.exit_code == 0 and radius.stdout.startswith("r = ")  # progress: on stderr
    assert float(radius.stdout.split()[2]) > 0


def test_bounds_without_a_plasticity_run_say_why_the_data_norm_bound_is_missing(tmp_path):
    args = ["--model", "tiny-random", "--random-init", "--radius", "2.0", "--out", str(tmp_path)]
    result = run("bounds", *args)
    assert result.exit_code == 0, result.output
    why = (
        "undefined without measured pairs: the data bound divides max|gamma| by their smallest"
        " token scale (measure plasticity with bounds on, or give the bounds a plasticity run), or"
        " set ln_bound to abs or signed"
    )
    flags = " (here: --plasticity RUN, or --ln-bound abs|signed)"  # the CLI's words only
    assert f"ln1: {why}{flags}" in result.stdout and f"ln2: {why}{flags}" in result.stdout
    bounds = pd.read_csv(tmp_path / "bounds.csv")
    ln = bounds[bounds["component"].isin(["ln1", "ln2"])]
    assert ln["bound"].isna().all() and ln["definition"].str.startswith(why).all()
    assert not ln["definition"].str.contains("--").any()  # the table (and the API) name keys
    assert bounds.loc[bounds["component"] == "fc1", "bound"].notna().all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--components", "mha,attn"], "component 'attn' is unknown"),
        (["--target", "cifar11"], "dataset 'cifar11' is unknown"),
        (["--pairs", "0"], "pairs must be >= 1, got 0"),
        (["--reference", "photos/4", "--batch-size", "8"], "has 4 images, fewer than one batch"),
        (["--img-size", "36"], "img_size=36 is not a multiple of this model's 8-pixel patches"),
        (["--inputs", "residual"], "'inputs' is 'residual'"),
        (["--dtype", "float8"], "'dtype' is 'float8'"),
    ],
)
def test_bad_input_is_a_clear_error(args, message, tmp_path):
    result = runner.invoke(
        app, ["plasticity", *TINY, "--pairs", "8", *args, "--out", str(tmp_path)]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.slow
def test_embedded_default_runs_offline(tmp_path):
    """`vitplas plasticity` with its defaults, fewer pairs; needs the offline assets."""
    from vitplas.data import is_available
    from vitplas.models import get_preset, weights_status

    status = weights_status(get_preset("dinov2-s14"))
    if not status.present:
        pytest.skip(
            f"DINOv2 ViT-S/14 weights are not here ({status.where}); scripts/offline-assets"
        )
    present, where = is_available("fashion-mnist")
    if not present:
        pytest.skip(f"Fashion-MNIST is not here (looked in {where}); scripts/offline-assets")
    result = run("plasticity", "--pairs", "64", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "plasticity.csv")
    assert len(table) == 12 * 7 and (table["n"] == 64).all()  # ViT-S/14: 12 blocks, LayerScale
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["model_checksum_of"] == "weights file"


def test_finished_run_folder_is_never_overwritten_by_other_settings(tiny_run):
    before = {p.name: p.read_bytes() for p in tiny_run.glob("*.csv")}
    other = runner.invoke(
        app, ["plasticity", *TINY, "--pairs", "16", "--batch-size", "8", "--out", str(tiny_run)]
    )
    assert other.exit_code == 2
    assert "holds a run with a different config (pairs: 24 -> 16)" in other.output
    assert {p.name: p.read_bytes() for p in tiny_run.glob("*.csv")} == before


def test_bounds_refuse_a_plasticity_run_of_other_settings(tiny_run, tmp_path):
    args = ["bounds", "--model", "tiny-random", "--random-init", "--radius", "2.0"]
    result = runner.invoke(
        app, [*args, "--inputs", "hidden", "--plasticity", str(tiny_run), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "measured another setting (inputs: 'embedding' there, 'hidden' here)" in result.output
    assert not (tmp_path / "bounds.csv").exists()


def test_radius_owns_its_folder_checks_its_config_first_and_seals(tmp_path):
    from vitplas.runs import RunDir

    out = tmp_path / "radius"
    args = ["radius", "--model", "tiny-random", "--random-init", "--dataset", "digits"]
    args += ["--images", "16", "--batch-size", "8", "--device", "cpu", "--out", str(out)]
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert "radius.json" in RunDir(out).checksums()  # sealed with the run's records
    again = run(*args)
    assert again.exit_code == 0 and "read back" in again.stderr
    assert again.stdout.splitlines()[0] == first.stdout.splitlines()[0]  # the same r
    other = run(*args, "--seed", "1")
    assert other.exit_code == 2
    assert "different config (seed: 0 -> 1)" in other.stderr
    code = "import sys, time; from vitplas.locks import run_lock\n"
    code += "with run_lock(sys.argv[1], command='test holder'):\n"
    code += "    print('held', flush=True); time.sleep(60)\n"
    other_owner = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE)
    try:
        assert other_owner.stdout.readline() == b"held\n"
        locked = run(*args)
    finally:
        other_owner.kill()
        other_owner.wait()
    assert locked.exit_code == 3
    assert f"{out} is in use by pid {other_owner.pid}" in locked.stderr
    radius = json.loads((out / "radius.json").read_text())
    (out / "radius.json").write_text(json.dumps({**radius, "radius": 1.0}))
    damaged = run(*args)
    assert damaged.exit_code == 2
    assert f"error: {out / 'radius.json'} is damaged: its content was" in damaged.stderr
    assert "--repair" in damaged.stderr
    assert run(*args, "--repair").exit_code == 0
    RunDir(out).verify()  # recomputed and sealed again (random-init weights: r may differ)
    assert json.loads((out / "radius.json").read_text())["radius"] != 1.0
