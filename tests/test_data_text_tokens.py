"""tokenize_texts with a tiny BERT tokenizer built offline (shapes, masks, truncation, pad ids,
refusals), and the real installed text assets (skipped when absent)."""

from __future__ import annotations

import bz2
import csv

import numpy as np
import pytest
import torch
from test_data_text import write_fortunes

from vitplas.data import dataset_info, get_dataset, is_available
from vitplas.data.text import tokenize_texts

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "is", "good", "bad", "."]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("vocab")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return BertTokenizerFast(str(folder / "vocab.txt"))  # transformers 5 ignores vocab_file=


def test_tokenize_pads_and_truncates_to_max_length_with_a_mask(tokenizer):
    texts = ["the film is good .", "bad", "the film is the film is the film is bad ."]
    batch = tokenize_texts(texts, tokenizer, max_length=8)
    assert set(batch) == {"input_ids", "attention_mask"}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (3, 8) and ids.dtype == mask.dtype == torch.long
    assert mask.sum(1).tolist() == [7, 3, 8]  # [CLS] + 5 + [SEP]; [CLS] bad [SEP]; cut at 8
    cls, sep, pad = (VOCAB.index(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    assert ids[0].tolist() == [cls, 5, 6, 7, 8, 10, sep, pad]
    assert ids[1].tolist() == [cls, 9, sep] + [pad] * 5
    assert ids[2, -1].item() == sep  # truncation keeps the closing special token
    assert torch.equal(ids == pad, mask == 0)  # the mask is 0 exactly on pad positions


def test_tokenize_refusals_and_the_empty_batch(tokenizer):
    empty = tokenize_texts([], tokenizer, max_length=4)
    assert empty["input_ids"].shape == empty["attention_mask"].shape == (0, 4)
    with pytest.raises(ValueError, match="max_length must be a positive integer, got 0"):
        tokenize_texts(["the"], tokenizer, max_length=0)
    with pytest.raises(TypeError, match="takes strings; item 1 is a int"):
        tokenize_texts(["the", 3], tokenizer, max_length=4)

    class NoPad:  # GPT-2's tokenizer has no pad token until one is set
        pad_token = None

    with pytest.raises(ValueError, match=r"NoPad has no pad token.*GPT-2: tokenizer.eos_token"):
        tokenize_texts(["the"], NoPad(), max_length=4)


def test_a_text_loader_batch_tokenizes(tokenizer, tmp_path):
    from vitplas.data import make_loader

    write_fortunes(tmp_path, per_topic=2)
    data = get_dataset("fortunes", "train", root=tmp_path)
    texts, labels = next(iter(make_loader(data, 4, shuffle=False, seed=0, pin_memory=False)))
    assert isinstance(texts, tuple) and labels.dtype == torch.long and labels.shape == (4,)
    assert tokenize_texts(texts, tokenizer, max_length=16)["input_ids"].shape == (4, 16)


def _real(name: str) -> dict:
    present, where = is_available(name)
    if not present:
        pytest.skip(f"{name} absent ({where}); run `bash scripts/offline-assets`")
    return {s: get_dataset(name, s) for s in ("train", "val", "test")}


def _class_counts(parts: dict, name: str) -> dict[str, int]:
    labels = np.concatenate([p.labels for p in parts.values()])
    counts = np.bincount(labels, minlength=dataset_info(name).num_classes)
    return dict(zip(parts["test"].classes, counts.tolist(), strict=True))


def test_real_rotten_tomatoes_counts_and_split():
    parts = _real("rotten-tomatoes")
    folder = is_available("rotten-tomatoes")[1]
    with bz2.open(f"{folder}/rotten_tomatoes_corpus_full.csv.bz2", "rt") as handle:
        rows = list(csv.DictReader(handle))  # the file, read independently
    assert len(rows) == 13_905
    raw = {c: sum(r["category"] == c for r in rows) for c in ("fresh", "rotten", "plot")}
    assert raw == {"fresh": 7_403, "rotten": 5_405, "plot": 1_097}
    assert _class_counts(parts, "rotten-tomatoes") == {
        "fresh": 7_368,
        "rotten": 5_384,
        "plot": 1_083,
    }
    assert [len(parts[s]) for s in ("train", "val", "test")] == [8_854, 2_213, 2_768]
    test = np.bincount(parts["test"].labels).tolist()
    assert test == [round(0.2 * n) for n in (7_368, 5_384, 1_083)]  # stratified


def test_real_wordnet_glosses_counts():
    parts = _real("wordnet-glosses")
    counts = _class_counts(parts, "wordnet-glosses")
    assert sum(counts.values()) == 95_882 and len(counts) == 41 and min(counts.values()) > 0
    assert counts["noun.artifact"] == 11_587 and counts["verb.weather"] == 81
    assert sum(v for k, v in counts.items() if k.startswith("noun.")) == 82_115
    text, label = get_dataset("wordnet-glosses", "test")[0]
    assert isinstance(text, str) and text and parts["test"].classes[label].startswith("noun.")


def test_real_fortunes_counts():
    parts = _real("fortunes")
    counts = _class_counts(parts, "fortunes")
    assert sum(counts.values()) == 14_396 and len(counts) == 40
    assert (counts["computers"], counts["science"], counts["politics"]) == (1_051, 625, 703)
    assert counts["pratchett"] == 2 and counts["people"] == 1_251
    texts = [t for p in parts.values() for t in p.texts]
    assert not any("\b" in t for t in texts)  # overstrikes printed as a terminal shows them
    assert any("it's *only* ones and zeroes" in t for t in texts)  # '*____\b\b\b\bonly*'
