"""Batch resilience, atomic outputs and safe reports (issue 6), on simulated products."""
from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tilpheno.cli import app
from tilpheno.pipeline import process_folder
from tilpheno.simulate.cohort import simulate_product, write_product

EVENTS = 2000
PLANTED_NAME = "Planted Patientname"
SCRIPT = "<script>alert('op')</script>"
IMG = '"><img src=x onerror=alert(1)>'


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def broken_folder(tmp_path_factory):
    """Four products: P1 intact; P2 with a truncated FMO file; P3 without its PD1 FMO; P4 only unstained;
    plus a PNG named .fcs."""
    folder = tmp_path_factory.mktemp("broken")
    for i, pid in enumerate(("P1", "P2", "P3", "P4")):
        write_product(simulate_product(pid, 100 + i, EVENTS), folder)
    truncated = folder / "P2_surface_FMO_CD4.fcs"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (folder / "P3_surface_FMO_PD1.fcs").unlink()
    for f in folder.glob("P4_*.fcs"):
        if f.name != "P4_unstained.fcs":
            f.unlink()
    (folder / "P5_surface_stain.fcs").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    return folder


def _product_with_an_fmo_cut_short(tmp_path):
    """A folder ``tmp_path/in`` of product P1 whose FMO file P1_surface_FMO_CD4.fcs is cut to half its size."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_product(simulate_product("P1", 100, EVENTS), folder)
    cut = folder / "P1_surface_FMO_CD4.fcs"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    return folder


def _done_but_not_ok(folder: Path, out: Path, line: str) -> dict:
    """``process FOLDER -o OUT`` of one product done without one of its files: exit status 1, the
    summary saying it is done (none failed) and naming the file (``line``); run.json's ``result``,
    not ok, returned."""
    import json

    result = CliRunner().invoke(app, ["process", str(folder), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert "1 of 1 products done, 0 failed" in result.output and line in result.output, result.output
    run = json.loads((out / "run.json").read_text())["result"]
    assert run["ok"] is False and run["failed"] == {}
    return run


def test_an_unreadable_fmo_file_makes_the_run_not_ok_though_its_product_is_done(tmp_path):
    """A product whose FMO file is cut short is done (its gate falls back, flagged), but the run did
    not read an input it was given: exit status 1, run.json's result not ok and naming the file, the
    summary's line naming it; the product is not called failed."""
    folder = _product_with_an_fmo_cut_short(tmp_path)
    out = tmp_path / "out"
    run = _done_but_not_ok(folder, out, "unreadable P1: P1_surface_FMO_CD4.fcs: ")
    assert run["done"] == ["P1"]
    assert len(run["unreadable"]) == 1 and run["unreadable"][0].startswith("P1: P1_surface_FMO_CD4.fcs: ")
    # `process --help` says so too: its exit statuses read "1 some product failed", not this case
    shown = " ".join(CliRunner().invoke(app, ["process", "--help"], terminal_width=200).output.split())
    assert ("0 every product done and every input file read, 1 some product failed (the others' outputs are "
            "complete) or an input file could not be read") in shown, shown


def test_an_fmo_that_is_the_stained_file_copied_is_not_used_and_holds_release(tmp_path):
    """TIL002's FoxP3 FMO replaced by a copy of its Treg stained file (a slip when renaming exports):
    the FoxP3 cut was set at the stained tube's own 99.5th percentile, CD4+FoxP3+ reported 0.5 % of
    CD4+ (truth, sample_fcs/truth.csv: 7.1 %), with no flag and the release 'pass'. Now the copy is
    flagged fmo_copy_of_stain (error) naming the stained file, not used (the gate falls back, as
    without an FMO: within 2 points of the truth), and the release waits for review; the run is not
    ok (exit status 1: it exited 0), as with an FMO file that cannot be read."""
    import json

    sample = Path(__file__).resolve().parents[1] / "sample_fcs"
    folder = tmp_path / "in"
    folder.mkdir()
    for f in sample.glob("TIL002_*.fcs"):
        shutil.copy(f, folder)
    shutil.copy(folder / "TIL002_treg_stain.fcs", folder / "TIL002_treg_FMO_FoxP3.fcs")
    before = _digests(folder)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["process", str(folder), "-o", str(out)])
    assert "1 of 1 products done" in result.output, result.output
    # an input file the run was given and could not use, as an unreadable one: exit status 1 (it was 0)
    assert result.exit_code == 1, result.output
    assert "unusable TIL002: TIL002_treg_FMO_FoxP3.fcs: fmo_copy_of_stain: the same bytes" in result.output
    run = json.loads((out / "run.json").read_text())["result"]
    assert run["ok"] is False and run["done"] == ["TIL002"] and run["unreadable"] == []
    assert [u.split(": ")[:3] for u in run["unusable"]] == [["TIL002", "TIL002_treg_FMO_FoxP3.fcs", "fmo_copy_of_stain"]]
    qc = pd.read_csv(out / "qc.csv")
    (copy,) = qc[qc["code"] == "fmo_copy_of_stain"].itertuples()
    assert copy.file == "TIL002_treg_FMO_FoxP3.fcs" and copy.severity == "error"
    assert "the same bytes as the stained file TIL002_treg_stain.fcs" in copy.message
    assert {"missing_fmo", "fallback_gate"} <= set(qc[qc["gate"] == "CD4+FoxP3+"]["code"])
    row = pd.read_csv(out / "phenotypes.csv").iloc[0]
    truth = pd.read_csv(sample / "truth.csv").set_index("product_id").loc["TIL002"]
    assert abs(row["cd4foxp3_pct_of_cd4"] - truth["cd4foxp3_pct_of_cd4"]) < 2.0
    assert row["release_status"] == "not evaluable" and row["review_status"] == "needs review"
    assert _digests(folder) == before


def test_an_fmo_with_a_panel_error_makes_the_run_not_ok_though_its_product_is_done(tmp_path):
    """P1's CD4 FMO file lacks the CD8 detector: a panel_error (error) drops it and its product is
    done without it (gate fallen back), but the run exited 0 with run.json's result ok. Now exit
    status 1, the summary's 'unusable' line and result.unusable name it, as an unreadable FMO's."""
    import numpy as np

    from tilpheno.io.fcs import read_fcs
    from tilpheno.io.fcs_write import write_fcs

    folder = tmp_path / "in"
    folder.mkdir()
    write_product(simulate_product("P1", 100, EVENTS), folder)
    fmo = folder / "P1_surface_FMO_CD4.fcs"
    fcs = read_fcs(fmo)
    keep = [i for i, s in enumerate(fcs.channels["pns"]) if "CD8" not in str(s)]
    assert len(keep) == len(fcs.channels["pns"]) - 1
    write_fcs(fmo, np.asarray(fcs.events)[:, keep].astype("float32"),
              [(fcs.channels["pnn"][i], fcs.channels["pns"][i] or None, float(fcs.channels["pnr"][i])) for i in keep],
              {k: v for k, v in fcs.keywords.items() if k in ("$SRC", "TUBE NAME", "$FIL")})
    run = _done_but_not_ok(folder, tmp_path / "out", "unusable P1: P1_surface_FMO_CD4.fcs: panel_error: ")
    assert run["done"] == ["P1"] and run["unreadable"] == []
    assert [u.split(": ")[:3] for u in run["unusable"]] == [["P1", "P1_surface_FMO_CD4.fcs", "panel_error"]]


def test_broken_batch_keeps_good_products(broken_folder, tmp_path):
    before = _digests(broken_folder)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["process", str(broken_folder), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert _digests(broken_folder) == before  # inputs never modified
    assert "failed P4" in result.output and "failed P5" in result.output
    assert "unreadable_file" in result.output and "missing_fmo" in result.output
    # the two failures say different things: P4's only file is a readable control, P5's stained file is unreadable
    assert "product P4: no stained tube, only controls (files: P4_unstained.fcs (unstained))" in result.output
    assert "product P5: no readable stained tube (files: P5_surface_stain.fcs (stain))" in result.output

    phen = pd.read_csv(out / "phenotypes.csv").set_index("product_id")
    assert phen.loc[["P1", "P2", "P3"], "status"].tolist() == ["done"] * 3
    assert phen.loc[["P4", "P5"], "status"].tolist() == ["failed"] * 2
    qc = pd.read_csv(out / "qc.csv")
    flagged = set(zip(qc["product_id"], qc["code"]))
    assert ("P2", "unreadable_file") in flagged and ("P5", "unreadable_file") in flagged
    assert ("P3", "missing_fmo") in flagged and ("P4", "product_failed") in flagged
    assert qc.loc[(qc["product_id"] == "P2") & (qc["code"] == "unreadable_file"), "file"].tolist() == ["P2_surface_FMO_CD4.fcs"]
    # run.json says so too, for a pipeline (LIMS, workflow manager) that reads it, not the exit status
    import json

    run = json.loads((out / "run.json").read_text())["result"]
    assert run["ok"] is False and run["errors"] == []
    assert [u.split(": ")[:2] for u in run["unreadable"]] == [["P2", "P2_surface_FMO_CD4.fcs"],
                                                              ["P5", "P5_surface_stain.fcs"]]
    assert run["done"] == phen.index[phen["status"] == "done"].tolist() == ["P1", "P2", "P3"]
    assert sorted(run["failed"]) == ["P4", "P5"]
    assert all(f"failed {pid}: {reason}" in " ".join(result.output.split()) for pid, reason in run["failed"].items())
    # the line printed as each product fails is whole: it was cut at 80 columns when stdout was no terminal (a log file)
    live = [x for x in result.output.splitlines() if x.startswith("failed ")]
    assert sorted(live) == sorted(f"failed {pid}: {reason}" for pid, reason in run["failed"].items()), live
    # ... and printed once: the summary names the failed products and counts them, their reasons above
    # (each reason was printed twice, live and again in the summary)
    for reason in run["failed"].values():
        assert result.output.count(reason) == 1, reason
    assert "3 of 5 products done, 2 failed in " in result.output
    assert "  failed (reasons above): P4, P5" in result.output.splitlines()
    for pid in ("P1", "P2", "P3", "P4", "P5"):
        assert (out / "products" / pid / "report.html").is_file()
    assert "could not be processed" in (out / "products" / "P4" / "report.html").read_text()

    # the good product's results are those of a clean run of that product alone
    alone = tmp_path / "alone"
    alone.mkdir()
    for f in broken_folder.glob("P1_*.fcs"):
        shutil.copy(f, alone / f.name)
    clean = process_folder(alone, tmp_path / "alone_out", make_reports=False)
    assert clean.ok
    assert json.loads((tmp_path / "alone_out" / "run.json").read_text())["result"] == {
        "ok": True, "done": ["P1"], "failed": {}, "errors": [], "unreadable": [],
        "unusable": []}
    ref = pd.read_csv(tmp_path / "alone_out" / "phenotypes.csv").set_index("product_id").loc["P1"]
    got = phen.loc["P1"]
    for col in ("viability_pct", "cd3_pct_of_live_lymph", "cd8pd1_pct_of_cd8", "cd4foxp3_pct_of_cd4", "n_events_total"):
        assert got[col] == ref[col], col


def test_interrupted_run_leaves_no_partial_files(small_cohort, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "phenotypes.csv").write_text("previous complete table\n")
    (out / "run.json").write_text('{"outputs": ["phenotypes.csv", "run.json"]}\n')

    def interrupt(_outcome):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        process_folder(small_cohort.out_dir, out, manifest_csv=small_cohort.manifest, on_outcome=interrupt,
                       overwrite=True)
    # outputs are staged and published only at the end: the previous run's folder is untouched
    assert sorted(p.name for p in out.iterdir() if p.name != ".cache") == ["phenotypes.csv", "run.json"]
    assert (out / "phenotypes.csv").read_text() == "previous complete table\n"
    assert not list(out.rglob("*.part"))
    # hidden entries: only the incremental-run store (complete, verified entries a re-run resumes from)
    assert [p.name for p in out.rglob(".*") if ".cache" not in p.relative_to(out).parts[1:]] in ([], [".cache"])
    assert not list((out / "products").rglob("report.html"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """One product whose FCS keywords carry a patient name and HTML payloads, a file name with markup,
    and a hostile product id (manifest)."""
    folder = tmp_path_factory.mktemp("planted")
    product = simulate_product("PX", 5, EVENTS)
    for t in product.tubes:
        t.keywords.update({"$PATIENTID": PLANTED_NAME, "$OP": SCRIPT, "$INST": IMG, "$SRC": PLANTED_NAME})
    hostile_file = product.tube("surface", "fmo", "PD1")
    hostile_file.file = f"PX_surface_FMO_PD1{IMG}.fcs"
    write_product(product, folder)
    pid = f"../../escape{IMG}"
    rows = [{"file": t.file, "product_id": pid, "tube": t.data.spec.tube, "role": t.data.spec.role,
             "fmo_marker": t.data.spec.fmo_marker or ""} for t in product.tubes]
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder


def _all_bytes(out: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file())


@pytest.mark.browser
def test_planted_identifiers_and_markup_never_leak_or_run(planted, tmp_path, browser):
    work = tmp_path / "work"
    out = work / "out"
    summary = process_folder(planted, out, manifest_csv=planted / "manifest.csv")
    assert summary.ok
    assert sorted(p.name for p in work.iterdir()) == ["out"]  # nothing written outside OUT
    blob = _all_bytes(out)
    assert PLANTED_NAME.encode() not in blob
    for html in out.rglob("*.html"):
        text = html.read_text()
        assert "<script>alert" not in text and "<img src=x" not in text
    reports = list((out / "products").glob("*/report.html"))
    assert len(reports) == 1 and ".." not in reports[0].parent.name
    for page in (reports[0], out / "index.html"):
        session, rep = browser.load(page.as_uri())
        assert rep.loaded and rep.problems == [] and rep.dialogs == []
        assert all(img["naturalWidth"] > 0 for img in rep.images)
        title = browser.evaluate(session, "document.querySelector('h1').textContent")
        assert "escape" in title or "cohort" in title
    shown = browser.evaluate(browser.load(reports[0].as_uri())[0], "document.body.textContent")
    assert "PX_surface_FMO_PD1" in shown and 'onerror=alert(1)>' in shown  # shown as text, not markup


def test_include_identifiers_opts_in(planted, tmp_path):
    out = tmp_path / "out"
    assert process_folder(planted, out, manifest_csv=planted / "manifest.csv", include_identifiers=True).ok
    report = next((out / "products").glob("*/report.html")).read_text()
    assert PLANTED_NAME in report and "&lt;script&gt;" in report


def _signalled_after_the_first_product(small_cohort, tmp_path, signame: str, jobs: int, previous: bool = True,
                                       after: int = 1, command: list[str] | None = None):
    """``tilpheno process`` (``tilpheno.launch.main``) into an OUT holding a previous run's files
    (``previous``; else a new OUT), the process sending itself ``signame`` once its first product is done (as in a terminal:
    SIGINT raises KeyboardInterrupt), before the run takes it in (``after`` 1), or once the run has
    taken in ``after - 1`` products (and stored them in its cache); the finished subprocess and OUT.
    ``command``: another command line to run so (``report OUT``), OUT left as the caller made it."""
    import subprocess
    import sys

    out = tmp_path / "out"
    if previous and command is None:
        out.mkdir()
        (out / "phenotypes.csv").write_text("previous complete table\n")
        (out / "run.json").write_text('{"outputs": ["phenotypes.csv", "run.json"]}\n')
    script = ("import os, signal, sys\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "from tilpheno.launch import main\n"   # the tilpheno script's entry point
              "from tilpheno.pipeline import outputs\n"
              "real = outputs.iter_outcomes\n"
              "def first_then_signal(*args, **kwargs):\n"
              "    for i, outcome in enumerate(real(*args, **kwargs), 1):\n"
              f"        if i >= {after}:\n"
              f"            os.kill(os.getpid(), signal.{signame})\n"
              "        yield outcome\n"
              "outputs.iter_outcomes = first_then_signal\n"
              "sys.argv = ['tilpheno', *sys.argv[1:]]\n"
              "main()\n")
    # stderr is inherited by the workers: run() returns once they have ended too
    argv = command or ["process", str(small_cohort.out_dir), "-o", str(out), "--manifest", str(small_cohort.manifest),
                       "--jobs", str(jobs), "--overwrite"]
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=300)
    return done, out


@pytest.mark.parametrize("signame, jobs, status, line", [
    ("SIGTERM", 2, 143, "error: terminated (SIGTERM) before the command finished"),
    ("SIGINT", 1, 130, "error: interrupted (Ctrl-C) before the command finished"),
    ("SIGINT", 2, 130, "error: interrupted (Ctrl-C) before the command finished"),
])
def test_a_signal_stops_the_run_cleanly(small_cohort, tmp_path, signame, jobs, status, line):
    """``kill`` (SIGTERM: a batch scheduler's time limit, ``docker stop``) mid-run with --jobs 2, or
    Ctrl-C (SIGINT): its exit status with one line, no traceback, OUT as it was (no staging folder
    left), the workers gone with the run. Before: on SIGTERM Python died at once (status -15),
    leaving its staging folder, and the orphaned workers printed BrokenPipeError tracebacks when
    their products ended; on Ctrl-C status 130 and not a word (Typer's silent exit)."""
    done, out = _signalled_after_the_first_product(small_cohort, tmp_path, signame, jobs)
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-2:] == [f"note: {out} was left as it was", line], done.stderr
    assert sorted(p.name for p in out.iterdir() if p.name not in (".cache", ".tilpheno.lock")) == \
        ["phenotypes.csv", "run.json"]
    assert (out / "phenotypes.csv").read_text() == "previous complete table\n"


def test_ctrl_c_into_a_new_out_says_what_it_left(small_cohort, tmp_path):
    """Ctrl-C once the first product is stored in the cache, OUT new: the run left OUT holding only
    that cache, and said only 'interrupted', while README said a killed run leaves OUT as it was
    -> a line says so, as a full disk's does (what the run created, what it holds)."""
    done, out = _signalled_after_the_first_product(small_cohort, tmp_path, "SIGINT", 1, previous=False, after=2)
    assert done.returncode == 130, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [".cache"]
    assert done.stderr.strip().splitlines()[-2:] == [
        f"note: no output was written to {out} (created by this run; it holds only .cache); its cache (.cache) "
        "keeps the finished products for the next run", "error: interrupted (Ctrl-C) before the command finished"], \
        done.stderr


@pytest.fixture(scope="module")
def processed_reports_later(small_cohort, tmp_path_factory):
    """The small cohort processed once with ``--reports later`` (library call): its output folder, which
    tests copy before they change it."""
    out = tmp_path_factory.mktemp("later") / "out"
    assert process_folder(small_cohort.out_dir, out, manifest_csv=small_cohort.manifest, reports="later").ok
    return out


@pytest.mark.parametrize("signame, status, line", [
    ("SIGTERM", 143, "error: terminated (SIGTERM) before the command finished"),
    ("SIGINT", 130, "error: interrupted (Ctrl-C) before the command finished"),
])
def test_a_signal_stops_report_cleanly_and_says_what_it_left(small_cohort, processed_reports_later, tmp_path, signame,
                                                             status, line):
    """`tilpheno report OUT` (after `process --reports later`) stopped by SIGTERM or Ctrl-C once its
    first report was drawn: OUT stayed as it was, but the command said only 'terminated', where
    `process` says what became of OUT -> the same `note:` line; OUT's run.json unchanged, no report
    published, and `report OUT` run again draws them all (exit 0). OUT: a copy of the one
    `process --reports later` run the two signals share."""
    out = tmp_path / "out"
    shutil.copytree(processed_reports_later, out, symlinks=True)
    record = (out / "run.json").read_bytes()
    done, _ = _signalled_after_the_first_product(small_cohort, tmp_path, signame, 1, command=["report", str(out)])
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-2:] == [f"note: {out} was left as it was", line], done.stderr
    assert (out / "run.json").read_bytes() == record and not list(out.glob("products/*/report.html"))
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.parent.name for p in out.glob("products/*/report.html")) == ["TIL001", "TIL002", "TIL003"]


def _manifest_missing(small_cohort, tmp_path):
    """The cohort's manifest with TIL002's treg stain renamed to a file that does not exist:
    (its path, its rows, the row's index)."""
    rows = pd.read_csv(small_cohort.manifest, dtype=str, keep_default_na=False)
    gone = rows.index[rows["file"] == "TIL002_treg_stain.fcs"].item()
    rows.loc[gone, "file"] = "TIL002_treg_stain_lost.fcs"
    manifest = tmp_path / "manifest.csv"
    rows.to_csv(manifest, index=False)
    return manifest, rows, gone


@pytest.fixture(scope="module")
def missing_file_run(small_cohort, tmp_path_factory):
    """``process`` of the small cohort with the manifest of :func:`_manifest_missing`, ``--reports
    later`` (CliRunner), made once for the two tests of that run, which only read its OUT (the one
    that draws its reports copies it first): (manifest path, its rows, the row's index, OUT, the
    invocation's result)."""
    work = tmp_path_factory.mktemp("missing")
    manifest, rows, gone = _manifest_missing(small_cohort, work)
    out = work / "out"
    result = CliRunner().invoke(app, ["process", str(small_cohort.out_dir), "--manifest", str(manifest),
                                      "-o", str(out), "--reports", "later"])
    return manifest, rows, gone, out, result


def test_a_missing_manifest_file_fails_its_product_only(small_cohort, processed, missing_file_run, tmp_path):
    """A manifest row naming a file that does not exist stopped the whole batch (exit 2, one line,
    nothing processed) -> it is that product's problem: TIL002 failed (its treg stain missing),
    named with the manifest's row and the path looked for; TIL001 and TIL003 processed as in a
    clean run; exit 1. A manifest that cannot be used at all (an unknown role) still stops (exit 2).
    The run is :func:`missing_file_run`'s (``--reports later``: the tables are those of any reports
    setting), shared with test_reports_of_a_run_with_a_missing_file_can_be_drawn_later."""
    manifest, rows, gone, out, result = missing_file_run
    assert result.exit_code == 1, result.output
    line = gone + 2   # the header is line 1
    why = (f"{manifest}: row {line}, column 'file': 'TIL002_treg_stain_lost.fcs' does not exist or is not a "
           f"regular file (looked for {small_cohort.out_dir / 'TIL002_treg_stain_lost.fcs'})")
    phen = pd.read_csv(out / "phenotypes.csv", keep_default_na=False).set_index("product_id")
    assert phen["status"].to_dict() == {"TIL001": "done", "TIL002": "failed", "TIL003": "done"}
    assert "no usable treg stained file" in phen.loc["TIL002", "error"] and why in phen.loc["TIL002", "error"]
    assert why in " ".join(result.output.split())
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False)
    assert qc.loc[qc["code"] == "unreadable_file", ["product_id", "file", "message"]].values.tolist() == [
        ["TIL002", "TIL002_treg_stain_lost.fcs", why]]
    clean = pd.read_csv(processed[0] / "phenotypes.csv").set_index("product_id")
    for pid in ("TIL001", "TIL003"):
        for col in ("viability_pct", "cd8pd1_pct_of_cd8", "cd4foxp3_pct_of_cd4"):
            assert float(phen.loc[pid, col]) == clean.loc[pid, col], (pid, col)

    unusable = tmp_path / "manifest.csv"
    rows.assign(role=rows["role"].where(rows.index != gone, "stained")).to_csv(unusable, index=False)
    result = CliRunner().invoke(app, ["process", str(small_cohort.out_dir), "--manifest", str(unusable),
                                      "-o", str(tmp_path / "out2")])
    assert result.exit_code == 2 and "unknown role 'stained'" in result.output
    assert not (tmp_path / "out2").exists()


def test_reports_of_a_run_with_a_missing_file_can_be_drawn_later(small_cohort, missing_file_run, tmp_path):
    """A run with a manifest file missing, --reports later: `tilpheno report OUT` refused the whole
    run ('input file changed or missing since the run', exit 2) though the file was missing then too
    -> the reports are drawn (exit 1: TIL002 still failed). The file appearing since is a change: refused.
    The run is :func:`missing_file_run`'s; its reports are drawn in a copy of its OUT."""
    *_, made, result = missing_file_run
    assert result.exit_code == 1, result.output
    assert not list(made.glob("products/*/report.html"))
    out = tmp_path / "out"
    shutil.copytree(made, out, symlinks=True)
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 1, result.output
    assert sorted(p.parent.name for p in out.glob("products/*/report.html")) == ["TIL001", "TIL002", "TIL003"]
    lost = small_cohort.out_dir / "TIL002_treg_stain_lost.fcs"
    shutil.copy(small_cohort.out_dir / "TIL002_treg_stain.fcs", lost)
    try:
        result = CliRunner().invoke(app, ["report", str(out)])
    finally:
        lost.unlink()
    assert result.exit_code == 2 and "TIL002_treg_stain_lost.fcs: input file changed or missing" in result.output


def test_two_files_of_one_name_are_told_apart_in_every_output(small_cohort, processed, tmp_path):
    """TIL001's surface stain in sub1/ and another stain of the same name in sub2/: populations.csv
    listed both as 'TIL001_surface_stain.fcs' (their rows indistinguishable) and the report named
    them alike, while qc.csv said sub1/... -> every output names them sub1/..., sub2/...; sub1's
    counts are those of the clean run of TIL001 (the same file)."""
    folder = tmp_path / "in"
    for sub in ("sub1", "sub2"):
        (folder / sub).mkdir(parents=True)
    for f in small_cohort.out_dir.glob("TIL001_*.fcs"):
        shutil.copy(f, folder / ("sub1" if f.name == "TIL001_surface_stain.fcs" else "") / f.name)
    shutil.copy(small_cohort.out_dir / "TIL002_surface_stain.fcs", folder / "sub2" / "TIL001_surface_stain.fcs")
    out = tmp_path / "out"
    process_folder(folder, out)
    pops = pd.read_csv(out / "populations.csv")
    stained = pops[pops["file"].str.endswith("TIL001_surface_stain.fcs")]
    assert sorted(set(stained["file"])) == ["sub1/TIL001_surface_stain.fcs", "sub2/TIL001_surface_stain.fcs"]
    clean = pd.read_csv(processed[0] / "populations.csv")
    clean = clean[(clean["product_id"] == "TIL001") & (clean["file"] == "TIL001_surface_stain.fcs")]
    sub1 = stained[stained["file"] == "sub1/TIL001_surface_stain.fcs"]
    assert sub1["count"].tolist() == clean["count"].tolist() and len(sub1) > 5
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False)
    (message,) = qc.loc[qc["code"] == "duplicate_tube", "message"]
    assert "(sub1/TIL001_surface_stain.fcs, sub2/TIL001_surface_stain.fcs)" in message
    report = (out / "products" / "TIL001" / "report.html").read_text()
    for name in ("sub1/TIL001_surface_stain.fcs", "sub2/TIL001_surface_stain.fcs"):
        assert f"<td>{name}</td>" in report, name
    # the unstained control's self-check names the stained file whose gates it applied
    checked = qc.loc[(qc["product_id"] == "TIL001") & (qc["code"] == "unstained_control"), "message"].tolist()
    named = sorted(m.split(" gates on ")[0] for m in checked if "surface_stain" in m.split(" gates on ")[0])
    assert named == ["the sub1/TIL001_surface_stain.fcs", "the sub2/TIL001_surface_stain.fcs"], checked


@pytest.mark.parametrize(("field", "value"), [
    ("parameters", 5), ("strategies", 5), ("inputs", ["P1_surface_stain.fcs"]), ("release_spec", "til"), ("inputs", 5),
    ("parameter_files", [1]), ("command_line", "tilpheno process"), ("parameters.jobs", "many"),
    ("parameters.fmo_percentile", "high"), ("parameters.study", 5), ("parameters.input_folder", None),
    ("strategies.0.sha256", None), ("inputs.0.sha256", 7), ("product_files", [1]), ("product_files.P9", 5),
    ("product_files.P9", {"stain.fcs": 5})])
def test_a_hand_edited_run_json_is_refused_in_one_line(processed, tmp_path, field, value):
    """A run.json edited by hand (a field of another type, or one ``report`` needs removed) ended
    ``tilpheno report`` and the review app's start in a traceback (AttributeError, TypeError,
    KeyError): now one line naming run.json and the field; nothing in OUT changes."""
    import json

    from tilpheno.review.regate import ReviewError, ReviewSource

    out = tmp_path / "out"
    shutil.copytree(processed[0], out)
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    *path, key = field.split(".")
    holder = run
    for step in path:
        holder = holder[int(step) if step.isdigit() else step]
    if value is None:
        del holder[key]
    else:
        holder[key] = value
    (out / "run.json").write_text(json.dumps(run), encoding="utf-8")
    before = _digests(out)
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    field = re.sub(r"\.(\d+)", r"[\1]", field)   # strategies.0.sha256 -> strategies[0].sha256
    assert line.startswith("error: ") and f"run.json: field {field}" in line
    assert _digests(out) == before
    if field != "parameters.input_folder":   # the review app does not read it
        with pytest.raises(ReviewError, match=rf"run\.json: field {re.escape(field)}"):
            ReviewSource(out)


@pytest.mark.parametrize("damage, said", [
    ("no run.json", "(OUT/run.json: No such file or directory)"),
    ("run.json a folder", "(OUT/run.json: Is a directory)"),
    ("run.json cut short", "(run.json is not complete JSON: "),
    ("no phenotypes.parquet", "(OUT/phenotypes.parquet: No such file or directory)"),
])
def test_report_of_a_folder_without_a_readable_run_says_which_file_in_words(processed, tmp_path, damage, said):
    """`tilpheno report` of a folder whose run.json is missing or a folder, or whose
    phenotypes.parquet is missing, said '(... [Errno 2] No such file or directory: 'OUT/run.json')',
    Python's repr of the error -> the file and the cause, as every other message; nothing changes."""
    out = tmp_path / "out"
    shutil.copytree(processed[0], out)
    run = out / "run.json"
    if damage == "run.json cut short":
        run.write_bytes(run.read_bytes()[:500])
    elif damage == "no phenotypes.parquet":
        (out / "phenotypes.parquet").unlink()
    else:
        run.unlink()
        if damage == "run.json a folder":
            run.mkdir()
    before = _digests(out)
    result = CliRunner().invoke(app, ["report", str(out)])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert errors[0].startswith(f"error: {out}: no readable run of `tilpheno process` here ")
    assert said.replace("OUT", str(out)) in errors[0] and "Errno" not in errors[0], errors[0]
    assert _digests(out) == before


def test_biomarkers_refuse_a_hand_edited_run_json_in_one_line(processed, small_cohort, tmp_path):
    """biomarkers takes the study from the run.json beside PHENOTYPES: its parameters edited into
    a number ended in AttributeError; now one line naming run.json and the field."""
    import json

    out = tmp_path / "out"
    shutil.copytree(processed[0], out)
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    (out / "run.json").write_text(json.dumps({**run, "parameters": 5}), encoding="utf-8")
    result = CliRunner().invoke(app, ["biomarkers", "--phenotypes", str(out / "phenotypes.csv"),
                                      "--outcomes", str(small_cohort.outcomes), "-o", str(tmp_path / "bm")])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ") and "run.json: field parameters is int 5" in line


@pytest.mark.parametrize(("table", "column"), [("populations.csv", "fmo_marker"), ("populations.csv", "tube"),
                                               ("phenotypes.csv", "product_id"), ("qc.csv", "product_id")])
def test_review_refuses_a_table_missing_a_column_at_start(processed, tmp_path, table, column):
    """A table of OUT with a column removed (edited in a spreadsheet) started the review app, whose
    every product then failed to import ("product TIL001: 'fmo_marker'" warnings; phenotypes.csv
    without product_id: a KeyError traceback): now ReviewSource, and so `tilpheno serve`, refuses
    at start in one line naming the file and the column."""
    from tilpheno.review.regate import ReviewError, ReviewSource

    out = tmp_path / "out"
    shutil.copytree(processed[0], out)
    frame = pd.read_csv(out / table, dtype=str, keep_default_na=False)
    frame.drop(columns=column).to_csv(out / table, index=False)
    with pytest.raises(ReviewError, match=rf"{table}: missing column\(s\) {column} "):
        ReviewSource(out)


def test_review_refuses_an_out_stopped_while_publishing(processed, tmp_path):
    """A run killed while publishing leaves OUT marked incomplete (new tables beside the old run's,
    run.json moved last): the review app served it as it was, for sign-off -> refused at start in
    one line naming OUT and the marker; after `tilpheno report` republishes it, served."""
    import json

    from tilpheno.io.outdir import INCOMPLETE_NAME
    from tilpheno.review.regate import ReviewError, ReviewSource

    out = tmp_path / "out"
    shutil.copytree(processed[0], out)
    outputs = json.loads((out / "run.json").read_text(encoding="utf-8"))["outputs"]
    (out / INCOMPLETE_NAME).write_text(json.dumps({"removing": outputs, "publishing": outputs}))
    with pytest.raises(ReviewError, match=rf"{re.escape(str(out))}: a run was stopped while publishing its outputs "
                                          rf"\({re.escape(INCOMPLETE_NAME)}\)"):
        ReviewSource(out)
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert not (out / INCOMPLETE_NAME).exists() and ReviewSource(out).product_ids()


def test_serve_refusing_out_says_nothing_of_a_database(processed, tmp_path):
    """`tilpheno serve OUT` on an OUT it refuses printed 'note: ... a new, empty one is made' before
    the error, and made none: now the error line alone (exit 2), no database beside OUT."""
    out = tmp_path / "out"
    shutil.copytree(processed[0], out)
    frame = pd.read_csv(out / "populations.csv", dtype=str, keep_default_na=False)
    frame.drop(columns="fmo_marker").to_csv(out / "populations.csv", index=False)
    result = CliRunner().invoke(app, ["serve", str(out), "--port", "18999"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ") and "populations.csv: missing column(s) fmo_marker" in line
    assert not list(tmp_path.glob("*.sqlite"))


def test_review_refuses_a_run_json_without_strategies(processed, tmp_path):
    """run.json's strategies emptied by hand: the review app started with no strategy and each
    product's re-gating then failed as 'inputs or software changed since the run' -> refused at
    start, naming run.json and the field."""
    import json

    from tilpheno.review.regate import ReviewError, ReviewSource

    out = tmp_path / "out"
    shutil.copytree(processed[0], out)
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    (out / "run.json").write_text(json.dumps({**run, "strategies": []}), encoding="utf-8")
    with pytest.raises(ReviewError, match=r"run\.json: field strategies lists none"):
        ReviewSource(out)


def test_report_of_a_run_that_was_not_ok_says_so_and_its_exit_statuses_are_documented(tmp_path):
    """`tilpheno report OUT` of a run whose process exited 1 (an FMO file cut short) draws the report,
    and exits 1 as process did, but said nothing of why beyond the summary, and its --help gave no
    exit statuses -> a warning line on stderr naming OUT and the count, the statuses in --help."""
    folder = _product_with_an_fmo_cut_short(tmp_path)
    out = tmp_path / "out"
    assert CliRunner().invoke(app, ["process", str(folder), "-o", str(out), "--reports", "later"]).exit_code == 1
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 1, result.output
    assert (out / "products" / "P1" / "report.html").is_file()
    assert result.stderr.splitlines() == [f"warning: {out}: reports drawn, but the run is not ok (1 input file "
                                          "unreadable), as its process exited 1: exit status 1"]
    shown = " ".join(CliRunner().invoke(app, ["report", "--help"], terminal_width=200).output.split())
    assert ("Exit status: 0 reports drawn and the run is ok (every product done, every input file read); 1 reports "
            "drawn, but the run is not ok") in shown, shown


def test_run_json_records_the_digest_of_the_unstained_control_bytes_gated(tmp_path, monkeypatch):
    """An unstained control is read twice: its metadata (is it readable?), then its events for the
    gates (``ProductResult.controls``). run.json took its SHA-256 from the first read, so a control
    replaced between the two was recorded ``changed: ...`` though every event the gates used came
    from the file now there. It now records the digest of the bytes gated: that of the replacing
    file (hashed here on its own), as for the stained and FMO files."""
    import json

    import tilpheno.pipeline.product as product_module

    folder, other = tmp_path / "in", tmp_path / "other"
    folder.mkdir()
    other.mkdir()
    write_product(simulate_product("P1", 100, EVENTS), folder)
    write_product(simulate_product("P1", 101, EVENTS), other)   # another acquisition of a control of P1
    control = folder / "P1_unstained.fcs"
    replacement = other / "P1_unstained.fcs"
    assert control.read_bytes() != replacement.read_bytes()
    read_metadata = product_module._read_metadata

    def read_then_replace(*args, **kwargs):   # the control is replaced just after the product's metadata read
        read = read_metadata(*args, **kwargs)
        shutil.copy(replacement, control)
        return read

    monkeypatch.setattr(product_module, "_read_metadata", read_then_replace)
    summary = process_folder(folder, tmp_path / "out", make_reports=False)
    assert summary.ok
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    [entry] = [i for i in run["inputs"] if Path(i["path"]).name == control.name]
    assert entry["sha256"] == hashlib.sha256(replacement.read_bytes()).hexdigest()


def test_run_json_records_the_digest_of_the_compensation_control_bytes_the_matrix_came_from(tmp_path, monkeypatch):
    """The single-stain controls are read once, when the product's matrix is estimated
    (``plan_compensation``), and were hashed again from the disk when the product's job ended: a
    control replaced meanwhile was recorded in run.json with the new file's SHA-256, bytes no part
    of the matrix came from. It now records the digest of the bytes the estimate read: the original
    control's (hashed here on its own copy, kept aside)."""
    import json

    import tilpheno.spillover as spillover_module
    from tilpheno.simulate.controls import simulate_controls

    folder = tmp_path / "in"
    write_product(simulate_product("TIL001", 21, EVENTS), folder)
    simulate_controls(folder / "controls", 6, n_events=3000)
    simulate_controls(tmp_path / "other", 7, n_events=3000)   # another acquisition of the same controls
    pe = "Compensation Controls_PE Stained Control.fcs"
    control, kept = folder / "controls" / pe, tmp_path / "kept.fcs"
    shutil.copy(control, kept)
    assert control.read_bytes() != (tmp_path / "other" / pe).read_bytes()
    plan = spillover_module.plan_compensation

    def plan_then_replace(*args, **kwargs):   # the control is replaced just after the matrix was estimated from it
        planned = plan(*args, **kwargs)
        shutil.copy(tmp_path / "other" / pe, control)
        return planned

    monkeypatch.setattr(spillover_module, "plan_compensation", plan_then_replace)
    summary = process_folder(folder, tmp_path / "out", make_reports=False)
    assert summary.ok
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    [entry] = [i for i in run["inputs"] if Path(i["path"]).name == pe]
    assert entry["sha256"] == hashlib.sha256(kept.read_bytes()).hexdigest()
