"""Bootstrap internal validation against rms::validate(cph, B = 200).

The reference ran rms::validate with 20 seeds (tests/reference/validate_reference.csv): the apparent
Dxy must be equal (1e-9); the optimism-corrected Dxy and calibration slope are Monte Carlo estimates
from different random streams, so tilpheno's (B = 200, its own seed) must lie within 4 standard
deviations of R's runs' mean, sd taken over R's 20 runs (the sd of one run's estimate)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tilpheno.biomarkers.cox import newton_cox
from tilpheno.biomarkers.validation import validate_cox

REF = Path(__file__).parent / "reference"
VAL = pd.read_csv(REF / "validate_reference.csv", float_precision="round_trip")


def data(ds):
    if ds == "lung":
        return pd.read_csv(REF / "lung.csv").dropna(), ["age", "sex", "ph_ecog"]
    o = pd.read_csv(REF / "til_cohort_outcomes.csv").merge(pd.read_csv(REF / "til_cohort_phenotypes.csv"),
                                                            on="product_id")
    ep = ds.split("_")[1]
    return (o.assign(time=o[f"{ep}_months"], event=o[f"{ep}_event"]),
            ["cd8_pct_of_cd3", "cd8pd1_pct_of_cd8", "age", "sex", "ecog"])


@pytest.mark.parametrize("ds", sorted(VAL.dataset.unique()))
def test_validate_agrees_with_rms_within_monte_carlo_error(ds):
    want = VAL[VAL.dataset == ds]
    frame, variables = data(ds)
    got = validate_cox(frame, "time", "event", variables, B=200, seed=11)
    assert got.dxy_apparent == pytest.approx(want.dxy_orig.iloc[0], rel=1e-9)
    assert got.B == 200
    for ours, theirs in ((got.dxy_corrected, want.dxy_corrected), (got.slope_corrected, want.slope_corrected)):
        assert abs(ours - theirs.mean()) < 4 * theirs.std(ddof=1), (ours, theirs.mean(), theirs.std())
    assert got.dxy_corrected < got.dxy_apparent and got.slope_corrected < 1


def test_seeded_and_reproducible():
    frame, variables = data("til_pfs")
    a = validate_cox(frame, "time", "event", variables, B=20, seed=3)
    b = validate_cox(frame, "time", "event", variables, B=20, seed=3)
    assert a == b


def test_predicted_survival_equals_r_survfit_coxph():
    """S(6 months | x) of an Efron Cox fit equals R summary(survfit(fit, newdata), times = 6)."""
    from tilpheno.biomarkers.cox import design_matrix, linear_predictor, newton_cox
    from tilpheno.biomarkers.validation import predicted_survival

    ref = pd.read_csv(REF / "predicted_survival_reference.csv", float_precision="round_trip")
    for ds, want in ref.groupby("dataset"):
        frame, _ = data(ds)
        frame = frame.sort_values("product_id").reset_index(drop=True)
        X = design_matrix(frame, ["cd8_pct_of_cd3", "cd8pd1_pct_of_cd8", "age", "ecog"]).X.to_numpy(float)
        fit = newton_cox(frame.time, frame.event, X)
        lp = linear_predictor(X, fit.beta)
        got = predicted_survival(frame.time, frame.event, lp, lp[:8], 6.0)
        np.testing.assert_allclose(got, want.surv, rtol=1e-8)


def test_calibration_at_a_time_groups():
    from tilpheno.biomarkers.validation import calibration_at

    frame, variables = data("til_os")
    cal = calibration_at(frame, "time", "event", variables, 12.0, groups=4)
    assert cal.n.sum() == len(frame) and len(cal) == 4
    assert cal.predicted.is_monotonic_increasing
    assert ((cal.predicted > 0) & (cal.predicted < 1)).all()
    assert (cal.observed.between(cal.observed_ci_low, cal.observed_ci_high) | cal.observed.isna()).all()


CAL = pd.read_csv(REF / "calibration_reference.csv", float_precision="round_trip")


@pytest.mark.parametrize("ds", sorted(CAL.dataset.unique()))
def test_calibration_groups_and_values_equal_rms_calibrate(ds):
    """calibration_at said it was 'as rms::calibrate(cmethod = "KM")' but split the patients into equal-size rank
    groups (lung at 365 days: 57, 57, 57, 56), where rms cuts at the quantiles of c(0, 1, S(u | x)) (cut2 intervals):
    54, 58, 58, 57 -> the same groups. Against calibration_reference.csv (rms::calibrate(cph, cmethod = "KM", u,
    m = n %/% 4)'s mean.predicted and KM, equal to rms::groupkm's, with its n): each group's size equal, the mean
    predicted S(u) within 1e-9 (both Cox fits converged), the Kaplan-Meier S(u) within 1e-12. The TIL dose enters in
    10⁹ cells (predictions do not change with the unit)."""
    from tilpheno.biomarkers.validation import calibration_at

    want = CAL[CAL.dataset == ds]
    frame = pd.read_csv(REF / "lung.csv") if ds == "lung" else data(ds)[0]
    frame = frame.assign(til_dose_cells=frame.til_dose_cells / 1e9) if "til_dose_cells" in frame else frame
    variables = want.model.iloc[0].split(" + ")
    columns = ("time", "event") if ds == "lung" else (f"{ds[4:]}_months", f"{ds[4:]}_event")
    got = calibration_at(frame, *columns, variables, float(want.time.iloc[0]), groups=4)
    assert got.n.tolist() == want.n.tolist()
    np.testing.assert_allclose(got.predicted, want.predicted, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.observed, want.observed, rtol=0, atol=1e-12)


def test_newton_trial_step_that_overflows_is_halved_without_numpy_warnings():
    """From beta = 1 on this 12-patient bootstrap-like sample (the demo's calibration refit), the first
    Newton step is so long that every late risk set underflows (log(0), 0/0): that trial is rejected
    and halved, without RuntimeWarnings on the user's terminal, and the fit reaches the same
    estimate as from beta = 0."""
    import warnings

    t = np.array([18.24, 1.29, 3.94, 3.23, 9.37, 5.74, 3.18, 9.47, 18.4, 13.18, 3.66, 23.35])
    x = np.array([2.91, -3.27, -2.04, -10.49, -5.51, -2.05, -2.05, -7.05, -12.24, -6.93, -2.0, 13.45])[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_one = newton_cox(t, np.ones(12), x, np.ones(1), max_iter=30, tol=1e-7)
    from_zero = newton_cox(t, np.ones(12), x)
    assert from_one.converged and from_zero.converged
    assert from_one.beta[0] == pytest.approx(from_zero.beta[0], abs=1e-6)


MESSY = pd.read_csv(REF / "messy_cohorts.csv")
RESAMPLED = pd.read_csv(REF / "validate_resampled_reference.csv", float_precision="round_trip")
RESAMPLES = pd.read_csv(REF / "validate_resamples.csv")


@pytest.mark.parametrize("cohort,seed", list(RESAMPLED[["cohort", "seed"]].itertuples(index=False, name=None)))
def test_validate_equals_rms_given_its_bootstrap_samples(cohort, seed):
    """rms::validate(cph(Surv ~ x + z), B = 50) on 40, 25 and 15 patients (times of 0, whole-month ties),
    replayed on the samples R drew: equal optimism and equal number of samples used. rms keeps a sample whose
    partial likelihood has no finite maximum (its coxph.fit stops at a relative log-likelihood change of 1e-4
    in a few steps); the refit to a relative Newton step of 1e-7 in 30 steps left it out, which understated
    the optimism (15 patients, seed 1: slope optimism 0.2276 on 46 samples vs R's 0.2495 on 48)."""
    want = RESAMPLED[(RESAMPLED.cohort == cohort) & (RESAMPLED.seed == seed)].iloc[0]
    rows = RESAMPLES[(RESAMPLES.cohort == cohort) & (RESAMPLES.seed == seed)].sort_values("sample")
    samples = [np.array(r.split(), dtype=int) - 1 for r in rows.rows]
    got = validate_cox(MESSY[MESSY.cohort == cohort], "time", "event", ["x", "z"], resamples=samples)
    assert got.dxy_apparent == pytest.approx(want.dxy_orig, rel=1e-12)
    assert got.B == want.B
    assert got.dxy_optimism == pytest.approx(want.dxy_optimism, rel=1e-6)
    assert got.slope_optimism == pytest.approx(want.slope_optimism, rel=1e-6, abs=1e-9)


def test_a_model_singular_on_the_full_data_is_named_not_numpys_singular_matrix():
    """Three patients for four coefficients (marker, age, sex, ecog): `biomarkers` warned 'bootstrap validation not
    done (Singular matrix)', numpy's words; now the cause: too few events for the coefficients, or collinearity."""
    frame = pd.DataFrame({"time": [2.0, 5.0, 9.0], "event": [1, 1, 1], "x": [1.0, 3.0, 2.0], "age": [50.0, 61, 44],
                          "sex": [0.0, 1, 1], "ecog": [0.0, 1, 2]})
    with pytest.raises(ValueError, match=r"^the model cannot be fitted on the full data: its information matrix is "
                                         r"singular \(3 events for 4 coefficients, or collinear covariates\)$"):
        validate_cox(frame, "time", "event", ["x", "age", "sex", "ecog"], B=5)


@pytest.mark.parametrize("constant", [0.0, "M"])
def test_a_covariate_constant_among_the_patients_is_named_as_such(constant):
    """ecog 0 (or sex 'M') in every patient of the model: validation said 'no information on ecog: ... it varies only
    among patients censored before the first event', which it does not; sex 'M' was left out silently (no indicator
    column), so the validation row was for the marker alone under the name 'x + sex' -> refused as the Cox
    models are, naming the covariate."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"time": rng.exponential(10, 40), "event": (rng.random(40) < 0.7).astype(int),
                          "x": rng.normal(size=40), "c": constant})
    with pytest.raises(ValueError, match=r"^the model cannot be fitted on the full data: covariate\(s\) constant among "
                                         r"the 40 patients analysed: c$"):
        validate_cox(frame, "time", "event", ["x", "c"], B=5)


@pytest.mark.parametrize("variables", [["cd8"], ["cd8", "age"]])
def test_a_marker_with_a_monotone_likelihood_is_named_as_the_cause(variables):
    """The marker falls with time, so at every event time the patient with the event has the highest cd8 of those
    at risk (its hazard ratio is infinite): validation said 'the model does not converge on the full data' (with
    age: 'its information matrix is singular (... or collinear covariates)'); now the monotone marker, as the Cox
    models' warning names it."""
    time = np.arange(1.0, 21.0)
    frame = pd.DataFrame({"time": time, "event": np.resize([1, 0], 20), "cd8": 80.0 - 3 * time,
                          "age": np.random.default_rng(3).normal(60, 10, 20)})
    with pytest.raises(ValueError, match=r"^the model has no finite estimate on the full data: monotone likelihood: "
                                         r"at every event time the patients with the event have the highest cd8 "):
        validate_cox(frame, "time", "event", variables, B=5)


def test_samples_left_out_of_the_bootstrap_are_counted_and_said():
    """A bootstrap sample without an event (or whose refit rms counts as failed) is left out, as rms::validate
    leaves it out, and the optimism is the mean over the others; only the table's B column (used of B_asked)
    said so, and a bootstrap of no usable sample said 'no bootstrap sample could be fitted' -> each validation
    counts why samples were left out (``left_out``), the analysis warns with it, the error names it. The
    samples used give the same validation as asking for those samples alone."""
    frame, variables = data("til_pfs")
    complete = frame[["time", "event", *variables]].dropna()
    censored = np.flatnonzero(complete["event"].to_numpy() == 0)
    rng = np.random.default_rng(7)
    used = [rng.integers(0, len(complete), len(complete)) for _ in range(3)]
    got = validate_cox(frame, "time", "event", variables, resamples=[censored, *used, censored])
    alone = validate_cox(frame, "time", "event", variables, resamples=used)
    assert (got.B, got.B_asked, got.left_out) == (3, 5, "2 without an event")
    assert got.dxy_optimism == alone.dxy_optimism and got.slope_optimism == alone.slope_optimism
    assert alone.left_out == "" and "left_out" not in got.row()
    with pytest.raises(ValueError, match=r"^none of the 2 bootstrap samples could be used \(2 without an event\)$"):
        validate_cox(frame, "time", "event", variables, resamples=[censored, censored])


def test_the_analysis_warns_when_bootstrap_samples_were_left_out(tmp_path, monkeypatch):
    """The analysis' warning names the model, the samples used of those asked and why the others were left
    out (the validation's own count; here its samples drawn as the analysis draws them, the first two
    replaced by samples of censored patients only)."""
    import tilpheno.biomarkers.analysis as analysis
    from tilpheno.io.outcomes import read_outcomes

    def two_without_events(frame, duration, event, variables, B, seed):
        complete = frame[[duration, event, *variables]].dropna().reset_index(drop=True)
        rng = np.random.default_rng(seed)
        drawn = [rng.integers(0, len(complete), len(complete)) for _ in range(B)]
        censored = np.flatnonzero(complete[event].to_numpy() == 0)
        return validate_cox(frame, duration, event, variables, B, seed, resamples=[censored, censored, *drawn[2:]])

    monkeypatch.setattr(analysis, "validate_cox", two_without_events)
    outcomes = read_outcomes(REF / "til_cohort_outcomes.csv")
    res = analysis.run_biomarkers(pd.read_csv(REF / "til_cohort_phenotypes.csv"), outcomes, tmp_path,
                                  markers=["cd8_pct_of_cd3"], endpoints=("pfs",), n_perm=0, n_boot=6)
    said = [w for w in res.warnings if "bootstrap validation used" in w]
    assert said == ["pfs cd8_pct_of_cd3: bootstrap validation used 4 of 6 samples (2 without an event); the "
                    "optimism is their mean"]
    table = pd.read_csv(tmp_path / "validation.csv")
    assert (table.B.tolist(), table.B_asked.tolist()) == ([4], [6]) and "left_out" not in table.columns


def test_calibration_observed_ci_takes_the_analysis_conf_type():
    """With --conf-type log-log the Kaplan-Meier summaries' CIs were log-log but calibration.csv's observed CIs stayed
    log (calibration_at's KaplanMeier() default), while the methods said the KM CIs use 'log-log'. Now they take the
    analysis' conf_type: the log-log bounds are R survfit's, exp(-exp(log(-log S) -+ z se / log S)), with se the
    Greenwood standard error read back from the same group's log interval, log(S / lower) / z."""
    from scipy import stats

    from tilpheno.biomarkers.analysis import Settings, analyse
    from tilpheno.biomarkers.cohort import build_cohort
    from tilpheno.io.outcomes import read_outcomes

    pheno = pd.read_csv(REF / "til_cohort_phenotypes.csv")
    cohort = build_cohort(pheno, read_outcomes(REF / "til_cohort_outcomes.csv"), markers=["cd8_pct_of_cd3"])
    cal = {ct: analyse(cohort, Settings(endpoints=("os",), n_perm=0, n_boot=2, roc_times=(), conf_type=ct)).calibration
           for ct in ("log", "log-log")}
    log, loglog = cal["log"], cal["log-log"]
    assert log.observed.notna().sum() >= 3
    pd.testing.assert_series_equal(log.observed, loglog.observed)
    z = stats.norm.ppf(0.975)
    S = log.observed
    se = np.log(S / log.observed_ci_low) / z
    np.testing.assert_allclose(loglog.observed_ci_low, np.exp(-np.exp(np.log(-np.log(S)) - z * se / np.log(S))),
                               rtol=1e-10)
    np.testing.assert_allclose(loglog.observed_ci_high, np.exp(-np.exp(np.log(-np.log(S)) + z * se / np.log(S))),
                               rtol=1e-10)
