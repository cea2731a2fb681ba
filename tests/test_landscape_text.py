"""`vitplas landscape` on text models: the tiny random BERT and GPT-2 folders (text_fixtures) on
Rotten Tomatoes texts in the real format, and the real MiniLM-L6 (skipped when absent). The
loss at the grid's centre is the sequence classifier's loss on the fixed batch, computed by
hand; the rate there is the estimator's masked ratio on the same pairs; padding changes
neither."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as tf
from test_families_text import minilm_folder
from text_fixtures import text_world
from torch.nn import functional as F

from vitplas.analysis import landscape as L
from vitplas.analysis.configs import LandscapeConfig
from vitplas.analysis.plasticity import pair_ratios
from vitplas.config import ConfigError, config_from_dict
from vitplas.data import dataset_info
from vitplas.jobs.runners import run_landscape
from vitplas.models.errors import ModelError
from vitplas.training.config import FinetuneConfig

SMALL = dict(dataset="rotten-tomatoes", reference="rotten-tomatoes", max_length=12, grid=3,
             steps=3, batch_size=4, eval_images=4, pairs=4, device="cpu", blocks=None,
             components=["fc1", "mha"])  # fmt: skip
TABLES = ("landscape", "trajectory")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return text_world(tmp_path_factory.mktemp("text"))


def _cfg(world, family: str, **more) -> LandscapeConfig:
    data = {**SMALL, "model": str(world[family]), "data_root": str(world["data"]), **more}
    return config_from_dict(LandscapeConfig, data)


def _centre(cfg: LandscapeConfig, name: str):
    """The model at the plane's origin (the last SGD step of `name`'s path), with the fixed
    loss batch and pairs, built as compute_landscape builds them."""
    torch.manual_seed(cfg.seed)
    setup, loaded = L._setup(cfg, dataset_info(cfg.dataset).num_classes)
    steps, loss_batch, pairs = L._batches(cfg, setup.modality.streams(cfg, loaded))
    L.trajectory(setup, cfg, name, steps)  # leaves the model at the last step
    return setup, loss_batch, pairs


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_the_centre_is_the_models_loss_and_the_estimators_ratio(world, family, tmp_path):
    cfg = _cfg(world, family)
    run_landscape(cfg, tmp_path / "run")
    grid = pd.read_csv(tmp_path / "run" / "landscape.csv")
    for name in cfg.components:
        centre = grid[(grid["component"] == name) & (grid["a"] == 0) & (grid["b"] == 0)]
        setup, (tokens, labels), pairs = _centre(cfg, name)
        ids, mask = tokens.unbind(1)  # (B, L) each: the classifier reads the mask
        with torch.inference_mode():
            logits = setup.model(input_ids=ids, attention_mask=mask).logits
            loss = float(F.cross_entropy(logits, labels))
            x, y = pairs.chunk(2)  # (P, 2, L): reference val, dataset test
            rate = float(pair_ratios(setup.cmap, x, y, [name])[:, cfg.layer, 0].nanmean())
        assert len(centre) == 1 and mask.eq(0).any()  # the batch has padding
        np.testing.assert_allclose(centre["loss"].item(), loss, rtol=1e-6)
        np.testing.assert_allclose(centre["rate"].item(), rate, rtol=1e-6)
    assert grid.groupby("component")["loss"].nunique().gt(1).all()  # the surface is not flat


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_padding_changes_no_number(world, family, tmp_path):
    """max_length 12 -> 24 (more pad positions) changes neither surface nor the path."""
    tables = []
    for n in (12, 24):
        run_landscape(_cfg(world, family, max_length=n), tmp_path / f"run{n}")
        tables.append([pd.read_csv(tmp_path / f"run{n}" / f"{t}.csv") for t in TABLES])
    (grid12, path12), (grid24, path24) = tables
    for col in ("loss", "rate"):
        np.testing.assert_allclose(grid12[col], grid24[col], rtol=1e-5)
    np.testing.assert_allclose(path12[["a", "b"]], path24[["a", "b"]], atol=1e-6)


@pytest.mark.parametrize(
    ("family", "config_class", "key"),
    [("bert", tf.BertConfig, "num_hidden_layers"), ("gpt2", tf.GPT2Config, "n_layer")],
)
def test_blocks_keeps_the_first_layers(world, family, config_class, key):
    """blocks=1 keeps BERT's first encoder layer / GPT-2's first h block: the classifier's
    logits are those of the same weights built with one layer."""
    cfg = _cfg(world, family, blocks=1)
    setup, (tokens, _), _ = _centre(cfg, "fc1")
    assert setup.cmap.depth == 1
    config = setup.model.config.to_dict() | {key: 1}
    one = tf.AutoModelForSequenceClassification.from_config(config_class(**config)).eval()
    one.load_state_dict(setup.model.state_dict())
    ids, mask = tokens.unbind(1)
    with torch.inference_mode():
        want = one(input_ids=ids, attention_mask=mask).logits
        got = setup.model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_text_defaults_and_refusals_in_one_line(world):
    assert LandscapeConfig().max_length == FinetuneConfig().max_length
    text = config_from_dict(LandscapeConfig, {"dataset": "rotten-tomatoes"})
    assert text.reference == "wordnet-glosses"  # as `vitplas select` chooses it
    assert config_from_dict(LandscapeConfig, {}).reference == "photos"
    with pytest.raises(ConfigError, match="max_length must be >= 1"):
        _cfg(world, "bert", max_length=0)
    refusals = [
        (
            dict(dataset="digits", reference=None, img_size=None),
            r"'digits' holds images but .* reads texts",
        ),
        (
            dict(dataset="digits", reference=None, model="minilm-l6"),
            r"'digits' holds images but .* reads texts",
        ),
        (
            dict(reference="photos"),
            r"reference 'photos' holds images but dataset 'rotten-tomatoes' holds texts",
        ),
        (dict(max_length=1000), r"max_length 1000: .* reads sequences of 1 to 40 tokens"),
        (dict(protocol="paper"), r"protocol=paper is the original's ViT recipe"),
    ]
    for more, message in refusals:
        cfg = _cfg(world, "gpt2", **more)
        with pytest.raises(ModelError, match=message) as err:
            _centre(cfg, "fc1")
        assert "\n" not in str(err.value)
    image = config_from_dict(LandscapeConfig, {**SMALL, "model": "tiny-random",
                                               "random_init": True, "img_size": None})  # fmt: skip
    with pytest.raises(
        ModelError, match=r"dataset 'rotten-tomatoes' holds texts but tiny-random reads images"
    ):
        L._setup(image, 3)


def test_a_small_run_on_the_real_minilm(tmp_path):
    from vitplas.data import is_available

    minilm_folder()
    for name in ("rotten-tomatoes", "wordnet-glosses"):
        if not is_available(name)[0]:
            pytest.skip(f"{name} is absent; run `bash scripts/offline-assets`")
    data = {**SMALL, "model": "minilm-l6", "reference": None, "max_length": 32, "blocks": 2,
            "layer": 1, "components": ["ln1", "fc1", "mha"]}  # fmt: skip
    cfg = config_from_dict(LandscapeConfig, data)
    run_landscape(cfg, tmp_path / "run")
    grid = pd.read_csv(tmp_path / "run" / "landscape.csv")
    assert len(grid) == 3 * 3 * 3 and grid[["loss", "rate"]].gt(0).all().all()
    assert np.isfinite(grid[["loss", "rate"]]).all().all()
    assert (tmp_path / "run" / "figures" / "landscape.png").stat().st_size > 1000
