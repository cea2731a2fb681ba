"""`pair_lengths` in `vitplas select` and the Python API: with `equal`, select's plasticity
criterion is the estimator on the equal-length pairs `vitplas plasticity` draws (analysis
.length_pairs), on a tiny random BERT and fortune texts of 1 to 10 words; an image target is
refused in plasticity's one line; vitplas.select and vitplas.plasticity pass it through (the
API's plasticity on a text model gives the CLI's numbers)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from text_fixtures import write_bert, write_fortunes
from typer.testing import CliRunner

import vitplas
from vitplas.cli import app
from vitplas.config import ConfigError, config_from_dict
from vitplas.selection.config import SelectConfig
from vitplas.selection.select import score_config

WORDS = ["the", "film", "is", "good", "bad", ".", "number"]
SMALL = dict(target="fortunes", reference="fortunes", max_length=16, batch_size=4, pairs=16,
             grad_batches=1, device="cpu", criteria=["plasticity"])  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lengths")
    return {"bert": write_bert(root / "bert"), "data": write_fortunes(root / "data", WORDS)}


def _select(world, **more) -> pd.DataFrame:
    data = {**SMALL, "model": str(world["bert"]), "data_root": str(world["data"]), **more}
    return score_config(config_from_dict(SelectConfig, data))


def _scores(frame: pd.DataFrame) -> pd.Series:
    return frame.set_index(["layer", "component"])["score"].sort_index()


def test_select_equal_lengths_is_the_estimator_on_equal_length_pairs(world):
    from vitplas.analysis.length_pairs import equal_length_batches
    from vitplas.data import TokenizedTexts, get_dataset
    from vitplas.models.build import load_model
    from vitplas.models.components import component_map
    from vitplas.models.hf_text import load_tokenizer
    from vitplas.selection import criteria as C

    frame = _select(world, pair_lengths="equal")
    loaded = load_model(str(world["bert"]))
    tokenizer = load_tokenizer(loaded.tokenizer, loaded.model)
    ref, tgt = (TokenizedTexts(get_dataset("fortunes", split, root=str(world["data"])),
                               tokenizer, 16) for split in ("val", "train"))  # fmt: skip
    pairs = list(equal_length_batches(ref, tgt, pairs=16, batch_size=16, seed=0))
    for x, y in pairs:  # every pair of one real length, some lengths apart
        assert torch.equal(x[:, 1].sum(1), y[:, 1].sum(1))
    assert len(set(x[:, 1].sum(1).tolist())) > 1
    direct = pd.DataFrame(C.plasticity_scores(component_map(loaded.model.eval()), pairs))
    pd.testing.assert_series_equal(_scores(frame), _scores(direct), rtol=1e-5)
    anyway = _select(world)  # the default: other pairs, other scores
    assert not (_scores(anyway) - _scores(frame)).abs().lt(1e-6).all()


def test_select_equal_lengths_refuses_an_image_target_in_one_line():
    cfg = config_from_dict(SelectConfig, dict(model="tiny-random", random_init=True,
                           target="digits", pair_lengths="equal", device="cpu"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"^pair_lengths equal pairs texts by their real "
                       r"length; stream 'digits' holds images: use pair_lengths=any$"):  # fmt: skip
        score_config(cfg)
    with pytest.raises(ConfigError, match="pair_lengths"):
        config_from_dict(SelectConfig, {"pair_lengths": "same"})


def test_the_api_passes_pair_lengths_through(world, tmp_path, monkeypatch):
    options = {k: v for k, v in SMALL.items() if k != "target"}
    frame, picks = vitplas.select(str(world["bert"]), "fortunes", data_root=str(world["data"]),
                                  pair_lengths="equal", **options)  # fmt: skip
    pd.testing.assert_frame_equal(frame, _select(world, pair_lengths="equal"))
    assert picks["plasticity"]
    args = ["plasticity", "--model", str(world["bert"]), "--reference", "fortunes"]
    args += ["--target", "fortunes", "--data-root", str(world["data"]), "--pairs", "16"]
    args += ["--batch-size", "4", "max_length=16", "pair_lengths=equal", "--no-bounds"]
    result = CliRunner().invoke(app, [*args, "figures=false", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    cli = json.loads((tmp_path / "cli" / "result.json").read_text())
    monkeypatch.setenv("VITPLAS_DATA", str(world["data"]))
    api = vitplas.plasticity(str(world["bert"]), "fortunes", "fortunes", pairs=16, batch_size=4,
                             max_length=16, pair_lengths="equal", bounds=False)  # fmt: skip
    want = pd.read_csv(tmp_path / "cli" / "plasticity_pooled.csv").set_index("component")
    got = api.pooled.set_index("component")
    assert api.ranking == cli["ranking"]
    pd.testing.assert_series_equal(got["mean"], want["mean"], rtol=1e-6)
    anyway = vitplas.plasticity(str(world["bert"]), "fortunes", "fortunes", pairs=16,
                                batch_size=4, max_length=16, bounds=False)  # fmt: skip
    assert not anyway.pooled.set_index("component")["mean"].equals(got["mean"])
    with pytest.raises(ValueError, match="pair_lengths='equal' draws pairs from datasets"):
        vitplas.plasticity("tiny-random", torch.zeros(4, 3, 28, 28), torch.ones(4, 3, 28, 28),
                           random_init=True, pair_lengths="equal", bounds=False)  # fmt: skip
