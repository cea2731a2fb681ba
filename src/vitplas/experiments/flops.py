"""FLOPs counted, not derived from a formula: torch.utils.flop_counter.FlopCounterMode
watches real calls (a training step, a forward pass, the plasticity estimator) on a model built
on the meta device, so nothing is allocated and ViT-H at batch 512 costs no memory.

The counter sees matrix products and convolutions (2 FLOPs per multiply-add); element-wise work
(LayerNorm, GELU, softmax, the optimizer's update) is not counted, a few percent of a ViT.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
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
        if preset.source == "random":
            from timm.models.vision_transformer import VisionTransformer

            with torch.device("meta"):
                return VisionTransformer(**{**preset.arch_kwargs, **kwargs})
        kwargs.setdefault("img_size", preset.input_size[-1])  # as load_model builds it
        return timm_models.create(preset.arch, pretrained=False, on_meta=True, **kwargs)
    arch = spec.split("@", 1)[0] if "@" in spec else timm_models.split_name(spec)[0]
    if timm_models.is_timm_vit(arch):
        return timm_models.create(arch, pretrained=False, on_meta=True, **kwargs)
    from vitplas.models.build import load_model  # HF ids, folders: their config, random weights

    return load_model(spec, random_init=True, img_size=img_size, num_classes=num_classes).model.to(
        "meta"
    )


def input_side(model: nn.Module) -> int:
    return int(model.patch_embed.img_size[0])


def count_flops(fn) -> int:
    """FLOPs (2 per multiply-add) of the matrix products and convolutions `fn()` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def train_step_flops(model: nn.Module, cfg: Any) -> tuple[int, int]:
    """(FLOPs, trained parameters) of one optimizer step on a batch of cfg.batch_size images
    (all micro-batches: accumulation does not change the count): forward, loss, backward,
    optimizer step, with what cfg.train names trained (the peft rivals inject their adapters
    into `model`: pass a copy)."""
    from vitplas.training.optim import build_optimizer
    from vitplas.training.trainsets import build_trainable

    build_trainable(model, cfg.train, head=cfg.train_head, norm=cfg.train_norm, lora=cfg.lora)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trained, cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum)
    side = input_side(model)
    images = torch.empty(cfg.batch_size, 3, side, side, device="meta")
    labels = torch.zeros(cfg.batch_size, dtype=torch.long, device="meta")

    def step() -> None:
        F.cross_entropy(model(images).float(), labels, reduction="sum").backward()
        optimizer.step()

    flops = count_flops(step)
    model.zero_grad(set_to_none=True)
    return flops, sum(p.numel() for p in trained)


def forward_flops(model: nn.Module) -> int:
    """FLOPs of one image through the model (evaluation, features)."""
    side = input_side(model)
    images = torch.empty(1, 3, side, side, device="meta")
    with torch.no_grad():
        return count_flops(lambda: model(images))


def pair_flops(model: nn.Module, inputs: str = "embedding") -> int:
    """FLOPs of one image pair through the plasticity estimator."""
    from vitplas.analysis.plasticity import pair_ratios
    from vitplas.models.components import component_map

    side = input_side(model)
    x = torch.empty(1, 3, side, side, device="meta")
    return count_flops(lambda: pair_ratios(component_map(model), x, x, inputs=inputs))
