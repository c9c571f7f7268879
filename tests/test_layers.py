"""Layers point one way: read -> compensate -> transform -> gate -> measure -> report -> pipeline/API.

Every ``import`` of a tilpheno module inside tilpheno (module level or inside a function) is read
from the source with ``ast`` and must go to the same or a lower layer. A module's layer comes from
``LAYERS`` (``tests/layers_support.py``, most specific prefix wins); modules not listed are in the top layer (applications), so
a new module can import anything but nothing lower can import it.
"""
from __future__ import annotations

import ast
from pathlib import Path

from layers_support import LAYERS

ROOT = Path(__file__).resolve().parents[1] / "tilpheno"

TOP = max(LAYERS.values())


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS and (n > 1 or module == "tilpheno"):
            return LAYERS[prefix]
    return TOP


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tilpheno" and node.level == 0:
            targets = [node.module]
            # "from tilpheno.gates import placement" imports the submodule
            targets += [f"{node.module}.{a.name}" for a in node.names if (ROOT.parent / f"{node.module}.{a.name}".replace(".", "/")).with_suffix(".py").exists()]
            found += [(node.lineno, t) for t in targets]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "tilpheno"]
    return found


def test_no_import_goes_up_a_layer():
    violations = []
    for path in sorted(ROOT.rglob("*.py")):
        own = module_name(path)
        for line, target in imports(path):
            if layer(target) > layer(own):
                violations.append(f"{own} (layer {layer(own)}) imports {target} (layer {layer(target)}) at line {line}")
    assert not violations, "\n".join(violations)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The test can fail: an import of the report from the measure stage is caught."""
    fake = ROOT / "phenotype.py"
    source = fake.read_text(encoding="utf-8") + "\n\ndef _x():\n    from tilpheno.report.plots import density_png\n"
    probe = tmp_path / "tilpheno" / "phenotype.py"
    probe.parent.mkdir()
    probe.write_text(source)
    found = [t for _, t in imports(probe)]
    assert "tilpheno.report.plots" in found and layer("tilpheno.report.plots") > layer("tilpheno.phenotype")
    assert layer("tilpheno.gates.placement") == 5 and layer("tilpheno.review.app") == TOP and layer("tilpheno") == 0
    # the pipeline package's modules: a job's product step may not import the executors that run it
    assert layer("tilpheno.pipeline.product") < layer("tilpheno.pipeline.executors") < layer("tilpheno.pipeline")
    assert layer("tilpheno.cache") < layer("tilpheno.pipeline.jobs") and layer("tilpheno.pipeline") < layer("tilpheno.cli")


def _raised_strings(path: Path) -> list[tuple[int, str]]:
    """The literal text of every ``raise SomeError(...)`` message in a module (f-string parts joined)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            for arg in node.exc.args:
                parts = [n.value for n in ast.walk(arg) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                out.append((node.lineno, "".join(parts)))
    return out


def test_library_errors_do_not_quote_command_line_flags():
    """Errors raised by the library name its parameters; only command-line modules speak in flags
    (tilpheno.cli translates ``overwrite=True`` to ``--overwrite`` and so on)."""
    import re

    flag = re.compile(r"(^|[\s(])--[a-z]")
    found = [f"{module_name(p)}:{line}: {text}" for p in sorted(ROOT.rglob("*.py")) if not p.name == "cli.py"
             for line, text in _raised_strings(p) if flag.search(text)]
    assert not found, "\n".join(found)


def test_the_cli_speaks_in_flags():
    from tilpheno.cli import as_cli_text

    assert as_cli_text("OUT: previous run; pass overwrite=True to replace it") == "OUT: previous run; pass --overwrite to replace it"
    assert as_cli_text("executor: 'spark' is not one of local, dask").startswith("--executor:")
    assert as_cli_text("fmo_percentile: 120 is not between 0 and 100").startswith("--fmo-percentile:")
    assert as_cli_text("reports: 'soon' is not one of now, later, none").startswith("--reports:")
    assert as_cli_text("conf_type must be one of (log, log-log, plain)").startswith("--conf-type must")
