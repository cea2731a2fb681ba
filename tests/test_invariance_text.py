"""The reparametrisation check (analysis.invariance) on text transformers: GPT-2 (pre-LN) allows
ln_1 x c against attn.c_attn x 1/c and ln_2 x c against mlp.c_fc x 1/c, which keep its output
at the real tokens (and a classifier's logits) to 1e-10 in float64 and move P(LN2) by c, P(FC1)
by 1/c; BERT (post-LN) allows none, and the test shows why: the same norm-against-linear
rescaling, done by hand, changes BERT's output while it keeps GPT-2's. `vitplas plasticity
--check-invariance` prints GPT-2's table and BERT's one-line refusal."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import transformers as tf
from text_fixtures import text_world
from typer.testing import CliRunner

from vitplas.analysis.invariance import check, none_line, rescaled, rescalings
from vitplas.analysis.plasticity import pair_ratios
from vitplas.cli import app
from vitplas.models.components import component_map
from vitplas.models.text import real_outputs

C = 0.02
VOCAB, LENGTH = 20, 10
_GPT2 = dict(n_layer=2, n_embd=32, n_head=4, n_inner=48, vocab_size=VOCAB, n_positions=16)
_BERT = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=48,
             vocab_size=VOCAB, max_position_embeddings=16)  # fmt: skip
# rescaling -> {component: the factor its plasticity moves by}; every other component: 1, but
# MHA under ln1 in embedding mode (it reads h, and c_attn changes inside it)
FACTORS = {"ln1": {"ln1": C, "mha": 1 / C}, "ln2": {"ln2": C, "fc1": 1 / C}}


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """`model` in float64, eval, every parameter moved off its init (gains not 1, biases not 0)."""
    model = model.double().eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, dtype=param.dtype))
    return model


def _tokens(n: int = 4) -> torch.Tensor:
    """A pack_tokens batch (n, 2, LENGTH): random ids, right-padded to real lengths 3..LENGTH."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=gen)
    lengths = torch.tensor([3, LENGTH, 6, 8, 5, 9, 4, 7])[:n]
    mask = (torch.arange(LENGTH) < lengths[:, None]).long()
    return torch.stack([ids * mask, mask], dim=1)


def _gpt2(classifier: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    if classifier:
        config = tf.GPT2Config(**_GPT2, num_labels=3, pad_token_id=0)
        return _perturbed(tf.GPT2ForSequenceClassification(config))
    return _perturbed(tf.GPT2Model(tf.GPT2Config(**_GPT2)))


def _bert() -> torch.nn.Module:
    torch.manual_seed(0)
    return _perturbed(tf.BertModel(tf.BertConfig(**_BERT)))


def _output(model, tokens) -> torch.Tensor:
    with torch.no_grad():
        return real_outputs(model, tokens)


@pytest.mark.parametrize("classifier", [False, True], ids=["gpt2", "gpt2-classifier"])
def test_gpt2_rescalings_keep_its_output_and_move_plasticity_by_c(classifier):
    model, tokens = _gpt2(classifier), _tokens()
    cmap = component_map(model)
    allowed, refused = rescalings(cmap, C)
    assert [r.label for r in allowed] == ["ln1 x0.02 / attn.c_attn x50",
                                          "ln2 x0.02 / mlp.c_fc x50"]  # fmt: skip
    assert not refused
    base_out = _output(model, tokens)
    assert base_out.shape == ((4, 3) if classifier else (int(tokens[:, 1].sum()), 32))
    x, y = tokens[:2], tokens[2:]
    for inputs in ("embedding", "insitu"):
        base = pair_ratios(cmap, x, y, inputs=inputs)
        for r in allowed:
            other = rescaled(model, r)
            assert (_output(other, tokens) - base_out).abs().max() < 1e-10, r.label
            after = pair_ratios(component_map(other), x, y, inputs=inputs)
            for c, comp in enumerate(cmap.block_components):
                if r.scaled == "ln1" and comp == "mha" and inputs == "embedding":
                    continue
                want = FACTORS[r.scaled].get(comp, 1.0)
                assert torch.allclose(after[..., c], want * base[..., c], rtol=1e-8), (
                    inputs,
                    r.label,
                    comp,
                )


def test_check_on_token_pairs_reports_the_factors():
    model, tokens = _gpt2(), _tokens(8)
    cmap = component_map(model)
    found = check(cmap, [(tokens[:4], tokens[4:])], components=cmap.block_components, c=C)
    assert found.pairs == 4 and found.images == 8 and found.unit == "texts"
    assert max(found.output_change.values()) < 1e-10 * found.base_scale
    table = found.table.set_index(["rescaling", "component"])
    label = "ln2 x0.02 / mlp.c_fc x50"
    assert table.loc[(label, "ln2"), "factor"] == pytest.approx(C, rel=1e-9)
    assert table.loc[(label, "fc1"), "factor"] == pytest.approx(1 / C, rel=1e-9)
    assert table.loc[(label, "mha"), "factor"] == pytest.approx(1.0, rel=1e-12)


def _by_hand(model, blocks: str, norm: str, linear: str, c: float) -> torch.nn.Module:
    """A copy of `model` with, in every block, the norm at path `norm` (gain and bias) times c
    and the weight of the linear at path `linear` times 1/c: the norm-against-linear rescaling
    of the module docstring, written out for any family."""
    import copy

    model = copy.deepcopy(model)
    with torch.no_grad():
        for block in model.get_submodule(blocks):
            block.get_submodule(norm).weight.mul_(c)
            block.get_submodule(norm).bias.mul_(c)
            block.get_submodule(linear).weight.div_(c)
    return model


def test_bert_allows_none_because_norm_against_linear_changes_its_function():
    """Post-LN: LN1's output u feeds intermediate.dense and the residual of LN2(u + MLP(u)); the
    dense absorbs 1/c but the residual keeps c u, so the output moves. The same code on GPT-2
    (pre-LN: ln_2's output feeds mlp.c_fc only) keeps the output."""
    tokens = _tokens()
    bert, gpt2 = _bert(), _gpt2()
    cmap = component_map(bert)
    allowed, refused = rescalings(cmap, C)
    assert not allowed and len(refused) == 2 and all("post-norm" in why for why in refused)
    line = none_line(cmap)
    assert line == ("invariance check: not run, no norm-against-linear rescaling keeps this "
                    "model's function (ln1/ln2: post-norm: the norms' outputs join the residual "
                    "stream, no linear absorbs 1/c alone; a chain through the next norm (LN1 x c, "
                    "FC1 x 1/c, FC2 x c) is not checked)")  # fmt: skip
    with pytest.raises(ValueError, match="invariance check: not run"):
        check(cmap, [(tokens[:2], tokens[2:])], components=cmap.block_components)
    base = _output(bert, tokens)
    moved = _by_hand(bert, "encoder.layer", "attention.output.LayerNorm", "intermediate.dense", C)
    change = (_output(moved, tokens) - base).abs().max() / base.abs().max()
    assert change > 0.1  # not rounding: another function
    same = _by_hand(gpt2, "h", "ln_2", "mlp.c_fc", C)
    assert (_output(same, tokens) - _output(gpt2, tokens)).abs().max() < 1e-10


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return text_world(tmp_path_factory.mktemp("text"))


def _run(world, family: str, out) -> str:
    args = ["plasticity", "--model", str(world[family]), "--reference", "rotten-tomatoes"]
    args += ["--reference-split", "val", "--target", "rotten-tomatoes", "--data-root"]
    args += [str(world["data"]), "--pairs", "8", "--batch-size", "4", "max_length=12"]
    args += ["--check-invariance", "--no-bounds", "figures=false", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_plasticity_cli_checks_gpt2_and_refuses_bert_in_one_line(world, tmp_path):
    text = _run(world, "gpt2", tmp_path / "gpt2")
    assert "invariance check (8 pairs, the same for every model; outputs on 8 of their texts" in (
        text
    )
    assert "ln2 x0.02 / mlp.c_fc x50: max |output change|" in text
    table = pd.read_csv(tmp_path / "gpt2" / "invariance.csv")
    row = table[(table.component == "fc1") & table.rescaling.str.startswith("ln2")].iloc[0]
    assert row.factor == pytest.approx(50, rel=1e-4)  # float32
    for again in (False, True):  # computed, then read back from its folder
        text = _run(world, "bert", tmp_path / "bert")
        lines = [line for line in text.splitlines() if "invariance" in line]
        assert lines == [none_line(component_map(_bert()))], text
        assert ("read back from its folder" in text) == again
    assert not (tmp_path / "bert" / "invariance.csv").exists()
    assert "invariance check: not run" in (tmp_path / "bert" / "summary.txt").read_text()
