"""The one map from canonical component names to a model's modules and parameters.

Canonical names (their meaning per family: vitplas.models.families):
    per block: ln1 (norm before attention), mha (attention), ln2 (norm before MLP),
               fc1 (MLP input projection), fc2 (MLP output projection), ls1/ls2 (LayerScale)
    global:    emb (patch embedding, cls/distillation/register tokens, position embedding,
               norm_pre; a text model's token, position and token-type embeddings and the
               norm applied to them), norm (final norm), pool (attention-pool head), head
               (classifier; BERT's pooler)
The registry (vitplas.models.families) says where each lives; no other module of vitplas names
a module path. The components of a supported model partition its parameters: building a map
checks that every parameter belongs to exactly one component.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from vitplas.constants import PAPER_TRAIN_SETS as PAPER_TRAIN_SETS  # re-exported
from vitplas.constants import THEORETICAL_RANK as THEORETICAL_RANK  # re-exported
from vitplas.models import families_ops as ops
from vitplas.models.families import (
    BLOCK_COMPONENTS,
    EXTRA_BLOCK_COMPONENTS,
    GAMMA_SOURCES,
    GLOBAL_COMPONENTS,
    BlockSpec,
    Family,
    find_block,
    find_family,
    supported_names,
)

_BLOCK_NAMES = (*BLOCK_COMPONENTS, *EXTRA_BLOCK_COMPONENTS)
ALL_COMPONENTS = (*GLOBAL_COMPONENTS[:1], *_BLOCK_NAMES, *GLOBAL_COMPONENTS[1:])


class UnknownComponentError(ValueError):
    pass


def parse_components(names: Iterable[str] | str, allowed: Sequence[str] = ALL_COMPONENTS) -> list:
    """Validate component names (case-insensitive, comma-separated allowed); keep order."""
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for raw in names:
        for name in str(raw).split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in allowed:
                raise UnknownComponentError(
                    f"component '{name}' is unknown; known: {', '.join(allowed)}"
                )
            if name not in out:
                out.append(name)
    return out


def _get(root: nn.Module, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _is_present(obj: object) -> bool:
    """A part exists when it is a parameter or a module that is not an Identity."""
    if isinstance(obj, nn.Parameter):
        return True
    return isinstance(obj, nn.Module) and not isinstance(obj, nn.Identity)


def _present(root: nn.Module, paths: Sequence[str]) -> list[str]:
    return [p for p in paths if _is_present(_get(root, p))]


def _params(part: nn.Module | nn.Parameter) -> list[nn.Parameter]:
    return [part] if isinstance(part, nn.Parameter) else list(part.parameters())


class ComponentMap:
    """Components of one model. `block_components` lists those its blocks have."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.family: Family = find_family(model)
        blocks = self.blocks
        if blocks is None or len(blocks) == 0:
            raise TypeError(f"this {self.family.name} model has no blocks to measure")
        self.specs: list[BlockSpec] = [_checked_block(self.family, b) for b in blocks]
        self.paths = [
            {n: _present(b, s.parts.get(n, ())) for n in _BLOCK_NAMES}
            for b, s in zip(blocks, self.specs, strict=True)
        ]
        first = self.specs[0]
        self.block_components = tuple(
            n for n in _BLOCK_NAMES if self.paths[0][n] or n in first.probes
        )
        self.owner = self._partition()
        self.components = tuple(n for n in ALL_COMPONENTS if n in set(self.owner.values()))
        # what train=[name] accepts; the rest is trained only by train=[all] (see not_trainable)
        self.trainable = tuple(n for n in self.components if n not in first.not_trainable)

    @property
    def blocks(self) -> nn.Module:
        return _get(self.model, self.family.blocks_path)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def block(self, layer: int) -> nn.Module:
        return self.blocks[layer]

    def _prefixes(self) -> list[tuple[str, str]]:
        """(parameter-name prefix, component) for every part of the model."""
        out = [
            (path, name)
            for name, paths in self.family.parts.items()
            for path in _present(self.model, paths)
        ]
        root = self.family.blocks_path
        for layer, paths in enumerate(self.paths):
            out += [(f"{root}.{layer}.{p}", n) for n, ps in paths.items() for p in ps]
        return out

    def _partition(self) -> dict[str, str]:
        """{parameter name: component}; a parameter in none or in two is a TypeError."""
        prefixes = self._prefixes()
        owner: dict[str, str] = {}
        orphans = []
        for full_name, _ in self.model.named_parameters():
            hits = {c for p, c in prefixes if full_name == p or full_name.startswith(p + ".")}
            if len(hits) > 1:
                raise TypeError(f"parameter {full_name} is in components {sorted(hits)}")
            if not hits:
                orphans.append(full_name)
            else:
                owner[full_name] = hits.pop()
        if orphans:
            raise TypeError(
                f"parameters {', '.join(orphans[:5])} belong to no component of family "
                f"'{self.family.name}'; add their paths to its entry in vitplas.models.families"
            )
        return owner

    def module(self, layer: int, name: str) -> nn.Module:
        """What the estimator calls for component `name` of block `layer`: the module itself,
        or a small wrapper (attention with its rope / relative position bias bound, gamma
        LayerScale, SwiGLU's fc1_g and fc1_x stacked into one linear)."""
        if name not in self.block_components:
            raise UnknownComponentError(
                f"component '{name}' is not in the blocks of this {self.family.name} model; "
                f"it has: {', '.join(self.block_components)}"
            )
        block, paths = self.block(layer), self.paths[layer][name]
        parts = [_get(block, p) for p in paths]
        if name in self.specs[layer].probes:
            return ops.PROBES[self.specs[layer].probes[name]](block, parts)
        if name == "fc1" and len(parts) == 2:
            return ops.stacked_linear(*parts)
        if isinstance(parts[0], nn.Parameter):  # gamma_1 scales the attention, gamma_2 the MLP
            return ops.GammaScale(parts[0], _get(block, GAMMA_SOURCES[name]))
        if name == "mha" and self.family.context != "none":
            return ops.BoundCall(parts[0], lambda x: self.block_kwargs(layer, x.shape[1]))
        return parts[0]

    def attention_parts(self, layer: int) -> tuple[nn.Linear, nn.Linear, int]:
        """(fused qkv linear, output projection, number of heads) of block `layer`; separate
        q/k/v projections are stacked into one (a copy)."""
        if "mha" in self.specs[layer].probes:
            return self.module(layer, "mha").attention_parts()
        attn = _get(self.block(layer), self.paths[layer]["mha"][0])
        qkv = getattr(attn, "qkv", None)
        if qkv is None:
            qkv = ops.sliced_qkv(attn.q_proj, attn.k_proj, attn.v_proj)
        return qkv, attn.proj, attn.num_heads

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Embedding output (B, N, D): what the first block reads, from images (B, C, H, W) or,
        for a text family, token ids (B, L)."""
        return ops.EMBEDDERS[self.family.embed](self.model, inputs)

    def patch_size(self) -> tuple[int, int]:
        """(height, width) in pixels of one patch token."""
        return ops.patch_size(ops.embedding_module(self.model))

    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the model is built for."""
        return ops.input_shape(self.model)

    def block_kwargs(self, layer: int, n_tokens: int) -> dict[str, Any]:
        """Extra arguments block `layer` takes for a sequence of n_tokens (rope, shared bias),
        computed afresh from the current parameters (no cache that training could outdate)."""
        return ops.CONTEXTS[self.family.context](self.model, n_tokens, self.depth)[layer]

    def forward_block(
        self, layer: int, h: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Block `layer` on tokens h (B, N, D), with the arguments the model passes it. A text
        family's blocks also get the attention mask the model makes of `attention_mask` (B, N)
        (1 a real token, 0 padding; None: all real); an image family takes none."""
        kwargs = self.block_kwargs(layer, h.shape[1])
        if self.family.mask:
            mask = ops.MASKS[self.family.mask](self.model.config, h, attention_mask)
            kwargs = {**kwargs, "attention_mask": mask}
        elif attention_mask is not None:
            raise ValueError(
                f"this {self.family.name} model reads images: it takes no attention mask"
            )
        return self.block(layer)(h, **kwargs)

    def insitu_inputs(
        self,
        layer: int,
        names: Sequence[str],
        h: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """({component: what it reads in block `layer`'s own forward on h (B, N, D)}, the
        block's output): LN1 the block input, MHA LN1's output, FC2 the MLP's activation at
        full width, ... (families_ops.input_site says where each is read). attention_mask
        (B, N): a text family's padding mask, as forward_block takes it."""
        sites = {name: ops.input_site(self.module(layer, name)) for name in names}
        return ops.block_inputs(lambda: self.forward_block(layer, h, attention_mask), sites)

    def rescaling_parts(self, layer: int, name: str) -> tuple[list[nn.Parameter], list[nn.Linear]]:
        """(the parameters of component `name` in block `layer` that a function-preserving
        rescaling multiplies by c, the linears that absorb 1/c), from the block's `rescale`
        entry; a block or component that allows none is a ValueError saying why."""
        spec, block = self.specs[layer], self.block(layer)
        if name not in spec.rescale:
            why = spec.no_rescale or f"no linear of this {spec.type} absorbs a rescaled {name}"
            raise ValueError(f"{name} cannot be rescaled: {why}")
        params = [p for path in self.paths[layer][name] for p in _params(_get(block, path))]
        linears = [_get(block, p) for p in _present(block, spec.rescale[name])]
        if not params or not linears:
            raise ValueError(f"{name} of block {layer} has no gain or no linear to rescale")
        return params, linears

    def bound_issue(self, layer: int, name: str) -> str | None:
        """Why this family's structure puts component `name` outside its bound's formula."""
        if name not in BLOCK_COMPONENTS:
            return f"no bound formula for {name} (a fused projection of attention and MLP)"
        if name != "mha":
            return None
        if self.family.mha_bound:
            return self.family.mha_bound
        if self.family.context == "rope" and getattr(self.model, "rope", None) is not None:
            return "rotary position embedding (rope) inside attention"
        return None

    def named_parameters(self, name: str) -> Iterator[tuple[str, nn.Parameter]]:
        """(full parameter name, parameter) of component `name` across the whole model."""
        if name not in self.components:
            raise UnknownComponentError(
                f"component '{name}' is not in this {self.family.name} model; it has: "
                f"{', '.join(self.components)}"
            )
        for full_name, param in self.model.named_parameters():
            if self.owner[full_name] == name:
                yield full_name, param


def _checked_block(family: Family, block: nn.Module) -> BlockSpec:
    spec = find_block(family, block)
    for path, why in spec.refuse_if:
        if _is_present(_get(block, path)):
            raise TypeError(
                f"{spec.type} with {path} is not supported: {why}; "
                f"supported families: {supported_names()}"
            )
    return spec


def component_map(model: nn.Module) -> ComponentMap:
    """The component map of `model`; an unsupported architecture is a one-line TypeError."""
    return ComponentMap(model)


def resolve_train_set(cmap: ComponentMap, train: Iterable[str] | str) -> list[str]:
    """Expand `all` to every component of this model; validate names against it."""
    names = parse_components(train, allowed=("all", *ALL_COMPONENTS))
    if "all" in names:
        return list(cmap.components)
    missing = [n for n in names if n not in cmap.components and n not in cmap.block_components]
    if missing:
        raise UnknownComponentError(
            f"component(s) {', '.join(missing)} not in this {cmap.family.name} model; "
            f"it has: {', '.join(cmap.components)}"
        )
    for name in names:
        if name not in cmap.trainable:
            why = cmap.specs[0].not_trainable[name]
            raise UnknownComponentError(
                f"component '{name}' of this {cmap.specs[0].type} model cannot be trained "
                f"alone: {why}; trainable: {', '.join(cmap.trainable)}"
            )
    return names


def set_trainable(
    model: nn.Module, train: Iterable[str] | str, *, head: bool = True, norm: bool = True
) -> dict[str, list[str]]:
    """Freeze everything, then unfreeze `train` (+ head and final norm when asked and present).

    Returns {component: [parameter names]} of what is trained.
    """
    cmap = component_map(model)
    names = resolve_train_set(cmap, train)
    for extra, wanted in (("head", head), ("norm", norm)):
        if wanted and extra not in names and extra in cmap.components:
            names.append(extra)
    for param in model.parameters():
        param.requires_grad_(False)
    trained: dict[str, list[str]] = {}
    for name in names:
        trained[name] = []
        for full_name, param in cmap.named_parameters(name):
            param.requires_grad_(True)
            trained[name].append(full_name)
    return trained


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Number of parameters per component (block components summed over blocks), plus total."""
    cmap = component_map(model)
    counts = {
        name: sum(p.numel() for _, p in cmap.named_parameters(name)) for name in cmap.components
    }
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
