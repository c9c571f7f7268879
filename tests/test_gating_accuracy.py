"""Accuracy of automatic gating on simulated products the gating never saw.

20 products with varied composition (simulator seeds 9001-9020, chosen once, not used while
developing), 20,000 events per tube. Every variable of the two tubes (the study's ten and the
strategies' extras: CD4+CD8+ of CD3, PD1+ of CD4, the Treg tube's CD3 %). Lineage variables must be within 2 percentage points of the
label truth; PD1 and FoxP3 variables within 1.5 points of the simulator's ideal-FMO-gate
reference (``ref_*``: the 99.5th percentile of the FMO tube's label-defined parent population).
"""
import numpy as np
import pandas as pd
import pytest

from tilpheno.gates.strategy import default_strategy_paths, load_strategy
from tilpheno.phenotype import analyze_product
from tilpheno.simulate.cohort import manifest_rows, simulate_product, write_product

pytestmark = pytest.mark.slow   # simulates and gates a cohort (about 20 s of CPU, stop 47)

SEEDS = range(9001, 9021)
N_EVENTS = 20000
LINEAGE = ("viability_pct", "cd3_pct_of_live_lymph", "cd4_pct_of_cd3", "cd8_pct_of_cd3", "cd4cd8_pct_of_cd3",
           "nk_pct_of_live_lymph", "nkt_pct_of_live_lymph", "cd3_pct_of_lymph_treg")
FMO_GATED = ("pd1_pct_of_live_lymph", "cd8pd1_pct_of_cd8", "cd8pd1_pct_of_cd3", "cd4pd1_pct_of_cd4",
             "cd4foxp3_pct_of_cd4")
LINEAGE_TOLERANCE = 2.0
FMO_TOLERANCE = 1.5


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """(absolute errors, truth): one row per product, one column per variable."""
    strategies = [load_strategy(p) for p in default_strategy_paths()]
    rows, truths = [], []
    for seed in SEEDS:
        out = tmp_path_factory.mktemp(f"p{seed}")
        prod = simulate_product(f"TIL{seed}", seed, N_EVENTS)
        write_product(prod, out)
        manifest = pd.DataFrame(manifest_rows(prod))
        manifest["file"] = [str(out / f) for f in manifest["file"]]
        result = analyze_product(prod.product_id, manifest, strategies)
        ph, truth = result.phenotype, prod.truth
        row = {"product_id": prod.product_id}
        row.update({v: abs(ph[v] - truth[v]) for v in LINEAGE})
        row.update({v: abs(ph[v] - truth[f"ref_{v}"]) for v in FMO_GATED})
        rows.append(row)
        truths.append(truth)
    table = pd.DataFrame(rows).set_index("product_id")
    summary = table.agg(["mean", "max"]).T
    print("\nabsolute error (percentage points) over", len(table), "products\n", summary.round(3).to_string())
    return table, pd.DataFrame(truths).set_index("product_id")


@pytest.fixture(scope="module")
def errors(evaluated):
    return evaluated[0]


def test_products_vary_in_composition(evaluated):
    errors, truth = evaluated
    assert len(errors) == 20
    for variable in ("viability_pct", "cd8_pct_of_cd3", "cd8pd1_pct_of_cd8", "cd4foxp3_pct_of_cd4"):
        assert truth[variable].max() - truth[variable].min() > 5.0, variable


@pytest.mark.parametrize("variable", LINEAGE)
def test_lineage_within_2_points_of_label_truth(errors, variable):
    assert np.all(np.isfinite(errors[variable]))
    assert errors[variable].max() < LINEAGE_TOLERANCE, errors[variable].sort_values().tail(3)


@pytest.mark.parametrize("variable", FMO_GATED)
def test_fmo_gated_within_1_5_points_of_ideal_fmo_reference(errors, variable):
    assert np.all(np.isfinite(errors[variable]))
    assert errors[variable].max() < FMO_TOLERANCE, errors[variable].sort_values().tail(3)
