"""Grid axes' values: how a value reads (train_label, slug_value) and `grid_by`, an axis whose
values depend on another's (each train set's own lr grid): its checks, its expansion and its
--dry-run lines. The sweep spec (experiments.spec) calls these; `spec` below is its SweepSpec.

    grid_by: {train: {ln1: {lr: [0.1, 0.3, 1.0]}}}   ln1's runs take these lrs, the others
                                                     grid.lr
"""

from __future__ import annotations

from typing import Any

from vitplas.config import ConfigError


def train_label(train: Any) -> str:
    """`[mha, fc1]` -> 'mha+fc1'; 'all' stays 'all'. The name of a train set in tables."""
    if isinstance(train, list | tuple):
        return "+".join(str(t) for t in train)
    return str(train)


def slug_value(value: Any) -> str:
    """A value as it reads in a run id: 0.1 -> '0.1', [mha, fc1] -> 'mha+fc1'."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "+".join(slug_value(v) for v in value)
    text = str(value)
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text)


def check_grid_by(spec) -> None:
    """grid_by names grid axes, values of them (by their table label: train_label), and other
    grid axes with non-empty lists; a selection study chooses lrs on validation."""
    for axis, by_value in spec.grid_by.items():
        if axis not in spec.grid:
            raise ConfigError(f"grid_by names '{axis}', which is not a grid axis "
                              f"({', '.join(spec.grid)})")  # fmt: skip
        labels = [train_label(v) for v in spec.grid[axis]]
        for label, axes in by_value.items():
            if label not in labels:
                raise ConfigError(f"grid_by.{axis} names '{label}', not a value of grid.{axis} "
                                  f"({', '.join(labels)})")  # fmt: skip
            for other, values in axes.items():
                if other == axis or other not in spec.grid:
                    raise ConfigError(
                        f"grid_by.{axis}.{label} overrides '{other}', which must be another grid "
                        f"axis ({', '.join(a for a in spec.grid if a != axis)}); put its default "
                        f"list in grid.{other}"
                    )
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"grid_by.{axis}.{label}.{other} must be a non-empty "
                                      f"list, got {values!r}")  # fmt: skip
    autos = [t for t in spec.grid.get("train", []) if str(t).startswith("auto")]
    if autos and spec.select_by != "best_val_acc":
        raise ConfigError(
            f"a selection study (train={autos[0]}) must choose each train set's lr on "
            "validation: set `select_by: best_val_acc` (the test split is for the evidence)"
        )


def grid_by_lines(spec) -> list[str]:
    """One line per grid_by axis pair, for --dry-run: 'lr by train: ln1: 0.1, 0.3, 1; ...;
    others: 0.03'."""
    lines = []
    for axis, by_value in spec.grid_by.items():
        others = sorted({o for axes in by_value.values() for o in axes})
        for other in others:
            parts = [f"{label}: {', '.join(slug_value(v) for v in axes[other])}"
                     for label, axes in by_value.items() if other in axes]  # fmt: skip
            default = ", ".join(slug_value(v) for v in spec.grid[other])
            lines.append(f"{other} by {axis}: {'; '.join(parts)}; others: {default}")
    return lines


def split_by(axes: dict[str, list], spec) -> list[dict[str, list]]:
    """`axes` split so that each grid_by axis value carries its own lists of the other axes."""
    variants = [axes]
    for axis, by_value in spec.grid_by.items():
        split = []
        for variant in variants:
            for value in variant[axis]:
                override = by_value.get(train_label(value), {})
                split.append({**variant, axis: [value], **override})
        variants = split
    return variants
