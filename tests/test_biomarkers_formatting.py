"""Rounding for reading (issue 16): CI bounds never read 1 when the CI excludes 1, p-values, %, doses."""
from __future__ import annotations

import numpy as np
import pytest

from tilpheno.biomarkers.formatting import cell, dose, fmt_hr_ci, fmt_level, fmt_p, pct, sig


def test_issue_example_lower_bound_not_rounded_onto_one():
    assert fmt_hr_ci(1.026, 1.00038, 1.052) == "1.0260 (1.0004–1.0520)"


@pytest.mark.parametrize("seed", range(5))
def test_bounds_that_exclude_one_never_print_as_one(seed):
    rng = np.random.default_rng(seed)
    for _ in range(2000):
        b = rng.normal(0, 0.05)
        se = abs(rng.normal(0.02, 0.01)) + 1e-5
        lo, hi = np.exp(b - 1.96 * se), np.exp(b + 1.96 * se)
        text = fmt_hr_ci(np.exp(b), lo, hi)
        low_txt, high_txt = text.split("(")[1].rstrip(")").split("–")
        if lo > 1:
            assert float(low_txt) > 1, text
        if hi < 1:
            assert float(high_txt) < 1, text


def test_p_values():
    assert fmt_p(0.0006363) == "< 0.001"
    assert fmt_p(0.05355) == "0.054"
    assert fmt_p(0.0496) == "0.0496"  # 2 digits would read 0.050
    assert fmt_p(0.047) == "0.047"
    assert fmt_p(float("nan")) == "–"


@pytest.mark.parametrize("level, said", [(0.95, "95%"), (0.975, "97.5%"), (0.9, "90%"), (0.999, "99.9%"),
                                         (0.58, "58%")])
def test_a_confidence_level_reads_as_the_percentage_it_is(level, said):
    """A 0.975 level was printed round(100 * level): '98%' CIs; 0.58 * 100 is 57.99999999999999 in floats."""
    assert fmt_level(level) == said


def test_rates_doses_and_cells():
    assert pct(1 / 3) == "33.3 %"
    assert dose(5980543856.99) == "5.98 ×10⁹"
    assert sig(78.56077126133364) == "78.6"
    assert cell("rate", 0.36667) == "36.7 %"
    assert cell("til_dose_cells", 4.71e9) == "4.71 ×10⁹"
    assert cell("p_holm", 0.2) == "0.20"
    assert cell("n", np.int64(60)) == "60"
    assert cell("converged", np.True_) == "yes"


def test_a_ci_reads_on_the_scale_of_its_estimate():
    """The report's time-dependent AUC table read 'auc 0.3502, ci_low 22.2 %, ci_high 49.8 %' (PFS, TIL dose at 6
    months, tests/reference's cohort; a difference of AUCs' CI '-0.8 %' to '34.6 %'): every ci_low/ci_high was taken
    for a rate. Now the CI of an AUC or of a difference of AUCs reads as the estimate (4 significant digits), the CI of
    ORR/DCR as a rate, as before."""
    from pathlib import Path

    import pandas as pd

    from tilpheno.biomarkers.endpoints import response_rates
    from tilpheno.biomarkers.report import table_view
    from tilpheno.biomarkers.tdroc import time_roc

    lung = pd.read_csv(Path(__file__).parent / "reference" / "lung.csv").dropna()
    roc = time_roc(lung.time, lung.event, {"age": lung.age.to_numpy(float), "sex": lung.sex.to_numpy(float)},
                   [365.0], n_boot=20, seed=1)
    for frame in (roc.table, pd.DataFrame([roc.compare("sex", "age", 365.0)])):
        view = table_view(frame)
        for row, cells in zip(frame.itertuples(index=False), view["rows"]):
            shown = dict(zip(view["columns"], cells))
            for column in ("ci_low", "ci_high"):
                assert "%" not in shown[column]
                assert float(shown[column]) == pytest.approx(getattr(row, column), rel=1e-3)
    rates = response_rates(pd.Series(["CR", "PR", "SD", "PD", "PD"]))
    shown = dict(zip(table_view(rates)["columns"], table_view(rates)["rows"][0]))
    assert (shown["rate"], shown["ci_low"], shown["ci_high"]) == ("40.0 %", pct(rates.ci_low[0]), pct(rates.ci_high[0]))
