"""The modules the plasticity estimator calls for text models, against hand computations from
the raw weights on a tiny random BERT and GPT-2 with a padded batch (1e-6): MHA is the
attention with its output projection, with the model's mask (BERT: padding; GPT-2: causal and
padding), without residual or norm; fc2 reads D-dim tokens zero-padded to its input width; the
norms are themselves. models.text's embedding output and block inputs against the model's own
hidden states."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_families_text import batch, build

from vitplas.analysis.plasticity import _Inputs, component_numerator
from vitplas.models import text
from vitplas.models.components import component_map
from vitplas.models.text_ops import MaskedAttention

ATOL = 1e-6


def _attention_by_hand(q, k, v, key_mask, causal: bool, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_h) + mask) v per head, for (B, L, A) q/k/v and (B, L) key mask."""
    b, n, a = q.shape
    split = lambda t: t.view(b, n, heads, a // heads).transpose(1, 2)  # noqa: E731  (B, H, L, d_h)
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(a // heads)  # (B, H, L, L)
    allowed = key_mask.bool()[:, None, None, :].expand(b, 1, n, n)
    if causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool).tril()
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return (weights @ split(v)).transpose(1, 2).reshape(b, n, a)  # (B, L, A)


def _inputs(model, ids):
    cmap = component_map(model)
    with torch.no_grad():
        return cmap, cmap.embed(ids) + 0.1 * torch.randn(ids.shape[0], ids.shape[1], 32)


@pytest.mark.parametrize("name", ["bert", "roberta", "bert-cls"])
def test_bert_mha_is_attention_and_output_dense_with_the_padding_mask(name):
    model = build(name).double()
    ids, mask = batch()
    cmap, x = _inputs(model, ids)
    x = x.double()
    attn = cmap.block(1).attention
    self_attn, dense = attn.self, attn.output.dense
    with torch.no_grad():
        q, k, v = (lin(x) for lin in (self_attn.query, self_attn.key, self_attn.value))
        by_hand = dense(_attention_by_hand(q, k, v, mask, causal=False, heads=4))
        probe = cmap.module(1, "mha")
        assert isinstance(probe, MaskedAttention)
        assert torch.allclose(probe(x, attention_mask=mask), by_hand, atol=ATOL)
        # the block's own attention output is LN1(x + mha(x)): the probe has no residual/norm
        model_mask = torch.where(mask.bool()[:, None, None, :], 0.0, float("-inf")).double()
        own = attn(x, attention_mask=model_mask)[0]
        assert torch.allclose(cmap.module(1, "ln1")(x + by_hand), own, atol=ATOL)
        assert cmap.module(1, "ln1") is attn.output.LayerNorm


@pytest.mark.parametrize("name", ["gpt2", "gpt2-cls"])
def test_gpt2_mha_is_causal_attention_with_c_proj(name):
    model = build(name).double()
    ids, mask = batch()
    cmap, x = _inputs(model, ids)
    x = x.double()
    attn = cmap.block(0).attn
    with torch.no_grad():
        qkv = x @ attn.c_attn.weight + attn.c_attn.bias  # Conv1D: weight (in, out)
        q, k, v = qkv.split(32, dim=-1)
        heads = _attention_by_hand(q, k, v, mask, causal=True, heads=4)
        by_hand = heads @ attn.c_proj.weight + attn.c_proj.bias
        probe = cmap.module(0, "mha")
        assert torch.allclose(probe(x, attention_mask=mask), by_hand, atol=ATOL)
        no_mask = _attention_by_hand(q, k, v, torch.ones_like(mask), causal=True, heads=4)
        assert torch.allclose(probe(x), no_mask @ attn.c_proj.weight + attn.c_proj.bias, atol=ATOL)
        assert cmap.module(0, "ln1") is cmap.block(0).ln_1


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_fc1_fc2_are_linear_and_fc2_reads_zero_padded_tokens(name):
    model = build(name).double()
    ids, _ = batch()
    cmap, h = _inputs(model, ids)
    h = h.double()
    block = cmap.block(1)
    real_fc1, real_fc2 = (
        (block.intermediate.dense, block.output.dense)
        if name == "bert"
        else (block.mlp.c_fc, block.mlp.c_proj)
    )
    with torch.no_grad():
        fc1, fc2 = cmap.module(1, "fc1"), cmap.module(1, "fc2")
        assert isinstance(fc1, torch.nn.Linear) and isinstance(fc2, torch.nn.Linear)
        assert torch.allclose(fc1(h), real_fc1(h), atol=ATOL)
        wide = F.pad(h, (0, 48 - 32))  # D-dim tokens zero-padded to fc2's input width 48
        assert fc2.in_features == 48
        x, y = wide.chunk(2)
        expected = (real_fc2(x) - real_fc2(y)).flatten(1).norm(dim=1)
        assert torch.allclose(component_numerator(fc2, "fc2", _Inputs(h)), expected, atol=ATOL)
        by_module = (real_fc1(x[..., :32]) - real_fc1(y[..., :32])).flatten(1).norm(dim=1)
        assert torch.allclose(component_numerator(fc1, "fc1", _Inputs(h)), by_module, atol=ATOL)


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_mha_hooks_fire_in_the_models_forward_with_the_probes_output(name):
    model = build(name)
    ids, mask = batch()
    cmap = component_map(model)
    seen = []
    handle = cmap.module(0, "mha").register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        handle.remove()
        expected = cmap.module(0, "mha")(
            cmap.embed(ids) if name == "bert" else cmap.block(0).ln_1(cmap.embed(ids)),
            attention_mask=mask,
        )
    assert len(seen) == 1 and torch.allclose(seen[0], expected, atol=1e-5)


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_attention_parts_are_the_fused_qkv_and_projection(name):
    model = build(name)
    cmap = component_map(model)
    qkv, proj, heads = cmap.attention_parts(0)
    h = torch.randn(2, 5, 32)
    attn = cmap.block(0).attention.self if name == "bert" else cmap.block(0).attn
    with torch.no_grad():
        if name == "bert":
            expected = torch.cat([attn.query(h), attn.key(h), attn.value(h)], -1)
        else:
            expected = attn.c_attn(h)
        assert torch.allclose(qkv(h), expected, atol=ATOL) and heads == 4
        assert proj.weight.shape == (32, 32)


@pytest.mark.parametrize("name", ["bert", "roberta", "gpt2", "gpt2-cls"])
def test_embedding_output_and_block_inputs_are_the_models_hidden_states(name):
    model = build(name)
    ids, mask = batch()
    cmap = component_map(model)
    with torch.no_grad():
        inputs = text.block_inputs(cmap, ids, mask)
        own = model.base_model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        assert torch.equal(text.embed_tokens(cmap, ids, mask), inputs[0])
    assert len(inputs) == cmap.depth == 2
    for layer, h in enumerate(inputs):
        assert torch.allclose(h, own.hidden_states[layer], atol=ATOL), layer
    padded = torch.where(mask.bool(), ids, 5)  # other pad tokens change no real position's input
    with torch.no_grad():
        again = text.block_inputs(cmap, padded, mask)[1]
    real = mask.bool()
    assert torch.allclose(again[real], inputs[1][real], atol=1e-5)


def test_text_inputs_refuse_images_bad_ids_and_masks():
    cmap = component_map(build("bert"))
    ids, mask = batch()
    with pytest.raises(ValueError, match=r"input_ids must be a \(B, L\) integer batch"):
        text.embed_tokens(cmap, ids.float())
    with pytest.raises(ValueError, match=r"attention_mask \(4, 6\) differs"):
        text.block_inputs(cmap, ids, mask[:, :6])
    from test_families import build as build_vit

    vit = component_map(build_vit("vit_tiny_patch16_224", {})[0])
    with pytest.raises(TypeError, match="reads images, not token ids"):
        text.embed_tokens(vit, ids)
    with pytest.raises(ValueError, match="takes no attention mask"):
        vit.forward_block(0, torch.randn(1, 5, 64), mask[:1, :5])
