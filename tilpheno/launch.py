"""The ``tilpheno`` command's entry point (the console script and ``python -m tilpheno``).

What has to happen before the command line's own imports (Typer, Click, Rich, pydantic: 0.07 s of
CPU and more, before ``tilpheno.cli.main`` can run) happens here: ``process --jobs N`` starts its
workers' fork server (:func:`start_fork_server_early`), whose imports of the workers' libraries are
the longest serial part of a parallel run; then :func:`tilpheno.cli.main` runs as always.
"""
from __future__ import annotations

import sys
from typing import List


def parallel_local_process(argv: List[str]) -> bool:
    """Whether ``argv`` (the arguments after ``tilpheno``) asks for ``process`` with ``--jobs N``, N > 1,
    on the local executor, read as typed (``--verbose process DIR -o OUT --jobs 2``, ``--jobs=2``,
    ``--executor local``); False for anything else (``--help``, a value that is no number): Typer
    reads and checks the command line afterwards, as always."""
    command, it = None, iter(argv)
    for arg in it:
        if arg == "--log":
            next(it, None)   # the root option's value
        elif not arg.startswith("-"):
            command = arg
            break
    if command != "process" or "--help" in argv:
        return False
    given: dict[str, str] = {}
    for arg in it:
        name, eq, value = arg.partition("=")
        if name in ("--jobs", "--executor"):
            given[name] = value if eq else next(it, "")
    jobs = given.get("--jobs", "1")
    return jobs.isdigit() and int(jobs) > 1 and given.get("--executor", "local") == "local"


def start_fork_server_early(argv: List[str]) -> None:
    """Start the workers' fork server now if ``argv`` asks for ``process --jobs N`` on the local
    executor (:func:`parallel_local_process`); else nothing. A command line that Typer then refuses
    leaves the server to stop with this process."""
    if parallel_local_process(argv):
        from tilpheno.pipeline.pool import start_fork_server

        start_fork_server()


def main() -> None:
    """``tilpheno ...``: the fork server of ``process --jobs N`` started first, then the command line
    (:func:`tilpheno.cli.main`: SIGTERM and Ctrl-C handling, exit status)."""
    start_fork_server_early(sys.argv[1:])
    from tilpheno.cli import main as cli_main

    cli_main()
