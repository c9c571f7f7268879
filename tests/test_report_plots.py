"""Report plots: deterministic PNGs, quadrant statistics, gate pairing, colours, axis labels."""
import numpy as np

from tilpheno.gates.geometry import PolygonGate, RangeGate
from tilpheno.report import plots
from tilpheno.report.product import sibling_range_pairs
from tilpheno.transforms import Linear, Logicle


def test_quadrant_percentages_by_hand():
    # 10 events: x >= 1 for 4 of them, y >= 2 for 5; one NaN event is ignored
    x = np.array([0, 0, 0, 0, 0, 1, 1, 1, 5, 0.5, np.nan])
    y = np.array([0, 3, 3, 0, 0, 2, 0, 2, 9, 1.99, 5])
    q = plots.quadrant_percentages(x, y, RangeGate("a", 1.0), RangeGate("b", 2.0), "a", "b")
    # (x+, y+): x=1,y=2 / x=1,y=2 / x=5,y=9 -> 3 ; (x+, y-): x=1,y=0 -> 1 ; (x-, y+): 2 ; (x-, y-): 4
    assert q == {(True, True): 30.0, (True, False): 10.0, (False, True): 20.0, (False, False): 40.0}


def test_sibling_range_pairs_first_two_distinct_dims_per_parent():
    gates = [
        ("cells", "root", PolygonGate(("FSC-A", "SSC-A"), ((0, 0), (1, 0), (1, 1))), "cells"),
        ("CD3+", "lymph", RangeGate("CD3", 0.3), "fmo"),
        ("CD56+", "lymph", RangeGate("CD56", 0.25), "fmo"),
        ("PD1+", "lymph", RangeGate("PD1", 0.3), "fmo"),
        ("CD4+", "CD3+", RangeGate("CD4", 0.3), "fmo"),
        ("CD4hi", "CD3+", RangeGate("CD4", 0.6), "fmo"),
        ("CD8+", "CD3+", RangeGate("CD8", 0.2), "fmo"),
        ("CD8+PD1+", "CD8+", RangeGate("PD1", 0.3), "fmo"),
    ]
    pairs = [(a[0], b[0]) for a, b in sibling_range_pairs(gates)]
    assert pairs == [("CD3+", "CD56+"), ("CD4+", "CD8+")]


def test_pngs_are_deterministic_and_decodable():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0.5, 0.1, 5000), rng.normal(50000, 9000, 5000)
    args = dict(gate=RangeGate("CD3", 0.5), inside=x >= 0.5, population="CD3+", pct_of_parent=50.0, title="t")
    ax_cd3 = plots.Axis("CD3", plots.axis_label("CD3", "FITC-A"), Logicle())
    a = plots.histogram_png(x, ax_cd3, **args)
    b = plots.histogram_png(x, ax_cd3, **args)
    assert a == b and a[:8] == b"\x89PNG\r\n\x1a\n"
    d = plots.density_png(x, y, ax_cd3, plots.Axis("SSC-A", "SSC-A", Linear()), **args)
    assert d[:8] == b"\x89PNG\r\n\x1a\n" and len(d) > 2000
    assert plots.to_data_uri(d).startswith("data:image/png;base64,iVBOR")


def test_axis_labels_and_colours():
    assert plots.axis_label("CD3", "FITC-A") == "CD3 (FITC-A)"
    assert plots.axis_label("FSC-A", "FSC-A") == "FSC-A"
    assert plots.population_colour("CD8+PD1+") == plots.population_colour("PD1+") == plots.population_colour("PD1")
    assert plots.population_colour("CD4+") != plots.population_colour("CD8+")
    assert plots.population_colour("my gate") == plots.population_colour("my gate")
