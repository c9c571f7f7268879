"""FCSFile.sha256 is computed on first access (not by the read), cached, and only ever describes
the file that was read: a file changed, replaced or removed since the read raises FCSReadError."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

import tilpheno.io.fcs as fcs_module
from tilpheno.errors import FCSReadError
from tilpheno.io.fcs import FCSFile, read_fcs, read_fcs_metadata

sys.path.insert(0, str(Path(__file__).parent))
from malformed_fcs import float_file, hang_guard  # noqa: E402

HASH_ROUTINE = fcs_module._LazySHA256.hexdigest


@pytest.fixture
def sample(tmp_path) -> Path:
    rng = np.random.default_rng(7)
    path = tmp_path / "sample.fcs"
    path.write_bytes(float_file(rng.normal(size=(300, 4)).astype(np.float32)))
    return path


@pytest.fixture
def hash_calls(monkeypatch) -> list[Path]:
    calls: list[Path] = []

    def counting(self):
        calls.append(self.path)
        return HASH_ROUTINE(self)

    monkeypatch.setattr(fcs_module._LazySHA256, "hexdigest", counting)
    return calls


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("reader", [read_fcs, read_fcs_metadata])
def test_read_does_not_hash_first_access_does_once(sample, hash_calls, reader):
    fcs = reader(sample)
    assert hash_calls == []
    assert fcs.sha256 == _digest(sample)
    assert fcs.sha256 == _digest(sample)
    assert len(hash_calls) == 1


def test_checksum_false_is_empty_and_never_hashes(sample, hash_calls):
    quick = read_fcs_metadata(sample, checksum=False)
    assert quick.sha256 == ""
    assert hash_calls == []


def test_cached_digest_survives_removal_of_the_file(sample):
    fcs = read_fcs(sample)
    expected = _digest(sample)
    assert fcs.sha256 == expected
    sample.unlink()
    assert fcs.sha256 == expected


def test_repr_does_not_hash(sample, hash_calls):
    fcs = read_fcs(sample)
    sample.unlink()  # would make hashing fail
    text = repr(fcs)
    assert "sample.fcs" in text and "sha256" not in text
    assert hash_calls == []


@pytest.mark.parametrize("change", ["append", "same_size_new_mtime", "replaced_same_bytes", "removed"])
def test_file_changed_since_the_read_raises(sample, change):
    fcs = read_fcs(sample)
    original = sample.read_bytes()
    if change == "append":
        with open(sample, "ab") as fh:
            fh.write(b"\0")
        message = "changed since it was read"
    elif change == "same_size_new_mtime":
        st = os.stat(sample)
        sample.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
        os.utime(sample, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        message = "changed since it was read"
    elif change == "replaced_same_bytes":  # another file put in its place (new inode): not the bytes read
        other = sample.with_suffix(".tmp")
        other.write_bytes(original)
        os.replace(other, sample)
        message = "changed since it was read"
    else:
        sample.unlink()
        message = "removed"
    with pytest.raises(FCSReadError, match=message) as info:
        fcs.sha256  # noqa: B018
    assert str(sample) in str(info.value) and "\n" not in info.value.problem


def test_fifo_in_place_of_the_file_does_not_block(sample):
    fcs = read_fcs(sample)
    sample.unlink()
    os.mkfifo(sample)
    with hang_guard(), pytest.raises(FCSReadError, match="changed since it was read"):
        fcs.sha256  # noqa: B018


def test_hash_opens_the_file_read_only(sample, monkeypatch):
    import builtins

    modes = []
    real_open = builtins.open

    def spy(file, mode="r", *args, **kwargs):
        modes.append(mode)
        return real_open(file, mode, *args, **kwargs)

    before = sample.read_bytes()
    fcs = read_fcs(sample)
    monkeypatch.setattr(builtins, "open", spy)
    assert fcs.sha256 == hashlib.sha256(before).hexdigest()
    assert modes == ["rb"]
    assert sample.read_bytes() == before


def test_relative_path_hashes_the_same_file_after_chdir(sample, tmp_path, monkeypatch):
    monkeypatch.chdir(sample.parent)
    fcs = read_fcs(sample.name)
    monkeypatch.chdir(tmp_path.parent)
    assert fcs.path == Path(sample.name)
    assert fcs.sha256 == _digest(sample)


def test_large_file_hashes_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(fcs_module, "HASH_CHUNK_BYTES", 1000)  # many blocks, a partial last one
    path = tmp_path / "big.fcs"
    path.write_bytes(float_file(np.arange(20_000, dtype=np.float32).reshape(-1, 4)))
    assert read_fcs(path).sha256 == _digest(path)


def test_pickle_keeps_lazy_and_computed_digests(sample):
    lazy = pickle.loads(pickle.dumps(read_fcs(sample)))
    assert lazy.sha256 == _digest(sample)
    computed = read_fcs(sample)
    computed.sha256  # noqa: B018
    sample.unlink()
    copy = pickle.loads(pickle.dumps(computed))
    assert copy.sha256 == computed.sha256
    np.testing.assert_array_equal(copy.events, computed.events)


def test_constructor_and_replace_accept_a_digest_string(sample):
    fcs = read_fcs(sample)
    given = FCSFile(fcs.path, "ab" * 32, fcs.version, fcs.keywords, fcs.channels, fcs.events,
                    fcs.spillover, fcs.n_events)
    assert given.sha256 == "ab" * 32
    by_name = FCSFile(path=fcs.path, sha256="cd" * 32, version=fcs.version, keywords=fcs.keywords,
                      channels=fcs.channels, events=None, spillover=None, n_events=0)
    assert by_name.sha256 == "cd" * 32
    assert dataclasses.replace(given, events=None).sha256 == "ab" * 32
    replaced = dataclasses.replace(fcs, events=None)
    assert replaced.sha256 == fcs.sha256 == _digest(sample)
    given.sha256 = "ef" * 32
    assert given.sha256 == "ef" * 32
