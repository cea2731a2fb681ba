"""Selection criteria against hand computations on a tiny ViT; ranking and the budget rule."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_train_support import tiny_vit, toy_data

from vitplas.models.components import component_map
from vitplas.selection import criteria as C
from vitplas.selection.budget import choose, train_set
from vitplas.selection.select import picks, score_model


def _batches(n_batches: int = 2, size: int = 8):
    data = toy_data(n_batches * size)
    return [
        (data.tensors[0][i * size : (i + 1) * size], data.tensors[1][i * size : (i + 1) * size])
        for i in range(n_batches)
    ]


def _row(frame: pd.DataFrame, crit: str, layer, comp: str) -> pd.Series:
    hit = frame[
        (frame["criterion"] == crit)
        & (frame["layer"].astype(str) == str(layer))
        & (frame["component"] == comp)
    ]
    assert len(hit) == 1, (crit, layer, comp)
    return hit.iloc[0]


@pytest.fixture(scope="module")
def model():
    return tiny_vit().eval()


def test_units_cover_every_block_parameter(model):
    units = C.unit_parameters(component_map(model))
    assert len(units) == 2 * 5  # depth 2 x (ln1, mha, ln2, fc1, fc2)
    names = {n for ps in units.values() for n, _ in ps}
    assert names == {n for n, _ in model.named_parameters() if n.startswith("blocks.")}
    assert [n for n, _ in units[(1, "mha")]] == [
        "blocks.1.attn.qkv.weight",
        "blocks.1.attn.qkv.bias",
        "blocks.1.attn.proj.weight",
        "blocks.1.attn.proj.bias",
    ]


def test_gradient_criteria_match_hand_computation(model):
    batches = _batches()
    frame = pd.DataFrame(
        C.gradient_scores(component_map(model), batches, ["grad_norm", "rgn", "fisher"])
    )
    params = dict(model.named_parameters())
    names = ["blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias"]
    grads = []
    for x, y in batches:
        gs = torch.autograd.grad(F.cross_entropy(model(x), y), [params[n] for n in names])
        grads.append(gs)
    mean = [(a + b) / 2 for a, b in zip(*grads, strict=True)]
    g_norm = math.sqrt(sum(float(g.pow(2).sum()) for g in mean))
    w_norm = math.sqrt(sum(float(params[n].detach().pow(2).sum()) for n in names))
    count = sum(params[n].numel() for n in names)
    fisher = sum(float((a**2 + b**2).sum()) / 2 for a, b in zip(*grads, strict=True)) / count
    assert _row(frame, "grad_norm", 0, "fc1")["score"] == pytest.approx(g_norm, rel=1e-5)
    assert _row(frame, "rgn", 0, "fc1")["score"] == pytest.approx(g_norm / w_norm, rel=1e-5)
    assert _row(frame, "fisher", 0, "fc1")["score"] == pytest.approx(fisher, rel=1e-5)
    assert _row(frame, "fisher", 0, "fc1")["params"] == count == 48 * 144 + 144
    # the component type: the norm over both layers' parameters
    g1 = _row(frame, "grad_norm", 1, "fc1")["score"]
    assert _row(frame, "grad_norm", "all", "fc1")["score"] == pytest.approx(math.hypot(g_norm, g1))
    assert all(p.grad is None for p in model.parameters())  # nothing left behind


def test_spectrum_criteria_match_hand_computation(model):
    frame = pd.DataFrame(C.spectrum_scores(component_map(model), ["condition", "stable_rank"]))
    qkv = model.blocks[1].attn.qkv.weight.detach().double()  # float64 by hand vs float32 SVD
    proj = model.blocks[1].attn.proj.weight.detach().double()
    kappas, ranks = [], []
    for w in (qkv, proj):
        s = torch.linalg.svdvals(w)
        kappas.append(float(s.max() / s.min()))
        ranks.append(float(w.pow(2).sum() / s.max() ** 2))
    assert _row(frame, "condition", 1, "mha")["score"] == pytest.approx(sum(kappas) / 2, rel=1e-4)
    assert _row(frame, "stable_rank", 1, "mha")["score"] == pytest.approx(sum(ranks) / 2, rel=1e-4)
    # LayerNorm: its weight as a diagonal matrix
    model.blocks[0].norm1.weight.data[:2] = torch.tensor([4.0, 0.5])
    frame = pd.DataFrame(C.spectrum_scores(component_map(model), ["condition", "stable_rank"]))
    g = model.blocks[0].norm1.weight.detach().double().abs()
    assert _row(frame, "condition", 0, "ln1")["score"] == pytest.approx(float(g.max() / g.min()))
    assert _row(frame, "stable_rank", 0, "ln1")["score"] == pytest.approx(
        float((g**2).sum() / g.max() ** 2)
    )
    model.blocks[0].norm1.weight.data.fill_(1.0)


def test_controls_and_ranking(model):
    frame = C.rank(
        pd.DataFrame(C.control_scores(component_map(model), ["params", "random"], seed=3))
    )
    fc1 = _row(frame, "params", "all", "fc1")
    assert fc1["score"] == fc1["params"] == 2 * (48 * 144 + 144)
    types = frame[(frame["criterion"] == "params") & (frame["layer"] == "all")]
    assert list(types.sort_values("rank")["component"])[:1] == ["mha"]  # 4*48*48 + 4*48 > fc1
    assert sorted(types["rank"]) == [1, 2, 3, 4, 5]
    again = C.rank(pd.DataFrame(C.control_scores(component_map(model), ["random"], seed=3)))
    assert list(again["score"]) == list(frame[frame["criterion"] == "random"]["score"])


def test_condition_ranks_lowest_first():
    frame = pd.DataFrame(
        [
            {"criterion": "condition", "layer": "all", "component": c, "score": s, "params": 1}
            for c, s in (("mha", 5.0), ("fc1", 2.0), ("ln1", math.nan))
        ]
    )
    ranked = C.rank(frame)
    assert dict(zip(ranked["component"], ranked["rank"], strict=True)) == {
        "fc1": 1,
        "mha": 2,
        "ln1": 3,
    }


def _synthetic() -> pd.DataFrame:
    rows = [("mha", 9.0, 40), ("fc1", 8.0, 50), ("fc2", 7.0, 50), ("ln1", 1.0, 2)]
    frame = [
        {"criterion": "plasticity", "layer": "all", "component": c, "score": s, "params": n}
        for c, s, n in rows
    ]
    for layer in range(3):
        for c, s, n in rows:
            row = {"criterion": "plasticity", "layer": layer, "component": c}
            frame.append({**row, "score": s + layer, "params": n // 3})
    return C.rank(pd.DataFrame(frame))


def test_budget_rule_skips_what_does_not_fit():
    frame = _synthetic()  # component totals: 40 + 50 + 50 + 2 = 142
    picked = choose(frame, "plasticity", 0.5, "component")  # 71 allowed: mha (40), then ln1 (2)
    assert train_set(picked) == ["ln1", "mha"]  # in the canonical order, not the rank order
    assert train_set(choose(frame, "plasticity", 1.0, "component")) == ["ln1", "mha", "fc1", "fc2"]
    with pytest.raises(ValueError, match=r"smallest needs 0\.0141"):
        choose(frame, "plasticity", 0.01, "component")


def test_layer_picks_merge_runs():
    frame = _synthetic()  # per layer: mha 13, fc1 16, fc2 16, ln1 0 params; total 135
    # 47.25 allowed: mha@2 (11), fc1@2 (10), mha@1 (10) use 42; the rest but ln1 does not fit
    picked = choose(frame, "plasticity", 0.35, "layer")
    assert train_set(picked) == ["ln1@0-2", "mha@1-2", "fc1@2"]


def test_score_model_end_to_end(model):
    pairs = [(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))]
    frame = score_model(
        component_map(model), list(C.CRITERIA), train_batches=_batches(), pairs=pairs
    )
    assert set(frame["criterion"]) == set(C.CRITERIA)
    assert len(frame) == len(C.CRITERIA) * (10 + 5)
    chosen = picks(frame, 0.4, "component")
    assert set(chosen) == set(C.CRITERIA) and all(chosen.values())
    with pytest.raises(ValueError, match="criterion 'kappa' is unknown; known: plasticity"):
        C.parse_criteria("kappa")


@pytest.mark.parametrize("inputs", ["embedding", "hidden"])
def test_plasticity_criterion_matches_hand_computation(model, inputs):
    cmap = component_map(model)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 3, 32, 32, generator=gen), torch.randn(3, 3, 32, 32, generator=gen)
    frame = pd.DataFrame(C.plasticity_scores(cmap, [(x, y)], inputs=inputs))
    with torch.no_grad():
        hx, hy = cmap.embed(x), cmap.embed(y)  # (B, N, D)
        if inputs == "hidden":  # block 1 reads block 0's output
            hx, hy = model.blocks[0](hx), model.blocks[0](hy)
        w = model.blocks[1].mlp.fc1.weight
        diff = hx - hy
        ratios = (diff @ w.T).flatten(1).norm(dim=1) / diff.flatten(1).norm(dim=1)
    assert _row(frame, "plasticity", 1, "fc1")["score"] == pytest.approx(
        float(ratios.mean()), rel=1e-5
    )
    assert _row(frame, "plasticity", "all", "fc1")["params"] == 2 * (48 * 144 + 144)


def test_select_checks_its_folder_first_and_reads_a_finished_run_back(tmp_path):
    from vitplas.config import ConfigError
    from vitplas.jobs.runners import run_select
    from vitplas.selection.select import SelectConfig

    cfg = SelectConfig(model="tiny-random", random_init=True, target="digits", device="cpu")
    cfg.criteria, cfg.grad_batches, cfg.batch_size = ["condition", "params"], 1, 4
    cfg.validate()
    frame, chosen = run_select(cfg, tmp_path / "sel")
    before = (tmp_path / "sel" / "selection.csv").stat().st_mtime_ns
    again, again_chosen = run_select(cfg, tmp_path / "sel")  # finished: read back, verified
    assert (tmp_path / "sel" / "selection.csv").stat().st_mtime_ns == before
    assert again_chosen == chosen and again["score"].tolist() == frame["score"].tolist()
    other = SelectConfig(**{**cfg.__dict__, "budget": 0.1})
    with pytest.raises(ConfigError, match="budget"):
        run_select(other, tmp_path / "sel")
