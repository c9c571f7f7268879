"""Size of the next (validation) study for a prognostic marker.

- Two groups (marker high vs low, proportion ``prop`` high): Schoenfeld (1983) events
  ``D = (z_{1-alpha/2} + z_{power})^2 / (prop (1 - prop) log(HR)^2)``.
- Continuous marker (HR per unit, marker standard deviation ``sd``): Hsieh & Lavori (2000)
  ``D = (z_{1-alpha/2} + z_{power})^2 / (sd^2 log(HR)^2)``.
- Patients: the events (rounded up) divided by the probability of an event during the study
  (``p_event``, e.g. the observed event fraction), rounded up. Two-sided alpha.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class StudySize:
    """Events and patients needed; ``method`` names the formula."""

    method: str
    hr: float
    alpha: float
    power: float
    events_exact: float
    events: int
    patients: int
    p_event: float


def _z2(alpha: float, power: float) -> float:
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError("alpha and power must lie between 0 and 1")
    return (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) ** 2


def _check(hr: float, p_event: float) -> None:
    if not hr > 0 or hr == 1 or not math.isfinite(hr):
        raise ValueError(f"hazard ratio must be positive and not 1 (got {hr})")
    if not 0 < p_event <= 1:
        raise ValueError(f"probability of an event must lie in (0, 1] (got {p_event})")


def schoenfeld(hr: float, prop: float = 0.5, alpha: float = 0.05, power: float = 0.8,
               p_event: float = 1.0) -> StudySize:
    """Events and patients for a two-group comparison (log-rank / Cox, proportion ``prop`` in one group)."""
    _check(hr, p_event)
    if not 0 < prop < 1:
        raise ValueError(f"group proportion must lie in (0, 1) (got {prop})")
    d = _z2(alpha, power) / (prop * (1 - prop) * math.log(hr) ** 2)
    return StudySize("Schoenfeld", hr, alpha, power, d, math.ceil(d), math.ceil(math.ceil(d) / p_event), p_event)


def hsieh_lavori(hr: float, sd: float, alpha: float = 0.05, power: float = 0.8, p_event: float = 1.0) -> StudySize:
    """Events and patients for a continuous marker (Cox HR per unit, marker SD ``sd``)."""
    _check(hr, p_event)
    if not sd > 0:
        raise ValueError(f"marker standard deviation must be positive (got {sd})")
    d = _z2(alpha, power) / (sd**2 * math.log(hr) ** 2)
    return StudySize("Hsieh-Lavori", hr, alpha, power, d, math.ceil(d), math.ceil(math.ceil(d) / p_event), p_event)


def observed_effect(out_dir, marker: str, endpoint: str = "pfs") -> dict:
    """HRs (univariable Cox: dichotomised and per unit as in the table), marker SD, high-group fraction and
    event fraction observed in a ``tilpheno biomarkers`` output folder. A model without a hazard ratio (not
    fitted, e.g. a monotone likelihood) is refused naming the table, the model and its ``warning``."""
    from pathlib import Path

    import pandas as pd

    from tilpheno.errors import did_you_mean

    out = Path(out_dir)
    table = out / "cox_univariable.csv"
    if out.is_dir() and not table.exists():
        raise ValueError(f"{out}: no cox_univariable.csv: not the output folder of a biomarker analysis "
                         "(`tilpheno biomarkers -o FOLDER` writes it)")
    cox = pd.read_csv(table)
    rows = cox[(cox.endpoint == endpoint) & (cox.variable == marker)].set_index("coding")
    if not {"continuous", "dichotomized"} <= set(rows.index):
        known = sorted(set(cox.loc[cox.endpoint == endpoint, "variable"]))
        hint = (did_you_mean(marker, known) + f"; its {endpoint} markers: {', '.join(known)}" if known else
                f"; its endpoints: {', '.join(sorted(set(cox.endpoint)))}")
        raise ValueError(f"{table}: no univariable models for marker '{marker}', endpoint '{endpoint}'{hint}")
    for coding in ("dichotomized", "continuous"):
        hr = float(rows.at[coding, "hr"])
        if not (math.isfinite(hr) and hr > 0):
            warning = rows.at[coding, "warning"] if "warning" in rows.columns else None
            why = str(warning) if pd.notna(warning) else "no estimate"
            raise ValueError(f"{out / 'cox_univariable.csv'}: the {coding} model of '{marker}', endpoint '{endpoint}', "
                             f"has no hazard ratio to plan with ({why})")
    data = pd.read_csv(out / "analysis_dataset.csv")
    x = data[marker].dropna()
    unit = str(rows.at["continuous", "unit"])
    scale = 1e9 if "1e9" in unit else 1.0
    cut = float(rows.at["dichotomized", "cut"])
    ev = data.loc[x.index, f"{endpoint}_event"]
    return dict(hr_dichotomized=float(rows.at["dichotomized", "hr"]), hr_continuous=float(rows.at["continuous", "hr"]),
                sd=float(x.std(ddof=1) / scale), prop=float((x > cut).mean()), p_event=float(ev.mean()))
