"""The plasticity estimator against a plain per-pair loop, its streaming statistics, its pairs,
its sequential stop and its errors. Tiny ViTs (MLP ratio 3, on purpose not 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import TensorDataset

from vitplas.analysis.estimate import estimate
from vitplas.analysis.pairs import pair_batches
from vitplas.analysis.plasticity import (
    _Inputs,
    component_numerator,
    pair_ratios,
    token_ratios,
)
from vitplas.analysis.ratio_stats import RatioStats, quantile95
from vitplas.models.components import UnknownComponentError, component_map


def tiny_vit(layerscale: float | None = None, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=3,
        mlp_ratio=3.0,
        init_values=layerscale,
        num_classes=0,
    )
    with torch.no_grad():  # trained-looking gains and biases, some negative
        for name, param in model.named_parameters():
            if "norm" in name or "gamma" in name or name.endswith("bias"):
                param.add_(0.5 * torch.randn_like(param))
    return model.eval()


def loop_reference(cmap, x, y, inputs: str) -> torch.Tensor:
    """Each module called on each image of each pair separately; FC2 on padded tokens."""
    out = torch.zeros(x.shape[0], cmap.depth, len(cmap.block_components), dtype=torch.float64)
    with torch.no_grad():
        for i in range(x.shape[0]):
            hx, hy = cmap.embed(x[i : i + 1]), cmap.embed(y[i : i + 1])
            for layer in range(cmap.depth):
                for c, name in enumerate(cmap.block_components):
                    module = cmap.module(layer, name)
                    ax, ay = hx, hy
                    if name == "fc2":
                        pad = module.in_features - hx.shape[-1]
                        ax, ay = F.pad(hx, (0, pad)), F.pad(hy, (0, pad))
                    out[i, layer, c] = (module(ax) - module(ay)).norm() / (hx - hy).norm()
                if inputs == "hidden":
                    hx, hy = cmap.block(layer)(hx), cmap.block(layer)(hy)
    return out


@pytest.mark.parametrize("inputs", ["embedding", "hidden"])
@pytest.mark.parametrize("layerscale", [None, 0.3])
def test_estimator_equals_plain_loop(inputs, layerscale):
    cmap = component_map(tiny_vit(layerscale))
    x, y = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32)
    got = pair_ratios(cmap, x, y, inputs=inputs).double()
    want = loop_reference(cmap, x, y, inputs)
    assert got.shape == (6, 2, len(cmap.block_components))
    assert ("ls1" in cmap.block_components) == (layerscale is not None)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_linear_factor_cache_follows_in_place_weight_changes():
    cmap = component_map(tiny_vit())
    x, y = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    before = pair_ratios(cmap, x, y, ["fc1"])
    with torch.no_grad():
        cmap.module(1, "fc1").weight.mul_(2.0)  # what a finetuning step does, in place
    after = pair_ratios(cmap, x, y, ["fc1"])
    torch.testing.assert_close(after[:, 1], 2 * before[:, 1], rtol=1e-6, atol=0)
    torch.testing.assert_close(after[:, 0], before[:, 0])


def test_a_weight_changed_through_data_is_read_anew_by_the_next_estimate():
    model = tiny_vit()
    cmap = component_map(model)
    x, y = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    batches = [(x, y), (y, x)]
    first = estimate(cmap, batches, components=["fc1", "fc2"]).summary["mean"]
    before = pair_ratios(cmap, x, y, ["fc1"])
    new_fc1 = torch.randn_like(cmap.module(1, "fc1").weight)
    version = cmap.module(1, "fc1").weight._version
    cmap.module(1, "fc1").weight.data.copy_(new_fc1)  # no version bump: a key cannot see it
    assert cmap.module(1, "fc1").weight._version == version
    fresh = tiny_vit()
    with torch.no_grad():
        component_map(fresh).module(1, "fc1").weight.copy_(new_fc1)
    want = estimate(component_map(fresh), batches, components=["fc1", "fc2"]).summary["mean"]
    again = estimate(cmap, batches, components=["fc1", "fc2"]).summary["mean"]
    torch.testing.assert_close(again, want, rtol=0, atol=0)
    assert (again[1, 0] - first[1, 0]).abs() > 0.1 and torch.equal(again[0], first[0])
    after = pair_ratios(cmap, x, y, ["fc1"])  # a call without LinearFactors: factored anew
    torch.testing.assert_close(after, pair_ratios(component_map(fresh), x, y, ["fc1"]))
    assert not torch.allclose(after[:, 1], before[:, 1])


def test_linear_factors_factor_once_per_estimate(monkeypatch):
    from vitplas.analysis import plasticity

    calls = []
    factor = plasticity.difference_weight
    monkeypatch.setattr(plasticity, "difference_weight", lambda w: calls.append(1) or factor(w))
    cmap = component_map(tiny_vit())
    x, y = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    est = estimate(cmap, [(x, y)] * 5, components=["fc1", "fc2", "mha"])
    assert est.batches == 5 and len(calls) == 2 * cmap.depth  # fc1 and fc2 of each layer, once
    pair_ratios(cmap, x, y, ["fc1"])  # a call on its own: its own factors
    assert len(calls) == 3 * cmap.depth


def test_hidden_mode_differs_from_embedding_after_first_block():
    cmap = component_map(tiny_vit())
    x, y = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    emb, hid = pair_ratios(cmap, x, y, inputs="embedding"), pair_ratios(cmap, x, y, inputs="hidden")
    torch.testing.assert_close(emb[:, 0], hid[:, 0])  # block 0 reads the embedding either way
    assert (emb[:, 1] - hid[:, 1]).abs().max() > 1e-4


def test_fc2_on_padded_input_equals_module_on_explicit_padding():
    cmap = component_map(tiny_vit())
    fc2 = cmap.module(0, "fc2")
    assert fc2.in_features == 144  # 3 x 48: widths come from the module
    h = torch.randn(10, 17, 48)  # (2B, N, D)
    got = component_numerator(fc2, "fc2", _Inputs(h))
    padded = fc2(F.pad(h, (0, fc2.in_features - 48)))
    want = (padded[:5] - padded[5:]).flatten(1).norm(dim=1)
    torch.testing.assert_close(got, want.double(), rtol=1e-6, atol=1e-6)


def test_linear_ratios_never_exceed_spectral_norm_and_reach_it():
    cmap = component_map(tiny_vit())
    fc1 = cmap.module(1, "fc1")
    fc2 = cmap.module(1, "fc2")
    bound1 = torch.linalg.matrix_norm(fc1.weight.double(), ord=2).item()
    bound2 = torch.linalg.matrix_norm(fc2.weight.double(), ord=2).item()
    h = torch.randn(2 * 64, 17, 48) * torch.rand(2 * 64, 17, 1) * 5
    r = token_ratios(cmap, h, ["fc1", "fc2"])  # (64, L, 2)
    assert (r[:, 1, 0] <= bound1 * (1 + 1e-6)).all()
    assert (r[:, 1, 1] <= bound2 * (1 + 1e-6)).all()
    # a difference along the top right-singular vector in every token attains ||W||_2
    top = torch.linalg.svd(fc1.weight.detach())[2][0]
    x = torch.randn(1, 17, 48)
    y = x - top * torch.randn(1, 17, 1)
    tight = token_ratios(cmap, torch.cat([x, y]), ["fc1"])[0, 1, 0].item()
    assert tight == pytest.approx(bound1, rel=1e-5)


def test_identical_pairs_are_left_out():
    cmap = component_map(tiny_vit())
    x = torch.randn(4, 3, 32, 32)
    y = torch.randn(4, 3, 32, 32)
    y[1] = x[1]
    r = pair_ratios(cmap, x, y)
    assert torch.isnan(r[1]).all() and torch.isfinite(r[[0, 2, 3]]).all()
    stats = RatioStats(r.shape[1:])
    stats.update(r)
    assert (stats.to_host()["n"] == 3).all()


def test_streaming_stats_equal_numpy_over_all_batches():
    rng = np.random.default_rng(0)
    data = rng.lognormal(1.0, 0.7, size=(1000, 3, 2)) + 1e3  # a large offset: no cancellation
    stats = RatioStats((3, 2), bounds=torch.full((3, 2), 1e3 + 5.0))
    for chunk in np.array_split(data, 7):
        stats.update(torch.from_numpy(chunk))
    out = stats.to_host()
    np.testing.assert_allclose(out["mean"], data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(out["std"], data.std(0, ddof=1), rtol=1e-9)
    np.testing.assert_allclose(out["ci95"], 1.96 * data.std(0, ddof=1) / math.sqrt(1000))
    np.testing.assert_allclose(out["exceed_frac"], (data > 1e3 + 5.0).mean(0))
    np.testing.assert_allclose(out["max"], data.max(0))
    assert stats.sum.shape == (3, 2)  # state never grows with the number of pairs


def test_ci_uses_student_t_below_30_and_196_from_30():
    data = torch.tensor([1.0, 2.0, 4.0, 7.0]).reshape(4, 1)
    stats = RatioStats((1,))
    stats.update(data)
    std = data.double().std().item()
    assert stats.ci95().item() == pytest.approx(3.182446 * std / 2, rel=1e-6)  # t_0.975(3)
    assert quantile95(torch.tensor([1.0, 2.0, 29.0, 30.0, 1e4])).tolist()[1:] == pytest.approx(
        [12.706205, 2.048407, 1.96, 1.96], rel=1e-6
    )
    assert math.isnan(quantile95(torch.tensor([1.0])).item())


def _streams(n_ref: int = 40, n_tgt: int = 30):
    g = torch.Generator().manual_seed(0)
    ref = TensorDataset(torch.randn(n_ref, 3, 32, 32, generator=g), torch.zeros(n_ref))
    tgt = TensorDataset(torch.randn(n_tgt, 3, 32, 32, generator=g), torch.zeros(n_tgt))
    return ref, tgt


def test_same_seed_same_numbers_other_seed_other_pairs():
    cmap = component_map(tiny_vit())
    ref, tgt = _streams()

    def run(seed):
        batches = pair_batches(ref, tgt, pairs=50, batch_size=8, seed=seed)
        return estimate(cmap, batches).summary["mean"]

    def first_pairs(seed):
        return next(iter(pair_batches(ref, tgt, pairs=8, batch_size=8, seed=seed)))

    torch.testing.assert_close(run(3), run(3), rtol=0, atol=0)
    assert (run(3) - run(4)).abs().max() > 1e-6
    x3, y3 = first_pairs(3)
    x4, y4 = first_pairs(4)
    assert not torch.equal(x3, x4) and not torch.equal(y3, y4)


def test_pairs_count_last_batch_short_and_streams_cycle():
    ref, tgt = _streams(n_ref=20, n_tgt=12)
    sizes = [x.shape[0] for x, _ in pair_batches(ref, tgt, pairs=45, batch_size=8, seed=0)]
    assert sizes == [8, 8, 8, 8, 8, 5]  # 45 pairs, more than either stream holds


def test_sequential_stop_ends_early_when_cis_are_narrow():
    cmap = component_map(tiny_vit())
    ref, tgt = _streams()
    loose = estimate(
        cmap,
        pair_batches(ref, tgt, pairs=400, batch_size=8, seed=0),
        until_ci=0.9,
        check_every=2,
    )
    assert loose.stopped_early and loose.pairs == 16
    ci, mean = loose.summary["ci95"], loose.summary["mean"]
    assert (ci < 0.9 * mean.abs()).all()
    strict = estimate(cmap, pair_batches(ref, tgt, pairs=32, batch_size=8, seed=0), until_ci=1e-9)
    assert not strict.stopped_early and strict.pairs == 32


def test_pooled_row_is_mean_over_layers_per_pair():
    cmap = component_map(tiny_vit())
    ref, tgt = _streams()
    est = estimate(cmap, pair_batches(ref, tgt, pairs=16, batch_size=8, seed=1))
    batches = list(pair_batches(ref, tgt, pairs=16, batch_size=8, seed=1))
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    r = pair_ratios(cmap, x, y).double()
    torch.testing.assert_close(est.summary["mean"][:2], r.mean(0), rtol=1e-6, atol=0)
    pooled = r.mean(1)  # (B, C)
    torch.testing.assert_close(est.summary["mean"][2], pooled.mean(0), rtol=1e-6, atol=0)
    torch.testing.assert_close(est.summary["std"][2], pooled.std(0), rtol=1e-5, atol=0)


def test_bfloat16_autocast_close_to_float32():
    """bf16 is approximate: differences are taken in float32, but MHA's own bf16 output
    rounding (~2^-8 of |f(x)|) weighs on a difference that is small next to |f(x)|."""
    cmap = component_map(tiny_vit())
    ref, tgt = _streams()
    full = estimate(cmap, pair_batches(ref, tgt, pairs=16, batch_size=8, seed=0))
    half = estimate(cmap, pair_batches(ref, tgt, pairs=16, batch_size=8, seed=0), dtype="bfloat16")
    rel = (half.summary["mean"] / full.summary["mean"] - 1).abs()
    mha = full.components.index("mha")
    others = [i for i in range(len(full.components)) if i != mha]
    assert rel[:, others].max() < 0.02
    assert rel[:, mha].max() < 0.2


def test_bad_inputs_are_clear_errors():
    cmap = component_map(tiny_vit())
    ref, tgt = _streams(n_ref=5)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(UnknownComponentError, match="'attn' is unknown; known: ln1, mha"):
        pair_ratios(cmap, x, x, ["attn"])
    with pytest.raises(UnknownComponentError, match="'ls1' is unknown"):
        pair_ratios(cmap, x, x, ["ls1"])  # no LayerScale in this model
    with pytest.raises(ValueError, match="not a multiple of this model's 8x8 patches"):
        pair_ratios(cmap, torch.randn(2, 3, 36, 36), torch.randn(2, 3, 36, 36))
    with pytest.raises(ValueError, match="do not fit this model"):
        pair_ratios(cmap, torch.randn(2, 3, 40, 40), torch.randn(2, 3, 40, 40))
    with pytest.raises(ValueError, match="inputs 'residual' is unknown"):
        pair_ratios(cmap, x, x, inputs="residual")
    with pytest.raises(ValueError, match="pairs must be >= 1, got 0"):
        pair_batches(ref, tgt, pairs=0, batch_size=4, seed=0)
    with pytest.raises(ValueError, match="stream 'reference' has 5 images, fewer than one batch"):
        pair_batches(ref, tgt, pairs=10, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="dtype 'float8' is unknown"):
        estimate(cmap, pair_batches(*_streams(), pairs=8, batch_size=8, seed=0), dtype="float8")


@pytest.mark.gpu
def test_cuda_matches_cpu_and_bf16_runs():
    cmap_cpu = component_map(tiny_vit())
    cmap_gpu = component_map(tiny_vit().cuda())
    ref, tgt = _streams()
    cpu = estimate(cmap_cpu, pair_batches(ref, tgt, pairs=16, batch_size=8, seed=0))
    gpu = estimate(cmap_gpu, pair_batches(ref, tgt, pairs=16, batch_size=8, seed=0), device="cuda")
    torch.testing.assert_close(gpu.summary["mean"], cpu.summary["mean"], rtol=1e-4, atol=0)
    half = estimate(
        cmap_gpu,
        pair_batches(ref, tgt, pairs=16, batch_size=8, seed=0),
        device="cuda",
        dtype="bfloat16",
    )
    assert torch.isfinite(half.summary["mean"]).all()


def test_float32_on_cuda_switches_tf32_off_and_restores_the_flags():
    from vitplas.analysis.estimate import precision

    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    old = [f.allow_tf32 for f in flags]
    try:
        for f in flags:
            f.allow_tf32 = True  # PyTorch's default for cuDNN convolutions
        with precision(torch.device("cuda"), "float32"):  # flags only: no device needed
            assert [f.allow_tf32 for f in flags] == [False, False]
        with precision(torch.device("cuda"), "tf32"):
            assert [f.allow_tf32 for f in flags] == [True, True]
        assert [f.allow_tf32 for f in flags] == [True, True]
    finally:
        for f, value in zip(flags, old, strict=True):
            f.allow_tf32 = value
