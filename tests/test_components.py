"""The component map on tiny timm ViTs (MLP ratio 3, LayerScale) and on ViT-B/16's sizes."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from vitplas.models.components import (
    UnknownComponentError,
    component_map,
    count_parameters,
    parse_components,
    set_trainable,
)

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_ratio=3.0)


def tiny_vit(**extra) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(**{**TINY, "num_classes": 7, **extra}).eval()


def test_component_map_reads_widths_from_modules_with_mlp_ratio_3():
    model = tiny_vit()
    cmap = component_map(model)
    assert cmap.depth == 2
    assert cmap.block_components == ("ln1", "mha", "ln2", "fc1", "fc2")
    for layer in range(2):
        fc1, fc2 = cmap.module(layer, "fc1"), cmap.module(layer, "fc2")
        assert fc1 is model.blocks[layer].mlp.fc1 and fc2 is model.blocks[layer].mlp.fc2
        assert (fc1.in_features, fc1.out_features) == (48, 144)
        assert (fc2.in_features, fc2.out_features) == (144, 48)
        assert cmap.module(layer, "ln1") is model.blocks[layer].norm1
        assert cmap.module(layer, "ln2") is model.blocks[layer].norm2
        qkv, proj, heads = cmap.attention_parts(layer)
        assert qkv is model.blocks[layer].attn.qkv and proj is model.blocks[layer].attn.proj
        assert (qkv.out_features, proj.in_features, heads) == (144, 48, 3)


def test_component_map_of_layerscale_vit_has_ls1_ls2():
    model = tiny_vit(init_values=1e-5)
    cmap = component_map(model)
    assert cmap.block_components == ("ln1", "mha", "ln2", "fc1", "fc2", "ls1", "ls2")
    names = [name for name, _ in cmap.named_parameters("ls1")]
    assert names == ["blocks.0.ls1.gamma", "blocks.1.ls1.gamma"]
    for _, gamma in cmap.named_parameters("ls2"):
        assert gamma.shape == (48,)
        assert torch.allclose(gamma, torch.full((48,), 1e-5))
    assert count_parameters(model)["ls1"] == 2 * 48


def test_set_trainable_mha_trains_exactly_attention_head_and_final_norm():
    model = tiny_vit()
    trained = set_trainable(model, ["mha"])
    expected = {
        f"blocks.{i}.attn.{lin}.{p}"
        for i in range(2)
        for lin in ("qkv", "proj")
        for p in ("weight", "bias")
    }
    expected |= {"head.weight", "head.bias", "norm.weight", "norm.bias"}
    requires = {n for n, p in model.named_parameters() if p.requires_grad}
    assert requires == expected
    assert list(trained) == ["mha", "head", "norm"]
    assert {n for names in trained.values() for n in names} == expected


def test_set_trainable_without_head_and_norm_and_all():
    model = tiny_vit()
    set_trainable(model, "fc2", head=False, norm=False)
    requires = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert requires == [f"blocks.{i}.mlp.fc2.{p}" for i in range(2) for p in ("bias", "weight")]
    set_trainable(model, "all")
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_component_names_error_naming_choices():
    with pytest.raises(UnknownComponentError, match=r"'mlp' is unknown; known: emb, ln1, mha"):
        parse_components(["mha", "mlp"])
    with pytest.raises(UnknownComponentError, match="known"):
        set_trainable(tiny_vit(), ["attention"])
    cmap = component_map(tiny_vit())
    with pytest.raises(UnknownComponentError, match="it has: ln1, mha, ln2, fc1, fc2"):
        cmap.module(0, "ls1")


def test_count_parameters_vit_b16_matches_paper():
    # Meta device: the sizes of timm's ViT-B/16 without allocating or initialising 86M weights.
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    counts = count_parameters(model)
    # PAPER.md section 5: trainable parameters per configuration (blocks only).
    assert counts["ln1"] == counts["ln2"] == 18_432
    assert counts["mha"] == 28_348_416
    assert counts["fc1"] == 28_348_416
    assert counts["fc2"] == 28_320_768
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")


def test_embed_is_patches_plus_cls_plus_position_and_feeds_the_blocks():
    model = tiny_vit()
    cmap = component_map(model)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens = cmap.embed(images)  # (B, 1 + 16, 48)
        # By hand: 8x8 patches through the patch convolution, CLS first, + position embedding.
        patches = F.conv2d(images, model.patch_embed.proj.weight, model.patch_embed.proj.bias, 8)
        patches = patches.flatten(2).transpose(1, 2)  # (B, 16, 48)
        cls = model.cls_token.expand(2, -1, -1)
        by_hand = torch.cat([cls, patches], dim=1) + model.pos_embed
        # The embedding output is the first part of forward_features: blocks + norm finish it.
        x = tokens
        for block in model.blocks:
            x = block(x)
        features = model.norm(x)
        reference = model.forward_features(images)
    assert tokens.shape == (2, 17, 48)
    assert torch.allclose(tokens, by_hand, atol=1e-6)
    assert torch.allclose(features, reference, atol=1e-6)


def test_component_map_rejects_non_vit():
    with pytest.raises(TypeError, match="not a supported model family"):
        component_map(torch.nn.Linear(2, 2))


def test_attention_pool_is_the_pool_component_trained_by_all_only():
    model = tiny_vit(global_pool="map", class_token=False, norm_layer=None)
    cmap = component_map(model)
    pool = [n for n, _ in cmap.named_parameters("pool")]
    assert pool and all(n.startswith("attn_pool.") for n in pool)
    set_trainable(model, ["mha"])
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in pool)
    trained = set_trainable(model, ["all"])
    assert "pool" in trained and all(p.requires_grad for p in model.parameters())


def test_norm_pre_and_registers_are_emb():
    model = tiny_vit(pre_norm=True, reg_tokens=2)
    names = {n for n, _ in component_map(model).named_parameters("emb")}
    assert {"norm_pre.weight", "norm_pre.bias", "reg_token", "cls_token", "pos_embed"} <= names
