"""The registry of transformer families: data, one small entry per model class and block type
(in the spirit of timm's model registry): timm vision transformers, and Hugging Face text
transformers (BERT-style encoders, GPT-2). vitplas.models.components reads it; nothing else
names a module path.

Canonical components (every parameter of a supported model is in exactly one):
    emb   patch embedding (a hybrid's conv stem included), class / distillation / register
          tokens, absolute position embedding, and `norm_pre` (CLIP, xp, AIMv2): the norm that
          timm applies to the embedding before the first block is part of the embedding output,
          so it is part of `emb`.
    ln1, mha, ln2, fc1, fc2, ls1, ls2   per block (ls1/ls2: LayerScale modules or EVA/BEiT's
          gamma_1/gamma_2 parameters). `mha` holds the whole attention: q/k/v (fused or not, with
          q/v biases held separately), q/k norms, the output projection, the relative
          position bias (per block, or shared by all blocks and held by the model) and learned
          rotary frequencies (mixed rope, held by the model).
          `fc1` is the MLP's input projection: for SwiGLU both `fc1_g` and `fc1_x`, for a packed
          GLU its one linear of width 2H; either way f(x) - f(y) = W (x - y) with W the stacked
          (2H, D) weight, and its bound is ||W||_2. `fc2` is the output projection, with the
          MLP's inner norm (EVA-02, `scale_mlp_norm`) if any. FC2's probe is the paper's for
          every MLP kind: D-dim tokens zero-padded to fc2's input width, which is the hidden
          width H after gating for SwiGLU / packed GLU too, i.e. W_fc2[:, :D] (in situ: its
          real H-wide input, after the inner norm); the inner norm is trained with fc2 but is
          not part of the probe.
    norm  the final norm and `fc_norm`;  pool  an attention-pool head (SigLIP's `attn_pool`);
    head  the classifier(s), DeiT's `head_dist` included.

Text families (Hugging Face transformers; TEXT_FAMILIES below) keep the same names:
    emb   token, position and token-type embeddings (BERT: `embeddings`, its LayerNorm included,
          since it is the embedding output; GPT-2: `wte`, `wpe`).
    BERT, RoBERTa, MiniLM (post-LN: LN(x + f(x))): the norms are named by what they follow.
          `mha` attention.self (q/k/v) + attention.output.dense, measured as the attention with
          its output projection, without the residual and the norm after it; `ln1` the
          attention.output.LayerNorm after attention; `fc1` intermediate.dense; `fc2`
          output.dense; `ln2` the output.LayerNorm after the MLP.
    GPT-2 (pre-LN, causal): `ln1` ln_1, `mha` attn (c_attn, c_proj; Conv1D weights, measured as
          the linear maps W^T), `ln2` ln_2, `fc1` mlp.c_fc, `fc2` mlp.c_proj; `norm` ln_f.
    head  BERT's `pooler` (dense + tanh on the first token, which only a classifier reads) and
          a sequence classifier's own head (`classifier`, GPT-2's `score`) where the model has one.
    Their blocks read an attention mask (`mask`, families_ops.MASKS, as the model makes it from
    the padding mask); the input modes are `embedding` and `hidden` (models.text).

Each entry says where the parts live (`parts`: component -> attribute paths, the first present
one is the module the estimator calls), how the embedding output is computed (`embed`), which
extra arguments the blocks take (`context`: rotary embeddings, a shared relative position bias),
which function-preserving rescalings its blocks allow (`rescale`: a norm or LayerScale against
the linears that absorb 1/c) and which bounds are unavailable and why. Adding a family is one
entry here plus one row in tests/test_families.py (README: "How to add a model family").
"""

from __future__ import annotations

from vitplas.models.families_text import TEXT_FAMILIES
from vitplas.models.family_types import (
    BLOCK_COMPONENTS,
    EXTRA_BLOCK_COMPONENTS,
    GLOBAL_COMPONENTS,
    INPUT_MODES,
    POST_NORM,
    BlockSpec,
    Family,
    Refused,
)

__all__ = [  # the record types and component names, re-exported: one place to import from
    "BLOCK_COMPONENTS",
    "EXTRA_BLOCK_COMPONENTS",
    "GLOBAL_COMPONENTS",
    "INPUT_MODES",
    "BlockSpec",
    "Family",
    "Refused",
]

_MLP = {"fc1": ("mlp.fc1", "mlp.fc1_g", "mlp.fc1_x"), "fc2": ("mlp.fc2", "mlp.norm")}
_PRE = {"ln1": ("norm1",), "mha": ("attn",), "ln2": ("norm2",), **_MLP}
_LS = {"ls1": ("ls1",), "ls2": ("ls2",)}
_GAMMA = {"ls1": ("gamma_1",), "ls2": ("gamma_2",)}
GAMMA_SOURCES = {"ls1": "attn", "ls2": "mlp"}  # the module whose output gamma_1/gamma_2 scale
_HEAD = {"norm": ("norm", "fc_norm"), "pool": ("attn_pool",), "head": ("head",)}
_VIT_EMB = ("patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre")

# A norm's gain and bias times c, with the weights of the linears that read its output times
# 1/c: W (c u) / c = W u, their biases unchanged. A LayerScale's gamma times c, with the weight
# and bias of the projection whose output it scales times 1/c. Neither changes the function.
_RESCALE = {
    "ln1": ("attn.qkv", "attn.q_proj", "attn.k_proj", "attn.v_proj"),
    "ln2": ("mlp.fc1", "mlp.fc1_g", "mlp.fc1_x"),
    "ls1": ("attn.proj",),
    "ls2": ("mlp.fc2",),
}


def _post_norm(type_: str, parts: dict[str, tuple[str, ...]]) -> BlockSpec:
    """A block whose norms follow attention / MLP (ResPost): ln1/ln2 read their outputs."""
    return BlockSpec(type_, parts, post_norm=True, no_rescale=POST_NORM)


_IN_PROJ = "its weights are rows of the fused in_proj it shares with {}: train in_proj or all"
PARALLEL_BLOCK = BlockSpec(
    "vision_transformer.ParallelScalingBlock",
    {
        "ln1": ("in_norm",),  # the one norm, read by attention and MLP alike
        "in_proj": ("in_proj", "mlp_bias"),
        "mha": ("q_norm", "k_norm", "attn_out_proj"),
        "fc2": ("mlp_out_proj",),
        "ls1": ("ls",),  # one LayerScale on attention + MLP
    },
    probes={"mha": "parallel_mha", "fc1": "parallel_fc1"},
    not_trainable={"mha": _IN_PROJ.format("fc1"), "fc1": _IN_PROJ.format("mha")},
    refuse_if=(("out_proj", "attention and MLP share one fused output projection (out_proj)"),),
    rescale={"ln1": ("in_proj",), "ls1": ("attn_out_proj", "mlp_out_proj")},
)

VIT_BLOCKS = (
    BlockSpec("vision_transformer.Block", {**_PRE, **_LS}, rescale=_RESCALE),
    _post_norm("vision_transformer.ResPostBlock", {**_PRE, **_LS}),
    PARALLEL_BLOCK,
)
EVA_BLOCKS = (
    BlockSpec("eva.EvaBlock", {**_PRE, **_GAMMA}, rescale=_RESCALE),
    _post_norm("eva.EvaBlockPostNorm", {**_PRE}),
)

VISION_FAMILIES: tuple[Family, ...] = (
    Family(
        name="vit",
        model_types=("vision_transformer.VisionTransformer",),
        blocks=VIT_BLOCKS,
        parts={"emb": _VIT_EMB, **_HEAD},
        embed="vit",
        examples=(
            "vit_base_patch16_224",
            "deit3_small_patch16_224",
            "vit_base_patch16_clip_224",
            "vit_base_patch16_siglip_224",
            "vit_small_patch14_reg4_dinov2",
            "flexivit_small",
            "vit_base_patch16_224.mae",
            "vit_base_r50_s16_224 (hybrid)",
            "aimv2_large_patch14_224",
            "vit_base_patch16_xp_224 (parallel)",
        ),
        notes="timm vision_transformer(_hybrid): plain, DeiT, DeiT-III, CLIP, SigLIP(2), "
        "registers, GAP, FlexiViT, MAE, hybrid conv stems, AIMv2 (RmsNorm, SwiGLU); parallel-"
        "scaling (xp): mha and fc1 measured, trained only together (in_proj), no ln2",
    ),
    Family(
        name="deit-distilled",
        model_types=("deit.VisionTransformerDistilled",),
        blocks=VIT_BLOCKS,
        parts={"emb": (*_VIT_EMB, "dist_token"), **_HEAD, "head": ("head", "head_dist")},
        embed="vit",
        examples=("deit_small_distilled_patch16_224",),
        notes="DeiT with a distillation token (emb) and a second head (head)",
    ),
    Family(
        name="vit-relpos",
        model_types=("vision_transformer_relpos.VisionTransformerRelPos",),
        blocks=(
            BlockSpec("vision_transformer_relpos.RelPosBlock", {**_PRE, **_LS}, rescale=_RESCALE),
            _post_norm("vision_transformer_relpos.ResPostRelPosBlock", _PRE),
        ),
        parts={"emb": ("patch_embed", "cls_token"), "mha": ("shared_rel_pos",), **_HEAD},
        embed="relpos",
        context="relpos",
        mha_bound="relative position bias inside attention",
        examples=("vit_relpos_small_patch16_224", "vit_srelpos_small_patch16_224"),
        notes="relative position bias (per block or shared: both under mha)",
    ),
    Family(
        name="eva",
        model_types=("eva.Eva",),
        blocks=EVA_BLOCKS,
        parts={"emb": _VIT_EMB, "mha": ("rope",), **_HEAD},
        embed="eva",
        context="rope",
        examples=(
            "eva02_small_patch14_224",
            "vit_small_patch16_dinov3",
            "vit_pe_core_small_patch16_384",
            "vit_base_patch16_rope_224",
            "vit_medium_patch16_rope_reg1_gap_256",
        ),
        notes="EVA-02, DINOv3, PE-core, rope ViTs: rope, q/v biases, SwiGLU or packed GLU, "
        "gamma_1/gamma_2",
    ),
    Family(
        name="beit",
        model_types=("beit.Beit",),
        blocks=(BlockSpec("beit.Block", {**_PRE, **_GAMMA}, rescale=_RESCALE),),
        parts={
            "emb": ("patch_embed", "cls_token", "pos_embed"),
            "mha": ("rel_pos_bias",),
            **_HEAD,
        },
        embed="beit",
        context="beit",
        mha_bound="relative position bias inside attention",
        examples=("beit_base_patch16_224", "beitv2_base_patch16_224"),
        notes="BEiT, BEiTv2: relative position bias, q/v biases, gamma_1/gamma_2",
    ),
    Family(
        name="naflexvit",
        model_types=("naflexvit.NaFlexVit",),
        blocks=(*VIT_BLOCKS, *EVA_BLOCKS),
        parts={"emb": ("embeds", "norm_pre"), "mha": ("rope",), **_HEAD},
        embed="naflex",
        context="rope",
        examples=("naflexvit_base_patch16_gap",),
        notes="NaFlexViT on fixed-size images (no patch coordinates)",
    ),
)

FAMILIES: tuple[Family, ...] = (*VISION_FAMILIES, *TEXT_FAMILIES)

REFUSED: tuple[Refused, ...] = (
    Refused(
        "vision_transformer.DiffParallelScalingBlock",
        "vit (differential parallel-scaling)",
        "attention and MLP share one fused input projection (in_proj)",
    ),
    Refused(
        "vision_transformer.ParallelThingsBlock",
        "vit (parallel things)",
        "each block has several parallel attention and MLP branches, no single ln1/mha/fc1",
    ),
    Refused(
        "vision_transformer_sam.VisionTransformerSAM",
        "sam",
        "SAM's windowed blocks read (B, H, W, D) token grids, not (B, N, D) token sequences",
    ),
)


def type_key(obj: object) -> str:
    """'<module>.<class>' of an object (the module's last part), e.g. 'eva.EvaBlock',
    'modeling_bert.BertLayer'."""
    cls = type(obj)
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__qualname__}"


def supported_names() -> str:
    return ", ".join(f.name for f in FAMILIES)


def find_family(model: object) -> Family:
    """The registry entry of `model`'s class; an unsupported model is a one-line TypeError."""
    key = type_key(model)
    for family in FAMILIES:
        if key in family.model_types:
            return family
    for refused in REFUSED:
        if key == refused.type:
            raise TypeError(
                f"{refused.family} ({key}) is not supported: {refused.why}; "
                f"supported families: {supported_names()}"
            )
    raise TypeError(
        f"{key} is not a supported model family; supported families: {supported_names()} "
        "(add one in vitplas.models.families)"
    )


def find_block(family: Family, block: object) -> BlockSpec:
    """The block entry of `block` in `family`; a refused or unknown type is a one-line error."""
    key = type_key(block)
    for spec in family.blocks:
        if spec.type == key:
            return spec
    for refused in REFUSED:
        if key == refused.type:
            raise TypeError(
                f"{refused.family} block {key} is not supported: {refused.why}; "
                f"supported families: {supported_names()}"
            )
    known = ", ".join(s.type for s in family.blocks)
    raise TypeError(
        f"block type {key} is not in family '{family.name}' (it has {known}); "
        "add a BlockSpec in vitplas.models.families"
    )


def _layerscale(family: Family) -> str:
    kinds = sorted({p for b in family.blocks for p in b.parts.get("ls1", ())})
    if not kinds:
        return "none"
    return {"ls1": "ls1/ls2", "gamma_1": "gamma_1/2"}.get("+".join(kinds), "ls1/ls2, gamma_1/2")


def family_rows() -> list[dict[str, str]]:
    """What each family supports (for `vitplas models --families`), refused types last.

    bounds: LayerNorm's, ||W||_2 for fc1/fc2, max|gamma| for ls1/ls2 and the MHA formula;
    NaN with the reason where a norm is not a LayerNorm or the attention is outside the
    formula (rope, relative position bias, q/k norms, ...)."""
    rows = []
    for f in FAMILIES:
        no_mha = f.mha_bound or ("rope" if f.context == "rope" else "")
        rows.append(
            {
                "family": f.name,
                "supported": "yes",
                "modality": f.modality,
                "classes": ", ".join((*f.model_types, *(b.type for b in f.blocks))),
                "components": f.components,
                "layerscale": _layerscale(f),
                "bounds": "all" + (f"; mha NaN: {no_mha.split(' inside')[0]}" if no_mha else ""),
                "input modes": ", ".join(f.input_modes),
                "examples": ", ".join(f.examples),
                "notes": f.notes,
            }
        )
    for r in REFUSED:
        rows.append({"family": r.family, "supported": "no", "classes": r.type, "notes": r.why})
    return rows
