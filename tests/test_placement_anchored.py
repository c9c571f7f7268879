"""FMO-anchored thresholds (placement.place_fmo_anchored) and the self-checks (gates.checks).

Synthetic populations on the transformed scale with known answers: the FMO's negatives, the
stained tube's negatives shifted / widened by a known amount, positives at a known place.
"""
import numpy as np
import pytest

from tilpheno.errors import GatingError
from tilpheno.gates import checks
from tilpheno.gates import placement as pl
from tilpheno.qc import QCFlag


def _neg(rng, n, mode=0.2, sd=0.03):
    return rng.normal(mode, sd, n)


def test_percentile_rule_is_the_plain_fmo_percentile():
    rng = np.random.default_rng(1)
    fmo, stained = _neg(rng, 5000), np.concatenate([_neg(rng, 4000, 0.3), rng.normal(0.7, 0.05, 1000)])
    p = pl.place_fmo_anchored(fmo, stained, "CD4", rule="percentile")
    assert p.diagnostics["threshold"] == pytest.approx(np.percentile(fmo, 99.5), abs=1e-12)
    assert p.diagnostics["winner"] == "fmo_percentile"


def test_shifted_negatives_bimodal_cut_in_valley_above_the_carried_fmo_bulk():
    rng = np.random.default_rng(2)
    fmo = _neg(rng, 8000)
    stained = np.concatenate([_neg(rng, 6000, 0.3), rng.normal(0.7, 0.05, 4000)])
    p = pl.place_fmo_anchored(fmo, stained, "CD4")
    d = p.diagnostics
    assert d["winner"] == "stained_valley"
    assert d["shift"] == pytest.approx(0.1, abs=0.01)
    # the plain FMO percentile would cut through the stained negatives; the valley does not
    assert d["fmo_threshold"] < 0.3 < d["relative_threshold"] < d["threshold"] < 0.6
    called = 100 * np.mean(stained > d["threshold"])
    assert called == pytest.approx(40.0, abs=0.5)


def test_shifted_negatives_one_population_carry_the_percentile_over():
    rng = np.random.default_rng(3)
    fmo = _neg(rng, 8000)
    stained = np.concatenate([_neg(rng, 9000, 0.28), rng.normal(0.45, 0.05, 1000)])   # dim shoulder
    p = pl.place_fmo_anchored(fmo, stained, "PD1", rule="relative")
    d = p.diagnostics
    assert d["winner"] == "fmo_relative"
    expected = 0.28 + (np.percentile(fmo, 99.5) - 0.2)
    assert d["threshold"] == pytest.approx(expected, abs=0.012)
    # the shoulder is resolved, not discarded: most of its 10 % is called positive
    assert 6.0 < 100 * np.mean(stained > d["threshold"]) < 11.0


def test_unshifted_negatives_keep_the_fmo_percentile_and_widening_scales_it():
    rng = np.random.default_rng(4)
    fmo = _neg(rng, 8000)
    same = pl.place_fmo_anchored(fmo, _neg(rng, 8000), "PD1", rule="relative")
    assert same.diagnostics["winner"] == "fmo_percentile"
    wide = pl.place_fmo_anchored(fmo, _neg(rng, 8000, sd=0.06), "PD1", rule="relative")
    assert wide.diagnostics["winner"] == "fmo_relative"
    assert wide.diagnostics["width_ratio"] == pytest.approx(2.0, rel=0.1)
    assert wide.diagnostics["threshold"] == pytest.approx(0.2 + 2 * (np.percentile(fmo, 99.5) - 0.2), abs=0.02)


def test_all_positive_parent_falls_back_to_the_fmo_percentile_and_cut_stays_in_range():
    rng = np.random.default_rng(5)
    fmo = _neg(rng, 5000)
    stained = rng.normal(0.8, 0.03, 5000)
    p = pl.place_fmo_anchored(fmo, stained, "CD3")
    assert p.diagnostics["winner"] == "fmo_percentile" and "note" in p.diagnostics
    stained = _neg(rng, 3000)
    high = checks.place_and_check("CD3+", "CD3", rng.normal(0.9, 0.01, 3000), stained, percentile=99.5,
                                  source_file="f.fcs", rule="percentile")
    assert high.diagnostics["threshold"] == stained.max()   # kept inside the data: nothing positive
    assert high.diagnostics["fmo_threshold"] > 0.85
    assert "cut_at_scale_edge" in {f.code for f in high.flags}
    relative = pl.place_fmo_anchored(_neg(rng, 3000), _neg(rng, 3000, 0.1), "CD3", max_shift=0.0)
    assert relative.diagnostics["threshold"] <= 0.1 + 5 * 0.03


def test_unknown_rule_is_an_error():
    with pytest.raises(GatingError, match="rule"):
        pl.place_fmo_anchored(np.zeros(100), np.zeros(100), "CD3", rule="guess")


def test_live_dead_rule_negative_sd_catches_dim_dead_cells():
    rng = np.random.default_rng(6)
    live, dim_dead, bright_dead = rng.normal(0.15, 0.03, 8000), rng.normal(0.42, 0.04, 600), rng.normal(0.8, 0.05, 1400)
    x = np.concatenate([live, dim_dead, bright_dead])
    valley = pl.place_valley(x, "7AAD", keep="low")
    lower = pl.place_valley(x, "7AAD", keep="low", rule="lower", k_sd=3)
    assert valley.diagnostics["winner"] == "density_valley" and lower.diagnostics["winner"] == "negative_sd"
    assert lower.diagnostics["threshold"] == pytest.approx(0.15 + 3 * 0.03, abs=0.01)
    assert 100 * np.mean(x < lower.diagnostics["threshold"]) == pytest.approx(80.0, abs=0.3)
    assert 100 * np.mean(x < valley.diagnostics["threshold"]) > 84.0   # the valley keeps dim dead cells


def test_checks_flag_a_cut_inside_the_negatives_and_extreme_widening():
    rng = np.random.default_rng(7)
    fmo = _neg(rng, 5000)
    stained = _neg(rng, 5000, 0.2, 0.15)     # 5x wider: the carried threshold is an extrapolation
    p = checks.place_and_check("PD1+", "PD1", fmo, stained, percentile=99.5, source_file="f.fcs", rule="percentile")
    codes = {f.code for f in p.flags}
    assert "fmo_excess_positive" not in codes
    # plain percentile inside a 5x wider negative peak: dense cut; the FMO's own excess is 0.5 %
    assert "cut_in_dense_region" in codes
    assert all(f.message.startswith("PD1+ (PD1): ") for f in p.flags)
    q = checks.place_and_check("PD1+", "PD1", fmo, stained, percentile=99.5, source_file="f.fcs", rule="relative")
    assert "negative_shift" in {f.code for f in q.flags}
    record = checks.threshold_record(q)
    assert set(record) == set(checks.RECORD_COLUMNS) and record["winner"] == "fmo_relative"


def test_checks_flag_fmo_excess_and_quiet_on_a_clean_gate():
    rng = np.random.default_rng(8)
    fmo = _neg(rng, 5000)
    clean = np.concatenate([_neg(rng, 4000), rng.normal(0.7, 0.05, 1000)])
    p = checks.place_and_check("CD4+", "CD4", fmo, clean, percentile=99.5, source_file="f.fcs")
    assert p.flags == ()
    low = checks.place_and_check("CD4+", "CD4", fmo, _neg(rng, 5000, 0.1), percentile=99.5, source_file="f.fcs",
                                 max_shift=0.3)
    assert "fmo_excess_positive" in {f.code for f in low.flags}


def test_review_status_from_flags():
    info = QCFlag("P", "", "cut_in_dense_region", "info", "x")
    warn = QCFlag("P", "", "cut_in_dense_region", "warning", "x")
    other = QCFlag("P", "", "low_viability", "warning", "x")
    assert checks.review_status([info, other]) == checks.NO_REVIEW_FLAGS
    assert checks.review_status([other, warn]) == checks.NEEDS_REVIEW


def test_valley_self_check_flags_few_events_and_judges_sd_rules_by_their_own_peak():
    rng = np.random.default_rng(21)
    # a clean two-population marker on 600 events: placed fine, but on too few events to trust
    small = np.concatenate([rng.normal(0.2, 0.03, 400), rng.normal(0.7, 0.03, 200)])
    p = checks.check_valley("T cells", pl.place_valley(small, "CD3", keep="high"), small)
    assert [f.code for f in p.flags] == ["few_events"] and "600 events" in p.flags[0].message
    assert checks.needs_review(p.flags[0])
    big = np.concatenate([rng.normal(0.2, 0.03, 4000), rng.normal(0.7, 0.03, 2000)])
    assert checks.check_valley("T cells", pl.place_valley(big, "CD3", keep="high"), big).flags == ()
    # an SD rule cuts on the flank of its own peak by convention: 1 SD above a Gaussian main peak
    # (density 0.61 of it) is no alarm; the same cut called a valley would be one
    main = rng.normal(0.65, 0.05, 9000)
    sd = pl.place_valley(main, "CD127", keep="low", rule="negative_sd", k_sd=1, sd_side="upper")
    assert [f.code for f in checks.check_valley("CD127lo", sd, main).flags] == []
    as_valley = pl.Placement(sd.gate, "density_valley", {**sd.diagnostics, "winner": "density_valley"})
    assert [f.code for f in checks.check_valley("CD127lo", as_valley, main).flags] == ["cut_in_dense_region"]


# --- linear-unit ground truth through the study's logicle: the additive carry-over -------------

from tilpheno.transforms import Logicle  # noqa: E402

LOGICLE = Logicle()


def _fmo_with_spill(rng, n):
    """FMO negatives in linear units: noise around 0, and 30 % of cells with another colour's
    spillover (a second, brighter negative bump, as CD8 APC-H7 in the CD56 detector)."""
    spill = rng.random(n) < 0.3
    return rng.normal(0, 40, n) + np.where(spill, rng.lognormal(np.log(2000), 0.3, n), 0.0)


def _pct_above(values, cut):
    return 100 * np.mean(values > cut)


def test_additive_carry_over_keeps_the_fmos_own_tail():
    rng = np.random.default_rng(11)
    fmo = _fmo_with_spill(rng, 20000)
    neg = _fmo_with_spill(rng, 18000) + 150 + rng.normal(0, 60, 18000)   # binding + spreading, every cell
    pos = rng.lognormal(np.log(15000), 0.3, 2000)
    stained = np.concatenate([neg, pos])
    truth = float(np.percentile(neg, 99.5))                              # ideal FMO: same binding
    p = pl.place_fmo_anchored(LOGICLE.apply(fmo), LOGICLE.apply(stained), "CD56", rule="relative",
                              transform=LOGICLE)
    d = p.diagnostics
    assert d["winner"] == "fmo_relative" and d["relative_low"] <= d["relative_high"]
    # the carried cut sits where the ideal FMO's does: the spillover bump moved by the added
    # signal only, not stretched by the width ratio of the low peak
    assert _pct_above(stained, LOGICLE.inverse(np.array([d["threshold"]]))[0]) == pytest.approx(
        _pct_above(stained, truth), abs=0.5)
    assert pl.additive_threshold(np.arange(101.0), 10.0, 0.0, 50) == pytest.approx(60.0)


def test_valley_wins_when_the_carried_cut_lies_inside_the_negatives():
    rng = np.random.default_rng(12)
    fmo = rng.normal(0, 40, 20000)
    n_neg = 18600
    neg = rng.normal(0, 40, n_neg) + rng.lognormal(np.log(200), 0.8, n_neg)   # skewed nonspecific binding
    stained = np.concatenate([neg, rng.lognormal(np.log(6000), 0.35, 1400)])
    labels = np.arange(stained.size) >= n_neg
    p = pl.place_fmo_anchored(LOGICLE.apply(fmo), LOGICLE.apply(stained), "CD56", transform=LOGICLE)
    d = p.diagnostics
    assert d["winner"] == "stained_valley" and d["relative_threshold"] < d["threshold"]
    called = _pct_above(LOGICLE.apply(stained), d["threshold"])
    assert called == pytest.approx(100 * labels.mean(), abs=1.0)


def test_uncertain_threshold_when_skewed_binding_meets_dim_positives():
    rng = np.random.default_rng(13)
    fmo = rng.normal(0, 40, 20000)
    quiet = np.concatenate([rng.normal(0, 40, 18000) + 100 + rng.normal(0, 30, 18000),
                            rng.lognormal(np.log(3000), 0.3, 2000)])
    p = checks.place_and_check("PD1+", "PD1", LOGICLE.apply(fmo), LOGICLE.apply(quiet), percentile=99.5,
                               source_file="f.fcs", rule="relative", transform=LOGICLE)
    assert "uncertain_threshold" not in {f.code for f in p.flags}
    assert p.diagnostics["bracket_points"] < 6
    n = 16000
    neg = rng.normal(0, 40, n) + rng.lognormal(np.log(300), 0.8, n)
    murky = np.concatenate([neg, rng.lognormal(np.log(900), 0.4, 4000)])
    q = checks.place_and_check("PD1+", "PD1", LOGICLE.apply(fmo), LOGICLE.apply(murky), percentile=99.5,
                               source_file="f.fcs", rule="relative", transform=LOGICLE)
    flags = [f for f in q.flags if f.code == "uncertain_threshold"]
    assert flags and flags[0].message.startswith("PD1+ (PD1): ") and flags[0].severity == "warning"
    assert q.diagnostics["bracket_points"] > 6
    # the ideal-FMO cut (the negatives' own 99.5th percentile) lies inside the flagged bracket
    ideal = LOGICLE.apply(np.array([np.percentile(neg, 99.5)]))[0]
    assert q.diagnostics["relative_low"] - 0.01 <= ideal <= q.diagnostics["relative_high"] + 0.01


def test_large_lower_side_carry_over_is_flagged_not_silent():
    rng = np.random.default_rng(15)
    fmo = rng.normal(0, 40, 20000)
    n = 17000
    neg = rng.normal(0, 40, n) + rng.lognormal(np.log(250), 0.6, n)       # heavy, skewed binding
    stained = np.concatenate([neg, rng.lognormal(np.log(2600), 0.5, 3000)])
    q = checks.place_and_check("PD1+", "PD1", LOGICLE.apply(fmo), LOGICLE.apply(stained), percentile=99.5,
                               source_file="f.fcs", rule="relative", transform=LOGICLE)
    d = q.diagnostics
    ideal = _pct_above(stained, np.percentile(neg, 99.5))
    ours = _pct_above(LOGICLE.apply(stained), d["threshold"])
    assert ours - ideal > 3          # the lower side cannot see the skewed tail: an over-call ...
    assert d["correction_points"] > 6 and d["candidate_points"] > 3
    flags = [f for f in q.flags if f.code == "uncertain_threshold"]
    assert flags and flags[0].severity == "warning" and "would change the %" in flags[0].message   # ... that says so
    assert checks.needs_review(flags[0]) and flags[0].message.startswith("PD1+ (PD1): ")
    # the other carry-over (upper-side spread) is nearer the ideal cut: the flag's bracket holds it
    assert abs(_pct_above(LOGICLE.apply(stained), d["relative_high"]) - ideal) < ours - ideal


def _dim_next_to_negatives(seed, dim_median):
    """PD1-like parent in linear units: FMO = noise; stained negatives = the same noise + symmetric
    binding (150) + spreading (SD 60); 30 % positives at ``dim_median`` above the negatives."""
    rng = np.random.default_rng(seed)
    fmo = rng.normal(0, 40, 20000)
    neg = rng.normal(0, 40, 14000) + 150 + rng.normal(0, 60, 14000)
    pos = rng.lognormal(np.log(dim_median), 0.45, 6000) + 150 + rng.normal(0, 40, 6000) + rng.normal(0, 60, 6000)
    return fmo, neg, np.concatenate([neg, pos])


def test_agreeing_carry_overs_leave_a_dim_markers_dense_cut_unreviewed():
    fmo, neg, stained = _dim_next_to_negatives(21, 450)
    q = checks.place_and_check("CD8+PD1+", "PD1", LOGICLE.apply(fmo), LOGICLE.apply(stained), percentile=99.5,
                               source_file="f.fcs", rule="relative", transform=LOGICLE)
    d = q.diagnostics
    assert d["winner"] == "fmo_relative" and d["correction_points"] > 30      # a large, symmetric shift ...
    ideal = _pct_above(stained, np.percentile(neg, 99.5))
    assert abs(_pct_above(LOGICLE.apply(stained), d["threshold"]) - ideal) < 1.5   # ... carried over right
    assert d["candidate_points"] < 3 and not any(checks.needs_review(f) for f in q.flags)
    # dim positives closer to the negatives: a dense cut; for a dim marker (rule relative) whose two
    # carry-overs agree it is recorded (info), for a lineage marker's anchored gate it is a warning
    fmo, neg, stained = _dim_next_to_negatives(21, 350)
    dense = {}
    for rule in ("relative", "anchored"):
        p = checks.place_and_check("CD8+PD1+", "PD1", LOGICLE.apply(fmo), LOGICLE.apply(stained), percentile=99.5,
                                   source_file="f.fcs", rule=rule, transform=LOGICLE)
        assert p.diagnostics["candidate_points"] < 3
        dense[rule] = [f.severity for f in p.flags if f.code == "cut_in_dense_region"]
    assert dense == {"relative": ["info"], "anchored": ["warning"]}


def test_dim_positives_against_the_negatives_an_off_cut_is_flagged():
    fmo, neg, stained = _dim_next_to_negatives(21, 300)
    q = checks.place_and_check("CD8+PD1+", "PD1", LOGICLE.apply(fmo), LOGICLE.apply(stained), percentile=99.5,
                               source_file="f.fcs", rule="relative", transform=LOGICLE)
    ideal = _pct_above(stained, np.percentile(neg, 99.5))
    off = abs(_pct_above(LOGICLE.apply(stained), q.diagnostics["threshold"]) - ideal)
    assert off > 3      # positives on the negative peak's upper side push its mode: the cut is too high
    assert any(f.code == "uncertain_threshold" and checks.needs_review(f) for f in q.flags)


def test_sorted_additive_threshold_is_the_additive_threshold_of_the_events():
    """The carried-over thresholds of one FMO sort its events once (``sorted_additive_threshold``):
    the same numbers as ``additive_threshold`` of the unsorted events, with and without spread, at
    several percentiles (seed 92210)."""
    rng = np.random.default_rng(92210)
    events = np.concatenate([rng.normal(100.0, 40.0, 5000), rng.lognormal(6.0, 1.0, 300)])
    rng.shuffle(events)
    ordered = np.sort(events)
    for shift, spread in ((0.0, 0.0), (25.0, 0.0), (25.0, 60.0), (-10.0, 5.0)):
        for percentile in (50.0, 99.0, 99.5):
            assert pl.sorted_additive_threshold(ordered, shift, spread, percentile) == \
                pl.additive_threshold(events, shift, spread, percentile)


@pytest.mark.parametrize("binding", ["reference", "gated parent"])
def test_fmo_density_at_the_modes_bandwidth_made_once(monkeypatch, binding):
    """The FMO's density at the modes' bandwidth is made once per carry-over (by
    fmo_negative_peak) and handed on: the carried cut's upper-side spread and the reference's skew
    used to make it again on the same events (seed 92213)."""
    rng = np.random.default_rng(92213)
    fmo = LOGICLE.apply(_fmo_with_spill(rng, 20000))
    stained = LOGICLE.apply(np.concatenate([_fmo_with_spill(rng, 18000) + 150 + rng.normal(0, 60, 18000),
                                            rng.lognormal(np.log(15000), 0.3, 2000)]))
    densities: list[tuple[float, float]] = []
    real = pl.smoothed_density

    def counted(values, bandwidth, *a, **k):
        if values.size == fmo.size and np.array_equal(values, fmo):
            densities.append((bandwidth, *a))
        return real(values, bandwidth, *a, **k)

    monkeypatch.setattr(pl, "smoothed_density", counted)
    if binding == "reference":
        assert pl.reference_binding(fmo, stained, LOGICLE) is not None
    else:
        d = pl.place_fmo_anchored(fmo, stained, "CD56", rule="relative", transform=LOGICLE).diagnostics
        assert np.isfinite(d["relative_low"]) and np.isfinite(d["relative_high"])
    assert len(densities) == len(set(densities)), densities   # no FMO density made twice


@pytest.mark.parametrize("binding", ["reference", "gated parent"])
def test_fmo_tails_taken_once_for_both_bandwidths(monkeypatch, binding):
    """The FMO's densities at the two bandwidths (its own, the modes') span the same percentile
    pair of its events: taken once per carry-over, not once per density (seed 92214)."""
    rng = np.random.default_rng(92214)
    fmo = LOGICLE.apply(_fmo_with_spill(rng, 20000))
    stained = LOGICLE.apply(np.concatenate([_fmo_with_spill(rng, 18000) + 150 + rng.normal(0, 60, 18000),
                                            rng.lognormal(np.log(15000), 0.3, 2000)]))
    taken: list[int] = []
    real = pl.quantiles.percentile

    def counted(values, q, *a, **k):
        if np.size(q) == 2 and np.array_equal(q, [0.05, 99.95]) and np.array_equal(values, fmo):
            taken.append(np.size(values))
        return real(values, q, *a, **k)

    monkeypatch.setattr(pl.quantiles, "percentile", counted)
    if binding == "reference":
        assert pl.reference_binding(fmo, stained, LOGICLE) is not None
    else:
        pl.place_fmo_anchored(fmo, stained, "CD56", rule="relative", transform=LOGICLE)
    assert len(taken) == 1


def _offset_threshold_of_all_events(events, offsets, percentile):
    """The reference: the carried percentile's bisection as it was computed before the upper
    events, over all events sorted."""
    x = np.sort(events)
    wanted = (100.0 - percentile) / 100.0 * x.size * offsets.size
    low, high = x[0] + offsets.min(), x[-1] + offsets.max()
    tol = 1e-9 * max(high - low, 1.0)
    while high - low > tol:
        mid = 0.5 * (low + high)
        if int(x.size * offsets.size - np.searchsorted(x, mid - offsets, side="right").sum()) > wanted:
            low = mid
        else:
            high = mid
    return float(high)


def test_the_carried_percentile_read_from_the_upper_events_is_the_one_of_all_events():
    """Carrying an FMO percentile over sorted all the FMO parent's events (up to 150,000 per gate,
    half the cost of a carry-over); only those above the share of event + offset pairs the cut
    leaves above it are read (16 % at the 99.5th percentile and 32 offsets), selected by a
    partition: the same cut bit for bit as the bisection over all events sorted, on normal,
    skewed, rounded (ties) and integer events, percentiles 0-100, with 32 and 4,096 offsets
    (seed 5101)."""
    rng = np.random.default_rng(5101)
    for trial in range(240):
        n = int(rng.integers(20, 6000))
        events = [rng.normal(100.0, 40.0, n), np.round(rng.lognormal(4.0, 1.5, n)),
                  rng.integers(-5, 5, n).astype(float),
                  np.concatenate([rng.normal(0.0, 60.0, n), rng.lognormal(8.0, 0.4, n // 50 + 1)])][trial % 4]
        percentile = float(rng.choice([0.0, 50.0, 90.0, 99.0, 99.5, 99.9, 100.0]))
        offsets = rng.normal(30.0, 80.0, 32 if trial % 3 else 4096)
        upper = pl.upper_events(events, percentile, offsets.size)
        assert pl.upper_offset_threshold(upper, offsets, percentile) == \
            _offset_threshold_of_all_events(events, offsets, percentile), (trial, percentile)
        if percentile == 99.5 and offsets.size == 32:
            assert upper.top.size in (int(0.005 * events.size * 32), int(0.005 * events.size * 32) + 1)


def test_an_fmo_gate_sorts_the_upper_events_of_its_fmo_only(monkeypatch):
    """A gate's carry-overs (``relative_low``, ``relative_high``) sorted all its FMO parent's
    events; now only the largest 16 % (99.5th percentile), and the gate is the one computed with
    the bisection over all events sorted."""
    rng = np.random.default_rng(8)
    fmo = LOGICLE.apply(rng.normal(0.0, 60.0, 20000))
    stained = LOGICLE.apply(np.concatenate([rng.normal(150.0, 80.0, 18000), rng.lognormal(8.5, 0.4, 2000)]))
    sizes = []

    class Counting:
        def __getattr__(self, name):
            return sort if name == "sort" else getattr(np, name)

    def sort(a, *args, **kw):
        sizes.append(np.size(a))
        return np.sort(a, *args, **kw)

    monkeypatch.setattr(pl, "np", Counting())
    d = pl.place_fmo_anchored(fmo, stained, "M", transform=LOGICLE, rule="relative").diagnostics
    monkeypatch.setattr(pl, "np", np)
    assert sizes and max(sizes) <= 0.16 * fmo.size + 1, sizes
    monkeypatch.setattr(pl, "upper_offset_threshold",
                        lambda upper, offsets, percentile: _offset_threshold_of_all_events(upper.events, offsets, percentile))
    reference = pl.place_fmo_anchored(fmo, stained, "M", transform=LOGICLE, rule="relative").diagnostics
    assert (d["relative_low"], d["relative_high"], d["threshold"]) == \
        (reference["relative_low"], reference["relative_high"], reference["threshold"])
    assert np.isfinite(d["relative_low"]) and d["relative_low"] != d["relative_high"]
