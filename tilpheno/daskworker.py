"""Dask worker preload: ``dask worker tcp://HOST:8786 --nthreads 1 --preload tilpheno.daskworker``.

Imports the pipeline's libraries (``tilpheno.pipeline.pool.PRELOAD``: numpy, pandas, scikit-learn,
matplotlib, Jinja2 and tilpheno's gating and report modules) when the worker starts, not while it
runs its first product, and limits BLAS/OpenMP to one thread per process (gating is single-threaded
numpy; one worker process per core). Nothing else changes: workers still read the FCS files
themselves, from the shared storage, and get one product at a time.
"""
from __future__ import annotations


def dask_setup(worker=None) -> None:
    """``distributed``'s preload hook (also callable as ``client.run(dask_setup)``)."""
    import importlib

    from threadpoolctl import threadpool_limits

    from tilpheno.pipeline.pool import PRELOAD

    for name in PRELOAD:
        importlib.import_module(name)
    threadpool_limits(1)
