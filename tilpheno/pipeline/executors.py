"""Executors: run product jobs and yield their outcomes as they complete.

``local`` with ``n_jobs == 1`` (in this process), ``local`` with ``n_jobs > 1`` (``n_jobs``
persistent worker processes forked from a preloaded fork server, a dead one replaced) and
``dask`` (a ``distributed`` cluster at a scheduler address, or a ``distributed.Client`` passed
in). A worker that dies fails only its own product; a Dask scheduler lost mid-run raises
``TilphenoError`` (the run stops, nothing is published).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterator, Sequence

from tilpheno.errors import RunStoppedError, TableError, TilphenoError
from tilpheno.pipeline.jobs import ProductJob, ProductOutcome

log = logging.getLogger(__name__)
EXECUTORS = ("local", "dask")


def run_product(job: ProductJob) -> ProductOutcome:
    """What a worker runs: :func:`tilpheno.pipeline.product.process_product`, imported here, in
    the worker (already there when its libraries were preloaded), so the dispatching process, which
    pickles this function by reference, never imports the gating and report libraries.

    The outcome's ``started_ns`` is the worker's wall clock (ns since the epoch) before the job read
    any file: the cache records the digests the job took as of that moment."""
    from tilpheno.pipeline.product import process_product

    started_ns = time.time_ns()
    outcome = process_product(job)
    outcome.started_ns = started_ns
    return outcome


def _crashed(job: ProductJob, reason: str) -> ProductOutcome:
    from tilpheno.pipeline.product import crashed_outcome

    return crashed_outcome(job, reason)


def largest_first(jobs: Sequence[ProductJob]) -> list[ProductJob]:
    """Jobs by the total size of their files, largest first (ties in the given order): the
    longest-processing-time-first rule, so the last products to start are the shortest and the
    workers finish close together, not one left alone with a big product. A product's time grows
    with its events, hence with its files' bytes; a file that cannot be stat'ed counts 0 (its
    product fails fast). Output order does not depend on it (tables are sorted by product id)."""
    import os

    def size(job: ProductJob) -> int:
        total = 0
        for f in job.rows["file"].tolist():
            try:
                total += os.stat(f).st_size
            except (OSError, TypeError, ValueError):
                pass
        return total

    sizes = [size(job) for job in jobs]
    return [jobs[i] for i in sorted(range(len(jobs)), key=lambda i: -sizes[i])]


def _single_threaded_worker() -> None:
    """Pool initializer: one BLAS/OpenMP thread per worker, so N workers use N cores, not N x cores
    (through the thread pools the fork server inspected: ``gates.placement.limit_to_one_thread``)."""
    from tilpheno.gates.placement import limit_to_one_thread

    limit_to_one_thread()


def _result_or_failure(future, job: ProductJob) -> ProductOutcome:
    """The future's outcome; if the worker itself died or the task could not run (killed, out of
    memory, lost Dask worker), a failed outcome naming the cause, so the batch goes on."""
    try:
        return future.result()
    except Exception as exc:
        return _crashed(job, f"worker failed: {type(exc).__name__}: {exc}")


def iter_outcomes(
    jobs: Sequence[ProductJob],
    *,
    executor: str = "local",
    n_jobs: int = 1,
    scheduler=None,
    on_dispatch: Callable[[], object] | None = None,
) -> Iterator[ProductOutcome]:
    """Yield each job's outcome as it completes (any order; callers sort by product id).

    ``scheduler``: for ``executor="dask"``, a scheduler address (``tcp://host:8786``) or a
    ``distributed.Client``; ignored for ``local``.

    With ``n_jobs > 1`` products run on ``n_jobs`` worker processes (:func:`_iter_pool`): a
    worker that dies fails only the product it was running (``worker died ...``); the others run on.
    Jobs are handed out largest first (:func:`largest_first`). ``on_dispatch()``: called once the
    jobs are handed out (Dask: the cluster holds them all; ``n_jobs > 1``: before the workers are
    started), so the caller's own work overlaps with the products'.
    """
    if executor not in EXECUTORS:
        raise TableError(f"executor: {executor!r} is not one of {', '.join(EXECUTORS)}")
    if executor == "dask":
        yield from _iter_dask(jobs, scheduler, on_dispatch)
    elif n_jobs <= 1 or len(jobs) <= 1:
        for job in jobs:
            try:
                outcome = run_product(job)
            except Exception as exc:  # process_product catches input errors; this is the last guard
                log.exception("product %s: worker failed", job.product_id)
                outcome = _crashed(job, f"worker failed: {type(exc).__name__}: {exc}")
            yield outcome
    else:
        yield from _iter_pool(jobs, n_jobs, on_dispatch)


def _iter_pool(jobs: Sequence[ProductJob], n_jobs: int, on_dispatch=None) -> Iterator[ProductOutcome]:
    """Up to ``n_jobs`` products at a time on as many persistent worker processes
    (:class:`tilpheno.pipeline.pool.WorkerPool`, forked from a fork server that imported the
    libraries once): a worker runs product after product, so start-up is paid once per worker.
    A worker that dies (out-of-memory killer, a crash in a native library) fails only the product
    it was running, ``worker died while processing this product (killed by SIGKILL ...)``; a new
    worker takes its place and the other products run on.
    """
    from tilpheno.pipeline.pool import WorkerPool

    ordered = largest_first(jobs)
    if on_dispatch is not None:
        on_dispatch()
    with WorkerPool(min(n_jobs, len(jobs)), run_product, _worker_died, _single_threaded_worker) as pool:
        yield from pool.imap_unordered(ordered)


def _worker_died(job: ProductJob, reason: str) -> ProductOutcome:
    """The failed outcome of a job whose worker never returned it (built in this process)."""
    log.error("product %s: %s", job.product_id, reason)
    return _crashed(job, reason)


def _iter_dask(jobs: Sequence[ProductJob], scheduler, on_dispatch=None) -> Iterator[ProductOutcome]:
    from tilpheno.pipeline.pool import collector_paused

    try:
        with collector_paused():   # 0.3 s of imports in the run's serial head, a quarter of it full collections
            from distributed import Client
    except ImportError:
        raise TableError("executor dask needs the 'distributed' package: pip install 'tilpheno[dask]'") from None
    if scheduler is None:
        raise TableError("executor dask needs a scheduler address (e.g. tcp://127.0.0.1:8786)")
    own = not isinstance(scheduler, Client)
    if own:
        _check_scheduler(str(scheduler))
    try:
        client = Client(scheduler) if own else scheduler
    except (OSError, TimeoutError, ValueError) as exc:
        raise TilphenoError(f"scheduler {scheduler}: cannot connect to the Dask scheduler ({exc})") from None
    try:
        import uuid

        run = uuid.uuid4().hex  # fresh keys: a cluster never serves a cached result of an earlier run
        ordered = largest_first(jobs)
        _wait_for_a_worker(client, scheduler, len(ordered))
        _check_workers_code(client)
        _check_workers_see(client, ordered)
        keys = [f"tilpheno-{run}-{i:06d}" for i in range(len(ordered))]
        futures = client.map(run_product, ordered, key=keys, pure=False)
        job_of = {fut.key: job for fut, job in zip(futures, ordered)}
        if on_dispatch is not None:
            on_dispatch()
        finished = 0
        for fut in _completed(client, futures, scheduler):
            if fut.cancelled():   # never by tilpheno: the scheduler stopped or the connection to it was lost
                raise _cluster_lost(scheduler, fut, len(ordered) - finished)
            yield _result_or_failure(fut, job_of[fut.key])
            finished += 1
            fut.release()
    finally:
        if own:
            _close(client)


def _check_scheduler(address: str) -> None:
    """Refuse (``TilphenoError``, one line) an address where no Dask scheduler answers: first a
    plain TCP connection for ``tcp://`` and ``tls://`` addresses (nothing listening, no route: the
    system's reason), then ``distributed``'s handshake within twice its connect timeout
    (``distributed.comm.timeouts.connect``, 30 s by default: the connect's bound, then as long again
    for the handshake).

    ``distributed.Client`` bounds only the TCP connect (not the handshake since distributed
    2023.4): a port that accepts and never answers (a forwarded port whose far end is gone) hung
    the run for ever, and one that answers as something else (the scheduler's dashboard, 8787,
    given instead of its port, 8786) raised ``MemoryError`` (the web server's reply read as the
    length of a message). The TCP connection is tried on its own so that the message says which
    happened even when a loaded machine lets the handshake's bound pass while ``distributed``
    still retries a refused connect. The handshake runs in a thread of its own, with its own
    event loop, so that it works under a caller's running loop (a notebook) too."""
    import asyncio
    import socket
    from concurrent.futures import ThreadPoolExecutor

    import dask
    from dask.utils import parse_timedelta
    from distributed.comm import connect
    from distributed.comm.addressing import parse_address, parse_host_port

    seconds = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="seconds")
    limit = 2 * seconds   # the connect's own timeout, then as long again for the handshake
    prefix = f"scheduler {address}: cannot connect to the Dask scheduler"
    hint = "is it the scheduler's own port (8786 by default), not its dashboard's (8787)?"
    try:
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            host, port = parse_host_port(location)
            socket.create_connection((host, port), timeout=seconds).close()
    except (OSError, ValueError, TypeError) as exc:   # nothing listens, no route, a malformed address
        raise TilphenoError(f"{prefix} ({exc or type(exc).__name__})") from None

    async def handshake() -> None:
        comm = await asyncio.wait_for(connect(address, timeout=seconds), limit)
        await comm.close()

    with ThreadPoolExecutor(1, thread_name_prefix="tilpheno-dask-check") as pool:
        try:
            pool.submit(asyncio.run, handshake()).result()
        except TimeoutError:
            raise TilphenoError(f"{prefix} (the address accepted the connection but did not answer as a Dask "
                                f"scheduler within {limit:g} s; {hint})") from None
        except (OSError, ValueError) as exc:   # the connection dropped, a malformed address
            raise TilphenoError(f"{prefix} ({exc})") from None
        except Exception as exc:   # e.g. MemoryError: another protocol's reply read as a message length
            log.debug("%s: handshake failed", address, exc_info=True)
            raise TilphenoError(f"{prefix} (the address answered, but not as a Dask scheduler: "
                                f"{type(exc).__name__}; {hint})") from None


NO_WORKERS_WAIT_S = 60.0
"""Seconds a Dask run waits while its scheduler has no worker (before the first product, or after
every worker left mid-run) before it stops with one line, rather than wait for ever."""


def _wait_for_a_worker(client, scheduler, unfinished: int) -> None:
    """Wait up to :data:`NO_WORKERS_WAIT_S` for the scheduler's first worker; ``TilphenoError`` then."""
    try:
        client.wait_for_workers(1, timeout=NO_WORKERS_WAIT_S)
    except TimeoutError:
        raise _no_workers(scheduler, unfinished) from None


def _completed(client, futures, scheduler, check_s: float = 2.0) -> Iterator:
    """``futures`` as they complete, each as soon as it does (``Future.add_done_callback`` puts it in a
    queue this waits on); while none completes, every ``check_s`` whether the cluster still has workers,
    so that one left without workers mid-run (every worker stopped or lost: its tasks wait for ever)
    stops the run after :data:`NO_WORKERS_WAIT_S` with ``TilphenoError``.

    (Polling ``distributed.as_completed`` every 0.2 s, as before, noticed each outcome up to 0.2 s late,
    0.1 s on average: the last one's on the run's serial tail, the cluster idle meanwhile.)"""
    import queue
    import time

    done: queue.SimpleQueue = queue.SimpleQueue()
    for fut in futures:
        fut.add_done_callback(done.put)
    left, idle_since, checked = len(futures), None, 0.0
    while left:
        try:
            fut = done.get(timeout=max(0.0, checked + check_s - time.monotonic()))
        except queue.Empty:
            checked = now = time.monotonic()
            if client.status == "running" and not client.nthreads():
                idle_since = now if idle_since is None else idle_since
                if now - idle_since > NO_WORKERS_WAIT_S:
                    raise _no_workers(scheduler, left) from None
            else:
                idle_since = None
            continue
        idle_since = None
        left -= 1
        yield fut


def _address(scheduler) -> str:
    """The scheduler's address, given as an address or as a ``distributed.Client``."""
    return str(getattr(getattr(scheduler, "scheduler", None), "address", scheduler))


def _no_workers(scheduler, unfinished: int) -> RunStoppedError:
    address = _address(scheduler)
    return RunStoppedError(f"scheduler {address}: no Dask worker for {NO_WORKERS_WAIT_S:g} s with {unfinished} "
                           f"product(s) unfinished; start workers (dask worker {address} --preload "
                           "tilpheno.daskworker) and run again")


def _check_workers_code(client) -> None:
    """Refuse (``TilphenoError``, one line naming the worker and the difference) when a connected
    worker runs other code than this machine: another tilpheno version or source files, Python or
    library version (:func:`tilpheno.cache.environment`). Its products would be computed by that
    code but recorded (``run.json``, each report's provenance) and cached under this machine's, so
    later runs would re-use them as this code's results."""
    from tilpheno.cache import environment, environment_difference

    here = environment()
    for address, there in sorted(client.run(environment).items()):
        difference = environment_difference(here, there)
        if difference:
            raise TilphenoError(f"Dask worker {address}: {difference}; every worker must run the same tilpheno, "
                                "Python and libraries as this machine (results are recorded and cached as this "
                                "machine's)")


def _check_workers_see(client, jobs: Sequence[ProductJob]) -> None:
    """Refuse (``TilphenoError``, one line) when a connected worker does not see an input file that
    this machine sees: its products would fail with ``no such file`` for files that exist (every
    worker must see the input files at the same paths). Checked with ``os.path.exists`` on each
    worker (no tilpheno code needed there) for one file per folder, so an unmounted share whose
    empty mount point exists is found too; a file missing here as well is left to its product."""
    import os

    first: dict[str, str] = {}
    for job in jobs:
        for f in map(str, job.rows["file"].tolist()):
            if os.path.dirname(f) not in first and os.path.exists(f):
                first[os.path.dirname(f)] = f
    for path in sorted(first.values()):
        for address, seen in sorted(client.run(os.path.exists, path).items()):
            if not seen:
                raise TilphenoError(f"Dask worker {address}: {path}: no such file on the worker, though this "
                                    "machine has it; every worker must see the input files at the same paths "
                                    "(a shared file system)")


def _close(client) -> None:
    """Close our own client. One that lost its scheduler is still trying to reconnect, and closing
    it cancels that, which ``distributed`` logs as an error with a traceback: silenced then (the
    run's own one-line error says what happened)."""
    if client.status == "running":
        client.close()
        return
    logger = logging.getLogger("distributed.client")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        client.close()
    finally:
        logger.setLevel(level)


def _cluster_lost(scheduler, future, unfinished: int) -> RunStoppedError:
    """The error that stops a Dask run whose tasks the cluster dropped (the scheduler stopped or the
    connection to it was lost): an infrastructure failure, not the products', so the run does not
    go on to publish them as failed; OUT keeps its outputs and the finished products' cache entries
    (what became of OUT is said by ``run_process``, which knows whether the run created it)."""
    try:
        future.result()
        reason = "cancelled"
    except Exception as exc:
        reason = str(getattr(exc, "reason", "") or "cancelled")
    address = _address(scheduler)
    return RunStoppedError(f"scheduler {address}: the cluster dropped the run's tasks ({reason}: the scheduler "
                           f"stopped or the connection to it was lost) with {unfinished} product(s) unfinished; "
                           "run again to resume")
