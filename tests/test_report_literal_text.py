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
    """The same label fails to draw with mathtext and draws, as written, with parse_math off."""
    import pytest
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def draw():
        fig = Figure()
        FigureCanvasAgg(fig)
        label = fig.text(0.1, 0.5, ODD)
        fig.canvas.draw()
        return label

    with pytest.raises(ValueError):
        draw()
    with rc_context({"text.parse_math": False}):
        label = draw()
    assert label.get_text() == ODD and label.get_window_extent().width > 0
