"""Bounds of text models on tiny random-weight BERT and GPT-2 folders (with tokenizers built
offline) and fortune files in their real format: pair_lengths=equal (every pair of one real
length, checked by hand from the saved pairs; finite MHA bounds at n = the pairs' largest real
length that no pair exceeds), the pairing's seeded determinism and its refusals, and
`vitplas radius` / `vitplas bounds` (with --plasticity) on text models."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as tf
from test_families_text import _BERT, _GPT2
from text_fixtures import write_fortunes
from typer.testing import CliRunner

from vitplas.analysis.length_pairs import match_lengths, matched_indices
from vitplas.config import ConfigError

WORDS = ["the", "film", "is", "good", "bad", "a", "dog", "runs", "slow", "fast", "very", "not"]
MAX_LENGTH = 16


def _bert(folder) -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    tf.BertModel(tf.BertConfig(**{**_BERT, "vocab_size": len(vocab)})).save_pretrained(folder)


def _gpt2(folder) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<eos>", "<unk>", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<eos>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"unk_token": "<unk>"}))
    torch.manual_seed(0)
    tf.GPT2Model(tf.GPT2Config(**{**_GPT2, "vocab_size": len(vocab)})).save_pretrained(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{'bert': folder, 'gpt2': folder, 'data': a data root with the 40 fortune files}: each
    entry 1 to 10 words, so the real lengths differ within and across the splits."""
    root = tmp_path_factory.mktemp("text")
    out = {"data": root / "data"}
    for name, make in (("bert", _bert), ("gpt2", _gpt2)):
        out[name] = root / name
        out[name].mkdir()
        make(out[name])
    write_fortunes(root / "data", WORDS)
    return out


def _app():
    from vitplas.cli.app import app

    return app


def _invoke(args):
    return CliRunner().invoke(_app(), args, catch_exceptions=False)


def _plasticity(folders, name, out, *extra):
    args = ["plasticity", "--model", str(folders[name]), "--reference", "fortunes"]
    args += ["--reference-split", "val", "--target", "fortunes", "--target-split", "test"]
    args += ["--data-root", str(folders["data"]), "--pairs", "48", "--batch-size", "8"]
    args += [f"max_length={MAX_LENGTH}", "radius_images=16", "figures=false", "--out", str(out)]
    return _invoke([*args, *extra])


def _real_lengths(folder, split, root, indices):
    """Real token counts of the fortune texts at `indices` of `split`, tokenised here."""
    from vitplas.data import get_dataset
    from vitplas.models import load_model
    from vitplas.models.text import load_tokenizer

    texts = get_dataset("fortunes", split, root=str(root))
    tokenizer = load_tokenizer(load_model(str(folder)))
    batch = [texts[int(i)][0] for i in indices]
    encoded = tokenizer(batch, padding="max_length", truncation=True, max_length=MAX_LENGTH)
    return np.asarray(encoded["attention_mask"]).sum(1)


@pytest.mark.parametrize("name", ["bert", "gpt2"])
@pytest.mark.parametrize("inputs", ["embedding", "hidden"])
def test_equal_length_pairs_give_finite_mha_bounds_no_pair_exceeds(folders, name, inputs, tmp_path):
    result = _plasticity(folders, name, tmp_path, "pair_lengths=equal", "save_pairs=true",
                         "--inputs", inputs)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "pairs of equal real length (pair_lengths=equal" in result.output
    pairs = pd.read_parquet(tmp_path / "pairs.parquet").drop_duplicates("pair")
    assert len(pairs) == 48
    x = _real_lengths(folders[name], "val", folders["data"], pairs["reference_index"])
    y = _real_lengths(folders[name], "test", folders["data"], pairs["target_index"])
    assert (x == y).all() and len(set(x)) > 3  # one length per pair, many lengths
    ratio = pd.read_csv(tmp_path / "bound_ratio.csv")
    mha = ratio[ratio["component"] == "mha"]
    assert len(mha) == 2 and np.isfinite(mha["bound"]).all() and (mha["bound"] > 0).all()
    assert (mha["exceed_frac"] == 0).all() and (mha["max"] <= mha["bound"]).all()
    assert mha["held"].astype(str).eq("True").all()
    bounds = pd.read_csv(tmp_path / "bounds.csv")
    rows = bounds[bounds["component"] == "mha"]
    assert (rows["n_tokens"] == x.max()).all() and x.max() < MAX_LENGTH
    assert rows["definition"].str.contains(f"n={x.max()},").all()
    k = rows.iloc[0]
    by_hand = k["mha_k0"] + k["mha_k1"] * k["r_max"] + k["mha_k2"] * k["r_max"] ** 2
    assert k["bound"] == pytest.approx(by_hand, rel=1e-12)
    assert "mha (mha-data): 0% of pairs above it in all 2 layers, assumptions held" in result.output


def test_any_lengths_keep_no_finite_mha_bound_and_say_the_assumption_broke(folders, tmp_path):
    result = _plasticity(folders, "bert", tmp_path)
    assert result.exit_code == 0, result.output
    assert "mha (mha-data): no finite bound in 2 of 2 layers" in result.output
    assert "assumptions held in 0 of 2 layers" in result.output
    bounds = pd.read_csv(tmp_path / "bounds.csv")
    assert math.isinf(bounds.loc[bounds["component"] == "mha", "bound"].iloc[0])


def test_matching_is_seeded_skips_lengths_of_one_stream_and_refuses_too_few():
    reference = np.array([3, 3, 4, 5, 5, 5, 9, 9])
    target = np.array([3, 4, 4, 5, 7, 7, 7])
    match = match_lengths(reference, target, batch_size=2, names=("r", "t"))
    assert match.lost == (2, 3) and sorted(match.by_length) == [3, 4, 5]
    ri, ti = matched_indices(match, 20, seed=1)
    assert (reference[ri] == target[ti]).all() and len(ri) == 20
    again = matched_indices(match, 20, seed=1)
    assert all((a == b).all() for a, b in zip((ri, ti), again, strict=True))
    assert not (matched_indices(match, 20, seed=2)[1] == ti).all()
    assert set(ti[:4]) == {0, 1, 2, 3}  # one pass over the kept targets, then the next
    note = match.note(("r", "t"), 12)
    assert "3 lengths from 3 to 5 tokens" in note and "r keeps 6 of 8 texts, t keeps 4 of 7" in note
    with pytest.raises(ConfigError, match=r"stream 't' keeps 4 of 7 texts .* fewer than one batch"):
        match_lengths(reference, target, batch_size=5, names=("r", "t"))


def test_equal_lengths_refuse_an_image_model_in_one_line(tmp_path):
    args = ["plasticity", "--model", "tiny-random", "--img-size", "32", "--target", "digits"]
    args += ["--pairs", "4", "--batch-size", "4", "pair_lengths=equal", "--out", str(tmp_path)]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2, result.output
    assert "pair_lengths equal pairs texts by their real length; stream 'photos'" in result.output


def test_mha_coefficients_rescale_to_a_pairs_own_length():
    from vitplas.analysis.bounds import mha_coefficients, mha_coefficients_at

    torch.manual_seed(0)
    qkv, proj = torch.nn.Linear(8, 24), torch.nn.Linear(8, 8)
    at_l = mha_coefficients(qkv, proj, 2, 40)
    for n in (1, 7, 40):
        own = mha_coefficients(qkv, proj, 2, n)
        assert mha_coefficients_at(at_l, 40, n) == pytest.approx(own, rel=1e-12)
    lengths = torch.tensor([1.0, 7.0], dtype=torch.float64)[:, None, None]  # as the estimator
    coefs = tuple(torch.tensor(c, dtype=torch.float64) for c in at_l)
    k = mha_coefficients_at(coefs, torch.tensor(40.0, dtype=torch.float64), lengths)
    assert float(k[2][1, 0, 0]) == pytest.approx(mha_coefficients(qkv, proj, 2, 7)[2], rel=1e-12)


def _radius_by_hand(folder, root, inputs):
    """Mean over every fortunes [test] text of the RMS norm of its real tokens at the
    embedding output (or each block's input), from the model's own hidden states."""
    from vitplas.data import get_dataset
    from vitplas.models import load_model
    from vitplas.models.text import load_tokenizer

    loaded = load_model(str(folder))
    texts = [t for t, _ in get_dataset("fortunes", "test", root=str(root))]
    encoded = load_tokenizer(loaded)(
        texts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
    )
    mask = encoded["attention_mask"]
    with torch.no_grad():
        states = loaded.model(
            input_ids=encoded["input_ids"], attention_mask=mask, output_hidden_states=True
        ).hidden_states
    layers = range(1 if inputs == "embedding" else len(states) - 1)
    sq = [(states[i].double().square().sum(-1) * mask).sum(1) / mask.sum(1) for i in layers]
    return [float(v.sqrt().mean()) for v in sq], len(texts)


@pytest.mark.parametrize("name", ["bert", "gpt2"])
@pytest.mark.parametrize("inputs", ["embedding", "hidden"])
def test_radius_of_a_text_model_is_over_real_tokens(folders, name, inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("VITPLAS_DATA", str(folders["data"]))
    args = ["radius", "--model", str(folders[name]), "--dataset", "fortunes", "--images", "999"]
    args += ["--inputs", inputs, f"max_length={MAX_LENGTH}", "--out", str(tmp_path)]
    result = _invoke(args)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "radius.json").read_text())
    expected, count = _radius_by_hand(folders[name], folders["data"], inputs)
    got = record["radius"] if inputs == "hidden" else [record["radius"]]
    assert got == pytest.approx(expected, rel=1e-5) and len(got) == len(expected)
    assert record["measured_on"] == "texts" and record["images_measured"] == count
    assert f"fortunes/test, {count} texts)" in result.output


def test_bounds_of_a_text_plasticity_run(folders, tmp_path):
    measured = tmp_path / "plasticity"
    assert _plasticity(folders, "gpt2", measured, "pair_lengths=equal").exit_code == 0
    args = ["bounds", "--model", str(folders["gpt2"]), "--dataset", "fortunes"]
    args += [f"data_root={folders['data']}", "radius_images=16", f"max_length={MAX_LENGTH}"]
    args += ["figures=false", "--out"]
    result = _invoke([*args, str(tmp_path / "bounds"), "--plasticity", str(measured)])
    assert result.exit_code == 0, result.output
    here = pd.read_csv(tmp_path / "bounds" / "bounds.csv").set_index(["layer", "component"])
    there = pd.read_csv(measured / "bounds.csv").set_index(["layer", "component"])
    for column in ("bound", "r_max", "n_tokens", "norm_scale"):
        assert np.allclose(here[column], there[column], rtol=1e-9, equal_nan=True), column
    assert np.isfinite(here.loc[(slice(None), "mha"), "bound"]).all()
    ratio = pd.read_csv(tmp_path / "bounds" / "bound_ratio.csv")
    assert np.allclose(ratio["ratio"], ratio["mean"] / ratio["bound"])
    alone = _invoke([*args, str(tmp_path / "alone")])  # no pairs: the data bounds undefined
    assert alone.exit_code == 0, alone.output
    assert "mha: undefined: the data MHA bound needs the largest token norm" in alone.output
    other = f"max_length={MAX_LENGTH - 1}"
    refused = _invoke(
        [*args[:-3], other, "--out", str(tmp_path / "x"), "--plasticity", str(measured)]
    )
    assert refused.exit_code == 2 and "tokenised its texts to max_length 16" in refused.output


def test_bounds_of_a_run_of_any_lengths_say_why_mha_has_none(folders, tmp_path):
    measured = tmp_path / "plasticity"
    assert _plasticity(folders, "bert", measured).exit_code == 0
    args = ["bounds", "--model", str(folders["bert"]), "--dataset", "fortunes"]
    args += [f"data_root={folders['data']}", "radius_images=16", f"max_length={MAX_LENGTH}"]
    args += ["figures=false", "--out", str(tmp_path / "b"), "--plasticity", str(measured)]
    result = _invoke(args)
    assert result.exit_code == 0, result.output
    assert "mha: no finite bound: some pairs' texts have different real lengths" in result.output
    assert "measure with pair_lengths=equal" in result.output
