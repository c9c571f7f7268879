"""Forest plot input: Cox tables where models failed hold None, not numbers."""
import pandas as pd

from tilpheno.biomarkers.report import forest_figure

COLUMNS = ["endpoint", "model", "variable", "coding", "hr", "hr_ci_low", "hr_ci_high"]


def test_all_models_failed_gives_no_figure():
    table = pd.DataFrame([["pfs", "univariable", "cd8_pct_of_cd3", "continuous", None, None, None],
                          ["os", "univariable", "cd8_pct_of_cd3", "dichotomized", None, None, None]],
                         columns=COLUMNS)
    assert table["hr"].dtype == object
    assert forest_figure(table, "Univariable") is None


def test_failed_rows_are_dropped_and_fitted_rows_plotted():
    table = pd.DataFrame([["pfs", "univariable", "a", "continuous", None, None, None],
                          ["pfs", "univariable", "b", "continuous", 0.8, 0.6, 1.1]],
                         columns=COLUMNS, dtype=object)
    fig = forest_figure(table, "Univariable")
    assert fig is not None and fig["svg"].startswith("<svg") and ">b<" in fig["svg"] and ">a<" not in fig["svg"]
    assert "0.800 (0.600–1.10)" in fig["svg"] and fig["width"] > 800
