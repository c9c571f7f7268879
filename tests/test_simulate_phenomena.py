"""Bench phenomena of the simulator (simulate/phenomena.py): each one present where it should be,
absent where it should not, base streams untouched, and the ideal-FMO reference recomputed."""
import numpy as np
import pytest

from tilpheno.simulate import instrument as ins
from tilpheno.simulate.cohort import simulate_product
from tilpheno.simulate.phenomena import Phenomena, draw_phenomena
from tilpheno.simulate.products import KIND_DEBRIS, KIND_LYMPH
from tilpheno.simulate.truth import compensated_detector, live_lymphocytes, percent

N = 6000
SPILL = ins.true_spillover()


def _median(tube, detector, mask):
    return float(np.median(compensated_detector(tube, detector, SPILL)[mask]))


@pytest.fixture(scope="module")
def pair():
    phen = Phenomena(nsb={"CD4": 300.0}, nsb_sd={"CD4": 0.3}, spread={"PD1": 60.0}, tandem_loss=0.1,
                     debris_shelf=True, debris_extra=0.2, dim_dead=0.5)
    return simulate_product("PH1", 77, N), simulate_product("PH1", 77, N, phenomena=phen)


def test_base_streams_and_composition_unchanged(pair):
    base, phen = pair
    assert base.composition == phen.composition
    again = simulate_product("PH1", 77, N)
    assert np.array_equal(base.tube("surface", "stain").data.events, again.tube("surface", "stain").data.events)
    assert base.phenomena is None and "phen_nsb_CD4" not in base.truth and phen.truth["phen_nsb_CD4"] == 300.0


def test_nonspecific_binding_shifts_stained_negatives_not_the_fmo(pair):
    _, p = pair
    stain, fmo = p.tube("surface", "stain").data, p.tube("surface", "fmo", "CD4").data
    other_fmo = p.tube("surface", "fmo", "CD3").data   # contains the CD4 antibody
    neg = lambda t: live_lymphocytes(t) & ~t.labels["cd4"]
    shift = _median(stain, "BV421-A", neg(stain)) - _median(fmo, "BV421-A", neg(fmo))
    assert 200 < shift < 400
    assert _median(other_fmo, "BV421-A", neg(other_fmo)) - _median(fmo, "BV421-A", neg(fmo)) > 200
    # no binding drawn for CD3: its negatives sit where its FMO's do
    neg3 = lambda t: live_lymphocytes(t) & ~t.labels["cd3"]
    assert abs(_median(stain, "FITC-A", neg3(stain)) - _median(other_fmo, "FITC-A", neg3(other_fmo))) < 30


def test_tandem_degradation_puts_cd8_into_apc(pair):
    base, p = pair
    cd8 = lambda t: live_lymphocytes(t) & t.labels["cd8"] & ~t.labels["cd56"]
    b, s = base.tube("surface", "stain").data, p.tube("surface", "stain").data
    assert _median(s, "APC-A", cd8(s)) - _median(b, "APC-A", cd8(b)) > 300


def test_debris_shelf_and_dim_dead_cells(pair):
    base, p = pair
    b, s = base.tube("surface", "stain").data, p.tube("surface", "stain").data
    fsc = lambda t: t.events[t.kind == KIND_DEBRIS, 0]
    assert np.mean(s.kind == KIND_DEBRIS) > np.mean(b.kind == KIND_DEBRIS) + 0.1
    # a shelf: densest at the bottom of the scale, thinning into the lymphocytes (no peak of its own)
    counts, _ = np.histogram(np.log10(fsc(s)), bins=np.linspace(2.7, 4.75, 6))
    assert np.all(np.diff(counts) < 0) and fsc(s).max() > 30000 > fsc(b).max()
    dead = lambda t: (t.kind == KIND_LYMPH) & t.labels["dead"]
    dye = lambda t: compensated_detector(t, "PerCP-Cy5-5-A", SPILL)[dead(t)]
    assert np.mean(dye(s) < 3000) > np.mean(dye(b) < 3000) + 0.3


def test_reference_from_label_negatives_of_the_stained_tube(pair):
    _, p = pair
    s = p.tube("surface", "stain").data
    pe = compensated_detector(s, "PE-A", SPILL)
    live = live_lymphocytes(s)
    thr = np.percentile(pe[live & ~s.labels["pd1"]], 99.5)
    assert p.truth["ref_pd1_threshold"] == pytest.approx(thr)
    assert p.truth["ref_pd1_pct_of_live_lymph"] == pytest.approx(percent(pe > thr, live))


def test_drawn_phenomena_vary_and_include_none():
    draws = [draw_phenomena(np.random.default_rng(i)) for i in range(40)]
    nsb = np.array([[d.nsb[m] for m in ("CD3", "CD4", "PD1")] for d in draws])
    assert (nsb == 0).mean() > 0.15 and (nsb > 100).mean() > 0.15
    assert {d.debris_shelf for d in draws} == {True, False}
    assert len({round(d.tandem_loss, 6) for d in draws}) > 10
