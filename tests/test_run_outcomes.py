"""Runs that never look like success when they are not (issues 11 and 16): the failed-product
definition, exit codes, output-folder ownership (lock, staging, --overwrite, stale temporaries)
and one-line file-system errors."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tilpheno.cli import app
from tilpheno.io.outdir import INCOMPLETE_NAME, LOCK_NAME, OutputFolder, OutputFolderError
from tilpheno.pipeline import process_folder
from tilpheno.simulate.cohort import simulate_product, write_product

EVENTS = 2000
GATING = Path(__file__).resolve().parents[1] / "tilpheno" / "studies" / "til"


@pytest.fixture(scope="module")
def two_products(tmp_path_factory):
    """Two intact simulated products P1, P2 (9 tubes each)."""
    folder = tmp_path_factory.mktemp("two")
    for i, pid in enumerate(("P1", "P2")):
        write_product(simulate_product(pid, 300 + i, EVENTS), folder)
    return folder


def _copy(folder: Path, dest: Path, keep=lambda name: True) -> Path:
    dest.mkdir(parents=True)
    for f in folder.glob("*.fcs"):
        if keep(f.name):
            shutil.copy(f, dest / f.name)
    return dest


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file of OUT but the incremental-run store (OUT/.cache: complete, verified entries of the
    products a failed run finished, kept so that the next run resumes; not outputs)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).parts[0] != ".cache"}


@pytest.fixture
def gated(monkeypatch) -> list[str]:
    """The ids of the products gated in this test, in order (``--jobs 1``: in this process)."""
    from tilpheno.pipeline import executors

    ids: list[str] = []
    run = executors.run_product
    monkeypatch.setattr(executors, "run_product", lambda job: ids.append(job.product_id) or run(job))
    return ids


def _process(*args):
    return CliRunner().invoke(app, ["process", *map(str, args)])


# --- the failed-product definition and exit codes ------------------------------------------------


def test_truncated_stained_tube_fails_the_product(two_products, tmp_path):
    folder = _copy(two_products, tmp_path / "in")
    stained = folder / "P2_treg_stain.fcs"
    stained.write_bytes(stained.read_bytes()[: stained.stat().st_size // 2])
    result = _process(folder, "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    phen = pd.read_csv(tmp_path / "out" / "phenotypes.csv").set_index("product_id")
    assert phen.loc["P1", "status"] == "done" and phen.loc["P2", "status"] == "failed"
    assert "no usable treg stained file" in phen.loc["P2", "error"]
    assert "P2_treg_stain.fcs" in phen.loc["P2", "error"]
    assert "panel_error" not in phen.loc["P2", "error"]   # its FMO is not read without a stained file
    assert phen.loc["P2", "release_status"] == "not evaluable"
    assert "failed P2" in result.output
    # "needs review" in phenotypes.csv, and in qc.csv the flag that holds it is the failure itself
    assert phen.loc["P2", "review_status"] == "needs review"
    qc = pd.read_csv(tmp_path / "out" / "qc.csv")
    held = qc[(qc["product_id"] == "P2") & qc["needs_review"]]
    assert set(held["code"]) == {"product_failed"}, held
    report = (tmp_path / "out" / "products" / "P2" / "report.html").read_text()
    assert re.search(r"<td>product_failed</td><td><span class=\"badge needs-review\">yes</span>", report)


def test_a_broken_file_named_like_another_is_told_apart_in_qc(two_products, tmp_path):
    """The same FMO file name in a subfolder, that copy truncated: qc.csv named the broken file
    by its name only, which is also the good file's name (the lab would check the good one). Now
    it is named as scan's manifest names it, relative to the folder: sub/<name>."""
    folder = _copy(two_products, tmp_path / "in", keep=lambda n: n.startswith("P1_"))
    (folder / "sub").mkdir()
    good = folder / "P1_surface_FMO_PD1.fcs"
    (folder / "sub" / good.name).write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = tmp_path / "out"
    result = _process(folder, "-o", out)
    assert result.exit_code == 1, result.output   # product done, but an input was unreadable
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False)
    broken = qc[qc["code"] == "unreadable_file"]
    assert broken["file"].tolist() == [f"sub/{good.name}"]
    assert (qc["file"] == "P1_surface_stain.fcs").any()   # a file of its own name keeps it


def test_missing_tube_kind_fails_the_product(two_products, tmp_path):
    folder = _copy(two_products, tmp_path / "in", keep=lambda n: not (n.startswith("P1_treg")))
    summary = process_folder(folder, tmp_path / "out", make_reports=False)
    assert summary.failed.keys() == {"P1"} and summary.done == ["P2"]
    assert "no treg stained file in the manifest" in summary.failed["P1"]


def test_every_file_with_a_panel_error_fails_the_product(two_products, tmp_path):
    """A panel that names no marker the strategies need: every file raises panel_error."""
    from tilpheno.io.fcs import read_fcs
    from tilpheno.io.fcs_write import write_fcs

    folder = tmp_path / "in"
    folder.mkdir()
    for f in two_products.glob("P1_*.fcs"):
        fcs = read_fcs(f)
        channels = [(n, None, float(r)) for n, r in zip(fcs.channels["pnn"], fcs.channels["pnr"])]
        keywords = {k: v for k, v in fcs.keywords.items() if k in ("$SRC", "TUBE NAME", "$FIL")}
        write_fcs(folder / f.name, fcs.events.astype("float32"), channels, keywords)
    rows = [{"file": f.name, "product_id": "P1", "tube": f.name.split("_")[1] if "unstained" not in f.name else "unstained",
             "role": "unstained" if "unstained" in f.name else ("fmo" if "FMO" in f.name else "stain"),
             "fmo_marker": f.stem.split("FMO_")[1] if "FMO" in f.name else ""} for f in folder.glob("*.fcs")]
    pd.DataFrame(rows).to_csv(folder / "m.csv", index=False)
    summary = process_folder(folder, tmp_path / "out", manifest_csv=folder / "m.csv", make_reports=False)
    assert summary.failed.keys() == {"P1"} and not summary.ok
    assert "panel_error" in summary.failed["P1"]
    assert summary.flag_counts["panel_error"] >= 2 and summary.flag_counts["product_failed"] == 1
    assert summary.flag_severity["panel_error"] == summary.flag_severity["product_failed"] == "error"


def test_a_panel_errors_failure_names_the_markers_whatever_the_folder_is_called(two_products, tmp_path):
    """A folder named 'run; channels 2': the product's failure cut each panel error's message at the
    first '; channels' (where the file's channel list was taken to start), inside the file's path, and
    said 'P1_surface_stain.fcs: panel_error: /.../run' -> the markers not found, as in any folder
    (the error carries its problem apart from the channels: nothing is parsed out of the text)."""
    from tilpheno.io.fcs import read_fcs
    from tilpheno.io.fcs_write import write_fcs

    folder = tmp_path / "run; channels 2"
    folder.mkdir()
    for f in two_products.glob("P1_*_stain.fcs"):   # the stained files without their labels: no marker found
        fcs = read_fcs(f)
        channels = [(n, None, float(r)) for n, r in zip(fcs.channels["pnn"], fcs.channels["pnr"])]
        keywords = {k: v for k, v in fcs.keywords.items() if k in ("$SRC", "TUBE NAME", "$FIL")}
        write_fcs(folder / f.name, fcs.events.astype("float32"), channels, keywords)
    pd.DataFrame([{"file": f.name, "product_id": "P1", "tube": f.name.split("_")[1], "role": "stain"}
                  for f in sorted(folder.glob("*.fcs"))]).to_csv(folder / "m.csv", index=False)
    summary = process_folder(folder, tmp_path / "out", manifest_csv=folder / "m.csv", make_reports=False)
    reason = summary.failed["P1"]
    for f in sorted(folder.glob("*.fcs")):
        assert re.search(rf"{f.name}: panel_error: marker\(s\) [^;]+ not found", reason), reason
    assert str(folder) not in reason, reason


def test_a_gate_failing_on_the_stained_tube_is_named_despite_the_unstained_control(two_products, tmp_path):
    """A stained file with 5 events: its gates fail (gate_failed); the unstained control's self-check
    skips the populations below them instead of hiding the file's own reason behind a tree error."""
    from tilpheno.io.fcs import read_fcs
    from tilpheno.io.fcs_write import write_fcs

    folder = _copy(two_products, tmp_path / "in", keep=lambda n: n.startswith("P1_"))
    stained = folder / "P1_surface_stain.fcs"
    fcs = read_fcs(stained)
    channels = [(n, s or None, float(r)) for n, s, r in zip(fcs.channels["pnn"], fcs.channels["pns"], fcs.channels["pnr"])]
    keywords = {k: v for k, v in fcs.keywords.items() if k in ("$SRC", "TUBE NAME", "$FIL")}
    write_fcs(stained, fcs.events[:5].astype("float32"), channels, keywords, spillover=fcs.spillover)
    summary = process_folder(folder, tmp_path / "out", make_reports=False)
    assert summary.failed.keys() == {"P1"}
    assert "P1_surface_stain.fcs: gate failed (cells (FSC-A/SSC-A): " in summary.failed["P1"]
    assert "only 5 events" in summary.failed["P1"]
    assert "has not been evaluated" not in summary.failed["P1"]


def test_no_fcs_files_is_an_error_and_out_is_untouched(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no cytometry here\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "phenotypes.csv").write_text("an earlier table\n")
    before = _tree(out)
    result = _process(empty, "-o", out, "--overwrite")
    assert result.exit_code == 2
    assert "no FCS files" in result.output and str(empty) in result.output
    assert len(result.output.strip().splitlines()) == 1   # one line, no traceback
    assert _tree(out) == before


def test_strategy_set_leaving_a_tube_kind_ungated_is_flagged(two_products, tmp_path):
    summary = process_folder(two_products, tmp_path / "out", strategy_paths=[GATING / "til_surface.yaml"],
                             make_reports=False)
    assert summary.ok and summary.flag_counts["ungated_tube"] == 2
    qc = pd.read_csv(tmp_path / "out" / "qc.csv")
    message = qc.loc[(qc["code"] == "ungated_tube") & (qc["product_id"] == "P1"), "message"].item()
    assert "2 treg file(s) not gated" in message and "P1_treg_stain.fcs" in message


def test_outcome_ids_matching_no_product(two_products, tmp_path):
    outcomes = pd.DataFrame({
        "patient_id": ["A", "B", "C"], "product_id": ["P1", "P2", "P3x"],
        "til_dose_cells": [5e9, 6e9, 7e9], "best_response": ["PR", "SD", "PD"],
        "pfs_months": [5.0, 3.0, 2.0], "pfs_event": [1, 1, 1], "os_months": [9.0, 8.0, 7.0], "os_event": [0, 1, 1],
    })
    path = tmp_path / "outcomes.csv"
    outcomes.to_csv(path, index=False)
    out = tmp_path / "out"
    result = _process(two_products, "-o", out, "--outcomes", path)
    assert result.exit_code == 2 and "P3x" in result.output and "--allow-unmatched" in result.output
    assert not out.exists() or not any(p for p in out.iterdir() if p.name != LOCK_NAME)
    summary = process_folder(two_products, out, outcomes_path=path, allow_unmatched=True, make_reports=False)
    assert summary.ok
    phen = pd.read_csv(out / "phenotypes.csv").set_index("product_id")
    assert phen.loc["P1", "cd3_dose_cells"] > 0


def test_an_outcome_id_in_another_case_gets_a_hint(two_products, tmp_path):
    """A sample sheet's ``p1`` for the folder's product P1: the error offers P1 (the hint used to
    compare case-sensitively and offered nothing for a one-letter difference in case)."""
    outcomes = pd.DataFrame({
        "patient_id": ["A"], "product_id": ["p1"], "til_dose_cells": [5e9], "best_response": ["PR"],
        "pfs_months": [5.0], "pfs_event": [1], "os_months": [9.0], "os_event": [0],
    })
    path = tmp_path / "outcomes.csv"
    outcomes.to_csv(path, index=False)
    result = _process(two_products, "-o", tmp_path / "out", "--outcomes", path)
    assert result.exit_code == 2 and "p1 (did you mean P1?)" in result.output, result.output


def test_version():
    from tilpheno import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"tilpheno {__version__}"


# --- output-folder ownership ------------------------------------------------------------------


def test_second_run_into_a_locked_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    with OutputFolder.claim(out) as first:
        with pytest.raises(OutputFolderError, match="another tilpheno run is writing to this folder"):
            OutputFolder.claim(out, overwrite=True)
        assert f"pid {os.getpid()}" in (out / LOCK_NAME).read_text()
        assert first.staging.is_dir() and first.staging.parent == out
    assert not out.exists()   # made by the claim, left empty: removed with its lock


def test_a_killed_runs_lock_and_temporaries_do_not_block_the_next_run(tmp_path):
    out = tmp_path / "out"
    (out / ".tilpheno-staging-abc123" / "products" / "X").mkdir(parents=True)
    (out / ".tilpheno-staging-abc123" / "products" / "X" / "report.html").write_text("stale")
    (out / LOCK_NAME).write_text("pid 999999 on a host, run killed")   # no process holds its flock
    (out / ".phenotypes.csv.x1y2.part").write_text("half")
    with OutputFolder.claim(out) as folder:
        assert sorted(folder.stale_removed) == [".phenotypes.csv.x1y2.part", ".tilpheno-staging-abc123"]
    assert list(out.iterdir()) == []


@pytest.mark.slow   # two full runs with reports
def test_overwrite_removes_what_the_previous_run_wrote(two_products, tmp_path):
    out = tmp_path / "out"
    process_folder(two_products, out)
    assert (out / "products" / "P1" / "report.html").is_file()
    (out / "my_notes.txt").write_text("mine\n")
    only_p2 = _copy(two_products, tmp_path / "p2", keep=lambda n: n.startswith("P2_"))
    with pytest.raises(OutputFolderError, match="already holds the outputs of a previous run"):
        process_folder(only_p2, out)
    process_folder(only_p2, out, overwrite=True)
    assert not (out / "products" / "P1").exists()          # the earlier run's report is gone
    assert (out / "products" / "P2" / "report.html").is_file()
    assert (out / "my_notes.txt").read_text() == "mine\n"   # not the previous run's: kept
    run = json.loads((out / "run.json").read_text())
    assert "products/P1/report.html" in run["output_folder"]["removed_previous_outputs"]
    assert run["output_folder"]["kept_other_entries"] == ["my_notes.txt"]
    assert set(run["outputs"]) == {str(p.relative_to(out)) for p in out.rglob("*")
                                   if p.is_file() and p.relative_to(out).parts[0] != ".cache"} - {"my_notes.txt"}
    assert list(pd.read_csv(out / "phenotypes.csv")["product_id"]) == ["P2"]
    assert not list(out.glob(".tilpheno*"))


def test_a_run_killed_while_publishing_marks_the_folder_incomplete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "phenotypes.csv").write_text("half published\n")
    (out / INCOMPLETE_NAME).write_text(json.dumps({"removing": [], "publishing": ["phenotypes.csv", "../../etc/x"]}))
    with pytest.raises(OutputFolderError, match="killed while publishing"):
        OutputFolder.claim(out)
    with OutputFolder.claim(out, overwrite=True) as folder:
        assert folder.previous == [INCOMPLETE_NAME, "phenotypes.csv"]   # the path outside OUT is ignored
        (folder.staging / "qc.csv").write_text("new\n")
        folder.publish()
    assert sorted(p.name for p in out.iterdir()) == ["qc.csv"]


def test_foreign_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.docx").write_text("x")
    with pytest.raises(OutputFolderError, match=r"is not empty \(thesis.docx\) and holds no tilpheno run"):
        OutputFolder.claim(out)


def test_overwrite_never_replaces_a_file_no_previous_run_wrote(two_products, tmp_path, gated):
    """--overwrite replaces what a previous run wrote and keeps other files: a lab's own qc.csv in
    OUT (no run.json) was listed as kept in run.json and silently replaced by the run's qc.csv.
    Now refused in one line naming it, before any product is gated; the file untouched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "qc.csv").write_text("the lab's own QC notes\n")
    result = _process(two_products, "-o", out, "--overwrite")
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {out / 'qc.csv'}: this run writes a file of that name, and it is not the output of a previous run "
        "(no run.json lists it); move it away or choose another output folder")
    assert gated == [] and sorted(p.name for p in out.iterdir()) == ["qc.csv"]
    assert (out / "qc.csv").read_text() == "the lab's own QC notes\n"


def test_publish_never_replaces_a_file_no_previous_run_wrote(tmp_path):
    """The same at publishing, for any output (biomarkers claims its folder with overwrite: a
    report.html of the user's in BIO was replaced): refused before anything is moved or removed."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("mine\n")
    (out / "notes.txt").write_text("kept\n")
    with OutputFolder.claim(out, overwrite=True) as folder:
        (folder.staging / "report.html").write_text("new\n")
        (folder.staging / "km.csv").write_text("new\n")
        with pytest.raises(OutputFolderError, match=r"report.html: this run writes a file of that name, .*; nothing "
                                                    "was published"):
            folder.publish()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "report.html"]
    assert (out / "report.html").read_text() == "mine\n"


# --- one-line errors for file-system failures ---------------------------------------------------


def test_out_is_a_file(two_products, tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("a file\n")
    result = _process(two_products, "-o", out)
    assert result.exit_code == 2 and "exists and is not a folder" in result.output
    # one line: the folder is refused before any progress bar starts
    assert result.output.strip().splitlines() == [f"error: {out}: exists and is not a folder; choose another "
                                                  "output folder"], result.output
    assert out.read_text() == "a file\n"


def test_a_file_in_place_of_the_cache_is_refused_before_gating(two_products, tmp_path, gated):
    """OUT/.cache a file (not tilpheno's store): one line naming it, and no product gated first."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".cache").write_text("not a folder\n")
    result = _process(two_products, "-o", out)
    assert result.exit_code == 2, result.output
    line = [l for l in result.output.splitlines() if l.startswith("error:")]
    assert len(line) == 1 and f"{out / '.cache'}" in line[0] and "is a file, not a folder" in line[0], result.output
    assert gated == []
    assert [p.name for p in out.iterdir()] == [".cache"] and (out / ".cache").read_text() == "not a folder\n"


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk full"), (errno.EROFS, "read-only file system"),
                                         (errno.EACCES, "permission denied")])
def test_disk_full_and_read_only_out_give_one_line(two_products, tmp_path, monkeypatch, code, words):
    """The file system's answer is simulated (tests run as root, which ignores permission bits)."""
    from tilpheno.io import atomic

    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text('{"outputs": ["run.json"]}\n')
    before = _tree(out)

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(out / "phenotypes.csv"))

    monkeypatch.setattr(atomic, "write_csv", refuse)
    result = _process(two_products, "-o", out, "--overwrite")
    assert result.exit_code == 2, result.output
    line = [l for l in result.output.splitlines() if l.startswith("error:")]
    assert len(line) == 1 and words in line[0].lower() and "phenotypes.csv" in line[0], result.output
    assert line[0].lower().count(words) == 1, result.output   # said once, not repeated as a hint
    assert "Traceback" not in result.output
    assert _tree(out) == before and not list(out.glob(".tilpheno*"))


def test_a_disk_full_into_a_new_out_says_what_it_left(two_products, tmp_path, monkeypatch):
    """OUT did not exist: the line used to end '<OUT> was left as it was'; the run created OUT and
    left its cache there, so the line now says that (and the next run re-uses the cache)."""
    from tilpheno.io import atomic

    out = tmp_path / "new" / "out"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(atomic, "write_csv", full)
        result = _process(two_products, "-o", out)
    line = [l for l in result.output.splitlines() if l.startswith("error:")]
    assert result.exit_code == 2 and len(line) == 1, result.output
    assert sorted(p.name for p in out.iterdir()) == [".cache"]
    assert line[0].endswith(f"; no output was written to {out} (created by this run; it holds only .cache); "
                            "its cache (.cache) keeps the finished products for the next run"), result.output
    assert _process(two_products, "-o", out).exit_code == 0


@pytest.mark.parametrize("created", [False, True])
def test_an_out_stopped_while_publishing_is_said_to_be_incomplete(tmp_path, created):
    """A run stopped (Ctrl-C, SIGTERM) while it published left OUT marked incomplete, some outputs
    moved: what the run says of OUT is that, not 'left as it was' nor 'no output was written'."""
    from tilpheno.io.outdir import INCOMPLETE_NAME, left_behind

    (tmp_path / INCOMPLETE_NAME).write_text("{}\n")
    (tmp_path / "qc.csv").write_text("moved in\n")
    assert left_behind(tmp_path, created) == (f"{tmp_path} is marked incomplete ({INCOMPLETE_NAME}): `tilpheno "
                                              f"report {tmp_path}` or `process --overwrite` publishes it again")


@pytest.mark.parametrize("code", [errno.EROFS, errno.EDQUOT, errno.EPERM, errno.EACCES])
def test_a_hint_does_not_repeat_what_the_system_said(code):
    """The system's text ("Read-only file system", "Permission denied") already says what the hint
    would: said once."""
    from tilpheno.io.outdir import describe_os_error

    text = describe_os_error(OSError(code, os.strerror(code), "/o/phenotypes.csv"))
    assert text == f"/o/phenotypes.csv: {os.strerror(code)}"


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk full"), (errno.EROFS, "read-only file system"),
                                         (errno.EACCES, "permission denied")])
def test_a_hint_is_kept_where_it_adds_plain_words(code, words):
    """"No space left on device (disk full)"; an error with no system text still gets its hint."""
    from tilpheno.io.outdir import describe_os_error

    assert describe_os_error(OSError(code, os.strerror(code)), "/o").endswith(f"({words})") == (code == errno.ENOSPC)
    assert describe_os_error(OSError(code, ""), "/o").endswith(f"({words})")


def test_a_malformed_spillover_keyword_is_named_not_called_missing(two_products, tmp_path):
    """A file whose $SPILLOVER cannot be parsed is left uncompensated (a tolerated quirk); its
    no_compensation flag says why, not 'no $SPILLOVER in the file'."""
    from tilpheno.io.fcs import read_fcs
    from tilpheno.io.fcs_write import write_fcs

    folder = _copy(two_products, tmp_path / "in", keep=lambda n: n.startswith("P1_"))
    stained = folder / "P1_surface_stain.fcs"
    fcs = read_fcs(stained)
    channels = [(n, s or None, float(r)) for n, s, r in zip(fcs.channels["pnn"], fcs.channels["pns"], fcs.channels["pnr"])]
    keywords = {k: v for k, v in fcs.keywords.items() if k in ("$SRC", "TUBE NAME", "$FIL")}
    write_fcs(stained, fcs.events.astype("float32"), channels, {**keywords, "$SPILLOVER": "7,FITC-A,PE-A,1.0,0.2"})
    process_folder(folder, tmp_path / "out", make_reports=False)
    qc = pd.read_csv(tmp_path / "out" / "qc.csv")
    [message] = qc.loc[(qc["code"] == "no_compensation") & (qc["file"] == "P1_surface_stain.fcs"), "message"]
    assert message.startswith("spillover keyword ignored: P1_surface_stain.fcs keyword $SPILLOVER: expected 57")
    assert message.endswith("; no override matrix: data left uncompensated")
    assert str(folder) not in message
