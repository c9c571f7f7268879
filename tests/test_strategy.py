"""Strategy files: the bundled ones load; invalid files fail with the file and line named."""
import hashlib
import textwrap
from pathlib import Path

import pytest

from tilpheno.errors import StrategyError
from tilpheno.gates.strategy import default_strategy_paths, load_strategy, parse_expression, parse_strategy
from tilpheno.transforms import Linear, Logicle

BASE = textwrap.dedent(
    """\
    strategy: test
    tube: surface
    markers: [CD3, CD56, 7AAD]
    transforms:
      CD3: {kind: logicle, w: 0.7}
    populations:
      - name: cells
        parent: root
        dims: [FSC-A, SSC-A]
        method: cells
      - name: live
        parent: cells
        dims: [7AAD]
        method: valley
        params: {keep: low}
      - name: CD3+
        parent: live
        dims: [CD3]
        method: fmo
      - name: CD56+
        parent: live
        dims: [CD56]
        method: fmo
        params: {percentile: 99}
      - name: NK
        parent: live
        expression: CD56+ & !CD3+
    variables:
      cd3_pct: {numerator: CD3+, denominator: live}
    """
)


def write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_bundled_strategies_load():
    surface, treg = (load_strategy(p) for p in default_strategy_paths())
    assert surface.tube == "surface" and treg.tube == "treg"
    names = [p.name for p in surface.populations]
    for pop in ("cells", "singlets", "live", "live_lymph", "CD3+", "CD4+", "CD8+", "CD56+", "NK", "NKT", "PD1+", "CD8+PD1+"):
        assert pop in names
    assert {v.name for v in surface.variables} >= {
        "viability_pct", "cd3_pct_of_live_lymph", "cd4_pct_of_cd3", "cd8_pct_of_cd3", "nk_pct_of_live_lymph",
        "nkt_pct_of_live_lymph", "pd1_pct_of_live_lymph", "cd8pd1_pct_of_cd8", "cd8pd1_pct_of_cd3",
    }
    assert [v.name for v in treg.variables] == ["cd4foxp3_pct_of_cd4", "cd3_pct_of_lymph_treg"]
    for s, path in zip((surface, treg), default_strategy_paths()):
        assert s.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_parse_details(tmp_path):
    s = load_strategy(write(tmp_path, BASE))
    assert s.transform_for("CD3") == Logicle(w=0.7)
    assert s.transform_for("CD56") == Logicle() and s.transform_for("FSC-A") == Linear()
    nk = s.population("NK")
    assert nk.boolean.op == "and" and nk.boolean.operands == ("CD56+", "CD3+") and nk.boolean.complements == (False, True)
    assert s.population("CD56+").params["percentile"] == 99.0
    assert s.population("cells").line == 7


def test_order_puts_parents_and_operands_first(tmp_path):
    text = BASE.replace("  - name: cells\n    parent: root\n    dims: [FSC-A, SSC-A]\n    method: cells\n", "")
    text = text.replace("variables:", "  - name: cells\n    parent: root\n    dims: [FSC-A, SSC-A]\n    method: cells\nvariables:")
    names = [p.name for p in parse_strategy(text).populations]
    assert names.index("cells") < names.index("live") < names.index("CD3+") < names.index("NK")
    assert names.index("CD56+") < names.index("NK")


def test_sha_changes_with_content_only(tmp_path):
    a = load_strategy(write(tmp_path, BASE, "a.yaml"))
    b = load_strategy(write(tmp_path, BASE, "b.yaml"))
    c = load_strategy(write(tmp_path, BASE + "# a comment\n", "c.yaml"))
    assert a.sha256 == b.sha256 != c.sha256
    assert a.populations == b.populations


def test_with_params_matches_the_same_change_written_in_the_file(tmp_path):
    base = load_strategy(write(tmp_path, BASE, "a.yaml"))
    in_file = "    method: fmo\n    params: {percentile: 98}\n  - name: CD56+"
    written = load_strategy(write(tmp_path, BASE.replace("    method: fmo\n  - name: CD56+", in_file), "b.yaml"))
    assert in_file in (tmp_path / "b.yaml").read_text()
    changed = base.with_params("fmo", percentile=98)
    by_name = {p.name: p for p in changed.populations}
    assert by_name["CD3+"] == {p.name: p for p in written.populations}["CD3+"]
    assert by_name["CD56+"].params == {"percentile": 98.0}    # every fmo gate, its own params overridden
    assert by_name["live"] == base.population("live")          # other methods untouched
    assert changed.sha256 not in (base.sha256, written.sha256)
    assert base.with_params("fmo", percentile=98).sha256 == changed.sha256 != base.with_params("fmo", percentile=97).sha256


@pytest.mark.parametrize("method,params,pattern", [
    ("singlets", {"width": 3.0}, "no gate placed by method 'singlets'"),
    ("fmo", {"pctl": 99}, r"unknown parameter\(s\) \['pctl'\] for method 'fmo'"),
    ("fmo", {"percentile": 120}, "parameter 'percentile' = 120 outside"),
    ("cells", {"boundary": "diagonal"}, "parameter 'boundary' must be one of"),
])
def test_with_params_checks_like_a_file(tmp_path, method, params, pattern):
    strategy = load_strategy(write(tmp_path, BASE))
    with pytest.raises(StrategyError, match=pattern):
        strategy.with_params(method, **params)


@pytest.mark.parametrize(
    "old,new,line,pattern",
    [
        ("    parent: live\n    dims: [CD3]", "    parent: alive\n    dims: [CD3]", 16, "unknown parent 'alive'"),
        ("dims: [CD56]", "dims: [CD57]", 22, r"unknown marker/dimension \['CD57'\]"),
        ("params: {keep: low}", "params: {keep: lowest}", 15, "keep"),
        ("params: {percentile: 99}", "params: {percentile: 120}", 24, "percentile"),
        ("params: {percentile: 99}", "params: {pctl: 99}", 24, "unknown parameter"),
        ("method: cells", "method: magic", 10, "unknown method 'magic'"),
        ("method: cells\n", "method: cells\n    params: {boundary: diagonal}\n", 11, "boundary"),
        ("dims: [7AAD]", "dims: [7AAD, CD3]", 13, "takes 1 dimension"),
        ("expression: CD56+ & !CD3+", "expression: CD56+ & !CD4+", 25, r"unknown operand 'CD4\+'"),
        ("expression: CD56+ & !CD3+", "expression: CD56+ & CD3+ | live", 27, "mixes"),
        ("  - name: NK\n", "  - name: CD3+\n", 25, r"duplicate population name 'CD3\+'"),
        ("markers: [CD3, CD56, 7AAD]", "markers: [CD3, CD56, 7AAD, CD3]", 3, r"repeated marker\(s\) \['CD3'\]"),
        ("  CD3: {kind: logicle, w: 0.7}", "  CD3: {kind: logicle, w: 9}", 5, "logicle parameters"),
        ("tube: surface\n", "tube: surface\ntube: treg\n", 3, "duplicate key 'tube'"),
        ("  cd3_pct: {numerator: CD3+, denominator: live}", "  cd3_pct: {numerator: CD3+, denominator: lve}", 29, "unknown population 'lve'"),
    ],
)
def test_errors_name_file_and_line(tmp_path, old, new, line, pattern):
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new))
    with pytest.raises(StrategyError, match=pattern) as info:
        load_strategy(path)
    assert str(info.value).startswith(f"{path}:{line}:"), str(info.value)


def test_cycle_is_reported(tmp_path):
    text = BASE.replace("  - name: cells\n    parent: root", "  - name: cells\n    parent: live")
    with pytest.raises(StrategyError, match="cycle") as info:
        load_strategy(write(tmp_path, text))
    assert str(info.value).startswith(str(tmp_path / "s.yaml") + ":")


def test_yaml_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(StrategyError, match=r"s.yaml:\d+: YAML"):
        load_strategy(write(tmp_path, "strategy: [unclosed\n"))
    with pytest.raises(StrategyError, match="nope.yaml: no such file$"):
        load_strategy(tmp_path / "nope.yaml")


def test_parse_expression():
    g = parse_expression("!CD3+")
    assert g.op == "not" and g.operands == ("CD3+",)
    g = parse_expression("A | B | !C")
    assert g.op == "or" and g.complements == (False, False, True)
    for bad in ("", "A &", "A"):
        with pytest.raises(ValueError):
            parse_expression(bad)


def test_strategies_pickle_for_worker_processes():
    import pickle

    for path in default_strategy_paths():
        s = load_strategy(path)
        assert pickle.loads(pickle.dumps(s)) == s


HYPHENATED = textwrap.dedent(
    """\
    strategy: activation
    tube: surface
    markers: [CD3, CD56, HLA-DR, PD-1, Ki-67]
    populations:
      - {name: live, parent: root, dims: [FSC-A, SSC-A], method: cells}
      - {name: HLA-DR+, parent: live, dims: [HLA-DR], method: fmo}
      - {name: hla-dr-, parent: live, dims: [HLA-DR], method: valley, params: {keep: low}}
      - {name: PD-1+, parent: live, dims: [PD-1], method: fmo}
      - {name: Ki-67+, parent: live, dims: [Ki-67], method: fmo}
      - {name: CD3+, parent: live, dims: [CD3], method: fmo}
      - {name: CD56+, parent: live, dims: [CD56], method: fmo}
      - {name: CD3-CD56+, parent: live, expression: CD56+ & !CD3+}
      - {name: HLA-DR+PD-1-, parent: live, expression: HLA-DR+ & !PD-1+}
    variables:
      hladr_pct: {numerator: HLA-DR+, denominator: live}
      hladr_neg_pct: {numerator: hla-dr-, denominator: live}
      pd1_pct: {numerator: PD-1+, denominator: live}
      ki67_pct: {numerator: Ki-67+, denominator: live}
      nk_pct: {numerator: CD3-CD56+, denominator: live}
      dr_not_pd1_pct: {numerator: HLA-DR+PD-1-, denominator: live}
    """
)


def test_count_columns_keep_hyphenated_marker_names(tmp_path):
    """A hyphen inside a marker's name (HLA-DR, PD-1, Ki-67) is not the '-' sign: HLA-DR+ was
    counted in ``n_hlanegdrpos_surface``. Signs between markers stay signs (CD3-CD56+)."""
    from tilpheno.report.codebook import _from_strategies

    strategy = load_strategy(write(tmp_path, HYPHENATED))
    assert strategy.count_columns() == {
        "n_hladrpos_surface": "HLA-DR+", "n_live_surface": "live", "n_hladrneg_surface": "hla-dr-",
        "n_pd1pos_surface": "PD-1+", "n_ki67pos_surface": "Ki-67+", "n_cd3negcd56pos_surface": "CD3-CD56+",
        "n_hladrpospd1neg_surface": "HLA-DR+PD-1-", "n_events_surface": "root"}
    codebook = _from_strategies([strategy], 99.5)
    assert {"n_hladrpos_surface", "n_pd1pos_surface", "n_hladrpospd1neg_surface"} <= set(codebook)
    assert not [c for c in codebook if "hlaneg" in c or "pdneg" in c or "kineg" in c]


def test_a_variable_over_root_adds_no_second_count_of_every_event():
    """gating/flowatlas_tcell.yaml's t_cells_pct is % of root: its denominator was counted in
    ``n_root_tcell`` beside ``n_events_tcell``, the same number under two names, and the codebook
    described only the second -> one column, n_events_tcell; every count column is in the codebook."""
    from tilpheno.report.codebook import _from_strategies

    strategy = load_strategy(Path(__file__).resolve().parents[1] / "gating" / "flowatlas_tcell.yaml")
    assert any(v.denominator == "root" for v in strategy.variables)
    columns = strategy.count_columns()
    assert columns["n_events_tcell"] == "root" and not [c for c in columns if c.startswith("n_root")]
    assert set(columns) <= set(_from_strategies([strategy], 99.5))


def test_a_variable_over_root_reads_as_percent_of_all_events():
    """new-study drafts `cd3_pct_of_root` for exports without scatter (FlowAtlas); the codebook,
    and with it the index's and reports' headers and units, called it "CD3+ % root", "% of root":
    a word of the strategy file's, not of the lab's -> "% all events", "% of all events", the
    population whose count is the stained file's n_events column."""
    from tilpheno.report.codebook import _from_strategies

    strategy = load_strategy(Path(__file__).resolve().parents[1] / "gating" / "flowatlas_tcell.yaml")
    codebook = _from_strategies([strategy], 99.5)
    over_root = [v for v in strategy.variables if v.denominator == "root"]
    assert over_root and strategy.count_columns()[f"n_events_{strategy.tube}"] == "root"
    for variable in over_root:
        entry = codebook[variable.name]
        assert entry["label"] == f"{variable.numerator} % all events"
        assert entry["unit"] == "% of all events"
        assert entry["meaning"] == f"{variable.numerator} as % of all events ({strategy.tube} tube)"
        assert "root" not in entry["method"].split("; ", 1)[1]   # the gate's line: within all events


def test_the_fmo_parameter_table_states_the_defaults_the_placement_uses():
    """strategy.py's parameter table (its module docstring: the strategy author's documentation) and
    ``METHODS['fmo']`` state each ``fmo`` default apart from the code that uses it (``placement.
    place_fmo_anchored``, ``checks.place_and_check``; ``max_shift``: ``placement.MAX_SHIFT``, which the checks
    and the shared reading's key read, stop 48), so that reading a strategy loads no SciPy: each default the
    table states and each ``ParamSpec`` default equal the signatures' defaults. A changed default (0.3 ->
    0.35 in placement.MAX_SHIFT alone) fails here."""
    import inspect
    import re
    import subprocess
    import sys

    from tilpheno.gates import checks, placement, strategy

    loaded = subprocess.run([sys.executable, "-c", "import sys, tilpheno.gates.strategy; "
                             "print(sorted({m.split('.')[0] for m in sys.modules} & {'scipy', 'numba'}))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", loaded   # reading a strategy loads no SciPy
    specs = strategy.METHODS["fmo"][1]
    used = {}
    for function in (placement.place_fmo_anchored, checks.place_and_check):
        for name, parameter in inspect.signature(function).parameters.items():
            # percentile: None in METHODS, the run's fmo_percentile
            if name in specs and specs[name].default is not None and parameter.default not in (inspect.Parameter.empty, None):
                assert used.setdefault(name, parameter.default) == parameter.default, name
    assert used["max_shift"] == placement.MAX_SHIFT
    assert {name: specs[name].default for name in used} == used
    doc = strategy.__doc__ or ""
    row = doc[doc.index("\nfmo "):doc.index("\nfixed ")]
    stated = {name: float(value) for name, value in re.findall(r"\b([a-z_]+) (\d+(?:\.\d+)?)\b", row) if name in specs}
    stated.update({name: default for name, default in re.findall(r"\b([a-z_]+) [a-z]+(?:\|[a-z]+)+ \(([a-z]+)\)", row)
                   if name in specs})
    assert {"max_shift", "shift_tolerance", "uncertain_points", "rule", "reference_carry"} <= set(stated), stated
    assert {name: specs[name].default for name in stated} == stated
