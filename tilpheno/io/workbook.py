"""Tables typed by hand in Excel (the outcomes table, a manifest), read as a spreadsheet shows
them: a workbook's sheets' cells (with merged cells filled) or a CSV text's lines, the table's
header found by the columns it must have (a title or blank lines above it skipped; in a workbook,
on the one sheet holding such a header), and checks shared by their readers.

Rows are numbered as the file numbers them: a sheet's row, a text file's line (1-based; a row of
text by the line it starts on, as a text editor numbers lines, when a quoted cell holds a line
break). A text's bytes are UTF-8, else Windows-1252 cell by cell (:func:`decode_text`,
:func:`table_frame`); a workbook is opened once (:func:`open_workbook`), its formulas a second
time only when it has some."""
from __future__ import annotations

import csv
import io
import re
import unicodedata
import zipfile
from typing import Any, Callable, Iterable, Iterator, Sequence

import pandas as pd

from tilpheno.errors import TableError
from tilpheno.io.files import column_separator

Rows = list[tuple[int, list[Any]]]
"""A table's rows as ``(line, cells)``: the line of a text file, or a sheet's row."""


def place(source: str, row: int | None = None, column: str | None = None) -> str:
    """Where a table's cell lies, as both table readers name it: ``<source>: row R, column 'C'``
    (the parts that are known). ``R`` is the row as the file numbers it (module docstring: a
    sheet's row, a text file's line), the number a user finds the row by in Excel or an editor."""
    where = [f"row {row}"] if row is not None else []
    if column is not None:
        where.append(f"column '{column}'")
    return f"{source}: {', '.join(where)}" if where else source


def open_workbook(data: bytes, source: str) -> Any:
    """The workbook in ``data`` (an ``openpyxl`` Workbook, every sheet in memory, formula cells
    holding their saved values): the one opening the table's readers need, and a second, of the
    formulas, only when a sheet holds one (:func:`refuse_unsaved_formulas`). TableError
    ``<source>: not a readable Excel workbook (<what openpyxl raised>)`` when it is not one."""
    import openpyxl

    try:
        return openpyxl.load_workbook(io.BytesIO(data), data_only=True)
    except Exception as exc:  # openpyxl raises many kinds on corrupt workbooks
        raise TableError(f"{source}: not a readable Excel workbook ({type(exc).__name__})") from None


def _cells_below(sheet: Any, header_row: int) -> Iterator[tuple[dict[int, str], Any]]:
    """``(header, cell)`` for every cell of the openpyxl worksheet ``sheet`` below its row
    ``header_row`` (1-based), in reading order; ``header``: :func:`_header`."""
    header = _header(sheet, header_row)
    for row in sheet.iter_rows(min_row=header_row + 1):
        for cell in row:
            yield header, cell


def _header(sheet: Any, header_row: int) -> dict[int, str]:
    """Column number -> the text of the worksheet's header cell in row ``header_row`` (stripped;
    ``''`` when empty)."""
    return {cell.column: header_text(cell.value) for cell in sheet[header_row]}


def _invisible(char: str) -> bool:
    """True for a character that takes no space on screen: Unicode's format characters (category
    Cf: zero-width space U+200B and joiners, a byte order mark U+FEFF inside a text, soft hyphen,
    direction marks), which text pasted from a web page or another program brings along."""
    return unicodedata.category(char) == "Cf"


def header_text(value: Any) -> str:
    """A header cell's text as a column name: without invisible characters (:func:`_invisible`,
    anywhere in it: ``os_months\u200b`` names ``os_months``) and surrounding blanks (also
    no-break spaces); ``''`` for an empty cell."""
    return "" if value is None else "".join(c for c in str(value) if not _invisible(c)).strip()


def sheet_values(book: Any) -> list[tuple[str, Rows]]:
    """Every sheet of the workbook (:func:`open_workbook`) as ``(title, [(sheet row, cell values)])``
    (saved values), with each merged range's value in all of its cells (as Excel shows it: a
    product id merged down over its tubes' rows belongs to each row). Values as
    ``pandas.read_excel(dtype=object)`` gives them (a date a ``datetime``, a whole number an
    ``int``), an empty cell ``''``; rows with no value are left out, every row has the sheet's
    width."""
    sheets = []
    for sheet in book.worksheets:
        values = {(c.row, c.column): c.value for row in sheet.iter_rows() for c in row if c.value is not None}
        for merged in sheet.merged_cells.ranges:
            top = values.get((merged.min_row, merged.min_col))
            if top is not None:
                values.update(dict.fromkeys(merged.cells, top))
        width = max((column for _, column in values), default=0)
        rows = sorted({row for row, _ in values})
        sheets.append((sheet.title, [(r, [_value(values.get((r, c))) for c in range(1, width + 1)]) for r in rows]))
    return sheets


def sheet_rows(book: Any) -> list[tuple[str, Rows]]:
    """:func:`sheet_values` as text, as ``pandas.read_excel(dtype=str)`` gives it: an empty cell
    ``''``, a whole number without ``.0``."""
    return [(title, [(r, [str(v) for v in cells]) for r, cells in rows]) for title, rows in sheet_values(book)]


def _value(value: Any) -> Any:
    """A cell value: ``''`` for an empty cell, ``7`` for the number 7.0."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def decode_text(data: bytes, source: str) -> str:
    """The text of a CSV file's bytes: UTF-16 when it starts with its BOM (Excel's "Unicode Text"),
    else UTF-8 (BOM optional), its bytes that are not UTF-8 kept as surrogate escapes for
    :func:`table_frame` to read as Windows-1252 cell by cell (:func:`windows_1252`). TableError
    (starting with ``source``) for binary content (a NUL byte in the first 64 KiB of a file that is
    not UTF-16) and for UTF-16 that does not decode."""
    utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
    if b"\x00" in data[:65536] and not utf16:
        raise TableError(f"{source}: not a CSV or Excel (.xlsx) file (binary content)")
    try:
        return data.decode("utf-16" if utf16 else "utf-8-sig", errors="strict" if utf16 else "surrogateescape")
    except UnicodeDecodeError:
        raise TableError(f"{source}: not a readable UTF-16 text file") from None


_ESCAPED = re.compile("[\udc80-\udcff]+")


_MAC_ROMAN_LETTERS = "".join(chr(0xdc00 + b) for b in range(0x80, 0xa0)
                             if bytes([b]).decode("cp1252", errors="ignore").isalpha())
"""Escaped bytes (0x8A, 0x8E, 0x9F, ...) that read as rare letters in Windows-1252 (Š, Ž, Ÿ) and as
common ones in Mac Roman, what Excel for Mac's CSV writes (ä, é, ü): a cell holding one is text
in one of the two, and which cannot be told."""


def _mac_roman_inside_word(cell: str, cp: str, mac: str) -> bool:
    """True when an escaped byte of ``cell`` from 0xA0 up reads in Windows-1252 (``cp``) as a
    symbol between two letters and in Mac Roman (``mac``) as a letter: 'Straße', 'Bjørn' saved by
    Excel for Mac read as 'Stra§e', 'Bj¿rn'. (Both readings are one character a byte, so the three
    strings align.) A symbol beside a space or a digit ('Kymriah® 25°C') is Windows-1252's."""
    return any("\udca0" <= c <= "\udcff" and 0 < i < len(cell) - 1 and not cp[i].isalpha() and mac[i].isalpha()
               and cp[i - 1].isalpha() and cp[i + 1].isalpha() for i, c in enumerate(cell))


def _refuse_mac_roman(cell: str, where: str) -> None:
    """Refuse a cell (as :func:`decode_text` gives it) holding a byte of :data:`_MAC_ROMAN_LETTERS`,
    or a byte that reads as a letter inside a word in Mac Roman only (:func:`_mac_roman_inside_word`):
    a TableError starting with ``where`` showing both readings."""
    if not _ESCAPED.search(cell):
        return
    mac = _ESCAPED.sub(lambda run: run.group().encode("utf-8", "surrogateescape").decode("mac_roman"), cell)
    if any(c in _MAC_ROMAN_LETTERS for c in cell) or _mac_roman_inside_word(cell, windows_1252(cell), mac):
        raise TableError(f"{where}: {windows_1252(cell).strip()[:40]!r} in Windows-1252, {mac.strip()[:40]!r} in Mac "
                         "Roman (Excel for Mac's CSV): the text is not UTF-8, and which of the two it is cannot be "
                         "told; save the table as 'CSV UTF-8 (Comma delimited)' or .xlsx")


def windows_1252(text: str) -> str:
    """``text`` (UTF-8 with other bytes as surrogate escapes, :func:`decode_text`) with those bytes
    read as Windows-1252, what Excel's "CSV (Comma delimited)" writes on Windows ("1 µl", "Pé1");
    the UTF-8 around them is kept. Bytes that are not Windows-1252 either (0x81, 0x8d, 0x8f, 0x90,
    0x9d) stay escaped."""
    return _ESCAPED.sub(lambda run: run.group().encode("utf-8", "surrogateescape")
                        .decode("cp1252", errors="surrogateescape"), text)


def text_rows(text: str, required: Sequence[str]) -> tuple[int, str, Rows]:
    """``(header line, separator, rows)`` of a CSV text: the header is found by :func:`header_at`
    among the lines (each split at its own separator, so a title line does not decide); the cells
    are separated by the header line's separator (:func:`tilpheno.io.files.column_separator`:
    commas, else semicolons or tabs). A row's line is the line its record starts on, as a text
    editor numbers them (a line ends at ``\n``, ``\r\n`` or ``\r``): a quoted cell holding a
    line break makes the record span several lines, and later records' lines are no longer the
    rows Excel shows."""
    lines = [(i, line) for i, line in enumerate(io.StringIO(text, newline=""), 1) if line.strip()]
    header_line = header_at([(i, _cells(line, column_separator(line))) for i, line in lines], required)
    separator = column_separator(dict(lines).get(header_line, ""))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator, skipinitialspace=True)
    rows: Rows = []
    start = 1
    for cells in reader:
        rows.append((start, cells))
        start = reader.line_num + 1
    return header_line, separator, rows


def _cells(line: str, separator: str) -> list[str]:
    """The cells of one line of a CSV text."""
    return next(csv.reader([line], delimiter=separator, skipinitialspace=True), [])


def _named(cells: list[Any], required: Sequence[str]) -> int:
    """How many of the ``required`` columns (case and blanks ignored) ``cells`` names."""
    return len({header_text(c).lower() for c in cells} & {c.lower() for c in required})


def header_at(rows: Rows, required: Sequence[str]) -> int:
    """The line of the header among ``rows`` (``(line, cells)``): the first naming all ``required``
    columns (case and blanks ignored), else the first naming the most (at least one), else the
    first non-blank row (1 if none)."""
    filled = [(line, cells) for line, cells in rows if any(str(c).strip() for c in cells)]
    best = max(filled, key=lambda r: _named(r[1], required), default=(1, []))
    return best[0] if _named(best[1], required) else next(iter(filled), (1, []))[0]


def workbook_table(sheets: list[tuple[str, Rows]], required: Sequence[str], what: str,
                   source: str, hidden: Iterable[str] = ()) -> tuple[str, int, Rows]:
    """``(title, header row, rows)`` of the sheet holding the table (as :func:`text_rows` gives a
    text's): the one whose header names all ``required`` columns (TableError naming the sheets when
    several do: ``<source>: sheets 'A' (hidden), 'B' each hold a <what> table (<required>)``, a
    title in ``hidden`` marked so, since Excel does not show that sheet), else the first naming the
    most of them, else the first sheet that is not empty; its header by :func:`header_at`."""
    def named(sheet: tuple[str, Rows]) -> tuple[int, bool]:
        return max((_named(cells, required) for _, cells in sheet[1]), default=0), bool(sheet[1])

    hidden = set(hidden)
    full = [title for title, rows in sheets if named((title, rows))[0] == len(required)]
    if len(full) > 1:
        shown = ", ".join(f"{title!r}{' (hidden)' if title in hidden else ''}" for title in full)
        raise TableError(f"{source}: sheets {shown} each hold {what} table ({', '.join(required)}); keep one "
                         "sheet's table or combine them")
    title, rows = max(sheets, key=named)
    return title, header_at(rows, required), rows


def hidden_sheets(book: Any) -> set[str]:
    """The titles of the workbook's (:func:`open_workbook`) sheets Excel does not show (hidden, or
    'very hidden' by a macro)."""
    return {sheet.title for sheet in book.worksheets if sheet.sheet_state != "visible"}


EXCEL_ERRORS = frozenset({"#N/A", "#DIV/0!", "#VALUE!", "#REF!", "#NAME?", "#NUM!", "#NULL!", "#SPILL!", "#CALC!",
                          "#FIELD!", "#BLOCKED!", "#CONNECT!", "#BUSY!", "#UNKNOWN!", "#GETTING_DATA"})
"""Excel's error values: what a cell whose formula failed shows, and what a workbook (or a CSV
Excel saved from it) holds in its place."""


def table_frame(rows: Rows, header_line: int, where: Callable[[int], str], lower: Sequence[str] = (),
                keep_bytes: Sequence[str] = (), ids: Sequence[str] = (), codes: Sequence[str] = (),
                text: bool = True) -> pd.DataFrame:
    """The rows below ``header_line`` as a frame of cells (``object``), named by the header
    (:func:`header_text`: invisible characters and surrounding blanks removed; a name in ``lower``
    written in any case is lower-cased), index = line; rows whose
    every cell is blank are dropped, and so are columns with an empty header cell and no value
    (Excel pads every row of a CSV it saves to the widest row). Bytes of a text that are not UTF-8
    (:func:`decode_text`) are read as Windows-1252 (:func:`windows_1252`), in every cell but those
    of the columns named in ``keep_bytes`` (case ignored: a file's name, whose bytes are its name).

    A TableError whose message starts with ``where(line)``: a column named twice (also in
    different cases), a row with more filled cells than the header has names, a value in a column
    with an empty header cell (a note beside the table, in column K: data or not, the reader
    cannot tell), a byte that is neither UTF-8 nor Windows-1252 (text in another encoding, whose
    ids would silently be other ids), an id in Excel's scientific notation (``1.23457E+11``: its
    digits are lost), an id holding a special space (:func:`_refuse_special_spaces`: a no-break
    space between its words), a byte that reads as a letter in Mac Roman and as a rare one
    in Windows-1252 (:data:`_MAC_ROMAN_LETTERS`: Excel for Mac's CSV; 'Zürich' would silently be
    'ZŸrich'), an invisible character (:func:`_invisible`) in a cell of the
    columns named in ``ids`` or ``codes`` (case ignored: the id would silently match no other
    table's, and which characters a lab meant cannot be told; a code such as the manifest's tube
    would be refused as unknown although it reads as a known one), and an Excel error value (:data:`EXCEL_ERRORS`: a formula
    that failed; ``#N/A`` too, mostly a lookup that found nothing rather than a value known to be
    missing), and in a CSV text (``text``) a cell that swallowed the rows below it
    (:func:`_refuse_swallowed_rows`: a quote never closed)."""
    header = next((cells for line, cells in rows if line == header_line), [])
    written = [header_text(c) for c in _decoded(header, [""] * len(header), (), where(header_line))]
    _refuse_named_twice(written, where(header_line))
    names = [name.lower() if name.lower() in lower else name for name in written]
    body = []
    for line, cells in rows:
        if line <= header_line or not any(str(c).strip() for c in cells):
            continue
        if any(str(c).strip() for c in cells[len(names):]):
            raise TableError(f"{where(line)}: {len(cells)} cells, the header names {len(names)} columns (a "
                             "separator inside a value must be quoted)")
        cells = _decoded([*cells[:len(names)], *[""] * (len(names) - len(cells))], names, keep_bytes, where(line))
        _refuse_stray_cells(cells, names, where(line))
        if text:   # a CSV text's rows (a workbook's cells hold what was typed in them)
            _refuse_swallowed_rows(cells, names, where(line))
        _refuse_invisible(cells, names, ids, where(line))
        _refuse_scientific_ids(cells, names, ids, where(line))
        _refuse_special_spaces(cells, names, ids, where(line))
        _refuse_invisible(cells, names, codes, where(line), "value")
        body.append((line, [cell for name, cell in zip(names, cells) if name]))
    return pd.DataFrame([cells for _, cells in body], columns=[name for name in names if name],
                        index=[line for line, _ in body], dtype=object)


def _decoded(cells: list[Any], names: list[str], keep_bytes: Sequence[str], where: str) -> list[Any]:
    """A row's ``cells`` (under the header's ``names``) read by :func:`windows_1252`, but for the
    columns in ``keep_bytes``; a byte that is not Windows-1252 either is a TableError starting with
    ``where``, naming the column."""
    keep = {name.casefold() for name in keep_bytes}
    decoded = []
    for i, (name, cell) in enumerate(zip(names, cells)):
        if isinstance(cell, str) and name.casefold() not in keep:
            column = f"column '{name}'" if name else f"column {_column_letter(i)}"
            _refuse_mac_roman(cell, f"{where}, {column}")
            cell = windows_1252(cell)
            left = _ESCAPED.search(cell)
            if left:
                raise TableError(f"{where}, {column}: byte 0x{ord(left.group()[0]) - 0xdc00:02x} is neither UTF-8 "
                                 "nor Windows-1252 text; save the table as 'CSV UTF-8 (Comma delimited)' or .xlsx")
        decoded.append(cell)
    return decoded


def _refuse_stray_cells(cells: list[Any], names: list[str], where: str) -> None:
    """Refuse a row's first cell (``cells``, under the header's ``names``) that holds a value in a
    column without a name, or an Excel error value; the TableError starts with ``where``."""
    for i, (name, cell) in enumerate(zip(names, cells)):
        text = str(cell).strip()
        if not name and text:
            raise TableError(f"{where}, column {_column_letter(i)}: {text[:40]!r} lies in a column without a "
                             "header; name the column in the header row, or delete the cell")
        if text.upper() in EXCEL_ERRORS:
            raise TableError(f"{where}, column '{name}': {text} is an Excel error value (a formula that failed, "
                             "such as a lookup that found nothing), not a value; correct it, or empty the cell if the "
                             "value is missing")


def _refuse_swallowed_rows(cells: list[Any], names: list[str], where: str) -> None:
    """Refuse a row's cell (``cells``, under the header's ``names``) holding a line break followed by
    a line with as many separators (commas, semicolons or tabs) as a row of the table has, less
    two (at least two): a quote that opens a CSV cell (``"ok``) and is never closed, or closed rows
    later, makes the rows below part of the cell, and they would be lost without a word. A note
    typed with line breaks in one cell (Alt+Enter) is kept. The TableError starts with ``where``."""
    least = max(2, len(names) - 2)
    for name, cell in zip(names, cells):
        lines = str(cell).splitlines()[1:]
        swallowed = [text for text in lines if max(text.count(sep) for sep in ",;\t") >= least]
        if swallowed:
            raise TableError(f"{where}, column '{name}': the cell runs over {len(lines) + 1} lines, "
                             f"{len(swallowed)} of them like rows of the table ({swallowed[0][:40]!r}): a quote (\") "
                             "opens the cell and is not closed where it ends, so the rows below would be lost; "
                             "remove the stray quote, or close it")


def _refuse_invisible(cells: list[Any], names: list[str], ids: Sequence[str], where: str, what: str = "id") -> None:
    """Refuse an invisible character (:func:`_invisible`) in a row's cell (``cells``, under the
    header's ``names``) of a column named in ``ids`` (case ignored); the TableError starts with
    ``where`` and names the column, the character and where it lies in the cell (``what``: how the
    message calls the cell's text, "the id", "the value")."""
    wanted = {name.casefold() for name in ids}
    for name, cell in zip(names, cells):
        text = str(cell).strip()
        hidden = next((i for i, c in enumerate(text) if _invisible(c)), None) if name.casefold() in wanted else None
        if hidden is not None:
            char = text[hidden]
            shown = "".join(c for c in text if not _invisible(c))
            position = f"after {text[:hidden]!r}" if hidden else "at its start"
            raise TableError(f"{where}, column '{name}': the {what} {shown[:40]!r} holds an invisible character "
                             f"(U+{ord(char):04X} {unicodedata.name(char, 'format character')}) {position}; retype "
                             f"the {what}, or delete the character")


def _refuse_special_spaces(cells: list[Any], names: list[str], ids: Sequence[str], where: str) -> None:
    """Refuse a space other than the ordinary one (Unicode category Zs: a no-break space U+00A0,
    which Word, web pages and French Excel put between words, a narrow or thin space) inside a
    row's cell of a column named in ``ids`` (case ignored): it looks like a space, but the id
    matches no other table's id written with one. Surrounding ones are stripped, not refused. The
    TableError starts with ``where`` and names the column, the character and where it lies."""
    wanted = {name.casefold() for name in ids}
    for name, cell in zip(names, cells):
        text = str(cell).strip()
        if name.casefold() not in wanted:
            continue
        at = next((i for i, c in enumerate(text) if c != " " and unicodedata.category(c) == "Zs"), None)
        if at is not None:
            char = text[at]
            raise TableError(f"{where}, column '{name}': the id {text[:40]!r} holds a special space (U+{ord(char):04X} "
                             f"{unicodedata.name(char, 'space')}) after {text[:at]!r}, which an id typed with an "
                             "ordinary space does not match; retype the space")


_SUMMARY_LABEL = re.compile(r"^(?:grand\s*|sub-?)?(?:totals?|sum|mean|average|avg|median|sd|s\.d\.|std\.?\s*dev\.?|stdev|"
                            r"count|min(?:imum)?|max(?:imum)?|cv)\s*:?$", re.IGNORECASE)


def lone_value(cells: Iterable[tuple[str, Any]]) -> str:
    """`` (the row's only value is '<text>' in column '<column>': a note under the table? ...)``
    when a table row (``(column name, cell)`` pairs) has exactly one filled cell (a note or source
    line typed under the table, or a row begun and not filled in), else ``''``: the end of a
    missing-value message."""
    filled = [(column, str(cell).strip()) for column, cell in cells if cell is not None and str(cell).strip()]
    if len(filled) != 1:
        return ""
    column, text = filled[0]
    return (f" (the row's only value is {text[:40]!r} in column '{column}': a note under the table? Delete it, or "
            "fill in the row)")


def summary_label(cells: Iterable[tuple[str, Any]]) -> tuple[str, str] | None:
    """``(column, text)`` when the first filled cell of a table row (``(column name, cell)`` pairs
    in the sheet's order) labels a row of totals or statistics (``Total``, ``Sum``, ``Mean``,
    ``SD``, ``Median``, ``Count``, ...: a sheet's total row, FlowJo's table editor's ``Mean`` and
    ``SD`` rows under the table), else None."""
    for column, cell in cells:
        text = str(cell).strip() if cell is not None else ""
        if text:
            return (column, text) if _SUMMARY_LABEL.match(text) else None
    return None


_SCIENTIFIC_ID = re.compile(r"^\d\.\d{1,14}E\+\d{1,3}$", re.IGNORECASE)


def _refuse_scientific_ids(cells: list[Any], names: list[str], ids: Sequence[str], where: str) -> None:
    """Refuse a row's cell (``cells``, under the header's ``names``) of a column named in ``ids``
    (case ignored) written as Excel writes a long number in scientific notation (``1.23457E+11``:
    a barcode or LIMS number typed into a General cell, saved in a CSV as Excel showed it, its
    last digits lost). The TableError starts with ``where`` and names the column."""
    wanted = {name.casefold() for name in ids}
    for name, cell in zip(names, cells):
        text = str(cell).strip()
        if name.casefold() in wanted and _SCIENTIFIC_ID.match(text):
            raise TableError(f"{where}, column '{name}': the id {text!r} is a long number as Excel shows it in "
                             "scientific notation (saved so, its last digits are lost); format the column as Text in "
                             "Excel, type the ids again and save the table again")


def _refuse_named_twice(names: list[str], where: str) -> None:
    """Refuse two header cells naming one column, also in different cases (``os_months`` and
    ``OS_months``: which one is meant?): a TableError starting with ``where`` naming both columns'
    letters (and spellings, when they differ). Empty names are not compared."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name:
            continue
        j = seen.setdefault(name.casefold(), i)
        if j != i:
            first, second = _column_letter(j), _column_letter(i)
            both = f"{first} and {second}" if names[j] == name else f"{first} {names[j]!r} and {second} {name!r}"
            raise TableError(f"{where}: column {names[j]!r} appears twice (columns {both}); keep one, or rename the "
                             "other")


def _column_letter(index: int) -> str:
    """The spreadsheet letter of the 0-based column ``index`` (0 -> A, 26 -> AA)."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


_FULL_CALC_ON_LOAD = re.compile(rb'<(?:\w+:)?calcPr\b[^>]*\bfullCalcOnLoad\s*=\s*["\'](?:1|true)["\']')


def recalculated_on_open(data: bytes) -> bool:
    """True when the workbook's ``calcPr`` asks for every formula to be recalculated when it is
    opened (``fullCalcOnLoad``): its writer did not compute the formulas, and their saved values
    are placeholders (xlsxwriter and libxlsxwriter, hence R's writexl, store 0; openpyxl none).
    Excel and LibreOffice clear the flag when they calculate and save."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as book:
            return bool(_FULL_CALC_ON_LOAD.search(book.read("xl/workbook.xml")))
    except (zipfile.BadZipFile, KeyError, OSError):
        return False


_FORMULA = re.compile(rb"<(?:\w+:)?f[\s>/]")


def _formula_cells(data: bytes, title: str, header_row: int) -> set[str]:
    """The coordinates (``G3``) of the formula cells below row ``header_row`` of the sheet titled
    ``title``. The workbook is opened (formulas as written, read-only) only when a sheet's XML
    holds a formula element (``<f>``): a workbook of values is not opened again."""
    import openpyxl

    with zipfile.ZipFile(io.BytesIO(data)) as parts:
        if not any(_FORMULA.search(parts.read(name)) for name in parts.namelist()
                   if name.startswith("xl/worksheets/") and name.endswith(".xml")):
            return set()
    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=False)
    try:
        return {cell.coordinate for row in book[title].iter_rows(min_row=header_row + 1) for cell in row
                if getattr(cell, "data_type", None) == "f"}
    finally:
        book.close()


def refuse_sheet_problems(data: bytes, sheet: Any, ids: Iterable[str], locate: Callable[[int, str | None], str],
                          header_row: int = 1) -> None:
    """The checks both table readers make on the worksheet holding their table (``sheet``,
    ``header_row``, ``locate`` as for :func:`refuse_unsaved_formulas`; ``data``: the workbook's
    bytes), in this order: formula cells without a saved value (:func:`refuse_unsaved_formulas`),
    id cells (the columns named in ``ids``) shown otherwise than stored
    (:func:`refuse_display_only_ids`), hidden rows and hidden columns holding values
    (:func:`refuse_hidden_rows`, :func:`refuse_hidden_columns`). Raises TableError at the first."""
    refuse_unsaved_formulas(data, sheet, locate, header_row)
    refuse_display_only_ids(sheet, ids, locate, header_row)
    refuse_hidden_rows(sheet, locate, header_row)
    refuse_hidden_columns(sheet, locate, header_row)


def refuse_unsaved_formulas(data: bytes, sheet: Any, locate: Callable[[int, str | None], str],
                            header_row: int = 1) -> None:
    """Refuse a formula cell of the table (the worksheet ``sheet`` of :func:`open_workbook`, below
    its header row ``header_row``) that holds no saved value.

    A workbook written by a script (openpyxl, pandas) stores formulas without their results until
    Excel (or LibreOffice) calculates and saves it; read as values, such a cell is empty, so a
    value would be silently missing. A formula whose saved result is empty text (Excel writes
    ``t="str"``) is a real empty cell and is accepted. A formula with a saved value in a workbook
    that asks to be recalculated when opened (:func:`recalculated_on_open`: xlsxwriter, R's
    writexl) is refused too: the value is a placeholder (0), not the result.

    ``data``: the workbook's bytes (its formulas, :func:`_formula_cells`). ``locate(row, column)``:
    the start of the message for the cell's sheet row and its column's header text (None when the
    header cell is empty), e.g. ``"<file>: row 3, column 'os_months'"``. Raises TableError.
    """
    formulas = _formula_cells(data, sheet.title, header_row)
    if not formulas:
        return
    placeholders = recalculated_on_open(data)
    for header, cell in _cells_below(sheet, header_row):
        if cell.coordinate in formulas and cell.value is not None and placeholders:
            raise TableError(f"{locate(cell.row, header.get(cell.column) or None)}: sheet '{sheet.title}' cell "
                             f"{cell.coordinate} holds a formula whose saved value ({cell.value!r}) is a placeholder "
                             "(the workbook asks to be recalculated when opened, as programs that write formulas "
                             "without computing them do: xlsxwriter and R's writexl save 0): open it in Excel and "
                             "save it, or paste the values over the formulas, then read it again")
        if cell.coordinate in formulas and cell.value is None and cell.data_type != "str":
            raise TableError(f"{locate(cell.row, header.get(cell.column) or None)}: sheet '{sheet.title}' cell "
                             f"{cell.coordinate} holds a formula with no saved value (the workbook was written by a "
                             "program and never calculated): open it in Excel and save it, or paste the values over "
                             "the formulas, then read it again")


def refuse_display_only_ids(sheet: Any, columns: Iterable[str], locate: Callable[[int, str | None], str],
                            header_row: int = 1) -> None:
    """Refuse an id cell (a column named in ``columns``, case and blanks ignored, of the table:
    ``sheet``, ``header_row`` as for :func:`refuse_unsaved_formulas`) whose text in Excel is not
    its stored value: a date (``2024-03-01`` is stored as a day number and read as a timestamp), a
    number with a display format (``000`` shows 7 as ``007``; read, it is ``7``, and ``007``
    would silently match no FCS file or the wrong one), or a number of 16 digits or more (a
    barcode: Excel kept its first 15). Other numbers in the General format are read as typed and
    accepted. ``locate`` as for :func:`refuse_unsaved_formulas`.
    Raises TableError saying to format the column as Text and type the ids."""
    wanted = {str(c).strip().casefold() for c in columns}
    for header, cell in _cells_below(sheet, header_row):
        name = header.get(cell.column, "")
        if name.casefold() not in wanted or cell.value is None:
            continue
        shown = _display_only(cell)
        if shown:
            raise TableError(f"{locate(cell.row, name)}: sheet '{sheet.title}' cell {cell.coordinate} is {shown}, "
                             "not the id as typed; format the column as Text in Excel and type the ids again")


def refuse_hidden_rows(sheet: Any, locate: Callable[[int, str | None], str], header_row: int = 1) -> None:
    """Refuse a row of the table (``sheet``, ``header_row`` as for :func:`refuse_unsaved_formulas`)
    that holds a value but is hidden in Excel, by hand or by a filter: a patient or tube hidden
    to leave it out would otherwise be read without a word. ``locate`` as for
    :func:`refuse_unsaved_formulas`, with the column of the row's first value. Raises TableError."""
    header = _header(sheet, header_row)
    for row in sorted(r for r, dimension in sheet.row_dimensions.items() if dimension.hidden and r > header_row):
        first = next((cell for cell in sheet[row] if cell.value is not None), None)
        if first is not None:
            raise TableError(f"{locate(row, header.get(first.column) or None)}: sheet '{sheet.title}' row {row} is "
                             "hidden in Excel (by hand or by a filter); unhide it, or delete it if it is not part of "
                             "the table")


def refuse_hidden_columns(sheet: Any, locate: Callable[[int, str | None], str], header_row: int = 1) -> None:
    """Refuse a column of the table (``sheet``, ``header_row`` as for :func:`refuse_unsaved_formulas`)
    that holds a value below the header but is hidden in Excel (by hand, or in a collapsed group):
    a helper column hidden to keep it out of sight would otherwise be read as a column of the
    table (in the outcomes table, a covariate). ``locate`` as for :func:`refuse_unsaved_formulas`,
    with the column's first value below the header. Raises TableError."""
    hidden = sorted({column for dimension in sheet.column_dimensions.values() if dimension.hidden
                     for column in range(dimension.min or 1, (dimension.max or dimension.min or 1) + 1)})
    if not hidden:
        return
    header = _header(sheet, header_row)
    for column in hidden:
        first = next((cell for (cell,) in sheet.iter_rows(min_row=header_row + 1, min_col=column, max_col=column)
                      if cell.value is not None), None)
        if first is not None:
            name = header.get(column) or None
            raise TableError(f"{locate(first.row, name)}: sheet '{sheet.title}' column {first.column_letter}"
                             f"{f' ({name!r})' if name else ''} is hidden in Excel; unhide it, or delete it if it is "
                             "not part of the table")


def _display_only(cell) -> str:
    """Why the cell's text in Excel differs from its value ("a date", "the number 7 shown with the
    format '000'", a number of more than 15 digits, whose last digits Excel dropped when it was
    typed), or "" when it does not."""
    if cell.is_date:
        return "a date"
    if cell.data_type == "n" and isinstance(cell.value, (int, float)) and abs(cell.value) >= 1e15:
        return f"the number {cell.value:.15g} (Excel keeps 15 digits: the id's last digits are lost)"
    if cell.data_type == "n" and cell.number_format not in ("General", "@"):
        return f"the number {cell.value!r} shown with the format '{cell.number_format}'"
    return ""
