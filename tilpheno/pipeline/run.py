"""The ``process`` run: options checked, inputs loaded, jobs built, the output folder claimed,
everything staged (:mod:`tilpheno.pipeline.outputs`) and published, the summary returned."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

from tilpheno.errors import NoInputError, RunStoppedError, StudyError, TableError, TilphenoError
from tilpheno.io.files import display_name
from tilpheno.pipeline.executors import EXECUTORS
from tilpheno.pipeline.inputs import (UnfitStain, _did_you_mean, attach_doses, group_products, listed_unfit_stains,
                                      load_manifest, products_without_dose, strategy_detectors, strategy_markers,
                                      unmatched_outcomes)
from tilpheno.pipeline.jobs import ProcessOptions, ProductJob, ProductOutcome, strategy_sources
from tilpheno.pipeline.outputs import REPORT_MODES, _stage
from tilpheno.pipeline.record import keep_run_command, start_run_record, unreadable_inputs, unusable_inputs
from tilpheno.provenance import RunRecord
from tilpheno.qc import QCFlag
from tilpheno.pipeline.release import not_evaluable_reason
from tilpheno.release import DEFAULT_SPEC, NOT_EVALUABLE
from tilpheno.study import Study, default_study

if TYPE_CHECKING:
    import pandas as pd

    from tilpheno.panel import PanelOverrides
    from tilpheno.release import ReleaseSpec

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """End-of-run summary: products done, failed (id -> reason), QC flag counts by code and each
    code's worst severity (info < warning < error), release outcomes (pass / fail / not
    evaluable -> count) under the named spec, duration."""

    out_dir: Path
    n_products: int
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    flag_counts: dict[str, int] = field(default_factory=dict)
    flag_severity: dict[str, str] = field(default_factory=dict)
    release_counts: dict[str, int] = field(default_factory=dict)
    not_evaluable: dict[str, int] = field(default_factory=dict)   # why (release.not_evaluable_reason) -> products
    release_spec: str = ""
    seconds: float = 0.0
    run_flags: list = field(default_factory=list)   # QCFlags of the run itself (product_id ''), e.g. unlistable_folder
    unreadable: list[str] = field(default_factory=list)   # '<product>: <file>: <problem>' (record.unreadable_inputs)
    unusable: list[str] = field(default_factory=list)   # '<product>: <file>: <code>: <problem>' (record.unusable_inputs)
    unfit: list[UnfitStain] = field(default_factory=list)   # failed stained files of another lab's panel (failed_unfit_stains)
    study: Study | None = None   # the run's study (tube kinds named beside ``unfit``)

    @property
    def ok(self) -> bool:
        """No product failed, every input file was read and used (no ``unreadable_file`` flag, no
        ``unusable`` file: a product done without an unreadable FMO file, or one that is its stained
        file copied, is flagged, not failed) and the run met no error of its own (e.g. a folder it
        could not list)."""
        return (not self.failed and not self.unreadable and not self.unusable
                and not any(f.severity == "error" for f in self.run_flags))


def run_process(
    manifest,
    out_dir: str | Path,
    strategies: Sequence,
    record: RunRecord,
    options: ProcessOptions | None = None,
    *,
    executor: str = "local",
    n_jobs: int = 1,
    scheduler=None,
    on_start: Callable[[int, int], None] | None = None,
    on_outcome: Callable[[ProductOutcome], None] | None = None,
    overwrite: bool = False,
    run_flags: Sequence[QCFlag] = (),
    use_cache: bool = True,
    reports: str | None = None,
    report_products: Iterable[str] | None = None,
    compensations: Mapping | None = None,
    scans=None,
) -> RunSummary:
    """Process every product of ``manifest`` into ``out_dir``; returns the summary.

    ``compensations``: product id -> ``tilpheno.spillover.CompensationChoice`` (from
    ``spillover.plan_compensation``); products not in it use their files' own ``$SPILLOVER``.
    ``scans``: the ``tilpheno.cache.ScanIndex`` the manifest was scanned with, saved into
    ``OUT/.cache`` once the folder is claimed.

    The run claims ``out_dir`` (:class:`tilpheno.io.outdir.OutputFolder`: lock, staging, publish;
    a folder holding anything is refused unless ``overwrite``, which replaces what the previous
    run wrote). Reports are staged as products finish, tables at the end, every file atomically;
    the outputs appear in ``out_dir`` only when the run completes (``run.json`` last). A run that
    raises or is interrupted leaves ``out_dir``'s outputs as they were. ``record`` (from
    :func:`tilpheno.provenance.start_record`) is completed with the inputs' digests, the list of
    outputs and what was replaced, and written as ``run.json``. ``on_outcome`` is called in this
    process as each product finishes (progress bars), ``on_start(n_products, n_files)`` once the
    output folder is claimed (a refused folder starts no progress bar). ``run_flags``: QC flags of the run itself
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
    from tilpheno.io.outdir import OutputFolder, left_behind, unwritable

    if manifest is None or len(manifest) == 0:
        raise NoInputError("no FCS files to process (empty manifest)")
    options = ProcessOptions() if options is None else options   # not a default argument: it loads the bundled study
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
    from tilpheno.io.outdir import STANDARD_OUTPUTS

    tables = tuple(name for name in STANDARD_OUTPUTS if name != "products")   # the files every run writes at OUT's top
    created = not out_dir.exists()
    try:   # an OSError is reported once the claim is released: what it left of OUT is then known
        with OutputFolder.claim(out_dir, overwrite=overwrite, run_id=record.started_at, writes=tables) as folder:
            if on_start is not None:
                on_start(len(jobs), len(manifest))
            outcomes = _stage(folder.staging, jobs, options, record, t0, executor=executor, n_jobs=n_jobs,
                              scheduler=scheduler, on_outcome=on_outcome, folder=folder,
                              run_flags=run_flags, strategies=strategies, use_cache=use_cache, reports=reports,
                              report_products=report_products)
            if scans is not None:
                scans.save()
            folder.publish()
    except OSError as exc:
        raise unwritable(exc, out_dir, created=created) from None
    except RunStoppedError as exc:
        raise RunStoppedError(f"{exc}; {left_behind(out_dir, created)}") from None
    from tilpheno.pipeline.product import worst_severity

    summary = RunSummary(out_dir=out_dir, n_products=len(outcomes), seconds=record.duration_s,
                         release_spec=options.release_spec.name, run_flags=list(run_flags),
                         unreadable=unreadable_inputs(outcomes), unusable=unusable_inputs(outcomes), study=options.study,
                         unfit=failed_unfit_stains(manifest, outcomes, strategies, options))
    by_code: dict[str, list[QCFlag]] = {}
    for o in outcomes:
        summary.release_counts[o.release_status] = summary.release_counts.get(o.release_status, 0) + 1
        if o.release_status == NOT_EVALUABLE:
            why = not_evaluable_reason(o.release, usable=o.ok)
            summary.not_evaluable[why] = summary.not_evaluable.get(why, 0) + 1
        if o.ok:
            summary.done.append(o.product_id)
        else:
            summary.failed[o.product_id] = o.error
        for f in o.qc:
            by_code.setdefault(f.code, []).append(f)
    for f in run_flags:
        by_code.setdefault(f.code, []).append(f)
    summary.flag_counts = {code: len(flags) for code, flags in sorted(by_code.items())}
    summary.flag_severity = {code: worst_severity(flags) for code, flags in by_code.items()}
    return summary


def failed_unfit_stains(manifest, outcomes: Sequence[ProductOutcome], strategies: Sequence,
                        options: ProcessOptions) -> list[UnfitStain]:
    """The stained files of the failed products (``outcomes``) dropped for a panel error whose
    markers fit no tube kind of the run's ``strategies`` (:func:`tilpheno.pipeline.inputs.unfit_stains`):
    another lab's panel read as the study's kinds. Each file's markers are read from its TEXT with
    the run's panel file (``options.panel``), as ``scan`` reads them; a file that cannot be read is
    left out (logged). Nothing is read when no product failed."""
    from tilpheno.io.files import file_labels

    dropped = {(o.product_id, f.file) for o in outcomes if not o.ok for f in o.qc if f.code == "panel_error"}
    if not dropped:
        return []
    import pandas as pd

    groups = []
    for pid, group in manifest.groupby(manifest["product_id"].astype(str), sort=True):
        labels = file_labels(group["file"])   # the files as the product's flags name them
        groups.append(group[[(pid, labels[str(f)]) in dropped and role == "stain"
                             for f, role in zip(group["file"], group["role"])]])
    return listed_unfit_stains(pd.concat(groups), options.study,
                               (strategy_markers(strategies), strategy_detectors(strategies)), options.panel)


def _absolute(path):
    """``path`` made absolute against the working directory (``..`` folded, links kept); None stays None."""
    import os

    return None if path is None else Path(os.path.abspath(path))


def _strategy_variables(strategies: Sequence) -> tuple[set[str], str]:
    """The variables the strategies define, and their files' names (for messages)."""
    return {v.name for st in strategies for v in st.variables}, ", ".join(Path(st.path).name for st in strategies)


def check_study_names(study: Study, strategies: Sequence, spec) -> None:
    """Refuse (``StudyError``, one line naming the file and key) a study whose ``variables``, a
    dose's ``variable`` or a ``qc.expected`` variable is defined by none of its strategies, or whose
    release spec judges a column that is neither such a variable, a dose, the infused dose
    ``til_dose_cells`` nor an event count of a strategy (``Strategy.count_columns``: what the
    phenotype row holds when the release is judged, in ``process`` and in the review app; not
    ``n_events_total``, which sums the controls' events too): each would be NaN for every product
    (its criterion never evaluable), silently."""
    defined, files = _strategy_variables(strategies)
    doses = {d.name for d in study.doses}
    named = [("variables", v) for v in study.variables]
    named += [(f"doses.{d.name}.variable", d.variable) for d in study.doses]
    named += [("qc.expected", e.variable) for e in study.qc.expected]
    for where, name in named:
        if name not in defined:
            raise StudyError(_at_line(f"{study.source}: {where}: {_did_you_mean([name], defined)} is defined by none of "
                                      f"its strategies ({files})", study.source, name))
    counts = {column for st in strategies for column in st.count_columns()}
    for i, c in enumerate(spec.criteria):
        if c.column in defined | doses | counts | {"til_dose_cells"}:
            continue
        if c.column.startswith("n_"):
            raise StudyError(_at_line(f"{spec.source}: criteria[{i}].column: criterion {c.name!r}: column "
                                      f"{_did_you_mean([c.column], counts)} is no event count a release can judge "
                                      f"(the stained files' counts: {', '.join(sorted(x for x in counts if x.startswith('n_events_')))} "
                                      "and n_<population>_<tube> of the variables' populations)", spec.source))
        raise StudyError(_at_line(f"{spec.source}: criteria[{i}].column: criterion {c.name!r}: column "
                                  f"{_did_you_mean([c.column], defined | doses)} is no variable or dose of the "
                                  f"study ({files})", spec.source))


def _at_line(message: str, source: str, value: object = None) -> str:
    """``message`` with the line of its key in the file ``source`` (a study or spec path; a bundled
    one's label is no path and is left as is)."""
    from tilpheno.io.yamlsafe import with_line

    try:
        raw = Path(source).read_bytes()
    except OSError:
        return message
    return with_line(message, source, raw, value)


def study_mismatch(study: Study, strategies: Sequence, spec) -> list[QCFlag]:
    """A run-level warning when strategies given on their own define none of the study's
    variables: every study column would be empty and its release spec never evaluable."""
    defined, files = _strategy_variables(strategies)
    if not study.variables or defined & set(study.variables):
        return []
    return [QCFlag("", "", "study_mismatch", "warning",
                   f"the strategies ({files}) define none of study {study.name}'s variables "
                   f"({', '.join(study.variables[:3])}, ...): those columns stay empty and the release spec "
                   f"{spec.name!r} cannot be evaluated; the strategies' own variables ({', '.join(sorted(defined)[:3])}"
                   f"{', ...' if len(defined) > 3 else ''}) are in the tables; name a study that lists them")]


@dataclass(frozen=True)
class RunInputs:
    """What a ``process`` run checks and loads before it gates (:func:`load_run_inputs`): the study,
    the strategies' paths and strategies, the panel override (``read_panel_file``, or None), the
    manifest (``file`` usable from the working directory; control rows still in it), the release
    spec, and the run's own QC flags so far (unlistable folders, a study whose variables the
    strategies do not define)."""

    study: Study
    strategy_paths: list[Path]
    strategies: tuple
    panel: PanelOverrides | None
    manifest: pd.DataFrame
    spec: ReleaseSpec
    run_flags: list[QCFlag]


def load_run_inputs(folder: str | Path, *, manifest_csv: str | Path | None = None,
                    study: str | Path | Study | None = None, strategy_paths: Sequence[str | Path] | None = None,
                    release_spec_path: str | Path | None = None, panel_path: str | Path | None = None,
                    allow_outside: bool = False, scan_rows=None) -> RunInputs:
    """The checks ``process`` makes on its inputs before gating, shared with ``new-study``'s check
    of its draft (:func:`tilpheno.scaffold.check_draft`), so that the two never differ: the study
    (a name, a path, a Study or None for the bundled one), the panel file, the strategies
    (``strategy_paths``, default the study's), the manifest (``manifest_csv``, else the folder
    scanned; an FMO row may name a marker of its tube kind in the run's strategies or the study's),
    at least one FCS file, the release spec (``release_spec_path``, else the study's, else the
    default), and, with the study's own strategies, that every variable the study names is defined
    (:func:`check_study_names`). Raises ``TilphenoError`` (one line naming the file) at the first
    problem; nothing is written. ``scan_rows``: rows of an earlier scan of the folder
    (``tilpheno.cache.ScanIndex``), used without a manifest."""
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.panel import read_panel_file
    from tilpheno.release import load_release_spec
    from tilpheno.study import load_study

    study = study if isinstance(study, Study) else load_study(study) if study is not None else default_study()
    panel = read_panel_file(panel_path) if panel_path is not None else None
    paths = [Path(p) for p in (strategy_paths or study.strategy_paths)]
    strategies = tuple(load_strategy(p) for p in paths)
    # an FMO row may name a marker of its tube kind in the run's strategies or the study's (a
    # manifest of the whole panel serves a run of fewer strategies)
    known = (*strategies, *(load_strategy(p) for p in study.strategy_paths)) if strategy_paths else strategies
    manifest = load_manifest(folder, manifest_csv, allow_outside=allow_outside, study=study,
                             tubes=[*study.tubes, *(s.tube for s in strategies)], markers=strategy_markers(known),
                             panel=panel, scan_rows=scan_rows, detectors=strategy_detectors(known))
    run_flags = [QCFlag("", display_name(where), "unlistable_folder", "error",
                        f"{display_name(where)}: folder cannot be listed ({reason}); its files were not processed")
                 for where, reason in manifest.attrs.get("unlistable", [])]
    run_flags += [QCFlag("", "", "product_id_case", "warning", note) for note in manifest.attrs.get("case_merged", [])]
    if len(manifest) == 0 and run_flags:
        raise NoInputError(f"{folder}: no FCS files found; " + "; ".join(f.message for f in run_flags))
    if len(manifest) == 0:
        raise NoInputError(f"{folder}: no FCS files (.fcs, .lmd) found; nothing to process")
    spec = load_release_spec(release_spec_path) if release_spec_path else (study.release or DEFAULT_SPEC)
    if not strategy_paths:
        check_study_names(study, strategies, spec)
    else:
        run_flags += study_mismatch(study, strategies, spec)
    return RunInputs(study, paths, strategies, panel, manifest, spec, run_flags)


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
    run_inputs: Iterable[str] | None = None,
    rerun_of: Mapping | None = None,
) -> RunSummary:
    """The library form of ``tilpheno process``: manifest, strategies, release spec, then :func:`run_process`.

    Bad options or inputs that concern the whole run raise ``TilphenoError`` before any product is
    processed and before ``out_dir`` is touched: unreadable manifest, no FCS files
    (``NoInputError``), invalid strategy or release spec, unknown executor, outcome ids that
    match no product (unless ``allow_unmatched``), manifest files outside ``folder`` (unless
    ``allow_outside``), an output folder in use or holding a previous run (unless ``overwrite``).
    ``use_cache``, ``reports``, ``report_products``: see :func:`run_process` (``reports`` defaults
    to ``now`` when ``make_reports``, else ``none``).
    ``on_start(n_products, n_files)`` is called once the output folder is claimed (``run_process``).
    ``run_inputs``: the input files of the run being drawn again (``tilpheno report``,
    :func:`tilpheno.pipeline.record.rerun_arguments`); a file of the products or of their controls
    that is not among them (added to FOLDER since: another product, another FMO) raises
    ``TilphenoError``, so the run's results are never re-made from other files. ``rerun_of``: that
    run's command lines (also from ``rerun_arguments``): ``run.json`` keeps its ``process`` command
    line and lists this call's under ``report_commands`` (:func:`tilpheno.pipeline.record.keep_run_command`).
    Paths are made absolute first, so that ``run.json`` names the files wherever the review app or
    ``tilpheno report`` is started from.
    """
    folder = _absolute(folder)
    manifest_csv, outcomes_path, release_spec_path, panel_path, compensation_path = map(
        _absolute, (manifest_csv, outcomes_path, release_spec_path, panel_path, compensation_path))
    strategy_paths = [_absolute(p) for p in strategy_paths] if strategy_paths else strategy_paths
    if executor not in EXECUTORS:
        raise TableError(f"executor: {executor!r} is not one of {', '.join(EXECUTORS)}")
    if executor == "dask" and scheduler is None:
        raise TableError("executor dask needs a scheduler address (e.g. tcp://127.0.0.1:8786)")
    if scheduler is not None and executor != "dask":   # else the run would be local, the address unused
        raise TableError(f"scheduler: {scheduler!r} is a Dask scheduler's address, but the executor is {executor}: "
                         "give executor dask too, or no scheduler")
    if not 0 < fmo_percentile < 100:
        raise TableError(f"fmo_percentile: {fmo_percentile} is not between 0 and 100")
    if executor == "local" and n_jobs > 1:
        from tilpheno.pipeline.pool import start_fork_server

        # first: the server's imports of the workers' libraries (the longest serial part of a
        # parallel run) overlap with this process's own imports, the manifest and the cache
        start_fork_server()
    from tilpheno.cache import CACHE_DIR, ScanIndex

    # without a manifest the folder is scanned: rows of files unchanged since the last run into OUT are re-used
    scans = ScanIndex(Path(out_dir) / CACHE_DIR / "scan.json", read=use_cache) if manifest_csv is None else None
    plan = plan_run(folder, out_dir, manifest_csv=manifest_csv, outcomes_path=outcomes_path, strategy_paths=strategy_paths,
                    release_spec_path=release_spec_path, study=study, panel_path=panel_path,
                    fmo_percentile=fmo_percentile, include_identifiers=include_identifiers, make_reports=make_reports,
                    executor=executor, n_jobs=n_jobs, compensation_path=compensation_path, command_line=command_line,
                    overwrite=overwrite, allow_unmatched=allow_unmatched, allow_outside=allow_outside,
                    use_cache=use_cache, reports=reports, report_products=report_products, run_inputs=run_inputs,
                    rerun_of=rerun_of, scan_rows=scans)
    return run_process(plan.manifest, out_dir, plan.strategies, plan.record, plan.options, executor=executor,
                       n_jobs=n_jobs, scheduler=scheduler, on_start=on_start, on_outcome=on_outcome, overwrite=overwrite,
                       run_flags=plan.run_flags, use_cache=use_cache, reports=reports, report_products=report_products,
                       compensations=plan.compensations, scans=scans)


@dataclass(frozen=True)
class RunPlan:
    """What :func:`process_folder` hands to :func:`run_process` (:func:`plan_run`): the manifest
    (doses attached; control rows planned into ``compensations``: product id -> its compensation
    plan), the strategies, the run record, the options and the run's own QC flags."""

    manifest: pd.DataFrame
    compensations: dict
    strategies: tuple
    record: RunRecord
    options: ProcessOptions
    run_flags: list[QCFlag]


def plan_run(folder: str | Path, out_dir: str | Path, *, manifest_csv=None, outcomes_path=None, strategy_paths=None,
             release_spec_path=None, study=None, panel_path=None, fmo_percentile: float = 99.5,
             include_identifiers: bool = False, make_reports: bool = True, executor: str = "local", n_jobs: int = 1,
             compensation_path=None, command_line=None, overwrite: bool = False, allow_unmatched: bool = False,
             allow_outside: bool = False, use_cache: bool = True, reports: str | None = None,
             report_products: Iterable[str] | None = None, run_inputs: Iterable[str] | None = None,
             rerun_of: Mapping | None = None, scan_rows=None) -> RunPlan:
    """Everything :func:`process_folder` does before it gates (its arguments, paths already absolute):
    :func:`load_run_inputs`, the compensation plan, the check that no file joined a run drawn
    again (``run_inputs``), the outcomes' doses, the run record and the options. Raises
    ``TilphenoError`` at the first problem; nothing is written."""
    inputs = load_run_inputs(folder, manifest_csv=manifest_csv, study=study, strategy_paths=strategy_paths,
                             release_spec_path=release_spec_path, panel_path=panel_path, allow_outside=allow_outside,
                             scan_rows=scan_rows)
    study, paths, strategies, spec = inputs.study, inputs.strategy_paths, inputs.strategies, inputs.spec
    run_flags = list(inputs.run_flags)
    from tilpheno.spillover import plan_compensation

    manifest, compensations = plan_compensation(inputs.manifest, compensation_path)
    if run_inputs is not None:
        recorded = set(run_inputs)
        added = [display_name(str(f)) for f in [*manifest["file"], *(f for c in compensations.values() for f in c.files)]
                 if str(f) not in recorded]
        if added:
            more = f" (and {len(added) - 1} more)" if len(added) > 1 else ""
            raise TilphenoError(f"{added[0]}: input file added since the run in {out_dir}{more}; "
                                "run `tilpheno process` again")
    if outcomes_path is not None:
        from tilpheno.io.outcomes import DOSE_COLUMNS, read_outcomes

        outcomes = read_outcomes(outcomes_path, DOSE_COLUMNS)
        unmatched = unmatched_outcomes(manifest, outcomes)
        if unmatched and not allow_unmatched:
            raise TableError(
                f"{outcomes_path}: {len(unmatched)} product id(s) match no product in {folder}: "
                f"{_did_you_mean(unmatched, manifest['product_id'].astype(str))}; "
                "fix the ids or pass allow_unmatched=True")
        if unmatched:   # allowed; said, and recorded in qc.csv as no_dose is, so OUT shows whose rows were left out
            what = (f"{display_name(str(outcomes_path))}: {len(unmatched)} product id(s) match no product in "
                    f"{display_name(str(folder))} (allowed): {', '.join(unmatched)}; their rows are not used")
            log.warning("%s", what)
            run_flags.append(QCFlag("", display_name(str(outcomes_path)), "unmatched_outcome", "warning", what))
        manifest = attach_doses(manifest, outcomes)
        undosed = products_without_dose(manifest)
        if undosed:
            run_flags.append(QCFlag("", display_name(str(outcomes_path)), "no_dose", "warning",
                                    f"{display_name(str(outcomes_path))}: no til_dose_cells for {len(undosed)} product(s): "
                                    f"{', '.join(undosed)}; their absolute doses (*_dose_cells) stay empty"))
    record = start_run_record(
        folder=folder, manifest_csv=manifest_csv, outcomes_path=outcomes_path, fmo_percentile=fmo_percentile,
        include_identifiers=include_identifiers, executor=executor, n_jobs=n_jobs, overwrite=overwrite,
        allow_unmatched=allow_unmatched, allow_outside=allow_outside, reports=reports, make_reports=make_reports,
        use_cache=use_cache, compensation_path=compensation_path, study=study, panel_path=panel_path,
        strategy_paths=paths, spec=spec, command_line=command_line)
    if rerun_of is not None:
        keep_run_command(record, rerun_of, report_products)
    options = ProcessOptions(fmo_percentile=fmo_percentile, include_identifiers=include_identifiers,
                             make_reports=make_reports, release_spec=spec, study=study, panel=inputs.panel)
    return RunPlan(manifest, compensations, strategies, record, options, run_flags)


def draw_report(out_dir: str | Path, product_id: str) -> str:
    """The HTML report of one product of the run in ``out_dir``, drawn now and returned; nothing is
    written (``OUT``, its ``run.json`` and its cache stay as they are). The report ``tilpheno report
    OUT PRODUCT`` would publish: the run's recorded settings, files and doses
    (:func:`tilpheno.pipeline.record.rerun_arguments`, which refuses a run whose inputs, study,
    strategies, release spec, panel, manifest, outcomes or compensation changed since), the product
    gated again from its files. For reports deferred with ``--reports later`` or ``none`` and asked
    for later, e.g. by the review app. ``TilphenoError`` (one line) when the run cannot be drawn
    again or holds no such product."""
    from tilpheno.pipeline.product import process_product
    from tilpheno.pipeline.record import rerun_arguments

    args, known = rerun_arguments(out_dir)
    if product_id not in known:
        raise TilphenoError(f"{out_dir}: no product {product_id!r} in this run")
    plan = plan_run(args["folder"], out_dir, manifest_csv=args["manifest"], outcomes_path=args["outcomes"],
                    strategy_paths=args["strategy"], release_spec_path=args["release_spec"], study=args["study"],
                    panel_path=args["panel"], fmo_percentile=args["fmo_percentile"],
                    include_identifiers=args["include_identifiers"], n_jobs=args["jobs"],
                    compensation_path=args["compensation"], overwrite=True, allow_unmatched=args["allow_unmatched"],
                    allow_outside=args["allow_outside"], reports="now", report_products=[product_id],
                    run_inputs=args["run_inputs"], rerun_of=args["rerun_of"])
    rows = dict(group_products(plan.manifest))[product_id]
    options = dataclasses.replace(plan.options, provenance_short=tuple(plan.record.short().items()), make_reports=True)
    job = ProductJob(product_id, rows, strategy_sources(plan.strategies), options, plan.compensations.get(product_id))
    html = process_product(job).report_html
    if not html:
        raise TilphenoError(f"{out_dir}: product {product_id!r}: no report could be drawn")
    return html
