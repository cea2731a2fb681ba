"""The per-layer table of bounds, completed with what the pairs measured, and what the
estimator checks each pair against (the formulas and their derivations: bounds.py).

Columns (BOUND_COLUMNS): bound (the configured kind's), bound_padded (FC2's tight bound),
radius (the paper's mean radius r), definition and assumption (in words), kind (data, abs,
signed, linear, mha-data, mha-paper; '' when undefined), held (did the bound's assumptions
hold on the measured data: True / False / None before the data), paper_bound and paper_held
(the paper's formula beside: signed max gamma, the MHA formula at r, ||W||_2), and the data
bounds' inputs and measurements: norm_gain and norm_scale (s_min), r_max (largest token norm),
query_bias (||b_q||), mha_k0..2 (the data MHA bound k0 + k1 r_max + k2 r_max^2) and n_tokens
(the token count n they are at: the model's for images; for text, L until the pairs are
measured, then the largest real length of the pairs, each pair checked at its own).

A data bound's value needs the pairs: layer_bounds leaves it NaN (its definition says why),
the estimator checks each pair against its own bound (gain / s_min(x, y), or the polynomial at
the pair's largest token norm) and keeps the extremes over all pairs, and fill_data_bounds
puts the bound at those extremes into the table: it holds for every pair measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pandas as pd
import torch

from vitplas.analysis.bounds import (
    ASSUMPTIONS,
    LN_BOUNDS,
    ONCE_MEASURED,
    SCALE_PENDING,
    check_bound_options,
    component_bound,
    mha_coefficients_at,
    mha_data_bound,
    mha_definition,
)
from vitplas.models.components import ComponentMap

MHA_COEFFICIENTS = ("mha_k0", "mha_k1", "mha_k2")
NO_FINITE_MHA = (
    "no finite bound: some pairs' texts have different real lengths (x's own tokens move f(x) "
    "where x and y agree); measure with pair_lengths=equal"
)
TEXT_N = " (n: the largest real length of the pairs, at most L; each pair checked at its own)"
BOUND_COLUMNS = [
    "layer", "component", "bound", "bound_padded", "radius", "definition", "assumption",
    "norm_gain", "norm_scale", "kind", "held", "paper_bound", "paper_held", "r_max",
    "query_bias", *MHA_COEFFICIENTS, "n_tokens",
]  # fmt: skip


def layer_bounds(
    cmap: ComponentMap,
    components: Sequence[str],
    *,
    n_tokens: int,
    radius: float | Sequence[float],
    width: int | None,
    ln_bound: str = "data",
    mha_bound: str = "data",
    mha_slicing: str = "rows",
    r_max: float | Sequence[float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Tidy bounds, one row per (layer, component) in BOUND_COLUMNS.

    radius (the paper's mean radius) and r_max (the largest token norm the data MHA bound
    covers; None: measured with the pairs later): one value, or one per layer
    (inputs "hidden", "insitu"). width: the token width FC2's probe zero-pads (its tight
    bound_padded); None in situ (no padding). With ln_bound="data", a norm's bound is NaN
    here and norm_gain holds max|gamma|; with mha_bound="data" and no r_max, MHA's bound is
    NaN and mha_k0..2 hold its coefficients: fill_data_bounds completes both from the pairs.
    paper_bound is the paper's formula beside (signed max gamma, the MHA formula at the mean
    radius, ||W||_2); held / paper_held say whether each one's assumptions hold (None: not
    known before the data). progress(layers done, depth) is called after each layer."""
    check_bound_options(ln_bound, mha_bound, mha_slicing)
    radii, maxima = _per_layer(radius, cmap.depth), _per_layer(r_max, cmap.depth)
    rows = []
    for layer in range(cmap.depth):
        for name in components:
            row = component_bound(
                cmap, layer, name, width=width, n_tokens=n_tokens, radius=radii[layer],
                ln_bound=ln_bound, mha_bound=mha_bound, mha_slicing=mha_slicing,
                r_max=maxima[layer],
            )  # fmt: skip
            row |= {"layer": layer, "component": name, "radius": radii[layer]}
            row.setdefault("assumption", ASSUMPTIONS[row["kind"]] if row["kind"] else "")
            rows.append(row)
        if progress is not None:
            progress(layer + 1, cmap.depth)
    frame = pd.DataFrame(rows).reindex(columns=BOUND_COLUMNS)
    for column in ("held", "paper_held"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


def _per_layer(value, depth: int) -> list:
    """One value per layer from a number, None or a sequence of `depth` values."""
    if value is None or isinstance(value, int | float):
        return [None if value is None else float(value)] * depth
    values = [float(v) for v in value]
    if len(values) != depth:
        raise ValueError(f"need {depth} radii (one per layer), got {len(values)}")
    return values


def bounds_matrix(
    frame: pd.DataFrame, depth: int, components: Sequence[str], column: str = "bound"
) -> torch.Tensor:
    """(depth, C) tensor of `column` (bound, norm_gain) from a layer_bounds table (NaN where
    none)."""
    out = torch.full((depth, len(components)), math.nan, dtype=torch.float64)
    col = {c: i for i, c in enumerate(components)}
    if column not in frame:
        return out
    for layer, name, value in frame[["layer", "component", column]].itertuples(index=False):
        if name in col:
            out[int(layer), col[name]] = float(value)
    return out


def estimate_bounds(frame: pd.DataFrame, depth: int, components: Sequence[str]) -> dict:
    """The estimator's keyword arguments from a layer_bounds table, (L, C) float64 tensors:
    bounds (the configured bounds), norm_gains (the data norm bounds' max|gamma|), mha_coefs
    ((L, C, 3): the data MHA bounds' k0..2), mha_tokens (the n they are at) and paper_bounds
    (the paper's, counted beside).
    Where a data bound's inputs are given, each pair is checked against its own bound."""
    data_mha = frame["kind"] == "mha-data"
    masked = frame.assign(**{k: frame[k].where(data_mha) for k in MHA_COEFFICIENTS})
    coefs = [bounds_matrix(masked, depth, components, k) for k in MHA_COEFFICIENTS]
    return {
        "bounds": bounds_matrix(frame, depth, components),
        "norm_gains": bounds_matrix(frame, depth, components, "norm_gain"),
        "mha_coefs": torch.stack(coefs, dim=-1),
        "mha_tokens": bounds_matrix(masked, depth, components, "n_tokens"),
        "paper_bounds": bounds_matrix(frame, depth, components, "paper_bound"),
    }


def fill_data_bounds(
    frame: pd.DataFrame,
    components: Sequence[str],
    norm_scale: torch.Tensor | None = None,
    token_max: torch.Tensor | None = None,
    longest: float | None = None,
) -> pd.DataFrame:
    """A copy of a layer_bounds table completed with what the pairs measured, (L, C) each
    (NaN where none): norm_scale, the smallest token scale s_min of each norm; token_max,
    the largest token norm r_max at each MHA; longest (text pairs): their largest real length,
    the n of the data MHA bound. Data bounds get their values (max|gamma| / s_min,
    k0 + k1 r_max + k2 r_max^2), every row its held / paper_held."""
    out = frame.copy()
    col = {c: i for i, c in enumerate(components)}
    for i, row in enumerate(out.itertuples(index=False)):
        if row.component not in col:
            continue
        at = (int(row.layer), col[row.component])
        s = math.nan if norm_scale is None else float(norm_scale[at])
        r = math.nan if token_max is None else float(token_max[at])
        index = out.index[i]
        if row.kind in LN_BOUNDS and s > 0:
            _fill_norm(out, index, row, s)
        elif row.kind in ("mha-data", "mha-paper") and r > 0:
            _fill_mha(out, index, row, r, longest)
    return out


def _fill_norm(out: pd.DataFrame, index, row, s: float) -> None:
    """A norm row at the measured s_min: the data bound's value, the s_t >= 1 checks."""
    out.at[index, "norm_scale"] = s
    scale_ok = s >= 1.0
    out.at[index, "paper_held"] = row.paper_held is not False and scale_ok  # signed's
    if row.kind == "data":
        out.at[index, "bound"] = row.norm_gain / s
        formula = row.definition.split(ONCE_MEASURED)[-1]
        out.at[index, "definition"] = formula.replace(SCALE_PENDING, f"{s:.4g}")
    elif row.kind == "abs":
        out.at[index, "held"] = scale_ok
    else:  # signed: also needs the largest |gain| positive (decided by the weights)
        out.at[index, "held"] = row.held is not False and scale_ok


def _fill_mha(out: pd.DataFrame, index, row, r: float, longest: float | None) -> None:
    """An MHA row at the measured r_max: the data bound's value (for text pairs at n = their
    largest real length, and held only when every pair had x and y of one real length: r_max
    finite), the paper's r_max <= r."""
    out.at[index, "r_max"] = r
    paper_ok = row.paper_held is not False and r <= row.radius  # and no query bias
    out.at[index, "paper_held"] = paper_ok
    if row.kind != "mha-data":
        out.at[index, "held"] = paper_ok
        return
    coefs, n = (row.mha_k0, row.mha_k1, row.mha_k2), int(row.n_tokens)
    if longest is not None and longest > 0:  # text: the pairs' own real lengths, not L
        coefs, n = mha_coefficients_at(coefs, row.n_tokens, longest), int(longest)
        out.loc[index, [*MHA_COEFFICIENTS, "n_tokens"]] = [*coefs, n]
    out.at[index, "bound"] = mha_data_bound(coefs, r)
    out.at[index, "held"] = math.isfinite(r)
    formula = mha_definition("data", n, row.radius, "rows", r)
    if longest is not None:
        formula += TEXT_N
    out.at[index, "definition"] = formula if math.isfinite(r) else NO_FINITE_MHA
