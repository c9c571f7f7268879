"""Simulated clinical outcomes of TIL-treated patients, from a proportional-hazards model with
known coefficients.

Linear predictor (log hazard ratio) of a patient, with the study's directions (more TILs and
more CD8 lower the hazard; more CD8+PD1+ and more Treg raise it)::

    eta = BETA["log_til_dose"]        * ln(til_dose_cells / 5e9)
        + BETA["cd8_pct_of_cd3"]      * (cd8_pct_of_cd3 - 60)
        + BETA["cd8pd1_pct_of_cd8"]   * (cd8pd1_pct_of_cd8 - 25)
        + BETA["cd4foxp3_pct_of_cd4"] * (cd4foxp3_pct_of_cd4 - 8)

(percentages in points, 0-100; centring only moves the baseline, the coefficients are per unit
of the covariate as a Cox model on the raw columns and ``ln(dose)`` estimates them).

Times in months. Given ``eta``, two independent latent times, each Weibull proportional-hazards
with cumulative hazard ``H(t) = (t / scale) ** shape * exp(eta)``:

- time to progression ``TTP`` (``PROGRESSION``), time to death ``TTD`` (``DEATH``).
- PFS = min(TTP, TTD) (progression or death); OS = TTD, so OS >= PFS always. Because the hazards
  of two conditionally independent PH times add, PFS is exactly PH with the same coefficients
  (baseline hazard = sum of the two), and so is OS.
- Administrative censoring: enrolment uniform over ``ACCRUAL_MONTHS`` and a common data cut-off
  ``CUTOFF_MONTHS`` after the first enrolment (the study: June 2016 - March 2018, cut-off
  February 2020), so follow-up is uniform on [CUTOFF - ACCRUAL, CUTOFF].

Best response (RECIST): PD when PFS ends before the first assessment (``PD_WINDOW_MONTHS``);
otherwise objective response (CR/PR) with probability
``logistic(RESPONSE["intercept"] + RESPONSE["log_pfs"] * ln(pfs/6) - RESPONSE["eta"] * eta)``
(so it depends on the same linear predictor directly and through PFS), CR being
``CR_SHARE`` of the responses; the rest SD.

Calibration (checked by tests on 2000 simulated patients): ORR ~37%, DCR ~80%, median PFS ~6
months, median OS ~14 months, 1-year PFS ~25%, 1-year OS ~60%, nearly all progress, ~80% die.

Other covariates (``age``, ``sex``, ``ecog``) are drawn like the study's population
(osteosarcoma: adolescents and young adults, ECOG 0-1) and have no effect on outcomes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

# Known generating log hazard ratios (per unit of each covariate).
BETA = {
    "log_til_dose": -1.10,          # per natural-log unit of infused TIL cells (HR 0.33 per e-fold)
    "cd8_pct_of_cd3": -0.050,       # per percentage point
    "cd8pd1_pct_of_cd8": 0.040,     # per percentage point
    "cd4foxp3_pct_of_cd4": 0.100,   # per percentage point
}
CENTRE = {"log_til_dose": float(np.log(5e9)), "cd8_pct_of_cd3": 60.0,
          "cd8pd1_pct_of_cd8": 25.0, "cd4foxp3_pct_of_cd4": 8.0}

PROGRESSION = {"shape": 1.30, "scale": 9.8}    # Weibull baseline of time to progression, months
DEATH = {"shape": 1.65, "scale": 18.0}         # Weibull baseline of time to death, months
ACCRUAL_MONTHS = 21.0
CUTOFF_MONTHS = 44.0
PD_WINDOW_MONTHS = 2.2
RESPONSE = {"intercept": -0.75, "log_pfs": 1.6, "eta": 0.5}
CR_SHARE = 0.09

# TIL dose: log-normal around 5e9 cells, clipped to a plausible range, 3 significant digits.
DOSE_MEDIAN, DOSE_LOG_SD, DOSE_RANGE = 5e9, 0.5, (1e9, 3e10)

OUTCOME_COLUMNS = ("patient_id", "product_id", "til_dose_cells", "age", "sex", "ecog", "best_response",
                   "pfs_months", "pfs_event", "os_months", "os_event")


def linear_predictor(log_til_dose, cd8_pct_of_cd3, cd8pd1_pct_of_cd8, cd4foxp3_pct_of_cd4) -> np.ndarray:
    """``eta`` of the module docstring (arrays or scalars)."""
    values = {"log_til_dose": log_til_dose, "cd8_pct_of_cd3": cd8_pct_of_cd3,
              "cd8pd1_pct_of_cd8": cd8pd1_pct_of_cd8, "cd4foxp3_pct_of_cd4": cd4foxp3_pct_of_cd4}
    return sum((BETA[k] * (np.asarray(v, dtype=float) - CENTRE[k]) for k, v in values.items()), np.zeros(()))


def weibull_ph_times(eta: np.ndarray, shape: float, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Event times with cumulative hazard ``(t/scale)**shape * exp(eta)`` (inverse transform)."""
    e = rng.standard_exponential(np.shape(eta))
    return scale * (e * np.exp(-np.asarray(eta))) ** (1.0 / shape)


def draw_doses(n: int, rng: np.random.Generator) -> np.ndarray:
    """Infused TIL numbers (cells): log-normal, clipped to ``DOSE_RANGE``, 3 significant digits."""
    dose = np.clip(DOSE_MEDIAN * np.exp(DOSE_LOG_SD * rng.standard_normal(n)), *DOSE_RANGE)
    return np.array([int(float(f"{d:.3g}")) for d in dose], dtype=np.int64)


def best_response(pfs: np.ndarray, eta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RECIST best response (CR/PR/SD/PD) from PFS and eta (module docstring)."""
    z = RESPONSE["intercept"] + RESPONSE["log_pfs"] * np.log(pfs / 6.0) - RESPONSE["eta"] * eta
    responds = rng.random(pfs.size) < 1.0 / (1.0 + np.exp(-z))
    complete = rng.random(pfs.size) < CR_SHARE
    out = np.where(responds, np.where(complete, "CR", "PR"), "SD")
    return np.where(pfs < PD_WINDOW_MONTHS, "PD", out).astype(object)


def draw_outcomes(phenotypes: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """One patient per row of ``phenotypes`` (columns ``product_id``, ``cd8_pct_of_cd3``,
    ``cd8pd1_pct_of_cd8``, ``cd4foxp3_pct_of_cd4``); returns the ``OUTCOME_COLUMNS`` table.

    Times are rounded to 0.01 month; an event time equal to the censoring time counts as an event.
    """
    n = len(phenotypes)
    dose = draw_doses(n, rng)
    eta = linear_predictor(np.log(dose), phenotypes["cd8_pct_of_cd3"].to_numpy(),
                           phenotypes["cd8pd1_pct_of_cd8"].to_numpy(), phenotypes["cd4foxp3_pct_of_cd4"].to_numpy())
    ttp = weibull_ph_times(eta, PROGRESSION["shape"], PROGRESSION["scale"], rng)
    ttd = weibull_ph_times(eta, DEATH["shape"], DEATH["scale"], rng)
    follow_up = CUTOFF_MONTHS - ACCRUAL_MONTHS * rng.random(n)
    pfs_true = np.minimum(ttp, ttd)
    pfs = np.round(np.minimum(pfs_true, follow_up), 2)
    os_ = np.round(np.minimum(ttd, follow_up), 2)
    age = np.minimum(11 + np.round(rng.gamma(2.0, 5.0, n)), 70).astype(int)
    return pd.DataFrame({
        "patient_id": [f"P{i + 1:03d}" for i in range(n)],
        "product_id": phenotypes["product_id"].to_numpy(),
        "til_dose_cells": dose,
        "age": age,
        "sex": np.where(rng.random(n) < 0.6, "M", "F"),
        "ecog": (rng.random(n) < 0.45).astype(int),
        "best_response": best_response(np.maximum(pfs, 0.01), eta, rng),
        "pfs_months": np.maximum(pfs, 0.01),
        "pfs_event": (pfs_true <= follow_up).astype(int),
        "os_months": np.maximum(os_, 0.01),
        "os_event": (ttd <= follow_up).astype(int),
    }, columns=list(OUTCOME_COLUMNS))
