"""The overlay figure of an ``fmo`` gate whose FMO file is missing and whose cut was anchored on the product's
unstained control (``phenotype._TubeKindRun._on_unstained``; flags ``missing_fmo``, ``fallback_gate``): the report
drew no overlay for it (the engine kept no control events outside the gated tubes), so a reviewer could not see what
the cut rests on. Now the stained TubeResult keeps the control's events where the fallback read them
(``TubeResult.control_events``: at most ``plot_events``) and the FMO section draws them against the stained parent
with the cut, legend, caption and alt text naming the unstained control, never an FMO.

Product V168901 (fbfig_53's development seeds 168901-168960, benchmarks/validate_gating.py) simulated with its drawn
bench phenomena and its PD1 FMO file left out of the manifest. The truth is computed here independently: the
unstained control read with ``load_tube`` and the stained file's placed gates applied to it one by one with each
gate's own ``contains`` (no ``phenotype._on_control``)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tilpheno.gates.strategy import default_strategy_paths, load_strategy
from tilpheno.io.fcs import read_fcs
from tilpheno.phenotype import analyze_product, load_tube
from tilpheno.simulate.cohort import manifest_rows, simulate_product, write_product

SEED = 168901
PD1_GATES = ("PD1+", "CD8+PD1+", "CD4+PD1+")
BASE = "live_lymph"   # the nearest ancestor of every PD1 gate's parent an unstained cell reaches (CD3+ > CD8+ are stains)


def _without_pd1_fmo(folder, plot_events: int | None, without: tuple[str, ...] = ("PD1", "FoxP3")):
    """V168901 (8000 events per tube) analyzed without its PD1 FMO (and its FoxP3 FMO, which the PD1 gates anchor on
    when it is there, unless ``without`` keeps it), its unstained control kept: (result, the surface stain's
    TubeResult, the manifest row of the unstained control)."""
    prod = simulate_product(f"V{SEED}", SEED, 8000, phenomena=True)
    write_product(prod, folder)
    manifest = pd.DataFrame(manifest_rows(prod))
    manifest["file"] = [str(folder / f) for f in manifest["file"]]
    kept = manifest[~manifest["fmo_marker"].isin(without)]
    assert len(kept) == len(manifest) - len(without)
    strategies = [load_strategy(p) for p in default_strategy_paths()]
    result = analyze_product(prod.product_id, kept, strategies, plot_events=plot_events)
    [stained] = [t for t in result.tubes if t.tube == "surface" and t.role == "stain"]
    [control] = [r for r in kept.itertuples(index=False) if r.role == "unstained"]
    return result, stained, control, strategies


def _control_in_base(stained, control_file: str, strategy) -> np.ndarray:
    """The unstained control's PD1 values (transformed) in live_lymph: read and compensated with its own matrix on
    the stained file's detectors, then the stained file's cells, singlets, live and live_lymph gates applied."""
    tube = load_tube(read_fcs(control_file), stained.detectors, strategy, tube="surface", role="unstained")
    gates = {name: gate for name, _, gate, _ in stained.gates}
    inside = np.ones(tube.n_events, dtype=bool)
    for name in ("cells", "singlets", "live", BASE):
        inside &= gates[name].contains(tube.data)
    return tube.data["PD1"][inside]


def _drawn(monkeypatch):
    """The arguments of every ``plots.fmo_overlay_plot`` call (the figure still drawn)."""
    from tilpheno.report import plots

    calls: list[dict] = []
    real = plots.fmo_overlay_plot

    def record(stained, fmo, axis, **kw):
        calls.append(dict(stained=stained, events=fmo, **kw))
        return real(stained, fmo, axis, **kw)

    monkeypatch.setattr(plots, "fmo_overlay_plot", record)
    return calls


def test_a_fallback_gate_gets_an_overlay_of_the_unstained_controls_events(tmp_path, monkeypatch):
    """Every PD1 gate of V168901 without its PD1 FMO was anchored on V168901_unstained.fcs and had no overlay -> one
    overlay each, its grey histogram the control's PD1 events in live_lymph (all of them, plot_events None: equal to
    the independent reading to 1e-12 after sorting), its line the stained parent's events, the cut the threshold
    record's; the control's % + the record's fmo_pct_above and the independent share above the cut (0.01 points);
    the legend, caption and alt name the unstained control and where its events were read, and say no 'FMO' but
    that it is missing."""
    from tilpheno.report.product import fmo_figures

    result, stained, control, strategies = _without_pd1_fmo(tmp_path, None)
    surface = next(s for s in strategies if s.tube == "surface")
    truth = np.sort(_control_in_base(stained, str(control.file), surface))
    rows = stained.thresholds.set_index("population")
    calls = _drawn(monkeypatch)
    figures = {f.population: f for f in fmo_figures(result, 99.5, strategies) if f.population in PD1_GATES}
    drawn = {c["marker"]: c for c in calls}   # all three PD1 gates draw PD1: checked one by one below
    assert set(figures) == set(PD1_GATES) and "PD1" in drawn
    pd1_calls = [c for c in calls if c["marker"] == "PD1"]
    assert len(pd1_calls) == 3
    for gate, call in zip(PD1_GATES, pd1_calls):
        row = rows.loc[gate]
        assert row["method"].startswith("fallback_") and row["source_file"].endswith("V168901_unstained.fcs"), row
        np.testing.assert_allclose(np.sort(call["events"]), truth, rtol=0, atol=1e-12)
        parent = stained.masks[row["parent"]]
        np.testing.assert_array_equal(call["stained"], stained.data["PD1"][parent])
        assert call["threshold"] == row["value_transformed"]
        share = 100.0 * float(np.mean(truth > row["value_transformed"]))
        assert call["pct_fmo"] == pytest.approx(row["fmo_pct_above"], abs=1e-9)
        assert call["pct_fmo"] == pytest.approx(share, abs=0.01)
        assert call["events"].flags.owndata   # a copy: no view of the control's block of columns

        figure = figures[gate]
        assert figure.title == f"PD1 in {row['parent']}: unstained control ({BASE}, FMO missing) vs stained (surface tube)"
        assert f">unstained control in {BASE}: {call['pct_fmo']:.1f}% +<" in figure.svg, figure.svg
        assert any(f">threshold: {rule}<" in figure.svg.replace("&#39;", "'") for rule in (   # skew_carry: fbplace_53's raised cut
            "control pct carried over", "control pct carried over with the reference's skew", "stained valley"))
        assert "FMO" not in figure.svg.replace("FMO missing", ""), gate
        assert figure.alt.startswith(f"PD1 unstained control ({BASE}) vs stained histogram; FMO missing"), figure.alt


def test_the_controls_events_kept_for_the_overlay_are_bounded(tmp_path):
    """With plot_events (the pipeline's bound) the result keeps at most that many of the control's events for each
    fallback gate: every k-th of the independent reading (k the smallest that leaves so many), as the FMO's plot
    subsample is taken, and the number read there in full; once for the three PD1 gates, which read the same."""
    result, stained, control, strategies = _without_pd1_fmo(tmp_path, 1000)
    surface = next(s for s in strategies if s.tube == "surface")
    truth = _control_in_base(stained, str(control.file), surface)
    assert truth.size > 1000
    k = -(-truth.size // 1000)
    assert set(stained.control_events) == set(PD1_GATES)
    # the three gates read the same events (PD1 in live_lymph): one array kept for them, not three
    assert len({id(stained.control_events[gate]) for gate in PD1_GATES}) == 1
    for gate in PD1_GATES:
        kept = stained.control_events[gate]
        assert kept.population == BASE and kept.marker == "PD1" and kept.file.endswith("V168901_unstained.fcs") and kept.n_events == truth.size
        np.testing.assert_allclose(kept.values, truth[::k], rtol=0, atol=1e-12)
        assert kept.values.size <= 1000


def test_a_product_with_its_fmos_keeps_no_control_events(tmp_path):
    """V168901 with every FMO: no gate is anchored on the unstained control, no control events are kept, and every
    overlay is an FMO's as before (legend 'FMO: ')."""
    from tilpheno.report.product import fmo_figures

    prod = simulate_product(f"V{SEED}", SEED, 4000, phenomena=True)
    write_product(prod, tmp_path)
    manifest = pd.DataFrame(manifest_rows(prod))
    manifest["file"] = [str(tmp_path / f) for f in manifest["file"]]
    strategies = [load_strategy(p) for p in default_strategy_paths()]
    result = analyze_product(prod.product_id, manifest, strategies, plot_events=1000)
    assert all(not t.control_events for t in result.tubes)
    figures = fmo_figures(result, 99.5, strategies)
    assert figures and all(">FMO: " in f.svg and "unstained" not in f.svg for f in figures)


def test_the_overlay_of_a_gate_with_control_unstained_names_the_unstained_control(tmp_path):
    """A dead cut with control: unstained (tests/test_control_live_dead.py's strategy and product, seed 168903): its overlay
    drew the product's unstained control with the legend 'FMO: 0.x% +', the caption 'FMO vs stained' and the alt
    'FMO vs stained histogram', though no FMO set it (only its threshold line said 'unstained control') -> legend,
    caption and alt name the unstained control; its grey histogram is the control's singlets (the control tube's
    own mask, as before)."""
    from control_support import live_dead_product, live_dead_strategy

    from tilpheno.report.product import fmo_figures

    prod, manifest = live_dead_product(tmp_path, 168903)
    result = analyze_product(prod.product_id, manifest, [live_dead_strategy()])
    [figure] = fmo_figures(result, 99.5)
    [control] = [t for t in result.tubes if t.role == "unstained"]
    [stained] = [t for t in result.tubes if t.role == "stain"]
    cut = stained.thresholds.set_index("population").at["dead", "value_transformed"]
    shown = 100.0 * float(np.mean(control.data["7AAD"][control.masks["singlets"]] > cut))
    assert figure.title == "7AAD in singlets: unstained control vs stained (surface tube)", figure.title
    assert f">unstained control: {shown:.1f}% +<" in figure.svg, figure.svg
    assert "FMO" not in figure.svg and "FMO" not in figure.alt and figure.alt.startswith("7AAD unstained control vs stained")


def test_a_gate_anchored_on_the_treg_tubes_foxp3_fmo_names_it_in_its_overlay_and_the_fmo_table(tmp_path):
    """V168901 without its PD1 FMO alone: the PD1 gates anchor on the Treg tube's FoxP3 FMO (``cross_fmo``, stop 61)
    -> the overlay draws that file's events where the cut read them (grey, 'treg FMO in treg non_CD4_T' for
    CD8+PD1+), and the FMO table names the file as 'treg FMO, FMO missing' with the rule 'no FMO, anchored on the
    treg FMO'; neither calls it the unstained control, nor pairs it as the gate's own FMO (before this change the
    table's row was paired with the Treg FMO's own CD4+ count)."""
    from tilpheno.report.product import fmo_figures, fmo_table

    result, stained, _, strategies = _without_pd1_fmo(tmp_path, None, without=("PD1",))
    figures = {f.population: f for f in fmo_figures(result, 99.5, strategies) if f.population in PD1_GATES}
    cells = {"PD1+": "lymph", "CD8+PD1+": "non_CD4_T", "CD4+PD1+": "CD4+"}
    table = {row[0]: row for row in fmo_table(result, 99.5).rows}
    for gate in PD1_GATES:
        row = stained.thresholds.set_index("population").loc[gate]
        assert row["source_file"].endswith("V168901_treg_FMO_FoxP3.fcs"), row
        figure = figures[gate]
        assert figure.title == (f"PD1 in {row['parent']}: treg FMO (treg {cells[gate]}, FMO missing) vs stained "
                                "(surface tube)"), figure.title
        assert "unstained control" not in figure.svg and "unstained control" not in figure.alt, gate
        _, _, _, control_file, control_n, _, _, _, _, rule = table[gate]
        assert control_file == "V168901_treg_FMO_FoxP3.fcs (treg FMO, FMO missing)" and control_n == "", table[gate]
        assert rule.startswith("no FMO, anchored on the treg FMO (fallback_"), rule
