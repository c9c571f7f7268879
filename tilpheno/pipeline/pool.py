"""Persistent worker processes with crash isolation, for ``--jobs N`` (``executors``).

Each worker is a process of its own (started from a fork server that has imported the pipeline's
libraries once) that runs one product at a time, product after product, so the start-up (imports,
font and template caches, thread-pool set-up) is paid once per worker, not once per product. A
worker that dies (out-of-memory killer, a crash in a native library, ``os._exit``) fails only the
product it was running (``worker died while processing this product (killed by SIGKILL ...)``);
a fresh worker takes its place and the other products run on. (A ``concurrent.futures`` pool breaks
as a whole when one worker dies, and on Python 3.11 its shutdown can then hang.)
"""
from __future__ import annotations

import logging
import os
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

PRELOAD = (
    "tilpheno.pipeline.pool", "tilpheno.pipeline.executors", "threadpoolctl",
    "tilpheno.pipeline.product", "tilpheno.phenotype", "tilpheno.spillover", "scipy.optimize",
    "tilpheno.report.product", "tilpheno.report.plots", "tilpheno.report.qc_plots", "tilpheno.report.svg",
    "tilpheno.report.html", "tilpheno.report.codebook", "tilpheno.acquisition", "tilpheno.io.fcs",
    "matplotlib.ticker", "matplotlib.font_manager", "jinja2",
)
"""Modules the fork server imports once; every worker starts with them: all that a worker imports
while it runs products of the bundled study (its loop and initializer, the gating with the fitted
FMO carry's ``scipy.optimize``, the report), so that no worker imports them again (``scipy.optimize``
alone is 0.17 s of CPU)."""


REPORT_MODULES = ("tilpheno.report.product", "tilpheno.report.plots", "tilpheno.report.qc_plots",
                  "tilpheno.report.svg", "matplotlib.ticker", "matplotlib.font_manager")
"""The modules of :data:`PRELOAD` that only a report imports (a ``--jobs 1`` run under ``--reports
later`` or ``none`` imports none of them: ``tilpheno.launch.command_libraries``)."""


def import_libraries(names: Sequence[str] = PRELOAD, *, warm_up: bool = False) -> None:
    """Import ``names`` (default :data:`PRELOAD`) with Python's cyclic garbage collector paused, then
    freeze what they made (``gc.freeze``) and let the collector run again: the fork server's preload
    (``tilpheno.pipeline.preload``), a Dask worker's (``tilpheno.daskworker``) and the command's own
    (``tilpheno.launch``: the command line, and a ``--jobs 1`` run's products' libraries).

    The imports make some 10^5 long-lived objects, and the automatic full collections in between
    walked all of them (two such collections, 0.14-0.20 s of the preload's 1.0-1.2 s of CPU on a
    loaded machine); frozen, no later collection in a worker walks them again. The pause and freeze
    are CPython's own recipe for a process that forks workers (``gc.freeze``'s documentation).

    ``warm_up``: then, before the freeze, do the one-time work of a process's first product
    (``tilpheno.pipeline.product.warm_up``; the fork server and a Dask worker, whose products
    would each do it again). A warm-up that fails is logged and left to the products: each meets
    the same failure where it renders, as a failed product naming it, not a fork server or
    worker that cannot start."""
    import gc
    import importlib

    with collector_paused():
        for name in names:
            importlib.import_module(name)
        if warm_up:
            try:
                importlib.import_module("tilpheno.pipeline.product").warm_up()
            except Exception:
                logging.getLogger(__name__).warning("warm-up before the first product failed; each product "
                                                    "does its own", exc_info=True)
        gc.freeze()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off in the block (imports: the many objects they make
    would set off collections that walk everything made so far), on again after it if it was on."""
    import gc

    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def pool_context():
    """A ``forkserver`` multiprocessing context whose server imports :data:`PRELOAD` first
    (``tilpheno.pipeline.preload``: :func:`import_libraries`); workers are forked from that clean
    single-threaded server, never from the caller, which may hold threads."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["tilpheno.pipeline.preload"])
    return ctx


def start_fork_server() -> None:
    """Start the fork server now (it imports :data:`PRELOAD` in the background while the caller
    reads the manifest and the cache), not when the first worker is needed."""
    from multiprocessing import forkserver

    pool_context()
    forkserver.ensure_running()


def describe_exit(exitcode: int | None) -> str:
    """``killed by SIGKILL (sent by the out-of-memory killer, or by hand)``, ``exited with status 3``."""
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


def worker_main(conn, run: Callable[[Any], Any], initializer: Callable[[], None] | None) -> None:
    """Body of a worker process: receive a job, send back ``run(job)``, until ``None`` or EOF.

    Ctrl-C reaches the whole process group: the parent reports the interrupted run, so a worker
    stops quietly (exit status 130), without a traceback of where it was. A parent that is gone
    (killed) has nobody to report to: the worker stops at once (:func:`_stop_when_parent_is_gone`),
    not at the end of its product."""
    _stop_when_parent_is_gone(conn)
    if initializer is not None:
        initializer()
    try:
        while True:
            try:
                job = conn.recv()
            except EOFError:
                return
            if job is None:
                return
            result = run(job)
            try:
                conn.send(result)
            except (BrokenPipeError, ConnectionResetError):
                return
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    finally:
        conn.close()


def _stop_when_parent_is_gone(conn) -> None:
    """End this worker process as soon as the other end of ``conn`` (the parent's) is closed: a
    parent killed with SIGKILL left its workers running their products to the end (10-15 s of every
    core for results nobody reads). A daemon thread waits, without the GIL and without reading the
    jobs, for the connection's hang-up (``poll`` reports it whatever events are asked for); a parent
    that stops its workers first sends ``None`` and closes its end only once they have exited."""
    import select
    import threading

    def watch() -> None:
        poller = select.poll()
        poller.register(conn.fileno(), 0)
        while True:
            for _, event in poller.poll():
                if event & (select.POLLHUP | select.POLLERR):
                    os._exit(1)
                if event & select.POLLNVAL:   # this worker closed the connection: it is ending anyway
                    return

    threading.Thread(target=watch, name="tilpheno-parent-watch", daemon=True).start()


@dataclass
class _Worker:
    process: Any
    conn: Any
    job: Any = None
    stopped: bool = False   # asked to stop: no job was left for it (:meth:`WorkerPool._stop`)


class WorkerPool:
    """``size`` persistent worker processes running ``run(job)`` (a picklable module-level function).

    :meth:`imap_unordered` yields ``run(job)`` for every job as results arrive; a job whose worker
    died yields ``on_death(job, reason)`` instead, and a new worker replaces the dead one. Use as a
    context manager: on exit every worker is asked to stop, and terminated if it does not.
    """

    def __init__(self, size: int, run: Callable[[Any], Any], on_death: Callable[[Any, str], Any],
                 initializer: Callable[[], None] | None = None):
        self.size, self.run, self.on_death, self.initializer = max(1, int(size)), run, on_death, initializer
        self.ctx = pool_context()
        self.workers: list[_Worker] = []

    def _start(self) -> _Worker:
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=worker_main, args=(child, self.run, self.initializer), daemon=True,
                                name=f"tilpheno-worker-{len(self.workers)}")
        proc.start()
        child.close()   # the worker holds the only other end: its death is an EOF here
        worker = _Worker(proc, parent)
        self.workers.append(worker)
        return worker

    def _retire(self, worker: _Worker) -> str:
        """Remove a dead (or broken) worker; returns how it ended."""
        self.workers.remove(worker)
        worker.conn.close()
        worker.process.join(timeout=10)
        if worker.process.exitcode is None:
            worker.process.kill()
            worker.process.join()
        return describe_exit(worker.process.exitcode)

    def _hand_out(self, worker: _Worker, pending: deque) -> None:
        """Send the idle ``worker`` the next of the ``pending`` jobs; with none left, ask it to stop
        (:meth:`_stop`). A worker that died while idle is retired and the job put back first in line
        (it was never run)."""
        if not pending:
            self._stop(worker)
            return
        job = pending.popleft()
        worker.job = job
        try:
            worker.conn.send(job)
        except (OSError, EOFError):
            worker.job = None
            pending.appendleft(job)
            self._retire(worker)

    @staticmethod
    def _stop(worker: _Worker) -> None:
        """Ask the idle ``worker`` to stop (once): no job is left for it (jobs are only put back while
        some are pending, so none will be). Its end, the release of its memory (a worker of the
        benchmark folder holds 300-600 MB), overlaps with the products the other workers still run
        and with the caller's handling of the last results, instead of waiting for :meth:`close`,
        which then only joins it."""
        if worker.stopped:
            return
        worker.stopped = True
        try:
            worker.conn.send(None)
        except (OSError, EOFError):   # it died meanwhile: close() finds it ended
            pass

    def imap_unordered(self, jobs: Sequence[Any]) -> Iterator[Any]:
        """``run(job)`` for every job, as results arrive. A worker that sent a result is handed its next
        job before the result is yielded: the caller's handling of a result (a product's outcome
        stored, its report published) no longer keeps that worker idle; a worker for which no job is
        left is asked to stop then (:meth:`_stop`), and a later call starts new workers in its place."""
        from multiprocessing.connection import wait

        for worker in [w for w in self.workers if w.stopped]:   # asked to stop by an earlier call
            self._retire(worker)
        pending = deque(jobs)
        while pending or any(w.job is not None for w in self.workers):
            while pending and len(self.workers) < self.size:
                self._start()
            for worker in [w for w in self.workers if w.job is None and not w.stopped]:
                self._hand_out(worker, pending)
            busy = {w.conn: w for w in self.workers if w.job is not None}
            if not busy:
                continue
            for conn in wait(list(busy)):
                worker = busy[conn]
                job, worker.job = worker.job, None
                try:
                    result = worker.conn.recv()
                except EOFError:   # the worker died before it sent anything
                    yield self.on_death(job, f"worker died while processing this product ({self._retire(worker)})")
                    continue
                except Exception as exc:   # a result that could not be unpickled: the worker goes on
                    yield self.on_death(job, f"worker outcome unreadable: {type(exc).__name__}: {exc}")
                    continue
                self._hand_out(worker, pending)
                yield result

    def close(self, *, wait: bool = True) -> None:
        """Stop every worker: asked to stop and given 5 s to finish (``wait``), else terminated at
        once (the run is abandoned: no product still running is wanted)."""
        for worker in list(self.workers):
            self._stop(worker)
        for worker in list(self.workers):
            if wait:
                worker.process.join(timeout=5)
            if worker.process.exitcode is None:
                worker.process.terminate()
                worker.process.join(timeout=5)
            worker.conn.close()
        self.workers.clear()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        """On an exception (Ctrl-C, SIGTERM, a failed write, the consumer gone) the workers are
        terminated at once, not left to finish their products first."""
        self.close(wait=kind is None)
