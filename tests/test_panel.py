"""Panels: marker normalisation, detector mapping, FMO resolution, overrides, require()."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tilpheno.errors import PanelError, TableError, TilphenoError
from tilpheno.io.fcs import read_fcs_metadata
from tilpheno.panel import normalize_marker, panel_from_fcs, read_panel_file, require
from tilpheno.vocabulary import default_vocabulary, key

sys.path.insert(0, str(Path(__file__).parent))
from design_support import design_file  # noqa: E402
from malformed_fcs import float_file  # noqa: E402

SURFACE = {"CD3": "FITC-A", "PD1": "PE-A", "7AAD": "PerCP-Cy5-5-A", "CD56": "APC-A", "CD4": "BV421-A", "CD8": "APC-H7-A"}
TREG = {"CD3": "FITC-A", "FoxP3": "PE-A", "CD4": "BV421-A"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("CD3", "CD3"), ("CD3 BV421", "CD3"), ("hCD3", "CD3"), ("anti-CD3", "CD3"), ("CD3-FITC", "CD3"),
        ("cd4", "CD4"), ("CD4 BV421", "CD4"), ("CD8 APC-H7", "CD8"), ("CD8a", "CD8"), ("CD56 APC", "CD56"),
        ("PD-1", "PD1"), ("PD1 PE", "PD1"), ("CD279", "PD1"), ("CD279 (PD-1) BV605", "PD1"),
        ("Foxp3", "FoxP3"), ("FOXP3 PE", "FoxP3"), ("FoxP3", "FoxP3"),
        ("7-AAD", "7AAD"), ("7AAD", "7AAD"), ("7 AAD", "7AAD"), ("7-aad", "7AAD"),
        # free text: any marker or dye; fluorochromes, detector names and filler words are not markers
        ("CD45", "CD45"), ("CD34 PE", "CD34"), ("CD38-BV605", "CD38"), ("CD45RA FITC", "CD45RA"), ("HLA-DR", "HLA-DR"),
        ("Ki-67 BV605", "Ki67"), ("LAG-3", "LAG3"), ("CD223 BV786", "LAG3"), ("DAPI", "DAPI"), ("Zombie NIR", "Zombie"),
        ("Live/Dead Aqua", "LiveDead"), ("LIVE/DEAD Fixable Aqua", "LiveDead"), ("NKp46 PE-Cy7", "NKp46"),
        ("FSC-A", None), ("FL1-H", None), ("", None), (None, None), ("APC-H7", None), ("FITC", None), ("BV421-A", None),
        # instruments' detector labels and Beckman Coulter's dye names (tests/data/fcs)
        ("FL1-Height", None), ("FSC-Height", None), ("FS INT LIN", None), ("FL2 Log", None), ("SSC LogA", None),
        ("Time (102.40 sec.)", None), ("Width", None), ("Alexa Fluor™ 405-A", None),
        ("CD22-PC5", "CD22"), ("CD22 PC5.5", "CD22"), ("TIGIT-PC7", "TIGIT"), ("CD16 KrO", "CD16"),
        # a detector shared by two stains names no marker (FlowAtlas 423/428: "Foxp3-IgM", "CD3-IgD");
        # two spellings of one marker are one marker
        ("Foxp3-IgM", None), ("CD3-IgD", None), ("CD279-PD1", "PD1"), ("CD8-PE-Cy7", "CD8"),
        # two words that name a marker joined win over the first alone (data1.fcs's 'CD8 B PE': the beta chain)
        ("CD8 B PE", "CD8b"), ("CD8 beta APC", "CD8b"), ("CD8 A PE", "CD8"), ("PD 1 BV421", "PD1"),
        # a word of one or two letters after a name continues it, unless a fluorochrome, filler, signal letter
        ("CD45 RA FITC", "CD45RA"), ("HLA DR", "HLA-DR"), ("CD45 RO PE-Cy7", "CD45RO"), ("TCR gd", "TCR-gd"),
        ("CD8β", "CD8b"), ("CD3 e", "CD3"), ("CD3 Ab", "CD3"), ("CD3 PE", "CD3"), ("CD3 OKT3", "CD3"), ("KLRG1 A", "KLRG1"),
        ("CD4 CD45 RA", None), ("xxxxxxxxx", None),
    ],
)
def test_normalize_marker(text, expected):
    assert normalize_marker(text) == expected


@pytest.mark.parametrize("name, markers", [
    # FACSCalibur: $PnS 'FL1-Height' ... 'FL4-Height' name detectors, no marker: they were markers 'FL1-Height' ...
    ("fcsparser_instruments/FACSCaliburHTS/Sample_Well_A02.fcs", {}),
    # Beckman Coulter: 'CD103-FITC', 'CD23-PE', 'CD19-ECD', 'CD22-PC5' (PC5: PE-Cy5), 'CD45-PC7': CD22 was 'CD22-PC5'
    ("fcsparser_instruments/fake_bitmask_error/fcs1_cleaned.lmd",
     {"CD103": "FL1 INT LOG", "CD23": "FL2 INT LOG", "CD19": "FL3 INT LOG", "CD22": "FL4 INT LOG", "CD45": "FL5 INT LOG"}),
    # 'CD4 FITC', 'CD8 B PE', 'CD3 PerCP', 'CD8 APC': 'CD8 B' was CD8 (FL4-H's CD8 never gated); two words that
    # name a marker joined win over the first alone: CD8b, the beta chain (vocabulary alias CD8beta)
    ("flowio/data1.fcs", {"CD4": "FL1-H", "CD8b": "FL2-H", "CD3": "FL3-H", "CD8": "FL4-H"}),
])
def test_real_files_labels(name, markers):
    """The markers new-study reads from real instruments' $PnS labels (as each label says them)."""
    from tilpheno.panel import file_markers

    fcs = read_fcs_metadata(Path(__file__).parent / "data" / "fcs" / name)
    assert file_markers(fcs, default_vocabulary(), None) == markers


def _relabelled(tmp_path: Path, name: str, old: bytes, new: bytes):
    """A real file of tests/data with one $PnS label rewritten (as long: the offsets hold)."""
    data = (Path(__file__).parent / "data" / name).read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path = tmp_path / Path(name).name
    path.write_bytes(data.replace(old, new))
    return read_fcs_metadata(path)


@pytest.mark.parametrize("name, old, new, marker, detector", [
    # an isoform written apart from its CD name: FL4-H 'CD45 RA' was CD45 (RA taken for a clone)
    ("fcs/flowio/data1.fcs", b"CD8 APC", b"CD45 RA", "CD45RA", "FL4-H"),
    ("fcs/flowio/data1.fcs", b"CD4 FITC", b"CD45 RO ", "CD45RO", "FL1-H"),
    # a locus written apart: FlowAtlas 390C's 'HLA-DR' as 'HLA DR' was the free-text marker HLA
    ("realdata_flowatlas/fcs/390C_Ileum_028.fcs", b"HLA-DR", b"HLA DR", "HLA-DR", "FJComp-405 515_20-A"),
])
def test_a_name_written_in_two_words_is_one_marker(tmp_path, name, old, new, marker, detector):
    """A word of one or two letters after a name continues it (an isoform, a chain, a locus), unless
    a fluorochrome, filler word, prefix, detector family, signal letter or known marker. The other
    labels of the file read as before."""
    from tilpheno.panel import file_markers

    vocabulary = default_vocabulary()
    before = file_markers(read_fcs_metadata(Path(__file__).parent / "data" / name), vocabulary, None)
    after = file_markers(_relabelled(tmp_path, name, old, new), vocabulary, None)
    assert after[marker] == detector
    assert {m: d for m, d in after.items() if d != detector} == {m: d for m, d in before.items() if d != detector}
    assert vocabulary.same(marker, normalize_marker(new.decode()))


@pytest.mark.parametrize("label, marker", [
    ("CD45 KO", "CD45"), ("CD8 PO", "CD8"), ("CD16 PE TR", "CD16"),   # Krome Orange, Pacific Orange, PE-Texas Red
    ("CD3 AF 594", "CD3"), ("CD4 BV 999", "CD4"), ("CD19 eF 999", "CD19"), ("CD56 CF 405M", "CD56"),
    ("CD45 RA FITC", "CD45RA"),
])
def test_a_fluorochrome_written_in_short_after_a_name_is_no_isoform(label, marker):
    """The word-of-one-or-two-letters rule (``CD45 RA`` = CD45RA) read Beckman's 'CD45 KO' (Krome
    Orange) as a marker CD45KO and 'CD8 PO' (Pacific Orange) as CD8PO, where main read CD45 and CD8;
    so a dye family's word written apart from a number it does not list ('AF 594') -> the short names
    are fluorochromes, each family word too. An isoform still joins its name."""
    assert normalize_marker(label) == marker


def test_masked_labels_and_a_slashed_name_are_read_as_written():
    """flowio's data_start_offset_discrepancy_example.fcs masks every $PnS as 'xxxxxxxxx' (an
    anonymised export): each was a marker 'xxxxxxxxx' (four detectors one marker) -> one letter
    repeated names no marker. FlowSOM's mouse file labels PE-A 'NK1/1' (NK1.1, mouse NK cells): it
    was NK1 -> the vocabulary's NK1.1 (its key, NK11, as 'NK1.1')."""
    from tilpheno.panel import file_markers

    vocabulary = default_vocabulary()
    masked = read_fcs_metadata(Path(__file__).parent / "data" / "fcs" / "flowio" / "data_start_offset_discrepancy_example.fcs")
    assert {str(s) for s in masked.channels["pns"]} >= {"xxxxxxxxx", "xxxxxxxxxx"}
    assert file_markers(masked, vocabulary, None) == {}
    assert normalize_marker("NK1/1") == "NK1.1" == normalize_marker("NK1.1 PE")
    assert normalize_marker("CD161c") == "NK1.1"


def test_the_syto_family_is_read_by_its_number_without_false_matches():
    """Only 17 SYTO dyes were listed: 'SYTO 17', 'SYTO-14' (real SYTO dyes not in the list) were
    the marker 'SYTO' (the number lost: every SYTO dye the same marker) -> the vocabulary's
    ``numbered:`` family reads any SYTO number. No false match: SYTOX (another family) and every
    real $PnS/$PnN label of tests/data/fcs read as without the family, 'Syto 41' (FACSDiva) aside."""
    import dataclasses

    vocabulary = default_vocabulary()
    assert [vocabulary.marker_in(label) for label in ("SYTO 17", "SYTO-14 FITC", "syto80", "Syto 41", "SYTO 62 APC")] \
        == ["SYTO17", "SYTO14", "SYTO80", "SYTO41", "SYTO62"]
    assert [vocabulary.marker_in(label) for label in ("SYTOX Green", "SYTOX AADvanced", "SYTO", "SYTO BC")] \
        == ["SYTOX", "SYTOX", "SYTO", "SYTO-BC"]   # SYTO BC, a dye of its own: two letters continue a name
    plain = dataclasses.replace(vocabulary, numbered={})
    changed = {label for label in _corpus_labels() if vocabulary.marker_in(label) != plain.marker_in(label)}
    assert changed == {"Syto 41"}


def _corpus_labels() -> set[str]:
    """Every $PnN and $PnS of the real files under tests/data (instruments' corpus, FlowAtlas)."""
    labels = set()
    for path in sorted((Path(__file__).parent / "data").rglob("*")):
        try:
            fcs = read_fcs_metadata(path, checksum=False)
        except (TilphenoError, OSError):   # the corpus' corrupted file, folders, licences, truth arrays
            continue
        labels |= {str(x) for x in (*fcs.channels["pnn"], *fcs.channels["pns"])}
    assert len(labels) > 200
    return labels


def test_a_known_marker_joined_to_an_unknown_one_names_no_marker(tmp_path):
    """$PnS 'CD39-TIGIT' (one detector, two antibodies; TIGIT not in the vocabulary then, KLRG1 still) was read as
    CD39 without a word -> no marker, and a study needing CD39 is told in one line which file's
    detector carries the label. No real label of tests/data reads otherwise (marker + fluorochrome
    tails such as 'CD4-PerCP-Cy5.5', 'CD56-PE-Texas Red' stay one marker)."""
    vocabulary = default_vocabulary()
    assert [normalize_marker(t) for t in ("CD39-TIGIT", "TIGIT-CD39", "CD39-KLRG1", "KLRG1-CD39", "CD45-RA",
                                          "CD4-PerCP-Cy5.5", "CD56-PE-Texas Red", "Ki-67-BV605", "anti-CD3", "CD3-FITC-A")] \
        == [None, None, None, None, None, "CD4", "CD56", "Ki67", "CD3", "CD3"]
    # but 100715.fcs's dump channel: CD14, a CD name, is no clone (test_scaffold.py::test_a_dump_channel_names_its_dye_and_its_marker)
    assert [label for label in _corpus_labels() if vocabulary.named_markers(label) != vocabulary.known_markers(label)] \
        == ["VIVID / CD14"]
    path = tmp_path / "P1_surface.fcs"
    path.write_bytes(float_file(np.ones((3, 3)), channels=("FSC-A", "FITC-A", "PE-A"),
                                extra={"$P2S": "CD3 FITC", "$P3S": "CD39-TIGIT"}))
    panel = panel_from_fcs(read_fcs_metadata(path))
    assert dict(panel) == {"CD3": "FITC-A"}
    # new-study's warning ('no marker read: ...', with the files) lists it
    from tilpheno.panel import shared_labels
    assert [(s.detector, s.markers) for s in shared_labels(panel.channels, panel.markers, vocabulary)] == \
        [("PE-A", ("CD39", "TIGIT"))]
    with pytest.raises(PanelError) as info:
        require(panel, ["CD3", "CD39"])
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: marker(s) CD39 not found; detector PE-A's label "
                                                      "'CD39-TIGIT' names CD39 and TIGIT")


def test_a_second_marker_after_a_space_names_no_marker_a_clone_does(tmp_path):
    """$PnS 'CD39 TIGIT' (one detector, two antibodies, written with a space) was read as CD39:
    TIGIT, not in the vocabulary, passed for a clone name ('CD3 OKT3', 'CD8 SK1') -> TIGIT is a
    known marker (vocabulary.yaml), so the label names two markers and reads as none, as 'CD39-TIGIT';
    a clone after the marker still reads as the marker. Every real label of tests/data reads as
    before (the label survey of /work/shared's fcs_corpus, realdata and flowjo too: none changed)."""
    vocabulary = default_vocabulary()
    assert [normalize_marker(t) for t in ("CD39 TIGIT", "TIGIT CD39", "CD39 CD73", "CD137 PE", "4-1BB BV421")] \
        == [None, None, None, "CD137", "CD137"]
    assert [normalize_marker(t) for t in ("CD3 OKT3", "CD8 SK1", "CD4 RPA-T4", "PD-1 EH12.2H7", "CD3 UCHT1 FITC")] \
        == ["CD3", "CD8", "CD4", "PD1", "CD3"]
    without = replace(vocabulary, canonical={k: c for k, c in vocabulary.canonical.items() if c not in ("TIGIT", "CD73", "CD137")})
    assert not [label for label in _corpus_labels() if vocabulary.marker_in(label) != without.marker_in(label)]
    path = tmp_path / "P1_surface.fcs"
    path.write_bytes(float_file(np.ones((3, 3)), channels=("FSC-A", "FITC-A", "PE-A"),
                                extra={"$P2S": "CD3 FITC", "$P3S": "CD39 TIGIT"}))
    panel = panel_from_fcs(read_fcs_metadata(path))
    assert dict(panel) == {"CD3": "FITC-A"}
    with pytest.raises(PanelError) as info:
        require(panel, ["CD3", "CD39"])
    assert "'CD39 TIGIT' names CD39 and TIGIT" in str(info.value)


def test_an_unknown_word_before_a_marker_or_a_plus_between_two_names_no_marker():
    """'KLRG1 CD39' (KLRG1 not in the vocabulary) read as CD39: an unknown word *before* the marker
    was dropped as a clone is after it ('CD3 OKT3') -> it is another stain on the detector, and the
    label names CD39 and KLRG1, so no marker (as 'KLRG1-CD39'). 'CD39+TIGIT' read as the free-text
    marker 'CD39+TIGIT' -> '+' joins stains: CD39 and TIGIT, no marker ('CD45RA+CD62L+' too, both
    unknown); 'CD4+' is CD4. Prefixes, fluorochromes, filler words, numbers and wavelengths before
    a marker are still none ('h CD3', 'FITC CD3', '488/552nm PI (615/30) LogH'); every real label of
    tests/data names what :meth:`known_markers` finds (none is read otherwise)."""
    vocabulary = default_vocabulary()
    assert [vocabulary.named_markers(t) for t in ("KLRG1 CD39", "CD39+TIGIT", "CD45RA+CD62L+")] == \
        [("CD39", "KLRG1"), ("CD39", "TIGIT"), ("CD45RA", "CD62L")]
    assert [normalize_marker(t) for t in ("KLRG1 CD39", "KLRG1 CD39 BV605", "CD39+TIGIT", "CD45RA+CD62L+")] == [None] * 4
    assert [normalize_marker(t) for t in ("CD4+", "h CD3", "anti CD3", "FITC CD3", "BV421 CD4", "Mouse anti-Human CD8",
                                          "488/552nm PI (615/30) LogH", "CD3 OKT3", "PD 1 BV421")] == \
        ["CD4", "CD3", "CD3", "CD3", "CD4", "CD8", "PI", "CD3", "PD1"]
    # but 100715.fcs's dump channel: CD14, a CD name, is no clone (test_scaffold.py::test_a_dump_channel_names_its_dye_and_its_marker)
    assert [label for label in _corpus_labels() if vocabulary.named_markers(label) != vocabulary.known_markers(label)] \
        == ["VIVID / CD14"]


def test_canonical_names_normalise_to_themselves():
    names = sorted(set(default_vocabulary().canonical.values()))
    assert {"CD3", "PD1", "FoxP3", "7AAD", "LAG3"} <= set(names)
    assert [normalize_marker(m) for m in names] == names


def test_the_alpha_and_the_beta_chain_of_cd8_are_two_markers(tmp_path):
    """CD8b was an alias of CD8: a panel staining CD8 alpha (CD8aa and CD8ab cells) and CD8 beta (CD8ab T
    cells only) on two detectors read as one marker labelled on two detectors, the beta chain's gate and
    variable never drafted -> CD8b (CD8beta) is its own marker, nested within CD3 as CD8 is; CD8a is CD8."""
    assert [normalize_marker(t) for t in ("CD8a", "CD8alpha", "CD8b", "CD8 beta", "CD8b BV510")] == \
        ["CD8", "CD8", "CD8b", "CD8b", "CD8b"]
    assert default_vocabulary().lineage_parent("CD8 beta") == "CD3"
    path = tmp_path / "cd8.fcs"
    path.write_bytes(float_file(np.ones((3, 4)), channels=("FSC-A", "SSC-A", "APC-H7-A", "PE-A"),
                                extra={"$P3S": "CD8a APC-H7", "$P4S": "CD8b PE"}))
    assert dict(panel_from_fcs(read_fcs_metadata(path))) == {"CD8": "APC-H7-A", "CD8b": "PE-A"}


def test_surface_and_treg_panels_follow_the_design_layout(tmp_path):
    surface = panel_from_fcs(read_fcs_metadata(design_file(tmp_path, "s.fcs", "surface")))
    treg = panel_from_fcs(read_fcs_metadata(design_file(tmp_path, "t.fcs", "treg")))
    assert dict(surface) == SURFACE
    assert dict(treg) == TREG
    # one detector, different markers in different tubes
    assert surface.marker_of("PE-A") == "PD1" and treg.marker_of("PE-A") == "FoxP3"
    assert surface.detectors["APC-H7-A"] == "CD8"
    assert surface.source.endswith("s.fcs")


def test_fmo_marker_resolved_from_the_stained_tube(tmp_path):
    stained = read_fcs_metadata(design_file(tmp_path, "stain.fcs", "surface"))
    fmo = read_fcs_metadata(design_file(tmp_path, "fmo.fcs", "surface", omit="PD1"))
    alone = panel_from_fcs(fmo)
    assert "PD1" not in alone and len(alone) == 5
    for panel in (panel_from_fcs(fmo, stained=stained), panel_from_fcs(fmo, reference=panel_from_fcs(stained))):
        assert dict(panel) == SURFACE
        assert set(panel.resolved) == {"PD1"}
    treg_fmo = read_fcs_metadata(design_file(tmp_path, "treg_fmo.fcs", "treg", omit="FoxP3"))
    treg_stain = read_fcs_metadata(design_file(tmp_path, "treg_stain.fcs", "treg"))
    assert dict(panel_from_fcs(treg_fmo, stained=treg_stain)) == TREG


def test_reference_does_not_override_a_labelled_detector(tmp_path):
    """The Treg stained panel must not put FoxP3 on a surface file's PE-A (labelled PD1)."""
    treg_stain = read_fcs_metadata(design_file(tmp_path, "treg_stain.fcs", "treg"))
    surface = read_fcs_metadata(design_file(tmp_path, "s.fcs", "surface"))
    panel = panel_from_fcs(surface, stained=treg_stain)
    assert dict(panel) == SURFACE and "FoxP3" not in panel


def test_marker_named_in_pnn_when_pns_is_absent(tmp_path):
    path = tmp_path / "renamed.fcs"
    path.write_bytes(float_file(np.ones((2, 4)), channels=("FSC-A", "CD3", "PD-1 PE-A", "Time"),
                                extra={"$P3S": "CD8 (re-used detector)"}))
    panel = panel_from_fcs(read_fcs_metadata(path))
    assert dict(panel) == {"CD3": "CD3", "CD8": "PD-1 PE-A"}  # $PnS wins over $PnN


def test_shared_detector_label_is_not_read_as_its_first_marker():
    """FlowAtlas donor 423's T+B panel labels one detector 'Foxp3-IgM' (Foxp3 in T cells, IgM in B
    cells): it was read as FoxP3 without a word. Now it names no marker, and a study needing FoxP3
    is told, in one line, which detector's label is shared and what to give."""
    fcs = read_fcs_metadata(Path(__file__).parent / "data" / "realdata_flowatlas" / "fcs" / "423_Donor_Lung_032.fcs")
    panel = panel_from_fcs(fcs)
    assert "FoxP3" not in panel and "IgM" not in panel and panel["CD19"] == "FJComp-405 585_15-A"
    with pytest.raises(PanelError) as info:
        require(panel, ["CD3", "Foxp3"])
    message = str(info.value)
    assert "\n" not in message and "423_Donor_Lung_032.fcs: marker(s) Foxp3 not found; detector FJComp-561 585_15-A's " \
        "label 'Foxp3-IgM' names FoxP3 and IgM" in message and "panel file row" in message
    overridden = panel_from_fcs(fcs, override={"FJComp-561 585_15-A": "FoxP3"})
    assert require(overridden, ["Foxp3"]) == {"Foxp3": "FJComp-561 585_15-A"}


def test_require_lists_the_channels(tmp_path):
    fmo = panel_from_fcs(read_fcs_metadata(design_file(tmp_path, "fmo.fcs", "surface", omit="CD8")))
    assert require(fmo, ["CD3", "CD4"]) == {"CD3": "FITC-A", "CD4": "BV421-A"}
    with pytest.raises(PanelError) as info:
        require(fmo, ["CD3", "CD8"])
    message = str(info.value)
    assert "fmo.fcs" in message and "CD8" in message
    assert "APC-H7-A (-)" in message and "FITC-A (CD3 FITC)" in message and "\n" not in message
    assert "a panel file" in message   # what to do about it: name the unlabelled detector


@pytest.mark.parametrize("with_matrix", [True, False])
def test_a_flowjo_export_with_raw_and_compensated_parameters(tmp_path, with_matrix):
    """FlowJo may export a detector both raw (FITC-A) and compensated (FJComp-FITC-A), with one
    $PnS: with the file's spillover matrix the raw one is used (compensated here, as FlowJo did);
    without a matrix the raw one could not be compensated, so the compensated parameter is used."""
    from tilpheno.io.fcs_write import write_fcs
    from tilpheno.io.spill import Spillover

    channels = [("FSC-A", None, 262144), ("FITC-A", "CD3 FITC", 262144), ("PE-A", "PD1 PE", 262144),
                ("FJComp-FITC-A", "CD3 FITC", 262144), ("FJComp-PE-A", "PD1 PE", 262144)]
    spill = Spillover(("FITC-A", "PE-A"), np.array([[1.0, 0.2], [0.05, 1.0]])) if with_matrix else None
    path = tmp_path / "export.fcs"
    write_fcs(path, np.ones((3, 5), dtype=np.float32), channels, {}, spillover=spill)
    panel = panel_from_fcs(read_fcs_metadata(path))
    expected = {"CD3": "FITC-A", "PD1": "PE-A"} if with_matrix else {"CD3": "FJComp-FITC-A", "PD1": "FJComp-PE-A"}
    assert dict(panel.markers) == expected
    # a matrix supplied for the file (an override) compensates the raw detectors: they are used
    assert dict(panel_from_fcs(read_fcs_metadata(path), compensating=True).markers) == {"CD3": "FITC-A", "PD1": "PE-A"}


def test_an_override_matrix_on_a_raw_and_compensated_export_compensates_the_raw_detectors(tmp_path):
    """A FlowJo export with raw and FJComp- parameters and no $SPILLOVER, gated with an override
    matrix: the raw detectors are compensated with it (the FJComp- ones may hold another
    compensation, here values halved) and the matrix is recorded as applied."""
    from tilpheno.gates.strategy import default_strategy_paths, load_strategy
    from tilpheno.gating import Sample
    from tilpheno.io.fcs_write import write_fcs
    from tilpheno.io.spill import Spillover

    strategy = [s for s in map(load_strategy, default_strategy_paths()) if s.tube == "treg"][0]
    markers = list(strategy.markers)   # CD3, CD4, FoxP3
    detectors = [f"D{i}-A" for i in range(len(markers))]
    rng = np.random.default_rng(7)
    true = rng.lognormal(6.0, 1.0, (400, len(markers)))
    matrix = np.eye(len(markers)) + 0.1 * (1 - np.eye(len(markers)))
    scatter = rng.uniform(20000, 200000, (400, 3))
    events = np.column_stack([scatter, true @ matrix, 0.5 * true]).astype(np.float32)
    channels = ([("FSC-A", None, 262144), ("FSC-H", None, 262144), ("SSC-A", None, 262144)]
                + [(d, m, 262144) for d, m in zip(detectors, markers)]
                + [("FJComp-" + d, m, 262144) for d, m in zip(detectors, markers)])
    path = tmp_path / "export.fcs"
    write_fcs(path, events, channels, {})
    plain = Sample.from_fcs(path, strategy)
    assert dict(plain.panel.markers) == {m: "FJComp-" + d for m, d in zip(markers, detectors)}
    override = Spillover(tuple(detectors), matrix, source="override.csv")
    sample = Sample.from_fcs(path, strategy, spillover=override)
    assert dict(sample.panel.markers) == dict(zip(markers, detectors))
    assert sample.spillover is override
    for i, m in enumerate(markers):   # float32 storage of the raw values: relative 1e-6
        expected = strategy.transform_for(m).apply(true[:, i].copy())
        np.testing.assert_allclose(sample.data[m], expected, rtol=0, atol=1e-5)


def test_override_mapping_and_files(tmp_path):
    fcs = read_fcs_metadata(design_file(tmp_path, "s.fcs", "surface"))
    panel = panel_from_fcs(fcs, override={"APC-A": "NKp46"})
    assert panel["NKp46"] == "APC-A" and "CD56" not in panel and panel.resolved["NKp46"] == "override"
    csv = tmp_path / "panel.csv"
    csv.write_text("tube,detector,marker\nsurface,PE-A,CD279\ntreg,PE-A,Foxp3\n*,APC-H7-A,hCD8\n")
    yaml = tmp_path / "panel.yaml"
    yaml.write_text("panel:\n  - {tube: surface, detector: PE-A, marker: CD279}\n  - {tube: '*', detector: APC-H7-A, marker: hCD8}\n")
    unlabelled = read_fcs_metadata(design_file(tmp_path, "u.fcs", "surface", omit="PD1"))
    for source in (csv, yaml, read_panel_file(csv)):
        panel = panel_from_fcs(unlabelled, override=source)
        assert panel["PD1"] == "PE-A" and panel["CD8"] == "APC-H7-A"
    with pytest.raises(PanelError, match="override maps CD3 to detector 'BUV395-A', not among the channels"):
        panel_from_fcs(fcs, override={"BUV395-A": "CD3"})
    # a panel file's row on a detector the file lacks: named by its place (process's panel_error, qc.csv)
    csv.write_text("tube,detector,marker\nsurface,PE-A,CD279\nsurface,APC-H7A,hCD8\n")
    for source in (csv, str(csv), read_panel_file(csv)):
        with pytest.raises(PanelError, match=rf"override maps CD8 to detector 'APC-H7A' \({csv}: row 3\), not among"):
            panel_from_fcs(unlabelled, override=source)


@pytest.mark.parametrize(
    "content, match",
    [
        ("tube,marker\nsurface,CD3\n", "missing column 'detector'"),
        ("tube,detector,marker\nsurface,,CD3\n", "row 2, column 'detector': empty"),
        ("tube,detector,marker\nsurface,FITC-A,\n", "row 2, column 'marker': empty"),
        # rows are named by their line, as the other tables name them: a title and blank lines were
        # 'missing column', or shifted the row named (pandas skips blank lines)
        ("Panel of run 5\n\ntube,detector,marker\nsurface,FITC-A,CD3\n\nsurface,,CD4\n", r"p.csv: row 6, column 'detector': empty"),
        ("tube;detector;marker\nsurface;FITC-A;CD3\n\n;PE-A;\n", r"p.csv: row 4, column 'marker': empty"),
    ],
)
def test_panel_file_errors(tmp_path, content, match):
    path = tmp_path / "p.csv"
    path.write_text(content)
    with pytest.raises(TableError, match=match):
        read_panel_file(path)


def test_panel_file_missing_and_bad_yaml(tmp_path):
    with pytest.raises(TableError, match="absent.csv: no such file$"):
        read_panel_file(tmp_path / "absent.csv")
    bad = tmp_path / "p.yaml"
    bad.write_text("panel: {not: a list}\n")
    with pytest.raises(TableError, match="list of"):
        read_panel_file(bad)


def test_vendors_dye_names_written_out_are_no_markers():
    """'Brilliant Violet 421 CD3' named no marker (the word 'Brilliant', not a fluorochrome, was read
    as a second stain before CD3) and a $PnS 'Brilliant Violet 421' read as the marker 'Brilliant'
    (new-study drafted a gate for it); so did BioLegend's 'PE/Cyanine7', 'APC/Fire 810', Thermo's
    'Super Bright 600', Miltenyi's 'PE-Vio770', BD's 'RB545' and a '™' after the number -> the
    vocabulary's fluorochrome words name them all: before or after a marker the label is that
    marker, alone it names none. Every real label of tests/data reads as before but five detector
    names that read as markers ('FL4 red' was the marker 'red', 'PE-Texas Red-A' 'PE-Texas', an
    Attune 'YG 586/15-A' 'YG'), now none."""
    vocabulary = default_vocabulary()
    dyes = ("Brilliant Violet 421", "Brilliant Violet 421™", "Brilliant Blue 515", "Brilliant Ultraviolet 395",
            "BV421", "PE-Cy7", "PE/Cyanine7", "PerCP/Cyanine5.5", "APC-H7", "APC/Fire 810", "PE/Fire 640",
            "Alexa Fluor 700", "Alexa Fluor® 488", "AF405", "FITC", "PerCP-Cy5.5", "Super Bright 600",
            "StarBright Violet 440", "NovaFluor Blue 555", "Spark YG 593", "KIRAVIA Blue 520", "Texas Red",
            "Pacific Blue", "Krome Orange", "PE-Vio770", "VioBright FITC", "Horizon V450", "RB545", "RY586",
            "BB630", "Qdot605", "eFluor 450", "DyLight 650")
    for dye in dyes:
        assert (dye, vocabulary.marker_in(dye)) == (dye, None)
        for label in (f"{dye} CD3", f"CD3 {dye}", f"{dye} anti-human CD3"):
            assert (label, vocabulary.marker_in(label), vocabulary.named_markers(label)) == (label, "CD3", ("CD3",))
    # the real labels: read against the vocabulary without the words these names added
    added = {key(w) for w in ("Pacific", "Krome", "Texas", "Brilliant", "Ultraviolet", "Horizon", "Super", "Bright",
                              "StarBright", "NovaFluor", "Kiravia", "DyLight", "iFluor", "cFluor", "AmCyan", "Fire",
                              "Dazzle", "Blue", "Green", "Yellow", "Orange", "Red", "UV", "YG", "Near-IR")}
    without = replace(vocabulary, fluorochromes=vocabulary.fluorochromes - added)
    changed = {label: (without.marker_in(label), vocabulary.marker_in(label))
               for label in _corpus_labels() if vocabulary.marker_in(label) != without.marker_in(label)}
    assert changed == {"FL4 red": ("red", None), "FL5 red": ("red", None), "PE-Texas Red-A": ("PE-Texas", None),
                       "YG 586/15-A": ("YG", None), "YG 780/60-A": ("YG", None)}


def test_dye_codes_vendor_words_and_attune_detectors_are_no_markers(tmp_path):
    """Cytek's cFluor codes ('cFluor B515' read as the marker B515, 'cFluor R668' as R668), Biotium's
    'CF405M', the vendor words on a vial ('BD Horizon BV421 CD3' named no marker: 'BD' taken for a
    second stain before CD3; 'BioLegend PE CD8' the same) and Attune detector names ('BL 530/30-A'
    read as the marker BL; RL, VL, YL too) -> the vocabulary's fluorochrome and filler lists name
    them: alone they name no marker, beside a marker the label is that marker. Real labels of
    tests/data: all read as before but the Attune, FlowJo-compensated ('FJComp-355 379_28-A' was the
    marker 'FJComp-355'; /work/shared's 'Comp-Pacific Blue-A' 'Comp') and 'PE-TxRed YG-A' detector
    names, now none."""
    vocabulary = default_vocabulary()
    for label in ("cFluor B515", "cFluor R668", "cFluor BYG575", "B515", "R668", "CF405M", "CF568", "BD Horizon BV421",
                  "BD Pharmingen PE-Cy7", "BioLegend PE", "eBioscience FITC", "Miltenyi VioBlue", "Sony",
                  "BL 530/30-A", "RL 780/60-A", "VL 525/50-A", "YL 585/16-A", "UV 379/28-A", "Comp-PE-Texas Red-A",
                  "FJComp-355 379_28-A", "PE-TxRed YG-A"):
        assert (label, vocabulary.marker_in(label)) == (label, None)
        for labelled in (f"{label} CD3", f"CD3 {label}"):
            assert (labelled, vocabulary.marker_in(labelled), vocabulary.named_markers(labelled)) == (labelled, "CD3", ("CD3",))
    assert vocabulary.marker_in("B220 cFluor B515") == "B220"   # a marker with a B and a number stays one
    path = tmp_path / "P1_surface.fcs"
    path.write_bytes(float_file(np.ones((3, 4)), channels=("FSC-A", "BL1-A", "VL1-A", "RL1-A"),
                                extra={"$P2S": "cFluor B515", "$P3S": "BD Horizon BV421 CD3", "$P4S": "CF640R anti-human CD8"}))
    assert dict(panel_from_fcs(read_fcs_metadata(path))) == {"CD3": "VL1-A", "CD8": "RL1-A"}
    # the real labels: read against the vocabulary without the words this test's names added
    fluorochromes = {key(w) for w in ("B515", "B532", "B548", "B675", "B690", "R659", "R668", "R685", "R720", "R780",
                                      "R840", "V420", "V547", "V610", "YG584", "BYG575", "BYG610", "BYG667", "BYG710",
                                      "BYG750", "BYG781", "TxRed")} | {f for f in vocabulary.fluorochromes if f.startswith("CF")
                                                                       and f[2:3].isdigit()}
    filler = {key(w) for w in ("BL", "RL", "VL", "YL", "Comp", "FJComp", "BD", "Pharmingen", "OptiBuild", "BioLegend",
                               "eBioscience", "Invitrogen", "Thermo", "Fisher", "ThermoFisher", "Miltenyi", "Sony",
                               "Beckman", "Coulter", "Cytek", "Biotium", "Bio-Rad", "Tonbo", "Abcam")}
    without = replace(vocabulary, fluorochromes=vocabulary.fluorochromes - fluorochromes, filler=vocabulary.filler - filler)
    changed = {label: (without.marker_in(label), vocabulary.marker_in(label))
               for label in _corpus_labels() if (vocabulary.marker_in(label), vocabulary.named_markers(label))
               != (without.marker_in(label), without.named_markers(label))}
    assert changed == {"BL 530/30-A": ("BL", None), "BL 695/40-A": ("BL", None), "RL 780/60-A": ("RL", None),
                       "VL 525/50-A": ("VL", None), "PE-TxRed YG-A": ("PE-TxRed", None),
                       **{label: (label.split(" ")[0], None) for label in changed if label.startswith("FJComp-")}}
    assert sum(label.startswith("FJComp-") for label in changed) == 20   # FlowAtlas's 20 compensated detectors


def test_split_dye_names_wavelengths_and_numbered_detectors_are_no_markers(tmp_path):
    """A new lab's labels: Biotium's dye with a space ('CF 405M' read as the marker 'CF'; 'BV 421',
    'APC H7' as 'BV', 'H7'), a laser's wavelength before a dye ('405nm BV421' read as '405nm'), an
    Attune detector with its laser ('488-BL1' read as the marker '488-BL1') or alone in free text
    ('BL1', 'VL3' read as markers; 'BL1 CD3' as two stains, no marker) -> none names a marker, and
    beside a marker the label is that marker. Real labels of tests/data: the 14 FACSAria parameter
    names '405nm BV421 (445/60) LogH' ... (free text: '405nm', '552nm', '642nm') now name none; the
    ``detectors:`` family (FL, moved out of code) changes only FACSCalibur/Beckman 'FL<n>' labels."""
    vocabulary = default_vocabulary()
    for label in ("CF 405M", "CF 488A", "BV 421", "BUV 395", "APC H7", "405nm BV421", "405nm", "740LP",
                  "488-BL1", "405-VL1", "BL1", "VL3", "RL1", "YL2", "UV4", "FL2", "FL2H", "405SSC"):
        assert (label, vocabulary.marker_in(label)) == (label, None)
        for labelled in (f"{label} CD3", f"CD3 {label}"):
            assert (labelled, vocabulary.marker_in(labelled), vocabulary.named_markers(labelled)) == (labelled, "CD3", ("CD3",))
    assert [vocabulary.marker_in(label) for label in ("KLRG1 CF 405M", "405nm BV421 KLRG1", "BL1 KLRG1", "HLA-DR", "B220")] \
        == ["KLRG1", "KLRG1", "KLRG1", "HLA-DR", "B220"]
    path = tmp_path / "P1_surface.fcs"
    path.write_bytes(float_file(np.ones((3, 5)), channels=("FSC-A", "BL1-A", "VL1-A", "RL1-A", "VL2-A"),
                                extra={"$P2S": "488-BL1 CD3", "$P3S": "CF 405M", "$P4S": "BL1", "$P5S": "405nm BV421 CD8"}))
    assert dict(panel_from_fcs(read_fcs_metadata(path))) == {"CD3": "BL1-A", "CD8": "VL2-A"}
    labels = _corpus_labels()
    wavelengths = sorted(label for label in labels if "nm " in label)
    assert len(wavelengths) == 15 and [vocabulary.marker_in(label) for label in wavelengths].count(None) == 14
    assert vocabulary.marker_in("488/552nm PI (615/30) LogH") == "PI"   # the dye PI names its detector: as before
    without = replace(vocabulary, detectors=frozenset())
    changed = {label for label in labels if (vocabulary.marker_in(label), vocabulary.named_markers(label))
               != (without.marker_in(label), without.named_markers(label))}
    assert changed and all(label.startswith("FL") and vocabulary.marker_in(label) is None for label in changed)


@pytest.mark.parametrize("detector, dye", [("488/552nm PI (615/30) LogH", "PI"), ("PI-A", "PI"), ("7-AAD-A", "7AAD")])
def test_a_dye_named_detector_the_lab_left_unlabelled_is_no_marker_unless_gated(tmp_path, detector, dye):
    """A detector named after a viability dye (FACSAria's '488/552nm PI (615/30) LogH', FACSDiva's
    'PI-A', '7-AAD-A') without $PnS was read as that dye also in a file that labels its panel in
    $PnS (CD3, CD8, CD4) and left that detector unlabelled, unused -> there it is no marker of the
    file, and a strategy that gates the dye still finds it on that detector; a file that labels no
    channel (labels by detector) still reads it as the dye, and a $PnS naming the dye counts as ever."""
    from tilpheno.panel import file_markers

    names = ("FSC-A", "SSC-A", "FITC-A", "PE-A", detector, "APC-A", "Time")
    labels = {"$P3S": "CD3", "$P4S": "CD8", "$P6S": "CD4"}

    def panel_of(name: str, extra: dict):
        path = tmp_path / name
        path.write_bytes(float_file(np.ones((3, len(names))), channels=names, extra=extra))
        fcs = read_fcs_metadata(path)
        return panel_from_fcs(fcs), file_markers(fcs, default_vocabulary(), None)

    panel, scanned = panel_of("panel_in_pns.fcs", labels)
    assert dict(panel) == scanned == {"CD3": "FITC-A", "CD8": "PE-A", "CD4": "APC-A"}
    assert require(panel, [dye, "CD3"]) == {dye: detector, "CD3": "FITC-A"}
    panel, scanned = panel_of("by_detector.fcs", {})
    assert dict(panel) == scanned == {dye: detector}
    panel, scanned = panel_of("dye_labelled.fcs", {**labels, "$P5S": dye})
    assert dict(panel) == scanned == {"CD3": "FITC-A", "CD8": "PE-A", dye: detector, "CD4": "APC-A"}


def test_attune_labels_with_the_signal_suffix_name_their_markers(tmp_path):
    """Attune NxT writes each $PnS label with its parameter's signal, as the detector's ('BL1-A'
    labelled 'GFP-A', tests/data's G11.fcs): 'KLRG1-A', 'CD38-A', 'HLA-DR-A' (markers the vocabulary
    does not list) and the real file's 'GFP-A', 'mCherry-A' read as detector names, no marker: the
    lab's panel lost but for known markers ('CD3-A') -> read without the suffix the detector shares;
    MACSQuant's 'V2-A' on FL2-A (a detector's short name) and Accuri's 'FITC-A' still name none."""
    from tilpheno.scaffold import draft_study

    path = tmp_path / "attune.fcs"
    path.write_bytes(float_file(np.ones((3, 8)), channels=("FSC-A", "SSC-A", "BL1-A", "VL1-A", "RL1-A", "YL1-A", "BL1-H", "Time"),
                                extra={"$P3S": "CD3-A", "$P4S": "KLRG1-A", "$P5S": "CD38-A", "$P6S": "HLA-DR-A",
                                       "$P7S": "CD3-H"}))
    assert dict(panel_from_fcs(read_fcs_metadata(path))) == {"CD3": "BL1-A", "KLRG1": "VL1-A", "CD38": "RL1-A",
                                                             "HLA-DR": "YL1-A"}
    real = Path(__file__).parent / "data" / "fcs"
    g11 = read_fcs_metadata(real / "flowio" / "G11.fcs")
    assert dict(panel_from_fcs(g11)) == {"GFP": "BL1-A", "mCherry": "YL2-A"}   # 'Alexa Fluor™ 405-A': a dye, none
    for other in ("fcsparser_instruments/MiltenyiBiotec/FCS3.1/EY_2013-07-19_PBS_FCS_3.1_Well_A1.001.fcs",
                  "flowio/B01 KC-A-W---91-US.fcs"):
        assert dict(panel_from_fcs(read_fcs_metadata(real / other))) == {}, other
    folder = tmp_path / "lab"
    folder.mkdir()
    (folder / "G11.fcs").write_bytes((real / "flowio" / "G11.fcs").read_bytes())
    assert [set(t.markers) for t in draft_study(folder).tubes] == [{"GFP", "mCherry"}]
