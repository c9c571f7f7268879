"""YAML limits (issue 11): alias bombs, non-scalar names, oversized files in strategies and release specs."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from tilpheno.errors import StrategyError, TableError
from tilpheno.gates.strategy import load_strategy, parse_strategy
from tilpheno.io.yamlsafe import MAX_EXPANDED_NODES, YAMLLimitError, check_expansion, safe_load
from tilpheno.release import load_release_spec

SURFACE = Path(__file__).resolve().parents[1] / "tilpheno" / "studies" / "til" / "til_surface.yaml"

# 9 levels of 9 aliases: 9**9 (387 million) strings once expanded, in under 500 bytes
BOMB = "\n".join(
    ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
)


def test_the_bomb_is_small_and_huge():
    assert len(BOMB) < 500
    with pytest.raises(YAMLLimitError, match="expands to more than"):
        check_expansion(yaml.compose(BOMB))
    assert check_expansion(yaml.compose("a: &x [1, 2]\nb: *x\n")) == 1 + 2 * (1 + 3)   # mapping + 2 keys + 2 lists


def test_release_spec_name_alias_bomb_is_refused_quickly(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(BOMB + "\nname: *a8\ncriteria:\n  - {column: viability_pct, op: '>', limit: 70}\n")
    start = time.perf_counter()
    with pytest.raises(TableError, match="expands to more than"):
        load_release_spec(spec)
    assert time.perf_counter() - start < 5


def test_release_spec_name_must_be_text(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: [a, b]\ncriteria:\n  - {column: viability_pct, op: '>', limit: 70}\n")
    with pytest.raises(TableError, match="name: must be text, not a list"):
        load_release_spec(spec)
    spec.write_text("name: ok\ncriteria:\n  - {column: viability_pct, op: '>', limit: 70, unit: {x: 1}}\n")
    with pytest.raises(TableError, match=r"criteria\[0\]\.unit: must be text, not a mapping"):
        load_release_spec(spec)
    spec.write_text("name: " + "x" * 20_000 + "\ncriteria:\n  - {column: viability_pct, op: '>', limit: 70}\n")
    with pytest.raises(TableError, match="more than 10000"):
        load_release_spec(spec)


def test_strategy_description_alias_bomb_is_refused(tmp_path):
    text = SURFACE.read_text()
    bombed = BOMB + "\n" + "\n".join(line for line in text.splitlines() if not line.startswith("description"))
    bombed = bombed.replace("strategy:", "description: *a8\nstrategy:", 1)
    with pytest.raises(StrategyError, match="expands to more than"):
        parse_strategy(bombed, "bomb.yaml")
    listed = text.replace("strategy:", "description: [not, text]\nstrategy:", 1) if "description:" not in text else \
        "\n".join(("description: [not, text]" if l.startswith("description:") else l) for l in text.splitlines())
    with pytest.raises(StrategyError, match="description: must be text, not a list"):
        parse_strategy(listed, "listed.yaml")


def test_oversized_and_special_files_are_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# padding\n" * 200_000)
    with pytest.raises(StrategyError, match="larger than"):
        load_strategy(big)
    with pytest.raises(TableError, match="larger than"):
        load_release_spec(big)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(StrategyError, match="not a regular file"):
        load_strategy(fifo)


def test_bundled_files_are_well_within_the_limits():
    assert load_strategy(SURFACE).name
    assert check_expansion(yaml.compose(SURFACE.read_text())) < MAX_EXPANDED_NODES / 10
    assert safe_load("a: 1") == {"a": 1}


def test_study_vocabulary_and_panel_files_have_the_same_limits(tmp_path):
    """`--study`, a study's vocabulary and `--panel` are user files too: the bomb is refused."""
    from tilpheno.errors import StudyError
    from tilpheno.panel import read_panel_file
    from tilpheno.study import load_study
    from tilpheno.vocabulary import read_vocabulary

    study = tmp_path / "study.yaml"
    study.write_text(BOMB + "\nstudy: *a8\n")
    vocabulary = tmp_path / "vocabulary.yaml"
    vocabulary.write_text(BOMB + "\naliases: {CD3: *a8}\n")
    panel = tmp_path / "panel.yaml"
    panel.write_text(BOMB + "\npanel: *a8\n")
    start = time.perf_counter()
    with pytest.raises(StudyError, match="expands to more than"):
        load_study(study)
    with pytest.raises(StudyError, match="expands to more than"):
        read_vocabulary(vocabulary)
    with pytest.raises(TableError, match="expands to more than"):
        read_panel_file(panel)
    assert time.perf_counter() - start < 5
    big = tmp_path / "big_study.yaml"
    big.write_text("study: x\n# " + "x" * (1 << 20) + "\n")
    with pytest.raises(StudyError, match="larger than"):
        load_study(big)


BROKEN = {   # YAML that PyYAML refuses, each for another reason
    "duplicate key": "strategy: a\ntube: surface\nstrategy: b\n",
    "unclosed quote": "strategy: 'a\ntube: surface\n",
    "bad indentation": "strategy: a\n  tube: surface\n - x\n",
    "tab": "strategy:\n\t- a\n",
    "mapping in a scalar": "strategy: a: b\n",
    "alias bomb": BOMB + "\nstrategy: *a8\n",
    "unknown key (valid YAML, line 3)": "strategy: a\ntube: surface\n\nbogus: 1\n",
    "bad population (valid YAML)": SURFACE.read_text(encoding="utf-8").replace("    parent: cells", "    parent: nowhere", 1),
}


def _texts() -> dict[str, str]:
    bundled = {p.name: p.read_text(encoding="utf-8") for p in sorted(SURFACE.parents[1].rglob("*.yaml"))}
    return {**bundled, **BROKEN}


def _loaded(load, text: str):
    try:
        return "ok", load(text)
    except (StrategyError, yaml.YAMLError, YAMLLimitError) as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.skipif(getattr(yaml, "CSafeLoader", None) is None, reason="PyYAML built without libyaml")
def test_libyaml_reads_the_configuration_with_pure_pyyamls_values_and_errors(monkeypatch):
    """Issue 18, start-up: every run reads the study, its release spec, vocabulary and strategies;
    PyYAML's pure-Python parser took 30 ms of it, libyaml's takes 3. The values must be the same,
    and so must every error (message and line: a failed fast read is read again by the pure-Python
    parser, whose error is the one shown): compared here with a run on the pure-Python parser alone."""
    import tilpheno.io.yamlsafe as yamlsafe

    texts = _texts()
    fast = {name: (_loaded(safe_load, t), _loaded(lambda s: parse_strategy(s, "x.yaml"), t)) for name, t in texts.items()}
    # the pure parser alone: what tilpheno read before, and reads where PyYAML has no libyaml
    composed = []
    real = yaml.SafeLoader.get_single_node
    monkeypatch.setattr(yaml.SafeLoader, "get_single_node", lambda self: composed.append(1) or real(self))
    monkeypatch.setattr(yamlsafe, "FAST_LOADER", None)
    monkeypatch.setattr(yamlsafe.load_text, "__defaults__", (yaml.SafeLoader, None, None))
    import tilpheno.gates.strategy as strategy

    monkeypatch.setattr(strategy, "_FastLoader", strategy._Loader)
    pure = {name: (_loaded(safe_load, t), _loaded(lambda s: parse_strategy(s, "x.yaml"), t)) for name, t in texts.items()}
    assert composed, "the pure-Python parser was not used"
    assert fast == pure
    assert fast["study.yaml"][0][0] == "ok" and fast["til_surface.yaml"][1][0] == "ok"
    assert all(f[1][0] != "ok" for name, f in fast.items() if name in BROKEN), fast
    assert ":4:" in fast["unknown key (valid YAML, line 3)"][1][1]


@pytest.mark.skipif(getattr(yaml, "CSafeLoader", None) is None, reason="PyYAML built without libyaml")
def test_a_valid_configuration_is_not_parsed_by_pure_python(monkeypatch):
    """The bundled study and strategies load without PyYAML's pure-Python parser (libyaml's instead)."""
    from tilpheno.study import load_study

    composed = []
    real = yaml.SafeLoader.get_single_node
    monkeypatch.setattr(yaml.SafeLoader, "get_single_node", lambda self: composed.append(1) or real(self))
    study = load_study("til")
    strategies = [load_strategy(p) for p in study.strategy_paths]
    assert composed == [] and len(strategies) == 2 and study.variables
