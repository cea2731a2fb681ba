"""Theoretical bounds: the MHA formula against an independent per-head computation, each bound
holding on inputs that satisfy its assumption, the signed-LN choice failing where it should,
the token radius, and exceedance counting."""

from __future__ import annotations

import math

import pytest
import torch
from test_plasticity import tiny_vit

from vitplas.analysis.bound_table import bounds_matrix, layer_bounds
from vitplas.analysis.bounds import (
    layernorm_bound,
    mha_paper,
    qk_norm,
    token_radius,
)
from vitplas.analysis.plasticity import token_ratios
from vitplas.analysis.ratio_stats import RatioStats
from vitplas.models.components import component_map


def per_head_formula(qkv_w, proj_w, heads, n, r, slicing="rows"):
    """The paper's formula, written out directly on D x D (or A x A) matrices."""
    dim = qkv_w.shape[0] // 3
    dh = dim // heads
    wq, wk, wv = qkv_w[:dim].double(), qkv_w[dim : 2 * dim].double(), qkv_w[2 * dim :].double()
    total = 0.0
    for h in range(heads):
        s = slice(h * dh, (h + 1) * dh)
        if slicing == "rows":  # W_Q^h = (rows of head h)^T: D x dh
            q, k, v = wq[s].T, wk[s].T, wv[s].T
        else:  # the original: input columns of head h, A x dh
            q, k, v = wq[:, s], wk[:, s], wv[:, s]
        a = torch.linalg.matrix_norm(q @ k.T / math.sqrt(dh), ord=2).item()
        o = torch.linalg.matrix_norm(proj_w[:, s].double(), ord=2).item()
        vn = torch.linalg.matrix_norm(v, ord=2).item()
        total += o * vn * math.sqrt(3 * n + (12 * n + 3) * r**4 * a**2)
    return total


@pytest.mark.parametrize("slicing", ["rows", "columns"])
def test_mha_bound_equals_independent_per_head_formula(slicing):
    cmap = component_map(tiny_vit())
    qkv, proj, heads = cmap.attention_parts(1)
    got = mha_paper(qkv, proj, heads, n_tokens=17, radius=2.5, slicing=slicing)
    want = per_head_formula(qkv.weight.detach(), proj.weight.detach(), heads, 17, 2.5, slicing)
    assert got == pytest.approx(want, rel=1e-10)
    other = "columns" if slicing == "rows" else "rows"
    assert got != pytest.approx(mha_paper(qkv, proj, heads, 17, 2.5, other), rel=1e-3)


def test_qk_norm_through_qr_equals_direct():
    q, k = torch.randn(16, 96, dtype=torch.float64), torch.randn(16, 96, dtype=torch.float64)
    direct = torch.linalg.matrix_norm(q.T @ k, ord=2).item()
    assert qk_norm(q, k) == pytest.approx(direct, rel=1e-12)


def _ball_tokens(pairs: int, n: int, d: int, r: float, seed: int) -> torch.Tensor:
    """(2 pairs, n, d) tokens of norm <= r; half of the y are close to their x."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2 * pairs, n, d, generator=g)
    h = h / h.norm(dim=-1, keepdim=True) * r * torch.rand(2 * pairs, n, 1, generator=g)
    near = h[: pairs // 2] + 0.01 * torch.randn(pairs // 2, n, d, generator=g)
    near = near / near.norm(dim=-1, keepdim=True).clamp(min=r) * r
    h[pairs : pairs + pairs // 2] = near
    return h


def test_mha_bound_holds_for_tokens_within_radius_and_no_query_bias():
    cmap = component_map(tiny_vit(seed=3))
    qkv, proj, heads = cmap.attention_parts(0)
    with torch.no_grad():
        qkv.bias[:48].zero_()  # the assumption: no query bias (key/value biases cancel)
        qkv.weight.mul_(4.0)  # sharp attention, so that the softmax term matters
    for r in (0.5, 3.0):
        h = _ball_tokens(64, 17, 48, r, seed=int(r * 10))
        ratios = token_ratios(cmap, h, ["mha"])[:, 0, 0]
        bound = mha_paper(qkv, proj, heads, n_tokens=17, radius=r)
        assert torch.isfinite(ratios).all() and (ratios <= bound).all()
        assert ratios.max() > 1e-3 * bound  # the test is not vacuous


def test_layernorm_bound_holds_when_token_std_at_least_one():
    cmap = component_map(tiny_vit(seed=5))
    ln = cmap.module(0, "ln1")
    with torch.no_grad():
        ln.weight.copy_(torch.linspace(-3.0, 2.0, 48))  # largest |gamma| is negative
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2 * 128, 17, 48, generator=g)
    h = h / h.std(-1, keepdim=True, unbiased=False) * (1 + 3 * torch.rand(256, 17, 1, generator=g))
    ratios = token_ratios(cmap, h, ["ln1"])[:, 0, 0]
    assert (ratios <= layernorm_bound(ln, "abs")).all()
    assert layernorm_bound(ln, "abs") == pytest.approx(3.0)
    # the original's signed max (2.0) is not a bound: centred tokens of std 1 with
    # x_0 = x_1 = 0, moved along e_0 - e_1 (orthogonal to the mean and to x), see gains -3, -2.9
    x = torch.randn(8, 17, 48, generator=g)
    x[..., :2] = 0.0
    x[..., 2:] -= x[..., 2:].mean(-1, keepdim=True)
    x /= x.square().mean(-1, keepdim=True).sqrt()
    y = x.clone()
    y[..., 0] += 1e-3
    y[..., 1] -= 1e-3
    signed = token_ratios(cmap, torch.cat([x, y]), ["ln1"])[:, 0, 0]
    assert layernorm_bound(ln, "signed") == pytest.approx(2.0)
    assert (signed > 2.9).all() and (signed <= 3.0).all()


def test_layer_bounds_table_linear_and_layerscale():
    cmap = component_map(tiny_vit(layerscale=0.2))
    frame = layer_bounds(cmap, cmap.block_components, n_tokens=17, radius=[1.0, 2.0], width=48)
    assert len(frame) == 2 * 7 and set(frame["component"]) == set(cmap.block_components)
    row = frame.set_index(["layer", "component"])
    fc2 = cmap.module(1, "fc2").weight.detach().double()
    assert row.loc[(1, "fc2"), "bound"] == pytest.approx(torch.linalg.matrix_norm(fc2, ord=2))
    tight = torch.linalg.matrix_norm(fc2[:, :48], ord=2).item()
    assert row.loc[(1, "fc2"), "bound_padded"] == pytest.approx(tight)
    assert tight <= row.loc[(1, "fc2"), "bound"]
    gamma = cmap.module(0, "ls2").gamma.detach()
    assert row.loc[(0, "ls2"), "bound"] == pytest.approx(gamma.abs().max().item())
    assert row.loc[(0, "mha"), "radius"] == 1.0 and row.loc[(1, "mha"), "radius"] == 2.0
    matrix = bounds_matrix(frame, 2, ["mha", "fc1"])
    assert matrix[1, 1].item() == pytest.approx(row.loc[(1, "fc1"), "bound"])


def test_token_radius_is_mean_rms_token_norm():
    cmap = component_map(tiny_vit())
    images = torch.randn(10, 3, 32, 32)
    r, n = token_radius(cmap, [images[:4], images[4:8], images[8:]], max_images=7)
    with torch.no_grad():
        h = cmap.embed(images[:7]).double()
    assert n == 17
    assert r.item() == pytest.approx(h.norm(dim=-1).pow(2).mean(-1).sqrt().mean().item())
    per_layer, _ = token_radius(cmap, [images], max_images=10, per_layer=True)
    assert per_layer.shape == (2,) and per_layer[0].item() == pytest.approx(
        cmap.embed(images).double().norm(dim=-1).pow(2).mean(-1).sqrt().mean().item(), rel=1e-6
    )


def test_exceedances_are_counted_against_the_bound():
    stats = RatioStats((1, 2), bounds=torch.tensor([[1.0, math.nan]]))
    stats.update(torch.tensor([[[0.5, 9.0]], [[1.5, 9.0]], [[2.0, 9.0]], [[1.0, 9.0]]]))
    out = stats.to_host()
    assert out["exceed_frac"].tolist() == [[0.5, 0.0]]  # strictly above; NaN bound: none


def test_bad_bound_arguments():
    cmap = component_map(tiny_vit())
    qkv, proj, heads = cmap.attention_parts(0)
    with pytest.raises(ValueError, match="radius > 0"):
        mha_paper(qkv, proj, heads, n_tokens=17, radius=0.0)
    with pytest.raises(ValueError, match="mha_slicing 'diag' is unknown"):
        mha_paper(qkv, proj, heads, n_tokens=17, radius=1.0, slicing="diag")
    with pytest.raises(ValueError, match="ln_bound 'max' is unknown"):
        layernorm_bound(cmap.module(0, "ln1"), "max")
    with pytest.raises(ValueError, match="need 2 radii"):
        layer_bounds(cmap, ["mha"], n_tokens=17, radius=[1.0], width=48)


def test_no_mha_bound_for_attention_the_formula_does_not_model(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    from vitplas.plots.plasticity import bounds_per_layer

    kwargs = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=0)
    cmap = component_map(VisionTransformer(qk_norm=True, **kwargs))
    frame = layer_bounds(cmap, ["mha", "fc1"], n_tokens=17, radius=1.0, width=48)
    mha = frame[frame["component"] == "mha"]
    assert mha["bound"].isna().all()
    assert (mha["definition"] == "undefined: attention with q_norm, k_norm").all()
    assert frame.loc[frame["component"] == "fc1", "bound"].gt(0).all()
    assert all(p.exists() for p in bounds_per_layer(frame.assign(model="m"), tmp_path / "b"))
    plain = layer_bounds(component_map(VisionTransformer(**kwargs)), ["mha"], n_tokens=17,
                         radius=1.0, width=48, r_max=1.0)  # fmt: skip
    assert plain["bound"].gt(0).all()
