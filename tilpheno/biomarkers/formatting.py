"""Numbers rounded for reading (HTML report); machine tables (CSV) keep full precision.

Conventions:

- p-values: ``< 0.001`` below 0.001, else 2 significant digits (3 decimals between 0.001 and
  0.01: 0.0047), never rounded onto 0.05 from either side.
- Hazard ratios with CIs: 3 significant digits, more (up to 6) while a bound that excludes 1
  would print as 1 (e.g. ``1.026 (1.0004-1.052)``), or while the estimate prints equal to a bound.
- Rates (response, survival probabilities) as percentages with one decimal.
- Confidence levels as the percentage they are (``97.5%`` CIs, not ``98%``: :func:`fmt_level`).
- Cell doses (columns ``*_dose_cells``) in units of 10^9 cells: ``5.98 ×10⁹``; so are, in a table row of a cell-dose
  marker, the columns the codebook gives in ``marker unit`` (cut, spline knots, responders' means, SDs, quartiles and
  differences, and their ``mean ± SD; median (IQR)`` text).
- Other numbers to 4 significant digits; a column whose every value is whole (counts, whole months)
  without decimals (:func:`whole_number_columns`).
"""
from __future__ import annotations

import math
from decimal import Decimal

import numpy as np


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def sig(v: float | np.floating | None, digits: int = 3) -> str:
    """``v`` to ``digits`` significant digits, plain notation within 1e-4..1e6."""
    if v is None:
        return "–"
    if not _finite(v):
        return "–" if math.isnan(float(v)) else ("∞" if float(v) > 0 else "−∞")
    v = float(v)
    if v == 0:
        return "0"
    if abs(v) >= 1e6 or abs(v) < 1e-4:
        return f"{v:.{digits - 1}e}"
    decimals = max(digits - 1 - math.floor(math.log10(abs(v))), 0)
    return f"{v:.{decimals}f}"


def fmt_p(p) -> str:
    """A p-value for reading (see the module docstring)."""
    if not _finite(p):
        return "–"
    p = float(p)
    if p < 0.001:
        return "< 0.001"
    text = sig(p, 2)
    if p < 0.05 <= float(text):  # would print as 0.05 while below it
        text = sig(p, 3)
    if p >= 0.05 > float(text):
        text = sig(p, 3)
    return text


def fmt_hr_ci(hr, low, high, digits: int = 3) -> str:
    """``HR (low-high)`` with enough digits that a bound excluding 1 never prints as 1."""
    if not all(_finite(v) for v in (hr, low, high)):
        return "–"
    for d in range(digits, 7):
        h, lo, hi = sig(hr, d), sig(low, d), sig(high, d)
        excludes = low > 1 or high < 1
        if excludes and (float(lo) == 1 or float(hi) == 1):
            continue
        if (h == lo and hr != low) or (h == hi and hr != high):
            continue
        break
    return f"{h} ({lo}–{hi})"


def fmt_level(conf_level: float) -> str:
    """A confidence level as the percentage it is: 0.95 -> ``95%``, 0.975 -> ``97.5%``, 0.999 -> ``99.9%``
    (the decimal the level was written as, times 100: not rounded to a whole percent, no float noise)."""
    return f"{(Decimal(repr(float(conf_level))) * 100).normalize():f}%"


def pct(v, decimals: int = 1) -> str:
    return f"{100 * float(v):.{decimals}f} %" if _finite(v) else "–"


def dose(v) -> str:
    return f"{float(v) / 1e9:.3g} ×10⁹" if _finite(v) else "–"


def is_dose(marker: str) -> bool:
    """A cell-dose column (``*_dose_cells``), read in 10⁹ cells."""
    return str(marker).endswith("_dose_cells")


def spread(marker: str, mean, sd, median, q1, q3) -> str:
    """``mean ± SD; median (Q1–Q3)`` at 3 significant digits; a cell dose in 10⁹ cells (``... ×10⁹``)."""
    scale, unit = (1e9, " ×10⁹") if is_dose(marker) else (1.0, "")
    return f"{mean / scale:.3g} ± {sd / scale:.3g}; {median / scale:.3g} ({q1 / scale:.3g}–{q3 / scale:.3g}){unit}"


def cell(column: str, value, columns=()) -> str:
    """Display text for one table cell, by column name and the names of its table's ``columns`` (the module's
    conventions, :func:`column_kind`)."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if not isinstance(value, (float, np.floating)):
        return str(value)
    kind = column_kind(column, columns)
    return fmt_p(value) if kind == "p" else pct(value) if kind == "rate" else dose(value) if kind == "dose" \
        else sig(value, 4)


def column_kind(column: str, columns=()) -> str:
    """How a table column's floats read (the module's conventions): ``p``, ``rate``, ``dose`` or
    ``number`` (4 significant digits). ``ci_low`` and ``ci_high`` read as their table's estimate: rates in a table
    of rates (a ``rate`` among its ``columns``: ORR, DCR), numbers beside an AUC or a difference of AUCs."""
    c = column.lower()
    if c == "p" or c.startswith("p_") or c.endswith("_p") or c in ("logrank_p", "lr_p", "wald_p", "score_p"):
        return "p"
    if c in ("ci_low", "ci_high"):
        return "rate" if "rate" in columns else "number"
    if c == "rate" or c.startswith("rate_") or c in ("surv", "lower", "upper"):
        return "rate"
    return "dose" if "dose_cells" in c else "number"


def whole_number_columns(frame) -> list[str]:
    """The ``number`` columns of a table whose every value is a whole number or missing (counts such as
    ``n_low`` or a log-rank's ``observed`` events, times in whole months), which read without the
    decimals of 4 significant digits (``30``, not ``30.00``): a column of floats only because it has
    missing values."""
    out = []
    for column in frame.columns:
        values = frame[column]
        if values.dtype.kind != "f" or column_kind(str(column), frame.columns) != "number":
            continue
        finite = values.to_numpy(float)[np.isfinite(values.to_numpy(float))]
        if finite.size and np.all(finite == np.round(finite)) and np.all(np.abs(finite) < 1e15):
            out.append(column)
    return out
