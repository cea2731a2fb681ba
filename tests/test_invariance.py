"""The reparametrisation check (analysis.invariance): the rescalings each block kind allows keep
the model's function (float64, to 1e-10) and move plasticity by exactly the predicted factors;
post-norm blocks allow none, with the reason; `vitplas plasticity --check-invariance` prints it."""

from __future__ import annotations

import pandas as pd
import pytest
import timm
import torch
from typer.testing import CliRunner

from vitplas.analysis.invariance import check, rescaled, rescalings
from vitplas.analysis.plasticity import pair_ratios
from vitplas.cli import app
from vitplas.models.components import component_map

SMALL = dict(depth=2, embed_dim=64, num_heads=4, num_classes=5)
C = 0.02
# name -> (extra kwargs, the rescalings its blocks allow)
MODELS = {
    "vit_small_patch14_reg4_dinov2": ({}, ["ln1", "ln2", "ls1", "ls2"]),
    "eva02_base_patch14_224": ({}, ["ln1", "ln2"]),  # SwiGLU: fc1_g and fc1_x absorb 1/c
    "vit_small_patch16_dinov3": ({}, ["ln1", "ln2", "ls1", "ls2"]),  # gamma_1 / gamma_2
    "beit_base_patch16_224": ({}, ["ln1", "ln2", "ls1", "ls2"]),
    "vit_large_patch14_xp_224": ({"qk_norm": False, "init_values": 0.1}, ["ln1", "ls1"]),
    "vit_relpos_small_patch16_224": ({}, ["ln1", "ln2", "ls1", "ls2"]),
    "vit_base_patch16_rpn_224": ({}, []),  # post-norm
    "eva02_enormous_patch14_clip_224": ({}, []),  # post-norm
}
# rescaling -> {component: the factor its plasticity moves by}; any other component: 1, but for
# MHA under LN1 -> q/k/v in embedding mode (it reads h, and q/k/v change inside it: None)
FACTORS = {
    "ln1": {"ln1": C, "mha": 1 / C},
    "ln2": {"ln2": C, "fc1": 1 / C},
    "ls1": {"ls1": C, "mha": 1 / C},
    "ls2": {"ls2": C, "fc2": 1 / C},
}
# a parallel block: in_proj holds q/k/v and FC1's rows; one ls scales attention + MLP
PARALLEL = {"ln1": {"fc1": 1 / C, "in_proj": 1 / C}, "ls1": {"fc2": 1 / C}}


def expected_factor(scaled: str, comp: str, inputs: str, parallel: bool) -> float | None:
    if scaled == "ln1" and comp == "mha" and inputs == "embedding":
        return None
    factors = {**FACTORS[scaled], **(PARALLEL.get(scaled, {}) if parallel else {})}
    return factors.get(comp, 1.0)


def tiny(name: str, extra: dict):
    torch.manual_seed(0)
    side = 3 if name.startswith(("beit", "vit_relpos")) else 2
    with torch.device("meta"):
        ph, _ = component_map(timm.create_model(name, **SMALL, **extra)).patch_size()
    model = timm.create_model(name, img_size=side * ph, **SMALL, **extra).double().eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, dtype=param.dtype))
    gen = torch.Generator().manual_seed(1)
    return model, torch.randn(4, 3, side * ph, side * ph, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_rescalings_keep_the_function_and_move_plasticity_by_c(name):
    extra, expected = MODELS[name]
    model, images = tiny(name, extra)
    cmap = component_map(model)
    allowed, refused = rescalings(cmap, C)
    assert [r.scaled for r in allowed] == expected
    if not expected:
        assert refused and all("post-norm" in why for why in refused)
    with torch.no_grad():
        logits = model(images)
    for inputs in ("embedding", "insitu"):
        base = pair_ratios(cmap, images[:2], images[2:], inputs=inputs)
        for r in allowed:
            other = rescaled(model, r)
            with torch.no_grad():
                assert (other(images) - logits).abs().max() < 1e-10, r.label
            after = pair_ratios(component_map(other), images[:2], images[2:], inputs=inputs)
            parallel = "in_proj" in cmap.block_components
            for c, comp in enumerate(cmap.block_components):
                want = expected_factor(r.scaled, comp, inputs, parallel)
                if want is not None:
                    assert torch.allclose(after[..., c], want * base[..., c], rtol=1e-8), (
                        inputs,
                        r.label,
                        comp,
                    )


def test_check_reports_output_change_factors_and_rankings():
    model, images = tiny("vit_small_patch14_reg4_dinov2", {})
    cmap = component_map(model)
    batches = [(images[:2], images[2:])]
    found = check(cmap, batches, components=cmap.block_components, c=C)
    assert found.pairs == 2 and not found.refused
    assert max(found.output_change.values()) < 1e-10 * found.base_scale
    table = found.table.set_index(["rescaling", "component"])
    label = next(r for r in found.rankings if r.startswith("ln2 x0.02 / mlp.fc1 x50"))
    assert table.loc[(label, "ln2"), "factor"] == pytest.approx(C, rel=1e-9)
    assert table.loc[(label, "fc1"), "factor"] == pytest.approx(1 / C, rel=1e-9)
    assert table.loc[(label, "mha"), "factor"] == pytest.approx(1.0, rel=1e-12)  # reads h
    before, after, _ = found.rankings[label]
    assert after[0] == "fc1" and before != after  # x50: FC1 ranks first


def test_plasticity_cli_check_invariance_prints_and_reads_back(tmp_path):
    args = ["plasticity", "--model", "tiny-random", "--random-init", "--target", "digits"]
    args += ["--pairs", "8", "--batch-size", "4", "--check-invariance", "--no-bounds"]
    args += ["figures=false", "--out", str(tmp_path)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "invariance check (8 pairs" in first.output
    assert "ln2 x0.02 / mlp.fc1 x50: max |output change|" in first.output
    assert "(figures=false)" in first.output and "figures in" not in first.output
    assert "Kendall tau nan" not in first.output
    table = pd.read_csv(tmp_path / "invariance.csv")
    row = table[(table.component == "fc1") & table.rescaling.str.startswith("ln2")].iloc[0]
    assert row.factor == pytest.approx(50, rel=1e-4)  # float32
    assert "invariance check" in (tmp_path / "summary.txt").read_text()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "read back from its folder" in again.output
    assert "ln2 x0.02 / mlp.fc1 x50: max |output change|" in again.output


def test_a_rescaling_that_changes_the_function_is_refused(monkeypatch):
    from vitplas.analysis import invariance

    model, images = tiny("vit_small_patch14_reg4_dinov2", {})
    cmap = component_map(model)
    monkeypatch.setattr(invariance, "ABSORBS_BIAS", ())  # LS -> proj without the bias: wrong
    with pytest.raises(RuntimeError, match=r"rescaling ls1 x0.02 / attn.proj x50 changed"):
        check(cmap, [(images[:2], images[2:])], components=cmap.block_components)


def test_summary_of_one_component_names_no_tau():
    from vitplas.analysis.invariance import COLUMNS, summary_lines

    table = pd.DataFrame([("ln2 x0.02 / mlp.fc1 x50", 0.02, "fc1", 0.7, 35.0, 50.0, 1, 1)],
                         columns=COLUMNS)  # fmt: skip
    facts = {"pairs": 8, "images": 8, "base_scale": 1.0, "refused": [],
             "rankings": {"ln2 x0.02 / mlp.fc1 x50": (["fc1"], ["fc1"], float("nan"))},
             "output_change": {"ln2 x0.02 / mlp.fc1 x50": 1e-7}}  # fmt: skip
    text = "\n".join(summary_lines(table, facts))
    assert "ranking fc1 unchanged (one component: no Kendall tau)" in text and "nan" not in text
