"""Data-driven gate placement: each function looks at one population's events and returns a
resolved geometry gate (``tilpheno.gates.geometry``), the method's name, diagnostics, and QC flags.

All functions are pure and deterministic bit for bit: densities are binned histograms smoothed
with a Gaussian kernel (no random numbers); the one fitted model (the lymphocyte mixture) runs on
a subsample drawn with a fixed seed, single-threaded (``threadpoolctl``), so the result does not
depend on the machine's thread count.

Scales: scatter dimensions are linear instrument units (0..``ceiling``, 262143 on the demo
Fortessa); fluorescence dimensions are on the transformed scale (logicle 0..1 by default), so the
1-D density bandwidths below are in transformed units.

Methods
-------
``place_cells``  FSC-A/SSC-A. The debris boundary is the deepest point of the log10(FSC-A)
    density between the lowest peak (debris; the axis start counts as a peak when debris density
    rises towards it) and the main (highest) peak. Events at or above ``ceiling`` on either
    axis (the saturated edge) are outside. Gate: a polygon (rectangle) ``[cut, ceiling) x
    [-ceiling, ceiling)``. Without a debris peak the cut is ``fallback_fraction`` x the main
    mode (diagnostic ``debris_peak = False``, no flag: a clean sample is not a problem).
    ``boundary='oblique'``: the same rule on projections of (log10 FSC-A, log10 SSC-A) at
    :data:`OBLIQUE_ANGLES`; the deepest debris valley sets a tilted line (a polygon), for debris
    that runs diagonally under small cells.
``place_singlets``  FSC-A vs FSC-H. Ratio r = H/A; centre = mode of r (smoothed density);
    spread s = 1.4826 x the median deviation above the mode (the upper side holds no doublets);
    band = [mode - width s, mode + width s], raised to the density valley between a doublet
    peak and the singlet peak when such a peak exists. Gate: a wedge polygon through the origin.
``place_valley``  1-D split at the density valley between the two most prominent peaks of a
    smoothed density (live/dead on 7AAD; lineage markers without FMO); a second peak closer
    than ``min_separation`` to the negative one is a shoulder (autofluorescent large cells), and
    the next prominent peak beyond that distance is taken instead. ``keep='low'`` keeps the
    negative side ``x < cut``, ``keep='high'`` the positive side ``x > cut``. With one
    population only (flag ``no_second_peak``): negative unless its peaks lie ``min_separation``
    above the product's unstained control's median (a small peak near it and a dominant one above
    it are then two populations), or, without a control, above the transformed zero: then
    undetermined (negative cells sit there too), held as positive and said; the strategy may state
    the side (``one_population``); cut ``fallback_sd`` robust SDs above (negative) or below
    (positive) its peaks (see ``valley_threshold``), except one population the control calls
    negative: the control's percentile carried to it (``unstained_carry``, :func:`_control_carry`).
``place_lymphocytes``  FSC-A/SSC-A on live singlets. A Gaussian mixture (``gates.mixture``:
    scikit-learn's model and fit in numpy; full covariance, components 1..``max_components``
    chosen by BIC, k-means init with a fixed ``seed``) on at most ``max_events`` events; the
    lymphocyte component is the heaviest one, merged with components whose means lie inside its
    ellipse or that are the edge of its cloud (one density peak with it and denser than its gate's
    boundary: lymphoblasts above resting lymphocytes); the gate is the ellipse of the merged
    moments at the chi-square ``coverage`` quantile (2 d.f.). Large non-lymphoid cells form their
    own component(s) and fall outside, and so does a thin background under the cloud.
``place_cluster``  two markers (e.g. CD3 vs CD19): the ellipse of the Gaussian-mixture component
    lying furthest to the strategy's stated side on each axis (``x_side``/``y_side`` high, low,
    any), merged with components whose means lie inside it or that are the edge of its cloud
    (see :func:`place_cluster`).
``place_fmo_threshold``  Threshold = the ``percentile`` (numpy linear interpolation, type 7) of
    the FMO tube's events in the same parent population; positive = value > threshold. Flag
    ``low_events`` when the FMO parent has fewer than ``min_events`` events.
``place_fmo_anchored``  The FMO as the anchor, the stained tube as the evidence: the FMO
    percentile, the same percentile carried over to the stained negatives (additive model in
    linear units) and the stained valley, one of them chosen by the strategy's ``rule``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache, partial, wraps
from typing import Any, Callable, Mapping, ParamSpec, TypeVar

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.special import fdtri, gammaincinv, ndtr, ndtri, stdtrit

from tilpheno.errors import GatingError, TooFewEventsError
from tilpheno.gates.geometry import EllipsoidGate, Gate, PolygonGate, RangeGate
from tilpheno.gates.mixture import MixtureFit, fit_best_mixture, ridgeline_ratio
from tilpheno import quantiles

MAX_SHIFT = 0.3
"""Default ``max_shift`` of an ``fmo`` gate (transformed units): how far above its FMO's negative mode the
stained tube's negative peak is looked for (``stained_negative_peak``); checks and the shared reading's key
read a strategy's own value or this."""

_BINS = 1024
VALLEY_RULES = ("valley", "negative_sd", "lower", "positive_sd", "higher")
"""``valley`` gate rules (strategy param ``rule``); see :func:`place_valley`."""
ONE_POPULATION = ("auto", "negative", "positive")
"""How a ``valley`` gate calls one population (strategy param ``one_population``); see :func:`place_valley`."""
ONE_POPULATION_METHODS = ("single_population_sd", "unstained_carry")
"""The methods of a ``valley`` gate that saw one population (flag ``no_second_peak``); see :func:`place_valley`."""


@dataclass(frozen=True)
class Flag:
    """A QC finding from placement: ``code`` (design.md list), ``severity`` (info|warning|error);
    ``gate``: the population whose gate it is about ('' until the engine, which knows the
    population a placement is for, sets it: ``phenotype.gate_flag``)."""

    code: str
    severity: str
    message: str
    gate: str = ""


@dataclass(frozen=True)
class Placement:
    """A placed gate: the geometry, the method that placed it, numbers behind it, QC flags."""

    gate: Gate
    method: str
    diagnostics: dict[str, Any] = field(default_factory=dict)
    flags: tuple[Flag, ...] = ()


@dataclass(frozen=True)
class Density:
    """A smoothed 1-D density on an even grid (``grid`` = bin centres, ``values`` sums to 1)."""

    grid: np.ndarray
    values: np.ndarray

    def peaks(self, min_prominence: float) -> tuple[np.ndarray, np.ndarray]:
        """Indices (increasing) and prominences of the peaks with prominence >= ``min_prominence``
        x the highest density.

        A peak is a local maximum (the left end of a flat top); the density is taken as 0 beyond
        both ends of the grid, so a maximum at either end counts. Prominence as in topography
        (and ``scipy.signal.peak_prominences``): height above the higher of the two lowest points
        separating the peak from higher ground (or the grid's end) on each side.
        """
        v = np.concatenate([[0.0], self.values, [0.0]])
        step = np.sign(np.diff(v))  # step[k] = sign(v[k + 1] - v[k])
        position = np.arange(step.size)
        nonzero_at = np.minimum.accumulate(np.where(step != 0, position, step.size)[::-1])[::-1]
        next_step = np.where(nonzero_at < step.size, step[np.minimum(nonzero_at, step.size - 1)], 0)
        candidates = np.nonzero((step[:-1] > 0) & (next_step[1:] < 0))[0] + 1
        keep, prominences = [], []
        limit = min_prominence * self.values.max()
        for i in candidates:
            higher_left = np.nonzero(v[:i] > v[i])[0]
            higher_right = np.nonzero(v[i + 1:] > v[i])[0]
            left = v[higher_left[-1] if higher_left.size else 0 : i].min()
            right = v[i + 1 : i + 1 + higher_right[0] if higher_right.size else len(v)].min()
            prominence = v[i] - max(left, right)
            if prominence >= limit and prominence > 0:
                keep.append(i - 1)
                prominences.append(prominence)
        return np.asarray(keep, dtype=np.int64), np.asarray(prominences, dtype=np.float64)

    def valley(self, left: int, right: int) -> int:
        """Index of the lowest density between grid indices ``left`` < ``right`` (first if tied)."""
        return left + int(np.argmin(self.values[left : right + 1]))


def _finite(values: np.ndarray, what: str, min_events: int = 2) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < min_events:
        raise TooFewEventsError(what, count=int(values.size), needed=min_events)
    return values


def smoothed_density(values: np.ndarray, bandwidth: float, low: float, high: float,
                     weights: np.ndarray | None = None) -> Density:
    """Histogram of ``values`` on ``_BINS`` bins over [low, high], Gaussian-smoothed.

    ``bandwidth`` is the kernel's standard deviation in the units of ``values``; ``weights``: one
    per value (e.g. the counts of pre-binned events), default 1.
    """
    if not high > low:
        high = low + max(abs(low), 1.0) * 1e-6
    counts, edges = np.histogram(values, bins=_BINS, range=(low, high), weights=weights)
    sigma_bins = bandwidth / (edges[1] - edges[0])
    smooth = gaussian_filter1d(counts.astype(np.float64), sigma_bins, mode="constant")
    total = smooth.sum()
    return Density(0.5 * (edges[:-1] + edges[1:]), smooth / total if total > 0 else smooth)


def _tails(values: np.ndarray) -> tuple[float, float]:
    """The 0.05th and 99.95th percentiles of ``values``: the span :func:`_padded_range` pads."""
    low, high = quantiles.percentile(values, [0.05, 99.95])
    return low, high


def _padded_range(values: np.ndarray, bandwidth: float, tails: tuple[float, float] | None = None) -> tuple[float, float]:
    """A density's grid range: the :func:`_tails` of ``values`` (``tails``: already taken, for
    densities of the same values at several bandwidths) widened by 3 ``bandwidth`` on each side."""
    low, high = tails if tails is not None else _tails(values)
    return float(low - 3 * bandwidth), float(high + 3 * bandwidth)


# --------------------------------------------------------------------------------------------
# scatter: cells, singlets, lymphocytes
# --------------------------------------------------------------------------------------------


CELL_BOUNDARIES = ("fsc", "oblique")
"""``cells`` gate boundaries (strategy param ``boundary``); see :func:`place_cells`."""
OBLIQUE_ANGLES = tuple(range(0, 61, 5))
"""Angles (degrees) of the debris boundary's normal from the log10(FSC-A) axis towards log10(SSC-A)
tried by ``boundary: oblique``; 0 = the vertical FSC-A cut. Never negative: debris scatters less
light on both axes, and a boundary tilted the other way would cut dead cells (lower FSC-A, higher
SSC-A than live ones)."""
_GRID_2D = 512


@dataclass(frozen=True)
class _DebrisSplit:
    """Debris vs cells on one 1-D density: the valley's position (None without a debris peak), the
    main peak's, and how deep the valley is (its density / the lower of the two peaks'; 1.0 without
    a debris peak)."""

    cut: float | None
    main: float
    depth: float


def _debris_split(density: Density, min_prominence: float) -> _DebrisSplit:
    """The valley between the lowest peak (debris, or the axis start) and the main (highest) peak."""
    peaks, _ = density.peaks(min_prominence)
    main = int(peaks[np.argmax(density.values[peaks])])
    lowest = int(peaks[0])
    if lowest >= main:
        return _DebrisSplit(None, float(density.grid[main]), 1.0)
    valley = density.valley(lowest, main)
    depth = density.values[valley] / min(density.values[lowest], density.values[main])
    return _DebrisSplit(float(density.grid[valley]), float(density.grid[main]), float(depth))


def _oblique_split(u: np.ndarray, v: np.ndarray, floor: float, top: float, bandwidth: float,
                   min_prominence: float) -> tuple[int, _DebrisSplit]:
    """The angle of :data:`OBLIQUE_ANGLES` whose projection u cos a + v sin a has the deepest
    debris valley (ties: the smaller angle), and that split; no debris valley at any angle: 0 and
    the vertical split. The events are binned once on a ``_GRID_2D``-square grid over [floor, top]
    on both axes (bins of 0.008 decades, under half the default bandwidth); each angle projects
    the occupied bins' centres, weighted by their counts (:func:`smoothed_density`)."""
    step = (top - floor) / _GRID_2D
    iu = np.clip(((u - floor) / step).astype(np.int64), 0, _GRID_2D - 1)
    iv = np.clip(((v - floor) / step).astype(np.int64), 0, _GRID_2D - 1)
    counts_2d = np.bincount(iu * _GRID_2D + iv, minlength=_GRID_2D * _GRID_2D)
    occupied = np.nonzero(counts_2d)[0]
    weights = counts_2d[occupied].astype(np.float64)
    cu = floor + (occupied // _GRID_2D + 0.5) * step
    cv = floor + (occupied % _GRID_2D + 0.5) * step
    best: tuple[int, _DebrisSplit] | None = None
    for angle in OBLIQUE_ANGLES:
        c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        density = smoothed_density(cu * c + cv * s, bandwidth, floor * (c + s), top * (c + s), weights)
        split = _debris_split(density, min_prominence)
        if best is None or (split.cut is not None and (best[1].cut is None or split.depth < best[1].depth)):
            best = (angle, split)
    assert best is not None
    return best


def _oblique_vertices(angle: float, offset: float, floor: float, ceiling: float, points: int = 48):
    """The cells polygon right of the line u cos a + v sin a = offset (u, v = log10 FSC-A, SSC-A,
    floored at ``floor``) and inside the saturated edge, in linear units: the line sampled at
    ``points`` log-spaced SSC-A values from ``ceiling`` down to where it reaches the saturated
    FSC-A edge (below that SSC-A it keeps nothing) or else to 10^floor, where the cut stays the
    line's at the floor (the floored axis) down to -``ceiling``. Where the line leaves the axis
    (u < floor) every FSC-A is kept. The line runs down to the axis, as an expert's diagonal edge:
    a debris streak continues towards the origin, below the cells' side scatter. Every vertex lies
    within +-``ceiling``."""
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    top = np.log10(ceiling)
    hit = (offset - top * c) / s          # SSC-A (log10) where the line meets FSC-A = ceiling
    v = np.linspace(top, max(hit, floor), points)
    u = (offset - v * s) / c
    x = np.where(u < floor, -ceiling, np.minimum(10.0**u, ceiling))
    boundary = list(zip(x.tolist(), (10.0**v).tolist()))
    if hit > floor:
        return ((ceiling, ceiling), *boundary)
    return ((ceiling, -ceiling), (ceiling, ceiling), *boundary, (boundary[-1][0], -ceiling))


def place_cells(
    fsc: np.ndarray,
    ssc: np.ndarray,
    dims: tuple[str, str] = ("FSC-A", "SSC-A"),
    *,
    ceiling: float = 262143.0,
    bandwidth: float = 0.02,
    min_prominence: float = 0.01,
    fallback_fraction: float = 0.2,
    boundary: str = "fsc",
) -> Placement:
    """Cells on FSC-A (x) vs SSC-A (y): drop debris (low FSC-A) and the saturated edge.

    ``boundary: fsc``: the density is taken on log10(FSC-A) (values below ``ceiling`` x 1e-4 count
    at that floor), where the narrow cell peaks stand out above debris spread over decades;
    ``bandwidth`` is in decades. See the module docstring for the method.

    ``boundary: oblique`` (the 2-D density): debris that runs diagonally towards the origin
    overlaps small cells in FSC-A alone. The same valley rule is applied to the projections of
    (log10 FSC-A, log10 SSC-A), both floored, on the normals at :data:`OBLIQUE_ANGLES`; the angle
    with the deepest debris valley (valley density / the lower peak's, smallest) wins, ties to the
    smaller angle, and the boundary is that line: a polygon (:func:`_oblique_vertices`). No debris
    valley at any angle: the ``fsc`` boundary's fallback. Extra diagnostics: ``angle_deg``,
    ``offset`` (the line's u cos a + v sin a, decades), ``valley_depth``, and ``fsc_cut`` = the
    line's FSC-A at the median log10(SSC-A) of the events kept.
    """
    if boundary not in CELL_BOUNDARIES:
        raise GatingError(f"cells gate: unknown boundary {boundary!r} (one of {', '.join(CELL_BOUNDARIES)})")
    fsc = np.asarray(fsc, dtype=np.float64)
    ssc = np.asarray(ssc, dtype=np.float64)
    unsaturated = (fsc < ceiling) & (ssc < ceiling)
    floor = np.log10(ceiling) - 4.0
    top = float(np.log10(ceiling))
    # oblique: FSC-A and SSC-A of the same events (both finite); fsc: _finite drops FSC-A = -inf
    usable = unsaturated & np.isfinite(fsc) & np.isfinite(ssc) if boundary == "oblique" else unsaturated
    x = np.log10(np.maximum(_finite(fsc[usable], "cells gate (FSC-A)", 50), 10.0**floor))
    if boundary == "oblique":
        y = np.log10(np.maximum(ssc[usable], 10.0**floor))
        angle, split = _oblique_split(x, y, floor, top, bandwidth, min_prominence)
    else:
        angle, split = 0, _debris_split(smoothed_density(x, bandwidth, floor, top), min_prominence)
    diagnostics: dict[str, Any] = {}
    offset = split.cut   # a tilted line always has a debris valley (_oblique_split)
    if angle == 0 or offset is None:
        main_mode = float(10.0**split.main)
        cut = float(10.0**split.cut) if split.cut is not None else fallback_fraction * main_mode
        vertices = ((cut, -ceiling), (ceiling, -ceiling), (ceiling, ceiling), (cut, ceiling))
        method = "fsc_density_valley"
        diagnostics.update({"fsc_cut": cut, "main_mode_fsc": main_mode})
    else:
        c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        kept = (x * c + y * s) > offset
        cut = float(10.0 ** ((offset - float(np.median(y[kept])) * s) / c))
        vertices = _oblique_vertices(angle, offset, floor, ceiling)
        method = "oblique_density_valley"
        diagnostics["fsc_cut"] = cut
    diagnostics.update({
        "debris_peak": split.cut is not None,
        "saturated_events": int((~unsaturated).sum()),
        "ceiling": ceiling,
    })
    if boundary == "oblique":
        diagnostics.update({"boundary": boundary, "angle_deg": angle, "offset": offset,
                            "valley_depth": split.depth})
    return Placement(PolygonGate((dims[0], dims[1]), vertices), method, diagnostics)


def place_singlets(
    area: np.ndarray,
    height: np.ndarray,
    dims: tuple[str, str] = ("FSC-A", "FSC-H"),
    *,
    width: float = 4.0,
    min_prominence: float = 0.02,
    ceiling: float = 262143.0,
) -> Placement:
    """Singlets on FSC-A (x) vs FSC-H (y): a band of H/A ratio around the singlet diagonal.

    ``width`` is in robust standard deviations of the ratio (upper side). See the module docstring.
    """
    area = np.asarray(area, dtype=np.float64)
    height = np.asarray(height, dtype=np.float64)
    ok = area > 0
    ratio = _finite(height[ok] / area[ok], "singlets gate (FSC-H/FSC-A)", 50)
    # the median, the percentiles and the median above the mode are read off the ratios' order, each
    # selected when asked (about 2.5x less CPU than one sort of 200,000 ratios; the same values)
    order = quantiles.OrderStatistics.of(ratio)
    centre_guess = quantiles.sorted_median(order.middle(0, order.size))
    bandwidth = 0.01 * abs(centre_guess) if centre_guess else 0.01
    low, high = order.percentile([0.5, 99.5])
    density = smoothed_density(ratio, bandwidth, float(low), float(high))
    peaks, _ = density.peaks(min_prominence)
    main = int(peaks[np.argmax(density.values[peaks])])
    mode = float(density.grid[main])
    start = order.count_at_or_below(mode)   # the ratios above the mode, less the mode: its middle one or two
    above = order.middle(start, order.size) - mode if start < order.size else np.empty(0)
    spread = 1.4826 * quantiles.sorted_median(above) if above.size else bandwidth
    lower = mode - width * spread
    upper = mode + width * spread
    doublet_peaks = peaks[peaks < main]
    valley = None
    if doublet_peaks.size:
        valley = float(density.grid[density.valley(int(doublet_peaks[-1]), main)])
        lower = max(lower, valley)
    far = 2.0 * ceiling
    vertices = ((0.0, 0.0), (far, lower * far), (far, upper * far))
    diagnostics = {
        "ratio_mode": mode,
        "ratio_spread": spread,
        "ratio_low": lower,
        "ratio_high": upper,
        "doublet_valley": valley,
    }
    return Placement(PolygonGate((dims[0], dims[1]), vertices), "ratio_band", diagnostics)


def chi2_quantile(p: float, df: int) -> float:
    """The chi-square quantile ``scipy.stats.chi2.ppf(p, df)``, bit for bit (its formula,
    2 gammaincinv(df / 2, p)), without importing ``scipy.stats`` (0.5 s) in every worker."""
    return float(2.0 * gammaincinv(df / 2, p))


def _subsample(n: int, max_events: int, seed: int) -> np.ndarray:
    """Sorted indices of a fixed-seed subsample (all indices when ``n <= max_events``)."""
    if n <= max_events:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_events, replace=False))


def _finite_sample(x: np.ndarray, y: np.ndarray, max_events: int, seed: int) -> tuple[np.ndarray, int]:
    """The ``(events, 2)`` float64 points ``(x, y)`` of the :func:`_subsample` of the events finite
    in both, and how many events are finite in both: the rows that subsample takes of the stacked
    finite points, gathered from ``x`` and ``y`` by index without stacking every event first."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    finite = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    chosen = finite[_subsample(finite.size, max_events, seed)]
    return np.column_stack([x[chosen], y[chosen]]), int(finite.size)


@lru_cache(maxsize=1)
def _threadpools():
    """The process's BLAS/OpenMP thread pools (``threadpoolctl``: numpy's BLAS), inspected once
    (5 ms a time)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def limit_to_one_thread() -> None:
    """BLAS/OpenMP limited to one thread in this process from now on (a worker process's start: one
    worker per core), through the process's controller (:func:`_threadpools`, inspected once:
    ``threadpoolctl.threadpool_limits(1)`` inspects the loaded libraries again, 9 ms of CPU)."""
    _threadpools().limit(limits=1)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def one_thread(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """``fn`` run with the BLAS/OpenMP thread pools limited to one thread (``threadpoolctl``): the
    work of one product is one core's, as in the ``--jobs N`` workers. Small matrix products on
    several threads cost more CPU (threads waking and spinning) than they save, and the results do
    not depend on the thread count."""
    @wraps(fn)
    def single(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _threadpools().limit(limits=1):
            return fn(*args, **kwargs)
    return single


def _fit_mixture(sample: np.ndarray, max_components: int, seed: int) -> MixtureFit | None:
    """The Gaussian mixture (full covariance, k-means start with ``seed``, one thread) of
    1..``max_components`` components with the lowest BIC on ``sample``; None when
    ``max_components`` < 1 (``gates.mixture``)."""
    with _threadpools().limit(limits=1):
        return fit_best_mixture(sample, max_components, seed)


ONE_PEAK_RATIO = 0.2
"""Two mixture components make one density peak when their mixture's density between them never dips
below this share of its lower peak (:func:`tilpheno.gates.mixture.ridgeline_ratio`; 0.2 is Hennig's
(2010) tuning constant): a shallower dip is a shoulder or the edge of one cloud, not the valley
between two populations."""


def _edge_of_main(model, main: int, d2_limit: float) -> np.ndarray:
    """Per component of a fitted mixture: True when it is an edge of component ``main``'s cloud
    (a skewed cloud is fitted as a core and a tail), i.e. both

    * the two make one density peak (ridgeline ratio >= :data:`ONE_PEAK_RATIO`), and
    * its own peak, ``weight / (2 pi sqrt(det cov))``, is at least as dense as ``main`` on its
      gate's boundary (``main``'s peak x exp(-``d2_limit`` / 2), 1 % of it at coverage 0.99): a
      broad, thin component under the cloud (scattered large or dead cells, doublets) is a
      background that such a gate leaves out, not the cloud's edge.

    ``main`` itself is True."""
    log_peak = np.log(model.weights) - 0.5 * np.linalg.slogdet(model.covariances)[1]
    dense = log_peak >= log_peak[main] - 0.5 * d2_limit
    return np.array([j == main or (bool(dense[j]) and ridgeline_ratio(
        model.weights[[main, j]], model.means[[main, j]], model.covariances[[main, j]]) >= ONE_PEAK_RATIO)
        for j in range(model.n_components)])


def _merged_cluster(model, main: int, d2_limit: float, usable: np.ndarray | None = None):
    """Component ``main`` of a fitted mixture merged with every (``usable``) component that is the
    same population: its mean lies inside ``main``'s ellipse (squared Mahalanobis distance <=
    ``d2_limit``), or it is the edge of ``main``'s cloud, its mean beyond the ellipse
    (:func:`_edge_of_main`); by moment matching: (inside mask over components, merged mean, merged
    covariance), in the sample's units."""
    inv = np.linalg.inv(model.covariances[main])
    offsets = model.means - model.means[main]
    inside = (np.einsum("ij,jk,ik->i", offsets, inv, offsets) <= d2_limit) | _edge_of_main(model, main, d2_limit)
    if usable is not None:
        inside &= usable
    weights = model.weights[inside] / model.weights[inside].sum()
    mean = weights @ model.means[inside]
    centred = model.means[inside] - mean
    cov = np.einsum("i,ijk->jk", weights, model.covariances[inside]) + np.einsum("i,ij,ik->jk", weights, centred, centred)
    return inside, mean, cov


def place_lymphocytes(
    fsc: np.ndarray,
    ssc: np.ndarray,
    dims: tuple[str, str] = ("FSC-A", "SSC-A"),
    *,
    max_components: int = 3,
    coverage: float = 0.99,
    max_events: int = 10000,
    seed: int = 0,
    ceiling: float = 262143.0,
) -> Placement:
    """Lymphocytes on FSC-A/SSC-A of live singlets: ellipse of the main mixture component."""
    sample, finite = _finite_sample(fsc, ssc, max_events, seed)
    if finite < 50:
        raise TooFewEventsError("lymphocyte gate", count=int(finite), needed=50)
    sample = sample / ceiling
    model = _fit_mixture(sample, max_components, seed)
    if model is None:
        raise GatingError(f"lymphocyte gate: max_components = {max_components}; needs at least 1")
    main = int(np.argmax(model.weights))
    d2_limit = chi2_quantile(coverage, 2)
    inside, mean, cov = _merged_cluster(model, main, d2_limit)
    gate = EllipsoidGate(tuple(dims), tuple(mean * ceiling), tuple(map(tuple, cov * ceiling**2)), d2_limit)
    diagnostics = {
        "n_components": int(model.n_components),
        "merged_components": int(inside.sum()),
        "lymph_weight": float(model.weights[inside].sum()),
        "coverage": coverage,
        "events_used": int(len(sample)),
    }
    return Placement(gate, "gmm_main_component", diagnostics)


CLUSTER_SIDES = ("high", "low", "any")
"""Per dimension, where the wanted cluster of a ``cluster`` gate lies (see :func:`place_cluster`)."""


def place_cluster(
    x: np.ndarray,
    y: np.ndarray,
    dims: tuple[str, str],
    *,
    x_side: str = "high",
    y_side: str = "low",
    max_components: int = 4,
    coverage: float = 0.99,
    max_events: int = 10000,
    seed: int = 0,
    min_weight: float = 0.01,
) -> Placement:
    """An automatic 2-D gate on two markers: the ellipse of one Gaussian-mixture cluster.

    ``x``, ``y``: the parent's events on the transformed scale of the two dimensions (logicle
    0..1 by default; the gate is stored in those units). A Gaussian mixture (``gates.mixture``, full
    covariance, 1..``max_components`` components chosen by BIC, k-means initialisation with the
    fixed ``seed``, single-threaded) is fitted to at most ``max_events`` events (a fixed-seed
    subsample). Components lighter than ``min_weight`` are ignored. The wanted cluster is the
    component whose mean is furthest to the stated side: score = sum over the two dimensions of
    +mean (``high``), -mean (``low``) or 0 (``any``), each mean in units of the data's robust
    spread (IQR / 1.349) of that dimension; components whose means lie inside its ellipse, or that
    are the edge of its cloud (``_edge_of_main``), are merged with it (moment matching). Gate: the
    ellipse of the merged moments at the chi-square ``coverage`` quantile (2 d.f.); inside = Mahalanobis distance squared <= that quantile.
    E.g. T cells on CD3 (``x_side: high``) vs CD19 or a myeloid marker (``y_side: low``).
    Flag ``cluster_ambiguous`` (warning) when the runner-up's score is within one robust spread
    of the winner's: the stated sides do not single out one cluster.
    """
    for side in (x_side, y_side):
        if side not in CLUSTER_SIDES:
            raise GatingError(f"cluster gate on {list(dims)}: side must be one of {CLUSTER_SIDES}, got {side!r}")
    sample, finite = _finite_sample(x, y, max_events, seed)
    if finite < 50:
        raise TooFewEventsError(f"cluster gate on {list(dims)}", count=int(finite), needed=50)
    model = _fit_mixture(sample, min(max_components, len(sample) // 10), seed)
    assert model is not None   # k = 1 always runs (>= 50 events)
    q75, q25 = np.percentile(sample, [75, 25], axis=0)
    spread = np.maximum((q75 - q25) / 1.349, 1e-6)
    sign = np.array([{"high": 1.0, "low": -1.0, "any": 0.0}[s] for s in (x_side, y_side)])
    scores = (model.means / spread) @ sign
    usable = model.weights >= min_weight
    scores = np.where(usable, scores, -np.inf)
    order = np.argsort(-scores, kind="stable")
    main = int(order[0])
    d2_limit = chi2_quantile(coverage, 2)
    inside, mean, cov = _merged_cluster(model, main, d2_limit, usable)
    gate = EllipsoidGate(tuple(dims), tuple(mean), tuple(map(tuple, cov)), d2_limit)
    runner_up = [int(i) for i in order[1:] if np.isfinite(scores[i]) and not inside[i]]
    margin = float(scores[main] - scores[runner_up[0]]) if runner_up else float("inf")
    diagnostics = {
        "n_components": int(model.n_components),
        "merged_components": int(inside.sum()),
        "cluster_weight": float(model.weights[inside].sum()),
        "cluster_mean": tuple(float(m) for m in mean),
        "score_margin": margin,
        "sides": (x_side, y_side),
        "coverage": coverage,
        "events_used": int(len(sample)),
    }
    flags: tuple[Flag, ...] = ()
    if margin < 1.0 and np.any(sign != 0):
        flags = (Flag("cluster_ambiguous", "warning",
                      f"{dims[0]}/{dims[1]}: the cluster furthest {x_side} on {dims[0]} and {y_side} on {dims[1]} "
                      f"leads the next one by {margin:.2f} robust spreads (< 1); look at the {dims[0]} vs {dims[1]} plot"),)
    return Placement(gate, "gmm_cluster", diagnostics, flags)


# --------------------------------------------------------------------------------------------
# 1-D thresholds: density valley (live/dead, fallback) and FMO percentile
# --------------------------------------------------------------------------------------------


def valley_threshold(
    values: np.ndarray,
    *,
    bandwidth: float = 0.02,
    min_prominence: float = 0.01,
    min_separation: float = 0.25,
    fallback_sd: float = 4.0,
    zero: float | None = None,
) -> tuple[float, dict[str, Any], bool]:
    """Cut between a negative and a positive population: (cut, diagnostics, found_both_peaks).

    The two most prominent peaks, in location order, are the negative and the positive one; the
    cut is the density minimum between them. When they lie closer than ``min_separation``
    (transformed units; 0.25 is ~1.1 decades on the default logicle) the upper one is a shoulder
    of the negatives (e.g. autofluorescent large cells), and the positive peak is the most
    prominent one at least ``min_separation`` above the negative peak.

    Without such a pair all peaks belong to one population. When ``zero`` (the transformed value
    of 0, the least signal a cell can have) is given and the lowest peak lies at least
    ``min_separation`` above it, it is held as the positive one, undetermined (``undetermined``
    in the diagnostics: negative cells lifted by autofluorescence, nonspecific binding or
    spillover sit there too; ``negative_side_cut`` is the negative call's cut):
    ``cut = lowest peak - fallback_sd x sigma``, sigma the RMS
    deviation of the events above the highest peak. Otherwise it is the negative one (nothing
    stained sits at zero):
    ``cut = highest peak + fallback_sd x sigma``, sigma the RMS deviation of the events below
    the main peak (lower halves and upper halves are free of shoulders and of the few events of
    the other population). :func:`place_valley` with an unstained control decides this against
    the control instead of ``zero``.
    """
    x = _finite(values, "density threshold", 20)
    return _valley_cut(x, smoothed_density(x, bandwidth, *_padded_range(x, bandwidth)), bandwidth=bandwidth,
                       min_prominence=min_prominence, min_separation=min_separation, fallback_sd=fallback_sd, zero=zero)


def _valley_cut(x: np.ndarray, density: Density, *, bandwidth: float, min_prominence: float, min_separation: float,
                fallback_sd: float, zero: float | None,
                unstained: np.ndarray | None = None, one_population: str = "auto", transform: Any = None,
                control_percentile: float = 99.5) -> tuple[float, dict[str, Any], bool]:
    """:func:`valley_threshold` of the finite events ``x`` and their ``density`` at ``bandwidth``;
    ``unstained``: an unstained control's events; ``one_population``: ``negative`` or
    ``positive`` takes one population as that side wherever it lies; one population the control
    calls negative is cut at the control's carry-over (:func:`_control_carry`; see :func:`place_valley`)."""
    peaks, prominences = density.peaks(min_prominence)
    by_prominence = peaks[np.argsort(-prominences, kind="stable")]
    negative = int(by_prominence[:2].min())
    far = [int(p) for p in by_prominence if density.grid[p] - density.grid[negative] >= min_separation]
    if far:
        cut = float(density.grid[density.valley(negative, far[0])])
        return cut, {"negative_peak": float(density.grid[negative]), "positive_peak": float(density.grid[far[0]])}, True
    control: dict[str, Any] = {}
    if unstained is not None:
        u = np.asarray(unstained, dtype=np.float64)
        u = u[np.isfinite(u)]
        if u.size >= 20:   # where unstained cells sit, measured: it replaces the transformed zero
            zero = float(np.median(u))
            control = {"unstained_median": zero, "unstained_events": int(u.size)}
            # peaks the control places apart: one near the unstained cells, one clearly above them
            near = [int(p) for p in by_prominence if density.grid[p] - zero < min_separation]
            above = [int(p) for p in by_prominence if density.grid[p] - zero >= min_separation]
            if near and above:
                cut = float(density.grid[density.valley(near[0], above[0])])
                return cut, {"negative_peak": float(density.grid[near[0]]),
                             "positive_peak": float(density.grid[above[0]]), **control}, True
    low, high = float(density.grid[peaks.min()]), float(density.grid[peaks.max()])
    above_high = x[x >= high] - high
    up_sigma = float(np.sqrt(np.mean(above_high**2))) if above_high.size else bandwidth
    main = float(density.grid[by_prominence[0]])
    below = x[x <= main] - main
    sigma = float(np.sqrt(np.mean(below**2))) if below.size else bandwidth
    positive_cut, negative_cut = low - fallback_sd * up_sigma, high + fallback_sd * sigma
    above_zero = zero is not None and low - zero >= min_separation
    if one_population == "positive" or (one_population == "auto" and above_zero):
        # above the unstained control: positive; above the scale's zero only: undetermined (negative
        # cells sit there too, lifted by autofluorescence, nonspecific binding or spillover), held
        # as positive; stated by the strategy: decided. The negative call's cut beside an undetermined
        # call and beside a stated one that the zero (or the control) would have called negative.
        undetermined = {"undetermined": True} if one_population == "auto" and not control else {}
        other = {"negative_side_cut": negative_cut} if undetermined or not above_zero else {}
        held: dict[str, Any] = {"positive_peak": low, "positive_sigma": up_sigma, "zero": zero}
        return positive_cut, {**held, **other, **undetermined, **control}, False
    # taken as negative below the distance from zero, or by the strategy: the positive call's cut is the other side
    positive_side: dict[str, Any] = {"zero": zero, "positive_side_cut": positive_cut} if above_zero else {}
    called: dict[str, Any] = {"negative_peak": main, "highest_negative_peak": high, "negative_sigma": sigma,
                              **positive_side, **control}
    if control and one_population == "auto" and int(control["unstained_events"]) >= MIN_CONTROL_EVENTS:
        # the control called it negative: its percentile carried to the population, not SDs above its own peak
        carried = _control_carry(u, x, transform, percentile=control_percentile, bandwidth=bandwidth,
                                 min_prominence=min_prominence)
        return float(carried["carried_threshold"]), {**called, **carried, "single_population_cut": negative_cut}, False
    return negative_cut, called, False


MIN_CONTROL_EVENTS = 200
"""Fewest unstained-control events (in the gate's parent's nearest ancestor not defined by stains)
whose percentile a ``valley`` gate carries to one population the control calls negative
(:func:`_control_carry`); with fewer, the population's own SDs set the cut."""


def _control_carry(control: np.ndarray, x: np.ndarray, transform: Any, *, percentile: float, bandwidth: float,
                   min_prominence: float) -> dict[str, Any]:
    """The ``unstained_carry`` rule's cut of one population ``x`` that the unstained ``control`` calls
    negative, as diagnostics (``winner: unstained_carry``, ``carried_threshold`` the cut before any
    clamp). The control is the FMO of :func:`place_fmo_anchored`'s ``relative`` rule: its
    ``percentile`` carried to the population's peak nearest the control's, in compensated linear
    units with ``transform`` (the stained cells' background, which the control lacks, added to every
    control event: the shift of the peaks and the lower-side spread, ``control_carry: relative``),
    or the control's percentile itself when the population lies where the control does (within the
    FMO tolerances, ``control_carry: percentile``). A tail of real positives above the population's
    background is kept, where the population's own SDs (``single_population_cut``) reach past it.
    ``carried_high``: the same carry with the spread read on the upper side, which takes the whole
    upper flank for background (spreading from the other stains, absent from the control, is
    there): the no_second_peak flag's size."""
    fit = place_fmo_anchored(control, x, "control", rule="relative", percentile=percentile, bandwidth=bandwidth,
                             min_prominence=min_prominence, transform=transform, min_events=MIN_CONTROL_EVENTS)
    d = fit.diagnostics
    carried = d["winner"] == "fmo_relative"
    return {"winner": "unstained_carry", "control_carry": "relative" if carried else "percentile",
            "control_percentile": percentile, "control_threshold": d["fmo_threshold"], "control_mode": d["fmo_mode"],
            "stained_mode": d["stained_mode"], "shift": d["shift"], "width_ratio": d["width_ratio"],
            "carried_threshold": float(d["relative_threshold"] if carried else d["fmo_threshold"]),
            "carried_high": float(d["relative_high"] if carried else d["fmo_threshold"])}


def control_floor(control: np.ndarray, x: np.ndarray, transform: Any, *, percentile: float, bandwidth: float,
                  min_prominence: float) -> float:
    """The ``lower`` rule's floor under its SD cut (transformed units): the unstained ``control``'s ``percentile``
    (the run's FMO percentile) carried to the stained events ``x``'s negative peak as :func:`_control_carry` carries
    it (``rule: relative``: additive in linear units with ``transform``), i.e. how far the cells' own
    autofluorescence reaches without the dye: on a live/dead gate, every live cell type, the large non-lymphoid
    cells too, whose 4x brighter autofluorescence makes a shoulder above the live lymphocytes' peak that k of the
    peak's SDs cut into. NaN with fewer than :data:`MIN_CONTROL_EVENTS` finite control events."""
    c = np.asarray(control, dtype=np.float64)
    if np.count_nonzero(np.isfinite(c)) < MIN_CONTROL_EVENTS:
        return float("nan")
    return float(_control_carry(c[np.isfinite(c)], x, transform, percentile=percentile, bandwidth=bandwidth,
                                min_prominence=min_prominence)["carried_threshold"])


def _valley_decision(x: np.ndarray, density: Density, *, bandwidth: float, min_prominence: float,
                     min_separation: float, fallback_sd: float, zero: float | None, rule: str, k_sd: float,
                     sd_side: str, unstained: np.ndarray | None,
                     one_population: str = "auto", transform: Any = None,
                     control_percentile: float = 99.5,
                     floor_control: np.ndarray | None = None) -> tuple[float, dict[str, Any], bool]:
    """:func:`place_valley`'s cut of the finite events ``x`` and their ``density`` (its rules, the
    clamp to the data's range): ``(cut, diagnostics, two populations)``. ``floor_control``: the
    unstained control's events that raise a ``lower`` rule's SD cut (:func:`control_floor`)."""
    cut, found, two_peaks = _valley_cut(x, density, bandwidth=bandwidth, min_prominence=min_prominence,
                                        min_separation=min_separation, fallback_sd=fallback_sd, zero=zero,
                                        unstained=unstained, one_population=one_population, transform=transform,
                                        control_percentile=control_percentile)
    diagnostics: dict[str, Any] = {"threshold": cut, "rule": rule, "valley_threshold": cut, "winner": "density_valley",
                                   **found}
    if rule in ("positive_sd", "higher") and "positive_peak" in diagnostics:
        mode = float(diagnostics["positive_peak"])
        above = x[x >= mode] - mode
        width = float(np.sqrt(np.mean(above**2))) if above.size >= 10 else bandwidth
        sd_cut = mode - k_sd * width
        diagnostics.update(sd_threshold=sd_cut, positive_width=width, k_sd=k_sd)
        if rule == "positive_sd" or sd_cut > cut:
            cut = sd_cut
            diagnostics.update(threshold=cut, winner="positive_sd")
    elif rule in ("negative_sd", "lower"):
        mode = float(density.grid[int(np.argmax(density.values))])
        width = _lower_half_width(x, mode, np.inf) if sd_side == "lower" else _lower_half_width(-x, -mode, np.inf)
        sd_cut = mode + k_sd * (width if np.isfinite(width) else bandwidth)
        diagnostics.update(sd_threshold=sd_cut, negative_mode=mode, negative_width=width, k_sd=k_sd, sd_side=sd_side)
        if rule == "lower" and floor_control is not None:
            floor = control_floor(floor_control, x, transform, percentile=control_percentile, bandwidth=bandwidth,
                                  min_prominence=min_prominence)
            diagnostics.update(control_floor=floor)
            if sd_cut < floor < cut:   # at or above the valley the control holds dye-bright cells: not unstained on it
                diagnostics.update(sd_raised_from=sd_cut, sd_threshold=floor)
                sd_cut = floor
        if rule == "negative_sd" or sd_cut < cut:
            cut = sd_cut
            diagnostics.update(threshold=cut, winner="negative_sd")
            two_peaks = True   # the rule does not need a second peak, nor a lone population's side: its cut is
            for held in ("undetermined", "negative_side_cut"):   # measured from the main peak whatever that side
                diagnostics.pop(held, None)                       # (the strategy's rule states it)
    low_end, high_end = float(x.min()), float(x.max())
    if not low_end <= cut <= high_end:
        diagnostics.update(unclamped_threshold=cut)
        cut = min(max(cut, low_end), high_end)
        diagnostics.update(threshold=cut, clamped=True)
    return cut, diagnostics, two_peaks


def place_valley(
    values: np.ndarray,
    dim: str,
    *,
    keep: str = "low",
    bandwidth: float = 0.02,
    min_prominence: float = 0.01,
    min_separation: float = 0.25,
    fallback_sd: float = 4.0,
    zero: float | None = None,
    rule: str = "valley",
    k_sd: float = 4.0,
    sd_side: str = "lower",
    unstained: np.ndarray | Callable[[], np.ndarray | None] | None = None,
    one_population: str = "auto",
    transform: Any = None,
    control_percentile: float = 99.5,
) -> Placement:
    """1-D gate at the density valley; ``keep='low'`` -> ``x < cut``, ``'high'`` -> ``x > cut``.

    ``zero``: the transformed value of 0 (see ``valley_threshold``). ``unstained``: an unstained
    control's events on the same dimension and transform (in the parent's nearest ancestor not
    defined by stains; at least 20 finite): when the two most prominent peaks are no pair, the
    one-population decision is made against the control, not against ``zero``: its median
    (``unstained_median``) is where unstained cells sit; a peak less than ``min_separation`` above
    it is negative, one at least that far above it positive. Peaks of both kinds: a negative and a
    positive population after all (a small negative peak below a dominant positive one, e.g. the
    CD127-low cells of CD4 T cells), cut at the density valley between the most prominent of each
    kind; else one population, negative or positive as its peaks are (cuts as in
    ``valley_threshold``), except that one population the control calls negative (``one_population:
    auto``, at least :data:`MIN_CONTROL_EVENTS` control events) is cut by the ``unstained_carry``
    rule (method and ``winner``; :func:`_control_carry`): the control's ``control_percentile`` (the
    run's FMO percentile) carried to the population with ``transform`` (the dimension's), not
    ``fallback_sd`` SDs above its own peak, which a population lifted as a whole by its background
    puts past its tail of positives and often past its largest event (``single_population_cut``
    records that cut). ``unstained`` may be a function giving those events (or None): it is
    called only when the cut without them is one population (``single_population_sd``), and that
    cut is then decided again with them on the same density: the pipeline's order, which computes
    the control's events only for such a gate. ``rule`` (stated by the
    strategy): ``valley`` = the density valley; ``negative_sd`` = ``k_sd`` robust SDs above the
    negative (highest) peak, the SD being the lower-half RMS of the events around it (a
    live/dead cut that also catches dead cells dim in the dye); ``lower`` = the lower of the two
    (the valley, but never more than ``k_sd`` SDs above the negative peak), the SD cut raised, when
    ``unstained`` gives at least :data:`MIN_CONTROL_EVENTS` events, to the control's
    ``control_percentile`` carried to the negative peak where that lies higher and below the valley
    (:func:`control_floor`; ``control_floor`` recorded, ``sd_raised_from`` the SD cut it replaced in
    ``sd_threshold``: the control shows how far live cells' own autofluorescence reaches, large
    non-lymphoid cells included, which k SDs of the lymphocytes' peak cut into; a floor at or above the
    valley is ignored: such a control holds dye-bright cells, e.g. a stained tube named as the control;
    for this rule ``unstained`` is read whatever the peaks); ``positive_sd`` =
    ``k_sd`` robust SDs below the positive peak, the SD being the upper-half RMS of the events
    above it (free of the dim smear between the populations); ``higher`` = the higher of the
    valley and that cut: the positive population as a cluster, so that a long, flat valley of dim
    events (doublets, dying cells, spillover) stays out of it, as an expert draws the gate at the
    foot of the positive peak. Without a positive peak the ``positive_sd``/``higher`` rules keep
    the valley result. Both candidates are recorded (``valley_threshold``, ``sd_threshold``)
    with the ``winner``. A ``negative_sd`` cut (the rule's, or the lower one's when it wins) is never
    undetermined: it is measured from the main peak whatever side a lone population would be called,
    so the rule states the side (no ``no_second_peak`` flag, no ``undetermined``).
    ``sd_side`` (``negative_sd``/``lower``): the half of the main peak whose
    RMS is its robust SD, the half free of the other population: ``lower`` (default; negatives
    with positives above them) or ``upper`` (a main population with a low tail, e.g. CD127 of
    CD4 T cells, whose Tregs are CD127 low: ``keep: low`` then keeps the tail and the main
    peak's lower side up to ``k_sd`` SDs above its mode). ``one_population``: ``auto`` decides a
    lone population's side as above: against the unstained control; without one a population
    ``min_separation`` or more above the transformed zero is undetermined (diagnostic
    ``undetermined``, the flag says so and gives the negative call's cut, ``negative_side_cut``),
    held as positive so that the gates below it are placed; ``negative`` always takes it as
    negative (a viability dye: amine-reactive dyes stain live cells dimly, so the live cells' one
    peak may lie well above zero and above an unstained control; the dye-bright dead cells are the
    second population; ``positive_side_cut`` records the positive call's cut when ``auto`` would
    not have called it negative); ``positive`` always as positive (a lab's convention for a marker
    every parent cell carries, e.g. CD3 of a T-cell product without controls;
    ``negative_side_cut`` when the population lies less than ``min_separation`` above zero or the
    control); a control's split into a negative and a positive peak stays. The cut never leaves the data's range (it is clamped to the lowest and
    highest value; ``clamped`` records it, ``unclamped_threshold`` the cut the rule gave; a gate keeping the side
    of a cut clamped to the edge event keeps all but that event, unlike :func:`clamp_to_parent`'s: see
    benchmarks/README.md, stop 53).
    """
    if keep not in ("low", "high"):
        raise GatingError(f"valley gate on {dim!r}: keep must be 'low' or 'high', got {keep!r}")
    if rule not in VALLEY_RULES:
        raise GatingError(f"valley gate on {dim!r}: rule must be one of {VALLEY_RULES}, got {rule!r}")
    if sd_side not in ("lower", "upper"):
        raise GatingError(f"valley gate on {dim!r}: sd_side must be 'lower' or 'upper', got {sd_side!r}")
    if one_population not in ONE_POPULATION:
        raise GatingError(f"valley gate on {dim!r}: one_population must be one of {ONE_POPULATION}, got {one_population!r}")
    # the events and their density once, for the valley and for the negative_sd/lower rules
    x = _finite(values, "density threshold", 20)
    density = smoothed_density(x, bandwidth, *_padded_range(x, bandwidth))
    floor_control = (unstained() if callable(unstained) else unstained) if rule == "lower" else None
    decide = partial(_valley_decision, x, density, bandwidth=bandwidth, min_prominence=min_prominence,
                     min_separation=min_separation, fallback_sd=fallback_sd, zero=zero, rule=rule, k_sd=k_sd,
                     sd_side=sd_side, one_population=one_population, transform=transform,
                     control_percentile=control_percentile, floor_control=floor_control)
    if callable(unstained):
        cut, diagnostics, two_peaks = decide(unstained=None)
        control = unstained() if not two_peaks else None
        if control is not None:
            cut, diagnostics, two_peaks = decide(unstained=control)
    else:
        cut, diagnostics, two_peaks = decide(unstained=unstained)
    flags: tuple[Flag, ...] = ()
    method = diagnostics["winner"]
    if not two_peaks:
        method = "unstained_carry" if method == "unstained_carry" else "single_population_sd"
        side = "negative" if "negative_peak" in diagnostics else "positive"
        other = "positive" if side == "negative" else "negative"
        flags = (
            Flag(
                "no_second_peak",
                "warning",
                f"{dim}: no {other} density peak; "
                + (_undetermined(dim, diagnostics) if diagnostics.get("undetermined") else
                   f"all peaks taken as {side}" + _against_control(diagnostics, side, min_separation)
                   + _by_strategy(diagnostics, one_population, min_separation))
                + (_carried(diagnostics, fallback_sd, cut) if method == "unstained_carry" else ", cut "
                   f"{k_sd if diagnostics['winner'] == 'positive_sd' else fallback_sd} SD "
                   f"{'above' if side == 'negative' else 'below'} them at {cut:.4g}")
                + (" (clamped to the data's range)" if diagnostics.get("clamped") else "")
                + f"; look at the {dim} histogram of the parent for a {other} population"
                + (f"; if there is one, an FMO control for {dim} sets the cut (gate method: fmo)" if keep == "high" else ""),
            ),
        )
    gate = RangeGate(dim, None, cut) if keep == "low" else RangeGate(dim, float(np.nextafter(cut, np.inf)), None)
    return Placement(gate, method, diagnostics, flags)


def _carried(diagnostics: Mapping[str, Any], fallback_sd: float, cut: float) -> str:
    """How the ``unstained_carry`` rule cut one population the unstained control called negative
    (:func:`_control_carry`'s diagnostics), what the control cannot show, and the cut the
    population's own SDs would have given."""
    how = (f"carried to their peak at {float(diagnostics['stained_mode']):.3f} (the control's at "
           f"{float(diagnostics['control_mode']):.3f}: the stained cells' background lifts the whole population)"
           if diagnostics["control_carry"] == "relative" else "(the population lies where the control does)")
    return (f", cut at the unstained control's {float(diagnostics['control_percentile']):g}th percentile "
            f"{float(diagnostics['control_threshold']):.4g} {how} at {cut:.4g} (rule unstained_carry; {fallback_sd:g} SD above "
            f"the peak would cut at {float(diagnostics['single_population_cut']):.4g}); the control lacks the other stains' "
            f"spreading: taking the population's whole upper flank for background would cut at "
            f"{float(diagnostics['carried_high']):.4g}")


def _undetermined(dim: str, diagnostics: Mapping[str, Any]) -> str:
    """Why one population lying above the scale's zero, with no unstained control, is neither
    positive nor negative (``undetermined`` in ``diagnostics``), the side it is held on, the other
    side's cut, and what decides it."""
    return (f"one population and no FMO or unstained control of {dim}: positive or negative undetermined (its "
            f"lowest peak lies {float(diagnostics['positive_peak']) - float(diagnostics['zero']):.3f} above the scale's "
            "zero, where autofluorescence, nonspecific binding or spillover put negative cells too; the strategy's "
            "one_population: positive or negative decides it); held as positive (as negative its cut would be "
            f"{diagnostics['negative_side_cut']:.4g})")


def _by_strategy(diagnostics: Mapping[str, Any], one_population: str, min_separation: float) -> str:
    """The side the strategy's ``one_population`` stated for one population and, when the population's
    distance from zero (or the unstained control) says the other side, that side's cut
    (``positive_side_cut``/``negative_side_cut`` in ``diagnostics``); '' when no side was stated."""
    if one_population == "negative" and "positive_side_cut" in diagnostics:
        return (f" by the strategy (one_population: negative), although its lowest peak lies {min_separation:g} or "
                f"more above {'the unstained control' if 'unstained_median' in diagnostics else 'the scale'}'s zero: "
                f"as positive its cut would be {diagnostics['positive_side_cut']:.4g}")
    if one_population == "positive" and "negative_side_cut" in diagnostics:
        return (f" by the strategy (one_population: positive), although its lowest peak lies less than {min_separation:g} "
                f"above {'the unstained control' if 'unstained_median' in diagnostics else 'the scale'}'s zero: "
                f"as negative its cut would be {diagnostics['negative_side_cut']:.4g}")
    return " by the strategy (one_population: positive)" if one_population == "positive" else ""


def _against_control(diagnostics: Mapping[str, Any], side: str, min_separation: float) -> str:
    """Why one population was called ``side`` against the unstained control (``unstained_median``
    in ``diagnostics``; '' without one): its peak nearest the other side (the highest negative
    peak, the lowest positive one) against the control's median and the margin ``min_separation``
    (transformed units)."""
    if "unstained_median" not in diagnostics:
        return ""
    median = float(diagnostics["unstained_median"])
    which, peak = (("highest", diagnostics["highest_negative_peak"]) if side == "negative"
                   else ("lowest", diagnostics["positive_peak"]))
    return (f" (the {which} peak, at {float(peak):.3f}, lies {'less than' if side == 'negative' else 'at least'} "
            f"{min_separation:g} above the unstained control's median {median:.3f})")


def fmo_threshold(fmo_values: np.ndarray, percentile: float = 99.5) -> float:
    """The ``percentile`` of the FMO events (numpy linear interpolation); positive = value > it."""
    if not 0 < percentile < 100:
        raise GatingError(f"FMO percentile must be in (0, 100), got {percentile}")
    x = _finite(fmo_values, "FMO threshold", 1)
    return float(quantiles.percentile(x, percentile))


def place_fmo_threshold(
    fmo_values: np.ndarray,
    dim: str,
    *,
    percentile: float = 99.5,
    source_file: str = "",
    min_events: int = 200,
    control_name: str = "FMO",
) -> Placement:
    """Positive gate ``x > threshold`` with the threshold from the FMO tube's parent population (``control_name``: the
    control's name in the flag, ``unstained control`` where that stands in for the FMO)."""
    threshold = fmo_threshold(fmo_values, percentile)
    n = int(np.isfinite(np.asarray(fmo_values, dtype=np.float64)).sum())
    flags: tuple[Flag, ...] = ()
    if n < min_events:
        flags = (
            Flag(
                "low_events",
                "warning",
                f"{dim}: {control_name} {source_file or '(unnamed)'} has only {n} events in the parent population "
                f"(< {min_events}); the {percentile}th percentile is imprecise",
            ),
        )
    gate = RangeGate(dim, float(np.nextafter(threshold, np.inf)), None)
    diagnostics = {"threshold": threshold, "percentile": percentile, "fmo_events": n, "source_file": source_file}
    return Placement(gate, "fmo_percentile", diagnostics, flags)


# --------------------------------------------------------------------------------------------
# FMO as the anchor, the stained tube as evidence
# --------------------------------------------------------------------------------------------

FMO_RULES = ("anchored", "relative", "percentile")
"""``fmo`` gate rules (strategy param ``rule``); see :func:`place_fmo_anchored`."""


@dataclass(frozen=True)
class NegativePeak:
    """A negative population's peak (mode, transformed units) and robust width (lower-half RMS)."""

    mode: float
    width: float
    found: bool = True


def _lower_half_width(x: np.ndarray, mode: float, reach: float) -> float:
    """RMS distance below ``mode`` of the events within ``reach`` below it (the lower half of a
    negative peak holds no positive cells and no nonspecific-binding tail)."""
    kept = x <= mode
    low = mode - reach
    if low != -np.inf:   # x >= -inf holds for every x the first comparison keeps (NaN fails it)
        kept &= x >= low
    below = x[kept] - mode
    np.multiply(below, below, out=below)   # below**2, in place
    return float(np.sqrt(np.mean(below))) if below.size >= 10 else float("nan")


UPPER_LEVEL = 0.7
"""Density level (fraction of the negative peak's height) at which the upper-side width is read:
high enough that positives next to the negatives rarely reach it, low enough to see a skewed tail."""


def _upper_width(density: Density, mode: float, level: float = UPPER_LEVEL) -> float:
    """Where (grid value) the density first falls below ``level`` x its height at ``mode``, going up."""
    i = int(np.searchsorted(density.grid, mode))
    i = min(i, density.values.size - 1)
    limit = level * density.values[i]
    above = np.nonzero(density.values[i:] < limit)[0]
    return float(density.grid[i + above[0]]) if above.size else float(density.grid[-1])


SIGNAL_QUANTILES = ndtri((np.arange(32) + 0.5) / 32)
"""The 32 standard normal quantiles (k + 0.5) / 32 that stand for a cell's nonspecific signal."""


def additive_threshold(fmo_linear: np.ndarray, shift: float, spread: float, percentile: float) -> float:
    """The ``percentile`` of FMO events plus nonspecific signal, in compensated linear units.

    Model: a stained-tube negative = an FMO negative + ``shift`` + spread x Z, Z standard normal,
    independent (nonspecific binding and spreading add to every cell's signal). Z takes the
    :data:`SIGNAL_QUANTILES` fixed normal quantiles (k + 0.5) / 32, every FMO event is combined with
    each (deterministic), so the FMO's own tail (e.g. another colour's spillover) is carried as it is,
    not scaled (:func:`upper_offset_threshold`).
    """
    return carried_threshold(upper_events(fmo_linear, percentile), shift, spread, percentile)


def sorted_additive_threshold(sorted_linear: np.ndarray, shift: float, spread: float, percentile: float) -> float:
    """:func:`additive_threshold` of FMO events already sorted (float64, linear units): several
    thresholds carried from one FMO sort its events once."""
    return carried_threshold(_all_sorted(sorted_linear), shift, spread, percentile)


@dataclass(frozen=True)
class UpperEvents:
    """What carrying a percentile over (:func:`upper_offset_threshold`) reads of a parent's events
    (float64, linear units): ``events``, all of them in any order; ``top``, its largest events
    sorted ascending, all of them or (:func:`upper_events`) more than the event + offset pairs the
    threshold leaves above it; ``lowest``, the smallest event."""

    events: np.ndarray
    top: np.ndarray
    lowest: float


def _pairs_above(percentile: float, size: int, n_offsets: int) -> float:
    """How many of ``size`` events x ``n_offsets`` offsets lie above their ``percentile``."""
    return (100.0 - percentile) / 100.0 * size * n_offsets


def _all_sorted(sorted_linear: np.ndarray) -> UpperEvents:
    return UpperEvents(sorted_linear, sorted_linear, float(sorted_linear[0]))


def upper_events(linear: np.ndarray, percentile: float, n_offsets: int = SIGNAL_QUANTILES.size) -> UpperEvents:
    """The events (linear units) that carrying their ``percentile`` over with ``n_offsets`` offsets
    reads: the largest floor(share) + 1 of them sorted, the share being the event + offset pairs
    above the threshold (:func:`_pairs_above`; 16 % of the events at the 99.5th percentile and 32
    offsets), selected by a partition; all of them sorted when that is every event. A bisection step
    of :func:`upper_offset_threshold` then makes the comparison it makes with all events sorted: an
    offset whose shifted value lies below the kept events adds at least their number, more than the
    share, whatever the other events are."""
    x = np.asarray(linear, dtype=np.float64)
    keep = min(x.size, math.floor(_pairs_above(percentile, x.size, n_offsets)) + 1)
    if keep >= x.size:
        return _all_sorted(np.sort(x))
    return UpperEvents(x, np.sort(np.partition(x, x.size - keep)[x.size - keep:]), float(x.min()))


def carried_threshold(upper: UpperEvents, shift: float, spread: float, percentile: float) -> float:
    """:func:`additive_threshold` of ``upper``'s events (:func:`upper_events`)."""
    if spread <= 0:
        return float(quantiles.percentile(upper.events, percentile) + shift)
    return upper_offset_threshold(upper, shift + spread * SIGNAL_QUANTILES, percentile)


def upper_offset_threshold(upper: UpperEvents, offsets: np.ndarray, percentile: float) -> float:
    """The value above which (100 - ``percentile``) % of {every event + every offset} lie: the
    ``percentile`` of the FMO events (linear units) plus a nonspecific signal that takes each of
    ``offsets`` with equal weight. Found by bisection to 1e-9 of the data's range (the
    upper-quantile definition; it differs from numpy's interpolated percentile by less than one
    order statistic), on ``upper``'s ``top`` (:func:`upper_events`): the same value, bit for bit, as
    on all of the events sorted (:func:`_all_sorted`)."""
    x, size = upper.top, upper.events.size
    wanted = _pairs_above(percentile, size, offsets.size)

    def above(t: float) -> int:   # exact where t - offset >= x[0]; else at least x.size > wanted
        return int(x.size * offsets.size - np.searchsorted(x, t - offsets, side="right").sum())

    low, high = upper.lowest + offsets.min(), x[-1] + offsets.max()
    tol = 1e-9 * max(high - low, 1.0)
    while high - low > tol:
        mid = 0.5 * (low + high)
        if above(mid) > wanted:
            low = mid
        else:
            high = mid
    return float(high)


def lognormal_offsets(median: float, sd: float) -> np.ndarray | None:
    """A log-normal nonspecific signal with this ``median`` and standard deviation ``sd`` (linear
    units) at the :data:`SIGNAL_QUANTILES` of the normal carry-over: median x exp(s z_k), s the
    log-SD that gives that SD (exp(s^2) = (1 + sqrt(1 + 4 (sd/median)^2)) / 2). The 32 quantiles
    stop at z = 2.15 for either shape, so the two carry-overs differ by the shape of the signal only.
    None when ``median`` <= 0 (no signal to shape)."""
    if not (median > 0 and sd >= 0):
        return None
    return median * np.exp(_lognormal_log_sd(median, sd) * SIGNAL_QUANTILES)


def _lognormal_log_sd(median: float, sd: float) -> float:
    """The log-SD s of a log-normal with this ``median`` and SD ``sd`` (exp(s^2) = (1 + sqrt(1 + 4
    (sd/median)^2)) / 2); NaN when ``median`` <= 0."""
    if not (median > 0 and sd >= 0):
        return float("nan")
    ratio = sd / median
    return float(np.sqrt(np.log((1.0 + np.sqrt(1.0 + 4.0 * ratio * ratio)) / 2.0)))


SKEWED_LOG_SD = 0.8
"""Read log-SD (:attr:`ReferenceBinding.log_sd`) above which a reference's signal counts as a heavy
right-skewed binding (with :data:`SKEWED_SHARE`): stop 44, development seeds 143001-143240."""
SKEWED_SHARE = 0.9
"""Least share of the read total spread that the upper-side skew makes for the same (skew / total):
a lower-side spread of its own (spillover spreading, normal) keeps the normal carry-over."""
SKEWED_WEIGHT = 1.0 / 3.0
"""How far the carry-over of a right-skewed reference read moves from the normal signal's cut towards
the log-normal signal's of the same median and SD (linear units; :func:`reference_carried`)."""


def reference_carried(upper: UpperEvents, binding: "ReferenceBinding", percentile: float,
                      skewed: bool | None = None) -> float:
    """The parent's FMO ``percentile`` (its upper events, :func:`upper_events`) carried over with a
    reference's read (``relative_reference``), linear units: the normal signal of the read shift and SD
    sqrt(spread^2 + skew^2) (:func:`carried_threshold`); for a right-skewed heavy binding
    (:attr:`ReferenceBinding.right_skewed`) :data:`SKEWED_WEIGHT` of the way from that cut to the
    log-normal signal's of the same median and SD (:func:`lognormal_offsets`, the same 32 quantiles).
    The normal signal under-carries such a tail (the cut 11-23 % under the population's at drawn
    log-SD 0.67-0.75, stop 43) and the log-normal one over-carries it, its SD swollen by the
    reference's own positives (stops 27, 44). ``skewed``: that choice made already (the resamples of
    :func:`reference_cut_error` keep the one read on all events), else ``binding.right_skewed``."""
    normal = carried_threshold(upper, binding.shift, binding.total_spread, percentile)
    skewed = binding.right_skewed if skewed is None else skewed
    offsets = lognormal_offsets(binding.shift, binding.total_spread) if skewed else None
    if offsets is None:
        return normal
    return normal + SKEWED_WEIGHT * (upper_offset_threshold(upper, offsets, percentile) - normal)


def fmo_negative_peak(fmo_values: np.ndarray, bandwidth: float = 0.02,
                      tails: tuple[float, float] | None = None) -> tuple[NegativePeak, Density]:
    """The FMO's negative peak: the highest density peak, with its lower-half width. ``tails``: the
    :func:`_tails` of the finite ``fmo_values``, when already taken."""
    x = _finite(fmo_values, "FMO negative peak", 20)
    density = smoothed_density(x, bandwidth, *_padded_range(x, bandwidth, tails))
    mode = float(density.grid[int(np.argmax(density.values))])
    width = _lower_half_width(x, mode, 1.0)
    return NegativePeak(mode, width if np.isfinite(width) else bandwidth), density


def negative_peak_window(fmo_mode: float, fmo_width: float, max_shift: float) -> tuple[float, float]:
    """Where :func:`stained_negative_peak` looks for the stained negatives, in transformed units:
    ``(FMO mode - 2 FMO widths - 0.02, FMO mode + max_shift)`` (binding and spreading move them up)."""
    return fmo_mode - 2.0 * fmo_width - 0.02, fmo_mode + max_shift


def clamp_to_parent(cut: float, x: np.ndarray) -> float:
    """``cut`` (transformed units) of a positive gate (``x > cut``, as :func:`place_fmo_anchored` places it) kept
    within the stained parent's finite events ``x`` (at least one): a cut beyond them becomes the one at their edge
    at which the gate keeps all of them or none, as the rule's cut did, not all but the edge event: below the
    lowest event the gate keeps all, so the cut lies just below that event (the next float down); above the
    largest it keeps none, the cut at that event. A cut within the events is returned as it is. The gate's
    coordinate (the next float up from the cut) is then reproduced from the recorded cut exactly
    (``tilpheno.review.regate.candidate_coordinate``)."""
    low, high = float(x.min()), float(x.max())
    return float(np.nextafter(low, -np.inf)) if cut < low else high if cut > high else float(cut)


def clamped_to(rule_cut: float, cut: float) -> str:
    """Where :func:`clamp_to_parent` put a positive gate's ``cut`` from the rule's ``rule_cut`` beyond the stained
    parent's events, in words: at its largest event (the gate keeps none of it) or just below its smallest (all)."""
    return "the stained parent's largest event" if rule_cut > cut else "just below the stained parent's smallest event"


def keeps(kept: int, total: int) -> str:
    """What a gate keeps of ``total`` events, ``kept`` of them, without the count (a count below an
    undetermined gate is held): all, none or part of them."""
    return "none" if kept == 0 else "all" if kept == total else "part"


def stained_negative_peak(
    values: np.ndarray, fmo: NegativePeak, density: Density, *, max_shift: float, min_prominence: float,
) -> NegativePeak:
    """The stained tube's negative peak: its density peak nearest to the FMO's mode within
    :func:`negative_peak_window`; ``found`` False when there is none (no negative cells, or negatives
    moved beyond that reach)."""
    peaks, _ = density.peaks(min_prominence)
    low, high = negative_peak_window(fmo.mode, fmo.width, max_shift)
    near = [int(p) for p in peaks if low <= density.grid[p] <= high]
    if not near:
        return NegativePeak(float("nan"), float("nan"), False)
    mode = float(density.grid[min(near, key=lambda p: abs(density.grid[p] - fmo.mode))])
    width = _lower_half_width(values, mode, 4.0 * fmo.width + 0.05)
    return NegativePeak(mode, width if np.isfinite(width) else fmo.width)


def _carried_over(transform: Any, fmo_x: np.ndarray, x: np.ndarray, fmo_mode: float, stained_mode: float,
                  fmo_coarse: Density, coarse: Density, percentile: float,
                  reference: "ReferenceBinding | None" = None,
                  f_sorted: np.ndarray | None = None,
                  linear: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, float, float, float] | None:
    """The FMO percentile carried over to the stained negatives in compensated linear units
    (:func:`additive_threshold`): ``(width ratio, threshold from the lower-side spread, threshold
    from the upper-side spread, threshold from the reference spread)`` in transformed units, None
    without a measurable FMO width.

    Shift = stained mode - FMO mode. Added spread = sqrt(stained width^2 - FMO width^2), widths
    measured on the lower side (RMS below the mode: free of positives, blind to a right-skewed
    nonspecific tail) or on the upper side (distance from the mode up to where the density falls
    to ``UPPER_LEVEL`` of the mode's, as a normal SD: follows the skewed tail, but positives next
    to the negatives widen it). With ``reference`` (a :class:`ReferenceBinding` read on a
    marker-poor population of the same tube, :func:`reference_binding`) the fourth threshold
    carries the additive model read there: the reference's shift and the spread
    sqrt(reference lower-side spread^2 + reference skew^2) (the gated parent's own mode and lower
    side are pulled up by positives next to its negatives); without it the fourth is NaN.
    ``fmo_coarse``, ``coarse``: the FMO's and the stained parent's densities at the modes'
    bandwidth (the FMO's as :func:`fmo_negative_peak` returned it). ``f_sorted``: the finite
    ``fmo_x`` in linear units, sorted, when already sorted (:func:`two_step_fit`'s), else sorted here.
    ``linear``: ``fmo_x`` and ``x`` (finite) in compensated linear units, when already converted.
    """
    f_lin, s_lin = linear if linear is not None else (transform.inverse(fmo_x), transform.inverse(x))
    fm, sm = transform.inverse(np.array([fmo_mode, stained_mode]))
    fw, sw = _lower_half_width(f_lin, fm, np.inf), _lower_half_width(s_lin, sm, np.inf)
    if not (np.isfinite(fw) and np.isfinite(sw) and fw > 0):
        return None
    spreads = [float(np.sqrt(max(sw**2 - fw**2, 0.0)))]
    spreads.append(_upper_spread(transform, fmo_coarse, coarse, fmo_mode, stained_mode, UPPER_LEVEL, spreads[0]))
    # the FMO's upper events sorted once for the two or three thresholds
    events = upper_events(f_lin, percentile) if f_sorted is None else _all_sorted(f_sorted)
    cuts = [carried_threshold(events, sm - fm, sd, percentile) for sd in spreads]
    if reference is not None:
        cuts.append(reference_carried(events, reference, percentile))
    lower, upper, *ref = (float(transform.apply(np.array([c]))[0]) for c in cuts)
    return float(sw / fw), lower, upper, ref[0] if ref else float("nan")


WIDTH_SIDES = ("lower", "upper", "mid", "fit")
"""How :func:`place_fmo_anchored` reads the added signal (strategy param ``width_side``)."""
FIT_PERCENTILES = np.arange(5.0, 71.0, 5.0)
"""Percentiles (of the stained negatives' share, see :func:`fitted_carry`) the additive model is
fitted on with ``width_side: fit``: the bulk of the negatives, below the positives next to them."""
FIT_FMO_QUANTILES = 128
"""The FMO parent is represented by this many evenly spaced quantiles while fitting (speed)."""


def _fit_signal(f_lin: np.ndarray, s_lin: np.ndarray, transform: Any, negative_share: float,
                offsets: Callable[[np.ndarray], np.ndarray], start: np.ndarray, steps: np.ndarray,
                scale: float, maxiter: int = 400, fmo_quantiles: int = FIT_FMO_QUANTILES,
                fatol: float = 1e-12) -> tuple[np.ndarray, float]:
    """The parameters ``p`` (and the sum of squares) of a nonspecific signal (``offsets(p)``: its
    values at fixed normal quantiles, compensated linear units) that make the FMO events + signal match the
    stained parent's :data:`FIT_PERCENTILES` of its ``negative_share`` best: least squares in
    transformed units, the FMO as ``fmo_quantiles`` quantiles, Nelder-Mead from ``start``
    with a first simplex ``steps`` along each parameter (to ``1e-2 scale`` and a sum of squares
    within ``fatol``, at most ``maxiter`` iterations; deterministic). Each evaluation selects the
    model's order statistics that the percentiles read by one partition of its values
    (:func:`quantiles.percentile_positions`), not a sort: the same bits, 1.3-3.2x less CPU (4,096-16,384 values)."""
    from scipy.optimize import minimize

    fq = quantiles.percentile(f_lin, (np.arange(fmo_quantiles) + 0.5) * 100.0 / fmo_quantiles)
    target = transform.apply(quantiles.percentile(s_lin, FIT_PERCENTILES * negative_share))

    kth = quantiles.percentile_positions(fq.size * offsets(start).size, FIT_PERCENTILES)

    def loss(p: np.ndarray) -> float:
        model = (fq[:, None] + offsets(p)[None, :]).ravel()
        model.partition(kth)   # in place: a fresh array
        return float(np.sum((transform.apply(quantiles.sorted_percentile(model, FIT_PERCENTILES)) - target) ** 2))

    simplex = np.vstack([start, start + np.diag(steps)])
    fit = minimize(loss, start, method="Nelder-Mead",
                   options={"initial_simplex": simplex, "xatol": 1e-2 * scale, "fatol": fatol, "maxiter": maxiter})
    return np.asarray(fit.x, dtype=np.float64), float(fit.fun)


def _fmo_scale(f_lin: np.ndarray) -> float:
    """The FMO's interquartile range (linear units, at least 1): the fits' step and tolerance scale."""
    return max(float(quantiles.percentile(f_lin, 75) - quantiles.percentile(f_lin, 25)), 1.0)


def fitted_carry(f_lin: np.ndarray, s_lin: np.ndarray, transform: Any, percentile: float,
                 negative_share: float) -> tuple[float, float, float] | None:
    """The additive model of :func:`additive_threshold` (stained negative = FMO event + shift +
    spread x Z) fitted to the whole bulk of the stained negatives instead of read off their mode and
    lower-side width: ``(cut, shift, spread)``, the cut in transformed units, shift and spread in
    compensated linear units; None when it cannot be fitted.

    The model's quantiles (the FMO events, as :data:`FIT_FMO_QUANTILES` quantiles, each combined
    with the :data:`SIGNAL_QUANTILES`) are matched to the stained parent's at the
    :data:`FIT_PERCENTILES` of its ``negative_share`` (the share of stained events taken as
    negative, 0-1; the positives sit above them) by least squares in transformed units (Nelder-Mead
    from the medians' difference and no spread; deterministic). A mode and a lower-side width
    describe one peak; negatives made of subpopulations the other stains place apart (e.g. CD8+ T
    cells carrying a tandem's spillover) have two, and the FMO's highest one need not be the stained
    tube's: the fitted quantiles use every negative. ``f_lin``, ``s_lin``: the FMO's and the stained
    parent's finite events in compensated linear units. None with fewer than 20 events in either
    tube or a ``negative_share`` below :data:`MIN_FIT_SHARE` (too few negatives for the percentiles). Either tube's
    events in any order (sorted once here, see :func:`_sorted_fitted_carry`)."""
    fit = _sorted_fitted_carry(np.sort(np.asarray(f_lin, dtype=np.float64)), np.sort(np.asarray(s_lin, dtype=np.float64)),
                               transform, percentile, negative_share)
    return None if fit is None else fit[:3]


def _sorted_fitted_carry(f_sorted: np.ndarray, s_sorted: np.ndarray, transform: Any, percentile: float,
                         negative_share: float) -> tuple[float, float, float, float] | None:
    """:func:`fitted_carry` of the two tubes' events already sorted (float64, compensated linear
    units): the same result (medians and percentiles are order statistics), each of them selected
    from a sorted array without a partition's pass over all events, the FMO percentile carried over
    without a sort (:func:`sorted_additive_threshold`); :func:`two_step_fit` sorts each tube once for
    its two fits. Also the fit's sum of squares (the fourth number)."""
    if f_sorted.size < 20 or s_sorted.size < 20 or not negative_share >= MIN_FIT_SHARE:
        return None
    scale = _fmo_scale(f_sorted)
    start = np.array([float(np.median(s_sorted) - np.median(f_sorted)), 0.0])
    p, sse = _fit_signal(f_sorted, s_sorted, transform, negative_share, lambda p: p[0] + abs(p[1]) * SIGNAL_QUANTILES,
                         start, np.array([scale, scale]), scale)
    shift, spread = float(p[0]), float(abs(p[1]))
    lin = sorted_additive_threshold(f_sorted, shift, spread, percentile)
    return float(transform.apply(np.array([lin]))[0]), shift, spread, sse


@dataclass(frozen=True)
class FitCarry:
    """``width_side: fit``'s carry-over (:func:`two_step_fit`): ``cut`` (transformed units), the
    fitted ``shift`` and normal ``spread`` (compensated linear units) and the ``share`` of the
    stained parent taken as negative (0-1) that the final fit used."""

    cut: float
    shift: float
    spread: float
    share: float
    log_sd: float = 0.0
    """The log-SD of a log-normal binding (:func:`lognormal_share_fit`, :func:`skewed_or_normal`:
    ``shift`` is then its median, ``spread`` the normal spreading's SD); 0 for the normal model of
    :func:`fitted_carry`."""
    normal_cut: float = float("nan")
    """The normal fit's cut a log-normal one replaced (:func:`skewed_or_normal`); NaN otherwise."""
    normal_shift: float = float("nan")
    """That normal fit's shift (compensated linear units; :func:`carried_fit` carries it over again); NaN otherwise."""
    normal_spread: float = float("nan")
    """That normal fit's spread (compensated linear units); NaN otherwise."""


MIN_FIT_SHARE = 0.35
"""Least share of the stained parent taken as negative that :func:`fitted_carry` fits (fewer
negatives leave too few events for its percentiles)."""


SHAPE_CONFIDENCE = 0.99
"""Confidence of the F test by which :func:`skewed_or_normal` takes the log-normal binding over the normal."""


def skewed_or_normal(f_sorted: np.ndarray, s_sorted: np.ndarray, transform: Any, percentile: float,
                     normal: FitCarry, normal_sse: float) -> FitCarry:
    """The signal's shape the stained negatives' bulk shows: the log-normal binding plus normal
    spreading of :func:`lognormal_fitted_cut`, fitted to the same :data:`FIT_PERCENTILES` of the
    same share (one fit, from the normal fit's shift and spread and a log-SD of 0.5; the FMO as
    :data:`SHARE_FMO_QUANTILES` quantiles, to :data:`SHARE_FATOL`: time), replaces the ``normal``
    fit (sum of squares ``normal_sse``) when it fits those percentiles better by the F test of nested
    least squares (one parameter more: (normal_sse - its) / (its / (14 - 3)) above F's
    :data:`SHAPE_CONFIDENCE` quantile) and its log-SD stays below :data:`LOGNORMAL_MAX_SD` (a fit at
    that bound is a vanishing median with an ever wider tail: no binding to shape). Binding per cell
    is log-normal; a normal fitted to its bulk falls short of its upper tail, so the FMO percentile is
    carried over too low and the gate over-calls (CD56+ under heavy binding: CD3+ T cells counted
    NKT). ``normal`` itself otherwise, and without a positive shift. ``f_sorted``, ``s_sorted``: both
    tubes' finite events, linear units, sorted."""
    if not normal.shift > 0:
        return normal
    scale = _fmo_scale(f_sorted)
    cut, p, sse = _lognormal_fit(f_sorted, s_sorted, transform, percentile, normal.share,
                                 [np.array([normal.shift, 0.5 * scale, 0.5 * normal.spread])], scale,
                                 fmo_quantiles=SHARE_FMO_QUANTILES, fatol=SHARE_FATOL, fmo_sorted=True)
    dof = FIT_PERCENTILES.size - 3
    better = (normal_sse - sse) * dof > float(fdtri(1, dof, SHAPE_CONFIDENCE)) * sse
    if not (better and _log_sd(p, scale) < LOGNORMAL_MAX_SD):
        return normal
    return replace(_lognormal_carry(cut, p, normal.share, scale), normal_cut=normal.cut, normal_shift=normal.shift,
                   normal_spread=normal.spread)


def two_step_fit(fmo_x: np.ndarray, x: np.ndarray, transform: Any, percentile: float,
                 t_fmo: float, f_sorted: np.ndarray | None = None, s_lin: np.ndarray | None = None,
                 shape: bool = True) -> FitCarry | None:
    """:func:`fitted_carry` with the negatives' share read twice: first the stained events at or
    below the FMO percentile ``t_fmo`` (too few under binding), then those at or below the first
    fit's cut, divided by ``percentile`` / 100 (the share of negatives below it). Both fits take the
    events in linear units converted and sorted once; ``f_sorted``: the FMO's, when already sorted
    (:func:`sorted_fmo_linear`); ``s_lin``: the finite ``x`` in linear units, when already converted.

    When the first share is below :data:`MIN_FIT_SHARE` (binding has moved the whole negative peak
    past the FMO percentile) and the FMO and stained tubes hold 20 events or more: the log-normal fit
    of :func:`lognormal_share_fit` (heavy binding has the log-normal's upper tail, which a normal
    fitted to the bulk does not carry over). Otherwise the normal fit, or the log-normal one in its
    place where the bulk shows that shape (:func:`skewed_or_normal`; not with ``shape`` False)."""
    if f_sorted is None:
        f_sorted = sorted_fmo_linear(fmo_x, transform)
    s_sorted = np.sort(_finite_linear(x, transform) if s_lin is None else s_lin)
    first_share = float(np.mean(x <= t_fmo))
    if first_share < MIN_FIT_SHARE:
        return lognormal_share_fit(f_sorted, s_sorted, transform, percentile)
    first = _sorted_fitted_carry(f_sorted, s_sorted, transform, percentile, first_share)
    if first is None:
        return None
    share = min(1.0, float(np.mean(x <= first[0])) / (percentile / 100.0))
    final = _sorted_fitted_carry(f_sorted, s_sorted, transform, percentile, share)
    if final is None:
        return None
    normal = FitCarry(*final[:3], share)
    return skewed_or_normal(f_sorted, s_sorted, transform, percentile, normal, final[3]) if shape else normal


def _carried_cut(f_sorted: np.ndarray, transform: Any, percentile: float, shift: float, spread: float,
                 log_sd: float = 0.0) -> float:
    """The FMO ``percentile`` carried over the FMO events ``f_sorted`` (finite, compensated linear units,
    sorted) with a fitted signal, transformed units: the normal one (``shift``, ``spread``,
    :func:`sorted_additive_threshold`) when ``log_sd`` is 0, else the log-normal binding of median ``shift``
    and that log-SD plus the normal spreading ``spread`` at the :data:`TAIL_QUANTILES` (as :func:`_lognormal_fit`)."""
    if log_sd > 0:
        tail = _lognormal_offsets(np.array([shift, log_sd, spread]), 1.0, TAIL_QUANTILES)
        lin = upper_offset_threshold(_all_sorted(f_sorted), tail, percentile)
    else:
        lin = sorted_additive_threshold(f_sorted, shift, spread, percentile)
    return float(transform.apply(np.array([lin]))[0])


def carried_fit(fit: FitCarry, f_sorted: np.ndarray, transform: Any, percentile: float) -> FitCarry:
    """``fit`` (fitted on another population's events, :func:`reference_fit`) with its cut, and the normal cut a
    log-normal one replaced, carried over the FMO events ``f_sorted`` instead (finite, compensated linear
    units, sorted; :func:`_carried_cut`): the same signal added to every cell of the tube."""
    normal = (_carried_cut(f_sorted, transform, percentile, fit.normal_shift, fit.normal_spread)
              if math.isfinite(fit.normal_cut) else fit.normal_cut)
    return replace(fit, cut=_carried_cut(f_sorted, transform, percentile, fit.shift, fit.spread, fit.log_sd),
                   normal_cut=normal)


def reference_fit(reference_fmo: np.ndarray, reference_stained: np.ndarray, transform: Any, percentile: float,
                  f_sorted: np.ndarray) -> FitCarry | None:
    """``width_side: fit`` with a ``skew_reference``: :func:`two_step_fit` on the reference population's
    events of both tubes (its own FMO ``percentile`` for the first share), the fitted signal carried over the
    gated parent's FMO events ``f_sorted`` (:func:`carried_fit`; finite, compensated linear units, sorted).
    A population whose stained negatives are of one kind (the CD8- lymphocytes for CD56: CD8's tandem
    spillover puts the CD8+ T cells higher in CD56 in both tubes, and the parent's positives, mostly CD8-
    NK cells, leave its stained negatives with more CD8+ cells than its FMO holds) reads the binding the
    parent's mixture misreads. None with fewer than :data:`MIN_REFERENCE_EVENTS` finite events in either
    tube or no fit."""
    rf, rs = (np.asarray(v, dtype=np.float64) for v in (reference_fmo, reference_stained))
    rf, rs = rf[np.isfinite(rf)], rs[np.isfinite(rs)]
    if rf.size < MIN_REFERENCE_EVENTS or rs.size < MIN_REFERENCE_EVENTS:
        return None
    fit = two_step_fit(rf, rs, transform, percentile, fmo_threshold(rf, percentile))
    return None if fit is None else carried_fit(fit, f_sorted, transform, percentile)


FIT_LOGNORMAL_QUANTILES = (ndtri((np.arange(16) + 0.5) / 16), ndtri((np.arange(8) + 0.5) / 8))
"""The standard normal quantiles (binding's, spreading's) that stand for the two parts of the signal of
:func:`lognormal_fitted_cut` while it is fitted (every pair: 128 offsets, as many as the FMO's quantiles)."""
TAIL_QUANTILES = (ndtri((np.arange(256) + 0.5) / 256), ndtri((np.arange(16) + 0.5) / 16))
"""The same for carrying the FMO percentile over with the fitted signal: the binding's tail to z = 2.88
(the 32 :data:`SIGNAL_QUANTILES` stop at z = 2.15, the signal's 98.4th percentile, short of a heavy
tail's part in the 99.5th percentile)."""
LOGNORMAL_STARTS = (0.3, 0.6, 0.9)
"""Log-SDs of the starts of :func:`lognormal_fitted_cut` (the simulated binding's 0.2-0.8 and beyond)."""
LOGNORMAL_MAX_SD = 1.5
"""Largest log-SD :func:`lognormal_fitted_cut` fits (its 99.5th percentile 48 x its median): without
binding the bulk is fitted by a vanishing median with an ever wider tail."""


def lognormal_fitted_cut(fmo_values: np.ndarray, stained_values: np.ndarray, transform: Any, percentile: float,
                         fit: FitCarry, carry: np.ndarray | None = None) -> float:
    """The other shape of a ``width_side: fit`` signal, fitted to the same evidence: a log-normal
    binding ``m exp(s Z1)`` (binding per cell is positive and roughly log-normal, with a heavier upper
    tail than a normal; log-SD ``s`` at most :data:`LOGNORMAL_MAX_SD`) plus a normal spreading
    ``sigma Z2`` (the spillover spreading that also adds to every cell), fitted by the least squares
    of :func:`fitted_carry` to the same percentiles of the stained negatives (``fit.share``; the best
    of three starts, ``m`` = ``fit.shift``, ``sigma`` = half ``fit.spread``, ``s`` in
    :data:`LOGNORMAL_STARTS`, up to 800 iterations each; Z1, Z2 at :data:`FIT_LOGNORMAL_QUANTILES`);
    the FMO ``percentile`` carried over with it at the :data:`TAIL_QUANTILES`. With ``s`` near 0 it is
    the normal model of ``fit`` again, so the two cuts differ by what the data say of the tail's
    shape. Transformed units; NaN without a positive ``fit.shift`` (no binding to shape) or with fewer
    than 20 events in either tube. Used by the fit gate's self-check (``checks``: ``fit_lognormal``)
    of a normal fit and by :func:`reference_tail_cut`. ``carry``: the FMO events (transformed units) the
    percentile is carried over instead, the fit being on a reference population's events (:func:`reference_fit`)."""
    return _linear_lognormal_cut(_finite_linear(fmo_values, transform), _finite_linear(stained_values, transform),
                                 transform, percentile, fit,
                                 None if carry is None else sorted_fmo_linear(carry, transform))


def _linear_lognormal_cut(f_lin: np.ndarray, s_lin: np.ndarray, transform: Any, percentile: float,
                          fit: FitCarry, carry_sorted: np.ndarray | None = None) -> float:
    """:func:`lognormal_fitted_cut` of both tubes' finite events already in linear units (``carry_sorted``:
    the FMO events carried over instead, linear units, sorted)."""
    if not fit.shift > 0 or f_lin.size < 20 or s_lin.size < 20:
        return float("nan")
    scale = _fmo_scale(f_lin)
    starts = [np.array([fit.shift, s0 * scale, 0.5 * fit.spread]) for s0 in LOGNORMAL_STARTS]
    cut, p, _ = _lognormal_fit(f_lin, s_lin, transform, percentile, fit.share, starts, scale)
    return cut if carry_sorted is None else carried_fit(_lognormal_carry(cut, p, fit.share, scale), carry_sorted,
                                                        transform, percentile).cut


def _log_sd(p: np.ndarray, scale: float) -> float:
    """The log-SD of a log-normal fit's parameters ``p`` (:func:`_lognormal_offsets`: ``p[1]`` is it x
    ``scale``), at most :data:`LOGNORMAL_MAX_SD`."""
    return min(abs(float(p[1])) / scale, LOGNORMAL_MAX_SD)


def _lognormal_carry(cut: float, p: np.ndarray, share: float, scale: float) -> FitCarry:
    """The :class:`FitCarry` of a log-normal fit's ``cut`` and parameters ``p`` at ``share``."""
    return FitCarry(cut, abs(float(p[0])), abs(float(p[2])), share, _log_sd(p, scale))


def _lognormal_offsets(p: np.ndarray, scale: float, z: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The log-normal binding plus normal spreading of :func:`lognormal_fitted_cut` at the normal
    quantiles ``z`` (binding's, spreading's), linear units; ``p``: median m, log-SD s x ``scale`` (the
    fit's steps of one size), spreading SD sigma."""
    binding = abs(p[0]) * np.exp(_log_sd(p, scale) * z[0])
    return (binding[:, None] + abs(p[2]) * z[1][None, :]).ravel()


def _lognormal_fit(f_lin: np.ndarray, s_lin: np.ndarray, transform: Any, percentile: float, share: float,
                   starts: list[np.ndarray], scale: float, maxiter: int = 800, step: float = 1.0,
                   fmo_quantiles: int = FIT_FMO_QUANTILES, fatol: float = 1e-12,
                   fmo_sorted: bool = False) -> tuple[float, np.ndarray, float]:
    """The log-normal binding plus spreading fitted from each of ``starts`` (the best kept) to the
    :data:`FIT_PERCENTILES` of ``share`` of the stained events (:func:`_fit_signal`, first steps
    ``step`` x (half the start's median, a quarter and half of ``scale``); the FMO as ``fmo_quantiles``
    quantiles; ``fatol`` as :func:`_fit_signal`'s; ``fmo_sorted``: ``f_lin`` is sorted already, the carry
    reads it as it is): (the FMO ``percentile`` carried over with it at the
    :data:`TAIL_QUANTILES`, transformed units; the parameters, as :func:`_lognormal_offsets` reads them;
    the fit's sum of squares)."""
    def offsets(p: np.ndarray) -> np.ndarray:
        return _lognormal_offsets(p, scale, FIT_LOGNORMAL_QUANTILES)

    fits = [_fit_signal(f_lin, s_lin, transform, share, offsets, start,
                        step * np.array([0.5 * abs(start[0]), 0.25 * scale, 0.5 * scale]), scale, maxiter=maxiter,
                        fmo_quantiles=fmo_quantiles, fatol=fatol)
            for start in starts]
    p, sse = min(fits, key=lambda f: f[1])
    tail = _lognormal_offsets(p, scale, TAIL_QUANTILES)
    upper = _all_sorted(f_lin) if fmo_sorted else upper_events(f_lin, percentile, tail.size)
    lin = upper_offset_threshold(upper, tail, percentile)
    return float(transform.apply(np.array([lin]))[0]), p, sse


SHARE_ROUNDS = 6
"""Most fits :func:`lognormal_share_fit` makes while iterating the negatives' share."""
SHARE_TOLERANCE = 0.005
"""Change of that share (0-1) below which the iteration has reached its fixed point."""
SHARE_FATOL = 1e-7
"""Sum of squares (transformed units) within which :func:`lognormal_share_fit`'s fits stop: the
fits end at 2e-6 to 1e-4, and 1e-7 is 14 percentiles off by 1e-4 each (time)."""
SHARE_FMO_QUANTILES = 64
"""The FMO's quantiles in :func:`lognormal_share_fit`'s fits (half of :data:`FIT_FMO_QUANTILES`: time)."""
WARM_STEP = 0.2
"""First simplex of a fit started from an earlier fit's parameters (a fold's refit from the fit on all
events, :func:`fit_cut_error`), as a share of a cold start's."""


def _share_below(s_sorted: np.ndarray, cut: float, transform: Any, percentile: float) -> float:
    """The share of the stained parent taken as negative below a carried-over ``cut`` (transformed
    units): the events at or below it (sorted linear ``s_sorted``) / (``percentile`` / 100), at most 1."""
    lin = float(transform.inverse(np.array([cut]))[0])
    return min(1.0, np.searchsorted(s_sorted, lin, side="right") / s_sorted.size / (percentile / 100.0))


def lognormal_share_fit(f_sorted: np.ndarray, s_sorted: np.ndarray, transform: Any, percentile: float,
                        start: np.ndarray | None = None, share: float | None = None) -> FitCarry | None:
    """``width_side: fit`` under binding heavy enough to move the whole negative peak past the FMO
    percentile (:func:`two_step_fit`): the log-normal binding plus normal spreading of
    :func:`lognormal_fitted_cut` fitted to the stained negatives, their share iterated to its fixed
    point (share = stained events at or below the cut / (``percentile`` / 100); from the cut of the
    FMO shifted by the medians' difference; at most :data:`SHARE_ROUNDS` fits, stopping when the
    share moves less than :data:`SHARE_TOLERANCE`). Every round's fit starts afresh from the medians'
    difference at each of :data:`LOGNORMAL_STARTS`, not from the round before: a first round's poor
    fit (a log-SD far below the binding's at the FMO-shifted share) would otherwise be kept through the
    rounds (V165337, benchmarks/README.md stop 52). With ``start`` (parameters
    of a fit, e.g. on all events) and ``share``: one fit from there at that share (the folds of
    :func:`fit_cut_error`). ``f_sorted``, ``s_sorted``: both tubes' finite events, linear units, sorted.
    None with fewer than 20 events in either tube or no positive medians' difference (no binding)."""
    if f_sorted.size < 20 or s_sorted.size < 20:
        return None
    scale = _fmo_scale(f_sorted)
    if start is not None and share is not None:
        cut, p, _ = _lognormal_fit(f_sorted, s_sorted, transform, percentile, share, [start], scale, step=WARM_STEP,
                                   fmo_quantiles=SHARE_FMO_QUANTILES, fatol=SHARE_FATOL)
        return _lognormal_carry(cut, p, share, scale)
    shift = float(np.median(s_sorted) - np.median(f_sorted))
    if not shift > 0:
        return None
    share = _share_below(s_sorted, float(transform.apply(np.array([sorted_additive_threshold(f_sorted, shift, 0.0, percentile)]))[0]),
                         transform, percentile)
    starts = [np.array([shift, s0 * scale, 0.5 * scale]) for s0 in LOGNORMAL_STARTS]
    for _ in range(SHARE_ROUNDS):
        cut, p, _ = _lognormal_fit(f_sorted, s_sorted, transform, percentile, share, starts, scale,
                                   fmo_quantiles=SHARE_FMO_QUANTILES, fatol=SHARE_FATOL)
        used, share = share, _share_below(s_sorted, cut, transform, percentile)
        if abs(share - used) < SHARE_TOLERANCE:
            break
    return _lognormal_carry(cut, p, used, scale)


CONFIDENCE = 0.95
"""Two-sided confidence of the intervals :func:`reference_cut_error` (bootstrap, normal quantile) and
:func:`fit_cut_error` (Student t on the folds) give."""
FIT_FOLDS = 8
"""Interleaved folds :func:`fit_cut_error` re-fits a ``width_side: fit`` carry-over on."""


def fit_cut_error(fmo_values: np.ndarray, stained_values: np.ndarray, transform: Any, percentile: float,
                  t_fmo: float, folds: int = FIT_FOLDS, confidence: float = CONFIDENCE,
                  fit: FitCarry | None = None, carry: np.ndarray | None = None) -> float:
    """Sampling error of the ``width_side: fit`` cut (:func:`two_step_fit`), transformed units: the
    half-width of its ``confidence`` interval, NaN when fewer than 2 folds can be fitted. The FMO's
    and the stained parent's finite events are dealt into ``folds`` interleaved folds (event i to
    fold i mod k), the fit repeated on each (with the FMO percentile ``t_fmo`` of all events); SD of
    the fold cuts / sqrt(k) x Student's t with k - 1 degrees of freedom, as
    :func:`reference_cut_error`. ``fit``: the fit on all events; a log-normal one (``log_sd`` > 0,
    :func:`lognormal_share_fit`) is repeated on each fold from its parameters at its share (one fit
    a fold, not the share's iteration: time). ``carry``: the FMO events (transformed units) each fold's fit is
    carried over instead (their fold i; the fit being on a reference population's events, :func:`reference_fit`)."""
    f = np.asarray(fmo_values, dtype=np.float64)
    x = np.asarray(stained_values, dtype=np.float64)
    f, x = f[np.isfinite(f)], x[np.isfinite(x)]
    over = None if carry is None else np.asarray(carry, dtype=np.float64)
    over = None if over is None else over[np.isfinite(over)]

    def refit(i: int) -> FitCarry | None:
        if fit is None or not fit.log_sd > 0:
            found = two_step_fit(f[i::folds], x[i::folds], transform, percentile, t_fmo, shape=fit is None)
        else:
            f_sorted = sorted_fmo_linear(f[i::folds], transform)
            start = np.array([fit.shift, fit.log_sd * _fmo_scale(f_sorted), fit.spread])
            found = lognormal_share_fit(f_sorted, np.sort(_finite_linear(x[i::folds], transform)), transform,
                                        percentile, start, fit.share)
        return (found if found is None or over is None
                else carried_fit(found, sorted_fmo_linear(over[i::folds], transform), transform, percentile))

    cuts = [c.cut for c in (refit(i) for i in range(folds)) if c is not None]
    if len(cuts) < 2:
        return float("nan")
    return float(np.std(cuts, ddof=1)) / np.sqrt(folds) * float(stdtrit(len(cuts) - 1, 0.5 + confidence / 2))


def _upper_spread(transform: Any, fmo_density: Density, density: Density, fmo_mode: float, stained_mode: float,
                  level: float, default: float, stained_upper: float | None = None) -> float:
    """Added spread (linear units, as a normal SD) read on the negative peak's upper side: the
    distances from each mode up to where its density falls to ``level`` x the mode's, stained vs
    FMO, in quadrature, divided by sqrt(-2 ln level). ``default`` when either distance is not positive.
    ``stained_upper``: the stained side's point read otherwise (transformed units; :func:`upper_without_positives`)."""
    fm, sm = transform.inverse(np.array([fmo_mode, stained_mode]))
    upper = _upper_width(density, stained_mode, level) if stained_upper is None else stained_upper
    uf, us = transform.inverse(np.array([_upper_width(fmo_density, fmo_mode, level), upper]))
    if not (uf > fm and us > sm):
        return default
    return float(np.sqrt(max((us - sm) ** 2 - (uf - fm) ** 2, 0.0)) / np.sqrt(-2.0 * np.log(level)))


REFERENCE_LEVEL = 0.2
"""Density level (fraction of the negative peak's height) at which :func:`reference_binding` reads a
marker-poor population's upper side: low enough to follow a right-skewed nonspecific tail, which a
population with few positives does not confuse with positives next to the negatives."""
MIN_REFERENCE_EVENTS = 200
"""Events (in the FMO and in the stained tube) below which a skew reference is not measured."""
REFERENCE_REACH = 99.5
"""Percentile of the reference's FMO events, carried with the read shift and lower-side spread
(:func:`additive_threshold`), beyond which :func:`positive_peak_above` looks for the reference's positives."""
REFERENCE_POSITIVE_PROMINENCE = 0.05
"""Prominence (fraction of the highest density) of a peak above a reference's negatives that
:func:`upper_without_positives` takes for the reference's own positives."""


def positive_peak_above(density: Density, mode: float, reach: float,
                        min_prominence: float = REFERENCE_POSITIVE_PROMINENCE) -> tuple[int, int] | None:
    """The first peak above ``reach`` (transformed units: where the reference's FMO, carried with its binding's shift
    and lower-side spread, reaches) with prominence >= ``min_prominence`` (:meth:`Density.peaks`) and the valley
    between it and the negative peak's ``mode``, as grid indices (peak, valley); None when there is none, or when that
    peak's density is not below the density at ``mode``. A peak within that reach is the negatives' own (a flat or
    double top), not positives; so is a peak at least as high as the one at ``mode``: a marker-poor reference's
    positives are its minority, and a taller peak above means a small bump was read as the negatives (before that
    guard, stop 60: development product V191120's real negative peak taken for positives, PD1+ 37 points over the
    ideal-FMO reference)."""
    i = min(int(np.searchsorted(density.grid, mode)), density.values.size - 1)
    peaks, _ = density.peaks(min_prominence)
    above = [int(p) for p in peaks if p > i + 1 and density.grid[p] > reach]
    if not above or density.values[above[0]] >= density.values[i]:
        return None
    return above[0], density.valley(i, above[0])


def upper_without_positives(density: Density, mode: float, reach: float, level: float = REFERENCE_LEVEL) -> float | None:
    """Where (grid value, transformed units) the negatives' density falls to ``level`` x its height at ``mode``,
    going up, with a positive peak above them taken out (:func:`positive_peak_above`: beyond ``reach``, lower than the
    negative peak): the peak mirrored about its mode (its upper side standing for its lower side, symmetric in
    transformed units as a log-normal population is) and subtracted from the density between the two modes; the read
    ends at the peak at the latest. Only where the valley before that peak lies at or above ``level`` x the negative
    mode's density: there the plain read (:func:`_upper_width`) runs through the positives to their far side and
    reads them as a binding tail. None (read as usual) otherwise: a valley below that level already ends the plain
    read on the negatives' side."""
    found = positive_peak_above(density, mode, reach)
    if found is None:
        return None
    peak, valley = found
    i = min(int(np.searchsorted(density.grid, mode)), density.values.size - 1)
    if density.values[valley] < level * density.values[i]:
        return None
    j = np.arange(i, peak + 1)
    mirror = 2 * peak - j
    positives = np.where(mirror < density.values.size, density.values[np.minimum(mirror, density.values.size - 1)], 0.0)
    negatives = density.values[j] - np.minimum(positives, density.values[j])
    below = np.nonzero(negatives < level * negatives[0])[0]
    return float(density.grid[j[below[0]] if below.size else peak])


@dataclass(frozen=True)
class ReferenceBinding:
    """The nonspecific signal of one tube read on a marker-poor population (compensated linear
    units, :func:`reference_binding`): ``shift`` = stained negative mode - FMO mode, ``spread`` =
    the added spread on the negative peak's lower side, ``skew`` = the right skew: the added
    spread read on the negative peak's upper side at :data:`REFERENCE_LEVEL` of its height
    (:func:`_upper_spread`, stained vs FMO) in excess of the lower-side one,
    ``sqrt(max(upper^2 - lower^2, 0))``: 0 for symmetric added signal, large for a right-skewed
    nonspecific tail."""

    shift: float
    spread: float
    skew: float
    mode_shift: float = float("nan")
    """Stained negative mode - FMO mode in transformed units (for the shift tolerance)."""
    fmo_width: float = float("nan")
    """The FMO's lower-half negative width, transformed units."""
    width_ratio: float = float("nan")
    """Stained / FMO lower-side width of the negative peak, linear units."""
    raised_from: float = float("nan")
    """The parent's own shift, linear units, where :func:`skew_carry_binding` raised it to the reference's (floored
    at 0: :func:`shift_raised_to_reference`), else NaN."""

    @property
    def total_spread(self) -> float:
        """The SD of the added signal the carry-over uses: sqrt(spread^2 + skew^2), linear units."""
        return float(np.hypot(self.spread, self.skew))

    @property
    def log_sd(self) -> float:
        """The log-SD of a log-normal signal whose median is ``shift`` and whose SD is
        :attr:`total_spread` (:func:`lognormal_offsets`); NaN without a positive shift."""
        return _lognormal_log_sd(self.shift, self.total_spread)

    @property
    def right_skewed(self) -> bool:
        """The read signal is a heavy right-skewed binding (:data:`SKEWED_LOG_SD`, :data:`SKEWED_SHARE`):
        broad for its median and broad on the upper side only."""
        total = self.total_spread
        return bool(self.log_sd > SKEWED_LOG_SD and total > 0 and self.skew / total > SKEWED_SHARE)

    def moved(self, shift_tolerance: float, width_tolerance: float) -> bool:
        """The reference's negatives shifted or widened beyond the tolerances of
        :func:`place_fmo_anchored` (as its ``moved`` test on the gated parent)."""
        return bool(abs(self.mode_shift) > max(shift_tolerance, 0.25 * self.fmo_width)
                    or not (1 / width_tolerance <= self.width_ratio <= width_tolerance))


def _control_peak(f: np.ndarray, bandwidth: float) -> tuple[NegativePeak, Density, float]:
    """The FMO's (or unstained control's) negative peak as :func:`reference_binding` reads it (finite ``f``,
    transformed units): smoothed to at least half its own lower-half width; (the peak, that density, the bandwidth)."""
    fmo_tails = _tails(f)   # one percentile pair for the FMO's densities at both bandwidths
    fmo, fmo_coarse = fmo_negative_peak(f, bandwidth, fmo_tails)
    mode_bw = max(bandwidth, 0.5 * fmo.width)
    if mode_bw > bandwidth:
        fmo, fmo_coarse = fmo_negative_peak(f, mode_bw, fmo_tails)   # the FMO's density at mode_bw, used below too
    return fmo, fmo_coarse, mode_bw


def lower_spread_at(fmo_values: np.ndarray, stained_values: np.ndarray, transform: Any, shift: float, *,
                    bandwidth: float = 0.02) -> float:
    """The stained tube's added spread on its negatives' lower side read around a given shift (linear units, as
    :attr:`ReferenceBinding.spread`): the RMS distance below the FMO's mode + ``shift`` of the stained events and
    below the FMO's mode of the FMO's, in quadrature (:func:`reference_binding` reads it around the stained tube's own
    negative mode). Where a parent's dim positives pull that mode up, the events below it take in the negatives' upper
    side and read the spread too wide; around the ``skew_reference``'s shift (the same binding on every cell) they
    read the negatives' own (:func:`spread_at_reference_cut`). NaN with fewer than 10 events below either."""
    f = np.asarray(fmo_values, dtype=np.float64)
    s = np.asarray(stained_values, dtype=np.float64)
    f, s = f[np.isfinite(f)], s[np.isfinite(s)]
    if f.size < 20:
        return float("nan")
    fmo, _, _ = _control_peak(f, bandwidth)
    fm = float(transform.inverse(np.array([fmo.mode]))[0])
    fw = _lower_half_width(transform.inverse(f), fm, np.inf)
    sw = _lower_half_width(transform.inverse(s), fm + shift, np.inf)
    return float(np.sqrt(max(sw**2 - fw**2, 0.0))) if np.isfinite(fw) and np.isfinite(sw) else float("nan")


def reference_binding(fmo_values: np.ndarray, stained_values: np.ndarray, transform: Any, *,
                      bandwidth: float = 0.02, max_shift: float = MAX_SHIFT, min_prominence: float = 0.01,
                      level: float = REFERENCE_LEVEL) -> ReferenceBinding | None:
    """The additive model of nonspecific binding read once per tube on a marker-poor population
    (e.g. the non-T lymphocytes for PD1), where few positives sit next to the negatives: the
    negative peak's shift (stained mode - FMO mode), its lower-side added spread (RMS below the
    mode, stained vs FMO in quadrature) and the right skew (``ReferenceBinding.skew``), all in
    compensated linear units. None when either tube has fewer than :data:`MIN_REFERENCE_EVENTS`
    finite events or no negative peak near the FMO's. Every cell of the tube gets the same
    nonspecific signal (additive model, :func:`additive_threshold`), so what is read where
    positives are few carries to a gated parent whose dim positives pull its own negative mode
    and lower side up (CD8+ T cells for PD1). The reference's own positives, where they make a peak above its
    negatives, lower than the negative peak, with a valley at or above ``level`` (a small PD1-rich non-T reference),
    are taken out of the upper-side read (:func:`upper_without_positives`; before stop 60 the read ran through them
    and took them for a binding tail: skew 2,673 linear units instead of 389 without them by label on development
    product V190683, CD8+PD1+ 12 points under the ideal-FMO reference)."""
    f = np.asarray(fmo_values, dtype=np.float64)
    s = np.asarray(stained_values, dtype=np.float64)
    f, s = f[np.isfinite(f)], s[np.isfinite(s)]
    if f.size < MIN_REFERENCE_EVENTS or s.size < MIN_REFERENCE_EVENTS:
        return None
    fmo, fmo_coarse, mode_bw = _control_peak(f, bandwidth)
    coarse = smoothed_density(s, mode_bw, *_padded_range(s, mode_bw))
    neg = stained_negative_peak(s, fmo, coarse, max_shift=max_shift, min_prominence=min_prominence)
    if not neg.found:
        return None
    f_lin, s_lin = transform.inverse(f), transform.inverse(s)
    fm, sm = transform.inverse(np.array([fmo.mode, neg.mode]))
    fw, sw = _lower_half_width(f_lin, fm, np.inf), _lower_half_width(s_lin, sm, np.inf)
    if not (np.isfinite(fw) and np.isfinite(sw)):
        return None
    lower = float(np.sqrt(max(sw**2 - fw**2, 0.0)))
    # the FMO's own events carried with the shift and lower-side spread (normal) reach this far: its positives lie beyond
    reach = float(transform.apply(np.array([additive_threshold(f_lin, float(sm - fm), lower, REFERENCE_REACH)]))[0])
    upper = _upper_spread(transform, fmo_coarse, coarse, fmo.mode, neg.mode, level, lower,
                          upper_without_positives(coarse, neg.mode, reach, level))
    return ReferenceBinding(float(sm - fm), lower, float(np.sqrt(max(upper**2 - lower**2, 0.0))),
                            float(neg.mode - fmo.mode), float(fmo.width), float(sw / fw) if fw > 0 else 1.0)


REFERENCE_RESAMPLES = 16
"""Bootstrap resamples :func:`reference_cut_error` re-reads the reference carry-over on."""


def _finite_linear(values: np.ndarray, transform: Any) -> np.ndarray:
    """The finite ``values`` (transformed units) back in compensated linear units."""
    v = np.asarray(values, dtype=np.float64)
    return transform.inverse(v[np.isfinite(v)])


def sorted_fmo_linear(fmo_values: np.ndarray, transform: Any) -> np.ndarray:
    """The finite ``fmo_values`` (transformed units) in compensated linear units, sorted (float64):
    what :func:`two_step_fit` and :func:`_carried_over` carry the FMO percentile over from."""
    return np.sort(_finite_linear(fmo_values, transform))


def reference_shift_carried(parent: ReferenceBinding, binding: ReferenceBinding) -> bool:
    """The skew carry takes the ``skew_reference``'s shift (``binding.shift``) for the parent's own (``parent.shift``,
    both read against the unstained control, linear units): where the reference's shift is the lower and its right
    skew no more than the parent's lower-side spread (a normal signal, not a heavy binding tail). Every cell of the
    tube gets the same binding, so a marker-poor reference reads its shift; a PD1-rich parent's dim positives pull
    its own negative mode up, and the carry with it (CD8+PD1+ 3-4 points under the ideal-FMO reference, stop 55).
    The parent's lower-side spread stays its own (a T-cell parent carries the other stains' spreading, which the
    CD3- reference lacks). Not under a heavy tail (skew above that spread): the shift then carries part of the tail
    the normal carry-over under-reaches (the heavy binding set's over-calls grew, 18 -> 39 values beyond 1.5 points
    of 120, stop 55)."""
    return bool(binding.shift < parent.shift and binding.skew <= parent.spread)


def shift_raised_to_reference(parent: ReferenceBinding, binding: ReferenceBinding) -> bool:
    """The skew carry raises the parent's shift (``parent.shift``, read against the unstained control, linear units)
    to the ``skew_reference``'s (``binding.shift``) floored at 0, where the parent's lies below that. Nonspecific
    binding adds to every cell of the tube alike and spreading adds no signal on average, so the parent's negatives
    lie at least as high as the marker-poor reference's and no lower than the control's; a parent's mode read below
    them is its broad negative peak (the T cells' stains spread into the marker's detector: width 3-4x the
    control's) read low, and the carry moved the control's percentile down with it (CD4+PD1+ +3.4 and +4.6 points over
    the ideal-FMO reference on development products V211034 and V211006: shifts -76 and -32 linear units, non_T's
    +7 and +32; class A of stops 60 and 62, benchmarks/README.md). Its lower-side spread is then read around the
    raised shift (:func:`lower_spread_at`): below the low mode it misses the peak's lower flank."""
    return bool(parent.shift < max(binding.shift, 0.0))


def skew_carry_binding(control: np.ndarray, stained: np.ndarray, binding: ReferenceBinding, transform: Any, *,
                       max_shift: float = MAX_SHIFT, on_reference: bool | None = None) -> ReferenceBinding | None:
    """The signal :func:`skew_carried_cut` adds to the unstained ``control``'s events: the ``stained`` parent's own
    binding read against the control (:func:`reference_binding`: shift and lower-side spread), its shift replaced by
    the reference population's where :func:`reference_shift_carried` says so, with the reference population's right
    skew (``binding.skew``, read on its stained events vs the same control) as its skew, linear units
    (:attr:`ReferenceBinding.total_spread` the carry's SD; ``mode_shift`` the parent's own shift, linear units, where
    the reference's replaced it, else NaN); None when the parent's binding cannot be read. ``on_reference``: that
    choice made already (on all events, kept on a bootstrap resample: :func:`skew_cut_error`), None to make it here.
    Where the parent's shift lies below the reference's, or below 0 (:func:`shift_raised_to_reference`), the carry
    takes the reference's shift floored at 0 and the parent's lower-side spread read around it
    (:func:`lower_spread_at`), ``raised_from`` the parent's own shift (decided on every call, a resample's too)."""
    parent = reference_binding(control, stained, transform, max_shift=max_shift)
    if parent is None:
        return None
    if shift_raised_to_reference(parent, binding):
        shift = max(binding.shift, 0.0)
        spread = lower_spread_at(control, stained, transform, shift)
        return ReferenceBinding(shift, spread if math.isfinite(spread) else parent.spread, binding.skew,
                                raised_from=parent.shift)
    if reference_shift_carried(parent, binding) if on_reference is None else on_reference:
        return ReferenceBinding(binding.shift, parent.spread, binding.skew, mode_shift=parent.shift)
    return ReferenceBinding(parent.shift, parent.spread, binding.skew)


def spread_at_reference_cut(control: np.ndarray, stained: np.ndarray, binding: ReferenceBinding, transform: Any,
                            percentile: float) -> float:
    """The skew carry on the ``skew_reference``'s shift (:func:`skew_carried_cut` with ``on_reference``) with the
    parent's lower-side spread read around that shift (:func:`lower_spread_at`) instead of around its own negative
    mode, transformed units; NaN where that spread cannot be read. A PD1-rich parent's dim positives pull its mode up
    and the events below it take in the negatives' upper side, so the carry's own spread reads too wide and its cut
    too high (V174329's CD8+PD1+ 4.25 points of CD8 under the ideal-FMO reference, stop 55); around the reference's
    shift the spread misses the widening a T-cell parent's broader noise gives its own mode (on drawn products it
    lowered cuts within tolerance by 0.5-2.6 points, stop 56): a bound for ``checks.place_and_check``, not the cut."""
    spread = lower_spread_at(control, stained, transform, binding.shift)
    if not np.isfinite(spread):
        return float("nan")
    return carried_skew_cut(control, ReferenceBinding(binding.shift, spread, binding.skew), transform, percentile)


def skew_carried_cut(control: np.ndarray, stained: np.ndarray, binding: ReferenceBinding, transform: Any,
                     percentile: float, *, max_shift: float = MAX_SHIFT, on_reference: bool | None = None) -> float:
    """The unstained ``control``'s ``percentile`` carried to the ``stained`` parent with the parent's own binding read
    against it (:func:`reference_binding`: shift and lower-side spread) and the reference population's right skew
    (``binding.skew``, read on its stained events vs the same control) added in quadrature to that spread
    (:func:`skew_carry_binding`, :func:`additive_threshold`; the reference's shift for the parent's where
    :func:`reference_shift_carried`, or as ``on_reference`` says: :func:`skew_carry_binding`): the carry-over of
    :func:`place_fmo_anchored`'s ``skew_binding``. Transformed units in and out; NaN when the parent's binding cannot
    be read."""
    carry = skew_carry_binding(control, stained, binding, transform, max_shift=max_shift, on_reference=on_reference)
    return carried_skew_cut(control, carry, transform, percentile)


def carried_skew_cut(control: np.ndarray, carry: ReferenceBinding | None, transform: Any, percentile: float) -> float:
    """The unstained ``control``'s ``percentile`` carried over with ``carry`` (:func:`skew_carry_binding`'s signal:
    its shift and :attr:`ReferenceBinding.total_spread`, :func:`additive_threshold`), transformed units; NaN without
    one."""
    if carry is None:
        return float("nan")
    carried = additive_threshold(_finite_linear(control, transform), carry.shift, carry.total_spread, percentile)
    return float(transform.apply(np.array([carried]))[0])


OUTSIDE_SHARE = 50.0
"""% of a fallback parent's cells outside the ``skew_reference`` (stated marker-negative, ``outside_cells: negative``)
above a cut anchored on the unstained control beyond which the cut lies inside their bulk: :func:`place_fmo_anchored`
moves it (``outside_values``) and ``checks.fallback_outside_check`` flags a cut still there."""
OUTSIDE_POINTS = 1.5
"""Percentage points of the stained parent that those cells above the cut must also exceed (issue 13's tolerance of
the dim markers)."""
OUTSIDE_PEAK_PROMINENCE = 0.1
"""Prominence (x the highest density) of the peaks of the cells outside the reference among which
:func:`outside_valley` takes the lowest as their negative peak: a subpopulation, not a noise bump of their tails."""


def outside_reading(stained: np.ndarray, outside: np.ndarray, cut: float) -> dict[str, float]:
    """The parent's cells outside the ``skew_reference`` against a cut anchored on the unstained control (transformed
    units; ``stained``: the parent's stained events, ``outside``: those of them outside the reference, the cells it
    leaves out because other stains spill or spread into the marker, e.g. CD56's CD8+ T cells under CD8's tandem
    spillover, which the unstained control lacks): ``outside_pct`` (% of ``outside`` above ``cut``),
    ``outside_median`` and ``outside_points`` (those cells above the cut as percentage points of the parent); NaN
    without outside events."""
    x = np.asarray(outside, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(np.count_nonzero(np.isfinite(stained)))
    if x.size == 0 or n == 0:
        return {"outside_pct": float("nan"), "outside_median": float("nan"), "outside_points": float("nan")}
    above = int(np.count_nonzero(x > cut))
    return {"outside_pct": 100.0 * above / x.size, "outside_median": float(np.median(x)), "outside_points": 100.0 * above / n}


def outside_inside(reading: dict[str, float]) -> bool:
    """The cut lies inside the bulk of the cells outside the reference (:func:`outside_reading`): more than
    :data:`OUTSIDE_SHARE` % of them, and more than :data:`OUTSIDE_POINTS` points of the parent, above it."""
    return bool(reading["outside_pct"] > OUTSIDE_SHARE and reading["outside_points"] > OUTSIDE_POINTS)


def outside_peak(density: Density, outside: np.ndarray, bandwidth: float) -> float | None:
    """The negative peak of the stained parent's cells outside the ``skew_reference`` (transformed units): the lowest
    peak of their own density (``bandwidth``, on ``density``'s grid) of prominence at least
    :data:`OUTSIDE_PEAK_PROMINENCE` of its highest; None with fewer than 20 finite events or no such peak."""
    x = np.asarray(outside, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 20:
        return None
    step = float(density.grid[1] - density.grid[0])
    own = smoothed_density(x, bandwidth, float(density.grid[0] - 0.5 * step), float(density.grid[-1] + 0.5 * step))
    low, _ = own.peaks(OUTSIDE_PEAK_PROMINENCE)
    return float(own.grid[low[0]]) if low.size else None


ONE_SD_BELOW = float(ndtr(-1.0))
"""Share of a normal population lying more than one SD below its mean (0.1587): :func:`lower_side_sd` reads a
group's SD at this share of it below its peak."""


def lower_side_sd(values: np.ndarray, peak: float) -> float:
    """The SD of a group's negatives read on their lower side alone (transformed units): ``peak - x_(k)``, x_(k) the
    k-th lowest of its finite events below ``peak``, k = :data:`ONE_SD_BELOW` x twice their number (a normal symmetric
    about its mode holds twice the events below it, 15.87 % of them more than one SD below). Positives all lie above
    the peak, so they do not widen it; unlike the extreme order statistic of stop 55's mirror (``2 x peak - x_(k)``,
    k = 0.5 % of twice the events below the peak) it rests on the group's bulk, not on its few lowest events. NaN with fewer than 20 events below the peak."""
    x = np.asarray(values, dtype=np.float64)
    below = np.sort(x[np.isfinite(x) & (x < peak)])
    if below.size < 20:
        return float("nan")
    return float(peak - below[min(int(ONE_SD_BELOW * 2 * below.size), below.size - 1)])


def pooled_normal_cut(groups: list[tuple[float, float, int]], percentile: float) -> float:
    """The ``percentile`` of a mixture of normal groups ``(mean, sd, events)`` weighted by their events (transformed
    units): the cut c with sum_i n_i / N x P(N(mean_i, sd_i) > c) = (100 - ``percentile``) / 100 (:func:`brentq`
    between the lowest mean, where the sum is at least 1/2, and the highest mean + 10 SD). Groups without a finite
    mean and a positive SD are left out; NaN without any."""
    from scipy.optimize import brentq   # imported where used, as minimize is: scipy.optimize costs ~0.14 s to import

    usable = [(m, s, n) for m, s, n in groups if math.isfinite(m) and s > 0 and n > 0]
    if not usable:
        return float("nan")
    total = float(sum(n for _, _, n in usable))
    tail = (100.0 - percentile) / 100.0

    def excess(c: float) -> float:
        return sum(n / total * float(ndtr((m - c) / s)) for m, s, n in usable) - tail

    return float(brentq(excess, min(m for m, _, _ in usable), max(m + 10.0 * s for m, s, _ in usable)))


def pooled_lower_sides(density: Density, groups: tuple[np.ndarray, ...], bandwidth: float,
                       percentile: float) -> tuple[float, list[tuple[float, float, int]]]:
    """The stained parent's negatives as the normal groups its cells make, each read on its lower side (transformed
    units): (the ``percentile`` of their mixture, :func:`pooled_normal_cut`; each group's (peak, SD, events), NaN
    where it cannot be read, and then left out of the mixture). ``groups``: the parent's events split by the
    ``skew_reference`` (CD56's: the cells inside ``not_CD8`` and the CD8+ T cells outside it, whose CD8 tandem
    spillover sets them higher): each group's negative peak is the lowest peak of its own density
    (:func:`outside_peak`, on ``density``'s grid) and its SD :func:`lower_side_sd`. Under heavy nonspecific
    binding every group's negatives are shifted and widened, which a cut anchored on the unstained control cannot
    see; their lower sides show it, and the positives (CD56: NK cells inside, NKT among the CD8+ T cells) all lie
    above the peaks. NaN when no group can be read."""
    read = []
    for values in groups:
        peak = outside_peak(density, values, bandwidth)
        mode = float("nan") if peak is None else float(peak)
        read.append((mode, lower_side_sd(values, mode) if peak is not None else float("nan"),
                     int(np.count_nonzero(np.isfinite(values)))))
    return pooled_normal_cut(read, percentile), read


def outside_valley(density: Density, mode: float, min_prominence: float) -> tuple[float, bool] | None:
    """The stained parent's first density valley above the negative peak ``mode`` of its cells outside the
    ``skew_reference`` (transformed units): (the valley, whether a prominent peak of the parent follows the valley),
    None when the parent's density only falls above it.

    Their negative peak (:func:`outside_peak`): the lowest peak of their own density of
    prominence at least :data:`OUTSIDE_PEAK_PROMINENCE` of its highest: the strategy states them marker-negative,
    so their bulk is the spillover the unstained control lacks (CD56: the CD8+ T cells under CD8's tandem
    spillover), and their positives (CD8+ NKT), however many, lie above it (their median would lie among them once
    they are half). The valley: the lowest density of the parent (``density``) between its prominent peak
    (``min_prominence``) nearest to that negative peak and the next prominent peak above it, the parent's
    positives; without such a peak (few positives make a shoulder on the negatives' upper side) the parent's first
    local density minimum above that peak, not prominent (the caller flags it)."""
    peaks, _ = density.peaks(min_prominence)
    if peaks.size == 0:
        return None
    start = int(np.argmin(np.abs(density.grid[peaks] - mode)))
    if start + 1 < peaks.size:
        return float(density.grid[density.valley(int(peaks[start]), int(peaks[start + 1]))]), True
    rises = np.diff(density.values[int(peaks[start]):])   # rises[k]: from index peaks[start] + k to the next
    turns = np.flatnonzero((rises[:-1] < 0) & (rises[1:] > 0))   # a local minimum at peaks[start] + k + 1
    if turns.size == 0:
        return None
    return float(density.grid[int(peaks[start]) + int(turns[0]) + 1]), False


def reference_cut(fmo_values: np.ndarray, binding: ReferenceBinding, transform: Any, percentile: float,
                  skewed: bool | None = None) -> float:
    """The parent's FMO ``percentile`` carried over with ``binding`` (``relative_reference`` of
    :func:`place_fmo_anchored`, :func:`reference_carried`, ``skewed`` as there: the reference's shift
    and spread sqrt(spread^2 + skew^2)), transformed units."""
    lin = reference_carried(upper_events(_finite_linear(fmo_values, transform), percentile), binding, percentile,
                            skewed)
    return float(transform.apply(np.array([lin]))[0])


def reference_lognormal_cut(fmo_values: np.ndarray, binding: ReferenceBinding, transform: Any,
                            percentile: float) -> float:
    """The parent's FMO ``percentile`` carried over with the other plausible shape of the same
    reading, transformed units: a log-normal nonspecific signal (binding per cell is roughly
    log-normal, as staining intensities are) whose median is ``binding.shift`` and whose SD is the
    normal model's, sqrt(spread^2 + skew^2) (:func:`lognormal_offsets`). Its upper tail is heavier,
    so it lies above :func:`reference_cut` when the signal is broad for its size. Both are taken at
    the same 32 normal quantiles (:data:`SIGNAL_QUANTILES`), so they differ by the shape alone. Used
    only as a sensitivity check (``checks``: ``tail_points``): the reference's reads do not tell the
    two shapes apart, the reference's own positives sit in its upper tail. NaN without a positive
    shift or with fewer than 20 parent FMO events."""
    offsets = lognormal_offsets(binding.shift, binding.total_spread)
    f = _finite_linear(fmo_values, transform)
    if offsets is None or f.size < 20:
        return float("nan")
    lin = upper_offset_threshold(upper_events(f, percentile, offsets.size), offsets, percentile)
    return float(transform.apply(np.array([lin]))[0])


def reference_quantile_cut(fmo_values: np.ndarray, reference_fmo: np.ndarray, reference_stained: np.ndarray,
                           transform: Any, percentile: float) -> float:
    """The parent's FMO ``percentile`` moved by what the full stain does to the same percentile of a
    matched marker-poor reference population of the same tubes (``reference_carry: quantile``),
    transformed units: ``P(parent FMO) + P(reference stained) - P(reference FMO)`` in compensated
    linear units, P = the ``percentile``. No model of the nonspecific signal's shape: the reference's
    own stained tail is the estimate of the parent's negatives' tail (an internal negative control),
    and its FMO corrects for what differs between the two populations without the antibody. Valid
    when the reference holds fewer positives than 100 - ``percentile`` % and its cells are like the
    parent's (the same stains spilling into the detector, similar size and autofluorescence, e.g.
    CD3+CD4- T cells for FoxP3 in CD4+ T cells). NaN with fewer than :data:`MIN_REFERENCE_EVENTS`
    finite reference events (either tube) or fewer than 20 parent FMO events."""
    f, rf, rs = (_finite_linear(v, transform) for v in (fmo_values, reference_fmo, reference_stained))
    if rf.size < MIN_REFERENCE_EVENTS or rs.size < MIN_REFERENCE_EVENTS or f.size < 20:
        return float("nan")
    lin = quantiles.percentile(f, percentile) + quantiles.percentile(rs, percentile) - quantiles.percentile(rf, percentile)
    return float(transform.apply(np.array([lin]))[0])


MIN_TAIL_EVENTS = 5000
"""Fewest reference events (either tube) :func:`reference_tail_cut` fits a binding tail on: on 500 and
2,000 the fit's noise let it explain a 5 % contaminated reference's cut more than 3 points off (stop
43); the TIL references (``non_CD4_T``) hold 5,700-14,000."""


def reference_tail_cut(fmo_values: np.ndarray, reference_fmo: np.ndarray, reference_stained: np.ndarray,
                       transform: Any, percentile: float) -> float:
    """:func:`reference_quantile_cut` with the reference's stained ``percentile`` predicted by a binding
    tail instead of read off its events, transformed units: a log-normal binding plus a normal spreading
    (:func:`lognormal_fitted_cut`) fitted to the body of the reference's stained events (its
    :data:`FIT_PERCENTILES`, all of them taken as negative: the reference is a marker-poor population,
    and 1-5 % positives barely move its 5-70th percentiles), started from the normal model fitted the
    same way (:func:`fitted_carry`). The cut a binding tail alone explains: positives in the reference
    raise :func:`reference_quantile_cut` above it, a heavy binding tail does not. NaN when either
    cannot be fitted (fewer than :data:`MIN_TAIL_EVENTS` reference events, fewer than 20 parent FMO
    events, or no binding: the median did not move up)."""
    f, rf, rs = (_finite_linear(v, transform) for v in (fmo_values, reference_fmo, reference_stained))
    if rf.size < MIN_TAIL_EVENTS or rs.size < MIN_TAIL_EVENTS or f.size < 20:
        return float("nan")
    normal = fitted_carry(rf, rs, transform, percentile, 1.0)
    if normal is None:
        return float("nan")
    predicted = _linear_lognormal_cut(rf, rs, transform, percentile, FitCarry(normal[0], normal[1], normal[2], 1.0))
    if not np.isfinite(predicted):
        return float("nan")
    lin = quantiles.percentile(f, percentile) - quantiles.percentile(rf, percentile) + float(transform.inverse(np.array([predicted]))[0])
    return float(transform.apply(np.array([lin]))[0])


def _finite_float(values: np.ndarray) -> np.ndarray:
    """The finite ``values`` as float64, in their order (the events a bootstrap resamples)."""
    v = np.asarray(values, dtype=np.float64)
    return v[np.isfinite(v)]


def reference_cut_error(fmo_values: np.ndarray, reference_fmo: np.ndarray, reference_stained: np.ndarray,
                        transform: Any, percentile: float, *, max_shift: float = MAX_SHIFT,
                        resamples: int = REFERENCE_RESAMPLES, confidence: float = CONFIDENCE,
                        carry: str = "additive", skewed: bool | None = None) -> float:
    """Sampling error of the reference carry-over (:func:`reference_cut`), transformed units: the
    half-width of its ``confidence`` interval, NaN when it cannot be measured.

    Bootstrap: the events of the reference's FMO and stained tubes and of the parent's FMO are each
    drawn with replacement (``resamples`` times, a fixed seed: deterministic), the binding read again
    on each resample (:func:`reference_binding`) and the cut carried over; the half-width is the
    normal quantile of ``confidence`` times the resample cuts' robust SD (1.4826 x their median
    absolute deviation: a resample whose negative-peak search jumps to another mode does not widen
    it). Each resample keeps every event count, so a reference of a few hundred events is measured
    as it is read (interleaved folds of it held 200-400 events each, and their Student t on 1-2
    degrees of freedom, 12.7 or 4.3, made a 2-fold interval arbitrary: too wide or too narrow by
    chance). ``carry`` ``quantile``: the resample cuts are :func:`reference_quantile_cut`'s instead.
    ``skewed``: the carry-over's shape as chosen on all events (:attr:`ReferenceBinding.right_skewed`),
    kept on every resample (a resample's own choice would add the jump between the two shapes to the
    noise). The reading's noise only: a reference whose binding differs from the parent's is not
    seen here. NaN with fewer than :data:`MIN_REFERENCE_EVENTS` reference events (either tube) or 20
    parent FMO events, or fewer than 2 resamples read."""
    f, rf, rs = _finite_float(fmo_values), _finite_float(reference_fmo), _finite_float(reference_stained)
    if min(rf.size, rs.size) < MIN_REFERENCE_EVENTS or f.size < 20:
        return float("nan")

    def cut_of(fb: np.ndarray, rfb: np.ndarray, rsb: np.ndarray) -> float | None:
        if carry == "quantile":
            cut = reference_quantile_cut(fb, rfb, rsb, transform, percentile)
            return cut if np.isfinite(cut) else None
        binding = reference_binding(rfb, rsb, transform, max_shift=max_shift)
        return None if binding is None else reference_cut(fb, binding, transform, percentile, skewed)

    return _bootstrap_half_width((f, rf, rs), cut_of, resamples, confidence)


def _bootstrap_half_width(samples: tuple[np.ndarray, ...], cut_of: Callable[..., float | None], resamples: int,
                          confidence: float) -> float:
    """The half-width of a bootstrap ``confidence`` interval of a cut (transformed units): each of ``samples`` drawn
    with replacement, keeping its event count (``resamples`` times, a fixed seed: deterministic), ``cut_of`` the
    resampled arrays' cut (None: not read on that resample, left out), :func:`_robust_half_width` of those cuts."""
    rng = np.random.default_rng(0)
    cuts = []
    for _ in range(resamples):
        cut = cut_of(*(v[rng.integers(0, v.size, v.size)] for v in samples))
        if cut is not None:
            cuts.append(cut)
    return _robust_half_width(cuts, confidence)


def _robust_half_width(cuts: list[float], confidence: float) -> float:
    """The half-width of a ``confidence`` interval from bootstrap resample ``cuts`` (transformed units): the normal
    quantile of ``confidence`` times their robust SD (1.4826 x their median absolute deviation: a resample whose
    negative-peak search jumps to another mode does not widen it); NaN with fewer than 2 cuts."""
    if len(cuts) < 2:
        return float("nan")
    mad = float(np.median(np.abs(np.asarray(cuts) - np.median(cuts))))
    return 1.4826 * mad * float(ndtri(0.5 + confidence / 2))


def skew_cut_error(control: np.ndarray, stained: np.ndarray, reference_stained: np.ndarray, transform: Any,
                   percentile: float, *, floor: float = -np.inf, max_shift: float = MAX_SHIFT,
                   resamples: int = REFERENCE_RESAMPLES, confidence: float = CONFIDENCE,
                   on_reference: bool | None = None) -> float:
    """Sampling error of the skew carry-over (:func:`skew_carried_cut`, the cut of :func:`place_fmo_anchored`'s
    ``skew_binding`` anchored on the unstained ``control`` for want of the FMO), transformed units: the half-width of
    its ``confidence`` interval, NaN when it cannot be measured.

    Bootstrap, as :func:`reference_cut_error`: the events of the ``control``, of the ``stained`` parent and of the
    ``skew_reference`` population's stained tube (``reference_stained``, read against the control for its right
    skew) are each drawn with replacement (``resamples`` times, a fixed seed: deterministic), the reference's skew
    read again against the resampled control (:func:`reference_binding`), the parent's own shift and lower-side
    spread again and the control's percentile carried over with both (:func:`skew_carried_cut`), the cut taken as
    the placement takes it, not below ``floor`` (the rule's cut it was raised from, ``skew_raised_from``: a
    resample whose skew raises less leaves the gate there; -inf for a cut that replaced a higher one); the
    half-width is :func:`_robust_half_width` of those cuts. ``on_reference``: whose shift the carry takes, as chosen
    on all events (:func:`reference_shift_carried`; ``skew_shift`` in :func:`place_fmo_anchored`'s diagnostics),
    kept on every resample as :func:`reference_cut_error` keeps ``skewed`` (a resample's own choice adds the jump
    between the two shifts' cuts to the noise: on V174315's CD8+PD1+ 7 of 16 took the other, stop 55); None: each
    resample chooses. The reading's noise only: a reference whose binding tail differs from the parent's is not seen
    here. NaN with fewer than :data:`MIN_REFERENCE_EVENTS` events in the control or the
    reference, fewer than 20 in the parent, or fewer than 2 resamples read."""
    c, s, rs = _finite_float(control), _finite_float(stained), _finite_float(reference_stained)
    if min(c.size, rs.size) < MIN_REFERENCE_EVENTS or s.size < 20:
        return float("nan")

    def cut_of(cb: np.ndarray, sb: np.ndarray, rsb: np.ndarray) -> float | None:
        binding = reference_binding(cb, rsb, transform, max_shift=max_shift)
        cut = (skew_carried_cut(cb, sb, binding, transform, percentile, max_shift=max_shift, on_reference=on_reference)
               if binding is not None else float("nan"))
        return max(cut, floor) if np.isfinite(cut) else None

    return _bootstrap_half_width((c, s, rs), cut_of, resamples, confidence)


def place_fmo_anchored(
    fmo_values: np.ndarray,
    stained_values: np.ndarray,
    dim: str,
    *,
    rule: str = "anchored",
    percentile: float = 99.5,
    source_file: str = "",
    min_events: int = 200,
    bandwidth: float = 0.02,
    min_prominence: float = 0.01,
    min_separation: float = 0.25,
    max_shift: float = MAX_SHIFT,
    shift_tolerance: float = 0.02,
    width_tolerance: float = 1.25,
    valley_depth: float = 0.5,
    width_side: str = "lower",
    transform: Any = None,
    reference: ReferenceBinding | None = None,
    reference_quantile: float = float("nan"),
    fit_reference: tuple[np.ndarray, np.ndarray] | None = None,
    control_name: str = "FMO",
    skew_binding: ReferenceBinding | None = None,
    outside_values: np.ndarray | None = None,
    inside_values: np.ndarray | None = None,
    reference_cap_points: float = math.inf,
    dense_cut_ratio: float = 0.45,
) -> Placement:
    """Positive gate ``x > threshold``: the FMO sets the scale, the stained tube is the evidence (``control_name``: the
    control's name in the ``note`` and flags, ``unstained control`` where that stands in for the FMO).

    Transformed units throughout. Candidates, all recorded in ``diagnostics``:

    * ``fmo_threshold`` - the FMO's ``percentile`` in the parent (the study's plain rule);
    * ``relative_threshold`` - the same percentile carried over to the stained tube's negative
      peak (modes = the FMO's highest density peak and the stained tube's peak nearest to it, on
      densities smoothed to at least half the FMO's negative width). With ``transform`` (the
      dimension's ``tilpheno.transforms`` transform) in compensated linear units under an
      additive model, nonspecific binding and spreading adding to every cell
      (:func:`_carried_over`, :func:`additive_threshold`): ``relative_low`` / ``relative_high``
      are the carry-overs with the spread measured on the negative peak's lower side (free of
      positives, blind to a right-skewed nonspecific tail) and on its upper side (follows that
      tail, widened by positives next to the negatives); ``width_side`` picks ``lower``,
      ``upper``, ``mid`` (halfway between them) or ``fit`` (:func:`two_step_fit`, no tolerance test;
      ``fit_threshold``, ``fit_shift``, ``fit_spread``, ``fit_share``, ``fit_log_sd``, ``fit_normal`` recorded;
      with ``fit_reference``, a reference population's (FMO, stained) events, as the strategy's ``skew_reference``
      gives them, the fit is made on them and carried over the parent's FMO events, :func:`reference_fit`;
      ``fit_on`` records ``reference`` or, when it cannot be fitted there, ``parent``); ``relative_carry``
      names the carry-over the relative threshold is (``reference``, ``fit`` or the ``width_side``
      read). With ``reference`` (a
      :class:`ReferenceBinding`, :func:`reference_binding`, as the strategy's ``skew_reference``
      gives it) the additive model is read on a marker-poor population of the same tube instead: ``relative_reference`` adds the
      reference's shift and the spread sqrt(reference lower-side spread^2 + reference skew^2) to
      the parent's FMO events (part of the way to a log-normal signal for a right-skewed read,
      :func:`reference_carried`) (the gated parent's own mode and lower side are pulled up by its dim
      positives). With ``reference`` and a finite ``reference_quantile`` (the strategy's
      ``reference_carry: quantile``, :func:`reference_quantile_cut`, computed by the caller on the
      reference's events) that cut is ``relative_reference`` instead of the additive carry-over. An additive
      reference cut (no ``reference_quantile``) that won and lies more than ``reference_cap_points`` percentage
      points of the stained parent above ``relative_high`` (the parent's own upper-side carry-over, which its
      nonspecific tail and its positives next to the negatives can only raise: the reference reads more binding
      than the parent shows: PD1+ cells in the reference read as a binding tail) is moved down by twice its
      excess over that limit, to ``relative_high`` itself from twice the limit on (:func:`reference_capped_cut`;
      ``reference_capped_from`` the reference cut it replaced; ``gates.checks`` passes its ``uncertain_points``, 3,
      records :func:`reference_above_points` of that cut and flags the gate; stop 59).
      Without ``transform``: ``stained mode +
      (fmo_threshold - FMO mode) x stained width / FMO width`` (lower-half RMS widths);
    * ``valley_threshold`` - the density minimum between the stained negative peak and its highest
      peak at least ``min_separation`` above it or above the relative threshold (the FMO
      percentile when unshifted): a peak beyond the carried negative bulk is a positive one
      (recorded for every rule).

    Rules (``rule``): ``percentile`` = always the FMO percentile (the other candidates are still
    recorded, for the self-checks). ``relative`` = the relative threshold when the stained
    negatives are shifted (``|shift|`` above ``shift_tolerance`` and a quarter of the FMO's
    negative width) or widened (width ratio beyond ``width_tolerance`` either way) or when
    the reference population's negatives are (``relative_reference``) or, whatever the
    tolerances, when the cut is ``reference_quantile`` (it measures the percentile's own move, which
    binding too small to move the mode and lower side past the tolerances still makes), else the FMO
    percentile: dim markers (PD1, FoxP3) whose positives overlap the negatives. ``anchored``
    (default) = the valley when it is not below the relative threshold (the FMO's negative bulk
    carried to the stained negatives; the FMO percentile when unshifted) and either at most
    ``valley_depth`` x the lower of its two peaks (clearly bimodal) or at most ``valley_depth``
    x the density at that threshold (the carried-over cut lies inside the negatives); otherwise
    as ``relative``. Without a stained negative peak near the FMO's (none in :func:`negative_peak_window`:
    the parent is all positive, or its negatives lie beyond that reach) the FMO percentile is used: one
    population is called against its control, the parent's events above the FMO percentile positive
    (none when the parent lies at or below it, as when its negatives lie below the FMO's); with ``reference`` (its negatives moved beyond the tolerances, or a
    ``reference_quantile``) and any rule but ``percentile`` the reference carry-over instead, which reads
    nothing on the parent's stained events (a PD1-rich parent's dim positives can merge its negative peak away). The threshold is kept inside the stained data's range.
    A log-normal fit's cut (``width_side: fit`` under heavy binding, :func:`two_step_fit`) gives way to
    any valley not below the lower of it and ``relative_low``, whatever its depth, its positive peak
    looked for above that lower one too (the fit can climb past a dim positive peak).
    ``winner`` names the candidate used. ``shift`` is in transformed units, ``width_ratio`` on
    the lower-side widths (linear units with ``transform``).
    ``skew_binding`` (a cut anchored on the product's unstained control for want of the FMO,
    ``phenotype._TubeKindRun._on_unstained``: the ``skew_reference`` population's binding read against that
    control): the control lacks the antibody's nonspecific binding, whose right-skewed tail the parent's own
    carry-over does not follow, so with ``transform`` and any rule but ``percentile`` the cut is at least
    ``skew_cut`` (:func:`skew_carried_cut`); where that raised it, ``winner`` is ``skew_carry`` and
    ``skew_raised_from`` the cut it replaced. ``skew_cut``, ``skew_extra`` (the reference's skew, linear units)
    and ``skew_points`` (% of the stained parent between the rule's cut and a ``skew_cut`` above it, else 0) are
    recorded with it. Where the carry takes the reference's shift for the parent's own
    (:func:`reference_shift_carried`: ``skew_shift`` and ``skew_parent_shift`` recorded, linear units) it also
    replaces a lower ``fmo_relative`` cut, the parent's own carry-over read on the shift its dim positives pull up
    (not a valley): ``winner`` ``skew_carry``, ``skew_raised_from`` the cut it replaced, ``skew_lowered_points`` the %
    of the stained parent between the two. Where the parent's shift lies below the reference's or below 0, the carry
    takes the reference's shift floored at 0 instead, with the parent's lower-side spread read around it
    (:func:`shift_raised_to_reference`: ``skew_reference_shift`` and ``skew_own_shift`` recorded, linear units).
    ``outside_values`` (the same fallback, where the strategy states the parent's cells outside the
    ``skew_reference`` marker-negative, ``outside_cells: negative``: those cells' stained events): the control lacks
    the spillover other stains put into them (CD56: CD8's tandem into the CD8+ T cells), and no valley or carry-over
    on the parent tells that spillover peak from a positive one, so when the cut (after the skew raise) lies inside
    their bulk (:func:`outside_inside`) and :func:`outside_valley` finds a valley above it, the cut moves up to that
    valley, the parent's first above their negative peak: ``winner`` ``outside_valley``, ``outside_raised_from`` the
    cut it replaced, ``outside_cut`` the valley (recorded whenever the cut lay inside their bulk; NaN when no valley
    was found and the cut stayed), ``outside_peak`` their negative peak, ``outside_prominent`` whether a prominent
    peak of the parent follows the valley, ``outside_moved_points`` (% of the stained parent between the two cuts).
    The cut moves up to the parent's negatives read on their lower sides instead (:func:`pooled_lower_sides` of
    ``inside_values``, the parent's events inside the ``skew_reference``, and ``outside_values``) where that lies
    above it, and below the valley where a prominent peak of the parent follows it (dim positives lie below a
    valley), at any height where no prominent peak follows the valley or no valley lies above their peak (their
    positives a shoulder or a tail on their upper side: no valley tells them from the negatives): winner
    ``outside_pooled``, ``pooled_cut``, the groups' peaks and SDs as ``pooled_inside_peak`` etc. (stop 59; stop 55
    moved a cut with no valley to their peak mirrored about its lower side, stop 54 to the valley, both above the
    parent's negatives' percentile: NKT under-called by up to 4 points). A log-normal fit's
    cut (``width_side: fit``, ``fit_log_sd`` > 0; the fit's share grows with its cut and climbs past the positives
    next to the outside cells' upper side) above the parent's negatives read on their lower sides moves down to that
    cut (winner ``outside_pooled``, ``outside_lowered_from`` the fit's cut; stop 58, before it the outside cells'
    peak mirrored, whose extreme lower order statistic under-called NKT under heavy CD56 binding). So does a fit's
    cut the skew carry lowered (its ``skew_lowered_points``): the carry took the reference's shift for the parent's
    own as pulled up by dim positives, but the strategy states the cells outside the reference negative, and their
    spillover is what raises the parent's mode (NKT over-called by up to 3.5 points under heavy CD56 binding, stop 58).
    A skew carry's cut that none of those moves took is bounded by those negatives too (:func:`_skew_bounded`,
    stop 60): moved up to them from inside the parent's dense negative peak (density at the cut above
    ``dense_cut_ratio`` of the peak's, the strategy's ``dense_cut_ratio``, default 0.45, the ``cut_in_dense_region`` check's limit), and a raised one down to them
    from above where they lie at or above the cut it was raised from (the over-raise) or that cut was a log-normal
    fit's; ``skew_bounded_from`` records the carry's cut.
    """
    if rule not in FMO_RULES:
        raise GatingError(f"FMO gate on {dim!r}: rule must be one of {FMO_RULES}, got {rule!r}")
    if width_side not in WIDTH_SIDES:
        raise GatingError(f"FMO gate on {dim!r}: width_side must be one of {', '.join(WIDTH_SIDES)}, got {width_side!r}")
    base = place_fmo_threshold(fmo_values, dim, percentile=percentile, source_file=source_file, min_events=min_events,
                               control_name=control_name)
    t_fmo = float(base.diagnostics["threshold"])
    x = _finite(stained_values, f"{dim}: stained tube parent", 20)
    fmo_x = _finite(fmo_values, f"{dim}: FMO parent", 20)
    fmo_tails, tails = _tails(fmo_x), _tails(x)   # one percentile pair per tube for its densities at both bandwidths
    fmo, fmo_coarse = fmo_negative_peak(fmo_x, bandwidth, fmo_tails)
    # modes of broad negative peaks on a density smoothed to half the FMO's negative width
    mode_bw = max(bandwidth, 0.5 * fmo.width)
    if mode_bw > bandwidth:
        fmo, fmo_coarse = fmo_negative_peak(fmo_x, mode_bw, fmo_tails)   # the FMO's density at mode_bw
    density = smoothed_density(x, bandwidth, *_padded_range(x, bandwidth, tails))
    coarse = smoothed_density(x, mode_bw, *_padded_range(x, mode_bw, tails)) if mode_bw > bandwidth else density
    neg = stained_negative_peak(x, fmo, coarse, max_shift=max_shift, min_prominence=min_prominence)
    diagnostics: dict[str, Any] = {
        **base.diagnostics, "rule": rule, "fmo_threshold": t_fmo, "fmo_mode": fmo.mode, "fmo_width": fmo.width,
        "stained_mode": neg.mode, "stained_width": neg.width, "shift": float("nan"), "width_ratio": float("nan"),
        "relative_threshold": float("nan"), "valley_threshold": float("nan"), "valley_ratio": float("nan"),
    }
    # the FMO's and the stained parent's (finite) events in linear units, converted once for the fit
    # and the carry-over, the FMO's sorted once
    f_sorted, linear = None, None
    if width_side == "fit" and transform is not None:
        linear = (transform.inverse(fmo_x), transform.inverse(x))
        f_sorted = np.sort(linear[0])
    fitted, fit_on = None, "parent"
    if linear is not None and f_sorted is not None and fit_reference is not None:
        fitted, fit_on = reference_fit(*fit_reference, transform, percentile, f_sorted), "reference"
    if linear is not None and fitted is None:
        fitted, fit_on = two_step_fit(fmo_x, x, transform, percentile, t_fmo, f_sorted, linear[1]), "parent"
    if fitted is not None:
        diagnostics.update(fit_threshold=fitted.cut, fit_shift=fitted.shift, fit_spread=fitted.spread,
                           fit_share=fitted.share, fit_log_sd=fitted.log_sd, fit_normal=fitted.normal_cut,
                           fit_on=fit_on)
    if not neg.found and fitted is not None:
        winner, cut = "fmo_relative", fitted.cut
        diagnostics["note"] = f"no stained negative peak near the {control_name}'s mode: the fitted carry-over"
        diagnostics["relative_carry"] = "fit"
    elif (not neg.found and reference is not None and transform is not None and rule != "percentile"
          and (reference.moved(shift_tolerance, width_tolerance) or np.isfinite(reference_quantile))):
        # the reference carry-over reads the binding on the reference and carries the parent's FMO events:
        # it needs no negative peak of the parent's own, which dim positives next to it can merge away
        cut = (float(reference_quantile) if np.isfinite(reference_quantile)
               else reference_cut(fmo_x, reference, transform, percentile))
        winner = "fmo_relative"
        diagnostics.update(relative_reference=cut, relative_carry="reference", relative_threshold=cut,
                           reference_shift=reference.shift, reference_spread=reference.spread,
                           reference_extra=reference.skew,
                           note=f"no stained negative peak near the {control_name}'s mode: the reference population's carry-over")
    elif not neg.found:
        winner, cut = "fmo_percentile", t_fmo
        diagnostics["note"] = (f"no stained negative peak near the {control_name}'s mode: the {control_name} percentile, the parent called "
                               "against its control")
    else:
        shift, ratio = neg.mode - fmo.mode, neg.width / fmo.width if fmo.width > 0 else 1.0
        relative = neg.mode + (t_fmo - fmo.mode) * ratio
        bounds = (float("nan"), float("nan"))
        if transform is not None:
            carried = _carried_over(transform, fmo_x, x, fmo.mode, neg.mode, fmo_coarse, coarse, percentile, reference,
                                    f_sorted, linear)
            if carried is not None:
                ratio, from_lower, from_upper, from_reference = carried
                bounds = (min(from_lower, from_upper), max(from_lower, from_upper))
                relative = {"lower": from_lower, "upper": from_upper, "mid": 0.5 * (from_lower + from_upper),
                            "fit": fitted.cut if fitted is not None else from_lower}[width_side]
                if reference is not None and np.isfinite(reference_quantile):
                    from_reference = float(reference_quantile)
                if np.isfinite(from_reference):
                    relative = from_reference
                # the read the relative threshold is: a fit that failed leaves the lower-side read
                read = width_side if width_side != "fit" or fitted is not None else "lower"
                diagnostics.update(relative_reference=from_reference,
                                   relative_carry="reference" if np.isfinite(from_reference) else read)
        if reference is not None:
            diagnostics.update(reference_shift=reference.shift, reference_spread=reference.spread)
        diagnostics.update(relative_low=bounds[0], relative_high=bounds[1],
                           reference_extra=reference.skew if reference is not None else float("nan"))
        diagnostics.update(shift=shift, width_ratio=ratio, relative_threshold=relative)
        moved = abs(shift) > max(shift_tolerance, 0.25 * fmo.width) or not (1 / width_tolerance <= ratio <= width_tolerance)
        # the fitted model nests unmoved negatives (shift and spread 0): no tolerance test needed
        moved = moved or fitted is not None
        if reference is not None and np.isfinite(diagnostics.get("relative_reference", float("nan"))):
            # the tolerance is tested on the reference population too: its negatives show binding that
            # positives next to the gated parent's negatives may hide or mimic
            moved = moved or reference.moved(shift_tolerance, width_tolerance)
            # the tolerances judge the mode and lower side; the quantile carry measures the percentile's
            # own move on the reference (no model to protect from noise): it stands whatever they say
            moved = moved or np.isfinite(reference_quantile)
        winner, cut = ("fmo_relative", relative) if moved and rule != "percentile" else ("fmo_percentile", t_fmo)
        peaks, _ = density.peaks(min_prominence)
        start = int(np.searchsorted(density.grid, neg.mode))
        bound = relative if moved else t_fmo
        # a log-normal fit's cut can lie past a dim positive peak it took for binding: positive peaks
        # are looked for above the lower of the negative peak's reads too
        lognormal = fitted is not None and fitted.log_sd > 0 and np.isfinite(bounds[0])
        above = min(bound, bounds[0]) if lognormal else bound
        far = [int(p) for p in peaks if density.grid[p] - neg.mode >= min_separation or density.grid[p] > above]
        far = [p for p in far if density.grid[p] > neg.mode]
        if far:
            pos = max(far, key=lambda p: density.values[p])
            v = density.valley(start, pos)
            depth = density.values[v] / min(density.values[start], density.values[pos])
            at_bound = float(np.interp(bound, density.grid, density.values))
            inside = float(density.values[v] / at_bound) if at_bound > 0 else float("inf")
            diagnostics.update(valley_threshold=float(density.grid[v]), valley_ratio=float(depth),
                               positive_mode=float(density.grid[pos]), valley_to_bound=inside)
            if rule == "anchored" and density.grid[v] >= bound and (depth <= valley_depth or inside <= valley_depth):
                winner, cut = "stained_valley", float(density.grid[v])
            elif rule == "anchored" and winner == "fmo_relative" and lognormal and density.grid[v] >= above:
                # a binding tail falls away from the negative peak and makes no second one; the log-normal
                # fit's share grows with its cut and climbs into dim positives (stop 43): their valley is the cut
                winner, cut = "stained_valley", float(density.grid[v])
        if winner == "fmo_relative" and diagnostics.get("relative_carry") == "reference" and not np.isfinite(reference_quantile):
            # the parent's own upper-side carry-over only rises with its tail and its positives next to the negatives:
            # a reference cut far above it reads more binding than the parent shows (PD1+ cells in the reference)
            capped = reference_capped_cut(x, cut, bounds[1], reference_cap_points)
            if capped != cut:
                diagnostics["reference_capped_from"] = float(cut)
                cut = capped
    if skew_binding is not None and transform is not None and rule != "percentile":
        carry = skew_carry_binding(fmo_x, x, skew_binding, transform, max_shift=max_shift)
        skew_cut = carried_skew_cut(fmo_x, carry, transform, percentile)
        raised = bool(skew_cut > cut)   # NaN (no negative peak read) raises nothing
        # on the reference's shift the carry reads the parent's binding better than the parent's own carry-over,
        # whose shift the same dim positives pull up: it replaces that, downwards too (not a valley)
        on_reference = carry is not None and math.isfinite(carry.mode_shift)
        lowered = on_reference and winner == "fmo_relative" and bool(skew_cut < cut)
        diagnostics.update(skew_cut=skew_cut, skew_extra=skew_binding.skew,
                           skew_points=points_between(x, cut, skew_cut) if raised else 0.0)
        if on_reference:
            assert carry is not None
            diagnostics.update(skew_shift=carry.shift, skew_parent_shift=carry.mode_shift)
        if carry is not None and math.isfinite(carry.raised_from):   # the parent's shift raised to the reference's
            diagnostics.update(skew_reference_shift=carry.shift, skew_own_shift=carry.raised_from)
        if raised or lowered:
            diagnostics["skew_raised_from"] = float(cut)
            if lowered:
                diagnostics["skew_lowered_points"] = points_between(x, skew_cut, cut)
            winner, cut = "skew_carry", skew_cut
    if outside_values is not None and rule != "percentile":
        in_reference = inside_values if inside_values is not None else np.empty(0)
        winner, cut = _outside_moved(density, x, outside_values, in_reference, bandwidth, min_prominence, percentile,
                                     winner, float(cut), diagnostics, dense_cut_ratio)
    rule_cut = float(cut)
    cut = clamp_to_parent(rule_cut, x)   # beyond the parent's events the gate keeps all or none of them
    if cut != rule_cut:
        diagnostics.update(unclamped_threshold=rule_cut, clamped=True)
    diagnostics.update(threshold=cut, winner=winner)
    gate = RangeGate(dim, float(np.nextafter(cut, np.inf)), None)
    if "note" in diagnostics:   # what the gate did without the negative peak: its cut and what it keeps
        clamped = (f" ({rule_cut:.4g} clamped to {clamped_to(rule_cut, cut)})" if cut != rule_cut else "")
        kept = keeps(int(np.count_nonzero(gate.contains({dim: x}))), x.size)
        diagnostics["note"] += f"; cut {cut:.4g}{clamped}, the gate keeps {kept} of the parent"
    return Placement(gate, winner if winner != "fmo_percentile" else "fmo_percentile", diagnostics, base.flags)


def _outside_moved(density: Density, stained: np.ndarray, outside: np.ndarray, inside: np.ndarray, bandwidth: float,
                   min_prominence: float, percentile: float, winner: str, cut: float, diagnostics: dict[str, Any],
                   dense_cut_ratio: float = math.inf) -> tuple[str, float]:
    """:func:`place_fmo_anchored`'s ``outside_values`` move: (winner, cut), when ``cut`` lies inside the bulk of the
    cells ``outside`` the reference (:func:`outside_inside`) moved up to the parent's negatives read on their lower
    sides (:func:`pooled_lower_sides` of ``inside``, the parent's events inside the reference, and ``outside``;
    winner ``outside_pooled``) where that lies above ``cut`` and below :func:`outside_valley` where a prominent peak
    of the parent follows that valley (dim positives lie below it), at any height with a shallow valley or none
    above their negative peak (their positives a shoulder or a tail on their upper side); else to the valley where
    it lies above ``cut``;
    otherwise a log-normal fit's cut above those negatives moved down to them (:func:`_fit_lowered`), and a skew carry's
    raised cut bounded by them (:func:`_skew_bounded`, ``dense_cut_ratio`` its density limit). What it found
    recorded in ``diagnostics`` (``outside_cut``, ``outside_peak``, ``outside_prominent``, ``outside_raised_from``,
    ``outside_moved_points``: % of the stained parent between the two cuts, and :func:`_pooled_recorded`'s)."""
    if not outside_inside(outside_reading(stained, outside, cut)):
        # read once, when first needed: both moves bound by the same reading
        pooled_read = cache(lambda: pooled_lower_sides(density, (inside, outside), bandwidth, percentile))
        winner, cut = _fit_lowered(stained, pooled_read, winner, cut, diagnostics)
        return _skew_bounded(stained, pooled_read, winner, cut, diagnostics, dense_cut_ratio)
    peak = outside_peak(density, outside, bandwidth)
    found = outside_valley(density, peak, min_prominence) if peak is not None else None
    valley, prominent = found if found is not None else (float("nan"), False)
    diagnostics.update(outside_cut=valley, outside_peak=float("nan") if peak is None else peak,
                       outside_prominent=prominent)
    moved, to = ("outside_valley", valley) if found is not None else (winner, float("nan"))
    if peak is not None:
        pooled, read = pooled_lower_sides(density, (inside, outside), bandwidth, percentile)
        # a prominent valley bounds it from above (dim positives below the valley); a shallow valley or none tells
        # no positives from negatives
        if pooled > cut and not (prominent and pooled >= valley):   # NaN: no group read
            _pooled_recorded(diagnostics, pooled, read)
            moved, to = "outside_pooled", pooled
    if not to > cut:   # none found (NaN), or not above: the cut stays and the outside check flags it
        return winner, cut
    diagnostics.update(outside_raised_from=cut, outside_moved_points=points_between(stained, cut, to))
    return moved, to


def _pooled_recorded(diagnostics: dict[str, Any], pooled: float, read: list[tuple[float, float, int]]) -> None:
    """Record a cut moved to :func:`pooled_lower_sides` (``pooled``; ``read``: the two groups' (peak, SD, events),
    inside the reference and outside it) in ``diagnostics``: ``pooled_cut``, ``pooled_inside_peak``,
    ``pooled_inside_sd``, ``pooled_outside_peak``, ``pooled_outside_sd`` (transformed units)."""
    (inside_peak, inside_sd, _), (outside_peak_, outside_sd, _) = read
    diagnostics.update(pooled_cut=pooled, pooled_inside_peak=inside_peak, pooled_inside_sd=inside_sd,
                       pooled_outside_peak=outside_peak_, pooled_outside_sd=outside_sd)


PooledRead = Callable[[], tuple[float, list[tuple[float, float, int]]]]
"""The parent's negatives read on their lower sides: :func:`pooled_lower_sides` of its events inside and outside the
reference, read when first called (:func:`_outside_moved`)."""


def _fit_lowered(stained: np.ndarray, pooled_read: PooledRead, winner: str, cut: float,
                 diagnostics: dict[str, Any]) -> tuple[str, float]:
    """:func:`_outside_moved`'s downward move: a log-normal fit's cut (``fit_log_sd`` > 0; winner ``fmo_relative``, or
    ``skew_carry`` where the skew carry lowered it, ``skew_lowered_points``: its ``skew_raised_from``) above the
    parent's negatives read on their lower sides (``pooled_read``) moved down to them: winner ``outside_pooled``,
    :func:`_pooled_recorded`'s numbers, ``outside_lowered_from`` the fit's cut, ``outside_moved_points`` the % of the
    stained parent between the two; any other cut unchanged."""
    skew_lowered = winner == "skew_carry" and "skew_lowered_points" in diagnostics
    if not (winner == "fmo_relative" or skew_lowered) or not diagnostics.get("fit_log_sd", 0.0) > 0:
        return winner, cut
    fit_cut = float(diagnostics["skew_raised_from"]) if skew_lowered else cut
    pooled, read = pooled_read()
    if not pooled < fit_cut:   # NaN: no group read
        return winner, cut
    _pooled_recorded(diagnostics, pooled, read)
    diagnostics.update(outside_lowered_from=fit_cut, outside_moved_points=points_between(stained, pooled, fit_cut))
    return "outside_pooled", pooled


DENSE_BANDWIDTH = 0.03
"""Bandwidth (transformed units) of the density :func:`peak_density_ratio` reads: the ``cut_in_dense_region``
check's and :func:`_skew_bounded`'s, one scale (``checks.DELTA`` is this)."""


def peak_density_ratio(values: np.ndarray, cut: float, mode: float, bandwidth: float = DENSE_BANDWIDTH) -> float:
    """Density of ``values`` at ``cut`` / density at their negative ``mode`` (smoothed histogram, ``bandwidth``;
    transformed units): the ``cut_in_dense_region`` check's ``cut_density_ratio`` (``checks.place_and_check``), above
    about a half inside the negative peak; NaN without a finite mode, 20 values or a density at the mode."""
    x = np.asarray(values, dtype=np.float64)
    if not np.isfinite(mode) or x.size < 20:
        return float("nan")
    density = smoothed_density(x, bandwidth, float(x.min()) - 3 * bandwidth, float(x.max()) + 3 * bandwidth)
    at = np.interp([cut, mode], density.grid, density.values)
    return float(at[0] / at[1]) if at[1] > 0 else float("nan")


def _skew_bounded(stained: np.ndarray, pooled_read: PooledRead, winner: str, cut: float, diagnostics: dict[str, Any],
                  dense_cut_ratio: float) -> tuple[str, float]:
    """:func:`_outside_moved`'s bound on a skew carry's cut (winner ``skew_carry``) that no other move took: the
    parent's negatives read on their lower sides (``pooled_read``). The cut moves up to them where it lies inside
    the parent's dense negative peak (:func:`peak_density_ratio` at the cut above ``dense_cut_ratio``) below them:
    the carry adds the reference's skew to the parent's own binding read about the negative peak nearest the
    control's (or on the reference's shift, ``skew_lowered_points``), which can lie below its negatives' bulk. A
    raised cut (no ``skew_lowered_points``) moves down to them where it lies above them and they lie at or above the
    cut it was raised from (the raise alone overshoots what the parent's negatives show: CD56's reference,
    ``not_CD8``, holds the NK cells, whose dim edge next to its negatives can read as binding skew under heavy
    binding) or that cut was a log-normal fit's (``fit_log_sd`` > 0), which :func:`_fit_lowered` moves down to them
    unraised (the raise hid it from that move: V191734, NKT -2.3 points with a raise of 0.002). Winner
    ``outside_pooled``, :func:`_pooled_recorded`'s numbers, ``skew_bounded_from`` the skew carry's cut,
    ``skew_bound_ratio`` the density ratio at it, ``outside_moved_points`` the % of the stained parent between the
    two; any other cut unchanged."""
    if winner != "skew_carry":
        return winner, cut
    pooled, read = pooled_read()
    ratio = peak_density_ratio(stained, cut, float(diagnostics["stained_mode"]))
    up = pooled > cut and ratio > dense_cut_ratio   # NaN: no group read, or no peak density
    # a raise from a log-normal fit's cut above them: that cut itself moves down to them (_fit_lowered)
    below = float(diagnostics["skew_raised_from"]) <= pooled or diagnostics.get("fit_log_sd", 0.0) > 0
    down = "skew_lowered_points" not in diagnostics and pooled < cut and below
    if not (up or down):
        return winner, cut
    _pooled_recorded(diagnostics, pooled, read)
    diagnostics.update(skew_bounded_from=cut, skew_bound_ratio=ratio,
                       outside_moved_points=points_between(stained, cut, pooled))
    return "outside_pooled", pooled


def skew_bound_moved_up(diagnostics: dict[str, Any]) -> bool:
    """Whether :func:`_skew_bounded` moved the skew carry's cut (``skew_bounded_from``) up to the parent's negatives
    read on their lower sides (the final ``threshold``, transformed units), from inside the parent's dense negative
    peak, rather than down from above them: the direction the report's and the check's words name."""
    return float(diagnostics["skew_bounded_from"]) < float(diagnostics["threshold"])


def reference_above_points(values: np.ndarray, cut: float, high: float) -> float:
    """Percentage points of the stained parent ``values`` between its own upper-side carry-over ``high``
    (``relative_high``) and a reference carry-over ``cut`` above it; 0 when ``cut`` is not above it (or ``high`` is
    NaN): how much more binding the reference reads than the parent shows (:func:`place_fmo_anchored`)."""
    return points_between(values, high, cut) if cut > high else 0.0


def reference_capped_cut(values: np.ndarray, cut: float, high: float, limit: float) -> float:
    """An additive reference carry-over ``cut`` (transformed units) that lies more than ``limit`` percentage points
    of the stained parent ``values`` above the parent's own upper-side carry-over ``high``
    (:func:`reference_above_points`, ``above``) moved down by twice its excess over the limit: to the parent's event
    with max(2 ``limit`` - ``above``, 0) points between it and ``high`` (``high`` itself from 2 ``limit`` on); any
    other ``cut`` unchanged. ``high`` can lie below the ideal cut (a log-normal binding tail beyond its upper-side
    read: by up to 2.8 points of the parent on 360 heavy-PD1 products, stop 59), so the reading is at least
    ``above`` - ``limit`` too high: while ``high`` lies at most ``limit`` below the ideal cut the moved cut is nearer
    it than ``cut`` was, and it is continuous at the limit (a reading just over it moves little)."""
    above = reference_above_points(values, cut, high)
    if not above > limit:
        return cut
    between = np.sort(values[values > high])
    k = int(max(2.0 * limit - above, 0.0) * values.size / 100.0)   # events kept between high and the moved cut
    return float(between[k - 1]) if k > 0 else float(high)


def points_between(values: np.ndarray, a: float, b: float) -> float:
    """Percentage points of ``values`` in (min(a, b), max(a, b)]: how much the % positive moves
    when the cut moves from ``a`` to ``b`` (NaN without values)."""
    return 100.0 * np.count_nonzero((values > min(a, b)) & (values <= max(a, b))) / values.size if values.size else float("nan")


ANCHOR_PARAMS = ("rule", "max_shift", "shift_tolerance", "width_tolerance", "valley_depth", "width_side", "reference_carry",
                 "dense_cut_ratio", "dense_points", "shift_warning", "width_warning", "uncertain_points", "shift_points")
"""``fmo`` gate parameters of :func:`place_fmo_anchored` and of the self-checks (``gates.checks``)."""
