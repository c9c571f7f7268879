"""Product phenotype: gate every tube of one infusion product and compute the study variables.

Entry point: :func:`analyze_product` (called by the pipeline, one product at a time).

Steps per file (:func:`load_tube`): read the FCS file, map detectors to markers (panel),
compensate (the file's ``$SPILLOVER``, or an override matrix; neither -> QC flag
``no_compensation`` and uncompensated data), transform each dimension with the strategy's
transform -> ``TubeData.data``: ``dimension name -> float64 array`` (``CD3``, ..., ``FSC-A``).

Gating (:func:`gate_tube_kind`): all files of one tube kind (the stained tube and its FMO
controls) go down the strategy's population tree together, population by population:

* scatter, live/dead and ``valley`` gates are placed on each file's own data (its own parent
  events), so every FMO control is gated through the same upstream gates as the stained tube;
* an ``fmo`` gate's threshold is the percentile (default 99.5) of the marker's FMO file's
  events in the same parent population; that one threshold is then applied to every file of the
  tube kind (the stained tube and the other FMO controls). Without the FMO file (or with an
  empty parent in it) the threshold falls back to the density valley on the stained tube's
  parent events, with QC flags ``missing_fmo`` and ``fallback_gate``;
* boolean populations combine other populations' masks.

A population's mask covers all events of the file and is already ANDed with its parent.
Percentages: ``pct_of_parent = 100 * count / parent count``; ``pct_of_live_lymph`` relative to
the first population placed with method ``lymphocytes`` (NaN for populations outside it).
Medians (``median_<marker>``) are in compensated linear units: the inverse transform of the
median of the transformed values.

Study variables come from each strategy's ``variables`` section, computed on its stained tube.
Absolute doses (when ``til_dose_cells``, the number of infused TILs, is known), with TILs taken
as live lymphocytes::

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

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from tilpheno.compensation import Spillover, compensate, read_spillover_csv
from tilpheno.errors import CompensationError, FCSReadError, GatingError, PanelError
from tilpheno.gates import placement as pl
from tilpheno.gates.geometry import Gate
from tilpheno.gates.strategy import ROOT, Population, Strategy

STUDY_VARIABLES = (
    "viability_pct", "cd3_pct_of_live_lymph", "cd4_pct_of_cd3", "cd8_pct_of_cd3",
    "nk_pct_of_live_lymph", "nkt_pct_of_live_lymph", "pd1_pct_of_live_lymph",
    "cd8pd1_pct_of_cd8", "cd8pd1_pct_of_cd3", "cd4foxp3_pct_of_cd4",
)
"""The study's per-product variables (percent, 0-100); always present in ``phenotype`` (NaN if unknown)."""

DOSES = {
    # name: (base, variable): base is "dose" or another dose name, multiplied by variable / 100
    "cd3_dose_cells": ("dose", "cd3_pct_of_live_lymph"),
    "cd4_dose_cells": ("cd3_dose_cells", "cd4_pct_of_cd3"),
    "cd8_dose_cells": ("cd3_dose_cells", "cd8_pct_of_cd3"),
    "nk_dose_cells": ("dose", "nk_pct_of_live_lymph"),
    "nkt_dose_cells": ("dose", "nkt_pct_of_live_lymph"),
    "pd1_dose_cells": ("dose", "pd1_pct_of_live_lymph"),
    "cd8pd1_dose_cells": ("cd3_dose_cells", "cd8pd1_pct_of_cd3"),
    "treg_dose_cells": ("cd4_dose_cells", "cd4foxp3_pct_of_cd4"),
}

MIN_EVENTS = 5000          # fewer events in a stained tube -> low_events
MIN_LYMPH_EVENTS = 1000    # fewer (live) lymphocytes in a stained tube -> low_events
LOW_VIABILITY_PCT = 70.0   # below -> low_viability (TIL lot release practice)
THRESHOLD_RANGE_RAW = (0.0, 5000.0)  # an FMO threshold outside (linear units) -> threshold_out_of_range

_PLACED_PER_FILE = ("cells", "singlets", "lymphocytes", "valley")


@dataclass(frozen=True)
class QCFlag:
    """A QC finding: ``severity`` info | warning | error; ``file`` is the file name ('' = product)."""

    product_id: str
    file: str
    code: str
    severity: str
    message: str


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
    data: dict[str, np.ndarray]               # transformed dimensions (all events)
    masks: dict[str, np.ndarray] = field(default_factory=dict)   # population -> mask over all events
    detectors: dict[str, str] = field(default_factory=dict)
    n_events: int = 0


@dataclass
class ProductResult:
    """All tubes of one product, its study variables and QC flags."""

    product_id: str
    phenotype: dict[str, float]
    tubes: list[TubeResult]
    qc: list[QCFlag]
    strategy_sha256: dict[str, str]   # strategy name -> SHA-256 of its file


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
    (``TubeData.compensated`` False). Transformed dimensions: the strategy's scatter dimensions
    and every marker of ``detectors`` (which must include the strategy's markers).
    """
    names = list(fcs.channel_names)
    matrix = spillover if spillover is not None else fcs.spillover
    events = compensate(fcs.events, names, matrix) if matrix is not None else np.asarray(fcs.events, dtype=np.float64)
    index = {n: i for i, n in enumerate(names)}
    wanted = {d: d for d in strategy.dims if d not in strategy.markers}
    wanted.update({m: det for m, det in detectors.items()})
    missing_scatter = [d for d, det in wanted.items() if det not in index]
    if missing_scatter:
        raise PanelError(f"{fcs.path}: dimension(s) {missing_scatter} not found; channels are {names}")
    data, used = {}, {}
    for dim, det in wanted.items():
        transform = strategy.transform_for(dim)
        data[dim] = transform.apply(events[:, index[det]])
        used[dim] = transform
    return TubeData(
        file=str(fcs.path), sha256=fcs.sha256, tube=tube, role=role, fmo_marker=fmo_marker,
        data=data, detectors=dict(detectors), transforms=used, compensated=matrix is not None,
    )


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

    def parent_mask(self, pop: Population) -> np.ndarray:
        if pop.parent == ROOT:
            return np.ones(self.tube.n_events, dtype=bool)
        return self.masks[pop.parent]


def _place_on(pop: Population, tube: TubeData, parent: np.ndarray) -> pl.Placement:
    """Place a per-file gate (cells, singlets, lymphocytes, valley) on the parent's events."""
    cols = [tube.data[d][parent] for d in pop.dims]
    params = dict(pop.params)
    if pop.method == "cells":
        return pl.place_cells(cols[0], cols[1], pop.dims, **params)
    if pop.method == "singlets":
        return pl.place_singlets(cols[0], cols[1], pop.dims, **params)
    if pop.method == "lymphocytes":
        return pl.place_lymphocytes(cols[0], cols[1], pop.dims, **params)
    return pl.place_valley(cols[0], pop.dims[0], zero=_zero(tube, pop.dims[0]), **params)


def _zero(tube: TubeData, dim: str) -> float:
    """Where 0 (no stain, no autofluorescence) lies on the dimension's transformed scale."""
    return float(tube.transforms[dim].apply(np.zeros(1))[0])


def _fmo_placement(
    pop: Population, stained: _Gated | None, fmos: Mapping[str, _Gated], percentile: float
) -> tuple[pl.Placement, str]:
    """The threshold gate of an ``fmo`` population and the file that set it ('' = fallback)."""
    marker = pop.dims[0]
    params = dict(pop.params)
    pct = float(params.pop("percentile", percentile))
    min_events = int(params.pop("min_events", 200))
    fmo = fmos.get(marker)
    if fmo is not None and (pop.parent == ROOT or pop.parent in fmo.masks) and marker in fmo.tube.data:
        values = fmo.tube.data[marker][fmo.parent_mask(pop)]
        if values.size:
            placement = pl.place_fmo_threshold(values, marker, percentile=pct, source_file=fmo.tube.file, min_events=min_events)
            return placement, fmo.tube.file
        reason = f"FMO {Path(fmo.tube.file).name} has no events in {pop.parent}"
    else:
        reason = "no FMO file for this marker"
    if stained is None:
        raise GatingError(f"{pop.name}: {reason} and no stained tube to fall back on")
    placement = pl.place_valley(stained.tube.data[marker][stained.parent_mask(pop)], marker, keep="high",
                                zero=_zero(stained.tube, marker), **params)
    flags = placement.flags + (
        pl.Flag("missing_fmo", "warning", f"{pop.name} ({marker}): {reason}"),
        pl.Flag(
            "fallback_gate", "warning",
            f"{pop.name} ({marker}): threshold {placement.diagnostics['threshold']:.4g} from the density of the "
            f"stained tube ({placement.method}) instead of the FMO {pct}th percentile",
        ),
    )
    return pl.Placement(placement.gate, f"fallback_{placement.method}", placement.diagnostics, flags), ""


def gate_tube_kind(strategy: Strategy, tubes: Sequence[TubeData], fmo_percentile: float = 99.5) -> list[_Gated]:
    """Walk ``strategy`` over the stained tube and FMO files of one tube kind (module docstring).

    Returns one ``_Gated`` per input tube, in input order.
    """
    states = [_Gated(t) for t in tubes]
    stained = next((s for s in states if s.tube.role == "stain"), None)
    fmos = {s.tube.fmo_marker: s for s in states if s.tube.role == "fmo" and s.tube.fmo_marker}
    for pop in strategy.populations:
        if pop.method == "boolean":
            for s in states:
                s.masks[pop.name] = pop.boolean.evaluate(s.masks) & s.parent_mask(pop)
                s.gates.append((pop.name, pop.parent, pop.boolean, "boolean"))
            continue
        if pop.method == "fmo":
            try:
                placement, source = _fmo_placement(pop, stained, fmos, fmo_percentile)
            except GatingError as exc:
                for s in states:
                    s.masks[pop.name] = np.zeros(s.tube.n_events, dtype=bool)
                    s.flags.append(pl.Flag("gate_failed", "error", str(exc)))
                continue
            row = _threshold_row(pop, placement, source, strategy, fmo_percentile)
            for s in states:
                s.masks[pop.name] = placement.gate.contains(s.tube.data) & s.parent_mask(pop)
                s.gates.append((pop.name, pop.parent, placement.gate, placement.method))
                s.thresholds.append(row)
            target = stained if stained is not None else states[0]
            target.flags.extend(placement.flags)
            if not THRESHOLD_RANGE_RAW[0] <= row["value_raw"] <= THRESHOLD_RANGE_RAW[1]:
                target.flags.append(pl.Flag(
                    "threshold_out_of_range", "warning",
                    f"{pop.name} ({pop.dims[0]}): threshold {row['value_raw']:.4g} outside the expected "
                    f"{THRESHOLD_RANGE_RAW[0]:g}-{THRESHOLD_RANGE_RAW[1]:g} (compensated linear units)",
                ))
            continue
        for s in states:
            parent = s.parent_mask(pop)
            try:
                placement = pl.Placement(pop.fixed_gate, "fixed") if pop.method == "fixed" else _place_on(pop, s.tube, parent)
            except GatingError as exc:
                s.masks[pop.name] = np.zeros(s.tube.n_events, dtype=bool)
                s.flags.append(pl.Flag("gate_failed", "error", f"{pop.name}: {exc}"))
                continue
            s.masks[pop.name] = placement.gate.contains(s.tube.data) & parent
            s.gates.append((pop.name, pop.parent, placement.gate, placement.method))
            s.flags.extend(placement.flags)
    return states


def _threshold_row(pop: Population, placement: pl.Placement, source: str, strategy: Strategy, percentile: float) -> dict:
    marker = pop.dims[0]
    value = float(placement.diagnostics["threshold"])
    return {
        "population": pop.name,
        "marker": marker,
        "parent": pop.parent,
        "percentile": float(pop.params.get("percentile", percentile)) if source else float("nan"),
        "value_transformed": value,
        "value_raw": float(strategy.transform_for(marker).inverse(np.array([value]))[0]),
        "method": placement.method,
        "source_file": source,
    }


# --------------------------------------------------------------------------------------------
# tables and variables
# --------------------------------------------------------------------------------------------


def _lymph_population(strategy: Strategy) -> str | None:
    return next((p.name for p in strategy.populations if p.method == "lymphocytes"), None)


def _descends_from(strategy: Strategy, name: str, ancestor: str | None) -> bool:
    by_name = {p.name: p for p in strategy.populations}
    while ancestor is not None and name != ROOT:
        if name == ancestor:
            return True
        name = by_name[name].parent
    return False


def population_table(strategy: Strategy, state: _Gated) -> pd.DataFrame:
    """Per population: count, % of parent, % of live lymphocytes, median of each marker (linear units)."""
    n = state.tube.n_events
    lymph = _lymph_population(strategy)
    lymph_count = int(state.masks[lymph].sum()) if lymph in state.masks else 0
    markers = [m for m in strategy.markers if m in state.tube.data]
    rows = []
    for pop in strategy.populations:
        mask = state.masks.get(pop.name)
        count = int(mask.sum()) if mask is not None else 0
        parent_count = n if pop.parent == ROOT else int(state.masks[pop.parent].sum()) if pop.parent in state.masks else 0
        row = {
            "population": pop.name,
            "parent": pop.parent,
            "count": count,
            "pct_of_parent": 100.0 * count / parent_count if parent_count else float("nan"),
            "pct_of_live_lymph": (100.0 * count / lymph_count if lymph_count and _descends_from(strategy, pop.name, lymph)
                                  else float("nan")),
        }
        for m in markers:
            if count:
                med = float(np.median(state.tube.data[m][mask]))
                row[f"median_{m}"] = float(state.tube.transforms[m].inverse(np.array([med]))[0])
            else:
                row[f"median_{m}"] = float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


_THRESHOLD_COLUMNS = ["population", "marker", "parent", "percentile", "value_transformed", "value_raw", "method", "source_file"]


def _tube_result(strategy: Strategy, state: _Gated) -> TubeResult:
    t = state.tube
    return TubeResult(
        file=t.file, sha256=t.sha256, tube=t.tube, role=t.role, fmo_marker=t.fmo_marker,
        populations=population_table(strategy, state),
        thresholds=pd.DataFrame(state.thresholds, columns=_THRESHOLD_COLUMNS),
        gates=list(state.gates), data=t.data, masks=dict(state.masks), detectors=dict(t.detectors),
        n_events=t.n_events,
    )


def _slug(population: str) -> str:
    return population.lower().replace("+", "pos").replace("-", "neg").replace(" ", "_")


def tube_variables(strategy: Strategy, state: _Gated) -> dict[str, float]:
    """The strategy's variables on a gated stained tube, plus event counts ``n_<population>_<tube>``."""
    out: dict[str, float] = {}
    counts = {name: int(m.sum()) for name, m in state.masks.items()}
    for v in strategy.variables:
        den = counts.get(v.denominator, 0)
        out[v.name] = 100.0 * counts.get(v.numerator, 0) / den if den else float("nan")
    for name in dict.fromkeys(x for v in strategy.variables for x in (v.numerator, v.denominator)):
        out[f"n_{_slug(name)}_{strategy.tube}"] = counts.get(name, 0)
    out[f"n_events_{strategy.tube}"] = state.tube.n_events
    return out


def doses(phenotype: Mapping[str, float], til_dose_cells: float | None) -> dict[str, float]:
    """Absolute subset doses (cells) from the infused TIL number (``DOSES``); NaN when unknown."""
    known = til_dose_cells is not None and math.isfinite(float(til_dose_cells))
    values: dict[str, float] = {"dose": float(til_dose_cells) if known else float("nan")}
    for name, (base, variable) in DOSES.items():
        values[name] = values[base] * float(phenotype.get(variable, float("nan"))) / 100.0
    return {k: v for k, v in values.items() if k != "dose"}


def _product_flags(product_id: str, phenotype: Mapping[str, float], stained: Mapping[str, _Gated], strategies: Mapping[str, Strategy]) -> list[QCFlag]:
    flags = []
    for tube, state in stained.items():
        name = Path(state.tube.file).name
        if state.tube.n_events < MIN_EVENTS:
            flags.append(QCFlag(product_id, name, "low_events", "warning",
                                f"{state.tube.n_events} events in the {tube} stained tube (< {MIN_EVENTS})"))
        lymph = _lymph_population(strategies[tube])
        if lymph and lymph in state.masks and int(state.masks[lymph].sum()) < MIN_LYMPH_EVENTS:
            flags.append(QCFlag(product_id, name, "low_events", "warning",
                                f"{int(state.masks[lymph].sum())} events in {lymph} (< {MIN_LYMPH_EVENTS})"))
    viability = phenotype.get("viability_pct", float("nan"))
    if math.isfinite(viability) and viability < LOW_VIABILITY_PCT:
        surface = stained.get("surface")
        flags.append(QCFlag(product_id, Path(surface.tube.file).name if surface else "", "low_viability", "warning",
                            f"viability {viability:.1f}% < {LOW_VIABILITY_PCT:g}%"))
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


def _fmo_marker(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return None
    from tilpheno.panel import normalize_marker

    return normalize_marker(str(value))


def analyze_product(
    product_id: str,
    manifest_rows: pd.DataFrame,
    strategies: Mapping[str, Strategy] | Sequence[Strategy],
    *,
    fmo_percentile: float = 99.5,
    til_dose_cells: float | None = None,
    spillover_override: Spillover | str | Path | None = None,
    panel_override=None,
) -> ProductResult:
    """Gate every file of one product and compute its phenotype (module docstring).

    ``manifest_rows``: this product's rows with columns ``file, tube, role, fmo_marker``.
    ``strategies``: tube kind -> Strategy (or a list of strategies, keyed by their ``tube``);
    files of a tube kind without a strategy (the unstained tube) are not gated.
    ``spillover_override``: a Spillover or a CSV path used instead of every file's $SPILLOVER.
    ``panel_override``: passed to ``tilpheno.panel.panel_from_fcs``.
    Never raises on a bad file: the file is dropped with a QC flag and variables become NaN.
    """
    from tilpheno.io.fcs import read_fcs
    from tilpheno.panel import panel_from_fcs, require

    strategy_map = _as_strategy_map(strategies)
    spill = _spillover(spillover_override)
    qc: list[QCFlag] = []
    tubes_out: list[TubeResult] = []
    phenotype: dict[str, float] = {v: float("nan") for v in STUDY_VARIABLES}
    stained_states: dict[str, _Gated] = {}

    rows = manifest_rows.sort_values(["tube", "role", "file"], kind="stable")
    for tube_kind, group in rows.groupby("tube", sort=True):
        strategy = strategy_map.get(str(tube_kind))
        if strategy is None:
            continue
        read = []
        for row in group.itertuples(index=False):
            name = Path(str(row.file)).name
            try:
                read.append((row, read_fcs(row.file)))
            except FCSReadError as exc:
                qc.append(QCFlag(product_id, name, "unreadable_file", "error", exc.problem))
        stained_fcs = next((f for r, f in read if r.role == "stain"), None)
        if sum(r.role == "stain" for r, _ in read) > 1:
            qc.append(QCFlag(product_id, "", "duplicate_tube", "warning",
                             f"more than one {tube_kind} stained file; the first by name is used for the variables"))
        loaded: list[TubeData] = []
        for row, fcs in read:
            name = Path(str(row.file)).name
            try:
                marker = _fmo_marker(getattr(row, "fmo_marker", None)) if row.role == "fmo" else None
                panel = panel_from_fcs(fcs, stained=stained_fcs if fcs is not stained_fcs else None, override=panel_override)
                detectors = require(panel, strategy.markers)
                tube = load_tube(fcs, detectors, strategy, tube=str(tube_kind), role=str(row.role), fmo_marker=marker,
                                 spillover=spill)
            except PanelError as exc:
                qc.append(QCFlag(product_id, name, "panel_error", "error", str(exc)))
                continue
            except CompensationError as exc:
                qc.append(QCFlag(product_id, name, "compensation_error", "error", str(exc)))
                continue
            if not tube.compensated:
                qc.append(QCFlag(product_id, name, "no_compensation", "warning",
                                 "no $SPILLOVER in the file and no override matrix: data left uncompensated"))
            loaded.append(tube)
        if not any(t.role == "stain" for t in loaded):
            qc.append(QCFlag(product_id, "", "missing_stain", "error",
                             f"no usable {tube_kind} stained file: {tube_kind} variables are NaN"))
        if not loaded:
            continue
        states = gate_tube_kind(strategy, loaded, fmo_percentile)
        for state in states:
            name = Path(state.tube.file).name
            qc.extend(QCFlag(product_id, name, f.code, f.severity, f.message) for f in state.flags)
            tubes_out.append(_tube_result(strategy, state))
        stained = next((s for s in states if s.tube.role == "stain"), None)
        if stained is not None:
            stained_states[str(tube_kind)] = stained
            phenotype.update(tube_variables(strategy, stained))

    phenotype.update(doses(phenotype, til_dose_cells))
    qc.extend(_product_flags(product_id, phenotype, stained_states, strategy_map))
    return ProductResult(
        product_id=product_id,
        phenotype={"product_id": product_id, **phenotype},
        tubes=tubes_out,
        qc=qc,
        strategy_sha256={s.name: s.sha256 for s in strategy_map.values()},
    )
