"""Worst relative differences between tilpheno and the committed R reference numbers.

    .venv/bin/python benchmarks/r_agreement.py

Reads tests/reference/*_reference.csv (made by make_reference.R) and
prints, per quantity, the largest |tilpheno - reference| / |reference| over every model or curve.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tilpheno.biomarkers.cox import fit_cox
from tilpheno.biomarkers.landmark import time_dependent_cox
from tilpheno.biomarkers.multiplicity import p_adjust
from tilpheno.biomarkers.splines import fit_spline
from tilpheno.biomarkers.tdroc import auc_at

REF = Path(__file__).resolve().parents[1] / "tests" / "reference"


def read(name):
    return pd.read_csv(REF / name, float_precision="round_trip")


def rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def til(ep=None):
    d = read("til_cohort_outcomes.csv").merge(read("til_cohort_phenotypes.csv"), on="product_id")
    d = d.sort_values("product_id").reset_index(drop=True)
    if ep:
        d = d.assign(time=d[f"{ep}_months"], event=d[f"{ep}_event"], til_dose_1e9=d.til_dose_cells / 1e9)
    return d


def data(ds):
    if ds in ("lung", "veteran"):
        return read(f"{ds}.csv")
    if ds.startswith("til_"):
        return til(ds.split("_")[1])
    if ds in ("m15", "m25", "m40"):
        return read("messy_cohorts.csv").query("cohort == @ds")
    return read("random_data.csv").query("dataset == @ds")


def main() -> None:
    worst: dict[str, float] = {}

    def note(key, value):
        worst[key] = max(worst.get(key, 0.0), value)

    cox, models = read("cox_reference.csv"), read("cox_models_reference.csv")
    short = {"cd8": "cd8_pct_of_cd3", "cd8pd1": "cd8pd1_pct_of_cd8"}
    for m in models.itertuples():
        fit = fit_cox(data(m.dataset), "time", "event", [short.get(v, v) for v in m.model.split("+")])
        want = cox[(cox.dataset == m.dataset) & (cox.model == m.model)]
        got = fit.coefficients
        for q in ("coef", "se", "p"):
            note(f"Cox {q} (vs R coxph, {len(models)} models)", rel(got[q], want[q]))
        note("Cox HR and Wald CI (vs summary(coxph)$conf.int)", max(rel(got[q], want[q]) for q in
                                                                    ("hr", "hr_ci_low", "hr_ci_high")))
        note("Cox concordance", rel(fit.concordance, m.concordance))
        note("Cox concordance SE", rel(fit.concordance_se, m.concordance_se))
        note("Cox LR / Wald / score chi-square", max(rel(fit.lr_chisq, m.lr_chisq), rel(fit.wald_chisq, m.wald_chisq),
                                                     rel(fit.score_chisq, m.score_chisq)))
    rcs = read("rcs_reference.csv")
    for (ds, mk, k), g in rcs.groupby(["dataset", "marker", "k"]):
        f = fit_spline(data(ds), "time", "event", mk, int(k))
        note(f"spline Cox coef/se (vs rms::cph, {rcs.groupby(['dataset', 'marker', 'k']).ngroups} models)",
             max(rel(f.cox.coefficients.coef, g.coef), rel(f.cox.coefficients.se, g.se)))
        note("spline nonlinearity chi-square", rel(f.nonlinear_chisq, g.nonlin_chisq.iloc[0]))
    td = read("tdauc_reference.csv")
    for r in td.itertuples():
        d = data(r.dataset).dropna() if r.dataset == "lung" else data(r.dataset)
        s = d[r.marker] if r.marker != "karno" else -d[r.marker]
        if r.dataset.startswith("til_"):
            s = d[r.marker]
        note(f"time-dependent AUC (vs R riskRegression::Score, {len(td)} values)",
             rel(auc_at(d.time, d.event, s, r.time), r.auc))
    pa = read("padjust_reference.csv")
    for _, g in pa.groupby("set"):
        ok = g.p.notna()
        note("Holm / BH (vs p.adjust)", max(rel(p_adjust(g.p, "holm")[ok], g.holm[ok]), rel(p_adjust(g.p, "BH")[ok], g.bh[ok])))
    tv, tvr = read("response_timevarying.csv"), read("timevarying_reference.csv")
    got = time_dependent_cox(tv.os, tv.event, tv.resp_time, tv[["age"]]).set_index("variable")
    w = tvr[tvr.model == "responder+age"].set_index("variable")
    note("time-dependent Cox coef/se (vs R coxph start-stop)", max(rel(got.loc[w.index, "coef"], w.coef),
                                                                   rel(got.loc[w.index, "se"], w.se)))
    for k, v in worst.items():
        print(f"{k:65s} worst relative difference {v:.1e}")


if __name__ == "__main__":
    main()
