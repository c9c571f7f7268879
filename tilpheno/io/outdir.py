"""Output-folder ownership: one run at a time writes OUT, through a staging folder published at the end.

A run of ``process`` *claims* its output folder (:meth:`OutputFolder.claim`):

* **Lock**: ``OUT/.tilpheno.lock`` is created and locked with ``flock`` (exclusive, non-blocking)
  for the whole run. A second run into the same OUT refuses with a one-line message naming the
  holder (pid, host, start time). The lock dies with its process, so a run killed with ``kill -9``
  leaves no stale lock: the file may remain, but the next run locks it again.
* **Reuse**: an OUT that holds anything (other than the lock, stale temporary files and the run's
  own log file, :func:`own_log_files`) is refused
  unless ``overwrite`` is given. With ``overwrite``, what the previous run wrote (the ``outputs``
  list of its ``run.json``; for a ``run.json`` without that list, the standard output names) is
  removed when the new run publishes; other files are left alone and listed. A file the run
  would publish that no previous run wrote is never replaced: the claim (for the names given as
  ``writes``) or :meth:`OutputFolder.publish` (any output, before anything moves) refuses. Both lists are
  recorded in the new ``run.json`` (``output_folder``).
* **Staging**: every output is written into ``OUT/.tilpheno-staging-XXXX/`` while the run goes
  on. :meth:`OutputFolder.publish` then marks OUT incomplete (``OUT/.tilpheno-incomplete``, which
  lists what is being removed and published), removes the previous run's outputs, moves the staged
  files into place (``run.json`` last) and removes the marker. A run that fails or is interrupted
  before publishing leaves OUT as it was (its staging folder is removed, or, after ``kill -9``,
  removed by the next run); an OUT the claim created is removed again when it is left empty. A
  run killed while publishing leaves the marker: the next run refuses the folder without
  ``overwrite`` and, with it, removes both lists.
* **Stale temporary files** (staging folders and ``*.part`` files of :mod:`tilpheno.io.atomic`
  left by a killed run) are removed when the folder is claimed, and listed.

File-system failures (OUT is a file, read-only, no permission, disk full) raise
:class:`OutputFolderError` with a one-line message naming the path.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tilpheno.errors import TilphenoError

log = logging.getLogger(__name__)

LOCK_NAME = ".tilpheno.lock"
STAGING_PREFIX = ".tilpheno-staging-"
INCOMPLETE_NAME = ".tilpheno-incomplete"
CACHE_NAME = ".cache"
"""The incremental-run store (``tilpheno.cache``): not an output of a run; kept across runs."""
RECORD_NAME = "run.json"
STANDARD_OUTPUTS = ("phenotypes.csv", "phenotypes.parquet", "populations.csv", "qc.csv", "index.html",
                    "codebook.csv", "products", RECORD_NAME)
"""Outputs of a run whose ``run.json`` has no ``outputs`` list (tilpheno before 0.2)."""


class OutputFolderError(TilphenoError):
    """The output folder cannot be claimed or written; the message names the path and the cause."""


def describe_os_error(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """One line for a file-system error: ``<path>: <what happened>`` (disk full, read-only, ...).
    A plain-words hint follows the system's text only when that text does not already say it
    ("Read-only file system", not "Read-only file system (read-only file system)")."""
    where = exc.filename if exc.filename is not None else path
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = {
        errno.ENOSPC: " (disk full)",
        errno.EDQUOT: " (disk quota exceeded)",
        errno.EROFS: " (read-only file system)",
        errno.EACCES: " (permission denied)",
        errno.EPERM: " (not permitted)",
        errno.ENOTDIR: " (a path component is a file, not a folder)",
    }.get(exc.errno or 0, "")   # errno None (or 0): no hint
    if hint and hint.strip(" ()").lower() in reason.lower():
        hint = ""
    return f"{where}: {reason}{hint}" if where is not None else f"{reason}{hint}"


def unwritable(exc: OSError, folder: str | os.PathLike, what: str = "the outputs", *,
               created: bool = False) -> OutputFolderError:
    """The one-line error of writing ``what`` into ``folder`` that failed and was undone (disk full,
    read-only): the path the system named, else ``folder`` (a full disk names no file), and what
    became of ``folder`` (:func:`left_behind`; call once the claim is released)."""
    return OutputFolderError(f"cannot write {what}: {describe_os_error(exc, folder)}; {left_behind(Path(folder), created)}")


def left_behind(folder: Path, created: bool) -> str:
    """What a failed run left of ``folder``, as found now: as it was (it existed before the run),
    not created (the run created it and removed it again, empty), or, for a folder the run
    created, what it still holds (``process`` keeps the cache it filled, re-used by the next run);
    marked incomplete when it was stopped while publishing."""
    if (folder / INCOMPLETE_NAME).exists():
        return (f"{folder} is marked incomplete ({INCOMPLETE_NAME}): `tilpheno report {folder}` or `process "
                "--overwrite` publishes it again")
    if not created:
        return f"{folder} was left as it was"
    if not folder.exists():
        return f"{folder} was not created"
    left = sorted(os.listdir(folder))
    cache = f"; its cache ({CACHE_NAME}) keeps the finished products for the next run" if CACHE_NAME in left else ""
    return f"no output was written to {folder} (created by this run; it holds only {', '.join(left)}){cache}"


def own_log_files(folder: Path) -> set[str]:
    """Names of the files at ``folder``'s top that the ``tilpheno`` logger writes to (``tilpheno
    --log OUT/run.log``): the run's own log, which neither makes OUT a foreign folder nor is an
    output of the run (it is kept, and appended to by the next run)."""
    where = os.path.realpath(folder)
    paths = [getattr(h, "baseFilename", None) for h in logging.getLogger("tilpheno").handlers]
    return {os.path.basename(p) for p in paths if p and os.path.dirname(os.path.realpath(p)) == where}


def _is_stale_temp(name: str) -> bool:
    return name.startswith(STAGING_PREFIX) or (name.startswith(".") and name.endswith(".part"))


def _not_ours(path: Path) -> str:
    """Why a file this run would publish may not be replaced: no previous run's ``run.json`` lists it."""
    return (f"{path}: this run writes a file of that name, and it is not the output of a previous run (no "
            "run.json lists it); move it away or choose another output folder")


def _safe_relative(text: str) -> str | None:
    """A recorded output path if it stays inside OUT (relative, no ``..``), else None."""
    if not isinstance(text, str) or not text or os.path.isabs(text):
        return None
    norm = os.path.normpath(text)
    if norm.startswith("..") or norm == "." or norm.startswith(os.sep):
        return None
    return norm


@dataclass
class OutputFolder:
    """A claimed output folder (see the module docstring). Use as a context manager, or call
    :meth:`publish` then :meth:`release`; :meth:`abandon` drops the staged outputs."""

    path: Path
    staging: Path
    overwrite: bool
    previous: list[str] = field(default_factory=list)      # outputs of the previous run, removed at publish
    kept: list[str] = field(default_factory=list)          # other entries of OUT, left alone
    stale_removed: list[str] = field(default_factory=list)  # temporary files of killed runs, removed
    created: bool = False                                   # OUT did not exist before this claim
    _lock_fd: int | None = None

    # -- claiming -----------------------------------------------------------------------------
    @classmethod
    def claim(cls, out: str | os.PathLike, *, overwrite: bool = False, run_id: str = "",
              writes: tuple[str, ...] = ()) -> "OutputFolder":
        """Lock, inspect and stage ``out`` (module docstring). ``writes``: names of files the run
        will publish at OUT's top; one of them there that no previous run wrote is refused now,
        before the run's work, rather than at :meth:`publish`."""
        out = Path(out)
        try:
            if out.exists() and not out.is_dir():
                raise OutputFolderError(f"{out}: exists and is not a folder; choose another output folder")
            created = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
            fd = _lock(out, run_id)
        except OSError as exc:
            raise OutputFolderError(f"cannot use the output folder: {describe_os_error(exc, out)}") from None
        folder = cls(out, Path(), overwrite, created=created, _lock_fd=fd)
        try:
            folder._inspect()
            clash = [name for name in folder.kept if name in writes]
            if clash:
                raise OutputFolderError(_not_ours(out / clash[0]))
            folder.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
        except BaseException as exc:
            folder.release()
            if isinstance(exc, OSError):
                raise OutputFolderError(f"cannot use the output folder: {describe_os_error(exc, out)}") from None
            raise
        return folder

    def _inspect(self) -> None:
        """Remove stale temporaries; find the previous run's outputs; refuse reuse without overwrite."""
        out = self.path
        for current, dirs, files in os.walk(out):
            for name in [*dirs, *files]:
                if _is_stale_temp(name):
                    target = Path(current) / name
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    else:
                        target.unlink()
                    self.stale_removed.append(os.path.relpath(target, out))
            dirs[:] = [d for d in dirs if not _is_stale_temp(d)]
        if self.stale_removed:
            log.warning("%s: removed %d temporary file(s) of an earlier run that was killed: %s", out,
                        len(self.stale_removed), ", ".join(sorted(self.stale_removed)))
        entries = sorted(e.name for e in os.scandir(out) if e.name not in (LOCK_NAME, CACHE_NAME))
        logs = own_log_files(out)
        foreign = [e for e in entries if e not in logs]
        if not foreign:   # empty, or holding only the run's own log file
            self.kept = entries
            return
        previous, how = self._previous_outputs(foreign)
        if not self.overwrite:
            advice = ("pass overwrite=True to replace what the previous run wrote" if previous else
                      "pass overwrite=True to write this run's outputs beside those files (none of them is removed; "
                      "a log file an earlier run left there is kept, and appended to when this run logs to it)")
            raise OutputFolderError(f"{out}: {how}; {advice}, or choose another output folder")
        self.previous = previous
        top = {p.split(os.sep, 1)[0] for p in previous}
        self.kept = [e for e in entries if e not in top]

    def _previous_outputs(self, entries: list[str]) -> tuple[list[str], str]:
        out = self.path
        marker = out / INCOMPLETE_NAME
        if marker.exists():
            data = _read_json(marker)
            listed = [*data.get("removing", []), *data.get("publishing", [])]
            outputs = sorted({p for p in map(_safe_relative, listed) if p} | {INCOMPLETE_NAME})
            return outputs, "a previous run was killed while publishing its outputs (the folder is incomplete)"
        record = out / RECORD_NAME
        if record.exists():
            data = _read_json(record)
            recorded = data.get("outputs")
            if not isinstance(recorded, list):
                outputs = [name for name in STANDARD_OUTPUTS if (out / name).exists()]
            else:
                outputs = sorted({p for p in map(_safe_relative, recorded) if p} | {RECORD_NAME})
            started = data.get("started_at", "unknown time")
            return outputs, f"already holds the outputs of a previous run (run.json, started {started})"
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        return [], f"is not empty ({shown}) and holds no tilpheno run"

    # -- publishing ---------------------------------------------------------------------------
    def staged_outputs(self) -> list[str]:
        """Relative paths of every staged file, sorted (``run.json`` included once it is staged)."""
        found = []
        for current, _dirs, files in os.walk(self.staging):
            for name in files:
                found.append(os.path.relpath(Path(current) / name, self.staging))
        return sorted(found)

    def record(self) -> dict:
        """What ``run.json`` records about the folder (call once the outputs are staged)."""
        outputs = sorted(set(self.staged_outputs()) | {RECORD_NAME})
        return {
            "outputs": outputs,
            "output_folder": {
                "overwrite": self.overwrite,
                "removed_previous_outputs": list(self.previous),
                "kept_other_entries": list(self.kept),
                "removed_stale_temporary_files": list(self.stale_removed),
            },
        }

    def publish(self) -> list[str]:
        """Replace the previous run's outputs by the staged ones (``run.json`` moved last)."""
        from tilpheno.io import atomic

        out = self.path
        publishing = self.staged_outputs()
        removed = set(self.previous)
        clash = [rel for rel in publishing if rel not in removed and os.path.lexists(out / rel)]
        if clash:   # checked before anything is removed or moved: OUT stays as it was
            raise OutputFolderError(_not_ours(out / clash[0]) + "; nothing was published")
        try:
            atomic.write_text(out / INCOMPLETE_NAME, json.dumps(
                {"removing": self.previous, "publishing": publishing}, indent=1) + "\n")
            for rel in self.previous:
                if rel == INCOMPLETE_NAME:
                    continue
                _remove(out / rel)
            _prune_empty_dirs(out, self.previous)
            for rel in sorted(publishing, key=lambda p: (p == RECORD_NAME, p)):
                target = out / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.staging / rel, target)
            shutil.rmtree(self.staging, ignore_errors=True)
            (out / INCOMPLETE_NAME).unlink()
        except OSError as exc:
            raise OutputFolderError(f"cannot publish the outputs: {describe_os_error(exc, out)}; "
                                    f"{out} is marked incomplete ({INCOMPLETE_NAME})") from None
        return publishing

    def abandon(self) -> None:
        """Drop the staged outputs (a failed or interrupted run): OUT keeps what it held."""
        if self.staging and self.staging != Path() and self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)
            if self.staging.exists():
                log.warning("%s: could not remove the staging folder; the next run removes it", self.staging)

    def release(self) -> None:
        """Remove and unlock the lock file; remove OUT too when this claim created it and the run
        left it empty (a run that stopped before publishing: no scheduler, an error in the inputs)."""
        if self._lock_fd is None:
            return
        try:
            (self.path / LOCK_NAME).unlink()
        except OSError as exc:
            log.warning("%s: lock file not removed (%s); the next run re-locks it", self.path, describe_os_error(exc))
        os.close(self._lock_fd)   # closing releases the flock
        self._lock_fd = None
        if self.created:
            try:
                self.path.rmdir()   # only if empty: another run's lock file, or any output, keeps it
            except OSError:
                pass

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abandon()   # nothing left to drop after publish(); after a failure, the staged outputs
        self.release()


def _lock(out: Path, run_id: str) -> int:
    """Open and ``flock`` OUT's lock file; refuse when another live run holds it."""
    import fcntl

    path = out / LOCK_NAME
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown run"
            os.close(fd)
            raise OutputFolderError(
                f"{out}: another tilpheno run is writing to this folder ({holder}); wait for it to finish "
                "or choose another output folder") from None
        try:  # the file we locked must still be the one at the path (a finishing run unlinks it)
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, run {run_id}".encode(), 0)
            return fd
        os.close(fd)
    raise OutputFolderError(f"{out}: could not lock {LOCK_NAME} (it keeps being replaced)")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace")[:10_000_000])
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); treated as empty", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _remove(target: Path) -> None:
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)


def _prune_empty_dirs(out: Path, removed: list[str]) -> None:
    """Remove folders left empty by the removal (deepest first), never OUT itself."""
    parents = {Path(rel).parent for rel in removed}
    candidates = sorted({p for rel in parents for p in [rel, *rel.parents] if str(p) != "."},
                        key=lambda p: len(p.parts), reverse=True)
    for rel in candidates:
        folder = out / rel
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()
