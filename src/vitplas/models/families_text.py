"""Text transformer families of the registry (Hugging Face transformers): BERT-style encoders
(BertModel, RobertaModel; MiniLM is a BERT) and GPT-2, each also inside its
*ForSequenceClassification. models.families documents the component names they keep and
merges these entries into FAMILIES; models.text_ops holds the code their kinds name."""

from __future__ import annotations

from dataclasses import replace

from vitplas.models.family_types import POST_NORM, BlockSpec, Family

_POST_LN = "post-LN: ln1 follows mha, ln2 the MLP"
_CROSS = "cross-attention (an encoder-decoder block): a block with two attentions"
_BERT_PARTS = {
    "mha": ("attention.self", "attention.output.dense"),
    "ln1": ("attention.output.LayerNorm",),  # post-LN: the norm after attention
    "fc1": ("intermediate.dense",),
    "fc2": ("output.dense",),
    "ln2": ("output.LayerNorm",),  # post-LN: the norm after the MLP
}


def _bert_block(type_: str) -> BlockSpec:
    return BlockSpec(
        type_,
        _BERT_PARTS,
        post_norm=True,
        probes={"mha": "bert_mha"},
        refuse_if=(("crossattention", _CROSS),),
        no_rescale=POST_NORM,
    )


GPT2_BLOCK = BlockSpec(
    "modeling_gpt2.GPT2Block",
    {"ln1": ("ln_1",), "mha": ("attn",), "ln2": ("ln_2",), "fc1": ("mlp.c_fc",),
     "fc2": ("mlp.c_proj",)},
    probes={"mha": "gpt2_mha", "fc1": "conv1d", "fc2": "conv1d"},
    refuse_if=(("crossattention", _CROSS),),
    # pre-LN: ln_1's output feeds only c_attn, ln_2's only c_fc (Conv1D: its whole weight / c)
    rescale={"ln1": ("attn.c_attn",), "ln2": ("mlp.c_fc",)},
)  # fmt: skip
_TEXT = dict(modality="text", input_modes=("embedding", "hidden", "insitu"))
_TEXT_NOTES = (
    "plasticity and bounds: padding masked (analysis.token_inputs); finetuning: sequence "
    "classification (hf_text.with_classifier)"
)
BERT = Family(
    name="bert",
    model_types=("modeling_bert.BertModel", "modeling_roberta.RobertaModel"),
    blocks=(_bert_block("modeling_bert.BertLayer"), _bert_block("modeling_roberta.RobertaLayer")),
    parts={"emb": ("embeddings",), "head": ("pooler",)},
    embed="bert",
    mask="bert",
    blocks_path="encoder.layer",
    components=f"emb mha ln1 fc1 fc2 ln2 (head: pooler); {_POST_LN}",
    examples=("minilm-l6", "google-bert/bert-base-uncased", "FacebookAI/roberta-base (HF ids)"),
    notes="transformers BertModel, RobertaModel (MiniLM is a BERT): post-LN, bidirectional "
    f"attention with the padding mask; {_TEXT_NOTES}",
    **_TEXT,
)
GPT2 = Family(
    name="gpt2",
    model_types=("modeling_gpt2.GPT2Model",),
    blocks=(GPT2_BLOCK,),
    parts={"emb": ("wte", "wpe"), "norm": ("ln_f",)},
    embed="gpt2",
    mask="causal",
    classifier_token="last",  # GPT2ForSequenceClassification scores the last real token
    blocks_path="h",
    components="emb ln1 mha ln2 fc1 fc2 norm",
    examples=("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"),
    notes=f"transformers GPT2Model: pre-LN, causal attention, Conv1D weights; {_TEXT_NOTES}",
    **_TEXT,
)


def _classifier(
    base: Family, name: str, model_type: str, prefix: str, head: tuple[str, ...], components: str
) -> Family:
    """`base` inside a transformers *ForSequenceClassification: its paths under `prefix`, the
    classifier's own modules (`head`, model-level paths) added to `head`."""
    parts = {c: tuple(f"{prefix}.{p}" for p in paths) for c, paths in base.parts.items()}
    parts["head"] = (*parts.get("head", ()), *head)
    return replace(
        base,
        name=name,
        model_types=(model_type,),
        parts=parts,
        blocks_path=f"{prefix}.{base.blocks_path}",
        components=components,
        examples=(),
        notes=f"{base.name} with a sequence classifier ({', '.join(head)}: head)",
    )


TEXT_FAMILIES: tuple[Family, ...] = (
    BERT,
    _classifier(BERT, "bert-classifier", "modeling_bert.BertForSequenceClassification", "bert",
                ("classifier",), f"emb mha ln1 fc1 fc2 ln2 head (pooler + classifier); {_POST_LN}"),
    _classifier(BERT, "roberta-classifier", "modeling_roberta.RobertaForSequenceClassification",
                "roberta", ("classifier",), f"emb mha ln1 fc1 fc2 ln2 head (classifier); "
                f"{_POST_LN}"),
    GPT2,
    _classifier(GPT2, "gpt2-classifier", "modeling_gpt2.GPT2ForSequenceClassification",
                "transformer", ("score",), "emb ln1 mha ln2 fc1 fc2 norm head (score)"),
)  # fmt: skip
