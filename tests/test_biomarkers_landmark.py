"""Landmark analysis and response as a time-dependent covariate against R coxph / tmerge
(tests/reference/response_timevarying.csv, timevarying_reference.csv, landmark_reference.csv)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tilpheno.biomarkers.landmark import (NAIVE_WARNING, landmark_analysis, naive_responder_comparison, start_stop,
                                          time_dependent_cox)

REF = Path(__file__).parent / "reference"
TV = pd.read_csv(REF / "response_timevarying.csv")


def test_time_dependent_cox_equals_r():
    want = pd.read_csv(REF / "timevarying_reference.csv")
    for model, cov in (("responder", None), ("responder+age", TV[["age"]])):
        got = time_dependent_cox(TV.os, TV.event, TV.resp_time, cov).set_index("variable")
        w = want[want.model == model].set_index("variable")
        np.testing.assert_allclose(got.loc[w.index, "coef"], w.coef, rtol=1e-6)
        np.testing.assert_allclose(got.loc[w.index, "se"], w.se, rtol=1e-6)
        np.testing.assert_allclose(got.loc[w.index, "p"], w.p, rtol=1e-6)
        assert got.loglik.iloc[0] == pytest.approx(w.loglik.iloc[0], rel=1e-10)


def test_start_stop_rows():
    ss = start_stop([10, 5, 8], [1, 0, 1], [4, np.nan, 0])
    assert ss[["id", "start", "stop", "event", "responder"]].values.tolist() == [
        [0, 0, 4, 0, 0], [0, 4, 10, 1, 1], [1, 0, 5, 0, 0], [2, 0, 8, 1, 1]]


def test_landmark_equals_r():
    want = pd.read_csv(REF / "landmark_reference.csv").iloc[0]
    L = want.landmark
    res = landmark_analysis(TV.os, TV.event, TV.resp_time.fillna(np.inf) <= L, L)
    assert (res.n, res.n_responders) == (want.n, want.n_resp)
    assert np.log(res.hr) == pytest.approx(want.coef, rel=1e-6)
    assert res.logrank_chisq == pytest.approx(want.logrank_chisq, rel=1e-8)
    assert res.n_excluded == int((TV.os <= L).sum())


def test_landmark_removes_guarantee_time_bias_under_the_null():
    """Response unrelated to survival: the naive comparison finds 'benefit', the landmark does not."""
    rng = np.random.default_rng(0)
    n = 400
    os_ = rng.exponential(12, n)
    resp_time = rng.uniform(1, 10, n)
    responded = (rng.random(n) < 0.5) & (resp_time < os_)  # only survivors can respond
    naive_p = None
    with pytest.warns(UserWarning, match="guarantee-time bias"):
        naive = naive_responder_comparison(os_, np.ones(n), responded)
    naive_p = naive["logrank_p"]
    assert naive["warning"] == NAIVE_WARNING and naive_p < 0.001
    rt = np.where(responded, resp_time, np.inf)
    td = time_dependent_cox(os_, np.ones(n), np.where(responded, resp_time, np.nan))
    assert td.p.iloc[0] > 0.01
    lm = landmark_analysis(os_, np.ones(n), rt <= 6, 6)
    assert lm.p_cox > 0.01


def test_landmark_with_every_event_in_one_group_keeps_the_log_rank_test():
    """After the landmark a responder progresses at 1.1 and a non-responder at 4.7: the Cox hazard
    ratio is infinite (monotone likelihood), which stopped the whole biomarker run; now the HR is
    blank with the reason and the log-rank test stands: at t = 1.1, 2 at risk, 1 event, O - E = 1/2
    for responders with variance 1/4, chi-square 1 (R survdiff gives 1)."""
    res = landmark_analysis([4.1, 7.7, 0.5, 1.4], [1, 1, 1, 1], [True, False, False, False], 3.0)
    assert (res.n, res.n_excluded, res.n_responders) == (2, 2, 1)
    assert np.isnan(res.hr) and np.isnan(res.p_cox)
    assert res.logrank_chisq == pytest.approx(1.0) and (res.median_responders, res.median_nonresponders) == (4.1, 7.7)
    assert any(n.startswith("landmark Cox model not fitted (") for n in res.notes)


def test_landmark_names_who_it_excluded_and_why_it_cannot_compare():
    """The landmark row said only 'landmark comparison not estimable (one group empty or no events after the
    landmark)' and n_excluded, whichever held and for whatever reason the patients were left out -> how many were
    excluded, with the event or censored at or before the landmark (counted here from the data), and which
    condition fails."""
    rng = np.random.default_rng(3)
    t = np.round(rng.exponential(8, 40), 1)
    e = (rng.random(40) < 0.6).astype(float)
    before = t <= 3.0

    def excluded(events):
        return (f"{before.sum()} patient(s) excluded, their time at or before the 3-month landmark: "
                f"{int(events[before].sum())} with the event, {int((events[before] == 0).sum())} censored")

    both = landmark_analysis(t, e, rng.random(40) < 0.5, 3.0)
    assert both.notes == [excluded(e)] and np.isfinite(both.hr)
    cases = {"no responder among the {n} patients followed past the landmark": (e, np.zeros(40, bool)),
             "all {n} patients followed past the landmark are responders": (e, np.ones(40, bool)),
             "no events after the landmark among its {n} patients": (np.where(before, e, 0.0), rng.random(40) < 0.5)}
    for why, (events, responded) in cases.items():
        res = landmark_analysis(t, events, responded, 3.0)
        assert res.n == (~before).sum() and np.isnan(res.hr)
        assert res.notes == [excluded(events), f"landmark comparison not estimable: {why.format(n=res.n)}"]


def test_time_dependent_cox_with_a_monotone_likelihood_is_not_a_hazard_ratio_of_1e13():
    """Every event in a responder after the response: lifelines returned HR 2.5e13 (se 7.7e5, p 1) and numpy's
    'overflow encountered in exp' went to stderr; R coxph on the tmerge data (timevarying_degenerate_reference.csv)
    runs the coefficient off too (huge coef and se, a warning) -> no estimate, the reason named as fit_cox names it."""
    import warnings

    ref = pd.read_csv(REF / "timevarying_degenerate_reference.csv").iloc[0]
    assert ref.r_warning and ref.coef > 10 and ref.se > 100 * ref.coef
    time = np.array(ref.time.split(), dtype=float)
    event = np.array(ref.event.split(), dtype=float)
    resp_time = np.array([np.nan if v == "NA" else float(v) for v in ref.resp_time.split()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = time_dependent_cox(time, event, resp_time).iloc[0]
    assert np.isnan(got.hr) and np.isnan(got.p)
    assert got.warning.startswith("not fitted: monotone likelihood: at every event time the patients with the event "
                                  "had responder = 1, or no one at risk did")


def test_time_dependent_row_counts_the_responders_of_its_model(tmp_path):
    """response_survival.csv's time-dependent row gave n_responders = every CR/PR, also those whose response time
    is blank or after the endpoint's time, whom the model (as R tmerge) takes as never responding -> the patients
    who are responders in the model's start-stop data."""
    from tilpheno.biomarkers.analysis import run_biomarkers
    from tilpheno.io.outcomes import read_outcomes

    o = read_outcomes(REF / "til_cohort_outcomes.csv")
    responder = o.best_response.isin(["CR", "PR"])
    o["response_months"] = np.where(responder, np.minimum(2.0, o.pfs_months / 2), np.nan)
    cr_pr = o.index[responder]
    o.loc[cr_pr[0], "response_months"] = np.nan
    o.loc[cr_pr[1], "response_months"] = o.loc[cr_pr[1], "pfs_months"] + 0.5
    res = run_biomarkers(pd.read_csv(REF / "til_cohort_phenotypes.csv"), o, tmp_path, markers=["cd8_pct_of_cd3"],
                         n_perm=0, n_boot=0, reports="none")   # tables only: the claims are about them
    rows = res.response_survival.set_index(["analysis", "endpoint"])
    for endpoint in ("pfs", "os"):
        t = o[f"{endpoint}_months"]
        in_model = responder & (o.response_months < t)   # tmerge: a response time at or past the end is dropped
        assert rows.loc[("time-dependent Cox", endpoint), "n_responders"] == in_model.sum() < responder.sum()


def test_a_responder_followed_for_no_time_is_not_a_responder_of_the_model():
    """A patient with time 0 and a response at 0 gave a zero-length responder row (0, 0], which the time-dependent
    model leaves out (R coxph deletes it, tmerge refuses the time), yet n_responders counted the patient (3 where
    the model's rows hold 2) -> the responders of the model's rows: a response strictly before the patient's time
    (patients 2 and 4 here), as test_time_dependent_row_counts_the_responders_of_its_model states it."""
    from tilpheno.biomarkers.landmark import responders_in_model

    time, response = np.array([0.0, 5, 8, 3]), np.array([0.0, 2, np.nan, 1])
    assert responders_in_model(time, response) == int(np.sum(response < time)) == 2
    assert time_dependent_cox(time, [0, 1, 1, 0], response).iloc[0].n == 3   # the model's patients: the same three


def test_a_patient_followed_for_no_time_adds_no_lifelines_warning():
    """A patient censored at time 0 gave a zero-length start-stop row (0, 0], and the time-dependent row's warning
    carried lifelines' RuntimeWarning with its pandas snippet ('>>> df.loc[...]') into the report -> the row, in no
    risk set, is left out as R coxph leaves it out ('Stop time must be > start time, NA created'): R's coefficient
    and SE (survival 3.5.3, coxph on these start-stop rows), no lifelines warning. ``n`` is the model's patients:
    R reports 'n= 7, number of events= 3 (1 observation deleted due to missingness)', 7 rows of 5 patients."""
    got = time_dependent_cox([0, 2, 3, 4, 5, 6], [0, 1, 1, 0, 1, 0], [np.nan, 1, np.nan, 2, np.nan, np.nan]).iloc[0]
    assert got.coef == pytest.approx(1.24245332489400, rel=1e-6)
    assert got.se == pytest.approx(1.41787269212784, rel=1e-6)
    assert (got.n, got.events, got.warning) == (5, 3, "1 patient(s) followed for no time (time 0) left out: in no "
                                                      "risk set")


def test_an_event_at_time_zero_is_not_an_event_of_the_time_dependent_model():
    """A patient with the event at time 0 has a zero-length start-stop row (0, 0] that the model leaves out (as R
    coxph: 'Stop time must be > start time, NA created'), yet the row's events counted it (4, the model has 3) ->
    the model's own events. Its coefficient and SE are R's for these rows without that patient (the same rows as
    when the patient is censored at 0: survival 3.5.3, test above), fitted or not."""
    got = time_dependent_cox([0, 2, 3, 4, 5, 6], [1, 1, 1, 0, 1, 0], [np.nan, 1, np.nan, 2, np.nan, np.nan]).iloc[0]
    assert got.coef == pytest.approx(1.24245332489400, rel=1e-6)
    assert got.se == pytest.approx(1.41787269212784, rel=1e-6)
    assert (got.n, got.events) == (5, 3)
    unfitted = time_dependent_cox([0, 2, 3], [1, 0, 0], [np.nan, 1, np.nan]).iloc[0]   # its only event at time 0
    assert unfitted.warning.startswith("not fitted") and unfitted.events == 0


def test_the_time_dependent_row_counts_the_patients_and_events_of_its_model(tmp_path):
    """response_survival.csv's time-dependent row counted in ``n`` a patient followed for no time (PFS 0), whom the
    model leaves out (R coxph deletes the row, tmerge refuses it), said n_excluded 0, and had no ``events`` column
    (the landmark row neither) -> n = the model's patients, n_excluded = those left out, events = the model's
    events (R on the cohort without that patient: survival 3.5.3 coxph(Surv(tstart, tstop, ev) ~ resp) on tmerge
    rows gives the same HR from these 29 start-stop patients), and the landmark row's events after the landmark."""
    from tilpheno.biomarkers.analysis import run_biomarkers
    from tilpheno.io.outcomes import read_outcomes

    o = read_outcomes(REF / "til_cohort_outcomes.csv")
    responder = o.best_response.isin(["CR", "PR"])
    o["response_months"] = np.where(responder, np.minimum(2.0, o.pfs_months / 2), np.nan)
    o.loc[0, ["pfs_months", "pfs_event", "response_months"]] = [0.0, 0, np.nan]
    res = run_biomarkers(pd.read_csv(REF / "til_cohort_phenotypes.csv"), o, tmp_path, markers=["cd8_pct_of_cd3"],
                         endpoints=("pfs",), n_perm=0, n_boot=0, roc_times=(), reports="none")
    written = pd.read_csv(tmp_path / "response_survival.csv").set_index("analysis")
    td, lm = written.loc["time-dependent Cox"], written.loc["landmark"]
    followed = o.pfs_months > 0
    assert (td.n, td.n_excluded, td.events) == (followed.sum(), 1, o.pfs_event[followed].sum())
    assert td.warning.startswith("1 patient(s) followed for no time (time 0) left out: in no risk set")
    without = time_dependent_cox(o.pfs_months[followed], o.pfs_event[followed],
                                 np.where(responder, o.response_months, np.nan)[followed]).iloc[0]
    assert td.hr == pytest.approx(without.hr, rel=1e-9)
    past = o.pfs_months > 3
    assert (lm.n, lm.events) == (past.sum(), o.pfs_event[past].sum())


def test_the_patients_left_out_of_the_response_analyses_are_named(tmp_path):
    """response_survival.csv said '17 patient(s) excluded, their time at or before the 3-month landmark' and '1
    patient(s) followed for no time (time 0) left out' without saying who (README: 'named in the warning'), so
    the statistician could not check the rows -> both warnings name them (the first 5, then how many more), in
    the order of the outcomes table."""
    from tilpheno.biomarkers.analysis import run_biomarkers
    from tilpheno.io.outcomes import read_outcomes

    o = read_outcomes(REF / "til_cohort_outcomes.csv")
    responder = o.best_response.isin(["CR", "PR"])
    o["response_months"] = np.where(responder, np.minimum(2.0, o.pfs_months / 2), np.nan)
    o.loc[3, ["pfs_months", "pfs_event", "response_months"]] = [0.0, 0, np.nan]
    run_biomarkers(pd.read_csv(REF / "til_cohort_phenotypes.csv"), o, tmp_path, markers=["cd8_pct_of_cd3"],
                   endpoints=("pfs",), n_perm=0, n_boot=0, roc_times=(), reports="none")
    written = pd.read_csv(tmp_path / "response_survival.csv").set_index("analysis")
    early = o.patient_id[o.pfs_months <= 3].tolist()
    assert len(early) > 5
    named = f"({', '.join(early[:5])} and {len(early) - 5} more)"
    assert (f"{len(early)} patient(s) excluded, their time at or before the 3-month landmark: "
            f"{int(o.pfs_event[o.pfs_months <= 3].sum())} with the event, "
            f"{int((o.pfs_event[o.pfs_months <= 3] == 0).sum())} censored {named}") in written.loc["landmark", "warning"]
    assert written.loc["time-dependent Cox", "warning"].startswith(
        f"1 patient(s) followed for no time (time 0) left out: in no risk set ({o.patient_id[3]})")
