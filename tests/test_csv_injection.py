"""CSV formula injection (issue 11): every CSV tilpheno writes neutralises cells that a spreadsheet
would run as formulas (OWASP), and tilpheno's own readers recover the original values."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tilpheno.cli import app
from tilpheno.io.csvcells import FORMULA_TRIGGERS, neutralise_cell, restore_cell
from tilpheno.io.manifest import read_manifest
from tilpheno.pipeline import process_folder
from tilpheno.simulate.cohort import simulate_product, write_product

REFERENCE = Path(__file__).parent / "reference"
PAYLOADS = ["=cmd|' -c calc'!A1", "+1+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0", "@SUM(1+9)*cmd|' /C calc'!A0",
            "\t=1+1", "\r=1+1"]


@pytest.mark.parametrize("value", [*PAYLOADS, "'=already quoted", "''", "'", "plain", "-1.5", "+3e-2", "", "TIL001",
                                   "'plain", "-", "=", "-x"])
def test_neutralise_then_restore_is_exact(value):
    written = neutralise_cell(value)
    assert restore_cell(written) == value
    assert not (written[:1] in FORMULA_TRIGGERS and written not in ("-1.5", "+3e-2"))


def _unsafe_cells(csv: Path) -> list[str]:
    """Text cells and header names a spreadsheet would run as formulas (plain numbers are not)."""
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    cells = [*map(str, frame.columns), *frame.to_numpy().ravel().tolist()]
    bad = []
    for cell in cells:
        if cell[:1] in FORMULA_TRIGGERS:
            try:
                float(cell)
            except ValueError:
                bad.append(cell)
    return bad


@pytest.mark.slow   # process + biomarkers on planted inputs
def test_every_output_csv_is_neutralised(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    product = simulate_product("HOSTILE", 61, 2000)
    write_product(product, folder)
    rows = [{"file": t.file, "product_id": PAYLOADS[0], "tube": t.data.spec.tube, "role": t.data.spec.role,
             "fmo_marker": t.data.spec.fmo_marker or ""} for t in product.tubes]
    shutil.copy(folder / "HOSTILE_surface_stain.fcs", folder / "=HYPERLINK(x)_surface_stain.fcs")
    rows.append({"file": "=HYPERLINK(x)_surface_stain.fcs", "product_id": PAYLOADS[3], "tube": "surface",
                 "role": "stain", "fmo_marker": ""})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    out = tmp_path / "out"
    summary = process_folder(folder, out, manifest_csv=folder / "manifest.csv", make_reports=False)
    assert summary.n_products == 2
    # scan -o: the manifest tilpheno writes is neutralised and reads back exactly
    result = CliRunner().invoke(app, ["scan", str(folder), "-o", str(out / "manifest_scanned.csv")])
    assert result.exit_code == 0, result.output
    back = read_manifest(out / "manifest_scanned.csv", base=folder)
    assert "=HYPERLINK(x)_surface_stain.fcs" in set(back["file"])

    phen = pd.read_csv(REFERENCE / "til_cohort_phenotypes.csv")
    outcomes = pd.read_csv(REFERENCE / "til_cohort_outcomes.csv")
    outcomes.loc[0, "product_id"] = PAYLOADS[1]                 # an outcome id matching no product
    outcomes["site"] = np.where(np.arange(len(outcomes)) % 2, PAYLOADS[2], "@home")   # covariate values
    phen.loc[1, "product_id"] = PAYLOADS[5]
    phen.to_csv(tmp_path / "phen.csv", index=False)
    outcomes.to_csv(tmp_path / "outcomes.csv", index=False)
    bio = CliRunner().invoke(app, ["biomarkers", "--phenotypes", str(tmp_path / "phen.csv"), "--outcomes",
                                   str(tmp_path / "outcomes.csv"), "-o", str(out / "bio"), "--permutations", "0",
                                   "--covariates", "site", "--markers", "cd8_pct_of_cd3",
                                   # 5 samples, not the default 200: validation, calibration and time_auc.csv are
                                   # written all the same, their cells numbers whatever the count
                                   "--bootstrap", "5"])
    assert bio.exit_code == 0, bio.output
    written = sorted(out.rglob("*.csv"))
    assert {p.name for p in written} >= {"phenotypes.csv", "populations.csv", "qc.csv", "manifest_scanned.csv",
                                         "unmatched.csv", "responders.csv"}
    for csv in written:
        assert _unsafe_cells(csv) == [], csv.name
    # the payloads are there, neutralised, and tilpheno's own reader recovers them
    text = (out / "phenotypes.csv").read_text()
    assert "'=cmd|' -c calc'!A1" in text and "'@SUM(1+9)" in text
    from tilpheno.biomarkers.cohort import read_phenotypes

    assert set(read_phenotypes(out / "phenotypes.csv")["product_id"]) == {PAYLOADS[0], PAYLOADS[3]}
