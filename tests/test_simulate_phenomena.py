"""Bench phenomena of the simulator (simulate/phenomena.py): each one present where it should be,
absent where it should not, base streams untouched, and the ideal-FMO reference recomputed."""
import argparse
import dataclasses
import hashlib
import sys
from pathlib import Path

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


# Acquisition phenomena (stop 63, issue 13): set only, never drawn. Each on development product V212899's drawn
# phenomena (seed from stress_63's development range), against the same product without it.
ACQ_N = 6000


def _drawn_with(**acquisition):
    """V212899 (its drawn bench phenomena) with ``acquisition`` set on them, ``ACQ_N`` events per stained tube."""
    drawn = simulate_product("V212899", 212899, 1, phenomena=True).phenomena
    return simulate_product("V212899", 212899, ACQ_N, phenomena=dataclasses.replace(drawn, **acquisition))


@pytest.fixture(scope="module")
def acquisition_base():
    return _drawn_with()


def _partial_slope(tube, target, source, mask):
    """Least-squares slope of ``target`` on ``source`` (with an intercept), compensated with the written matrix."""
    y, x = compensated_detector(tube, target, SPILL)[mask], compensated_detector(tube, source, SPILL)[mask]
    return float(np.linalg.lstsq(np.column_stack([x, np.ones_like(x)]), y, rcond=None)[0][0])


def test_a_product_without_acquisition_phenomena_is_mains_byte_for_byte():
    """A drawn product's events and truth hash as main 42f2dff's did (computed there): the acquisition phenomena
    are off in the drawn mix and leave every stream of a product without them alone (a guard; it passes on main)."""
    p = simulate_product("V212899", 212899, 2000, phenomena=True)
    h = hashlib.sha256()
    for t in p.tubes:
        h.update(t.data.events.tobytes())
    h.update(repr(sorted(p.truth.items())).encode())
    assert h.hexdigest() == "1f5f8b2988b7195165c3528ad7f33aecf5207e8479a80610149f8db9898bea33"
    assert not any(k.startswith(("phen_spill_", "phen_fmo_")) for k in p.truth)


def test_a_compensation_error_leaves_cd8_in_pe_in_the_stained_tube_and_its_fmos(acquisition_base):
    """CD8's APC-H7 under-compensated into PE by 0.08: compensated with the file's written $SPILLOVER, the PD1-negative
    live lymphocytes' PE rises 0.08 per unit of APC-H7 (least squares, +-0.015) in the stained tube and in the PD1
    FMO alike (one matrix per run), about 0 without it; the Treg tubes, without CD8's antibody, are untouched."""
    err = _drawn_with(spill_error={("APC-H7", "PE-A"): 0.08})
    for tube in (("surface", "stain"), ("surface", "fmo", "PD1")):
        for product, wanted in ((err, 0.08), (acquisition_base, 0.0)):
            t = product.tube(*tube).data
            slope = _partial_slope(t, "PE-A", "APC-H7-A", live_lymphocytes(t) & ~t.labels["pd1"])
            assert slope == pytest.approx(wanted, abs=0.015), (tube, wanted)
    assert np.array_equal(err.tube("treg", "stain").data.events, acquisition_base.tube("treg", "stain").data.events)
    assert err.truth["phen_spill_APC-H7_PE-A"] == 0.08


def test_over_compensation_takes_cd8_out_of_pe():
    """The same pair over-compensated (-0.06): the slope is -0.06 (+-0.015)."""
    t = _drawn_with(spill_error={("APC-H7", "PE-A"): -0.06}).tube("surface", "stain").data
    assert _partial_slope(t, "PE-A", "APC-H7-A", live_lymphocytes(t) & ~t.labels["pd1"]) == pytest.approx(-0.06, abs=0.015)


def test_fmo_drift_scales_one_detector_of_the_fmo_tubes_only(acquisition_base):
    """PE's gain 1.08 in the FMO tubes: each FMO tube's raw PE-A is the undrifted tube's x 1.08 (float32 rounding,
    the 18-bit ceiling), its other channels and every stained and unstained tube identical, and the ideal-FMO
    reference (the stained tubes' label negatives, acquired at the stained tube's gain) unchanged."""
    drift = _drawn_with(fmo_gain={"PE-A": 1.08})
    pe = ins.CHANNEL_NAMES.index("PE-A")
    for a, b in zip(drift.tubes, acquisition_base.tubes):
        if a.data.spec.role != "fmo":
            assert np.array_equal(a.data.events, b.data.events), a.file
            continue
        wanted = np.minimum(b.data.events[:, pe].astype(np.float64) * 1.08, ins.SATURATION)
        np.testing.assert_allclose(a.data.events[:, pe], wanted, rtol=2e-7, atol=1e-3)
        others = [i for i in range(len(ins.CHANNEL_NAMES)) if i != pe]
        assert np.array_equal(a.data.events[:, others], b.data.events[:, others]), a.file
    assert {k: v for k, v in drift.truth.items() if k.startswith("ref_")} == \
        {k: v for k, v in acquisition_base.truth.items() if k.startswith("ref_")}


def test_few_fmo_events_shorten_the_fmo_tubes_only(acquisition_base):
    """FMO tubes with 0.1 of the stained tube's events: 600 events each; the stained and unstained tubes and the
    reference as without it."""
    few = _drawn_with(fmo_events=0.1)
    for a, b in zip(few.tubes, acquisition_base.tubes):
        if a.data.spec.role == "fmo":
            assert len(a.data.events) == round(0.1 * ACQ_N) and len(b.data.events) == ACQ_N
        else:
            assert np.array_equal(a.data.events, b.data.events), a.file
    assert {k: v for k, v in few.truth.items() if k.startswith("ref_")} == \
        {k: v for k, v in acquisition_base.truth.items() if k.startswith("ref_")}
    assert few.truth["phen_fmo_events"] == 0.1


def test_validate_gatings_set_names_the_acquisition_phenomena():
    """``--set`` parses negative ranges and puts each acquisition name where the simulator reads it, drawn from the
    name's own stream (a value in the range)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import validate_gating as vg

    assert vg.parse_set("spill_apch7_pe=-0.15--0.02") == ("spill_apch7_pe", -0.15, -0.02)
    assert vg.parse_set("pd1_binding=150-300") == ("pd1_binding", 150.0, 300.0)
    with pytest.raises(argparse.ArgumentTypeError):
        vg.parse_set("fmo_events=0.3-0.05")
    sets = tuple(vg.parse_set(s) for s in ("spill_apch7_pe=-0.15--0.02", "fmo_gain_pe=0.9-1.1", "fmo_events=0.05-0.3"))
    phen = vg.drawn_phenomena(212899, sets)
    assert -0.15 <= phen.spill_error[("APC-H7", "PE-A")] <= -0.02
    assert 0.9 <= phen.fmo_gain["PE-A"] <= 1.1 and 0.05 <= phen.fmo_events <= 0.3
