"""Time-dependent AUC against R's riskRegression::Score(metrics = "auc", cens.model = "km")
(tests/reference/tdauc_reference.csv, made by make_reference.R), and the bootstrap CI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tilpheno.biomarkers.tdroc import auc_at, censoring_survival, ipcw_weights, time_roc

REF = Path(__file__).parent / "reference"
TD = pd.read_csv(REF / "tdauc_reference.csv", float_precision="round_trip")


def frame(ds, marker):
    if ds == "lung":
        d = pd.read_csv(REF / "lung.csv").dropna()
        return d.time, d.event, d[marker]
    if ds == "veteran":
        d = pd.read_csv(REF / "veteran.csv")
        return d.time, d.event, -d[marker] if marker == "karno" else d[marker]
    if ds.startswith("til_"):
        d = pd.read_csv(REF / "til_cohort_outcomes.csv").merge(pd.read_csv(REF / "til_cohort_phenotypes.csv"),
                                                                on="product_id")
        ep = ds.split("_")[1]
        return d[f"{ep}_months"], d[f"{ep}_event"], d[marker]
    if ds in ("m15", "m25", "m40"):
        d = pd.read_csv(REF / "messy_cohorts.csv").query("cohort == @ds")
        return d.time, d.event, d[marker]
    d = pd.read_csv(REF / "random_data.csv").query("dataset == @ds")
    return d.time, d.event, d[marker]


@pytest.mark.parametrize("row", list(TD.itertuples(index=False)), ids=lambda r: f"{r.dataset}-{r.marker}-{r.time:g}")
def test_auc_equals_r_score(row):
    """Equal to R within 1e-10 relative, also where a censoring falls at a case's time (whole-number times:
    lung, veteran, the random and messy cohorts), which 1 / G(T_i) weighed more than R's 1 / G(T_i-) (up to
    0.0058 apart, random4), and where the last time holds an event and a censoring (random26), which stopped
    the AUC ('censoring survival is zero at an event time'). Cases and controls are counted as R's."""
    time, event, score = frame(row.dataset, row.marker)
    assert auc_at(time, event, score, row.time) == pytest.approx(row.auc, rel=1e-10, abs=1e-12)
    table = time_roc(time, event, {"m": score}, [row.time], n_boot=0).table.iloc[0]
    assert (table.cases, table.controls) == (row.cases, row.controls)


def test_the_reference_has_censorings_tied_with_cases_and_events_at_t():
    """The R rows hold what tells the weights apart: censorings at the time of a case, events at exactly t."""
    tied = 0
    for row in TD.itertuples(index=False):
        time, event, _ = (np.asarray(v, dtype=float) for v in frame(row.dataset, row.marker))
        cases = np.unique(time[(event == 1) & (time <= row.time)])
        tied += np.isin(cases, time[event == 0]).any()
    assert tied >= 20 and (TD.cases_at_t > 0).sum() >= 10


def test_a_case_tied_with_the_last_censoring_is_weighted_by_g_just_before():
    """Times 1, 2, 3, 3 with events 1, 1, 0, 1: G is 1 before 3 and 0 at 3 (the censoring at 3 leaves no one);
    the event at 3 is weighted 1 / G(3-) = 1, not refused."""
    uniq, G = censoring_survival(np.array([1.0, 2, 3, 3]), np.array([1.0, 1, 0, 1]))
    assert G.tolist() == [1.0, 1.0, 0.0]
    assert ipcw_weights([1, 2, 3, 3], [1, 1, 0, 1]).tolist() == [1.0, 1.0, 0.0, 1.0]


def _simulate(rng, n, beta=1.0):
    x = rng.normal(size=n)
    t = rng.exponential(1 / np.exp(beta * x))
    c = rng.uniform(0, 3, n)
    return np.minimum(t, c), (t <= c).astype(float), x


def test_bootstrap_ci_coverage_small_simulation():
    """Percentile bootstrap CI of AUC(t) covers the true AUC in about 95% of simulated studies.

    True AUC(0.5) from 400,000 uncensored draws; 40 studies of n = 120 with B = 80 (the full
    check, 1000 studies, is benchmarks/tdroc_coverage.py). Accept 31-40 hits (binomial 40 x 0.95)."""
    rng = np.random.default_rng(42)
    big_x = rng.normal(size=400_000)
    big_t = rng.exponential(1 / np.exp(big_x))
    case, ctrl = big_t <= 0.5, big_t > 0.5
    xc, xn = np.sort(big_x[ctrl]), big_x[case]
    truth = np.mean(np.searchsorted(xc, xn) / xc.size)
    hits = 0
    for i in range(40):
        t, e, x = _simulate(rng, 120)
        res = time_roc(t, e, {"x": x}, [0.5], n_boot=80, seed=i).table.iloc[0]
        hits += res.ci_low <= truth <= res.ci_high
    assert 31 <= hits <= 40, hits


def test_compare_two_markers_paired():
    rng = np.random.default_rng(1)
    t, e, x = _simulate(rng, 200, beta=1.5)
    noise = rng.normal(size=200)
    roc = time_roc(t, e, {"x": x, "noise": noise, "x_again": x + 1e-12 * 0}, [0.5], n_boot=100, seed=2)
    strong = roc.compare("x", "noise", 0.5)
    assert strong["difference"] > 0.15 and strong["p"] < 0.01
    same = roc.compare("x", "x_again", 0.5)
    assert same["difference"] == 0


SE = pd.read_csv(REF / "tdauc_se_reference.csv", float_precision="round_trip")


@pytest.mark.parametrize("case", list(SE.groupby(["dataset", "marker_a", "marker_b"], sort=False)),
                         ids=lambda c: "-".join(c[0]))
def test_bootstrap_standard_errors_agree_with_r_score(case):
    """time_auc.csv's se_boot and the comparison's se_boot (2000 resamples, the analysis' seed) against R
    riskRegression::Score's iid standard errors (as timeROC's): within 15% (the bootstrap SD of 2000 resamples is
    within about 3% of its own limit; 8 AUCs and 8 differences of lung, veteran and the TIL cohort, 0.98-1.05 seen),
    the difference itself equal. The CIs are the right size, not only the AUC."""
    (dataset, marker_a, marker_b), rows = case
    time, event, a = frame(dataset, marker_a)
    b = frame(dataset, marker_b)[2]
    roc = time_roc(time, event, {"a": np.asarray(a, dtype=float), "b": np.asarray(b, dtype=float)},
                   rows.time.tolist(), n_boot=2000)
    table = roc.table.set_index(["marker", "time"])
    for row in rows.itertuples(index=False):
        assert table.at[("a", row.time), "auc"] == pytest.approx(row.auc_a, rel=1e-10)
        assert table.at[("a", row.time), "se_boot"] == pytest.approx(row.se_a, rel=0.15)
        assert table.at[("b", row.time), "se_boot"] == pytest.approx(row.se_b, rel=0.15)
        compared = roc.compare("a", "b", row.time)
        assert compared["difference"] == pytest.approx(row.difference, rel=1e-10, abs=1e-12)
        assert compared["se_boot"] == pytest.approx(row.se_difference, rel=0.15)


def test_the_comparison_ci_is_at_the_asked_conf_level():
    """conf_level 0.90: the AUCs' CIs were 90% but the CI of the difference of two markers stayed at the 2.5/97.5%
    quantiles (95%). Against a marker with one value for everyone (AUC 1/2 in every resample), the difference is
    AUC_x - 1/2 in every resample, so its CI must be the AUC's own CI minus 1/2 (both percentile intervals of the
    same resamples, to 1e-12); and narrower than the 95% one (same seed)."""
    rng = np.random.default_rng(7)
    t, e, x = _simulate(rng, 150)
    flat = np.zeros_like(x)
    for level in (0.90, 0.95):
        roc = time_roc(t, e, {"x": x, "flat": flat}, [0.5], n_boot=120, seed=3, conf_level=level)
        own = roc.table.set_index("marker").loc["x"]
        compared = roc.compare("x", "flat", 0.5)
        assert compared["ci_low"] == pytest.approx(own.ci_low - 0.5, abs=1e-12)
        assert compared["ci_high"] == pytest.approx(own.ci_high - 0.5, abs=1e-12)
        if level == 0.90:
            narrow = compared["ci_high"] - compared["ci_low"]
    assert narrow < compared["ci_high"] - compared["ci_low"]


@pytest.mark.parametrize("level, said", [(0.90, "90%"), (0.975, "97.5%")])
def test_the_methods_give_the_level_of_the_auc_and_spline_intervals(level, said):
    """conf_level 0.90: the methods said '95% percentile bootstrap CIs' of the AUCs and a 'pointwise 95% band' of
    the splines, both drawn at 90%; at 0.975 they said '98%'."""
    from types import SimpleNamespace

    from tilpheno.biomarkers.analysis import Settings
    from tilpheno.biomarkers.report import extra_methods

    text = " ".join(extra_methods(SimpleNamespace(settings=Settings(conf_level=level), cox_univariable=pd.DataFrame(),
                                                  cox_multivariable=pd.DataFrame(), cutpoints=pd.DataFrame(),
                                                  splines=pd.DataFrame(), auc_comparisons=pd.DataFrame(),
                                                  responders=pd.DataFrame())))
    assert f"{said} percentile bootstrap CIs" in text and f"pointwise {said} band" in text
    assert "95%" not in text and "98%" not in text
