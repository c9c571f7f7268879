"""``mypy tilpheno`` stays clean: the annotations are checked, not decoration.

Configuration: ``[tool.mypy]`` in pyproject.toml (mypy and the stub packages are in the ``test``
extra). A failure lists mypy's own lines. The second test shows the check can fail: a wrong
annotation in a module that imports tilpheno is reported.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mypy(*args: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_mypy_reports_no_error(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "mypy_cache"
    run = _mypy("tilpheno", cache=cache)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "Success: no issues found" in run.stdout


@pytest.mark.slow
def test_mypy_catches_a_wrong_annotation(tmp_path, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "mypy_cache"
    probe = tmp_path / "probe.py"
    probe.write_text("from tilpheno.study import default_study\n\nname: int = default_study().name\n")
    run = _mypy("--config-file", str(ROOT / "pyproject.toml"), str(probe), cache=cache)
    assert run.returncode == 1 and "Incompatible types in assignment" in run.stdout, run.stdout
