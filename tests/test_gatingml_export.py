"""Gating-ML export round trip: export, re-import with tilpheno and with FlowKit, same memberships."""
from pathlib import Path

import flowkit as fk
import numpy as np
import pytest
from flowutils.transforms import logicle as fu_logicle

from tilpheno import read_fcs
from tilpheno.compensation import Spillover, compensate
from tilpheno.errors import StrategyError
from tilpheno.gates.gatingml import (
    Dimension,
    ExportGate,
    apply_gatingml,
    export_gatingml,
    gatingml_id,
    gatingml_xml,
    logicle,
    parse_gatingml,
    read_gatingml,
)
from tilpheno.gates.geometry import BooleanGate, Divider, EllipsoidGate, PolygonGate, QuadrantGate, RangeGate, RectangleGate
from tilpheno.io.fcs_write import write_fcs

GML = Path(__file__).parent / "data" / "gatingml"
FLUOR = ["FITC-A", "PE-A", "BV421-A", "APC-H7-A"]


@pytest.fixture(scope="module")
def product_file(tmp_path_factory):
    """A small compensated-stain file in the demo layout: 4 detectors with $SPILLOVER, scatter, time."""
    rng = np.random.default_rng(20240611)
    n = 4000
    fsc = rng.normal(60000, 15000, n)
    ssc = rng.normal(30000, 12000, n)
    true = np.column_stack([
        np.where(rng.random(n) < 0.7, rng.lognormal(9, 0.5, n), rng.normal(0, 200, n)) for _ in FLUOR
    ])
    spill = Spillover(tuple(FLUOR), np.array([
        [1.0, 0.12, 0.0, 0.01],
        [0.02, 1.0, 0.0, 0.05],
        [0.03, 0.01, 1.0, 0.0],
        [0.0, 0.04, 0.02, 1.0],
    ]))
    observed = true @ spill.matrix
    events = np.column_stack([fsc, fsc * rng.uniform(0.6, 0.9, n), ssc, observed, np.arange(n) * 0.01]).astype(np.float32)
    names = ["FSC-A", "FSC-H", "SSC-A", *FLUOR, "Time"]
    path = tmp_path_factory.mktemp("export") / "TIL001_surface_stain.fcs"
    write_fcs(path, events, [(c, None, 262144) for c in names], {"$SRC": "TIL001"}, spillover=spill)
    return path


def pipeline_gates():
    """Gates as the pipeline resolves them: scatter polygon, FMO thresholds, quadrants, boolean."""
    lg = "Logicle_262144_0.5_4.5_0"
    dims = {
        "FSC-A": Dimension("FSC-A"), "SSC-A": Dimension("SSC-A"), "FSC-H": Dimension("FSC-H"),
        "CD3": Dimension("FITC-A", "FCS", lg), "PD1": Dimension("PE-A", "FCS", lg),
        "CD4": Dimension("BV421-A", "FCS", lg), "CD8": Dimension("APC-H7-A", "FCS", lg),
    }
    raw = [
        ExportGate("Cells", None, PolygonGate(("FSC-A", "SSC-A"), (
            (20000.0, 2000.0), (120000.0, 5000.0), (110000.0, 70000.0), (30000.0, 60000.0))), dims),
        ExportGate("Singlets", "Cells", EllipsoidGate(("FSC-A", "FSC-H"), (60000.0, 45000.0),
                                                     ((4.0e8, 3.0e8), (3.0e8, 2.6e8)), 4.0), dims),
        ExportGate("CD3+", "Singlets", RangeGate("CD3", low=0.4318727), dims),
        ExportGate("PD1+", "CD3+", RangeGate("PD1", low=0.512345678901), dims),
        ExportGate("T4/8", "CD3+", QuadrantGate(
            (Divider("d4", "CD4", (0.45,)), Divider("d8", "CD8", (0.47,))),
            {"CD4+CD8-": {"d4": 1.0, "d8": 0.0}, "CD4-CD8+": {"d4": 0.0, "d8": 1.0},
             "CD4+CD8+": {"d4": 1.0, "d8": 1.0}, "CD4-CD8-": {"d4": 0.0, "d8": 0.0}}), dims),
        ExportGate("Box", "Singlets", RectangleGate(("CD3", "PD1"), (0.3, None), (0.9, 0.6)), dims),
        ExportGate("CD8 PD1+", None, BooleanGate("and", ("CD4-CD8+", "PD1+"))),
        ExportGate("not PD1+", "CD3+", BooleanGate("not", ("PD1+",))),
        ExportGate("CD8 or not Box", "CD3+", BooleanGate("or", ("CD4-CD8+", "Box"), (False, True))),
    ]
    return [to_ids(g) for g in raw], [logicle(lg)]


def to_ids(g: ExportGate) -> ExportGate:
    """Labels -> valid Gating-ML ids (label kept as name), as the pipeline does before exporting."""
    gate = g.gate
    if isinstance(gate, QuadrantGate):
        gate = QuadrantGate(gate.dividers, {gatingml_id(q): pos for q, pos in gate.quadrants.items()})
    if isinstance(gate, BooleanGate):
        gate = BooleanGate(gate.op, tuple(map(gatingml_id, gate.operands)), gate.complements)
    return ExportGate(gatingml_id(g.id), g.parent and gatingml_id(g.parent), gate, g.dimensions, name=g.id)


def independent_masks(fcs):
    """The same gates evaluated directly: own compensation, flowutils logicle, geometry, parents by hand."""
    ev = compensate(fcs.events, fcs.channel_names, fcs.spillover)
    col = {n: ev[:, i] for i, n in enumerate(fcs.channel_names)}
    lg = lambda x: fu_logicle(x, None, t=262144, m=4.5, w=0.5, a=0)  # noqa: E731
    data = {"FSC-A": col["FSC-A"], "SSC-A": col["SSC-A"], "FSC-H": col["FSC-H"],
            "CD3": lg(col["FITC-A"]), "PD1": lg(col["PE-A"]), "CD4": lg(col["BV421-A"]), "CD8": lg(col["APC-H7-A"])}
    gates = {g.name: g for g in pipeline_gates()[0]}
    m = {}
    m["Cells"] = gates["Cells"].gate.contains(data)
    m["Singlets"] = gates["Singlets"].gate.contains(data) & m["Cells"]
    m["CD3+"] = gates["CD3+"].gate.contains(data) & m["Singlets"]
    m["PD1+"] = gates["PD1+"].gate.contains(data) & m["CD3+"]
    cd4, cd8 = data["CD4"] >= 0.45, data["CD8"] >= 0.47
    m["CD4+CD8-"], m["CD4-CD8+"] = cd4 & ~cd8 & m["CD3+"], ~cd4 & cd8 & m["CD3+"]
    m["CD4+CD8+"], m["CD4-CD8-"] = cd4 & cd8 & m["CD3+"], ~cd4 & ~cd8 & m["CD3+"]
    m["Box"] = (data["CD3"] >= 0.3) & (data["CD3"] < 0.9) & (data["PD1"] < 0.6) & m["Singlets"]
    m["CD8 PD1+"] = m["CD4-CD8+"] & m["PD1+"]
    m["not PD1+"] = ~m["PD1+"] & m["CD3+"]
    m["CD8 or not Box"] = (m["CD4-CD8+"] | ~m["Box"]) & m["CD3+"]
    return {gatingml_id(label): mask for label, mask in m.items()}


@pytest.fixture(scope="module")
def exported(product_file, tmp_path_factory):
    gates, transforms = pipeline_gates()
    path = tmp_path_factory.mktemp("gml") / "TIL001_gates.xml"
    export_gatingml(gates, path, transforms=transforms)
    return path


def test_round_trip_tilpheno_equals_direct_evaluation(product_file, exported):
    fcs = read_fcs(product_file)
    got = apply_gatingml(read_gatingml(exported), fcs.events, fcs.channel_names, fcs.spillover)
    expected = independent_masks(fcs)
    assert sorted(got) == sorted(expected)
    for pid, mask in expected.items():
        assert 0 < mask.sum() < fcs.n_events, f"{pid}: degenerate test population"
        assert np.array_equal(got[pid], mask), pid


def test_round_trip_flowkit_equals_tilpheno(product_file, exported):
    fcs = read_fcs(product_file)
    ours = apply_gatingml(read_gatingml(exported), fcs.events, fcs.channel_names, fcs.spillover)
    strategy = fk.parse_gating_xml(str(exported))
    results = strategy.gate_sample(fk.Sample(str(product_file)))
    for pid, mask in ours.items():
        paths = strategy.find_matching_gate_paths(pid)
        assert len(paths) == 1, pid
        theirs = results.get_gate_membership(pid, gate_path=paths[0])
        assert np.array_equal(theirs, mask), f"{pid}: {(theirs != mask).sum()} events differ"


def test_export_preserves_numbers_exactly(exported):
    doc = read_gatingml(exported)
    assert doc.gates["PD1pos"].gate.low == 0.512345678901
    assert doc.gates["CD3pos"].gate.low == 0.4318727
    assert doc.gates["PD1pos"].parent == "CD3pos"
    assert doc.gates["PD1pos"].name == "PD1+"
    assert doc.gates["PD1pos"].dimensions == (Dimension("PE-A", "FCS", "Logicle_262144_0.5_4.5_0"),)
    assert doc.gates["Singlets"].gate.covariance == ((4.0e8, 3.0e8), (3.0e8, 2.6e8))


def test_compliance_documents_survive_export_and_reimport():
    """Re-export all 47 reference documents; memberships on data1.fcs unchanged (incl. spectrum matrices, ratios)."""
    from flowkit._resources import gml_schema
    from lxml import etree

    fcs = read_fcs(GML / "data1.fcs")
    for xml in sorted((GML / "gml").glob("*.xml")):
        doc = read_gatingml(xml)
        text = gatingml_xml(doc)
        assert gml_schema.validate(etree.fromstring(text.encode()).getroottree()), (xml.name, gml_schema.error_log)
        doc2 = parse_gatingml(text, source=f"re-export of {xml.name}")
        a = apply_gatingml(doc, fcs.events, fcs.channel_names)
        b = apply_gatingml(doc2, fcs.events, fcs.channel_names)
        assert list(a) == list(b), xml.name
        for pid in a:
            assert np.array_equal(a[pid], b[pid]), f"{xml.name} {pid}"


def test_export_rejects_undeclared_dimension_and_transform(tmp_path):
    gate = RangeGate("CD3", low=0.4)
    with pytest.raises(StrategyError, match="CD3"):
        export_gatingml([ExportGate("CD3+", None, gate, {})], tmp_path / "x.xml")
    with pytest.raises(StrategyError, match="'lg'"):
        export_gatingml([ExportGate("CD3+", None, gate, {"CD3": Dimension("FITC-A", "FCS", "lg")})], tmp_path / "x.xml")
    assert not (tmp_path / "x.xml").exists()


def test_export_is_schema_valid(exported):
    """Validated against the Gating-ML 2.0 XSD (the copy FlowKit ships)."""
    from flowkit._resources import gml_schema
    from lxml import etree

    assert gml_schema.validate(etree.parse(str(exported))), gml_schema.error_log


def test_export_rejects_invalid_and_duplicate_ids(tmp_path):
    dims = {"CD3": Dimension("FITC-A")}
    with pytest.raises(StrategyError, match=r"CD3\+.*CD3pos"):
        export_gatingml([ExportGate("CD3+", None, RangeGate("CD3", low=1.0), dims)], tmp_path / "x.xml")
    quad = QuadrantGate((Divider("A", "CD3", (1.0,)),), {"lo": {"A": 0.0}, "hi": {"A": 2.0}})
    with pytest.raises(StrategyError, match="'A'"):
        export_gatingml([ExportGate("A", None, quad, dims)], tmp_path / "x.xml")


@pytest.mark.parametrize("label,expected", [
    ("CD4+CD8-", "CD4posCD8neg"), ("CD3-CD56+", "CD3negCD56pos"), ("7AAD-", "_7AADneg"),
    ("Live lymphocytes", "Live_lymphocytes"), ("PD-1+", "PD-1pos"),
])
def test_gatingml_id(label, expected):
    assert gatingml_id(label) == expected


def test_scale_transform_for_tilpheno_transforms():
    from tilpheno.gates.gatingml import scale_transform_for
    from tilpheno.transforms import Arcsinh, Linear, Logicle

    x = np.array([-500.0, 0.0, 12.5, 1000.0, 262144.0])
    lg = scale_transform_for(Logicle(262144, 0.5, 4.5, 0), "lg")
    assert lg.params == {"T": 262144.0, "W": 0.5, "M": 4.5, "A": 0.0}
    # same scale as tilpheno's logicle, within its documented interpolation tolerance
    from tilpheno.transforms import LOGICLE_TOLERANCE

    assert np.max(np.abs(lg.apply(x) - Logicle().apply(x))) <= LOGICLE_TOLERANCE
    assert scale_transform_for(Linear(), "lin") is None
    # Arcsinh: a fasinh on the same scale (export-approved of an arcsinh strategy failed: "no equivalent")
    asinh = scale_transform_for(Arcsinh(150), "as")
    assert asinh.kind == "fasinh"
    assert np.max(np.abs(asinh.apply(x) - np.arcsinh(x / 150))) < 1e-14
    with pytest.raises(StrategyError, match="no Gating-ML equivalent"):
        scale_transform_for(object(), "x")


def test_arcsinh_gates_round_trip_through_flowkit(product_file, tmp_path):
    """A tube gated on arcsinh (cofactor 150) dimensions: exported, re-read by tilpheno and by
    FlowKit, the memberships equal the gates evaluated on tilpheno's own Arcsinh values."""
    from types import SimpleNamespace

    from tilpheno.gates.gatingml import export_tube_gatingml
    from tilpheno.transforms import Arcsinh, Linear

    fcs = read_fcs(product_file)
    ev = compensate(fcs.events, fcs.channel_names, fcs.spillover)
    col = {n: ev[:, i] for i, n in enumerate(fcs.channel_names)}
    asinh = Arcsinh(150)
    data = {"FSC-A": col["FSC-A"], "CD3": asinh.apply(col["FITC-A"]), "PD1": asinh.apply(col["PE-A"])}
    gates = [("CD3+", "root", RangeGate("CD3", low=4.1), "fmo"),
             ("PD1+", "CD3+", RectangleGate(("PD1", "FSC-A"), (3.3, None), (9.0, 90000.0)), "fmo")]
    tube = SimpleNamespace(gates=gates, detectors={"CD3": "FITC-A", "PD1": "PE-A"})
    out = tmp_path / "asinh.xml"
    export_tube_gatingml(tube, out, {"CD3": asinh, "PD1": asinh, "FSC-A": Linear()})
    expected = {"CD3pos": gates[0][2].contains(data)}
    expected["PD1pos"] = gates[1][2].contains(data) & expected["CD3pos"]
    ours = apply_gatingml(read_gatingml(out), fcs.events, fcs.channel_names, fcs.spillover)
    strategy = fk.parse_gating_xml(str(out))
    theirs = strategy.gate_sample(fk.Sample(str(product_file)))
    for pid, mask in expected.items():
        assert 0 < mask.sum() < fcs.n_events, pid
        assert np.array_equal(ours[pid], mask), pid
        assert np.array_equal(theirs.get_gate_membership(pid, gate_path=strategy.find_matching_gate_paths(pid)[0]), mask), pid


@pytest.mark.parametrize("boundary, product_id", [("fsc", "TIL001"), ("oblique", "TIL002")])
def test_pipeline_product_round_trip(tmp_path, boundary, product_id):
    """A product gated by the pipeline (sample_fcs): export each stained tube's resolved gates
    (FMO thresholds as numbers), re-import with tilpheno and FlowKit, compare with the pipeline's
    masks. ``oblique``: the bundled strategies with the cells gates' ``boundary: oblique`` (a
    polygon of 49 vertices on TIL002's tubes)."""
    from flowkit._resources import gml_schema
    from lxml import etree

    from strategy_support import bundled_strategies, sample_rows

    from tilpheno.gates.gatingml import export_tube_gatingml
    from tilpheno.phenotype import analyze_product

    strategies = {s.tube: s for s in bundled_strategies(boundary)}
    product = analyze_product(product_id, sample_rows(product_id), list(strategies.values()))
    stained = [t for t in product.tubes if t.role == "stain"]
    assert {t.tube for t in stained} == {"surface", "treg"}
    for tube in stained:
        cells_gate = next(gate for population, _, gate, _ in tube.gates if population == "cells")
        if boundary == "oblique":   # the line sampled at 48 points, every vertex on the scale
            assert len(cells_gate.vertices) >= 49 and np.all(np.abs(cells_gate.vertices) <= 262143)
        else:
            assert len(cells_gate.vertices) == 4
        out = tmp_path / f"{tube.tube}.xml"
        export_tube_gatingml(tube, out, {d: strategies[tube.tube].transform_for(d) for d in tube.data})
        assert gml_schema.validate(etree.parse(str(out))), gml_schema.error_log
        fcs = read_fcs(tube.file)
        ours = apply_gatingml(read_gatingml(out), fcs.events, fcs.channel_names, fcs.spillover)
        strategy = fk.parse_gating_xml(str(out))
        theirs = strategy.gate_sample(fk.Sample(tube.file))
        for population, *_ in tube.gates:
            pid = gatingml_id(population)
            assert tube.masks[population].sum() > 0, population
            differ = ours[pid] != tube.masks[population]
            assert not np.any(differ), f"{tube.tube} {population}: {differ.sum()} events differ"
            fk_mask = theirs.get_gate_membership(pid, gate_path=strategy.find_matching_gate_paths(pid)[0])
            assert np.array_equal(fk_mask, ours[pid]), f"{tube.tube} {population}: FlowKit differs"
        assert read_gatingml(out).gates[gatingml_id("CD3+")].name == "CD3+"
        # the same matrix given as an override: written as a spectrumMatrix, same memberships
        override = tmp_path / f"{tube.tube}_override.xml"
        export_tube_gatingml(tube, override, {d: strategies[tube.tube].transform_for(d) for d in tube.data},
                             compensation=fcs.spillover)
        assert "spectrumMatrix" in override.read_text()
        again = apply_gatingml(read_gatingml(override), fcs.events, fcs.channel_names, None)
        strategy2 = fk.parse_gating_xml(str(override))
        theirs2 = strategy2.gate_sample(fk.Sample(tube.file))
        for pid, mask in ours.items():
            assert np.array_equal(again[pid], mask), pid
            fk_mask = theirs2.get_gate_membership(pid, gate_path=strategy2.find_matching_gate_paths(pid)[0])
            assert np.array_equal(fk_mask, mask), pid


def test_thresholds_on_the_transformed_scale_keep_their_transformation(tmp_path):
    """``linear_thresholds=False`` (the FlowKit benchmark's document, as the issue measured FlowKit:
    compensation and logicle) writes the range gates on the transformed scale with their
    transformation, where the default writes them on the linear scale without one; FlowKit applying
    either gives the pipeline's counts (TIL001's surface tube; on the transformed scale an event
    within the table logicle's 1e-6 of a cut may differ: none does here)."""
    from strategy_support import bundled_strategies, sample_rows

    from tilpheno.gates.gatingml import export_tube_gatingml
    from tilpheno.phenotype import analyze_product

    strategies = {s.tube: s for s in bundled_strategies("fsc")}
    product = analyze_product("TIL001", sample_rows("TIL001"), list(strategies.values()))
    tube = next(t for t in product.tubes if t.role == "stain" and t.tube == "surface")
    transforms = {d: strategies["surface"].transform_for(d) for d in tube.data}
    docs = {}
    for linear in (True, False):
        out = tmp_path / f"linear_{linear}.xml"
        export_tube_gatingml(tube, out, transforms, linear_thresholds=linear)
        docs[linear] = read_gatingml(out)
        strategy = fk.parse_gating_xml(str(out))
        theirs = strategy.gate_sample(fk.Sample(tube.file))
        for population, *_ in tube.gates:
            pid = gatingml_id(population)
            fk_mask = theirs.get_gate_membership(pid, gate_path=strategy.find_matching_gate_paths(pid)[0])
            assert np.array_equal(fk_mask, tube.masks[population]), (linear, population)
    cd3 = gatingml_id("CD3+")
    assert all(d.transform is None for d in docs[True].gates[cd3].dimensions)
    assert all(d.transform is not None for d in docs[False].gates[cd3].dimensions)


def two_detector_file(path: Path, rng: np.random.Generator, n: int, top: float):
    """An uncompensated FITC-A/PE-A file of ``n`` log-normal events drawn from ``rng`` (a fifth of
    each detector's slightly negative), ``$PnR`` ``top``, read back."""
    raw = rng.lognormal(8, 1.5, size=(n, 2)) * np.where(rng.random((n, 2)) < 0.8, 1, -0.01)
    write_fcs(path, raw.astype(np.float32), [(c, None, top) for c in ("FITC-A", "PE-A")], {})
    return read_fcs(path)


def assert_regated(document: Path, fcs_path: Path, fcs, expected: dict) -> None:
    """``document`` re-read by tilpheno and by FlowKit on ``fcs_path``: every gate (label ->
    expected mask) holds exactly its expected events."""
    ours = apply_gatingml(read_gatingml(document), fcs.events, fcs.channel_names)
    strategy = fk.parse_gating_xml(str(document))
    theirs = strategy.gate_sample(fk.Sample(str(fcs_path)))
    for label, mask in expected.items():
        pid = gatingml_id(label)
        assert np.array_equal(ours[pid], mask), label
        assert np.array_equal(theirs.get_gate_membership(pid), mask), label


@pytest.mark.parametrize("transforms", [
    # a 22-bit spectral scale: T = 4194304 was written '4.1943e+06' in the id, not a valid xs:ID
    {"CD3": (4194304.0, 0.5, 4.5, 0.0), "CD4": (4194304.0, 0.5, 4.5, 0.0)},
    # two scales equal to 6 significant digits shared one id: CD4 was read back on CD3's scale
    {"CD3": (262144.0, 0.5, 4.5, 0.0), "CD4": (262144.0, 0.4999999, 4.5, 0.0)},
    {"CD3": (262144.0, 0.5, 4.5, 0.0), "CD4": (262144.0, 0.5, 4.5, 0.0)},
], ids=["t4194304", "w0.4999999", "same"])
def test_export_rereads_boundary_events_exactly(tmp_path, transforms):
    """Thresholds on the pipeline's (table) logicle value of an event and on the float64 values
    either side of it, as a gate's minimum, maximum and both ends, and a positive gate pinned at
    the highest value (the pipeline's ``x > cut`` is ``min = nextafter(cut)``): the exported
    document re-read by tilpheno and by FlowKit contains exactly the events the gates contain on
    the pipeline's own values. Before, thresholds were written on the exact logicle scale, and
    the pinned gate held the top event in the document (FlowAtlas 390C_BM_027: CXCR3+, FoxP3+,
    CD25+ 0 in the pipeline, 1 on re-import). A polygon keeps the exact logicle scale."""
    from types import SimpleNamespace

    from tilpheno.gates.gatingml import export_tube_gatingml
    from tilpheno.transforms import Logicle

    rng = np.random.default_rng(11)
    n = 400
    path = tmp_path / "boundary.fcs"
    fcs = two_detector_file(path, rng, n, 4194304)
    pipeline = {m: Logicle(*transforms[m]).apply(fcs.events[:, i].astype(np.float64)) for i, m in enumerate(("CD3", "CD4"))}
    gates = []
    for m in ("CD3", "CD4"):
        top = float(pipeline[m].max())
        gates.append((f"{m} pinned", "root", RangeGate(m, low=float(np.nextafter(top, 2))), "fmo"))
        for k, event in enumerate(rng.choice(n, 20, replace=False)):
            value = pipeline[m][event]
            other = pipeline[m][rng.integers(n)]
            for side, threshold in (("at", value), ("below", np.nextafter(value, -1)), ("above", np.nextafter(value, 2))):
                gates.append((f"{m} {k} {side} min", "root", RangeGate(m, low=float(threshold)), "fmo"))
                gates.append((f"{m} {k} {side} max", "root", RangeGate(m, high=float(threshold)), "fmo"))
                gates.append((f"{m} {k} {side} both", "root", RangeGate(m, float(min(threshold, other)), float(max(threshold, other))), "fmo"))
    gates.append(("box", "root", RectangleGate(("CD3", "CD4"), (float(pipeline["CD3"][3]), None), (None, float(pipeline["CD4"][5]))), "fmo"))
    c3, c4 = float(pipeline["CD3"][7]), float(pipeline["CD4"][9])
    gates.append(("quad", "root", QuadrantGate((Divider("q3", "CD3", (c3,)), Divider("q4", "CD4", (c4, float(np.nextafter(c4, 2))))), {
        "Q lo lo": {"q3": c3 - 0.1, "q4": c4 - 0.1}, "Q hi mid": {"q3": c3, "q4": c4}, "Q hi hi": {"q3": 1.0, "q4": 1.0}}), "fmo"))
    lo3, lo4 = np.quantile(pipeline["CD3"], 0.2), np.quantile(pipeline["CD4"], 0.2)
    gates.append(("poly", "root", PolygonGate(("CD3", "CD4"), ((lo3, lo4), (0.95, lo4), (0.9, 0.9))), "fmo"))
    expected = {label: gate.contains(pipeline) for label, _, gate, _ in gates if label != "quad"}
    expected.update({q: gates[-2][2].contains(pipeline, q) for q in ("Q lo lo", "Q hi mid", "Q hi hi")})
    assert expected["Q hi mid"].sum() == 1   # event 9: at the CD4 divider value, above the CD3 one
    assert expected["CD3 pinned"].sum() == 0 and expected["CD4 pinned"].sum() == 0
    exact = {m: fu_logicle(fcs.events[:, i], None, t=transforms[m][0], w=transforms[m][1], m=transforms[m][2], a=transforms[m][3])
             for i, m in enumerate(("CD3", "CD4"))}
    expected["poly"] = gates[-1][2].contains(exact)   # a polygon is written on the exact logicle scale
    assert 0 < expected["poly"].sum() < n
    result = SimpleNamespace(gates=gates, detectors={"CD3": "FITC-A", "CD4": "PE-A"})
    out = tmp_path / "boundary.xml"
    export_tube_gatingml(result, out, {m: Logicle(*p) for m, p in transforms.items()}, compensation="uncompensated")
    assert_regated(out, path, fcs, expected)
    ids = sorted(read_gatingml(out).transforms)
    assert len(ids) == len(set(transforms.values()))


def test_bounds_beyond_every_value_are_written_as_infinities_and_re_gate_alike(tmp_path):
    """A bound no float64 reaches through its transform (logicle 3.0: above the logicle of the
    largest float64; -3.0: below that of the most negative) moves to the linear scale as an
    infinity (:func:`linear_threshold`), written ``INF`` / ``-INF``: ranges and rectangles' sides so
    placed, re-read by tilpheno and by FlowKit, hold exactly the events the gates hold on the
    pipeline's own (table logicle) values, the whole file or none of it."""
    from types import SimpleNamespace

    from flowkit._resources import gml_schema
    from lxml import etree

    from tilpheno.gates.gatingml import export_tube_gatingml, linear_threshold
    from tilpheno.transforms import Logicle

    n = 300
    path = tmp_path / "inf.fcs"
    fcs = two_detector_file(path, np.random.default_rng(12), n, 262144)
    scale = Logicle(262144.0, 0.5, 4.5, 0.0)
    pipeline = {m: scale.apply(fcs.events[:, i].astype(np.float64)) for i, m in enumerate(("CD3", "CD4"))}
    assert linear_threshold(scale, 3.0) == np.inf and linear_threshold(scale, -3.0) == -np.inf
    mid = float(np.median(pipeline["CD4"]))
    gates = [("all above", "root", RangeGate("CD3", low=-3.0), "fmo"),
             ("none above", "root", RangeGate("CD3", low=3.0), "fmo"),
             ("all below", "root", RangeGate("CD3", high=3.0), "fmo"),
             ("none below", "root", RangeGate("CD3", high=-3.0), "fmo"),
             ("all between", "root", RangeGate("CD3", -3.0, 3.0), "fmo"),
             ("box", "root", RectangleGate(("CD3", "CD4"), (-3.0, mid), (3.0, None)), "fmo"),
             ("none in box", "root", RectangleGate(("CD3", "CD4"), (3.0, None), (None, mid)), "fmo")]
    expected = {label: gate.contains(pipeline) for label, _, gate, _ in gates}
    assert [int(expected[k].sum()) for k in ("all above", "none above", "all below", "none below", "all between",
                                             "none in box")] == [n, 0, n, 0, n, 0]
    assert int(expected["box"].sum()) == int(np.count_nonzero(pipeline["CD4"] >= mid)) == n // 2
    out = tmp_path / "inf.xml"
    export_tube_gatingml(SimpleNamespace(gates=gates, detectors={"CD3": "FITC-A", "CD4": "PE-A"}), out,
                         {"CD3": scale, "CD4": scale}, compensation="uncompensated")
    text = out.read_text()
    assert 'min="-INF"' in text and 'max="INF"' in text and 'min="INF"' in text and 'max="-INF"' in text
    assert gml_schema.validate(etree.parse(str(out))), gml_schema.error_log
    assert_regated(out, path, fcs, expected)


@pytest.mark.parametrize("beyond", [3.0, -3.0], ids=["above", "below"])
def test_a_quadrant_divider_beyond_every_value_is_exported_and_re_gates_alike(tmp_path, beyond):
    """A quadrant gate whose CD3 divider no float64 reaches through the logicle (3.0), or every one
    does (-3.0): its linear cut is +-inf, which a divider cannot hold (export_tube_gatingml raised
    GatingError 'values must be finite'). Now each quadrant is a rectangle with an INF bound, and
    tilpheno and FlowKit re-gating the document hold exactly the quadrants' events on the
    pipeline's own values (two quadrants all of CD3's side, two none)."""
    from types import SimpleNamespace

    from tilpheno.gates.gatingml import export_tube_gatingml
    from tilpheno.transforms import Logicle

    n = 300
    path = tmp_path / "quad.fcs"
    fcs = two_detector_file(path, np.random.default_rng(13), n, 262144)
    scale = Logicle(262144.0, 0.5, 4.5, 0.0)
    pipeline = {m: scale.apply(fcs.events[:, i].astype(np.float64)) for i, m in enumerate(("CD3", "CD4"))}
    mid = float(np.median(pipeline["CD4"]))
    quad = QuadrantGate((Divider("q3", "CD3", (beyond,)), Divider("q4", "CD4", (mid,))), {
        "CD3+ CD4+": {"q3": 3.5, "q4": 1.0}, "CD3+ CD4-": {"q3": 3.5, "q4": -1.0},
        "CD3- CD4+": {"q3": -3.5, "q4": 1.0}, "CD3- CD4-": {"q3": -3.5, "q4": -1.0}})
    expected = {q: quad.contains(pipeline, q) for q in quad.quadrants}
    empty = ("CD3+ CD4+", "CD3+ CD4-") if beyond > 0 else ("CD3- CD4+", "CD3- CD4-")
    assert [int(expected[q].sum()) for q in empty] == [0, 0]
    assert sum(int(m.sum()) for m in expected.values()) == n
    out = tmp_path / "quad.xml"
    export_tube_gatingml(SimpleNamespace(gates=[("T4", "root", quad, "fmo")], detectors={"CD3": "FITC-A", "CD4": "PE-A"}),
                         out, {"CD3": scale, "CD4": scale}, compensation="uncompensated")
    assert ('max="-INF"' if beyond < 0 else 'min="INF"') in out.read_text()
    assert_regated(out, path, fcs, expected)
