"""Incremental runs: a content-addressed store of product outcomes in the output folder.

A product's gating outcome (phenotype row, population table, QC flags, input digests) is a pure
function of

* the SHA-256 of each of its input files (and of the single-stain controls of its matrix), their
  paths and every manifest value of its rows,
* the strategies' contents, the compensation matrix chosen for the product (from single-stain
  controls or a CSV: its values, source and control files), the options (FMO percentile,
  identifiers, the provenance short form the report prints but the release spec's name),
* the code: tilpheno's version and a digest of the installed package's own source files, the
  Python version and the versions of the libraries that compute or draw (``provenance.DEPENDENCIES``).

:func:`product_key` is the SHA-256 of all of that (canonical JSON). The release spec is not in it:
the release verdict is a pure function of the stored phenotype row and QC flags
(``pipeline.release.release_decision``), so an entry's ``outcome.json`` records the spec it was
decided under (``release_spec``: :func:`release_identity`) and a run under another spec decides
the release again from the stored outcome. Its HTML report shows the verdict, so a stored report
is used only under the spec it records (else the product is gated again to draw it). :class:`ProductStore` keeps one
*entry* per key under ``OUT/.cache/entries/<key[:2]>/<key>/``: ``outcome.json`` (everything but the
tables), ``populations.parquet`` (the long population table, dtypes kept), optionally
``report.html``, and ``entry.json`` listing the SHA-256 of each of those files. An entry is
written into a temporary folder and renamed into place (atomic), and verified on load: an entry
whose files are missing or whose digests do not match is ignored (and removed) with a log line,
never trusted. The pipeline builds its tables from the stored entries in both a fresh and a
re-used run, so a re-run's outputs are byte-identical to a clean run's.

Input digests (:class:`InputDigests`): looking an entry up needs every input's SHA-256 before the
product runs (a first run into OUT, or ``--no-cache``, looks nothing up and hashes nothing before:
each product is stored under the key of the digests its job took of the bytes it read). Hashing
costs about 2 ms per 5 MB file (SHA-NI); the store keeps ``OUT/.cache/inputs.json`` with each file's
stat identity (device, inode, size, mtime and ctime in ns) and its digest. A file whose identity
is unchanged reuses the recorded digest, but only when its mtime and ctime lie at least
``RACY_SECONDS`` before the moment the digest was recorded (a file rewritten within one
timestamp tick of being hashed cannot be told apart by stat, so it is hashed again: git's
"racily clean" rule). A digest a product's job took is recorded as of that job's start on this
machine (``ProductOutcome.started_ns``; Dask: the dispatch; a compensation control's, which the
run's estimate read before any job, as of before that estimate), so files copied just before a run
count as settled for every product that started ``RACY_SECONDS`` after them. The ctime cannot be set by user programs, so a rewrite that restores size
and mtime is still seen. ``verify=True`` hashes every file regardless.

Manifest rows (:class:`ScanIndex`): a run without a manifest scans its folder, reading every file's
HEADER and TEXT (about 1 ms a file). ``OUT/.cache/scan.json`` keeps the row ``scan_folder`` inferred
for each file, with the file's stat identity and the scan's context (the folder, the study and panel
the names were read with; the whole index is dropped when tilpheno's source changed). A row is
re-used only for a file whose identity is unchanged and settled (the rule above: a file changed
in place, touched, or replaced by another file, even of the same size and mtime, is read again)
and that scan's context is the same; a file that could not be read is always read again.

Not cached: a product whose worker died or hit an internal error (the cause may be the machine,
not the data), and a product any of whose files could not be hashed or changed while it was
processed (its digests then differ from the key's).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import stat
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

from tilpheno.io.outdir import CACHE_NAME as CACHE_DIR  # noqa: E402  the store's folder inside OUT
FORMAT = 1
RACY_SECONDS = 2.0
_ENTRY_FILES = ("outcome.json", "populations.parquet", "report.html")


# --- the key ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 over the installed tilpheno package's source and data files (paths and bytes).

    Part of every key: a changed line of code (without a version bump) never re-uses results.
    """
    import tilpheno

    root = Path(tilpheno.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".j2", ".yaml", ".yml", ".css", ".csv", ".json")):
        if "__pycache__" in path.parts:
            continue
        h.update(str(path.relative_to(root)).encode("utf-8", "surrogateescape") + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


@lru_cache(maxsize=1)
def environment() -> dict:
    """The code and library versions every key includes."""
    from tilpheno import __version__
    from tilpheno.provenance import dependency_versions

    return {"format": FORMAT, "tilpheno": __version__, "code": code_digest(),
            "python": platform.python_version(), "dependencies": dependency_versions()}


def environment_difference(here: Mapping, there: Mapping) -> str:
    """The first way :func:`environment` ``there`` (another machine's) differs from ``here``, in
    words (``tilpheno 0.1.0 there, 0.2.0 here``), or ``''`` when they are equal."""
    fields = [("cache format", "format"), ("tilpheno", "tilpheno"), ("tilpheno source files (SHA-256)", "code"),
              ("Python", "python")]
    for label, name in fields:
        if there.get(name) != here.get(name):
            return f"{label} {there.get(name)} there, {here.get(name)} here"
    theirs, ours = there.get("dependencies") or {}, here.get("dependencies") or {}
    for name in sorted(set(theirs) | set(ours)):
        if theirs.get(name) != ours.get(name):
            return f"{name} {theirs.get(name, 'not installed')} there, {ours.get(name, 'not installed')} here"
    return ""


def _plain(value):
    """A JSON-able, canonical form of a manifest or phenotype value (NaN -> None, numpy -> Python)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):
        value = value.item()  # numpy scalars
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (int, float, str, bool)):
        return value
    return str(value)


def product_key(job, digests: Mapping[str, str]) -> str:
    """SHA-256 (hex) of everything the product's gating outcome depends on (see the module
    docstring; not the release spec: :func:`release_identity`).

    ``job`` is a ``pipeline.ProductJob``; ``digests`` maps each of its files (:func:`job_files`: its
    manifest rows' and its single-stain controls') to its SHA-256. Whether a report is drawn is not
    part of the key: an entry may hold a report or not.
    """
    rows = [{str(k): _plain(v) for k, v in rec.items()} for rec in job.rows.to_dict("records")]
    controls = [str(f) for f in getattr(getattr(job, "compensation", None), "files", ())]
    from tilpheno.provenance import SHORT_RELEASE_SPEC

    opts = job.options
    payload = {
        "environment": environment(),
        "product_id": str(job.product_id),
        "rows": rows,
        "inputs": {str(f): digests[str(f)] for f in job.rows["file"].tolist()},
        "controls": {f: digests[f] for f in controls},
        "strategies": [[s.path, hashlib.sha256(s.text.encode("utf-8")).hexdigest()] for s in job.strategies],
        "compensation": _compensation(getattr(job, "compensation", None)),
        "options": {
            "fmo_percentile": float(opts.fmo_percentile),
            "include_identifiers": bool(opts.include_identifiers),
            "provenance_short": [list(p) for p in opts.provenance_short if p[0] != SHORT_RELEASE_SPEC],
        },
    }
    return _sha256_json(payload)


def release_identity(spec) -> str:
    """SHA-256 (hex) of a ``tilpheno.release.ReleaseSpec``: its name, source, file digest and
    criteria; what a stored release verdict and report were decided under (module docstring)."""
    return _sha256_json({"name": spec.name, "source": spec.source, "sha256": getattr(spec, "sha256", ""),
                         "criteria": [c.describe() for c in spec.criteria]})


def _sha256_json(payload: Mapping) -> str:
    """SHA-256 (hex) of ``payload`` as canonical JSON (sorted keys, ASCII, no NaN)."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _compensation(choice) -> dict | None:
    """A product's compensation choice (``tilpheno.spillover.CompensationChoice``) in the key: the
    matrix itself (detectors, every value exactly, its source), the control files and any error."""
    if choice is None:
        return None
    sp = choice.spillover
    matrix = None if sp is None else {"detectors": list(sp.detectors), "source": str(sp.source),
                                      "values": [float(v).hex() for v in sp.matrix.ravel()]}
    return {"spillover": matrix, "files": [str(f) for f in choice.files], "error": str(choice.error)}


# --- input digests with a stat pre-check --------------------------------------------------------


@dataclass(frozen=True)
class FileIdentity:
    """What ``stat`` tells about a file: if any of it changed, so may have its bytes."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileIdentity":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def sha256_regular_file(path: str | os.PathLike, chunk: int = 1 << 20) -> tuple[str, FileIdentity] | None:
    """(SHA-256, identity) of a regular file, or None when it is not one or cannot be read.

    Opened without following a FIFO's blocking open (``O_NONBLOCK``) and checked to be a regular
    file on the open handle; the identity is the handle's before and after hashing (None if the
    file changed while it was hashed).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return None
        h = hashlib.sha256()
        with os.fdopen(fd, "rb", closefd=False) as fh:
            while block := fh.read(chunk):
                h.update(block)
        after = os.fstat(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    identity = FileIdentity.of(before)
    return (h.hexdigest(), identity) if FileIdentity.of(after) == identity else None


def _settled(rec: Mapping, identity: FileIdentity) -> bool:
    """Whether a record made when the file had the identity in ``rec`` (``recorded_ns``: a moment
    before its bytes were read) still holds: the same identity now, and its mtime and ctime at
    least ``RACY_SECONDS`` before that moment (the racily-clean rule, module docstring)."""
    try:
        same = all(rec[k] == v for k, v in asdict(identity).items())
        margin = int(RACY_SECONDS * 1e9)
        return same and max(identity.mtime_ns, identity.ctime_ns) + margin <= int(rec["recorded_ns"])
    except (KeyError, TypeError, ValueError):
        return False


class InputDigests:
    """SHA-256 of input files, re-using the digest recorded for a file whose stat identity is unchanged.

    ``hashed`` and ``reused`` count what :meth:`sha256` did (for ``run.json``).
    """

    def __init__(self, index_path: Path | None, *, verify: bool = False) -> None:
        self.index_path = index_path
        self.verify = verify
        self.records: dict[str, dict] = {}
        self.hashed = self.reused = 0
        if index_path is not None and not verify:
            self.records = _load_json(index_path, "input digest index") or {}
            if not isinstance(self.records, dict):
                self.records = {}
        self._seen: dict[str, dict] = {}

    def sha256(self, path: str) -> str | None:
        """The file's hex SHA-256, or None when it is not a readable regular file."""
        path = str(path)
        if path in self._seen:
            return self._seen[path]["sha256"]
        try:
            st = os.stat(path)
        except OSError:
            return None
        rec = self.records.get(path)
        if rec is not None and stat.S_ISREG(st.st_mode) and self._trusted(rec, FileIdentity.of(st)):
            self.reused += 1
            self._seen[path] = rec
            return rec["sha256"]
        now = time.time_ns()
        got = sha256_regular_file(path)
        if got is None:
            return None
        self.hashed += 1
        digest, identity = got
        self._seen[path] = {**asdict(identity), "sha256": digest, "recorded_ns": now}
        return digest

    @staticmethod
    def _trusted(rec: Mapping, identity: FileIdentity) -> bool:
        return _settled(rec, identity) and _is_digest(rec.get("sha256"))

    def record(self, path: str, digest: str, recorded_ns: int) -> None:
        """Record ``digest`` for ``path`` (taken by a job that read the file after ``recorded_ns``)
        with the file's identity now. A file changed after ``recorded_ns`` has a later mtime/ctime,
        so the next run does not trust the record (it hashes the file)."""
        path = str(path)
        if path in self._seen or not _is_digest(digest):
            return
        try:
            st = os.stat(path)
        except OSError:
            return
        if stat.S_ISREG(st.st_mode):
            self._seen[path] = {**asdict(FileIdentity.of(st)), "sha256": digest, "recorded_ns": int(recorded_ns)}

    def save(self) -> None:
        """Write the identities and digests of the files seen in this run (atomically)."""
        if self.index_path is None:
            return
        from tilpheno.io import atomic

        atomic.write_text(self.index_path, json.dumps(self._seen, sort_keys=True, indent=0) + "\n")


class ScanIndex:
    """The manifest rows a folder scan inferred, by file (``OUT/.cache/scan.json``; module docstring).

    ``tilpheno.io.manifest.scan_folder(rows=...)`` asks :meth:`lookup` before it reads a file and
    hands a new row to :meth:`remember`; :meth:`save` keeps the rows of this scan only. ``read=False``
    (``--no-cache``): every file is read, the index is still written. ``reused`` and ``read`` count.
    """

    def __init__(self, path: Path | None, *, read: bool = True) -> None:
        self.path = path
        index = _load_json(path, "scan index") if path is not None and read and path.is_file() else None
        valid = isinstance(index, dict) and index.get("format") == FORMAT and index.get("code") == code_digest()
        files = index.get("files") if valid and isinstance(index, dict) else None
        self.records: dict = files if isinstance(files, dict) else {}
        self._seen: dict[str, dict] = {}
        self.reused = self.read = 0

    def lookup(self, file: str, context: str) -> tuple[dict | None, dict | None]:
        """``(row, None)``: a copy of the row recorded for ``file`` in ``context`` (its identity
        unchanged and settled); else ``(None, identity)``: read the file, then :meth:`remember` its
        row with this identity (taken before the read; None when ``file`` is no regular file)."""
        recorded_ns = time.time_ns()
        try:
            st = os.stat(file)
        except OSError:
            return None, None
        if not stat.S_ISREG(st.st_mode):
            return None, None
        identity = FileIdentity.of(st)
        rec = self.records.get(file)
        if (isinstance(rec, dict) and rec.get("context") == context and isinstance(rec.get("row"), dict)
                and _settled(rec, identity)):
            self._seen[file] = rec
            self.reused += 1
            return json.loads(json.dumps(rec["row"])), None
        self.read += 1
        return None, {**asdict(identity), "recorded_ns": recorded_ns}

    def remember(self, file: str, context: str, identity: Mapping, row: Mapping) -> None:
        """Keep ``row`` (JSON-able) for ``file``, read in ``context`` after ``identity`` was taken."""
        self._seen[file] = {**identity, "context": context, "row": json.loads(json.dumps(dict(row)))}

    def save(self) -> None:
        """Write the rows of the files looked up in this run (atomically)."""
        if self.path is None:
            return
        from tilpheno.io import atomic

        index = {"format": FORMAT, "code": code_digest(), "files": self._seen}
        atomic.write_text(self.path, json.dumps(index, sort_keys=True, ensure_ascii=True) + "\n")


# --- the store ---------------------------------------------------------------------------------


@dataclass
class CachedEntry:
    """A verified entry: the outcome fields (``outcome.json``) and where its tables and report are."""

    key: str
    folder: Path
    outcome: dict
    has_report: bool

    @property
    def populations_path(self) -> Path:
        return self.folder / "populations.parquet"

    @property
    def report_path(self) -> Path:
        return self.folder / "report.html"


def _read_json(path: Path) -> tuple[Any, str]:
    """(the parsed file, ``''``), or (None, why not): ``''`` too for a missing file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")), ""
    except FileNotFoundError:
        return None, ""
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return None, f"{Path(path).name}: {exc}"


def _load_json(path: Path, what: str):
    """The parsed file, or None (missing, or unreadable: a log line naming it)."""
    value, problem = _read_json(path)
    if problem:
        log.warning("cache: ignoring %s %s (%s)", what, path, problem)
    return value


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ProductStore:
    """The entries under ``OUT/.cache``; see the module docstring.

    ``read=False`` (``--no-cache``): :meth:`load` finds nothing, but entries are still written, so
    the next run can re-use them.
    """

    def __init__(self, out_dir: str | os.PathLike, *, read: bool = True) -> None:
        self.root = Path(out_dir) / CACHE_DIR
        self.read = read
        self.entries = self.root / "entries"

    def check_folders(self) -> None:
        """``NotADirectoryError`` naming ``.cache`` or its ``entries`` when one exists as something
        other than a folder, so that a run fails before it gates, not at its first finished
        product. Creates nothing (a run refused later, e.g. by its Dask scheduler, leaves no OUT)."""
        for path in (self.root, self.entries):
            if os.path.lexists(path) and not path.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))

    def inputs(self) -> InputDigests:
        """The input digest index of this store (every file hashed again when reading is off)."""
        return InputDigests(self.root / "inputs.json", verify=not self.read)

    def has_entries(self) -> bool:
        """Whether :meth:`load` can find anything (reading on, and some entry stored)."""
        if not self.read or not self.entries.is_dir():
            return False
        return any(not shard.name.startswith(".") for shard in self.entries.iterdir())

    def folder(self, key: str) -> Path:
        return self.entries / key[:2] / key

    def load(self, key: str, *, need_report: bool = False) -> CachedEntry | None:
        """The verified entry for ``key`` (with a report when ``need_report``), else None."""
        if not self.read:
            return None
        folder = self.folder(key)
        if not folder.is_dir():
            return None
        manifest, problem = _read_json(folder / "entry.json")
        problem = problem or self._verify(folder, key, manifest)
        if problem:
            log.warning("cache: ignoring entry %s (%s)", folder, problem)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        has_report = "report.html" in manifest["files"]
        if need_report and not has_report:
            return None
        outcome = json.loads((folder / "outcome.json").read_text(encoding="utf-8"))
        return CachedEntry(key, folder, outcome, has_report)

    @staticmethod
    def _verify(folder: Path, key: str, manifest) -> str:
        if not isinstance(manifest, dict) or manifest.get("key") != key or manifest.get("format") != FORMAT:
            return "entry.json missing, unreadable or for another key"
        files = manifest.get("files")
        if not isinstance(files, dict) or "outcome.json" not in files or "populations.parquet" not in files:
            return "entry.json lists no outcome"
        for name, digest in files.items():
            if name not in _ENTRY_FILES:
                return f"unexpected file {name!r}"
            try:
                data = (folder / name).read_bytes()
            except OSError as exc:
                return f"{name}: {exc.strerror or exc}"
            if _sha256_bytes(data) != digest:
                return f"{name}: SHA-256 does not match"
        try:
            json.loads((folder / "outcome.json").read_text(encoding="utf-8"))
        except ValueError as exc:
            return f"outcome.json: {exc}"
        return ""

    def store(self, key: str, outcome: Mapping, populations, report_html: str | None) -> CachedEntry:
        """Write an entry (atomically: a temporary folder renamed into place) and return it."""
        import pandas as pd

        from tilpheno.io import atomic

        self.entries.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".entry-", dir=self.entries))
        try:
            # ensure_ascii: file names that are not UTF-8 (surrogate escapes) round-trip as \udcXX
            blobs = {"outcome.json": (json.dumps(outcome, allow_nan=True, ensure_ascii=True, default=_plain)
                                      + "\n").encode("ascii")}
            frame = populations if populations is not None else pd.DataFrame()
            import io

            buf = io.BytesIO()
            frame.to_parquet(buf, index=False)
            blobs["populations.parquet"] = buf.getvalue()
            if report_html is not None:
                blobs["report.html"] = report_html.encode("utf-8", "backslashreplace")   # as atomic.write_text
            for name, data in blobs.items():
                _write_synced(tmp / name, data)
            manifest = {"format": FORMAT, "key": key, "files": {n: _sha256_bytes(d) for n, d in blobs.items()}}
            _write_synced(tmp / "entry.json", (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
            os.chmod(tmp, atomic.default_mode(directory=True))   # mkdtemp's 0o700: as a folder mkdir() makes
            final = self.folder(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # an older entry of the same key (e.g. without a report): replace it
                trash = Path(tempfile.mkdtemp(prefix=".old-", dir=self.entries))
                os.replace(final, trash / "entry")
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return CachedEntry(key, final, json.loads(blobs["outcome.json"]), report_html is not None)

    def prune(self, keep: Iterable[str]) -> int:
        """Remove entries (and leftover temporary folders) not in ``keep``; returns how many entries went."""
        keep = set(keep)
        removed = 0
        if not self.entries.is_dir():
            return 0
        for shard in self.entries.iterdir():
            if shard.name.startswith("."):
                shutil.rmtree(shard, ignore_errors=True)
                continue
            if not shard.is_dir():
                continue
            for entry in shard.iterdir():
                if entry.name not in keep:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
            with _suppress_os_error():
                shard.rmdir()  # only when empty
        return removed


def _write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to the new file ``path`` and fsync it; its permissions follow the umask, as
    every output's (a stored report is published as a hard link to this very file)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class _suppress_os_error:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, OSError)


def job_key(job, outcome) -> str | None:
    """The key to store ``outcome`` under: :func:`product_key` of the digests the job itself took
    of the bytes it read (``outcome.files``), or None when the outcome must not be cached (a dead
    worker or an internal error, whose cause may be the machine; a file that could not be hashed
    or changed while it was read). A dead worker's outcome is ``crashed`` (whatever its message:
    killed, failed, lost), an internal error's carries its ``traceback``."""
    if outcome.crashed or outcome.traceback:
        return None
    read = {d.path: d.sha256 for d in outcome.files}
    files = job_files(job)
    if not all(_is_digest(read.get(f)) for f in files):
        return None
    return product_key(job, {f: read[f] for f in files})


def job_files(job) -> list[str]:
    """Every file a product's outcome depends on and records (``outcome.files``, run.json's
    ``inputs``): its manifest rows' files, then the single-stain controls its matrix was estimated
    from (a control rewritten without changing the matrix, a re-exported header say, still changes
    the recorded digest, so the product is not re-used with the old one)."""
    files = [str(f) for f in job.rows["file"].tolist()]
    return files + [str(f) for f in getattr(getattr(job, "compensation", None), "files", ()) if str(f) not in files]


def _is_digest(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
