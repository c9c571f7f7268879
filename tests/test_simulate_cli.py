"""`tilpheno simulate` end to end (small)."""
from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from tilpheno.cli import app


def test_simulate_command_writes_cohort(tmp_path):
    out = tmp_path / "cohort"
    result = CliRunner().invoke(app, ["simulate", "-o", str(out), "--products", "2", "--seed", "9", "--events", "400"])
    assert result.exit_code == 0, result.output
    assert "wrote 18 FCS files for 2 products" in result.output
    assert len(list(out.glob("*.fcs"))) == 18
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert set(manifest["file"]) == {p.name for p in out.glob("*.fcs")}
    assert len(pd.read_csv(out / "truth.csv")) == 2
    assert len(pd.read_csv(out / "outcomes.csv")) == 2


def test_simulate_command_rejects_bad_counts(tmp_path):
    result = CliRunner().invoke(app, ["simulate", "-o", str(tmp_path), "--products", "0"])
    assert result.exit_code != 0
    assert not list(tmp_path.glob("*.fcs"))
