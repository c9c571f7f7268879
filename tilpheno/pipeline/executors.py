"""Executors: where product jobs run, and outcomes that survive dead workers.

``local`` with ``n_jobs == 1`` (in-process), ``local`` with ``n_jobs > 1`` (a forkserver process
pool, one BLAS thread per worker; a pool broken by a dying worker fails only the product it held,
the others run again, each alone) and ``dask`` (a ``distributed`` cluster at a scheduler address,
or a ``distributed.Client``). Outcomes come back in completion order; callers sort them.
"""
from __future__ import annotations

import logging
from typing import Iterator, Sequence

from tilpheno.errors import TableError, TilphenoError
from tilpheno.pipeline.jobs import ProductJob, ProductOutcome, crashed_outcome, process_product

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

    A process-pool worker that dies (killed by the out-of-memory killer, a crash in a native
    library) breaks the whole pool: every job it had not finished is then run again, each alone in
    a fresh process (:func:`run_isolated`), so only the product that kills its worker again fails
    (``worker died ...``); the others are retried and complete.
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
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    unfinished: list[ProductJob] = []
    with ProcessPoolExecutor(max_workers=min(n_jobs, len(jobs)), mp_context=_pool_context(),
                             initializer=_single_threaded_worker) as pool:
        futures = {pool.submit(process_product, job): job for job in jobs}
        for fut in as_completed(futures):
            try:
                outcome = fut.result()
            except BrokenProcessPool:
                unfinished.append(futures[fut])
                continue
            except Exception as exc:
                log.error("product %s: worker failed: %s", futures[fut].product_id, exc)
                outcome = crashed_outcome(futures[fut], f"worker failed: {type(exc).__name__}: {exc}")
            yield outcome
    if unfinished:
        log.warning("a worker process died; %d product(s) it left unfinished are run again, each alone: %s",
                    len(unfinished), ", ".join(sorted(j.product_id for j in unfinished)))
    for job in sorted(unfinished, key=lambda j: j.product_id):
        yield run_isolated(job)


def _isolated_main(job: ProductJob, conn) -> None:
    """Child side of :func:`run_isolated`: one BLAS thread, run the job, send the outcome back."""
    _single_threaded_worker()
    try:
        conn.send(process_product(job))
    finally:
        conn.close()


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


def run_isolated(job: ProductJob) -> ProductOutcome:
    """Run one job alone in a fresh process; if that process dies, a failed outcome that says so."""
    ctx = _pool_context()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_isolated_main, args=(job, send), daemon=True)
    proc.start()
    send.close()
    outcome = None
    try:
        outcome = receive.recv()
    except EOFError:
        pass   # the process died before it sent anything
    finally:
        receive.close()
        proc.join()
    if outcome is None or proc.exitcode not in (0, None):
        reason = (f"worker died while processing this product ({_describe_exit(proc.exitcode)}), "
                  "also when run again alone")
        log.error("product %s: %s", job.product_id, reason)
        return crashed_outcome(job, reason)
    return outcome


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
