"""Simulated outcomes: study-like calibration, and Cox recovery of the known generating coefficients.

Independent truths: the study's published figures (ORR 36.7%, DCR 80%, median PFS 5.75 and OS
13.6 months, all progressed, 50/60 died), the generating coefficients ``BETA`` (recovered by
lifelines' CoxPHFitter, which knows nothing about the simulator) and scipy's Weibull law.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

lifelines = pytest.importorskip("lifelines")
from lifelines import CoxPHFitter, KaplanMeierFitter

from tilpheno.simulate import outcomes as oc
from tilpheno.simulate.products import draw_composition


def _phenotypes(n, seed):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame([draw_composition(rng).expected_variables() for _ in range(n)])
    frame["product_id"] = [f"X{i:05d}" for i in range(n)]
    return frame


@pytest.fixture(scope="module")
def cohort():
    ph = _phenotypes(2000, 4242)
    return ph, oc.draw_outcomes(ph, np.random.default_rng(99))


def _km_median(time, event):
    return KaplanMeierFitter().fit(time, event).median_survival_time_


def test_table_shape_and_invariants(cohort):
    ph, out = cohort
    assert list(out.columns) == list(oc.OUTCOME_COLUMNS)
    assert list(out["product_id"]) == list(ph["product_id"])
    assert out["patient_id"].is_unique
    assert set(out["best_response"]) <= {"CR", "PR", "SD", "PD"}
    assert set(out["pfs_event"]) <= {0, 1} and set(out["os_event"]) <= {0, 1}
    assert (out["os_months"] >= out["pfs_months"]).all()
    assert (out["pfs_months"] > 0).all()
    assert out["ecog"].isin([0, 1]).all() and out["sex"].isin(["M", "F"]).all()
    assert out["age"].between(11, 70).all()
    dose = out["til_dose_cells"]
    assert dose.between(1e9, 3e10).all() and 3e9 < dose.median() < 8e9
    # censoring is administrative only: a censored patient was followed at least CUTOFF - ACCRUAL months
    censored = out[out["os_event"] == 0]
    assert (censored["os_months"] >= oc.CUTOFF_MONTHS - oc.ACCRUAL_MONTHS - 0.01).all()


def test_calibrated_to_study(cohort):
    _, out = cohort
    resp = out["best_response"]
    assert 0.32 < resp.isin(["CR", "PR"]).mean() < 0.42          # study ORR 36.7%
    assert 0.74 < (resp != "PD").mean() < 0.86                    # study DCR 80%
    assert 0.01 < (resp == "CR").mean() < 0.07                    # 2 CR of 60
    assert 5.0 < _km_median(out["pfs_months"], out["pfs_event"]) < 6.8     # study 5.75
    assert 12.5 < _km_median(out["os_months"], out["os_event"]) < 15.5     # study 13.6
    assert out["pfs_event"].mean() > 0.93                         # all progressed
    assert 0.75 < out["os_event"].mean() < 0.90                   # 50 of 60 died
    km_pfs = KaplanMeierFitter().fit(out["pfs_months"], out["pfs_event"])
    km_os = KaplanMeierFitter().fit(out["os_months"], out["os_event"])
    assert 0.18 < float(km_pfs.predict(12.0)) < 0.32                # study 25%
    assert 0.50 < float(km_os.predict(12.0)) < 0.68                 # study 60%
    responders = resp.isin(["CR", "PR"])
    assert _km_median(out["pfs_months"][responders], out["pfs_event"][responders]) > 1.5 * _km_median(
        out["pfs_months"][~responders], out["pfs_event"][~responders])


@pytest.mark.parametrize("endpoint", ["pfs", "os"])
def test_cox_recovers_generating_coefficients(endpoint):
    ph = _phenotypes(3000, 777)
    out = oc.draw_outcomes(ph, np.random.default_rng(2024))
    frame = pd.DataFrame({
        "log_til_dose": np.log(out["til_dose_cells"].to_numpy(dtype=float)),
        "cd8_pct_of_cd3": ph["cd8_pct_of_cd3"],
        "cd8pd1_pct_of_cd8": ph["cd8pd1_pct_of_cd8"],
        "cd4foxp3_pct_of_cd4": ph["cd4foxp3_pct_of_cd4"],
        "T": out[f"{endpoint}_months"],
        "E": out[f"{endpoint}_event"],
    })
    fit = CoxPHFitter().fit(frame, duration_col="T", event_col="E")
    for name, beta in oc.BETA.items():
        est, se = fit.params_[name], fit.standard_errors_[name]
        assert abs(est - beta) < 4 * se, (name, est, beta, se)
        assert np.sign(est) == np.sign(beta)


def test_weibull_times_follow_the_stated_law():
    rng = np.random.default_rng(5)
    eta = np.full(4000, 0.7)
    t = oc.weibull_ph_times(eta, 1.3, 9.8, rng)
    # H(t) = (t/scale)^k e^eta  <=>  Weibull with scale * exp(-eta/k)
    law = stats.weibull_min(1.3, scale=9.8 * np.exp(-0.7 / 1.3))
    assert stats.kstest(t, law.cdf).pvalue > 0.001


def test_linear_predictor_directions():
    base = oc.linear_predictor(np.log(5e9), 60, 25, 8)
    assert base == pytest.approx(0.0)
    assert oc.linear_predictor(np.log(1e10), 60, 25, 8) < base
    assert oc.linear_predictor(np.log(5e9), 70, 25, 8) < base
    assert oc.linear_predictor(np.log(5e9), 60, 35, 8) > base
    assert oc.linear_predictor(np.log(5e9), 60, 25, 12) > base


def test_outcomes_deterministic():
    ph = _phenotypes(50, 1)
    a = oc.draw_outcomes(ph, np.random.default_rng(3))
    b = oc.draw_outcomes(ph, np.random.default_rng(3))
    c = oc.draw_outcomes(ph, np.random.default_rng(4))
    pd.testing.assert_frame_equal(a, b)
    assert not a["pfs_months"].equals(c["pfs_months"])
