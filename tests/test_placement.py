"""Gate placement on synthetic events with known labels (truth independent of the placement code)."""
import re

import numpy as np
import pytest
from scipy.stats import norm
from threadpoolctl import threadpool_limits

from tilpheno.errors import GatingError
from tilpheno.gates import checks
from tilpheno.gates.placement import (
    fmo_threshold,
    place_cells,
    place_fmo_threshold,
    place_lymphocytes,
    place_singlets,
    place_valley,
)

CEIL = 262143.0


def scatter_events(seed=0, n=30000):
    """Labelled scatter: 0 lymphocyte, 1 debris, 2 doublet, 3 large cell, 4 saturated."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(5, size=n, p=[0.72, 0.12, 0.06, 0.08, 0.02])
    fsc = 70000 * np.exp(0.12 * rng.standard_normal(n))
    ssc = 22000 * np.exp(0.25 * rng.standard_normal(n))
    debris = kind == 1
    fsc[debris] = np.exp(rng.uniform(np.log(1500), np.log(24000), debris.sum()))
    ssc[debris] = 7000 * np.exp(0.7 * rng.standard_normal(debris.sum()))
    large = kind == 3
    fsc[large] = 150000 * np.exp(0.12 * rng.standard_normal(large.sum()))
    ssc[large] = 90000 * np.exp(0.25 * rng.standard_normal(large.sum()))
    height = fsc * rng.normal(0.78, 0.025, n)
    doublet = kind == 2
    fsc[doublet] *= 2.0
    height[doublet] *= rng.uniform(0.51, 0.62, doublet.sum())
    sat = kind == 4
    fsc[sat] = CEIL
    return kind, fsc, np.minimum(ssc, CEIL), np.minimum(height, CEIL)


def test_cells_drop_debris_and_saturated_edge():
    kind, fsc, ssc, _ = scatter_events()
    p = place_cells(fsc, ssc)
    inside = p.gate.contains({"FSC-A": fsc, "SSC-A": ssc})
    assert inside[kind == 4].sum() == 0
    assert inside[kind == 1].mean() < 0.03
    for k in (0, 2, 3):
        assert inside[kind == k].mean() > 0.995
    assert p.diagnostics["debris_peak"] and 20000 < p.diagnostics["fsc_cut"] < 45000


def test_cells_without_debris_uses_fraction_of_main_mode():
    kind, fsc, ssc, _ = scatter_events()
    keep = kind == 0
    p = place_cells(fsc[keep], ssc[keep], fallback_fraction=0.2)
    assert not p.diagnostics["debris_peak"]
    assert p.diagnostics["fsc_cut"] == pytest.approx(0.2 * p.diagnostics["main_mode_fsc"])
    assert p.gate.contains({"FSC-A": fsc[keep], "SSC-A": ssc[keep]}).mean() > 0.999


def test_singlets_exclude_doublets():
    kind, fsc, _, height = scatter_events(1)
    cells = (kind != 1) & (kind != 4)
    p = place_singlets(fsc[cells], height[cells])
    inside = p.gate.contains({"FSC-A": fsc, "FSC-H": height})
    assert inside[kind == 2].mean() < 0.01
    assert inside[kind == 0].mean() > 0.995 and inside[kind == 3].mean() > 0.995
    assert p.diagnostics["ratio_mode"] == pytest.approx(0.78, abs=0.01)


@pytest.mark.parametrize("seed, n", [(1, 30000), (3, 30001), (4, 200000)])
def test_singlets_read_off_the_ratios_order_are_numpys_medians_and_percentiles(seed, n):
    """place_singlets reads the median, the 0.5th and 99.5th percentiles and the median above the mode
    off the H/A ratios' order (quantiles.OrderStatistics: selected, or sorted): the band is the one np.median and np.percentile of the
    unsorted ratios give, bit for bit (odd and even counts; ratios rounded to 3 digits: ties)."""
    from tilpheno.gates.placement import smoothed_density

    kind, fsc, _, height = scatter_events(seed, n)
    cells = (kind != 1) & (kind != 4)
    area, height = fsc[cells], np.round(height[cells] / fsc[cells], 3) * fsc[cells]
    ratio = height / area
    centre = float(np.median(ratio))
    low, high = np.percentile(ratio, [0.5, 99.5])
    density = smoothed_density(ratio, 0.01 * abs(centre), float(low), float(high))
    peaks, _ = density.peaks(0.02)
    mode = float(density.grid[int(peaks[np.argmax(density.values[peaks])])])
    spread = 1.4826 * float(np.median(ratio[ratio > mode] - mode))
    d = place_singlets(area, height).diagnostics
    assert (d["ratio_mode"], d["ratio_spread"]) == (mode, spread)
    assert d["ratio_high"] == mode + 4.0 * spread


def two_peaks(seed=2, n=20000, positive=0.2):
    rng = np.random.default_rng(seed)
    pos = rng.random(n) < positive
    x = np.where(pos, rng.normal(0.75, 0.05, n), rng.normal(0.15, 0.04, n))
    return pos, x


def test_valley_separates_two_populations_both_directions():
    pos, x = two_peaks()
    low = place_valley(x, "7AAD", keep="low")
    high = place_valley(x, "7AAD", keep="high")
    assert low.flags == () and low.method == "density_valley"
    assert 0.3 < low.diagnostics["threshold"] < 0.6
    m_low = low.gate.contains({"7AAD": x})
    m_high = high.gate.contains({"7AAD": x})
    assert np.array_equal(m_low, ~m_high)  # x < cut vs x > cut, nothing sits exactly on the cut here
    assert (m_low == ~pos).mean() > 0.999


def test_valley_with_small_positive_peak():
    pos, x = two_peaks(3, positive=0.03)
    p = place_valley(x, "CD56", keep="high")
    assert p.flags == ()
    assert (p.gate.contains({"CD56": x}) == pos).mean() > 0.999


def test_valley_single_peak_falls_back_and_flags():
    x = np.random.default_rng(4).normal(0.2, 0.03, 10000)
    p = place_valley(x, "7AAD", keep="low", fallback_sd=4)
    assert [f.code for f in p.flags] == ["no_second_peak"]
    # 4 SDs above the peak, but never beyond the highest event (clamped there)
    assert p.diagnostics["threshold"] == pytest.approx(min(0.2 + 4 * 0.03, x.max()), abs=0.01)
    assert p.diagnostics["threshold"] <= x.max()
    assert p.gate.contains({"7AAD": x}).mean() > 0.999


def test_lymphocytes_exclude_large_cells():
    kind, fsc, ssc, _ = scatter_events(5)
    live = (kind == 0) | (kind == 3)
    p = place_lymphocytes(fsc[live], ssc[live])
    inside = p.gate.contains({"FSC-A": fsc, "SSC-A": ssc})
    assert inside[kind == 3].mean() < 0.005
    assert inside[kind == 0].mean() > 0.97


def _lymphocytes_with_blasts(seed: int, n: int = 20000):
    """Scatter of live cells (linear units): resting lymphocytes (FSC 70k, SSC 26k), activated
    lymphoblasts, larger, one density peak with them (95k, 45k; 30 % of the lymphocytes, as in
    expanded TIL), and large tumour cells apart (160k, 100k; 5 %). Returns (kind 0/1/2, fsc, ssc)."""
    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(n, [0.95 * 0.7, 0.95 * 0.3, 0.05])
    parts = [rng.multivariate_normal([70000, 26000], [[8000**2, 0.5 * 8000 * 6000], [0.5 * 8000 * 6000, 6000**2]], sizes[0]),
             rng.multivariate_normal([95000, 45000], [[15000**2, 0.3 * 15000 * 10000], [0.3 * 15000 * 10000, 10000**2]],
                                     sizes[1]),
             rng.multivariate_normal([160000, 100000], [[15000**2, 0], [0, 15000**2]], sizes[2])]
    events = np.vstack(parts)
    return np.repeat([0, 1, 2], sizes), events[:, 0], events[:, 1]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lymphocytes_keep_the_blasts_at_the_edge_of_the_cloud(seed):
    """The mixture fits the lymphoblasts as a component of their own whose mean lies beyond the
    resting lymphocytes' ellipse: the gate kept 24-26 % of them (77 % of the lymphocytes; the FlowSOM
    68983 file's lymphocytes: 81.6 %). They make one density peak with the resting cells and are
    denser than the gate's edge: merged, the gate keeps >= 95 % of the lymphocytes (simulated
    labels) and still leaves the large cells out."""
    kind, fsc, ssc = _lymphocytes_with_blasts(seed)
    p = place_lymphocytes(fsc, ssc)
    inside = p.gate.contains({"FSC-A": fsc, "SSC-A": ssc})
    assert inside[kind < 2].mean() >= 0.95
    assert inside[kind == 2].mean() < 0.01


@pytest.mark.parametrize("seed", range(6))
def test_lymphocytes_leave_a_thin_background_under_the_cloud_out(seed):
    """A broad, thin component under the lymphocytes (2 % of events scattered over the plot: dead
    cells, doublets, debris) makes one density peak with them too, but is thinner than the gate's
    edge: not merged (merged, the gate took 11-41 % of it on these six seeds, and 1.6-2 % of the
    large cells on three). Truth: the simulated labels."""
    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(20000, [0.93, 0.02, 0.05])
    parts = [rng.multivariate_normal([70000, 26000], [[8000**2, 0.5 * 8000 * 6000], [0.5 * 8000 * 6000, 6000**2]], sizes[0]),
             rng.multivariate_normal([100000, 60000], [[40000**2, 0], [0, 30000**2]], sizes[1]),
             rng.multivariate_normal([160000, 100000], [[15000**2, 0], [0, 15000**2]], sizes[2])]
    events = np.vstack(parts).clip(1, None)
    kind = np.repeat([0, 1, 2], sizes)
    inside = place_lymphocytes(events[:, 0], events[:, 1]).gate.contains({"FSC-A": events[:, 0], "SSC-A": events[:, 1]})
    assert inside[kind == 0].mean() > 0.98
    assert inside[kind == 1].mean() < 0.1 and inside[kind == 2].mean() < 0.005


def test_lymphocytes_deterministic_and_thread_independent():
    kind, fsc, ssc, _ = scatter_events(6, n=40000)
    live = (kind == 0) | (kind == 3)
    a = place_lymphocytes(fsc[live], ssc[live]).gate.to_dict()
    with threadpool_limits(limits=2):
        b = place_lymphocytes(fsc[live], ssc[live]).gate.to_dict()
    assert a == b


def test_fmo_threshold_percentile_and_strict_positivity():
    x = np.random.default_rng(7).standard_normal(400000)
    assert fmo_threshold(x, 99.5) == pytest.approx(norm.ppf(0.995), abs=0.02)
    small = np.arange(1.0, 201.0)  # percentile 99.5 of 1..200 (type 7): 199 + 0.005 * 199 -> 199.005
    thr = fmo_threshold(small, 99.5)
    assert thr == pytest.approx(199.005)
    p = place_fmo_threshold(small, "PD1", source_file="fmo.fcs")
    inside = p.gate.contains({"PD1": np.array([thr, np.nextafter(thr, np.inf), 200.0])})
    assert inside.tolist() == [False, True, True]
    assert p.diagnostics["source_file"] == "fmo.fcs" and p.flags == ()


def test_fmo_low_events_flag_and_errors():
    p = place_fmo_threshold(np.linspace(0, 1, 50), "PD1", min_events=200)
    assert [f.code for f in p.flags] == ["low_events"]
    with pytest.raises(GatingError):
        fmo_threshold(np.array([]), 99.5)
    with pytest.raises(GatingError):
        fmo_threshold(np.ones(10), 100)
    with pytest.raises(GatingError, match="keep"):
        place_valley(np.ones(100), "CD3", keep="middle")


def test_density_peaks_match_scipy_find_peaks():
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import find_peaks

    from tilpheno.gates.placement import Density

    rng = np.random.default_rng(8)
    for _ in range(100):
        values = gaussian_filter1d(rng.random(300) * rng.random(300) ** 3, rng.uniform(1, 6))
        for min_prominence in (1e-4, 0.01, 0.1):
            ours, prominences = Density(np.arange(300.0), values).peaks(min_prominence)
            ref, props = find_peaks(np.concatenate([[0.0], values, [0.0]]), prominence=min_prominence * values.max())
            assert np.array_equal(ours, ref - 1)
            assert np.allclose(prominences, props["prominences"])


def test_valley_skips_a_shoulder_of_the_negatives():
    """Autofluorescent large cells make a bump just above the negatives; dead cells are far brighter."""
    rng = np.random.default_rng(9)
    n = 30000
    kind = rng.choice(3, size=n, p=[0.70, 0.28, 0.02])  # live lymphocytes, live large cells, dead
    x = np.choose(kind, [rng.normal(0.15, 0.04, n), rng.normal(0.35, 0.05, n), rng.normal(0.75, 0.05, n)])
    p = place_valley(x, "7AAD", keep="low")
    assert p.flags == () and p.diagnostics["positive_peak"] == pytest.approx(0.75, abs=0.03)
    live = p.gate.contains({"7AAD": x})
    assert (live == (kind != 2)).mean() > 0.999
    # without the dead cells the shoulder is not taken for a positive peak
    q = place_valley(x[kind != 2], "7AAD", keep="low")
    assert [f.code for f in q.flags] == ["no_second_peak"]
    assert q.gate.contains({"7AAD": x[kind != 2]}).mean() > 0.999  # the cut lies above the shoulder too


def test_valley_single_bright_population_is_positive_when_zero_is_known():
    """Nearly all cells CD3+: one peak far above the unstained position; cut below it."""
    rng = np.random.default_rng(10)
    n = 20000
    pos = rng.random(n) < 0.997
    x = np.where(pos, rng.normal(0.65, 0.04, n), rng.normal(0.15, 0.04, n))
    p = place_valley(x, "CD3", keep="high", zero=0.111)
    assert [f.code for f in p.flags] == ["no_second_peak"] and "positive_peak" in p.diagnostics
    assert p.gate.contains({"CD3": x})[pos].mean() > 0.999
    # without knowing where zero lies the single peak is taken as negative (flagged either way)
    q = place_valley(x, "CD3", keep="high")
    assert "negative_peak" in q.diagnostics and q.flags[0].code == "no_second_peak"


def test_valley_one_population_negative_keeps_a_dim_viability_peak_above_zero_as_live():
    """A viability dye whose live cells stain dimly: one peak (99.7 % of the events) 0.4 above the
    transformed zero, a few dye-bright dead cells. ``auto`` took the peak as positive (dead) and a
    ``keep: low`` gate kept the 0.3 % below it -> ``one_population: negative`` keeps the peak (the
    simulated live cells) and records the positive call's cut, flagged."""
    rng = np.random.default_rng(11)
    n = 20000
    live = rng.random(n) < 0.997
    x = np.where(live, rng.normal(0.51, 0.04, n), rng.normal(0.15, 0.04, n))
    auto = place_valley(x, "Dye", keep="low", zero=0.111)
    assert auto.gate.contains({"Dye": x})[live].mean() < 0.01
    p = place_valley(x, "Dye", keep="low", zero=0.111, one_population="negative")
    assert p.gate.contains({"Dye": x})[live].mean() > 0.999
    assert [f.code for f in p.flags] == ["no_second_peak"] and "one_population: negative" in p.flags[0].message
    assert p.diagnostics["positive_side_cut"] == pytest.approx(auto.diagnostics["threshold"])
    with pytest.raises(GatingError, match="one_population must be"):
        place_valley(x, "Dye", one_population="dead")


def test_one_population_without_a_control_is_undetermined():
    """Issue 13: one population is called positive or negative against an FMO or an unstained control,
    never by its distance from zero. Simulated truth: HLA-DR of tissue T cells, every cell negative but
    lifted 0.29 above the transformed zero (0.11) by autofluorescence, and CD3 of T cells, every cell
    positive, 0.54 above it: without a control both were 'all peaks taken as positive' (the first
    wrongly: 100 % HLA-DR+), the flag saying nothing of the guess -> both are undetermined, held as
    positive (the gates below them are placed), the flag names the missing FMO or unstained control,
    the negative call's cut (which keeps every HLA-DR cell negative) and what decides it; the flag is
    sized with that cut. A strategy's ``one_population: positive`` or ``negative`` decides it (the other
    side's cut kept only where the zero says that side), and so does a control; a population near zero
    stays negative (nothing stained sits where no signal is)."""
    rng = np.random.default_rng(46)
    hladr, cd3 = rng.normal(0.40, 0.04, 10000), rng.normal(0.65, 0.05, 10000)
    for x, dim in ((hladr, "HLA-DR"), (cd3, "CD3")):
        p = place_valley(x, dim, keep="high", zero=0.11)
        assert p.diagnostics["undetermined"] is True and p.gate.contains({dim: x}).mean() > 0.999
        [flag] = p.flags
        assert flag.code == "no_second_peak" and "taken as" not in flag.message, flag.message
        assert (f"{dim}: no negative density peak; one population and no FMO or unstained control of {dim}: positive "
                "or negative undetermined") in flag.message and "one_population: positive or negative" in flag.message
        negative = p.diagnostics["negative_side_cut"]
        assert f"held as positive (as negative its cut would be {negative:.4g})" in flag.message
        assert (x > negative).mean() < 0.001   # the negative call: no cell of the one population positive
        assert negative in checks.check_valley(f"{dim}+", p, x).diagnostics["alternative_cuts"]["no_second_peak"]
        stated = place_valley(x, dim, keep="high", zero=0.11, one_population="positive")
        assert stated.diagnostics["threshold"] == p.diagnostics["threshold"] and "undetermined" not in stated.diagnostics
        assert "all peaks taken as positive by the strategy (one_population: positive), cut" in stated.flags[0].message
        assert "negative_side_cut" not in stated.diagnostics   # decided: the flag is sized as any other
        assert "undetermined" not in place_valley(x, dim, keep="high", zero=0.11, one_population="negative").diagnostics
    control = place_valley(hladr, "HLA-DR", keep="high", zero=0.11, unstained=rng.normal(0.33, 0.03, 5000))
    assert "undetermined" not in control.diagnostics and "negative_peak" in control.diagnostics
    low = rng.normal(0.2, 0.04, 10000)
    near = place_valley(low, "CD3", keep="high", zero=0.11)
    assert "undetermined" not in near.diagnostics and "all peaks taken as negative" in near.flags[0].message
    # stated positive where the zero says negative: the negative call's cut beside it, sizing the flag
    positive = place_valley(low, "CD3", keep="high", zero=0.11, one_population="positive")
    negative = near.diagnostics.get("unclamped_threshold", near.diagnostics["threshold"])   # the negative call's rule
    assert positive.diagnostics["negative_side_cut"] == pytest.approx(negative, abs=1e-12)
    assert ("by the strategy (one_population: positive), although its lowest peak lies less than 0.25 above the "
            f"scale's zero: as negative its cut would be {negative:.4g}") in positive.flags[0].message


def test_a_negative_sd_cut_is_not_undetermined():
    """A keep-low gate with rule negative_sd (k robust SDs above the main peak: a live gate, the FlowAtlas
    CD127lo) on one population above the scale's zero, no control, came out undetermined (its percentages,
    counts and medians blank, qc.csv's undetermined warning) with no no_second_peak flag: the
    one-population call was made first, and the rule's cut then replaced it and set 'two populations'
    (it needs no second peak), leaving the call's 'undetermined' in the diagnostics though it no longer
    placed the cut. The rule's cut is measured from the main peak whatever side the population would be
    called: the same with one_population: negative or positive stated -> not undetermined. Simulated
    truth: every cell live, dim in an amine-reactive dye 0.5 above zero: the gate keeps them all. The
    rule 'lower', where the one-population call's cut stays lower, keeps the call and its flag."""
    from tilpheno.phenotype import undetermined_gates

    rng = np.random.default_rng(48)
    live = rng.normal(0.6, 0.05, 10000)
    auto = place_valley(live, "LiveDead", keep="low", zero=0.1, rule="negative_sd")
    assert not undetermined_gates({"live": auto.diagnostics}) and not auto.flags
    assert "negative_side_cut" not in auto.diagnostics and auto.diagnostics["winner"] == "negative_sd"
    for side in ("negative", "positive"):
        stated = place_valley(live, "LiveDead", keep="low", zero=0.1, rule="negative_sd", one_population=side)
        assert stated.gate.high == auto.gate.high
    assert auto.gate.contains({"LiveDead": live}).mean() > 0.999
    lower = place_valley(live, "LiveDead", keep="low", zero=0.1, rule="lower")
    assert lower.diagnostics["undetermined"] is True and [f.code for f in lower.flags] == ["no_second_peak"]


def test_valley_rule_higher_keeps_the_flat_valley_of_dim_events_out():
    # negatives, a flat smear of dim events and a positive cluster (labels known): the valley
    # minimum lies anywhere in the smear; rule 'higher' cuts at the foot of the positive peak
    rng = np.random.default_rng(11)
    neg, smear, pos = rng.normal(0.2, 0.04, 6000), rng.triangular(0.3, 0.6, 0.6, 900), rng.normal(0.68, 0.03, 5000)
    x = np.concatenate([neg, smear, pos])
    plain = place_valley(x, "CD3", keep="high")
    higher = place_valley(x, "CD3", keep="high", rule="higher", k_sd=3)
    assert higher.diagnostics["winner"] == "positive_sd" and higher.method == "positive_sd"
    assert higher.diagnostics["positive_width"] == pytest.approx(0.03, rel=0.1)
    assert higher.diagnostics["threshold"] == pytest.approx(0.68 - 3 * 0.03, abs=0.01)
    assert higher.diagnostics["valley_threshold"] == plain.diagnostics["threshold"]
    inside = higher.gate.contains({"CD3": x})
    assert inside[-5000:].mean() > 0.99 and inside[6000:6900].mean() < 0.1   # the smear reaches the foot (7 % above 0.59)
    assert plain.gate.contains({"CD3": x})[6000:6900].mean() > inside[6000:6900].mean() + 0.2


def test_valley_cut_never_leaves_the_data_range():
    # one broad population: 4 SDs above it lies beyond the highest event; the cut is clamped there
    x = np.random.default_rng(12).normal(0.3, 0.1, 300)
    p = place_valley(x, "CD19", keep="low", fallback_sd=4)
    assert p.diagnostics["clamped"] is True
    assert p.diagnostics["threshold"] == pytest.approx(x.max())
    assert "clamped to the data's range" in p.flags[0].message


def test_negative_sd_from_the_upper_half_keeps_a_low_tail():
    # CD127 of CD4 T cells: a main CD127+ peak and a CD127-low tail (Tregs) below it; the SD of the
    # main peak comes from its upper half, free of the tail
    rng = np.random.default_rng(13)
    main, tail = rng.normal(0.65, 0.05, 9000), rng.normal(0.45, 0.08, 1000)
    x = np.concatenate([main, tail])
    upper = place_valley(x, "CD127", keep="low", rule="negative_sd", k_sd=1, sd_side="upper")
    lower = place_valley(x, "CD127", keep="low", rule="negative_sd", k_sd=1)
    assert upper.diagnostics["negative_width"] == pytest.approx(0.05, rel=0.1)
    assert upper.diagnostics["threshold"] == pytest.approx(0.65 + 0.05, abs=0.01)
    assert lower.diagnostics["negative_width"] > 0.06          # the tail widens the lower half
    with pytest.raises(GatingError, match="sd_side"):
        place_valley(x, "CD127", rule="negative_sd", sd_side="middle")


def diagonal_debris(seed=0, n=60000, debris_share=0.3, dead_share=0.2):
    """Lymphocytes (0), dead lymphocytes (2: FSC-A x 0.75, SSC-A x 1.3) and a debris streak (1)
    along the diagonal: log10 FSC-A uniform 3.3-4.75 (into the lymphocytes' FSC-A, no peak of its
    own), SSC-A a decade below FSC-A. Alone on FSC-A the debris is a shelf under the cells."""
    rng = np.random.default_rng(seed)
    n_debris = int(n * debris_share)
    n_cells = n - n_debris
    fsc = 70000 * np.exp(0.12 * rng.standard_normal(n_cells))
    ssc = 22000 * np.exp(0.25 * rng.standard_normal(n_cells))
    dead = rng.random(n_cells) < dead_share
    fsc[dead] *= 0.75
    ssc[dead] *= 1.3
    log_fsc = rng.uniform(3.3, 4.75, n_debris)
    kind = np.r_[np.where(dead, 2, 0), np.ones(n_debris, int)]
    return kind, np.r_[fsc, 10**log_fsc], np.r_[ssc, 10 ** (log_fsc - 1.0 + 0.15 * rng.standard_normal(n_debris))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cells_oblique_boundary_drops_diagonal_debris_that_an_fsc_cut_keeps(seed):
    kind, fsc, ssc = diagonal_debris(seed)
    data = {"FSC-A": fsc, "SSC-A": ssc}
    vertical = place_cells(fsc, ssc).gate.contains(data)
    p = place_cells(fsc, ssc, boundary="oblique")
    inside = p.gate.contains(data)
    assert vertical[kind == 1].mean() > 0.3          # the 1-D cut has no valley: the shelf stays in
    assert p.method == "oblique_density_valley" and 0 < p.diagnostics["angle_deg"] <= 60
    assert inside[kind == 1].mean() < 0.01
    assert inside[kind == 0].mean() > 0.999 and inside[kind == 2].mean() > 0.999   # dead cells kept
    assert p.diagnostics["debris_peak"] and p.diagnostics["valley_depth"] < 0.5


def test_cells_oblique_polygon_follows_its_line():
    """The polygon (48 points of the line in linear units) keeps what the line in log-log keeps."""
    kind, fsc, ssc = diagonal_debris(3)
    p = place_cells(fsc, ssc, boundary="oblique")
    a = np.radians(p.diagnostics["angle_deg"])
    floor = np.log10(CEIL) - 4
    u, v = np.log10(np.maximum(fsc, 10**floor)), np.log10(np.maximum(ssc, 10**floor))
    by_line = u * np.cos(a) + v * np.sin(a) > p.diagnostics["offset"]
    assert (p.gate.contains({"FSC-A": fsc, "SSC-A": ssc}) == by_line).mean() > 0.9995


def test_cells_oblique_without_debris_is_the_vertical_fallback():
    kind, fsc, ssc, _ = scatter_events()
    keep = kind == 0
    p = place_cells(fsc[keep], ssc[keep], boundary="oblique")
    assert p.method == "fsc_density_valley" and p.diagnostics["angle_deg"] == 0
    assert not p.diagnostics["debris_peak"]
    assert p.diagnostics["fsc_cut"] == pytest.approx(0.2 * p.diagnostics["main_mode_fsc"])


def test_cells_oblique_keeps_the_saturated_edge_out_and_refuses_unknown_boundary():
    kind, fsc, ssc, _ = scatter_events()
    p = place_cells(fsc, ssc, boundary="oblique")
    inside = p.gate.contains({"FSC-A": fsc, "SSC-A": ssc})
    assert inside[kind == 4].sum() == 0 and inside[kind == 1].mean() < 0.03
    for k in (0, 2, 3):
        assert inside[kind == k].mean() > 0.995
    with pytest.raises(GatingError, match="boundary 'diagonal'"):
        place_cells(fsc, ssc, boundary="diagonal")


@pytest.mark.parametrize("seed", [0, 4])
def test_cells_oblique_vertices_stay_on_the_scale(seed):
    """Every vertex within +-ceiling (the review app's bounds for a scatter axis are -range..2 x
    range): a steep line meets the saturated FSC-A edge before the SSC-A floor and stops there."""
    kind, fsc, ssc = diagonal_debris(seed)
    p = place_cells(fsc, ssc, boundary="oblique")
    vertices = np.asarray(p.gate.vertices)
    assert np.all(np.abs(vertices) <= CEIL)
    a = np.radians(p.diagnostics["angle_deg"])
    hit = (p.diagnostics["offset"] - np.log10(CEIL) * np.cos(a)) / np.sin(a)
    low_ssc = ssc < 10 ** hit * 0.99      # left of the line whatever their FSC-A: none kept
    assert low_ssc.any()
    assert not p.gate.contains({"FSC-A": fsc[low_ssc], "SSC-A": ssc[low_ssc]}).any()


@pytest.mark.parametrize("rule", ["valley", "negative_sd", "lower", "higher"])
def test_valley_gate_makes_its_density_once(monkeypatch, rule):
    """place_valley's negative_sd/lower rules read the main peak on the density the valley was
    found on (it was made a second time from the same events); the valley is valley_threshold's
    (seed 92215)."""
    from tilpheno.gates import placement as pl

    rng = np.random.default_rng(92215)
    values = np.concatenate([rng.normal(0.3, 0.05, 8000), rng.normal(0.9, 0.08, 2000)])
    made: list[float] = []
    real = pl.smoothed_density
    monkeypatch.setattr(pl, "smoothed_density", lambda x, bw, *a, **k: made.append(bw) or real(x, bw, *a, **k))
    placed = pl.place_valley(values, "Viability", keep="low", rule=rule)
    assert len(made) == 1, made
    assert placed.diagnostics["valley_threshold"] == pl.valley_threshold(values)[0]


def test_one_population_is_called_against_the_unstained_control():
    # simulated truth. CD127 of CD4 T cells: 97 % positive around 0.52 and a small CD127-low peak at
    # 0.0, the two most prominent peaks 0.16 apart within the positives; judged by its lowest peak's
    # distance from the transformed zero (0.11) the one population was negative and the cut lay
    # beyond every event (0 % positive). Against the unstained control (median 0.13): the low peak
    # is near it, the main one clearly above it: cut at the valley between them.
    rng = np.random.default_rng(41)
    positive = np.r_[np.ones(9700, bool), np.zeros(300, bool)]
    cd127 = np.r_[rng.normal(0.52, 0.05, 8000), rng.normal(0.68, 0.025, 1700), rng.normal(0.0, 0.05, 300)]
    unstained = rng.normal(0.13, 0.05, 5000)
    by_zero = place_valley(cd127, "CD127", keep="high", zero=0.11)
    assert by_zero.gate.contains({"CD127": cd127}).mean() < 0.01
    p = place_valley(cd127, "CD127", keep="high", zero=0.11, unstained=unstained)
    called = p.gate.contains({"CD127": cd127})
    assert (called == positive).mean() > 0.995 and p.flags == ()
    assert p.diagnostics["unstained_median"] == pytest.approx(np.median(unstained))
    # HLA-DR of tissue T cells: one population at 0.40, 0.29 above the transformed zero (positive by
    # that rule: every event HLA-DR+), overlapping the unstained control (median 0.33): negative
    hladr = rng.normal(0.40, 0.04, 10000)
    assert place_valley(hladr, "HLA-DR", keep="high", zero=0.11).gate.contains({"HLA-DR": hladr}).mean() > 0.99
    control = rng.normal(0.33, 0.03, 5000)
    p = place_valley(hladr, "HLA-DR", keep="high", zero=0.11, unstained=control)
    # the control's 99.5th percentile carried to the population (unstained_carry): 0.5 % of negatives above it,
    # as above an FMO gate's percentile
    assert p.method == "unstained_carry" and p.gate.contains({"HLA-DR": hladr}).mean() < 0.01
    assert [f.code for f in p.flags] == ["no_second_peak"]
    # the flag says why (its peak against the control's median, the margin) and what to do (an FMO):
    # it gave the median and the margin only, and no way out of a gate that keeps none of the parent
    said = re.search(r"all peaks taken as negative \(the highest peak, at ([\d.]+), lies less than 0.25 above the "
                     r"unstained control's median ([\d.]+)\)", p.flags[0].message)
    assert said, p.flags[0].message
    assert float(said.group(1)) == pytest.approx(0.40, abs=0.01)   # the simulated population
    assert said.group(2) == f"{np.median(control):.3f}"
    assert p.flags[0].message.endswith("look at the HLA-DR histogram of the parent for a positive population; "
                                       "if there is one, an FMO control for HLA-DR sets the cut (gate method: fmo)")
    low = place_valley(hladr, "HLA-DR", keep="low", zero=0.11, unstained=control)   # a gate keeping negatives
    assert low.flags[0].message.endswith("for a positive population")
    # a population clearly above the control is positive
    cd69 = rng.normal(0.64, 0.04, 10000)
    p = place_valley(cd69, "CD69", keep="high", zero=0.11, unstained=rng.normal(0.12, 0.05, 5000))
    assert p.gate.contains({"CD69": cd69}).mean() > 0.999 and "positive_peak" in p.diagnostics


@pytest.mark.parametrize("gate", ["lymphocytes", "cluster"])
def test_mixture_gates_fit_the_sample_of_their_finite_events_without_stacking_every_event(monkeypatch, gate):
    """The lymphocyte and cluster gates fit a fixed-seed subsample (10,000) of the events finite in
    both dimensions. They stacked all of them into an (events, 2) array, tested it row by row and
    then took the subsample's rows (a few ms a gate at 150,000 events); the points are now gathered
    at the subsample's indices only. Truth: that definition, computed here on 30,000 events with NaN
    and infinities in either dimension; the fitted sample must be the same bit for bit, and no array
    of more points than the sample may be stacked."""
    from tilpheno.gates import placement as pl

    kind, fsc, ssc, _ = scatter_events(8, n=30000)
    rng = np.random.default_rng(8)
    fsc[rng.choice(fsc.size, 40, replace=False)] = np.nan
    ssc[rng.choice(ssc.size, 40, replace=False)] = np.inf
    fsc[rng.choice(fsc.size, 5, replace=False)] = -np.inf
    points = np.column_stack([fsc, ssc])
    points = points[np.all(np.isfinite(points), axis=1)]
    expected = points[pl._subsample(len(points), 10000, 0)]
    if gate == "lymphocytes":
        expected = expected / 262143.0
    fitted, stacked = [], []
    real_fit, real_stack = pl._fit_mixture, np.column_stack
    monkeypatch.setattr(pl, "_fit_mixture", lambda sample, *a: fitted.append(sample.copy()) or real_fit(sample, *a))
    monkeypatch.setattr(np, "column_stack", lambda arrays: stacked.append(len(arrays[0])) or real_stack(arrays))
    if gate == "lymphocytes":
        placed = pl.place_lymphocytes(fsc, ssc)
    else:
        placed = pl.place_cluster(fsc, ssc, ("FSC-A", "SSC-A"), x_side="low", y_side="low")
    assert len(fitted) == 1 and np.array_equal(fitted[0], expected)
    assert placed.diagnostics["events_used"] == 10000
    assert stacked and max(stacked) <= 10000, stacked
    with pytest.raises(GatingError, match="only 49 events"):
        (pl.place_lymphocytes if gate == "lymphocytes" else
         lambda x, y: pl.place_cluster(x, y, ("FSC-A", "SSC-A")))(np.append(np.linspace(6e4, 8e4, 49), np.nan),
                                                                  np.linspace(2e4, 3e4, 50))


def test_one_population_negative_against_the_control_carries_the_controls_percentile():
    """One population of FoxP3 lifted above the unstained control as a whole (the stained cells'
    background, which the control lacks: FlowAtlas 412C_BM_032's CD4 T cells, median 0.22 against the
    control's 0.07) with a dim tail of real positives that makes no second peak: the valley called it
    negative against the control and cut 4 robust SDs above its own peak, beyond the largest event,
    clamped there: 0 % kept, where the simulated truth holds 4 % positives -> rule unstained_carry:
    the control's 99.5th percentile carried to the population's peak (the additive carry of an FMO
    gate's relative rule), inside the data, the tail kept within 1 point of the truth, the negatives
    and the control above the cut at most 0.5 %. The risk, stated: a control lacks the antibody's
    nonspecific binding (and the other stains' spreading); negatives with a skewed binding tail and
    no positives are partly called positive, and the no_second_peak flag's size, the carry that takes
    the whole upper flank for background, spans more than 2 points of the parent: a review warning."""
    from tilpheno.transforms import Logicle

    t = Logicle()
    zero = float(t.apply(np.zeros(1))[0])
    rng = np.random.default_rng(50)
    control = t.apply(rng.normal(0, 60, 10000))
    n, n_pos = 10000, 400
    background = rng.normal(0, 60, n) + 300 + rng.normal(0, 150, n)
    signal = np.concatenate([np.zeros(n - n_pos), 800 * rng.lognormal(0, 0.5, n_pos)])
    x = t.apply(background + signal)
    placed = place_valley(x, "FoxP3", keep="high", zero=zero, unstained=control, transform=t)
    d = placed.diagnostics
    inside = placed.gate.contains({"FoxP3": x})
    assert 100 * inside.mean() == pytest.approx(100 * n_pos / n, abs=1.0)
    assert not d.get("clamped") and x.min() < d["threshold"] < x.max()
    assert placed.method == "unstained_carry" and d["winner"] == "unstained_carry" and d["control_carry"] == "relative"
    assert d["single_population_cut"] > x.max()   # the population's own SDs: beyond every event
    assert inside[: n - n_pos].mean() <= 0.005 and (control > d["threshold"]).mean() <= 0.005
    [flag] = placed.flags
    assert flag.code == "no_second_peak" and "rule unstained_carry" in flag.message
    assert f"{d['single_population_cut']:.4g}" in flag.message
    # fewer control events than MIN_CONTROL_EVENTS: the population's own SDs, as before
    few = place_valley(x, "FoxP3", keep="high", zero=zero, unstained=control[:150], transform=t)
    assert few.method == "single_population_sd" and few.diagnostics["clamped"]

    skewed = t.apply(rng.normal(0, 60, n) + 150 * rng.lognormal(0, 0.8, n))   # binding only, no positives
    placed = checks.check_valley("FoxP3+", place_valley(skewed, "FoxP3", keep="high", zero=zero, unstained=control,
                                                        transform=t), skewed)
    d = placed.diagnostics
    assert d["winner"] == "unstained_carry" and d["alternative_cuts"]["no_second_peak"] == [d["carried_high"]]
    kept, at_high = (100 * (skewed > c).mean() for c in (d["threshold"], d["carried_high"]))
    assert kept > 2 and kept - at_high > checks.IMPACT_POINTS
