"""The one map from canonical component names to module paths, per model family.

Canonical names:
    per block: ln1 (norm before attention), mha (attention), ln2 (norm before MLP),
               fc1 (first MLP linear), fc2 (second MLP linear), ls1/ls2 (LayerScale, if any)
    global:    emb (patch embedding, cls/register tokens, position embedding),
               norm (final norm), head (classifier)
No other module of vitplas names a module path: they all ask this map.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

BLOCK_COMPONENTS = ("ln1", "mha", "ln2", "fc1", "fc2", "ls1", "ls2")
GLOBAL_COMPONENTS = ("emb", "norm", "head")
ALL_COMPONENTS = (*GLOBAL_COMPONENTS[:1], *BLOCK_COMPONENTS, *GLOBAL_COMPONENTS[1:])
# The paper's theoretical ranking (PAPER.md section 2): rank 1 is the least smooth.
THEORETICAL_RANK = {"mha": 1, "fc1": 2, "fc2": 3, "ln2": 4, "ln1": 5}
# The paper's finetuning configurations (PAPER.md section 3); "all" is full finetuning.
PAPER_TRAIN_SETS = ("all", "emb", "ln1", "mha", "ln2", "fc1", "fc2")


@dataclass(frozen=True)
class FamilySpec:
    """Where a model family keeps each component. Paths are relative to a block or the model."""

    name: str
    blocks: str
    block_paths: dict[str, str]
    global_paths: dict[str, tuple[str, ...]]
    attn_qkv: str  # fused q/k/v linear inside a block, rows ordered (q|k|v, head, head_dim)
    attn_proj: str  # attention output projection inside a block


TIMM_VIT = FamilySpec(
    name="timm-vit",
    blocks="blocks",
    block_paths={
        "ln1": "norm1",
        "mha": "attn",
        "ln2": "norm2",
        "fc1": "mlp.fc1",
        "fc2": "mlp.fc2",
        "ls1": "ls1",
        "ls2": "ls2",
    },
    global_paths={
        "emb": ("patch_embed", "cls_token", "reg_token", "pos_embed"),
        "norm": ("norm", "fc_norm"),
        "head": ("head",),
    },
    attn_qkv="attn.qkv",
    attn_proj="attn.proj",
)


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


def _get(root: nn.Module, path: str) -> nn.Module | nn.Parameter | None:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _is_present(obj: object) -> bool:
    """A component exists when it is a parameter or a module that is not an Identity."""
    return obj is not None and not isinstance(obj, nn.Identity)


@dataclass
class ComponentMap:
    """Components of one model. `block_components` lists those every block has."""

    model: nn.Module
    family: FamilySpec
    block_components: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        first = self.blocks[0]
        self.block_components = tuple(
            name for name, path in self.family.block_paths.items() if _is_present(_get(first, path))
        )

    @property
    def blocks(self) -> nn.ModuleList:
        return _get(self.model, self.family.blocks)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def block(self, layer: int) -> nn.Module:
        return self.blocks[layer]

    def module(self, layer: int, name: str) -> nn.Module:
        """The module of component `name` in block `layer`."""
        if name not in self.block_components:
            raise UnknownComponentError(
                f"component '{name}' is not in the blocks of this {self.family.name} model; "
                f"it has: {', '.join(self.block_components)}"
            )
        return _get(self.block(layer), self.family.block_paths[name])

    def attention_parts(self, layer: int) -> tuple[nn.Linear, nn.Linear, int]:
        """(fused qkv linear, output projection, number of heads) of block `layer`."""
        block = self.block(layer)
        attn = self.module(layer, "mha")
        return _get(block, self.family.attn_qkv), _get(block, self.family.attn_proj), attn.num_heads

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embedding output (B, N, D): patches + cls/register tokens + position embedding."""
        m = self.model
        x = m.patch_embed(images)  # (B, N_patches, D)
        x = m._pos_embed(x)  # (B, N, D) with cls/register tokens
        x = m.patch_drop(x)
        return m.norm_pre(x)

    def named_parameters(self, name: str) -> Iterator[tuple[str, nn.Parameter]]:
        """(full parameter name, parameter) of component `name` across the whole model."""
        if name in GLOBAL_COMPONENTS:
            prefixes = [
                p for p in self.family.global_paths[name] if _is_present(_get(self.model, p))
            ]
        elif name in self.block_components:
            path = self.family.block_paths[name]
            prefixes = [f"{self.family.blocks}.{i}.{path}" for i in range(self.depth)]
        else:
            raise UnknownComponentError(
                f"component '{name}' is not in this model; known here: "
                f"{', '.join((*GLOBAL_COMPONENTS, *self.block_components))}"
            )
        for full_name, param in self.model.named_parameters():
            if any(full_name == p or full_name.startswith(p + ".") for p in prefixes):
                yield full_name, param


def component_map(model: nn.Module) -> ComponentMap:
    """The component map of `model`; an unsupported architecture is a clear error."""
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        cmap = ComponentMap(model, TIMM_VIT)
        if "fc1" not in cmap.block_components or _get(cmap.block(0), "attn.qkv") is None:
            raise TypeError(
                "this timm ViT variant has no fused attn.qkv or mlp.fc1 (e.g. SwiGLU); "
                "extend vitplas.models.components with a FamilySpec for it"
            )
        return cmap
    raise TypeError(
        f"{type(model).__name__} is not a supported model family; supported: timm "
        "VisionTransformer (add a FamilySpec in vitplas.models.components for others)"
    )


def resolve_train_set(cmap: ComponentMap, train: Iterable[str] | str) -> list[str]:
    """Expand `all` to every component; validate names against this model."""
    names = parse_components(train, allowed=("all", *ALL_COMPONENTS))
    if "all" in names:
        return [*GLOBAL_COMPONENTS[:1], *cmap.block_components, *GLOBAL_COMPONENTS[1:]]
    return names


def set_trainable(
    model: nn.Module, train: Iterable[str] | str, *, head: bool = True, norm: bool = True
) -> dict[str, list[str]]:
    """Freeze everything, then unfreeze `train` (+ head and final norm when asked).

    Returns {component: [parameter names]} of what is trained.
    """
    cmap = component_map(model)
    names = resolve_train_set(cmap, train)
    if head and "head" not in names:
        names.append("head")
    if norm and "norm" not in names:
        names.append("norm")
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
    counts = {}
    for name in (*GLOBAL_COMPONENTS[:1], *cmap.block_components, *GLOBAL_COMPONENTS[1:]):
        counts[name] = sum(p.numel() for _, p in cmap.named_parameters(name))
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
