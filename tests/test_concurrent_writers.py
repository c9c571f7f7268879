"""Writers that meet: two threads making one review database, two new-study runs into one folder,
a draft whose renames stop part-way. Each leaves one whole result or a leftover named in one line."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tilpheno.cli import app
from tilpheno.review import db as review_db

SAMPLE = Path(__file__).resolve().parents[1] / "sample_fcs"


def _run(args: list[str]):
    return CliRunner().invoke(app, args)


def _files(folder: Path) -> dict[str, bytes]:
    """``folder``'s files -> their bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_two_threads_making_one_review_database_each_use_their_own_temporary(tmp_path, monkeypatch):
    """Two threads of one process (a server's two first requests, an embedding application) make the
    new database at once. Its hidden temporary was named by the process alone, so they shared it: the
    first to finish removed it, and the second failed linking a temporary that was gone
    (FileNotFoundError, the command's first line of work lost); and the two migrations at once
    shared Alembic's one context of the process (KeyError 'config', 'table users already exists').
    Now each call makes its own temporary, the threads migrate one after the other, and both find the
    one database, its schema whole, no temporary left."""
    path = tmp_path / "out.review.sqlite"
    made, first_done = threading.Barrier(2, timeout=60), threading.Event()
    real_upgrade, errors = review_db.upgrade, {}

    def upgrade(engine, clock=None):   # both schemas made before either is linked; the second links once the first is done
        real_upgrade(engine, clock)
        if engine.url.database.endswith(".creating"):
            made.wait()
            if threading.current_thread().name == "second":
                assert first_done.wait(60)

    monkeypatch.setattr(review_db, "upgrade", upgrade)

    def create(name):
        try:
            review_db._create_sqlite_whole(path)
        except Exception as exc:   # noqa: BLE001  (reported below, with its thread)
            errors[name] = exc
        finally:
            if name == "first":
                first_done.set()

    threads = [threading.Thread(target=create, args=(name,), name=name) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert review_db.holds_review_database(path)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))) == ["out.review.sqlite"]


_PAUSED_AT_FIRST_RENAME = """if True:
    import os, sys, time
    from pathlib import Path
    from tilpheno.cli import app
    real_replace, go = os.replace, Path(sys.argv[1])

    def replace(src, dst):   # the first file renamed into place: paused until the test says go
        if not go.exists():
            print("renaming", flush=True)
            while not go.exists():
                time.sleep(0.05)
        real_replace(src, dst)

    os.replace = replace
    app(sys.argv[2:], prog_name="tilpheno")
"""

_SAYS_WHEN_WRITING = """if True:
    import sys
    import tilpheno.scaffold as scaffold
    from tilpheno.cli import app
    real_write = scaffold.write_study

    def write_study(*args, **kwargs):
        print("writing", flush=True)
        return real_write(*args, **kwargs)

    scaffold.write_study = write_study
    app(sys.argv[1:], prog_name="tilpheno")
"""


def test_two_new_study_runs_into_one_folder_at_once_are_not_taken_for_a_killed_draft(tmp_path):
    """Two ``tilpheno new-study`` runs into one folder at once (two analysts, a script run twice):
    the second, arriving while the first renamed its files into place, saw the first's temporaries
    and no study.yaml and refused with 'holds an incomplete draft, a new-study killed while writing
    it', though nothing was killed. Now new-study writes under a lock file beside the folder: the
    second waits for the first to finish, then refuses as for any drafted folder ('already holds
    study.yaml, ...'), and the folder holds the first's whole study, no lock or temporary left."""
    clean, study, go = tmp_path / "clean", tmp_path / "study", tmp_path / "go"
    assert _run(["new-study", str(SAMPLE), "-o", str(clean)]).exit_code == 0
    first = subprocess.Popen([sys.executable, "-c", _PAUSED_AT_FIRST_RENAME, str(go), "new-study", str(SAMPLE),
                              "-o", str(study)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        assert first.stdout.readline().strip() == "renaming", first.stderr.read()
        second = subprocess.Popen([sys.executable, "-c", _SAYS_WHEN_WRITING, "new-study", str(SAMPLE), "-o", str(study)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert second.stdout.readline().strip() == "writing", second.stderr.read()
        time.sleep(1.0)   # the second reaches the folder while the first is paused mid-way
        go.touch()
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        out, err = second.communicate(timeout=120)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    errors = [line for line in (out + err).splitlines() if line.startswith("error:")]
    assert second.returncode == 2 and len(errors) == 1, (out, err)
    assert f"{study}: already holds study.yaml" in errors[0] and "incomplete" not in errors[0], errors
    assert _files(study) == _files(clean)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "go", "study"]


@pytest.mark.parametrize("over", ["nothing", "an older draft"])
def test_a_rename_refused_mid_way_leaves_a_draft_named_incomplete(tmp_path, monkeypatch, over):
    """The system refuses a rename after the draft's first file is in place (EACCES: a permission
    changed meanwhile, a network share's policy). The other temporaries were removed, so the folder
    held manifest.csv and no study.yaml or temporary: this run said '<folder> was left as it was', and
    the next refused with 'already holds manifest.csv', as though a draft were there. Now the files
    not renamed stay as the killed draft's do: this run's line says the folder holds an incomplete
    draft, the next names it as for a ``kill -9``, and --overwrite writes what a clean draft writes."""
    import errno
    import os

    clean, study = tmp_path / "clean", tmp_path / "study"
    assert _run(["new-study", str(SAMPLE), "-o", str(clean)]).exit_code == 0
    if over == "an older draft":   # another study name: its study.yaml differs
        assert _run(["new-study", str(SAMPLE), "-o", str(study), "--name", "older"]).exit_code == 0
        assert _files(study)["study.yaml"] != _files(clean)["study.yaml"]
    real_replace, renamed = os.replace, []

    def replace(src, dst):   # the first file renamed into place, the next refused
        if renamed:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(src), os.fspath(dst))
        renamed.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    failed = _run(["new-study", str(SAMPLE), "-o", str(study), "--overwrite"])
    monkeypatch.setattr(os, "replace", real_replace)
    errors = [line for line in failed.output.splitlines() if line.startswith("error:")]
    assert failed.exit_code == 2 and len(errors) == 1, failed.output
    assert "Permission denied" in errors[0] and f"{study}: holds an incomplete draft" in errors[0], errors
    assert "left as it was" not in errors[0] and "--overwrite" in errors[0], errors
    left = _files(study)
    assert "study.yaml" not in left and any(name.endswith(".part") for name in left), sorted(left)
    again = _run(["new-study", str(SAMPLE), "-o", str(study)])
    errors = [line for line in again.output.splitlines() if line.startswith("error:")]
    assert again.exit_code == 2 and len(errors) == 1, again.output
    assert f"{study}: holds an incomplete draft" in errors[0] and "--overwrite" in errors[0], errors
    assert _files(study) == left   # nothing lost
    assert _run(["new-study", str(SAMPLE), "-o", str(study), "--overwrite"]).exit_code == 0
    assert _files(study) == _files(clean)
