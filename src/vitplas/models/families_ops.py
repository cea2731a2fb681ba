"""The code the family registry names: embedding outputs, block arguments, and the small
modules the plasticity estimator calls on a (2B, N, D) token batch.

- EMBEDDERS[kind](model, images (B, C, H, W)) -> tokens (B, N, D): what the first block reads
  (text families, models.text_ops: token ids (B, L) -> (B, L, D)).
- PROBES[kind](block, parts): the module the estimator calls for a component whose block entry
  names a probe kind (a parallel block's attention and fc1; text_ops: BERT's and GPT-2's
  attention with its mask, GPT-2's Conv1D linears); MASKS (text_ops): the blocks' masks.
- CONTEXTS[kind](model, n_tokens, depth) -> per-layer keyword arguments of the blocks (rotary
  embeddings, a shared relative position bias), computed as the model computes them.
- BoundCall(module, kwargs): calls module(x, **kwargs(x)), so MHA with rope or a relative position
  bias is measured as the model computes it through the estimator's generic path.
- GammaScale(gamma, source): EVA/BEiT's gamma_1/gamma_2 as a LayerScale-like module.
- Forward hooks registered on any of these fire during the model's own forward pass (on the
  module the model really calls), with this component's output: probes read them.
- input_site(module) / block_inputs(...): where each component's input appears in the model's
  own forward, and those inputs captured in one block forward (plasticity's in-situ mode).
- input_shape(model): the (C, H, W) images a model reads (a hybrid's C is the image's, not its
  stem's); set_input_size(model, (H, W)) rebuilds it for another size.
- stacked_linear(a, b): SwiGLU's fc1_g and fc1_x as one nn.Linear [W_g; W_x] (a copy):
  f(x) - f(y) = [W_g; W_x](x - y), so FC1's plasticity and bound read both projections.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitplas.models import text_ops
from vitplas.models.hooks import ViewLinear, frozen_linear, hook_via


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

    def input_site(self) -> tuple[nn.Module, str]:
        return self.inner, "input"


class GammaScale(nn.Module):
    """x * gamma for a (D,) gamma parameter held by a block (not a module of its own). Forward
    hooks fire on `source` (the attention or MLP it scales) with gamma * its output."""

    def __init__(self, gamma: nn.Parameter, source: nn.Module) -> None:
        super().__init__()
        self.gamma = gamma
        self._source = [source]  # a list: not a child module (no children = a LayerScale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma

    def register_forward_hook(self, hook, *args, **kwargs):  # type: ignore[override]
        view = lambda _inputs, out: out * self.gamma  # noqa: E731
        return hook_via(self, self._source[0], view, hook, *args, **kwargs)

    def input_site(self) -> tuple[nn.Module, str]:
        return self._source[0], "output"  # gamma scales what the attention / MLP returns


def stacked_linear(first: nn.Linear, second: nn.Linear) -> nn.Linear:
    """[W_first; W_second] (and biases) as one linear (SwiGLU's fc1_g and fc1_x); its hooks see
    both outputs concatenated, from the model's own call of `second`."""
    weight = torch.cat([first.weight.detach(), second.weight.detach()])  # (2H, D)
    biases = [lin.bias.detach() if lin.bias is not None else None for lin in (first, second)]
    bias = None if biases[0] is None or biases[1] is None else torch.cat(biases)
    view = lambda inputs, out: torch.cat([first(inputs[0]), out], dim=-1)  # noqa: E731
    return ViewLinear(weight, bias, second, view)


def sliced_qkv(q: nn.Linear, k: nn.Linear, v: nn.Linear) -> nn.Linear:
    """Separate q/k/v projections as one fused (3A, D) linear, rows ordered (q|k|v)."""
    return frozen_linear(torch.cat([q.weight, k.weight, v.weight]))


class ParallelAttention(nn.Module):
    """The attention of a parallel-scaling block alone: q/k/v from the last 3D rows of its
    fused in_proj, q/k norms, softmax attention, attn_out_proj. Other attributes (num_heads,
    q_norm, scale...) are the block's."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def attention_parts(self) -> tuple[nn.Linear, nn.Linear, int]:
        hidden, proj = self.block.in_split[0], self.block.in_proj
        bias = None if proj.bias is None else proj.bias[hidden:]
        return (
            frozen_linear(proj.weight[hidden:], bias),
            self.block.attn_out_proj,
            self.block.num_heads,
        )

    def register_forward_hook(self, hook, *args, **kwargs):  # type: ignore[override]
        view = lambda _inputs, out: out  # noqa: E731  the output projection's output
        return hook_via(self, self.block.attn_out_proj, view, hook, *args, **kwargs)

    def input_site(self) -> tuple[nn.Module, str]:
        return self.block.in_proj, "input"  # the norm's output, read by the fused in_proj

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
    """A parallel-scaling block's MLP input projection: the first H rows of in_proj (bias: those
    rows of in_proj's, or mlp_bias)."""
    hidden, proj = block.in_split[0], block.in_proj
    if block.mlp_bias is not None:
        bias = block.mlp_bias
    else:
        bias = None if proj.bias is None else proj.bias[:hidden]

    def view(_inputs, out: torch.Tensor) -> torch.Tensor:
        mlp = out[..., :hidden]
        return mlp + block.mlp_bias if block.mlp_bias is not None else mlp

    return ViewLinear(proj.weight.detach()[:hidden], bias, proj, view)


def input_site(module: nn.Module) -> tuple[nn.Module, str]:
    """(module the model calls, "input" | "output"): where the input of the component that
    `module` measures appears in the model's own forward, i.e. the first argument of the module
    itself, or of the model's module that a wrapper stands for (BoundCall: the attention;
    SwiGLU's stacked fc1: fc1_x; a parallel block's attention and fc1: in_proj), or the output
    of the attention / MLP that EVA's gamma scales (GammaScale)."""
    site = getattr(type(module), "input_site", None)
    return site(module) if site is not None else (module, "input")


def _keep(store: list, kind: str) -> Callable:
    """A hook appending the site's tensor (first argument, or output) to `store`."""

    def keep_input(_module, args, kwargs) -> None:
        store.append(args[0] if args else next(iter(kwargs.values())))

    def keep_output(_module, _args, output) -> None:
        store.append(output)

    return keep_input if kind == "input" else keep_output


def block_inputs(
    block_forward: Callable[[], torch.Tensor], sites: dict[str, tuple[nn.Module, str]]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({component: the tensor at its site}, block output) from one call of block_forward()
    with a hook at every site. A site the forward runs never or twice is a RuntimeError: its
    component has no single input in this block."""
    stores: dict[tuple[nn.Module, str], list] = {site: [] for site in sites.values()}
    handles = []
    for (module, kind), store in stores.items():
        if kind == "input":
            handles.append(module.register_forward_pre_hook(_keep(store, kind), with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(_keep(store, kind)))
    try:
        out = block_forward()
    finally:
        for handle in handles:
            handle.remove()
    inputs = {}
    for name, site in sites.items():
        if len(stores[site]) != 1:
            raise RuntimeError(
                f"{name}'s {type(site[0]).__name__} ran {len(stores[site])} times in the block's "
                "forward: it has no single in-situ input"
            )
        inputs[name] = stores[site][0]
    return inputs, out


# kind -> probe(block, the block's modules at the component's present paths)
PROBES: dict[str, Callable[[nn.Module, list], nn.Module]] = {
    "parallel_mha": lambda block, _parts: ParallelAttention(block),
    "parallel_fc1": lambda block, _parts: parallel_fc1(block),
    **text_ops.PROBES,  # BERT's and GPT-2's attention, GPT-2's Conv1D linears
}
MASKS = text_ops.MASKS  # text families: kind -> the attention mask their blocks receive


def embedding_module(model: nn.Module) -> nn.Module:
    """The module that turns images into patch tokens: `patch_embed` (PatchEmbed, a hybrid's
    HybridEmbed) or NaFlexViT's `embeds`."""
    embed = getattr(model, "patch_embed", None) or getattr(model, "embeds", None)
    if embed is None:
        raise TypeError(f"{type(model).__name__} has no patch_embed or embeds module")
    return embed


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) of the images `model` is built for. Channels are the image's,
    not the first conv's input: a hybrid's projection reads its stem's 1,024-2,048 channels (or
    is an Identity), so they come from `in_chans` where the embedding keeps it."""
    embed = embedding_module(model)
    channels = getattr(embed, "in_chans", None)
    if channels is None:
        channels = embed.proj.in_channels  # PatchEmbed: its conv reads the image
    size = getattr(embed, "img_size", None) or getattr(embed, "default_img_size", None)
    if size is None:  # NaFlexViT built from a position grid only
        grid = zip(embed.pos_embed_grid_size, embed.patch_size, strict=True)
        size = tuple(g * p for g, p in grid)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return int(channels), int(height), int(width)


def set_input_size(model: nn.Module, size: tuple[int, int]) -> None:
    """Build `model` for (H, W) images: timm's set_input_size (resamples the position
    embedding; a hybrid's stem grid is recomputed). NaFlexViT resamples its position grid for
    every image it reads and has no such method: only its default size is recorded."""
    if hasattr(model, "set_input_size"):
        model.set_input_size(img_size=size)
        return
    embed = embedding_module(model)
    if not hasattr(embed, "default_img_size"):
        raise TypeError(f"{type(model).__name__} cannot be built for another input size")
    embed.default_img_size = tuple(size)


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
    **text_ops.EMBEDDERS,  # text families: token ids (B, L) -> (B, L, D)
}


def token_grid(model: nn.Module, n_tokens: int) -> tuple[int, int]:
    """The (rows, cols) patch grid of a sequence of n_tokens (prefix tokens excluded): the
    model's own grid if the count matches, else a square one."""
    n_patches = n_tokens - int(getattr(model, "num_prefix_tokens", 0))
    embed = embedding_module(model)
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
