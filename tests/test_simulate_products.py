"""Simulated products: files as the design says, determinism, label truth, FMO reference, optics.

Independent checks: files are read back with flowio/FlowKit (not tilpheno's reader), compensation
is FlowKit's, and the label percentages are recomputed here from the per-event labels.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

flowio = pytest.importorskip("flowio")
fk = pytest.importorskip("flowkit")

from tilpheno.simulate import instrument as ins
from tilpheno.simulate.cohort import simulate_cohort, simulate_product, write_product
from tilpheno.simulate.products import KIND_DEBRIS, KIND_DOUBLET, KIND_LARGE, KIND_LYMPH, TUBES

N_EVENTS = 20000


@pytest.fixture(scope="module")
def product():
    return simulate_product("TIL007", 20240607, n_events=N_EVENTS)


@pytest.fixture(scope="module")
def written(product, tmp_path_factory):
    out = tmp_path_factory.mktemp("product")
    write_product(product, out)
    return out


def _comp_events(path):
    """FlowKit's compensated events (from the file's own $SPILLOVER) and channel names."""
    sample = fk.Sample(str(path))
    sample.apply_compensation(sample.metadata["spillover"])
    return sample.get_events(source="comp"), sample.pnn_labels


def _col(names, name):
    return names.index(name)


def test_files_names_and_keywords(product, written):
    expected = {
        "TIL007_surface_stain.fcs", "TIL007_surface_FMO_CD3.fcs", "TIL007_surface_FMO_CD4.fcs",
        "TIL007_surface_FMO_CD8.fcs", "TIL007_surface_FMO_CD56.fcs", "TIL007_surface_FMO_PD1.fcs",
        "TIL007_treg_stain.fcs", "TIL007_treg_FMO_FoxP3.fcs", "TIL007_unstained.fcs",
    }
    assert {p.name for p in written.iterdir()} == expected
    fd = flowio.FlowData(str(written / "TIL007_surface_stain.fcs"))
    assert fd.version == "3.1"
    assert fd.text["datatype"] == "F" and fd.text["byteord"] == "1,2,3,4" and fd.text["tot"] == str(N_EVENTS)
    assert fd.text["src"] == "TIL007" and fd.text["fil"] == "TIL007_surface_stain.fcs"
    assert fd.text["tube name"] == "Surface stain" and fd.text["timestep"] == "0.01"
    assert fd.pnn_labels == ["FSC-A", "FSC-H", "SSC-A", "SSC-H", "FITC-A", "PE-A", "PerCP-Cy5-5-A",
                             "APC-A", "BV421-A", "APC-H7-A", "Time"]
    assert fd.pns_labels[4:10] == ["CD3 FITC", "PD1 PE", "7AAD", "CD56 APC", "CD4 BV421", "CD8 APC-H7"]
    assert all(fd.text[f"p{i}r"] == "262144" for i in range(1, 12))
    spill = fd.text["spillover"].split(",")
    assert spill[0] == "6" and spill[1:7] == list(ins.DETECTORS)

    treg = flowio.FlowData(str(written / "TIL007_treg_stain.fcs"))
    assert treg.pns_labels[4:10] == ["CD3 FITC", "FoxP3 PE", "", "", "CD4 BV421", ""]
    assert treg.text["tube name"] == "Treg stain"
    unstained = flowio.FlowData(str(written / "TIL007_unstained.fcs"))
    assert all(p == "" for p in unstained.pns_labels)


@pytest.mark.parametrize("marker, detector", [("CD3", "FITC-A"), ("CD4", "BV421-A"), ("CD8", "APC-H7-A"),
                                              ("CD56", "APC-A"), ("PD1", "PE-A")])
def test_fmo_tube_lacks_marker_pns_and_signal(product, written, marker, detector):
    label = marker.lower()
    fmo_path = written / f"TIL007_surface_FMO_{marker}.fcs"
    fd = flowio.FlowData(str(fmo_path))
    assert fd.text["tube name"] == f"FMO {marker}"
    j = fd.pnn_labels.index(detector)
    assert fd.pns_labels[j] == ""
    assert sum(1 for p in fd.pns_labels if p) == 5  # the other five stains are there

    fmo, names = _comp_events(fmo_path)
    stain, _ = _comp_events(written / "TIL007_surface_stain.fcs")
    t_fmo = product.tube("surface", "fmo", marker).data
    t_stain = product.tube("surface", "stain").data
    live_f = (t_fmo.kind == KIND_LYMPH) & ~t_fmo.labels["dead"]
    live_s = (t_stain.kind == KIND_LYMPH) & ~t_stain.labels["dead"]
    c = _col(names, detector)
    # In the FMO tube, marker+ cells look like marker- cells; in the stain tube they do not.
    pos_f = np.median(fmo[live_f & t_fmo.labels[label], c])
    neg_f = np.median(fmo[live_f & ~t_fmo.labels[label], c])
    pos_s = np.median(stain[live_s & t_stain.labels[label], c])
    neg_s = np.median(stain[live_s & ~t_stain.labels[label], c])
    assert abs(pos_f - neg_f) < 60
    assert pos_s - neg_s > 300


def test_spillover_in_raw_removed_by_compensation(product, written):
    """Raw PE-A of CD3+ (FITC-bright) cells carries FITC spill; the file's $SPILLOVER removes it."""
    path = written / "TIL007_surface_FMO_PD1.fcs"
    raw = fk.Sample(str(path)).get_events(source="raw")
    comp, names = _comp_events(path)
    t = product.tube("surface", "fmo", "PD1").data
    live = (t.kind == KIND_LYMPH) & ~t.labels["dead"]
    pe = _col(names, "PE-A")
    cd3p, cd3n = live & t.labels["cd3"], live & ~t.labels["cd3"]
    assert np.median(raw[cd3p, pe]) - np.median(raw[cd3n, pe]) > 800
    assert abs(np.median(comp[cd3p, pe]) - np.median(comp[cd3n, pe])) < 60
    # negatives spread around zero after compensation (so a logicle display shows them)
    assert np.mean(comp[cd3n, pe] < 0) > 0.1
    assert abs(np.median(comp[cd3n, pe])) < 150


def test_scatter_and_viability_structure(product):
    t = product.tube("surface", "stain").data
    ev = t.events.astype(np.float64)
    fsc_a, fsc_h, aad = ev[:, 0], ev[:, 1], ev[:, 6]
    ratio = fsc_h / np.maximum(fsc_a, 1.0)
    lymph_live = (t.kind == KIND_LYMPH) & ~t.labels["dead"]
    dead = (t.kind == KIND_LYMPH) & t.labels["dead"]
    assert np.median(ratio[t.kind == KIND_DOUBLET]) < np.median(ratio[lymph_live]) - 0.15
    assert np.median(fsc_a[t.kind == KIND_DEBRIS]) < 0.3 * np.median(fsc_a[lymph_live])
    assert np.median(fsc_a[t.kind == KIND_LARGE]) > 1.7 * np.median(fsc_a[lymph_live])
    assert np.median(aad[dead]) > 20 * max(np.median(aad[lymph_live]), 100.0)
    assert np.median(fsc_a[dead]) < np.median(fsc_a[lymph_live])
    assert np.all(ev[:, :10] <= ins.SATURATION)
    assert np.all(np.diff(ev[:, 10]) >= 0)  # Time increases


def _pct(mask, parent):
    return 100.0 * np.sum(mask & parent) / np.sum(parent)


def test_label_truth_recomputed_from_labels(product):
    s = product.tube("surface", "stain").data
    r = product.tube("treg", "stain").data
    L = s.labels
    singlets = np.isin(s.kind, [KIND_LYMPH, KIND_LARGE])
    live = (s.kind == KIND_LYMPH) & ~L["dead"]
    cd3 = live & L["cd3"]
    cd8 = cd3 & L["cd8"]
    expected = {
        "viability_pct": _pct(~L["dead"], singlets),
        "cd3_pct_of_live_lymph": _pct(L["cd3"], live),
        "cd4_pct_of_cd3": _pct(L["cd4"], cd3),
        "cd8_pct_of_cd3": _pct(L["cd8"], cd3),
        "nk_pct_of_live_lymph": _pct(L["cd56"] & ~L["cd3"], live),
        "nkt_pct_of_live_lymph": _pct(L["cd56"] & L["cd3"], live),
        "pd1_pct_of_live_lymph": _pct(L["pd1"], live),
        "cd8pd1_pct_of_cd8": _pct(L["pd1"], cd8),
        "cd8pd1_pct_of_cd3": _pct(L["pd1"] & cd8, cd3),
        "cd4foxp3_pct_of_cd4": _pct(r.labels["foxp3"], (r.kind == KIND_LYMPH) & r.labels["cd3"] & r.labels["cd4"]),
    }
    for key, value in expected.items():
        assert product.truth[key] == pytest.approx(value, abs=1e-9), key
    # double positives exist and are counted in both CD4+ and CD8+
    assert np.sum(cd3 & L["cd4"] & L["cd8"]) > 0
    assert product.truth["cd4_pct_of_cd3"] + product.truth["cd8_pct_of_cd3"] > 100 * np.mean(
        (L["cd4"] | L["cd8"])[cd3])


def test_label_truth_matches_drawn_composition(product):
    """Realised label percentages sit within sampling error of the composition they were drawn from."""
    expected = product.composition.expected_variables()
    s = product.tube("surface", "stain").data
    live = np.sum((s.kind == KIND_LYMPH) & ~s.labels["dead"])
    for key in ("cd3_pct_of_live_lymph", "nk_pct_of_live_lymph", "nkt_pct_of_live_lymph", "pd1_pct_of_live_lymph"):
        p = expected[key] / 100
        se = 100 * np.sqrt(p * (1 - p) / live)
        assert abs(product.truth[key] - expected[key]) < 4.5 * se + 1e-9, key


def test_fmo_reference_recomputed_with_flowkit(product, written):
    """The ideal-FMO-gate reference, recomputed from the files with FlowKit's compensation."""
    def parent_values(tube_name, file, parent):
        comp, names = _comp_events(written / file)
        return comp[:, _col(names, "PE-A")], parent(product.tube(*tube_name).data)

    def live(t):
        return (t.kind == KIND_LYMPH) & ~t.labels["dead"]

    def cd8(t):
        return live(t) & t.labels["cd3"] & t.labels["cd8"]

    def cd4(t):
        return (t.kind == KIND_LYMPH) & t.labels["cd3"] & t.labels["cd4"]

    pe_s, live_s = parent_values(("surface", "stain"), "TIL007_surface_stain.fcs", live)
    _, cd8_s = parent_values(("surface", "stain"), "TIL007_surface_stain.fcs", cd8)
    pe_f, live_f = parent_values(("surface", "fmo", "PD1"), "TIL007_surface_FMO_PD1.fcs", live)
    _, cd8_f = parent_values(("surface", "fmo", "PD1"), "TIL007_surface_FMO_PD1.fcs", cd8)
    fox_s, cd4_s = parent_values(("treg", "stain"), "TIL007_treg_stain.fcs", cd4)
    fox_f, cd4_f = parent_values(("treg", "fmo", "FoxP3"), "TIL007_treg_FMO_FoxP3.fcs", cd4)
    s_labels = product.tube("surface", "stain").data.labels
    cd3_s = live_s & s_labels["cd3"]

    thr_live = np.percentile(pe_f[live_f], 99.5)
    thr_cd8 = np.percentile(pe_f[cd8_f], 99.5)
    thr_fox = np.percentile(fox_f[cd4_f], 99.5)
    got = product.truth
    assert got["ref_pd1_threshold"] == pytest.approx(thr_live, rel=1e-9)
    assert got["ref_cd8pd1_threshold"] == pytest.approx(thr_cd8, rel=1e-9)
    assert got["ref_foxp3_threshold"] == pytest.approx(thr_fox, rel=1e-9)
    one_event = lambda parent: 100.0 / np.sum(parent) + 1e-9  # noqa: E731 (float ties at the threshold)
    assert got["ref_pd1_pct_of_live_lymph"] == pytest.approx(_pct(pe_s > thr_live, live_s), abs=one_event(live_s))
    assert got["ref_cd8pd1_pct_of_cd8"] == pytest.approx(_pct(pe_s > thr_cd8, cd8_s), abs=one_event(cd8_s))
    assert got["ref_cd8pd1_pct_of_cd3"] == pytest.approx(_pct((pe_s > thr_cd8) & cd8_s, cd3_s), abs=one_event(cd3_s))
    assert got["ref_cd4foxp3_pct_of_cd4"] == pytest.approx(_pct(fox_s > thr_fox, cd4_s), abs=one_event(cd4_s))
    # dim PD1 overlaps the negatives: the ideal gate misses some label-positive cells, but not most
    assert 0.6 * got["cd8pd1_pct_of_cd8"] < got["ref_cd8pd1_pct_of_cd8"] < got["cd8pd1_pct_of_cd8"] + 1.0


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_cohort_deterministic_and_seed_sensitive(tmp_path):
    a = simulate_cohort(tmp_path / "a", 2, seed=11, n_events=1500)
    b = simulate_cohort(tmp_path / "b", 2, seed=11, n_events=1500)
    c = simulate_cohort(tmp_path / "c", 2, seed=12, n_events=1500)
    da, db, dc = _digests(a.out_dir), _digests(b.out_dir), _digests(c.out_dir)
    assert len(da) == 2 * len(TUBES) + 3
    assert da == db
    assert da.keys() == dc.keys()
    assert all(da[k] != dc[k] for k in da if k != "manifest.csv")  # the manifest lists names only
    assert da["manifest.csv"] == dc["manifest.csv"]

    manifest = pd.read_csv(a.manifest, keep_default_na=False)
    assert list(manifest.columns) == ["file", "product_id", "tube", "role", "fmo_marker"]
    assert set(manifest["role"]) == {"stain", "fmo", "unstained"}
    assert sorted(manifest.loc[manifest.role == "fmo", "fmo_marker"].unique()) == ["CD3", "CD4", "CD56", "CD8", "FoxP3", "PD1"]
    truth = pd.read_csv(a.truth)
    assert list(truth["product_id"]) == ["TIL001", "TIL002"]
    outcomes = pd.read_csv(a.outcomes)
    assert list(outcomes["product_id"]) == ["TIL001", "TIL002"]


def test_products_vary(tmp_path):
    truths = pd.DataFrame([simulate_product(f"P{i}", 100 + i, n_events=3000).truth for i in range(6)])
    assert truths["cd8_pct_of_cd3"].std() > 2.0
    assert truths["cd8pd1_pct_of_cd8"].std() > 2.0
    assert truths["viability_pct"].between(60, 100).all()


# Tolerances of the regenerated sample against the committed one. The simulator's float64 arithmetic
# (np.exp/np.log, whose SIMD code paths differ between CPUs, and the LAPACK inverse of the spillover
# matrix behind the reference thresholds) may differ in the last bits across machines; those are not
# failures. Text (manifest, keywords, ids, categories) must be identical.
EVENTS_RTOL = 2.0 ** -22   # FCS DATA is float32: a float64 ulp difference can flip one rounding (1 float32 ulp = 2**-23)
TABLE_RTOL = 1e-9          # truth.csv and outcomes.csv floats (thresholds, percentages, times, doses)
TABLE_ATOL = 1e-9


def _compare_regenerated_fcs(committed, fresh) -> None:
    from tilpheno.io.fcs import read_fcs

    a, b = read_fcs(committed), read_fcs(fresh)
    assert a.keywords == b.keywords, committed.name
    assert a.channels.equals(b.channels), committed.name
    np.testing.assert_allclose(b.events, a.events, rtol=EVENTS_RTOL, atol=0, err_msg=committed.name)


def _compare_regenerated_table(committed, fresh) -> None:
    a = pd.read_csv(committed, keep_default_na=False)
    b = pd.read_csv(fresh, keep_default_na=False)
    assert list(a.columns) == list(b.columns) and len(a) == len(b), committed.name
    for column in a.columns:
        if pd.api.types.is_float_dtype(a[column]) or pd.api.types.is_float_dtype(b[column]):
            np.testing.assert_allclose(b[column].to_numpy(float), a[column].to_numpy(float), rtol=TABLE_RTOL,
                                       atol=TABLE_ATOL, err_msg=f"{committed.name}: {column}")
        else:
            assert a[column].tolist() == b[column].tolist(), f"{committed.name}: {column}"


def test_committed_sample_cohort_regenerates(tmp_path):
    """sample_fcs/ is what its README's command writes: text identical, numbers within the stated
    tolerances (ulp-level differences across CPUs are not failures)."""
    from pathlib import Path

    sample = Path(__file__).resolve().parents[1] / "sample_fcs"
    if not sample.is_dir():
        pytest.skip("sample_fcs/ not present")
    if not np.__version__.startswith("2.4."):
        pytest.skip(f"numpy {np.__version__} draws other random streams than numpy 2.4 that made sample_fcs/")
    paths = simulate_cohort(tmp_path / "s", 6, seed=2016, n_events=10000)
    committed = sorted(p.name for p in sample.iterdir() if p.name != "README.md")
    assert committed == sorted(p.name for p in paths.out_dir.iterdir())
    assert sum(p.stat().st_size for p in sample.iterdir()) < 30 * 2**20
    for name in committed:
        if name.endswith(".fcs"):
            _compare_regenerated_fcs(sample / name, paths.out_dir / name)
        elif name == "manifest.csv":
            assert (sample / name).read_bytes() == (paths.out_dir / name).read_bytes()
        else:
            _compare_regenerated_table(sample / name, paths.out_dir / name)


def test_regeneration_check_catches_real_differences(tmp_path):
    """The tolerances above are tight: a change of one part in a million fails, an ulp does not."""
    frame = pd.DataFrame({"product_id": ["TIL001"], "ref_pd1_threshold": [312.123456789012]})
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.assign(ref_pd1_threshold=np.nextafter(312.123456789012, 1e9)).to_csv(tmp_path / "ulp.csv", index=False)
    frame.assign(ref_pd1_threshold=312.123456789012 * (1 + 1e-6)).to_csv(tmp_path / "ppm.csv", index=False)
    _compare_regenerated_table(tmp_path / "a.csv", tmp_path / "ulp.csv")
    with pytest.raises(AssertionError):
        _compare_regenerated_table(tmp_path / "a.csv", tmp_path / "ppm.csv")
    frame.assign(product_id="TIL002").to_csv(tmp_path / "id.csv", index=False)
    with pytest.raises(AssertionError):
        _compare_regenerated_table(tmp_path / "a.csv", tmp_path / "id.csv")


def test_spill_is_true_times_spillover_matrix():
    rng = np.random.default_rng(1)
    amounts = rng.uniform(0, 50000, size=(500, 6))
    assert np.allclose(ins.spill(amounts), amounts @ ins.SPILLOVER_MATRIX, rtol=1e-13, atol=1e-9)
    # the file's $SPILLOVER is that matrix, rows = fluorochromes, columns = detectors
    spill = ins.true_spillover()
    assert spill.detectors == ins.DETECTORS and np.array_equal(spill.matrix, ins.SPILLOVER_MATRIX)


def test_treg_fmo_tube_lacks_foxp3(product, written):
    path = written / "TIL007_treg_FMO_FoxP3.fcs"
    fd = flowio.FlowData(str(path))
    assert fd.text["tube name"] == "FMO FoxP3"
    assert fd.pns_labels[4:10] == ["CD3 FITC", "", "", "", "CD4 BV421", ""]
    comp, names = _comp_events(path)
    t = product.tube("treg", "fmo", "FoxP3").data
    cd4 = (t.kind == KIND_LYMPH) & t.labels["cd3"] & t.labels["cd4"]
    pe = _col(names, "PE-A")
    assert abs(np.median(comp[cd4 & t.labels["foxp3"], pe]) - np.median(comp[cd4 & ~t.labels["foxp3"], pe])) < 60
    # fixed cells: no 7AAD signal beyond autofluorescence and spill, even on dead cells
    aad = _col(names, "PerCP-Cy5-5-A")
    assert np.percentile(comp[(t.kind == KIND_LYMPH) & t.labels["dead"], aad], 99) < 1000


def test_the_truth_covers_every_variable_of_the_bundled_strategies():
    """Every percentage variable of the bundled TIL strategies has a label-truth column, and every
    one counted on an FMO-gated PD1 or FoxP3 population an ideal-FMO reference column, so the
    gating validation (benchmarks/validate_gating.py, test_gating_accuracy) can score it."""
    from tilpheno.gates.strategy import default_strategy_paths, load_strategy
    from tilpheno.simulate.truth import LABEL_COLUMNS, REFERENCE_COLUMNS

    product = simulate_product("T1", 5, n_events=3000)
    assert all(np.isfinite(product.truth[c]) for c in LABEL_COLUMNS)
    dim = simulate_product("T2", 6, n_events=3000, phenomena=True)
    assert all(np.isfinite(t.truth[c]) for t in (product, dim) for c in REFERENCE_COLUMNS)
    for strategy in map(load_strategy, default_strategy_paths()):
        populations = {p.name: p for p in strategy.populations}
        for variable in strategy.variables:
            assert variable.name in LABEL_COLUMNS, (strategy.tube, variable.name)
            gate = populations[variable.numerator]
            if gate.method == "fmo" and gate.dims[0] in ("PD1", "FoxP3"):
                assert f"ref_{variable.name}" in REFERENCE_COLUMNS, (strategy.tube, variable.name)
