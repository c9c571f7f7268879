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


def test_the_demo_prints_the_biomarker_analysis_warnings_once(tmp_path, monkeypatch):
    """`tilpheno demo` printed the process steps' failures and flags but none of the biomarker analysis' warnings
    (default markers missing from the tables, patients missing a covariate), which only its report showed. Now the third
    step prints what `tilpheno biomarkers` prints: its patients and outputs, then each warning once, after the
    step's heading. The two process steps are stubbed (the reference cohort stands for the simulated one)."""
    import types

    import tilpheno.biomarkers.analysis as analysis
    import tilpheno.cli as cli
    import tilpheno.simulate.cohort as simulate

    ref = Path(__file__).parent / "reference"
    outcomes = pd.read_csv(ref / "til_cohort_outcomes.csv")
    outcomes.loc[:3, "age"] = None   # patients missing a covariate: a warning naming them
    outcomes.to_csv(tmp_path / "outcomes.csv", index=False)

    def process(folder, out, **kwargs):
        if folder == tmp_path / "fcs":
            out.mkdir(parents=True)
            phenotypes = pd.read_csv(ref / "til_cohort_phenotypes.csv")   # 2 of the study's markers: a faster run
            phenotypes[["product_id", "cd8_pct_of_cd3", "cd8pd1_pct_of_cd3"]].assign(status="done").to_csv(
                out / "phenotypes.csv", index=False)
        return types.SimpleNamespace(), frozenset()   # the summary, the failures printed as they failed

    monkeypatch.setattr(cli, "_run_with_progress", process)
    monkeypatch.setattr(cli, "_print_summary", lambda summary, shown: None)
    monkeypatch.setattr(simulate, "simulate_cohort", lambda out, n, seed, events: types.SimpleNamespace(
        out_dir=tmp_path / "fcs", manifest=None, outcomes=tmp_path / "outcomes.csv"))
    results = []
    run = analysis.run_biomarkers
    monkeypatch.setattr(analysis, "run_biomarkers", lambda *a, **k: results.append(run(*a, **k)) or results[-1])
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    warnings = results[0].warnings
    assert any("covariate(s) missing" in w for w in warnings) and any("default marker(s)" in w for w in warnings)
    after = result.output.split("3/3 biomarker analysis of the simulated cohort\n", 1)[1]
    assert after.startswith(f"60 patients with phenotypes and outcomes (60 with outcomes); 3 markers; times in months")
    for w in warnings:
        assert result.output.count(f"  warning: {w}\n") == 1, w
