"""Self-checks on placed thresholds: turn a gate that may be wrong into a QC flag.

Every flag names the gate (its ``gate`` field; ``"<population> (<marker>): ..."`` opens the
message), the size of the problem in the units that matter (percentage points of the parent,
transformed units) and what to look at. Codes (severity ``warning`` unless stated; a warning
makes the product "needs review", see ``tilpheno.qc.REVIEW_CODES``):

``cut_in_dense_region``  the threshold sits inside the negative peak: the stained density at
    the cut (smoothed, bandwidth ``DELTA`` = 0.03 transformed units, about 0.13 decade on the
    default logicle) exceeds ``dense_cut_ratio`` (0.45) of the density at the stained negative
    peak, and more than ``dense_points`` (6) points of the parent lie within ``DELTA`` of the cut
    (a small move of the cut moves several points). The message gives those points. Severity
    ``info`` for a dim marker's gate (``rule: relative``: its positives overlap the negatives, so
    the FMO cut lies in dense events by convention) unless ``uncertain_threshold`` fired on it.
``fmo_excess_positive``  more of the FMO's parent events lie above the final threshold than
    3x the nominal rate (100 - percentile) and at least 1 point above it.
``uncertain_threshold``  a cut carried over from the FMO (not a stained valley) that moved more
    than ``shift_points`` (3) points of the parent away from the FMO percentile
    (``correction_points``) and whose other candidate would change the % positive by more than
    ``uncertain_points`` (3, the issue's "off" level) points of the parent: ``candidate_points``
    = the larger % of the parent between the cut and either carry-over (``relative_low``, with
    the negative peak's lower-side spread: free of positives, blind to a right-skewed
    nonspecific tail; ``relative_high``, with its upper-side spread: follows that tail, widened
    by positives next to the negatives). The data do not tell a skewed nonspecific tail from
    positives next to the negatives, and the cut may be several points off. With a strategy
    ``skew_reference`` the cut is instead the carry-over with the additive model read on the
    reference population (``relative_reference``, ``placement.reference_binding``: its shift,
    lower-side spread and skew) and is judged by its own sampling error, not by the parent's
    carry-overs (which the parent's dim positives bias: disagreement with them is expected):
    ``candidate_points`` = the larger % of the parent between the cut and either end of the
    reading's 95 % interval (``reference_error``, ``placement.reference_cut_error``: the binding
    re-read on 16 bootstrap resamples of the reference's and the parent FMO's events, 1.96 x the
    robust SD (1.4826 x MAD) of the resample cuts; the parent's two carry-overs as above when the
    reference is too small to read (fewer than 200 events); with ``reference_carry: quantile`` the cut
    and the resample cuts are
    ``placement.reference_quantile_cut``'s, and the cut is also flagged when it lies more than
    ``uncertain_points`` points of the parent above the parent's own mid carry-over (halfway between
    ``relative_low`` and ``relative_high``, the cut the gate has without the reference;
    ``reference_above_points``): marker+ cells in the reference (CD8+FoxP3+ T cells) raise its
    stained percentile and the cut, upwards only; not measured where the unstained control stands in for the FMO
    of both the parent and the reference, ``skew_stained`` given: that carry-over lacks the binding the cut
    carries, and called right cuts under-calls, stop 60, foxmsg_60); and when the reference's positives themselves
    move the cut (``reference_positive_points``, :func:`reference_positives`: the reference's
    stained events above the median of the parent's positives, beyond its FMO's share there, taken
    as half of its positives; the cut re-read without that many of its brightest events lies more
    than ``uncertain_points`` points of the parent away; ``reference_positive_pct`` the estimated
    share). Both read a heavy binding tail in the reference as marker+ cells too, so either flags only
    when a log-normal binding plus spreading fitted to the reference's bulk, carried to the
    percentile, does not reach the cut (:func:`tail_judgement`: ``reference_tail_cut``,
    ``reference_tail_points``; a second opinion on the flag, never on the cut). Both are measured on
    every such gate (before stop 50 the second was not once the first fired) and the one flag and the
    gate's ``reading_verdict`` name each that fired. With
    ``reference_carry: additive`` (the PD1 gates) the cut is also flagged when the
    shape of the nonspecific signal would move it (``tail_points``, the tail-shape check): the
    additive model gives the signal a normal shape; a log-normal one with the same median (the
    read shift) and SD (sqrt(spread^2 + skew^2)), taken at the same 32 quantiles
    (``relative_lognormal``, ``placement.reference_lognormal_cut``), fits the reference's reads as
    well and has a heavier tail; flagged when the % of the parent between the two cuts exceeds
    ``uncertain_points``. A sensitivity check: it says the data cannot tell, not that the cut is
    wrong (heavy, broad binding with many dim positives near the cut). It judges the reading, not
    the parent (below, "What each check judges"). It does not see a
    reference whose binding differs from the parent's
    (e.g. a heavier tail on the T cells than on the non-T lymphocytes). Before it, that additive
    cut is flagged when it lies more than ``uncertain_points`` points of the parent above
    ``relative_high`` (``reference_above_points``): the parent's own upper-side carry-over follows
    its nonspecific tail and its positives next to the negatives only raise it, so a reference cut
    above it reads more binding than the parent shows (under-call; V146862 under heavy PD1 binding:
    CD4+PD1+ 5.8 points under, 7.6 points above it, no other flag; since stop 59 the placement moves such a cut
    down, ``placement.reference_capped_cut``, ``reference_capped_from`` the reading's cut, which this check and the
    tail-shape check judge, and the flag says so); a tail-shape check that fired too is
    then named in that flag (one flag, both in ``reading_verdict``). (A small correction
    leaves the cut near the FMO percentile, which both candidates then bracket loosely: no flag.)
    A ``width_side: fit`` cut (``relative_carry`` ``fit``: the additive binding fitted to the
    stained negatives' percentiles, ``placement.two_step_fit``) is judged by the fit's own evidence,
    not by the mode / side carry-overs it replaces (they misread negatives made of two
    subpopulations and disagree with a right fit by many points; they stay recorded as
    ``relative_low``/``relative_high``, ``bracket_points``): ``candidate_points`` = the % of the
    parent between the cut and the farther end of [min(cut, ``fit_lognormal``) - ``fit_error``,
    max(cut, ``fit_lognormal``) + ``fit_error``] (:func:`fit_judgement`), where ``fit_lognormal`` is
    the cut with a log-normal binding plus a normal spreading fitted to the same percentiles
    (``placement.lognormal_fitted_cut``: it nests the normal signal and follows a skewed bulk into
    its heavier tail; for a log-normal cut that replaced the normal fit, ``placement.skewed_or_normal``,
    the other shape is that normal cut, ``fit_normal``, and ``fit_lognormal`` is NaN) and ``fit_error``
    the half-width of the fit's 95 % interval (``placement.fit_cut_error``, the fit repeated on 8
    interleaved folds of both tubes' events); flagged when it exceeds ``uncertain_points`` (or is
    NaN: the fit could not be repeated on the folds) and the cut moved more than ``shift_points``
    from the FMO percentile. Measured only when one of the two
    checks can use it (the cut moved more than ``shift_points``, or ``negative_shift``'s peak reads
    lie beyond its limits); NaN otherwise. With ``skew_reference`` (``fit_on`` ``reference``,
    ``placement.reference_fit``: the binding fitted on the reference population's events of both tubes and
    carried over the parent's FMO events) the folds and the other shape are fitted on the reference's events
    too and carried over the parent's FMO events (its fold for a fold), as the cut was; ``candidate_points``
    stays points of the parent. A log-normal fit under binding past the FMO percentile
    (``fit_log_sd`` > 0 and no ``fit_normal``, ``placement.lognormal_share_fit``: binding moved the whole
    negative peak past it)
    has no other shape to be compared with (``fit_lognormal`` NaN; it nests the normal) and is always
    flagged while fewer than ``MIN_FIT_SHARE`` (35 %) of the parent lie at or below the parent's FMO
    percentile (a reference's own percentile, without the parent's tandem-bright cells, is passed at a
    binding that leaves more of the parent below the parent's: stop 51): no stained valley set the cut (one would have, ``placement.place_fmo_anchored``), and dim
    positives merged into the binding's tail cannot be told from a heavier tail. The no-peak rule below does not apply to a fit cut (the
    fit reads no peak).
    Also when the FMO percentile was kept (the stained negatives moved less than the
    shift/width tolerance) yet both carry-overs lie on the same side of it, each more than
    ``uncertain_points`` points of the parent away (``kept_points``, signed: + when both would
    lower the % positive): binding below the tolerance can still move a dim marker's % when many
    events sit at the cut. Also when no stained negative peak lies near the FMO's (the FMO percentile was used, parent
    called against its control, or with ``skew_reference`` the reference carry-over) yet more than ``NO_PEAK_POINTS``
    (6) % of the parent lies at or below that cut (clamped to the stained parent's events: the message quotes the cut,
    the rule's own cut and what the gate keeps). Also (the engine, ``phenotype``) when a gate's FMO shows spillover the compensation
    left in the omitted marker's detector (:func:`residual_slopes`: the FMO parent's events, the
    marker regressed on the other markers at once, a partial slope beyond the residual check's
    tolerance) and the gate placed again with that residual taken out of both files' events
    (:func:`without_residual`) would move its % by more than ``uncertain_points`` points of the
    parent (``residual_points``, :func:`residual_impact`); the cut is not changed. Not when the gate
    placed again is itself ``uncertain_threshold`` by its own checks (``residual_uncertain``): the
    move is then that cut's own uncertainty, not the spillover's effect (under heavy log-normal
    binding the re-placed normal fit over-called by 10-20 points where removing the spillover moved
    the gate by about 1, stop 44), and the gate as placed keeps its own flags.
    Also (stop 63, the engine) when no such residual is flagged but the FMO's spillover into the marker's detector
    differs from the stained tube's (:func:`misfit_slopes`: per source, the FMO parent's partial slope minus the
    stained parent's, read on its events below the cut): the FMO compensated with a matrix that does not fit it as
    the stained tube's does (a detector whose gain drifted between the tubes scales the spillover into it), and the
    gate placed again with that difference taken out of the FMO's events only would move its % by more than
    ``uncertain_points`` points of the parent (``misfit_points``, :func:`misfit_impact`); the cut is not changed.
    A cut anchored on the product's unstained control for want of the gate's FMO is raised by the reference
    population's right skew inside the placement (``placement.place_fmo_anchored``'s ``skew_binding``, winner
    ``skew_carry``), so every check here judges the raised cut. Such a cut is judged on its own terms, not by
    the parent's carry-overs below it, the cuts it was raised from (the raise itself lay 3.5-8.8 points of the
    parent from them under heavy PD1 binding: stop 53's false alarms): ``candidate_points`` = the larger of the % of
    the parent between the cut and either end of its reading's 95 % interval (``skew_error``,
    ``placement.skew_cut_error``: the control's, the parent's and the ``skew_reference``'s stained events
    resampled 16 times, the skew and the parent's binding re-read and carried on the shift chosen on all events,
    1.96 x the robust SD of the cuts, none below the rule's cut it was raised from) and the % between the cut and
    the parent's upper-side carry-over where that lies above it (``skew_upper_points``: the parent's tail shows more
    than the raise gives; the raise explains no carry-over above the cut; not above a cut lowered on the reference's
    shift, ``skew_lowered_points``: that carry-over is read on the parent's own negative mode, which its dim positives
    pull up, the reading the lowered cut replaces, stop 56) and, for such a lowered cut, the % between it and the same
    carry with the parent's lower-side spread read around the reference's shift where that lies below it
    (``skew_under_points``, ``skew_spread_cut``, ``placement.spread_at_reference_cut``: the lowered cut keeps the
    spread read around the parent's pulled-up mode, too wide, and may still lie above the truth); flagged as above
    when it exceeds
    ``uncertain_points`` and the cut moved more than ``shift_points``; and, where the skew makes most of the signal the carry adds (skew above the parent's
    lower-side spread), by the tail-shape check of that signal (:func:`skew_tail`: the parent's shift and the SD
    sqrt(lower-side spread^2 + skew^2) with a log-normal shape, ``relative_lognormal``, ``tail_points``) when it
    would lower the % by more than ``uncertain_points``: the normal shape under-reaches a heavy log-normal binding
    tail (stop 54, fbflags_54).
    Where the strategy states the parent's cells outside
    the ``skew_reference`` marker-negative (``outside_cells: negative``) such a cut lying inside their bulk is moved
    up inside the placement too, to the parent's first valley above their negative peak (winner ``outside_valley``,
    ``placement.outside_valley``), or to the parent's negatives read on their lower sides where those lie lower
    (winner ``outside_pooled``, ``placement.pooled_lower_sides``; stop 59), at any height with a shallow valley or
    none, which the outside check always flags: no valley tells their positives from their upper side (stop 55's
    mirror before it); a log-normal fit's cut above those negatives moves down to them, winner ``outside_pooled``
    too, always flagged; stop 58), and the engine (``phenotype._TubeKindRun._on_unstained``) flags a cut
    still there:
    when more than ``placement.OUTSIDE_SHARE`` (50) % of them, and more than ``placement.OUTSIDE_POINTS`` (1.5)
    points of the parent, lie above it (``outside_pct``, ``outside_median``, ``outside_points``:
    ``placement.outside_reading``; joined to the gate's own ``uncertain_threshold`` when it has one): no valley was
    found above them, or most of them lie above the moved cut (CD56 without its FMO: the stained valley below the
    CD8+ T cells over-called NKT by 37-64 points; stop 53, fbcd56_53; moved since stop 54).
    What each check judges (``tilpheno.gates.shared_reading``: one reading, one verdict). The reading a
    ``skew_reference`` cut carries (the binding read once per tube on the reference population, shared by every
    gate of that marker, control file, reference and ``reference_carry``): ``reference_above_points`` (either
    carry), ``reference_positive_points`` and the tail-shape check (``tail_points``) judge it; the ones that fire on
    a gate are its ``reading_verdict`` diagnostic (every one, in that order) and every other gate carrying the reading
    gets an ``uncertain_threshold`` naming that gate, each check and its size there (the record's ``reading_verdict``
    column names them on every gate carrying the reading). A parent with positives next to its negatives
    raises its own carry-over and hides the same reading's error (CD8+PD1+ against PD1+); and the read fixes no
    tail shape for any gate it carries, while a gate's own ``tail_points`` are a lower bound of the shape's
    effect (the log-normal cut is taken at the carry-over's 32 quantiles, whose tail stops at z = 2.15): on
    V153138 under heavy PD1 binding PD1+ lay 5.4 points over the ideal-FMO reference with 2.5 tail points while
    CD8+PD1+ of the same read had 3.3 (stop 48). The reading's sampling interval (``reference_error``, where it
    could be measured) judges the reading too (``candidate_points`` in ``reading_verdict``, after the carry's own
    checks): it is the reference's noise, the same for every gate carrying the reading, and each gate's 16
    resamples estimate it, in points of its own parent; before stop 54 each gate had its own verdict on it, and on
    V171804 under heavy PD1 binding PD1+ read +/- 0.075 (8.9 points) while CD8+PD1+, 3.2 points over the ideal-FMO
    reference, read +/- 0.024 (2.4 points) and was not flagged (64 resamples of the reference alone: +/- 0.026 on
    all three gates); the checks
    that judge the reading run on every gate carrying it whatever flagged the gate first (before stop 50 a gate
    whose interval fired was not judged on the reading, and the other gates carrying it were not told: V158625
    under heavy PD1 binding, CD8+PD1+ 4.9 tail points behind its interval flag). Every
    other check judges the gate's own parent or FMO parent (its carry-overs, its fit, its kept FMO percentile,
    its missing peak, its residual spillover).
``negative_shift``  the stained tube's negative peak lies more than ``shift_warning`` (0.25)
    transformed units from the FMO's, or is more than ``width_warning`` (3) times as wide or
    narrow, and the cut is carried over from the FMO (not a valley): the correction is an
    extrapolation. Severity ``info`` (no review) when the two carry-overs agree
    (``candidate_points`` <= ``uncertain_points``; for a ``width_side: fit`` cut, the fit's own
    ``candidate_points``, see ``uncertain_threshold``), ``warning`` otherwise.
``cut_at_scale_edge``  the threshold lies at or beyond the end of the stained data; for a stained
    ``valley`` gate, its rule's cut lay beyond the parent's events and was clamped there (the gate
    keeps all or none of them; :func:`valley_edge_flag`): a warning on a reported population (its
    % is 0 or 100 by the clamp), else sized by the engine like the gate's ``no_second_peak``.
``out_of_expected_range``  a study variable outside the strategy's ``expected`` range.
``tube_disagreement``  two variables the strategy declares equal (``agrees_with``) differ by
    more than their ``tolerance`` (e.g. CD3+ % in the surface and Treg tubes).
``unstained_positive``  the stained tube's placed gates applied as they are (fixed geometry) to
    the product's unstained control: more than ``UNSTAINED_LIMIT`` (1) % of the control's events
    in a positive gate's parent lie above its threshold (an unstained cell carries no stain: they
    are autofluorescent cells, or the cut is too low). The message gives the %; the lowest cut
    that would clear it (:func:`unstained_cut`) is the gate's ``unstained_cut`` diagnostic, which
    the review app offers as a candidate.
``dim_subset_events``  a declared ``dim_subset`` check (strategy ``checks:``): see
    :func:`dim_subset_flag`.
Flags of stained ``valley`` gates (``no_second_peak``, ``cut_in_dense_region``, ``few_events``) are
sized by the engine (:func:`size_flag`): ``warning`` only when moving the cut to a defensible
alternative changes a reported percentage by more than ``IMPACT_POINTS`` (2) points, else ``info``.
``few_events``  a stained-tube ``valley`` gate placed on fewer than ``MIN_GATE_EVENTS`` (1000)
    events: on the 0.02-unit smoothed density a population of a few percent is then at the level
    of counting noise, so the valley (or the one-population fallback) may sit anywhere in a flat
    stretch; on real tissue samples (FlowAtlas ileum, 600-3000 events) such gates were off by up
    to 11 points of the parent (benchmarks/validate_realdata.py).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Mapping

import numpy as np

from tilpheno.gates import placement as pl
from tilpheno.qc import NEEDS_REVIEW, NO_REVIEW_FLAGS, REVIEW_CODES, needs_review, review_status  # noqa: F401  (re-exported)

DELTA = pl.DENSE_BANDWIDTH
"""The checks' smoothing scale (transformed units): the ``cut_in_dense_region`` density's bandwidth
(``placement.peak_density_ratio``, which ``placement._skew_bounded`` reads too) and the cut's neighbourhood."""
UNSTAINED_LIMIT = 1.0
"""% of an unstained control's parent events above a stained tube's positive threshold that raises
``unstained_positive``."""
IMPACT_POINTS = 2.0
"""A sized density-gate flag (:func:`size_flag`) asks for review when moving the cut to a defensible
alternative changes a reported percentage by more than this many points."""
MIN_GATE_EVENTS = 1000
"""Events below which a stained-tube density gate is flagged ``few_events``."""
NO_PEAK_POINTS = 6.0
"""% of the parent at or below an FMO percentile used for want of a stained negative peak above
which ``uncertain_threshold`` is raised."""
RECORD_COLUMNS = ["rule", "winner", "fmo_threshold", "relative_threshold", "relative_low", "relative_high",
                  "valley_threshold", "shift", "width_ratio", "fmo_mode", "stained_mode", "sensitivity_points",
                  "correction_points", "bracket_points", "candidate_points", "cut_density_ratio", "fmo_pct_above",
                  "relative_lognormal", "tail_points", "fit_lognormal", "fit_normal", "fit_error", "reading_verdict",
                  "unclamped_threshold", "skew_cut", "outside_cut", "outside_raised_from"]
"""Threshold-table columns recording both candidates, the shift and the rule that won (and a
``width_side: fit`` cut's evidence, :func:`fit_judgement`, where it was measured). ``unclamped_threshold``: the
winner's own cut where it lay beyond the stained parent's events and the gate's cut was clamped to them
(``placement.clamp_to_parent``), NaN otherwise. ``skew_cut``: a cut anchored on the unstained control for want of
the FMO, the control's percentile carried with the ``skew_reference``'s right skew (``placement.skew_carried_cut``;
the cut when it won, winner ``skew_carry``), NaN otherwise. ``outside_cut``: such a cut that lay inside the bulk of
the parent's cells outside the ``skew_reference`` stated marker-negative (``outside_cells: negative``), the parent's
first valley above their negative peak (``placement.outside_valley``; NaN when none was found or the cut lay below
less than half of them), and ``outside_raised_from`` the rule's cut it replaced where a move up won (winner
``outside_valley``, or ``outside_pooled``: the parent's negatives read on their lower sides), NaN otherwise. ``reading_verdict``: on a gate
whose cut carries a shared reference reading, each gate carrying it where a check that judges the reading fired, its
checks and their sizes (``tilpheno.gates.shared_reading.reading_verdicts``, set by the engine once every threshold
is placed; '' otherwise)."""


def _points(value: float, limit: float, held: tuple[str, ...], unit: str = " points") -> str:
    """``value`` (percentage points of a stained parent, over ``limit``: its check fired) as a flag quotes it, or,
    when that parent rests on the undetermined gates ``held`` (``phenotype.resting_on``), whose counts no output
    reports, 'more than ``limit``'."""
    return f"more than {limit:g}{unit}" if held else f"{value:.1f}{unit}"


def _clamped(d: Mapping[str, Any], cut: float) -> str:
    """', clamped to the stained parent's largest event' (', ... just below its smallest event') when an FMO
    gate's rule put its cut beyond the parent's events (``place_fmo_anchored``'s ``unclamped_threshold``, ``cut``
    the clamped cut, ``placement.clamp_to_parent``), else ''."""
    if not d.get("clamped"):
        return ""
    return f", clamped to {pl.clamped_to(float(d['unclamped_threshold']), cut)}"


def _uncertain(message: str) -> pl.Flag:
    """An ``uncertain_threshold`` review warning (module docstring) with ``message``."""
    return pl.Flag("uncertain_threshold", "warning", message)


def tail_shape(fmo: np.ndarray, stained: np.ndarray, cut: float, binding: pl.ReferenceBinding, transform: Any,
               percentile: float) -> tuple[float, float]:
    """The tail-shape check of a cut carried over with ``binding`` (module docstring,
    ``uncertain_threshold``): (the cut under a log-normal signal of the read median and SD,
    ``placement.reference_lognormal_cut``; the percentage points of the ``stained`` parent between it
    and ``cut``, 0 when there is no such cut)."""
    tail = pl.reference_lognormal_cut(fmo, binding, transform, percentile)
    return tail, (_points_between(stained, cut, tail) if math.isfinite(tail) else 0.0)


def skew_tail(control: np.ndarray, stained: np.ndarray, cut: float, binding: pl.ReferenceBinding, transform: Any,
              percentile: float, max_shift: float = pl.MAX_SHIFT) -> dict[str, float]:
    """The tail-shape check of a ``skew_carry`` cut (module docstring, ``uncertain_threshold``): the signal the skew
    carry adds to the unstained ``control`` (``placement.skew_carry_binding``: the parent's shift and lower-side
    spread, ``binding``'s skew) given a log-normal shape of the same median and SD (:func:`tail_shape`):
    ``relative_lognormal`` (transformed units) and ``tail_points`` (points of the ``stained`` parent between it and
    ``cut``), with that signal's ``skew_shift`` and ``skew_sd`` (linear units). Only where the skew exceeds that
    lower-side spread (the skew makes most of the signal's variance: its shape is the question; a normal spreading
    of the parent's own, spillover, is the model's); otherwise, or when the parent's binding cannot be read, NaN
    and 0 points (on drawn development products the check fired on FoxP3 fallbacks of no or little skew, 6 of 56
    within tolerance)."""
    carry = pl.skew_carry_binding(control, stained, binding, transform, max_shift=max_shift)
    if carry is None or not carry.skew > carry.spread:
        return {"relative_lognormal": float("nan"), "tail_points": 0.0}
    tail, points = tail_shape(control, stained, cut, carry, transform, percentile)
    return {"relative_lognormal": tail, "tail_points": points, "skew_shift": carry.shift, "skew_sd": carry.total_spread}


def _skew_message(name: str, marker: str, cut: float, d: Mapping[str, Any], high: float, shift_points: float,
                  limit: float, held: tuple[str, ...], control_name: str) -> str:
    """The ``uncertain_threshold`` message of a ``skew_carry`` cut: its reading's interval or the parent's upper-side
    carry-over above it (``candidate_points``), and the tail-shape check (``tail_points``), each where it fired."""
    parts = []
    if d["candidate_points"] > limit:
        upper = d["skew_upper_points"] >= d["candidate_points"]
        under = d.get("skew_under_points", 0.0) >= d["candidate_points"]
        where = (f"to the parent's own upper-side carry-over {high:.3f}, which the raise does not explain" if upper else
                 f"to the same carry with the parent's lower-side spread read around the reference's shift "
                 f"{d['skew_spread_cut']:.3f}, which its dim positives do not widen" if under else
                 f"within the {100 * pl.CONFIDENCE:g} % interval of that reading (+/- {d['skew_error']:.3f})")
        parts.append(f"moved {_points(d['correction_points'], shift_points, held)} of the parent from the {control_name} "
                     f"percentile (limit {shift_points:g}) and could move the % by "
                     f"{_points(d['candidate_points'], limit, held)} (limit {limit:g}) {where}")
    if d["tail_points"] > limit:
        parts.append(f"a log-normal signal with the same median and SD ({d['skew_shift']:.0f}, {d['skew_sd']:.0f} linear "
                     f"units) would put it at {d['relative_lognormal']:.3f} and "
                     f"{'lower' if d['relative_lognormal'] > cut else 'raise'} the % by "
                     f"{_points(d['tail_points'], limit, held)} of the parent (limit {limit:g}): the reads do not fix the "
                     f"shape of a heavy binding tail")
    return (f"{name}: the threshold {cut:.3f} (rule skew_carry: the {control_name} percentile carried over with the "
            f"parent's own binding and the reference population's right skew, "
            f"{'lowered' if 'skew_lowered_points' in d else 'raised'} from {float(d['skew_raised_from']):.3f}) {'; and '.join(parts)}; look at the {marker} histogram of the parent "
            f"and of the reference population, stained vs {control_name}")


def _tail_message(name: str, marker: str, cut: float, d: Mapping[str, Any], binding: pl.ReferenceBinding,
                  limit: float, held: tuple[str, ...], control_name: str) -> str:
    """The ``uncertain_threshold`` message of the tail-shape check (:func:`tail_shape`)."""
    tail, sd = d["relative_lognormal"], binding.total_spread
    shape = "a normal" if not binding.right_skewed else f"{pl.SKEWED_WEIGHT:.2f} of the way from a normal to a log-normal"
    return (f"{name}: the threshold {cut:.3f} (rule {d.get('winner')}) carries the {control_name} percentile with {shape} "
            f"nonspecific signal read on the reference population (median {binding.shift:.0f}, SD {sd:.0f} linear "
            f"units); a log-normal signal with the same median and SD would put it at {tail:.3f} and "
            f"{'lower' if tail > cut else 'raise'} the % by {_points(d['tail_points'], limit, held)} of the parent (limit "
            f"{limit:g}): the reads do not fix the shape of a heavy binding tail; look at the {marker} histogram of "
            f"the parent and of the reference population, stained vs {control_name}")


def _above_message(name: str, marker: str, cut: float, d: Mapping[str, Any], high: float, limit: float,
                   held: tuple[str, ...], control_name: str) -> str:
    """The ``uncertain_threshold`` message of an additive reference carry-over's ``reference_above_points``
    (module docstring), naming the tail-shape check too when it fired on the same reading (``tail_points``)."""
    capped = "reference_capped_from" in d   # the placement moved the reference's cut down (the check judges that)
    read = float(d["reference_capped_from"]) if capped else cut
    tail = (f"; the tail-shape check fired too: a log-normal signal with the read median and SD would put the cut at "
            f"{d['relative_lognormal']:.3f} and {'lower' if d['relative_lognormal'] > read else 'raise'} the % by "
            f"{_points(d['tail_points'], limit, held)} of the parent (tail_points, limit {limit:g})"
            if d["tail_points"] > limit else "")
    moved = (f"; the threshold was moved down to that carry-over, {cut:.3f}, which a log-normal binding tail beyond "
             f"its upper-side read can still leave a few points low" if capped else "")
    return (f"{name}: the {'reference carry-over' if capped else 'threshold'} {read:.3f} (rule {d.get('winner')}, binding "
            f"read on the reference population) lies "
            f"{_points(d['reference_above_points'], limit, held)} of the parent above the parent's own upper-side carry-over of "
            f"the {control_name} percentile {high:.3f} (limit {limit:g}), which its nonspecific tail and its positives next to "
            f"the negatives can only raise: the reference reads more binding than the parent shows (under-call){tail}{moved}; "
            f"look at the {marker} histogram of the parent and of the reference population, stained vs {control_name}")


def fit_judgement(fmo: np.ndarray, stained: np.ndarray, cut: float, transform: Any, percentile: float,
                  d: Mapping[str, Any], reference: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """The evidence a ``width_side: fit`` cut is judged by (module docstring, ``uncertain_threshold``):
    ``fit_error`` (the half-width of the fit's 95 % interval, ``placement.fit_cut_error``, transformed
    units), ``fit_lognormal`` (the cut with a log-normal binding plus normal spreading fitted to the
    same percentiles, ``placement.lognormal_fitted_cut``) and ``candidate_points``: the percentage points of the
    ``stained`` parent between ``cut`` and the farther end of [min(cut, fit_lognormal) - fit_error,
    max(cut, fit_lognormal) + fit_error] (without ``fit_lognormal`` when it is NaN; NaN when
    ``fit_error`` is: the fit could not be repeated, the cut is not settled). ``d``: the placement's
    diagnostics (``fit_*``, ``fmo_threshold``). ``reference``: the (FMO, stained) events of the reference
    population the fit was made on (``fit_on`` ``reference``, ``placement.reference_fit``): the folds and the
    other shape are fitted there too and carried over the parent's FMO events (``fmo``), as the cut was."""
    fit = pl.FitCarry(d["fit_threshold"], d["fit_shift"], d["fit_spread"], d["fit_share"], d.get("fit_log_sd", 0.0),
                      d.get("fit_normal", float("nan")))
    on, carry = (fmo, stained), None
    if reference is not None and d.get("fit_on") == "reference":
        on, carry = reference, fmo
    t_fmo = float(d["fmo_threshold"]) if carry is None else pl.fmo_threshold(on[0], percentile)
    error = pl.fit_cut_error(*on, transform, percentile, t_fmo, fit=fit, carry=carry)
    # a log-normal fit is the other shape itself (it nests the normal): the other is the normal cut it replaced
    # (placement.skewed_or_normal; none under binding past the FMO percentile, lognormal_share_fit)
    lognormal = (float("nan") if fit.log_sd > 0
                 else pl.lognormal_fitted_cut(*on, transform, percentile, fit, carry=carry))
    other = fit.normal_cut if fit.log_sd > 0 else lognormal
    ends = [cut - error, cut + error] + ([other - error, other + error] if math.isfinite(other) else [])
    return {"fit_error": error, "fit_lognormal": lognormal,
            "candidate_points": max(_points_between(stained, cut, end) for end in ends)
            if math.isfinite(error) else float("nan")}


def _fit_message(name: str, marker: str, cut: float, d: Mapping[str, Any], shift_points: float,
                 limit: float, held: tuple[str, ...], control_name: str) -> str:
    """The ``uncertain_threshold`` message of a ``width_side: fit`` cut (:func:`fit_judgement`)."""
    skewed = d.get("fit_log_sd", 0.0) > 0
    other = (f"a normal binding fitted to the same negatives puts it at {d['fit_normal']:.3f}" if skewed else
             f"a log-normal binding with spreading fitted to the same negatives puts it at {d['fit_lognormal']:.3f}")
    evidence = (f"{other} "
                f"and the fit's {100 * pl.CONFIDENCE:g} % interval is +/- {d['fit_error']:.3f}: the % could move by "
                f"{_points(d['candidate_points'], limit, held)} (limit {limit:g}); the bulk of the negatives does not fix the shape "
                f"of the binding's tail" if math.isfinite(d["candidate_points"]) else
                "the fit could not be repeated on folds of the events, so its uncertainty is unknown")
    fitted = (f"the log-normal binding fitted to the {_fitted_on(d)}stained negatives, median {d['fit_shift']:.0f} "
              f"linear units, log-SD {d['fit_log_sd']:.2f}, spreading SD {d['fit_spread']:.0f}" if skewed else
              f"the additive binding fitted to the {_fitted_on(d)}stained negatives, shift {d['fit_shift']:.0f}, SD "
              f"{d['fit_spread']:.0f} linear units")
    return (f"{name}: the threshold {cut:.3f} ({fitted}) moved {_points(d['correction_points'], shift_points, held)} of "
            f"the parent from the {control_name} percentile (limit {shift_points:g}); {evidence}; look at the {marker} histogram "
            f"of the parent, stained vs {control_name}")


def _fitted_on(d: Mapping[str, Any]) -> str:
    """Where a ``width_side: fit`` binding was fitted, for its messages: '' (the parent) or the reference's words."""
    return "reference population's " if d.get("fit_on") == "reference" else ""


def _lognormal_message(name: str, marker: str, cut: float, d: Mapping[str, Any], below_fmo: float,
                       held: tuple[str, ...], control_name: str) -> str:
    """The ``uncertain_threshold`` message of a log-normal ``width_side: fit`` cut
    (``placement.lognormal_share_fit``) that no stained valley confirmed; ``below_fmo``: % of the
    stained parent at or below the FMO percentile (not quoted when that parent rests on the undetermined gates ``held``)."""
    below = "" if held else f" (only {below_fmo:.0f}% of the parent at or below it)"
    return (f"{name}: binding moved the stained negatives past the {control_name} percentile {d['fmo_threshold']:.3f}{below}; "
            f"the threshold {cut:.3f} carries it over with a "
            f"log-normal binding fitted to the {_fitted_on(d)}negatives (median {d['fit_shift']:.0f} linear units, log-SD "
            f"{d['fit_log_sd']:.2f}, spreading SD {d['fit_spread']:.0f}) and no stained valley confirms it: dim "
            f"{marker}+ cells merged into the binding's tail would be taken for it; look at the {marker} histogram of "
            f"the parent, stained vs {control_name}")


def threshold_record(placement: pl.Placement, held: tuple[str, ...] = (),
                     control_held: tuple[str, ...] = ()) -> dict[str, Any]:
    """The RECORD_COLUMNS of one threshold (NaN / '' when the method has no such number; ``reading_verdict`` '':
    the engine sets it when every threshold is placed). ``held``, ``control_held``: as :func:`place_and_check`'s;
    with ``held`` the ``*_points`` columns (points of the stained parent) are NaN, with ``control_held``
    ``fmo_pct_above`` (the % of the FMO's parent above the cut: the FMO tube's share of the gate)."""
    d = placement.diagnostics
    out: dict[str, Any] = {}
    for key in RECORD_COLUMNS:
        blank = (held and key.endswith("_points")) or (control_held and key == "fmo_pct_above")
        out[key] = ("" if key == "reading_verdict" else float("nan") if blank
                    else d.get(key, "" if key in ("rule", "winner") else float("nan")))
    if not out["winner"]:
        out["winner"] = placement.method
    return out


_points_between = pl.points_between   # percentage points of values between two cuts (placement's, which moves them too)


def cut_sensitivity(values: np.ndarray, cut: float, delta: float = DELTA) -> float:
    """Percentage points of ``values`` within ``delta`` of ``cut`` (both sides)."""
    x = np.asarray(values, dtype=np.float64)
    return 100.0 * np.count_nonzero(np.abs(x - cut) <= delta) / x.size if x.size else float("nan")


def place_and_check(
    population: str,
    marker: str,
    fmo_values: np.ndarray,
    stained_values: np.ndarray | None,
    *,
    percentile: float,
    source_file: str,
    min_events: int = 200,
    dense_cut_ratio: float = 0.45,
    dense_points: float = 6.0,
    shift_warning: float = 0.25,
    width_warning: float = 3.0,
    uncertain_points: float = 3.0,
    shift_points: float = 3.0,
    fallback_sd: float | None = None,   # the density fallback's parameter; unused with an FMO
    reference_fmo: np.ndarray | None = None,
    reference_stained: np.ndarray | None = None,
    reference_carry: str = "additive",
    skew_stained: np.ndarray | None = None,
    held: tuple[str, ...] = (),
    control_held: tuple[str, ...] = (),
    control_name: str = "FMO",
    **anchor: Any,
) -> pl.Placement:
    """Place an ``fmo`` gate (``placement.place_fmo_anchored``, or the plain percentile when
    there is no stained evidence) and add the self-check flags of the module docstring; every
    flag (the placement's and the checks') has ``gate`` ``population``. ``held``: the undetermined gates of the
    stained file the stained parent or the reference population rest on (``phenotype.resting_on``), whose counts
    no output reports: then the flags quote no points of that parent (a size over its limit says 'more than' the
    limit; so does :func:`threshold_record` given them); ``control_held``: those of the FMO file its parent or
    reference rest on: then no % of the FMO's parent. The reference's own % of positives (read on both files) is
    'some' with either. ``control_name``: the control's name in the messages (``unstained control`` for a ``control:
    unstained`` gate and where it stands in for a missing FMO, ``phenotype._TubeKindRun._on_unstained``).
    ``skew_stained``: there, the ``skew_reference`` population's stained events, whose right-skewed binding tail
    against the control (``placement.reference_binding``) raises the cut (``placement.place_fmo_anchored``'s
    ``skew_binding``, winner ``skew_carry``), a cut judged by that reading (module docstring); with
    ``reference_carry`` ``quantile`` (the control standing in for the FMO of the reference too) no
    ``reference_above_points``. The
    diagnostics keep every number as measured and name those gates (``resting_on``): they
    are the API's, written to no output (``tilpheno.gating.GatingResult``)."""
    if stained_values is None or np.count_nonzero(np.isfinite(stained_values)) < 20:
        placement = pl.place_fmo_threshold(fmo_values, marker, percentile=percentile, source_file=source_file,
                                           min_events=min_events, control_name=control_name)
        placement = pl.Placement(placement.gate, placement.method,
                                 {**placement.diagnostics, "rule": "percentile", "winner": "fmo_percentile",
                                  "fmo_threshold": placement.diagnostics["threshold"]}, placement.flags)
        stained = None
    else:
        if (reference_fmo is not None and reference_stained is not None and anchor.get("transform") is not None
                and anchor.get("width_side") == "fit"):
            # the binding fitted on the reference population (placement.reference_fit), not its mode and sides read
            anchor["fit_reference"] = (reference_fmo, reference_stained)
        elif reference_fmo is not None and reference_stained is not None and anchor.get("transform") is not None:
            anchor["reference"] = pl.reference_binding(
                reference_fmo, reference_stained, anchor["transform"], max_shift=anchor.get("max_shift", pl.MAX_SHIFT))
            if reference_carry == "quantile" and anchor["reference"] is not None:
                anchor["reference_quantile"] = pl.reference_quantile_cut(fmo_values, reference_fmo, reference_stained,
                                                                    anchor["transform"], percentile)
            else:   # an additive reference cut this far above the parent's upper-side carry-over is moved down to it
                anchor["reference_cap_points"] = uncertain_points
        if skew_stained is not None and anchor.get("transform") is not None and "reference_quantile" not in anchor:
            # the skew_reference's binding tail the unstained control (fmo_values, standing in for the FMO) lacks;
            # a quantile carry read on that reference against the control has its stained tail already (the fallback of
            # a reference_carry: quantile gate, phenotype._TubeKindRun._on_unstained): the raise only where it could not be read
            anchor["skew_binding"] = pl.reference_binding(fmo_values, skew_stained, anchor["transform"],
                                                          max_shift=anchor.get("max_shift", pl.MAX_SHIFT))
        placement = pl.place_fmo_anchored(fmo_values, stained_values, marker, percentile=percentile,
                                          source_file=source_file, min_events=min_events, control_name=control_name,
                                          dense_cut_ratio=dense_cut_ratio, **anchor)
        stained = np.asarray(stained_values, dtype=np.float64)
        stained = stained[np.isfinite(stained)]
    d = dict(placement.diagnostics)
    if held or control_held:
        d["resting_on"] = tuple(dict.fromkeys(held + control_held))
    cut = float(d["threshold"])
    name = f"{population} ({marker})"
    control_events = "FMO's parent events" if control_name == "FMO" else f"{control_name}'s events"
    flags = list(placement.flags)
    fmo = np.asarray(fmo_values, dtype=np.float64)
    fmo = fmo[np.isfinite(fmo)]
    nominal = 100.0 - percentile
    fmo_above = 100.0 * np.count_nonzero(fmo > cut) / fmo.size if fmo.size else float("nan")
    d["fmo_pct_above"] = fmo_above
    excess = max(3.0 * nominal, nominal + 1.0)
    if fmo.size and fmo_above > excess:
        flags.append(pl.Flag("fmo_excess_positive", "warning",
                             f"{name}: {_points(fmo_above, excess, control_held, '%')} of the {control_events} lie above the threshold "
                             f"{cut:.3f} (nominal {nominal:g}%, rule {d.get('winner')}"
                             + (f", its cut {float(d['unclamped_threshold']):.3f}{_clamped(d, cut)}" if d.get("clamped") else "")
                             + f"); look at the {control_name} and stained "
                             f"histograms of {marker} in the parent"))
    if stained is not None and stained.size:
        sens = cut_sensitivity(stained, cut)
        d["sensitivity_points"] = sens
        t_fmo = float(d.get("fmo_threshold", cut))
        d["correction_points"] = _points_between(stained, cut, t_fmo)
        d["cut_density_ratio"] = pl.peak_density_ratio(stained, cut, float(d.get("stained_mode", float("nan"))))
        below = 100.0 * np.count_nonzero(stained <= cut) / stained.size
        # a width_side: fit cut (no mode or width read) is judged by the fit's own evidence below
        fitted = d.get("winner") == "fmo_relative" and d.get("relative_carry") == "fit"
        shift, ratio = d.get("shift", float("nan")), d.get("width_ratio", float("nan"))
        far = ((math.isfinite(shift) and abs(shift) > shift_warning)
               or (math.isfinite(ratio) and not 1 / width_warning <= ratio <= width_warning))
        if "note" in d and below > NO_PEAK_POINTS and not fitted:
            used = (f"the {control_name} percentile carried over with the binding read on the reference population"
                    if d.get("relative_carry") == "reference" else f"the {control_name} percentile")
            low_end, high_end = pl.negative_peak_window(float(d["fmo_mode"]), float(d["fmo_width"]),
                                                        float(anchor.get("max_shift", pl.MAX_SHIFT)))
            kept = pl.keeps(int(np.count_nonzero(placement.gate.membership({marker: stained}))), stained.size)
            flags.append(_uncertain(f"{name}: no stained negative peak near the {control_name}'s mode {float(d['fmo_mode']):.3f} (none from "
                                    f"{low_end:.3f} to {high_end:.3f}), yet {_points(below, NO_PEAK_POINTS, held, '%')} of the "
                                    f"parent lies at or below the cut {cut:.3f} ({used} "
                                    f"{float(d.get('unclamped_threshold', cut)):.3f}{_clamped(d, cut)}; the gate keeps {kept} of "
                                    f"the parent, called against its control) (limit {NO_PEAK_POINTS:g}): the negatives may be "
                                    f"shifted beyond reach and the cut several points off; look at the {marker} histogram of the "
                                    f"parent, stained vs {control_name}"))
        low, high = float(d.get("relative_low", float("nan"))), float(d.get("relative_high", float("nan")))
        # a valley, or the parent's lower sides pooled, is the stained data's own: judged by the outside check
        extrapolated = d.get("winner") not in ("stained_valley", "outside_valley", "outside_pooled")
        uncertain = False
        if extrapolated and math.isfinite(low) and math.isfinite(high):
            d["bracket_points"] = _points_between(stained, low, high)
        if fitted:
            if far or d["correction_points"] > shift_points:   # else neither check below needs it (time)
                d.update(fit_judgement(fmo, stained, cut, anchor["transform"], percentile, d,
                                       anchor.get("fit_reference")))
                uncertain = d["correction_points"] > shift_points and not d["candidate_points"] <= uncertain_points
                if uncertain:
                    flags.append(_uncertain(_fit_message(name, marker, cut, d, shift_points, uncertain_points, held, control_name)))
            below_fmo = float(np.count_nonzero(stained <= t_fmo) / stained.size)   # two_step_fit's first share
            if (d.get("fit_log_sd", 0.0) > 0 and not math.isfinite(d.get("fit_normal", float("nan"))) and not uncertain
                    and below_fmo < pl.MIN_FIT_SHARE):
                # binding moved the parent's whole negative peak past the FMO percentile and no stained valley set
                # the cut (placement: it would have): a log-normal tail fitted, which dim positives merged into it
                # would move unseen. A fit on a reference population (placement.reference_fit) passes its own FMO
                # percentile sooner (the CD8- cells' lacks the CD8+ T cells' tandem signal): the parent's says it
                uncertain = True
                flags.append(_uncertain(_lognormal_message(name, marker, cut, d, 100.0 * below_fmo, held, control_name)))
        elif extrapolated and math.isfinite(low) and math.isfinite(high):
            from_low, from_high = _points_between(stained, cut, low), _points_between(stained, cut, high)
            referenced = (d.get("winner") == "fmo_relative"
                          and math.isfinite(float(d.get("relative_reference", float("nan")))))
            skewed = d.get("winner") == "skew_carry" and skew_stained is not None
            if skewed:
                # the cut is the skew carry-over, raised from the parent's own carry-overs by the reference's skew:
                # judged by its own reading's sampling error (its distance from them is the raise itself)
                assert skew_stained is not None
                # a carry that replaced a higher cut (placement's skew_lowered_points) has no floor
                floor = -math.inf if "skew_lowered_points" in d else float(d["skew_raised_from"])
                # the resamples keep the shift chosen on all events (placement's skew_shift: the reference's)
                err = pl.skew_cut_error(fmo, stained, skew_stained, anchor["transform"], percentile,
                                        floor=floor, max_shift=anchor.get("max_shift", pl.MAX_SHIFT),
                                        on_reference="skew_shift" in d)
                d["skew_error"] = err
                # the raise explains the parent's carry-overs below the cut, not its upper-side one above it; a cut
                # lowered on the reference's shift replaced that carry-over, read on the parent's pulled-up mode: it
                # is judged by the same carry with the spread read around the reference's shift, which lies below it
                lowered = "skew_lowered_points" in d
                d["skew_upper_points"] = from_high if high > cut and not lowered else 0.0
                spread_cut = (pl.spread_at_reference_cut(fmo, stained, anchor["skew_binding"], anchor["transform"],
                                                         percentile) if lowered else math.nan)
                d["skew_spread_cut"] = spread_cut
                d["skew_under_points"] = _points_between(stained, cut, spread_cut) if spread_cut < cut else 0.0
                d["candidate_points"] = max((max(_points_between(stained, cut, cut - err),
                                                 _points_between(stained, cut, cut + err))
                                             if math.isfinite(err) else max(from_low, from_high)),
                                            d["skew_upper_points"], d["skew_under_points"])
            elif referenced:
                # the cut is the reference carry-over: judged by its own sampling error (the parent's
                # carry-overs disagree with it by what the parent's dim positives do to its mode and sides)
                assert reference_fmo is not None and reference_stained is not None
                err = pl.reference_cut_error(fmo, reference_fmo, reference_stained, anchor["transform"], percentile,
                                             max_shift=anchor.get("max_shift", pl.MAX_SHIFT), carry=reference_carry,
                                             skewed=anchor["reference"].right_skewed)
                d["reference_error"] = err
                d["candidate_points"] = (max(_points_between(stained, cut, cut - err),
                                             _points_between(stained, cut, cut + err))
                                         if math.isfinite(err) else max(from_low, from_high))
            else:
                d["candidate_points"] = max(from_low, from_high)
            uncertain = d["candidate_points"] > uncertain_points and d["correction_points"] > shift_points
            # the reading's interval is the reference's noise, the same on every gate carrying the reading (each gate's
            # resamples estimate it): a verdict on the reading (shared_reading); not where it could not be measured
            # (candidate_points is then the parent's own carry-overs' spread, which judges the parent)
            interval = (("candidate_points",) if uncertain and referenced and math.isfinite(d["reference_error"])
                        else ())
            if uncertain and referenced:
                flags.append(_uncertain(f"{name}: the threshold {cut:.3f} (rule {d.get('winner')}, binding read on the "
                                        f"reference population) moved {_points(d['correction_points'], shift_points, held)} of the parent from "
                                        f"the {control_name} percentile (limit {shift_points:g}) and could move the % by "
                                        f"{_points(d['candidate_points'], uncertain_points, held)} (limit {uncertain_points:g}) within the "
                                        f"{100 * pl.CONFIDENCE:g} % interval of the reference reading "
                                        f"(+/- {d['reference_error']:.3f}; the parent's own carry-overs {low:.3f}, "
                                        f"{high:.3f}); look at the {marker} histogram of the parent and of the reference "
                                        f"population, stained vs {control_name}"))
            elif skewed:
                d.update(skew_tail(fmo, stained, cut, anchor["skew_binding"], anchor["transform"], percentile,
                                   anchor.get("max_shift", pl.MAX_SHIFT)))
                if uncertain or d["tail_points"] > uncertain_points:
                    uncertain = True
                    flags.append(_uncertain(_skew_message(name, marker, cut, d, high, shift_points, uncertain_points,
                                                          held, control_name)))
            elif uncertain:
                flags.append(_uncertain(f"{name}: the threshold {cut:.3f} (rule {d.get('winner')}) moved "
                                        f"{_points(d['correction_points'], shift_points, held)} of the parent from the {control_name} percentile (limit "
                                        f"{shift_points:g}) and the other carry-over of the {control_name} percentile (negative peak's "
                                        f"lower-side spread {low:.3f}, upper-side spread {high:.3f}) would change the % by "
                                        f"{_points(d['candidate_points'], uncertain_points, held)} (limit {uncertain_points:g}): the data do not tell a "
                                        f"skewed nonspecific tail from positives next to the negatives; look at the {marker} "
                                        f"histogram of the parent, stained vs {control_name}"))
            # the checks that judge the shared reading run on every gate carrying it, whatever flagged the gate
            # above (the reading's interval on its own parent): one reading, one verdict (shared_reading)
            if referenced and reference_carry == "quantile":
                # FoxP3+ (marker+) cells inside the reference raise its stained percentile and so this
                # cut, upwards only: compare it with the parent's own carry-over of the FMO percentile
                # that the parent's positives move least (its negative peak's lower-side spread). Not with an
                # unstained control standing in for the FMO of both (skew_stained, the fallback): that carry-over
                # lacks the binding the cut carries and lies below right cuts (stop 60, foxmsg_60)
                messages = []
                if skew_stained is None:
                    own = 0.5 * (low + high)
                    d["reference_above_points"] = _points_between(stained, own, cut) if cut > own else 0.0
                if d.get("reference_above_points", 0.0) > uncertain_points:
                    messages.append(f"the threshold {cut:.3f} read on the reference population "
                                    f"(reference_carry quantile) lies {_points(d['reference_above_points'], uncertain_points, held)} of the "
                                    f"parent above the parent's own carry-over of the {control_name} percentile {own:.3f} "
                                    f"(limit {uncertain_points:g}): {marker}+ cells in the reference raise its "
                                    f"stained tail and this cut (under-call)")
                # a direct test for marker+ cells in the reference: its stained events as bright as the
                # parent's positives, beyond its FMO's; the cut without them (:func:`reference_positives`)
                assert reference_fmo is not None and reference_stained is not None
                found = reference_positives(fmo, reference_fmo, reference_stained, stained, cut, anchor["transform"],
                                            percentile)
                if found is not None:
                    d["reference_positive_pct"], cleaned = found
                    d["reference_positive_points"] = _points_between(stained, cleaned, cut)
                    if d["reference_positive_points"] > uncertain_points:
                        messages.append(f"{'some' if held or control_held else format(d['reference_positive_pct'], '.2f') + '%'} of the "
                                        f"reference population's stained events are {marker}+ (as bright as the parent's positives, beyond "
                                        f"its {control_name}); without them the threshold {cut:.3f} (reference_carry quantile) "
                                        f"would be {cleaned:.3f}, {_points(d['reference_positive_points'], uncertain_points, held)} of the "
                                        f"parent away (limit {uncertain_points:g})")
                if messages:
                    # both checks also read a heavy binding tail as marker+ cells: a second opinion
                    d.update(tail_judgement(fmo, reference_fmo, reference_stained, stained, cut, anchor["transform"],
                                            percentile))
                    if not d["reference_tail_cut"] >= cut:   # NaN: no binding tail to explain the cut
                        uncertain = True
                        # shared_reading: the reading is wrong (every check that found it)
                        d["reading_verdict"] = tuple(c for c in ("reference_above_points", "reference_positive_points")
                                                     if d.get(c, 0.0) > uncertain_points)
                        tail = (f"a log-normal binding tail fitted to the reference's bulk reaches only "
                                f"{d['reference_tail_cut']:.3f}" + ("" if held else f", {d['reference_tail_points']:.1f} points of the parent")
                                + " below the cut" if math.isfinite(d["reference_tail_cut"])
                                else "no binding tail could be fitted to the reference's bulk")
                        flags.append(_uncertain(f"{name}: {'; and '.join(messages)}; {tail}; look at the {marker} "
                                                f"histogram of the reference population, stained vs {control_name}, for {marker}+ "
                                                f"cells in it"))
            elif referenced and anchor.get("reference") is not None:
                # the parent's upper-side carry-over follows its own nonspecific tail, widened by its
                # positives next to the negatives: a reference cut above it reads more binding than
                # the parent shows (a reference whose binding or reading differs: under-call); both checks
                # judge the reading's cut, which the placement moved down to that carry-over where this fired
                read_cut = float(d.get("reference_capped_from", cut))
                d["reference_above_points"] = pl.reference_above_points(stained, read_cut, high)
                # the additive carry-over gives the nonspecific signal a normal shape; the reference's
                # reads fit a heavier, log-normal tail as well: how far would that move the %
                d["relative_lognormal"], d["tail_points"] = tail_shape(fmo, stained, read_cut, anchor["reference"],
                                                                       anchor["transform"], percentile)
                # shared_reading: every check that fired on the reading (wrong; the read fixes no tail shape)
                verdict = tuple(c for c in ("reference_above_points", "tail_points") if d[c] > uncertain_points)
                if verdict:
                    uncertain = True
                    d["reading_verdict"] = verdict
                    flags.append(_uncertain(_above_message(name, marker, cut, d, high, uncertain_points, held, control_name)
                                            if verdict[0] == "reference_above_points" else
                                            _tail_message(name, marker, cut, d, anchor["reference"], uncertain_points, held, control_name)))
            if interval:   # after the checks of either carry (shared_reading.READING_CHECKS order)
                d["reading_verdict"] = tuple(d.get("reading_verdict", ())) + interval
        if (not uncertain and d.get("winner") == "fmo_percentile" and math.isfinite(low) and math.isfinite(high)
                and anchor.get("rule", "anchored") != "percentile"):
            # the negatives moved less than the tolerance, so the FMO percentile was kept; both carry-overs
            # of it (lower- and upper-side spread) on the same side of it by more than uncertain_points
            both = sorted((_points_between(stained, cut, low) * (1 if low > cut else -1),
                           _points_between(stained, cut, high) * (1 if high > cut else -1)))
            d["kept_points"] = both[0] if both[0] > 0 else (-both[1] if both[1] < 0 else 0.0)
            if abs(d["kept_points"]) > uncertain_points:
                uncertain = True
                flags.append(_uncertain(f"{name}: the {control_name} percentile {cut:.3f} was kept (stained negatives within the "
                                        f"shift/width tolerance of the {control_name}'s), yet both carry-overs of it (negative peak's "
                                        f"lower-side spread {low:.3f}, upper-side spread {high:.3f}) would change the % by "
                                        f"{'' if held else 'at least '}{_points(abs(d['kept_points']), uncertain_points, held)} (limit "
                                        f"{uncertain_points:g}); look at the "
                                        f"{marker} histogram of the parent, stained vs {control_name}"))
        # a dim marker's FMO cut (rule relative) lies in the overlap of negatives and positives by
        # convention: a dense cut there is recorded; review rests on uncertain_threshold
        settled_dim = anchor.get("rule") == "relative" and not uncertain
        if d["cut_density_ratio"] > dense_cut_ratio and sens > dense_points:
            flags.append(pl.Flag("cut_in_dense_region", "info" if settled_dim else "warning",
                                 f"{name}: the threshold {cut:.3f} lies inside the negative peak (density "
                                 f"{d['cut_density_ratio']:.2f} of the peak's, limit {dense_cut_ratio:g}); "
                                 + ("" if held else f"{sens:.1f} points of the parent lie within {DELTA} of it; ")
                                 + f"rule {d.get('winner')}; look at the "
                                 f"{marker} histogram of the parent, stained vs {control_name}"))
        if extrapolated and far:
            settled = math.isfinite(d.get("candidate_points", float("nan"))) and d["candidate_points"] <= uncertain_points
            flags.append(pl.Flag("negative_shift", "info" if settled else "warning",
                                 f"{name}: stained negatives sit {shift:+.3f} transformed units from the {control_name}'s and "
                                 f"are {ratio:.2f}x as wide (limits {shift_warning:g}, {width_warning:g}x); the "
                                 f"threshold carried over from the {control_name} "
                                 + ("" if held else f"moved {d['correction_points']:.1f} points of the parent and ")
                                 + f"rests on the additive model of nonspecific binding; look at nonspecific "
                                 f"binding / spreading in {marker}, stained vs {control_name}"))
        if cut >= stained.max() or cut <= stained.min():
            flags.append(pl.Flag("cut_at_scale_edge", "warning",
                                 f"{name}: the threshold {cut:.3f} is at the edge of the stained data "
                                 f"[{stained.min():.3f}, {stained.max():.3f}]; look at the {marker} histogram"))
    return pl.Placement(placement.gate, placement.method, d, tuple(replace(f, gate=population) for f in flags))


def partial_slopes(linear: Mapping[str, np.ndarray], marker: str, below: float) -> dict[str, tuple[float, float, bool]]:
    """The partial slopes into ``marker``'s detector of its events below ``below`` (compensated linear units;
    ``inf`` in an FMO's omitted detector): source marker -> (slope, its least-squares standard error, flagged
    beyond the residual tolerance), ``tilpheno.spillover.residual_spillover``'s one regression."""
    from tilpheno.spillover import residual_spillover

    table = residual_spillover(dict(linear), negative_cuts={marker: below}, targets=[marker])
    return {str(r.source): (float(r.slope), float(r.slope_se), bool(r.flagged)) for r in table.itertuples(index=False)}


def residual_slopes(fmo_read: Mapping[str, tuple[float, float, bool]]) -> dict[str, float]:
    """Residual spillover into a marker's detector read on its FMO control: the flagged partial slopes
    (|slope| above the residual tolerance) of ``fmo_read``, the FMO parent's :func:`partial_slopes` with
    ``below`` = inf, source marker -> slope (linear units of the marker per linear unit of the source).
    The FMO lacks the marker's antibody, so every event is negative there and a signal in its detector
    that follows another marker is spillover the matrix left in (a degraded tandem), not biology."""
    return {source: slope for source, (slope, _, flagged) in fmo_read.items() if flagged}


def without_residual(linear: Mapping[str, np.ndarray], marker: str, slopes: Mapping[str, float]) -> np.ndarray:
    """``marker``'s compensated linear values with the residual spillover ``slopes``
    (:func:`residual_slopes`) taken out: value - sum of slope x source value, per event."""
    out = np.array(linear[marker], dtype=np.float64)
    for source, slope in slopes.items():
        out -= slope * linear[source]
    return out


def misfit_slopes(fmo: Mapping[str, tuple[float, float, bool]], stained_linear: Mapping[str, np.ndarray], marker: str,
                  cut: float, level: float = 0.05) -> dict[str, float]:
    """The FMO's compensation misfit in ``marker``'s detector: source marker -> the FMO parent's partial slope
    (``fmo``: its :func:`partial_slopes` read, every event negative there) minus the stained parent's (its events
    below ``cut``, compensated linear units), for the sources testable in both (whatever the slopes' size). About 0
    when both tubes were compensated alike (right, or wrong alike: one matrix, one error); ``-delta`` when the FMO's
    spillover from that source is over-compensated by ``delta`` more than the stained tube's. Linear units of
    ``marker`` per linear unit of the source.

    Empty (no misfit to take out) unless it exceeds its own sampling error: some source's difference is beyond
    ``z`` times its standard error (the two tubes' least-squares standard errors of the partial slope, independent
    tubes: ``sqrt(se_fmo^2 + se_stained^2)``), ``z`` the two-sided normal quantile at ``level`` (5 %) shared by the
    ``k`` sources (Bonferroni: ``level / k`` each). The screen of the check's second placement (stop 63, misfit2)."""
    from statistics import NormalDist

    stained = partial_slopes(stained_linear, marker, cut)
    common = [source for source in fmo if source in stained]
    if not common:
        return {}
    z = NormalDist().inv_cdf(1.0 - level / (2 * len(common)))
    beyond = any(abs(fmo[s][0] - stained[s][0]) > z * math.hypot(fmo[s][1], stained[s][1]) for s in common)
    return {source: fmo[source][0] - stained[source][0] for source in common} if beyond else {}


def misfit_impact(population: str, marker: str, placement: pl.Placement, stained: np.ndarray,
                  corrected: pl.Placement, slopes: Mapping[str, float], uncertain_points: float = 3.0,
                  held: tuple[str, ...] = ()) -> pl.Placement:
    """``placement`` with the compensation-misfit check (module docstring): ``misfit_points`` = the gate's % of the
    ``stained`` parent (transformed units) at the cut placed again with the misfit ``slopes`` (:func:`misfit_slopes`)
    taken out of the FMO's events only (``corrected``) minus its % as placed (signed, points of the parent); flagged
    ``uncertain_threshold`` as :func:`residual_impact` (not when ``corrected`` is uncertain by its own checks)."""
    cut, other = float(placement.diagnostics["threshold"]), float(corrected.diagnostics["threshold"])
    points = (100.0 * (np.count_nonzero(stained > other) - np.count_nonzero(stained > cut)) / stained.size
              if stained.size else float("nan"))
    unsure = any(f.code == "uncertain_threshold" and needs_review(f) for f in corrected.flags)
    d = {**placement.diagnostics, "misfit_points": points, "misfit_threshold": other}
    sources = ", ".join(f"{source} {slope:+.3f}" for source, slope in slopes.items())
    return _flagged_move(population, marker, placement, d, points, unsure, uncertain_points, held,
                         f"its FMO's spillover into {marker} differs from the stained tube's (partial slope per unit of "
                         f"{sources}, FMO minus stained): the FMO was compensated as the stained tube was not (a "
                         f"detector's gain drifted between the tubes?); with the difference taken out of the FMO",
                         f"compare the {marker} vs {'/'.join(slopes)} plots of the FMO and the stained tube")


def residual_impact(population: str, marker: str, placement: pl.Placement, stained: np.ndarray,
                    corrected: pl.Placement, corrected_stained: np.ndarray, slopes: Mapping[str, float],
                    uncertain_points: float = 3.0, held: tuple[str, ...] = ()) -> pl.Placement:
    """``placement`` with the residual-spillover check (module docstring, ``uncertain_threshold``):
    ``residual_points`` = the gate's % of the ``stained`` parent placed again with the FMO's residual
    spillover ``slopes`` taken out of both tubes (``corrected``, on ``corrected_stained``) minus
    its % as placed (signed, points of the parent: + when the placed % is too low); flagged when
    its size exceeds ``uncertain_points`` and ``corrected`` carries no ``uncertain_threshold`` of its
    own (``residual_uncertain``): added, or joined to the gate's own (one ``uncertain_threshold`` a gate, its
    message naming every reason: :func:`_joined_uncertain`). Transformed units for both stained arrays. ``held``:
    as :func:`place_and_check`'s (the flag says which way and 'more than' the limit)."""
    cut, other = float(placement.diagnostics["threshold"]), float(corrected.diagnostics["threshold"])
    points = (100.0 * (np.count_nonzero(corrected_stained > other) - np.count_nonzero(stained > cut)) / stained.size
              if stained.size else float("nan"))
    # a re-placed cut that its own checks call uncertain measures no move of the spillover's
    unsure = any(f.code == "uncertain_threshold" and needs_review(f) for f in corrected.flags)
    d = {**placement.diagnostics, "residual_points": points, "residual_threshold": other, "residual_uncertain": unsure}
    sources = ", ".join(f"{source} {slope:+.3f}" for source, slope in slopes.items())
    return _flagged_move(population, marker, placement, d, points, unsure, uncertain_points, held,
                         f"its FMO shows spillover into {marker} that the compensation left in (partial slope per unit "
                         f"of {sources}); with it taken out of both tubes",
                         f"check the compensation (a degraded tandem?) and the {marker} vs {'/'.join(slopes)} plot of "
                         f"the FMO")


def _flagged_move(population: str, marker: str, placement: pl.Placement, diagnostics: dict[str, Any], points: float,
                  unsure: bool, uncertain_points: float, held: tuple[str, ...], why: str, look: str) -> pl.Placement:
    """``placement`` with ``diagnostics`` and, where the gate placed again would move its % by more than
    ``uncertain_points`` points of the parent (``points``, signed) and that placement is not ``unsure`` by its own
    checks, ``uncertain_threshold`` saying ``why`` (what was taken out), the move and where to ``look``
    (:func:`residual_impact`, :func:`misfit_impact`)."""
    if unsure or not abs(points) > uncertain_points:
        return pl.Placement(placement.gate, placement.method, diagnostics, placement.flags)
    move = (f"{'up' if points > 0 else 'down'} by {_points(abs(points), uncertain_points, held)} of the parent"
            if held else f"by {points:+.1f} points of the parent")
    message = f"{why} the gate would move the % {move} (limit {uncertain_points:g}); {look}"
    flags = _joined_uncertain(placement.flags, population, marker, message)
    return pl.Placement(placement.gate, placement.method, diagnostics, tuple(replace(f, gate=population) for f in flags))


def _joined_uncertain(flags: tuple[pl.Flag, ...], population: str, marker: str, message: str) -> tuple[pl.Flag, ...]:
    """``flags`` with ``uncertain_threshold`` saying ``message``: added, or joined to the gate's own one (one flag
    of a code per gate)."""
    own = [f for f in flags if f.code == "uncertain_threshold"]
    if not own:
        return flags + (_uncertain(f"{population} ({marker}): {message}"),)
    joined = replace(own[0], severity="warning", message=f"{own[0].message}; also {message}")
    return tuple(joined if f is own[0] else f for f in flags)


def _pooled_words(d: Mapping[str, Any], reference: str, found: Mapping[str, float]) -> str:
    """:func:`fallback_outside_check`'s words on the cut a move to ``placement.pooled_lower_sides`` gave (winner
    ``outside_pooled``, up or down): the percentile, the two groups' peaks and the share of the cells outside
    ``reference`` above it."""
    return (f"the {float(d['percentile']):g}th percentile of the parent's negatives read on their lower sides (normal "
            f"about the peaks {float(d['pooled_inside_peak']):.3f} of its cells in {reference} and "
            f"{float(d['pooled_outside_peak']):.3f} of those outside it; {found['outside_pct']:.1f}% of the latter above it)")


def _pooled_misses(marker: str, reference: str) -> str:
    """What a cut at ``placement.pooled_lower_sides`` (normal groups) can get wrong, and where to look."""
    return (f"so positives dimmer than the cut are missed and a binding tail heavier than normal is called positive; "
            f"look at the {marker} histogram of the parent outside {reference}")


def fallback_outside_check(population: str, marker: str, placement: pl.Placement, stained: np.ndarray,
                           outside: np.ndarray, reference: str, held: tuple[str, ...] = ()) -> pl.Placement:
    """``placement`` (a cut anchored on the unstained control) with the outside check (``placement.outside_reading``)
    in its diagnostics, and ``uncertain_threshold`` (added, or joined to the gate's own) when the cut lies inside the
    bulk of the parent's cells outside ``reference`` (``placement.outside_inside``: more than
    ``placement.OUTSIDE_SHARE`` % of them and more than ``placement.OUTSIDE_POINTS`` points of the parent above it):
    the control cannot show their spillover, so a valley or carry-over below their bulk calls them positive (CD56
    without its FMO: the stained valley between the control-like CD8- cells and the CD8+ T cells, NKT over-called by
    37-64 points before the placement moved such a cut, winner ``outside_valley``). A cut still there found no
    valley above their negative peak, or was moved and still has most of them above it (most of them positive, as
    the strategy says they are not, or the valley inside their bulk). A cut moved to a valley no prominent peak of
    the parent follows (``outside_prominent`` false: the positives a shoulder) is flagged too, and so is every cut
    moved to the parent's negatives read on their lower sides (winner ``outside_pooled``,
    ``placement.pooled_lower_sides``: normal groups, whose shape the binding need not have), up from a cut inside
    their bulk with such a shallow valley or none at all above their peak (their positives a shoulder or a tail;
    stop 59, stop 55's mirror before it), or down from a log-normal fit's cut (stop 58), or from a skew carry's raised
    cut, up from inside the parent's dense negative peak or down from above those negatives (``skew_bounded_from``,
    ``placement._skew_bounded``: the over-raise named; stop 60); not one moved up to below
    a prominent valley, which bounds it as it bounds a cut moved to that valley (stop 59). ``held``: as
    :func:`place_and_check`'s."""
    cut = float(placement.diagnostics["threshold"])
    found = pl.outside_reading(stained, outside, cut)
    d = {**placement.diagnostics, **found}
    if d.get("winner") == "outside_valley" and not d.get("outside_prominent", True) and not pl.outside_inside(found):
        message = (f"the cut {cut:.3f} anchored on the unstained control was moved up from "
                   f"{float(d['outside_raised_from']):.3f} to a shallow valley above the peak {float(d['outside_peak']):.3f} "
                   f"of the parent's cells outside {reference}, with no prominent peak of the parent above it (few "
                   f"positives on the negatives' upper side, or their tail): the cut may lie among positives or "
                   f"negatives; look at the {marker} histogram of the parent outside {reference}")
    elif d.get("winner") == "outside_pooled" and "outside_raised_from" in d and not d.get("outside_prominent"):
        valley = float(d["outside_cut"])
        message = (f"the cut {cut:.3f} anchored on the unstained control was moved up from "
                   f"{float(d['outside_raised_from']):.3f} to {_pooled_words(d, reference, found)}: "
                   + (f"the stained valley {valley:.3f} above their peak is a shallow one, with no prominent peak of the "
                      f"parent above it" if math.isfinite(valley) else "no stained valley above their peak")
                   + f" (a positive shoulder or tail on their upper side), {_pooled_misses(marker, reference)}")
    elif d.get("winner") == "outside_pooled" and "outside_lowered_from" in d:   # placement._fit_lowered
        set_aside = (f"; the skew carry's {float(d['skew_cut']):.3f} on the shift of {reference} set aside: the cells "
                     f"outside {reference}, stated {marker}-negative, raise the parent's mode by their spillover"
                     if "skew_lowered_points" in d else "")
        message = (f"the cut {cut:.3f} anchored on the unstained control was moved down from "
                   f"{float(d['outside_lowered_from']):.3f} (a log-normal binding fit's cut{set_aside}) to "
                   f"{_pooled_words(d, reference, found)}: the fit took positives next to their upper side for binding, "
                   f"and no valley sets the cut, {_pooled_misses(marker, reference)}")
    elif d.get("winner") == "outside_pooled" and "skew_bounded_from" in d:   # placement._skew_bounded
        skew, up = float(d["skew_bounded_from"]), pl.skew_bound_moved_up(d)
        message = (f"the cut {cut:.3f} anchored on the unstained control was moved {'up' if up else 'down'} from the "
                   f"skew carry's {skew:.3f} ({'lowered' if 'skew_lowered_points' in d else 'raised'} from "
                   f"{float(d['skew_raised_from']):.3f}, with the right skew of {reference}), which lay "
                   + (f"inside the parent's dense negative peak (density {float(d['skew_bound_ratio']):.2f} of the "
                      f"peak's), to " if up else "above ")
                   + _pooled_words(d, reference, found)
                   + (": the carry read the parent's binding about a lower peak than its negatives' bulk" if up else
                      f": the raise over-reads the binding, {reference}'s own {marker}+ cells next to its negatives read "
                      f"as skew (under-call)" if float(d["skew_raised_from"]) <= cut else
                      ": the log-normal binding fit's cut it raised lay above them too, the fit taking positives next "
                      "to their upper side for binding (under-call)")
                   + f", {_pooled_misses(marker, reference)}")
    elif not pl.outside_inside(found):
        return pl.Placement(placement.gate, placement.method, d, placement.flags)
    else:
        valley = float(d.get("outside_cut", float("nan")))   # absent: no move read (a synthetic caller)
        moved = (f" (moved up from {float(d['outside_raised_from']):.3f} to the stained valley above their peak "
                 f"{float(d['outside_peak']):.3f})" if d.get("winner") == "outside_valley" else
                 f" (moved up from {float(d['outside_raised_from']):.3f} to the parent's negatives read on their lower "
                 f"sides, below the stained valley {valley:.3f} above their peak {float(d['outside_peak']):.3f})"
                 if d.get("winner") == "outside_pooled" else
                 " (no stained valley above their peak)" if "outside_cut" in d and not math.isfinite(valley) else
                 f" (at or above the stained valley {valley:.3f} above their peak {float(d['outside_peak']):.3f})"
                 if math.isfinite(valley) else "")
        message = (f"the cut {cut:.3f} anchored on the unstained control{moved} lies below the median "
                   f"{found['outside_median']:.3f} of the parent's cells outside {reference} ({found['outside_pct']:.0f}% "
                   f"of them above it, {_points(found['outside_points'], pl.OUTSIDE_POINTS, held)} of the parent), "
                   f"whose spillover into {marker} the control lacks: "
                   + ("most of them positive, which the strategy states they are not, or the valley inside their bulk"
                      if math.isfinite(valley) else "positives likely over-called")
                   + f"; look at the {marker} histogram of the parent outside {reference}")
    return pl.Placement(placement.gate, placement.method, d, _joined_uncertain(placement.flags, population, marker, message))


def tail_judgement(fmo: np.ndarray, reference_fmo: np.ndarray, reference_stained: np.ndarray, stained: np.ndarray,
                   cut: float, transform: Any, percentile: float) -> dict[str, float]:
    """The second opinion on a ``reference_carry: quantile`` cut that the reference-positives checks
    (``reference_above_points``, ``reference_positive_points``) would flag: ``reference_tail_cut``
    (``placement.reference_tail_cut``, transformed units: the cut a log-normal binding tail fitted to
    the reference's bulk explains) and ``reference_tail_points`` (percentage points of the parent
    between it and ``cut``, + when ``cut`` lies above it, as marker+ cells in the reference put it;
    NaN when no tail can be fitted). The checks do not flag when that tail reaches the cut
    (``reference_tail_cut`` >= ``cut``): a heavy binding tail, not marker+ cells, explains it. Only
    the decision to flag uses the fit, never the cut; no allowance for the fit's own noise (about 1
    point of the parent): allowing 0.5-1.5 points silenced contaminated references (stop 43)."""
    tail = pl.reference_tail_cut(fmo, reference_fmo, reference_stained, transform, percentile)
    points = (_points_between(stained, tail, cut) * (1.0 if cut >= tail else -1.0)) if math.isfinite(tail) else float("nan")
    return {"reference_tail_cut": tail, "reference_tail_points": points}


def reference_positives(fmo_values: np.ndarray, reference_fmo: np.ndarray, reference_stained: np.ndarray,
                        stained: np.ndarray, cut: float, transform: Any, percentile: float,
                        rounds: int = 5) -> tuple[float, float] | None:
    """Marker+ cells inside the reference population of a ``reference_carry: quantile`` cut, and the
    cut without them: (estimated % of the reference's stained events that are positive, the cut
    re-read without them, transformed units), or None when the parent has fewer than 20 events above
    the cut (no positives to compare with).

    Level L = the median of the parent's stained events above the cut (its positives' middle). A
    reference of negatives puts as few of its stained events above L as its FMO does; the excess
    (stained - FMO share above L) is half of its positives if they are as bright as the parent's
    positives above the cut, so 2 x excess is the estimated positive share; the cut is carried over
    again (``placement.reference_quantile_cut``) from the reference's stained events without that many
    of its brightest ones. Positives in the reference raise the cut, and so L, which hides part of
    them; the estimate is therefore repeated from the cleaned cut (at most ``rounds`` times, until the
    count removed no longer grows)."""
    rf = np.asarray(reference_fmo, dtype=np.float64)
    rs = np.asarray(reference_stained, dtype=np.float64)
    rf, rs = rf[np.isfinite(rf)], np.sort(rs[np.isfinite(rs)])
    if rf.size == 0 or rs.size < 2 or np.count_nonzero(stained > cut) < 20:
        return None
    drop, current = 0, cut
    for _ in range(rounds):
        above = stained[stained > current]
        if above.size < 20:
            break
        level = float(np.median(above))
        excess = max(np.count_nonzero(rs > level) / rs.size - np.count_nonzero(rf > level) / rf.size, 0.0)
        again = min(int(round(2.0 * excess * rs.size)), rs.size - 1)
        if again <= drop:
            break
        drop = again
        cleaned = pl.reference_quantile_cut(fmo_values, rf, rs[: rs.size - drop], transform, percentile)
        if not np.isfinite(cleaned):
            break
        current = float(cleaned)
    return 100.0 * drop / rs.size, current


def variable_checks(phenotype: Mapping[str, float], variables) -> list[tuple[str, str, str, str]]:
    """Product-level checks from the strategies' variables: ``[(code, variable, gate, message)]``;
    ``gate``: the variable's numerator, the population whose gate the message asks to look at.

    ``variables``: ``tilpheno.gates.strategy.Variable`` objects with ``expected`` (low, high) and
    ``agrees_with`` / ``tolerance``.
    """
    out = []
    for v in variables:
        value = float(phenotype.get(v.name, float("nan")))
        if not math.isfinite(value):
            continue
        if v.expected is not None:
            low, high = v.expected
            if not low <= value <= high:
                out.append(("out_of_expected_range", v.name, v.numerator,
                            f"{v.numerator} ({v.name} = {value:.1f}%) outside the expected {low:g}-{high:g}%; "
                            f"look at the {v.numerator} gate and its parent"))
        if v.agrees_with:
            other = float(phenotype.get(v.agrees_with, float("nan")))
            if math.isfinite(other) and abs(value - other) > v.tolerance:
                out.append(("tube_disagreement", v.name, v.numerator,
                            f"{v.numerator} ({v.name} = {value:.1f}%) differs from {v.agrees_with} = {other:.1f}% "
                            f"by {abs(value - other):.1f} points (tolerance {v.tolerance:g}); look at the "
                            f"{v.numerator} gates of both tubes"))
    return out


def check_valley(population: str, placement: pl.Placement, values: np.ndarray, *,
                 shallow_ratio: float = 0.5, alternative: float | None = None,
                 held: tuple[str, ...] = ()) -> pl.Placement:
    """Self-check of a stained-tube ``valley`` gate: ``cut_in_dense_region`` when the density at
    the cut exceeds ``shallow_ratio`` x the lower of its two neighbouring peaks (the negative and
    the positive one; for a one-population cut, the negative peak): the populations overlap and
    a small move of the cut moves many events. A cut of the ``negative_sd``/``positive_sd`` rules
    lies on the flank of the peak it is measured from (that peak is the reference) by convention:
    the limit of a ``negative_sd`` cut is twice the density a Gaussian peak has ``k_sd`` SDs from its
    mode (``2 exp(-k_sd^2 / 2)``: never reached for k_sd <= 1.2; 0.022 for k_sd = 3): the rule calls
    everything beyond the negatives' flank the other population, so denser events at the cut are a
    population of their own that it splits (on a live/dead gate: autofluorescent live cells, or dead
    cells dim in the dye, which the dye alone cannot tell apart), the message says so. A
    ``positive_sd`` cut (rule ``higher``) leaves a flat valley of dim events below the positive
    cluster by design: its limit is the larger of ``shallow_ratio`` and that density (at the Gaussian
    limit alone, 4 more FlowAtlas samples within 5 points of the expert's T cells were flagged, none
    beyond). ``few_events`` when it was placed on fewer than
    :data:`MIN_GATE_EVENTS` events. Adds ``cut_density_ratio`` and ``sensitivity_points`` to the
    diagnostics, and ``alternative_cuts`` (flag code -> the cuts a reviewer could defend instead,
    transformed units) from which the engine sizes each flag (:func:`size_flag`): a
    ``no_second_peak`` cut against ``alternative`` (a ``reference`` gate: the same rule on the
    parent it is applied to), for an ``unstained_carry`` cut the carry with the spread read on the upper
    side (``carried_high``: the whole upper flank taken for background, as spreading from the other
    stains, which the control lacks, would make it) or, by default, the cut with half the SDs (midway
    between the cut and the one population's peak), and the other side's call: the positive call's cut when a
    ``one_population: negative`` gate overrode it (``positive_side_cut``), the negative call's
    when one population was held as positive undetermined or by ``one_population: positive``
    (``negative_side_cut``); ``cut_in_dense_region`` and ``few_events`` against the cut moved
    by ``DELTA`` either way (the smoothing scale). ``held``: the undetermined gates ``values`` rest on
    (``phenotype.resting_on``), whose counts no output reports: then ``few_events`` says 'fewer than
    1000 events', ``cut_in_dense_region`` quotes no points of the parent and ``cut_at_scale_edge`` no count
    (:func:`valley_edge_flag`), nor does the ``cut_at_scale_edge`` of an undetermined gate (``undetermined``: its own
    count is held); the diagnostics keep the numbers and name those gates (``resting_on``, as
    :func:`place_and_check`'s)."""
    d = dict(placement.diagnostics)
    if held:
        d["resting_on"] = held
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    cut = float(d.get("threshold", float("nan")))
    marker = getattr(placement.gate, "dim", "")
    alternatives: dict[str, list[float]] = {"cut_in_dense_region": [cut - DELTA, cut + DELTA],
                                            "few_events": [cut - DELTA, cut + DELTA]}
    if any(f.code == "no_second_peak" for f in placement.flags):
        if alternative is None and d.get("winner") == "unstained_carry" and np.isfinite(d["carried_high"]):
            alternative = float(d["carried_high"])   # the whole upper flank taken for background the control lacks
        if alternative is None:
            alternative = 0.5 * (cut + float(d.get("highest_negative_peak", d.get("positive_peak", float("nan")))))
        alternatives["no_second_peak"] = [float(alternative)] + [   # the other side's call
            float(d[side]) for side in ("positive_side_cut", "negative_side_cut") if side in d]
    # what an undetermined gate keeps is its own count, held as those below it are
    kept_held = held or ((population,) if d.get("undetermined") else ())
    edge = (valley_edge_flag(population, placement.gate, d, x, kept_held),) if d.get("clamped") and x.size else ()
    if edge:   # sized (for a gate the engine does not report) as its rule's flag
        alternatives["cut_at_scale_edge"] = alternatives.get("no_second_peak", [cut - DELTA, cut + DELTA])
    d["alternative_cuts"] = alternatives
    placement = pl.Placement(placement.gate, placement.method, d, placement.flags + edge)
    if x.size < MIN_GATE_EVENTS:
        few = f"fewer than {MIN_GATE_EVENTS} events" if held else f"only {x.size} events (< {MIN_GATE_EVENTS})"
        placement = pl.Placement(placement.gate, placement.method, placement.diagnostics, placement.flags + (
            pl.Flag("few_events", "warning",
                    f"{population} ({marker}): the cut {cut:.3f} was placed on {few}; "
                    f"a density valley is unreliable on so few; look at the {marker} histogram of the parent", population),))
    if x.size < 20 or not np.isfinite(cut):
        return placement
    density = pl.smoothed_density(x, DELTA, float(x.min()) - 3 * DELTA, float(x.max()) + 3 * DELTA)
    rule_peak = {"positive_sd": "positive_peak", "negative_sd": "negative_mode"}.get(str(d.get("winner")))
    keys = (rule_peak,) if rule_peak else ("negative_peak", "positive_peak", "negative_mode")
    peaks = [d[k] for k in keys if k in d and np.isfinite(d[k])]
    if not peaks:
        return placement
    at_cut, *at_peaks = np.interp([cut, *peaks], density.grid, density.values)
    ratio = float(at_cut / min(at_peaks)) if min(at_peaks) > 0 else float("nan")
    sens = cut_sensitivity(x, cut)
    d.update(cut_density_ratio=ratio, sensitivity_points=sens)
    flags = list(placement.flags)
    gaussian = 2.0 * math.exp(-0.5 * float(d.get("k_sd", 0.0)) ** 2)   # an SD rule: on its peak's flank by design
    limit = shallow_ratio if rule_peak is None else gaussian if rule_peak == "negative_mode" else max(shallow_ratio, gaussian)
    split = "" if rule_peak != "negative_mode" else (
        f", {gaussian / 2:.2g} for a Gaussian peak {float(d['k_sd']):g} SDs out: the cut splits another population "
        f"than the peak's it is measured from (its SDs), whose side the {marker} density alone does not tell")
    if np.isfinite(ratio) and ratio > limit:
        flags.append(pl.Flag("cut_in_dense_region", "warning",
                             f"{population} ({marker}): the cut {cut:.3f} lies where events are dense (density "
                             f"{ratio:.2f} of the {'peak' if split else 'neighbouring peak'}'s, limit {limit:.2g}{split}); "
                             + ("" if held else f"{sens:.1f} points of the parent lie within {DELTA} of it; ")
                             + f"look at the {marker} histogram of the parent"
                             + (f" and {marker} against the scatter" if split else ""), population))
    return pl.Placement(placement.gate, placement.method, d, tuple(flags))


def valley_edge_flag(population: str, gate, diagnostics: Mapping[str, Any], values: np.ndarray,
                     held: tuple[str, ...] = ()) -> pl.Flag:
    """``cut_at_scale_edge`` (warning; see the module docstring for its size) for a stained ``valley`` gate whose rule put the
    cut beyond the parent's events (``diagnostics``: ``unclamped_threshold``, ``threshold`` = the
    clamped cut): the gate then keeps all or none of the parent, a call no density evidence made.
    The message gives the rule's cut, the data's range (transformed units) and what the gate keeps:
    its count and % of the parent's events, or, when ``values`` rest on the undetermined gates ``held``
    (:func:`check_valley`), whose counts no output reports, only whether it keeps all or none of them."""
    marker = gate.dim
    kept = int(np.count_nonzero(gate.contains({marker: values})))
    keeps = (f"{kept} of {values.size} events ({100.0 * kept / values.size:.2f}%)" if not held else
             f"{pl.keeps(kept, values.size)} of the events")
    if "negative_sigma" in diagnostics or "positive_sigma" in diagnostics:
        side = "negative" if "negative_sigma" in diagnostics else "positive"
        peak = diagnostics.get("negative_peak", diagnostics.get("positive_peak"))
        how = f"no second peak; one population taken as {side}, its peak at {float(peak):.3f}"
    else:
        how = f"rule {diagnostics.get('winner', 'density_valley')}"
    return pl.Flag("cut_at_scale_edge", "warning",
                   f"{population} ({marker}): the cut {float(diagnostics['unclamped_threshold']):.4g} ({how}) lies beyond "
                   f"the parent's events [{values.min():.4g}, {values.max():.4g}]; clamped to "
                   f"{float(diagnostics['threshold']):.4g}, the gate keeps {keeps}; look at the {marker} histogram of the parent against the "
                   f"unstained control or an FMO", population)


def size_flag(flag: pl.Flag, impact: float, what: str, alternatives, limit: float = IMPACT_POINTS) -> pl.Flag:
    """A density-gate flag with its size: ``impact`` = the largest change, in percentage points,
    of a reported percentage (``what``) when the cut moves to one of ``alternatives``. Severity
    ``warning`` (review) when ``impact`` exceeds ``limit``, else ``info``: the flag is kept, with
    its size, but does not hold the product back. NaN impact (nothing reported below the gate)
    leaves the flag as it was. A flag whose percentages are held (an undetermined gate's own, or one
    resting on such a gate) is not sized (``phenotype._sized_flags``)."""
    if not math.isfinite(impact):
        return flag
    cuts = ", ".join(f"{a:.3f}" for a in alternatives)
    size = f"moving the cut to {cuts} changes {what} by {impact:.1f} points (review above {limit:g})"
    return pl.Flag(flag.code, "warning" if impact > limit else "info", f"{flag.message}; size: {size}", flag.gate)


def dim_subset_flag(gate: str, subset: str, reference: str, marker: str, subset_values: np.ndarray,
                    reference_values: np.ndarray, gated_count: int, quantile: float = 5.0,
                    limit: float = IMPACT_POINTS, held: tuple[str, ...] = ()) -> tuple[float, pl.Flag | None]:
    """A declared ``dim_subset`` check (``tilpheno.gates.strategy.SubsetCheck``): the ``subset``
    events with ``marker`` below the ``quantile``-th percentile of the ``reference`` events, less
    the ``quantile`` % of the subset a population like the reference would put there, in points of
    ``gated_count`` (the events of ``gate``, the population gated on ``marker``). Real double
    negative T cells carry CD3 like CD4/CD8 T cells; an excess of CD3-dim double negatives is
    non-T events above the T-cell cut. Returns (excess points, a ``dim_subset_events`` warning
    naming ``gate`` when the excess exceeds ``limit``, else None). ``held``: the undetermined gates those
    populations rest on (``phenotype.resting_on``), whose counts no output reports: the warning then says
    'more than' the limit."""
    sub = np.asarray(subset_values, dtype=np.float64)
    ref = np.asarray(reference_values, dtype=np.float64)
    sub, ref = sub[np.isfinite(sub)], ref[np.isfinite(ref)]
    if ref.size < 20 or not gated_count:
        return float("nan"), None
    low = float(np.percentile(ref, quantile))
    excess = 100.0 * (np.count_nonzero(sub < low) - quantile / 100.0 * sub.size) / gated_count
    if excess <= limit:
        return excess, None
    return excess, pl.Flag(
        "dim_subset_events", "warning",
        f"{gate} ({marker}): {_points(excess, limit, held)} of {gate} are {subset} events with {marker} below the "
        f"{quantile:g}th percentile of {reference} ({low:.3f}), beyond the {quantile:g} % expected (limit "
        f"{limit:g}); the {gate} gate may hold {marker}-dim events of another kind; look at {marker} of {subset} "
        f"against {reference}", gate)


def unstained_cut(values: np.ndarray, limit: float = UNSTAINED_LIMIT) -> float:
    """The lowest cut (transformed units) leaving at most ``limit`` % of ``values`` above it
    (``x > cut``, as a positive gate keeps them): with ``values`` an unstained control's events in
    the parent :func:`unstained_flag` counts, on the gate's marker, the lowest cut at which that
    flag is not raised. NaN without a finite value."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v)]
    if not v.size:
        return float("nan")
    allowed = int(limit * v.size // 100)   # events that may lie above the cut
    return float(v[v.size - 1 - allowed])


def unstained_flag(population: str, marker: str, cut: float, parent: str, above_pct: float, n_parent: int,
                   control: str, limit: float = UNSTAINED_LIMIT, stained: str = "") -> pl.Flag | None:
    """``unstained_positive`` when ``above_pct`` (% of the unstained ``control``'s ``n_parent``
    events in ``parent`` above the ``stained`` file's ``cut`` of ``population``) exceeds ``limit``.
    The flag's ``gate`` is ``population``; its message names the stained file (``"the stained tube
    <file>"``): the flag is raised on the control, and its ``QCFlag.gate_file`` names the stained file
    whose gate it is (``qc.flags_on_gate``)."""
    if not n_parent or not above_pct > limit:
        return None
    return pl.Flag("unstained_positive", "warning",
                   f"{population} ({marker}): {above_pct:.1f}% of the unstained control's {parent} events "
                   f"({n_parent}) lie above the threshold {cut:.3f} (limit {limit:g}%); autofluorescent cells "
                   f"or a cut too low; look at the {marker} histogram of the control ({control}) against the "
                   f"stained tube{' ' + stained if stained else ''}", population)

