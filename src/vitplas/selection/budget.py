"""Budgeted choice: from a criterion's ranking to a concrete train set, with a reason per unit.

The budget is a fraction of the parameters of all scored units (the blocks' components; the
head and the final norm are trained besides, as in every finetuning run). Two rules (RULES):

    prefix  (default) the longest prefix of the ranking that fits: walk from rank 1 and stop at
            the first unit that does not fit. No pick holds a unit the criterion ranks below
            one that was left out for size, so the pick is the criterion's, not the budget's.
    fill    a greedy knapsack fill, and it says so: a unit that does not fit is skipped and the
            walk goes on, so small units the criterion ranks last are trained when a larger
            one ranked above them is not (each such unit's reason names the one it jumped).

A unit the criterion did not score (NaN: a norm for a spectral criterion) is never picked. The
same rule serves both granularities: component types, or (layer, component) units.

A train set is written as finetune's `train` list: component names (`mha`), or, per layer,
`name@layers` with contiguous runs merged (`mha@8-11`, `fc1@3`).
"""

from __future__ import annotations

import math

import pandas as pd

from vitplas.selection.criteria import ALL
from vitplas.training.trainsets import canonical_train

RULES = {
    "prefix": "the longest prefix of the ranking that fits",
    "fill": "greedy knapsack fill: skip what does not fit, go on with lower ranks",
}
GRANULARITIES = ("component", "layer")


def unit_label(row) -> str:
    """'mha' for a component type's row, 'mha@3' for a (layer, component) row."""
    comp, layer = str(row["component"]), str(row["layer"])
    return comp if layer == ALL else f"{comp}@{layer}"


def _ranked(frame: pd.DataFrame, criterion: str, granularity: str) -> pd.DataFrame:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity '{granularity}' is unknown; choose component or layer")
    rows = frame[frame["criterion"] == criterion]
    if rows.empty:
        raise ValueError(
            f"criterion '{criterion}' was not scored; scored: {sorted(set(frame['criterion']))}"
        )
    is_type = rows["layer"].astype(str).eq(ALL)
    return rows[is_type if granularity == "component" else ~is_type].sort_values("rank")


def decide(
    frame: pd.DataFrame, criterion: str, budget: float, granularity: str, rule: str = "prefix"
) -> pd.DataFrame:
    """The ranked rows of `criterion` at `granularity`, each with share (its fraction of the
    block parameters), picked (bool) and reason (why in or out), under `rule` (RULES)."""
    if not 0 < budget <= 1:
        raise ValueError(f"budget is a fraction of the block parameters in (0, 1], got {budget}")
    if rule not in RULES:
        raise ValueError(f"rule '{rule}' is unknown; choose {' or '.join(RULES)}")
    rows = _ranked(frame, criterion, granularity).copy()
    total = int(rows["params"].sum())
    rows["share"] = rows["params"] / total
    picked, reasons, used, blocker = [], [], 0.0, None
    for _, r in rows.iterrows():
        share, name = float(r["share"]), unit_label(r)
        if isinstance(r["score"], float) and math.isnan(r["score"]):
            note = r.get("note")
            picked.append(False)
            scored = isinstance(note, str) and note
            reasons.append(f"not scored: {note}" if scored else "not scored")
        elif blocker is not None and rule == "prefix":
            picked.append(False)
            reasons.append(f"ranked below {blocker}, which did not fit")
        elif used + share <= budget + 1e-12:
            used += share
            picked.append(True)
            jumped = f"; fill: ranked below {blocker}, which did not fit" if blocker else ""
            reasons.append(f"fits: {used:.4f} of {budget:g} used{jumped}")
        else:
            blocker = blocker or f"{name} (rank {int(r['rank'])})"
            picked.append(False)
            reasons.append(f"does not fit: {used:.4f} + {share:.4f} > {budget:g}")
    rows["picked"], rows["reason"] = picked, reasons
    return rows


def choose(
    frame: pd.DataFrame, criterion: str, budget: float, granularity: str, rule: str = "prefix"
) -> pd.DataFrame:
    """The rows `criterion` picks under `budget` (decide's picked rows; may be empty)."""
    decided = decide(frame, criterion, budget, granularity, rule)
    return decided[decided["picked"]]


def nothing_picked(decided: pd.DataFrame, budget: float) -> str:
    """Why a criterion picks nothing: its first scored unit's share against the budget."""
    first = decided[~decided["reason"].str.startswith("not scored")].head(1)
    if first.empty:
        return "it scored no unit"
    r = first.iloc[0]
    return (
        f"its first-ranked unit, {unit_label(r)}, needs {float(r['share']):.4f} of the block "
        f"parameters > budget {budget:g}; raise the budget or use granularity layer"
    )


def budget_warning(frame: pd.DataFrame, budget: float, granularity: str) -> str | None:
    """A warning when `budget` admits no unit with a weight matrix (every pick is then norms
    and layer scales only, or nothing), naming the smallest such unit's share; else None."""
    rows = _ranked(frame, frame["criterion"].iloc[0], granularity)
    if "matrix" not in rows or not rows["matrix"].astype(bool).any():
        return None
    shares = rows["params"] / rows["params"].sum()
    large = rows[rows["matrix"].astype(bool)].assign(share=shares)
    smallest = large.sort_values("share").iloc[0]
    if float(smallest["share"]) <= budget + 1e-12:
        return None
    return (
        f"warning: budget {budget:g} admits no {granularity} with a weight matrix: the smallest, "
        f"{unit_label(smallest)}, needs {float(smallest['share']):.4f} of the block parameters; "
        "every pick below trains norms and layer scales only (or nothing). Raise --budget to "
        f"at least {float(smallest['share']):.4f}, or use --granularity layer"
    )


def train_set(picked: pd.DataFrame) -> list[str]:
    """finetune's `train` list for picked rows: component names, or `name@a-b` per layer, in
    the canonical order (two criteria that pick the same set train the same run)."""
    if picked.empty:
        return []
    if picked["layer"].astype(str).eq(ALL).all():
        return canonical_train(picked["component"])
    out = []
    for comp in dict.fromkeys(picked["component"]):
        layers = sorted(int(v) for v in picked.loc[picked["component"] == comp, "layer"])
        out += [f"{comp}@{a}" if a == b else f"{comp}@{a}-{b}" for a, b in _runs(layers)]
    return canonical_train(out)


def _runs(layers: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for layer in layers:
        if runs and runs[-1][1] == layer - 1:
            runs[-1] = (runs[-1][0], layer)
        else:
            runs.append((layer, layer))
    return runs
