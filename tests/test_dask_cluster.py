"""The Dask executor on a real cluster: `dask scheduler` and two `dask worker` processes (127.0.0.1
only), one of which is killed while it processes a product; the product is re-scheduled on the
other worker and every output equals a local run's."""
from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tilpheno.pipeline import ProcessOptions, ProductJob, group_products, load_manifest, process_folder, strategy_sources

distributed = pytest.importorskip("distributed")

DASK = [sys.executable, "-m", "dask"]


def _outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "run.json" and ".cache" not in p.relative_to(out).parts}


def _wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(what)


@pytest.fixture()
def cluster(tmp_path):
    """A scheduler and two single-threaded workers, each its own process, on 127.0.0.1 only."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)}
    sched_file = tmp_path / "scheduler.json"
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = []

    def start(name, args):
        log = open(logs / f"{name}.log", "wb")
        procs.append(subprocess.Popen([*DASK, *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                      start_new_session=True))
        return procs[-1]

    try:
        scheduler = start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                            "--scheduler-file", str(sched_file)])
        _wait_for(lambda: sched_file.exists() and sched_file.stat().st_size > 0, 60, "scheduler did not start")
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        workers = {}
        for name in ("w1", "w2"):
            workers[name] = start(name, ["worker", address, "--name", name, "--nthreads", "1", "--no-nanny",
                                         "--host", "127.0.0.1", "--no-dashboard", "--death-timeout", "60"])
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address, workers, logs, scheduler
    finally:
        # SIGKILL, not SIGTERM: no test reads anything a graceful close writes, and a scheduler or
        # worker closing gracefully after a test killed its peer can wait on that peer (the quiet
        # run of stop 55 spent 20.35 s, the old SIGTERM wait's bound, in the lost-worker test's teardown)
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for p in procs:
            p.wait()


def _kill_a_busy_worker(address: str, workers: dict, killed: list) -> None:
    """As soon as a worker is processing a product, SIGKILL that worker's process."""
    with distributed.Client(address, timeout=60) as client:
        def busy():
            processing = client.processing()
            info = client.scheduler_info()["workers"]
            for addr, keys in processing.items():
                if any(str(k).startswith("tilpheno-") for k in keys) and addr in info:
                    return info[addr]["name"]
            return None

        name = _wait_for(busy, 120, "no worker ever processed a product")
        time.sleep(0.3)  # well inside the product (imports and gating take seconds)
        workers[name].kill()
        killed.append(name)


@pytest.mark.slow
def test_separate_process_cluster_survives_a_lost_worker(small_cohort, cluster, tmp_path):
    address, workers, logs, _ = cluster
    local = tmp_path / "local"
    assert process_folder(small_cohort.out_dir, local, manifest_csv=small_cohort.manifest, make_reports=False).ok
    killed: list = []
    killer = threading.Thread(target=_kill_a_busy_worker, args=(address, workers, killed), daemon=True)
    killer.start()
    out = tmp_path / "dask"
    summary = process_folder(small_cohort.out_dir, out, manifest_csv=small_cohort.manifest, make_reports=False,
                             executor="dask", scheduler=address)
    killer.join(timeout=60)
    assert killed, "the test killed no worker"
    assert workers[killed[0]].poll() is not None  # that worker process is gone
    assert summary.ok and summary.n_products == 3, summary.failed
    assert _outputs(out) == _outputs(local)
    # the surviving worker ran the products; the dead one's product was re-scheduled, not failed
    assert json.loads((out / "run.json").read_text())["cache"]["processed"] == ["TIL001", "TIL002", "TIL003"]


@pytest.mark.slow
def test_a_lost_scheduler_stops_the_run_and_leaves_the_output_folder_as_it_was(small_cohort, cluster, tmp_path):
    """The scheduler killed mid-run: the run raises (one line), publishes nothing (the previous
    outputs stay) and keeps the finished products' cache entries; it does not report every
    product as failed and publish that."""
    from tilpheno.errors import TilphenoError

    address, workers, logs, scheduler = cluster
    out = tmp_path / "out"
    assert process_folder(small_cohort.out_dir, out, manifest_csv=small_cohort.manifest, make_reports=False).ok
    before = _outputs(out)
    killed: list = []
    instead = {name: scheduler for name in workers}   # once a worker is busy, kill the scheduler, not it
    killer = threading.Thread(target=_kill_a_busy_worker, args=(address, instead, killed), daemon=True)
    killer.start()
    with pytest.raises(TilphenoError, match=rf"the cluster dropped the run's tasks .* unfinished; run again to resume; "
                                            rf"{re.escape(str(out))} was left as it was$"):
        process_folder(small_cohort.out_dir, out, manifest_csv=small_cohort.manifest, make_reports=False,
                       executor="dask", scheduler=address, use_cache=False, overwrite=True)
    killer.join(timeout=60)
    assert killed and scheduler.poll() is not None
    assert _outputs(out) == before


def test_jobs_carry_paths_not_events(small_cohort):
    """What goes to a Dask worker is the manifest rows, strategy texts and options: a few kB, no
    event arrays (workers read the FCS files themselves, from shared storage)."""
    from tilpheno.gates.strategy import default_strategy_paths, load_strategy

    manifest = load_manifest(small_cohort.out_dir, small_cohort.manifest)
    sources = strategy_sources([load_strategy(p) for p in default_strategy_paths()])
    jobs = [ProductJob(pid, rows, sources, ProcessOptions()) for pid, rows in group_products(manifest)]
    event_bytes = 2500 * 12 * 4  # one tube's float32 DATA segment
    for job in jobs:
        assert len(pickle.dumps(job)) < event_bytes


def _callbacks(dask_worker):
    return sorted(dask_worker.periodic_callbacks)


def _threads(dask_worker):
    from threadpoolctl import threadpool_info

    return sorted({p["num_threads"] for p in threadpool_info()})


@pytest.mark.slow
def test_the_preload_on_a_real_worker():
    """``--preload tilpheno.daskworker`` as deployed (README): the worker starts with the sampling
    profiler's callbacks gone and one BLAS thread."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, worker_dashboard_address=None,
                                  preload=["tilpheno.daskworker"]) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(1, timeout=120)
        (callbacks,) = client.run(_callbacks).values()
        (threads,) = client.run(_threads).values()
    assert "heartbeat" in callbacks and not {"profile", "profile-cycle"} & set(callbacks), callbacks
    assert threads == [1]


def _worker_answers(monkeypatch, function, answer) -> list:
    """``distributed.Client.run`` answering ``answer`` for one worker, tcp://10.0.0.9:40000, when asked
    to run ``function`` (each such call recorded in the returned list); other functions run as usual."""
    asked: list = []
    real_run = distributed.Client.run

    def run(self, fn, *args, **kwargs):
        if fn is not function:
            return real_run(self, fn, *args, **kwargs)
        asked.append((fn, args))
        return {"tcp://10.0.0.9:40000": answer}

    monkeypatch.setattr(distributed.Client, "run", run)
    return asked


def test_a_worker_that_does_not_see_the_input_files_stops_the_run_with_one_line(small_cohort, tmp_path, monkeypatch):
    """Before any product is sent, each worker is asked whether it sees an input file of each folder
    (``os.path.exists`` there): a worker without the shared storage stops the run with a line naming
    the worker and the file, not 36 ``no such file`` flags for files that exist."""
    from tilpheno.errors import TilphenoError

    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        asked = _worker_answers(monkeypatch, os.path.exists, False)   # it does not see the file
        out = tmp_path / "out"
        with pytest.raises(TilphenoError, match=r"^Dask worker tcp://10\.0\.0\.9:40000: .*TIL001_\S+\.fcs: no such file on "
                                                 r"the worker, though this machine has it; every worker must see"):
            process_folder(small_cohort.out_dir, out, manifest_csv=small_cohort.manifest, make_reports=False,
                           executor="dask", scheduler=client)
    assert asked and asked[0][0] is os.path.exists
    assert not (out / "run.json").exists()



def test_a_scheduler_without_workers_stops_the_run_instead_of_waiting_for_ever(small_cohort, tmp_path, monkeypatch):
    """A scheduler with no worker started: the run waited for ever at 0 of N products. It now stops
    after ``NO_WORKERS_WAIT_S`` (1 s here) with one line naming the scheduler and what to start.
    OUT did not exist before: the run that stopped leaves none (it left an empty folder), and says
    so (the line used to end 'the output folder was left as it was and finished products are kept
    in its cache': no product had finished, and there was no folder)."""
    from tilpheno.errors import TilphenoError
    from tilpheno.pipeline import executors

    monkeypatch.setattr(executors, "NO_WORKERS_WAIT_S", 1.0)
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as local, \
            distributed.Client(local) as client:
        out = tmp_path / "out"
        with pytest.raises(TilphenoError, match=r"^scheduler \S+: no Dask worker for 1 s with 3 product\(s\) "
                                                 r"unfinished; start workers \(dask worker .* and run again; "
                                                 rf"{re.escape(str(out))} was not created$"):
            process_folder(small_cohort.out_dir, out, manifest_csv=small_cohort.manifest, make_reports=False,
                           executor="dask", scheduler=client)
    assert not out.exists() and out.parent.exists()


@pytest.mark.slow
def test_every_worker_lost_mid_run_stops_the_run_instead_of_waiting_for_ever(small_cohort, cluster, tmp_path,
                                                                              monkeypatch):
    """Both workers killed once one processes a product: the products waited for ever for a worker.
    The run now stops after ``NO_WORKERS_WAIT_S`` (3 s here), OUT untouched, in one line."""
    from tilpheno.errors import TilphenoError
    from tilpheno.pipeline import executors

    monkeypatch.setattr(executors, "NO_WORKERS_WAIT_S", 3.0)
    address, workers, logs, _ = cluster
    killed: list = []
    everyone = {name: _AllOf(list(workers.values())) for name in workers}
    killer = threading.Thread(target=_kill_a_busy_worker, args=(address, everyone, killed), daemon=True)
    killer.start()
    out = tmp_path / "out"
    with pytest.raises(TilphenoError, match=r"^scheduler \S+: no Dask worker for 3 s with [1-3] product\(s\) unfinished"):
        process_folder(small_cohort.out_dir, out, manifest_csv=small_cohort.manifest, make_reports=False,
                       executor="dask", scheduler=address)
    killer.join(timeout=60)
    assert killed and all(w.poll() is not None for w in workers.values())
    assert not (out / "run.json").exists()


class _AllOf:
    """Stands for one worker in ``_kill_a_busy_worker``: killing it kills every process given."""

    def __init__(self, procs):
        self.procs = procs

    def kill(self):
        for p in self.procs:
            p.kill()


class _NotAScheduler:
    """A TCP server on 127.0.0.1 that is no Dask scheduler: ``http`` answers every connection as a
    web server does (``400 Bad Request``: the scheduler's dashboard port given instead of its own),
    ``silent`` accepts and never answers (a forwarded port whose far end is gone)."""

    def __init__(self, mode: str):
        import socket

        self.mode, self.sock, self.conns = mode, socket.create_server(("127.0.0.1", 0)), []
        self.address = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.mode == "http":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                conn.close()

    def close(self):
        for c in [*self.conns, self.sock]:
            c.close()


@pytest.mark.parametrize("mode, why", [
    ("http", r"the address answered, but not as a Dask scheduler"),
    ("silent", r"the address accepted the connection but did not answer as a Dask scheduler within 4 s"),
    ("closed", r"\[Errno \d+\] Connection refused\)$"),
])
def test_an_address_that_is_no_scheduler_gives_one_line_and_status_2(small_cohort, tmp_path, mode, why):
    """``--scheduler`` naming a web server (the dashboard's port, 8787, for the scheduler's 8786) gave
    a ``MemoryError`` traceback (its reply read as the length of a Dask message: 3 EiB); a port that
    accepts but never answers hung the run for ever (``distributed`` bounds the TCP connect, not
    its handshake). Each now stops within twice the connect timeout with one line, exit status 2, OUT not
    created. A closed port is told by the system's own reason, at once: on a loaded machine it had
    been called "accepted the connection but did not answer" when distributed's retries of the refused
    connect outlasted the handshake's bound."""
    if mode == "closed":   # a port nothing listens on: bound, then closed before any thread accepts on it
        import socket

        probe = socket.create_server(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
        probe.close()
        server = None
    else:
        server = _NotAScheduler(mode)
        address = server.address
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s",
           "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)}
    out = tmp_path / "out"
    try:
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "tilpheno.cli", "process", str(small_cohort.out_dir), "-o", str(out),
                                 "--manifest", str(small_cohort.manifest), "--reports", "none", "--executor", "dask",
                                 "--scheduler", address], env=env, capture_output=True, text=True, timeout=45)
        seconds = time.monotonic() - started
    finally:
        if server is not None:
            server.close()
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(rf"^error: --scheduler {re.escape(address)}: cannot connect to the Dask scheduler \({why}", result.stderr), result.stderr
    assert seconds < 30 and not out.exists()


@pytest.mark.parametrize("field, value, said", [
    ("tilpheno", "0.0.1", r"tilpheno 0\.0\.1 there, \S+ here"),
    ("code", "0" * 64, r"tilpheno source files \(SHA-256\) 0{64} there, [0-9a-f]{64} here"),
    ("dependencies", {"matplotlib": "3.0.0"}, r"matplotlib 3\.0\.0 there, \S+ here"),
])
def test_a_worker_running_other_code_stops_the_run_with_one_line(small_cohort, tmp_path, monkeypatch, field, value,
                                                                  said):
    """A worker left on the previous tilpheno (or other library versions) after the machine running
    ``process`` was upgraded computed products that run.json, the reports and the cache recorded as
    this machine's code, and the next run re-used them as such. Now the run stops before any product
    is sent, naming the worker and the difference."""
    from tilpheno.cache import environment
    from tilpheno.errors import TilphenoError

    here = environment()
    there = {**here, field: {**here["dependencies"], **value} if isinstance(value, dict) else value}
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        _worker_answers(monkeypatch, environment, there)   # it runs other code
        out = tmp_path / "out"
        with pytest.raises(TilphenoError, match=rf"^Dask worker tcp://10\.0\.0\.9:40000: {said}; every worker must run "
                                                 r"the same tilpheno, Python and libraries as this machine"):
            process_folder(small_cohort.out_dir, out, manifest_csv=small_cohort.manifest, make_reports=False,
                           executor="dask", scheduler=client)
    assert not (out / "run.json").exists()


FULL_COLLECTIONS_WHILE_IMPORTING = """\
import gc, sys
from tilpheno.pipeline import executors

class Stop(Exception):
    pass

def full_collections():
    return gc.get_stats()[2]["collections"]

def stop(address):   # the first step after the import
    raise Stop(full_collections() - before)

executors._check_scheduler = stop
assert "distributed" not in sys.modules
before = full_collections()
try:
    list(executors._iter_dask([], "tcp://127.0.0.1:1"))
except Stop as exc:
    print("full collections:", exc.args[0], "collector on:", gc.isenabled())
"""


def test_the_dask_client_imports_distributed_with_the_garbage_collector_paused():
    """Issue 18, Dask's serial head: the client's ``import distributed`` (0.3 s of CPU, before any
    product starts) set off a full collection of everything the run had made (a quarter of the
    import's CPU on a loaded machine); it now runs with the collector paused, on again after."""
    done = subprocess.run([sys.executable, "-c", FULL_COLLECTIONS_WHILE_IMPORTING], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.stdout.strip() == "full collections: 0 collector on: True", done.stdout + done.stderr


def test_a_dask_run_takes_each_outcome_when_it_completes_not_at_its_next_look():
    """Issue 18, a Dask run's serial tail: the client polled ``as_completed`` every 0.2 s, so the last
    product's outcome waited up to 0.2 s (0.1 s on average) before the run wrote its tables, the cluster
    idle meanwhile. Each outcome is now taken when its task completes: here the cluster is looked at for
    workers once an hour (the fourth argument), and a finished task must still come out at once (waited
    for up to 60 s; on a client that sleeps between looks it comes out after an hour)."""
    from tilpheno.pipeline import executors

    got: list = []
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        future = client.submit(sum, [1, 2], pure=False)
        taker = threading.Thread(target=lambda: got.extend(executors._completed(client, [future], "here", 3600)),
                                 daemon=True)
        taker.start()
        taker.join(timeout=60)
        assert got == [future]
        assert future.result() == 3
