"""Each API function and its CLI command on the same inputs give the same numbers: plasticity,
bounds (the CLI's defaults: bounds on, the data LayerNorm bound), radius, probe, select and
finetune on the tiny random ViT and the digits; and plasticity of tensors measures every pair."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import vitplas
from vitplas.cli import app

REPO = Path(__file__).resolve().parents[1]
TINY_KEYS = ["model=tiny-random", "random_init=true", "device=cpu"]
TINY = dict(random_init=True, device="cpu")
PLASTICITY_KEYS = ["target=digits", "pairs=16", "batch_size=8", "figures=false"]
CELL = ["layer", "component"]


def cli(*args: str) -> None:
    """`vitplas ARGS`, which must succeed."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output


def assert_same(api: pd.DataFrame, written: pd.DataFrame, columns, keys=CELL) -> None:
    """The same rows (by `keys`) and the same `columns` to 1e-6 (NaN where the other is NaN)."""
    a, b = (f.sort_values(keys).reset_index(drop=True) for f in (api, written))
    assert len(a) == len(b) > 0
    assert a[keys].astype(str).values.tolist() == b[keys].astype(str).values.tolist()
    np.testing.assert_allclose(
        a[columns].astype(float).to_numpy(), b[columns].astype(float).to_numpy(), rtol=1e-6
    )


@pytest.fixture(scope="module")
def plasticity_run(tmp_path_factory) -> Path:
    """`vitplas plasticity` on the tiny model with the CLI's defaults otherwise (bounds on,
    ln_bound data, r measured on 256 target images)."""
    out = tmp_path_factory.mktemp("cli") / "plasticity"
    cli("plasticity", *TINY_KEYS, *PLASTICITY_KEYS, "--out", str(out))
    return out


@pytest.fixture(scope="module")
def api_plasticity() -> vitplas.PlasticityResult:
    return vitplas.plasticity("tiny-random", "photos", "digits", pairs=16, batch_size=8, **TINY)


def test_plasticity_gives_the_cli_numbers(plasticity_run, api_plasticity):
    table = pd.read_csv(plasticity_run / "plasticity.csv")
    assert_same(api_plasticity.table, table, ["mean", "std", "n", "ci95"])
    pooled = pd.read_csv(plasticity_run / "plasticity_pooled.csv")
    assert_same(api_plasticity.pooled, pooled, ["mean", "std", "n"], ["component"])
    assert api_plasticity.ranking == list(pooled["component"])
    result = json.loads((plasticity_run / "result.json").read_text())
    assert api_plasticity.radius == pytest.approx(result["radius"], rel=1e-6)


def test_plasticity_bounds_are_the_cli_bounds_data_layernorm_bound_included(
    plasticity_run, api_plasticity
):
    cli_bounds = pd.read_csv(plasticity_run / "bounds.csv")
    api_bounds = api_plasticity.bounds
    assert set(api_bounds["definition"]) == set(cli_bounds["definition"])
    norms = cli_bounds[cli_bounds["component"].isin(["ln1", "ln2"])]
    assert norms["bound"].notna().all()  # the data bound: filled from the measured pairs
    assert_same(api_bounds, cli_bounds, ["bound", "radius", "norm_scale"])
    ratio = pd.read_csv(plasticity_run / "bound_ratio.csv")  # the pairs above each bound
    assert_same(api_plasticity.bound_ratio, ratio, ["bound", "ratio", "max_ratio", "exceed_frac"])
    result = json.loads((plasticity_run / "result.json").read_text())
    assert api_plasticity.exceedances == result["exceedances"]


def test_bounds_give_the_cli_numbers_with_its_defaults(tmp_path):
    out = tmp_path / "bounds"
    cli("bounds", *TINY_KEYS, "dataset=digits", "figures=false", "--out", str(out))
    cli_bounds = pd.read_csv(out / "bounds.csv")
    api_bounds = vitplas.bounds("tiny-random", "digits", **TINY)
    assert_same(api_bounds, cli_bounds, ["bound", "bound_padded", "radius"])
    assert (api_bounds["definition"].tolist()) == cli_bounds["definition"].tolist()
    ln = api_bounds[api_bounds["component"] == "ln1"]
    assert ln["bound"].isna().all()  # the data bound needs measured pairs: NaN, as the CLI's
    assert json.loads((out / "result.json").read_text())["ln_bound"] == "data"


def test_radius_gives_the_cli_numbers(tmp_path):
    out = tmp_path / "radius"
    for inputs, per_layer in (("embedding", False), ("hidden", True)):
        cli("radius", *TINY_KEYS, "dataset=digits", "images=32", f"inputs={inputs}",
            "--out", str(out / inputs))  # fmt: skip
        recorded = json.loads((out / inputs / "radius.json").read_text())["radius"]
        api = vitplas.radius("tiny-random", "digits", images=32, per_layer=per_layer, **TINY)
        np.testing.assert_allclose(api, recorded, rtol=1e-6)


def test_probe_gives_the_cli_numbers(tmp_path):
    keys = dict(img_size=32, dataset="digits", layers=[-1], components=["mha", "block"],
                max_train=200, max_test=100, num_workers=0)  # fmt: skip
    args = [f"{k}={json.dumps(v)}" for k, v in keys.items()]
    cli("probe", *TINY_KEYS, *args, "--out", str(tmp_path / "cli"))
    table = vitplas.probe(tmp_path / "api", model="tiny-random", **TINY, **keys)
    written = pd.read_csv(tmp_path / "cli" / "probe.csv")
    assert_same(table, written, ["acc"], ["layer", "component"])


def test_select_gives_the_cli_numbers(tmp_path):
    keys = ["target=digits", "pairs=16", "grad_batches=1", "batch_size=8"]
    cli("select", *TINY_KEYS, *keys, "--out", str(tmp_path / "cli"))
    written = pd.read_csv(tmp_path / "cli" / "selection.csv")
    frame, picks = vitplas.select("tiny-random", "digits", pairs=16, grad_batches=1,
                                  batch_size=8, **TINY)  # fmt: skip
    assert_same(frame, written, ["score", "rank"], ["criterion", "layer", "component"])
    recorded = json.loads((tmp_path / "cli" / "picks.json").read_text())
    assert picks == recorded.get("picks", recorded)


def test_finetune_gives_the_cli_numbers(tmp_path):
    preset = REPO / "configs" / "finetune" / "smoke-digits.yaml"
    keys = dict(steps=4, eval_every=2, warmup_steps=1)
    cli("finetune", str(preset), *(f"{k}={v}" for k, v in keys.items()),
        "--out", str(tmp_path / "cli"))  # fmt: skip
    result = vitplas.finetune(tmp_path / "api", preset, **keys)
    recorded = json.loads((tmp_path / "cli" / "result.json").read_text())
    for key in ("test_acc", "best_val_acc", "best_step", "steps"):
        assert result[key] == pytest.approx(recorded[key], rel=1e-6), key
    curves = [pd.read_json(tmp_path / d / "metrics.jsonl", lines=True) for d in ("cli", "api")]
    losses = [c.dropna(subset=["loss"])["loss"].to_numpy() for c in curves]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)


def test_plasticity_of_eight_tensor_pairs_measures_all_eight():
    model = vitplas.load_model("tiny-random", random_init=True)
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32) + 0.5
    result = vitplas.plasticity(model, x, y, device="cpu")
    assert result.estimate.pairs == 8 and set(result.table["n"]) == {8}
    assert result.radius == pytest.approx(vitplas.radius(model, y, images=8, device="cpu"))
    norms = result.bounds[result.bounds["component"].isin(["ln1", "ln2"])]
    assert norms["bound"].notna().all()  # bounds on, the data LayerNorm bound from the 8 pairs
    loaders = [torch.utils.data.DataLoader(t, batch_size=4) for t in (x, y)]
    again = vitplas.plasticity(model, *loaders, device="cpu")
    assert_same(again.table, result.table, ["mean", "std", "n"])
    few = vitplas.plasticity(model, x, y, pairs=4, device="cpu", bounds=False)
    assert few.estimate.pairs == 4
    one = vitplas.plasticity(model, x[:1], y[:1], device="cpu", bounds=False)
    first = vitplas.plasticity(model, x, y, pairs=1, device="cpu", bounds=False)
    assert_same(first.table, one.table, ["mean"])  # in order: pair 0 is (x[0], y[0])
    with pytest.raises(ValueError, match=r"pairs=8 asks for more pairs than .* hold \(4\)") as err:
        vitplas.plasticity(model, x, y[:4], pairs=8, device="cpu", bounds=False)
    assert "--" not in str(err.value)  # names the API's arguments, not the CLI's flags
