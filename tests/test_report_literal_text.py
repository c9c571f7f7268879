"""Report text from the inputs is shown literally (issue 11): a detector named with '$', '^' and '_'
used to make matplotlib's mathtext fail, and every plot of the product was lost (report_failed)."""
from __future__ import annotations

import pandas as pd

from tilpheno.compensation import Spillover
from tilpheno.io.fcs_write import write_fcs
from tilpheno.pipeline import process_folder
from tilpheno.simulate import instrument as ins
from tilpheno.simulate.cohort import simulate_product

ODD = "PE-A $^$ a_b"   # mathtext would parse "$^$" (a syntax error) and subscript "_b"


def test_dollar_caret_underscore_in_a_detector_name(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    product = simulate_product("MT1", 5, 2000)
    true = ins.true_spillover()
    spill = Spillover(tuple(ODD if d == "PE-A" else d for d in true.detectors), true.matrix)
    for t in product.tubes:
        channels = [(ODD if n == "PE-A" else n, s, r) for n, s, r in t.channels]
        write_fcs(folder / t.file, t.data.events, channels, t.keywords, spillover=spill)
    summary = process_folder(folder, tmp_path / "out")
    assert summary.ok
    qc = pd.read_csv(tmp_path / "out" / "qc.csv")
    assert "report_failed" not in set(qc["code"]), qc.loc[qc["code"] == "report_failed", "message"].tolist()
    report = (tmp_path / "out" / "products" / "MT1" / "report.html").read_text()
    assert report.count("<svg") >= 10
    assert "(PE-A $^$ a_b)" in report   # an axis label, drawn as written (SVG text)


def test_literal_text_is_drawn_as_written():
    """Plots write their text as SVG text, never through mathtext: the odd name comes back verbatim
    from the axis label, the title and a label of every kind of plot."""
    import re
    import xml.etree.ElementTree as ET

    import numpy as np

    from tilpheno.gates.geometry import RangeGate
    from tilpheno.report import plots
    from tilpheno.report.qc_plots import compensation_pair_plot
    from tilpheno.transforms import Logicle

    x = np.random.default_rng(0).normal(0.5, 0.1, 2000)
    axis = plots.Axis("CD3", plots.axis_label("CD3", ODD), Logicle(), (0.0, 1.0))
    drawn = [plots.histogram_plot(x, axis, gate=RangeGate("CD3", 0.5), population=ODD, pct_of_parent=5.0, title=ODD),
             plots.fmo_overlay_plot(x, x, axis, threshold=0.6, pct_stained=1.0, pct_fmo=0.5, marker="CD3",
                                    threshold_note=ODD, title=ODD),
             compensation_pair_plot(x, x, axis, axis, title=ODD, note=ODD)]
    for svg in drawn:
        texts = ["".join(t.itertext()) for t in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")]
        assert f"CD3 ({ODD})" in texts and ODD in texts, texts
        assert not re.search(r"mathtext|<path[^>]*glyph", svg)
