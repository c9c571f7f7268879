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
