"""Shared fixtures: a headless Chromium (skipped with a reason when absent) and a small simulated cohort."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from browser import CHROMIUM, Browser  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """The files holding a test marked ``slow`` first, then the others by their number of tests (most
    first), each file's tests in their own order. ``make test`` runs ``--dist loadfile
    --no-loadscope-reorder``: xdist hands whole files to its two workers in this order, so the longest
    start early and the workers end together. xdist's own order (by number of tests alone) handed out
    the demo chain's file (2 tests, ~30 s) 103rd of 106 and mypy's (3 tests, ~20-37 s) 94th: one
    worker ran them while the other had nothing left."""
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    order = sorted(files.values(), key=lambda tests: (not any(t.get_closest_marker("slow") for t in tests),
                                                      -len(tests)))
    items[:] = [t for tests in order for t in tests]


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session (``make test`` installs Debian's chromium)."""
    if CHROMIUM is None:
        pytest.skip("chromium not installed (`make browser` installs Debian's chromium package)")
    with Browser(timeout=60) as b:
        yield b


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory):
    """Three simulated products (9 tubes x 2500 events each) with manifest, truth and outcomes."""
    from tilpheno.simulate.cohort import simulate_cohort

    return simulate_cohort(tmp_path_factory.mktemp("cohort"), n_products=3, seed=7, n_events=2500)


@pytest.fixture(scope="session")
def processed(small_cohort, tmp_path_factory):
    """The small cohort processed once with --jobs 1 (library call): (output folder, RunSummary)."""
    from tilpheno.pipeline import process_folder

    out = tmp_path_factory.mktemp("out_jobs1")
    summary = process_folder(small_cohort.out_dir, out, manifest_csv=small_cohort.manifest)
    return out, summary


@pytest.fixture
def refuse_listing(monkeypatch):
    """``refuse_listing(folder)``: listing ``folder`` raises PermissionError from then on (root
    ignores permission bits, so a folder that cannot be listed is simulated through os.scandir)."""
    import os

    real_scandir = os.scandir
    refused: set[Path] = set()

    def scandir(path="."):
        if isinstance(path, (str, os.PathLike)) and Path(path) in refused:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return lambda folder: refused.add(Path(folder))


@pytest.fixture
def decodes(monkeypatch):
    """A Counter of ``tilpheno.io.fcs.read_fcs`` calls by file name (events decoded), counting from
    then on; the reader itself still runs."""
    import collections

    import tilpheno.io.fcs as fcs_module

    decoded: collections.Counter = collections.Counter()
    read_fcs = fcs_module.read_fcs

    def counting(path, **kw):
        decoded[Path(path).name] += 1
        return read_fcs(path, **kw)

    monkeypatch.setattr(fcs_module, "read_fcs", counting)
    return decoded
