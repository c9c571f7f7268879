"""``np.percentile`` and ``np.quantile`` (method ``linear``) bit for bit, at less CPU.

numpy 2.x selects one order statistic with a vectorised partition, but its percentile asks for
several at once (the two neighbours of each quantile, the smallest and the largest value), which
takes the generic multi-kth selection: 8-30x the CPU of a one-kth partition at 20,000 values, more
than a sort. Here the order statistics each quantile reads are selected one kth at a time, from the
highest down, each on the head of the array below the one before (the next one up is the least of
the values between the two); with more than :data:`MAX_SELECTIONS` of them the array is sorted.
An order statistic in a tail of a large array (:func:`_tail_pair`: the 0.05th or 99.95th percentile of
200,000 values) is selected among the values beyond a bound read off a strided sample of the array
(one comparison pass; those values, a few hundred, then selected) instead of in the whole array:
NumPy 2.4's ``partition`` of 200,000 float64 values measured 1.4 ms against 0.05 ms for the pass.
An ascending array is read directly (:func:`sorted_percentile`). The values read are the order
statistics numpy reads, interpolated with numpy's formula (``_lerp`` of
``numpy/lib/_function_base_impl.py``), so the result is the same bits; when the two can differ
(a selected value is a zero, whose sign depends on which of equal values a selection meets first;
a NaN among the values; an empty array) numpy computes it.
Also ``np.median`` of an ascending array (:func:`sorted_median`), read off it, and
:class:`OrderStatistics`: several order statistics, quantiles and medians of slices of one array's
ascending order, each selected when asked, where a caller would sort the array once to read them all.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Callable

import numpy as np

MAX_SELECTIONS = 3
"""More distinct order statistics below their neighbours than this: sort instead of selecting."""
AT_MAX_SELECTIONS = 16
"""More distinct ranks than this asked of :meth:`OrderStatistics.at` in one call: the working copy is
sorted once and read (a sort of 200,000 float64 values, 8.6 ms, costs about what 16 selections by the
bounds do, 0.4-0.6 ms each; a caller asking for every rank of 20,000 values made 49,750 bracket reads)."""
TAIL_MIN_VALUES = 4096
"""Arrays of fewer values select every order statistic in the whole array (:func:`_tail_pair`)."""
TAIL_SHARE = 1 / 64
"""An order statistic with at most this share of the values beyond it is in a tail (:func:`_tail_pair`)."""
TAIL_STRIDE = 32
"""Every this many-th value forms the sample :func:`_bracket_pair` reads its bounds off."""
SORT_MAX_VALUES = 8192
""":class:`OrderStatistics` sorts arrays of at most this many values (a sort of 5,000 float64 values
costs about what its selections of a median and two quantile cuts do, of 1,000 half)."""


_Reader = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray, bool]"]
"""The order statistics at ``below`` and ``above`` of an array, and whether it holds a NaN."""


def percentile(values: np.ndarray, q: Any) -> Any:
    """``np.percentile(values, q)``: ``q`` a number (a float back) or a 1-D sequence in [0, 100]
    (an array back); ``values`` 1-D, not changed."""
    return _quantile(values, q, np.true_divide(q, 100, out=...), np.percentile, _selected(values))


def sorted_percentile(ordered: np.ndarray, q: Any) -> Any:
    """:func:`percentile` of ascending ``ordered`` (float64), read off it without a selection."""
    return _quantile(ordered, q, np.true_divide(q, 100, out=...), np.percentile, _read_sorted(ordered))


def sorted_median(ordered: np.ndarray) -> float:
    """``np.median`` of ascending ``ordered`` (non-empty): the middle value, the mean of the two
    middle ones for an even count (as ``np.mean`` forms it)."""
    half = ordered.size // 2
    if ordered.size % 2:
        return float(ordered[half])
    return float((ordered[half - 1] + ordered[half]) / 2)


def _selected(values: np.ndarray) -> _Reader:
    """Reads the order statistics of ``values`` by selection (:func:`_select`)."""
    return lambda below, above: _select(np.asarray(values), below, above)


def _read_sorted(ordered: np.ndarray) -> _Reader:
    """Reads the order statistics of ascending ``ordered`` off it (a NaN is last)."""
    x = np.asarray(ordered)
    return lambda below, above: (x[below], x[above], bool(np.isnan(x[-1])))


def percentile_positions(size: int, q: Any) -> np.ndarray:
    """The positions (ascending) whose order statistics ``np.percentile`` of ``size`` values at ``q``
    (percent, 0-100) interpolates, the two around each quantile, and the last position: an array
    ``partition``-ed at them holds there the values a sort puts there (the last its largest, or a
    NaN), so :func:`sorted_percentile` reads the same bits off it as ``np.percentile``."""
    _, _, below, above = _neighbours(size, np.true_divide(q, 100))
    return np.unique(np.concatenate([below.ravel(), above.ravel(), [size - 1]]))


def _neighbours(n: int, fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """numpy's virtual index of method ``linear`` for ``fractions`` of ``n`` values, whether it is at or
    beyond the last position, and the positions of the order statistics below and above it."""
    virtual = np.asarray((n - 1) * fractions)
    top = virtual >= n - 1
    below = np.asarray(np.where(top, n - 1, np.floor(virtual)).astype(np.intp))
    return virtual, top, below, np.minimum(below + 1, n - 1)


def _quantile(values: np.ndarray, q: Any, fractions: np.ndarray, numpy_way: Any, read: _Reader) -> Any:
    x = np.asarray(values)
    if x.ndim != 1 or x.dtype != np.float64 or x.size == 0 or fractions.dtype != np.float64 or fractions.ndim > 1 \
            or not (fractions.min() >= 0 and fractions.max() <= 1):
        return numpy_way(values, q)
    virtual, top, below, above = _neighbours(x.size, fractions)
    a, b, nan = read(below, above)
    if nan or not (np.all(a) and np.all(b)):   # a NaN, or a zero (one of two signs) among those read
        return numpy_way(values, q)
    # numpy's gamma: the previous index is -1 (the last) where the virtual index is at or above it
    gamma: Any = virtual - np.where(top, -1, below)
    if type(q) in (int, float):   # numpy's weak promotion of a Python number
        gamma = float(gamma)
    diff = b - a
    out = np.add(a, diff * gamma, out=...)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe", dtype=type(out.dtype))
    return out[()] if out.ndim == 0 else out


def _select(x: np.ndarray, below: np.ndarray, above: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """The order statistics at ``below`` and ``above`` (each ``below`` + 1, or both the last) of
    ``x``, and whether ``x`` holds a NaN (ordered last: then among those read, or above them)."""
    ranks = np.unique(below)
    if ranks.size > MAX_SELECTIONS:
        ordered = np.sort(x)
        return ordered[below], ordered[above], bool(np.isnan(ordered[-1]))
    value: dict[int, float] = {}
    middle = []
    finite_order = x.size >= TAIL_MIN_VALUES and not np.isnan(x).any()
    for k in ranks.tolist():
        pair = _tail_pair(x, k) if finite_order else None
        if pair is None:
            middle.append(k)
        else:
            value[k] = pair[0]
            if k + 1 < x.size:
                value[k + 1] = pair[1]
    work = x.copy() if middle else x
    end = work.size
    for k in middle[::-1]:
        head = work[:end]
        head.partition(k)
        value[k] = head[k]
        # the next one up: the least above k in this head, or the one selected before (at `end`)
        if k + 1 < end:
            value[k + 1] = head[k + 1:].min()
        elif k + 1 < work.size:
            value[k + 1] = work[end]
        end = k
    nan = bool(np.isnan(value[int(ranks[-1])]) or (int(ranks[-1]) + 1 in value and np.isnan(value[int(ranks[-1]) + 1])))
    a = np.array([value[k] for k in below.ravel().tolist()], dtype=np.float64).reshape(below.shape)
    b = np.array([value[k] for k in above.ravel().tolist()], dtype=np.float64).reshape(above.shape)
    return a, b, nan


def _tail_pair(x: np.ndarray, k: int) -> tuple[float, float] | None:
    """The order statistics ``k`` and ``k + 1`` of ``x`` as :func:`_bracket_pair` reads them, when ``k``
    lies in one of its tails, at most :data:`TAIL_SHARE` of the values below it or above it (then the
    bracket is open on that side: one bound); None otherwise."""
    n = x.size
    beyond = min(n - 1 - k, k + 1)   # values on the tail's side of k + 1 (top) or of k (bottom), k's pair included
    if beyond + 1 > n * TAIL_SHARE:
        return None
    return _bracket_pair(x, k)


def _bracket_pair(x: np.ndarray, k: int) -> tuple[float, float] | None:
    """The order statistics ``k`` and ``k + 1`` (0-based; the second NaN when ``k`` is the last) of
    ``x`` (1-D float64 without NaN, not changed), selected among the values between two bounds read off
    a strided sample (every :data:`TAIL_STRIDE`-th value): the sample's order statistics a margin of
    four binomial standard deviations and 4 values below ``k``'s and above ``k + 1``'s share of it (a
    bound past the sample's end: none on that side). Every value between the bounds (or equal to one)
    is kept, so the order statistics among them are ``x``'s, shifted by the number below: the same
    values as a selection in all of ``x``. None when the bounds do not hold both, or neither bound exists."""
    n = x.size
    sample = x[::TAIL_STRIDE].copy()
    share = (k + 0.5) / n
    reach = int(4.0 * math.sqrt(sample.size * share * (1.0 - share))) + 4   # sample values kept beyond each side
    low_rank = k // TAIL_STRIDE - reach
    high_rank = -(-(k + 2) // TAIL_STRIDE) + reach
    keep = None
    below = 0
    if low_rank > 0:
        sample.partition(low_rank)
        keep = x >= sample[low_rank]
        below = n - int(np.count_nonzero(keep))
    if high_rank < sample.size - 1:
        head = sample[max(low_rank, 0):]
        head.partition(high_rank - max(low_rank, 0))
        at_most = x <= head[high_rank - max(low_rank, 0)]
        keep = at_most if keep is None else keep & at_most
    if keep is None:
        return None
    kept = x[keep]
    kth = k - below
    if kth < 0 or kth + min(2, n - k) > kept.size:   # k and k + 1 (when there is one) both kept
        return None
    kept.partition(kth)
    return float(kept[kth]), float(kept[kth + 1:].min()) if kth + 1 < kept.size else float("nan")


class OrderStatistics:
    """The ascending order of a 1-D float64 array, read without sorting it: each order statistic asked
    for (with the next one up) is selected among the values between two bounds read off a strided sample
    of the stretch holding it (:func:`_bracket_pair`: two comparison passes and a selection among a few
    thousand values); when the bounds miss it, or the stretch is small, it is selected
    (``ndarray.partition``) in that stretch of a working copy and placed. A stretch lies between the
    positions already placed (the values before a placed position are at or below it, those after at or
    above); a rank next to a placed one is its stretch's least or greatest value (moved there). Measured
    on NumPy 2.4 (least of 100, process time): one order statistic of 200,000 float64 values 0.4-0.6 ms
    by the bounds, 1.7-2.1 ms by a partition, 8.6 ms by a sort; of 20,000 values 0.07-0.10, 0.15-0.19
    and 0.6 ms.

    Made by :meth:`of`: an array of at most :data:`SORT_MAX_VALUES` values is sorted instead, and so is
    one holding a NaN or a zero (a selection may meet a zero of either sign first, where a sort places
    them in its own order; a NaN has no rank), so every value read, quantile and count is the one the
    sorted array gives, bit for bit."""

    def __init__(self, work: np.ndarray, ordered: bool) -> None:
        self._work = work
        self._ordered = ordered
        self._placed = [-1, work.size]   # ascending; positions whose value is its order statistic
        self._known: dict[int, float] = {}   # order statistics read by _bracket_pair, not placed

    @classmethod
    def of(cls, values: np.ndarray) -> "OrderStatistics":
        """The order of ``values`` (1-D float64, not changed): selected, or sorted (few values, a NaN or a zero)."""
        x = np.asarray(values, dtype=np.float64)
        if x.size <= SORT_MAX_VALUES or np.isnan(x).any() or not x.all():
            return cls(np.sort(x), ordered=True)
        return cls(x.copy(), ordered=False)

    @property
    def size(self) -> int:
        return int(self._work.size)

    def at(self, ranks: Any) -> np.ndarray:
        """The order statistics at ``ranks`` (0-based, each in [0, size)), an array of their shape; more
        than :data:`AT_MAX_SELECTIONS` distinct ranks at once sort the working copy (then every later
        read is off the sorted values)."""
        ranks = np.asarray(ranks, dtype=np.intp)
        if not self._ordered and np.unique(ranks).size > AT_MAX_SELECTIONS:
            self._work.sort()   # the working copy: no NaN, no zero, so np.sort's bits
            self._ordered = True
        if self._ordered:
            return self._work[ranks]
        flat = ranks.ravel().tolist()
        value = {k: self._one(k) for k in sorted(set(flat))}
        return np.array([value[k] for k in flat], dtype=np.float64).reshape(ranks.shape)

    def quantile(self, q: Any) -> Any:
        """``np.quantile`` of the values (``q`` in [0, 1]; as :func:`percentile`)."""
        return _quantile(self._work, q, np.asanyarray(q), np.quantile, self._read)

    def percentile(self, q: Any) -> Any:
        """``np.percentile`` of the values (``q`` in [0, 100]; as :func:`percentile`)."""
        return _quantile(self._work, q, np.true_divide(q, 100, out=...), np.percentile, self._read)

    def middle(self, start: int, stop: int) -> np.ndarray:
        """The one or two middle order statistics of ranks ``start`` to ``stop - 1`` (``stop > start``):
        their :func:`sorted_median` is ``np.median`` of that stretch of the ascending values."""
        if stop <= start:
            raise ValueError(f"no order statistics between ranks {start} and {stop}")
        return self.at(np.arange(start + (stop - start - 1) // 2, start + (stop - start) // 2 + 1))

    def count_below(self, value: float) -> int:
        """How many values are below ``value``: ``np.searchsorted`` (side ``left``) in the ascending values."""
        if self._ordered:
            return int(np.searchsorted(self._work, value, side="left"))
        return int(np.count_nonzero(self._work < value))

    def count_at_or_below(self, value: float) -> int:
        """How many values are at or below ``value``: ``np.searchsorted`` (side ``right``) in the ascending values."""
        if self._ordered:
            return int(np.searchsorted(self._work, value, side="right"))
        return int(np.count_nonzero(self._work <= value))

    def _read(self, below: np.ndarray, above: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        if self._ordered:
            return _read_sorted(self._work)(below, above)
        return self.at(below), self.at(above), False

    def _one(self, k: int) -> float:
        """Order statistic ``k``, placed at ``k`` in the working copy unless a tail read it."""
        if k in self._known:
            return self._known[k]
        i = bisect.bisect_left(self._placed, k)
        if self._placed[i] == k:
            return float(self._work[k])
        lo, hi = self._placed[i - 1] + 1, self._placed[i]   # the stretch work[lo:hi] holds rank k
        stretch = self._work[lo:hi]
        if k in (lo, hi - 1) and hi - lo > 1:
            j = int(stretch.argmin() if k == lo else stretch.argmax())
            stretch[[j, k - lo]] = stretch[[k - lo, j]]
        else:
            pair = _bracket_pair(stretch, k - lo) if stretch.size >= TAIL_MIN_VALUES else None
            if pair is not None:
                self._known[k] = pair[0]
                if k + 1 < hi:
                    self._known[k + 1] = pair[1]
                return pair[0]
            stretch.partition(k - lo)
        self._placed.insert(i, k)
        return float(self._work[k])
