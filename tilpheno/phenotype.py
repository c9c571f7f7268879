"""Product phenotype: gate every tube of one infusion product and compute the study variables.

Entry point: :func:`analyze_product` (called by the pipeline, one product at a time).

Steps per file (:func:`load_tube`): read the FCS file, map detectors to markers (panel),
compensate (the file's ``$SPILLOVER``, or an override matrix; neither -> QC flag
``no_compensation`` and uncompensated data, or ``precompensated`` (info) when every marker's
detector is a compensated export parameter, ``FJComp-``/``Comp-``: used as it is), transform each dimension with the strategy's
transform -> ``TubeData.data``: ``dimension name -> float64 array`` (``CD3``, ..., ``FSC-A``).

Gating (:func:`gate_tube_kind`): all files of one tube kind (the stained tube and its FMO
controls) go down the strategy's population tree together, population by population:

* scatter, live/dead and ``valley`` gates are placed on each file's own data (its own parent
  events), so every FMO control is gated through the same upstream gates as the stained tube;
* an ``fmo`` gate's threshold is the percentile (default 99.5) of the marker's FMO file's
  events in the same parent population; that one threshold is then applied to every file of the
  tube kind (the stained tube and the other FMO controls). Without the FMO file (or with an
  empty parent in it) the threshold is anchored on the product's unstained control as on an FMO
  (``_TubeKindRun._on_unstained``; raised to the carry-over with the right-skewed binding tail the gate's
  ``skew_reference`` shows and the control lacks where that lies above, winner ``skew_carry``), flagged
  ``missing_fmo`` and ``fallback_gate``; where the strategy states the parent's cells outside that reference
  marker-negative, a cut inside their bulk (their spillover the control lacks too) is moved up to the parent's
  first valley above their negative peak (winner ``outside_valley``), or to the parent's negatives read on their
  lower sides, its cells in and outside the reference, where those lie lower or the valley is shallow or missing
  (winner ``outside_pooled``, flagged but below a prominent valley; a log-normal fit's cut above those negatives
  moves down to them, ``outside_pooled`` too, flagged; so does a skew carry's cut inside the dense negative peak,
  up, or raised above them, down: ``placement._skew_bounded``, flagged, stop 60)
  and ``uncertain_threshold`` flags a cut still
  below their median (``checks.fallback_outside_check``); without a usable
  one it falls back to the density valley on the stained tube's parent events, with those flags and
  the ``valley`` gates' self-checks (``checks.check_valley``, sized on that stained file as theirs:
  :func:`_sized_flags`);
* boolean populations combine other populations' masks.

A population's mask covers all events of the file and is already ANDed with its parent.
Percentages: ``pct_of_parent = 100 * count / parent count``; ``pct_of_live_lymph`` relative to
the first population placed with method ``lymphocytes`` (NaN for populations outside it).
Medians (``median_<marker>``) are in compensated linear units: the inverse transform of the
median of the transformed values.

Study variables come from each strategy's ``variables`` section, computed on its stained tube;
the study (``tilpheno.study.Study``, default the bundled TIL study) names the variables every
phenotype carries (NaN when not computable), the doses and the QC rules. Absolute doses (when
``til_dose_cells``, the number of infused cells, is known) are ``base x variable / 100`` as the
study defines them; the TIL study's, with TILs taken as live lymphocytes::

    cd3_dose_cells    = dose * cd3_pct_of_live_lymph / 100
    cd4_dose_cells    = cd3_dose_cells * cd4_pct_of_cd3 / 100
    cd8_dose_cells    = cd3_dose_cells * cd8_pct_of_cd3 / 100
    nk_dose_cells     = dose * nk_pct_of_live_lymph / 100
    nkt_dose_cells    = dose * nkt_pct_of_live_lymph / 100
    pd1_dose_cells    = dose * pd1_pct_of_live_lymph / 100
    cd8pd1_dose_cells = cd3_dose_cells * cd8pd1_pct_of_cd3 / 100
    treg_dose_cells   = cd4_dose_cells * cd4foxp3_pct_of_cd4 / 100   (CD4+ from the surface tube,
                                                                     FoxP3+ share from the Treg tube)

A file that cannot be read, mapped or compensated is dropped with a QC flag (``unreadable_file``,
``panel_error``, ``compensation_error``); a gate that cannot be placed on a file flags
``gate_failed`` and empties that population there. Variables that cannot be computed are NaN.
"""
from __future__ import annotations

import filecmp
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from tilpheno.compensation import BlockPool, Spillover, compensate_columns, exported_compensated, read_spillover_csv
from tilpheno.control_settings import compare_settings, control_flags
from tilpheno.errors import CompensationError, FCSReadError, GatingError, PanelError, TooFewEventsError
from tilpheno.gates import checks
from tilpheno.gates import placement as pl
from tilpheno.gates.coexpression import co_expression_flags
from tilpheno.gates.geometry import Gate, RangeGate
from tilpheno.gates.strategy import ROOT, Population, Strategy
from tilpheno.gates.quadrants import quadrant_percentages, sibling_range_pairs
from tilpheno.gates.shared_reading import reading_key, reading_verdicts, shared_reading_flags
from tilpheno.gates.tree import population_mask
from tilpheno.qc import UNDETERMINED_CODE, QCFlag
from tilpheno.study import QCRules, Study, default_study
from tilpheno.vocabulary import Vocabulary, default_vocabulary

_PLACED_PER_FILE = ("cells", "singlets", "lymphocytes", "valley")

PLOT_EVENTS = 20_000
"""Events per file kept for the report's plots by the pipeline (``analyze_product(plot_events=...)``)."""

STAINED_KEEP_BYTES = 32 * 2**20
"""While the FMO thresholds are resolved, a stained file whose transformed arrays take at most this
many bytes (e.g. 500,000 events x 8 dimensions) stays loaded between uses instead of being read again."""

CONTROLS_KEEP_BYTES = 32 * 2**20
"""While the FMO thresholds are resolved, the control files (FMO, unstained) released for the next
file keep, in all, at most this many bytes of the columns their populations tables and remaining
gates read (e.g. 3 FMO files x 200,000 events x 6 markers) instead of being read again for their
results (a control that does not fit is released whole and read again)."""


@dataclass
class TubeData:
    """One file, compensated and transformed: ``data`` maps dimension name -> float64 array."""

    file: str
    sha256: str
    tube: str
    role: str
    fmo_marker: str | None
    data: dict[str, np.ndarray]
    detectors: dict[str, str]          # marker -> detector ($PnN)
    transforms: dict[str, Any]         # dimension -> Transform used
    compensated: bool

    @property
    def n_events(self) -> int:
        return len(next(iter(self.data.values()))) if self.data else 0


@dataclass(frozen=True)
class ControlEvents:
    """The unstained control's events that a threshold without its FMO was anchored on
    (``_TubeKindRun._on_unstained``), as the report's overlay draws them: ``file`` (the control's path),
    ``marker``, ``population`` (where they were read: the nearest ancestor of the gate's parent an unstained cell
    reaches, the stained file's gates applied to the control; ``root``: all its events), ``values`` (the
    marker's transformed values there: all of them, or every k-th, at most ``plot_events``:
    :func:`_plot_index`) and ``n_events`` (all its events there). Gates read on the same control, marker and
    population (the TIL PD1+, CD8+PD1+ and CD4+PD1+ on live_lymph) share one. ``name``: what the report calls the
    control, ``unstained control``, or ``<tube kind> FMO`` for another tube kind's FMO standing in
    (:class:`CrossControl`, whose ``population`` is then ``<tube kind> <population>``)."""

    file: str
    marker: str
    population: str
    values: np.ndarray
    n_events: int
    name: str = "unstained control"


def control_events(file: str, marker: str, population: str, values: np.ndarray, plot_events: int | None,
                   name: str = "unstained control") -> ControlEvents:
    """:class:`ControlEvents` keeping of ``values`` what the overlay draws (:func:`_plot_index`'s events), as
    a copy: a view would keep the control's whole block of columns (``compensation.BlockPool``) alive."""
    index = _plot_index(values.size, plot_events)
    kept = values if index is None else values[index]
    return ControlEvents(file, marker, population, np.array(kept, dtype=np.float64, copy=True), int(values.size), name)


@dataclass(frozen=True)
class CrossControl:
    """Another tube kind's FMO file standing in for a gate's missing FMO (``fmo`` parameter ``cross_fmo``:
    ``<tube kind>:<population>``): that file omits the stain on the gate's marker's detector, so on that
    detector it carries the other stains' spreading and autofluorescence without the marker's antibody (TIL: the
    Treg tube's FoxP3 FMO on PE, for PD1 PE). ``file`` (its path), ``tube`` (its tube kind), ``population`` (where
    its events were read, that kind's strategy gated on the file's own data), ``detector`` ($PnN) and ``values``
    (the detector's compensated values there, transformed as the gate's marker)."""

    file: str
    tube: str
    population: str
    detector: str
    values: np.ndarray


@dataclass(frozen=True)
class CrossGated:
    """Another tube kind's FMO file (``file``, of kind ``tube``) read once and gated once on its own data down to
    every population the gates that may stand on it name (:func:`cross_fmo_gated`): ``values``, the compensated
    values of ``detector`` on all its events, transformed as the gate's marker; ``masks``, population -> its
    events. Each gate's :class:`CrossControl` is carved from it (:meth:`control`)."""

    file: str
    tube: str
    detector: str
    values: np.ndarray
    masks: Mapping[str, np.ndarray]

    def control(self, population: str) -> CrossControl | None:
        """The :class:`CrossControl` of ``population`` (its events on the detector), None when it was not gated."""
        mask = self.masks.get(population)
        return None if mask is None else CrossControl(self.file, self.tube, population, self.detector, self.values[mask])


def cross_fmo_gated(kind: str, populations: Sequence[str], detector: str, transform: Any, rows: pd.DataFrame,
                    strategies: Mapping[str, Strategy], study: Study, spillover: Spillover | None, panel_override: Any,
                    percentile: float) -> CrossGated | None:
    """The product's (``rows``) first FMO file of tube kind ``kind`` whose omitted marker sits on ``detector`` in the
    kind's stained file, read as that kind's files are (acquisition step, compensation, its strategy's transforms)
    and gated once on its own data down to ``populations`` (those the kind's strategy defines; the union of their
    gates, :meth:`Strategy.population_gates`), as a :class:`CrossGated`, only where the kind transforms the
    detector as the gate's marker (``transform``). None without such a file or population, with another transform
    there, or when it cannot be read or gated (the unstained control then stands in, as before)."""
    from tilpheno.io.fcs import read_fcs, read_fcs_metadata
    from tilpheno.panel import panel_from_fcs, require

    other = strategies.get(kind)
    defined = {p.name for p in other.populations} if other is not None else set()
    wanted = tuple(p for p in dict.fromkeys(populations) if p in defined)
    group = rows[rows["tube"] == kind]
    stained = group[group["role"] == "stain"]
    if other is None or not wanted or stained.empty:
        return None
    try:
        meta = read_fcs_metadata(stained.iloc[0]["file"], checksum=False)
        panel = panel_from_fcs(meta, override=panel_override, tube=kind, study=study, compensating=spillover is not None)
        for row in group[group["role"] == "fmo"].itertuples(index=False):
            omitted = _fmo_marker(getattr(row, "fmo_marker", None), study.vocabulary)
            if omitted is None or panel.get(omitted) != detector:
                continue
            fcs = read_fcs(row.file)
            acquisition_step(fcs, other.acquisition)
            detectors = require(panel_from_fcs(fcs, stained=meta, override=panel_override, tube=kind, study=study,
                                               compensating=spillover is not None), other.markers, study.vocabulary)
            data, used, applied = _compensated_transformed(fcs, detectors, other, spillover)
            if used.get(omitted) != transform:
                continue
            needed = set(other.population_gates(*wanted))
            gated = gate_tube_kind(replace(other, populations=tuple(p for p in other.populations if p.name in needed),
                                           variables=()),
                                   [TubeData(str(row.file), "", kind, "fmo", omitted, data, dict(detectors), used,
                                             applied is not None)], percentile, study)[0]
            return CrossGated(str(row.file), kind, detector, data[omitted],
                              {p: gated.masks[p] for p in wanted if p in gated.masks})
    except (FCSReadError, PanelError, CompensationError, GatingError):
        return None
    return None


def cross_fmo_control(spec: str, detector: str, transform: Any, rows: pd.DataFrame, strategies: Mapping[str, Strategy],
                      study: Study, spillover: Spillover | None, panel_override: Any, percentile: float,
                      ) -> CrossControl | None:
    """The :class:`CrossControl` that ``spec`` (``<tube kind>:<population>``) names for a gate on ``detector``
    (:func:`cross_fmo_gated` for that one population); None as there."""
    kind, _, population = spec.partition(":")
    gated = cross_fmo_gated(kind, (population,), detector, transform, rows, strategies, study, spillover,
                            panel_override, percentile)
    return None if gated is None else gated.control(population)


@dataclass
class TubeResult:
    """Gating result of one file (see the module docstring for the conventions)."""

    file: str
    sha256: str
    tube: str
    role: str
    fmo_marker: str | None
    populations: pd.DataFrame   # population, parent, count, pct_of_parent, pct_of_live_lymph, median_<marker>...
    thresholds: pd.DataFrame    # population, marker, parent, percentile, value_transformed, value_raw, method, source_file
    gates: list[tuple[str, str, Gate, str]]   # (population, parent, gate, method), parents first
    data: dict[str, np.ndarray]               # transformed dimensions (all events, or the events of ``subsample``)
    masks: dict[str, np.ndarray] = field(default_factory=dict)   # population -> mask over the same events as data
    detectors: dict[str, str] = field(default_factory=dict)
    n_events: int = 0                         # events in the file (authoritative; counts in ``populations``)
    subsample: np.ndarray | None = None       # indices of the events in data/masks; None = all events
    quadrants: dict[tuple[str, str], dict[tuple[bool, bool], float]] = field(default_factory=dict)
    # (x population, y population) -> % of parent per quadrant, on all events, for sibling
    # threshold gates (tilpheno.gates.quadrants.sibling_range_pairs); filled when data is a subsample
    acquisition: Any = None                   # tilpheno.acquisition.AcquisitionQC of step 0 (None when off)
    compensation: Any = None                  # CompensationUsed: the matrix, its source, residual spillover
    label: str = ""                           # the file as the product's flags name it (analyze_product)
    diagnostics: dict[str, dict[str, Any]] = field(default_factory=dict)
    # population -> the numbers behind its placed gate (placement diagnostics: the candidates a
    # gate weighed, e.g. ``valley_threshold`` and ``sd_threshold`` of a ``valley`` gate, transformed units;
    # a stained file's gate flagged ``unstained_positive``: ``unstained_cut``, :class:`UnstainedCheck`)
    control_events: dict[str, ControlEvents] = field(default_factory=dict)
    # a stained file's fmo population whose FMO was missing and whose cut was anchored on the product's
    # unstained control (``_TubeKindRun._on_unstained``) -> the control's events it rests on, for the overlay

    @property
    def shown_name(self) -> str:
        """How tables, flags and the report name the file: its ``label``
        (:func:`tilpheno.io.files.file_labels`: the file's name, or ``sub/X.fcs`` where two of the
        product's files share a name), else its name."""
        return self.label or Path(str(self.file)).name


@dataclass
class ProductResult:
    """All tubes of one product, its study variables and QC flags."""

    product_id: str
    phenotype: dict[str, Any]   # product_id (text), then the variables, counts and doses (numbers)
    tubes: list[TubeResult]
    qc: list[QCFlag]
    strategy_sha256: dict[str, str]   # strategy name -> SHA-256 of its file
    controls: list[tuple[str, Any]] = field(default_factory=list)
    # each unstained control read for the stained files' gates (once per tube kind; not gated, so in
    # no TubeResult): (its name as flags name it, the FCSFile read, events released); its ``sha256``
    # is the digest of the file the events were read from (FCSReadError if it changed since)


# --------------------------------------------------------------------------------------------
# loading one file
# --------------------------------------------------------------------------------------------


def load_tube(
    fcs,
    detectors: Mapping[str, str],
    strategy: Strategy,
    *,
    tube: str,
    role: str,
    fmo_marker: str | None = None,
    spillover: Spillover | None = None,
) -> TubeData:
    """Compensate and transform one read FCS file (``fcs``: ``tilpheno.io.fcs.FCSFile``).

    ``detectors``: marker -> detector ($PnN) for this file. ``spillover``: the matrix to use
    (an override, else the file's own); None and no file matrix -> uncompensated
    (``TubeData.compensated`` False). A file whose markers' detectors are all compensated export
    parameters (``FJComp-...``, ``compensation.exported_compensated``) is used as it is, its own
    ``$SPILLOVER`` (if any) not applied again; an override is applied (and fails on such a file,
    naming it). Transformed dimensions: the strategy's scatter dimensions and every marker of
    ``detectors`` (which must include the strategy's markers).
    """
    data, used, applied = _compensated_transformed(fcs, detectors, strategy, spillover)
    return TubeData(
        file=str(fcs.path), sha256=fcs.sha256, tube=tube, role=role, fmo_marker=fmo_marker,
        data=data, detectors=dict(detectors), transforms=used, compensated=applied is not None,
    )


def _compensated_transformed(fcs, detectors: Mapping[str, str], strategy: Strategy, spillover: Spillover | None,
                             pool: BlockPool | None = None):
    """``(data, transforms used, the matrix applied or None)`` of :func:`load_tube`, without
    touching ``fcs.sha256``; the arrays in a block of ``pool`` when given (``compensate_columns``)."""
    names = list(fcs.channel_names)
    if spillover is not None:
        matrix: Spillover | None = spillover
    else:   # the file's own, unless its markers were exported compensated
        matrix = None if exported_compensated(detectors.values()) else fcs.spillover
    index = {n: i for i, n in enumerate(names)}
    wanted = {d: d for d in strategy.dims if d not in strategy.markers}
    wanted.update({m: det for m, det in detectors.items()})
    missing_scatter = [d for d, det in wanted.items() if det not in index]
    if missing_scatter:
        raise PanelError.at(fcs.path, f"dimension(s) {missing_scatter} not found", f"; channels are {names}")
    # Only the wanted channels are compensated, into rows of one block (new or lent again), transformed in place.
    columns = compensate_columns(fcs.events, names, matrix, list(dict.fromkeys(wanted.values())), pool)
    data, used = {}, {}
    for dim, det in wanted.items():
        transform = strategy.transform_for(dim)
        column = columns[det]
        if sum(1 for d in wanted.values() if d == det) > 1:  # one detector behind two dimensions
            column = column.copy()
        data[dim] = transform.apply(column, out=column)
        used[dim] = transform
    return data, used, matrix


# --------------------------------------------------------------------------------------------
# step 0 (acquisition QC) and the compensation check of a stained tube
# --------------------------------------------------------------------------------------------


@dataclass
class CompensationUsed:
    """The matrix a file was compensated with: ``spillover`` (None = not compensated here), ``source``
    (``$SPILLOVER`` keyword, the override CSV, the single-stain controls) and, for stained tubes,
    ``residual``: ``tilpheno.spillover.residual_spillover`` on the lymphocytes (or all events).
    ``exported``: no matrix, because the file's markers are compensated export parameters
    (``compensation.exported_compensated``): the data was compensated before export."""

    spillover: Spillover | None
    source: str
    residual: pd.DataFrame | None = None
    exported: bool = False


def _labelled(source: str, path, label: str) -> str:
    """A file's own matrix ``source`` ("/in/TIL001_surface_stain.fcs keyword $SPILLOVER") with the file named by
    its ``label``, as the product's tables and flags name it ("TIL001_surface_stain.fcs keyword $SPILLOVER")."""
    prefix = f"{path} "
    return f"{label} {source.removeprefix(prefix)}" if source.startswith(prefix) else source


def compensation_used(applied: Spillover | None, fcs, detectors: Mapping[str, str], name: str, *,
                      own: bool) -> CompensationUsed:
    """The :class:`CompensationUsed` of a file compensated with ``applied`` (None: not compensated
    here; exported when its markers' ``detectors`` are compensated export parameters). ``own``: the
    matrix is the file's ``$SPILLOVER`` (its source names the file by ``name``, its label), not an
    override (whose source is kept)."""
    if applied is not None:
        return CompensationUsed(applied, _labelled(applied.source, fcs.path, name) if own else applied.source)
    if exported_compensated(detectors.values()):
        return CompensationUsed(None, "none: compensated before export", exported=True)
    return CompensationUsed(None, "none: uncompensated")


def uncompensated_flags(product_id: str, name: str, used: CompensationUsed, detectors: Mapping[str, str],
                        fcs) -> list[QCFlag]:
    """The flag of a file left without a matrix (:func:`_uncompensated_flag`); none when ``used``
    (:func:`compensation_used`) applied one."""
    return [] if used.spillover is not None else [_uncompensated_flag(product_id, name, detectors, fcs, used.exported)]


def _uncompensated_flag(product_id: str, name: str, detectors: Mapping[str, str], fcs, exported: bool) -> QCFlag:
    """The flag of a file left without a matrix: ``precompensated`` (info) when ``exported`` (its
    markers' detectors are compensated export parameters, ``FJComp-...``), else ``no_compensation``
    (naming the reader's reason when the file's spillover keyword was malformed and ignored)."""
    if exported:
        names = sorted(set(detectors.values()))
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        own = "; its $SPILLOVER not applied again" if fcs.spillover is not None else ""
        return QCFlag(product_id, name, "precompensated", "info",
                      f"markers on compensated export parameters ({shown}): data compensated before "
                      f"export, used as it is{own}")
    ignored = [p.replace(str(fcs.path), name) for p in fcs.problems if p.startswith("spillover keyword ignored")]
    if ignored:
        return QCFlag(product_id, name, "no_compensation", "warning",
                      f"{ignored[0]}; no override matrix: data left uncompensated")
    return QCFlag(product_id, name, "no_compensation", "warning",
                  "no $SPILLOVER in the file and no override matrix: data left uncompensated")


def acquisition_step(fcs, settings, cached=None):
    """Gating step 0 on a read file: ``tilpheno.acquisition.check_acquisition`` of its raw events
    (``cached``: the result of an earlier read of the same file, reused), and in ``remove`` mode the
    anomalous events dropped from ``fcs.events``. Returns the AcquisitionQC (None when ``off``)."""
    from tilpheno.acquisition import check_acquisition, find_time_channel, time_unit

    if settings.mode == "off":
        return None
    qc = cached if cached is not None else check_acquisition(
        fcs.events, fcs.channel_names, fcs.channels["pnr"].astype(float).tolist(), settings,
        unit=time_unit(fcs.keywords, find_time_channel(fcs.channel_names)))
    if settings.mode == "remove" and qc.n_removed:
        fcs.events = fcs.events[qc.keep]
    return qc


def _negative_cuts(state: _Gated) -> dict[str, float]:
    """Per marker the lowest 1-D gate threshold of the tube (linear units): its negatives lie below."""
    cuts: dict[str, float] = {}
    for _, _, gate, _ in state.gates:   # 1-D interval gates (the gate protocol's drawing), by dimension
        shape = gate.drawing()
        if shape.shape != "intervals" or len(gate.dims) != 1 or gate.dims[0] not in state.tube.detectors:
            continue
        dim = gate.dims[0]
        low, high = shape.bounds[dim]
        edge = low if low is not None else high
        raw = float(state.tube.transforms[dim].inverse(np.array([edge]))[0])
        cuts[dim] = min(cuts.get(dim, raw), raw)
    return cuts


def _lone_positive_markers(state: _Gated) -> set[str]:
    """The markers whose every 1-D gate in the tube saw one population and called it positive
    (``single_population_sd`` with a ``positive_peak``; undetermined, by the strategy or by the
    unstained control): the events below their cuts are that population's low tail, no negatives."""
    lone: dict[str, bool] = {}
    for name, _, gate, method in state.gates:
        if gate.drawing().shape == "intervals" and len(gate.dims) == 1:
            d = state.diagnostics.get(name, {})
            positive = method.endswith("single_population_sd") and "positive_peak" in d and "negative_peak" not in d
            lone[gate.dims[0]] = lone.get(gate.dims[0], True) and positive
    return {marker for marker, only in lone.items() if only}


def compensation_check(strategy: Strategy, state: _Gated, spillover: Spillover | None,
                       fmo_marker: str | None = None) -> pd.DataFrame | None:
    """Residual spillover of a gated stained or FMO tube (``tilpheno.spillover.residual_spillover``):
    compensated linear values of its markers' detectors, in the strategy's lymphocytes population
    (live singlet lymphocytes: dead and large cells bind antibodies nonspecifically and would lean
    every channel together; else its singlets, else all events). A marker the strategy gates
    within the singlets but outside the lymphocytes (the viability dye of the live gate: bright only
    on the dead cells the lymphocytes leave out) is checked as a source on the singlets. Stained
    tube: every detector is a target, its negatives below the marker's own gate threshold, but for a
    marker whose gates saw one population and called it positive (:func:`_lone_positive_markers`:
    below its cut lies the positives' low tail, which leans with any co-expressed marker as if
    under-compensated). FMO tube
    (``fmo_marker`` = the omitted marker, as named in ``state.tube.detectors``): only the omitted
    marker's detector is a target and every event is negative there, so the pairs a stained tube
    cannot show (the source is bright only on cells positive for the target, e.g. CD4 and CD8 into
    CD3) are checked too."""
    from tilpheno.spillover import events_within, residual_events, residual_spillover, union_events

    if spillover is None:
        return None
    markers = {m: d for m, d in state.tube.detectors.items() if d in spillover.detectors and m in state.tube.data}
    if fmo_marker is None:
        lone = _lone_positive_markers(state)
        targets = [d for m, d in markers.items() if m not in lone] if lone else None
        cuts = {markers[m]: c for m, c in _negative_cuts(state).items() if m in markers}
    else:
        if fmo_marker not in markers:
            return None
        omitted = markers[fmo_marker]
        targets, cuts = [omitted], {omitted: math.inf}
    singlets = next((p.name for p in strategy.populations if p.method == "singlets"), None)
    lymph = _lymph_population(strategy)
    singlet_mask = state.masks.get(singlets) if singlets else None
    mask = state.masks.get(lymph) if lymph else None
    source_masks: dict[str, np.ndarray] = {}
    if mask is None:
        mask = singlet_mask
    elif singlet_mask is not None:
        source_masks = {markers[p.dims[0]]: singlet_mask for p in strategy.populations
                        if len(p.dims) == 1 and p.dims[0] in markers and _descends_from(strategy, p.name, singlets)
                        and not _descends_from(strategy, p.name, lymph)}
    # Only the events the check uses are taken, and put back on the linear scale (the inverse is per
    # value): each event set (residual_events: at most RESIDUAL_MAX_EVENTS) as a mask over their union,
    # which residual_spillover takes whole: the same events in the same order as from full-length arrays
    def linear(index: np.ndarray) -> dict[str, np.ndarray]:
        return {d: state.tube.transforms[m].inverse(state.tube.data[m][index]) for m, d in markers.items()}

    n = state.tube.n_events
    used = residual_events(n, mask)
    if not source_masks:   # one event set: all of the values given
        return residual_spillover(linear(used), negative_cuts=cuts, targets=targets)
    on_singlets = residual_events(n, singlet_mask)
    index = union_events(n, used, on_singlets)
    within = events_within(index, on_singlets)
    return residual_spillover(linear(index), negative_cuts=cuts, targets=targets, mask=events_within(index, used),
                              source_masks={d: within for d in source_masks})


def file_residual(strategy: Strategy, state: _Gated, spillover: Spillover | None,
                  vocabulary: Vocabulary) -> pd.DataFrame | None:
    """:func:`compensation_check` of a gated stained or FMO file (its omitted marker as the file's
    detectors name it, ``vocabulary``'s spelling); None for any other role (a control)."""
    tube = state.tube
    if tube.role not in ("stain", "fmo"):
        return None
    omitted = None if tube.role == "stain" else next(
        (m for m in tube.detectors if vocabulary.same(m, tube.fmo_marker)), "")
    return compensation_check(strategy, state, spillover, omitted)


def step_flags(product_id: str, name: str, result: TubeResult) -> list[QCFlag]:
    """QC flags of step 0 (acquisition findings) and of the compensation check of one file
    (``compensation_residual`` per flagged pair; on stained tubes ``compensation_negative_spillover``
    per matrix coefficient below ``spillover.NEGATIVE_COEFFICIENT``)."""
    flags = []
    if result.acquisition is not None:
        flags += [QCFlag(product_id, name, f.code, f.severity, f.message) for f in result.acquisition.findings]
    residual = result.compensation.residual if result.compensation is not None else None
    if residual is not None:
        spill = result.compensation.spillover
        markers = {d: m for m, d in result.detectors.items()}
        for row in residual[residual["flagged"]].itertuples(index=False):
            coefficient = spill.to_dataframe().loc[row.source, row.target]
            kind = "over" if row.slope < 0 else "under"
            flags.append(QCFlag(
                product_id, name, "compensation_residual", "warning",
                f"{markers.get(row.target, row.target)}-negative events shift {row.slope:+.3f} per unit of "
                f"{markers.get(row.source, row.source)} ({row.source} -> {row.target}, matrix coefficient "
                f"{coefficient:.4f}): {kind}-compensated beyond tolerance"))
    if result.role == "stain" and result.compensation is not None and result.compensation.spillover is not None:
        from tilpheno.spillover import NEGATIVE_COEFFICIENT, negative_coefficients

        for source, target, value in negative_coefficients(result.compensation.spillover):
            flags.append(QCFlag(
                product_id, name, "compensation_negative_spillover", "warning",
                f"matrix coefficient {source} -> {target} is {value:.4f} (< {NEGATIVE_COEFFICIENT:g}): spillover "
                f"cannot be negative; the matrix ({result.compensation.source}) is wrong there"))
    return flags


# --------------------------------------------------------------------------------------------
# gating all files of one tube kind
# --------------------------------------------------------------------------------------------


@dataclass
class _Gated:
    """Mutable gating state of one file while the strategy is walked."""

    tube: TubeData
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    gates: list[tuple[str, str, Gate, str]] = field(default_factory=list)
    thresholds: list[dict[str, Any]] = field(default_factory=list)
    flags: list[pl.Flag] = field(default_factory=list)
    diagnostics: dict[str, dict[str, Any]] = field(default_factory=dict)   # population -> placement numbers
    plot_data: dict[str, np.ndarray] | None = None   # the result's ``data``, taken before columns were dropped

    def parent_mask(self, pop: Population) -> np.ndarray:
        if pop.parent == ROOT:
            return np.ones(self.tube.n_events, dtype=bool)
        return self.masks[pop.parent]

    def mask_of(self, pop: Population, gate) -> np.ndarray:
        """``pop``'s mask with its placed ``gate`` (the tree evaluator, ``tilpheno.gates.tree``)."""
        parent = None if pop.parent == ROOT else pop.parent
        return population_mask(gate, self.tube.data, self.masks, parent, self.tube.n_events, pop.complement)


def gate_flag(pop: Population, flag: pl.Flag) -> pl.Flag:
    """``flag`` of ``pop``'s gate: its ``gate`` set to ``pop``'s name (by which reports and the
    review app find a gate's flags, ``qc.flags_on_gate``) and its message opening
    ``"<population> (<dims>): "``, as a reader of qc.csv sees the gating self-checks name their
    gate. The placement rules name only what they saw (``"CD127: no positive density peak ..."``)
    and a failed gate only its population (``"CD4+: ..."``); that leading ``"<dims>: "`` or
    ``"<population>: "`` is replaced."""
    flag = replace(flag, gate=pop.name)
    if flag.message.startswith(f"{pop.name} ("):
        return flag
    dims = "/".join(pop.dims)
    text = flag.message
    for prefix in (f"{dims}: ", f"{pop.name}: "):
        text = text.removeprefix(prefix)
    return replace(flag, message=f"{pop.name} ({dims}): {text}")


def _place_on(pop: Population, tube: TubeData, parent: np.ndarray, applied: np.ndarray | None = None,
              unstained: Callable[[], np.ndarray | None] | None = None, percentile: float = 99.5,
              held: tuple[str, ...] = ()) -> pl.Placement:
    """Place a per-file gate (cells, singlets, lymphocytes, valley) on the events of ``parent``
    (the parent's mask, or the strategy's ``reference`` population's; ``applied``: then the
    parent's mask, for the self-check of a one-population cut; ``unstained``: gives the product's
    unstained control's events (or None), called at most once: for a valley gate's one-population
    decision, only for a gate that is one population without them (``place_valley``, which carries the
    control's ``percentile``, the run's FMO percentile, to one population it calls negative), and for
    every ``rule: lower`` gate, whose SD cut the control's floor can raise (``placement.control_floor``); ``held``: the
    undetermined gates ``parent``'s events rest on, whose counts the self-check's flags do not quote)."""
    cols = [tube.data[d][parent] for d in pop.dims]
    params = dict(pop.params)
    reference = params.pop("reference", None)
    xy = (pop.dims[0], pop.dims[-1])   # the 2-D methods (validated: exactly two dims)
    if pop.method == "cells":
        return pl.place_cells(cols[0], cols[1], xy, **params)
    if pop.method == "singlets":
        return pl.place_singlets(cols[0], cols[1], xy, **params)
    if pop.method == "lymphocytes":
        return pl.place_lymphocytes(cols[0], cols[1], xy, **params)
    if pop.method == "cluster":
        return pl.place_cluster(cols[0], cols[1], xy, **params)
    read: list[np.ndarray | None] = []   # the control's events, once asked for

    def control() -> np.ndarray | None:
        if not read:
            read.append(unstained() if unstained is not None else None)
        return read[0]

    carry: dict[str, Any] = {"transform": tube.transforms.get(pop.dims[0]), "control_percentile": percentile}
    placement = pl.place_valley(cols[0], pop.dims[0], zero=_zero(tube, pop.dims[0]), unstained=control, **carry, **params)
    if tube.role != "stain":
        return placement
    alternative = None
    if reference and applied is not None:
        placement = pl.Placement(placement.gate, placement.method, {**placement.diagnostics, "reference": reference},
                                 placement.flags)
        if placement.method in pl.ONE_POPULATION_METHODS:   # the same rule on the parent it is applied to
            alternative = float(pl.place_valley(tube.data[pop.dims[0]][applied], pop.dims[0],
                                                zero=_zero(tube, pop.dims[0]), unstained=read[0] if read else None,
                                                **carry, **params).diagnostics["threshold"])
    return checks.check_valley(pop.name, placement, cols[0], alternative=alternative, held=held)


def variable_impact(strategy: Strategy, state: _Gated, population: str, gate: Gate) -> tuple[float, str]:
    """The size of a gate's uncertainty: the largest change, in percentage points, of a reported
    percentage (the strategy's variables; every population's % of parent when it has none) when
    ``population``'s gate is replaced by ``gate`` and every population below it is re-evaluated.
    Data-driven gates below keep their placed cuts (a first-order size: they are not re-placed).
    Returns (points, the percentage that changed most); NaN when nothing reported depends on it."""
    placed = {name: g for name, _, g, _ in state.gates}
    masks = dict(state.masks)
    changed = {population}
    n = state.tube.n_events
    for pop in strategy.populations:
        if pop.name == population:
            masks[pop.name] = population_mask(gate, state.tube.data, masks, None if pop.parent == ROOT else pop.parent,
                                              n, pop.complement)
        elif pop.name in placed and set(pop.depends_on) & changed:
            masks[pop.name] = population_mask(placed[pop.name], state.tube.data, masks,
                                              None if pop.parent == ROOT else pop.parent, n, pop.complement)
            changed.add(pop.name)
    counts = {name: int(np.count_nonzero(m)) for name, m in state.masks.items()} | {ROOT: n}
    moved = {name: int(np.count_nonzero(masks[name])) for name in changed} | {ROOT: n}
    pairs = ([(v.name, v.numerator, v.denominator) for v in strategy.variables] or
             [(f"{p.name} % of {p.parent}", p.name, p.parent) for p in strategy.populations])
    best, what = float("nan"), ""
    for name, num, den in pairs:
        if num not in changed and den not in changed:
            continue
        before = 100.0 * counts.get(num, 0) / counts[den] if counts.get(den) else float("nan")
        after = 100.0 * moved.get(num, counts.get(num, 0)) / moved.get(den, counts.get(den, 0)) \
            if moved.get(den, counts.get(den, 0)) else float("nan")
        delta = abs(after - before)
        if math.isfinite(delta) and not delta <= best:
            best, what = delta, name
    return best, what


def _sized_flags(strategy: Strategy, state: _Gated, flags: list[tuple[int, pl.Flag]],
                 pops: Sequence[Population]) -> list[tuple[int, pl.Flag]]:
    """The stained file's density-gate flags with their size (``checks.size_flag``): each flag
    whose gate recorded ``alternative_cuts`` for its code (``checks.check_valley``) becomes a review
    warning only when a cut at an alternative changes a reported percentage by more than
    ``checks.IMPACT_POINTS``. A ``cut_at_scale_edge`` of a reported population (a variable's
    numerator; every population when the strategy has none) stays a warning, unsized: the clamped
    cut makes that percentage 0 or 100 by itself, and no cut near the data's edge tells how wrong.
    A gate placed on events resting on an undetermined gate (:func:`undetermined_gates`) is not
    sized, its flags kept as raised: the counts and percentages below such a gate are held, not
    reported, so its flags quote none of them (``checks.check_valley``'s ``held``, which its
    diagnostics name, ``resting_on``) and a sized one says which gates its size rests on instead. Nor are an
    undetermined gate's own flags: every percentage its cut moves rests on it, held, its side decided by no
    one yet, so they stay warnings (its ``no_second_peak`` holds release, ``qc.UNDETERMINED_CODE``) and say
    so instead of a size (before stop 53 they were sized on those held percentages, and info where the cut
    moved none of them by 2 points: a product whose only flags were an undetermined gate's then needed no
    review)."""
    placed = {name: g for name, _, g, _ in state.gates}
    reported = {v.numerator for v in strategy.variables} if strategy.variables else {p.name for p in pops}
    out = []
    for k, flag in flags:
        pop = pops[k]
        if flag.code == "cut_at_scale_edge" and pop.name in reported:
            out.append((k, flag))
            continue
        diagnostics = state.diagnostics.get(pop.name, {})
        alternatives = diagnostics.get("alternative_cuts", {}).get(flag.code)
        gate = placed.get(pop.name)
        held = diagnostics.get("resting_on", ())   # checks.check_valley's, which set alternative_cuts
        if held and alternatives:
            flag = replace(flag, message=f"{flag.message}; size: not measured, the percentages it moves rest on "
                                         f"{', '.join(held)} ({UNDETERMINED})")
        elif diagnostics.get("undetermined") and alternatives:   # every percentage it moves lies within it
            flag = replace(flag, message=f"{flag.message}; size: not measured, the percentages it moves rest on "
                                         f"{pop.name} itself ({UNDETERMINED}) and are not reported")
        elif not held and alternatives and isinstance(gate, RangeGate):
            impacts = [variable_impact(strategy, state, pop.name, _moved(gate, a)) for a in alternatives]
            impact, what = max(impacts, key=lambda t: t[0] if math.isfinite(t[0]) else -1.0)
            flag = checks.size_flag(flag, impact, what, alternatives)
        out.append((k, flag))
    return out


def _subset_flags(strategy: Strategy, state: _Gated, pops: Sequence[Population]) -> list[tuple[int, pl.Flag]]:
    """The strategy's declared ``dim_subset`` checks on a gated stained file (``checks.dim_subset_flag``);
    the flag names the nearest population above the subset gated on the check's marker and quotes no points
    resting on an undetermined gate (its ``held``)."""
    out = []
    undetermined = undetermined_gates(state.diagnostics)
    for c in strategy.checks:
        if c.marker not in state.tube.data or c.subset not in state.masks or c.reference not in state.masks:
            continue
        gate = next((p.name for p in strategy.lineage(strategy.population(c.subset).parent) if c.marker in p.dims), None)
        if gate is None:
            continue
        values = state.tube.data[c.marker]
        _, flag = checks.dim_subset_flag(gate, c.subset, c.reference, c.marker, values[state.masks[c.subset]],
                                         values[state.masks[c.reference]], int(np.count_nonzero(state.masks[gate])),
                                         c.quantile, c.limit, resting_on(strategy, undetermined, gate, c.subset, c.reference))
        if flag is not None:
            out.append((next(k for k, p in enumerate(pops) if p.name == c.subset), flag))
    return out


def _co_expression_flags(strategy: Strategy, state: _Gated, pops: Sequence[Population]) -> list[tuple[int, pl.Flag]]:
    """The strategy's declared ``co_expression`` checks on a gated stained file
    (``tilpheno.gates.coexpression``), each flag at its gate's place in the strategy, quoting no share resting
    on an undetermined gate (its ``held``)."""
    out = []
    index = {p.name: k for k, p in enumerate(pops)}
    undetermined = undetermined_gates(state.diagnostics)
    for c in strategy.co_expression:
        first, second = (strategy.population(n) for n in c.populations)
        if not {first.name, second.name, first.parent} <= set(state.masks) | {ROOT}:
            continue
        masks = {**state.masks, ROOT: np.ones(state.tube.n_events, dtype=bool)} if first.parent == ROOT else state.masks
        flags = co_expression_flags(first.name, second.name, first.parent, masks, c.limit, (first.dims[0], second.dims[0]),
                                    resting_on(strategy, undetermined, first.name, second.name))
        out += [(index[f.gate], f) for f in flags]
    return out


@dataclass
class UnstainedCheck:
    """What :func:`unstained_check` found: its flags, and for each gate flagged
    ``unstained_positive`` the lowest cut that would clear it (``checks.unstained_cut``,
    transformed units)."""

    flags: list[pl.Flag]
    cuts: dict[str, float]


def unstained_check(strategy: Strategy, state: _Gated, control: TubeData, *, stained_name: str | None = None,
                    control_name: str | None = None, kept: ControlGated | None = None) -> UnstainedCheck:
    """Positives in an unstained control: the stained file's placed gates (``state.gates``, fixed
    geometry, FMO thresholds included) applied to the ``control``'s events. For every positive
    1-D marker gate (``x > cut``): the % of the control's events above the cut among its events in
    the gate's nearest ancestor that is not itself defined by stains (a positive marker gate or a
    boolean of such gates: an unstained cell never reaches CD3+ > CD4+, so CD4+ is judged on the
    control's live lymphocytes); ``checks.unstained_flag``: review above ``checks.UNSTAINED_LIMIT`` %.
    One ``unstained_control`` info flag lists every such % (what was checked), another the markers
    the control has no detector for (:func:`_lacking_detectors`). The flags name the
    two files by ``stained_name`` and ``control_name`` (their labels, :func:`tilpheno.io.files.file_labels`:
    ``sub1/X.fcs`` where two files of the product share a name), else by their file names. ``kept``: an
    earlier application of the stained file's gates to the control (:func:`_on_control`), whose masks are kept."""
    stained = stained_name or Path(state.tube.file).name
    control_label = control_name or Path(control.file).name
    gated = _on_control(strategy, state.gates, control, kept)
    masks, stained_defined = gated.masks, gated.stained_defined
    n = control.n_events
    flags, checked, cuts = [], [], {}
    for name, parent, gate, _ in state.gates:
        if name not in masks or not (isinstance(gate, RangeGate) and gate.high is None and gate.low is not None
                                     and gate.dim in control.detectors):
            continue
        base = _control_base(strategy, parent, stained_defined)
        inside = masks[base] if base != ROOT else np.ones(n, dtype=bool)
        n_base = int(np.count_nonzero(inside))
        if not n_base:
            continue
        above = 100.0 * np.count_nonzero(gate.membership(control.data, masks) & inside) / n_base
        checked.append(f"{name} {above:.2f}% of {n_base} {base} events")
        flag = checks.unstained_flag(name, gate.dim, float(gate.low), base, above, n_base, control_label,
                                     stained=stained)
        if flag is not None:
            flags.append(flag)
            cuts[name] = checks.unstained_cut(control.data[gate.dim][inside])
    if checked:
        flags.append(pl.Flag("unstained_control", "info",
                             f"the {stained} gates on the unstained control {control_label}, "
                             f"% above each positive gate's cut: {'; '.join(checked)}"))
    lacking = _lacking_detectors(strategy, state, control, masks, stained, control_label)
    return UnstainedCheck(flags + ([lacking] if lacking is not None else []), cuts)


def unstained_qc(product_id: str, strategy: Strategy, state: _Gated, control: TubeData,
                 diagnostics: dict[str, dict[str, Any]], *, stained_name: str, control_name: str,
                 kept: ControlGated | None = None) -> list[QCFlag]:
    """:func:`unstained_check` of one gated stained file (``state``) against one unstained
    ``control`` as the product's QC flags, the one form ``analyze_product`` and the object model's
    ``gate_sample`` give: raised on the control (``control_name``), a flag on a gate naming the
    stained file whose gate it is (``gate_file``: ``stained_name``). Each flagged gate's lowest
    clearing cut (transformed units) is recorded in ``diagnostics`` (the stained file's result's,
    population -> numbers) as ``unstained_cut``, the highest where two controls flag it. ``kept``: as
    :func:`unstained_check`'s."""
    check = unstained_check(strategy, state, control, stained_name=stained_name, control_name=control_name, kept=kept)
    for population, cut in check.cuts.items():
        d = diagnostics.setdefault(population, {})
        d["unstained_cut"] = max(cut, d.get("unstained_cut", cut))
    return [QCFlag(product_id, control_name, f.code, f.severity, f.message, f.gate, stained_name if f.gate else "")
            for f in check.flags]


def _lacking_detectors(strategy: Strategy, state: _Gated, control: TubeData, masks: Mapping[str, np.ndarray],
                       stained: str, control_label: str) -> pl.Flag | None:
    """The ``unstained_control`` info line of a control without a detector some of the stained
    file's gates read (``masks``: :func:`_on_control`'s): the marker(s) and their detectors, the
    gates on them, and the positive gates not checked on the control (their marker missing, or a
    parent not evaluable on it); None when the control has every dimension the gates read."""
    lacked = [(name, gate) for name, _, gate, _ in state.gates if not all(d in control.data for d in gate.dims)]
    if not lacked:
        return None
    missing = sorted({d for _, gate in lacked for d in gate.dims if d not in control.data})
    shown = ", ".join(f"{d} ({state.tube.detectors[d]})" if d in state.tube.detectors else d for d in missing)
    unchecked = [name for name, _, gate, _ in state.gates
                 if isinstance(gate, RangeGate) and gate.high is None and gate.low is not None
                 and gate.dim in strategy.markers and (gate.dim not in control.data or name not in masks)]
    unknown = [name for name, gate in lacked if _without_stain(gate, set(strategy.markers)) is None]
    held = (f"an unstained event is taken as negative for {'it' if len(missing) == 1 else 'them'} (below their cut)"
            if len(unknown) < len(lacked) else "")
    lost = f"not evaluable on the control: {', '.join(unknown)} and the gates below" if unknown else ""
    return pl.Flag("unstained_control", "info",
                   f"the unstained control {control_label} has no detector for {shown}, which the {stained} "
                   f"gate(s) {', '.join(name for name, _ in lacked)} read: {'; '.join(w for w in (held, lost) if w)}; "
                   f"positive gates not checked on the control: {', '.join(unchecked) or 'none'}")


def gated_on_unstained(strategy: Strategy) -> bool:
    """Whether some gate of ``strategy`` takes its threshold from the unstained control
    (``control: unstained``), which is then gated as a source of the tube kind's populations."""
    return any(p.params.get("control") == "unstained" for p in strategy.populations)


def unstained_detectors(detectors: Mapping[str, str], fcs, *, complete: bool) -> dict[str, str]:
    """An unstained control's marker -> detector ($PnN): the stained tube's ``detectors`` (the
    control carries no stain, so its own labels name nothing), those ``fcs`` (the control's
    FCSFile) has. ``complete``: it is gated as a source of the tube kind's populations
    (:func:`gated_on_unstained`) and needs them all, PanelError naming the file and the markers
    without a detector; else it is read for the stained files' gates and keeps the markers it
    has (:func:`_on_control` says what the others hold)."""
    absent = sorted(m for m, d in detectors.items() if d not in fcs.channel_names)
    if absent and complete:
        raise PanelError.at(fcs.path, f"no detector for {', '.join(absent)} of the stained tube")
    return {m: d for m, d in detectors.items() if m not in absent}


def _read_detectors(tube: TubeData) -> set[str]:
    """The detectors ($PnN) a tube's gates read: its markers' detectors and its other dimensions
    (scatter channels, which are their own detectors)."""
    return set(tube.detectors.values()) | set(tube.data)


@dataclass(frozen=True)
class ControlGated:
    """A stained file's placed gates applied to an unstained control (:func:`_on_control`): the ``control``,
    the gate each population's mask was computed with (``applied``), the masks over the control's events and the
    populations defined by stains."""

    control: TubeData
    applied: dict[str, Gate]
    masks: dict[str, np.ndarray]
    stained_defined: frozenset[str]


def _on_control(strategy: Strategy, gates: Sequence[tuple[str, str, Gate, str]], control: TubeData,
                kept: ControlGated | None = None) -> ControlGated:
    """A stained file's placed ``gates`` (parents first) applied as they are to an unstained
    ``control``: each population's mask over the control's events, and the populations defined by
    stains (a positive 1-D marker gate, or a boolean of such gates). A gate on a marker the control
    has no detector for holds what an unstained event would (:func:`_without_stain`); no mask for
    any other gate on a dimension the control lacks, nor for one depending on a failed gate or on
    such a gate. ``kept``: an earlier application to the same control (the gates placed so far then): a
    population whose gate is the one applied then, and whose parent's and operands' masks were kept too, keeps
    its mask (a gate's mask depends only on it and on those), so that the fallback gates of a tube kind, each
    reading the control after a few more gates are placed, and its self-check apply each gate once."""
    by_name = {p.name: p for p in strategy.populations}
    markers = set(strategy.markers)
    reuse = kept if kept is not None and kept.control is control else None
    applied: dict[str, Gate] = {}
    masks: dict[str, np.ndarray] = {}
    same: set[str] = set()   # populations whose mask is the kept one
    stained_defined: set[str] = set()
    for name, parent, gate, _ in gates:
        depends = [p for p in (parent, *getattr(gate, "operands", ())) if p != ROOT]
        if any(p not in masks for p in depends):
            continue   # it depends on a population whose gate failed on the stained file (gate_failed)
        pop = by_name[name]
        if reuse is not None and reuse.applied.get(name) is gate and name in reuse.masks and all(p in same for p in depends):
            masks[name] = reuse.masks[name]
            same.add(name)
        elif all(d in control.data for d in gate.dims):
            masks[name] = population_mask(gate, control.data, masks, None if parent == ROOT else parent,
                                          control.n_events, pop.complement)
        else:
            held = _without_stain(gate, markers)
            if held is None:
                continue   # the control lacks a dimension: the populations below cannot be evaluated
            own = np.full(control.n_events, held != pop.complement)
            masks[name] = own if parent == ROOT else own & masks[parent]
        applied[name] = gate
        positive = isinstance(gate, RangeGate) and gate.high is None and gate.dim in markers
        if positive or pop.boolean is not None:
            stained_defined.add(name)
    return ControlGated(control, applied, masks, frozenset(stained_defined))


def _without_stain(gate: Gate, markers: set[str]) -> bool | None:
    """Whether an unstained event is inside a 1-D marker ``gate`` whose detector its file lacks: it
    carries no stain, so it lies below every cut (True for ``x < cut``, False for ``x > cut``);
    None for any other gate (a band, a scatter or 2-D gate)."""
    if not isinstance(gate, RangeGate) or gate.dim not in markers or (gate.low is None) == (gate.high is None):
        return None
    return gate.low is None


def _control_base(strategy: Strategy, parent: str, stained_defined: frozenset[str]) -> str:
    """``parent`` or its nearest ancestor not defined by stains (an unstained cell never reaches
    CD3+ > CD4+: a CD4+ gate is judged on the control's live lymphocytes); ROOT when every one is."""
    return next((p.name for p in strategy.lineage(parent) if p.name not in stained_defined), ROOT)


def unstained_reading(strategy: Strategy, gated: ControlGated, dim: str, population: str) -> tuple[str, np.ndarray] | None:
    """The unstained control's events on marker ``dim`` (transformed) in ``population`` or its nearest ancestor
    not defined by stains, the stained file's gates applied to the control (``gated``, :func:`_on_control`):
    (that population, ROOT: all of its events; the values), None when the control lacks the marker or that
    population."""
    control = gated.control
    if dim not in control.data:
        return None
    base = _control_base(strategy, population, gated.stained_defined)
    if base == ROOT:
        return base, control.data[dim]
    return (base, control.data[dim][gated.masks[base]]) if base in gated.masks else None


def _moved(gate: RangeGate, cut: float) -> RangeGate:
    """A 1-D threshold gate with its cut at ``cut`` (same side kept; positive = above the cut)."""
    return RangeGate(gate.dim, None, cut) if gate.low is None else RangeGate(gate.dim, float(np.nextafter(cut, np.inf)), None)


def _zero(tube: TubeData, dim: str) -> float:
    """Where 0 (no stain, no autofluorescence) lies on the dimension's transformed scale."""
    return float(tube.transforms[dim].apply(np.zeros(1))[0])


class _Failed(Exception):
    """A gate that could not be placed (the GatingError's message, kept for every later use)."""


@dataclass
class _Source:
    """One file of a tube kind while its strategy is walked: loaded on demand, possibly twice."""

    order: int
    role: str
    fmo_marker: str | None
    failed: bool = False                      # unreadable, panel or compensation error (flagged by the loader)
    placed: dict[str, Any] = field(default_factory=dict)   # population -> Placement | _Failed (per-file gates)
    handle: Any = None                        # loader's data (e.g. the manifest row, the FCSFile for the digest)


def stained_copy(fmo, stained: Sequence[tuple[str, Any]]) -> str | None:
    """The name of the stained file that the FMO file ``fmo`` (an FCSFile) is a byte-for-byte copy
    of, None when it is none of ``stained`` ((name, FCSFile) pairs): a stained file copied under
    an FMO's name (a slip when exporting or renaming) passes every other check, and its cut at
    the stained tube's own 99.5th percentile reports every positive fraction near 0.5 %. The
    TEXT keywords are compared first (a real FMO differs at least in $FIL, TUBE NAME or the
    times); only for identical ones are the files' bytes compared."""
    for name, meta in stained:
        if meta.keywords == fmo.keywords and filecmp.cmp(meta.path, fmo.path, shallow=False):
            return name
    return None


def _duplicate_controls(product_id: str, tube_kind: str, gated: Sequence[_Source], vocabulary) -> list[QCFlag]:
    """A ``duplicate_control`` flag (review) for each marker with more than one gated FMO file in
    a tube kind (the same FMO in two folders, a re-acquired control, another product's): its
    thresholds come from the last of them in manifest order, as ``fmo`` gates take the last that
    loads. ``gated``: the tube kind's gated sources in manifest order."""
    by_marker: dict[str, list[_Source]] = {}
    for src in gated:
        if src.role == "fmo" and src.fmo_marker:
            by_marker.setdefault(vocabulary.canonical_name(src.fmo_marker), []).append(src)
    flags = []
    for marker, group in by_marker.items():
        if len(group) > 1:
            shown = [src.handle["name"] for src in group]
            flags.append(QCFlag(product_id, "", "duplicate_control", "warning",
                                f"{len(group)} {tube_kind} FMO files for {marker} ({', '.join(shown)}); its thresholds "
                                f"come from the last, {shown[-1]}: check that each belongs to this product (a "
                                "re-acquired control, or another product's)"))
    return flags


def _row_source(order: int, role: str, fmo_marker: str | None, row, labels: Mapping[str, str]) -> _Source:
    """A manifest ``row`` as a source of :func:`analyze_product`'s loader (its handle: the row, the
    file's name in flags, from ``labels`` (:func:`tilpheno.io.files.file_labels`), the read and
    load flags once met, the FCSFile once read)."""
    src = _Source(order, role, fmo_marker)
    name = labels.get(str(row.file), Path(str(row.file)).name)
    src.handle = {"row": row, "name": name, "read_flag": None, "load_flag": [], "fcs": None}
    return src


@dataclass
class _Threshold:
    """An ``fmo`` population's threshold, resolved once for the whole tube kind."""

    placement: pl.Placement | None
    row: dict[str, Any] | None
    error: str = ""
    held: tuple[str, ...] = ()   # the undetermined gates its stained parent rests on (checks.place_and_check)


def _pooled_note(d: dict[str, Any], reference: str, marker: str, held: tuple[str, ...]) -> str:
    """``fallback_gate``'s words on a cut moved to the parent's negatives read on their lower sides, its cells in
    ``reference`` and those outside it (winner ``outside_pooled``, ``placement.pooled_lower_sides``): up from a cut
    inside the bulk of those outside it, below a prominent valley above their peak or with a shallow one or none
    (``outside_raised_from``; stop 59), or down from a log-normal binding fit's cut (``outside_lowered_from``; the skew carry's lower cut set
    aside where it had replaced it; stop 58), or from a skew carry's raised cut, up from inside the parent's dense negative
    peak or down from above its negatives (``skew_bounded_from``; stop 60); the points of the parent it moved unless ``held``."""
    pooled = (f" to the {d['percentile']:g}th percentile of the parent's negatives read on their lower sides, its cells "
              f"in {reference} and those outside it (stated {marker}-negative) as normal groups")
    if "skew_bounded_from" in d:
        up = pl.skew_bound_moved_up(d)
        where = "up from inside the parent's dense negative peak" if up else "down from above the parent's negatives"
        return (f"; the skew carry's cut {d['skew_bounded_from']:.4g} "
                f"({'lowered' if 'skew_lowered_points' in d else 'raised'} from {d['skew_raised_from']:.4g}, with the "
                f"right-skewed {marker} tail of {reference}) was moved {where}{pooled}"
                + ("" if held else f", {d['outside_moved_points']:.1f} points of the parent {'fewer' if up else 'more'} "
                   f"called positive"))
    if "outside_raised_from" in d:
        valley = float(d["outside_cut"])
        return (f"; the cut was moved up from {d['outside_raised_from']:.4g}{pooled}, "
                + (f"below the stained valley {valley:.4g} above the peak {d['outside_peak']:.4g} of those outside it"
                   if d.get("outside_prominent") else
                   f"the stained valley {valley:.4g} above the peak {d['outside_peak']:.4g} of those outside it a shallow "
                   f"one (no prominent peak of the parent above it)" if math.isfinite(valley) else
                   f"no stained valley lying above the peak {d['outside_peak']:.4g} of those outside it")
                + ("" if held else f", {d['outside_moved_points']:.1f} points of the parent fewer called positive"))
    return (f"; the cut was moved down from {d['outside_lowered_from']:.4g} (a log-normal binding fit's cut"
            + (f"; the skew carry's {d['skew_cut']:.4g} on the {marker} shift of {reference} set aside, the cells outside "
               f"{reference} raising the parent's mode by their spillover" if "skew_lowered_points" in d else "")
            + f"){pooled}"
            + ("" if held else f", {d['outside_moved_points']:.1f} points of the parent more called positive than at "
               f"the fit's cut"))


class _TubeKindRun:
    """Walks one strategy over the files of one tube kind (see :func:`gate_tube_kind`).

    Two passes. Pass 1 resolves every ``fmo`` threshold in strategy order: the marker's FMO file
    (``control: unstained``: the product's unstained control, a source of role ``unstained``) is
    gated down to the population's parent (its per-file gates placed on its own data, earlier
    thresholds applied) and the percentile taken; a missing control falls back to the stained tube.
    Pass 2 gates every file to the end with all thresholds known. A file's per-file placements
    (cells, singlets, lymphocytes, valley) are kept, so a file loaded in both passes is placed once.
    With ``keep_loaded`` False a file is loaded again when it was released in between; besides
    the file in use, only the first stained file stays loaded, and only while its arrays take at
    most ``STAINED_KEEP_BYTES`` (every threshold of pass 1 walks it again): the memory of a tube
    kind is one file's, plus a small stained file's. A control file (FMO, unstained) released with
    its per-file gates placed is not read again when ``settle`` is given: ``settle(index, state)``
    first takes from all its columns what its result needs (``state.plot_data``, the compensation
    check), then only the columns its populations table and remaining gates (thresholds) read
    stay, while those of all controls take at most ``CONTROLS_KEEP_BYTES``. ``settle`` is called once for every file, before
    its columns are dropped or else before ``consume`` (:meth:`finish`).
    """

    def __init__(self, strategy: Strategy, sources: Sequence[_Source], load, percentile: float, keep_loaded: bool,
                 vocabulary: Vocabulary | None = None, qc: QCRules | None = None, settle=None,
                 control: Callable[[], TubeData | None] | None = None, plot_events: int | None = None,
                 cross: Callable[[str, str, Any], CrossControl | None] | None = None):
        self.strategy, self.sources, self.load = strategy, list(sources), load
        self.control = control   # the product's unstained control (loaded on first call), for one-population cuts
        # (cross_fmo spec, detector, transform) -> another tube kind's FMO standing in for a missing one (analyze_product's
        # cross: cross_fmo_gated once per tube kind and detector, each gate's CrossControl carved from it)
        self.cross = cross
        self.percentile, self.keep_loaded, self.settle = percentile, keep_loaded, settle
        self.settled: set[int] = set()
        self.slim: dict[int, int] = {}   # control file -> bytes of the columns it keeps (loaded, not released)
        self.vocabulary = vocabulary or default_vocabulary()
        self.qc = qc or QCRules()
        self.pops = list(strategy.populations)
        self.loaded: dict[int, _Gated] = {}
        self.position: dict[int, int] = {}
        self.file_flags: dict[int, list[tuple[int, pl.Flag]]] = {}
        self.thresholds: dict[str, _Threshold] = {}
        self.global_flags: list[tuple[int, pl.Flag]] = []   # flags of fmo thresholds, given to the target file
        self.fallbacks: dict[int, int] = {}   # an fmo gate placed on the stained density (its index) -> that file
        self.plot_events = plot_events   # the overlay's share of a control's events (TubeResult.control_events)
        self.control_events: dict[str, ControlEvents] = {}   # an fmo gate anchored on the unstained control -> its events
        self.control_gated: ControlGated | None = None   # the gates last applied to the unstained control (:meth:`_on`)

    # -- loading ---------------------------------------------------------------------------
    def state(self, i: int) -> _Gated | None:
        if i in self.loaded:
            return self.loaded[i]
        src = self.sources[i]
        if src.failed:
            return None
        if not self.keep_loaded:   # release the previous file's arrays before reading the next
            for j in [j for j in self.loaded if j != self._kept() and j not in self.slim]:
                self._release(j)
        tube = self.load(src)
        if tube is None:
            src.failed = True
            return None
        self.loaded[i] = _Gated(tube)
        self.position[i] = 0
        self.file_flags[i] = []
        return self.loaded[i]

    def _release(self, i: int) -> None:
        """Free file ``i``'s arrays: all of them, or (a control, see the class docstring) those its
        remaining gates do not read."""
        st = self.loaded[i]
        keep = self._slim_columns(i)
        if keep is None:
            del self.loaded[i]
            return
        self._settle(i)
        st.tube.data = {d: v for d, v in st.tube.data.items() if d in keep}
        self.slim[i] = sum(v.nbytes for v in st.tube.data.values())

    def _slim_columns(self, i: int) -> set[str] | None:
        """The columns control file ``i`` keeps when released (the strategy's markers, whose medians
        its populations table gives, and its remaining gates' dimensions; the first column when none:
        ``n_events`` reads it), or None when it is released whole: a stained file, no ``settle``, a
        per-file gate still to place, or ``CONTROLS_KEEP_BYTES`` exceeded."""
        rest = self.pops[self.position[i]:]
        if self.settle is None or self.sources[i].role == "stain" or any(
                p.boolean is None and p.method != "fmo" for p in rest):
            return None
        data = self.loaded[i].tube.data
        keep = {d for d in (*self.strategy.markers, *(d for p in rest for d in p.dims)) if d in data} or set(list(data)[:1])
        if sum(self.slim.values()) + sum(data[d].nbytes for d in keep) > CONTROLS_KEEP_BYTES:
            return None
        return keep

    def _settle(self, i: int) -> None:
        if self.settle is not None and i not in self.settled:
            self.settle(i, self.loaded[i])
            self.settled.add(i)

    def _kept(self) -> int | None:
        """The loaded file kept while another one is read: the first stained file, when small."""
        stained = next((i for i, s in enumerate(self.sources) if s.role == "stain"), None)
        state = self.loaded.get(stained) if stained is not None else None
        if state is None or sum(v.nbytes for v in state.tube.data.values()) > STAINED_KEEP_BYTES:
            return None
        return stained

    def first_loadable(self, indices: Sequence[int]) -> tuple[int, _Gated] | None:
        for i in indices:
            st = self.state(i)
            if st is not None:
                return i, st
        return None

    # -- walking ---------------------------------------------------------------------------
    def walk(self, i: int, upto: int) -> None:
        """Gate file ``i`` through populations ``[its position, upto)`` (thresholds before ``upto`` resolved)."""
        st, src = self.loaded[i], self.sources[i]
        flags = self.file_flags[i]
        for k in range(self.position[i], upto):
            pop = self.pops[k]
            if pop.boolean is not None:
                st.masks[pop.name] = st.mask_of(pop, pop.boolean)
                st.gates.append((pop.name, pop.parent, pop.boolean, "boolean"))
                continue
            if pop.method == "fmo":
                th = self.thresholds[pop.name]
                if th.placement is None:
                    st.masks[pop.name] = np.zeros(st.tube.n_events, dtype=bool)
                    flags.append((k, gate_flag(pop, pl.Flag("gate_failed", "error", th.error))))
                    continue
                st.masks[pop.name] = st.mask_of(pop, th.placement.gate)
                st.gates.append((pop.name, pop.parent, th.placement.gate, th.placement.method))
                st.diagnostics[pop.name] = dict(th.placement.diagnostics)
                if th.row is not None:
                    st.thresholds.append(th.row)
                continue
            reference = pop.params.get("reference")
            placed_on = st.masks[reference] if reference else st.parent_mask(pop)
            placement = src.placed.get(pop.name)
            if placement is None:
                try:
                    applied = st.parent_mask(pop) if reference else None
                    # one population: negative or positive against the control
                    placement = (pl.Placement(pop.fixed_gate, "fixed") if pop.fixed_gate is not None
                                 else _place_on(pop, st.tube, placed_on, applied, lambda: self._unstained(i, pop),
                                                self.percentile,
                                                resting_on(self.strategy, undetermined_gates(st.diagnostics),
                                                           *pop.depends_on)))
                except TooFewEventsError as exc:
                    placement = _Failed(f"{pop.name}: {_too_few(self.strategy, st, reference or pop.parent, exc)}")
                except GatingError as exc:
                    placement = _Failed(f"{pop.name}: {exc}")
                src.placed[pop.name] = placement
            if isinstance(placement, _Failed):
                st.masks[pop.name] = np.zeros(st.tube.n_events, dtype=bool)
                flags.append((k, gate_flag(pop, self._failed_flag(pop, src, str(placement)))))
                continue
            st.masks[pop.name] = st.mask_of(pop, placement.gate)
            st.gates.append((pop.name, pop.parent, placement.gate, placement.method))
            st.diagnostics[pop.name] = dict(placement.diagnostics)
            flags.extend((k, gate_flag(pop, f)) for f in placement.flags)
        self.position[i] = max(self.position[i], upto)

    def _failed_flag(self, pop: Population, src: _Source, problem: str) -> pl.Flag:
        """The ``gate_failed`` flag of ``pop``'s per-file gate on ``src``: an error (it holds
        release), except on an FMO file when ``pop`` lies within a gate on the marker that FMO
        omits and no threshold of that marker is read from within ``pop``: that population is
        (almost) empty in the FMO by design (the lymphocyte gate drafted within a pan-leukocyte
        marker's positives, in that marker's FMO) and no gate of the stained tube uses it, so info."""
        marker = src.fmo_marker if src.role == "fmo" else None
        above = _gated_above(self.strategy, pop, marker, self.vocabulary) if marker else None
        needed = above is not None and any(
            q.method == "fmo" and any(self.vocabulary.same(d, marker) for d in q.dims)
            and _descends_from(self.strategy, q.name, pop.name) for q in self.pops)
        if above is None or needed:
            return pl.Flag("gate_failed", "error", problem)
        return pl.Flag("gate_failed", "info", f"{problem}; not needed: the FMO omits {marker}, so {above} (a gate on "
                                              f"{marker}) and what lies within it hold (almost) no events in this file, "
                                              "and no threshold is taken from there")

    def _placement(self, k: int, pop: Population) -> tuple[pl.Placement, str, tuple[str, ...], tuple[str, ...]]:
        """The threshold gate of ``fmo`` population ``pop`` (index ``k``), the file that set it ('' = fallback) and
        the undetermined gates the parents its checks count rest on, the stained file's and the control's
        (``checks.place_and_check``'s ``held`` and ``control_held``)."""
        stains = [i for i, s in enumerate(self.sources) if s.role == "stain"]
        marker = pop.dims[0]
        params = dict(pop.params)
        pct = float(params.pop("percentile", self.percentile))
        min_events = int(params.pop("min_events", 200))
        skew_reference = params.pop("skew_reference", None)
        params.pop("outside_cells", None)   # read by _on_unstained's outside check
        params.pop("cross_fmo", None)   # read by _on_unstained
        anchor = {key: params.pop(key) for key in pl.ANCHOR_PARAMS if key in params}
        # the control: the last FMO file of the marker that loads (as a dict keyed by marker would
        # keep), or with control: unstained the product's unstained control
        if params.pop("control", "fmo") == "unstained":
            kind, missing_code = "unstained control", "missing_control"
            missing = "no usable unstained control in the product"
            controls = [i for i, s in enumerate(self.sources) if s.role == "unstained"]
        else:
            kind, missing_code, missing = "FMO", "missing_fmo", "no FMO file for this marker"
            controls = [i for i, s in enumerate(self.sources) if s.role == "fmo" and self.vocabulary.same(s.fmo_marker, marker)]
        found = self.first_loadable(controls[::-1])
        placement, source = None, ""
        held: tuple[str, ...] = ()
        control_held: tuple[str, ...] = ()
        rule = (params, anchor, pct, min_events, skew_reference)
        if found is not None and marker in found[1].tube.data:
            i, st = found
            self.walk(i, k)
            values = st.tube.data[marker][st.parent_mask(pop)]
            if values.size:
                source = st.tube.file
                reference = st.tube.data[marker][st.masks[skew_reference]] if skew_reference else None
                placement, held, control_held, call, stained = self._anchored(k, pop, values, reference, st.tube,
                                                                undetermined_gates(st.diagnostics), rule, kind)
                if stained is not None and kind == "FMO":
                    placement = self._residual_check(pop, st, stained, placement, call, skew_reference)
            reason = f"{kind} {Path(st.tube.file).name} has no events in {pop.parent}"
        else:
            reason = missing
        if placement is None:
            stained_file = self.first_loadable(stains)
            if stained_file is None:
                raise GatingError(f"{pop.name}: {reason} and no stained tube to fall back on")
            i, st = stained_file
            self.walk(i, k)
            missing_flag = pl.Flag(missing_code, "warning", f"{pop.name} ({marker}): {reason}")
            on_control = self._on_unstained(k, pop, st, rule, missing_flag) if kind == "FMO" else None
            if on_control is not None:
                return on_control
            values = st.tube.data[marker][st.parent_mask(pop)]
            # the same self-checks as the stained tube's valley gates, quoting no count resting on its undetermined gates
            held = resting_on(self.strategy, undetermined_gates(st.diagnostics), *pop.depends_on)
            valley = checks.check_valley(pop.name, pl.place_valley(values, marker, keep="high", zero=_zero(st.tube, marker),
                                                                   **params), values, held=held)
            self.fallbacks[k] = i
            flags = valley.flags + (
                missing_flag,
                pl.Flag(
                    "fallback_gate", "warning",
                    f"{pop.name} ({marker}): threshold {valley.diagnostics['threshold']:.4g} from the density of the "
                    f"stained tube ({valley.method}) instead of the {kind} {pct}th percentile"
                    + (", no usable unstained control either" if kind == "FMO" else ""),
                ),
            )
            placement = pl.Placement(valley.gate, f"fallback_{valley.method}", valley.diagnostics, flags)
        return placement, source, held, control_held

    def _anchored(self, k: int, pop: Population, values: np.ndarray, reference: np.ndarray | None, control: TubeData,
                  undetermined: frozenset[str], rule: tuple[dict[str, Any], dict[str, Any], float, int, str | None],
                  kind: str, skew_stained: np.ndarray | None = None, outside: np.ndarray | None = None,
                  gathered: np.ndarray | None = None, inside: np.ndarray | None = None,
                  ) -> tuple[pl.Placement, tuple[str, ...], tuple[str, ...], dict[str, Any], _Gated | None]:
        """``pop``'s threshold anchored on a ``control``'s events (``values``; ``reference``: those of the
        strategy's ``skew_reference`` population; ``undetermined``: the gates the control's events were gated
        on that are undetermined) with the first stained file's parent as evidence (``checks.place_and_check``;
        ``rule``: :meth:`_placement`'s params, anchor params, percentile, min_events, skew_reference; ``kind``: the control
        as the flags name it, ``FMO`` or ``unstained control``, also where that stands in for the FMO; ``skew_stained``:
        ``checks.place_and_check``'s, the ``skew_reference`` population's stained events, a cut on the unstained
        control standing in for the FMO; ``outside``: ``placement.place_fmo_anchored``'s ``outside_values``, the
        stained parent's events outside the reference stated marker-negative, and ``inside`` its ``inside_values``,
        the parent's other events, inside the reference; ``gathered``: the first stained
        file's parent events where the caller has gathered them already, not gathered again): the
        placement, the undetermined gates the stained parent rests on and those the control's parent rests on
        (``held``, ``control_held``: each file's counts held apart), the call's arguments and the stained file's
        state (None: no evidence)."""
        marker = pop.dims[0]
        params, anchor, pct, min_events, skew_reference = rule
        params = dict(params)
        stains = [i for i, s in enumerate(self.sources) if s.role == "stain"]
        stained = self.first_loadable(stains) if anchor.get("rule", "anchored") != "percentile" else None
        evidence = None
        if stained is not None and marker in stained[1].tube.data:
            self.walk(stained[0], k)
            evidence = gathered if gathered is not None else stained[1].tube.data[marker][stained[1].parent_mask(pop)]
            if skew_reference:   # a marker-poor population of the same tubes (gated before k)
                params["reference_fmo"] = reference
                params["reference_stained"] = stained[1].tube.data[marker][stained[1].masks[skew_reference]]
        # the counts of the control's and the stained parent (and reference) are not reported below an
        # undetermined gate of their own file: the flags quote none of those, each file's alone
        control_held = resting_on(self.strategy, undetermined, *pop.depends_on)
        held: tuple[str, ...] = ()
        if evidence is not None and stained is not None:
            held = resting_on(self.strategy, undetermined_gates(stained[1].diagnostics), *pop.depends_on)
        call = dict(percentile=pct, source_file=control.file, min_events=min_events, transform=control.transforms.get(marker),
                    held=held, control_held=control_held, control_name=kind, **params, **anchor)
        if skew_stained is not None:
            call["skew_stained"] = skew_stained
        if outside is not None:
            call["outside_values"] = outside
            call["inside_values"] = inside
        placement = checks.place_and_check(pop.name, marker, values, evidence, **call)
        return placement, held, control_held, call, stained[1] if evidence is not None and stained is not None else None

    def _on_unstained(self, k: int, pop: Population, stained: _Gated,
                      rule: tuple[dict[str, Any], dict[str, Any], float, int, str | None], missing: pl.Flag,
                      ) -> tuple[pl.Placement, str, tuple[str, ...], tuple[str, ...]] | None:
        """Without its FMO, ``pop``'s threshold anchored on the product's unstained control as on an FMO
        (:meth:`_anchored`, as ``control: unstained``): the control's events in the nearest ancestor of the
        parent an unstained cell reaches, the stained file's gates applied (:func:`unstained_reading`), carried to
        the parent's own stained negatives, not through a ``skew_reference`` (the control lacks every stain's
        spreading, which the T cells' stains put into the parent and not into a marker-poor reference: PD1's
        CD3- reference carried V165055's PD1+ cut to 10 points above the ideal-FMO reference, the parent's own
        negatives to 0.4; a ``reference_carry: quantile`` gate keeps its reference, the control standing in for the FMO
        of both the parent and the reference, so the control's percentile cancels and the cut is the reference's own
        stained percentile, with the binding and spreading the control lacks: TIL FoxP3 on non_CD4_T, stop 60), the
        reference read only for its right-skewed binding tail, stained vs the control
        (``placement.reference_binding``'s ``skew``), added to the parent's own carry-over: the cut is raised to that
        carry-over where it lies above (``placement.place_fmo_anchored``'s ``skew_binding``, read by
        ``checks.place_and_check`` from the reference's stained events, ``skew_stained``, which also judges such a
        cut by its own reading, ``placement.skew_cut_error``; winner ``skew_carry``; stops 53-54: PD1 gates beyond
        1.5 points and their flags, benchmarks/README.md), and the parent's cells outside the reference,
        where the strategy states them marker-negative (``outside_cells: negative``, e.g. CD56's CD8+ T cells under
        CD8's tandem spillover), move a cut inside their bulk up to the parent's first valley above their negative
        peak (``place_fmo_anchored``'s ``outside_values``, winner ``outside_valley``; stop 54; or to the parent's
        negatives read on their lower sides, ``inside_values`` and ``outside_values``, where those lie lower or the
        valley is shallow or missing, winner ``outside_pooled``, stop 59; a log-normal fit's cut above those negatives moves down to them, winner
        ``outside_pooled``, stop 58) and are read by the
        outside check (``checks.fallback_outside_check``: ``uncertain_threshold`` when most of them still lie above
        the cut); flagged ``missing`` and ``fallback_gate`` saying why the cut can be wrong and by how much a raise
        or move changed it:
        (placement, the control's file, held, control_held) as :meth:`_placement`'s; the control's events were
        gated on the stained file's gates, so they rest on its undetermined gates too. None without a control carrying the
        marker with ``MIN_CONTROL_EVENTS`` events there (the valley then). The control's events it rests on are kept
        for the overlay (``control_events``: at most ``plot_events`` of them)."""
        control = self.control() if self.control is not None else None
        marker = pop.dims[0]
        read = unstained_reading(self.strategy, self._on(stained, control), marker, pop.parent) if control is not None else None
        if control is None or read is None or read[1].size < pl.MIN_CONTROL_EVENTS:
            return None
        base, values = read
        kept = next((e for e in self.control_events.values() if (e.file, e.marker, e.population) == (control.file, marker, base)),
                    None)   # the same events: a gate's own population's mask depends only on gates placed before
        self.control_events[pop.name] = kept or control_events(control.file, marker, base, values, self.plot_events)
        reference = rule[4]
        cross = self._cross_control(pop, stained)
        if cross is not None and reference:
            return self._on_cross(k, pop, stained, rule, missing, cross, control, values)
        # the binding tail the control lacks, read on the reference's stained events (checks.place_and_check)
        skew_stained = stained.tube.data[marker][stained.masks[reference]] if reference else None
        # a reference_carry: quantile gate keeps its reference, the control standing in for the FMO of both the parent
        # and the reference (the control's percentile cancels: the cut is the reference's own stained percentile)
        quantile = bool(reference) and rule[1].get("reference_carry") == "quantile"
        outside, inside, parent_values = None, None, None
        if reference and pop.params.get("outside_cells") == "negative":   # left out for their spillover, which the control lacks too
            parent = stained.parent_mask(pop)
            parent_values = stained.tube.data[marker][parent]   # gathered once: the placement's evidence and the check's
            in_reference = stained.masks[reference][parent]
            outside, inside = parent_values[~in_reference], parent_values[in_reference]
        placement, held, control_held, _, _ = self._anchored(k, pop, values, values if quantile else None, control,
                                                             undetermined_gates(stained.diagnostics),
                                                             rule if quantile else (*rule[:4], None),
                                                             "unstained control", skew_stained, outside, parent_values,
                                                             inside)
        if outside is not None and parent_values is not None:
            placement = checks.fallback_outside_check(pop.name, marker, placement, parent_values, outside,
                                                      str(reference), held)
        d = placement.diagnostics
        flag = pl.Flag(
            "fallback_gate", "warning",
            f"{pop.name} ({marker}): threshold {d['threshold']:.4g} anchored on the unstained control "
            f"{Path(control.file).name} ({d.get('winner', placement.method)}) instead of the FMO: an unstained tube "
            f"lacks the other colours' spreading into {marker} and any nonspecific binding of the {marker} antibody "
            f"that the FMO would show"
            + (f"; the cut is the {rule[2]:g}th percentile of {reference}'s stained events (reference_carry quantile, the "
               f"unstained control standing in for the FMO of both {pop.parent} and {reference}, so its own percentile "
               f"cancels): it carries the antibody's binding and the other colours' spreading, and assumes {pop.parent} "
               f"and {reference} alike in {marker} without the antibody, which only an FMO checks"
               if quantile and d.get("relative_carry") == "reference" else ", so the cut can lie too low (positives over-called)")
            + (f"; the cut was raised from {d['skew_raised_from']:.4g} by the right-skewed {marker} tail of {reference} "
               f"(skew {d['skew_extra']:.0f} linear units, stained {reference} vs the unstained control)"
               + ("" if held else f", {d['skew_points']:.1f} points of the parent fewer called positive")
               if d.get("winner") == "skew_carry" and "skew_lowered_points" not in d else "")
            + (f"; the carry took the {marker} shift of {reference} ({d['skew_reference_shift']:.0f} linear units, 0 at "
               f"least) for the parent's own ({d['skew_own_shift']:.0f}, its broad negative peak read below it: binding "
               f"adds to every cell and spreading nothing on average), its lower-side spread read there; look at the "
               f"{marker} histogram of {pop.parent}, stained vs the control"
               if d.get("winner") == "skew_carry" and "skew_reference_shift" in d else "")
            + (f"; the cut was lowered from {d['skew_raised_from']:.4g} to the carry-over on the {marker} shift of "
               f"{reference} ({d['skew_shift']:.0f} linear units; the parent's own {d['skew_parent_shift']:.0f}, pulled up "
               f"by its dim positives)"
               + ("" if held else f", {d['skew_lowered_points']:.1f} points of the parent more called positive")
               if "skew_lowered_points" in d and d.get("winner") != "outside_pooled" else "")
            + (f"; the cut was moved up from {d['outside_raised_from']:.4g} to the stained valley above the peak "
               f"{d['outside_peak']:.4g} of the parent's cells outside {reference} (stated {marker}-negative, their "
               f"spillover the control lacks)"
               + ("" if held else f", {d['outside_moved_points']:.1f} points of the parent fewer called positive")
               if d.get("winner") == "outside_valley" else "")
            + (_pooled_note(d, str(reference), marker, held) if d.get("winner") == "outside_pooled" else ""))
        return (pl.Placement(placement.gate, f"fallback_{placement.method}", d, placement.flags + (missing, flag)),
                control.file, held, control_held)

    def _cross_control(self, pop: Population, stained: _Gated) -> CrossControl | None:
        """The other tube kind's FMO that ``pop``'s ``cross_fmo`` names (``self.cross``: :func:`cross_fmo_gated`'s
        reading, :meth:`CrossGated.control`), on the stained file's detector of the marker, with at least
        ``MIN_CONTROL_EVENTS`` events there; else None."""
        spec, marker = pop.params.get("cross_fmo"), pop.dims[0]
        if not spec or self.cross is None or marker not in stained.tube.detectors:
            return None
        cross = self.cross(str(spec), stained.tube.detectors[marker], stained.tube.transforms.get(marker))
        return cross if cross is not None and cross.values.size >= pl.MIN_CONTROL_EVENTS else None

    def _on_cross(self, k: int, pop: Population, stained: _Gated,
                  rule: tuple[dict[str, Any], dict[str, Any], float, int, str | None], missing: pl.Flag,
                  cross: CrossControl, control: TubeData, control_values: np.ndarray,
                  ) -> tuple[pl.Placement, str, tuple[str, ...], tuple[str, ...]]:
        """Without its FMO, ``pop``'s threshold anchored on another tube kind's FMO (``cross``, the ``cross_fmo``
        parameter): that file's events on the marker's detector, in the population it names, stand in for the FMO
        of the parent (they carry the other stains' spreading into the detector, which the unstained control
        lacks: TIL, the Treg tube's FoxP3 FMO, CD3 FITC into PE), and the product's unstained control
        (``control_values``, its events in the nearest ancestor an unstained cell reaches) for the FMO of the
        ``skew_reference``, on which the marker antibody's binding is read (shift, lower-side spread, right skew:
        ``placement.reference_binding``) and carried over the cross control's events (``relative_reference``):
        the with-FMO rule with both controls standing in. Flagged ``missing`` and ``fallback_gate`` naming both."""
        marker, reference = pop.dims[0], str(rule[4])
        self.control_events[pop.name] = control_events(cross.file, marker, f"{cross.tube} {cross.population}",
                                                       cross.values, self.plot_events, f"{cross.tube} FMO")
        placement, held, control_held, _, _ = self._anchored(k, pop, cross.values, control_values,
                                                             replace(control, file=cross.file),
                                                             undetermined_gates(stained.diagnostics), rule,
                                                             f"{cross.tube} FMO")
        d = placement.diagnostics
        flag = pl.Flag(
            "fallback_gate", "warning",
            f"{pop.name} ({marker}): threshold {d['threshold']:.4g} anchored on the {cross.tube} FMO "
            f"{Path(cross.file).name} ({cross.population} cells: no stain on {cross.detector} there, the other stains' "
            f"spreading kept; {d.get('winner', placement.method)}) instead of the {marker} FMO, with the {marker} "
            f"antibody's binding read on {reference} against the unstained control {Path(control.file).name}: it "
            f"assumes {pop.parent} and {cross.population} of the {cross.tube} tube alike in {cross.detector} without "
            f"the antibody (fixation, cell types), which only the {marker} FMO checks")
        return (pl.Placement(placement.gate, f"fallback_{placement.method}", d, placement.flags + (missing, flag)),
                cross.file, held, control_held)

    def _residual_check(self, pop: Population, fmo: _Gated, stained: _Gated, placement: pl.Placement,
                        call: dict[str, Any], skew_reference: str | None) -> pl.Placement:
        """``placement`` of ``fmo`` population ``pop`` with the residual-spillover check
        (``checks.residual_impact``): the FMO's residual spillover into the marker's detector read on
        the FMO parent's events (``checks.partial_slopes``, ``checks.residual_slopes``, the strategy's markers both files have);
        when some is flagged, the gate placed again (``call``: the placement's arguments) with it
        taken out of the marker in both files (and in the ``skew_reference`` population's events),
        and judged against the gate's own ``uncertain_points`` when the strategy sets one."""
        marker = pop.dims[0]
        transform = fmo.tube.transforms.get(marker)
        markers = [m for m in self.strategy.markers if m in fmo.tube.data and m in stained.tube.data]
        if transform is None or marker not in markers:
            return placement

        def linear(state: _Gated, events: np.ndarray) -> dict[str, np.ndarray]:
            return {m: state.tube.transforms[m].inverse(state.tube.data[m][events]) for m in markers}

        from tilpheno.spillover import residual_events

        # only the parent's events the slopes are read on (every k-th beyond RESIDUAL_MAX_EVENTS,
        # residual_events) are taken back to linear units: the same events, the same slopes
        parent = np.flatnonzero(fmo.parent_mask(pop))
        fmo_read = checks.partial_slopes(linear(fmo, parent[residual_events(parent.size)]), marker, math.inf)
        slopes = checks.residual_slopes(fmo_read)
        if not slopes:
            return self._misfit_check(pop, fmo, stained, placement, call, skew_reference, fmo_read, linear)

        def corrected(state: _Gated, mask: np.ndarray) -> np.ndarray:
            return transform.apply(checks.without_residual(linear(state, mask), marker, slopes))

        again = dict(call)
        if skew_reference:
            again.update(reference_fmo=corrected(fmo, fmo.masks[skew_reference]),
                         reference_stained=corrected(stained, stained.masks[skew_reference]))
        evidence = corrected(stained, stained.parent_mask(pop))
        other = checks.place_and_check(pop.name, marker, corrected(fmo, fmo.parent_mask(pop)), evidence, **again)
        limit = {"uncertain_points": call["uncertain_points"]} if "uncertain_points" in call else {}
        return checks.residual_impact(pop.name, marker, placement, stained.tube.data[marker][stained.parent_mask(pop)],
                                      other, evidence, slopes, held=call["held"], **limit)

    def _misfit_check(self, pop: Population, fmo: _Gated, stained: _Gated, placement: pl.Placement,
                      call: dict[str, Any], skew_reference: str | None, fmo_read: dict[str, tuple[float, float, bool]],
                      linear: Callable[[_Gated, np.ndarray], dict[str, np.ndarray]]) -> pl.Placement:
        """``placement`` with the compensation-misfit check (``checks.misfit_impact``, stop 63): the FMO parent's
        partial slopes into the marker's detector (``fmo_read``, the residual check's ``checks.partial_slopes``) minus
        the stained parent's below the cut (``checks.misfit_slopes``: none where the difference is within its
        sampling error, the screen), taken out of the FMO's events only (and its
        ``skew_reference`` population's), the gate placed again. ``linear``: state, events -> marker -> compensated
        linear values (``_residual_check``'s)."""
        from tilpheno.spillover import residual_events

        marker = pop.dims[0]
        transform = fmo.tube.transforms[marker]
        below = float(transform.inverse(np.array([float(placement.diagnostics["threshold"])]))[0])
        parent = np.flatnonzero(stained.parent_mask(pop))
        slopes = checks.misfit_slopes(fmo_read, linear(stained, parent[residual_events(parent.size)]), marker, below)
        if not slopes:
            return placement

        def corrected(mask: np.ndarray) -> np.ndarray:
            return transform.apply(checks.without_residual(linear(fmo, mask), marker, slopes))

        again = dict(call)
        if skew_reference:
            again.update(reference_fmo=corrected(fmo.masks[skew_reference]),
                         reference_stained=stained.tube.data[marker][stained.masks[skew_reference]])
        evidence = stained.tube.data[marker][stained.parent_mask(pop)]
        other = checks.place_and_check(pop.name, marker, corrected(fmo.parent_mask(pop)), evidence, **again)
        limit = {"uncertain_points": call["uncertain_points"]} if "uncertain_points" in call else {}
        return checks.misfit_impact(pop.name, marker, placement, evidence, other, slopes, held=call["held"], **limit)

    def _unstained(self, i: int, pop: Population) -> np.ndarray | None:
        """The product's unstained control's events for file ``i``'s one-population valley cut of
        ``pop`` (:func:`unstained_reading`), None for a control file or without a usable control."""
        if self.sources[i].role != "stain" or self.control is None:
            return None
        control = self.control()
        read = unstained_reading(self.strategy, self._on(self.loaded[i], control), pop.dims[0], pop.parent) \
            if control is not None else None
        return None if read is None else read[1]

    def _on(self, state: _Gated, control: TubeData) -> ControlGated:
        """``state``'s gates placed so far applied to the unstained ``control`` (:func:`_on_control`), the masks of
        the gates applied before kept: every gate of the tube kind applied to the control once, whichever of its
        fallback gates, one-population cuts and self-checks read it."""
        self.control_gated = _on_control(self.strategy, state.gates, control, self.control_gated)
        return self.control_gated

    def resolve(self) -> None:
        """Pass 1: every ``fmo`` threshold, in strategy order."""
        for k, pop in enumerate(self.pops):
            if pop.method != "fmo":
                continue
            try:
                placement, source, held, control_held = self._placement(k, pop)
            except GatingError as exc:
                self.thresholds[pop.name] = _Threshold(None, None, str(exc))
                continue
            marker = pop.dims[0]
            row = _threshold_row(pop, placement, source, self.strategy, self.percentile, held, control_held)
            self.thresholds[pop.name] = _Threshold(placement, row, held=held)
            self.global_flags.extend((k, gate_flag(pop, f)) for f in placement.flags)
            low, high = self.qc.fmo_threshold_range
            if not low <= row["value_raw"] <= high:
                self.global_flags.append((k, pl.Flag(
                    "threshold_out_of_range", "warning",
                    f"{pop.name} ({marker}): threshold {row['value_raw']:.4g} outside the expected "
                    f"{low:g}-{high:g} (compensated linear units)", pop.name,
                )))
        self.global_flags.extend(self._shared_reading())

    def _shared_reading(self) -> list[tuple[int, pl.Flag]]:
        """The resolved thresholds' verdicts on a shared reference reading (``tilpheno.gates.shared_reading``):
        each gate's ``reading_verdict`` in its threshold row, and the flags, each at its gate's place in the strategy."""
        index = {p.name: k for k, p in enumerate(self.pops)}
        gates = [(p.name, th.row["marker"], reading_key(th.row["marker"], th.row["source_file"], p.params, self.percentile),
                  th.placement.diagnostics)
                 for p in self.pops if (th := self.thresholds.get(p.name)) is not None and th.placement is not None
                 and th.row is not None]
        held = {name: th.held for name, th in self.thresholds.items()}
        for name, verdict in reading_verdicts(gates, held).items():
            self.thresholds[name].row["reading_verdict"] = verdict   # type: ignore[index]  # a row: gates above
        return [(index[f.gate], f) for f in shared_reading_flags(gates, held)]

    def finish(self, consume) -> None:
        """Pass 2: gate every loadable file to the end and hand it to ``consume(index, state)``,
        the files already in memory first (those of which only some columns are kept before the
        others, so that they are freed first); its arrays are released afterwards (unless ``keep_loaded``).
        The state's ``flags`` are complete only after :meth:`ordered_flags` (the target file of the
        thresholds' flags is known once every file has been tried)."""
        order = sorted(self.loaded, key=lambda i: i not in self.slim) + [
            i for i in range(len(self.sources)) if i not in self.loaded]
        for i in order:
            st = self.state(i)
            if st is None:
                continue
            self.walk(i, len(self.pops))
            if self.sources[i].role == "stain":
                self.file_flags[i] = _sized_flags(self.strategy, st, self.file_flags[i], self.pops)
                self._size_fallbacks(i, st)
                self.file_flags[i] += _subset_flags(self.strategy, st, self.pops)
                self.file_flags[i] += _co_expression_flags(self.strategy, st, self.pops)
            self._settle(i)
            consume(i, st)
            if not self.keep_loaded:
                self.loaded.pop(i, None)
                self.slim.pop(i, None)
                del st   # no reference left: the file's arrays are freed before the next file is read

    def _size_fallbacks(self, i: int, st: _Gated) -> None:
        """The self-check flags of the fmo gates placed on stained file ``i``'s density (their fallback,
        ``checks.check_valley``'s) sized on it as its valley gates' are (:func:`_sized_flags`)."""
        mine = [k for k, on in self.fallbacks.items() if on == i]
        if not mine:
            return
        sized = iter(_sized_flags(self.strategy, st, [e for e in self.global_flags if e[0] in mine], self.pops))
        self.global_flags = [next(sized) if k in mine else (k, f) for k, f in self.global_flags]

    def target(self) -> int | None:
        """The file that carries the thresholds' flags: the first usable stained file, else the first usable file."""
        usable = [i for i, s in enumerate(self.sources) if not s.failed and i in self.file_flags]
        stains = [i for i in usable if self.sources[i].role == "stain"]
        return (stains or usable or [None])[0]  # type: ignore[list-item]  # None: no usable file

    def ordered_flags(self, i: int) -> list[pl.Flag]:
        """File ``i``'s flags in strategy order (as if all files had been walked population by population)."""
        entries = list(self.file_flags.get(i, []))
        if i == self.target():
            entries += self.global_flags
        return [f for _, f in sorted(entries, key=lambda e: e[0])]


def gate_tube_kind(strategy: Strategy, tubes: Sequence[TubeData], fmo_percentile: float = 99.5,
                   study: Study | None = None, control: TubeData | None = None) -> list[_Gated]:
    """Walk ``strategy`` over the stained tube and FMO files of one tube kind (module docstring).

    Returns one ``_Gated`` per input tube, in input order. ``study``: vocabulary and QC rules
    (default the bundled study). ``control``: the product's unstained control read for the
    stained files' gates (one-population cuts) when it is not among ``tubes`` (default: the first
    ``tubes`` of role ``unstained``).
    """
    study = study or default_study()
    tubes = list(tubes)
    sources = [_Source(i, t.role, t.fmo_marker) for i, t in enumerate(tubes)]
    control = control or next((t for t in tubes if t.role == "unstained"), None)
    run = _TubeKindRun(strategy, sources, lambda src: tubes[src.order], fmo_percentile, keep_loaded=True,
                       vocabulary=study.vocabulary, qc=study.qc, control=lambda: control)
    run.resolve()
    states: dict[int, _Gated] = {}
    run.finish(lambda i, st: states.__setitem__(i, st))
    for i, st in states.items():
        st.flags = run.ordered_flags(i)
    return [states[i] for i in range(len(tubes))]


def _threshold_row(pop: Population, placement: pl.Placement, source: str, strategy: Strategy, percentile: float,
                   held: tuple[str, ...], control_held: tuple[str, ...]) -> dict:
    marker = pop.dims[0]
    value = float(placement.diagnostics["threshold"])
    row = {
        "population": pop.name,
        "marker": marker,
        "parent": pop.parent,
        "percentile": float(pop.params.get("percentile", percentile)) if source else float("nan"),
        "value_transformed": value,
        "value_raw": float(strategy.transform_for(marker).inverse(np.array([value]))[0]),
        "method": placement.method,
        "source_file": source,
    }
    row.update(checks.threshold_record(placement, held, control_held))
    return row


# --------------------------------------------------------------------------------------------
# tables and variables
# --------------------------------------------------------------------------------------------


def _lymph_population(strategy: Strategy) -> str | None:
    return next((p.name for p in strategy.populations if p.method == "lymphocytes"), None)


def _too_few(strategy: Strategy, st: _Gated, name: str, exc: TooFewEventsError) -> str:
    """Why a gate placed on population ``name`` failed (``exc``) and which gate left too few events
    (:func:`_emptied_by`). Counts resting on an undetermined gate placed so far (one population, no FMO
    or unstained control: :func:`undetermined_gates`) are not quoted, as no output reports them: the
    message says 'too few' and names those gates."""
    held = resting_on(strategy, undetermined_gates(st.diagnostics), name)
    if not held:
        return f"{exc}{_emptied_by(strategy, st, name, exc.needed)}"
    return (f"{exc.what}: too few events to place the gate on (need >= {exc.needed}){_emptied_by(strategy, st, name, exc.needed, held)}"
            f"; counts resting on {', '.join(held)} ({UNDETERMINED}) are not reported")


def _emptied_by(strategy: Strategy, st: _Gated, name: str, needed: int, held: tuple[str, ...] = ()) -> str:
    """Which gate left too few events for a gate placed on population ``name``: the first
    population on the way from the root down to ``name`` (itself included) holding fewer than
    ``needed`` events, as ``'; <population> left <n> of the <m> events of <its parent>'``, or ``'left
    fewer than <needed> of the events'`` where it rests on a gate of ``held`` (undetermined: its count
    not reported); '' when every one holds enough (the gate's own events were not finite)."""
    for pop in reversed(strategy.lineage(name)):
        count = int(np.count_nonzero(st.masks[pop.name]))
        if count < needed:
            of = "the file" if pop.parent == ROOT else pop.parent
            if resting_on(strategy, frozenset(held), pop.name):
                return f"; {pop.name} left fewer than {needed} of the events of {of}"
            return f"; {pop.name} left {count} of the {int(np.count_nonzero(st.parent_mask(pop)))} events of {of}"
    return ""


def _descends_from(strategy: Strategy, name: str, ancestor: str | None) -> bool:
    return ancestor is not None and any(p.name == ancestor for p in strategy.lineage(name))


def within_lymph(strategy: Strategy, name: str) -> bool:
    """Population ``name`` is the lymphocyte gate or within it: it has a % of live lymphocytes (blank for
    any other, whatever its gates: not a share resting on an undetermined gate)."""
    return _descends_from(strategy, name, _lymph_population(strategy))


def _gated_above(strategy: Strategy, pop: Population, marker: str, vocabulary: Vocabulary) -> str | None:
    """The nearest population above ``pop`` (its parent, or one of that parent's ancestors) whose
    gate is on ``marker``, or None."""
    above = next((p for p in strategy.lineage(pop.parent) if any(vocabulary.same(d, marker) for d in p.dims)), None)
    return None if above is None else above.name


def _median_selecting(values: np.ndarray) -> float:
    """``np.median(values)`` (the middle value, the mean of the two middle ones for an even count,
    NaN when any value is NaN), by one selection in place (a non-empty array the caller owns):
    ``partition`` puts the order statistic ``n // 2`` in place with every smaller value before it
    (so the one below it, for an even count, is the largest of those) and NaN, ordered last, after
    it. One selection is 3-6x faster than sorting at 20,000-200,000 values, and than the two-kth
    selection ``np.median`` runs; the values are the same (the mean of two as ``np.mean`` forms it)."""
    half = values.size // 2
    values.partition(half)
    if np.isnan(values[half:].max()):   # NaN is ordered last: any NaN lies at or above the middle
        return float("nan")
    if values.size % 2:
        return float(values[half])
    return float((values[:half].max() + values[half]) / 2)


MEDIAN_BUCKETS = 4096
"""Equal-width value buckets of :class:`_BucketedColumn`."""


def _bucket_of(below: np.ndarray, rank: int) -> tuple[int, int]:
    """The bucket holding the value of ``rank`` (0-based) and how many values lie in lower buckets
    (``below``: per bucket the number of values in it and in every lower one)."""
    bucket = int(np.searchsorted(below, rank, side="right"))
    return bucket, int(below[bucket - 1]) if bucket else 0


@dataclass(frozen=True)
class _BucketedColumn:
    """One marker's (finite) values over all of a tube's events, each with a bucket code: the
    :data:`MEDIAN_BUCKETS` equal-width buckets over [min, max], the code a non-decreasing function
    of the value, so every value of a lower bucket is smaller than every value of a higher one.
    A population's median is then found by counting its events' codes per bucket (``bincount``, about
    1.2 ns an event; NumPy's selection among the 32-bit codes, ``partition``, measured 4-5x dearer on
    this machine's AVX-512 NumPy 2.4) and selecting among the few values in the middle bucket,
    instead of gathering and selecting among all of its values (:meth:`median`)."""

    values: np.ndarray
    codes: np.ndarray

    def _in_bucket(self, index: np.ndarray, codes: np.ndarray, bucket: int, first: int,
                   ranks: tuple[int, ...]) -> list[float]:
        """The ``ranks``-th smallest (0-based) of the values at ``index``, all in bucket ``bucket``
        (``codes``: the bucket codes of the values at ``index``; ``first``: how many of them lie in
        lower buckets)."""
        inside = self.values.take(index[codes == bucket])
        kth = [rank - first for rank in ranks]
        inside.partition(kth)
        return [inside[k] for k in kth]

    def median(self, index: np.ndarray) -> float:
        """``np.median`` of the values at ``index`` (non-empty): the middle value, the mean of the
        two middle ones for an even count (as :func:`_median_selecting` forms it)."""
        codes = self.codes.take(index)
        below = np.cumsum(np.bincount(codes, minlength=MEDIAN_BUCKETS))   # per bucket: values in it and lower ones
        half = index.size // 2
        high, first_high = _bucket_of(below, half)
        if index.size % 2:
            return float(self._in_bucket(index, codes, high, first_high, (half,))[0])
        low, first_low = _bucket_of(below, half - 1)
        if low == high:
            lower, upper = self._in_bucket(index, codes, high, first_high, (half - 1, half))
        else:
            (lower,), (upper,) = (self._in_bucket(index, codes, low, first_low, (half - 1,)),
                                  self._in_bucket(index, codes, high, first_high, (half,)))
        return float((lower + upper) / 2)


def _bucketed(values: np.ndarray) -> _BucketedColumn | None:
    """``values`` with their bucket codes (:class:`_BucketedColumn`); None when any value is not
    finite (the population's median then comes from :func:`_median_selecting`, NaN included) or
    when both -0.0 and 0.0 occur (which of the two equal values a selection returns depends on the
    order it meets them in: the selection in the gathered copy keeps the table as it was). A span
    too small or too large for the bucket width puts every value in bucket 0 (correct, slower)."""
    low, high = float(values.min()), float(values.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    if low <= 0.0 <= high:
        signs = np.signbit(values[values == 0.0])
        if signs.any() and not signs.all():
            return None
    scale = MEDIAN_BUCKETS / (high - low) if high > low else math.inf
    if not (math.isfinite(high - low) and math.isfinite(scale)):
        return _BucketedColumn(values, np.zeros(values.size, dtype=np.int32))
    position = values - low
    position *= scale
    np.minimum(position, MEDIAN_BUCKETS - 1, out=position)
    return _BucketedColumn(values, position.astype(np.int32))


UNDETERMINED = "undetermined: no FMO or unstained control"
"""What stands for a percentage that rests on an undetermined gate (:func:`undetermined_gates`)."""


def undetermined_gates(diagnostics: Mapping[str, Mapping[str, Any]]) -> frozenset[str]:
    """The populations whose gate is undetermined: one population and no FMO or unstained control of
    its marker, held as positive only so that the gates below it are placed (``placement.place_valley``'s
    ``undetermined``; ``diagnostics``: population -> placement numbers, a file's)."""
    return frozenset(p for p, d in diagnostics.items() if d.get("undetermined"))


def resting_on(strategy: Strategy, undetermined: frozenset[str], *populations: str) -> tuple[str, ...]:
    """The undetermined gates (:func:`undetermined_gates`) the events of ``populations`` depend on
    (``Strategy.population_gates``), in gating order; empty when none."""
    if not undetermined:
        return ()
    return tuple(p for p in strategy.population_gates(*populations) if p in undetermined)


def undetermined_flags(product_id: str, name: str, strategy: Strategy,
                       undetermined: frozenset[str]) -> list[QCFlag]:
    """One ``undetermined`` warning per undetermined gate of stained file ``name`` (as flags name it)
    that a variable rests on: the gate, why, and the variables and event counts left blank (NaN) for it, which a
    reviewer's cut on that gate gives a value (``tilpheno.review.regate.recompute``)."""
    flags = []
    by_name = {p.name: p for p in strategy.populations}
    for gate in (g for g in strategy.population_gates(*undetermined) if g in undetermined):
        blank = [v.name for v in strategy.variables if gate in resting_on(strategy, undetermined, v.numerator, v.denominator)]
        if not blank:
            continue
        blank += [c for c, p in strategy.count_columns().items() if gate in resting_on(strategy, undetermined, p)]
        marker = "/".join(by_name[gate].dims)
        flags.append(QCFlag(product_id, name, UNDETERMINED_CODE, "warning",
                            f"{gate} ({marker}): {UNDETERMINED} of {marker}, positive or negative not known: "
                            f"{', '.join(blank)} left blank (NA), as are the counts and medians of {gate} and the "
                            f"populations within it, not reported as if measured; an FMO or unstained "
                            f"control of {marker}, the strategy's one_population, or a reviewer's cut decides it", gate))
    return flags


def population_table(strategy: Strategy, state: _Gated, undetermined: frozenset[str] = frozenset()) -> pd.DataFrame:
    """Per population: count, % of parent, % of live lymphocytes, median of each marker: the median
    of the transformed values mapped back to compensated linear units (the linear median for an
    odd count; for an even count the two middle values are averaged on the transformed scale).
    A percentage whose numerator or denominator rests on an ``undetermined`` gate (:func:`resting_on`)
    is NaN: the gate's side is not known, so neither is the share; so are the count (``<NA>``, the
    column then of pandas' nullable ``Int64``) and the medians of a population resting on one, events
    of a side no one knows."""
    n = state.tube.n_events
    lymph = _lymph_population(strategy)
    lymph_count = int(np.count_nonzero(state.masks[lymph])) if lymph in state.masks else 0
    markers = [m for m in strategy.markers if m in state.tube.data]
    counts = {name: int(np.count_nonzero(mask)) for name, mask in state.masks.items()}
    columns = {m: _bucketed(state.tube.data[m]) for m in markers} if any(counts.values()) else {}
    rows = []
    medians: dict[str, list[float]] = {m: [] for m in markers}   # per marker, one per population, transformed
    lymph_blank = bool(lymph and resting_on(strategy, undetermined, lymph))   # once: the % of lymph rests on it too
    for pop in strategy.populations:
        mask = state.masks.get(pop.name)
        count = counts.get(pop.name, 0)
        parent_count = n if pop.parent == ROOT else counts.get(pop.parent, 0)
        blank = bool(resting_on(strategy, undetermined, pop.name))
        row = {
            "population": pop.name,
            "parent": pop.parent,
            "count": pd.NA if blank else count,
            "pct_of_parent": 100.0 * count / parent_count if parent_count and not blank else float("nan"),
            "pct_of_live_lymph": (100.0 * count / lymph_count if lymph_count and _descends_from(strategy, pop.name, lymph)
                                  and not (blank or lymph_blank) else float("nan")),
        }
        # the population's event indices once; per marker the median from the value buckets, or
        # (a column with a non-finite value) by selection in a fresh gathered array
        index = np.flatnonzero(mask) if count and mask is not None else np.empty(0, dtype=np.intp)
        for m in markers:
            column = columns.get(m)
            medians[m].append(float("nan") if not count or blank else column.median(index) if column is not None
                              else _median_selecting(state.tube.data[m].take(index)))
        rows.append(row)
    # back to linear units, one inverse per marker over every population's median (elementwise:
    # the same values as one inverse per median; an empty population's NaN stays NaN)
    for m in markers:
        linear = state.tube.transforms[m].inverse(np.array(medians[m], dtype=np.float64))
        for row, value in zip(rows, linear.tolist()):
            row[f"median_{m}"] = value
    table = pd.DataFrame(rows)
    return table.astype({"count": "Int64"}) if any(r["count"] is pd.NA for r in rows) else table


_THRESHOLD_COLUMNS = ["population", "marker", "parent", "percentile", "value_transformed", "value_raw", "method", "source_file",
                      *checks.RECORD_COLUMNS]


def _plot_index(n_events: int, plot_events: int | None) -> np.ndarray | None:
    """The events a result keeps for plots: every k-th from the first, at most ``plot_events``
    (k the smallest that leaves so many; deterministic); None: all of them."""
    if plot_events is None or n_events <= plot_events:
        return None
    return np.arange(0, n_events, -(-n_events // max(1, int(plot_events))))


def _plot_data(tube: TubeData, plot_events: int | None) -> dict[str, np.ndarray]:
    """The result's ``data``: every dimension at :func:`_plot_index`'s events (all: ``tube.data``)."""
    index = _plot_index(tube.n_events, plot_events)
    return tube.data if index is None else {d: v[index] for d, v in tube.data.items()}


def _tube_result(strategy: Strategy, state: _Gated, plot_events: int | None = None) -> TubeResult:
    """The file's TubeResult. ``plot_events``: keep in ``data``/``masks`` only an evenly spaced,
    deterministic subsample of at most that many events (:func:`_plot_index`); the tables are
    computed on all events before. ``data`` is ``state.plot_data`` when set (taken before the
    file's columns that no gate still read were dropped, see ``_TubeKindRun``)."""
    t = state.tube
    n = t.n_events
    result = TubeResult(
        file=t.file, sha256=t.sha256, tube=t.tube, role=t.role, fmo_marker=t.fmo_marker,
        populations=population_table(strategy, state, undetermined_gates(state.diagnostics)),
        thresholds=pd.DataFrame(state.thresholds, columns=_THRESHOLD_COLUMNS),
        gates=list(state.gates), data=state.plot_data if state.plot_data is not None else _plot_data(t, plot_events),
        masks=dict(state.masks), detectors=dict(t.detectors),
        n_events=n, diagnostics={p: dict(d) for p, d in state.diagnostics.items()},
    )
    index = _plot_index(n, plot_events)
    if index is not None:
        if t.role == "stain":
            result.quadrants = _quadrants(state)
        result.masks = {p: m[index] for p, m in state.masks.items()}
        result.subsample = index
    return result


def _quadrants(state: _Gated) -> dict:
    """% of parent per quadrant for the report's quadrant plots, on all events (see TubeResult)."""
    out = {}
    for (xpop, parent, xgate, _), (ypop, _, ygate, _) in sibling_range_pairs(state.gates):
        parent_mask = state.masks.get(parent, np.ones(state.tube.n_events, dtype=bool))
        xdim, ydim = xgate.dims[0], ygate.dims[0]
        x, y = state.tube.data[xdim][parent_mask], state.tube.data[ydim][parent_mask]
        out[(xpop, ypop)] = quadrant_percentages(x, y, xgate, ygate, xdim, ydim)
    return out


def tube_variables(strategy: Strategy, state: _Gated, undetermined: frozenset[str] = frozenset()) -> dict[str, float]:
    """The strategy's variables on a gated stained tube, plus event counts ``n_<population>_<tube>``.
    A variable or count resting on an ``undetermined`` gate (:func:`resting_on`) is NaN."""
    out: dict[str, float] = {}
    counts = {name: int(np.count_nonzero(m)) for name, m in state.masks.items()}
    counts[ROOT] = state.tube.n_events
    for v in strategy.variables:
        den = counts.get(v.denominator, 0)
        out[v.name] = (100.0 * counts.get(v.numerator, 0) / den if den and not resting_on(strategy, undetermined, v.numerator, v.denominator)
                       else float("nan"))
    for column, name in strategy.count_columns().items():
        out[column] = float("nan") if resting_on(strategy, undetermined, name) else counts.get(name, 0)
    return out


def doses(phenotype: Mapping[str, float], til_dose_cells: float | None, study: Study | None = None) -> dict[str, float]:
    """Absolute subset doses (cells) from the infused cell number (the study's ``doses``); NaN when unknown."""
    infused = float(til_dose_cells) if til_dose_cells is not None else float("nan")
    values: dict[str, float] = {"dose": infused if math.isfinite(infused) else float("nan")}
    for dose in (study or default_study()).doses:
        values[dose.name] = values[dose.base] * float(phenotype.get(dose.variable, float("nan"))) / 100.0
    return {k: v for k, v in values.items() if k != "dose"}


@dataclass
class _StainedSummary:
    """What the product's QC flags need from a gated stained tube (its arrays are released)."""

    file: str                  # the file as the product's flags name it (its label, TubeResult.shown_name)
    counts: dict[str, int]     # events per gated population (ROOT: the file's)


def _stained_summary(state: _Gated, name: str) -> _StainedSummary:
    counts = {population: int(np.count_nonzero(m)) for population, m in state.masks.items()}
    counts[ROOT] = state.tube.n_events
    return _StainedSummary(name, counts)


def _few_events_effect(strategy: Strategy, counts: Mapping[str, int], population: str) -> str:
    """What few events in ``population`` (ROOT: the whole file) affect: how many of the strategy's variables have
    their denominator there, and the one on the fewest events with that count, e.g. ": its 6 variables rest on
    them, the fewest cd4foxp3_pct_of_cd4 on 310 CD4+ events"; "" when none does."""
    within = [v for v in strategy.variables if population == ROOT or _descends_from(strategy, v.denominator, population)]
    if not within:
        return ""
    fewest = min(within, key=lambda v: counts.get(v.denominator, 0))
    n = counts.get(fewest.denominator, 0)
    on = "the file's" if fewest.denominator == ROOT else fewest.denominator
    rest = f"its variable {fewest.name} rests" if len(within) == 1 else f"its {len(within)} variables rest"
    tail = f" ({n} {on} events)" if len(within) == 1 else f", the fewest {fewest.name} on {n} {on} events"
    return f": {rest} on them{tail}"


def _product_flags(product_id: str, phenotype: Mapping[str, float], stained: Mapping[str, _StainedSummary],
                   strategies: Mapping[str, Strategy], study: Study) -> list[QCFlag]:
    rules = study.qc
    flags = []
    for tube, summary in stained.items():
        name = summary.file
        strategy = strategies[tube]
        n_events = summary.counts[ROOT]
        if n_events < rules.min_events:
            flags.append(QCFlag(product_id, name, "low_events", "warning",
                                f"{n_events} events in the {tube} stained tube (< {rules.min_events})"
                                f"{_few_events_effect(strategy, summary.counts, ROOT)}; the percentages are imprecise: "
                                "check the acquisition (stopped early, a clog, or events removed by acquisition QC)"))
        lymph = _lymph_population(strategy)
        lymph_count = summary.counts.get(lymph) if lymph else None   # None: no lymphocyte population gated
        if lymph and lymph_count is not None and lymph_count < rules.min_lymph_events:
            flags.append(QCFlag(product_id, name, "low_events", "warning",
                                f"{lymph_count} events in {lymph} (< {rules.min_lymph_events})"
                                f"{_few_events_effect(strategy, summary.counts, lymph)}; the percentages are "
                                f"imprecise: check the {lymph} gate on the scatter plot (does it hold the "
                                "lymphocytes?) and the tube's events"))
    for code, variable, gate, message in checks.variable_checks(
            phenotype, [v for s in strategies.values() for v in s.variables]):
        tube = next((t for t, s in strategies.items() if any(v.name == variable for v in s.variables)), "")
        file = stained[tube].file if tube in stained else ""
        flags.append(QCFlag(product_id, file, code, "warning", message, gate))
    for expected in rules.expected:
        problem = expected.check(float(phenotype.get(expected.variable, float("nan"))))
        if problem is None:
            continue
        # the flag names the stained file of the tube kind whose strategy defines the variable
        kind = next((t for t, s in strategies.items() if any(v.name == expected.variable for v in s.variables)), None)
        where = stained.get(kind) if kind is not None else None
        flags.append(QCFlag(product_id, where.file if where else "", expected.flag, "warning", problem))
    return flags


# --------------------------------------------------------------------------------------------
# the product API
# --------------------------------------------------------------------------------------------


def _as_strategy_map(strategies) -> dict[str, Strategy]:
    if isinstance(strategies, Mapping):
        return dict(strategies)
    out: dict[str, Strategy] = {}
    for s in strategies:
        if s.tube in out:
            raise GatingError(f"two strategies for tube {s.tube!r}: {out[s.tube].path} and {s.path}")
        out[s.tube] = s
    return out


def _spillover(override) -> Spillover | None:
    if override is None or isinstance(override, Spillover):
        return override
    return read_spillover_csv(override)


def _fmo_marker(value, vocabulary: Vocabulary) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return None
    return vocabulary.marker_in(str(value))


@pl.one_thread
def analyze_product(
    product_id: str,
    manifest_rows: pd.DataFrame,
    strategies: Mapping[str, Strategy] | Sequence[Strategy],
    *,
    fmo_percentile: float = 99.5,
    til_dose_cells: float | None = None,
    spillover_override: Spillover | str | Path | None = None,
    panel_override=None,
    plot_events: int | None = None,
    study: Study | None = None,
    labels: Mapping[str, str] | None = None,
    checked: Mapping[str, Any] | None = None,
    blocks: BlockPool | None = None,
) -> ProductResult:
    """Gate every file of one product and compute its phenotype (module docstring).

    ``manifest_rows``: this product's rows with columns ``file, tube, role, fmo_marker``.
    ``strategies``: tube kind -> Strategy (or a list of strategies, keyed by their ``tube``);
    files of a tube kind without a strategy (the unstained tube) are not gated.
    ``spillover_override``: a Spillover or a CSV path used instead of every file's $SPILLOVER.
    ``panel_override``: passed to ``tilpheno.panel.panel_from_fcs``.
    ``study``: the variables every phenotype carries, the doses, QC rules and marker vocabulary
    (default: the bundled TIL study).
    ``labels``: file -> how its flags, tables and report name it (default
    :func:`tilpheno.io.files.file_labels` of ``manifest_rows``; the pipeline gives those of every
    file of the product, also the unreadable ones it dropped, so that all its flags agree).
    ``checked``: file -> its FCSFile as ``read_fcs_metadata(data_check=True)`` already read it (the
    pipeline's TEXT read): a stained file found there is not read again for the readability check
    every stained file gets before its tube kind is gated.
    ``plot_events``: None keeps every file's arrays and each TubeResult's ``data``/``masks`` over
    all events. A number bounds memory (the pipeline): files are gated one at a time (a file's
    arrays are released before the next is read, see ``_TubeKindRun``) and each TubeResult keeps a
    deterministic subsample of at most that many events for plots; tables, variables, thresholds
    and QC are computed on all events and are identical either way.
    ``blocks``: where the files' events and compensated arrays are written (``compensation.BlockPool``;
    default: a pool of this product's own): a pool the caller keeps serves its next products too.
    Never raises on a bad file: the file is dropped with a QC flag and variables become NaN.
    Runs on one BLAS/OpenMP thread (``placement.one_thread``).
    """
    from tilpheno.io.fcs import read_fcs, read_fcs_metadata
    from tilpheno.io.files import file_labels
    from tilpheno.panel import panel_error_headline, panel_from_fcs, require

    study = study or default_study()
    strategy_map = _as_strategy_map(strategies)
    spill = _spillover(spillover_override)
    blocks = blocks if blocks is not None else BlockPool()
    qc: list[QCFlag] = []
    tubes_out: list[TubeResult] = []
    phenotype: dict[str, float] = {v: float("nan") for v in study.variables}
    stained_summaries: dict[str, _StainedSummary] = {}

    rows = manifest_rows.sort_values(["tube", "role", "file"], kind="stable")
    labels = dict(labels) if labels is not None else file_labels(rows["file"])
    # the product's unstained control (not a compensation set's, which may be beads)
    unstained_rows = rows[(rows["role"] == "unstained") & (rows["tube"] != "compensation")]
    unstained_flags: list[QCFlag] = []
    # the unstained control's acquisition QC, by file and settings: its raw events are the same
    # whichever stained tube it is loaded for
    unstained_acquisition: dict[tuple[str, Any], Any] = {}
    # (control, stained file) as flags name them -> their FCSFiles, the detectors the gates read, the
    # tube kind: each control's acquisition settings are compared with its stained tube's (TEXT only)
    compared: dict[tuple[str, str], tuple[Any, Any, set[str], str]] = {}
    controls_read: list[tuple[str, Any]] = []   # ProductResult.controls
    for tube_kind, group in rows.groupby("tube", sort=True):
        strategy = strategy_map.get(str(tube_kind))
        if strategy is None:
            continue
        sources = []
        for i, row in enumerate(group.itertuples(index=False)):
            marker = _fmo_marker(getattr(row, "fmo_marker", None), study.vocabulary) if row.role == "fmo" else None
            sources.append(_row_source(i, str(row.role), marker, row, labels))
        if gated_on_unstained(strategy):
            # the unstained control is a control of this tube kind's gates: gated with its files (its
            # own per-file gates, then the thresholds), reported like an FMO file; once (a manifest, or
            # the review app's re-run, may already list it under this tube kind)
            listed = {str(s.handle["row"].file) for s in sources if s.role == "unstained"}
            for row in unstained_rows.itertuples(index=False):
                if str(row.file) not in listed:
                    sources.append(_row_source(len(sources), "unstained", None, row, labels))
        # The stained files are checked first: the first readable one resolves the FMO files' panels
        # (its TEXT is what they need); unreadable files are flagged once, whenever they are met. The
        # check reads HEADER and TEXT and places DATA in the file (read_fcs_metadata's data_check:
        # a cut, header-only or malformed file is refused as read_fcs refuses it) without decoding
        # the events, which are read when the file is gated (a DATA read that fails then is flagged
        # by load).
        reference, reference_src, stained_read = None, None, []
        stained_meta: list[tuple[str, Any]] = []   # (name, FCSFile) of each readable stained file
        for src in sources:
            if src.role != "stain":
                continue
            try:
                file = src.handle["row"].file
                fcs = (checked or {}).get(str(file)) or read_fcs_metadata(file, checksum=False, data_check=True)
            except FCSReadError as exc:
                src.failed = True
                src.handle["read_flag"] = QCFlag(product_id, src.handle["name"], "unreadable_file", "error", exc.problem)
                continue
            stained_read.append(src)
            stained_meta.append((src.handle["name"], fcs))
            if reference is None:
                reference, reference_src = fcs, src
        if reference is None:
            # no stained file to read the controls' panels against (an FMO lacks its own marker): the
            # tube kind's variables are NaN (missing_stain), and its controls are not read, each said
            # once, instead of one panel error per control that hides the cause
            for src in sources:
                if src.role != "stain":
                    src.failed = True
                    src.handle["load_flag"] = [QCFlag(
                        product_id, src.handle["name"], "not_gated", "info",
                        f"not gated: no readable {tube_kind} stained file to resolve its panel against")]

        def load(src: _Source, strategy=strategy, tube_kind=str(tube_kind),
                 check: bool = False) -> TubeData | None:
            """``src`` compensated and transformed, or None (its flag kept in its handle). ``check``: an
            unstained control read for the stained files' gates (self-check, one-population cuts) keeps
            the markers it has a detector for (:func:`_on_control` says what the others hold); gated as
            a source of the tube kind's populations it needs them all."""
            h = src.handle
            try:
                fcs = read_fcs(h["row"].file, empty=blocks.take)
            except FCSReadError as exc:
                h["read_flag"] = QCFlag(product_id, h["name"], "unreadable_file", "error", exc.problem)
                return None
            copied = stained_copy(fcs, stained_meta) if src.role == "fmo" else None
            if copied is not None:
                h["load_flag"] = [QCFlag(product_id, h["name"], "fmo_copy_of_stain", "error",
                                         f"the same bytes as the stained file {copied}: a copy, not an FMO control "
                                         "(its cut would be the stained tube's own 99.5th percentile); not used, "
                                         "its marker's gates fall back as without an FMO")]
                return None
            h["acquisition"] = acquisition_step(fcs, strategy.acquisition, h.get("acquisition"))
            try:
                if src.role == "unstained" and reference is not None:
                    # an unstained control carries no stain: its markers are the stained tube's detectors
                    panel = panel_from_fcs(reference, override=panel_override, tube=tube_kind, study=study,
                                           compensating=spill is not None)
                    detectors = unstained_detectors(require(panel, strategy.markers, study.vocabulary), fcs,
                                                    complete=not check)
                else:
                    panel = panel_from_fcs(fcs, stained=reference if src is not reference_src else None,
                                           override=panel_override, tube=tube_kind, study=study,
                                           compensating=spill is not None)
                    detectors = require(panel, strategy.markers, study.vocabulary)
                data, used, applied = _compensated_transformed(fcs, detectors, strategy, spill, blocks)
            except PanelError as exc:
                h["load_flag"] = [QCFlag(product_id, h["name"], "panel_error", "error", str(exc),
                                         headline=panel_error_headline(exc, h["name"]))]
                return None
            except CompensationError as exc:
                h["load_flag"] = [QCFlag(product_id, h["name"], "compensation_error", "error", str(exc))]
                return None
            h["compensation"] = compensation_used(applied, fcs, detectors, h["name"], own=applied is not spill)
            h["load_flag"] = uncompensated_flags(product_id, h["name"], h["compensation"], detectors, fcs)
            fcs.events = None   # compensated and transformed: release the raw event array
            h["fcs"] = fcs      # its digest is computed once, when the file's result is made
            return TubeData(file=str(fcs.path), sha256="", tube=tube_kind, role=src.role, fmo_marker=src.fmo_marker,
                            data=data, detectors=dict(detectors), transforms=used, compensated=applied is not None)

        def settle(i: int, state: _Gated, strategy=strategy) -> None:
            """What file ``i``'s result needs of all its columns: the plots' events, the compensation check."""
            state.plot_data = _plot_data(state.tube, plot_events)
            compensation = sources[i].handle.get("compensation")
            if compensation is not None:
                compensation.residual = file_residual(strategy, state, compensation.spillover, study.vocabulary)

        controls: dict[int, tuple[_Source, TubeData | None]] = {}

        def unstained(k: int, row, load=load, strategy=strategy) -> tuple[_Source, TubeData | None]:
            """The ``k``-th unstained control (manifest ``row``) read for the stained files' gates, once
            per tube kind (the one-population cuts and every stained file's self-check share it): its
            source (handle: flags, acquisition, FCS) and its data, None when unusable."""
            if k not in controls:
                src = _row_source(-1, "unstained", None, row, labels)
                checked = (str(row.file), strategy.acquisition)
                src.handle["acquisition"] = unstained_acquisition.get(checked)
                controls[k] = (src, load(src, check=True))
                if src.handle["fcs"] is not None:
                    controls_read.append((src.handle["name"], src.handle["fcs"]))
                if src.handle.get("acquisition") is not None:
                    unstained_acquisition[checked] = src.handle["acquisition"]
            return controls[k]

        def control() -> TubeData | None:
            """The product's first usable unstained control (its unusable ones are said by the
            self-check below, ``unstained_unusable``)."""
            tried = (unstained(k, row)[1] for k, row in enumerate(unstained_rows.itertuples(index=False)))
            return next((t for t in tried if t is not None), None)

        crossed: dict[tuple[str, str], CrossGated | None] = {}
        named = [str(p.params["cross_fmo"]).partition(":") for p in strategy.populations if p.params.get("cross_fmo")]

        def cross(spec: str, detector: str, transform: Any, named=named) -> CrossControl | None:
            """Another tube kind's FMO for a gate without its own (``cross_fmo``): the file read and gated once per
            tube kind and detector, down to every population this strategy's ``cross_fmo`` names in that kind
            (:func:`cross_fmo_gated`), each gate's events carved from it."""
            kind, _, population = spec.partition(":")
            if (kind, detector) not in crossed:
                crossed[(kind, detector)] = cross_fmo_gated(kind, [p for k, _, p in named if k == kind], detector,
                                                            transform, rows, strategy_map, study, spill,
                                                            panel_override, fmo_percentile)
            gated = crossed[(kind, detector)]
            return None if gated is None else gated.control(population)

        run = _TubeKindRun(strategy, sources, load, fmo_percentile, keep_loaded=plot_events is None,
                           vocabulary=study.vocabulary, qc=study.qc, settle=settle, control=control,
                           plot_events=plot_events, cross=cross)
        run.resolve()
        made: dict[int, TubeResult] = {}
        variables: dict[int, tuple[dict, _StainedSummary]] = {}
        read: dict[int, set[str]] = {}   # stained file -> the detectors its gates read

        def consume(i: int, state: _Gated, strategy=strategy) -> None:
            state.tube.sha256 = sources[i].handle["fcs"].sha256
            state.flags = []   # completed by ordered_flags once every file has been tried
            made[i] = _tube_result(strategy, state, plot_events)
            made[i].acquisition = sources[i].handle.get("acquisition")
            made[i].compensation = sources[i].handle.get("compensation")   # its check made by settle
            if sources[i].role == "stain":
                made[i].control_events = dict(run.control_events)
                variables[i] = (tube_variables(strategy, state, undetermined_gates(state.diagnostics)),
                                _stained_summary(state, sources[i].handle["name"]))
                read[i] = _read_detectors(state.tube)
                for k, row in enumerate(unstained_rows.itertuples(index=False)):   # positives in the unstained control
                    control_src, control = unstained(k, row)
                    name = control_src.handle["name"]
                    if control is not None:
                        compared[(name, sources[i].handle["name"])] = (control_src.handle["fcs"], sources[i].handle["fcs"],
                                                                       read[i], str(tube_kind))
                    if control is None:   # the self-check cannot run: said, without failing the product
                        problems = [control_src.handle["read_flag"]] if control_src.handle["read_flag"] else \
                            control_src.handle["load_flag"]
                        unstained_flags.extend(QCFlag(product_id, name, "unstained_unusable", "warning",
                                                      f"unstained control not used for the {tube_kind} gates: {f.message}")
                                               for f in problems)
                        continue
                    unstained_flags.extend(unstained_qc(product_id, strategy, state, control, made[i].diagnostics,
                                                        stained_name=sources[i].handle["name"], control_name=name,
                                                        kept=run.control_gated))

        run.finish(consume)
        for c in (i for i in sorted(made) if sources[i].role in ("fmo", "unstained")):
            for i in sorted(read):
                compared[(sources[c].handle["name"], sources[i].handle["name"])] = (
                    sources[c].handle["fcs"], sources[i].handle["fcs"], read[i], str(tube_kind))
        qc.extend(s.handle["read_flag"] for s in sources if s.handle["read_flag"] is not None)
        for s in sources:
            qc.extend(s.handle["load_flag"])
        if not any(sources[i].role == "stain" for i in made):
            qc.append(QCFlag(product_id, "", "missing_stain", "error",
                             f"no usable {tube_kind} stained file: {tube_kind} variables are NaN"))
        for i in sorted(made):
            result = made[i]
            name = result.label = sources[i].handle["name"]
            qc.extend(step_flags(product_id, name, result))
            qc.extend(QCFlag(product_id, name, f.code, f.severity, f.message, f.gate) for f in run.ordered_flags(i))
            tubes_out.append(result)
        first = min(variables) if variables else None
        if first is not None:
            values, summary = variables[first]
            stained_summaries[str(tube_kind)] = summary
            phenotype.update(values)
            qc.extend(undetermined_flags(product_id, summary.file, strategy, undetermined_gates(made[first].diagnostics)))
        if len(stained_read) > 1 and first is not None:   # none gated: no variables to come from one of them
            shown = [src.handle["name"] for src in stained_read]
            used = next(n for n, src in zip(shown, stained_read) if src is sources[first])
            qc.append(QCFlag(product_id, "", "duplicate_tube", "warning",
                             f"{len(stained_read)} {tube_kind} stained files ({', '.join(shown)}); the variables "
                             f"come from the first gated by name, {used}: check that each belongs to this product "
                             "(a re-acquired tube, or two samples under one product id)"))
        qc.extend(_duplicate_controls(product_id, str(tube_kind), [sources[i] for i in sorted(made)], study.vocabulary))

    qc.extend(dict.fromkeys(f for f in unstained_flags if f is not None))   # a control read once per tube kind: once
    against: dict[str, list[tuple[str, str, Any]]] = {}
    for (control_name, stained_name), (control, stained, detectors, kind) in compared.items():
        against.setdefault(control_name, []).append((stained_name, kind, compare_settings(control, stained, detectors)))
    for control_name, pairs in against.items():
        qc.extend(control_flags(product_id, control_name, pairs))
    phenotype.update(doses(phenotype, til_dose_cells, study))
    qc.extend(_product_flags(product_id, phenotype, stained_summaries, strategy_map, study))
    return ProductResult(
        product_id=product_id,
        phenotype={"product_id": product_id, **phenotype},
        tubes=tubes_out,
        qc=qc,
        strategy_sha256={s.name: s.sha256 for s in strategy_map.values()},
        controls=controls_read,
    )
