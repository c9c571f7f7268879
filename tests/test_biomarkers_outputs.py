"""Statistician tables of the biomarker analysis (issues 16/17): model ids, numeric cuts, km_table,
numbers at risk, log-rank O/E, Holm/BH, Lau94 conventions, recorded Cox warnings (issue 12)."""
from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tilpheno.biomarkers.analysis import NO_MARKER_EVENTS, run_biomarkers
from tilpheno.biomarkers.cox import fit_cox
from tilpheno.biomarkers.multiplicity import p_adjust
from tilpheno.biomarkers.survival import KaplanMeier
from tilpheno.io.outcomes import read_outcomes

REF = Path(__file__).parent / "reference"
MARKERS = ["til_dose_cells", "cd8_pct_of_cd3", "cd4foxp3_pct_of_cd4"]


@pytest.fixture(scope="module")
def res(tmp_path_factory):
    out = tmp_path_factory.mktemp("bio_out")
    return run_biomarkers(pd.read_csv(REF / "til_cohort_phenotypes.csv"), read_outcomes(REF / "til_cohort_outcomes.csv"),
                          out, markers=MARKERS, n_perm=199, seed=5, break_times=[0, 6, 12, 24], n_boot=10)


def test_cox_tables_have_model_ids_and_numeric_cuts(res):
    multi = pd.read_csv(res.files["cox_multivariable.csv"])
    per_model = multi.groupby("model_id").size()
    assert len(per_model) == 2 * 2 * len(MARKERS)  # endpoints x codings x markers
    assert (per_model == 4).all()  # marker + age + sex + ecog
    dich = multi[(multi.coding == "dichotomized")]
    assert dich.cut.notna().all() and (dich.cut_method == "median").all()
    d = res.cohort.data
    for rec in dich.itertuples():
        assert rec.cut == pytest.approx(d[rec.variable].median())
    assert multi[multi.coding == "continuous"].cut.isna().all()
    assert multi.converged.all() and (multi.max_scaled_score < 1e-6).all()
    assert {"wald_chisq", "score_chisq", "concordance_se", "zph_df", "zph_global_df"} <= set(multi.columns)


def test_doses_read_in_1e9_cells_in_every_table_of_the_report(res):
    """The report's responders table read 'til_dose_cells ... 3.61e+10 ± 2.07e+10; 3.2e+10 (...)' and 'resp_mean
    3.614e+10', its splines table knots '1.197e+10;2.08855e+10;...' and reference '2.664e+10', where the rest of the
    report reads doses in 10⁹ cells -> every number of a dose row in the dose's unit reads 'x ×10⁹', x the raw value
    (the CSV's, and the responders' mean, SD and median straight from the outcomes file) / 1e9 to 3 significant
    digits; the CSVs keep cells (codebook: marker unit)."""
    from tilpheno.biomarkers.report import table_view

    page = Path(res.files["report.html"]).read_text()
    assert re.search(r"\d\.?\d*e\+(09|10|11)", page) is None
    outcomes = pd.read_csv(REF / "til_cohort_outcomes.csv")
    resp = outcomes.til_dose_cells[outcomes.best_response.isin(["CR", "PR"])] / 1e9
    truth = f"{resp.mean():.3g} ± {resp.std():.3g}; {resp.median():.3g} "
    responders = pd.read_csv(res.files["responders.csv"])
    splines = pd.read_csv(res.files["splines.csv"])
    for frame, key in ((responders, "variable"), (splines, "marker")):
        view = table_view(frame)
        for raw, cells in zip(frame.itertuples(index=False), view["rows"]):
            if getattr(raw, key) != "til_dose_cells":
                continue
            shown = dict(zip(view["columns"], cells))
            for column in ("resp_mean", "resp_sd", "nonresp_median", "mean_diff", "mean_diff_ci_low", "reference"):
                if column in shown:
                    assert shown[column].endswith(" ×10⁹")
                    assert float(shown[column].split()[0]) == pytest.approx(getattr(raw, column) / 1e9, rel=5e-3)
            if "resp_summary" in shown:
                assert shown["resp_summary"].startswith(truth) and shown["resp_summary"].endswith(" ×10⁹")
                assert raw.resp_summary == shown["resp_summary"]    # the CSV's text reads as the report's
            if "knots" in shown:
                knots = [float(k) / 1e9 for k in raw.knots.split(";")]
                assert [float(k.split()[0]) for k in shown["knots"].split("; ")] == pytest.approx(knots, rel=5e-3)


def test_holm_and_bh_across_markers(res):
    uni = res.cox_univariable
    for _, grp in uni.groupby(["endpoint", "coding"]):
        assert len(grp) == len(MARKERS)
        np.testing.assert_array_equal(grp.p_holm, p_adjust(grp.p, "holm"))
        np.testing.assert_array_equal(grp.p_bh, p_adjust(grp.p, "BH"))
    multi = res.cox_multivariable
    assert multi[multi.coding == "covariate"].p_holm.isna().all()
    cuts = res.cutpoints
    for _, grp in cuts.groupby(["endpoint", "method"]):
        np.testing.assert_array_equal(grp.p_holm, p_adjust(grp.p_for_adjustment, "holm"))
    ms = cuts[cuts.method == "maxstat"]
    assert (ms.p_for_adjustment == ms.p_perm).all()
    med = cuts[cuts.method == "median"]
    assert (med.p_for_adjustment == med.logrank_p).all()


def test_lau94_capped_and_raw_bound_both_written(res):
    ms = res.cutpoints[res.cutpoints.method == "maxstat"]
    assert (ms.p_lau94 == ms.p_lau94_bound.clip(0, 1)).all()
    assert (ms.p_lau94 <= 1).all()


def test_km_table_every_curve_and_at_risk(res):
    kt = pd.read_csv(res.files["km_table.csv"])
    assert list(kt.columns[3:]) == ["time", "n.risk", "n.event", "n.censor", "surv", "std.err", "lower", "upper"]
    km = res.km
    curves = kt.groupby(["endpoint", "grouping", "group"]).size()
    assert len(curves) == len(km)
    d = res.cohort.outcomes
    whole = kt[(kt.endpoint == "os") & (kt.grouping == "all")]
    np.testing.assert_allclose(whole.surv, KaplanMeier().fit(d.os_months, d.os_event).table_.surv, rtol=1e-15)
    ar = res.at_risk
    assert sorted(ar.time.unique()) == [0, 6, 12, 24]
    first = ar[(ar.grouping == "all") & (ar.time == 0)]
    assert (first["n.risk"] == len(d)).all()
    six = ar[(ar.grouping == "all") & (ar.endpoint == "pfs") & (ar.time == 6)]["n.risk"].iloc[0]
    assert six == int((d.pfs_months >= 6).sum())


def test_logrank_observed_expected_sum(res):
    lr = res.logrank
    for _, g in lr.groupby(["endpoint", "grouping"]):
        assert g.observed.sum() == pytest.approx(g.expected.sum(), rel=1e-12)
        assert g.chisq.nunique() == 1


def test_analysis_dataset_is_the_modelled_data(res):
    ad = pd.read_csv(res.files["analysis_dataset.csv"])
    assert len(ad) == len(res.cohort.data)
    assert set(MARKERS) <= set(ad.columns) and {"pfs_months", "os_event", "age", "sex"} <= set(ad.columns)


def test_separation_is_reported_not_hidden():
    """Issue 12: a covariate that separates events gives a recorded warning, not a silent HR of 1e-10."""
    rng = np.random.default_rng(0)
    n = 40
    x = np.r_[np.zeros(20), np.ones(20)]
    t = np.r_[rng.uniform(1, 5, 20), rng.uniform(6, 10, 20)]
    e = np.r_[np.ones(20), np.zeros(20)]
    with pytest.raises(ValueError, match=r"monotone likelihood: .* had x = 0, .* hazard ratio \(1 vs 0\) is 0"):
        fit_cox(pd.DataFrame({"t": t, "e": e, "x": x}), "t", "e", ["x"])
    ok = fit_cox(pd.DataFrame({"t": t, "e": np.ones(n), "x": rng.normal(size=n)}), "t", "e", ["x"])
    assert not any("infinite" in w for w in ok.warnings)


@pytest.mark.parametrize("model", ["x", "x + z"])
def test_a_cox_model_without_estimate_names_its_cause_as_r_shows_it(model):
    """Every event in one group (monotone likelihood) was 'information matrix singular: a coefficient is infinite
    (...) or covariates are collinear' when Newton's information underflowed, and a fit with HR 6e15, p 1 when it
    did not (the same marker's univariable and multivariable models); a marker varying only among patients
    censored before the first event gave HR 1, CI 0 to inf, converged. Against R coxph on the same data
    (cox_degenerate_reference.csv): where R's coefficient runs off (huge se, a warning) the reason is the monotone
    likelihood, naming the column and the direction; where R gives NA, no information (or constant); an ordinary
    fit equals R's coefficient."""
    ref = pd.read_csv(REF / "cox_degenerate_reference.csv", keep_default_na=False, na_values=["NA"])
    for rec in ref[ref.model == model].itertuples(index=False):
        frame = pd.DataFrame({c: [float(v) for v in getattr(rec, c).split()] for c in ("time", "event", "x", "z")})
        variables = model.split(" + ")
        if rec.case == "ordinary":
            fit = fit_cox(frame, "time", "event", variables)
            assert fit.coefficients.coef.iloc[0] == pytest.approx(rec.coef_x, rel=1e-6, abs=1e-9)
            continue
        with pytest.raises(ValueError) as caught:
            fit_cox(frame, "time", "event", variables)
        said = str(caught.value)
        if np.isnan(rec.coef_x):   # R: NA
            expected = f"constant among the {len(frame)} patients analysed: x" if rec.case == "constant" else "no information on x: "
            assert expected in said and "infinite" not in said, (rec.case, said)
        else:                      # R: a coefficient running off, with a warning
            assert rec.r_warning and abs(rec.coef_x) > 10 and rec.se_x > 100 * abs(rec.coef_x)
            binary = set(frame.x) == {0.0, 1.0}
            side = (f"had x = {int(rec.coef_x > 0)}, or no one at risk did" if binary else
                    "highest x" if rec.coef_x > 0 else "lowest x")
            assert said.startswith("monotone likelihood: ") and side in said, (rec.case, said)
            assert "collinear" not in said


def _monotone_reference():
    """cox_monotone_covariates_reference.csv by case: (data frame, model variables, R's rows)."""
    ref = pd.read_csv(REF / "cox_monotone_covariates_reference.csv", keep_default_na=False, na_values=["NA"])
    for case, rows in ref.groupby("case", sort=False):
        rec = rows.iloc[0]
        frame = pd.DataFrame({c: [float(v) for v in col.split()] for c, col in zip(rec.columns.split(),
                                                                                   rec.data.split("; "))})
        yield case, frame, rec.model.split(" + "), rows


@pytest.mark.parametrize("case", ["binary_high", "monotone_high", "monotone_low", "monotone_continuous"])
def test_a_multivariable_cox_model_reports_the_covariates_beside_a_monotone_marker(case):
    """x + z (+ w) with every event at the highest (lowest) x at risk: the whole model was 'not fitted', where R
    coxph reports z and w beside x's huge coefficient (with 'coefficient may be infinite'). Now x's coefficient
    is blank with the reason and z, w are R's (cox_monotone_covariates_reference.csv: R coxph, and R's fit of the
    limit model, Surv(entry, time, event) on the kept risk sets); loglik is the limit's, concordance R's. Where z
    has no information at that limit (R: z 3.6, se 1375), the model is not fitted, naming both causes."""
    frame, variables, rows = next((f, v, r) for c, f, v, r in _monotone_reference() if c == case)
    if case == "monotone_continuous":
        with pytest.raises(ValueError, match="highest x among those at risk.*z has no information there too"):
            fit_cox(frame, "time", "event", variables, at_limit=True)
        return
    with pytest.raises(ValueError, match="^monotone likelihood: .* x "):   # alone, or without at_limit: as before
        fit_cox(frame, "time", "event", variables)
    fit = fit_cox(frame, "time", "event", variables, at_limit=True)
    table = fit.coefficients.set_index("variable")
    assert table.loc["x"].isna().all()
    value = int(rows[rows.term == "x"].coef.iloc[0] > 0)   # x is 0/1 in these cases
    assert fit.warnings[0].startswith(f"coefficient of x not estimable: monotone likelihood: at every event time the "
                                      f"patients with the event had x = {value}, or no one at risk did")
    for kind in ("coxph", "limit"):
        for rec in rows[(rows.fit == kind) & (rows.term != "x")].itertuples():
            assert table.at[rec.term, "coef"] == pytest.approx(rec.coef, rel=1e-6), (kind, rec.term)
            assert table.at[rec.term, "se"] == pytest.approx(rec.se, rel=1e-6), (kind, rec.term)
    limit = rows[rows.fit == "limit"].iloc[0]
    assert fit.loglik == pytest.approx(limit.loglik, abs=1e-9)
    assert fit.concordance == pytest.approx(rows[rows.fit == "coxph"].concordance.iloc[0], abs=1e-12)
    assert np.isnan(fit.wald_chisq) and fit.zph.p.isna().all()


def _binary_high_run(tmp_path):
    """`biomarkers` on cox_monotone_covariates_reference.csv's binary_high data: CD8 50 where x = 1 (the 10
    patients whose events all come first), else 10; age = z, ECOG = w. Returns the results and R's rows."""
    frame, _, rows = next((f, v, r) for c, f, v, r in _monotone_reference() if c == "binary_high")
    outcomes = read_outcomes(REF / "til_cohort_outcomes.csv").iloc[:len(frame)].copy()
    outcomes["pfs_months"], outcomes["pfs_event"] = frame.time.to_numpy(), frame.event.astype(int).to_numpy()
    outcomes["age"], outcomes["ecog"] = frame.z.astype(int).to_numpy(), frame.w.astype(int).to_numpy()
    pheno = pd.read_csv(REF / "til_cohort_phenotypes.csv")
    pheno = pheno[pheno.product_id.isin(outcomes.product_id)].copy()
    pheno["cd8_pct_of_cd3"] = pheno.product_id.map(dict(zip(outcomes.product_id, 10 + 40 * frame.x)))
    res = run_biomarkers(pheno, outcomes, tmp_path, markers=["cd8_pct_of_cd3"], covariates=["age", "ecog"],
                         endpoints=("pfs",), n_perm=0, n_boot=0)
    return res, rows


def test_a_dichotomised_markers_monotone_likelihood_is_worded_by_its_groups(tmp_path):
    """Every event in the high group while it is at risk: the reason for the 0/1 coding read 'the patients with the
    event have the highest cd8_pct_of_cd3 among those at risk' (the highest of 0 and 1: the internal coding, said as
    if of the marker's percentages), likewise 'the highest responder'. Now a 0/1 column is worded by its values, and
    the dichotomised marker by its side of the cut; a continuous marker keeps 'highest'."""
    res, _ = _binary_high_run(tmp_path)
    uni = res.cox_univariable.set_index("model_id")
    said = ("monotone likelihood: at every event time the patients with the event had cd8_pct_of_cd3 above 10, or no "
            "one at risk did (every event in that group while it was followed), so its hazard ratio (high vs low) is "
            "infinite")
    assert uni.at["pfs:univariable:dichotomized:cd8_pct_of_cd3", "warning"].startswith(f"not fitted: {said}")
    multi = res.cox_multivariable.set_index("model_id")
    assert multi.loc["pfs:multivariable:dichotomized:cd8_pct_of_cd3", "warning"].iloc[0].startswith(
        f"coefficient of cd8_pct_of_cd3 not estimable: {said}")
    assert uni.at["pfs:univariable:continuous:cd8_pct_of_cd3", "warning"].startswith(
        "not fitted: monotone likelihood: at every event time the patients with the event have the highest "
        "cd8_pct_of_cd3 among those at risk")


def test_the_multivariable_table_keeps_covariates_beside_a_monotone_marker(tmp_path):
    """The same data through `biomarkers`: a marker high (50) in the 10 patients whose events all come first,
    adjusted for age and ECOG. cox_multivariable.csv had the marker's row only, 'not fitted: monotone likelihood',
    and no age or ECOG estimate; now the marker's row is blank, 'coefficient of ... not estimable', and age, ECOG are
    R coxph's z and w (continuous and dichotomised coding alike: both split the patients the same way)."""
    res, rows = _binary_high_run(tmp_path)
    multi = pd.read_csv(res.files["cox_multivariable.csv"])
    r = rows[rows.fit == "coxph"].set_index("term")
    for coding in ("continuous", "dichotomized"):
        model = multi[multi.model_id == f"pfs:multivariable:{coding}:cd8_pct_of_cd3"].set_index("variable")
        assert list(model.index) == ["cd8_pct_of_cd3", "age", "ecog"], coding
        assert model.loc["cd8_pct_of_cd3", ["coef", "se", "hr", "p"]].isna().all()
        assert model.loc["cd8_pct_of_cd3", "warning"].startswith("coefficient of cd8_pct_of_cd3 not estimable: "
                                                                 "monotone likelihood")
        assert model.at["age", "coef"] == pytest.approx(r.at["z", "coef"], rel=1e-6)
        assert model.at["ecog", "se"] == pytest.approx(r.at["w", "se"], rel=1e-6)
    assert "the others are estimated at its limit" in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_a_combination_of_covariates_separating_the_events_is_named():
    """x1 + x2 orders every event highest among those at risk, neither column alone: R coxph runs off (18.6 and 18.7,
    se 1000, 'Ran out of iterations and did not converge'; cox_monotone_covariates_reference.csv), and fit_cox said
    'information matrix singular: covariates collinear, or a combination ...', not which. Now the combination is found
    from the data (linear programming) and named with its direction, a direction that, like R's coefficients, puts
    the events highest at every event time; lung's and veteran's models (finite in R) have none."""
    from tilpheno.biomarkers.cox import degenerate_column, monotone_combination, risk_set_extremes

    frame, variables, rows = next((f, v, r) for c, f, v, r in _monotone_reference() if c == "combination")
    assert rows.r_warning.iloc[0] and (rows.coef.abs() > 10).all() and (rows.se > 50 * rows.coef.abs()).all()
    with pytest.raises(ValueError) as caught:
        fit_cox(frame, "time", "event", variables)
    said = str(caught.value)
    assert said.startswith("monotone likelihood: at every event time the patients with the event have the highest x1 + ")
    assert "x2 among those at risk, though no one of x1, x2 does so alone" in said and "collinear" not in said
    assert degenerate_column(frame.time, frame.event, frame[variables]) is None

    def events_highest(score):
        _, high, dead = risk_set_extremes(frame.time, frame.event, score)
        return all(np.allclose(d, h, rtol=1e-12) for d, h in zip(dead, high))

    b = monotone_combination(frame.time, frame.event, frame[variables])
    assert events_highest(frame[variables].to_numpy() @ b.to_numpy())
    assert events_highest(frame[variables].to_numpy() @ rows.coef.to_numpy())   # R's run-off direction: one too
    lung = pd.read_csv(REF / "lung.csv").dropna()
    veteran = pd.read_csv(REF / "veteran.csv")
    assert monotone_combination(lung.time, lung.event, lung[["age", "sex", "ph_ecog"]]) is None
    assert monotone_combination(veteran.time, veteran.event, veteran[["trt", "karno", "age"]]) is None
    # a combination left once another column's coefficient is infinite (each risk set: the x = 1 patients at risk)
    limit = pd.DataFrame({"time": [2, 3, 4, 5, 6, 7, 8, 9, 10, 11], "event": [1, 0, 1, 1, 0, 1, 0, 0, 1, 0],
                          "x": [1, 0, 1, 1, 0, 1, 0, 0, 1, 0], "a": [3, 0, 0, 2, 0, 1, 0, 0, 0, 0],
                          "b": [2, 0, 4, 1, 0, 1, 0, 0, 1, 0]}).astype(float)
    with pytest.raises(ValueError, match=r"had x = 1, .*the score a \+ [0-9.]+ b has a monotone likelihood there"):
        fit_cox(limit, "time", "event", ["x", "a", "b"], at_limit=True)


def test_a_fit_that_converges_pays_no_linear_program(monkeypatch):
    """The combination check's linear program has a constraint per event and patient at risk with it (seconds for
    a thousand patients: 0.7 -> 5.9 s per multivariable fit when it ran before every fit); it runs only when a fit
    diverged. lung's model (finite in R) fits with the same numbers and no call; the separating combination of the
    test above still calls it and is named."""
    import tilpheno.biomarkers.cox as cox

    calls = []
    real = cox.monotone_combination
    monkeypatch.setattr(cox, "monotone_combination", lambda *a, **k: calls.append(1) or real(*a, **k))
    lung = pd.read_csv(REF / "lung.csv").dropna()
    fit = fit_cox(lung, "time", "event", ["age", "sex", "ph_ecog"])
    assert calls == [] and fit.converged
    frame, variables, _ = next((f, v, r) for c, f, v, r in _monotone_reference() if c == "combination")
    with pytest.raises(ValueError, match="though no one of x1, x2 does so alone"):
        fit_cox(frame, "time", "event", variables)
    assert calls == [1]


def test_ph_violation_goes_to_warning():
    rng = np.random.default_rng(3)
    n = 300
    x = rng.integers(0, 2, n).astype(float)
    # crossing hazards: x=1 dies early or very late
    t = np.where(x == 1, np.where(rng.random(n) < 0.5, rng.exponential(0.3, n), rng.exponential(8, n)),
                 rng.exponential(2, n))
    fit = fit_cox(pd.DataFrame({"t": t, "e": 1.0, "x": x}), "t", "e", ["x"])
    assert fit.zph.p.iloc[0] < 0.05
    assert any("proportional hazards doubtful for x" in w for w in fit.warnings)


def test_constant_marker_or_empty_median_group_warns_instead_of_crashing(tmp_path):
    """A marker whose median is its largest value (constant, or most patients at a ceiling) puts
    every patient in the low group: one KM curve, no log-rank test (its O/E row: observed = expected
    = the events counted here), and the Cox models' warnings name the marker, not an internal column."""
    pheno = pd.read_csv(REF / "til_cohort_phenotypes.csv")
    outcomes = read_outcomes(REF / "til_cohort_outcomes.csv")
    pheno["cd8_pct_of_cd3"] = 40.0
    pheno["cd4foxp3_pct_of_cd4"] = np.where(np.arange(len(pheno)) < 35, 50.0, np.linspace(1, 40, len(pheno)))
    res = run_biomarkers(pheno, outcomes, tmp_path, markers=["cd8_pct_of_cd3", "cd4foxp3_pct_of_cd4"],
                         endpoints=("os",), n_perm=0, n_boot=0)
    events = int(outcomes.os_event.sum())
    for marker in ("cd8_pct_of_cd3", "cd4foxp3_pct_of_cd4"):
        lr = res.logrank[res.logrank.grouping == f"{marker}:median"]
        assert lr[["group", "n", "observed", "expected"]].values.tolist() == [["low", 60, events, events]]
        assert lr.p.isna().all()
        cut = res.cutpoints[(res.cutpoints.marker == marker) & (res.cutpoints.method == "median")]
        assert (cut.n_low.iloc[0], cut.n_high.iloc[0]) == (60, 0) and np.isnan(cut.p_raw.iloc[0])
        assert any(w.startswith(f"os {marker} univariable dichotomized: Cox model not fitted (every patient at or "
                                "below the median cut ") and w.endswith("no high group)") for w in res.warnings), res.warnings
        assert any(w == f"os {marker} univariable continuous: Cox model not fitted (covariate(s) constant among the 60 "
                   f"patients analysed: {marker})" for w in res.warnings) == (marker == "cd8_pct_of_cd3")
    assert not any("_dich" in w or "_cont" in w for w in res.warnings)
    # the models that could not be fitted keep their rows in the Cox table: who was in them, no estimate, why
    uni = res.cox_univariable.set_index("model_id")
    row = uni.loc["os:univariable:dichotomized:cd8_pct_of_cd3"]
    assert (row.variable, row.n, row.events, row.n_low, row.n_high) == ("cd8_pct_of_cd3", 60, events, 60, 0)
    assert np.isnan(row.hr) and np.isnan(row.p) and np.isnan(row.p_holm) and not row.converged
    assert row.warning == ("not fitted: every patient at or below the median cut 40 (values tied at the cut): no high "
                           "group"), row.warning
    fitted = uni.loc["os:univariable:dichotomized:cd4foxp3_pct_of_cd4"]
    assert np.isnan(fitted.hr)   # constant as well (every patient at or below the median)
    cont = uni.loc["os:univariable:continuous:cd4foxp3_pct_of_cd4"]
    assert np.isfinite(cont.hr) and cont.p_holm == cont.p   # the one fitted test of its family: adjusted alone
    written = pd.read_csv(tmp_path / "cox_univariable.csv")
    assert len(written) == len(uni) == 4
    # `tilpheno plan --observed` on that folder named neither the table nor the model: "hazard ratio must be
    # positive and not 1 (got nan)"; now one line naming both and why the model has no estimate
    from typer.testing import CliRunner

    from tilpheno.cli import app

    result = CliRunner().invoke(app, ["plan", "--observed", str(tmp_path), "--marker", "cd8_pct_of_cd3", "--endpoint", "os"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output == (f"error: {tmp_path / 'cox_univariable.csv'}: the dichotomized model of 'cd8_pct_of_cd3', "
                             f"endpoint 'os', has no hazard ratio to plan with ({row.warning})\n")


def test_plan_observed_names_the_wrong_folder_and_the_markers_it_has(tmp_path):
    """`plan --observed` on a `process` output folder said "cox_univariable.csv: No such file or directory"; with a
    marker or endpoint the analysis does not have, "no univariable models for marker 'cd8'" without the ones it has
    -> the folder is said not to be a biomarker analysis; the analysis' markers (endpoints) are listed."""
    from typer.testing import CliRunner

    from tilpheno.cli import app

    pheno = pd.read_csv(REF / "til_cohort_phenotypes.csv")
    markers = ["cd8_pct_of_cd3", "cd4foxp3_pct_of_cd4"]
    run_biomarkers(pheno, read_outcomes(REF / "til_cohort_outcomes.csv"), tmp_path / "bio", markers=markers,
                   endpoints=("pfs",), n_perm=0, n_boot=0, reports="none")   # plan reads the tables only
    (tmp_path / "run").mkdir()
    pheno.to_csv(tmp_path / "run" / "phenotypes.csv", index=False)

    def plan(folder, marker, endpoint="pfs"):
        result = CliRunner().invoke(app, ["plan", "--observed", str(folder), "--marker", marker, "--endpoint", endpoint])
        assert result.exit_code == 2, result.output
        return result.output

    table = tmp_path / "bio" / "cox_univariable.csv"
    assert plan(tmp_path / "run", "cd8_pct_of_cd3") == (
        f"error: {tmp_path / 'run'}: no cox_univariable.csv: not the output folder of a biomarker analysis "
        "(`tilpheno biomarkers -o FOLDER` writes it)\n")
    assert plan(tmp_path / "bio", "cd8") == (f"error: {table}: no univariable models for marker 'cd8', endpoint 'pfs'; "
                                             f"its pfs markers: {', '.join(sorted(markers))}\n")
    assert plan(tmp_path / "bio", "cd8_pct_of_cd3", "os") == (
        f"error: {table}: no univariable models for marker 'cd8_pct_of_cd3', endpoint 'os'; its endpoints: pfs\n")


def test_dichotomised_marker_without_events_in_one_group_is_named_as_such():
    """No event in one level: the partial likelihood rises to a limit as the coefficient runs to
    minus infinity (R coxph: 'coefficient may be infinite'); the reason given names that, not a bare
    numpy 'Singular matrix'."""
    outcomes = read_outcomes(REF / "til_cohort_outcomes.csv")
    high = (np.arange(len(outcomes)) % 2).astype(float)
    frame = pd.DataFrame({"t": outcomes.os_months, "e": np.where(high == 1, 0, outcomes.os_event), "x": high})
    assert frame.loc[frame.x == 1, "e"].sum() == 0 and frame.loc[frame.x == 0, "e"].sum() > 0
    with pytest.raises(ValueError, match=r"monotone likelihood: .* had x = 0, or no one at risk did .* is 0"):
        fit_cox(frame, "t", "e", ["x"])


def test_multiplicity_count_is_every_row_given_an_adjusted_p(res):
    """The report's 'N marker-level tests' counts every test that got Holm/BH p-values, the responders
    table's marker rows (Welch/Mann-Whitney, adjusted across markers) included."""
    from tilpheno.biomarkers.report import n_tests

    names = ["cutpoints.csv", "cox_univariable.csv", "cox_multivariable.csv", "splines.csv",
             "time_auc_comparisons.csv", "responders.csv"]
    adjusted = sum(int(pd.read_csv(res.files[name]).p_holm.notna().sum()) for name in names)
    assert n_tests(res) == adjusted
    assert f"{adjusted} marker-level tests" in res.files["report.html"].read_text()


def test_multiplicity_count_leaves_out_a_row_without_a_p_value(res):
    """A cut-point row without a p-value (a log-rank split without variance) gets no adjusted p, as in R
    p.adjust, and is no test: the count is the rows given an adjusted p, not the table's length."""
    import dataclasses

    from tilpheno.biomarkers.analysis import adjust_markers
    from tilpheno.biomarkers.report import n_tests

    cuts = res.cutpoints.copy()
    cuts.loc[cuts.index[0], "p_for_adjustment"] = np.nan
    cuts = adjust_markers(cuts, "p_for_adjustment", ["endpoint", "method"])
    changed = dataclasses.replace(res, cutpoints=cuts)
    assert cuts.p_holm.isna().sum() == 1
    assert n_tests(changed) == n_tests(res) - 1


def test_counts_read_without_decimals_and_fractions_keep_theirs(res):
    """Counts stored as floats because a column has blanks (the Cox tables' n_low/n_high, the log-rank
    table's observed events) read as counts ('30', not '30.00'); a fraction (calibration's observed,
    a rate, a p-value) keeps its convention even where it happens to be whole."""
    from tilpheno.biomarkers.formatting import cell
    from tilpheno.biomarkers.report import table_view

    for frame, column in ((res.cox_univariable, "n_low"), (res.cox_univariable, "n_high"), (res.logrank, "observed")):
        view = table_view(frame)
        at = view["columns"].index(column)
        values = frame[column].to_numpy(float)
        assert np.isfinite(values).any()
        assert [row[at] for row in view["rows"]] == [str(int(v)) if np.isfinite(v) else "–" for v in values]
    mixed = pd.DataFrame({"observed": [0.25, 1.0, np.nan], "rate": [1.0, 1.0, 1.0], "p": [1.0, 1.0, 1.0],
                          "n": [12.0, np.nan, 3.0]})
    rows = table_view(mixed)["rows"]
    assert [r[0] for r in rows] == [cell("observed", 0.25), cell("observed", 1.0), "–"]
    assert {r[1] for r in rows} == {cell("rate", 1.0)} == {"100.0 %"}
    assert [r[3] for r in rows] == ["12", "–", "3"]


def test_exported_figures_are_the_same_bytes_at_any_time():
    """figures/*.svg and figures.pdf of two runs on the same data are identical: the SVGs carried
    the local date and time (<dc:date>, to the microsecond) and random ids, the PDF its creation date."""
    import matplotlib.pyplot as plt

    from tilpheno.biomarkers.report import FigureExport, _svg

    def export():
        out = FigureExport(pdf=True)
        fig, ax = plt.subplots()
        ax.step([0, 6, 12], [1, 0.8, 0.5])
        ax.set_title("PFS")
        _svg(fig, "PFS", out, "km_pfs_all")
        return out.svgs[0][1], out.pdf_bytes()

    first, later = export(), export()
    assert b"<dc:date>" not in first[0] and b"CreationDate" not in first[1] and first == later


@pytest.mark.parametrize("pdf", [False, True])
def test_a_figure_is_laid_out_and_drawn_once_for_its_file_its_page_and_its_pdf_page(monkeypatch, pdf):
    """A Kaplan-Meier figure with a p text (constrained layout) is laid out once, in its SVG drawing (the
    exported file and the report page's copy are cut from that drawing), and its figures.pdf page is drawn once
    more with that layout and that file's box. The p text was placed on a drawing of its own (Agg) and the PDF
    page was laid out again, with a dry drawing for its tight box (about half the CPU of a run with pdf=True):
    3 layouts and 4 drawings with ``pdf``, 2 and 2 without. The PDF page's size is the SVG file's (points)."""
    import matplotlib.figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    from tilpheno.biomarkers.report import FigureExport, _svg

    runs, draws = [], []
    execute = ConstrainedLayoutEngine.execute
    monkeypatch.setattr(ConstrainedLayoutEngine, "execute", lambda self, fig: runs.append(fig) or execute(self, fig))
    draw = matplotlib.figure.Figure.draw
    monkeypatch.setattr(matplotlib.figure.Figure, "draw", lambda self, renderer: draws.append(1) or draw(self, renderer))
    fig = _km_test_figure()
    export = FigureExport(pdf=pdf)
    page = _svg(fig, "PFS", export, "km_pfs_all")
    assert len(runs) == 1 and len(draws) == (2 if pdf else 1)
    assert page["svg"].startswith('<svg class="plot"') and export.svgs[0][0] == "km_pfs_all"
    if pdf:
        media = re.search(rb"/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", export.pdf_bytes())
        assert media is not None
        svg = re.search(rb'<svg[^>]* width="([\d.]+)pt" height="([\d.]+)pt"', export.svgs[0][1])
        assert [float(v) for v in media.groups()] == pytest.approx([float(v) for v in svg.groups()], abs=1e-3)


def _path_points(d: str, step: float = 0.5) -> np.ndarray:
    """The points along an SVG path of M and L commands (user units), every ``step`` units along each segment."""
    xy = np.array([float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", d)]).reshape(-1, 2)
    points = [xy[:1]]
    for a, b in zip(xy[:-1], xy[1:]):
        n = max(2, int(np.hypot(*(b - a)) / step) + 1)
        points.append(a + np.linspace(0.0, 1.0, n)[:, None] * (b - a))
    return np.vstack(points)


def test_the_p_text_is_clear_of_the_curves_in_the_figure_as_drawn(res):
    """The p text goes in the corner of the plot covering the least of the curves, measured in the drawing itself:
    in every exported Kaplan-Meier figure of the test cohort with a p text (each has a free corner), its box in
    the file crosses no survival curve and no median line (their SVG paths, walked every 0.5 pt). It was
    measured on an Agg drawing made before the numbers-at-risk labels were set, whose plot was wider: the box
    of 'Overall survival by TIL dose (median cut)' was put bottom left, over the high group's curve."""
    from lxml import etree

    ns = {"s": "http://www.w3.org/2000/svg"}
    checked = 0
    for name in sorted((Path(res.files["report.html"]).parent / "figures").glob("km_*.svg")):
        root = etree.parse(name).getroot()
        box = root.find(".//s:g[@id='tp-pvalue']//s:path", ns)
        if box is None:
            continue
        corners = _path_points(re.sub(r"[MLQz]", " ", box.get("d")))
        (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
        for group in root.iterfind(".//s:g[@id]", ns):
            if re.fullmatch(r"tp-(curve|median)-\d", group.get("id")):
                xy = _path_points(group.find("s:path", ns).get("d"))
                inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
                assert not inside.any(), (name.name, group.get("id"), xy[inside][:3])
        checked += 1
    assert checked == 2 * 2 * len(MARKERS)   # endpoints x cuts (median, maxstat) x markers


def _km_test_figure():
    from tilpheno.biomarkers.analysis import Settings
    from tilpheno.biomarkers.report import km_figure

    t = np.array([2.0, 5.0, 7.0, 11.0, 13.0, 20.0, 3.0, 8.0, 15.0])
    e = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    return km_figure([("low", t[:5], e[:5]), ("high", t[5:], e[5:])], "PFS by CD8", "progression-free", Settings(),
                     "log-rank p = 0.5")


def _label_figure():
    """A figure without a layout engine whose y label reaches past its left edge (a tight box beyond the figure)."""
    import matplotlib.pyplot as plt

    from tilpheno.biomarkers.report import matplotlib_rc

    with matplotlib_rc():
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        ax.plot([0.0, 1e9, 3e9], [0.2, -0.1, 0.4])
        ax.set_ylabel("log hazard ratio vs median")
        ax.set_title("OS: til_dose_cells\noverall p = 0.3")
    return fig


def _texts(svg: str) -> list[tuple[str, float, float]]:
    """Each <text>'s string and position (x, y in points) from its document's viewBox origin."""
    from lxml import etree

    root = etree.fromstring(svg.encode("utf-8") if isinstance(svg, str) else svg)
    x0, y0 = (float(v) for v in root.get("viewBox").split()[:2])
    found = []
    for t in root.iter("{http://www.w3.org/2000/svg}text"):
        if t.get("x") is not None:
            x, y = float(t.get("x")), float(t.get("y"))
        else:
            x, y = (float(v) for v in re.search(r"translate\(([-\d.e]+) ([-\d.e]+)\)", t.get("transform")).groups())
        found.append((t.text, x - x0, y - y0))
    return found


@pytest.mark.parametrize("make", [_km_test_figure, _label_figure])
def test_a_figure_is_drawn_once_for_its_file_and_its_page(monkeypatch, make):
    """report._svg draws a figure once (with the SVG writer; the layout engine runs in that drawing) and cuts both
    outputs from it: the exported file is what savefig(bbox_inches="tight") writes (its size, and every text at
    the same place from the top left of what is shown, to matplotlib's 1e-6 pt printing), and the page shows the
    same texts. It drew three times (a dry drawing for the layout and tight box, the file, the page: about a
    third of the biomarker report's CPU each)."""
    import io

    import matplotlib.figure
    from lxml import etree

    from tilpheno.biomarkers.report import FigureExport, _svg, matplotlib_rc

    reference = make()
    with matplotlib_rc():
        buf = io.BytesIO()
        reference.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    tight = buf.getvalue()
    fig = make()
    draws = []
    draw = matplotlib.figure.Figure.draw
    monkeypatch.setattr(matplotlib.figure.Figure, "draw", lambda self, renderer: draws.append(1) or draw(self, renderer))
    export = FigureExport()
    page = _svg(fig, "figure", export, "figure")
    assert len(draws) == 1
    exported = export.svgs[0][1]
    size = lambda svg: [etree.fromstring(svg).get(k) for k in ("width", "height")]  # noqa: E731
    assert size(exported) == size(tight)
    want, got = _texts(tight), _texts(exported)
    assert [t[0] for t in got] == [t[0] for t in want] and len(want) > 5
    assert max(abs(a - b) for g, w in zip(got, want) for a, b in zip(g[1:], w[1:])) <= 2e-6
    on_page = re.findall(r"<text[^>]*>([^<]*)</text>", page["svg"])
    assert on_page == [t[0] for t in want]


def test_a_variance_that_is_not_estimable_is_a_recorded_warning_not_a_numpy_one(monkeypatch):
    """Newton can stop where the information matrix is not positive definite, so that some variances
    come out negative. numpy's 'invalid value in sqrt' went to the terminal and nothing to the table;
    now the fit records which variances are not estimable and leaves their SE, CI and Wald p blank.
    Where a real fit stops depends on the floating point of the machine and on lifelines' start
    (six patients, four covariates of sample_fcs did it on one machine and raised a singular
    information on another), so the last Newton point is made indefinite here: the coupling of the
    first two covariates twice what a positive definite matrix allows."""
    import warnings

    from tilpheno.biomarkers import cox

    real = cox.newton_cox

    def indefinite(time, event, X, beta0=None, **kw):
        fit = real(time, event, X, None, **kw)
        info = fit.derivatives.information.copy()
        info[0, 1] = info[1, 0] = 2.0 * np.sqrt(info[0, 0] * info[1, 1])
        return cox.NewtonFit(fit.beta, cox.EfronDerivatives(fit.derivatives.loglik, fit.derivatives.score, info),
                             fit.iterations, fit.converged, fit.last_step)

    monkeypatch.setattr(cox, "newton_cox", indefinite)
    rng = np.random.default_rng(11)
    frame = pd.DataFrame({"t": rng.exponential(10, 40), "e": rng.random(40) < 0.7,
                          "a": rng.normal(size=40), "b": rng.normal(size=40), "c": rng.normal(size=40)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fit = fit_cox(frame.astype(float), "t", "e", ["a", "b", "c"], start="zero")
    blank = fit.coefficients[fit.coefficients.se.isna()]
    assert list(blank.variable) == ["a", "b"]
    assert blank[["hr_ci_low", "hr_ci_high", "z", "p"]].isna().all().all()
    assert fit.coefficients.set_index("variable").loc["c", ["se", "p"]].notna().all()
    note = next(w for w in fit.warnings if "not estimable" in w)
    assert "a, b" in note, note


def test_newton_never_takes_a_point_without_a_finite_log_likelihood(monkeypatch):
    """On the way to an infinite coefficient (monotone likelihood) every trial point of a step can
    underflow the risk sets. After 30 halvings Newton took the step anyway, and the coefficients
    came back NaN (sample_fcs' six patients with four covariates, from lifelines' start, on one
    machine; where exactly depends on the last bits of the start). It now stops at the last point
    with a finite log-likelihood, not converged. Here every point but the start has none."""
    from tilpheno.biomarkers import cox

    real = cox.efron_derivatives
    start = np.array([0.2, -0.1])

    def wall(time, event, X, beta, entry=None):
        d = real(time, event, X, beta, entry)
        if np.array_equal(beta, start):
            return d
        return cox.EfronDerivatives(float("nan"), d.score * np.nan, d.information * np.nan)

    rng = np.random.default_rng(5)
    t, ev, X = rng.exponential(10, 30), (rng.random(30) < 0.7).astype(float), rng.normal(size=(30, 2))
    expected = real(t, ev, X, start)
    monkeypatch.setattr(cox, "efron_derivatives", wall)
    fit = cox.newton_cox(t, ev, X, start)
    assert not fit.converged and np.array_equal(fit.beta, start)
    assert fit.derivatives.loglik == expected.loglik


def test_methods_name_the_p_adjusted_without_permutations():
    """--permutations 0: the maximally selected cut's Holm/BH p is the Lausen-Schumacher 1992 p, but the
    methods said '0 permutations of the scores' and that the permutation p was adjusted."""
    from tilpheno.biomarkers.analysis import Settings, analyse
    from tilpheno.biomarkers.cohort import build_cohort
    from tilpheno.biomarkers.report import methods_text

    pheno = pd.read_csv(REF / "til_cohort_phenotypes.csv")
    outcomes = read_outcomes(REF / "til_cohort_outcomes.csv")
    cohort = build_cohort(pheno, outcomes, markers=["cd8_pct_of_cd3", "cd4_pct_of_cd3"], covariates=[])
    results = analyse(cohort, Settings(endpoints=("pfs",), n_perm=0, n_boot=0))
    ms = results.cutpoints[results.cutpoints.method == "maxstat"]
    assert len(ms) == 2 and (ms.p_for_adjustment == ms.p_lau92).all()
    text = " ".join(methods_text(results))
    assert "the Lausen-Schumacher (1992) p of the maximally selected statistic" in text
    assert "permutations of the scores" not in text and "no permutation p-value (0 permutations asked for)" in text
    # and codebook.csv, which said 'p used for Holm/BH (perm, else log-rank)': the maxstat rows' p is Lausen 1992's
    from tilpheno.biomarkers.codebook import codebook

    meaning = codebook({"cutpoints.csv": results.cutpoints}).set_index("column").at["p_for_adjustment", "meaning"]
    assert "the Lausen-Schumacher 1992 p with 0 permutations" in meaning
    med = results.cutpoints[results.cutpoints.method == "median"]
    assert (med.p_for_adjustment == med.logrank_p).all() and "other rows the log-rank p" in meaning


def test_methods_state_the_smallest_group_of_a_candidate_cut():
    """With 15 patients a cut leaving 1 (6.7 %) at or below it is a candidate (floor(1.5) = 1, as maxstat),
    but the methods said 'at least 10% of patients in each group'."""
    from types import SimpleNamespace

    from tilpheno.biomarkers.analysis import Settings
    from tilpheno.biomarkers.cutpoints import candidate_cuts
    from tilpheno.biomarkers.report import methods_text

    assert candidate_cuts(np.arange(15.0))[1].min() == 1
    cohort = SimpleNamespace(covariates=[], outcomes=pd.DataFrame(index=range(15)), data=pd.DataFrame(index=range(15)))
    text = " ".join(methods_text(SimpleNamespace(settings=Settings(), cohort=cohort)))
    assert "at least 10% of patients in each group" not in text
    assert "at least max(1, floor(n minprop)) at or below the cut and n - floor(n maxprop) above it" in text


@pytest.mark.parametrize("case", ["all_zero", "one_time", "no_events"])
def test_degenerate_survival_is_one_recorded_warning_not_a_stderr_flood(tmp_path, case):
    """PFS all 0 (matplotlib warned 'identical low and high xlims' once per KM figure, 21 lines of stderr for
    10 markers), all at one time, or no events: the figures are drawn without a warning and results carry
    one warning naming the endpoint's columns."""
    import warnings

    outcomes = read_outcomes(REF / "til_cohort_outcomes.csv")
    if case == "all_zero":
        outcomes["pfs_months"] = 0.0
    elif case == "one_time":
        outcomes["pfs_months"] = 5.0
    else:
        outcomes["pfs_event"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = run_biomarkers(pd.read_csv(REF / "til_cohort_phenotypes.csv"), outcomes, tmp_path,
                             markers=["cd8_pct_of_cd3"], endpoints=("pfs",), n_perm=0, n_boot=0)
    said = [w for w in res.warnings if w.startswith("pfs (pfs_months, pfs_event): ")]
    assert len(said) == 1, res.warnings
    expected = {"all_zero": "every time is 0 (60 patients", "one_time": "every time is 5 (60 patients",
                "no_events": "no events among 60 patients"}[case]
    assert expected in said[0]
    assert (tmp_path / "figures" / "km_pfs_all.svg").is_file()


@pytest.mark.parametrize("case", ["all_zero", "one_event_time", "phenotyped_one_event_time"])
def test_ph_test_not_computable_is_said_once_per_endpoint(tmp_path, case):
    """Every PFS time 0, or every PFS event at 4 months (of all patients, or only of the phenotyped ones, the
    models' patients, the other five's events at 7 months): besides the endpoint's note (none in the last case),
    each of the four Cox models of every marker added 'proportional-hazards test (cox.zph) not computable ...'
    (R cox.zph stops there). Now the endpoint's one note says the test is not computable and the models' warning
    column keeps its own line."""
    outcomes = read_outcomes(REF / "til_cohort_outcomes.csv")
    pheno = pd.read_csv(REF / "til_cohort_phenotypes.csv")
    if case == "all_zero":
        outcomes["pfs_months"] = 0.0
    else:
        censored = outcomes.pfs_event == 0
        outcomes.loc[~censored, "pfs_months"] = 4.0
        outcomes.loc[censored, "pfs_months"] = 4.0 + np.arange(1, censored.sum() + 1)
    if case == "phenotyped_one_event_time":   # five patients without a product, each with an event at 7 months
        unphenotyped = outcomes.product_id.isin(pheno.product_id[-5:])
        outcomes.loc[unphenotyped, ["pfs_months", "pfs_event"]] = (7.0, 1)
        pheno = pheno.iloc[:-5]
    res = run_biomarkers(pheno, outcomes, tmp_path,
                         markers=["cd8_pct_of_cd3", "cd4_pct_of_cd3"], endpoints=("pfs",), n_perm=0, n_boot=0)
    pfs = [w for w in res.warnings if w.startswith("pfs")]
    assert len(pfs) == 1 and "the proportional-hazards test is not computable" in pfs[0], pfs
    assert not any("cox.zph" in w for w in res.warnings), res.warnings
    cox = pd.concat([res.cox_univariable, res.cox_multivariable])
    assert cox.zph_p.isna().all() and cox.warning.str.contains("cox.zph\\) not computable: every event at one time").all()


def test_ph_test_not_computable_for_one_marker_is_said_once_for_it(tmp_path):
    """Every PFS event at 4 months but five at 7 months, the five without a CD8 value (a failed tube): the endpoint
    has events at two times, CD8's models (its complete cases) at one. Each of CD8's four Cox models added
    'proportional-hazards test (cox.zph) not computable: its information matrix is singular (e.g. every event at
    one time)' (4 lines). Now one line for the marker says so, with its patients and events counted from the data
    (R cox.zph stops with an error on such a model: cox_one_event_time_reference.csv); CD4's models, events at both
    times, have their PH test."""
    outcomes = read_outcomes(REF / "til_cohort_outcomes.csv")
    pheno = pd.read_csv(REF / "til_cohort_phenotypes.csv")
    censored = outcomes.pfs_event == 0
    outcomes.loc[~censored, "pfs_months"] = 4.0
    outcomes.loc[censored, "pfs_months"] = 4.0 + np.arange(1, censored.sum() + 1)
    late = outcomes.index[~censored][:5]
    outcomes.loc[late, "pfs_months"] = 7.0
    pheno.loc[pheno.product_id.isin(outcomes.product_id[late]), "cd8_pct_of_cd3"] = np.nan
    res = run_biomarkers(pheno, outcomes, tmp_path,
                         markers=["cd8_pct_of_cd3", "cd4_pct_of_cd3"], endpoints=("pfs",), n_perm=0, n_boot=0)
    with_cd8 = outcomes[outcomes.product_id.isin(pheno.product_id[pheno.cd8_pct_of_cd3.notna()])]
    assert set(with_cd8.pfs_months[with_cd8.pfs_event == 1]) == {4.0}
    pfs = [w for w in res.warnings if "proportional-hazards" in w or "cox.zph" in w]
    assert pfs == [f"pfs cd8_pct_of_cd3: every event ({int(with_cd8.pfs_event.sum())}) among the {len(with_cd8)} "
                   "patients of its univariable and multivariable Cox models at 4 months: the proportional-hazards "
                   "test is not computable (R cox.zph stops with an error); zph columns blank"], pfs
    cox = pd.concat([res.cox_univariable, res.cox_multivariable])
    cd8 = cox[cox.model_id.str.endswith(":cd8_pct_of_cd3")]
    assert cd8.zph_p.isna().all() and cd8.warning.str.contains("cox.zph\\) not computable: every event at one time").all()
    assert cox[cox.model_id.str.endswith(":cd4_pct_of_cd3")].zph_p.notna().all()


def test_codebook_describes_each_files_observed_column(res):
    """logrank.csv's `observed` holds event counts, calibration.csv's a Kaplan-Meier fraction: one dict key for
    both made the codebook call logrank.csv's counts 'Kaplan-Meier survival at time in the group, fraction'."""
    book = pd.read_csv(res.files["codebook.csv"], keep_default_na=False).set_index(["file", "column"])
    logrank = pd.read_csv(res.files["logrank.csv"])
    assert (logrank.observed == logrank.observed.round()).all()   # counts, as the codebook must say
    assert tuple(book.loc[("logrank.csv", "observed")]) == ("observed events", "events", "log-rank")
    calibration = pd.read_csv(res.files["calibration.csv"])
    assert calibration.observed.dropna().between(0, 1).all()   # blank: 12 months past the group's last time
    assert book.loc[("calibration.csv", "observed")].unit == "fraction"


def test_the_codebook_says_what_responders_csv_compares(res):
    """responders.csv's `variable` names the variable compared (sex, each of its levels on a row of its own, in
    `level`), but the codebook gave it the Cox tables' meaning 'model term: the marker, or a covariate (categorical
    as var[level] vs the first level)', and its `p` 'two-sided Wald (Cox) / the row's test'."""
    book = pd.read_csv(res.files["codebook.csv"], keep_default_na=False).set_index(["file", "column"])
    responders = pd.read_csv(res.files["responders.csv"], keep_default_na=False)
    cox = pd.read_csv(res.files["cox_multivariable.csv"], keep_default_na=False)
    assert "sex[M]" in set(cox.variable) and book.loc[("cox_multivariable.csv", "variable")].meaning.startswith(
        "model term")
    sex = responders[responders.variable == "sex"]
    assert list(sex.level) == ["F", "M"] and not responders.variable.str.contains("[", regex=False).any()
    assert sex.p.nunique() == 1   # one test of the variable, on each level's row
    meaning = book.loc[("responders.csv", "variable")].meaning
    assert "model term" not in meaning and "responders and non-responders" in meaning and "level" in meaning, meaning
    p = book.loc[("responders.csv", "p")]
    assert "Wald" not in p.meaning + p.method and "the row's test" in p.meaning, tuple(p)


def test_a_prespecified_cut_beyond_every_value_is_named_once(tmp_path):
    """A pre-specified cut outside the marker's range (CD8 1000 %; a dose cut of 20 meant as 20 x 10^9 cells) puts
    everyone in one group: the Cox reason said '(values tied at the cut)' where no value is at 1000, and nothing
    said the cut lies outside the values. Now one warning per cut with the marker's range, and the reason is right."""
    pheno = pd.read_csv(REF / "til_cohort_phenotypes.csv")
    outcomes = read_outcomes(REF / "til_cohort_outcomes.csv")
    cuts = pd.DataFrame({"marker": ["cd8_pct_of_cd3", "til_dose_cells"], "endpoint": ["", ""], "cutpoint": [1000.0, 20.0]})
    res = run_biomarkers(pheno, outcomes, tmp_path, markers=["cd8_pct_of_cd3", "til_dose_cells"], cutpoints=cuts,
                         n_perm=0, n_boot=0)
    cd8, dose = pheno.cd8_pct_of_cd3, outcomes.til_dose_cells
    outside = [w for w in res.warnings if w.startswith("pre-specified cut ")]
    assert outside == [
        f"pre-specified cut 1000 for cd8_pct_of_cd3 lies at or above every value ({cd8.min():.4g} to {cd8.max():.4g}): "
        "one group only; cut-points are in the marker's unit as measured",
        f"pre-specified cut 20 for til_dose_cells lies below every value ({dose.min():.4g} to {dose.max():.4g}): one "
        "group only; cut-points are in the marker's unit as measured (cells, e.g. 2e10 for 20 x 10^9)"]
    row = res.cox_univariable.set_index("model_id").loc["os:univariable:dichotomized:cd8_pct_of_cd3"]
    assert row.warning == "not fitted: every patient at or below the prespecified cut 1000 (every value lies below it): no high group"


def test_auc_and_calibration_times_beyond_follow_up_are_said(tmp_path):
    """AUC asked at 6 and 60 months with follow-up to 35 months: the 60-month AUC (and, with PFS cut at 11 months,
    the 12-month calibration) was dropped without a word; now a warning names the time and the last time."""
    outcomes = read_outcomes(REF / "til_cohort_outcomes.csv")
    outcomes["pfs_months"] = np.minimum(outcomes.pfs_months, 11.0)
    res = run_biomarkers(pd.read_csv(REF / "til_cohort_phenotypes.csv"), outcomes, tmp_path,
                         markers=["cd8_pct_of_cd3", "cd4foxp3_pct_of_cd4"], n_perm=0, n_boot=5, roc_times=[6, 60],
                         reports="none")   # tables only: the claims are about the warnings and the tables
    last_os = outcomes.os_months.max()
    assert sorted(set(res.time_auc.time)) == [6.0]
    assert ("os: time-dependent AUC not computed at 60 months: at or beyond the last time of the patients with every "
            f"marker ({last_os:g} months)") in res.warnings
    assert ("pfs: time-dependent AUC not computed at 60 months: at or beyond the last time of the patients with every "
            "marker (11 months)") in res.warnings
    assert "pfs calibration (cd8_pct_of_cd3, cd4foxp3_pct_of_cd4): not computed at 12 months, at or beyond the last " \
           "time (11 months)" in res.warnings
    assert set(res.calibration.endpoint) == {"os"}


def test_methods_do_not_describe_bootstrap_analyses_that_were_not_run():
    """--bootstrap 0 runs no validation, calibration or time-dependent AUC (their tables are empty), but the methods
    said 'each multivariable continuous model was refitted in 0 bootstrap samples' and 'cumulative/dynamic AUC at
    6, 12 months ... (0 resamples)'."""
    from tilpheno.biomarkers.analysis import Settings, analyse
    from tilpheno.biomarkers.cohort import build_cohort
    from tilpheno.biomarkers.report import extra_methods

    cohort = build_cohort(pd.read_csv(REF / "til_cohort_phenotypes.csv"), read_outcomes(REF / "til_cohort_outcomes.csv"),
                          markers=["cd8_pct_of_cd3", "cd4_pct_of_cd3"], covariates=[])
    results = analyse(cohort, Settings(endpoints=("pfs",), n_perm=0, n_boot=0))
    assert results.validation.empty and results.time_auc.empty and results.calibration.empty
    text = " ".join(extra_methods(results))
    assert "refitted in" not in text and "cumulative/dynamic AUC" not in text
    assert "Internal validation, calibration and time-dependent AUC: not done (0 bootstrap samples asked for)." in text


@pytest.mark.parametrize("level, said", [(0.90, "90%"), (0.975, "97.5%")])
def test_an_analysis_at_another_level_says_that_level_everywhere_in_its_report(level, said):
    """Settings(conf_level=0.90): the Cox tables' CIs are 90% ones, but the forest plots' column read 'HR (95% CI)'
    and the text above them 'Wald 95% confidence intervals' -> both give the level used; no '95%' is left on the
    page (the methods' AUC and spline levels: test_biomarkers_tdroc). At 0.975 they said '98%' (the level rounded
    to a whole percent): now '97.5%'."""
    from scipy import stats

    from tilpheno.biomarkers.analysis import Settings, analyse
    from tilpheno.biomarkers.cohort import build_cohort
    from tilpheno.biomarkers.report import render_report

    cohort = build_cohort(pd.read_csv(REF / "til_cohort_phenotypes.csv"), read_outcomes(REF / "til_cohort_outcomes.csv"),
                          markers=["cd8_pct_of_cd3", "til_dose_cells"], covariates=[])
    results = analyse(cohort, Settings(endpoints=("pfs",), n_perm=0, n_boot=20, conf_level=level))
    cox = results.cox_univariable.dropna(subset=["hr"]).iloc[0]
    z = stats.norm.ppf(1 - (1 - level) / 2)   # 1.645 at 0.90, 2.241 at 0.975
    assert np.log(cox.hr_ci_high / cox.hr) == pytest.approx(z * cox.se, rel=1e-6)   # the CIs are at the level
    page = render_report(results)
    assert f"HR ({said} CI)" in page and f"Wald {said} confidence intervals" in page
    assert re.search(r"\b(95|98) ?%", page) is None


def test_an_endpoint_without_events_is_one_warning_not_one_per_marker_and_model(tmp_path):
    """PFS without events: after the endpoint's warning came, per marker, 'maximally selected cut-point not
    computed', 'no log-rank test: no events', four 'Cox model not fitted (no events)', 'spline model not fitted',
    'bootstrap validation not done' (70 lines for 10 markers) -> the endpoint's one line says once that no marker
    model is estimated; the Cox rows stay, 'not fitted: no events'; OS is analysed and warned about as before."""
    outcomes = read_outcomes(REF / "til_cohort_outcomes.csv")
    outcomes["pfs_event"] = 0
    res = run_biomarkers(pd.read_csv(REF / "til_cohort_phenotypes.csv"), outcomes, tmp_path, markers=MARKERS,
                         n_perm=0, n_boot=5)
    pfs = [w for w in res.warnings if w.startswith("pfs")]
    assert len(pfs) == 1, pfs
    assert pfs[0].startswith("pfs (pfs_months, pfs_event): no events among 60 patients: ")
    assert "no marker is analysed beyond its Kaplan-Meier summaries" in pfs[0]
    for table in (res.cox_univariable, res.cox_multivariable):
        rows = table[(table.endpoint == "pfs") & (table.coding != "covariate")]
        assert len(rows) == 2 * len(MARKERS) and (rows.warning == "not fitted: no events").all()
        assert table[table.endpoint == "os"].hr.notna().all()
    assert (res.cutpoints[res.cutpoints.endpoint == "os"].method == "maxstat").sum() == len(MARKERS)
    assert any(w.startswith("os ") for w in res.warnings)   # OS's own warnings (PH doubtful, ...) still said


def test_events_only_among_patients_without_a_product_are_said_once(tmp_path):
    """Every patient who progressed has no phenotype row: the whole-cohort curve has events (no endpoint note),
    but every marker analysis has none -> one line per endpoint naming the patients with a product."""
    outcomes = read_outcomes(REF / "til_cohort_outcomes.csv")
    phenotypes = pd.read_csv(REF / "til_cohort_phenotypes.csv")
    progressed = outcomes.loc[outcomes.pfs_event == 1, "product_id"]
    phenotypes = phenotypes[~phenotypes.product_id.isin(progressed)]
    res = run_biomarkers(phenotypes, outcomes, tmp_path, markers=MARKERS, n_perm=0, n_boot=0, endpoints=("pfs",))
    pfs = [w for w in res.warnings if w.startswith("pfs")]
    assert pfs == [f"pfs (pfs_months, pfs_event): no events among the {len(phenotypes)} patients with a phenotyped "
                   f"product; {NO_MARKER_EVENTS}"]


def test_a_log_rank_test_without_variance_is_explained_under_its_tables(tmp_path, res):
    """Every low-CD8 patient censored at 0.1 months, before the first progression: at every event time only the
    high group is at risk, the log-rank statistic has no variance and chisq, p are blank ('–') in the log-rank and
    cut-point tables, explained only among the warnings at the top of the page -> a note under each table says
    why and what R prints instead (R survdiff on such data: chisq 0 on 0 df, p 1; an error when everyone at risk
    has the event: logrank_no_variance_reference.csv), and that no p is given. Tables without a blank: no note."""
    import html

    from tilpheno.biomarkers.report import NO_LOGRANK_NOTE

    r = pd.read_csv(REF / "logrank_no_variance_reference.csv").set_index("case")
    assert tuple(r.loc["one_group_with_events", ["chisq", "df", "p"]]) == (0, 0, 1) and r.at["all_die_at_once", "r_error"]
    assert "chisq 0 on 0 df, p 1 (an error when everyone at risk has the event)" in NO_LOGRANK_NOTE
    outcomes = read_outcomes(REF / "til_cohort_outcomes.csv")
    pheno = pd.read_csv(REF / "til_cohort_phenotypes.csv")
    cd8 = pheno.set_index("product_id").cd8_pct_of_cd3
    low = (outcomes.product_id.map(cd8) <= cd8.median()).to_numpy()
    outcomes.loc[low, "pfs_event"] = 0
    outcomes.loc[low, "pfs_months"] = 0.1
    nv = run_biomarkers(pheno, outcomes, tmp_path, markers=["cd8_pct_of_cd3"], endpoints=("pfs",), n_perm=0, n_boot=0)
    assert nv.logrank.set_index("grouping").loc["cd8_pct_of_cd3:median"].chisq.isna().all()
    page = html.unescape((tmp_path / "report.html").read_text(encoding="utf-8"))
    for title in ("Log-rank observed and expected events (logrank.csv)", "Cut-points (cutpoints.csv)"):
        after = page[page.index(f">{title}</h3>"):]
        assert after[:after.index("<table")].count(NO_LOGRANK_NOTE) == 1, title
    assert NO_LOGRANK_NOTE not in html.unescape(res.files["report.html"].read_text(encoding="utf-8"))


def test_methods_say_when_a_cox_model_is_not_fitted(tmp_path):
    """The methods listed what goes to the Cox tables' 'warning' column but not that a model with a monotone
    likelihood or without information is not fitted (no estimate, where R prints one): a reader of the page
    could not tell the convention. The rule stated is the one applied: the monotone model's row says so."""
    from types import SimpleNamespace

    from tilpheno.biomarkers.analysis import Settings
    from tilpheno.biomarkers.report import methods_text

    cohort = SimpleNamespace(covariates=[], outcomes=pd.DataFrame(index=range(4)), data=pd.DataFrame(index=range(4)))
    text = " ".join(methods_text(SimpleNamespace(settings=Settings(), cohort=cohort)))
    assert "A model is not fitted, its row kept with 'not fitted: why', when a covariate has no information" in text
    assert "or, alone in the model, a monotone likelihood (at every event time the patients with the event have its " \
           "highest" in text
    assert "In a multivariable model a single covariate with a monotone likelihood has its coefficient left blank as " \
           "not estimable" in text
    assert "or when a combination of covariates has one (found by linear programming" in text
    with pytest.raises(ValueError, match="^monotone likelihood: at every event time the patients with the event"):
        fit_cox(pd.DataFrame({"t": [1.0, 2, 3, 4, 5], "e": [1, 0, 1, 0, 0], "x": [1.0, 0, 1, 0, 0]}), "t", "e", ["x"])


def test_time_dependent_cox_of_an_endpoint_without_events_is_not_a_singular_matrix(tmp_path):
    """PFS without events and response_months given: beside the endpoint's one warning came 'pfs: time-dependent
    Cox for response not fitted (LinAlgError: A singular matrix detected.)', lifelines' words for 'no events', and
    response_survival.csv lost the row -> the row stays, 'not fitted: no events', and no second pfs line."""
    outcomes = read_outcomes(REF / "til_cohort_outcomes.csv")
    outcomes["pfs_event"] = 0
    responded = outcomes.best_response.isin(["CR", "PR"])
    outcomes["response_months"] = np.where(responded, np.minimum(2.0, outcomes.pfs_months / 2), np.nan)
    res = run_biomarkers(pd.read_csv(REF / "til_cohort_phenotypes.csv"), outcomes, tmp_path,
                         markers=["cd8_pct_of_cd3"], endpoints=("pfs",), n_perm=0, n_boot=0)
    assert [w for w in res.warnings if w.startswith("pfs")] == [
        f"pfs (pfs_months, pfs_event): no events among 60 patients: no median, log-rank test or hazard ratio can be "
        f"estimated; {NO_MARKER_EVENTS}"]
    td = res.response_survival.set_index("analysis").loc["time-dependent Cox"]
    assert td.warning == "not fitted: no events" and np.isnan(td.hr)
    assert (td.n, td.n_responders) == (60, responded.sum())


def test_methods_state_the_blank_follow_up_and_the_two_p_values_of_a_split(res):
    """Read as a statistician, the report left three things unstated: km.csv's median follow-up blank in groups
    where every patient had the event ('–', no word why), the cut-point table's statistic and p_raw on median
    (and pre-specified) rows, defined only for the maximally selected cut, beside a different log-rank p for the
    same split (0.23 vs 0.22 on the demo), and calibration's observed blank past a group's last time. Now the
    methods say each. Checked against lifelines: a blank follow-up is a reverse Kaplan-Meier curve that never
    reaches 0.5, and logrank_p is the Mantel-Haenszel test of the split, not p_raw."""
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test as lifelines_logrank

    methods = " ".join(html.unescape((Path(res.files["report.html"])).read_text(encoding="utf-8")).split())
    assert "it is blank where that curve does not reach 0.5, e.g. in a group where every patient had the event" in methods
    assert "For (a) and (b), statistic and p_raw are that standardised statistic at the one cut" in methods
    assert "the two p-values of a split differ, and neither accounts for the search" in methods
    assert "observed blank, as the 12-month rate, where the group's last time is before 12 months" in methods
    km = pd.read_csv(res.files["km.csv"])
    cuts = pd.read_csv(res.files["cutpoints.csv"])
    d = res.cohort.data
    blank = 0
    for rec in km[km.grouping != "all"].itertuples():
        marker, method = rec.grouping.split(":")
        tcol, ecol = f"{rec.endpoint}_months", f"{rec.endpoint}_event"
        cut = cuts[(cuts.endpoint == rec.endpoint) & (cuts.marker == marker) & (cuts.method == method)].cutpoint.iloc[0]
        g = d[(d[marker] <= cut) == (rec.group == "low")]
        reverse = KaplanMeierFitter().fit(g[tcol], 1 - g[ecol])
        assert np.isnan(rec.median_followup) == np.isinf(reverse.median_survival_time_), rec
        blank += int(np.isnan(rec.median_followup))
    assert blank > 0   # the reference cohort has such groups (every patient progressed)
    for rec in cuts[cuts.method == "median"].itertuples():
        tcol, ecol = f"{rec.endpoint}_months", f"{rec.endpoint}_event"
        low = d[rec.marker] <= rec.cutpoint
        lr = lifelines_logrank(d[tcol][low], d[tcol][~low], d[ecol][low], d[ecol][~low])
        assert rec.logrank_p == pytest.approx(lr.p_value, rel=1e-6)
        assert rec.p_raw != pytest.approx(rec.logrank_p, rel=1e-3)


def test_a_disk_full_into_a_new_folder_says_it_was_not_created(tmp_path, monkeypatch):
    """OUT did not exist: the line used to end '<OUT> was left as it was'; the failed run removes
    the folder it created, and the line says so."""
    import errno
    import os

    from typer.testing import CliRunner

    from tilpheno.cli import app

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "bio"
    monkeypatch.setattr(os, "fsync", full)
    result = CliRunner().invoke(app, ["biomarkers", "--phenotypes", str(REF / "til_cohort_phenotypes.csv"),
                                      "--outcomes", str(REF / "til_cohort_outcomes.csv"), "--out", str(out),
                                      "--markers", "cd8_pct_of_cd3", "--permutations", "10", "--bootstrap", "0"])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert errors == [f"error: cannot write the outputs: {out}: No space left on device (disk full); "
                      f"{out} was not created"], result.output
    assert not out.exists()


def test_a_disk_full_while_writing_names_the_folder_and_keeps_the_previous_analysis(tmp_path, monkeypatch):
    """The disk fills while the outputs are written (simulated: fsync answers ENOSPC naming no file,
    as the system does). The line used to be 'error: No space left on device (disk full)', naming
    nothing; now it names the output folder and says it was left as it was (the previous analysis
    whole), and the next run writes what an undisturbed run writes: the tables of the first run, which
    went into a new folder undisturbed with the same arguments and seed (the outputs of one seed are the
    same bytes: test_biomarkers_analysis::test_same_seed_gives_byte_identical_outputs), so no second clean
    run is needed to stand for one."""
    import errno
    import os

    from typer.testing import CliRunner

    from tilpheno.cli import app

    def run(out):
        return CliRunner().invoke(app, ["biomarkers", "--phenotypes", str(REF / "til_cohort_phenotypes.csv"),
                                        "--outcomes", str(REF / "til_cohort_outcomes.csv"), "--out", str(out),
                                        "--markers", "cd8_pct_of_cd3", "--permutations", "10", "--bootstrap", "0"])

    def tables(folder):
        return {p.name: p.read_bytes() for p in sorted(folder.glob("*.csv"))}

    out = tmp_path / "bio"
    assert run(out).exit_code == 0
    before = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    result = run(out)
    monkeypatch.setattr(os, "fsync", real_fsync)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert errors == [f"error: cannot write the outputs: {out}: No space left on device (disk full); "
                      f"{out} was left as it was"], result.output
    assert {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert run(out).exit_code == 0
    assert tables(out) == {name: data for name, data in before.items() if name.endswith(".csv") and "/" not in name} != {}
