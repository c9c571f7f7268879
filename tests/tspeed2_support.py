"""Test support: a pipeline re-run, and a review source's re-gate of a product, made once and shared by the
tests that make the same one.

Several review tests process a folder (:func:`review_support.processed_once`), change the same input
the same way (TIL001's unstained control replaced by TIL002's, say), and process it again with
``--overwrite`` before they look at what the review app makes of the new run: on SQLite and on
PostgreSQL, and in several tests. That second run is the same run each time (the same files at the
same paths, the same settings), so :class:`Reruns` makes it once per module and puts its result back
for the others, as ``processed_once`` does for the first run. Each service those tests build over such a
folder then re-gates the product (:class:`Regates`): the same re-gate each time, made once the same way.
"""
from __future__ import annotations

import copy
import hashlib
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def recorded_files_sha256(run_json: Path) -> str:
    """SHA-256 over each file a run record names (every string value of ``run.json`` that is the path of
    an existing file: inputs, strategies, study, panel, compensation matrices, manifest, outcomes), its
    path and bytes, in the record's order: what a review source re-gates with, wherever it lies."""
    import json

    digest = hashlib.sha256()

    def walk(value) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value.startswith("/") and len(value) < 4096 and Path(value).is_file():
            digest.update(value.encode() + b"\0")
            digest.update(hashlib.sha256(Path(value).read_bytes()).digest())
    walk(json.loads(run_json.read_bytes()))
    return digest.hexdigest()


@dataclass
class Regates:
    """Re-gates of a review source made once: a :class:`tilpheno.review.regate.ReviewSource` re-gates a
    product when it is first asked for its automatic gates (``_rerun``: ``analyze_product`` on the run's
    files, checked against ``phenotypes.csv``), and every test (and both backends of a test) that builds a
    service over a folder does so again. Installed (:meth:`installed`), a re-gate of the same product by a
    source over the same output folder path holding the same bytes, with the same bytes in every file
    under the folder's parent (the work folder: inputs, manifest, study files), under ``inputs_outside``
    and at every file path its ``run.json`` records, is put back from the first (its automatic gates,
    candidate cuts, negative calls and controls left out, copied), not made again. A re-gate that raises
    is not kept (the next one runs). The same inputs, the same code: the same result (the analysis is
    deterministic), as :class:`Reruns` puts back a pipeline run."""

    inputs_outside: tuple[Path, ...] = ()
    made: dict[tuple[str, ...], tuple] = field(default_factory=dict)

    def key(self, source, product_id: str) -> tuple[str, ...]:
        folders = [source.out_dir.parent, *self.inputs_outside, *([source.inputs_dir] if source.inputs_dir else [])]
        return (str(source.out_dir), str(source.inputs_dir), product_id, tree_sha256(*folders),
                recorded_files_sha256(source.out_dir / "run.json"))

    @contextmanager
    def installed(self) -> Iterator[None]:
        """``ReviewSource._rerun`` shares its re-gates (as above) until the block ends."""
        from tilpheno.review.regate import ReviewSource

        real = ReviewSource._rerun

        def rerun(source, product_id: str) -> None:
            key = self.key(source, product_id)
            if key in self.made:
                automatic, candidates, negative, left_out = copy.deepcopy(self.made[key])
                source._automatic[product_id], source._candidates[product_id] = automatic, candidates
                source._negative_calls[product_id] = negative
                if left_out is not None:
                    source._left_out[product_id] = left_out
                return
            real(source, product_id)
            self.made[key] = copy.deepcopy((source._automatic[product_id], source._candidates[product_id],
                                            source._negative_calls[product_id], source._left_out.get(product_id)))

        ReviewSource._rerun = rerun
        try:
            yield
        finally:
            ReviewSource._rerun = real
