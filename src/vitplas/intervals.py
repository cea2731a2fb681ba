"""The one rule for a two-sided 95% confidence interval of a mean, used by every table.

    half-width = q(n) * (standard error),  q(n) = t_0.975(n - 1) for 2 <= n < T_BELOW,
                                           q(n) = 1.96 (the paper's) from T_BELOW on,
                                           NaN below n = 2 (no interval from one value).

n is the number of independent units the interval rests on: seeds of a finetuning cell
(experiments/stats.py), or the independent source images of a plasticity mean (the clustered
interval of analysis/ratio_stats.py: t with units - 1 degrees of freedom, as Cameron, Gelbach
and Miller advise for few clusters). Over few units 1.96 is far too narrow (t = 4.30 at n = 3,
3.18 at n = 4); from 30 on the two differ by under 4%.
"""

from __future__ import annotations

import numpy as np

Z95 = 1.96  # PAPER.md section 1: ci95 = 1.96 std / sqrt(n) (the 95% normal quantile, rounded)
T_BELOW = 30  # n < T_BELOW: Student's t quantile t_0.975(n - 1) instead of Z95


def quantile95(n: np.ndarray | float) -> np.ndarray:
    """The two-sided 95% quantile for a mean over n independent units, per entry of n (an
    array of the same shape; a 0-dim array for a number): t_0.975(n - 1) below T_BELOW,
    Z95 from it on, NaN below 2."""
    from scipy.stats import t as student

    n = np.asarray(n, dtype=np.float64)
    small = student.ppf(0.975, np.maximum(n - 1, 1))
    q = np.where(n < T_BELOW, small, Z95)
    return np.where(n < 2, np.nan, q)
