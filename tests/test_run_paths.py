"""run.json names its files so that the review app and ``tilpheno report`` work from any directory.

A lab runs ``tilpheno process`` from the folder it works in, with relative paths (the FCS folder,
``--panel``, ``--strategy``); the reviewer starts ``tilpheno serve`` elsewhere, days later. The run
is made here on the real FlowAtlas exports (``tests/data/realdata_flowatlas``: no $PnS on the 412C
file, so the panel file is needed to gate it) from the repository root with relative paths, then
read back from another directory.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tilpheno.errors import TilphenoError
from tilpheno.pipeline import process_folder
from tilpheno.pipeline.record import rerun_arguments
from tilpheno.review.regate import ReviewError, ReviewSource

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("tests/data/realdata_flowatlas")   # relative to ROOT, as a lab would type it


@pytest.fixture()
def relative_run(tmp_path, monkeypatch):
    """One FlowAtlas file processed from ROOT with relative folder, panel and strategy paths; the
    panel is a copy in ``tmp_path`` (so that a test may change it)."""
    monkeypatch.chdir(ROOT)
    fcs = tmp_path / "fcs"
    fcs.mkdir()
    shutil.copy(DATA / "fcs" / "412C_mLN_026.fcs", fcs)
    panel = tmp_path / "panel.csv"
    shutil.copy(DATA / "panel.csv", panel)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("file,product_id,tube,role,fmo_marker\n412C_mLN_026.fcs,412C_mLN,tcell,stain,\n")
    out = tmp_path / "out"
    summary = process_folder(os.path.relpath(fcs), out, manifest_csv=manifest, panel_path=os.path.relpath(panel),
                             strategy_paths=["gating/flowatlas_tcell_cd19.yaml"], make_reports=False)
    assert summary.ok
    return out, panel


def test_run_json_records_absolute_paths(relative_run):
    out, panel = relative_run
    run = json.loads((out / "run.json").read_text())
    params = run["parameters"]
    assert Path(params["panel"]) == panel and Path(params["panel"]).is_absolute()
    assert params["panel_sha256"] and len(params["panel_sha256"]) == 64
    assert all(Path(s["path"]).is_absolute() for s in run["strategies"])
    assert all(Path(i["path"]).is_absolute() for i in run["inputs"])
    assert Path(params["input_folder"]).is_absolute() and Path(params["manifest"]).is_absolute()



def test_run_json_names_the_code(relative_run):
    """The version (0.1.0) is the same over a whole development history: run.json also records the
    digest of tilpheno's source files that the cache keys hold, so a run names the code that made it."""
    from tilpheno.cache import code_digest

    out, _ = relative_run
    run = json.loads((out / "run.json").read_text())
    assert run["tilpheno_code_sha256"] == code_digest() and len(code_digest()) == 64
    assert list(run)[:3] == ["tilpheno_version", "tilpheno_code_sha256", "python"]


def test_review_and_report_work_from_another_directory(relative_run, tmp_path, monkeypatch):
    out, _ = relative_run
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    source = ReviewSource(out)
    assert source.panel is not None and set(source.strategies) == {"tcell"}
    gates = source.automatic("412C_mLN")     # re-gates the product: the run's panel names its detectors
    assert "tcell" in gates["tubes"]
    kwargs, known = rerun_arguments(out)
    assert known == {"412C_mLN"} and kwargs["panel"].exists() and all(p.exists() for p in kwargs["strategy"])


def test_a_panel_changed_since_the_run_is_refused(relative_run):
    out, panel = relative_run
    panel.write_text(panel.read_text() + "*,FJComp-405 450_50-A,CD45\n")
    with pytest.raises(ReviewError, match="panel file .* changed since the run"):
        ReviewSource(out)
    with pytest.raises(TilphenoError, match="panel file changed or missing since the run"):
        rerun_arguments(out)


def test_a_deferred_report_of_moved_inputs_says_why_it_is_not_drawn(relative_run, tmp_path):
    """`tilpheno serve OUT --inputs MOVED` (the run's FCS files moved after a run without reports):
    the review re-gates from MOVED, but the report link answered only '...: input file changed or
    missing since the run ...; run `tilpheno process` again', as if --inputs had not been given ->
    the refusal says that the gates are read from MOVED while a deferred report is drawn only from
    the files where the run read them, and how to get it (`tilpheno report OUT` there, or process
    again where they are now)."""
    out, _ = relative_run
    moved = tmp_path / "archive"
    (tmp_path / "fcs").rename(moved)
    source = ReviewSource(out, moved)
    assert "tcell" in source.automatic("412C_mLN")["tubes"]   # the review itself reads the moved files
    with pytest.raises(ReviewError) as refused:
        source.report_html("412C_mLN")
    text = str(refused.value)
    assert "input file changed or missing since the run" in text and "\n" not in text
    assert f"reads the run's files from {moved} for its gates" in text and f"`tilpheno report {out}`" in text


@pytest.mark.parametrize("change", ["rewritten", "removed", "touched"])
def test_an_input_changed_since_the_run_is_refused_by_report(relative_run, tmp_path, change):
    """``tilpheno report`` draws the run's own results: an input file whose bytes changed, or that is
    gone, is refused in one line naming it (the tables are not silently re-made from other data);
    a file only touched (same bytes, new mtime) is the same input."""
    out, _ = relative_run
    fcs = tmp_path / "fcs" / "412C_mLN_026.fcs"
    if change == "rewritten":
        data = bytearray(fcs.read_bytes())
        data[-1] ^= 0xFF   # one byte of the last event
        fcs.write_bytes(bytes(data))
    elif change == "removed":
        fcs.unlink()
    else:
        os.utime(fcs, (1e9, 1e9))
    if change == "touched":
        kwargs, known = rerun_arguments(out)
        assert known == {"412C_mLN"}
        return
    with pytest.raises(TilphenoError, match=r"412C_mLN_026\.fcs: input file changed or missing since the run"):
        rerun_arguments(out)


def test_strategies_given_without_their_study_get_a_run_warning(relative_run):
    """The FlowAtlas strategy run under the default (TIL) study defines none of its variables: one
    run-level warning in qc.csv says the study's columns stay empty and its release cannot be
    evaluated, and names the strategy's own variables."""
    out, _ = relative_run
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False)
    (flag,) = qc[qc["code"] == "study_mismatch"].itertuples(index=False)
    assert (flag.product_id, flag.severity) == ("", "warning")
    assert "flowatlas_tcell_cd19.yaml" in flag.message and "study til's variables" in flag.message
    assert "cd4_pct_of_t" in flag.message or "t_cells" in flag.message, flag.message
    phenotypes = pd.read_csv(out / "phenotypes.csv")
    assert phenotypes["viability_pct"].isna().all()


@pytest.mark.parametrize("given", ["manifest", "outcomes", "compensation", "study"])
def test_a_run_file_changed_since_the_run_is_refused_by_report(tmp_path, monkeypatch, given):
    """Besides the inputs, strategies, spec and panel, ``tilpheno report`` re-runs with the run's
    manifest, outcomes (the doses), compensation matrix and study: each is checked against the
    SHA-256 ``run.json`` recorded, so a changed one is refused in one line naming it instead of
    silently re-making the tables (e.g. new subset doses) from other data."""
    monkeypatch.chdir(ROOT)
    fcs = tmp_path / "fcs"
    fcs.mkdir()
    shutil.copy(DATA / "fcs" / "412C_mLN_026.fcs", fcs)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("file,product_id,tube,role,fmo_marker\n412C_mLN_026.fcs,412C_mLN,tcell,stain,\n")
    options = {"manifest_csv": manifest}
    if given == "outcomes":
        options["outcomes_path"] = changed = tmp_path / "outcomes.csv"
        changed.write_text("patient_id,product_id,til_dose_cells,best_response,pfs_months,pfs_event,os_months,os_event\n"
                           "P1,412C_mLN,6810000000,SD,2.5,1,19.2,1\n")
    elif given == "compensation":   # the identity: the file's FJComp channels are compensated already
        options["compensation_path"] = changed = tmp_path / "matrix.csv"
        detectors = sorted({c for c in pd.read_csv(DATA / "panel.csv")["detector"] if c.startswith("FJComp")})
        pd.DataFrame(np.eye(len(detectors)), columns=detectors).to_csv(changed, index=False)
    elif given == "study":
        shutil.copytree(ROOT / "tilpheno" / "studies" / "til", tmp_path / "study")
        options["study"] = changed = tmp_path / "study" / "study.yaml"
    else:
        changed = manifest
    out = tmp_path / "out"
    summary = process_folder(fcs, out, panel_path=DATA / "panel.csv", strategy_paths=["gating/flowatlas_tcell_cd19.yaml"],
                             make_reports=False, **options)
    assert summary.ok
    kwargs, known = rerun_arguments(out)      # unchanged: accepted
    assert known == {"412C_mLN"}
    changed.write_text(changed.read_text().replace("6810000000", "1000000000") + "\n")
    what = "study" if given == "study" else f"{given} file"
    with pytest.raises(TilphenoError, match=rf"{changed.name}: {what} changed or missing since the run"):
        rerun_arguments(out)
