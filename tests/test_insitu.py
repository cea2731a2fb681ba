"""inputs="insitu": each component measured on what it receives in the model's own forward pass,
checked against a reference built from forward hooks on timm's own modules during
forward_features (float64 models, 2 blocks, width 64), for every block kind of the registry."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import timm
import torch

from vitplas.analysis.bound_table import layer_bounds
from vitplas.analysis.plasticity import pair_ratios
from vitplas.analysis.setup import mode_radius
from vitplas.models.components import component_map
from vitplas.models.families import type_key

SMALL = dict(depth=2, embed_dim=64, num_heads=4, num_classes=5)
MODELS = {  # name -> extra timm kwargs; together every block type the registry knows
    "vit_small_patch14_reg4_dinov2": {},  # Block with LayerScale, register tokens
    "vit_base_patch16_rpn_224": {},  # ResPostBlock (norms after attention / MLP)
    "vit_relpos_small_patch16_224": {},  # RelPosBlock
    "vit_relpos_small_patch16_rpn_224": {},  # ResPostRelPosBlock
    "eva02_base_patch14_224": {},  # EvaBlock: SwiGLU, rope, the MLP's inner norm
    "vit_small_patch16_dinov3": {},  # EvaBlock: gamma_1 / gamma_2, rope
    "eva02_enormous_patch14_clip_224": {},  # EvaBlockPostNorm
    "beit_base_patch16_224": {},  # beit.Block: relative position bias, gamma
    "vit_large_patch14_xp_224": {"qk_norm": False, "qkv_bias": True},  # ParallelScalingBlock
    "naflexvit_base_patch16_gap": {},  # NaFlexViT's embedding, vit blocks
}
STANDARD = {  # component -> the timm module whose input and output it is
    "ln1": "norm1",
    "mha": "attn",
    "ls1": "ls1",
    "ln2": "norm2",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
    "ls2": "ls2",
}
PARALLEL = {"ln1": "in_norm", "fc2": "mlp_out_proj", "ls1": "ls", "in_proj": "in_proj"}


def tiny(name: str, extra: dict) -> tuple[torch.nn.Module, torch.Tensor]:
    """A float64 2-block random `name` and 4 images of 2x2 patches (3x3 when windowed)."""
    torch.manual_seed(0)
    with torch.device("meta"):
        probe = timm.create_model(name, pretrained=False, **{**SMALL, **extra})
    ph, _ = component_map(probe).patch_size()
    side = 3 if component_map(probe).family.name in ("vit-relpos", "beit") else 2
    model = timm.create_model(name, pretrained=False, img_size=side * ph, **{**SMALL, **extra})
    model = model.double().eval()
    with torch.no_grad():  # no zero-initialised weight, gamma or bias
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, dtype=param.dtype))
    gen = torch.Generator().manual_seed(1)
    return model, torch.randn(4, 3, side * ph, side * ph, generator=gen, dtype=torch.float64)


def recorded(model: torch.nn.Module, images: torch.Tensor) -> list[dict]:
    """Per block, {module path: (first input, output)} of every submodule, from hooks during
    model.forward_features(images)."""
    records: list[dict] = [{} for _ in model.blocks]
    handles = []
    for layer, block in enumerate(model.blocks):
        for path, module in block.named_modules():

            def keep(_m, args, out, path=path, layer=layer):
                records[layer][path] = (args[0] if args else None, out)

            handles.append(module.register_forward_hook(keep))
    with torch.no_grad():
        model.forward_features(images)
    for handle in handles:
        handle.remove()
    return records


def reference_io(block: torch.nn.Module, rec: dict, name: str):
    """(input, output) of component `name` in one block, read off the hooked modules."""
    if type_key(block) == "vision_transformer.ParallelScalingBlock":
        hidden = block.in_split[0]
        if name == "mha":
            return rec["in_proj"][0], rec["attn_out_proj"][1]
        if name == "fc1":
            out = rec["in_proj"][1][..., :hidden]
            return rec["in_proj"][0], out if block.mlp_bias is None else out + block.mlp_bias
        return rec[PARALLEL[name]]
    if name in ("ls1", "ls2") and hasattr(block, "gamma_1"):  # EVA / BEiT gamma parameters
        branch = rec["attn" if name == "ls1" else "mlp"][1]
        return branch, branch * getattr(block, "gamma_1" if name == "ls1" else "gamma_2")
    if name == "fc1" and "mlp.fc1_x" in rec:  # SwiGLU: both projections, stacked
        return rec["mlp.fc1_x"][0], torch.cat([rec["mlp.fc1_g"][1], rec["mlp.fc1_x"][1]], -1)
    return rec[STANDARD[name]]


def frob(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).norm(dim=1)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_insitu_equals_a_forward_hook_reference(name):
    model, images = tiny(name, MODELS[name])
    cmap = component_map(model)
    ratios = pair_ratios(cmap, images[:2], images[2:], inputs="insitu")  # (2, L, C)
    rec_x, rec_y = recorded(model, images[:2]), recorded(model, images[2:])
    expected = torch.empty_like(ratios)
    for layer, block in enumerate(model.blocks):
        for c, comp in enumerate(cmap.block_components):
            (in_x, out_x) = reference_io(block, rec_x[layer], comp)
            (in_y, out_y) = reference_io(block, rec_y[layer], comp)
            expected[:, layer, c] = frob(out_x - out_y) / frob(in_x - in_y)
    assert ratios.dtype == torch.float64
    assert (ratios - expected).abs().max() < 1e-6, (ratios - expected).abs().amax((0, 1))


def test_insitu_differs_from_hidden_where_the_inputs_differ():
    model, images = tiny("vit_small_patch14_reg4_dinov2", {})
    cmap = component_map(model)
    comps = list(cmap.block_components)
    insitu = pair_ratios(cmap, images[:2], images[2:], inputs="insitu")
    hidden = pair_ratios(cmap, images[:2], images[2:], inputs="hidden")
    ln1, mha, fc2 = (comps.index(c) for c in ("ln1", "mha", "fc2"))
    assert torch.allclose(insitu[..., ln1], hidden[..., ln1], rtol=1e-12)  # both: block input
    assert not torch.allclose(insitu[..., mha], hidden[..., mha], rtol=1e-3)  # LN1 in front
    assert not torch.allclose(insitu[..., fc2], hidden[..., fc2], rtol=1e-3)  # no zero padding


def test_unknown_input_mode_names_the_three():
    model, images = tiny("vit_small_patch14_reg4_dinov2", {})
    with pytest.raises(ValueError, match="choose one of embedding, hidden, insitu"):
        pair_ratios(component_map(model), images[:2], images[2:], inputs="residual")


def test_insitu_radius_is_mhas_own_input_and_fc2_has_no_padded_bound():
    model, images = tiny("vit_small_patch14_reg4_dinov2", {})
    cmap = component_map(model)
    radius, n_tokens = mode_radius(cmap, [images[:3], images[3:]], max_images=4, inputs="insitu")
    rec = recorded(model, images)  # MHA reads LN1's output, token RMS averaged over images
    by_hand = torch.stack([r["norm1"][1].square().sum(-1).mean(-1).sqrt().mean() for r in rec])
    assert torch.allclose(radius, by_hand, rtol=1e-12) and radius.shape == (2,)
    hidden, _ = mode_radius(cmap, [images], max_images=4, inputs="hidden")
    assert not torch.allclose(radius, hidden, rtol=1e-3)  # the block input, LN1 not applied
    sizes = {"n_tokens": n_tokens, "radius": radius.tolist(), "ln_bound": "abs"}
    insitu = layer_bounds(cmap, cmap.block_components, width=None, **sizes)
    padded = layer_bounds(cmap, cmap.block_components, width=64, **sizes)
    fc2 = insitu.component == "fc2"
    assert insitu[fc2].bound_padded.isna().all() and padded[fc2].bound_padded.gt(0).all()
    assert insitu.bound.equals(padded.bound)  # ||W||_2 and the rest do not depend on padding
    assert list(insitu[insitu.component == "mha"].radius) == radius.tolist()


def test_every_command_that_takes_inputs_takes_insitu(tmp_path):
    from typer.testing import CliRunner

    from vitplas.cli import app

    def run(*args):
        result = CliRunner().invoke(app, [*args, "--device", "cpu"])
        assert result.exit_code == 0, result.output
        return result.output

    tiny_model = ["--model", "tiny-random", "--random-init"]
    run("plasticity", *tiny_model, "--target", "digits", "--pairs", "8", "--batch-size", "4",
        "--inputs", "insitu", "figures=false", "--out", str(tmp_path / "p"))  # fmt: skip
    table = pd.read_csv(tmp_path / "p" / "plasticity.csv")
    assert (table.inputs == "insitu").all() and table["mean"].gt(0).all()
    bounds = pd.read_csv(tmp_path / "p" / "bounds.csv")
    mha = bounds[bounds.component == "mha"]
    assert mha.radius.nunique() == len(mha)  # r per layer: MHA's input in each block
    assert bounds[bounds.component == "fc2"].bound_padded.isna().all()
    out = run("radius", *tiny_model, "--dataset", "digits", "--inputs", "insitu",
              "--out", str(tmp_path / "r"))  # fmt: skip
    assert "(MHA's input in block 0, digits/test, 256 images)" in out
    r = json.loads((tmp_path / "r" / "radius.json").read_text())["radius"]
    assert r == pytest.approx(list(mha.radius), rel=1e-6)  # the same 256 images, the same r
    run("bounds", *tiny_model, "--dataset", "digits", "--inputs", "insitu", "figures=false",
        "--plasticity", str(tmp_path / "p"), "--out", str(tmp_path / "b"))  # fmt: skip
    again = pd.read_csv(tmp_path / "b" / "bounds.csv").radius  # in batches of 32, not 4
    assert again.tolist() == pytest.approx(bounds.radius.tolist(), rel=1e-12)
    run("select", *tiny_model, "--target", "digits", "--criteria", "plasticity", "--pairs", "8",
        "--inputs", "insitu", "--out", str(tmp_path / "s"))  # fmt: skip
    scores = pd.read_csv(tmp_path / "s" / "selection.csv")
    assert scores.criterion.eq("plasticity").all() and scores.score.gt(0).all()
