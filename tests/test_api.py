"""The Python API: same numbers as the CLI, in-memory models and tensors, and the examples."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import vitplas

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))
TINY = dict(random_init=True, device="cpu")


def test_import_is_lazy_and_exports_the_api():
    code = "import sys, vitplas; print('vitplas.api' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    for name in ("plasticity", "bounds", "radius", "finetune", "probe", "load_model",
                 "component_map", "PlasticityResult"):  # fmt: skip
        assert callable(getattr(vitplas, name)) and name in vitplas.__all__
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        vitplas.nothing  # noqa: B018


def test_plasticity_equals_the_cli_run(tmp_path):
    from vitplas.analysis.job import PlasticityConfig
    from vitplas.jobs.runners import run_plasticity

    cfg = PlasticityConfig(model="tiny-random", random_init=True, target="digits", pairs=32,
                           batch_size=8, device="cpu", bounds=False, figures=False)  # fmt: skip
    cli = run_plasticity(cfg, tmp_path / "run")["pooled"]
    api = vitplas.plasticity("tiny-random", "photos", "digits", pairs=32, batch_size=8, **TINY)
    np.testing.assert_allclose(api.pooled["mean"], cli["mean"], rtol=1e-6)
    assert api.ranking == list(cli["component"])
    assert list(api.table.columns[:4]) == ["model", "reference", "target", "inputs"]
    assert len(api.table) == 2 * 5 and set(api.table["layer"]) == {0, 1}
    assert api.plot("box").axes and api.plot().axes


def test_in_memory_model_tensors_and_loaders_agree():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
    x, y = torch.randn(16, 3, 32, 32), torch.randn(16, 3, 32, 32) + 1
    loaders = [torch.utils.data.DataLoader(t, batch_size=8) for t in (x, y)]
    a = vitplas.plasticity(model, loaders[0], loaders[1], pairs=16, device="cpu")
    b = vitplas.plasticity(model, next(iter(loaders[0])), next(iter(loaders[1])), pairs=8,
                           batch_size=8, device="cpu", components=["mha"])  # fmt: skip
    assert a.estimate.pairs == 16 and b.estimate.pairs == 8 and b.ranking == ["mha"]
    assert a.table.query("component == 'mha'")["n"].tolist() == [16, 16]
    with pytest.raises(ValueError, match="image tensors must be"):
        vitplas.plasticity(model, torch.randn(3, 32, 32), y, device="cpu")
    with pytest.raises(TypeError, match="model must be a spec string"):
        vitplas.plasticity(42, x, y)


def test_bounds_derive_tokens_and_width_and_need_a_radius():
    frame = vitplas.bounds("tiny-random", radius=2.0, components=["mha", "fc2"], **TINY)
    assert set(frame["component"]) == {"mha", "fc2"} and (frame["radius"] == 2.0).all()
    mha = frame["component"] == "mha"  # the sound MHA bound needs the largest token norm
    assert frame[mha]["bound"].isna().all() and frame[~mha]["bound"].gt(0).all()
    assert frame[mha]["definition"].str.startswith("undefined: the data MHA bound needs").all()
    sound = vitplas.bounds("tiny-random", radius=2.0, r_max=3.0, components=["mha"], **TINY)
    paper = vitplas.bounds("tiny-random", radius=2.0, mha_bound="paper", components=["mha"], **TINY)
    assert sound["bound"].gt(0).all() and paper["bound"].gt(0).all()
    with pytest.raises(ValueError, match=r"pass radius=\.\.\. or data"):
        vitplas.bounds("tiny-random", data=None, **TINY)
    r = vitplas.radius("tiny-random", "digits", images=16, **TINY)
    measured = vitplas.bounds("tiny-random", "digits", images=16, **TINY)
    assert measured["radius"].iloc[0] == pytest.approx(r)
    per_layer = vitplas.radius("tiny-random", "digits", images=16, per_layer=True, **TINY)
    assert len(per_layer) == 2 and per_layer[0] == pytest.approx(r)


def test_finetune_rejects_unknown_keys(tmp_path):
    from vitplas.config import ConfigError

    with pytest.raises(ConfigError, match="nonsense"):
        vitplas.finetune(tmp_path / "ft", model="tiny-random", nonsense=1)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_run(path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(path), str(tmp_path)])
    runpy.run_path(str(path), run_name="__main__")
    expected = {"finetune_and_probe": "finetune MHA: test accuracy"}.get(path.stem, "ranking:")
    assert expected in capsys.readouterr().out


def test_component_map_of_a_loaded_model():
    cmap = vitplas.component_map(vitplas.load_model("tiny-random", random_init=True))
    assert cmap.depth == 2 and "mha" in cmap.block_components
    assert json.dumps(cmap.block_components)


def test_select_ranks_like_the_cli_and_writes_its_folder_with_out(tmp_path):
    keys = dict(random_init=True, criteria=["condition", "params"], grad_batches=1, batch_size=4)
    keys |= {"device": "cpu"}
    frame, chosen = vitplas.select("tiny-random", "digits", **keys)
    assert set(frame["criterion"]) == {"condition", "params"}
    assert set(chosen) == {"condition", "params"}
    written, picked = vitplas.select("tiny-random", "digits", out=tmp_path / "sel", **keys)
    assert picked == chosen
    pd.testing.assert_series_equal(written["score"], frame["score"])  # NaN: a norm's condition
    assert (tmp_path / "sel" / "DONE").exists()
