"""Pairs of texts of one real length (a plasticity config's `pair_lengths: equal`).

Why. A text pair (x, y) whose real lengths differ has no finite MHA bound: x's extra tokens
move f(x) at the positions where x and y agree (bounds.py, token_inputs.py). Drawn from two
streams of one real length n, x and y have the same attention mask (right padding), the
attention of every real query reads the same n real keys, and the MHA bound holds with that
n, not the padded length L.

How. Each stream's texts are bucketed by their real token count after tokenisation at
max_length (data.text.TokenizedTexts.real_lengths). A length that only one stream
has is skipped: its texts are lost (counted, `LengthMatch.lost`). The target stream is read
pass after pass over its kept texts, each pass in its own seeded order (as pairs.pair_batches
reads a stream, but with salts of its own and over the kept texts only, so not the targets
nor the order of pair_lengths=any), and each target text is paired with the next reference
text of its length: each length's reference texts in a seeded order, a new order each time
the bucket is used up; the references follow the targets' lengths. All
of it is deterministic from the seed; the pairs' dataset indices are the streams' own, so the
CI's units (pairs.stream_units) are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from vitplas.config import ConfigError
from vitplas.data import make_loader

PAIR_LENGTHS = ("any", "equal")  # the first is the default
_SALT = {"reference": 11, "target": 12}  # apart from pairs.stream_seed's salts


@dataclass(frozen=True)
class LengthMatch:
    """Both streams' texts kept for equal-length pairs: by_length, real length -> the
    reference indices of that length; target and target_lengths, (T,) int64 the kept target
    indices and their lengths; lost, the texts each stream loses (reference, target); sizes,
    each stream's texts."""

    by_length: dict[int, np.ndarray]
    target: np.ndarray
    target_lengths: np.ndarray
    lost: tuple[int, int]
    sizes: tuple[int, int]

    def note(self, names: tuple[str, str], max_length: int) -> str:
        """The pairing in words, with what each stream lost."""
        kept = [
            f"{name} keeps {size - lost} of {size} texts"
            for name, size, lost in zip(names, self.sizes, self.lost, strict=True)
        ]
        lengths = sorted(self.by_length)
        return (
            f"pairs of equal real length (pair_lengths=equal, {len(lengths)} lengths from "
            f"{lengths[0]} to {lengths[-1]} tokens at max_length={max_length}): "
            + ", ".join(kept)
            + " (a length only one stream has is skipped)"
        )


def match_lengths(
    reference: np.ndarray, target: np.ndarray, batch_size: int, names: tuple[str, str]
) -> LengthMatch:
    """LengthMatch of streams whose texts have real lengths `reference` (R,) and `target`
    (T,); a ConfigError when a stream keeps fewer texts than one batch."""
    reference, target = np.asarray(reference, np.int64), np.asarray(target, np.int64)
    common = np.intersect1d(reference, target)
    keep_r, keep_t = np.isin(reference, common), np.isin(target, common)
    for name, keep, size in ((names[0], keep_r, len(reference)), (names[1], keep_t, len(target))):
        if keep.sum() < batch_size:
            raise ConfigError(
                f"pair_lengths equal: stream '{name}' keeps {int(keep.sum())} of {size} texts "
                f"(those whose real length the other stream also has), fewer than one batch of "
                f"{batch_size}; lower --batch-size, use longer streams, or pair_lengths=any"
            )
    by_length = {int(n): np.flatnonzero(reference == n) for n in common}
    kept = np.flatnonzero(keep_t)
    lost = (int((~keep_r).sum()), int((~keep_t).sum()))
    return LengthMatch(by_length, kept, target[kept], lost, (len(reference), len(target)))


def _order(seed: int, stream: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _SALT[stream], *keys]))


def matched_indices(match: LengthMatch, pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """((P,), (P,)) int64 reference and target dataset indices of the first `pairs` pairs,
    each pair of one real length (module docstring)."""
    targets, lengths, epoch = [], [], 0
    while sum(len(t) for t in targets) < pairs:
        order = _order(seed, "target", epoch).permutation(len(match.target))
        targets.append(match.target[order])
        lengths.append(match.target_lengths[order])
        epoch += 1
    target = np.concatenate(targets)[:pairs]
    need = np.concatenate(lengths)[:pairs]
    reference = np.empty(pairs, dtype=np.int64)
    for n in np.unique(need):
        bucket, slots = match.by_length[int(n)], np.flatnonzero(need == n)
        rounds = -(-len(slots) // len(bucket))
        drawn = [
            bucket[_order(seed, "reference", int(n), k).permutation(len(bucket))]
            for k in range(rounds)
        ]
        reference[slots] = np.concatenate(drawn)[: len(slots)]
    return reference, target


class _Paired(Dataset):
    """Pair i: (reference text (2, L), target text (2, L), its reference index, its target
    index) of the matched indices."""

    def __init__(self, reference: Dataset, target: Dataset, indices) -> None:
        self.reference, self.target = reference, target
        self.ri, self.ti = (torch.from_numpy(i) for i in indices)

    def __len__(self) -> int:
        return len(self.ri)

    def __getitem__(self, i: int):
        ri, ti = int(self.ri[i]), int(self.ti[i])
        return self.reference[ri][0], self.target[ti][0], ri, ti


def stream_lengths(data: Dataset, name: str) -> np.ndarray:
    """(N,) real token counts of a text stream (TokenizedTexts); a ConfigError for images."""
    if not hasattr(data, "real_lengths"):
        raise ConfigError(
            f"pair_lengths equal pairs texts by their real length; stream '{name}' holds "
            "images: use pair_lengths=any"
        )
    return data.real_lengths()


def stream_match(reference: Dataset, target: Dataset, batch_size: int, names) -> LengthMatch:
    """match_lengths of two text streams (TokenizedTexts)."""
    lengths = (stream_lengths(reference, names[0]), stream_lengths(target, names[1]))
    return match_lengths(*lengths, batch_size, tuple(names))


def equal_length_batches(
    reference: Dataset,
    target: Dataset,
    *,
    pairs: int,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    names: tuple[str, str] = ("reference", "target"),
    with_indices: bool = False,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """(x, y) packed text batches (B, 2, L) as pairs.pair_batches gives, every pair of one
    real length (with_indices: (x, y, x_index, y_index), the texts' (B,) dataset indices).

    Checked here, before any batch is read (as pair_batches checks): pairs >= 1, both streams
    texts, each keeping a batch."""
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1, got {pairs}")
    match = stream_match(reference, target, batch_size, names)
    paired = _Paired(reference, target, matched_indices(match, pairs, seed))
    loader = make_loader(paired, batch_size, shuffle=False, seed=seed, num_workers=num_workers)
    return ((x, y, ix, iy) if with_indices else (x, y) for x, y, ix, iy in loader)
