"""The product job: everything one worker does for one infusion product.

A job (:class:`ProductJob`: the product's manifest rows, the strategies as text, the run's
options) runs :func:`process_product` anywhere (this process, a pool worker, a Dask worker): it
reads the files, gates them (``tilpheno.phenotype.analyze_product``), applies the release spec and
renders the product's report. It never raises: bad input gives a failed outcome with the reason
(QC flag ``product_failed``); a crash (a bug) gives ``internal_error`` and keeps its traceback in
``ProductOutcome.traceback`` for the run log. After each product it returns freed memory to the
system (gc + glibc ``malloc_trim``).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from tilpheno.errors import FCSReadError, TableError, TilphenoError
from tilpheno.gates.checks import NEEDS_REVIEW, review_status
from tilpheno.pipeline.outputs import _populations_long, product_slug, worst_severity
from tilpheno.provenance import FileDigest
from tilpheno.qc import QCFlag
from tilpheno.release import DEFAULT_SPEC, NOT_EVALUABLE, CriterionResult, ReleaseSpec
from tilpheno.study import Study, default_study

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessOptions:
    """Options shared by every product job (all JSON-able except the spec, the study and the panel).

    ``study``: variables, doses, QC rules, vocabulary, index columns (default: the bundled TIL
    study). ``panel``: override panel rows (``tilpheno.panel.read_panel_file``) or None."""

    fmo_percentile: float = 99.5
    include_identifiers: bool = False
    make_reports: bool = True
    release_spec: ReleaseSpec = DEFAULT_SPEC
    provenance_short: tuple[tuple[str, str], ...] = ()
    study: Study = field(default_factory=default_study)
    panel: object = None


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
    compensation: Any = None  # tilpheno.spillover.CompensationChoice, or None: each file's $SPILLOVER


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


def _dose(rows) -> float | None:
    """The product's infused TIL number from a ``til_dose_cells`` manifest column, if any."""
    if "til_dose_cells" not in rows.columns:
        return None
    values = [v for v in rows["til_dose_cells"].tolist() if v is not None and not _isnan(v)]
    return float(values[0]) if values else None


def _isnan(v) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return False


def _read_metadata(rows, product_id: str):
    """TEXT-segment read of every file: returns (readable rows, {file: FCSFile}, flags, digests)."""
    from tilpheno.io.fcs import read_fcs_metadata

    meta, flags, digests, keep = {}, [], [], []
    for i, file in enumerate(rows["file"].tolist()):
        try:
            meta[file] = read_fcs_metadata(file)
            keep.append(i)
        except FCSReadError as exc:
            flags.append(QCFlag(product_id, Path(file).name, "unreadable_file", "error", exc.problem))
            digests.append(_file_digest(file))
    return rows.iloc[keep].reset_index(drop=True), meta, flags, digests


FILE_ERROR_CODES = ("unreadable_file", "panel_error", "compensation_error")


def failure_reason(tubes: Sequence, flags: Sequence[QCFlag], strategies: Sequence, rows=None) -> str:
    """Why a gated product is *failed* (``''`` when it is usable). The one definition:

    * a tube kind that the run's strategies gate has no usable stained file (none in the
      manifest, or every one unreadable, with a panel error or a compensation error): every
      variable of that strategy is unknowable;
    * a gate failed (``gate_failed``) on the stained file whose counts give the variables: the
      populations below it are empty, so the variables are unknowable (not 0).

    Missing FMO tubes are not failures: the fallback gate is flagged (``missing_fmo``,
    ``fallback_gate``) and the product stays usable. ``tubes`` are the gated TubeResults, ``flags``
    every QC flag of the product; ``rows`` (its manifest rows) lets the message name the dropped
    files of each tube kind.
    """
    tube_of = {}
    if rows is not None:
        tube_of = {Path(str(f)).name: str(t) for f, t in zip(rows["file"], rows["tube"])}
    used: dict[str, str] = {}   # tube kind -> the stained file whose counts give the variables
    for tube in tubes:
        if tube.role == "stain":
            used.setdefault(str(tube.tube), Path(str(tube.file)).name)
    reasons = []
    for strategy in strategies:
        kind = str(strategy.tube)
        if kind not in used:
            dropped = [f"{f.file}: {f.code}: {f.message}" for f in flags
                       if f.code in FILE_ERROR_CODES and tube_of.get(f.file) == kind]
            detail = "; ".join(dropped) if dropped else f"no {kind} stained file in the manifest"
            reasons.append(f"no usable {kind} stained file ({detail}): {kind} variables unknowable")
            continue
        for f in flags:
            if f.code == "gate_failed" and f.file == used[kind]:
                reasons.append(f"{f.file}: gate failed ({f.message}): {kind} variables unknowable")
    return "; ".join(reasons)


def ungated_tube_flags(product_id: str, rows, strategies: Sequence) -> list[QCFlag]:
    """A warning ``ungated_tube`` per tube kind present in the product's files that no strategy of
    the run gates (the unstained control is never gated and is not flagged)."""
    gated = {str(s.tube) for s in strategies}
    names = ", ".join(sorted(gated)) or "none"
    flags = []
    for kind, group in rows.groupby(rows["tube"].astype(str), sort=True):
        if kind in gated or kind == "unstained":
            continue
        files = ", ".join(Path(str(f)).name for f in group["file"])
        flags.append(QCFlag(product_id, "", "ungated_tube", "warning",
                            f"{len(group)} {kind} file(s) not gated ({files}): no strategy for tube kind "
                            f"'{kind}' in this run (strategies for: {names})"))
    return flags


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


def _analyze(job: ProductJob, rows):
    """Gate the product (``analyze_product`` flags and drops files it cannot read; it does not raise for them)."""
    from tilpheno.phenotype import PLOT_EVENTS, analyze_product

    # plot_events: files are gated one at a time and only a bounded subsample of each is kept for
    # the report, so a job's memory follows the largest file, not the product or the folder
    choice = job.compensation
    if choice is not None and choice.error:
        raise TilphenoError(choice.error)
    return analyze_product(
        job.product_id, rows, list(job_strategies(job)),
        fmo_percentile=job.options.fmo_percentile, til_dose_cells=_dose(rows), plot_events=PLOT_EVENTS,
        spillover_override=choice.spillover if choice is not None else None,
        study=job.options.study, panel_override=job.options.panel,
    )


def _file_digest(file) -> FileDigest:
    """SHA-256 of a file the reader could not use (or whose worker died); ``unreadable`` if it cannot be opened."""
    from tilpheno.provenance import sha256_file

    try:
        return FileDigest(str(file), sha256_file(file))
    except OSError:
        return FileDigest(str(file), "unreadable")


def _digest(file, holder) -> FileDigest:
    """``holder.sha256`` (an FCSFile or TubeResult); ``changed: ...`` when the reader refuses to hash
    a file that changed or vanished since it was read."""
    try:
        return FileDigest(str(file), holder.sha256)
    except FCSReadError as exc:
        return FileDigest(str(file), f"changed: {exc.problem}")


def process_product(job: ProductJob) -> ProductOutcome:
    """Run one product end to end; never raises on bad input (returns ``ok=False`` with the reason)."""
    outcome = _process_product(job)
    _return_free_memory()   # the product's arrays are gone: give their pages back before the next product
    return outcome


def _return_free_memory() -> None:
    """Collect cyclic garbage, then glibc ``malloc_trim(0)``: return freed heap pages to the system (large numpy temporaries that
    landed on the heap would otherwise keep a worker's RSS at its high-water mark and let freed
    gaps accumulate from product to product). A no-op where glibc is not the allocator."""
    global _MALLOC_TRIM
    import gc

    gc.collect()   # matplotlib figures hold reference cycles: free them now, not at some later collection
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def _process_product(job: ProductJob) -> ProductOutcome:
    from tilpheno.release import evaluate, overall

    start = time.perf_counter()
    pid, spec = job.product_id, job.options.release_spec
    flags: list = []
    digests: list[FileDigest] = []
    result, meta, error, crash = None, {}, "", ""
    try:
        rows, meta, flags, digests = _read_metadata(job.rows, pid)
        if not (rows["role"] == "stain").any():
            raise TableError(f"product {pid}: no readable stained tube (files: {', '.join(job.rows['file'].map(lambda f: Path(f).name))})")
        flags += ungated_tube_flags(pid, job.rows, job_strategies(job))
        result = _analyze(job, rows)
        flags = list(result.qc) + flags
        error = failure_reason(result.tubes, flags, job_strategies(job), job.rows)
    except TilphenoError as exc:
        error = str(exc)
    except Exception as exc:  # a bug, not bad input: keep the traceback (the parent logs it), keep the batch going
        import traceback

        crash = traceback.format_exc()
        error = f"internal error {type(exc).__name__}: {exc}"
    if job.compensation is not None:   # the single-stain controls the product's matrix came from
        digests += [_file_digest(f) for f in job.compensation.files]
    if result is not None:
        gated = {str(t.file) for t in result.tubes}
        digests += [_digest(t.file, t) for t in result.tubes]
        digests += [_digest(f, m) for f, m in meta.items() if str(f) not in gated]
    else:
        seen = {d.path for d in digests}
        digests += [_digest(f, m) for f, m in meta.items() if str(f) not in seen]
    if error:
        flags.append(QCFlag(pid, "", "internal_error" if crash else "product_failed", "error", error))
    phenotype = {"product_id": pid, **{k: v for k, v in (result.phenotype if result else {}).items() if k != "product_id"}}
    release = evaluate(spec, phenotype) if result and not error else []
    # a gate that may be wrong (gates.checks.REVIEW_CODES) holds release until a reviewer signs
    review = review_status(flags) if result and not error else NEEDS_REVIEW
    release_status = overall(release) if result and not error and review != NEEDS_REVIEW else NOT_EVALUABLE
    outcome = ProductOutcome(
        product_id=pid,
        slug=product_slug(pid),
        ok=not error,
        error=error,
        phenotype=phenotype,
        populations=_populations_long(pid, result.tubes) if result else None,
        qc=flags,
        release=release,
        release_status=release_status,
        files=sorted(digests, key=lambda d: d.path),
        traceback=crash,
    )
    outcome.phenotype.update(_status_columns(outcome, result, len(job.rows)))
    if job.options.make_reports:
        _render(outcome, result, meta, job)
    outcome.seconds = time.perf_counter() - start
    return outcome


def _render(outcome: ProductOutcome, result, meta, job: ProductJob) -> None:
    """The product's report; if drawing it fails, a report without plots and a ``report_failed`` flag."""
    from tilpheno.report.product import render_product

    try:
        outcome.report_html = render_product(outcome, result, meta, job.options, job_strategies(job))
    except Exception as exc:  # a plotting bug must not sink the product's tables
        outcome.qc.append(QCFlag(outcome.product_id, "", "report_failed", "error", f"{type(exc).__name__}: {exc}"))
        outcome.phenotype.update(qc_status=worst_severity(outcome.qc), n_qc_flags=len(outcome.qc))
        outcome.report_html = render_product(outcome, None, meta, job.options)


def _status_columns(outcome: ProductOutcome, result, n_files: int) -> dict:
    cols = {
        "status": "done" if outcome.ok else "failed",
        "error": outcome.error,
        "release_status": outcome.release_status,
        "review_status": review_status(outcome.qc) if outcome.ok else NEEDS_REVIEW,
        "qc_status": worst_severity(outcome.qc),
        "n_qc_flags": len(outcome.qc),
        "n_files": n_files,
    }
    cols["n_events_total"] = sum(int(t.n_events) for t in result.tubes) if result else 0
    return cols


def crashed_outcome(job: ProductJob, reason: str) -> ProductOutcome:
    """A failed outcome built in this process for a job whose worker never returned."""
    digests = [_file_digest(file) for file in job.rows["file"].tolist()]
    outcome = ProductOutcome(
        product_id=job.product_id, slug=product_slug(job.product_id), ok=False, error=reason,
        phenotype={"product_id": job.product_id}, populations=None,
        qc=[QCFlag(job.product_id, "", "product_failed", "error", reason)], release=[],
        release_status=NOT_EVALUABLE, files=sorted(digests, key=lambda d: d.path),
    )
    outcome.phenotype.update(_status_columns(outcome, None, len(job.rows)))
    if job.options.make_reports:
        _render(outcome, None, {}, job)
    return outcome
