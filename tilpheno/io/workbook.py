"""Excel workbooks read as tables (the outcomes table, a manifest): their sheets' cells as text
(with merged cells filled) and checks shared by their readers."""
from __future__ import annotations

import io
from typing import Any, Callable, Iterable, Iterator

from tilpheno.errors import TableError


def _sheet_cells(data: bytes, *, data_only: bool, sheet: str | None = None,
                 header_row: int = 1) -> Iterator[tuple[str, dict[int, str], Any]]:
    """``(sheet title, header, cell)`` for every cell below the header row (``header_row``, 1-based)
    of the sheet titled ``sheet`` (default the first), in reading order; ``header``: column number
    -> the header text (stripped) of the columns seen so far. Values when ``data_only``, else
    formulas as written."""
    import openpyxl

    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=data_only)
    try:
        chosen = book[sheet] if sheet is not None else book.worksheets[0]
        header: dict[int, str] = {}
        for row in chosen.iter_rows(min_row=header_row):
            for cell in row:
                if getattr(cell, "row", None) == header_row:
                    header[cell.column] = "" if cell.value is None else str(cell.value).strip()
                elif getattr(cell, "row", None) is not None:
                    yield chosen.title, header, cell
    finally:
        book.close()


def sheet_rows(data: bytes) -> list[tuple[str, list[tuple[int, list[str]]]]]:
    """Every sheet of the workbook as ``(title, [(sheet row, cell texts)])`` (saved values), with
    each merged range's value in all of its cells (as Excel shows it: a product id merged down
    over its tubes' rows belongs to each row). Texts as ``pandas.read_excel(dtype=str)`` gives
    them: an empty cell ``''``, a whole number without ``.0``."""
    import openpyxl

    book = openpyxl.load_workbook(io.BytesIO(data), data_only=True)
    try:
        sheets = []
        for sheet in book.worksheets:
            values = {(c.row, c.column): c.value for row in sheet.iter_rows() for c in row if c.value is not None}
            for merged in sheet.merged_cells.ranges:
                top = values.get((merged.min_row, merged.min_col))
                if top is not None:
                    values.update(dict.fromkeys(merged.cells, top))
            width = max((column for _, column in values), default=0)
            rows = sorted({row for row, _ in values})
            sheets.append((sheet.title, [(r, [_text(values.get((r, c))) for c in range(1, width + 1)]) for r in rows]))
        return sheets
    finally:
        book.close()


def _text(value: Any) -> str:
    """A cell value as text: ``''`` for an empty cell, ``7`` for the number 7.0."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def refuse_unsaved_formulas(data: bytes, locate: Callable[[int, str | None], str], *, sheet: str | None = None,
                            header_row: int = 1) -> None:
    """Refuse a formula cell of the table (the sheet titled ``sheet``, default the first, below its
    header row ``header_row``) that holds no saved value.

    A workbook written by a script (openpyxl, pandas) stores formulas without their results until
    Excel (or LibreOffice) calculates and saves it; read as values, such a cell is empty, so a
    value would be silently missing. A formula whose saved result is empty text (Excel writes
    ``t="str"``) is a real empty cell and is accepted.

    ``data``: the workbook's bytes. ``locate(row, column)``: the start of the message for the
    cell's sheet row and its column's header text (None when the header
    cell is empty), e.g. ``"<file>: row 3, column 'os_months'"``. Raises TableError.
    """
    formulas = {cell.coordinate for _, _, cell in _sheet_cells(data, data_only=False, sheet=sheet, header_row=header_row)
                if cell.data_type == "f"}
    if not formulas:
        return
    for title, header, cell in _sheet_cells(data, data_only=True, sheet=sheet, header_row=header_row):
        if cell.coordinate in formulas and cell.value is None and cell.data_type != "str":
            raise TableError(f"{locate(cell.row, header.get(cell.column) or None)}: sheet '{title}' cell "
                             f"{cell.coordinate} holds a formula with no saved value (the workbook was written by a "
                             "program and never calculated): open it in Excel and save it, or paste the values over "
                             "the formulas, then read it again")


def refuse_display_only_ids(data: bytes, columns: Iterable[str], locate: Callable[[int, str | None], str], *,
                            sheet: str | None = None, header_row: int = 1) -> None:
    """Refuse an id cell (a column named in ``columns``, case and blanks ignored, of the table:
    ``sheet``, ``header_row`` as for :func:`refuse_unsaved_formulas`) whose text in Excel is not
    its stored value: a date (``2024-03-01`` is stored as a day number and read as a timestamp) or
    a number with a display format (``000`` shows 7 as ``007``; read, it is ``7``, and ``007``
    would silently match no FCS file or the wrong one). Numbers in the General format are read as
    shown and accepted. ``locate`` as for :func:`refuse_unsaved_formulas`.
    Raises TableError saying to format the column as Text and type the ids."""
    wanted = {str(c).strip().casefold() for c in columns}
    for title, header, cell in _sheet_cells(data, data_only=True, sheet=sheet, header_row=header_row):
        name = header.get(cell.column, "")
        if name.casefold() not in wanted or cell.value is None:
            continue
        shown = _display_only(cell)
        if shown:
            raise TableError(f"{locate(cell.row, name)}: sheet '{title}' cell {cell.coordinate} is {shown}, not "
                             "the id as typed; format the column as Text in Excel and type the ids again")


def _display_only(cell) -> str:
    """Why the cell's text in Excel differs from its value ("a date", "the number 7 shown with the
    format '000'"), or "" when it does not."""
    if cell.is_date:
        return "a date"
    if cell.data_type == "n" and cell.number_format not in ("General", "@"):
        return f"the number {cell.value!r} shown with the format '{cell.number_format}'"
    return ""
