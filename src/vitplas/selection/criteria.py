"""Criteria for choosing what to finetune, scored per unit: a (layer, component) of the blocks,
or a component type over all layers (layer = 'all').

Every criterion is one record of TABLE: its name, the kind of data it needs, its direction,
whether `vitplas select` scores it by default, and what it computes. The defaults are the
criteria whose scores can be compared across component types of very different sizes: a
per-parameter mean or a ratio, never a total that grows with the parameter count (the totals
are there by name, e.g. `grad_norm`, `fisher_total`).

Gradient criteria (vitplas.selection.gradients) are scored on the target's TRAIN split through
the fresh head finetuning starts from, one image at a time: g_s is the gradient of image s's
cross-entropy, g_bar = mean_s g_s the gradient of the mean loss, over S images of a unit with n
parameters w:
    grad_rms      sqrt(||g_bar||^2 / n)     per parameter (default)
    grad_norm     ||g_bar||                 total: grows as sqrt(n)
    rgn           ||g_bar|| / ||w||         Auto-RGN's relative gradient norm (default; a ratio
                                            of two totals, so already per parameter)
    fisher        (1/n) sum_i (1/S) sum_s g_s,i^2   the empirical Fisher's diagonal, averaged
                                            over the unit's parameters (default)
    fisher_total  (1/S) sum_s ||g_s||^2     its trace over the unit
A component type pools the sums over its layers before the formula (its n is the total).
`fps` (forward only, same train images): FPS's importance |w| E|a_in| (arXiv 2510.27359) per
multiplicative parameter, averaged over the unit (vitplas.selection.gradients.fps_scores).

Spectral criteria read the unit's weight matrices (the 2-D `*.weight` parameters); a unit
without one (LayerNorm, LayerScale) gets NaN with the reason in `note`, and ranks last:
    condition     sigma_max / sigma_min, averaged over the unit's matrices (lowest first, as
                  peft's KappaTune selector)
    stable_rank   ||W||_F^2 / ||W||_2^2, averaged
`plasticity` is the estimator's mean ratio (vitplas.analysis; pairs of reference and target
TRAIN images); `params` and `random` are controls. A NaN score ranks last and is never picked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from vitplas.models.components import ComponentMap, UnknownComponentError

# what the scores mean changed with version 2 (per-sample Fisher, per-parameter defaults,
# spectra of matrices only, plasticity on the train split): a pick scored by another version
# is not reused (picks.json records it)
CRITERIA_VERSION = 2
NO_MATRIX = "no weight matrix (a norm or layer scale)"

Sums = dict[str, float]  # per unit: g2 = ||g_bar||^2, w2 = ||w||^2, f = (1/S) sum_s ||g_s||^2, n


@dataclass(frozen=True)
class Criterion:
    name: str
    kind: str  # plasticity | gradient | forward | spectrum | control: the data it needs
    higher_first: bool  # rank 1 = the highest score (False: the lowest)
    default: bool  # scored when no criteria are named
    what: str  # one line: what the score is (select's summary, the README table)
    formula: Callable[[Sums], float] | None = None  # gradient kind: the score from the sums
    inputs: str | None = None  # plasticity kind: its input mode (None: the config's `inputs`)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


TABLE = (
    Criterion("plasticity", "plasticity", True, True, "mean ratio ||f(x)-f(y)|| / ||x-y||"),
    Criterion("plasticity_hidden", "plasticity", True, False, "plasticity with each block fed "
              "its real input (inputs=hidden)", inputs="hidden"),
    Criterion("plasticity_insitu", "plasticity", True, False, "plasticity with each component "
              "fed its own input in the forward pass (inputs=insitu)", inputs="insitu"),
    Criterion("grad_rms", "gradient", True, True, "RMS of the mean-loss gradient per "
              "parameter, ||g|| / sqrt(n)", lambda s: math.sqrt(_ratio(s["g2"], s["n"]))),
    Criterion("grad_norm", "gradient", True, False, "norm of the mean-loss gradient, ||g|| "
              "(total: grows as sqrt(n))", lambda s: math.sqrt(s["g2"])),
    Criterion("rgn", "gradient", True, True, "relative gradient norm ||g|| / ||w|| (Auto-RGN)",
              lambda s: math.sqrt(_ratio(s["g2"], s["w2"]))),
    Criterion("fisher", "gradient", True, True, "empirical Fisher: per-image squared "
              "gradients, mean over images and parameters", lambda s: _ratio(s["f"], s["n"])),
    Criterion("fisher_total", "gradient", True, False, "empirical Fisher's trace over the unit "
              "(total: grows as n)", lambda s: s["f"]),
    Criterion("fps", "forward", True, True, "FPS: |w| E|a_in| per weight or gain, mean over "
              "the unit (forward only)"),
    Criterion("condition", "spectrum", False, True, "condition number of the weight matrices "
              "(lowest first, as KappaTune)"),
    Criterion("stable_rank", "spectrum", True, True, "||W||_F^2 / ||W||_2^2 of the weight "
              "matrices"),
    Criterion("params", "control", True, True, "number of parameters (control)"),
    Criterion("random", "control", True, True, "a uniform draw from the seed (control)"),
)  # fmt: skip
BY_NAME = {c.name: c for c in TABLE}
CRITERIA = tuple(BY_NAME)
DEFAULT_CRITERIA = tuple(c.name for c in TABLE if c.default)
HIGHER_FIRST = {c.name: c.higher_first for c in TABLE}
ALL = "all"  # the layer label of a component type's row
COLUMNS = ["criterion", "layer", "component", "score", "params", "matrix", "note"]

Unit = tuple[int, str]


def parse_criteria(names: Iterable[str] | str | None) -> list[str]:
    """Validate criterion names (comma lists allowed); None/empty = the default ones."""
    if names is None or names == "" or names == []:
        return list(DEFAULT_CRITERIA)
    if isinstance(names, str):
        names = [names]
    out = [n.strip().lower() for raw in names for n in str(raw).split(",") if n.strip()]
    unknown = [n for n in out if n not in CRITERIA]
    if unknown:
        raise ValueError(f"criterion '{unknown[0]}' is unknown; known: {', '.join(CRITERIA)}")
    return list(dict.fromkeys(out))


def of_kind(criteria: Sequence[str], kind: str) -> list[str]:
    """The criteria of `criteria` whose TABLE kind is `kind`, in TABLE order."""
    return [c.name for c in TABLE if c.kind == kind and c.name in criteria]


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


def is_matrix(name: str, param: torch.Tensor) -> bool:
    """A weight matrix: a 2-D `*.weight` parameter (a Linear's; not a position-bias table)."""
    return param.ndim == 2 and name.endswith("weight")


def has_matrix(units: dict[Unit, list]) -> dict[Unit, bool]:
    return {u: any(is_matrix(n, p) for n, p in ps) for u, ps in units.items()}


def counts(units: dict[Unit, list]) -> dict[Unit, int]:
    return {u: sum(p.numel() for _, p in ps) for u, ps in units.items()}


def row(criterion: str, layer, component: str, score: float, params: int, matrix: bool,
        note: str = "") -> dict:  # fmt: skip
    return {"criterion": criterion, "layer": layer, "component": component, "score": score,
            "params": params, "matrix": matrix, "note": note}  # fmt: skip


def unit_rows(
    criterion: str, values: dict[Unit, float], units: dict[Unit, list], notes=None
) -> list[dict]:
    """Per-unit rows plus the component-type rows (the mean over layers of `values`, NaN
    layers left out: a NaN says 'not scored', an inf stays in the mean)."""
    notes, n, mat = notes or {}, counts(units), has_matrix(units)
    rows = [row(criterion, i, c, v, n[(i, c)], mat[(i, c)], notes.get((i, c), ""))
            for (i, c), v in values.items()]  # fmt: skip
    for comp in dict.fromkeys(c for _, c in values):
        layers = [u for u in values if u[1] == comp]
        rows.append(
            row(criterion, ALL, comp, _mean([values[u] for u in layers]),
                sum(n[u] for u in layers), any(mat[u] for u in layers),
                next((notes[u] for u in layers if u in notes), ""))
        )  # fmt: skip
    return rows


def _mean(values: Sequence[float]) -> float:
    scored = [v for v in values if not math.isnan(v)]
    return sum(scored) / len(scored) if scored else math.nan


# ---- weight spectrum ------------------------------------------------------------------------
def singular_values(params: list[tuple[str, nn.Parameter]]) -> list[torch.Tensor]:
    """Descending singular values of each weight matrix of a unit (float32 SVD, computed once
    for both spectrum criteria); [] for a unit without one."""
    return [torch.linalg.svdvals(p.detach().float()) for n, p in params if is_matrix(n, p)]


def condition_number(s: torch.Tensor) -> float:
    """sigma_max / sigma_min from descending singular values s (inf when singular)."""
    return float(s[0] / s[-1]) if s[-1] > 0 else math.inf


def stable_rank(s: torch.Tensor) -> float:
    """||W||_F^2 / ||W||_2^2 = sum s^2 / s_max^2, in [1, rank]."""
    return float((s.double() ** 2).sum() / s[0].double() ** 2) if s[0] > 0 else math.nan


def spectrum_scores(cmap: ComponentMap, criteria: Sequence[str]) -> list[dict]:
    """condition and stable_rank per unit (NaN with NO_MATRIX for a unit without a matrix)."""
    wanted = of_kind(criteria, "spectrum")
    if not wanted:
        return []
    units, rows = unit_parameters(cmap), []
    spectra = {u: singular_values(ps) for u, ps in units.items()}
    notes = {u: NO_MATRIX for u, ss in spectra.items() if not ss}
    for name in wanted:
        fn = condition_number if name == "condition" else stable_rank
        values = {u: _mean([fn(s) for s in ss]) for u, ss in spectra.items()}
        rows += unit_rows(name, values, units, notes)
    return rows


# ---- controls -------------------------------------------------------------------------------
def control_scores(cmap: ComponentMap, criteria: Sequence[str], seed: int = 0) -> list[dict]:
    units, rows = unit_parameters(cmap), []
    n = counts(units)
    if "params" in criteria:
        rows += unit_rows("params", {u: float(k) for u, k in n.items()}, units)
        for r in rows:  # a component type's count is the sum, not the mean, of its layers
            r["score"] = float(r["params"])
    if "random" in criteria:
        gen = torch.Generator().manual_seed(seed)
        draws = torch.rand(len(n), generator=gen, dtype=torch.float64).tolist()
        rows += unit_rows("random", dict(zip(n, draws, strict=True)), units)
    return rows


# ---- plasticity -----------------------------------------------------------------------------
def plasticity_scores(
    cmap: ComponentMap,
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    inputs: str = "embedding",
    device: torch.device | str = "cpu",
    name: str = "plasticity",
) -> list[dict]:
    """Mean plasticity per (layer, component) and pooled per component, from image pairs, as
    criterion `name`'s rows."""
    from vitplas.analysis.estimate import estimate

    measured = scored_components(cmap)
    if not measured:
        raise UnknownComponentError("this model has no block component plasticity can score")
    est = estimate(cmap, pairs, components=measured, inputs=inputs, device=device)
    values = {
        (int(r.layer), r.component): float(r.mean) for r in est.frame().itertuples(index=False)
    }
    rows = unit_rows(name, values, unit_parameters(cmap))
    pooled = {r.component: float(r.mean) for r in est.frame(pooled=True).itertuples(index=False)}
    for r in rows:  # the estimator's own pooling: the per-pair mean over layers
        if r["layer"] == ALL:
            r["score"] = pooled[r["component"]]
    return rows


def rank(frame: pd.DataFrame) -> pd.DataFrame:
    """Add `rank` (1 = picked first) within each (criterion, granularity); NaN scores last."""
    frame = frame.copy()
    for column, empty in (("matrix", False), ("note", "")):
        if column not in frame:  # a selection.csv of an earlier version
            frame[column] = empty
    frame["note"] = frame["note"].fillna("")
    kind = frame["layer"].astype(str).eq(ALL)
    frame["rank"] = 0
    for (crit, _), group in frame.groupby([frame["criterion"], kind], sort=False):
        asc = not HIGHER_FIRST[crit]
        order = group["score"].rank(method="first", ascending=asc, na_option="bottom")
        frame.loc[group.index, "rank"] = order.astype(int)
    return frame[[*COLUMNS[:4], "rank", *COLUMNS[4:]]]
