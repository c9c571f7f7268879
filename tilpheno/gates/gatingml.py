"""Gating-ML 2.0: read a document into tilpheno gates and compute every event's membership.

The XML is parsed here (standard library ElementTree); membership is computed by
``tilpheno.gates.geometry`` on dimension arrays computed here from the FCS events.

Conventions (Gating-ML 2.0 specification, ISAC 2013):

- Event values are on the FCS *scale* (``$PnG`` gain and ``$PnE`` log amplification undone,
  time multiplied by ``$TIMESTEP``), i.e. ``FCSFile.events`` (FlowKit's "raw" events).
- A dimension names a channel by its ``$PnN``; as FlowKit, a name that is no ``$PnN`` is accepted
  when exactly one channel has it as its ``$PnS`` or as FlowJo's name (``channel_for``).
- ``compensation-ref``: ``uncompensated``; ``FCS`` = the file's own ``$SPILLOVER`` (a file without
  one is used uncompensated, as the Gating-ML compliance tests expect); or the id of a
  ``spectrumMatrix`` (rows = fluorochromes, columns = detectors, ``raw = true @ S``, so
  ``true = raw @ pinv(S)``; a dimension then names a fluorochrome, a detector of a square matrix
  (its compensated value, i.e. its fluorochrome's, as FlowKit reads it), or a channel the matrix
  leaves alone). ``matrix-inverted-already="true"`` means the coefficients are already ``pinv(S)``.
- Scale transformations, applied after compensation:
  ``flin = (x + A) / (T + A)``; ``flog = log10(x / T) / M + 1`` (NaN / -inf for x <= 0, so
  outside every gate); ``fasinh``, ``logicle``, ``hyperlog`` by flowutils, whose implementations
  follow the Gating-ML 2.0 definitions. ``fratio = A (x - B) / (y - C)`` defines a new dimension
  from two channels, both compensated as the dimension's ``compensation-ref`` says (compensation
  comes before transformation; so does R flowUtils, the spec author's reference implementation); a scale
  transformation may then apply to the ratio (log-ratio). FlowKit 1.3 differs: it computes every
  fratio from uncompensated values, whatever the compensation-ref (equal for "uncompensated").
- A transformation's optional ``boundMin`` / ``boundMax`` bound its result:
  ``max(min(f, boundMax), boundMin)`` (as R flowCore; FlowKit 1.3 ignores them).
- A gate with ``parent_id`` contains the events of its parent that its geometry contains. Boolean
  gates combine the full populations (parents included) of the gates they reference. A quadrant
  gate yields one population per quadrant id; its own id is not a population.

Export (``export_gatingml``, ``export_tube_gatingml``) writes the same model back: XSD-valid
Gating-ML 2.0 whose numbers read back to the identical float64, so tilpheno and FlowKit
re-importing it give the memberships the gates had.
"""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Mapping, Sequence, TypeVar, overload

import numpy as np

from tilpheno.compensation import SINGULAR_CONDITION, Spillover, compensate
from tilpheno.errors import CompensationError, GatingError, StrategyError
from tilpheno.gates.geometry import (
    BooleanGate,
    Divider,
    EllipsoidGate,
    Gate,
    PolygonGate,
    QuadrantGate,
    RangeGate,
    RectangleGate,
)
from tilpheno.gates.tree import Node, dependency_order, evaluate_tree

GATING_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/gating"
TRANSFORMS_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/transformations"
DATATYPE_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"

UNCOMPENSATED = "uncompensated"
FCS_COMPENSATION = "FCS"
_Model = TypeVar("_Model")

_SCALE_PARAMS = {
    "flin": ("T", "A"),
    "flog": ("T", "M"),
    "fasinh": ("T", "M", "A"),
    "logicle": ("T", "W", "M", "A"),
    "hyperlog": ("T", "W", "M", "A"),
}


def _g(tag: str) -> str:
    return f"{{{GATING_NS}}}{tag}"


def _t(tag: str) -> str:
    return f"{{{TRANSFORMS_NS}}}{tag}"


def _d(tag: str) -> str:
    return f"{{{DATATYPE_NS}}}{tag}"


@dataclass(frozen=True)
class ScaleTransform:
    """A Gating-ML scale transformation (``kind`` in flin, flog, fasinh, logicle, hyperlog).

    ``params`` maps the Gating-ML parameter letters (T, W, M, A) to values; see module docstring.
    """

    id: str
    kind: str
    params: Mapping[str, float]
    bound_min: float = -math.inf
    bound_max: float = math.inf

    def __post_init__(self):
        _check_bounds(self.id, self.bound_min, self.bound_max)
        if self.kind not in _SCALE_PARAMS:
            raise StrategyError(f"transformation {self.id!r}: unknown kind {self.kind!r}")
        missing = [p for p in _SCALE_PARAMS[self.kind] if p not in self.params]
        if missing:
            raise StrategyError(f"transformation {self.id!r} ({self.kind}) lacks parameter(s) {missing}")
        p = {k: float(self.params[k]) for k in _SCALE_PARAMS[self.kind]}
        problem = scale_param_problem(self.kind, p)
        if problem:
            raise StrategyError(f"transformation {self.id!r} ({self.kind} {', '.join(f'{k}={v:g}' for k, v in p.items())}): {problem}")
        object.__setattr__(self, "params", p)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Transform scale values ``x`` (float64 array) to the Gating-ML transformed scale, bounded."""
        return _bounded(self._unbounded(np.asarray(x, dtype=np.float64)), self.bound_min, self.bound_max)

    def _unbounded(self, x: np.ndarray) -> np.ndarray:
        from flowutils import transforms as fu

        p = self.params
        if self.kind == "flin":
            return (x + p["A"]) / (p["T"] + p["A"])
        if self.kind == "flog":
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.log10(x / p["T"]) / p["M"] + 1.0
        if self.kind == "fasinh":
            return fu.asinh(x, None, t=p["T"], m=p["M"], a=p["A"])
        if self.kind == "logicle":
            return fu.logicle(x, None, t=p["T"], m=p["M"], w=p["W"], a=p["A"])
        return fu.hyperlog(x, None, t=p["T"], m=p["M"], w=p["W"], a=p["A"])


def _check_bounds(tid: str, low: float, high: float) -> None:
    """Gating-ML 2.0: boundMin shall not be greater than boundMax (StrategyError naming the transformation)."""
    if math.isnan(low) or math.isnan(high) or low > high:
        raise StrategyError(f"transformation {tid!r}: boundMin {low} is greater than boundMax {high}")


def _bounded(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Gating-ML 2.0 ``boundMin``/``boundMax``: ``max(min(f, boundMax), boundMin)``; NaN stays NaN."""
    if low == -math.inf and high == math.inf:
        return values
    return np.clip(values, low, high)


def scale_param_problem(kind: str, p: Mapping[str, float]) -> str:
    """The Gating-ML 2.0 parameter constraints of a ``kind`` transformation (FlowJo's logicle and
    fasinh are these) on its parameters ``p`` (T, W, M, A as it has them); '' when satisfied."""
    if not all(math.isfinite(v) for v in p.values()):
        return "parameters must be finite"
    if p["T"] <= 0:
        return "T must be > 0"
    if kind == "flin":
        return "" if -p["T"] < p["A"] <= p["T"] else "A must satisfy -T < A <= T"
    if p["M"] <= 0:
        return "M must be > 0"
    if kind == "fasinh":
        return "" if 0 <= p["A"] <= p["M"] else "A must satisfy 0 <= A <= M"
    if kind in ("logicle", "hyperlog"):
        # the XSD types logicle's W as non-negative (W = 0 is the arcsinh scale), hyperlog's as positive
        if kind == "logicle" and not 0 <= p["W"] <= p["M"] / 2:
            return "W must satisfy 0 <= W <= M/2"
        if kind == "hyperlog" and not 0 < p["W"] <= p["M"] / 2:
            return "W must satisfy 0 < W <= M/2"
        if not -p["W"] <= p["A"] <= p["M"] - 2 * p["W"]:
            return "A must satisfy -W <= A <= M - 2W"
    return ""


@dataclass(frozen=True)
class RatioTransform:
    """Gating-ML ``fratio``: ``A * (numerator - B) / (denominator - C)`` over two FCS dimensions."""

    id: str
    numerator: str
    denominator: str
    A: float
    B: float
    C: float
    bound_min: float = -math.inf
    bound_max: float = math.inf

    def __post_init__(self):
        _check_bounds(self.id, self.bound_min, self.bound_max)

    def apply(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = self.A * (np.asarray(x, dtype=np.float64) - self.B) / (np.asarray(y, dtype=np.float64) - self.C)
        return _bounded(ratio, self.bound_min, self.bound_max)


@dataclass(frozen=True)
class SpectrumMatrix:
    """Gating-ML ``spectrumMatrix``: rows are fluorochromes, columns detectors, ``raw = true @ S``."""

    id: str
    fluorochromes: tuple[str, ...]
    detectors: tuple[str, ...]
    coefficients: tuple[tuple[float, ...], ...]
    inverted_already: bool = False

    def __post_init__(self):
        lengths = sorted({len(row) for row in self.coefficients})
        if len(lengths) > 1:
            raise StrategyError(f"spectrumMatrix {self.id!r}: its spectra have unequal numbers of coefficients {lengths}")
        m = np.asarray(self.coefficients, dtype=np.float64)
        expected = (len(self.detectors), len(self.fluorochromes)) if self.inverted_already else (
            len(self.fluorochromes), len(self.detectors))
        if m.shape != expected or not np.all(np.isfinite(m)):
            raise StrategyError(
                f"spectrumMatrix {self.id!r}: expected a finite {expected[0]}x{expected[1]} matrix "
                f"for {len(self.fluorochromes)} fluorochromes and {len(self.detectors)} detectors, got {m.shape}"
            )

    def unmix(self, detector_values: np.ndarray) -> np.ndarray:
        """Fluorochrome values (n_events x n_fluorochromes) from detector values (n_events x n_detectors)."""
        m = np.asarray(self.coefficients, dtype=np.float64)
        if self.inverted_already:
            return detector_values @ m
        if m.shape[0] == m.shape[1]:
            condition = float(np.linalg.cond(m))
            if not condition <= SINGULAR_CONDITION:   # np.linalg.inv would still invert a near-singular one
                raise CompensationError(f"spectrumMatrix {self.id!r} is singular (condition number {condition:.3g} "
                                        f"> {SINGULAR_CONDITION:.0e})")
            return detector_values @ np.linalg.inv(m)
        return detector_values @ np.linalg.pinv(m)


@dataclass(frozen=True)
class Dimension:
    """One gate dimension: which values, compensated how, on which scale.

    ``name`` is a channel $PnN, a fluorochrome of a spectrum matrix, or (``ratio=True``) the id of
    a ratio transformation. ``compensation`` is ``uncompensated``, ``FCS`` or a matrix id;
    ``transform`` a scale transformation id or None.
    """

    name: str
    compensation: str = UNCOMPENSATED
    transform: str | None = None
    ratio: bool = False

    @property
    def key(self) -> str:
        """The name under which this dimension's values are passed to the geometry."""
        base = f"ratio:{self.name}" if self.ratio else self.name
        return f"{base}[{self.compensation}]" + (f"/{self.transform}" if self.transform else "")


@dataclass(frozen=True)
class GatingMLGate:
    """A gate of the document: geometry over ``Dimension.key`` names, its dimensions and parent."""

    id: str
    gate: Gate
    dimensions: tuple[Dimension, ...] = ()
    parent: str | None = None
    name: str = ""


@dataclass
class GatingMLDocument:
    """A parsed Gating-ML 2.0 document (gates in document order)."""

    source: str
    gates: dict[str, GatingMLGate] = field(default_factory=dict)
    transforms: dict[str, ScaleTransform | RatioTransform] = field(default_factory=dict)
    matrices: dict[str, SpectrumMatrix] = field(default_factory=dict)

    @property
    def population_ids(self) -> list[str]:
        """Ids of all populations: gate ids, with each quadrant gate replaced by its quadrant ids."""
        out: list[str] = []
        for gid, g in self.gates.items():
            out.extend(g.gate.quadrants if isinstance(g.gate, QuadrantGate) else [gid])
        return out


# ----------------------------------------------------------------------------- parsing


def read_gatingml(path: str | Path) -> GatingMLDocument:
    """Parse the Gating-ML 2.0 file at ``path``; StrategyError naming the file and element on failure."""
    from tilpheno.io.files import open_regular

    path = Path(path)
    try:
        with open_regular(path) as fh:   # a regular file only: a FIFO would block the read
            data = fh.read()
    except OSError as exc:
        raise StrategyError(f"{path}: cannot read Gating-ML file ({exc.strerror or exc})") from None
    return parse_gatingml(data, source=str(path))


def parse_gatingml(xml: str | bytes, source: str = "<string>") -> GatingMLDocument:
    """Parse Gating-ML 2.0 text (the content of ``custom_info`` elements is ignored).

    StrategyError naming the element when the root is not ``<gating:Gating-ML>`` of version 2.0,
    or an element is not one Gating-ML 2.0 defines (never silently skipped).
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise StrategyError(f"{source}: not well-formed XML ({exc})") from None
    elements = _gatingml_elements(root, source)
    doc = GatingMLDocument(source)
    for el in elements:
        if el.tag == _t("spectrumMatrix"):
            m = _parse_matrix(el, source)
            doc.matrices[m.id] = m
        elif el.tag == _t("transformation"):
            tr = _parse_transformation(el, source)
            doc.transforms[tr.id] = tr
    parsers = {
        _g("RectangleGate"): _parse_rectangle,
        _g("PolygonGate"): _parse_polygon,
        _g("EllipsoidGate"): _parse_ellipsoid,
        _g("QuadrantGate"): _parse_quadrant,
        _g("BooleanGate"): _parse_boolean,
    }
    for el in elements:
        if el.tag in parsers:
            gid = _attr(el, "id", source, required=True)
            if gid in doc.gates:
                raise StrategyError(f"{source}: gate id {gid!r} is defined twice")
            gate, dims = parsers[el.tag](el, gid, source)
            doc.gates[gid] = GatingMLGate(gid, gate, dims, _attr(el, "parent_id", source), _attr(el, "name", source) or "")
    _check_references(doc)
    return doc


_ELEMENTS = {   # every element the Gating-ML 2.0 schemas (gating, transformations, data-type) define
    GATING_NS: {"Gating-ML", "RectangleGate", "PolygonGate", "EllipsoidGate", "QuadrantGate", "BooleanGate", "dimension",
                "vertex", "coordinate", "mean", "covarianceMatrix", "row", "entry", "distanceSquare", "divider", "value",
                "Quadrant", "position", "and", "or", "not", "gateReference"},
    TRANSFORMS_NS: {"transformation", "flin", "flog", "fasinh", "logicle", "hyperlog", "fratio", "spectrumMatrix",
                    "fluorochromes", "detectors", "spectrum", "coefficient"},
    DATATYPE_NS: {"fcs-dimension", "new-dimension", "custom_info"},
}


def _qualified(tag: str) -> tuple[str, str]:
    """(namespace, local name) of an ElementTree tag."""
    return (tag[1:].split("}", 1)[0], _local(tag)) if tag.startswith("{") else ("", tag)


def _gatingml_elements(root: ET.Element, source: str) -> list[ET.Element]:
    """The document's Gating-ML elements below the root, in document order, without ``custom_info`` content.

    Elements of other namespaces (``<author>``, a ``<sample>`` wrapper) are searched through but
    not returned. StrategyError naming the root when it is not Gating-ML 2.0 (a 1.5 document, a
    FlowJo workspace), or the first element that is in a Gating-ML 2.0 namespace but not defined
    there (a typo, an unsupported gate type), or that has a Gating-ML element's name in another
    namespace (a Gating-ML 1.5 gate, a gate without its prefix).
    """
    ns, local = _qualified(root.tag)
    if (ns, local) != (GATING_NS, "Gating-ML"):
        raise StrategyError(f"{source}: not a Gating-ML 2.0 document: root element <{local}> in namespace "
                            f"{ns or '(none)'!r}, expected <Gating-ML> in {GATING_NS!r}")
    out: list[ET.Element] = []

    def walk(parent: ET.Element) -> None:
        for el in parent:
            ns, local = _qualified(el.tag)
            gatingml = ns in _ELEMENTS
            if (local not in _ELEMENTS[ns]) if gatingml else any(local in names for names in _ELEMENTS.values()):
                raise StrategyError(f"{source}: element <{local}> (namespace {ns or '(none)'!r}) in <{_local(parent.tag)}> "
                                    "is not a Gating-ML 2.0 element; it is not supported")
            if not gatingml:
                walk(el)
            elif el.tag != _d("custom_info"):
                out.append(el)
                walk(el)

    walk(root)
    return out


@overload
def _attr(el: ET.Element, name: str, source: str, required: Literal[True]) -> str: ...
@overload
def _attr(el: ET.Element, name: str, source: str, required: bool = False) -> str | None: ...
def _attr(el: ET.Element, name: str, source: str, required: bool = False) -> str | None:
    """An attribute in the gating, transforms or data-type namespace (or none; StrategyError when ``required``)."""
    for ns in (GATING_NS, TRANSFORMS_NS, DATATYPE_NS):
        value = el.get(f"{{{ns}}}{name}")
        if value is not None:
            return value.strip()
    value = el.get(name)
    if value is None and required:
        raise StrategyError(f"{source}: <{_local(el.tag)}> lacks the required attribute {name!r}")
    return value.strip() if value is not None else None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_number(text: str | None, what: str, source: str, *, infinite: bool = False) -> float:
    """A finite float from an XML attribute (``infinite``: also xs:double's ``INF`` / ``-INF``, as a
    rectangle's ``min`` / ``max`` beyond every value is written); ``StrategyError`` naming ``source``
    and ``what`` otherwise."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise StrategyError(f"{source}: {what}: {text!r} is not a number") from None
    if math.isnan(value):
        raise StrategyError(f"{source}: {what}: {text!r} is not a number")
    if not (infinite or math.isfinite(value)):
        raise StrategyError(f"{source}: {what}: {text!r} is not finite")
    return value


def flowjo_name(pnn: str) -> str:
    """The name FlowJo gives a channel in its workspaces: the $PnN with every ``/`` made ``_``."""
    return pnn.replace("/", "_")


def channel_for(name: str, channel_names: Sequence[str], markers: Sequence[str] = (), source: str = "") -> str | None:
    """The $PnN of the channel a gate dimension ``name`` refers to; None when no channel has it.

    Gating-ML 2.0 names a dimension by its $PnN, so a channel with that $PnN is the answer. Other
    names are accepted as FlowKit does when exactly one channel has it as its FlowJo name
    (``flowjo_name``: ``FL1-A/B`` -> ``FL1-A_B``) or as its $PnS marker label (``markers``, one per
    channel, '' for none; e.g. ``CD4 FITC``). GatingError naming the channels when several have it.
    """
    if name in channel_names:
        return name
    how = {}
    for pnn, pns in zip(channel_names, list(markers) + [""] * (len(channel_names) - len(markers))):
        if pns and pns.strip() == name:
            how[pnn] = f"the $PnS of {pnn!r}"
        elif flowjo_name(pnn) == name:
            how[pnn] = f"FlowJo's name for {pnn!r}"
    if len(how) > 1:
        raise GatingError(f"{source}: dimension {name!r} is ambiguous: it is {' and '.join(how.values())}; "
                          "name the channel by its $PnN")
    return next(iter(how), None)


def _fcs_names(el: ET.Element, source: str) -> list[str]:
    return [_attr(d, "name", source, required=True) for d in el.findall(_d("fcs-dimension"))]


def _parse_matrix(el: ET.Element, source: str) -> SpectrumMatrix:
    mid = _attr(el, "id", source, required=True)
    fluor = el.find(_t("fluorochromes"))
    det = el.find(_t("detectors"))
    if fluor is None or det is None:
        raise StrategyError(f"{source}: spectrumMatrix {mid!r} needs <fluorochromes> and <detectors>")
    rows = [
        tuple(parse_number(_attr(c, "value", source, True), f"spectrumMatrix {mid!r} coefficient", source)
              for c in spec.findall(_t("coefficient")))
        for spec in el.findall(_t("spectrum"))
    ]
    inverted = (_attr(el, "matrix-inverted-already", source) or "false").lower() == "true"
    return _with_source(source, SpectrumMatrix, mid, tuple(_fcs_names(fluor, source)), tuple(_fcs_names(det, source)),
                        tuple(rows), inverted)


def _parse_transformation(el: ET.Element, source: str) -> ScaleTransform | RatioTransform:
    tid = _attr(el, "id", source, required=True)
    children = list(el)
    if len(children) != 1:
        raise StrategyError(f"{source}: transformation {tid!r} must hold exactly one transform element")
    child = children[0]
    kind = _local(child.tag)

    def param(p: str) -> float:
        return parse_number(_attr(child, p, source, True), f"transformation {tid!r} parameter {p}", source)

    def bound(name: str, default: float) -> float:
        text = _attr(el, name, source)
        return default if text is None else parse_number(text, f"transformation {tid!r} {name}", source)

    bounds = bound("boundMin", -math.inf), bound("boundMax", math.inf)
    if kind == "fratio":
        names = _fcs_names(child, source)
        if len(names) != 2:
            raise StrategyError(f"{source}: fratio {tid!r} needs exactly two fcs-dimensions, got {names}")
        return _with_source(source, RatioTransform, tid, names[0], names[1], param("A"), param("B"), param("C"), *bounds)
    if kind not in _SCALE_PARAMS:
        raise StrategyError(f"{source}: transformation {tid!r}: unsupported transform <{kind}>")
    return _with_source(source, ScaleTransform, tid, kind, {p: param(p) for p in _SCALE_PARAMS[kind]}, *bounds)


def _with_source(source: str, model: Callable[..., _Model], *args) -> _Model:
    """``model(*args)``; the StrategyError of its checks (which names the element) also names the file."""
    try:
        return model(*args)
    except StrategyError as exc:
        raise StrategyError(f"{source}: {exc}") from None


def _parse_dimension(el: ET.Element, gid: str, source: str) -> Dimension:
    comp = _attr(el, "compensation-ref", source) or UNCOMPENSATED
    transform = _attr(el, "transformation-ref", source)
    fcs = el.find(_d("fcs-dimension"))
    if fcs is not None:
        return Dimension(_attr(fcs, "name", source, True), comp, transform)
    new = el.find(_d("new-dimension"))
    if new is not None:
        return Dimension(_attr(new, "transformation-ref", source, True), comp, transform, ratio=True)
    raise StrategyError(f"{source}: gate {gid!r}: a dimension has neither fcs-dimension nor new-dimension")


def _dimensions(el: ET.Element, gid: str, source: str) -> tuple[Dimension, ...]:
    dims = tuple(_parse_dimension(d, gid, source) for d in el.findall(_g("dimension")))
    if not dims:
        raise StrategyError(f"{source}: gate {gid!r} has no dimensions")
    if len({d.key for d in dims}) != len(dims):
        raise StrategyError(f"{source}: gate {gid!r} uses a dimension twice")
    return dims


def _parse_rectangle(el, gid, source):
    dims = _dimensions(el, gid, source)
    lows, highs = [], []
    for d_el, dim in zip(el.findall(_g("dimension")), dims):
        lo, hi = _attr(d_el, "min", source), _attr(d_el, "max", source)
        if lo is None and hi is None:
            raise StrategyError(f"{source}: gate {gid!r} dimension {dim.name!r} has neither min nor max")
        lows.append(None if lo is None else parse_number(lo, f"gate {gid!r} min", source, infinite=True))
        highs.append(None if hi is None else parse_number(hi, f"gate {gid!r} max", source, infinite=True))
    if len(dims) == 1:
        return RangeGate(dims[0].key, lows[0], highs[0]), dims
    return RectangleGate(tuple(d.key for d in dims), tuple(lows), tuple(highs)), dims


def _coordinates(el: ET.Element, what: str, source: str) -> tuple[float, ...]:
    return tuple(parse_number(_attr(c, "value", source, True), what, source) for c in el.findall(_g("coordinate")))


def _parse_polygon(el, gid, source):
    dims = _dimensions(el, gid, source)
    if len(dims) != 2:
        raise StrategyError(f"{source}: polygon gate {gid!r} needs 2 dimensions, has {len(dims)}")
    vertices = [_coordinates(v, f"gate {gid!r} vertex", source) for v in el.findall(_g("vertex"))]
    if any(len(v) != 2 for v in vertices):
        raise StrategyError(f"{source}: polygon gate {gid!r}: every vertex needs 2 coordinates")
    try:
        return PolygonGate((dims[0].key, dims[1].key), tuple(vertices)), dims
    except GatingError as exc:
        raise StrategyError(f"{source}: gate {gid!r}: {exc}") from None


def _parse_ellipsoid(el, gid, source):
    dims = _dimensions(el, gid, source)
    mean_el, cov_el, dist_el = el.find(_g("mean")), el.find(_g("covarianceMatrix")), el.find(_g("distanceSquare"))
    if mean_el is None or cov_el is None or dist_el is None:
        raise StrategyError(f"{source}: ellipsoid gate {gid!r} needs mean, covarianceMatrix and distanceSquare")
    cov = tuple(
        tuple(parse_number(_attr(e, "value", source, True), f"gate {gid!r} covariance", source) for e in row.findall(_g("entry")))
        for row in cov_el.findall(_g("row"))
    )
    dist = parse_number(_attr(dist_el, "value", source, True), f"gate {gid!r} distanceSquare", source)
    try:
        return EllipsoidGate(tuple(d.key for d in dims), _coordinates(mean_el, f"gate {gid!r} mean", source), cov, dist), dims
    except GatingError as exc:
        raise StrategyError(f"{source}: gate {gid!r}: {exc}") from None


def _parse_quadrant(el, gid, source):
    divisions, dims = [], []   # (divider id, dimension key, values)
    for div in el.findall(_g("divider")):
        did = _attr(div, "id", source, True)
        dim = _parse_dimension(div, gid, source)
        values = tuple(sorted(parse_number(v.text, f"gate {gid!r} divider {did!r} value", source) for v in div.findall(_g("value"))))
        divisions.append((did, dim.key, values))
        dims.append(dim)
    quadrants = {}
    for q in el.findall(_g("Quadrant")):
        qid = _attr(q, "id", source, True)
        quadrants[qid] = {
            _attr(p, "divider_ref", source, True): parse_number(_attr(p, "location", source, True), f"quadrant {qid!r} location", source)
            for p in q.findall(_g("position"))
        }
    try:   # a divider without values (or with one twice) is refused by Divider, the quadrants by QuadrantGate
        return QuadrantGate(tuple(Divider(*d) for d in divisions), quadrants), tuple(dims)
    except GatingError as exc:
        raise StrategyError(f"{source}: gate {gid!r}: {exc}") from None


def _parse_boolean(el, gid, source):
    ops = [c for c in el if _local(c.tag) in ("and", "or", "not") and c.tag.startswith(f"{{{GATING_NS}}}")]
    if len(ops) != 1:
        raise StrategyError(f"{source}: boolean gate {gid!r} needs exactly one of <and>, <or>, <not>")
    refs = ops[0].findall(_g("gateReference"))
    operands = tuple(_attr(r, "ref", source, True) for r in refs)
    complements = tuple((_attr(r, "use-as-complement", source) or "false").lower() == "true" for r in refs)
    try:
        return BooleanGate(_local(ops[0].tag), operands, complements), ()
    except GatingError as exc:
        raise StrategyError(f"{source}: gate {gid!r}: {exc}") from None


def _check_references(doc: GatingMLDocument) -> None:
    """Every parent, gate reference, transformation and matrix reference must exist."""
    populations = set(doc.population_ids)
    for gid, g in doc.gates.items():
        if g.parent is not None and g.parent not in populations:
            raise StrategyError(f"{doc.source}: gate {gid!r} has unknown parent_id {g.parent!r}")
        if isinstance(g.gate, BooleanGate):
            unknown = [o for o in g.gate.operands if o not in populations]
            if unknown:
                raise StrategyError(f"{doc.source}: boolean gate {gid!r} references unknown gate(s) {unknown}")
        for dim in g.dimensions:
            if dim.compensation not in (UNCOMPENSATED, FCS_COMPENSATION) and dim.compensation not in doc.matrices:
                raise StrategyError(f"{doc.source}: gate {gid!r} references unknown compensation {dim.compensation!r}")
            if dim.transform is not None and not isinstance(doc.transforms.get(dim.transform), ScaleTransform):
                raise StrategyError(f"{doc.source}: gate {gid!r} references unknown scale transformation {dim.transform!r}")
            if dim.ratio and not isinstance(doc.transforms.get(dim.name), RatioTransform):
                raise StrategyError(f"{doc.source}: gate {gid!r} references unknown ratio transformation {dim.name!r}")


# ----------------------------------------------------------------------------- evaluation


_NO_COLUMN = -1


def _matrix_columns(channels: Sequence[str], m: SpectrumMatrix) -> dict[str, int]:
    """Column of each name in ``[channels..., unmixed fluorochromes...]`` under spectrumMatrix ``m``.

    A fluorochrome names its unmixed column. A detector of a square matrix names the compensated
    value of its fluorochrome (row j's primary detector is column j, as with ``$SPILLOVER``, and as
    FlowKit reads it); a detector of a non-square (spectral) matrix has no compensated value
    (``_NO_COLUMN``). A channel the matrix leaves alone (FSC, Time) names its raw column.
    """
    names = {n: i for i, n in enumerate(channels)}
    square = len(m.fluorochromes) == len(m.detectors)
    names.update({d: len(channels) + j if square else _NO_COLUMN for j, d in enumerate(m.detectors)})
    names.update({f: len(channels) + i for i, f in enumerate(m.fluorochromes)})
    return names


class _Values:
    """Lazily compensated event values per compensation reference, looked up by name."""

    def __init__(self, doc: GatingMLDocument, events: np.ndarray, channel_names: Sequence[str], spillover: Spillover | None,
                 markers: Sequence[str] = ()):
        self.doc = doc
        self.events = np.asarray(events, dtype=np.float64)
        self.channels = list(channel_names)
        self.markers = list(markers)
        self.index = {n: i for i, n in enumerate(self.channels)}
        self.spillover = spillover
        self._comp: dict[str, tuple[np.ndarray, dict[str, int]]] = {}

    def _table(self, ref: str) -> tuple[np.ndarray, dict[str, int]]:
        if ref not in self._comp:
            if ref == FCS_COMPENSATION and self.spillover is not None:
                self._comp[ref] = (compensate(self.events, self.channels, self.spillover), self.index)
            elif ref in (UNCOMPENSATED, FCS_COMPENSATION):   # FCS without a $SPILLOVER: the raw values
                self._comp[ref] = (self.events, self.index)
            else:
                m = self.doc.matrices[ref]
                missing = [d for d in m.detectors if d not in self.index]
                if missing:
                    raise CompensationError(
                        f"{self.doc.source}: spectrumMatrix {ref!r} detector(s) {missing} are not among the file's channels {self.channels}")
                unmixed = m.unmix(self.events[:, [self.index[d] for d in m.detectors]])
                table = np.column_stack([self.events, unmixed])
                self._comp[ref] = (table, _matrix_columns(self.channels, m))
        return self._comp[ref]

    def column(self, name: str, ref: str) -> np.ndarray:
        table, names = self._table(ref)
        if name not in names:   # a $PnS marker label or FlowJo's name of a channel
            name = channel_for(name, self.channels, self.markers, self.doc.source) or name
        if names.get(name) == _NO_COLUMN:
            m = self.doc.matrices[ref]
            raise StrategyError(
                f"{self.doc.source}: dimension {name!r} is a detector of the non-square spectrumMatrix {ref!r}, which "
                f"unmixes detectors into fluorochromes {list(m.fluorochromes)}: name one of those fluorochromes")
        if name not in names:
            raise GatingError(f"{self.doc.source}: dimension {name!r} (compensation {ref!r}) is not among the file's channels {self.channels}")
        return table[:, names[name]]

    def dimension(self, dim: Dimension) -> np.ndarray:
        # the kinds were checked when the document was built (validate: ratio -> fratio, transform -> scale)
        if dim.ratio:
            ratio = self.doc.transforms[dim.name]
            if not isinstance(ratio, RatioTransform):
                raise StrategyError(f"{self.doc.source}: {dim.name!r} is not a ratio transformation")
            values = ratio.apply(self.column(ratio.numerator, dim.compensation), self.column(ratio.denominator, dim.compensation))
        else:
            values = self.column(dim.name, dim.compensation)
        if dim.transform is not None:
            scale = self.doc.transforms[dim.transform]
            if not isinstance(scale, ScaleTransform):
                raise StrategyError(f"{self.doc.source}: {dim.transform!r} is not a scale transformation")
            values = scale.apply(values)
        return values


def dimension_data(
    doc: GatingMLDocument, events: np.ndarray, channel_names: Sequence[str], spillover: Spillover | None = None,
    markers: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """Values of every dimension the document's gates use, keyed by ``Dimension.key``.

    ``events``: n_events x n_channels on the FCS scale (``FCSFile.events``), columns named by
    ``channel_names``; ``spillover``: the file's own matrix (for ``compensation-ref="FCS"``);
    ``markers``: each channel's $PnS ('' for none), so that a dimension may name one (``channel_for``).
    """
    values = _Values(doc, events, channel_names, spillover, markers)
    out: dict[str, np.ndarray] = {}
    for g in doc.gates.values():
        for dim in g.dimensions:
            if dim.key not in out:
                out[dim.key] = values.dimension(dim)
    return out


def apply_gatingml(
    doc: GatingMLDocument, events: np.ndarray, channel_names: Sequence[str], spillover: Spillover | None = None,
    markers: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """Membership of every event in every population of ``doc`` (``doc.population_ids`` order).

    Each mask is over all events and already includes the population's parents. Arguments as
    ``dimension_data``.
    """
    data = dimension_data(doc, events, channel_names, spillover, markers)
    nodes = tree_nodes(doc)
    try:
        dependency_order(nodes, doc.source)
    except GatingError as exc:
        raise StrategyError(str(exc)) from None
    masks = evaluate_tree(nodes, data, len(events), doc.source)
    return {pid: masks[pid] for pid in doc.population_ids}


def tree_nodes(doc: GatingMLDocument) -> list[Node]:
    """The document's populations as tree nodes (a quadrant gate gives one rectangle per quadrant id)."""
    nodes: list[Node] = []
    for gid, g in doc.gates.items():
        if isinstance(g.gate, QuadrantGate):
            nodes.extend(Node(qid, g.parent, g.gate.rectangle(qid)) for qid in g.gate.quadrants)
        else:
            nodes.append(Node(gid, g.parent, g.gate))
    return nodes


# ----------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportGate:
    """A gate to export: id, parent population id (or None), geometry, and what each of the
    geometry's dimension names means (``{geometry dim name: Dimension}``; empty for boolean gates).

    Gating-ML ids (gate, quadrant, divider, transformation and matrix ids) are XML ``xs:ID`` values:
    unique in the document, starting with a letter or ``_``, then letters, digits, ``_ . -`` only;
    ``gatingml_id`` makes one from a population label, and ``name`` keeps the label itself
    (written as ``gating:name``). Example, an FMO threshold on logicle, FCS-compensated PE-A::

        ExportGate(gatingml_id("PD1+"), "Lymphocytes", RangeGate("PD1", low=0.4312),
                   {"PD1": Dimension("PE-A", "FCS", "Logicle")}, name="PD1+")
    """

    id: str
    parent: str | None
    gate: Gate
    dimensions: Mapping[str, Dimension] = field(default_factory=dict)
    name: str = ""


_NCNAME = re.compile(r"^[^\W\d][\w.\-]*$")


def gatingml_id(label: str) -> str:
    """A valid Gating-ML id from a population label.

    ``+`` -> ``pos``; ``-`` -> ``neg`` at the end or before a non-word character or ``CD``
    (``CD4+CD8-`` -> ``CD4posCD8neg``, ``CD3-CD56+`` -> ``CD3negCD56pos``, ``PD-1+`` -> ``PD-1pos``);
    other invalid characters -> ``_``; a leading digit gets a ``_`` prefix (``7AAD-`` -> ``_7AADneg``).
    """
    text = label.strip().replace("+", "pos")
    text = re.sub(r"-(?=$|\W|CD)", "neg", text)
    text = re.sub(r"[^\w.\-]", "_", text)
    return text if _NCNAME.match(text) else f"_{text}"


def logicle(transform_id: str, t: float = 262144.0, w: float = 0.5, m: float = 4.5, a: float = 0.0) -> ScaleTransform:
    """A Gating-ML logicle transformation; same parameters and 0..1 scale as ``tilpheno.transforms.Logicle``."""
    return ScaleTransform(transform_id, "logicle", {"T": t, "W": w, "M": m, "A": a})


def scale_transform_for(transform, transform_id: str) -> ScaleTransform | None:
    """The Gating-ML transformation equal to a ``tilpheno.transforms`` transform.

    Each has the same output scale, so gate values carry over unchanged:
    ``Logicle(t, w, m, a)`` -> ``logicle`` with the same parameters; ``Linear()`` -> None (no
    ``transformation-ref``); ``Arcsinh(c)`` = ``asinh(x / c)`` -> ``fasinh`` with ``M = 1 / ln 10``,
    ``A = 0``, ``T = c sinh(1)``, since ``fasinh(x) = (asinh(x sinh(M ln 10) / T) + A ln 10) / ((M + A) ln 10)``
    (equal within 1e-15). Any other transform: StrategyError.
    """
    kind = getattr(transform, "kind", None)
    if kind == "logicle":
        return logicle(transform_id, transform.t, transform.w, transform.m, transform.a)
    if kind == "arcsinh":
        return ScaleTransform(transform_id, "fasinh", {"T": transform.cofactor * math.sinh(1.0), "M": 1 / math.log(10), "A": 0.0})
    if kind == "linear":
        return None
    raise StrategyError(f"transform {transform!r} has no Gating-ML equivalent on the same scale")


_SIGN = 1 << 63


def _order_key(x: float) -> int:
    """An integer that orders float64 values as their values do (-0.0 and 0.0 both 0)."""
    bits = int(np.array(x, dtype=np.float64).view(np.uint64))
    return bits if bits < _SIGN else -(bits - _SIGN)


def _from_order_key(key: int) -> float:
    bits = key if key >= 0 else -key + _SIGN
    return float(np.array(bits, dtype=np.uint64).view(np.float64))


def linear_threshold(transform, bound: float) -> float:
    """The smallest float64 ``x`` (the transform's input: compensated linear units) with
    ``transform.apply(x) >= bound``; -inf when every float64 reaches ``bound``, inf when none does.

    ``transform`` is a monotone non-decreasing ``tilpheno.transforms`` transform (its ``apply``
    as the pipeline evaluates it, e.g. the table logicle), so for every value ``v``:
    ``apply(v) >= bound`` exactly when ``v >= x`` and ``apply(v) < bound`` exactly when ``v < x``
    (NaN in neither). Bisection over the float64 values in their order (at most 64 steps).
    """
    def reaches(key: int) -> bool:
        return bool(transform.apply(np.array([_from_order_key(key)]))[0] >= bound)

    low, high = _order_key(-np.finfo(np.float64).max), _order_key(np.finfo(np.float64).max)
    if reaches(low):
        return -math.inf
    if not reaches(high):
        return math.inf
    while high - low > 1:   # invariant: low does not reach bound, high does
        mid = (low + high) // 2
        low, high = (low, mid) if reaches(mid) else (mid, high)
    return _from_order_key(high)


def _on_linear_scale(gate: Gate, transforms: Mapping[str, object]) -> Gate:
    """An axis-aligned gate (range, rectangle, quadrant; on transformed dimensions, as the
    pipeline evaluates it) with every bound on the dimensions' linear input scale
    (:func:`linear_threshold`): the same events for every value. Other gates unchanged."""
    def cut(dim: str, value: float | None) -> float | None:
        return None if value is None else linear_threshold(transforms[dim], value)

    if isinstance(gate, RangeGate):
        return RangeGate(gate.dim, cut(gate.dim, gate.low), cut(gate.dim, gate.high))
    if isinstance(gate, RectangleGate):
        return RectangleGate(gate.dims, tuple(cut(d, v) for d, v in zip(gate.dims, gate.lows)),
                             tuple(cut(d, v) for d, v in zip(gate.dims, gate.highs)))
    if isinstance(gate, QuadrantGate):
        dividers = {d.id: Divider(d.id, d.dim, tuple(linear_threshold(transforms[d.dim], v) for v in d.values))
                    for d in gate.dividers}

        def location(divider: Divider, at: float) -> float:   # a linear value inside the same interval
            low, high = divider.interval(at)
            moved = dividers[divider.id]
            return float(np.nextafter(moved.values[0], -np.inf)) if low is None else moved.values[divider.values.index(low)]

        by_id = {d.id: d for d in gate.dividers}
        return QuadrantGate(tuple(dividers.values()), {
            q: {did: location(by_id[did], at) for did, at in pos.items()} for q, pos in gate.quadrants.items()})
    return gate


def _renamed(gate: Gate, mapping: Mapping[str, str]) -> Gate:
    """``gate`` with its dimension names replaced through ``mapping``."""
    from tilpheno.gates.geometry import gate_from_dict

    d = gate.to_dict()
    if "dim" in d:
        d["dim"] = mapping[d["dim"]]
    if "dims" in d:
        d["dims"] = [mapping[x] for x in d["dims"]]
    for divider in d.get("dividers", ()):
        divider["dim"] = mapping[divider["dim"]]
    return gate_from_dict(d)


def build_document(
    gates: Sequence[ExportGate],
    transforms: Sequence[ScaleTransform | RatioTransform] = (),
    matrices: Sequence[SpectrumMatrix] = (),
    source: str = "<export>",
) -> GatingMLDocument:
    """A GatingMLDocument from tilpheno gates (validated as a parsed document would be)."""
    doc = GatingMLDocument(source, transforms={t.id: t for t in transforms}, matrices={m.id: m for m in matrices})
    for eg in gates:
        if eg.id in doc.gates:
            raise StrategyError(f"{source}: gate id {eg.id!r} is exported twice")
        missing = [d for d in eg.gate.dims if d not in eg.dimensions]
        if missing:
            raise StrategyError(f"{source}: gate {eg.id!r}: no Dimension given for geometry dimension(s) {missing}")
        dims = tuple(eg.dimensions[d] for d in eg.gate.dims)
        gate = _renamed(eg.gate, {name: eg.dimensions[name].key for name in eg.gate.dims})
        doc.gates[eg.id] = GatingMLGate(eg.id, gate, dims, eg.parent, eg.name)
    _check_references(doc)
    _check_xml_ids(doc)
    return doc


def _check_xml_ids(doc: GatingMLDocument) -> None:
    """Every Gating-ML id must be a valid xs:ID and unique across the whole document."""
    ids = [*doc.matrices, *doc.transforms]
    for gid, g in doc.gates.items():
        ids.append(gid)
        if isinstance(g.gate, QuadrantGate):
            ids.extend(d.id for d in g.gate.dividers)
            ids.extend(g.gate.quadrants)
    bad = [i for i in ids if not _NCNAME.match(i)]
    if bad:
        raise StrategyError(
            f"{doc.source}: {bad} are not valid Gating-ML ids (xs:ID: a letter or '_', then letters, digits, '_', '.', '-'); "
            f"use gatingml_id(), e.g. {gatingml_id(bad[0])!r}, and keep the label as the gate's name"
        )
    dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dupes:
        raise StrategyError(f"{doc.source}: ids {dupes} are used more than once (gate, quadrant, divider, transformation and matrix ids share one namespace)")


def _num(value: float) -> str:
    """Shortest text that parses back to exactly ``value`` (infinities as xs:double's ``INF``, ``-INF``)."""
    value = float(value)
    if math.isinf(value):
        return "INF" if value > 0 else "-INF"
    return repr(value)


def _dimension_children(parent: ET.Element, dim: Dimension) -> None:
    if dim.ratio:
        ET.SubElement(parent, _d("new-dimension"), {_d("transformation-ref"): dim.name})
    else:
        ET.SubElement(parent, _d("fcs-dimension"), {_d("name"): dim.name})


def _dimension_attrs(dim: Dimension) -> dict[str, str]:
    attrs = {_g("compensation-ref"): dim.compensation}
    if dim.transform is not None:
        attrs[_g("transformation-ref")] = dim.transform
    return attrs


def _gate_element(root: ET.Element, g: GatingMLGate) -> None:
    attrs = {_g("id"): g.id}
    if g.parent is not None:
        attrs[_g("parent_id")] = g.parent
    if g.name:
        attrs[_g("name")] = g.name
    gate = g.gate
    by_key = {d.key: d for d in g.dimensions}
    if isinstance(gate, (RangeGate, RectangleGate)):
        el = ET.SubElement(root, _g("RectangleGate"), attrs)
        lows = (gate.low,) if isinstance(gate, RangeGate) else gate.lows
        highs = (gate.high,) if isinstance(gate, RangeGate) else gate.highs
        for key, lo, hi in zip(gate.dims, lows, highs):
            a = _dimension_attrs(by_key[key])
            if lo is not None:
                a[_g("min")] = _num(lo)
            if hi is not None:
                a[_g("max")] = _num(hi)
            _dimension_children(ET.SubElement(el, _g("dimension"), a), by_key[key])
    elif isinstance(gate, PolygonGate):
        el = ET.SubElement(root, _g("PolygonGate"), attrs)
        for key in gate.dims:
            _dimension_children(ET.SubElement(el, _g("dimension"), _dimension_attrs(by_key[key])), by_key[key])
        for vertex in gate.vertices:
            vertex_el = ET.SubElement(el, _g("vertex"))
            for c in vertex:
                ET.SubElement(vertex_el, _g("coordinate"), {_d("value"): _num(c)})
    elif isinstance(gate, EllipsoidGate):
        el = ET.SubElement(root, _g("EllipsoidGate"), attrs)
        for key in gate.dims:
            _dimension_children(ET.SubElement(el, _g("dimension"), _dimension_attrs(by_key[key])), by_key[key])
        mean = ET.SubElement(el, _g("mean"))
        for c in gate.mean:
            ET.SubElement(mean, _g("coordinate"), {_d("value"): _num(c)})
        cov = ET.SubElement(el, _g("covarianceMatrix"))
        for row in gate.covariance:
            r = ET.SubElement(cov, _g("row"))
            for v in row:
                ET.SubElement(r, _g("entry"), {_d("value"): _num(v)})
        ET.SubElement(el, _g("distanceSquare"), {_d("value"): _num(gate.distance_square)})
    elif isinstance(gate, QuadrantGate):
        el = ET.SubElement(root, _g("QuadrantGate"), attrs)
        for divider in gate.dividers:
            dim = by_key[divider.dim]
            div = ET.SubElement(el, _g("divider"), {_g("id"): divider.id, **_dimension_attrs(dim)})
            _dimension_children(div, dim)
            for v in divider.values:
                ET.SubElement(div, _g("value")).text = _num(v)
        for qid, positions in gate.quadrants.items():
            q = ET.SubElement(el, _g("Quadrant"), {_g("id"): qid})
            for did, location in positions.items():
                ET.SubElement(q, _g("position"), {_g("divider_ref"): did, _g("location"): _num(location)})
    elif isinstance(gate, BooleanGate):
        el = ET.SubElement(root, _g("BooleanGate"), attrs)
        op = ET.SubElement(el, _g(gate.op))
        for ref, complement in zip(gate.operands, gate.complements):
            a = {_g("ref"): ref}
            if complement:
                a[_g("use-as-complement")] = "true"
            ET.SubElement(op, _g("gateReference"), a)
    else:
        raise StrategyError(f"gate {g.id!r}: a {type(gate).__name__} has no Gating-ML form")


def gatingml_xml(doc: GatingMLDocument) -> str:
    """The Gating-ML 2.0 XML text of ``doc`` (matrices, then transformations, then gates)."""
    ET.register_namespace("gating", GATING_NS)
    ET.register_namespace("transforms", TRANSFORMS_NS)
    ET.register_namespace("data-type", DATATYPE_NS)
    root = ET.Element(_g("Gating-ML"))
    for m in doc.matrices.values():
        attrs = {_t("id"): m.id}
        if m.inverted_already:
            attrs[_t("matrix-inverted-already")] = "true"
        el = ET.SubElement(root, _t("spectrumMatrix"), attrs)
        for group, names in (("fluorochromes", m.fluorochromes), ("detectors", m.detectors)):
            g = ET.SubElement(el, _t(group))
            for n in names:
                ET.SubElement(g, _d("fcs-dimension"), {_d("name"): n})
        for row in m.coefficients:
            spectrum = ET.SubElement(el, _t("spectrum"))
            for v in row:
                ET.SubElement(spectrum, _t("coefficient"), {_t("value"): _num(v)})
    for tr in doc.transforms.values():
        attrs = {_t("id"): tr.id}
        for name, value in (("boundMin", tr.bound_min), ("boundMax", tr.bound_max)):
            if math.isfinite(value):
                attrs[_t(name)] = _num(value)
        el = ET.SubElement(root, _t("transformation"), attrs)
        if isinstance(tr, RatioTransform):
            r = ET.SubElement(el, _t("fratio"), {_t("A"): _num(tr.A), _t("B"): _num(tr.B), _t("C"): _num(tr.C)})
            for n in (tr.numerator, tr.denominator):
                ET.SubElement(r, _d("fcs-dimension"), {_d("name"): n})
        else:
            ET.SubElement(el, _t(tr.kind), {_t(k): _num(v) for k, v in tr.params.items()})
    for gate in doc.gates.values():
        _gate_element(root, gate)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_gatingml(doc: GatingMLDocument, path: str | Path) -> None:
    """Write ``doc`` as a Gating-ML 2.0 file, atomically."""
    from tilpheno.io.atomic import write_text

    write_text(path, gatingml_xml(doc))


def export_gatingml(
    gates: Sequence[ExportGate],
    path: str | Path,
    *,
    transforms: Sequence[ScaleTransform | RatioTransform] = (),
    matrices: Sequence[SpectrumMatrix] = (),
) -> GatingMLDocument:
    """Write a product's resolved gates as a Gating-ML 2.0 document at ``path``; returns the document.

    ``gates`` in an order where parents come first is conventional but not required. Each
    ``Dimension.transform`` must be the id of one of ``transforms`` (e.g. ``logicle("logicle")``)
    and each non-reserved ``Dimension.compensation`` the id of one of ``matrices``; use ``"FCS"``
    for the file's own ``$SPILLOVER``. Thresholds and vertices are written with the shortest
    decimal text that reads back to the same float64, so re-reading gives identical gates.

    Note: readers of the document (tilpheno, FlowKit) evaluate logicle exactly (flowutils);
    ``tilpheno.transforms.Logicle`` interpolates a table (error < 1e-6 on the 0..1 scale), so an
    event within 1e-6 of a threshold can fall on the other side when re-gated from the document
    (``export_tube_gatingml`` writes a tube's thresholds on the linear scale, where they do not).
    """
    doc = build_document(gates, transforms, matrices, source=str(path))
    write_gatingml(doc, path)
    return doc


def export_tube_gatingml(
    result,
    path: str | Path,
    transforms: Mapping[str, object],
    compensation: str | Spillover = FCS_COMPENSATION,
    *,
    linear_thresholds: bool = True,
) -> GatingMLDocument:
    """Export one gated tube (``tilpheno.phenotype.TubeResult``) as Gating-ML 2.0 at ``path``.

    ``result.gates`` gives (population, parent, gate, method), gate dimensions named by marker
    (mapped to detectors through ``result.detectors``) or scatter $PnN. ``transforms``: dimension
    -> ``tilpheno.transforms`` transform used (e.g. ``{d: strategy.transform_for(d) ...}``).
    ``compensation``: ``"FCS"`` when the file's own ``$SPILLOVER`` compensated the markers,
    ``"uncompensated"``, or the override Spillover used (written as a spectrumMatrix
    "Compensation" whose fluorochromes are the detectors). Population labels become ids through
    ``gatingml_id`` and are kept as names; the top-level parent ("root" or None) is dropped.

    Axis-aligned gates (ranges, rectangles, quadrants) are written on the compensated linear
    scale (no ``transformation-ref``), each bound moved to :func:`linear_threshold` of its
    dimension's transform: a reader's ``min <= x < max`` then contains exactly the events the
    pipeline's ``min <= transform(x) < max`` contains, for every event (the pipeline's table
    logicle and a reader's exact logicle differ by up to 1e-6, which on the transformed scale put
    events at a threshold, e.g. one pinned at the highest value, on the other side). Polygons and
    ellipses keep their transformed coordinates and the transformation (up to 1e-6 apart). A bound
    beyond every value is an infinity (``INF``, ``-INF``); a quadrant gate with such a divider is
    written as one rectangle gate per quadrant (ids and names its quadrants', the same parent).
    ``linear_thresholds=False`` writes every gate on the transformed scale with its transformation
    (a reader then evaluates each transform, as the pipeline does: ``benchmarks/run.py`` compares
    FlowKit's gating with compensation and logicle against the pipeline's on such a document).
    """
    matrices: list[SpectrumMatrix] = []
    if isinstance(compensation, Spillover):
        comp_ref = "Compensation"
        matrices.append(SpectrumMatrix(comp_ref, compensation.detectors, compensation.detectors,
                                       tuple(map(tuple, compensation.matrix))))
    else:
        comp_ref = compensation
    scale: dict[str, ScaleTransform] = {}
    dims: dict[tuple[str, bool], Dimension] = {}

    def dimension(dim: str, linear: bool) -> Dimension:
        if dim not in transforms:
            raise StrategyError(f"{path}: no transform given for dimension {dim!r}")
        if (dim, linear) not in dims:
            st = None if linear else scale_transform_for(transforms[dim], "transform")
            tid = None
            if st is not None:  # e.g. Logicle_262144_0.5_4.5_0: every digit, so unequal scales get unequal ids
                tid = "_".join([st.kind.capitalize(), *(_num(v).removesuffix(".0").replace("+", "") for v in st.params.values())])
                scale.setdefault(tid, ScaleTransform(tid, st.kind, st.params))
            marker = dim in result.detectors
            dims[dim, linear] = Dimension(result.detectors.get(dim, dim), comp_ref if marker else UNCOMPENSATED, tid)
        return dims[dim, linear]

    def ident(population: str | None) -> str | None:
        return None if population in (None, "", "root") else gatingml_id(population)

    gates = []
    for population, parent, gate, _method in result.gates:
        if linear_thresholds and isinstance(gate, QuadrantGate) and _divider_beyond_every_value(gate, transforms):
            for q in gate.quadrants:   # a divider at +-inf has no quadrant location beyond it: one rectangle each
                rectangle = gate.rectangle(q)
                dimensions = {d: dimension(d, True) for d in rectangle.dims}
                gates.append(ExportGate(gatingml_id(q), ident(parent), _on_linear_scale(rectangle, transforms),
                                        dimensions, name=q))
            continue
        if isinstance(gate, BooleanGate):
            gate = BooleanGate(gate.op, tuple(map(gatingml_id, gate.operands)), gate.complements)
        elif isinstance(gate, QuadrantGate):
            gate = QuadrantGate(gate.dividers, {gatingml_id(q): pos for q, pos in gate.quadrants.items()})
        linear = linear_thresholds and isinstance(gate, (RangeGate, RectangleGate, QuadrantGate))
        dimensions = {d: dimension(d, linear) for d in gate.dims}
        if linear:
            gate = _on_linear_scale(gate, transforms)
        gates.append(ExportGate(gatingml_id(population), ident(parent), gate, dimensions, name=population))
    return export_gatingml(gates, path, transforms=list(scale.values()), matrices=matrices)


def _divider_beyond_every_value(gate: QuadrantGate, transforms: Mapping[str, object]) -> bool:
    """Whether a divider value of ``gate`` lies beyond the transform of every float64 (its
    :func:`linear_threshold` infinite): a Gating-ML divider and quadrant location cannot say it."""
    return any(math.isinf(linear_threshold(transforms[d.dim], v)) for d in gate.dividers for v in d.values)

