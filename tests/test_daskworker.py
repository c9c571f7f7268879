"""``tilpheno.daskworker.heap_thresholds``: in a process started as ``distributed``'s nanny starts
its workers (``MALLOC_TRIM_THRESHOLD_=65536``), freeing and re-allocating large numpy arrays no longer
costs fresh pages (page faults) every time; without such a variable nothing is changed. And any
process that runs products sets the same thresholds before its first product
(``tilpheno.pipeline.product.large_arrays_on_heap``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, resource, numpy as np
from tilpheno.daskworker import heap_thresholds

def faults(n=30):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        a = np.ones(2_000_000)   # 16 MB, as a 200,000 x 10 event array
        a += 1.0
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0

before = faults()
changed = heap_thresholds()
print(json.dumps({"before": before, "changed": changed, "after": faults()}))
"""


FIRST_PRODUCT_PROBE = """
import json, resource, numpy as np
from tilpheno.pipeline import product

def faults(rounds=20):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        columns = [np.ones(200_000) for _ in range(8)]   # one file's columns, 8 x 1.6 MB alive at once
        del columns
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0

before = faults()
product._process_product = lambda job: None   # what the process does before its first product is measured
product._collect_garbage = lambda: None
product.process_product(None)
print(json.dumps({"before": before, "after": faults()}))
"""
KEPT_HEAP_PROBE = """
import json, resource, numpy as np
from tilpheno.pipeline import product

def one_product(job):   # one product's temporaries: 40 columns of a 200,000-event file, freed at its end
    columns = [np.ones(200_000) for _ in range(40)]
    del columns

product._process_product = one_product
product.process_product(None)   # the first product: the heap grows to hold them
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
product.process_product(None)
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0}))
"""


def _probe(script: str = PROBE, **env) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", script], env={**base, **env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_nanny_environment_page_faults_drop():
    r = _probe(MALLOC_TRIM_THRESHOLD_="65536")
    assert r["changed"] is True
    # 30 x 16 MB through mmap: fresh pages each time; on the heap, only the first array's pages
    assert r["after"] < r["before"] / 10, r


def test_plain_process_left_alone():
    r = _probe()
    assert r["changed"] is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_a_process_puts_a_files_columns_on_the_heap_before_its_first_product():
    """glibc's dynamic thresholds follow the largest chunk freed so far; a worker never frees its
    blocks, so the columns of each file (several 1.6 MB arrays alive at once, then freed) were
    mapped or trimmed and faulted in again, file after file. Before its first product a process sets
    the thresholds glibc's rule ends at (pipeline.product.large_arrays_on_heap): 20 rounds of 8
    columns fault in the first round's pages only (3,100 faults; about 62,000 without)."""
    r = _probe(FIRST_PRODUCT_PROBE)
    assert r["after"] < r["before"] / 5, r


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc heap")
def test_the_next_product_takes_the_heap_the_last_one_freed():
    """A product's temporaries (here 40 columns of 1.6 MB, 64 MB) are freed at its end; the heap
    keeps their pages for the next product, whose arrays of the same sizes then cost no page faults
    (with ``malloc_trim(0)`` after each product, as before: 15,625, every page zeroed again)."""
    r = _probe(KEPT_HEAP_PROBE)
    assert r["faults"] < 1000, r


class _Callback:
    def __init__(self):
        self.stopped = False

    def stop(self):
        self.stopped = True


class _Worker:
    def __init__(self):
        self.periodic_callbacks = {name: _Callback() for name in ("profile", "profile-cycle", "heartbeat")}


def test_the_preload_stops_the_sampling_profiler_unless_configured_to_keep_it():
    import dask

    from tilpheno.daskworker import stop_profiler

    worker = _Worker()
    callbacks = dict(worker.periodic_callbacks)
    assert stop_profiler(worker) is True
    assert set(worker.periodic_callbacks) == {"heartbeat"}
    assert callbacks["profile"].stopped and callbacks["profile-cycle"].stopped and not callbacks["heartbeat"].stopped
    kept = _Worker()
    with dask.config.set({"tilpheno.worker-profile": True}):
        assert stop_profiler(kept) is False
    assert set(kept.periodic_callbacks) == {"profile", "profile-cycle", "heartbeat"}


WARM_PROBE = """
import json
from tilpheno.daskworker import dask_setup
dask_setup()
from tilpheno.gates.placement import _threadpools
from tilpheno.report.html import PRODUCT_TEMPLATES, environment
env, compiled = environment(), []
compile_now = env.compile
env.compile = lambda *a, **k: compiled.append(a) or compile_now(*a, **k)
for name in PRODUCT_TEMPLATES:
    env.get_template(name)
print(json.dumps({"compiled": len(compiled), "threads": sorted({p["num_threads"] for p in _threadpools().info()})}))
"""


def test_the_preload_does_the_first_products_one_time_work():
    """Issue 18, Dask: a worker's first product compiled the report's templates (24 ms of CPU) and
    inspected the thread pools (9 ms) in the timed run; the preload does it when the worker starts
    (``product.warm_up``), and still limits BLAS/OpenMP to one thread."""
    run = subprocess.run([sys.executable, "-c", WARM_PROBE], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == {"compiled": 0, "threads": [1]}
