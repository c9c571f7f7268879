"""FMO-anchored PD1/FoxP3 gates on simulated products with fixed bench phenomena (simulated
ground truth: the ideal-FMO reference, ``truth.stained_negative_reference``).

Two products (seeds 93001, 93002, not used elsewhere), drawn with the phenomena fixed so that
each test knows what it is about: mild, nearly symmetric nonspecific PD1/FoxP3 binding that the
additive carry-over must correct to within the issue-13 tolerance (1.5 points) without a review
flag; heavy, right-skewed PD1 binding whose tail the negative peak's lower side cannot see, where
a PD1 variable more than 3 points off must carry a review flag on its gate, and the skew measured
on the non-T lymphocytes (``skew_reference``) must bring it within 3.5 points (round 4: 2.1 points
off; round 5, the whole additive model read on the non-T lymphocytes: CD8+PD1+ 3.2 off, flagged).
"""
import math

import numpy as np
import pandas as pd
import pytest

from tilpheno.gates import placement as pl
from tilpheno.gates.checks import needs_review
from tilpheno.gates.strategy import default_strategy_paths, load_strategy
from tilpheno.phenotype import analyze_product
from tilpheno.simulate.cohort import manifest_rows, simulate_product, write_product
from tilpheno.simulate.phenomena import Phenomena
from fmo_support import treg_parent, treg_populations

PD1_GATES = {"pd1_pct_of_live_lymph": "PD1+", "cd8pd1_pct_of_cd8": "CD8+PD1+", "cd8pd1_pct_of_cd3": "CD8+PD1+"}
ALL = {**PD1_GATES, "cd4foxp3_pct_of_cd4": "CD4+FoxP3+"}


def _analyzed(folder, product_id, seed, phen):
    """The product simulated with ``seed`` and ``phen``, written to ``folder`` and analyzed with
    the study's strategies: (the simulated product, its result)."""
    prod = simulate_product(product_id, seed, 20000, phenomena=phen)
    write_product(prod, folder)
    manifest = pd.DataFrame(manifest_rows(prod))
    manifest["file"] = [str(folder / f) for f in manifest["file"]]
    return prod, analyze_product(prod.product_id, manifest, [load_strategy(p) for p in default_strategy_paths()])


def _with_pd1_binding(folder, seed, binding, log_sd):
    """Product V<seed> with the bench phenomena its seed draws, then the PD1 binding set to ``binding``
    units with log-SD ``log_sd`` (as ``validate_gating.py --set pd1_binding=... --set pd1_binding_sd=...``
    draws them), analyzed: (the simulated product, its result)."""
    from dataclasses import replace

    drawn = simulate_product(f"V{seed}", seed, 1, phenomena=True).phenomena
    assert drawn is not None
    heavy = replace(drawn, nsb={**drawn.nsb, "PD1": binding}, nsb_sd={**drawn.nsb_sd, "PD1": log_sd})
    return _analyzed(folder, f"V{seed}", seed, heavy)


def _run(tmp_path, seed, phen):
    prod, result = _analyzed(tmp_path, f"F{seed}", seed, phen)
    errors = {v: result.phenotype[v] - prod.truth[f"ref_{v}"] for v in ALL}
    flagged = {f.message.split(" (")[0] for f in result.qc if needs_review(f)}
    return errors, flagged, result


def test_mild_symmetric_binding_is_corrected_without_review(tmp_path):
    phen = Phenomena(nsb={"PD1": 60.0, "FoxP3": 40.0}, nsb_sd={"PD1": 0.2, "FoxP3": 0.2},
                     spread={"PD1": 40.0, "FoxP3": 30.0})
    errors, flagged, result = _run(tmp_path, 93001, phen)
    assert all(abs(e) < 1.5 for e in errors.values()), errors
    assert not flagged & set(ALL.values()), flagged
    # the report's FMO table states the tail-shape check wherever it ran (the PD1 gates carried over
    # with the binding read on non_T), and only there
    from tilpheno.report.html import fmt
    from tilpheno.report.product import fmo_table

    recorded = {str(r.population): r for t in result.tubes for r in t.thresholds.itertuples(index=False)}
    rules = {row[0]: row[-1] for row in fmo_table(result, 99.5).rows}
    checked = {p for p, r in recorded.items() if np.isfinite(r.relative_lognormal)}
    assert {"PD1+", "CD8+PD1+"} <= checked, recorded
    for population, rule in rules.items():
        r = recorded[population]
        assert (f"log-normal tail {fmt(r.relative_lognormal, 3)}" in rule) is (population in checked), (population, rule)


@pytest.mark.slow
def test_heavy_skewed_binding_is_corrected_within_3_points(tmp_path):
    phen = Phenomena(nsb={"PD1": 280.0}, nsb_sd={"PD1": 0.75}, spread={"PD1": 80.0})
    errors, flagged, result = _run(tmp_path, 93002, phen)
    for variable, gate in PD1_GATES.items():   # issue 13's miss level: more than 3 points off needs a flag
        assert abs(errors[variable]) <= 3 or gate in flagged, (variable, errors[variable], flagged)
    # the report names the flags on each flagged gate's own plots (its gate plot and FMO overlay), and
    # only there
    from types import SimpleNamespace

    from tilpheno.report.product import ReportContext, fmo_section, gating_sections
    from tilpheno.pipeline.jobs import ProcessOptions

    assert flagged & set(PD1_GATES.values()), flagged   # this product has something to show
    ctx = ReportContext(SimpleNamespace(qc=result.qc), result, {}, ProcessOptions(), (), {})
    figures = [f for s in [*gating_sections(ctx), fmo_section(ctx)] for f in s.figures]
    marked = {f.population for f in figures if f.review}
    assert marked == flagged & {f.population for f in figures}, (marked, flagged)
    for f in figures:
        if f.review:
            codes = {q.code for q in result.qc if needs_review(q) and q.message.startswith(f.population + " (")}
            assert f.review == ", ".join(sorted(codes)), (f.population, f.review, codes)
    # the lower-side carry-over alone over-calls this product by more than 3 points (PD1+ +4.6, CD8+PD1+
    # +5.9 before skew_reference); the additive model read on the non-T lymphocytes carries most of the
    # tail (round 4, the parent's own shift and lower side plus the reference's skew: within 2.1 points;
    # round 5, the reference's shift, spread and skew: PD1+ +2.7, CD8+PD1+ +3.2, flagged above)
    assert all(abs(errors[v]) < 3.5 for v in PD1_GATES), errors


def _reference_tubes(rng, added):
    """A marker-poor population (2 % positives at 4000 units): FMO autofluorescence N(0, 60) and the
    stained tube's negatives with ``added`` nonspecific signal, on the default logicle."""
    from tilpheno.transforms import Logicle

    tr = Logicle()
    n = 4000
    fmo = rng.normal(0.0, 60.0, n)
    neg = rng.normal(0.0, 60.0, n) + added(n)
    stained = np.concatenate([neg, rng.lognormal(np.log(4000.0), 0.3, n // 50)])
    return tr, tr.apply(fmo), tr.apply(stained)


def test_reference_skew_tells_a_skewed_tail_from_symmetric_spread():
    """ReferenceBinding.skew: log-normal (right-skewed) binding of the same median reads well above
    Gaussian added signal (spread only; the level-0.2 reading on the logicle density is biased
    upwards for it, about 100 units here for an SD of 80); no reading on too few events."""
    rng = np.random.default_rng(93003)
    tr, fmo, stained = _reference_tubes(rng, lambda n: 150.0 + rng.normal(0.0, 80.0, n))
    symmetric = pl.reference_binding(fmo, stained, tr).skew
    tr, fmo, stained = _reference_tubes(rng, lambda n: 150.0 * np.exp(0.8 * rng.standard_normal(n)))
    skewed = pl.reference_binding(fmo, stained, tr).skew
    assert skewed > 250.0 and skewed > 2.5 * symmetric, (symmetric, skewed)
    assert pl.reference_binding(fmo[:100], stained[:100], tr) is None


def test_skew_reference_carries_the_tail_to_a_pd1_rich_parent():
    """The carry-over with a skew reference puts the cut near the ideal (the stained negatives'
    99.5th percentile) under heavy right-skewed binding, where the lower-side carry-over cuts
    into the negatives' tail; with symmetric added signal and many dim positives the reference
    moves the cut by less than 0.6 points from the lower-side carry-over."""
    from tilpheno.gates import checks

    rng = np.random.default_rng(93004)

    def tubes(added, positives):
        tr, ref_fmo, ref_stained = _reference_tubes(rng, added)
        n = 6000
        fmo = rng.normal(0.0, 60.0, n)
        neg = rng.normal(0.0, 60.0, n) + added(n)
        pos = rng.lognormal(np.log(500.0), 0.45, int(n * positives))   # dim positives next to the negatives
        stained = np.concatenate([neg, pos])
        ideal = tr.apply(np.array([np.percentile(neg, 99.5)]))[0]
        truth = 100.0 * np.mean(tr.apply(stained) > ideal)
        kw = dict(percentile=99.5, source_file="", transform=tr, rule="relative")
        plain = checks.place_and_check("P", "PD1", tr.apply(fmo), tr.apply(stained), **kw)
        with_ref = checks.place_and_check("P", "PD1", tr.apply(fmo), tr.apply(stained), reference_fmo=ref_fmo,
                                          reference_stained=ref_stained, **kw)
        pct = lambda p: 100.0 * np.mean(tr.apply(stained) > p.diagnostics["threshold"]) - truth
        return pct(plain), pct(with_ref), with_ref.diagnostics

    plain, with_ref, d = tubes(lambda n: 250.0 * np.exp(0.8 * rng.standard_normal(n)), 0.15)
    assert plain > 3.0, plain                       # the lower side cannot see the tail: over-called
    assert abs(with_ref) < 1.5, (with_ref, d)
    assert d["winner"] == "fmo_relative" and d["threshold"] == pytest.approx(d["relative_reference"])
    plain, with_ref, d = tubes(lambda n: 100.0 + rng.normal(0.0, 50.0, n), 0.25)
    # the reference's shift and spread (not the parent's own, which its dim positives pull up) keep
    # the cut within a point of the lower-side carry-over and within 2.5 points of the ideal
    assert abs(with_ref - plain) < 1.0 and abs(with_ref) < 2.5, (plain, with_ref, d)


def test_reference_binding_reads_the_shift_and_spread_of_the_added_signal():
    """reference_binding: the shift (stained negative mode - FMO mode) and the lower-side added
    spread of Gaussian added signal N(150, 80) read on a marker-poor population in linear units,
    near the truth; None on too few events."""
    rng = np.random.default_rng(93005)
    tr, fmo, stained = _reference_tubes(rng, lambda n: 150.0 + rng.normal(0.0, 80.0, n))
    b = pl.reference_binding(fmo, stained, tr)
    # linear units (not transformed): the logicle density's mode and lower side read N(0,60) + N(150,80)
    # as a shift of about 190 and a spread of about 100 here
    assert b is not None and 120.0 < b.shift < 230.0 and 60.0 < b.spread < 130.0, b
    assert pl.reference_binding(fmo[:100], stained[:100], tr) is None


def test_reference_binding_carries_the_model_past_dim_positives_that_pull_the_mode_up():
    """A PD1-rich parent (40 % dim positives next to the negatives) under right-skewed binding: its
    own negative mode and lower side are pulled up by the positives (round 4's rule, the parent's
    own shift and lower-side spread plus the reference's skew, under-called this by more than 3
    points); the additive model read entirely on the marker-poor reference (shift, lower-side
    spread, skew) puts the cut within 2 points of the ideal. (Heavier binding,
    e.g. 120 x exp(0.6 Z), is over-called by both rules here: the normal spread does not carry a
    log-normal tail in full.)"""
    rng = np.random.default_rng(93006)
    added = lambda n: 80.0 * np.exp(0.5 * rng.standard_normal(n))   # noqa: E731
    tr, ref_fmo, ref_stained = _reference_tubes(rng, added)
    n = 6000
    fmo = rng.normal(0.0, 60.0, n)
    neg = rng.normal(0.0, 60.0, n) + added(n)
    pos = rng.lognormal(np.log(250.0), 0.45, int(n * 0.4)) + added(int(n * 0.4))
    stained = tr.apply(np.concatenate([neg, pos]))
    ideal = tr.apply(np.array([np.percentile(neg, 99.5)]))[0]
    truth = 100.0 * np.mean(stained > ideal)
    binding = pl.reference_binding(ref_fmo, ref_stained, tr)
    kw = dict(percentile=99.5, transform=tr, rule="relative")
    new = pl.place_fmo_anchored(tr.apply(fmo), stained, "PD1", reference=binding, **kw)
    err = lambda p: 100.0 * np.mean(stained > p.diagnostics["threshold"]) - truth   # noqa: E731
    assert new.diagnostics["threshold"] == pytest.approx(new.diagnostics["relative_reference"])
    assert new.diagnostics["reference_shift"] == pytest.approx(binding.shift)
    assert abs(err(new)) < 2.0, (err(new), new.diagnostics)


def test_the_shift_tolerance_is_tested_on_the_reference_population_too():
    """No binding (reference and parent unshifted): the FMO percentile is kept, as without a
    reference (no noise from the carry-over on a clean tube). A reference whose negatives moved
    beyond the tolerance while the parent's did not: the reference carry-over is used."""
    rng = np.random.default_rng(93008)
    tr, ref_fmo, ref_stained = _reference_tubes(rng, lambda n: np.zeros(n))
    n = 8000
    fmo = tr.apply(rng.normal(0.0, 60.0, n))
    stained = tr.apply(np.concatenate([rng.normal(0.0, 60.0, n), rng.lognormal(np.log(600.0), 0.5, n // 4)]))
    binding = pl.reference_binding(ref_fmo, ref_stained, tr)
    assert binding is not None and not binding.moved(0.02, 1.25), binding
    kw = dict(percentile=99.5, transform=tr, rule="relative")
    clean = pl.place_fmo_anchored(fmo, stained, "PD1", reference=binding, **kw)
    assert clean.diagnostics["winner"] == "fmo_percentile", clean.diagnostics
    assert clean.diagnostics["threshold"] == pytest.approx(np.percentile(fmo, 99.5))
    moved = pl.ReferenceBinding(shift=60.0, spread=30.0, skew=40.0, mode_shift=0.05, fmo_width=binding.fmo_width,
                                width_ratio=1.0)
    assert moved.moved(0.02, 1.25)
    carried = pl.place_fmo_anchored(fmo, stained, "PD1", reference=moved, **kw)
    d = carried.diagnostics
    assert d["winner"] == "fmo_relative" and d["threshold"] == pytest.approx(d["relative_reference"]), d
    assert d["threshold"] > clean.diagnostics["threshold"]


def _kept_case(seed, added_median, positive_median, share):
    from tilpheno.gates import checks
    from tilpheno.transforms import Logicle

    tr, rng, n = Logicle(), np.random.default_rng(seed), 10000
    added = lambda k: added_median * np.exp(0.5 * rng.standard_normal(k)) if added_median else 0.0   # noqa: E731
    fmo = rng.normal(0.0, 60.0, n)
    neg = rng.normal(0.0, 60.0, n) + added(n)
    k = int(n * share)
    stained = tr.apply(np.concatenate([neg, rng.lognormal(np.log(positive_median), 0.5, k) + added(k)]))
    return checks.place_and_check("CD4+FoxP3+", "FoxP3", tr.apply(fmo), stained, percentile=99.5, source_file="",
                                  transform=tr, rule="relative", width_side="mid")


def test_kept_fmo_percentile_is_flagged_when_both_carry_overs_move_it_beyond_3_points():
    """uncertain_threshold on a kept FMO percentile: binding below the shift/width tolerance (the
    FMO percentile is used) while 30 % dim positives sit at the cut, so both carry-overs (lower-
    and upper-side spread) lie more than 3 points of the parent from it: flagged, with the size;
    no binding and well separated positives: no flag."""
    p = _kept_case(93011, 8.0, 200.0, 0.3)
    d = p.diagnostics
    assert d["winner"] == "fmo_percentile" and d["kept_points"] > 3.0, d
    flags = [f for f in p.flags if f.code == "uncertain_threshold"]
    assert flags and flags[0].severity == "warning" and flags[0].message.startswith("CD4+FoxP3+ (FoxP3): the FMO percentile")
    q = _kept_case(93010, 0.0, 600.0, 0.1)
    assert q.diagnostics["winner"] == "fmo_percentile" and abs(q.diagnostics["kept_points"]) < 1.0, q.diagnostics
    assert not [f for f in q.flags if f.code == "uncertain_threshold"]


def _sized_reference(rng, n, added):
    """``_reference_tubes`` with ``n`` negative events (2 % positives at 4000 units)."""
    from tilpheno.transforms import Logicle

    tr = Logicle()
    fmo = rng.normal(0.0, 60.0, n)
    stained = np.concatenate([rng.normal(0.0, 60.0, n) + added(n), rng.lognormal(np.log(4000.0), 0.3, n // 50)])
    return tr, tr.apply(fmo), tr.apply(stained)


def test_reference_cut_error_matches_the_spread_of_independent_readings():
    """reference_cut_error (16 bootstrap resamples, 1.96 x their robust SD): the 95 % half-width it
    gives on one reference is close to 1.96 x the SD of the reference cut over 30 independent
    references of the same size (the truth of the reading's sampling noise), and about twice as
    wide on a quarter of the events. On a reference of 500 events it stays within 0.5-2x that
    truth (interleaved folds of 200 events and Student t on 1 degree of freedom, 12.7, gave 4-9x
    it, stop 46: the PD1 gates' false alarms on small non-T references). Not measured on fewer than
    MIN_REFERENCE_EVENTS (200) reference events. The parent FMO (20,000 events) is resampled by the
    bootstrap but fixed across the independent references: its own noise, 1.96 x the SD of the cut
    over 30 resamples of it with one reference fixed, is 0.0003 transformed units against a half-width
    of 0.0043 on 3,200 reference events (0.2 % of it in quadrature; 200,000 events took 6x the CPU)."""
    rng = np.random.default_rng(93020)
    added = lambda n: 120.0 * np.exp(0.6 * rng.standard_normal(n))   # noqa: E731
    from tilpheno.transforms import Logicle

    tr = Logicle()
    parent_fmo = tr.apply(rng.normal(0.0, 60.0, 20000))   # large: the parent FMO's own noise is negligible

    def truth_and_interval(events: int, references: int) -> tuple[float, float]:
        """1.96 x the SD of the cut over independent references of ``events``, the median half-width."""
        cuts, errors = [], []
        for _ in range(references):
            _, ref_fmo, ref_stained = _sized_reference(rng, events, added)
            cuts.append(pl.reference_cut(parent_fmo, pl.reference_binding(ref_fmo, ref_stained, tr), tr, 99.5))
            errors.append(pl.reference_cut_error(parent_fmo, ref_fmo, ref_stained, tr, 99.5))
        return 1.96 * float(np.std(cuts, ddof=1)), float(np.median(errors))

    truth, error = truth_and_interval(3200, 30)
    assert 0.6 * truth < error < 1.6 * truth, (truth, error)
    small = [pl.reference_cut_error(parent_fmo, *_sized_reference(rng, 800, added)[1:], tr, 99.5) for _ in range(10)]
    assert np.median(small) > 1.5 * error, (np.median(small), error)
    truth, error = truth_and_interval(500, 20)
    assert 0.5 * truth < error < 2.0 * truth, (truth, error)
    assert np.isnan(pl.reference_cut_error(parent_fmo, *_sized_reference(rng, 150, added)[1:], tr, 99.5))


def _referenced_parent(seed, reference_events, positive_median=200.0, share=0.3, binding=(80.0, 0.5)):
    """A PD1-rich parent (``share`` 30 % dim positives, median ``positive_median`` 200 units, next to
    the negatives) under right-skewed binding (log-normal, ``binding`` = (median, log-SD), default
    80 units, 0.5) with its reference (the marker-poor population) of ``reference_events`` events;
    the placed gate, the error of its % positive against the ideal cut (the stained negatives' 99.5th
    percentile) and the parent's stained events (transformed)."""
    from tilpheno.gates import checks
    from tilpheno.transforms import Logicle

    rng = np.random.default_rng(seed)
    added = lambda n: binding[0] * np.exp(binding[1] * rng.standard_normal(n))   # noqa: E731
    _, ref_fmo, ref_stained = _sized_reference(rng, reference_events, added)
    tr, n = Logicle(), 8000
    fmo = rng.normal(0.0, 60.0, n)
    neg = rng.normal(0.0, 60.0, n) + added(n)
    k = int(n * share)
    stained = tr.apply(np.concatenate([neg, rng.lognormal(np.log(positive_median), 0.45, k) + added(k)]))
    ideal = tr.apply(np.array([np.percentile(neg, 99.5)]))[0]
    placed = checks.place_and_check("CD8+PD1+", "PD1", tr.apply(fmo), stained, percentile=99.5, source_file="",
                                    transform=tr, rule="relative", reference_fmo=ref_fmo, reference_stained=ref_stained)
    err = 100.0 * (np.mean(stained > placed.diagnostics["threshold"]) - np.mean(stained > ideal))
    return placed, err, stained


def test_referenced_cut_is_judged_by_its_own_sampling_error_not_by_the_parents_upper_side():
    """uncertain_threshold on a cut carried over with the reference's binding: a large reference
    (4000 events) reads the binding precisely and the cut lies near the ideal, while the parent's
    upper-side carry-over, widened by its dim positives, lies more than 3 points above it (round 5
    flagged this): no sampling-interval flag. The same parent with a small reference (250 events: the
    cut read on independent references of that size spreads +/- 3.4 points of the parent, 95 %): the
    reading's 95 % interval spans more than 3 points of the parent: flagged, with the size of the
    interval in the message. (The tail-shape check, a separate sensitivity check,
    may fire on either: with 30 % dim positives at the cut, a log-normal signal of the read median
    and SD lies several points away although the normal carry-over is right here; it fires exactly
    when ``tail_points`` > 3.)"""
    from tilpheno.gates.checks import _points_between

    big, err, stained = _referenced_parent(93021, 4000)
    d = big.diagnostics
    assert d["winner"] == "fmo_relative" and d["threshold"] == pytest.approx(d["relative_reference"]), d
    assert abs(err) < 1.5, (err, d)
    from_high = _points_between(stained, d["threshold"], d["relative_high"])   # round 5's candidate
    assert from_high > 3.0 and d["candidate_points"] < 3.0, (from_high, d)
    assert not [f for f in big.flags if "95 % interval" in f.message], big.flags
    tail = [f for f in big.flags if f.code == "uncertain_threshold" and "log-normal" in f.message]
    assert bool(tail) is bool(d["tail_points"] > 3.0), (d, big.flags)
    small, _, _ = _referenced_parent(93021, 250)
    s = small.diagnostics
    assert s["winner"] == "fmo_relative" and s["candidate_points"] > 3.0, s
    flags = [f for f in small.flags if f.code == "uncertain_threshold"]
    assert flags and flags[0].severity == "warning" and "95 % interval of the reference reading" in flags[0].message


def test_quantile_carry_reads_the_parents_negative_tail_on_a_matched_reference():
    """reference_carry quantile (round 7, FoxP3): the parent's FMO 99.5th percentile moved by the
    reference's own stained - FMO 99.5th percentile (linear units). A CD4+ parent (10 % dim FoxP3+
    next to the negatives) and a matched FoxP3-free reference with the same background
    (autofluorescence plus spillover spread) and the same heavy right-skewed binding: the quantile
    carry puts the cut within 1 point of the ideal (the parent's stained negatives' 99.5th
    percentile); the strategy parameter reaches the gate (the cut is reference_quantile_cut's) and
    the fold error is measured on the quantile cut. Positives in the reference raise its tail: with
    1 % of them at the Tregs' intensity the cut is under-called by more than 1 point (the rule's
    stated limit: the reference must hold fewer positives than 100 - percentile %)."""
    from tilpheno.gates import checks
    from tilpheno.transforms import Logicle

    rng = np.random.default_rng(93030)
    tr = Logicle()
    population = treg_populations(rng)

    ref_fmo, ref_stained, _ = population(10000, 0.0)
    fmo, stained, neg = population(8000, 0.10)
    ideal = tr.apply(np.array([np.percentile(neg, 99.5)]))[0]
    s = tr.apply(stained)
    err = lambda p: 100.0 * (np.mean(s > p.diagnostics["threshold"]) - np.mean(s > ideal))   # noqa: E731
    kw = dict(percentile=99.5, source_file="", transform=tr, rule="relative", width_side="mid",
              reference_fmo=tr.apply(ref_fmo), reference_stained=tr.apply(ref_stained))
    quantile = checks.place_and_check("CD4+FoxP3+", "FoxP3", tr.apply(fmo), s, reference_carry="quantile", **kw)
    additive = checks.place_and_check("CD4+FoxP3+", "FoxP3", tr.apply(fmo), s, **kw)
    d = quantile.diagnostics
    expected = pl.reference_quantile_cut(tr.apply(fmo), tr.apply(ref_fmo), tr.apply(ref_stained), tr, 99.5)
    assert d["winner"] == "fmo_relative" and d["threshold"] == pytest.approx(expected), d
    assert abs(err(quantile)) < 1.0, (err(quantile), d)
    assert 0.0 < d["reference_error"] < 0.02, d
    ref_fmo2, ref_stained2, _ = population(10000, 0.01)
    contaminated = checks.place_and_check("CD4+FoxP3+", "FoxP3", tr.apply(fmo), s, reference_carry="quantile",
                                          **{**kw, "reference_fmo": tr.apply(ref_fmo2), "reference_stained": tr.apply(ref_stained2)})
    assert err(contaminated) < -1.0, err(contaminated)
    # too few reference events: no quantile cut (NaN), the gate falls back to the parent's own carry-over
    assert np.isnan(pl.reference_quantile_cut(tr.apply(fmo), tr.apply(ref_fmo[:100]), tr.apply(ref_stained[:100]), tr, 99.5))


def test_quantile_carry_flags_a_reference_with_positives_in_it():
    """The self-check on reference_carry quantile: marker+ cells in the reference raise its stained
    99.5th percentile and the parent's cut with it (under-call). Known truth: a CD4+ parent with
    10 % dim FoxP3+ cells, a matched reference with the same background and binding, clean or with
    2 % FoxP3+ cells at the Tregs' intensity. Clean: within 1 point of the ideal and no
    ``uncertain_threshold``; contaminated: more than 3 points under-called and flagged
    ``uncertain_threshold`` (warning, naming the gate, the reference, both cuts), because the cut
    lies more than uncertain_points (3) points of the parent above the parent's own lower-side
    carry-over of the FMO percentile."""
    from tilpheno.gates import checks

    tr, population, fmo, s, points = treg_parent(93031)
    err = lambda p: points(p.diagnostics["threshold"])   # noqa: E731
    kw = dict(percentile=99.5, source_file="", transform=tr, rule="relative", width_side="mid", reference_carry="quantile")
    results = {}
    for share in (0.0, 0.02):
        ref_fmo, ref_stained, _ = population(10000, share)
        results[share] = checks.place_and_check("CD4+FoxP3+", "FoxP3", tr.apply(fmo), s, reference_fmo=tr.apply(ref_fmo),
                                                reference_stained=tr.apply(ref_stained), **kw)
    clean, dirty = results[0.0], results[0.02]
    assert abs(err(clean)) < 1.0 and clean.diagnostics["reference_above_points"] <= 3.0, clean.diagnostics
    assert not [f for f in clean.flags if f.code == "uncertain_threshold"], clean.flags
    assert err(dirty) < -3.0, err(dirty)
    flags = [f for f in dirty.flags if f.code == "uncertain_threshold"]
    assert flags and flags[0].severity == "warning", dirty.flags
    assert "CD4+FoxP3+" in flags[0].message and "reference" in flags[0].message and "FoxP3+ cells" in flags[0].message
    assert dirty.diagnostics["reference_above_points"] > 3.0, dirty.diagnostics
    # stop 50: the direct test for the reference's positives runs too once the first check fired (before, it did
    # not: the verdict on the reading held one check); both found it wrong, the one flag and the verdict name both
    d = dirty.diagnostics
    assert d["reference_positive_points"] > 3.0 and d["reading_verdict"] == ("reference_above_points",
                                                                             "reference_positive_points"), d
    assert (f"lies {d['reference_above_points']:.1f} points of the parent above" in flags[0].message
            and f"{d['reference_positive_pct']:.2f}% of the reference population's stained events are FoxP3+"
            in flags[0].message and len(flags) == 1), flags


def test_quantile_carry_on_an_unstained_control_judges_the_reference_by_its_positives_alone():
    """Issue 13, stop 60 (foxmsg_60): without its FMO a ``reference_carry: quantile`` gate keeps its reference, the
    unstained control standing in for the FMO of both the parent and the reference (``skew_stained`` given:
    ``phenotype._TubeKindRun._on_unstained``), so the cut is the reference's own stained 99.5th percentile. The
    parent's own carry-over of the control's percentile lacks the binding that cut carries: with it as the comparator
    (``reference_above_points``) a right cut was called an under-call. Known truth (``treg_populations``, generator seed
    193690): a CD4+ parent with 10 % FoxP3+ cells, a matched reference clean or with 2 % FoxP3+ cells at the Tregs'
    intensity, both with the stained tube's spillover spread and binding (median 150 linear units, log-SD 0.7), and an
    unstained control with neither (autofluorescence SD 60 only). Clean: within 1 point of the ideal (the parent's
    stained negatives' 99.5th percentile) and no ``uncertain_threshold`` (before: 3.9 points above the parent's own
    carry-over, flagged 'under-call' at +0.2 points); contaminated: more than 3 points under-called and flagged by the
    direct test for the reference's positives (``reference_positive_points``) alone, its message and
    ``reading_verdict`` naming it."""
    from tilpheno.gates import checks
    from tilpheno.transforms import Logicle

    tr = Logicle()
    rng = np.random.default_rng(193690)
    population = treg_populations(rng)
    _, stained, negatives = population(8000, 0.10)
    s = tr.apply(stained)
    ideal = tr.apply(np.array([np.percentile(negatives, 99.5)]))[0]
    control = tr.apply(rng.normal(0.0, 60.0, 20000))   # no spillover spread, no binding
    err = lambda p: 100.0 * (np.mean(s > p.diagnostics["threshold"]) - np.mean(s > ideal))   # noqa: E731
    results = {}
    for share in (0.0, 0.02):
        reference = tr.apply(population(10000, share)[1])
        results[share] = checks.place_and_check(
            "CD4+FoxP3+", "FoxP3", control, s, percentile=99.5, source_file="", transform=tr, rule="relative",
            width_side="mid", reference_carry="quantile", reference_fmo=control, reference_stained=reference,
            skew_stained=reference, control_name="unstained control")
    clean, dirty = results[0.0], results[0.02]
    assert clean.diagnostics["relative_carry"] == "reference" and abs(err(clean)) < 1.0, (err(clean), clean.diagnostics)
    assert "reference_above_points" not in clean.diagnostics, clean.diagnostics
    assert not [f for f in clean.flags if f.code == "uncertain_threshold"], clean.flags
    assert err(dirty) < -3.0, err(dirty)
    d = dirty.diagnostics
    assert d["reference_positive_points"] > 3.0 and d["reading_verdict"] == ("reference_positive_points",), d
    [flag] = [f for f in dirty.flags if f.code == "uncertain_threshold"]
    assert flag.severity == "warning" and flag.message.startswith("CD4+FoxP3+ (FoxP3): "), flag
    assert (f"{d['reference_positive_pct']:.2f}% of the reference population's stained events are FoxP3+" in flag.message
            and "above the parent's own carry-over" not in flag.message), flag.message


def test_quantile_carry_stands_when_the_negatives_moved_less_than_the_tolerance():
    """A FoxP3 tube whose stain adds little (binding 25 x exp(0.65 Z) plus spreading SD 50, linear
    units) to negatives sitting at 100 units with SD 108: the negative mode moves less than a quarter
    of the FMO's width and the lower side widens less than 1.25x (the tolerances), yet the 99.5th
    percentile moves by about 60 units, 2 points of the parent (7 % FoxP3+ next to the negatives).
    The quantile carry measures that move on the matched reference, so it is the cut whatever the
    tolerances say: within 1 point of the ideal (the 99.5th percentile of 400,000 stained negatives
    drawn from the same model). Before, the FMO percentile was kept: 2.0 points over."""
    from tilpheno.gates import checks
    from tilpheno.transforms import Logicle

    rng = np.random.default_rng(93092)
    tr = Logicle()
    added = lambda n: 25.0 * np.exp(0.65 * rng.standard_normal(n)) + rng.normal(0.0, 50.0, n)   # noqa: E731
    background = lambda n: 100.0 + rng.normal(0.0, 60.0, n) + rng.normal(0.0, 90.0, n)   # noqa: E731

    def population(n, share):
        k = int(n * share)
        stained = np.concatenate([background(n - k) + added(n - k),
                                  rng.lognormal(np.log(800.0), 0.45, k) + background(k) + added(k)])
        return background(n), stained

    fmo, stained = population(3000, 0.07)
    ref_fmo, ref_stained = population(11000, 0.0)
    negatives = population(400000, 0.0)[1]
    ideal = tr.apply(np.array([np.percentile(negatives, 99.5)]))[0]
    s = tr.apply(stained)
    f, rf, rs = tr.apply(fmo), tr.apply(ref_fmo), tr.apply(ref_stained)
    placed = checks.place_and_check("CD4+FoxP3+", "FoxP3", f, s, percentile=99.5, source_file="", transform=tr,
                                    rule="relative", width_side="mid", reference_carry="quantile",
                                    reference_fmo=rf, reference_stained=rs)
    d = placed.diagnostics
    assert abs(d["shift"]) < 0.25 * d["fmo_width"] and d["width_ratio"] < 1.25, d   # within the tolerances
    assert d["winner"] == "fmo_relative" and d["threshold"] == pytest.approx(pl.reference_quantile_cut(f, rf, rs, tr, 99.5)), d
    points = 100.0 * (np.mean(s > d["threshold"]) - np.mean(s > ideal))
    assert abs(points) < 1.0, (points, d)
    assert not [fl for fl in placed.flags if needs_review(fl)], placed.flags


def test_reference_positives_estimates_the_positive_share_and_the_cut_without_them():
    """The direct test for marker+ cells in a quantile-carry reference (``checks.reference_positives``),
    on known truth: a CD4+ parent with 10 % FoxP3+ cells and a matched reference (same background and
    heavy binding) holding 0, 2 or 4 % FoxP3+ cells at the parent's positives' intensity. Clean: under
    0.5 % estimated (the binding's heavy tail reaches the positives' level a little more often than
    the FMO) and the cut re-read without them within 3 points of the parent (no flag). Contaminated
    (more than 3 points under-called): the share within half of the truth, and the cut without them
    more than 3 points away (flagged) and closer to the ideal. Below 20 parent events above the cut:
    None."""
    from tilpheno.gates import checks

    tr, population, fmo, s, points = treg_parent(93040)
    for share in (0.0, 0.02, 0.04):
        ref_fmo, ref_stained, _ = population(10000, share)
        f, rf, rs = tr.apply(fmo), tr.apply(ref_fmo), tr.apply(ref_stained)
        cut = pl.reference_quantile_cut(f, rf, rs, tr, 99.5)
        estimate, cleaned = checks.reference_positives(f, rf, rs, s, cut, tr, 99.5)
        if share == 0.0:
            # the binding's own heavy tail reaches the positives' level a little more than the FMO:
            # a small estimate, and the cut moves less than the flag's 3 points
            assert estimate < 0.5 and abs(points(cleaned) - points(cut)) < 3.0, (estimate, points(cut), points(cleaned))
        else:
            assert points(cut) < -3.0, points(cut)
            assert 0.5 * 100 * share <= estimate <= 1.5 * 100 * share, (share, estimate)
            # the cut without them moves by more than the flag's 3 points, towards the ideal
            assert abs(points(cleaned) - points(cut)) > 3.0 and abs(points(cleaned)) < abs(points(cut)), (share, points(cut), points(cleaned))
    assert checks.reference_positives(f, rf, rs, s[:10], cut, tr, 99.5) is None


def test_quantile_carry_checks_do_not_flag_a_binding_tail_that_a_lognormal_fit_explains():
    """Stop 43 (issue 13, false alarms): the two reference-positives checks of a quantile-carry cut read
    a heavy log-normal binding tail as FoxP3+ cells in the reference. Known truth, 10 seeds: the
    ``treg_populations`` background with binding 250 x exp(0.8 Z) on every stained cell, a CD4+ parent
    (5,000 cells, 10 % Tregs at median 1,500) and a matched reference (9,000 cells), clean or with 5 %
    FoxP3+ cells; ideal cut = the 99.5th percentile of 200,000 stained negatives. Clean: every cut
    within 1.5 points of the ideal and every one judged by the checks (the checks alone flagged all 10);
    now flagged exactly when the fitted tail (``reference_tail_cut``) does not reach the cut, and not
    all. Contaminated: every cut more than 3 points under-called, every one still flagged. Fewer than
    ``MIN_TAIL_EVENTS`` reference events: no tail fitted (NaN), so the flag stands."""
    from tilpheno.gates import checks
    from tilpheno.transforms import Logicle

    tr = Logicle()
    unflagged = 0
    for seed in range(93110, 93120):
        population = treg_populations(np.random.default_rng(seed), binding=(250.0, 0.8), treg_median=1500.0)
        fmo, stained, _ = population(5000, 0.10)
        s = tr.apply(stained)
        ideal = tr.apply(np.array([np.percentile(population(200000, 0.0)[1], 99.5)]))[0]
        for share in (0.0, 0.05):
            ref_fmo, ref_stained, _ = population(9000, share)
            placed = checks.place_and_check("CD4+FoxP3+", "FoxP3", tr.apply(fmo), s, percentile=99.5, source_file="",
                                            transform=tr, rule="relative", width_side="mid", reference_carry="quantile",
                                            reference_fmo=tr.apply(ref_fmo), reference_stained=tr.apply(ref_stained))
            d = placed.diagnostics
            err = 100.0 * (np.mean(s > d["threshold"]) - np.mean(s > ideal))
            flagged = [f for f in placed.flags if f.code == "uncertain_threshold"]
            if share == 0.0:
                assert abs(err) < 1.5 and "reference_tail_cut" in d, (seed, err, d)
                assert bool(flagged) is not bool(d["reference_tail_cut"] >= d["threshold"]), (seed, d, flagged)
                unflagged += not flagged
            else:
                assert err < -3.0 and flagged, (seed, err, d)
                assert "CD4+FoxP3+" in flagged[0].message and "binding tail" in flagged[0].message, flagged
    assert unflagged >= 2, unflagged
    # on a small reference the fit is too noisy to excuse a flag: no tail, the flag stands
    f, rf, rs = tr.apply(fmo), tr.apply(ref_fmo), tr.apply(ref_stained)
    assert np.isfinite(pl.reference_tail_cut(f, rf, rs, tr, 99.5))
    assert np.isnan(pl.reference_tail_cut(f, rf[:pl.MIN_TAIL_EVENTS - 1], rs, tr, 99.5))


@pytest.mark.parametrize("median, sd", [(150.0, 60.0), (150.0, 300.0), (40.0, 5.0)])
def test_lognormal_offsets_have_the_stated_median_and_sd(median, sd):
    """lognormal_offsets: the log-SD s solves SD = median x sqrt(exp(s^2) (exp(s^2) - 1)); checked
    against 2,000,000 independent log-normal draws with that median and s (median and SD within
    1 %, sampling error well below that), and the offsets are median x exp(s z_k) at the 32 normal
    quantiles of the additive carry-over (SIGNAL_QUANTILES). No signal to shape without a positive
    median."""
    offsets = pl.lognormal_offsets(median, sd)
    s = float(np.log(offsets[-1] / median) / pl.SIGNAL_QUANTILES[-1])
    np.testing.assert_allclose(offsets, median * np.exp(s * pl.SIGNAL_QUANTILES), rtol=1e-12)
    draws = median * np.exp(s * np.random.default_rng(93067).standard_normal(2_000_000))
    assert np.median(draws) == pytest.approx(median, rel=0.01)
    assert np.std(draws) == pytest.approx(sd, rel=0.01)
    assert pl.lognormal_offsets(0.0, sd) is None and pl.lognormal_offsets(-5.0, sd) is None


def test_reference_lognormal_cut_is_the_percentile_under_a_lognormal_signal():
    """reference_lognormal_cut with a binding of known median and SD: the 99.5th percentile of
    2,000,000 independent draws of (a parent FMO event + one of the 32 log-normal offsets, drawn with
    equal weight; truth) lies within 0.003 transformed units (about 0.5 % in linear units here) of
    it, and the normal carry-over of the same reading (reference_cut, the same 32 quantiles) lies
    more than 0.01 below it: the right-skewed shape's tail is heavier. NaN without a positive shift."""
    from tilpheno.transforms import Logicle

    rng = np.random.default_rng(93068)
    tr = Logicle()
    log_sd, median = 0.7, 150.0
    sd = median * float(np.sqrt(np.exp(log_sd**2) * (np.exp(log_sd**2) - 1.0)))
    parent_fmo = rng.normal(0.0, 60.0, 20000)
    n = 2_000_000
    signal = median * np.exp(log_sd * pl.SIGNAL_QUANTILES)
    truth_lin = np.percentile(rng.choice(parent_fmo, n) + rng.choice(signal, n), 99.5)
    truth = tr.apply(np.array([truth_lin]))[0]
    binding = pl.ReferenceBinding(shift=median, spread=sd, skew=0.0)
    lognormal = pl.reference_lognormal_cut(tr.apply(parent_fmo), binding, tr, 99.5)
    normal = pl.reference_cut(tr.apply(parent_fmo), binding, tr, 99.5)
    assert abs(lognormal - truth) < 0.003, (lognormal, truth)
    assert normal < truth - 0.01, (normal, truth)
    assert np.isnan(pl.reference_lognormal_cut(tr.apply(parent_fmo), pl.ReferenceBinding(0.0, 50.0, 0.0), tr, 99.5))


def test_a_binding_tail_whose_shape_moves_the_percent_is_flagged():
    """The tail-shape self-check of a referenced PD1 gate (additive carry): ``tail_points`` = the
    percentage points of the parent between the cut and reference_lognormal_cut (recomputed here
    from the recorded cuts), and ``uncertain_threshold`` (warning, naming the log-normal
    alternative) exactly when it exceeds uncertain_points (3). A sensitivity check, not an error
    detector: with 30 % dim positives (median 200 units) at the cut, binding of median 80 and log-SD
    0.5 leaves the two shapes more than 3 points apart: flagged, although the normal carry-over is
    within 1.5 points of the ideal cut here (the reads cannot tell the shapes apart, so the gate
    goes to review). Mild binding (median 60, log-SD 0.3) with positives well above it (median 400):
    within 3 points, no tail flag."""
    from tilpheno.gates.checks import _points_between

    for (median, log_sd, positive_median), expect in (((80.0, 0.5, 200.0), True), ((60.0, 0.3, 400.0), False)):
        gate, err, stained = _referenced_parent(93069, 4000, positive_median, binding=(median, log_sd))
        d = gate.diagnostics
        assert d["winner"] == "fmo_relative" and d["threshold"] == pytest.approx(d["relative_reference"]), d
        assert d["tail_points"] == pytest.approx(_points_between(stained, d["threshold"], d["relative_lognormal"]))
        tail = [f for f in gate.flags if f.code == "uncertain_threshold" and "log-normal" in f.message]
        assert bool(d["tail_points"] > 3.0) is expect and bool(tail) is expect, (median, log_sd, d["tail_points"])
        assert abs(err) < 1.5, err
        if expect:
            assert tail[0].severity == "warning" and tail[0].message.startswith("CD8+PD1+ (PD1)"), tail


def test_a_moderate_carry_over_with_a_wide_bracket_is_flagged(tmp_path):
    """Held-out product V116017 (bench phenomena drawn by its seed: CD56 binding 215 units, the
    FMO's live lymphocytes bimodal with the T cells' mode highest): no stained CD56 valley, the
    carry-over moved the cut about 4 points of the parent from the FMO percentile and the upper-side
    carry-over lies about 4 points further. NKT came out more than 3 points above label truth with no
    flag while ``shift_points`` was 6; any NKT error beyond 3 points must carry a flag on CD56+."""
    prod = simulate_product("V116017", 116017, 20000, phenomena=True)
    write_product(prod, tmp_path)
    manifest = pd.DataFrame(manifest_rows(prod))
    manifest["file"] = [str(tmp_path / f) for f in manifest["file"]]
    result = analyze_product(prod.product_id, manifest, [load_strategy(p) for p in default_strategy_paths()])
    error = result.phenotype["nkt_pct_of_live_lymph"] - prod.truth["nkt_pct_of_live_lymph"]
    flags = [f for f in result.qc if needs_review(f) and f.message.startswith("CD56+ (CD56)")]
    assert abs(error) <= 3.0 or flags, (error, [f.message for f in result.qc])
    d = {str(r.population): r for t in result.tubes for r in t.thresholds.itertuples(index=False)}["CD56+"]
    # the fit's own flag (the residual-spillover check may flag the gate too: CD8's tandem loses 6 % here)
    if any("additive binding fitted" in f.message for f in flags):
        assert d.winner != "stained_valley" and d.candidate_points > 3.0 and d.correction_points > 3.0, d


def test_a_degraded_tandem_seen_on_the_cd56_fmo_is_flagged_on_cd56(tmp_path):
    """Development product V138221 (bench phenomena drawn by its seed: CD8's APC-H7 tandem loses
    12 % to APC, CD56 binding 180 units, NKT 13.9 % of live lymphocytes): the file's matrix leaves
    the tandem's spillover in CD56's detector, the CD8+ T cells lift the CD56 negatives of both
    tubes and the cut above many CD56-dim NKT cells: NKT 3.2 points under label truth, CD56+ 3.5,
    with no flag on their gates. The CD56 FMO shows it (its CD56-negative events lean up with CD8):
    with that residual taken out of both tubes the gate moves the % by about as much as label truth
    says, and it is flagged. The same product without the tandem loss: no such flag, NKT within 2."""
    from dataclasses import replace
    import re

    drawn = simulate_product("V138221", 138221, 20000, phenomena=True).phenomena
    assert drawn is not None and drawn.tandem_loss > 0.1
    for phen, degraded in ((drawn, True), (replace(drawn, tandem_loss=0.0), False)):
        folder = tmp_path / str(degraded)
        folder.mkdir()
        prod, result = _analyzed(folder, "V138221", 138221, phen)
        nkt, nk = (result.phenotype[v] - prod.truth[v] for v in ("nkt_pct_of_live_lymph", "nk_pct_of_live_lymph"))
        flags = [f for f in result.qc if needs_review(f) and f.gate == "CD56+" and "spillover" in f.message]
        assert bool(flags) is degraded, (nkt, [f.message for f in result.qc if f.gate == "CD56+"])
        if degraded:
            assert nkt < -2.0, nkt
            points = float(re.search(r"move the % by ([+-][0-9.]+) points", flags[0].message).group(1))
            # the CD56+ gate's % (NK + NKT of live lymphocytes) is off by what the check says, opposite in sign
            assert points > 3.0 and abs(points + nkt + nk) < 0.5, (points, nkt, nk)
            assert flags[0].message.startswith("CD56+ (CD56)") and "CD8 +0.1" in flags[0].message, flags[0].message
        else:
            assert abs(nkt) < 2.0, nkt



def test_a_residual_check_whose_replaced_gate_is_itself_uncertain_raises_no_flag(tmp_path):
    """Development product V143981 (stop 44; bench phenomena drawn by its seed, then CD56 binding set
    to 299 units and CD8's tandem loss to 10.7 %): the CD56+ gate is right (NK, NKT within 0.2
    points of label truth), yet the residual-spillover check said +19.5 points: with CD8's
    residual taken out, the re-placed gate took the normal fit under the heavy log-normal binding,
    which over-calls, and its own check flags it uncertain (its fit range spans over 12 points).
    The spillover's true effect (the same product without the tandem loss, the same events) is
    under 3 points, so the flag was a false alarm. Now a re-placed cut that is itself uncertain
    raises no residual flag (its move is recorded)."""
    from dataclasses import replace

    drawn = simulate_product("V143981", 143981, 20000, phenomena=True).phenomena
    assert drawn is not None
    heavy = replace(drawn, nsb={**drawn.nsb, "CD56": 299.0}, tandem_loss=0.107)
    cd56 = {}
    for phen, degraded in ((heavy, True), (replace(heavy, tandem_loss=0.0), False)):
        folder = tmp_path / str(degraded)
        folder.mkdir()
        prod, result = _analyzed(folder, "V143981", 143981, phen)
        tube = next(t for t in result.tubes if t.role == "stain" and "CD56+" in t.diagnostics)
        cd56[degraded] = float(tube.populations.set_index("population").loc["CD56+", "pct_of_parent"])
        if degraded:
            # within 0.2 points until stop 46; the log-normal cut the bulk's shape picks (placement.
            # skewed_or_normal) sits higher with CD8's tandem loss here: NKT 1.4 under, within the lineage
            # tolerance (2 points)
            for v in ("nkt_pct_of_live_lymph", "nk_pct_of_live_lymph"):
                assert abs(result.phenotype[v] - prod.truth[v]) < 2.0, v
            d = tube.diagnostics["CD56+"]
            # a move beyond the flag's 3 points (+19.5 before stop 46's log-normal shape choice, +8.9 since);
            # since stop 51 the binding is fitted on the CD8- cells (skew_reference not_CD8), which carry no
            # CD8 residual: the gate placed again without it moves 0.8 points and is not flagged either way
            assert d["fit_on"] == "reference" and d["residual_points"] < 3.0, d
            spill = [f.message for f in result.qc if f.gate == "CD56+" and "spillover" in f.message]
            assert not spill, spill
    assert abs(cd56[False] - cd56[True]) < 3.0, cd56


def test_heavy_lognormal_cd56_binding_is_carried_with_its_log_normal_tail_not_counted_nkt(tmp_path):
    """Development product V149459 (stop 46; bench phenomena drawn by its seed, then CD56 binding set
    to 213 units, log-SD 0.68, as ``validate_gating.py --set cd56_binding=150-300 --set
    cd56_binding_sd=0.6-0.8`` drew them; CD8's tandem loses 4.7 %): the CD56 FMO percentile still
    had most negatives below it, so the normal binding was fitted to the negatives' bulk; it falls
    short of the log-normal binding's upper tail, the cut sat about 2 % of the CD3+ T cells too low
    and NKT came out 2.2 points above label truth with no flag. The log-normal shape fits the bulk
    far better (F test), so its cut is taken: NKT and NK within 1 point of label truth (tolerance of
    the study's lineage variables: 2), the replaced normal cut recorded below it."""
    from dataclasses import replace

    drawn = simulate_product("V149459", 149459, 20000, phenomena=True).phenomena
    assert drawn is not None and 0.04 < drawn.tandem_loss < 0.05
    phen = replace(drawn, nsb={**drawn.nsb, "CD56": 213.0}, nsb_sd={**drawn.nsb_sd, "CD56": 0.68})
    prod, result = _analyzed(tmp_path, "V149459", 149459, phen)
    for v in ("nkt_pct_of_live_lymph", "nk_pct_of_live_lymph"):
        assert abs(result.phenotype[v] - prod.truth[v]) < 1.0, (v, result.phenotype[v] - prod.truth[v])
    d = next(t for t in result.tubes if t.role == "stain" and "CD56+" in t.diagnostics).diagnostics["CD56+"]
    assert d["winner"] == "fmo_relative" and d["threshold"] == d["fit_threshold"], d
    # since stop 51 fitted on the CD8- cells (skew_reference not_CD8), whose negatives pass their own FMO
    # percentile: the log-normal share fit, with no normal cut replaced
    assert 0.5 < d["fit_log_sd"] < 0.9 and d["fit_on"] == "reference" and np.isnan(d["fit_normal"]), d


V165337_CD56 = (226.12902526593373, 0.7836641384352805)
"""Development product V165337's CD56 binding and log-SD, as ``validate_gating.py --set cd56_binding=150-300
--set cd56_binding_sd=0.6-0.8`` drew them (benchmarks/README.md, stop 52)."""


@pytest.fixture(scope="module")
def v165337(tmp_path_factory):
    """V165337 analyzed (bench phenomena drawn by its seed, then the CD56 binding of :data:`V165337_CD56`):
    (the simulated product, its result, the CD56+ gate's first placement call: its keyword arguments)."""
    from dataclasses import replace

    from tilpheno.gates import checks

    drawn = simulate_product("V165337", 165337, 1, phenomena=True).phenomena
    assert drawn is not None
    phen = replace(drawn, nsb={**drawn.nsb, "CD56": V165337_CD56[0]}, nsb_sd={**drawn.nsb_sd, "CD56": V165337_CD56[1]})
    calls, place = [], checks.place_and_check

    def recording(population, *args, **kw):
        calls.append((population, kw))
        return place(population, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checks, "place_and_check", recording)
        prod, result = _analyzed(tmp_path_factory.mktemp("v165337"), "V165337", 165337, phen)
    return prod, result, next(kw for population, kw in calls if population == "CD56+")


def _share_fit_error(f_sorted, s_sorted, transform, fit):
    """The sum of squares (transformed units) of a log-normal share fit's model (``fit``: median, log-SD,
    spreading at its share) against the stained negatives' percentiles, as the fit measures it (the FMO
    as ``SHARE_FMO_QUANTILES`` quantiles, the signal at ``FIT_LOGNORMAL_QUANTILES``)."""
    n = pl.SHARE_FMO_QUANTILES
    fmo = np.percentile(f_sorted, (np.arange(n) + 0.5) * 100.0 / n)
    z_binding, z_spread = pl.FIT_LOGNORMAL_QUANTILES
    signal = (fit.shift * np.exp(fit.log_sd * z_binding)[:, None] + fit.spread * z_spread[None, :]).ravel()
    model = transform.apply(np.percentile((fmo[:, None] + signal[None, :]).ravel(), pl.FIT_PERCENTILES))
    return float(np.sum((model - transform.apply(np.percentile(s_sorted, pl.FIT_PERCENTILES * fit.share))) ** 2))


def test_the_share_fit_on_v165337s_reference_finds_the_binding_s_log_sd(v165337):
    """Stop 52 (cd56b_52): V165337's CD56 reference (the CD8- live lymphocytes) has binding whose whole
    negative peak passes the FMO percentile: placement.lognormal_share_fit iterates the negatives' share.
    Its first round, at the FMO-shifted share, fits a log-SD of 0.24; each later round started from the
    round before kept it (log-SD 0.24 at share 0.78, a sum of squares 6x that of a fit from the three
    fixed starts at that share; NKT +13.8 points). Each round fitted from the fixed starts: the log-SD
    within 0.15 of the simulated binding's 0.78 and the median within 15 % of its 226 units, and no fit
    from the fixed starts at the share it ends on fits the negatives better (1 % tolerance)."""
    _, _, kw = v165337
    transform, percentile = kw["transform"], kw["percentile"]
    rf, rs = (np.asarray(v)[np.isfinite(v)] for v in (kw["reference_fmo"], kw["reference_stained"]))
    f_sorted, s_sorted = pl.sorted_fmo_linear(rf, transform), np.sort(pl._finite_linear(rs, transform))
    fit = pl.lognormal_share_fit(f_sorted, s_sorted, transform, percentile)
    assert fit is not None
    assert abs(fit.log_sd - V165337_CD56[1]) < 0.15 and abs(fit.shift / V165337_CD56[0] - 1.0) < 0.15, fit
    scale = pl._fmo_scale(f_sorted)
    starts = [np.array([fit.shift, s0 * scale, 0.5 * scale]) for s0 in pl.LOGNORMAL_STARTS]
    _, p, _ = pl._lognormal_fit(f_sorted, s_sorted, transform, percentile, fit.share, starts, scale,
                                fmo_quantiles=pl.SHARE_FMO_QUANTILES, fatol=pl.SHARE_FATOL)
    fixed = pl._lognormal_carry(0.0, p, fit.share, scale)
    error, fixed_error = (_share_fit_error(f_sorted, s_sorted, transform, f) for f in (fit, fixed))
    assert error <= 1.01 * fixed_error, (error, fixed_error, fit, fixed)


def test_v165337s_heavy_cd56_binding_leaves_nk_and_nkt_within_2_points(v165337):
    """Development product V165337 (stop 52, the fit of the test above): NKT came out 13.8 points above
    label truth (the CD56 cut at 0.391 where the label negatives' 99.5th percentile is 0.514), flagged only
    by stop 43's always-on flag. NK and NKT within 2 points of label truth (the lineage tolerance)."""
    prod, result, _ = v165337
    for v in ("nkt_pct_of_live_lymph", "nk_pct_of_live_lymph"):
        assert abs(result.phenotype[v] - prod.truth[v]) < 2.0, (v, result.phenotype[v] - prod.truth[v])


def test_a_residual_check_on_a_gate_already_uncertain_joins_its_flag():
    """A gate whose own checks raised ``uncertain_threshold`` and whose residual-spillover check fires got a second
    ``uncertain_threshold`` from ``checks.residual_impact`` (qc.csv and the reports counted two on one gate), where
    ``checks.fallback_outside_check`` joins its reason to the gate's own -> one flag a gate and code, its message the
    gate's own reason '; also' the residual one, still a review warning; a gate without one of its own gets the
    residual flag alone, worded as before. The move is counted here on the events: the parent's share between the
    placed cut (1.0) and the cut placed again without the residual (0.5)."""
    from tilpheno.gates.checks import residual_impact
    from tilpheno.gates.geometry import RangeGate

    stained = np.random.default_rng(172201).normal(0.0, 1.0, 10_000)
    points = 100.0 * np.count_nonzero((stained > 0.5) & (stained <= 1.0)) / stained.size
    assert points > 3.0   # over the check's limit: it fires
    own = pl.Flag("uncertain_threshold", "info", "CD56+ (CD56): the threshold 1.000 (rule fmo_relative) moved 5.0 points",
                  "CD56+")
    shift = pl.Flag("negative_shift", "info", "CD56+ (CD56): stained negatives sit +0.300 transformed units", "CD56+")
    corrected = pl.Placement(RangeGate("CD56", low=0.5), "fmo", {"threshold": 0.5}, ())
    said = (f"its FMO shows spillover into CD56 that the compensation left in (partial slope per unit of CD8 +0.070); "
            f"with it taken out of both tubes the gate would move the % by {points:+.1f} points of the parent (limit 3); "
            "check the compensation (a degraded tandem?) and the CD56 vs CD8 plot of the FMO")
    for flags in ((own, shift), (shift,)):
        placed = pl.Placement(RangeGate("CD56", low=1.0), "fmo", {"threshold": 1.0}, flags)
        checked = residual_impact("CD56+", "CD56", placed, stained, corrected, stained, {"CD8": 0.07})
        assert checked.diagnostics["residual_points"] == pytest.approx(points, abs=1e-9)
        [uncertain] = [f for f in checked.flags if f.code == "uncertain_threshold"]
        assert needs_review(uncertain) and uncertain.gate == "CD56+"
        assert [f for f in checked.flags if f.code != "uncertain_threshold"] == [shift]
        first = f"{own.message}; also " if own in flags else "CD56+ (CD56): "
        assert uncertain.message == first + said, uncertain.message


def test_the_residual_slopes_read_on_the_subsample_equal_those_on_every_event():
    """The residual-spillover check takes back to linear units only the FMO parent's events the
    slopes are read on (``spillover.residual_events``: every k-th beyond ``RESIDUAL_MAX_EVENTS``),
    not the whole parent (200,000-event tubes: about 6 % of a run's CPU): the slopes must be those
    of every event passed. An FMO parent of 90,000 events whose CD56 carries 8 % of CD8's signal."""
    from tilpheno.gates.checks import partial_slopes, residual_slopes
    from tilpheno.spillover import RESIDUAL_MAX_EVENTS, residual_events

    rng = np.random.default_rng(42)
    n = 90_000
    assert n > RESIDUAL_MAX_EVENTS
    cd8 = np.where(rng.random(n) < 0.4, rng.lognormal(8.5, 0.4, n), rng.normal(50, 60, n))
    cd4 = np.where(rng.random(n) < 0.5, rng.lognormal(8.0, 0.4, n), rng.normal(40, 60, n))
    linear = {"CD8": cd8, "CD4": cd4, "CD56": rng.normal(80, 70, n) + 0.08 * cd8}
    index = residual_events(n)
    on_all = residual_slopes(partial_slopes(linear, "CD56", math.inf))
    on_subsample = residual_slopes(partial_slopes({m: v[index] for m, v in linear.items()}, "CD56", math.inf))
    assert set(on_all) == {"CD8"} and abs(on_all["CD8"] - 0.08) < 0.01, on_all
    assert on_subsample == on_all


def _skewed_product(seed, median, log_sd, n=8000, positives=0.15):
    """A parent (FMO N(0, 60); stained: the same plus binding ``median`` x exp(``log_sd`` Z), and 15 %
    positives log-normal around 1,500 units plus the binding) and a marker-poor reference
    (:func:`_reference_tubes`, the same binding); the ideal cut = the 99.5th percentile of the stained
    negatives (linear units)."""
    rng = np.random.default_rng(seed)
    added = lambda k: median * np.exp(log_sd * rng.standard_normal(k))   # noqa: E731
    tr, ref_fmo, ref_stained = _reference_tubes(rng, added)
    fmo = rng.normal(0.0, 60.0, n)
    neg = rng.normal(0.0, 60.0, n) + added(n)
    k = int(n * positives)
    stained = tr.apply(np.concatenate([neg, rng.lognormal(np.log(1500.0), 0.5, k) + added(k)]))
    return tr, tr.apply(fmo), stained, ref_fmo, ref_stained, float(np.percentile(neg, 99.5))


def test_a_right_skewed_reference_read_carries_part_of_the_lognormal_tail():
    """Stop 44: heavy right-skewed binding (250 x exp(0.7 Z)): the normal signal of the reference's read
    shift and SD puts the cut into the binding's tail (2.5-3.1 points over the ideal on these seeds);
    the read is right-skewed (log-SD over 0.8, the skew over 0.9 of the spread), so the cut moves a
    third of the way to the log-normal signal's: within 1.5 points. A nearly normal binding (log-SD
    0.3) is not read as skewed and keeps the normal carry-over. ``reference_cut`` (the folds of the
    reference's sampling error) gives the same cut as the gate."""
    for seed in range(94440, 94445):
        tr, fmo, stained, ref_fmo, ref_stained, ideal = _skewed_product(seed, 250.0, 0.7)
        binding = pl.reference_binding(ref_fmo, ref_stained, tr)
        assert binding.right_skewed, binding
        placed = pl.place_fmo_anchored(fmo, stained, "PD1", reference=binding, percentile=99.5, transform=tr,
                                       rule="relative")
        d = placed.diagnostics
        truth = 100.0 * np.mean(stained > tr.apply(np.array([ideal]))[0])
        err = 100.0 * np.mean(stained > d["threshold"]) - truth
        normal = tr.apply(np.array([pl.additive_threshold(tr.inverse(fmo), binding.shift, binding.total_spread, 99.5)]))[0]
        assert 100.0 * np.mean(stained > normal) - truth > 2.0   # what the normal signal alone gives
        assert d["threshold"] == pytest.approx(d["relative_reference"]) and abs(err) < 1.5, (seed, err, d)
        assert pl.reference_cut(fmo, binding, tr, 99.5) == pytest.approx(d["relative_reference"])
        tr, fmo, stained, ref_fmo, ref_stained, ideal = _skewed_product(seed, 250.0, 0.3)
        binding = pl.reference_binding(ref_fmo, ref_stained, tr)
        assert not binding.right_skewed, binding
        placed = pl.place_fmo_anchored(fmo, stained, "PD1", reference=binding, percentile=99.5, transform=tr,
                                       rule="relative")
        normal = tr.apply(np.array([pl.additive_threshold(tr.inverse(fmo), binding.shift, binding.total_spread, 99.5)]))[0]
        assert placed.diagnostics["relative_reference"] == pytest.approx(normal)


@pytest.mark.slow
def test_the_reference_errors_folds_keep_the_carry_overs_shape(tmp_path):
    """Stop 44's development product V143258 (PD1 binding 218 units, log-SD 0.71, set; the rest as drawn):
    the read on all events is right-skewed, a fold's own read may not be; when each fold chose its own
    shape the jump between the two cuts widened the reference's interval and flagged all three PD1 gates
    (``uncertain_threshold``, 3.6-4.6 points within the interval) on values within 0.4 points."""
    phen = Phenomena(   # draw_phenomena's values for seed 143258, PD1's binding set
        nsb={"CD3": 85.84688960615317, "CD4": 0.0, "CD8": 0.0, "CD56": 19.975139802875763, "PD1": 217.63171982670906,
             "FoxP3": 28.134209055093702},
        nsb_sd={"CD3": 0.31662048919901, "CD4": 0.40459817361366446, "CD8": 0.23347111334848608,
                "CD56": 0.4021218636661783, "PD1": 0.7102700786171365, "FoxP3": 0.6853659798690273},
        spread={"CD3": 15.223788837833023, "CD4": 35.61674470518721, "CD8": 0.0, "CD56": 0.0, "PD1": 0.0, "FoxP3": 0.0},
        tandem_loss=0.02669762580846827, debris_shelf=True, debris_extra=0.1112744233370828,
        dim_dead=0.12922687407649916, pd1_dim_scale=0.7884718100735276, foxp3_scale=0.6321822400583362)
    errors, flagged, result = _run(tmp_path, 143258, phen)
    assert all(abs(errors[v]) < 1.5 for v in PD1_GATES), errors
    assert not flagged & {"PD1+", "CD8+PD1+", "CD4+PD1+"}, flagged


def test_a_parent_whose_negatives_make_no_peak_is_carried_with_the_reference(tmp_path):
    """Development product V146192 (drawn phenomena: PD1 binding 290 units, log-SD 0.23, spreading 43;
    56 % of its CD8+ T cells PD1+): the CD8+ T cells' dim positives merge their negative peak away, so
    the CD8+PD1+ gate found no stained negative peak and kept the FMO percentile, 19.0 points over the
    ideal-FMO reference (flagged), while PD1+ and PD1+ of CD4 carried the FMO percentile with the binding
    read on non_T and lay within 0.8 points. The reference carry-over reads nothing on the parent's stained
    events: now CD8+PD1+ uses it too, within 3 points of the reference (issue 13's miss level), and the
    gate stays under review (its parent still shows no negative peak of its own)."""
    errors, flagged, result = _run(tmp_path, 146192, True)
    assert abs(errors["cd8pd1_pct_of_cd8"]) < 3.0 and abs(errors["cd8pd1_pct_of_cd3"]) < 3.0, errors
    recorded = {str(r.population): r for t in result.tubes for r in t.thresholds.itertuples(index=False)}
    assert recorded["CD8+PD1+"].winner == "fmo_relative", recorded["CD8+PD1+"]
    assert "CD8+PD1+" in flagged, flagged


def test_a_reference_cut_above_the_parents_own_upper_carry_over_is_flagged(tmp_path):
    """Development product V146862 (bench phenomena drawn by its seed, then PD1 binding set to 269
    units with log-SD 0.80, as ``validate_gating.py --set pd1_binding=150-300 --set
    pd1_binding_sd=0.6-0.8`` draws them): the binding read on non_T carries the PD1 FMO percentile to
    0.613, far above what the T cells' own negatives show, and every PD1 gate under-calls (CD4+PD1+
    of CD4 more than 3 points under the ideal-FMO reference). CD4+PD1+ had no flag: its reference
    interval and tail-shape checks were within their limits. The parent's upper-side carry-over
    (relative_high) follows its nonspecific tail and is only raised by its positives; a reference cut
    more than 3 points of the parent above it is now flagged (``reference_above_points``). Since stop 59 the
    placement also moves such a cut down (``placement.reference_capped_cut``; here more than 6 points above: to
    ``relative_high`` itself) and the flag stays: CD4+PD1+ -5.8 -> +1.9 points, PD1+ -13.2 -> -0.4."""
    prod, result = _with_pd1_binding(tmp_path, 146862, 269.0, 0.80)
    error = result.phenotype["cd4pd1_pct_of_cd4"] - prod.truth["ref_cd4pd1_pct_of_cd4"]
    assert abs(error) < 2.0, error
    flags = [f.message for f in result.qc if needs_review(f) and f.gate == "CD4+PD1+"]
    assert any("above the parent's own upper-side carry-over" in m and "moved down to that carry-over" in m
               for m in flags), flags
    tube = next(t for t in result.tubes if t.role == "stain" and "CD4+PD1+" in t.diagnostics)
    d = tube.diagnostics["CD4+PD1+"]
    assert d["reference_capped_from"] > d["relative_high"] == d["threshold"] and d["reference_above_points"] > 6.0, d


def test_a_small_references_sampling_interval_is_measured_on_all_its_events(tmp_path):
    """The lead's start block of stop 46, product V147730 (bench phenomena drawn by its seed, then PD1
    binding set to 295 units with log-SD 0.75, as ``validate_gating.py --set pd1_binding=150-300 --set
    pd1_binding_sd=0.6-0.8`` draws them): its non-T reference holds about 420 events, and the PD1 gates'
    cuts read on it put CD8+PD1+ of CD8 more than 3 points over the ideal-FMO reference. Two interleaved
    folds of 210 events happened to read nearly the same cut (+/- 0.013 with Student t on 1 degree of
    freedom), so no gate was flagged; bootstrap resamples of all its events spread the cut +/- 0.05 and
    the CD8+PD1+ gate is uncertain_threshold, its message giving the reference reading's interval."""
    prod, result = _with_pd1_binding(tmp_path, 147730, 295.07, 0.7465)
    error = result.phenotype["cd8pd1_pct_of_cd8"] - prod.truth["ref_cd8pd1_pct_of_cd8"]
    assert error > 3.0, error
    flags = [f.message for f in result.qc if needs_review(f) and f.gate == "CD8+PD1+"]
    assert any("95 % interval of the reference reading" in m for m in flags), flags


def test_the_tail_shape_finding_on_one_pd1_gate_flags_the_gates_of_the_same_read(tmp_path):
    """Development product V153138 (stop 48; bench phenomena drawn by its seed, then PD1 binding set to
    239 units with log-SD 0.79, as ``validate_gating.py --set pd1_binding=150-300 --set
    pd1_binding_sd=0.6-0.8`` draws them): the three PD1 gates carry the FMO percentile with one binding
    read on non_T, whose tail is heavier than the carry-over's. CD8+PD1+ of CD8 lies about 9 points over
    the ideal-FMO reference, and its tail-shape check flags it (3.3 points); PD1+ of live lymphocytes
    lies more than 3 points over it too, but its own tail points (2.5) stayed under the limit: no flag on
    its gate. The read's unfixed tail shape is the same for every gate it carries: PD1+ is flagged now,
    naming the sibling whose check found it."""
    prod, result = _with_pd1_binding(tmp_path, 153138, 238.85, 0.7892)
    error = result.phenotype["pd1_pct_of_live_lymph"] - prod.truth["ref_pd1_pct_of_live_lymph"]
    assert error > 3.0, error
    tube = next(t for t in result.tubes if t.role == "stain" and "PD1+" in t.diagnostics)
    assert tube.diagnostics["PD1+"]["tail_points"] < 3.0 < tube.diagnostics["CD8+PD1+"]["tail_points"], tube.diagnostics
    flags = [f.message for f in result.qc if needs_review(f) and f.gate == "PD1+"]
    assert any("carries the reference reading that CD8+PD1+'s check (tail_points" in m for m in flags), flags


def test_the_residual_check_is_judged_against_the_gates_own_uncertain_points(tmp_path):
    """A strategy's ``uncertain_points`` on a gate is the limit of every one of its uncertainty checks,
    the residual-spillover check's too (before stop 58 that one always took 3 points). V138221 with its
    drawn phenomena (CD8's tandem loses 12 % to APC: the residual check moves CD56+ by more than 3
    points, flagged, above) analyzed with the study's surface strategy whose CD56+ sets
    ``uncertain_points: 50``: the same move is recorded (``residual_points`` above 3) and not flagged."""
    from tilpheno.gates.strategy import parse_strategy

    surface, treg = default_strategy_paths()
    text = surface.read_text()
    old = "params: {width_side: fit, skew_reference: not_CD8, outside_cells: negative}"
    assert text.count(old) == 1
    lenient = parse_strategy(text.replace(old, old[:-1] + ", uncertain_points: 50}"), str(surface))
    prod = simulate_product("V138221", 138221, 20000, phenomena=True)
    write_product(prod, tmp_path)
    manifest = pd.DataFrame(manifest_rows(prod))
    manifest["file"] = [str(tmp_path / f) for f in manifest["file"]]
    result = analyze_product(prod.product_id, manifest, [lenient, load_strategy(treg)])
    tube = next(t for t in result.tubes if t.role == "stain" and "CD56+" in t.diagnostics)
    assert tube.diagnostics["CD56+"]["residual_points"] > 3.0, tube.diagnostics["CD56+"]
    spill = [f.message for f in result.qc if f.gate == "CD56+" and "spillover" in f.message and needs_review(f)]
    assert not spill, spill


def test_the_misfit_slopes_are_the_fmos_residual_beyond_the_stained_tubes():
    """Stop 63: ``checks.misfit_slopes`` = the FMO parent's partial slope into the marker minus the stained parent's
    (its events below the cut). An FMO whose PD1 detector lost 2 % of CD3's FITC to over-compensation (a PE gain 0.9
    with the stained tube's matrix), a stained tube compensated right, with 20 % PD1+ cells above the cut: -0.02
    (+-0.004); the same residual in both tubes (one matrix, one error) is no misfit: read as 0 (|.| < 0.004) where
    the stained parent's dim positives below the cut lean it (beyond the slopes' sampling error, so returned), and
    nothing returned (the screen, stop 63 misfit2) where the two tubes differ by sampling alone (no positives)."""
    from tilpheno.gates.checks import misfit_slopes, partial_slopes

    rng = np.random.default_rng(212899)
    n = 20_000

    def tube(residual, positives):
        cd3 = np.where(rng.random(n) < 0.8, rng.lognormal(np.log(6000.0), 0.35, n), rng.normal(100.0, 60.0, n))
        pd1 = rng.normal(60.0, 50.0, n) + residual * cd3
        pd1 = np.where(rng.random(n) < positives, rng.lognormal(np.log(2600.0), 0.5, n), pd1)
        return {"CD3": cd3, "PD1": pd1}

    drifted = misfit_slopes(partial_slopes(tube(-0.02, 0.0), "PD1", np.inf), tube(0.0, 0.2), "PD1", 600.0)
    assert set(drifted) == {"CD3"} and drifted["CD3"] == pytest.approx(-0.02, abs=0.004), drifted
    alike = misfit_slopes(partial_slopes(tube(0.05, 0.0), "PD1", np.inf), tube(0.05, 0.2), "PD1", 900.0)
    assert abs(alike["CD3"]) < 0.004, alike
    assert misfit_slopes(partial_slopes(tube(0.05, 0.0), "PD1", np.inf), tube(0.05, 0.0), "PD1", 900.0) == {}


@pytest.mark.slow
def test_a_pd1_fmo_acquired_at_another_pe_gain_is_flagged(tmp_path):
    """Stop 63 (stress_63): development product V212054 (its drawn bench phenomena) with its FMO tubes' PE gain 0.906
    (``validate_gating.py --set fmo_gain_pe=0.9-1.1`` drew 0.9058 for it): the FMO's T cells over-compensated in PE
    (0.215 x 0.094 of their FITC), every PD1 gate carried 120 units too low: PD1+ more than 3 points over the ideal-FMO
    reference (independent truth: the stained tube's label negatives), and flagged by the misfit check on its gate;
    without the drift the same product's PD1+ is within 1.5 points and no gate carries the misfit flag. Main's gating
    (before stop 63's check) left the drifted product unflagged (benchmarks/README, stop 63)."""
    from dataclasses import replace

    drawn = simulate_product("V212054", 212054, 1, phenomena=True).phenomena
    assert drawn is not None
    for gain, folder in ((0.906, tmp_path / "drift"), (None, tmp_path / "plain")):
        folder.mkdir()
        phen = replace(drawn, fmo_gain={"PE-A": gain}) if gain else drawn
        prod, result = _analyzed(folder, "V212054", 212054, phen)
        error = result.phenotype["pd1_pct_of_live_lymph"] - prod.truth["ref_pd1_pct_of_live_lymph"]
        misfit = [f for f in result.qc if needs_review(f) and f.code == "uncertain_threshold"
                  and "differs from the stained tube's" in f.message]
        if gain:
            assert error > 3.0, error
            assert "PD1+" in {f.gate for f in misfit}, [f.message for f in result.qc]
        else:
            assert abs(error) < 1.5 and not misfit, (error, [f.message for f in misfit])
