"""Safe opening of input files: regular files only, opened without blocking, reads bounded in time."""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

READ_SECONDS_LIMIT = 600.0
"""Wall-clock limit (seconds) of reading or hashing one file: a read that still makes progress but
would take longer (a stalled network share) is abandoned with an error naming the file. A single
system call that never returns (a hung NFS server) cannot be interrupted from Python."""


def path_problem(path: str | Path, *, folder: bool = False) -> str:
    """Why ``path`` is not the input file (``folder``: the input folder) a library caller named, on
    one line naming it, as the command line says it after the option: ``<path>: no such file``
    (``no such folder``) when nothing is there, else ``<path>: not a file`` (``a file, not a
    folder``)."""
    if not os.path.lexists(path):
        return f"{path}: no such {'folder' if folder else 'file'}"
    return f"{path}: {'a file, not a folder' if folder else 'not a file'}"


def open_regular(path: str | Path, buffering: int = -1):
    """Open ``path`` read-only (binary), refusing anything but a regular file.

    The open itself cannot block (``O_NONBLOCK``: a FIFO put in a file's place opens at once) and
    the type is checked on the opened handle (``fstat``), so a FIFO, device, socket or a link to
    one (``/dev/zero``) raises ``OSError`` instead of hanging or never ending.
    """
    def opener(name, flags):
        return os.open(name, flags | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))

    fh = open(path, "rb", buffering=buffering, opener=opener)
    mode = os.fstat(fh.fileno()).st_mode
    if not stat.S_ISREG(mode):
        fh.close()
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
            "a device" if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else "a socket" if stat.S_ISSOCK(mode) else \
            "not a regular file"
        raise OSError(f"not a regular file ({kind})")
    return fh


def file_labels(files) -> dict[str, str]:
    """How one product's files are named in its QC flags: each file's name, or, where two of
    ``files`` share a name (the same file name in two folders), its path relative to the folder
    holding them all (``sub/X.fcs``, as ``scan``'s manifest writes it), so that they are told apart."""
    files = [str(f) for f in files]
    names = [os.path.basename(f) for f in files]
    shared = {n for n in names if names.count(n) > 1}
    if not shared:
        return dict(zip(files, names))
    base = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    return {f: os.path.relpath(os.path.abspath(f), base) if n in shared else n for f, n in zip(files, names)}


def display_name(text: str) -> str:
    """``text`` with undecodable bytes of a file name (surrogate escapes) shown as ``\\xNN``:
    safe to print, to write as UTF-8 and to use as a product id."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


DECIMAL_COMMA_RE = re.compile(r"^\s*[+-]?(\d+,\d*|,\d+)([eE][+-]?\d+)?\s*$")
"""A number written with a decimal comma (``11,8``, ``,5``, ``1,5E+10``), blanks around allowed."""


def decimal_comma(value):
    """``11,8`` -> ``11.8`` (text matching :data:`DECIMAL_COMMA_RE`); other values as they are."""
    return value.replace(",", ".") if isinstance(value, str) and DECIMAL_COMMA_RE.match(value) else value


def column_separator(first_line: str) -> str:
    """The separator of a text table from its header line: tab or semicolon when the line has it
    and no comma (a spreadsheet's tab-separated copy; European Excel's semicolons, whose numbers
    have a decimal comma), else comma."""
    if "," not in first_line:
        for sep in ("\t", ";"):
            if sep in first_line:
                return sep
    return ","
