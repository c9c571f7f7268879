"""Atomic writes: complete or absent, never half-written; ordinary permissions."""
import os
import stat

import pandas as pd
import pytest

from tilpheno.io import atomic


def test_write_text_replaces_whole_file(tmp_path):
    target = tmp_path / "out" / "a.txt"
    atomic.write_text(target, "first")
    atomic.write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_failure_leaves_previous_content_and_no_temp_file(tmp_path):
    target = tmp_path / "t.csv"
    atomic.write_text(target, "good")
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(target) as fh:
            fh.write("half")
            raise RuntimeError("killed part-way")
    assert target.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_csv(tmp_path / "x.csv", pd.DataFrame({"a": [1]}))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.csv").stat().st_mode) == 0o644
