"""Build small FCS files byte by byte, and malformed variants of good ones, for reader tests.

``build_fcs`` writes exactly the bytes asked for (it does not validate), so tests can make files
that break the standard in one controlled way. ``variants()`` returns the malformed cases of
issue 6 (at least 40), each with the outcome the reader must give: ``"read"`` (the standard or a
known instrument quirk allows it; events must equal ``expected``) or ``"error"`` (FCSReadError).
``hang_guard`` turns a read that hangs on such a file into a failure.
"""
from __future__ import annotations

import re
import signal
import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHANNELS = ("FSC-A", "SSC-A", "FITC-A", "PE-A", "Time")
HANG_GUARD_SECONDS = 20  # a hang guard, not a speed test: a correct read takes milliseconds


@contextmanager
def hang_guard(seconds: int = HANG_GUARD_SECONDS):
    """Fail the block with TimeoutError when it has not finished within ``seconds`` (SIGALRM, main
    thread only): a read that loops or blocks on a malformed file fails instead of hanging the suite."""
    def _timeout(signum, frame):
        raise TimeoutError(f"did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def text_segment(keywords: dict[str, str], delim: str = "/") -> bytes:
    """``/K/V/K/V/`` with delimiters inside keys or values doubled (FCS 3.1 escaping)."""
    parts = []
    for key, value in keywords.items():
        parts.append(key.replace(delim, delim * 2))
        parts.append(value.replace(delim, delim * 2))
    return (delim + delim.join(parts) + delim).encode("utf-8")


def assemble(keywords: dict[str, str], data: bytes, *, version: str = "FCS3.1") -> bytes:
    """HEADER + TEXT + DATA, with $BEGINDATA/$ENDDATA in TEXT and the HEADER (fixed point)."""
    text_start = 58
    kw = dict(keywords)
    for _ in range(4):
        data_start = text_start + len(text_segment(kw))
        kw["$BEGINDATA"] = str(data_start if data else 0)
        kw["$ENDDATA"] = str(data_start + len(data) - 1 if data else 0)
    text = text_segment(kw)
    data_start = text_start + len(text)
    data_end = data_start + len(data) - 1 if data else 0
    values = (text_start, text_start + len(text) - 1, data_start if data else 0, data_end, 0, 0)
    header = version.encode("ascii").ljust(10) + b"".join(str(v).rjust(8).encode() for v in values)
    return header + text + data


def float_file(events: np.ndarray, *, extra: dict[str, str] | None = None, byteord="1,2,3,4",
               datatype="F", version="FCS3.1", drop=(), channels=CHANNELS) -> bytes:
    """A list-mode float (F) or double (D) file holding ``events`` (n x len(channels))."""
    n, p = events.shape
    width = 4 if datatype == "F" else 8
    kw = {"$BYTEORD": byteord, "$DATATYPE": datatype, "$MODE": "L", "$NEXTDATA": "0",
          "$PAR": str(p), "$TOT": str(n), "$TIMESTEP": "0.01"}
    for i, name in enumerate(channels[:p], 1):
        kw.update({f"$P{i}N": name, f"$P{i}B": str(8 * width), f"$P{i}E": "0,0", f"$P{i}R": "262144"})
    kw.update(extra or {})
    for key in drop:
        kw.pop(key, None)
    order = "<" if byteord.startswith("1") else ">"
    data = np.asarray(events, dtype=f"{order}f{width}").tobytes()
    return assemble(kw, data, version=version)


def int_file(values: np.ndarray, widths_bits, *, byteord="4,3,2,1", pnr=None, version="FCS3.0") -> bytes:
    """A list-mode integer file; per-channel bit widths may differ and need not be 8/16/32."""
    n, p = values.shape
    kw = {"$BYTEORD": byteord, "$DATATYPE": "I", "$MODE": "L", "$NEXTDATA": "0", "$PAR": str(p), "$TOT": str(n)}
    for i in range(p):
        kw[f"$P{i + 1}N"] = CHANNELS[i] if i < len(CHANNELS) else f"P{i + 1}"
        kw[f"$P{i + 1}B"] = str(widths_bits[i])
        kw[f"$P{i + 1}R"] = str(pnr[i] if pnr else 2 ** widths_bits[i])
        kw[f"$P{i + 1}E"] = "0,0"
    endian = "little" if byteord.startswith("1") else "big"
    data = b"".join(
        int(values[r, c]).to_bytes(widths_bits[c] // 8, endian) for r in range(n) for c in range(p)
    )
    return assemble(kw, data, version=version)


# --------------------------------------------------------------------------- malformed variants


@dataclass
class Variant:
    name: str
    content: bytes | None  # None: make a directory named .fcs
    outcome: str  # "read" | "error"
    expected: np.ndarray | None = None  # events for "read" (float64), compared exactly
    note: str = ""
    metadata_ok: bool | None = None  # read_fcs_metadata succeeds although read_fcs fails (DATA problems)
    extra: dict = field(default_factory=dict)


def _good_events() -> np.ndarray:
    rng = np.random.default_rng(6)
    ev = rng.normal(1000, 300, size=(50, 5)).astype(np.float32).astype(np.float64)
    ev[:, 4] = np.arange(50, dtype=np.float64)
    return ev


def _raw_expected(ev: np.ndarray, timestep: float = 0.01) -> np.ndarray:
    out = ev.copy()
    out[:, 4] = out[:, 4] * timestep
    return out


def _patch(content: bytes, old: bytes, new: bytes) -> bytes:
    assert old in content, old
    return content.replace(old, new, 1)


def _set_header(content: bytes, index: int, value: str) -> bytes:
    start = 10 + 8 * index
    return content[:start] + value.rjust(8).encode() + content[start + 8 :]


def _png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"\x00\xff\x00\x00" * 4
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def variants() -> list[Variant]:
    ev = _good_events()
    good = float_file(ev)
    expected = _raw_expected(ev)
    text_end = int(good[18:26])
    data_start = int(good[26:34])
    data_end = int(good[34:42])
    size = len(good)
    out: list[Variant] = [Variant("good_reference", good, "read", expected)]
    add = out.append

    # truncation
    add(Variant("zero_byte_file", b"", "error"))
    add(Variant("truncated_in_header", good[:30], "error"))
    add(Variant("truncated_in_text", good[: text_end - 40], "error"))
    add(Variant("truncated_in_data", good[: data_start + 37], "error", metadata_ok=True))
    add(Variant("truncated_last_byte", good[:-1], "error", metadata_ok=True))
    # offsets
    add(Variant("text_offsets_past_end", _set_header(_set_header(good, 1, str(size + 500)), 0, str(size + 10)), "error"))
    add(Variant("text_end_past_end", _set_header(good, 1, str(size + 1000)), "error"))
    add(Variant("header_data_offsets_past_end", _set_header(_set_header(good, 3, str(size + 4000)), 2, str(size + 10)), "read",
                expected, note="TEXT offsets are right, HEADER ones wrong: TEXT wins (FCS 3.x)"))
    add(Variant("data_end_past_end", _fix_data_keywords(_set_header(good, 3, str(size + 4000)), data_start, size + 4000),
                "error", metadata_ok=True))
    bad_text = good.replace(f"$BEGINDATA/{data_start}/".encode(), f"$BEGINDATA/{data_start + 7}/".encode())
    add(Variant("text_data_offsets_wrong_header_right", bad_text, "read", expected,
                note="TEXT $BEGINDATA wrong, HEADER right: the pair matching $TOT is used"))
    both_wrong = _set_header(bad_text, 2, str(data_start + 7))
    add(Variant("data_offsets_wrong_everywhere", both_wrong, "error"))
    add(Variant("data_overlaps_text", _set_header(_patch(good, f"$BEGINDATA/{data_start}/".encode(),
                                                           f"$BEGINDATA/{data_start - 20}/".encode()), 2, str(data_start - 20)), "error"))
    add(Variant("text_offsets_reversed", _set_header(_set_header(good, 0, str(text_end)), 1, "58"), "error"))
    add(Variant("data_offsets_reversed", _set_header(_set_header(
        _patch(_patch(good, f"$BEGINDATA/{data_start}/".encode(), f"$BEGINDATA/{data_end}/".encode()),
               f"$ENDDATA/{data_end}/".encode(), f"$ENDDATA/{data_start}/".encode()), 2, str(data_end)), 3, str(data_start)), "error"))
    add(Variant("text_start_inside_header", _set_header(good, 0, "20"), "error"))
    add(Variant("text_end_one_short", _set_header(good, 1, str(text_end - 1)), "read", expected,
                note="closing delimiter outside the stated TEXT: tolerated"))
    add(Variant("text_end_one_long", _set_header(good, 1, str(text_end + 1)), "read", expected,
                note="TEXT end on the first DATA byte: trimmed"))
    add(Variant("header_offset_not_a_number", good[:18] + b"    12x4" + good[26:], "error"))
    add(Variant("data_end_off_by_one_quirk", _patch(_set_header(good, 3, str(data_end + 1)) + b"\x00",
                                                    f"$ENDDATA/{data_end}/".encode(), f"$ENDDATA/{data_end + 1}/".encode()),
                "read", expected, note="Miltenyi/FACSDiva end-offset quirk"))
    # required keywords
    for key in ("$PAR", "$DATATYPE", "$BYTEORD", "$P3B_int", "$P2N"):
        if key == "$P3B_int":
            vals = np.arange(12, dtype=np.int64).reshape(4, 3)
            content = _fix_offsets(int_file(vals, [16, 16, 16]).replace(b"/$P3B/16", b""))
            add(Variant("missing_$P3B_integer_data", content, "error"))
            continue
        add(Variant(f"missing_{key}", float_file(ev, drop=(key,)), "error"))
    add(Variant("missing_$TOT", float_file(ev, drop=("$TOT",)), "read", expected,
                note="$TOT is derived from the DATA length when absent"))
    add(Variant("missing_$PnB_float_data", float_file(ev, drop=("$P2B",)), "read", expected,
                note="float width is fixed by $DATATYPE F"))
    add(Variant("missing_$MODE", float_file(ev, drop=("$MODE",)), "read", expected, note="L is the only mode"))
    # counts disagreeing with DATA
    add(Variant("tot_too_large", float_file(ev, extra={"$TOT": "51"}), "error"))
    add(Variant("tot_too_small", float_file(ev, extra={"$TOT": "40"}), "error"))
    add(Variant("par_too_small", float_file(ev, extra={"$PAR": "4"}), "error"))
    add(Variant("par_too_large", float_file(ev, extra={"$PAR": "6", "$P6N": "X", "$P6B": "32", "$P6R": "1"}), "error"))
    add(Variant("tot_10e12", float_file(ev, extra={"$TOT": "1000000000000"}), "error", metadata_ok=True))
    add(Variant("par_10e9", float_file(ev, extra={"$PAR": "1000000000"}), "error"))
    add(Variant("tot_negative", float_file(ev, extra={"$TOT": "-5"}), "error"))
    add(Variant("tot_not_a_number", float_file(ev, extra={"$TOT": "many"}), "error"))
    # TEXT syntax
    add(Variant("delimiter_inside_value_escaped", float_file(ev, extra={"$P3S": "CD3/FITC", "NOTE": "a//b/c"}), "read", expected,
                extra={"keywords": {"$P3S": "CD3/FITC", "NOTE": "a//b/c"}}))
    add(Variant("delimiter_inside_keyword_escaped", float_file(ev, extra={"MY/KEY": "x"}), "read", expected,
                extra={"keywords": {"MY/KEY": "x"}}))
    raw_empty = _patch(good, b"/$MODE/L/", b"/$MODE/L/EMPTY//$CYT/Fortessa/")
    raw_empty = _fix_offsets(raw_empty)
    add(Variant("empty_keyword_value_quirk", raw_empty, "read", expected,
                note="doubled delimiter as empty value (FCS 2.0/3.0 writers)", extra={"keywords": {"EMPTY": "", "$CYT": "Fortessa"}}))
    add(Variant("unescaped_delimiter_in_value", _fix_offsets(_patch(good, b"/$MODE/L/", b"/$MODE/L/$SRC/a/b/")), "error"))
    add(Variant("non_utf8_text", _fix_offsets(_patch(good, b"/$MODE/L/", b"/$MODE/L/$OP/Jos\xe9 M\xfcller/")), "read", expected,
                extra={"keywords": {"$OP": "José Müller"}}, note="decoded as Latin-1"))
    add(Variant("text_delimiter_is_letter", good[:58] + b"A" + good[59:], "error"))
    add(Variant("text_all_spaces", good[:58] + b" " * (text_end - 57) + good[text_end + 1 :], "error"))
    add(Variant("backslash_delimiter", _with_delimiter(ev, "\\"), "read", expected))
    # unsupported layouts
    add(Variant("mode_histogram", float_file(ev, extra={"$MODE": "C"}), "error"))
    add(Variant("datatype_ascii", float_file(ev, extra={"$DATATYPE": "A"}), "error"))
    add(Variant("datatype_unknown", float_file(ev, extra={"$DATATYPE": "Q"}), "error"))
    add(Variant("byteord_mixed", float_file(ev, extra={"$BYTEORD": "3,4,1,2"}), "error"))
    words = np.array([[1, 0xF123, 7], [2, 0x0FFF, 8], [3, 0x1000, 9], [4, 5, 10]], dtype=np.int64)
    add(Variant("int_width_12_bits", int_file(words, [16, 16, 16]).replace(b"$P2B/16", b"$P2B/12"), "read",
                np.where(np.arange(3) == 1, words & 0x0FFF, words).astype(float),
                note="12-bit values in 16-bit words (Beckman Coulter FC500 layout): high bits masked"))
    add(Variant("pne_malformed", float_file(ev, extra={"$P3E": "4"}), "error"))
    add(Variant("pnr_zero", float_file(ev, extra={"$P3R": "0"}), "error"))
    add(Variant("png_not_a_number", float_file(ev, extra={"$P3G": "high"}), "error"))
    # data values
    nan_ev = ev.copy()
    nan_ev[3, 2], nan_ev[4, 3], nan_ev[5, 1] = np.nan, np.inf, -np.inf
    add(Variant("nan_inf_in_float_data", float_file(nan_ev), "read", _raw_expected(nan_ev),
                note="NaN/Inf are valid IEEE values: passed through"))
    zero = np.zeros((0, 5))
    add(Variant("zero_events", float_file(zero), "read", zero))
    add(Variant("duplicate_channel_names", float_file(ev, channels=("FSC-A", "FL1", "FL1", "FL1", "Time")), "read", expected,
                extra={"channel_names": ["FSC-A", "FL1", "FL1", "FL1", "Time"]}))
    add(Variant("big_endian_double", float_file(ev, datatype="D", byteord="4,3,2,1"), "read", expected))
    # not FCS at all
    add(Variant("png_named_fcs", _png(), "error"))
    add(Variant("directory_named_fcs", None, "error"))
    add(Variant("random_bytes", bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8)), "error"))
    add(Variant("fcs_version_unknown", b"FCS9.9" + good[6:], "error"))
    # multiple data sets
    second = float_file(ev[:7] * 2)
    first = float_file(ev, extra={"$NEXTDATA": "0" * 12})  # fixed width, patched below
    first = first.replace(b"$NEXTDATA/" + b"0" * 12, b"$NEXTDATA/" + str(len(first)).rjust(12, "0").encode())
    add(Variant("two_data_sets", first + second, "read", expected, extra={"dataset1": _raw_expected(ev[:7] * 2)}))
    add(Variant("nextdata_negative", float_file(ev, extra={"$NEXTDATA": "-100"}), "read", expected, extra={"dataset1": "error"}))
    add(Variant("nextdata_past_end", _fix_offsets(_patch(good, b"$NEXTDATA/0/", b"$NEXTDATA/99999999/")), "read", expected,
                note="data set 0 reads; following the chain is only needed for dataset>0", extra={"dataset1": "error"}))
    for v in out:  # read_fcs_metadata checks HEADER, TEXT and channel keywords, not the DATA layout
        if v.name in _DATA_LAYOUT_ERRORS:
            v.metadata_ok = True
    return out


_DATA_LAYOUT_ERRORS = {
    "data_offsets_wrong_everywhere", "data_overlaps_text", "data_offsets_reversed", "missing_$DATATYPE",
    "missing_$BYTEORD", "missing_$P3B_integer_data", "tot_too_large", "tot_too_small", "par_too_small",
    "par_too_large", "mode_histogram", "datatype_ascii", "datatype_unknown", "byteord_mixed",
}


def _fix_offsets(content: bytes) -> bytes:
    """Re-derive HEADER and $BEGINDATA/$ENDDATA after TEXT (followed directly by DATA, at the end) changed length."""
    text_start = int(content[10:18])
    data_len = int(content[34:42]) - int(content[26:34]) + 1
    data = content[len(content) - data_len :]
    text = content[text_start : len(content) - data_len]
    for _ in range(4):
        ds = text_start + len(text)
        de = ds + data_len - 1
        text = re.sub(rb"\$BEGINDATA/\d+/", b"$BEGINDATA/" + str(ds).encode() + b"/", text)
        text = re.sub(rb"\$ENDDATA/\d+/", b"$ENDDATA/" + str(de).encode() + b"/", text)
    ds = text_start + len(text)
    header = content[:10] + b"".join(str(v).rjust(8).encode() for v in (text_start, text_start + len(text) - 1, ds, ds + data_len - 1, 0, 0))
    return header + text + data


def _fix_data_keywords(content: bytes, start: int, end: int) -> bytes:
    """Set $BEGINDATA/$ENDDATA to ``start``/``end`` (padded to keep TEXT length) without moving anything."""
    def sub(name: bytes, value: int, text: bytes) -> bytes:
        match = re.search(rb"\$" + name + rb"/(\d+)/", text)
        width = len(match.group(1))
        assert len(str(value)) <= width, (name, value, width)
        return text[: match.start(1)] + str(value).rjust(width).encode() + text[match.end(1):]
    return sub(b"ENDDATA", end, sub(b"BEGINDATA", start, content))


def _with_delimiter(ev: np.ndarray, delim: str) -> bytes:
    good = float_file(ev)
    text_start, text_end = int(good[10:18]), int(good[18:26])
    text = good[text_start : text_end + 1].replace(b"/", delim.encode())
    return good[:text_start] + text + good[text_end + 1 :]


def write_variants(folder: Path) -> list[tuple[Variant, Path]]:
    """Write every variant to ``folder`` as ``<name>.fcs``; return (variant, path) pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for v in variants():
        path = folder / f"{v.name}.fcs"
        if v.content is None:
            path.mkdir(exist_ok=True)
        else:
            path.write_bytes(v.content)
        written.append((v, path))
    return written


if __name__ == "__main__":  # python tests/malformed_fcs.py OUTDIR
    import sys

    for v, p in write_variants(Path(sys.argv[1] if len(sys.argv) > 1 else "malformed_fcs")):
        print(f"{v.outcome:6s} {p}")
