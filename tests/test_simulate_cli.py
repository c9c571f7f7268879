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


def test_a_disk_full_while_simulating_names_the_folder_and_what_it_holds(tmp_path, monkeypatch):
    """The disk fills after some FCS files are written (simulated: the fifth fsync answers ENOSPC,
    naming no file, as the system does). The line was 'error: No space left on device (disk full)',
    naming nothing, and the folder's FCS files, without manifest.csv, looked like a cohort. Now it
    names the folder and says its files are an incomplete cohort."""
    import errno
    import os

    out = tmp_path / "cohort"
    real_fsync, calls = os.fsync, []

    def full(fd):
        calls.append(fd)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    result = CliRunner().invoke(app, ["simulate", "-o", str(out), "--products", "1", "--events", "400"])
    assert result.exit_code == 2, result.output
    assert result.output == (f"error: {out}: No space left on device (disk full); the FCS files in {out} are an "
                             "incomplete cohort (no manifest.csv): simulate again\n")
    assert len(list(out.glob("*.fcs"))) == 4 and not (out / "manifest.csv").exists()
