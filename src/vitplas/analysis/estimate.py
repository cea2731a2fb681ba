"""The estimation loop: image-pair batches in, streaming statistics per (layer, component) out.

Everything stays on the device: the ratios of a batch go straight into RatioStats; only the
final summary (and, for the sequential stop, a (L + 1, C) check every few batches) reaches the
host. Row L of the statistics is the per-pair mean over layers ("pooled"), whose CI is honest
although the layers of one pair are correlated.

The CIs count independent units (ratio_stats.py): given the pairs' units (pairs.PairUnits),
each batch's unit ids go with its ratios, and `until_ci` stops on that clustered interval.
With bounds, each pair is checked against the configured bounds and against the paper's
(counted beside), a data bound against the pair's own value (bound_table.py), and the token
statistics the data bounds need (smallest token scale per norm, largest token norm per MHA)
are kept over all pairs, across resumes.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from vitplas.analysis.bounds import mha_coefficients_at
from vitplas.analysis.plasticity import LinearFactors, pair_ratios, resolve_components
from vitplas.analysis.ratio_stats import RatioStats
from vitplas.device import DTYPES as DTYPES  # re-exported (their home: vitplas.device)
from vitplas.device import precision
from vitplas.models.components import ComponentMap

POOLED = "all"  # the layer label of the pooled rows
STATE_VERSION = 3  # of the resumable state; a state of another version is started over
FRAME_COLUMNS = ["mean", "std", "n", "units", "ci95", "max", "exceed_frac", "paper_exceed_frac"]


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
    token_max: torch.Tensor | None = None  # (L, C) largest token norm at MHA components
    longest: float | None = None  # text pairs: their largest real length (the MHA bound's n)
    units: dict | None = None  # per stream ("reference", "target"): (units seen, what they are)

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else math.nan

    def frame(self, pooled: bool = False) -> pd.DataFrame:
        """Tidy rows (layer, component, mean, std, n, units, ci95, max, exceed_frac,
        paper_exceed_frac; NaN where not measured): the per-layer rows, or with pooled=True
        one row per component with layer = 'all'. units: the independent units the CI rests
        on (ratio_stats.py)."""
        layers = [POOLED] if pooled else list(range(self.depth))
        offset = self.depth if pooled else 0
        rows = []
        for i, layer in enumerate(layers):
            for c, name in enumerate(self.components):
                stats = {k: float(v[offset + i, c]) for k, v in self.summary.items()}
                stats["n"] = int(stats["n"])
                stats["units"] = int(stats.get("units", stats["n"]))
                rows.append({"layer": layer, "component": name, **stats})
        return pd.DataFrame(rows, columns=["layer", "component", *FRAME_COLUMNS])


def _with_pooled(ratios: torch.Tensor) -> torch.Tensor:
    """(B, L, C) -> (B, L + 1, C): row L is the mean over layers of each pair."""
    return torch.cat([ratios, ratios.nanmean(dim=1, keepdim=True)], dim=1)


def _pair_bounds(
    fixed: torch.Tensor,
    gains: torch.Tensor,
    coefs: torch.Tensor,
    stats: torch.Tensor,
    tokens: torch.Tensor,
    lengths: torch.Tensor | None,
) -> torch.Tensor:
    """(B, L + 1, C) configured bounds of this batch's pairs, from the (B, L, C) token
    statistics of block_scales: gain / s_min(x, y) where a data norm bound's gain is given,
    k0 + k1 r + k2 r^2 at r = r_max(x, y) where data MHA coefficients (L, C, 3) are (at the
    token counts `tokens` (L, C); text pairs at their own real lengths (B,)), else the fixed
    (L + 1, C) bounds (NaN: none; the pooled row has none)."""
    per_pair = gains / stats  # gains NaN -> NaN
    k = coefs.unbind(-1)  # (L, C) each
    if lengths is not None:  # (B, 1, 1) real length of each pair: its own n
        k = mha_coefficients_at(k, tokens, lengths.to(stats)[:, None, None])
    poly = k[0] + k[1] * stats + k[2] * stats.square()
    poly = torch.where(torch.isposinf(stats), math.inf, poly)  # no finite bound (0 * inf)
    per_pair = torch.where(torch.isfinite(coefs[..., 0]), poly, per_pair)
    per_pair = _with_pooled(per_pair)
    per_pair[:, -1] = math.nan
    return torch.where(torch.isnan(per_pair), fixed, per_pair)


class _Extremes:
    """Smallest token scale (norm columns) and largest token norm (MHA columns) over every
    pair: what the data bounds of the table use, so they hold for every pair measured."""

    def __init__(self, names: Sequence[str], depth: int, device: torch.device) -> None:
        self.is_mha = torch.tensor([n == "mha" for n in names], device=device)
        shape = (depth, len(names))
        self.smallest = torch.full(shape, math.inf, dtype=torch.float64, device=device)
        self.largest = torch.full(shape, -math.inf, dtype=torch.float64, device=device)
        self.longest = torch.tensor(-math.inf, dtype=torch.float64, device=device)

    def update(self, stats: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        """stats (B, L, C): block_scales per pair (NaN where a column has none); lengths
        (B,): the real length of each text pair (None: images)."""
        if lengths is not None:
            self.longest = torch.maximum(self.longest, lengths.to(self.longest).max())
        low = torch.where(self.is_mha, math.inf, stats).amin(0)
        high = torch.where(self.is_mha, stats, -math.inf).amax(0)
        self.smallest = torch.fmin(self.smallest, low)
        self.largest = torch.fmax(self.largest, high)

    def state(self) -> dict[str, torch.Tensor]:
        keys = ("smallest", "largest", "longest")
        return {key: getattr(self, key).cpu() for key in keys}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        self.smallest = state["smallest"].to(self.smallest)
        self.largest = state["largest"].to(self.largest)
        self.longest = state["longest"].to(self.longest)

    def results(self) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """(norm_scale, token_max), (L, C) on the host, NaN where not measured, and the
        longest text pair's real length (None: images)."""
        nan = torch.full_like(self.smallest, math.nan)
        small = torch.where(torch.isfinite(self.smallest), self.smallest, nan)
        # +inf stays: a text pair of different real lengths has no finite MHA bound
        large = torch.where(self.largest > -math.inf, self.largest, nan)
        longest = float(self.longest)
        return small.cpu(), large.cpu(), (longest if longest > 0 else None)


class _Checks:
    """What each pair is checked against (bounds, from bound_table.estimate_bounds) and the
    token extremes kept for the data bounds; all on the device."""

    def __init__(self, names, depth, device, bounds, norm_gains, mha_coefs, mha_tokens,
                 paper_bounds):  # fmt: skip
        shape = (depth, len(names))
        nan = torch.full(shape, math.nan, dtype=torch.float64)

        def given(t, extra=()):
            t = torch.full((*shape, *extra), math.nan) if t is None else t
            return t.to(device=device, dtype=torch.float64)

        pad = torch.full((1, len(names)), math.nan, dtype=torch.float64)
        self.fixed = torch.cat([nan if bounds is None else bounds.double().cpu(), pad]).to(device)
        self.paper = None
        if paper_bounds is not None:
            self.paper = torch.cat([paper_bounds.double().cpu(), pad]).to(device)
        self.gains, self.coefs = given(norm_gains), given(mha_coefs, (3,))
        self.tokens = given(mha_tokens)
        self.per_pair = bool(torch.isfinite(self.gains).any() or torch.isfinite(self.coefs).any())
        self.extremes = _Extremes(names, depth, device)

    def named(self) -> dict[str, torch.Tensor]:
        """The fixed bound sets RatioStats counts exceedances of."""
        return {"bound": self.fixed} | ({} if self.paper is None else {"paper": self.paper})

    def pair_bounds(
        self, stats: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor] | None:
        """This batch's per-pair configured bounds (None: the fixed ones serve); lengths
        (B,): the real length of each text pair (None: images)."""
        self.extremes.update(stats, lengths)
        if not self.per_pair:
            return None
        bound = _pair_bounds(self.fixed, self.gains, self.coefs, stats, self.tokens, lengths)
        return {"bound": bound}


def real_lengths(cmap: ComponentMap, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """(B,) the real length of each text pair, the longer of x's and y's (a pair of different
    lengths has no finite MHA bound anyway); None for images."""
    if cmap.family.modality != "text":
        return None
    return torch.maximum(x[:, 1].sum(-1), y[:, 1].sum(-1))


def _resumable(resume: dict | None, checks: _Checks | None) -> dict | None:
    """The saved state if this version can continue it, else None (start over: recomputing
    is always correct)."""
    if resume is None or resume.get("version") != STATE_VERSION:
        return None
    if (checks is None) != (resume.get("extremes") is None):
        return None
    return resume


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
    mha_coefs: torch.Tensor | None = None,
    mha_tokens: torch.Tensor | None = None,
    paper_bounds: torch.Tensor | None = None,
    units=None,
    until_ci: float | None = None,
    check_every: int = 4,
    on_batch: Callable[[int, int], None] | None = None,
    on_ratios: Callable[[torch.Tensor, tuple], None] | None = None,
    save: Callable[[dict], None] | None = None,
    save_every: int = 8,
    resume: dict | None = None,
) -> Estimate:
    """Stream `batches` of (x, y, *extra) images (or packed texts, analysis.text_pairs) through
    pair_ratios into on-device statistics.

    The model must already be on `device`, its weights fixed until this returns. bounds: (L, C)
    per-layer configured bounds whose exceedances are counted; norm_gains (L, C) and mha_coefs
    (L, C, 3): the inputs of data bounds (NaN elsewhere), each pair checked against its own
    (g / its smallest token scale; k0 + k1 r + k2 r^2 at its largest token norm r, the
    coefficients at token counts mha_tokens (L, C), a text pair's rescaled to its own real
    length, Estimate.longest keeping the largest);
    paper_bounds (L, C): the paper's, counted beside (paper_exceed_frac). bound_table.
    estimate_bounds makes all five from a bounds table. With any of them, Estimate.norm_scale
    and .token_max keep the token extremes over all pairs. units: a pairs.PairUnits; each
    batch's extras must then hold the images' dataset indices, and the CIs (and until_ci)
    count those units (ratio_stats.py). until_ci: stop once every (layer, component) CI
    half-width is below this fraction of its mean (checked every `check_every` batches).
    on_batch(batches_done, pairs_done) is called after each batch (progress display).
    on_ratios(ratios (B, L, C), extra) receives each batch's per-pair ratios (on the device)
    with the batch's extra entries (e.g. the images' dataset indices), before any save.
    save(state) receives the resumable state every `save_every` batches; `resume` (such a
    state) skips the batches it covered and continues to the numbers of an unbroken run.
    """
    device = torch.device(device)
    names = resolve_components(cmap, components)
    given = (bounds, norm_gains, mha_coefs, mha_tokens, paper_bounds)
    checks = None
    if any(t is not None for t in given):
        checks = _Checks(names, cmap.depth, device, *given)
    shape = (cmap.depth + 1, len(names))
    sizes = None if units is None else units.sizes
    stats = RatioStats(shape, device, None if checks is None else checks.named(), sizes)
    done = pairs = 0
    stopped = False
    factors = LinearFactors()  # FC1's QR factor once per run: the weights are fixed while it runs
    start = time.perf_counter()
    if (resume := _resumable(resume, checks)) is not None:
        stats.load_state_dict(resume["stats"])
        done, pairs = int(resume["batches"]), int(resume["pairs"])
        start -= float(resume["seconds"])
        if checks is not None:  # the token extremes of the pairs already counted
            checks.extremes.restore(resume["extremes"])
        batches = itertools.islice(batches, done, None)  # the same stream, past what is counted
    with precision(device, dtype):
        for x, y, *extra in batches:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            ids = None if units is None else units.ids(tuple(extra))
            measured = pair_ratios(cmap, x, y, names, inputs, checks is not None, factors)
            ratios, scales = measured if checks is not None else (measured, None)
            lengths = real_lengths(cmap, x, y)
            pair_bounds = None if checks is None else checks.pair_bounds(scales, lengths)
            stats.update(_with_pooled(ratios), pair_bounds, ids)
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
                save(_state(stats, checks, done, pairs, time.perf_counter() - start))
    if pairs == 0:
        raise ValueError("no pairs were given to the estimator")
    summary = stats.to_host()  # the one copy to the host (synchronises the device)
    seconds = time.perf_counter() - start
    scale, largest, longest = (None,) * 3 if checks is None else checks.extremes.results()
    seen = None if units is None else _units_seen(stats, units)
    return Estimate(
        names, cmap.depth, summary, pairs, done, stopped, seconds, scale, largest, longest, seen
    )


def _state(stats: RatioStats, checks: _Checks | None, done: int, pairs: int, seconds: float):
    """The resumable state after `done` batches (CPU tensors, weights_only-safe)."""
    extremes = None if checks is None else checks.extremes.state()
    state = {"stats": stats.state_dict(), "batches": done, "pairs": pairs, "seconds": seconds}
    return state | {"extremes": extremes, "version": STATE_VERSION}


def _units_seen(stats: RatioStats, units) -> dict[str, tuple[int, str]]:
    """Per stream: (units with a ratio, what they are), from the clustered statistics."""
    streams = (("reference", units.reference), ("target", units.target))
    seen = [int(sums.seen().max()) for sums in stats.units]
    return {name: (count, u.what) for (name, u), count in zip(streams, seen, strict=True)}
