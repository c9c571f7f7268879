"""The whole ``process`` run: manifest, study, strategies and release spec, then every product.

:func:`process_folder` is the library form of ``tilpheno process``; whole-run problems (manifest,
study, strategies, panel, release spec, executor, unmatched outcome ids, the output folder) raise
``TilphenoError`` before any product runs. :func:`run_process` runs the jobs
(``tilpheno.pipeline.executors``), writes each report as its product finishes and the tables,
codebook, index and ``run.json`` into a staging folder that is published when complete
(``tilpheno.io.outdir``).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from tilpheno.errors import NoInputError, TableError
from tilpheno.io.files import display_name
from tilpheno.pipeline.executors import EXECUTORS, iter_outcomes
from tilpheno.pipeline.jobs import ProcessOptions, ProductJob, ProductOutcome, strategy_sources
from tilpheno.pipeline.outputs import _tables, report_path
from tilpheno.provenance import RunRecord
from tilpheno.qc import QCFlag
from tilpheno.release import DEFAULT_SPEC
from tilpheno.study import Study, default_study

log = logging.getLogger(__name__)


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
    compensations: Mapping | None = None,
) -> RunSummary:
    """Process every product of ``manifest`` into ``out_dir``; returns the summary.

    ``compensations``: product id -> ``tilpheno.spillover.CompensationChoice`` (from
    ``spillover.plan_compensation``); products not in it use their files' own ``$SPILLOVER``.

    The run claims ``out_dir`` (:class:`tilpheno.io.outdir.OutputFolder`: lock, staging, publish;
    a folder holding anything is refused unless ``overwrite``, which replaces what the previous
    run wrote). Reports are staged as products finish, tables at the end, every file atomically;
    the outputs appear in ``out_dir`` only when the run completes (``run.json`` last). A run that
    raises or is interrupted leaves ``out_dir`` as it was. ``record`` (from
    :func:`tilpheno.provenance.start_record`) is completed with the inputs' digests, the list of
    outputs and what was replaced, and written as ``run.json``. ``on_outcome`` is called in this
    process as each product finishes (progress bars). ``run_flags``: QC flags of the run itself
    (product id ''), written first in ``qc.csv``; an error among them makes the summary not ok.
    """
    from tilpheno.io.outdir import OutputFolder, OutputFolderError, describe_os_error

    if manifest is None or len(manifest) == 0:
        raise NoInputError("no FCS files to process (empty manifest)")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    options = dataclasses.replace(options, provenance_short=tuple(record.short().items()))
    sources = strategy_sources(strategies)
    jobs = [ProductJob(pid, rows, sources, options, (compensations or {}).get(pid))
            for pid, rows in group_products(manifest)]
    with OutputFolder.claim(out_dir, overwrite=overwrite, run_id=record.started_at) as folder:
        try:
            outcomes = _stage(folder.staging, jobs, options, record, t0, executor=executor, n_jobs=n_jobs,
                              scheduler=scheduler, on_outcome=on_outcome, folder=folder,
                              run_flags=run_flags, strategies=strategies)
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


def _stage(staging: Path, jobs, options: ProcessOptions, record: RunRecord, t0: float, *, executor, n_jobs,
           scheduler, on_outcome, folder, run_flags=(), strategies=()) -> list[ProductOutcome]:
    """Run the jobs and write every output into ``staging`` (``run.json`` last)."""
    from tilpheno.io import atomic
    from tilpheno.report.codebook import build_codebook
    from tilpheno.report.html import render_index

    outcomes = []
    for outcome in iter_outcomes(jobs, executor=executor, n_jobs=n_jobs, scheduler=scheduler):
        if outcome.traceback:
            log.error("product %s: %s (a bug, not bad input; traceback in the run log)", outcome.product_id, outcome.error)
            log.debug("product %s: traceback of the internal error\n%s", outcome.product_id, outcome.traceback.rstrip())
        else:
            log.info("product %s: %s", outcome.product_id, "done" if outcome.ok else f"failed: {outcome.error}")
        if outcome.report_html is not None:
            atomic.write_text(report_path(staging, outcome.product_id), outcome.report_html)
            outcome.report_html = None
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    outcomes.sort(key=lambda o: o.product_id)
    phenotypes, populations, qc = _tables(outcomes, run_flags)
    atomic.write_csv(staging / "phenotypes.csv", phenotypes)
    atomic.write_parquet(staging / "phenotypes.parquet", phenotypes)
    atomic.write_csv(staging / "populations.csv", populations)
    atomic.write_csv(staging / "qc.csv", qc)
    tables = {"phenotypes.csv": phenotypes.columns, "populations.csv": populations.columns, "qc.csv": qc.columns}
    atomic.write_csv(staging / "codebook.csv", build_codebook(tables, strategies, options.fmo_percentile, options.study))
    atomic.write_text(staging / "index.html", render_index(outcomes, options, strategies))
    record.finish({d.path: d for o in outcomes for d in o.files}.values(),   # shared control files once
                  time.perf_counter() - t0)
    record.extra.update(folder.record())
    atomic.write_text(staging / "run.json", record.to_json())
    return outcomes


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
) -> RunSummary:
    """The library form of ``tilpheno process``: manifest, strategies, release spec, then :func:`run_process`.

    ``study``: a Study, a bundled study name or a study.yaml path (default: the bundled TIL
    study); its strategies and release spec are used unless ``strategy_paths`` /
    ``release_spec_path`` are given. ``panel_path``: an override panel file (``tube, detector,
    marker``) applied to every file.
    Bad options or inputs that concern the whole run raise ``TilphenoError`` before any product is
    processed and before ``out_dir`` is touched: unreadable manifest, no FCS files
    (``NoInputError``), invalid study, strategy, panel or release spec, unknown executor, outcome ids that
    match no product (unless ``allow_unmatched``), manifest files outside ``folder`` (unless
    ``allow_outside``), an output folder in use or holding a previous run (unless ``overwrite``).
    ``on_start(n_products, n_files)`` is called once the manifest is known.
    """
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.panel import read_panel_file
    from tilpheno.provenance import start_record
    from tilpheno.release import load_release_spec
    from tilpheno.study import load_study

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
                       compensations=compensations)
