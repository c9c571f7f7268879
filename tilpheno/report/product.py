"""The per-product report: page model (sections of figures and tables) from a gated product, rendered to HTML.

Layout, top to bottom: release verdict and the spec used; study variables (codebook labels and
units); release criteria; QC flags; then the sections of ``SECTION_BUILDERS``: per stained tube a
FlowJo-like grid of the gating hierarchy (one plot per gate on fixed per-marker axes, named
quadrant plots) and its subset table; FMO vs stained overlays and one compact table of every
threshold and its control; files with their SHA-256 and allow-listed keywords; provenance.
Figures are inline SVG (``report.plots``); the print stylesheet puts the product id and
"page N of M" on every printed page.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol

import numpy as np

from tilpheno.gates.quadrants import sibling_range_pairs
from tilpheno.gating_path import column_resting_on
from tilpheno.phenotype import UNDETERMINED, resting_on, undetermined_gates, within_lymph
from tilpheno.report.qc_sections import acquisition_section, compensation_sections

if TYPE_CHECKING:
    from tilpheno.phenotype import ProductResult
    from tilpheno.release import ReleaseSpec

# FCS keywords shown by default: instrument and acquisition settings only. Anything that can
# identify a patient, operator or site ($SRC, $PATIENTID, $FIL, $OP, $INST, $SMNO, $PROJ,
# $COM, dates, free-text names) is shown only with --include-identifiers.
KEYWORD_ALLOW_LIST = (
    "$CYT", "$CYTSN", "$TOT", "$PAR", "$DATATYPE", "$MODE", "$BYTEORD", "$TIMESTEP", "$VOL",
    "TUBE NAME", "CREATOR", "APPLY COMPENSATION",
)
_PARAMETER_KEYWORD = re.compile(r"^(\$P\d+[A-Z]+|\$?SPILL(OVER)?|\$COMP)$")
ROOT_NAMES = ("", "root", "all", "all events", "none")
COUNT_AND_STATUS = ("status", "error", "release_status", "qc_status")


@dataclass(frozen=True)
class Figure:
    """One plot of the report: caption, the inline ``<svg>`` markup (``report.plots``), alt text;
    ``wide``: a wide figure (e.g. signals over acquisition time) that spans two columns of the grid;
    ``population`` and ``file``: the gate it shows, if any (the stained file's name); ``review``: the
    codes of the review flags on that gate (:func:`with_review_flags`), shown in the caption."""

    title: str
    svg: str
    alt: str
    wide: bool = False
    population: str = ""
    file: str = ""
    review: str = ""


def with_review_flags(figures, flags) -> list[Figure]:
    """``figures`` with each gate's review flags (``qc.flags_on_gate``) named in its ``review``."""
    from tilpheno.qc import flags_on_gate

    out = []
    for fig in figures:
        codes = sorted({f.code for f in flags_on_gate(flags, fig.population, fig.file)}) if fig.population else []
        out.append(replace(fig, review=", ".join(codes)) if codes else fig)
    return out


@dataclass(frozen=True)
class Table:
    """A table of display strings: ``columns`` (headers) and ``rows``; ``id`` for tests and links."""

    id: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


@dataclass(frozen=True)
class Section:
    """One block of the product report: heading, an explanatory line, a grid of figures, tables.

    Built by the functions in ``SECTION_BUILDERS`` (``builder(context) -> Section | None``) and
    rendered in that order after the summary, release and QC blocks. Other stages add their own
    block (threshold diagnostics, acquisition QC) by appending a builder: see ``ReportContext``.
    """

    id: str
    title: str
    intro: str = ""
    figures: tuple[Figure, ...] = ()
    tables: tuple[Table, ...] = ()


class RunOptions(Protocol):
    """The run options a report reads (``tilpheno.pipeline.ProcessOptions`` has them)."""

    @property
    def fmo_percentile(self) -> float: ...
    @property
    def include_identifiers(self) -> bool: ...
    @property
    def release_spec(self) -> ReleaseSpec: ...
    @property
    def provenance_short(self) -> tuple[tuple[str, str], ...]: ...


@dataclass(frozen=True)
class ReportContext:
    """What a section builder gets: the gated product (``result``, a ``ProductResult``; None when
    the product failed), the outcome (phenotype, QC, release), FCS metadata by file, the run's
    options and strategies, and the product's fixed plot axes (``axes[(tube, dim)]``)."""

    outcome: object
    result: ProductResult | None
    meta: Mapping
    options: RunOptions
    strategies: tuple
    axes: Mapping[tuple[str, str], tuple[float, float]]


def _axis(dim: str, detectors: Mapping[str, str], strategy=None, limits=None):
    """Plot axis for ``dim``: "marker (detector)" label, the strategy's transform (tick labels), fixed limits."""
    from tilpheno.report.plots import Axis, axis_label
    from tilpheno.transforms import default_transform

    detector = detectors.get(dim)
    transform = strategy.transform_for(dim) if strategy is not None else default_transform(detector or dim)
    return Axis(dim, axis_label(dim, detector), transform, limits)


def _strategy_for(strategies, tube: str):
    return next((s for s in strategies if getattr(s, "tube", None) == tube), None)


def _tops_of_scale(meta: Mapping, file: str) -> dict[str, float]:
    """Detector -> ``$PnR`` in ``file``'s metadata (finite, positive values only; empty if unknown)."""
    fcs = meta.get(str(file))
    channels = getattr(fcs, "channels", None)
    if channels is None or "pnn" not in channels or "pnr" not in channels:
        return {}
    import pandas as pd

    first: dict[str, float] = {}   # the first row of a detector's name counts
    for name, value in zip(channels["pnn"].tolist(), pd.to_numeric(channels["pnr"], errors="coerce").tolist()):
        first.setdefault(str(name), float(value))
    return {name: value for name, value in first.items() if np.isfinite(value) and value > 0}


def product_axes(result, meta: Mapping, strategies=()) -> dict[tuple[str, str], tuple[float, float]]:
    """Fixed display range of every (tube kind, dimension) of a product: ``plots.display_limits`` of
    the strategy's transform up to the largest ``$PnR`` of that detector among the product's files.
    Every file of the product (stained, FMO) is drawn on these same axes."""
    from tilpheno.report.plots import display_limits
    from tilpheno.transforms import default_transform

    tops: dict[tuple[str, str], float | None] = {}
    for t in result.tubes:
        file_tops = _tops_of_scale(meta, t.file)
        for dim in t.data:
            top = file_tops.get(t.detectors.get(dim, dim))
            key = (t.tube, dim)
            known = tops.get(key)
            if key not in tops or (top is not None and (known is None or top > known)):
                tops[key] = top
    out = {}
    for (tube, dim), top in tops.items():
        strategy = _strategy_for(strategies, tube)
        transform = strategy.transform_for(dim) if strategy is not None else default_transform(dim)
        out[(tube, dim)] = display_limits(transform, top)
    return out


def _pct_of_parent(tube, population: str, masks, parent_mask) -> float:
    """The population's % of parent from the tube's table (all events), else from the masks drawn."""
    pct = _pop_value(tube, population, "pct_of_parent")
    if pct is not None:
        return pct
    n_parent = int(parent_mask.sum())
    return 100.0 * int(masks[population].sum()) / n_parent if n_parent else float("nan")


def _n_plotted(tube) -> int:
    """Events in ``tube.data``/``tube.masks``: all of the file's, or its subsample (``TubeResult.subsample``)."""
    if getattr(tube, "subsample", None) is not None:
        return len(tube.subsample)
    return tube.n_events


def _pop_value(tube, population: str, column: str) -> float | None:
    """``column`` of ``population`` in the tube's table (all events; its first row of that name),
    None if absent. Read from the two columns' arrays, not by filtering the table (about 60 look-ups
    per report)."""
    pops = tube.populations
    if "population" not in pops or column not in pops:
        return None
    rows = np.flatnonzero(pops["population"].to_numpy() == population)
    return float(pops[column].to_numpy()[rows[0]]) if len(rows) else None


def _parent_name(parent) -> str:
    return parent if parent and str(parent).lower() not in ROOT_NAMES else "all events"


def gate_figure(tube, population: str, parent, gate, method: str, detectors: Mapping[str, str], title_prefix: str = "",
                strategy=None, axes: Mapping[tuple[str, str], tuple[float, float]] | None = None,
                colours: Mapping[str, str] | None = None) -> Figure:
    """The plot of one geometric gate: its parent's events, the gate drawn, name and % of parent
    (``colours``: the study's, see ``plots.population_colour``)."""
    from tilpheno.report import plots

    axes = axes or {}
    masks = tube.masks
    dims = tuple(gate.dims)
    parent_mask = masks.get(parent, np.ones(_n_plotted(tube), dtype=bool))
    pct = _pct_of_parent(tube, population, masks, parent_mask)
    parent_name = _parent_name(parent)
    title = f"{parent_name} → {population}"
    alt = f"{population} gate on {' vs '.join(dims)} ({method}), {plots.pct_text(pct)} of {parent_name}"
    axis = [_axis(d, detectors, strategy, axes.get((tube.tube, d))) for d in dims[:2]]
    if len(dims) == 1:
        svg = plots.histogram_plot(tube.data[dims[0]][parent_mask], axis[0], gate=gate,
                                   population=population, pct_of_parent=pct, title=title, alt=alt, colours=colours)
    else:
        svg = plots.density_plot(tube.data[dims[0]][parent_mask], tube.data[dims[1]][parent_mask], axis[0], axis[1],
                                 gate=gate, population=population, pct_of_parent=pct, title=title, alt=alt,
                                 colours=colours)
    return Figure(f"{title_prefix}: {title}" if title_prefix else title, svg, alt, population=population,
                  file=tube.shown_name)


def population_figure(tube, population: str, detectors: Mapping[str, str], strategy=None) -> Figure:
    """The plot of ``population``'s gate (KeyError naming the drawable populations)."""
    for name, parent, gate, method in tube.gates:
        if name == population and gate.dims:
            return gate_figure(tube, name, parent, gate, method, detectors, "", strategy)
    drawable = [name for name, _, gate, _ in tube.gates if gate.dims]
    raise KeyError(f"no drawable gate for population {population!r}; gates: {', '.join(drawable)}")


def gate_figures(tube, detectors: Mapping[str, str], title_prefix: str, strategy=None,
                 axes: Mapping[tuple[str, str], tuple[float, float]] | None = None,
                 colours: Mapping[str, str] | None = None) -> list[Figure]:
    """One plot per geometric gate: the parent's events, the gate drawn, name and % of parent.

    The events drawn are ``tube.data`` (a subsample when ``tube.subsample`` is set); the
    percentages come from the population table, computed on all events. ``axes``: fixed display
    ranges by (tube kind, dimension) (``product_axes``); None = each plot's own data range.
    """
    figures = []
    for population, parent, gate, method in tube.gates:
        if gate.dims:
            figures.append(gate_figure(tube, population, parent, gate, method, detectors, title_prefix, strategy, axes,
                                       colours))
    return figures + quadrant_figures(tube, detectors, title_prefix, strategy, axes)


def quadrant_names(strategy, xpop: str, ypop: str) -> dict[tuple[bool, bool], str]:
    """Names of the quadrants of (x population, y population), from the strategy: its boolean
    populations that are exactly ``x & y`` with or without complements (``NK = CD56+ & !CD3+``),
    then its ``quadrants`` entries, which win. Unnamed quadrants are absent."""
    if strategy is None:
        return {}
    names: dict[tuple[bool, bool], str] = {}
    for p in strategy.populations:
        gate = p.boolean
        if gate is None or gate.op != "and" or set(gate.operands) != {xpop, ypop} or len(gate.operands) != 2:
            continue
        inside = {o: not c for o, c in zip(gate.operands, gate.complements or (False, False))}
        names[(inside[xpop], inside[ypop])] = p.name
    names.update(getattr(strategy, "quadrant_names", {}).get((xpop, ypop), {}))
    return names


def quadrant_figures(tube, detectors: Mapping[str, str], title_prefix: str, strategy=None,
                     axes: Mapping[tuple[str, str], tuple[float, float]] | None = None) -> list[Figure]:
    """FlowJo quadrant plots for sibling threshold gates: named quadrants, % of parent in each."""
    from tilpheno.report import plots

    axes = axes or {}
    figures = []
    stored = getattr(tube, "quadrants", None) or {}
    for (xpop, parent, xgate, _), (ypop, _, ygate, _) in sibling_range_pairs(tube.gates):
        parent_mask = tube.masks.get(parent, np.ones(_n_plotted(tube), dtype=bool))
        parent_name = _parent_name(parent)
        xdim, ydim = xgate.dims[0], ygate.dims[0]
        title = f"{parent_name}: {xdim} vs {ydim}"
        names = quadrant_names(strategy, xpop, ypop)
        alt = (f"{xpop} and {ypop} thresholds on {xdim} vs {ydim} in {parent_name}, % of parent per quadrant"
               + (f" ({', '.join(sorted(names.values()))})" if names else ""))
        svg = plots.quadrant_plot(
            tube.data[xdim][parent_mask], tube.data[ydim][parent_mask],
            _axis(xdim, detectors, strategy, axes.get((tube.tube, xdim))),
            _axis(ydim, detectors, strategy, axes.get((tube.tube, ydim))),
            xgate=xgate, ygate=ygate, xpopulation=xpop, ypopulation=ypop, title=title,
            percentages=stored.get((xpop, ypop)), names=names, alt=alt,
        )
        figures.append(Figure(f"{title_prefix}: {title}", svg, alt))
    return figures


def _fmo_pairs(result):
    """(stained tube, threshold row, FMO tube or None) for every threshold of every stained tube."""
    by_file = {str(t.file): t for t in result.tubes}   # two FMO files of one name: each its own
    for stain in (t for t in result.tubes if t.role == "stain"):
        for row in stain.thresholds.itertuples(index=False):
            fmo = by_file.get(str(getattr(row, "source_file", "") or ""))
            # another tube kind's FMO standing in for a missing one (phenotype.CrossControl) is no FMO of this gate
            other_kind = fmo is not None and getattr(fmo, "tube", None) != getattr(stain, "tube", None)
            yield stain, row, (fmo if fmo is not stain and not other_kind else None)


def _pct_positive(stain, fmo, row, s_vals, f_vals, thr) -> tuple[float, float]:
    """% above the threshold in the stained and FMO parent: from the arrays when they hold all events,
    else from each tube's population table (all events; the population is the parent's events above it).
    NaN where that table leaves the share blank: it rests on an undetermined gate of the tube
    (``tilpheno.phenotype.population_table``), a share no output reports."""
    counted = getattr(stain, "subsample", None) is None and getattr(fmo, "subsample", None) is None
    return _share_above(stain, row, s_vals, thr, counted), _share_above(fmo, row, f_vals, thr, counted)


def _share_above(tube, row, values, thr: float, counted: bool) -> float:
    """% of ``values`` (the tube's parent events) above ``thr``: counted on them when ``counted`` (they hold
    all events), else the tube's population table's; NaN where that table leaves it blank (:func:`_pct_positive`)."""
    table = _pop_value(tube, str(row.population), "pct_of_parent")
    if counted:
        share = 100.0 * float(np.mean(values > thr)) if values.size else float("nan")
        return share if table is None or math.isfinite(table) else float("nan")
    return float("nan") if table is None else table


def threshold_note(row, unstained: bool, percentile: float) -> str:
    """The FMO overlay's legend for the threshold line: the candidate that won (``winner``,
    gates.checks.RECORD_COLUMNS), not always the control's percentile (the cut is often the stained
    valley or the percentile carried over to the stained negatives, where the control has < 0.5 % +); a
    winner's cut beyond the stained parent's events (a percentile or a carried cut, ``unclamped_threshold``
    finite: clamped to them, the line at the parent's largest or smallest event, not at the rule's cut) says so.
    ``unstained``: the control is the product's unstained control (``control: unstained``, or standing in for a
    missing FMO), not an FMO."""
    winner = str(getattr(row, "winner", "") or "")
    rule = {"stained_valley": "stained valley", "fmo_relative": f"{'control' if unstained else 'FMO'} pct carried over",
            "skew_carry": "control pct carried over with the reference's skew",
            "outside_valley": "stained valley above the cells outside the reference",
            "outside_pooled": "the parent's negatives read on their lower sides, in and outside the reference"}
    clamped = " (clamped to the stained data)" if math.isfinite(float(getattr(row, "unclamped_threshold", "nan"))) else ""
    return f"threshold: {rule.get(winner, f'{percentile:g}th pct of ' + ('unstained control' if unstained else 'FMO'))}{clamped}"


@dataclass(frozen=True)
class OverlayControl:
    """The grey histogram of an FMO overlay and what the figure says of it: ``values`` (the control's events of
    the marker, transformed), ``pct_above`` (its % above the cut; NaN: not determined), ``name`` ("FMO" or
    "unstained control", in the legend, caption and alt text), ``source`` (the control file's shown name),
    ``percentile`` (the control percentile the threshold note names when the percentile won) and
    ``stand_in_at``: where an unstained control standing in for a missing FMO was read (the population's
    name; empty for the gate's own control, an FMO or ``control: unstained``)."""

    values: np.ndarray
    pct_above: float
    name: str
    source: str
    percentile: float
    stand_in_at: str = ""


def fmo_figures(result, percentile: float, strategies=(),
                axes: Mapping[tuple[str, str], tuple[float, float]] | None = None,
                colours: Mapping[str, str] | None = None) -> list[Figure]:
    """FMO vs stained histograms with the threshold line, for every threshold set from an FMO file, or from the
    unstained control standing in for a missing FMO."""
    figures = []
    for stain, row, fmo in _fmo_pairs(result):
        stand_in = getattr(stain, "control_events", {}).get(str(row.population)) if fmo is None else None
        drawn = (_stand_in_control(stain, row, stand_in) if stand_in is not None
                 else _fmo_control(stain, row, fmo, percentile) if fmo is not None else None)
        if drawn is not None:
            figures.append(_overlay_figure(stain, row, *drawn, strategies, axes or {}, colours))
    return figures


def _fmo_control(stain, row, fmo, percentile: float) -> tuple[np.ndarray, float, OverlayControl] | None:
    """The stained parent's events, their % above the cut and the gate's own control (its FMO file, or the
    unstained control of a ``control: unstained`` gate), each read in the parent within its own file; None
    where either file lacks the marker or the parent."""
    marker, parent = str(row.marker), str(row.parent)
    if marker not in stain.data or marker not in fmo.data:
        return None
    s_mask, f_mask = stain.masks.get(parent), fmo.masks.get(parent)
    if s_mask is None or f_mask is None:
        return None
    s_vals, f_vals = stain.data[marker][s_mask], fmo.data[marker][f_mask]
    pct_s, pct_f = _pct_positive(stain, fmo, row, s_vals, f_vals, float(row.value_transformed))
    name = "unstained control" if fmo.role == "unstained" else "FMO"
    return s_vals, pct_s, OverlayControl(f_vals, pct_f, name, fmo.shown_name, float(getattr(row, "percentile", percentile)))


def _stand_in_control(stain, row, control) -> tuple[np.ndarray, float, OverlayControl] | None:
    """The stained parent's events, their % above the cut and the unstained control a gate whose FMO was missing
    was anchored on (``control``: ``phenotype.ControlEvents``): its events where the fallback read them (the
    nearest ancestor of the parent an unstained cell reaches), its % above the cut as the threshold record
    measured it on all those events (``fmo_pct_above``; NaN where they rest on an undetermined gate). None
    without the stained parent's events."""
    marker, parent = str(row.marker), str(row.parent)
    s_mask = stain.masks.get(parent)
    if s_mask is None or marker not in stain.data:
        return None
    s_vals = stain.data[marker][s_mask]
    pct_s = _share_above(stain, row, s_vals, float(row.value_transformed), getattr(stain, "subsample", None) is None)
    drawn = OverlayControl(control.values, float(getattr(row, "fmo_pct_above", float("nan"))),
                           getattr(control, "name", "unstained control"), Path(str(control.file)).name, float(getattr(row, "percentile", "nan")),
                           _parent_name(control.population))
    return s_vals, pct_s, drawn


def _overlay_figure(stain, row, s_vals: np.ndarray, pct_s: float, control: OverlayControl, strategies,
                    axes: Mapping[tuple[str, str], tuple[float, float]], colours) -> Figure:
    """One overlay of a gate's control (grey) against its stained parent, with the cut; a stand-in for a
    missing FMO says where it was read and that the FMO is missing."""
    from tilpheno.report import plots

    marker, parent, thr = str(row.marker), str(row.parent), float(row.value_transformed)
    name, where = control.name, control.stand_in_at
    named, legend, captioned = ((f"{name} ({where})", f"{name} in {where}", f"{name} ({where}, FMO missing)") if where
                                else (name, name, name))
    anchor = (f"FMO missing, threshold {thr:.3f} anchored on" if where else f"threshold {thr:.3f} from")
    alt = (f"{marker} {named} vs stained histogram; {anchor} {control.source}; "
           f"stained {plots.pct_text(pct_s)} positive, {name} {plots.pct_text(control.pct_above)}")
    svg = plots.fmo_overlay_plot(
        s_vals, control.values,
        _axis(marker, stain.detectors, _strategy_for(strategies, stain.tube), axes.get((stain.tube, marker))),
        threshold=thr, pct_stained=pct_s, pct_fmo=control.pct_above, marker=marker, control=legend,
        threshold_note=threshold_note(row, name != "FMO", control.percentile),
        title=f"{marker} in {parent} ({stain.tube})", alt=alt, colours=colours,
    )
    return Figure(f"{marker} in {parent}: {captioned} vs stained ({stain.tube} tube)", svg, alt,
                  population=str(row.population), file=stain.shown_name)


FMO_TABLE_COLUMNS = (
    "population", "marker", "parent", "control file", "control parent events", "control % +",
    "stained % +", "threshold (linear)", "threshold (scale)", "rule",
)


def fit_evidence(row) -> str:
    """The evidence a ``width_side: fit`` cut is judged by (``gates.checks.fit_judgement``), as the
    FMO table's rule states it: the other shape's cut (the log-normal fit's, or the normal fit's that a
    log-normal cut replaced) and the half-width of the fit's 95 % interval (transformed units); ''
    where it was not measured."""
    from tilpheno.report.html import fmt

    lognormal, error = getattr(row, "fit_lognormal", None), getattr(row, "fit_error", None)
    if error is None or not math.isfinite(float(error)):
        return ""
    normal = getattr(row, "fit_normal", None)
    other = (f"normal fit {fmt(normal, 3)}" if normal is not None and math.isfinite(float(normal))
             else f"log-normal fit {fmt(lognormal, 3)}")
    points = _parent_points(getattr(row, "candidate_points", None))
    return f", {other}, fit ± {fmt(error, 3)} (95 % interval{'; ' + points if points else ''})"


def _parent_points(points) -> str:
    """A threshold record's ``*_points`` as the FMO table's rule quotes it ('2.4 points of the parent'); ''
    where it is blank: not measured, or held (the parent rests on an undetermined gate, whose counts no
    output reports: ``gates.checks.threshold_record``)."""
    from tilpheno.report.html import fmt

    return f"{fmt(points, 1)} points of the parent" if points is not None and math.isfinite(float(points)) else ""


def _candidates(row, kind: str) -> list[str]:
    """A threshold record's candidates as the FMO table's rule states them (``kind``'s percentile, the relative
    carry-over with its lower- and upper-side ends, the stained valley, the shift; transformed units), each only
    where the record has it: a blank one (no stained valley; a ``rule: percentile`` gate's carry-over and shift) is
    left out, not an empty slot; ``skew``: the carry-over with the reference's right skew of a cut anchored on the
    unstained control for want of the FMO (``placement.skew_carried_cut``); ``outside``: such a cut's valley above the
    negative peak of the parent's cells outside the reference (``placement.outside_valley``)."""
    from tilpheno.report.html import fmt

    value = {key: fmt(getattr(row, key, None), 3) for key in
             ("fmo_threshold", "relative_threshold", "relative_low", "relative_high", "valley_threshold", "skew_cut",
              "outside_cut", "shift")}
    relative = value["relative_threshold"]
    if relative and value["relative_low"] and value["relative_high"]:
        relative += f" [{value['relative_low']}–{value['relative_high']}]"
    said = [(kind, value["fmo_threshold"]), ("rel.", relative), ("valley", value["valley_threshold"]),
            ("skew", value["skew_cut"]), ("outside", value["outside_cut"]), ("shift", value["shift"])]
    return [f"{label} {text}" for label, text in said if text]


def fmo_table(result, fmo_percentile: float) -> Table:
    """Every threshold of the stained tubes in one compact table: the control (FMO) file it came
    from, that control's parent events and % above the threshold (≈ 100 − percentile by
    construction), the stained tube's % above it, the threshold on both scales and the rule used."""
    from tilpheno.report.html import fmt

    # an fmo gate without its FMO anchored on the product's unstained control (phenotype._TubeKindRun._on_unstained):
    # that control is read for the stained file's gates, not gated as a tube (ProductResult.controls)
    stand_ins = {str(fcs.path): name for name, fcs in getattr(result, "controls", ())}
    rows = []
    for stain, row, fmo in _fmo_pairs(result):
        population, parent = str(row.population), str(row.parent)
        method = str(getattr(row, "method", ""))
        pctl = getattr(row, "percentile", fmo_percentile)
        source = str(getattr(row, "source_file", "") or "")
        # or another tube kind's FMO (phenotype.CrossControl), named by the gate's control events
        crossed = getattr(stain, "control_events", {}).get(population)
        cross_kind = getattr(crossed, "name", "unstained control") if crossed is not None and str(crossed.file) == source else None
        stand_in = ((stand_ins.get(source) or (Path(source).name if cross_kind else None))
                    if fmo is None and method.startswith("fallback_") else None)
        kind = (cross_kind or "unstained control") if stand_in is not None or (fmo is not None and fmo.role == "unstained") \
            else "FMO"
        rule = (f"{fmt(pctl, 1)}th pct of {kind}" if fmo is not None
                else f"no FMO: {method}" if method else "no FMO")
        winner = str(getattr(row, "winner", "") or "")
        if (fmo is not None or stand_in is not None) and winner:   # gates.checks.RECORD_COLUMNS: both candidates, shift, winner
            candidates = _candidates(row, kind)
            rule = f"{winner}: {', '.join(candidates)}" if candidates else winner
            if stand_in is not None:
                rule = f"no FMO, anchored on the {kind} ({method}): {rule}"
            tail = getattr(row, "relative_lognormal", None)
            if tail is not None and math.isfinite(float(tail)):   # the tail-shape check (gates.checks)
                points = _parent_points(getattr(row, "tail_points", None))
                rule += f", log-normal tail {fmt(tail, 3)}" + (f" ({points})" if points else "")
            rule += fit_evidence(row)
            verdict = getattr(row, "reading_verdict", "")
            if isinstance(verdict, str) and verdict:   # gates.shared_reading: the checks that fired on its reading
                rule += f", shared reading's verdict: {verdict}"
        control_n = _pop_value(fmo, parent, "count") if fmo is not None else None
        control_pct = _pop_value(fmo, population, "pct_of_parent") if fmo is not None else None
        if stand_in is not None:   # read in the nearest ancestor an unstained cell reaches: the caption says so
            control_pct = getattr(row, "fmo_pct_above", None)
        rows.append((
            population, str(row.marker), parent,
            fmo.shown_name if fmo is not None else f"{stand_in} ({kind}, FMO missing)" if stand_in else "—",
            fmt(control_n, 0) if control_n is not None else "" if stand_in is not None else "—",
            fmt(control_pct) if control_pct is not None else "—",
            fmt(_pop_value(stain, population, "pct_of_parent")),
            fmt(getattr(row, "value_raw", None), 1), fmt(row.value_transformed, 3), rule,
        ))
    return Table("fmo-summary", FMO_TABLE_COLUMNS, tuple(rows),
                 "One row per threshold; control = the FMO tube (or, for a gate with control: unstained, the "
                 "product's unstained control) gated through the same upstream gates. control parent events = the "
                 "control's events in the parent; control % + = its % of them above the threshold; stained % + = the "
                 "stained tube's % of the parent above it; threshold (linear) = in compensated linear units (the "
                 "marker's scale inverted); threshold (scale) = on the marker's scale (the plots' axes: logicle 0–1 "
                 "unless the strategy says otherwise), as are the rule's FMO, rel., valley and shift values (each where "
                 "the rule measured it: no stained valley, no valley value); shared "
                 "reading's verdict = for a cut carrying a binding reading shared with other gates (skew_reference), "
                 "each gate where a check on that reading fired, the check and its size in points of that gate's "
                 "parent. A gate whose FMO file is missing, anchored on the product's unstained control instead "
                 "(rule 'no FMO, anchored on the unstained control', flags missing_fmo and fallback_gate), names that "
                 "control: its control % + is of the control's events in the nearest ancestor of the parent an unstained "
                 "cell reaches (the parent itself when no stain defines it; live lymphocytes for CD8+), blank where those "
                 "rest on an undetermined gate; control parent events is blank, those events not being the parent's.")


def _keywords(meta, include_identifiers: bool) -> list[tuple[str, str]]:
    """Keywords to show: the allow-list, or (opt-in) every keyword except per-parameter ($PnX) and spillover ones."""
    kw = meta.keywords
    if include_identifiers:
        return sorted((k, str(v)) for k, v in kw.items() if not _PARAMETER_KEYWORD.match(k))
    return [(k, str(kw[k])) for k in KEYWORD_ALLOW_LIST if k in kw]


def _table(frame, id: str, labels: Mapping[str, str], caption: str = "") -> Table:
    """A DataFrame as a ``Table`` of display strings with the codebook's headers."""
    from tilpheno.report.html import fmt

    if frame is None or len(frame) == 0:
        return Table(id, (), ())
    cols = [str(c) for c in frame.columns]
    rows = tuple(tuple(Path(v).name if c == "source_file" and isinstance(v, str) else fmt(v) for c, v in zip(cols, rec))
                 for rec in frame.itertuples(index=False))
    return Table(id, tuple(labels.get(c, c) for c in cols), rows, caption)


def _without_empty(frame, columns):
    """``frame`` without those of ``columns`` that hold no value in any row (shown empty otherwise)."""
    empty = [c for c in columns if c in frame.columns and frame[c].isna().all()]
    return frame.drop(columns=empty) if empty else frame


def _labels(ctx: ReportContext, columns) -> dict[str, str]:
    from tilpheno.report.codebook import labels

    return labels(columns, ctx.strategies, getattr(ctx.options, "study", None))


def _colours(ctx: ReportContext) -> Mapping[str, str]:
    """The study's plot colours (``Study.colours``; none: the generic palette)."""
    study = getattr(ctx.options, "study", None)
    return getattr(study, "colours", None) or {}


def _stained(ctx: ReportContext) -> list:
    if ctx.result is None:
        return []
    return sorted((t for t in ctx.result.tubes if t.role == "stain"), key=lambda t: (str(t.tube), str(t.file)))


GATE_RULES = {
    "fsc_density_valley": "cut at the lowest log10 FSC-A density between debris (or the axis start) and the main "
                          "peak, else a set fraction of the main peak's FSC-A; saturated events out",
    "oblique_density_valley": "the line in log10 FSC-A vs log10 SSC-A (normal at 0-60 degrees) whose projection "
                              "shows the deepest debris valley; saturated events out",
    "ratio_band": "FSC-H/FSC-A within the ratio's mode ± k robust SDs (upper side), raised to the valley after a "
                  "doublet peak",
    "density_valley": "the density minimum between the two most prominent peaks",
    "negative_sd": "k robust SDs (the RMS of one half of the peak, the lower by default) above the main "
                   "(negative) peak (rule negative_sd; rule lower: where that lies below the valley, raised to the "
                   "unstained control's percentile carried to the peak where that lies higher and below the "
                   "valley), so that dim events, such as dead cells dim in the dye, lie above the cut",
    "positive_sd": "k robust SDs (upper-half RMS) below the positive peak, the foot of the positive cluster "
                   "(rule positive_sd; rule higher: where that lies above the valley)",
    "single_population_sd": "one population only (flag no_second_peak): a set number of robust SDs beside its peak",
    "unstained_carry": "one population only (flag no_second_peak), negative against the unstained control: the "
                       "control's percentile carried to the population's peak",
    "gmm_main_component": "ellipse of the heaviest Gaussian-mixture component (merged with components inside it) "
                          "at the chi-square coverage",
    "gmm_cluster": "ellipse of the Gaussian-mixture cluster furthest to the strategy's stated sides",
    "fmo_percentile": "the FMO's percentile in the same parent (FMO section)",
    "fmo_relative": "the FMO percentile carried over to the stained negatives (FMO section)",
    "stained_valley": "the stained tube's valley, not below the FMO percentile carried over (FMO section)",
    "boolean": "and / or / not of other populations",
    "fixed": "a fixed gate given by the strategy (or imported from Gating-ML or FlowJo)",
}
"""What each placement method shown in a gate plot's title did (README: upstream gates; docs/design.md
has the parameters). A method not listed here is named without a rule."""


def gate_rules(tube) -> str:
    """One sentence stating, for every method the tube's gates used (in gating order), the
    populations it placed and its rule (:data:`GATE_RULES`)."""
    by_method: dict[str, list[str]] = {}
    for population, _, _, method in tube.gates:
        by_method.setdefault(method, []).append(population)
    parts = [f"{m} ({', '.join(pops)})" + (f" = {GATE_RULES[m]}" if m in GATE_RULES else "")
             for m, pops in by_method.items()]
    return "Gate methods: " + "; ".join(parts) + "."


def _undetermined_shown(table, strategy, undetermined: frozenset[str]):
    """The subset table with each count and percentage blanked because it rests on an undetermined gate
    (``tilpheno.phenotype.population_table``) saying so: ``undetermined: no FMO or unstained control (CD4+)``,
    and each median so blanked ``undetermined`` (the row says why); the % of live lymphocytes of a population
    not within the lymphocyte gate stays blank, as for any such population (it has none)."""
    if strategy is None or not undetermined:
        return table
    blanked = [c for c in table.columns if c in ("count", "pct_of_parent", "pct_of_live_lymph") or str(c).startswith("median_")]
    table = table.astype({c: object for c in blanked})
    for i, row in table.iterrows():
        gates = resting_on(strategy, undetermined, row["population"])
        for column in (c for c in blanked if gates and (c != "pct_of_live_lymph" or within_lymph(strategy, row["population"]))):
            if not _is_number(row[column]):
                table.at[i, column] = "undetermined" if str(column).startswith("median_") else f"{UNDETERMINED} ({', '.join(gates)})"
    return table


def undetermined_values(result, strategies, study) -> dict[str, str]:
    """Per study variable, event count and dose left blank because it rests on an undetermined gate of its
    tube's stained file (the first by name, whose counts give the variables), what the report shows instead:
    ``undetermined: no FMO or unstained control (CD3+, CD4+)``."""
    stained: dict[str, Any] = {}
    for t in sorted(getattr(result, "tubes", ()), key=lambda t: str(t.file)):
        if t.role == "stain":
            stained.setdefault(t.tube, t)
    undetermined = frozenset((tube, p) for tube, t in stained.items() for p in undetermined_gates(t.diagnostics))
    doses = getattr(study, "doses", ())
    columns = [*(v.name for s in strategies for v in s.variables), *(c for s in strategies for c in s.count_columns()),
               *(d.name for d in doses)]
    gates = {column: column_resting_on(column, undetermined, strategies, doses) for column in columns}
    return {name: f"{UNDETERMINED} ({', '.join(on)})" for name, on in gates.items() if on}


def gating_sections(ctx: ReportContext) -> list[Section]:
    """Per stained tube: the gating hierarchy as plots, then its subset table."""
    sections = []
    for t in _stained(ctx):
        name = t.shown_name
        figures = with_review_flags(gate_figures(t, t.detectors, t.tube, _strategy_for(ctx.strategies, t.tube), ctx.axes,
                                                 _colours(ctx)), getattr(ctx.outcome, "qc", ()))
        shown = _undetermined_shown(_without_empty(t.populations, ("pct_of_live_lymph",)),   # a strategy without a lymphocyte gate
                                    _strategy_for(ctx.strategies, t.tube), undetermined_gates(t.diagnostics))
        table = _table(shown, f"subsets-{t.tube}", _labels(ctx, shown.columns),
                       f"{name}: every population on all {t.n_events} events; medians in compensated linear units.")
        sections.append(Section(
            f"gating-{t.tube}", f"Gating and subsets: {t.tube} tube",
            f"{name}: {t.n_events} events. Each plot shows the parent population's events (log-scaled density "
            f"of at most {_n_plotted(t)} events drawn), the gate, and the population's % of parent (all events). "
            "Axes are fixed per marker for every file of the product. " + gate_rules(t),
            tuple(figures), (table,) if table.rows else ()))
    return sections


def fmo_section(ctx: ReportContext) -> Section | None:
    """FMO overlays and the one compact table of every threshold and its control."""
    if ctx.result is None:
        return None
    table = fmo_table(ctx.result, ctx.options.fmo_percentile)
    if not table.rows:
        return None
    return Section(
        "fmo", "FMO controls and thresholds",
        f"FMO percentile = the {ctx.options.fmo_percentile:g}th percentile of the FMO tube's events in the same parent "
        "population (numpy linear interpolation); positive = value above the threshold. The FMO is the anchor, the "
        "stained tube the evidence (README: FMO rule): a clearly bimodal stained tube is cut at its valley, never "
        "below the FMO percentile carried over to its negatives; stained negatives shifted or widened against the "
        "FMO's carry the FMO percentile over (rel.: FMO events + the shift + the added spread, in linear units; "
        "[lower-side – upper-side spread] bracket; log-normal tail: the same carry-over with a log-normal signal of "
        "the read median and SD, a sensitivity check; a cut fitted to the stained negatives: log-normal fit = the cut "
        "with a log-normal binding fitted to the same negatives, fit ± = the half-width of the fit's 95 % interval, "
        "the points of the parent the % could move between them); else the FMO percentile. A gate with control: unstained "
        "(e.g. a live/dead cut) reads the product's unstained control instead of an FMO. Histograms normalised "
        "to mode; grey = FMO (or unstained control), line = stained tube." + _stand_in_words(ctx.result),
        tuple(with_review_flags(fmo_figures(ctx.result, ctx.options.fmo_percentile, ctx.strategies, ctx.axes,
                                            _colours(ctx)), getattr(ctx.outcome, "qc", ()))), (table,))


def _stand_in_words(result) -> str:
    """What the FMO section's intro adds when a gate without its FMO was anchored on the unstained control
    (``TubeResult.control_events``); '' otherwise (a product with its FMOs: the intro as before)."""
    if not any(getattr(t, "control_events", None) for t in result.tubes):
        return ""
    return (" A gate whose FMO file is missing, its cut anchored on the product's unstained control (flags missing_fmo, "
            "fallback_gate), draws that control's events where the cut read them (grey, 'unstained control in "
            "<population>': the nearest ancestor of the parent an unstained cell reaches, as its % + in the table).")


FILE_COLUMNS = ("file", "tube", "role", "events", "SHA-256")


def files_section(ctx: ReportContext) -> Section | None:
    """Every gated file with its digest, and the allow-listed FCS keywords of each stained file."""
    if ctx.result is None:
        return None
    tubes = sorted(ctx.result.tubes, key=lambda t: (t.role != "stain", str(t.tube), str(t.role), str(t.file)))
    files = Table("files", FILE_COLUMNS, tuple(
        (t.shown_name, str(t.tube), str(t.role) + (f" ({t.fmo_marker})" if t.fmo_marker else ""),
         str(t.n_events), str(t.sha256)) for t in tubes))
    tables = [files]
    which = "" if ctx.options.include_identifiers else " (allow-list; identifiers hidden)"
    for t in _stained(ctx):
        meta = ctx.meta.get(str(t.file))
        keywords = _keywords(meta, ctx.options.include_identifiers) if meta is not None else []
        if keywords:
            tables.append(Table(f"keywords-{t.tube}", ("keyword", "value"), tuple(keywords),
                                f"FCS keywords of {t.shown_name}{which}"))
    return Section("files", "Files", "Inputs as read; SHA-256 of each file's bytes.", (), tuple(tables))


def _is_number(value) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def _scale_words(transform) -> str:
    """One transform in words: ``logicle (T=262144, W=0.5, M=4.5, A=0)``, ``arcsinh (cofactor 150)``,
    ``linear`` (parameters in linear units, Parks 2006 / Gating-ML for logicle)."""
    params = {k: v for k, v in transform.to_dict().items() if k != "kind"}
    if transform.kind == "logicle":
        return "logicle (" + ", ".join(f"{k.upper()}={v:g}" for k, v in params.items()) + ")"
    return transform.kind + "".join(f" ({k} {v:g})" for k, v in params.items())


def marker_scales(strategies) -> str:
    """The scales the product's markers are drawn and gated on, from each strategy's transforms
    (its ``transforms:``, else the default logicle): ``fluorescence logicle (T=262144, ...)`` when
    every marker has one, else ``CD3, CD4: logicle (...); CD56: arcsinh (cofactor 150)``. No
    strategy (a product that failed before gating): the default logicle's."""
    from tilpheno.transforms import Logicle

    groups: dict[str, list[str]] = {}
    for strategy in strategies:
        for marker in strategy.markers:
            names = groups.setdefault(_scale_words(strategy.transform_for(marker)), [])
            if marker not in names:
                names.append(marker)
    if len(groups) <= 1:
        return "fluorescence " + next(iter(groups), _scale_words(Logicle()))
    return "; ".join(f"{', '.join(names)}: {words}" for words, names in groups.items())


@dataclass(frozen=True)
class CheckLimits:
    """The limits of the FMO gates' self-check ``uncertain_threshold`` (``gates.checks``) that the
    product's strategies used, in points of the parent, as the report's footnote states them:
    ``shift_points`` and ``uncertain_points`` the value most FMO gates used (the default when no
    gate sets one; ties: the smaller), ``own`` the gates that used another, in words
    (``shift_points 2.5 on CD3+, PD1+; uncertain_points 5 on PD1+``; '' when none)."""

    shift_points: str
    uncertain_points: str
    own: str


def check_limits(strategies) -> CheckLimits:
    """The :class:`CheckLimits` of ``strategies`` (each FMO gate's ``params``, else the default)."""
    from collections import Counter

    from tilpheno.gates.strategy import METHODS

    common: dict[str, float] = {}
    own: list[str] = []
    for name in ("shift_points", "uncertain_points"):
        default = float(METHODS["fmo"][1][name].default)
        used = [(p.name, float(p.params.get(name, default))) for s in strategies for p in s.populations if p.method == "fmo"]
        counts = Counter(value for _, value in used) or Counter([default])
        common[name] = min(counts, key=lambda v: (-counts[v], v))
        by_value: dict[float, list[str]] = {}
        for gate, value in used:
            if value != common[name] and gate not in by_value.setdefault(value, []):
                by_value[value].append(gate)
        own += [f"{name} {value:g} on {', '.join(gates)}" for value, gates in sorted(by_value.items())]
    return CheckLimits(f"{common['shift_points']:g}", f"{common['uncertain_points']:g}", "; ".join(own))


def _as_list(built) -> list[Section]:
    if built is None:
        return []
    return list(built) if isinstance(built, (list, tuple)) else [built]


# Section builders in report order: ``builder(ReportContext) -> Section | list[Section] | None``.
# Extension point: another stage adds its block (e.g. threshold diagnostics, acquisition QC) by
# inserting its builder here; it must not raise for a failed product (``ctx.result is None``).
SECTION_BUILDERS = [gating_sections, fmo_section, acquisition_section, compensation_sections, files_section]


def _cells(value) -> str:
    """A cell number for reading: 3 significant digits in units of 10⁹ (``5.98 ×10⁹``); the
    tables keep the full number."""
    return f"{float(value) / 1e9:.3g} ×10⁹"


def variable_review(flags, result, strategies) -> dict[str, list[str]]:
    """Per study variable, the review flags on the gates it depends on (``Strategy.variable_gates``),
    as ``"<code> (<gate>)"``: the flags ``qc.flags_on_gate`` finds on each such gate in the tube's
    stained file (the first by name, whose counts give the variables)."""
    from tilpheno.qc import flags_on_gate

    stained: dict[str, str] = {}
    for t in sorted(getattr(result, "tubes", ()), key=lambda t: str(t.file)):
        if t.role == "stain":
            stained.setdefault(t.tube, t.shown_name)
    out: dict[str, list[str]] = {}
    for strategy in (s for s in strategies if s.tube in stained):
        file = stained[strategy.tube]
        for variable in strategy.variables:
            hits = [f"{f.code} ({gate})" for gate in strategy.variable_gates(variable.name)
                    for f in flags_on_gate(flags, gate, file)]
            if hits:
                out[variable.name] = list(dict.fromkeys(hits))
    return out


def render_product(outcome, result, meta: Mapping, options, strategies=()) -> str:
    """The product's self-contained HTML report (a failed product gets the reason and its flags)."""
    from tilpheno.qc import needs_review
    from tilpheno.report.codebook import build_codebook
    from tilpheno.release import FAIL
    from tilpheno.report.html import failed_criteria, render, review_hold, study_of

    strategies = tuple(strategies)
    axes = product_axes(result, meta, strategies) if result is not None else {}
    ctx = ReportContext(outcome, result, meta, options, strategies, axes)
    sections = [s for builder in SECTION_BUILDERS for s in _as_list(builder(ctx))]
    book = build_codebook({"phenotypes.csv": list(outcome.phenotype)}, strategies, options.fmo_percentile,
                          getattr(options, "study", None))
    book = book.set_index("column")
    words = study_of(options).with_noun
    blank = undetermined_values(result, strategies, getattr(options, "study", None))
    study = [(k, book.at[k, "label"], blank.get(k, v) if not _is_number(v) else v, book.at[k, "unit"],
              words(book.at[k, "meaning"])) for k, v in outcome.phenotype.items()
             if k != "product_id" and k not in COUNT_AND_STATUS and not k.startswith("n_")]
    no_dose = [row for row in study if row[3] == "cells" and not _is_number(row[2]) and row[0] not in blank]
    study = [(k, label, _cells(v) if unit == "cells" and _is_number(v) else v, unit, meaning)
             for k, label, v, unit, meaning in study if (k, label, v, unit, meaning) not in no_dose]
    counts = [(k, book.at[k, "label"], blank.get(k, v) if k.startswith("n_") and not _is_number(v) else v)
              for k, v in outcome.phenotype.items() if k in COUNT_AND_STATUS or k.startswith("n_")]
    return render(
        "product.html.j2",
        o=outcome,
        study_rows=study,
        study=study_of(options),
        variable_review=variable_review(outcome.qc, result, strategies),
        counts=counts,
        release=outcome.release,
        determined_failures=failed_criteria([r for r in outcome.release if r.outcome == FAIL and not r.held_by]),
        held=[r.criterion.name for r in outcome.release if r.held_by],
        review_hold=review_hold(outcome),
        spec=options.release_spec,
        flags=outcome.qc,
        review=[needs_review(f) for f in outcome.qc],   # qc.csv's needs_review: the flags that hold release
        sections=sections,
        no_dose=[row[1] for row in no_dose],
        percentile=options.fmo_percentile,
        marker_scales=marker_scales(strategies),
        limits=check_limits(strategies),
        strategy_sha256=sorted(dict(getattr(result, "strategy_sha256", None) or {}).items()),
        provenance=options.provenance_short,
        include_identifiers=options.include_identifiers,
    )
