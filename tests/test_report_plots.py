"""Report plots: deterministic self-contained SVG, fixed logicle axes, label placement, quadrant names."""
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from tilpheno.errors import StrategyError
from tilpheno.gates.geometry import PolygonGate, RangeGate
from tilpheno.gates.strategy import default_strategy_paths, load_strategy, parse_strategy
from tilpheno.report import plots
from tilpheno.report.product import quadrant_names, sibling_range_pairs
from tilpheno.transforms import Linear, Logicle

SVG = "{http://www.w3.org/2000/svg}"
FULL = (0.0, 1.0)


def _texts(svg: str) -> dict[str, list[tuple[str, float, float]]]:
    """gid suffix ('xtick-3', 'quadrant-+-', ...) -> [(text, x, y)] of the <text> elements under it."""
    root = ET.fromstring(svg)
    out: dict[str, list] = {}
    for group in root.iter(f"{SVG}g"):
        gid = group.get("id", "")
        if "-tp-" in gid:
            key = gid.split("-tp-", 1)[1]
            for t in group.iter(f"{SVG}text"):
                lines = [t.text or ""] + [s.text or "" for s in t.iter(f"{SVG}tspan")]
                out.setdefault(key, []).append((" ".join(x for x in lines if x).strip(), float(t.get("x", 0)), float(t.get("y", 0))))
    return out


def _box(svg: str, key: str) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) in SVG user units of the rounded label box drawn under gid ``tp-<key>``."""
    group = next(g for g in ET.fromstring(svg).iter(f"{SVG}g") if g.get("id", "").endswith("-tp-" + key))
    numbers = [float(v) for v in re.findall(r"-?\d+\.?\d*", next(group.iter(f"{SVG}path")).get("d"))]
    xs, ys = numbers[0::2], numbers[1::2]
    return min(xs), max(xs), min(ys), max(ys)


def _to_svg(x, y, xlim, ylim, rect=plots.AXES_RECT):
    """Data coordinates -> SVG user units (points; y down) for a plot drawn with ``rect``."""
    w, h = (72 * v for v in plots.FIG_INCHES)
    left, bottom, width, height = rect
    sx = (left + (x - xlim[0]) / (xlim[1] - xlim[0]) * width) * w
    sy = h - (bottom + (y - ylim[0]) / (ylim[1] - ylim[0]) * height) * h
    return sx, sy


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


def _density(n=5000, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(0.5, 0.1, n), rng.normal(50000, 9000, n)


def test_svg_is_deterministic_inline_ready_and_small():
    x, y = _density(100_000)
    ax_cd3 = plots.Axis("CD3", plots.axis_label("CD3", "FITC-A"), Logicle(), FULL)
    ax_ssc = plots.Axis("SSC-A", "SSC-A", Linear(), (0.0, 262144.0))
    args = dict(gate=RangeGate("CD3", 0.5), population="CD3+", pct_of_parent=50.0, title="t")
    a = plots.histogram_plot(x, ax_cd3, **args)
    assert a == plots.histogram_plot(x, ax_cd3, **args)
    d = plots.density_plot(x, y, ax_cd3, ax_ssc, **args)
    for svg in (a, d):
        assert svg.startswith('<svg class="plot" role="img" aria-label=') and svg.rstrip().endswith("</svg>")
        assert "<?xml" not in svg and "<style" not in svg and "<metadata" not in svg and "<script" not in svg
        ET.fromstring(svg)   # well-formed
        ids = re.findall(r'\sid="([^"]+)"', svg)
        prefix = ids[0].split("-")[0]
        assert all(i.startswith(prefix + "-") for i in ids)
        refs = re.findall(r'(?:url\(#|href="#)([^")]+)', svg)
        assert refs and set(refs) <= set(ids)   # every reference resolves inside this plot
    # the density is one embedded raster (128 x 128 bins), the rest vector: size does not grow with events
    assert len(re.findall(r"<image ", d)) == 1 and "data:image/png;base64," in d and "pixelated" in d
    small = plots.density_plot(*_density(2000), ax_cd3, ax_ssc, **args)
    assert len(d) < 40_000 and len(small) < 40_000 and len(a) < 40_000


def test_text_is_escaped_text_not_paths():
    evil = '<script>alert("x")</script>'
    axis = plots.Axis("CD3", plots.axis_label("CD3", evil), Logicle(), FULL)
    svg = plots.histogram_plot(_density()[0], axis, gate=RangeGate("CD3", 0.5), population="CD3+",
                               pct_of_parent=50.0, title=evil)
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    texts = _texts(svg)
    assert texts["xlabel"][0][0] == f"CD3 ({evil})" and texts["label"][0][0] == "CD3+ 50.0%"


def test_display_limits_and_decade_ticks():
    logicle = Logicle()
    assert plots.display_limits(logicle, 262144.0) == (0.0, pytest.approx(1.0))
    assert plots.display_limits(logicle, None) == (0.0, pytest.approx(1.0))   # the transform's T
    assert plots.display_limits(Linear(), 1048576.0) == (0.0, 1048576.0)
    major, labels, minor = plots.decade_ticks(logicle, (0.0, 1.0))
    shown = [t for t in labels if t]
    assert shown == ["-10²", "0", "10²", "10³", "10⁴", "10⁵"]
    np.testing.assert_allclose(major[labels.index("10³")], logicle.apply(np.array([1000.0]))[0])
    # minor ticks at 2..9 x each decade, between the majors
    assert np.all(np.diff(minor) > 0) and len(minor) > 20
    np.testing.assert_allclose(minor, np.sort(minor))
    assert plots.decade_ticks(Linear(), (0.0, 1.0)) is None


def test_fixed_axes_do_not_depend_on_the_data():
    """Two files with different ranges drawn on the same Axis get identical tick positions."""
    axis = plots.Axis("PD1", "PD1 (PE-A)", Logicle(), FULL)
    rng = np.random.default_rng(3)
    ticks = []
    for centre in (0.2, 0.7):
        svg = plots.histogram_plot(rng.normal(centre, 0.03, 4000), axis, gate=RangeGate("PD1", 0.4),
                                   population="PD1+", pct_of_parent=10.0, title="t")
        texts = _texts(svg)
        ticks.append(sorted((v[0][0], v[0][1]) for k, v in texts.items() if k.startswith("xtick")))
    assert ticks[0] == ticks[1] and [t for t, _ in ticks[0]] == ["-10²", "0", "10²", "10³", "10⁴", "10⁵"]


def test_quadrant_labels_avoid_the_clusters_and_carry_names():
    """Clusters sit in the outer corner of two quadrants: their labels move to a free corner; the
    quadrants without events keep FlowJo's outer-corner place."""
    rng = np.random.default_rng(5)
    centres = [(0.9, 0.9), (0.05, 0.06)]   # top-right and bottom-left outer corners
    x = np.concatenate([rng.normal(cx, 0.02, 4000) for cx, _ in centres])
    y = np.concatenate([rng.normal(cy, 0.02, 4000) for _, cy in centres])
    ax_x = plots.Axis("CD3", "CD3 (FITC-A)", Logicle(), FULL)
    ax_y = plots.Axis("CD56", "CD56 (APC-A)", Logicle(), FULL)
    names = {(True, True): "NKT", (False, True): "NK", (True, False): "T", (False, False): "double negative"}
    svg = plots.quadrant_plot(x, y, ax_x, ax_y, xgate=RangeGate("CD3", 0.5), ygate=RangeGate("CD56", 0.5),
                              xpopulation="CD3+", ypopulation="CD56+", title="t", names=names)
    texts = _texts(svg)
    assert {k: " ".join(t for t, _, _ in v) for k, v in texts.items() if k.startswith("quadrant")} == {
        "quadrant-++": "NKT 50.0%", "quadrant-+-": "T 0.0%", "quadrant--+": "NK 0.0%",
        "quadrant---": "double negative 50.0%"}
    for key, (cx, cy) in (("quadrant-++", centres[0]), ("quadrant---", centres[1])):
        x0, x1, y0, y1 = _box(svg, key)
        sx, sy = _to_svg(cx, cy, FULL, FULL)
        # the cluster (2 SD = 0.04 of the axis, about 7 points) is clear of the label box
        assert not (x0 - 8 < sx < x1 + 8 and y0 - 8 < sy < y1 + 8), key
    x0, _, y0, _ = _box(svg, "quadrant--+")            # empty quadrant: top-left corner of the plot
    sx, sy = _to_svg(0.0, 1.0, FULL, FULL)
    assert 0 < x0 - sx < 6 and 0 < y0 - sy < 6


def test_fmo_legend_sits_above_the_axes():
    rng = np.random.default_rng(2)
    axis = plots.Axis("PD1", "PD1 (PE-A)", Logicle(), FULL)
    svg = plots.fmo_overlay_plot(rng.normal(0.4, 0.05, 3000), rng.normal(0.3, 0.04, 3000), axis, threshold=0.9,
                                 pct_stained=12.0, pct_fmo=0.5, marker="PD1", threshold_note="threshold: 99.5th pct of FMO",
                                 title="t")
    texts = _texts(svg)
    top_of_axes = 72 * plots.FIG_INCHES[1] * (1 - plots.FMO_AXES_RECT[1] - plots.FMO_AXES_RECT[3])
    legend = texts["legend"]
    assert {t for t, _, _ in legend} == {"FMO: 0.5% +", "stained: 12.0% +", "threshold: 99.5th pct of FMO"}
    assert all(y < top_of_axes for _, _, y in legend)   # SVG y grows downwards: above the axes


def test_fmo_legend_names_the_rule_that_placed_the_threshold():
    """The FMO overlay's dashed line is the threshold in use: its legend names the candidate that won
    (the stained valley, the FMO percentile carried over, or the plain percentile), never "99.5th
    pct of FMO" for a cut the FMO has 0 % above (it said so for every gate)."""
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    from tilpheno.phenotype import analyze_product
    from tilpheno.report.product import _fmo_pairs, fmo_figures

    sys.path.insert(0, str(Path(__file__).parent))
    from strategy_support import sample_rows

    result = analyze_product("TIL001", sample_rows("TIL001"), [load_strategy(p) for p in default_strategy_paths()])
    winners = {str(row.population): str(row.winner) for _, row, _ in _fmo_pairs(result)}
    assert {"stained_valley", "fmo_percentile"} <= set(winners.values()), winners
    expected = {"stained_valley": "threshold: stained valley", "fmo_percentile": "threshold: 99.5th pct of FMO",
                "fmo_relative": "threshold: FMO pct carried over"}
    figures = fmo_figures(result, 99.5)
    assert {f.population for f in figures} == set(winners)
    for figure in figures:
        legend = {t for t, _, _ in _texts(figure.svg)["legend"]}
        assert expected[winners[figure.population]] in legend, (figure.population, legend)
    from tilpheno.report.product import threshold_note

    fmo, unstained = False, True
    assert threshold_note(SimpleNamespace(winner="fmo_relative"), fmo, 99.5) == "threshold: FMO pct carried over"
    assert threshold_note(SimpleNamespace(winner="fmo_percentile"), unstained, 99.0) == "threshold: 99th pct of unstained control"
    # stop 58: a log-normal fit's cut moved down to the parent's negatives read on their lower sides (not a percentile)
    assert (threshold_note(SimpleNamespace(winner="outside_pooled"), unstained, 99.5)
            == "threshold: the parent's negatives read on their lower sides, in and outside the reference")
    # the FMO percentile beyond the stained parent's events, clamped to its largest (undet_52's toy: 0.271 -> 0.203)
    clamped = SimpleNamespace(winner="fmo_percentile", fmo_threshold=0.271, value_transformed=0.203,
                              unclamped_threshold=0.271)
    assert threshold_note(clamped, fmo, 99.5) == "threshold: 99.5th pct of FMO (clamped to the stained data)"


def test_fmo_legend_says_a_clamped_carried_cut_was_clamped():
    """The FMO overlay's legend said 'clamped' only for the FMO percentile (its fmo_threshold differing from the
    cut); a carried cut clamped to the stained parent's events read 'threshold: FMO pct carried over', the line at
    the parent's largest event, not at the carry-over (stop 52's note) -> the threshold record keeps the winner's
    own cut where it was clamped (``unclamped_threshold``) and the legend says 'clamped' for any winner. Here the
    stained PD1 negatives are shifted up and their lower side three times as wide as the FMO's, their upper side
    narrow: the carry-over with the lower side's spread lies beyond every stained parent event."""
    import math
    from types import SimpleNamespace

    from fmo_support import fmo_toy
    from tilpheno.report.product import threshold_note

    def pd1(rng: np.random.Generator, n: int) -> np.ndarray:   # mode 0.3, lower side SD 0.1, upper side 0.01
        return np.where(rng.random(n) < 0.5, 0.3 - np.abs(rng.normal(0, 0.1, n)), 0.3 + np.abs(rng.normal(0, 0.01, n)))

    _, parent, _, record = fmo_toy(pd1)
    assert record["winner"] == "fmo_relative" and record["relative_threshold"] > parent.max()
    assert record["unclamped_threshold"] == record["relative_threshold"] and record["value_transformed"] == parent.max()
    row, fmo, unstained = SimpleNamespace(**record), False, True
    assert threshold_note(row, fmo, 99.5) == "threshold: FMO pct carried over (clamped to the stained data)"
    assert threshold_note(row, unstained, 99.5) == "threshold: control pct carried over (clamped to the stained data)"
    unclamped = SimpleNamespace(**{**record, "unclamped_threshold": math.nan})
    assert threshold_note(unclamped, fmo, 99.5) == "threshold: FMO pct carried over"


def test_quadrant_names_from_the_strategy():
    surface = load_strategy(default_strategy_paths()[0])
    assert quadrant_names(surface, "CD3+", "CD56+") == {
        (True, False): "T", (True, True): "NKT", (False, True): "NK", (False, False): "double negative"}
    # without a quadrants entry, boolean populations x & y name their quadrants
    text = default_strategy_paths()[0].read_text().split("\nquadrants:")[0]
    bare = parse_strategy(text, "bare.yaml")
    assert quadrant_names(bare, "CD3+", "CD56+") == {(False, True): "NK", (True, True): "NKT"}
    assert quadrant_names(bare, "CD4+", "CD8+") == {(True, True): "CD4+CD8+"}
    with pytest.raises(StrategyError, match=r"bad.yaml:\d+: quadrants\[0\]\.names"):
        parse_strategy(text + '\nquadrants:\n  - {x: CD3+, y: CD56+, names: {"+x": T}}\n', "bad.yaml")
    with pytest.raises(StrategyError, match=r"quadrants\[0\]\.y: unknown population 'CD99\+'"):
        parse_strategy(text + '\nquadrants:\n  - {x: CD3+, y: CD99+, names: {"++": T}}\n', "bad.yaml")


def test_axis_labels_and_colours():
    assert plots.axis_label("CD3", "FITC-A") == "CD3 (FITC-A)"
    assert plots.axis_label("FSC-A", "FSC-A") == "FSC-A"
    from tilpheno.study import default_study

    til = default_study().colours   # the colours come from the study's config
    assert plots.population_colour("CD8+PD1+", til) == plots.population_colour("PD1+", til) == til["PD1"] == "#6a3d9a"
    assert plots.population_colour("CD4+", til) != plots.population_colour("CD8+", til)
    assert plots.population_colour("my gate", til) == plots.population_colour("my gate") in plots._PALETTE
    # without a study's colours every name gets a generic palette colour (no TIL name in the code)
    assert plots.population_colour("PD1+") in plots._PALETTE and plots.population_colour("PD1+") != til["PD1"]


def test_a_plot_does_not_depend_on_what_was_drawn_before():
    """A plot drawn after others of every kind (histogram, FMO overlay with its legend, quadrants)
    is byte for byte the density plot with a polygon gate that a thread that never drew anything
    makes (the only state kept between plots is ``report.svg``'s glyph-width cache)."""
    import threading

    x, y = _density(20_000, seed=3)
    ax_cd3 = plots.Axis("CD3", plots.axis_label("CD3", "FITC-A"), Logicle(), FULL)
    ax_ssc = plots.Axis("SSC-A", "SSC-A", Linear(), (0.0, 262144.0))
    ax_cd56 = plots.Axis("CD56", "CD56 (APC-A)", Logicle(), FULL)
    polygon = PolygonGate(("CD3", "SSC-A"), ((0.4, 20000.0), (0.8, 20000.0), (0.8, 90000.0), (0.4, 90000.0)))

    def target():
        return plots.density_plot(x, y, ax_cd3, ax_ssc, gate=polygon, population="T cells", pct_of_parent=61.5,
                                  title="lymphocytes: T cells")

    fresh: list[str] = []
    worker = threading.Thread(target=lambda: fresh.append(target()))
    worker.start()
    worker.join()
    plots.histogram_plot(x, ax_cd3, gate=RangeGate("CD3", 0.5), population="CD3+", pct_of_parent=50.0, title="a")
    plots.fmo_overlay_plot(x, x * 0.8, ax_cd3, threshold=0.6, pct_stained=12.0, pct_fmo=0.5, marker="CD3",
                           threshold_note="threshold", title="b")
    plots.quadrant_plot(x, x[::-1], ax_cd3, ax_cd56, xgate=RangeGate("CD3", 0.5), ygate=RangeGate("CD56", 0.5),
                        xpopulation="CD3+", ypopulation="CD56+", title="c")
    again = target()
    assert again == fresh[0]
    texts = _texts(again)   # nothing of the earlier plots is left on the figure
    assert texts["label"][0][0] == "T cells 61.5%" and texts["xlabel"][0][0] == "CD3 (FITC-A)"
    assert "legend" not in texts and not any(k.startswith("quadrant") for k in texts)
    assert texts["title"][0][0] == "lymphocytes: T cells"


def test_density_counts_are_numpys_histogram2d_without_its_binary_search(monkeypatch):
    """The density plots' counts (80 plots per product of the benchmark folder) came from
    np.histogram2d, whose binary search of every value among the edges took 2.2 ms per 20,000
    events; each value's bin is now computed (0.25 ms). Counts, dtype and memory layout are
    np.histogram2d's, on random ranges and on values at, just below and just above every edge; and a
    density plot is the same SVG without numpy's histogramdd."""
    rng = np.random.default_rng(3)
    for _ in range(300):
        xlo, ylo = rng.normal(0, 3), rng.normal(0, 1)
        xlim, ylim = (float(xlo), float(xlo + 10 ** rng.uniform(-3, 4))), (float(ylo), float(ylo + 10 ** rng.uniform(-2, 3)))
        ex, ey = np.linspace(*xlim, plots.BINS + 1), np.linspace(*ylim, plots.BINS + 1)
        n = int(rng.integers(0, 3000))
        x = np.clip(np.concatenate([rng.uniform(*xlim, n), ex, np.nextafter(ex, -np.inf), np.nextafter(ex, np.inf)]), *xlim)
        y = np.clip(np.concatenate([rng.uniform(*ylim, n), ey, np.nextafter(ey, np.inf), np.nextafter(ey, -np.inf)]), *ylim)
        expected = np.histogram2d(x, y, bins=plots.BINS, range=(xlim, ylim))[0]
        counts = plots._counts_2d(x, y, xlim, ylim)
        assert np.array_equal(counts, expected) and counts.dtype == expected.dtype and counts.strides == expected.strides
    x, y = _density(20_000)
    ax_cd3 = plots.Axis("CD3", plots.axis_label("CD3", "FITC-A"), Logicle(), FULL)
    ax_ssc = plots.Axis("SSC-A", "SSC-A", Linear(), (0.0, 262144.0))
    args = dict(gate=RangeGate("CD3", 0.5), population="CD3+", pct_of_parent=50.0, title="t")
    reference = plots.density_plot(x, y, ax_cd3, ax_ssc, **args)

    def no_histogramdd(*a, **kw):
        raise AssertionError("np.histogramdd called")

    monkeypatch.setattr(np, "histogramdd", no_histogramdd)
    assert plots.density_plot(x, y, ax_cd3, ax_ssc, **args) == reference


def test_density_png_decodes_to_the_same_pixels_at_the_faster_zlib_level(monkeypatch):
    """The density images are compressed at zlib level 4 (``svg.PNG_LEVEL``) instead of 6: 0.32
    instead of 0.75 ms per image, 11 % more bytes. A PNG decoder (Pillow) reads back exactly the
    RGBA array drawn, and the same pixels as the level-6 PNG of before; the file is a valid PNG
    (Pillow's ``verify``) whose IDAT is level 4's."""
    import base64
    import io
    import zlib

    from PIL import Image

    from tilpheno.report import svg

    drawn: list[np.ndarray] = []
    png = svg.png
    monkeypatch.setattr(svg, "png", lambda rgba: (drawn.append(rgba.copy()), png(rgba))[1])
    x, y = _density(20_000, seed=5)
    ax_cd3 = plots.Axis("CD3", plots.axis_label("CD3", "FITC-A"), Logicle(), FULL)
    ax_ssc = plots.Axis("SSC-A", "SSC-A", Linear(), (0.0, 262144.0))
    out = plots.density_plot(x, y, ax_cd3, ax_ssc, gate=RangeGate("CD3", 0.5), population="CD3+", pct_of_parent=50.0,
                             title="t")
    data = base64.b64decode(re.search(r'href="data:image/png;base64,([^"]+)"', out).group(1))
    assert len(drawn) == 1 and drawn[0].shape == (plots.BINS, plots.BINS, 4)

    def pixels(blob: bytes) -> np.ndarray:
        Image.open(io.BytesIO(blob)).verify()
        return np.asarray(Image.open(io.BytesIO(blob)).convert("RGBA"))

    h, w = drawn[0].shape[:2]
    raw = np.concatenate([np.zeros((h, 1), np.uint8), drawn[0].reshape(h, w * 4)], axis=1).tobytes()
    assert svg.PNG_LEVEL == 4 and zlib.compress(raw, 4) in data
    monkeypatch.setattr(svg, "PNG_LEVEL", 6)
    level6 = png(drawn[0])   # the PNG as written before
    assert zlib.compress(raw, 6) in level6 and level6 != data
    assert np.array_equal(pixels(data), drawn[0])
    assert np.array_equal(pixels(level6), pixels(data))
