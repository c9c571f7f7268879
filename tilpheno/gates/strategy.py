"""Gating strategies as YAML files: load, validate, describe.

A strategy file (the bundled TIL study's ``tilpheno/studies/til/til_surface.yaml`` and
``til_treg.yaml``) lists, for one tube kind, the populations of the gating tree. ``markers`` are
free text (any marker or dye name; spellings are matched through the study's vocabulary when the
file's panel is read). Each population has a ``name``, a ``parent`` (``root`` = all events), the
``dims`` it is gated on (a marker of ``markers``, a scatter/time channel such as ``FSC-A``, or a
detector name ($PnN) listed under ``detectors``), a placement ``method`` with ``params``; boolean populations give an ``expression``
instead (openCyto style: ``"CD56+ & !CD3+"``, operands joined by all ``&`` or all ``|``, ``!``
for the complement). ``transforms`` sets the scale of each dimension; ``variables`` names the
study variables computed from the stained tube as ``100 * count(numerator) / count(denominator)``.

Methods and their parameters (see ``tilpheno.gates.placement`` for the algorithms):

=============  ====  ===============================================================
method         dims  params (defaults)
=============  ====  ===============================================================
cells          2     ceiling 262143, bandwidth 0.02 (decades), min_prominence 0.01, fallback_fraction 0.2,
                     boundary fsc|oblique (fsc): a vertical FSC-A cut, or the line in log FSC-A vs
                     log SSC-A whose normal shows the deepest debris valley (the 2-D density)
singlets       2     width 4, min_prominence 0.02, ceiling 262143
lymphocytes    2     max_components 3, coverage 0.99, max_events 10000, seed 0, ceiling 262143
cluster        2     x_side high|low|any (high), y_side (low), max_components 4, coverage 0.99,
                     max_events 10000, seed 0, min_weight 0.01: the ellipse of one mixture cluster on
                     two markers (transformed units), e.g. T cells on CD3 (high) vs CD19 (low)
valley         1     keep low|high, bandwidth 0.02, min_prominence 0.01, min_separation 0.25,
                     fallback_sd 4, rule valley|negative_sd|lower|positive_sd|higher (valley), k_sd 4,
                     sd_side lower|upper (lower), one_population auto|negative|positive (auto:
                     a lone population's side by the unstained control; without one, near
                     zero negative, above it undetermined: held as positive and flagged),
                     reference (the parent): the population whose events place the cut
fmo            1     percentile (the run's fmo_percentile, 99.5), min_events 200,
                     bandwidth / min_prominence / min_separation / fallback_sd for the
                     density fallback; rule anchored|relative|percentile (anchored),
                     max_shift 0.3, shift_tolerance 0.02, width_tolerance 1.25,
                     valley_depth 0.5, width_side lower|upper|mid|fit (placement.place_fmo_anchored);
                     self-checks dense_cut_ratio 0.45, dense_points 6, shift_warning 0.25,
                     width_warning 3, uncertain_points 3, shift_points 3 (gates.checks);
                     skew_reference (none): a marker-poor population of the same tubes on
                     which the nonspecific signal (shift, lower-side spread, right skew) is
                     measured (placement.reference_binding) and carried to this gate (with
                     width_side fit: the binding fitted there, placement.reference_fit);
                     reference_carry additive|quantile (additive): carry that model, or the
                     reference's own percentile shift, stained - FMO (placement.reference_quantile_cut);
                     control fmo|unstained (fmo): the control whose events set the cut, the
                     marker's FMO file or the product's unstained control (a control-based
                     live/dead cut: ``dead`` = the dye above the unstained control's percentile,
                     carried to the stained live peak; ``live`` = ``!dead``);
                     cross_fmo (none): ``<tube kind>:<population>``, without the gate's FMO
                     that kind's FMO omitting the stain on the gate's detector, read in
                     that population, stands in for it (phenotype.cross_fmo_control), the
                     unstained control for the skew_reference's FMO (TIL PD1: treg);
                     outside_cells any|negative (any): what the parent's cells outside
                     skew_reference are for the marker; negative (left out of the reference for
                     the spillover of other stains, e.g. CD56's CD8+ T cells): a cut anchored on
                     the unstained control for want of the FMO with most of them above it moves
                     up to the parent's first valley above their negative peak (winner
                     outside_valley, placement.outside_valley), or to the parent's
                     negatives read on their lower sides, in and outside the reference,
                     where those lie lower or the valley is shallow or missing
                     (outside_pooled, flagged but below a prominent valley; a log-normal
                     fit's cut above them moves down to them, outside_pooled too, and a
                     skew carry's cut inside the dense negative peak up or raised above
                     them down, stop 60) and is
                     flagged when most still lie
                     above it (checks.fallback_outside_check); any (they may be positives, e.g.
                     PD1's T cells): neither
fixed          any   gate: a geometry dict (``tilpheno.gates.geometry.gate_from_dict``)
boolean        -     expression
=============  ====  ===============================================================

``reference`` (``valley``): the cut is placed on the events of another population and applied to
the parent (openCyto's reference gates), for a marker that is bimodal in one subset only: the CD8
cut placed on CD4- T cells (CD8+ vs double negative, two clear peaks) and applied to all T cells,
so that CD4+ cells, one CD8-negative population with a dim tail, do not move it.

``acquisition_qc`` (optional; gating step 0, per file, before compensation) sets the time-based
acquisition QC: ``mode`` remove (default) | flag | off and the parameters of
``tilpheno.acquisition.AcquisitionSettings`` (events_per_bin, t_crit, min_shift, rate_tolerance,
consecutive_bins, margin_limit_pct, max_removed_pct, ...). Absent = the defaults, mode remove.

Validation errors raise ``StrategyError`` with ``<file>:<line>: <key>: <problem>``. A strategy
records the SHA-256 of the file's bytes; results depend on the file only through its content.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from tilpheno.acquisition import AcquisitionSettings
from tilpheno.errors import GatingError, StrategyError
from tilpheno.gates.geometry import BooleanGate, Gate, gate_from_dict
from tilpheno.io.files import path_problem
from tilpheno.io.yamlsafe import FAST_LOADER, MAX_YAML_BYTES, YAMLLimitError, load_text, read_yaml_bytes, scalar_text
from tilpheno.transforms import Transform, default_transform, transform_from_dict

ROOT = "root"
SCATTER_DIMS = ("FSC-A", "FSC-H", "FSC-W", "SSC-A", "SSC-H", "SSC-W", "Time")



@dataclass(frozen=True)
class ParamSpec:
    """One method parameter: its type, default and allowed range (inclusive bounds, None = open)."""

    kind: type | tuple
    default: Any = None
    low: float | None = None
    high: float | None = None
    choices: tuple = ()


_NUM = (int, float)
METHODS: dict[str, tuple[int | None, dict[str, ParamSpec]]] = {
    "cells": (2, {
        "ceiling": ParamSpec(_NUM, 262143.0, 1, None),
        "bandwidth": ParamSpec(_NUM, 0.02, 1e-4, 0.5),
        "min_prominence": ParamSpec(_NUM, 0.01, 0, 1),
        "fallback_fraction": ParamSpec(_NUM, 0.2, 0, 1),
        "boundary": ParamSpec(str, "fsc", choices=("fsc", "oblique")),
    }),
    "singlets": (2, {
        "width": ParamSpec(_NUM, 4.0, 0.5, 50),
        "min_prominence": ParamSpec(_NUM, 0.02, 0, 1),
        "ceiling": ParamSpec(_NUM, 262143.0, 1, None),
    }),
    "lymphocytes": (2, {
        "max_components": ParamSpec(int, 3, 1, 10),
        "coverage": ParamSpec(_NUM, 0.99, 0.5, 0.999999),
        "max_events": ParamSpec(int, 10000, 100, 10_000_000),
        "seed": ParamSpec(int, 0, 0, 2**32 - 1),
        "ceiling": ParamSpec(_NUM, 262143.0, 1, None),
    }),
    "cluster": (2, {
        "x_side": ParamSpec(str, "high", choices=("high", "low", "any")),
        "y_side": ParamSpec(str, "low", choices=("high", "low", "any")),
        "max_components": ParamSpec(int, 4, 1, 10),
        "coverage": ParamSpec(_NUM, 0.99, 0.5, 0.999999),
        "max_events": ParamSpec(int, 10000, 100, 10_000_000),
        "seed": ParamSpec(int, 0, 0, 2**32 - 1),
        "min_weight": ParamSpec(_NUM, 0.01, 0, 0.5),
    }),
    "valley": (1, {
        "keep": ParamSpec(str, "low", choices=("low", "high")),
        "bandwidth": ParamSpec(_NUM, 0.02, 1e-5, 10),
        "min_prominence": ParamSpec(_NUM, 0.01, 0, 1),
        "min_separation": ParamSpec(_NUM, 0.25, 0, 100),
        "fallback_sd": ParamSpec(_NUM, 4.0, 0, 50),
        "rule": ParamSpec(str, "valley", choices=("valley", "negative_sd", "lower", "positive_sd", "higher")),
        "k_sd": ParamSpec(_NUM, 4.0, 0.5, 50),
        "reference": ParamSpec(str, None),
        "sd_side": ParamSpec(str, "lower", choices=("lower", "upper")),
        "one_population": ParamSpec(str, "auto", choices=("auto", "negative", "positive")),
    }),
    "fmo": (1, {
        "percentile": ParamSpec(_NUM, None, 50, 99.999),
        "min_events": ParamSpec(int, 200, 1, None),
        "bandwidth": ParamSpec(_NUM, 0.02, 1e-5, 10),
        "min_prominence": ParamSpec(_NUM, 0.01, 0, 1),
        "min_separation": ParamSpec(_NUM, 0.25, 0, 100),
        "fallback_sd": ParamSpec(_NUM, 4.0, 0, 50),
        "rule": ParamSpec(str, "anchored", choices=("anchored", "relative", "percentile")),
        "max_shift": ParamSpec(_NUM, 0.3, 0, 10),   # placement.MAX_SHIFT (not imported: SciPy); tests/test_strategy.py
        "shift_tolerance": ParamSpec(_NUM, 0.02, 0, 10),
        "width_tolerance": ParamSpec(_NUM, 1.25, 1, 100),
        "valley_depth": ParamSpec(_NUM, 0.5, 0, 1),
        "width_side": ParamSpec(str, "lower", choices=("lower", "upper", "mid", "fit")),
        "dense_cut_ratio": ParamSpec(_NUM, 0.45, 0, 100),
        "dense_points": ParamSpec(_NUM, 6.0, 0, 100),
        "shift_warning": ParamSpec(_NUM, 0.25, 0, 10),
        "width_warning": ParamSpec(_NUM, 3.0, 1, 100),
        "uncertain_points": ParamSpec(_NUM, 3.0, 0, 100),
        "shift_points": ParamSpec(_NUM, 3.0, 0, 100),
        "skew_reference": ParamSpec(str, None),
        "reference_carry": ParamSpec(str, "additive", choices=("additive", "quantile")),
        "control": ParamSpec(str, "fmo", choices=("fmo", "unstained")),
        "outside_cells": ParamSpec(str, "any", choices=("any", "negative")),
        "cross_fmo": ParamSpec(str, None),
    }),
    "fixed": (None, {"gate": ParamSpec(dict)}),
}
_POPULATION_KEYS = {"name", "parent", "dims", "method", "params", "expression", "description"}
_TOP_KEYS = {"strategy", "tube", "description", "markers", "detectors", "transforms", "populations", "variables", "quadrants",
             "acquisition_qc", "checks"}
QUADRANT_SIGNS = {"++": (True, True), "+-": (True, False), "-+": (False, True), "--": (False, False)}


def population_slug(population: str, markers: Iterable[str] = ()) -> str:
    """A population's name as a column-name part (``n_<slug>_<tube>`` event counts): lower case,
    ``+`` -> ``pos``, ``-`` -> ``neg``, spaces -> ``_`` (``"CD8+PD1+"`` -> ``cd8pospd1pos``).

    A hyphen inside one of ``markers`` (the strategy's marker names) is part of the name, not a
    sign, and is dropped: with marker ``HLA-DR``, ``"CD8+HLA-DR-"`` -> ``cd8poshladrneg`` (not
    ``cd8poshlanegdrneg``)."""
    text = population
    for marker in sorted((m for m in markers if "-" in m), key=len, reverse=True):
        text = re.sub(re.escape(marker), marker.replace("-", ""), text, flags=re.IGNORECASE)
    return text.lower().replace("+", "pos").replace("-", "neg").replace(" ", "_")


@dataclass(frozen=True)
class Population:
    """One node of the gating tree as the strategy file defines it (``line`` = its line in the file)."""

    name: str
    parent: str
    method: str
    dims: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    boolean: BooleanGate | None = None
    fixed_gate: Gate | None = None
    description: str = ""
    line: int = 0
    complement: bool = False   # the parent's events outside the gate (FlowJo eventsInside="0")

    @property
    def depends_on(self) -> tuple[str, ...]:
        """Populations that must be gated first: the parent, any boolean operands and the
        ``reference`` population whose events place the gate."""
        own = (self.parent,) if self.parent != ROOT else ()
        reference = tuple(self.params[k] for k in ("reference", "skew_reference") if self.params.get(k))
        return own + reference + (self.boolean.operands if self.boolean else ())


@dataclass(frozen=True)
class Variable:
    """A study variable: ``100 * count(numerator) / count(denominator)`` in the stained tube
    (denominator ``root``: all events of the file).

    Self-checks (``tilpheno.gates.checks.variable_checks``): ``expected`` = the lab's plausible
    (low, high) percent range; ``agrees_with`` = another variable (any tube) that must agree
    within ``tolerance`` percentage points.
    """

    name: str
    numerator: str
    denominator: str
    expected: tuple[float, float] | None = None
    agrees_with: str = ""
    tolerance: float = 5.0


@dataclass(frozen=True)
class SubsetCheck:
    """A declared self-check (``checks:``, kind ``dim_subset``): the events of ``subset`` should
    carry ``marker`` like those of ``reference`` (e.g. double-negative T cells like CD4+ or CD8+
    T cells on CD3). Flag ``dim_subset_events`` (``tilpheno.gates.checks.dim_subset_flag``) when the
    subset events below the reference's ``quantile``-th percentile of ``marker``, beyond the
    ``quantile`` % a subset like the reference would have there, exceed ``limit`` points of the
    population gated on ``marker`` above them (the gate the flag names)."""

    subset: str
    reference: str
    marker: str
    quantile: float = 5.0
    limit: float = 2.0


@dataclass(frozen=True)
class CoExpressionCheck:
    """A declared plausibility check (``checks:``, kind ``co_expression``): the two ``populations``,
    gates of one parent on two markers one cell rarely carries together (CD4+ and CD8+ of CD3+), may
    share at most ``limit`` % of that parent. Convention: the double positives' share = the events in
    both populations / the parent's events x 100; above ``limit`` (default 10, a lab with many double
    positives raises it) both gates get a ``co_expression`` review warning
    (``tilpheno.gates.coexpression``): CD4+ and CD8+ each ~95 % of CD3+ cannot both be right."""

    populations: tuple[str, str]
    limit: float = 10.0


@dataclass(frozen=True)
class Strategy:
    """A validated strategy: populations in gating order (parents and operands first)."""

    name: str
    tube: str
    path: str
    sha256: str
    markers: tuple[str, ...]
    populations: tuple[Population, ...]
    transforms: Mapping[str, Transform]
    variables: tuple[Variable, ...]
    description: str = ""
    detectors: tuple[str, ...] = ()   # detector names ($PnN) used as dimensions as they are
    source: Any = None                # a Gating-ML document / FlowJo sample whose dimensions the gates use
    quadrant_names: Mapping[tuple[str, str], Mapping[tuple[bool, bool], str]] = field(default_factory=dict)
    # (x population, y population) -> {(x inside, y inside): name}: the report's quadrant labels
    acquisition: AcquisitionSettings = AcquisitionSettings()   # step 0, the ``acquisition_qc`` section
    checks: tuple[SubsetCheck, ...] = ()   # declared self-checks (the ``checks`` section)
    co_expression: tuple[CoExpressionCheck, ...] = ()   # declared co-expression checks (the ``checks`` section)

    # -- the ways to build one -------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "Strategy":
        """A strategy file (module docstring); same as :func:`load_strategy`."""
        return load_strategy(path)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], name: str = "<code>") -> "Strategy":
        """A strategy written in code: the mapping a strategy file holds (validated the same way)."""
        return parse_strategy(yaml.safe_dump(_plain(doc), sort_keys=False), name, lines=False)

    @classmethod
    def from_gatingml(cls, path: str | Path) -> "Strategy":
        """The gates of a Gating-ML 2.0 document as a strategy of fixed gates (quadrants become one
        rectangle per quadrant). Its dimensions are the document's (compensation and transform
        per dimension, ``tilpheno.gates.gatingml.dimension_data``)."""
        from tilpheno.gates.gatingml import read_gatingml, tree_nodes

        doc = read_gatingml(path)
        return _fixed_strategy(Path(path), tree_nodes(doc), doc)

    @classmethod
    def from_flowjo(cls, path: str | Path, group: str = "All Samples", sample: str | None = None) -> "Strategy":
        """The gating tree of one sample of a FlowJo 10 workspace as a strategy of fixed gates."""
        from tilpheno.gates.flowjo import read_workspace, tree_nodes

        ws = read_workspace(path, group, sample)
        return _fixed_strategy(Path(path), tree_nodes(ws), ws)

    def with_params(self, method: str, **params: Any) -> "Strategy":
        """This strategy with ``params`` set on every gate placed by ``method`` (e.g.
        ``with_params("cells", boundary="oblique")``), each value checked as in a strategy file.
        The new ``sha256`` covers the file's digest and the change, so the cache and the run's
        provenance tell the two strategies apart. StrategyError if no gate uses ``method`` or a
        parameter is unknown or out of range."""
        ctx = _Context(self.path)
        where = f"with_params({method!r})"
        if method not in METHODS or not any(p.method == method for p in self.populations):
            raise ctx.error(0, where, f"no gate placed by method {method!r} in strategy {self.name!r}")
        specs = METHODS[method][1]
        unknown = sorted(set(params) - set(specs))
        if unknown:
            raise ctx.error(0, where, f"unknown parameter(s) {unknown} for method {method!r}; allowed: {sorted(specs)}")
        checked = {k: _check_param(ctx, 0, where, k, v, specs[k]) for k, v in params.items()}
        populations = tuple(replace(p, params={**p.params, **checked}) if p.method == method else p
                            for p in self.populations)
        change = json.dumps({"base": self.sha256, "method": method, "params": checked}, sort_keys=True)
        return replace(self, populations=populations, sha256=hashlib.sha256(change.encode("utf-8")).hexdigest())

    def transform_for(self, dim: str) -> Transform:
        """The strategy's transform for ``dim``, else the default (scatter linear, fluorescence logicle)."""
        return self.transforms.get(dim) or default_transform(dim)

    def population(self, name: str) -> Population:
        for p in self.populations:
            if p.name == name:
                return p
        raise KeyError(name)

    def lineage(self, name: str) -> tuple[Population, ...]:
        """Population ``name`` and its ancestors, nearest first, up to (not including) the root
        (``()`` for the root itself)."""
        by_name = {p.name: p for p in self.populations}
        chain = []
        while name != ROOT:
            chain.append(by_name[name])
            name = by_name[name].parent
        return tuple(chain)

    def variable_gates(self, name: str) -> tuple[str, ...]:
        """The populations whose gates variable ``name`` depends on, in gating order: its numerator
        and denominator and everything they are gated from (parents, boolean operands, reference
        populations), transitively. KeyError for a variable this strategy does not define."""
        variable = next((v for v in self.variables if v.name == name), None)
        if variable is None:
            raise KeyError(name)
        return self.population_gates(variable.numerator, variable.denominator)

    def population_gates(self, *populations: str) -> tuple[str, ...]:
        """The populations whose gates the events of ``populations`` depend on, in gating order:
        themselves and everything they are gated from (parents, boolean operands, reference
        populations), transitively; ``root`` (every event of the file) depends on no gate."""
        by_name = {p.name: p for p in self.populations}
        needed: set[str] = set()
        todo = list(populations)
        while todo:
            pop = todo.pop()
            if pop != ROOT and pop not in needed:
                needed.add(pop)
                todo.extend(by_name[pop].depends_on)
        return tuple(p.name for p in self.populations if p.name in needed)

    def count_columns(self) -> dict[str, str]:
        """The event-count columns this strategy adds to a product's phenotype row, each to the
        population it counts: ``n_<population slug>_<tube>`` for every variable's numerator and
        denominator, and ``n_events_<tube>`` (``root``: every event of the stained file)."""
        pops = dict.fromkeys(x for v in self.variables for x in (v.numerator, v.denominator))
        return {**{self.count_column(p): p for p in pops}, self.count_column(ROOT): ROOT}

    def count_column(self, population: str) -> str:
        """The event-count column of ``population``: ``n_<population slug>_<tube>`` (hyphens of the
        strategy's marker names kept out of the signs, :func:`population_slug`); ``n_events_<tube>``
        for ``root`` (every event of the stained file: a variable over root adds no second column)."""
        if population == ROOT:
            return f"n_events_{self.tube}"
        return f"n_{population_slug(population, self.markers)}_{self.tube}"

    @property
    def dims(self) -> tuple[str, ...]:
        """Every dimension a gate uses, in first-use order."""
        seen: dict[str, None] = {}
        for p in self.populations:
            for d in p.dims:
                seen.setdefault(d, None)
        return tuple(seen)


# --------------------------------------------------------------------------------------------
# YAML with line numbers
# --------------------------------------------------------------------------------------------


class _LineDict(dict):
    """A mapping from the YAML file that remembers its own line and each key's line (1-based)."""

    line: int = 0
    key_lines: dict


class _Loader(yaml.SafeLoader):
    pass


class _FastLoader(FAST_LOADER or yaml.SafeLoader):  # type: ignore[misc]
    """libyaml's parser (when PyYAML has it) with :class:`_Loader`'s constructors (``yamlsafe.load_text``)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    out = _LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:   # duplicate keys: refused by load_document
        key = loader.construct_object(key_node, deep=True)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_FastLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line(mapping: Any, key: str | None = None) -> int:
    if isinstance(mapping, _LineDict):
        return mapping.key_lines.get(key, mapping.line) if key is not None else mapping.line
    return 0


class _Context:
    """Builds error messages ``<file>:<line>: <where>: <problem>``."""

    def __init__(self, path: str, lines: bool = True):
        self.path, self.lines = path, lines

    def error(self, line: int, where: str, problem: str) -> StrategyError:
        location = f"{self.path}:{line}" if line and self.lines else self.path
        return StrategyError(f"{location}: {where}: {problem}")


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------

_BOOL_TOKEN = re.compile(r"^(!?)\s*(\S(?:.*\S)?)$")


def parse_expression(expression: str) -> BooleanGate:
    """``"A & !B"`` / ``"A | B"`` / ``"!A"`` -> BooleanGate; ValueError on mixed or empty operators."""
    text = str(expression).strip()
    has_and, has_or = "&" in text, "|" in text
    if has_and and has_or:
        raise ValueError(f"mixes '&' and '|' in {text!r}; define an intermediate population instead")
    parts = [p.strip() for p in re.split(r"[&|]", text)]
    if not text or any(not p for p in parts):
        raise ValueError(f"empty operand in {text!r}")
    operands, complements = [], []
    for part in parts:
        match = _BOOL_TOKEN.match(part)
        assert match is not None   # a non-empty part always matches
        operands.append(match.group(2).strip())
        complements.append(match.group(1) == "!")
    if len(parts) == 1:
        if not complements[0]:
            raise ValueError(f"{text!r} is a single operand without '!'; use '&' or '|' with two or more")
        return BooleanGate("not", (operands[0],))
    return BooleanGate("and" if has_and else "or", tuple(operands), tuple(complements))


def _check_param(ctx: _Context, line: int, where: str, name: str, value: Any, spec: ParamSpec) -> Any:
    kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise ctx.error(line, where, f"parameter {name!r} must be {names}, got {value!r}")
    if spec.choices and value not in spec.choices:
        raise ctx.error(line, where, f"parameter {name!r} must be one of {list(spec.choices)}, got {value!r}")
    if spec.low is not None and value < spec.low or spec.high is not None and value > spec.high:
        raise ctx.error(line, where, f"parameter {name!r} = {value} outside [{spec.low}, {spec.high}]")
    return float(value) if kinds == _NUM else value


def _text(ctx: _Context, mapping, key: str, where: str) -> str:
    """A text value (description) that must be a scalar of bounded length."""
    try:
        return scalar_text(mapping.get(key), f"{where}: {key}")
    except YAMLLimitError as exc:
        raise ctx.error(_line(mapping, key), where, str(exc)) from None


def _population(ctx: _Context, index: int, item: Any, known_dims: set[str]) -> Population:
    line = _line(item)
    if not isinstance(item, dict):
        raise ctx.error(line, f"populations[{index}]", "each population must be a mapping with name, parent, ...")
    name = item.get("name")
    where = f"populations[{index}] {name!r}" if name is not None else f"populations[{index}]"
    name = str(name)   # checked to be a non-empty string below
    unknown = sorted(set(item) - _POPULATION_KEYS)
    if unknown:
        raise ctx.error(_line(item, unknown[0]), where, f"unknown key(s) {unknown}; allowed: {sorted(_POPULATION_KEYS)}")
    for key in ("name", "parent"):
        if not isinstance(item.get(key), str) or not item[key].strip():
            raise ctx.error(_line(item, key), where, f"{key!r} must be a non-empty string")
    if name == ROOT:
        raise ctx.error(_line(item, "name"), where, f"{ROOT!r} is reserved for all events")
    if "expression" in item:
        if "method" in item and item["method"] != "boolean" or "dims" in item or "params" in item:
            raise ctx.error(_line(item, "expression"), where, "a boolean population has only name, parent and expression")
        try:
            gate = parse_expression(item["expression"])
        except (ValueError, GatingError) as exc:
            raise ctx.error(_line(item, "expression"), where, f"bad expression: {exc}") from None
        return Population(name, item["parent"], "boolean", boolean=gate, description=_text(ctx, item, "description", where), line=line)
    method = item.get("method")
    if method not in METHODS:
        raise ctx.error(_line(item, "method"), where, f"unknown method {method!r}; known: {sorted([*METHODS, 'boolean'])}")
    n_dims, specs = METHODS[method]
    dims = item.get("dims")
    if not isinstance(dims, list) or not all(isinstance(d, str) for d in dims) or not dims:
        raise ctx.error(_line(item, "dims"), where, "'dims' must be a list of dimension names")
    if n_dims is not None and len(dims) != n_dims:
        raise ctx.error(_line(item, "dims"), where, f"method {method!r} takes {n_dims} dimension(s), got {dims}")
    bad = [d for d in dims if d not in known_dims]
    if bad:
        raise ctx.error(_line(item, "dims"), where, f"unknown marker/dimension {bad}; known: {sorted(known_dims)}")
    raw = item.get("params") or {}
    if not isinstance(raw, dict):
        raise ctx.error(_line(item, "params"), where, "'params' must be a mapping")
    unknown = sorted(set(raw) - set(specs))
    if unknown:
        raise ctx.error(_line(raw, unknown[0]), where, f"unknown parameter(s) {unknown} for method {method!r}; allowed: {sorted(specs)}")
    params = {k: _check_param(ctx, _line(raw, k), where, k, v, specs[k]) for k, v in raw.items()}
    fixed = None
    if method == "fixed":
        if "gate" not in params:
            raise ctx.error(_line(item, "params"), where, "method 'fixed' needs params.gate")
        try:
            fixed = gate_from_dict(params["gate"])
        except (GatingError, TypeError, ValueError) as exc:
            raise ctx.error(_line(raw, "gate"), where, f"bad fixed gate: {exc}") from None
        if tuple(fixed.dims) != tuple(dims):
            raise ctx.error(_line(raw, "gate"), where, f"fixed gate dims {list(fixed.dims)} differ from dims {dims}")
    return Population(
        name, item["parent"], method, tuple(dims), params, fixed_gate=fixed,
        description=_text(ctx, item, "description", where), line=line,
    )


def _order(ctx: _Context, populations: list[Population]) -> tuple[Population, ...]:
    """Topological order (parents and operands first, file order otherwise); errors on unknown refs and cycles."""
    by_name = {p.name: p for p in populations}
    for p in populations:
        for ref in p.depends_on:
            if ref not in by_name:
                what = ("parent" if ref == p.parent else "reference" if ref == p.params.get("reference")
                        else "skew_reference" if ref == p.params.get("skew_reference") else "operand")
                raise ctx.error(p.line, f"population {p.name!r}", f"unknown {what} {ref!r}; defined: {sorted(by_name)}")
    ordered: list[Population] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(p: Population, chain: list[str]):
        if state.get(p.name) == 2:
            return
        if state.get(p.name) == 1:
            cycle = chain[chain.index(p.name):] + [p.name]
            raise ctx.error(p.line, f"population {p.name!r}", f"cycle {' -> '.join(cycle)}")
        state[p.name] = 1
        for ref in p.depends_on:
            visit(by_name[ref], chain + [p.name])
        state[p.name] = 2
        ordered.append(p)

    for p in populations:
        visit(p, [])
    return tuple(ordered)


def parse_strategy(text: str, path: str = "<strategy>", *, lines: bool = True) -> Strategy:
    """Validate strategy YAML ``text`` (``path`` names it in errors and in the result; ``lines=False``:
    errors name no line, for a text that was not written by hand, e.g. ``from_dict``'s)."""
    ctx = _Context(path, lines)
    if len(text) > MAX_YAML_BYTES:
        raise ctx.error(0, "file", f"larger than {MAX_YAML_BYTES} bytes; a strategy is a few kB")
    try:
        doc = load_text(text, _Loader, _FastLoader, path)   # limits and duplicate keys: tilpheno.io.yamlsafe
    except YAMLLimitError as exc:
        raise ctx.error(0, "YAML", str(exc)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ctx.error(mark.line + 1 if mark else 0, "YAML", str(exc.problem or exc)) from None
    except yaml.YAMLError as exc:
        raise ctx.error(0, "YAML", str(exc)) from None
    if not isinstance(doc, dict):
        raise ctx.error(0, "top level", "the file must be a YAML mapping with strategy, tube, markers, populations")
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise ctx.error(_line(doc, unknown[0]), "top level", f"unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    for key in ("strategy", "tube"):
        if not isinstance(doc.get(key), str) or not doc[key].strip():
            raise ctx.error(_line(doc, key), key, "must be a non-empty string")
    markers = doc.get("markers")
    if not isinstance(markers, list) or not all(isinstance(m, str) and m.strip() for m in markers):
        raise ctx.error(_line(doc, "markers"), "markers", "must be a list of marker names")
    markers = [m.strip() for m in markers]
    repeated = sorted({m for m in markers if markers.count(m) > 1})
    if repeated:
        raise ctx.error(_line(doc, "markers"), "markers", f"repeated marker(s) {repeated}")
    detectors = doc.get("detectors") or []
    if not isinstance(detectors, list) or not all(isinstance(d, str) and d.strip() for d in detectors):
        raise ctx.error(_line(doc, "detectors"), "detectors", "must be a list of detector names ($PnN)")
    detectors = [d.strip() for d in detectors]
    clash = sorted(set(detectors) & set(markers))
    if clash:
        raise ctx.error(_line(doc, "detectors"), "detectors", f"{clash} also listed as markers")
    known_dims = set(markers) | set(SCATTER_DIMS) | set(detectors)

    transforms: dict[str, Transform] = {}
    raw_transforms = doc.get("transforms") or {}
    if not isinstance(raw_transforms, dict):
        raise ctx.error(_line(doc, "transforms"), "transforms", "must be a mapping dimension -> {kind: ..., ...}")
    for dim, spec in raw_transforms.items():
        line = _line(raw_transforms, dim)
        if dim not in known_dims:
            raise ctx.error(line, f"transforms.{dim}", f"unknown marker/dimension; known: {sorted(known_dims)}")
        if not isinstance(spec, dict):
            raise ctx.error(line, f"transforms.{dim}", "must be a mapping such as {kind: logicle, w: 0.5}")
        try:
            transforms[dim] = transform_from_dict(spec)
        except (ValueError, TypeError) as exc:
            raise ctx.error(line, f"transforms.{dim}", str(exc)) from None

    items = doc.get("populations")
    if not isinstance(items, list) or not items:
        raise ctx.error(_line(doc, "populations"), "populations", "must be a non-empty list")
    populations = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        pop = _population(ctx, i, item, known_dims)
        if pop.name in seen:
            raise ctx.error(pop.line, f"populations[{i}]", f"duplicate population name {pop.name!r} (first at line {seen[pop.name]})")
        seen[pop.name] = pop.line
        populations.append(pop)
    ordered = _order(ctx, populations)

    variables = []
    raw_vars = doc.get("variables") or {}
    if not isinstance(raw_vars, dict):
        raise ctx.error(_line(doc, "variables"), "variables", "must be a mapping name -> {numerator, denominator}")
    for name, spec in raw_vars.items():
        line = _line(raw_vars, name)
        if (not isinstance(spec, dict) or not {"numerator", "denominator"} <= set(spec)
                or not set(spec) <= {"numerator", "denominator", "expected", "agrees_with", "tolerance"}):
            raise ctx.error(line, f"variables.{name}", "must be {numerator: <population>, denominator: <population>"
                            "[, expected: [low, high], agrees_with: <variable>, tolerance: <points>]}")
        for role in ("numerator", "denominator"):
            if spec[role] not in seen and not (role == "denominator" and spec[role] == ROOT):
                raise _unknown_population(ctx, spec, role, f"variables.{name}", spec[role], "variable")
        expected = spec.get("expected")
        if expected is not None:
            if (not isinstance(expected, list) or len(expected) != 2
                    or not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in expected)
                    or expected[0] > expected[1]):
                raise ctx.error(_line(spec, "expected"), f"variables.{name}.expected", "must be [low, high] in percent")
            expected = (float(expected[0]), float(expected[1]))
        tolerance = spec.get("tolerance", 5.0)
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
            raise ctx.error(_line(spec, "tolerance"), f"variables.{name}.tolerance", "must be a number >= 0 (points)")
        variables.append(Variable(str(name), spec["numerator"], spec["denominator"], expected,
                                  str(spec.get("agrees_with", "") or ""), float(tolerance)))

    raw_acquisition = doc.get("acquisition_qc")
    if raw_acquisition is not None and not isinstance(raw_acquisition, dict):
        raise ctx.error(_line(doc, "acquisition_qc"), "acquisition_qc", "must be a mapping such as {mode: remove}")
    try:
        acquisition = AcquisitionSettings.from_mapping(raw_acquisition)
    except ValueError as exc:
        key = str(exc).split(":", 1)[0]
        raise ctx.error(_line(raw_acquisition, key) if key in (raw_acquisition or {}) else _line(doc, "acquisition_qc"),
                        "acquisition_qc", str(exc)) from None

    return Strategy(
        name=doc["strategy"].strip(),
        tube=doc["tube"].strip(),
        path=path,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        markers=tuple(markers),
        populations=ordered,
        transforms=transforms,
        variables=tuple(variables),
        description=_text(ctx, doc, "description", "top level"),
        detectors=tuple(detectors),
        quadrant_names=_quadrant_names(ctx, doc, seen),
        acquisition=acquisition,
        checks=_checks(ctx, doc, seen, set(markers)),
        co_expression=_co_expression(ctx, doc, {p.name: p for p in ordered}),
    )


def _plain(value: Any) -> Any:
    """Tuples to lists (and mappings to dicts), so code-built strategies dump as plain YAML."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _fixed_strategy(path: Path, nodes, source: Any) -> Strategy:
    """A strategy of fixed and boolean gates from tree nodes (Gating-ML, FlowJo): no markers, the
    gates' dimension names used as they are (already on their display scale: linear transforms)."""
    from tilpheno.gates.tree import dependency_order
    from tilpheno.transforms import Linear

    try:
        ordered = dependency_order(nodes, str(path))
    except GatingError as exc:
        raise StrategyError(str(exc)) from None
    populations = []
    for node in ordered:
        gate = node.gate
        boolean = gate if isinstance(gate, BooleanGate) else None
        populations.append(Population(
            node.name, node.parent if node.parent is not None else ROOT, "fixed" if boolean is None else "boolean",
            dims=tuple(gate.dims), boolean=boolean, fixed_gate=gate if boolean is None else None,
            complement=node.complement,
        ))
    dims = tuple(dict.fromkeys(d for p in populations for d in p.dims))
    return Strategy(
        name=path.stem, tube="", path=str(path), sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        markers=(), populations=tuple(populations), transforms={d: Linear() for d in dims}, variables=(),
        detectors=dims, source=source,
    )


def _quadrant_names(ctx: _Context, doc: Mapping, populations: Mapping[str, int]) -> dict:
    """``quadrants: [{x: CD3+, y: CD56+, names: {"+-": T, "-+": NK, ...}}]``: names of the report's
    quadrant plots; the first sign is the x population's, the second the y population's."""
    raw = doc.get("quadrants") or []
    if not isinstance(raw, list):
        raise ctx.error(_line(doc, "quadrants"), "quadrants", "must be a list of {x, y, names}")
    out = {}
    for i, item in enumerate(raw):
        where = f"quadrants[{i}]"
        if not isinstance(item, dict) or set(item) != {"x", "y", "names"}:
            raise ctx.error(_line(item) or _line(doc, "quadrants"), where, "must be {x: <population>, y: <population>, names: {...}}")
        for axis in ("x", "y"):
            if item[axis] not in populations:
                raise _unknown_population(ctx, item, axis, where, item[axis], "quadrant plot")
        names = item["names"]
        if not isinstance(names, dict) or not names or set(names) - set(QUADRANT_SIGNS) \
                or not all(isinstance(v, str) and v.strip() for v in names.values()):
            raise ctx.error(_line(item, "names"), f"{where}.names",
                            f"must map {sorted(QUADRANT_SIGNS)} (x sign, y sign) to non-empty names")
        out[(item["x"], item["y"])] = {QUADRANT_SIGNS[k]: v.strip() for k, v in names.items()}
    return out


def _checks(ctx: _Context, doc: Mapping, populations: Mapping[str, int], markers: set[str]) -> tuple[SubsetCheck, ...]:
    """``checks: [{kind: dim_subset, subset: <population>, reference: <population>, marker: <marker>
    [, quantile: 5, limit: 2]}]`` (see :class:`SubsetCheck`)."""
    raw = doc.get("checks") or []
    if not isinstance(raw, list):
        raise ctx.error(_line(doc, "checks"), "checks", "must be a list of {kind: dim_subset, ...} or {kind: co_expression, ...}")
    out = []
    for i, item in enumerate(raw):
        where = f"checks[{i}]"
        if isinstance(item, dict) and item.get("kind") == "co_expression":
            continue   # _co_expression
        line = _line(item) or _line(doc, "checks")
        keys = {"kind", "subset", "reference", "marker", "quantile", "limit"}
        if not isinstance(item, dict) or item.get("kind") != "dim_subset" or not {"subset", "reference", "marker"} <= set(item) \
                or set(item) - keys:
            raise ctx.error(line, where, "must be {kind: dim_subset, subset: <population>, reference: <population>, "
                                         "marker: <marker>[, quantile: <percent>, limit: <points>]}")
        for key in ("subset", "reference"):
            if item[key] not in populations:
                raise _unknown_population(ctx, item, key, where, item[key], "check")
        if item["marker"] not in markers:
            raise ctx.error(_line(item, "marker"), f"{where}.marker", f"unknown marker {item['marker']!r}")
        quantile = _check_param(ctx, _line(item, "quantile"), where, "quantile", item.get("quantile", 5.0),
                                ParamSpec(_NUM, 5.0, 0.1, 50))
        limit = _check_param(ctx, _line(item, "limit"), where, "limit", item.get("limit", 2.0), ParamSpec(_NUM, 2.0, 0, 100))
        out.append(SubsetCheck(item["subset"], item["reference"], item["marker"], quantile, limit))
    return tuple(out)


def _unknown_population(ctx: _Context, item: Mapping, key: str, where: str, name: Any, entry: str) -> StrategyError:
    """A check, variable or quadrant plot (``entry``) naming a population the strategy has not (its gate deleted,
    e.g. from a new-study draft): which entry to delete with it, by its line."""
    line = _line(item, key)
    return ctx.error(line, f"{where}.{key}", f"unknown population {name!r}; if its gate was deleted, delete this "
                                             f"{entry} too{f' (line {line})' if line else ''}, or name another population")


def _co_expression(ctx: _Context, doc: Mapping, populations: Mapping[str, Population]) -> tuple[CoExpressionCheck, ...]:
    """``checks: [{kind: co_expression, populations: [<population>, <population>][, limit: 10]}]``: two
    gates of one parent on two different markers (see :class:`CoExpressionCheck`)."""
    out = []
    for i, item in enumerate(doc.get("checks") or []):
        if not isinstance(item, dict) or item.get("kind") != "co_expression":
            continue
        where, line = f"checks[{i}]", _line(item) or _line(doc, "checks")
        pair = item.get("populations")
        if set(item) - {"kind", "populations", "limit"} or not isinstance(pair, list) or len(pair) != 2:
            raise ctx.error(line, where, "must be {kind: co_expression, populations: [<population>, <population>]"
                                         "[, limit: <percent of their parent>]}")
        for name in pair:
            if name not in populations:
                raise _unknown_population(ctx, item, "populations", where, name, "check")
        first, second = (populations[n] for n in pair)
        if first.parent != second.parent or first.boolean is not None or second.boolean is not None \
                or len(first.dims) != 1 or len(second.dims) != 1 or first.dims == second.dims:
            raise ctx.error(_line(item, "populations"), f"{where}.populations",
                            f"{pair[0]!r} and {pair[1]!r} must be gates of one parent on two different markers")
        limit = _check_param(ctx, _line(item, "limit"), where, "limit", item.get("limit", 10.0), ParamSpec(_NUM, 10.0, 0, 100))
        out.append(CoExpressionCheck((str(pair[0]), str(pair[1])), limit))
    return tuple(out)


def load_strategy(path: str | Path) -> Strategy:
    """Read and validate a strategy file; ``sha256`` is the digest of the file's bytes."""
    path = Path(path)
    try:
        data = read_yaml_bytes(path)   # a regular file of at most 1 MiB
    except YAMLLimitError as exc:
        raise StrategyError(f"{path}: {exc}") from None
    except FileNotFoundError:
        raise StrategyError(path_problem(path)) from None
    except OSError as exc:
        raise StrategyError(f"{path}: cannot read strategy file ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StrategyError(f"{path}: not UTF-8 text ({exc})") from None
    strategy = parse_strategy(text, str(path))
    return strategy


def default_strategy_paths() -> list[Path]:
    """The bundled default study's strategies (``tilpheno/studies/til/til_surface.yaml``, ``til_treg.yaml``)."""
    from tilpheno.study import default_study

    return default_study().strategy_paths
