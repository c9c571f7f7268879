"""Instrument layouts that break the FCS offsets or widths (issue 11), rebuilt byte for byte as
described, read and compared with FlowKit's offset-tolerant reading (the test oracle):

* BD Accuri C6: HEADER and TEXT DATA offsets disagree, TEXT's $BEGINDATA lies inside the TEXT
  segment, and both pairs are one byte long;
* Partec PAS (FCS 2.0) and CyFlow (FCS 3.0): the DATA end offset equals the file size (one past the
  last byte);
* Beckman Coulter Cytomics FC500 .LMD: ``$PnB 10`` with values in 16-bit words (high bits not
  data, cleared by the ``$PnR`` mask), two data sets (FCS 2.0 then FCS 3.0, linked by $NEXTDATA).
  Built from the real ``coulter.lmd`` of FlowIO's test data (BSD-3) with its ``$PnB 16`` rewritten
  as ``10`` (same length, so every offset stays): FlowKit reads the original, tilpheno both.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import flowio
import flowkit
import numpy as np
import pytest

from tilpheno.errors import FCSReadError
from tilpheno.io.fcs import read_fcs

from malformed_fcs import text_segment  # noqa: E402  (tests/ is on sys.path via conftest)

DATA = Path(__file__).parent / "data" / "fcs"
CHANNELS = ("FSC-H", "SSC-H", "FL1-H", "FL2-H", "Time")


def _flowkit(path, **options) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return flowkit.Sample(str(path), **options).get_events("raw")


def _int_events(n: int, bits: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2 ** bits, size=(n, len(CHANNELS)), dtype=np.int64)


def _keywords(n: int, bits: int, pnr: int, byteord: str, extra: dict) -> dict[str, str]:
    kw = {"$BYTEORD": byteord, "$DATATYPE": "I", "$MODE": "L", "$NEXTDATA": "0", "$PAR": str(len(CHANNELS)),
          "$TOT": str(n)}
    for i, name in enumerate(CHANNELS, 1):
        kw.update({f"$P{i}N": name, f"$P{i}B": str(bits), f"$P{i}R": str(pnr), f"$P{i}E": "0,0"})
    kw.update(extra)
    return kw


def _header(version: str, text: tuple[int, int], data: tuple[int, int]) -> bytes:
    values = (*text, *data, 0, 0)
    return version.encode().ljust(10) + b"".join(str(v).rjust(8).encode() for v in values)


def accuri_c6(path: Path, events: np.ndarray) -> None:
    """FCS 3.0, 32-bit big-endian integers, an 8-byte CRC after DATA (as FCS 3.0 files end).
    HEADER DATA = [start, last + 1]; TEXT $BEGINDATA = a byte inside TEXT, $ENDDATA = that + length."""
    n = len(events)
    data = events.astype(">u4").tobytes()
    kw = _keywords(n, 32, 16777216, "4,3,2,1", {"$CYT": "Accuri C6", "$BEGINDATA": "0", "$ENDDATA": "0"})
    text_start = 58
    for _ in range(3):   # TEXT length is a fixed point of the offsets it holds
        text = text_segment(kw)
        inside = text_start + 40                               # inside the TEXT segment
        kw["$BEGINDATA"], kw["$ENDDATA"] = str(inside), str(inside + len(data))   # one byte long
    text = text_segment(kw)
    start = text_start + len(text)
    header = _header("FCS3.0", (text_start, start - 1), (start, start + len(data)))   # one byte long
    path.write_bytes(header + text + data + b"00000000")


def partec(path: Path, events: np.ndarray, version: str) -> None:
    """16-bit little-endian integers, DATA last in the file, its end offset = the file size."""
    data = events.astype("<u2").tobytes()
    kw = _keywords(len(events), 16, 65536, "1,2", {"$CYT": "Partec PAS" if version == "FCS2.0" else "CyFlow Cube 8"})
    text_start = 58
    if version != "FCS2.0":
        kw.update({"$BEGINDATA": "0", "$ENDDATA": "0"})
        for _ in range(4):
            start = text_start + len(text_segment(kw))
            kw["$BEGINDATA"], kw["$ENDDATA"] = str(start), str(start + len(data))   # = the file size
    text = text_segment(kw)
    start = text_start + len(text)
    size = start + len(data)
    path.write_bytes(_header(version, (text_start, start - 1), (start, size)) + text + data)


def fc500_lmd(path: Path) -> Path:
    """The real coulter.lmd (two data sets) with data set 1's ``$PnB 16`` written as ``10``."""
    content = (DATA / "flowio" / "coulter.lmd").read_bytes()
    text_start, text_end = int(content[10:18]), int(content[18:26])
    text = content[text_start:text_end + 1]
    delim = re.escape(text[:1])
    patched, count = re.subn(rb"(" + delim + rb"\$P\d+B" + delim + rb")16(?=" + delim + rb")", rb"\g<1>10", text)
    assert count == int(re.search(rb"\$PAR" + delim + rb"(\d+)", text).group(1)) and len(patched) == len(text)
    path.write_bytes(content[:text_start] + patched + content[text_end + 1:])
    return path


def test_bd_accuri_c6(tmp_path):
    events = _int_events(1000, 24, 1)
    path = tmp_path / "accuri.fcs"
    accuri_c6(path, events)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception):   # FlowKit's default reading refuses the file
            flowkit.Sample(str(path))
    ours = read_fcs(path)
    expected = _flowkit(path, use_header_offsets=True, ignore_offset_error=True)
    np.testing.assert_array_equal(ours.events, expected)
    np.testing.assert_array_equal(ours.events, events.astype(float))
    rule = [p for p in ours.problems if p.startswith("DATA offsets resolved by rule")]
    assert len(rule) == 1 and "rule 'end one byte long': HEADER" in rule[0]
    assert "starts inside the TEXT segment" in rule[0]


@pytest.mark.parametrize("version", ["FCS2.0", "FCS3.0"])
def test_partec_pas_and_cyflow(tmp_path, version):
    events = _int_events(777, 16, 2)
    path = tmp_path / f"partec_{version}.fcs"
    partec(path, events, version)
    assert int(path.read_bytes()[34:42]) == path.stat().st_size   # DATA end offset = file size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception):
            flowkit.Sample(str(path))
    ours = read_fcs(path)
    np.testing.assert_array_equal(ours.events, _flowkit(path, ignore_offset_error=True))
    np.testing.assert_array_equal(ours.events, events.astype(float))
    assert any("rule 'end one past the file'" in p for p in ours.problems), ours.problems


def test_beckman_coulter_fc500_10_bit_words_two_data_sets(tmp_path):
    path = fc500_lmd(tmp_path / "fc500.lmd")
    original = DATA / "flowio" / "coulter.lmd"
    first = read_fcs(path)
    assert set(first.channels["pnb"]) == {10} and set(first.channels["pnr"]) == {1024.0}
    # FlowKit reads the same bytes declared as 16-bit words, masked by $PnR 1024
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sets = flowio.read_multiple_data_sets(str(original), ignore_offset_error=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(first.events, flowkit.Sample(sets[0]).get_events("raw"))
    assert first.events.max() <= 1023   # (high bits set in words are cleared: see the 12-bit malformed variant)
    assert any("rule 'words': values read as 16-bit words" in p for p in first.problems), first.problems
    second = read_fcs(path, dataset=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(second.events, flowkit.Sample(sets[1]).get_events("raw"))
    assert second.version == "FCS3.0" and second.n_events == first.n_events
    with pytest.raises(FCSReadError, match="data set 2 requested but the file holds 2"):
        read_fcs(path, dataset=2)


def test_packed_bits_are_refused_with_the_numbers(tmp_path):
    """A 10-bit layout whose DATA is packed (not one value per 16-bit word) is not guessed at."""
    n = 80
    kw = _keywords(n, 10, 1024, "1,2", {})
    text = text_segment(kw)
    data = bytes(n * len(CHANNELS) * 10 // 8)   # packed: 10 bits per value
    start = 58 + len(text)
    path = tmp_path / "packed.fcs"
    path.write_bytes(_header("FCS2.0", (58, start - 1), (start, start + len(data) - 1)) + text + data)
    with pytest.raises(FCSReadError, match=r"\$TOT = 80 events x 10 bytes/event = 800 bytes, but the DATA segment"):
        read_fcs(path)
