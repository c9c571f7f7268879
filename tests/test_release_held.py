"""Release while a gate needs review: a criterion no review can change decides a failure at once;
one whose variable rests on a flagged gate is held ("not evaluable") until the review."""
from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from tilpheno.gates.strategy import ROOT, default_strategy_paths, load_strategy
from tilpheno.io.fcs import read_fcs_metadata
from tilpheno.pipeline.jobs import ProcessOptions, ProductJob, outcome_from_record, outcome_record, strategy_sources
from tilpheno.pipeline.product import process_product
from tilpheno.release import DEFAULT_SPEC, FAIL, NOT_EVALUABLE, Criterion

STRATEGIES = [load_strategy(p) for p in default_strategy_paths()]


def _rows(cohort, product_id: str, without_fmo: str):
    """The product's manifest rows without its ``without_fmo`` FMO file: the gate on that marker
    falls back and is flagged ``missing_fmo`` / ``fallback_gate`` (review)."""
    manifest = pd.read_csv(cohort.manifest)
    rows = manifest[(manifest["product_id"] == product_id) & (manifest["fmo_marker"].astype(str) != without_fmo)]
    rows = rows.reset_index(drop=True)
    rows["file"] = [str(cohort.out_dir / f) for f in rows["file"]]
    return rows


def _process(rows, spec, reports=False):
    job = ProductJob("TIL002", rows, strategy_sources(STRATEGIES), ProcessOptions(make_reports=reports, release_spec=spec))
    return process_product(job)


def test_too_few_events_fail_release_while_a_gate_awaits_review(small_cohort):
    """A drafted study's event-count criterion on a file with fewer events than it needs, the CD3
    FMO missing (CD3+ gate flagged): reviewing gates cannot change an event count, so release is
    "fail" (was "not evaluable"), naming the count; the CD3+ criterion awaits review."""
    rows = _rows(small_cohort, "TIL002", "CD3")
    stained = next(f for f, r, t in zip(rows["file"], rows["role"], rows["tube"]) if r == "stain" and t == "surface")
    n_events = read_fcs_metadata(stained).n_events          # the file's $TOT
    assert n_events < 5000
    spec = dataclasses.replace(DEFAULT_SPEC, name="drafted", criteria=(
        Criterion("Events (surface)", "n_events_surface", ">=", 5000, "events"), *DEFAULT_SPEC.criteria))
    outcome = _process(rows, spec, reports=True)
    assert outcome.phenotype["review_status"] == "needs review"
    events, viability, cd3 = outcome.release
    assert events.value == n_events and events.outcome == FAIL and events.held_by == ()
    assert viability.held_by == ()                          # 7AAD-: no gate of it is flagged
    assert any("(CD3+)" in h for h in cd3.held_by)
    assert outcome.release_status == FAIL == outcome.phenotype["release_status"]
    html = outcome.report_html
    assert f"release fails whatever the review finds (Events (surface): {n_events} (needs &gt;= 5000 events))" in html
    assert "CD3+ T cells awaits review" in html and "awaits review of missing_fmo (CD3+)" in html
    from tilpheno.report.html import failed_criteria

    reasons = failed_criteria(outcome.release)   # the index's: the count, and CD3+ held whatever its value
    assert reasons[0] == f"Events (surface): {n_events} (needs >= 5000 events)"
    assert reasons[1].startswith(f"CD3+ T cells: {cd3.shown()} (needs > 90 % of live lymphocytes; awaits review of ")
    stored = outcome_from_record(json.loads(json.dumps(outcome_record(outcome))))   # the cache's form
    assert stored.release == outcome.release


def test_a_passing_release_held_by_a_flag_on_no_criterion_s_gate_names_the_flag(small_cohort):
    """A drafted study whose one criterion is an event count the file passes, the PD1 FMO missing
    (PD1+ gates flagged missing_fmo, review): release is "not evaluable" until the review, yet the
    index's release cell and the report's release line said only that, no criterion failed or held.
    Now both name the flags: "<n> flags need review (first: <gate>: <code>)", from the run's own flags."""
    from tilpheno.qc import needs_review
    from tilpheno.report.html import render_index

    rows = _rows(small_cohort, "TIL002", "PD1")
    stained = next(f for f, r, t in zip(rows["file"], rows["role"], rows["tube"]) if r == "stain" and t == "surface")
    n_events = read_fcs_metadata(stained).n_events
    spec = dataclasses.replace(DEFAULT_SPEC, name="drafted", criteria=(
        Criterion("Events (surface)", "n_events_surface", ">=", n_events // 2, "events"),))
    outcome = _process(rows, spec, reports=True)
    (events,) = outcome.release
    assert events.outcome == "pass" and events.held_by == () and outcome.release_status == NOT_EVALUABLE
    review = [f for f in outcome.qc if needs_review(f)]
    assert review and review[0].gate.startswith("PD1") and review[0].code == "missing_fmo"
    why = f"{len(review)} flag{'s' if len(review) > 1 else ''} need{'' if len(review) > 1 else 's'} review (first: {review[0].gate}: missing_fmo)"
    assert f'id="release-hold">{why}</span>' in outcome.report_html
    index = render_index([outcome], ProcessOptions(release_spec=spec))
    assert f'<span class="reasons">{why}</span>' in index


@pytest.mark.parametrize("without_fmo, expected", [("CD3", NOT_EVALUABLE), ("PD1", FAIL)])
def test_a_flag_holds_only_the_criteria_whose_variable_rests_on_its_gate(small_cohort, without_fmo, expected):
    """CD3+ > 100 % of live lymphocytes can never pass. With the CD3 FMO missing its CD3+ gate is
    flagged: the value may change on review, so release is "not evaluable"; with the PD1 FMO
    missing, the flagged PD1+ gates are not among the gates the variable rests on
    (cells, singlets, live, live_lymph, CD3+), so the failure is determined: "fail"."""
    spec = dataclasses.replace(DEFAULT_SPEC, name="impossible", criteria=(
        Criterion("CD3+", "cd3_pct_of_live_lymph", ">", 100, "% of live lymphocytes"),))
    outcome = _process(_rows(small_cohort, "TIL002", without_fmo), spec)
    flagged = {f.gate for f in outcome.qc if f.code == "missing_fmo"}
    surface = next(s for s in STRATEGIES if s.tube == "surface")
    assert bool(flagged & set(surface.variable_gates("cd3_pct_of_live_lymph"))) == (without_fmo == "CD3")
    assert outcome.phenotype["review_status"] == "needs review"
    assert outcome.release[0].outcome == FAIL and outcome.release_status == expected


def test_a_flag_on_no_gate_holds_even_an_event_count():
    """Two stained files of a tube kind (``duplicate_tube``, on no gate): the event count may be
    the wrong file's, so no criterion is determined."""
    from tilpheno.pipeline.release import release_decision
    from tilpheno.qc import QCFlag

    spec = dataclasses.replace(DEFAULT_SPEC, criteria=(Criterion("Events", "n_events_surface", ">=", 5000, "events"),))
    flag = QCFlag("P1", "", "duplicate_tube", "warning", "2 surface stained files")
    on_gate = QCFlag("P1", "P1_surface_stain.fcs", "missing_fmo", "warning", "no FMO", "CD3+")
    row = {"n_events_surface": 790}
    tube_of = {"P1_surface_stain.fcs": "surface"}
    assert release_decision(spec, row, [flag], usable=True, strategies=STRATEGIES, tube_of=tube_of)[1] == NOT_EVALUABLE
    assert release_decision(spec, row, [on_gate], usable=True, strategies=STRATEGIES, tube_of=tube_of)[1] == FAIL


def test_a_flag_holds_the_gate_of_its_own_tube_kind():
    """A flag on the Treg tube's CD3+ gate leaves the surface tube's CD3+ % determined; a flag on a
    file whose tube kind is not known holds the gate of that name in every tube kind."""
    from tilpheno.pipeline.release import release_decision
    from tilpheno.qc import QCFlag

    spec = dataclasses.replace(DEFAULT_SPEC, criteria=(Criterion("CD3+", "cd3_pct_of_live_lymph", ">", 90),))
    row = {"cd3_pct_of_live_lymph": 80.0}
    flag = QCFlag("P1", "P1_treg_stain.fcs", "missing_fmo", "warning", "no FMO", "CD3+")
    tube_of = {"P1_treg_stain.fcs": "treg", "P1_surface_stain.fcs": "surface"}
    assert release_decision(spec, row, [flag], usable=True, strategies=STRATEGIES, tube_of=tube_of)[1] == FAIL
    assert release_decision(spec, row, [flag], usable=True, strategies=STRATEGIES, tube_of={})[1] == NOT_EVALUABLE


def test_the_run_summary_names_why_products_are_not_evaluable(small_cohort, tmp_path):
    """`process`'s summary said 'release (...): ..., not evaluable 2, ...' with no reason, where the
    report names it. Now the reasons follow in short, most products first: TIL002 without its PD1
    FMO (a flag on a gate no criterion reads: awaiting review) and TIL003 whose stained surface file
    is not an FCS file (failed processing); each product's reason read from phenotypes.csv."""
    from typer.testing import CliRunner

    from tilpheno.cli import app

    manifest = pd.read_csv(small_cohort.manifest)
    manifest = manifest[~((manifest["product_id"] == "TIL002") & (manifest["fmo_marker"].astype(str) == "PD1"))]
    manifest["file"] = [str(small_cohort.out_dir / f) for f in manifest["file"]]
    broken = (manifest["product_id"] == "TIL003") & (manifest["role"] == "stain") & (manifest["tube"] == "surface")
    (tmp_path / "broken.fcs").write_bytes(b"not an FCS file")
    manifest.loc[broken, "file"] = str(tmp_path / "broken.fcs")
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    r = CliRunner().invoke(app, ["process", str(small_cohort.out_dir), "-o", str(tmp_path / "out"), "--manifest",
                                 str(tmp_path / "manifest.csv"), "--reports", "none", "--allow-outside"])
    assert (tmp_path / "out" / "phenotypes.csv").exists(), r.output
    phen = pd.read_csv(tmp_path / "out" / "phenotypes.csv", dtype=str, keep_default_na=False)
    held = phen[phen["release_status"] == NOT_EVALUABLE]
    why = ["failed processing" if row.status == "failed" else "awaiting review" if row.review_status == "needs review"
           else "?" for row in held.itertuples()]
    assert sorted(why) == ["awaiting review", "failed processing"], phen[["product_id", "status", "review_status"]]
    counts = phen["release_status"].value_counts()
    expected = ", ".join(f"{s} {counts[s]}" + (" (1 awaiting review, 1 failed processing)" if s == NOT_EVALUABLE else "")
                         for s in sorted(counts.index))
    assert r.exit_code == 1 and f"): {expected}\n" in r.output, r.output


def test_a_flag_on_the_gate_a_cuts_reference_rests_on_holds_the_variable_but_is_no_catch_in_the_benchmark():
    """The rule for a ``skew_reference`` (since stop 51 also the CD56+ gate's ``not_CD8``, !CD8+ of the live
    lymphocytes): the cut is read on the reference, so a wrong gate the reference rests on moves it, and a
    flag there holds the variable's criterion (``Strategy.variable_gates``, as PD1+ of the live lymphocytes is
    held by a CD3+ flag through ``non_T``): a CD8+ flag now holds NKT's. validate_gating's silent-miss count
    reads the gates of the variable's own lineage (``VARIABLE_GATES``), never a reference's (PD1's non_T,
    FoxP3's non_CD4_T, CD56+'s not_CD8), so a CD8+ flag is not counted as having caught an NKT error."""
    import sys
    from pathlib import Path

    from tilpheno.pipeline.release import release_decision
    from tilpheno.qc import QCFlag

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import validate_gating as vg

    surface = next(s for s in STRATEGIES if s.tube == "surface")
    for variable in ("nkt_pct_of_live_lymph", "nk_pct_of_live_lymph"):
        assert {"not_CD8", "CD8+"} <= set(surface.variable_gates(variable)), surface.variable_gates(variable)
    spec = dataclasses.replace(DEFAULT_SPEC, criteria=(Criterion("NKT", "nkt_pct_of_live_lymph", "<", 1.0),))
    row = {"nkt_pct_of_live_lymph": 5.0}
    tube_of = {"P1_surface_stain.fcs": "surface"}
    cd8 = QCFlag("P1", "P1_surface_stain.fcs", "uncertain_threshold", "warning", "CD8+ (CD8): moved", "CD8+")
    pd1 = QCFlag("P1", "P1_surface_stain.fcs", "uncertain_threshold", "warning", "PD1+ (PD1): moved", "PD1+")
    assert release_decision(spec, row, [cd8], usable=True, strategies=STRATEGIES, tube_of=tube_of)[1] == NOT_EVALUABLE
    assert release_decision(spec, row, [pd1], usable=True, strategies=STRATEGIES, tube_of=tube_of)[1] == FAIL

    def lineage(strategy, population: str) -> set[str]:   # parents, operands and `reference`, no skew_reference
        p = strategy.population(population)
        refs = [p.parent, *(p.boolean.operands if p.boolean else ()), p.params.get("reference")]
        return {population}.union(*(lineage(strategy, r) for r in refs if r and r != ROOT))

    for strategy in STRATEGIES:
        names = {p.name for p in strategy.populations}
        for v in (x for x in strategy.variables if x.name in vg.VARIABLE_GATES):
            gates = set(vg.VARIABLE_GATES[v.name]) & names   # `dead`: validate_gating --live's gate, not the bundled one
            assert gates <= lineage(strategy, v.numerator) | lineage(strategy, v.denominator), (v.name, gates)
    assert "CD8+" not in vg.VARIABLE_GATES["nkt_pct_of_live_lymph"] + vg.VARIABLE_GATES["nk_pct_of_live_lymph"]
