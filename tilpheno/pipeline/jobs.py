"""Jobs and outcomes of ``process``: what a worker receives for one product and what it returns.

A :class:`ProductJob` holds everything one worker needs (the product's manifest rows, the
strategies' text, the options); it is pickled to other processes and Dask workers, which parse
the strategies themselves (:func:`job_strategies`, once per process). A :class:`ProductOutcome`
is what comes back; :func:`outcome_record` / :func:`outcome_from_record` are its JSON form (the
cache stores it).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from tilpheno.provenance import FileDigest
from tilpheno.qc import QCFlag
from tilpheno.release import DEFAULT_SPEC, CriterionResult, ReleaseSpec
from tilpheno.study import Study, default_study

if TYPE_CHECKING:
    from tilpheno.spillover import CompensationChoice

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")


def product_slug(product_id: str) -> str:
    """A file-system-safe folder name for a product id; never escapes its parent folder.

    Characters outside ``[A-Za-z0-9._-]`` and runs of dots become ``_``; leading dots are dropped; when anything
    changed, 8 hex digits of the id's SHA-256 are appended so distinct ids stay distinct.
    ``"../../x" -> "____x-<hash>"``: never ``..``, a separator or an absolute path.
    """
    import hashlib

    text = str(product_id)
    safe = _DOTS.sub("_", _SAFE_CHARS.sub("_", text)).lstrip(".")[:80] or "_"
    if safe != text:
        safe = f"{safe}-{hashlib.sha256(text.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
    return safe


@dataclass(frozen=True)
class ProcessOptions:
    """Options shared by every product job (all JSON-able except the spec)."""

    fmo_percentile: float = 99.5
    include_identifiers: bool = False
    make_reports: bool = True
    release_spec: ReleaseSpec = DEFAULT_SPEC
    provenance_short: tuple[tuple[str, str], ...] = ()
    study: Study = field(default_factory=default_study)
    panel: Any = None   # override panel rows (tilpheno.panel.read_panel_file) or None


@dataclass(frozen=True)
class StrategySource:
    """A strategy file's path and text: workers (other processes, Dask nodes) parse it themselves."""

    path: str
    text: str


@dataclass(frozen=True)
class ProductJob:
    """Everything one worker needs for one product: its manifest rows, the strategies, options."""

    product_id: str
    rows: Any  # pandas DataFrame: the product's manifest rows (file, product_id, tube, role, fmo_marker, ...)
    strategies: tuple[StrategySource, ...]
    options: ProcessOptions
    compensation: CompensationChoice | None = None  # None: each file's $SPILLOVER


@dataclass
class ProductOutcome:
    """What a job returns: tables for the cohort files, the report HTML, the input digests."""

    product_id: str
    slug: str
    ok: bool
    error: str
    phenotype: dict
    populations: Any  # pandas DataFrame (long: population x tube) or empty
    qc: list  # of tilpheno.qc.QCFlag
    release: list[CriterionResult]
    release_status: str
    files: list[FileDigest]
    report_html: str | None = None
    seconds: float = 0.0
    traceback: str = ""   # a crash (a bug, not bad input): the worker's traceback, logged by the parent
    crashed: bool = False  # built in the parent for a job whose worker never returned it (died, failed, lost)
    has_report: bool | None = None  # a report was published for it (None: as ``ProcessOptions.make_reports``)
    started_ns: int = 0   # the worker's wall clock (ns) before the job read its files; 0: not run (not in the record)


def strategy_sources(strategies: Sequence) -> tuple[StrategySource, ...]:
    """Path and text of each loaded strategy; StrategyError if a file changed since it was loaded."""
    import hashlib

    from tilpheno.errors import StrategyError

    sources = []
    for st in strategies:
        data = Path(st.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != st.sha256:
            raise StrategyError(f"{st.path}: the file changed after it was loaded; run again")
        sources.append(StrategySource(str(st.path), data.decode("utf-8")))
    return tuple(sources)


@lru_cache(maxsize=16)
def _parse_strategy(path: str, text: str):
    from tilpheno.gates.strategy import parse_strategy

    return parse_strategy(text, path)


def job_strategies(job: ProductJob) -> tuple:
    """The job's strategies, parsed once per worker process."""
    return tuple(_parse_strategy(s.path, s.text) for s in job.strategies)


def outcome_record(outcome: ProductOutcome) -> dict:
    """The JSON-able part of an outcome (everything but the population table and the report)."""
    return {
        "product_id": outcome.product_id, "slug": outcome.slug, "ok": outcome.ok, "error": outcome.error,
        "phenotype": outcome.phenotype, "qc": [dataclasses.asdict(f) for f in outcome.qc],
        "release": [dataclasses.asdict(r) for r in outcome.release], "release_status": outcome.release_status,
        "files": [dataclasses.asdict(d) for d in outcome.files],
    }


def outcome_from_record(rec: Mapping) -> ProductOutcome:
    """An outcome (without tables or report) from :func:`outcome_record`'s dict."""
    from tilpheno.release import Criterion

    release = [CriterionResult(Criterion(**r["criterion"]), r["value"], r["outcome"], tuple(r.get("held_by", ())),
                               tuple(r.get("absent", ())), tuple(r.get("undetermined", ()))) for r in rec["release"]]
    return ProductOutcome(
        product_id=rec["product_id"], slug=rec["slug"], ok=rec["ok"], error=rec["error"],
        phenotype=dict(rec["phenotype"]), populations=None, qc=[QCFlag(**f) for f in rec["qc"]],
        release=release, release_status=rec["release_status"], files=[FileDigest(**d) for d in rec["files"]],
    )
