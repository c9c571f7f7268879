"""Write the simulated TIL cohort used by the R reference script (deterministic, seed 60).

60 patients, one TIL product each: ``til_cohort_phenotypes.csv`` (the columns of
``tilpheno process``'s phenotypes.csv) and ``til_cohort_outcomes.csv`` (the outcomes table).
Higher CD8+ and lower CD8+PD1+ fractions lengthen PFS and OS; times are rounded to 0.1 month
so that tied times occur, as in real follow-up data.

Run: ``.venv/bin/python tests/reference/make_til_cohort.py`` (then ``Rscript make_reference.R``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).parent


def make_cohort(n: int = 60, seed: int = 60) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    pid = [f"TIL{i:03d}" for i in range(1, n + 1)]
    cd8 = np.clip(rng.normal(45, 15, n), 5, 90)
    cd4 = np.clip(100 - cd8 - rng.uniform(2, 10, n), 2, 95)
    cd8pd1_of_cd8 = np.clip(rng.normal(30, 12, n), 1, 90)
    foxp3 = np.clip(rng.gamma(2.0, 2.5, n), 0.2, 40)
    cd3 = np.clip(rng.normal(88, 6, n), 50, 99.5)
    pheno = pd.DataFrame({
        "product_id": pid,
        "viability_pct": np.round(np.clip(rng.normal(85, 6, n), 60, 99), 2),
        "cd3_pct_of_live_lymph": np.round(cd3, 2),
        "cd4_pct_of_cd3": np.round(cd4, 2),
        "cd8_pct_of_cd3": np.round(cd8, 2),
        "nk_pct_of_live_lymph": np.round(np.clip(rng.normal(6, 3, n), 0.2, 30), 2),
        "nkt_pct_of_live_lymph": np.round(np.clip(rng.normal(3, 1.5, n), 0.1, 20), 2),
        "pd1_pct_of_live_lymph": np.round(np.clip(rng.normal(25, 9, n), 1, 80), 2),
        "cd8pd1_pct_of_cd8": np.round(cd8pd1_of_cd8, 2),
        "cd8pd1_pct_of_cd3": np.round(cd8pd1_of_cd8 * cd8 / 100, 2),
        "cd4foxp3_pct_of_cd4": np.round(foxp3, 2),
    })
    dose = np.round(np.exp(rng.normal(np.log(3e10), 0.5, n)), -7)
    age = rng.integers(12, 45, n)
    sex = rng.choice(["M", "F"], n, p=[0.6, 0.4])
    ecog = rng.choice([0, 1, 2], n, p=[0.5, 0.4, 0.1])
    lin = 0.03 * (cd8 - 45) - 0.03 * (cd8pd1_of_cd8 - 30) + 0.4 * (np.log(dose) - np.log(3e10))
    pfs = rng.exponential(7.0 * np.exp(lin))
    os_extra = rng.exponential(8.0 * np.exp(lin))
    os_t = pfs + os_extra
    censor = rng.uniform(10, 40, n)
    pfs_event = (pfs <= censor).astype(int)
    os_event = (os_t <= censor).astype(int)
    pfs_m = np.round(np.minimum(pfs, censor), 1).clip(0.1)
    os_m = np.maximum(np.round(np.minimum(os_t, censor), 1), pfs_m)
    resp_p = 1 / (1 + np.exp(-(lin * 1.5 - 0.5)))
    u = rng.uniform(size=n)
    best = np.where(u < resp_p * 0.1, "CR", np.where(u < resp_p, "PR", np.where(u < resp_p + 0.45, "SD", "PD")))
    best[rng.choice(n, 2, replace=False)] = "NE"
    outcomes = pd.DataFrame({
        "patient_id": [f"P{i:03d}" for i in range(1, n + 1)], "product_id": pid,
        "til_dose_cells": dose.astype(np.int64), "best_response": best,
        "pfs_months": pfs_m, "pfs_event": pfs_event, "os_months": os_m, "os_event": os_event,
        "age": age, "sex": sex, "ecog": ecog,
    })
    return pheno, outcomes


if __name__ == "__main__":
    pheno, outcomes = make_cohort()
    pheno.to_csv(HERE / "til_cohort_phenotypes.csv", index=False, lineterminator="\n")
    outcomes.to_csv(HERE / "til_cohort_outcomes.csv", index=False, lineterminator="\n")
