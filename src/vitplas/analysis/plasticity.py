"""The plasticity estimator (PAPER.md section 1): per pair, block and component,

    ratio = ||f(x) - f(y)||_F / ||x - y||_F      over the whole (N tokens, D) matrix.

Inputs of block l's components (`inputs`, models.families.INPUT_MODES):
    embedding  the embedding output, for every block (the paper's protocol);
    hidden     the hidden state entering block l.
  In both, every component reads that one (N, D) input: MHA is applied without LN1 in front,
  FC2 reads the D-dim tokens zero-padded to its input width.
    insitu     what each component receives in the model's own forward pass on x and y (one
  block forward of the (2B, N, D) batch with a hook at each component's input site,
  families_ops.input_site): LN1 the block input, MHA LN1's output, LayerScale its branch's
  output, LN2 the residual after attention, FC1 LN2's output, FC2 the MLP's activation at full
  width (after gating and the inner norm, if any: no zero padding); rope, relative position
  bias, post-norm and parallel blocks as the model computes them. The denominator is then the
  difference of that component's own inputs. The block output feeds block l + 1.

Text models (BERT-style encoders, GPT-2). A pair is two token sequences of one length L with
their attention masks. A ratio reads only the positions real in both sequences (the joint mask
m = mask_x & mask_y, token_inputs.py): ||m * (f(x) - f(y))||_F / ||m * (x - y)||_F, norms per
token; attention receives each sequence's own mask as the model builds it (bidirectional for
BERT, causal for GPT-2; models.text_ops.MaskedAttention); hidden and insitu inputs come from
block forwards with the masks. FC2 is probed as for images (zero-padded D-dim tokens).

Why it is cheap. x and y go through each non-linear module (norms, attention) together as one
(2B, N, D) batch. The linear components (FC1, FC2, LayerScale) satisfy f(x) - f(y) = W (x - y)
exactly (the bias cancels), so they cost one matmul on the difference instead of two forward
calls; FC2 on zero-padded tokens is x @ W[:, :D].T, so the weight is sliced, never the input
padded. A weight wider out than in (FC1: 4D x D) is replaced by the D x D triangular factor R
of its QR decomposition, ||W d|| = ||R d||: a quarter of FC1's multiply-adds. R is computed once
per layer and call, or once per layer and estimate when the estimating loop passes one
LinearFactors to every batch (the weights are fixed while it runs). Norms of token matrices
accumulate in float64 (float32 sums of 10^5+ elements drift by 1e-5 relative); the matmuls
stay in the input's precision. A LayerNorm's difference is gamma * (x_hat - y_hat) (the bias
cancels again), and ||gamma * v||_F^2 = sum_j gamma_j^2 sum_t v_tj^2: the per-feature sums S_j
are shared by all the norms that read the same input (every layer, in embedding mode). Nothing
leaves the device; RatioStats keeps shifted sums in float64 there.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitplas.analysis.token_inputs import Inputs as _Inputs
from vitplas.analysis.token_inputs import frob as _frob
from vitplas.analysis.token_inputs import token_scale as token_scale  # re-exported
from vitplas.models.components import ComponentMap, parse_components
from vitplas.models.text import embed_tokens
from vitplas.models.text_ops import MaskedAttention


def resolve_components(cmap: ComponentMap, names: Sequence[str] | str | None = None) -> list[str]:
    """Validate component names against this model's blocks; None/empty = all of them."""
    if not names:
        return list(cmap.block_components)
    return parse_components(names, allowed=cmap.block_components)


def patch_size(cmap: ComponentMap) -> tuple[int, int]:
    """(height, width) in pixels of one patch token (from the family registry)."""
    return cmap.patch_size()


def embed_images(cmap: ComponentMap, images: torch.Tensor) -> torch.Tensor:
    """Embedding output (B, N, D) of images (B, C, H, W), as the model's forward_features
    computes it. Images the model cannot take are a ValueError that says why (channels, a
    ragged size: timm would crop a border silently, or assert); a failure at the model's own
    input size is no fault of the images and is raised as a RuntimeError (an internal error)."""
    if images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    channels, own_h, own_w = cmap.input_shape()
    if images.shape[1] != channels:
        raise ValueError(
            f"images have {images.shape[1]} channels; this model reads {channels}-channel images"
        )
    (height, width), (ph, pw) = images.shape[-2:], patch_size(cmap)
    if height % ph or width % pw:
        raise ValueError(
            f"image size {height}x{width} is not a multiple of this model's {ph}x{pw} patches; "
            f"use e.g. {max(ph, height // ph * ph)}x{max(pw, width // pw * pw)}"
        )
    try:
        return cmap.embed(images)
    except torch.OutOfMemoryError:
        raise  # not a size problem: smaller batches help, other sizes do not
    except (AssertionError, RuntimeError) as err:
        if (height, width) != (own_h, own_w) and _embeds(cmap, images, (own_h, own_w)):
            raise ValueError(
                f"images of size {height}x{width} do not fit this model ({err}); resize them to "
                f"its input size {own_h}x{own_w} (the CLI does, from the model's config) or "
                "load the model with img_size=..."
            ) from err
        raise RuntimeError(
            f"the {cmap.family.name} embedding fails on images of this model's own input size "
            f"{channels}x{own_h}x{own_w} ({err})"
        ) from err


def _embeds(cmap: ComponentMap, images: torch.Tensor, size: tuple[int, int]) -> bool:
    """Whether one zero image of `size` (H, W), like `images` otherwise, embeds without error."""
    probe = torch.zeros(1, images.shape[1], *size, dtype=images.dtype, device=images.device)
    try:
        with torch.no_grad():
            cmap.embed(probe)
    except (AssertionError, RuntimeError):
        return False
    return True


def norm_kind(module: nn.Module) -> str | None:
    """'layer' (centred: nn.LayerNorm and subclasses), 'rms' (timm RmsNorm, torch RMSNorm: no
    centring), or None when `module` is no per-token norm with an `eps`."""
    if not hasattr(module, "eps"):
        return None
    if isinstance(module, nn.LayerNorm):
        return "layer"
    return "rms" if "rmsnorm" in type(module).__name__.lower() else None


def _is_layerscale(module: nn.Module) -> bool:
    gamma = getattr(module, "gamma", None)
    return isinstance(gamma, torch.Tensor) and gamma.ndim == 1 and not list(module.children())


def padded_weight(linear: nn.Linear, width: int) -> torch.Tensor:
    """The columns of `linear`'s weight that meet D-dim tokens zero-padded to its input width."""
    if linear.in_features < width:
        raise ValueError(
            f"cannot zero-pad {width}-dim tokens to {linear.in_features} inputs (narrower)"
        )
    return linear.weight[:, :width]


def _weight_key(weight: torch.Tensor) -> tuple:
    """What identifies a weight's values: storage, shape, strides, dtype, device and version."""
    try:
        version = weight._version
    except RuntimeError:  # an inference tensor has no version counter (and cannot change)
        version = None
    shape = (tuple(weight.shape), weight.stride(), weight.storage_offset())
    return weight.data_ptr(), shape, weight.dtype, weight.device, version


def difference_weight(weight: torch.Tensor) -> torch.Tensor:
    """A contiguous M with ||M d|| = ||W d|| for every d.

    W (out, in) wider out than in: M is the (in, in) triangular factor R of W = Q R (Q with
    orthonormal columns), factored in float64 and cast to W's dtype (FC1: a quarter of the
    multiply-adds). Otherwise M is W, made contiguous (FC2's column slice is strided)."""
    w = weight.detach()
    if w.shape[0] > w.shape[1]:
        w = torch.linalg.qr(w.double(), mode="r")[1].to(weight.dtype)
    return w.contiguous()


class LinearFactors:
    """difference_weight per module, kept for one estimate: the estimating loop makes one and
    passes it to every batch, so that FC1's QR is factored once per run, not per batch.

    Share one only while the weights stay fixed: a change through `.data` (or any that leaves
    the version counter alone) is not seen; a new estimate, with a new LinearFactors, reads
    the weights afresh. A change that bumps the version (an in-place op) is seen anyway."""

    def __init__(self) -> None:
        self._cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (key, M)

    def get(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        key = _weight_key(weight)
        cached = self._cache.get(module)
        if cached is None or cached[0] != key:
            cached = key, difference_weight(weight)
            self._cache[module] = cached
        return cached[1]


def linear_numerator(
    module: nn.Module,
    weight: torch.Tensor,
    diff: torch.Tensor,
    factors: LinearFactors | None = None,
) -> torch.Tensor:
    """||W d||_F per pair (B,) for d (B, N, in), through difference_weight (kept in `factors`
    when given): N min(out, in) multiply-adds per pair, squares of a float32 matmul summed in
    float64 (no cancellation)."""
    m = difference_weight(weight) if factors is None else factors.get(module, weight)
    return _frob(F.linear(diff, m))


def component_numerator(
    module: nn.Module, name: str, inp: _Inputs, factors: LinearFactors | None = None
) -> torch.Tensor:
    """||f(x) - f(y)||_F per pair (B,) for component `name` implemented by `module`."""
    width = inp.xy.shape[-1]
    diff = inp.diff.to(inp.xy.dtype)
    if name == "fc2":  # zero-padded input: only the first `width` columns of W are read
        return linear_numerator(module, padded_weight(module, width), diff, factors)
    if isinstance(module, nn.Linear):  # f(x) - f(y) = W (x - y)
        return linear_numerator(module, module.weight, diff, factors)
    if _is_layerscale(module):  # f(x) - f(y) = gamma * (x - y)
        return (inp.diff_sq() @ module.gamma.double().square()).sqrt()
    if isinstance(module, nn.LayerNorm) and module.normalized_shape == (width,):
        sq = inp.normalized_sq(module.eps, width)  # (B, D)
        if module.weight is None:
            return sq.sum(1).sqrt()
        return (sq @ module.weight.to(sq.dtype).square()).sqrt()
    # any other module: call it on x and y at once (attention with each sequence's own mask)
    masked = isinstance(module, MaskedAttention) and inp.masks is not None
    out = module(inp.xy, attention_mask=inp.masks) if masked else module(inp.xy)
    fx, fy = out.to(inp.diff.dtype).chunk(2)
    return _frob(inp.keep(fx - fy))


Shared = _Inputs | Mapping[str, _Inputs]  # one input for all components, or one per component


def _input_of(inp: Shared, name: str) -> _Inputs:
    return inp[name] if isinstance(inp, Mapping) else inp


def block_ratios(
    cmap: ComponentMap,
    layer: int,
    components: Sequence[str],
    inp: Shared,
    factors: LinearFactors | None = None,
) -> torch.Tensor:
    """(B, C) ratios of block `layer`'s components on the shared input `inp` (or on each
    component's own input, in situ)."""
    cols = []
    for name in components:
        own = _input_of(inp, name)
        cols.append(component_numerator(cmap.module(layer, name), name, own, factors) / own.norm)
    return torch.stack(cols, dim=1)


def block_scales(
    cmap: ComponentMap, layer: int, components: Sequence[str], inp: Shared
) -> torch.Tensor:
    """(B, C) float64, what each component's data bound depends on (bounds.py), over the
    tokens of x and y of the component's own input: for a norm, the smallest scale s_t (its
    Lipschitz constant divides by it); for MHA, the largest token norm, +inf for a text pair
    whose sequences have different real tokens (x's own tokens move f(x) at the shared
    positions with those equal: no finite bound); NaN for others."""
    cols = []
    for name in components:
        module, own = cmap.module(layer, name), _input_of(inp, name)
        kind = norm_kind(module)
        nan = torch.full_like(own.norm, float("nan"))
        if name == "mha":
            same = own.same_masks
            r = own.largest_norm()
            cols.append(r if same is None else r.masked_fill(~same, float("inf")))
        else:
            cols.append(nan if kind is None else own.smallest_scale(module.eps, kind == "layer"))
    return torch.stack(cols, dim=1)


def insitu_inputs(
    cmap: ComponentMap,
    layer: int,
    names: Sequence[str],
    h: torch.Tensor,
    masks: torch.Tensor | None = None,
) -> tuple[dict[str, _Inputs], torch.Tensor]:
    """({component: its input in block `layer`'s own forward on h (2B, N, D)}, the block's
    output). Components that read the same tensor share one _Inputs (and its caches). masks
    (2B, N): a text pair's real tokens, which the block's attention reads."""
    captured, out = cmap.insitu_inputs(layer, names, h, masks)
    shared: dict[int, _Inputs] = {}
    inputs = {}
    for name, tensor in captured.items():
        if id(tensor) not in shared:
            shared[id(tensor)] = _Inputs(tensor, masks)
        inputs[name] = shared[id(tensor)]
    return inputs, out


def pair_ratios(
    cmap: ComponentMap,
    x: torch.Tensor,
    y: torch.Tensor,
    components: Sequence[str] | None = None,
    inputs: str = "embedding",
    with_scales: bool = False,
    factors: LinearFactors | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Ratios of every (pair, layer, component): a (B, L, C) float64 tensor on x's device.

    x, y: (B, 3, H, W) image batches, pair i = (x[i], y[i]); for a text model (B, 2, L)
    int64 batches, row 0 the token ids and row 1 the attention mask (analysis.text_pairs),
    each ratio over the positions real in both sequences (token_inputs.py). A pair with
    x == y at a block's input has no defined ratio there: NaN, left out by RatioStats.
    with_scales: also return the (B, L, C) token statistics the data bounds need
    (block_scales: the smallest token scale for norms, the largest token norm for MHA).
    factors: one LinearFactors shared by the calls of one estimate (weights fixed); None:
    factored anew.
    """
    if x.shape != y.shape:
        raise ValueError(f"x and y batches differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    with torch.inference_mode():
        if cmap.family.modality == "text":
            ids, masks = torch.cat([x, y]).unbind(1)  # (2B, L) each
            h = embed_tokens(cmap, ids, masks)  # (2B, L, D)
            return token_ratios(cmap, h, components, inputs, with_scales, factors, masks)
        h = embed_images(cmap, torch.cat([x, y]))  # (2B, N, D)
        return token_ratios(cmap, h, components, inputs, with_scales, factors)


def token_ratios(
    cmap: ComponentMap,
    h: torch.Tensor,
    components: Sequence[str] | None = None,
    inputs: str = "embedding",
    with_scales: bool = False,
    factors: LinearFactors | None = None,
    masks: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Like pair_ratios, from token matrices h (2B, N, D): x = h[:B], y = h[B:]; masks
    (2B, N): a text pair's attention masks (1 a real token), None for images."""
    if inputs not in cmap.family.input_modes:
        modes = ", ".join(cmap.family.input_modes)
        raise ValueError(f"inputs '{inputs}' is unknown; choose one of {modes}")
    if h.ndim != 3 or h.shape[0] % 2:
        raise ValueError(f"h must be (2B, N, D) with x then y, got {tuple(h.shape)}")
    names = resolve_components(cmap, components)
    with torch.inference_mode():
        shared = _Inputs(h, masks) if inputs == "embedding" else None
        per_layer, scales = [], []
        for layer in range(cmap.depth):
            if inputs == "insitu":  # each component's own input; h becomes the block's output
                inp, h = insitu_inputs(cmap, layer, names, h, masks)
            else:
                inp = shared if shared is not None else _Inputs(h, masks)
            per_layer.append(block_ratios(cmap, layer, names, inp, factors))
            if with_scales:
                scales.append(block_scales(cmap, layer, names, inp))
            if inputs == "hidden" and layer + 1 < cmap.depth:
                h = cmap.forward_block(layer, h, masks)  # the real input of the next block
        ratios = torch.stack(per_layer, dim=1)  # (B, L, C)
        return (ratios, torch.stack(scales, dim=1)) if with_scales else ratios
