"""read_fcs on the real-instrument corpus (tests/data/fcs), checked against FlowKit, flowio and the
flowio truth arrays. FlowKit's Sample(...).get_events('raw') is the reference for events."""
from __future__ import annotations

import hashlib
import re
import sys
import warnings
from pathlib import Path

import flowio
import flowkit
import numpy as np
import pytest

from tilpheno.errors import FCSReadError
from tilpheno.io.fcs import read_fcs, read_fcs_metadata

sys.path.insert(0, str(Path(__file__).parent))
from malformed_fcs import assemble, text_segment  # noqa: E402

DATA = Path(__file__).parent / "data" / "fcs"
ALL = sorted(p for p in DATA.rglob("*") if p.suffix.lower() in (".fcs", ".lmd"))
TRUTH = DATA / "flowio" / "truth_arrays"

# Files FlowKit reads as they are (the off-by-one DATA end quirk needs ignore_offset_error=True).
FLOWKIT_DIRECT = [
    p for p in ALL
    if p.name not in {
        "corrupted.fcs", "sample_header.fcs", "Cytek_xP5.fcs", "fake_large_fcs.fcs", "coulter.lmd",
        "variable_int_example.fcs", "data_start_offset_discrepancy_example.fcs",
        "data_stop_offset_discrepancy_example.fcs",
    }
]


def _flowkit_raw(source, **options) -> flowkit.Sample:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return flowkit.Sample(source, ignore_offset_error=True, **options)


def _id(p: Path) -> str:
    return str(p.relative_to(DATA))


def test_corpus_is_complete():
    assert len(ALL) == 28  # 31 corpus files less 3 exact duplicates


@pytest.mark.parametrize("path", FLOWKIT_DIRECT, ids=_id)
def test_events_channels_keywords_equal_flowkit(path):
    ours = read_fcs(path)
    sample = _flowkit_raw(str(path))
    expected = sample.get_events("raw")
    assert ours.events.dtype == np.float64
    assert ours.events.shape == expected.shape
    np.testing.assert_array_equal(ours.events, expected)
    assert ours.n_events == expected.shape[0]
    assert ours.channel_names == list(sample.pnn_labels)
    assert list(ours.channels["pns"]) == list(sample.pns_labels)
    np.testing.assert_array_equal(ours.channels["pnr"].to_numpy(), sample.channels["pnr"].to_numpy())
    assert ours.version == "FCS" + sample.version
    # flowio's TEXT dict: lower-case names with every '$' removed (in values too)
    flat = {k.replace("$", "").lower(): v.replace("$", "") for k, v in ours.keywords.items()}
    flow_data = flowio.FlowData(str(path), only_text=True, ignore_offset_error=True)
    delimiter = path.read_bytes()[flow_data.header["text_start"] : flow_data.header["text_start"] + 1].decode("latin-1")
    # flowio merges 'KEY//' empty values into the next keyword; we read them as empty values
    text = {k: v for k, v in flow_data.text.items() if delimiter not in k}
    assert text.items() <= flat.items()
    assert all(k == k.upper() for k in ours.keywords)


@pytest.mark.parametrize("path", FLOWKIT_DIRECT, ids=_id)
def test_metadata_read_agrees_with_full_read(path):
    meta = read_fcs_metadata(path)
    full = read_fcs(path)
    assert meta.events is None
    assert meta.keywords == full.keywords
    assert meta.n_events == full.n_events
    assert meta.sha256 == full.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    quick = read_fcs_metadata(path, checksum=False)
    assert quick.sha256 == "" and quick.keywords == full.keywords
    assert meta.channels.equals(full.channels)


def test_truth_arrays_data1_and_b01():
    data1 = read_fcs(DATA / "flowio" / "data1.fcs")
    # data1_preprocessed: flowio's as_array(preprocess=True) from an older flowio (1 ulp differences)
    np.testing.assert_allclose(data1.events, np.load(TRUTH / "data1_preprocessed.npy"), rtol=1e-13, atol=0)
    # data1_original_events: the stored integers before gain/log decoding
    original = np.load(TRUTH / "data1_original_events.npy")
    decades = np.array([pne[0] for pne in data1.channels["pne"]])
    linear = decades == 0
    gains = data1.channels["png"].to_numpy()
    np.testing.assert_allclose(data1.events[:, linear] * gains[linear], original[:, linear], rtol=1e-12)
    b01 = read_fcs(DATA / "flowio" / "B01 KC-A-W---91-US.fcs")
    np.testing.assert_array_equal(b01.events, np.load(TRUTH / "B01 KC-A-W---91-US_preprocessed_events.npy"))


def test_two_dataset_lmd_matches_flowio_data_sets():
    path = DATA / "flowio" / "coulter.lmd"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sets = flowio.read_multiple_data_sets(str(path), ignore_offset_error=True)
    assert len(sets) == 2
    for index, flow_data in enumerate(sets):
        ours = read_fcs(path, dataset=index)
        np.testing.assert_array_equal(ours.events, _flowkit_raw(flow_data).get_events("raw"))
        assert ours.keywords["$TOT"].strip() == str(ours.n_events)
    with pytest.raises(FCSReadError, match="data set 2 requested but the file holds 2"):
        read_fcs(path, dataset=2)


def _patch_timestep(path: Path, tmp_path: Path) -> Path:
    """Copy with the anonymised '$TIMESTEP xxxxxxxxx' made numeric (same length), for FlowKit."""
    content = path.read_bytes().replace(b"$TIMESTEP\\xxxxxxxxx", b"$TIMESTEP\\1        ")
    out = tmp_path / path.name
    out.write_bytes(content)
    return out


@pytest.mark.parametrize(
    "name", ["variable_int_example.fcs", "data_start_offset_discrepancy_example.fcs", "data_stop_offset_discrepancy_example.fcs"]
)
def test_variable_width_and_offset_discrepancy_files(name, tmp_path):
    path = DATA / "flowio" / name
    ours = read_fcs(path)
    assert any("TIMESTEP" in p for p in ours.problems)  # 'xxxxxxxxx': time left unscaled
    if "discrepancy" in name:
        assert any("DATA offsets disagree: used TEXT" in p for p in ours.problems)
    # FlowKit with the TEXT offsets (ignore_offset_discrepancy) on a copy with $TIMESTEP = 1
    expected = _flowkit_raw(str(_patch_timestep(path, tmp_path)), ignore_offset_discrepancy=True).get_events("raw")
    np.testing.assert_array_equal(ours.events, expected)
    assert sorted(set(ours.channels["pnb"])) == [16, 32]


def test_blank_header_data_offsets_use_text(tmp_path):
    fake = read_fcs(DATA / "fcsparser_instruments" / "fake_large_fcs" / "fake_large_fcs.fcs")
    original = DATA / "fcsparser_instruments" / "Fortessa" / "FCS_3.0_Fortessa_PBS_Specimen_001_A1_A01.fcs"
    np.testing.assert_array_equal(fake.events, _flowkit_raw(str(original)).get_events("raw"))


def test_24bit_integers_match_flowkit_on_a_32bit_copy(tmp_path):
    """Cytek xP5 stores 3-byte integers (FlowKit/flowio cannot read them). Decode them here byte
    by byte, write the same values as a 32-bit integer file with the same keywords, read that
    with FlowKit, and compare."""
    path = DATA / "fcsparser_instruments" / "Cytek_xP5" / "Cytek_xP5.fcs"
    content = path.read_bytes()
    ours = read_fcs(path)
    kw = ours.keywords
    n_par, n_events = int(kw["$PAR"]), int(kw["$TOT"])
    start = int(kw["$BEGINDATA"])
    assert kw["$BYTEORD"] == "4,3,2,1"
    stored = [int.from_bytes(content[start + 3 * i : start + 3 * i + 3], "big") for i in range(n_par * n_events)]
    keep = {k: v for k, v in kw.items() if re.fullmatch(r"\$P\d+[NRESG]|\$TIMESTEP", k)}
    keep.update({"$BYTEORD": "4,3,2,1", "$DATATYPE": "I", "$MODE": "L", "$NEXTDATA": "0", "$PAR": str(n_par), "$TOT": str(n_events)})
    keep.update({f"$P{i}B": "32" for i in range(1, n_par + 1)})
    widened = tmp_path / "cytek_32bit.fcs"
    widened.write_bytes(assemble(keep, b"".join(v.to_bytes(4, "big") for v in stored), version="FCS3.0"))
    np.testing.assert_array_equal(ours.events, _flowkit_raw(str(widened)).get_events("raw"))
    assert ours.events.shape == (23126, 8)


def test_header_only_file_reads_metadata_but_not_events():
    path = DATA / "fcsparser_instruments" / "cytek-nl-2000" / "sample_header.fcs"
    meta = read_fcs_metadata(path)
    assert meta.n_events == 20000 and len(meta.channels) == 27 and meta.events is None
    assert meta.channel_names[:3] == ["Time", "FSC-H", "FSC-A"]
    with pytest.raises(FCSReadError) as info:
        read_fcs(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "beyond the end of the file" in message


def test_corrupted_file_raises_naming_file_and_problem():
    path = DATA / "fcsparser_instruments" / "corrupted" / "corrupted.fcs"
    for reader in (read_fcs, read_fcs_metadata):
        with pytest.raises(FCSReadError) as info:
            reader(path)
        assert str(info.value) == f"{path}: file too short for an FCS HEADER (10 bytes, need 58)"


def test_duplicate_names_file_and_empty_values():
    """SG_..._Duplicate_Names repeats each $PnN as $PnS; data1.fcs has 'KEY//' empty values."""
    ours = read_fcs(DATA / "fcsparser_instruments" / "MiltenyiBiotec" / "FCS3.1" / "SG_2014-09-26_Duplicate_Names.fcs")
    assert list(ours.channels["pns"])[:7] == ours.channel_names[:7]
    assert any("longer than $TOT" in p for p in ours.problems)
    data1 = read_fcs_metadata(DATA / "flowio" / "data1.fcs")
    assert data1.keywords["&5DATA FILE PREFIX PART #1"] == ""
    assert data1.keywords["&8ACQUISITION DOC."] == "LYMPH SUBSET ACQ"


@pytest.mark.parametrize(
    "rel", ["FACS_Diva/facs_diva_test.fcs", "Fortessa/FCS_3.0_Fortessa_PBS_Specimen_001_A1_A01.fcs"]
)
def test_spillover_equals_flowkit_matrix(rel):
    path = DATA / "fcsparser_instruments" / rel
    ours = read_fcs(path)
    value = ours.keywords.get("$SPILLOVER") or ours.keywords.get("SPILL")
    n = int(value.split(",")[0])
    matrix = flowkit.Matrix(value, detectors=value.split(",")[1 : n + 1])
    assert list(ours.spillover.detectors) == list(matrix.detectors)
    np.testing.assert_array_equal(ours.spillover.matrix, matrix.matrix)


def test_files_without_spillover_give_none_and_malformed_spill_is_recorded():
    assert read_fcs(DATA / "flowio" / "data1.fcs").spillover is None
    miltenyi = read_fcs(DATA / "fcsparser_instruments" / "MiltenyiBiotec" / "FCS3.1" / "EY_2013-07-19_PBS_FCS_3.1_Well_A1.001.fcs")
    assert miltenyi.spillover is None  # '$SPILLOVER 6,FL2-A,...' names detectors but holds no matrix
    assert any("spillover keyword ignored" in p for p in miltenyi.problems)


def test_supplemental_text_keywords_are_merged():
    path = DATA / "fcsparser_instruments" / "MiltenyiBiotec" / "FCS3.1" / "EY_2013-07-19_PBS_FCS_3.1_Well_A1.001.fcs"
    ours = read_fcs_metadata(path)
    raw = path.read_bytes()
    start, end = int(ours.keywords["$BEGINSTEXT"]), int(ours.keywords["$ENDSTEXT"])
    assert raw[start : start + 12] == b"/@MB_P1_BASE"
    assert ours.keywords["@MB_P1_USERNAME"] == "HDR-T"
    assert end > start


def test_text_padding_and_binary_supplemental_text():
    cyflow = read_fcs(DATA / "fcsparser_instruments" / "cyflow_cube_8" / "cyflow_cube_8.fcs")
    assert any("supplemental TEXT ignored" in p for p in cyflow.problems)  # a ZIP archive
    assert cyflow.n_events == 725


def test_inputs_are_not_modified():
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in ALL}
    for p in ALL:
        try:
            read_fcs(p)
        except FCSReadError:
            pass
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in ALL}


def test_text_segment_helper_round_trip():
    assert text_segment({"$A": "x/y"}) == b"/$A/x//y/"


# DATA is decoded block by block (CHUNK_BYTES); most corpus files fit in one block, so these tests
# force many blocks (a partial last one included) and check nothing changes at block boundaries.
@pytest.mark.slow   # re-reads the whole corpus three times
@pytest.mark.parametrize("chunk", [1, 1000, 65536])
def test_block_size_does_not_change_events(chunk, monkeypatch):
    import tilpheno.io.fcs as fcs_module

    compared = 0
    for path in ALL:
        monkeypatch.setattr(fcs_module, "CHUNK_BYTES", 1 << 40)  # the whole DATA segment as one block
        try:
            whole = read_fcs(path)
        except FCSReadError:
            continue
        monkeypatch.setattr(fcs_module, "CHUNK_BYTES", chunk)
        blocks = read_fcs(path)
        assert blocks.events.dtype == whole.events.dtype == np.float64
        np.testing.assert_array_equal(blocks.events, whole.events, err_msg=str(path))
        assert blocks.problems == whole.problems
        compared += 1
    assert compared >= 25


@pytest.mark.parametrize("path", FLOWKIT_DIRECT, ids=_id)
def test_many_blocks_equal_flowkit(path, monkeypatch):
    import tilpheno.io.fcs as fcs_module

    monkeypatch.setattr(fcs_module, "CHUNK_BYTES", 997)  # a prime: blocks of a few events, partial last
    np.testing.assert_array_equal(read_fcs(path).events, _flowkit_raw(str(path)).get_events("raw"))
