"""Gating-ML 2.0 import: every event's membership equals the compliance-test truth exactly.

Data: tests/data/gatingml (from FlowKit's data/gate_ref, BSD-3): data1.fcs, 47 documents and
51 truth vectors Results_<GateId>.txt. The truth file ParQuadRect belongs to gate
ParRectangle1 of gml_parent_quadrant_rect_gate.xml (its id differs from the file name).
"""
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from tilpheno import read_fcs
from tilpheno.errors import StrategyError
from tilpheno.gates.gatingml import apply_gatingml, parse_gatingml, read_gatingml

DATA = Path(__file__).parent / "data" / "gatingml"
TRUTH_ALIASES = {("gml_parent_quadrant_rect_gate.xml", "ParRectangle1"): "ParQuadRect"}


@lru_cache(maxsize=None)
def sample():
    return read_fcs(DATA / "data1.fcs")


@lru_cache(maxsize=None)
def memberships(doc_name: str) -> dict:
    f = sample()
    return apply_gatingml(read_gatingml(DATA / "gml" / doc_name), f.events, f.channel_names, f.spillover)


def truth(name: str) -> np.ndarray:
    values = np.loadtxt(DATA / "truth" / f"Results_{name}.txt", dtype=int)
    assert set(np.unique(values)) <= {0, 1}
    return values.astype(bool)


def _cases():
    """(document, population id, truth name) for every population that has a truth vector."""
    names = {p.name[len("Results_"):-len(".txt")] for p in (DATA / "truth").glob("Results_*.txt")}
    cases = []
    for xml in sorted((DATA / "gml").glob("*.xml")):
        for pid in read_gatingml(xml).population_ids:
            name = TRUTH_ALIASES.get((xml.name, pid), pid)
            if name in names:
                cases.append((xml.name, pid, name))
    return names, cases


TRUTH_NAMES, CASES = _cases()


def test_fixture_is_complete():
    assert len(list((DATA / "gml").glob("*.xml"))) == 47
    assert len(TRUTH_NAMES) == 51
    assert {c[2] for c in CASES} == TRUTH_NAMES  # every truth vector is checked at least once


@pytest.mark.parametrize("doc_name,pid,truth_name", CASES, ids=[f"{c[0][4:-4]}:{c[1]}" for c in CASES])
def test_membership_equals_truth(doc_name, pid, truth_name):
    got = memberships(doc_name)[pid]
    expected = truth(truth_name)
    assert got.shape == expected.shape == (sample().n_events,)
    mismatches = np.flatnonzero(got != expected)
    assert mismatches.size == 0, f"{doc_name} {pid}: {mismatches.size} events differ, first {mismatches[:5]}"


def test_quadrants_partition_events():
    m = memberships("gml_quadrant1_gate.xml")
    total = sum(m[q].astype(int) for q in ("FL2P-FL4P", "FL2N-FL4P", "FL2N-FL4N", "FL2P-FL4N"))
    assert np.all(total == 1)


def _doc(body: str) -> str:
    return (
        '<gating:Gating-ML xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating" '
        'xmlns:transforms="http://www.isac-net.org/std/Gating-ML/v2.0/transformations" '
        f'xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes">{body}</gating:Gating-ML>'
    )


RANGE = (
    '<gating:RectangleGate gating:id="R" {parent}><gating:dimension gating:compensation-ref="{comp}" '
    'gating:min="1" {tr}><data-type:fcs-dimension data-type:name="{name}"/></gating:dimension></gating:RectangleGate>'
)


def test_unknown_parent_named():
    with pytest.raises(StrategyError, match="'Nope'"):
        parse_gatingml(_doc(RANGE.format(parent='gating:parent_id="Nope"', comp="uncompensated", tr="", name="FL1-H")))


def test_unknown_matrix_and_transform_named():
    with pytest.raises(StrategyError, match="'Spill9'"):
        parse_gatingml(_doc(RANGE.format(parent="", comp="Spill9", tr="", name="FL1-H")))
    with pytest.raises(StrategyError, match="'Tx'"):
        parse_gatingml(_doc(RANGE.format(parent="", comp="uncompensated", tr='gating:transformation-ref="Tx"', name="FL1-H")))


def test_invalid_logicle_parameters_rejected():
    tr = '<transforms:transformation transforms:id="L"><transforms:logicle transforms:T="262144" transforms:W="3" transforms:M="4.5" transforms:A="0"/></transforms:transformation>'
    with pytest.raises(StrategyError, match="'L'.*W"):
        parse_gatingml(_doc(tr))


def test_malformed_xml_names_source():
    with pytest.raises(StrategyError, match="my.xml"):
        parse_gatingml("<gating:Gating-ML", source="my.xml")


def test_missing_channel_is_a_clear_error():
    from tilpheno.errors import GatingError

    doc = parse_gatingml(_doc(RANGE.format(parent="", comp="uncompensated", tr="", name="CD99-A")))
    with pytest.raises(GatingError, match="CD99-A"):
        apply_gatingml(doc, np.zeros((3, 1)), ["FL1-H"])


def test_fcs_spillover_reference_uses_file_matrix():
    # detector values are true @ S; compensation by the file's matrix must recover them
    from tilpheno.compensation import Spillover

    s = Spillover(("A", "B"), np.array([[1.0, 0.5], [0.0, 1.0]]))
    true = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.5]])
    doc = parse_gatingml(_doc(RANGE.format(parent="", comp="FCS", tr="", name="B").replace('gating:min="1"', 'gating:max="1"')))
    raw = true @ s.matrix  # B raw = 1.0, 2.0, 2.0: all >= 1 uncompensated
    assert apply_gatingml(doc, raw, ["A", "B"], s)["R"].tolist() == [True, False, False]
    assert apply_gatingml(doc, raw, ["A", "B"], None)["R"].tolist() == [False, False, False]


def test_logicle_w0_is_the_arcsinh_scale():
    """W = 0 is a valid logicle (the XSD types W as non-negative; hyperlog's W as positive): the
    arcsinh scale (Moore & Parks 2012), here by its closed form, with T = 10000, M = 4.5, A = 0.5."""
    lg = '<transforms:transformation transforms:id="L0"><transforms:logicle transforms:T="10000" transforms:W="0" transforms:M="4.5" transforms:A="0.5"/></transforms:transformation>'
    gate = RANGE.format(parent="", comp="uncompensated", tr='gating:transformation-ref="L0"', name="FL2-H").replace(
        'gating:min="1"', 'gating:min="0.3" gating:max="0.6"')
    f = sample()
    got = apply_gatingml(parse_gatingml(_doc(lg + gate)), f.events, f.channel_names)["R"]
    b, c = 5.0 * np.log(10), 0.5 * np.log(10)
    scale = (np.arcsinh(f.events[:, f.channel_names.index("FL2-H")] / (10000 / np.sinh(b - c))) + c) / b
    assert np.min(np.abs(scale[:, None] - [0.3, 0.6])) > 1e-9   # no event on a boundary
    expected = (scale >= 0.3) & (scale < 0.6)
    assert 100 < expected.sum() < f.n_events - 100
    assert np.array_equal(got, expected)
    with pytest.raises(StrategyError, match="'H'.*W"):
        parse_gatingml(_doc(lg.replace("logicle", "hyperlog").replace('"L0"', '"H"')))


@pytest.mark.parametrize("nudge", [0.0, 1e-9])
def test_a_singular_spectrum_matrix_is_refused_even_when_it_inverts(nudge):
    """A repeated row (or one rounded apart) still inverts numerically and gave values of 1e13 and
    more; like a $SPILLOVER or CSV matrix, it is refused by its condition number."""
    from tilpheno.errors import CompensationError
    from tilpheno.gates.gatingml import SpectrumMatrix

    rows = ((1.0, 0.2, 0.0), (0.1, 1.0, 0.05), (0.1, 1.0 + nudge, 0.05))
    matrix = SpectrumMatrix("S", ("A", "B", "C"), ("FL1", "FL2", "FL3"), rows)
    with pytest.raises(CompensationError, match=r"spectrumMatrix 'S' is singular \(condition number"):
        matrix.unmix(np.ones((4, 3)))
    fine = SpectrumMatrix("S", ("A", "B", "C"), ("FL1", "FL2", "FL3"), ((1.0, 0.2, 0.0), (0.1, 1.0, 0.05), (0, 0, 1.0)))
    assert np.allclose(fine.unmix(np.ones((1, 3))) @ np.asarray(fine.coefficients), 1.0)


MATRIX_CASES = [c for c in CASES if c[0].startswith("gml_matrix_")]


@pytest.mark.parametrize("doc_name,pid,truth_name", MATRIX_CASES, ids=[c[0][4:-4] for c in MATRIX_CASES])
def test_a_detector_named_under_a_spectrum_matrix_is_compensated(doc_name, pid, truth_name):
    """The same gates with each fluorochrome (FITC, PE, PerCP) renamed to its detector (FL1-H,
    FL2-H, FL3-H), as FlowKit writes them: the detector's compensated value, so the truth of the
    fluorochrome gate holds (the raw detector values differed on 67 to 1573 events)."""
    xml = (DATA / "gml" / doc_name).read_text()
    head, end, gates = xml.partition("</transforms:spectrumMatrix>")
    for fluorochrome, detector in (("FITC", "FL1-H"), ("PE", "FL2-H"), ("PerCP", "FL3-H")):
        gates = gates.replace(f'data-type:name="{fluorochrome}"', f'data-type:name="{detector}"')
    assert gates != xml.partition("</transforms:spectrumMatrix>")[2]
    f = sample()
    got = apply_gatingml(parse_gatingml(head + end + gates), f.events, f.channel_names, f.spillover)[pid]
    assert np.array_equal(got, truth(truth_name))


def test_a_detector_of_a_spectral_matrix_is_refused_by_name():
    """3 detectors unmixed into 2 fluorochromes: a detector has no compensated value of its own."""
    matrix = (
        '<transforms:spectrumMatrix transforms:id="Spec"><transforms:fluorochromes>'
        '<data-type:fcs-dimension data-type:name="FITC"/><data-type:fcs-dimension data-type:name="PE"/>'
        '</transforms:fluorochromes><transforms:detectors><data-type:fcs-dimension data-type:name="FL1-H"/>'
        '<data-type:fcs-dimension data-type:name="FL2-H"/><data-type:fcs-dimension data-type:name="FL3-H"/>'
        '</transforms:detectors>'
        '<transforms:spectrum><transforms:coefficient transforms:value="1"/><transforms:coefficient transforms:value="0.2"/>'
        '<transforms:coefficient transforms:value="0.1"/></transforms:spectrum>'
        '<transforms:spectrum><transforms:coefficient transforms:value="0.1"/><transforms:coefficient transforms:value="1"/>'
        '<transforms:coefficient transforms:value="0.3"/></transforms:spectrum></transforms:spectrumMatrix>'
    )
    f = sample()
    fitc = parse_gatingml(_doc(matrix + RANGE.format(parent="", comp="Spec", tr="", name="FITC")))
    assert 0 < apply_gatingml(fitc, f.events, f.channel_names)["R"].sum() < f.n_events
    detector = parse_gatingml(_doc(matrix + RANGE.format(parent="", comp="Spec", tr="", name="FL2-H")))
    with pytest.raises(StrategyError, match=r"'FL2-H' is a detector of the non-square spectrumMatrix 'Spec'.*\['FITC', 'PE'\]"):
        apply_gatingml(detector, f.events, f.channel_names)


RECT1 = (DATA / "gml" / "gml_rect1_gate.xml").read_text()


@pytest.mark.parametrize("xml,named", [
    # a Gating-ML 1.5 document: its gates were not found and 0 gates were applied without a word
    (RECT1.replace("Gating-ML/v2.0/gating", "Gating-ML/v1.5/gating"), r"root element <Gating-ML> in namespace '\S*v1.5/gating'"),
    # a FlowJo workspace given as --gatingml
    ((Path(__file__).parent / "data" / "flowjo" / "simple_poly_and_rect.wsp").read_text(), "root element <Workspace>"),
    # an element of the gating namespace that Gating-ML 2.0 does not define (a typo, a 1.5 gate type)
    (RECT1.replace("gating:RectangleGate", "gating:RectangularGate"), r"element <RectangularGate> \(namespace '\S*v2.0/gating'\) in <Gating-ML>"),
    # a Gating-ML gate in another namespace inside a wrapper element
    (RECT1.replace("<gating:RectangleGate", '<sample><RectangleGate xmlns="urn:other"').replace("</gating:RectangleGate>", "</RectangleGate></sample>"),
     r"element <RectangleGate> \(namespace 'urn:other'\) in <sample>"),
])
def test_elements_gatingml_2_does_not_define_are_named_not_skipped(xml, named):
    with pytest.raises(StrategyError, match=named):
        parse_gatingml(xml, source="doc.xml")


def test_foreign_wrappers_and_custom_info_are_transparent():
    """Metadata in other namespaces and custom_info content are ignored; gates inside a foreign
    wrapper are read (gml_range_gate_attr_testing.xml wraps its gate in <sample>)."""
    wrapped = RECT1.replace("<gating:RectangleGate", "<sample><author>me</author><gating:RectangleGate").replace(
        "</gating:RectangleGate>", "</gating:RectangleGate></sample>")
    wrapped = wrapped.replace("</gating:Gating-ML>", "<data-type:custom_info><anything><x/></anything></data-type:custom_info></gating:Gating-ML>")
    assert list(parse_gatingml(wrapped).gates) == ["Rectangle1"]


# ---------------------------------------------------------------- dimensions named by $PnS or FlowJo's name

STAIN = Path(__file__).parents[1] / "sample_fcs" / "TIL001_surface_stain.fcs"
LOGICLE = ('<transforms:transformation transforms:id="L"><transforms:logicle transforms:T="262144" transforms:W="0.5" '
           'transforms:M="4.5" transforms:A="0"/></transforms:transformation>')


def _marker_rectangle(x: str, y: str) -> str:
    """A compensated logicle rectangle on two dimensions named ``x`` and ``y``."""
    dims = "".join(f'<gating:dimension gating:compensation-ref="FCS" gating:transformation-ref="L" gating:min="{lo}">'
                   f'<data-type:fcs-dimension data-type:name="{n}"/></gating:dimension>' for n, lo in ((x, 0.45), (y, 0.3)))
    return _doc(LOGICLE + f'<gating:RectangleGate gating:id="R">{dims}</gating:RectangleGate>')


def test_a_dimension_named_by_its_pns_is_that_channel(tmp_path):
    """'CD3 FITC' / 'PD1 PE' are the $PnS of FITC-A / PE-A: same events as by $PnN, and as FlowKit
    (which looks a name up among $PnN, then $PnS) reads the document. They were refused."""
    import flowkit as fk

    f = read_fcs(STAIN)
    markers = list(f.channels["pns"])
    by_pnn = apply_gatingml(parse_gatingml(_marker_rectangle("FITC-A", "PE-A")), f.events, f.channel_names, f.spillover)["R"]
    xml = _marker_rectangle("CD3 FITC", "PD1 PE")
    by_pns = apply_gatingml(parse_gatingml(xml), f.events, f.channel_names, f.spillover, markers)["R"]
    (tmp_path / "pns.xml").write_text(xml)
    theirs = fk.parse_gating_xml(str(tmp_path / "pns.xml")).gate_sample(fk.Sample(str(STAIN))).get_gate_membership("R")
    assert 100 < by_pns.sum() < f.n_events - 100
    assert np.array_equal(by_pns, by_pnn) and np.array_equal(by_pns, theirs)


def test_a_pns_two_channels_carry_is_refused_naming_both():
    from tilpheno.errors import GatingError

    doc = parse_gatingml(_doc(RANGE.format(parent="", comp="uncompensated", tr="", name="CD4")))
    events = np.array([[0.0, 2.0], [2.0, 0.0]])
    with pytest.raises(GatingError, match=r"'CD4' is ambiguous: it is the \$PnS of 'FL1-A' and the \$PnS of 'FL1-H'"):
        apply_gatingml(doc, events, ["FL1-A", "FL1-H"], None, ["CD4", "CD4"])
    # a $PnN is what Gating-ML names: a channel whose $PnN is the name is the one meant
    assert apply_gatingml(doc, events, ["FL1-A", "CD4"], None, ["CD4", ""])["R"].tolist() == [True, False]
    assert apply_gatingml(doc, events, ["FL1-A", "FL1-H"], None, ["CD4", ""])["R"].tolist() == [False, True]


RATIO = ('<transforms:transformation transforms:id="PDoverCD3"><transforms:fratio transforms:A="1" transforms:B="0" transforms:C="0">'
         '<data-type:fcs-dimension data-type:name="PE-A"/><data-type:fcs-dimension data-type:name="FITC-A"/></transforms:fratio>'
         '</transforms:transformation>'
         '<gating:RectangleGate gating:id="R"><gating:dimension gating:compensation-ref="{comp}" gating:min="0.05" gating:max="2">'
         '<data-type:new-dimension data-type:transformation-ref="PDoverCD3"/></gating:dimension></gating:RectangleGate>')


@pytest.mark.parametrize("comp", ["FCS", "uncompensated"])
def test_a_ratio_dimension_is_a_ratio_of_values_compensated_as_its_compensation_ref_says(tmp_path, comp):
    """Gating-ML 2.0: a dimension's compensation-ref applies before its transformations, and for a
    new-dimension to the fratio's two arguments (as R flowUtils, the reference implementation, does).
    FlowKit 1.3 computes every fratio from uncompensated values: it agrees for 'uncompensated' only."""
    import flowkit as fk

    from tilpheno.compensation import compensate

    f = read_fcs(STAIN)
    values = compensate(f.events, f.channel_names, f.spillover) if comp == "FCS" else f.events
    pe, fitc = (values[:, f.channel_names.index(c)] for c in ("PE-A", "FITC-A"))
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = (pe / fitc >= 0.05) & (pe / fitc < 2)
    xml = _doc(RATIO.format(comp=comp))
    got = apply_gatingml(parse_gatingml(xml), f.events, f.channel_names, f.spillover)["R"]
    assert 100 < expected.sum() < f.n_events - 100
    assert np.array_equal(got, expected)
    (tmp_path / "ratio.xml").write_text(xml)
    flowkit = fk.parse_gating_xml(str(tmp_path / "ratio.xml")).gate_sample(fk.Sample(str(STAIN))).get_gate_membership("R")
    assert np.array_equal(flowkit, expected) == (comp == "uncompensated")


BOUNDED = ('<transforms:transformation transforms:id="Lin" {bounds}><transforms:flin transforms:T="1000" transforms:A="0"/>'
           '</transforms:transformation>'
           '<transforms:transformation transforms:id="Rat" {bounds}><transforms:fratio transforms:A="0.001" transforms:B="0" transforms:C="0">'
           '<data-type:fcs-dimension data-type:name="FL1-H"/><data-type:fcs-dimension data-type:name="FL2-H"/></transforms:fratio>'
           '</transforms:transformation>'
           '<gating:RectangleGate gating:id="Top"><gating:dimension gating:compensation-ref="uncompensated" gating:min="0.5" '
           'gating:max="0.6" gating:transformation-ref="Lin"><data-type:fcs-dimension data-type:name="FL1-H"/></gating:dimension>'
           '</gating:RectangleGate>'
           '<gating:RectangleGate gating:id="Low"><gating:dimension gating:compensation-ref="uncompensated" gating:max="0.1">'
           '<data-type:new-dimension data-type:transformation-ref="Rat"/></gating:dimension></gating:RectangleGate>')


def test_transformation_bounds_limit_the_transformed_values():
    """Gating-ML 2.0 boundMin/boundMax: f -> max(min(f, boundMax), boundMin). With boundMax 0.5 every
    event above it sits on 0.5, inside [0.5, 0.6); with boundMin 0.1 every ratio below it sits on
    0.1, outside (-inf, 0.1). The bounds were ignored. The document written back keeps them."""
    from tilpheno.gates.gatingml import gatingml_xml

    f = sample()
    fl1, fl2 = (f.events[:, f.channel_names.index(c)] for c in ("FL1-H", "FL2-H"))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = 0.001 * fl1 / fl2
    lin = fl1 / 1000
    unbounded = {"Top": (lin >= 0.5) & (lin < 0.6), "Low": ratio < 0.1}
    bounded = {"Top": lin >= 0.5, "Low": np.zeros(f.n_events, dtype=bool)}
    assert all(0 < m.sum() < f.n_events for m in unbounded.values()) and (lin >= 0.6).sum() > 0
    for bounds, expected in (("", unbounded), ('transforms:boundMin="0.1" transforms:boundMax="0.5"', bounded)):
        doc = parse_gatingml(_doc(BOUNDED.format(bounds=bounds)))
        for d in (doc, parse_gatingml(gatingml_xml(doc))):
            got = apply_gatingml(d, f.events, f.channel_names)
            for gid, mask in expected.items():
                assert np.array_equal(got[gid], mask), (bounds, gid)
    with pytest.raises(StrategyError, match="'Lin'.*boundMin 2.0 is greater than boundMax 1.0"):
        parse_gatingml(_doc(BOUNDED.format(bounds='transforms:boundMin="2" transforms:boundMax="1"')))


@pytest.mark.parametrize("doc,old,new,named", [
    ("gml_transform_logicle_range4_gate.xml", 'transforms:W="0.5"', 'transforms:W="3"',
     r"transformation 'Logicle_10000_0.5_4.5_0' \(logicle T=10000, W=3, M=4.5, A=0\): W must"),
    ("gml_transform_logicle_range4_gate.xml", 'transforms:id="Logicle_10000_0.5_4.5_0"',
     'transforms:id="Logicle_10000_0.5_4.5_0" transforms:boundMin="2" transforms:boundMax="1"',
     "transformation 'Logicle_10000_0.5_4.5_0': boundMin 2.0 is greater than boundMax 1.0"),
    ("gml_matrix_rect3_gate.xml", '<transforms:coefficient transforms:value="0.06" />', "",
     "spectrumMatrix 'MySpill': its spectra have unequal numbers of coefficients"),
    ("gml_ellipse1_gate.xml", '<gating:entry data-type:value="62.5" />', "",
     r"gate 'Ellipse1': .*2x2 covariance .*rows of lengths \[1, 2\]"),
    ("gml_quadrant1_gate.xml", "<gating:value>12.14748</gating:value>", "",
     r"gate 'Quadrant1': quadrant divider 'FL2' on 'FL2-H\[FCS\]': values must be finite, distinct, increasing"),
], ids=["logicle-W", "bounds", "short-spectrum", "short-covariance-row", "divider-without-values"])
def test_a_bad_element_names_the_file_and_its_id(tmp_path, doc, old, new, named):
    """A logicle W > M/2, or boundMin > boundMax, in a Gating-ML file: the error named the
    transformation but not the file it came from. A spectrum or covariance row with one number
    missing: a numpy ValueError (a traceback from apply-gates). A quadrant divider without values:
    the error did not name the file or the gate."""
    bad = tmp_path / "bad.xml"
    text = (DATA / "gml" / doc).read_text()
    assert old in text
    bad.write_text(text.replace(old, new, 1))
    with pytest.raises(StrategyError, match=f"^{bad}: {named}"):
        read_gatingml(bad)
