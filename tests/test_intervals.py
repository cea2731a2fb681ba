"""Intervals that count what is independent (issue 20.2): the two-way cluster-robust variance
of ratio_stats against statsmodels and a direct computation, its one-way special case, the
unit sums across a resume, the photo stream's units, the one home of the CI rule, until_ci on
the clustered interval, and (slow) a simulation where the naive interval under-covers and
the clustered one covers at about 95%."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitplas.analysis.pairs import pair_units, stream_units
from vitplas.analysis.ratio_stats import RatioStats
from vitplas.intervals import quantile95


def design(n: int, g: int, h: int | None, seed: int):
    """Unit ids (u, v) of n pairs over g reference and h target units (None: distinct)."""
    rng = np.random.default_rng(seed)
    u = rng.integers(g, size=n)
    v = np.arange(n) if h is None else rng.integers(h, size=n)
    return u, v, n if h is None else h


def clustered(r: np.ndarray, u: np.ndarray, v: np.ndarray, g: int, h: int) -> RatioStats:
    """RatioStats of ratios r (n, E) fed in batches of 7, clustered by (u, v)."""
    stats = RatioStats(r.shape[1:], units=(g, h))
    for i in range(0, len(r), 7):
        ids = (torch.from_numpy(u[i : i + 7]), torch.from_numpy(v[i : i + 7]))
        stats.update(torch.from_numpy(r[i : i + 7]), unit_ids=ids)
    return stats


def direct_two_way(r: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
    """Cameron-Gelbach-Miller for a mean, written out with loops over the clusters: each
    one-way term with its G / (G - 1), the pair-level term with N / (N - 1), then never
    below either one-way variance."""
    n, e = len(r), r - r.mean()

    def one_way(ids):
        groups = np.unique(ids)
        sums = np.array([e[ids == k].sum() for k in groups])
        return len(groups) / (len(groups) - 1) * (sums**2).sum() / n**2

    vg, vh = one_way(u), one_way(v)
    return max(vg + vh - n / (n - 1) * (e**2).sum() / n**2, vg, vh)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_way_variance_equals_a_direct_computation(seed):
    u, v, h = design(300, 17, 60, seed)  # repeated cells: pair-level intersection term
    rng = np.random.default_rng(seed + 10)
    r = 1 + 0.3 * rng.normal(size=17)[u] + 0.2 * rng.normal(size=h)[v] + 0.3 * rng.normal(size=300)
    stats = clustered(np.stack([r, 2 * r], 1), u, v, 17, h)  # two entries: V scales by 4
    got = stats.variance_of_mean().numpy()
    assert got[0] == pytest.approx(direct_two_way(r, u, v), rel=1e-10)
    assert got[1] == pytest.approx(4 * got[0], rel=1e-10)
    assert stats.unit_counts().tolist() == [17.0, 17.0]
    ci = stats.ci95().numpy()
    assert ci[0] == pytest.approx(quantile95(17) * np.sqrt(got[0]), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_distinct_targets_give_statsmodels_two_way_and_one_way_variance(seed):
    """With every target image distinct the two-way variance is the one-way CR1 by reference
    unit; both equal statsmodels' (cov_cluster_2groups, cov_cluster) to 1e-12."""
    from statsmodels.regression.linear_model import OLS
    from statsmodels.stats.sandwich_covariance import cov_cluster, cov_cluster_2groups

    u, v, h = design(256, 17, None, seed)
    rng = np.random.default_rng(seed)
    r = 1 + 0.3 * rng.normal(size=17)[u] + 0.3 * rng.normal(size=256)
    fit = OLS(r, np.ones((256, 1))).fit()
    two_way = cov_cluster_2groups(fit, u, v, use_correction=True)[0][0, 0]
    one_way = cov_cluster(fit, u, use_correction=True)[0, 0]
    got = clustered(r[:, None], u, v, 17, h).variance_of_mean().item()
    assert got == pytest.approx(two_way, rel=1e-12) and got == pytest.approx(one_way, rel=1e-12)
    naive = RatioStats((1,))
    naive.update(torch.from_numpy(r)[:, None])
    assert naive.variance_of_mean().item() == pytest.approx(r.var(ddof=1) / 256, rel=1e-12)
    assert naive.unit_counts().item() == 256  # no unit ids: the pairs are the units


def test_unit_sums_continue_across_a_resume_and_refuse_other_units():
    u, v, h = design(60, 5, 9, 3)
    r = torch.from_numpy(np.random.default_rng(3).normal(size=(60, 2, 3)))
    whole, first = RatioStats((2, 3), units=(5, h)), RatioStats((2, 3), units=(5, h))
    ids = (torch.from_numpy(u), torch.from_numpy(v))
    whole.update(r, unit_ids=ids)
    first.update(r[:30], unit_ids=(ids[0][:30], ids[1][:30]))
    second = RatioStats((2, 3), units=(5, h))
    second.load_state_dict(first.state_dict())
    second.update(r[30:], unit_ids=(ids[0][30:], ids[1][30:]))
    for key, value in whole.to_host().items():
        torch.testing.assert_close(value, second.to_host()[key], rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="other bounds or units"):
        RatioStats((2, 3)).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="pass each pair's unit ids"):
        whole.update(r)


def test_the_photo_streams_units_are_its_photos():
    from vitplas.data import get_dataset
    from vitplas.data.photos import PhotoStream, load_photos

    stream = get_dataset("photos", "val")
    units = stream_units(stream)
    assert units.count == len(load_photos()) == 17 and units.what == "photos"
    items = np.arange(0, 200, 7)
    records = PhotoStream(len(stream), "val")
    assert units.of(items).tolist() == [records.crop_box(int(i))[0] for i in items]
    digits = stream_units(torch.utils.data.TensorDataset(torch.zeros(5, 1)))
    assert digits.count == 5 and digits.of(np.array([4, 1])).tolist() == [4, 1]
    pair = pair_units(stream, torch.utils.data.TensorDataset(torch.zeros(5, 1)))
    ux, uy = pair.ids((torch.tensor([0, 7]), torch.tensor([4, 1])))
    assert ux.tolist() == units.of(np.array([0, 7])).tolist() and uy.tolist() == [4, 1]
    with pytest.raises(ValueError, match=r"unit ids outside \[0, 5\) for images"):
        pair.ids((torch.tensor([0]), torch.tensor([5])))


def test_one_home_for_the_ci_rule():
    from vitplas.analysis import ratio_stats
    from vitplas.experiments import stats

    assert stats.ci95_quantile(3) == pytest.approx(4.302653, abs=1e-6)
    assert ratio_stats.quantile95 is quantile95 and stats.T_UNTIL == ratio_stats.T_BELOW == 30
    assert quantile95(np.array([2, 29, 30])).tolist() == pytest.approx(
        [12.7062, 2.0484, 1.96], 1e-4
    )


def test_until_ci_stops_on_the_clustered_interval():
    """Ratios driven by 3 reference units: the naive interval is narrow at once, the
    clustered one (t with 2 degrees of freedom) is not."""
    rng = np.random.default_rng(0)
    u = np.tile(np.arange(3), 100)
    r = torch.from_numpy(1 + 0.2 * np.array([-1.0, 0.2, 0.8])[u] + 0.01 * rng.normal(size=300))
    naive, units = RatioStats((1,)), RatioStats((1,), units=(3, 300))
    naive.update(r[:, None])
    units.update(r[:, None], unit_ids=(torch.from_numpy(u), torch.arange(300)))
    assert naive.settled(0.05) and not units.settled(0.05)
    assert units.ci95().item() > 20 * naive.ci95().item()


def coverage(g: int, h: int | None, seed: int, reps: int = 4000, n: int = 512):
    """(naive, clustered) coverage of the true mean 1 over `reps` synthetic streams of n pairs:
    ratio = 1 + a_u + b_v + noise, a new draw of the unit effects each time, the design (which
    pair has which units) fixed; each replicate is one entry of the statistics."""
    u, v, h = design(n, g, h, seed)
    rng = np.random.default_rng(seed + 100)
    a = 0.3 * rng.normal(size=(reps, g))
    b = 0.2 * rng.normal(size=(reps, h))
    r = (1 + a[:, u] + b[:, v] + 0.2 * rng.normal(size=(reps, n))).T.copy()  # (n, reps)
    stats, naive = clustered(r, u, v, g, h), RatioStats((reps,))
    naive.update(torch.from_numpy(r))
    inside = [((s.mean() - 1).abs() <= s.ci95()).double().mean().item() for s in (naive, stats)]
    return tuple(inside)


@pytest.mark.slow
@pytest.mark.parametrize(("g", "h"), [(17, None), (17, 40)])
def test_naive_interval_under_covers_and_the_clustered_one_covers(g, h):
    """17 sources like the photo stream (targets distinct, or 40 repeated target sources):
    the naive interval covers about a third of the time, the clustered one about 95%."""
    for seed in (0, 1):
        naive, units = coverage(g, h, seed)
        assert naive < 0.5
        assert 0.93 <= units <= 0.97, units
