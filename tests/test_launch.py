"""The ``tilpheno`` command's entry point (``tilpheno.launch``; the console script and ``python -m
tilpheno``): ``process --jobs N``'s fork server started before the command line's own imports."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# run as ``tilpheno`` (``entry``) would be, the fork server's start replaced by a probe: was Typer
# (the command line's first import) already imported when the server was started?
PROBE = """\
import runpy, sys
import tilpheno.pipeline.pool as pool
def probe():
    print("server started; typer imported:", "typer" in sys.modules, flush=True)
    raise SystemExit(0)
pool.start_fork_server = probe
sys.argv = ["tilpheno", "process", "IN", "-o", "OUT", "--jobs", "2"]
entry = {entry!r}
if entry == "python -m tilpheno":
    runpy.run_module("tilpheno", run_name="__main__", alter_sys=True)
else:
    module, _, function = entry.partition(":")
    getattr(__import__(module, fromlist=[function]), function)()
"""


def _console_script() -> str:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]["scripts"]["tilpheno"]


@pytest.mark.parametrize("entry", ["console script", "python -m tilpheno"])
def test_process_with_jobs_starts_the_fork_server_before_the_command_line_imports_typer(entry):
    """Issue 18, ``--jobs 2``'s serial head: the fork server's imports of the workers' libraries are
    its longest serial part, and the server was started only once ``tilpheno.cli`` had been imported
    (Typer, Click, Rich: 0.07-0.17 s, the server waiting on all of it); the ``tilpheno`` script and
    ``python -m tilpheno`` now start it first, with nothing of the command line imported."""
    target = _console_script() if entry == "console script" else entry
    run = subprocess.run([sys.executable, "-c", PROBE.format(entry=target)], capture_output=True, text=True,
                         timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "server started; typer imported: False", run.stdout + run.stderr


@pytest.mark.parametrize("argv, started", [
    (["process", "IN", "-o", "OUT", "--jobs", "2"], True),
    (["process", "IN", "-o", "OUT"], False),
    (["process", "IN", "-o", "OUT", "--jobs", "1"], False),
    (["process", "IN", "-o", "OUT", "--jobs", "2", "--executor", "dask", "--scheduler", "tcp://h:8786"], False),
    (["demo", "--jobs", "2"], False),
])
def test_the_entry_point_starts_a_server_only_for_a_parallel_local_process(monkeypatch, argv, started):
    """``--jobs 1``, Dask and other commands start no fork server before the command line; every
    command line then goes to ``tilpheno.cli.main`` as it is."""
    import tilpheno.cli as cli
    from tilpheno import launch
    from tilpheno.pipeline import pool

    events: list[str] = []
    monkeypatch.setattr(pool, "start_fork_server", lambda: events.append("fork server"))
    monkeypatch.setattr(pool, "import_libraries", lambda names: events.append("libraries"))   # no gc.freeze here
    monkeypatch.setattr(cli, "main", lambda: events.append(f"cli {sys.argv[1:]}"))
    monkeypatch.setattr(sys, "argv", ["tilpheno", *argv])
    launch.main()
    assert events == [*(["fork server"] if started else []), "libraries", f"cli {argv}"]


# run as ``python -m tilpheno`` on a folder that does not exist (the command stops with exit 2 before
# any product): what had this process imported, and frozen, once its command line ran?
FROZEN_PROBE = """\
import atexit, gc, runpy, sys
def said():
    print(gc.get_freeze_count() > 50_000, gc.isenabled(),
          [m for m in ("tilpheno.phenotype", "scipy.optimize", "matplotlib.ticker") if m in sys.modules], flush=True)
atexit.register(said)
sys.argv = ["tilpheno", "process", "NO-SUCH-FOLDER", "-o", "OUT", *sys.argv[1:]]
runpy.run_module("tilpheno", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("options, imported", [
    ([], "['tilpheno.phenotype', 'scipy.optimize', 'matplotlib.ticker']"),
    (["--jobs", "1", "--reports", "later"], "['tilpheno.phenotype', 'scipy.optimize']"),
    (["--reports=none"], "['tilpheno.phenotype', 'scipy.optimize']"),
])
def test_a_jobs_1_process_imports_its_products_libraries_with_the_collector_paused_and_frozen(tmp_path, options,
                                                                                               imported):
    """Issue 18, per core: ``process --jobs 1`` gates every product in its own process, which imported
    the command line, pandas, SciPy, the gating and the report as it met them, with the cyclic garbage
    collector on: the automatic collections during the imports, and every full collection of the run
    after them, walked the 10^5 objects the imports made (0.30 s of collections in a run of
    /tmp/scale_b4's 4 products, 0.06 s with them frozen, at load 13). The entry point now imports them
    first with the collector paused and freezes them, as the fork server does for ``--jobs N``; under
    ``--reports later``/``none`` without the report's modules, which such a run never imports."""
    run = subprocess.run([sys.executable, "-c", FROZEN_PROBE, *options], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stdout.strip() == f"True True {imported}", run.stdout + run.stderr


def test_python_m_tilpheno_jobs_2_with_a_failing_product_exits_1_and_names_it(small_cohort, tmp_path):
    """The whole parallel path through the entry point, as a user types it (``python -m tilpheno
    process ... --jobs 2``): a product whose stained file is not an FCS file fails in its worker,
    the others are done, exit status 1 and the failed product named; outputs as ``--jobs 1``'s."""
    folder = tmp_path / "in"
    shutil.copytree(small_cohort.out_dir, folder)
    manifest = folder / small_cohort.manifest.name
    (folder / "TIL002_surface_stain.fcs").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    runs = {}
    for jobs in ("2", "1"):
        out = tmp_path / f"out{jobs}"
        runs[jobs] = subprocess.run([sys.executable, "-m", "tilpheno", "process", str(folder), "-o", str(out),
                                     "--manifest", str(manifest), "--no-cache", "--jobs", jobs],
                                    capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    done = runs["2"]
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    text = " ".join((done.stdout + done.stderr).split())
    assert "2 of 3 products done, 1 failed" in text and "TIL002" in text, text
    assert runs["1"].returncode == 1, runs["1"].stdout + runs["1"].stderr

    def outputs(out: Path) -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
                if p.is_file() and p.name not in ("run.json", ".tilpheno.lock")
                and ".cache" not in p.relative_to(out).parts}   # the cache records each run's own times

    assert outputs(tmp_path / "out2") == outputs(tmp_path / "out1")


# run as ``tilpheno`` (the console script) would be: ``process --jobs 2`` with its real fork server;
# the command line replaced by a probe of NumPy's huge-page switch here and in a worker of that server
PAGES_PROBE = """\
import sys
import tilpheno.pipeline.pool as pool
real_import_libraries = pool.import_libraries
def probe():
    from tilpheno.pipeline.pool import WorkerPool
    job = "__import__('numpy')._core.multiarray._get_madvise_hugepage()"
    with WorkerPool(1, eval, lambda job, why: why) as workers:
        in_worker = list(workers.imap_unordered([job]))
    print(eval(job), in_worker, flush=True)
def import_libraries(names):
    real_import_libraries(names)
    import tilpheno.cli
    tilpheno.cli.main = probe
pool.import_libraries = import_libraries
sys.argv = ["tilpheno", "process", "IN", "-o", "OUT", "--jobs", "2"]
module, _, function = {entry!r}.partition(":")
getattr(__import__(module, fromlist=[function]), function)()
"""


@pytest.mark.parametrize("given, expected", [(None, "False [False]"), ("1", "True [True]"), ("0", "False [False]")])
def test_the_command_and_its_workers_keep_numpys_arrays_on_small_pages(given, expected):
    """Issue 18, the per-process fixed cost: NumPy asks for transparent huge pages on every array of
    4 MiB and more, and each process's first product paid their first touch (0.24-0.97 s of system CPU
    against 0.08-0.11 s on ordinary pages, stop 52), twice in parallel with two processes. The
    ``tilpheno`` command now sets ``NUMPY_MADVISE_HUGEPAGE=0`` before anything imports NumPy, so the
    command and the workers of its fork server (started after it) run without; a value the
    environment gives is kept."""
    env = {key: value for key, value in os.environ.items() if key != "NUMPY_MADVISE_HUGEPAGE"}
    if given is not None:
        env["NUMPY_MADVISE_HUGEPAGE"] = given
    run = subprocess.run([sys.executable, "-c", PAGES_PROBE.format(entry=_console_script())], capture_output=True,
                         text=True, timeout=120, cwd=REPO, env={**env, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == expected, run.stdout + run.stderr


@pytest.mark.parametrize("entry", ["tilpheno.launch", "tilpheno.cli"])
def test_either_entry_sets_small_pages_before_it_starts_the_fork_server(monkeypatch, entry):
    """``python -m tilpheno.cli`` (``tilpheno.cli.main``) starts the fork server itself too: the
    variable is set before, so its workers inherit it as the ``tilpheno`` script's do."""
    import tilpheno.cli as cli
    from tilpheno import launch
    from tilpheno.pipeline import pool

    seen: list[str | None] = []
    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "")   # recorded first, so what the entry sets is undone
    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE")
    monkeypatch.setattr(pool, "start_fork_server", lambda: seen.append(os.environ.get("NUMPY_MADVISE_HUGEPAGE")))
    monkeypatch.setattr(pool, "import_libraries", lambda names: None)
    monkeypatch.setattr(cli, "_run_app", lambda: 0)
    monkeypatch.setattr(sys, "argv", ["tilpheno", "process", "IN", "-o", "OUT", "--jobs", "2"])
    with pytest.raises(SystemExit):
        (launch.main if entry == "tilpheno.launch" else cli.main)()
    assert seen and set(seen) == {"0"}


# run as ``python -m tilpheno process``: which of these had the command imported when it ended?
ENDED_PROBE = """\
import atexit, runpy, sys
atexit.register(lambda: print([m for m in ("sqlalchemy", "alembic") if m in sys.modules], flush=True))
sys.argv = ["tilpheno", "process", *sys.argv[1:]]
runpy.run_module("tilpheno", run_name="__main__", alter_sys=True)
"""


def test_a_process_run_reads_the_review_database_beside_it_without_importing_sqlalchemy(small_cohort, tmp_path):
    """Issue 18, the run's fixed cost: every ``process`` ends by looking for QA decisions in the
    review database beside OUT (``OUT.review.sqlite``: ``tilpheno.review.db.decided_products``, read
    with ``sqlite3``), and importing ``tilpheno.review.db`` imported SQLAlchemy with it: 0.22-0.29 s
    of CPU in the run's serial tail for a library the read does not use. Now SQLAlchemy is imported
    where an engine is made; a database beside OUT (made by the review app, holding no decision) is
    still read, and the run says nothing of it."""
    from tilpheno.review.db import default_db_path, open_database

    out = tmp_path / "out"
    database = default_db_path(out)
    open_database(f"sqlite:///{database}").kw["bind"].dispose()   # the review app's schema, no signature
    run = subprocess.run([sys.executable, "-c", ENDED_PROBE, str(small_cohort.out_dir), "-o", str(out), "--manifest",
                          str(small_cohort.manifest), "--no-cache", "--reports", "none"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout + run.stderr
    assert "note:" not in run.stderr and database.is_file(), run.stderr


# run as ``python -m tilpheno process``: how many objects did the cyclic collector still track (not
# frozen) once every exit handler of the command had run, i.e. what its last passes would walk?
TRACKED_PROBE = """\
import atexit, gc, runpy, sys
atexit.register(lambda: print("tracked at exit:", len(gc.get_objects()), flush=True))   # first: runs last
sys.argv = ["tilpheno", "process", *sys.argv[1:]]
runpy.run_module("tilpheno", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_process_run_leaves_the_collector_nothing_to_walk_at_its_exit(small_cohort, tmp_path, jobs):
    """Issue 18, the run's serial tail: once its exit handlers had run, the interpreter's own last
    collections walked every object the run made outside its imports' freeze (a ``--jobs 2`` parent:
    0.14-0.20 s of CPU after its last output against 0.035 s frozen, on the critical path; stop 61). ``process`` now freezes
    what is left after every other exit handler (``launch.no_collection_at_exit``): the run still ends
    0 with its outputs, and nothing is left for those passes (before: some 4,000 objects in this small run)."""
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-c", TRACKED_PROBE, str(small_cohort.out_dir), "-o", str(out),
                          "--manifest", str(small_cohort.manifest), "--no-cache", "--reports", "none", "--jobs", jobs],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stdout + run.stderr
    assert (out / "run.json").is_file() and (out / "phenotypes.csv").is_file()
    tracked = int(run.stdout.strip().splitlines()[-1].removeprefix("tracked at exit:"))
    assert tracked < 100, run.stdout
