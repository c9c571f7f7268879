"""`tilpheno new-study`: a study drafted from a lab's FCS files runs as written, and its numbers
agree with the simulated ground truth of the files (independent of the draft)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tilpheno.cli import app
from tilpheno.errors import TableError
from tilpheno.scaffold import draft_study, write_study
from tilpheno.vocabulary import default_vocabulary

from undetermined_support import blank_variables

ROOT = Path(__file__).resolve().parents[1]
NEWLAB = ROOT / "tests" / "data" / "newlab"
SAMPLE = ROOT / "sample_fcs"
TOLERANCE = 2.0   # points: the lineage tolerance of the gating issue


def _run(args: list[str]):
    return CliRunner().invoke(app, args)


def test_viability_dyes_come_from_the_vocabulary():
    vocabulary = default_vocabulary()
    assert all(vocabulary.is_viability_dye(n) for n in ("7-AAD", "DAPI", "LIVE/DEAD", "Zombie dye", "propidium iodide"))
    assert not any(vocabulary.is_viability_dye(n) for n in ("CD3", "FoxP3", "Ki67"))


def test_instrument_words_are_no_markers(tmp_path):
    """Real exports: FACSDiva's 'Syto 41' label drafted the marker 'Syto' (the dye's number lost:
    SYTO 41 and SYTO 9 are other dyes); MACSQuant's time channel HDR-T (FCS 2.0: $PnN = $PnS = HDR-T)
    counted as a fluorescence detector; Sysmex CyFlow's 'DOUBLET' and 'HDR-T' read as markers where
    a label. Now SYTO41, and neither channel is a marker or a fluorescence detector."""
    from tilpheno.io.fcs import read_fcs_metadata
    from tilpheno.spillover import fluorescence_detectors

    corpus = Path(__file__).parent / "data" / "fcs" / "fcsparser_instruments"
    shutil.copytree(corpus / "FACS_Diva", tmp_path / "diva")
    draft = draft_study(tmp_path / "diva")
    assert [t.markers for t in draft.tubes] == [("CD20", "CD10", "CD45", "CD34", "SYTO41", "CD19", "CD38")]
    macsquant = read_fcs_metadata(corpus / "MiltenyiBiotec" / "FCS2.0" /
                                  "EY_2013-07-19_PBS_FCS_2.0_Custom_Without_Add_Well_A1.001.fcs", checksum=False)
    assert "HDR-T" in macsquant.channel_names and "HDR-T" not in fluorescence_detectors(macsquant)
    vocabulary = default_vocabulary()
    assert [vocabulary.marker_in(label) for label in ("DOUBLET", "HDR-T", "Syto 41", "SYTO-9")] == \
        [None, None, "SYTO41", "SYTO9"]


def test_a_dna_dye_is_drafted_as_the_nucleated_gate_not_a_marker(tmp_path):
    """FACSDiva's 'Syto 41' (SYTO 41, a DNA dye that enters every cell, live or dead) was drafted as a
    marker gate, 'SYTO41+' within the lymphocyte gate, reported as syto41_pct_of_lymph -> a DNA dye of
    the vocabulary's ``nucleic_acid:`` list (a numbered family: every SYTO dye; DRAQ5) is drafted as
    the ``nucleated`` gate, keeping its bright events, right after the scatter gates, the other gates
    within it; SYTOX (impermeant, another family) and the viability dyes are not such dyes."""
    vocabulary = default_vocabulary()
    assert [vocabulary.is_nucleic_acid_dye(n) for n in ("Syto 41", "SYTO-9", "SYTO 17", "DRAQ5")] == [True] * 4
    assert not any(vocabulary.is_nucleic_acid_dye(n) for n in ("SYTOX Green", "7-AAD", "DAPI", "CD45", "LIVE/DEAD"))
    shutil.copytree(Path(__file__).parent / "data" / "fcs" / "fcsparser_instruments" / "FACS_Diva", tmp_path / "diva")
    result = _run(["new-study", str(tmp_path / "diva"), "-o", str(tmp_path / "study")])
    assert result.exit_code == 0, result.output
    assert "DNA dye SYTO41 (gated as nucleated)" in result.output
    strategy = yaml.safe_load((tmp_path / "study" / "km1.yaml").read_text())
    gates = {g["name"]: g for g in strategy["populations"]}
    assert "SYTO41+" not in gates and not any("syto" in v for v in strategy["variables"])
    assert gates["nucleated"] == {"name": "nucleated", "parent": "cells", "dims": ["SYTO41"], "method": "valley",
                                  "params": {"keep": "high", "one_population": "positive"}}
    assert gates["CD45+"]["parent"] == "nucleated"   # the all-cells marker on the nucleated cells
    assert strategy["variables"]["nucleated_pct"] == {"numerator": "nucleated", "denominator": "cells"}
    out = tmp_path / "out"
    result = _run(["process", str(tmp_path / "diva"), "--study", str(tmp_path / "study" / "study.yaml"),
                   "--manifest", str(tmp_path / "study" / "manifest.csv"), "-o", str(out), "--reports", "none"])
    assert result.exit_code == 0, result.output
    populations = pd.read_csv(out / "populations.csv").set_index("population")
    assert populations.loc["nucleated", "parent"] == "cells" and populations.loc["CD45+", "parent"] == "nucleated"


def test_newlab_draft_runs_and_agrees_with_truth(tmp_path):
    """Another lab's three tubes (one marker on an unlabelled detector, named by its panel file):
    kinds, FMOs and viability dye inferred; `process` with the draft exits 0. The lineage table nests
    CD3 within CD45+ and CD4, CD8 within CD3+ (the draft gated all under live, variables
    cd4_pct_of_live): the nested variables are the truth's own percentages (cd4_pct_of_cd3). CD45 (vocabulary `all_cells:`) is gated on all live cells, its negatives the
    larger tumour cells; the lymphocyte scatter gate is drawn within CD45+ (it was beside it, on live,
    and CD3+ within CD45+ skipped it: large CD45+ cells in the T-cell gates), and every other gate
    within it: live -> CD45+ -> live_lymph -> CD3+ -> CD4+. The live CD45+ lymphocytes are the live
    leukocytes of this simulation (CD45+ cells share one scatter cluster): CD3+ % of them is the
    truth's cd3_pct_of_cd45, the others' percentages of them derived from the nested ones."""
    draft = draft_study(NEWLAB / "fcs", panel=NEWLAB / "panel.csv")
    tubes = {t.kind: t for t in draft.tubes}
    assert set(tubes) == {"tcell", "exhaustion", "residency"}
    assert set(tubes["tcell"].markers) == {"CD45", "CD3", "CD4", "CD8", "DAPI"}
    assert set(tubes["tcell"].fmo_markers) == {"CD45", "CD3", "CD4", "CD8"}
    assert set(tubes["residency"].fmo_markers) == {"CD103"} and set(tubes["exhaustion"].fmo_markers) == {"CD39", "LAG3"}
    assert all(t.viability == "DAPI" and t.height == "FSC-H" for t in tubes.values())
    assert len(draft.manifest) == 10 and not draft.skipped

    study = tmp_path / "study"
    result = _run(["new-study", str(NEWLAB / "fcs"), "-o", str(study), "--panel", str(NEWLAB / "panel.csv")])
    assert result.exit_code == 0, result.output
    assert "tilpheno process" in result.output and "--panel" in result.output
    out = tmp_path / "out"
    result = _run(["process", str(NEWLAB / "fcs"), "--study", str(study / "study.yaml"), "--manifest",
                   str(study / "manifest.csv"), "--panel", str(NEWLAB / "panel.csv"), "-o", str(out), "--reports", "none"])
    assert result.exit_code == 0, result.output
    parents = {p["name"]: p["parent"] for p in yaml.safe_load((study / "tcell.yaml").read_text())["populations"]}
    assert parents == {"cells": "root", "singlets": "cells", "live": "singlets", "CD45+": "live", "live_lymph": "CD45+",
                       "CD3+": "live_lymph", "CD4+": "CD3+", "CD8+": "CD3+"}
    got = pd.read_csv(out / "phenotypes.csv").set_index("product_id").loc["LAB7"]
    # the CD45 FMO's lymphocyte gate (within CD45+, empty there) holds no release: its release is decided
    assert got["review_status"] == "no gating flags" and got["release_status"] == "pass", got["release_status"]
    truth = pd.read_csv(NEWLAB / "truth.csv").set_index("product_id").loc["LAB7"]
    cd8_of_leukocytes = truth.cd3_pct_of_cd45 * truth.cd8_pct_of_cd3 / 100
    expected = {
        "viability_pct_tcell": truth.viability_pct,
        "cd45_pct_of_live_tcell": truth.cd45_pct_of_live,
        "cd3_pct_of_live_lymph_tcell": truth.cd3_pct_of_cd45,
        "cd4_pct_of_cd3": truth.cd4_pct_of_cd3,
        "cd8_pct_of_cd3_tcell": truth.cd8_pct_of_cd3,
        "cd8_pct_of_cd3_exhaustion": truth.cd8_pct_of_cd3,
        "cd39_pct_of_live_lymph": cd8_of_leukocytes * truth.cd39_pct_of_cd8 / 100,
        "cd103_pct_of_live_lymph": cd8_of_leukocytes * truth.cd103_pct_of_cd8 / 100,
    }
    for column, value in expected.items():
        assert abs(got[column] - value) <= TOLERANCE, (column, got[column], value)


def test_til_draft_covers_every_file_and_matches_viability_truth(tmp_path):
    """The TIL sample folder: surface (7AAD, five FMOs) and treg (FoxP3 FMO, no viability dye) kinds,
    every file (unstained controls too) in the manifest; viability within tolerance of the truth.
    CD4 and CD8 were gated on live cells (cd4_pct_of_live, nothing the truth or a cytometrist
    reports) -> nested within CD3+ by the lineage table, FoxP3 within CD4+ within CD3+ in the treg
    tube; CD4 and CD8 % of CD3 (surface tube) within tolerance of the truth's."""
    draft = draft_study(SAMPLE)
    tubes = {t.kind: t for t in draft.tubes}
    assert set(tubes) == {"surface", "treg"}
    assert tubes["surface"].viability == "7AAD" and tubes["treg"].viability is None
    assert set(tubes["surface"].fmo_markers) == {"CD3", "CD4", "CD8", "CD56", "PD1"}
    assert tubes["treg"].fmo_markers == ("FoxP3",)
    assert len(draft.manifest) == len(list(SAMPLE.glob("*.fcs")))
    assert (draft.manifest["role"] == "unstained").sum() == 6
    study = tmp_path / "study"
    write_study(draft, study)
    out = tmp_path / "out"
    result = _run(["process", str(SAMPLE), "--study", str(study / "study.yaml"), "--manifest", str(study / "manifest.csv"),
                   "-o", str(out), "--reports", "none"])
    assert result.exit_code == 0, result.output
    got = pd.read_csv(out / "phenotypes.csv").set_index("product_id")
    truth = pd.read_csv(SAMPLE / "truth.csv").set_index("product_id")
    assert (got["viability_pct"] - truth.loc[got.index, "viability_pct"]).abs().max() <= TOLERANCE
    parents = {kind: {p["name"]: p["parent"] for p in yaml.safe_load((study / f"{kind}.yaml").read_text())["populations"]}
               for kind in ("surface", "treg")}
    assert parents["surface"] == {"cells": "root", "singlets": "cells", "live": "singlets", "live_lymph": "live",
                                  "CD3+": "live_lymph", "PD1+": "live_lymph", "CD56+": "live_lymph", "CD4+": "CD3+",
                                  "CD8+": "CD3+"}
    assert parents["treg"] == {"cells": "root", "singlets": "cells", "lymph": "singlets", "CD3+": "lymph", "CD4+": "CD3+",
                               "FoxP3+": "CD4+"}
    for column, of_truth in (("cd4_pct_of_cd3_surface", "cd4_pct_of_cd3"), ("cd8_pct_of_cd3", "cd8_pct_of_cd3")):
        assert (got[column] - truth.loc[got.index, of_truth]).abs().max() <= TOLERANCE, column
    assert {"cd4_pct_of_cd3_treg", "foxp3_pct_of_cd4"} <= set(got.columns)


def test_files_that_fit_no_kind_are_left_out_and_named(tmp_path):
    """An unreadable file and an FMO whose markers match no stained tube are listed, not guessed."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    for name in ("TIL001_surface_stain.fcs", "TIL001_surface_FMO_PD1.fcs", "TIL001_treg_FMO_FoxP3.fcs"):
        shutil.copy(SAMPLE / name, folder / name)
    (folder / "TIL001_broken.fcs").write_bytes(b"FCS3.1")
    draft = draft_study(folder)
    assert [t.kind for t in draft.tubes] == ["surface"]
    left = dict(draft.skipped)
    assert set(left) == {"TIL001_broken.fcs", "TIL001_treg_FMO_FoxP3.fcs"}
    assert "FoxP3" in left["TIL001_treg_FMO_FoxP3.fcs"]
    assert sorted(draft.manifest["file"]) == ["TIL001_surface_FMO_PD1.fcs", "TIL001_surface_stain.fcs"]
    assert draft.unreadable == ["TIL001_broken.fcs"]
    # an unreadable file is a failure (process will never see it), as in scan: exit 1, files written
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "study")])
    assert result.exit_code == 1, result.output
    assert "left out: TIL001_treg_FMO_FoxP3.fcs" in result.output
    assert "1 unreadable" in result.output
    assert "TIL001_broken.fcs" in (tmp_path / "study" / "study.yaml").read_text()
    # a file that fits no tube kind is left out by choice and named: exit 0
    (folder / "TIL001_broken.fcs").unlink()
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "study2")])
    assert result.exit_code == 0, result.output
    assert "left out: TIL001_treg_FMO_FoxP3.fcs" in result.output


def test_unlistable_folder_is_named_and_exits_1(tmp_path, refuse_listing):
    """A folder that cannot be listed hides its files from the draft's manifest: named, exit 1
    (as scan)."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    for name in ("TIL001_surface_stain.fcs", "TIL001_surface_FMO_PD1.fcs"):
        shutil.copy(SAMPLE / name, folder / name)
    hidden = folder / "second_batch"
    hidden.mkdir()
    refuse_listing(hidden)
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "study")])
    assert result.exit_code == 1, result.output
    assert f"unlistable folder: {hidden}: Permission denied" in result.output
    assert "second_batch" in (tmp_path / "study" / "study.yaml").read_text()


def test_refusals_are_one_line(tmp_path):
    study = tmp_path / "study"
    assert _run(["new-study", str(SAMPLE), "-o", str(study)]).exit_code == 0
    before = (study / "study.yaml").read_bytes()
    again = _run(["new-study", str(SAMPLE), "-o", str(study)])
    assert again.exit_code == 2 and "already holds study.yaml" in again.output and "--overwrite" in again.output
    assert (study / "study.yaml").read_bytes() == before
    assert _run(["new-study", str(SAMPLE), "-o", str(study), "--overwrite"]).exit_code == 0
    controls = tmp_path / "controls"
    controls.mkdir()
    shutil.copy(SAMPLE / "TIL001_unstained.fcs", controls)
    with pytest.raises(TableError, match="no readable stained FCS file"):
        draft_study(controls)
    result = _run(["new-study", str(controls), "-o", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no readable stained FCS file" in result.output


def _files(folder: Path) -> dict[str, bytes] | None:
    """``folder``'s files -> their bytes (None: no such folder)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else None


def test_ctrl_c_while_the_study_is_renamed_into_place_waits_for_the_last_file(tmp_path, monkeypatch):
    """Ctrl-C (a real SIGINT to this process) arrives as the first finished file is renamed into
    place. The files were renamed one after another, and the interrupt stopped that midway: a
    study.yaml without its strategies, or without its manifest, and no error on the next step. Now
    the interrupt is acted on (KeyboardInterrupt) once every file is in place: the study is whole,
    as a clean draft writes it, and no temporary file is left."""
    import signal

    # Python's own Ctrl-C handler, as the command line has it (a pytest-xdist worker ignores SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _renamed_while_interrupted(tmp_path, monkeypatch)
    finally:
        signal.signal(signal.SIGINT, previous)


def _renamed_while_interrupted(tmp_path, monkeypatch) -> None:
    import os
    import signal

    draft = draft_study(SAMPLE)
    clean, study = tmp_path / "clean", tmp_path / "study"
    write_study(draft, clean)
    real_replace, renamed = os.replace, []

    def replace(src, dst):
        renamed.append(dst)
        if len(renamed) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_study(draft, study)
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(renamed) == len(_files(clean)) > 2
    assert _files(study) == _files(clean)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("over", ["nothing", "an older draft"])
def test_a_draft_killed_while_renamed_into_place_is_never_taken_for_a_whole_study(tmp_path, over):
    """``kill -9`` (no signal to hold) after the first finished file of a draft is renamed into place.
    Over an older draft (--overwrite) that left the old study.yaml beside the new manifest.csv, a
    mixed study that process took for whole; in an empty folder the next draft refused with 'already
    holds manifest.csv', as though a draft were there, and the killed one's hidden temporaries stayed
    for good. Now study.yaml is removed before the first rename and renamed last, so a study.yaml is
    always a whole study's; the next draft names the incomplete one in one line and how to finish it,
    and --overwrite writes what a clean draft writes, removing the temporaries."""
    import signal
    import subprocess
    import sys

    clean, study, older = tmp_path / "clean", tmp_path / "study", tmp_path / "older"
    assert _run(["new-study", str(SAMPLE), "-o", str(clean)]).exit_code == 0
    if over == "an older draft":
        older.mkdir()
        for fcs in SAMPLE.glob("TIL00[12]_*.fcs"):
            shutil.copy(fcs, older / fcs.name)
        assert _run(["new-study", str(older), "-o", str(study), "--name", "sample_fcs"]).exit_code == 0
        assert _files(study) != _files(clean)
    before = _files(study)
    code = """if True:
        import os, signal, sys
        from tilpheno.cli import app
        real_replace, renamed = os.replace, []

        def replace(src, dst):
            if renamed:   # the first file renamed into place: killed before the next
                os.kill(os.getpid(), signal.SIGKILL)
            renamed.append(dst)
            real_replace(src, dst)

        os.replace = replace
        app(sys.argv[1:], prog_name="tilpheno")
    """
    killed = subprocess.run([sys.executable, "-c", code, "new-study", str(SAMPLE), "-o", str(study), "--overwrite"],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = _files(study)
    assert any(name.endswith(".part") for name in left)   # killed mid-way: some files not renamed
    study_files = {name: data for name, data in left.items() if not name.startswith(".")}
    assert "study.yaml" not in left or study_files in (before, _files(clean)), sorted(left)
    again = _run(["new-study", str(SAMPLE), "-o", str(study)])
    errors = [line for line in again.output.splitlines() if line.startswith("error:")]
    assert again.exit_code == 2 and len(errors) == 1, again.output
    assert f"{study}: holds an incomplete draft" in errors[0] and "--overwrite" in errors[0], errors
    # nothing lost; the killed one's lock file (held no more) is taken and removed
    assert _files(study) == {name: data for name, data in left.items() if name != ".new-study.lock"}
    assert _run(["new-study", str(SAMPLE), "-o", str(study), "--overwrite"]).exit_code == 0
    assert _files(study) == _files(clean)


@pytest.mark.parametrize("fail_at", [1, 3, 5])
def test_a_disk_full_while_drafting_writes_no_part_of_the_study(tmp_path, monkeypatch, fail_at):
    """The disk fills while the files are written (simulated: the ``fail_at``-th fsync answers ENOSPC,
    naming no file, as the system does). It used to leave study.yaml and release.yaml without their
    strategies, say 'error: No space left on device (disk full)' naming nothing, and refuse the next
    draft ('already holds study.yaml'). Now one line names the folder, nothing of the study is left,
    and the next draft writes what a clean draft writes."""
    import errno
    import os

    clean, study = tmp_path / "clean", tmp_path / "study"
    assert _run(["new-study", str(SAMPLE), "-o", str(clean)]).exit_code == 0
    real_fsync, calls = os.fsync, []

    def full(fd):
        calls.append(fd)
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    result = _run(["new-study", str(SAMPLE), "-o", str(study)])
    assert len(calls) >= fail_at
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(errors) == 1 and f"{study}: No space left on device (disk full)" in errors[0], result.output
    assert _files(study) is None
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert _run(["new-study", str(SAMPLE), "-o", str(study)]).exit_code == 0
    assert _files(study) == _files(clean)


def _stained(product, words, markers):
    return {"product_id": product, "words": words, "markers": dict.fromkeys(markers, "")}


def test_kind_names_tell_kinds_apart():
    """A word names a kind only when every stained file of the kind has it and no other kind's
    file does: tissue words (real exports: 'Lung', 'Ileum') do not name a panel."""
    from tilpheno.scaffold import _kinds

    kinds = _kinds([_stained("P1", ["lung"], ["CD3", "CD4"]), _stained("P1", ["ileum"], ["CD3", "CD4"]),
                    _stained("P1", ["lung"], ["CD3", "CD19"])])
    assert sorted(kinds) == ["tube1", "tube2"]
    kinds = _kinds([_stained("P1", ["surface", "lung"], ["CD3", "CD4"]), _stained("P2", ["surface"], ["CD3", "CD4"]),
                    _stained("P1", ["treg", "lung"], ["FoxP3"]), _stained("P2", ["treg", "403c"], ["FoxP3"])])
    assert sorted(kinds) == ["surface", "treg"]


def test_panel_versions_make_one_kind():
    """Real exports of one panel differ by a marker (CD19 in one run, CD45 in another on the same
    detector): sets that no product has together and that share most markers are one tube kind,
    gated on the markers all its files have; tubes of the same product stay apart."""
    from tilpheno.scaffold import _kinds, shared_markers

    lineage = ["CD3", "CD4", "CD8", "PD1", "FoxP3"]
    kinds = _kinds([_stained("D1", ["bm"], [*lineage, "CD45"]), _stained("D2", ["lung"], [*lineage, "CD19"]),
                    _stained("D3", ["lung"], lineage)])
    assert len(kinds) == 1
    (members,) = kinds.values()
    assert len(members) == 3 and list(shared_markers(members)) == lineage
    # the same two sets within one product are two tubes of it
    kinds = _kinds([_stained("D1", ["a"], [*lineage, "CD45"]), _stained("D1", ["b"], [*lineage, "CD19"])])
    assert len(kinds) == 2
    # sets sharing under 2/3 of their markers are different tubes, even in different products
    kinds = _kinds([_stained("D1", [], ["CD3", "CD4", "CD8"]), _stained("D2", [], ["CD3", "CD56", "CD16"])])
    assert len(kinds) == 2


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path.name, old)
    path.write_text(text.replace(old, new, 1))


# each: a file of the draft, a text in it and its replacement; process refuses the result
DRAFT_DEFECTS = {
    "variable of no strategy": ("study.yaml", "  - viability_pct\n", "  - viabilty_pct\n"),
    "criterion on no column": ("release.yaml", "column: viability_pct", "column: viabilty_pct"),
    "FMO marker of no strategy": ("manifest.csv", "surface,fmo,PD1", "surface,fmo,LAG3"),
    "product id in two cases": ("manifest.csv", "TIL002_surface_stain.fcs,TIL002", "TIL002_surface_stain.fcs,til002"),
    "unknown gate method": ("surface.yaml", "method: fmo}", "method: fmoo}"),
    "criterion on an event count never counted": ("release.yaml", "column: viability_pct", "column: n_evnts_surface"),
}


@pytest.fixture(scope="module")
def til_draft(tmp_path_factory):
    out = tmp_path_factory.mktemp("draft")
    write_study(draft_study(SAMPLE), out)
    return out


@pytest.mark.parametrize("defect", sorted(DRAFT_DEFECTS))
def test_draft_check_and_process_refuse_alike(til_draft, tmp_path, defect):
    """new-study's check of its draft and `process` make their pre-gating checks through one function
    (load_run_inputs): an edit that process refuses is refused by the check with the same line."""
    from tilpheno.cli import as_cli_text
    from tilpheno.scaffold import check_draft

    draft = tmp_path / "draft"
    shutil.copytree(til_draft, draft)
    assert check_draft(draft, SAMPLE) == ""
    name, old, new = DRAFT_DEFECTS[defect]
    _edit(draft / name, old, new)
    problem = check_draft(draft, SAMPLE)
    assert problem
    result = _run(["process", str(SAMPLE), "--study", str(draft / "study.yaml"), "--manifest", str(draft / "manifest.csv"),
                   "-o", str(tmp_path / "out"), "--reports", "none"])
    assert result.exit_code == 2 and not (tmp_path / "out").exists()
    assert " ".join(result.output.split()) == " ".join(f"error: {as_cli_text(problem)}".split())


def test_draft_check_is_process_own_check(til_draft, monkeypatch):
    """check_draft calls the function process_folder calls, with the draft's study, manifest and
    panel: a check added to it applies to both."""
    import tilpheno.pipeline.run as run
    from tilpheno.errors import TilphenoError
    from tilpheno.scaffold import check_draft

    calls = []

    def refuse(folder, **kwargs):
        calls.append(kwargs)
        raise TilphenoError("refused by load_run_inputs")

    monkeypatch.setattr(run, "load_run_inputs", refuse)
    assert check_draft(til_draft, SAMPLE, panel=NEWLAB / "panel.csv") == "refused by load_run_inputs"
    assert calls == [{"manifest_csv": til_draft / "manifest.csv", "study": til_draft / "study.yaml",
                      "panel_path": NEWLAB / "panel.csv"}]
    with pytest.raises(TilphenoError, match="refused by load_run_inputs"):
        run.process_folder(SAMPLE, til_draft / "never", study=til_draft / "study.yaml")


def test_draft_reads_each_file_once_and_no_events(monkeypatch):
    """new-study parses each file's HEADER/TEXT once (the scan's), and never its DATA segment."""
    import tilpheno.io.fcs as fcs_module

    reads: list[str] = []
    metadata = fcs_module.read_fcs_metadata

    def counted(path, **kwargs):
        reads.append(Path(path).name)
        return metadata(path, **kwargs)

    def no_events(*args, **kwargs):
        raise AssertionError("DATA segment read")

    monkeypatch.setattr(fcs_module, "read_fcs_metadata", counted)
    monkeypatch.setattr(fcs_module, "read_fcs", no_events)
    draft = draft_study(NEWLAB / "fcs", panel=NEWLAB / "panel.csv")
    files = sorted(p.name for p in (NEWLAB / "fcs").glob("*.fcs"))
    assert sorted(reads) == files and len(draft.manifest) == len(files)


def _write_fluorochromes_only(path: Path) -> None:
    """A stained export whose $PnS name fluorochromes only (FITC, PE): no marker on any detector."""
    import numpy as np

    from tilpheno.io.fcs_write import write_fcs

    events = np.random.default_rng(0).uniform(1, 1000, size=(200, 4))
    write_fcs(path, events, [("FSC-A", None, 262144), ("SSC-A", None, 262144), ("FITC-A", "FITC", 262144),
                             ("PE-A", "PE", 262144)], {"$SRC": "P9"})


def test_stained_file_with_no_marker_is_left_out_with_the_reason(tmp_path):
    """A stained file whose $PnS name no marker made a tube kind of no markers and new-study crashed
    (ValueError: max() arg is an empty sequence); it is left out, and alone it is a one-line refusal."""
    from tilpheno.scaffold import UNNAMED

    folder = tmp_path / "fcs"
    folder.mkdir()
    _write_fluorochromes_only(folder / "P9_tube.fcs")
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "none")])
    assert result.exit_code == 2, result.output
    assert "no readable stained FCS file" in result.output and "1 stained with no marker named" in result.output
    shutil.copy(SAMPLE / "TIL001_surface_stain.fcs", folder)
    draft = draft_study(folder)
    assert [t.kind for t in draft.tubes] == ["surface"] and dict(draft.skipped) == {"P9_tube.fcs": UNNAMED}
    assert list(draft.manifest["file"]) == ["TIL001_surface_stain.fcs"]


UNLABELLED_PANEL = """tube,detector,marker
,FITC-A,CD3
surface,PE-A,PD1
treg,PE-A,FoxP3
surface,PerCP-Cy5-5-A,7AAD
surface,APC-A,CD56
,BV421-A,CD4
surface,APC-H7-A,CD8
"""


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """Two simulated products exported without $PnS (a FlowJo export whose labels live in the
    workspace), named '<product> <tube> stain|FMO <marker>.fcs' / '<product> unstained.fcs', and
    the lab's panel file naming each tube's detectors; returns (folder, panel, truth by product)."""
    from tilpheno.io.fcs_write import write_fcs
    from tilpheno.simulate.cohort import simulate_product

    root = tmp_path_factory.mktemp("unlabelled")
    folder = root / "fcs"
    folder.mkdir()
    truth = {}
    for i, pid in enumerate(("TIL001", "TIL002")):
        product = simulate_product(pid, seed=40 + i, n_events=5000)
        truth[pid] = product.truth
        for tube in product.tubes:
            spec = tube.data.spec
            name = (f"{pid} unstained" if spec.role == "unstained" else
                    f"{pid} {spec.tube} {'stain' if spec.role == 'stain' else 'FMO ' + spec.fmo_marker}")
            write_fcs(folder / f"{name}.fcs", tube.data.events, [(n, None, r) for n, _, r in tube.channels], tube.keywords)
    panel = root / "panel.csv"
    panel.write_text(UNLABELLED_PANEL)
    return folder, panel, truth


def test_scan_with_a_panel_shows_the_roles_process_uses(unlabelled, tmp_path):
    """`scan` had no --panel: on files without $PnS it showed every file an unstained control,
    while `process --panel` (and new-study) scan them with the panel's markers as their labels ->
    `scan --panel` shows the roles process uses: each file's product, tube kind, role and FMO
    marker as its name says them (the simulation's truth)."""
    folder, panel, _ = unlabelled
    out = tmp_path / "manifest.csv"

    def scanned(*extra: str) -> set[tuple[str, ...]]:
        result = _run(["scan", str(folder), "-o", str(out), *extra])
        assert result.exit_code == 0, result.output
        return {tuple(row) for row in pd.read_csv(out, dtype=str, keep_default_na=False).values.tolist()}

    def truth(name: str) -> tuple[str, ...]:
        product, *words = Path(name).stem.split(" ")
        if words == ["unstained"]:
            return name, product, "unstained", "unstained", ""
        return name, product, words[0], words[1].lower(), words[2] if len(words) > 2 else ""

    names = sorted(p.name for p in folder.glob("*.fcs"))
    without = {row[0]: row[3] for row in scanned()}
    assert {without[name] for name in names if " stain" in name} == {"unstained"}
    assert scanned("--panel", str(panel)) == {truth(name) for name in names}


def test_unlabelled_export_drafts_with_a_panel_and_runs(unlabelled, tmp_path):
    """Files without $PnS: every file was an unstained control and new-study refused. With --panel
    (the same file process takes) the panel's markers are the files' labels: surface and treg
    kinds, FMOs placed, and `process` runs the draft (with its manifest, and scanning the folder
    with the panel) with exit 0, viability within tolerance of the simulated truth."""
    folder, panel, truth = unlabelled
    refused = _run(["new-study", str(folder), "-o", str(tmp_path / "none")])
    assert refused.exit_code == 2 and "no readable stained FCS file" in refused.output

    study = tmp_path / "study"
    result = _run(["new-study", str(folder), "-o", str(study), "--panel", str(panel)])
    assert result.exit_code == 0, result.output
    draft = draft_study(folder, panel=panel)
    tubes = {t.kind: t for t in draft.tubes}
    assert set(tubes) == {"surface", "treg"} and not draft.skipped
    assert set(tubes["surface"].markers) == {"CD3", "PD1", "7AAD", "CD56", "CD4", "CD8"}
    assert tubes["surface"].viability == "7AAD" and set(tubes["treg"].markers) == {"CD3", "FoxP3", "CD4"}
    assert set(tubes["surface"].fmo_markers) == {"CD3", "CD4", "CD8", "CD56", "PD1"}
    assert tubes["treg"].fmo_markers == ("FoxP3",)
    manifest = pd.read_csv(study / "manifest.csv")
    assert len(manifest) == 18 and manifest["role"].value_counts().to_dict() == {"fmo": 12, "stain": 4, "unstained": 2}

    with_manifest = ["--manifest", str(study / "manifest.csv")]
    for extra, out in ((with_manifest, tmp_path / "out"), ([], tmp_path / "scanned")):
        result = _run(["process", str(folder), "--study", str(study / "study.yaml"), "--panel", str(panel), *extra,
                       "-o", str(out), "--reports", "none"])
        assert result.exit_code == 0, result.output
        got = pd.read_csv(out / "phenotypes.csv").set_index("product_id")
        assert sorted(got.index) == ["TIL001", "TIL002"]
        for pid, row in got.iterrows():
            assert abs(row["viability_pct"] - truth[pid]["viability_pct"]) <= TOLERANCE, (pid, row["viability_pct"])


def test_export_without_labels_is_told_to_give_a_panel_file(unlabelled, tmp_path):
    """`process` without the panel file on exports without $PnS: each product failed 'only
    controls' with the advice to name the files' tube and role in a manifest, which gives them no
    markers (the run then fails every file 'marker(s) not found') -> the advice is the panel file,
    and following it the run succeeds."""
    folder, panel, _ = unlabelled
    study = tmp_path / "study"
    assert _run(["new-study", str(folder), "-o", str(study), "--panel", str(panel)]).exit_code == 0
    command = ["process", str(folder), "--study", str(study / "study.yaml"), "--reports", "none"]
    result = _run([*command, "-o", str(tmp_path / "without")])
    assert result.exit_code == 1, result.output
    failed = pd.read_csv(tmp_path / "without" / "qc.csv").query("code == 'product_failed'")
    assert len(failed) == 2 and failed["message"].str.contains(r"in a panel file \(--panel; columns tube, detector, marker\)").all()
    result = _run([*command, "--panel", str(panel), "-o", str(tmp_path / "with")])
    assert result.exit_code == 0, result.output


def test_closing_message_names_the_drafted_parents(tmp_path):
    """new-study ended with 'Every marker gate sits under the live (or singlet) cells' also for files
    without scatter or viability dye (FlowAtlas FlowJo exports), whose draft gates every marker on
    all events -> it names, per tube kind, the parent the drafted strategy file gives its marker gates,
    and the gates the lineage table nests within another marker's gate (read back from the files)."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    shutil.copy(REALDATA / "fcs" / "423_Donor_Lung_032.fcs", folder)
    for source, study in ((SAMPLE, tmp_path / "til"), (folder, tmp_path / "flowatlas")):
        result = _run(["new-study", str(source), "-o", str(study)])
        assert result.exit_code == 0, result.output
        parents, nested = [], []
        for kind in yaml.safe_load((study / "study.yaml").read_text())["tubes"]:
            strategy = yaml.safe_load((study / f"{kind}.yaml").read_text())
            marker_gates = [p for p in strategy["populations"] if p["name"] not in ("cells", "singlets", "live", "live_lymph")
                            and p["name"] != "lymph"]
            [parent] = {p["parent"] for p in marker_gates if not p["parent"].endswith("+")}
            parents.append(f"{parent} ({kind}: every event)" if parent == "root" else f"{parent} ({kind})")
            inner = [f"{p['name']} within {p['parent']}" for p in marker_gates if p["parent"].endswith("+")]
            nested += [f"{', '.join(inner)} ({kind})"] if inner else []
        assert (f"Marker gates sit directly under {', '.join(parents)}, except those the lineage table nests: "
                f"{'; '.join(nested)}:") in " ".join(result.output.split())
    assert len(parents) == 1 and parents[0].startswith("root (") and parents[0].endswith(": every event)")
    assert "CD4+ within CD3+" in nested[0] and "CD8+ within CD3+" in nested[0]


def test_product_of_controls_only_is_announced(tmp_path):
    """FlowAtlas 412C exports have no $PnS: new-study drafted them as unstained controls of a product
    with no stained file and said nothing, and process failed that product -> new-study and scan say that
    process fails it, with process's own reason (a panel file names the markers); new-study exited 0
    though the process it printed then failed that product (exit 1) -> exit 1, as for a draft that
    needs an edit, with one line naming the products it fails."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    for name in ("412C_mLN_026.fcs", "423_Donor_Lung_032.fcs"):
        shutil.copy(REALDATA / "fcs" / name, folder)
    study = tmp_path / "study"
    result = _run(["new-study", str(folder), "-o", str(study)])
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert "process as printed fails 1 of 2 products (Specimen_001; why above)" in said
    out = tmp_path / "out"
    result = _run(["process", str(folder), "--study", str(study / "study.yaml"), "--manifest", str(study / "manifest.csv"),
                   "-o", str(out), "--reports", "none"])
    assert result.exit_code == 1
    [failed] = pd.read_csv(out / "qc.csv").query("code == 'product_failed'").itertuples()
    assert failed.product_id == "Specimen_001" and "panel file" in failed.message
    assert f"process fails it: {' '.join(failed.message.split())}" in said
    scanned = _run(["scan", str(folder)])   # scan says it too
    assert scanned.exit_code == 0 and f"process fails it: {' '.join(failed.message.split())}" in " ".join(scanned.output.split())


def test_kind_missing_from_some_products_is_announced(tmp_path):
    """A folder where one product lacks a tube the other has beside a shared one (TIL001 surface and
    treg, TIL002 surface only): the draft's study needs both kinds, so process fails TIL002; new-study
    says so per kind, and exits 1 (it exited 0: a script running `new-study && process` failed the
    product). Products with different tubes and none shared (TIL001 surface only, TIL002 treg only)
    are two panels: each kind drafted optional, said, exit 0, and process runs both; with `optional`
    deleted from the study both fail as before."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    for name in ("TIL001_surface_stain.fcs", "TIL001_treg_stain.fcs", "TIL002_surface_stain.fcs"):
        shutil.copy(SAMPLE / name, folder / name)
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "study")])
    assert result.exit_code == 1, result.output
    assert "process as printed fails 1 of 2 products (TIL002; why above)" in " ".join(result.output.split())
    assert "tube kind treg: 1 of 2 products have no stained treg file: process fails them" in result.output
    out = tmp_path / "out"
    result = _run(["process", str(folder), "--study", str(tmp_path / "study" / "study.yaml"), "--manifest",
                   str(tmp_path / "study" / "manifest.csv"), "-o", str(out), "--reports", "none"])
    assert result.exit_code == 1 and "1 of 2 products done" in result.output

    (folder / "TIL001_treg_stain.fcs").rename(tmp_path / "moved.fcs")
    shutil.copy(SAMPLE / "TIL002_treg_stain.fcs", folder / "TIL002_treg_stain.fcs")
    (folder / "TIL002_surface_stain.fcs").unlink()
    study = tmp_path / "two_panels"
    result = _run(["new-study", str(folder), "-o", str(study)])
    assert result.exit_code == 0, result.output
    for kind in ("surface", "treg"):
        assert f"tube kind {kind}: optional (no product has it with another kind" in result.output
    assert "process fails" not in result.output
    command = ["process", str(folder), "--study", str(study / "study.yaml"), "--manifest", str(study / "manifest.csv"),
               "--reports", "none"]
    result = _run([*command, "-o", str(tmp_path / "optional")])
    assert result.exit_code == 0 and "2 of 2 products done" in result.output, result.output
    assert pd.read_csv(tmp_path / "optional" / "phenotypes.csv").set_index("product_id")["absent_tubes"].to_dict() == \
        {"TIL001": "treg", "TIL002": "surface"}
    _edit(study / "study.yaml", ", optional: true", "")
    _edit(study / "study.yaml", ", optional: true", "")
    result = _run([*command, "-o", str(tmp_path / "required")])
    assert result.exit_code == 1 and "0 of 2 products done" in result.output, result.output
    complete = _run(["new-study", str(SAMPLE), "-o", str(tmp_path / "til")])
    assert complete.exit_code == 0 and "products have no stained" not in complete.output and "optional" not in complete.output


def test_every_product_of_two_panels_has_an_applicable_drafted_release_criterion(tmp_path):
    """Two panels (TIL001 surface only, its viability dye 7-AAD; TIL002 treg only, no dye): both kinds
    drafted optional, and release.yaml had the one viability criterion on the surface kind, not
    applicable to TIL002, whose release stayed 'not evaluable' whatever its data -> each kind has a
    criterion (surface's viability, treg's events): every product's release is decided on its own
    kind's, against its phenotypes.csv values. The bundled TIL study (no optional kind) keeps its one."""
    import json

    from tilpheno.pipeline.jobs import outcome_from_record

    folder = tmp_path / "fcs"
    folder.mkdir()
    for name in ("TIL001_surface_stain.fcs", "TIL002_treg_stain.fcs"):
        shutil.copy(SAMPLE / name, folder / name)
    study = tmp_path / "study"
    assert _run(["new-study", str(folder), "-o", str(study)]).exit_code == 0
    out = tmp_path / "out"
    result = _run(["process", str(folder), "--study", str(study / "study.yaml"), "--manifest", str(study / "manifest.csv"),
                   "-o", str(out), "--reports", "none"])
    assert result.exit_code == 0, result.output
    got = pd.read_csv(out / "phenotypes.csv").set_index("product_id")
    records = {r.product_id: r for r in (outcome_from_record(json.loads(p.read_text()))
                                         for p in (out / ".cache").rglob("outcome.json"))}
    truth = {"TIL001": ("viability_pct", got.loc["TIL001", "viability_pct"] > 70),
             "TIL002": ("n_events_treg", got.loc["TIL002", "n_events_treg"] >= 5000)}
    for product, (column, passes) in truth.items():
        applicable = {r.criterion.column: r.result() for r in records[product].release if not r.result().startswith("not applicable")}
        assert applicable == {column: "pass" if passes else "fail"}, (product, applicable)
        held = got.loc[product, "review_status"] == "needs review"
        assert got.loc[product, "release_status"] == ("fail" if not passes else "not evaluable" if held else "pass")
    assert _run(["new-study", str(SAMPLE), "-o", str(tmp_path / "til")]).exit_code == 0
    assert [c["column"] for c in yaml.safe_load((tmp_path / "til" / "release.yaml").read_text())["criteria"]] == ["viability_pct"]


def test_panel_row_on_an_absent_detector_is_refused(tmp_path):
    """A mistyped detector in the panel file was passed over by new-study (exit 0) and every product
    then failed in process on it; the draft refuses it in process's words, in one line, which names
    the panel file's row (it named the detector and the FCS file only)."""
    from tilpheno.cli import as_cli_text
    from tilpheno.errors import PanelError

    panel = tmp_path / "panel.csv"
    panel.write_text("tube,detector,marker\nresidency,FITC-A,CD103\nexhaustion,FITCA,LAG3\n")
    with pytest.raises(PanelError, match=rf"override maps LAG3 to detector 'FITCA' \({panel}: row 3\), not among the channels") as refused:
        draft_study(NEWLAB / "fcs", panel=panel)
    result = _run(["new-study", str(NEWLAB / "fcs"), "-o", str(tmp_path / "study"), "--panel", str(panel)])
    assert result.exit_code == 2 and not (tmp_path / "study").exists()
    assert " ".join(result.output.split()) == " ".join(f"error: {as_cli_text(str(refused.value))}".split())


def test_several_stained_files_of_one_product_are_announced(tmp_path):
    """Real exports name a generic $SRC ('Donor' for two donors' tissues): one product gets several
    stained files of a kind and process gates one of them for its variables; new-study says so."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    shutil.copy(SAMPLE / "TIL001_surface_stain.fcs", folder / "TIL001_surface_stain.fcs")
    shutil.copy(SAMPLE / "TIL001_surface_stain.fcs", folder / "TIL001_surface_stain_lung.fcs")
    shutil.copy(SAMPLE / "TIL002_surface_stain.fcs", folder / "TIL002_surface_stain.fcs")
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "study")])
    assert result.exit_code == 0, result.output
    assert "product TIL001: 2 stained surface files (TIL001_surface_stain.fcs, TIL001_surface_stain_lung.fcs); " \
        "process takes its variables from one" in result.output
    assert "product TIL002" not in result.output
    # the line says exactly what to edit: done as it says, every product has one stained file
    import re

    from tilpheno.scaffold import check_draft

    written = tmp_path / "study" / "manifest.csv"
    (line,) = [x for x in result.output.splitlines() if x.startswith("product TIL001")]
    found = re.search(r"in (.+), lines ([\d, ]+), give each specimen its own product_id, e\.g\. (.+) \(", line)
    assert found and Path(found.group(1)) == written
    lines = written.read_text().splitlines()
    for number, product_id in zip(found.group(2).split(", "), found.group(3).split(", ")):
        cells = lines[int(number) - 1].split(",")
        assert cells[0].startswith(product_id)   # the file of that line
        lines[int(number) - 1] = ",".join([cells[0], product_id, *cells[2:]])
    written.write_text("\n".join(lines) + "\n")
    manifest = pd.read_csv(written)
    assert manifest[manifest["role"] == "stain"].groupby(["product_id", "tube"]).size().max() == 1
    assert not check_draft(tmp_path / "study", folder)


def test_several_stained_files_with_controls_say_where_the_controls_go(tmp_path):
    """FlowAtlas: a donor's four tissues share $SRC '390C' with the donor's unstained control. The
    duplicate_tube line told to give lines 2-5 (the stained files) their own product_ids and said
    nothing of line 6, the control: done as told, the control stayed product 390C, a product of
    controls only, and process failed it (exit 1, with advice to write a panel file). The line now
    names the product's other files and where they go; done as it says, no product fails."""
    import re

    folder = tmp_path / "fcs"
    folder.mkdir()
    for name in ("TIL001_surface_stain.fcs", "TIL001_surface_FMO_PD1.fcs", "TIL001_unstained.fcs"):
        shutil.copy(SAMPLE / name, folder / name)
    shutil.copy(SAMPLE / "TIL001_surface_stain.fcs", folder / "TIL001_surface_stain_lung.fcs")
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "study")])
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("product TIL001")]
    written = tmp_path / "study" / "manifest.csv"
    lines = written.read_text().splitlines()

    def give(numbers: str, product_ids: list[str]) -> None:
        for number, product_id in zip(numbers.split(", "), product_ids):
            cells = lines[int(number) - 1].split(",")
            lines[int(number) - 1] = ",".join([cells[0], product_id, *cells[2:]])

    stained = re.search(r"lines ([\d, ]+), give each specimen its own product_id, e\.g\. (.+?) \(", line)
    assert stained, line
    specimens = stained.group(2).split(", ")
    give(stained.group(1), specimens)
    others = re.search(r"its other files \(lines? ([\d, ]+): (.+?)\) keep product_id TIL001", line)
    assert others, line
    assert sorted(others.group(2).split(", ")) == ["TIL001_surface_FMO_PD1.fcs", "TIL001_unstained.fcs"]
    give(others.group(1), [specimens[0]] * len(others.group(1).split(", ")))   # acquired with the first
    written.write_text("\n".join(lines) + "\n")
    manifest = pd.read_csv(written, dtype=str, keep_default_na=False)
    stains = manifest[manifest["role"] == "stain"]
    assert set(manifest["product_id"]) == set(stains["product_id"]) == set(specimens)   # no product of controls only
    assert stains.groupby("product_id").size().max() == 1
    out = tmp_path / "out"
    result = _run(["process", str(folder), "--study", str(tmp_path / "study" / "study.yaml"),
                   "--manifest", str(written), "-o", str(out), "--reports", "none"])
    assert result.exit_code == 0, result.output
    assert (pd.read_csv(out / "phenotypes.csv")["status"] == "done").all()


def test_several_stained_files_of_one_name_in_two_folders_are_told_apart(tmp_path):
    """Two specimens' exports of the same names in folders a/ and b/: the duplicate_tube line named
    'TIL001_surface_stain.fcs, TIL001_surface_stain.fcs' and offered both the product_id
    TIL001_surface_stain, which, done as told, leaves them one product. It now names them by their
    paths (as qc.csv does) and offers a_TIL001_surface_stain, b_TIL001_surface_stain; done as it
    says (each folder's controls with its specimen), every product is done."""
    import re

    folder = tmp_path / "fcs"
    for sub in ("a", "b"):
        (folder / sub).mkdir(parents=True)
        for name in ("TIL001_surface_stain.fcs", "TIL001_surface_FMO_PD1.fcs", "TIL001_unstained.fcs"):
            shutil.copy(SAMPLE / name, folder / sub / name)
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "study")])
    (line,) = [x for x in result.output.splitlines() if x.startswith("product TIL001")]
    assert "2 stained surface files (a/TIL001_surface_stain.fcs, b/TIL001_surface_stain.fcs)" in line, line
    written = tmp_path / "study" / "manifest.csv"
    manifest = pd.read_csv(written, dtype=str, keep_default_na=False)
    stained = re.search(r"lines ([\d, ]+), give each specimen its own product_id, e\.g\. (.+?) \(", line)
    specimens = dict(zip(stained.group(1).split(", "), stained.group(2).split(", ")))
    assert sorted(specimens.values()) == ["a_TIL001_surface_stain", "b_TIL001_surface_stain"], line
    for number, specimen in specimens.items():
        manifest.loc[int(number) - 2, "product_id"] = specimen
    others = re.search(r"its other files \(lines? ([\d, ]+): (.+?)\) keep product_id TIL001", line)
    for number, label in zip(others.group(1).split(", "), others.group(2).split(", ")):
        manifest.loc[int(number) - 2, "product_id"] = f"{label.split('/')[0]}_TIL001_surface_stain"
    manifest.to_csv(written, index=False)
    out = tmp_path / "out"
    result = _run(["process", str(folder), "--study", str(tmp_path / "study" / "study.yaml"),
                   "--manifest", str(written), "-o", str(out), "--reports", "none"])
    assert result.exit_code == 0, result.output
    status = pd.read_csv(out / "phenotypes.csv").set_index("product_id")["status"].to_dict()
    assert status == {"a_TIL001_surface_stain": "done", "b_TIL001_surface_stain": "done"}, status


def test_duplicate_stain_advice_says_which_tube_kinds_a_product_needs(tmp_path):
    """Two panels (TIL001 surface, two stained files and its FMO; TIL002 treg only): both kinds are
    optional, yet the duplicate-stain line said TIL001, left with its FMO once its stained files are
    renamed, then fails "without a stained file of each tube kind", untrue of optional kinds (TIL002,
    without a surface file, is done) -> it says when process fails it: controls only, or a required
    tube kind missing. Done as the line first says (stained files renamed), process fails TIL001 as
    controls only and runs the specimens and TIL002."""
    import re

    folder = tmp_path / "fcs"
    folder.mkdir()
    for name in ("TIL001_surface_stain.fcs", "TIL001_surface_FMO_PD1.fcs", "TIL002_treg_stain.fcs"):
        shutil.copy(SAMPLE / name, folder / name)
    shutil.copy(SAMPLE / "TIL001_surface_stain.fcs", folder / "TIL001_surface_stain_lung.fcs")
    study = tmp_path / "study"
    result = _run(["new-study", str(folder), "-o", str(study)])
    (line,) = [x for x in result.output.splitlines() if x.startswith("product TIL001")]
    assert "which process then fails if they are controls only (study fcs requires no tube kind: each is optional)" in line, line
    written = study / "manifest.csv"
    manifest = pd.read_csv(written, dtype=str, keep_default_na=False)
    stained = re.search(r"lines ([\d, ]+), give each specimen its own product_id, e\.g\. (.+?) \(", line)
    for number, specimen in zip(stained.group(1).split(", "), stained.group(2).split(", ")):
        manifest.loc[int(number) - 2, "product_id"] = specimen
    manifest.to_csv(written, index=False)
    out = tmp_path / "out"
    _run(["process", str(folder), "--study", str(study / "study.yaml"), "--manifest", str(written), "-o", str(out),
          "--reports", "none"])
    status = pd.read_csv(out / "phenotypes.csv").set_index("product_id")["status"].to_dict()
    assert status == {"TIL001": "failed", "TIL001_surface_stain": "done", "TIL001_surface_stain_lung": "done",
                      "TIL002": "done"}, status
    [failed] = pd.read_csv(out / "qc.csv").query("code == 'product_failed'").itertuples()
    assert failed.product_id == "TIL001" and "stained" in failed.message


def test_scan_duplicate_stain_advice_names_the_study_and_its_required_kinds(tmp_path):
    """scan's duplicate-stain line said the product's other files fail it if they 'lack a stained
    file of a required tube kind', naming none, nor the study whose kinds they are (a new lab's
    folder scanned under the default study, til, reads as the TIL kinds) -> it names the study and
    its required kinds: til's surface and treg, a study's own (tests/data/newlab: tcell,
    exhaustion, residency) under --study."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    for name in ("TIL001_surface_stain.fcs", "TIL001_unstained.fcs"):
        shutil.copy(SAMPLE / name, folder / name)
    shutil.copy(SAMPLE / "TIL001_surface_stain.fcs", folder / "TIL001_surface_stain_lung.fcs")
    (line,) = [x for x in _run(["scan", str(folder)]).output.splitlines() if x.startswith("product TIL001")]
    assert "keep product_id TIL001, which process then fails if they are controls only or lack a stained file of a " \
           "tube kind study til requires (surface, treg): give each" in line, line
    newlab = ROOT / "tests" / "data" / "newlab"
    lab = tmp_path / "lab"
    lab.mkdir()
    for name in ("LAB7_tcell_stain.fcs", "LAB7_tcell_FMO_CD3.fcs"):
        shutil.copy(newlab / "fcs" / name, lab / name)
    shutil.copy(newlab / "fcs" / "LAB7_tcell_stain.fcs", lab / "LAB7_tcell_stain_lung.fcs")
    result = _run(["scan", str(lab), "--study", str(newlab / "study.yaml")])
    (line,) = [x for x in result.output.splitlines() if x.startswith("product LAB7")]
    assert "lack a stained file of a tube kind study newlab requires (tcell, exhaustion, residency)" in line, line


REALDATA = ROOT / "tests" / "data" / "realdata_flowatlas"


def test_release_drafted_without_viability_dye_is_judged(tmp_path):
    """A panel without a viability dye (FlowAtlas: FlowJo exports, no scatter, no dye): the drafted
    release criterion was `n_events_total >= 5000`, a column the phenotype row does not hold when
    the release is judged, so every product's release was 'not evaluable (no value)' in process and
    in the review app, even after approval -> one criterion per tube kind on its stained file's
    events, judged in both, its value each file's $TOT (the data set's own manifest)."""
    from tilpheno.review.regate import ReviewSource, recompute

    folder = tmp_path / "fcs"   # the files whose $PnS name their markers (the 412C export has none)
    folder.mkdir()
    for file in sorted((REALDATA / "fcs").glob("*.fcs")):
        if not file.name.startswith("412C"):
            shutil.copy(file, folder / file.name)
    study = tmp_path / "study"
    result = _run(["new-study", str(folder), "-o", str(study)])
    assert result.exit_code == 0, result.output
    manifest = pd.read_csv(study / "manifest.csv", dtype=str, keep_default_na=False)
    manifest["product_id"] = manifest["file"].str.removesuffix(".fcs")   # each specimen its own product, as told
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "out"
    result = _run(["process", str(folder), "--study", str(study / "study.yaml"),
                   "--manifest", str(tmp_path / "manifest.csv"), "-o", str(out), "--reports", "none"])
    assert result.exit_code == 0, result.output
    assert "no value" not in (out / "index.html").read_text()
    events = pd.read_csv(REALDATA / "fcs_manifest.csv").set_index("file")["$TOT"]
    source = ReviewSource(out)
    assert len(source.product_ids()) == 4
    for pid in source.product_ids():
        [judged] = recompute(source, pid, source.automatic(pid)).release
        assert judged.value == events[f"fcs/{pid}.fcs"], pid
        assert judged.outcome == ("pass" if judged.value >= 5000 else "fail"), pid


def test_release_on_an_event_count_no_phenotype_holds_is_refused(til_draft, tmp_path):
    """Any `n_...` column passed the study check, `n_events_total` (the sum over the product's
    controls too, not in the row the release judges) and typos alike: never evaluable, silently ->
    refused in one line naming the file, the line and the counts a release can judge."""
    from tilpheno.scaffold import check_draft

    study = tmp_path / "study"
    shutil.copytree(til_draft, study)
    _edit(study / "release.yaml", "column: viability_pct", "column: n_events_total")
    problem = check_draft(study, SAMPLE)
    assert "release.yaml:5: criteria[0].column: criterion" in problem and "\n" not in problem
    assert "column n_events_total (did you mean n_events_" in problem and "n_events_surface, n_events_treg" in problem


def test_shared_detector_label_is_announced_and_a_panel_row_resolves_it(tmp_path):
    """FlowAtlas donors 423/428 label one detector 'Foxp3-IgM' (a T+B panel): it names no marker, so
    the draft left FoxP3 out of their panel without a word. new-study names the detector, the label
    and the files; a panel file row for the detector makes it FoxP3 and the line goes."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    for name in ("390C_Liver_026.fcs", "423_Donor_Lung_032.fcs", "428_Donor_Lung_029.fcs"):
        shutil.copy(REALDATA / "fcs" / name, folder / name)
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "study")])
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("no marker read")]
    assert "detector FJComp-561 585_15-A's label 'Foxp3-IgM' names FoxP3 and IgM" in line
    assert "2 file(s): 423_Donor_Lung_032.fcs, 428_Donor_Lung_029.fcs" in line
    panel = tmp_path / "panel.csv"
    panel.write_text("tube,detector,marker\n,FJComp-561 585_15-A,FoxP3\n")
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "study2"), "--panel", str(panel)])
    assert result.exit_code == 0, result.output
    assert "no marker read" not in result.output
    draft = draft_study(folder, panel=panel)
    assert all("FoxP3" in t.markers for t in draft.tubes)


def test_a_shared_label_is_announced_on_stained_files_only_with_the_row_to_write(tmp_path):
    """FlowAtlas's 423C and 428C unstained controls label their CD3 detector 'CD3-IgD' (their stained
    files: 'CD3'), and new-study said 'no marker read ... a panel file row says which' of the two
    controls, though a control is read on its stained file's detectors (nothing to do); for the stained
    files' 'Foxp3-IgM' the lab had to work out the row -> only stained and FMO files' labels are named,
    with the rows to write; the row written as printed drafts FoxP3."""
    from tilpheno.io.fcs import read_fcs
    from tilpheno.io.fcs_write import write_fcs

    folder = tmp_path / "fcs"
    folder.mkdir()
    stained = REALDATA / "fcs" / "423_Donor_Lung_032.fcs"
    shutil.copy(stained, folder / stained.name)
    fcs = read_fcs(stained)
    labels = [str(x) for x in fcs.channels["pns"]]
    assert labels[0] == "CD3"
    labels[0] = "CD3-IgD"   # as 423C__Donor_unst_037.cleaned.fcs labels it
    write_fcs(folder / "423_Donor_Lung_032_unstained.fcs", fcs.events[:2000],
              [(str(n), label or None, float(r)) for n, label, r in zip(fcs.channels["pnn"], labels, fcs.channels["pnr"])],
              {"$SRC": fcs.keywords.get("$SRC", "")})
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "study")])
    assert result.exit_code in (0, 1), result.output   # 1: the control's $SRC is not the stained file's product
    assert "unstained" in pd.read_csv(tmp_path / "study" / "manifest.csv")["role"].tolist()
    (line,) = [x for x in result.output.splitlines() if x.startswith("no marker read")]
    assert "'Foxp3-IgM' names FoxP3 and IgM" in line and "1 file(s): 423_Donor_Lung_032.fcs" in line
    row = "',FJComp-561 585_15-A,FoxP3'"
    assert f"e.g. {row} or ',FJComp-561 585_15-A,IgM'" in line
    (tmp_path / "panel.csv").write_text("tube,detector,marker\n" + row.strip("'") + "\n")
    draft = draft_study(folder, panel=tmp_path / "panel.csv")
    assert not draft.shared and all("FoxP3" in t.markers for t in draft.tubes)


def test_a_label_naming_a_second_stain_before_a_marker_or_with_a_plus_is_announced(tmp_path):
    """$PnS 'KLRG1 CD39' (KLRG1 not in the vocabulary) was drafted as CD39, the unknown word before
    it dropped without a word, and 'CD39+TIGIT' as one free-text marker 'CD39+TIGIT' though it names
    two known markers (each file then a tube kind of its own) -> both read as no marker, and
    new-study says so in one line per label naming the detector, the label, the markers and the
    file; the files make one kind (CD3)."""
    import numpy as np

    from tilpheno.io.fcs_write import write_fcs

    folder = tmp_path / "fcs"
    folder.mkdir()
    events = np.random.default_rng(0).uniform(1, 1000, size=(200, 4))
    for product, label in (("P1", "KLRG1 CD39"), ("P2", "CD39+TIGIT")):
        write_fcs(folder / f"{product}_surface.fcs", events, [("FSC-A", None, 262144), ("SSC-A", None, 262144),
                                                               ("FITC-A", "CD3 FITC", 262144), ("PE-A", label, 262144)],
                  {"$SRC": product})
    draft = draft_study(folder)
    assert [t.markers for t in draft.tubes] == [("CD3",)] and draft.tubes[0].products == 2
    assert {(s.label, s.markers, tuple(files)) for s, files in draft.shared.items()} == {
        ("KLRG1 CD39", ("CD39", "KLRG1"), ("P1_surface.fcs",)), ("CD39+TIGIT", ("CD39", "TIGIT"), ("P2_surface.fcs",))}
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "study")])
    assert result.exit_code == 0, result.output
    lines = [x for x in result.output.splitlines() if x.startswith("no marker read")]
    assert len(lines) == 2, result.output
    assert "detector PE-A's label 'KLRG1 CD39' names CD39 and KLRG1" in lines[0] and "1 file(s): P1_surface.fcs" in lines[0]
    assert "detector PE-A's label 'CD39+TIGIT' names CD39 and TIGIT" in lines[1] and "1 file(s): P2_surface.fcs" in lines[1]


def test_index_names_the_gates_that_hold_each_product_for_review(tmp_path):
    """FlowAtlas draft (17 marker gates on all events, no FMO): every product 'needs review', and the
    index said only that, with a flag count ('warning (14) needs review'), while it names each failed
    release criterion: which of 17 gates to look at took opening every report -> under the badge, one
    line per code that holds release with the gates it names, as qc.csv's needs_review rows say
    (the truth here: qc.csv, each message opening with its gate)."""
    import html
    import re

    folder = tmp_path / "fcs"
    folder.mkdir()
    for name in ("390C_Liver_026.fcs", "428_Donor_Lung_029.fcs"):   # two donors, one specimen each
        shutil.copy(REALDATA / "fcs" / name, folder / name)
    study = tmp_path / "study"
    assert _run(["new-study", str(folder), "-o", str(study)]).exit_code == 0
    out = tmp_path / "out"
    result = _run(["process", str(folder), "--study", str(study / "study.yaml"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    qc = pd.read_csv(out / "qc.csv", dtype=str, keep_default_na=False)
    held = qc[qc["needs_review"] == "True"]
    page = (out / "index.html").read_text()
    for product, flags in held.groupby("product_id"):
        row = re.search(rf'>{re.escape(product)}</a></td>(.*?)</tr>', page, re.S).group(1)
        cell = html.unescape(re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)[2])
        lines = dict(line.split(": ", 1) for line in re.findall(r'<span class="reasons">(.*?)</span>', cell))
        assert "needs review" in cell and set(lines) == set(flags["code"]), (product, cell)
        for code, rows in flags.groupby("code"):
            gates = {m.split(" (", 1)[0] for m in rows["message"]}
            assert set(lines[code].split(", ")) == gates, (product, code)


def test_counts_stay_whole_numbers_beside_a_failed_product(tmp_path):
    """FlowAtlas 412C (an export without $PnS, drafted without --panel) fails in process, its counts
    empty; phenotypes.csv then wrote every other product's counts as 5564.0 (a float column) ->
    whole numbers, the stained file's events equal to its $TOT (the data set's own manifest)."""
    import csv

    folder = tmp_path / "fcs"
    folder.mkdir()
    for name in ("390C_Liver_026.fcs", "412C_mLN_026.fcs"):
        shutil.copy(REALDATA / "fcs" / name, folder / name)
    study = tmp_path / "study"
    _run(["new-study", str(folder), "-o", str(study)])
    out = tmp_path / "out"
    result = _run(["process", str(folder), "--study", str(study / "study.yaml"), "-o", str(out), "--reports", "none"])
    assert result.exit_code == 1, result.output   # 412C: no stained tube, only controls
    rows = {r["product_id"]: r for r in csv.DictReader((out / "phenotypes.csv").open())}
    failed = next(r for r in rows.values() if r["status"] == "failed")
    done = next(r for r in rows.values() if r["status"] == "done")
    events = pd.read_csv(REALDATA / "fcs_manifest.csv").set_index("file")["$TOT"]
    assert done["n_events_liver"] == str(events["fcs/390C_Liver_026.fcs"])   # the kind named from TUBE NAME
    blank = blank_variables(pd.read_csv(out / "qc.csv"), done["product_id"])   # resting on an undetermined gate
    for column in (c for c in done if c.startswith("n_")):
        assert done[column].isdigit() or (column in blank and done[column] == ""), (column, done[column])
        assert failed[column] == "" or failed[column].isdigit(), (column, failed[column])


def _expert_pct_of_t_cells(sample: str, subsets: tuple[str, ...]) -> float:
    """The expert's positive T cells of a FlowAtlas file, % of its T cells, from the counts FlowJo
    stored (``stored_counts_from_wsp``): the union of ``subsets`` under ``T cells``."""
    counts = pd.read_csv(REALDATA / "stored_counts_from_wsp_2021-08-06.csv")
    counts = counts[counts["sample_name"] == sample]
    t_cells = counts[counts["population_path"].str.endswith("/T cells")]
    under = counts[counts["population_path"].isin([f"{t_cells['population_path'].iloc[0]}/{s}" for s in subsets])]
    assert len(t_cells) == 1 and len(under) == len(subsets), sample
    return 100.0 * under["count"].sum() / t_cells["count"].iloc[0]


def test_real_tcell_draft_nests_cd4_and_cd8_within_t_cells_as_the_expert(tmp_path):
    """FlowAtlas tissue T cells (FlowJo exports whose $PnS name the markers): the draft gated CD4 and
    CD8 on every event (cd4_pct_of_root: CD4+ of all exported cells) -> CD4+, CD8+ within CD3+ by
    the lineage table; `process` runs the draft and cd4_pct_of_cd3, cd8_pct_of_cd3 are within 5
    points of the expert's CD4+ (its CD4 and CD4+ CD8+ gates) and CD8+ % of T cells (counts FlowJo
    stored), on each file (benchmarks/draft_nesting_realdata.py: median 2.1 / 3.7 points on 14)."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    for file in sorted((REALDATA / "fcs").glob("*.fcs")):
        if not file.name.startswith("412C"):   # no $PnS: labels in the workspace only
            shutil.copy(file, folder / file.name)
    study = tmp_path / "study"
    result = _run(["new-study", str(folder), "-o", str(study)])
    assert result.exit_code == 0, result.output
    manifest = pd.read_csv(study / "manifest.csv", dtype=str, keep_default_na=False)
    manifest["product_id"] = manifest["file"].str.removesuffix(".fcs")   # each specimen its own product
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "out"
    result = _run(["process", str(folder), "--study", str(study / "study.yaml"),
                   "--manifest", str(tmp_path / "manifest.csv"), "-o", str(out), "--reports", "none"])
    assert result.exit_code == 0, result.output
    got = pd.read_csv(out / "phenotypes.csv").set_index("product_id")
    assert len(got) == 4
    for pid, row in got.iterrows():
        for marker, subsets in (("cd4", ("CD4", "CD4+ CD8+")), ("cd8", ("CD8", "CD4+ CD8+"))):
            expert = _expert_pct_of_t_cells(f"{pid}.fcs", subsets)
            assert abs(row[f"{marker}_pct_of_cd3"] - expert) <= 5.0, (pid, marker, row[f"{marker}_pct_of_cd3"], expert)


def test_nesting_needs_the_parent_marker_in_the_same_tube():
    """Only a marker gated in the same tube kind nests another: without CD3, CD4 and CD8 stay under
    the base gate (and CD56 is never nested); without CD4, FoxP3 goes to the next marker up the
    lineage chain that the tube has (CD3); a viability dye is never a parent."""
    from tilpheno.scaffold import nesting

    vocabulary = default_vocabulary()
    assert nesting(("CD4", "CD8", "CD56", "PD1", "7AAD"), "7AAD", vocabulary) == ()
    assert nesting(("CD3", "CD56", "FoxP3", "DAPI"), "DAPI", vocabulary) == (("FoxP3", "CD3"),)
    assert nesting(("CD3", "CD4", "FoxP3", "CD127"), None, vocabulary) == \
        (("CD4", "CD3"), ("FoxP3", "CD4"), ("CD127", "CD4"))
    assert nesting(("CD45", "CD4"), "CD45", vocabulary.with_lineage({"CD4": "CD45"})) == ()


def test_a_lab_lineage_file_overrides_the_table(tmp_path):
    """`new-study --lineage FILE`: a lab's own `lineage:` entries win over the vocabulary's (CD4 not
    nested, PD1 within CD8+): the draft gates and names variables as told, the others keep the
    table's nesting, and `process` runs it. A malformed entry or a cycle is refused in one line
    naming the file and the entry, nothing written (exit 2). The folder: the sample's TIL001 and TIL002
    (both tube kinds, every FMO; the nesting does not depend on how many products are gated)."""
    sample = tmp_path / "fcs"
    sample.mkdir()
    for f in [*SAMPLE.glob("TIL001_*.fcs"), *SAMPLE.glob("TIL002_*.fcs")]:
        shutil.copy(f, sample / f.name)
    lineage = tmp_path / "lineage.yaml"
    lineage.write_text("lineage:\n  CD4: ~\n  PD-1: CD8\n")
    study = tmp_path / "study"
    result = _run(["new-study", str(sample), "-o", str(study), "--lineage", str(lineage)])
    assert result.exit_code == 0, result.output
    surface = yaml.safe_load((study / "surface.yaml").read_text())
    parents = {p["name"]: p["parent"] for p in surface["populations"]}
    assert (parents["CD4+"], parents["PD1+"], parents["CD8+"]) == ("live_lymph", "CD8+", "CD3+")
    assert surface["variables"]["pd1_pct_of_cd8"] == {"numerator": "PD1+", "denominator": "CD8+"}
    assert surface["variables"]["cd4_pct_of_live_lymph"] == {"numerator": "CD4+", "denominator": "live_lymph"}
    out = tmp_path / "out"
    result = _run(["process", str(sample), "--study", str(study / "study.yaml"), "--manifest", str(study / "manifest.csv"),
                   "-o", str(out), "--reports", "none"])
    assert result.exit_code == 0, result.output
    got = pd.read_csv(out / "phenotypes.csv")
    assert list(got["product_id"]) == ["TIL001", "TIL002"]
    assert {"pd1_pct_of_cd8", "cd4_pct_of_live_lymph", "cd8_pct_of_cd3", "foxp3_pct_of_cd4"} <= set(got.columns)
    assert got["pd1_pct_of_cd8"].notna().all()

    for text, expected in (("lineage:\n  CD4: [CD3, CD45]\n", f"{lineage}:2: lineage.CD4: must be one marker name"),
                           ("lineage:\n  CD3: CD4\n", f"{lineage}: lineage.CD3: CD3 -> CD4 -> CD3 nests a marker within itself"),
                           ("linage:\n  CD4: CD3\n", f"{lineage}:1: linage: unknown key")):
        lineage.write_text(text)
        result = _run(["new-study", str(sample), "-o", str(tmp_path / "refused"), "--lineage", str(lineage)])
        assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output, result.output
        assert not (tmp_path / "refused").exists()


def _drafted_pd1(tmp_path: Path, product, lineage: str) -> tuple[float, float, str, str]:
    """Draft a study from one simulated product's files (``lineage``: a --lineage file's text, or
    '') and gate its surface tube: (drafted PD1+ % of the PD1 gate's parent, the ideal FMO gate's
    % of the true parent, that parent's name, the drafted surface.yaml). Truth
    (tilpheno.simulate.truth): the true parent is the drafted one by the event labels (live singlet
    lymphocytes, within CD3+CD8+ when nested); the cut is the 99.5th percentile of the PD1 FMO
    tube's true parent, or, for a product with bench phenomena, of the stained tube's label-negative
    parent (the ideal FMO carries the stained tube's nonspecific binding), compensated with the true
    matrix, applied to the stained tube's true parent."""
    import numpy as np

    from tilpheno.gates.strategy import load_strategy
    from tilpheno.phenotype import analyze_product
    from tilpheno.simulate import instrument as ins
    from tilpheno.simulate.cohort import manifest_rows, write_product
    from tilpheno.simulate.truth import compensated_detector, live_lymphocytes, percent

    write_product(product, tmp_path / "fcs")
    lineage_file = None
    if lineage:
        lineage_file = tmp_path / "lineage.yaml"
        lineage_file.write_text(lineage)
    draft = draft_study(tmp_path / "fcs", lineage=lineage_file)
    write_study(draft, tmp_path / "study")
    text = (tmp_path / "study" / "surface.yaml").read_text()
    manifest = pd.DataFrame(manifest_rows(product))
    manifest = manifest[manifest["tube"] == "surface"].assign(file=lambda m: [str(tmp_path / "fcs" / f) for f in m["file"]])
    result = analyze_product(product.product_id, manifest, [load_strategy(tmp_path / "study" / "surface.yaml")])
    stained = next(t for t in result.tubes if t.role == "stain")
    parent = stained.gates[[g[0] for g in stained.gates].index("PD1+")][1]

    def true_parent(tube):
        mask = live_lymphocytes(tube)
        return mask & tube.labels["cd3"] & tube.labels["cd8"] if lineage else mask

    events, fmo = product.tube("surface", "stain").data, product.tube("surface", "fmo", "PD1").data
    pe_stained = compensated_detector(events, "PE-A", ins.true_spillover())
    negatives = pe_stained[true_parent(events) & ~events.labels["pd1"]] if product.phenomena is not None else \
        compensated_detector(fmo, "PE-A", ins.true_spillover())[true_parent(fmo)]
    truth = percent(pe_stained > np.percentile(negatives, 99.5), true_parent(events))
    return percent(stained.masks["PD1+"], stained.masks[parent]), truth, parent, text


@pytest.mark.parametrize("lineage", ["", "lineage: {PD1: CD8}\n"], ids=["flat", "within_cd8"])
def test_drafted_pd1_gate_agrees_with_the_ideal_fmo_gate(tmp_path, lineage):
    """A dim marker's drafted FMO gate (PD1: the vocabulary's `dim:` list) is `rule: relative`, as
    the TIL strategy's: the default anchored rule cut in the valley of PD1's dim shoulder, 3-5 points
    of live (flat) and of CD8+ (nested) under the ideal FMO gate of a simulated product
    (:func:`_drafted_pd1`)."""
    from tilpheno.simulate.cohort import simulate_product

    drafted, truth, parent, text = _drafted_pd1(tmp_path, simulate_product("LAB1", 2016, 10000), lineage)
    assert "dims: [PD1], method: fmo, params: {rule: relative}}   # its FMO is in the folder; rule relative" in text
    assert "dims: [CD56], method: fmo}   # its FMO is in the folder; rule anchored" in text
    assert parent == ("CD8+" if lineage else "live_lymph")
    assert abs(drafted - truth) <= 1.5


def test_drafted_pd1_gate_leaves_large_binding_cells_out(tmp_path):
    """A product whose large cells (myeloid, tumour) bind antibodies nonspecifically (simulated with
    bench phenomena, seed 70017: 10 % of live singlet cells large): the draft gated PD1 on all live
    cells, where the FMO percentile carried onto that mixed parent placed the cut low, and PD1+ came
    out 8.7 points over the ideal FMO gate's PD1+ % of live lymphocytes -> the draft has a
    lymphocyte scatter gate (`live_lymph`, `method: lymphocytes`, named and explained in the draft)
    between live and the marker gates, and its PD1+ % of live lymphocytes is within tolerance of the
    ideal FMO gate's (:func:`_drafted_pd1`)."""
    from tilpheno.simulate.cohort import simulate_product

    drafted, truth, parent, text = _drafted_pd1(tmp_path, simulate_product("P70017", 70017, 20000, phenomena=True), "")
    assert ("  - {name: live_lymph, parent: live, dims: [FSC-A, SSC-A], method: lymphocytes, params: {ceiling: 262143}}"
            "   # lymphocytes:") in text
    assert "delete this line and write `live` for `live_lymph` below" in text
    assert "`live_lymph` is the lymphocyte scatter gate" in text
    assert abs(drafted - truth) <= TOLERANCE, (parent, drafted, truth)
    assert parent == "live_lymph"


def _drafted_412c_mln(tmp_path: Path, drop: str = "") -> tuple:
    """`new-study` on the FlowAtlas 412C mLN export and its donor's unstained control (tests/data;
    the 412C exports carry no $PnS, panel.csv names their detectors): the drafted strategy (the
    gate and variables of marker ``drop`` removed, as a lab edits its draft), the manifest rows
    with the files' paths and the panel overrides."""
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.panel import read_panel_file

    folder = tmp_path / "fcs"
    folder.mkdir()
    for file in (REALDATA / "fcs" / "412C_mLN_026.fcs", REALDATA / "unstained" / "412C__412C_unst_022.cleaned.fcs"):
        shutil.copy(file, folder / file.name)
    draft = draft_study(folder, panel=REALDATA / "panel.csv")
    write_study(draft, tmp_path / "study")
    [tube] = draft.tubes
    path = tmp_path / "study" / f"{tube.kind}.yaml"
    if drop:
        spec = yaml.safe_load(path.read_text())
        spec["markers"] = [m for m in spec["markers"] if m != drop]
        spec["populations"] = [p for p in spec["populations"] if p["dims"] != [drop]]
        gated = {p["name"] for p in spec["populations"]}
        spec["variables"] = {k: v for k, v in spec["variables"].items() if v["numerator"] in gated}
        spec["checks"] = [c for c in spec.get("checks", []) if set(c["populations"]) <= gated]   # its co-expression check
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
    rows = draft.manifest.assign(file=[str(folder / f) for f in draft.manifest["file"]])
    return load_strategy(path), rows, read_panel_file(REALDATA / "panel.csv")


def test_the_object_model_uses_a_real_unstained_control_without_the_cd19_detector_as_the_pipeline_does(tmp_path):
    """``Sample.from_fcs(..., unstained=True)`` on the 412C control, which has no CD19 detector, raised
    'marker(s) CD19 not found', while the pipeline uses it for the markers it has -> the control keeps
    them, and ``gate_sample`` decides FoxP3+ against it exactly as ``analyze_product`` does on the
    same files (control median, cut, counts)."""
    import tilpheno as tp
    from tilpheno.phenotype import analyze_product

    strategy, rows, panel = _drafted_412c_mln(tmp_path)
    files = dict(zip(rows["role"], rows["file"]))
    stained = tp.Sample.from_fcs(files["stain"], strategy, panel=panel)
    control = tp.Sample.from_fcs(files["unstained"], strategy, unstained=True, stained=stained, panel=panel)
    assert "CD19" in stained.dims and "CD19" not in control.dims
    assert set(control.dims) == set(stained.dims) - {"CD19"}
    result = tp.gate_sample(strategy, stained, controls=[control])
    pipeline = analyze_product("412C_mLN_026", rows, [strategy], panel_override=panel).tubes[0]
    assert pipeline.role == "stain"
    d, ref = result.diagnostics["FoxP3+"], pipeline.diagnostics["FoxP3+"]
    assert (d["unstained_median"], d["threshold"]) == (ref["unstained_median"], ref["threshold"])
    assert result.counts == {str(p): int(c) for p, c in zip(pipeline.populations["population"],
                                                             pipeline.populations["count"])}


def _expert_treg_pct_of_cd4(sample: str) -> float:
    """The expert's Treg (FoxP3+ CD127lo) % of its CD4 T cells, from the counts FlowJo stored."""
    counts = pd.read_csv(REALDATA / "stored_counts_from_wsp_2021-08-06.csv")
    counts = counts[counts["sample_name"] == sample].set_index("population")
    return 100.0 * counts.loc["Treg", "count"] / counts.loc["CD4", "count"]


def test_a_one_population_cut_at_the_data_edge_is_a_review_warning_naming_its_gate(tmp_path):
    """FlowAtlas new-study draft, 412C mLN without its control: FoxP3 of CD4+ shows one population,
    taken as negative; its cut (4 SDs above the peak) lay beyond the highest event and was clamped
    there: FoxP3+ 0.00 % of CD4+ (the expert: Treg, FoxP3+ CD127lo, 21.4 % of CD4) with only an
    info flag, sized at cuts near the data's edge (390C_BM_027: CD127+ 0.00 % of CD4+ likewise) ->
    a warning-level cut_at_scale_edge names the gate, the rule's cut, the data's range and what the
    gate keeps, and the product needs review."""
    from tilpheno.gates.checks import needs_review
    from tilpheno.phenotype import analyze_product

    strategy, rows, panel = _drafted_412c_mln(tmp_path)
    result = analyze_product("412C_mLN_026", rows[rows["role"] == "stain"], [strategy], panel_override=panel)
    tube = result.tubes[0]
    variable = next(v.name for v in strategy.variables if v.numerator == "FoxP3+")
    assert result.phenotype[variable] == 0.0 and _expert_treg_pct_of_cd4("Specimen_001_412C mLN_026.fcs") > 20
    values = tube.data["FoxP3"][tube.masks["CD4+"]]
    [flag] = [f for f in result.qc if f.code == "cut_at_scale_edge"]
    assert flag.gate == "FoxP3+" and flag.severity == "warning" and needs_review(flag)
    d = tube.diagnostics["FoxP3+"]
    assert d["threshold"] == values.max() < d["unclamped_threshold"]
    assert flag.message.startswith(f"FoxP3+ (FoxP3): the cut {d['unclamped_threshold']:.4g} (no second peak; one "
                                   f"population taken as negative, its peak at {d['negative_peak']:.3f}) lies beyond "
                                   f"the parent's events [{values.min():.4g}, {values.max():.4g}]; clamped to "
                                   f"{values.max():.4g}, the gate keeps 0 of {values.size} events (0.00%)")


def test_a_one_population_marker_is_called_against_the_unstained_control(tmp_path):
    """FlowAtlas new-study draft, 412C mLN with its donor's unstained control in the folder: FoxP3 of
    CD4+ has two peaks 0.22 apart (0.25, 0.48: the upper taken for a shoulder of the negatives), so
    one population, judged by its lowest peak's distance from the transformed zero: negative, its
    cut beyond the data, FoxP3+ 0.00 % of CD4+; the control only counted its events above the cut
    afterwards -> the control decides: the main peak lies within 0.25 of the control's median
    (0.07: negative), the other clearly above it (positive), the cut at the valley between them:
    FoxP3+ within 3 points of the expert's Treg (FoxP3+ CD127lo) % of CD4 (20.4 vs 21.4). (The
    412C control has no CD19 detector: the draft's CD19 gate is dropped here, kept in
    test_the_unstained_control_decides_a_one_population_marker_without_a_detector_of_the_tube.)"""
    from tilpheno.phenotype import analyze_product

    strategy, rows, panel = _drafted_412c_mln(tmp_path, drop="CD19")
    result = analyze_product("412C_mLN_026", rows, [strategy], panel_override=panel)
    assert not [f for f in result.qc if f.code == "unstained_unusable"]
    tube = result.tubes[0]
    d = tube.diagnostics["FoxP3+"]
    assert d["negative_peak"] - d["unstained_median"] < 0.25 <= d["positive_peak"] - d["unstained_median"]
    variable = next(v.name for v in strategy.variables if v.numerator == "FoxP3+")
    assert result.phenotype[variable] == pytest.approx(_expert_treg_pct_of_cd4("Specimen_001_412C mLN_026.fcs"), abs=3)
    assert not [f for f in result.qc if f.gate == "FoxP3+" and f.code in ("no_second_peak", "cut_at_scale_edge")]


def test_a_drafted_valley_gate_says_what_decides_one_population(tmp_path):
    """A drafted valley gate's comment said 'no FMO in the folder: the density valley' whether or not
    the folder held an unstained control, though a control decides a one-population gate (place_valley)
    -> the comment says which decides: the product's unstained control when the folder has one (the
    412C mLN export with its donor's control), else the distance from the scale's zero (later: near it
    negative, above it undetermined and flagged, test_one_population_without_a_control_is_undetermined)."""
    with_control, without = tmp_path / "with", tmp_path / "without"
    for folder, files in ((with_control, (REALDATA / "fcs" / "412C_mLN_026.fcs",
                                          REALDATA / "unstained" / "412C__412C_unst_022.cleaned.fcs")),
                          (without, (REALDATA / "fcs" / "412C_mLN_026.fcs",))):
        folder.mkdir()
        for file in files:
            shutil.copy(file, folder / file.name)
    for folder, words in ((with_control, "one population is called against the product's unstained control"),
                          (without, "one population near the scale's zero is negative, above it undetermined, "
                                    "held as positive and flagged (no unstained control in the folder; "
                                    "one_population: positive or negative states it)")):
        draft = draft_study(folder, panel=REALDATA / "panel.csv")
        write_study(draft, tmp_path / f"study_{folder.name}")
        [tube] = draft.tubes
        lines = [line for line in (tmp_path / f"study_{folder.name}" / f"{tube.kind}.yaml").read_text().splitlines()
                 if "method: valley" in line and "name: FoxP3+" in line]
        assert len(lines) == 1 and words in lines[0], lines


def test_disjoint_tube_kinds_are_drafted_optional_others_required():
    """A kind is optional when no product has it together with some other kind; a kind that only
    some products have beside one they all share stays required (a missing tube)."""
    from tilpheno.scaffold import disjoint_kinds

    assert disjoint_kinds({"t": {"A", "B"}, "b": {"C"}}) == {"t", "b"}
    assert disjoint_kinds({"surface": {"A", "B", "C"}, "treg": {"A", "B"}}) == set()
    assert disjoint_kinds({"lineage": {"A", "B", "C", "D"}, "t": {"A", "B"}, "b": {"C", "D"}}) == {"t", "b"}


def test_two_panels_draft_optional_kinds_and_every_product_runs(tmp_path):
    """FlowAtlas's five specimens, 412C mLN with the data set's panel file (a T+B panel, CD19): the
    draft had a second tube kind that no other product has, warned that process fails every product
    (each lacks one kind) and exited 1 -> both kinds are drafted `optional: true`, the closing message
    says so, exit 0; process exits 0, every product done with its own kind's variables (its stained
    file's events its $TOT, the data set's manifest) and the other kind's blank, named in absent_tubes."""
    import json

    from tilpheno.pipeline.jobs import outcome_from_record
    from tilpheno.study import load_study

    folder = tmp_path / "fcs"
    shutil.copytree(REALDATA / "fcs", folder)
    panel = tmp_path / "panel.csv"
    shutil.copy(REALDATA / "panel.csv", panel)
    study = tmp_path / "study"
    result = _run(["new-study", str(folder), "-o", str(study), "--panel", str(panel)])
    assert result.exit_code == 0, result.output
    kinds = load_study(study / "study.yaml").tubes
    assert len(kinds) == 2 and all(k.optional for k in kinds.values())
    assert sum(f"tube kind {k}: optional (no product has it with another kind" in result.output for k in kinds) == 2
    assert "process fails" not in result.output
    manifest = pd.read_csv(study / "manifest.csv", dtype=str, keep_default_na=False)
    manifest["product_id"] = manifest["file"].str.removesuffix(".fcs")   # each specimen its own product, as told
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "out"
    result = _run(["process", str(folder), "--study", str(study / "study.yaml"), "--manifest", str(tmp_path / "manifest.csv"),
                   "--panel", str(panel), "-o", str(out), "--reports", "none"])
    assert result.exit_code == 0, result.output
    got = pd.read_csv(out / "phenotypes.csv").set_index("product_id")
    events = pd.read_csv(REALDATA / "fcs_manifest.csv").set_index("file")["$TOT"]
    variables = {k: list(yaml.safe_load((study / f"{k}.yaml").read_text())["variables"]) for k in kinds}
    kind_of = dict(zip(manifest["product_id"], manifest["tube"]))
    assert len(got) == 5 and (got["status"] == "done").all()
    records = {r.product_id: r for r in (outcome_from_record(json.loads(p.read_text()))
                                         for p in (out / ".cache").rglob("outcome.json"))}
    qc = pd.read_csv(out / "qc.csv", dtype=str, keep_default_na=False)
    for product, kind in kind_of.items():
        other = next(k for k in kinds if k != kind)
        blank = blank_variables(qc, product)   # resting on a gate undetermined without a control: no number
        measured = [v for v in variables[kind] if v not in blank]
        counts = {c for c in got.columns if c.startswith("n_") and c.endswith(f"_{kind}")}
        assert blank <= set(variables[kind]) | counts and got.loc[product, sorted(blank)].isna().all()
        assert got.loc[product, measured].notna().all() and got.loc[product, variables[other]].isna().all()
        assert got.loc[product, f"n_events_{kind}"] == events[f"fcs/{product}.fcs"]
        assert got.loc[product, "absent_tubes"] == other
        # release on the product's own kind's criterion (the drafted n_events_<kind> >= min_events), the
        # other kind's not applicable: $TOT against the limit, held while a gate needs review
        limit = {c["column"]: c["limit"] for c in yaml.safe_load((study / "release.yaml").read_text())["criteria"]}
        own = "pass" if events[f"fcs/{product}.fcs"] >= limit[f"n_events_{kind}"] else "fail"
        assert {r.criterion.column: r.result() for r in records[product].release} == {
            f"n_events_{kind}": own, f"n_events_{other}": f"not applicable (no {other} tube; optional)"}
        held = got.loc[product, "review_status"] == "needs review"
        assert got.loc[product, "release_status"] == ("fail" if own == "fail" else "not evaluable" if held else "pass")


def test_the_unstained_control_decides_a_one_population_marker_without_a_detector_of_the_tube(tmp_path):
    """The same draft with its CD19 gate kept: the 412C control has no CD19 detector and was unusable
    for the whole tube (``unstained_unusable``), so FoxP3 of CD4+ was again one population called
    from the transformed zero (FoxP3+ 0.00 %) -> the control is used for the markers it has: FoxP3+
    is decided against it exactly as in the draft without CD19 (same control median, cut and %),
    and one info line names CD19 and its gate."""
    from tilpheno.phenotype import analyze_product

    (tmp_path / "all").mkdir()
    (tmp_path / "without").mkdir()
    strategy, rows, panel = _drafted_412c_mln(tmp_path / "all")
    without, rows_without, _ = _drafted_412c_mln(tmp_path / "without", drop="CD19")
    result = analyze_product("412C_mLN_026", rows, [strategy], panel_override=panel)
    reference = analyze_product("412C_mLN_026", rows_without, [without], panel_override=panel)
    assert not [f for f in result.qc if f.code == "unstained_unusable"]
    d, ref = result.tubes[0].diagnostics["FoxP3+"], reference.tubes[0].diagnostics["FoxP3+"]
    assert (d["unstained_median"], d["threshold"]) == (ref["unstained_median"], ref["threshold"])
    variable = next(v.name for v in strategy.variables if v.numerator == "FoxP3+")
    assert result.phenotype[variable] == reference.phenotype[variable] > 15
    cd19 = [p.name for p in strategy.populations if p.dims == ("CD19",)]
    [line] = [f.message for f in result.qc if f.code == "unstained_control" and "no detector for" in f.message]
    assert line.startswith("the unstained control 412C__412C_unst_022.cleaned.fcs has no detector for CD19 "
                           f"(FJComp-405 585_15-A), which the 412C_mLN_026.fcs gate(s) {', '.join(cd19)} read")


def test_a_one_population_gate_is_placed_once(tmp_path, monkeypatch):
    """412C mLN with its donor's unstained control: each gate the control decides as one population
    (PD1+, FoxP3+, CD127+) was placed twice, once without the control to find it one population,
    then again with it -> once, the decision against the control made on the same density. Every
    per-file gate of the stained file is placed once; the outputs are those of the two placements
    (the cut and median against the pipeline's in
    test_the_object_model_uses_a_real_unstained_control_without_the_cd19_detector_as_the_pipeline_does,
    against the expert in test_a_one_population_marker_is_called_against_the_unstained_control)."""
    import collections

    import tilpheno.phenotype as phenotype

    strategy, rows, panel = _drafted_412c_mln(tmp_path)
    placed: collections.Counter = collections.Counter()
    place_on = phenotype._place_on

    def counting(pop, tube, *args, **kw):
        placed[(tube.role, pop.name)] += 1
        return place_on(pop, tube, *args, **kw)

    monkeypatch.setattr(phenotype, "_place_on", counting)
    result = phenotype.analyze_product("412C_mLN_026", rows, [strategy], panel_override=panel)
    decided = {p for p, d in result.tubes[0].diagnostics.items() if "unstained_median" in d}
    assert decided == {"PD1+", "FoxP3+", "CD127+"}
    per_file = {p.name for p in strategy.populations if p.boolean is None and p.method not in ("fmo", "fixed")}
    assert placed == {("stain", name): 1 for name in per_file}, placed


def test_the_unstained_control_is_read_once_per_tube_kind(tmp_path, decodes):
    """The one-population decision read the product's unstained control (412C mLN's FoxP3 of CD4+,
    decided against it) and the self-check read it again for the same tube kind: two decodes of the
    same file -> one, shared by both (the decision's values are checked against the expert in
    test_a_one_population_marker_is_called_against_the_unstained_control)."""
    from tilpheno.phenotype import analyze_product

    strategy, rows, panel = _drafted_412c_mln(tmp_path, drop="CD19")
    decoded = decodes
    result = analyze_product("412C_mLN_026", rows, [strategy], panel_override=panel)
    d = result.tubes[0].diagnostics["FoxP3+"]
    assert "unstained_median" in d   # the control decided the one-population cut
    assert [f for f in result.qc if f.code == "unstained_control"]   # and the self-check ran on it
    assert decoded["412C__412C_unst_022.cleaned.fcs"] == 1, decoded


def _newlab_panels():
    """The new lab's panels (make_newlab.TUBES: tube -> markers) and study til's surface markers
    (til_surface.yaml): the truth the unfit-stain line is checked against."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_newlab", NEWLAB / "make_newlab.py")
    assert spec is not None and spec.loader is not None
    make_newlab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_newlab)
    surface = yaml.safe_load((ROOT / "tilpheno" / "studies" / "til" / "til_surface.yaml").read_text())["markers"]
    return make_newlab.TUBES, surface


def _assert_newlab_unfit_line(output: str, fate: str = "process fails them") -> None:
    """``output`` (scan's or process's, tests/data/newlab under til) has the one line on the lab's
    three stained files: what each has that surface does not gate, what it lacks, ``fate``, and new-study."""
    tubes, surface = _newlab_panels()
    lines = [x for x in output.splitlines() if "fit no tube kind" in x]
    assert len(lines) == 1, output
    (line,) = lines
    assert line.startswith("3 stained files fit no tube kind of study til (surface, treg): "), line
    for kind, markers in sorted(tubes.items()):
        extra = sorted(m for m in markers if m not in surface)
        missing = [m for m in surface if m not in markers]
        assert f"LAB7_{kind}_stain.fcs (read as surface: has {', '.join(extra)}, not gated there; lacks " \
               f"{', '.join(missing)})" in line, (kind, line)
    assert line.endswith(f"{fate}. Another lab's panel: tilpheno new-study {NEWLAB} -o DIR drafts a study "
                         "of the files' own tube kinds, then scan or process with --study DIR/study.yaml"), line


def test_scan_says_when_a_new_labs_stained_files_fit_no_tube_kind_of_the_study():
    """A new lab's folder scanned under the default study (til): its three stained files (tcell,
    exhaustion, residency panels) were all read as one product's surface tube, and the only advice
    was to rename products (duplicate_tube), while process fails every one of them (marker not
    found) -> one line says which stained files fit no tube kind of study til, what each has that
    its kind does not gate and what it lacks, and points to tilpheno new-study; no duplicate-stain
    line for them. Truth: the lab's panels (make_newlab.TUBES) against til_surface.yaml's markers.
    The TIL sample folder, and the lab's folder under its own study, give no such line."""
    result = _run(["scan", str(NEWLAB), "--panel", str(NEWLAB / "panel.csv")])
    assert result.exit_code == 0, result.output
    _assert_newlab_unfit_line(result.output)
    assert not [x for x in result.output.splitlines() if x.startswith("product LAB7")], result.output
    for args in (["scan", str(SAMPLE)], ["scan", str(NEWLAB), "--study", str(NEWLAB / "study.yaml"), "--panel",
                                         str(NEWLAB / "panel.csv")]):
        result = _run(args)
        assert result.exit_code == 0 and "fit no tube kind" not in result.output, result.output


def test_scan_with_a_manifest_and_report_say_when_a_new_labs_stained_files_fit_no_tube_kind(tmp_path):
    """scan and process said that a new lab's stained files fit no tube kind of study til; scan
    --manifest (a manifest listing them as surface stains) and report (drawing a run of that folder)
    said nothing of it -> both print the same line (what each file has that surface does not gate,
    what it lacks, new-study). Truth: make_newlab.TUBES against til_surface.yaml's markers."""
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("file,product_id,tube,role,fmo_marker\n" + "".join(
        f"fcs/LAB7_{kind}_stain.fcs,LAB7,surface,stain,\n" for kind in ("tcell", "exhaustion", "residency")))
    result = _run(["scan", str(NEWLAB), "--manifest", str(manifest), "--panel", str(NEWLAB / "panel.csv")])
    assert result.exit_code == 0, result.output
    _assert_newlab_unfit_line(result.output)
    out = tmp_path / "out"
    result = _run(["process", str(NEWLAB), "-o", str(out), "--panel", str(NEWLAB / "panel.csv"), "--reports", "later"])
    assert result.exit_code == 1, result.output
    result = _run(["report", str(out)])
    assert result.exit_code == 1, result.output
    _assert_newlab_unfit_line(result.output)
    # the study's own files: no such line with a manifest either
    result = _run(["scan", str(SAMPLE), "--manifest", str(SAMPLE / "manifest.csv")])
    assert result.exit_code == 0 and "fit no tube kind" not in result.output, result.output


def test_unfit_stains_leave_out_files_whose_labels_name_no_marker():
    """The criterion of scan's line: a stained file fits no kind when it names a marker its kind
    does not gate and lacks one it does; a TIL file lacking one label (no other marker) and an
    export without $PnS (no marker named: a panel file's case) are no other lab's panel."""
    from tilpheno.pipeline.inputs import UnfitStain, unfit_stains

    manifest = pd.DataFrame({"file": ["a.fcs", "b.fcs", "c.fcs", "d.fcs", "e.fcs"],
                             "tube": ["surface", "surface", "surface", "unknown", "surface"],
                             "role": ["stain", "stain", "stain", "stain", "fmo"]})
    markers = {"a.fcs": ("CD3", "CD4", "CD8"), "b.fcs": (), "c.fcs": ("CD3", "CD4", "CD45"), "d.fcs": ("CD19",),
               "e.fcs": ("CD45",)}
    kinds = {"surface": ("CD3", "CD4", "CD8", "PD-1")}
    assert unfit_stains(manifest, markers, kinds, default_vocabulary()) == [
        UnfitStain("c.fcs", "surface", ("CD45",), ("CD8", "PD-1")), UnfitStain("d.fcs", "unknown", ("CD19",), ())]
    # a kind whose strategy names no marker (a Gating-ML or FlowJo tree) fits any file
    assert unfit_stains(manifest, markers, {**kinds, "unknown": ()}, default_vocabulary()) == [
        UnfitStain("c.fcs", "surface", ("CD45",), ("CD8", "PD-1"))]


def test_process_says_in_one_line_when_a_new_labs_stained_files_fit_no_tube_kind(tmp_path):
    """process of a new lab's folder under the default study (til) failed its product with one
    reason holding every dropped file's whole panel error (10 files, each with its full channel
    list: ~5,000 characters) and no word of new-study -> the product still fails (exit 1, failed
    in run.json, phenotypes.csv and index.html; every file's full message, channels included, in
    qc.csv), its reason names each stained file with the markers the kind needs that it lacks,
    without channel lists, and the run closes with scan's line: the files that fit no tube kind of
    study til and tilpheno new-study FOLDER -o DIR, then --study DIR/study.yaml. Truth: the lab's
    panels (make_newlab.TUBES) against til_surface.yaml's markers. No duplicate_tube flag: it said
    '3 surface stained files ...; the variables come from the first gated by name, none' and asked
    to check a re-acquired tube or two samples under one product id, while no stained file was
    gated (no variables to come from one of them): a review flag and a summary word of noise."""
    import json

    tubes, surface = _newlab_panels()
    out = tmp_path / "out"
    result = _run(["process", str(NEWLAB), "-o", str(out), "--panel", str(NEWLAB / "panel.csv"), "--reports", "none"])
    assert result.exit_code == 1, result.output
    run = json.loads((out / "run.json").read_text())
    assert list(run["result"]["failed"]) == ["LAB7"] and run["result"]["ok"] is False
    reason = run["result"]["failed"]["LAB7"]
    phen = pd.read_csv(out / "phenotypes.csv", keep_default_na=False).set_index("product_id")
    assert phen.loc["LAB7", "status"] == "failed" and phen.loc["LAB7", "error"] == reason
    assert "1 failed" in (out / "index.html").read_text()
    assert "\n" not in reason and "$PnN" not in reason and "FSC-A" not in reason, reason
    for kind, markers in sorted(tubes.items()):
        missing = [m for m in surface if m not in markers]
        assert f"LAB7_{kind}_stain.fcs: panel_error: marker(s) {', '.join(missing)} not found;" in reason, reason
    assert f"failed LAB7: {reason}" in result.output
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False)
    errors = qc[qc["code"] == "panel_error"]
    assert sorted(errors["file"]) == sorted(p.name for p in (NEWLAB / "fcs").glob("*.fcs"))
    assert errors["message"].str.contains(r"channels \(\$PnN \(\$PnS\)\): FSC-A").all()
    assert "duplicate_tube" not in set(qc["code"]) and "duplicate_tube" not in result.output, result.output
    _assert_newlab_unfit_line(result.output)


def test_scan_takes_a_detector_gated_as_it_is_for_a_marker_of_its_kind():
    """The new lab's folder under its own study without its panel file: the residency stain's
    FITC-A has no label (CD103 unnamed, a panel file's case) and its DAPI sits on BV421-A, which
    residency.yaml gates as a detector (``detectors``), not as a marker. scan said the file fits
    no tube kind of study newlab (has DAPI, not gated there; lacks CD103) and pointed to
    new-study -> no such line: a kind gating N detectors as they are fits a file with up to N
    markers it does not name."""
    result = _run(["scan", str(NEWLAB / "fcs"), "--study", str(NEWLAB / "study.yaml")])
    assert result.exit_code == 0, result.output
    assert "fit no tube kind" not in result.output and "fits no tube kind" not in result.output, result.output
    residency = yaml.safe_load((NEWLAB / "residency.yaml").read_text())
    assert residency["detectors"] and "DAPI" not in residency["markers"]   # the case this test is about


def test_process_of_til_files_says_nothing_of_another_labs_panel(tmp_path):
    """The TIL sample's TIL001 and TIL002, TIL001's surface stain without its PD1 label: TIL001
    fails (marker PD1 not found: a panel file's case, not another lab's panel), TIL002 is done,
    and no line says that files fit no tube kind; nor for the new lab's folder under its own study
    without its panel file (CD103 unnamed: the product fails, a panel file's case)."""
    from tilpheno.io.fcs import read_fcs
    from tilpheno.io.fcs_write import write_fcs

    folder = tmp_path / "in"
    folder.mkdir()
    for f in [*SAMPLE.glob("TIL001_*.fcs"), *SAMPLE.glob("TIL002_*.fcs")]:
        shutil.copy(f, folder / f.name)
    stain = folder / "TIL001_surface_stain.fcs"
    fcs = read_fcs(stain)
    pns = [None if "PD1" in str(s) or "PD-1" in str(s) else (str(s) or None) for s in fcs.channels["pns"]]
    assert pns != [str(s) or None for s in fcs.channels["pns"]]   # a PD1 label was there
    channels = [(str(n), s, float(r)) for n, s, r in zip(fcs.channels["pnn"], pns, fcs.channels["pnr"])]
    keywords = {k: v for k, v in fcs.keywords.items() if not k.startswith("$") or k in ("$SRC", "$FIL", "$CYT")}
    write_fcs(stain, fcs.events.astype("float32"), channels, keywords, spillover=fcs.spillover)
    result = _run(["process", str(folder), "-o", str(tmp_path / "out"), "--reports", "none"])
    assert result.exit_code == 1, result.output
    assert "failed TIL001: " in result.output and "marker(s) PD1 not found" in result.output, result.output
    assert "failed TIL002" not in result.output and "fit no tube kind" not in result.output, result.output
    result = _run(["process", str(NEWLAB / "fcs"), "--study", str(NEWLAB / "study.yaml"), "-o", str(tmp_path / "own"),
                   "--reports", "none"])
    assert result.exit_code == 1 and "marker(s) CD103 not found" in result.output, result.output
    assert "fits no tube kind" not in result.output, result.output


def test_a_new_labs_full_manifest_under_the_study_points_to_new_study(tmp_path):
    """A new lab's whole manifest (its three stained files and its FMO controls, CD39 among them)
    listed under the bundled til study: scan --manifest and process --manifest stopped at the first
    FMO of a marker til does not gate with "'CD39' is not a marker of the surface tube (did you mean
    'CD3'?)": a different molecule offered as a typo, and never the line that scanning the folder
    prints -> one line naming the manifest's row and column that says the stained files fit no tube
    kind of study til (each with what it has and lacks; truth: make_newlab.TUBES against
    til_surface.yaml) and points to new-study; no "did you mean". That line said "process fails them" there too,
    where process refuses the whole manifest (exit 2, nothing run) -> "scan and process refuse this manifest"."""
    fcs = sorted((NEWLAB / "fcs").glob("*.fcs"))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("file,product_id,tube,role,fmo_marker\n" + "".join(
        f"fcs/{p.name},LAB7,surface,{'fmo' if '_FMO_' in p.name else 'stain'},"
        f"{p.stem.split('_FMO_')[1] if '_FMO_' in p.name else ''}\n" for p in fcs))
    first = next(i for i, p in enumerate(fcs) if p.name == "LAB7_exhaustion_FMO_CD39.fcs")
    assert first == 0
    for args in (["scan", str(NEWLAB), "--manifest", str(manifest)],
                 ["process", str(NEWLAB), "--manifest", str(manifest), "-o", str(tmp_path / "out"), "--reports", "none"]):
        result = _run([*args, "--panel", str(NEWLAB / "panel.csv")])
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert text.startswith(f"error: {manifest}: row 2, column 'fmo_marker': 'CD39' is not a marker of the surface "
                               "tube (its markers: CD3, CD4, CD8, CD56, PD1, 7AAD): "), text
        assert "did you mean" not in text and "Traceback" not in text, text
        _assert_newlab_unfit_line(text[text.index("3 stained files"):], "scan and process refuse this manifest")
    assert not (tmp_path / "out").exists()


ARIA = ("FSC LinA", "SSC LinA", "488/552nm FITC (530/30) LogH", "488/552nm PE (580/30) LogH", "488/552nm PI (615/30) LogH",
        "642nm APC (676/29) LogH", "Time")


def _aria_file(path: Path, labels: dict[str, str], keywords: dict[str, str]) -> None:
    """A FACSAria-named export ($PnN as the instrument names its detectors); ``labels``: $PnN -> $PnS."""
    import numpy as np

    from tilpheno.io.fcs_write import write_fcs

    events = np.random.default_rng(0).uniform(1, 1000, size=(200, len(ARIA)))
    write_fcs(path, events, [(n, labels.get(n), 262144) for n in ARIA], keywords)


def test_an_unused_pi_detector_is_no_stain_and_an_export_without_pns_is_a_control(tmp_path):
    """A lab labelling its panel in $PnS (CD3, CD8, CD4), its FACSAria's PI detector unused and
    unlabelled, and an export with no $PnS and no tube name: scan said the stained file "has PI,
    not gated there", new-study drafted a PI viability gate on the unused detector and the export
    as a stained 'PI' tube kind -> the stained file has CD3, CD8, CD4 (no PI line, no live gate on
    PI) and the export is an unstained control, a product of controls only that process fails, as
    the README says of exports without $PnS."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    _aria_file(folder / "P1_surface_stain.fcs", {ARIA[2]: "CD3", ARIA[3]: "CD8", ARIA[5]: "CD4"}, {"TUBE NAME": "surface"})
    _aria_file(folder / "P1_unstained.fcs", {}, {"TUBE NAME": "unstained"})
    _aria_file(folder / "P1_noname.fcs", {}, {})
    scanned = _run(["scan", str(folder), "-o", str(tmp_path / "m.csv")])
    assert "has PI" not in scanned.output, scanned.output
    rows = pd.read_csv(tmp_path / "m.csv", dtype=str, keep_default_na=False).set_index("file")
    assert rows.loc["P1_noname.fcs", "role"] == "unstained" and rows.loc["P1_surface_stain.fcs", "role"] == "stain"
    study = tmp_path / "study"
    result = _run(["new-study", str(folder), "-o", str(study)])
    assert result.exit_code == 1, result.output   # the controls-only product needs a panel file first
    assert list(yaml.safe_load((study / "study.yaml").read_text())["tubes"]) == ["surface"]
    surface = yaml.safe_load((study / "surface.yaml").read_text())
    assert surface["markers"] == ["CD3", "CD8", "CD4"] and "live" not in {p["name"] for p in surface["populations"]}
    assert "process fails it: product P1_noname: no stained tube, only controls" in " ".join(result.output.split())


def test_a_diva_export_labelled_by_detector_keeps_its_pi_detector_with_a_panel_file(tmp_path):
    """A lab whose exports carry no $PnS (labels by detector: PI on its PI detector) and whose panel
    file names the antibodies only: the PI detector is the viability dye the draft gates low."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    _aria_file(folder / "P1_surface_stain.fcs", {}, {"TUBE NAME": "surface"})
    _aria_file(folder / "P1_unstained.fcs", {}, {"TUBE NAME": "unstained"})
    panel = tmp_path / "panel.csv"
    panel.write_text(f"tube,detector,marker\n,{ARIA[2]},CD3\n,{ARIA[3]},CD8\n,{ARIA[5]},CD4\n")
    [tube] = draft_study(folder, panel=panel).tubes
    assert set(tube.markers) == {"CD3", "CD8", "CD4", "PI"} and tube.viability == "PI"


def test_scan_writing_a_manifest_says_what_process_does_with_it(tmp_path):
    """scan FOLDER -o m.csv of a new lab's folder under til said its stained files fit no tube kind
    and "process fails them": true of `process FOLDER`, but `process --manifest m.csv` refuses the
    manifest scan had just written (its FMO rows of markers til does not gate; exit 2, nothing run)
    -> the line says both, naming those FMO markers (truth: the written manifest's FMO rows against
    til_surface.yaml's markers); with -o of a folder of stained files only, whose manifest process
    runs (failing them), the line says "process fails them" as before."""
    written = tmp_path / "m.csv"
    panel = ["--panel", str(NEWLAB / "panel.csv")]
    result = _run(["scan", str(NEWLAB), *panel, "-o", str(written)])
    assert result.exit_code == 0, result.output
    _, surface = _newlab_panels()
    fmo = pd.read_csv(written, dtype=str).query("role == 'fmo'")["fmo_marker"]
    ungated = sorted(set(fmo) - set(surface))
    assert ungated and set(fmo) & set(surface)   # some FMO markers are til's, some not: the case of this test
    _assert_newlab_unfit_line(result.output, f"process {NEWLAB} fails them; process --manifest {written} refuses the "
                                             f"manifest written here (nothing run): it lists FMO controls of "
                                             f"{', '.join(ungated)}, which study til does not gate")
    refused = _run(["process", str(NEWLAB), "--manifest", str(written), *panel, "-o", str(tmp_path / "out")])
    assert refused.exit_code == 2 and not (tmp_path / "out").exists(), refused.output
    stains = tmp_path / "stains"
    stains.mkdir()
    for stain in (NEWLAB / "fcs").glob("*_stain.fcs"):
        shutil.copy(stain, stains)
    result = _run(["scan", str(stains), *panel, "-o", str(written)])
    assert result.exit_code == 0 and "process fails them. Another lab's panel" in result.output, result.output
    ran = _run(["process", str(stains), "--manifest", str(written), *panel, "-o", str(tmp_path / "ran"), "--reports", "none"])
    assert ran.exit_code == 1 and "failed LAB7" in ran.output, ran.output


def test_new_study_of_the_current_folder_names_it(tmp_path, monkeypatch):
    """`new-study . -o DIR`, run in the lab's FCS folder: the draft's study.yaml said
    "description: drafted from the FCS files of " (no folder) and each strategy "stained ... files in
    /." -> both name the folder (its name, as the study's name already was)."""
    folder = tmp_path / "lab7_fcs"
    shutil.copytree(NEWLAB / "fcs", folder)
    monkeypatch.chdir(folder)
    study = tmp_path / "study"
    result = _run(["new-study", ".", "-o", str(study), "--panel", str(NEWLAB / "panel.csv")])
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load((study / "study.yaml").read_text())
    assert (doc["study"], doc["description"]) == ("lab7_fcs", "drafted from the FCS files of lab7_fcs")
    for kind in doc["tubes"]:
        first = (study / f"{kind}.yaml").read_text().splitlines()[0]
        assert first.endswith(f"stained '{kind}' files in lab7_fcs/."), first


def test_new_study_names_an_unlabelled_dye_detector_it_took_as_unused(tmp_path):
    """A lab labelling CD3, CD8, CD4 in $PnS whose FACSAria PI detector has no label: the draft gates
    no PI (taken as unused) and said nothing, so a lab that did stain with PI lost its viability gate
    without a word -> one line names the detector, the dye and the files, and the panel file row
    that names it; with that row the draft gates PI (live, kept low) and the line is gone."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    _aria_file(folder / "P1_surface_stain.fcs", {ARIA[2]: "CD3", ARIA[3]: "CD8", ARIA[5]: "CD4"}, {"TUBE NAME": "surface"})
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "study")])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert (f"not gated: detector {ARIA[4]}, named after PI, has no $PnS label in stained files that label their panel "
            "in $PnS: taken as unused; if they were stained with PI, a panel file row (tube, detector, marker) names it "
            "(1 file(s): P1_surface_stain.fcs)") in said, said
    panel = tmp_path / "panel.csv"
    panel.write_text(f"tube,detector,marker\nsurface,{ARIA[4]},PI\n")
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "with"), "--panel", str(panel)])
    assert result.exit_code == 0 and "not gated: detector" not in result.output, result.output
    surface = yaml.safe_load((tmp_path / "with" / "surface.yaml").read_text())
    assert {"name": "live", "parent": "root", "dims": ["PI"], "method": "valley",
            "params": {"keep": "low", "one_population": "negative"}} \
        in surface["populations"]


def _dump_panel(tmp_path: Path) -> Path:
    """The panel file row a lab gives 100715.fcs's dump channel (V450-A, 'VIVID / CD14') to gate it as the live gate."""
    panel = tmp_path / "dump.csv"
    panel.write_text("tube,detector,marker\n,V450-A,LiveDead\n")
    return panel


def test_a_dump_channel_names_its_dye_and_its_marker(tmp_path):
    """100715.fcs (FACSAria) labels its V450-A detector 'VIVID / CD14': a viability dye and CD14 on one
    dump detector. CD14 was read as VIVID's clone (an unknown word after a known marker, as 'CD3 OKT3'),
    the label as the dye only: the draft gated it as pure viability, viability_pct and its release
    criterion counting CD14+ monocytes as dead cells, CD14 named nowhere. A CD name is a molecule, never
    a clone: the label names both, is read as neither, and new-study says so in one line naming the
    detector, the label, the file and what a panel row naming the dye does; with that row the live gate
    is drafted on it."""
    vocabulary = default_vocabulary()
    assert vocabulary.named_markers("VIVID / CD14") == ("LiveDead", "CD14") and vocabulary.marker_in("VIVID / CD14") is None
    assert vocabulary.marker_in("CD4 CD45RA") is None and vocabulary.marker_in("CD3 OKT3") == "CD3"
    assert vocabulary.marker_in("CD45RA BV605") == "CD45RA" and vocabulary.marker_in("CD8a") == "CD8"
    folder = tmp_path / "fcs"
    folder.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "fcs" / "flowio" / "100715.fcs", folder / "100715.fcs")
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "study")])
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if "VIVID / CD14" in line]
    assert len(said) == 1 and "V450-A" in said[0] and "100715.fcs" in said[0] and "CD14+ cells out with the dead" in said[0]
    assert "no viability dye" in result.output
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "with"), "--panel", str(_dump_panel(tmp_path))])
    assert result.exit_code == 0 and "viability dye LiveDead" in result.output and "VIVID" not in result.output, result.output


def test_one_population_in_the_drafted_viability_dye_is_the_live_cells(tmp_path):
    """A FACSAria file (flowio's 100715.fcs; its VIVID / CD14 dump channel the viability dye by a panel row, no FMO,
    no unstained control): the dye's one peak lies above the scale's zero (amine dyes stain live
    cells dimly), and the drafted live gate took it as dead: live kept 0.18 % of singlets, every
    later gate starved and the product failed -> the one population is the live cells: live keeps
    all singlets up to the cut 4 SD above the peak (the singlets' own events below it, counted
    independently), the product is done, and the live gate stays held for review (its size counts
    the other side's call)."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "fcs" / "flowio" / "100715.fcs", folder / "100715.fcs")
    study, panel = tmp_path / "study", _dump_panel(tmp_path)
    assert _run(["new-study", str(folder), "-o", str(study), "--panel", str(panel)]).exit_code == 0
    out = tmp_path / "out"
    result = _run(["process", str(folder), "--study", str(study / "study.yaml"), "--manifest",
                   str(study / "manifest.csv"), "--panel", str(panel), "-o", str(out), "--reports", "none"])
    assert result.exit_code == 0, result.output
    counts = pd.read_csv(out / "populations.csv").set_index("population")["count"]
    assert counts["live"] / counts["singlets"] > 0.95, counts[["singlets", "live"]]
    live = pd.read_csv(out / "qc.csv").query("gate == 'live' and code == 'no_second_peak'")
    assert len(live) == 1 and live["needs_review"].all() and "taken as negative" in live["message"].iloc[0]


def test_one_population_without_a_control_is_undetermined(tmp_path):
    """100715.fcs (a FACSAria file; no FMO, no unstained control) drafted and processed: 9 marker gates
    show one population above the scale's zero, and each was 'all peaks taken as positive' by that
    distance alone (CD4+ 97.6 % and CD8+ 93.8 % of CD3+: impossible together) -> each flag says the call
    is undetermined without an FMO or unstained control, held as positive, with the negative call's cut
    and what decides it; CD3+'s flag is a review, not sized, the % it moves resting on CD3+ itself (undet_52: 'changes
    cd3_pct_of_lymph by 88.0 points' before; msgs_53: sized, its severity rested on that held %); CD4+, placed within
    CD3+, says its size rests on CD3+; the product needs review.
    Stating the side in the strategy (one_population: positive) decides it: no undetermined flag."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "fcs" / "flowio" / "100715.fcs", folder / "100715.fcs")
    study = tmp_path / "study"
    assert _run(["new-study", str(folder), "-o", str(study)]).exit_code == 0

    def process(out: Path) -> pd.DataFrame:
        result = _run(["process", str(folder), "--study", str(study / "study.yaml"), "--manifest",
                       str(study / "manifest.csv"), "-o", str(out), "--reports", "none"])
        assert result.exit_code == 0, result.output
        return pd.read_csv(out / "qc.csv").query("code == 'no_second_peak'").set_index("gate")

    flags = process(tmp_path / "out")
    held = [gate for gate, message in flags["message"].items() if "no negative density peak" in message]
    assert {"CD3+", "CD4+", "CD8+"} <= set(held) and len(held) == 9, flags["message"].to_dict()
    for gate in held:
        message = flags.loc[gate, "message"]
        marker = gate.rstrip("+")
        assert "taken as positive" not in message and f"one population and no FMO or unstained control of {marker}: " \
            "positive or negative undetermined" in message and "one_population: positive or negative" in message, message
        assert flags.loc[gate, "needs_review"], message
    cd3 = flags.loc["CD3+", "message"]
    negative = float(cd3.split("as negative its cut would be ")[1].split(")")[0])
    assert cd3.endswith("; size: not measured, the percentages it moves rest on CD3+ itself (undetermined: no FMO or "
                        "unstained control) and are not reported") and "cd3_pct_of_lymph" not in cd3, cd3
    assert flags.loc["CD3+", "severity"] == "warning"   # not sized: its side is for a reviewer to decide
    # CD4+ is placed within CD3+, held: its size would be counted on held events, so it is not given (left_49)
    assert "size: not measured, the percentages it moves rest on CD3+" in flags.loc["CD4+", "message"], flags.loc["CD4+"]
    from tilpheno.review.regate import ReviewSource, evaluate

    source = ReviewSource(tmp_path / "out")   # the gates as held, counted on the file (populations.csv leaves them blank)
    stained = source.stained("Specimen_001")["tube025"]
    masks = evaluate(stained.strategy, stained.tube, source.automatic("Specimen_001")["tubes"]["tube025"]["gates"])
    held_pct = 100 * masks["CD3+"].sum() / masks["lymph"].sum()   # held as positive (its % left blank: tests/test_undetermined.py)
    lymph = stained.tube.data["CD3"][masks["lymph"]]
    assert held_pct > 50 and 100 * np.count_nonzero(lymph > negative) / lymph.size < 1   # the negative call: CD3+ about 0 %
    _edit(study / "tube025.yaml", "name: CD3+, parent: lymph, dims: [CD3], method: valley, params: {keep: high}",
          "name: CD3+, parent: lymph, dims: [CD3], method: valley, params: {keep: high, one_population: positive}")
    stated = process(tmp_path / "stated").loc["CD3+", "message"]
    assert "undetermined" not in stated and "by the strategy (one_population: positive)" in stated, stated


def test_a_marker_of_one_positive_population_is_no_residual_target(tmp_path):
    """100715.fcs drafted without controls: compensation_residual said 'CCR7-negative events shift +0.082
    per unit of CD28 (R710-A -> G610-A, matrix coefficient 0.0000): under-compensated' (and CD8, V800-A;
    CCR5, G780-A): CCR7's gate saw one population, held as positive, so its 'negatives' were the low
    tail of the positives, which leans with every co-expressed marker, across lasers where no spillover
    is -> a marker whose gates called their one population positive is no residual target; stated
    negative (one_population: negative: every event a negative) it is one again."""
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.phenotype import analyze_product

    folder = tmp_path / "fcs"
    folder.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "fcs" / "flowio" / "100715.fcs", folder / "100715.fcs")
    study = tmp_path / "study"
    assert _run(["new-study", str(folder), "-o", str(study)]).exit_code == 0
    rows = pd.DataFrame([{"file": str(folder / "100715.fcs"), "product_id": "P", "tube": "tube025", "role": "stain",
                          "fmo_marker": ""}])

    def gated():
        result = analyze_product("P", rows, [load_strategy(study / "tube025.yaml")])
        residual = result.tubes[0].compensation.residual
        return result, result.tubes[0].diagnostics["CCR7+"], set(residual["target"]) if "target" in residual else set()

    result, ccr7, targets = gated()
    assert "positive_peak" in ccr7 and "negative_peak" not in ccr7   # one population, held as positive
    assert "G610-A" not in targets and not [f for f in result.qc if f.code == "compensation_residual"]
    _edit(study / "tube025.yaml", "name: CCR7+, parent: lymph, dims: [CCR7], method: valley, params: {keep: high}",
          "name: CCR7+, parent: lymph, dims: [CCR7], method: valley, params: {keep: high, one_population: negative}")
    result, ccr7, targets = gated()
    assert "negative_peak" in ccr7 and "G610-A" in targets   # CCR7's detector


def test_a_gate_starved_by_a_gate_above_names_that_gate(tmp_path):
    """The same file with the live gate's one population decided by its distance from zero (taken
    as dead: live keeps 118 singlets): CD127+ (within CD4+ within CD3+) failed the product with
    'CD127+: ... only 1 events to place the gate on', naming the gate that could not be placed but
    not the one that emptied it (qc.csv's low_events does) -> the line names the first gate on the
    way down that left fewer than 20 events, with its count and its parent's (populations.csv's)."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "fcs" / "flowio" / "100715.fcs", folder / "100715.fcs")
    study, panel = tmp_path / "study", _dump_panel(tmp_path)
    assert _run(["new-study", str(folder), "-o", str(study), "--panel", str(panel)]).exit_code == 0
    # the one population stated dead (positive in the dye), as an undetermined gate is held, and CD3's and CD4's
    # stated positive: populations.csv counts them (an undetermined gate's counts are blank: test_undetermined.py)
    _edit(study / "tube025.yaml", "keep: low, one_population: negative", "keep: low, one_population: positive")
    for marker in ("CD3", "CD4"):
        _edit(study / "tube025.yaml", f"dims: [{marker}], method: valley, params: {{keep: high}}",
              f"dims: [{marker}], method: valley, params: {{keep: high, one_population: positive}}")
    out = tmp_path / "out"
    result = _run(["process", str(folder), "--study", str(study / "study.yaml"), "--manifest",
                   str(study / "manifest.csv"), "--panel", str(panel), "-o", str(out), "--reports", "none"])
    assert result.exit_code == 1, result.output
    counts = pd.read_csv(out / "populations.csv").set_index("population")["count"]
    assert counts["CD3+"] >= 20 > counts["CD4+"]   # CD4+ is the first gate on the way down below 20
    said = f"CD4+ left {counts['CD4+']} of the {counts['CD3+']} events of CD3+"
    qc = pd.read_csv(out / "qc.csv")
    for code in ("gate_failed", "product_failed"):
        message = qc.query("code == @code")["message"].iloc[0]
        assert message.startswith("CD127+" if code == "gate_failed" else "100715.fcs") and said in message, message
    assert said in " ".join(result.output.split())


def test_a_tube_name_of_a_role_word_and_a_number_names_its_kind(tmp_path):
    """FACSDiva names tubes 'Tube_025' (100715.fcs, a FACSAria file): its words are a role word and a
    number, so the kind was drafted 'tube1', a name that is nowhere in the lab's files -> the TUBE NAME
    its stained files share, whole: tube025 (study.yaml, the strategy file, the manifest). Two kinds'
    files with one shared TUBE NAME stay tube1, tube2 (the name would not tell them apart)."""
    from tilpheno.io.fcs import read_fcs_metadata
    from tilpheno.scaffold import _kinds

    folder = tmp_path / "fcs"
    folder.mkdir()
    source = ROOT / "tests" / "data" / "fcs" / "flowio" / "100715.fcs"
    assert read_fcs_metadata(source, checksum=False).keywords["TUBE NAME"] == "Tube_025"
    shutil.copy(source, folder / "100715.fcs")
    draft = draft_study(folder)
    assert [t.kind for t in draft.tubes] == ["tube025"] and list(draft.manifest["tube"]) == ["tube025"]
    write_study(draft, tmp_path / "study")
    assert (tmp_path / "study" / "tube025.yaml").exists()
    assert "tube025: {strategy: tube025.yaml" in (tmp_path / "study" / "study.yaml").read_text()
    same = [{**_stained("P1", [], ["CD3", "CD4"]), "tube_name": "tube025"},
            {**_stained("P1", [], ["CD19"]), "tube_name": "tube025"}]
    assert sorted(_kinds(same)) == ["tube1", "tube2"]


def test_a_kind_name_is_never_after_an_article(tmp_path):
    """Two panels (P1 stained with one, P2 with the other; TUBE NAMEs 'surface' and 'il10'): new-study
    said 'for the 1 of 2 products without a il10 file' and the codebook 'blank for a product without a
    il10 tube' (an article before a name that starts with a vowel sound; a manifest FMO marker on an
    unstained row: 'given for a unstained row') -> the lines name the kind or role without an article."""
    from design_support import design_file

    from tilpheno.io.manifest import read_manifest

    folder = tmp_path / "fcs"
    folder.mkdir()
    design_file(folder, "P1 a.fcs", "surface", keywords={"$SRC": "P1", "TUBE NAME": "surface"})
    design_file(folder, "P2 b.fcs", "treg", keywords={"$SRC": "P2", "TUBE NAME": "il10"})
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "study")])
    assert result.exit_code == 0, result.output
    assert "for the 1 of 2 products with no il10 file" in result.output, result.output
    assert " a il10" not in result.output and " a surface" not in result.output
    from tilpheno.report.codebook import _optional_said
    from tilpheno.gates.strategy import load_strategy

    strategy = load_strategy(tmp_path / "study" / "il10.yaml")
    said = _optional_said({v.name: {"meaning": "m"} for v in strategy.variables}, [strategy], frozenset({"il10"}))
    assert {e["meaning"] for e in said.values()} == {"m; blank for a product with no il10 tube (optional in the study)"}
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,product_id,tube,role,fmo_marker\nP1 a.fcs,P1,unstained,unstained,CD3\n")
    with pytest.raises(TableError, match="'CD3' given for a row of role unstained"):
        read_manifest(manifest, base=folder)


def test_a_folder_of_unlabelled_exports_says_they_are_controls(tmp_path):
    """A Fortessa export with no $PnS (fcsparser's FCS_3.0_Fortessa_PBS_Specimen_001_A1_A01.fcs; a lab
    that labels its panel in FlowJo): new-study refused with '(1 file(s), 0 unreadable)', saying neither
    what became of the file nor what to do -> the line counts the files taken as unstained controls, why,
    and names the panel file that makes them stained; with it the folder drafts."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "fcs" / "fcsparser_instruments" / "Fortessa" /
                "FCS_3.0_Fortessa_PBS_Specimen_001_A1_A01.fcs", folder / "A01.fcs")
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "study")])
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and line.endswith(
        "(1 file(s), 0 unreadable, 1 taken as unstained controls: no $PnS label on their fluorescence detectors, or "
        "their names say so; a panel file (--panel, columns tube, detector, marker) naming their markers makes them "
        "stained files)"), result.output
    panel = tmp_path / "panel.csv"
    panel.write_text("tube,detector,marker\n,FITC-A,CD3\n,PE-Texas Red-A,CD8\n")
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "study"), "--panel", str(panel)])
    assert result.exit_code == 0 and "markers CD3, CD8" in result.output, result.output


def test_a_marker_labelled_on_two_detectors_is_said(tmp_path):
    """flowio's data1.fcs (FACSCalibur) with FL2-H labelled 'CD8 A PE' (the alpha chain, CD8; the file's
    own 'CD8 B PE' is CD8b, the beta chain: tests/test_panel.py) and FL4-H 'CD8 APC': the draft gated CD8
    on FL2-H and said nothing of FL4-H, a stained detector gated nowhere -> new-study names the marker,
    the detector gated and the other with its label, in one line with the file; a panel row naming the
    other detector's marker (CD8beta, the beta chain) settles it and the line goes. FACSDiva's -A/-H/-W of one detector
    labelled alike are one detector, not said."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    data = (ROOT / "tests" / "data" / "fcs" / "flowio" / "data1.fcs").read_bytes()
    assert data.count(b"CD8 B PE") == 1
    (folder / "data1.fcs").write_bytes(data.replace(b"CD8 B PE", b"CD8 A PE"))   # as long: the offsets hold
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "study")])
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if line.startswith("one marker")]
    assert said == ["one marker, 2 detectors: CD8 is gated on FL2-H ('CD8 A PE'); the $PnS of FL4-H ('CD8 APC') names it "
                    "too, not gated (another stain of CD8, or a label to correct: a panel file row (tube, detector, "
                    "marker) names its marker) (1 file(s): data1.fcs)"], result.output
    panel = tmp_path / "panel.csv"
    panel.write_text("tube,detector,marker\n,FL2-H,CD8beta\n")
    result = _run(["new-study", str(folder), "-o", str(tmp_path / "with"), "--panel", str(panel)])
    assert result.exit_code == 0 and "one marker" not in result.output and "markers CD4, CD8b, CD3" in result.output, \
        result.output   # CD8beta: the vocabulary's CD8b, another marker than CD8 (the alpha chain)
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "fcs" / "flowio" / "data1.fcs", plain / "data1.fcs")
    result = _run(["new-study", str(plain), "-o", str(tmp_path / "own")])   # the file's own 'CD8 B PE': CD8b
    assert result.exit_code == 0 and "one marker" not in result.output and "markers CD4, CD8b, CD3, CD8" in result.output, \
        result.output
    diva = _run(["new-study", str(ROOT / "tests" / "data" / "fcs" / "fcsparser_instruments" / "FACS_Diva"), "-o",
                 str(tmp_path / "diva")])
    assert diva.exit_code == 0 and "one marker" not in diva.output, diva.output


def test_a_panel_row_whose_tube_applies_to_no_file_is_named(tmp_path):
    """FlowAtlas 412C mLN (no $PnS: the panel file names every marker) with one row's tube misspelt
    ('412D' for '412C'): the row labelled nothing and said nothing; scan then called the file one
    that 'fits no tube kind' of a study drafted from it ('lacks CD69') and pointed to new-study,
    and process failed the product with 'marker(s) CD69 not found', neither naming the panel row.
    scan and new-study now name the row (file, row, detector, marker) in one line; a panel whose
    rows all apply says nothing of the kind."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    shutil.copy(REALDATA / "fcs" / "412C_mLN_026.fcs", folder / "412C_mLN_026.fcs")
    rows = [("412C", "FJComp-355 379_28-A", "CD3"), ("412C", "FJComp-355 820_60-A", "CD4"),
            ("412C", "FJComp-355 740_35-A", "CD69"), ("", "FJComp-561 585_15-A", "FoxP3")]
    good, bad = tmp_path / "panel.csv", tmp_path / "panel_typo.csv"
    good.write_text("tube,detector,marker\n" + "".join(f"{t},{d},{m}\n" for t, d, m in rows))
    bad.write_text("tube,detector,marker\n" + "".join(f"{'412D' if m == 'CD69' else t},{d},{m}\n" for t, d, m in rows))
    want = (f"{bad}: row 4: tube '412D' applies to no file of {folder} (no tube kind, TUBE NAME or file name is it, "
            "nor a word of them): its row (FJComp-355 740_35-A: CD69) labels nothing")
    for command in (["scan", str(folder)], ["new-study", str(folder), "-o", str(tmp_path / "study_typo")]):
        result = _run([*command, "--panel", str(bad)])
        assert [line for line in result.output.splitlines() if "applies to no file" in line] == [want], result.output
    for command in (["scan", str(folder)], ["new-study", str(folder), "-o", str(tmp_path / "study")]):
        result = _run([*command, "--panel", str(good)])
        assert "applies to no file" not in result.output, result.output
    assert "cd69_pct_of" in (tmp_path / "study" / "study.yaml").read_text()   # the row applies: CD69 drafted
    assert "cd69_pct_of" not in (tmp_path / "study_typo" / "study.yaml").read_text()


def test_a_pair_a_cell_rarely_carries_drafts_a_co_expression_check(tmp_path):
    """new-study drafted no co-expression check, so a new lab's 100715.fcs (no FMO, no unstained control)
    had CD4+ and CD8+ each ~95 % of CD3+, CD3+ and CD19+ each most of the lymphocytes, and nothing said
    they cannot both be right -> the vocabulary's `exclusive:` pairs gated within one parent are drafted
    as `checks: [{kind: co_expression, ...}]`, their comment saying the limit is the lab's to set; the
    run flags both gates of each pair, the share the double positives of the masks as held. data1.fcs
    (FACSCalibur: CD4 and CD8 within CD3, no CD19) drafts only CD4/CD8; sample_fcs's TIL panel
    (CD4 and CD8 within CD3+) drafts it."""
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.review.regate import ReviewSource, evaluate

    folder = tmp_path / "fcs"
    folder.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "fcs" / "flowio" / "100715.fcs", folder / "100715.fcs")
    study = tmp_path / "study"
    assert _run(["new-study", str(folder), "-o", str(study)]).exit_code == 0
    text = (study / "tube025.yaml").read_text()
    assert "checks:\n  - {kind: co_expression, populations: [CD4+, CD8+], limit: 10}   # vocabulary `exclusive:`" in text
    assert "populations: [CD3+, CD19+], limit: 10}" in text and "The limit is the lab's to set" in text
    pairs = {c.populations: c.limit for c in load_strategy(study / "tube025.yaml").co_expression}
    assert pairs == {("CD3+", "CD19+"): 10.0, ("CD4+", "CD8+"): 10.0}
    out = tmp_path / "out"
    assert _run(["process", str(folder), "--study", str(study / "study.yaml"), "--manifest", str(study / "manifest.csv"),
                 "-o", str(out), "--reports", "none"]).exit_code == 0
    flags = pd.read_csv(out / "qc.csv").query("code == 'co_expression'").set_index("gate")["message"]
    assert sorted(flags.index) == ["CD19+", "CD3+", "CD4+", "CD8+"]
    source = ReviewSource(out)
    stained = source.stained("Specimen_001")["tube025"]
    masks = evaluate(stained.strategy, stained.tube, source.automatic("Specimen_001")["tubes"]["tube025"]["gates"])
    share = 100 * (masks["CD4+"] & masks["CD8+"]).sum() / masks["CD3+"].sum()
    assert share > 80   # counted on the masks (API); the flag quotes no held share (its gates are undetermined)
    assert "more than the 10 % of CD3+ the strategy allows are both CD4+ and CD8+" in flags["CD4+"]
    assert f"{share:.1f}" not in flags["CD4+"] and "%" not in flags["CD4+"].replace("10 %", "")
    calibur = tmp_path / "calibur"
    calibur.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "fcs" / "flowio" / "data1.fcs", calibur / "data1.fcs")
    assert _run(["new-study", str(calibur), "-o", str(tmp_path / "s1")]).exit_code == 0
    assert [c.populations for c in load_strategy(tmp_path / "s1" / "data1.yaml").co_expression] == [("CD4+", "CD8+")]
    til = draft_study(SAMPLE)
    for tube in til.tubes:
        assert tube.exclusive == (("CD4", "CD8"),) if {"CD4", "CD8"} <= set(tube.markers) else not tube.exclusive


def test_a_labs_manifest_gives_the_draft_its_products_and_tubes(tmp_path):
    """FlowAtlas's 390C ileum and liver exports share $SRC's donor: new-study made them one product
    '390C' with two stained files of one tube (duplicate_tube) and could only name manifest lines to
    edit by hand -> ``new-study --manifest`` takes each file's product, tube and role from the lab's
    own table: the draft's products are the lab's, its tube kind named by the lab's tube, a file the
    table leaves out is left out, and process runs the draft as written. A bad table is refused in
    one line naming its row (a missing file; one panel's files in two tubes), nothing drafted."""
    atlas = Path(__file__).parent / "data" / "realdata_flowatlas" / "fcs"
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("390C_Ileum_028.fcs", "390C_Liver_026.fcs", "423_Donor_Lung_032.fcs"):
        shutil.copy(atlas / name, inputs / name)
    inferred = _run(["new-study", str(inputs), "-o", str(tmp_path / "inferred")])   # one product '390C', two tissues
    assert "duplicate_tube" in inferred.output, inferred.output
    assert (f"can give them instead of editing the lines above: tilpheno new-study {inputs} -o {tmp_path / 'inferred'} "
            "--manifest lab.csv") in " ".join(inferred.output.split())
    table = tmp_path / "lab.csv"
    table.write_text("file,product_id,tube,role\n390C_Ileum_028.fcs,390C ileum,T cell,stain\n"
                     "390C_Liver_026.fcs,390C liver,T cell,stain\n")
    study = tmp_path / "study"
    result = _run(["new-study", str(inputs), "-o", str(study), "--manifest", str(table)])
    assert result.exit_code == 0, result.output
    assert "duplicate_tube" not in result.output
    assert "left out: 423_Donor_Lung_032.fcs: not in the manifest" in result.output
    drafted = pd.read_csv(study / "manifest.csv", dtype=str, keep_default_na=False)
    assert drafted[["file", "product_id", "tube", "role"]].values.tolist() == [
        ["390C_Ileum_028.fcs", "390C ileum", "t_cell", "stain"], ["390C_Liver_026.fcs", "390C liver", "t_cell", "stain"]]
    assert (study / "t_cell.yaml").is_file()
    out = tmp_path / "out"
    result = _run(["process", str(inputs), "--study", str(study / "study.yaml"), "--manifest", str(study / "manifest.csv"),
                   "-o", str(out), "--reports", "none"])
    assert result.exit_code == 0, result.output
    phenotypes = pd.read_csv(out / "phenotypes.csv")
    assert sorted(phenotypes["product_id"]) == ["390C ileum", "390C liver"] and set(phenotypes["status"]) == {"done"}

    for rows, said in (
            ("390C_Ileum_028.fcs,390C ileum,T cell,stain\n390C_Liver.fcs,390C liver,T cell,stain\n",
             f"{table}: row 3, column 'file': '390C_Liver.fcs' does not exist"),
            ("390C_Ileum_028.fcs,390C ileum,T cell,stain\n390C_Liver_026.fcs,390C liver,Tcell,stain\n",
             f"{table}: row 2, column 'tube': 390C_Ileum_028.fcs is in tube 'T cell' and {table}: row 3: "
             "390C_Liver_026.fcs in tube 'Tcell', with the same markers")):
        table.write_text("file,product_id,tube,role\n" + rows)
        result = _run(["new-study", str(inputs), "-o", str(tmp_path / "refused"), "--manifest", str(table)])
        assert result.exit_code == 2, result.output
        assert " ".join(result.output.split()).startswith(f"error: {said}"), result.output
        assert not (tmp_path / "refused").exists()


def test_a_drafted_one_population_gate_with_a_control_keeps_its_tail_of_positives(tmp_path):
    """FlowAtlas 412C mLN drafted as README's lab does (new-study --manifest with the donor's unstained
    control, --panel naming the export's detectors), no FMO: CXCR3, CD25 and CCR4 are one population
    each, called negative against the control, and the valley cut 4 robust SDs above the population's
    own peak, beyond its largest event: cut_at_scale_edge, 0 events kept, where the expert's Th1 gate
    (CXCR3+ CCR6- memory CD4 T cells) holds 462 events -> rule unstained_carry: the control's 99.5th
    percentile carried to the population's peak, inside the data. Truth: the expert's stored counts
    (tests/data/realdata_flowatlas, MIT): at least the Th1 cells are CXCR3+; the control keeps at most
    0.5 % of its events above each carried cut (the rule's own percentile, 0.1 point of slack)."""
    atlas = ROOT / "tests" / "data" / "realdata_flowatlas"
    inputs = tmp_path / "in"
    inputs.mkdir()
    control = "412C__412C_unst_022.cleaned.fcs"
    shutil.copy(atlas / "fcs" / "412C_mLN_026.fcs", inputs)
    shutil.copy(atlas / "unstained" / control, inputs)
    (tmp_path / "lab.csv").write_text(f"file,product_id,tube,role\n412C_mLN_026.fcs,412C mLN,T cell,stain\n"
                                      f"{control},412C mLN,T cell,unstained\n")
    panel = pd.read_csv(atlas / "panel.csv", dtype=str, keep_default_na=False)
    panel = pd.concat([panel[panel["tube"].isin(["*", "412C_mLN_026"])].assign(tube=""), pd.DataFrame(
        [("", "FJComp-488 715_30-A", "CXCR3"), ("", "FJComp-640 670_30-A", "CD25"), ("", "FJComp-405 605_40-A", "CCR4")],
        columns=panel.columns)])
    panel.to_csv(tmp_path / "panel.csv", index=False)
    study = tmp_path / "study"
    result = _run(["new-study", str(inputs), "-o", str(study), "--manifest", str(tmp_path / "lab.csv"),
                   "--panel", str(tmp_path / "panel.csv")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    result = _run(["process", str(inputs), "--study", str(study / "study.yaml"), "--manifest", str(study / "manifest.csv"),
                   "--panel", str(tmp_path / "panel.csv"), "-o", str(out), "--reports", "none"])
    assert result.exit_code == 0, result.output
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False)
    populations = pd.read_csv(out / "populations.csv").set_index("population")
    counts = pd.read_csv(atlas / "stored_counts_from_wsp_2021-08-06.csv")
    th1 = int(counts.loc[(counts["sample_name"] == "Specimen_001_412C mLN_026.fcs") & (counts["population"] == "CD4 | Th1"),
                         "count"].iloc[0])
    assert populations.loc["CXCR3+", "count"] >= th1 == 462
    assert "cut_at_scale_edge" not in set(qc["code"]), qc[qc["code"] == "cut_at_scale_edge"]["message"].tolist()
    for gate in ("CXCR3+", "CD25+", "CCR4+"):
        [said] = qc.loc[(qc["gate"] == gate) & (qc["code"] == "no_second_peak"), "message"]
        assert "rule unstained_carry" in said and "the control lacks the other stains' spreading" in said, said
    [checked] = [m for m in qc.loc[qc["code"] == "unstained_control", "message"] if "above each positive gate's cut" in m]
    for gate in ("CXCR3+", "CD25+", "CCR4+"):
        share = float(re.search(rf"{re.escape(gate)} ([0-9.]+)% of", checked).group(1))
        assert share <= 0.6, checked
