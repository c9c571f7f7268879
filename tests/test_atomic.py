"""Atomic writes: complete or absent, never half-written; ordinary permissions."""
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from tilpheno.io import atomic


def test_write_text_replaces_whole_file(tmp_path):
    target = tmp_path / "out" / "a.txt"
    atomic.write_text(target, "first")
    atomic.write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_failure_leaves_previous_content_and_no_temp_file(tmp_path):
    target = tmp_path / "t.csv"
    atomic.write_text(target, "good")
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(target) as fh:
            fh.write("half")
            raise RuntimeError("killed part-way")
    assert target.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_a_failed_rename_names_the_file_asked_for_not_the_temporary_one(tmp_path):
    """The target is a folder: the error named the hidden temporary sibling (`.a.csv.x1y2.part`), a path
    the user never typed (apply-gates -o, export-events --fcs/--h5ad) -> it names the target; no temporary
    file is left."""
    target = tmp_path / "a.csv"
    target.mkdir()
    with pytest.raises(IsADirectoryError) as caught:
        atomic.write_csv(target, pd.DataFrame({"x": [1]}))
    assert caught.value.filename == str(target) and caught.value.filename2 is None
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv"] and not any(target.iterdir())


def test_a_staged_file_waits_for_publish_and_a_refused_publish_keeps_it(tmp_path):
    """new-study stages its files first and publishes them after (its draft named incomplete when a
    rename is refused: tests/test_concurrent_writers.py): a staged file is on the disk under its hidden
    temporary name with an ordinary file's mode, the target untouched; publish renames it; a refused
    rename names the target and keeps the temporary for the caller (atomic_open removes it: above)."""
    old = os.umask(0o022)
    try:
        with atomic.staged_open(tmp_path / "a.txt") as staged:
            staged.write("new")
    finally:
        os.umask(old)
    tmp = Path(staged.name)
    assert tmp.parent == tmp_path and tmp.name.startswith(".a.txt.") and tmp.name.endswith(".part")
    assert tmp.read_text() == "new" and not (tmp_path / "a.txt").exists()
    assert stat.S_IMODE(tmp.stat().st_mode) == 0o644
    (tmp_path / "b.txt").mkdir()
    with atomic.staged_open(tmp_path / "b.txt") as refused:
        refused.write("b")
    with pytest.raises(IsADirectoryError) as caught:
        atomic.publish(refused.name, tmp_path / "b.txt")
    assert caught.value.filename == str(tmp_path / "b.txt") and Path(refused.name).read_text() == "b"
    atomic.publish(staged.name, tmp_path / "a.txt")
    assert (tmp_path / "a.txt").read_text() == "new" and not tmp.exists()


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_csv(tmp_path / "x.csv", pd.DataFrame({"a": [1]}))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.csv").stat().st_mode) == 0o644


def test_exchange_swaps_two_folders_in_one_step_or_says_it_cannot(tmp_path, monkeypatch):
    """Two folders swapped: each path then holds the other's files (Linux renameat2); a path that is
    not there is an OSError naming it; without the call (another system) False and nothing moved."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "name.txt").write_text(folder.name)
    if atomic._renameat2() is None:
        pytest.skip("no renameat2 on this system")
    assert atomic.exchange(a, b) is True
    assert (a / "name.txt").read_text() == "b" and (b / "name.txt").read_text() == "a"
    with pytest.raises(FileNotFoundError, match="gone"):
        atomic.exchange(a, tmp_path / "gone")
    monkeypatch.setattr(atomic, "_renameat2", lambda: None)
    assert atomic.exchange(a, b) is False and (a / "name.txt").read_text() == "b"


@pytest.mark.parametrize("args", [
    ["scan", "{in}", "-o", "{file}/manifest.csv"],
    ["new-study", "{in}", "-o", "{file}"],
    ["--log", "{file}/run.log", "scan", "{in}"],
])
def test_a_file_where_an_outputs_folder_should_be_is_said_as_such(tmp_path, args):
    """`-o notes.txt/manifest.csv` (or `--log`, `new-study -o`) with notes.txt a file said
    'error: notes.txt: File exists', as though the folder were there; now the file is named as
    not a folder, exit 2, the file untouched and nothing written beside it."""
    import shutil
    from pathlib import Path

    from typer.testing import CliRunner

    from tilpheno.cli import app

    sample = Path(__file__).resolve().parents[1] / "sample_fcs"
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("TIL001_surface_stain.fcs", "TIL001_treg_stain.fcs"):
        shutil.copy(sample / name, folder)
    notes = tmp_path / "notes.txt"
    notes.write_text("a file\n")
    result = CliRunner().invoke(app, [a.format(**{"in": folder, "file": notes}) for a in args])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert "File exists" not in errors[0] and "Not a directory (a path component is a file, not a folder)" in errors[0]
    assert str(notes) in errors[0] and notes.read_text() == "a file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "notes.txt"]


def test_make_folder_names_a_file_in_its_place(tmp_path):
    (tmp_path / "f").write_text("x")
    atomic.make_folder(tmp_path / "a" / "b")
    atomic.make_folder(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    with pytest.raises(NotADirectoryError) as caught:
        atomic.make_folder(tmp_path / "f")
    assert caught.value.filename == str(tmp_path / "f")
