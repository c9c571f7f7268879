"""Atomic output: write to a temporary file in the same folder, then rename over the target.

A run killed part-way therefore never leaves a half-written file under the final name.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def default_mode(directory: bool = False) -> int:
    """The permission bits a plain ``open()`` would give a new file (0o666 less the umask), or
    ``mkdir()`` a new ``directory`` (0o777 less the umask): for files and folders made with
    ``tempfile`` (0o600, 0o700) that become outputs."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2   # Linux <fcntl.h>, <linux/fs.h>


@functools.lru_cache(maxsize=1)
def _renameat2():
    """libc's ``renameat2`` (Linux, glibc 2.28 or later), or None."""
    if not sys.platform.startswith("linux"):
        return None
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap the two existing paths ``a`` and ``b`` (folders or files of one file system) in one
    step: a reader of either path sees the one or the other, never neither (Linux ``renameat2``
    with ``RENAME_EXCHANGE``). False, nothing done, where the system or the file system does not
    offer it (the caller then moves in two renames); OSError naming ``b`` on another failure."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def make_folder(path: str | os.PathLike) -> None:
    """Create the folder ``path`` and its parents (nothing done when it is there); a file in its
    place is a NotADirectoryError naming ``path`` (the system's FileExistsError reads 'File
    exists', as though the folder were there)."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fspath(path)) from None


def temporary_sibling(path: Path) -> str:
    """A new, empty hidden file ``.<name>.<8 characters>.part`` beside ``path`` (its folder there),
    for ``path``'s content until it is renamed to ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    return tmp


@contextlib.contextmanager
def staged(path: str | os.PathLike) -> Iterator[str]:
    """Stage ``path``'s content: the name of a new, empty temporary sibling of ``path`` (its folder
    made) to write in the block. When the block ends the temporary has the mode of an ordinary new
    file (mkstemp's is 0600) and waits for :func:`publish`; on any error in the block it is removed.
    A ``kill -9`` leaves it, hidden (:func:`temporary_sibling`'s name)."""
    path = Path(path)
    make_folder(path.parent)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.chmod(tmp, default_mode())
    except BaseException:
        discard(tmp)
        raise


@contextlib.contextmanager
def _written(tmp: str, mode: str, encoding: str | None, errors: str) -> Iterator[IO]:
    """``tmp`` opened for writing; when the block ends, written through to the disk (flush, fsync), so
    that a full disk fails there, before the rename, not when a buffer is flushed later. Text is
    UTF-8; a character that UTF-8 cannot hold (the surrogate escape of an undecodable byte in a file
    name) is written as a backslash escape (``errors``), never a crash."""
    binary = "b" in mode
    with open(tmp, mode, encoding=None if binary else encoding, errors=None if binary else errors) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def staged_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8",
                errors: str = "backslashreplace") -> Iterator[IO]:
    """:func:`staged`, opened for writing (the file's ``name`` is the temporary) and on the disk
    when the block ends (fsync), ready for :func:`publish`."""
    with staged(path) as tmp, _written(tmp, mode, encoding, errors) as fh:
        yield fh


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename the staged temporary ``tmp`` over ``path`` (``os.replace``); its error names ``path``,
    the file asked for (a folder of that name, no permission), not the hidden temporary sibling the
    user never named. On an error ``tmp`` stays, for the caller to remove or name."""
    try:
        os.replace(tmp, path)
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, os.fspath(path)) from None


def discard(*temporaries: str | os.PathLike) -> None:
    """Remove staged temporaries that will not be published (one already gone is no error)."""
    for tmp in temporaries:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """The name of a new, empty temporary sibling of ``path`` to write (for a writer that takes a
    file name, as AnnData's ``write_h5ad``); on success it gets the mode of an ordinary new file
    and is renamed to ``path`` (:func:`staged`, :func:`publish`); on any error, the rename's too, it
    is removed."""
    tmp = ""
    try:
        with staged(path) as tmp:
            yield tmp
        publish(tmp, path)
    except BaseException:
        if tmp:   # staged: made (a failure before is mkstemp's or the folder's, nothing to remove)
            discard(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8",
                errors: str = "backslashreplace") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success fsync and rename it to ``path``
    (:func:`atomic_path`).

    Text is UTF-8; a character that UTF-8 cannot hold (the surrogate escape of an undecodable
    byte in a file name) is written as a backslash escape (``errors``), never a crash.
    """
    with atomic_path(path) as tmp, _written(tmp, mode, encoding, errors) as fh:
        yield fh


@contextlib.contextmanager
def held_lock(lock: str | os.PathLike) -> Iterator[None]:
    """Hold the lock file ``lock`` (``flock``, waiting while another process or call holds it) for
    the block, then remove it: for writers of one file or folder that must not meet (two commands
    making one database, two drafts into one folder). The lock is the file still at that name (one a
    finishing holder unlinked meanwhile is let go and the new one taken); the system releases it
    when its holder dies (``kill -9``), so no stale lock is ever waited on: the next writer takes the
    empty file left and removes it."""
    import fcntl

    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            same = os.path.samestat(os.stat(lock, follow_symlinks=False), os.fstat(fd))
        except FileNotFoundError:
            same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)   # closing releases the flock, after the unlink: a waiter then finds the name free or new


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM received within the block are held until it ends, then acted on
    as they would have been (KeyboardInterrupt, the command's own SIGTERM handler): for a group of
    files renamed into place one after another that must all be renamed or none. Outside the main
    thread (no signal handler can be set there) the block runs as it is."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[tuple[int, Any]] = []   # (signal number, frame) as a handler receives them
    previous: dict[int, Any] = {s: signal.signal(s, lambda signum, frame: held.append((signum, frame)))
                                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        if held:
            signum, frame = held[0]
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler != signal.SIG_IGN:   # the default action (or a handler not set from Python)
                signal.raise_signal(signum)


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
    from tilpheno.io.csvcells import csv_text

    with atomic_open(path, "w", errors=errors) as fh:
        fh.write(csv_text(frame))


def write_parquet(path: str | os.PathLike, frame) -> None:
    """Atomically write a pandas DataFrame as Parquet (pyarrow, no index)."""
    with atomic_open(path, "wb", encoding=None) as fh:
        frame.to_parquet(fh, index=False)
