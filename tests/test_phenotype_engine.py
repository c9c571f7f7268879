"""The gating engine on synthetic TubeData: FMO threshold transfer, fallback, fixed and boolean gates."""
import textwrap

import numpy as np
import pytest

from tilpheno.gates.strategy import Strategy, parse_strategy
from tilpheno.phenotype import TubeData, gate_tube_kind, population_table, tube_variables
from tilpheno.transforms import Linear, Logicle


def linear_strategy(name: str, tube: str, markers: list[str], body: str) -> Strategy:
    """Strategy ``name`` (file ``<name>.yaml``) of tube kind ``tube`` with ``markers`` on linear
    scales; ``body``: its ``populations`` (and ``variables``) as YAML."""
    header = (f"strategy: {name}\ntube: {tube}\nmarkers: [{', '.join(markers)}]\n"
              f"transforms: {{{', '.join(f'{m}: {{kind: linear}}' for m in markers)}}}\n")
    return parse_strategy(header + textwrap.dedent(body), f"{name}.yaml")


STRATEGY = linear_strategy("toy", "surface", ["CD3", "CD56"], """\
    populations:
      - name: big
        parent: root
        dims: [FSC-A]
        method: fixed
        params: {gate: {type: range, dim: FSC-A, low: 100, high: null}}
      - name: CD3+
        parent: big
        dims: [CD3]
        method: fmo
        params: {percentile: 99, rule: percentile}
      - name: CD56+
        parent: big
        dims: [CD56]
        method: fmo
        params: {rule: percentile}
      - name: NK
        parent: big
        expression: CD56+ & !CD3+
    variables:
      nk_pct: {numerator: NK, denominator: big}
    """)


def tube(role, fmo_marker, seed, n=20000):
    rng = np.random.default_rng(seed)
    fsc = rng.uniform(0, 200, n)
    cd3_pos = rng.random(n) < 0.7
    cd56_pos = rng.random(n) < 0.2
    cd3 = rng.normal(0, 1, n) + np.where(cd3_pos & (fmo_marker != "CD3"), 10.0, 0.0)
    cd56 = rng.normal(0, 1, n) + np.where(cd56_pos & (fmo_marker != "CD56"), 10.0, 0.0)
    data = {"FSC-A": fsc, "CD3": cd3, "CD56": cd56}
    return TubeData(f"{role}_{fmo_marker}.fcs", "0" * 64, "surface", role, fmo_marker, data,
                    {"CD3": "FITC-A", "CD56": "APC-A"}, {k: Linear() for k in data}, True), cd3_pos, cd56_pos


def test_fmo_thresholds_are_transferred_from_the_fmo_parent():
    stained, cd3_pos, cd56_pos = tube("stain", None, 1)
    fmo3, _, _ = tube("fmo", "CD3", 2)
    fmo56, _, _ = tube("fmo", "CD56", 3)
    states = gate_tube_kind(STRATEGY, [stained, fmo3, fmo56], fmo_percentile=99.5)
    s = states[0]
    big = stained.data["FSC-A"] >= 100
    assert np.array_equal(s.masks["big"], big)
    thr3 = np.percentile(fmo3.data["CD3"][fmo3.data["FSC-A"] >= 100], 99)     # population's own percentile
    thr56 = np.percentile(fmo56.data["CD56"][fmo56.data["FSC-A"] >= 100], 99.5)  # the run's percentile
    assert np.array_equal(s.masks["CD3+"], big & (stained.data["CD3"] > thr3))
    assert np.array_equal(s.masks["CD56+"], big & (stained.data["CD56"] > thr56))
    assert np.array_equal(s.masks["NK"], s.masks["CD56+"] & ~s.masks["CD3+"])
    rows = {r["population"]: r for r in s.thresholds}
    assert rows["CD3+"]["source_file"] == "fmo_CD3.fcs" and rows["CD3+"]["percentile"] == 99.0
    assert rows["CD56+"]["value_transformed"] == thr56
    # the same threshold gates the other FMO file (CD3 is stained there)
    assert np.array_equal(states[2].masks["CD3+"], (fmo56.data["FSC-A"] >= 100) & (fmo56.data["CD3"] > thr3))
    # and agrees with the labels
    truth_nk = 100 * np.sum(big & cd56_pos & ~cd3_pos) / big.sum()
    assert tube_variables(STRATEGY, s)["nk_pct"] == pytest.approx(truth_nk, abs=0.5)
    table = population_table(STRATEGY, s).set_index("population")
    assert table.loc["NK", "count"] == s.masks["NK"].sum()
    assert table.loc["CD3+", "median_CD3"] == pytest.approx(np.median(stained.data["CD3"][s.masks["CD3+"]]))
    assert not any(f.code in ("missing_fmo", "fallback_gate") for st in states for f in st.flags)


def test_missing_fmo_uses_stained_density_and_flags():
    stained, cd3_pos, _ = tube("stain", None, 4)
    fmo56, _, _ = tube("fmo", "CD56", 5)
    states = gate_tube_kind(STRATEGY, [stained, fmo56])
    s = states[0]
    codes = [f.code for f in s.flags]
    assert "missing_fmo" in codes and "fallback_gate" in codes
    row = next(r for r in s.thresholds if r["population"] == "CD3+")
    assert row["source_file"] == "" and row["method"] == "fallback_density_valley"
    assert 2 < row["value_transformed"] < 8  # the valley between N(0,1) and N(10,1)
    big = stained.data["FSC-A"] >= 100
    assert (s.masks["CD3+"][big] == cd3_pos[big]).mean() > 0.999


def test_unplaceable_gate_is_flagged_not_raised():
    stained, _, _ = tube("stain", None, 6)
    stained.data["FSC-A"][:] = 0.0  # nobody passes the fixed gate
    states = gate_tube_kind(STRATEGY, [stained])
    assert states[0].masks["big"].sum() == 0
    assert "gate_failed" in [f.code for f in states[0].flags]
    assert np.isnan(tube_variables(STRATEGY, states[0])["nk_pct"])


def test_a_threshold_gate_that_cannot_be_placed_is_named_in_its_flag():
    """No event in the parent of the FMO gates (stained tube and CD3 FMO): each fmo gate's
    gate_failed flag said only 'density threshold: only 0 events ...', twice per file, naming no
    gate, so neither the report nor the review app could tell which gate failed or put the flag on
    it (qc.flags_naming_gate). Now each opens with its gate, '<population> (<marker>): '."""
    from tilpheno.qc import QCFlag, flags_naming_gate

    stained, _, _ = tube("stain", None, 6)
    fmo3, _, _ = tube("fmo", "CD3", 2)
    for t in (stained, fmo3):
        t.data["FSC-A"][:] = 0.0   # nobody passes the fixed gate 'big'
    states = gate_tube_kind(STRATEGY, [stained, fmo3])
    failed = sorted(f.message.split(": ")[0] for f in states[0].flags if f.code == "gate_failed")
    assert failed == ["CD3+ (CD3)", "CD56+ (CD56)"]
    flags = [QCFlag("P", stained.file, f.code, f.severity, f.message, f.gate) for f in states[0].flags]
    assert [f.code for f in flags_naming_gate(flags, "CD56+", stained.file)] == ["gate_failed"]


NESTED = linear_strategy("nested", "surface", ["CD3", "CD56"], """\
    populations:
      - {name: big, parent: root, dims: [FSC-A], method: fixed, params: {gate: {type: range, dim: FSC-A, low: 100, high: null}}}
      - {name: CD3+, parent: big, dims: [CD3], method: fmo, params: {percentile: 99.99, rule: percentile}}
      - {name: CD56+, parent: CD3+, dims: [CD56], method: valley}
    variables:
      nkt_pct: {numerator: CD56+, denominator: CD3+}
    """)


def test_a_gate_within_an_fmos_own_marker_gate_that_cannot_be_placed_there_holds_no_release():
    """The CD45 FMO of a drafted study (tests/data/newlab: live -> CD45+ -> live_lymph, the
    lymphocyte gate placed on each file) holds no CD45+ event, so its live_lymph gate could not be
    placed: a gate_failed *error* on the FMO file, every product 'needs review' and its release 'not
    evaluable', though no threshold is read from that population of that FMO (CD3+ takes its cut
    from the CD3 FMO). Now such a failure, within a gate on the FMO's own omitted marker, is info,
    saying why; the same failure in another marker's FMO (its CD3+ emptied) stays an error."""
    from tilpheno.qc import QCFlag, needs_review

    stained, _, _ = tube("stain", None, 11)
    fmo3, _, _ = tube("fmo", "CD3", 12)
    fmo56, _, _ = tube("fmo", "CD56", 13)
    fmo56.data["CD3"][:] = 0.0   # another marker's FMO whose CD3+ is empty: its failure still holds release
    states = gate_tube_kind(NESTED, [stained, fmo3, fmo56])
    assert states[1].masks["CD3+"].sum() < 10   # the CD3 FMO above its own 99.99th percentile
    failed = {st.tube.file: f for st in states for f in st.flags if f.code == "gate_failed"}
    assert set(failed) == {"fmo_CD3.fcs", "fmo_CD56.fcs"}
    within, other = failed["fmo_CD3.fcs"], failed["fmo_CD56.fcs"]
    assert within.severity == "info" and within.gate == "CD56+"
    assert "the FMO omits CD3" in within.message and "CD3+" in within.message
    assert other.severity == "error"
    as_qc = [QCFlag("P", name, f.code, f.severity, f.message, f.gate) for name, f in failed.items()]
    assert [f.file for f in as_qc if needs_review(f)] == ["fmo_CD56.fcs"]
    assert not any(f.code == "gate_failed" for f in states[0].flags)


def test_a_population_named_as_the_prefix_of_another_does_not_take_its_flags():
    """Populations 'CD56+' (a fixed cut) and 'CD56+ (bright)' (an FMO gate without its FMO: the
    engine falls back on the stained density, flags missing_fmo and fallback_gate). The flags were
    found on a gate by their message opening with '<population> (': 'CD56+ (bright) (CD56): no FMO
    file ...' opens with 'CD56+ (', so the report and the review app showed both flags on the
    CD56+ gate as well. Now a flag is on the gate its ``gate`` names, and on no other."""
    from tilpheno.qc import QCFlag, flags_naming_gate

    strategy = linear_strategy("prefix", "surface", ["CD3", "CD56"], """\
        populations:
          - {name: big, parent: root, dims: [FSC-A], method: fixed,
             params: {gate: {type: range, dim: FSC-A, low: 100, high: null}}}
          - {name: CD56+, parent: big, dims: [CD56], method: fixed,
             params: {gate: {type: range, dim: CD56, low: 5, high: null}}}
          - {name: CD56+ (bright), parent: big, dims: [CD56], method: fmo, params: {rule: percentile}}
        variables:
          cd56_pct: {numerator: CD56+, denominator: big}
        """)
    stained, _, _ = tube("stain", None, 6)
    (state,) = gate_tube_kind(strategy, [stained])
    flags = [QCFlag("P", stained.file, f.code, f.severity, f.message, f.gate) for f in state.flags]
    assert {f.code for f in flags} >= {"missing_fmo", "fallback_gate"}
    assert all(f.message.startswith("CD56+ (bright) (CD56): ") for f in flags)
    assert flags_naming_gate(flags, "CD56+", stained.file) == []
    assert flags_naming_gate(flags, "CD56+ (bright)", stained.file) == flags


def test_reference_gate_places_the_cut_on_another_population_and_applies_it_to_the_parent():
    # CD4+ cells carry a CD8 smear with no valley; CD4- cells are CD8- (DN) or CD8+ (bimodal).
    # The CD8 cut placed on CD4- cells lies between DN and CD8+, whatever the CD4+ smear does.
    strategy = linear_strategy("ref", "t", ["CD4", "CD8"], """\
        populations:
          - {name: CD4+, parent: root, dims: [CD4], method: valley, params: {keep: high}}
          - {name: CD4-, parent: root, expression: "!CD4+"}
          - {name: CD8+, parent: root, dims: [CD8], method: valley, params: {keep: high, reference: CD4-}}
          - {name: CD8 own, parent: root, dims: [CD8], method: valley, params: {keep: high}}
        """)
    assert strategy.population("CD8+").depends_on == ("CD4-",)
    rng = np.random.default_rng(3)
    n4, ndn, n8 = 9000, 1500, 3000
    cd4 = np.concatenate([rng.normal(0.7, 0.03, n4), rng.normal(0.2, 0.03, ndn + n8)])
    cd8 = np.concatenate([rng.uniform(0.1, 0.55, n4), rng.normal(0.2, 0.03, ndn), rng.normal(0.75, 0.03, n8)])
    tube = TubeData("t.fcs", "0" * 64, "t", "stain", None, {"CD4": cd4, "CD8": cd8}, {},
                    {"CD4": Linear(), "CD8": Linear()}, True)
    st = gate_tube_kind(strategy, [tube])[0]
    cut = st.diagnostics["CD8+"]["threshold"]
    assert st.diagnostics["CD8+"]["reference"] == "CD4-"
    assert 0.3 < cut < 0.65                                    # between DN (0.2) and CD8+ (0.75)
    assert st.masks["CD8+"][n4 + ndn:].mean() > 0.99 and st.masks["CD8+"][n4:n4 + ndn].mean() < 0.01
    assert st.masks["CD8+"][:n4].mean() == pytest.approx(np.mean(cd8[:n4] > cut))   # applied to all events
    with pytest.raises(Exception, match="unknown reference 'nope'"):
        parse_strategy(textwrap.dedent(
            """\
            strategy: bad
            tube: t
            markers: [CD8]
            populations:
              - {name: CD8+, parent: root, dims: [CD8], method: valley, params: {keep: high, reference: nope}}
            """), "bad.yaml")


class _CountingLogicle(Logicle):
    """A Logicle that counts its inverse calls (class-wide)."""

    inverse_calls: list[int] = []

    def inverse(self, y):
        self.inverse_calls.append(int(np.size(y)))
        return super().inverse(y)


def test_population_medians_are_mapped_back_with_one_inverse_per_marker():
    stained, _, _ = tube("stain", None, 7)
    fmo3, _, _ = tube("fmo", "CD3", 8)
    fmo56, _, _ = tube("fmo", "CD56", 9)
    for t in (stained, fmo3, fmo56):   # markers on the logicle scale (about 0.2 negative, 0.6 positive)
        for m in ("CD3", "CD56"):
            t.data[m] = 0.2 + 0.04 * t.data[m]
        t.transforms.update({m: _CountingLogicle() for m in ("CD3", "CD56")})
    s = gate_tube_kind(STRATEGY, [stained, fmo3, fmo56])[0]
    s.masks["NK"] = np.zeros(stained.n_events, dtype=bool)   # an empty population: NaN medians
    _CountingLogicle.inverse_calls.clear()
    table = population_table(STRATEGY, s).set_index("population")
    # one inverse per marker, over every population's median (was one per population and marker)
    assert _CountingLogicle.inverse_calls == [4, 4]
    truth = Logicle()
    for pop in ("big", "CD3+", "CD56+"):
        for m in ("CD3", "CD56"):
            expected = truth.inverse(np.array([np.median(stained.data[m][s.masks[pop]])]))[0]
            assert table.loc[pop, f"median_{m}"] == expected
    assert np.isnan(table.loc["NK", "median_CD3"]) and np.isnan(table.loc["NK", "median_CD56"])
    assert list(table.columns[-2:]) == ["median_CD3", "median_CD56"]
