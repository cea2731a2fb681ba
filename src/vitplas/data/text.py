"""Text datasets: what a text reader returns, the one text Dataset, and tokenisation.

A text dataset of the registry (DatasetInfo.modality == "text") yields items (text: str,
label: int), labels -1 for an unlabelled stream (WikiText-103). No transform applies: a model
turns a batch of texts into tensors with its own tokenizer,

    batch = tokenize_texts(texts, tokenizer, max_length=128)
    batch["input_ids"]       # (N, L) int64, L = max_length, pad ids on the padding side
    batch["attention_mask"]  # (N, L) int64, 1 on real tokens (special ones included), 0 on pad

so every sequence has the same length L and the mask says which positions are real: a
measurement over tokens must read the mask, never count pad positions as tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass
class TextRecords:
    """N texts with int64 labels (N,) and class names (empty for an unlabelled stream)."""

    texts: Sequence[str]
    labels: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def text(self, index: int) -> str:
        return self.texts[index]

    def subset(self, indices: np.ndarray) -> TextRecords:
        """The rows `indices`, same classes (a reader's official part)."""
        return TextRecords([self.texts[i] for i in indices], self.labels[indices], self.classes)


@dataclass(eq=False)
class TextDataset(Dataset):
    """The rows `indices` of `records` as a torch Dataset of (text: str, label: int).

    The default DataLoader collate makes a batch (tuple of N str, int64 labels (N,))."""

    records: TextRecords
    indices: np.ndarray
    name: str = ""
    split: str = ""
    num_classes: int | None = None
    info: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.indices = np.asarray(self.indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[str, int]:
        row = int(self.indices[item])
        return self.records.text(row), int(self.records.labels[row])

    @property
    def texts(self) -> list[str]:
        """The texts of this split, in order."""
        return [self.records.text(int(row)) for row in self.indices]

    @property
    def labels(self) -> np.ndarray:
        """Labels of this split, int64 (len(self),)."""
        return self.records.labels[self.indices]

    @property
    def classes(self) -> list[str]:
        return self.records.classes

    @property
    def skipped(self) -> tuple:
        """No file is ever left out of a text set (for skipped_report)."""
        return ()


def tokenize_texts(
    texts: Sequence[str], tokenizer: Any, max_length: int
) -> dict[str, torch.Tensor]:
    """Texts -> {"input_ids": (N, L) int64, "attention_mask": (N, L) int64}, L = max_length.

    `tokenizer` is a Hugging Face tokenizer (the model's own); each text is truncated to
    max_length tokens (its special tokens included) and padded to max_length with the
    tokenizer's pad token on its padding side (the right for BERT's and GPT-2's), masked 0.
    A tokenizer without a pad token (GPT-2's) is refused: set `tokenizer.pad_token` first
    (GPT-2: its eos token; the mask hides it).
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    texts = list(texts)
    if bad := [i for i, text in enumerate(texts) if not isinstance(text, str)]:
        raise TypeError(
            f"tokenize_texts takes strings; item {bad[0]} is a {type(texts[bad[0]]).__name__}"
        )
    if getattr(tokenizer, "pad_token", None) is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no pad token, so texts cannot be padded to "
            "max_length; set tokenizer.pad_token first (GPT-2: tokenizer.eos_token)"
        )
    if not texts:
        empty = torch.zeros(0, max_length, dtype=torch.long)
        return {"input_ids": empty, "attention_mask": empty.clone()}
    encoded = tokenizer(
        texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {key: encoded[key].long() for key in ("input_ids", "attention_mask")}


def pack_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A tokenize_texts batch as one int64 tensor (N, 2, L): [:, 0] input_ids, [:, 1] the
    attention mask. One tensor moves to a device, splits into micro-batches and goes through a
    DataLoader as an image batch does (models.text.forward_logits unpacks it)."""
    return torch.stack([batch["input_ids"], batch["attention_mask"]], dim=1).long()


class TokenizedTexts(Dataset):
    """A TextDataset tokenised once by a model's tokenizer to `max_length`: items
    (tokens (2, L) int64 as pack_tokens packs them, label: int); `labels`, `classes` and
    `texts` as the TextDataset's, so a few-shot draw and a per-example record read them; its
    other attributes (name, split, info) too. The one tokenised text stream of finetuning,
    select and the plasticity estimator (its CI units: text_units; equal-length pairs:
    real_lengths)."""

    def __init__(self, texts: TextDataset, tokenizer: Any, max_length: int, chunk: int = 4096):
        self.source = texts
        rows = texts.texts
        parts = [
            pack_tokens(tokenize_texts(rows[i : i + chunk], tokenizer, max_length))
            for i in range(0, len(rows), chunk)
        ]
        self.tokens = torch.cat(parts) if parts else torch.zeros(0, 2, max_length).long()
        self.labels = texts.labels
        self.num_classes = texts.num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        return self.tokens[item], int(self.labels[item])

    @property
    def classes(self) -> list[str]:
        return self.source.classes

    @property
    def texts(self) -> list[str]:
        return self.source.texts

    @property
    def skipped(self) -> tuple:
        return ()

    def real_lengths(self) -> np.ndarray:
        """(N,) int64 real token count of each text at max_length (its mask's sum: special
        tokens included, truncation applied)."""
        return self.tokens[:, 1].sum(1).numpy()

    def text_units(self) -> tuple[int, np.ndarray]:
        """(number of distinct texts, (N,) int64 id of each item's text): the CI's units, a
        text repeated in the stream being one unit (analysis.pairs.stream_units)."""
        first: dict[str, int] = {}
        codes = [first.setdefault(text, len(first)) for text in self.texts]
        return len(first), np.asarray(codes, dtype=np.int64)

    def __getattr__(self, name: str) -> Any:  # name, split, info... of the text dataset
        if name in ("source", "tokens", "labels", "num_classes"):
            raise AttributeError(name)  # not set yet (unpickling): no recursion
        return getattr(self.source, name)
