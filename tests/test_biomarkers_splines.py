"""Restricted cubic splines in Cox against rms::cph(Surv ~ rcs(x, k)) (tests/reference/rcs_*.csv).

The R reference is fitted with eps = 1e-12: cph's default (1e-4 relative log-likelihood change)
stops short of the optimum by up to 1.4 % in the coefficients on these data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tilpheno.biomarkers.splines import fit_spline, harrell_knots, rcs_basis, spline_rows

REF = Path(__file__).parent / "reference"
RCS = pd.read_csv(REF / "rcs_reference.csv", float_precision="round_trip")
CURVE = pd.read_csv(REF / "rcs_curve_reference.csv", float_precision="round_trip")
KNOTS = pd.read_csv(REF / "rcs_knots_reference.csv", float_precision="round_trip", keep_default_na=False)
MESSY_RCS = pd.read_csv(REF / "rcs_messy_reference.csv", float_precision="round_trip")
MESSY = pd.read_csv(REF / "messy_cohorts.csv")


def numbers(text):
    return [float(v) for v in text.split(";")]


def data(ds):
    if ds in ("lung", "veteran"):
        return pd.read_csv(REF / f"{ds}.csv")
    o = pd.read_csv(REF / "til_cohort_outcomes.csv").merge(pd.read_csv(REF / "til_cohort_phenotypes.csv"), on="product_id")
    ep = ds.split("_")[1]
    return o.assign(time=o[f"{ep}_months"], event=o[f"{ep}_event"], til_dose_1e9=o.til_dose_cells / 1e9)


KEYS = sorted(set(map(tuple, RCS[["dataset", "marker", "k"]].to_numpy())))


@pytest.mark.parametrize("key", KEYS, ids=[f"{a}-{b}-{c}" for a, b, c in KEYS])
def test_spline_cox_equals_rms_cph(key):
    ds, mk, k = key
    want = RCS[(RCS.dataset == ds) & (RCS.marker == mk) & (RCS.k == k)]
    fit = fit_spline(data(ds), "time", "event", mk, int(k))
    np.testing.assert_allclose(fit.knots, numbers(want.knots.iloc[0]), rtol=1e-14)
    c = fit.cox.coefficients
    np.testing.assert_allclose(c.coef, want.coef, rtol=1e-6)
    np.testing.assert_allclose(c.se, want.se, rtol=1e-6)
    w = want.iloc[0]
    assert fit.overall_chisq == pytest.approx(w.overall_chisq, rel=1e-6) and fit.overall_df == w.overall_df
    assert fit.nonlinear_chisq == pytest.approx(w.nonlin_chisq, rel=1e-6) and fit.nonlinear_df == w.nonlin_df
    assert fit.nonlinear_p == pytest.approx(w.nonlin_p, rel=1e-6)
    assert fit.cox.loglik == pytest.approx(w.loglik, rel=1e-12)
    cu = CURVE[(CURVE.dataset == ds) & (CURVE.marker == mk) & (CURVE.k == k)]
    lp = rcs_basis(cu.x, fit.knots) @ c.coef.to_numpy()
    np.testing.assert_allclose(lp, cu.lp, rtol=1e-6, atol=1e-9 * np.abs(cu.lp).max())
    # the plotted curve: log HR vs the median, zero at the reference, CI contains the estimate
    curve = fit.curve()
    at_ref = fit.curve([fit.reference])
    assert at_ref.log_hr.iloc[0] == 0 and at_ref.se.iloc[0] == 0
    assert (curve.ci_low <= curve.log_hr).all() and (curve.log_hr <= curve.ci_high).all()


@pytest.mark.parametrize("case", list(KNOTS.itertuples(index=False)), ids=[f"{c.case}-{c.k}" for c in KNOTS.itertuples()])
def test_knots_equal_rcspline_eval(case):
    """rcspline.eval's special cases, which rms::rcs(x, k) uses: a marker with a floor at 0 and a ceiling at
    100 in 40 patients (5 and 4 of them: before, knots at 0 and at quantiles of all values: 0;57.99;89.96
    where R has 1.86;38.96;97.21), 6 distinct values (before 1;2.85;4;5 for 4 knots, R 2;3;4;5: the inner
    values, with a warning), knots that tie, and 5 to 9 values (refused below 10, R needs 6); an 81 % floor (49 of
    60, 486 of 600, with pairs or a ceiling; with a middle value held by 5 %, 3 knots: R stops where tilpheno put
    knots at 0, 2.576 and 3.37 after moving the outer ones)."""
    if case.r_error:   # R stops: fewer than 6 values, or fewer than 3 unique knots
        with pytest.raises(ValueError, match="too few"):
            harrell_knots(numbers(case.x), int(case.k))
        return
    got = harrell_knots(numbers(case.x), int(case.k))
    np.testing.assert_allclose(got.knots, numbers(case.knots), rtol=1e-15)
    assert bool(got.note) == (case.r_warned or got.knots.size < case.k), got.note


def assert_equals_cph(fit, want):
    """``fit`` (fit_spline) equals R cph's rows ``want`` (one per term): knots within 1e-15, coefficients, SEs and
    the overall and nonlinear Wald chi-squares within 1e-6, their df exactly."""
    np.testing.assert_allclose(fit.knots, numbers(want.knots.iloc[0]), rtol=1e-15)
    np.testing.assert_allclose(fit.cox.coefficients.coef, want.coef, rtol=1e-6)
    np.testing.assert_allclose(fit.cox.coefficients.se, want.se, rtol=1e-6)
    w = want.iloc[0]
    assert (fit.overall_chisq, fit.overall_df) == (pytest.approx(w.overall_chisq, rel=1e-6), w.overall_df)
    assert (fit.nonlinear_chisq, fit.nonlinear_df) == (pytest.approx(w.nonlin_chisq, rel=1e-6), w.nonlin_df)


FLOOR_RCS = pd.read_csv(REF / "rcs_floor_reference.csv", float_precision="round_trip")
FLOOR_KEYS = sorted(set(map(tuple, FLOOR_RCS[["case", "k"]].to_numpy())))


@pytest.mark.parametrize("key", FLOOR_KEYS, ids=[f"{c}-{k}" for c, k in FLOOR_KEYS])
def test_spline_of_a_marker_with_an_81_percent_floor_equals_cph_rcs(key):
    """A marker 0 in 49 of the 60 patients (and with a 5 % ceiling too), the TIL cohort's PFS: the knots
    rcspline.eval places past the floor (within 1e-15), cph's coefficients, SEs and Wald tests (within 1e-6)."""
    case, k = key
    want = FLOOR_RCS[(FLOOR_RCS.case == case) & (FLOOR_RCS.k == k)]
    til = pd.read_csv(REF / "til_cohort_outcomes.csv").sort_values("product_id")
    x = numbers(KNOTS[KNOTS.case == case].x.iloc[0])
    fit = fit_spline(pd.DataFrame({"time": til.pfs_months, "event": til.pfs_event, "x": x}), "time", "event", "x", int(k))
    assert_equals_cph(fit, want)


MESSY_KEYS = sorted(set(map(tuple, MESSY_RCS[["cohort", "k"]].to_numpy())))


@pytest.mark.parametrize("key", MESSY_KEYS, ids=[f"{c}-{k}" for c, k in MESSY_KEYS])
def test_spline_on_a_small_messy_cohort_equals_cph_rcs(key):
    """cph(Surv ~ rcs(x, k)) on 40 and 25 patients with times of 0, whole-month ties and a marker with a
    floor and a ceiling: same knots (from the fit), coefficients and Wald tests."""
    cohort, k = key
    want = MESSY_RCS[(MESSY_RCS.cohort == cohort) & (MESSY_RCS.k == k)]
    fit = fit_spline(MESSY[MESSY.cohort == cohort], "time", "event", "x", int(k))
    assert_equals_cph(fit, want)
    assert fit.nonlinear_p == pytest.approx(want.nonlin_p.iloc[0], rel=1e-6)


def test_fewer_knots_than_asked_are_said_in_the_table():
    """6 distinct values, 5 knots asked: rcspline.eval places 4 (the inner values) and warns; the
    splines.csv row says so instead of a silent n_knots of 4."""
    frame = MESSY[MESSY.cohort == "m40"].assign(x=np.resize([1.0, 2, 3, 4, 5, 6], 40))
    row = spline_rows(fit_spline(frame, "time", "event", "x", 5), "pfs")
    assert row["n_knots"] == 4 and row["knots"] == "2;3;4;5"
    assert row["warning"].startswith("5 knots asked for, the marker has 6 distinct values: knots at the 4 inner ones")


def test_knots_need_distinct_values_and_valid_k():
    with pytest.raises(ValueError, match="3, 4 or 5"):
        harrell_knots(np.arange(50.0), 6)
    with pytest.raises(ValueError, match="too few distinct"):
        harrell_knots(np.r_[np.zeros(60), np.ones(60)], 4)
    # fewer than 6 values are refused by name (as rcspline.eval), not an IndexError
    with pytest.raises(ValueError, match="5 values: too few for a 4-knot spline"):
        harrell_knots(np.r_[np.arange(5.0), np.nan], 4)
    assert harrell_knots(np.arange(10.0), 3).knots.tolist() == [4.0, 4.5, 5.0]


def test_basis_is_linear_beyond_the_outer_knots():
    knots = np.array([1.0, 3.0, 6.0, 10.0])
    x = np.array([11.0, 12.0, 13.0, 14.0])
    second = np.diff(rcs_basis(x, knots), n=2, axis=0)
    np.testing.assert_allclose(second, 0, atol=1e-9)


def test_the_spline_is_one_term_of_the_ph_test():
    """R's cox.zph(fit) (terms = TRUE) tests rcs(x, k) as one term with k - 1 df; a test per basis
    column (x', x'') named columns no reader knows and made k - 1 tests of one hypothesis. With the
    spline alone in the model its term test is the global test."""
    d = data("til_pfs")
    fit = fit_spline(d, "pfs_months", "pfs_event", "cd4foxp3_pct_of_cd4", k=4)
    zph = fit.cox.zph.set_index("term")
    assert list(zph.index) == ["rcs(cd4foxp3_pct_of_cd4)", "GLOBAL"] and zph.df.tolist() == [3, 3]
    assert zph.chisq.iloc[0] == pytest.approx(zph.chisq.iloc[1], rel=1e-12)
    assert not any("'" in w for w in fit.cox.warnings), fit.cox.warnings
    adjusted = fit_spline(d, "pfs_months", "pfs_event", "cd8_pct_of_cd3", k=5, covariates=["age", "sex"])
    assert adjusted.cox.zph.term.tolist() == ["rcs(cd8_pct_of_cd3)", "age", "sex", "GLOBAL"]
    assert adjusted.cox.zph.df.tolist() == [4, 1, 1, 6]


COVARIATE_RCS = pd.read_csv(REF / "rcs_covariate_reference.csv", float_precision="round_trip", dtype={"na_z": str,
                                                                                                      "na_time": str})
COVARIATE_KEYS = sorted(set(map(tuple, COVARIATE_RCS[["cohort", "k"]].to_numpy())))


@pytest.mark.parametrize("key", COVARIATE_KEYS, ids=[f"{c}-{k}" for c, k in COVARIATE_KEYS])
def test_spline_with_a_covariate_places_knots_on_every_non_missing_marker_value(key):
    """cph(Surv ~ rcs(x, k) + z) with z and the time missing for some patients: rms evaluates rcs(x, k) on every
    non-missing x before the incomplete rows are dropped, so the knots come from all 40 (25) values of x, the
    fit from the complete cases (31 of 40, 19 of 25), whose knots differ."""
    cohort, k = key
    want = COVARIATE_RCS[(COVARIATE_RCS.cohort == cohort) & (COVARIATE_RCS.k == k)]
    w = want.iloc[0]
    frame = MESSY[MESSY.cohort == cohort].reset_index(drop=True)
    frame.loc[[int(i) - 1 for i in w.na_z.split()], "z"] = np.nan      # R's 1-based rows
    frame.loc[[int(i) - 1 for i in w.na_time.split()], "time"] = np.nan
    fit = fit_spline(frame, "time", "event", "x", int(k), covariates=["z"])
    np.testing.assert_allclose(fit.knots, numbers(w.knots), rtol=1e-15)
    assert fit.cox.n == w.n
    np.testing.assert_allclose(fit.cox.coefficients.coef, want.coef, rtol=1e-6)
    np.testing.assert_allclose(fit.cox.coefficients.se, want.se, rtol=1e-6)
    assert (fit.overall_chisq, fit.overall_df) == (pytest.approx(w.overall_chisq, rel=1e-6), w.overall_df)
    assert (fit.nonlinear_chisq, fit.nonlinear_df) == (pytest.approx(w.nonlin_chisq, rel=1e-6), w.nonlin_df)


def _indefinite(fit):
    """The fit with its covariance made indefinite (the first two coefficients coupled 1.2 times what a positive
    definite matrix allows), as Newton can leave it where the information is not positive definite."""
    import dataclasses

    V = fit.cox.covariance.copy()
    V[0, 1] = V[1, 0] = -1.2 * np.sqrt(V[0, 0] * V[1, 1])
    return dataclasses.replace(fit, cox=dataclasses.replace(fit.cox, covariance=V))


def test_a_curve_variance_that_is_not_estimable_is_blank_and_said_not_a_numpy_warning(monkeypatch, tmp_path):
    """An indefinite covariance gives some curve points a negative variance: numpy's 'invalid value
    encountered in sqrt' went to the terminal (sample_fcs' six patients, `tilpheno biomarkers`) and
    nothing to the warnings -> those points' se and CI are blank, the others as computed from V, and the
    analysis says how many points of which marker's curve."""
    import warnings

    from tilpheno.biomarkers import analysis
    from tilpheno.io.outcomes import read_outcomes

    fit = _indefinite(fit_spline(data("lung"), "time", "event", "age", 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        curve = fit.curve()
    V = fit.cox.covariance[:3, :3]
    B = rcs_basis(curve.x, fit.knots) - rcs_basis([fit.reference], fit.knots)
    variance = np.array([b @ V @ b for b in B])
    assert (variance < 0).any() and (variance > 0).any()
    np.testing.assert_allclose(curve.se[variance >= 0], np.sqrt(variance[variance >= 0]), rtol=1e-12)
    assert curve.se[variance < 0].isna().all() and curve.ci_low[variance < 0].isna().all()

    real = analysis.fit_spline
    monkeypatch.setattr(analysis, "fit_spline", lambda *a, **k: _indefinite(real(*a, **k)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = analysis.run_biomarkers(pd.read_csv(REF / "til_cohort_phenotypes.csv"),
                                      read_outcomes(REF / "til_cohort_outcomes.csv"), tmp_path,
                                      markers=["cd8_pct_of_cd3"], endpoints=("os",), n_perm=0, n_boot=0)
    said = [w for w in res.warnings if "spline curve's confidence band not estimable" in w]
    assert len(said) == 1 and said[0].startswith("os cd8_pct_of_cd3: "), res.warnings


def _cd8_run(frame: pd.DataFrame, tmp_path):
    """`biomarkers` (PFS, CD8 only) on the first len(frame) patients of the reference cohort, with PFS = frame's time
    and event and CD8 = frame's x."""
    from tilpheno.biomarkers.analysis import run_biomarkers
    from tilpheno.io.outcomes import read_outcomes

    outcomes = read_outcomes(REF / "til_cohort_outcomes.csv").iloc[:len(frame)].copy()
    outcomes["pfs_months"], outcomes["pfs_event"] = frame.time.to_numpy(), frame.event.astype(int).to_numpy()
    pheno = pd.read_csv(REF / "til_cohort_phenotypes.csv")
    pheno = pheno[pheno.product_id.isin(outcomes.product_id)].copy()
    pheno["cd8_pct_of_cd3"] = pheno.product_id.map(dict(zip(outcomes.product_id, frame.x)))
    return run_biomarkers(pheno, outcomes, tmp_path, markers=["cd8_pct_of_cd3"], endpoints=("pfs",), n_perm=0, n_boot=0)


def test_a_spline_of_a_marker_with_a_monotone_likelihood_keeps_its_row_with_the_reason(tmp_path):
    """CD8 falling with PFS time, so that every progression has the highest CD8 at risk (rcs_monotone_reference.csv):
    R's coxph(Surv ~ rcs(x, 4)) and cph run off ('Ran out of iterations', coxph's standard errors ~1000, and with a
    covariate z its standard error too: no ties in x, each event alone at the limit), as the linear model does. The
    spline was dropped from splines.csv (only a line among the warnings); now it keeps its row like the Cox models:
    patients, events and rms' knots, no estimate, 'not fitted: monotone likelihood ...', and the methods say why no
    covariate is estimated at the limit (the splines are unadjusted, as the univariable Cox model that is not fitted
    either). fit_spline with that covariate is not fitted, as R's z has no usable estimate."""
    ref = pd.read_csv(REF / "rcs_monotone_reference.csv", float_precision="round_trip")
    ref = ref[ref.case == "monotone"]
    assert ref.r_warning.str.contains("Ran out of iterations").all()
    coxph = ref[ref.fit.str.startswith("coxph")]
    assert (coxph.se > 50 * coxph.coef.abs()).all()   # no usable estimate, z included
    first = ref.iloc[0]
    frame = pd.DataFrame({c: [float(v) for v in first[c].split()] for c in ("time", "event", "x", "z")})
    with pytest.raises(ValueError, match="^monotone likelihood: .* the highest x among those at risk"):
        fit_spline(frame, "time", "event", "x", 4, covariates=["z"])
    res = _cd8_run(frame, tmp_path)
    row = pd.read_csv(res.files["splines.csv"]).set_index("marker").loc["cd8_pct_of_cd3"]
    assert row.warning.startswith("not fitted: monotone likelihood: at every event time the patients with the event have "
                                  "the highest cd8_pct_of_cd3 among those at risk")
    assert (row.n, row.events, row.n_knots) == (len(frame), frame.event.sum(), 4)
    assert numbers(row.knots) == pytest.approx([float(v) for v in first.knots.split()], rel=1e-9)
    assert np.isnan(row.overall_p) and np.isnan(row.overall_chisq) and not row.converged
    cox = res.cox_univariable.set_index("model_id")
    assert cox.at["pfs:univariable:continuous:cd8_pct_of_cd3", "warning"].startswith("not fitted: monotone likelihood")
    assert "no other covariate is left to estimate at that limit" in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_a_spline_separating_the_events_by_a_curve_is_named_with_its_basis_columns(tmp_path):
    """Events alternately at the highest and the lowest CD8 at risk (rcs_monotone_reference.csv, 'ushape'): the
    linear model is finite (R coxph: coef -0.018, se 0.015, equal here), but a curve high at both ends orders every
    event first: R's rcs fits run off ('Ran out of iterations', coefficients 17-34 in coxph). The spline is not
    fitted, its row kept, and the reason, which names the combination in rms' basis columns (cd8', cd8''), says
    what those columns are."""
    ref = pd.read_csv(REF / "rcs_monotone_reference.csv", float_precision="round_trip")
    ref = ref[ref.case == "ushape"]
    spline = ref[ref.fit == "coxph_rcs"]
    assert spline.r_warning.str.contains("Ran out of iterations").all() and (spline.coef.abs() > 10).all()
    linear = ref[ref.fit == "coxph_linear"].iloc[0]
    assert linear.r_warning == "" or pd.isna(linear.r_warning)
    frame = pd.DataFrame({c: [float(v) for v in linear[c].split()] for c in ("time", "event", "x")})
    res = _cd8_run(frame, tmp_path)
    cox = res.cox_univariable.set_index("model_id").loc["pfs:univariable:continuous:cd8_pct_of_cd3"]
    assert (cox.coef, cox.se) == (pytest.approx(linear.coef, rel=1e-6), pytest.approx(linear.se, rel=1e-6))
    row = pd.read_csv(res.files["splines.csv"]).set_index("marker").loc["cd8_pct_of_cd3"]
    assert row.warning.startswith("not fitted: monotone likelihood: at every event time the patients with the event "
                                  "have the highest ")
    assert "though no one of cd8_pct_of_cd3, cd8_pct_of_cd3', cd8_pct_of_cd3'' does so alone" in row.warning
    assert row.warning.endswith("; cd8_pct_of_cd3', cd8_pct_of_cd3'': the nonlinear basis columns of cd8_pct_of_cd3's "
                                "spline (rms' names), so a combination of them with cd8_pct_of_cd3 is a curve of "
                                "cd8_pct_of_cd3")


RCS_LIMIT = pd.read_csv(REF / "rcs_limit_reference.csv", float_precision="round_trip", keep_default_na=False,
                        na_values=["NA"])


@pytest.mark.parametrize("k", sorted(set(RCS_LIMIT.k)))
def test_a_spline_adjusted_for_a_covariate_with_a_monotone_likelihood_is_estimated_at_its_limit(k):
    """rcs(z, k) + x with every event at the highest x at risk (x 0/1, rcs_limit_reference.csv): fit_spline refused
    the whole model ('monotone likelihood: ... x'), where R coxph reports the spline beside x's huge coefficient
    ('coefficient may be infinite'), as the multivariable Cox models do -> x's coefficient is blank with the reason,
    the spline's coefficients, SEs and Wald tests are R's (coxph and its limit model, Surv(entry, time, event))."""
    rows = RCS_LIMIT[RCS_LIMIT.k == k]
    rec = rows.iloc[0]
    frame = pd.DataFrame({c: [float(v) for v in rec[c].split()] for c in ("time", "event", "x", "z")})
    fit = fit_spline(frame, "time", "event", "z", int(k), covariates=["x"])
    np.testing.assert_allclose(fit.knots, [float(v) for v in rec.knots.split()], rtol=1e-15)
    table = fit.cox.coefficients
    assert table.set_index("variable").loc["x"].isna().all()
    assert fit.cox.warnings[0].startswith("coefficient of x not estimable: monotone likelihood: ")
    for kind in ("coxph", "limit"):
        want = rows[(rows.fit == kind) & (rows.term != "x")]
        np.testing.assert_allclose(table.coef.iloc[:k - 1], want.coef, rtol=1e-6)
        np.testing.assert_allclose(table.se.iloc[:k - 1], want.se, rtol=1e-6)
        assert fit.overall_chisq == pytest.approx(want.overall_chisq.iloc[0], rel=1e-6)
        assert fit.nonlinear_chisq == pytest.approx(want.nonlinear_chisq.iloc[0], rel=1e-6)
    assert "coefficient of x not estimable" in spline_rows(fit, "pfs")["warning"]
