"""Test support: a pipeline re-run made once and shared by the tests that make the same one.

Several review tests process a folder (:func:`review_support.processed_once`), change the same input
the same way (TIL001's unstained control replaced by TIL002's, say), and process it again with
``--overwrite`` before they look at what the review app makes of the new run: on SQLite and on
PostgreSQL, and in several tests. That second run is the same run each time (the same files at the
same paths, the same settings), so :class:`Reruns` makes it once per module and puts its result back
for the others, as ``processed_once`` does for the first run.
"""
from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def tree_sha256(*folders: Path) -> str:
    """SHA-256 over each file's path (relative to its folder, with the folder's own path) and bytes,
    for every file under ``folders``, in sorted order: equal exactly when the folders hold the same
    files with the same bytes."""
    digest = hashlib.sha256()
    for folder in folders:
        digest.update(str(folder).encode() + b"\0")
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(folder)).encode() + b"\0")
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass
class Reruns:
    """Re-runs of a work folder made once: ``run(work, process, settings)`` calls ``process()`` (which
    reads and writes only under ``work`` and the read-only ``inputs_outside``) unless a run of the same
    ``settings`` was made from a ``work`` holding the same bytes at the same path; then it puts back
    the folder as that run left it (every file, the inputs under ``work`` with their times, so that the
    run's records match them), at the same path, as if ``process()`` had run. ``keep(name)`` makes the
    folder the copies are kept in."""

    keep: Callable[[str], Path]
    inputs_outside: tuple[Path, ...] = ()
    made: dict[tuple[str, str, str], Path] = field(default_factory=dict)

    def run(self, work: Path, process: Callable[[], None], settings: str = "") -> None:
        key = (str(work), tree_sha256(work, *self.inputs_outside), settings)
        kept = self.made.get(key)
        if kept is not None:
            shutil.rmtree(work)
            shutil.copytree(kept, work, symlinks=True)
            return
        process()
        kept = self.keep(f"rerun_{len(self.made)}")
        shutil.copytree(work, kept, symlinks=True, dirs_exist_ok=True)
        self.made[key] = kept
