"""Time-dependent AUC against scikit-survival's cumulative_dynamic_auc (tests/reference/tdauc_reference.csv,
made by make_sksurv_reference.py with scikit-survival 0.28 as a reference tool), and the bootstrap CI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tilpheno.biomarkers.tdroc import auc_at, ipcw_weights, time_roc

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
    d = pd.read_csv(REF / "random_data.csv").query("dataset == @ds")
    return d.time, d.event, d[marker]


@pytest.mark.parametrize("row", list(TD.itertuples(index=False)), ids=lambda r: f"{r.dataset}-{r.marker}-{r.time:g}")
def test_auc_equals_scikit_survival(row):
    assert auc_at(*frame(row.dataset, row.marker), row.time) == pytest.approx(row.auc, rel=1e-6, abs=1e-12)


def test_ipcw_zero_censoring_survival_is_an_error():
    with pytest.raises(ValueError, match="censoring survival is zero"):
        ipcw_weights([1, 2, 3, 3], [1, 1, 0, 1])


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
