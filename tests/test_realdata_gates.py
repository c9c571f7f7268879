"""Gates and self-checks for real shapes, against simulated truth: the ``cluster`` gate on two
markers, flags sized by the change of the reported percentages (``checks.size_flag`` via the
engine), the declared ``dim_subset`` check, and variables over all events (``denominator: root``).

Every population is drawn with a known label; tolerances are stated per assertion.
"""
from dataclasses import replace

import numpy as np
import pytest

from tilpheno.errors import GatingError, StrategyError
from tilpheno.gates import checks
from tilpheno.gates import placement as pl
from tilpheno.gates.strategy import Strategy
from tilpheno.phenotype import TubeData, gate_tube_kind
from tilpheno.transforms import Linear


def _f1(ours, truth):
    return 2 * np.count_nonzero(ours & truth) / (np.count_nonzero(ours) + np.count_nonzero(truth))


def _three_clusters(rng, n=12000):
    """T cells (CD3 high, CD19 low), B cells (CD3 mid, CD19 high: IgD in the CD3 detector), others."""
    sizes = (int(0.5 * n), int(0.2 * n), n - int(0.5 * n) - int(0.2 * n))
    t = rng.multivariate_normal([0.65, 0.20], [[0.03**2, 0.0003], [0.0003, 0.03**2]], sizes[0])
    b = rng.multivariate_normal([0.55, 0.60], [[0.04**2, 0], [0, 0.04**2]], sizes[1])
    o = rng.multivariate_normal([0.20, 0.22], [[0.05**2, 0], [0, 0.04**2]], sizes[2])
    points = np.vstack([t, b, o])
    label = np.repeat([0, 1, 2], sizes)
    return points[:, 0], points[:, 1], label


# --- the cluster gate ------------------------------------------------------------------------


def test_cluster_gate_finds_the_t_cells_against_truth_and_is_deterministic():
    rng = np.random.default_rng(5)
    cd3, cd19, label = _three_clusters(rng)
    p = pl.place_cluster(cd3, cd19, ("CD3", "CD19"), x_side="high", y_side="low")
    inside = p.gate.contains({"CD3": cd3, "CD19": cd19})
    assert _f1(inside, label == 0) >= 0.98          # 99 % ellipse of a Gaussian cluster: ~1 % lost
    assert p.method == "gmm_cluster" and p.flags == ()
    assert p.diagnostics["cluster_weight"] == pytest.approx(0.5, abs=0.05)
    again = pl.place_cluster(cd3, cd19, ("CD3", "CD19"), x_side="high", y_side="low")
    assert again.gate == p.gate                     # fixed seed, single-threaded: bit for bit
    # the B cells are the cluster high on both
    b = pl.place_cluster(cd3, cd19, ("CD3", "CD19"), x_side="any", y_side="high")
    assert _f1(b.gate.contains({"CD3": cd3, "CD19": cd19}), label == 1) >= 0.97


def test_cluster_gate_says_when_the_sides_do_not_single_out_a_cluster():
    rng = np.random.default_rng(6)
    # two clusters side by side on x, the same on y: "high on y" cannot choose between them
    a = rng.multivariate_normal([0.3, 0.5], [[0.02**2, 0], [0, 0.02**2]], 4000)
    b = rng.multivariate_normal([0.7, 0.5], [[0.02**2, 0], [0, 0.02**2]], 4000)
    x, y = np.vstack([a, b]).T
    p = pl.place_cluster(x, y, ("A", "B"), x_side="any", y_side="high")
    assert [f.code for f in p.flags] == ["cluster_ambiguous"]
    with pytest.raises(GatingError, match="side must be one of"):
        pl.place_cluster(x, y, ("A", "B"), x_side="up")
    with pytest.raises(GatingError, match="only 10 events"):
        pl.place_cluster(x[:10], y[:10], ("A", "B"))


# --- the engine: sized flags, declared checks, root denominators -------------------------------


def _tube(data):
    return TubeData(file="x.fcs", sha256="", tube="t", role="stain", fmo_marker=None,
                    data={k: np.asarray(v, float) for k, v in data.items()}, detectors={k: k for k in data},
                    transforms={k: Linear() for k in data}, compensated=True)


STRATEGY = {
    "strategy": "sim", "tube": "t", "markers": ["CD45", "CD3", "CD19", "CD4", "CD8"],
    "transforms": {m: {"kind": "linear"} for m in ["CD45", "CD3", "CD19", "CD4", "CD8"]},
    "populations": [
        # a CD45+ export: the lab states its one population positive (undetermined without a control)
        {"name": "CD45+", "parent": "root", "dims": ["CD45"], "method": "valley",
         "params": {"keep": "high", "one_population": "positive"}},
        {"name": "T cells", "parent": "CD45+", "dims": ["CD3"], "method": "valley", "params": {"keep": "high"}},
        {"name": "CD4+", "parent": "T cells", "dims": ["CD4"], "method": "valley", "params": {"keep": "high"}},
        {"name": "CD8+", "parent": "T cells", "dims": ["CD8"], "method": "valley", "params": {"keep": "high"}},
        {"name": "CD4- CD8-", "parent": "T cells", "expression": "!CD4+ & !CD8+"},
        {"name": "CD4+ or CD8+", "parent": "T cells", "expression": "CD4+ | CD8+"},
    ],
    "checks": [{"kind": "dim_subset", "subset": "CD4- CD8-", "reference": "CD4+ or CD8+", "marker": "CD3"}],
    "variables": {"t_pct": {"numerator": "T cells", "denominator": "root"},
                  "dn_pct": {"numerator": "CD4- CD8-", "denominator": "T cells"}},
}


def _sample(rng, n=20000, dim_dn=0.0, cd45_tail=0.0):
    """All events CD45+ (one population, as in a CD45+ export; ``cd45_tail`` of them dim), 60 % T
    cells (CD3 0.65), half CD4+ half CD8+ with 5 % true double negatives carrying the same CD3,
    plus ``dim_dn`` (fraction of all events) CD3-dim non-T events (CD3 0.47, CD4-CD8-) that the
    CD3 valley keeps; 40 % - ``dim_dn`` CD3- events."""
    n_t, n_dim = int(0.6 * n), int(dim_dn * n)
    n_neg = n - n_t - n_dim
    cd3 = np.concatenate([rng.normal(0.65, 0.03, n_t), rng.normal(0.47, 0.02, n_dim), rng.normal(0.15, 0.04, n_neg)])
    kind = rng.choice(3, n_t, p=[0.475, 0.475, 0.05])     # CD4, CD8, true DN
    cd4 = np.concatenate([np.where(kind == 0, rng.normal(0.7, 0.03, n_t), rng.normal(0.15, 0.03, n_t)),
                          rng.normal(0.15, 0.03, n_dim + n_neg)])
    cd8 = np.concatenate([np.where(kind == 1, rng.normal(0.7, 0.03, n_t), rng.normal(0.15, 0.03, n_t)),
                          rng.normal(0.15, 0.03, n_dim + n_neg)])
    cd45 = rng.normal(0.7, 0.03, n)
    tail = rng.random(n) < cd45_tail
    cd45[tail] = rng.uniform(0.45, 0.6, tail.sum())
    return {"CD45": cd45, "CD3": cd3, "CD19": rng.normal(0.15, 0.03, n), "CD4": cd4, "CD8": cd8}


def _flags(state, code):
    return [f for f in state.flags if f.code == code]


def test_one_population_flag_is_sized_by_what_it_changes():
    strategy = Strategy.from_dict(STRATEGY)
    rng = np.random.default_rng(7)
    # CD45: one bright population (a CD45+ export); its cut moves no T cell: kept as info
    clean = gate_tube_kind(strategy, [_tube(_sample(rng))])[0]
    nsp = _flags(clean, "no_second_peak")
    assert [f.message.split(":")[0] for f in nsp] == ["CD45+ (CD45)"]
    assert nsp[0].severity == "info" and "size: moving the cut to" in nsp[0].message
    assert not any(checks.needs_review(f) for f in clean.flags)
    # 25 % of the events CD45-dim, uniformly between 0.45 and 0.6, 60 % of them T cells:
    # where the one-population cut lies now changes the T cells' % of all events by points
    smear = gate_tube_kind(strategy, [_tube(_sample(rng, cd45_tail=0.25))])[0]
    nsp = _flags(smear, "no_second_peak")
    assert nsp and nsp[0].severity == "warning" and checks.needs_review(nsp[0])
    points = float(nsp[0].message.split("changes t_pct by ")[1].split(" points")[0])
    assert points > checks.IMPACT_POINTS


def test_dim_double_negatives_are_flagged_with_their_size():
    strategy = Strategy.from_dict(STRATEGY)
    rng = np.random.default_rng(8)
    clean = gate_tube_kind(strategy, [_tube(_sample(rng))])[0]
    assert _flags(clean, "dim_subset_events") == []
    # 4 % of all events are CD3-dim non-T events above the CD3 valley: 4 / (60 + 4) = 6.25 points of T cells
    state = gate_tube_kind(strategy, [_tube(_sample(rng, dim_dn=0.04))])[0]
    n_t = np.count_nonzero(state.masks["T cells"])
    assert n_t == pytest.approx(0.64 * 20000, rel=0.02)     # the valley keeps them (the silent error)
    flag = _flags(state, "dim_subset_events")
    assert len(flag) == 1 and flag[0].message.startswith("T cells (CD3): ") and checks.needs_review(flag[0])
    excess = float(flag[0].message.split("T cells (CD3): ")[1].split(" points")[0])
    assert excess == pytest.approx(6.25, abs=1.0)     # less the 5 % of the true DN expected below the 5th percentile
    # the function alone: nothing below the reference's 5th percentile beyond 5 % -> no flag
    ref = rng.normal(0.65, 0.03, 5000)
    size, none = checks.dim_subset_flag("T cells", "DN", "SP", "CD3", rng.normal(0.65, 0.03, 500), ref, 5500)
    assert none is None and abs(size) < 0.5


def test_root_denominator_and_checks_are_validated():
    strategy = Strategy.from_dict(STRATEGY)
    rng = np.random.default_rng(9)
    state = gate_tube_kind(strategy, [_tube(_sample(rng))])[0]
    from tilpheno.phenotype import tube_variables
    values = tube_variables(strategy, state)
    assert values["t_pct"] == pytest.approx(100 * np.count_nonzero(state.masks["T cells"]) / 20000, abs=1e-9)
    bad = {**STRATEGY, "checks": [{"kind": "dim_subset", "subset": "nope", "reference": "T cells", "marker": "CD3"}]}
    with pytest.raises(StrategyError, match=r"checks\[0\]\.subset: unknown population 'nope'"):
        Strategy.from_dict(bad)
    bad = {**STRATEGY, "checks": [{"kind": "other"}]}
    with pytest.raises(StrategyError, match="kind: dim_subset"):
        Strategy.from_dict(bad)
    bad = {**STRATEGY, "variables": {"x": {"numerator": "root", "denominator": "T cells"}}}
    with pytest.raises(StrategyError, match="unknown population 'root'"):
        Strategy.from_dict(bad)


def test_cluster_method_from_a_strategy():
    rng = np.random.default_rng(10)
    cd3, cd19, label = _three_clusters(rng)
    doc = {"strategy": "c", "tube": "t", "markers": ["CD3", "CD19"],
           "transforms": {"CD3": {"kind": "linear"}, "CD19": {"kind": "linear"}},
           "populations": [{"name": "T cells", "parent": "root", "dims": ["CD3", "CD19"], "method": "cluster",
                            "params": {"x_side": "high", "y_side": "low"}}]}
    state = gate_tube_kind(Strategy.from_dict(doc), [_tube({"CD3": cd3, "CD19": cd19})])[0]
    assert _f1(state.masks["T cells"], label == 0) >= 0.98
    with pytest.raises(StrategyError, match="x_side"):
        Strategy.from_dict({**doc, "populations": [{**doc["populations"][0], "params": {"x_side": "up"}}]})


def _unstained_case(n: int = 10000):
    """The synthetic tube gated by STRATEGY, the generator, and an unstained control of ``n`` events
    near 0.15 on every marker (none above a cut)."""
    strategy = Strategy.from_dict(STRATEGY)
    rng = np.random.default_rng(11)
    state = gate_tube_kind(strategy, [_tube(_sample(rng))])[0]
    control = {"CD45": rng.normal(0.15, 0.03, n), "CD3": rng.normal(0.15, 0.04, n), "CD19": rng.normal(0.15, 0.03, n),
               "CD4": rng.normal(0.15, 0.03, n), "CD8": rng.normal(0.15, 0.03, n)}
    return strategy, state, rng, control


def test_positives_in_an_unstained_control_are_flagged_with_their_share():
    from tilpheno.phenotype import unstained_check

    n = 10000
    strategy, state, rng, control = _unstained_case(n)
    checked = unstained_check(strategy, state, _tube(control))
    clean = checked.flags
    assert [f.code for f in clean] == ["unstained_control"] and clean[0].severity == "info" and checked.cuts == {}
    # CD45+ on all events; T cells, CD4+, CD8+ on all events too (their parents are stained gates)
    assert "CD45+ 0.00% of 10000 root events; T cells 0.00% of 10000 root events" in clean[0].message
    # 3 % of the control's cells autofluorescent in the CD3 detector, above the stained tube's cut
    bright = rng.random(n) < 0.03
    control["CD3"] = np.where(bright, rng.normal(0.7, 0.03, n), control["CD3"])
    checked = unstained_check(strategy, state, replace(_tube(control), file="unstained.fcs"))
    flags = checked.flags
    flag = [f for f in flags if f.code == "unstained_positive"]
    assert len(flag) == 1 and flag[0].message.startswith("T cells (CD3): ") and checks.needs_review(flag[0])
    share = float(flag[0].message.split("T cells (CD3): ")[1].split("%")[0])
    assert share == pytest.approx(100 * bright.mean(), abs=0.2)
    # raised on the control (qc.csv), the stained file in gate_file (as the engine sets it), it lands on the gate it names in that file (the
    # review page's plot, the report's figure), not on a gate of that name in another stained tube
    from tilpheno.qc import QCFlag, flags_on_gate

    assert flag[0].gate == "T cells"
    raised = QCFlag("P", "unstained.fcs", flag[0].code, flag[0].severity, flag[0].message, flag[0].gate, "x.fcs")
    assert "(unstained.fcs) against the stained tube x.fcs" in raised.message
    assert flags_on_gate([raised], "T cells", "x.fcs") == [raised]
    assert flags_on_gate([raised], "T cells", "y.fcs") == [] and flags_on_gate([raised], "CD4+", "x.fcs") == []


def test_the_cut_an_unstained_control_offers_is_the_lowest_that_clears_its_flag():
    """A gate flagged ``unstained_positive`` gave the reviewer no cut that would clear it (the review
    app's candidates ignored the flag). The check now records one: moved there (as the app moves a
    gate to a candidate, just above the cut) the gate is no longer flagged, and moved down to the
    next control value below it, it is; the control's events above it are at most 1 % (by count)."""
    from tilpheno.gates.geometry import RangeGate
    from tilpheno.phenotype import unstained_check
    from tilpheno.review.regate import candidate_coordinate

    n = 10000
    strategy, state, rng, control = _unstained_case(n)
    bright = rng.random(n) < 0.03
    control["CD3"] = np.where(bright, rng.normal(0.7, 0.03, n), control["CD3"])
    control = replace(_tube(control), file="unstained.fcs")
    checked = unstained_check(strategy, state, control)
    [cut] = checked.cuts.values()
    assert list(checked.cuts) == ["T cells"] and cut > [g for p, _, g, _ in state.gates if p == "T cells"][0].low
    cd3 = control.data["CD3"]   # T cells' parent is stained-defined (CD45+): counted on every control event
    assert np.count_nonzero(cd3 > cut) <= 0.01 * n < np.count_nonzero(cd3 >= cut)

    def flagged_at(value: float) -> bool:
        gates = [(p, parent, RangeGate("CD3", candidate_coordinate("low", value), None) if p == "T cells" else g, m)
                 for p, parent, g, m in state.gates]
        return any(f.code == "unstained_positive" for f in unstained_check(strategy, replace(state, gates=gates),
                                                                            control).flags)

    assert not flagged_at(cut) and flagged_at(float(np.max(cd3[cd3 < cut])))


def test_a_control_without_one_detector_is_used_for_the_markers_it_has():
    """An unstained control without the CD45 detector (FlowAtlas 390C) checked none of the stained
    file's gates: the first gate, CD45+, stopped them all, and the one-population cut had no control
    events. CD45+ holds no unstained event (no stain), so T cells, CD4+ and CD8+ are judged on all
    the control's events, as with the detector; one info line names the missing marker and CD45+,
    the gate left without the check."""
    from tilpheno.phenotype import _on_control, unstained_check, unstained_reading

    n = 10000
    strategy, state, rng, control = _unstained_case(n)
    bright = rng.random(n) < 0.03   # 3 % of the control autofluorescent above the stained tube's CD3 cut
    control["CD3"] = np.where(bright, rng.normal(0.7, 0.03, n), control["CD3"])
    lacking = replace(_tube({k: v for k, v in control.items() if k != "CD45"}), file="unstained.fcs")
    whole = replace(_tube(control), file="unstained.fcs")

    checked, reference = unstained_check(strategy, state, lacking), unstained_check(strategy, state, whole)
    positive = [f for f in checked.flags if f.code == "unstained_positive"]
    assert [f.gate for f in positive] == ["T cells"]
    share = float(positive[0].message.split("T cells (CD3): ")[1].split("%")[0])
    assert share == pytest.approx(100 * bright.mean(), abs=0.2)
    assert checked.cuts == reference.cuts
    listed = [f.message for f in checked.flags if f.code == "unstained_control"]
    assert listed[0] == next(f.message for f in reference.flags if f.code == "unstained_control").replace(
        "CD45+ 0.00% of 10000 root events; ", "")
    assert listed[1] == ("the unstained control unstained.fcs has no detector for CD45 (CD45), which the x.fcs gate(s) "
                         "CD45+ read: an unstained event is taken as negative for it (below their cut); positive gates "
                         "not checked on the control: CD45+")
    assert all(f.severity == "info" for f in checked.flags if f.code == "unstained_control")
    t_cells = next(p for p in strategy.populations if p.name == "T cells")
    on_lacking = _on_control(strategy, state.gates, lacking)   # the stained file's gates applied to the control
    np.testing.assert_array_equal(unstained_reading(strategy, on_lacking, t_cells.dims[0], t_cells.parent)[1], control["CD3"])
    cd45 = next(p for p in strategy.populations if p.name == "CD45+")
    assert unstained_reading(strategy, on_lacking, cd45.dims[0], cd45.parent) is None


def test_a_control_without_a_detector_of_a_two_marker_gate_leaves_it_and_the_gates_below_unchecked():
    """T cells as a cluster on CD3 vs CD19, CD4+ below it; the control has no CD19 detector: the
    cluster gate cannot be applied to it (no stain-free answer for a 2-D gate), so neither T cells
    nor CD4+ is checked, and the info line says so rather than 'taken as negative'."""
    from tilpheno.phenotype import unstained_check

    rng = np.random.default_rng(10)
    cd3, cd19, _ = _three_clusters(rng)
    cd4 = np.where(rng.random(cd3.size) < 0.5, 0.7, 0.15) + rng.normal(0, 0.03, cd3.size)
    markers = ["CD3", "CD19", "CD4"]
    strategy = Strategy.from_dict({
        "strategy": "c", "tube": "t", "markers": markers, "transforms": {m: {"kind": "linear"} for m in markers},
        "populations": [{"name": "T cells", "parent": "root", "dims": ["CD3", "CD19"], "method": "cluster",
                         "params": {"x_side": "high", "y_side": "low"}},
                        {"name": "CD4+", "parent": "T cells", "dims": ["CD4"], "method": "valley",
                         "params": {"keep": "high"}}]})
    state = gate_tube_kind(strategy, [_tube({"CD3": cd3, "CD19": cd19, "CD4": cd4})])[0]
    control = _tube({"CD3": rng.normal(0.15, 0.03, 5000), "CD4": rng.normal(0.15, 0.03, 5000)})
    assert [(f.code, f.message) for f in unstained_check(strategy, state, control).flags] == [(
        "unstained_control", "the unstained control x.fcs has no detector for CD19 (CD19), which the x.fcs gate(s) "
        "T cells read: not evaluable on the control: T cells and the gates below; positive gates not checked on the "
        "control: CD4+")]


def test_a_reference_gate_with_one_population_is_sized_on_the_parent_it_is_applied_to():
    """CD8 placed on CD4- T cells (all CD8+ there: one population) and applied to all T cells, whose
    CD4+ cells carry a CD8 smear (as 390C_Lung): the one-population cut is compared with the same
    rule on all T cells; the double positives it decides are many points -> review. (Its side stated,
    one_population: positive: undetermined, dp_pct would rest on it, blank, and its size not quoted.)"""
    rng = np.random.default_rng(13)
    n = 20000
    cd4_pos = rng.random(n) < 0.6
    cd8 = np.where(cd4_pos, rng.uniform(0.1, 0.6, n), rng.normal(0.7, 0.03, n))   # CD4+: a CD8 smear
    cd4 = np.where(cd4_pos, rng.normal(0.7, 0.03, n), rng.normal(0.15, 0.03, n))
    doc = {"strategy": "r", "tube": "t", "markers": ["CD4", "CD8"],
           "transforms": {"CD4": {"kind": "linear"}, "CD8": {"kind": "linear"}},
           "populations": [
               {"name": "CD4+", "parent": "root", "dims": ["CD4"], "method": "valley", "params": {"keep": "high"}},
               {"name": "CD4-", "parent": "root", "expression": "!CD4+"},
               {"name": "CD8+", "parent": "root", "dims": ["CD8"], "method": "valley",
                "params": {"keep": "high", "reference": "CD4-", "one_population": "positive"}},
               {"name": "DP", "parent": "root", "expression": "CD4+ & CD8+"}],
           "variables": {"dp_pct": {"numerator": "DP", "denominator": "root"}}}
    state = gate_tube_kind(Strategy.from_dict(doc), [_tube({"CD4": cd4, "CD8": cd8})])[0]
    flag = _flags(state, "no_second_peak")
    assert flag and flag[0].message.startswith("CD8+ (CD8): ") and flag[0].severity == "warning"
    points = float(flag[0].message.split("changes dp_pct by ")[1].split(" points")[0])
    cut = state.diagnostics["CD8+"]["threshold"]
    alternative = state.diagnostics["CD8+"]["alternative_cuts"]["no_second_peak"][0]
    truth = 100 * np.mean(cd4_pos & (cd8 > min(cut, alternative)) & (cd8 <= max(cut, alternative)))
    assert points == pytest.approx(truth, abs=0.1)   # the DP events between the two cuts
    assert points > checks.IMPACT_POINTS
