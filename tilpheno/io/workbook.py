"""Excel workbooks read as tables (the outcomes table, a manifest): checks shared by their readers."""
from __future__ import annotations

import io
from typing import Callable

from tilpheno.errors import TableError


def refuse_unsaved_formulas(data: bytes, locate: Callable[[int, str | None], str]) -> None:
    """Refuse a formula cell of the first sheet that holds no saved value.

    A workbook written by a script (openpyxl, pandas) stores formulas without their results until
    Excel (or LibreOffice) calculates and saves it; read as values, such a cell is empty, so a
    value would be silently missing. A formula whose saved result is empty text (Excel writes
    ``t="str"``) is a real empty cell and is accepted.

    ``data``: the workbook's bytes. ``locate(row, column)``: the start of the message for the
    cell's sheet row (the header is row 1) and its column's header text (None when the header
    cell is empty), e.g. ``"<file>: row 3, column 'os_months'"``. Raises TableError.
    """
    import openpyxl

    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=False)
    try:
        sheet = book.worksheets[0]
        formulas = {cell.coordinate for row in sheet.iter_rows() for cell in row if cell.data_type == "f"}
    finally:
        book.close()
    if not formulas:
        return
    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        sheet = book.worksheets[0]
        header: dict[int, str] = {}
        for row in sheet.iter_rows():
            for cell in row:
                if getattr(cell, "row", None) == 1:
                    header[cell.column] = "" if cell.value is None else str(cell.value).strip()
                if getattr(cell, "coordinate", None) in formulas and cell.value is None and cell.data_type != "str":
                    raise TableError(f"{locate(cell.row, header.get(cell.column) or None)}: sheet '{sheet.title}' "
                                     f"cell {cell.coordinate} holds a formula with no saved value (the workbook was "
                                     "written by a program and never calculated): open it in Excel and save it, or "
                                     "paste the values over the formulas, then read it again")
    finally:
        book.close()
