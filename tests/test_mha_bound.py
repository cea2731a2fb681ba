"""The sound MHA bound (issue 20.1): the polynomial k0 + k1 r + k2 r^2 at the largest token
norm r, query bias included, against an independent per-head computation; inputs that break
the paper's formula (a query bias) and stay within the new bound; the estimator checking each
pair and keeping r_max across a resume; held / paper_held per layer; an adversarial search
(slow) that never exceeds the bound."""

from __future__ import annotations

import math

import pytest
import torch
from test_plasticity import tiny_vit
from timm.models.vision_transformer import Attention

from vitplas.analysis.bound_table import estimate_bounds, fill_data_bounds, layer_bounds
from vitplas.analysis.bounds import (
    ASSUMPTIONS,
    MHA_UNDEFINED,
    check_bound_options,
    mha_coefficients,
    mha_data_bound,
    mha_paper,
)
from vitplas.analysis.estimate import estimate
from vitplas.analysis.tables import bound_lines, bound_ratio_table
from vitplas.models.components import component_map


def direct_coefficients(attn: Attention, n: int) -> tuple[float, float, float]:
    """k0, k1, k2 written out on full matrices: ||O_h V_h||_2, ||Q_h^T K_h||_2 / sqrt(d_h),
    |K_h^T b_q^h| / sqrt(d_h) per head."""
    w = attn.qkv.weight.detach().double()
    b = attn.qkv.bias.detach().double()
    dim, heads = w.shape[1], attn.num_heads
    dh = dim // heads
    out = attn.proj.weight.detach().double()
    k0 = k1 = k2 = 0.0
    for h in range(heads):
        rows = slice(h * dh, (h + 1) * dh)
        q, k, v = w[:dim][rows], w[dim : 2 * dim][rows], w[2 * dim :][rows]
        ov = torch.linalg.matrix_norm(out[:, rows] @ v, ord=2).item()
        a = torch.linalg.matrix_norm(q.T @ k, ord=2).item() / math.sqrt(dh)
        c = (k.T @ b[:dim][rows]).norm().item() / math.sqrt(dh)
        k0 += math.sqrt(n) * ov
        k1 += math.sqrt(n) * ov * c
        k2 += (1 + math.sqrt(n)) * ov * a
    return k0, k1, k2


def test_coefficients_equal_a_direct_per_head_computation():
    torch.manual_seed(0)
    attn = Attention(24, 3, qkv_bias=True).eval()
    got = mha_coefficients(attn.qkv, attn.proj, 3, n_tokens=10)
    assert got == pytest.approx(direct_coefficients(attn, 10), rel=1e-10)
    assert mha_data_bound(got, 2.0) == pytest.approx(got[0] + 2 * got[1] + 4 * got[2])
    with torch.no_grad():
        attn.qkv.bias[24:].mul_(100.0)  # key and value biases cancel: no coefficient moves
    assert mha_coefficients(attn.qkv, attn.proj, 3, 10) == pytest.approx(got, rel=1e-10)
    apart = attn.qkv.bias[:24].detach().clone()  # a query bias kept apart (EVA, BEiT)
    attn.qkv.bias = None
    assert mha_coefficients(attn.qkv, attn.proj, 3, 10, apart) == pytest.approx(got, rel=1e-10)
    assert mha_coefficients(attn.qkv, attn.proj, 3, 10)[1] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_data_bound_is_below_the_papers_formula_where_its_assumptions_hold(seed):
    """At zero query bias and r the largest norm, k0 + k1 r + k2 r^2 <= the paper's formula
    (module docstring: sqrt(n) <= sqrt(1.5 n), 1 + sqrt(n) <= sqrt(6n + 1.5))."""
    torch.manual_seed(seed)
    attn = Attention(24, 4, qkv_bias=True).eval()
    with torch.no_grad():
        attn.qkv.bias[:24].zero_()
    coefs = mha_coefficients(attn.qkv, attn.proj, 4, 17)
    assert coefs[1] == 0.0
    for r in (0.1, 1.0, 10.0):
        assert mha_data_bound(coefs, r) <= mha_paper(attn.qkv, attn.proj, 4, 17, r)


def query_bias_attention() -> tuple[Attention, torch.Tensor]:
    """One head, W_Q = 0, W_K = W_V = W_O = I, |c| = |b_q| / sqrt(8) = 10; tokens x_1,2 = u +- w
    (scores 10, 10: a balanced row), x_3,4 = -u (scores -10), and y = x with x_1 moved by
    1e-3 along u: the output moves 5x as fast as the paper's formula allows, whatever r."""
    d = 8
    attn = Attention(d, 1, qkv_bias=True).eval()
    with torch.no_grad():
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        attn.qkv.weight[d : 2 * d] = torch.eye(d)
        attn.qkv.weight[2 * d :] = torch.eye(d)
        attn.qkv.bias[0] = 10 * math.sqrt(d)
        attn.proj.weight.copy_(torch.eye(d))
        attn.proj.bias.zero_()
    u, w = torch.eye(d)[0], torch.eye(d)[1]
    x = torch.stack([u + w, u - w, -u, -u])[None]  # (1, 4, 8)
    y = x.clone()
    y[0, 0] += 1e-3 * u
    return attn, torch.cat([x, y])


def test_a_query_bias_breaks_the_papers_formula_and_not_the_data_bound():
    attn, h = query_bias_attention()
    x, y = h.chunk(2)
    with torch.no_grad():
        ratio = ((attn(x) - attn(y)).norm() / (x - y).norm()).item()
    r_max = h.norm(dim=-1).max().item()
    paper = mha_paper(attn.qkv, attn.proj, 1, n_tokens=4, radius=r_max)  # even at r_max
    sound = mha_data_bound(mha_coefficients(attn.qkv, attn.proj, 1, 4), r_max)
    assert paper == pytest.approx(math.sqrt(12))  # W_Q = 0: sqrt(3n) ||W_O|| ||W_V||
    assert ratio == pytest.approx(2 * math.sqrt(25 + 0.25), rel=1e-2)  # sqrt(n) |(c b/2, 1/2)|
    assert ratio > 2.8 * paper
    assert ratio <= sound == pytest.approx(2 + 20 * r_max)  # k0 + k1 r_max (k2 = 0)


def _biased_vit():
    """A tiny ViT whose block 0 attention has no query weight and a large query bias."""
    model = tiny_vit(seed=3)
    attn = model.blocks[0].attn
    with torch.no_grad():
        attn.qkv.weight[:48].zero_()
        attn.qkv.weight[48:96].mul_(8.0)
        attn.qkv.bias[:48] = torch.randn(48) * 40 / math.sqrt(48)
    return component_map(model)


def test_the_estimator_checks_each_pair_and_the_table_holds_for_all():
    cmap = _biased_vit()
    names = ["mha", "fc1"]
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(8, 3, 32, 32, generator=g), torch.randn(8, 3, 32, 32, generator=g))]
    batches = [(x * s, y * s) for s in (0.5, 3.0) for x, y in batches]  # r_max in batch 2
    frame = layer_bounds(cmap, names, n_tokens=17, radius=0.5, width=48)
    mha = frame[frame["component"] == "mha"]
    assert mha["bound"].isna().all() and mha["definition"].str.startswith(MHA_UNDEFINED).all()
    assert (mha["assumption"] == ASSUMPTIONS["mha-data"]).all()
    assert mha["paper_held"].tolist()[0] is False  # a query bias: broken by the weights alone
    from vitplas.analysis.plasticity import pair_ratios

    per_pair = torch.cat([pair_ratios(cmap, x, y, names) for x, y in batches])  # (16, L, C)
    cut = per_pair[:, 0, 0].median().item()  # a paper bound half of the pairs exceed
    frame.loc[(frame["layer"] == 0) & (frame["component"] == "mha"), "paper_bound"] = cut
    states: list[dict] = []
    checks = estimate_bounds(frame, cmap.depth, names)
    est = estimate(cmap, batches, components=names, **checks, save=states.append, save_every=1)
    resumed = estimate(cmap, batches, components=names, **checks, resume=states[0])
    torch.testing.assert_close(resumed.token_max, est.token_max, rtol=0, atol=0, equal_nan=True)
    with torch.no_grad():
        tokens = torch.cat([cmap.embed(torch.cat(pair)) for pair in batches])
    r_max = tokens.double().norm(dim=-1).max().item()
    assert est.token_max[:, 0].tolist() == pytest.approx([r_max, r_max], rel=1e-9)
    assert math.isnan(est.token_max[0, 1])
    filled = fill_data_bounds(frame, names, est.norm_scale, est.token_max)
    labels = {"model": "m", "reference": "a", "target": "b", "inputs": "embedding"}
    ratio = bound_ratio_table(est, labels, filled).set_index(["layer", "component"])
    row = ratio.loc[(0, "mha")]
    assert row["exceed_frac"] == 0 and row["max"] <= row["bound"] and row["held"] is True
    assert row["paper_exceed_frac"] == (per_pair[:, 0, 0] > cut).double().mean().item() == 0.5
    assert row["paper_held"] is False  # a query bias
    assert ratio.loc[(1, "mha"), "r_max"] == pytest.approx(r_max)
    assert ratio.loc[(1, "mha"), "paper_held"] is False  # r_max > the mean radius 0.5
    lines = bound_lines(ratio.reset_index())
    assert lines[0] == (
        "mha (mha-data): 0% of pairs above it in all 2 layers, no assumption; the paper's: up "
        "to 50% of pairs above it (layer 0; 1 of 2 layers), assumptions held in 0 of 2 layers"
    )


def test_bad_bound_options_are_one_clear_error():
    with pytest.raises(ValueError, match="mha_bound 'sound' is unknown; choose one of data"):
        check_bound_options("data", "sound", "rows")
    with pytest.raises(ValueError, match="original's formula only: use it with mha_bound paper"):
        check_bound_options("data", "data", "columns")
    check_bound_options("signed", "paper", "columns")  # the paper's specs


def _ball(h: torch.Tensor, r: float) -> torch.Tensor:
    return h * (r / h.norm(dim=-1, keepdim=True).clamp(min=r))


def adversarial_ratio(attn: Attention, n: int, r: float, seed: int, steps: int) -> float:
    """The largest ratio gradient ascent finds over pairs whose tokens stay within r."""
    d = attn.qkv.in_features
    g = torch.Generator().manual_seed(seed)
    x = _ball(torch.randn(16, n, d, generator=g) * r, r)
    y = _ball(x + 1e-2 * r * torch.randn(16, n, d, generator=g), r)
    x.requires_grad_(True)
    y.requires_grad_(True)
    opt = torch.optim.Adam([x, y], lr=0.02 * r)
    best = 0.0
    for _ in range(steps + 1):
        ratio = (attn(x) - attn(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
        best = max(best, float(ratio.detach().max()))
        opt.zero_grad()
        (-ratio.log().sum()).backward()
        opt.step()
        with torch.no_grad():
            x.copy_(_ball(x, r))
            y.copy_(_ball(y, r))
    return best


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adversarial_search_never_exceeds_the_data_bound(seed):
    """Random attentions (query and key biases, sharp or flat scores), token radii 1e-2 to
    1e2: the best of 300 Adam steps on the ratio stays below k0 + k1 r + k2 r^2, while the
    query-bias cases beat the paper's formula."""
    torch.manual_seed(seed)
    d, heads, n = 16, 2, 5
    worst = 0.0
    for weight_scale, bias_scale, r in ((1.0, 0.0, 1e-2), (5.0, 30.0, 1.0), (1.0, 3.0, 1e2)):
        attn = Attention(d, heads, qkv_bias=True).eval()
        with torch.no_grad():
            attn.qkv.weight[d : 2 * d].mul_(weight_scale)
            attn.qkv.bias[:d] = torch.randn(d) * bias_scale / math.sqrt(d)
            if bias_scale > 10:
                attn.qkv.weight[:d].zero_()  # the score comes from the query bias alone
        best = adversarial_ratio(attn, n, r, seed, steps=300)
        bound = mha_data_bound(mha_coefficients(attn.qkv, attn.proj, heads, n), r)
        assert best <= bound, (weight_scale, bias_scale, r)
        worst = max(worst, best / bound)
        if bias_scale > 10:
            assert best > mha_paper(attn.qkv, attn.proj, heads, n, r)
    assert worst > 0.05  # the search is not vacuous
