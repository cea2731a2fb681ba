"""How a printed number keeps the digits that tell it apart from where it is compared.

A ratio near 1 (finetuned / base) printed to three significant digits reads "1" at 1.0007:
a change shown as none. `ratio_text` keeps the digits up to the first one that differs from 1,
and one more.
"""

from __future__ import annotations

import math

MAX_DIGITS = 16  # a float64 holds about 16 significant digits


def ratio_text(ratio: float, digits: int = 3) -> str:
    """`ratio` with `digits` significant digits, or as many more as show two digits of its
    difference from 1 (1.0007 -> '1.0007', 0.99996 -> '0.99996', 1.5 -> '1.5'); exactly 1 is
    '1', and NaN or an infinity prints as Python writes it."""
    if not math.isfinite(ratio) or ratio in (0, 1):
        return f"{ratio:g}"
    change = abs(ratio - 1)
    needed = math.floor(math.log10(abs(ratio))) - math.floor(math.log10(change)) + 2
    return f"{ratio:.{min(max(digits, needed), MAX_DIGITS)}g}"
