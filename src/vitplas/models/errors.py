"""The one error type of model loading: says what was wrong, where we looked, how to fix it."""

from __future__ import annotations

from collections.abc import Sequence


class ModelError(ValueError):
    """A model spec cannot be resolved, or its weights cannot be found or trusted."""


def short_list(items: Sequence[str], limit: int = 12) -> str:
    """`a, b, c` for short lists; the first `limit` and a count for long ones."""
    items = list(items)
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])}, ... ({len(items) - limit} more, {len(items)} in all)"
