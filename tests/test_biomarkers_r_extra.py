"""Issue 17 outputs against R (tests/reference/make_reference.R): survfit tables, numbers at risk,
survdiff observed/expected, p.adjust, sample-size formulas."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reference_support import EDGE, REF
from tilpheno.biomarkers.multiplicity import p_adjust
from tilpheno.biomarkers.planning import hsieh_lavori, schoenfeld
from tilpheno.biomarkers.survival import KaplanMeier, logrank_test


def read(name):
    return pd.read_csv(REF / name, float_precision="round_trip")


def til():
    o = read("til_cohort_outcomes.csv")
    return o.merge(read("til_cohort_phenotypes.csv"), on="product_id").sort_values("product_id")


def curve(dataset, group):
    if dataset == "lung":
        d = read("lung.csv")
        d = d[d.sex == int(group)]
        return d.time, d.event
    if dataset in EDGE:
        return EDGE[dataset]
    d = til()
    ep = dataset.split("_")[1]
    return d[f"{ep}_months"], d[f"{ep}_event"]


@pytest.mark.parametrize("key", sorted(set(map(tuple, read("km_table_reference.csv")[["dataset", "group", "conf_type"]]
                                              .astype(str).to_numpy()))))
def test_km_table_equals_summary_survfit(key):
    ref = read("km_table_reference.csv").astype({"group": str})
    want = ref[(ref.dataset == key[0]) & (ref.group == key[1]) & (ref.conf_type == key[2])]
    got = KaplanMeier(conf_type=key[2]).fit(*curve(key[0], key[1])).survfit_table()
    assert got.shape[0] == want.shape[0]
    for ours, theirs in [("time", "time"), ("n.risk", "n_risk"), ("n.event", "n_event"), ("n.censor", "n_censor")]:
        assert got[ours].tolist() == want[theirs].tolist()
    for ours, theirs in [("surv", "surv"), ("std.err", "std_err"), ("lower", "lower"), ("upper", "upper")]:
        np.testing.assert_allclose(got[ours].to_numpy(float), want[theirs].to_numpy(float), rtol=1e-12, atol=1e-15)


def test_numbers_at_risk_at_break_times():
    ref = read("atrisk_reference.csv").astype({"group": str})
    for (ds, g), want in ref.groupby(["dataset", "group"]):
        km = KaplanMeier().fit(*curve(ds, g))
        assert km.at_risk(want.time).tolist() == want.n_risk.tolist(), (ds, g)


def test_logrank_observed_expected_per_group():
    ref = read("logrank_oe_reference.csv")
    lung, vet, t = read("lung.csv"), read("veteran.csv"), til()
    data = {"lung_sex": (lung.time, lung.event, lung.sex.astype(str)),
            "veteran_celltype": (vet.time, vet.event, vet.celltype),
            "til_pfs_cd8_median": (t.pfs_months, t.pfs_event,
                                   np.where(t.cd8_pct_of_cd3 <= t.cd8_pct_of_cd3.median(), "low", "high"))}
    for ds, want in ref.groupby("dataset"):
        res = logrank_test(*data[ds]).table
        assert res.group.astype(str).tolist() == want.group.astype(str).tolist()
        assert res.n.tolist() == want.n.tolist()
        np.testing.assert_allclose(res.observed, want.observed, rtol=1e-12)
        np.testing.assert_allclose(res.expected, want.expected, rtol=1e-10)


def test_p_adjust_exactly_as_r():
    ref = read("padjust_reference.csv")
    for _, g in ref.groupby("set"):
        np.testing.assert_array_equal(p_adjust(g.p, "holm"), g.holm.to_numpy())
        np.testing.assert_array_equal(p_adjust(g.p, "BH"), g.bh.to_numpy())
    with pytest.raises(ValueError):
        p_adjust([0.1], "bonferroni-typo")


def test_schoenfeld_and_hsieh_lavori_equal_r_formulas():
    ref = read("planning_reference.csv")
    for r in ref.itertuples(index=False):
        s = schoenfeld(r.hr, r.prop, r.alpha, r.power, r.p_event)
        h = hsieh_lavori(r.hr, r.sd, r.alpha, r.power, r.p_event)
        assert s.events_exact == pytest.approx(r.schoenfeld_events, rel=1e-12)
        assert h.events_exact == pytest.approx(r.hsieh_events, rel=1e-12)
        assert (s.patients, h.patients) == (r.schoenfeld_patients, r.hsieh_patients)
    with pytest.raises(ValueError, match="not 1"):
        schoenfeld(1.0)
