"""The ``cells`` gate's oblique boundary (``boundary: oblique``, the 2-D density on log FSC-A vs
log SSC-A) against the simulator's event labels (debris, doublets, cells) on products drawn with
bench phenomena (seeds 93060-93065, not used elsewhere). The simulator's debris, with or without a
shelf, is drawn independently of the gate code (``simulate.products``, ``simulate.phenomena``)."""
import numpy as np
import pytest

from tilpheno.gates.placement import place_cells
from tilpheno.simulate import instrument as ins
from tilpheno.simulate.cohort import simulate_product
from tilpheno.simulate.products import KIND_DEBRIS, KIND_DOUBLET

SEEDS = tuple(range(93060, 93066))


@pytest.fixture(scope="module")
def files():
    names = list(ins.CHANNEL_NAMES)
    fsc, ssc = names.index("FSC-A"), names.index("SSC-A")
    out = []
    for seed in SEEDS:
        product = simulate_product(f"V{seed}", seed, 20000, phenomena=True)
        for tube in product.tubes:
            ev = tube.data.events
            out.append((tube.file, ev[:, fsc].astype(np.float64), ev[:, ssc].astype(np.float64), tube.data.kind))
    return out


def _kept(fsc, ssc, kind, boundary):
    inside = place_cells(fsc, ssc, boundary=boundary).gate.contains({"FSC-A": fsc, "SSC-A": ssc})
    debris = kind == KIND_DEBRIS
    cells = ~debris & (kind != KIND_DOUBLET)
    return inside[debris].sum(), 100 * (~inside[cells]).mean(), 100 * (inside & debris).sum() / inside.sum()


def test_oblique_boundary_keeps_less_debris_and_loses_no_cells(files):
    debris_fsc = debris_oblique = 0
    for name, fsc, ssc, kind in files:
        n_fsc, lost_fsc, share_fsc = _kept(fsc, ssc, kind, "fsc")
        n_obl, lost_obl, share_obl = _kept(fsc, ssc, kind, "oblique")
        debris_fsc += n_fsc
        debris_oblique += n_obl
        assert lost_obl < 0.05, name                      # % of the file's cells (live and dead)
        # debris % of the gate: per file the valley moves with the noise of a few dozen debris
        # events (up to +0.12 points on these files); never much worse
        assert share_obl <= share_fsc + 0.25, name
    assert debris_oblique < 0.8 * debris_fsc, (debris_oblique, debris_fsc)


def test_review_app_accepts_an_oblique_cells_gate_as_placed():
    """A reviewer who saves the automatic oblique cells gate unchanged is not refused: its vertices
    lie within the review app's bounds for a scatter axis (-range .. 2 x range, $PnR 262144)."""
    import json

    from tilpheno.review.regate import validate_gate

    rng = np.random.default_rng(93066)
    n = 40000
    log_fsc = rng.uniform(3.3, 4.75, n // 4)   # a diagonal debris streak under the cells
    fsc = np.r_[70000 * np.exp(0.12 * rng.standard_normal(n)), 10**log_fsc]
    ssc = np.r_[22000 * np.exp(0.25 * rng.standard_normal(n)), 10 ** (log_fsc - 1.0 + 0.15 * rng.standard_normal(n // 4))]
    placed = place_cells(fsc, ssc, boundary="oblique")
    assert placed.method == "oblique_density_valley"
    auto = json.loads(json.dumps(placed.gate.to_dict()))   # as the review app stores it
    bounds = {"FSC-A": (-262144.0, 524288.0), "SSC-A": (-262144.0, 524288.0)}
    clean = validate_gate(auto, auto, "surface/cells", bounds)
    assert clean["vertices"] == auto["vertices"]


def test_report_states_the_rule_of_every_gate_method_used():
    """The product report's gating section names each method with the populations it placed and
    its rule, for the bundled strategies and with the oblique cells boundary."""
    from strategy_support import bundled_strategies, sample_rows

    from tilpheno.phenotype import analyze_product
    from tilpheno.report.product import GATE_RULES, gate_rules

    for boundary in ("fsc", "oblique"):
        product = analyze_product("TIL002", sample_rows("TIL002"), bundled_strategies(boundary))
        for tube in (t for t in product.tubes if t.role == "stain"):
            text = gate_rules(tube)
            for population, _, _, method in tube.gates:
                assert method in GATE_RULES, method
                assert f"{method} (" in text and population in text
            expected = "oblique_density_valley (cells)" if boundary == "oblique" else "fsc_density_valley (cells)"
            assert expected in text, text
