"""The ``tilpheno`` command's entry point (the console script and ``python -m tilpheno``).

What has to happen before the command line's own imports (Typer, Click, Rich, pydantic: 0.07 s of
CPU and more, before ``tilpheno.cli.main`` can run) happens here: ``process --jobs N`` starts its
workers' fork server (:func:`start_fork_server_early`), whose imports of the workers' libraries are
the longest serial part of a parallel run; then this process imports what its command will run
(:func:`command_libraries`) with the cyclic garbage collector paused and freezes what the imports
made, as the fork server does (:func:`tilpheno.pipeline.pool.import_libraries`), and
:func:`tilpheno.cli.main` runs as always. Before all of it NumPy is told to keep its arrays on
ordinary pages (:func:`small_pages`), for this process and every process it starts, and a
``process`` command has the interpreter's last collections skipped at its exit
(:func:`no_collection_at_exit`).
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional


def _process_options(argv: List[str]) -> Optional[Dict[str, str]]:
    """The options ``--jobs``, ``--executor`` and ``--reports`` as ``argv`` (the arguments after
    ``tilpheno``) gives them to ``process``, read as typed (``--verbose process DIR -o OUT --jobs 2``,
    ``--jobs=2``); None for another command or ``--help``: Typer reads and checks the command line
    afterwards, as always."""
    command, it = None, iter(argv)
    for arg in it:
        if arg == "--log":
            next(it, None)   # the root option's value
        elif not arg.startswith("-"):
            command = arg
            break
    if command != "process" or "--help" in argv:
        return None
    given: dict[str, str] = {}
    for arg in it:
        name, eq, value = arg.partition("=")
        if name in ("--jobs", "--executor", "--reports"):
            given[name] = value if eq else next(it, "")
    return given


def parallel_local_process(argv: List[str]) -> bool:
    """Whether ``argv`` (the arguments after ``tilpheno``) asks for ``process`` with ``--jobs N``, N > 1,
    on the local executor (``--executor local``, the default); False for anything else (``--help``, a
    value that is no number)."""
    given = _process_options(argv)
    if given is None:
        return False
    jobs = given.get("--jobs", "1")
    return jobs.isdigit() and int(jobs) > 1 and given.get("--executor", "local") == "local"


def command_libraries(argv: List[str]) -> List[str]:
    """The modules this process imports for ``argv``'s command, before it runs: the command line
    (``tilpheno.cli``); for ``process`` also the run's own modules (``tilpheno.pipeline.run``: the
    manifest, pandas), and when this process gates the products itself (``--jobs 1`` on the local
    executor) the products' libraries (:data:`tilpheno.pipeline.pool.PRELOAD`, without the
    report's modules under ``--reports later`` or ``none``), which the run would import anyway."""
    from tilpheno.pipeline.pool import PRELOAD, REPORT_MODULES

    given = _process_options(argv)
    if given is None:
        return ["tilpheno.cli"]
    libraries = ["tilpheno.cli", "tilpheno.pipeline.run"]
    jobs = given.get("--jobs", "1")
    if jobs.isdigit() and int(jobs) == 1 and given.get("--executor", "local") == "local":
        drawn = given.get("--reports", "now") == "now"
        libraries += [m for m in PRELOAD if drawn or m not in REPORT_MODULES]
    return libraries


def start_fork_server_early(argv: List[str]) -> None:
    """Start the workers' fork server now if ``argv`` asks for ``process --jobs N`` on the local
    executor (:func:`parallel_local_process`); else nothing. A command line that Typer then refuses
    leaves the server to stop with this process."""
    if parallel_local_process(argv):
        from tilpheno.pipeline.pool import start_fork_server

        start_fork_server()


HUGE_PAGES = "NUMPY_MADVISE_HUGEPAGE"
"""NumPy's switch (read once, when NumPy is imported) for asking the kernel for transparent huge
pages (2 MiB) on every array of 4 MiB and more: ``1`` asks, ``0`` does not."""


def small_pages() -> None:
    """Set :data:`HUGE_PAGES` to ``0`` unless the environment sets it: NumPy's arrays on ordinary
    4 KiB pages in this process, its fork server and its workers (which inherit the environment),
    all of which import NumPy after this.

    A process pays for its memory's first touch once, in its first product (later products reuse
    its heap: ``tilpheno.pipeline.product``), and with huge pages that first touch is the largest
    part of the per-process fixed cost that holds ``--jobs 2`` below twice ``--jobs 1`` (issue 18):
    on this project's 2-vCPU VM (transparent huge pages on ``madvise``, a balloon that hands freed
    pages back to the host) a ``--jobs 1`` process of 2 x 9 x 200,000 events spent 0.24-0.97 s of
    system CPU in its first product with huge pages, 0.08-0.11 s without, its later products' CPU
    the same (benchmarks/README.md, stop 52). ``NUMPY_MADVISE_HUGEPAGE=1`` in the environment keeps
    NumPy's own default."""
    os.environ.setdefault(HUGE_PAGES, "0")


def no_collection_at_exit() -> None:
    """Have every object still tracked by Python's cyclic garbage collector frozen (``gc.freeze``)
    once every other exit handler has run: registered with ``atexit`` before any library registers
    its own handler (``atexit`` runs the last registered first), so logging's flush, multiprocessing's
    and ``weakref.finalize``'s clean-ups run as before, and only the full collections the interpreter
    runs after them, while it tears down its modules, walk nothing.

    Those passes walked everything a ``process`` run made that its imports' freeze did not cover: in
    a ``--jobs 2`` parent (the tables' and index pages' libraries imported while the workers ran) the
    interpreter's end after its exit handlers took 0.14-0.20 s of CPU, 0.035-0.036 s when frozen
    (CPU seconds, 3 runs each, load 23-30), after its last output was written, on the run's critical
    path (the parent's end, and then the fork server's, which waits for it); a Dask run's client
    0.26 s, 0.04 s frozen. A ``--jobs 1`` process, whose garbage is collected after every product and
    what its first product left alive frozen (``tilpheno.pipeline.product``), spends 0.06-0.08 s there
    either way (``benchmarks/README.md``, stop 61). What they would free, the system takes back when
    the process ends. Every output of the run is written, closed and published before
    (``tilpheno.io.outdir``); only ``__del__`` methods of objects in reference cycles still alive at
    exit are no longer called, which Python never promises (``object.__del__``'s documentation)."""
    import atexit
    import gc

    atexit.register(gc.freeze)


def main() -> None:
    """``tilpheno ...``: NumPy on small pages (:func:`small_pages`), the collector's last passes
    skipped at the exit of ``process`` (:func:`no_collection_at_exit`), the fork server of ``process
    --jobs N`` started, then the command's libraries imported with the collector paused and frozen
    (:func:`command_libraries`), then the command line (:func:`tilpheno.cli.main`: SIGTERM and Ctrl-C
    handling, exit status)."""
    small_pages()
    if _process_options(sys.argv[1:]) is not None:
        no_collection_at_exit()
    start_fork_server_early(sys.argv[1:])
    from tilpheno.pipeline.pool import import_libraries

    import_libraries(command_libraries(sys.argv[1:]))
    from tilpheno.cli import main as cli_main

    cli_main()
