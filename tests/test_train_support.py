"""Shared pieces for the training tests: a tiny ViT (MLP ratio 3, not 4) and toy data."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import TensorDataset

from vitplas.training.config import FinetuneConfig, load_finetune_config
from vitplas.training.sources import Sources

NUM_CLASSES = 4


def tiny_vit(num_classes: int = NUM_CLASSES, seed: int = 0) -> VisionTransformer:
    """img 32, patch 8, dim 48, depth 2, 3 heads, MLP ratio 3; weights from `seed`."""
    torch.manual_seed(seed)
    return VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=3,
        mlp_ratio=3.0,
        num_classes=num_classes,
    )


def toy_data(n: int = 64, seed: int = 0) -> TensorDataset:
    """Images whose mean colour depends on the class, so a model can learn them."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    images = torch.randn(n, 3, 32, 32, generator=gen)
    images[:, 0] += labels.view(-1, 1, 1).float() - 1.5
    return TensorDataset(images, labels)


def toy_sources(model_seed: int = 0, n: int = 64) -> Sources:
    data = toy_data(n)
    return Sources(
        model=tiny_vit(seed=model_seed),
        train=data,
        val=toy_data(32, seed=1),
        test=toy_data(32, seed=2),
        num_classes=NUM_CLASSES,
        description={"model_description": "tiny random ViT (test)"},
    )


def toy_config(*overrides: str) -> FinetuneConfig:
    """A fast config: 12 steps of batch 16, warmup 3, eval every 4, no TensorBoard."""
    base = [
        "model=tiny",
        "dataset=toy",
        "steps=12",
        "warmup_steps=3",
        "batch_size=16",
        "eval_every=4",
        "log_every=1",
        "num_workers=0",
        "lr=0.05",
        "tensorboard=false",
        "device=cpu",
        "img_size=32",
    ]
    return load_finetune_config(None, [*base, *overrides])


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


TIMING_KEYS = {"step_time_s", "images_per_s", "wall_time_s", "data_wait_s"}


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]
