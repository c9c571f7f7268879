"""Atomic output: write to a temporary file in the same folder, then rename over the target.

A run killed part-way therefore never leaves a half-written file under the final name.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def default_mode(directory: bool = False) -> int:
    """The permission bits a plain ``open()`` would give a new file (0o666 less the umask), or
    ``mkdir()`` a new ``directory`` (0o777 less the umask): for files and folders made with
    ``tempfile`` (0o600, 0o700) that become outputs."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8",
                errors: str = "backslashreplace") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success fsync and rename it to ``path``.

    Text is UTF-8; a character that UTF-8 cannot hold (the surrogate escape of an undecodable
    byte in a file name) is written as a backslash escape (``errors``), never a crash.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    binary = "b" in mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding, errors=None if binary else errors) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, default_mode())  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_open(path, "wb", encoding=None) as fh:
        fh.write(data)


def write_csv(path: str | os.PathLike, frame, *, errors: str = "backslashreplace") -> None:
    """Atomically write a pandas DataFrame as CSV (no index), every text cell and column name
    neutralised against spreadsheet formulas (``tilpheno.io.csvcells``). ``errors``: how characters
    UTF-8 cannot hold are written (``surrogateescape`` keeps undecodable file-name bytes as bytes)."""
    from tilpheno.io.csvcells import neutralise_frame

    with atomic_open(path, "w", errors=errors) as fh:
        neutralise_frame(frame).to_csv(fh, index=False, lineterminator="\n")


def write_parquet(path: str | os.PathLike, frame) -> None:
    """Atomically write a pandas DataFrame as Parquet (pyarrow, no index)."""
    with atomic_open(path, "wb", encoding=None) as fh:
        frame.to_parquet(fh, index=False)
