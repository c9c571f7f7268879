"""Rounding for reading (issue 16): CI bounds never read 1 when the CI excludes 1, p-values, %, doses."""
from __future__ import annotations

import numpy as np
import pytest

from tilpheno.biomarkers.formatting import cell, dose, fmt_hr_ci, fmt_p, pct, sig


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


def test_rates_doses_and_cells():
    assert pct(1 / 3) == "33.3 %"
    assert dose(5980543856.99) == "5.98 ×10⁹"
    assert sig(78.56077126133364) == "78.6"
    assert cell("rate", 0.36667) == "36.7 %"
    assert cell("til_dose_cells", 4.71e9) == "4.71 ×10⁹"
    assert cell("p_holm", 0.2) == "0.20"
    assert cell("n", np.int64(60)) == "60"
    assert cell("converged", np.True_) == "yes"
