"""Theoretical upper bounds on each component's plasticity (PAPER.md section 2), and the token
radius r they use (the per-layer table and its checks on the measured pairs: bound_table.py).
Each bound, with the assumption under which it holds:

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
MHA  One head h: g_h(X) = softmax(S) X, s_ij = q_i^T k_j / sqrt(d_h), q_i = W_Q x_i + b_q,
    k_j = W_K x_j + b_k (head h's rows of the fused qkv weight and bias), and
        f(X) = sum_h g_h(X) (W_O^h W_V^h)^T + constants:
    the value bias passes through (each row of P sums to 1) and, like the output bias, cancels
    in f(x) - f(y). In s_ij the terms x_i^T W_Q^T b_k / sqrt(d_h) and b_q^T b_k / sqrt(d_h) do
    not depend on j: a key bias shifts a whole row of scores, which softmax ignores. What stays:
        s_ij = x_i^T A x_j + c^T x_j + (row constants),
        A = W_Q^T W_K / sqrt(d_h),  c = W_K^T b_q / sqrt(d_h)  (the query bias's score).
    The Jacobian of g in a direction E (n x D) at X whose tokens have norm <= r: dg = dP X + P E.
    (a) |(P E)_i|^2 <= sum_j p_ij |e_j|^2 (Jensen) and sum_i p_ij <= n, so
        ||P E||_F <= sqrt(n) ||E||_F.
    (b) softmax's exact Jacobian, dp_ij = p_ij (ds_ij - E_p ds_i), makes row i of dP X the
        covariance Cov_p(ds_i, x) over j ~ p_i, and |Cov_p(a, x)| <= sqrt(E_p a^2) r. Here
        ds_ij = e_i^T A x_j + u_i^T e_j with u_i = A^T x_i + c, |u_i| <= ||A|| r + |c|, so
        |(dP X)_i| <= ||A|| r^2 |e_i| + (||A|| r + |c|) r sqrt(sum_j p_ij |e_j|^2), and by
        Minkowski over i and (a)'s column sums ||dP X||_F <= (||A|| r^2 + sqrt(n) r (||A|| r +
        |c|)) ||E||_F.
    Hence ||J_h|| <= L_h(r) = sqrt(n) + (1 + sqrt(n)) ||A_h||_2 r^2 + sqrt(n) |c_h| r, and the
    mean value theorem on the segment from X to Y (its token i lies between x_i and y_i, so
    within the ball of radius r when both are: the ball is convex) gives, w_h = ||W_O^h W_V^h||_2,
        ||f(X) - f(Y)||_F / ||X - Y||_F <= sum_h w_h L_h(r) = k0 + k1 r + k2 r^2,
    k0 = sqrt(n) sum_h w_h, k1 = sqrt(n) sum_h w_h |c_h|, k2 = (1 + sqrt(n)) sum_h w_h ||A_h||_2
    (`mha_coefficients`). The bounds (`mha_bound`):
    "data" (default)  r = r_max, the largest token norm of x and y: each pair is checked against
        its own bound, and the table's uses r_max over every token of every pair the run
        measures (measured with the ratios, kept across resumes). NO ASSUMPTION: the key, value
        and output biases cancel exactly, the query bias is in c_h, softmax's Jacobian is exact
        (no Lipschitz constant of softmax is assumed), n is the model's real token count (class
        and register tokens included; a mask that hides keys only narrows the rows' supports,
        so every step holds). Heads are always the rows of the fused weight.
    "paper"  sum_h ||W_O^h||_2 ||W_V^h||_2 sqrt(3n + (12n + 3) r^4 ||A_h||_2^2) with the paper's
        r, the MEAN over images of the RMS token norm. ASSUMPTIONS: every token of x and y has
        norm <= r, and no query bias. Where both hold it is a bound: at c = 0 each L_h is below
        its constant (sqrt(n) <= sqrt(1.5 n), 1 + sqrt(n) <= sqrt(6n + 1.5), and
        ||W_O W_V|| <= ||W_O|| ||W_V||). Real tokens often exceed the mean radius (DINOv2 at
        56 px: r = 3.0, largest norm 6.0) and real models have query biases: the run checks
        both per layer (`held`) and counts the pairs above it.
    Attention outside softmax(q k^T / sqrt(d_h)) v + proj (q/k norms, another scale, rope, a
    relative position bias) gets no bound (NaN with the reason). Heads for "paper": rows
    [h d_h, (h+1) d_h) of the q, k and v blocks and the matching columns of the output
    projection (`mha_slicing="rows"`), or the original's input-column slices (`"columns"`).
Radius r: mean over images of sqrt(mean over tokens of ||token||^2) of MHA's input: the
    embedding output (`inputs="embedding"`), each block's input (`"hidden"`), or what MHA
    receives in the model's forward (`"insitu"`: LN1's output; analysis.setup.RADIUS_AT).
    In situ, every bound reads the component's real input: a norm's s_min is over the tokens of
    its own input (the block input for LN1, the residual after attention for LN2), MHA's r_max
    over LN1's output, and FC2's probe is not zero-padded, so ||W||_2 is its tight bound (no
    bound_padded).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from vitplas.analysis.configs import (  # noqa: F401 (re-exported: the options' home)
    LN_BOUNDS,
    MHA_BOUNDS,
    MHA_SLICINGS,
    check_bound_options,
)
from vitplas.analysis.plasticity import embed_images, norm_kind, padded_weight
from vitplas.models.components import ComponentMap

SCALE_PENDING = "measured with the pairs"  # in a data-scale definition until filled
# a data-scale norm row before its s_min is known (NaN bound): why, then the formula to fill in.
# Said in config keys, not command-line flags: the API and the CLI share it.
DATA_UNDEFINED = (
    "undefined without measured pairs: the data bound divides max|gamma| by their smallest token"
    " scale (measure plasticity with bounds on, or give the bounds a plasticity run), or set"
    " ln_bound to abs or signed"
)
MHA_UNDEFINED = (
    "undefined: the data MHA bound needs the largest token norm of the pairs: pass "
    "--plasticity RUN, or --mha-bound paper"
)
ONCE_MEASURED = "; once measured: "
# each bound's assumption in words, by the row's `kind` (printed with its exceedances)
ASSUMPTIONS = {
    "data": "none (s_min measured on the same pairs)",
    "abs": "every token's sqrt(var + eps) >= 1",
    "signed": "every token's sqrt(var + eps) >= 1 and the largest |gain| positive",
    "linear": "none",
    "mha-data": "none (r_max, the largest token norm, measured on the same pairs)",
    "mha-paper": "every token's norm <= r (the mean radius) and no query bias",
}
ASSUMPTIONS["mha"] = ASSUMPTIONS["mha-paper"]  # the name of earlier versions


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
    why the bound is undefined yet, then the formula that bound_table.fill_data_bounds
    completes."""
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


def mha_paper(
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


def query_bias(qkv: nn.Linear, q_bias: torch.Tensor | None = None) -> torch.Tensor:
    """The (A,) float64 query bias of a fused qkv linear, or the attention's own `q_bias`
    parameter where it keeps one apart (EVA, BEiT); zeros when there is none."""
    width = qkv.weight.shape[0] // 3
    if q_bias is not None:
        return q_bias.detach().double().reshape(-1)[:width].cpu()
    if qkv.bias is None:
        return torch.zeros(width, dtype=torch.float64)
    return qkv.bias.detach().double()[:width].cpu()


def mha_coefficients(
    qkv: nn.Linear,
    proj: nn.Linear,
    num_heads: int,
    n_tokens: int,
    q_bias: torch.Tensor | None = None,
) -> tuple[float, float, float]:
    """(k0, k1, k2) of the data MHA bound k0 + k1 r + k2 r^2 (module docstring), heads sliced
    by rows: w_h = ||W_O^h W_V^h||_2, ||A_h||_2 and |c_h| = |W_K^h^T b_q^h| / sqrt(d_h).
    q_bias: the attention's separate query bias, if it keeps one (query_bias)."""
    if n_tokens < 1:
        raise ValueError(f"need n_tokens >= 1, got {n_tokens}")
    bias = query_bias(qkv, q_bias).to(qkv.weight.device)
    root = math.sqrt(n_tokens)
    k0 = k1 = k2 = 0.0
    for h, (q, k, v, o) in enumerate(head_weights(qkv, proj, num_heads, "rows")):
        dh = q.shape[0]
        w = qk_norm(o.T, v)  # ||O_h V_h||_2: O_h is (D, d_h), V_h (d_h, D)
        a = qk_norm(q, k) / math.sqrt(dh)
        c = float((k.T @ bias[h * dh : (h + 1) * dh]).norm()) / math.sqrt(dh)
        k0, k1, k2 = k0 + root * w, k1 + root * w * c, k2 + (1 + root) * w * a
    return k0, k1, k2


def mha_coefficients_at(coefficients, n_from, n_to):
    """(k0, k1, k2) at token count n_to from those at n_from (numbers or tensors alike):
    k0 and k1 grow as sqrt(n), k2 as 1 + sqrt(n) (mha_coefficients). A text pair of real
    length n is bounded at its own n (analysis.length_pairs)."""
    k0, k1, k2 = coefficients
    root = (n_to / n_from) ** 0.5
    return k0 * root, k1 * root, k2 * (1 + n_to**0.5) / (1 + n_from**0.5)


def mha_data_bound(coefficients: Sequence[float], r_max: float) -> float:
    """The data MHA bound at token radius r_max: k0 + k1 r_max + k2 r_max^2."""
    k0, k1, k2 = coefficients
    if math.isinf(r_max):  # a text pair of different real lengths: no finite bound
        return math.inf
    return k0 + k1 * r_max + k2 * r_max**2


def mha_definition(kind: str, n_tokens: int, radius: float, slicing: str, r_max=None) -> str:
    """The definition of an MHA bound in words; the data bound without r_max: why it is
    undefined yet, then the formula that fill_data_bounds completes."""
    if kind == "paper":
        return f"the paper's MHA formula, n={n_tokens}, r={radius:.4g} (mean radius), {slicing}"
    value = SCALE_PENDING if r_max is None else f"{r_max:.4g}"
    formula = (
        f"k0 + k1 r_max + k2 r_max^2 (query bias included), n={n_tokens}, r_max = {value} "
        "(largest token norm of the pairs)"
    )
    return formula if r_max is not None else MHA_UNDEFINED + ONCE_MEASURED + formula


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


def _mha_row(cmap, layer, n_tokens, radius, mha_bound, mha_slicing, r_max) -> dict:
    qkv, proj, heads = cmap.attention_parts(layer)
    separate = getattr(cmap.module(layer, "mha"), "q_bias", None)  # EVA/BEiT keep it apart
    separate = separate if isinstance(separate, torch.Tensor) else None
    paper = mha_paper(qkv, proj, heads, n_tokens, radius, mha_slicing)
    qbias = float(query_bias(qkv, separate).norm())
    coefs = mha_coefficients(qkv, proj, heads, n_tokens, separate)
    row = {"paper_bound": paper, "query_bias": qbias, "kind": f"mha-{mha_bound}"}
    row["n_tokens"] = n_tokens
    row |= dict(zip(("mha_k0", "mha_k1", "mha_k2"), coefs, strict=True))
    row["paper_held"] = False if qbias > 0 else None  # the data decide r_max <= r
    if mha_bound == "paper":
        definition = mha_definition("paper", n_tokens, radius, mha_slicing)
        return row | {"bound": paper, "held": row["paper_held"], "definition": definition}
    value = math.nan if r_max is None else mha_data_bound(coefs, r_max)
    definition = mha_definition("data", n_tokens, radius, "rows", r_max)
    if r_max is not None:  # given, not measured: tokens within it are assumed, not checked
        given = {"held": None, "assumption": "every token's norm <= r_max (given, not checked)"}
        return row | given | {"bound": value, "definition": definition, "r_max": r_max}
    return row | {"bound": value, "held": True, "definition": definition, "r_max": r_max}


def _norm_row(module: nn.Module, ln_bound: str) -> dict:
    gain, signed = layernorm_bound(module, "abs"), layernorm_bound(module, "signed")
    sign_ok = None if signed == gain else False  # the signed max assumes the largest |gain| > 0
    held = {"data": True, "abs": None, "signed": sign_ok}[ln_bound]
    value = math.nan if ln_bound == "data" else layernorm_bound(module, ln_bound)
    row = {"bound": value, "definition": norm_definition(module, ln_bound), "kind": ln_bound}
    row |= {"held": held, "paper_bound": signed, "paper_held": sign_ok}
    return row | {"norm_gain": gain if ln_bound == "data" else math.nan}


def component_bound(
    cmap: ComponentMap,
    layer: int,
    name: str,
    *,
    width: int | None,
    n_tokens: int,
    radius: float,
    ln_bound: str = "data",
    mha_bound: str = "data",
    mha_slicing: str = "rows",
    r_max: float | None = None,
) -> dict:
    """One row of a bounds table (BOUND_COLUMNS but layer/component/radius/assumption; what
    is left out is NaN): bound, bound_padded, definition, kind, paper_bound, held and
    paper_held as far as the weights decide them (None: the measured data will), and the
    data bounds' inputs (norm_gain; mha_k0..2, query_bias, r_max)."""
    undefined = {"bound": math.nan, "kind": "", "held": None, "paper_held": None}
    if (why := bound_unavailable_reason(cmap, layer, name)) is not None:
        return undefined | {"definition": f"undefined: {why}"}
    module = cmap.module(layer, name)
    if name == "mha":
        extras = attention_extras(module)
        if extras:  # no bound (NaN): the formulas do not cover this attention
            return undefined | {"definition": f"undefined: attention with {', '.join(extras)}"}
        return _mha_row(cmap, layer, n_tokens, radius, mha_bound, mha_slicing, r_max)
    if norm_kind(module) is not None or name in ("ln1", "ln2"):
        return _norm_row(module, ln_bound)
    row = {"kind": "linear", "held": True, "paper_held": True, "definition": "||W||_2"}
    if name in ("fc1", "fc2"):
        full = spectral_norm(module.weight)
        padded = name == "fc2" and width is not None  # None: FC2 reads its real input
        tight = spectral_norm(padded_weight(module, width)) if padded else math.nan
        return row | {"bound": full, "bound_padded": tight, "paper_bound": full}
    if name in ("ls1", "ls2"):
        gain = float(module.gamma.detach().double().abs().max())
        return row | {"bound": gain, "paper_bound": gain, "definition": "max|gamma|"}
    raise ValueError(f"no bound is defined for component '{name}'")


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
