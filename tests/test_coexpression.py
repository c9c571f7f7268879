"""Co-expression plausibility (issue 4): CD4+ and CD8+ each ~95 % of CD3+ cannot both be right; a
strategy declares the pair (checks: co_expression) and both gates are flagged for review."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tilpheno.cli import app
from tilpheno.errors import StrategyError
from tilpheno.gates.coexpression import co_expression_flags
from tilpheno.gates.strategy import parse_strategy

ROOT = Path(__file__).resolve().parents[1]
STRATEGY = """strategy: t
tube: surface
markers: [CD3, CD4, CD8]
populations:
  - {name: CD3+, parent: root, dims: [CD3], method: valley, params: {keep: high}}
  - {name: CD4+, parent: CD3+, dims: [CD4], method: valley, params: {keep: high}}
  - {name: CD8+, parent: CD3+, dims: [CD8], method: valley, params: {keep: high}}
variables:
  cd4_pct_of_cd3: {numerator: CD4+, denominator: CD3+}
checks:
  - {kind: co_expression, populations: [CD4+, CD8+]CHECK}
"""


def test_double_positives_above_the_limit_flag_both_gates():
    """Synthetic masks: CD4+ 95 % and CD8+ 94 % of 10,000 CD3+ events (drawn independently): the
    double positives' share (counted here) is far above 10 % -> one review warning on each gate, giving
    that share; a TIL-like 40 % / 55 % with 3 % double positives raises none, nor does an empty parent."""
    rng = np.random.default_rng(47)
    parent = np.ones(10_000, dtype=bool)
    cd4, cd8 = rng.random(10_000) < 0.95, rng.random(10_000) < 0.94
    flags = co_expression_flags("CD4+", "CD8+", "CD3+", {"CD3+": parent, "CD4+": cd4, "CD8+": cd8}, 10.0, ("CD4", "CD8"))
    share = 100 * np.count_nonzero(cd4 & cd8) / parent.size
    assert share > 85 and [(f.code, f.severity, f.gate) for f in flags] == [("co_expression", "warning", "CD4+"),
                                                                           ("co_expression", "warning", "CD8+")]
    assert all(f"{share:.1f} % of CD3+ are both CD4+ and CD8+" in f.message for f in flags), flags[0].message
    groups = rng.choice(4, size=10_000, p=[0.37, 0.52, 0.03, 0.08])   # CD4 only, CD8 only, both, neither
    cd4, cd8 = np.isin(groups, (0, 2)), np.isin(groups, (1, 2))
    assert co_expression_flags("CD4+", "CD8+", "CD3+", {"CD3+": parent, "CD4+": cd4, "CD8+": cd8}, 10.0, ("CD4", "CD8")) == []
    empty = np.zeros(10_000, dtype=bool)
    assert co_expression_flags("CD4+", "CD8+", "CD3+", {"CD3+": empty, "CD4+": empty, "CD8+": empty}, 10.0, ("CD4", "CD8")) == []


def test_the_check_is_declared_and_checked():
    """``checks: [{kind: co_expression, populations: [CD4+, CD8+], limit: 20}]`` is read (limit default
    10); a pair of different parents, or of one marker, or an unknown population, is refused in one line."""
    assert parse_strategy(STRATEGY.replace("CHECK", ""), "s.yaml").co_expression[0].limit == 10.0
    check = parse_strategy(STRATEGY.replace("CHECK", ", limit: 20"), "s.yaml").co_expression[0]
    assert check.populations == ("CD4+", "CD8+") and check.limit == 20.0
    with pytest.raises(StrategyError, match=r"s\.yaml.*checks\[0\]\.populations: 'CD3\+' and 'CD8\+' must be gates of one "
                                            r"parent on two different markers"):
        parse_strategy(STRATEGY.replace("[CD4+, CD8+]", "[CD3+, CD8+]").replace("CHECK", ""), "s.yaml")
    with pytest.raises(StrategyError, match=r"checks\[0\]\.populations: unknown population 'CD99\+'"):
        parse_strategy(STRATEGY.replace("[CD4+, CD8+]", "[CD4+, CD99+]").replace("CHECK", ""), "s.yaml")


def drafted_100715(tmp_path: Path) -> tuple[Path, Path]:
    """100715.fcs (no FMO, no unstained control) in ``tmp_path/fcs``, drafted by new-study into
    ``tmp_path/study``: the folder and the drafted strategy file."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "fcs" / "flowio" / "100715.fcs", folder / "100715.fcs")
    assert CliRunner().invoke(app, ["new-study", str(folder), "-o", str(tmp_path / "study")]).exit_code == 0
    return folder, tmp_path / "study" / "tube025.yaml"


def test_100715_with_both_sides_stated_is_flagged(tmp_path):
    """100715.fcs drafted (no FMO, no unstained control) with CD3, CD4 and CD8 stated one_population:
    positive reports CD4+ and CD8+ each above 90 % of CD3+ with no word on it -> with the pair declared,
    both gates carry a co_expression review warning whose share is the double positives counted on
    the product's masks, and the product needs review."""
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.phenotype import analyze_product

    folder, path = drafted_100715(tmp_path)
    text = path.read_text()
    for marker in ("CD3", "CD4", "CD8"):
        text = text.replace(f"dims: [{marker}], method: valley, params: {{keep: high}}",
                            f"dims: [{marker}], method: valley, params: {{keep: high, one_population: positive}}", 1)
    assert "populations: [CD4+, CD8+], limit: 10}" in text   # drafted: the vocabulary's exclusive: pair (test_scaffold.py)
    path.write_text(text)
    rows = pd.DataFrame([{"file": str(folder / "100715.fcs"), "product_id": "P", "tube": "tube025", "role": "stain",
                          "fmo_marker": ""}])
    result = analyze_product("P", rows, [load_strategy(path)])
    masks = result.tubes[0].masks
    share = 100 * np.count_nonzero(masks["CD4+"] & masks["CD8+"]) / np.count_nonzero(masks["CD3+"])
    assert result.phenotype["cd4_pct_of_cd3"] > 90 and result.phenotype["cd8_pct_of_cd3"] > 90 and share > 80
    flags = [f for f in result.qc if f.code == "co_expression" and "both CD4+ and CD8+" in f.message]   # CD3+/CD19+ too
    assert sorted(f.gate for f in flags) == ["CD4+", "CD8+"]
    assert all(f.severity == "warning" and f"{share:.1f} % of CD3+ are both CD4+ and CD8+" in f.message for f in flags)
    from tilpheno.qc import needs_review

    assert all(needs_review(f) for f in flags)


def test_a_deleted_gate_a_drafted_check_names_says_which_check_line_to_delete(tmp_path):
    """A lab deleted new-study's drafted CD19+ gate (and its variable) from 100715.fcs's draft: the strategy
    refused to load with 'checks[1].populations: unknown population 'CD19+'', leaving the lab to work out
    that the drafted co_expression check [CD3+, CD19+] must go too -> the one line says so, with the line
    of that check in the file (found here by its text); nothing is run, exit 2. A dim_subset check naming
    an unknown population says the same, and so does the drafted variable when only the gate was deleted."""
    folder, path = drafted_100715(tmp_path)
    original = path.read_text().splitlines(keepends=True)
    lines = [line for line in original
             if not line.startswith(("  - {name: CD19+,", "  cd19_pct_of_lymph:"))]
    path.write_text("".join(lines))
    [check] = [i + 1 for i, line in enumerate(lines) if "kind: co_expression, populations: [CD3+, CD19+]" in line]
    study = path.parent
    result = CliRunner().invoke(app, ["process", str(folder), "--study", str(study / "study.yaml"), "--manifest",
                                      str(study / "manifest.csv"), "-o", str(tmp_path / "out"), "--reports", "none"])
    assert result.exit_code == 2 and not (tmp_path / "out").exists(), result.output
    said = result.output.strip()
    assert said == (f"error: {path}:{check}: checks[1].populations: unknown population 'CD19+'; if its gate was deleted, "
                    f"delete this check too (line {check}), or name another population"), said
    # the gate deleted, its drafted variable kept: the variable's line is named the same way (variables are read first)
    gate = next(line for line in original if line.startswith("  - {name: CD19+,"))
    path.write_text("".join(line for line in original if line != gate))
    [variable] = [i + 1 for i, line in enumerate(line for line in original if line != gate)
                  if line.startswith("  cd19_pct_of_lymph:")]
    result = CliRunner().invoke(app, ["process", str(folder), "--study", str(study / "study.yaml"), "--manifest",
                                      str(study / "manifest.csv"), "-o", str(tmp_path / "out"), "--reports", "none"])
    assert result.exit_code == 2 and not (tmp_path / "out").exists(), result.output
    assert result.output.strip() == (f"error: {path}:{variable}: variables.cd19_pct_of_lymph.numerator: unknown population "
                                     f"'CD19+'; if its gate was deleted, delete this variable too (line {variable}), or "
                                     "name another population"), result.output
    subset = STRATEGY.replace("CHECK", "").replace("\n  - {kind: co_expression", "\n  - {kind: dim_subset, subset: CD4-, "
                                                    "reference: CD4+, marker: CD3}\n  - {kind: co_expression")
    with pytest.raises(StrategyError, match=r"^s\.yaml:11: checks\[0\]\.subset: unknown population 'CD4-'; if its gate was "
                                            r"deleted, delete this check too \(line 11\), or name another population$"):
        parse_strategy(subset, "s.yaml")
