"""FLOPs counted, not derived from a formula: torch.utils.flop_counter.FlopCounterMode
watches real calls (a training step, a forward pass, the plasticity estimator) on a model built
on the meta device, so nothing is allocated and ViT-H at batch 512 costs no memory.

The counter sees matrix products and convolutions (2 FLOPs per multiply-add); element-wise work
(LayerNorm, GELU, softmax, the optimizer's update) is not counted, a few percent of a ViT.

A text model (the text families: BERT, RoBERTa, GPT-2) is built by transformers from its config
on the meta device (the classifier as models.hf_text builds it) and fed a token batch of the
run's max_length, (B, 2, L) int64 as data.pack_tokens packs it (row 0 ids, row 1 mask). Its
calls run under a FakeTensorMode as well: transformers reads the padding mask's values (to skip
an all-real mask), which a meta tensor has not, and builds the mask from shapes alone for a
FakeTensor, which has no data either. The mask is no matrix product: the count is the same.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode


def meta_model(spec: str, img_size: int | None, num_classes: int) -> nn.Module:
    """The architecture of a model spec on the meta device (no weights read, no memory)."""
    from vitplas.models import timm_models
    from vitplas.models.registry import get_preset, is_preset

    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if img_size is not None:
        kwargs["img_size"] = img_size
    if is_preset(spec):
        preset = get_preset(spec)
        if preset.modality == "text":
            return meta_text_model(spec, text_config(spec), img_size, num_classes)
        if preset.source == "random":
            from timm.models.vision_transformer import VisionTransformer

            with torch.device("meta"):
                return VisionTransformer(**{**preset.arch_kwargs, **kwargs})
        kwargs.setdefault("img_size", preset.input_size[-1])  # as load_model builds it
        return timm_models.create(preset.arch, pretrained=False, on_meta=True, **kwargs)
    arch = spec.split("@", 1)[0] if "@" in spec else timm_models.split_name(spec)[0]
    if timm_models.is_timm_vit(arch):
        return timm_models.create(arch, pretrained=False, on_meta=True, **kwargs)
    if (config := text_config(spec)) is not None:
        return meta_text_model(spec, config, img_size, num_classes)
    from vitplas.models.build import load_model  # HF ids, folders: their config, random weights

    return load_model(spec, random_init=True, img_size=img_size, num_classes=num_classes).model.to(
        "meta"
    )


def text_config(spec: str) -> Any | None:
    """The transformers config of a text model spec (a text preset's record, or config.json of
    a folder or hub id of the text families), None for any other spec; no weights read."""
    from vitplas.models import finetuned, hf, hf_text
    from vitplas.models.registry import get_preset, is_preset
    from vitplas.models.sources import hub_access

    if is_preset(spec):
        preset = get_preset(spec)
        return hf_text.config_of(preset) if preset.modality == "text" else None
    if finetuned.run_folder(spec) is not None or not (hf.is_hf_folder(spec) or hf.is_hf_id(spec)):
        return None
    with hub_access():
        files = hf.locate(spec, need_weights=False)
    if not hf_text.is_text_config(files.config):
        return None
    return hf_text.read_config(files.config.parent)


def meta_text_model(spec: str, config: Any, img_size: int | None, num_classes: int) -> nn.Module:
    """A text model on the meta device as models.build loads it: the base model of `config`
    (num_classes 0), else its sequence classifier with `num_classes` labels (hf_text)."""
    from vitplas.models import hf_text
    from vitplas.models.errors import ModelError

    if img_size is not None:
        raise ModelError(f"{spec} is a text model: it has no image size (drop img_size)")
    if getattr(config, "pad_token_id", None) is None:  # GPT-2: its tokenizer pads with eos
        config.pad_token_id = getattr(config, "eos_token_id", None)
    with torch.device("meta"):
        if num_classes:
            return hf_text.classifier_of(config, num_classes)
        return hf_text.random_model(config)


def is_text(model: nn.Module) -> bool:
    """Whether `model` is a transformers model of the text families (it reads token ids)."""
    from vitplas.models.hf_text import TEXT_MODEL_TYPES

    return getattr(getattr(model, "config", None), "model_type", None) in TEXT_MODEL_TYPES


def input_side(model: nn.Module) -> int:
    return int(model.patch_embed.img_size[0])


def input_label(model: nn.Module, length: int | None = None) -> str:
    """What one input of `model` is: '224 px' (an image's side) or '128 tokens' (a text's)."""
    return f"{length} tokens" if is_text(model) else f"{input_side(model)} px"


def batch_of(model: nn.Module, n: int, length: int | None = None) -> torch.Tensor:
    """n inputs of `model` on the meta device: images (n, 3, S, S) at its own side, or for a
    text model token batches (n, 2, length) int64 (ids, mask: data.pack_tokens)."""
    if not is_text(model):
        side = input_side(model)
        return torch.empty(n, 3, side, side, device="meta")
    if length is None:
        raise ValueError("a text model's FLOPs need the sequence length (max_length)")
    return torch.zeros(n, 2, length, dtype=torch.long, device="meta")


def count_flops(fn, fake: bool = False) -> int:
    """FLOPs (2 per multiply-add) of the matrix products and convolutions `fn()` runs; `fake`:
    under a FakeTensorMode too (a text model: module docstring; build the inputs inside)."""
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else nullcontext()
    with mode, FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def train_step_flops(model: nn.Module, cfg: Any) -> tuple[int, int]:
    """(FLOPs, trained parameters) of one optimizer step on a batch of cfg.batch_size images
    (a text model: token batches of cfg.max_length) (all micro-batches: accumulation does not
    change the count): forward, loss, backward, optimizer step, with what cfg.train names
    trained (the peft rivals inject their adapters into `model`: pass a copy)."""
    from vitplas.models.text import forward_logits
    from vitplas.training.optim import build_optimizer
    from vitplas.training.trainsets import build_trainable

    build_trainable(model, cfg.train, head=cfg.train_head, norm=cfg.train_norm, lora=cfg.lora)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trained, cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum)
    length = getattr(cfg, "max_length", None)

    def step() -> None:
        inputs = batch_of(model, cfg.batch_size, length)
        labels = torch.zeros(cfg.batch_size, dtype=torch.long, device="meta")
        logits = forward_logits(model, inputs).float()
        F.cross_entropy(logits, labels, reduction="sum").backward()
        optimizer.step()

    flops = count_flops(step, fake=is_text(model))
    model.zero_grad(set_to_none=True)
    return flops, sum(p.numel() for p in trained)


def forward_flops(model: nn.Module, length: int | None = None) -> int:
    """FLOPs of one image (a text model: one text of `length` tokens) through the model
    (evaluation, features)."""

    def forward() -> None:
        x = batch_of(model, 1, length)
        model(input_ids=x[:, 0], attention_mask=x[:, 1]) if is_text(model) else model(x)

    with torch.no_grad():
        return count_flops(forward, fake=is_text(model))


def pair_flops(model: nn.Module, inputs: str = "embedding", length: int | None = None) -> int:
    """FLOPs of one image pair (a text model: one pair of `length`-token texts) through the
    plasticity estimator."""
    from vitplas.analysis.plasticity import pair_ratios
    from vitplas.models.components import component_map

    def pair() -> None:
        x = batch_of(model, 1, length)
        pair_ratios(component_map(model), x, x, inputs=inputs)

    return count_flops(pair, fake=is_text(model))


def text_radius_flops(model: nn.Module, inputs: str, length: int) -> int:
    """FLOPs of one text through the token radius of a text model (analysis.text_pairs)."""
    from vitplas.analysis.text_pairs import text_radius
    from vitplas.models.components import component_map

    def radius() -> None:
        text_radius(component_map(model), [batch_of(model, 1, length)], max_images=1,
                    inputs=inputs, device="meta")  # fmt: skip

    return count_flops(radius, fake=True)
