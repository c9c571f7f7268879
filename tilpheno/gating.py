"""The public object model: a Sample, a GatingStrategy, one engine, a GatingResult, a Product.

Gating one file without the CLI::

    import tilpheno as tp
    strategy = tp.GatingStrategy.from_yaml(tp.default_study().tubes["surface"].strategy)
    stained = tp.Sample.from_fcs("sample_fcs/TIL001_surface_stain.fcs", strategy)
    fmo = tp.Sample.from_fcs("sample_fcs/TIL001_surface_FMO_PD1.fcs", strategy, fmo="PD1", stained=stained)
    result = tp.gate_sample(strategy, stained, controls=[fmo])
    result.summary, result.populations, result.thresholds, result.flags, result.plot("CD3+")

* :class:`Sample`: one FCS file + its panel + the compensation applied + the transformed dimensions
  the strategy gates on (``data``: dimension name -> float64 array, all events).
* :class:`GatingStrategy` (``tilpheno.gates.strategy.Strategy``): built from YAML
  (``from_yaml``), a mapping written in code (``from_dict``), Gating-ML 2.0 (``from_gatingml``)
  or a FlowJo 10 workspace (``from_flowjo``).
* :func:`gate_sample`: the one engine (``tilpheno.phenotype``'s tree walk, whose population
  masks come from the tree evaluator ``tilpheno.gates.tree``): per-file gates placed on each
  file's own data, FMO thresholds from the controls, fixed and boolean gates evaluated.
* :class:`GatingResult`: masks, counts, thresholds, placement diagnostics and QC flags, with
  ``populations`` / ``summary`` DataFrames and ``plot()``.
* :class:`Product`: one infusion product = the GatingResults of its files + its phenotype and QC
  (``analyze`` wraps ``tilpheno.phenotype.analyze_product``).

Conventions are those of the pipeline (README, docs/design.md): FMO threshold = the 99.5th
percentile (numpy linear) of the FMO control's events in the same parent, positive = above it.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from tilpheno.compensation import Spillover, read_spillover_csv
from tilpheno.control_settings import compare_settings, control_flags
from tilpheno.gates.strategy import ROOT, Strategy
from tilpheno.panel import Panel, panel_from_fcs, require
from tilpheno.phenotype import (
    ProductResult,
    TubeData,
    TubeResult,
    _compensated_transformed,
    _read_detectors,
    _tube_result,
    acquisition_step,
    analyze_product,
    compensation_used,
    file_residual,
    gate_tube_kind,
    gated_on_unstained,
    resting_on,
    step_flags,
    uncompensated_flags,
    undetermined_gates,
    unstained_detectors,
    unstained_qc,
)
from tilpheno.qc import QCFlag
from tilpheno.study import Study, default_study

GatingStrategy = Strategy
"""A gating strategy: the population tree of one tube kind (see ``tilpheno.gates.strategy``)."""


@dataclass
class Sample:
    """One FCS file ready to gate (see the module docstring).

    ``fcs``: the file's metadata (``FCSFile`` with its events released), ``panel``: marker ->
    detector (None for Gating-ML/FlowJo strategies, whose dimensions name detectors),
    ``spillover``: the matrix applied (None = left uncompensated), ``transforms``: dimension ->
    transform, ``data``: dimension -> transformed values. ``role``: stain | fmo | unstained;
    ``fmo_marker``: the marker an FMO control omits. ``acquisition``: gating step 0 as the pipeline
    runs it (``tilpheno.phenotype.acquisition_step``: the strategy's ``acquisition_qc``; in
    ``remove`` mode ``data`` holds the events it kept), None when off or for a Gating-ML/FlowJo
    strategy.
    """

    path: str
    fcs: Any
    panel: Panel | None
    spillover: Spillover | None
    transforms: dict[str, Any]
    data: dict[str, np.ndarray]
    role: str = "stain"
    fmo_marker: str | None = None
    acquisition: Any = None

    @property
    def n_events(self) -> int:
        return len(next(iter(self.data.values()))) if self.data else 0

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(self.data)

    def to_dataframe(self) -> pd.DataFrame:
        """The transformed dimensions as a DataFrame (one row per event)."""
        return pd.DataFrame(self.data)

    @classmethod
    def from_fcs(
        cls,
        source: str | os.PathLike | Any,
        strategy: Strategy,
        *,
        fmo: str | None = None,
        unstained: bool = False,
        stained: "Sample | None" = None,
        study: Study | None = None,
        panel: Any = None,
        spillover: Spillover | str | os.PathLike | None = None,
    ) -> "Sample":
        """Read (``source``: a path or an ``FCSFile``), map, compensate and transform one file.

        ``fmo``: the marker this FMO control omits (its detector is resolved from ``stained``'s
        panel). ``unstained``: the file is the product's unstained control (the control of the
        strategy's ``control: unstained`` gates and of its one-population cuts); with ``stained``
        its detectors are ``stained``'s, and, as in the pipeline, it keeps those it has unless the
        strategy has ``control: unstained`` gates, which need them all
        (``tilpheno.phenotype.unstained_detectors``).
        ``panel``: an override (``tilpheno.panel.panel_from_fcs``). ``spillover``: a matrix or CSV
        used instead of the file's $SPILLOVER. ``study``: the marker vocabulary (default the bundled
        study). Raises ``FCSReadError``/``PanelError``/``CompensationError`` on bad input, and
        ``ValueError`` for both ``fmo`` and ``unstained``.
        """
        from tilpheno.io.fcs import read_fcs

        if fmo and unstained:
            raise ValueError(f"{fmo!r}: a control is an FMO (fmo=) or the unstained control (unstained=True), not both")
        study = study or default_study()
        fcs = read_fcs(source) if isinstance(source, (str, os.PathLike)) else source
        matrix = read_spillover_csv(Path(spillover)) if isinstance(spillover, (str, os.PathLike)) else spillover
        role, marker = ("fmo", study.vocabulary.marker_in(fmo)) if fmo else ("unstained" if unstained else "stain", None)
        if strategy.source is not None:   # Gating-ML document / FlowJo sample: its own dimensions
            data = _external_dimensions(strategy, fcs, matrix)
            sample = cls(str(fcs.path), fcs, None, matrix or getattr(fcs, "spillover", None),
                         {d: strategy.transform_for(d) for d in data}, data, role, marker)
        else:
            reference = stained.panel if stained is not None else None
            mapped = panel_from_fcs(fcs, reference=reference, override=panel, tube=strategy.tube or None, study=study,
                                    compensating=matrix is not None)
            if unstained and reference is not None:   # as the pipeline reads it: the stained tube's detectors
                detectors = unstained_detectors(require(reference, strategy.markers, study.vocabulary), fcs,
                                                complete=gated_on_unstained(strategy))
                mapped = Panel(mapped.source, detectors, mapped.channels,
                               {m: f"detector of {reference.source}" for m in detectors if m not in mapped.markers})
            else:
                detectors = require(mapped, strategy.markers, study.vocabulary)
            acquisition = acquisition_step(fcs, strategy.acquisition)
            data, used, applied = _compensated_transformed(fcs, detectors, strategy, matrix)
            sample = cls(str(fcs.path), fcs, mapped, applied, dict(used), data, role, marker, acquisition)
        fcs.events = None   # the transformed dimensions are kept; the raw array is released
        return sample

    @property
    def detectors(self) -> dict[str, str]:
        """Marker -> detector of the markers the strategy gates on (those in ``data``, in its order),
        as the pipeline reads the file; empty for Gating-ML/FlowJo strategies."""
        markers = self.panel.markers if self.panel is not None else {}
        return {m: markers[m] for m in self.data if m in markers}

    def _tube(self, tube: str) -> TubeData:
        return TubeData(file=self.path, sha256="", tube=tube, role=self.role, fmo_marker=self.fmo_marker,
                        data=self.data, detectors=self.detectors, transforms=self.transforms,
                        compensated=self.spillover is not None)


def _external_dimensions(strategy: Strategy, fcs, spillover: Spillover | None) -> dict[str, np.ndarray]:
    """Dimension values of a Gating-ML or FlowJo strategy (their own compensation and scales)."""
    from tilpheno.gates.flowjo import FlowJoSample, _dimension_data
    from tilpheno.gates.gatingml import GatingMLDocument, dimension_data

    if isinstance(strategy.source, GatingMLDocument):
        return dimension_data(strategy.source, fcs.events, fcs.channel_names, spillover or fcs.spillover, list(fcs.channels["pns"]))
    if isinstance(strategy.source, FlowJoSample):
        return _dimension_data(strategy.source, fcs.events, fcs.channel_names, list(fcs.channels["pns"]))
    raise TypeError(f"strategy source {type(strategy.source).__name__} has no dimension reader")


@dataclass
class GatingResult(TubeResult):
    """One file gated by a strategy: a ``TubeResult`` (``populations``, ``thresholds``, ``gates``,
    ``masks``, ``data``, the placement ``diagnostics``: population -> numbers behind its gate) plus
    the strategy, the QC ``flags`` and the ``variables`` the strategy defines.

    Held numbers (counted on events resting on an undetermined gate, ``tilpheno.phenotype.resting_on``): what
    a user or reviewer reads (``populations``, ``thresholds``, ``summary``, ``flags``, the files and reports
    built from them) quotes none; what the API hands over as gated keeps them by design: ``masks`` and
    :attr:`counts` the held gate's events (a reviewer's cut re-counts them), ``diagnostics`` every number
    as measured (``sensitivity_points`` of a gate below one too), its ``resting_on`` naming the gates."""

    strategy: Strategy | None = None
    flags: list[QCFlag] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Events per population (all events of the file) within its gate as placed: an undetermined
        gate's and those below it as held, by design (the class docstring; ``populations`` leaves those
        counts blank, ``tilpheno.phenotype.population_table``)."""
        return {str(p.name): int(np.count_nonzero(self.masks[p.name])) if p.name in self.masks else 0
                for p in self.strategy.populations} if self.strategy is not None else {}

    @property
    def summary(self) -> pd.DataFrame:
        """One row per strategy variable: ``variable, numerator, denominator, numerator_count,
        denominator_count, percent, undetermined`` (100 x numerator / denominator; NaN for an empty
        denominator). A count resting on an undetermined gate is blank (NA), and so is the percent of a
        variable with such a count, as in phenotypes.csv (``tilpheno.phenotype.tube_variables``);
        ``undetermined`` names those gates (``Strategy.population_gates`` order; '' when none)."""
        counts = {**self.counts, ROOT: self.n_events}
        rows = []
        if self.strategy is not None:
            undetermined = undetermined_gates(self.diagnostics)
            for v in self.strategy.variables:
                num, den = counts.get(v.numerator, 0), counts.get(v.denominator, 0)
                on = resting_on(self.strategy, undetermined, v.numerator, v.denominator)
                rows.append({"variable": v.name, "numerator": v.numerator, "denominator": v.denominator,
                             "numerator_count": pd.NA if resting_on(self.strategy, undetermined, v.numerator) else num,
                             "denominator_count": pd.NA if resting_on(self.strategy, undetermined, v.denominator) else den,
                             "percent": 100.0 * num / den if den and not on else float("nan"), "undetermined": ", ".join(on)})
        return pd.DataFrame(rows, columns=["variable", "numerator", "denominator", "numerator_count", "denominator_count",
                                           "percent", "undetermined"]).astype({"numerator_count": "Int64", "denominator_count": "Int64"})

    def plot(self, population: str) -> str:
        """``population``'s gate on its parent's events, as in the product report: inline ``<svg>`` markup."""
        from tilpheno.report.product import population_figure

        return population_figure(self, population, self.detectors, self.strategy).svg

    @classmethod
    def from_tube(cls, tube: TubeResult, strategy: Strategy | None = None, flags: Iterable[QCFlag] = ()) -> "GatingResult":
        """``tube``'s result with its ``strategy`` and QC ``flags``; its diagnostics a copy (one
        level: the dict of populations)."""
        fields = {f.name: getattr(tube, f.name) for f in dataclasses.fields(TubeResult)}
        fields["diagnostics"] = dict(tube.diagnostics)
        return cls(**fields, strategy=strategy, flags=list(flags))


def gate_sample(
    strategy: Strategy,
    sample: Sample,
    controls: Sequence[Sample] = (),
    *,
    fmo_percentile: float = 99.5,
    study: Study | None = None,
    product_id: str = "",
) -> GatingResult:
    """Apply ``strategy`` to ``sample`` and its ``controls`` (FMO files, the unstained control);
    the sample's GatingResult.

    Per-file gates are placed on each file's own data; an ``fmo`` gate's threshold is the
    ``fmo_percentile`` of the control whose ``fmo_marker`` is the gate's marker, or with
    ``control: unstained`` of the unstained control (no such control: the density valley of the
    sample, flags ``missing_fmo`` / ``missing_control`` and ``fallback_gate``).

    The result carries what the pipeline (``analyze_product``) gives the same file: step 0
    (``acquisition``, on the events the Sample kept), the compensation used and its check
    (``compensation``; flags ``no_compensation``/``precompensated``, ``compensation_residual``),
    and for a stained ``sample`` the flags raised on its controls about it: the self-check of its
    positive gates on each unstained control (``unstained_positive``, ``unstained_control``,
    ``tilpheno.phenotype.unstained_qc``; ``diagnostics[population]["unstained_cut"]``) and each
    control's acquisition settings against the sample's (``control_settings_differ``, ...). The
    product-level flags of its phenotype (``low_events``, expected ranges) are ``analyze``'s.
    """
    study = study or default_study()
    tube = strategy.tube or "tube"
    tubes = [sample._tube(tube), *(c._tube(tube) for c in controls)]
    control = next((t for t in tubes if t.role == "unstained"), None)
    # as in the pipeline, the unstained control is gated as a file only as a source of control: unstained gates
    walked = [t for t in tubes if t.role != "unstained" or gated_on_unstained(strategy)]
    states = gate_tube_kind(strategy, walked, fmo_percentile, study, control=control)
    state = states[0]
    name = Path(sample.path).name
    result = GatingResult.from_tube(_tube_result(strategy, state), strategy)
    result.acquisition = sample.acquisition
    flags = []
    if sample.panel is not None:   # compensated here, as the pipeline compensates and checks it
        detectors = sample.detectors
        result.compensation = compensation_used(sample.spillover, sample.fcs, detectors, name,
                                                own=sample.spillover is getattr(sample.fcs, "spillover", None))
        result.compensation.residual = file_residual(strategy, state, sample.spillover, study.vocabulary)
        flags += uncompensated_flags(product_id, name, result.compensation, detectors, sample.fcs)
    flags += step_flags(product_id, name, result)   # as the pipeline orders a file's flags: step 0 first
    flags += [QCFlag(product_id, name, f.code, f.severity, f.message, f.gate) for f in state.flags]
    result.flags = flags
    if sample.role == "stain":   # positives in each unstained control, as the pipeline checks them
        checked = [f for c in tubes if c.role == "unstained"
                   for f in unstained_qc(product_id, strategy, state, c, result.diagnostics, stained_name=name,
                                         control_name=Path(c.file).name)]
        result.flags += dict.fromkeys(checked)   # a control given twice: its flags once
        # each control's acquisition settings against the sample's, on the detectors its gates read
        read = _read_detectors(state.tube)
        for c in controls:
            result.flags += control_flags(product_id, Path(c.path).name,
                                          [(name, tube, compare_settings(c.fcs, sample.fcs, read))])
    return result


@dataclass
class Product:
    """One infusion product: the GatingResult of each gated file, its phenotype row and QC flags."""

    product_id: str
    results: list[GatingResult]
    phenotype: dict[str, float]
    qc: list[QCFlag]

    def result(self, tube: str, role: str = "stain", fmo_marker: str | None = None) -> GatingResult:
        """The result of one file (the first matching tube kind, role and FMO marker)."""
        for r in self.results:
            if r.tube == tube and r.role == role and (fmo_marker is None or r.fmo_marker == fmo_marker):
                return r
        raise KeyError(f"{self.product_id}: no {tube} {role} file" + (f" (FMO {fmo_marker})" if fmo_marker else ""))

    @property
    def populations(self) -> pd.DataFrame:
        """Every file's population table, with ``file, tube, role, fmo_marker`` columns first."""
        frames = [r.populations.assign(file=r.shown_name, tube=r.tube, role=r.role, fmo_marker=r.fmo_marker or "")
                  for r in self.results]
        if not frames:
            return pd.DataFrame()
        frame = pd.concat(frames, ignore_index=True)
        head = ["file", "tube", "role", "fmo_marker"]
        return frame[head + [c for c in frame.columns if c not in head]]


def analyze(product_id: str, manifest_rows: pd.DataFrame, strategies, **options) -> Product:
    """Gate every file of one product (``tilpheno.phenotype.analyze_product``, same options) as a Product."""
    result: ProductResult = analyze_product(product_id, manifest_rows, strategies, **options)
    by_tube = {s.tube: s for s in (strategies.values() if isinstance(strategies, dict) else strategies)}
    results = [GatingResult.from_tube(t, by_tube.get(t.tube), flags=[f for f in result.qc if f.file == t.shown_name])
               for t in result.tubes]
    return Product(product_id, results, result.phenotype, list(result.qc))
