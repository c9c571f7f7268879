"""Dask worker preload: ``dask worker tcp://HOST:8786 --nthreads 1 --preload tilpheno.daskworker``.

Imports the pipeline's libraries (``tilpheno.pipeline.pool.PRELOAD``: numpy, pandas, scipy,
matplotlib, Jinja2 and tilpheno's gating and report modules) and does the first product's one-time
work (the report's templates compiled, the thread pools inspected:
``tilpheno.pipeline.product.warm_up``) when the worker starts, not while it runs its first product,
limits BLAS/OpenMP to one thread per process (gating is single-threaded numpy; one worker process
per core), undoes the fixed glibc heap thresholds that ``distributed``'s
nanny sets (:func:`heap_thresholds`) and stops the worker's sampling profiler (:func:`stop_profiler`).
Nothing else changes: workers still read the FCS files themselves, from the shared storage, and
get one product at a time.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

FIXED_BY_ENVIRONMENT = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def heap_thresholds() -> bool:
    """Large allocations back on the heap in a process started with fixed glibc heap thresholds.

    ``distributed``'s nanny starts each worker with ``MALLOC_TRIM_THRESHOLD_=65536``
    (``distributed.nanny.pre-spawn-environ``). Any such variable turns off glibc's dynamic mmap
    threshold, so every allocation above 128 KiB (each numpy temporary of a 200,000-event file)
    gets fresh pages from ``mmap`` and gives them back at ``free``: measured on a 200,000-event
    product, 66x the page faults of a plain process, 12 x its system CPU time, 26 % more CPU in
    all. This sets the thresholds that glibc's dynamic rule reaches for large arrays
    (``tilpheno.pipeline.product.large_arrays_on_heap``, which every process also does before its
    first product) at once, before the libraries are imported; a product's freed heap is kept for
    the next one (``tilpheno.pipeline.product``), and a worker's memory stays flat at its largest
    product's.
    Returns True when it changed them (only when one of those variables is set, only with glibc).
    """
    if not any(name in os.environ for name in FIXED_BY_ENVIRONMENT):
        return False
    from tilpheno.pipeline.product import large_arrays_on_heap

    return large_arrays_on_heap()


PROFILER_CALLBACKS = ("profile", "profile-cycle")
"""The periodic callbacks of ``distributed``'s sampling profiler on a worker."""


def stop_profiler(worker) -> bool:
    """Stop ``distributed``'s sampling profiler on ``worker`` (``distributed.worker.profile``: the
    stack of the running task sampled every 10 ms, for the dashboard's profile page). A tilpheno task
    is a whole product, so its profile says little, and the sampling costs time: with two busy
    workers on two cores the 4-product benchmark folder took 6.44-6.61 s with it stopped against
    6.81-6.99 s with it running (least of 3, two alternations; benchmarks/README). Kept when the
    Dask configuration sets ``tilpheno.worker-profile: true`` (environment:
    ``DASK_TILPHENO__WORKER_PROFILE=True``). Returns True when it stopped it."""
    import dask

    if dask.config.get("tilpheno.worker-profile", False):
        return False
    stopped = False
    for name in PROFILER_CALLBACKS:
        callback = worker.periodic_callbacks.pop(name, None)
        if callback is not None:
            callback.stop()
            stopped = True
    log.debug("sampling profiler stopped on %s: %s", getattr(worker, "address", worker), stopped)
    return stopped


def dask_setup(worker=None) -> None:
    """``distributed``'s preload hook (also callable as ``client.run(dask_setup)``, which passes no
    worker: then the profiler is left as it is)."""
    from tilpheno.gates.placement import limit_to_one_thread
    from tilpheno.pipeline.pool import import_libraries

    heap_thresholds()
    import_libraries(warm_up=True)
    limit_to_one_thread()
    if worker is not None:
        stop_profiler(worker)
