"""The data-scale norm bound (issue 10.3): max|gamma| / s_min holds for every pair, also where
tokens have small spread and max|gamma| (which assumes s_t >= 1) is exceeded; RmsNorm gets the
same bound with its own scale; the estimator checks each pair and keeps s_min; exceedances are
reported with the bound's assumption."""

from __future__ import annotations

import math

import pytest
import torch
from test_plasticity import tiny_vit
from timm.layers import RmsNorm
from torch import nn

from vitplas.analysis.bound_table import bounds_matrix, fill_data_bounds, layer_bounds
from vitplas.analysis.bounds import ASSUMPTIONS, DATA_UNDEFINED, layernorm_bound, norm_bound
from vitplas.analysis.estimate import estimate
from vitplas.analysis.plasticity import norm_kind, token_ratios, token_scale
from vitplas.analysis.tables import bound_ratio_table, exceedance_lines, summary_text
from vitplas.models.components import component_map


def small_spread_tokens(pairs: int, n: int = 17, d: int = 48, seed: int = 0) -> torch.Tensor:
    """(2 pairs, n, d): token std between 0.02 and 0.5, large offsets; half of the y near x,
    a quarter y = 2 mean - x (the segment passes through tokens of zero spread)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2 * pairs, n, d, generator=g)
    h = h / h.std(-1, keepdim=True) * (0.02 + 0.48 * torch.rand(2 * pairs, n, 1, generator=g))
    h += 5 * torch.randn(2 * pairs, n, 1, generator=g)  # per-token offsets: centring matters
    half, quarter = pairs // 2, pairs // 4
    h[pairs : pairs + half] = h[:half] + 1e-3 * torch.randn(half, n, d, generator=g)
    mirror = h[half : half + quarter]
    h[pairs + half : pairs + half + quarter] = 2 * mirror.mean(-1, keepdim=True) - mirror
    return h


def test_data_layernorm_bound_holds_where_max_gamma_fails():
    cmap = component_map(tiny_vit(seed=5))
    ln = cmap.module(0, "ln1")
    with torch.no_grad():
        ln.weight.copy_(torch.linspace(-3.0, 2.0, 48))  # largest |gamma| is negative
    h = small_spread_tokens(64)
    ratios, scales = token_ratios(cmap, h, ["ln1"], with_scales=True)
    ratios, scales = ratios[:, 0, 0], scales[:, 0, 0]
    s = (h.double().var(-1, unbiased=False) + ln.eps).sqrt()  # (2B, N)
    torch.testing.assert_close(scales, torch.minimum(*s.amin(1).chunk(2)))
    assert (ratios <= 3.0 / scales * (1 + 1e-9)).all()  # each pair within its own bound
    data = norm_bound(ln, "data", scale=float(scales.min()))
    assert data == pytest.approx(3.0 / float(s.min()))
    assert (ratios <= data).all()
    assert (ratios > layernorm_bound(ln, "abs")).float().mean() > 0.5  # max|gamma| fails
    assert ratios.max() > 0.1 * data  # not vacuous (the ratio averages over tokens)


def test_rmsnorm_gets_the_same_bound_with_its_own_scale():
    torch.manual_seed(0)
    rms = RmsNorm(48, eps=1e-6)
    with torch.no_grad():
        rms.weight.copy_(torch.randn(48))
    assert norm_kind(rms) == "rms" and norm_kind(nn.LayerNorm(4)) == "layer"
    assert norm_kind(nn.Linear(2, 2)) is None
    h = small_spread_tokens(32)
    h -= h.mean(-1, keepdim=True)  # no offsets: RMS = std, 0.02 to 0.5
    x, y = h.chunk(2)
    with torch.no_grad():
        ratios = (rms(x) - rms(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    s = token_scale(h, rms.eps, centred=False)  # sqrt(mean x^2 + eps), (2B, N)
    torch.testing.assert_close(s, (h.double().square().mean(-1) + 1e-6).sqrt())
    per_pair = torch.minimum(*s.amin(1).chunk(2))
    gain = rms.weight.detach().abs().max().item()
    assert (ratios.double() <= gain / per_pair * (1 + 1e-6)).all()
    assert (ratios.double() <= norm_bound(rms, "data", float(s.min())) * (1 + 1e-6)).all()
    assert (ratios > norm_bound(rms, "abs")).any()
    with pytest.raises(ValueError, match="needs the smallest token scale"):
        norm_bound(rms, "data")


def shrunk_vit():
    """A tiny ViT whose embedding output has token std ~0.03: max|gamma| is no LN bound."""
    model = tiny_vit(seed=2)
    with torch.no_grad():
        for param in (model.patch_embed.proj.weight, model.patch_embed.proj.bias):
            param.mul_(0.05)
        model.pos_embed.mul_(0.05)
        model.cls_token.mul_(0.05)
    return component_map(model)


def test_estimator_checks_each_pair_and_the_table_bound_holds_for_all():
    cmap = shrunk_vit()
    names = list(cmap.block_components)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 32, 32, generator=g), torch.randn(8, 3, 32, 32, generator=g))]
    batches *= 3
    for kind in ("data", "abs"):
        frame = layer_bounds(cmap, names, n_tokens=17, radius=50.0, width=48, ln_bound=kind)
        fixed = bounds_matrix(frame, cmap.depth, names)
        gains = bounds_matrix(frame, cmap.depth, names, "norm_gain")
        est = estimate(cmap, batches, components=names, bounds=fixed, norm_gains=gains)
        if kind == "data":
            pending = frame[frame["component"] == "ln1"]
            assert pending["bound"].isna().all()
            assert pending["definition"].str.startswith(DATA_UNDEFINED).all()  # says why
            frame = fill_data_bounds(frame, names, est.norm_scale)
            ln1 = frame[frame["component"] == "ln1"]["definition"]
            assert ln1.str.match(r"max\|gamma\| / s_min, s_min = 0\.\d+ \(smallest token").all()
        labels = {"model": "m", "reference": "a", "target": "b", "inputs": "embedding"}
        ratio = bound_ratio_table(est, labels, frame)
        ln = ratio[ratio["component"].isin(["ln1", "ln2"])]
        lines = exceedance_lines(ratio)
        if kind == "data":
            assert ln["bound"].notna().all() and (ln["exceed_frac"] == 0).all()
            assert (ln["max"] <= ln["bound"]).all() and (ln["max"] > 1.2 * ln["norm_gain"]).all()
            assert est.norm_scale[:, names.index("ln1")].lt(0.2).all()
            assert math.isnan(est.norm_scale[0, names.index("fc1")])
            assert (ln["assumption"] == ASSUMPTIONS["data"]).all()
            assert not [line for line in lines if line.startswith("ln")]
        else:  # every pair is above max|gamma|, and the summary says so with the assumption
            assert (ln["exceed_frac"] == 1).all()
            text = summary_text(_result(lines), ratio.head(0).assign(rank=[], theory_rank=[]))
            assert "ln1: pairs above the bound in 2 of 2 layers (up to 100% of pairs" in text
            assert "assumes every token's sqrt(var + eps) >= 1" in text


def _result(lines: list[str]) -> dict:
    return {
        "model": "m",
        "model_description": "tiny",
        "reference_label": "a",
        "target_label": "b",
        "pairs": 24,
        "inputs": "embedding",
        "stopped_early": False,
        "settled": True,
        "exceedances": lines,
    }


def test_report_lists_exceedances_per_run_with_the_assumption():
    import pandas as pd

    from vitplas.experiments.report import _exceedances

    rows = [
        ("m", "photos", target, "embedding", layer, "ln1", frac, 2.5, "max|gamma|")
        for target, frac in (("cifar10", 0.5), ("svhn", 0.0))
        for layer in range(2)
    ]
    columns = ["model", "reference", "target", "inputs", "layer", "component", "exceed_frac"]
    ratio = pd.DataFrame(rows, columns=[*columns, "max_ratio", "definition"])
    ratio["assumption"] = ASSUMPTIONS["abs"]
    text = _exceedances({"bound_ratio": ratio})
    assert text == (
        "- cifar10, ln1: pairs above the bound in 2 of 2 layers (up to 50% of pairs, layer 0; "
        "max measured/bound 2.5); bound max|gamma|, assumes every token's sqrt(var + eps) >= 1"
    )
    assert _exceedances({"bound_ratio": ratio.assign(exceed_frac=0.0)}) == ""
