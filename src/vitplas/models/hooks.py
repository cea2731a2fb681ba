"""Small modules that stand for parts of a model without being called by it: a linear map
copied out of a model (a slice of a fused projection, a Conv1D's transposed weight) whose
forward hooks fire when the model runs the module it was taken from, and frozen copies.
families_ops and text_ops build the estimator's probes from them."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def hook_via(owner: nn.Module, source: nn.Module, view: Callable, hook, *args, **kwargs):
    """Register `hook` so that it fires when the model runs `source`, seeing `owner` and the
    output view(inputs, output) that `owner` stands for (the relay never alters the output)."""

    def relay(_module, inputs, output):
        hook(owner, inputs, view(inputs, output))

    return source.register_forward_hook(relay, *args, **kwargs)


class ViewLinear(nn.Linear):
    """A linear map copied out of a model (no gradient) whose forward hooks fire when the model
    runs `source`, with view(inputs, output) as this map's output."""

    def __init__(self, weight: torch.Tensor, bias, source: nn.Module, view: Callable) -> None:
        super().__init__(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)
        if bias is not None:
            self.bias = nn.Parameter(bias.detach(), requires_grad=False)
        self._hook = [source, view]  # a list: not a child module

    def register_forward_hook(self, hook, *args, **kwargs):  # type: ignore[override]
        return hook_via(self, *self._hook, hook, *args, **kwargs)

    def input_site(self) -> tuple[nn.Module, str]:
        return self._hook[0], "input"  # the model's linear that computes this map's rows


def frozen_linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """An nn.Linear holding copies of `weight` (out, in) and `bias`, with no gradient."""
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    out.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    if bias is not None:
        out.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return out


def is_hf_conv1d(module: object) -> bool:
    """Whether `module` is transformers' Conv1D (GPT-2's linear: y = x @ W + b, W (in, out)),
    by its class, not only its name (another library's Conv1D is a convolution); the name is
    checked first, so an image model never imports transformers for it."""
    if type(module).__name__ != "Conv1D":
        return False
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)
