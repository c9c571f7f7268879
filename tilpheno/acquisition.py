"""Acquisition QC over time (gating step 0): flow-rate anomalies, signal shifts and drift, margin events.

A clog, a bubble, a change of flow rate or a drifting laser makes a stretch of a file unreliable.
:func:`check_acquisition` looks at one file's raw events (``FCSFile.events``, before compensation)
in acquisition order and returns an :class:`AcquisitionQC`: which events lie in anomalous
stretches, the per-bin series behind the decision (for the report's plots), the margin events per
channel and the QC findings. The method follows PeacoQC (Emmaneel et al. 2022: bins of consecutive
events, a robust statistic per bin and channel, short good stretches between bad ones removed too)
and flowCut (Meskas et al. 2023: several order statistics per segment of 500 events), with a
change-point segmentation instead of PeacoQC's isolation tree so that slow drifts are found as
well as steps:

1. **Bins.** Events in acquisition order are cut into ``n_bins = n // events_per_bin`` bins of
   consecutive events (``events_per_bin`` raised to ``ceil(n / max_bins)`` for big files, lowered
   to ``n // SMALL_FILE_BINS`` (25), but not below ``MIN_EVENTS_PER_BIN`` (200), for small files
   so that a 5,000-event file still has 25 bins; the last bin takes the remainder). Fewer than
   ``min_bins`` bins (under 1,600 events by default): nothing is tested (flag
   ``acquisition_qc_skipped``). Files with more than ``max_signal_events`` (30,000) events: the
   signal statistics use every k-th event (at most that many; bins keep ``events_per_bin`` of
   them, so a bin spans k x that many consecutive events), which bounds the cost.
2. **Flow rate.** The acquisition time (the ``Time`` channel, seconds after ``$TIMESTEP``) is cut
   into ``n_bins`` equal intervals; events per interval / width = rate (events/s). A file without
   ``$TIMESTEP`` (FCS 2.0: a FACSCalibur's time in ticks, a MACSQuant's ``HDR-T`` scaled to its
   range) has time in the instrument's units: ``time_unit`` is then ``""`` and the report's axes say
   "time units", not seconds (the test itself needs no unit).
3. **Signal.** Every scatter and fluorescence channel is put on a logicle scale (T = the channel's
   ``$PnR`` or its largest value, W = 0.5, M = 4.5, A = 0; 1.0 = top of scale, 0.01 ~ 2.3 % of
   intensity near the top), and per bin the ``quantiles`` (default the 50th and 90th percentiles:
   the main population and the bright one) are taken, and on the scatter channels (FSC*, SSC*) the
   ``scatter_quantiles`` too (default the 10th: the small end): one series per channel and quantile.
   The scatter 10th percentile is where debris shows: small events making up a share ``f`` of a bin
   move its median to the clean events' ``(0.5 - f) / (1 - f)`` quantile (within the noise for a
   15 % burst of a real file) but take its 10th percentile down to the debris once ``f`` reaches
   10 %, as flowCut's low order statistics do (with the 50th and 90th alone a 20 % debris burst was
   found in 9 % of simulated and 18 % of real host files, ``benchmarks/bench_acquisition_faults.py``).
   It is not taken on fluorescence channels: a dim population's signal there may creep up slowly
   over a real acquisition (the mouse FlowSOM file's PE-A 10th percentile rises 0.17 logicle units
   over the file, its scatter stays flat), which is neither debris nor a fault, and a 10th
   percentile of all channels removed half of that file. Their
   sampling noise is also taken from each bin's two halves (even and odd events):
   ``sqrt(mean((q_even - q_odd)^2)) / 2``, and from the spread of each bin's values around the
   quantile, ``(Q(q + 3h) - Q(q - 3h)) / 6`` with ``h = sqrt(q (1 - q) / events per bin)`` (median
   over the bins; the larger of the two is kept): a 90th percentile at the edge of a gap between
   two populations jumps across it in the bins whose share of the upper one is a few SD high, and
   those jumps are sampling noise (they removed 7.5 % of a clean simulated 20,000-event file).
4. **Change points.** Each series (rates, and every signal series) is segmented by binary
   segmentation: the stretch ``[i, j)`` maximising the two-sample statistic
   ``|mean(inside) - mean(outside)| / (sigma * sqrt(1/n_inside + 1/n_outside))`` (a stretch
   touching an end of the series = a single split; one in the middle = a short "epidemic" change
   such as a clog, which no single split finds) is cut out when the statistic exceeds ``t_crit``
   (default 7), recursively; ``sigma`` = the robust bin-to-bin noise
   ``1.4826 * median(|diff(series)|) / sqrt(2)`` (insensitive to steps and slow drift), or the
   split-half sampling noise when larger (few bins make the first unreliable). A drift is cut into
   steps this way.
5. **Reference and anomalies.** A segment's level is its median. The reference level is that of the
   majority of events: the segment whose level has the most events in segments within tolerance of
   it (rates: weighted by events, not by time). The series share one stable stretch: the rate
   series first, then each channel's quantiles in turn take their reference by the events in the
   bins that every series before calls good (the full count breaks ties), so that no two series
   take opposite halves of a file as reference. A segment is anomalous when its median differs
   from the reference by more than the effect size: ``rate_tolerance`` (default 0.25 = 25 % of the
   reference rate) for rates, ``min_shift`` (default 0.01 logicle units) for signals, and the
   two-sample statistic of the segment against the reference, ``|difference| / (sigma *
   sqrt(1/bins + 1/bins_majority))``, exceeds ``t_crit`` (as a split; ``bins_majority``: the bins of
   the segments within tolerance of the reference level; equal support: the longest segment is the
   reference; with ``3 sigma / sqrt(bins)`` a real FACSCalibur file, its noisy FSC-H
   cut by a one-bin burst, lost the 46.5 % after it).
   **Slow drift is not a fault** (signals): a smooth drift over the whole acquisition (a dye
   equilibrating, a slowly warming laser) is cut into steps by the segmentation, each just over
   ``min_shift`` from the next, and a real FACSDiva file lost 28.8 % of its events for one
   (PacificBlue-A's 90th percentile 0.82 -> 0.79 over the file). The drift's slope is the
   Theil-Sen slope within segments (steps between segments do not enter it), limited to
   ``max_drift`` (default 0.05 logicle units over the whole file, ~a factor 1.7 of intensity at
   the top of the scale); a segment's difference is the
   smaller of its difference from the reference level and its departure from that trend through
   the reference segment. An abrupt change (clog, rate drop, signal jump, debris burst) does not
   follow the trend and is found as before; so is a drift faster than ``max_drift`` per file
   (beyond what the trend excuses).
6. **Stretches.** Events in an anomalous time interval or signal bin are anomalous; good stretches
   shorter than ``consecutive_bins`` bins (default 5, as PeacoQC) between two anomalous ones are
   anomalous too.
   Channels that never decrease (event counters such as Miltenyi's HDR-CE) and an instrument's
   derived parameters (CyFlow's ``DOUBLET``: :data:`tilpheno.panel.DERIVED_NAMES`) are not
   checked, here nor for margin events, nor height/width channels whose area channel is
   (``FSC-H`` follows ``FSC-A``). The split-half noise
   uses at most 16 evenly spaced bins.
7. **Margin events** per channel: events at or above ``$PnR - 1`` or tied at the channel's largest
   value (pile-up at the top of the scale), and events tied at the channel's smallest value when at
   least ``MIN_TIES`` share it (pile-up at the bottom). A channel with more than
   ``margin_limit_pct`` of its events there raises ``margin_events`` (pulse-width ``-W`` channels
   are not counted). Margin events are reported,
   and removed only with ``remove_margin_events: true`` (saturated scatter is removed by the
   ``cells`` gate anyway).

Modes (``mode`` in a strategy's ``acquisition_qc`` section): ``remove`` (default; anomalous events
are dropped before compensation, the share recorded), ``flag`` (findings only, every event kept),
``off``. Flags: ``flow_rate_anomaly``, ``signal_drift`` (naming the channels), ``margin_events``,
``acquisition_removed_pct`` (more than ``max_removed_pct`` % of the events anomalous),
``no_time_channel`` and ``time_not_monotonic`` (time resets are stitched: each negative step, and
each step to or from a NaN or inf time, is taken as zero elapsed time).

No time channel, or a time that never advances: the file gets ``no_time_channel`` and nothing is
tested over time nor removed (margin events are still counted). Event order is then not known to
be acquisition order: a FlowJo export of a gated or concatenated population is ordered by sample
and gate, and a signal check in that order found "shifts" that were populations (it removed 72-84 %
of such real exports).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from tilpheno.panel import TIME_NAMES, is_derived, is_scatter_or_time

MODES = ("remove", "flag", "off")
NOISE_BINS = 16        # bins the split-half noise is estimated from (evenly spaced)
SMALL_FILE_BINS = 25    # a small file's bins are made smaller so that it has this many (at least MIN_EVENTS_PER_BIN each)
MIN_EVENTS_PER_BIN = 200
SLOPE_POINTS = 500      # at most this many evenly spaced elements enter the drift's Theil-Sen slope
SPACING_SDS = 3         # a quantile's sampling SD is read off the bin's values within this many SDs of its share
MIN_TIES = 3            # events sharing the smallest value before it counts as a margin pile-up
_MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class AcquisitionSettings:
    """Parameters of :func:`check_acquisition` (a strategy's ``acquisition_qc`` section)."""

    mode: str = "remove"
    events_per_bin: int = 500
    max_bins: int = 500
    min_bins: int = 8
    max_signal_events: int = 30_000
    quantiles: tuple[float, ...] = (0.5, 0.9)
    scatter_quantiles: tuple[float, ...] = (0.1,)
    t_crit: float = 7.0
    min_shift: float = 0.01
    max_drift: float = 0.05
    rate_tolerance: float = 0.25
    consecutive_bins: int = 5
    margin_limit_pct: float = 2.0
    max_removed_pct: float = 10.0
    remove_margin_events: bool = False

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> "AcquisitionSettings":
        """Validated settings from a mapping (YAML); ``ValueError("<key>: <problem>")`` on a bad value."""
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown key; allowed: {sorted(known)}")
        values: dict[str, Any] = {}
        for key, value in raw.items():
            values[key] = _check_setting(key, value)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


_RANGES = {
    "events_per_bin": (int, 50, 1_000_000), "max_bins": (int, 10, 100_000), "min_bins": (int, 3, 10_000),
    "max_signal_events": (int, 1_000, 100_000_000),
    "t_crit": (float, 1.0, 100.0), "min_shift": (float, 0.0, 1.0), "max_drift": (float, 0.0, 1.0),
    "rate_tolerance": (float, 0.0, 10.0),
    "consecutive_bins": (int, 0, 10_000), "margin_limit_pct": (float, 0.0, 100.0),
    "max_removed_pct": (float, 0.0, 100.0),
}


def _check_setting(key: str, value: Any) -> Any:
    if key == "mode":
        if value is False:   # YAML 1.1 reads a bare `off` as false
            return "off"
        if value not in MODES:
            raise ValueError(f"mode: must be one of {list(MODES)}, got {value!r}")
        return value
    if key == "remove_margin_events":
        if not isinstance(value, bool):
            raise ValueError(f"remove_margin_events: must be true or false, got {value!r}")
        return value
    if key in ("quantiles", "scatter_quantiles"):
        if (not isinstance(value, (list, tuple)) or (not value and key == "quantiles")
                or not all(isinstance(q, (int, float)) and not isinstance(q, bool) and 0 < q < 1 for q in value)):
            raise ValueError(f"{key}: must be a list of numbers between 0 and 1, got {value!r}")
        return tuple(float(q) for q in value)
    kind, low, high = _RANGES[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise ValueError(f"{key}: must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{key}: {value} outside [{low}, {high}]")
    return kind(value)


@dataclass(frozen=True)
class Finding:
    """One QC finding of a file: ``code`` (a QC flag code), ``severity``, one-line ``message``."""

    code: str
    severity: str
    message: str


@dataclass
class AcquisitionQC:
    """Result of :func:`check_acquisition` for one file.

    ``anomalous``: bool per event (acquisition order), True in an anomalous stretch (or a removed
    margin event). ``keep``: the events gating uses (``~anomalous`` in ``remove`` mode, all events
    otherwise). ``rate``: one row per time interval (``t_start, t_end`` s, ``events``,
    ``rate_per_s``, ``anomalous``); empty without a time channel. ``signal``: one row per event bin
    (``bin, first_event, last_event, t_mid`` (s, NaN without time), ``anomalous``, and per channel
    ``<channel>`` = the bin's median on the QC logicle scale). ``margins``: per channel
    ``channel, upper, lower, pct``. ``drift_channels``: channels with an anomalous segment.
    ``removed_intervals``: (start, end) of the anomalous stretches in seconds (event indices
    without time). ``removed_pct`` = 100 x anomalous / events. ``time_unit``: ``"s"`` when the
    time is in seconds, ``""`` when in the instrument's own units (:func:`time_unit`).
    """

    n_events: int
    settings: AcquisitionSettings
    time_channel: str | None
    anomalous: np.ndarray
    rate: pd.DataFrame
    signal: pd.DataFrame
    margins: pd.DataFrame
    drift_channels: tuple[str, ...] = ()
    removed_intervals: tuple[tuple[float, float], ...] = ()
    findings: list[Finding] = field(default_factory=list)
    events_per_bin: int = 0
    time_unit: str = "s"

    @property
    def keep(self) -> np.ndarray:
        if self.settings.mode == "remove":
            return ~self.anomalous
        return np.ones(self.n_events, dtype=bool)

    @property
    def removed_pct(self) -> float:
        return 100.0 * float(np.count_nonzero(self.anomalous)) / self.n_events if self.n_events else 0.0

    @property
    def n_removed(self) -> int:
        return int(np.count_nonzero(~self.keep))

    def summary(self) -> dict[str, Any]:
        """One row for tables: mode, time channel, events, anomalous %, events removed, flags."""
        return {
            "mode": self.settings.mode, "time_channel": self.time_channel or "", "n_events": self.n_events,
            "anomalous_pct": round(self.removed_pct, 3), "n_removed": self.n_removed,
            "events_per_bin": self.events_per_bin, "drift_channels": ", ".join(self.drift_channels),
            "flags": ", ".join(dict.fromkeys(f.code for f in self.findings)),
        }


# --------------------------------------------------------------------------------------------
# small pure helpers
# --------------------------------------------------------------------------------------------


def find_time_channel(channel_names: Sequence[str]) -> str | None:
    """The time channel ($PnN ``Time`` or ``HDR-T``, case-insensitive; else the first name containing 'time')."""
    for name in channel_names:
        if str(name).strip().lower() in TIME_NAMES:
            return name
    return next((n for n in channel_names if "time" in str(n).lower()), None)


def time_unit(keywords: Mapping[str, str], time_channel: str | None) -> str:
    """``"s"`` when ``read_fcs`` gave ``time_channel`` in seconds (a channel named ``Time``, scaled
    by a positive ``$TIMESTEP``), else ``""`` (no ``$TIMESTEP``, or ``HDR-T``, which the reader does
    not scale: the instrument's own units)."""
    if time_channel is None or str(time_channel).strip().lower() != "time":
        return ""
    raw = keywords.get("$TIMESTEP", keywords.get("TIMESTEP"))
    try:
        step = float(str(raw).strip())
    except ValueError:
        return ""
    return "s" if math.isfinite(step) and step > 0 else ""


def is_counter(values: np.ndarray) -> bool:
    """An event counter or sequence channel (never decreasing, not constant): not a signal."""
    v = np.asarray(values)
    if v.size < 3 or not v[-1] > v[0]:
        return False
    probe = v[:: max(1, v.size // 256)]     # most signals fail on a sparse probe already
    if np.any(probe[1:] < probe[:-1]):
        return False
    return bool(np.all(v[1:] >= v[:-1]))


def robust_noise(series: np.ndarray) -> float:
    """Bin-to-bin noise SD: ``1.4826 * median(|diff|) / sqrt(2)`` (steps and slow drift barely move it)."""
    d = np.diff(series[np.isfinite(series)])
    if d.size == 0:
        return 0.0
    return float(_MAD_TO_SD * np.median(np.abs(d)) / math.sqrt(2.0))


def segment(series: np.ndarray, sigma: float, t_crit: float) -> list[tuple[int, int]]:
    """Binary segmentation of ``series`` into ``[(start, stop), ...]`` (stop exclusive, in order).

    A segment is cut around the stretch ``[i, j)`` maximising ``|mean(inside) - mean(outside)| /
    (sigma * sqrt(1/n_inside + 1/n_outside))`` (a stretch touching either end is a single split; a
    stretch in the middle, a short clog or bubble, is an "epidemic" change that no single split
    finds) when that statistic exceeds ``t_crit``; the pieces are cut again the same way.
    ``sigma <= 0`` (a constant series) gives one segment.
    """
    x = np.asarray(series, dtype=np.float64)
    n = x.size
    if n < 2 or not sigma > 0:
        return [(0, n)]
    out: list[tuple[int, int]] = []
    stack = [(0, n)]
    while stack:
        a, b = stack.pop()
        m = b - a
        if m < 2:
            out.append((a, b))
            continue
        cum = np.concatenate([[0.0], np.cumsum(x[a:b])])
        inside = cum[None, :] - cum[:, None]                  # [i, j): sum of x[a + i : a + j]
        n_in = np.arange(m + 1)[None, :] - np.arange(m + 1)[:, None]
        valid = (n_in >= 1) & (n_in <= m - 1)
        n_in = np.where(valid, n_in, 1)
        stat = np.abs(inside / n_in - (cum[-1] - inside) / (m - n_in)) / (sigma * np.sqrt(1.0 / n_in + 1.0 / (m - n_in)))
        stat[~valid] = -1.0
        i, j = np.unravel_index(int(np.argmax(stat)), stat.shape)
        if stat[i, j] > t_crit:
            cuts = [a] + [a + k for k in (int(i), int(j)) if 0 < k < m] + [b]
            stack.extend((lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:]))
        else:
            out.append((a, b))
    return sorted(out)


def anomalous_segments(series: np.ndarray, t_crit: float, tolerance: float, *, relative: bool,
                       weights: np.ndarray | None = None, noise: float = 0.0,
                       prefer: np.ndarray | None = None, max_drift: float = 0.0) -> np.ndarray:
    """Bool per element of ``series``: inside a segment whose level departs from the reference.

    Segments come from :func:`segment`; a segment's level is its median. The reference is the
    level of the *majority*: for each segment, the weight (``weights`` summed, default the number
    of elements) of all segments whose levels lie within ``tolerance`` of its own; the segment with
    the largest such weight gives the reference level. ``prefer`` (bool per element: the stretch the
    file's series checked before call good) makes the reference consistent across series: the weight
    counts only preferred elements, the full weight breaking ties (no preferred element: the full
    weight alone). Without it, two series of a file whose two halves differ (the 50th and 90th
    percentiles of one drifting channel) could each take the other half as reference, and every
    event was anomalous. Equal weights: the longest segment gives the reference (a one-bin
    segment next to a burst was the reference of a 24-bin stretch).

    Slow drift (``max_drift`` > 0) is not a fault: the segmentation cuts a smooth drift into steps,
    each a little over ``tolerance`` from the next. The drift's slope is the Theil-Sen slope within
    segments (:func:`within_segment_slope`: a step between segments does not enter it), limited to
    ``max_drift`` over the whole series (``|slope| <= max_drift / len(series)``), and the trend is
    that slope through the reference segment's centre. A segment's difference is the smaller of
    ``|level - reference|`` and its departure from the trend (the median of ``series - trend`` over
    it, against the same over the reference segment): the trend can excuse a departure, never make
    one. A step, clog or burst does not follow the trend and stays.

    A segment is anomalous when its difference exceeds ``tolerance`` (times the reference when
    ``relative``) and the two-sample statistic against the reference, ``difference / (sigma *
    sqrt(1/length + 1/majority))``, exceeds ``t_crit`` (``majority``: the elements of the segments
    within tolerance of the reference level, which it stands for; a one-bin reference with a
    16-bin majority let a real file's 11-bin rate drop pass): the segmentation's own
    criterion, so two stretches that a fault between them separated are compared as a split would
    be (with ``3 sigma / sqrt(length)``, the stretch before a debris burst in a noisy channel was
    cut off for a difference no split would make). ``sigma`` = the larger of :func:`robust_noise`
    and ``noise`` (a known sampling SD of one element).
    """
    x = np.asarray(series, dtype=np.float64)
    bad = np.zeros(x.size, dtype=bool)
    if x.size < 2:
        return bad
    w = np.ones(x.size) if weights is None else np.asarray(weights, dtype=np.float64)
    sigma = max(robust_noise(x), float(noise))
    if relative:   # counts: Poisson noise is the floor of the bin-to-bin noise
        sigma = max(sigma, math.sqrt(max(float(np.median(x)), 1.0)))
    segments = segment(x, sigma, t_crit)
    levels = np.array([float(np.median(x[a:b])) for a, b in segments])
    mass = np.array([float(w[a:b].sum()) for a, b in segments])

    def limit(ref: float) -> float:
        return tolerance * abs(ref) if relative else tolerance

    near = [np.abs(levels - lv) <= limit(lv) for lv in levels]
    support = [float(mass[m].sum()) for m in near]
    preferred = support
    if prefer is not None and np.any(prefer):
        kept = np.array([float((w[a:b] * prefer[a:b]).sum()) for a, b in segments])
        preferred = [float(kept[m].sum()) for m in near]
    # equal support: the longest segment (then the first, as argmax)
    best = max(range(len(levels)), key=lambda k: (preferred[k], support[k], mass[k]))
    reference = float(levels[best])
    ref_a, ref_b = segments[best]
    majority = sum(b - a for (a, b), m in zip(segments, near[best]) if m)   # elements the reference level stands for

    def departs(delta: float, a: int, b: int) -> bool:
        return delta > limit(reference) and delta > t_crit * sigma * math.sqrt(1.0 / (b - a) + 1.0 / majority)

    # the trend can only lower a difference: only segments departing by their level are looked at again
    candidates = [(a, b, float(level)) for (a, b), level in zip(segments, levels)
                  if departs(abs(level - reference), a, b)]
    if not candidates:
        return bad
    trend = np.zeros(x.size)
    if max_drift > 0:
        label = event_bins(np.array([0, *(b for _, b in segments)]))   # each element's segment (they tile x)
        slope = float(np.clip(within_segment_slope(x, label), -max_drift / x.size, max_drift / x.size))
        trend = slope * (np.arange(x.size, dtype=np.float64) - (ref_a + ref_b - 1) / 2.0)
    base = float(np.median(x[ref_a:ref_b] - trend[ref_a:ref_b]))   # the reference's level off the trend
    for a, b, level in candidates:
        delta = min(abs(level - reference), abs(float(np.median(x[a:b] - trend[a:b])) - base))
        if departs(delta, a, b):
            bad[a:b] = True
    return bad


def within_segment_slope(series: np.ndarray, label: np.ndarray) -> float:
    """Theil-Sen slope within segments: the median of ``(series[j] - series[i]) / (j - i)`` over the
    pairs ``i < j`` of one segment (``label[i] == label[j]``); 0 without such a pair. A step between
    segments does not enter it; a drift shows in every segment. A series longer than
    ``SLOPE_POINTS`` (only with ``max_bins`` raised above it) enters by that many evenly spaced
    elements, so the pairs stay at most ~125,000 (all pairs of 100,000 bins would need 80 GB)."""
    at = np.arange(series.size)
    if series.size > SLOPE_POINTS:
        at = np.unique(np.linspace(0, series.size - 1, SLOPE_POINTS).round().astype(np.int64))
    i, j = np.triu_indices(at.size, k=1)
    same = label[at[i]] == label[at[j]]
    i, j = at[i[same]], at[j[same]]
    return float(np.median((series[j] - series[i]) / (j - i))) if i.size else 0.0


def fill_short_gaps(bad: np.ndarray, min_good: int) -> np.ndarray:
    """``bad`` with every good run shorter than ``min_good`` elements between two bad runs set bad."""
    out = bad.copy()
    if min_good <= 0 or not out.any():
        return out
    idx = np.flatnonzero(np.diff(out.astype(np.int8)))   # run boundaries
    starts = np.concatenate([[0], idx + 1])
    stops = np.concatenate([idx + 1, [out.size]])
    for s, e in zip(starts, stops):
        if not out[s] and s > 0 and e < out.size and e - s < min_good:
            out[s:e] = True
    return out


def monotonic_time(time: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(elapsed time, was_monotonic)``: negative steps (counter resets) and steps to or from a
    non-finite value (NaN, inf) count as zero elapsed time."""
    t = np.asarray(time, dtype=np.float64)
    if t.size < 2:
        return t.copy(), True
    step = np.diff(t)
    ok = (step >= 0) & np.isfinite(step)
    if ok.all():
        return t.copy(), True
    step[~ok] = 0.0
    return np.concatenate([[t[0]], t[0] + np.cumsum(step)]), False


def sorted_counts(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``np.histogram(sorted_values, bins=edges)[0]`` of values already in non-decreasing order (the
    elapsed time of :func:`monotonic_time`): the number of values below each edge (at or below the
    last one: the last bin is closed) by binary search, without the copy and sort ``np.histogram``
    makes of them; the same counts and dtype."""
    below = np.concatenate((sorted_values.searchsorted(edges[:-1], "left"),
                            sorted_values.searchsorted(edges[-1:], "right")))
    return np.diff(below)


@lru_cache(maxsize=64)
def _qc_logicle(top: float):
    from tilpheno.transforms import Logicle

    return Logicle(t=max(float(top), 10.0), w=0.5, m=4.5, a=0.0)


_ROW_GROUP = 64   # rows of the events matrix taken as one row in column_extremes and _hits


def _row_groups(events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A C-ordered events matrix (events x channels) as its whole groups of ``_ROW_GROUP`` rows, one
    group per row (a view; column ``r * channels + c`` holds channel ``c`` of the group's row ``r``),
    and the rows after the last whole group."""
    whole = events.shape[0] - events.shape[0] % _ROW_GROUP
    return events[:whole].reshape(-1, _ROW_GROUP * events.shape[1]), events[whole:]


def column_extremes(events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``events.max(axis=0), events.min(axis=0)`` of a C-ordered events x channels matrix (NaN in a
    column holding a NaN; ValueError without events), the same values: reduced over groups of rows
    (:func:`_row_groups`), whose inner loops run over ``_ROW_GROUP`` x channels contiguous values
    instead of one row's few channels, several times faster."""
    grouped, tail = _row_groups(events)
    k = events.shape[1]
    high, low = [tail], [tail]
    if grouped.shape[0]:
        high.append(grouped.max(axis=0).reshape(_ROW_GROUP, k))
        low.append(grouped.min(axis=0).reshape(_ROW_GROUP, k))
    return np.concatenate(high).max(axis=0), np.concatenate(low).min(axis=0)


def _hits(events: np.ndarray, compare: np.ufunc, limits: np.ndarray) -> np.ndarray:
    """Flat indices (``event * channels + channel``, ascending) of the values of a C-ordered events
    matrix for which ``compare(value, limits[channel])`` holds (a NaN limit: none), compared group
    by group of rows (:func:`_row_groups`) without a full-size copy of the events."""
    grouped, tail = _row_groups(events)
    offset = grouped.size
    return np.concatenate([np.flatnonzero(compare(grouped, np.tile(limits, _ROW_GROUP))),
                           offset + np.flatnonzero(compare(tail, limits))])


def margin_events(events: np.ndarray, names: Sequence[str], ranges: Sequence[float],
                  columns: Sequence[int] | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Per channel the margin events (module docstring, step 7) and a bool mask of all of them.
    ``columns``: the columns of ``events`` (events x channels) named ``names`` (default: all; a
    column named twice is counted with its last range). Every channel's limits are compared with
    the whole matrix at once (two passes over it, no per-channel copy)."""
    events = np.ascontiguousarray(events)
    n, k = events.shape
    columns = list(range(k)) if columns is None else list(columns)
    high, low = column_extremes(events)
    # the limits as NumPy compares a Python float with the events (in float32 for float32 events)
    dtype = np.result_type(events.dtype, 1.0)
    upper_at, lower_at = np.full(k, np.nan, dtype=dtype), np.full(k, np.nan, dtype=dtype)
    piled = np.zeros(k, dtype=bool)   # upper margin = values tied at the largest: counted from 2 on
    for j, top in zip(columns, ranges):
        hi, lo = float(high[j]), float(low[j])
        if not (np.isfinite(hi) and np.isfinite(lo)):   # a NaN or inf: the finite values' extremes
            x = events[:, j]
            finite = x[np.isfinite(x)]
            if not finite.size:
                upper_at[j] = lower_at[j] = np.nan
                continue
            hi, lo = float(np.max(finite)), float(np.min(finite))
        if top and top > 1 and hi >= top - 1:
            upper_at[j], piled[j] = top - 1, False      # at the top of the scale
        else:
            upper_at[j], piled[j] = hi, True            # piled up at the largest value
        lower_at[j] = lo
    upper, lower = _hits(events, np.greater_equal, upper_at), _hits(events, np.less_equal, lower_at)
    n_upper, n_lower = np.bincount(upper % k, minlength=k), np.bincount(lower % k, minlength=k)
    counted_upper = ~piled | (n_upper >= 2)
    counted_lower = n_lower >= MIN_TIES
    both = np.union1d(upper[counted_upper[upper % k]], lower[counted_lower[lower % k]])
    n_both = np.bincount(both % k, minlength=k)
    mask = np.zeros(n, dtype=bool)
    mask[both // k] = True
    rows = [{"channel": name, "upper": int(n_upper[j]) if counted_upper[j] else 0,
             "lower": int(n_lower[j]) if counted_lower[j] else 0,
             "pct": 100.0 * int(n_both[j]) / n if n else 0.0} for name, j in zip(names, columns)]
    return pd.DataFrame(rows, columns=["channel", "upper", "lower", "pct"]), mask


def _intervals(bad: np.ndarray, position: np.ndarray) -> tuple[tuple[float, float], ...]:
    """(start, end) positions of each run of ``bad`` (``position``: time or event index per event)."""
    if not bad.any():
        return ()
    idx = np.flatnonzero(np.diff(bad.astype(np.int8)))
    starts = np.concatenate([[0], idx + 1])
    stops = np.concatenate([idx + 1, [bad.size]])
    return tuple((float(position[s]), float(position[e - 1])) for s, e in zip(starts, stops) if bad[s])


# --------------------------------------------------------------------------------------------
# the check
# --------------------------------------------------------------------------------------------


def event_bins(bounds: np.ndarray) -> np.ndarray:
    """The bin of every event (int64, ``bounds[-1]`` events): bin ``k`` holds the events
    ``bounds[k]`` .. ``bounds[k + 1] - 1`` (``bounds`` non-decreasing, from 0). Each bin's number
    repeated over its events: the same array as ``min(event // width, bins - 1)`` for bins of
    ``width`` events with the remainder in the last, without an integer division per event
    (about 1.2 ms of a 200,000-event file's 16 ms check)."""
    return np.repeat(np.arange(bounds.size - 1), np.diff(bounds))


def check_acquisition(
    events: np.ndarray,
    channel_names: Sequence[str],
    ranges: Sequence[float] | None = None,
    settings: AcquisitionSettings = AcquisitionSettings(),
    *,
    channels: Sequence[str] | None = None,
    unit: str = "s",
) -> AcquisitionQC:
    """Acquisition QC of one file's raw events (see the module docstring for the method).

    ``events``: n x channels, acquisition order, as ``FCSFile.events`` (Time in seconds).
    ``ranges``: ``$PnR`` per channel (None: the largest value of each channel). ``channels``: the
    channels whose signal is checked (default: every channel but time; an event counter and an
    instrument's derived parameter, such as CyFlow's ``DOUBLET``, never are). ``unit``: the time's unit,
    ``"s"`` or ``""`` (the instrument's own; :func:`time_unit`), kept as ``AcquisitionQC.time_unit``.
    """
    events = np.asarray(events)
    names = [str(c) for c in channel_names]
    n = int(events.shape[0])
    ranges = [float(r) if r is not None and np.isfinite(r) else 0.0 for r in (ranges or [0.0] * len(names))]
    time_name = find_time_channel(names)
    checked = [c for c in (channels or names) if c != time_name and c in names and not is_derived(c)
               and not is_counter(events[:, names.index(c)])]
    # a pulse height or width follows its area: drift is checked on the area channel when there is one
    signal_channels = [c for c in checked if not (c[-2:].upper() in ("-H", "-W") and f"{c[:-2]}-A" in checked)]
    findings: list[Finding] = []
    edged = [c for c in checked if not c.upper().endswith("-W")]   # pulse widths are not intensities
    margins, margin_mask = margin_events(events, edged, [ranges[names.index(c)] for c in edged],
                                         [names.index(c) for c in edged]) if n else (
        pd.DataFrame(columns=["channel", "upper", "lower", "pct"]), np.zeros(0, dtype=bool))
    heavy = margins[margins["pct"] > settings.margin_limit_pct]
    if len(heavy):
        findings.append(Finding("margin_events", "warning", "margin events above "
                                f"{settings.margin_limit_pct:g}%: " + ", ".join(
                                    f"{r.channel} {r.pct:.1f}%" for r in heavy.itertuples())))
    empty = AcquisitionQC(n, settings, time_name, np.zeros(n, dtype=bool), pd.DataFrame(), pd.DataFrame(), margins,
                          findings=findings, time_unit=unit)
    if settings.mode == "off":
        return empty
    if settings.remove_margin_events:
        empty.anomalous = margin_mask.copy()
    # Without a time that advances, event order is not known to be acquisition order (a FlowJo
    # export of a gated or concatenated population is sorted by sample, not by time): a flag, and
    # nothing is tested over time nor removed.
    elapsed = None
    if time_name is not None:
        raw_time = events[:, names.index(time_name)].astype(np.float64)
        elapsed, monotonic = monotonic_time(raw_time)
        if n and (not np.all(np.isfinite(elapsed)) or not elapsed[-1] > elapsed[0]):
            findings.append(Finding("no_time_channel", "warning",
                                    f"{time_name} does not advance: acquisition over time not checked, no events removed"))
            return empty
        if not monotonic:
            step = np.diff(raw_time)
            resets = int(np.count_nonzero((step < 0) & np.isfinite(step)))
            missing = int(np.count_nonzero(~np.isfinite(raw_time)))
            what = [f"decreases {resets} time(s)"] if resets else []
            what += [f"has {missing} non-finite value(s) (NaN/inf)"] if missing else []
            findings.append(Finding("time_not_monotonic", "warning",
                                    f"{time_name} {' and '.join(what)}; stitched (zero elapsed time at each)"))
    else:
        findings.append(Finding("no_time_channel", "warning",
                                "no Time channel: event order may not be acquisition order (e.g. a FlowJo export); "
                                "flow rate and signal over time not checked, no events removed"))
        return empty
    # the signal statistics use every stride-th event (at most max_signal_events of them)
    stride = max(1, math.ceil(n / settings.max_signal_events)) if n else 1
    n_sampled = -(-n // stride)
    per_bin_sampled = max(min(int(settings.events_per_bin), max(MIN_EVENTS_PER_BIN, n_sampled // SMALL_FILE_BINS)),
                          math.ceil(n_sampled / settings.max_bins))
    n_bins = n_sampled // per_bin_sampled
    epb = per_bin_sampled * stride
    empty.events_per_bin = epb
    if n_bins < settings.min_bins:
        findings.append(Finding("acquisition_qc_skipped", "info",
                                f"{n} events: fewer than {settings.min_bins} bins of {epb} events, time QC not run"))
        return empty

    # event bins of consecutive events (the last one takes the remainder)
    bounds = np.append(np.arange(n_bins) * epb, n)
    bin_of_event = event_bins(bounds)

    # time and flow rate
    t0, t1 = float(elapsed[0]), float(elapsed[-1])
    edges = np.linspace(t0, t1, n_bins + 1)
    counts = sorted_counts(elapsed, edges)   # elapsed time never decreases (monotonic_time)
    width = (t1 - t0) / n_bins
    bad_bins = anomalous_segments(counts.astype(np.float64), settings.t_crit, settings.rate_tolerance,
                                  relative=True, weights=counts)
    which = np.minimum(((elapsed - t0) / width).astype(np.int64), n_bins - 1)
    rate_bad_events = bad_bins[which]
    rate = pd.DataFrame({"t_start": edges[:-1], "t_end": edges[1:], "events": counts,
                         "rate_per_s": counts / width, "anomalous": bad_bins})
    if bad_bins.any():
        pct = 100.0 * np.count_nonzero(rate_bad_events) / n
        findings.append(Finding("flow_rate_anomaly", "warning",
                                f"flow rate departs > {100 * settings.rate_tolerance:g}% from its stable level in "
                                f"{int(bad_bins.sum())} of {n_bins} time intervals ({pct:.1f}% of events)"))

    # signal per channel and quantile
    signal_bad_bins = np.zeros(n_bins, dtype=bool)
    medians: dict[str, np.ndarray] = {}
    drift: list[str] = []
    # one gather of the sampled events of full bins (channel x event), put on the QC logicle scale in place
    cols = [names.index(c) for c in signal_channels]
    block = np.ascontiguousarray(events[: n_bins * epb : stride][:, cols].T, dtype=np.float64)
    for row, j in zip(block, cols):
        top = ranges[j] if ranges[j] > 1 else float(np.nanmax(np.abs(events[:, j])))
        _qc_logicle(top).apply(row, out=row)
    scaled = block.astype(np.float32)
    per_bins, noises = _quantile_series(scaled, n_bins, per_bin_sampled, settings.quantiles)   # quantile x channel (x bin)
    scatter = [k for k, c in enumerate(signal_channels) if is_scatter_or_time(c)] if settings.scatter_quantiles else []
    low_bins, low_noises = _quantile_series(scaled[scatter], n_bins, per_bin_sampled, settings.scatter_quantiles)
    # the stretch every series checked so far calls good (event bins without a rate-anomalous event):
    # each series' reference is taken within it, so that all series agree on the file's stable stretch
    stable = np.bincount(bin_of_event[rate_bad_events], minlength=n_bins) == 0
    for k, c in enumerate(signal_channels):
        per_bin, noise = per_bins[:, k, :].T, noises[:, k]
        if k in scatter:   # the scatter channels' low quantiles after their others
            per_bin = np.hstack([per_bin, low_bins[:, scatter.index(k), :].T])
            noise = np.concatenate([noise, low_noises[:, scatter.index(k)]])
        medians[c] = per_bin[:, 0] if 0.5 not in settings.quantiles else per_bin[:, settings.quantiles.index(0.5)]
        channel_bad = np.zeros(n_bins, dtype=bool)
        for q in range(per_bin.shape[1]):
            series = per_bin[:, q]
            if not np.all(np.isfinite(series)):
                continue
            series_bad = anomalous_segments(series, settings.t_crit, settings.min_shift, relative=False,
                                            noise=noise[q], prefer=stable, max_drift=settings.max_drift)
            channel_bad |= series_bad
            stable &= ~series_bad
        if channel_bad.any():
            drift.append(c)
        signal_bad_bins |= channel_bad
    signal_bad_events = signal_bad_bins[bin_of_event]
    if drift:
        pct = 100.0 * np.count_nonzero(signal_bad_events) / n
        findings.append(Finding("signal_drift", "warning",
                                f"signal shift or drift (> {settings.min_shift:g} logicle units from the stable level) in "
                                f"{', '.join(drift)}: {int(signal_bad_bins.sum())} of {n_bins} bins ({pct:.1f}% of events)"))

    bad = fill_short_gaps(rate_bad_events | signal_bad_events, settings.consecutive_bins * epb)
    if settings.remove_margin_events:
        bad |= margin_mask
    mids = (bounds[:-1] + bounds[1:] - 1) // 2
    signal = pd.DataFrame({"bin": np.arange(n_bins), "first_event": bounds[:-1], "last_event": bounds[1:] - 1,
                           "t_mid": elapsed[mids],
                           "anomalous": signal_bad_bins, **medians})
    result = AcquisitionQC(n, settings, time_name, bad, rate, signal, margins, tuple(drift),
                           _intervals(bad, elapsed), findings, epb, unit)
    if result.removed_pct > settings.max_removed_pct:
        verb = "removed" if settings.mode == "remove" else "anomalous (flag mode: kept)"
        findings.append(Finding("acquisition_removed_pct", "warning",
                                f"{result.removed_pct:.1f}% of events {verb} by acquisition QC (> {settings.max_removed_pct:g}%)"))
    return result


def _quantile_series(values: np.ndarray, n_bins: int, width: int, quantiles: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The channels' (rows of ``values``) per-bin ``quantiles`` (quantile x channel x bin) and each
    series' sampling noise (quantile x channel: the larger of :func:`_split_half_noise` and
    :func:`_spacing_noise`)."""
    ordered = _sorted_bins(values, n_bins, width)
    noise = np.fmax(_split_half_noise(values, n_bins, width, quantiles), _spacing_noise(ordered, quantiles))
    return _bin_quantiles(ordered, quantiles), noise


def _sorted_bins(values: np.ndarray, n_bins: int, width: int) -> np.ndarray:
    """``channels x n_bins x width``: the values (channels x events) of each full bin of ``width``
    consecutive events, in ascending order (NaN last). ``np.quantile`` of a bin reads the same order
    statistics from it as from the unsorted bin (the same numbers), several times faster: it
    partitions along its first axis, across bins and channels, where ``np.sort`` runs along
    contiguous memory."""
    return np.sort(values[:, : n_bins * width].reshape(values.shape[0], n_bins, width), axis=2)


def _noise_bins(n_bins: int) -> np.ndarray:
    """Indices of the at most ``NOISE_BINS`` evenly spaced bins the noise is estimated from."""
    return np.unique(np.linspace(0, n_bins - 1, min(n_bins, NOISE_BINS)).round().astype(int))


def _split_half_noise(values: np.ndarray, n_bins: int, width: int, quantiles: Sequence[float]) -> np.ndarray:
    """Sampling SD of a bin's quantiles from its two halves (even and odd events): ``sqrt(mean((q_even
    - q_odd)^2)) / 2`` over at most ``NOISE_BINS`` evenly spaced bins, per quantile and channel;
    unaffected by shifts and drift between bins."""
    half = width // 2
    block = values[:, : n_bins * width].reshape(values.shape[0], n_bins, width)[:, _noise_bins(n_bins)]
    even = np.quantile(np.sort(block[:, :, 0 : 2 * half : 2], axis=2), quantiles, axis=2)   # sorted: see _sorted_bins
    odd = np.quantile(np.sort(block[:, :, 1 : 2 * half : 2], axis=2), quantiles, axis=2)
    d = (even - odd).astype(np.float64)
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.nanmean(d * d, axis=2)) / 2.0


def _spacing_noise(ordered: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """Sampling SD of a bin's ``q``-quantile from the spread of the bin's values around it:
    ``(Q(q + k h) - Q(q - k h)) / (2 k)`` with ``h = sqrt(q (1 - q) / width)`` (the SD of the share
    of a bin's events below a value) and ``k = SPACING_SDS`` (3), median over at most ``NOISE_BINS``
    evenly spaced bins, per quantile and channel. Where the values are dense around the quantile
    this is its asymptotic SD ``h / density``; a quantile at the edge of a gap between two
    populations moves across the gap when a bin's share of the other population is a few SD off,
    and the spread over ``k h`` says so (the split halves and the bin-to-bin differences see the
    jump in a few bins only): such jumps are sampling noise, not a shift. ``ordered``: the sorted
    bins of :func:`_sorted_bins` (channels x n_bins x width)."""
    block = ordered[:, _noise_bins(ordered.shape[1])]
    q = np.asarray(quantiles, dtype=np.float64)
    h = SPACING_SDS * np.sqrt(q * (1.0 - q) / ordered.shape[2])
    low, high = np.split(np.quantile(block, np.clip(np.concatenate([q - h, q + h]), 0.0, 1.0), axis=2), 2)
    with np.errstate(invalid="ignore"):
        return np.nanmedian((high - low).astype(np.float64), axis=2) / (2.0 * SPACING_SDS)


def _bin_quantiles(ordered: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """``quantiles x channels x n_bins``: each bin's quantiles (numpy linear interpolation) of the
    sorted bins of :func:`_sorted_bins` (channels x n_bins x width); the events after the last full
    bin are not used for them."""
    return np.quantile(ordered, quantiles, axis=2).astype(np.float64)
