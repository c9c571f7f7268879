"""Absolute subset doses: the infused TIL number comes from the outcomes table (or the manifest)."""
import math
import re
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from tilpheno.cli import app
from tilpheno.pipeline import attach_doses

SAMPLE = "sample_fcs"


def test_attach_doses_manifest_wins_and_missing_stay_nan():
    manifest = pd.DataFrame({"file": ["a", "b", "c"], "product_id": ["P1", "P2", "P3"],
                             "til_dose_cells": [7e9, None, None]})
    outcomes = pd.DataFrame({"product_id": ["P1", "P2"], "til_dose_cells": [1e9, 2e9]})
    out = attach_doses(manifest, outcomes)
    assert out["til_dose_cells"].tolist()[:2] == [7e9, 2e9]
    assert math.isnan(out["til_dose_cells"].iloc[2])
    assert "til_dose_cells" in attach_doses(manifest.drop(columns="til_dose_cells"), outcomes)


@pytest.fixture(scope="module")
def two_products(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    manifest = pd.read_csv(f"{SAMPLE}/manifest.csv", dtype=str, keep_default_na=False)
    manifest = manifest[manifest["product_id"].isin(["TIL001", "TIL002"])]
    for name in manifest["file"]:
        shutil.copy(f"{SAMPLE}/{name}", folder / name)
    manifest.to_csv(folder / "manifest.csv", index=False)
    outcomes = pd.read_csv(f"{SAMPLE}/outcomes.csv")
    outcomes[outcomes["product_id"].isin(["TIL001"])].to_csv(folder / "outcomes.csv", index=False)
    return folder, outcomes.set_index("product_id")["til_dose_cells"]


def test_process_with_outcomes_writes_doses(two_products, tmp_path):
    folder, doses = two_products
    result = CliRunner().invoke(app, ["process", str(folder), "-o", str(tmp_path / "out"),
                                      "--manifest", str(folder / "manifest.csv"),
                                      "--outcomes", str(folder / "outcomes.csv")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "out" / "phenotypes.csv").set_index("product_id")
    row = table.loc["TIL001"]
    dose = doses["TIL001"]
    cd3 = dose * row["cd3_pct_of_live_lymph"] / 100
    assert row["cd3_dose_cells"] == pytest.approx(cd3, rel=1e-12)
    assert row["cd8_dose_cells"] == pytest.approx(cd3 * row["cd8_pct_of_cd3"] / 100, rel=1e-12)
    assert row["cd8pd1_dose_cells"] == pytest.approx(cd3 * row["cd8pd1_pct_of_cd3"] / 100, rel=1e-12)
    assert math.isnan(table.loc["TIL002", "cd3_dose_cells"])  # no outcome row: no dose, not a guess
    # ... and said (it was silent): one run-level warning naming the outcomes file and the product
    qc = pd.read_csv(tmp_path / "out" / "qc.csv", keep_default_na=False)
    (flag,) = qc[qc["code"] == "no_dose"].itertuples(index=False)
    assert (flag.product_id, flag.file, flag.severity) == ("", "outcomes.csv", "warning")
    assert "no til_dose_cells for 1 product(s): TIL002;" in flag.message
    assert "no_dose 1 (warning)" in result.output
    # the report shows doses for reading, in 10^9 cells to 3 significant digits (the table keeps every digit)
    html = (tmp_path / "out" / "products" / "TIL001" / "report.html").read_text()
    shown = re.search(r'<td class="num">([^<]*)</td><td>cells</td><td></td><td class="muted">[^<]*</td><td class="ident">cd3_<wbr>dose_<wbr>cells<',
                      html).group(1)
    assert shown == f"{cd3 / 1e9:.3g} ×10⁹" and re.fullmatch(r"\d\.\d\d ×10⁹", shown)
    assert f"{cd3:.2f}" not in html


def test_process_reads_only_the_dose_columns_of_outcomes(two_products, tmp_path):
    """A lab's response-only outcomes table (no pfs/os columns: survival not followed yet) was
    refused by process ('missing required column(s): pfs_months, ...') though process reads only
    product_id and til_dose_cells -> the doses are read; a bad dose is still one line naming the
    file, row and column."""
    folder, doses = two_products
    table = pd.read_csv(f"{SAMPLE}/outcomes.csv")
    table = table[table["product_id"].isin(["TIL001", "TIL002"])][["patient_id", "product_id", "til_dose_cells",
                                                                   "best_response"]]
    table.to_csv(tmp_path / "response_only.csv", index=False)
    args = ["process", str(folder), "--manifest", str(folder / "manifest.csv")]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "out"), "--outcomes", str(tmp_path / "response_only.csv")])
    assert result.exit_code == 0, result.output
    phen = pd.read_csv(tmp_path / "out" / "phenotypes.csv").set_index("product_id")
    for pid in ("TIL001", "TIL002"):
        expected = table.set_index("product_id").loc[pid, "til_dose_cells"] * phen.loc[pid, "cd3_pct_of_live_lymph"] / 100
        assert phen.loc[pid, "cd3_dose_cells"] == pytest.approx(expected, rel=1e-12)
    table.assign(til_dose_cells=["6.8", "2730000000"]).to_csv(tmp_path / "bad.csv", index=False)
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "out2"), "--outcomes", str(tmp_path / "bad.csv")])
    assert result.exit_code == 2
    (line,) = [x for x in result.output.splitlines() if x.strip()]
    assert "bad.csv" in line and "row 2" in line and "til_dose_cells" in line and "1e+06 cells" in line


def test_allowed_unmatched_outcome_ids_are_recorded_in_qc_csv(two_products, tmp_path):
    """process --allow-unmatched: the outcome ids matching no product were printed on the terminal
    only, so OUT (qc.csv) did not say whose rows were left out -> a run-level unmatched_outcome
    warning in qc.csv naming the outcomes file and each id, as no_dose names products without a dose."""
    folder, _ = two_products
    table = pd.read_csv(folder / "outcomes.csv")
    extra = table.assign(product_id=["TIL0O1"], patient_id=["PX1"])   # a typo of TIL001 and a patient of no product
    pd.concat([table, extra, table.assign(product_id=["TIL777"], patient_id=["PX2"])]).to_csv(
        tmp_path / "outcomes.csv", index=False)
    result = CliRunner().invoke(app, ["process", str(folder), "-o", str(tmp_path / "out"),
                                      "--manifest", str(folder / "manifest.csv"),
                                      "--outcomes", str(tmp_path / "outcomes.csv"), "--allow-unmatched"])
    assert result.exit_code == 0, result.output
    qc = pd.read_csv(tmp_path / "out" / "qc.csv", keep_default_na=False)
    (flag,) = qc[qc["code"] == "unmatched_outcome"].itertuples(index=False)
    assert (flag.product_id, flag.file, flag.severity) == ("", "outcomes.csv", "warning")
    assert "2 product id(s) match no product" in flag.message and "TIL0O1, TIL777" in flag.message
    assert "unmatched_outcome 1 (warning)" in result.output


def test_the_index_lists_the_runs_own_findings(two_products, tmp_path):
    """Run-level flags (no_dose, unmatched_outcome: product id '') were in qc.csv and the terminal
    summary only; index.html, the page a lab opens first, showed every product done and said nothing
    of the outcomes table's problems -> a 'Findings of the run itself' table, each flag's severity,
    code, file and message as qc.csv has them."""
    import html as html_lib

    folder, _ = two_products
    table = pd.read_csv(folder / "outcomes.csv")
    pd.concat([table, table.assign(product_id=["TIL777"], patient_id=["PX2"])]).to_csv(tmp_path / "outcomes.csv",
                                                                                       index=False)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["process", str(folder), "-o", str(out), "--manifest", str(folder / "manifest.csv"),
                                      "--outcomes", str(tmp_path / "outcomes.csv"), "--allow-unmatched"])
    assert result.exit_code == 0, result.output
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False)
    run_level = qc[qc["product_id"] == ""]
    assert sorted(run_level["code"]) == ["no_dose", "unmatched_outcome"]
    page = (out / "index.html").read_text(encoding="utf-8")
    section = page.split('<table id="run-flags">')[1].split("</table>")[0]
    rows = re.findall(r"<tr><td><span class=\"badge (\w+)\">\w+</span></td><td>(\w+)</td><td>([^<]*)</td><td>([^<]*)</td></tr>",
                      section)
    assert sorted((sev, code, file, html_lib.unescape(msg)) for sev, code, file, msg in rows) == sorted(
        run_level[["severity", "code", "file", "message"]].itertuples(index=False, name=None))
    assert "Findings of the run itself (2)" in page
    clean = tmp_path / "clean"
    assert CliRunner().invoke(app, ["process", str(folder), "-o", str(clean), "--manifest",
                                    str(folder / "manifest.csv")]).exit_code == 0
    assert "run-flags" not in (clean / "index.html").read_text(encoding="utf-8")
