"""One product end to end, in whichever process runs it: read the files' TEXT, gate the product
(``tilpheno.phenotype.analyze_product``), decide release, render the report.

:func:`process_product` never raises for bad input: a failing product comes back as ``ok=False``
with the reason, so one bad product never sinks the batch; an unreadable file is dropped from its
product with a QC flag ``unreadable_file`` and the product is gated from the files that remain.
A crash (a bug) is an ``internal_error`` with the worker's traceback in the outcome.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from tilpheno.errors import FCSReadError, TableError, TilphenoError
from tilpheno.qc import review_status
from tilpheno.io.files import display_name, file_labels
from tilpheno.pipeline.jobs import ProductJob, ProductOutcome, job_strategies, product_slug
from tilpheno.pipeline.release import ABSENT_COLUMN, release_decision
from tilpheno.provenance import FileDigest
from tilpheno.qc import QCFlag
from tilpheno.release import NOT_EVALUABLE, ReleaseSpec

log = logging.getLogger(__name__)
SEVERITY_ORDER = {"info": 0, "warning": 1, "error": 2}


def worst_severity(flags: Iterable) -> str:
    """``ok`` when there are no flags, else the highest severity (info < warning < error)."""
    worst, rank = "ok", -1
    for f in flags:
        r = SEVERITY_ORDER.get(str(f.severity).lower(), 1)
        if r > rank:
            worst, rank = str(f.severity).lower(), r
    return worst


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


def _read_metadata(rows, product_id: str, labels: dict[str, str]):
    """TEXT-segment read of every file: returns (readable rows, {file: FCSFile}, flags, digests,
    checked); ``labels``: file -> its name in flags (:func:`tilpheno.io.files.file_labels` of the
    product's rows).

    A row whose ``problem`` cell (``scan_folder``'s, ``read_manifest(keep_missing=True)``'s) is
    filled is not read: it is flagged ``unreadable_file`` with that problem (a link out of the
    folder, a file the manifest names that does not exist), as a file the reader refuses is.
    A stained file's DATA is also placed in the file (``data_check``), the check
    ``analyze_product`` makes of it: ``checked`` holds those that pass, by file, so that their TEXT
    is not read again for it. One that fails is still kept (its TEXT read without the check), for
    ``analyze_product`` to flag, as it flags any stained file whose DATA is not in the file."""
    from tilpheno.io.fcs import read_fcs_metadata

    meta, flags, digests, keep, checked = {}, [], [], [], {}
    problems = rows["problem"].tolist() if "problem" in rows.columns else [""] * len(rows)
    for i, (file, role, problem) in enumerate(zip(rows["file"].tolist(), rows["role"].tolist(), problems)):
        if not problem:
            try:
                if role == "stain":
                    try:
                        meta[file] = checked[str(file)] = read_fcs_metadata(file, data_check=True)
                    except FCSReadError:   # analyze_product reads it again and flags it
                        meta[file] = read_fcs_metadata(file)
                else:
                    meta[file] = read_fcs_metadata(file)
                keep.append(i)
                continue
            except FCSReadError as exc:
                problem = exc.problem
        flags.append(QCFlag(product_id, labels[str(file)], "unreadable_file", "error", problem))
        digests.append(_file_digest(file))
    return rows.iloc[keep].reset_index(drop=True), meta, flags, digests, checked


def no_stained_tube(product_id: str, rows) -> str:
    """Why a product has no stained file to gate: its stained files could not be read, or it has
    none (every file a control: e.g. a file without $PnS marker names is inferred ``unstained``)."""
    files = ", ".join(f"{Path(str(f)).name} ({role})" for f, role in zip(rows["file"], rows["role"]))
    if (rows["role"] == "stain").any():
        return f"product {product_id}: no readable stained tube (files: {files})"
    return (f"product {product_id}: no stained tube, only controls (files: {files}); a real control belongs to the "
            "product of the specimen it was acquired with: give its manifest row that product_id; a stained file "
            "without $PnS marker names is taken as an unstained control: name its detectors' markers in a panel file "
            "(--panel; columns tube, detector, marker), which makes it a stained file (a manifest's role alone "
            "gives it no markers)")


FILE_ERROR_CODES = ("unreadable_file", "panel_error", "compensation_error", "fmo_copy_of_stain")
"""QC codes that drop a file from its product."""


def file_tubes(rows, roles: Sequence[str] | None = None) -> dict[str, str]:
    """A product's files as its QC flags name them (``file_labels`` of its manifest rows) -> their
    tube kind (the manifest's ``tube``), for the rows whose role is one of ``roles`` (None: every row)."""
    labels = file_labels(rows["file"])
    return {labels[str(f)]: str(t) for f, t, role in zip(rows["file"], rows["tube"], rows["role"])
            if roles is None or role in roles}


def release_inputs(job: ProductJob) -> dict:
    """What :func:`release_decision` needs of a product beyond its row and flags: the strategies,
    the study's doses, and the tube kind of each stained and FMO file (the unstained control serves
    every tube kind: a flag on its gates holds the gate of that name in each)."""
    return {"strategies": job_strategies(job), "doses": job.options.study.doses,
            "tube_of": file_tubes(job.rows, ("stain", "fmo"))}


def absent_tubes(rows, strategies: Sequence, optional: Iterable[str]) -> tuple[str, ...]:
    """The tube kinds of ``optional`` (``Study.optional_tubes``) that the run's ``strategies`` gate
    and of which the product's manifest ``rows`` hold no file at all (stained, FMO or other), in
    strategy order: the product was not stained with that panel, its variables are blank."""
    present, optional = set(rows["tube"].astype(str)), set(optional)
    return tuple(str(s.tube) for s in strategies if str(s.tube) in optional and str(s.tube) not in present)


def absent_tube_flags(product_id: str, absent: Sequence[str], strategies: Sequence) -> list[QCFlag]:
    """An info flag ``absent_tube`` per optional tube kind the product has no file of (:func:`absent_tubes`),
    naming the variables left blank."""
    flags = []
    for kind in absent:
        names = [v.name for s in strategies if str(s.tube) == kind for v in s.variables]
        flags.append(QCFlag(product_id, "", "absent_tube", "info",
                            f"no {kind} file: tube kind {kind} is optional in the study, its variables are blank "
                            f"({', '.join(names) or 'none'})"))
    return flags


def absent_columns(absent: Sequence[str], strategies: Sequence, optional: Iterable[str]) -> dict[str, Any]:
    """The phenotype columns a product's gating gives no value for because it has no file of an
    optional tube kind (``absent``, :func:`absent_tubes`): those kinds' event counts (NaN, as their
    variables), then :data:`ABSENT_COLUMN` naming them; nothing in a study without optional kinds."""
    if not optional:
        return {}
    counts = {c: math.nan for s in strategies if str(s.tube) in absent for c in s.count_columns()}
    return {**counts, ABSENT_COLUMN: "; ".join(absent)}


def failure_reason(tubes: Sequence, flags: Sequence[QCFlag], strategies: Sequence, rows=None,
                   absent: Sequence[str] = (), optional: Iterable[str] = ()) -> str:
    """Why a gated product is *failed* (``''`` when it is usable). The one definition:

    * a tube kind that the run's strategies gate has no usable stained file (none in the
      manifest, or every one unreadable, with a panel error or a compensation error): every
      variable of that strategy is unknowable; except a kind of ``absent`` (:func:`absent_tubes`:
      optional in the study, and no file of it in the product), whose variables are blank;
    * a gate failed (``gate_failed``) on the stained file whose counts give the variables: the
      populations below it are empty, so the variables are unknowable (not 0).

    Missing FMO tubes are not failures: the fallback gate is flagged (``missing_fmo``,
    ``fallback_gate``) and the product stays usable. ``tubes`` are the gated TubeResults, ``flags``
    every QC flag of the product; ``rows`` (its manifest rows) lets the message name the dropped
    files of each tube kind, and the kind's other files when it has no stained one, with what to do
    (:func:`_without_stain`; ``optional``: ``Study.optional_tubes``).
    """
    tube_of = file_tubes(rows) if rows is not None else {}
    stained = set(file_tubes(rows, ("stain",))) if rows is not None else set()
    used: dict[str, str] = {}   # tube kind -> the stained file whose counts give the variables
    for tube in tubes:
        if tube.role == "stain":
            used.setdefault(str(tube.tube), tube.shown_name)
    reasons = []
    for strategy in strategies:
        kind = str(strategy.tube)
        if kind in absent:
            continue
        if kind not in used:
            dropped = [f for f in flags if f.code in FILE_ERROR_CODES and tube_of.get(f.file) == kind]
            detail = _dropped_files(dropped, stained) if dropped else \
                f"no {kind} stained file in the manifest{_without_stain(rows, kind, kind in set(optional))}"
            reasons.append(f"no usable {kind} stained file ({detail}): {kind} variables unknowable")
            continue
        for f in flags:
            if f.code == "gate_failed" and f.file == used[kind]:
                reasons.append(f"{f.file}: gate failed ({f.message}): {kind} variables unknowable")
    return "; ".join(reasons)


def _dropped_files(dropped: Sequence[QCFlag], stained: set[str]) -> str:
    """What :func:`failure_reason` says of a tube kind's files that were dropped (``dropped``: their
    file-error flags): ``file: code: why`` for each stained one (of ``stained``; for each file when
    none is), by its ``headline`` (a panel error's: :func:`tilpheno.panel.panel_error_headline`, the
    markers not found, without the file's path and channels), then how many other files of the kind
    were dropped; when a message was shortened, that ``qc.csv`` holds each in full."""
    shown = [f for f in dropped if f.file in stained] or list(dropped)
    parts = [f"{f.file}: {f.code}: {f.headline or f.message}" for f in shown]
    others = len(dropped) - len(shown)
    if others:
        parts.append(f"{others} other file{'s' if others > 1 else ''} of the kind dropped too")
    if any(f.code == "panel_error" for f in shown):
        parts.append("qc.csv has each file's message in full: its channels, and how a panel file names the marker "
                     "of an unlabelled detector")
    return "; ".join(parts)


def _without_stain(rows, kind: str, optional: bool) -> str:
    """The tail of the failure of a product whose manifest ``rows`` hold files of tube kind ``kind``
    but no stained one (an FMO without its stained tube): those files and what to do, '' when
    there are none. An ``optional`` kind is said so: with no file of it at all the product is done."""
    if rows is None:
        return ""
    files = rows[rows["tube"].astype(str) == kind]
    if files.empty:
        return ""
    names = ", ".join(f"{Path(str(f)).name} ({role})" for f, role in zip(files["file"], files["role"]))
    rows_of = "their manifest rows" if len(files) > 1 else "its manifest row"
    tail = (f"; tube kind {kind} is optional: with no {kind} file at all ({rows_of} deleted) the product is done, "
            f"its {kind} variables blank" if optional else "")
    return (f", only {names}: add the product's {kind} stained file to the folder and manifest, or give {rows_of} the "
            f"product_id of the specimen {'they were' if len(files) > 1 else 'it was'} acquired with{tail}")


def ungated_tube_flags(product_id: str, rows, strategies: Sequence) -> list[QCFlag]:
    """A warning ``ungated_tube`` per tube kind whose stained or FMO files no strategy of the run
    gates (controls, i.e. unstained and single-stain files, are not flagged: a strategy gates the
    unstained control only where a gate names it as its control, ``control: unstained``)."""
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


def _analyze(job: ProductJob, rows, checked=None):
    """Gate the product's readable ``rows`` (``analyze_product`` flags and drops files it cannot
    read; it does not raise for them), its files named as among all the product's files
    (:func:`tilpheno.io.files.file_labels`), as :func:`_read_metadata` names those it dropped;
    ``checked``: :func:`_read_metadata`'s stained files whose DATA it placed."""
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
        study=job.options.study, panel_override=job.options.panel, labels=file_labels(job.rows["file"]),
        checked=checked, blocks=_blocks(),
    )


def _compensation_control_flags(job: ProductJob, rows, meta, labels: Mapping[str, str]) -> list[QCFlag]:
    """The single-stain controls the product's matrix was estimated from against its stained files'
    acquisition settings (:func:`tilpheno.control_settings.compensation_control_flags`); none when
    the matrix is not estimated from controls. Each control's settings are those its estimate read
    (``CompensationChoice.texts``), not the file's now: a control replaced since is compared as the
    matrix saw it. A control the estimate did not read is left out and logged."""
    from tilpheno.control_settings import compensation_control_flags

    choice = job.compensation
    if choice is None or choice.spillover is None or not choice.files:
        return []
    controls = {}
    for file in choice.files:
        if file in choice.texts:
            controls[Path(file).name] = choice.texts[file]
        else:
            log.warning("%s: compensation control not compared with the stained files: its estimate did not read it", file)
    stained = {labels[str(f)]: meta[f] for f, role in zip(rows["file"], rows["role"]) if role == "stain" and f in meta}
    return compensation_control_flags(job.product_id, controls, stained, choice.spillover.detectors)


_THREAD = threading.local()


def _blocks():
    """This thread's ``compensation.BlockPool``: the products a worker (or a ``--jobs 1`` run) gates
    one after the other decode their events and write their compensated arrays into the blocks of
    the one before, not into fresh pages the kernel must zero. Between products it keeps at most
    the blocks one product had in use at once."""
    from tilpheno.compensation import BlockPool

    if not hasattr(_THREAD, "blocks"):
        _THREAD.blocks = BlockPool()
    return _THREAD.blocks


def _file_digest(file) -> FileDigest:
    """SHA-256 of a file the reader could not use (or whose worker died); ``unreadable`` if it cannot be opened."""
    from tilpheno.provenance import UNREADABLE, sha256_file

    try:
        return FileDigest(str(file), sha256_file(file))
    except OSError:
        return FileDigest(str(file), UNREADABLE)


def _digest(file, holder) -> FileDigest:
    """``holder.sha256`` (an FCSFile or TubeResult); ``changed: ...`` when the reader refuses to hash
    a file that changed or vanished since it was read (:func:`tilpheno.io.fcs.digest_of_read`)."""
    from tilpheno.io.fcs import digest_of_read

    return FileDigest(str(file), digest_of_read(holder))


def _control_set_digests(choice) -> list[FileDigest]:
    """The single-stain controls of a product's matrix (a CompensationChoice), each with the digest
    of the bytes its estimate read (``choice.digests``); hashed from the disk now only when the
    estimate failed before reading it."""
    return [FileDigest(str(f), choice.digests[f]) if choice.digests.get(f) else _file_digest(f) for f in choice.files]


def _populations_long(product_id: str, tubes) -> object:
    import pandas as pd

    frames = []
    for t in tubes:
        pops = t.populations.copy()
        head = {"product_id": product_id, "file": display_name(t.shown_name), "tube": t.tube, "role": t.role,
                "fmo_marker": t.fmo_marker or ""}
        for i, (k, v) in enumerate(head.items()):
            pops.insert(i, k, v)
        frames.append(pops)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def process_product(job: ProductJob) -> ProductOutcome:
    """Run one product end to end; never raises on bad input (returns ``ok=False`` with the reason).
    Before the process's first product, what its imports made is frozen (``gc.freeze``, see
    :func:`_collect_garbage`): the first product's collections do not walk the libraries either;
    and large arrays are put on the heap (:func:`large_arrays_on_heap`)."""
    if not _FROZEN:
        import gc

        gc.freeze()
        large_arrays_on_heap()
    outcome = _process_product(job)
    _collect_garbage()   # the product's cycles are gone before the next product; its freed heap is kept for it
    return outcome


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20   # glibc's largest dynamic mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD   # glibc keeps the trim threshold at twice the mmap threshold


def warm_up() -> None:
    """Do now the one-time work of a process's first product that a process forked from this one
    would otherwise repeat: in the ``--jobs N`` fork server after its imports (each worker forked
    from it starts with the results) and in a Dask worker at start-up (before its first task).
    Compiles the product report's templates (:func:`tilpheno.report.html.compile_templates`, 24 ms
    of CPU) and inspects the BLAS/OpenMP thread pools (``gates.placement._threadpools``,
    threadpoolctl, 9 ms). The same templates and pools as the first product would find: no result
    changes. Fonts are not opened here: an open font reads its file through one descriptor, whose
    offset forked processes would share."""
    from tilpheno.gates.placement import _threadpools
    from tilpheno.report.html import compile_templates

    compile_templates()
    _threadpools()


def large_arrays_on_heap() -> bool:
    """Set glibc's heap thresholds where its dynamic rule ends: allocations up to 32 MiB from the
    heap (not ``mmap``), the heap top trimmed beyond 64 MiB free. Returns True when set (glibc only).

    glibc starts at 128 KiB and raises the mmap threshold only when a mapped chunk is freed, to that
    chunk's size (the trim threshold to twice it). A worker's largest arrays, its blocks
    (:func:`_blocks`), are never freed, so the thresholds stay near the largest temporary freed so
    far: a file's columns and masks (1.6 MB and 0.2 MB each at 200,000 events, several alive at
    once) are mapped or trimmed when freed and come back as fresh pages the kernel zeroes, file
    after file (``process --jobs 1`` on the 4 x 9 x 200,000-event benchmark folder: 150,000-190,000
    page faults, 79,000 with these thresholds). The heap a product freed is not given back to the
    system (:func:`_collect_garbage`): the next product's arrays take the same pages."""
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("glibc heap thresholds set (mmap %d, trim %d): %s", MMAP_THRESHOLD, TRIM_THRESHOLD, done)
    return done


def _collect_garbage() -> None:
    """Collect cyclic garbage after a product (free it now, not at some later collection). The
    heap pages the product's arrays freed stay with the process: the next product's arrays, of the
    same sizes, take them again instead of fresh pages the kernel must zero (glibc's
    ``malloc_trim(0)`` here gave them back after every product: on the 4 x 200,000-event benchmark
    folder 71,000 page faults a ``--jobs 1`` run against 48,000, 0.35-0.7 s more system CPU). A
    process's memory stays flat all the same: its peak is that of its largest product (the
    200-product folder's peak within 10 % of 20 products', benchmarks/README.md, issue 18).

    After the process's first collection here, what is still alive is frozen (``gc.freeze``, once
    per process): mostly the libraries the first product imported and their caches, which live as
    long as the process. Every later collection (this one after each product, and the automatic
    full ones) then walks only what was made since, not those objects again (a 200,000-event
    product of the benchmark folder: 0.065 s per collection before, under 0.01 s after). A frozen
    object is still freed by its reference count; only a reference cycle among frozen objects
    would stay, at most what the first product left alive."""
    global _FROZEN
    import gc

    gc.collect()
    if not _FROZEN:
        gc.freeze()
        _FROZEN = True


_FROZEN = False   # gc.freeze() done in this process (_collect_garbage)


def _process_product(job: ProductJob) -> ProductOutcome:
    start = time.perf_counter()
    pid, spec = job.product_id, job.options.release_spec
    flags: list = []
    digests: list[FileDigest] = []
    result, meta, error, crash = None, {}, "", ""
    optional = job.options.study.optional_tubes
    absent = absent_tubes(job.rows, job_strategies(job), optional)
    try:
        labels = file_labels(job.rows["file"])
        rows, meta, flags, digests, checked = _read_metadata(job.rows, pid, labels)
        if not (rows["role"] == "stain").any():
            raise TableError(no_stained_tube(pid, job.rows))
        flags += ungated_tube_flags(pid, job.rows, job_strategies(job))
        flags += absent_tube_flags(pid, absent, job_strategies(job))
        result = _analyze(job, rows, checked)
        flags = list(result.qc) + flags + _compensation_control_flags(job, rows, meta, labels)
        error = failure_reason(result.tubes, flags, job_strategies(job), job.rows, absent, optional)
    except TilphenoError as exc:
        error = str(exc)
    except Exception as exc:  # a bug, not bad input: keep the traceback (the parent logs it), keep the batch going
        import traceback

        crash = traceback.format_exc()
        error = f"internal error {type(exc).__name__}: {exc}"
    # file names that are not UTF-8 (surrogate escapes) shown as \xNN in every message, as the tables'
    # file column shows them: the tables, the parquet file and the report are written as UTF-8
    error = display_name(error)
    flags = [replace(f, message=display_name(f.message), headline=display_name(f.headline)) for f in flags]
    if job.compensation is not None:   # the single-stain controls the product's matrix came from
        digests += _control_set_digests(job.compensation)
    if result is not None:
        gated = {**_controls_by_file(result.controls), **_by_file(result.tubes)}
        digests += [_digest(f, t) for f, t in gated.items()]
        digests += [_digest(f, m) for f, m in meta.items() if str(f) not in gated]
    else:
        seen = {d.path for d in digests}
        digests += [_digest(f, m) for f, m in meta.items() if str(f) not in seen]
    if error:
        flags.append(QCFlag(pid, "", "internal_error" if crash else "product_failed", "error", error))
    phenotype = {"product_id": pid, **{k: v for k, v in (result.phenotype if result else {}).items() if k != "product_id"},
                 **absent_columns(absent, job_strategies(job), optional)}
    release, release_status = release_decision(spec, phenotype, flags, usable=bool(result) and not error,
                                               **release_inputs(job))
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
    """The product's report; if drawing it fails, a report without plots and a ``report_failed`` flag.
    Text in plots (detector, marker, population and product names) is SVG text, shown literally
    (``report.svg``): a '$', '_' or '^' from the inputs is never parsed as mathtext."""
    from tilpheno.report.product import render_product

    try:
        outcome.report_html = render_product(outcome, result, meta, job.options, job_strategies(job))
    except Exception as exc:  # a plotting bug must not sink the product's tables
        log.exception("product %s: report failed", outcome.product_id)
        outcome.qc.append(QCFlag(outcome.product_id, "", "report_failed", "error", f"{type(exc).__name__}: {exc}"))
        outcome.phenotype.update(qc_status=worst_severity(outcome.qc), n_qc_flags=len(outcome.qc))
        outcome.report_html = render_product(outcome, None, meta, job.options)


STATUS_COLUMNS = ("status", "error", "release_status", "review_status", "qc_status", "n_qc_flags", "n_files",
                  "n_events_total")
"""The columns :func:`_status_columns` adds to a phenotype row after its release is decided."""


def decide_release_again(outcome: ProductOutcome, spec: ReleaseSpec, job: ProductJob) -> None:
    """Decide a stored outcome's release under ``spec`` (in place: ``release``, ``release_status``
    and the row's ``release_status``), as :func:`_process_product` decides it: on the phenotype row
    without its :data:`STATUS_COLUMNS` (added after the decision), with the product's QC flags (a
    ``report_failed`` flag, added after it, holds no release: ``qc.needs_review``), a failed product
    not evaluated. For a run whose release spec is not the one the outcome was stored under
    (``tilpheno.cache``): the result equals gating the product again under ``spec``."""
    row = {k: v for k, v in outcome.phenotype.items() if k not in STATUS_COLUMNS}
    outcome.release, outcome.release_status = release_decision(spec, row, outcome.qc, usable=outcome.ok,
                                                               **release_inputs(job))
    outcome.phenotype["release_status"] = outcome.release_status


def _status_columns(outcome: ProductOutcome, result, n_files: int) -> dict:
    """The :data:`STATUS_COLUMNS` of a product's phenotype row, in that order."""
    cols = {
        "status": "done" if outcome.ok else "failed",
        "error": outcome.error,
        "release_status": outcome.release_status,
        "review_status": review_status(outcome.qc),   # a failed product's product_failed flag needs review
        "qc_status": worst_severity(outcome.qc),
        "n_qc_flags": len(outcome.qc),
        "n_files": n_files,
    }
    cols["n_events_total"] = sum(int(t.n_events) for t in _by_file(result.tubes).values()) if result else 0
    return cols


def _by_file(tubes) -> dict:
    """File -> its TubeResult, once per file (an unstained control may serve two tube kinds)."""
    return {str(t.file): t for t in tubes}


def _controls_by_file(controls) -> dict:
    """File -> the FCSFile its events were first read from for the gates (``ProductResult.controls``:
    an unstained control is read once per tube kind it serves), so that its digest is that of the
    bytes gated, not of the metadata read before (a file replaced between the two reads is recorded
    ``changed: ...``, as any file read for the gates and changed since)."""
    out: dict = {}
    for _, fcs in controls:
        out.setdefault(str(fcs.path), fcs)
    return out


def crashed_outcome(job: ProductJob, reason: str) -> ProductOutcome:
    """A failed outcome built in this process for a job whose worker never returned."""
    digests = [_file_digest(file) for file in job.rows["file"].tolist()]
    outcome = ProductOutcome(
        product_id=job.product_id, slug=product_slug(job.product_id), ok=False, error=reason,
        phenotype={"product_id": job.product_id}, populations=None,
        qc=[QCFlag(job.product_id, "", "product_failed", "error", reason)], release=[],
        release_status=NOT_EVALUABLE, files=sorted(digests, key=lambda d: d.path), crashed=True,
    )
    outcome.phenotype.update(_status_columns(outcome, None, len(job.rows)))
    if job.options.make_reports:
        _render(outcome, None, {}, job)
    return outcome
