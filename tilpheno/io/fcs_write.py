"""FCS 3.1 writer: list-mode, 32-bit float, little-endian, one data set.

Layout written (byte offsets are 0-based, every "end" offset is *inclusive*, per the standard):

- HEADER, 58 bytes: ``FCS3.1`` + four spaces + six 8-character right-justified ASCII offsets
  (TEXT begin/end, DATA begin/end, ANALYSIS begin/end). An offset that does not fit in 8 digits
  (> 99,999,999) is written as 0 in the HEADER for both members of its pair, and the TEXT keywords
  ``$BEGINDATA``/``$ENDDATA`` (always present) carry the true values, as FCS 3.1 section 3.2 says.
- TEXT, starting at byte 58: ``/KEY/value/KEY/value/.../``. A delimiter inside a keyword or value
  is escaped by doubling it. Empty values are not allowed by FCS 3.1, and a value that begins or
  ends with the delimiter cannot be told apart from an escaped pair, so both are rejected.
- DATA, directly after TEXT: events row by row (``$MODE L``), ``$DATATYPE F``, ``$BYTEORD 1,2,3,4``,
  each parameter ``$PnB 32``, ``$PnE 0,0``, ``$PnG 1``.
- No ANALYSIS or supplemental TEXT (their offsets are 0), ``$NEXTDATA 0``.

``$BEGINDATA``/``$ENDDATA`` depend on the TEXT length, which depends on them; the writer iterates
to the fixed point (two or three passes).

The file is written atomically (``tilpheno.io.atomic``): a temporary sibling renamed over the target.
"""
from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

import numpy as np

from tilpheno.io.spill import Spillover
from tilpheno.io.atomic import write_bytes

HEADER_LENGTH = 58
MAX_HEADER_OFFSET = 99_999_999

# Keywords the writer computes itself; callers may not pass them.
_RESERVED = re.compile(
    r"^\$(BEGINANALYSIS|ENDANALYSIS|BEGINSTEXT|ENDSTEXT|BEGINDATA|ENDDATA|BYTEORD|DATATYPE|MODE"
    r"|NEXTDATA|PAR|TOT|P\d+[NSRBEG])$"
)

Channel = tuple[str, str | None, float | int]  # ($PnN, $PnS or None, $PnR)


def format_header(text_begin: int, text_end: int, data_begin: int, data_end: int) -> bytes:
    """The 58-byte FCS 3.1 HEADER for the given inclusive byte offsets (no ANALYSIS segment).

    A pair whose end offset exceeds 99,999,999 is written as ``0, 0`` (the TEXT keywords hold it).
    """
    def pair(begin: int, end: int) -> tuple[int, int]:
        return (0, 0) if end > MAX_HEADER_OFFSET else (begin, end)

    fields = (*pair(text_begin, text_end), *pair(data_begin, data_end), 0, 0)
    header = b"FCS3.1    " + b"".join(f"{v:>8d}".encode("ascii") for v in fields)
    assert len(header) == HEADER_LENGTH
    return header


def format_spillover(spillover: Spillover) -> str:
    """``$SPILLOVER`` value: ``n,det1,...,detn,s11,s12,...`` (row-major, shortest exact float repr)."""
    values = [repr(float(v)) for v in np.asarray(spillover.matrix, dtype=np.float64).ravel()]
    return ",".join([str(len(spillover.detectors)), *spillover.detectors, *values])


def escape_text(value: str, delimiter: str, what: str) -> str:
    """Escape ``value`` for the TEXT segment by doubling the delimiter; ``what`` names it in errors."""
    if value == "":
        raise ValueError(f"FCS TEXT {what}: empty values are not allowed in FCS 3.1")
    if value.startswith(delimiter) or value.endswith(delimiter):
        raise ValueError(f"FCS TEXT {what}: {value!r} begins or ends with the delimiter {delimiter!r}")
    return value.replace(delimiter, delimiter * 2)


def _text_segment(pairs: Sequence[tuple[str, str]], delimiter: str) -> bytes:
    parts = [delimiter]
    for key, value in pairs:
        parts += [escape_text(key, delimiter, "keyword"), delimiter,
                  escape_text(value, delimiter, f"value of {key}"), delimiter]
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates and the like
        raise ValueError(f"FCS TEXT: cannot encode as UTF-8 ({exc})") from None


def _channel_keywords(channels: Sequence[Channel]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for n, (pnn, pns, pnr) in enumerate(channels, start=1):
        pairs += [(f"$P{n}N", str(pnn)), (f"$P{n}B", "32"), (f"$P{n}E", "0,0"), (f"$P{n}G", "1"),
                  (f"$P{n}R", str(int(pnr)) if float(pnr).is_integer() else repr(float(pnr)))]
        if pns:
            pairs.append((f"$P{n}S", str(pns)))
    return pairs


def build_fcs_bytes(
    events: np.ndarray,
    channels: Sequence[Channel],
    keywords: Mapping[str, object],
    *,
    spillover: Spillover | None = None,
    delimiter: str = "/",
) -> bytes:
    """The complete FCS 3.1 file as bytes (see the module docstring for the layout).

    ``events``: n_events x n_channels, any real dtype; stored as float32 (values are rounded to
    the nearest float32). ``channels``: one ``(pnn, pns or None, pnr)`` per column; a falsy
    ``pns`` writes no ``$PnS``. ``keywords``: further TEXT keywords (values converted with
    ``str``); the writer's own keywords ($PAR, $TOT, $PnN, ..., $SPILLOVER when ``spillover``
    is given) may not appear there. Raises ``ValueError`` naming the offending field.
    """
    data = np.asarray(events)
    if data.ndim != 2:
        raise ValueError(f"events must be 2-D (n_events x n_channels), got shape {data.shape}")
    if data.shape[1] != len(channels):
        raise ValueError(f"events have {data.shape[1]} columns but {len(channels)} channels were given")
    if len(delimiter) != 1 or not (1 <= ord(delimiter) <= 126):
        raise ValueError(f"delimiter must be one ASCII character 1-126, got {delimiter!r}")
    names = [str(c[0]) for c in channels]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate $PnN among channels {names}")
    extra = [(str(k), str(v)) for k, v in keywords.items()]
    clash = [k for k, _ in extra if _RESERVED.match(k.upper()) or (spillover is not None and k.upper() == "$SPILLOVER")]
    if clash:
        raise ValueError(f"keywords {clash} are set by the FCS writer and may not be passed")
    if spillover is not None:
        missing = [d for d in spillover.detectors if d not in names]
        if missing:
            raise ValueError(f"$SPILLOVER detector(s) {missing} are not among the channels {names}")
        extra.append(("$SPILLOVER", format_spillover(spillover)))

    payload = np.ascontiguousarray(data, dtype="<f4").tobytes()
    fixed = [("$BYTEORD", "1,2,3,4"), ("$DATATYPE", "F"), ("$MODE", "L"), ("$NEXTDATA", "0"),
             ("$PAR", str(len(channels))), ("$TOT", str(data.shape[0])),
             ("$BEGINANALYSIS", "0"), ("$ENDANALYSIS", "0"), ("$BEGINSTEXT", "0"), ("$ENDSTEXT", "0")]
    tail = _channel_keywords(channels) + extra

    begin, end = 0, 0
    while True:  # fixed point: the offsets' digit count changes the TEXT length
        text = _text_segment([("$BEGINDATA", str(begin)), ("$ENDDATA", str(end)), *fixed, *tail], delimiter)
        new_begin = HEADER_LENGTH + len(text)
        new_end = new_begin + len(payload) - 1 if payload else 0
        if (new_begin, new_end) == (begin, end):
            break
        begin, end = new_begin, new_end
    if not payload:  # FCS 3.1: no DATA segment -> offsets 0
        begin = end = 0
        text = _text_segment([("$BEGINDATA", "0"), ("$ENDDATA", "0"), *fixed, *tail], delimiter)
    header = format_header(HEADER_LENGTH, HEADER_LENGTH + len(text) - 1, begin, end)
    return header + text + payload


def write_fcs(
    path: str | os.PathLike,
    events: np.ndarray,
    channels: Sequence[Channel],
    keywords: Mapping[str, object],
    *,
    spillover: Spillover | None = None,
    delimiter: str = "/",
) -> None:
    """Write an FCS 3.1 file atomically; arguments as :func:`build_fcs_bytes`."""
    write_bytes(path, build_fcs_bytes(events, channels, keywords, spillover=spillover, delimiter=delimiter))
