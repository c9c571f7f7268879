"""Lab tables shared by the manifest and outcome tests: CSV rows, Excel workbooks (merged cells) and a
good outcomes table."""
from __future__ import annotations

import csv
from pathlib import Path

OUTCOMES_HEADER = "patient_id,product_id,til_dose_cells,best_response,pfs_months,pfs_event,os_months,os_event,age,sex"
OUTCOMES_ROWS = [
    "P1,TIL1,3e10,PR,5.5,1,12.0,1,25,M",
    "P2,TIL2,2.1e10,sd,3.2,1,8.1,0,31,F",
    "P3,TIL3,4.0e10,CR,15,0,15,0,17,M",
]


def write_rows(path: Path, rows: list[list[str]]) -> Path:
    """``rows`` written to ``path`` as CSV (a lab's manifest or table, headers and blank rows as given)."""
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def workbook(path: Path, sheets: dict[str, list[list]], merged: dict[str, list[str]] | None = None) -> Path:
    """An .xlsx with the given sheets (title -> rows, in order) and merged ranges per sheet."""
    import openpyxl

    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, rows in sheets.items():
        sheet = book.create_sheet(title)
        for row in rows:
            sheet.append(row)
        for cells in (merged or {}).get(title, []):
            sheet.merge_cells(cells)
    book.save(path)
    return path
