"""Criteria for choosing what to finetune, scored per unit: a (layer, component) of the blocks,
or a component type over all layers (layer = 'all').

    plasticity   mean ratio ||f(x) - f(y)|| / ||x - y|| (vitplas.analysis, either input mode)
    grad_norm    ||g|| of the mean loss gradient over a few target batches, fresh head
    rgn          ||g|| / ||w||: Auto-RGN's relative gradient norm (surgical finetuning)
    fisher       mean over the unit's parameters of the batch-mean squared gradient (as SPT)
    condition    condition number sigma_max / sigma_min of the unit's weight matrices, averaged
                 (as peft's KappaTune selector, which trains the LOWEST first)
    stable_rank  ||W||_F^2 / ||W||_2^2 of the unit's weight matrices, averaged
    params       number of parameters (control)
    random       a uniform draw from a fixed seed (control)

A weight matrix is every 2-D parameter of the unit (biases aside); a unit with none (LayerNorm,
LayerScale) is scored on its 1-D weight read as a diagonal matrix. For a component type the
spectrum is the mean of its layers' values, the gradient norms are over all its parameters.
Every criterion ranks the higher score first except `condition` (HIGHER_FIRST).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from vitplas.models.components import ComponentMap, UnknownComponentError

CRITERIA = (
    "plasticity",
    "grad_norm",
    "rgn",
    "fisher",
    "condition",
    "stable_rank",
    "params",
    "random",
)
HIGHER_FIRST = {c: c != "condition" for c in CRITERIA}
ALL = "all"  # the layer label of a component type's row
COLUMNS = ["criterion", "layer", "component", "score", "params"]

Unit = tuple[int, str]


def parse_criteria(names: Iterable[str] | str | None) -> list[str]:
    """Validate criterion names (comma lists allowed); None/empty = all of them."""
    if names is None or names == "" or names == []:
        return list(CRITERIA)
    if isinstance(names, str):
        names = [names]
    out = [n.strip().lower() for raw in names for n in str(raw).split(",") if n.strip()]
    unknown = [n for n in out if n not in CRITERIA]
    if unknown:
        raise ValueError(f"criterion '{unknown[0]}' is unknown; known: {', '.join(CRITERIA)}")
    return list(dict.fromkeys(out))


def scored_components(cmap: ComponentMap) -> list[str]:
    """Block components that can be trained alone (what a criterion ranks)."""
    return [c for c in cmap.block_components if c in cmap.trainable]


def unit_parameters(cmap: ComponentMap) -> dict[Unit, list[tuple[str, nn.Parameter]]]:
    """{(layer, component): [(name, parameter)]} for every scored block component."""
    prefix = cmap.family.blocks_path + "."
    wanted = set(scored_components(cmap))
    out: dict[Unit, list] = {(i, c): [] for i in range(cmap.depth) for c in scored_components(cmap)}
    for name, param in cmap.model.named_parameters():
        comp = cmap.owner[name]
        if comp in wanted and name.startswith(prefix):
            layer = int(name[len(prefix) :].split(".")[0])
            out[(layer, comp)].append((name, param))
    return out


def _rows(criterion: str, values: dict[Unit, float], counts: dict[Unit, int]) -> list[dict]:
    """Per-unit rows plus the component-type rows (the mean over layers of `values`)."""
    rows = [
        {"criterion": criterion, "layer": i, "component": c, "score": v, "params": counts[(i, c)]}
        for (i, c), v in values.items()
    ]
    for comp in dict.fromkeys(c for _, c in values):
        layers = [v for (_, c), v in values.items() if c == comp]
        n = sum(k for (_, c), k in counts.items() if c == comp)
        rows.append(
            {
                "criterion": criterion,
                "layer": ALL,
                "component": comp,
                "score": _mean(layers),
                "params": n,
            }
        )
    return rows


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _counts(units: dict[Unit, list]) -> dict[Unit, int]:
    return {u: sum(p.numel() for _, p in ps) for u, ps in units.items()}


# ---- weight spectrum ------------------------------------------------------------------------
def singular_values(params: list[tuple[str, nn.Parameter]]) -> list[torch.Tensor]:
    """Descending singular values of each weight matrix of a unit (float32 SVD, computed once
    for both spectrum criteria); a 1-D weight is a diagonal matrix: its sorted |entries|."""
    mats = [p.detach().float() for _, p in params if p.ndim == 2]
    if mats:
        return [torch.linalg.svdvals(m) for m in mats]
    vecs = [p.detach().float() for n, p in params if p.ndim == 1 and "bias" not in n]
    return [v.abs().sort(descending=True).values for v in vecs]


def condition_number(s: torch.Tensor) -> float:
    """sigma_max / sigma_min from descending singular values s (inf when singular)."""
    return float(s[0] / s[-1]) if s[-1] > 0 else math.inf


def stable_rank(s: torch.Tensor) -> float:
    """||W||_F^2 / ||W||_2^2 = sum s^2 / s_max^2, in [1, rank]."""
    return float((s.double() ** 2).sum() / s[0].double() ** 2) if s[0] > 0 else math.nan


def spectrum_scores(cmap: ComponentMap, criteria: Sequence[str]) -> list[dict]:
    wanted = [c for c in ("condition", "stable_rank") if c in criteria]
    if not wanted:
        return []
    units = unit_parameters(cmap)
    counts, rows = _counts(units), []
    spectra = {u: singular_values(ps) for u, ps in units.items()}
    for name in wanted:
        fn = condition_number if name == "condition" else stable_rank
        rows += _rows(name, {u: _mean([fn(s) for s in ss]) for u, ss in spectra.items()}, counts)
    return rows


# ---- controls -------------------------------------------------------------------------------
def control_scores(cmap: ComponentMap, criteria: Sequence[str], seed: int = 0) -> list[dict]:
    counts, rows = _counts(unit_parameters(cmap)), []
    if "params" in criteria:
        rows += _rows("params", {u: float(n) for u, n in counts.items()}, counts)
        for row in rows:  # a component type's count is the sum, not the mean, of its layers
            row["score"] = float(row["params"])
    if "random" in criteria:
        gen = torch.Generator().manual_seed(seed)
        draws = torch.rand(len(counts), generator=gen, dtype=torch.float64).tolist()
        rows += _rows("random", dict(zip(counts, draws, strict=True)), counts)
    return rows


# ---- gradients at the start of finetuning ---------------------------------------------------
def gradient_scores(
    cmap: ComponentMap,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    criteria: Sequence[str],
    device: torch.device | str = "cpu",
) -> list[dict]:
    """grad_norm, rgn and fisher from (images (B, 3, H, W), labels (B,)) batches; the model's
    head is the fresh one finetuning starts from. Each batch's loss is its mean cross-entropy;
    g is the mean of the batch gradients, fisher the mean of their squares."""
    units = unit_parameters(cmap)
    model, counts = cmap.model, _counts(units)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    names = [n for ps in units.values() for n, _ in ps]
    params = dict(model.named_parameters())
    g_sum = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    g2_sum = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    was_training, nb = model.training, 0
    model.eval()  # no dropout: the score does not depend on a dropout draw
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for n in names:
            params[n].requires_grad_(True)
        for images, labels in batches:
            model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(images.to(device)).float(), labels.to(device))
            loss.backward()
            for n in names:
                g = params[n].grad.double()
                g_sum[n] += g
                g2_sum[n] += g * g
            nb += 1
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)
    if nb == 0:
        raise ValueError("no batches were given to the gradient criteria")
    return _gradient_rows(units, counts, g_sum, g2_sum, nb, criteria)


def _gradient_rows(units, counts, g_sum, g2_sum, nb, criteria) -> list[dict]:
    sums: dict[Unit, dict[str, float]] = {}
    for unit, ps in units.items():
        sums[unit] = {
            "g2": sum(float((g_sum[n] / nb).pow(2).sum()) for n, _ in ps),
            "w2": sum(float(p.detach().double().pow(2).sum()) for _, p in ps),
            "f": sum(float(g2_sum[n].sum() / nb) for n, _ in ps),
        }
    per_type: dict[str, dict[str, float]] = {}
    for (_, comp), s in sums.items():
        acc = per_type.setdefault(comp, {"g2": 0.0, "w2": 0.0, "f": 0.0})
        for k in acc:
            acc[k] += s[k]
    formulas = {
        "grad_norm": lambda s, n: math.sqrt(s["g2"]),
        "rgn": lambda s, n: math.sqrt(s["g2"]) / math.sqrt(s["w2"]) if s["w2"] else math.nan,
        "fisher": lambda s, n: s["f"] / n,
    }
    rows = []
    for name, fn in formulas.items():
        if name not in criteria:
            continue
        for (layer, comp), s in sums.items():
            rows.append(
                _row(name, layer, comp, fn(s, counts[(layer, comp)]), counts[(layer, comp)])
            )
        for comp, s in per_type.items():
            n = sum(k for (_, c), k in counts.items() if c == comp)
            rows.append(_row(name, ALL, comp, fn(s, n), n))
    return rows


def _row(criterion: str, layer, component: str, score: float, params: int) -> dict:
    return {"criterion": criterion, "layer": layer, "component": component, "score": score,
            "params": params}  # fmt: skip


# ---- plasticity -----------------------------------------------------------------------------
def plasticity_scores(
    cmap: ComponentMap,
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    inputs: str = "embedding",
    device: torch.device | str = "cpu",
) -> list[dict]:
    """Mean plasticity per (layer, component) and pooled per component, from image pairs."""
    from vitplas.analysis.estimate import estimate

    comps = scored_components(cmap)
    measured = [c for c in comps if c in cmap.block_components]
    if not measured:
        raise UnknownComponentError("this model has no block component plasticity can score")
    est = estimate(cmap, pairs, components=measured, inputs=inputs, device=device)
    counts = _counts(unit_parameters(cmap))
    values = {
        (int(r.layer), r.component): float(r.mean) for r in est.frame().itertuples(index=False)
    }
    rows = _rows("plasticity", values, counts)
    pooled = {r.component: float(r.mean) for r in est.frame(pooled=True).itertuples(index=False)}
    for row in rows:  # the estimator's own pooling: the per-pair mean over layers
        if row["layer"] == ALL:
            row["score"] = pooled[row["component"]]
    return rows


def rank(frame: pd.DataFrame) -> pd.DataFrame:
    """Add `rank` (1 = picked first) within each (criterion, granularity); NaN scores last."""
    frame = frame.copy()
    kind = frame["layer"].astype(str).eq(ALL)
    frame["rank"] = 0
    for (crit, _), group in frame.groupby([frame["criterion"], kind], sort=False):
        asc = not HIGHER_FIRST[crit]
        order = group["score"].rank(method="first", ascending=asc, na_option="bottom")
        frame.loc[group.index, "rank"] = order.astype(int)
    return frame[[*COLUMNS[:4], "rank", "params"]]
