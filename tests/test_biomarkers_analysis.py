"""The biomarker analysis end to end: join, response rates and Table 3 against R, output files,
cut-point files, report safety, the CLI, and the behaviour of the cut-point p-values under the null."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tilpheno.biomarkers.analysis import CUT_COLUMNS, read_cutpoints, run_biomarkers
from tilpheno.biomarkers.cohort import build_cohort, read_phenotypes
from tilpheno.biomarkers.cox import fit_cox
from tilpheno.biomarkers.cutpoints import maxstat_logrank
from tilpheno.biomarkers.endpoints import clopper_pearson, is_responder, response_rates
from tilpheno.biomarkers.responders import categorical_test, fisher_rx2, responders_table
from tilpheno.errors import TableError
from tilpheno.io.outcomes import read_outcomes

REF = Path(__file__).parent / "reference"
OUTCOMES = REF / "til_cohort_outcomes.csv"
PHENOTYPES = REF / "til_cohort_phenotypes.csv"


@pytest.fixture(scope="module")
def tables():
    return pd.read_csv(PHENOTYPES), read_outcomes(OUTCOMES)


@pytest.fixture(scope="module")
def results(tables, tmp_path_factory):
    pheno, outcomes = tables
    out = tmp_path_factory.mktemp("bio")
    cut = out / "cuts.csv"
    cut.write_text("marker,cutpoint,endpoint\ncd8_pct_of_cd3,50,\ncd4foxp3_pct_of_cd4,5,os\n")
    return run_biomarkers(pheno, outcomes, out, markers=["til_dose_cells", "cd8_pct_of_cd3", "cd4foxp3_pct_of_cd4"],
                          cutpoints=cut, n_perm=999, seed=3, n_boot=10)


def test_response_rates_match_r_binom_test(tables):
    want = pd.read_csv(REF / "response_reference.csv")
    got = response_rates(tables[1].best_response)
    assert got.metric.tolist() == want.metric.tolist()
    assert got[["n", "count"]].to_numpy().tolist() == want[["n", "count"]].to_numpy().tolist()
    np.testing.assert_allclose(got[["rate", "ci_low", "ci_high"]], want[["rate", "ci_low", "ci_high"]], rtol=1e-9)


def test_clopper_pearson_edges():
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0
    assert clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10))


def test_responders_table_matches_r(tables):
    pheno, outcomes = tables
    data = outcomes.merge(pheno, on="product_id").sort_values("product_id").reset_index(drop=True)
    variables = ["til_dose_cells", "cd8_pct_of_cd3", "cd8pd1_pct_of_cd8", "cd4foxp3_pct_of_cd4",
                 "cd3_pct_of_live_lymph", "age", "sex", "ecog"]
    tab = responders_table(data, is_responder(data.best_response), variables)
    want = pd.read_csv(REF / "responders_reference.csv").set_index("variable")
    num = tab[tab.kind == "numeric"].set_index("variable")
    np.testing.assert_allclose(num.loc[want.index, "welch_p"], want.welch_p, rtol=1e-8)
    np.testing.assert_allclose(num.loc[want.index, "mannwhitney_p"], want.mannwhitney_p, rtol=1e-8)
    cat = pd.read_csv(REF / "responders_categorical_reference.csv").set_index("variable")
    for var in ("sex", "ecog"):
        rows = tab[tab.variable == var]
        want_p = cat.at[var, "fisher_p"] if rows.test.iloc[0] == "Fisher exact" else cat.at[var, "chisq_p"]
        assert rows.p.iloc[0] == pytest.approx(want_p, rel=1e-8)
    assert tab[tab.variable == "ecog"].test.iloc[0] == "Fisher exact"  # expected counts < 5 for ECOG 2
    assert num.at["age", "n_resp"] + num.at["age", "n_nonresp"] == 60
    # effect sizes: Welch t, df and CI of the mean difference (t.test), W (wilcox.test), OR (fisher.test)
    for col in ("t_statistic", "t_df", "mean_diff_ci_low", "mean_diff_ci_high", "w_statistic"):
        np.testing.assert_allclose(num.loc[want.index, col], want[col], rtol=1e-8)
    sex = tab[tab.variable == "sex"].iloc[0]
    for col in ("odds_ratio", "or_ci_low", "or_ci_high"):
        assert sex[col] == pytest.approx(cat.at["sex", col], rel=1e-5)


def test_responders_cis_are_at_the_analysis_level(tables):
    """Settings(conf_level=0.90): the Cox, Kaplan-Meier and response-rate CIs were 90% ones, but responders.csv's
    CIs of the difference in means and of the odds ratio stayed 95% ones (scipy's default). Truth at 0.90: the
    Welch interval mean_diff +- t(0.95, df) se (se = mean_diff / t, both checked against R above), and the exact
    conditional interval whose ends leave 5% of Fisher's noncentral hypergeometric distribution on either side of
    the observed count."""
    from scipy import stats

    pheno, outcomes = tables
    data = outcomes.merge(pheno, on="product_id").sort_values("product_id").reset_index(drop=True)
    responder = is_responder(data.best_response)
    tab = responders_table(data, responder, ["age", "sex"], conf_level=0.90)
    age = tab[tab.variable == "age"].iloc[0]
    half = stats.t.ppf(0.95, age.t_df) * age.mean_diff / age.t_statistic
    assert (age.mean_diff_ci_low, age.mean_diff_ci_high) == pytest.approx((age.mean_diff - half, age.mean_diff + half),
                                                                          rel=1e-9)
    sex = tab[tab.variable == "sex"].iloc[0]
    counts = pd.crosstab(data.sex, responder).to_numpy()   # levels x (non-responder, responder)
    x, drawn, first_col, total = counts[0, 0], counts[0].sum(), counts[:, 0].sum(), counts.sum()
    low = stats.nchypergeom_fisher(total, first_col, drawn, sex.or_ci_low).sf(x - 1)
    high = stats.nchypergeom_fisher(total, first_col, drawn, sex.or_ci_high).cdf(x)
    assert (low, high) == pytest.approx((0.05, 0.05), abs=1e-6)
    at_95 = responders_table(data, responder, ["age", "sex"]).groupby("variable").first()   # the default: wider
    assert at_95.at["age", "mean_diff_ci_low"] < age.mean_diff_ci_low and at_95.at["sex", "or_ci_low"] < sex.or_ci_low


def test_fisher_rx2_equals_scipy_for_2x2():
    from scipy import stats

    for table in ([[3, 9], [7, 2]], [[0, 5], [6, 1]], [[10, 10], [10, 10]]):
        assert fisher_rx2(np.array(table)) == pytest.approx(stats.fisher_exact(table).pvalue, rel=1e-9)
    assert categorical_test(np.array([[20, 20], [20, 20]]))[0] == "chi-square"
    many = np.array([[3, 5], [10, 2], [4, 4], [1, 6], [2, 2], [5, 1], [0, 3], [4, 4], [2, 2], [1, 1]])
    test, p = categorical_test(many)
    assert test.startswith("Fisher (Monte Carlo")
    few = many[:6]  # small enough to enumerate: the Monte Carlo estimate agrees with the exact p
    assert categorical_test(few) == ("Fisher exact", pytest.approx(fisher_rx2(few)))
    assert abs(stats.fisher_exact(few, method=stats.MonteCarloMethod(n_resamples=20000, rng=np.random.default_rng(1))).pvalue
               - fisher_rx2(few)) < 0.01
    assert 0 < p < 1


def test_join_lists_unmatched_never_drops(tables, tmp_path):
    pheno, outcomes = tables
    pheno2 = pd.concat([pheno.iloc[2:], pheno.iloc[[0]].assign(product_id="TIL999")])
    cohort = build_cohort(pheno2, outcomes)
    assert cohort.products_without_outcomes == ["TIL999"]
    assert cohort.patients_without_products == ["P001", "P002"]
    assert len(cohort.data) == 58 and len(cohort.outcomes) == 60
    assert set(cohort.unmatched().id) == {"TIL999", "P001", "P002"}
    # PFS alone: the assertions read the PFS curves, the response rates and unmatched.csv (the join is the same
    # for both endpoints); OS would add its figures and models only
    res = run_biomarkers(pheno2, outcomes, tmp_path, markers=["cd8_pct_of_cd3"], endpoints=("pfs",), n_perm=0,
                         n_boot=0, reports="none")   # tables only: the claims are about them
    assert res.response.n.tolist() == [60, 60]
    km = res.km.set_index(["endpoint", "grouping", "group"])
    assert km.loc[("pfs", "all", "all"), "n"] == 60
    assert km.loc[("pfs", "cd8_pct_of_cd3:median", "low"), "n"] + km.loc[("pfs", "cd8_pct_of_cd3:median", "high"), "n"] == 58
    assert pd.read_csv(tmp_path / "unmatched.csv").shape == (3, 2)


def test_duplicate_product_in_phenotypes_is_an_error(tables, tmp_path):
    pheno, outcomes = tables
    path = tmp_path / "p.csv"
    pd.concat([pheno, pheno.iloc[[4]]]).to_csv(path, index=False)
    with pytest.raises(TableError, match=r"row 62, column 'product_id': duplicate id 'TIL005'"):
        read_phenotypes(path)


def test_unknown_marker_and_non_numeric_marker(tables):
    pheno, outcomes = tables
    with pytest.raises(TableError, match="'cd99'"):
        build_cohort(pheno, outcomes, markers=["cd99"])
    bad = pheno.astype({"cd8_pct_of_cd3": object})
    bad.loc[3, "cd8_pct_of_cd3"] = "n/a?"
    with pytest.raises(TableError, match=r"phenotypes: row 5, column 'cd8_pct_of_cd3': 'n/a\?' is not a number"):
        build_cohort(bad, outcomes, markers=["cd8_pct_of_cd3"])
    with pytest.raises(TableError, match="outcomes: column 'sex': marker is not numeric"):
        build_cohort(pheno, outcomes, markers=["sex"])
    assert build_cohort(pheno, outcomes, markers=["age"]).markers == ["age"]


def test_output_files_and_columns(results):
    files = {p.name for p in results.files.values()}
    assert files == {"response.csv", "km.csv", "cutpoints.csv", "cox_univariable.csv", "cox_multivariable.csv",
                     "responders.csv", "unmatched.csv", "report.html", "km_table.csv", "at_risk.csv",
                     "logrank.csv", "analysis_dataset.csv", "splines.csv", "spline_curves.csv", "validation.csv",
                     "time_auc.csv", "time_auc_comparisons.csv", "response_survival.csv", "codebook.csv",
                     "run.json", "calibration.csv"}
    km = pd.read_csv(results.files["km.csv"])
    assert list(km.columns) == ["endpoint", "grouping", "group", "n", "events", "median", "median_ci_low",
                                "median_ci_high", "rate_12m", "rate_12m_ci_low", "rate_12m_ci_high", "median_followup"]
    cuts = pd.read_csv(results.files["cutpoints.csv"])
    assert list(cuts.columns) == CUT_COLUMNS
    cox = pd.read_csv(results.files["cox_univariable.csv"])
    for col in ["endpoint", "model", "variable", "coding", "n", "events", "coef", "se", "hr", "hr_ci_low",
                "hr_ci_high", "p"]:
        assert col in cox.columns
    assert set(cox.coding) == {"continuous", "dichotomized"}
    multi = pd.read_csv(results.files["cox_multivariable.csv"])
    assert {"age", "sex[M]", "ecog"} <= set(multi.variable)


def test_cutpoint_methods_and_prespecified(results):
    c = results.cutpoints
    cd8 = c[c.marker == "cd8_pct_of_cd3"]
    assert sorted(cd8.method.unique()) == ["maxstat", "median", "prespecified"]
    assert (cd8[cd8.method == "prespecified"].cutpoint == 50).all()
    foxp3 = c[(c.marker == "cd4foxp3_pct_of_cd4")]
    assert set(foxp3[foxp3.endpoint == "pfs"].method) == {"median", "maxstat"}
    assert set(foxp3[foxp3.endpoint == "os"].method) == {"median", "maxstat", "prespecified"}
    ms = c[c.method == "maxstat"]
    assert (ms.p_raw <= ms.p_lau92).all() and (ms.p_raw <= ms.p_perm).all()
    assert ms[["p_lau92", "p_lau94", "p_perm"]].notna().all().all()
    uni = results.cox_univariable
    dich = uni[(uni.variable == "cd8_pct_of_cd3") & (uni.coding == "dichotomized")]
    assert dich.unit.str.contains("prespecified cut 50").all()


def test_maxstat_row_matches_r_on_cohort(results):
    want = pd.read_csv(REF / "maxstat_reference.csv")
    want = want[(want.dataset == "til") & want.marker.isin(["til_dose_cells", "cd8_pct_of_cd3"])]
    got = results.cutpoints[results.cutpoints.method == "maxstat"].set_index(["endpoint", "marker"])
    for row in want.itertuples():
        g = got.loc[(row.endpoint, row.marker)]
        assert g.statistic == pytest.approx(row.statistic, abs=1e-6)
        assert g.p_lau94 == pytest.approx(min(row.p_lau94, 1.0), abs=1e-4)


def test_dichotomised_cox_uses_the_stated_cut(results, tables):
    pheno, outcomes = tables
    d = outcomes.merge(pheno, on="product_id")
    d["high"] = (d.til_dose_cells > d.til_dose_cells.median()).astype(float)
    fit = fit_cox(d, "pfs_months", "pfs_event", ["high"])
    uni = results.cox_univariable
    row = uni[(uni.endpoint == "pfs") & (uni.variable == "til_dose_cells") & (uni.coding == "dichotomized")]
    assert row.coef.iloc[0] == pytest.approx(fit.coefficients.coef.iloc[0], rel=1e-6)
    cont = uni[(uni.endpoint == "pfs") & (uni.variable == "til_dose_cells") & (uni.coding == "continuous")]
    r_coef = pd.read_csv(REF / "cox_reference.csv").query("dataset == 'til_pfs' and model == 'til_dose_cells'").coef
    assert cont.coef.iloc[0] == pytest.approx(r_coef.iloc[0] * 1e9, rel=1e-5)  # per 1e9 cells


def test_events_per_variable_warning(tables, tmp_path):
    pheno, outcomes = tables
    few = outcomes.copy()
    few["os_event"] = 0
    few.loc[:11, "os_event"] = 1  # 12 events, 4 variables in the multivariable model
    res = run_biomarkers(pheno, few, tmp_path, markers=["cd8_pct_of_cd3"], endpoints=("os",), n_perm=0, n_boot=0,
                         reports="none")   # tables only: the claims are about the warnings and the Cox tables
    assert any("fewer than 10 events per variable" in w for w in res.warnings)
    assert res.cox_multivariable.warning.str.contains("fewer than 10").all()
    assert not res.cox_univariable.warning.str.contains("fewer than 10").any()


@pytest.mark.parametrize("added,covariates,equation", [
    (lambda o: o.age * 12, ["age", "added"], "added = 12 age"),
    (lambda o: (o.sex == "F").astype(int), ["sex", "added"], "added = 1 - sex[M]"),
])
def test_collinear_covariates_are_named_with_their_relation(tables, tmp_path, added, covariates, equation):
    """A covariate that is a linear function of another (age in months beside age; a 0/1 female column beside
    sex): the multivariable Cox models were 'not fitted (information matrix singular: covariates collinear, or a
    combination of them separating the events ...)' and validation 'its information matrix is singular (56 events
    for 3 coefficients, or collinear covariates)', naming no column -> each names the columns and their relation
    among the patients analysed, in the warnings, the Cox table and the report."""
    pheno, outcomes = tables
    outcomes = outcomes.assign(added=added(outcomes))
    res = run_biomarkers(pheno, outcomes, tmp_path, markers=["cd8_pct_of_cd3"], covariates=covariates, n_perm=0,
                         n_boot=3)
    for endpoint, (tcol, ecol) in {"pfs": ("pfs_months", "pfs_event"), "os": ("os_months", "os_event")}.items():
        n = len(res.cohort.data.dropna(subset=[tcol, ecol, "cd8_pct_of_cd3", *covariates]))
        said = (f"covariates collinear among the {n} patients analysed: {equation} in every one, so the model cannot "
                "separate their effects (R coxph: NA for added, 'X matrix deemed to be singular')")
        for coding in ("continuous", "dichotomized"):
            assert f"{endpoint} cd8_pct_of_cd3 multivariable {coding}: Cox model not fitted ({said})" in res.warnings
        assert (f"{endpoint} cd8_pct_of_cd3: bootstrap validation not done (the model cannot be fitted on the full "
                f"data: {said})") in res.warnings
    assert res.cox_multivariable.warning.str.contains(equation, regex=False).all()
    assert equation in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_an_exact_combination_of_covariates_is_refused_not_fitted():
    """a = m + age exactly: fit_cox reported coefficients for m, age and a (any split of the effect fits) with blank
    standard errors and lifelines' 'ConvergenceError: ... Suspicion is high collinearity' -> refused, naming it."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"t": rng.exponential(10, 60), "e": (rng.random(60) < 0.7).astype(float),
                          "m": rng.normal(size=60), "age": rng.normal(60, 8, 60)})
    frame["a"] = 7 + 0.3 * frame.m - 2.5 * frame.age
    with pytest.raises(ValueError, match=r"^covariates collinear among the 60 patients analysed: a = 7 \+ 0\.3 m - "
                                         r"2\.5 age in every one"):
        fit_cox(frame, "t", "e", ["m", "age", "a"])


def test_report_escapes_input_values_and_states_conventions(tables, tmp_path):
    pheno, outcomes = tables
    evil = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    out2 = outcomes.copy()
    out2["sex"] = out2["sex"].where(out2.index % 2 == 0, evil)
    out2.loc[0, "patient_id"] = evil
    pheno2 = pheno.copy()
    pheno2.loc[0, "product_id"] = "TIL<b>x</b>"
    res = run_biomarkers(pheno2, out2, tmp_path, markers=["cd8_pct_of_cd3"], n_perm=0, n_boot=0)
    html = res.files["report.html"].read_text()
    assert "<script" not in html and "<img src=x" not in html and "<b>x</b>" not in html
    assert "&lt;script&gt;" in html
    for phrase in ("REMARK item 10", "REMARK item 11", "Efron", "cox.zph", "Brookmeyer-Crowley", "reverse Kaplan-Meier",
                   "Lausen", "permutation", "inflate the type I error", "Clopper-Pearson", "Welch", "Mann-Whitney",
                   "last observed time, even if the curve has reached 0"):
        assert phrase in html, phrase
    assert html.count("<svg class=\"plot\"") >= 4   # figures inline (vector)


def test_marker_and_level_names_with_mathtext_characters(tables, tmp_path):
    pheno, outcomes = tables
    pheno2 = pheno.rename(columns={"cd8_pct_of_cd3": "cd8 $\\frac{x$"})
    out2 = outcomes.assign(sex=outcomes.sex.map({"M": "$_{$", "F": "F"}))
    res = run_biomarkers(pheno2, out2, tmp_path, markers=["cd8 $\\frac{x$"], endpoints=("os",), n_perm=0, n_boot=0)
    assert "cd8 $\\frac{x$" in set(res.cox_univariable.variable)
    assert "$\\frac{x$" in res.files["report.html"].read_text()


@pytest.mark.parametrize("text,match", [
    ("marker,cutpoint\ncd8_pct_of_cd3,high\n", r"row 2, column 'cutpoint'"),
    ("marker,cut\ncd8,1\n", r"column 'cutpoint'"),
    ("marker,cutpoint,endpoint\ncd8,1,dfs\n", r"unknown endpoint"),
    # two cuts for one marker (25 and 50): only the first was analysed, the second dropped silently
    ("marker,cutpoint,endpoint\ncd8,25,\ncd8,40,os\ncd8,50,\n",
     r"cuts.csv: row 4, column 'marker': a second cut-point for 'cd8' \(first in row 2\)"),
    ("marker,cutpoint,endpoint\ncd8,25,\ncd8,40,os\ncd8,45,OS\n",
     r"row 4, column 'marker': a second cut-point for 'cd8' \(os\) \(first in row 3\)"),
])
def test_cutpoints_file_errors(tmp_path, text, match):
    bad = tmp_path / "cuts.csv"
    bad.write_text(text)
    with pytest.raises(TableError, match=match):
        read_cutpoints(bad)


@pytest.mark.parametrize("text", [
    "marker;cutpoint;endpoint\r\ncd8;25,5;\r\ncd8;1.500,25;os\r\n",   # European Excel: semicolons, decimal commas
    "marker\tcutpoint\tendpoint\ncd8\t25.5\t\ncd8\t1,500.25\tos\n",   # a tab-separated copy, English style
    "Pre-specified cut-points\n\nmarker,cutpoint,endpoint\ncd8,25.5,\ncd8,\"1,500.25\",os\n",   # a title line above
])
def test_cutpoints_file_as_a_spreadsheet_saves_it(tmp_path, text):
    """A cut-points file saved by a European Excel (semicolons, '25,5'), a tab-separated copy or one with a title
    above its header was refused as "row 1, column 'marker': missing required column", though the outcomes table
    beside it is read in each of these forms -> read as the outcomes table is (same reader): the same cuts as the
    comma-separated file."""
    cuts = tmp_path / "cuts.csv"
    cuts.write_text(text, encoding="utf-8")
    assert read_cutpoints(cuts).values.tolist() == [["cd8", "", 25.5], ["cd8", "os", 1500.25]]


@pytest.mark.parametrize("name", ["cuts.xlsx", "cuts.csv"])
def test_a_cutpoints_workbook_is_told_to_be_saved_as_text(tmp_path, name):
    """A cut-points table saved from Excel as a workbook (or a workbook renamed .csv) was refused as
    'not a CSV or Excel (.xlsx) file (binary content)': an Excel file told it is not one. A cut-points
    file is text (README): the line now says it is a workbook and how to save it."""
    cuts = tmp_path / name
    pd.DataFrame({"marker": ["cd8"], "cutpoint": [25.5]}).to_excel(cuts, index=False, engine="openpyxl")
    with pytest.raises(TableError) as caught:
        read_cutpoints(cuts)
    assert str(caught.value) == (f"{cuts}: an Excel workbook; a cut-points file is text: save the sheet as CSV UTF-8 "
                                 "(columns marker, cutpoint, optional endpoint)")
    assert "binary content" not in str(caught.value)


def test_cutpoints_file_too_large_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A cut-points file larger than a table file may be (a phenotypes export or an FCS file named by
    mistake) was read into memory whole, as the outcomes table is not: its reader had no size limit
    -> refused as the outcomes table is (same reader), naming the file and its size. The limit is
    lowered here so that a real small file is above it."""
    from tilpheno.io import outcomes

    cuts = tmp_path / "cuts.csv"
    cuts.write_text("marker,cutpoint,endpoint\n" + "cd8,25,\n" * 20)
    monkeypatch.setattr(outcomes, "_MAX_BYTES", cuts.stat().st_size - 1)
    with pytest.raises(TableError, match=rf"^{re.escape(str(cuts))}: the file is too large for a cut-points table "
                                         rf"\({cuts.stat().st_size} bytes\)$"):
        read_cutpoints(cuts)


def test_an_endpoint_cut_overrides_a_blank_one(tmp_path):
    cuts = tmp_path / "cuts.csv"
    cuts.write_text("marker,cutpoint,endpoint\ncd8,25,\ncd8,40,os\n")
    assert read_cutpoints(cuts).values.tolist() == [["cd8", "", 25.0], ["cd8", "os", 40.0]]


def test_cli_biomarkers(tmp_path):
    from typer.testing import CliRunner

    from tilpheno.cli import app

    out = tmp_path / "bio"
    r = CliRunner().invoke(app, ["biomarkers", "--phenotypes", str(PHENOTYPES), "--outcomes", str(OUTCOMES), "-o",
                                 str(out), "--markers", "cd8_pct_of_cd3", "--endpoints", "pfs",
                                 "--permutations", "99", "--conf-type", "log-log", "--bootstrap", "5", "--pdf"])
    assert r.exit_code == 0, r.output
    assert "times in months (pfs_months, os_months as given)" in r.output   # the unit of every statistic
    assert (out / "report.html").exists() and (out / "km.csv").exists()
    assert (out / "figures.pdf").read_bytes()[:5] == b"%PDF-"
    assert (out / "figures" / "km_pfs_all.svg").read_bytes().lstrip().startswith(b"<?xml")
    run = __import__("json").loads((out / "run.json").read_text())
    assert run["parameters"]["n_boot"] == 5 and any(i["path"] == str(OUTCOMES) for i in run["inputs"])
    from tilpheno.cache import code_digest

    assert run["tilpheno_code_sha256"] == code_digest()   # the code, not only its version
    codebook = pd.read_csv(out / "codebook.csv")
    assert {"file", "column", "meaning", "unit", "method"} == set(codebook.columns)
    assert ("cox_univariable.csv", "p_holm") in set(zip(codebook.file, codebook.column))
    km = pd.read_csv(out / "km.csv")
    want = pd.read_csv(REF / "km_reference.csv").query("dataset == 'til' and endpoint == 'pfs' and group == 'all' "
                                                       "and conf_type == 'log-log'")
    assert km.loc[0, "median_ci_low"] == want.median_ci_low.iloc[0]
    bad = tmp_path / "bad.csv"
    bad.write_text(OUTCOMES.read_text().replace(",PR,", ",XX,", 1))
    r = CliRunner().invoke(app, ["biomarkers", "--phenotypes", str(PHENOTYPES), "--outcomes", str(bad), "-o", str(out)])
    assert r.exit_code == 2 and "column 'best_response'" in r.output


def test_same_seed_gives_byte_identical_outputs(tables, tmp_path):
    """Every output but run.json (its times, the output folder) is the same bytes on a re-run with the
    same seed, the figure files (figures/*.svg, figures.pdf) included."""
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        run_biomarkers(*tables, out, markers=["cd8_pct_of_cd3"], endpoints=("pfs",), n_perm=20, n_boot=5, pdf=True)
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file() and p.name != "run.json")
    assert Path("figures.pdf") in files and Path("figures/km_pfs_all.svg") in files
    differ = [str(f) for f in files if (outs[0] / f).read_bytes() != (outs[1] / f).read_bytes()]
    assert differ == []


def test_output_folder_rerun_removes_what_it_no_longer_writes_and_keeps_other_files(tables, tmp_path):
    """A re-run into the same folder (here without bootstrap, PDF or OS) left the first run's
    validation.csv, figures.pdf and OS figures beside the new results; now they go, a user's own file stays."""
    out = tmp_path / "bio"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    run_biomarkers(*tables, out, markers=["cd8_pct_of_cd3"], endpoints=("pfs", "os"), n_perm=0, n_boot=5, pdf=True)
    assert (out / "validation.csv").exists() and (out / "figures" / "km_os_all.svg").exists()
    res = run_biomarkers(*tables, out, markers=["cd8_pct_of_cd3"], endpoints=("pfs",), n_perm=0, n_boot=0)
    record = __import__("json").loads((out / "run.json").read_text())
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted([*record["outputs"], "notes.txt"])
    assert not (out / "validation.csv").exists() and not (out / "figures.pdf").exists()
    assert not (out / "figures" / "km_os_all.svg").exists() and (out / "figures" / "km_pfs_all.svg").exists()
    assert all(p.exists() for p in res.files.values())


def _files(folder: Path) -> list[str]:
    """Every file under ``folder``, as paths relative to it."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_reports_none_writes_the_tables_of_a_full_run_byte_for_byte_and_no_report(tables, tmp_path):
    """``reports="none"`` (tables only) writes every table a full run writes on the same inputs and
    seed, the same bytes, and run.json, but no report.html, figures/ or figures.pdf."""
    kwargs = dict(markers=["cd8_pct_of_cd3"], endpoints=("pfs",), n_perm=20, seed=11, n_boot=5)
    run_biomarkers(*tables, tmp_path / "full", **kwargs)
    res = run_biomarkers(*tables, tmp_path / "tables", reports="none", **kwargs)
    full_tables = [f for f in _files(tmp_path / "full") if f.endswith(".csv")]
    assert "validation.csv" in full_tables and "cutpoints.csv" in full_tables   # the bootstrap and permutation tables
    assert _files(tmp_path / "tables") == sorted([*full_tables, "run.json"])
    differ = [f for f in full_tables if (tmp_path / "full" / f).read_bytes() != (tmp_path / "tables" / f).read_bytes()]
    assert differ == []
    record = __import__("json").loads((tmp_path / "tables" / "run.json").read_text())
    assert record["parameters"]["reports"] == "none" and record["outputs"] == _files(tmp_path / "tables")
    assert sorted(res.files) == sorted([*full_tables, "run.json"]) and all(p.exists() for p in res.files.values())


def test_reports_none_into_a_folder_with_a_full_analysis_removes_its_report(tables, tmp_path):
    """A tables-only run into the folder of an earlier full analysis (other endpoints, PDF) must not
    leave that analysis' report.html, figures/ and figures.pdf beside the new tables they disagree
    with: they are removed with its tables; a user's own file stays."""
    out = tmp_path / "bio"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    run_biomarkers(*tables, out, markers=["cd8_pct_of_cd3"], endpoints=("pfs", "os"), n_perm=0, n_boot=0, pdf=True)
    assert (out / "report.html").exists() and (out / "figures" / "km_pfs_all.svg").exists()
    res = run_biomarkers(*tables, out, markers=["cd8_pct_of_cd3"], endpoints=("pfs",), n_perm=0, n_boot=0, reports="none")
    assert "report.html" in res.removed and "km.csv" not in res.removed   # km.csv replaced, not removed
    record = __import__("json").loads((out / "run.json").read_text())
    assert _files(out) == sorted([*record["outputs"], "notes.txt"])
    assert not any(f in ("report.html", "figures.pdf") or f.startswith("figures") for f in _files(out))
    assert not (out / "figures").exists()
    removed = record["output_folder"]["removed_previous_outputs"]
    assert {"report.html", "figures.pdf", str(Path("figures") / "km_os_all.svg")} <= set(removed)


@pytest.mark.parametrize("reports, pdf, message", [
    ("later", False, r"^reports: 'later' is not one of now, none$"),
    ("none", True, r"^reports: 'none' draws no figures, so pdf=True has no figures.pdf to write"),
])
def test_reports_option_is_checked_before_the_folder_is_claimed(tables, tmp_path, reports, pdf, message):
    """An unknown ``reports`` value, or a PDF of figures a tables-only run does not draw, is a
    ValueError naming ``reports``; the output folder is not created."""
    with pytest.raises(ValueError, match=message):
        run_biomarkers(*tables, tmp_path / "bio", markers=["cd8_pct_of_cd3"], endpoints=("pfs",), n_perm=0, n_boot=0,
                       reports=reports, pdf=pdf)
    assert not (tmp_path / "bio").exists()


def test_cli_biomarkers_reports_none(tmp_path):
    """``biomarkers --reports none`` after a full ``--pdf`` run into the same OUT: the tables and
    run.json, no report; one line says none was drawn and that the previous report was removed.
    ``--reports none --pdf`` and an unknown mode are one-line errors naming the flags (exit 2)."""
    from typer.testing import CliRunner

    from tilpheno.cli import app

    out = tmp_path / "bio"
    base = ["biomarkers", "--phenotypes", str(PHENOTYPES), "--outcomes", str(OUTCOMES), "-o", str(out),
            "--markers", "cd8_pct_of_cd3", "--endpoints", "pfs", "--permutations", "0", "--bootstrap", "0"]
    r = CliRunner().invoke(app, [*base, "--pdf"])
    assert r.exit_code == 0, r.output
    assert "no report drawn" not in r.output
    r = CliRunner().invoke(app, [*base, "--reports", "none"])
    assert r.exit_code == 0, r.output
    line = next(line for line in r.output.splitlines() if "no report drawn" in line)
    assert line.strip().startswith("no report drawn (--reports none): tables and run.json only; the previous "
                                   "analysis' report (figures.pdf, ")
    assert line.rstrip().endswith("was removed with its tables")
    assert (out / "km.csv").exists() and not (out / "report.html").exists() and not (out / "figures").exists()
    r = CliRunner().invoke(app, [*base, "--reports", "none"])   # nothing of a report left to remove
    assert r.exit_code == 0 and "  no report drawn (--reports none): tables and run.json only\n" in r.output
    for extra, message in [(["--reports", "none", "--pdf"], "error: --reports: 'none' draws no figures, so --pdf has no "
                                                             "figures.pdf to write; drop --pdf or draw the report"),
                           (["--reports", "later"], "error: --reports: 'later' is not one of now, none")]:
        r = CliRunner().invoke(app, [*base, *extra])
        assert r.exit_code == 2 and message in r.output, r.output
    assert (out / "km.csv").exists()   # the refused runs left the folder as it was


def test_output_folder_of_a_process_run_is_refused(tables, tmp_path):
    """`biomarkers -o OUT` into the `process` folder replaced its run.json and codebook.csv (the run's
    record lost; `tilpheno report OUT` then failed); now a one-line error and the folder untouched."""
    out = tmp_path / "OUT"
    out.mkdir()
    record = '{"parameters": {"input_folder": "fcs"}, "outputs": ["run.json", "codebook.csv"]}\n'
    (out / "run.json").write_text(record)
    (out / "codebook.csv").write_text("column\n")
    with pytest.raises(TableError, match=r"OUT: holds the run.json of another tilpheno run"):
        run_biomarkers(*tables, out, markers=["cd8_pct_of_cd3"], endpoints=("pfs",), n_perm=0, n_boot=0)
    assert sorted(p.name for p in out.iterdir()) == ["codebook.csv", "run.json"]
    assert (out / "run.json").read_text() == record


def _null_dataset(rng, n=60):
    return rng.normal(size=n), rng.exponential(8, n), (rng.uniform(size=n) < 0.85).astype(float)


def test_null_simulation_uncorrected_search_inflates_corrected_does_not():
    rng = np.random.default_rng(11)
    res = [maxstat_logrank(*_null_dataset(rng), n_perm=0) for _ in range(600)]
    raw = np.mean([r.p_raw < 0.05 for r in res])
    lau92 = np.mean([r.p_lau92 < 0.05 for r in res])
    lau94 = np.mean([r.p_lau94 < 0.05 for r in res])
    assert 0.33 < raw < 0.47, raw  # the report's banner: "about 40%" (60 patients, at least 10% per group)
    assert lau92 < 0.075 and lau94 < 0.075, (lau92, lau94)


def test_the_banners_null_rate_is_for_the_minprop_it_names(tables, tmp_path):
    """The banner's example rate (the simulation above: about 40% with 60 patients, at least 10% per group) is
    not the rate at another --minprop (0.4: about 18% in the same simulation); it printed 'at least 40% in each
    group ... about a third' for --minprop 0.4."""
    res = run_biomarkers(*tables, tmp_path, markers=["cd8_pct_of_cd3"], endpoints=("pfs",), n_perm=0, n_boot=0,
                         minprop=0.4)
    text = " ".join(res.files["report.html"].read_text().split())
    assert ("with 60 patients and at least 10% in each group, the uncorrected minimum p falls below 0.05 in about "
            "40% of datasets with no true effect") in text


def test_permutation_p_is_calibrated_under_the_null():
    rng = np.random.default_rng(5)
    p = np.array([maxstat_logrank(*_null_dataset(rng), n_perm=199, seed=i).p_perm for i in range(300)])
    assert 0.02 < np.mean(p < 0.05) < 0.09
    assert 0.07 < np.mean(p < 0.10) < 0.14
    assert p.min() >= 1 / 200


def test_permutation_p_reproducible_and_detects_a_real_effect():
    rng = np.random.default_rng(2)
    x = rng.normal(size=60)
    t = rng.exponential(np.where(x > 0.3, 20, 5))
    e = np.ones(60)
    a = maxstat_logrank(x, t, e, n_perm=2000, seed=9)
    b = maxstat_logrank(x, t, e, n_perm=2000, seed=9)
    assert a.p_perm == b.p_perm < 0.01


def test_numeric_looking_ids_join_as_text(tmp_path):
    pheno = tmp_path / "p.csv"
    pheno.write_text("product_id,cd8_pct_of_cd3\n001,10\n002,20\n003,30\n")
    out = tmp_path / "o.csv"
    out.write_text("patient_id,product_id,til_dose_cells,best_response,pfs_months,pfs_event,os_months,os_event\n"
                   "P1,001,1e9,PR,1,1,2,1\nP2,002,1e9,SD,2,1,3,0\nP3,003,1e9,PD,3,0,4,1\n")
    cohort = build_cohort(read_phenotypes(pheno), read_outcomes(out), markers=["cd8_pct_of_cd3"])
    assert cohort.data.product_id.tolist() == ["001", "002", "003"]
    assert not cohort.products_without_outcomes and not cohort.patients_without_products


@pytest.mark.browser
def test_report_with_planted_markup_runs_nothing_in_chromium(tables, tmp_path, browser):
    pheno, outcomes = tables
    planted = ['<script>alert(1)</script>', '"><img src=x onerror=alert(2)>']
    out2 = outcomes.assign(sex=np.where(outcomes.index % 2 == 0, planted[0], planted[1]))
    out2.loc[0, "patient_id"] = planted[1]
    pheno2 = pheno.copy()
    pheno2.loc[0, "product_id"] = planted[0]
    res = run_biomarkers(pheno2, out2, tmp_path, markers=["cd8_pct_of_cd3"], endpoints=("pfs",), n_perm=0, n_boot=0)
    session, page = browser.load(res.files["report.html"].as_uri())
    assert page.loaded and page.problems == [] and page.dialogs == []
    assert browser.evaluate(session, "document.querySelectorAll('figure svg.plot').length") >= 3
    assert browser.evaluate(session, "document.scripts.length") == 0
    assert browser.evaluate(session, "document.querySelectorAll('img[onerror]').length") == 0
    text = browser.evaluate(session, "document.body.innerText")
    assert planted[0] in text and planted[1] in text  # shown as text, not markup


@pytest.mark.parametrize("event", [[0] * 8, [1] * 8], ids=["no_events", "every_event_at_one_time"])
def test_maxstat_without_survival_differences_says_why(event):
    """Every patient progressing at the same visit was reported as 'no events' (there were 8)."""
    x = [29.2, 39.6, 57.2, 32.1, 25.9, 61.1, 62.7, 71.2]
    with pytest.raises(ValueError, match=r"constant \(no events, or every patient's event at one time\)"):
        maxstat_logrank(x, [5.0] * 8, event, n_perm=0)


def test_a_cut_with_every_patient_on_one_side_says_so():
    """A binary marker with most patients at 1 (median 1: nobody above it) and a pre-specified cut above
    every value: the dichotomised Cox models were 'not fitted (covariate(s) constant in the data: marker)',
    naming a marker that is not constant."""
    from tilpheno.biomarkers.analysis import Settings, analyse

    pheno = pd.read_csv(PHENOTYPES).head(10).assign(binary=[0, 1, 1, 1, 0, 1, 1, 1, 1, 1])
    cohort = build_cohort(pheno, read_outcomes(OUTCOMES), markers=["binary", "cd8_pct_of_cd3"], covariates=[])
    pre = pd.DataFrame({"marker": ["cd8_pct_of_cd3"], "endpoint": [""], "cutpoint": [1000.0]})
    res = analyse(cohort, Settings(endpoints=("os",), n_perm=0, n_boot=0), pre)
    dich = res.cox_univariable[res.cox_univariable.coding == "dichotomized"].set_index("variable")
    assert dich.loc["binary", "warning"] == ("not fitted: every patient at or below the median cut 1 (values tied at "
                                             "the cut): no high group")
    assert dich.loc["binary", ["n_low", "n_high"]].tolist() == [10, 0]
    assert dich.loc["cd8_pct_of_cd3", "warning"].startswith("not fitted: every patient at or below the prespecified "
                                                            "cut 1000 ")
    assert not any("constant among the" in w for w in res.warnings)


def test_a_blank_marker_value_is_left_out_and_counted_never_zero(tables, tmp_path):
    """A percentage left blank in phenotypes.csv (an undetermined gate: no FMO or unstained control, or a
    failed tube) was left out of its marker's analyses without a word -> a cohort note names the marker,
    how many patients and which; the analyses use the others only (never a 0 in its place): the KM
    groups at the median hold the 57 patients with a value."""
    pheno, outcomes = tables
    blank = pheno.copy()
    blank.loc[blank.index[:3], "cd8_pct_of_cd3"] = np.nan
    patients = outcomes.set_index("product_id").loc[blank["product_id"].iloc[:3], "patient_id"].tolist()
    cohort = build_cohort(blank, outcomes, markers=["cd8_pct_of_cd3"])
    [note] = [n for n in cohort.notes if n.startswith("marker value(s) blank")]
    assert f"cd8_pct_of_cd3 3 ({', '.join(sorted(patients))})" in note and "never counted as 0" in note, note
    res = run_biomarkers(blank, outcomes, tmp_path, markers=["cd8_pct_of_cd3"], endpoints=("pfs",), n_perm=0,
                         n_boot=0, reports="none")   # tables only; PFS alone: the groups asserted are PFS's (the cohort's blanks are endpoint-free)
    km = res.km.set_index(["endpoint", "grouping", "group"])
    assert km.loc[("pfs", "cd8_pct_of_cd3:median", "low"), "n"] + km.loc[("pfs", "cd8_pct_of_cd3:median", "high"), "n"] \
        == len(cohort.data) - 3
