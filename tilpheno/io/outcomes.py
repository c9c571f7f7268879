"""Read and validate the clinical outcomes table (CSV or Excel).

One row per patient: ``patient_id, product_id, til_dose_cells, best_response, pfs_months,
pfs_event, os_months, os_event`` plus any covariates (age, sex, ecog, ...).

The table is found as a lab types it (:mod:`tilpheno.io.workbook`, shared with the manifest): its
header is the row naming the required columns, below any title or blank lines; in a workbook, on
the one sheet holding such a header (an instructions sheet before it is skipped), with merged
cells read as Excel shows them.

Every problem raises :class:`tilpheno.errors.TableError` naming the file, the row (as a
spreadsheet shows it: the sheet's row, the text file's line, as a text editor numbers it: the line
the row starts on when a quoted cell holds a line break; without a title the header is row 1,
the first patient row 2) and the column:
an empty file, a file that is neither CSV nor Excel (an old .xls workbook), text neither UTF-8 nor
Windows-1252 (or that may be Mac Roman, Excel for Mac's CSV), two sheets holding a table, a column named twice (also in another case), a CSV row
longer than the header, a value beside the table (in a column without a header; an empty one is ignored),
missing required columns, missing or
duplicate ids, non-numeric/negative times, events other than 0/1, unknown response
codes, non-numeric or negative doses and doses above 0 below 1e6 cells (typed in units of 1e9 cells; the
manifest refuses them alike), dates or Excel durations where a number belongs, and
formula cells of a workbook never calculated (written by a script: no saved values), a workbook row
or column hidden in Excel (by hand or by a filter) and two sheets holding a table (a hidden one marked so).

Conventions: cells are stripped of surrounding blanks, header cells also of invisible characters
(a zero-width space or a byte order mark pasted along; an id holding one is refused, naming the
cell); an empty cell is missing; in
semicolon-separated text (what Excel writes where the comma is the decimal mark; R ``read.csv2``)
a comma in a number is its decimal mark (``11,8`` is 11.8, ``1,500`` is 1.5) and dots may group
thousands (``1.500.000``); in comma-separated text a comma separates thousands (``1,500`` is 1500);
in tab-separated text (which Excel writes in its locale's style) each column's other numbers decide
(``2,55`` makes its commas decimal marks, ``1,500,000``, ``1,500.5`` or ``2.55`` thousands
separators). ``1.500`` in semicolon- or tab-separated text (1500 in European style, 1.5 in
English) takes the style of its column's other numbers (``3,2`` or ``2.55``), as ``1,500`` in tab
text does; such a value in a column that settles neither, or a column with both styles, is
refused (:func:`locale_numbers`); response
codes are RECIST best overall response ``CR PR SD PD NE`` (case-insensitive; ``NE`` = not
evaluable); times (and the optional ``response_months``, blank without a response) are in months
from the start of TIL therapy, never dates; events are 1 (event) or 0
(censored), or unambiguous words (yes/no, true/false, y/n, event/censored; case-insensitive);
other words (``dead``, ``alive``: whether a death is the event depends on the endpoint) are refused
with the accepted codes. A blank time, event or best response is missing (the biomarker analysis leaves
the patient out of that endpoint's analyses, or of the response analyses, naming the patient and the row:
complete cases per endpoint); ``attrs["file_rows"]`` holds each patient's row in the file for such messages.
``NA``, ``N/A``, ``NaN`` and ``NULL`` (any case, as R and spreadsheets write them) are missing,
like a blank cell; Excel's error values (``#N/A``, ``#DIV/0!``, ...: a formula that failed) are
refused, ``#N/A`` too: it is mostly a lookup that found nothing, not a value known to be missing.
A missing required column or an unknown response code gets a "did you mean" suggestion (closest
match by ``difflib``). A covariate whose non-empty cells are all numbers is numeric, one whose
cells are all text is categorical; a mixture, or a number text cannot hold as one (``27,5`` in
comma-separated text or typed into an English Excel, ``40%``, ``1 500``), cannot be a covariate:
such an extra column stops nothing when it is read (a free comment column) and is carried as written,
and the biomarker analysis refuses it, naming its cell, only when it uses it as a covariate or a
marker (:func:`usable_column`).
"""
from __future__ import annotations

import csv
import datetime as _dt
import re
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd

from tilpheno.errors import TableError, did_you_mean
from tilpheno.io.files import DECIMAL_COMMA_RE, decimal_comma, path_problem
from tilpheno.io.workbook import (Rows, decode_text, hidden_sheets, open_workbook, place, refuse_sheet_problems,
                                  lone_value, sheet_values, summary_label, table_frame, text_rows, workbook_table)

RESPONSE_CODES = ("CR", "PR", "SD", "PD", "NE")
ID_COLUMNS = ("patient_id", "product_id")
TIME_COLUMNS = ("pfs_months", "os_months")
OPTIONAL_TIME_COLUMNS = ("response_months",)
EVENT_COLUMNS = ("pfs_event", "os_event")
REQUIRED = ("patient_id", "product_id", "til_dose_cells", "best_response",
            "pfs_months", "pfs_event", "os_months", "os_event")
DOSE_COLUMNS = ("product_id", "til_dose_cells")
"""The columns a ``process`` run reads (each product's infused cells): the only ones it requires
and checks (``read_outcomes(path, DOSE_COLUMNS)``); a table without survival columns serves it."""
EXCEL_SUFFIXES = (".xlsx", ".xlsm")
_DATE_RE = re.compile(r"^\s*(\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})([ T]\d{1,2}:\d{2}(:\d{2})?)?\s*$")
_TIME_OF_DAY_RE = re.compile(r"^\s*\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?\s*([AaPp]\.?[Mm]\.?)?\s*$")
_EN_GROUPED_RE = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d*)?$")
_EU_GROUPED_RE = re.compile(r"^[+-]?\d{1,3}(\.\d{3})+(,\d*)?$")
_ONE_GROUP_RE = {"\t": re.compile(r"^[+-]?\d{1,3}[.,]\d{3}$"), ";": re.compile(r"^[+-]?\d{1,3}\.\d{3}$")}
_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_SPACE_GROUPED_RE = re.compile(r"^[+-]?\d{1,3}([ \u00a0\u202f]\d{3})+([.,]\d*)?$")
_FOREIGN_NUMBER_RE = re.compile(r"^[+-]?(\d+,\d+|\d{1,3}([ \u00a0\u202f]\d{3})+([.,]\d+)?|\d+([.,]\d+)?\s*%)$")
"""A number as another locale or a format writes it (``27,5``, ``1 500``, ``40%``), which
Python does not read as one."""
_DECIMAL_POINT_RE = re.compile(r"^[+-]?(\d+\.\d*|\.\d+)([eE][+-]?\d+)?$")
_MAX_BYTES = 200 * 1024 * 1024
MIN_DOSE_CELLS = 1e6
"""Fewer infused cells than this is no TIL dose in cells: a dose given in units of 1e9 (or 1e6) cells."""
MISSING_WORDS = frozenset({"na", "n/a", "nan", "null"})
FILE_ROWS = "file_rows"
"""Key of a validated table's ``attrs``: each patient's row in the file (as the errors number it), in the
table's order; messages about a patient's cells name it."""
UNUSABLE = "unusable_columns"
"""Key of a validated table's ``attrs``: {column: its one-line error} of the extra columns carried as
written that cannot be a covariate or a marker (:func:`usable_column`)."""


def dose_problem(dose: float, cell: Any) -> str | None:
    """Why a ``til_dose_cells`` value (``dose``, read from ``cell``) is no number of infused cells,
    or None: negative, or above 0 and below :data:`MIN_DOSE_CELLS` (a dose in units of 1e9 cells
    would make every absolute subset dose a billion times too small). Both table readers refuse
    their doses so (the manifest and the outcomes table)."""
    shown = str(cell).strip()[:40]
    if dose < 0:
        return f"{shown!r} is not a number of cells (not negative)"
    if 0 < dose < MIN_DOSE_CELLS:
        return (f"{shown!r} is fewer than {MIN_DOSE_CELLS:g} cells, no TIL dose: given in units of 1e9 cells? "
                f"Write the number of cells ({dose * 1e9:g} for {dose:g} x 1e9)")
    return None
_EVENT_WORD_PAIRS = (("yes", "no"), ("y", "n"), ("true", "false"), ("event", "censored"))
EVENT_WORDS = {word: float(1 - i) for pair in _EVENT_WORD_PAIRS for i, word in enumerate(pair)}


def _fail(source: str, problem: str, row: int | None = None, column: str | None = None) -> NoReturn:
    """Raise the TableError of one cell, on one line: a line break the problem quotes from a cell
    (a quoted cell typed with Alt+Enter) is shown as ``\\n``."""
    one_line = problem.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")
    raise TableError(f"{place(source, row, column)}: {one_line}", row=row)


def table_bytes(path: Path, kind: str) -> bytes:
    """The bytes of the table file ``path``. TableError, one line naming it, when it is no file
    (:func:`tilpheno.io.files.path_problem`), is empty, or is larger than :data:`_MAX_BYTES`
    (``kind`` names the table in that line: ``an outcomes table``). The outcomes table and the
    biomarker cut-points are read so."""
    source = str(path)
    if not path.is_file():
        raise TableError(path_problem(path))
    size = path.stat().st_size
    if size == 0:
        _fail(source, "the file is empty")
    if size > _MAX_BYTES:
        _fail(source, f"the file is too large for {kind} ({size} bytes)")
    return path.read_bytes()


def csv_rows(data: bytes, source: str, required: tuple[str, ...]) -> tuple[int, str, Rows]:
    """``(header line, separator, rows)`` of a CSV file's ``data`` (UTF-8, UTF-16 or Windows-1252:
    :func:`tilpheno.io.workbook.decode_text`; the header the row naming the ``required`` columns:
    :func:`tilpheno.io.workbook.text_rows`). TableError naming ``source`` for blank text or text
    that is no CSV table. The outcomes table's text and the biomarker cut-points are read so."""
    text = decode_text(data, source)
    if not text.strip():
        _fail(source, "the file is empty")
    try:
        return text_rows(text, required)
    except csv.Error as exc:
        _fail(source, f"not a valid CSV table ({str(exc).splitlines()[0]})")


def _read_raw(path: Path, required: tuple[str, ...] = REQUIRED) -> pd.DataFrame:
    """The table's cells (text; a workbook's values as ``pandas.read_excel(dtype=object)`` gives
    them, dates as datetime objects), index = sheet row / line, ``attrs["header_line"]``.

    The header is the first row naming all ``required`` columns (case and blanks ignored; else the
    one naming the most): a title or blank lines above it are skipped. A workbook's table is on the
    one sheet with such a header (an instructions sheet before it is skipped, two sheets with one
    are refused), merged cells read as Excel shows them. A column named twice, or a text row with
    more cells than the header, is refused (:func:`tilpheno.io.workbook.table_frame`)."""
    source = str(path)
    data = table_bytes(path, "an outcomes table")
    if data[:4] == b"PK\x03\x04" or path.suffix.lower() in EXCEL_SUFFIXES:
        book = open_workbook(data, source)
        sheet, header_line, rows = workbook_table(sheet_values(book), required, "an outcomes", source,
                                                  hidden_sheets(book))
        separator = ""
        refuse_sheet_problems(data, book[sheet], ID_COLUMNS, lambda row, column: place(source, row, column),
                              header_line)
    else:
        if path.suffix.lower() == ".xls":
            _fail(source, "not a CSV or Excel (.xlsx) file: old Excel .xls workbooks are not read; save it as .xlsx "
                          "or CSV UTF-8")
        header_line, separator, rows = csv_rows(data, source, required)
    frame = table_frame(rows, header_line, lambda line: place(source, line), ids=ID_COLUMNS, text=separator != "")
    if separator in (";", "\t"):   # numbers in a locale's style (ids are kept as written)
        for col in frame.columns:
            if col not in ID_COLUMNS:
                frame[col] = locale_numbers(frame[col], source, col, separator)
    frame.attrs["header_line"] = header_line
    return frame


def locale_numbers(cells: pd.Series, source: str, column: str, separator: str) -> pd.Series:
    """One column of semicolon- or tab-separated text with its numbers as Python reads them
    (``1500.5``), written in European style (``1.500,5``: dots group thousands, the comma is the
    decimal mark) or English style (``1,500.5``).

    Semicolon-separated text is what Excel writes where the comma is the decimal mark, so a comma
    is one (``1,500`` is 1.5); tab-separated text Excel writes in its locale's style. The column's
    cells decide its style: European by a decimal comma (``11,8``; ``1500,25``) or thousands dots
    (``1.500.000``, ``1.500,5``), English by thousands commas (``1,500,000``, ``1,500.5``; tab text
    only) or a decimal point (``2.55``). One group of three (``1.500``, and ``1,500`` in tab text:
    1500 or 1.5?) takes the column's style, and is refused in a column that settles neither; a
    column with both styles is refused. Spaces grouping thousands (``1 500,5``: French Excel writes
    a no-break space) are removed first. ``source``, ``column``: for the message."""
    cells = cells.map(lambda v: re.sub(r"\s", "", v) if isinstance(v, str) and _SPACE_GROUPED_RE.match(v.strip()) else v)
    texts = cells.map(lambda v: v.strip() if isinstance(v, str) else "")

    def matching(*patterns: re.Pattern) -> pd.Series:
        return texts.map(lambda t: any(p.match(t) for p in patterns))

    ambiguous = matching(_ONE_GROUP_RE[separator])
    european = matching(_EU_GROUPED_RE, DECIMAL_COMMA_RE) & ~ambiguous
    english = matching(_DECIMAL_POINT_RE, *([_EN_GROUPED_RE] if separator == "\t" else [])) & ~ambiguous

    def row(mask: pd.Series) -> int:
        return int(mask[mask].index[0])   # the frame's index: the file's line

    if european.any() and english.any():
        eu, en = row(european), row(english)
        en_kind = "a decimal point" if _DECIMAL_POINT_RE.match(texts.loc[en]) else "a thousands separator"
        eu_kind = "a decimal comma" if DECIMAL_COMMA_RE.match(texts.loc[eu]) else "a thousands separator"
        _fail(source, f"'{texts.loc[en][:40]}' ({en_kind}) and '{texts.loc[eu][:40]}' (row {eu}, {eu_kind}) in one "
                      "column; write every number of the column with a decimal point and no thousands separators",
              en, column)
    if ambiguous.any() and not european.any() and not english.any():
        at = row(ambiguous)
        text = texts.loc[at]
        whole, decimal = re.sub("[.,]", "", text), f"{float(text.replace(',', '.')):g}"
        mark, kind = "a decimal comma" if "," in text else "a decimal point", {";": "semicolon", "\t": "tab"}[separator]
        _fail(source, f"'{text}' is ambiguous in {kind}-separated text: {whole} (a thousands separator) or {decimal} "
                      f"({mark}); write {whole} or {decimal}", at, column)
    if european.any():
        return cells.map(lambda v: decimal_comma(v.strip().replace(".", "")) if isinstance(v, str)
                         and _EU_GROUPED_RE.match(v.strip()) else decimal_comma(v))
    return cells.map(lambda v: v.strip().replace(",", "") if isinstance(v, str) and _EN_GROUPED_RE.match(v.strip())
                     else v)


def _cell_text(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (_dt.datetime, _dt.date, pd.Timestamp)):
        return value.isoformat()
    text = str(value).strip()
    return "" if text.lower() in MISSING_WORDS else text


def _is_date(value) -> bool:
    return isinstance(value, (_dt.datetime, _dt.date, pd.Timestamp)) or bool(_DATE_RE.match(str(value)))


def _is_time_of_day(value) -> bool:
    """An Excel cell formatted as a time (read as a ``datetime.time``), or text written as one
    (``12:30``, ``7:05:00 PM``)."""
    return isinstance(value, _dt.time) or bool(_TIME_OF_DAY_RE.match(str(value)))


def _refuse_duration(value, source: str, row: int, column: str) -> None:
    """Refuse an Excel duration cell (read as a ``timedelta``: a time such as ``12:30`` typed into
    a cell formatted as a duration, ``[h]:mm``), which is not a number of months."""
    if isinstance(value, _dt.timedelta):
        hours, seconds = divmod(round(value.total_seconds()), 3600)
        _fail(source, f"'{hours}:{seconds // 60:02d}:{seconds % 60:02d}' is an Excel duration (hours:minutes:seconds; "
                      "a time typed into a cell formatted as a duration), not a number; type the number, and "
                      "format the column as General or Number", row, column)


def number(value, source: str, row: int, column: str) -> float:
    """A cell's finite number (a workbook's number, or text as Python writes it, ``1,500`` with
    commas grouping thousands: text in a locale's style goes through :func:`locale_numbers`
    first), or NaN for an empty or missing (:data:`MISSING_WORDS`) cell; a date, a duration or
    text is a TableError naming ``source``, ``row`` and ``column``. Both table readers read their
    numbers so (the manifest its doses)."""
    _refuse_duration(value, source, row, column)
    if _is_time_of_day(value):
        _fail(source, f"'{_cell_text(value)}' is a time of day (hours:minutes; in Excel, a cell formatted as a time), "
                      "not a number; type the number, and format the column as General or Number", row, column)
    if _is_date(value):
        _fail(source, f"'{_cell_text(value)}' looks like a date; expected a number", row, column)
    text = _cell_text(value)
    if text == "":
        return float("nan")
    try:
        number = float(text.replace(",", "")) if _EN_GROUPED_RE.match(text) else float(text)
    except ValueError:
        _fail(source, f"'{text[:40]}' is not a number", row, column)
    if not np.isfinite(number):
        _fail(source, f"'{text[:40]}' is not a finite number", row, column)
    return number


def _event(value, source: str, row: int, column: str) -> float:
    """1 (event) or 0 (censored) from a number or an accepted word, NaN for an empty cell (missing); anything
    else (a word such as ``dead``, whose meaning depends on the endpoint, 2) is an error naming the codes."""
    text = _cell_text(value)
    if text == "":
        return float("nan")
    if text.lower() in EVENT_WORDS:
        return int(EVENT_WORDS[text.lower()])
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if number not in (0.0, 1.0):
        _fail(source, f"event must be 0 (censored) or 1 (event), not '{text[:40]}' (also accepted, "
                      f"any case: {', '.join('/'.join(p) for p in _EVENT_WORD_PAIRS)})", row, column)
    return number


def validate_outcomes(raw: pd.DataFrame, source: str = "outcomes", required: tuple[str, ...] = REQUIRED) -> pd.DataFrame:
    """Check a table of raw cells (index = sheet row numbers) and return typed columns.

    ``required``: the columns the caller uses (default all of :data:`REQUIRED`, and every other
    column is typed as a covariate, or carried as written when it cannot be one: its problem in
    ``attrs``, :func:`usable_column`); a subset of the id columns and ``til_dose_cells``
    (:data:`DOSE_COLUMNS`) requires and checks only those columns and returns only them."""
    if raw.shape[1] == 0 or raw.shape[0] == 0:
        _fail(source, "the table has no rows")
    dupcols = [c for c in raw.columns[raw.columns.duplicated()]]
    if dupcols:
        _fail(source, "column appears more than once", raw.attrs.get("header_line", 1), dupcols[0])
    missing = [c for c in required if c not in raw.columns]
    if missing:
        extra = [c for c in raw.columns if c not in required]
        hints = "".join(did_you_mean(m, extra) for m in missing[:1])
        _fail(source, f"missing required column(s): {', '.join(missing)}{hints} "
                      f"(found: {', '.join(map(str, raw.columns))})", raw.attrs.get("header_line", 1))
    blank = raw.map(lambda v: _cell_text(v) == "").all(axis=1)
    raw = raw.loc[~blank]
    if raw.empty:
        _fail(source, "the table has no rows")
    out = pd.DataFrame(index=raw.index)
    for col in (c for c in ID_COLUMNS if c in required):
        ids = raw[col].map(_cell_text)
        for row, value in ids.items():
            label = summary_label(raw.loc[row].items()) if value == "" else None
            if label:
                _fail(source, f"'{label[1][:40]}' in column '{label[0]}': this looks like a total or summary row under "
                              "the table, not a patient; delete it (the table holds one row per patient)", row, col)
            if value == "":
                _fail(source, f"missing id{lone_value(raw.loc[row].items())}", row, col)
        dup = ids[ids.duplicated(keep=False)]
        if not dup.empty:
            first = dup.index[0]
            other = dup[dup == dup.loc[first]].index[1]
            _fail(source, f"duplicate id '{dup.loc[first]}' (also in row {first})", other, col)
        out[col] = ids
    if tuple(required) != REQUIRED:   # a caller's subset (DOSE_COLUMNS): no other column is read
        if "til_dose_cells" in required:
            out["til_dose_cells"] = _doses(raw, source)
        return out[list(required)]
    codes = raw["best_response"].map(lambda v: _cell_text(v).upper())
    for row, code in codes.items():
        if code not in (*RESPONSE_CODES, ""):   # blank: missing
            shown = _cell_text(raw.at[row, "best_response"])[:40] or "(empty)"
            _fail(source, f"unknown response code '{shown}'{did_you_mean(code, RESPONSE_CODES)}; expected one of "
                          f"{', '.join(RESPONSE_CODES)}", row, "best_response")
    out["best_response"] = codes.where(codes != "", None)
    for col in (*TIME_COLUMNS, *OPTIONAL_TIME_COLUMNS):
        if col in raw.columns:
            out[col] = _times(raw[col], source, col)
    for col in EVENT_COLUMNS:
        events = pd.Series({row: _event(v, source, row, col) for row, v in raw[col].items()}, dtype=float)
        out[col] = events if events.isna().any() else events.astype(int)
    out["til_dose_cells"] = _doses(raw, source)
    unusable: dict[str, str] = {}
    for col in raw.columns:
        if col not in (*REQUIRED, *OPTIONAL_TIME_COLUMNS):
            try:
                out[col] = _covariate(raw[col], source, col)
            except TableError as exc:   # refused only where it is used (usable_column): a free comment column
                unusable[col] = str(exc)
                texts = raw[col].map(_cell_text)
                out[col] = texts.where(texts != "", None)
    typed = out[[*REQUIRED, *[c for c in raw.columns if c not in REQUIRED]]]
    typed.attrs[UNUSABLE] = unusable
    typed.attrs[FILE_ROWS] = [int(row) for row in typed.index]
    return typed


def usable_column(frame: pd.DataFrame, column: str, source: str = "outcomes", rows=None) -> pd.Series:
    """``column`` of ``frame`` typed as :func:`validate_outcomes` types a covariate, for a table the reader
    did not type (built by hand, or whose ``attrs`` a pandas step dropped; a phenotype table): text holding
    only numbers (``'1'``, ``'2'``) is numbers, as in a file; a column that cannot be a covariate or a
    marker (numbers mixed with text, a number in another style, a duration: :func:`_covariate`) is a
    TableError naming ``source``, the row (``rows``: each of ``frame``'s rows' number in its file; by default
    as in a CSV of ``frame``, header row 1, its first row 2) and the column. The reader's finding (``attrs``)
    comes first, naming the file's row. A numeric column is returned as it is, and so is a pandas Categorical
    once checked (categories chosen in code)."""
    recorded = frame.attrs.get(UNUSABLE, {}).get(column)
    if recorded:
        raise TableError(recorded)
    cells = frame[column]
    if not (pd.api.types.is_object_dtype(cells) or pd.api.types.is_string_dtype(cells)):
        return cells
    numbered = cells.set_axis(range(2, len(cells) + 2) if rows is None else rows)
    typed = _covariate(numbered, source, column).set_axis(cells.index)
    return cells if isinstance(cells.dtype, pd.CategoricalDtype) else typed


def _doses(raw: pd.DataFrame, source: str) -> pd.Series:
    """The ``til_dose_cells`` column in cells (empty: NaN); a value that is no number of cells
    (:func:`dose_problem`) is an error naming the row."""
    dose = pd.Series({row: number(v, source, row, "til_dose_cells") for row, v in raw["til_dose_cells"].items()},
                     dtype=float)
    for row, v in dose.items():
        problem = dose_problem(v, raw.at[row, "til_dose_cells"])
        if problem:
            _fail(source, problem, row, "til_dose_cells")
    return dose


def _times(cells: pd.Series, source: str, column: str) -> pd.Series:
    """A column of times in months, NaN for an empty cell (missing; ``response_months`` is blank for patients
    without a response): a date, text or a negative time is an error naming the row."""
    values = pd.Series({row: number(v, source, row, column) for row, v in cells.items()}, dtype=float)
    for row, v in values.items():
        if v < 0:
            _fail(source, f"negative time {v:g}", row, column)
    return values


def _covariate(cells: pd.Series, source: str, column: str) -> pd.Series:
    """Numeric when every non-empty cell is a number (as :func:`number` reads it: ``1,500`` in
    comma-separated text is 1500), text when none is; mixed is an error, and so is a text column
    holding a number in another style (:data:`_FOREIGN_NUMBER_RE`: ``27,5`` typed into an English
    Excel or quoted in comma-separated text, ``40%``, ``1 500``), which would silently be a
    category."""
    for row, value in cells.items():
        _refuse_duration(value, source, row, column)
    texts = cells.map(_cell_text)
    filled = texts[texts != ""]
    numeric = filled.map(lambda s: bool(_NUMBER_RE.match(s) or _EN_GROUPED_RE.match(s)))
    if numeric.all() and not filled.empty:
        return pd.Series({row: number(v, source, row, column) for row, v in cells.items()}, dtype=float)
    foreign = filled[filled.map(lambda s: bool(_FOREIGN_NUMBER_RE.match(s)) and not _DATE_RE.match(s))]
    if not foreign.empty:
        _fail(source, f"'{foreign.iloc[0][:40]}' is a number written with a decimal comma, a percent sign or spaces, "
                      "read as text; write it with a decimal point and nothing else (27.5, 40 or 0.4, 1500)",
              foreign.index[0], column)
    if numeric.any():
        bad = numeric[~numeric].index[0] if numeric.sum() >= (~numeric).sum() else numeric[numeric].index[0]
        kind = "text" if numeric.sum() >= (~numeric).sum() else "a number"
        _fail(source, f"mixed types: '{texts.loc[bad][:40]}' is {kind} in a column of "
                      f"{'numbers' if kind == 'text' else 'text'}", bad, column)
    dates = filled[filled.map(lambda s: bool(_DATE_RE.match(s)))]
    if not dates.empty and len(dates) < len(filled):
        bad = filled[~filled.index.isin(dates.index)].index[0]
        _fail(source, f"mixed types: '{texts.loc[bad][:40]}' in a column of dates", bad, column)
    return texts.where(texts != "", None)


def read_outcomes(path, required: tuple[str, ...] = REQUIRED) -> pd.DataFrame:
    """Read and validate an outcomes table (CSV, tab- or semicolon-separated text, or .xlsx).

    ``required``: the columns the caller uses (:func:`validate_outcomes`; ``process`` passes
    :data:`DOSE_COLUMNS`).

    Text is UTF-8 (with or without a BOM) or UTF-16 with a BOM (Excel's "Unicode Text"); a cell's
    bytes that are not UTF-8 are read as Windows-1252 (Excel's "CSV (Comma delimited)" on
    Windows), other bytes, and bytes Mac Roman reads as other letters, are refused naming the cell
    (:func:`tilpheno.io.workbook.table_frame`).
    A title above the header, the table on a later sheet and merged cells are read as a
    spreadsheet shows them (see :func:`_read_raw`).

    Returns one row per patient with typed columns (ids and codes as text, times and doses as
    floats, events as int, covariates numeric or text) and a default RangeIndex.
    """
    path = Path(path)
    frame = validate_outcomes(_read_raw(path, required), source=str(path), required=required)
    return frame.reset_index(drop=True)
