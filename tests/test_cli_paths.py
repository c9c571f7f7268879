"""Path arguments and options that must exist: a missing path, or a file where a folder is needed
(or the reverse), is one line ``error: ...`` naming the option and the path, exit status 2."""
import inspect
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tilpheno.cli import app

DATA = Path(__file__).parent / "data"
FCS = DATA / "gatingml" / "data1.fcs"
GML = DATA / "gatingml" / "gml" / "gml_rect1_gate.xml"
WSP = DATA / "flowjo" / "single_ellipse_51_events.wsp"


def _parameters(typer_app):
    """(command function name, parameter name, its Typer ArgumentInfo / OptionInfo) of every command."""
    for command in typer_app.registered_commands:
        for name, parameter in inspect.signature(command.callback).parameters.items():
            yield command.callback.__name__, name, parameter.default
    for group in typer_app.registered_groups:
        yield from _parameters(group.typer_instance)


@pytest.mark.parametrize("args,named,reason", [
    (["new-study", "MISSING", "-o", "OUT"], "FOLDER", "no such folder"),
    (["new-study", FCS, "-o", "OUT"], "FOLDER", "a file, not a folder"),
    (["process", "MISSING", "-o", "OUT"], "FOLDER", "no such folder"),
    (["process", FCS, "-o", "OUT"], "FOLDER", "a file, not a folder"),
    (["report", "MISSING"], "OUT", "no such folder"),
    (["scan", "MISSING"], "FOLDER", "no such folder"),
    (["scan", DATA, "--manifest", "MISSING"], "--manifest", "no such file"),
    (["scan", DATA, "--panel", "MISSING"], "--panel", "no such file"),
    (["new-study", DATA, "-o", "OUT", "--panel", "MISSING"], "--panel", "no such file"),
    (["new-study", DATA, "-o", "OUT", "--lineage", "MISSING"], "--lineage", "no such file"),
    (["process", DATA, "-o", "OUT", "--manifest", "MISSING"], "--manifest", "no such file"),
    (["process", DATA, "-o", "OUT", "--outcomes", "MISSING"], "--outcomes", "no such file"),
    (["process", DATA, "-o", "OUT", "--outcomes", DATA], "--outcomes", "a folder, not a file"),
    (["process", DATA, "-o", "OUT", "--panel", "MISSING"], "--panel", "no such file"),
    (["process", DATA, "-o", "OUT", "--strategy", "MISSING"], "--strategy", "no such file"),
    (["process", DATA, "-o", "OUT", "--release-spec", "MISSING"], "--release-spec", "no such file"),
    (["process", DATA, "-o", "OUT", "--compensation", "MISSING"], "--compensation", "no such file"),
    (["compensate", "MISSING", "-o", "OUT"], "CONTROLS_FOLDER", "no such folder"),
    (["compensate", DATA, "-o", "OUT", "--controls", "MISSING"], "--controls", "no such file"),
    (["biomarkers", "--phenotypes", "MISSING", "--outcomes", FCS, "-o", "OUT"], "--phenotypes", "no such file"),
    (["biomarkers", "--phenotypes", FCS, "--outcomes", "MISSING", "-o", "OUT"], "--outcomes", "no such file"),
    (["biomarkers", "--phenotypes", FCS, "--outcomes", FCS, "-o", "OUT", "--cutpoints", "MISSING"], "--cutpoints",
     "no such file"),
    (["plan", "--observed", "MISSING", "--marker", "cd8_pct"], "--observed", "no such folder"),
    (["serve", "MISSING"], "OUT", "no such folder"),
    (["serve", DATA, "--inputs", "MISSING"], "--inputs", "no such folder"),
    (["export-approved", "MISSING", "-o", "OUT"], "OUT", "no such folder"),
    (["export-approved", DATA, "-o", "OUT", "--inputs", "MISSING"], "--inputs", "no such folder"),
    (["apply-gates", "MISSING", "--gatingml", GML, "-o", "OUT"], "FILE", "no such file"),
    (["apply-gates", FCS, "--gatingml", "MISSING", "-o", "OUT"], "--gatingml", "no such file"),
    (["apply-gates", FCS, "--wsp", "MISSING", "-o", "OUT"], "--wsp", "no such file"),
    (["apply-gates", FCS, "--wsp", DATA, "-o", "OUT"], "--wsp", "a folder, not a file"),
    (["export-events", "MISSING", "--gatingml", GML, "--fcs", "OUT"], "FILE", "no such file"),
    (["export-events", DATA, "--gatingml", GML, "--fcs", "OUT"], "FILE", "a folder, not a file"),
    (["export-events", FCS, "--gatingml", "MISSING", "--fcs", "OUT"], "--gatingml", "no such file"),
    (["export-events", FCS, "--wsp", "MISSING", "--fcs", "OUT"], "--wsp", "no such file"),
])
def test_a_missing_or_wrong_kind_of_path_is_one_line_naming_the_option(tmp_path, args, named, reason):
    """`process MISSING -o OUT` (and every other path declared to exist) printed Typer's multi-line
    usage box ("Invalid value for 'folder': dir 'MISSING' does not exist.") -> one line naming the
    option and the path as typed, exit status 2, nothing written. The other commands' inputs each
    said it their own way ("nope: not a folder", "nope.csv: file not found", "cannot read strategy
    file (No such file or directory)", "not a readable CSV table (FileNotFoundError)", serve's
    "[Errno 2] ... run.json"), most without the option -> the same form for every one."""
    missing, out = tmp_path / "missing", tmp_path / "out"
    given = {"MISSING": str(missing), "OUT": str(out)}
    result = CliRunner().invoke(app, [given.get(a, str(a)) for a in args])
    assert result.exit_code == 2
    (line,) = [x for x in result.output.splitlines() if x.strip()]
    typed = args[args.index(named) + 1] if named.startswith("-") else args[1]   # an argument: the command's first
    path = given.get(typed, str(typed))
    assert line == f"error: {named} {path}: {reason}", line
    assert not out.exists()


def test_apply_gates_and_export_events_say_alike_how_they_read_a_workspace():
    """export-events reads FILE's gates as apply-gates does (one --gatingml or --wsp, the --group's sample
    matching FILE's name when it has several), but declared the options again and its --help said only
    'Sample group of the workspace.' -> both commands use the same declarations."""
    said = {}
    for command in ("apply-gates", "export-events"):
        result = CliRunner().invoke(app, [command, "--help"], terminal_width=200, env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        said[command] = " ".join(result.output.replace("│", " ").split())
    for text in said.values():
        assert "Sample group of the workspace (its sample matching FILE's name when it has several)." in text, text
        assert "Gating-ML 2.0 document." in text and "FlowJo 10 workspace (.wsp)." in text


def test_no_path_is_left_to_typers_existence_check():
    """Typer's ``exists=True`` check prints its usage box before any command code runs: every path
    that must exist is checked by the CLI's own callback instead (the test above covers each)."""
    checked = [f"{command} {name}" for command, name, info in _parameters(app) if getattr(info, "exists", False)]
    assert checked == []


def _library_calls(tmp_path):
    """(what, call with the missing path, the path) of the public entry points a script calls."""
    import tilpheno as tp
    from tilpheno.biomarkers.analysis import read_cutpoints
    from tilpheno.biomarkers.cohort import read_phenotypes
    from tilpheno.io.manifest import read_manifest
    from tilpheno.io.outcomes import read_outcomes
    from tilpheno.panel import read_panel_file
    from tilpheno.release import load_release_spec
    from tilpheno.vocabulary import read_lineage

    sample = Path(__file__).parents[1] / "sample_fcs"
    missing = tmp_path / "missing"
    run = tmp_path / "out"

    def process(**kwargs):
        return lambda: tp.process_folder(sample, run, **kwargs)

    return [
        ("read_fcs", lambda: tp.read_fcs(missing), missing),
        ("Sample.from_fcs", lambda: tp.Sample.from_fcs(missing, None), missing),
        ("GatingStrategy.from_yaml", lambda: tp.GatingStrategy.from_yaml(missing), missing),
        ("read_manifest", lambda: read_manifest(missing), missing),
        ("read_panel_file", lambda: read_panel_file(missing), missing),
        ("read_outcomes", lambda: read_outcomes(missing), missing),
        ("read_phenotypes", lambda: read_phenotypes(missing), missing),
        ("read_cutpoints", lambda: read_cutpoints(missing), missing),
        ("load_release_spec", lambda: load_release_spec(missing), missing),
        ("read_lineage", lambda: read_lineage(missing), missing),
        ("process_folder", lambda: tp.process_folder(missing, run), missing),
        ("process_folder(manifest_csv=)", process(manifest_csv=missing), missing),
        ("process_folder(panel_path=)", process(panel_path=missing), missing),
        ("process_folder(outcomes_path=)", process(outcomes_path=missing), missing),
        ("process_folder(release_spec_path=)", process(release_spec_path=missing), missing),
        ("process_folder(strategy_paths=)", process(strategy_paths=[missing]), missing),
        ("process_folder(compensation_path=)", process(compensation_path=missing), missing),
    ]


def test_a_missing_file_is_one_wording_for_library_callers(tmp_path):
    """A script calling the library (no command line to check paths first) got a missing file said
    six ways: 'no such file' (FCS), 'cannot read strategy file (No such file or directory)',
    'manifest file not found', 'panel file not found', 'file not found', 'cannot read release spec
    (No such file or directory)', 'cannot read spillover CSV ([Errno 2] No such file or directory:
    <path>)' (the path twice), 'not a folder' -> one line, '<path>: no such file' ('no such folder'
    for the input folder), as the command line says it after the option's name; nothing written."""
    from tilpheno.errors import TilphenoError

    said = {}
    for what, call, path in _library_calls(tmp_path):
        with pytest.raises(TilphenoError) as caught:
            call()
        said[what] = str(caught.value).replace(str(path), "PATH")
    assert said == {what: "PATH: no such folder" if what == "process_folder" else "PATH: no such file"
                    for what, _, _ in _library_calls(tmp_path)}
    assert not (tmp_path / "out").exists()
