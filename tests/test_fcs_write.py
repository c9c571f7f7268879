"""FCS 3.1 writer: files read back by two independent readers (flowio, FlowKit) exactly."""
from __future__ import annotations

import numpy as np
import pytest

flowio = pytest.importorskip("flowio")
fk = pytest.importorskip("flowkit")

from tilpheno.compensation import Spillover
from tilpheno.io.fcs_write import build_fcs_bytes, format_header, write_fcs

CHANNELS = [
    ("FSC-A", None, 262144),
    ("FITC-A", "CD3 FITC", 262144),
    ("PE-A", "PD1 / PE", 262144),  # '/' is the TEXT delimiter: must be escaped
    ("Time", None, 262144),
]
SPILL = Spillover(("FITC-A", "PE-A"), np.array([[1.0, 0.1723], [0.0125, 1.0]]))


def _events(n=2000, seed=3):
    rng = np.random.default_rng(seed)
    ev = rng.normal(500.0, 3000.0, size=(n, len(CHANNELS)))
    ev[:, 3] = np.arange(n) * 0.5
    return ev


def _flowio_events(path, n_channels):
    fd = flowio.FlowData(str(path))
    return fd, np.asarray(fd.events, dtype=np.float64).reshape(-1, n_channels)


def test_round_trip_flowio_and_flowkit(tmp_path):
    ev = _events()
    path = tmp_path / "x.fcs"
    keywords = {"$FIL": "TIL001/surface//stain.fcs", "TUBE NAME": "FMO PD1", "$TIMESTEP": "0.01", "$SRC": "TIL001"}
    write_fcs(path, ev, CHANNELS, keywords, spillover=SPILL)
    expected = ev.astype(np.float32).astype(np.float64)

    fd, got = _flowio_events(path, len(CHANNELS))
    assert fd.version == "3.1"
    assert np.array_equal(got, expected)
    assert fd.text["fil"] == "TIL001/surface//stain.fcs"
    assert fd.text["tube name"] == "FMO PD1"
    assert fd.text["datatype"] == "F" and fd.text["byteord"] == "1,2,3,4" and fd.text["mode"] == "L"
    assert fd.text["tot"] == "2000" and fd.text["par"] == "4"
    assert [fd.text[f"p{i}b"] for i in range(1, 5)] == ["32"] * 4
    assert [fd.text[f"p{i}e"] for i in range(1, 5)] == ["0,0"] * 4
    assert "p1s" not in fd.text and fd.text["p3s"] == "PD1 / PE"

    sample = fk.Sample(str(path))
    assert sample.pnn_labels == [c[0] for c in CHANNELS]
    assert sample.pns_labels == ["", "CD3 FITC", "PD1 / PE", ""]
    raw = sample.get_events(source="raw")
    # FlowKit scales the time channel by $TIMESTEP, as the FCS standard says.
    assert np.array_equal(raw[:, :3], expected[:, :3])
    assert np.allclose(raw[:, 3], expected[:, 3] * 0.01)
    spill = sample.metadata["spillover"].split(",")
    assert spill[:3] == ["2", "FITC-A", "PE-A"]
    assert np.array_equal(np.array(spill[3:], dtype=float), SPILL.matrix.ravel())


def test_header_offsets_point_at_segments():
    ev = _events(100)
    data = build_fcs_bytes(ev, CHANNELS, {"$SRC": "P1"})
    head = data[:58]
    assert head[:10] == b"FCS3.1    "
    t0, t1, d0, d1, a0, a1 = (int(head[10 + 8 * i: 18 + 8 * i]) for i in range(6))
    assert t0 == 58 and data[t0:t0 + 1] == b"/" and data[t1:t1 + 1] == b"/"
    assert d0 == t1 + 1 and d1 == len(data) - 1 and (a0, a1) == (0, 0)
    assert d1 - d0 + 1 == ev.size * 4
    assert f"/$BEGINDATA/{d0}/$ENDDATA/{d1}/".encode() in data[t0:t1 + 1]
    assert np.array_equal(np.frombuffer(data[d0:d1 + 1], "<f4").reshape(ev.shape), ev.astype(np.float32))


def test_format_header_large_offsets_zeroed():
    head = format_header(58, 400, 401, 100_000_400)
    assert head == b"FCS3.1    " + b"      58     400       0       0       0       0"


def test_large_file_over_header_limit(tmp_path):
    """DATA ending beyond byte 99,999,999: HEADER data offsets 0, TEXT keywords used (flowio reads it)."""
    n = 25_000_001
    ev = np.arange(n, dtype=np.float32).reshape(-1, 1)
    path = tmp_path / "big.fcs"
    write_fcs(path, ev, [("A", None, 262144)], {})
    with open(path, "rb") as fh:
        head = fh.read(58)
    assert int(head[26:34]) == 0 and int(head[34:42]) == 0
    fd = flowio.FlowData(str(path))
    assert int(fd.text["enddata"]) == path.stat().st_size - 1 > 99_999_999
    got = np.asarray(fd.events, dtype=np.float32)
    assert got.shape == (n,) and got[0] == 0 and got[-1] == n - 1
    assert np.array_equal(got[::99991], ev[::99991, 0])


def test_other_delimiter_and_escaping():
    data = build_fcs_bytes(_events(10), CHANNELS, {"NOTE": "a|b"}, delimiter="|")
    assert b"|NOTE|a||b|" in data
    assert b"|$P3S|PD1 / PE|" in data


@pytest.mark.parametrize(
    "keywords, message",
    [
        ({"$PAR": "3"}, "set by the FCS writer"),
        ({"$p2s": "x"}, "set by the FCS writer"),
        ({"NOTE": ""}, "empty values"),
        ({"NOTE": "/lead"}, "delimiter"),
        ({"NOTE": "trail/"}, "delimiter"),
    ],
)
def test_rejects_bad_keywords(keywords, message):
    with pytest.raises(ValueError, match=message):
        build_fcs_bytes(_events(5), CHANNELS, keywords)


def test_rejects_shape_and_spillover_mismatch():
    with pytest.raises(ValueError, match="columns"):
        build_fcs_bytes(np.zeros((3, 2)), CHANNELS, {})
    bad = Spillover(("FITC-A", "APC-A"), np.eye(2))
    with pytest.raises(ValueError, match="APC-A"):
        build_fcs_bytes(_events(5), CHANNELS, {}, spillover=bad)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "bad.fcs"
    with pytest.raises(ValueError):
        write_fcs(path, _events(5), CHANNELS, {"NOTE": ""})
    assert list(tmp_path.iterdir()) == []


from hypothesis import given, settings, strategies as st  # noqa: E402

# flowio drops every '$' from TEXT values, so '$' is left out of the alphabet here.
_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="$"), min_size=1, max_size=30)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(_TEXT.filter(lambda v: not v.startswith("/") and not v.endswith("/")), min_size=1, max_size=4))
def test_keyword_values_round_trip_through_flowio(tmp_path_factory, values):
    path = tmp_path_factory.mktemp("kw") / "k.fcs"
    keywords = {f"NOTE{i}": v for i, v in enumerate(values)}
    write_fcs(path, np.ones((3, 1)), [("A", None, 1024)], keywords)
    text = flowio.FlowData(str(path)).text
    assert [text[f"note{i}"] for i in range(len(values))] == values


def test_zero_events_file(tmp_path):
    data = build_fcs_bytes(np.zeros((0, 2)), [("A", None, 1024), ("B", "x", 1024)], {})
    head = data[:58]
    assert int(head[26:34]) == 0 and int(head[34:42]) == 0
    assert b"/$TOT/0/" in data and b"/$BEGINDATA/0/$ENDDATA/0/" in data
    assert len(data) == int(head[18:26]) + 1  # nothing after TEXT
