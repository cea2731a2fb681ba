"""The bootstrap of one cell of a selection study: seeds and test images resampled together.

A cell is one (model, dataset). Its runs form a cube (train set, lr, seed) of validation
accuracies (best_val_acc), test accuracies and, when every run recorded them on one shared set
of test images (test_predictions.csv), per-image correctness.

A replicate draws the seeds with replacement, once for the whole cell (a seed's runs stay paired
across train sets and lrs), and the test images with replacement, once for the whole cell (every
run is scored on the same resampled images), then redoes what the evidence does: each set's lr
chosen on its seed-mean validation accuracy (a tie goes to the smallest lr), its seed-mean test
accuracy at that lr. Validation accuracy is resampled by seed only (no run records it per
image). Replicate 0 is the data as observed. Memory: (replicates, sets, lrs, seeds) floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

REPLICATES = 2000  # bootstrap replicates per cell


@dataclass
class Cube:
    sets: list[str]  # trained labels, one per train set
    lrs: list[float]  # ascending
    seeds: list[int]
    val: np.ndarray  # (K sets, L lrs, S seeds) best_val_acc, NaN where no run
    test: np.ndarray  # (K, L, S) test_acc
    correct: np.ndarray | None  # (K, L, S, N images) 1.0 / 0.0; None: resample seeds only

    @property
    def unit(self) -> str:
        """The resampling unit, in words."""
        images = f" and {self.correct.shape[-1]} test images" if self.correct is not None else ""
        return f"{len(self.seeds)} seeds{images}"


def build_cube(runs: pd.DataFrame, predictions: dict[str, pd.DataFrame] | None = None) -> Cube:
    """The cube of one cell's runs (columns trained, lr, seed, best_val_acc, test_acc, run_id);
    a (set, lr, seed) run twice (two grid labels that trained one set) is counted once.
    `predictions`: run_id -> its per-image table (index, label, pred); used only when every run
    has one, on the same images."""
    runs = runs.drop_duplicates(["trained", "lr", "seed"]).reset_index(drop=True)
    sets = list(dict.fromkeys(runs["trained"]))
    lrs = sorted(set(runs["lr"].astype(float)))
    seeds = sorted(set(runs["seed"]))
    shape = (len(sets), len(lrs), len(seeds))
    val, test = np.full(shape, np.nan), np.full(shape, np.nan)
    where = [(sets.index(r.trained), lrs.index(float(r.lr)), seeds.index(r.seed))
             for r in runs.itertuples(index=False)]  # fmt: skip
    for cell, r in zip(where, runs.itertuples(index=False), strict=True):
        val[cell], test[cell] = r.best_val_acc, r.test_acc
    return Cube(sets, lrs, seeds, val, test, _correct(runs, where, shape, predictions))


def _correct(runs, where, shape, predictions) -> np.ndarray | None:
    tables = [(predictions or {}).get(rid) for rid in runs["run_id"]]
    if not tables or any(t is None for t in tables):
        return None
    first = tables[0].sort_values("index")["index"].to_numpy()
    out = np.zeros((*shape, len(first)), dtype=np.float32)
    for cell, table in zip(where, tables, strict=True):
        table = table.sort_values("index")
        if not np.array_equal(table["index"].to_numpy(), first):
            return None  # runs scored on other images: no paired resampling of images
        out[cell] = (table["label"].to_numpy() == table["pred"].to_numpy()).astype(np.float32)
    return out


@dataclass
class Replicates:
    val: np.ndarray  # (B, K) each set's seed-mean validation accuracy at its chosen lr
    test: np.ndarray  # (B, K) its seed-mean test accuracy there
    lr: np.ndarray  # (B, K) the chosen lr
    per_seed: np.ndarray  # (K, S) observed test accuracy per seed at the observed chosen lr


def resample(cube: Cube, replicates: int = REPLICATES, seed: int = 0) -> Replicates:
    """Replicate 0 = observed, then `replicates - 1` bootstrap draws (module docstring)."""
    rng = np.random.default_rng(seed)
    n_seeds = len(cube.seeds)
    weights = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=replicates)
    weights[0] = 1  # (B, S)
    if cube.correct is not None:
        n = cube.correct.shape[-1]
        images = rng.multinomial(n, np.full(n, 1 / n), size=replicates).astype(np.float32)
        images[0] = 1
        acc = 100.0 * np.einsum("klsn,bn->bkls", cube.correct, images) / n  # (B, K, L, S)
    else:
        acc = np.broadcast_to(cube.test, (replicates, *cube.test.shape))
    present = ~np.isnan(cube.val)  # (K, L, S)
    val_mean = _weighted(weights, np.nan_to_num(cube.val)[None], present)  # (B, K, L)
    chosen = np.argmax(np.where(np.isnan(val_mean), -np.inf, val_mean), axis=2)  # (B, K)
    none = np.isnan(val_mean).all(axis=2)
    index = chosen[..., None, None].repeat(acc.shape[3], axis=3)  # (B, K, 1, S)
    acc_at = np.take_along_axis(acc, index, axis=2)[:, :, 0]  # (B, K, S)
    present_at = np.take_along_axis(np.broadcast_to(present, acc.shape), index, axis=2)[:, :, 0]
    drawn = np.einsum("bs,bks->bk", weights, present_at)  # seeds drawn that have the run
    total = np.einsum("bs,bks->bk", weights, np.where(present_at, acc_at, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        test = np.where(drawn > 0, total / np.where(drawn > 0, drawn, 1), np.nan)
    val = np.take_along_axis(val_mean, chosen[..., None], axis=2)[..., 0]
    val[none], test[none] = np.nan, np.nan
    lrs = np.asarray(cube.lrs)[chosen].astype(float)
    lrs[none] = np.nan
    per_seed = np.where(present_at[0], acc_at[0], np.nan)
    return Replicates(val=val, test=test, lr=lrs, per_seed=per_seed)


def _weighted(weights: np.ndarray, values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Seed-weighted mean over the last axis of (K, L, S) values, per replicate: (B, K, L);
    NaN where no drawn seed has a run."""
    num = np.einsum("bs,kls->bkl", weights, values[0] * present)
    den = np.einsum("bs,kls->bkl", weights, present.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
