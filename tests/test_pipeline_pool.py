"""The ``--jobs N`` worker pool: persistent worker processes (start-up paid once per worker, not
per product) with crash isolation (a dead worker fails only its own job and is replaced)."""
from __future__ import annotations

import os
from pathlib import Path

from tilpheno.pipeline.executors import _single_threaded_worker
from tilpheno.pipeline.pool import WorkerPool, describe_exit


def _pid_of(job: str):
    """The job and the id of the process that ran it; job ``die`` ends its process (status 3),
    job ``interrupt`` is hit by Ctrl-C, job ``long`` takes a minute, job ``kill <pid>`` kills
    process ``pid`` (the pool's owner) with SIGKILL and returns a second later."""
    import time

    if job == "long":
        time.sleep(60)
    if job.startswith("kill "):
        import signal

        os.kill(int(job.split()[1]), signal.SIGKILL)
        time.sleep(1)
    if job == "die":
        os._exit(3)
    if job == "interrupt":
        raise KeyboardInterrupt
    return job, os.getpid()


def _failed(job: str, reason: str):
    return job, reason


def test_workers_run_many_jobs_and_a_dead_one_is_replaced():
    jobs = ["a", "b", "c", "die", "d", "e", "f", "g"]
    with WorkerPool(2, _pid_of, _failed) as pool:
        results = dict(pool.imap_unordered(jobs))
    assert set(results) == set(jobs)
    assert results["die"] == "worker died while processing this product (exited with status 3)"
    pids = {pid for job, pid in results.items() if job != "die"}
    assert os.getpid() not in pids
    # 7 jobs ran on at most 3 processes (two workers and, when jobs were left, the dead one's
    # replacement): workers are reused
    assert len(pids) <= 3


def _mark_started(job: str):
    """Create the file ``job`` names (the job has started in its worker); return the job."""
    from pathlib import Path

    Path(job).touch()
    return job


def test_a_worker_is_handed_its_next_job_before_the_caller_handles_its_result(tmp_path):
    """Issue 18: a worker that sent its product's outcome waited for its next job until the caller had
    handled the outcome (stored it, published its report) and asked for the next one, idle for that
    time at every product after the first. Here the caller holds the first result and does not ask
    for the next: the worker must have started the second job meanwhile (waited for up to 60 s)."""
    import time

    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    with WorkerPool(1, _mark_started, _failed) as pool:
        results = pool.imap_unordered([first, second])
        got = next(results)
        deadline = time.monotonic() + 60
        while not os.path.exists(second) and time.monotonic() < deadline:
            time.sleep(0.05)
        started_meanwhile = os.path.exists(second)
        rest = list(results)
    assert (got, rest) == (first, [second])
    assert started_meanwhile


def _wait_for_file(job: str):
    """Return ``job`` once the file it names exists (at most 120 s): a product that runs until the
    test lets it end."""
    import time

    deadline = time.monotonic() + 120
    while not os.path.exists(job) and time.monotonic() < deadline:
        time.sleep(0.05)
    return job


def test_a_worker_with_no_job_left_ends_while_another_still_runs(tmp_path):
    """Issue 18, the end of a ``--jobs 2`` run: a worker whose last product was done waited, idle,
    until the last product of the other worker was done and the pool closed, and only then ended
    (the release of its memory, 300-600 MB on the benchmark folder, then on the run's serial tail).
    Here one worker runs a job that ends only when the test creates its file, the other a job that
    ends at once: with no job left, that worker must end while the first job still runs (waited for
    up to 60 s; on a pool without this it never does, and the test fails at that bound)."""
    held, quick = str(tmp_path / "held"), str(tmp_path / "quick")
    Path(quick).touch()
    with WorkerPool(2, _wait_for_file, _failed) as pool:
        results = pool.imap_unordered([held, quick])
        got = next(results)
        idle = [w.process for w in pool.workers if w.job is None]
        for process in idle:
            process.join(timeout=60)
        ended_meanwhile = [process.exitcode for process in idle]
        still_running = [w.process.exitcode for w in pool.workers if w.job is not None]
        Path(held).touch()
        rest = list(results)
    assert (got, rest) == (quick, [held])
    assert ended_meanwhile == [0]
    assert still_running == [None]


def test_a_pool_runs_a_second_list_of_jobs_after_its_workers_were_asked_to_stop():
    """A worker for which no job was left is asked to stop (above); a second ``imap_unordered`` on
    the same pool must start new workers in their place, not wait for ever on stopped ones (the
    call runs in a thread, given 60 s)."""
    import threading

    got: list = []
    with WorkerPool(2, _pid_of, _failed) as pool:
        first = dict(pool.imap_unordered(["a", "b"]))
        second = threading.Thread(target=lambda: got.extend(pool.imap_unordered(["c", "d", "e"])), daemon=True)
        second.start()
        second.join(timeout=60)
        finished = not second.is_alive()
    assert set(first) == {"a", "b"}
    assert finished and {job for job, _ in got} == {"c", "d", "e"}


def _gc_state(job: str):
    """The job and its worker's cyclic garbage collector: (objects frozen, collector enabled)."""
    import gc

    return job, (gc.get_freeze_count(), gc.isenabled())


def test_workers_start_with_the_libraries_frozen_and_the_garbage_collector_on():
    """Issue 18, ``--jobs 2``'s serial head: the fork server's imports of the workers' libraries ran
    with the cyclic garbage collector on, and its automatic full collections walked the 10^5 objects
    made so far (0.14-0.20 s of the server's CPU, the run's longest serial part); a worker's first
    collection walked them again. The server now imports them with the collector paused and freezes
    what they made (``pool.import_libraries``): a worker starts with them frozen, its collector on."""
    with WorkerPool(1, _gc_state, _failed) as pool:
        ((_, (frozen, enabled)),) = list(pool.imap_unordered(["a"]))
    assert enabled
    assert frozen > 50_000, frozen


def _one_time_work_found(job: str):
    """The job and what its worker finds done before its first product: (templates the product
    report's rendering compiles now, whether the BLAS/OpenMP thread pools were inspected before
    this worker's first use of them, its initializer's)."""
    from tilpheno.gates.placement import _threadpools
    from tilpheno.report.html import PRODUCT_TEMPLATES, environment

    env, compiled = environment(), []
    compile_now = env.compile
    env.compile = lambda *a, **k: compiled.append(a) or compile_now(*a, **k)   # this worker's compiles
    for name in PRODUCT_TEMPLATES:
        env.get_template(name)
    return job, (len(compiled), _threadpools.cache_info().hits > 0)


def test_workers_start_with_the_first_products_one_time_work_done():
    """Issue 18, ``--jobs 2``: each worker's first product compiled the report's templates (Jinja2,
    24 ms of CPU) and inspected the thread pools (threadpoolctl, 9 ms; and its initializer inspected
    them once more), work every worker repeated. The fork server now does it once, after its imports
    (``product.warm_up``): a worker compiles no template, and its initializer finds the pools
    inspected."""
    with WorkerPool(1, _one_time_work_found, _failed, _single_threaded_worker) as pool:
        ((_, (compiled, inspected)),) = list(pool.imap_unordered(["a"]))
    assert compiled == 0
    assert inspected


def test_pool_stops_its_workers():
    with WorkerPool(2, _pid_of, _failed) as pool:
        assert dict(pool.imap_unordered(["a", "b"])).keys() == {"a", "b"}
        processes = [w.process for w in pool.workers]
    assert processes and all(p.exitcode == 0 for p in processes)


def _one_worker_pool_in_a_process(statement: str):
    """Run ``statement`` in a new Python process, inside ``with WorkerPool(1, _pid_of, _failed) as
    pool:`` (``os`` imported); returns the finished process (stdout, stderr, status). Its stderr is
    inherited by the worker, so this returns once the worker has ended too."""
    import subprocess
    import sys
    from pathlib import Path

    script = ("import os, sys; sys.path.insert(0, sys.argv[1])\n"
              "from test_pipeline_pool import _failed, _pid_of\n"
              "from tilpheno.pipeline.pool import WorkerPool\n"
              "with WorkerPool(1, _pid_of, _failed) as pool:\n"
              f"    {statement}\n")
    return subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)], capture_output=True, text=True,
                          timeout=120)


def test_an_interrupted_worker_stops_without_a_traceback():
    """Ctrl-C reaches the workers too: each stops quietly (the parent reports the interrupted run)."""
    done = _one_worker_pool_in_a_process("print(sorted(pool.imap_unordered(['interrupt', 'a']))[1])")
    assert done.returncode == 0, done.stderr
    assert "('interrupt', 'worker died while processing this product (exited with status 130)')" in done.stdout
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr


def test_describe_exit():
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(-9) == "killed by SIGKILL (sent by the out-of-memory killer, or by hand)"
    assert describe_exit(-15) == "killed by SIGTERM"
    assert describe_exit(None) == "did not exit"


def _one_sample_product(tmp_path):
    """A folder holding sample_fcs's TIL001 files and their manifest rows."""
    import shutil
    from pathlib import Path

    sample = Path(__file__).resolve().parents[1] / "sample_fcs"
    folder = tmp_path / "in"
    folder.mkdir()
    lines = (sample / "manifest.csv").read_text().splitlines()
    (folder / "manifest.csv").write_text("\n".join([lines[0]] + [x for x in lines[1:] if x.startswith("TIL001_")]) + "\n")
    for f in sample.glob("TIL001_*.fcs"):
        shutil.copy(f, folder / f.name)
    return folder


def _process_and_list_modules(folder, out, prefixes: tuple[str, ...]) -> str:
    """``tilpheno process folder --out out --jobs 1`` in a fresh interpreter; its stdout ends with
    ``EXIT <code>`` and ``LOADED [...]``, the loaded modules that start with one of ``prefixes``."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import runpy, sys\n"
        f"sys.argv = ['tilpheno', 'process', {str(folder)!r}, '--out', {str(out)!r}, '--jobs', '1', '--overwrite']\n"
        "try:\n    runpy.run_module('tilpheno.cli', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
        "print('EXIT', code)\n"
        f"print('LOADED', sorted(m for m in sys.modules if m.startswith({prefixes!r})))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert "EXIT 0" in run.stdout, run.stdout + run.stderr
    return run.stdout


def test_processing_a_product_imports_neither_scikit_learn_nor_scipy_stats(tmp_path):
    """Issue 18: each worker's start-up is the serial head of a parallel run. The gating's Gaussian
    mixtures (``gates.mixture``) and quantiles (``scipy.special``) need neither scikit-learn
    (about 1.3 s to import) nor ``scipy.stats`` (0.5 s); a whole ``process`` of one sample product,
    reports included, in a fresh interpreter must not import them."""
    out = _process_and_list_modules(_one_sample_product(tmp_path), tmp_path / "out", ("sklearn", "scipy.stats"))
    assert "LOADED []" in out, out


def test_a_cached_rerun_does_not_import_the_gating_stack(tmp_path):
    """Issue 18: re-running an unchanged folder is a process's fixed cost (target < 10 % of the
    first run). With every product reused from the cache, the run writes tables, the codebook and
    index pages only: it must not import the gate placement, the phenotype engine or scipy."""
    folder = _one_sample_product(tmp_path)
    first = _process_and_list_modules(folder, tmp_path / "out", ("tilpheno.gates.placement",))
    assert "LOADED ['tilpheno.gates.placement']" in first, first      # the first run gates: the probe sees it
    again = _process_and_list_modules(folder, tmp_path / "out", ("tilpheno.gates.placement", "tilpheno.phenotype", "scipy"))
    assert "LOADED []" in again, again


def test_an_abandoned_pool_terminates_its_workers_at_once():
    """The consumer stops (Ctrl-C, SIGTERM, a failed write): a worker busy with a long job is
    terminated at once, not waited for (5 s per worker before)."""
    import time

    import pytest

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="gave up"):
        with WorkerPool(2, _pid_of, _failed) as pool:
            for _ in pool.imap_unordered(["long", "a"]):
                processes = [w.process for w in pool.workers]
                raise RuntimeError("the consumer gave up")
    assert time.monotonic() - start < 4
    assert len(processes) == 2 and all(p.exitcode is not None for p in processes)


def test_a_worker_whose_parent_was_killed_stops_without_a_traceback():
    """The pool's owner killed with SIGKILL while a worker runs a job: the worker, finding nobody
    to send the result to, stops quietly (it printed a BrokenPipeError traceback before)."""
    done = _one_worker_pool_in_a_process("print(list(pool.imap_unordered([f'kill {os.getpid()}'])))")
    assert done.returncode == -9, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr



def _running(pid: int) -> bool:
    """Process ``pid`` exists and is not a zombie (an ended process not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_worker_stops_at_once_when_its_parent_is_killed():
    """Issue 18: ``tilpheno process --jobs 2`` killed with SIGKILL left its workers running their
    products to the end (10-15 s of two cores for results nobody reads; they noticed the parent
    only when sending the result). A worker now watches its connection to the parent and stops as
    soon as the parent is gone. Here the parent kills itself a second after it handed a job of a minute to its worker."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    import pytest

    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    script = ("import os, signal, sys, threading, time; sys.path.insert(0, sys.argv[1])\n"
              "from test_pipeline_pool import _failed, _pid_of\n"
              "from tilpheno.pipeline.pool import WorkerPool\n"
              "def later():\n"
              "    while not (pool.workers and pool.workers[0].job):\n"
              "        time.sleep(0.05)\n"
              "    time.sleep(1)\n"
              "    print(pool.workers[0].process.pid, flush=True)\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n"
              "with WorkerPool(1, _pid_of, _failed) as pool:\n"
              "    threading.Thread(target=later, daemon=True).start()\n"
              "    list(pool.imap_unordered(['long']))\n")
    parent = subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).parent)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    worker = int(parent.stdout.readline())
    assert parent.wait(timeout=60) == -9
    deadline = time.monotonic() + 5
    while _running(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    still = _running(worker)
    if still:
        os.kill(worker, 9)
    assert not still, "the worker still runs its job 5 s after its parent was killed"


IMPORT_LOG_HOOK = '''
import os, sys

def _log_imports_of_workers(event, args):
    """Audit hook: each module a ``tilpheno-worker-N`` process imports, one line to $IMPORT_LOG."""
    process = sys.modules.get("multiprocessing.process")
    if event != "import" or not hasattr(process, "current_process"):
        return
    name = process.current_process().name
    if name.startswith("tilpheno-worker"):
        with open(os.environ["IMPORT_LOG"], "a") as log:
            log.write(f"{name} {args[0]}\\n")

sys.addaudithook(_log_imports_of_workers)
'''


def test_workers_import_no_library_after_the_fork(tmp_path):
    """Issue 18, ``--jobs 2``: the fork server imports the workers' libraries once and each worker
    is forked with them, so a worker's products import nothing more. Two sample products on two
    workers (``process_folder`` called from a ``-c`` script, so no ``__main__`` is imported in the
    workers), every import of a worker logged by an audit hook (a ``sitecustomize`` on the
    interpreter's path, which the fork server inherits): no library and no tilpheno module may be
    imported after the fork. (``scipy.optimize`` of the default study's fitted FMO carry, 0.17 s
    of CPU, was imported by each worker on its first product.)"""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    folder = tmp_path / "in"
    folder.mkdir()
    lines = (repo / "sample_fcs" / "manifest.csv").read_text().splitlines()
    kept = [x for x in lines[1:] if x.startswith(("TIL001_", "TIL002_"))]
    (folder / "manifest.csv").write_text("\n".join([lines[0], *kept]) + "\n")
    for row in kept:
        shutil.copy(repo / "sample_fcs" / row.split(",")[0], folder)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(IMPORT_LOG_HOOK)
    log = tmp_path / "imports.log"
    script = ("import sys\nfrom tilpheno.pipeline import process_folder\n"
              "s = process_folder(sys.argv[1], sys.argv[2], manifest_csv=sys.argv[1] + '/manifest.csv', n_jobs=2)\n"
              "print('DONE', sorted(s.done))\n")
    env = {**os.environ, "IMPORT_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(hook), str(repo), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", script, str(folder), str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path, env=env)
    assert "DONE ['TIL001', 'TIL002']" in run.stdout, run.stdout + run.stderr
    imported = [line.split() for line in log.read_text().splitlines()]
    assert len({worker for worker, _ in imported}) == 2, imported   # the hook saw both workers (each imports a few stdlib modules)
    libraries = ("tilpheno", "numpy", "pandas", "scipy", "matplotlib", "jinja2", "pyarrow", "threadpoolctl", "yaml")
    late = sorted({module for _, module in imported if module.split(".")[0] in libraries})
    assert late == [], late


def test_process_with_jobs_starts_the_fork_server_before_typer_reads_the_command_line(monkeypatch):
    """Issue 18, ``--jobs 2``'s serial head: the fork server's imports of the workers' libraries are
    the longest serial part of a parallel run, so ``tilpheno process --jobs N`` starts the server
    first, before Typer reads the command line (pydantic and an adapter per parameter, 0.1 s of CPU)
    and the command imports the pipeline (0.05 s); it was started inside ``process_folder``.
    Other command lines start nothing before Typer."""
    import sys

    import tilpheno.cli as cli
    from tilpheno.pipeline import pool

    events: list[str] = []
    monkeypatch.setattr(pool, "start_fork_server", lambda: events.append("fork server"))
    monkeypatch.setattr(cli, "_run_app", lambda: events.append("typer") or 0)
    for argv, expected in [
        (["process", "IN", "-o", "OUT", "--jobs", "2"], ["fork server", "typer"]),
        (["--verbose", "--log", "run.log", "process", "IN", "--jobs=3", "-o", "OUT", "--executor", "local"],
         ["fork server", "typer"]),
        (["process", "IN", "-o", "OUT"], ["typer"]),
        (["process", "IN", "-o", "OUT", "--jobs", "1"], ["typer"]),
        (["process", "IN", "-o", "OUT", "--jobs", "2", "--jobs", "1"], ["typer"]),   # the last one counts
        (["process", "IN", "-o", "OUT", "--jobs", "2", "--executor", "dask", "--scheduler", "tcp://h:8786"], ["typer"]),
        (["process", "IN", "-o", "OUT", "--jobs", "x"], ["typer"]),
        (["process", "--help", "--jobs", "2"], ["typer"]),
        (["--log", "process", "report", "OUT", "--jobs", "2"], ["typer"]),   # "process" is --log's file
        (["demo", "--jobs", "2"], ["typer"]),
    ]:
        events.clear()
        monkeypatch.setattr(sys, "argv", ["tilpheno", *argv])
        try:
            cli.main()
        except SystemExit:
            pass
        assert events == expected, argv


def test_a_failing_warm_up_is_logged_and_leaves_the_preload_going(monkeypatch, caplog):
    """A warm-up that fails (e.g. a template that does not compile) must not stop the fork server's
    preload or a Dask worker's start-up (every product of the run would fail as a dead worker); it
    is logged, and each product meets the failure where it renders."""
    import gc

    from tilpheno.pipeline import pool, product

    def broken() -> None:
        raise RuntimeError("no templates")

    monkeypatch.setattr(product, "warm_up", broken)
    try:
        pool.import_libraries(["json"], warm_up=True)
    finally:
        gc.unfreeze()   # this test process's objects, frozen by the call, collectable again
    assert "warm-up before the first product failed" in caplog.text
    assert "no templates" in caplog.text
