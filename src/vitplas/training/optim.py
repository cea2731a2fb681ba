"""Optimizers over the parameters that require grad, the warmup + cosine schedule, clipping.

The schedule is a pure function of the step, so resuming needs only the step number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn


def build_optimizer(
    params: Sequence[nn.Parameter],
    name: str,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    betas: Sequence[float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """SGD (momentum, the paper) or AdamW (the paper's ablation) over `params`.

    Only parameters that require grad may be passed: the optimizer then holds no state for
    frozen ones (no memory, no work).
    """
    params = list(params)
    frozen = sum(not p.requires_grad for p in params)
    if frozen:
        raise ValueError(f"{frozen} parameter(s) passed to the optimizer do not require grad")
    if not params:
        raise ValueError("no parameter requires grad; check `train` in the config")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    raise ValueError(f"optimizer '{name}' is unknown; choose sgd or adamw")


WARMUPS = ("paper", "ahead")


def lr_at(
    step: int, *, base_lr: float, warmup_steps: int, total_steps: int, warmup: str = "ahead"
) -> float:
    """Learning rate for update `step` (0-based).

    Warmup, for step < warmup_steps: `paper` (the original) base_lr * step / warmup_steps, so
    the first update uses lr 0; `ahead` base_lr * (step + 1) / warmup_steps, one step ahead,
    reaching base_lr on the last warmup step. Then cosine from base_lr (at step =
    warmup_steps) towards 0 (at step = total_steps):
    base_lr * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2.
    """
    if warmup not in WARMUPS:
        raise ValueError(f"warmup '{warmup}' is unknown; choose {' or '.join(WARMUPS)}")
    if step < warmup_steps:
        return base_lr * (step + (warmup == "ahead")) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def grad_norms(
    named_params: Mapping[str, Sequence[nn.Parameter]],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total L2 norm, {component: L2 norm}) of the gradients, as 0-dim tensors (no sync).

    `named_params` maps a component name to its parameters; a parameter without a gradient
    counts as zero.
    """
    per_component: dict[str, torch.Tensor] = {}
    squares = []
    for name, params in named_params.items():
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            continue
        norms = torch._foreach_norm(grads)  # one fused pass, one norm per tensor
        sq = torch.stack([n.float() for n in norms]).square().sum()
        per_component[name] = sq.sqrt()
        squares.append(sq)
    if not squares:
        return torch.zeros(()), per_component
    total = torch.stack(squares).sum().sqrt()
    return total, per_component


@torch.no_grad()
def clip_gradients(params: Sequence[nn.Parameter], total_norm: torch.Tensor, max_norm: float):
    """Scale gradients by min(1, max_norm / (total_norm + 1e-6)), as clip_grad_norm_ does."""
    grads = [p.grad for p in params if p.grad is not None]
    scale = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    torch._foreach_mul_(grads, scale.to(grads[0].device))
