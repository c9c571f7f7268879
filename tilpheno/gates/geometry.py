"""Gate geometry: which events a gate contains, with Gating-ML 2.0 membership semantics.

Gates address dimensions by name. ``data`` is a mapping ``dimension name -> float64 array``
(all arrays the same length, one value per event, on whatever scale the gate was drawn on:
compensated and transformed by the caller). ``contains(data)`` returns a boolean array over all
events; it never applies a parent gate (the gating engine ANDs with the parent mask).

Membership conventions (Gating-ML 2.0, section 5):

- ranges and rectangles: ``low <= x < high`` (minimum inclusive, maximum exclusive); a missing
  bound (``None``) is unbounded;
- polygons: the crossing (even-odd) rule with half-open edges, as FlowKit/flowutils: an edge
  from ``a`` to ``b`` counts when ``min(ay, by) <= y < max(ay, by)`` and the point lies strictly
  left of the upward-oriented edge. A point exactly on an edge or vertex is decided by that rule
  (in practice: bottom/left boundaries inside, top/right outside);
- ellipsoids: ``(x - mean)^T C^-1 (x - mean) <= distance_square`` (boundary inside);
- quadrants: each quadrant is a rectangle between adjacent divider values, minimum inclusive;
- boolean gates combine other populations' masks: ``and``, ``or`` (any number of operands),
  ``not`` (one operand); each operand may be used as its complement.

Events with a NaN coordinate are outside every geometric gate (all comparisons with NaN are false).

The gate protocol (:class:`Gate`), implemented by every gate class: ``dims`` (the dimensions it
reads, empty for boolean gates), ``membership(data, masks)`` (boolean array over all events;
geometric gates read ``data``, boolean gates the other populations' ``masks``), ``extent(dim)``
(the gate's coordinates on one dimension, to keep it in view), ``drawing()`` (a :class:`Drawing`:
what a plot draws), ``to_dict()``. The tree evaluator (``tilpheno.gates.tree``) and the plots use
only this protocol, never the class of a gate.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from tilpheno.errors import GatingError

Data = Mapping[str, np.ndarray]
Masks = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Drawing:
    """What a plot draws for a gate, in the gate's own coordinates.

    ``shape``: ``intervals`` (``bounds``: dim -> (low, high), None = open; ranges, rectangles),
    ``polygon`` (``vertices`` over ``dims``), ``ellipse`` (``mean``, ``covariance``,
    ``distance_square`` over ``dims``), ``dividers`` (``cuts``: dim -> cut values; quadrants) or
    ``none`` (boolean gates).
    """

    shape: str
    dims: tuple[str, ...] = ()
    bounds: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    vertices: tuple[tuple[float, float], ...] = ()
    mean: tuple[float, ...] = ()
    covariance: tuple[tuple[float, ...], ...] = ()
    distance_square: float = 0.0
    cuts: Mapping[str, tuple[float, ...]] = field(default_factory=dict)


@runtime_checkable
class Gate(Protocol):
    """The one gate protocol (module docstring)."""

    @property
    def dims(self) -> tuple[str, ...]: ...

    def membership(self, data: Data, masks: Masks | None = None) -> np.ndarray: ...

    def extent(self, dim: str) -> tuple[float, ...]: ...

    def drawing(self) -> Drawing: ...

    def to_dict(self) -> dict[str, Any]: ...


def _interval_extent(bounds: Mapping[str, tuple[float | None, float | None]], dim: str) -> tuple[float, ...]:
    return tuple(v for v in bounds.get(dim, (None, None)) if v is not None)


def _column(data: Data, dim: str, gate: str) -> np.ndarray:
    """The float64 array of dimension ``dim``; a GatingError naming the gate if absent."""
    try:
        values = data[dim]
    except KeyError:
        raise GatingError(f"{gate} gate needs dimension {dim!r}, which is not among {sorted(data)}") from None
    return np.asarray(values, dtype=np.float64)


def _n_events(data: Data, dims: Sequence[str], gate: str) -> int:
    lengths = {len(_column(data, d, gate)) for d in dims}
    if len(lengths) > 1:
        raise GatingError(f"{gate} gate: dimensions {list(dims)} have different lengths {sorted(lengths)}")
    return lengths.pop()


def _bound(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if np.isnan(value):
        raise GatingError("gate bound is NaN")
    return value


def _in_interval(x: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    """``low <= x < high`` with ``None`` meaning unbounded on that side."""
    mask = np.ones(x.shape, dtype=bool) if low is None else x >= low
    if high is not None:
        mask &= x < high
    return mask


@dataclass(frozen=True)
class RangeGate:
    """One-dimensional gate ``low <= x < high`` on dimension ``dim`` (None = unbounded)."""

    dim: str
    low: float | None = None
    high: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "low", _bound(self.low))
        object.__setattr__(self, "high", _bound(self.high))
        if self.low is None and self.high is None:
            raise GatingError(f"range gate on {self.dim!r} has neither a minimum nor a maximum")

    @property
    def dims(self) -> tuple[str, ...]:
        return (self.dim,)

    def contains(self, data: Data) -> np.ndarray:
        return _in_interval(_column(data, self.dim, "range"), self.low, self.high)

    def membership(self, data: Data, masks: Masks | None = None) -> np.ndarray:
        return self.contains(data)

    def drawing(self) -> Drawing:
        return Drawing("intervals", self.dims, bounds={self.dim: (self.low, self.high)})

    def extent(self, dim: str) -> tuple[float, ...]:
        return _interval_extent(self.drawing().bounds, dim)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "range", "dim": self.dim, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class RectangleGate:
    """Hyper-rectangle: every dimension ``dims[i]`` in ``[lows[i], highs[i])`` (None = unbounded).

    Gating-ML requires each dimension to have at least one bound.
    """

    dims: tuple[str, ...]
    lows: tuple[float | None, ...]
    highs: tuple[float | None, ...]

    def __post_init__(self):
        dims, lows, highs = tuple(self.dims), tuple(map(_bound, self.lows)), tuple(map(_bound, self.highs))
        if not dims or not (len(dims) == len(lows) == len(highs)):
            raise GatingError(
                f"rectangle gate needs one low and one high per dimension: dims={list(dims)}, "
                f"lows={list(lows)}, highs={list(highs)}"
            )
        if len(set(dims)) != len(dims):
            raise GatingError(f"rectangle gate repeats a dimension: {list(dims)}")
        for d, lo, hi in zip(dims, lows, highs):
            if lo is None and hi is None:
                raise GatingError(f"rectangle gate dimension {d!r} has neither a minimum nor a maximum")
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "lows", lows)
        object.__setattr__(self, "highs", highs)

    def contains(self, data: Data) -> np.ndarray:
        _n_events(data, self.dims, "rectangle")
        mask = None
        for d, lo, hi in zip(self.dims, self.lows, self.highs):
            m = _in_interval(_column(data, d, "rectangle"), lo, hi)
            mask = m if mask is None else mask & m
        assert mask is not None   # __post_init__ requires at least one dimension
        return mask

    def membership(self, data: Data, masks: Masks | None = None) -> np.ndarray:
        return self.contains(data)

    def drawing(self) -> Drawing:
        return Drawing("intervals", self.dims, bounds={d: (lo, hi) for d, lo, hi in zip(self.dims, self.lows, self.highs)})

    def extent(self, dim: str) -> tuple[float, ...]:
        return _interval_extent(self.drawing().bounds, dim)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "rectangle", "dims": list(self.dims), "lows": list(self.lows), "highs": list(self.highs)}


@dataclass(frozen=True)
class PolygonGate:
    """Polygon on two dimensions ``dims = (x, y)``; ``vertices`` = ((x0, y0), (x1, y1), ...).

    The polygon closes itself (last vertex joins the first). Membership by the even-odd rule with
    half-open edges (see module docstring), which also defines self-intersecting polygons.
    """

    dims: tuple[str, str]
    vertices: tuple[tuple[float, float], ...]

    def __post_init__(self):
        dims = tuple(self.dims)
        if len(dims) != 2:
            raise GatingError(f"polygon gate needs exactly 2 dimensions, got {list(dims)}")
        try:
            verts = tuple((float(x), float(y)) for x, y in self.vertices)
        except (TypeError, ValueError):
            raise GatingError(f"polygon gate on {list(dims)}: vertices must be (x, y) number pairs") from None
        if len(verts) < 3:
            raise GatingError(f"polygon gate on {list(dims)} has {len(verts)} vertices; at least 3 are needed")
        if not np.all(np.isfinite(verts)):
            raise GatingError(f"polygon gate on {list(dims)} has a non-finite vertex")
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "vertices", verts)

    def contains(self, data: Data) -> np.ndarray:
        _n_events(data, self.dims, "polygon")
        px = _column(data, self.dims[0], "polygon")
        py = _column(data, self.dims[1], "polygon")
        verts = np.asarray(self.vertices)
        inside = np.zeros(px.shape, dtype=bool)
        # per-event buffers made by the first edge and written again by the others: no full-size
        # temporaries edge after edge (memory traffic); each value as the plain expressions give it
        cross = lever = crossing = test = None
        for (ax, ay), (bx, by) in zip(verts, np.roll(verts, -1, axis=0)):
            # An edge counts for an upward crossing (ay <= py < by, point strictly left of a->b,
            # cross > 0) or a downward one (by <= py < ay, cross < 0); at most one of the two
            # ranges is non-empty, and a horizontal edge (ay == by) never counts, so only that
            # one is evaluated (the same membership as evaluating both).
            if not ay < by and not by < ay:
                continue  # horizontal (or NaN) edge: both ranges empty
            # cross = (bx - ax) * (py - ay) - (px - ax) * (by - ay)
            cross = np.subtract(py, ay, out=cross)
            cross *= bx - ax
            lever = np.subtract(px, ax, out=lever)
            lever *= by - ay
            cross -= lever
            if ay < by:   # (ay <= py) & (py < by) & (cross > 0)
                crossing = np.greater_equal(py, ay, out=crossing)
                test = np.less(py, by, out=test)
                crossing &= test
                crossing &= np.greater(cross, 0, out=test)
            else:         # (by <= py) & (py < ay) & (cross < 0)
                crossing = np.greater_equal(py, by, out=crossing)
                test = np.less(py, ay, out=test)
                crossing &= test
                crossing &= np.less(cross, 0, out=test)
            inside ^= crossing
        return inside

    def membership(self, data: Data, masks: Masks | None = None) -> np.ndarray:
        return self.contains(data)

    def drawing(self) -> Drawing:
        return Drawing("polygon", self.dims, vertices=self.vertices)

    def extent(self, dim: str) -> tuple[float, ...]:
        if dim not in self.dims:
            return ()
        i = self.dims.index(dim)
        return tuple(v[i] for v in self.vertices)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "polygon", "dims": list(self.dims), "vertices": [list(v) for v in self.vertices]}


def _mahalanobis_squared(data: Data, dims: Sequence[str], mean: Sequence[float], inv: np.ndarray) -> np.ndarray:
    """``sum_j (sum_i c_i inv[i, j]) c_j`` per event, ``c = x - mean`` (squared Mahalanobis distance
    in the dimensions' units): fixed-order sums of products column by column, the same bits on every
    CPU (no BLAS kernel, which may fuse or reorder, and costs thread start-ups on long thin arrays)."""
    centred = [_column(data, d, "ellipsoid") - m for d, m in zip(dims, mean)]
    d2 = None
    for j, cj in enumerate(centred):
        row = centred[0] * inv[0, j]
        for i in range(1, len(centred)):
            row += centred[i] * inv[i, j]
        row *= cj
        d2 = row if d2 is None else np.add(d2, row, out=d2)
    assert d2 is not None   # at least two dimensions (checked when the gate is made)
    return d2


@dataclass(frozen=True)
class EllipsoidGate:
    """Ellipse (2 dims) or ellipsoid (n dims): ``(x - mean)^T C^-1 (x - mean) <= distance_square``.

    ``covariance`` is the n x n matrix C (row-major nested tuples); ``distance_square`` is the
    squared Mahalanobis radius of the boundary.
    """

    dims: tuple[str, ...]
    mean: tuple[float, ...]
    covariance: tuple[tuple[float, ...], ...]
    distance_square: float

    def __post_init__(self):
        dims = tuple(self.dims)
        n = len(dims)
        mean = tuple(float(v) for v in self.mean)
        rows = [len(row) for row in self.covariance]   # checked before numpy meets a ragged matrix
        if n < 2 or len(mean) != n or rows != [n] * n:
            raise GatingError(
                f"ellipsoid gate on {list(dims)}: needs >= 2 dimensions, a mean of length {n} "
                f"and a {n}x{n} covariance (got mean {len(mean)}, covariance rows of lengths {rows})"
            )
        cov = np.asarray(self.covariance, dtype=np.float64)
        if not (np.all(np.isfinite(cov)) and np.all(np.isfinite(mean))):
            raise GatingError(f"ellipsoid gate on {list(dims)} has non-finite mean or covariance")
        if not float(self.distance_square) > 0:
            raise GatingError(f"ellipsoid gate on {list(dims)}: distance_square must be > 0")
        try:
            np.linalg.inv(cov)
        except np.linalg.LinAlgError:
            raise GatingError(f"ellipsoid gate on {list(dims)}: covariance matrix is singular") from None
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "covariance", tuple(tuple(float(v) for v in row) for row in cov))
        object.__setattr__(self, "distance_square", float(self.distance_square))

    def contains(self, data: Data) -> np.ndarray:
        _n_events(data, self.dims, "ellipsoid")
        return _mahalanobis_squared(data, self.dims, self.mean, np.linalg.inv(np.asarray(self.covariance))) <= \
            self.distance_square

    def membership(self, data: Data, masks: Masks | None = None) -> np.ndarray:
        return self.contains(data)

    def drawing(self) -> Drawing:
        return Drawing("ellipse", self.dims, mean=self.mean, covariance=self.covariance, distance_square=self.distance_square)

    def extent(self, dim: str) -> tuple[float, ...]:
        """The ellipsoid's extreme coordinates on ``dim`` (mean ± sqrt(C_ii d²))."""
        if dim not in self.dims:
            return ()
        i = self.dims.index(dim)
        half = float(np.sqrt(self.covariance[i][i] * self.distance_square))
        return (self.mean[i] - half, self.mean[i] + half)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "ellipsoid",
            "dims": list(self.dims),
            "mean": list(self.mean),
            "covariance": [list(r) for r in self.covariance],
            "distance_square": self.distance_square,
        }


@dataclass(frozen=True)
class Divider:
    """A quadrant divider: dimension ``dim`` cut at the increasing ``values``."""

    id: str
    dim: str
    values: tuple[float, ...]

    def __post_init__(self):
        values = tuple(float(v) for v in self.values)
        if not values or list(values) != sorted(set(values)) or not np.all(np.isfinite(values)):
            raise GatingError(f"quadrant divider {self.id!r} on {self.dim!r}: values must be finite, distinct, increasing")
        object.__setattr__(self, "values", values)

    def interval(self, location: float) -> tuple[float | None, float | None]:
        """The interval ``[low, high)`` between adjacent divider values that holds ``location``."""
        values = np.asarray(self.values)
        k = int(np.searchsorted(values, location, side="right"))
        low = None if k == 0 else float(values[k - 1])
        high = None if k == len(values) else float(values[k])
        return low, high


@dataclass(frozen=True)
class QuadrantGate:
    """Quadrant gate: ``dividers`` cut dimensions; each quadrant id names a location per divider.

    ``quadrants`` maps quadrant id -> {divider id: a coordinate inside that quadrant} (Gating-ML
    ``<Position divider_ref location>``). A divider a quadrant does not mention leaves that dimension
    unbounded. ``contains(data, quadrant_id)`` gives one quadrant's mask; ``masks(data)`` all of them.
    """

    dims: tuple[str, ...] = field(init=False)
    dividers: tuple[Divider, ...]
    quadrants: Mapping[str, Mapping[str, float]]

    def __post_init__(self):
        dividers = tuple(self.dividers)
        ids = [d.id for d in dividers]
        if not dividers or len(set(ids)) != len(ids):
            raise GatingError(f"quadrant gate needs dividers with distinct ids, got {ids}")
        if len({d.dim for d in dividers}) != len(dividers):
            raise GatingError(f"quadrant gate has two dividers on one dimension: {[d.dim for d in dividers]}")
        quadrants = {str(q): {str(k): float(v) for k, v in pos.items()} for q, pos in self.quadrants.items()}
        if not quadrants:
            raise GatingError("quadrant gate defines no quadrants")
        for q, pos in quadrants.items():
            unknown = sorted(set(pos) - set(ids))
            if unknown or not pos:
                raise GatingError(f"quadrant {q!r} refers to unknown divider(s) {unknown} (dividers: {ids})")
        object.__setattr__(self, "dividers", dividers)
        object.__setattr__(self, "quadrants", quadrants)
        object.__setattr__(self, "dims", tuple(d.dim for d in dividers))

    def rectangle(self, quadrant_id: str) -> RectangleGate:
        """The quadrant ``quadrant_id`` as a rectangle gate."""
        try:
            pos = self.quadrants[quadrant_id]
        except KeyError:
            raise GatingError(f"quadrant gate has no quadrant {quadrant_id!r} (has {sorted(self.quadrants)})") from None
        dims, lows, highs = [], [], []
        for divider in self.dividers:
            if divider.id in pos:
                low, high = divider.interval(pos[divider.id])
                dims.append(divider.dim)
                lows.append(low)
                highs.append(high)
        return RectangleGate(tuple(dims), tuple(lows), tuple(highs))

    def contains(self, data: Data, quadrant_id: str) -> np.ndarray:
        return self.rectangle(quadrant_id).contains(data)

    def masks(self, data: Data) -> dict[str, np.ndarray]:
        """Mask of every quadrant, keyed by quadrant id (in definition order)."""
        return {q: self.contains(data, q) for q in self.quadrants}

    def membership(self, data: Data, masks: Masks | None = None) -> np.ndarray:
        """Events inside any of the defined quadrants (each quadrant is its own population:
        evaluate ``rectangle(quadrant_id)`` for one)."""
        return np.logical_or.reduce(list(self.masks(data).values()))

    def drawing(self) -> Drawing:
        return Drawing("dividers", self.dims, cuts={d.dim: d.values for d in self.dividers})

    def extent(self, dim: str) -> tuple[float, ...]:
        return tuple(v for d in self.dividers if d.dim == dim for v in d.values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "quadrant",
            "dims": list(self.dims),
            "dividers": [{"id": d.id, "dim": d.dim, "values": list(d.values)} for d in self.dividers],
            "quadrants": {q: dict(pos) for q, pos in self.quadrants.items()},
        }


_BOOL_OPS = ("and", "or", "not")


@dataclass(frozen=True)
class BooleanGate:
    """``and`` / ``or`` / ``not`` over other populations' masks, referenced by id.

    ``complements[i]`` True uses operand i as its complement (Gating-ML ``use-as-complement``).
    ``and`` and ``or`` need at least two operands, ``not`` exactly one.
    """

    op: str
    operands: tuple[str, ...]
    complements: tuple[bool, ...] = ()

    def __post_init__(self):
        op = str(self.op).lower()
        operands = tuple(str(o) for o in self.operands)
        complements = tuple(bool(c) for c in self.complements) or (False,) * len(operands)
        if op not in _BOOL_OPS:
            raise GatingError(f"boolean gate operator {self.op!r} is not one of {list(_BOOL_OPS)}")
        if len(complements) != len(operands):
            raise GatingError(f"boolean gate: {len(operands)} operands but {len(complements)} complement flags")
        if op == "not" and len(operands) != 1:
            raise GatingError(f"boolean 'not' gate needs exactly one operand, got {list(operands)}")
        if op != "not" and len(operands) < 2:
            raise GatingError(f"boolean {op!r} gate needs at least two operands, got {list(operands)}")
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "operands", operands)
        object.__setattr__(self, "complements", complements)

    @property
    def dims(self) -> tuple[str, ...]:
        return ()

    def evaluate(self, masks: Mapping[str, np.ndarray]) -> np.ndarray:
        """Combine the operands' masks (each a boolean array over all events)."""
        missing = [o for o in self.operands if o not in masks]
        if missing:
            raise GatingError(f"boolean {self.op!r} gate refers to unknown population(s) {missing}")
        arrays = [np.asarray(masks[o], dtype=bool) != c for o, c in zip(self.operands, self.complements)]
        if len({a.shape for a in arrays}) > 1:
            raise GatingError(f"boolean {self.op!r} gate: operand masks {list(self.operands)} differ in length")
        if self.op == "not":
            return ~arrays[0]
        return np.logical_and.reduce(arrays) if self.op == "and" else np.logical_or.reduce(arrays)

    def membership(self, data: Data, masks: Masks | None = None) -> np.ndarray:
        return self.evaluate(masks or {})

    def drawing(self) -> Drawing:
        return Drawing("none")

    def extent(self, dim: str) -> tuple[float, ...]:
        return ()

    def to_dict(self) -> dict[str, Any]:
        return {"type": "boolean", "op": self.op, "operands": list(self.operands), "complements": list(self.complements)}


GATE_TYPES = (RangeGate, RectangleGate, PolygonGate, EllipsoidGate, QuadrantGate, BooleanGate)
"""The gate classes of this module (each implements :class:`Gate`)."""


def gate_from_dict(d: Mapping[str, Any]) -> Gate:
    """Rebuild a gate from its ``to_dict()`` form; GatingError on an unknown type or missing key."""
    try:
        kind = d["type"]
        if kind == "range":
            return RangeGate(d["dim"], d.get("low"), d.get("high"))
        if kind == "rectangle":
            return RectangleGate(tuple(d["dims"]), tuple(d["lows"]), tuple(d["highs"]))
        if kind == "polygon":
            return PolygonGate(tuple(d["dims"]), tuple(tuple(v) for v in d["vertices"]))
        if kind == "ellipsoid":
            return EllipsoidGate(tuple(d["dims"]), tuple(d["mean"]), tuple(map(tuple, d["covariance"])), d["distance_square"])
        if kind == "quadrant":
            dividers = tuple(Divider(v["id"], v["dim"], tuple(v["values"])) for v in d["dividers"])
            return QuadrantGate(dividers, d["quadrants"])
        if kind == "boolean":
            return BooleanGate(d["op"], tuple(d["operands"]), tuple(d.get("complements", ())))
    except KeyError as exc:
        raise GatingError(f"gate dict of type {d.get('type')!r} lacks key {exc}") from None
    raise GatingError(f"unknown gate type {d.get('type')!r}")
