"""Input handling of the biomarker analysis (issues 11 and 16): NA and yes/no in outcomes, "did you
mean", all-missing markers, infinite values, sparse categorical covariates, plausibility warnings."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tilpheno.biomarkers.analysis import run_biomarkers
from tilpheno.biomarkers.cohort import build_cohort, read_phenotypes
from tilpheno.biomarkers.cox import fit_cox
from tilpheno.biomarkers.responders import responders_table
from tilpheno.errors import TableError
from tilpheno.io.outcomes import read_outcomes

REF = Path(__file__).parent / "reference"


@pytest.fixture()
def tables():
    return pd.read_csv(REF / "til_cohort_phenotypes.csv"), read_outcomes(REF / "til_cohort_outcomes.csv")


def _write(tmp_path, frame, name="o.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_na_is_missing_and_yes_no_events(tmp_path):
    raw = pd.read_csv(REF / "til_cohort_outcomes.csv", dtype=str)
    raw.loc[0, "age"] = "NA"
    raw.loc[1, "til_dose_cells"] = "N/A"
    raw["os_event"] = raw["os_event"].map({"1": "yes", "0": "No"})
    raw.loc[2, "pfs_event"] = "TRUE"
    out = read_outcomes(_write(tmp_path, raw))
    assert np.isnan(out.age.iloc[0]) and np.isnan(out.til_dose_cells.iloc[1])
    assert out.os_event.tolist() == pd.read_csv(REF / "til_cohort_outcomes.csv").os_event.tolist()
    assert out.pfs_event.iloc[2] == 1


def test_did_you_mean_for_columns_codes_markers_endpoints(tmp_path, tables):
    raw = pd.read_csv(REF / "til_cohort_outcomes.csv", dtype=str).rename(columns={"pfs_months": "pfs_month"})
    with pytest.raises(TableError, match="did you mean 'pfs_month'"):
        read_outcomes(_write(tmp_path, raw))
    raw = pd.read_csv(REF / "til_cohort_outcomes.csv", dtype=str)
    raw.loc[3, "best_response"] = "PRR"
    with pytest.raises(TableError, match=r"row 5, column 'best_response'.*did you mean 'PR'"):
        read_outcomes(_write(tmp_path, raw))
    pheno, outcomes = tables
    with pytest.raises(TableError, match="did you mean 'cd8_pct_of_cd3'"):
        build_cohort(pheno, outcomes, markers=["cd8_pct_of_cd"])
    with pytest.raises(ValueError, match="did you mean 'pfs'"):
        run_biomarkers(pheno, outcomes, tmp_path / "x", endpoints=("psf",))
    typo = outcomes.copy()
    typo.loc[0, "product_id"] = "TIL0O1"
    notes = build_cohort(pheno, typo).notes
    assert any("'TIL0O1' matches no phenotyped product (did you mean 'TIL001'?)" in n for n in notes)


def test_all_missing_marker_skipped_with_warning(tables, tmp_path):
    pheno, outcomes = tables
    pheno = pheno.assign(cd4foxp3_pct_of_cd4=np.nan)
    res = run_biomarkers(pheno, outcomes, tmp_path, markers=["cd8_pct_of_cd3", "cd4foxp3_pct_of_cd4"],
                         endpoints=("os",), n_perm=0, n_boot=0, reports="none")
    assert res.cohort.markers == ["cd8_pct_of_cd3"]
    assert any("no values" in w and "cd4foxp3_pct_of_cd4" in w for w in res.warnings)


def test_infinite_marker_value_is_an_error_naming_row_and_column(tables):
    pheno, outcomes = tables
    pheno = pheno.astype({"cd8_pct_of_cd3": object})
    pheno.loc[4, "cd8_pct_of_cd3"] = "inf"
    with pytest.raises(TableError, match=r"row 6, column 'cd8_pct_of_cd3': 'inf' is not a finite number"):
        build_cohort(pheno, outcomes, markers=["cd8_pct_of_cd3"])


def test_sparse_categorical_covariate_many_levels_does_not_crash():
    rng = np.random.default_rng(0)
    site = pd.Series([f"site{i}" for i in rng.integers(0, 25, 60)])
    tab = responders_table(pd.DataFrame({"site": site}), pd.Series(rng.random(60) < 0.4), ["site"])
    assert tab.test.iloc[0].startswith("Fisher") and 0 <= tab.p.iloc[0] <= 1
    assert np.ndim(tab.p.iloc[0]) == 0


def test_plausibility_warnings(tables, tmp_path):
    pheno, outcomes = tables
    bad = outcomes.copy()
    bad["os_months"] = bad["os_months"] * 30.4
    bad["pfs_months"] = bad["pfs_months"] * 30.4
    bad.loc[0, "pfs_months"] = bad.loc[0, "os_months"] + 5
    bad["til_dose_cells"] = bad["til_dose_cells"] / 1e9
    p2 = pheno.copy()
    p2.loc[1, "cd8_pct_of_cd3"] = 130.0
    notes = build_cohort(p2, bad, markers=["til_dose_cells", "cd8_pct_of_cd3"]).notes
    text = " | ".join(notes)
    assert "os_months" in text and "look like days" in text
    assert "PFS longer than OS for 1 patient(s) (P001)" in text
    assert "units of 1e9" in text
    assert "cd8_pct_of_cd3 has 1 value(s) outside 0-100" in text
    assert not any(n.startswith("plausibility") for n in build_cohort(pheno, outcomes).notes)


@pytest.mark.parametrize("factor, expected", [
    (30.4375, "these look like days, not months (divide by 30.4375); every statistic is in months"),
    (4.3482, "os_months has median 51.5262, longer than TIL cohorts' (above 48 months): times in weeks? Analysed "
             "as months; if they are weeks, divide by 4.3482"),
    (1 / 12, "every pfs_months and os_months time is below 10 (longest 3.15): times in years? Analysed as months; "
             "if they are years, multiply by 12")])
def test_plausibility_time_units(tables, factor, expected):
    """Follow-up times given in weeks (the reference cohort's months times 4.3482: median OS 51.5,
    longest 164) or years (longest 3.15) were analysed as months without a note; days were noted.
    Now each unit is noted, and the note says the statistics are in months."""
    pheno, outcomes = tables
    scaled = outcomes.assign(pfs_months=outcomes["pfs_months"] * factor, os_months=outcomes["os_months"] * factor)
    notes = [n for n in build_cohort(pheno, scaled).notes if n.startswith("plausibility")]
    assert any(expected in n for n in notes), notes
    weeks = outcomes.assign(os_months=outcomes["os_months"] * 4.3482 * 2)   # median 103, longest 329: days or weeks
    assert any("look like days or weeks" in n for n in build_cohort(pheno, weeks).notes)


def test_failed_products_are_left_out_with_a_note(tables):
    """A product `tilpheno process` reports failed carries no results: it is not analysed, and the
    cohort says which were left out."""
    pheno, outcomes = tables
    pheno = pheno.assign(status="done")
    pheno.loc[[0, 2], "status"] = "failed"
    cohort = build_cohort(pheno, outcomes)
    left_out = set(pheno.product_id.iloc[[0, 2]])
    assert left_out.isdisjoint(cohort.data.product_id) and len(cohort.data) == len(pheno) - 2
    assert any("2 product(s) not analysed, status not 'done'" in n and all(p in n for p in left_out)
               for n in cohort.notes)
    # their patients have a product (it failed): not listed as patients without one
    patients = sorted(outcomes.loc[outcomes["product_id"].isin(left_out), "patient_id"])
    assert len(patients) == 2 and not set(patients) & set(cohort.patients_without_products)
    assert cohort.patients_with_products_not_done == patients
    unmatched = cohort.unmatched()
    assert sorted(unmatched.loc[unmatched["kind"] == "patient_product_not_done", "id"]) == patients


def test_too_few_patients_is_a_one_line_error(tables, tmp_path):
    """0 or 1 patients joined: a TableError naming both tables, not a traceback from deep inside a
    model; the command exits 2 with that one line."""
    from typer.testing import CliRunner

    from tilpheno.biomarkers.analysis import MIN_PATIENTS
    from tilpheno.cli import app

    pheno, outcomes = tables
    for n in range(MIN_PATIENTS):
        with pytest.raises(TableError, match=rf"phenotypes, outcomes: {n} patient\(s\) with both"):
            run_biomarkers(pheno.head(n), outcomes, tmp_path / f"bio{n}", n_boot=0, n_perm=10)
    one = _write(tmp_path, pheno.head(1), "pheno.csv")
    result = CliRunner().invoke(app, ["biomarkers", "--phenotypes", str(one), "--outcomes",
                                      str(REF / "til_cohort_outcomes.csv"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "1 patient(s) with both a phenotyped product and outcomes" in result.output
    assert "Traceback" not in result.output
    # errors found while joining the two tables name their files, not "phenotypes" / "outcomes"
    text = " ".join(result.output.split())
    assert f"{one}, {REF / 'til_cohort_outcomes.csv'}: 1 patient(s)" in text, text
    result = CliRunner().invoke(app, ["biomarkers", "--phenotypes", str(REF / "til_cohort_phenotypes.csv"),
                                      "--outcomes", str(REF / "til_cohort_outcomes.csv"), "--covariates", "agee",
                                      "--out", str(tmp_path / "out2")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{REF / 'til_cohort_outcomes.csv'}: column 'agee': covariate not found" in text, text


def test_unmatched_ids_are_one_line_each_kind(tmp_path):
    """Outcomes for 3 of 60 phenotyped products: the command printed 57 lines 'product without outcomes: TIL004'
    ... before the warnings. Now one line per kind: the count, the first ids, how many more, and where all are."""
    from typer.testing import CliRunner

    from tilpheno.cli import app

    outcomes = _write(tmp_path, pd.read_csv(REF / "til_cohort_outcomes.csv").head(3), "outcomes.csv")
    result = CliRunner().invoke(app, ["biomarkers", "--phenotypes", str(REF / "til_cohort_phenotypes.csv"),
                                      "--outcomes", str(outcomes), "--out", str(tmp_path / "out"),
                                      "--markers", "cd8_pct_of_cd3", "--endpoints", "os", "--permutations", "0",
                                      "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "without outcomes" in line]
    assert lines == ["  57 product(s) without outcomes: TIL004, TIL005, TIL006, TIL007, TIL008 and 52 more (listed in "
                     "unmatched.csv)"], lines
    unmatched = pd.read_csv(tmp_path / "out" / "unmatched.csv")
    assert (unmatched.kind == "product_without_outcomes").sum() == 57


def test_the_summary_line_counts_one_marker_in_the_singular(tmp_path):
    """--markers cd8_pct_of_cd3: the summary line said '1 markers'."""
    from typer.testing import CliRunner

    from tilpheno.cli import app

    result = CliRunner().invoke(app, ["biomarkers", "--phenotypes", str(REF / "til_cohort_phenotypes.csv"),
                                      "--outcomes", str(REF / "til_cohort_outcomes.csv"), "--out", str(tmp_path / "out"),
                                      "--markers", "cd8_pct_of_cd3", "--endpoints", "os", "--permutations", "0",
                                      "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    n = len(pd.read_csv(REF / "til_cohort_outcomes.csv"))
    assert result.output.startswith(f"{n} patients with phenotypes and outcomes ({n} with outcomes); 1 marker; "), \
        result.output


@pytest.mark.parametrize("option, value, message", [
    ("--roc-times", "6,abc", "error: --roc-times: 'abc' is not a number"),
    ("--break-times", "0,x", "error: --break-times: 'x' is not a number"),
    ("--conf-type", "loglog", "error: --conf-type must be one of"),
])
def test_a_bad_option_value_is_an_error_naming_the_option(tmp_path, option, value, message):
    """The command line names its own option, not a library parameter ('conf_type') or nothing at
    all (float's "could not convert string to float: 'abc'")."""
    from typer.testing import CliRunner

    from tilpheno.cli import app

    result = CliRunner().invoke(app, ["biomarkers", "--phenotypes", str(REF / "til_cohort_phenotypes.csv"),
                                      "--outcomes", str(REF / "til_cohort_outcomes.csv"), "--out",
                                      str(tmp_path / "out"), option, value])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output


def test_a_marker_that_is_also_a_covariate(tables):
    """--markers age --covariates age,sex was a traceback (validation's design matrix got 'age' twice);
    with the default covariates the model adjusted age for itself (singular, every model lost)."""
    with pytest.raises(TableError, match=r"column 'age': named both as a marker and as a covariate"):
        build_cohort(*tables, markers=["age"], covariates=["age", "sex"])
    cohort = build_cohort(*tables, markers=["age", "cd8_pct_of_cd3"])
    assert cohort.covariates == ["sex", "ecog"]
    assert any("analysed as marker(s), not used as covariates: age" in n for n in cohort.notes)


@pytest.mark.parametrize("n_perm,n_boot", [(10**11, 0), (0, 10**9), (-1, 0)])
def test_permutations_and_bootstrap_are_bounded(tables, tmp_path, n_perm, n_boot):
    """--permutations 1e11 was a MemoryError traceback (745 GiB of permuted maxima); now a one-line
    error before any work, and nothing written."""
    with pytest.raises(ValueError, match=r"permutations must lie in 0-10,000,000 .* bootstrap samples in 0-100,000"):
        run_biomarkers(*tables, tmp_path / "bio", markers=["cd8_pct_of_cd3"], endpoints=("pfs",), n_perm=n_perm,
                       n_boot=n_boot)
    assert not (tmp_path / "bio").exists()


@pytest.mark.parametrize("rename,expect", [
    (str.lower, r"outcomes product_id 'til001' matches no phenotyped product \(did you mean 'TIL001'\? ids differ in case\)"),
    (lambda p: p.replace("TIL", "TIL0"), r"outcomes product_id 'TIL0001' matches no phenotyped product \(did you mean 'TIL001'\?\)"),
    (lambda p: "lot/2024/" + p[3:], r"outcomes 'lot/2024/001', phenotypes 'TIL001'"),
])
def test_no_id_in_common_says_how_the_ids_differ(tables, tmp_path, rename, expect):
    """Outcomes whose product ids are written otherwise (case, an extra leading zero, another prefix)
    match none: the error said only '0 patient(s)', the "did you mean" hints stayed unseen."""
    pheno, outcomes = tables
    with pytest.raises(TableError, match=r"0 patient\(s\) with both .*; e\.g\. " + expect):
        run_biomarkers(pheno, outcomes.assign(product_id=outcomes.product_id.map(rename)), tmp_path / "bio",
                       n_boot=0, n_perm=0)


def test_bad_marker_cell_names_its_file_row_after_failed_products(tables):
    """Products that failed in `process` are left out before the markers are read: the row of a bad
    cell below them was counted among the remaining products (row 9 for the file's row 12)."""
    pheno, outcomes = tables
    pheno = pheno.assign(status="done").astype({"cd8_pct_of_cd3": object})
    pheno.loc[[0, 1, 2], "status"] = "failed"
    pheno.loc[10, "cd8_pct_of_cd3"] = "12,5"
    with pytest.raises(TableError, match=r"phenotypes: row 12, column 'cd8_pct_of_cd3': '12,5' is not a number"):
        build_cohort(pheno, outcomes)


def test_no_endpoint_is_an_error(tables, tmp_path):
    """`--endpoints ,` (or an empty value) ran without any survival analysis and exited 0."""
    from typer.testing import CliRunner

    from tilpheno.cli import app

    result = CliRunner().invoke(app, ["biomarkers", "--phenotypes", str(REF / "til_cohort_phenotypes.csv"), "--outcomes",
                                      str(REF / "til_cohort_outcomes.csv"), "--out", str(tmp_path / "bio"),
                                      "--endpoints", ",", "--permutations", "0", "--bootstrap", "0"])
    assert result.exit_code == 2 and "no endpoint given; choose from pfs, os" in result.output, result.output
    assert not (tmp_path / "bio").exists()


def test_a_covariate_with_one_value_is_not_silently_left_out(tables):
    """An all-male cohort: sex has one level, so the model had no indicator for it and left it out
    while the report said 'adjusted for age, sex, ecog'. Now the default covariate is not used, with
    a note; named explicitly it is an error; and a Cox model given it refuses, naming it."""
    pheno, outcomes = tables
    males = outcomes.assign(sex="M")
    cohort = build_cohort(pheno, males)
    assert cohort.covariates == ["age", "ecog"]
    assert any("one value in every patient analysed, not used" in n and "sex = M" in n for n in cohort.notes)
    with pytest.raises(TableError, match=r"column 'sex': covariate has one value \(M\) in every patient analysed"):
        build_cohort(pheno, males, covariates=["age", "sex"])
    with pytest.raises(ValueError, match=r"covariate\(s\) constant among the 60 patients analysed: sex"):
        fit_cox(cohort.data, "os_months", "os_event", ["cd8_pct_of_cd3", "sex"])


def test_a_covariate_constant_among_one_models_patients_is_said_with_their_number(tables, tmp_path):
    """sex varies in the cohort, but CD8 was measured only in the male patients' products: the adjusted
    CD8 models were 'not fitted (covariate(s) constant in the data: sex)', though the outcomes table
    has women in it -> the reason counts the patients analysed, the model's complete cases."""
    pheno, outcomes = tables
    men = outcomes.loc[outcomes["sex"] == "M", "product_id"]
    pheno = pheno.assign(cd8_pct_of_cd3=pheno["cd8_pct_of_cd3"].where(pheno["product_id"].isin(men)))
    res = run_biomarkers(pheno, outcomes, tmp_path, markers=["cd8_pct_of_cd3"], covariates=["age", "sex"],
                         endpoints=("os",), n_perm=0, n_boot=0, reports="none")
    analysed = outcomes[outcomes["product_id"].isin(men)].dropna(subset=["age", "os_months", "os_event"])
    assert outcomes["sex"].nunique() == 2 and 0 < len(analysed) < len(outcomes)
    for coding in ("continuous", "dichotomized"):
        assert (f"os cd8_pct_of_cd3 multivariable {coding}: Cox model not fitted (covariate(s) constant among the "
                f"{len(analysed)} patients analysed: sex)") in res.warnings, res.warnings


def test_a_few_doses_in_units_of_1e9_are_flagged(tables):
    """Two doses typed in 10^9 cells (28.18) among doses in cells: the median looked right, so nothing was
    said and the HR per 10^9 cells was driven by two 'doses' of about 0 cells."""
    pheno, outcomes = tables
    mixed = outcomes.copy()
    mixed.loc[[2, 5], "til_dose_cells"] = mixed.loc[[2, 5], "til_dose_cells"] / 1e9
    notes = [n for n in build_cohort(pheno, mixed).notes if n.startswith("plausibility")]
    assert notes == ["plausibility: til_dose_cells has 2 value(s) below 1e+06 cells (P003, P006) among doses in cells: "
                     "given in units of 1e9 cells? Doses must be in cells"]


def test_percentages_given_as_fractions_are_flagged(tables, tmp_path):
    """A percent marker typed as fractions (cd8_pct_of_cd3 0.23 for 23 %) was analysed without a
    word (cut-points and hazard ratios per 1 % then mean per 100 %) -> a plausibility warning in the
    cohort's notes, the analysis' warnings and the report, worded as a guess; the values are
    analysed as given, never rescaled."""
    pheno, outcomes = tables
    fractions = pheno.assign(cd8_pct_of_cd3=pheno["cd8_pct_of_cd3"] / 100)
    largest = fractions["cd8_pct_of_cd3"].max()
    expected = (f"plausibility (a guess from the values): every value of cd8_pct_of_cd3 lies between 0 and 1 (largest "
                f"{largest:g}): percentages given as fractions (0.23 for 23 %)? Analysed as given, in %; if they are "
                "fractions, multiply them by 100 (a population below 1 % in every product would look the same)")
    cohort = build_cohort(fractions, outcomes, markers=["cd8_pct_of_cd3", "cd4_pct_of_cd3"])
    assert [n for n in cohort.notes if n.startswith("plausibility")] == [expected]
    joined = cohort.data.set_index("product_id")["cd8_pct_of_cd3"]
    given = fractions.set_index("product_id")["cd8_pct_of_cd3"]
    pd.testing.assert_series_equal(joined, given.loc[joined.index], check_names=False)
    res = run_biomarkers(fractions, outcomes, tmp_path, markers=["cd8_pct_of_cd3"], endpoints=("os",), n_perm=0,
                         n_boot=0)
    assert expected in res.warnings
    assert "percentages given as fractions" in (tmp_path / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("option,value,said", [
    ("--roc-times", "6,-6", "--roc-times: -6 is not a time in months (more than 0)"),
    ("--roc-times", "0", "--roc-times: 0 is not a time in months (more than 0)"),
    ("--roc-times", "nan", "--roc-times: nan is not a time in months (more than 0)"),
    ("--break-times", "-5,10", "--break-times: -5 is not a time in months (0 or more)"),
])
def test_a_time_before_the_start_of_follow_up_is_an_error(tmp_path, option, value, said):
    """`--roc-times -6` ran and exited 0 with a blank AUC at -6 months (with --bootstrap); `--break-times -5,10` wrote a
    numbers-at-risk column at -5 months (every patient at risk) -> one line naming the option and the value, exit
    status 2, nothing written."""
    from typer.testing import CliRunner

    from tilpheno.cli import app

    result = CliRunner().invoke(app, ["biomarkers", "--phenotypes", str(REF / "til_cohort_phenotypes.csv"), "--outcomes",
                                      str(REF / "til_cohort_outcomes.csv"), "--out", str(tmp_path / "bio"),
                                      option, value, "--permutations", "0", "--bootstrap", "0"])
    assert result.exit_code == 2 and result.output.strip() == f"error: {said}", result.output
    assert not (tmp_path / "bio").exists()


def test_patients_missing_a_covariate_are_named(tables, tmp_path):
    """A covariate missing for some patients: the multivariable models (and their bootstrap validation) drop them
    (complete cases, as R coxph's na.action), which was said nowhere but in the rows' n; now one warning names
    the covariate, how many patients and which, and the models' n agrees with it."""
    pheno, outcomes = tables
    outcomes = outcomes.copy()
    outcomes.loc[[2, 7], "age"] = np.nan
    outcomes.loc[7, "ecog"] = np.nan
    res = run_biomarkers(pheno, outcomes, tmp_path, markers=["cd8_pct_of_cd3"], covariates=["age", "ecog"],
                         endpoints=("os",), n_perm=0, n_boot=0, reports="none")
    missing = outcomes[["age", "ecog"]].isna()
    left_out = outcomes.patient_id[missing.any(axis=1)]
    notes = [w for w in res.warnings if "left out of the multivariable" in w]
    assert len(notes) == 1, res.warnings
    assert f"{len(left_out)} of {len(outcomes)} patients" in notes[0]
    assert "age (2), ecog (1)" in notes[0] and ", ".join(left_out) in notes[0]
    assert (res.cox_multivariable.n == len(outcomes) - len(left_out)).all()
    assert not any("left out of the multivariable" in w for w in build_cohort(pheno, tables[1]).notes)


def test_response_months_that_cannot_be_used_are_named(tables):
    """response_months blank for a CR/PR, given for an SD/PD/NE, or after the patient's PFS or OS time: the landmark
    and time-dependent analyses silently took such a responder as never responding (R tmerge drops a response
    time past the end, too) and ignored the non-responder's time -> one plausibility line each, naming them."""
    pheno, outcomes = tables
    o = outcomes.copy()
    responder = o.best_response.isin(["CR", "PR"])
    o["response_months"] = np.where(responder, np.minimum(2.0, o.pfs_months / 2), np.nan)
    first_cr_pr = o.index[responder][:3]
    o.loc[first_cr_pr[0], "response_months"] = np.nan
    o.loc[first_cr_pr[1], "response_months"] = o.loc[first_cr_pr[1], "pfs_months"] + 0.5
    o.loc[o.index[~responder][0], "response_months"] = 1.0
    text = " | ".join(build_cohort(pheno, o).notes)
    rm = o.response_months

    def ids(mask):
        return ", ".join(o.patient_id[mask])

    blank, given = responder & rm.isna(), ~responder & rm.notna()
    after_pfs, after_os = responder & (rm > o.pfs_months), responder & (rm > o.os_months)
    assert f"response_months blank for 1 CR/PR patient(s) ({ids(blank)})" in text
    assert f"response_months given for 1 patient(s) whose best response is not CR/PR ({ids(given)})" in text
    assert f"response_months after pfs_months for {after_pfs.sum()} CR/PR patient(s) ({ids(after_pfs)})" in text
    assert ("after os_months" in text) == bool(after_os.any())
    o["response_months"] = np.where(responder, np.minimum(2.0, o.pfs_months / 2), np.nan)
    assert "response_months" not in " | ".join(build_cohort(pheno, o).notes)


def _with_comment(tmp_path, frame_column="comment", cells=("2", "progressed early")):
    """The reference outcomes with one more column mixing numbers and text (a clinical export's free
    comment), ``cells`` repeated down the column; returns its path."""
    outcomes = pd.read_csv(REF / "til_cohort_outcomes.csv", dtype=str, keep_default_na=False)
    outcomes[frame_column] = [cells[i % len(cells)] for i in range(len(outcomes))]
    return _write(tmp_path, outcomes, "with_comment.csv")


def test_an_unused_column_mixing_numbers_and_text_stops_nothing(tmp_path):
    """A `comment` column holding '2' and 'progressed early', used neither as a covariate nor as a
    marker, stopped the whole analysis ('mixed types'): read_outcomes checked every extra column as a
    covariate. Now it is carried as written, and the analysis runs with the default covariates."""
    from typer.testing import CliRunner

    from tilpheno.cli import app

    path = _with_comment(tmp_path)
    outcomes = read_outcomes(path)
    assert outcomes["comment"].tolist()[:3] == ["2", "progressed early", "2"]
    cohort = build_cohort(pd.read_csv(REF / "til_cohort_phenotypes.csv"), outcomes)
    assert cohort.covariates == ["age", "sex", "ecog"]
    result = CliRunner().invoke(app, ["biomarkers", "--phenotypes", str(REF / "til_cohort_phenotypes.csv"),
                                      "--outcomes", str(path), "--out", str(tmp_path / "out"),
                                      "--permutations", "0", "--bootstrap", "0", "--markers", "cd8_pct_of_cd3"])
    assert result.exit_code == 0, result.output


def test_a_covariate_mixing_numbers_and_text_is_refused_where_it_is_chosen(tmp_path):
    """The same column named as a covariate (or a default covariate holding both, or a marker) is
    refused in one line naming the file, its first odd cell's row and the column: never silently a
    categorical covariate with '2' a level beside 'progressed early'."""
    from typer.testing import CliRunner

    from tilpheno.cli import app

    pheno = pd.read_csv(REF / "til_cohort_phenotypes.csv")
    path = _with_comment(tmp_path, cells=("2", "3", "progressed early"))
    said = f"{path}: row 4, column 'comment': mixed types: 'progressed early' is text in a column of numbers"
    with pytest.raises(TableError) as info:
        build_cohort(pheno, read_outcomes(path), covariates=["age", "comment"])
    assert str(info.value) == said
    with pytest.raises(TableError) as info:
        build_cohort(pheno, read_outcomes(path), markers=["comment"])
    assert str(info.value) == said
    result = CliRunner().invoke(app, ["biomarkers", "--phenotypes", str(REF / "til_cohort_phenotypes.csv"),
                                      "--outcomes", str(path), "--out", str(tmp_path / "out"),
                                      "--covariates", "age,comment"])
    assert result.exit_code == 2, result.output
    assert " ".join(result.output.split()).endswith(said), result.output
    assert "Traceback" not in result.output
    sexes = _with_comment(tmp_path, "sex", ("M", "F", "1"))   # a default covariate: used unless named otherwise
    with pytest.raises(TableError, match=r"row 4, column 'sex': mixed types: '1' is a number in a column of text"):
        build_cohort(pheno, read_outcomes(sexes))
    cohort = build_cohort(pheno, read_outcomes(sexes), covariates=["age"])   # not used: nothing stops
    assert cohort.covariates == ["age"]


@pytest.mark.parametrize("which", ["phenotypes", "outcomes"])
def test_a_path_instead_of_a_table_is_a_type_error_naming_the_argument_and_its_reader(tables, tmp_path, which):
    """tp.run_biomarkers(phenotypes, outcomes, out) given a file's path instead of a DataFrame raised
    AttributeError: 'str' object has no attribute 'columns' deep inside -> a one-line TypeError naming the argument,
    what it got and the reader that makes a table of the file; build_cohort alike; nothing written."""
    import tilpheno as tp

    paths = {"phenotypes": str(REF / "til_cohort_phenotypes.csv"), "outcomes": str(REF / "til_cohort_outcomes.csv")}
    given = dict(zip(("phenotypes", "outcomes"), tables), **{which: paths[which]})
    reader = {"phenotypes": "tilpheno.biomarkers.read_phenotypes", "outcomes": "tilpheno.io.outcomes.read_outcomes"}
    for call in (lambda: tp.run_biomarkers(given["phenotypes"], given["outcomes"], tmp_path / "out", n_perm=0,
                                           n_boot=0),
                 lambda: build_cohort(given["phenotypes"], given["outcomes"])):
        with pytest.raises(TypeError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"{which}: expected a pandas DataFrame, got str")
        assert paths[which][:60] in msg and reader[which] in msg
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("column, cells, chosen", [
    ("comment", ("2", "3", "progressed early"), dict(covariates=["age", "comment"])),
    ("comment", (2, 3.5, "progressed early"), dict(covariates=["age", "comment"])),   # numbers as numbers
    ("comment", ("2", "3", "progressed early"), dict(markers=["comment"])),
    ("sex", ("M", "F", "1"), {}),   # a default covariate
])
def test_a_mixed_column_of_a_table_without_the_readers_attrs_is_refused_as_the_reader_refuses_it(
        tmp_path, column, cells, chosen):
    """The reader records a column mixing numbers and text in the table's attrs, and build_cohort refused it only
    from there: the same table built by hand (or after a pandas step that drops attrs) made 'comment' ('2' beside
    'progressed early') a categorical covariate, silently -> a chosen text column the attrs do not name is checked
    as the reader checks it: the same one-line error, naming the file, the row (as in the CSV of the table) and the
    column, as when the CSV is read."""
    pheno = pd.read_csv(REF / "til_cohort_phenotypes.csv")
    path = _with_comment(tmp_path, column, cells)
    with pytest.raises(TableError) as read:
        build_cohort(pheno, read_outcomes(path), **chosen)
    by_hand = pd.DataFrame(read_outcomes(REF / "til_cohort_outcomes.csv").to_dict("list"))
    by_hand[column] = [cells[i % len(cells)] for i in range(len(by_hand))]
    assert by_hand.attrs == {}
    with pytest.raises(TableError) as built:
        build_cohort(pheno, by_hand, sources=("phenotypes", str(path)), **chosen)
    assert str(built.value) == str(read.value)
    assert f"{path}: row 4, column '{column}': mixed types" in str(built.value)


def test_a_text_covariate_of_a_table_built_by_hand_is_still_a_category():
    """The check of a hand-built table refuses only what the reader refuses: a text column is a covariate."""
    pheno = pd.read_csv(REF / "til_cohort_phenotypes.csv")
    by_hand = pd.DataFrame(read_outcomes(REF / "til_cohort_outcomes.csv").to_dict("list"))
    assert build_cohort(pheno, by_hand, markers=["cd8_pct_of_cd3"]).covariates == ["age", "sex", "ecog"]


@pytest.mark.parametrize("chosen", [dict(covariates=["ecog"]), dict(markers=["cd8_pct_of_cd3", "ecog"]), {}])
def test_text_numbers_of_a_table_built_by_hand_are_numbers_as_the_reader_reads_them(chosen):
    """A statistician's outcomes table built in pandas with a column of quoted numbers ('0', '1', '2': ECOG read
    with dtype=str) made it a categorical covariate (ecog[1], ecog[2] in the Cox models) and refused it as a marker
    ('not numeric'), while the same cells read from a file are numbers (one HR per unit) -> the table built by hand
    is typed as the reader types it: the same analysis set as the file's, and a note saying so."""
    pheno = pd.read_csv(REF / "til_cohort_phenotypes.csv")
    path = REF / "til_cohort_outcomes.csv"
    by_hand = read_outcomes(path)
    by_hand["ecog"] = pd.read_csv(path, dtype={"ecog": str})["ecog"]
    assert by_hand["ecog"].map(type).eq(str).all()
    from_file = build_cohort(pheno, read_outcomes(path), **chosen)
    built = build_cohort(pheno, by_hand, **chosen)
    assert "ecog" in built.covariates + built.markers
    assert (built.markers, built.covariates) == (from_file.markers, from_file.covariates)
    pd.testing.assert_frame_equal(built.data, from_file.data)
    assert [n for n in built.notes if n not in from_file.notes] == [
        "column(s) of text holding only numbers analysed as numbers, as when read from a file: ecog (for "
        "categories, write them as words)"]


def test_a_mixed_covariate_of_the_phenotypes_is_refused_naming_its_file_row_and_column(tmp_path):
    """A covariate named from the phenotypes table had no check: a garbled column ('1', '2', then 'lung' typed in)
    became a categorical covariate (site[2], site[lung]) and the models ran -> refused as an outcomes covariate is,
    one line naming the file, the line the cell is on (a failed product above it still counts) and the column."""
    pheno = pd.read_csv(REF / "til_cohort_phenotypes.csv")
    pheno["status"] = ["failed"] + ["done"] * (len(pheno) - 1)
    pheno["site"] = [str(1 + i % 2) for i in range(len(pheno))]
    pheno.loc[5, "site"] = "lung"
    path = _write(tmp_path, pheno, "phenotypes.csv")
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.endswith(",lung"))
    with pytest.raises(TableError) as info:
        build_cohort(read_phenotypes(path), read_outcomes(REF / "til_cohort_outcomes.csv"), covariates=["site"],
                     sources=(str(path), "outcomes"))
    assert str(info.value) == f"{path}: row {line}, column 'site': mixed types: 'lung' is text in a column of numbers"


@pytest.mark.parametrize("sep, decimal", [(";", ","), ("\t", ".")])
def test_phenotypes_saved_again_by_a_spreadsheet_read_as_written_by_process(tmp_path, sep, decimal):
    """phenotypes.csv opened in a European Excel (a product excluded, say) and saved: semicolons and
    decimal commas; or copied as tab-separated text. It was refused as "row 1, column 'product_id':
    missing required column", though the column is there; now read as the file process wrote (the
    outcomes table beside it is read in these forms too)."""
    original = REF / "til_cohort_phenotypes.csv"
    saved = tmp_path / "phenotypes.csv"
    pd.read_csv(original, dtype={"product_id": str}).to_csv(saved, sep=sep, decimal=decimal, index=False)
    pd.testing.assert_frame_equal(read_phenotypes(saved), read_phenotypes(original))


@pytest.mark.parametrize("typo", ["ecgo", "Age"])
def test_a_misspelt_default_covariate_header_is_said(tables, typo):
    """An outcomes table whose 'ecog' header read 'ecgo' (or 'age' read 'Age') ran without a word:
    the multivariable models quietly adjusted for the two others. Now a note names the covariate left
    out and the header it may be."""
    pheno, outcomes = tables
    meant = typo.lower() if typo.lower() in outcomes.columns else "ecog"
    cohort = build_cohort(pheno, outcomes.rename(columns={meant: typo}))
    assert cohort.covariates == [c for c in ("age", "sex", "ecog") if c != meant]
    assert any(f"default covariate(s) not in the outcomes, not adjusted for: {meant} (did you mean '{typo}'?)" in n
               for n in cohort.notes), cohort.notes
    assert not any("not in the outcomes" in n for n in build_cohort(pheno, outcomes).notes)


def test_a_default_marker_missing_from_the_tables_says_what_the_tables_have_for_it(tables):
    """Phenotypes of an older run (CD8+PD1+ only as % of CD3+, no Treg column): the note said 'default marker(s) not
    in the tables, skipped: cd8pd1_pct_of_cd8, cd4foxp3_pct_of_cd4', and a difflib "did you mean" would have offered
    other real variables (cd8pd1_pct_of_cd3 for cd4foxp3, cd8_pct_of_cd3 for cd8pd1). Now it says the marker is
    missing from both tables, which columns the tables have for its population, and how to choose the markers."""
    pheno, outcomes = tables
    old = pheno.drop(columns=["cd8pd1_pct_of_cd8", "cd4foxp3_pct_of_cd4"])
    cohort = build_cohort(old, outcomes)
    assert "cd8pd1_pct_of_cd3" in cohort.markers and "cd8pd1_pct_of_cd8" not in cohort.markers
    note = next(n for n in cohort.notes if n.startswith("default marker(s)"))
    assert note == ("default marker(s) of study 'til' missing from both tables (phenotypes and outcomes), not analysed: "
                    "cd8pd1_pct_of_cd8 (the tables have cd8pd1_pct_of_cd3 for cd8pd1); cd4foxp3_pct_of_cd4 (no column "
                    "for cd4foxp3); --markers names the columns to analyse, or the study's `biomarkers` list "
                    "(til/study.yaml (bundled)) sets the defaults"), note
    assert "did you mean" not in note
    assert not any(n.startswith("default marker(s)") for n in build_cohort(pheno, outcomes).notes)


def _blanked(tmp_path, cells: dict[str, list[int]]):
    """The reference outcomes read from a file in which ``cells`` (column -> row positions) are blank."""
    raw = pd.read_csv(REF / "til_cohort_outcomes.csv", dtype=str, keep_default_na=False)
    for column, rows in cells.items():
        raw.loc[rows, column] = ""
    return read_outcomes(_write(tmp_path, raw, "blank.csv"))


def _run(pheno, outcomes, out, reports="none"):
    """The blank-cell tests' analysis; tables only unless the test reads the report (``reports="now"``)."""
    return run_biomarkers(pheno, outcomes, out, markers=["cd8_pct_of_cd3", "til_dose_cells"], n_perm=50, n_boot=0,
                          reports=reports)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """``_run`` of the whole reference cohort, the truth the blank-cell tests compare with (they only read it)."""
    return _run(pd.read_csv(REF / "til_cohort_phenotypes.csv"), read_outcomes(REF / "til_cohort_outcomes.csv"),
                tmp_path_factory.mktemp("whole"))


def test_a_patient_missing_only_pfs_is_left_out_of_the_pfs_analyses_and_kept_in_os(tables, whole, tmp_path):
    """Stop 48: a patient whose PFS cells were blank stopped the whole run ('missing time'). Complete cases per
    endpoint: the PFS analyses equal those of the cohort without the patient, the OS analyses those of the whole
    cohort; one warning names the patient, the blank columns and the file's row; unmatched.csv lists them."""
    pheno, outcomes = tables
    blank = _blanked(tmp_path, {"pfs_months": [4], "pfs_event": [4, 9]})   # P005 both cells, P010 the event only
    got = _run(pheno, blank, tmp_path / "blank", reports="now")   # its report is read below
    without = _run(pheno, outcomes.drop(index=[4, 9]), tmp_path / "without")
    for name in ("km", "cutpoints", "cox_univariable", "cox_multivariable", "logrank", "km_table", "response_survival"):
        for endpoint, truth in (("pfs", without), ("os", whole)):
            mine, want = (getattr(r, name) for r in (got, truth))
            pd.testing.assert_frame_equal(mine[mine.endpoint == endpoint].reset_index(drop=True),
                                          want[want.endpoint == endpoint].reset_index(drop=True), obj=f"{name} {endpoint}")
    pd.testing.assert_frame_equal(got.response, whole.response)   # their responses count
    assert ("missing pfs_months, pfs_event for patient P005 (row 6); missing pfs_event for patient P010 (row 11): left "
            "out of the pfs analyses (complete cases), kept in the os and response analyses") in got.warnings, got.warnings
    unmatched = pd.read_csv(tmp_path / "blank" / "unmatched.csv")
    assert unmatched.values.tolist() == [["missing_pfs", "P005"], ["missing_pfs", "P010"]]
    # the written dataset keeps the events as the file gave them: 0/1, the missing one blank (not 0.0/1.0)
    written = (tmp_path / "blank" / "analysis_dataset.csv").read_text(encoding="utf-8").splitlines()
    header = written[0].split(",")
    events = {row.split(",")[0]: row.split(",")[header.index("pfs_event")] for row in written[1:]}
    assert events["P010"] == "" and set(events.values()) == {"0", "1", ""}, events
    assert "missing pfs: P005" in (tmp_path / "blank" / "report.html").read_text(encoding="utf-8")
    # PFS alone analysed: the patients are kept only where they are, the response analyses
    alone = run_biomarkers(pheno, blank, tmp_path / "alone", markers=["cd8_pct_of_cd3"], n_perm=50, n_boot=0,
                           endpoints=("pfs",), reports="none")
    assert any(w.endswith("left out of the pfs analyses (complete cases), kept in the response analyses")
               for w in alone.warnings), alone.warnings


def test_a_blank_best_response_is_missing_for_the_response_analyses_and_named(tables, whole, tmp_path):
    """A blank best_response said "unknown response code '(empty)'" and stopped the run. It is missing: ORR/DCR,
    the responders table and the responders' survival equal those without the patient, its survival and marker
    analyses those of the whole cohort; the warning says 'missing best_response for patient P008 (row 9)'."""
    pheno, outcomes = tables
    got = _run(pheno, _blanked(tmp_path, {"best_response": [7]}), tmp_path / "blank")
    without = _run(pheno, outcomes.drop(index=[7]), tmp_path / "without")
    for name in ("response", "responders", "response_survival"):
        pd.testing.assert_frame_equal(getattr(got, name), getattr(without, name), obj=name)
    for name in ("km", "cutpoints", "cox_univariable", "cox_multivariable"):
        pd.testing.assert_frame_equal(getattr(got, name), getattr(whole, name), obj=name)
    assert got.response.n.tolist() == [59, 59]
    assert ("missing best_response for patient P008 (row 9): left out of the response rates (ORR, DCR), the "
            "responders table and the responders' survival (landmark, time-dependent Cox) (complete cases), kept in "
            "the survival and marker analyses") in got.warnings, got.warnings
    assert pd.read_csv(tmp_path / "blank" / "unmatched.csv").values.tolist() == [["missing_best_response", "P008"]]


def test_an_endpoint_without_two_patients_is_a_one_line_error_saying_what_to_do(tables, tmp_path):
    pheno, outcomes = tables
    blank = _blanked(tmp_path, {"os_event": list(range(59))})
    with pytest.raises(TableError, match=r"^os \(os_months, os_event\): 1 patient\(s\) with a phenotyped product and "
                                         r"both cells filled; .* or analyse the pfs endpoint only$"):
        _run(pheno, blank, tmp_path / "out")
    assert not (tmp_path / "out").exists()
