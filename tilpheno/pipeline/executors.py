"""Executors: run product jobs and yield their outcomes as they complete.

``local`` with ``n_jobs == 1`` (in this process), ``local`` with ``n_jobs > 1`` (one fresh
process per product, forked from a preloaded fork server, at most ``n_jobs`` at a time) and
``dask`` (a ``distributed`` cluster at a scheduler address, or a ``distributed.Client`` passed
in). A worker that dies fails only its own product.
"""
from __future__ import annotations

import logging
from typing import Iterator, Sequence

from tilpheno.errors import TableError, TilphenoError
from tilpheno.pipeline.jobs import ProductJob, ProductOutcome
from tilpheno.pipeline.product import crashed_outcome, process_product

log = logging.getLogger(__name__)
EXECUTORS = ("local", "dask")


def _single_threaded_worker() -> None:
    """Pool initializer: one BLAS/OpenMP thread per worker, so N workers use N cores, not N x cores."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _pool_context():
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    # imported once in the fork server, inherited by every worker (saves ~3 s of imports per worker)
    ctx.set_forkserver_preload([
        "tilpheno.pipeline", "tilpheno.phenotype", "tilpheno.report.product", "tilpheno.report.plots",
        "matplotlib.figure", "matplotlib.backends.backend_agg", "sklearn.mixture", "jinja2",
    ])
    return ctx


def _result_or_failure(future, job: ProductJob) -> ProductOutcome:
    """The future's outcome; if the worker itself died or the task could not run (killed, out of
    memory, lost Dask worker), a failed outcome naming the cause, so the batch goes on."""
    try:
        return future.result()
    except Exception as exc:
        return crashed_outcome(job, f"worker failed: {type(exc).__name__}: {exc}")


def iter_outcomes(
    jobs: Sequence[ProductJob],
    *,
    executor: str = "local",
    n_jobs: int = 1,
    scheduler=None,
) -> Iterator[ProductOutcome]:
    """Yield each job's outcome as it completes (any order; callers sort by product id).

    ``scheduler``: for ``executor="dask"``, a scheduler address (``tcp://host:8786``) or a
    ``distributed.Client``; ignored for ``local``.

    With ``n_jobs > 1`` every product runs in a fresh process of its own (:func:`_iter_pool`):
    a process that dies fails only its own product (``worker died ...``); the others run on.
    """
    if executor not in EXECUTORS:
        raise TableError(f"executor: {executor!r} is not one of {', '.join(EXECUTORS)}")
    if executor == "dask":
        yield from _iter_dask(jobs, scheduler)
    elif n_jobs <= 1 or len(jobs) <= 1:
        for job in jobs:
            try:
                outcome = process_product(job)
            except Exception as exc:  # process_product catches input errors; this is the last guard
                log.exception("product %s: worker failed", job.product_id)
                outcome = crashed_outcome(job, f"worker failed: {type(exc).__name__}: {exc}")
            yield outcome
    else:
        yield from _iter_pool(jobs, n_jobs)


def _iter_pool(jobs: Sequence[ProductJob], n_jobs: int) -> Iterator[ProductOutcome]:
    """Up to ``n_jobs`` products at a time, each in a fresh process of its own (forked from a
    preloaded fork server, so starting one costs milliseconds, not the imports).

    One process per product, not a shared pool: a process that dies (out-of-memory killer, a
    crash in a native library) takes only its own product with it, reported as ``worker died
    while processing this product (killed by SIGKILL ...)``; the other products run on. (A
    ``concurrent.futures`` pool breaks as a whole when one worker dies, and on Python 3.11 its
    shutdown can then hang.)
    """
    from multiprocessing.connection import wait

    ctx = _pool_context()
    pending = list(jobs)
    running: dict = {}   # receiving connection -> (process, job)
    while pending or running:
        while pending and len(running) < n_jobs:
            job = pending.pop(0)
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_product_process, args=(job, send), daemon=True)
            proc.start()
            send.close()   # the child holds the only writing end: its death is an EOF here
            running[receive] = (proc, job)
        for receive in wait(list(running)):
            proc, job = running.pop(receive)
            yield _collect(receive, proc, job)


def _product_process(job: ProductJob, conn) -> None:
    """Body of a product's process: one BLAS thread, run the job, send the outcome back."""
    _single_threaded_worker()
    try:
        conn.send(process_product(job))
    finally:
        conn.close()


def _collect(receive, proc, job: ProductJob) -> ProductOutcome:
    """The outcome a product's process sent, or a failed outcome saying how the process died."""
    outcome = None
    try:
        outcome = receive.recv()
    except EOFError:
        pass   # the process died before it sent anything
    except Exception as exc:   # an outcome that could not be unpickled
        log.error("product %s: outcome unreadable: %s", job.product_id, exc)
    finally:
        receive.close()
        proc.join()
    if outcome is None:
        reason = f"worker died while processing this product ({_describe_exit(proc.exitcode)})"
        log.error("product %s: %s", job.product_id, reason)
        return crashed_outcome(job, reason)
    return outcome


def _describe_exit(exitcode: int | None) -> str:
    import signal

    if exitcode is None:
        return "did not exit"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (sent by the out-of-memory killer, or by hand)" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with status {exitcode}"


def _iter_dask(jobs: Sequence[ProductJob], scheduler) -> Iterator[ProductOutcome]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise TableError("executor dask needs the 'distributed' package: pip install 'tilpheno[dask]'") from None
    if scheduler is None:
        raise TableError("executor dask needs a scheduler address (e.g. tcp://127.0.0.1:8786)")
    own = not isinstance(scheduler, Client)
    try:
        client = Client(scheduler) if own else scheduler
    except (OSError, TimeoutError, ValueError) as exc:
        raise TilphenoError(f"scheduler {scheduler}: cannot connect to the Dask scheduler ({exc})") from None
    try:
        import uuid

        run = uuid.uuid4().hex  # fresh keys: a cluster never serves a cached result of an earlier run
        keys = [f"tilpheno-{run}-{i:06d}" for i in range(len(jobs))]
        futures = client.map(process_product, list(jobs), key=keys, pure=False)
        job_of = {fut.key: job for fut, job in zip(futures, jobs)}
        for fut in as_completed(futures):
            yield _result_or_failure(fut, job_of[fut.key])
            fut.release()
    finally:
        if own:
            client.close()
