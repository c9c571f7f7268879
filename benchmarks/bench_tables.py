"""How many times the table readers open an .xlsx, and how long reading one takes.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_tables.py [--patients 2000] [--repeats 9]

Writes an outcomes workbook of ``--patients`` rows (values only, and the same with an ``os_months``
formula per row saved with its value, as Excel saves a calculated workbook) and a manifest-shaped
workbook, then reads each ``--repeats`` times: openpyxl ``load_workbook`` calls per read (counted)
and the median CPU seconds (``time.process_time``) per read.
"""
from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
import zipfile
from pathlib import Path
from unittest import mock

import openpyxl

HEADER = ["patient_id", "product_id", "til_dose_cells", "best_response", "pfs_months", "pfs_event", "os_months",
          "os_event", "age"]


def outcomes_book(path: Path, patients: int, formulas: bool) -> Path:
    """An outcomes workbook; with ``formulas`` G is ``=E*2`` with its value saved (Excel-calculated)."""
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(HEADER)
    for i in range(patients):
        sheet.append([f"P{i}", f"TIL{i}", 3e10, "PR", 5.5, 1, f"=E{i + 2}*2" if formulas else 11.0, 1, 40 + i % 30])
    book.save(path)
    if formulas:   # save each result as Excel does, and drop the request to recalculate
        with zipfile.ZipFile(path) as z:
            parts = {n: z.read(n) for n in z.namelist()}
        xml = re.sub(rb"<f>(E\d+\*2)</f><v\s*/?>(</v>)?", rb"<f>\1</f><v>11</v>", parts["xl/worksheets/sheet1.xml"])
        parts["xl/worksheets/sheet1.xml"] = xml
        parts["xl/workbook.xml"] = parts["xl/workbook.xml"].replace(b' fullCalcOnLoad="1"', b"")
        with zipfile.ZipFile(path, "w") as z:
            for name, data in parts.items():
                z.writestr(name, data)
    return path


def measure(read, path: Path, repeats: int) -> tuple[int, float]:
    """(load_workbook calls per read, median CPU seconds per read)."""
    real = openpyxl.load_workbook
    with mock.patch("openpyxl.load_workbook", side_effect=real) as load:
        read(path)
        opens = load.call_count
    times = []
    for _ in range(repeats):
        start = time.process_time()
        read(path)
        times.append(time.process_time() - start)
    return opens, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    from tilpheno.io.manifest import _read_table
    from tilpheno.io.outcomes import read_outcomes

    with tempfile.TemporaryDirectory() as folder:
        for formulas in (False, True):
            path = outcomes_book(Path(folder) / f"o{formulas}.xlsx", args.patients, formulas)
            opens, seconds = measure(read_outcomes, path, args.repeats)
            print(f"outcomes, {args.patients} rows, {'formulas' if formulas else 'values'}: {opens} opens, "
                  f"{seconds:.3f} s CPU per read")
        book = openpyxl.Workbook()
        book.active.append(["file", "product_id", "tube", "role", "fmo_marker"])
        for i in range(args.patients):
            book.active.append([f"f{i}.fcs", f"TIL{i // 9}", "surface", "stain", ""])
        path = Path(folder) / "m.xlsx"
        book.save(path)
        opens, seconds = measure(_read_table, path, args.repeats)
        print(f"manifest table, {args.patients} rows, values: {opens} opens, {seconds:.3f} s CPU per read")


if __name__ == "__main__":
    main()
