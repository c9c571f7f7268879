"""Failures keep their cause: a crash (a bug) is an internal error with its traceback in the run log,
distinct from bad input; --verbose / --log configure the ``tilpheno`` logger."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tilpheno.pipeline import product
from tilpheno.cli import app, configure_logging

SAMPLE = Path(__file__).resolve().parents[1] / "sample_fcs"


def _two_products(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for f in SAMPLE.glob("TIL00[12]_*.fcs"):
        shutil.copy(f, folder / f.name)
    return folder


def test_crash_is_an_internal_error_with_its_traceback_in_the_log(tmp_path, monkeypatch):
    folder = _two_products(tmp_path)
    real = product._analyze

    def buggy(job, rows, checked=None):
        if job.product_id == "TIL002":
            return {}["no such key"]   # a bug: KeyError deep in the code, not bad input
        return real(job, rows, checked)

    monkeypatch.setattr(product, "_analyze", buggy)
    log = tmp_path / "run.log"
    result = CliRunner().invoke(app, ["--log", str(log), "process", str(folder), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    qc = pd.read_csv(tmp_path / "out" / "qc.csv")
    crash = qc[qc["product_id"] == "TIL002"]
    assert list(crash["code"]) == ["internal_error"] and crash["message"].iloc[0].startswith("internal error KeyError")
    assert "internal_error" not in set(qc.loc[qc["product_id"] == "TIL001", "code"])
    text = log.read_text()
    assert "product TIL002: internal error KeyError" in text and "Traceback (most recent call last)" in text
    assert 'return {}["no such key"]' in text      # the line that failed
    assert "product TIL001: done" in text          # INFO goes to the file even without --verbose
    assert "Traceback" not in result.output        # the console gets the one-line reason only


def test_bad_input_is_not_an_internal_error(tmp_path):
    folder = _two_products(tmp_path)
    (folder / "TIL002_surface_stain.fcs").write_bytes(b"not an FCS file")
    (folder / "TIL002_treg_stain.fcs").write_bytes(b"FCS3.1 broken")
    result = CliRunner().invoke(app, ["-v", "process", str(folder), "-o", str(tmp_path / "out")])
    qc = pd.read_csv(tmp_path / "out" / "qc.csv")
    assert "internal_error" not in set(qc["code"])
    assert {"unreadable_file", "product_failed"} <= set(qc.loc[qc["product_id"] == "TIL002", "code"])
    assert result.exit_code == 1


def test_a_log_file_inside_out(tmp_path):
    """`--log OUT/run.log process -o OUT`: the first run failed (no such folder OUT, exit 2), and an
    OUT made for the log was then refused ('is not empty (run.log) and holds no tilpheno run') ->
    the log's folder is created and the run's own log file is not a foreign file: the run goes
    through, logs into OUT, and the next run (--overwrite) keeps and appends to it."""
    folder = tmp_path / "in"
    folder.mkdir()
    for f in SAMPLE.glob("TIL001_*.fcs"):
        shutil.copy(f, folder / f.name)
    out = tmp_path / "out"
    log = out / "run.log"
    run = ["--log", str(log), "process", str(folder), "-o", str(out), "--reports", "none"]
    result = CliRunner().invoke(app, run)
    assert result.exit_code == 0, result.output
    assert log.read_text().count("product TIL001: done") == 1
    result = CliRunner().invoke(app, run)   # a previous run's outputs: refused as such, not as a foreign folder
    assert result.exit_code == 2 and "already holds the outputs of a previous run" in result.output
    result = CliRunner().invoke(app, [*run, "--overwrite", "--no-cache"])
    assert result.exit_code == 0, result.output
    assert log.read_text().count("product TIL001: done") == 2
    record = json.loads((out / "run.json").read_text())
    assert record["output_folder"]["kept_other_entries"] == ["run.log"] and "run.log" not in record["outputs"]


def test_a_log_left_by_a_run_that_stopped_says_what_to_do(tmp_path):
    """`--log OUT/run.log process EMPTY -o OUT` stops before publishing (no FCS files) and leaves
    OUT holding only run.log; the next run without the log was refused with 'pass --overwrite to
    replace what the previous run wrote' (there was no previous run, and nothing is replaced) ->
    the refusal says --overwrite writes the outputs beside the file and removes none; it does, the
    log kept byte for byte."""
    empty, folder, out = tmp_path / "empty", tmp_path / "in", tmp_path / "out"
    empty.mkdir()
    folder.mkdir()
    for f in SAMPLE.glob("TIL001_*.fcs"):
        shutil.copy(f, folder / f.name)
    result = CliRunner().invoke(app, ["--log", str(out / "run.log"), "process", str(empty), "-o", str(out)])
    assert result.exit_code == 2 and sorted(p.name for p in out.iterdir()) == ["run.log"]
    (out / "run.log").write_text("the earlier run's log\n")
    run = ["process", str(folder), "-o", str(out), "--reports", "none"]
    result = CliRunner().invoke(app, run)
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "is not empty (run.log) and holds no tilpheno run" in line and "previous run" not in line
    assert "--overwrite to write this run's outputs beside those files (none of them is removed" in line
    result = CliRunner().invoke(app, [*run, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "run.log").read_text() == "the earlier run's log\n" and (out / "run.json").is_file()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux), a file whose writes fail: disk full")
def test_a_log_on_a_full_disk_is_one_line_not_tracebacks(tmp_path):
    """--log on a full disk: every record printed logging's '--- Logging error ---' traceback on
    stderr (the run itself went on) -> one line saying the run log is incomplete, and why; the run's
    own result unchanged (exit 0, outputs written); closing that log (the next command's
    configure_logging) raised OSError."""
    folder = tmp_path / "in"
    folder.mkdir()
    for f in SAMPLE.glob("TIL001_*.fcs"):
        shutil.copy(f, folder / f.name)
    result = CliRunner().invoke(app, ["--log", "/dev/full", "process", str(folder), "-o", str(tmp_path / "out"),
                                      "--reports", "none"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "Logging error" not in result.output
    said = [line for line in result.output.splitlines() if "/dev/full" in line]
    assert said == ["warning: --log /dev/full: the run log could not be written (/dev/full: No space left on device "
                    "(disk full)); it is incomplete"]
    assert (tmp_path / "out" / "run.json").is_file()
    configure_logging()   # the next command's logging (the full log's handler closed): no error either


def test_a_command_stopped_by_bad_input_says_why_in_its_log(tmp_path):
    """--log with a command that stops on bad input (an empty folder): the one error line went to
    stderr only and the log stayed empty -> the log holds the same line too (printed once on stderr)."""
    folder = tmp_path / "empty"
    folder.mkdir()
    log = tmp_path / "run.log"
    result = CliRunner().invoke(app, ["--log", str(log), "process", str(folder), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error: ")]
    assert "no FCS files" in line and result.output.count(line) == 1
    assert line in log.read_text(encoding="utf-8")
    configure_logging()   # the next command's logging: the log's handler closed


def test_the_run_log_has_one_line_per_product_with_its_seconds(tmp_path):
    """A lab running `process` from cron with `--log` read 'product TIL001: done' for each product gated,
    with no time, and nothing for a product taken from the cache (a second run: no line at all) -> each
    product gated says done or failed and its seconds, each product from the cache says so."""
    import re

    folder = _two_products(tmp_path)
    (folder / "TIL002_treg_stain.fcs").write_bytes(b"FCS3.1 broken")
    for run in ("first", "second"):
        log = tmp_path / f"{run}.log"
        result = CliRunner().invoke(app, ["--log", str(log), "process", str(folder), "-o", str(tmp_path / "out"), "--reports",
                                          "none", "--overwrite"])
        assert result.exit_code == 1, result.output
        lines = [line.split(" tilpheno.pipeline.outputs: ", 1)[1] for line in log.read_text().splitlines()
                 if " INFO tilpheno.pipeline.outputs: product " in line]
        if run == "first":
            assert len(lines) == 2 and re.fullmatch(r"product TIL001: done in \d+\.\d s", lines[0]), lines
            assert re.match(r"product TIL002: failed in \d+\.\d s: .*TIL002_treg_stain\.fcs", lines[1]), lines
        else:
            assert lines[0] == "product TIL001: done, from the cache", lines
            assert len(lines) == 2 and "product TIL002: failed" in lines[1], lines
