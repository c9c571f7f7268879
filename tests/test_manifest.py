"""Folder scan (manifest inference), manifest validation, and the `tilpheno scan` command."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tilpheno.cli import app
from tilpheno.errors import TableError
from tilpheno.io.manifest import COLUMNS, read_manifest, scan_folder
from malformed_fcs import float_file
from design_support import LAYOUT, design_file
from table_support import workbook, write_rows

SAMPLE = Path(__file__).parent.parent / "sample_fcs"

# (file name, $SRC, TUBE NAME, tube kind, omitted marker) -> expected (product, tube, role, fmo_marker)
PRODUCT_TUBES = [
    ("surface", None, "Surface stain", "stain"),
    ("surface", "PD1", "FMO PD1", "fmo"),
    ("surface", "CD8", "FMO CD8", "fmo"),
    ("treg", None, "Treg stain", "stain"),
    ("treg", "FoxP3", "FMO FoxP3", "fmo"),
]


def _rows(frame: pd.DataFrame) -> set[tuple]:
    return {(Path(f).name, p, t, r, m) for f, p, t, r, m in frame[list(COLUMNS)].itertuples(index=False)}


def _unstained(folder: Path, name: str, keywords) -> None:
    """The design layout with no $PnS at all."""
    (folder / name).write_bytes(float_file(np.ones((3, len(LAYOUT))), channels=tuple(LAYOUT), extra=keywords))


def test_design_names(tmp_path):
    expected = set()
    for product in ("TIL001", "TIL002"):
        for tube, omit, tube_name, role in PRODUCT_TUBES:
            name = f"{product}_{tube}_{'stain' if role == 'stain' else 'FMO_' + omit}.fcs"
            design_file(tmp_path, name, tube, omit=omit, keywords={"$SRC": product, "TUBE NAME": tube_name})
            expected.add((name, product, tube, role, omit or ""))
        _unstained(tmp_path, f"{product}_unstained.fcs", {"$SRC": product, "TUBE NAME": "Unstained"})
        expected.add((f"{product}_unstained.fcs", product, "unstained", "unstained", ""))
    frame = scan_folder(tmp_path)
    assert _rows(frame) == expected
    assert (frame["problem"] == "").all()


def test_facsdiva_names_use_src_and_tube_name(tmp_path):
    expected = set()
    for p, product in enumerate(("Patient A-17", "Patient B-02"), 1):
        folder = tmp_path / f"Experiment_{p}"
        folder.mkdir()
        for i, (tube, omit, tube_name, role) in enumerate(PRODUCT_TUBES, 1):
            name = f"Specimen_00{p}_{tube_name}_00{i}.fcs"
            design_file(folder, name, tube, omit=omit, keywords={"$SRC": product, "TUBE NAME": tube_name, "$FIL": name})
            expected.add((name, product, tube, role, omit or ""))
        _unstained(folder, f"Specimen_00{p}_Unstained_009.fcs", {"$SRC": product, "TUBE NAME": "Unstained"})
        expected.add((f"Specimen_00{p}_Unstained_009.fcs", product, "unstained", "unstained", ""))
    assert _rows(scan_folder(tmp_path)) == expected


def test_one_specimen_name_in_two_experiments_is_two_products(tmp_path):
    """FACSDiva specimen names repeat across experiments (its default Specimen_001, a lab's 'Donor'):
    the FlowAtlas donors 423 and 428 ($SRC 'Donor' both) were one product 'Donor' with two stained
    files, and three experiments' Specimen_001 one product whose FMOs gated each other's stains;
    'donor' beside 'Donor' made new-study's manifest refused by process -> each experiment's
    specimen is its own product, '<$SRC> (<EXPERIMENT NAME>)', its FMO with its stain; a product
    whose tube kinds were acquired in two experiments stays one."""
    import shutil

    realdata = Path(__file__).parent / "data" / "realdata_flowatlas"
    for name in ("423_Donor_Lung_032.fcs", "428_Donor_Lung_029.fcs"):
        shutil.copy(realdata / "fcs" / name, tmp_path / name)
    experiments = pd.read_csv(realdata / "fcs_manifest.csv").set_index("file")["EXPERIMENT NAME"]
    expected = set()
    for name in ("423_Donor_Lung_032.fcs", "428_Donor_Lung_029.fcs"):
        # 'surface': of the TIL tubes' markers they carry CD3, CD4, CD8, PD-1; their FoxP3 detector is
        # labelled 'Foxp3-IgM' (shared by two stains), which names no marker
        expected.add((name, f"Donor ({experiments['fcs/' + name]})", "surface", "stain", ""))
    for specimen, experiment in (("Specimen_001", "panel A"), ("Specimen_001", "panel B"), ("specimen_001", "panel C")):
        for tube, omit, tube_name, role in PRODUCT_TUBES[:2]:
            name = f"{experiment} {tube_name}.fcs"
            design_file(tmp_path, name, tube, omit=omit,
                        keywords={"$SRC": specimen, "TUBE NAME": tube_name, "EXPERIMENT NAME": experiment})
            expected.add((name, f"{specimen} ({experiment})", tube, role, omit or ""))
    for tube, omit, tube_name, role in PRODUCT_TUBES:   # one product's tubes acquired on two days: one product
        name = f"TIL009 {tube_name}.fcs"
        design_file(tmp_path, name, tube, omit=omit,
                    keywords={"$SRC": "TIL009", "TUBE NAME": tube_name, "EXPERIMENT NAME": f"{tube} day"})
        expected.add((name, "TIL009", tube, role, omit or ""))
    scanned = scan_folder(tmp_path)
    assert _rows(scanned) == expected
    scanned.to_csv(tmp_path / "manifest.csv", index=False)
    assert len(read_manifest(tmp_path / "manifest.csv", base=tmp_path)) == len(expected)


def test_fmo_marker_from_missing_label_and_unstained_from_no_labels(tmp_path):
    """Names that say only 'FMO' (no marker) and nothing about staining; products from folders."""
    folder = tmp_path / "TIL042"
    folder.mkdir()
    design_file(folder, "tube_1.fcs", "surface")
    design_file(folder, "tube_2_FMO.fcs", "surface", omit="CD56")
    design_file(folder, "tube_3.fcs", "treg")
    design_file(folder, "tube_4 FMO.fcs", "treg", omit="FoxP3")
    _unstained(folder, "tube_5.fcs", {})
    assert _rows(scan_folder(tmp_path)) == {
        ("tube_1.fcs", "TIL042", "surface", "stain", ""),
        ("tube_2_FMO.fcs", "TIL042", "surface", "fmo", "CD56"),
        ("tube_3.fcs", "TIL042", "treg", "stain", ""),
        ("tube_4 FMO.fcs", "TIL042", "treg", "fmo", "FoxP3"),
        ("tube_5.fcs", "TIL042", "unstained", "unstained", ""),
    }


def test_unst_abbreviation_names_an_unstained_control(tmp_path):
    """FlowJo/FACSDiva exports name unstained controls 'unst' ('390C__390C_unst_022'); one exported
    with the stained tube's $PnS labels was taken as a second stained tube of the product."""
    design_file(tmp_path, "P1_surface_stain.fcs", "surface", keywords={"$SRC": "P1"})
    design_file(tmp_path, "P1__P1_unst_022.fcs", "surface", keywords={"$SRC": "P1", "TUBE NAME": "unst"})
    roles = {Path(f).name: r for f, r in zip(scan_folder(tmp_path)["file"], scan_folder(tmp_path)["role"])}
    assert roles == {"P1_surface_stain.fcs": "stain", "P1__P1_unst_022.fcs": "unstained"}


def test_unreadable_files_are_reported_not_fatal(tmp_path):
    design_file(tmp_path, "TIL001_surface_stain.fcs", "surface", keywords={"$SRC": "TIL001"})
    (tmp_path / "TIL001_surface_FMO_PD1.fcs").write_bytes(b"FCS3.1 garbage")
    (tmp_path / "TIL001_treg_stain.fcs").mkdir()
    (tmp_path / "notes.txt").write_text("not an FCS file")
    frame = scan_folder(tmp_path).set_index("file")
    bad = frame.loc[str(tmp_path / "TIL001_surface_FMO_PD1.fcs")]
    assert (bad.product_id, bad.tube, bad.role, bad.fmo_marker) == ("TIL001", "surface", "fmo", "PD1")
    assert "file too short" in bad.problem
    assert "is a directory" in frame.loc[str(tmp_path / "TIL001_treg_stain.fcs")].problem
    assert frame.loc[str(tmp_path / "TIL001_surface_stain.fcs")].problem == ""
    assert len(frame) == 3


@pytest.mark.skipif(not (SAMPLE / "manifest.csv").is_file(), reason="bundled sample_fcs not present")
def test_scan_of_bundled_sample_matches_its_manifest():
    truth = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
    assert _rows(scan_folder(SAMPLE)) == _rows(truth)


@pytest.fixture
def files(tmp_path):
    design_file(tmp_path, "a.fcs", "surface")
    design_file(tmp_path, "b.fcs", "surface", omit="PD1")
    return tmp_path


def test_read_manifest_valid(files):
    path = write_rows(files / "m.csv", [list(COLUMNS), ["a.fcs", "007", "surface", "stain", ""], ["b.fcs", "007", "surface", "fmo", "PD-1"]])
    frame = read_manifest(path)
    assert list(frame["product_id"]) == ["007", "007"]  # ids stay text
    assert list(frame["fmo_marker"]) == ["", "PD1"]
    no_marker_column = write_rows(files / "m2.csv", [["file", "product_id", "tube", "role"], ["a.fcs", "P", "surface", "stain"]])
    assert list(read_manifest(no_marker_column)["fmo_marker"]) == [""]
    excel_csv = files / "excel.csv"  # UTF-8 BOM, CRLF, capitalised header
    excel_csv.write_bytes("\ufeffFile,Product_ID,Tube,Role,FMO_marker\r\na.fcs,P9,surface,stain,\r\n".encode("utf-8"))
    assert read_manifest(excel_csv)[list(COLUMNS)].values.tolist() == [["a.fcs", "P9", "surface", "stain", ""]]
    xlsx = files / "m.xlsx"
    pd.read_csv(path, dtype=str, keep_default_na=False).to_excel(xlsx, index=False)
    assert read_manifest(xlsx)["fmo_marker"].tolist() == ["", "PD1"]


@pytest.mark.parametrize(
    "rows, match",
    [
        ([["file", "product_id", "role"], ["a.fcs", "P", "stain"]], "missing column\\(s\\) 'tube'"),
        ([list(COLUMNS), ["a.fcs", "P", "surface", "stained", ""]], "row 2, column 'role': unknown role 'stained'"),
        ([list(COLUMNS), ["a.fcs", "P", "surface", "stain", ""], ["zz.fcs", "P", "surface", "stain", ""]],
         "row 3, column 'file': 'zz.fcs' does not exist"),
        ([list(COLUMNS), ["a.fcs", "", "surface", "stain", ""]], "row 2, column 'product_id': empty"),
        ([list(COLUMNS), ["b.fcs", "P", "surface", "fmo", "FITC"]], "column 'fmo_marker': FMO row needs a marker name"),
        ([list(COLUMNS), ["a.fcs", "P", "surface", "stain", "CD3"]], "column 'fmo_marker': 'CD3' given for a row of role stain"),
        ([list(COLUMNS), ["a.fcs", "P", "surface", "stain", ""], ["./a.fcs", "P", "surface", "stain", ""]],
         "row 3, column 'file': './a.fcs' already listed in row 2$"),
        # one FMO file listed for two products (an FMO shared between products): refused, saying why
        ([list(COLUMNS), ["a.fcs", "P", "surface", "stain", ""], ["b.fcs", "P", "surface", "fmo", "PD1"],
          ["b.fcs", "Q", "surface", "fmo", "PD1"]],
         "row 4, column 'file': 'b.fcs' already listed in row 3 for product 'P': a file is one product's .*; "
         "list it for one product only"),
        ([list(COLUMNS)], "header but no rows"),
    ],
)
def test_read_manifest_errors(files, rows, match):
    with pytest.raises(TableError, match=match):
        read_manifest(write_rows(files / "m.csv", rows))


def test_read_manifest_not_a_table(files):
    empty = files / "empty.csv"
    empty.write_text("")
    with pytest.raises(TableError, match="empty"):
        read_manifest(empty)
    binary = files / "m.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(TableError, match="not a CSV"):
        read_manifest(binary)
    with pytest.raises(TableError, match="absent.csv: no such file$"):
        read_manifest(files / "absent.csv")


def test_cli_scan_writes_csv_and_accepts_manifest(files):
    runner = CliRunner()
    out = files / "out" / "manifest.csv"
    result = runner.invoke(app, ["scan", str(files), "-o", str(out)])
    assert result.exit_code == 0, result.output
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(written.columns) == list(COLUMNS)
    assert set(written["file"]) == {"a.fcs", "b.fcs"}  # relative to the scanned folder
    assert not list(out.parent.glob(".*.part"))  # atomic write left no temporary file
    override = write_rows(files / "m.csv", [list(COLUMNS), ["a.fcs", "X1", "treg", "stain", ""]])
    result = runner.invoke(app, ["scan", str(files), "--manifest", str(override), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out, dtype=str, keep_default_na=False).values.tolist() == [["a.fcs", "X1", "treg", "stain", ""]]
    bad = write_rows(files / "bad.csv", [list(COLUMNS), ["a.fcs", "X1", "treg", "weird", ""]])
    result = runner.invoke(app, ["scan", str(files), "--manifest", str(bad)])
    assert result.exit_code == 2 and "unknown role 'weird'" in result.output


def test_cli_scan_with_unreadable_files_exits_1(files):
    """`scan` listed unreadable files and exited 0, so a script took the scan for clean -> exit 1
    (some inputs failed, as `process`), each file listed, the manifest still written with its row
    (what its name tells). `scan --manifest` naming a file that does not exist stopped (exit 2,
    nothing written) -> listed the same way (row and path), exit 1, the manifest written."""
    (files / "c.fcs").write_bytes(b"FCS3.1" + bytes(20))   # truncated: no TEXT segment
    out = files / "out" / "manifest.csv"
    result = CliRunner().invoke(app, ["scan", str(files), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert f"unreadable: {files / 'c.fcs'}: " in result.output
    assert sorted(pd.read_csv(out, dtype=str, keep_default_na=False)["file"]) == ["a.fcs", "b.fcs", "c.fcs"]
    assert "(3 files, 1 unreadable)" in result.output
    (files / "c.fcs").unlink()
    assert CliRunner().invoke(app, ["scan", str(files), "-o", str(out)]).exit_code == 0
    manifest = write_rows(files / "m.csv", [list(COLUMNS), ["a.fcs", "X1", "surface", "stain", ""],
                                            ["gone.fcs", "X1", "surface", "fmo", "PD1"]])
    result = CliRunner().invoke(app, ["scan", str(files), "--manifest", str(manifest), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert (f"unreadable: {manifest}: row 3, column 'file': 'gone.fcs' does not exist or is not a regular file "
            f"(looked for {files / 'gone.fcs'})") in " ".join(result.output.split())
    assert pd.read_csv(out, dtype=str, keep_default_na=False)["file"].tolist() == ["a.fcs", "gone.fcs"]


def test_cli_scan_never_writes_over_the_manifest_it_reads(files):
    """`scan --manifest M -o M` (checking a hand-made manifest in place) rewrote M with the five
    manifest columns only: a til_dose_cells column (the doses) was silently lost. Now refused, M
    untouched."""
    manifest = write_rows(files / "manifest.csv", [[*COLUMNS, "til_dose_cells"], ["a.fcs", "X1", "treg", "stain", "", "5e9"]])
    before = manifest.read_bytes()
    link = files / "link.csv"
    link.symlink_to(manifest)
    for out in (manifest, link):
        result = CliRunner().invoke(app, ["scan", str(files), "--manifest", str(manifest), "-o", str(out)])
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[-1].startswith(f"error: {out}: -o is the --manifest being read")
        assert manifest.read_bytes() == before


def test_cli_scan_unwritable_out_is_one_line(files):
    """`scan -o` naming a folder (or a path it cannot write): exit 2, one line naming -o, no traceback."""
    taken = files / "taken"
    taken.mkdir()
    result = CliRunner().invoke(app, ["scan", str(files), "-o", str(taken)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == f"error: {taken}: Is a directory"
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not list(files.glob(".*.part"))


def test_read_manifest_excel_formula_without_saved_value(files):
    """A sample sheet written by a script holds formulas without results: read as values, the cell
    was silently empty (here the dose; in product_id it was reported as an 'empty value') -> refused,
    naming the row, the column and the sheet's cell (the outcomes reader's rule)."""
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append([*COLUMNS, "til_dose_cells"])
    sheet.append(["a.fcs", "P1", "surface", "stain", "", 5e9])
    sheet.append(["b.fcs", "P1", "surface", "fmo", "PD1", "=F2"])
    path = files / "m.xlsx"
    book.save(path)
    with pytest.raises(TableError) as err:
        read_manifest(path)
    assert str(err.value).startswith(f"{path}: row 3, column 'til_dose_cells': sheet 'Sheet' cell F3 holds "
                                     "a formula with no saved value"), err.value


def test_read_manifest_dose_column(files):
    """til_dose_cells given on the stain row only: its blank FMO cells failed every product with
    'internal error ValueError' (and a word such as 'abc' too) -> numbers, blank = NaN; a word, a
    negative number or two different doses of one product is an error naming the row."""
    header = [*COLUMNS, "til_dose_cells"]
    path = write_rows(files / "m.csv", [header, ["a.fcs", "P1", "surface", "stain", "", "5e9"],
                                        ["b.fcs", "P1", "surface", "fmo", "PD1", ""]])
    doses = read_manifest(path)["til_dose_cells"].tolist()
    assert doses[0] == 5e9 and np.isnan(doses[1])
    for second, match in (("abc", "row 3, column 'til_dose_cells': 'abc' is not a number"),
                          ("-1", "'-1' is not a number of cells \\(not negative\\)"),
                          ("6e9", "'6e9' differs from the dose 5e\\+09 of product 'P1' in row 2")):
        path = write_rows(files / "m.csv", [header, ["a.fcs", "P1", "surface", "stain", "", "5e9"],
                                            ["b.fcs", "P1", "surface", "fmo", "PD1", second]])
        with pytest.raises(TableError, match=match):
            read_manifest(path)


@pytest.mark.parametrize("separator, written, cells", [
    (",", "5,000,000,000", 5e9), (";", "1.500.000.000", 1.5e9), (";", "1,5E+10", 1.5e10),
    (";", "1\u00a0500\u00a0000\u00a0000", 1.5e9), ("\t", "1,500,000,000", 1.5e9), ("\t", "2,5E+09", 2.5e9),
    (",", "NA", np.nan)])
def test_read_manifest_dose_read_as_the_outcomes_table_reads_it(files, separator, written, cells):
    """The manifest's til_dose_cells took only Python's numbers (and a decimal comma in semicolon
    text): a dose Excel wrote with thousands separators ('5,000,000,000'; '1.500.000.000' in
    European Excel; French Excel's no-break spaces), accepted in the outcomes table, was 'not a
    number of cells' -> both read it through one parser, to the same number."""
    from tilpheno.io.outcomes import read_outcomes
    from table_support import OUTCOMES_HEADER as HEADER, OUTCOMES_ROWS as ROWS

    def text(rows):
        return "\n".join(separator.join(f'"{c}"' if separator in c else c for c in row) for row in rows) + "\n"

    manifest = files / "m.csv"
    manifest.write_text(text([[*COLUMNS, "til_dose_cells"], ["a.fcs", "P1", "surface", "stain", "", written]]))
    outcomes = files / "o.csv"
    table = [HEADER.split(","), *[row.split(",") for row in ROWS]]
    for row in table[1:]:
        row[2] = written
    outcomes.write_text(text(table))
    dose = read_manifest(manifest)["til_dose_cells"].iloc[0]
    assert dose == pytest.approx(cells, nan_ok=True)
    assert read_outcomes(outcomes)["til_dose_cells"].iloc[0] == pytest.approx(cells, nan_ok=True)


def test_read_manifest_written_by_r_with_na(files):
    """R's write.csv writes a missing fmo_marker (and dose) as NA: every stain row was refused
    "'NA' given for a stain row" -> NA (and N/A, NULL) is an empty cell, as in the outcomes table."""
    path = files / "m.csv"
    path.write_text('"file","product_id","tube","role","fmo_marker","til_dose_cells"\n'
                    '"a.fcs","P1","surface","stain",NA,5e9\n"b.fcs","P1","surface","fmo","PD1",NA\n')
    frame = read_manifest(path)
    assert frame["fmo_marker"].tolist() == ["", "PD1"]
    assert frame["til_dose_cells"].iloc[0] == 5e9 and np.isnan(frame["til_dose_cells"].iloc[1])
    path.write_text(f"{','.join(COLUMNS)}\nb.fcs,P1,surface,fmo,N/A\n")
    with pytest.raises(TableError, match=r"row 2, column 'fmo_marker': FMO row needs a marker name"):
        read_manifest(path)


def test_read_manifest_dose_in_units_of_1e9_is_refused(files):
    """A dose typed as 5 (meaning 5 x 1e9 cells, as clinical forms write it) was taken as 5 cells:
    every absolute subset dose of the product a billion times too small, without a word -> refused
    (below 1e6 cells), naming the cell; 0 and doses in cells are read."""
    header = [*COLUMNS, "til_dose_cells"]
    path = write_rows(files / "m.csv", [header, ["a.fcs", "P1", "surface", "stain", "", "5.2"]])
    with pytest.raises(TableError) as err:
        read_manifest(path)
    assert str(err.value) == (f"{path}: row 2, column 'til_dose_cells': '5.2' is fewer than 1e+06 cells, no TIL dose: "
                              "given in units of 1e9 cells? Write the number of cells (5.2e+09 for 5.2 x 1e9)")
    for dose, cells in (("0", 0.0), ("5.2e9", 5.2e9), ("1000000", 1e6)):
        path = write_rows(files / "m.csv", [header, ["a.fcs", "P1", "surface", "stain", "", dose]])
        assert read_manifest(path)["til_dose_cells"].iloc[0] == cells


def test_read_manifest_european_excel_csv(files):
    """Excel's CSV where the comma is the decimal mark is semicolon-separated (and a tab-separated
    copy has tabs): both were one column named 'file;product_id;...' ('missing columns') -> read,
    with a decimal comma in til_dose_cells; formatted empty rows saved as ';;;;' (an 'empty value'
    error) are skipped, and a blank line no longer shifts the line number of later errors."""
    rows = ["file;product_id;tube;role;fmo_marker;til_dose_cells", "a.fcs;007;surface;stain;;1,5E+10",
            "b.fcs;007;surface;fmo;PD1;", ";;;;;", ";;;;;"]
    path = files / "m.csv"
    path.write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8"))
    frame = read_manifest(path)
    assert frame[list(COLUMNS)].values.tolist() == [["a.fcs", "007", "surface", "stain", ""],
                                                   ["b.fcs", "007", "surface", "fmo", "PD1"]]
    assert frame["til_dose_cells"].iloc[0] == 1.5e10
    path.write_text("\n".join(r.replace(";", "\t").replace("1,5E+10", "2e9") for r in rows[:3]) + "\n")
    assert read_manifest(path)["til_dose_cells"].iloc[0] == 2e9
    path.write_text("\n".join([",".join(COLUMNS), "a.fcs,P,surface,stain,", "", "b.fcs,P,surface,fmoo,PD1"]) + "\n")
    with pytest.raises(TableError, match="row 4, column 'role': unknown role 'fmoo'"):
        read_manifest(path)


@pytest.mark.parametrize("tube, role, match", [
    ("surfce", "stain", "row 2, column 'tube': unknown tube 'surfce' \\(did you mean 'surface'\\?\\) "
                        "\\(allowed: surface, treg, unstained, compensation\\)"),
    ("Surface", "stain", "column 'tube': unknown tube 'Surface' \\(did you mean 'surface'\\?\\)"),
    ("surface", "Stain", "column 'role': unknown role 'Stain' \\(did you mean 'stain'\\?\\)"),
])
def test_read_manifest_misspelt_tube_or_role(files, tube, role, match):
    """A misspelt tube was accepted and the product then failed with 'no surface stained file in the
    manifest' -> refused when read, with the closest tube (or role) as a "did you mean"."""
    with pytest.raises(TableError, match=match):
        read_manifest(write_rows(files / "m.csv", [list(COLUMNS), ["a.fcs", "P", tube, role, ""]]))


def test_read_manifest_product_ids_differing_only_in_case(files):
    """``til001`` beside ``TIL001`` became a second product, which then failed with "no readable
    stained tube"; now the row is named with the id written first."""
    rows = [list(COLUMNS), ["a.fcs", "TIL001", "surface", "stain", ""], ["b.fcs", "til001", "surface", "fmo", "PD1"]]
    with pytest.raises(TableError, match=r"row 3, column 'product_id': 'til001' differs only in case "
                                         r"from 'TIL001' in row 2"):
        read_manifest(write_rows(files / "m.csv", rows))


@pytest.mark.parametrize("value, number_format, shown", [
    (7, "000", "the number 7 shown with the format '000'"),
    (__import__("datetime").datetime(2024, 3, 1), "yyyy-mm-dd", "a date"),
    (1234567890123456700.0, "General", "the number 1.23456789012346e+18 (Excel keeps 15 digits: the id's last "
                                       "digits are lost)"),
])
def test_read_manifest_excel_id_shown_otherwise_than_stored(files, value, number_format, shown):
    """An .xlsx id column formatted '000' shows 7 as 007 but holds 7; a date is a day number. Read,
    the id silently became '7' (or '2024-03-01 00:00:00') and matched no FCS file or the wrong
    product -> refused with the cell, saying to format the column as Text. A number in the General
    format is read as shown and accepted. A 19-digit barcode typed as a number (Excel keeps 15
    digits) was read as another id -> refused too."""
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(list(COLUMNS))
    sheet.append(["a.fcs", value, "surface", "stain", ""])
    sheet["B2"].number_format = number_format
    path = files / "m.xlsx"
    book.save(path)
    with pytest.raises(TableError, match=rf"^{re.escape(str(path))}: row 2, column 'product_id': sheet "
                                         rf"'Sheet' cell B2 is {re.escape(shown)}, not the id as typed; format the "
                                         "column as Text"):
        read_manifest(path)
    sheet["B2"].value, sheet["B2"].number_format = 7, "General"
    book.save(path)
    assert list(read_manifest(path)["product_id"]) == ["7"]


def test_read_manifest_misspelt_column_gets_a_hint(files):
    """A header 'Product ID' (a sample sheet typed by hand) gave only 'missing column(s)'."""
    path = write_rows(files / "m.csv", [["file", "Product ID", "tube", "role"], ["a.fcs", "P", "surface", "stain"]])
    with pytest.raises(TableError, match=r"missing column\(s\) 'product_id' \(did you mean 'Product ID'\?\); found"):
        read_manifest(path)


# --------------------------------------------------------------------------- lab workbooks and CSVs


TABLE = [[*COLUMNS, "til_dose_cells"], ["a.fcs", "TIL001", "surface", "stain", "", 5e9],
         ["b.fcs", "TIL001", "surface", "fmo", "PD1", 5e9]]


def test_read_manifest_excel_merged_cells(files):
    """Lab staff merge a product's id (and dose) down over its tube rows: only the top cell holds the
    value, so every other row of the product was refused ('empty value') -> each row reads the
    merged value, as Excel shows it (same frame as the unmerged sheet)."""
    plain = read_manifest(workbook(files / "plain.xlsx", {"Sheet": TABLE}))
    merged_rows = [TABLE[0], TABLE[1], [TABLE[2][0], None, *TABLE[2][2:5], None]]
    merged = read_manifest(workbook(files / "m.xlsx", {"Sheet": merged_rows}, {"Sheet": ["B2:B3", "F2:F3"]}))
    pd.testing.assert_frame_equal(merged, plain)
    assert merged["product_id"].tolist() == ["TIL001", "TIL001"] and merged["til_dose_cells"].tolist() == [5e9, 5e9]


def test_read_manifest_invisible_characters(files):
    """A header cell pasted with a zero-width space ('product_id' + U+200B) was a missing column ->
    the column is product_id; an id with one ('\ufeffTIL001': a byte order mark pasted along) was
    another product than TIL001 -> refused naming the cell and the character."""
    plain = read_manifest(write_rows(files / "plain.csv", TABLE))
    header = [f"{c}\u200b" if c == "product_id" else c for c in TABLE[0]]
    pd.testing.assert_frame_equal(read_manifest(write_rows(files / "h.csv", [header, *TABLE[1:]])), plain)
    ids = workbook(files / "i.xlsx", {"Sheet": [TABLE[0], TABLE[1], ["b.fcs", "\ufeffTIL001", *TABLE[2][2:]]]})
    with pytest.raises(TableError, match=r"^\S*i.xlsx: row 3, column 'product_id': the id 'TIL001' holds an "
                                         r"invisible character \(U\+FEFF ZERO WIDTH NO-BREAK SPACE\) at its start; "
                                         r"retype the id, or delete the character$"):
        read_manifest(ids)


@pytest.mark.parametrize("column, written, message", [
    ("tube", "surface\u200b", "the value 'surface' holds an invisible character (U+200B ZERO WIDTH SPACE) after "
                              "'surface'; retype the value, or delete the character"),
    ("role", "\u2060stain", "the value 'stain' holds an invisible character (U+2060 WORD JOINER) at its start"),
    ("fmo_marker", "PD\u200d1", "the value 'PD1' holds an invisible character (U+200D ZERO WIDTH JOINER) after 'PD'")])
def test_read_manifest_invisible_character_in_tube_role_marker(files, column, written, message):
    """A zero-width character pasted into a tube or role cell gave "unknown tube 'surface\\u200b'
    (did you mean 'surface'?)" (the cell reads 'surface' in Excel), into an FMO marker "not a
    marker" -> the cell and the character are named, as for an id."""
    row = dict(zip(COLUMNS, TABLE[2]))
    row[column] = written
    path = write_rows(files / "m.csv", [TABLE[0], TABLE[1], list(row.values())])
    with pytest.raises(TableError) as err:
        read_manifest(path)
    assert str(err.value).startswith(f"{path}: row 3, column '{column}': {message}")


def test_read_manifest_flowjo_statistics_rows(files):
    """A table exported from FlowJo's table editor ends with 'Mean' and 'SD' rows (and a hand-made
    one with a 'Total' row): refused as 'empty value' -> named as a summary row to delete."""
    flowjo = [*[[*r[:5], "5e9"] for r in TABLE], ["Mean", "", "", "", "", "5e9"]]
    total = [*TABLE, ["Total", None, None, None, None, 1e10]]
    for label, path in (("Mean", write_rows(files / "m.csv", flowjo)), ("Total", workbook(files / "m.xlsx", {"Sheet": total}))):
        with pytest.raises(TableError) as err:
            read_manifest(path)
        assert str(err.value) == (f"{path}: row 4, column 'product_id': '{label}' in column 'file': this looks like a "
                                  "total or summary row under the table, not a file; delete it (the manifest holds one "
                                  "row per FCS file)")


def test_read_manifest_header_below_a_title(files):
    """A title line and blank lines above the header: the CSV was 'cannot read manifest (Error
    tokenizing data ...)' or 'No columns to parse', the .xlsx 'missing column(s)' -> the header is
    found; errors still name the file's line (row N = N lines below the header)."""
    truth = read_manifest(write_rows(files / "plain.csv", [list(COLUMNS), ["a.fcs", "P1", "surface", "stain", ""],
                                                            ["b.fcs", "P1", "surface", "fmo", "PD1"]]))
    rows = [["Manifest of run 5 (M. Muster)"], [], list(COLUMNS), ["a.fcs", "P1", "surface", "stain", ""],
            ["b.fcs", "P1", "surface", "fmo", "PD1"]]
    pd.testing.assert_frame_equal(read_manifest(write_rows(files / "title.csv", rows)), truth)
    (files / "blank.csv").write_text("\n\n" + (files / "plain.csv").read_text())
    pd.testing.assert_frame_equal(read_manifest(files / "blank.csv"), truth)
    pd.testing.assert_frame_equal(read_manifest(workbook(files / "title.xlsx", {"Sheet": rows})), truth)
    rows[4][3] = "fmoo"
    with pytest.raises(TableError, match=r"title.csv: row 5, column 'role': unknown role 'fmoo'"):
        read_manifest(write_rows(files / "title.csv", rows))
    hand_typed = [["Manifest"], ["file", "Product ID", "tube", "role"], ["a.fcs", "P", "surface", "stain"]]
    with pytest.raises(TableError, match=r"missing column\(s\) 'product_id' \(did you mean 'Product ID'\?\)"):
        read_manifest(write_rows(files / "typed.csv", hand_typed))


def test_read_manifest_excel_table_on_a_later_sheet(files):
    """The table on sheet 2 behind an instructions (or empty) sheet: 'missing column(s) ... found
    ['Fill in sheet 2']' or 'header but no rows' -> the sheet holding the table is read, and the
    workbook checks look at that sheet and its header row. Two sheets holding a table are refused."""
    truth = read_manifest(workbook(files / "plain.xlsx", {"Sheet": TABLE}))
    for first in ([["Fill in the sheet 'Manifest'"], ["role: stain, fmo or unstained"]], []):
        path = workbook(files / "m.xlsx", {"Instructions": first, "Manifest": TABLE})
        pd.testing.assert_frame_equal(read_manifest(path), truth)
    shown_otherwise = workbook(files / "fmt.xlsx", {"Read me": [["see next sheet"]], "Manifest": [["Run 5"], *TABLE]})
    import openpyxl

    book = openpyxl.load_workbook(shown_otherwise)
    book["Manifest"]["B4"].value, book["Manifest"]["B4"].number_format = 7, "000"
    book.save(shown_otherwise)
    with pytest.raises(TableError, match=r"row 4, column 'product_id': sheet 'Manifest' cell B4 is the "
                                         r"number 7 shown with the format '000'"):
        read_manifest(shown_otherwise)
    with pytest.raises(TableError, match=r"sheets 'Run 1', 'Run 2' each hold a manifest table"):
        read_manifest(workbook(files / "two.xlsx", {"Run 1": TABLE, "Run 2": TABLE}))


def test_read_manifest_windows_1252_csv(files):
    """Excel on Windows saves 'CSV (Comma delimited)' in cp1252: a comment reads as written, an
    accented file name is found. A file name's own bytes (tilpheno scan -o of a folder whose names
    are not UTF-8) still read back as that file. The outcomes reader decoded such a file whole and
    this one per column, refusing an accented product id it accepted as a patient's -> one rule in
    both: a cell's bytes that are not UTF-8 are Windows-1252 ('Pé' reads as typed, as the outcomes
    table's 'Pé' does), a byte that is neither is refused naming the cell with the outcomes
    reader's message. Excel's 'Unicode Text' (UTF-16) was 'binary content' -> read, as outcomes."""
    design_file(files, "été.fcs", "surface")
    raw = os.fsdecode(b"P\xe9.fcs")
    design_file(files, raw, "surface", omit="PD1")
    path = files / "m.csv"
    path.write_bytes("file,product_id,tube,role,fmo_marker,comment\r\nété.fcs,P1,surface,stain,,1 µl\r\n".encode("cp1252")
                     + b"P\xe9.fcs,P1,surface,fmo,PD1,\r\n")
    frame = read_manifest(path)
    assert frame["file"].tolist() == ["été.fcs", raw] and frame["comment"].tolist() == ["1 µl", ""]
    path.write_bytes("file,product_id,tube,role\r\nété.fcs,Pé,surface,stain\r\n".encode("cp1252"))
    assert read_manifest(path)["product_id"].tolist() == ["Pé"]
    path.write_bytes("file,product_id,tube,role\r\nété.fcs,Pé,surface,stain\r\n".encode("utf-16"))
    assert read_manifest(path)["product_id"].tolist() == ["Pé"]
    path.write_bytes("file,product_id,tube,role\r\nété.fcs,Pé,surface,stain\r\n".encode("cp1252").replace(b"P\xe9", b"P\x81"))
    with pytest.raises(TableError, match=r"m.csv: row 2, column 'product_id': byte 0x81 is neither UTF-8 nor "
                                         r"Windows-1252 text; save the table as 'CSV UTF-8 \(Comma delimited\)' or .xlsx"):
        read_manifest(path)


@pytest.mark.parametrize("header, name, both", [
    (["file", "product_id", "tube", "role", "file"], "file", "A and E"),
    (["file", "product_id", "tube", "role", "File "], "file", "A 'file' and E 'File'"),
    ([*COLUMNS, "Comment", "comment"], "Comment", "F 'Comment' and G 'comment'"),
])
def test_read_manifest_column_named_twice(files, header, name, both):
    """Two 'file' columns: the second was silently renamed 'file.1' (or, spelt 'File', shadowed)
    and one of them ignored; two extra columns differing only in case were both kept -> refused
    naming both columns."""
    path = write_rows(files / "m.csv", [header, ["a.fcs", "P", "surface", "stain", "b.fcs", ""][:len(header)]])
    with pytest.raises(TableError, match=rf"m.csv: row 1: column '{name}' "
                                         rf"appears twice \(columns {both}\)"):
        read_manifest(path)


def test_read_manifest_row_longer_than_header(files):
    """A row with one cell more than the header (an unquoted comma) was shifted one column (its file
    name taken as the row label: 'unknown role ...'); a workbook that is not one was a BadZipFile
    traceback -> one-line errors (the workbook's as the outcomes reader words it)."""
    path = files / "m.csv"
    path.write_text("file,product_id,tube,role\na.fcs,P,surface,stain,1,5\n")
    with pytest.raises(TableError, match=r"row 2: 6 cells, the header names 4 columns"):
        read_manifest(path)
    (files / "m.xlsx").write_bytes(b"PK\x03\x04not a workbook")
    with pytest.raises(TableError, match="m.xlsx: not a readable Excel workbook \\(BadZipFile\\)"):
        read_manifest(files / "m.xlsx")


def test_read_manifest_fmo_marker_not_in_the_strategy(files):
    """An FMO row naming a marker its tube's strategy does not have ('PD1x', 'PD-L1', FoxP3 on the
    surface tube) was accepted; the FMO then gated nothing and the PD1 gate fell back ->
    refused with a did-you-mean among the tube's markers (PD-1, an alias, is PD1) for a typo only,
    by `process` and `scan --manifest` alike."""
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.pipeline.inputs import strategy_markers
    from tilpheno.study import default_study

    markers = strategy_markers(load_strategy(p) for p in default_study().strategy_paths)
    rows = [list(COLUMNS), ["a.fcs", "P", "surface", "stain", ""], ["b.fcs", "P", "surface", "fmo", "PD-1"]]
    assert read_manifest(write_rows(files / "m.csv", rows), markers=markers)["fmo_marker"].tolist() == ["", "PD1"]
    # a typo gets a did-you-mean; another molecule does not: CD39 or PD-L1 (markers the vocabulary knows) or CD38
    # (another CD number) was offered 'CD3' / 'PD1' / 'CD8'
    did = " \\(did you mean 'PD1'\\?\\)"
    for written, hint in (("PD1x", did), ("PD-L1", ""), ("PDL-1", ""), ("DC56", " \\(did you mean 'CD56'\\?\\)"), ("CD39", ""),
                          ("CD38", ""), ("FoxP3", "")):
        rows[2][4] = written
        path = write_rows(files / "m.csv", rows)
        assert read_manifest(path)["fmo_marker"].iloc[1]   # without markers: not checked
        with pytest.raises(TableError, match=rf"row 3, column 'fmo_marker': '{written}' is not a marker of "
                                             rf"the surface tube{hint} \(its markers: CD3, CD4, CD8, CD56, PD1, 7AAD\)"):
            read_manifest(path, markers=markers)
    result = CliRunner().invoke(app, ["scan", str(files), "--manifest", str(path)])
    assert result.exit_code == 2 and "'FoxP3' is not a marker of the surface tube" in result.output
    from tilpheno.pipeline import process_folder

    with pytest.raises(TableError, match="'FoxP3' is not a marker of the surface tube"):
        process_folder(files, files / "out", manifest_csv=path, make_reports=False)
    assert not (files / "out").exists()


@pytest.mark.parametrize("later, its_error", [
    (["a.fcs", "Q", "surface", "stian", ""], "row 4, column 'role': unknown role 'stian'"),
    (["gone.fcs", "Q", "surface", "stain", ""], "row 4, column 'file': 'gone.fcs' does not exist"),
    (["a.fcs", "Q", "surface", "stain", ""], "row 4, column 'file': 'a.fcs' already listed in row 2"),
])
def test_an_fmo_of_a_marker_its_tube_does_not_gate_is_reported_before_a_later_rows_problem(files, later, its_error):
    """The FMO-marker refusal waited for every file to be found (the product's stained files may explain it), so a
    manifest with such an FMO in row 3 and any problem in a later row (a mistyped role, a missing or twice-listed
    file) reported row 4 first, and row 3 only once row 4 was fixed -> the file's first problem first: row 3, as
    `scan --manifest` prints it; with row 4 fixed, the same line."""
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.pipeline.inputs import strategy_markers
    from tilpheno.study import default_study

    markers = strategy_markers(load_strategy(p) for p in default_study().strategy_paths)
    fmo_error = ("row 3, column 'fmo_marker': 'FoxP3' is not a marker of the surface tube (its markers: CD3, CD4, "
                 "CD8, CD56, PD1, 7AAD)")
    rows = [list(COLUMNS), ["a.fcs", "P", "surface", "stain", ""], ["b.fcs", "P", "surface", "fmo", "FoxP3"], later]
    path = write_rows(files / "m.csv", rows)
    with pytest.raises(TableError) as info:
        read_manifest(path, markers=markers)
    assert str(info.value) == f"{path}: {fmo_error}"
    result = CliRunner().invoke(app, ["scan", str(files), "--manifest", str(path)])
    assert result.exit_code == 2 and " ".join(result.output.split()) == f"error: {path}: {fmo_error}", result.output
    rows[2][4] = "PD1"
    with pytest.raises(TableError, match=re.escape(its_error)):
        read_manifest(write_rows(files / "m.csv", rows), markers=markers)


def test_read_manifest_windows_backslash_paths(files):
    """A manifest typed on Windows names 'sub\\a.fcs': on Linux that was 'does not exist' -> found as
    sub/a.fcs (and returned so); a Windows absolute path gets a hint to give it relative."""
    (files / "sub").mkdir()
    design_file(files / "sub", "c.fcs", "surface")
    path = write_rows(files / "m.csv", [list(COLUMNS), ["sub\\c.fcs", "P", "surface", "stain", ""]])
    assert read_manifest(path)["file"].tolist() == ["sub/c.fcs"]
    path = write_rows(files / "m.csv", [list(COLUMNS), ["C:\\runs\\c.fcs", "P", "surface", "stain", ""]])
    with pytest.raises(TableError, match=re.escape(repr("C:\\runs\\c.fcs")) + " does not exist .*"
                                         + re.escape("(a Windows path: give it relative to the folder)")):
        read_manifest(path)


def test_read_manifest_cells_beside_the_table(files):
    """Excel pads every row of a CSV to its widest: the empty column came back as an extra column
    'Unnamed: 5' -> ignored. A note beside the table (no header) was kept as that column -> refused
    naming the cell (as the outcomes reader does)."""
    rows = [list(COLUMNS), ["a.fcs", "P", "surface", "stain", ""], ["b.fcs", "P", "surface", "fmo", "PD1"]]
    truth = read_manifest(write_rows(files / "m.csv", rows))
    padded = read_manifest(write_rows(files / "padded.csv", [[*row, ""] for row in rows]))
    pd.testing.assert_frame_equal(padded, truth)
    noted = write_rows(files / "noted.csv", [[*rows[0], ""], [*rows[1], ""], [*rows[2], "redo?"]])
    with pytest.raises(TableError, match=r"noted.csv: row 3, column F: 'redo\?' lies in a column without "
                                         r"a header; name the column in the header row, or delete the cell"):
        read_manifest(noted)
    book = workbook(files / "noted.xlsx", {"Sheet": [rows[0], rows[1], [*rows[2], "redo?"]]})
    with pytest.raises(TableError, match=r"noted.xlsx: row 3, column F: 'redo\?' lies in a column"):
        read_manifest(book)


def test_read_manifest_excel_error_value(files):
    """A product id looked up by formula that found nothing, saved as CSV: the product '#N/A' was
    accepted -> refused naming the cell (an error cell of a workbook too)."""
    import openpyxl

    rows = [list(COLUMNS), ["a.fcs", "#N/A", "surface", "stain", ""]]
    with pytest.raises(TableError, match=r"m.csv: row 2, column 'product_id': #N/A is an Excel error "
                                         r"value \(a formula that failed"):
        read_manifest(write_rows(files / "m.csv", rows))
    book = workbook(files / "m.xlsx", {"Sheet": rows})
    edited = openpyxl.load_workbook(book)
    edited["Sheet"]["B2"].data_type = "e"
    edited.save(book)
    with pytest.raises(TableError, match=r"m.xlsx: row 2, column 'product_id': #N/A is an Excel error"):
        read_manifest(book)


def test_read_manifest_cell_with_a_line_break(files):
    """A comment holding a line break: an error in its row named the line the comment ends on ->
    the line the row starts on (a text editor's line)."""
    rows = [[*COLUMNS, "comment"], ["a.fcs", "P", "surface", "stained", "", "weak\nstain"]]
    with pytest.raises(TableError, match=r"m.csv: row 2, column 'role': unknown role 'stained'"):
        read_manifest(write_rows(files / "m.csv", rows))


def test_read_manifest_hidden_row(files):
    """A tube's row hidden in Excel (filtered out) was read without a word -> refused naming it."""
    import openpyxl

    book = workbook(files / "m.xlsx", {"Sheet": TABLE})
    edited = openpyxl.load_workbook(book)
    edited["Sheet"].row_dimensions[3].hidden = True
    edited.save(book)
    with pytest.raises(TableError, match=r"m.xlsx: row 3, column 'file': sheet 'Sheet' row 3 is hidden in "
                                         r"Excel \(by hand or by a filter\)"):
        read_manifest(book)
    edited = openpyxl.load_workbook(book)
    edited["Sheet"].row_dimensions[3].hidden = False
    edited["Sheet"]["H5"], edited["Sheet"].row_dimensions[5].hidden = "old note", True
    edited.save(book)
    with pytest.raises(TableError, match=r"m.xlsx: row 5: sheet 'Sheet' row 5 is hidden"):
        read_manifest(book)


def test_read_manifest_hidden_column(files):
    """A helper column hidden in Excel (a lookup of the dose, in column G) was read as a manifest
    column without a word -> refused naming it; an empty hidden column is no part of the table and
    is read as before."""
    import openpyxl

    book = workbook(files / "m.xlsx", {"Sheet": [[*TABLE[0], "helper"], *[[*row, "x"] for row in TABLE[1:]]]})
    edited = openpyxl.load_workbook(book)
    edited["Sheet"].column_dimensions["G"].hidden = True
    edited.save(book)
    with pytest.raises(TableError, match=r"m.xlsx: row 2, column 'helper': sheet 'Sheet' column G "
                                         r"\('helper'\) is hidden in Excel; unhide it, or delete it"):
        read_manifest(book)
    empty = workbook(files / "e.xlsx", {"Sheet": TABLE})
    edited = openpyxl.load_workbook(empty)
    edited["Sheet"].column_dimensions.group("H", "J", hidden=True)
    edited.save(empty)
    pd.testing.assert_frame_equal(read_manifest(empty), read_manifest(workbook(files / "p.xlsx", {"Sheet": TABLE})))


def test_product_ids_differing_only_in_case_are_one_product(tmp_path):
    """'p01_surface_stain.fcs' and 'P01_surface_FMO_PD1.fcs' (one specimen typed two ways) made two
    products: p01 gated without its FMO (fallback gate) and P01 failed (no stained tube). Now one
    product, named as its stained file, with a one-line warning in scan and in process's qc."""
    import shutil

    from tilpheno.pipeline.run import load_run_inputs

    shutil.copy(SAMPLE / "TIL001_surface_stain.fcs", tmp_path / "p01_surface_stain.fcs")
    shutil.copy(SAMPLE / "TIL001_surface_FMO_PD1.fcs", tmp_path / "P01_surface_FMO_PD1.fcs")
    shutil.copy(SAMPLE / "TIL002_surface_stain.fcs", tmp_path / "P02_surface_stain.fcs")
    frame = scan_folder(tmp_path)
    assert dict(zip(frame["file"].map(lambda f: Path(f).name), frame["product_id"])) == {
        "p01_surface_stain.fcs": "p01", "P01_surface_FMO_PD1.fcs": "p01", "P02_surface_stain.fcs": "P02"}
    note = "product ids P01, p01 differ only in case: taken as one product, p01 (renamed: P01_surface_FMO_PD1.fcs)"
    assert [n.split(";")[0] for n in frame.attrs["case_merged"]] == [note]
    result = CliRunner().invoke(app, ["scan", str(tmp_path)])
    assert result.exit_code == 0 and note in result.output
    flags = [f for f in load_run_inputs(tmp_path).run_flags if f.code == "product_id_case"]
    assert [(f.severity, f.message.split(";")[0]) for f in flags] == [("warning", note)]


@pytest.mark.parametrize("name", ["fcsparser_instruments/MiltenyiBiotec/FCS3.0/FCS3.0_Custom_Compatible.fcs",
                                  "fcsparser_instruments/cyflow_cube_8/cyflow_cube_8.fcs"])
def test_pns_copying_pnn_is_no_label(tmp_path, name):
    """MACSQuant and CyFlow write $PnS = $PnN ('V2-A', 'FL1') on every channel: scan counted the
    copies as labels and made such a file (an unstained control named 'Tube_001') a stained file
    with no marker, a second stained tube beside the product's real one. A copy is no label, as
    the panel reads it: the file is an unstained control."""
    import shutil

    from tilpheno.io.fcs import read_fcs_metadata

    source = Path(__file__).parent / "data" / "fcs" / name
    fcs = read_fcs_metadata(source)
    assert all(str(n).strip() == str(s).strip() for n, s in zip(fcs.channels["pnn"], fcs.channels["pns"]))
    shutil.copy(source, tmp_path / "Tube_001.fcs")
    frame = scan_folder(tmp_path)
    assert frame[["role", "tube"]].values.tolist() == [["unstained", "unstained"]]


def test_a_detectors_other_name_is_no_label(tmp_path):
    """MACSQuant's FCS 3.1 export writes each detector's other name as its $PnS ('V2-A' on FL2-A,
    'B1-A' on FL7-A), its FCS 2.0 export of the same well the same name as $PnN and $PnS: scan took
    the 3.1 files for stained files (a label on a fluorescence detector) and the 2.0 one for the
    unstained control, so one acquisition was two roles and new-study left the 3.1 files out as stained
    with no marker. The detector's other name with its signal is no label: both are unstained controls,
    and a stain's label that ends in the signal (Attune's 'KLRG1-A' on BL1-A) still is one."""
    import shutil

    from tilpheno.io.fcs import read_fcs_metadata
    from tilpheno.panel import labelled

    macsquant = Path(__file__).parent / "data" / "fcs" / "fcsparser_instruments" / "MiltenyiBiotec"
    three = macsquant / "FCS3.1" / "EY_2013-07-19_PBS_FCS_3.1_Well_A1.001.fcs"
    channels = dict(zip(read_fcs_metadata(three).channels["pnn"], read_fcs_metadata(three).channels["pns"]))
    assert channels["FL2-A"] == "V2-A" and channels["FL7-H"] == "B1-H"
    shutil.copy(three, tmp_path / "three.fcs")
    shutil.copy(macsquant / "FCS2.0" / "EY_2013-07-19_PBS_FCS_2.0_Custom_Without_Add_Well_A1.001.fcs", tmp_path / "two.fcs")
    frame = scan_folder(tmp_path)
    assert frame[["role", "tube"]].values.tolist() == [["unstained", "unstained"]] * 2
    assert labelled("BL1-A", "KLRG1-A") and labelled("FL2-A", "CD3") and not labelled("FL2-A", "V2-A")


@pytest.mark.parametrize("dose, dose_error", [
    ("2.5", "row 2, column 'til_dose_cells': '2.5' is fewer than 1e+06 cells"),
    ("abc", "row 2, column 'til_dose_cells': 'abc' is not a number"),
])
def test_a_dose_error_is_reported_before_a_later_rows_problem(files, dose, dose_error):
    """til_dose_cells was checked after every row, so a manifest with a dose typed in units of 1e9
    (or not a number) in row 2 and an unknown role in row 4 reported row 4, and row 2 only once row 4
    was fixed -> the file's first problem first: row 2's dose, as `scan --manifest` prints it; a
    row's other cells still come before its dose, an earlier row's problem before a later dose, and
    with row 4 fixed, the same line."""
    header = [*COLUMNS, "til_dose_cells"]
    rows = [header, ["a.fcs", "P", "surface", "stain", "", dose], ["b.fcs", "P", "surface", "fmo", "PD1", ""],
            ["b.fcs", "Q", "surface", "stian", "", ""]]
    path = write_rows(files / "m.csv", rows)
    with pytest.raises(TableError) as info:
        read_manifest(path)
    assert str(info.value).startswith(f"{path}: {dose_error}"), str(info.value)
    result = CliRunner().invoke(app, ["scan", str(files), "--manifest", str(path)])
    assert result.exit_code == 2 and " ".join(result.output.split()).startswith(f"error: {path}: {dose_error}"), result.output
    rows[3][3] = "stain"   # row 4 fixed: a twice-listed file now, still after row 2's dose
    with pytest.raises(TableError, match=re.escape(dose_error)):
        read_manifest(write_rows(files / "m.csv", rows))
    rows[1][3] = "stian"   # the dose's own row: its role first
    with pytest.raises(TableError, match=re.escape("row 2, column 'role': unknown role 'stian'")):
        read_manifest(write_rows(files / "m.csv", rows))
    rows[1][3], rows[3][5] = "stain", dose   # a dose error below a problem (row 4's file listed twice)
    rows[1][5] = ""
    with pytest.raises(TableError, match=re.escape("row 4, column 'file': 'b.fcs' already listed in row 3")):
        read_manifest(write_rows(files / "m.csv", rows))


def test_a_specimen_name_of_na_names_no_product(tmp_path):
    """Attune NxT writes $SRC 'NA' when a well has no sample name (flowio's G11.fcs): scan made it the
    product id, so every well of a plate was one product 'NA' (its stained files duplicate tubes of one
    product; 'NA' is also what CSV readers take for a missing value) -> 'NA' names no specimen: each
    file is its own product, named by its file name, as a file without $SRC."""
    import shutil

    from tilpheno.io.fcs import read_fcs_metadata

    source = Path(__file__).parent / "data" / "fcs" / "flowio" / "G11.fcs"
    assert read_fcs_metadata(source, checksum=False).keywords["$SRC"] == "NA"
    for well in ("G11", "G12"):
        shutil.copy(source, tmp_path / f"{well}.fcs")
    frame = scan_folder(tmp_path)
    assert sorted(frame["product_id"]) == ["G11", "G12"], frame


def test_a_labs_manifest_is_read_once(files, monkeypatch):
    """read_lab_manifest (``new-study --manifest``) read the lab's table for its tube names, then read_manifest
    read the same file again (its bytes twice, an .xlsx parsed twice) -> the table read once is validated
    (stop 50); the rows, their places and the refusals are as before."""
    from tilpheno.io.manifest import read_lab_manifest

    path = write_rows(files / "m.csv", [list(COLUMNS), ["a.fcs", "007", "Surface A", "stain", ""],
                                        ["b.fcs", "007", "Surface A", "fmo", "PD-1"]])
    reads = []
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or read_bytes(self))
    frame = read_lab_manifest(path, base=files)
    assert reads == [path]
    assert frame[["file", "tube", "fmo_marker", "row"]].values.tolist() == [
        ["a.fcs", "Surface A", "", f"{path}: row 2"], ["b.fcs", "Surface A", "PD1", f"{path}: row 3"]]
    bad = write_rows(files / "bad.csv", [list(COLUMNS), ["a.fcs", "007", "Surface A", "stian", ""]])
    with pytest.raises(TableError, match=re.escape(f"{bad}: row 2, column 'role': unknown role 'stian'")):
        read_lab_manifest(bad, base=files)
