"""FlowJo 10 workspaces (.wsp): the gates of one sample of a sample group, applied with tilpheno geometry.

What FlowJo stores, and how it is read here:

- ``<Groups>/<GroupNode name=...>`` lists the group's samples (``<SampleRef sampleID>``). Each
  ``<SampleList>/<Sample>`` has a ``<DataSet uri sampleID>``, display ``<Transformations>`` per
  parameter, an optional ``<transforms:spilloverMatrix prefix suffix>``, and a ``<SampleNode>``
  whose ``<Subpopulations>`` tree holds the gates applied to that sample and the event count
  FlowJo computed for each population (``count``; ``-1`` = never computed, read as None).
- Populations: ``<Population name count>`` with a ``<Gate>`` holding one Gating-ML-style
  ``RectangleGate`` (one dimension = a range gate; FlowJo quadrants are four rectangles),
  ``PolygonGate`` or ``EllipsoidGate``; ``eventsInside="0"`` takes the complement. ``AndNode``,
  ``OrNode``, ``NotNode`` are boolean populations over ``<Dependent name>`` populations
  (a name with ``/`` is a path from the sample root, otherwise a sibling). Every population
  lies inside its parent.
- Dimension names are FlowJo's channel names: the ``$PnN`` with every ``/`` made ``_``
  (``gatingml.flowjo_name``; FlowKit reads workspaces so too); a ``$PnS`` marker label is
  accepted as well when one channel has it (``gatingml.channel_for``). A name carrying the spillover matrix's prefix/suffix
  (``Comp-FITC-A``) is the compensated detector (matrix rows/columns = detectors, FlowJo/FCS
  convention, ``true = raw @ inv(S)``).
- Coordinates: rectangle bounds and polygon vertices are in data units (compensated, not
  transformed). FlowJo draws polygons on the display scale, so a polygon on an axis with a
  non-linear display transform is evaluated on that scale (vertices and events transformed
  alike); on linear axes display scaling is affine and the polygon is evaluated in data units.
  Ellipse ``foci`` and ``edge`` vertices are stored in display bins (0..256 across the display
  range); the ellipse is rebuilt on the 0..1 display scale: centre = midpoint of the foci,
  semi-major axis ``a`` = the larger half-distance between the edge pairs (1st-2nd, 3rd-4th),
  semi-minor ``b = sqrt(a^2 - c^2)`` with ``c`` = half the focal distance, major axis along the foci.
- Display transforms to the 0..1 scale: ``linear`` ``(x - minRange) / (maxRange - minRange)``
  (``gain`` must be 1); ``log`` ``log10(x / offset) / decades`` (x <= 0 -> NaN, outside gates);
  ``logicle`` (T, W, M, A) and ``fasinh`` (T, M, A) as Gating-ML (flowutils); ``biex`` by
  FlowKit's FlowJo-compatible table (``flowkit.transforms.WSPBiexTransform``) divided by its
  4096-channel range. Other FlowJo transforms are undocumented and raise an error.

Agreement with FlowJo: rectangles and ranges are evaluated on the events by FlowJo and here, so
counts agree exactly when no polygon or ellipse lies above them. FlowJo evaluates polygons and
ellipses on binned data (``gateResolution`` 256 bins per axis), so events within about one bin of
those boundaries may be counted differently, there and in the populations below and combining
them (``near_boundary_counts``); tests/test_flowjo.py states the tolerance reached.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from tilpheno.compensation import Spillover, compensate
from tilpheno.errors import GatingError, StrategyError
from tilpheno.gates.gatingml import channel_for, parse_number, scale_param_problem
from tilpheno.gates.geometry import BooleanGate, EllipsoidGate, Gate, PolygonGate, RangeGate, RectangleGate
from tilpheno.gates.tree import Node, dependency_order, evaluate_tree

GATING_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/gating"
TRANSFORMS_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/transformations"
DATATYPE_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"
BIN_COUNT = 256  # FlowJo's display bins per axis (ellipse coordinates are in these units)


def _g(tag):
    return f"{{{GATING_NS}}}{tag}"


def _t(tag):
    return f"{{{TRANSFORMS_NS}}}{tag}"


def _d(tag):
    return f"{{{DATATYPE_NS}}}{tag}"


def _attr(el: ET.Element, name: str) -> str | None:
    for ns in (GATING_NS, TRANSFORMS_NS, DATATYPE_NS):
        value = el.get(f"{{{ns}}}{name}")
        if value is not None:
            return value
    return el.get(name)


@dataclass(frozen=True)
class DisplayTransform:
    """A FlowJo display transform of one parameter onto the 0..1 display scale (see module docstring)."""

    kind: str
    params: Mapping[str, float]

    @property
    def is_linear(self) -> bool:
        return self.kind == "linear"

    def apply(self, x: np.ndarray) -> np.ndarray:
        p = self.params
        x = np.asarray(x, dtype=np.float64)
        if self.kind == "linear":
            return (x - p["minRange"]) / (p["maxRange"] - p["minRange"])
        if self.kind == "log":
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(x > 0, np.log10(x / p["offset"]) / p["decades"], np.nan)
        from flowutils import transforms as fu

        if self.kind == "logicle":
            return fu.logicle(x, None, t=p["T"], m=p["M"], w=p["W"], a=p["A"])
        if self.kind == "fasinh":
            return fu.asinh(x, None, t=p["T"], m=p["M"], a=p["A"])
        import flowkit as fk

        biex = fk.transforms.WSPBiexTransform(
            negative=p["neg"], width=p["width"], positive=p["pos"], max_value=p["maxRange"]
        )
        return biex.apply(x.reshape(-1, 1)).ravel() / 4096.0


_TRANSFORM_PARAMS = {
    "linear": ("minRange", "maxRange"),
    "log": ("offset", "decades"),
    "logicle": ("T", "W", "M", "A"),
    "fasinh": ("T", "M", "A"),
    "biex": ("neg", "width", "pos", "maxRange"),
}


@dataclass(frozen=True)
class WorkspacePopulation:
    """One population of a sample's gating tree.

    ``path`` is the '/'-joined names from the sample root (``Lymphocytes/Single Cells/CD3+``);
    ``parent`` the parent's path ('' at the root); ``gate`` the geometry over ``dims`` (dimension
    names as in the workspace, see ``FlowJoSample.dimension_values``) or a BooleanGate over
    population paths; ``complement`` for ``eventsInside="0"``; ``display`` True when the gate is
    evaluated on the display scale; ``flowjo_count`` the count FlowJo stored (None if never computed).
    """

    path: str
    name: str
    parent: str
    gate: Gate
    kind: str  # rectangle | range | polygon | ellipse | and | or | not
    complement: bool = False
    display: bool = False
    flowjo_count: int | None = None


@dataclass
class FlowJoSample:
    """The workspace's view of one sample: transforms, compensation and population tree."""

    source: str
    sample_id: str
    name: str
    uri: str
    group: str
    transforms: dict[str, DisplayTransform] = field(default_factory=dict)
    spillover: Spillover | None = None
    comp_prefix: str = ""
    comp_suffix: str = ""
    populations: list[WorkspacePopulation] = field(default_factory=list)

    def _detector(self, name: str) -> str | None:
        """The detector a compensated dimension name refers to, or None if it is not compensated."""
        if self.spillover is None or not (self.comp_prefix or self.comp_suffix):
            return None
        if not (name.startswith(self.comp_prefix) and name.endswith(self.comp_suffix)):
            return None
        core = name[len(self.comp_prefix): len(name) - len(self.comp_suffix) if self.comp_suffix else None]
        return core if core in self.spillover.detectors else None

    def dimension_values(self, events: np.ndarray, channel_names: Sequence[str], dims: Sequence[str],
                         markers: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Data-unit values (compensated where the name says so) of each named dimension.

        The workspace names channels as FlowJo does (``gatingml.flowjo_name``: ``/`` -> ``_``), and
        may name one by its $PnS marker label (``markers``, one per channel); ``gatingml.channel_for``
        finds the file's channel, GatingError naming the sample and the dimension when none or several fit.
        """
        index = {n: i for i, n in enumerate(channel_names)}
        comp = None
        out = {}
        for dim in dims:
            detector = self._detector(dim)
            if detector is not None and self.spillover is not None:   # a detector name implies a matrix
                if comp is None:
                    comp = compensate(events, list(channel_names), self._file_spillover(channel_names, markers))
                out[dim] = comp[:, index[self._channel(detector, channel_names, markers)]]
            else:
                out[dim] = np.asarray(events[:, index[self._channel(dim, channel_names, markers)]], dtype=np.float64)
        return out

    def _channel(self, dim: str, channel_names: Sequence[str], markers: Sequence[str]) -> str:
        """The file's $PnN for a channel named as in the workspace (GatingError when none)."""
        pnn = channel_for(dim, channel_names, markers, f"{self.source}: sample {self.name!r}")
        if pnn is None:
            raise GatingError(f"{self.source}: sample {self.name!r} gates on {dim!r}, not among the file's channels {list(channel_names)}")
        return pnn

    def _file_spillover(self, channel_names: Sequence[str], markers: Sequence[str]) -> Spillover:
        """The workspace's spillover matrix with its detectors named by the file's $PnN."""
        assert self.spillover is not None   # only called for a compensated dimension
        detectors = tuple(self._channel(d, channel_names, markers) for d in self.spillover.detectors)
        return Spillover(detectors, self.spillover.matrix, self.spillover.source)

    def display_name(self, dim: str) -> str:
        return f"display:{dim}"


# ----------------------------------------------------------------------------- parsing


def _workspace_root(path: str | Path) -> ET.Element:
    """The parsed workspace (a regular file only: a FIFO would block); StrategyError naming it."""
    from tilpheno.io.files import open_regular

    try:
        with open_regular(path) as fh:
            return ET.parse(fh).getroot()
    except (OSError, ET.ParseError) as exc:
        raise StrategyError(f"{path}: cannot read FlowJo workspace ({exc})") from None


def read_workspace(path: str | Path, group: str = "All Samples", sample: str | None = None) -> FlowJoSample:
    """The gating of one sample of ``group`` in the FlowJo 10 workspace at ``path``.

    ``sample`` picks the sample by SampleNode name, FCS file name (from the DataSet uri) or
    sample id; it may be omitted when the group has exactly one sample. StrategyError names the
    workspace and the group/sample/element at fault.
    """
    path = Path(path)
    root = _workspace_root(path)
    source = str(path)
    version = root.get("flowJoVersion", "")
    if root.tag != "Workspace" or not version.split(".")[0].isdigit():
        raise StrategyError(f"{source}: not a FlowJo workspace (root element <{root.tag}>)")
    if int(version.split(".")[0]) < 10:
        raise StrategyError(f"{source}: FlowJo version {version} workspaces are not supported (need 10+)")
    sample_ids = _group_sample_ids(root, group, source)
    samples = _samples_by_id(root)
    members = [samples[i] for i in sample_ids if i in samples]
    if sample is not None:
        members = [s for s in members if sample in _sample_labels(s)]
    if len(members) != 1:
        labels = [_sample_name(samples[i], i) for i in sample_ids if i in samples]
        if not labels:
            raise StrategyError(f"{source}: group {group!r} has no samples")
        what = f"sample {sample!r}" if sample is not None else "a single sample (name one)"
        raise StrategyError(f"{source}: group {group!r} does not contain {what}; its samples: {labels}")
    return _parse_sample(members[0], group, source)


def workspace_groups(path: str | Path) -> list[str]:
    """Names of the sample groups of a workspace."""
    root = _workspace_root(path)
    return [name for g in root.iter("GroupNode") if (name := g.get("name")) is not None]


def workspace_samples(path: str | Path, group: str = "All Samples") -> list[str]:
    """Sample names (SampleNode names) of ``group``, in the group's order."""
    root = _workspace_root(path)
    samples = _samples_by_id(root)
    return [_sample_name(samples[sid], sid) for sid in _group_sample_ids(root, group, str(path)) if sid in samples]


def _sample_name(sample_el: ET.Element, sid: str) -> str:
    """A sample's SampleNode name (its id when it has none)."""
    node = sample_el.find("SampleNode")
    return node.get("name", sid) if node is not None else sid


def _group_sample_ids(root: ET.Element, group: str, source: str) -> list[str]:
    for node in root.iter("GroupNode"):
        if node.get("name") == group:
            refs = node.find("Group/SampleRefs")
            return [sid for r in (refs if refs is not None else []) if (sid := r.get("sampleID")) is not None]
    names = [g.get("name") for g in root.iter("GroupNode")]
    raise StrategyError(f"{source}: no sample group {group!r}; groups: {names}")


def _samples_by_id(root: ET.Element) -> dict[str, ET.Element]:
    """Sample elements by their DataSet's ``sampleID`` (a sample without one cannot be referenced)."""
    out = {}
    for s_el in root.iter("Sample"):
        ds = s_el.find("DataSet")
        sid = ds.get("sampleID") if ds is not None else None
        if sid is not None:
            out[sid] = s_el
    return out


def _sample_labels(sample_el: ET.Element) -> set[str]:
    """The names a sample can be picked by: its id, its FCS file name, its SampleNode name."""
    ds = sample_el.find("DataSet")
    node = sample_el.find("SampleNode")
    labels = set()
    if ds is not None:
        labels.add(ds.get("sampleID", ""))
        uri = ds.get("uri") or ""
        if uri:
            labels.add(PurePosixPath(unquote(urlparse(uri).path)).name)
    name = node.get("name") if node is not None else None
    if name:
        labels.add(name)
    return labels


def _count(el: ET.Element) -> int | None:
    try:
        value = int(el.get("count", "-1"))
    except ValueError:
        return None
    return value if value >= 0 else None


def _parse_sample(sample_el: ET.Element, group: str, source: str) -> FlowJoSample:
    ds = sample_el.find("DataSet")
    node = sample_el.find("SampleNode")
    if ds is None or node is None:
        sid = ds.get("sampleID") if ds is not None else None
        raise StrategyError(f"{source}: sample {sid} has no {'SampleNode' if ds is not None else 'DataSet'}")
    s = FlowJoSample(source, ds.get("sampleID", ""), node.get("name", ""), ds.get("uri", ""), group)
    xforms = sample_el.find("Transformations")
    for el in (xforms if xforms is not None else []):
        kind = el.tag.rsplit("}", 1)[-1]
        param_el = el.find(_d("parameter"))
        param = _attr(param_el, "name") if param_el is not None else None
        if param is None:
            raise StrategyError(f"{source}: sample {s.name!r}: <{kind}> transform without a parameter name")
        if kind not in _TRANSFORM_PARAMS:
            raise StrategyError(
                f"{source}: sample {s.name!r} parameter {param!r}: FlowJo transform <{kind}> is not supported "
                f"(supported: {sorted(_TRANSFORM_PARAMS)})")
        params = {p: parse_number(_attr(el, p), f"{kind} transform of {param!r} parameter {p}", source) for p in _TRANSFORM_PARAMS[kind]}
        if kind == "linear":
            gain = parse_number(_attr(el, "gain") or "1", f"linear transform of {param!r} gain", source)
            if gain != 1 or params["maxRange"] <= params["minRange"]:
                raise StrategyError(f"{source}: linear transform of {param!r}: need gain 1 and maxRange > minRange")
        problem = _display_param_problem(kind, params)
        if problem:
            raise StrategyError(f"{source}: sample {s.name!r} parameter {param!r}: {kind} transform "
                                f"({', '.join(f'{k}={v:g}' for k, v in params.items())}): {problem}")
        s.transforms[param] = DisplayTransform(kind, params)
    matrix = sample_el.find(_t("spilloverMatrix"))
    if matrix is not None:
        s.spillover, s.comp_prefix, s.comp_suffix = _parse_spillover(matrix, source)
    subs = node.find("Subpopulations")
    if subs is not None:
        _walk(subs, "", s, source, _population_paths(subs, ""))
    return s


def _display_param_problem(kind: str, p: Mapping[str, float]) -> str:
    """Why a display transform's parameters give no scale ('' when they do): logicle and fasinh by
    Gating-ML 2.0's constraints, log by offset > 0 and decades > 0."""
    if kind in ("logicle", "fasinh"):
        return scale_param_problem(kind, p)
    if kind == "log" and not (p["offset"] > 0 and p["decades"] > 0):
        return "offset and decades must be > 0"
    return ""


def _parse_spillover(el: ET.Element, source: str) -> tuple[Spillover, str, str]:
    params = el.find(_d("parameters"))
    detectors = []
    for p in (params if params is not None else []):
        name = _attr(p, "name")
        if not name:
            raise StrategyError(f"{source}: spilloverMatrix {el.get('name', '')}: a parameter without a name")
        detectors.append(name)
    rows = []
    for row in el.findall(_t("spillover")):
        rows.append([parse_number(_attr(c, "value"), "spillover coefficient", source) for c in row.findall(_t("coefficient"))])
        if len(rows[-1]) != len(detectors):   # before numpy meets a ragged matrix
            raise StrategyError(f"{source}: spilloverMatrix {el.get('name', '')!r}: the row of {_attr(row, 'parameter')!r} has "
                                f"{len(rows[-1])} coefficients for {len(detectors)} parameters")
    if el.get("spectral") == "1":
        raise StrategyError(f"{source}: spectral (unmixing) matrices in FlowJo workspaces are not supported")
    return Spillover(tuple(detectors), np.array(rows, dtype=np.float64), f"{source} spilloverMatrix {el.get('name', '')}"), el.get("prefix", ""), el.get("suffix", "")


def _population_paths(subs: ET.Element, parent: str) -> list[str]:
    """Paths of every population under ``subs``, in document order (boolean nodes may refer to any)."""
    paths = []
    for el in subs:
        if el.tag in ("Population", "AndNode", "OrNode", "NotNode") and el.get("name") is not None:
            path = f"{parent}/{el.get('name')}" if parent else str(el.get("name"))
            child = el.find("Subpopulations")
            paths += [path, *(_population_paths(child, path) if child is not None else [])]
    return paths


def _walk(subs: ET.Element, parent: str, s: FlowJoSample, source: str, known: list[str]) -> None:
    for el in subs:
        if el.tag not in ("Population", "AndNode", "OrNode", "NotNode"):
            continue
        name = el.get("name")
        if name is None:
            raise StrategyError(f"{source}: a <{el.tag}> under {parent or 'the sample'!r} has no name")
        path = f"{parent}/{name}" if parent else name
        if el.tag == "Population":
            s.populations.append(_population(el, name, path, parent, s, source))
        else:
            s.populations.append(_boolean(el, name, path, parent, known, source))
        child = el.find("Subpopulations")
        if child is not None:
            _walk(child, path, s, source, known)


def _dims(gate_el: ET.Element, path: str, source: str) -> list[str]:
    dims = []
    for d in gate_el.findall(_g("dimension")):
        fcs = d.find(_d("fcs-dimension"))
        name = _attr(fcs, "name") if fcs is not None else None
        if not name:
            raise StrategyError(f"{source}: population {path!r}: a gate dimension has no fcs-dimension name")
        dims.append(name)
    return dims


def _vertices(parent: ET.Element | None, path: str, source: str) -> list[tuple[float, float]]:
    out = []
    for v in parent.findall(_g("vertex")) if parent is not None else []:
        coords = [parse_number(_attr(c, "value"), f"population {path!r} vertex", source) for c in v.findall(_g("coordinate"))]
        if len(coords) != 2:
            raise StrategyError(f"{source}: population {path!r}: a vertex needs 2 coordinates")
        out.append((coords[0], coords[1]))
    return out


def _population(el, name, path, parent, s: FlowJoSample, source) -> WorkspacePopulation:
    gate_holder = el.find("Gate")
    children = list(gate_holder) if gate_holder is not None else []
    if len(children) != 1:
        raise StrategyError(f"{source}: population {path!r} must have exactly one gate")
    g = children[0]
    kind = g.tag.rsplit("}", 1)[-1]
    complement = g.get("eventsInside", "1") == "0"
    dims = _dims(g, path, source)
    try:
        if kind == "RectangleGate":
            lows = [None if _attr(d, "min") is None else parse_number(_attr(d, "min"), f"population {path!r} min", source)
                    for d in g.findall(_g("dimension"))]
            highs = [None if _attr(d, "max") is None else parse_number(_attr(d, "max"), f"population {path!r} max", source)
                     for d in g.findall(_g("dimension"))]
            if len(dims) == 1:
                return WorkspacePopulation(path, name, parent, RangeGate(dims[0], lows[0], highs[0]), "range", complement, False, _count(el))
            return WorkspacePopulation(path, name, parent, RectangleGate(tuple(dims), tuple(lows), tuple(highs)), "rectangle", complement, False, _count(el))
        if kind == "PolygonGate":
            verts = np.array(_vertices(g, path, source), dtype=np.float64).reshape(-1, 2)
            xf = [s.transforms.get(d) for d in dims]
            display = any(t is not None and not t.is_linear for t in xf)
            if display:
                verts = np.column_stack([(t.apply(verts[:, i]) if t is not None else verts[:, i]) for i, t in enumerate(xf[:2])])
                dims = [s.display_name(d) for d in dims]
            if len(dims) != 2:
                raise StrategyError(f"{source}: population {path!r}: a polygon gate needs 2 dimensions, got {dims}")
            return WorkspacePopulation(path, name, parent, PolygonGate((dims[0], dims[1]), tuple(map(tuple, verts))), "polygon", complement, display, _count(el))
        if kind == "EllipsoidGate":
            gate = _ellipse(g, dims, path, s, source)
            return WorkspacePopulation(path, name, parent, gate, "ellipse", complement, True, _count(el))
    except GatingError as exc:
        raise StrategyError(f"{source}: population {path!r}: {exc}") from None
    raise StrategyError(f"{source}: population {path!r}: FlowJo gate type <{kind}> is not supported")


def _ellipse(g: ET.Element, dims: list[str], path: str, s: FlowJoSample, source: str) -> EllipsoidGate:
    """FlowJo ellipse (foci and 4 edge points in display bins) as an ellipse on the 0..1 display scale."""
    if len(dims) != 2:
        raise StrategyError(f"{source}: ellipse population {path!r} needs 2 dimensions")
    missing = [d for d in dims if d not in s.transforms]
    if missing:
        raise StrategyError(f"{source}: ellipse population {path!r}: no display transform for {missing}")
    foci = np.array(_vertices(g.find(_g("foci")), path, source)) / BIN_COUNT
    edge = np.array(_vertices(g.find(_g("edge")), path, source)) / BIN_COUNT
    if foci.shape != (2, 2) or edge.shape != (4, 2):
        raise StrategyError(f"{source}: ellipse population {path!r} needs 2 foci and 4 edge vertices")
    centre = foci.mean(axis=0)
    c = np.linalg.norm(foci[1] - foci[0]) / 2
    a = max(np.linalg.norm(edge[1] - edge[0]), np.linalg.norm(edge[3] - edge[2])) / 2
    if not a > c:
        raise StrategyError(f"{source}: ellipse population {path!r}: edge points lie inside the foci")
    u = (foci[1] - foci[0]) / (2 * c) if c > 0 else np.array([1.0, 0.0])
    v = np.array([-u[1], u[0]])
    b2 = a * a - c * c
    cov = a * a * np.outer(u, u) + b2 * np.outer(v, v)
    return EllipsoidGate(tuple(s.display_name(d) for d in dims), tuple(centre), tuple(map(tuple, cov)), 1.0)


def _boolean(el, name, path, parent, known: list[str], source) -> WorkspacePopulation:
    """A boolean population over ``<Dependent>`` names, resolved among ``known`` (all paths of the
    sample's tree, wherever in the document they are): a path from the root, else a sibling, else
    a root population, else the first population whose path ends with the name."""
    op = {"AndNode": "and", "OrNode": "or", "NotNode": "not"}[el.tag]
    deps = [d.get("name", "") for d in el.findall("Dependents/Dependent")]
    refs = []
    for dep in deps:
        candidates = [dep.strip("/")] if "/" in dep.strip("/") else [f"{parent}/{dep}" if parent else dep, dep]
        found = next((c for c in candidates if c in known), None)
        if found is None:
            found = next((p for p in known if p.endswith("/" + dep.strip("/"))), None)
        if found is None:
            raise StrategyError(f"{source}: boolean population {path!r} depends on unknown population {dep!r}")
        refs.append(found)
    try:
        gate = BooleanGate(op, tuple(refs))
    except GatingError as exc:
        raise StrategyError(f"{source}: population {path!r}: {exc}") from None
    return WorkspacePopulation(path, name, parent, gate, op, False, False, _count(el))


# ----------------------------------------------------------------------------- evaluation


def _dimension_data(s: FlowJoSample, events: np.ndarray, channel_names: Sequence[str],
                    markers: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Values of every dimension the gates use: data units, and ``display:<dim>`` on the 0..1 display scale."""
    geometric = [p for p in s.populations if not isinstance(p.gate, BooleanGate)]
    raw_dims = sorted({d.removeprefix("display:") for p in geometric for d in p.gate.dims})
    data = s.dimension_values(np.asarray(events, dtype=np.float64), channel_names, raw_dims, markers)
    for p in geometric:
        for d in p.gate.dims:
            if d.startswith("display:") and d not in data:
                data[d] = s.transforms[d.removeprefix("display:")].apply(data[d.removeprefix("display:")])
    return data


def apply_workspace(s: FlowJoSample, events: np.ndarray, channel_names: Sequence[str],
                    markers: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Membership of every event in every population (by path, tree order), parents included.

    ``events``: n_events x n_channels in data units (``FCSFile.events``), columns ``channel_names``;
    ``markers``: each channel's $PnS ('' for none), see ``FlowJoSample.dimension_values``.
    """
    return _masks(s, _dimension_data(s, events, channel_names, markers), len(events))[0]


def _masks(s: FlowJoSample, data: Mapping[str, np.ndarray], n: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(full masks with parents, each gate's own geometric mask) by population path."""
    masks = evaluate_tree(tree_nodes(s), data, n, s.source)
    own_masks = {}
    for p in s.populations:
        own = p.gate.membership(data, masks)
        own_masks[p.path] = ~own if p.complement else own
    return masks, own_masks


def tree_nodes(s: FlowJoSample) -> list[Node]:
    """The sample's populations as tree nodes (``eventsInside="0"`` gates as complements)."""
    return [Node(p.path, p.parent or None, p.gate, p.complement) for p in s.populations]


def _bin_width(s: FlowJoSample, dim: str) -> float | None:
    """One FlowJo display bin (1/256 of the display range) in the units of ``dim``; None if unknown."""
    if dim.startswith("display:"):
        return 1.0 / BIN_COUNT
    t = s.transforms.get(dim)
    if t is None or not t.is_linear:
        return None
    return (t.params["maxRange"] - t.params["minRange"]) / BIN_COUNT


def near_boundary_counts(s: FlowJoSample, events: np.ndarray, channel_names: Sequence[str],
                         markers: Sequence[str] = ()) -> dict[str, int | None]:
    """Per population, how many events FlowJo's binning could count differently: an upper bound of
    ``|FlowJo's count - tilpheno's count|``.

    FlowJo evaluates polygon and ellipse gates on binned data, so an event within one display bin
    of such a gate's boundary (moving it by one bin along either axis, or both, changes its
    membership of the gate's own geometry) may fall on the other side. Such an event is uncertain
    in that population if it may be in the parent, and uncertain in every population below it
    whose own gate contains it, and in a boolean population combining it. Rectangle, range and
    boolean gates add none of their own (FlowJo evaluates them exactly): at the root they give 0,
    below a polygon or ellipse the events their parent is uncertain about. None when a bin width
    is unknown (for that population and those below or combining it).
    """
    data = _dimension_data(s, events, channel_names, markers)
    return _near_boundary(s, data, *_masks(s, data, len(events)))


def _own_near(s: FlowJoSample, p: WorkspacePopulation, data: Mapping[str, np.ndarray], n: int) -> np.ndarray | None:
    """Events within one display bin of a polygon or ellipse gate's own boundary (none for other
    gates); None when a bin width is unknown."""
    if p.kind not in ("polygon", "ellipse"):
        return np.zeros(n, dtype=bool)
    wx, wy = (_bin_width(s, d) for d in p.gate.dims)   # polygons and ellipses: 2 dimensions
    if wx is None or wy is None:
        return None
    base = p.gate.membership(data)
    near = np.zeros(n, dtype=bool)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            if dx or dy:
                shifted = dict(data)
                shifted[p.gate.dims[0]] = data[p.gate.dims[0]] + dx * wx
                shifted[p.gate.dims[1]] = data[p.gate.dims[1]] + dy * wy
                near |= p.gate.membership(shifted) != base
    return near


def _near_boundary(s: FlowJoSample, data: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
                   own_masks: Mapping[str, np.ndarray]) -> dict[str, int | None]:
    """``near_boundary_counts`` from the dimension data, full masks and own-gate masks already computed."""
    n = len(next(iter(masks.values()), ()))
    by_path = {p.path: p for p in s.populations}
    uncertain: dict[str, np.ndarray | None] = {}
    for node in dependency_order(tree_nodes(s), s.source):   # parents and operands first
        p = by_path[node.name]
        parent = uncertain[p.parent] if p.parent else np.zeros(n, dtype=bool)
        operands = [uncertain[o] for o in getattr(p.gate, "operands", ())]   # a boolean gate's
        known = [u for u in operands if u is not None]
        own = _own_near(s, p, data, n)
        if own is None or parent is None or len(known) < len(operands):
            uncertain[p.path] = None
            continue
        may_be_in_parent = (masks[p.parent] if p.parent else np.ones(n, dtype=bool)) | parent
        changed = np.logical_or.reduce([own, *known])   # its own gate's verdict may change
        uncertain[p.path] = (changed & may_be_in_parent) | (parent & own_masks[p.path])
    return {p.path: None if (u := uncertain[p.path]) is None else int(u.sum()) for p in s.populations}


def population_counts(s: FlowJoSample, events: np.ndarray, channel_names: Sequence[str],
                      markers: Sequence[str] = ()) -> pd.DataFrame:
    """One row per population: ``population, parent, count, flowjo_count, near_boundary, gate`` (tree order).

    ``population``/``parent`` are '/'-joined paths ('' = the sample's root); ``flowjo_count``
    is what FlowJo stored (<NA> when it never computed it); ``near_boundary`` see
    ``near_boundary_counts``; ``gate`` the gate kind.
    """
    data = _dimension_data(s, events, channel_names, markers)
    masks, own_masks = _masks(s, data, len(events))
    near = _near_boundary(s, data, masks, own_masks)
    return pd.DataFrame({
        "population": [p.path for p in s.populations],
        "parent": [p.parent for p in s.populations],
        "count": [int(masks[p.path].sum()) for p in s.populations],
        "flowjo_count": pd.array([p.flowjo_count for p in s.populations], dtype="Int64"),
        "near_boundary": pd.array([near[p.path] for p in s.populations], dtype="Int64"),
        "gate": [p.kind for p in s.populations],
    })
