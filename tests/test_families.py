"""Every family of the registry on real timm architectures (random weights, 2 blocks, width 64,
2x2 or 3x3 patch grids): the partition, plasticity in every input mode, bounds (a value or NaN
with its reason), one SGD step of train=[all] and of each component, and the refusals.
tests/test_families_stock.py keeps one instance of every block and embedding kind at timm's
stock configuration."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from vitplas.analysis.bound_table import layer_bounds
from vitplas.analysis.plasticity import pair_ratios, patch_size
from vitplas.models.components import (
    UnknownComponentError,
    component_map,
    resolve_train_set,
    set_trainable,
)
from vitplas.models.families import FAMILIES, INPUT_MODES

SMALL = dict(depth=2, embed_dim=64, num_heads=4, num_classes=5)
# name -> (family, extra timm kwargs); img_size is 2 patches (3 for relpos / beit windows)
MODELS = {
    "vit_tiny_patch16_224": ("vit", {}),
    "vit_base_patch32_224": ("vit", {}),
    "vit_base_patch16_gap_224": ("vit", {}),
    "vit_base_patch16_reg4_gap_256": ("vit", {}),
    "vit_small_patch14_reg4_dinov2": ("vit", {}),
    "vit_small_patch14_dinov2": ("vit", {}),
    "deit_tiny_patch16_224": ("vit", {}),
    "deit3_small_patch16_224": ("vit", {}),
    "deit3_medium_patch16_224": ("vit", {}),
    "vit_base_patch16_clip_224": ("vit", {}),
    "vit_base_patch32_clip_quickgelu_224": ("vit", {}),
    "vit_base_patch16_siglip_224": ("vit", {}),
    "vit_base_patch16_siglip_gap_224": ("vit", {}),
    "vit_base_patch16_siglip_224.v2_webli": ("vit", {}),  # SigLIP2
    "vit_base_patch16_224.mae": ("vit", {}),
    "flexivit_small": ("vit", {}),
    "vit_base_mci_224": ("vit", {"embed_dim": 768, "num_heads": 12}),  # no proj: D = stem width
    "vit_base_r50_s16_224": ("vit", {}),
    "test_vit": ("vit", {}),
    "test_vit2": ("vit", {}),
    "test_vit3": ("vit", {}),
    "test_vit4": ("vit", {}),
    "aimv2_large_patch14_224": ("vit", {}),
    "vit_base_patch16_xp_224": ("vit", {}),
    "vit_large_patch14_xp_224": ("vit", {"qk_norm": False, "qkv_bias": True}),
    "vit_tiny_r_s16_p8_224": ("vit", {}),
    "vit_small_r26_s32_224": ("vit", {}),
    "vit_base_patch16_rpn_224": ("vit", {}),  # ResPostBlock
    "deit_tiny_distilled_patch16_224": ("deit-distilled", {}),
    "deit_small_distilled_patch16_224": ("deit-distilled", {}),
    "vit_relpos_small_patch16_224": ("vit-relpos", {}),
    "vit_srelpos_small_patch16_224": ("vit-relpos", {}),
    "vit_relpos_medium_patch16_cls_224": ("vit-relpos", {}),
    "vit_relpos_small_patch16_rpn_224": ("vit-relpos", {}),
    "eva02_tiny_patch14_224": ("eva", {}),
    "eva02_small_patch14_224": ("eva", {}),
    "vit_small_patch16_dinov3": ("eva", {}),
    "vit_small_patch16_dinov3_qkvb": ("eva", {}),
    "vit_huge_plus_patch16_dinov3": ("eva", {}),
    "eva02_base_patch14_224": ("eva", {}),
    "eva02_enormous_patch14_clip_224": ("eva", {}),  # EvaBlockPostNorm
    "vit_pe_core_tiny_patch16_384": ("eva", {}),
    "vit_pe_spatial_tiny_patch16_512": ("eva", {}),
    "vit_base_patch16_rope_224": ("eva", {}),
    "vit_small_patch16_rope_mixed_224": ("eva", {}),
    "vit_small_patch16_rope_ape_224": ("eva", {}),
    "vit_medium_patch16_rope_reg1_gap_256": ("eva", {}),
    "beit_base_patch16_224": ("beit", {}),
    "beitv2_base_patch16_224": ("beit", {}),
    "naflexvit_base_patch16_gap": ("naflexvit", {}),
    "naflexvit_base_patch16_map": ("naflexvit", {}),
    "naflexvit_base_patch16_par_gap": ("naflexvit", {}),
}
WINDOWED = ("vit-relpos", "beit")


def build(name: str, extra: dict) -> tuple[torch.nn.Module, torch.Tensor]:
    """A 2-block, 64-wide random `name` and a batch of 4 images of its (small) input size."""
    torch.manual_seed(0)
    with torch.device("meta"):
        probe = timm.create_model(name, pretrained=False, **{**SMALL, **extra})
    ph, pw = component_map(probe).patch_size()
    side = (
        3 if type(probe).__module__.split(".")[-1] in ("beit", "vision_transformer_relpos") else 2
    )
    model = timm.create_model(
        name, pretrained=False, img_size=side * ph, **{**SMALL, **extra}
    ).eval()
    with torch.no_grad():  # no zero-initialised weight may hide a gradient
        for param in model.parameters():
            param.add_(0.02 * torch.randn(param.shape))
    images = torch.randn(4, 3, side * ph, side * pw, generator=torch.Generator().manual_seed(1))
    return model, images


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request):
    family, extra = MODELS[request.param]
    model, images = build(request.param, extra)
    return request.param, family, model, images


def test_registry_rows_cover_every_family_and_40_models():
    assert len(MODELS) >= 40  # text families: tests/test_families_text.py
    assert {f for f, _ in MODELS.values()} == {f.name for f in FAMILIES if f.modality == "image"}


def test_partition_and_family(built):
    _, family, model, _ = built
    cmap = component_map(model)
    assert cmap.family.name == family
    owned = [n for c in cmap.components for n, _ in cmap.named_parameters(c)]
    assert sorted(owned) == sorted(n for n, _ in model.named_parameters())  # each exactly once
    assert {"emb", "ln1", "mha", "fc2"} <= set(cmap.components)
    assert {"ln1", "mha", "fc1", "fc2"} <= set(cmap.block_components)


def test_embed_and_blocks_reproduce_forward_features(built):
    _, _, model, images = built
    cmap = component_map(model)
    with torch.no_grad():
        x = cmap.embed(images)
        for layer in range(cmap.depth):
            x = cmap.forward_block(layer, x)
        reference = model.forward_features(images)
    assert torch.allclose(model.norm(x), reference, atol=1e-5)
    assert patch_size(cmap)[0] * (3 if cmap.family.name in WINDOWED else 2) == images.shape[-1]


@pytest.mark.parametrize("inputs", INPUT_MODES)
def test_plasticity_every_input_mode(built, inputs):
    _, _, model, images = built
    cmap = component_map(model)
    ratios = pair_ratios(cmap, images[:2], images[2:], inputs=inputs)
    assert ratios.shape == (2, 2, len(cmap.block_components))
    assert torch.isfinite(ratios).all() and (ratios > 0).all()


def test_bounds_are_values_or_nan_with_reason(built):
    _, family, model, images = built
    cmap = component_map(model)
    with torch.no_grad():
        n_tokens, width = cmap.embed(images).shape[1:]
    frame = layer_bounds(cmap, cmap.block_components, n_tokens=n_tokens, radius=1.0, width=width)
    assert len(frame) == 2 * len(cmap.block_components)
    for row in frame.itertuples():
        if math.isnan(row.bound):
            assert row.definition.startswith("undefined"), row  # and says why
            assert len(row.definition) > len("undefined: "), row
        else:
            assert row.bound > 0
    fc = frame[frame.component.isin(["fc1", "fc2"])]
    assert fc.bound.notna().all()  # a linear map always has its bound
    mha = frame[frame.component == "mha"]
    if family in WINDOWED:
        assert mha.definition.str.contains("relative position bias").all()
    if getattr(model, "rope", None) is not None:
        assert mha.definition.str.contains("rope").all()


def _step(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = None
    model.train()
    out = model(images)
    model.eval()
    (out.float().square().mean()).backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    return before


def test_one_step_finetune_trains_exactly_the_component(built):
    _, _, model, images = built
    cmap = component_map(model)
    for train in ("all", *cmap.trainable):
        set_trainable(model, [train], head=False, norm=False)
        expected = {
            n for c in resolve_train_set(cmap, [train]) for n, _ in cmap.named_parameters(c)
        }
        before = _step(model, images)
        graded = {n for n, p in model.named_parameters() if p.grad is not None}
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert graded == expected, train
        assert changed <= expected and changed, train


def test_a_component_the_family_lacks_is_refused_with_what_it_has():
    model, _ = build("vit_tiny_patch16_224", {})
    with pytest.raises(UnknownComponentError, match=r"ls1 not in this vit model; it has: emb,"):
        set_trainable(model, ["ls1"])
    with pytest.raises(UnknownComponentError, match="it has: ln1, mha, ln2, fc1, fc2"):
        component_map(model).module(0, "ls1")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("vit_small_patch16_18x2_224", "ParallelThingsBlock is not supported: each block has"),
        ("samvit_base_patch16", "sam .*windowed blocks"),
    ],
)
def test_refused_models_are_one_line_naming_supported_families(name, message):
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, depth=2)
    with pytest.raises(TypeError, match=message) as info:
        component_map(model)
    text = str(info.value)
    assert "\n" not in text and "supported families: vit, deit-distilled, vit-relpos" in text


def test_swiglu_fc1_is_both_projections_stacked_and_packed_glu_its_one_linear():
    model, images = build("eva02_base_patch14_224", {})
    cmap, mlp = component_map(model), model.blocks[0].mlp
    fc1 = cmap.module(0, "fc1")
    assert torch.equal(fc1.weight, torch.cat([mlp.fc1_g.weight, mlp.fc1_x.weight]))
    assert fc1.weight.shape == (2 * mlp.fc2.in_features, 64)
    names = [n for n, _ in cmap.named_parameters("fc2") if n.startswith("blocks.0.")]
    assert names == [f"blocks.0.mlp.{m}.{p}" for m in ("norm", "fc2") for p in ("weight", "bias")]
    x, y = cmap.embed(images[:2]).detach(), cmap.embed(images[2:]).detach()
    ratio = pair_ratios(cmap, images[:2], images[2:], components=["fc1"])[:, 0, 0]
    by_hand = (torch.cat([mlp.fc1_g(x) - mlp.fc1_g(y), mlp.fc1_x(x) - mlp.fc1_x(y)], -1)).flatten(1)
    expected = by_hand.norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert ratio.dtype == torch.float64  # norms accumulate in float64 (issue 10.1)
    assert torch.allclose(ratio, expected.double(), rtol=1e-4)
    packed = component_map(build("eva02_tiny_patch14_224", {})[0])
    assert packed.module(0, "fc1") is packed.block(0).mlp.fc1  # GluMlp: one 2H-wide linear
    assert packed.module(0, "fc1").out_features == 2 * packed.block(0).mlp.fc2.in_features


def test_mha_with_rope_is_measured_as_the_model_computes_it():
    model, images = build("vit_base_patch16_rope_224", {})
    cmap = component_map(model)
    with torch.no_grad():
        h = cmap.embed(images)
        rope = model.rope.get_embed()
        direct = model.blocks[1].attn(h, rope=rope)
        wrapped = cmap.module(1, "mha")(h)
    assert torch.equal(direct, wrapped)
    ratio = pair_ratios(cmap, images[:2], images[2:], components=["mha"])[:, 1, 0]
    fx, fy = direct.chunk(2)
    x, y = h.chunk(2)
    expected = (fx - fy).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert torch.allclose(ratio, expected.double(), rtol=1e-4)  # ratios are float64


def test_models_families_cli_lists_every_family_and_refusal():
    import json

    from typer.testing import CliRunner

    from vitplas.cli.app import app

    result = CliRunner().invoke(app, ["models", "--families", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["family"]: row for row in json.loads(result.output)}
    assert [n for n, r in rows.items() if r["supported"] == "yes"] == [f.name for f in FAMILIES]
    assert rows["eva"]["layerscale"] == "gamma_1/2"
    assert rows["beit"]["bounds"] == "all; mha NaN: relative position bias"
    assert rows["sam"]["supported"] == "no"
    table = CliRunner().invoke(app, ["models", "--families"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "naflexvit" in table.output


def test_timm_loader_refuses_in_one_line():
    from vitplas.models import ModelError, load_model

    with pytest.raises(ModelError) as info:
        load_model("vit_small_patch16_18x2_224", random_init=True, img_size=32)
    assert "\n" not in str(info.value)
    assert "ParallelThingsBlock is not supported" in str(info.value)


def test_parallel_block_measures_mha_and_fc1_apart_and_trains_them_only_together():
    model, images = build("vit_large_patch14_xp_224", {"qk_norm": False, "qkv_bias": True})
    cmap, block = component_map(model), model.blocks[0]
    assert cmap.block_components == ("ln1", "mha", "fc1", "fc2", "in_proj")  # no LayerScale
    assert "mha" not in cmap.trainable and "fc1" not in cmap.components
    with torch.no_grad():
        x = cmap.embed(images)
        y = block.in_norm(x)
        mlp = block.mlp_out_proj(block.mlp_act(cmap.module(0, "fc1")(y)))
        by_parts = x + block.ls(cmap.module(0, "mha")(y) + mlp)
        assert torch.allclose(by_parts, block(x), atol=1e-5)
    with pytest.raises(UnknownComponentError, match=r"'mha' of this .* cannot be trained alone"):
        set_trainable(model, ["mha"])
    frame = layer_bounds(cmap, cmap.block_components, n_tokens=5, radius=1.0, width=64, r_max=1.0)
    bound = frame.set_index(["layer", "component"]).bound
    assert bound[(0, "mha")] > 0 and bound[(0, "fc1")] > 0  # no q/k norm: the formula holds
    assert math.isnan(bound[(0, "in_proj")]) and math.isnan(bound[(0, "ln1")])  # RmsNorm


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("eva02_base_patch14_224", {}),  # SwiGLU fc1
        ("vit_small_patch16_dinov3", {}),  # gamma_1 / gamma_2, rope
        ("vit_large_patch14_xp_224", {"qkv_bias": False}),  # parallel: mha, fc1 from in_proj
    ],
)
def test_probe_hooks_see_each_component_output_in_the_models_own_forward(name, extra):
    from vitplas.training.probe import extract_features, probe_points

    model, images = build(name, extra)
    cmap = component_map(model)
    points = probe_points(model, layers=[0], components=["all"])
    loader = [(images, torch.arange(4))]
    feats, labels = extract_features(model, loader, points, pool="mean")
    assert labels.tolist() == [0, 1, 2, 3]
    with torch.no_grad():  # block 0 reads the embedding output h
        h = cmap.embed(images)
        y = cmap.module(0, "ln1")(h)
        expected = {"mha": cmap.module(0, "mha")(y)}
        if "ls1" in cmap.block_components:
            expected["ls1"] = cmap.module(0, "ls1")(expected["mha"])
        if "ln2" in cmap.block_components:  # pre-norm: the MLP reads ln2(h + ls1(mha))
            y = cmap.module(0, "ln2")(h + expected.get("ls1", expected["mha"]))
        expected["fc1"] = cmap.module(0, "fc1")(y)
    assert set(expected) <= {c for _, c in points}
    assert ("ls1" in expected) == (name == "vit_small_patch16_dinov3")
    for comp, out in expected.items():
        assert torch.allclose(feats[(0, comp)], out.mean(dim=1), atol=1e-4), comp
