"""The estimation loop: image-pair batches in, streaming statistics per (layer, component) out.

Everything stays on the device: the ratios of a batch go straight into RatioStats; only the
final summary (and, for the sequential stop, a (L + 1, C) check every few batches) reaches the
host. Row L of the statistics is the per-pair mean over layers ("pooled"), whose CI is honest
although the layers of one pair are correlated.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from vitplas.analysis.plasticity import LinearFactors, pair_ratios, resolve_components
from vitplas.analysis.ratio_stats import RatioStats
from vitplas.device import DTYPES as DTYPES  # re-exported (their home: vitplas.device)
from vitplas.device import precision
from vitplas.models.components import ComponentMap

POOLED = "all"  # the layer label of the pooled rows


@dataclass
class Estimate:
    """Statistics of one run: summary tensors of shape (L + 1, C); row L is pooled over layers."""

    components: list[str]
    depth: int
    summary: dict[str, torch.Tensor]
    pairs: int
    batches: int
    stopped_early: bool
    seconds: float
    norm_scale: torch.Tensor | None = None  # (L, C) smallest token scale of norm components

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else math.nan

    def frame(self, pooled: bool = False) -> pd.DataFrame:
        """Tidy rows (layer, component, mean, std, n, ci95, max, exceed_frac): the per-layer
        rows, or with pooled=True one row per component with layer = 'all'."""
        layers = [POOLED] if pooled else list(range(self.depth))
        offset = self.depth if pooled else 0
        rows = []
        for i, layer in enumerate(layers):
            for c, name in enumerate(self.components):
                stats = {k: float(v[offset + i, c]) for k, v in self.summary.items()}
                stats["n"] = int(stats["n"])
                rows.append({"layer": layer, "component": name, **stats})
        columns = ["layer", "component", "mean", "std", "n", "ci95", "max", "exceed_frac"]
        return pd.DataFrame(rows, columns=columns)


def _with_pooled(ratios: torch.Tensor) -> torch.Tensor:
    """(B, L, C) -> (B, L + 1, C): row L is the mean over layers of each pair."""
    return torch.cat([ratios, ratios.nanmean(dim=1, keepdim=True)], dim=1)


def _pair_bounds(
    fixed: torch.Tensor | None, gains: torch.Tensor, scales: torch.Tensor
) -> torch.Tensor:
    """(B, L + 1, C) bounds of this batch's pairs: gain / smallest token scale where a gain is
    given (data-scale norm bounds), else the fixed (L + 1, C) bounds (NaN: none)."""
    per_pair = _with_pooled(gains / scales)  # gains NaN -> NaN; the pooled row is NaN anyway
    per_pair[:, -1] = math.nan
    if fixed is None:
        return per_pair
    return torch.where(torch.isnan(per_pair), fixed, per_pair)


def estimate(
    cmap: ComponentMap,
    batches: Iterable[tuple[torch.Tensor, ...]],
    *,
    components: Sequence[str] | None = None,
    inputs: str = "embedding",
    device: torch.device | str = "cpu",
    dtype: str = "float32",
    bounds: torch.Tensor | None = None,
    norm_gains: torch.Tensor | None = None,
    until_ci: float | None = None,
    check_every: int = 4,
    on_batch: Callable[[int, int], None] | None = None,
    on_ratios: Callable[[torch.Tensor, tuple], None] | None = None,
    save: Callable[[dict], None] | None = None,
    save_every: int = 8,
    resume: dict | None = None,
) -> Estimate:
    """Stream `batches` of (x, y, *extra) images through pair_ratios into on-device statistics.

    The model must already be on `device`, its weights fixed until this returns. bounds: (L, C)
    per-layer bounds whose exceedances are counted. norm_gains: (L, C) gains g (NaN elsewhere)
    of data-scale norm bounds: each pair is checked against g / (its smallest token scale), and
    Estimate.norm_scale keeps the smallest scale over all pairs, so that g / norm_scale bounds
    every pair measured. until_ci: stop once every (layer, component) CI half-width is below
    this fraction of its mean (checked every `check_every` batches), else at the end of
    `batches`.
    on_batch(batches_done, pairs_done) is called after each batch (progress display).
    on_ratios(ratios (B, L, C), extra) receives each batch's per-pair ratios (on the device)
    with the batch's extra entries (e.g. the images' dataset indices), before any save.
    save(state) receives the resumable state every `save_every` batches; `resume` (such a
    state) skips the batches it covered and continues to the numbers of an unbroken run.
    """
    device = torch.device(device)
    names = resolve_components(cmap, components)
    shape = (cmap.depth + 1, len(names))
    if bounds is not None:
        pad = torch.full((1, len(names)), math.nan, dtype=torch.float64)
        bounds = torch.cat([bounds.to(torch.float64).cpu(), pad])
    stats = RatioStats(shape, device=device, bounds=bounds)
    scaled = norm_gains is not None and bool(torch.isfinite(norm_gains).any())
    if scaled:
        gains = norm_gains.to(device=device, dtype=torch.float64)
        fixed = None if bounds is None else bounds.to(device)
        smallest = torch.full(gains.shape, math.inf, dtype=torch.float64, device=device)
    done = pairs = 0
    stopped = False
    factors = LinearFactors()  # FC1's QR factor once per run: the weights are fixed while it runs
    start = time.perf_counter()
    if resume is not None:
        stats.load_state_dict(resume["stats"])
        done, pairs = int(resume["batches"]), int(resume["pairs"])
        start -= float(resume["seconds"])
        if scaled:  # the smallest token scale of the pairs already counted
            smallest = resume["smallest"].to(device=device, dtype=torch.float64)
        batches = itertools.islice(batches, done, None)  # the same stream, past what is counted
    with precision(device, dtype):
        for x, y, *extra in batches:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if scaled:
                ratios, scales = pair_ratios(cmap, x, y, names, inputs, True, factors)
                stats.update(_with_pooled(ratios), _pair_bounds(fixed, gains, scales))
                smallest = torch.fmin(smallest, scales.amin(0))
            else:
                ratios = pair_ratios(cmap, x, y, names, inputs, factors=factors)
                stats.update(_with_pooled(ratios))
            if on_ratios is not None:
                on_ratios(ratios, tuple(extra))
            done, pairs = done + 1, pairs + x.shape[0]
            if on_batch is not None:
                on_batch(done, pairs)
            if until_ci is not None and done % check_every == 0 and stats.settled(until_ci):
                stopped = True
                break
            # saved after the stop check: a resumed run never skips a check an unbroken one made
            if save is not None and done % save_every == 0:
                elapsed = time.perf_counter() - start
                state = {"stats": stats.state_dict(), "batches": done, "pairs": pairs}
                state |= {"seconds": elapsed, "smallest": smallest.cpu() if scaled else None}
                save(state)
    if pairs == 0:
        raise ValueError("no pairs were given to the estimator")
    summary = stats.to_host()  # the one copy to the host (synchronises the device)
    seconds = time.perf_counter() - start
    scale = torch.where(torch.isfinite(gains), smallest, math.nan).cpu() if scaled else None
    return Estimate(names, cmap.depth, summary, pairs, done, stopped, seconds, scale)
