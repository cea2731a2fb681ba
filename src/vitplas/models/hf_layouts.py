"""Key layouts of Hugging Face vision transformers and the timm models they become.

One `Layout` per HF `model_type` (ViT, DeiT, DINOv2, BEiT): how its checkpoint keys
(transformers' saved layout, `encoder.layer.N.attention.attention.query...`) are renamed to
timm's, which q/k/v tensors are fused into `qkv` (rows stacked q | k | v, as timm splits
them), which keys have no place in timm (dropped), and the timm model built from config.json.
Every other key is an error; `vitplas.models.hf` then checks every timm key and shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from vitplas.models.errors import ModelError, short_list

_LAYER = r"encoder\.layer\.(\d+)\."
# The ViT encoder layout, shared by ViT and DeiT (and BEiT's MLP and norms).
_VIT_RENAMES = (
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (_LAYER + r"layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (_LAYER + r"attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (_LAYER + r"layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (_LAYER + r"intermediate\.dense\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (_LAYER + r"output\.dense\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
)
_QKV_ALL = re.compile(_LAYER + r"attention\.attention\.(query|key|value)\.(weight|bias)")
_QKV_WEIGHTS = re.compile(_LAYER + r"attention\.attention\.(query|key|value)\.(weight)")
_QKV_ORDER = ("query", "key", "value")


@dataclass(frozen=True)
class Layout:
    """How one HF model type maps onto timm. `prefix`: the task models' wrapper ("vit.")."""

    model_type: str
    prefix: str
    renames: tuple[tuple[str, str], ...]
    fused: re.Pattern[str]
    dropped: re.Pattern[str]
    build: Callable[[Mapping[str, Any], int, bool], nn.Module]
    head: str  # the timm key whose rows are the class count ("" = the layout has no head)
    adjust: Callable[[dict[str, torch.Tensor]], None] | None = None  # tensors timm lays out
    # otherwise (after renaming), changed in place

    def to_timm(self, hf: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename an HF state dict to timm keys; fuse q, k, v. Unknown keys are an error."""
        state: dict[str, torch.Tensor] = {}
        qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        unknown = []
        for name, tensor in hf.items():
            short = name.removeprefix(self.prefix)
            if self.dropped.fullmatch(short):
                continue
            if match := self.fused.fullmatch(short):
                layer, part, kind = match.groups()
                qkv.setdefault((layer, kind), {})[part] = tensor
                continue
            for pattern, target in self.renames:
                if re.fullmatch(pattern, short):
                    state[re.sub(pattern, target, short)] = tensor
                    break
            else:
                unknown.append(name)
        if unknown:
            raise ModelError(
                f"HF {self.model_type} keys with no timm counterpart: {short_list(sorted(unknown))}"
            )
        for (layer, kind), parts in sorted(qkv.items()):
            if set(parts) != set(_QKV_ORDER):
                raise ModelError(
                    f"layer {layer} {kind}: has {sorted(parts)}, needs query, key, value"
                )
            # (3*D, D) weight or (3*D,) bias: timm reshapes qkv output to (3, heads, head_dim).
            state[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts[p] for p in _QKV_ORDER])
        if self.adjust is not None:
            self.adjust(state)
        return state

    def num_classes(self, state: Mapping[str, torch.Tensor]) -> int:
        return int(state[self.head].shape[0]) if self.head in state else 0


def _vit_kwargs(config: Mapping[str, Any], num_classes: int, eps: float) -> dict[str, Any]:
    """timm VisionTransformer-style arguments of an HF ViT-like config."""
    dim = int(config["hidden_size"])
    if "mlp_ratio" in config:  # DINOv2's configs give the ratio
        ratio = float(config["mlp_ratio"])
    else:
        hidden = int(config["intermediate_size"])
        ratio = hidden / dim
        if int(dim * ratio) != hidden:
            raise ModelError(f"MLP width {hidden} is not representable as dim {dim} x a ratio")
    return dict(
        img_size=int(config.get("image_size", 224)),
        patch_size=int(config.get("patch_size", 16)),
        in_chans=int(config.get("num_channels", 3)),
        num_classes=num_classes,
        embed_dim=dim,
        depth=int(config["num_hidden_layers"]),
        num_heads=int(config["num_attention_heads"]),
        mlp_ratio=ratio,
        norm_layer=partial(nn.LayerNorm, eps=float(config.get("layer_norm_eps", eps))),
    )


def _device(on_meta: bool) -> torch.device:
    return torch.device("meta" if on_meta else "cpu")


def build_vit(config: Mapping[str, Any], num_classes: int, on_meta: bool) -> nn.Module:
    """timm VisionTransformer with the sizes (and LayerNorm eps) of an HF ViT config."""
    from timm.models.vision_transformer import VisionTransformer

    kwargs = _vit_kwargs(config, num_classes, 1e-12)
    with _device(on_meta):  # HF's classifier reads the CLS token after the final norm
        return VisionTransformer(
            **kwargs, qkv_bias=bool(config.get("qkv_bias", True)), global_pool="token"
        )


def build_deit(config: Mapping[str, Any], num_classes: int, on_meta: bool) -> nn.Module:
    """timm's distilled DeiT: class and distillation tokens; eval logits average both heads,
    as HF's DeiTForImageClassificationWithTeacher does."""
    from timm.models.deit import VisionTransformerDistilled

    kwargs = _vit_kwargs(config, num_classes, 1e-12)
    with _device(on_meta):
        return VisionTransformerDistilled(
            **kwargs, qkv_bias=bool(config.get("qkv_bias", True)), global_pool="token"
        )


def build_dinov2(config: Mapping[str, Any], num_classes: int, on_meta: bool) -> nn.Module:
    """timm VisionTransformer with LayerScale (DINOv2's layout without registers)."""
    from timm.models.vision_transformer import VisionTransformer

    if config.get("use_swiglu_ffn"):
        raise ModelError("HF DINOv2 with a SwiGLU MLP (giant) is not converted; use timm's name")
    kwargs = _vit_kwargs(config, num_classes, 1e-6)
    with _device(on_meta):
        return VisionTransformer(
            **kwargs,
            qkv_bias=bool(config.get("qkv_bias", True)),
            init_values=float(config.get("layerscale_value", 1.0)),
        )


def build_dinov2_registers(config: Mapping[str, Any], num_classes: int, on_meta: bool):
    """DINOv2 with registers: timm's layout has no position embedding on the prefix tokens."""
    from timm.models.vision_transformer import VisionTransformer

    kwargs = _vit_kwargs(config, num_classes, 1e-6)
    with _device(on_meta):
        return VisionTransformer(
            **kwargs,
            qkv_bias=bool(config.get("qkv_bias", True)),
            init_values=float(config.get("layerscale_value", 1.0)),
            reg_tokens=int(config.get("num_register_tokens", 4)),
            no_embed_class=True,
        )


def fold_class_position(state: dict[str, torch.Tensor]) -> None:
    """HF adds the class token's position embedding (row 0) before inserting the registers;
    timm (no_embed_class) has none for prefix tokens: fold row 0 into the class token."""
    pos = state.get("pos_embed")
    if pos is not None and "cls_token" in state:
        state["cls_token"] = state["cls_token"] + pos[:, :1]
        state["pos_embed"] = pos[:, 1:]


def build_beit(config: Mapping[str, Any], num_classes: int, on_meta: bool) -> nn.Module:
    """timm Beit: q/v biases, relative position bias (per layer or shared), LayerScale.
    Built on the CPU even for on_meta: its relative position index is a non-saved buffer."""
    from timm.models.beit import Beit

    kwargs = _vit_kwargs(config, num_classes, 1e-12)
    scale = float(config.get("layer_scale_init_value", 0.1))
    mean_pool = bool(config.get("use_mean_pooling", True))
    return Beit(
        **kwargs,
        global_pool="avg" if mean_pool else "token",
        use_fc_norm=mean_pool,  # HF's pooler: mean of the patch tokens, then a LayerNorm
        use_abs_pos_emb=bool(config.get("use_absolute_position_embeddings", False)),
        use_rel_pos_bias=bool(config.get("use_relative_position_bias", False)),
        use_shared_rel_pos_bias=bool(config.get("use_shared_relative_position_bias", False)),
        init_values=scale if scale > 0 else None,
    )


_HEAD = ((r"classifier\.(weight|bias)", r"head.\1"),)
_BEIT_RENAMES = (
    *_VIT_RENAMES,  # its final `layernorm` exists without mean pooling
    (r"pooler\.layernorm\.(weight|bias)", r"fc_norm.\1"),  # mean pooling: the pooled norm
    (_LAYER + r"attention\.attention\.query\.bias", r"blocks.\1.attn.q_bias"),
    (_LAYER + r"attention\.attention\.value\.bias", r"blocks.\1.attn.v_bias"),
    (
        _LAYER + r"attention\.attention\.relative_position_bias\.relative_position_bias_table",
        r"blocks.\1.attn.relative_position_bias_table",
    ),
    (
        r"encoder\.relative_position_bias\.relative_position_bias_table",
        "rel_pos_bias.relative_position_bias_table",
    ),
    (_LAYER + r"lambda_1", r"blocks.\1.gamma_1"),
    (_LAYER + r"lambda_2", r"blocks.\1.gamma_2"),
    *_HEAD,
)
_DINOV2_RENAMES = (
    *_VIT_RENAMES[:3],
    (_LAYER + r"norm1\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (_LAYER + r"attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (_LAYER + r"layer_scale1\.lambda1", r"blocks.\1.ls1.gamma"),
    (_LAYER + r"norm2\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (_LAYER + r"mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (_LAYER + r"layer_scale2\.lambda1", r"blocks.\1.ls2.gamma"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
)
# Pre-logits poolers (unused by the classifiers), the masked-image-modelling token and the
# relative position index buffers (timm computes its own): no counterpart in timm.
_POOLER_MASK = r"pooler\.dense\.(weight|bias)|embeddings\.mask_token"
_REL_INDEX = (
    r"(encoder\.|encoder\.layer\.\d+\.attention\.attention\.)"
    r"relative_position_bias\.relative_position_index"
)

LAYOUTS = {
    layout.model_type: layout
    for layout in (
        Layout("vit", "vit.", (*_VIT_RENAMES, *_HEAD), _QKV_ALL, re.compile(_POOLER_MASK),
               build_vit, "head.weight"),
        Layout(
            "deit",
            "deit.",
            (
                *_VIT_RENAMES,
                (r"embeddings\.distillation_token", "dist_token"),
                (r"cls_classifier\.(weight|bias)", r"head.\1"),
                (r"distillation_classifier\.(weight|bias)", r"head_dist.\1"),
            ),
            _QKV_ALL,
            re.compile(_POOLER_MASK),
            build_deit,
            "head.weight",
        ),
        Layout("dinov2", "dinov2.", _DINOV2_RENAMES, _QKV_ALL,
               re.compile(r"embeddings\.mask_token"), build_dinov2, ""),
        Layout("dinov2_with_registers", "dinov2_with_registers.",
               (*_DINOV2_RENAMES, (r"embeddings\.register_tokens", "reg_token")), _QKV_ALL,
               re.compile(r"embeddings\.mask_token"), build_dinov2_registers, "",
               fold_class_position),
        Layout("beit", "beit.", _BEIT_RENAMES, _QKV_WEIGHTS,
               re.compile(f"{_POOLER_MASK}|{_REL_INDEX}"), build_beit, "head.weight"),
    )
}  # fmt: skip


def layout_for(model_type: str, where: str) -> Layout:
    if model_type not in LAYOUTS:
        raise ModelError(
            f"{where} describes a '{model_type}' model; vitplas converts Hugging Face "
            f"{', '.join(repr(t) for t in LAYOUTS)} checkpoints (other models: use their timm name)"
        )
    return LAYOUTS[model_type]
