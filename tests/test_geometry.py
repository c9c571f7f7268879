"""Gate geometry: hand-checkable points inside, outside and on boundaries (Gating-ML 2.0 rules)."""
import json

import numpy as np
import pytest
from memory_support import peak_bytes

from tilpheno.errors import GatingError
from tilpheno.gates.geometry import (
    BooleanGate,
    Divider,
    EllipsoidGate,
    PolygonGate,
    QuadrantGate,
    RangeGate,
    RectangleGate,
    gate_from_dict,
)


def xy(points):
    pts = np.asarray(points, dtype=float)
    return {"x": pts[:, 0], "y": pts[:, 1]}


def test_range_min_inclusive_max_exclusive():
    data = {"x": np.array([0.999, 1.0, 2.5, 3.999, 4.0, np.nan])}
    assert RangeGate("x", 1.0, 4.0).contains(data).tolist() == [False, True, True, True, False, False]


def test_range_open_sides():
    data = {"x": np.array([-1e300, 0.0, 5.0])}
    assert RangeGate("x", low=0.0).contains(data).tolist() == [False, True, True]
    assert RangeGate("x", high=0.0).contains(data).tolist() == [True, False, False]


def test_range_needs_a_bound():
    with pytest.raises(GatingError, match="'x'"):
        RangeGate("x")


def test_rectangle_corners():
    gate = RectangleGate(("x", "y"), (0.0, 0.0), (1.0, 2.0))
    # lower-left corner in; any point on the upper or right edge out
    data = xy([(0, 0), (0.5, 1), (1, 1), (0.5, 2), (1, 2), (-0.1, 1), (0, 1.999)])
    assert gate.contains(data).tolist() == [True, True, False, False, False, False, True]


def test_rectangle_unbounded_dimension_side():
    gate = RectangleGate(("x", "y"), (None, 1.0), (0.0, None))
    data = xy([(-1e9, 1e9), (0, 5), (-1, 0.5)])
    assert gate.contains(data).tolist() == [True, False, False]


def test_missing_dimension_names_it():
    with pytest.raises(GatingError, match="'y'"):
        RectangleGate(("x", "y"), (0, 0), (1, 1)).contains({"x": np.zeros(3)})


SQUARE = ((0.0, 0.0), (4.0, 0.0), (4.0, 4.0), (0.0, 4.0))


def test_polygon_square_interior_and_exterior():
    gate = PolygonGate(("x", "y"), SQUARE)
    data = xy([(2, 2), (0.1, 3.9), (5, 2), (-1, 2), (2, 5), (2, -1)])
    assert gate.contains(data).tolist() == [True, True, False, False, False, False]


def test_polygon_square_boundaries_half_open():
    # Half-open crossing rule: left and bottom edges inside, right and top edges outside;
    # of the corners only the lower-left one is inside.
    gate = PolygonGate(("x", "y"), SQUARE)
    data = xy([(0, 2), (2, 0), (4, 2), (2, 4), (0, 0), (4, 0), (4, 4), (0, 4)])
    assert gate.contains(data).tolist() == [True, True, False, False, True, False, False, False]


def test_polygon_orientation_does_not_matter():
    rng = np.random.default_rng(1)
    data = {"x": rng.uniform(-1, 5, 2000), "y": rng.uniform(-1, 5, 2000)}
    tri = ((0.0, 0.0), (4.0, 0.0), (0.0, 4.0))
    a = PolygonGate(("x", "y"), tri).contains(data)
    b = PolygonGate(("x", "y"), tri[::-1]).contains(data)
    assert np.array_equal(a, b)
    # independent truth for a right triangle: x > 0, y > 0, x + y < 4 (ignoring measure-zero edges)
    truth = (data["x"] > 0) & (data["y"] > 0) & (data["x"] + data["y"] < 4)
    assert np.array_equal(a, truth)


def test_polygon_self_intersecting_bowtie_even_odd():
    # bow-tie: (0,0)-(2,2)-(2,0)-(0,2): two triangles meeting at (1,1)
    gate = PolygonGate(("x", "y"), ((0, 0), (2, 2), (2, 0), (0, 2)))
    data = xy([(0.2, 1.0), (1.8, 1.0), (1.0, 0.2), (1.0, 1.8)])
    assert gate.contains(data).tolist() == [True, True, False, False]


def test_polygon_concave_notch():
    # U shape: notch between x=1..3 above y=1
    u = ((0, 0), (4, 0), (4, 4), (3, 4), (3, 1), (1, 1), (1, 4), (0, 4))
    gate = PolygonGate(("x", "y"), u)
    data = xy([(0.5, 3), (3.5, 3), (2, 3), (2, 0.5)])
    assert gate.contains(data).tolist() == [True, True, False, True]


def test_polygon_needs_three_vertices():
    with pytest.raises(GatingError, match="3"):
        PolygonGate(("x", "y"), ((0, 0), (1, 1)))


def test_ellipse_axis_aligned_boundary_inclusive():
    # semi-axes 2 (x) and 1 (y) around (1, 1): covariance diag(4, 1), distance_square 1
    gate = EllipsoidGate(("x", "y"), (1.0, 1.0), ((4.0, 0.0), (0.0, 1.0)), 1.0)
    data = xy([(1, 1), (3, 1), (1, 2), (3.01, 1), (1, 2.01), (2.5, 1.6)])
    # (2.5,1.6): 1.5^2/4 + 0.6^2 = 0.5625 + 0.36 = 0.9225 <= 1
    assert gate.contains(data).tolist() == [True, True, True, False, False, True]


def test_ellipse_rotated():
    # covariance with eigenvectors along the diagonals: variance 9 along (1,1), 1 along (1,-1)
    r = np.array([[1, 1], [1, -1]]) / np.sqrt(2)
    cov = r @ np.diag([9.0, 1.0]) @ r.T
    gate = EllipsoidGate(("x", "y"), (0.0, 0.0), tuple(map(tuple, cov)), 1.0)
    data = xy([(2.0, 2.0), (2.2, 2.2), (0.6, -0.6), (0.8, -0.8)])
    # along (1,1) the boundary is at distance 3 (|(2,2)| = 2.83 in, 3.11 out); along (1,-1) at 1
    assert gate.contains(data).tolist() == [True, False, True, False]


def test_ellipsoid_3d_sphere():
    gate = EllipsoidGate(("a", "b", "c"), (0, 0, 0), ((1, 0, 0), (0, 1, 0), (0, 0, 1)), 4.0)
    pts = np.array([(0, 0, 2), (1.2, 1.2, 1.2), (1.1, 1.1, 1.1), (0, 2.001, 0)])
    data = {"a": pts[:, 0], "b": pts[:, 1], "c": pts[:, 2]}
    # 3*1.2^2 = 4.32 > 4; 3*1.1^2 = 3.63 <= 4
    assert gate.contains(data).tolist() == [True, False, True, False]


def test_ellipsoid_singular_covariance_rejected():
    with pytest.raises(GatingError, match="singular"):
        EllipsoidGate(("x", "y"), (0, 0), ((1, 1), (1, 1)), 1.0)


def test_quadrants_partition_the_plane():
    gate = QuadrantGate(
        (Divider("dx", "x", (1.0,)), Divider("dy", "y", (2.0,))),
        {"NN": {"dx": 0, "dy": 0}, "PN": {"dx": 5, "dy": 0}, "NP": {"dx": 0, "dy": 5}, "PP": {"dx": 5, "dy": 5}},
    )
    data = xy([(1, 2), (0.99, 1.99), (1, 1.99), (0.99, 2)])
    masks = gate.masks(data)
    assert masks["PP"].tolist() == [True, False, False, False]
    assert masks["NN"].tolist() == [False, True, False, False]
    assert masks["PN"].tolist() == [False, False, True, False]
    assert masks["NP"].tolist() == [False, False, False, True]
    assert np.array_equal(sum(m.astype(int) for m in masks.values()), np.ones(4, dtype=int))


def test_quadrant_with_middle_band_and_unbounded_dimension():
    gate = QuadrantGate((Divider("d", "x", (1.0, 3.0)), Divider("e", "y", (0.0,))), {"mid": {"d": 2.0}})
    data = xy([(0.5, 9), (1, -9), (2.9, 0), (3, 0)])
    assert gate.contains(data, "mid").tolist() == [False, True, True, False]


def test_quadrant_unknown_divider_rejected():
    with pytest.raises(GatingError, match="zz"):
        QuadrantGate((Divider("d", "x", (1.0,)),), {"q": {"zz": 0}})


def test_boolean_gates():
    masks = {"A": np.array([1, 1, 0, 0], bool), "B": np.array([1, 0, 1, 0], bool)}
    assert BooleanGate("and", ("A", "B")).evaluate(masks).tolist() == [True, False, False, False]
    assert BooleanGate("or", ("A", "B")).evaluate(masks).tolist() == [True, True, True, False]
    assert BooleanGate("not", ("A",)).evaluate(masks).tolist() == [False, False, True, True]
    assert BooleanGate("and", ("A", "B"), (False, True)).evaluate(masks).tolist() == [False, True, False, False]


def test_boolean_unknown_operand_and_arity():
    with pytest.raises(GatingError, match="'C'"):
        BooleanGate("and", ("A", "C")).evaluate({"A": np.ones(2, bool)})
    with pytest.raises(GatingError, match="not"):
        BooleanGate("not", ("A", "B"))
    with pytest.raises(GatingError, match="xor"):
        BooleanGate("xor", ("A", "B"))


@pytest.mark.parametrize(
    "gate",
    [
        RangeGate("x", None, 3.0),
        RectangleGate(("x", "y"), (0.0, None), (1.0, 2.0)),
        PolygonGate(("x", "y"), SQUARE),
        EllipsoidGate(("x", "y"), (1.0, 1.0), ((4.0, 0.5), (0.5, 1.0)), 2.0),
        QuadrantGate((Divider("d", "x", (1.0,)),), {"lo": {"d": 0.0}, "hi": {"d": 2.0}}),
        BooleanGate("or", ("A", "B"), (True, False)),
    ],
)
def test_to_dict_round_trip_through_json(gate):
    d = json.loads(json.dumps(gate.to_dict()))
    assert gate_from_dict(d) == gate


def test_gate_from_dict_unknown_type():
    with pytest.raises(GatingError, match="hexagon"):
        gate_from_dict({"type": "hexagon"})


def test_polygon_agrees_with_flowutils_reference_on_grid_points():
    # integer grid points hit vertices and edges of an integer-vertex polygon many times over
    from flowutils.gating import points_in_polygon

    verts = ((0.0, 0.0), (6.0, 1.0), (3.0, 3.0), (6.0, 6.0), (1.0, 5.0), (2.0, 2.0))
    gx, gy = np.meshgrid(np.arange(-1, 8, 0.5), np.arange(-1, 8, 0.5))
    data = {"x": gx.ravel(), "y": gy.ravel()}
    reference = points_in_polygon(np.array(verts), np.column_stack([data["x"], data["y"]]))
    assert np.array_equal(PolygonGate(("x", "y"), verts).contains(data), reference)


def test_random_polygons_and_ellipses_agree_with_flowutils():
    """Random (often self-intersecting) integer polygons, points on a half-integer grid hitting
    vertices and edges; random ellipses. flowutils is FlowKit's reference implementation."""
    from flowutils.gating import points_in_ellipsoid, points_in_polygon

    rng = np.random.default_rng(11)
    gx, gy = np.meshgrid(np.arange(-2, 12, 0.5), np.arange(-2, 12, 0.5))
    pts = np.column_stack([gx.ravel(), gy.ravel()])
    data = {"x": pts[:, 0], "y": pts[:, 1]}
    for _ in range(40):
        verts = rng.integers(0, 10, size=(rng.integers(3, 9), 2)).astype(float)
        ours = PolygonGate(("x", "y"), tuple(map(tuple, verts))).contains(data)
        assert np.array_equal(ours, points_in_polygon(verts, pts))
    for _ in range(20):
        a = rng.normal(size=(2, 2))
        cov = a @ a.T + 0.1 * np.eye(2)
        mean = rng.uniform(0, 10, 2)
        ours = EllipsoidGate(("x", "y"), tuple(mean), tuple(map(tuple, cov)), 4.0).contains(data)
        assert np.array_equal(ours, points_in_ellipsoid(cov, mean, 4.0, pts))


def test_polygon_membership_reuses_its_buffers_edge_after_edge():
    """Memory traffic: a pentagon's membership of 10^6 points holds at its peak (tracemalloc: NumPy's
    allocations) at most 2.5 columns' bytes: two float64 buffers (the cross product and its second term) and
    three masks, written again by every edge, 2.375; main before stop 63 made each edge's temporaries anew
    (3.25). The membership itself is flowutils' (above)."""
    rng = np.random.default_rng(4)
    data = {"x": rng.normal(0, 1, 1_000_000), "y": rng.normal(0, 1, 1_000_000)}
    gate = PolygonGate(("x", "y"), ((0, 0), (1, 0.2), (1.2, 1), (0.3, 1.5), (-0.5, 0.7)))
    inside, peak = peak_bytes(lambda: gate.contains(data))
    assert 0 < inside.sum() < inside.size
    assert peak <= 2.5 * data["x"].nbytes, peak / data["x"].nbytes
