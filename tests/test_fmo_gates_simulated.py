"""FMO-anchored PD1/FoxP3 gates on simulated products with fixed bench phenomena (simulated
ground truth: the ideal-FMO reference, ``truth.stained_negative_reference``).

Two products (seeds 93001, 93002, not used elsewhere), drawn with the phenomena fixed so that
each test knows what it is about: mild, nearly symmetric nonspecific PD1/FoxP3 binding that the
additive carry-over must correct to within the issue-13 tolerance (1.5 points) without a review
flag; heavy, right-skewed PD1 binding whose tail the negative peak's lower side cannot see, where
a PD1 variable off by more than 3 points must carry a review flag on its gate (no silent miss).
"""
import pandas as pd
import pytest

from tilpheno.gates.checks import needs_review
from tilpheno.gates.strategy import default_strategy_paths, load_strategy
from tilpheno.phenotype import analyze_product
from tilpheno.simulate.cohort import manifest_rows, simulate_product, write_product
from tilpheno.simulate.phenomena import Phenomena

PD1_GATES = {"pd1_pct_of_live_lymph": "PD1+", "cd8pd1_pct_of_cd8": "CD8+PD1+", "cd8pd1_pct_of_cd3": "CD8+PD1+"}
ALL = {**PD1_GATES, "cd4foxp3_pct_of_cd4": "CD4+FoxP3+"}


def _run(tmp_path, seed, phen):
    prod = simulate_product(f"F{seed}", seed, 20000, phenomena=phen)
    write_product(prod, tmp_path)
    manifest = pd.DataFrame(manifest_rows(prod))
    manifest["file"] = [str(tmp_path / f) for f in manifest["file"]]
    result = analyze_product(prod.product_id, manifest, [load_strategy(p) for p in default_strategy_paths()])
    errors = {v: result.phenotype[v] - prod.truth[f"ref_{v}"] for v in ALL}
    flagged = {f.message.split(" (")[0] for f in result.qc if needs_review(f)}
    return errors, flagged


def test_mild_symmetric_binding_is_corrected_without_review(tmp_path):
    phen = Phenomena(nsb={"PD1": 60.0, "FoxP3": 40.0}, nsb_sd={"PD1": 0.2, "FoxP3": 0.2},
                     spread={"PD1": 40.0, "FoxP3": 30.0})
    errors, flagged = _run(tmp_path, 93001, phen)
    assert all(abs(e) < 1.5 for e in errors.values()), errors
    assert not flagged & set(ALL.values()), flagged


@pytest.mark.slow
def test_heavy_skewed_binding_is_within_tolerance_or_flagged(tmp_path):
    phen = Phenomena(nsb={"PD1": 280.0}, nsb_sd={"PD1": 0.75}, spread={"PD1": 80.0})
    errors, flagged = _run(tmp_path, 93002, phen)
    for variable, gate in PD1_GATES.items():
        assert abs(errors[variable]) <= 1.5 or gate in flagged, (variable, errors[variable], flagged)
    assert any(abs(errors[v]) > 3 for v in PD1_GATES), errors   # the case is hard: the flag is what saves it
