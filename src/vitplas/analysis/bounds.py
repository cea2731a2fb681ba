"""Theoretical upper bounds on each component's plasticity (PAPER.md section 2), and the token
radius r they use. Each bound, with the assumption under which it holds:

LayerNorm  LN(x_t) = gamma * (x_t - mean) / s_t + beta,  s_t = sqrt(var(x_t) + eps).
    Write g(u) = u / sqrt(|u|^2 / D + eps) for a centred token u. Lifting u to
    (u / sqrt(D), sqrt(eps)) turns g(u) / sqrt(D) into the first D coordinates of a unit vector,
    and |a/|a| - b/|b|| <= |a - b| / min(|a|, |b|) (project onto the unit ball), so
        |LN(x_t) - LN(y_t)| <= max|gamma| |x_t - y_t| / min(s_xt, s_yt).
    This compares the two end points only (no segment between them, so tokens of small spread
    between x and y cannot break it). Summed over tokens: ratio <= max|gamma| / s_min(x, y),
    s_min the smallest s_t over the tokens of x and y. The bounds (`ln_bound`):
    "data" (default)  max|gamma| / s_min, s_min the smallest s_t over every token of every pair
        the run measures (measured with the ratios; each pair is also checked against its own
        max|gamma| / s_min(x, y)). NO ASSUMPTION: it holds for every pair it is reported for.
    "abs"     max|gamma|. ASSUMPTION: every token's s_t >= 1 (DINOv2's tokens break it).
    "signed"  the original's signed max of gamma. ASSUMPTION: s_t >= 1 and the gain of largest
        magnitude positive; otherwise it is smaller than the true constant.
RmsNorm  the same with s_t = sqrt(mean(x_t^2) + eps) (no centring; g is the same map), so
    every bound above carries over (`norm_bound` takes any module with .weight and .eps).
Linear (FC1, FC2, LayerScale)  f(x) - f(y) = W (x - y): ratio <= ||W||_2, no assumption (the bias
    cancels). FC2 reads zero-padded tokens, i.e. only W[:, :D], so ||W[:, :D]||_2 <= ||W||_2 is
    the tight bound of the probe (`bound_padded`); the paper's bound is the full ||W||_2.
    LayerScale is diagonal: ||diag(gamma)||_2 = max|gamma|.
MHA  with A_h = W_Q^h W_K^h^T / sqrt(d_h), the paper's
        sum_h ||W_O^h||_2 ||W_V^h||_2 sqrt(3n + (12n + 3) r^4 ||A_h||_2^2).
    For one head g(X) = softmax(X A X^T) X, the Jacobian in direction E is dP X + P E.
    |(P E)_i|^2 <= sum_j p_ij |e_j|^2 gives ||P E||_F <= sqrt(n) ||E||_F. Row i of dP X is a
    covariance under p_i between the score change ds_ij = e_i^T A x_j + x_i^T A e_j and x_j, so
    |(dP X)_i|^2 <= r^2 E_p[ds^2] <= 2 r^4 ||A||^2 (|e_i|^2 + sum_j p_ij |e_j|^2), and
    ||dP X||_F <= sqrt(2 (n + 1)) r^2 ||A|| ||E||_F. Hence ||J|| <= sqrt(2n + 4(n + 1) r^4 ||A||^2),
    which is below the paper's constant; the mean value theorem on the segment from X to Y
    finishes. ASSUMPTIONS: every token of x and y has norm <= r (the ball is convex, so the
    segment stays in it), and the query bias is zero (a key bias is constant along a row of
    scores and cancels in softmax; value and output biases cancel in f(x) - f(y); a query bias
    adds b_q^T W_k e_j / sqrt(d_h) to the score change, which the formula ignores). The paper's r
    is the MEAN over images of the RMS token norm, so real tokens often exceed it: the run
    reports the fraction of pairs above each bound instead of assuming it holds.
    Heads: rows [h d_h, (h+1) d_h) of the q, k and v blocks of the fused qkv weight, and the
    matching columns of the output projection (`mha_slicing="rows"`). The original slices the
    q, k, v weights by input columns (`"columns"`), kept for comparison only.
Radius r: mean over images of sqrt(mean over tokens of ||token||^2) of MHA's input: the
    embedding output (`inputs="embedding"`), each block's input (`"hidden"`), or what MHA
    receives in the model's forward (`"insitu"`: LN1's output; analysis.setup.RADIUS_AT).
    In situ, every bound reads the component's real input: a norm's s_min is over the tokens of
    its own input (the block input for LN1, the residual after attention for LN2), and FC2's
    probe is not zero-padded, so ||W||_2 is its tight bound (no bound_padded).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import pandas as pd
import torch
from torch import nn

from vitplas.analysis.plasticity import embed_images, norm_kind, padded_weight
from vitplas.models.components import ComponentMap

LN_BOUNDS = ("data", "abs", "signed")  # the first is the default
MHA_SLICINGS = ("rows", "columns")
SCALE_PENDING = "measured with the pairs"  # in a data-scale definition until filled
# a data-scale norm row before its s_min is known (NaN bound): why, then the formula to fill in.
# Said in config keys, not command-line flags: the API and the CLI share it.
DATA_UNDEFINED = (
    "undefined without measured pairs: the data bound divides max|gamma| by their smallest token"
    " scale (measure plasticity with bounds on, or give the bounds a plasticity run), or set"
    " ln_bound to abs or signed"
)
ONCE_MEASURED = "; once measured: "
# each bound's assumption in words (printed with its exceedances)
ASSUMPTIONS = {
    "data": "none (s_min measured on the same pairs)",
    "abs": "every token's sqrt(var + eps) >= 1",
    "signed": "every token's sqrt(var + eps) >= 1 and the largest |gain| positive",
    "linear": "none",
    "mha": "every token's norm <= r (the radius) and no query bias",
}


def spectral_norm(weight: torch.Tensor) -> float:
    """||W||_2, the largest singular value, in float64: sqrt of the top eigenvalue of the Gram
    matrix on the smaller side (about 3x faster than an SVD of a 4D x D weight)."""
    w = weight.detach().double()
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    return float(torch.linalg.eigvalsh(gram)[-1].clamp(min=0).sqrt())


def layernorm_bound(module: nn.Module, kind: str = "abs") -> float:
    """The gain of a norm's bound: max|gamma| ("abs", "data") or the original's signed max."""
    if kind not in LN_BOUNDS:
        raise ValueError(f"ln_bound '{kind}' is unknown; choose one of {', '.join(LN_BOUNDS)}")
    gamma = getattr(module, "weight", None)
    if gamma is None:
        return 1.0
    gamma = gamma.detach().double()
    return float(gamma.max() if kind == "signed" else gamma.abs().max())


def norm_bound(module: nn.Module, kind: str = "data", scale: float | None = None) -> float:
    """Bound on the plasticity of a per-token norm (LayerNorm or RmsNorm: any module with
    .weight (or None) and .eps), see the module doc. kind "data" needs `scale`, the smallest
    token scale s_t (plasticity.token_scale) over the tokens the bound must cover."""
    gain = layernorm_bound(module, kind)
    if kind != "data":
        return gain
    if scale is None or not scale > 0:
        raise ValueError(f"ln_bound 'data' needs the smallest token scale s_min > 0, got {scale}")
    return gain / scale


def norm_definition(module: nn.Module, kind: str, scale: float | None = None) -> str:
    """The definition of a norm's bound in words, for tables. kind "data" without `scale`:
    why the bound is undefined yet, then the formula that fill_norm_bounds completes."""
    if kind == "abs":
        return "max|gamma|"
    if kind == "signed":
        return "max gamma (signed)"
    spread = "sqrt(var + eps)" if norm_kind(module) != "rms" else "sqrt(mean x^2 + eps)"
    value = SCALE_PENDING if scale is None else f"{scale:.4g}"
    formula = f"max|gamma| / s_min, s_min = {value} (smallest token {spread} of the pairs)"
    return formula if scale is not None else DATA_UNDEFINED + ONCE_MEASURED + formula


def head_weights(
    qkv: nn.Linear, proj: nn.Linear, num_heads: int, slicing: str = "rows"
) -> list[tuple[torch.Tensor, ...]]:
    """Per head (Q_h, K_h, V_h, O_h), float64, with A_h = Q_h^T K_h / sqrt(d_h).

    rows: Q_h, K_h, V_h are the (d_h, D) row blocks of the fused weight; O_h = proj[:, head].
    columns (the original): the (A, d_h) input-column blocks, transposed to (d_h, A).
    """
    if slicing not in MHA_SLICINGS:
        raise ValueError(f"mha_slicing '{slicing}' is unknown; choose one of {MHA_SLICINGS}")
    weight = qkv.weight.detach().double()  # (3A, D): rows ordered (q|k|v, head, head_dim)
    width = weight.shape[0] // 3
    dh = width // num_heads
    q, k, v = weight[:width], weight[width : 2 * width], weight[2 * width :]
    out = proj.weight.detach().double()  # (D, A)
    heads = []
    for h in range(num_heads):
        cut = slice(h * dh, (h + 1) * dh)
        if slicing == "rows":
            heads.append((q[cut], k[cut], v[cut], out[:, cut]))
        else:
            heads.append((q[:, cut].T, k[:, cut].T, v[:, cut].T, out[:, cut]))
    return heads


def qk_norm(q: torch.Tensor, k: torch.Tensor) -> float:
    """||Q^T K||_2 for Q, K of shape (d_h, X), through two thin QRs (d_h x d_h SVD, not X x X)."""
    _, rq = torch.linalg.qr(q.T)  # Q^T = U_q R_q
    _, rk = torch.linalg.qr(k.T)
    return spectral_norm(rq @ rk.T)


def attention_extras(attn: nn.Module) -> list[str]:
    """What this attention adds to softmax(q k^T / sqrt(d_h)) v and a projection, the only
    attention the MHA formula models: q/k norms, an output norm, a gate, another scale."""
    extras = [
        name
        for name in ("q_norm", "k_norm", "norm")
        if not isinstance(getattr(attn, name, None), nn.Identity | None)
    ]
    if getattr(attn, "gate", None) is not None:
        extras.append("gate")
    head_dim, scale = getattr(attn, "head_dim", None), getattr(attn, "scale", None)
    if head_dim and scale is not None and not math.isclose(scale, head_dim**-0.5):
        extras.append(f"scale {scale:.4g}")
    return extras


def mha_bound(
    qkv: nn.Linear,
    proj: nn.Linear,
    num_heads: int,
    n_tokens: int,
    radius: float,
    slicing: str = "rows",
) -> float:
    """The paper's MHA bound, summed over heads (see the module docstring for its assumptions)."""
    if n_tokens < 1 or not radius > 0:
        raise ValueError(f"need n_tokens >= 1 and radius > 0, got {n_tokens} and {radius}")
    total = 0.0
    for q, k, v, o in head_weights(qkv, proj, num_heads, slicing):
        a_norm = qk_norm(q, k) / math.sqrt(q.shape[0])
        inner = 3 * n_tokens + (12 * n_tokens + 3) * radius**4 * a_norm**2
        total += spectral_norm(o) * spectral_norm(v) * math.sqrt(inner)
    return total


def bound_unavailable_reason(cmap: ComponentMap, layer: int, name: str) -> str | None:
    """Why no formula above covers component `name` of block `layer` (None: one does): what the
    family registry says (rope, relative position bias) or a norm that is neither a LayerNorm
    nor an RmsNorm."""
    if (why := cmap.bound_issue(layer, name)) is not None:
        return why
    module = cmap.module(layer, name)
    if name in ("ln1", "ln2") and norm_kind(module) is None:
        return f"{type(module).__name__} (only LayerNorm and RmsNorm have a bound here)"
    return None


def component_bound(
    cmap: ComponentMap,
    layer: int,
    name: str,
    *,
    width: int | None,
    n_tokens: int,
    radius: float,
    ln_bound: str = "data",
    mha_slicing: str = "rows",
) -> tuple[float, float, str]:
    """(bound, tight bound of the probe or NaN, definition) of one component of one block."""
    if (why := bound_unavailable_reason(cmap, layer, name)) is not None:
        return math.nan, math.nan, f"undefined: {why}"
    module = cmap.module(layer, name)
    if name == "mha":
        extras = attention_extras(module)
        if extras:  # no bound (NaN): the formula does not cover this attention
            return math.nan, math.nan, f"undefined: attention with {', '.join(extras)}"
        qkv, proj, heads = cmap.attention_parts(layer)
        value = mha_bound(qkv, proj, heads, n_tokens, radius, mha_slicing)
        return value, math.nan, f"MHA formula, n={n_tokens}, r={radius:.4g}, {mha_slicing}"
    if norm_kind(module) is not None or name in ("ln1", "ln2"):
        gain = layernorm_bound(module, ln_bound)
        value = math.nan if ln_bound == "data" else gain  # data: known once pairs are measured
        return value, math.nan, norm_definition(module, ln_bound)
    if name in ("fc1", "fc2"):
        full = spectral_norm(module.weight)
        padded = name == "fc2" and width is not None  # None: FC2 reads its real input
        tight = spectral_norm(padded_weight(module, width)) if padded else math.nan
        return full, tight, "||W||_2"
    if name in ("ls1", "ls2"):
        return float(module.gamma.detach().double().abs().max()), math.nan, "max|gamma|"
    raise ValueError(f"no bound is defined for component '{name}'")


def layer_bounds(
    cmap: ComponentMap,
    components: Sequence[str],
    *,
    n_tokens: int,
    radius: float | Sequence[float],
    width: int | None,
    ln_bound: str = "data",
    mha_slicing: str = "rows",
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Tidy bounds: layer, component, bound, bound_padded, radius, definition, assumption,
    norm_gain, norm_scale.

    radius: one value, or one per layer (inputs hidden, insitu). width: the token width FC2's
    probe zero-pads (its tight bound_padded); None in situ (no padding). With ln_bound="data",
    a norm's bound is NaN here and norm_gain holds max|gamma|: fill_norm_bounds divides it by
    the smallest token scale measured with the pairs (norm_scale). progress(layers done,
    depth) is called after each layer (the spectral norms of a large model take a while)."""
    radii = [float(radius)] * cmap.depth if isinstance(radius, int | float) else list(radius)
    if len(radii) != cmap.depth:
        raise ValueError(f"need {cmap.depth} radii (one per layer), got {len(radii)}")
    rows = []
    for layer in range(cmap.depth):
        for name in components:
            value, tight, definition = component_bound(
                cmap,
                layer,
                name,
                width=width,
                n_tokens=n_tokens,
                radius=radii[layer],
                ln_bound=ln_bound,
                mha_slicing=mha_slicing,
            )
            module = cmap.module(layer, name)
            is_norm = norm_kind(module) is not None or name in ("ln1", "ln2")
            gain = layernorm_bound(module, "abs") if is_norm and ln_bound == "data" else math.nan
            assumption = _assumption(name, is_norm, ln_bound, definition)
            rows.append(
                (layer, name, value, tight, radii[layer], definition, assumption, gain, math.nan)
            )
        if progress is not None:
            progress(layer + 1, cmap.depth)
    return pd.DataFrame(rows, columns=BOUND_COLUMNS)


BOUND_COLUMNS = [
    "layer", "component", "bound", "bound_padded", "radius", "definition", "assumption",
    "norm_gain", "norm_scale",
]  # fmt: skip


def _assumption(name: str, is_norm: bool, ln_bound: str, definition: str) -> str:
    if is_norm:
        return ASSUMPTIONS[ln_bound]
    if name == "mha":
        return "" if definition.startswith("undefined") else ASSUMPTIONS["mha"]
    return ASSUMPTIONS["linear"]


def fill_norm_bounds(frame: pd.DataFrame, scale: torch.Tensor, components: Sequence[str]):
    """A copy of a layer_bounds table whose data-scale norm rows (norm_gain set) get
    bound = norm_gain / s_min, s_min = scale[layer, component] ((L, C), NaN elsewhere)."""
    out = frame.copy()
    col = {c: i for i, c in enumerate(components)}
    for i, (layer, name, gain) in enumerate(
        out[["layer", "component", "norm_gain"]].itertuples(index=False)
    ):
        if math.isnan(gain) or name not in col:
            continue
        s = float(scale[int(layer), col[name]])
        if not s > 0:  # no scale measured for this row: it stays undefined
            continue
        out.loc[out.index[i], ["bound", "norm_scale"]] = gain / s, s
        formula = out.loc[out.index[i], "definition"].split(ONCE_MEASURED)[-1]
        out.loc[out.index[i], "definition"] = formula.replace(SCALE_PENDING, f"{s:.4g}")
    return out


def bounds_matrix(
    frame: pd.DataFrame, depth: int, components: Sequence[str], column: str = "bound"
) -> torch.Tensor:
    """(depth, C) tensor of `column` (bound, norm_gain) from a layer_bounds table (NaN where
    none)."""
    out = torch.full((depth, len(components)), math.nan, dtype=torch.float64)
    col = {c: i for i, c in enumerate(components)}
    if column not in frame:
        return out
    for layer, name, value in frame[["layer", "component", column]].itertuples(index=False):
        if name in col:
            out[int(layer), col[name]] = float(value)
    return out


def token_radius(
    cmap: ComponentMap,
    batches: Iterable[torch.Tensor],
    *,
    max_images: int,
    per_layer: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, int]:
    """(r, n_tokens): r is the mean over images of the RMS token norm of the embedding output
    (a 0-dim tensor), or with per_layer=True of each block's input (a (L,) tensor)."""
    total, seen, n_tokens = None, 0, 0
    with torch.inference_mode():
        for images in batches:
            images = images[: max_images - seen].to(device, non_blocking=True)
            h = embed_images(cmap, images)  # (B, N, D)
            n_tokens = h.shape[1]
            rms = [_rms(h)]
            for layer in range(cmap.depth - 1 if per_layer else 0):
                h = cmap.forward_block(layer, h)
                rms.append(_rms(h))
            batch = torch.stack(rms, dim=1).sum(0)  # (L or 1,) float64
            total = batch if total is None else total + batch
            seen += images.shape[0]
            if seen >= max_images:
                break
    if not seen:
        raise ValueError("no images to measure the token radius on")
    r = (total / seen).cpu()
    return (r if per_layer else r[0]), n_tokens


def _rms(h: torch.Tensor) -> torch.Tensor:
    """(B,) sqrt(mean over tokens of ||token||^2), float64."""
    return h.double().square().sum(-1).mean(-1).sqrt()
