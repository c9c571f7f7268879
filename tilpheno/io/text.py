"""FCS HEADER and TEXT segment parsing (FCS 2.0, 3.0, 3.1).

Pure functions over bytes. Offsets are byte positions relative to the first byte of the data set
(``0`` for the first data set of a file), ``end`` offsets are inclusive, as in the standard.
Every problem raises ``tilpheno.errors.FCSReadError(source, problem)`` with a one-line problem.
"""
from __future__ import annotations

from dataclasses import dataclass

from tilpheno.errors import FCSReadError

HEADER_SIZE = 58  # bytes 0-57: version, 4 spaces, six 8-byte ASCII offsets
VERSIONS = ("FCS2.0", "FCS3.0", "FCS3.1", "FCS3.2")


@dataclass(frozen=True)
class Header:
    """The fixed-width HEADER of one data set. Offsets are relative to the data set's first byte.

    A blank or all-zero DATA/ANALYSIS field means "see the TEXT keywords" (FCS 3.x files larger
    than 99,999,999 bytes); it is stored as 0.
    """

    version: str
    text_start: int
    text_end: int
    data_start: int
    data_end: int
    analysis_start: int
    analysis_end: int


def _offset_field(raw: bytes, name: str, source: str) -> int:
    text = raw.decode("ascii", errors="replace").strip()
    if text == "":
        return 0
    if not text.isdigit():
        raise FCSReadError(source, f"HEADER {name} offset is not a number: {text!r}")
    return int(text)


def parse_header(raw: bytes, source: str = "<bytes>") -> Header:
    """Parse the first 58 bytes of a data set into a ``Header``."""
    if len(raw) < HEADER_SIZE:
        raise FCSReadError(source, f"file too short for an FCS HEADER ({len(raw)} bytes, need {HEADER_SIZE})")
    version = raw[0:6].decode("ascii", errors="replace")
    if version not in VERSIONS:
        raise FCSReadError(source, f"not an FCS file: HEADER starts with {raw[0:6]!r}, expected FCS2.0/3.0/3.1")
    names = ("TEXT start", "TEXT end", "DATA start", "DATA end", "ANALYSIS start", "ANALYSIS end")
    values = []
    for i, name in enumerate(names):
        field = raw[10 + 8 * i : 18 + 8 * i]
        try:
            values.append(_offset_field(field, name, source))
        except FCSReadError:
            if i >= 4:  # ANALYSIS offsets are optional and often garbage
                values.append(0)
            else:
                raise
    header = Header(version, *values)
    if header.text_start < HEADER_SIZE or header.text_end <= header.text_start:
        raise FCSReadError(
            source, f"HEADER gives an invalid TEXT segment (bytes {header.text_start}-{header.text_end})"
        )
    return header


def _split(body: str, delim: str, escaped: bool) -> list[str]:
    """Split TEXT ``body`` (after the first delimiter) into fields.

    ``escaped=True`` follows the standard: a doubled delimiter is a literal delimiter character.
    ``escaped=False`` treats every delimiter as a separator (doubled = empty value, a quirk of
    some FCS 2.0/3.0 writers).
    """
    if not escaped:
        fields = body.split(delim)
    else:
        fields, current, i, n = [], [], 0, len(body)
        while i < n:
            j = body.find(delim, i)
            if j < 0:
                current.append(body[i:])
                i = n
                break
            current.append(body[i:j])
            if j + 1 < n and body[j + 1] == delim:
                current.append(delim)
                i = j + 2
            else:
                fields.append("".join(current))
                current = []
                i = j + 1
        if current or (n and body[-1] != delim):
            fields.append("".join(current))
        return fields
    if fields and fields[-1] == "":
        fields.pop()  # the segment's final delimiter
    return fields


def _trim_padding(fields: list[str]) -> list[str]:
    """Drop an odd trailing field made only of spaces/NULs (padding after the closing delimiter)."""
    if len(fields) % 2 and fields and fields[-1].strip(" \t\r\n\x00") == "":
        return fields[:-1]
    return fields


def parse_text(raw: bytes, source: str = "<TEXT>") -> dict[str, str]:
    """Parse a TEXT (or supplemental TEXT / ANALYSIS) segment into ``{KEYWORD: value}``.

    Conventions: the first byte is the delimiter; a doubled delimiter inside a keyword or value
    is an escaped delimiter (FCS 3.1 §3.2.9). If that reading leaves a keyword without a value, or
    yields a keyword name holding a delimiter followed by ``$`` (``EMPTY//$CYT``), doubled
    delimiters are re-read as empty values (some FCS 2.0/3.0 writers). An empty value followed by
    a non-``$`` keyword cannot be told from an escape and is read as an escape. Keyword names are
    upper-cased with leading/trailing spaces removed; values are kept verbatim. Spaces or NULs
    padding the segment after its closing delimiter are ignored. Bytes are decoded
    as UTF-8, falling back to Latin-1. A keyword given twice keeps its last value.
    """
    if len(raw) < 2:
        raise FCSReadError(source, f"TEXT segment is {len(raw)} byte(s) long, too short to hold a keyword")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    delim = text[0]
    if delim.isalnum() or delim in " $\x00" or ord(delim) > 126:
        raise FCSReadError(source, f"TEXT delimiter {delim!r} is not a valid delimiter character")
    body = text[1:]
    strict = _trim_padding(_split(body, delim, escaped=True))
    if len(strict) % 2 == 0 and not any(delim + "$" in key for key in strict[0::2]):
        fields = strict
    else:
        # a keyword without a value, or a name like "EMPTY/$CYT": doubled delimiters were empty values
        alternative = _trim_padding(_split(body, delim, escaped=False))
        if len(alternative) % 2 == 0:
            fields = alternative
        elif len(strict) % 2 == 0:
            fields = strict
        else:
            raise FCSReadError(source, f"TEXT segment has a keyword without a value (last field {strict[-1][:40]!r})")
    keywords: dict[str, str] = {}
    for key, value in zip(fields[0::2], fields[1::2]):
        name = key.strip().upper()
        if not name:
            raise FCSReadError(source, f"TEXT segment has an empty keyword name (value {value[:40]!r})")
        keywords[name] = value
    if not keywords:
        raise FCSReadError(source, "TEXT segment holds no keywords")
    return keywords
