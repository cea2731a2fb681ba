"""Streaming statistics of ratios, kept on the ratios' device in float64.

Memory is fixed by the shape of one observation (layers x components), never by the number of
pairs. Sums are shifted by the first batch's mean so that the variance does not suffer from
cancellation; counts of ratios above a bound are kept when bounds are given.
"""

from __future__ import annotations

import math

import numpy as np
import torch

Z95 = 1.96  # PAPER.md section 1: ci95 = 1.96 std / sqrt(n) (the 95% normal quantile, rounded)
T_BELOW = 30  # n < T_BELOW: Student's t quantile t_0.975(n - 1) instead of Z95 (12.7 at n = 2)


def quantile95(count: torch.Tensor) -> torch.Tensor:
    """Two-sided 95% quantile per entry: Student's t_0.975(n - 1) for 2 <= n < T_BELOW (the
    normal approximation is too narrow there: t = 3.18 at n = 4), else 1.96; NaN below n = 2."""
    from scipy.stats import t as student

    n = count.detach().cpu().double().numpy()
    small = student.ppf(0.975, np.maximum(n - 1, 1))
    q = np.where(n < T_BELOW, small, Z95)
    q = np.where(n < 2, np.nan, q)
    return torch.as_tensor(q, dtype=torch.float64).to(count.device)


class RatioStats:
    """Mean, std, n, 95% CI, max and bound exceedances of ratios of a fixed shape."""

    def __init__(
        self,
        shape: tuple[int, ...],
        device: torch.device | str = "cpu",
        bounds: torch.Tensor | None = None,
    ):
        zeros = torch.zeros(shape, dtype=torch.float64, device=device)
        self.shape = tuple(shape)
        self.count = zeros.clone()
        self.shift: torch.Tensor | None = None
        self.sum = zeros.clone()
        self.sumsq = zeros.clone()
        self.max = torch.full(shape, -math.inf, dtype=torch.float64, device=device)
        self.exceed = zeros.clone()
        self.bounds = None
        if bounds is not None:
            if tuple(bounds.shape) != self.shape:
                raise ValueError(f"bounds shape {tuple(bounds.shape)} != ratios {self.shape}")
            # NaN bound (unknown) counts nothing: r > NaN is False
            self.bounds = bounds.to(device=device, dtype=torch.float64)

    def update(self, ratios: torch.Tensor, bounds: torch.Tensor | None = None) -> None:
        """Add a batch (B, *shape) of ratios; NaN / inf entries are left out. bounds: per-pair
        bounds (B, *shape) for this batch instead of the fixed ones (NaN: none)."""
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
        if bounds is None:
            bounds = self.bounds
        if bounds is not None:
            self.exceed += (valid & (r > bounds.to(r))).sum(0)

    def mean(self) -> torch.Tensor:
        shift = self.shift if self.shift is not None else torch.zeros_like(self.sum)
        return shift + self.sum / self.count.clamp(min=1)

    def std(self) -> torch.Tensor:
        """Sample standard deviation (n - 1 in the denominator); NaN below 2 observations."""
        n = self.count
        var = (self.sumsq - self.sum.square() / n.clamp(min=1)) / (n - 1).clamp(min=1)
        return torch.where(n > 1, var.clamp(min=0).sqrt(), math.nan)

    def ci95(self) -> torch.Tensor:
        """Half-width of the 95% confidence interval of the mean: quantile95(n) std / sqrt(n),
        i.e. Student's t below n = T_BELOW (30) observations, the paper's 1.96 from there on."""
        return quantile95(self.count) * self.std() / self.count.clamp(min=1).sqrt()

    def settled(self, rel: float) -> bool:
        """True when every entry's CI half-width is below `rel` x |mean| (one small copy)."""
        ok = (self.ci95() < rel * self.mean().abs()) & (self.count > 1)
        return bool(ok.all().item())

    def to_host(self) -> dict[str, torch.Tensor]:
        """The summary, copied to the host once: mean, std, n, ci95, max, exceed_frac."""
        out = {
            "mean": self.mean(),
            "std": self.std(),
            "n": self.count,
            "ci95": self.ci95(),
            "max": self.max,
            "exceed_frac": self.exceed / self.count.clamp(min=1),
        }
        return {k: v.cpu() for k, v in out.items()}

    def state_dict(self) -> dict[str, torch.Tensor | None]:
        """Everything needed to continue the stream later, as CPU tensors (weights_only-safe);
        copies, so later updates never change a state already taken."""
        names = ("count", "shift", "sum", "sumsq", "max", "exceed", "bounds")
        state = {
            k: None if getattr(self, k) is None else getattr(self, k).cpu().clone() for k in names
        }
        return {**state, "shape": torch.tensor(self.shape, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, torch.Tensor | None]) -> None:
        """Continue from `state_dict()`'s output; later updates equal an unbroken stream's."""
        shape = tuple(int(s) for s in state["shape"])
        if shape != self.shape:
            raise ValueError(f"saved statistics have shape {shape}, these {self.shape}")
        device = self.count.device
        for key in ("count", "shift", "sum", "sumsq", "max", "exceed", "bounds"):
            value = state[key]
            setattr(self, key, None if value is None else value.to(device, torch.float64))
