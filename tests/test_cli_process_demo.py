"""`tilpheno demo` (what `make demo` runs), on a smaller simulated cohort than the default 60 products."""
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tilpheno.cli import app


@pytest.mark.slow   # the whole demo chain
def test_demo_runs_the_whole_chain(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--products", "12", "--events", "1000",
                                       "--bootstrap", "10"])
    assert result.exit_code == 0, result.output
    sample = pd.read_csv(out / "sample" / "phenotypes.csv")
    committed = pd.read_csv(Path(__file__).parents[1] / "sample_fcs" / "manifest.csv")
    assert sorted(sample["product_id"]) == sorted(committed["product_id"].unique())
    assert (sample["status"] == "done").all()
    for pid in sample["product_id"]:
        assert (out / "sample" / "products" / pid / "report.html").is_file()
    cohort = pd.read_csv(out / "cohort" / "phenotypes.csv")
    assert len(cohort) == 12 and (cohort["status"] == "done").all()
    for name in ("response.csv", "km.csv", "cutpoints.csv", "report.html"):
        assert (out / "biomarkers" / name).is_file(), name
    assert str(out / "sample" / "index.html") in result.output
    # the sample run's summary line: every code of qc.csv with its count and worst severity
    qc = pd.read_csv(out / "sample" / "qc.csv")
    line = next(x for x in result.output.splitlines() if x.startswith("QC flags: "))
    rank = {"info": 0, "warning": 1, "error": 2}
    for code, rows in qc.groupby("code"):
        worst = max(rows["severity"], key=rank.__getitem__)
        assert f"{code} {len(rows)} ({worst})" in line, (code, line)
