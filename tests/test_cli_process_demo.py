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


def test_the_demo_run_again_says_the_review_database_holds_decisions(tmp_path, monkeypatch):
    """The demo closes by sending the user to review its sample products (`tilpheno serve demo_out/sample`); run
    again (`make demo` twice), its first step re-processes demo_out/sample over the QA decisions in
    demo_out/sample.review.sqlite and said nothing of them, where `tilpheno process` closes with a note naming
    their products (README, "Output folder"). Now the demo's first step closes with the same note. TIL001 stands
    for the six sample products; the cohort's simulation raises, ending the demo after its first step."""
    import shutil

    from review_support import PASSWORDS, SAMPLE, make_service
    from sqlalchemy import select

    import tilpheno.cli as cli
    import tilpheno.simulate.cohort as simulate
    from tilpheno.review.db import default_db_path
    from tilpheno.review.models import User

    sample = tmp_path / "sample_fcs"
    sample.mkdir()
    for name in ("manifest.csv", "outcomes.csv"):
        table = pd.read_csv(SAMPLE / name, dtype=str, keep_default_na=False)
        table[table["product_id"] == "TIL001"].to_csv(sample / name, index=False)
    for name in pd.read_csv(sample / "manifest.csv")["file"]:
        shutil.copy(SAMPLE / name, sample / name)

    def stop(*args, **kwargs):
        raise OSError("the test stops the demo after its first step")

    monkeypatch.setattr(cli, "_sample_folder", lambda: sample)
    monkeypatch.setattr(simulate, "simulate_cohort", stop)
    out = tmp_path / "demo" / "sample"

    def demo() -> str:
        result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--jobs", "1"])
        assert result.exit_code == 2 and "the test stops the demo" in result.output, result.output
        return " ".join(result.output.split())

    assert "note:" not in demo()                                 # no review database beside demo_out/sample yet
    service = make_service(out, f"sqlite:///{default_db_path(out)}")
    with service.factory() as db:
        alice = db.scalar(select(User).where(User.username == "alice"))
    service.sign("TIL001", alice.id, PASSWORDS["alice"], "rejected", service.current_version("TIL001"), {},
                 comment="CD3+ gate too low")
    service.factory.kw["bind"].dispose()
    said = demo()
    assert (f"note: {default_db_path(out)} holds QA decisions (approvals or rejections) of TIL001: kept" in said
            and f"`tilpheno serve {out}` lists them as 're-run after signing: needs review'" in said), said
