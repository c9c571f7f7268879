"""The outcomes reader: good tables in every accepted format, and every bad-table class of issue 6."""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pandas as pd
import pytest

from tilpheno.errors import TableError
from tilpheno.io.outcomes import REQUIRED, read_outcomes, usable_column
from table_support import OUTCOMES_HEADER as HEADER, OUTCOMES_ROWS as ROWS, workbook

def write(tmp_path: Path, rows=ROWS, header=HEADER, name="outcomes.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def error_of(path: Path, covariate: str | None = None) -> str:
    """The one-line error of reading ``path``; or, for an extra ``covariate`` column, the one the analysis
    gives when it uses the column (:func:`usable_column`): reading the table stops at nothing then."""
    table = read_outcomes(path) if covariate is not None else None
    with pytest.raises(TableError) as info:
        read_outcomes(path) if table is None else usable_column(table, covariate)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_good_csv_typed_and_normalised(tmp_path):
    df = read_outcomes(write(tmp_path))
    assert list(df.columns[:8]) == ["patient_id", "product_id", "til_dose_cells", "best_response",
                                    "pfs_months", "pfs_event", "os_months", "os_event"]
    assert df.best_response.tolist() == ["PR", "SD", "CR"]
    assert df.pfs_event.dtype.kind == "i" and df.pfs_months.dtype.kind == "f"
    assert df.age.dtype.kind == "f" and df.sex.tolist() == ["M", "F", "M"]
    assert df.til_dose_cells.iloc[0] == 3e10


@pytest.mark.parametrize("sep,name", [("\t", "o.tsv"), (";", "o.txt")])
def test_tab_and_semicolon_separated(tmp_path, sep, name):
    path = write(tmp_path, [r.replace(",", sep) for r in ROWS], HEADER.replace(",", sep), name)
    assert len(read_outcomes(path)) == 3


def test_semicolon_separated_has_decimal_commas(tmp_path):
    """European Excel writes ';' between cells because ',' is its decimal mark: '11,8' is 11.8, '1,500'
    is 1.5 (not 1500) and a covariate '27,5' is the number 27.5 (not a text category)."""
    rows = [r.replace(",", ";") for r in ROWS]
    rows = [r.replace(".", ",") for r in rows]
    rows[0] = rows[0].replace(";5,5;", ";1,500;").replace(";25;", ";25,5;")
    path = write(tmp_path, rows, HEADER.replace(",", ";"), "o.csv")
    df = read_outcomes(path)
    assert df.pfs_months.tolist() == [1.5, 3.2, 15.0] and df.os_months.tolist() == [12.0, 8.1, 15.0]
    assert df.age.dtype.kind == "f" and df.age.tolist() == [25.5, 31.0, 17.0]
    assert df.til_dose_cells.tolist() == [3e10, 2.1e10, 4.0e10]
    assert read_outcomes(write(tmp_path, [ROWS[0].replace(",5.5,", ',"1,500",'), *ROWS[1:]])).pfs_months[0] == 1500


def _separated(tmp_path, edits: dict, sep: str = "\t") -> Path:
    """ROWS separated by ``sep`` (dots kept) with ``{(row index, column): cell}`` replaced."""
    frame = pd.read_csv(write(tmp_path), dtype=str, keep_default_na=False)
    for (i, column), value in edits.items():
        frame.loc[i, column] = value
    path = tmp_path / ("o.tsv" if sep == "\t" else "o.csv")
    frame.to_csv(path, sep=sep, index=False)
    return path


@pytest.mark.parametrize("edits,column,values", [
    ({(0, "age"): "1.250", (1, "age"): "3,5"}, "age", [1250.0, 17.0]),
    ({(0, "age"): "1.250", (1, "age"): "3.55"}, "age", [1.25, 17.0]),
    ({(0, "til_dose_cells"): "30.000.000.000", (1, "til_dose_cells"): "2,1E+10", (2, "til_dose_cells"): "4.000.000"},
     "til_dose_cells", [3e10, 4e6]),
    ({(0, "age"): "1.250,5"}, "age", [1250.5, 17.0]),
    ({(0, "age"): "1\u00a0250", (1, "age"): "2\u00a0500", (2, "age"): "3\u202f000,5"}, "age", [1250.0, 3000.5]),
    ({(0, "til_dose_cells"): "30\u00a0000\u00a0000\u00a0000", (1, "til_dose_cells"): "1000000",
      (2, "til_dose_cells"): "4000000"}, "til_dose_cells", [3e10, 4e6]),
])
def test_semicolon_separated_thousands_dots(tmp_path, edits, column, values):
    """European Excel writes a number formatted with thousands separators as '1.250' (and
    '30.000.000.000'): in semicolon-separated text '1.250' was silently 1.25, and '1.500.000' or
    '1.250,5' 'not a number' -> the column's other numbers decide, as for a comma in tab text.
    French Excel groups thousands with a no-break space: a covariate so written was a silent
    category, a dose 'not a number' -> numbers."""
    df = read_outcomes(_separated(tmp_path, edits, ";"))
    assert [df[column].iloc[0], df[column].iloc[2]] == values


@pytest.mark.parametrize("sep,edits,expect", [
    (";", {(1, "age"): "1.250"}, "row 3, column 'age': '1.250' is ambiguous in semicolon-separated text: 1250 (a "
                                 "thousands separator) or 1.25 (a decimal point); write 1250 or 1.25"),
    ("\t", {(1, "age"): "1.250"}, "row 3, column 'age': '1.250' is ambiguous in tab-separated text: 1250"),
    (";", {(0, "pfs_months"): "2,5"}, "row 3, column 'pfs_months': '3.2' (a decimal point) and '2,5' (row 2, a "
                                      "decimal comma) in one column"),
])
def test_thousands_dot_refused_when_unsettled(tmp_path, sep, edits, expect):
    """'1.250' in a column of whole numbers was 1.25 in semicolon or tab text (1250 in European
    style) -> refused as ambiguous; a column with both styles is refused."""
    path = _separated(tmp_path, edits, sep)
    msg = error_of(path)
    assert expect in msg, msg


@pytest.mark.parametrize("edits,column,values", [
    ({(0, "pfs_months"): "1,500", (1, "pfs_months"): "3,2"}, "pfs_months", [1.5, 15.0]),
    ({(0, "age"): "25,5", (2, "age"): "1,500"}, "age", [25.5, 1.5]),
    ({(0, "pfs_months"): "1,500", (1, "pfs_months"): "3.2"}, "pfs_months", [1500.0, 15.0]),
    ({(0, "til_dose_cells"): "30,000,000,000", (2, "til_dose_cells"): "4,000,000"}, "til_dose_cells", [3e10, 4e6]),
    ({(0, "age"): "1,250.5"}, "age", [1250.5, 17.0]),
])
def test_tab_separated_comma_decided_by_its_column(tmp_path, edits, column, values):
    """Excel's tab-separated export writes numbers in its locale's style: '1,500' was always 1500,
    though European Excel means 1.5. The column's other numbers decide."""
    df = read_outcomes(_separated(tmp_path, edits))
    assert [df[column].iloc[0], df[column].iloc[2]] == values


@pytest.mark.parametrize("edits,expect", [
    ({(1, "age"): "1,500"}, "row 3, column 'age': '1,500' is ambiguous in tab-separated text: 1500 "
                            "(a thousands separator) or 1.5 (a decimal comma); write 1500 or 1.5"),
    ({(0, "age"): "2,5", (2, "age"): "1,000,000"}, "row 4, column 'age': '1,000,000' (a thousands separator) and "
                                                  "'2,5' (row 2, a decimal comma) in one column"),
])
def test_tab_separated_comma_refused_when_unsettled(tmp_path, edits, expect):
    msg = error_of(_separated(tmp_path, edits))
    assert expect in msg, msg
    path = _separated(tmp_path, edits)   # a title and a blank line above: the rows named were 2 lines short
    path.write_text("Cohort A\n\n" + path.read_text())
    shifted = re.sub(r"row (\d+)", lambda m: f"row {int(m.group(1)) + 2}", expect)
    assert shifted in error_of(path)


def test_excel_unicode_text_is_utf16(tmp_path):
    """Excel's "Unicode Text (*.txt)" is tab-separated UTF-16 with a BOM: it was refused as
    'not a CSV or Excel (.xlsx) file'."""
    path = tmp_path / "export.txt"
    rows = [r.replace(",", "\t").replace("P1", "Pé1") for r in ROWS]
    path.write_bytes("\r\n".join([HEADER.replace(",", "\t"), *rows, ""]).encode("utf-16"))
    df = read_outcomes(path)
    pd.testing.assert_frame_equal(df.drop(columns="patient_id"), read_outcomes(write(tmp_path)).drop(columns="patient_id"))
    assert df.patient_id[0] == "Pé1"


def test_excel_workbook(tmp_path):
    df = read_outcomes(write(tmp_path))
    path = tmp_path / "o.xlsx"
    df.to_excel(path, index=False)
    back = read_outcomes(path)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)


def _formula_workbook(path: Path) -> None:
    """ROWS as a workbook whose sheet 'Patients' has formulas in os_months (G3) and age (I4),
    as openpyxl writes them: no saved values."""
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Patients"
    sheet.append(HEADER.split(","))
    for row in read_outcomes(write(path.parent)).itertuples(index=False):
        sheet.append(list(row))
    sheet["G3"], sheet["I4"] = "=E3*2", '=IF(I2>99,"",I2+1)'
    book.save(path)


def test_excel_formula_without_saved_value(tmp_path):
    """A workbook written by a script holds formulas without results: they were read as empty
    cells ("missing time", or a covariate silently missing) -> refused, naming the sheet's cell."""
    path = tmp_path / "formulas.xlsx"
    _formula_workbook(path)
    msg = error_of(path)
    assert msg.startswith(f"{path}: row 3, column 'os_months': sheet 'Patients' cell G3 holds a formula with no "
                          "saved value"), msg
    assert "save it, or paste the values" in msg


def test_excel_patient_id_shown_with_a_number_format_is_refused(tmp_path):
    """Patient ids typed as numbers in a column formatted '000' show 007 in Excel but hold 7: read
    as '7', they would match no phenotyped product or the wrong patient -> refused with the cell."""
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(HEADER.split(","))
    for i, row in enumerate(ROWS, start=2):
        cells = row.split(",")
        sheet.append([i - 1, *cells[1:]])
        sheet.cell(i, 1).number_format = "000"
    path = tmp_path / "ids.xlsx"
    book.save(path)
    msg = error_of(path)
    assert msg.startswith(f"{path}: row 2, column 'patient_id': sheet 'Sheet' cell A2 is the number 1 shown with "
                          "the format '000', not the id as typed; format the column as Text"), msg


def _saved_results(path: Path, os_value: str, calculated: bool) -> None:
    """``_formula_workbook`` with a saved result ``os_value`` in G3 and an empty text result in I4;
    ``calculated``: as Excel saves a workbook it calculated (no request to recalculate on opening),
    else as xlsxwriter / R's writexl write it (placeholder results, recalculate on opening)."""
    import zipfile

    _formula_workbook(path)
    with zipfile.ZipFile(path) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    xml = parts["xl/worksheets/sheet1.xml"].decode()
    xml = xml.replace("<f>E3*2</f><v></v>", f"<f>E3*2</f><v>{os_value}</v>")
    xml = re.sub(r'<c r="I4"([^>]*)><f>', r'<c r="I4"\1 t="str"><f>', xml)
    assert f"<v>{os_value}</v>" in xml and 't="str"><f>' in xml
    parts["xl/worksheets/sheet1.xml"] = xml.encode()
    book = parts["xl/workbook.xml"].decode()
    assert 'fullCalcOnLoad="1"' in book   # openpyxl asks for it, as xlsxwriter does
    parts["xl/workbook.xml"] = (book.replace(' fullCalcOnLoad="1"', "") if calculated else book).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in parts.items():
            z.writestr(name, data)


def test_excel_formula_with_saved_value(tmp_path):
    """The same formulas once calculated (Excel writes each result in <v>, an empty text result as
    t="str") read as their values."""
    path = tmp_path / "formulas.xlsx"
    _saved_results(path, "6.4", calculated=True)
    df = read_outcomes(path)
    assert df.os_months.tolist() == [12.0, 6.4, 15.0] and df.age.tolist()[:2] == [25.0, 31.0] and pd.isna(df.age[2])


def test_excel_workbook_opened_once_or_twice_with_formulas(tmp_path):
    """Each read opened the workbook four times with openpyxl (values, formulas, values again, ids;
    three without formulas) -> once, and once more for the formulas when a sheet holds one; the
    manifest reader likewise."""
    import openpyxl
    from unittest import mock

    from tilpheno.io.manifest import _read_table

    plain = workbook(tmp_path / "plain.xlsx", {"Sheet": TABLE})
    formulas = tmp_path / "formulas.xlsx"
    _saved_results(formulas, "6.4", calculated=True)
    manifest = workbook(tmp_path / "m.xlsx", {"Sheet": [["file", "product_id", "tube", "role"], ["a.fcs", "P", "s", "stain"]]})
    for read, path, opens in ((read_outcomes, plain, 1), (read_outcomes, formulas, 2), (_read_table, manifest, 1)):
        with mock.patch("openpyxl.load_workbook", side_effect=openpyxl.load_workbook) as load:
            read(path)
        assert load.call_count == opens, (path.name, load.call_count)


def test_excel_formula_with_a_placeholder_result_is_refused(tmp_path):
    """xlsxwriter (and R's writexl, on libxlsxwriter) save 0 as every formula's result and ask Excel to
    recalculate on opening: read as values, os_months was a silent 0 months -> refused, naming the cell."""
    path = tmp_path / "writexl.xlsx"
    _saved_results(path, "0", calculated=False)
    msg = error_of(path)
    assert msg.startswith(f"{path}: row 3, column 'os_months': sheet 'Patients' cell G3 holds a formula whose saved "
                          "value (0) is a placeholder"), msg


def test_excel_date_in_time_column(tmp_path):
    df = read_outcomes(write(tmp_path)).astype({"pfs_months": object})
    df.loc[1, "pfs_months"] = dt.datetime(2020, 3, 1)
    path = tmp_path / "dates.xlsx"
    df.to_excel(path, index=False)
    msg = error_of(path)
    assert "row 3" in msg and "'pfs_months'" in msg and "date" in msg


def test_excel_time_of_day_in_number_columns(tmp_path):
    """A time typed into a cell Excel formats as a time of day (read as datetime.time) said
    "'12:30:00' looks like a date" -> "is a time of day"; in the manifest's dose (read as text
    from a workbook) it was "'12:30:00' is not a number of cells"."""
    import datetime as dt
    import openpyxl

    from tilpheno.io.manifest import COLUMNS, read_manifest
    from design_support import design_file

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(HEADER.split(","))
    for row in ROWS:
        sheet.append(row.split(","))
    sheet["E3"] = dt.time(12, 30)
    sheet["E3"].number_format = "h:mm"
    path = tmp_path / "o.xlsx"
    book.save(path)
    assert error_of(path) == (f"{path}: row 3, column 'pfs_months': '12:30:00' is a time of day (hours:minutes; in "
                              "Excel, a cell formatted as a time), not a number; type the number, and format the column "
                              "as General or Number")
    design_file(tmp_path, "a.fcs", "surface")
    manifest = workbook(tmp_path / "m.xlsx", {"Sheet": [[*COLUMNS, "til_dose_cells"],
                                                        ["a.fcs", "P", "surface", "stain", None, dt.time(9, 15)]]})
    with pytest.raises(TableError, match=r"^\S*m.xlsx: row 2, column 'til_dose_cells': '09:15:00' is a time of day"):
        read_manifest(manifest)
    assert "'7:05 PM' is a time of day" in error_of(write(tmp_path, [ROWS[0].replace(",12.0,", ",7:05 PM,"), *ROWS[1:]]))


@pytest.mark.parametrize("row_index,column,value,expect", [
    (1, "pfs_months", "2019-05-03", "looks like a date"),
    (0, "os_months", "03/05/2019", "looks like a date"),
    (2, "pfs_months", "-1.5", "negative time"),
    (0, "pfs_months", "five", "not a number"),
    (2, "pfs_event", "2", "0 (censored) or 1"),
    (1, "os_event", "maybe", "0 (censored) or 1"),
    (1, "os_event", "dead", "0 (censored) or 1 (event), not 'dead' (also accepted, any case: yes/no"),
    (0, "pfs_event", "Alive", "0 (censored) or 1"),
    (1, "best_response", "MR", "unknown response code"),
    (0, "til_dose_cells", "lots", "not a number"),
    (1, "til_dose_cells", "-5", "'-5' is not a number of cells (not negative)"),
    # a dose in units of 1e9 cells was read, with a note in biomarkers' report only (process --outcomes made
    # every subset dose a billion times too small); refused as the manifest refuses it
    (1, "til_dose_cells", "5.2", "'5.2' is fewer than 1e+06 cells, no TIL dose: given in units of 1e9 cells? "
                                 "Write the number of cells (5.2e+09 for 5.2 x 1e9)"),
    (2, "age", "unknown", "mixed types"),
    (0, "patient_id", "", "missing id"),
])
def test_bad_cell_names_row_and_column(tmp_path, row_index, column, value, expect):
    frame = pd.read_csv(write(tmp_path), dtype=str, keep_default_na=False)
    frame.loc[row_index, column] = value
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    msg = error_of(path, None if column in REQUIRED else column)
    assert f"row {row_index + 2}" in msg, msg
    assert f"column '{column}'" in msg, msg
    assert expect in msg, msg


@pytest.mark.parametrize("column", ["pfs_months", "pfs_event", "os_months", "os_event", "best_response"])
def test_a_blank_time_event_or_response_is_missing(tmp_path, column):
    """A blank PFS or OS time or event, or best response, stopped the whole analysis ('missing time', "event must
    be 0 (censored) or 1 (event), not '(empty)'", "unknown response code '(empty)'"); it is missing (the biomarker
    analysis leaves the patient out of that endpoint's, or the response, analyses, naming them: complete cases).
    The other cells are read as before, and each patient's row in the file is kept for those messages."""
    frame = pd.read_csv(write(tmp_path), dtype=str, keep_default_na=False)
    frame.loc[1, column] = ""
    path = tmp_path / "blank.csv"
    frame.to_csv(path, index=False)
    got, full = read_outcomes(path), read_outcomes(write(tmp_path))
    assert got[column].isna().tolist() == [False, True, False]
    pd.testing.assert_frame_equal(got.drop(columns=column), full.drop(columns=column), check_dtype=False)
    assert got.attrs["file_rows"] == [2, 3, 4]
    if column.endswith("_event"):   # the complete column stays integer
        assert full[column].dtype == int and got[column].tolist()[::2] == full[column].tolist()[::2]


def test_event_words(tmp_path):
    """The accepted event words (any case) keep their coding; "dead"/"alive" are refused by the
    test above with the accepted codes (they used to get "not a number")."""
    rows = [r.replace(",5.5,1,12.0,1,", ",5.5,Yes,12.0,EVENT,") for r in ROWS]
    rows = [r.replace(",3.2,1,8.1,0,", ",3.2,y,8.1,Censored,").replace(",15,0,15,0,", ",15,false,15,NO,") for r in rows]
    df = read_outcomes(write(tmp_path, rows))
    assert df.pfs_event.tolist() == [1, 1, 0] and df.os_event.tolist() == [1, 0, 0]


@pytest.mark.parametrize("column", ["patient_id", "product_id"])
def test_duplicate_ids(tmp_path, column):
    rows = ROWS + [ROWS[1].replace("P2", "P4" if column == "product_id" else "P2")
                   .replace("TIL2", "TIL2" if column == "product_id" else "TIL4")]
    msg = error_of(write(tmp_path, rows))
    assert "duplicate id" in msg and "row 5" in msg and "row 3" in msg and f"'{column}'" in msg


def test_missing_required_columns(tmp_path):
    header = HEADER.replace("os_event,", "").replace(",pfs_event", "")
    rows = [",".join(v for i, v in enumerate(r.split(",")) if i not in (5, 7)) for r in ROWS]
    msg = error_of(write(tmp_path, rows, header))
    assert "row 1" in msg and "pfs_event" in msg and "os_event" in msg and "missing required column" in msg


@pytest.mark.parametrize("header,hint", [
    (HEADER.upper(), "(did you mean 'PATIENT_ID'?)"),
    (HEADER.replace("pfs_event", "PFS_Event"), "missing required column(s): pfs_event (did you mean 'PFS_Event'?)"),
])
def test_missing_column_in_other_case_gets_a_hint(tmp_path, header, hint):
    """Column names are case-sensitive; one written in another case had no "did you mean"."""
    msg = error_of(write(tmp_path, ROWS, header))
    assert hint in msg, msg


def test_empty_and_header_only_and_blank(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert "empty" in error_of(empty)
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n  \n")
    assert "empty" in error_of(blank)
    assert "no rows" in error_of(write(tmp_path, []))


def test_blank_lines_keep_row_numbers(tmp_path):
    rows = [ROWS[0], "", ROWS[1], ROWS[2].replace(",CR,", ",XX,")]
    msg = error_of(write(tmp_path, rows))
    assert "row 5" in msg


def test_mac_roman_text_is_refused_not_misread(tmp_path):
    """A CSV Excel for Mac saved in Mac Roman was read as Windows-1252 without a word: 'Zürich'
    became 'ZŸrich', the id 'Pä2' became 'PŠ2' (matching no product) -> refused naming the cell and
    both readings; Windows-1252 text (é, µ) is still read."""
    from tilpheno.io.manifest import COLUMNS, read_manifest
    from design_support import design_file

    path = tmp_path / "mac.csv"
    path.write_bytes("\n".join([HEADER + ",site", ROWS[0] + ",Zürich", ROWS[1] + ",Genf"]).encode("mac_roman"))
    assert error_of(path) == (f"{path}: row 2, column 'site': 'ZŸrich' in Windows-1252, 'Zürich' in Mac Roman (Excel "
                              "for Mac's CSV): the text is not UTF-8, and which of the two it is cannot be told; save "
                              "the table as 'CSV UTF-8 (Comma delimited)' or .xlsx")
    design_file(tmp_path, "a.fcs", "surface")
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(f"{','.join(COLUMNS)}\na.fcs,Pä2,surface,stain,\n".encode("mac_roman"))
    with pytest.raises(TableError, match=r"m.csv: row 2, column 'product_id': 'PŠ2' in Windows-1252, 'Pä2' in Mac Roman"):
        read_manifest(manifest)
    path.write_bytes("\n".join([HEADER + ",site", ROWS[0] + ",Genève 5 µl", ROWS[1] + ",Zürich"]).encode("cp1252"))
    assert read_outcomes(path)["site"].tolist() == ["Genève 5 µl", "Zürich"]


@pytest.mark.parametrize("site, shown", [("Straße", "Stra§e"), ("Bjørn", "Bj¿rn"), ("Cæsar", "C¾sar")])
def test_mac_roman_letters_above_0xa0_are_refused(tmp_path, site, shown):
    """Mac Roman was told only by its bytes 0x80-0x9F: ß, ø, æ (0xA7, 0xBF, 0xBE) read as the
    Windows-1252 symbols §, ¿, ¾ without a word ('Straße' became the category 'Stra§e'). A symbol
    inside a word that is a letter in Mac Roman is refused as the others are; Windows-1252 symbols
    beside spaces and digits are still read."""
    path = tmp_path / "mac.csv"
    path.write_bytes("\n".join([HEADER + ",site", ROWS[0] + f",{site}", ROWS[1] + ",Genf"]).encode("mac_roman"))
    assert error_of(path).startswith(f"{path}: row 2, column 'site': {shown!r} in Windows-1252, {site!r} in Mac Roman")
    path.write_bytes("\n".join([HEADER + ",site", ROWS[0] + ",Kymriah® 25°C §3", ROWS[1] + ",½ dose"]).encode("cp1252"))
    assert read_outcomes(path)["site"].tolist() == ["Kymriah® 25°C §3", "½ dose"]


def test_id_in_excel_scientific_notation_is_refused(tmp_path):
    """A LIMS number typed into a General cell is shown by Excel as 1.23457E+11, and a CSV saved
    from it keeps only that: the id '1.23457E+11' was read as written and matched no product
    (manifest and outcomes alike) -> refused naming the cell; other ids with an E are kept."""
    from tilpheno.io.manifest import COLUMNS, read_manifest
    from design_support import design_file

    path = write(tmp_path, [ROWS[0], ROWS[1].replace("TIL2", "1.23457E+11")])
    assert error_of(path) == (f"{path}: row 3, column 'product_id': the id '1.23457E+11' is a long number as Excel "
                              "shows it in scientific notation (saved so, its last digits are lost); format the column "
                              "as Text in Excel, type the ids again and save the table again")
    design_file(tmp_path, "a.fcs", "surface")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"{','.join(COLUMNS)}\na.fcs,4.56789E+12,surface,stain,\n")
    with pytest.raises(TableError, match=r"m.csv: row 2, column 'product_id': the id '4.56789E\+12' is a long number"):
        read_manifest(manifest)
    kept = write(tmp_path, [ROWS[0].replace("P1,", "1E5,"), ROWS[1].replace("TIL2", "TIL2E+1")])
    assert read_outcomes(kept)[["patient_id", "product_id"]].values.tolist()[:2] == [["1E5", "TIL1"], ["P2", "TIL2E+1"]]


def test_id_with_a_no_break_space_is_refused(tmp_path):
    """'TIL\u00a01' (a no-break space pasted from Word or a web page) looked like 'TIL 1' but
    matched no product written with an ordinary space: the cohort listed a product without outcomes
    and a patient without a product, both shown as 'TIL 1' -> refused naming the cell; a no-break
    space around an id is stripped as before."""
    from tilpheno.io.manifest import COLUMNS, read_manifest
    from design_support import design_file

    path = write(tmp_path, [ROWS[0].replace("TIL1", "TIL\u00a01"), ROWS[1]])
    assert error_of(path) == (f"{path}: row 2, column 'product_id': the id 'TIL\\xa01' holds a special space (U+00A0 "
                              "NO-BREAK SPACE) after 'TIL', which an id typed with an ordinary space does not match; "
                              "retype the space")
    design_file(tmp_path, "a.fcs", "surface")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"{','.join(COLUMNS)}\na.fcs,TIL\u202f1,surface,stain,\n", encoding="utf-8")
    with pytest.raises(TableError, match=r"m.csv: row 2, column 'product_id': the id .* \(U\+202F NARROW NO-BREAK"):
        read_manifest(manifest)
    stripped = write(tmp_path, [ROWS[0].replace("TIL1", "\u00a0TIL 1\u00a0"), ROWS[1]])
    assert read_outcomes(stripped)["product_id"].tolist()[0] == "TIL 1"


def test_note_under_the_table(tmp_path):
    """A source note typed under the table ('* doses from the LIMS export of 1 March') was refused
    as 'missing id' (outcomes) or 'empty value' (manifest), nothing said of the note -> the
    message names the row's only value as a possible note to delete."""
    from tilpheno.io.manifest import COLUMNS, read_manifest
    from design_support import design_file

    note = "* doses from the LIMS export of 1 March"
    path = write(tmp_path, [*ROWS, "", f'"{note}"'])
    assert error_of(path) == (f"{path}: row 6, column 'product_id': missing id (the row's only value is '{note}' in "
                              "column 'patient_id': a note under the table? Delete it, or fill in the row)")
    design_file(tmp_path, "a.fcs", "surface")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"{','.join(COLUMNS)}\na.fcs,P,surface,stain,\n\"{note}\"\n")
    with pytest.raises(TableError) as info:
        read_manifest(manifest)
    assert str(info.value) == (f"{manifest}: row 3, column 'product_id': empty value (the row's only value is '{note}' "
                               "in column 'file': a note under the table? Delete it, or fill in the row)")


def test_unclosed_quote_swallowing_rows_is_refused(tmp_path):
    """A stray quote opening a CSV cell ('"ok') made every row below it part of that cell: patients
    P2 and P3 (and a manifest's FMO row) were lost without a word -> refused naming the cell; a
    quoted note with line breaks is still read."""
    from tilpheno.io.manifest import COLUMNS, read_manifest
    from design_support import design_file

    path = write(tmp_path, [*[f"{row},x" for row in ROWS[:1]], *[f"{row},fine" for row in ROWS[1:]]],
                 header=HEADER + ",note")
    path.write_text(path.read_text().replace(",x", ',"ok', 1))
    assert error_of(path) == (f"{path}: row 2, column 'note': the cell runs over 3 lines, 2 of them like rows of the "
                              f"table ('{ROWS[1]},fine'): a quote (\") opens the cell and is not closed where it ends, "
                              "so the rows below would be lost; remove the stray quote, or close it")
    design_file(tmp_path, "a.fcs", "surface")
    design_file(tmp_path, "b.fcs", "surface", omit="PD1")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f'{",".join(COLUMNS)},comment\na.fcs,P,surface,stain,,"ok\nb.fcs,P,surface,fmo,PD1,\n')
    with pytest.raises(TableError, match=r"m.csv: row 2, column 'comment': the cell runs over 2 lines, 1 of them like"):
        read_manifest(manifest)
    noted = write(tmp_path, [f'{ROWS[0]},"seen twice,\nsee chart, p. 2"', f"{ROWS[1]},", f"{ROWS[2]},"],
                  header=HEADER + ",note")
    assert read_outcomes(noted)["note"].tolist()[0] == "seen twice,\nsee chart, p. 2"


def test_cell_with_a_line_break_gives_a_one_line_error(tmp_path):
    """A response typed with Alt+Enter ('PR' + line break + '(confirmed)', quoted in the CSV) gave
    a two-line message quoting the cell -> one line, the break shown as \\n."""
    path = write(tmp_path, [ROWS[0].replace(",PR,", ',"PR\n(confirmed)",'), *ROWS[1:]])
    assert error_of(path) == (f"{path}: row 2, column 'best_response': unknown response code 'PR\\n(confirmed)'; "
                              "expected one of CR, PR, SD, PD, NE")


def test_manifest_and_outcomes_name_a_row_alike(tmp_path):
    """The manifest named a row ``row N (line L)`` (N counted from the header), the outcomes table
    ``row L``: the fifth line of both files, under a title and a blank line, is now ``row 5`` in
    both, the number Excel or an editor shows."""
    from tilpheno.io.manifest import COLUMNS, read_manifest
    from table_support import write_rows
    from design_support import design_file

    design_file(tmp_path, "a.fcs", "surface")
    design_file(tmp_path, "b.fcs", "surface", omit="PD1")
    manifest = write_rows(tmp_path / "m.csv", [["Manifest of block 7"], [], list(COLUMNS),
                                               ["a.fcs", "P", "surface", "stain", ""], ["b.fcs", "P", "surface", "fm0", ""]])
    outcomes = write(tmp_path, ["P1,TIL1,3e10,PR,5.5,1,12.0,1,25,M", "P2,TIL2,2.1e10,XX,3.2,1,8.1,0,31,F"],
                     header="Outcomes of block 7\n\n" + HEADER)
    with pytest.raises(TableError) as info:
        read_manifest(manifest)
    assert str(info.value).startswith(f"{manifest}: row 5, column 'role': ")
    assert error_of(outcomes).startswith(f"{outcomes}: row 5, column 'best_response': ")


@pytest.mark.parametrize("last, column, label", [
    (",Total,9.3e10,,,,,,,", "patient_id", "'Total' in column 'product_id'"),
    ("Sum:,,9.3e10,,,,,,,", "product_id", "'Sum:' in column 'patient_id'"),
    ("Mean,,3.1e10,,7.9,,11.7,,24.3,", "product_id", "'Mean' in column 'patient_id'")])
def test_total_row_under_the_table(tmp_path, last, column, label):
    """A total (or mean) row a lab adds under the table was refused as 'missing id' -> the message
    says the row looks like a total row and to delete it."""
    msg = error_of(write(tmp_path, [*ROWS, last]))
    assert msg.startswith(f"{tmp_path / 'outcomes.csv'}: row 5, column '{column}': {label}: this looks like a total "
                          "or summary row under the table, not a patient; delete it"), msg
    assert "missing id" in error_of(write(tmp_path, [*ROWS, ",TIL9,3e10,PR,5.5,1,12.0,1,25,M"]))


@pytest.mark.parametrize("content,name", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64), "image.csv"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64), "old.xls"),
    (b"PK\x03\x04 not really a workbook", "fake.xlsx"),
])
def test_not_csv_or_excel(tmp_path, content, name):
    path = tmp_path / name
    path.write_bytes(content)
    msg = error_of(path)
    assert re.search(r"not a (CSV|readable Excel)", msg), msg


def test_directory_and_missing_file(tmp_path):
    assert "not a file" in error_of(tmp_path)
    assert error_of(tmp_path / "nope.csv") == f"{tmp_path / 'nope.csv'}: no such file"


def test_mixed_types_in_covariate_reports_the_odd_cell(tmp_path):
    rows = [r.replace(",M", ",1") for r in ROWS]
    rows[1] = rows[1].replace(",F", ",female")
    msg = error_of(write(tmp_path, rows), "sex")
    assert "row 3" in msg and "'sex'" in msg and "mixed types" in msg


def test_response_codes_case_insensitive_and_ne_kept(tmp_path):
    rows = [ROWS[0].replace(",PR,", ",pr,"), ROWS[1].replace(",sd,", ",NE,"), ROWS[2]]
    assert read_outcomes(write(tmp_path, rows)).best_response.tolist() == ["PR", "NE", "CR"]


@pytest.mark.parametrize("cells,expect", [
    (("2023-03-01", "", ""), "row 2, column 'response_months': '2023-03-01' looks like a date; expected a number"),
    (("-1", "", ""), "row 2, column 'response_months': negative time -1"),
])
def test_response_months_must_be_months(tmp_path, cells, expect):
    """Response dates in response_months were read as a text covariate: the landmark analysis turned
    every responder into a non-responder ('one group empty') and the time-dependent Cox was lost, with no
    word about the column."""
    rows = [f"{r},{c}" for r, c in zip(ROWS, cells)]
    assert expect in error_of(write(tmp_path, rows, HEADER + ",response_months"))


def test_response_months_blank_without_response(tmp_path):
    rows = [f"{r},{c}" for r, c in zip(ROWS, ("2.5", "", "NA"))]
    got = read_outcomes(write(tmp_path, rows, HEADER + ",response_months")).response_months
    assert got.iloc[0] == 2.5 and got.iloc[1:].isna().all() and got.dtype == float


def _typed(row: str) -> list:
    """One of ROWS as Excel stores it (numbers as numbers)."""
    cells = row.split(",")
    return [*cells[:2], float(cells[2]), cells[3], *map(float, cells[4:9]), cells[9]]


TABLE = [HEADER.split(","), *map(_typed, ROWS)]


def test_title_and_blank_lines_above_the_header(tmp_path):
    """A title line (and a blank line) above the header: the CSV was 'not a valid CSV table (Error
    tokenizing data ...)', the .xlsx 'row 1: missing required column(s) ... (found: Outcomes 2026,
    Unnamed: 1, ...)' -> the header is found by the required columns; rows are still named by the
    file's line / sheet row."""
    truth = read_outcomes(write(tmp_path))
    title = write(tmp_path, ["", HEADER, *ROWS], "Outcomes 2026 (cohort A)", "title.csv")
    titled = (tmp_path / "title.csv").read_text().replace("\n\n", "\n\n\n", 1)
    title.write_text(titled)
    pd.testing.assert_frame_equal(read_outcomes(title), truth)
    book = workbook(tmp_path / "title.xlsx", {"Patients": [["Outcomes 2026"], [], *TABLE]})
    pd.testing.assert_frame_equal(read_outcomes(book), truth, check_dtype=False)
    title.write_text(titled.replace(",CR,", ",XX,"))
    assert error_of(title).startswith(f"{title}: row 7, column 'best_response': unknown response code 'XX'")


def test_table_on_a_later_sheet(tmp_path):
    """The table on sheet 2 behind an instructions sheet was 'the table has no rows' -> the sheet
    holding the table is read, its workbook checks (ids shown otherwise than stored) look at that
    sheet below its header; two sheets holding a table are refused."""
    truth = read_outcomes(write(tmp_path))
    notes = [["Fill in one row per patient on the sheet 'Patients'"], ["best_response: CR, PR, SD, PD or NE"]]
    book = workbook(tmp_path / "o.xlsx", {"Read me": notes, "Patients": [["Cohort A"], *TABLE]})
    pd.testing.assert_frame_equal(read_outcomes(book), truth, check_dtype=False)
    import openpyxl

    edited = openpyxl.load_workbook(book)
    edited["Patients"]["A4"].value, edited["Patients"]["A4"].number_format = 7, "000"
    edited.save(book)
    assert error_of(book).startswith(f"{book}: row 4, column 'patient_id': sheet 'Patients' cell A4 is the number 7 "
                                     "shown with the format '000'")
    two = workbook(tmp_path / "two.xlsx", {"Cohort A": TABLE, "Cohort B": TABLE})
    assert "sheets 'Cohort A', 'Cohort B' each hold an outcomes table" in error_of(two)


def test_merged_cells_read_as_excel_shows_them(tmp_path):
    """A covariate merged down over patients' rows ('M' for rows 2-4) was read as 'M' then two empty
    cells -> every row reads the merged value, as Excel shows it."""
    rows = [row.replace(",F", ",M") for row in ROWS]
    truth = read_outcomes(write(tmp_path, rows))
    merged = [TABLE[0], *[_typed(row)[:9] + ([row.split(",")[9]] if i == 0 else [None]) for i, row in enumerate(rows)]]
    book = workbook(tmp_path / "m.xlsx", {"Sheet": merged}, {"Sheet": ["J2:J4"]})
    pd.testing.assert_frame_equal(read_outcomes(book), truth, check_dtype=False)
    assert read_outcomes(book).sex.tolist() == ["M", "M", "M"]


@pytest.mark.parametrize("name", ["o.csv", "o.xlsx"])
def test_column_named_twice_is_refused(tmp_path, name):
    """Two 'os_months' columns: the second was silently renamed 'os_months.1' (a covariate) and the
    first used -> refused naming both columns."""
    header, rows = f"{HEADER},os_months", [f"{row},99" for row in ROWS]
    path = write(tmp_path, rows, header, name)
    if name.endswith(".xlsx"):
        path = workbook(path, {"Sheet": [header.split(","), *[[*_typed(row), 99.0] for row in ROWS]]})
    assert error_of(path).startswith(f"{path}: row 1: column 'os_months' appears twice (columns G and K)")


@pytest.mark.parametrize("name", ["o.csv", "o.xlsx"])
def test_column_named_twice_in_another_case_is_refused(tmp_path, name):
    """'os_months' and 'OS_months': the second was a covariate beside the first, and an analysis
    used one of two different survival times without a word -> refused naming both columns."""
    header, rows = f"{HEADER},OS_months", [f"{row},99" for row in ROWS]
    path = write(tmp_path, rows, header, name)
    if name.endswith(".xlsx"):
        path = workbook(path, {"Sheet": [header.split(","), *[[*_typed(row), 99.0] for row in ROWS]]})
    assert error_of(path).startswith(f"{path}: row 1: column 'os_months' appears twice (columns G 'os_months' and "
                                     "K 'OS_months'); keep one, or rename the other")


def test_csv_row_longer_than_its_header_is_refused(tmp_path):
    """An unquoted comma in a cell gave the first row one cell more than the header: pandas took its
    patient id as the row label and shifted every cell ('unknown response code '5.5'') -> refused."""
    path = write(tmp_path, [ROWS[0].replace(",M", ",M, Smith"), *ROWS[1:]])
    assert error_of(path).startswith(f"{path}: row 2: 11 cells, the header names 10 columns")


def test_windows_1252_csv(tmp_path):
    """Excel on Windows saves 'CSV (Comma delimited)' in cp1252 ('é', the title's '–'): read as
    written. Bytes that are not cp1252 either (0x81, another encoding) were silently read as '\ufffd'
    (an id matching nothing) -> refused saying to save as CSV UTF-8, naming the cell (the manifest
    reader's rule and message). A table pasted together from a UTF-8 and a cp1252 file: the whole
    file was read as cp1252, the UTF-8 'é' of 'Pé2' silently the id 'PÃ©2' -> each cell's bytes."""
    text = "\n".join(["Suivi – été 2026", HEADER, *[row.replace("P1", "Pé1") for row in ROWS]]) + "\n"
    path = tmp_path / "o.csv"
    path.write_bytes(text.encode("cp1252"))
    assert read_outcomes(path).patient_id.tolist() == ["Pé1", "P2", "P3"]
    path.write_bytes(text.encode("cp1252").replace(b"P\xe91", b"P\x811"))
    assert error_of(path).startswith(f"{path}: row 3, column 'patient_id': byte 0x81 is neither UTF-8 nor "
                                     "Windows-1252 text; save the table as 'CSV UTF-8 (Comma delimited)' or .xlsx")
    path.write_bytes(text.encode("cp1252").replace(b"P2,", "Pé2,".encode("utf-8")))
    assert read_outcomes(path).patient_id.tolist() == ["Pé1", "Pé2", "P3"]


def test_old_xls_workbook_says_to_save_as_xlsx(tmp_path):
    path = tmp_path / "o.xls"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64))
    assert "old Excel .xls workbooks are not read; save it as .xlsx or CSV UTF-8" in error_of(path)


def test_cells_beside_the_table(tmp_path):
    """Excel pads every row of a CSV to its widest (a trailing ',' on the header): the empty
    column was kept as a covariate 'Unnamed: 10' -> ignored. A note typed beside the table
    (column K, no header) was a covariate too -> refused naming the cell, in a CSV and a workbook."""
    truth = read_outcomes(write(tmp_path))
    padded = write(tmp_path, [f"{row}," for row in ROWS], f"{HEADER},", "padded.csv")
    pd.testing.assert_frame_equal(read_outcomes(padded), truth)
    noted = write(tmp_path, [f"{ROWS[0]},", f"{ROWS[1]},checked MM", f"{ROWS[2]},"], f"{HEADER},", "noted.csv")
    assert error_of(noted).startswith(f"{noted}: row 3, column K: 'checked MM' lies in a column without a header; "
                                      "name the column in the header row, or delete the cell")
    book = workbook(tmp_path / "noted.xlsx", {"Sheet": [TABLE[0], TABLE[1], [*TABLE[2], "checked MM"], TABLE[3]]})
    assert error_of(book).startswith(f"{book}: row 3, column K: 'checked MM' lies in a column without a header")


def test_excel_error_values_are_refused(tmp_path):
    """A failed formula's error value (#N/A from a lookup that found nothing, #DIV/0!) read as the
    text '#N/A': a category of 'sex' beside M and F -> refused naming the cell, in a workbook (an
    error cell) and a CSV Excel saved from it."""
    import openpyxl

    book = workbook(tmp_path / "o.xlsx", {"Sheet": TABLE})
    edited = openpyxl.load_workbook(book)
    edited["Sheet"]["J3"].value = "#N/A"
    edited["Sheet"]["J3"].data_type = "e"
    edited.save(book)
    assert error_of(book).startswith(f"{book}: row 3, column 'sex': #N/A is an Excel error value (a formula that "
                                     "failed, such as a lookup that found nothing), not a value")
    path = write(tmp_path, [ROWS[0], ROWS[1], ROWS[2].replace(",M", ",#DIV/0!")])
    assert error_of(path).startswith(f"{path}: row 4, column 'sex': #DIV/0! is an Excel error value")


def test_cell_with_a_line_break_names_the_line_its_row_starts_on(tmp_path):
    """A quoted comment holding a line break (Alt+Enter in Excel) makes its record span two lines:
    an error in that row named the record's last line (row 3, where the comment ends) -> the line
    the row starts on, as a text editor shows it; later rows keep their lines."""
    rows = [ROWS[0].replace(",PR,", ",XX,") + ',"relapse\nat 5 months"', f"{ROWS[1]},", f"{ROWS[2]},"]
    path = write(tmp_path, rows, f"{HEADER},comment")
    assert error_of(path).startswith(f"{path}: row 2, column 'best_response': unknown response code 'XX'")
    rows = [ROWS[0] + ',"relapse\nat 5 months"', f"{ROWS[1]},", ROWS[2].replace(",CR,", ",XX,") + ","]
    path = write(tmp_path, rows, f"{HEADER},comment")
    assert error_of(path).startswith(f"{path}: row 5, column 'best_response': unknown response code 'XX'")


def test_hidden_rows_and_sheets(tmp_path):
    """A patient's row hidden in Excel (by hand, or filtered out to leave the patient out) was read
    with the others without a word -> refused naming the row. Two sheets holding a table were
    refused by title only, though Excel shows one of them -> the hidden one is marked so."""
    import openpyxl

    book = workbook(tmp_path / "o.xlsx", {"Patients": TABLE})
    edited = openpyxl.load_workbook(book)
    edited["Patients"].row_dimensions[3].hidden = True
    edited.save(book)
    assert error_of(book).startswith(f"{book}: row 3, column 'patient_id': sheet 'Patients' row 3 is hidden in Excel "
                                     "(by hand or by a filter); unhide it, or delete it if it is not part of the table")
    two = workbook(tmp_path / "two.xlsx", {"Old": TABLE, "Patients": TABLE})
    edited = openpyxl.load_workbook(two)
    edited["Old"].sheet_state = "hidden"
    edited.save(two)
    assert "sheets 'Old' (hidden), 'Patients' each hold an outcomes table" in error_of(two)


def test_hidden_column(tmp_path):
    """A helper column hidden in Excel (in a collapsed group of columns K-L) was read as a covariate
    without a word -> refused naming it."""
    import openpyxl

    rows = [[*TABLE[0], "helper"], *[[*row, i] for i, row in enumerate(TABLE[1:])]]
    book = workbook(tmp_path / "o.xlsx", {"Patients": rows})
    edited = openpyxl.load_workbook(book)
    edited["Patients"].column_dimensions.group("K", "L", hidden=True)
    edited.save(book)
    assert error_of(book).startswith(f"{book}: row 2, column 'helper': sheet 'Patients' column K ('helper') is hidden "
                                     "in Excel; unhide it, or delete it if it is not part of the table")


def test_covariate_numbers_in_another_style(tmp_path):
    """A covariate number written '1,250' (comma CSV, thousands) was text ('mixed types' beside
    '17'; a category when all were so written), though in os_months it is 1250 -> a number. Ages
    typed '27,5' into an English Excel (stored as text) or percentages '40%' in a CSV were a
    category each, silently (or 'mixed types: 31 is a number', naming the wrong cell) -> refused
    naming the cell."""
    rows = [ROWS[0].replace(",25,", ',"1,250",'), ROWS[1].replace(",31,", ',"2,500",'), ROWS[2]]
    assert read_outcomes(write(tmp_path, rows)).age.tolist() == [1250.0, 2500.0, 17.0]
    book = workbook(tmp_path / "o.xlsx", {"Sheet": [TABLE[0], *[[*row[:8], age, row[9]] for row, age in
                                                             zip(TABLE[1:], ("27,5", "31,0", "17,25"))]]})
    assert error_of(book, "age").startswith(f"{book}: row 2, column 'age': '27,5' is a number written with a decimal comma, "
                                     "a percent sign or spaces, read as text; write it with a decimal point")
    book = workbook(tmp_path / "o.xlsx", {"Sheet": [TABLE[0], *[[*row[:8], age, row[9]] for row, age in
                                                             zip(TABLE[1:], (27.5, "31,5", 17))]]})
    assert error_of(book, "age").startswith(f"{book}: row 3, column 'age': '31,5' is a number written with")   # not 'mixed'
    rows = [ROWS[0].replace(",25,", ",40%,"), ROWS[1].replace(",31,", ",35 %,"), ROWS[2].replace(",17,", ",20%,")]
    assert error_of(write(tmp_path, rows), "age").startswith(f"{tmp_path / 'outcomes.csv'}: row 2, column 'age': "
                                                             "'40%' is a number written with")
    rows = [ROWS[0].replace(",25,", ",1\u00a0250,"), ROWS[1].replace(",31,", ",2\u00a0500,"), ROWS[2]]
    assert error_of(write(tmp_path, rows), "age").startswith(f"{tmp_path / 'outcomes.csv'}: row 2, column 'age': "
                                                             "'1\u00a0250' is a number written with")


@pytest.mark.parametrize("column", ["os_months", "pfs_months", "age"])
def test_excel_duration_cell_is_named_a_duration(tmp_path, column):
    """'12:30' typed into a cell formatted as a duration ([h]:mm:ss) is stored as a fraction of a
    day and read as a time delta: in a survival-time column it was "'12:30:00' is not a number",
    in a covariate a category '12:30:00' -> refused as an Excel duration, naming the cell."""
    import openpyxl

    book = workbook(tmp_path / "o.xlsx", {"Patients": TABLE})
    edited = openpyxl.load_workbook(book)
    sheet = edited["Patients"]
    letter = next(cell.column_letter for cell in sheet[1] if cell.value == column)
    sheet[f"{letter}3"] = dt.timedelta(hours=12, minutes=30)
    edited.save(book)
    assert openpyxl.load_workbook(book)["Patients"][f"{letter}3"].number_format == "[hh]:mm:ss"
    assert error_of(book, None if column in REQUIRED else column).startswith(
        f"{book}: row 3, column '{column}': '12:30:00' is an Excel duration "
        "(hours:minutes:seconds; a time typed into a cell formatted as a duration), not a number")


@pytest.mark.parametrize("name", ["os_months\u200b", "os_\ufeffmonths", "\u00a0os_months\u00a0", "\u200eos_months"])
@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_invisible_characters_in_a_header_are_removed(tmp_path, name, suffix):
    """A header cell pasted with an invisible character (a zero-width space after it, a byte order
    mark inside it, a direction mark before it) was 'missing required column(s): os_months (did you
    mean 'os_months'?)' -> the column is os_months, read as the same table without them."""
    plain = read_outcomes(write(tmp_path))
    rows = [[name if cell == "os_months" else cell for cell in TABLE[0]], *TABLE[1:]]
    path = (workbook(tmp_path / "o.xlsx", {"Patients": rows}) if suffix == ".xlsx"
            else write(tmp_path, header=HEADER.replace("os_months", name), name="o.csv"))
    pd.testing.assert_frame_equal(read_outcomes(path), plain, check_dtype=False)


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_invisible_character_in_an_id_is_refused(tmp_path, suffix):
    """An id pasted with a zero-width space ('TIL2' + U+200B) was read as another id than 'TIL2'
    (shown alike, matching no product) -> refused naming the cell and the character."""
    rows = [TABLE[0], TABLE[1], ["P2", "TIL2\u200b", *TABLE[2][2:]], TABLE[3]]
    path = (workbook(tmp_path / "o.xlsx", {"Patients": rows}) if suffix == ".xlsx"
            else write(tmp_path, [",".join(map(str, row)) for row in rows[1:]], name="o.csv"))
    assert error_of(path) == (f"{path}: row 3, column 'product_id': the id 'TIL2' holds an invisible character "
                              "(U+200B ZERO WIDTH SPACE) after 'TIL2'; retype the id, or delete the character")
