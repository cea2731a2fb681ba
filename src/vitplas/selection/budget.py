"""Budgeted choice: from a criterion's ranking to a concrete train set.

The rule: walk the units in rank order (rank 1 first) and take each one whose parameters still
fit in the budget; a unit that does not fit is skipped, and the walk goes on to smaller ones.
The budget is a fraction of the parameters of all scored units (the blocks' components; the
head and the final norm are trained besides, as in every finetuning run). If not even the
smallest unit fits, that is an error saying what fraction it needs.

A train set is written as finetune's `train` list: component names (`mha`), or, per layer,
`name@layers` with contiguous runs merged (`mha@8-11`, `fc1@3`).
"""

from __future__ import annotations

import pandas as pd

from vitplas.selection.criteria import ALL
from vitplas.training.trainsets import canonical_train


def choose(frame: pd.DataFrame, criterion: str, budget: float, granularity: str) -> pd.DataFrame:
    """The rows of `frame` (ranked, see criteria.rank) that `criterion` picks under `budget`."""
    if not 0 < budget <= 1:
        raise ValueError(f"budget is a fraction of the block parameters in (0, 1], got {budget}")
    if granularity not in ("component", "layer"):
        raise ValueError(f"granularity '{granularity}' is unknown; choose component or layer")
    rows = frame[frame["criterion"] == criterion]
    if rows.empty:
        raise ValueError(
            f"criterion '{criterion}' was not scored; scored: {sorted(set(frame['criterion']))}"
        )
    is_type = rows["layer"].astype(str).eq(ALL)
    rows = rows[is_type if granularity == "component" else ~is_type].sort_values("rank")
    allowed = budget * int(rows["params"].sum())
    taken, used = [], 0
    for index, row in rows.iterrows():
        if used + int(row["params"]) <= allowed:
            taken.append(index)
            used += int(row["params"])
    if not taken:
        need = int(rows["params"].min()) / int(rows["params"].sum())
        raise ValueError(
            f"budget {budget:g} holds no {granularity}: the smallest needs {need:.4f} of the "
            f"block parameters; raise --budget or use --granularity layer"
        )
    return rows.loc[taken]


def train_set(picked: pd.DataFrame) -> list[str]:
    """finetune's `train` list for picked rows: component names, or `name@a-b` per layer, in
    the canonical order (two criteria that pick the same set train the same run)."""
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
