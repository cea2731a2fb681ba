"""Plasticity of text models: the masked ratio ||m (f(x) - f(y))|| / ||m (x - y)||, m the positions
real in both sequences, against a hand computation on tiny random BERT and GPT-2 (1e-6, both
input modes), pad positions changing no ratio (padded further, other pad ids; every mode), the
bounds' token statistics (joint tokens for s_min, own real tokens for r_max, inf for pairs of
different real lengths), the real MiniLM end to end (skipped when absent) and the refusals
(radius and bounds of text models: tests/test_bounds_text.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_families_text import build, minilm_folder
from test_text_probes import _attention_by_hand
from typer.testing import CliRunner

from vitplas.analysis.plasticity import pair_ratios
from vitplas.analysis.text_pairs import unpack
from vitplas.models.components import component_map

ATOL = 1e-6
NAMES = ["ln1", "mha", "ln2", "fc1", "fc2"]


def _pairs(length: int = 7, pad_id: int = 0, pad_more: int = 0):
    """2 pairs (x, y) of packed (B, 2, L) ids + masks: pair 0 of different real lengths (x 7, y
    4), pair 1 of one length (5); pad positions hold `pad_id` (-1: random ids)."""
    gen = torch.Generator().manual_seed(3)
    size = length + pad_more
    ids = torch.randint(3, 99, (4, 16), generator=gen)[:, :size]  # the same real tokens
    lengths = torch.tensor([7, 5, 4, 5])  # x0, x1, y0, y1
    mask = (torch.arange(size)[None] < lengths[:, None]).long()
    fill = torch.randint(3, 99, (4, size), generator=gen) if pad_id < 0 else pad_id
    ids = torch.where(mask.bool(), ids, fill)
    packed = torch.stack([ids, mask], 1)  # (4, 2, L)
    return packed[:2], packed[2:]


def _mha_by_hand(name, block, x, mask):
    if name.startswith("gpt2"):
        attn = block.attn
        q, k, v = (x @ attn.c_attn.weight + attn.c_attn.bias).split(32, dim=-1)
        heads = _attention_by_hand(q, k, v, mask, causal=True, heads=4)
        return heads @ attn.c_proj.weight + attn.c_proj.bias
    self_attn, dense = block.attention.self, block.attention.output.dense
    q, k, v = (lin(x) for lin in (self_attn.query, self_attn.key, self_attn.value))
    return dense(_attention_by_hand(q, k, v, mask, causal=False, heads=4))


def _modules(name, block):
    """{component: f(x) on (B, L, D) tokens} from the raw modules (fc2 zero-pads to its width)."""
    if name.startswith("gpt2"):
        mlp = block.mlp
        ln1, ln2 = block.ln_1, block.ln_2
        fc1 = lambda x: x @ mlp.c_fc.weight + mlp.c_fc.bias  # noqa: E731
        width = mlp.c_proj.weight.shape[0]
        fc2 = lambda x: F.pad(x, (0, width - x.shape[-1])) @ mlp.c_proj.weight  # noqa: E731
    else:
        ln1, ln2 = block.attention.output.LayerNorm, block.output.LayerNorm
        fc1 = block.intermediate.dense
        width = block.output.dense.in_features
        fc2 = lambda x: block.output.dense(F.pad(x, (0, width - x.shape[-1])))  # noqa: E731
    return {"ln1": ln1, "ln2": ln2, "fc1": fc1, "fc2": fc2}


def _by_hand(name, model, x, y, inputs):
    """(B, depth, C) ratios computed from the model's own hidden states and raw modules."""
    cmap = component_map(model)
    (ix, mx), (iy, my) = unpack(x), unpack(y)
    base = model.base_model
    with torch.no_grad():
        hx = base(input_ids=ix, attention_mask=mx, output_hidden_states=True).hidden_states
        hy = base(input_ids=iy, attention_mask=my, output_hidden_states=True).hidden_states
    joint = (mx.bool() & my.bool())[..., None].double()  # (B, L, 1)
    rows = []
    for layer in range(cmap.depth):
        at = 0 if inputs == "embedding" else layer
        a, b = hx[at], hy[at]
        block, fs = cmap.block(layer), _modules(name, cmap.block(layer))
        denom = (joint * (a - b)).flatten(1).norm(dim=1)
        cols = []
        for comp in NAMES:
            with torch.no_grad():
                if comp == "mha":
                    fa, fb = _mha_by_hand(name, block, a, mx), _mha_by_hand(name, block, b, my)
                else:
                    fa, fb = fs[comp](a), fs[comp](b)
            cols.append((joint * (fa - fb)).flatten(1).norm(dim=1) / denom)
        rows.append(torch.stack(cols, 1))
    return torch.stack(rows, 1)  # (B, depth, C)


@pytest.mark.parametrize("name", ["bert", "gpt2"])
@pytest.mark.parametrize("inputs", ["embedding", "hidden"])
def test_masked_ratios_match_a_hand_computation(name, inputs):
    model = build(name).double()
    x, y = _pairs()
    ratios = pair_ratios(component_map(model), x, y, NAMES, inputs)
    expected = _by_hand(name, model, x, y, inputs)
    assert ratios.shape == (2, 2, 5)
    assert torch.allclose(ratios, expected, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("name", ["bert", "roberta", "gpt2"])
@pytest.mark.parametrize("inputs", ["embedding", "hidden", "insitu"])
def test_pad_positions_change_no_ratio(name, inputs):
    model = build(name).double()
    cmap = component_map(model)
    first = pair_ratios(cmap, *_pairs(), NAMES, inputs)
    for other in (_pairs(pad_more=5), _pairs(pad_id=-1), _pairs(pad_id=-1, pad_more=3)):
        again = pair_ratios(cmap, *other, NAMES, inputs)
        assert torch.allclose(again, first, atol=ATOL, rtol=ATOL)
    assert torch.isfinite(first).all() and (first > 0).all()


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_bound_statistics_read_real_tokens_and_refuse_unequal_lengths(name):
    model = build(name).double()
    cmap = component_map(model)
    x, y = _pairs(pad_id=-1, pad_more=2)
    _, scales = pair_ratios(cmap, x, y, NAMES, "embedding", with_scales=True)
    mha, ln1 = NAMES.index("mha"), NAMES.index("ln1")
    assert math.isinf(scales[0, 0, mha]) and scales[0, 0, mha] > 0  # x 7 tokens, y 4
    (ix, mx), (iy, my) = unpack(x), unpack(y)
    with torch.no_grad():
        hx, hy = cmap.embed(ix), cmap.embed(iy)
    real = [hx[1, mx[1].bool()], hy[1, my[1].bool()]]
    largest = max(float(t.norm(dim=-1).max()) for t in real)
    assert scales[1, 0, mha].item() == pytest.approx(largest, rel=1e-9)
    joint = mx[0].bool() & my[0].bool()
    eps = cmap.module(0, "ln1").eps
    scale = [((h[0, joint].var(-1, unbiased=False) + eps).sqrt()).min() for h in (hx, hy)]
    assert scales[0, 0, ln1].item() == pytest.approx(float(min(scale)), rel=1e-9)


def test_minilm_ratios_are_finite_and_pad_free():
    from vitplas.analysis.setup import setup_loaded
    from vitplas.data.text import pack_tokens, tokenize_texts
    from vitplas.models import load_model

    minilm_folder()
    setup = setup_loaded(load_model("minilm-l6"), torch.device("cpu"), max_length=24)
    texts = [("a dog runs in the park", 0), ("it was a dull film", 1)]
    texts += [("the act of moving from one place to another quickly", 0), ("fine", 1)]
    rows = [text for text, _ in texts]
    short, longer = (pack_tokens(tokenize_texts(rows, setup.tokenizer, n)) for n in (24, 40))
    for inputs in ("embedding", "hidden", "insitu"):
        a = pair_ratios(setup.cmap, short[:2], short[2:], inputs=inputs)
        b = pair_ratios(setup.cmap, longer[:2], longer[2:], inputs=inputs)
        assert a.shape == (2, 6, 5) and torch.isfinite(a).all() and (a > 0).all()
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_minilm_plasticity_command_ranks_with_cis_and_text_units(tmp_path):
    from vitplas.cli.app import app

    minilm_folder()
    args = ["plasticity", "--model", "minilm-l6", "--reference", "wordnet-glosses"]
    args += ["--target", "rotten-tomatoes", "--pairs", "8", "--batch-size", "4"]
    args += ["radius_images=8", "max_length=32", "figures=false", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Plasticity of minilm-l6, pooled over layers (ranked)" in result.output
    assert "the target stream's CI units are its distinct texts (8 in the pairs)" in result.output
    assert "mha (mha-data): no finite bound in" in result.output
    assert "95% CI" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reference", "photos"], "dataset 'photos' is image but minilm-l6 reads token ids"),
        (["--protocol", "paper"], "protocol 'paper' is the original's image preprocessing"),
        (["--img-size", "32"], "minilm-l6 is a text model: it has no image size"),
        (["max_length=600"], "max_length 600: minilm-l6 reads sequences of 1 to 512"),
        (["max_length=0"], "max_length must be >= 1"),
    ],
)
def test_text_refusals_are_one_line(args, message, tmp_path):
    from vitplas.cli.app import app

    if args != ["max_length=0"]:
        minilm_folder()
    base = ["plasticity", "--model", "minilm-l6", "--reference", "wordnet-glosses"]
    base += ["--target", "rotten-tomatoes", "--pairs", "4", "--batch-size", "4"]
    result = CliRunner().invoke(app, [*base, *args, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_an_image_model_refuses_a_text_stream(tmp_path):
    from vitplas.cli.app import app

    args = ["plasticity", "--model", "tiny-random", "--img-size", "32", "--target", "fortunes"]
    result = CliRunner().invoke(app, [*args, "--pairs", "4", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "dataset 'fortunes' is text but tiny-random reads images" in result.output
