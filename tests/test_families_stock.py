"""Every block and embedding kind of the family registry at its stock timm configuration
(timm's own depth, width and stem; random weights; images of 2x2 patches, 3x3 for windowed
relative position), built as `--model NAME --random-init --img-size S` builds it (load_model,
setup_loaded): embedding plus blocks reproduce forward_features, plasticity in every input
mode, bounds at the measured radius (first and last block), a one-step finetune of
train=[all], and of every component on issue 24's two hybrids. tests/test_families.py runs
the same checks on 2-block, 64-wide instances of every family entry; this file keeps one stock
instance of each kind they stand for."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import timm
import torch

from vitplas.analysis.bounds import component_bound, token_radius
from vitplas.analysis.plasticity import LinearFactors, embed_images, pair_ratios
from vitplas.analysis.setup import setup_loaded
from vitplas.models import load_model
from vitplas.models.components import component_map, resolve_train_set, set_trainable
from vitplas.models.families import FAMILIES, INPUT_MODES, type_key
from vitplas.models.families_ops import EMBEDDERS
from vitplas.models.text_ops import EMBEDDERS as TEXT_EMBEDDERS

# name -> the kind it is the stock instance of (block type, embedding, hybrid stem)
STOCK = {
    "vit_small_r26_s32_224": "hybrid: ResNetV2 (4 stages) + 1x1 projection (issue 24)",
    "vit_base_r50_s16_224": "hybrid: ResNetV2 (3 stages) + 1x1 projection",
    "vit_tiny_r_s16_p8_224": "hybrid: ResNetV2 root stem only + 8x8 projection",
    "vit_small_resnet26d_224": "hybrid: ResNet-D features_only + 1x1 projection",
    "vit_base_mci_224": "hybrid: conv stem, no projection (Identity)",
    "vit_tiny_patch16_224": "vision_transformer.Block, PatchEmbed",
    "vit_base_patch16_rpn_224": "vision_transformer.ResPostBlock",
    "vit_base_patch16_xp_224": "vision_transformer.ParallelScalingBlock",
    "deit_tiny_distilled_patch16_224": "deit-distilled: distillation token",
    "vit_relpos_small_patch16_224": "vision_transformer_relpos.RelPosBlock",
    "vit_relpos_small_patch16_rpn_224": "vision_transformer_relpos.ResPostRelPosBlock",
    "eva02_tiny_patch14_224": "eva.EvaBlock, rope, SwiGLU",
    "beit_base_patch16_224": "beit.Block, relative position bias",
    "naflexvit_base_patch16_gap": "naflexvit: NaFlexEmbeds",
}
# block types with no stock instance here, and why (tests/test_families.py has a small one)
NO_STOCK = {"eva.EvaBlockPostNorm": "only in eva02_enormous_patch14_clip_224 (4.4B parameters)"}
HYBRIDS = [name for name, kind in STOCK.items() if kind.startswith("hybrid")]
EVERY_COMPONENT = ("vit_small_r26_s32_224", "vit_base_r50_s16_224")  # issue 24's two


def _meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False)


def _stem(model: torch.nn.Module) -> tuple[str, str]:
    embed = model.patch_embed
    return type(embed.backbone).__name__, type(embed.proj).__name__


def test_stock_instances_cover_every_block_embedding_and_stem_kind():
    models = {name: _meta(name) for name in STOCK}
    blocks = {type_key(b) for m in models.values() for b in m.blocks}
    images = [f for f in FAMILIES if f.modality == "image"]  # text: tests/test_families_text.py
    registered = {spec.type for f in images for spec in f.blocks}
    assert registered - blocks == set(NO_STOCK)
    families = {component_map(m).family.name: component_map(m).family for m in models.values()}
    assert {f.embed for f in families.values()} == set(EMBEDDERS) - set(TEXT_EMBEDDERS)
    assert set(families) == {f.name for f in images}
    hybrids = timm.list_models(module="vision_transformer_hybrid")
    assert len(hybrids) >= 14
    stems = {_stem(_meta(name)) for name in hybrids}  # every stem timm builds
    assert stems == {_stem(models[name]) for name in HYBRIDS}
    assert ("ConvStem", "Identity") in stems and ("FeatureListNet", "Conv2d") in stems


def _side(model: torch.nn.Module) -> int:
    return 3 if component_map(model).family.name in ("vit-relpos", "beit") else 2


@pytest.fixture(scope="module", params=sorted(STOCK))
def stock(request):
    """(name, ModelSetup, images (4, 3, S, S)) of a stock random model at 2x2 (3x3) patches."""
    probe = _meta(request.param)
    ph, _ = component_map(probe).patch_size()
    torch.manual_seed(0)
    loaded = load_model(request.param, random_init=True, img_size=_side(probe) * ph)
    with torch.no_grad():  # no zero-initialised weight may hide a gradient
        for param in loaded.model.parameters():
            param.add_(0.02 * torch.randn(param.shape))
    setup = setup_loaded(loaded, torch.device("cpu"))
    images = torch.randn(4, *loaded.input_size, generator=torch.Generator().manual_seed(1))
    return request.param, setup, images


def test_stock_embedding_and_blocks_reproduce_forward_features(stock):
    name, setup, images = stock
    model, cmap = setup.loaded.model, setup.cmap
    assert setup.loaded.input_size[0] == 3  # the image's channels, not the stem's (issue 24)
    assert len(model.blocks) == len(_meta(name).blocks)  # timm's own depth
    with torch.no_grad():
        h = embed_images(cmap, images)
        assert h.shape[1:] == (setup.n_tokens, setup.width)
        for layer in range(cmap.depth):
            h = cmap.forward_block(layer, h)
        reference = model.forward_features(images)
    assert torch.allclose(model.norm(h), reference, atol=1e-5, rtol=1e-5)


def test_stock_plasticity_every_input_mode_and_bounds(stock):
    _, setup, images = stock
    cmap, factors = setup.cmap, LinearFactors()
    components = cmap.block_components
    for inputs in INPUT_MODES:
        ratios = pair_ratios(cmap, images[:2], images[2:], inputs=inputs, factors=factors)
        assert ratios.shape == (2, cmap.depth, len(components))
        assert torch.isfinite(ratios).all() and (ratios > 0).all(), inputs
    radius, n_tokens = token_radius(cmap, [images], max_images=4)
    assert n_tokens == setup.n_tokens and float(radius) > 0
    sizes = {"n_tokens": n_tokens, "radius": float(radius), "width": setup.width}
    for layer in (0, cmap.depth - 1):  # the blocks are alike; all 12-24 take a minute
        for name in components:
            row = component_bound(cmap, layer, name, **sizes, ln_bound="abs", mha_bound="paper")
            bound, definition = row["bound"], row["definition"]
            assert bound > 0 or (math.isnan(bound) and definition.startswith("undefined"))
            assert bound > 0 or name not in ("fc1", "fc2", "ls1", "ls2")  # linear: always one


def test_stock_one_step_finetune_trains_exactly_the_component(stock):
    """train=[all] on every stock instance; every component alone on issue 24's hybrids (the
    2-block instances of tests/test_families.py train each one on the same stems)."""
    name, setup, images = stock
    model, cmap = setup.loaded.model, setup.cmap
    for train in ("all", *(cmap.trainable if name in EVERY_COMPONENT else ())):
        set_trainable(model, [train], head=False, norm=False)
        expected = {
            n for c in resolve_train_set(cmap, [train]) for n, _ in cmap.named_parameters(c)
        }
        before = {n: p.detach().clone() for n, p in model.named_parameters() if n in expected}
        model.zero_grad(set_to_none=True)
        model.train()
        model(images[:2]).float().square().mean().backward()
        model.eval()
        torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
        graded = {n for n, p in model.named_parameters() if p.grad is not None}
        changed = {n for n in before if not torch.equal(model.get_parameter(n), before[n])}
        assert graded == expected, train
        assert changed, train


def test_an_error_blames_the_image_size_only_when_it_is_the_cause(monkeypatch):
    loaded = load_model("vit_tiny_r_s16_p8_224", random_init=True, img_size=64)
    cmap = setup_loaded(loaded, torch.device("cpu")).cmap
    with pytest.raises(ValueError, match=r"size 96x96 do not fit .* its input size 64x64"):
        embed_images(cmap, torch.zeros(1, 3, 96, 96))  # a 3x3 grid, the model has 2x2
    with pytest.raises(ValueError, match="images have 1 channels; this model reads 3-channel"):
        embed_images(cmap, torch.zeros(1, 1, 64, 64))

    def broken(images):
        raise RuntimeError("weight of size [64, 3, 7, 7], expected input to have 3 channels")

    monkeypatch.setattr(loaded.model.patch_embed, "forward", broken)
    for side in (64, 96):  # the model fails at its own size too: not the images' fault
        with pytest.raises(
            RuntimeError, match="embedding fails on images of this model's own"
        ) as info:
            embed_images(cmap, torch.zeros(1, 3, side, side))
        assert not isinstance(info.value, ValueError)


def test_the_issue_24_commands_run_on_the_stock_hybrid(tmp_path):
    from typer.testing import CliRunner

    from vitplas.cli import app

    model = ["--model", "vit_small_r26_s32_224", "--random-init", "--img-size", "64"]
    small = ["radius_images=4", "figures=false", "--device", "cpu"]
    args = ["plasticity", *model, "--target", "digits", "--pairs", "2", "--batch-size", "2"]
    result = CliRunner().invoke(app, [*args, *small, "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "Plasticity of vit_small_r26_s32_224, pooled over layers (ranked)" in result.output
    bounds = ["bounds", *model, "--dataset", "digits", "--plasticity", str(tmp_path / "p")]
    result = CliRunner().invoke(app, [*bounds, *small, "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "b" / "bounds.csv")
    assert len(table) == 12 * 5 and table.bound.gt(0).all()  # every bound, norms from the pairs
