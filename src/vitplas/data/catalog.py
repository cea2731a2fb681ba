"""One row per dataset family for `vitplas datasets`: what it is and whether it is here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitplas.data.registry import Param, is_available, list_datasets, resolve_root


def dataset_catalog(root: str | Path | None = None) -> list[dict[str, Any]]:
    """Rows (JSON-ready dicts) for every registered family, presence checked under `root`.

    A parametrised family is one row with its parameters' choices; its presence is that of
    the family's folder (e.g. CIFAR-10-C/), not of one member.
    """
    rows = []
    for info in list_datasets():
        present, where = is_available(info.name, root)
        choices = {p.name: _choices(p) for p in info.params}
        rows.append(
            {
                "name": info.pattern,
                "num_classes": info.num_classes,
                "splits": list(info.splits),
                "split_rule": info.split_rule,
                "source": info.source,
                "labelled": info.labelled,
                "modality": info.modality,
                "image_size": info.image_size,
                "channels": info.channels,
                "choices": choices,
                "present": present,
                "where": where,
                "layout": info.layout,
                "how_to_get": info.how_to_get,
                "description": info.description,
            }
        )
    return rows


def _choices(param: Param) -> list[str] | str:
    if param.choices:
        return list(param.choices)
    return f"<{param.kind}>" + (f", default {param.default}" if param.default else "")


def describe_choices(choices: dict[str, Any]) -> str:
    """'corruption: a, b, ...; severity: 1-5' for a table cell."""
    parts = []
    for name, values in choices.items():
        if isinstance(values, list) and values == [str(i) for i in range(1, len(values) + 1)]:
            values = f"1-{len(values)}"
        elif isinstance(values, list):
            values = ", ".join(values)
        parts.append(f"{name}: {values}")
    return "; ".join(parts)


def data_root_text(root: str | Path | None = None) -> str:
    return str(resolve_root(root))
