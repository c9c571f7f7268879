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


def test_failed_rows_say_not_estimable_and_fitted_rows_are_plotted():
    table = pd.DataFrame([["pfs", "univariable", "a", "continuous", None, None, None],
                          ["pfs", "univariable", "b", "continuous", 0.8, 0.6, 1.1],
                          ["pfs", "univariable", "c", "dichotomized", None, None, None]],
                         columns=COLUMNS, dtype=object)
    fig = forest_figure(table, "Univariable")
    assert fig is not None and fig["svg"].startswith("<svg") and ">b<" in fig["svg"]
    assert "0.800 (0.600–1.10)" in fig["svg"] and fig["width"] > 800
    # the failed models keep their rows (a panel of its own for the dichotomised one), without an estimate
    assert ">a<" in fig["svg"] and ">c<" in fig["svg"] and fig["svg"].count(">not estimable<") == 2
