"""The outputs of a run, staged: cached products re-used, the others run, each outcome stored as it
arrives, reports published, the cohort tables (phenotypes, populations, qc, codebook), the index
pages and ``run.json`` written into the staging folder (``run.json`` last).

Tables are written in product-id order from the stored entries, so a re-run's, ``--jobs N``'s and
Dask's files are byte-identical to a fresh run's.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from tilpheno.errors import TableError
from tilpheno.io.files import display_name
from tilpheno.io.csvcells import counts_as_integers
from tilpheno.pipeline.executors import iter_outcomes
from tilpheno.pipeline.jobs import (ProcessOptions, ProductJob, ProductOutcome, outcome_from_record, outcome_record,
                                    product_slug)
from tilpheno.pipeline.record import write_run_record
from tilpheno.provenance import RunRecord
from tilpheno.qc import QCFlag

log = logging.getLogger(__name__)


def report_path(out_dir: Path, product_id: str) -> Path:
    """``OUT/products/<slug>/report.html``; raises if the result would not be inside OUT."""
    out_dir = Path(out_dir).resolve()
    path = (out_dir / "products" / product_slug(product_id) / "report.html").resolve()
    if out_dir not in path.parents:
        raise TableError(f"product id {product_id!r}: report path escapes the output folder")
    return path


def compensation_path(out_dir: Path, product_id: str) -> Path:
    """``OUT/products/<slug>/compensation.csv``: the matrix a product was compensated with when it
    was not its files' own ``$SPILLOVER`` (``process --compensation``, or single-stain controls)."""
    return report_path(out_dir, product_id).with_name("compensation.csv")


def _write_matrices(staging: Path, jobs: Sequence[ProductJob]) -> dict[str, dict]:
    """Write the matrix of every job compensated with an override or estimated matrix (FlowJo CSV
    layout, ``spillover.write_spillover_csv``), so the review app re-gates with the run's matrix.
    Returns ``{product_id: {file, sha256, source}}`` for ``run.json`` (file relative to OUT)."""
    from tilpheno.provenance import sha256_file
    from tilpheno.spillover import write_spillover_csv

    written = {}
    for job in jobs:
        choice = job.compensation
        if choice is None or choice.spillover is None:
            continue
        path = compensation_path(staging, job.product_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_spillover_csv(choice.spillover, path)
        written[job.product_id] = {"file": path.relative_to(staging.resolve()).as_posix(), "sha256": sha256_file(path),
                                   "source": choice.spillover.source}
    return written


def product_files(jobs: Sequence[ProductJob]) -> dict[str, dict[str, str]]:
    """``{product_id: {label: path}}`` for ``run.json``'s ``product_files``: each of a product's
    manifest files by the label its tables and flags name it with (``display_name`` of
    :func:`tilpheno.io.files.file_labels`: the file's name, or ``sub/X.fcs`` relative to the folder
    holding the product's files where two of them share a name), to its path as ``inputs`` lists it.
    The review app finds each product's own files by it where several products' folders hold files
    of one name (``P1/stain.fcs``, ``P2/stain.fcs``)."""
    from tilpheno.io.files import file_labels

    return {job.product_id: {display_name(label): path for path, label in file_labels(job.rows["file"]).items()}
            for job in jobs}


def product_file_roles(jobs: Sequence[ProductJob]) -> dict[str, dict[str, dict[str, str]]]:
    """``{product_id: {label: {tube, role, fmo_marker[, detector]}}}`` for ``run.json``'s
    ``product_file_roles``: what the manifest made each of a product's files (labels as
    :func:`product_files`), so the review app names the controls the run read but did not gate
    (an unstained control, a compensation set's single-stain controls and its detector when the
    manifest gives one) as the tables name the gated ones."""
    from tilpheno.io.files import file_labels

    def text(value) -> str:
        return value if isinstance(value, str) else ""

    out: dict[str, dict[str, dict[str, str]]] = {}
    for job in jobs:
        labels = file_labels(job.rows["file"])
        roles = out.setdefault(job.product_id, {})
        for row in job.rows.to_dict("records"):
            record = {key: text(row.get(key)) for key in ("tube", "role", "fmo_marker")}
            if text(row.get("detector")):
                record["detector"] = text(row.get("detector"))
            roles[display_name(labels[str(row["file"])])] = record
    return out


END_MODULES = ("tilpheno.report.codebook", "tilpheno.report.html", "jinja2", "pyarrow.parquet")
"""What the dispatching process needs to write the tables and index pages at the end of a run."""


def import_in_background(modules: Sequence[str] = END_MODULES):
    """Import ``modules`` in a daemon thread, then compile the index pages' templates
    (``report.html.INDEX_TEMPLATES``, 13-18 ms of CPU); returns the thread. With workers doing the
    products, the dispatching process would otherwise do both (pandas-based tables, Jinja2,
    pyarrow) only after the last product, in the run's serial tail. Called once the jobs are handed
    out (while the fork server still imports the workers' libraries, or once a Dask cluster holds
    the jobs), when this process does nothing else, they overlap with the products. An import or
    compilation that fails here is only logged: the same one at its point of use raises."""
    import importlib
    import threading

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as exc:   # raised again, with its traceback, where the module is used
                log.debug("background import of %s failed: %s", name, exc)
        try:
            from tilpheno.report.html import INDEX_TEMPLATES, compile_templates

            compile_templates(INDEX_TEMPLATES)
        except Exception as exc:   # raised again where the index pages are rendered
            log.debug("background compilation of the index templates failed: %s", exc)

    thread = threading.Thread(target=run, name="tilpheno-imports", daemon=True)
    thread.start()
    return thread


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

    from tilpheno.qc import needs_review

    phen_cols = _ordered_union(o.phenotype for o in outcomes)
    phenotypes = pd.DataFrame([o.phenotype for o in outcomes], columns=phen_cols)
    pops = [o.populations for o in outcomes if o.populations is not None and len(o.populations)]
    populations = pd.concat(pops, ignore_index=True) if pops else pd.DataFrame(
        columns=["product_id", "file", "tube", "role", "fmo_marker", "population", "parent", "count"])
    qc = pd.DataFrame(
        [{"product_id": f.product_id, "file": _flag_file(str(f.file)), "gate": f.gate, "gate_file": _flag_file(f.gate_file),
          "code": f.code, "severity": f.severity, "needs_review": needs_review(f), "message": f.message}
         for f in [*run_flags, *(f for o in outcomes for f in o.qc)]],
        columns=["product_id", "file", "gate", "gate_file", "code", "severity", "needs_review", "message"],
    )
    return phenotypes, populations, qc


def _flag_file(file: str) -> str:
    """A flag's file as ``qc.csv`` shows it ('' for none): its name, or the relative label that tells
    two files of one name apart (``sub/X.fcs``, :func:`tilpheno.io.files.file_labels`); an absolute
    path by its name; undecodable bytes as ``\\xNN`` (:func:`tilpheno.io.files.display_name`)."""
    import os

    return display_name(Path(file).name if os.path.isabs(file) else file) if file else ""


REPORT_MODES = ("now", "later", "none")


def _report_wanted(job: ProductJob, reports: str, selected) -> str:
    """``draw`` (the job draws its report), ``stored`` (publish a cached report if there is one) or ``no``."""
    if reports != "now":
        return "no"
    return "draw" if selected is None or job.product_id in selected else "stored"


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
    are byte-identical to a fresh run's. An entry stored under another release spec
    (``tilpheno.cache``) is re-used with its release decided again under this run's spec
    (``release_decided_again`` in ``run.json``), without its report; a product whose report is to
    be drawn is gated again instead (a report needs the events the entry does not keep). Returns
    the outcomes (no tables) sorted by id.
    """
    import hashlib
    import uuid

    from tilpheno.cache import ProductStore, job_files, job_key, product_key, release_identity
    from tilpheno.pipeline.product import decide_release_again
    from tilpheno.io import atomic
    from tilpheno.report.codebook import build_codebook
    from tilpheno.report.html import render_index_pages

    out_dir = folder.path
    store = ProductStore(out_dir, read=use_cache)
    store.check_folders()
    digests = store.inputs()
    selected = None if report_products is None else {str(p) for p in report_products}
    keys: dict[str, str] = {}
    done: dict[str, tuple[ProductOutcome, Path]] = {}
    todo, reused, redecided = {}, [], []
    spec_id = release_identity(options.release_spec)
    # an empty store (first run into OUT) or --no-cache: nothing to look up, so the inputs are not
    # hashed here; each product's key comes from the digests its job took of the bytes it read
    look_up = store.has_entries()
    for job in jobs:
        wanted = _report_wanted(job, reports, selected)
        job = dataclasses.replace(job, options=dataclasses.replace(job.options, make_reports=wanted == "draw"))
        entry = None
        if look_up:
            found = {f: digests.sha256(f) for f in job_files(job)}
            file_digests = {f: d for f, d in found.items() if d}
            key = product_key(job, file_digests) if len(file_digests) == len(found) else None
            entry = store.load(key, need_report=wanted == "draw") if key else None
            if key:
                keys[job.product_id] = key
        stale = entry is not None and entry.outcome.get("release_spec") != spec_id
        if entry is None or (stale and wanted == "draw"):   # a stored report shows the old spec's verdict
            todo[job.product_id] = job
            continue
        outcome = outcome_from_record(entry.outcome)
        if stale:
            decide_release_again(outcome, options.release_spec, job)
            redecided.append(outcome.product_id)
        outcome.has_report = wanted != "no" and entry.has_report and not stale
        if outcome.has_report:
            _publish_report(entry.report_path, report_path(staging, outcome.product_id))
        done[outcome.product_id] = (outcome, entry.populations_path)
        reused.append(outcome.product_id)
        log.info("product %s: %s, from the cache", outcome.product_id, "done" if outcome.ok else f"failed: {outcome.error}")
        if on_outcome is not None:
            on_outcome(outcome)
    run = uuid.uuid4().hex
    dispatched_ns = time.time_ns()
    on_dispatch = import_in_background if executor == "dask" or n_jobs > 1 else None
    for fresh in iter_outcomes(list(todo.values()), executor=executor, n_jobs=n_jobs, scheduler=scheduler,
                               on_dispatch=on_dispatch):
        if fresh.traceback:
            log.error("product %s: %s (a bug, not bad input; traceback in the run log)", fresh.product_id, fresh.error)
            log.debug("product %s: traceback of the internal error\n%s", fresh.product_id, fresh.traceback.rstrip())
        else:
            log.info("product %s: %s in %.1f s%s", fresh.product_id, "done" if fresh.ok else "failed", fresh.seconds,
                     "" if fresh.ok else f": {fresh.error}")
        job = todo[fresh.product_id]
        key = job_key(job, fresh)
        if key is not None:
            keys[fresh.product_id] = key
            read_from_ns = _read_from_ns(fresh, executor, dispatched_ns)
            estimated = _estimate_read_from_ns(job, read_from_ns)
            for d in fresh.files:  # identities for the next run's stat pre-check, as of before the reads
                digests.record(d.path, d.sha256, estimated.get(d.path, read_from_ns))
        else:
            key = f"run-{run}-{hashlib.sha256(fresh.product_id.encode('utf-8', 'surrogateescape')).hexdigest()}"
        entry = store.store(key, {**outcome_record(fresh), "release_spec": spec_id}, fresh.populations,
                            fresh.report_html)
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
    atomic.write_csv(staging / "phenotypes.csv", counts_as_integers(phenotypes))
    atomic.write_parquet(staging / "phenotypes.parquet", phenotypes)
    population_columns = _write_populations(staging / "populations.csv", [p for _, p in ordered])
    atomic.write_csv(staging / "qc.csv", qc)
    tables = {"phenotypes.csv": phenotypes.columns, "populations.csv": population_columns, "qc.csv": qc.columns}
    atomic.write_csv(staging / "codebook.csv", build_codebook(tables, strategies, options.fmo_percentile, options.study))
    shown_run_flags = qc.iloc[:len(run_flags)].to_dict("records")   # the run's own rows, first in qc.csv, as it shows them
    for name, page in render_index_pages(outcomes, options, strategies, run_flags=shown_run_flags):
        atomic.write_text(staging / name, page)
    cache = {"enabled": use_cache, "reused": sorted(reused), "release_decided_again": sorted(redecided),
             "processed": sorted(todo),
             "inputs_hashed": digests.hashed, "inputs_digest_reused": digests.reused}
    record.extra["compensation_matrices"] = _write_matrices(staging, jobs)
    record.extra["product_files"] = product_files(jobs)
    record.extra["product_file_roles"] = product_file_roles(jobs)
    write_run_record(staging / "run.json", record, outcomes, cache=cache, folder=folder, t0=t0, run_flags=run_flags)
    digests.save()
    store.prune(keys.values())
    return outcomes


def _read_from_ns(outcome: ProductOutcome, executor: str, dispatched_ns: int) -> int:
    """A moment (wall clock, ns) before the job of ``outcome`` read its files: its worker's own start
    (``started_ns``) when the worker ran on this machine (``local``: this process or a forked one,
    one clock), so that a product started long after the run (the tenth of a serial run) records
    its files as settled; else (Dask, whose workers may run on other machines and clocks) the
    moment the jobs were dispatched, read in this process."""
    return outcome.started_ns if executor == "local" and outcome.started_ns else dispatched_ns


def _estimate_read_from_ns(job: ProductJob, read_from_ns: int) -> dict[str, int]:
    """Each single-stain control of the job's matrix whose digest in the outcome is the estimate's
    (``CompensationChoice.digests``) -> a moment (ns) before the estimate read it
    (``CompensationChoice.read_from_ns``, in this process, before the run's jobs) when earlier than
    the job's ``read_from_ns``. A control replaced between its estimate and the job is then not
    recorded as settled under the digest of the bytes it had. A control the job hashed itself (the
    estimate failed before reading it) is left to the job's moment."""
    choice = job.compensation
    if choice is None:
        return {}
    return {str(f): min(read_from_ns, choice.read_from_ns) for f in choice.digests}


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
