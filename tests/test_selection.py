"""Selection criteria against hand computations on a tiny ViT; ranking and the budget rule."""

from __future__ import annotations

import math
import warnings

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_train_support import tiny_vit, toy_data

from vitplas.models.components import component_map
from vitplas.selection import criteria as C
from vitplas.selection.budget import budget_warning, choose, decide, train_set
from vitplas.selection.gradients import fps_scores, gradient_scores
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


def _per_sample_grads(model, batches, names):
    """Per-image gradients by torch.func (vmap over grad): an independent reference for the
    per-sample loop of the criteria. {name: (S, *shape)}."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x[None],)), y[None])

    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    with warnings.catch_warnings():  # vmap's fallback for the attention backward: slow only
        warnings.simplefilter("ignore")
        grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return {n: grads[n].double() for n in names}


def test_gradient_criteria_match_hand_computation(model):
    batches = _batches()
    names_all = ["grad_rms", "grad_norm", "rgn", "fisher", "fisher_total"]
    frame = pd.DataFrame(gradient_scores(component_map(model), batches, names_all))
    params = dict(model.named_parameters())
    names = ["blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias"]
    per_image = _per_sample_grads(model, batches, names)  # S = 16 images
    g_bar = [per_image[n].mean(0) for n in names]
    g_norm = math.sqrt(sum(float(g.pow(2).sum()) for g in g_bar))
    w_norm = math.sqrt(sum(float(params[n].detach().double().pow(2).sum()) for n in names))
    count = sum(params[n].numel() for n in names)
    # the empirical Fisher: per-image squared gradients averaged over images, then parameters
    trace = sum(float(per_image[n].pow(2).sum(dim=tuple(range(1, per_image[n].ndim))).mean())
                for n in names)  # fmt: skip
    expect = {"grad_norm": g_norm, "grad_rms": g_norm / math.sqrt(count),
              "rgn": g_norm / w_norm, "fisher": trace / count, "fisher_total": trace}  # fmt: skip
    for name, value in expect.items():
        assert _row(frame, name, 0, "fc1")["score"] == pytest.approx(value, rel=1e-6), name
    assert _row(frame, "fisher", 0, "fc1")["params"] == count == 48 * 144 + 144
    # the squared batch-mean gradient (the former `fisher`) is smaller: Jensen, strictly here
    batch_sq = sum(float(g.pow(2).sum()) for g in g_bar) / count
    assert _row(frame, "fisher", 0, "fc1")["score"] > 5 * batch_sq
    # the component type pools its layers' sums: norm over both layers, Fisher over all params
    g1 = _row(frame, "grad_norm", 1, "fc1")["score"]
    assert _row(frame, "grad_norm", "all", "fc1")["score"] == pytest.approx(math.hypot(g_norm, g1))
    f1 = _row(frame, "fisher_total", 1, "fc1")["score"]
    n1 = _row(frame, "fisher", 1, "fc1")["params"]
    pooled = (trace + f1) / (count + n1)
    assert _row(frame, "fisher", "all", "fc1")["score"] == pytest.approx(pooled)
    assert all(p.grad is None for p in model.parameters())  # nothing left behind
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_size_normalised_criteria_do_not_grow_with_size(model):
    """grad_rms and fisher of one unit stay put when the unit is counted twice as large (its
    gradient duplicated); the totals double (squared) or grow by sqrt(2)."""
    sums = {"g2": 4.0, "w2": 9.0, "f": 6.0, "n": 10}
    twice = {k: 2 * v for k, v in sums.items()}
    by = C.BY_NAME
    for name in ("grad_rms", "rgn", "fisher"):
        assert by[name].formula(twice) == pytest.approx(by[name].formula(sums)), name
    assert by["grad_norm"].formula(twice) == pytest.approx(math.sqrt(2) * 2.0)
    assert by["fisher_total"].formula(twice) == pytest.approx(12.0)
    assert set(C.DEFAULT_CRITERIA) >= {"grad_rms", "rgn", "fisher", "fps"}
    assert not {"grad_norm", "fisher_total"} & set(C.DEFAULT_CRITERIA)
    assert C.parse_criteria(None) == list(C.DEFAULT_CRITERIA)


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
    # a LayerNorm has no weight matrix: NaN, with the reason, and ranked last
    for layer in (0, "all"):
        ln = _row(frame, "condition", layer, "ln1")
        assert math.isnan(ln["score"]) and ln["note"] == C.NO_MATRIX and not ln["matrix"]
    ranked = C.rank(frame)
    types = ranked[(ranked["criterion"] == "stable_rank") & (ranked["layer"] == "all")]
    assert set(types.sort_values("rank")["component"].iloc[-2:]) == {"ln1", "ln2"}


def test_fps_matches_hand_computation(model):
    """FPS: |w| E|a_in| per weight (E over images and tokens), mean over the unit's weights;
    a LayerNorm's gain times the normalised input it multiplies; biases left out."""
    batches = _batches()
    frame = pd.DataFrame(fps_scores(component_map(model), batches))
    block = model.blocks[0]
    with torch.no_grad():
        x = torch.cat([component_map(model).embed(b[0]) for b in batches])  # (S, N, D)
        xhat = F.layer_norm(x, (x.shape[-1],), eps=block.norm1.eps)  # ln1 before its affine
        h = x + block.ls1(block.attn(block.norm1(x)))
        a_fc1 = block.norm2(h)  # fc1's input
        a_fc2 = block.mlp.act(block.mlp.fc1(a_fc1))  # fc2's input, at full width

    def fps(w, a):
        return float((w.detach().abs() * a.abs().flatten(0, 1).mean(0)).mean())

    assert _row(frame, "fps", 0, "fc1")["score"] == pytest.approx(fps(block.mlp.fc1.weight, a_fc1),
                                                                  rel=1e-5)  # fmt: skip
    assert _row(frame, "fps", 0, "fc2")["score"] == pytest.approx(fps(block.mlp.fc2.weight, a_fc2),
                                                                  rel=1e-5)  # fmt: skip
    gain = block.norm1.weight.detach()
    expect = float((gain.abs() * xhat.abs().flatten(0, 1).mean(0)).mean())
    assert _row(frame, "fps", 0, "ln1")["score"] == pytest.approx(expect, rel=1e-5)
    w1, w2 = block.mlp.fc1.weight, model.blocks[1].mlp.fc1.weight  # the type: pooled mean
    assert _row(frame, "fps", "all", "fc1")["score"] == pytest.approx(
        (fps(w1, a_fc1) * w1.numel() + _row(frame, "fps", 1, "fc1")["score"] * w2.numel())
        / (w1.numel() + w2.numel()), rel=1e-6)  # fmt: skip


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
        {"criterion": "plasticity", "layer": "all", "component": c, "score": s, "params": n,
         "matrix": c != "ln1"}
        for c, s, n in rows
    ]  # fmt: skip
    for layer in range(3):
        for c, s, n in rows:
            row = {"criterion": "plasticity", "layer": layer, "component": c, "matrix": c != "ln1"}
            frame.append({**row, "score": s + layer, "params": n // 3})
    return C.rank(pd.DataFrame(frame))


def test_budget_rule_is_a_prefix_of_the_ranking():
    frame = _synthetic()  # component totals: 40 + 50 + 50 + 2 = 142
    # 71 allowed: mha (40) fits, fc1 (rank 2) does not: the walk stops, ln1 (rank 4) stays out
    decided = decide(frame, "plasticity", 0.5, "component").set_index("component")
    assert train_set(choose(frame, "plasticity", 0.5, "component")) == ["mha"]
    assert decided.loc["fc1", "reason"] == "does not fit: 0.2817 + 0.3521 > 0.5"
    assert decided.loc["ln1", "reason"] == "ranked below fc1 (rank 2), which did not fit"
    # the greedy knapsack fill, by name: it jumps fc1 and says so
    fill = decide(frame, "plasticity", 0.5, "component", rule="fill").set_index("component")
    assert train_set(fill[fill["picked"]].reset_index()) == ["ln1", "mha"]
    assert fill.loc["ln1", "reason"].endswith("fill: ranked below fc1 (rank 2), which did not fit")
    assert train_set(choose(frame, "plasticity", 1.0, "component")) == ["ln1", "mha", "fc1", "fc2"]
    # not even the first unit fits: the pick is empty, and says why
    empty = decide(frame, "plasticity", 0.01, "component")
    assert not empty["picked"].any()
    from vitplas.selection.budget import nothing_picked

    assert nothing_picked(empty, 0.01).startswith("its first-ranked unit, mha, needs 0.2817")


def test_no_pick_holds_a_unit_ranked_below_one_left_out_for_size():
    gen = torch.Generator().manual_seed(0)
    for trial in range(200):
        n = 3 + trial % 6
        scores = torch.rand(n, generator=gen).tolist()
        sizes = torch.randint(1, 50, (n,), generator=gen).tolist()
        frame = C.rank(pd.DataFrame(
            [{"criterion": "random", "layer": "all", "component": f"c{i}", "score": s,
              "params": k} for i, (s, k) in enumerate(zip(scores, sizes, strict=True))]
        ))  # fmt: skip
        budget = float(torch.rand(1, generator=gen)) * 0.9 + 0.05
        decided = decide(frame, "random", budget, "component")
        too_big = decided[decided["reason"].str.startswith("does not fit")]
        picked = decided[decided["picked"]]
        if len(too_big) and len(picked):
            assert picked["rank"].max() < too_big["rank"].min()
        assert picked["share"].sum() <= budget + 1e-9
        assert len(too_big) <= 1  # the walk stops at the first unit that does not fit
        # the prefix is the longest one: the next unit would not fit
        if len(too_big):
            assert picked["share"].sum() + too_big["share"].iloc[0] > budget


def test_budget_that_admits_no_weight_matrix_says_so():
    frame = _synthetic()
    warning = budget_warning(frame, 0.2, "component")
    assert warning.startswith("warning: budget 0.2 admits no component with a weight matrix: "
                              "the smallest, mha, needs 0.2817")  # fmt: skip
    assert budget_warning(frame, 0.3, "component") is None
    assert budget_warning(frame, 0.2, "layer") is None  # mha@0 is 13 / 135


def test_layer_picks_merge_runs():
    frame = _synthetic()  # per layer: mha 13, fc1 16, fc2 16, ln1 0 params; total 135
    # 47.25 allowed: mha@2 (11), mha@1 (10), fc1@2 (10) use 42; fc2@2 (9) does not fit: stop
    picked = choose(frame, "plasticity", 0.35, "layer")
    assert train_set(picked) == ["mha@1-2", "fc1@2"]
    assert train_set(choose(frame, "plasticity", 0.35, "layer", rule="fill")) == [
        "ln1@0-2", "mha@1-2", "fc1@2"]  # fmt: skip


def test_score_model_end_to_end(model):
    pairs = [(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))]
    frame = score_model(
        component_map(model), list(C.CRITERIA), train_batches=_batches(), pairs=pairs
    )
    assert set(frame["criterion"]) == set(C.CRITERIA)
    assert len(frame) == len(C.CRITERIA) * (10 + 5)
    chosen = picks(frame, 0.9, "component")
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
    assert again_chosen == chosen
    pd.testing.assert_series_equal(again["score"], frame["score"])  # NaN where not scored
    other = SelectConfig(**{**cfg.__dict__, "budget": 0.1})
    with pytest.raises(ConfigError, match="budget"):
        run_select(other, tmp_path / "sel")


def test_every_criterion_reads_the_target_train_split(monkeypatch):
    """No transductive scoring: gradient batches and plasticity pairs come from the target's
    train split (the reference stream is the only other one)."""
    import vitplas.analysis.setup as setup
    from vitplas.selection.select import SelectConfig, _data

    opened = []

    def fake_stream(name, split, *args):
        opened.append((name, split))
        return torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.arange(8) % 2)

    monkeypatch.setattr(setup, "open_stream", fake_stream)
    monkeypatch.setattr("vitplas.data.transform_for", lambda *a, **k: None)
    cfg = SelectConfig(target="digits", criteria=["plasticity", "fisher"], pairs=4, batch_size=4)
    cfg.validate()
    _data(cfg, loaded=None)
    assert ("digits", "train") in opened and all(s != "test" for _, s in opened)
    assert ("photos", "val") in opened  # the reference


@pytest.mark.parametrize("name, inputs", [("plasticity_hidden", "hidden"),
                                          ("plasticity_insitu", "insitu")])  # fmt: skip
def test_input_mode_criteria_are_plasticity_in_that_mode(model, name, inputs):
    """plasticity_hidden / _insitu score one stream as plasticity with inputs=hidden / insitu,
    beside plasticity itself (the config's mode, embedding here) in one call."""
    cmap = component_map(model)
    gen = torch.Generator().manual_seed(1)
    pairs = [(torch.randn(3, 3, 32, 32, generator=gen), torch.randn(3, 3, 32, 32, generator=gen))]
    frame = score_model(cmap, ["plasticity", name], pairs=iter(pairs))
    direct = pd.DataFrame(C.plasticity_scores(cmap, pairs, inputs=inputs))
    base = pd.DataFrame(C.plasticity_scores(cmap, pairs, inputs="embedding"))
    for comp in ("ln1", "mha", "fc1"):
        got = _row(frame, name, 1, comp)["score"]
        assert got == pytest.approx(_row(direct, "plasticity", 1, comp)["score"], rel=1e-6)
        embedded = _row(frame, "plasticity", 1, comp)["score"]
        assert embedded == pytest.approx(_row(base, "plasticity", 1, comp)["score"], rel=1e-6)
    moved = _row(frame, name, 1, "fc1")["score"] - _row(frame, "plasticity", 1, "fc1")["score"]
    assert abs(moved) > 1e-5  # block 1's real input is not the embedding output
