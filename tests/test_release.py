"""Release spec: YAML parsing/validation and evaluation against hand-computed outcomes."""
import math

import pytest

from tilpheno.errors import TableError
from tilpheno.release import DEFAULT_SPEC, FAIL, NOT_EVALUABLE, PASS, evaluate, load_release_spec, overall


def test_default_spec_is_viability_70_and_cd3_90():
    rules = {(c.column, c.op, c.limit) for c in DEFAULT_SPEC.criteria}
    assert rules == {("viability_pct", ">", 70.0), ("cd3_pct_of_live_lymph", ">", 90.0)}


@pytest.mark.parametrize(
    "viability, cd3, expected",
    [(85.0, 95.0, PASS), (70.0, 95.0, FAIL), (70.01, 90.01, PASS), (85.0, 90.0, FAIL), (float("nan"), 95.0, NOT_EVALUABLE),
     (None, 50.0, FAIL)],
)
def test_default_spec_outcomes_strict_inequalities(viability, cd3, expected):
    results = evaluate(DEFAULT_SPEC, {"viability_pct": viability, "cd3_pct_of_live_lymph": cd3})
    assert overall(results) == expected


def test_missing_column_is_not_evaluable_never_pass():
    results = evaluate(DEFAULT_SPEC, {"viability_pct": 99.0})
    assert [r.outcome for r in results] == [PASS, NOT_EVALUABLE]
    assert math.isnan(results[1].value)
    assert overall(results) == NOT_EVALUABLE


def test_yaml_spec_loaded_with_digest(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(
        "name: Site B v3\ncriteria:\n"
        "  - {name: Viability, column: viability_pct, op: '>=', limit: 80}\n"
        "  - {name: CD4 low, column: cd4_pct_of_cd3, op: '<', limit: 60, unit: '% of CD3'}\n"
    )
    spec = load_release_spec(path)
    assert spec.name == "Site B v3" and spec.source == str(path) and len(spec.sha256) == 64
    res = evaluate(spec, {"viability_pct": 80.0, "cd4_pct_of_cd3": 60.0})
    assert [r.outcome for r in res] == [PASS, FAIL]
    assert res[1].criterion.describe() == "cd4_pct_of_cd3 < 60 % of CD3"


GOOD = "  - {column: b, op: '>', limit: 1}\n"


@pytest.mark.parametrize(
    "body, fragment, line",
    [
        ("name: x\n", "'criteria' must be a non-empty list", 0),
        ("criteria:\n" + GOOD + "  - {column: a, op: '=>', limit: 1}\n", "criteria[1].op", 3),
        ("criteria:\n  - column: a\n    op: '>'\n    limit: high\n", "criteria[0].limit", 4),
        ("criteria:\n  - {column: a, op: '>'}\n", "missing key(s) limit", 2),
        ("criteria:\n" + GOOD + "  - {column: a, op: '>', limit: 1, colour: red}\n", "unknown key(s) colour", 3),
        ("criteria: [\n", "not a valid YAML file", 2),
        ("criteria:\n" + GOOD + "criteria: []\n", "duplicate key 'criteria'", 3),
        ("- 1\n- 2\n", "expected a mapping", 0),
    ],
)
def test_invalid_specs_name_the_file_line_and_key(tmp_path, body, fragment, line):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(TableError) as err:
        load_release_spec(path)
    assert str(err.value).startswith(f"{path}:{line}: " if line else f"{path}: "), str(err.value)
    assert fragment in str(err.value)


def test_unreadable_spec(tmp_path):
    with pytest.raises(TableError, match="^.*missing.yaml: no such file$"):   # as every library caller is told
        load_release_spec(tmp_path / "missing.yaml")
    with pytest.raises(TableError, match="cannot read release spec"):
        load_release_spec(tmp_path)
