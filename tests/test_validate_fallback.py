"""``benchmarks/validate_gating.py --without-fmo``: validate_gating's products gated with chosen FMO files left out,
the fallback measured against the same truth (issue 13, stop 53: how far the unstained-control fallback lies and
which self-checks say so)."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import validate_gating as vg  # noqa: E402


def test_a_product_without_its_pd1_fmo_is_measured_on_its_fallback_gates():
    """V168601 (a development seed of stop 53), 5000 events per tube: with ``--without-fmo PD1`` every PD1 gate is
    anchored on the Treg tube's FoxP3 FMO (since stop 61, ``cross_fmo``; with ``--without-fmo FoxP3`` too, on the
    unstained control) (fallback method, that control as source) and has one fallback row per variable
    whose numerator it is, carrying that variable's error as errors.csv does; the other tube's FoxP3 gate keeps its
    FMO. Without the option the row is as before: no fallbacks, the same errors where no PD1 gate is involved."""
    for without, control in ((("PD1", "FoxP3"), "V168601_unstained.fcs"), (("PD1",), "V168601_treg_FMO_FoxP3.fcs")):
        row = vg.one_product((168601, 5000, "valley", "fsc", (), without))
        fallbacks = pd.DataFrame(row.pop("fallbacks"))
        pd1 = fallbacks[fallbacks["gate"] != "CD4+FoxP3+"]
        assert set(pd1["gate"]) == {"PD1+", "CD8+PD1+", "CD4+PD1+"}
        assert sorted(pd1["variable"]) == sorted(v for g in ("PD1+", "CD8+PD1+", "CD4+PD1+") for v in vg.numerator_variables(g))
        assert fallbacks["method"].str.startswith("fallback_").all()
        assert pd1["source_file"].str.endswith(control).all(), without
        for r in fallbacks.itertuples():
            assert r.error == row[r.variable]
    plain = vg.one_product((168601, 5000, "valley", "fsc", (), ()))
    assert "fallbacks" not in plain
    for v in ("cd4foxp3_pct_of_cd4", "cd8_pct_of_cd3", "viability_pct"):
        assert plain[v] == row[v], v


def test_the_fallback_summary_counts_over_and_under_calls_and_specific_flags():
    """``fallback_summary`` on rows built here: a variable's fallbacks beyond its tolerance (over, under by the sign),
    those with a flag other than missing_fmo/fallback_gate, and the ones within flagged (the specific checks' false
    alarms); rows of a gate that is no variable's numerator are left out."""
    tol = vg.TOLERANCE["pd1_pct_of_live_lymph"]
    rows = [("pd1_pct_of_live_lymph", tol + 2.0, "uncertain_threshold"), ("pd1_pct_of_live_lymph", tol + 0.5, ""),
            ("pd1_pct_of_live_lymph", -tol - 1.0, ""), ("pd1_pct_of_live_lymph", tol - 0.1, "negative_shift"),
            ("pd1_pct_of_live_lymph", 0.0, ""), ("", 9.0, "uncertain_threshold")]
    table = pd.DataFrame([{"variable": v, "error": e, "specific_flags": f, "method": "fallback_fmo_relative"}
                          for v, e, f in rows])
    [summary] = vg.fallback_summary(table).to_dict("records")
    assert summary == {"variable": "pd1_pct_of_live_lymph", "n": 5, "methods": "fallback_fmo_relative 5", "beyond": 3,
                       "over": 2, "under": 1, "worst": tol + 2.0, "beyond_flagged": 1, "over_flagged": 1, "within": 2,
                       "within_flagged": 1}
