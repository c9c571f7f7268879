"""Command-line interface: a thin layer over the library API.

Each command imports what it needs inside its body, so ``tilpheno --help`` starts fast.
Errors from bad input (``TilphenoError``) and usage errors (an unknown, missing or malformed option
or argument: :func:`_run_app`) are printed as one line and exit with status 2.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable, List, NoReturn, Optional

import typer

app = typer.Typer(
    add_completion=False,
    rich_markup_mode="markdown",
    no_args_is_help=True,
    help="tilpheno: phenotype reports and biomarker analyses for TIL infusion products.",
)


def as_cli_text(text: str) -> str:
    """A library message in the command line's words: the library names its parameters
    (``overwrite=True``, ``pdf=True``, ``executor``, ``fmo_percentile``), the CLI user sees the flags."""
    import re

    text = re.sub(r"\b(overwrite|allow_outside|allow_unmatched|include_identifiers|pdf)=True\b",
                  lambda m: "--" + m.group(1).replace("_", "-"), text)
    text = re.sub(r"\b(inputs=FOLDER|db=URL|compensation=MATRIX)\b", lambda m: "--" + m.group(1).replace("=", " "), text)
    return re.sub(r"^(executor|scheduler|fmo_percentile|reports|conf_type|roc_times|break_times)\b", lambda m: "--" + m.group(1).replace("_", "-"), text)


def _fail(exc: Exception) -> NoReturn:
    """Print one line (``error: ...``) and exit with status 2. An ``OSError`` (disk full, read-only
    folder, a file where a folder is needed) is described by the path and the cause."""
    if isinstance(exc, OSError):
        from tilpheno.io.outdir import describe_os_error

        text = describe_os_error(exc)
    else:
        text = str(exc)
    _print_error(text)
    raise typer.Exit(code=2)


def _print_error(text: str) -> None:
    """Print ``text`` as the one line ``error: ...`` on stderr (whitespace runs joined, undecodable
    bytes of a file name escaped, the library's parameter names as the CLI's flags) and record it in
    the ``--log`` file."""
    from tilpheno.io.files import display_name

    line = f"error: {as_cli_text(display_name(' '.join(text.split())))}"
    typer.secho(line, fg=typer.colors.RED, err=True)
    _to_run_log(line)


def _to_run_log(line: str) -> None:
    """Record a line the CLI prints on stderr (``error: ...``, a command stopped by a signal) in the
    ``--log`` file too, so that a command stopped by bad input leaves its reason there, not an
    empty log (the console already printed it: the record goes to the log file only)."""
    logger = logging.getLogger("tilpheno")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, line, (), None)
    for handler in logger.handlers:
        if isinstance(handler, RunLogHandler):
            handler.handle(record)


def _write_or_fail(path: Path, write: Callable[[Path], object]) -> None:
    """``write(path)``; an ``OSError`` (the path a folder, a read-only or full disk) is one line
    naming ``path`` as given, not the temporary file the atomic writer was filling, exit status 2."""
    import os

    try:
        write(path)
    except OSError as exc:   # the system's words for its errno: h5py's strerror is a paragraph naming the temporary
        _fail(OSError(exc.errno, os.strerror(exc.errno) if exc.errno else exc.strerror, str(path)))


def _existing(param: typer.CallbackParam, value, *, folder: bool):
    """``value`` of a path argument or option that must name an existing folder (``folder``) or file
    (each path of a repeatable option). Otherwise one line naming the option (an argument by its
    name in capitals) and the path, e.g. ``error: --wsp gates.wsp: no such file``, exit status 2:
    every command's missing input reads the same, before anything is written."""
    if isinstance(value, (list, tuple)):
        for each in value:
            _existing(param, each, folder=folder)
        return value
    if value is None:
        return None
    if not value.exists():
        reason = f"no such {'folder' if folder else 'file'}"
    elif folder != value.is_dir():
        reason = "a file, not a folder" if folder else "a folder, not a file"
    else:
        return value
    from tilpheno.errors import TilphenoError

    label = param.opts[0] if param.param_type_name == "option" else (param.name or "").upper()
    _fail(TilphenoError(f"{label} {value}: {reason}"))


def _existing_folder(param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """Callback of a path that must be an existing folder (see :func:`_existing`)."""
    return _existing(param, value, folder=True)


def _existing_file(param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """Callback of a path that must be an existing file (see :func:`_existing`)."""
    return _existing(param, value, folder=False)


def _print_version(value: bool) -> None:
    """``--version``: runs while the options are parsed, so no command is needed."""
    if value:
        from tilpheno import __version__

        typer.echo(f"tilpheno {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress (INFO) to stderr, not only warnings."),
    log: Optional[Path] = typer.Option(None, "--log", help="Append the run log (DEBUG, with tracebacks of internal errors) to this file (its folder is created; inside a process OUT it is kept across runs)."),
) -> None:
    """tilpheno: phenotype reports and biomarker analyses for TIL infusion products."""
    configure_logging(verbose=verbose, log_file=log)


class RunLogHandler(logging.FileHandler):
    """The ``--log FILE`` handler. A record it cannot write (disk full, a file system gone read-only)
    is said once, in one line on stderr, that the run log is incomplete; logging's default prints a
    ``--- Logging error ---`` traceback for every such record, and closing the handler (the next
    ``configure_logging``, the end of the command) raised the buffered write's error. The command goes on."""

    failed = False

    def flush(self) -> None:
        try:
            super().flush()
        except OSError:
            self.handleError(logging.makeLogRecord({}))

    def close(self) -> None:
        try:
            super().close()
        except OSError:   # the file's own buffer, written as it closes
            self.handleError(logging.makeLogRecord({}))

    def handleError(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        self.failed = True
        from tilpheno.io.outdir import describe_os_error

        exc = sys.exc_info()[1]
        why = describe_os_error(exc, self.baseFilename) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        typer.secho(f"warning: --log {self.baseFilename}: the run log could not be written ({why}); it is incomplete",
                    fg=typer.colors.YELLOW, err=True)


def configure_logging(*, verbose: bool = False, log_file: Optional[Path] = None) -> None:
    """The ``tilpheno`` logger: warnings (``--verbose``: info) to stderr, everything to ``--log FILE``.

    Library modules only log (``logging.getLogger(__name__)``); handlers are the CLI's business."""
    logger = logging.getLogger("tilpheno")
    for handler in list(logger.handlers):
        if getattr(handler, "_tilpheno_cli", False):
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    console = logging.StreamHandler()
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        from tilpheno.io.atomic import make_folder

        try:   # its folder is created: `--log OUT/run.log process -o OUT` logs into the OUT the run creates
            make_folder(log_file.parent)
            file_handler = RunLogHandler(log_file, encoding="utf-8", errors="backslashreplace")
        except OSError as exc:
            _fail(exc)
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(file_handler)
    for handler in handlers:
        handler._tilpheno_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


# --- commands are added below, one section per stage of the data flow ---


# --- scan: infer the manifest (product, tube, role, FMO marker) of a folder of FCS files ---
@app.command()
def scan(
    folder: Path = typer.Argument(..., help="Folder of FCS files (searched recursively).", callback=_existing_folder),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="Manifest CSV/Excel that overrides inference (validated).", callback=_existing_file),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Write the manifest CSV (file, product_id, tube, role, fmo_marker) here."),
    study: str = typer.Option("til", "--study", help="Study (tube kinds, marker vocabulary): a bundled name or a study.yaml path."),
    panel: Optional[Path] = typer.Option(None, "--panel", help="Panel file (CSV/YAML: tube, detector, marker) whose markers label the files, as process scans them.", callback=_existing_file),
) -> None:
    """Print the inferred manifest of FOLDER (file names, $SRC, TUBE NAME, $PnS, --panel) and optionally write it.

    Exit status: 0 every file readable, 1 some file unreadable (a --manifest file missing) or a
    folder unlistable (each listed; the manifest is still written, their rows in it), 2 nothing scanned.
    """
    import os

    from rich.console import Console
    from rich.table import Table

    from tilpheno.errors import NoInputError, TilphenoError
    from tilpheno.io.atomic import write_csv
    from tilpheno.io.files import display_name
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.io.manifest import COLUMNS, read_manifest, scan_folder, ungated_fmo_markers
    from tilpheno.panel import read_panel_file
    from tilpheno.pipeline.run import check_study_names
    from tilpheno.release import DEFAULT_SPEC
    from tilpheno.pipeline.inputs import (listed_unfit, listed_unfit_stains, strategy_detectors, strategy_markers,
                                          unfit_stains)
    from tilpheno.study import load_study

    if out is not None and manifest is not None and out.resolve() == manifest.resolve():
        _fail(TilphenoError(f"{out}: -o is the --manifest being read; the written manifest keeps only the columns "
                            f"{', '.join(COLUMNS)} (any other column, e.g. til_dose_cells, would be lost): "
                            "write it to another file"))
    file_markers: dict[str, tuple[str, ...]] = {}   # file -> the markers its labels name (scanned)
    try:
        config = load_study(study)
        overrides = read_panel_file(panel) if panel is not None else None
        strategies = [load_strategy(p) for p in config.strategy_paths]
        # the study's names its strategies must define, refused as process refuses them (before any file is read)
        check_study_names(config, strategies, config.release or DEFAULT_SPEC)
        kinds = (strategy_markers(strategies), strategy_detectors(strategies))
        if manifest is not None:
            frame = read_manifest(manifest, base=folder, study=config, markers=kinds[0], keep_missing=True,
                                  unfit=listed_unfit(config, kinds, overrides, folder))
        else:
            frame = scan_folder(folder, study=config, panel=overrides, markers=file_markers)
            for where, reason in frame.attrs.get("unlistable", []):
                typer.secho(f"unlistable folder: {display_name(where)}: {reason}", fg=typer.colors.YELLOW, err=True)
            for note in [*frame.attrs.get("case_merged", []), *frame.attrs.get("panel_unmatched", [])]:
                typer.secho(note, fg=typer.colors.YELLOW, err=True)
            if frame.empty:
                raise NoInputError(f"{folder}: no FCS files (.fcs, .lmd) found")
    except (TilphenoError, OSError) as exc:
        _fail(exc)
    table = Table(title=f"{folder}: {frame['product_id'].nunique() if len(frame) else 0} products, {len(frame)} files")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    console = Console()
    for row in frame.itertuples(index=False):
        style = "red" if row.problem else None
        name = display_name(os.path.relpath(row.file, folder) if manifest is None else row.file)
        table.add_row(name, row.product_id, row.tube, row.role, row.fmo_marker, style=style)
    console.print(table)
    unreadable = frame[frame["problem"] != ""]
    for problem in unreadable["problem"]:
        typer.secho(f"unreadable: {problem}", fg=typer.colors.YELLOW, err=True)
    if manifest is not None:   # listed, not scanned: the listed stained files' labels read here
        unfit = listed_unfit_stains(frame[frame["problem"] == ""], config, kinds, overrides, folder)
    else:
        unfit = unfit_stains(frame, file_markers, kinds[0], config.vocabulary, kinds[1])
    refusing = ungated_fmo_markers(frame, kinds[0], config.vocabulary) if out is not None and manifest is None else []
    unfit_files = _warn_unfit_stains(unfit, config, folder, (display_name(str(out)), refusing) if out is not None else None)
    if manifest is None:
        _warn_duplicate_stains(frame, out, _required_kinds(config), unfit_files)
    _warn_controls_only(frame)
    if out is not None:
        written = frame[list(COLUMNS)].copy()
        if manifest is None:
            written["file"] = [os.path.relpath(f, folder) for f in written["file"]]
        # file names that are not UTF-8 read back as written
        _write_or_fail(out, lambda path: write_csv(path, written, errors="surrogateescape"))
        typer.echo(f"wrote {out} ({len(written)} files, {len(unreadable)} unreadable)")
    if len(unreadable) or frame.attrs.get("unlistable"):
        raise typer.Exit(code=1)


def _warn_unfit_stains(unfit, config, folder: Path, written: tuple[str, list[str]] | None = None) -> set[str]:
    """On stderr, one line when stained files do not fit the tube kinds of study ``config``
    (``unfit``: :func:`tilpheno.pipeline.inputs.unfit_stains` of the scanned files, or
    :func:`tilpheno.pipeline.inputs.listed_unfit_stains` of a manifest's): a new lab's panel
    read as the study's kinds, which ``process`` fails. The line names the files, the markers each
    has that its kind does not gate and those it lacks, and points to ``new-study``
    (:func:`tilpheno.pipeline.inputs.describe_unfit`; ``written``: the manifest ``-o`` writes and
    the FMO markers it lists that their kinds do not gate, which ``process --manifest`` refuses).
    Returns those files (the duplicate-stain advice is not theirs: they are no copies of that kind)."""
    from tilpheno.pipeline.inputs import describe_unfit

    if unfit:
        typer.secho(describe_unfit(unfit, config, folder, written=written), fg=typer.colors.YELLOW, err=True)
    return {u.file for u in unfit}


def _required_kinds(config) -> tuple[str, list[str]]:
    """A study's name and its required tube kinds (not ``optional: true``), in study order."""
    return config.name, [k for k in config.tubes if k not in config.optional_tubes]


def _warn_duplicate_stains(manifest, written: Path | None, required: tuple[str, list[str]],
                           unfit: set[str] | frozenset[str] = frozenset()) -> None:
    """On stderr, one line per product of ``manifest`` (scanned or drafted, in the order ``written``
    holds it; None: not written) with several stained files of one tube kind (a specimen name shared
    by several tissues or donors): ``process`` takes the product's variables from one of them
    (``duplicate_tube``). The line names the files and exactly what to edit: their lines of
    ``written`` and a product_id for each (the file's name without its extension); ``required``:
    the study's name and required tube kinds, which the product's other files must still have;
    ``unfit``: files that fit no tube kind of the study (:func:`_warn_unfit_stains`), no copies of
    the kind they were read as, so a group of only those has no line."""
    from tilpheno.io.files import file_labels

    rows = manifest.reset_index(drop=True)
    stains = rows[rows["role"] == "stain"]
    for (product, kind), files in stains.groupby(["product_id", "tube"], sort=True):
        if len(files) < 2 or files["file"].isin(unfit).all():
            continue
        # files of one name in two folders are named by their paths, and offered ids from them
        labels = file_labels(rows.loc[rows["product_id"] == product, "file"])
        names = [labels[str(f)] for f in files["file"]]
        where = (f"in {written}, lines {', '.join(str(i + 2) for i in files.index)}" if written is not None
                 else "in a manifest (scan -o manifest.csv)")
        typer.secho(f"product {product}: {len(files)} stained {kind} files ({', '.join(names)}); process takes its "
                    f"variables from one (duplicate_tube): {where}, give each specimen its own product_id, e.g. "
                    f"{', '.join(_product_id_of(n) for n in names)} (a re-acquired file: delete its line)"
                    f"{_other_files_of(rows, product, files.index, written, required, labels)}",
                    fg=typer.colors.YELLOW, err=True)


def _product_id_of(label: str) -> str:
    """A product id offered for the file its flags name ``label`` (``file_labels``): the label
    without its extension, a folder's separator as ``_`` (``a/TIL001_stain.fcs`` -> ``a_TIL001_stain``)."""
    import os

    return label.rsplit(".", 1)[0].replace(os.sep, "_")


def _other_files_of(rows, product, renamed, written: Path | None, required: tuple[str, list[str]],
                    labels: dict[str, str]) -> str:
    """The tail of a duplicate_tube line: ``product``'s files in ``rows`` other than the ``renamed``
    stained files (its controls, its other tube kinds) keep its product_id, so once the stained files
    are given their specimens' ids, ``process`` fails ``product`` (controls only, or a required tube
    kind missing, named with the study, ``required``: its name and those kinds; an optional one may be)
    unless each of them is given its specimen's id too; '' when there are none. ``labels``: how the
    product's files are named (``file_labels``: paths where two share a name)."""
    others = rows[(rows["product_id"] == product) & ~rows.index.isin(renamed)]
    if others.empty:
        return ""
    names = ", ".join(labels[str(f)] for f in others["file"])
    numbers = [str(i + 2) for i in others.index]
    where = f"line{'s' if len(numbers) > 1 else ''} {', '.join(numbers)}: {names}" if written is not None else names
    study, kinds = required
    needed = (f"controls only or lack a stained file of a tube kind study {study} requires ({', '.join(kinds)})" if kinds
              else f"controls only (study {study} requires no tube kind: each is optional)")
    return (f"; its other files ({where}) keep product_id {product}, which process then fails if they are {needed}: "
            "give each the product_id of the specimen it was acquired with (a file belongs to one product), "
            "or delete its line")


def _warn_controls_only(manifest) -> set[str]:
    """On stderr, each product of ``manifest`` (scanned or drafted) whose files are all controls:
    ``process`` fails it, with the reason it will give (``no_stained_tube``: exports without $PnS
    are taken as unstained controls unless a panel file names their markers). Returns those products."""
    from tilpheno.pipeline.product import no_stained_tube

    stained = set(manifest.loc[manifest["role"].isin(("stain", "single_stain")), "product_id"])
    controls = manifest[(manifest["tube"] != "compensation") & ~manifest["product_id"].isin(stained)]
    for product, rows in controls.groupby("product_id", sort=True):
        typer.secho(f"process fails it: {no_stained_tube(str(product), rows)}", fg=typer.colors.YELLOW, err=True)
    return {str(p) for p in controls["product_id"]}


@app.command("new-study")
def new_study(
    folder: Path = typer.Argument(..., help="Folder of the lab's FCS files (searched recursively).", callback=_existing_folder),
    out: Path = typer.Option(..., "-o", "--out", help="Folder to write study.yaml, one strategy per tube kind, release.yaml and manifest.csv into."),
    name: Optional[str] = typer.Option(None, "--name", help="The study's name (default: the folder's name)."),
    panel: Optional[Path] = typer.Option(None, "--panel", help="Panel file (CSV/YAML: tube, detector, marker) naming markers on unlabelled detectors.", callback=_existing_file),
    lineage: Optional[Path] = typer.Option(None, "--lineage", help="YAML file with a `lineage:` mapping (marker: the marker it is gated within; empty: not nested) overriding the vocabulary's, e.g. {CD8: ~, PD1: CD8}.", callback=_existing_file),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="The lab's manifest CSV/Excel (file, product_id, tube, role[, fmo_marker]): each file's product, tube and role as the lab knows them, not inferred; its tube names name the tube kinds; files it does not list are left out.", callback=_existing_file),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files a previous draft wrote into OUT."),
) -> None:
    """Draft a study for the lab's own panel from FOLDER's FCS files: tube kinds, gates, variables, a manifest (runs as written).

    Exit status: 0 drafted (files that fit no tube kind are left out and named, by choice); 1 drafted,
    but some file unreadable or a folder unlistable (as scan: process will not see those files), or
    the draft needs an edit before process (process would refuse it, or fail a product: one of
    controls only, or without a stained file of a drafted tube kind); 2 nothing drafted.
    """
    from tilpheno.errors import TilphenoError
    from tilpheno.scaffold import check_draft, draft_study, write_study

    try:
        draft = draft_study(folder, name=name, panel=panel, lineage=lineage, manifest=manifest)
        write_study(draft, out, overwrite=overwrite)
    except (TilphenoError, OSError) as exc:
        _fail(exc)
    stained = draft.manifest.loc[draft.manifest["role"] == "stain"]
    products = stained["product_id"].nunique()
    failing: set[str] = set()   # products the printed process command fails
    for tube in draft.tubes:
        fmo = f"; FMO gates: {', '.join(tube.fmo_markers)}" if tube.fmo_markers else "; no FMO in the folder"
        partial = f"; only in some files' panels, not gated: {', '.join(tube.partial)}" if tube.partial else ""
        typer.echo(f"tube kind {tube.kind}: {tube.products} product(s), markers {', '.join(tube.markers)}"
                   f"{'; viability dye ' + tube.viability if tube.viability else '; no viability dye'}"
                   f"{'; DNA dye ' + tube.dna + ' (gated as nucleated)' if tube.dna else ''}{fmo}{partial}")
        if tube.products < products and tube.optional:
            typer.echo(f"tube kind {tube.kind}: optional (no product has it with another kind; study.yaml: optional: "
                       f"true): for the {products - tube.products} of {products} products with no {tube.kind} file, "
                       f"process leaves the {tube.kind} variables blank and release criteria on them not applicable")
        elif tube.products < products:
            failing |= set(stained["product_id"]) - set(stained.loc[stained["tube"] == tube.kind, "product_id"])
            typer.secho(f"tube kind {tube.kind}: {products - tube.products} of {products} products have no stained "
                        f"{tube.kind} file: process fails them (a product needs every tube kind of its study); "
                        "drop the kind from study.yaml or draft their folders apart", fg=typer.colors.YELLOW, err=True)
    for note in [*draft.case_merged, *draft.panel_unmatched]:
        typer.secho(note, fg=typer.colors.YELLOW, err=True)
    _warn_duplicate_stains(draft.manifest, out / "manifest.csv", (draft.name, [t.kind for t in draft.tubes if not t.optional]))
    failing |= _warn_controls_only(draft.manifest)
    stains = draft.manifest[draft.manifest["role"] == "stain"]
    if manifest is None and (failing or stains.duplicated(["product_id", "tube"]).any()):
        typer.secho(f"products as inferred from $SRC, file names and keywords: a lab that knows each file's product and "
                    f"tube can give them instead of editing the lines above: tilpheno new-study {folder} -o {out} "
                    "--manifest lab.csv (columns file, product_id, tube, role; README: 'When the lab knows better')",
                    fg=typer.colors.YELLOW, err=True)
    for file, why in draft.skipped:
        typer.secho(f"left out: {file}: {why}", fg=typer.colors.YELLOW, err=True)
    for where, why in draft.unlistable:
        typer.secho(f"unlistable folder: {where}: {why}", fg=typer.colors.YELLOW, err=True)
    for label, files in draft.shared.items():
        typer.secho(f"no marker read: {label.describe()} (--panel; {len(files)} file(s): {', '.join(sorted(files))})",
                    fg=typer.colors.YELLOW, err=True)
    for (marker, ((used, text), *others)), files in draft.repeated.items():
        typer.secho(f"one marker, {len(others) + 1} detectors: {marker} is gated on {used} ({text!r}); the $PnS of "
                    f"{', '.join(f'{d} ({t!r})' for d, t in others)} names it too, not gated (another stain of "
                    f"{marker}, or a label to correct: a panel file row (tube, detector, marker) names its marker) "
                    f"({len(files)} file(s): {', '.join(sorted(files))})", fg=typer.colors.YELLOW, err=True)
    for (detector, dye), files in draft.unused_dyes.items():
        typer.secho(f"not gated: detector {detector}, named after {dye}, has no $PnS label in stained files that label "
                    f"their panel in $PnS: taken as unused; if they were stained with {dye}, a panel file row (tube, "
                    f"detector, marker) names it ({len(files)} file(s): {', '.join(sorted(files))})",
                    fg=typer.colors.YELLOW, err=True)
    bases = [f"{t.base} ({t.kind}{': every event' if t.base == 'root' else ''}"
             f"{''.join(f'; {m}+ under {t.above_lymph}' for m in t.outside_lymph())}"
             f"{f'; {t.lymph} within {t.lymph_parent}' if t.leukocytes else ''})" for t in draft.tubes]
    nested = "; ".join(f"{', '.join(f'{m}+ within {a}+' for m, a in t.nesting())} ({t.kind})" for t in draft.tubes if t.nesting())
    typer.echo(f"wrote {out}/study.yaml, {', '.join(t.kind + '.yaml' for t in draft.tubes)}, release.yaml, "
               f"manifest.csv ({len(draft.manifest)} files). Marker gates sit directly under "
               f"{', '.join(bases)}"
               f"{', except those the lineage table nests: ' + nested if nested else ''}: "
               "change `parent:` lines and variables in the strategy files to nest differently. Run:")
    panel_option = f" --panel {panel}" if panel is not None else ""
    typer.echo(f"  tilpheno process {folder} --study {out}/study.yaml --manifest {out}/manifest.csv{panel_option} -o RESULTS")
    problem = check_draft(out, folder, panel=panel)
    if problem:
        typer.secho(f"the draft needs an edit before process: {as_cli_text(problem)}", fg=typer.colors.RED, err=True)
    if draft.unreadable or draft.unlistable:
        typer.secho(f"not drafted from every file: {len(draft.unreadable)} unreadable, {len(draft.unlistable)} "
                    "folder(s) unlistable (above): manifest.csv leaves them out and process will not see them; "
                    "fix or remove them and draft again (--overwrite)", fg=typer.colors.RED, err=True)
    if failing:
        typer.secho(f"process as printed fails {len(failing)} of {draft.manifest['product_id'].nunique()} products "
                    f"({', '.join(sorted(failing))}; why above): the draft needs an edit, or a --panel, first",
                    fg=typer.colors.RED, err=True)
    if problem or failing or draft.unreadable or draft.unlistable:
        raise typer.Exit(code=1)


# --- simulate: demo cohort of raw FCS files with ground truth and outcomes ---
@app.command()
def simulate(
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (created if needed)."),
    products: int = typer.Option(6, "--products", min=1, help="Number of infusion products."),
    seed: int = typer.Option(1, "--seed", help="Random seed; same seed and arguments give identical files."),
    events: int = typer.Option(20000, "--events", min=1, help="Events per tube."),
) -> None:
    """Simulate raw FCS 3.1 files (9 tubes per product) with manifest.csv, truth.csv, outcomes.csv."""
    from tilpheno.errors import TilphenoError
    from tilpheno.simulate.cohort import simulate_cohort

    try:
        paths = simulate_cohort(out, products, seed, events)
    except ValueError as exc:
        _fail(exc)
    except OSError as exc:   # a full disk names no file: the folder is named, and what it now holds
        from tilpheno.io.outdir import describe_os_error

        left = out.is_dir() and any(out.glob("*.fcs"))
        _fail(TilphenoError(describe_os_error(exc, out) + (f"; the FCS files in {out} are an incomplete cohort (no "
                                                           "manifest.csv): simulate again" if left else "")))
    typer.echo(f"wrote {len(paths.files)} FCS files for {products} products to {paths.out_dir}")
    typer.echo(f"manifest: {paths.manifest}\ntruth: {paths.truth}\noutcomes: {paths.outcomes}")


# --- compensate: spillover matrix from single-stain controls ---


@app.command()
def compensate(
    controls_folder: Path = typer.Argument(..., help="Folder of single-stain controls (and an unstained control).", callback=_existing_folder),
    out: Path = typer.Option(..., "-o", "--out", help="Matrix CSV to write (FlowJo/FlowKit layout; usable by process --compensation)."),
    controls: Optional[Path] = typer.Option(None, "--controls", help="CSV file,detector naming each control's detector (empty detector = unstained control); overrides inference from file names and $PnS.", callback=_existing_file),
    ssm: Optional[Path] = typer.Option(None, "--ssm", help="Also write the spillover spreading matrix CSV here."),
    diagnostics: Optional[Path] = typer.Option(None, "--diagnostics", help="Also write one row per control (events, positives, stain index) here."),
) -> None:
    """Compute the spillover matrix from single-stain controls in CONTROLS_FOLDER."""
    from tilpheno.errors import TilphenoError
    from tilpheno.io.atomic import write_csv
    from tilpheno.spillover import controls_in_folder, estimate_spillover, write_spillover_csv

    try:
        found = controls_in_folder(controls_folder, controls)
        estimate = estimate_spillover(found, source=f"single-stain controls in {controls_folder}")
    except TilphenoError as exc:
        _fail(exc)
    _write_or_fail(out, lambda path: write_spillover_csv(estimate.spillover, path))
    if ssm is not None:
        _write_or_fail(ssm, lambda path: write_csv(path, estimate.ssm.reset_index(names="fluorochrome")))
    if diagnostics is not None:
        _write_or_fail(diagnostics, lambda path: write_csv(path, estimate.controls))
    typer.echo(f"{len(estimate.controls)} single-stain controls, negative reference: "
               f"{', '.join(sorted(set(estimate.controls['negative'])))}")
    typer.echo(estimate.spillover.to_dataframe().round(4).to_string())
    typer.echo("wrote " + ", ".join(str(path) for path in (out, ssm, diagnostics) if path is not None))


# --- process: gate every product of a folder, per-product reports, cohort tables ---


@app.command()
def process(
    folder: Path = typer.Argument(..., help="Folder of FCS files.", callback=_existing_folder),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (created; one holding a previous run needs --overwrite)."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="Manifest CSV (file, product_id, tube, role, fmo_marker) instead of scanning.", callback=_existing_file),
    outcomes: Optional[Path] = typer.Option(None, "--outcomes", help="Outcomes table (CSV/Excel) whose til_dose_cells gives each product's infused TIL number, for absolute subset doses.", callback=_existing_file),
    study: str = typer.Option("til", "--study", help="Study: a bundled name or a study.yaml path (tube kinds, strategies, variables, doses, QC, release spec, marker aliases)."),
    panel: Optional[Path] = typer.Option(None, "--panel", help="Panel file (CSV/YAML: tube, detector, marker) naming the marker on a detector; wins over $PnS.", callback=_existing_file),
    strategy: Optional[List[Path]] = typer.Option(None, "--strategy", help="Gating strategy YAML (repeatable); default: the study's strategies.", callback=_existing_file),
    release_spec: Optional[Path] = typer.Option(None, "--release-spec", help="Release criteria YAML; default: the study's (TIL: viability > 70 %, CD3+ > 90 % of live lymphocytes).", callback=_existing_file),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Products processed in parallel (process pool)."),
    executor: str = typer.Option("local", "--executor", help="local | dask"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask scheduler address for --executor dask, e.g. tcp://10.0.0.5:8786."),
    fmo_percentile: float = typer.Option(99.5, "--fmo-percentile", help="Percentile of the FMO tube's parent events that sets each marker threshold."),
    include_identifiers: bool = typer.Option(False, "--include-identifiers", help="Show all FCS keywords in reports (default: an allow-list without identifiers)."),
    compensation: Optional[Path] = typer.Option(None, "--compensation", help="Spillover matrix CSV (FlowJo/FlowKit layout, e.g. from `tilpheno compensate`) used for every file instead of $SPILLOVER and of single-stain controls in the folder.", callback=_existing_file),
    overwrite: bool = typer.Option(False, "--overwrite", help="OUT may hold a previous run: replace what that run wrote (recorded in run.json)."),
    allow_unmatched: bool = typer.Option(False, "--allow-unmatched", help="Accept --outcomes product ids that match no product (listed as a warning)."),
    allow_outside: bool = typer.Option(False, "--allow-outside", help="Accept manifest files (or links) that lie outside FOLDER."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Process every product again, even those whose inputs and settings are unchanged since the last run into OUT."),
    reports: str = typer.Option("now", "--reports", help="now: draw every product's report; later: tables only, draw reports on demand with `tilpheno report OUT`; none: tables only, no reports wanted (recorded in run.json; `tilpheno report OUT` can still draw them)."),
) -> None:
    """Gate every product in FOLDER; write phenotypes, populations, QC, reports, index.html, run.json to OUT.

    Incremental: products whose files, strategies and settings are unchanged since the last run
    into OUT (re-run with --overwrite) are taken from OUT/.cache, not processed again (run.json
    lists them).

    Exit status: 0 every product done and every input file read, 1 some product failed (the others'
    outputs are complete) or an input file could not be read (an FMO or control cut short or missing:
    its product is done without it, flagged) or used (an FMO that is its stained file copied, a panel
    or compensation error), 2 the run could not start or finish (no FCS files, bad options, OUT in
    use or not writable).
    """

    from tilpheno.errors import TilphenoError
    from tilpheno.io.outdir import left_behind

    created = not out.exists()
    try:
        summary, shown = _run_with_progress(
            folder, out, manifest=manifest, outcomes=outcomes, strategy=strategy, release_spec=release_spec,
            study=study, panel=panel, jobs=jobs,
            executor=executor, scheduler=scheduler, fmo_percentile=fmo_percentile,
            include_identifiers=include_identifiers, command_line=["tilpheno", *sys.argv[1:]],
            overwrite=overwrite, allow_unmatched=allow_unmatched, allow_outside=allow_outside,
            use_cache=not no_cache, reports=reports,
            compensation=compensation,
        )
    except (TilphenoError, OSError) as exc:
        _fail(exc)
    except (KeyboardInterrupt, Terminated):   # what became of OUT, before main's closing line
        typer.secho(f"note: {left_behind(out, created)}", fg=typer.colors.YELLOW, err=True)
        raise
    _print_summary(summary, shown)
    _warn_run_unfit(summary, folder)
    _note_signed_review(out)
    if not summary.ok:
        raise typer.Exit(code=1)


def _note_signed_review(out: Path) -> None:
    """On stderr, after a run into ``out``: when the review app's default database beside it
    (``OUT.review.sqlite``) holds approvals or rejections, a note naming their products: the
    database is kept, and a decision whose signed data this run changed is void, listed by
    ``serve`` as re-run after signing (a PostgreSQL database, ``--db``, is not seen from here)."""
    from tilpheno.review.db import decided_products, default_db_path

    path = default_db_path(out)
    decided = decided_products(path)
    if decided:
        from tilpheno.review.service import DATA_BOUND

        named = ", ".join(decided[:5]) + (f" and {len(decided) - 5} more" if len(decided) > 5 else "")
        typer.secho(f"note: {path} holds QA decisions (approvals or rejections) of {named}: kept; one on a product "
                    f"whose {DATA_BOUND} this run changed is void, as is one whose automatic gates it changed once "
                    "the product is opened: "
                    f"`tilpheno serve {out}` lists them as 're-run after signing: needs review'",
                    fg=typer.colors.YELLOW, err=True)


def _warn_run_unfit(summary, folder) -> None:
    """On stderr, the line on a run's failed stained files that fit no tube kind of its study
    (``summary.unfit``; :func:`tilpheno.pipeline.inputs.describe_unfit`, ``folder`` as the run's input
    folder), as ``process`` and ``report`` close."""
    if summary.unfit and summary.study is not None:
        from tilpheno.pipeline.inputs import describe_unfit

        typer.secho(describe_unfit(summary.unfit, summary.study, folder), fg=typer.colors.YELLOW, err=True)


def _run_with_progress(folder, out, *, manifest=None, outcomes=None, strategy=None, release_spec=None, study=None,
                       panel=None, jobs=1, executor="local",
                       scheduler=None, fmo_percentile=99.5, include_identifiers=False, make_reports=True,
                       command_line=None, overwrite=False, allow_unmatched=False, allow_outside=False,
                       use_cache=True, reports=None, report_products=None, compensation=None, run_inputs=None,
                       rerun_of=None, describe=None):
    """``pipeline.process_folder`` with a rich progress bar over products (files in the description),
    shown once the output folder is claimed (a refused folder prints only its error); on an output that is
    no terminal (a log file) the description is printed whole on its own line, and no bar. ``describe``:
    (n_products, n_files) -> the bar's description; default ``gating N products (M files)``. Each
    product that fails is printed as it fails, with its reason: returns the run's summary and their
    ids, which :func:`_print_summary` names without printing each reason a second time."""
    from contextlib import ExitStack

    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tilpheno.pipeline import process_folder

    with ExitStack() as stack:
        state = {}
        shown: set[str] = set()

        console = Console()

        def on_start(n_products: int, n_files: int) -> None:
            text = describe(n_products, n_files) if describe else f"gating {n_products} products ({n_files} files)"
            if not console.is_terminal:   # a log file: the line whole, no bar (rich cuts it at 80 columns there)
                console.print(escape(text), highlight=False, soft_wrap=True)
                return
            bar = stack.enter_context(Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                               TimeElapsedColumn(), transient=False, console=console))
            state["task"] = bar.add_task(escape(text), total=n_products)
            state["bar"] = bar

        def on_outcome(o) -> None:
            if not o.ok:
                # whole, not cut at the console's width (80 columns when stdout is a log file, not a terminal)
                console.print(f"[red]failed[/red] {escape(o.product_id)}: {escape(o.error)}", highlight=False,
                              soft_wrap=True)
                shown.add(o.product_id)
            if "bar" in state:
                state["bar"].advance(state["task"])

        summary = process_folder(
            folder, out, manifest_csv=manifest, outcomes_path=outcomes, strategy_paths=strategy, release_spec_path=release_spec,
            study=study, panel_path=panel,
            fmo_percentile=fmo_percentile, include_identifiers=include_identifiers, make_reports=make_reports,
            executor=executor, n_jobs=jobs, scheduler=scheduler, command_line=command_line,
            on_start=on_start, on_outcome=on_outcome, overwrite=overwrite, allow_unmatched=allow_unmatched,
            allow_outside=allow_outside, compensation_path=compensation, use_cache=use_cache, reports=reports,
            report_products=report_products, run_inputs=run_inputs, rerun_of=rerun_of,
        )
        return summary, frozenset(shown)


@app.command()
def report(
    out: Path = typer.Argument(..., help="Output folder of an earlier `tilpheno process` run.", callback=_existing_folder),
    products: Optional[List[str]] = typer.Argument(None, help="Product ids (default: every product)."),
) -> None:
    """Draw the reports of OUT's products (e.g. after `process --reports later`), with the run's own settings.

    Gating is taken from OUT/.cache when the inputs are unchanged; a product without a stored
    report is gated again and drawn. Other products keep the reports they have.

    Exit status: 0 reports drawn and the run is ok (every product done, every input file read); 1
    reports drawn, but the run is not ok, as its `process` exited 1 (some product failed: it has no
    report; or an input file could not be read or used), said on stderr; 2 nothing drawn (OUT holds no
    readable run, an input changed since, an unknown product, OUT not writable); 130 / 143 stopped by
    Ctrl-C / SIGTERM (OUT as it was, a note says so).
    """

    from tilpheno.errors import TilphenoError
    from tilpheno.io.outdir import left_behind
    from tilpheno.pipeline import rerun_arguments

    try:
        kwargs, known = rerun_arguments(out)
        unknown = sorted(set(products or ()) - known)
        if unknown:
            raise TilphenoError(f"{out}: no product {', '.join(map(repr, unknown))} in this run (products: "
                                f"{', '.join(sorted(known)[:10])}{' ...' if len(known) > 10 else ''})")
        summary, shown = _run_with_progress(**kwargs, out=out, reports="now", report_products=products or None,
                                     command_line=["tilpheno", *sys.argv[1:]], overwrite=True,
                                     describe=lambda n, files: _report_progress_text(products or [], n, files))
    except (TilphenoError, OSError) as exc:
        _fail(exc)
    except (KeyboardInterrupt, Terminated):   # what became of OUT (an existing run's folder), as process says
        typer.secho(f"note: {left_behind(out, created=False)}", fg=typer.colors.YELLOW, err=True)
        raise
    _print_summary(summary, shown)
    _warn_run_unfit(summary, kwargs["folder"])
    if not summary.ok:
        typer.secho(f"warning: {out}: reports drawn, but the run is not ok ({_not_ok(summary)}), as its process "
                    "exited 1: exit status 1", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=1)


def _report_progress_text(products: List[str], n_products: int, n_files: int) -> str:
    """What `tilpheno report` does, for its progress bar: the reports of ``products`` (every one of
    the run's ``n_products`` when empty) drawn, the other products taken from OUT/.cache (gated
    again only where the cache lost them)."""
    if not products:
        return f"drawing the reports of {n_products} products ({n_files} files)"
    asked = sorted(set(products))
    others = n_products - len(asked)
    rest = f" (the other {others} product{'s' if others != 1 else ''} from the cache)" if others else ""
    named = ", ".join(asked) if len(asked) <= 3 else f"{len(asked)} products ({', '.join(asked[:3])}, ...)"
    return f"drawing the report{'s' if len(asked) > 1 else ''} of {named}{rest}"


def _not_ok(summary) -> str:
    """Why a run (a ``RunSummary``) is not ok, in counts: ``1 product failed, 2 input files unreadable``."""
    errors = [f for f in summary.run_flags if f.severity == "error"]
    parts = [(len(summary.failed), "product failed", "products failed"),
             (len(summary.unreadable), "input file unreadable", "input files unreadable"),
             (len(summary.unusable), "input file unusable", "input files unusable"),
             (len(errors), "error of the run itself", "errors of the run itself")]
    return ", ".join(f"{n} {one if n == 1 else many}" for n, one, many in parts if n)


def _print_summary(summary, shown: frozenset[str]) -> None:
    """The run's closing lines: counts, each failed product (its reason unless it is in ``shown``,
    printed as it failed), unreadable and unusable inputs, QC flags, release."""
    typer.echo(
        f"{len(summary.done)} of {summary.n_products} products done, {len(summary.failed)} failed "
        f"in {summary.seconds:.1f} s; outputs in {summary.out_dir}"
    )
    above = [pid for pid in summary.failed if pid in shown]
    if above:   # each printed whole, with its reason, as it failed: named here, not printed twice
        typer.echo(f"  failed (reason{'s' if len(above) > 1 else ''} above): {', '.join(above)}")
    for pid, reason in summary.failed.items():
        if pid not in shown:   # failed before gating started (e.g. run-level compensation)
            typer.echo(f"  failed {pid}: {reason}")
    for line in summary.unreadable:   # its product may be done without it: still not a clean run (exit status 1)
        typer.echo(f"  unreadable {line}")
    for line in summary.unusable:   # read, but dropped by the product done without it: exit status 1 too
        typer.echo(f"  unusable {line}")
    if summary.flag_counts:   # each code with its worst severity, so an info-only record reads as one
        typer.echo("QC flags: " + ", ".join(f"{code} {n} ({summary.flag_severity.get(code, '?')})"
                                            for code, n in summary.flag_counts.items()))
    else:
        typer.echo("QC flags: none")
    typer.echo(f"release ({summary.release_spec}): "
               + ", ".join(f"{status} {n}{_why(status, summary.not_evaluable)}"
                           for status, n in sorted(summary.release_counts.items())))


def _why(status: str, not_evaluable: dict[str, int]) -> str:
    """The reasons beside ``not evaluable`` in the summary's release line, most products first:
    `` (2 awaiting review, 1 value missing)``; nothing beside another status."""
    from tilpheno.release import NOT_EVALUABLE

    if status != NOT_EVALUABLE or not not_evaluable:
        return ""
    return " (" + ", ".join(f"{n} {why}" for why, n in sorted(not_evaluable.items(), key=lambda item: (-item[1], item[0]))) + ")"


# --- biomarkers: outcomes join, response rates, Kaplan-Meier, cut-points, Cox models ---


@app.command()
def biomarkers(
    phenotypes: Path = typer.Option(..., "--phenotypes", help="phenotypes.csv from `tilpheno process` (one row per product).", callback=_existing_file),
    outcomes: Path = typer.Option(..., "--outcomes", help="Outcomes table, CSV or Excel (.xlsx): patient_id, product_id, til_dose_cells, best_response, pfs_months, pfs_event, os_months, os_event, covariates.", callback=_existing_file),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder of the analysis (created; a previous analysis there is replaced, other files kept; a `process` output folder is refused)."),
    markers: Optional[str] = typer.Option(None, "--markers", help="Comma-separated marker columns; default: the study's `biomarkers` (TIL: dose and the phenotype variables)."),
    study: Optional[str] = typer.Option(None, "--study", help="Study (bundled name or study.yaml) giving the default markers; default: the study recorded in run.json beside PHENOTYPES, else the bundled TIL study."),
    covariates: Optional[str] = typer.Option(None, "--covariates", help="Comma-separated covariates of the multivariable models; default: age, sex, ecog when present."),
    endpoints: str = typer.Option("pfs,os", "--endpoints", help="Comma-separated endpoints: pfs, os."),
    cutpoints: Optional[Path] = typer.Option(None, "--cutpoints", help="CSV of pre-specified cut-points: marker, cutpoint[, endpoint] (one per marker and endpoint; blank endpoint = both; cutpoint in the marker's unit as measured, cells for a dose).", callback=_existing_file),
    n_perm: int = typer.Option(10_000, "--permutations", min=0, help="Permutations for the cut-point p-value (0 = none; at most 10,000,000)."),
    seed: int = typer.Option(20240601, "--seed", help="Seed of the permutations."),
    conf_type: str = typer.Option("log", "--conf-type", help="Kaplan-Meier CI transformation: log, log-log or plain."),
    minprop: float = typer.Option(0.1, "--minprop", min=0.01, max=0.49, help="Smallest group fraction of a candidate cut-point."),
    n_boot: int = typer.Option(200, "--bootstrap", min=0, help="Bootstrap samples of the internal validation, calibration and time-dependent AUC (with its CIs); 0: none of these three is done (at most 100,000)."),
    knots: int = typer.Option(4, "--knots", min=3, max=5, help="Knots of the restricted cubic splines (Harrell's quantiles)."),
    roc_times: str = typer.Option("6,12", "--roc-times", help="Comma-separated times (months, above 0) of the time-dependent AUC (none with --bootstrap 0)."),
    break_times: Optional[str] = typer.Option(None, "--break-times", help="Comma-separated times (months) of the numbers-at-risk tables; default every 6 months."),
    landmark: float = typer.Option(3.0, "--landmark", min=0.0, help="Landmark time (months) of the responder survival comparison."),
    pdf: bool = typer.Option(False, "--pdf", help="Also write every figure to figures.pdf (one page each; SVGs are written with every report)."),
    reports: str = typer.Option("now", "--reports", help="now: draw report.html and figures/*.svg; none: tables and run.json only, no report or figures (recorded in run.json; a previous analysis' report in OUT is removed with its tables)."),
) -> None:
    """Biomarker analysis of PHENOTYPES against OUTCOMES: response.csv, km.csv, cutpoints.csv, cox_*.csv, responders.csv, report.html."""
    from tilpheno.biomarkers.analysis import read_cutpoints, run_biomarkers
    from tilpheno.biomarkers.cohort import read_phenotypes
    from tilpheno.errors import TilphenoError
    from tilpheno.io.outcomes import read_outcomes

    def _split(text):
        return None if text is None else [v.strip() for v in text.split(",") if v.strip()]

    def _times(text, flag):
        """Comma-separated months; a value that is not a number is an error naming the option."""
        values = []
        for v in _split(text) or ():
            try:
                values.append(float(v))
            except ValueError:
                raise TilphenoError(f"{flag}: {v!r} is not a number (comma-separated months, e.g. 6,12)") from None
        return values

    try:
        pre = read_cutpoints(cutpoints) if cutpoints is not None else None
        chosen = _biomarker_study(study, phenotypes)
        results = run_biomarkers(
            read_phenotypes(phenotypes), read_outcomes(outcomes), out, markers=_split(markers),
            covariates=_split(covariates), endpoints=tuple(_split(endpoints) or ()), cutpoints=pre,
            n_perm=n_perm, seed=seed, conf_type=conf_type, minprop=minprop, n_boot=n_boot, spline_knots=knots,
            roc_times=_times(roc_times, "--roc-times"),
            break_times=_times(break_times, "--break-times") if break_times else None, landmark=landmark,
            inputs=[phenotypes, outcomes, cutpoints], pdf=pdf, study=chosen, sources=(str(phenotypes), str(outcomes)),
            reports=reports,
        )
    except (TilphenoError, ValueError, OSError) as exc:
        _fail(exc)
    _print_biomarker_summary(results, out)
    if reports == "none":
        typer.echo(f"  {_tables_only_note(results.removed)}")


def _tables_only_note(removed: list[str]) -> str:
    """The line after a ``biomarkers --reports none`` run: no report drawn, and the previous analysis'
    report files it removed (``removed``: its outputs this run removed, paths relative to OUT), which
    described that analysis, not these tables."""
    report = [p for p in removed if p in ("report.html", "figures.pdf") or Path(p).parts[0] == "figures"]
    gone = (f"; the previous analysis' report ({', '.join(sorted(report)[:3])}{', ...' if len(report) > 3 else ''}: "
            f"{len(report)} file(s)) was removed with its tables") if report else ""
    return f"no report drawn (--reports none): tables and run.json only{gone}"


def _print_biomarker_summary(results, out: Path) -> None:
    """The lines after a biomarker analysis (``biomarkers``, the demo's third step): patients, markers, unmatched
    ids and every warning, each once."""
    cohort = results.cohort
    typer.echo(f"{len(cohort.data)} patients with phenotypes and outcomes ({len(cohort.outcomes)} with outcomes); "
               f"{len(cohort.markers)} marker{'' if len(cohort.markers) == 1 else 's'}; times in months (pfs_months, os_months as given); outputs in {out}")
    for what, ids in [("product(s) without outcomes", cohort.products_without_outcomes),
                      ("patient(s) without a phenotyped product", cohort.patients_without_products),
                      ("patient(s) whose product was not analysed (status not 'done' in the phenotypes)",
                       cohort.patients_with_products_not_done)]:
        if ids:
            typer.echo(f"  {_id_summary(what, list(ids))}")
    for w in results.warnings:
        typer.echo(f"  warning: {w}")


UNMATCHED_SHOWN = 5
"""Ids of one kind of unmatched row that `biomarkers` prints; the rest are counted (all in unmatched.csv)."""


def _id_summary(what: str, ids: list[str]) -> str:
    """One line for a kind of unmatched id: its count, the first few ids, how many more (unmatched.csv lists all)."""
    shown = ", ".join(ids[:UNMATCHED_SHOWN])
    more = f" and {len(ids) - UNMATCHED_SHOWN} more" if len(ids) > UNMATCHED_SHOWN else ""
    return f"{len(ids)} {what}: {shown}{more} (listed in unmatched.csv)"


def _biomarker_study(study: Optional[str], phenotypes: Path):
    """``--study``, else the study of the ``process`` run that wrote PHENOTYPES (its run.json), else the bundled
    one: without a run.json silently; with one that cannot be read or is no run's record, one line on stderr
    saying so (the analysis goes on with the bundled study's defaults)."""
    import json

    from tilpheno.pipeline.record import check_run_record, run_study
    from tilpheno.study import default_study, load_study

    if study is not None:
        return load_study(study)
    run_json = phenotypes.parent / "run.json"
    if not run_json.exists() and not run_json.is_symlink():
        return default_study()
    try:
        run = json.loads(run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return _bundled_study_instead(run_json, f"not read ({type(exc).__name__}: {exc})")
    if not isinstance(run, dict) or "parameters" not in run:
        return _bundled_study_instead(run_json, "not the record of a process run (no parameters)")
    return run_study(check_run_record(run, run_json), run_json)


def _bundled_study_instead(run_json: Path, why: str):
    """The bundled study, after one line on stderr: the run.json beside the phenotypes (``why``) gave none."""
    from tilpheno.study import default_study

    chosen = default_study()
    typer.secho(f"{run_json}: {why}; the biomarker defaults are the bundled study's ({chosen.name}): "
                "--study names the study of the run", fg=typer.colors.YELLOW, err=True)
    return chosen


@app.command()
def plan(
    hr: Optional[float] = typer.Option(None, "--hr", help="Hazard ratio to confirm (two groups: high vs low; continuous: per unit of the marker)."),
    observed: Optional[Path] = typer.Option(None, "--observed", help="Output folder of `tilpheno biomarkers`: take the HR, SD, group fraction and event probability observed for --marker.", callback=_existing_folder),
    marker: Optional[str] = typer.Option(None, "--marker", help="Marker whose observed effect is used (with --observed)."),
    endpoint: str = typer.Option("pfs", "--endpoint", help="Endpoint of the observed effect (with --observed)."),
    sd: Optional[float] = typer.Option(None, "--sd", help="Marker standard deviation: gives the continuous-marker (Hsieh-Lavori) size."),
    prop: float = typer.Option(0.5, "--prop", help="Fraction of patients in the high group (Schoenfeld)."),
    alpha: float = typer.Option(0.05, "--alpha", help="Two-sided significance level."),
    power: float = typer.Option(0.8, "--power", help="Power."),
    p_event: float = typer.Option(1.0, "--p-event", help="Probability that a patient has the event during the study (patients = whole events / p_event, rounded up)."),
) -> None:
    """Events and patients a validation study needs to confirm a marker's hazard ratio (Schoenfeld; Hsieh-Lavori with --sd)."""
    from tilpheno.biomarkers.planning import hsieh_lavori, observed_effect, schoenfeld

    try:
        if observed is not None:
            if marker is None:
                raise ValueError("--observed needs --marker")
            eff = observed_effect(observed, marker, endpoint)
            typer.echo(f"observed ({endpoint}, {marker}): HR high vs low {eff['hr_dichotomized']:.4g}, HR per unit "
                       f"{eff['hr_continuous']:.4g}, SD {eff['sd']:.4g}, high fraction {eff['prop']:.3g}, "
                       f"P(event) {eff['p_event']:.3g}")
            sizes = [schoenfeld(eff["hr_dichotomized"], eff["prop"], alpha, power, eff["p_event"]),
                     hsieh_lavori(eff["hr_continuous"], eff["sd"], alpha, power, eff["p_event"])]
        else:
            if hr is None:
                raise ValueError("give --hr, or --observed with --marker")
            sizes = [schoenfeld(hr, prop, alpha, power, p_event)]
            if sd is not None:
                sizes.append(hsieh_lavori(hr, sd, alpha, power, p_event))
    except (ValueError, OSError, KeyError) as exc:
        _fail(exc)
    for s in sizes:
        typer.echo(f"{s.method}: HR {s.hr:g}, two-sided alpha {s.alpha:g}, power {s.power:g}: {s.events} events "
                   f"({s.events_exact:.2f}), {s.patients} patients at P(event) = {s.p_event:g}")


# --- demo: the whole chain on bundled data (what `make demo` runs) ---


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Output folder for the demo's reports."),
    jobs: int = typer.Option(2, "--jobs", min=1, help="Products processed in parallel."),
    products: int = typer.Option(60, "--products", min=10, help="Products in the simulated biomarker cohort."),
    events: int = typer.Option(5000, "--events", min=500, help="Events per tube in the simulated cohort."),
    seed: int = typer.Option(20240601, "--seed", help="Seed of the simulated cohort."),
    n_boot: int = typer.Option(200, "--bootstrap", min=0, help="Bootstrap samples of the biomarker analysis."),
) -> None:
    """`process` on sample_fcs/ (full reports), then a simulated cohort through FCS files, gating and biomarkers."""
    import time

    from tilpheno.biomarkers.analysis import run_biomarkers
    from tilpheno.biomarkers.cohort import read_phenotypes
    from tilpheno.errors import TilphenoError
    from tilpheno.io.outcomes import read_outcomes
    from tilpheno.simulate.cohort import simulate_cohort

    start = time.perf_counter()
    sample = _sample_folder()
    try:
        typer.echo(f"1/3 process {sample} -> {out / 'sample'}")
        # the demo owns its output folders: a second `make demo` replaces the first one's outputs
        first, shown = _run_with_progress(sample, out / "sample", manifest=_optional(sample / "manifest.csv"),
                                   outcomes=_optional(sample / "outcomes.csv"), jobs=jobs, overwrite=True)
        _print_summary(first, shown)
        _note_signed_review(out / "sample")   # the closing lines send the user to review these products
        typer.echo(f"2/3 simulate {products} products x 9 tubes x {events} events, then process (tables only)")
        cohort = simulate_cohort(out / "cohort_fcs", products, seed, events)
        second, shown = _run_with_progress(cohort.out_dir, out / "cohort", manifest=cohort.manifest,
                                    outcomes=cohort.outcomes, jobs=jobs, make_reports=False, overwrite=True)
        _print_summary(second, shown)
        typer.echo("3/3 biomarker analysis of the simulated cohort")
        phenotypes = read_phenotypes(out / "cohort" / "phenotypes.csv")   # as `tilpheno biomarkers` reads it
        bio = run_biomarkers(phenotypes[phenotypes["status"] == "done"], read_outcomes(cohort.outcomes), out / "biomarkers",
                             n_boot=n_boot, inputs=[out / "cohort" / "phenotypes.csv", cohort.outcomes])
        _print_biomarker_summary(bio, out / "biomarkers")
    except (TilphenoError, OSError) as exc:
        _fail(exc)
    typer.echo(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    typer.echo(f"  product reports: {out / 'sample' / 'index.html'}")
    typer.echo(f"  cohort tables:   {out / 'cohort' / 'phenotypes.csv'}")
    typer.echo(f"  biomarkers:      {bio.files.get('report.html', out / 'biomarkers')}")
    sample_out = out / "sample"
    typer.echo("\nreview, correct and sign the sample products in the browser:")
    typer.echo(f"  tilpheno users add {sample_out} YOUR_NAME --role reviewer --full-name 'Your Name'")
    typer.echo(f"  tilpheno serve {sample_out}        # then open http://127.0.0.1:8765/")
    typer.echo("  (with `make demo`, the commands are .venv/bin/tilpheno ...)")


def _sample_folder() -> Path:
    """The committed ``sample_fcs/`` (next to the package in a checkout, else in the working folder)."""
    import tilpheno

    for candidate in (Path(tilpheno.__file__).resolve().parents[1] / "sample_fcs", Path.cwd() / "sample_fcs"):
        if candidate.is_dir():
            return candidate
    _fail(FileNotFoundError("sample_fcs/ not found: run the demo from a tilpheno checkout"))


def _optional(path: Path) -> Optional[Path]:
    return path if path.exists() else None


# --- interop: apply Gating-ML / FlowJo gates to one file; export events with membership ---


# what apply-gates and export-events read (one FCS file and its gates, _read_gating), declared once
GATED_FILE = typer.Argument(..., help="FCS file.", callback=_existing_file)
GATINGML = typer.Option(None, "--gatingml", help="Gating-ML 2.0 document.", callback=_existing_file)
WORKSPACE = typer.Option(None, "--wsp", help="FlowJo 10 workspace (.wsp).", callback=_existing_file)
WORKSPACE_GROUP = typer.Option("All Samples", "--group", help="Sample group of the workspace (its sample matching "
                                                              "FILE's name when it has several).")


def _read_gating(file: Path, gatingml: Optional[Path], wsp: Optional[Path], group: str):
    """(FCSFile, its $PnS markers, Gating-ML document or FlowJo workspace sample) for one of --gatingml / --wsp."""
    from tilpheno.errors import TilphenoError
    from tilpheno.io.fcs import read_fcs

    if gatingml is None and wsp is None:
        raise TilphenoError("no gates given: give --gatingml FILE (Gating-ML 2.0) or --wsp FILE (FlowJo workspace)")
    if gatingml is not None and wsp is not None:
        raise TilphenoError(f"--gatingml {gatingml} and --wsp {wsp} both given: give one of them")
    fcs = read_fcs(file)
    markers = list(fcs.channels["pns"])   # a gate may name a channel by its $PnS
    if gatingml is not None:
        from tilpheno.gates.gatingml import read_gatingml

        return fcs, markers, read_gatingml(gatingml)
    from tilpheno.gates.flowjo import read_workspace, workspace_samples

    assert wsp is not None   # exactly one of the two was given (checked above)
    several = len(workspace_samples(wsp, group)) > 1
    return fcs, markers, read_workspace(wsp, group, sample=file.name if several else None)


def _gates_on_file(file: Path, gatingml: Optional[Path], wsp: Optional[Path], group: str):
    """(FCSFile, {population: mask}) for one of --gatingml / --wsp."""
    from tilpheno.gates.flowjo import FlowJoSample, apply_workspace
    from tilpheno.gates.gatingml import apply_gatingml

    fcs, markers, gating = _read_gating(file, gatingml, wsp, group)
    assert fcs.events is not None   # read_fcs decodes the events (only read_fcs_metadata leaves None)
    if isinstance(gating, FlowJoSample):
        return fcs, apply_workspace(gating, fcs.events, fcs.channel_names, markers)
    return fcs, apply_gatingml(gating, fcs.events, fcs.channel_names, fcs.spillover, markers)


@app.command("apply-gates")
def apply_gates(
    file: Path = GATED_FILE,
    gatingml: Optional[Path] = GATINGML,
    wsp: Optional[Path] = WORKSPACE,
    group: str = WORKSPACE_GROUP,
    out: Path = typer.Option(..., "-o", "--out", help="Output CSV (written atomically)."),
) -> None:
    """Apply Gating-ML or FlowJo gates to FILE with tilpheno's geometry.

    Gating-ML: one 0/1 column per gate id (one per quadrant id) in event order.
    Workspace: one row per population (path from the sample root): population, parent, count,
    flowjo_count (the count FlowJo stored; empty if never computed), near_boundary (at most this
    many events may be counted differently by FlowJo, which bins polygon and ellipse gates), gate.
    """
    import pandas as pd

    from tilpheno.errors import TilphenoError
    from tilpheno.io.atomic import write_csv

    try:
        if wsp is None:
            fcs, masks = _gates_on_file(file, gatingml, wsp, group)
            table = pd.DataFrame({pid: mask.astype("int8") for pid, mask in masks.items()})
            what = f"{len(masks)} gate columns x {fcs.n_events} events"
        else:
            from tilpheno.gates.flowjo import population_counts

            fcs, markers, sample = _read_gating(file, gatingml, wsp, group)
            assert fcs.events is not None   # read_fcs decodes the events
            table = population_counts(sample, fcs.events, fcs.channel_names, markers)
            what = f"{len(table)} populations"
    except (TilphenoError, OSError) as exc:
        _fail(exc)
    _write_or_fail(out, lambda path: write_csv(path, table))
    typer.echo(f"wrote {what} to {out}")


@app.command("export-events")
def export_events(
    file: Path = GATED_FILE,
    gatingml: Optional[Path] = GATINGML,
    wsp: Optional[Path] = WORKSPACE,
    group: str = WORKSPACE_GROUP,
    fcs_out: Optional[Path] = typer.Option(None, "--fcs", help="Write FCS 3.1: the events plus one 0/1 channel per population."),
    h5ad_out: Optional[Path] = typer.Option(None, "--h5ad", help="Write AnnData .h5ad: obs = membership columns, var = channels."),
) -> None:
    """Export FILE's events with their population membership (Gating-ML or FlowJo gates) for other tools."""
    from tilpheno.errors import TilphenoError
    from tilpheno.io.export import export_fcs, export_h5ad

    if fcs_out is None and h5ad_out is None:
        _fail(TilphenoError("no output given: give --fcs FILE and/or --h5ad FILE"))
    try:
        fcs, masks = _gates_on_file(file, gatingml, wsp, group)
        for target, writer in ((fcs_out, export_fcs), (h5ad_out, export_h5ad)):
            if target is not None:
                _write_or_fail(target, lambda path: writer(fcs, masks, path))
                typer.echo(f"wrote {fcs.n_events} events x {len(masks)} populations to {target}")
    except (TilphenoError, OSError) as exc:
        _fail(exc)


# --- review: `serve`, `users`, `audit`, `export-approved` (tilpheno.review) ---
from tilpheno.review.cli import register as _register_review  # noqa: E402  (typer only; the app loads lazily)

_register_review(app)


INTERRUPTED = 130
"""Exit status of a command stopped by Ctrl-C (128 + SIGINT; Typer's for a KeyboardInterrupt)."""


class Terminated(SystemExit):
    """SIGTERM received: the command stops as on Ctrl-C, with exit status 143 (128 + 15)."""


def _stop_on_sigterm(signum, frame) -> NoReturn:
    raise Terminated(128 + signum)


def _lower_first(text: str) -> str:
    """``text`` with its first letter lower-cased when it starts a plain word (``No such command``
    -> ``no such command``; ``FOLDER`` is kept): Click's sentences in the form of the CLI's errors."""
    return text[0].lower() + text[1:] if len(text) > 1 and text[0].isupper() and text[1].islower() else text


def _click_exceptions() -> Any:
    """The module of the Click exceptions the app raises: Typer's own copy of Click
    (``typer._click``, Typer 0.29 on), Click itself before."""
    import importlib

    try:
        return importlib.import_module("typer._click.exceptions")
    except ModuleNotFoundError:
        return importlib.import_module("click.exceptions")


def _param_label(param: Any) -> str:
    """A Click parameter as an error names it: an option by its names (``-o / --out``), an argument
    by its name in capitals (``FOLDER``, as in the usage line)."""
    if param.param_type_name == "option":
        return " / ".join(param.opts)
    return (param.name or "").upper()


def _given_value(exc: typer.BadParameter) -> Optional[str]:
    """The value typed for the parameter of ``exc`` where Typer's conversion recorded it (the pydantic
    validation error behind the message, one value); None where it did not."""
    errors = getattr(exc.__cause__, "errors", None)
    found = errors() if callable(errors) else []
    if len(found) == 1 and isinstance(found[0].get("input"), (str, int, float)):
        return str(found[0]["input"])
    return None


def usage_error_text(exc: Any) -> str:
    """A usage error (unknown option or command, a missing or malformed option or argument, a value
    out of range) in one line naming the parameter and the command, e.g. ``--jobs 0: input should
    be greater than or equal to 1 (process)``, ``missing option -o / --out (process)``, ``no such
    option --bogus; did you mean --jobs? (process)``, instead of Typer's multi-line usage box.
    ``exc`` is a Click ``UsageError`` (:func:`_click_exceptions`)."""
    errors = _click_exceptions()
    if isinstance(exc, errors.MissingParameter) and exc.param is not None:
        text = f"missing {exc.param_type or exc.param.param_type_name} {_param_label(exc.param)}"
        text += f": {_lower_first(exc.message)}" if exc.message else ""
    elif isinstance(exc, errors.BadParameter) and exc.param is not None:
        value = _given_value(exc)
        text = f"{_param_label(exc.param)}{'' if value is None else ' ' + value}: {_lower_first(exc.message)}"
    elif isinstance(exc, errors.NoSuchOption):
        text = f"no such option {exc.option_name}"
        text += f"; did you mean {' or '.join(exc.possibilities)}?" if exc.possibilities else ""
    else:
        text = _lower_first(exc.format_message())
    command = _command_name(exc.ctx)
    return text.rstrip(".") + (f" ({command})" if command else "")


def _command_name(ctx: Any) -> str:
    """The command ``ctx`` runs, as typed after ``tilpheno`` (``process``, ``users add``); empty for
    ``tilpheno`` itself or no context (``ctx`` a Click context or None)."""
    names: List[str] = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def _run_app() -> int:
    """Run the Typer app, its Click errors formatted here rather than by Typer (``standalone_mode``
    off): a usage error is one line ``error: ...`` (:func:`usage_error_text`), exit status 2 (Click's),
    nothing run; another Click error is its message in one line with its status; an abort is
    ``Aborted.`` with status 1, as Typer had it. Returns the exit status: a command's ``typer.Exit``
    code, 0 after ``--help``, ``--version`` or a command that ran to its end."""
    errors = _click_exceptions()
    try:
        code = app(standalone_mode=False)
    except getattr(errors, "NoArgsIsHelpError", ()) as exc:   # Click 8.2 on; the help is already shown
        return exc.exit_code
    except errors.UsageError as exc:
        _print_error(usage_error_text(exc))
        return exc.exit_code
    except errors.ClickException as exc:
        _print_error(exc.format_message())
        return exc.exit_code
    except typer.Abort:
        typer.secho("Aborted.", fg=typer.colors.RED, err=True)
        return 1
    return code if isinstance(code, int) else 0


def main() -> None:  # console-script entry point
    """Run the command line. SIGTERM (``kill``, a batch scheduler's time limit, ``docker stop``)
    stops a command as Ctrl-C does, so its clean-up runs (a ``process`` run's staging folder and
    worker processes go, OUT keeps what it held), with one line and exit status 143; by default
    Python would die at once, leaving its workers running on. Ctrl-C (which Typer turns into a
    silent exit status 130) says so in one line too.

    ``process --jobs N`` starts its workers' fork server first, before Typer reads the command line
    (0.15 s of CPU: pydantic, an adapter per parameter, the pipeline's imports): the server's
    imports of the workers' libraries, the longest serial part of a parallel run, overlap with all
    of that (:func:`tilpheno.launch.start_fork_server_early`; the ``tilpheno`` script and ``python -m
    tilpheno`` start it even before this module's imports, and then it is running already)."""
    import signal

    from tilpheno.launch import small_pages, start_fork_server_early

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    small_pages()   # (the ``tilpheno`` script has done it already; ``python -m tilpheno.cli`` has not)
    start_fork_server_early(sys.argv[1:])
    try:
        sys.exit(_run_app())
    except Terminated:
        _print_error("terminated (SIGTERM) before the command finished")
        raise
    except SystemExit as exc:
        if exc.code == INTERRUPTED:
            _print_error("interrupted (Ctrl-C) before the command finished")
        raise


if __name__ == "__main__":
    main()
