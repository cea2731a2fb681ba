"""The record types of the family registry (models.families, models.families_text) and the
canonical component names: what one block type, one model family and one refused type say."""

from __future__ import annotations

from dataclasses import dataclass, field

BLOCK_COMPONENTS = ("ln1", "mha", "ln2", "fc1", "fc2", "ls1", "ls2")
# per-block components a family adds: a parallel block's fused q/k/v + fc1 projection
EXTRA_BLOCK_COMPONENTS = ("in_proj",)
GLOBAL_COMPONENTS = ("emb", "norm", "pool", "head")
# plasticity inputs (analysis.plasticity): the embedding output (the paper), each block's input,
# each component's own input in the model's forward (in situ)
INPUT_MODES = ("embedding", "hidden", "insitu")


@dataclass(frozen=True)
class BlockSpec:
    """Where one block type keeps its components (paths relative to the block)."""

    type: str  # "<module>.<class>" of the block (timm's, or transformers' modeling_<x>)
    parts: dict[str, tuple[str, ...]]
    post_norm: bool = False  # norms after attention / MLP (ResPost): ln1/ln2 read their output
    probes: dict[str, str] = field(default_factory=dict)  # component -> families_ops.PROBES kind
    not_trainable: dict[str, str] = field(default_factory=dict)  # component -> why not alone
    refuse_if: tuple[tuple[str, str], ...] = ()  # (attribute present, why it is refused)
    # function-preserving rescalings (analysis.invariance): component scaled by c -> the linears
    # that absorb 1/c (every present path); see _RESCALE below
    rescale: dict[str, tuple[str, ...]] = field(default_factory=dict)
    no_rescale: str = ""  # why the block allows none


@dataclass(frozen=True)
class Family:
    """One model class: its blocks, its model-level parameters, how to embed and run blocks."""

    name: str
    model_types: tuple[str, ...]  # "<module>.<class>" of the model
    blocks: tuple[BlockSpec, ...]
    parts: dict[str, tuple[str, ...]]  # model-level parameters -> component
    embed: str  # embedding kind, see families_ops.EMBEDDERS
    context: str = "none"  # block-argument kind, see families_ops.CONTEXTS
    mha_bound: str = ""  # why the MHA bound never applies to this family ("" = it may)
    examples: tuple[str, ...] = ()
    notes: str = ""
    blocks_path: str = "blocks"
    input_modes: tuple[str, ...] = field(default=INPUT_MODES)
    modality: str = "image"  # "image": reads (B, C, H, W) images; "text": (B, L) token ids
    mask: str = ""  # text: the attention-mask kind its blocks receive (families_ops.MASKS)
    classifier_token: str = "first"  # text: the real token its sequence classifier reads
    # (training.probe_text.READ_TOKEN: "first" BERT's [CLS], "last" GPT-2's last real token)
    components: str = "emb ln1 mha ln2 fc1 fc2 (ls1 ls2) norm (pool) head"  # what it has


@dataclass(frozen=True)
class Refused:
    """A model or block type recognised but not supported, and why."""

    type: str
    family: str
    why: str


POST_NORM = (
    "post-norm: the norms' outputs join the residual stream, no linear absorbs 1/c alone; "
    "a chain through the next norm (LN1 x c, FC1 x 1/c, FC2 x c) is not checked"
)
