"""Property-based tests (hypothesis) of the TEXT parser and the FCS reader."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tilpheno.errors import FCSReadError
from tilpheno.io.fcs import read_fcs, read_fcs_metadata
from tilpheno.io.text import parse_header, parse_text

sys.path.insert(0, str(Path(__file__).parent))
from malformed_fcs import float_file, int_file, text_segment  # noqa: E402

DELIMITERS = st.sampled_from(["/", "|", "\\", "\x0c", "*", "\x1e", ","])
KEY_CHARS = st.characters(min_codepoint=33, max_codepoint=126)  # printable ASCII, no space
VALUE_CHARS = st.characters(blacklist_categories=("Cs",), min_codepoint=1)


@st.composite
def keyword_dicts(draw):
    delim = draw(DELIMITERS)
    keys = draw(
        st.lists(
            st.text(KEY_CHARS, min_size=1, max_size=12).filter(lambda k: delim not in k),
            min_size=1, max_size=15, unique_by=str.upper,
        )
    )
    values = []
    for _ in keys:
        # FCS 3.1: values are non-empty; a value may hold the delimiter (escaped by doubling) but
        # cannot begin or end with it, nor be only padding
        value = draw(st.text(VALUE_CHARS, min_size=1, max_size=20).filter(
            lambda v: not v.startswith(delim) and not v.endswith(delim) and v.strip(" \t\r\n\x00") != ""
        ))
        values.append(value)
    return delim, dict(zip(keys, values))


@settings(max_examples=300, deadline=None)
@given(keyword_dicts())
def test_text_round_trip(case):
    delim, keywords = case
    parsed = parse_text(text_segment(keywords, delim))
    assert parsed == {k.upper(): v for k, v in keywords.items()}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_text_parser_never_raises_anything_else(raw):
    try:
        result = parse_text(raw, "x")
    except FCSReadError as exc:
        assert "\n" not in exc.problem
    else:
        assert result and all(k == k.strip().upper() and k for k in result)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=80))
def test_header_parser_never_raises_anything_else(raw):
    try:
        header = parse_header(raw, "x")
    except FCSReadError:
        return
    assert header.text_start >= 58 and header.text_end > header.text_start


finite32 = st.floats(allow_nan=False, width=32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 30), p=st.integers(1, 5), data=st.data(),
    byteord=st.sampled_from(["1,2,3,4", "4,3,2,1"]), datatype=st.sampled_from(["F", "D"]),
)
def test_float_files_read_back_exactly(tmp_path, n, p, data, byteord, datatype):
    events = np.array(data.draw(st.lists(st.lists(finite32, min_size=p, max_size=p), min_size=n, max_size=n)), dtype=np.float64).reshape(n, p)
    names = tuple(f"CH{i}" for i in range(p))  # no Time channel: values come back unchanged
    path = tmp_path / "f.fcs"
    path.write_bytes(float_file(events, byteord=byteord, datatype=datatype, channels=names))
    fcs = read_fcs(path)
    np.testing.assert_array_equal(fcs.events, events)
    assert fcs.channel_names == list(names)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), byteord=st.sampled_from(["1,2,3,4", "4,3,2,1"]))
def test_integer_files_with_any_byte_widths_and_bit_masks(tmp_path, data, byteord):
    p = data.draw(st.integers(1, 4))
    widths = data.draw(st.lists(st.sampled_from([8, 16, 24, 32, 48, 64]), min_size=p, max_size=p))
    ranges = [data.draw(st.integers(1, 2 ** w)) for w in widths]
    n = data.draw(st.integers(0, 12))
    values = np.array(
        [[data.draw(st.integers(0, 2 ** w - 1)) for w in widths] for _ in range(n)], dtype=object
    ).reshape(n, p)
    path = tmp_path / "i.fcs"
    path.write_bytes(int_file(values, widths, byteord=byteord, pnr=ranges))
    fcs = read_fcs(path)
    masks = [(1 << (r - 1).bit_length()) - 1 if r > 1 else 0 for r in ranges]  # next power of 2, minus 1
    expected = np.array([[float(values[i, j] & masks[j]) for j in range(p)] for i in range(n)]).reshape(n, p)
    np.testing.assert_array_equal(fcs.events, expected)


GOOD = float_file(np.arange(40, dtype=np.float64).reshape(8, 5), extra={"$P2S": "CD3 FITC"})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, len(GOOD)))
def test_mutated_files_read_or_fail_cleanly(tmp_path, edits, cut):
    content = bytearray(GOOD)
    for position, value in edits:
        content[position] = value
    path = tmp_path / "m.fcs"
    path.write_bytes(bytes(content[:cut]))
    for reader in (read_fcs, read_fcs_metadata):
        try:
            fcs = reader(path)
        except FCSReadError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(path))
        else:
            if fcs.events is not None:
                assert fcs.events.shape == (fcs.n_events, len(fcs.channels))
