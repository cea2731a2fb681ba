"""One input (x, y) of a block's components, as the plasticity estimator reads it: the pair's
token matrices and, for text, which positions are real tokens (analysis.plasticity).

Padding. A text pair (x, y) comes with each sequence's attention mask (2B, L) (1 a real token,
0 padding). A ratio counts only the positions that are real in BOTH sequences, the joint mask
m = mask_x & mask_y (B, L):

    ratio = ||m * (f(x) - f(y))||_F / ||m * (x - y)||_F.

Every per-token quantity (the difference, a norm's normalised difference, the smallest token
scale) is taken over those positions; the largest token norm (the MHA bound's r_max) over each
sequence's own real tokens, the keys its attention reads. Images have no mask: every token
counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def frob(diff: torch.Tensor) -> torch.Tensor:
    """Frobenius norm per pair (B,) float64 of a (B, N, *) difference: a float32 sum of squares
    per token (a few thousand terms), summed over tokens in float64. One float32 norm over all
    10^5-10^6 elements drifts by up to 1e-5 relative on CPU (and torch's float32 vector_norm
    is ten times slower there than this dot product)."""
    flat = diff.flatten(2)
    per_token = torch.linalg.vecdot(flat, flat)  # (B, N)
    return per_token.double().sum(1).sqrt()


def token_scale(h: torch.Tensor, eps: float | None, centred: bool) -> torch.Tensor:
    """(..., N) float64 per-token scale s_t that a norm divides by: sqrt(var(h_t) + eps)
    (LayerNorm, centred) or sqrt(mean(h_t^2) + eps) (RmsNorm), for tokens h (..., N, D).
    eps None (torch's RMSNorm default) counts as 0: a smaller s_t, so the bound stays valid."""
    h = h.double()
    spread = h.var(-1, unbiased=False) if centred else h.square().mean(-1)
    return (spread + (eps or 0.0)).sqrt()


def _masked(values: torch.Tensor, keep: torch.Tensor | None, fill: float) -> torch.Tensor:
    """values (B, N) with `fill` where keep (B, N) is False (keep None: unchanged)."""
    return values if keep is None else values.masked_fill(~keep, fill)


@dataclass
class Inputs:
    """One input (x, y) of a block's components; caches what several components share.

    masks: (2B, N) bool, each sequence's real tokens (x's then y's), or None (images)."""

    xy: torch.Tensor  # (2B, N, D): x then y
    masks: torch.Tensor | None = None  # (2B, N) bool: real tokens of x then of y
    joint: torch.Tensor | None = field(init=False, default=None)  # (B, N) bool: real in both
    diff: torch.Tensor = field(init=False)  # (B, N, D) float32: m * (x - y)
    norm: torch.Tensor = field(init=False)  # (B,) ||m * (x - y)||_F
    _sq: torch.Tensor | None = None  # (B, D): sum over tokens of (m * (x - y))^2
    _ln: dict = field(default_factory=dict)  # eps -> (B, D) sums of (m * (x_hat - y_hat))^2
    _scale: dict = field(default_factory=dict)  # (eps, centred) -> (B,) smallest token scale
    _largest: torch.Tensor | None = None  # (B,) largest token norm of x and y

    def __post_init__(self) -> None:
        # differences in float32 at least: bf16 outputs would lose them to cancellation
        x, y = self.xy.to(torch.promote_types(self.xy.dtype, torch.float32)).chunk(2)
        if self.masks is not None:
            self.masks = self.masks.bool()
            mx, my = self.masks.chunk(2)
            self.joint = mx & my
        self.diff = self.keep(x - y)
        self.norm = frob(self.diff)

    def keep(self, diff: torch.Tensor) -> torch.Tensor:
        """A (B, N, *) difference with the positions outside the joint mask set to 0 (set, not
        multiplied: a non-finite value at a pad position is dropped too)."""
        if self.joint is None:
            return diff
        return diff.masked_fill(~self.joint.bool()[..., None], 0.0)

    @property
    def same_masks(self) -> torch.Tensor | None:
        """(B,) bool: whether x and y have the same real tokens (None: images, always)."""
        if self.masks is None:
            return None
        mx, my = self.masks.chunk(2)
        return (mx == my).all(1)

    def diff_sq(self) -> torch.Tensor:
        if self._sq is None:
            self._sq = self.diff.double().square().sum(1)
        return self._sq

    def normalized_sq(self, eps: float, width: int) -> torch.Tensor:
        if eps not in self._ln:
            hat = F.layer_norm(self.xy.to(self.diff.dtype), (width,), None, None, eps)
            hx, hy = hat.chunk(2)
            self._ln[eps] = self.keep(hx - hy).double().square().sum(1)
        return self._ln[eps]

    def smallest_scale(self, eps: float, centred: bool) -> torch.Tensor:
        """(B,) float64: min over the tokens of x and of y (at the joint mask's positions: the
        only ones a ratio reads) of token_scale (see there)."""
        if (eps, centred) not in self._scale:
            sx, sy = token_scale(self.xy, eps, centred).chunk(2)  # (B, N) each
            low = torch.minimum(sx, sy)
            self._scale[eps, centred] = _masked(low, self.joint, torch.inf).amin(1)
        return self._scale[eps, centred]

    def largest_norm(self) -> torch.Tensor:
        """(B,) float64: max over the (real) tokens of x and of y of the token norm (the radius
        the MHA bound needs, bounds.py)."""
        if self._largest is None:
            norms = torch.linalg.vector_norm(self.xy, dim=-1, dtype=torch.float64)  # (2B, N)
            r = _masked(norms, self.masks, -torch.inf).amax(1)  # (2B,)
            rx, ry = r.chunk(2)
            self._largest = torch.maximum(rx, ry)
        return self._largest
