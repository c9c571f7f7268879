"""Manifests: which file is which tube of which infusion product.

A manifest has one row per FCS file with columns ``file, product_id, tube, role, fmo_marker``:

* ``tube``: the tube kind, one of the study's (``tilpheno.study``; the TIL study's are ``surface``
  and ``treg``), or ``unstained`` for the unstained control;
* ``role``: ``stain`` | ``fmo`` | ``unstained`` | ``single_stain`` (a compensation control; its
  rows and the control set's unstained control have tube ``compensation``; an optional
  ``detector`` column names the control's detector, else it is inferred, see
  ``tilpheno.spillover``);
* ``fmo_marker``: the marker an FMO tube omits, in the vocabulary's spelling (``''`` otherwise).

``scan_folder`` infers it from HEADER/TEXT only (``read_fcs_metadata``). Inference, per file:

1. design naming ``<product>_<tube>_<role>[_<marker>].fcs`` / ``<product>_unstained.fcs`` (``<tube>``
   one of the study's tube kinds or their names);
2. otherwise product from ``$SRC`` (else the folder name, else the file name; a ``$SRC`` of
   :data:`NO_NAME`, Attune's ``NA``, is none; a ``$SRC`` found in
   several FACSDiva experiments, ``EXPERIMENT NAME``, with stained files of one tube kind in more than
   one is ``<$SRC> (<experiment>)``; ids that differ only in case within one experiment, ``p01`` and
   ``P01``, are one product, spelt as its stained files, with a warning), and role from
   ``TUBE NAME``, then ``$FIL``, then the file name: ``FMO <marker>`` means fmo, ``unstained`` /
   ``unstain`` / ``unst`` / ``blank`` / ``no stain`` (whole words) means unstained; a file with no $PnS on any
   fluorescence detector (a $PnS copying its $PnN, as MACSQuant and CyFlow write, is none) and no
   marker-named $PnN is unstained; anything else is a stain;
3. an FMO tube whose name gives no marker gets the one stained marker it lacks relative to a
   stained tube of the same product (the stain tube whose markers contain all of its own);
4. tube kind: from the name when given (a word of TUBE NAME or the file name that names a tube
   kind), else from the study's identifying markers (TIL study: ``treg`` when the file, or its
   FMO marker, has FoxP3), else the study's only kind without identifying markers.

Unreadable files stay in the manifest with what their name tells, and the reader's message in an
extra ``problem`` column (``''`` for readable files), so that processing reports them.
``read_manifest`` reads a user manifest (CSV or Excel) and validates it; errors are TableError
naming the file, row and column (an Excel formula cell with no saved value, from a workbook written
by a program and never calculated, is one; so is a row hidden in Excel, by hand or by a filter, and a
column hidden in Excel that holds a value).
"""
from __future__ import annotations

import csv
import logging
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Protocol

import pandas as pd

from tilpheno.errors import FCSReadError, TableError, closest_match, did_you_mean
from tilpheno.io.files import display_name, path_problem
from tilpheno.io.outcomes import MISSING_WORDS, dose_problem, locale_numbers, number
from tilpheno.io.workbook import (decode_text, hidden_sheets, lone_value, open_workbook, place,
                                  refuse_sheet_problems, sheet_rows, summary_label, table_frame, text_rows,
                                  windows_1252, workbook_table)
from tilpheno.panel import PanelOverrides, detector_dyes, file_markers, labels_its_panel
from tilpheno.study import Study, default_study

if TYPE_CHECKING:
    from tilpheno.io.fcs import FCSFile
    from tilpheno.vocabulary import Vocabulary

log = logging.getLogger(__name__)

COLUMNS = ("file", "product_id", "tube", "role", "fmo_marker")
ROLES = ("stain", "fmo", "unstained", "single_stain")
NO_NAME = frozenset({"", "NA", "N/A", "NONE", "NULL", "-"})
"""``$SRC`` values that name no specimen (Attune NxT writes ``NA``): the folder or file name names the product."""
DETECTOR_AT = "detector_at"
"""The column :func:`read_manifest` adds beside an optional ``detector`` column (a single-stain
control's detector): where each row's ``detector`` cell lies (``manifest.csv: row 5, column
'detector'``), so that an error about the detector names the cell to fix."""
FCS_SUFFIXES = (".fcs", ".lmd")

_DESIGN_UNSTAINED = re.compile(r"^(?P<product>.+?)_unstained$", re.IGNORECASE)
_FMO = re.compile(r"(?:^|[^A-Za-z])FMO(?:[^A-Za-z]+(?P<rest>.*))?$", re.IGNORECASE)
_UNSTAINED = re.compile(r"(?:^|[^A-Za-z])(unstained|unstain|unst|blank|no[ _-]?stain)(?:[^A-Za-z]|$)", re.IGNORECASE)
_CONTROL = re.compile(r"stained control|single[ _-]?stain|comp(?:ensation)?[ _-]?control", re.IGNORECASE)


def _design_name(study: Study) -> re.Pattern:
    """``<product>_<tube>_stain`` / ``<product>_<tube>_FMO_<marker>`` with the study's tube words."""
    words = sorted({w for kind in study.tubes.values() for w in (kind.name, *kind.names)}, key=len, reverse=True)
    alternatives = "|".join(re.escape(w) for w in words)
    return re.compile(rf"^(?P<product>.+?)_(?P<tube>{alternatives})_(?:(?P<stain>stain)|FMO_(?P<marker>.+))$", re.IGNORECASE)


def list_fcs_files(folder: Path, problems: list[tuple[str, str]] | None = None) -> list[Path]:
    """FCS files under ``folder`` (recursive, sorted, hidden entries skipped; a directory or other
    non-regular entry named like an FCS file is listed too, so it gets reported as unreadable).

    The walk is iterative (any depth, no recursion limit) and does not follow links to folders.
    A folder that cannot be listed is appended to ``problems`` as ``(folder, reason)`` (never
    skipped silently). Names that are not valid UTF-8 are kept as ``os.fsdecode`` gives them
    (surrogate escapes), so the file can still be opened.
    """
    found = []
    stack = [Path(folder)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            log.warning("%s: folder cannot be listed (%s); its files are not processed", display_name(str(current)), reason)
            if problems is not None:
                problems.append((str(current), reason))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if entry.name.lower().endswith(FCS_SUFFIXES):
                found.append(Path(entry.path))
            elif is_dir:
                stack.append(Path(entry.path))
    return sorted(set(found))


def outside(path: Path, root: Path) -> bool:
    """True when ``path`` (links resolved) does not lie under ``root`` (links resolved)."""
    try:
        real, base = os.path.realpath(path), os.path.realpath(root)
    except (OSError, ValueError):
        return True
    return os.path.commonpath([real, base]) != base


def _role_from_text(text: str, study: Study) -> tuple[str | None, str | None]:
    """(role, fmo_marker) named in a tube name or file name, or (None, None)."""
    text = text.replace("_", " ")
    fmo = _FMO.search(text)
    if fmo:
        return "fmo", study.vocabulary.marker_in(fmo.group("rest") or "")
    if _UNSTAINED.search(text):
        return "unstained", None
    return None, None


def _infer_row(path: Path, root: Path, fcs, study: Study, panel: PanelOverrides | None = None) -> dict:
    """One manifest row for ``path`` from its name and (if readable) its keywords; ``panel``'s
    rows for the file count as its labels (:func:`tilpheno.panel.file_markers`)."""
    stem = path.name.rsplit(".", 1)[0]
    kw = fcs.keywords if fcs is not None else {}
    markers: set[str] = set()
    stained = True  # a $PnS label of its own on some fluorescence detector, or a marker beside detector-named dyes
    if fcs is not None:
        channels = list(zip(map(str, fcs.channels["pnn"]), map(str, fcs.channels["pns"])))
        found = file_markers(fcs, study.vocabulary, panel)
        markers = set(found)
        dyes = detector_dyes(channels, study.vocabulary)   # PI-A: the filter's name, in an unstained tube too
        stained = labels_its_panel(channels) or any(dyes.get(m) != d for m, d in found.items())
    design = _design_name(study).match(stem)
    if design:
        role = "stain" if design.group("stain") else "fmo"
        marker = study.vocabulary.marker_in(design.group("marker")) if role == "fmo" else None
        return _row(path, design.group("product"), study.tube_kind_of(design.group("tube")), role, marker, markers)
    unstained = _DESIGN_UNSTAINED.match(stem)
    if unstained:
        return _row(path, unstained.group("product"), "unstained", "unstained", None, markers)
    specimen = next((name for name in (kw.get("$SRC", "").strip(), kw.get("SPECIMEN NAME", "").strip())
                     if name.upper() not in NO_NAME), "")
    product = specimen or (path.parent.name if path.parent != root else stem)
    experiment = kw.get("EXPERIMENT NAME", "").strip() if specimen else ""
    named = " ".join((kw.get("TUBE NAME", ""), Path(kw.get("$FIL", "")).stem, stem)).replace("_", " ")
    if _CONTROL.search(named):   # a compensation control (FACSDiva: "<fluorochrome> Stained Control")
        role = "unstained" if _UNSTAINED.search(named) else "single_stain"
        return _row(path, product, "compensation", role, None, markers, experiment)
    named_role, marker = None, None
    for text in (kw.get("TUBE NAME", ""), Path(kw.get("$FIL", "")).stem, stem):
        named_role, marker = _role_from_text(text, study)
        if named_role:
            break
    role = named_role or ("stain" if stained else "unstained")
    names = " ".join((kw.get("TUBE NAME", ""), stem))
    kind = _kind_named(study, names)
    return _row(path, product, kind, role, marker, markers, experiment)


def _kind_named(study: Study, text: str) -> str | None:
    """The tube kind a name mentions (a word equal to a kind or one of its names), else None."""
    kind = study.tube_kind_of(text, ())
    words = {w.lower() for w in re.split(r"[^A-Za-z0-9+]+", text) if w}
    named = kind is not None and any(w.lower() in words for w in (kind, *study.tubes[kind].names))
    return kind if named else None


def _row(path: Path, product: str, tube: str | None, role: str, marker: str | None, markers: set[str],
         experiment: str = "") -> dict:
    """A manifest row; ``experiment``: the FACSDiva experiment of a product named by its specimen
    (``$SRC``), '' otherwise (see :func:`_qualify_specimens`)."""
    if tube is None:
        tube = "unstained" if role == "unstained" else None
    return {"file": str(path), "product_id": display_name(product), "tube": tube, "role": role,
            "fmo_marker": marker or "", "_markers": markers, "_experiment": display_name(experiment)}


def _qualify_specimens(rows: list[dict]) -> None:
    """A specimen name (``$SRC``) identifies a specimen within its FACSDiva experiment only: the
    default ``Specimen_001`` or a lab's ``Donor`` comes back in every experiment. When one name (in
    any case) has stained files of one tube kind in several experiments, its products are named
    ``<specimen> (<experiment>)``, so two experiments' specimens never become one product (two
    donors' stains, one donor's FMO gating the other's). A name whose experiments hold different
    tube kinds (a product's tubes acquired on two days) stays one product. In place; after the
    tube kinds are known (:func:`_resolve_fmo_and_kind`)."""
    stained: dict[str, dict[str, set[str]]] = {}   # name -> tube kind -> experiments of its stained files
    for row in rows:
        if row["_experiment"] and row["role"] == "stain":
            stained.setdefault(row["product_id"].casefold(), {}).setdefault(row["tube"], set()).add(row["_experiment"])
    clashing = {name for name, kinds in stained.items() if any(len(e) > 1 for e in kinds.values())}
    for row in rows:
        if row["_experiment"] and row["product_id"].casefold() in clashing:
            row["product_id"] = f"{row['product_id']} ({row['_experiment']})"


def _merge_case_variants(rows: list[dict]) -> list[str]:
    """Product ids that differ only in case within one experiment (``p01`` and ``P01``: one
    specimen typed two ways) name one product: each group takes the spelling of its stained files
    (the most frequent among them, else among all its files; a tie: the first in sort order). In
    place, before :func:`_resolve_fmo_and_kind` (an FMO's stained tube is its product's); returns
    one line per merged group, for a warning."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["product_id"].casefold(), row["_experiment"]), []).append(row)
    notes = []
    for members in groups.values():
        spellings = sorted({r["product_id"] for r in members})
        if len(spellings) < 2:
            continue
        voters = [r for r in members if r["role"] == "stain"] or members
        chosen = min(spellings, key=lambda p: (-sum(r["product_id"] == p for r in voters), p))
        files = sorted(display_name(Path(r["file"]).name) for r in members if r["product_id"] != chosen)
        for row in members:
            row["product_id"] = chosen
        notes.append(f"product ids {', '.join(spellings)} differ only in case: taken as one product, {chosen} "
                     f"(renamed: {', '.join(files)}); a manifest keeps them apart")
    return notes


def _resolve_fmo_and_kind(rows: list[dict], study: Study) -> None:
    """Fill FMO markers missing from names (step 3) and tube kinds (step 4), in place."""
    stains = [r for r in rows if r["role"] == "stain"]
    for row in rows:
        if row["role"] == "fmo" and not row["fmo_marker"] and row["_markers"]:
            candidates = [
                s for s in stains
                if s["product_id"] == row["product_id"] and row["_markers"] < s["_markers"]
                and len(s["_markers"] - row["_markers"]) == 1
            ]
            if candidates:
                row["fmo_marker"] = next(iter(candidates[0]["_markers"] - row["_markers"]))
                row["tube"] = row["tube"] or candidates[0]["tube"]
    for row in rows:
        if row["tube"] is None:
            markers = [*row["_markers"], row["fmo_marker"]]
            row["tube"] = study.tube_kind_of("", markers) or "unknown"


class RowIndex(Protocol):
    """Rows a scan inferred before, by file (``tilpheno.cache.ScanIndex``, kept in an output folder)."""

    def lookup(self, file: str, context: str) -> tuple[dict | None, dict | None]:
        """(a recorded row still valid for ``file``, None) or (None, the identity to remember a new row with)."""

    def remember(self, file: str, context: str, identity: Mapping, row: Mapping) -> None:
        """Keep ``row`` for ``file``."""


def _scan_context(root: Path, study: Study, panel: PanelOverrides | None) -> str:
    """What a row inferred from a file depends on besides the file: the scanned folder (a product
    may be named after it), the study (tube kinds, vocabulary) and the panel rows, as one SHA-256."""
    import hashlib

    return hashlib.sha256("\0".join((str(root), repr(study), repr(panel))).encode("utf-8", "surrogateescape")).hexdigest()


def _panel_unmatched(panel: PanelOverrides | None, found: list[dict], metadata: dict[str, FCSFile], root: Path) -> list[str]:
    """One line per row of ``panel`` whose ``tube`` applies to none of the scanned files (``found``;
    ``metadata``: the TEXT of each readable one), by its inferred tube kind, TUBE NAME or name
    (:meth:`PanelOverrides.applying_to_none`)."""
    if panel is None:
        return []
    files = [(str(row["tube"]), str(metadata[row["file"]].keywords.get("TUBE NAME", "")) if row["file"] in metadata else "",
              Path(row["file"]).stem) for row in found]
    return [f"{r.where or panel.source}: tube '{r.tube}' applies to no file of {display_name(str(root))} (no tube kind, "
            f"TUBE NAME or file name is it, nor a word of them): its row ({r.detector}: {r.marker}) labels nothing"
            for r in panel.applying_to_none(files)]


def scan_folder(path: str | os.PathLike, *, allow_outside: bool = False, study: Study | None = None,
                panel: PanelOverrides | None = None, rows: RowIndex | None = None,
                markers: dict[str, tuple[str, ...]] | None = None) -> pd.DataFrame:
    """Infer the manifest of every FCS file under ``path`` (see the module docstring).

    ``study``: tube kinds and marker vocabulary (default: the bundled TIL study). ``panel``: a
    panel file's rows (``read_panel_file``), whose markers count as the files' labels (an export
    without $PnS that the panel labels is stained, not an unstained control).

    Returns a DataFrame with ``COLUMNS`` plus ``problem`` (the FCSReadError message of an
    unreadable file, else ''; a file whose DATA segment lies beyond its end, cut short by a copy
    or header-only, is unreadable: ``process`` could not read its events), sorted by product,
    tube, role, file. ``file`` is ``path / name``.
    A file that is a link resolving outside ``path`` is not read (``problem`` says so) unless
    ``allow_outside``. Folders that cannot be listed are in ``frame.attrs["unlistable"]`` as
    ``(folder, reason)`` pairs. Raises TableError when ``path`` is not a folder. ``markers``: a dict
    filled with ``file`` -> the markers its labels (and ``panel``) name, in the vocabulary's
    spelling, sorted (not kept in ``attrs``: pandas copies those with every operation).

    ``rows``: the rows of an earlier scan (``process`` keeps them in ``OUT/.cache``): a file whose
    row it holds for this folder, study and panel is not read again (``RowIndex.lookup``), and every
    row read is handed to it (``RowIndex.remember``); the manifest is the same either way.
    """
    return scan_files(path, allow_outside=allow_outside, study=study, panel=panel, rows=rows, markers=markers)[0]


def scan_files(path: str | os.PathLike, *, allow_outside: bool = False, study: Study | None = None,
               panel: PanelOverrides | None = None, rows: RowIndex | None = None,
               markers: dict[str, tuple[str, ...]] | None = None) -> tuple[pd.DataFrame, dict[str, FCSFile]]:
    """:func:`scan_folder`'s manifest, and each readable file's HEADER/TEXT as it read them
    (``read_fcs_metadata``; by the row's ``file``), for a caller that needs more of the TEXT than
    the manifest (``tilpheno new-study``: detectors, ``$PnR``) without reading the files again
    (without ``rows``: a file whose row came from ``rows`` was not read, so it has no entry)."""
    from tilpheno.io.fcs import read_fcs_metadata

    study = study or default_study()
    root = Path(path)
    if not root.is_dir():
        raise TableError(path_problem(root, folder=True))
    context = _scan_context(root, study, panel) if rows is not None else ""
    found = []
    metadata: dict[str, FCSFile] = {}
    unlistable: list[tuple[str, str]] = []
    for file in list_fcs_files(root, unlistable):
        identity = None
        if not allow_outside and outside(file, root):
            fcs = None
            problem = (f"{display_name(str(file))}: links to a file outside {display_name(str(root))}; not read "
                       "(pass --allow-outside to accept it)")
        else:
            known, identity = rows.lookup(str(file), context) if rows is not None else (None, None)
            if known is not None:
                found.append({**known, "_markers": set(known["_markers"])})
                continue
            try:
                fcs, problem = read_fcs_metadata(file, checksum=False, data_check=True), ""   # process reads DATA
            except FCSReadError as exc:
                fcs, problem = None, display_name(str(exc))
        row = _infer_row(file, root, fcs, study, panel)
        row["problem"] = problem
        found.append(row)
        if fcs is not None:
            metadata[row["file"]] = fcs
            if rows is not None and identity is not None:   # an unreadable file is read again next time
                rows.remember(str(file), context, identity, {**row, "_markers": sorted(row["_markers"])})
    case_merged = _merge_case_variants(found)
    _resolve_fmo_and_kind(found, study)
    _qualify_specimens(found)
    frame = pd.DataFrame(found, columns=[*COLUMNS, "problem"])
    if not frame.empty:
        order = frame["role"].map({r: i for i, r in enumerate(ROLES)})
        frame = frame.assign(_order=order).sort_values(["product_id", "tube", "_order", "file"], kind="stable")
        frame = frame.drop(columns="_order").reset_index(drop=True)
    frame.attrs["unlistable"] = unlistable
    frame.attrs["case_merged"] = case_merged
    frame.attrs["panel_unmatched"] = _panel_unmatched(panel, found, metadata, root) if rows is None else []
    if markers is not None:
        markers.update({row["file"]: tuple(sorted(row["_markers"])) for row in found})
    return frame, metadata


# --------------------------------------------------------------------------- reading a manifest


def _read_table(path: Path) -> pd.DataFrame:
    """The manifest's cells as text; index = the line of the file (a sheet's row).

    The header is the first row naming all of ``file, product_id, tube, role`` (case and blanks
    ignored), else the first naming the most of them (else the first non-blank row): a title or
    blank lines above it are skipped (``frame.attrs["header_line"]``). A workbook's table is on the
    one sheet with such a header (an instructions sheet before it is skipped; two sheets with one
    are refused), merged cells read as Excel shows them (:func:`sheet_rows`). Rows whose every cell
    is blank are dropped (Excel saves formatted empty rows as ``,,,,``); their lines still count.
    A column named twice (also in another case), or a value in a column without a header, is
    refused; an empty column without a header is ignored. Text is UTF-8 (BOM optional) or UTF-16
    with a BOM, a cell's bytes that are not UTF-8 read as Windows-1252 and other bytes refused, as
    the outcomes reader does (:func:`tilpheno.io.workbook.table_frame`), except in ``file``, where
    they are kept as surrogate escapes (a file name ``tilpheno scan -o`` wrote reads back as
    written; see :func:`_locate`). Cells are separated by commas, or by semicolons / tabs when
    the header line has no comma (European Excel; ``frame.attrs["separator"]``: how
    ``til_dose_cells`` writes its numbers, :func:`_doses`)."""
    if not path.is_file():
        raise TableError(path_problem(path))
    if path.stat().st_size == 0:
        raise TableError(f"{path}: manifest file is empty")
    if path.suffix.lower() == ".xls":
        raise TableError(f"{path}: old Excel .xls workbooks are not read; save it as .xlsx or CSV UTF-8")
    data = path.read_bytes()
    separator = ","
    try:
        if path.suffix.lower() in (".xlsx", ".xlsm"):
            book = open_workbook(data, str(path))
            sheet, header_line, rows = workbook_table(sheet_rows(book), COLUMNS[:4], "a manifest", str(path),
                                                      hidden_sheets(book))

            refuse_sheet_problems(data, book[sheet], ["product_id"], lambda row, column: place(str(path), row, column),
                                  header_line)
        else:
            header_line, separator, rows = text_rows(decode_text(data, str(path)), COLUMNS[:4])
    except TableError:
        raise
    except (ValueError, KeyError, csv.Error, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TableError(f"{path}: cannot read manifest as CSV/Excel ({first})") from None
    from tilpheno.io.csvcells import restore_frame

    frame = restore_frame(table_frame(rows, header_line, lambda line: place(str(path), line), COLUMNS,  # scan -o's cells
                                      keep_bytes=["file"], ids=["product_id"], codes=COLUMNS[2:],
                                      text=path.suffix.lower() not in (".xlsx", ".xlsm")))
    frame.attrs["separator"] = separator
    frame.attrs["header_line"] = header_line
    return frame


def read_manifest(path: str | os.PathLike, *, base: str | os.PathLike | None = None,
                  allow_outside: bool = False, study: Study | None = None,
                  tubes: Iterable[str] | None = None,
                  markers: Mapping[str, Iterable[str]] | None = None,
                  keep_missing: bool = False,
                  unfit: Callable[[pd.DataFrame], str] | None = None,
                  table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read and validate a manifest CSV (or Excel) with columns ``file, product_id, tube, role``
    and optional ``fmo_marker`` (extra columns are kept).

    The file is CSV (comma-, semicolon- or tab-separated) or an .xlsx workbook's manifest sheet;
    a title above the header is skipped (see ``_read_table``). Rows whose every cell is blank are
    skipped.

    Checks, each a TableError naming file, row (as the outcomes table's: the sheet's row, the text
    file's line, :func:`tilpheno.io.workbook.place`; a text row's line is the line it starts on, as
    a text editor numbers it, when a quoted cell holds a line break) and column: missing columns, empty cells, unknown
    roles, tubes other than ``tubes`` (default: the study's kinds; a run with strategies of its own
    adds theirs), ``unstained`` and ``compensation`` (unknown roles and
    tubes get a "did you mean"), FMO rows without a recognisable marker, or (when ``markers``
    maps the row's tube kind to its strategies' markers; a kind with none is not checked) with a
    marker that is none of them (it would gate nothing; a "did you mean" among them for a typo only,
    :func:`marker_hint`; given ``unfit``, the line it returns for the row's product's rows, files as
    found, stands in its place: a new lab's FMO of a marker the study does not gate follows from its
    stained files fitting no tube kind, whose way out is ``tilpheno new-study``), duplicate files, files that
    do not exist (relative paths are looked up under ``base``, default the manifest's folder; a
    Windows path ``sub\\a.fcs`` is found as ``sub/a.fcs``), two
    product ids that differ only in case (one product mistyped would become two), files
    (links resolved) outside ``base`` unless ``allow_outside``, files that are not regular files,
    and in an optional ``til_dose_cells`` column (the product's infused cells, on one or more of its
    rows) a cell that is not a non-negative number or differs from another of the product's.
    ``NA``, ``N/A``, ``NaN``, ``NULL`` in ``fmo_marker`` and ``til_dose_cells`` are empty cells, as in
    the outcomes table (R's ``write.csv`` writes ``NA``). Values
    are returned as written (stripped; text in Windows-1252 see :func:`_read_table`), ``file``
    as found, with ``fmo_marker`` read through the study's vocabulary
    (default: the bundled study's) and ``til_dose_cells`` as floats (an empty cell NaN).

    ``keep_missing``: a file that does not exist (or is no regular file) is one product's problem,
    not the manifest's: its row is kept, with that message (naming the manifest's row and the path
    looked for) in an extra ``problem`` column, ``''`` in the others', as :func:`scan_folder` keeps
    an unreadable file (``process`` fails that product alone). Every other check still refuses.
    An optional ``detector`` column (single-stain controls) gets :data:`DETECTOR_AT` beside it.
    ``table``: ``path``'s cells as :func:`_read_table` read them, for a caller that read them already (the
    file is then not read again; left as read).
    """
    study = study or default_study()
    vocabulary = study.vocabulary
    tubes = (*(study.tubes if tubes is None else tubes), "unstained", "compensation")
    panels = {kind: tuple(names) for kind, names in (markers or {}).items() if names}
    path = Path(path)
    base = Path(base) if base is not None else path.parent
    frame = _read_table(path) if table is None else table.copy()
    header_line = frame.attrs["header_line"]
    if not len(frame.columns):
        raise TableError(f"{path}: no table found (no row names the columns file, product_id, tube, role)")
    if frame.empty:
        raise TableError(f"{path}: manifest has a header but no rows")
    missing = [c for c in COLUMNS[:4] if c not in frame.columns]
    if missing:
        extra = [c for c in frame.columns if c not in COLUMNS]
        named = ', '.join(repr(c) + did_you_mean(c, extra) for c in missing)
        raise TableError(f"{place(str(path), header_line)}: missing column(s) {named}; "
                         f"found {list(frame.columns)}")
    if "fmo_marker" not in frame.columns:
        frame["fmo_marker"] = ""
    frame = frame.copy()
    for column in COLUMNS:
        frame[column] = frame[column].map(lambda v: "" if v is None else str(v).strip())
    frame["fmo_marker"] = frame["fmo_marker"].map(lambda v: "" if v.lower() in MISSING_WORDS else v)   # R's NA
    seen: dict[str, tuple[int, str]] = {}   # resolved file -> (its first row, that row's product)
    ids: dict[str, tuple[str, int]] = {}   # product id case-folded -> (as first written, row)
    found, fmo_markers, problems = [], [], []
    foreign: tuple[int, str, str, str, str] | None = None   # the first FMO row of a marker its tube does not gate
    doses, dose_error = None, None
    if "til_dose_cells" in frame.columns:   # read whole (the column's number style); refused at its row, below
        try:
            doses = _doses(frame, path)
        except TableError as exc:
            dose_error = exc
    try:
        for line, row in zip(frame.index, frame.itertuples(index=False)):
            where = place(str(path), line)
            for column in COLUMNS[:4]:
                label = summary_label(frame.loc[line].items()) if getattr(row, column) == "" else None
                if label:
                    raise TableError(f"{where}, column '{column}': '{label[1][:40]}' in column '{label[0]}': this "
                                     "looks like a total or summary row under the table, not a file; delete it (the "
                                     "manifest holds one row per FCS file)")
                if getattr(row, column) == "":
                    raise TableError(f"{where}, column '{column}': empty value{lone_value(frame.loc[line].items())}")
            if row.role not in ROLES:
                raise TableError(f"{where}, column 'role': unknown role {row.role!r}{did_you_mean(row.role, ROLES)} "
                                 f"(allowed: {', '.join(ROLES)})")
            if row.tube not in tubes:
                raise TableError(f"{where}, column 'tube': unknown tube {row.tube!r}{did_you_mean(row.tube, tubes)} "
                                 f"(allowed: {', '.join(tubes)})")
            marker = vocabulary.marker_in(row.fmo_marker) if row.fmo_marker else None
            if row.role == "fmo" and marker is None:
                raise TableError(f"{where}, column 'fmo_marker': FMO row needs a marker name, got {row.fmo_marker!r}")
            if row.role != "fmo" and row.fmo_marker:
                raise TableError(f"{where}, column 'fmo_marker': {row.fmo_marker!r} given for a row of role {row.role}")
            panel = panels.get(row.tube)
            if foreign is None and marker is not None and panel is not None and not gates(panel, marker, vocabulary):
                foreign = (line, str(row.product_id), f"{row.fmo_marker!r} is not a marker of the {row.tube} tube",
                           marker_hint(marker, panel, vocabulary), f"(its markers: {', '.join(panel)})")
            fmo_markers.append(marker or "")
            file, resolved = _locate(row.file, base)
            problem = ""
            if resolved is None:
                resolved = Path(row.file) if Path(row.file).is_absolute() else base / row.file
                windows = (" (a Windows path: give it relative to the folder)" if _WINDOWS_ABSOLUTE.match(row.file)
                           else "")
                problem = (f"{where}, column 'file': {row.file!r} does not exist or is not a regular file "
                           f"(looked for {resolved}){windows}")
                if not keep_missing:
                    raise TableError(problem)
            problems.append(problem)
            if not allow_outside and outside(resolved, base):
                raise TableError(f"{where}, column 'file': {row.file!r} lies outside {base} (links resolved); "
                                 "pass allow_outside=True to accept files outside the folder")
            key = str(resolved.resolve())
            if key in seen:
                first, owner = seen[key]
                shared = (f" for product {owner!r}: a file is one product's (its FMO and unstained controls are "
                          "acquired with its stained tubes, and the run, its cache and the review app key each file to "
                          "one product); list it for one product only" if owner != row.product_id else "")
                raise TableError(f"{where}, column 'file': {row.file!r} already listed in row {first}{shared}")
            seen[key] = (line, row.product_id)
            found.append(file)
            spelt = ids.setdefault(row.product_id.casefold(), (row.product_id, line))
            if spelt[0] != row.product_id:
                raise TableError(f"{where}, column 'product_id': {row.product_id!r} differs only in case from "
                                 f"{spelt[0]!r} in row {spelt[1]}; write one product's id one way")
            if dose_error is not None and dose_error.row == line:   # the row's last column: its other cells first
                raise dose_error
    except TableError:   # a later row's problem: the FMO row's, above it, is the file's first
        if foreign is None:
            raise
        located = frame.iloc[:len(found)].assign(file=found)
        raise _foreign_fmo_error(path, foreign, located, problems[:len(found)], unfit) from None
    frame["file"] = found
    if foreign is not None:   # refused once every file is found: the product's stained files may explain it
        raise _foreign_fmo_error(path, foreign, frame, problems, unfit)
    if dose_error is not None:   # a problem of the column, no one row's
        raise dose_error
    frame["fmo_marker"] = fmo_markers
    if "detector" in frame.columns:
        frame[DETECTOR_AT] = [place(str(path), line, "detector") for line in frame.index]
    if keep_missing:
        frame["problem"] = problems
    if doses is not None:
        frame["til_dose_cells"] = doses
    frame.attrs.pop("separator", None)
    frame.attrs.pop("header_line", None)
    return frame.reset_index(drop=True)


def read_lab_manifest(path: str | os.PathLike, *, base: str | os.PathLike) -> pd.DataFrame:
    """A lab's own manifest for ``tilpheno new-study --manifest`` (``file, product_id, tube, role``,
    optional ``fmo_marker``): each file's product, tube and role as the lab knows them, not inferred.
    Every check of :func:`read_manifest` (each refusal names the row and column; a listed file that
    does not exist under ``base`` is refused), but any tube name: the draft names its tube kinds by
    them. Adds ``row``, each row's place (``<manifest>: row N``), for the draft's own refusals. The file
    is read once."""
    path = Path(path)
    table = _read_table(path)
    names = {str(v).strip() for v in table["tube"] if v is not None and str(v).strip()} if "tube" in table.columns else set()
    frame = read_manifest(path, base=base, tubes=names, table=table)
    frame["row"] = [place(str(path), line) for line in table.index]
    return frame


def _foreign_fmo_error(path: Path, foreign: tuple[int, str, str, str, str], rows: pd.DataFrame, problems: list[str],
                       unfit: Callable[[pd.DataFrame], str] | None) -> TableError:
    """The refusal of the first FMO row of a marker its tube kind does not gate (``foreign``: its line, product,
    what is wrong, the "did you mean", the tube's markers), explained by ``unfit``'s line on the product's
    ``rows`` (files located; ``problems``: '' for a file found) when its stained files fit no tube kind."""
    line, product, said, hint, panel_named = foreign
    usable = (rows["product_id"] == product) & pd.Series([p == "" for p in problems], index=rows.index)
    why = unfit(rows[usable]) if unfit is not None else ""
    return TableError(f"{place(str(path), line)}, column 'fmo_marker': {said} {panel_named}: {why}" if why else
                      f"{place(str(path), line)}, column 'fmo_marker': {said}{hint} {panel_named}")


def gates(panel: Iterable[str], marker: str, vocabulary: Vocabulary) -> bool:
    """True when ``marker`` is one of a tube kind's strategy markers ``panel`` (any spelling)."""
    return any(vocabulary.same(marker, m) for m in panel)


def ungated_fmo_markers(rows: pd.DataFrame, markers: Mapping[str, Iterable[str]], vocabulary: Vocabulary) -> list[str]:
    """The FMO markers of manifest ``rows`` that their tube kind does not gate (``markers``: kind ->
    its strategies' markers; a kind with none is not checked), sorted: :func:`read_manifest` given
    these ``markers`` refuses a manifest holding such a row."""
    panels = {kind: tuple(names) for kind, names in markers.items() if names}
    return sorted({str(r.fmo_marker) for r in rows.itertuples(index=False)
                   if r.role == "fmo" and r.fmo_marker and r.tube in panels
                   and not gates(panels[r.tube], str(r.fmo_marker), vocabulary)})


def marker_hint(marker: str, panel: Iterable[str], vocabulary: Vocabulary) -> str:
    """The "did you mean" among a tube's markers (``panel``) of a marker it does not gate, for a
    plausible typo only (``PD1x``, ``DC56``): '' for a marker ``vocabulary`` knows (``PD-L1`` is
    another molecule, no typo of ``PD1``) and when the numbers in the two names differ (``CD38``:
    another CD molecule, not ``CD8``)."""
    close = closest_match(marker, panel)
    if vocabulary.known(marker) or close is None or re.findall(r"\d+", marker) != re.findall(r"\d+", close):
        return ""
    return f" (did you mean '{close}'?)"


_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


def _locate(written: str, base: Path) -> tuple[str, Path | None]:
    """``(file as found, its path)`` of a manifest's file cell, or ``(written, None)`` when none is a
    regular file. Tried in turn: as written (relative to ``base``; bytes that are not UTF-8 are a
    file name's bytes, as ``tilpheno scan -o`` writes them), read as Windows-1252 (an accented name
    in a CSV saved by Excel on Windows), with backslashes as folder separators (``sub\\a.fcs``)."""
    candidates = dict.fromkeys([written, windows_1252(written)])
    for text in list(candidates):
        candidates[text.replace("\\", "/")] = None
    for text in candidates:
        path = Path(text) if Path(text).is_absolute() else base / text
        if path.is_file():
            return text, path
    return written, None


def _doses(frame: pd.DataFrame, path: Path) -> list[float]:
    """The ``til_dose_cells`` column as numbers (an empty cell is NaN), read as the outcomes table
    reads its numbers (:func:`tilpheno.io.outcomes.number`; in semicolon- or tab-separated text in
    the column's locale style, :func:`tilpheno.io.outcomes.locale_numbers`: ``1.500.000.000`` and
    ``1,5E+09`` in European Excel, ``1,500,000,000`` in English): each a non-negative finite
    number, not below :data:`tilpheno.io.outcomes.MIN_DOSE_CELLS` but for 0 (a dose in units of 1e9
    cells would make every absolute dose a billion times too small), and the filled cells of one
    product equal (a product has one infused dose)."""
    source, cells = str(path), frame["til_dose_cells"]
    if frame.attrs.get("separator") in (";", "\t"):
        cells = locale_numbers(cells, source, "til_dose_cells", frame.attrs["separator"])
    doses: list[float] = []
    first: dict[str, tuple[int, float]] = {}
    for line, product, cell in zip(frame.index, frame["product_id"], cells):
        where = place(source, line, "til_dose_cells")
        dose = number(cell, source, line, "til_dose_cells")
        problem = dose_problem(dose, cell)
        if problem:
            raise TableError(f"{where}: {problem}", row=line)
        if not math.isnan(dose):
            earlier = first.setdefault(product, (line, dose))
            if earlier[1] != dose:
                raise TableError(f"{where}: {str(cell).strip()[:40]!r} differs from the dose {earlier[1]:g} of "
                                 f"product {product!r} in row {earlier[0]} (a product has one dose)", row=line)
        doses.append(dose)
    return doses
