"""The ``process`` job: gate every product of a manifest, report each one, write the cohort tables.

One *job* per infusion product (all its tubes). A job runs :func:`process_product` anywhere
(this process, a process pool, a Dask worker): it reads the product's files, gates them through
``tilpheno.phenotype.analyze_product``, applies the release spec and renders the product's HTML
report. It never raises for bad input: a failing product comes back as ``ok=False`` with the
reason, so one bad product never sinks the batch. An unreadable file is dropped from its product
with a QC flag ``unreadable_file``; the product is still gated from the files that remain.

Determinism: products are processed in any order but collected and written sorted by product id;
every output except the times in ``run.json`` is a pure function of the inputs and options, so
``--jobs N``, Dask and re-runs give byte-identical files.

Executors: ``local`` with ``n_jobs == 1`` (in-process), ``local`` with ``n_jobs > 1`` (a process
pool of that many workers) and ``dask`` (a ``distributed`` cluster at a scheduler address, or a
``distributed.Client`` passed in).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from tilpheno.errors import FCSReadError, NoInputError, TableError, TilphenoError
from tilpheno.io.files import display_name
from tilpheno.provenance import FileDigest, RunRecord
from tilpheno.qc import QCFlag
from tilpheno.gates.checks import NEEDS_REVIEW, needs_review, review_status
from tilpheno.release import DEFAULT_SPEC, NOT_EVALUABLE, CriterionResult, ReleaseSpec
from tilpheno.study import Study, default_study

log = logging.getLogger(__name__)
SEVERITY_ORDER = {"info": 0, "warning": 1, "error": 2}
EXECUTORS = ("local", "dask")
_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")


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
    compensation: object = None  # tilpheno.spillover.CompensationChoice, or None: each file's $SPILLOVER


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
    has_report: bool | None = None  # a report was published for it (None: as ``ProcessOptions.make_reports``)


@dataclass
class RunSummary:
    """End-of-run summary: products done, failed (id -> reason), QC flag counts by code, release
    outcomes (pass / fail / not evaluable -> count) under the named spec, duration."""

    out_dir: Path
    n_products: int
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    flag_counts: dict[str, int] = field(default_factory=dict)
    release_counts: dict[str, int] = field(default_factory=dict)
    release_spec: str = ""
    seconds: float = 0.0
    run_flags: list = field(default_factory=list)   # QCFlags of the run itself (product_id ''), e.g. unlistable_folder

    @property
    def ok(self) -> bool:
        """No product failed and the run met no error of its own (e.g. a folder it could not list)."""
        return not self.failed and not any(f.severity == "error" for f in self.run_flags)


# --- small pure helpers -------------------------------------------------------------------


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


def report_path(out_dir: Path, product_id: str) -> Path:
    """``OUT/products/<slug>/report.html``; raises if the result would not be inside OUT."""
    out_dir = Path(out_dir).resolve()
    path = (out_dir / "products" / product_slug(product_id) / "report.html").resolve()
    if out_dir not in path.parents:
        raise TableError(f"product id {product_id!r}: report path escapes the output folder")
    return path


def worst_severity(flags: Iterable) -> str:
    """``ok`` when there are no flags, else the highest severity (info < warning < error)."""
    worst, rank = "ok", -1
    for f in flags:
        r = SEVERITY_ORDER.get(str(f.severity).lower(), 1)
        if r > rank:
            worst, rank = str(f.severity).lower(), r
    return worst


def group_products(manifest) -> list[tuple[str, object]]:
    """Split a manifest DataFrame into (product_id, rows) pairs, sorted by product id (as text)."""
    required = {"file", "product_id", "tube", "role"}
    missing = sorted(required - set(manifest.columns))
    if missing:
        raise TableError(f"manifest: missing column(s) {', '.join(missing)}")
    frame = manifest.copy()
    frame["product_id"] = frame["product_id"].astype(str)
    groups = []
    for pid in sorted(frame["product_id"].unique()):
        rows = frame[frame["product_id"] == pid].sort_values(["tube", "role", "file"], kind="stable")
        groups.append((pid, rows.reset_index(drop=True)))
    return groups


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


# --- the job ------------------------------------------------------------------------------


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
"""QC codes that drop a file from its product."""


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
    """A warning ``ungated_tube`` per tube kind whose stained or FMO files no strategy of the run
    gates (controls, i.e. unstained and single-stain files, are never gated and not flagged)."""
    gated = {str(s.tube) for s in strategies}
    names = ", ".join(sorted(gated)) or "none"
    flags = []
    tubes = rows[rows["role"].astype(str).isin(("stain", "fmo"))]
    for kind, group in tubes.groupby(tubes["tube"].astype(str), sort=True):
        if kind in gated:
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


def _populations_long(product_id: str, tubes) -> object:
    import pandas as pd

    frames = []
    for t in tubes:
        pops = t.populations.copy()
        head = {"product_id": product_id, "file": display_name(Path(t.file).name), "tube": t.tube, "role": t.role,
                "fmo_marker": t.fmo_marker or ""}
        for i, (k, v) in enumerate(head.items()):
            pops.insert(i, k, v)
        frames.append(pops)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


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
    from matplotlib import rc_context

    from tilpheno.report.product import render_product

    # text in plots (detector, marker, population and product names) is shown literally: a '$', '_'
    # or '^' from the inputs is never parsed as mathtext (which fails or typesets it)
    with rc_context({"text.parse_math": False}):
        try:
            outcome.report_html = render_product(outcome, result, meta, job.options, job_strategies(job))
        except Exception as exc:  # a plotting bug must not sink the product's tables
            log.exception("product %s: report failed", outcome.product_id)
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


# --- executors ----------------------------------------------------------------------------


def _single_threaded_worker() -> None:
    """Pool initializer: one BLAS/OpenMP thread per worker, so N workers use N cores, not N x cores."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _pool_context():
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    # imported once in the fork server, inherited by every worker (saves ~3 s of imports per worker)
    ctx.set_forkserver_preload([
        "tilpheno.pipeline", "tilpheno.phenotype", "tilpheno.report.product", "tilpheno.report.plots",
        "matplotlib.figure", "matplotlib.backends.backend_agg", "sklearn.mixture", "jinja2",
    ])
    return ctx


def _result_or_failure(future, job: ProductJob) -> ProductOutcome:
    """The future's outcome; if the worker itself died or the task could not run (killed, out of
    memory, lost Dask worker), a failed outcome naming the cause, so the batch goes on."""
    try:
        return future.result()
    except Exception as exc:
        return crashed_outcome(job, f"worker failed: {type(exc).__name__}: {exc}")


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


def iter_outcomes(
    jobs: Sequence[ProductJob],
    *,
    executor: str = "local",
    n_jobs: int = 1,
    scheduler=None,
) -> Iterator[ProductOutcome]:
    """Yield each job's outcome as it completes (any order; callers sort by product id).

    ``scheduler``: for ``executor="dask"``, a scheduler address (``tcp://host:8786``) or a
    ``distributed.Client``; ignored for ``local``.

    With ``n_jobs > 1`` every product runs in a fresh process of its own (:func:`_iter_pool`):
    a process that dies fails only its own product (``worker died ...``); the others run on.
    """
    if executor not in EXECUTORS:
        raise TableError(f"executor: {executor!r} is not one of {', '.join(EXECUTORS)}")
    if executor == "dask":
        yield from _iter_dask(jobs, scheduler)
    elif n_jobs <= 1 or len(jobs) <= 1:
        for job in jobs:
            try:
                outcome = process_product(job)
            except Exception as exc:  # process_product catches input errors; this is the last guard
                log.exception("product %s: worker failed", job.product_id)
                outcome = crashed_outcome(job, f"worker failed: {type(exc).__name__}: {exc}")
            yield outcome
    else:
        yield from _iter_pool(jobs, n_jobs)


def _iter_pool(jobs: Sequence[ProductJob], n_jobs: int) -> Iterator[ProductOutcome]:
    """Up to ``n_jobs`` products at a time, each in a fresh process of its own (forked from a
    preloaded fork server, so starting one costs milliseconds, not the imports).

    One process per product, not a shared pool: a process that dies (out-of-memory killer, a
    crash in a native library) takes only its own product with it, reported as ``worker died
    while processing this product (killed by SIGKILL ...)``; the other products run on. (A
    ``concurrent.futures`` pool breaks as a whole when one worker dies, and on Python 3.11 its
    shutdown can then hang.)
    """
    from multiprocessing.connection import wait

    ctx = _pool_context()
    pending = list(jobs)
    running: dict = {}   # receiving connection -> (process, job)
    while pending or running:
        while pending and len(running) < n_jobs:
            job = pending.pop(0)
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_product_process, args=(job, send), daemon=True)
            proc.start()
            send.close()   # the child holds the only writing end: its death is an EOF here
            running[receive] = (proc, job)
        for receive in wait(list(running)):
            proc, job = running.pop(receive)
            yield _collect(receive, proc, job)


def _product_process(job: ProductJob, conn) -> None:
    """Body of a product's process: one BLAS thread, run the job, send the outcome back."""
    _single_threaded_worker()
    try:
        conn.send(process_product(job))
    finally:
        conn.close()


def _collect(receive, proc, job: ProductJob) -> ProductOutcome:
    """The outcome a product's process sent, or a failed outcome saying how the process died."""
    outcome = None
    try:
        outcome = receive.recv()
    except EOFError:
        pass   # the process died before it sent anything
    except Exception as exc:   # an outcome that could not be unpickled
        log.error("product %s: outcome unreadable: %s", job.product_id, exc)
    finally:
        receive.close()
        proc.join()
    if outcome is None:
        reason = f"worker died while processing this product ({_describe_exit(proc.exitcode)})"
        log.error("product %s: %s", job.product_id, reason)
        return crashed_outcome(job, reason)
    return outcome


def _describe_exit(exitcode: int | None) -> str:
    import signal

    if exitcode is None:
        return "did not exit"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (sent by the out-of-memory killer, or by hand)" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with status {exitcode}"


def _iter_dask(jobs: Sequence[ProductJob], scheduler) -> Iterator[ProductOutcome]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise TableError("executor dask needs the 'distributed' package: pip install 'tilpheno[dask]'") from None
    if scheduler is None:
        raise TableError("executor dask needs a scheduler address (e.g. tcp://127.0.0.1:8786)")
    own = not isinstance(scheduler, Client)
    try:
        client = Client(scheduler) if own else scheduler
    except (OSError, TimeoutError, ValueError) as exc:
        raise TilphenoError(f"scheduler {scheduler}: cannot connect to the Dask scheduler ({exc})") from None
    try:
        import uuid

        run = uuid.uuid4().hex  # fresh keys: a cluster never serves a cached result of an earlier run
        keys = [f"tilpheno-{run}-{i:06d}" for i in range(len(jobs))]
        futures = client.map(process_product, list(jobs), key=keys, pure=False)
        job_of = {fut.key: job for fut, job in zip(futures, jobs)}
        for fut in as_completed(futures):
            yield _result_or_failure(fut, job_of[fut.key])
            fut.release()
    finally:
        if own:
            client.close()


# --- the whole run ------------------------------------------------------------------------


def _ordered_union(dicts: Iterable[Mapping]) -> list[str]:
    cols: dict[str, None] = {}
    for d in dicts:
        for k in d:
            cols.setdefault(k, None)
    return list(cols)


def _tables(outcomes: Sequence[ProductOutcome], run_flags: Sequence[QCFlag] = ()):
    """phenotypes, populations and qc DataFrames from outcomes sorted by product id (the run's own
    flags first in qc)."""
    import pandas as pd

    phen_cols = _ordered_union(o.phenotype for o in outcomes)
    phenotypes = pd.DataFrame([o.phenotype for o in outcomes], columns=phen_cols)
    pops = [o.populations for o in outcomes if o.populations is not None and len(o.populations)]
    populations = pd.concat(pops, ignore_index=True) if pops else pd.DataFrame(
        columns=["product_id", "file", "tube", "role", "fmo_marker", "population", "parent", "count"])
    qc = pd.DataFrame(
        [{"product_id": f.product_id, "file": display_name(Path(str(f.file)).name) if f.file else "", "code": f.code,
          "severity": f.severity, "needs_review": needs_review(f), "message": f.message}
         for f in [*run_flags, *(f for o in outcomes for f in o.qc)]],
        columns=["product_id", "file", "code", "severity", "needs_review", "message"],
    )
    return phenotypes, populations, qc


def run_process(
    manifest,
    out_dir: str | Path,
    strategies: Sequence,
    record: RunRecord,
    options: ProcessOptions = ProcessOptions(),
    *,
    executor: str = "local",
    n_jobs: int = 1,
    scheduler=None,
    on_outcome: Callable[[ProductOutcome], None] | None = None,
    overwrite: bool = False,
    run_flags: Sequence[QCFlag] = (),
    use_cache: bool = True,
    reports: str | None = None,
    report_products: Iterable[str] | None = None,
    compensations: Mapping | None = None,
) -> RunSummary:
    """Process every product of ``manifest`` into ``out_dir``; returns the summary.

    ``compensations``: product id -> ``tilpheno.spillover.CompensationChoice`` (from
    ``spillover.plan_compensation``); products not in it use their files' own ``$SPILLOVER``.

    The run claims ``out_dir`` (:class:`tilpheno.io.outdir.OutputFolder`: lock, staging, publish;
    a folder holding anything is refused unless ``overwrite``, which replaces what the previous
    run wrote). Reports are staged as products finish, tables at the end, every file atomically;
    the outputs appear in ``out_dir`` only when the run completes (``run.json`` last). A run that
    raises or is interrupted leaves ``out_dir``'s outputs as they were. ``record`` (from
    :func:`tilpheno.provenance.start_record`) is completed with the inputs' digests, the list of
    outputs and what was replaced, and written as ``run.json``. ``on_outcome`` is called in this
    process as each product finishes (progress bars). ``run_flags``: QC flags of the run itself
    (product id ''), written first in ``qc.csv``; an error among them makes the summary not ok.

    Incremental (:mod:`tilpheno.cache`): a product whose inputs, strategies, options and code are
    those of an entry in ``OUT/.cache`` is not processed again; its stored outcome (and report)
    are used. The store is written as products finish (not staged), so an interrupted run's
    finished products are re-used by the next run. ``use_cache=False`` processes every product
    (entries are still written). ``reports``: ``now`` (every product's report drawn; the default
    when ``options.make_reports``), ``later`` (none drawn: ``tilpheno report OUT`` draws them on
    demand) or ``none``; ``report_products``: with ``now``, only these products get a report
    drawn, the others keep a report stored in the cache, if any.
    """
    from tilpheno.io.outdir import OutputFolder, OutputFolderError, describe_os_error

    if manifest is None or len(manifest) == 0:
        raise NoInputError("no FCS files to process (empty manifest)")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    reports = reports or ("now" if options.make_reports else "none")
    if reports not in REPORT_MODES:
        raise TableError(f"reports: {reports!r} is not one of {', '.join(REPORT_MODES)}")
    options = dataclasses.replace(options, provenance_short=tuple(record.short().items()),
                                  make_reports=reports == "now")
    sources = strategy_sources(strategies)
    jobs = [ProductJob(pid, rows, sources, options, (compensations or {}).get(pid))
            for pid, rows in group_products(manifest)]
    with OutputFolder.claim(out_dir, overwrite=overwrite, run_id=record.started_at) as folder:
        try:
            outcomes = _stage(folder.staging, jobs, options, record, t0, executor=executor, n_jobs=n_jobs,
                              scheduler=scheduler, on_outcome=on_outcome, folder=folder,
                              run_flags=run_flags, strategies=strategies, use_cache=use_cache, reports=reports,
                              report_products=report_products)
            folder.publish()
        except OSError as exc:
            raise OutputFolderError(f"cannot write the outputs: {describe_os_error(exc, out_dir)}; "
                                    f"{out_dir} was left as it was") from None
    summary = RunSummary(out_dir=out_dir, n_products=len(outcomes), seconds=record.duration_s,
                         release_spec=options.release_spec.name, run_flags=list(run_flags))
    for o in outcomes:
        summary.release_counts[o.release_status] = summary.release_counts.get(o.release_status, 0) + 1
        if o.ok:
            summary.done.append(o.product_id)
        else:
            summary.failed[o.product_id] = o.error
        for f in o.qc:
            summary.flag_counts[f.code] = summary.flag_counts.get(f.code, 0) + 1
    for f in run_flags:
        summary.flag_counts[f.code] = summary.flag_counts.get(f.code, 0) + 1
    summary.flag_counts = dict(sorted(summary.flag_counts.items()))
    return summary


REPORT_MODES = ("now", "later", "none")


def _report_wanted(job: ProductJob, reports: str, selected) -> str:
    """``draw`` (the job draws its report), ``stored`` (publish a cached report if there is one) or ``no``."""
    if reports != "now":
        return "no"
    return "draw" if selected is None or job.product_id in selected else "stored"


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

    release = [CriterionResult(Criterion(**r["criterion"]), r["value"], r["outcome"]) for r in rec["release"]]
    return ProductOutcome(
        product_id=rec["product_id"], slug=rec["slug"], ok=rec["ok"], error=rec["error"],
        phenotype=dict(rec["phenotype"]), populations=None, qc=[QCFlag(**f) for f in rec["qc"]],
        release=release, release_status=rec["release_status"], files=[FileDigest(**d) for d in rec["files"]],
    )


def _publish_report(src: Path, dest: Path) -> None:
    """Put a stored report at ``dest``: a hard link to the cache's copy when the file system allows
    (no bytes copied), else an atomic copy. Either way ``dest`` appears complete or not at all."""
    import os
    import tempfile

    from tilpheno.io import atomic

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".link-", dir=dest.parent)) / "report.html"
    try:
        os.link(src, tmp)
        os.replace(tmp, dest)
    except OSError:
        atomic.write_bytes(dest, src.read_bytes())
    finally:
        import shutil

        shutil.rmtree(tmp.parent, ignore_errors=True)


def _stage(staging: Path, jobs: Sequence[ProductJob], options: ProcessOptions, record: RunRecord, t0: float, *,
           executor: str, n_jobs: int, scheduler, on_outcome, folder, run_flags=(), strategies=(),
           use_cache: bool = True, reports: str = "now", report_products=None) -> list[ProductOutcome]:
    """Re-use cached products, run the others, write every output into ``staging`` (``run.json`` last).

    Every product's outcome goes to the store (``OUT/.cache``, not staged) as soon as it arrives,
    then only its small fields stay in memory; reports are staged as hard links to the stored
    copies; the tables are written from the stored entries in product order, so a re-run's tables
    are byte-identical to a fresh run's. Returns the outcomes (no tables) sorted by id.
    """
    import hashlib
    import uuid

    from tilpheno.cache import ProductStore, job_key, product_key
    from tilpheno.io import atomic
    from tilpheno.report.codebook import build_codebook
    from tilpheno.report.html import render_index_pages

    out_dir = folder.path
    store = ProductStore(out_dir, read=use_cache)
    digests = store.inputs()
    selected = None if report_products is None else {str(p) for p in report_products}
    keys: dict[str, str] = {}
    done: dict[str, tuple[ProductOutcome, Path]] = {}
    todo, reused = {}, []
    # an empty store (first run into OUT) or --no-cache: nothing to look up, so the inputs are not
    # hashed here; each product's key comes from the digests its job took of the bytes it read
    look_up = store.has_entries()
    for job in jobs:
        wanted = _report_wanted(job, reports, selected)
        job = dataclasses.replace(job, options=dataclasses.replace(job.options, make_reports=wanted == "draw"))
        entry = None
        if look_up:
            file_digests = {str(f): digests.sha256(f) for f in job.rows["file"].tolist()}
            key = product_key(job, file_digests) if all(file_digests.values()) else None
            entry = store.load(key, need_report=wanted == "draw") if key else None
            if key:
                keys[job.product_id] = key
        if entry is None:
            todo[job.product_id] = job
            continue
        outcome = outcome_from_record(entry.outcome)
        outcome.has_report = wanted != "no" and entry.has_report
        if outcome.has_report:
            _publish_report(entry.report_path, report_path(staging, outcome.product_id))
        done[outcome.product_id] = (outcome, entry.populations_path)
        reused.append(outcome.product_id)
        if on_outcome is not None:
            on_outcome(outcome)
    run = uuid.uuid4().hex
    dispatched_ns = time.time_ns()
    for fresh in iter_outcomes(list(todo.values()), executor=executor, n_jobs=n_jobs, scheduler=scheduler):
        if fresh.traceback:
            log.error("product %s: %s (a bug, not bad input; traceback in the run log)", fresh.product_id, fresh.error)
            log.debug("product %s: traceback of the internal error\n%s", fresh.product_id, fresh.traceback.rstrip())
        else:
            log.info("product %s: %s", fresh.product_id, "done" if fresh.ok else f"failed: {fresh.error}")
        job = todo[fresh.product_id]
        key = job_key(job, fresh)
        if key is not None:
            keys[fresh.product_id] = key
            for d in fresh.files:  # identities for the next run's stat pre-check, as of before the reads
                digests.record(d.path, d.sha256, dispatched_ns)
        else:
            key = f"run-{run}-{hashlib.sha256(fresh.product_id.encode('utf-8', 'surrogateescape')).hexdigest()}"
        entry = store.store(key, outcome_record(fresh), fresh.populations, fresh.report_html)
        outcome = outcome_from_record(entry.outcome)  # the stored form, as a re-run reads it
        outcome.has_report = entry.has_report
        if entry.has_report:
            _publish_report(entry.report_path, report_path(staging, outcome.product_id))
        del fresh
        done[outcome.product_id] = (outcome, entry.populations_path)
        if on_outcome is not None:
            on_outcome(outcome)
    ordered = [done[pid] for pid in sorted(done)]
    outcomes = [o for o, _ in ordered]
    phenotypes, _, qc = _tables(outcomes, run_flags)
    atomic.write_csv(staging / "phenotypes.csv", phenotypes)
    atomic.write_parquet(staging / "phenotypes.parquet", phenotypes)
    population_columns = _write_populations(staging / "populations.csv", [p for _, p in ordered])
    atomic.write_csv(staging / "qc.csv", qc)
    tables = {"phenotypes.csv": phenotypes.columns, "populations.csv": population_columns, "qc.csv": qc.columns}
    atomic.write_csv(staging / "codebook.csv", build_codebook(tables, strategies, options.fmo_percentile, options.study))
    for name, page in render_index_pages(outcomes, options, strategies):
        atomic.write_text(staging / name, page)
    record.extra["cache"] = {
        "enabled": use_cache, "reused": sorted(reused), "processed": sorted(todo),
        "inputs_hashed": digests.hashed, "inputs_digest_reused": digests.reused,
    }
    record.finish({d.path: d for o in outcomes for d in o.files}.values(),   # shared control files once
                  time.perf_counter() - t0)
    record.extra.update(folder.record())
    atomic.write_text(staging / "run.json", record.to_json())
    digests.save()
    store.prune(keys.values())
    return outcomes


def _write_populations(path: Path, parquet_paths: Sequence[Path]) -> list[str]:
    """``populations.csv`` streamed from each product's stored table, in product order: one
    product's rows in memory at a time. Columns (returned): the union over products in order of
    appearance (a column a product lacks is empty in its rows), as ``pandas.concat`` would give."""
    import pandas as pd
    import pyarrow.parquet as pq

    from tilpheno.io import atomic

    columns: dict[str, None] = {}
    for p in parquet_paths:
        for name in pq.read_schema(p).names:
            if not name.startswith("__index_level"):
                columns.setdefault(name, None)
    if not columns:
        columns = dict.fromkeys(["product_id", "file", "tube", "role", "fmo_marker", "population", "parent", "count"])
    from tilpheno.io.csvcells import neutralise_frame

    with atomic.atomic_open(path, "w") as fh:
        header = True
        for p in parquet_paths:
            frame = pd.read_parquet(p)
            if len(frame) == 0:
                continue
            # the one CSV rule of every tilpheno CSV: formula-like text neutralised (tilpheno.io.csvcells)
            neutralise_frame(frame.reindex(columns=list(columns))).to_csv(fh, index=False, header=header,
                                                                         lineterminator="\n")
            header = False
        if header:  # no product has rows
            neutralise_frame(pd.DataFrame(columns=list(columns))).to_csv(fh, index=False, lineterminator="\n")
    return list(columns)



def rerun_arguments(out_dir: str | Path) -> tuple[dict, set[str]]:
    """The arguments of the ``process`` run recorded in ``OUT/run.json`` (input folder, manifest,
    outcomes, strategies, release spec, FMO percentile, identifiers, local jobs), and the run's
    product ids; for ``tilpheno report``. Raises ``TilphenoError`` when OUT holds no readable run or
    a strategy or release spec file changed since (the results would no longer be that run's)."""
    import json

    import pandas as pd

    from tilpheno.provenance import sha256_file
    from tilpheno.release import spec_path
    from tilpheno.vocabulary import STUDIES_DIR

    out_dir = Path(out_dir)
    try:
        run = json.loads((out_dir / "run.json").read_text(encoding="utf-8"))
        params = run["parameters"]
        known = set(pd.read_parquet(out_dir / "phenotypes.parquet", columns=["product_id"])["product_id"].astype(str))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TilphenoError(f"{out_dir}: no readable run of `tilpheno process` here ({exc})") from None
    for what, path, digest in [("strategy", s["path"], s["sha256"]) for s in run.get("strategies", [])] + (
            [("release spec", run["release_spec"]["source"], run["release_spec"]["sha256"])]
            if run.get("release_spec", {}).get("sha256") else []):
        try:
            same = sha256_file(spec_path(path) if what == "release spec" else path) == digest
        except OSError:
            same = False
        if not same:
            raise TilphenoError(f"{path}: {what} changed or missing since the run in {out_dir}; run `tilpheno process` again")
    jobs = int(params.get("jobs", 1)) if params.get("executor", "local") == "local" else 1
    kwargs = {
        "folder": Path(params["input_folder"]), "manifest": Path(params["manifest"]) if params.get("manifest") else None,
        "outcomes": Path(params["outcomes"]) if params.get("outcomes") else None,
        "strategy": [Path(s["path"]) for s in run.get("strategies", [])] or None,
        # a bundled spec came with the (bundled) study; a spec file given on its own is passed again
        "release_spec": (Path(run["release_spec"]["source"]) if run.get("release_spec", {}).get("sha256")
                         and not str(run["release_spec"]["source"]).endswith(" (bundled)") else None),
        "study": (str(STUDIES_DIR / params["study"].removesuffix(" (bundled)")) if str(params.get("study", "")).endswith(" (bundled)")
                  else params.get("study") or None),
        "panel": Path(params["panel"]) if params.get("panel") else None,
        "fmo_percentile": float(params.get("fmo_percentile", 99.5)),
        "include_identifiers": bool(params.get("include_identifiers", False)), "jobs": max(jobs, 1),
        "compensation": Path(params["compensation"]) if params.get("compensation") else None,
        "allow_unmatched": bool(params.get("allow_unmatched", False)),
        "allow_outside": bool(params.get("allow_outside", False)),
    }
    return kwargs, known


def load_manifest(folder: str | Path, manifest_csv: str | Path | None = None, *, allow_outside: bool = False,
                  study: Study | None = None):
    """The manifest: ``read_manifest(csv)`` when given (relative file paths are under ``folder``),
    else ``scan_folder(folder)``. ``file`` holds paths usable from the working directory. Files
    must lie under ``folder`` (after resolving links) unless ``allow_outside``."""
    from tilpheno.io.manifest import read_manifest, scan_folder

    folder = Path(folder)
    if manifest_csv is None:
        return scan_folder(folder, allow_outside=allow_outside, study=study)
    frame = read_manifest(manifest_csv, base=folder, allow_outside=allow_outside, study=study)
    frame["file"] = [str(p if Path(p).is_absolute() else folder / p) for p in frame["file"]]
    return frame


def unmatched_outcomes(manifest, outcomes) -> list[str]:
    """Product ids of the outcomes table that match no product of the manifest (sorted)."""
    products = set(manifest["product_id"].astype(str))
    return sorted({str(p) for p in outcomes["product_id"].dropna()} - products)


def _did_you_mean(ids: Sequence[str], choices: Iterable[str]) -> str:
    import difflib

    choices = sorted(set(choices))
    hints = []
    for pid in ids:
        close = difflib.get_close_matches(pid, choices, n=1, cutoff=0.6)
        hints.append(f"{pid} (did you mean {close[0]}?)" if close else pid)
    return ", ".join(hints)


def attach_doses(manifest, outcomes):
    """Add each product's infused TIL number (``til_dose_cells``, cells) from an outcomes table.

    ``outcomes`` is a validated outcomes DataFrame (``tilpheno.io.outcomes.read_outcomes``). A
    dose already in the manifest wins; products without a dose stay NaN (no absolute doses).
    """
    import pandas as pd

    doses = outcomes.dropna(subset=["til_dose_cells"]).set_index("product_id")["til_dose_cells"]
    frame = manifest.copy()
    from_outcomes = frame["product_id"].astype(str).map(doses)
    if "til_dose_cells" in frame.columns:
        given = pd.to_numeric(frame["til_dose_cells"], errors="coerce")
        frame["til_dose_cells"] = given.where(given.notna(), from_outcomes)
    else:
        frame["til_dose_cells"] = from_outcomes
    return frame


def process_folder(
    folder: str | Path,
    out_dir: str | Path,
    *,
    manifest_csv: str | Path | None = None,
    outcomes_path: str | Path | None = None,
    strategy_paths: Sequence[str | Path] | None = None,
    release_spec_path: str | Path | None = None,
    study: str | Path | Study | None = None,
    panel_path: str | Path | None = None,
    fmo_percentile: float = 99.5,
    include_identifiers: bool = False,
    make_reports: bool = True,
    executor: str = "local",
    n_jobs: int = 1,
    scheduler=None,
    compensation_path: str | Path | None = None,
    command_line: list[str] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_outcome: Callable[[ProductOutcome], None] | None = None,
    overwrite: bool = False,
    allow_unmatched: bool = False,
    allow_outside: bool = False,
    use_cache: bool = True,
    reports: str | None = None,
    report_products: Iterable[str] | None = None,
) -> RunSummary:
    """The library form of ``tilpheno process``: manifest, strategies, release spec, then :func:`run_process`.

    Bad options or inputs that concern the whole run raise ``TilphenoError`` before any product is
    processed and before ``out_dir`` is touched: unreadable manifest, no FCS files
    (``NoInputError``), invalid strategy or release spec, unknown executor, outcome ids that
    match no product (unless ``allow_unmatched``), manifest files outside ``folder`` (unless
    ``allow_outside``), an output folder in use or holding a previous run (unless ``overwrite``).
    ``use_cache``, ``reports``, ``report_products``: see :func:`run_process` (``reports`` defaults
    to ``now`` when ``make_reports``, else ``none``).
    ``on_start(n_products, n_files)`` is called once the manifest is known.
    """
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.panel import read_panel_file
    from tilpheno.study import load_study
    from tilpheno.provenance import start_record
    from tilpheno.release import load_release_spec

    if executor not in EXECUTORS:
        raise TableError(f"executor: {executor!r} is not one of {', '.join(EXECUTORS)}")
    if executor == "dask" and scheduler is None:
        raise TableError("executor dask needs a scheduler address (e.g. tcp://127.0.0.1:8786)")
    if not 0 < fmo_percentile < 100:
        raise TableError(f"fmo_percentile: {fmo_percentile} is not between 0 and 100")
    study = study if isinstance(study, Study) else load_study(study) if study is not None else default_study()
    panel = read_panel_file(panel_path) if panel_path is not None else None
    manifest = load_manifest(folder, manifest_csv, allow_outside=allow_outside, study=study)
    run_flags = [QCFlag("", display_name(where), "unlistable_folder", "error",
                        f"{display_name(where)}: folder cannot be listed ({reason}); its files were not processed")
                 for where, reason in manifest.attrs.get("unlistable", [])]
    if len(manifest) == 0 and run_flags:
        raise NoInputError(f"{folder}: no FCS files found; " + "; ".join(f.message for f in run_flags))
    if len(manifest) == 0:
        raise NoInputError(f"{folder}: no FCS files (.fcs, .lmd) found; nothing to process")
    from tilpheno.spillover import plan_compensation

    manifest, compensations = plan_compensation(manifest, compensation_path)
    if outcomes_path is not None:
        from tilpheno.io.outcomes import read_outcomes

        outcomes = read_outcomes(outcomes_path)
        unmatched = unmatched_outcomes(manifest, outcomes)
        if unmatched and not allow_unmatched:
            raise TableError(
                f"{outcomes_path}: {len(unmatched)} product id(s) match no product in {folder}: "
                f"{_did_you_mean(unmatched, manifest['product_id'].astype(str))}; "
                "fix the ids or pass allow_unmatched=True")
        if unmatched:
            log.warning("%s: product id(s) matching no product (allowed): %s", outcomes_path, ", ".join(unmatched))
        manifest = attach_doses(manifest, outcomes)
    paths = [Path(p) for p in (strategy_paths or study.strategy_paths)]
    strategies = tuple(load_strategy(p) for p in paths)
    spec = load_release_spec(release_spec_path) if release_spec_path else (study.release or DEFAULT_SPEC)
    record = start_record(
        command_line=command_line,
        parameters={
            "input_folder": str(folder), "manifest": str(manifest_csv or ""),
            "outcomes": str(outcomes_path or ""), "fmo_percentile": fmo_percentile,
            "include_identifiers": include_identifiers, "executor": executor, "jobs": n_jobs,
            "overwrite": overwrite, "allow_unmatched": allow_unmatched, "allow_outside": allow_outside,
            "reports": reports or ("now" if make_reports else "none"), "cache": use_cache,
            "compensation": str(compensation_path or ""),
            "study": study.source, "study_sha256": study.sha256, "panel": str(panel_path or ""),
        },
        strategy_paths=paths,
        release_spec={"name": spec.name, "source": spec.source, "sha256": spec.sha256,
                      "criteria": [c.describe() for c in spec.criteria]},
    )
    if on_start is not None:
        on_start(int(manifest["product_id"].nunique()), len(manifest))
    options = ProcessOptions(fmo_percentile=fmo_percentile, include_identifiers=include_identifiers,
                             make_reports=make_reports, release_spec=spec, study=study, panel=panel)
    return run_process(manifest, out_dir, strategies, record, options, executor=executor, n_jobs=n_jobs,
                       scheduler=scheduler, on_outcome=on_outcome, overwrite=overwrite, run_flags=run_flags,
                       use_cache=use_cache, reports=reports, report_products=report_products,
                       compensations=compensations)
