"""The code the family registry names: embedding outputs, block arguments, and the small
modules the plasticity estimator calls on a (2B, N, D) token batch.

- EMBEDDERS[kind](model, images (B, C, H, W)) -> tokens (B, N, D): what the first block reads.
- CONTEXTS[kind](model, n_tokens, depth) -> per-layer keyword arguments of the blocks (rotary
  embeddings, a shared relative position bias), computed as the model computes them.
- BoundCall(module, kwargs): calls module(x, **kwargs(x)), so MHA with rope or a relative position
  bias is measured as the model computes it through the estimator's generic path.
- GammaScale(gamma): EVA/BEiT's gamma_1/gamma_2 as a LayerScale-like module (x * gamma).
- stacked_linear(a, b): SwiGLU's fc1_g and fc1_x as one bias-free nn.Linear [W_g; W_x]:
  f(x) - f(y) = [W_g; W_x](x - y), so FC1's plasticity and bound read both projections.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class BoundCall(nn.Module):
    """module(x, **kwargs(x)). Forward hooks registered on it go to the wrapped module, which is
    the one the model's own forward calls."""

    def __init__(self, module: nn.Module, kwargs: Callable[[torch.Tensor], dict]) -> None:
        super().__init__()
        self.inner = module
        self.kwargs = kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x, **self.kwargs(x))

    def __getattr__(self, name: str) -> Any:
        """Attributes it lacks are the wrapped module's (num_heads, q_norm, scale...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "inner":
                raise
            return getattr(self.inner, name)

    def register_forward_hook(self, hook, *args, **kwargs):  # type: ignore[override]
        return self.inner.register_forward_hook(hook, *args, **kwargs)


class GammaScale(nn.Module):
    """x * gamma for a (D,) gamma parameter held by a block (not a module of its own)."""

    def __init__(self, gamma: nn.Parameter) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def stacked_linear(first: nn.Linear, second: nn.Linear) -> nn.Linear:
    """A bias-free nn.Linear whose weight is [W_first; W_second] (a copy, no gradient)."""
    weight = torch.cat([first.weight.detach(), second.weight.detach()])  # (2H, D)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    return linear


def sliced_qkv(q: nn.Linear, k: nn.Linear, v: nn.Linear) -> nn.Linear:
    """Separate q/k/v projections as one fused (3A, D) linear, rows ordered (q|k|v)."""
    weight = torch.cat([q.weight.detach(), k.weight.detach(), v.weight.detach()])
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    return linear


def rows_linear(linear: nn.Linear, rows: slice, bias: torch.Tensor | None = None) -> nn.Linear:
    """Rows `rows` of `linear` as a new nn.Linear (copies, no gradient); bias: its own or given."""
    weight = linear.weight.detach()[rows]
    if bias is None and linear.bias is not None:
        bias = linear.bias.detach()[rows]
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    out.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        out.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return out


class ParallelAttention(nn.Module):
    """The attention of a parallel-scaling block alone: q/k/v from the last 3D rows of its
    fused in_proj, q/k norms, softmax attention, attn_out_proj. Other attributes (num_heads,
    q_norm, scale...) are the block's."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def attention_parts(self) -> tuple[nn.Linear, nn.Linear, int]:
        hidden = self.block.in_split[0]
        qkv = rows_linear(self.block.in_proj, slice(hidden, None))
        return qkv, self.block.attn_out_proj, self.block.num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blk, (b, n, _) = self.block, x.shape
        qkv, proj, heads = self.attention_parts()
        q, k, v = qkv(x).view(b, n, 3, heads, blk.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(blk.q_norm(q), blk.k_norm(k), v, scale=blk.scale)
        return proj(out.transpose(1, 2).reshape(b, n, heads * blk.head_dim))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "block":
                raise
            return getattr(self.block, name)


def parallel_fc1(block: nn.Module) -> nn.Linear:
    """A parallel-scaling block's MLP input projection: the first H rows of in_proj."""
    hidden = block.in_split[0]
    return rows_linear(block.in_proj, slice(0, hidden), block.mlp_bias)


PROBES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "parallel_mha": ParallelAttention,
    "parallel_fc1": parallel_fc1,
}


def patch_size(embed: nn.Module) -> tuple[int, int]:
    """(height, width) in pixels of one token of a timm patch embedding (a hybrid's stride
    included: its backbone's reduction times its own patch)."""
    patch = getattr(embed, "patch_size", None)
    if patch is None:
        raise ValueError(f"{type(embed).__name__} has no patch_size; cannot tell a token's size")
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    ratio = getattr(embed, "feature_ratio", None)  # HybridEmbed: backbone reduction
    if ratio is not None:
        rh, rw = (ratio, ratio) if isinstance(ratio, int) else tuple(ratio)
        ph, pw = ph * rh, pw * rw
    return int(ph), int(pw)


def _embed_vit(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    x = model.patch_embed(images)
    x = model._pos_embed(x)  # cls/dist/register tokens + position embedding
    x = model.patch_drop(x)
    return model.norm_pre(x)


def _embed_eva(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    x, _ = model._pos_embed(model.patch_embed(images))  # the rope is the blocks' context
    return model.norm_pre(x)


def _embed_beit(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    x = model.patch_embed(images)
    x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    if model.pos_embed is not None:
        x = x + model.pos_embed
    return model.pos_drop(x)


def _embed_relpos(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    x = model.patch_embed(images)
    if model.cls_token is not None:
        x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    return x


def _embed_naflex(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    x, _ = model.embeds(images)
    return model.norm_pre(x)


EMBEDDERS: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "vit": _embed_vit,
    "eva": _embed_eva,
    "beit": _embed_beit,
    "relpos": _embed_relpos,
    "naflex": _embed_naflex,
}


def token_grid(model: nn.Module, n_tokens: int) -> tuple[int, int]:
    """The (rows, cols) patch grid of a sequence of n_tokens (prefix tokens excluded): the
    model's own grid if the count matches, else a square one."""
    n_patches = n_tokens - int(getattr(model, "num_prefix_tokens", 0))
    embed = getattr(model, "patch_embed", None) or getattr(model, "embeds", None)
    grid = getattr(embed, "grid_size", None) or getattr(embed, "pos_embed_grid_size", None)
    if grid is not None and math.prod(grid) == n_patches:
        return int(grid[0]), int(grid[1])
    side = math.isqrt(max(n_patches, 0))
    if side * side != n_patches or side == 0:
        raise ValueError(
            f"{n_tokens} tokens ({n_patches} patches) form no known grid for this model; "
            "measure on images of the model's input size"
        )
    return side, side


def _rope(model: nn.Module, n_tokens: int, depth: int) -> list[dict[str, Any]]:
    rope = getattr(model, "rope", None)
    if rope is None:
        return [{}] * depth
    grid = token_grid(model, n_tokens)
    embed = rope.get_embed(shape=list(grid))
    if getattr(model, "rope_mixed", False) or getattr(model, "rope_is_mixed", False):
        return [{"rope": embed[i]} for i in range(depth)]  # one rope per block
    return [{"rope": embed}] * depth


def _beit(model: nn.Module, n_tokens: int, depth: int) -> list[dict[str, Any]]:
    if model.rel_pos_bias is None:
        return [{}] * depth
    return [{"shared_rel_pos_bias": model.rel_pos_bias()}] * depth


def _relpos(model: nn.Module, n_tokens: int, depth: int) -> list[dict[str, Any]]:
    if model.shared_rel_pos is None:
        return [{}] * depth
    return [{"shared_rel_pos": model.shared_rel_pos.get_bias()}] * depth


CONTEXTS: dict[str, Callable[[nn.Module, int, int], list[dict[str, Any]]]] = {
    "none": lambda model, n_tokens, depth: [{}] * depth,
    "rope": _rope,
    "beit": _beit,
    "relpos": _relpos,
}
