"""Reference numbers for tilpheno's time-dependent AUC from scikit-survival (run once, outputs committed).

scikit-survival is a reference tool only (not a tilpheno dependency). It was installed from PyPI
into a separate virtual environment, so the project's own pins stay untouched:

    python3 -m venv /tmp/sksurv-venv && /tmp/sksurv-venv/bin/pip install scikit-survival==0.28.0
    cd tests/reference && /tmp/sksurv-venv/bin/python make_sksurv_reference.py
Writes tdauc_reference.csv: cumulative_dynamic_auc(y, y, marker, times) (same data as training
and test set) on lung, veteran, the TIL cohort and random tied data.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import sksurv
from sksurv.metrics import cumulative_dynamic_auc
from sksurv.util import Surv

rows = []


def add(dataset, marker, time, event, score, times):
    y = Surv.from_arrays(event=np.asarray(event, bool), time=np.asarray(time, float))
    auc, mean_auc = cumulative_dynamic_auc(y, y, np.asarray(score, float), times)
    for t, a in zip(times, auc):
        rows.append(dict(dataset=dataset, marker=marker, time=t, auc=repr(float(a)), mean_auc=repr(float(mean_auc))))


lung = pd.read_csv("lung.csv").dropna()
for m in ("age", "ph_ecog", "sex"):
    add("lung", m, lung.time, lung.event, lung[m], [180.0, 365.0, 500.0])
vet = pd.read_csv("veteran.csv")
for m in ("karno", "age"):
    add("veteran", m, vet.time, vet.event, -vet[m] if m == "karno" else vet[m], [30.0, 90.0, 180.0])
til = pd.read_csv("til_cohort_outcomes.csv").merge(pd.read_csv("til_cohort_phenotypes.csv"), on="product_id")
for ep in ("pfs", "os"):
    for m in ("til_dose_cells", "cd8_pct_of_cd3", "cd8pd1_pct_of_cd8", "cd4foxp3_pct_of_cd4", "ecog"):
        add(f"til_{ep}", m, til[f"{ep}_months"], til[f"{ep}_event"], til[m], [6.0, 12.0])
rnd = pd.read_csv("random_data.csv")
for name, d in rnd.groupby("dataset"):
    if len(d) >= 20 and d.event.sum() >= 5 and (d.event == 0).any():
        t = float(np.median(d.time))
        if (d.time > t).any() and ((d.time <= t) & (d.event == 1)).any():
            try:
                add(name, "x", d.time, d.event, d.x, [t])
            except ValueError as exc:  # censoring survival zero at an event time: not estimable
                print(name, exc)
pd.DataFrame(rows).to_csv("tdauc_reference.csv", index=False)
with open("sksurv_version.txt", "w") as fh:
    fh.write(f"scikit-survival {sksurv.__version__}\n")
