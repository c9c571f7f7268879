"""Malformed FCS files (issue 6): each variant reads correctly or raises a one-line FCSReadError
naming the file; never another exception, never a hang, never a header-driven allocation."""
from __future__ import annotations

import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from tilpheno.errors import FCSReadError
from tilpheno.io.fcs import read_fcs, read_fcs_metadata

sys.path.insert(0, str(Path(__file__).parent))
from malformed_fcs import hang_guard, variants, write_variants  # noqa: E402

VARIANTS = variants()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return {v.name: (v, p) for v, p in write_variants(tmp_path_factory.mktemp("malformed"))}


def test_at_least_40_malformed_variants():
    malformed = [v for v in VARIANTS if v.name != "good_reference"]
    assert len(malformed) >= 40
    assert len({v.name for v in VARIANTS}) == len(VARIANTS)


def _check_error(exc: FCSReadError, path: Path):
    message = str(exc)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert len(exc.problem) > 5


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_full_read_outcome(variant, written):
    _, path = written[variant.name]
    with hang_guard():
        if variant.outcome == "error":
            with pytest.raises(FCSReadError) as info:
                read_fcs(path)
            _check_error(info.value, path)
            return
        fcs = read_fcs(path)
    assert fcs.events.shape == variant.expected.shape
    np.testing.assert_array_equal(fcs.events, variant.expected)
    assert fcs.n_events == variant.expected.shape[0]
    for key, value in variant.extra.get("keywords", {}).items():
        assert fcs.keywords[key] == value
    if "channel_names" in variant.extra:
        assert fcs.channel_names == variant.extra["channel_names"]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_metadata_read_outcome(variant, written):
    _, path = written[variant.name]
    ok = variant.metadata_ok if variant.metadata_ok is not None else variant.outcome == "read"
    with hang_guard():
        if ok:
            assert read_fcs_metadata(path).events is None
        else:
            with pytest.raises(FCSReadError) as info:
                read_fcs_metadata(path)
            _check_error(info.value, path)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if "dataset1" in v.extra], ids=lambda v: v.name)
def test_second_data_set(variant, written):
    _, path = written[variant.name]
    wanted = variant.extra["dataset1"]
    if isinstance(wanted, str):
        with pytest.raises(FCSReadError) as info:
            read_fcs(path, dataset=1)
        _check_error(info.value, path)
    else:
        np.testing.assert_array_equal(read_fcs(path, dataset=1).events, wanted)


def test_allocation_bounded_by_file_size(written):
    """Peak memory of a read stays within a small multiple of the real file size, whatever the
    HEADER/TEXT claim ($TOT = 10^12, $PAR = 10^9, offsets past the end)."""
    for name in ("tot_10e12", "par_10e9", "data_end_past_end", "text_end_past_end", "tot_too_large"):
        _, path = written[name]
        size = path.stat().st_size
        tracemalloc.start()
        try:
            with pytest.raises(FCSReadError):
                read_fcs(path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 50 * size + 2_000_000, (name, peak)


def test_inputs_opened_read_only(written, monkeypatch):
    import builtins

    modes = []
    real_open = builtins.open

    def spy(file, mode="r", *args, **kwargs):
        modes.append(mode)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    _, path = written["good_reference"]
    before = path.read_bytes()
    modes.clear()
    read_fcs(path)
    read_fcs_metadata(path)
    assert modes and all(m == "rb" for m in modes)
    assert path.read_bytes() == before


def test_missing_file_bad_path_type_and_bad_dataset_index(tmp_path):
    with pytest.raises(FCSReadError, match="no such file"):
        read_fcs(tmp_path / "absent.fcs")
    with pytest.raises(FCSReadError, match="path must be"):
        read_fcs(42)
    good = tmp_path / "good.fcs"
    good.write_bytes(VARIANTS[0].content)
    with pytest.raises(FCSReadError, match="data set index"):
        read_fcs_metadata(good, dataset=-1)


def test_fifo_named_fcs_does_not_block(tmp_path):
    fifo = tmp_path / "pipe.fcs"
    os.mkfifo(fifo)
    with hang_guard():
        for reader in (read_fcs, read_fcs_metadata):
            with pytest.raises(FCSReadError, match="not a regular file"):
                reader(fifo)
