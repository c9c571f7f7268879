"""The bundled live gate's self-check on simulated products (drawn bench phenomena; ground truth: the
simulator's dead-cell labels, ``truth.viability_pct``).

The surface tube's ``live`` gate cuts 7AAD at the lower of the density valley and 3 robust SDs above the
live peak (``rule: lower``), so that dead cells dim in the dye count as dead. On V149898 (seed 149898)
the 3-SD cut lies inside the large non-lymphoid cells, live but autofluorescent in 7AAD's detector: a
bump above the live lymphocytes' peak, no valley between. The cut calls 3.15 points of live singlets
dead, and the gate's ``cut_in_dense_region`` check (density at the cut against the live peak's, limit
0.5) saw nothing (0.19). An SD rule's cut lies on its peak's flank, where a Gaussian peak is
``exp(-k^2/2)`` as dense as at its mode (0.011 for 3 SDs): the limit is now twice that, and the flag is
sized as before (the cut moved by 0.03 either way). V150802 (seed 150802: a third of its dead cells dim,
viability within 0.1 point) keeps no review flag on the live gate.
"""
import pandas as pd

from tilpheno.gates.checks import needs_review
from tilpheno.gates.strategy import default_strategy_paths, load_strategy
from tilpheno.phenotype import analyze_product
from tilpheno.simulate.cohort import manifest_rows, simulate_product, write_product


def _viability(folder, seed):
    """The drawn product of ``seed`` analyzed with the study's strategies: (viability error, points
    against the dead-cell labels; the review flags on the live gate)."""
    prod = simulate_product(f"V{seed}", seed, 20000, phenomena=True)
    write_product(prod, folder)
    manifest = pd.DataFrame(manifest_rows(prod))
    manifest["file"] = [str(folder / f) for f in manifest["file"]]
    result = analyze_product(prod.product_id, manifest, [load_strategy(p) for p in default_strategy_paths()])
    error = result.phenotype["viability_pct"] - prod.truth["viability_pct"]
    return error, [f for f in result.qc if f.gate == "live" and needs_review(f)]


def test_a_live_cut_inside_autofluorescent_live_cells_is_flagged_on_the_live_gate(tmp_path):
    error, flags = _viability(tmp_path, 149898)
    assert error < -3.0, error   # the miss itself: live cells called dead
    assert [f.code for f in flags] == ["cut_in_dense_region"], flags
    message = flags[0].message
    assert message.startswith("live (7AAD): the cut ") and "splits another population" in message
    assert "against the scatter" in message
    size = float(message.split("changes viability_pct by ")[1].split(" points")[0])
    assert size > 2.0, message   # the review threshold of a sized density-gate flag


def test_dim_dead_cells_beyond_a_clean_live_cut_raise_no_review(tmp_path):
    error, flags = _viability(tmp_path, 150802)
    assert abs(error) < 2.0, error
    assert flags == [], [f.message for f in flags]
