"""Usage errors of the real command line (``python -m tilpheno``, the console script's ``main``): an
unknown option or command, a missing option or argument, a malformed or out-of-range value is one
line ``error: ...`` on stderr naming the option and the command, exit status 2 (Click's), nothing
written. Before, Typer printed its multi-line usage box (a rich panel) for each of them."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


def _run(*args, cwd):
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, "-m", "tilpheno", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


@pytest.mark.parametrize("args, words", [
    (["process", "FOLDER", "-o", "OUT", "--jobs", "0"], ["--jobs 0", "1", "(process)"]),
    (["process", "FOLDER", "-o", "OUT", "--jobs", "x"], ["--jobs x", "integer", "(process)"]),
    (["process", "FOLDER", "-o", "OUT", "--jbos", "2"], ["no such option --jbos", "--jobs", "(process)"]),
    (["process", "FOLDER"], ["missing option -o / --out", "(process)"]),
    (["process", "-o", "OUT"], ["missing argument FOLDER", "(process)"]),
    (["process", "FOLDER", "-o", "OUT", "extra"], ["extra", "(process)"]),
    (["biomarkers", "--phenotypes", "FILE", "--outcomes", "FILE", "-o", "OUT", "--minprop", "0.6"],
     ["--minprop 0.6", "0.49", "(biomarkers)"]),
    (["biomarkers", "--phenotypes", "FILE", "--outcomes", "FILE", "-o", "OUT", "--knots", "7"],
     ["--knots 7", "5", "(biomarkers)"]),
    (["users", "add", "OUT"], ["missing argument USERNAME", "(users add)"]),
    (["--log", "LOG", "procss", "FOLDER", "-o", "OUT"], ["no such command 'procss'"]),
])
def test_a_usage_error_is_one_line_naming_the_option(tmp_path, args, words):
    given = {"FOLDER": DATA, "FILE": Path(__file__), "OUT": tmp_path / "out", "LOG": tmp_path / "run.log"}
    result = _run(*[given.get(a, a) for a in args], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "out").exists()


def test_a_usage_error_is_recorded_in_the_run_log(tmp_path):
    """``--log FILE`` holds the reason a command did not run, as for the CLI's other one-line errors."""
    log = tmp_path / "logs" / "run.log"
    result = _run("--log", log, "process", DATA, "-o", tmp_path / "out", "--jobs", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() in log.read_text(encoding="utf-8")


def test_the_clis_own_errors_help_and_exit_statuses_are_unchanged(tmp_path):
    """What ``main`` did not route through Click's usage errors reads as before: a missing path
    (the CLI's own one line), ``--help`` (status 0), no command (the help, status 2), a command's
    own ``typer.Exit`` status (scan with an unreadable file: 1)."""
    missing = _run("process", tmp_path / "missing", "-o", tmp_path / "out", cwd=tmp_path)
    assert (missing.returncode, missing.stderr) == (2, f"error: FOLDER {tmp_path / 'missing'}: no such folder\n")
    helped = _run("process", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "--jobs" in helped.stdout and helped.stderr == ""
    bare = _run(cwd=tmp_path)
    assert bare.returncode == 2 and "process" in bare.stdout and bare.stderr == ""
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.fcs").write_bytes(b"junk")
    scanned = _run("scan", tmp_path / "junk", cwd=tmp_path)
    assert scanned.returncode == 1 and "unreadable: " in scanned.stderr


def test_an_abort_is_one_line_with_status_1(monkeypatch, capsys):
    """Typer turns end of input at a prompt into an abort: ``Aborted.``, status 1, as Typer had it."""
    import typer

    from tilpheno import cli

    def abort(**kwargs):
        raise typer.Abort()

    monkeypatch.setattr(cli, "app", abort)
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 1
    assert capsys.readouterr().err == "Aborted.\n"
