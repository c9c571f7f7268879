"""Plausibility checks of a joined cohort: warnings (printed and in the report), never silent.

- Times in another unit than months (the unit of every statistic: survival curves, hazard ratios,
  landmarks): days when a time is above 1000 (no one is followed 1000 weeks, 19 years), days or
  weeks when a column's median is above 60 or a time above 240, weeks (a guess from
  the values) when the median PFS is above 18 or the median OS above 48 (longer than TIL cohorts'),
  years (a guess) when every PFS and OS time of at least 5 patients is below 10.
- PFS longer than OS for a patient (progression cannot come after death).
- A cell-dose column (``*_dose_cells``) whose median is below 1e6 cells (given in units of 1e9?), or
  with some values below 1e6 cells among doses in cells (those rows typed in units of 1e9?).
- ``response_months`` that the response analyses cannot use: blank for a CR/PR (taken as never responding),
  given for an SD/PD/NE (ignored), or after the patient's PFS or OS time (a response after progression, death or
  the last follow-up: taken as no response in that endpoint's analyses, as R ``tmerge`` drops it).
- Percent columns (names containing ``pct``) with values outside 0-100, or with every value
  between 0 and 1 (fractions, 0.23 for 23 %? A heuristic: a rare population can be below 1 % in
  every product; the values are never rescaled).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from tilpheno.io.outcomes import MIN_DOSE_CELLS

from .endpoints import is_responder

DAYS_MEDIAN = 60.0
DAYS_MAX = 240.0
DAYS_CERTAIN = 1000.0
WEEKS_MEDIAN = {"pfs_months": 18.0, "os_months": 48.0}
YEARS_MAX = 10.0
YEARS_MIN_PATIENTS = 5
MIN_CELLS = MIN_DOSE_CELLS


def patient_ids(frame: pd.DataFrame, mask) -> str:
    """The ``patient_id`` of the rows of ``frame`` where ``mask`` holds, for a message: the first 5, then how many more."""
    ids = frame.loc[mask, "patient_id"].astype(str).tolist() if "patient_id" in frame else []
    more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
    return ", ".join(ids[:5]) + more


def _time_unit_warnings(outcomes: pd.DataFrame) -> list[str]:
    """Notes on ``pfs_months`` and ``os_months`` that look like another unit (module docstring)."""
    out = []
    times = {col: pd.to_numeric(outcomes[col], errors="coerce") for col in ("pfs_months", "os_months") if col in outcomes}
    for col, t in times.items():
        median, longest = t.median(), t.max()
        if longest > DAYS_CERTAIN:
            out.append(f"plausibility: {col} has median {median:g} and maximum {longest:g}: these look like days, not "
                       "months (divide by 30.4375); every statistic is in months")
        elif median > DAYS_MEDIAN or longest > DAYS_MAX:
            out.append(f"plausibility: {col} has median {median:g} and maximum {longest:g}: these look like days or "
                       "weeks, not months (days: divide by 30.4375; weeks: divide by 4.3482); every statistic is in "
                       "months")
        elif median > WEEKS_MEDIAN[col]:
            out.append(f"plausibility (a guess from the values): {col} has median {median:g}, longer than TIL cohorts' "
                       f"(above {WEEKS_MEDIAN[col]:g} months): times in weeks? Analysed as months; if they are weeks, "
                       "divide by 4.3482")
    every = pd.concat(list(times.values())) if times else pd.Series(dtype=float)
    counts = [int(t.notna().sum()) for t in times.values()]
    if counts and min(counts) >= YEARS_MIN_PATIENTS and every.max() < YEARS_MAX:
        out.append(f"plausibility (a guess from the values): every {' and '.join(times)} time is below {YEARS_MAX:g} "
                   f"(longest {every.max():g}): times in years? Analysed as months; if they are years, multiply by 12 "
                   f"(a cohort followed less than {YEARS_MAX:g} months would look the same)")
    return out


def _response_time_warnings(outcomes: pd.DataFrame) -> list[str]:
    """The CR/PR patients whose ``response_months`` (months) the landmark and time-dependent analyses cannot use,
    and the other patients who have one (see the module docstring); [] without the column."""
    if "response_months" not in outcomes.columns:
        return []
    rm = pd.to_numeric(outcomes["response_months"], errors="coerce")
    responder = is_responder(outcomes["best_response"])
    out = []
    blank = responder & rm.isna()
    if blank.any():
        out.append(f"plausibility: response_months blank for {int(blank.sum())} CR/PR patient(s) "
                   f"({patient_ids(outcomes, blank)}): taken as never responding in the landmark and time-dependent "
                   "analyses; give each responder's time of response")
    given = ~responder & rm.notna()
    if given.any():
        out.append(f"plausibility: response_months given for {int(given.sum())} patient(s) whose best response is "
                   f"not CR/PR ({patient_ids(outcomes, given)}): ignored, they are analysed as non-responders")
    for col in ("pfs_months", "os_months"):
        after = responder & (rm > outcomes[col])
        if after.any():
            out.append(f"plausibility: response_months after {col} for {int(after.sum())} CR/PR patient(s) "
                       f"({patient_ids(outcomes, after)}): a response after the end of that follow-up, taken as no "
                       "response in its landmark and time-dependent analyses; check the times")
    return out


def plausibility_warnings(outcomes: pd.DataFrame, data: pd.DataFrame, markers: list[str]) -> list[str]:
    """One sentence per implausible pattern."""
    out = _time_unit_warnings(outcomes) + _response_time_warnings(outcomes)
    if {"pfs_months", "os_months"} <= set(outcomes.columns):
        later = outcomes["pfs_months"] > outcomes["os_months"] + 1e-9
        if later.any():
            out.append(f"plausibility: PFS longer than OS for {int(later.sum())} patient(s) ({patient_ids(outcomes, later)}): "
                       "progression cannot follow death; check the times")
    for m in markers:
        if m not in data:
            continue
        x = pd.to_numeric(data[m], errors="coerce")
        if m.endswith("_dose_cells") and x.notna().any() and x.median() < MIN_CELLS:
            out.append(f"plausibility: {m} has median {x.median():g}, fewer than {MIN_CELLS:g} cells: is the dose "
                       "given in units of 1e9 cells? Doses must be in cells")
        elif m.endswith("_dose_cells") and (x < MIN_CELLS).any():
            few = x < MIN_CELLS
            out.append(f"plausibility: {m} has {int(few.sum())} value(s) below {MIN_CELLS:g} cells ({patient_ids(data, few)}) "
                       "among doses in cells: given in units of 1e9 cells? Doses must be in cells")
        if "pct" in m and ((x < 0) | (x > 100)).any():
            bad = (x < 0) | (x > 100)
            out.append(f"plausibility: {m} has {int(bad.sum())} value(s) outside 0-100 % ({patient_ids(data, bad)})")
        elif "pct" in m and x.notna().any() and x.min() >= 0 and 0 < x.max() <= 1:
            out.append(f"plausibility (a guess from the values): every value of {m} lies between 0 and 1 (largest "
                       f"{x.max():g}): percentages given as fractions (0.23 for 23 %)? Analysed as given, in %; "
                       "if they are fractions, multiply them by 100 (a population below 1 % in every product "
                       "would look the same)")
    return out
