"""Linear probes of text models: features are the real component outputs pooled over the real
tokens only (BERT's attention with its output projection and a block's output by hand, the
masked mean and the classifier's token at 1e-6); padding further and changing the pad ids
change no feature; a probe job through the CLI on a tiny BERT and GPT-2 (local folders) and on
the real MiniLM-L6 with real Rotten Tomatoes texts writes the image table; protocol=paper, a
max_length beyond the positions and an empty text are refused in one line."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from test_families_text import MODELS, batch, build, minilm_folder
from test_text_probes import _attention_by_hand
from text_fixtures import text_world
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from vitplas.config import ConfigError
from vitplas.training.probe import extract_features, probe_points
from vitplas.training.probe_text import pool_real_tokens, real_token_mask

ATOL = 1e-6
COMMON = ["num_workers=0", "device=cpu", "dataset=rotten-tomatoes"]


def _loader(ids: torch.Tensor, mask: torch.Tensor, batch_size: int = 4) -> DataLoader:
    tokens = torch.stack([ids, mask], dim=1)  # (B, 2, L) as data.pack_tokens packs them
    labels = torch.arange(len(ids)) % 2
    return DataLoader(list(zip(tokens, labels, strict=True)), batch_size=batch_size)


def _masked_mean_by_hand(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, D): the mean of each text's real token rows, one text at a time."""
    return torch.stack([h[i][mask[i].bool()].mean(0) for i in range(len(h))])


def test_bert_features_are_the_masked_mean_of_the_component_outputs():
    model = build("bert")
    ids, mask = batch()
    feats, labels = extract_features(model, _loader(ids, mask), [(0, "mha"), (1, "block")])
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        h0, h2 = hidden.hidden_states[0], hidden.hidden_states[2]  # (B, L, D)
        att = model.encoder.layer[0].attention
        q, k, v = (lin(h0) for lin in (att.self.query, att.self.key, att.self.value))
        mha = att.output.dense(_attention_by_hand(q, k, v, mask, causal=False, heads=4))
    assert torch.allclose(feats[(0, "mha")], _masked_mean_by_hand(mha, mask), atol=ATOL)
    assert torch.allclose(feats[(1, "block")], _masked_mean_by_hand(h2, mask), atol=ATOL)
    # text 2 has 4 real tokens of 7: its feature is not the mean over all 7 positions
    assert not torch.allclose(feats[(1, "block")][2], h2[2].mean(0), atol=1e-3)
    assert torch.equal(labels, torch.arange(4) % 2)


@pytest.mark.parametrize(("name", "position"), [("bert", "first"), ("gpt2", "last")])
def test_cls_is_the_token_the_family_classifier_reads(name, position):
    model = build(name)
    ids, mask = batch()
    feats, _ = extract_features(model, _loader(ids, mask), [(0, "block")], pool="cls")
    with torch.no_grad():
        h1 = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1]
    where = [0] * 4 if position == "first" else [6, 6, 3, 5]  # each text's last real token
    assert torch.allclose(feats[(0, "block")], h1[torch.arange(4), where], atol=ATOL)


def test_masked_pooling_by_hand_and_a_nan_pad_changes_nothing():
    tokens = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)  # (B, L, D)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    tokens[0, 2] = tokens[1, 1:] = float("nan")  # pad positions
    mean = pool_real_tokens(tokens, mask, "mean")
    assert mean.tolist() == [[1.0, 2.0], [6.0, 7.0]]  # (0 + 2) / 2, (1 + 3) / 2; row 1 alone
    assert pool_real_tokens(tokens, mask, "cls", "last").tolist() == [[2.0, 3.0], [6.0, 7.0]]
    with pytest.raises(ValueError, match="a text has no real token"):
        real_token_mask(torch.stack([torch.ones(2, 3), torch.tensor([[1] * 3, [0] * 3])], 1).long())


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_padding_further_or_other_pad_ids_change_no_feature(name, pool):
    model = build(name)
    points = probe_points(model)  # every component and block output of both layers
    ids, mask = batch()
    base, _ = extract_features(model, _loader(ids, mask, 3), points, pool=pool)
    longer = torch.randint(3, 99, (4, 12), generator=torch.Generator().manual_seed(5))
    longer[:, :7] = torch.where(mask.bool(), ids, longer[:, :7])  # other ids at every pad
    wide = torch.nn.functional.pad(mask, (0, 5))  # 5 more pad positions, mask 0
    other, _ = extract_features(model, _loader(longer, wide, 2), points, pool=pool)
    for point in points:
        assert torch.allclose(base[point], other[point], atol=1e-5), point


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return text_world(tmp_path_factory.mktemp("text"))


def _probe(*args: str):
    from vitplas.cli import app

    return CliRunner().invoke(app, ["probe", *args])


@pytest.mark.parametrize(("family", "pool"), [("bert", "mean"), ("gpt2", "cls")])
def test_cli_probe_of_a_tiny_text_model_writes_the_image_table(world, family, pool, tmp_path):
    args = [f"--model={world[family]}", f"data_root={world['data']}", "max_length=12"]
    args += [f"pool={pool}", "layers=[0]", "components=[mha,fc1]", "max_train=16", *COMMON]
    result = _probe(*args, "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "probe.parquet")
    assert list(zip(table["layer"], table["component"], strict=True)) == [
        (0, "mha"),
        (0, "fc1"),
        (1, "block"),
    ]
    columns = ["model", "dataset", "pool", "backend", "n_train", "n_test", "layer", "component"]
    assert list(table.columns) == [*columns, "acc", "width", "baseline_acc", "rel_to_baseline"]
    assert set(table["n_train"]) == {16} and set(table["n_test"]) == {6}  # 20% of 3 x 10
    assert table["width"].tolist() == [32, 48, 32] and set(table["pool"]) == {pool}
    assert table["acc"].between(0, 100).all() and (tmp_path / "DONE").exists()
    assert '"max_length": 12' in (tmp_path / "manifest.json").read_text()


@pytest.mark.parametrize(
    ("extra", "error", "message"),
    [
        (["protocol=paper"], ConfigError, "protocol=paper is the original image release's probe"),
        (["max_length=64"], Exception, "max_length 64: .* reads sequences of 1 to 40 tokens"),
    ],
)
def test_text_refusals_are_one_line(world, extra, error, message, tmp_path):
    from vitplas.config import load_config
    from vitplas.jobs.runners import run_probe
    from vitplas.training.config import ProbeConfig

    args = [f"model={world['bert']}", f"data_root={world['data']}", *COMMON, *extra]
    with pytest.raises(error, match=message) as err:
        run_probe(load_config(ProbeConfig, None, args), tmp_path / "run")
    assert "\n" not in str(err.value)


def test_the_real_minilm_probe_on_real_rotten_tomatoes(tmp_path):
    from vitplas.data import is_available

    minilm_folder()
    if not is_available("rotten-tomatoes")[0]:
        pytest.skip("rotten-tomatoes is absent; run `bash scripts/offline-assets`")
    args = ["--model", "minilm-l6", "max_train=36", "max_test=24", "max_length=32", *COMMON]
    result = _probe(*args, "layers=[-1]", "components=[mha,block]", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "probe.parquet")
    assert list(zip(table["layer"], table["component"], strict=True)) == [(5, "mha"), (5, "block")]
    assert set(table["n_train"]) == {36} and set(table["n_test"]) == {24}
    assert set(table["width"]) == {384} and table["acc"].between(0, 100).all()
    assert table["rel_to_baseline"].iloc[-1] == 0.0
    assert "block" in result.output and "rel_to_baseline" in result.output  # the printed table
