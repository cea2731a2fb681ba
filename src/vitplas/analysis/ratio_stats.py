"""Streaming statistics of ratios, kept on the ratios' device in float64.

Memory is fixed by the shape of one observation (layers x components) times the number of
independent units, never by the number of pairs. Sums are shifted by the first batch's mean so
that the variance does not suffer from cancellation; counts of ratios above each set of bounds
are kept when bounds are given.

The 95% CI counts what is independent. Pairs are not: the pairs that share a reference image's
source (for the photo stream, the crops of one of its 17 photos) or a target image share its
effect. Pair i belongs to two units, u_i (the source of its reference image) and v_i (of its
target image): a two-way clustered design. Its variance of the mean is the two-way
cluster-robust variance of Cameron, Gelbach and Miller (2011), written here from its formula
(tests/test_intervals.py checks it against a direct computation and by simulation):

    V = c_G V_G + c_H V_H - c_N V_N,   V_G = sum_g (sum_{i in g} e_i)^2 / N^2,  e_i = r_i - mean,

over the G reference units (V_H: the H target units; V_N: each pair alone), with the small-
sample factors c_G = G / (G - 1), c_N = N / (N - 1), so that c_N V_N = std^2 / N (the naive
variance). V is then raised to max(V, c_G V_G, c_H V_H): never narrower than clustering by one
stream alone (V can be negative in small samples). Half-width = quantile95(min(G, H)) sqrt(V),
Student's t with min(G, H) - 1 degrees of freedom (vitplas.intervals, the one CI rule).

- Target images all distinct (every stream shorter than one pass): c_H V_H = c_N V_N, so V is
  exactly the one-way cluster-robust (CR1) variance by reference unit.
- The exact intersection term clusters by (u, v) cell; V_N takes each pair as its own cell.
  They differ only where a cell repeats (the same reference source and the same target image
  in two pairs); the covariance of two such pairs, left out, is non-negative in expectation
  (they share both images), so the interval is then wider on average, not narrower. Cells
  would need memory that grows with the pairs; units do not.
- Without unit ids (tensors or loaders from the API) every pair is its own unit: the naive
  interval, and the `units` column says it rests on the pairs.
"""

from __future__ import annotations

import math

import torch

from vitplas.intervals import T_BELOW, Z95, quantile95  # noqa: F401 (re-exported)

MAIN = "bound"  # the key of the configured bounds (exceed_frac); others: f"{key}_exceed_frac"
STATE_KEYS = ("count", "shift", "sum", "sumsq", "max")


def quantile95_tensor(count: torch.Tensor) -> torch.Tensor:
    """vitplas.intervals.quantile95 per entry of a tensor, on its device (float64)."""
    q = quantile95(count.detach().cpu().double().numpy())
    return torch.as_tensor(q, dtype=torch.float64).to(count.device)


def _copy(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.cpu().clone()


class UnitSums:
    """Per-unit sums of shifted ratios and their counts: (units, *shape) float64 each."""

    def __init__(self, units: int, shape: tuple[int, ...], device: torch.device | str):
        if units < 1:
            raise ValueError(f"a stream needs at least one unit, got {units}")
        self.sum = torch.zeros((units, *shape), dtype=torch.float64, device=device)
        self.count = torch.zeros_like(self.sum)

    def add(self, ids: torch.Tensor, z: torch.Tensor, valid: torch.Tensor) -> None:
        """Add a batch: ids (B,) int64 units in [0, units) (checked on the host by whoever
        makes them: no device sync here), z (B, *shape) shifted ratios (0 where invalid)."""
        ids = ids.to(self.sum.device, torch.int64, non_blocking=True)
        self.sum.index_add_(0, ids, z)
        self.count.index_add_(0, ids, valid.to(torch.float64))

    def seen(self) -> torch.Tensor:
        """(*shape) the number of units with at least one ratio."""
        return (self.count > 0).sum(0).to(torch.float64)

    def cluster_sq(self, mean: torch.Tensor) -> torch.Tensor:
        """(*shape) sum over units of (sum of the unit's residuals)^2, residuals against
        `mean` (a shifted mean, (*shape))."""
        return (self.sum - self.count * mean).square().sum(0)

    def state(self) -> dict[str, torch.Tensor]:
        return {"sum": self.sum.cpu().clone(), "count": self.count.cpu().clone()}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        if tuple(state["sum"].shape) != tuple(self.sum.shape):
            raise ValueError(
                f"saved unit sums have shape {tuple(state['sum'].shape)}, these "
                f"{tuple(self.sum.shape)}"
            )
        self.sum = state["sum"].to(self.sum.device, torch.float64)
        self.count = state["count"].to(self.sum.device, torch.float64)


class RatioStats:
    """Mean, std, n, 95% CI over independent units, max and bound exceedances of ratios of a
    fixed shape. bounds: the configured (fixed) bounds, a tensor of `shape`, or a dict of named
    bound sets ({"bound": ..., "paper": ...}); units: (reference units, target units) to
    cluster the CI by (update then takes each pair's unit ids)."""

    def __init__(
        self,
        shape: tuple[int, ...],
        device: torch.device | str = "cpu",
        bounds: torch.Tensor | dict[str, torch.Tensor] | None = None,
        units: tuple[int, int] | None = None,
    ):
        zeros = torch.zeros(shape, dtype=torch.float64, device=device)
        self.shape = tuple(shape)
        self.count = zeros.clone()
        self.shift: torch.Tensor | None = None
        self.sum = zeros.clone()
        self.sumsq = zeros.clone()
        self.max = torch.full(shape, -math.inf, dtype=torch.float64, device=device)
        named = {} if bounds is None else bounds if isinstance(bounds, dict) else {MAIN: bounds}
        self.bounds: dict[str, torch.Tensor | None] = {}
        for key, value in named.items():
            if value is not None and tuple(value.shape) != self.shape:
                raise ValueError(f"bounds shape {tuple(value.shape)} != ratios {self.shape}")
            # NaN bound (unknown) counts nothing: r > NaN is False
            self.bounds[key] = None if value is None else value.to(device, torch.float64)
        self.exceed = {key: zeros.clone() for key in self.bounds}
        self.units = None if units is None else [UnitSums(u, self.shape, device) for u in units]

    def update(
        self,
        ratios: torch.Tensor,
        bounds: torch.Tensor | dict[str, torch.Tensor] | None = None,
        unit_ids: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Add a batch (B, *shape) of ratios; NaN / inf entries are left out. bounds: per-pair
        bounds (B, *shape) for this batch instead of the fixed ones (NaN: none), a tensor for
        the configured set or a dict by name. unit_ids: ((B,), (B,)) int64 reference and
        target units of the pairs (needed when the stats cluster by units)."""
        if tuple(ratios.shape[1:]) != self.shape:
            raise ValueError(f"ratios of shape {tuple(ratios.shape)} do not fit {self.shape}")
        r = ratios.detach().to(torch.float64)
        valid = torch.isfinite(r)
        if self.shift is None:
            n = valid.sum(0).clamp(min=1)
            self.shift = torch.where(valid, r, 0.0).sum(0) / n
        z = torch.where(valid, r - self.shift, 0.0)
        self.count += valid.sum(0)
        self.sum += z.sum(0)
        self.sumsq += z.square().sum(0)
        self.max = torch.maximum(self.max, torch.where(valid, r, -math.inf).amax(0))
        given = {} if bounds is None else bounds if isinstance(bounds, dict) else {MAIN: bounds}
        for key in self.exceed:
            bound = given.get(key, self.bounds[key])
            if bound is not None:
                self.exceed[key] += (valid & (r > bound.to(r))).sum(0)
        if self.units is not None:
            if unit_ids is None:
                raise ValueError("these statistics cluster by units: pass each pair's unit ids")
            for sums, ids in zip(self.units, unit_ids, strict=True):
                sums.add(ids, z, valid)

    def mean(self) -> torch.Tensor:
        shift = self.shift if self.shift is not None else torch.zeros_like(self.sum)
        return shift + self.sum / self.count.clamp(min=1)

    def std(self) -> torch.Tensor:
        """Sample standard deviation (n - 1 in the denominator); NaN below 2 observations."""
        n = self.count
        var = (self.sumsq - self.sum.square() / n.clamp(min=1)) / (n - 1).clamp(min=1)
        return torch.where(n > 1, var.clamp(min=0).sqrt(), math.nan)

    def unit_counts(self) -> torch.Tensor:
        """(*shape) the independent units the CI rests on: min(G, H) of the reference and
        target units seen, or the pairs when there are no unit ids."""
        if self.units is None:
            return self.count.clone()
        return torch.minimum(*(sums.seen() for sums in self.units))

    def variance_of_mean(self) -> torch.Tensor:
        """(*shape) the variance of the mean (module docstring): two-way cluster-robust with
        units, std^2 / n without."""
        n = self.count.clamp(min=1)
        naive = self.std().square() / n
        if self.units is None:
            return naive
        mean = self.sum / n  # the shifted mean
        per_stream = []
        for sums in self.units:
            g = sums.seen()
            factor = g / (g - 1).clamp(min=1)
            per_stream.append(torch.where(g > 1, factor * sums.cluster_sq(mean) / n.square(), 0))
        two_way = per_stream[0] + per_stream[1] - naive
        return torch.maximum(two_way, torch.maximum(*per_stream))

    def ci95(self) -> torch.Tensor:
        """Half-width of the 95% CI of the mean: quantile95(units) sqrt(variance_of_mean), so
        Student's t below 30 units, the paper's 1.96 std / sqrt(n) for 30+ independent pairs;
        NaN below 2 units."""
        return quantile95_tensor(self.unit_counts()) * self.variance_of_mean().sqrt()

    def settled(self, rel: float) -> bool:
        """True when every entry's CI half-width is below `rel` x |mean| (one small copy)."""
        ok = (self.ci95() < rel * self.mean().abs()) & (self.count > 1)
        return bool(ok.all().item())

    def to_host(self) -> dict[str, torch.Tensor]:
        """The summary, copied to the host once: mean, std, n, units, ci95, max, exceed_frac
        (and <name>_exceed_frac per other named bound set)."""
        out = {
            "mean": self.mean(),
            "std": self.std(),
            "n": self.count,
            "units": self.unit_counts(),
            "ci95": self.ci95(),
            "max": self.max,
        }
        for key, count in self.exceed.items():
            name = "exceed_frac" if key == MAIN else f"{key}_exceed_frac"
            out[name] = count / self.count.clamp(min=1)
        return {k: v.cpu() for k, v in out.items()}

    def state_dict(self) -> dict:
        """Everything needed to continue the stream later, as CPU tensors (weights_only-safe);
        copies, so later updates never change a state already taken."""
        state = {k: _copy(getattr(self, k)) for k in STATE_KEYS}
        state["exceed"] = {k: _copy(v) for k, v in self.exceed.items()}
        state["bounds"] = {k: _copy(v) for k, v in self.bounds.items()}
        state["units"] = None if self.units is None else [s.state() for s in self.units]
        return {**state, "shape": torch.tensor(self.shape, dtype=torch.int64)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s output; later updates equal an unbroken stream's."""
        shape = tuple(int(s) for s in state["shape"])
        if shape != self.shape:
            raise ValueError(f"saved statistics have shape {shape}, these {self.shape}")
        if set(state["exceed"]) != set(self.exceed) or (state["units"] is None) != (
            self.units is None
        ):
            raise ValueError("saved statistics count other bounds or units than these")
        device = self.count.device
        for key in STATE_KEYS:
            value = state[key]
            setattr(self, key, None if value is None else value.to(device, torch.float64))
        self.exceed = {k: v.to(device, torch.float64) for k, v in state["exceed"].items()}
        self.bounds = {
            k: None if v is None else v.to(device, torch.float64)
            for k, v in state["bounds"].items()
        }
        for sums, saved in zip(self.units or [], state["units"] or [], strict=True):
            sums.restore(saved)
