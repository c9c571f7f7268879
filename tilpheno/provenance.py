"""Run provenance (``run.json``): versions, command line, strategies, inputs, parameters, times.

Everything :func:`start_record` and :meth:`RunRecord.finish` record except ``started_at``,
``finished_at`` and ``duration_s`` is a pure function of the inputs, options and code, so two runs
on the same inputs give the same record apart from those fields (and the ``extra`` a caller adds
about the run itself: ``process`` adds what its cache re-used and what it replaced in OUT).
Times are UTC, ISO 8601 with a ``Z`` suffix.
"""
from __future__ import annotations

import hashlib
import json
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Iterable, Mapping

DEPENDENCIES = (
    "numpy", "pandas", "scipy", "flowio", "flowutils", "matplotlib", "jinja2",
    "pyyaml", "pyarrow", "lifelines", "dask", "distributed",
)
EXECUTION_PARAMETERS = ("executor", "jobs", "scheduler", "overwrite", "reports", "cache")
"""How a run was executed; not in the reports' short form, so results do not depend on it."""
SHORT_RELEASE_SPEC = "release spec"
"""The item of :meth:`RunRecord.short` naming the release spec (not in a product's cache key:
``tilpheno.cache.product_key``)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20, *, seconds: float | None = None) -> str:
    """Hex SHA-256 of a regular file's bytes, read in chunks (memory independent of file size).

    Raises ``OSError`` for anything but a regular file (never blocks on a FIFO or reads a device
    forever) and when reading takes longer than ``seconds`` (default
    ``tilpheno.io.files.READ_SECONDS_LIMIT``).
    """
    import time

    from tilpheno.io.files import READ_SECONDS_LIMIT, open_regular

    seconds = READ_SECONDS_LIMIT if seconds is None else seconds
    h = hashlib.sha256()
    deadline = time.monotonic() + seconds
    with open_regular(path) as fh:
        while block := fh.read(chunk):
            h.update(block)
            if time.monotonic() > deadline:
                raise OSError(f"{path}: reading took longer than {seconds:g} s; abandoned")
    return h.hexdigest()


def utc_now() -> str:
    """Current UTC time, ISO 8601 to the second with ``Z``."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def dependency_versions(names: Iterable[str] = DEPENDENCIES) -> dict[str, str]:
    """Installed distribution versions (``"not installed"`` for absent optional ones), each looked
    up once per process (the run record and the cache key both list them)."""
    return {name: _installed_version(name) for name in names}


@lru_cache(maxsize=None)
def _installed_version(name: str) -> str:
    """``importlib.metadata``'s version of the distribution ``name`` (a scan of ``sys.path``), or
    ``"not installed"``."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


UNREADABLE = "unreadable"
"""The ``sha256`` recorded for an input file that could not be opened (missing, not a regular file)."""


@dataclass(frozen=True)
class FileDigest:
    """A file and the SHA-256 of its bytes (``role`` says what it was used as; :data:`UNREADABLE`
    when it could not be opened)."""

    path: str
    sha256: str
    role: str = "input"


@dataclass
class RunRecord:
    """Everything ``run.json`` holds; build with :func:`start_record`, close with :meth:`finish`."""

    tilpheno_version: str
    python: str
    platform: str
    dependencies: dict[str, str]
    command_line: list[str]
    parameters: dict
    strategies: list[FileDigest]
    release_spec: dict
    started_at: str
    code_sha256: str = ""       # tilpheno.cache.code_digest(): the version says too little of a development checkout
    inputs: list[FileDigest] = field(default_factory=list)
    finished_at: str = ""
    duration_s: float = 0.0
    extra: dict = field(default_factory=dict)   # e.g. ``outputs`` and ``output_folder`` (tilpheno.io.outdir)

    def finish(self, inputs: Iterable[FileDigest], duration_s: float) -> None:
        """Record the inputs (sorted by path) and the end time."""
        self.inputs = sorted(inputs, key=lambda d: d.path)
        self.finished_at = utc_now()
        self.duration_s = round(float(duration_s), 3)

    def to_dict(self) -> dict:
        return {
            "tilpheno_version": self.tilpheno_version,
            "tilpheno_code_sha256": self.code_sha256,
            "python": self.python,
            "platform": self.platform,
            "dependencies": self.dependencies,
            "command_line": self.command_line,
            "parameters": self.parameters,
            "strategies": [vars(d) for d in self.strategies],
            "release_spec": self.release_spec,
            "inputs": [vars(d) for d in self.inputs],
            **self.extra,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": self.duration_s,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=str) + "\n"

    def short(self) -> dict[str, str]:
        """The short form every report shows (no times, so reports are reproducible)."""
        strategies = ", ".join(f"{Path(d.path).name} ({d.sha256[:12]})" for d in self.strategies)
        params = ", ".join(
            f"{k}={v}" for k, v in sorted(self.parameters.items()) if k not in EXECUTION_PARAMETERS
        )
        return {
            "tilpheno": self.tilpheno_version,
            "python": self.python.split()[0],
            "strategies": strategies,
            SHORT_RELEASE_SPEC: self.release_spec.get("name", ""),
            "parameters": params,
            "full record": "run.json in the output folder",
        }


def start_record(
    *,
    command_line: list[str] | None,
    parameters: Mapping[str, object],
    strategy_paths: Iterable[str | Path],
    release_spec: Mapping[str, object],
    code_sha256: str = "",
) -> RunRecord:
    """Open a run record now: versions, command line (``sys.argv`` by default), strategies + SHA-256,
    and ``code_sha256``, the digest of tilpheno's own source files (``tilpheno.cache.code_digest``,
    a layer above this module), so that a run of a development checkout names its code."""
    from tilpheno import __version__

    return RunRecord(
        tilpheno_version=__version__,
        python=sys.version.replace("\n", " "),
        platform=platform.platform(),
        dependencies=dependency_versions(),
        command_line=list(sys.argv if command_line is None else command_line),
        parameters=dict(parameters),
        strategies=[FileDigest(str(p), sha256_file(p), "strategy") for p in strategy_paths],
        release_spec=dict(release_spec),
        started_at=utc_now(),
        code_sha256=code_sha256,
    )
