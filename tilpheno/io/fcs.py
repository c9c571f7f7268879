"""Read FCS 2.0 / 3.0 / 3.1 files into ``FCSFile`` (see docs/design.md, section FCS).

Conventions
-----------
* ``events`` equal FlowKit's ``Sample(path).get_events('raw')``: float64, one row per event,
  integer data bit-masked to ``next_power_of_2($PnR) - 1`` when that is below ``2**$PnB``, the
  channel named ``Time`` (case-insensitive) multiplied by ``$TIMESTEP`` (its ``$PnG`` ignored),
  ``$PnE f1,f2`` with ``f1 > 0`` decoded as ``10**(f1 * x / $PnR) * f2`` (``f2 = 0`` read as 1),
  then division by ``$PnG`` when it is neither 0 nor 1. Units are the instrument's channel units.
* The DATA segment is decoded with numpy for every byte-aligned layout: ``$DATATYPE`` F (32-bit),
  D (64-bit), I with any ``$PnB`` that is a multiple of 8 up to 64 (uniform, e.g. 16/32/24-bit, or
  per-channel widths such as Stratedigm's 16+32). flowio stays the reference the tests check against;
  it cannot decode 24-bit or 64-bit integers, so the reader does not delegate to it.
* Size checks come before any allocation: every offset and ``$TOT x bytes-per-event`` is checked
  against the real file size, so a HEADER claiming 10^12 events cannot allocate more than the file.
* Known instrument quirks that still read, each recorded in ``FCSFile.problems``:
  DATA end offset one byte past the segment (Miltenyi MACSQuant, BD FACSDiva exports);
  HEADER and TEXT DATA offsets that disagree (the pair whose length matches ``$TOT`` is used,
  TEXT first for FCS 3.x, HEADER first for FCS 2.0); blank HEADER DATA offsets (large-file
  convention); doubled delimiters meaning empty values; a non-numeric ``$TIMESTEP`` (read as 1);
  a malformed spillover keyword (``spillover`` is then None).
* A header-only file (TEXT present, DATA segment missing, e.g. a Cytek NL-2000 sample header)
  reads with ``read_fcs_metadata``; ``read_fcs`` raises ``FCSReadError`` for it.
* ``FCSFile.sha256`` (SHA-256 of the whole file) is computed on first access, not by the read:
  streamed from the file in 1 MiB chunks through a new read-only handle, then cached. The file's
  identity (device, inode, size, mtime, ctime) is taken from the handle the read used, before any
  byte is read; if it differs when the hash is computed (or changes while hashing), accessing
  ``sha256`` raises ``FCSReadError`` instead of returning a digest of bytes that were not read.
* DATA is decoded in one pass from the file to the float64 array: blocks of ``CHUNK_BYTES`` are
  read (``readinto``) into one small reusable buffer and converted straight into their rows of the
  output; bit masks, ``$TIMESTEP``, ``$PnE`` and ``$PnG`` touch only the columns that need them.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal, overload

import numpy as np
import pandas as pd

from tilpheno.io.spill import Spillover, parse_spill_keyword
from tilpheno.errors import CompensationError, FCSReadError
from tilpheno.io.files import READ_SECONDS_LIMIT
from tilpheno.io.text import HEADER_SIZE, Header, parse_header, parse_text

SPILL_KEYWORDS = ("$SPILLOVER", "$SPILL", "SPILL", "SPILLOVER")
_BYTEORDERS = {"1,2,3,4": "<", "1,2": "<", "1": "<", "4,3,2,1": ">", "2,1": ">"}
_MAX_DATASETS = 1000

HASH_CHUNK_BYTES = 1 << 20  # the lazy SHA-256 streams the file in blocks of 1 MiB


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _LazySHA256:
    """SHA-256 of a file, computed on first use, and only if the file is still the one read.

    ``identity`` is (device, inode, size, mtime_ns, ctime_ns) from ``fstat`` of the handle the read
    used, taken before any byte was read. Picklable (no handle, no lock kept).
    """

    __slots__ = ("path", "identity")

    def __init__(self, path: Path, identity: tuple[int, ...]):
        self.path = path
        self.identity = identity

    def hexdigest(self) -> str:
        path = self.path

        def nonblocking(name, flags):  # a FIFO put in the file's place must not block the open
            return os.open(name, flags | os.O_NONBLOCK)

        try:
            with open(path, "rb", buffering=0, opener=nonblocking) as fh:
                if _identity(os.fstat(fh.fileno())) != self.identity:
                    raise FCSReadError(path, "file changed since it was read (device, inode, size, modification or"
                                             " change time differ); its SHA-256 would not describe the data read")
                digest = hashlib.sha256()
                buffer = bytearray(HASH_CHUNK_BYTES)
                view = memoryview(buffer)
                deadline = time.monotonic() + READ_SECONDS_LIMIT
                while True:
                    got = fh.readinto(buffer)
                    if not got:
                        break
                    digest.update(view[:got])
                    if time.monotonic() > deadline:
                        raise FCSReadError(path, f"computing SHA-256 took longer than {READ_SECONDS_LIMIT:g} s; abandoned")
                if _identity(os.fstat(fh.fileno())) != self.identity:
                    raise FCSReadError(path, "file changed while its SHA-256 was computed")
                return digest.hexdigest()
        except FCSReadError:
            raise
        except FileNotFoundError:
            raise FCSReadError(path, "file removed since it was read; SHA-256 not computed") from None
        except OSError as exc:
            raise FCSReadError(path, f"cannot read to compute SHA-256: {exc.strerror or exc}") from None


@dataclass
class FCSFile:
    """One data set of an FCS file. See the module docstring for the event conventions.

    ``sha256`` (hex SHA-256 of the whole file's bytes) is computed on first access and cached;
    it raises ``FCSReadError`` if the file changed or vanished since it was read. ``''`` when the
    file was read with ``read_fcs_metadata(checksum=False)``. It may also be given as a string.
    """

    path: Path
    sha256: str = field(repr=False)  # a property, see below: computed on first access
    version: str
    keywords: dict[str, str]
    channels: pd.DataFrame
    events: np.ndarray | None
    spillover: Spillover | None
    n_events: int
    problems: tuple[str, ...] = field(default=())  # non-fatal quirks met while reading

    @property
    def channel_names(self) -> list[str]:
        """$PnN of every parameter, in order."""
        return list(self.channels["pnn"])


def _get_sha256(self: FCSFile) -> str:
    value = self.__dict__["_sha256"]
    if isinstance(value, _LazySHA256):
        value = value.hexdigest()
        self.__dict__["_sha256"] = value  # cached; two threads racing compute the same digest
    return value


def _set_sha256(self: FCSFile, value: str | _LazySHA256) -> None:
    self.__dict__["_sha256"] = value


# set after @dataclass so that the generated __init__ goes through the setter (dataclasses.replace,
# ==, asdict read it through the getter, i.e. compute the digest)
# (mypy cannot type a property replacing a dataclass field: the one place it is told to look away)
FCSFile.sha256 = property(_get_sha256, _set_sha256, doc="Hex SHA-256 of the whole file, computed on first access.")  # type: ignore[assignment]


def digest_of_read(holder) -> str:
    """``holder.sha256`` (an FCSFile, or a result carrying its digest): the SHA-256 of the bytes it was
    read from; ``changed: <problem>`` when the reader refuses to hash a file that changed or vanished
    since it was read (so a digest never describes bytes other than those read)."""
    try:
        return holder.sha256
    except FCSReadError as exc:
        return f"changed: {exc.problem}"


@dataclass(frozen=True)
class _Layout:
    """Where the DATA segment is and how to decode it (absolute byte offsets, end exclusive)."""

    start: int
    stop: int
    n_events: int
    datatype: str  # "I" | "F" | "D"
    order: str  # "<" | ">"
    widths: tuple[int, ...]  # bytes per value, per channel


# --------------------------------------------------------------------------- keyword helpers


@overload
def _kw_int(kw: dict[str, str], name: str, path, *, required: Literal[True] = ...) -> int: ...
@overload
def _kw_int(kw: dict[str, str], name: str, path, *, required: bool) -> int | None: ...
def _kw_int(kw: dict[str, str], name: str, path, *, required: bool = True) -> int | None:
    raw = kw.get(name)
    if raw is None or raw.strip() == "":
        if required:
            raise FCSReadError(path, f"required keyword {name} is missing")
        return None
    text = raw.strip()
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise FCSReadError(path, f"keyword {name} is not an integer: {text[:40]!r}") from None
        if not number.is_integer():
            raise FCSReadError(path, f"keyword {name} is not an integer: {text[:40]!r}")
        value = int(number)
    if value < 0:
        raise FCSReadError(path, f"keyword {name} is negative: {value}")
    return value


def _kw_float(kw: dict[str, str], name: str, path, default: float) -> float:
    raw = kw.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise FCSReadError(path, f"keyword {name} is not a number: {raw.strip()[:40]!r}") from None
    if not math.isfinite(value):
        raise FCSReadError(path, f"keyword {name} is not finite: {raw.strip()[:40]!r}")
    return value


def _pne(kw: dict[str, str], n: int, path) -> tuple[float, float]:
    """($PnE decades, log value at 0); absent means linear (0, 0); f2 = 0 with f1 > 0 reads as 1."""
    raw = kw.get(f"$P{n}E")
    if raw is None or raw.strip() == "":
        return (0.0, 0.0)
    parts = raw.split(",")
    try:
        decades, log0 = (float(p) for p in parts)
    except ValueError:
        raise FCSReadError(path, f"keyword $P{n}E must be two numbers 'f1,f2', got {raw.strip()[:40]!r}") from None
    if not (math.isfinite(decades) and math.isfinite(log0)) or decades < 0 or log0 < 0:
        raise FCSReadError(path, f"keyword $P{n}E has invalid values {raw.strip()[:40]!r}")
    if log0 == 0 and decades != 0:
        log0 = 1.0
    return (decades, log0)


def _channels(kw: dict[str, str], path) -> pd.DataFrame:
    """One row per parameter: n (1-based), pnn, pns ('' if absent), pnr, pnb, pne, png."""
    n_par = _kw_int(kw, "$PAR", path)
    if n_par == 0:
        raise FCSReadError(path, "keyword $PAR is 0: the file has no parameters")
    # every parameter needs its own $PnN, so $PAR can never exceed the keyword count
    if n_par > len(kw):
        raise FCSReadError(path, f"keyword $PAR = {n_par} but TEXT holds only {len(kw)} keywords")
    rows = []
    for n in range(1, n_par + 1):
        pnn = kw.get(f"$P{n}N")
        if pnn is None:
            raise FCSReadError(path, f"required keyword $P{n}N is missing ($PAR = {n_par})")
        if f"$P{n}R" not in kw:
            raise FCSReadError(path, f"required keyword $P{n}R is missing")
        pnr = _kw_float(kw, f"$P{n}R", path, default=float("nan"))
        if pnr <= 0:
            raise FCSReadError(path, f"keyword $P{n}R must be positive, got {pnr:g}")
        rows.append(
            {
                "n": n,
                "pnn": pnn,
                "pns": kw.get(f"$P{n}S", ""),
                "pnr": pnr,
                "pnb": _kw_int(kw, f"$P{n}B", path, required=False),
                "pne": _pne(kw, n, path),
                "png": _kw_float(kw, f"$P{n}G", path, default=1.0),
            }
        )
    frame = pd.DataFrame(rows, columns=["n", "pnn", "pns", "pnr", "pnb", "pne", "png"])
    frame["pnb"] = frame["pnb"].astype("Int64")
    return frame


def _spillover(kw: dict[str, str], path, problems: list[str]) -> Spillover | None:
    for name in SPILL_KEYWORDS:
        value = kw.get(name)
        if value is None or value.strip() in ("", "0"):
            continue
        try:
            return parse_spill_keyword(value, source=f"{path} keyword {name}")
        except CompensationError as exc:
            problems.append(f"spillover keyword ignored: {exc}")
            return None
    return None


# --------------------------------------------------------------------------- layout


_WORDS = (8, 16, 32, 64)


def _datatype_and_widths(kw, channels: pd.DataFrame, path, problems: list[str] | None = None) -> tuple[str, str, tuple[int, ...]]:
    mode = kw.get("$MODE", "L").strip().upper() or "L"
    if mode != "L":
        raise FCSReadError(path, f"unsupported $MODE {mode!r}: only list mode (L) is supported")
    raw_type = kw.get("$DATATYPE")
    if raw_type is None:
        raise FCSReadError(path, "required keyword $DATATYPE is missing")
    datatype = raw_type.strip().upper()
    if datatype not in ("I", "F", "D"):
        raise FCSReadError(path, f"unsupported $DATATYPE {raw_type.strip()[:20]!r} (supported: I, F, D)")
    raw_order = kw.get("$BYTEORD")
    if raw_order is None:
        raise FCSReadError(path, "required keyword $BYTEORD is missing")
    order = _BYTEORDERS.get(raw_order.replace(" ", ""))
    if order is None:
        raise FCSReadError(path, f"unsupported $BYTEORD {raw_order.strip()[:20]!r}")
    if datatype == "F":
        return datatype, order, (4,) * len(channels)
    if datatype == "D":
        return datatype, order, (8,) * len(channels)
    widths, in_words = [], []
    for n, bits in zip(channels["n"], channels["pnb"]):
        if pd.isna(bits):
            raise FCSReadError(path, f"required keyword $P{n}B is missing for integer data")
        bits = int(bits)
        if bits <= 0 or bits > 64:
            raise FCSReadError(path, f"unsupported integer width $P{n}B = {bits} (need 8, 16, 24, ... 64)")
        if bits % 8:
            # Beckman Coulter FC500 .LMD: "$PnB 10" values stored one per 16-bit word (not packed);
            # the unused high bits are cleared by the $PnR mask (see _scaling)
            word = next(w for w in _WORDS if w >= bits)
            in_words.append(f"$P{n}B {bits}")
            widths.append(word // 8)
        else:
            widths.append(bits // 8)
    if in_words and problems is not None:
        words = sorted({8 * w for w, b in zip(widths, channels["pnb"]) if int(b) % 8})
        problems.append(
            f"integer widths not a whole number of bytes ({', '.join(in_words[:3])}{', ...' if len(in_words) > 3 else ''}):"
            f" rule 'words': values read as {'/'.join(map(str, words))}-bit words (Beckman Coulter FC500 layout),"
            " masked by $PnR")
    return datatype, order, tuple(widths)


def _data_candidates(header: Header, kw, path) -> list[tuple[str, int, int]]:
    """(source, start, end-inclusive) pairs for DATA, in order of preference."""
    text_pair = None
    begin = _kw_int(kw, "$BEGINDATA", path, required=False)
    end = _kw_int(kw, "$ENDDATA", path, required=False)
    if begin is not None and end is not None:
        text_pair = ("TEXT", begin, end)
    header_pair: tuple[str, int, int] | None = ("HEADER", header.data_start, header.data_end)
    if header.data_start == 0 and header.data_end == 0:
        header_pair = None  # large-file convention: look in TEXT
    pairs = [text_pair, header_pair] if header.version != "FCS2.0" else [header_pair, text_pair]
    return [p for p in pairs if p is not None]


def _overlaps(start: int, end: int, header: Header) -> bool:
    return start <= header.text_end and header.text_start <= end


def _reject_reason(start: int, end: int, length: int, need: int, bpe: int, base: int, file_size: int,
                   header: Header) -> str:
    """Why a DATA offset pair cannot be the DATA segment ('' when it can). Accepted: the exact
    length, or up to one event less a byte longer (an end offset one byte long), where the end may
    be the file size itself (one past the last byte: Partec PAS and CyFlow)."""
    if not length:
        return "" if need == 0 else "empty"
    if start < HEADER_SIZE:
        return "starts inside the HEADER"
    if header.text_start <= start <= header.text_end:
        return f"starts inside the TEXT segment ({header.text_start}-{header.text_end})"
    if _overlaps(start, end, header):
        return f"overlaps the TEXT segment ({header.text_start}-{header.text_end})"
    fits = length == need or (need > 0 and need < length < need + bpe)
    if base + end > file_size or (base + end == file_size and not (fits and length > need)):
        return f"ends past the end of the file ({file_size} bytes)"
    if not fits:
        return f"holds {length} bytes, $TOT events need {need}"
    return ""


def _layout(header: Header, kw, channels, base: int, file_size: int, path, problems: list[str]) -> _Layout:
    datatype, order, widths = _datatype_and_widths(kw, channels, path, problems)
    bpe = sum(widths)
    tot = _kw_int(kw, "$TOT", path, required=False)
    candidates = _data_candidates(header, kw, path)
    if not candidates:
        if tot == 0:
            return _Layout(0, 0, 0, datatype, order, widths)
        raise FCSReadError(path, "no DATA offsets: HEADER gives 0,0 and TEXT has no $BEGINDATA/$ENDDATA")
    described, rejected = [], []
    for source, start, end in candidates:
        length = end - start + 1 if end >= start else 0
        if start == 0 and end == 0:
            length = 0
        described.append(f"{source} {start}-{end}")
        n = tot if tot is not None else length // bpe
        need = n * bpe
        why, rule = _reject_reason(start, end, length, need, bpe, base, file_size, header), "exact"
        if why:
            rejected.append(f"{source} {start}-{end} ({why})")
            continue
        if length != need:
            rule = "end one past the file" if base + end == file_size else "end one byte long"
        others = [f"{s} {a}-{b}" for s, a, b in candidates if (a, b) != (start, end)]
        if others:
            problems.append(f"DATA offsets disagree: used {source} {start}-{end}, ignored {', '.join(others)}")
        if rule != "exact" or rejected:
            reasons = f"; rejected {'; '.join(rejected)}" if rejected else ""
            problems.append(f"DATA offsets resolved by rule '{rule}': {source} {start}-{end}{reasons}")
        if length != need:
            problems.append(f"DATA segment is {length - need} byte(s) longer than $TOT events need (end offset quirk)")
        return _Layout(base + start, base + start + need, n, datatype, order, widths)
    source, start, end = candidates[0]
    if base + max(start, end) >= file_size and end > 0:
        raise FCSReadError(
            path,
            f"DATA segment ({', '.join(described)}) lies beyond the end of the file ({file_size} bytes)"
            " - truncated or header-only file",
        )
    length = max(end - start + 1, 0)
    if tot is None:
        raise FCSReadError(path, f"DATA segment of {length} bytes is not a whole number of {bpe}-byte events ($TOT missing)")
    raise FCSReadError(
        path,
        f"$TOT = {tot} events x {bpe} bytes/event = {tot * bpe} bytes, but the DATA segment"
        f" ({', '.join(described)}) holds {length} bytes",
    )


# --------------------------------------------------------------------------- decoding


def _next_power_of_2(x: int) -> int:
    return 1 if x <= 0 else 1 << (x - 1).bit_length()


CHUNK_BYTES = 1 << 20  # DATA is read and decoded in blocks of 1 MiB (a reused buffer that stays in cache)


@dataclass(frozen=True)
class _Scaling:
    """Per-channel post-processing, in FlowKit's order: time x $TIMESTEP, $PnE decoding, / $PnG."""

    time_index: int | None
    timestep: float
    log: tuple[tuple[int, float, float, float], ...]  # (column, decades, log0, $PnR)
    gain: tuple[tuple[int, float], ...]  # (column, $PnG) where $PnG is neither 0 nor 1
    masks: tuple[int | None, ...]  # integer data: bit mask per column, None = no mask


def _scaling(lay: _Layout, channels: pd.DataFrame, kw, problems: list[str]) -> _Scaling:
    time_index = None
    for i, name in enumerate(channels["pnn"]):
        if name.lower() == "time":
            time_index = i  # the last one, as FlowKit
    step = 1.0
    timestep = kw.get("$TIMESTEP", kw.get("TIMESTEP"))
    if time_index is not None and timestep is not None and timestep.strip():
        try:
            step = float(timestep.strip())
        except ValueError:
            problems.append(f"$TIMESTEP {timestep.strip()[:20]!r} is not a number; time not scaled")
    log = tuple((i, d, l0, r) for i, ((d, l0), r) in enumerate(zip(channels["pne"], channels["pnr"])) if d > 0)
    gain = tuple((i, g) for i, g in enumerate(channels["png"]) if i != time_index and g != 1.0 and g != 0)
    masks: list[int | None] = []
    for w, pnr, bits in zip(lay.widths, channels["pnr"], channels["pnb"]):
        max_range = _next_power_of_2(math.ceil(pnr))
        if lay.datatype == "I" and not pd.isna(bits) and int(bits) % 8:   # FC500 words: never above $PnB bits
            max_range = min(max_range, 2 ** int(bits))
        masks.append(max_range - 1 if lay.datatype == "I" and max_range < 2 ** (8 * w) else None)
    return _Scaling(time_index, step, log, gain, tuple(masks))


def _decode_block(raw: np.ndarray, lay: _Layout, scale: _Scaling, out: np.ndarray) -> None:
    """Decode ``raw`` (uint8, rows x bytes-per-event, a writable view of the read buffer) into
    ``out`` (float64 rows x channels, a slice of the result) in one conversion; the buffer may be
    modified (integer bit masks are applied in it, in place)."""
    widths = lay.widths
    if lay.datatype in ("F", "D"):  # (signalling NaNs become quiet NaNs, as in FlowKit: see _read_events)
        code = f"{lay.order}f4" if lay.datatype == "F" else f"{lay.order}f8"
        np.copyto(out, raw.reshape(-1).view(code).reshape(out.shape))
    elif len(set(widths)) == 1 and widths[0] in (1, 2, 4, 8):
        values = raw.reshape(-1).view(f"{lay.order}u{widths[0]}").reshape(out.shape)
        for i, mask in enumerate(scale.masks):
            if mask is not None:
                column = values[:, i]
                np.bitwise_and(column, column.dtype.type(mask), out=column)
        np.copyto(out, values)
    else:  # any byte-aligned widths: assemble each column from its bytes
        pos = 0
        for i, w in enumerate(widths):
            block = raw[:, pos : pos + w].astype(np.uint64)
            shifts = np.arange(w, dtype=np.uint64) * np.uint64(8)
            if lay.order == ">":
                shifts = shifts[::-1]
            column = np.bitwise_or.reduce(block << shifts, axis=1)
            mask = scale.masks[i]
            if mask is not None:
                column &= np.uint64(mask)
            out[:, i] = column
            pos += w
    # in place, column by column, while the block is in cache (same arithmetic as FlowKit's)
    if scale.time_index is not None and scale.timestep != 1.0:
        column = out[:, scale.time_index]
        np.multiply(column, scale.timestep, out=column)
    for i, decades, log0, pnr in scale.log:
        out[:, i] = (10 ** (decades * out[:, i] / pnr)) * log0
    for i, gain in scale.gain:
        column = out[:, i]
        np.divide(column, gain, out=column)


Empty = Callable[[int, int], np.ndarray]
"""``(rows, columns) ->`` an uninitialised C-contiguous float64 array (``np.empty``, or a pool's)."""


def _new_array(rows: int, columns: int) -> np.ndarray:
    return np.empty((rows, columns), dtype=np.float64)


def _read_events(fh, lay: _Layout, scale: _Scaling, path, empty: Empty = _new_array) -> np.ndarray:
    """Read the DATA segment once, block by block into one reused buffer, decoding each block
    straight into its rows of the float64 result (``empty``'s array; no full-size intermediate)."""
    n_par, bpe = len(lay.widths), sum(lay.widths)
    events = empty(lay.n_events, n_par)  # size checked against the file by _layout
    rows = max(1, CHUNK_BYTES // bpe)
    buffer = bytearray(min(lay.n_events, rows) * bpe)
    fh.seek(lay.start)
    with np.errstate(invalid="ignore"):  # a signalling NaN cast to float64 is not an error
        _read_blocks(fh, lay, scale, path, events, rows, buffer)
    return events


def _read_blocks(fh, lay: _Layout, scale: _Scaling, path, events: np.ndarray, rows: int, buffer: bytearray) -> None:
    bpe = sum(lay.widths)
    deadline = time.monotonic() + READ_SECONDS_LIMIT
    for first in range(0, lay.n_events, rows):
        if time.monotonic() > deadline:
            raise FCSReadError(path, f"reading DATA took longer than {READ_SECONDS_LIMIT:g} s; abandoned")
        last = min(lay.n_events, first + rows)
        view = memoryview(buffer)[: (last - first) * bpe]
        filled = 0
        while filled < len(view):
            got = fh.readinto(view[filled:])
            if not got:
                raise FCSReadError(path, f"file ended inside the DATA segment (event {first + filled // bpe})")
            filled += got
        raw = np.frombuffer(buffer, dtype=np.uint8, count=len(view)).reshape(last - first, bpe)
        _decode_block(raw, lay, scale, events[first:last])


# --------------------------------------------------------------------------- file access


def _open_checked(path: Path):
    """Open a regular file read-only (a FIFO or device named .fcs would block or never end):
    ``tilpheno.io.files.open_regular`` checks the type on the opened handle."""
    from tilpheno.io.files import open_regular

    try:
        return open_regular(path)
    except FileNotFoundError:
        raise FCSReadError(path, "no such file") from None
    except IsADirectoryError:
        raise FCSReadError(path, "is a directory, not an FCS file") from None
    except OSError as exc:
        raise FCSReadError(path, f"cannot open: {exc.strerror or exc}") from None


def _dataset_base(read_at, file_size: int, dataset: int, path, problems: list[str]) -> tuple[int, Header, dict[str, str]]:
    """Follow $NEXTDATA to data set ``dataset``; return its base offset, HEADER and TEXT."""
    if dataset < 0:
        raise FCSReadError(path, f"data set index must be >= 0, got {dataset}")
    base, seen = 0, set()
    for index in range(_MAX_DATASETS):
        header, kw = _header_and_text(read_at, base, file_size, path, problems if index == dataset else [])
        if index == dataset:
            return base, header, kw
        step = _kw_int(kw, "$NEXTDATA", path, required=False) or 0
        if step == 0:
            raise FCSReadError(path, f"data set {dataset} requested but the file holds {index + 1}")
        base += step
        if base in seen or base + HEADER_SIZE > file_size:
            raise FCSReadError(path, f"$NEXTDATA of data set {index} points to byte {base}, outside the file")
        seen.add(base)
    raise FCSReadError(path, f"more than {_MAX_DATASETS} data sets")


def _header_and_text(read_at, base: int, file_size: int, path, problems: list[str]) -> tuple[Header, dict[str, str]]:
    header = parse_header(read_at(base, HEADER_SIZE), str(path))
    end = header.text_end
    if base + header.text_start >= file_size:
        raise FCSReadError(path, f"TEXT segment (bytes {header.text_start}-{end}) starts beyond the end of the file ({file_size} bytes)")
    if base + end >= file_size:
        if base + end == file_size:  # TEXT end off by one at the end of a header-only file
            end -= 1
        else:
            raise FCSReadError(path, f"TEXT segment (bytes {header.text_start}-{end}) runs past the end of the file ({file_size} bytes)")
    raw = read_at(base + header.text_start, end - header.text_start + 1)
    try:
        kw = parse_text(raw, f"{path} TEXT")  # tolerates a missing closing delimiter (end one short)
    except FCSReadError:
        if len(raw) < 3 or raw[-2:-1] != raw[:1]:
            raise
        kw = parse_text(raw[:-1], f"{path} TEXT")  # TEXT end offset one byte too far
    if raw[-1:] != raw[:1] and raw[-2:-1] == raw[:1]:
        header = replace(header, text_end=end - 1)  # the last byte is not TEXT: DATA may start there
    kw = _with_supplemental_text(kw, read_at, base, header, file_size, path, problems)
    return header, kw


def _with_supplemental_text(kw, read_at, base, header: Header, file_size: int, path, problems: list[str]) -> dict[str, str]:
    """Merge FCS 3.x supplemental TEXT keywords ($BEGINSTEXT/$ENDSTEXT); primary TEXT wins.

    The supplemental TEXT is optional and some writers point it at binary blobs (Partec CyFlow
    stores a ZIP there), so a bad one is recorded in ``problems`` and skipped, never fatal.
    """
    start = _kw_int(kw, "$BEGINSTEXT", path, required=False) or 0
    end = _kw_int(kw, "$ENDSTEXT", path, required=False) or 0
    if start == 0 or end <= start or (start == header.text_start and end == header.text_end):
        return kw
    if start < HEADER_SIZE or base + end >= file_size:
        problems.append(f"supplemental TEXT (bytes {start}-{end}) lies outside the file; ignored")
        return kw
    try:
        extra = parse_text(read_at(base + start, end - start + 1), "supplemental TEXT")
    except FCSReadError as exc:
        problems.append(f"supplemental TEXT ignored: {exc.problem}")
        return kw
    return {**extra, **kw}


def _check_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise FCSReadError(repr(path), "path must be a string or os.PathLike")
    return Path(path)


def _read(path: str | os.PathLike, dataset: int, with_events: bool, checksum: bool = True,
          data_check: bool = False, empty: Empty = _new_array) -> FCSFile:
    path = _check_path(path)
    with _open_checked(path) as fh:
        try:
            st = os.fstat(fh.fileno())  # before any byte is read: what the lazy SHA-256 must find again
            size = st.st_size
            digest = _LazySHA256(Path(os.path.abspath(path)), _identity(st)) if checksum else ""

            def read_at(offset: int, n: int) -> bytes:
                fh.seek(offset)
                return fh.read(n)

            problems: list[str] = []
            base, header, kw = _dataset_base(read_at, size, dataset, path, problems)
            channels = _channels(kw, path)
            if with_events:
                lay = _layout(header, kw, channels, base, size, path, problems)
                events = _read_events(fh, lay, _scaling(lay, channels, kw, problems), path, empty)
                n_events = lay.n_events
            else:
                events = None
                tot = _kw_int(kw, "$TOT", path, required=False)
                if tot is None or data_check:   # the DATA segment's place (FCSReadError when it is not in the file)
                    n_events = _layout(header, kw, channels, base, size, path, problems).n_events
                else:
                    n_events = tot
            spill = _spillover(kw, path, problems)
        except OSError as exc:
            raise FCSReadError(path, f"cannot read: {exc.strerror or exc}") from None
    # the sha256 property's setter also takes a _LazySHA256 (computed on first access); see _set_sha256
    return FCSFile(path, digest, header.version, kw, channels, events, spill, n_events, tuple(problems))  # type: ignore[arg-type]


def read_fcs(path: str | os.PathLike, *, dataset: int = 0, empty: Empty = _new_array) -> FCSFile:
    """Read data set ``dataset`` (0-based; .lmd files often hold two) of an FCS file, events included.

    ``sha256`` is not computed here: it is computed from the file on first access (see FCSFile).
    ``empty(rows, columns)``: the float64 array the events are decoded into (default a new one;
    ``compensation.BlockPool.take`` writes them into a block of arrays released before).
    """
    return _read(path, dataset, with_events=True, empty=empty)


def read_fcs_metadata(path: str | os.PathLike, *, dataset: int = 0, checksum: bool = True,
                      data_check: bool = False) -> FCSFile:
    """Read HEADER and TEXT only (``events is None``): fast, for scanning folders.

    ``n_events`` is ``$TOT`` (or, without ``$TOT``, what the DATA length implies). The DATA
    segment is not checked, so header-only files read here, unless ``data_check``: then its
    offsets are resolved against the file's size as :func:`read_fcs` resolves them (a file cut
    short mid-DATA, or header-only, raises its ``FCSReadError``), still without reading DATA. The
    read touches only HEADER and TEXT; ``sha256`` is computed on first access (see FCSFile).
    ``checksum=False``: ``sha256`` is ``''``.
    """
    return _read(path, dataset, with_events=False, checksum=checksum, data_check=data_check)
