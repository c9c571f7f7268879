"""tilpheno.quantiles against numpy itself: the same bits on arrays of every kind the gating meets
(continuous, heavy ties, small, sorted, zeros of both signs, NaN, infinities)."""
from __future__ import annotations

import numpy as np
import pytest

from tilpheno import quantiles as qt

PERCENTILES = [99.5, 0.05, 50, 75, 25.0, 0.0, 100.0, [0.05, 99.95], [75, 25], [0.5, 99.5], [99.5, 0.05],
               list(np.arange(5.0, 71.0, 5.0)), list((np.arange(128) + 0.5) * 100.0 / 128), np.array([84.13]),
               [50.0, 50.0, 49.99]]


def _arrays(rng: np.random.Generator):
    for n in (1, 2, 3, 4, 5, 7, 10, 33, 100, 1001, 4096, 20000):
        yield rng.normal(size=n)
        yield rng.lognormal(3.0, 2.0, size=n) - 30.0
        yield rng.integers(-5, 6, size=n).astype(np.float64)              # ties, and zeros
        yield rng.integers(1, 4, size=n).astype(np.float64)               # ties without zeros
        yield np.round(rng.normal(size=n), 1) + 0.0
        x = rng.normal(size=n)
        x[rng.random(n) < 0.2] = -0.0                                    # zeros of both signs
        x[rng.random(n) < 0.2] = 0.0
        yield x
        y = rng.normal(size=n)
        y[rng.integers(0, n)] = np.nan
        yield y
        z = rng.normal(size=n)
        z[rng.integers(0, n)] = np.inf
        z[rng.integers(0, n)] = -np.inf
        yield z
        yield np.full(n, 2.5)


def _same(got, want) -> bool:
    return type(got) is type(want) and np.asarray(got).tobytes() == np.asarray(want).tobytes() \
        and np.shape(got) == np.shape(want)


@pytest.mark.parametrize("seed", range(2))
def test_percentile_and_quantile_are_numpys_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    checked = 0
    for x in _arrays(rng):
        before = x.copy()
        ordered = np.sort(x)
        for q in PERCENTILES:
            want = np.percentile(x, q)
            assert _same(qt.percentile(x, q), want), (x.size, q)
            assert _same(qt.sorted_percentile(ordered, q), np.percentile(ordered, q)), (x.size, q)
            fractions = np.true_divide(q, 100)
            fractions = float(fractions) if np.ndim(fractions) == 0 else list(fractions)
            assert _same(qt.OrderStatistics.of(x).quantile(fractions), np.quantile(ordered, fractions)), (x.size, q)
            checked += 1
        assert before.tobytes() == x.tobytes()      # the input is not changed
    assert checked == 12 * 9 * len(PERCENTILES)


def test_selection_and_sort_paths_both_taken():
    """Up to MAX_SELECTIONS order statistics below their neighbours are selected, more are sorted:
    both give numpy's bits on the same arrays (the test above holds either way; this pins that
    both ways are exercised there)."""
    x = np.random.default_rng(9).normal(size=5000)
    few = [1.0, 40.0, 99.0][: qt.MAX_SELECTIONS]
    many = list(np.linspace(1.0, 99.0, qt.MAX_SELECTIONS + 1))
    for q in (few, many):
        assert _same(qt.percentile(x, q), np.percentile(x, q))


def test_what_numpy_rejects_it_rejects():
    with pytest.raises(ValueError):
        qt.percentile(np.arange(5.0), 101.0)
    with pytest.raises(ValueError):
        qt.OrderStatistics.of(np.arange(5.0)).quantile([-0.1, 0.5])


def test_tail_order_statistics_are_selected_beyond_a_sampled_bound():
    """An order statistic in a tail of a large array (the 0.05th and 99.95th percentiles of 20,000
    values) is selected among the values beyond a bound read off a strided sample (``_tail_pair``),
    numpy's bits either way; where the sample misleads (every sampled value among the largest, so the
    bound keeps too few values) the whole array is selected in, as before (seed 417)."""
    rng = np.random.default_rng(417)
    x = rng.normal(size=20000)
    n = x.size
    for k in (0, 9, n - 11, n - 1, int(0.9995 * (n - 1)), int(0.0005 * (n - 1))):
        pair = qt._tail_pair(x, k)
        assert pair is not None, k
        ordered = np.sort(x)
        assert pair[0] == ordered[k] and (k == n - 1 and np.isnan(pair[1]) or pair[1] == ordered[k + 1]), k
    assert qt._tail_pair(x, n // 2) is None   # the middle: no tail
    misleading = rng.normal(size=32 * 1000)
    misleading[:: qt.TAIL_STRIDE] += 100.0   # the sample holds only the 1,000 largest values
    k = misleading.size - 1 - 300
    assert qt._tail_pair(misleading, k) is None
    for values in (x, misleading):
        for q in ([0.05, 99.95], 99.0625, [0.5, 50.0]):
            assert _same(qt.percentile(values, q), np.percentile(values, q)), q


@pytest.mark.parametrize("seed", range(2))
def test_order_statistics_read_the_sorted_arrays_bits(seed):
    """OrderStatistics, selecting each order statistic when asked (or sorting an array holding a NaN
    or a zero), reads the bits of ``np.sort``: ranks asked in a shuffled order, the middle of stretches
    (np.median of them), counts as ``np.searchsorted``, quantiles and percentiles as numpy's of the
    sorted array (the kinds of ``_arrays``: ties, zeros of both signs, NaN, infinities): ranks asked
    one at a time are selected, every rank asked at once sorts (``AT_MAX_SELECTIONS``)."""
    rng = np.random.default_rng(seed)
    checked = 0
    for x in _arrays(rng):
        before = x.copy()
        ordered = np.sort(x)
        n = x.size
        order = qt.OrderStatistics.of(x)
        for q in ([0.2, 0.95], 0.5, [0.005, 0.995]):
            assert _same(order.quantile(q), np.quantile(ordered, q)), (n, q)
        assert _same(order.percentile([0.5, 99.5]), np.percentile(ordered, [0.5, 99.5])), n
        for start, stop in ((0, n), (n // 5, n), (0, max(1, n // 5)), (n - 1, n)):
            middle = order.middle(start, stop)
            assert middle.tobytes() == ordered[start + (stop - start - 1) // 2: start + (stop - start) // 2 + 1].tobytes()
        for value in (ordered[n // 3], 0.0, 0.25):
            assert order.count_below(value) == np.searchsorted(ordered, value, side="left"), (n, value)
            assert order.count_at_or_below(value) == np.searchsorted(ordered, value, side="right"), (n, value)
        # ranks asked one call at a time, each selected (a shuffled sample with neighbours of each other
        # and the two ends, so stretches next to placed ranks are read too), then every rank in one call
        sample = rng.choice(n, min(n, 40), replace=False)
        asked = rng.permutation(np.unique(np.concatenate([sample, np.clip(sample + 1, 0, n - 1), [0, n - 1]])))
        for k in asked:
            assert order.at(k).tobytes() == ordered[k].tobytes(), (n, k)
        ranks = rng.permutation(n)
        assert order.at(ranks).tobytes() == ordered[ranks].tobytes(), n
        assert before.tobytes() == x.tobytes()      # the input is not changed
        checked += 1
    assert checked == 12 * 9


def test_order_statistics_select_between_sampled_bounds_or_in_stretches():
    """Without a NaN or a zero, and with more than SORT_MAX_VALUES values, the order statistics are
    selected, not sorted: between two bounds read off a strided sample (nothing placed; the least and
    the greatest are found and moved to the ends); where the
    sample misleads (every sampled value among the largest) by a partition of the working copy, which
    places the rank, and the next one up is then the least of the stretch above it; all are np.sort's
    values (seed 55018)."""
    rng = np.random.default_rng(55018)
    x = rng.lognormal(0.0, 1.0, 200_000)
    n = x.size
    order = qt.OrderStatistics.of(x)
    ranks = [n // 2, n // 2 - 1, 500, n - 400, 3 * n // 4, 0, n - 1]
    assert order.at(ranks).tobytes() == np.sort(x)[ranks].tobytes()
    assert order._placed == [-1, 0, n - 1, n]   # the ends: the least and the greatest, moved there
    assert set(ranks) - {0, n - 1} <= set(order._known)
    misleading = rng.normal(size=32 * 1000)
    misleading[:: qt.TAIL_STRIDE] += 100.0
    k = 9000
    assert qt._bracket_pair(misleading, k) is None
    order = qt.OrderStatistics.of(misleading)
    assert order.at([k, k + 1]).tobytes() == np.sort(misleading)[[k, k + 1]].tobytes()
    assert order._placed == [-1, k, k + 1, misleading.size]
    assert qt.OrderStatistics.of(x[: qt.SORT_MAX_VALUES])._ordered
    with pytest.raises(ValueError, match="between ranks 3 and 3"):
        order.middle(3, 3)


def test_order_statistics_sort_when_more_ranks_are_asked_at_once_than_selections_pay_for():
    """Up to AT_MAX_SELECTIONS distinct ranks in one ``at`` call are selected (the working copy stays
    unsorted), more sort it once; either way the values are np.sort's bits, and later reads too (seed 56)."""
    x = np.random.default_rng(56).lognormal(0.0, 1.0, 50_000)
    ordered = np.sort(x)
    ranks = np.linspace(0, x.size - 1, qt.AT_MAX_SELECTIONS).astype(np.intp)
    order = qt.OrderStatistics.of(x)
    assert order.at(ranks).tobytes() == ordered[ranks].tobytes()
    assert not order._ordered
    more = np.linspace(0, x.size - 1, qt.AT_MAX_SELECTIONS + 1).astype(np.intp)
    assert order.at(more).tobytes() == ordered[more].tobytes()
    assert order._ordered and order._work.tobytes() == ordered.tobytes()
    assert order.at(12_345) == ordered[12_345] and order.count_below(ordered[777]) == 777
