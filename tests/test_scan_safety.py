"""Scanning and reading never hang, crash or wander (issue 11): FIFOs and device links named .fcs,
names that are not UTF-8, folders that cannot be listed, deep nesting, files outside the folder."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tilpheno.errors import TableError
from tilpheno.io.files import display_name, open_regular
from tilpheno.io.manifest import list_fcs_files, read_manifest, scan_folder
from tilpheno.pipeline import process_folder
from tilpheno.provenance import sha256_file
from tilpheno.simulate.cohort import simulate_product, write_product

EVENTS = 2000


@pytest.fixture(scope="module")
def product_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("p1")
    write_product(simulate_product("P1", 41, EVENTS), folder)
    return folder


def _cli(*args, timeout=240):
    """The CLI in a child process with a time limit: a hang fails the test instead of the suite."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "tilpheno.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, errors="replace")


def test_fifo_and_device_named_fcs_never_block(product_files, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(product_files, folder)
    (folder / "P1_treg_FMO_FoxP3.fcs").unlink()
    os.mkfifo(folder / "P1_treg_FMO_FoxP3.fcs")              # nobody ever writes to it
    with pytest.raises(OSError, match="FIFO"):
        sha256_file(folder / "P1_treg_FMO_FoxP3.fcs")
    frame = scan_folder(folder)
    problem = frame.set_index(frame["file"].map(lambda f: Path(f).name)).loc["P1_treg_FMO_FoxP3.fcs", "problem"]
    assert "not a regular file (a FIFO)" in problem
    result = _cli("process", folder, "-o", tmp_path / "out")
    # an FMO file: fallback gate, product done; the run read not every input: exit status 1
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 of 1 products done, 0 failed" in result.stdout
    qc = pd.read_csv(tmp_path / "out" / "qc.csv")
    assert "P1_treg_FMO_FoxP3.fcs" in set(qc.loc[qc["code"] == "unreadable_file", "file"])


def test_link_to_dev_zero_is_outside_and_not_regular(product_files, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(product_files, folder)
    (folder / "P1_treg_stain.fcs").unlink()
    (folder / "P1_treg_stain.fcs").symlink_to("/dev/zero")
    problem = scan_folder(folder).set_index("file").loc[str(folder / "P1_treg_stain.fcs"), "problem"]
    assert "links to a file outside" in problem and "--allow-outside" in problem
    problem = scan_folder(folder, allow_outside=True).set_index("file").loc[str(folder / "P1_treg_stain.fcs"), "problem"]
    assert "not a regular file (a device)" in problem
    result = _cli("process", folder, "-o", tmp_path / "out", "--allow-outside")
    assert result.returncode == 1, result.stdout + result.stderr
    phen = pd.read_csv(tmp_path / "out" / "phenotypes.csv")
    assert phen["status"].tolist() == ["failed"] and "no usable treg stained file" in phen["error"].item()


def test_link_to_a_readable_file_outside_is_not_read(product_files, tmp_path):
    """scan says a link out of the folder is 'not read (pass --allow-outside)': process read it all
    the same (the product done from the outside file, exit 0) -> it is not read: the product fails
    naming the link, as scan's problem says; with allow_outside it is read and the product done."""
    folder, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    shutil.copytree(product_files, folder)
    elsewhere.mkdir()
    (folder / "P1_treg_stain.fcs").rename(elsewhere / "P1_treg_stain.fcs")
    (folder / "P1_treg_stain.fcs").symlink_to(elsewhere / "P1_treg_stain.fcs")
    summary = process_folder(folder, tmp_path / "out", make_reports=False)
    assert summary.done == [] and "no usable treg stained file" in summary.failed["P1"]
    qc = pd.read_csv(tmp_path / "out" / "qc.csv", keep_default_na=False)
    unreadable = qc[qc["code"] == "unreadable_file"]
    assert unreadable["file"].tolist() == ["P1_treg_stain.fcs"]
    assert "links to a file outside" in unreadable["message"].item()
    summary = process_folder(folder, tmp_path / "out2", make_reports=False, allow_outside=True)
    assert summary.done == ["P1"]


def test_manifest_files_must_lie_under_the_folder(product_files, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:secret-bytes\n")
    folder = tmp_path / "in"
    shutil.copytree(product_files, folder)
    rows = scan_folder(folder)[["file", "product_id", "tube", "role", "fmo_marker"]].copy()
    rows["file"] = rows["file"].map(lambda f: Path(f).name)
    rows.loc[len(rows)] = ["../secret.txt", "P1", "surface", "fmo", "CD3"]
    rows.to_csv(folder / "m.csv", index=False)
    with pytest.raises(TableError, match=r"row 11,.*'\.\./secret\.txt' lies outside"):
        read_manifest(folder / "m.csv", base=folder)
    result = _cli("process", folder, "-o", tmp_path / "out", "--manifest", folder / "m.csv")
    assert result.returncode == 2 and "--allow-outside" in result.stderr
    assert not (tmp_path / "out" / "qc.csv").exists()


def test_names_that_are_not_utf8(product_files, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for f in product_files.glob("*.fcs"):
        name = os.fsdecode(f.name.replace("P1", "P\xe9").encode("latin-1"))   # b"P\xe9_..." is not UTF-8
        shutil.copy(f, folder / name)
    frame = scan_folder(folder)
    assert frame["product_id"].unique().tolist() == ["P\\xe9"] and (frame["problem"] == "").all()
    out = tmp_path / "out"
    summary = process_folder(folder, out)
    assert summary.ok and summary.done == ["P\\xe9"]
    assert pd.read_csv(out / "phenotypes.csv")["product_id"].tolist() == ["P\\xe9"]
    assert any("P\\\\xe9_surface_stain.fcs" in line or "\\udce9" in line for line in (out / "run.json").read_text().splitlines())
    assert len(list((out / "products").glob("*/report.html"))) == 1
    result = _cli("scan", folder)
    assert result.returncode == 0, result.stderr


def test_names_that_are_not_utf8_in_messages_and_failures(product_files, tmp_path):
    """A product failing on a file whose name is not UTF-8 named it in its error; writing that error
    to phenotypes.parquet raised UnicodeEncodeError and the whole run ended in a traceback. The
    messages of qc.csv and the report showed the raw escape (\\udce9). Every message now shows \\xNN."""
    folder = tmp_path / "in"
    folder.mkdir()
    odd = os.fsdecode("P1_unstained \xe9.fcs".encode("latin-1"))
    for f in product_files.glob("*.fcs"):
        shutil.copy(f, folder / (odd if "unstained" in f.name else f.name))
    orphan = os.fsdecode("P\xe92_surface_FMO_CD3.fcs".encode("latin-1"))   # a product with no stained file: fails
    shutil.copy(product_files / "P1_surface_FMO_CD3.fcs", folder / orphan)
    out = tmp_path / "out"
    summary = process_folder(folder, out)
    assert summary.done == ["P1"] and list(summary.failed) == ["P\\xe92"]
    phen = pd.read_parquet(out / "phenotypes.parquet").set_index("product_id")
    assert "P\\xe92_surface_FMO_CD3.fcs" in phen.loc["P\\xe92", "error"]
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False)
    assert not qc["message"].str.contains("\udce9", regex=False).any()
    unstained = qc[qc["code"] == "unstained_control"]["message"]
    assert len(unstained) and unstained.str.contains("P1_unstained \\xe9.fcs", regex=False).all()
    report = (out / "products" / "P1" / "report.html").read_text(encoding="utf-8")
    assert "P1_unstained \\xe9.fcs" in report and "\udce9" not in report


def test_unlistable_folder_is_flagged_not_skipped(product_files, tmp_path, refuse_listing):
    """A folder that cannot be listed is named (qc.csv), not skipped silently."""
    folder = tmp_path / "in"
    shutil.copytree(product_files, folder)
    hidden = folder / "second_batch"
    hidden.mkdir()
    refuse_listing(hidden)
    problems = []
    assert len(list_fcs_files(folder, problems)) == 9
    assert problems == [(str(hidden), "Permission denied")]
    summary = process_folder(folder, tmp_path / "out", make_reports=False)
    assert summary.done == ["P1"] and not summary.ok   # exit 1: a folder's files may be missing
    qc = pd.read_csv(tmp_path / "out" / "qc.csv", keep_default_na=False)
    row = qc[qc["code"] == "unlistable_folder"]
    assert len(row) == 1 and row["severity"].item() == "error" and "second_batch" in row["message"].item()


def test_deeply_nested_folders_walk_iteratively(product_files, tmp_path):
    folder = tmp_path / "deep"
    deepest = folder
    folder.mkdir()
    for _ in range(1100):   # one level at a time (pathlib's mkdir(parents=True) itself recurses)
        deepest = deepest / "d"
        deepest.mkdir()
    shutil.copy(product_files / "P1_surface_stain.fcs", deepest / "P1_surface_stain.fcs")
    try:
        found = list_fcs_files(folder)
        assert found == [deepest / "P1_surface_stain.fcs"]
    finally:   # bottom up, one level at a time: shutil.rmtree (and pytest's clean-up) recurse
        (deepest / "P1_surface_stain.fcs").unlink()
        while deepest != folder:
            deepest.rmdir()
            deepest = deepest.parent


def test_open_regular_refuses_what_is_not_a_file(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    for path, kind in ((tmp_path / "fifo", "FIFO"), ("/dev/null", "device")):
        with pytest.raises(OSError, match=kind):
            open_regular(path)
    with pytest.raises(IsADirectoryError):
        open_regular(tmp_path)
    assert display_name(os.fsdecode(b"a\xffb")) == "a\\xffb"


def test_reads_and_hashes_are_bounded_in_time(product_files, monkeypatch):
    """A read that still makes progress but exceeds the limit is abandoned with a one-line error
    (the limit is set below zero here, so the first block already exceeds it)."""
    from tilpheno.errors import FCSReadError
    from tilpheno.io import fcs as fcs_module
    from tilpheno.io.fcs import read_fcs

    path = product_files / "P1_surface_stain.fcs"
    with pytest.raises(OSError, match="longer than -1 s"):
        sha256_file(path, seconds=-1)
    ok = read_fcs(path)
    monkeypatch.setattr(fcs_module, "READ_SECONDS_LIMIT", -1.0)
    with pytest.raises(FCSReadError, match="reading DATA took longer than -1 s"):
        read_fcs(path)
    with pytest.raises(FCSReadError, match="computing SHA-256 took longer than -1 s"):
        ok.sha256


def test_a_file_cut_short_mid_data_is_unreadable_to_scan_and_new_study(product_files, tmp_path):
    """A copy interrupted mid-DATA: scan read HEADER and TEXT only and listed the file as fine
    (exit 0), new-study drafted it (exit 0, 'Run: tilpheno process ...'), and process then failed
    the product -> scan and new-study name it unreadable in one line (exit 1), with process's
    reason, and keep the other files."""
    from typer.testing import CliRunner

    from tilpheno.cli import app

    folder = tmp_path / "fcs"
    shutil.copytree(product_files, folder)
    cut = folder / "P1_treg_stain.fcs"
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    runner = CliRunner()
    result = runner.invoke(app, ["scan", str(folder), "-o", str(tmp_path / "manifest.csv")])
    assert result.exit_code == 1, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("unreadable:")]
    assert str(cut) in line and "lies beyond the end of the file" in line
    scanned = pd.read_csv(tmp_path / "manifest.csv")
    assert len(scanned) == len(list(product_files.glob("*.fcs")))   # nothing left out of the table
    result = runner.invoke(app, ["new-study", str(folder), "-o", str(tmp_path / "study")])
    assert result.exit_code == 1, result.output
    assert any(x.startswith("left out: P1_treg_stain.fcs:") and "lies beyond the end of the file" in x
               for x in result.output.splitlines())
