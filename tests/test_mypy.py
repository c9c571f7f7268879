"""``mypy tilpheno`` stays clean: the annotations are checked, not decoration.

Configuration: ``[tool.mypy]`` in pyproject.toml (mypy and the stub packages are in the ``test``
extra). A failure lists mypy's own lines. The second test shows the check can fail: a wrong
annotation in a module that imports tilpheno is reported. mypy does not read the libraries tilpheno
never imports (``follow_imports = "skip"`` in pyproject.toml): the third test keeps it so.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
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


def _skipped_modules() -> list[str]:
    """The module patterns ``[[tool.mypy.overrides]]`` give ``follow_imports = "skip"`` (``x.*``: x and below)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    return [m.removesuffix(".*") for o in config.get("overrides", []) if o.get("follow_imports") == "skip"
            for m in o["module"]]


def _imported_modules(source: str) -> set[str]:
    """Every absolute module an ``import`` or ``from ... import`` statement of ``source`` names,
    wherever it stands (in a function too: mypy follows those)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_tilpheno_imports_no_module_mypy_skips():
    """The libraries mypy does not read (pyproject.toml: reached only through others, their names Any)
    stay ones tilpheno never imports: an import of one would type its names in tilpheno as Any."""
    skipped = _skipped_modules()
    assert skipped, "pyproject.toml gives no module follow_imports = skip"
    found = sorted(f"{path.relative_to(ROOT)}: {name}" for path in (ROOT / "tilpheno").rglob("*.py")
                   for name in _imported_modules(path.read_text())
                   if any(name == s or name.startswith(s + ".") for s in skipped))
    assert not found, found
