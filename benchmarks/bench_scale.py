"""Scale benchmarks (issue 18), run by hand: incremental re-runs, memory at cohort scale, throughput,
``--jobs 2`` and a two-worker Dask cluster against one local process.

    .venv/bin/python benchmarks/make_cohort.py --out /tmp/b12 --products 12 --events 100000
    .venv/bin/python benchmarks/make_cohort.py --out /tmp/b200 --products 200 --events 10000
    .venv/bin/python benchmarks/bench_scale.py incremental --cohort /tmp/b12
    .venv/bin/python benchmarks/bench_scale.py memory --cohort /tmp/b200 --small 20
    .venv/bin/python benchmarks/bench_scale.py throughput --cohort /tmp/b12 --baseline /path/to/old/tree
    .venv/bin/python benchmarks/bench_scale.py parallel --cohort /tmp/b12
    .venv/bin/python benchmarks/bench_scale.py timeline --cohort /tmp/scale_b4 --jobs 2
    .venv/bin/python benchmarks/bench_scale.py contention --cohort /tmp/scale_b4 --rounds 3
    .venv/bin/python benchmarks/bench_scale.py stages --cohort /tmp/scale_b4 --rounds 3
    .venv/bin/python benchmarks/bench_scale.py capacity --cohort /tmp/scale_b4 --rounds 3
    .venv/bin/python benchmarks/bench_scale.py scan --cohort /tmp/b12 --files 10000
    .venv/bin/python benchmarks/bench_scale.py all --make-cohort /tmp/scale_b4 --baseline-commit b929823
    .venv/bin/python benchmarks/bench_scale.py gating --cohort /tmp/scale_b4 --repeat 7
    .venv/bin/python benchmarks/bench_scale.py analysis --cohort /tmp/scale_b4 --baseline /path/to/old/tree

``all`` measures every ratio of the issue's "Done when" list that concerns speed, in one run
(under 10 minutes on 2 quiet cores), on the issue's folder (``--make-cohort`` writes it first if
it is missing: 4 products x 9 files, 8 of them gated, x 200,000 events, seed 7):

- the whole pipeline (gating + reports), ``--jobs 1``, against the code at ``--baseline-commit``
  (checked out with ``git worktree add`` into a temporary folder, removed afterwards; the issue
  was filed against b929823), the two interleaved over ``--rounds`` rounds; throughput per core
  = baseline CPU seconds / current CPU seconds (process tree), and the wall-clock ratio;
- ``--jobs 2`` against ``--jobs 1``, and ``--executor dask`` on a ``LocalCluster`` of two
  single-threaded worker processes (started, and their libraries imported, before the timing)
  against ``--jobs 1`` (wall clock; outputs compared byte for byte; the workers' own CPU seconds
  from ``getrusage`` in each worker before and after the run);
- gating alone with the same fixed gates, per file, against FlowKit (``run.bench_gating``: read +
  compensate + transform + 14 resolved gates as masks vs ``Sample`` + ``gate_sample`` on the
  stained surface file, CPU seconds, median of ``--repeat``; ``gating`` runs just this). Like for
  like: each side reads the file (events decoded and scaled), compensates, transforms and applies
  the gates; the file's SHA-256, which the pipeline records for provenance and FlowKit does not
  compute, is timed apart (``+ SHA-256``).

Every ``process`` runs in a subprocess (``python -m tilpheno process``, the ``tilpheno`` script's entry
point; ``-m tilpheno.cli`` in a tree without ``tilpheno/launch.py``; ``--no-cache`` unless the
cache is what is measured) against the ``tilpheno`` of ``--tree`` (default: this checkout), whose
modules are byte-compiled first as an installed package's are (``byte_compile``); wall
time, CPU time of the process tree (psutil, sampled every 50 ms) and the 1-minute load average
before the run are printed with each figure, since the machine may be shared. Ratios are taken
between runs of one invocation.

- incremental: a first run into a fresh OUT; the same command again (every product re-used);
  ``touch`` on every input (stat identities change: every file hashed again, every product still
  re-used); one FMO file rewritten with other bytes (one product processed); a ``--no-cache`` run
  into a fresh folder of the changed cohort, compared byte for byte with the incremental result;
  then ``--reports later`` and the same with the release spec edited (a limit raised: no product
  gated again, its release decided again), compared with a clean ``--no-cache`` run of that spec.
  Also the SHA-256 of every input file in this process (what a run without the stat pre-check pays).
- memory: ``process_folder`` (``--jobs 1``) in fresh processes on the first ``--small`` products
  and on all products: peak RSS (``VmHWM``) and the increment above the libraries' baseline, as
  ``benchmarks/run.py`` measures it.
- throughput: ``process --jobs 1`` with reports, against the same command on ``--baseline`` (an
  older tree), and ``--reports later`` (gating and tables only).
- analysis: the CPU seconds of one product's analysis (``phenotype.analyze_product`` as the pipeline
  calls it: read, acquisition QC, compensation, transforms, gate placement, checks, tables; no
  report, no process start-up) per product of the cohort, in a fresh process per tree (``--tree``
  and ``--baseline``) after one warm-up product, the trees interleaved over ``--rounds``; the
  ratio baseline / now of the least of the rounds.
- parallel: ``--jobs 1``, ``--jobs 2``, and ``--executor dask`` on a ``LocalCluster`` of two
  single-threaded worker processes (127.0.0.1, their libraries imported first, as ``dask worker
  --preload tilpheno.daskworker`` does), against ``--jobs 1``, over ``--rounds`` interleaved rounds.
  Each round of ``parallel`` and ``all`` also measures the machine's ceiling for ``--jobs 2``: the
  cohort split into two halves, processed by two independent ``--jobs 1`` runs started together
  (:func:`two_halves_at_once`), and the machine's own parallel capacity with tilpheno out of the way
  (:func:`spin_capacity`: a pure-Python loop alone and two copies at once, 3 s each).
- capacity: only that probe, over ``--rounds``.
- timeline: where a run's wall time goes: one ``process`` (``--jobs N``, or ``--executor dask``
  with ``--dask``) in a subprocess whose parent and workers log timestamps (process start, fork
  server started, manifest, run record, each worker started, each product's start and end in its
  worker, cohort tables, ``run.json``, exit; with ``--jobs N`` the fork server's preload, through
  ``timeline_preload``), each with the CPU seconds its process had used, printed as a timeline and
  summed up: the serial head (start to the first product) and its two branches (the fork server's
  preload; the parent's command line, manifest and run record up to its jobs ready), the
  products, the time one worker sat idle while another still ran (imbalance), the serial tail
  (last product to exit), and the exit: the parent's exit handlers done, the parent process ended
  (its CPU from ``wait4``: what the interpreter's teardown cost after the handlers), and the last
  process holding the run's stderr gone (with ``--jobs N`` the fork server and multiprocessing's
  resource tracker, which end once the parent has: what a caller reading the run's output waits for).
- contention: why two processes at once fall short of 2x. Each round runs the cohort's two halves
  (as ``parallel``'s ceiling does) one after the other, then both at once, each a ``--jobs 1`` process
  that logs its own CPU (user, system; ``getrusage``) and minor page faults at its start, before and
  after each product and at its exit; printed per phase (start-up to the first product, the first
  product, the later products, the tail), alone against at once, least and median over the
  rounds' runs. Then a probe of the machine: a fresh process writes 200 MB of new memory 10 times
  (``np.empty`` + ``fill``, mapped and zeroed by the kernel each time) and 10 times into memory it
  already has, alone and two at once: system CPU per GB of fresh pages against user CPU per GB of
  plain writes.
- stages: where a product's CPU inflates when another process runs beside it, stage by stage. Each round
  runs the cohort (``--jobs 1``, each product ``--product-repeat`` times in the process) alone, then two
  identical runs at once; every product run but each process's first (its fresh pages) is sampled every 2 ms
  of the process's CPU (``ITIMER_PROF``): CPU seconds and minor faults since the last sample go to the
  innermost tilpheno frame's module (:data:`STAGE_MODULES`: read, acquisition QC, compensate, transform, gate
  placement, membership, checks, measure, report, SHA-256). Printed: CPU ms per product of each stage alone
  and beside (medians over the runs), their ratio, each stage's share of the product's difference, and the
  product's CPU alone and beside (the inflation factor) with its minor faults. On a machine other sessions
  load, "alone" is beside them too: only a quiet machine separates the two. A sample is taken when CPython
  next checks for signals (a call, a loop's jump back), so a long NumPy call's time can go to the frame
  entered next: read a stage's figure to some ms, a function's not at all (stop 63 timed functions by
  alternating implementations call by call within one run instead).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def load() -> float:
    return os.getloadavg()[0]


_COMPILED: set[Path] = set()


def byte_compile(tree: Path) -> None:
    """Write the ``.pyc`` files of ``tree``'s ``tilpheno`` (once per tree), as installing a package
    does. Where ``PYTHONDONTWRITEBYTECODE`` is set (this machine's environment sets it) imports do
    not write them, and every process of a source checkout would compile every tilpheno module
    again: about 0.09 s per process, measured on the workers' imports (0.80 s with, 0.89 s without)."""
    tree = Path(tree).resolve()
    if tree not in _COMPILED:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "tilpheno")], check=True,
                       stdout=subprocess.DEVNULL)
        _COMPILED.add(tree)


def entry_module(tree: Path) -> str:
    """``tilpheno``: ``python -m tilpheno`` runs the ``tilpheno`` script's entry point
    (``tilpheno.launch.main``); a tree from before it (no ``tilpheno/launch.py``): ``tilpheno.cli``."""
    return "tilpheno" if (Path(tree) / "tilpheno" / "launch.py").exists() else "tilpheno.cli"


def run_process(tree: Path, cohort: Path, out: Path, *extra: str) -> dict:
    """``tilpheno process`` of ``tree`` in a subprocess (its modules byte-compiled first,
    :func:`byte_compile`): wall s, CPU s of the tree, load before, exit."""
    from run import _watch  # benchmarks/run.py: psutil sampling of the process tree

    byte_compile(tree)
    cohort, out = cohort.resolve(), out.resolve()
    cmd = [sys.executable, "-m", entry_module(tree), "process", str(cohort), "-o", str(out),
           "--manifest", str(cohort / "manifest.csv"), *extra]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = load()
    t = time.perf_counter()
    # cwd=tree: ``python -m`` puts the working directory first on sys.path, ahead of PYTHONPATH, so
    # run from another checkout it would import that checkout's tilpheno, not ``tree``'s
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=str(tree))
    usage = _watch(proc)
    _, err = proc.communicate()
    wall = time.perf_counter() - t
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)}\n{err[-3000:]}")
    return {"wall": wall, "cpu": usage["cpu_s"], "load": before, "exit": proc.returncode,
            "peak_tree_mb": usage["peak_tree_mb"]}


def split_cohort(cohort: Path, work: Path) -> tuple[Path, Path]:
    """The cohort's products in two folders of ``work`` (first half, second half by product ID; files
    copied), each with its own manifest: the same work as the whole folder, in two independent
    halves. The cohort's files are left as they were: a hard link changed each file's ctime and link
    count, and tilpheno's file identity (``io.fcs``: device, inode, size, mtime, ctime) then failed a
    product of any run reading the cohort at that moment ('file changed since it was read'); a
    symbolic link would lie outside the half's folder, which the manifest refuses (links resolved)."""
    import csv

    with open(cohort / "manifest.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    products = sorted({r["product_id"] for r in rows})
    folders = []
    for i, half in enumerate((products[: len(products) // 2], products[len(products) // 2:])):
        folder = work / f"half{i}"
        folder.mkdir(parents=True)
        mine = [r for r in rows if r["product_id"] in half]
        for r in mine:
            shutil.copy2(cohort / r["file"], folder / r["file"])
        with open(folder / "manifest.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(mine)
        folders.append(folder)
    return folders[0], folders[1]


def two_halves_at_once(tree: Path, halves: tuple[Path, Path], out: Path) -> dict:
    """The machine's own ceiling for ``--jobs 2``: two independent ``process --jobs 1`` runs, one per
    half of the cohort (:func:`split_cohort`), started together; wall until both have exited. Each
    pays its own start-up, in parallel, and nothing is serial between them: ``--jobs 1`` wall / this
    wall is what two cores of this machine give this work at best."""
    from concurrent.futures import ThreadPoolExecutor

    before = load()
    t = time.perf_counter()
    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(lambda i: run_process(tree, halves[i], out / f"half{i}", "--no-cache"), (0, 1)))
    return {"wall": time.perf_counter() - t, "cpu": sum(r["cpu"] for r in results), "load": before,
            "exit": max(r["exit"] for r in results)}


def outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "run.json" and ".cache" not in p.relative_to(out).parts}


def cache_record(out: Path) -> dict:
    return json.loads((out / "run.json").read_text()).get("cache", {})


def row(what: str, r: dict, note: str = "") -> str:
    return f"| {what} | {r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU | load {r['load']:.1f} | {note} |"


def incremental(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="scale-inc-"))
    cohort = work / "fcs"
    shutil.copytree(args.cohort, cohort)  # this benchmark rewrites one file
    files = sorted(cohort.glob("*.fcs"))
    t = time.process_time()
    for f in files:
        hashlib.sha256(f.read_bytes()).hexdigest()
    sha_cpu = time.process_time() - t
    size = sum(f.stat().st_size for f in files)
    out = work / "out"
    lines = ["| run | time | load before | notes |", "|---|---|---|---|"]
    first = run_process(args.tree, cohort, out)
    lines.append(row("first run, fresh OUT", first, f"{len(files)} files, {size / 1e9:.2f} GB"))
    reference = outputs(out)
    again = run_process(args.tree, cohort, out, "--overwrite")
    rec = cache_record(out)
    same = outputs(out) == reference
    lines.append(row("same command again (unchanged)", again,
                     f"**{again['wall'] / first['wall']:.1%} of the first run** (wall), {again['cpu'] / first['cpu']:.1%} (CPU); "
                     f"re-used {len(rec.get('reused', []))}, processed {len(rec.get('processed', []))}; "
                     f"inputs hashed {rec.get('inputs_hashed')}, digests re-used {rec.get('inputs_digest_reused')}; "
                     f"outputs identical: {same}"))
    for f in files:
        os.utime(f)
    touched = run_process(args.tree, cohort, out, "--overwrite")
    rec = cache_record(out)
    lines.append(row("after `touch` of every input", touched,
                     f"{touched['wall'] / first['wall']:.1%} of the first run; inputs hashed {rec.get('inputs_hashed')}; "
                     f"re-used {len(rec.get('reused', []))}; outputs identical: {outputs(out) == reference}"))
    victim = sorted(cohort.glob("*_surface_FMO_PD1.fcs"))
    victim[1].write_bytes(victim[0].read_bytes())
    changed = run_process(args.tree, cohort, out, "--overwrite")
    rec = cache_record(out)
    clean = work / "clean"
    fresh = run_process(args.tree, cohort, clean, "--no-cache")
    lines.append(row(f"one file changed ({victim[1].name})", changed,
                     f"{changed['wall'] / first['wall']:.1%} of the first run; processed {rec.get('processed')}; "
                     f"re-used {len(rec.get('reused', []))}"))
    lines.append(row("clean --no-cache run of the changed cohort", fresh,
                     f"incremental outputs identical to it: {outputs(out) == outputs(clean)}"))
    spec = work / "release.yaml"   # the bundled spec with its viability limit raised
    bundled = Path(args.tree) / "tilpheno" / "studies" / "til" / "release.yaml"
    spec.write_text(bundled.read_text().replace("limit: 70\n", "limit: 75\n"))
    later = run_process(args.tree, cohort, out, "--overwrite", "--reports", "later")
    edited = run_process(args.tree, cohort, out, "--overwrite", "--reports", "later", "--release-spec", str(spec))
    rec = cache_record(out)
    clean_spec = run_process(args.tree, cohort, work / "clean-spec", "--no-cache", "--reports", "later",
                             "--release-spec", str(spec))
    lines.append(row("`--reports later`, then the release spec edited (`--release-spec`)", edited,
                     f"{edited['wall'] / later['wall']:.1%} of the same command before the edit "
                     f"({later['wall']:.1f} s), {edited['wall'] / clean_spec['wall']:.1%} of a clean --no-cache run "
                     f"({clean_spec['wall']:.1f} s); processed {len(rec.get('processed', []))}, release decided again "
                     f"{len(rec.get('release_decided_again', []))}; outputs identical to the clean run: "
                     f"{outputs(out) == outputs(work / 'clean-spec')}"))
    lines.append(f"| SHA-256 of all {len(files)} inputs in one process | {sha_cpu:.2f} s CPU | load {load():.1f} | "
                 f"{size / sha_cpu / 1e9:.2f} GB/s; {sha_cpu / first['cpu']:.2%} of the first run's CPU |")
    print("\n".join(lines))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def memory(args) -> None:
    import pandas as pd

    from run import _memory_run

    work = Path(tempfile.mkdtemp(prefix="scale-mem-"))
    manifest = pd.read_csv(args.cohort / "manifest.csv")
    ids = sorted(manifest["product_id"].unique())
    lines = ["| products | files | peak RSS | increment over the libraries | seconds | load before |", "|---|---|---|---|---|---|"]
    results = {}
    for n in (args.small, len(ids)):
        csv = work / f"manifest_{n}.csv"
        manifest[manifest["product_id"].isin(ids[:n])].to_csv(csv, index=False)
        before = load()
        r = _memory_run(args.cohort, csv, work / f"out{n}")
        results[n] = r
        mb = 2**20
        lines.append(f"| {n} | {int(manifest['product_id'].isin(ids[:n]).sum())} | {r['peak'] / mb:.0f} MiB | "
                     f"{(r['peak'] - r['baseline']) / mb:.0f} MiB | {r['seconds']:.0f} | {before:.1f} |")
    small, big = results[args.small]["peak"], results[len(ids)]["peak"]
    lines.append(f"| ratio {len(ids)} / {args.small} products | | **{big / small:.3f}** | "
                 f"{(results[len(ids)]['peak'] - results[len(ids)]['baseline']) / max(1, results[args.small]['peak'] - results[args.small]['baseline']):.3f} | | |")
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


def throughput(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="scale-tp-"))
    lines = ["| run | time | load before | notes |", "|---|---|---|---|"]
    runs = {}
    order = [("baseline", args.baseline, ()), ("now", args.tree, ("--no-cache",)),
             ("now, --reports later", args.tree, ("--no-cache", "--reports", "later"))]
    for _ in range(args.rounds):
        for name, tree, extra in order:
            if tree is None:
                continue
            r = run_process(tree, args.cohort, work / f"{name}-{time.time_ns()}", *extra)
            runs.setdefault(name, []).append(r)
    for name, rs in runs.items():
        best = min(rs, key=lambda r: r["cpu"])
        base = min(runs["baseline"], key=lambda r: r["cpu"]) if "baseline" in runs else None
        note = f"throughput per core {base['cpu'] / best['cpu']:.2f}x the baseline (CPU)" if base else ""
        lines.append(row(f"{name} (least CPU of {len(rs)})", best, note))
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


ANALYSIS_CHILD = """
import json, sys, time
from pathlib import Path
import pandas as pd
from tilpheno.gates.strategy import load_strategy
from tilpheno.study import default_study
import tilpheno.phenotype as ph
cohort = Path(sys.argv[1])
strategies = [load_strategy(p) for p in default_study().strategy_paths]
manifest = pd.read_csv(cohort / "manifest.csv")
manifest["file"] = [str(cohort / f) for f in manifest["file"]]
products = sorted(manifest["product_id"].unique())
def one(pid):
    return ph.analyze_product(pid, manifest[manifest["product_id"] == pid], strategies,
                              plot_events=getattr(ph, "PLOT_EVENTS", None))
one(products[0])   # warm-up: lazy imports and caches
t = time.process_time()
for pid in products:
    one(pid)
print(json.dumps({"cpu_per_product": (time.process_time() - t) / len(products), "products": len(products)}))
"""


def analysis(args) -> None:
    """CPU seconds of ``analyze_product`` per product, this tree against ``--baseline`` (module docstring)."""
    trees = [("now", args.tree)] + ([("baseline", args.baseline)] if args.baseline else [])
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for name, tree in trees:
            before = load()
            # in the tree: `python -c` puts the working directory first on sys.path, before PYTHONPATH
            out = subprocess.run([sys.executable, "-c", ANALYSIS_CHILD, str(args.cohort.resolve())], check=True,
                                 text=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(tree)},
                                 cwd=tree).stdout
            runs.setdefault(name, []).append({**json.loads(out.strip().splitlines()[-1]), "load": before})
    lines = ["| tree | least CPU s per product of the rounds | all rounds | load before |", "|---|---|---|---|"]
    for name, rs in runs.items():
        cpus = ", ".join(format(r["cpu_per_product"], ".3f") for r in rs)
        loads = ", ".join(format(r["load"], ".1f") for r in rs)
        lines.append(f"| {name} | {min(r['cpu_per_product'] for r in rs):.3f} | {cpus} | {loads} |")
    if "baseline" in runs:
        ratio = min(r["cpu_per_product"] for r in runs["baseline"]) / min(r["cpu_per_product"] for r in runs["now"])
        lines.append(f"\nanalysis throughput per core: **{ratio:.2f}x** the baseline ({runs['now'][0]['products']} products)")
    print("\n".join(lines))


def parallel(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="scale-par-"))
    runs: dict[str, list[dict]] = {}
    spins: list[dict] = []
    try:
        halves = split_cohort(args.cohort, work / "halves")
        for r in range(args.rounds):
            for name, extra in [("--jobs 1", ()), ("--jobs 2", ("--jobs", "2"))]:
                out = work / f"{name.replace(' ', '').lstrip('-')}-{r}"
                runs.setdefault(name, []).append(run_process(args.tree, args.cohort, out, "--no-cache", *extra))
            runs.setdefault(HALVES, []).append(two_halves_at_once(args.tree, halves, work / f"halves-{r}"))
            spins.append(spin_capacity())
        cluster = _dask_cluster(args.tree)
        try:
            for r in range(args.rounds):
                before_cpu = _workers_cpu(cluster.scheduler_address)
                result = run_process(args.tree, args.cohort, work / f"dask-{r}", "--no-cache", "--executor", "dask",
                                     "--scheduler", cluster.scheduler_address)
                result["workers_cpu"] = _workers_cpu(cluster.scheduler_address) - before_cpu
                runs.setdefault("dask", []).append(result)
        finally:
            cluster.close()
        reference = outputs(work / "jobs1-0")
        same_jobs, same_dask = outputs(work / "jobs2-0") == reference, outputs(work / "dask-0") == reference
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one = min(r["wall"] for r in runs["--jobs 1"])
    lines = ["| run | wall of each round | least wall | CPU of each round | load before each |", "|---|---|---|---|---|"]
    for name, rs in runs.items():
        cpu = ", ".join(f"{r['cpu']:.1f}" for r in rs)
        if name == "dask":
            cpu += " (client process) + workers " + ", ".join(f"{r['workers_cpu']:.1f}" for r in rs)
        walls = ", ".join(f"{r['wall']:.1f}" for r in rs)
        loads = ", ".join(f"{r['load']:.1f}" for r in rs)
        lines.append(f"| {name} | {walls} s | {min(r['wall'] for r in rs):.1f} s | {cpu} s | {loads} |")
    lines.append(f"\n--jobs 2: **{one / min(r['wall'] for r in runs['--jobs 2']):.2f}x** --jobs 1 (least wall); outputs identical: {same_jobs}")
    lines.append(ceiling_line(runs["--jobs 1"], runs["--jobs 2"], runs[HALVES]))
    lines.append("The machine, two pure-Python CPU loops at once / one alone (`spin_capacity`, each round): "
                 + ", ".join(f"{c['ratio']:.2f}x (CPU per wall s {c['cpu_share']:.2f})" for c in spins))
    lines.append(f"Dask, LocalCluster of 2 single-threaded worker processes (preloaded): "
                 f"**{one / min(r['wall'] for r in runs['dask']):.2f}x** --jobs 1; outputs identical: {same_dask}")
    print("\n".join(lines))


HALVES = "two halves at once (2 x --jobs 1)"


def ceiling_line(one: list[dict], two: list[dict], halves: list[dict]) -> str:
    """``--jobs 2`` against the machine's ceiling (:func:`two_halves_at_once`), round by round (the
    runs of a round follow each other within seconds, so they share the machine's state)."""
    per_round = ", ".join(f"{a['wall'] / c['wall']:.2f}x / {a['wall'] / b['wall']:.2f}x"
                          for a, b, c in zip(one, two, halves))
    best = min(r["wall"] for r in one)
    return (f"Ceiling on this machine, two halves of the cohort as independent `--jobs 1` runs at once: "
            f"**{best / min(r['wall'] for r in halves):.2f}x** --jobs 1 (least walls); "
            f"each round, ceiling / --jobs 2: {per_round}")


TIMELINE_LOG = "TILPHENO_BENCH_TIMELINE"   # environment variable: the file the traced run appends its events to
PRELOAD_MODULES = "TILPHENO_BENCH_PRELOAD"   # environment variable: the traced run's fork server preload (timeline_preload)


def _event(what: str) -> None:
    """Append ``<unix time> <pid> <CPU s of this process> <what>`` to the timeline file (parent,
    fork server and workers alike)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    with open(os.environ[TIMELINE_LOG], "a") as fh:
        fh.write(f"{time.time():.3f} {os.getpid()} {r.ru_utime + r.ru_stime:.3f} {what}\n")


def traced_run_product(job):
    """``executors.run_product`` (which this replaces) with its start and end logged (runs in the worker)."""
    from tilpheno.pipeline.product import process_product

    _event(f"product {job.product_id} start")
    outcome = process_product(job)
    _event(f"product {job.product_id} end")
    return outcome


def _traced(owner, name: str) -> None:
    inner = getattr(owner, name)

    def wrapper(*a, **k):
        _event(f"parent {name} start")
        try:
            return inner(*a, **k)
        finally:
            _event(f"parent {name} end")

    setattr(owner, name, wrapper)


def _trace_the_run() -> None:
    """Log the parent's steps (and the workers' products: ``traced_run_product``)."""
    import tilpheno.pipeline.executors as executors
    import tilpheno.pipeline.outputs as outputs
    import tilpheno.pipeline.pool as pool
    import tilpheno.pipeline.run as run

    executors.run_product = traced_run_product   # pickled by reference: the workers run the traced one
    for owner, name in [(run, "load_manifest"), (run, "start_run_record"), (executors, "largest_first"),
                        (pool.WorkerPool, "_start"), (pool.WorkerPool, "close"),
                        (executors, "_check_scheduler"), (executors, "_wait_for_a_worker"),
                        (executors, "_check_workers_code"), (executors, "_check_workers_see"),
                        (outputs, "_tables"), (outputs, "_write_populations"), (outputs, "write_run_record")]:
        if hasattr(owner, name):   # the Dask checks: not in every tree
            _traced(owner, name)


def _run_cli(argv: list[str]) -> None:
    """``tilpheno`` + ``argv`` in this process, as the ``tilpheno`` script runs it (``tilpheno.launch.main``;
    ``tilpheno.cli.main`` in a tree without it); its exit status is not raised."""
    sys.argv = ["tilpheno", *argv]
    try:
        from tilpheno.launch import main
    except ImportError:   # a tree from before tilpheno.launch
        from tilpheno.cli import main
    try:
        main()
    except SystemExit:
        pass


def traced_cli(argv: list[str]) -> None:
    """``tilpheno`` + ``argv`` in this process, as the ``tilpheno`` script runs it (``tilpheno.launch.main``;
    ``tilpheno.cli.main`` in a tree without it), its steps and its workers' products logged. The
    pipeline's modules are imported for the tracing only once the fork server has started (or at
    once, when the command starts none), so the run's head is the command's own. The fork server
    imports its preload through ``timeline_preload``, which logs its start and end."""
    from multiprocessing import forkserver

    import tilpheno.pipeline.pool as pool

    _event("parent python started")
    import atexit

    atexit.register(_event, "parent exit handlers done")   # registered first: runs after every other handler
    set_preload = forkserver.set_forkserver_preload

    def traced_preload(names: list[str]) -> None:   # the tree's pool_context names the modules; the server inherits this
        os.environ[PRELOAD_MODULES] = ",".join(names)
        set_preload(["timeline_preload"])

    forkserver.set_forkserver_preload = traced_preload
    start_fork_server = pool.start_fork_server
    server = "--jobs" in argv and argv[argv.index("--jobs") + 1] != "1"
    if not server:   # nothing to wait for: traced at once
        _trace_the_run()

    def traced_start() -> None:
        nonlocal server
        _event("parent start_fork_server start")
        start_fork_server()
        _event("parent start_fork_server end")
        if server:   # the first start: trace the rest of the run
            server = False
            _trace_the_run()

    pool.start_fork_server = traced_start
    _run_cli(argv)
    _event("parent exit")


def timeline(args) -> None:
    """One traced ``process`` (module docstring): its events, then the wall time by phase."""
    byte_compile(args.tree)
    work = Path(tempfile.mkdtemp(prefix="scale-tl-"))
    log_path = work / "events.log"
    os.environ[TIMELINE_LOG] = str(log_path)   # before the Dask workers start: they log too
    extra = ["--jobs", str(args.jobs)]
    cluster = None
    if args.dask:
        cluster = _dask_cluster(args.tree)
        extra = ["--executor", "dask", "--scheduler", cluster.scheduler_address]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(args.tree), str(HERE)])}
    argv = ["process", str(args.cohort), "-o", str(work / "out"), "--manifest", str(args.cohort / "manifest.csv"),
            "--no-cache", *extra]
    before = load()
    try:
        t0 = time.time()
        ended = traced_process(argv, env, args.tree)
    finally:
        if cluster is not None:
            cluster.close()
    events = sorted((float(t), pid, float(cpu), what.strip()) for t, pid, cpu, what in
                    (line.split(None, 3) for line in log_path.read_text().splitlines()))
    events = sorted([*events, (ended["parent"], events[0][1], ended["cpu"], "parent process ended"),
                     (ended["stderr"], "", 0.0, "last process holding stderr ended")])
    shutil.rmtree(work, ignore_errors=True)
    names: dict[str, str] = {}
    parent = events[0][1]
    for _, pid, _, what in events:
        names.setdefault(pid, "parent" if pid == parent else "-" if not pid else "server" if what.startswith("fork server")
                         else f"worker {sum(n.startswith('worker') for n in names.values()) + 1}")
    for t, pid, cpu, what in events:
        print(f"{t - t0:7.2f} s  {names[pid]:<9} {what}" + (f"  (its CPU {cpu:.2f} s)" if pid else ""))
    print(head_line(events, t0))
    print(exit_line(events, t0))
    events = [(t, pid, what) for t, pid, _, what in events]
    starts = {w.split()[1]: t for t, _, w in events if w.startswith("product ") and w.endswith(" start")}
    ends = {w.split()[1]: (t, pid) for t, pid, w in events if w.startswith("product ") and w.endswith(" end")}
    exit_t = max(t for t, _, w in events if w == "parent process ended")
    if not ends:   # a tree without executors.run_product (before 80dcf70): the parent's events only
        print(f"\n{exit_t - t0:.1f} s wall (load before {before:.1f}); no product events")
        return
    last_of = {}
    for t, pid in ends.values():
        last_of[pid] = max(t, last_of.get(pid, 0.0))
    first, last = min(starts.values()), max(t for t, _ in ends.values())
    busy = sum(ends[p][0] - starts[p] for p in ends)
    idle = sum(last - t for t in last_of.values())
    print(f"\n{'dask' if args.dask else f'--jobs {args.jobs}'}: {exit_t - t0:.1f} s wall (load before {before:.1f}); "
          f"serial head (start to the first product) {first - t0:.1f} s; products {last - first:.1f} s "
          f"({busy:.1f} s summed over products); workers idle while another still ran {idle:.1f} s; "
          f"serial tail (last product to the parent's end) {exit_t - last:.1f} s")
    print(split_line(first - t0, busy, exit_t - last, len(last_of), exit_t - t0))


def split_line(head: float, busy: float, tail: float, workers: int, wall: float) -> str:
    """What splitting the products' work finer could win at best on a run with this serial ``head``
    (start to the first product, s), ``busy`` (products' wall s summed over the workers), serial
    ``tail`` (last product to the parent's end, s) and ``workers``: the run would end at ``head +
    busy / workers + tail`` (every worker busy to the same end, no product's work added by the
    split), against the run's ``wall``."""
    best = head + busy / workers + tail
    return (f"products' work split perfectly across the {workers} worker(s): head + summed products / "
            f"{workers} + tail = {best:.2f} s, {wall - best:.2f} s less than this run's {wall:.2f} s")


def traced_process(argv: list[str], env: dict, tree: Path) -> dict[str, float]:
    """Run :func:`traced_cli` with ``argv`` in a subprocess (``env``, working directory ``tree``: see
    :func:`run_process`); returns when the parent process ended (``parent``, Unix time) and its CPU
    seconds in all (``cpu``, from ``wait4``: itself and any child it reaped, which a ``process`` run's
    parent does not: its workers are the fork server's), and when the last process holding its stderr
    closed it (``stderr``). Raises ``CalledProcessError`` (with the stderr's end) if it failed."""
    import threading

    proc = subprocess.Popen([sys.executable, "-c", f"import bench_scale; bench_scale.traced_cli({argv!r})"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(tree))
    err: list[bytes] = []
    closed: list[float] = []

    def drain() -> None:
        assert proc.stderr is not None
        err.append(proc.stderr.read())
        closed.append(time.time())

    reader = threading.Thread(target=drain)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    parent = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, stderr=err[0][-3000:])
    return {"parent": parent, "cpu": usage.ru_utime + usage.ru_stime, "stderr": closed[0]}


def exit_line(events: list[tuple[float, str, float, str]], t0: float) -> str:
    """The run's exit from a timeline's events: when the parent's exit handlers were done (and its CPU
    then), when the parent process ended (and the CPU its interpreter's teardown took after the
    handlers), and when the last process holding the run's stderr was gone."""
    at = {what: (t, cpu) for t, _, cpu, what in events}
    (handlers, cpu_handlers), (ended, cpu_ended) = at["parent exit handlers done"], at["parent process ended"]
    return (f"exit: the parent's exit handlers done at {handlers - t0:.2f} s ({cpu_handlers:.2f} s of its CPU); "
            f"the parent ended at {ended - t0:.2f} s ({cpu_ended - cpu_handlers:.3f} s of CPU after its handlers); "
            f"the last process holding stderr gone at {at['last process holding stderr ended'][0] - t0:.2f} s")


def head_line(events: list[tuple[float, str, float, str]], t0: float) -> str:
    """The serial head's two branches from a timeline's events ``(time, pid, CPU s, what)``: when the
    fork server's preload ended (and its CPU), and when the parent had its jobs ready (and its CPU:
    ``executors.largest_first``, called just before ``--jobs N`` starts its workers, and before a
    Dask run checks its cluster and hands the jobs to it); with ``--jobs N`` the later of the two
    is the head's critical path."""
    parts = []
    server = [(t, cpu) for t, _, cpu, w in events if w == "fork server preload end"]
    if server:
        start = min(t for t, _, _, w in events if w == "fork server preload start")
        parts.append(f"fork server's preload {start - t0:.2f}-{server[0][0] - t0:.2f} s ({server[0][1]:.2f} s of its CPU)")
    handed = [(t, cpu) for t, _, cpu, w in events if w == "parent largest_first start"]
    if handed:
        parts.append(f"the parent had its jobs ready at {handed[0][0] - t0:.2f} s ({handed[0][1]:.2f} s of its CPU)")
    return "head: " + "; ".join(parts) if parts else "head: no jobs to hand out (the parent runs the products itself)"


CONTENTION_LOG = "TILPHENO_BENCH_CONTENTION"   # environment variable: the file a logged run appends its usage to


def _usage(what: str) -> None:
    """Append ``<what> <user s> <system s> <minor faults>`` of this process to the contention log."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    with open(os.environ[CONTENTION_LOG], "a") as fh:
        fh.write(f"{what} {r.ru_utime:.4f} {r.ru_stime:.4f} {r.ru_minflt}\n")


def usage_logged_run_product(job):
    """``executors.run_product`` (which this replaces) with this process's usage logged around it."""
    from tilpheno.pipeline.product import process_product

    _usage("product")
    outcome = process_product(job)
    _usage("product-end")
    return outcome


def usage_logged_cli(argv: list[str]) -> None:
    """``tilpheno`` + ``argv`` (a ``--jobs 1`` run) in this process, its usage logged at its start,
    around each product and at its exit (``contention``)."""
    _usage("start")
    import tilpheno.pipeline.executors as executors

    executors.run_product = usage_logged_run_product
    _run_cli(argv)
    _usage("exit")


def _usage_logged_process(tree: Path, half: Path, work: Path, tag: str) -> tuple[subprocess.Popen, Path]:
    log = work / f"{tag}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(HERE)]), CONTENTION_LOG: str(log)}
    argv = ["process", str(half), "-o", str(work / tag), "--manifest", str(half / "manifest.csv"), "--no-cache"]
    return subprocess.Popen([sys.executable, "-c", f"import bench_scale; bench_scale.usage_logged_cli({argv!r})"],
                            env=env, stdout=subprocess.DEVNULL, cwd=str(tree)), log


def phases(log: Path) -> dict[str, tuple[float, float, int]]:
    """A logged run's (user s, system s, minor faults) by phase: ``start-up`` (to the first product),
    ``first product``, ``later products`` (per product), ``tail`` (last product to exit)."""
    marks = [(w, float(u), float(y), int(f)) for w, u, y, f in (line.split() for line in log.read_text().splitlines())]
    starts = [m for m in marks if m[0] == "product"]
    ends = [m for m in marks if m[0] == "product-end"]

    def spent(a, b) -> tuple[float, float, int]:
        return b[1] - a[1], b[2] - a[2], b[3] - a[3]

    later = [spent(a, b) for a, b in zip(starts[1:], ends[1:])]
    return {"start-up": spent(marks[0], starts[0]), "first product": spent(starts[0], ends[0]),
            "later products": tuple(sum(x[i] for x in later) / len(later) for i in range(3)),  # type: ignore[misc]
            "tail": spent(ends[-1], marks[-1])}


FAULT_PROBE = """
import sys, time, resource, numpy as np
n, fresh = 25_000_000, sys.argv[1] == "fresh"   # 200 MB of float64
a = None if fresh else np.ones(n)
r0 = resource.getrusage(resource.RUSAGE_SELF)
for _ in range(10):
    if fresh:
        b = np.empty(n); b.fill(1.0); del b   # above glibc's mmap threshold: new pages every time
    else:
        a.fill(1.0)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime)
"""


def _at_once(script: str, arg: str, at_once: int) -> list[tuple[float, float]]:
    """``at_once`` copies of the probe ``script`` (``python -c``, one argument) started together: the two numbers
    each prints."""
    procs = [subprocess.Popen([sys.executable, "-c", script, arg], stdout=subprocess.PIPE, text=True)
             for _ in range(at_once)]
    return [tuple(float(x) for x in p.communicate()[0].split()) for p in procs]   # type: ignore[misc]


SPIN_PROBE = """
import sys, time
end, units, cpu0 = time.perf_counter() + float(sys.argv[1]), 0, time.process_time()
while time.perf_counter() < end:
    sum(range(2000))
    units += 1
print(units, time.process_time() - cpu0)
"""


def spin_capacity(seconds: float = 3.0) -> dict:
    """The machine's parallel capacity for plain CPU work, tilpheno aside: a pure-Python loop (no memory
    traffic, no I/O) counts work units for ``seconds`` of wall time, alone and then two copies at once;
    ``ratio`` = units of the two together / units alone (2.0 on two idle cores; what the hypervisor gives
    two busy vCPUs otherwise), ``cpu_share`` = CPU seconds per wall second of the two (below 1: time
    stolen)."""
    alone, two = _at_once(SPIN_PROBE, str(seconds), 1), _at_once(SPIN_PROBE, str(seconds), 2)
    return {"alone": alone[0][0], "two": sum(u for u, _ in two), "ratio": sum(u for u, _ in two) / alone[0][0],
            "cpu_share": sum(c for _, c in two) / (2 * seconds)}


def capacity(args) -> None:
    """Only the machine's parallel capacity (:func:`spin_capacity`), over ``--rounds``."""
    for r in range(args.rounds):
        c = spin_capacity()
        print(f"round {r + 1}: load {load():.1f}; one loop {c['alone']:,.0f} units in 3 s, two at once "
              f"{c['two']:,.0f}: **{c['ratio']:.2f}x**; CPU per wall second of the two {c['cpu_share']:.2f}")


def contention(args) -> None:
    """Alone against two at once, by phase, and the machine's cost of fresh pages (module docstring)."""
    import statistics

    byte_compile(args.tree)
    work = Path(tempfile.mkdtemp(prefix="scale-ct-"))
    runs: dict[str, list[dict]] = {"alone": [], "at once": []}
    loads = []
    try:
        halves = split_cohort(args.cohort, work / "halves")
        for r in range(args.rounds):
            loads.append(load())
            for i, half in enumerate(halves):
                proc, log = _usage_logged_process(args.tree, half, work, f"alone{i}-{r}")
                proc.wait()
                runs["alone"].append(phases(log))
            started = [_usage_logged_process(args.tree, half, work, f"once{i}-{r}") for i, half in enumerate(halves)]
            for proc, log in started:
                proc.wait()
            runs["at once"].extend(phases(log) for _, log in started)
        probe = {(kind, n): [] for kind in ("fresh", "written") for n in (1, 2)}
        for _ in range(args.rounds):
            for kind, n in probe:
                probe[kind, n].extend(_at_once(FAULT_PROBE, kind, n))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = ["| phase | alone: user / system s, faults (least; median) | two at once: user / system s, faults "
             "(least; median) | user at once / alone (medians) |", "|---|---|---|---|"]
    for phase in ("start-up", "first product", "later products", "tail"):
        cells, medians = [], []
        for name in ("alone", "at once"):
            user = [run[phase][0] for run in runs[name]]
            system = [run[phase][1] for run in runs[name]]
            faults = [run[phase][2] for run in runs[name]]
            cells.append(f"{min(user):.3f} / {min(system):.3f}, {min(faults):,.0f}; "
                         f"{statistics.median(user):.3f} / {statistics.median(system):.3f}, {statistics.median(faults):,.0f}")
            medians.append(statistics.median(user))
        lines.append(f"| {phase} | {cells[0]} | {cells[1]} | {medians[1] / medians[0]:.3f} |")
    lines.append(f"\n{len(runs['alone'])} runs each; load before each round: {', '.join(f'{x:.1f}' for x in loads)}")
    lines.append("\n| 2 GB written | alone: CPU s per GB (least; median) | two at once: CPU s per GB (least; median) |")
    lines.append("|---|---|---|")
    for kind, column, what in (("fresh", 1, "into new pages (system s: the kernel maps and zeroes them)"),
                               ("written", 0, "into pages the process has (user s)")):
        cells = []
        for n in (1, 2):
            per_gb = [x[column] / 2.0 for x in probe[kind, n]]
            cells.append(f"{min(per_gb):.3f}; {statistics.median(per_gb):.3f}")
        lines.append(f"| {what} | {cells[0]} | {cells[1]} |")
    print("\n".join(lines))


STAGES_RESULT = "TILPHENO_BENCH_STAGES"   # environment variable: where a sampled run writes its stages (JSON)
STAGES_REPEAT = "TILPHENO_BENCH_STAGES_REPEAT"   # environment variable: how many times a sampled run runs each product
STAGE_MODULES = (("io/fcs.py:hexdigest", "SHA-256 of the files"), ("io/", "read"), ("acquisition.py", "acquisition QC"),
                 ("compensation.py", "compensate"), ("spillover.py", "residual spillover check"),
                 ("transforms.py", "transform (and inverse)"), ("gates/geometry.py", "gate membership"),
                 ("gates/checks.py", "gate checks"), ("gates/", "gate placement"), ("quantiles.py", "gate placement"),
                 ("report/", "report"), ("phenotype.py", "measure (masks, counts, medians, tables)"),
                 ("", "other (pipeline, libraries' own Python)"))
"""``stages``: the stage of a CPU sample, by the innermost tilpheno frame's module (and function), first match."""


def stage_of(where: str) -> str:
    """The stage (:data:`STAGE_MODULES`) of ``module path:function`` inside the package (``gates/placement.py:loss``)."""
    return next(name for prefix, name in STAGE_MODULES if where.startswith(prefix))


def _innermost_tilpheno(frame) -> str:
    while frame is not None:
        name = frame.f_code.co_filename
        if "/tilpheno/" in name:
            return name.rsplit("/tilpheno/", 1)[1] + ":" + frame.f_code.co_name
        frame = frame.f_back
    return ""


def sampled_cli(argv: list[str]) -> None:
    """``tilpheno`` + ``argv`` (a ``--jobs 1`` run) in this process, each product run ``$TILPHENO_BENCH_STAGES_REPEAT``
    times (its last outcome kept), every product run but the process's first (its fresh pages) sampled: every 2 ms
    of the process's CPU (``ITIMER_PROF``) the CPU seconds (``process_time``) and minor faults since the last sample
    go to the innermost tilpheno frame's module and function. Writes ``{"stages": {where: [s, faults]},
    "products": [[CPU s, minor faults], ...]}`` (JSON) to ``$TILPHENO_BENCH_STAGES`` (``stages``)."""
    import resource
    import signal
    from collections import defaultdict

    import tilpheno.pipeline.executors as executors
    from tilpheno.pipeline.product import process_product

    spent: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    products: list[list[float]] = []
    last = {"on": False, "cpu": 0.0, "faults": 0}

    def sample(signum, frame) -> None:
        if last["on"]:
            cpu, faults = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            where = spent[_innermost_tilpheno(frame)]
            where[0] += cpu - last["cpu"]
            where[1] += faults - last["faults"]
            last["cpu"], last["faults"] = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def sampled_run_product(job):
        outcome = None
        for _ in range(int(os.environ[STAGES_REPEAT])):
            before = resource.getrusage(resource.RUSAGE_SELF)
            last.update(on=bool(products), cpu=time.process_time(), faults=before.ru_minflt)
            outcome = process_product(job)
            sample(None, sys._getframe())   # the product's end since the last sample
            last["on"] = False
            after = resource.getrusage(resource.RUSAGE_SELF)
            products.append([after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                             after.ru_minflt - before.ru_minflt])
        return outcome

    executors.run_product = sampled_run_product
    signal.signal(signal.SIGPROF, sample)
    signal.setitimer(signal.ITIMER_PROF, 0.002, 0.002)
    _run_cli(argv)
    signal.setitimer(signal.ITIMER_PROF, 0, 0)
    Path(os.environ[STAGES_RESULT]).write_text(json.dumps({"stages": spent, "products": products}))


def _sampled_process(tree: Path, cohort: Path, work: Path, tag: str, repeat: int) -> tuple[subprocess.Popen, Path]:
    result = work / f"{tag}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(HERE)]), STAGES_RESULT: str(result),
           STAGES_REPEAT: str(repeat)}
    argv = ["process", str(cohort), "-o", str(work / tag), "--manifest", str(cohort / "manifest.csv"), "--no-cache"]
    return subprocess.Popen([sys.executable, "-c", f"import bench_scale; bench_scale.sampled_cli({argv!r})"],
                            env=env, stdout=subprocess.DEVNULL, cwd=str(tree)), result


def per_product(run: dict) -> dict[str, float]:
    """A sampled run's CPU seconds per sampled product run by stage (:func:`stage_of`), and ``product`` (the
    mean CPU seconds of its sampled product runs) and ``faults`` (their mean minor faults)."""
    sampled = run["products"][1:]
    stages: dict[str, float] = {}
    for where, (cpu, _) in run["stages"].items():
        stages[stage_of(where)] = stages.get(stage_of(where), 0.0) + cpu / len(sampled)
    return {**stages, "product": sum(p[0] for p in sampled) / len(sampled),
            "faults": sum(p[1] for p in sampled) / len(sampled)}


def stage_table(alone: list[dict[str, float]], beside: list[dict[str, float]]) -> str:
    """Markdown: per stage (:func:`per_product` of each run) the median over the runs of CPU ms per product alone
    and beside, their ratio and the stage's share of the product's difference (beside - alone), dearest first;
    then the product's CPU, its ratio (the inflation factor) and minor faults."""
    import statistics

    def median(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in runs)

    names = sorted({k for r in alone + beside for k in r} - {"product", "faults"}, key=lambda k: -median(alone, k))
    gap = median(beside, "product") - median(alone, "product")
    lines = ["| stage | alone ms per product | beside ms | beside / alone | share of the product's difference |",
             "|---|---|---|---|---|"]
    for name in names:
        a, b = 1000 * median(alone, name), 1000 * median(beside, name)
        share = f"{(b - a) / (1000 * gap):+.0%}" if gap else "-"
        lines.append(f"| {name} | {a:.1f} | {b:.1f} | {b / a if a else float('nan'):.2f} | {share} |")
    a, b = median(alone, "product"), median(beside, "product")
    lines.append(f"| **product (CPU s, medians of {len(alone)} / {len(beside)} runs)** | {a:.3f} | {b:.3f} | "
                 f"**{b / a:.3f}** | minor faults {median(alone, 'faults'):,.0f} / {median(beside, 'faults'):,.0f} |")
    return "\n".join(lines)


def stages(args) -> None:
    """Where a product's CPU inflates beside another: per stage, alone against two identical runs at once (module
    docstring)."""
    byte_compile(args.tree)
    work = Path(tempfile.mkdtemp(prefix="scale-st-"))
    alone: list[dict[str, float]] = []
    beside: list[dict[str, float]] = []
    loads = []
    try:
        for r in range(args.rounds):
            loads.append(load())
            proc, result = _sampled_process(args.tree, args.cohort, work, f"alone-{r}", args.product_repeat)
            proc.wait()
            alone.append(per_product(json.loads(result.read_text())))
            started = [_sampled_process(args.tree, args.cohort, work, f"beside{i}-{r}", args.product_repeat)
                       for i in range(2)]
            for proc, _ in started:
                proc.wait()
            beside.extend(per_product(json.loads(result.read_text())) for _, result in started)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(stage_table(alone, beside))
    print(f"\n{args.rounds} rounds, each product run {args.product_repeat} times a process (the first not sampled); "
          f"load before each round: {', '.join(f'{x:.1f}' for x in loads)}")


def scan(args) -> None:
    """``scan_folder`` of ``--files`` files (symbolic links to the cohort's files, renamed so that
    every 9 make a new product): wall and CPU seconds, and bytes read per file (``rchar`` of
    ``/proc/self/io``), against the files' mean size: only HEADER and TEXT are read."""
    from tilpheno.io.manifest import scan_folder

    work = Path(tempfile.mkdtemp(prefix="scale-scan-"))
    sources = sorted(args.cohort.glob("*.fcs"))
    per_product = {}
    for f in sources:
        per_product.setdefault(f.name.split("_", 1)[0], []).append(f)
    tubes = list(per_product.values())
    n = 0
    while n < args.files:
        for f in tubes[(n // 9) % len(tubes)]:
            if n >= args.files:
                break
            (work / f"P{n // 9:06d}_{f.name.split('_', 1)[1]}").symlink_to(f)
            n += 1

    def rchar() -> int:
        with open("/proc/self/io") as fh:
            return int(next(line for line in fh if line.startswith("rchar")).split()[1])

    before, r0, c0, t0 = load(), rchar(), time.process_time(), time.perf_counter()
    frame = scan_folder(work)
    wall, cpu, read = time.perf_counter() - t0, time.process_time() - c0, rchar() - r0
    mean_size = sum(f.stat().st_size for f in sources) / len(sources)
    print(f"| scan of {len(frame)} files ({frame['product_id'].nunique()} products) | {wall:.1f} s wall, {cpu:.1f} s CPU "
          f"({1e3 * cpu / len(frame):.2f} ms per file) | load {before:.1f} | {read / len(frame) / 1024:.1f} KiB read per file, "
          f"files are {mean_size / 1024:.0f} KiB; problems: {int((frame['problem'] != '').sum())} |")
    shutil.rmtree(work, ignore_errors=True)


def _baseline_tree(commit: str) -> Path:
    """A detached ``git worktree`` of this repository at ``commit`` in a temporary folder."""
    repo = HERE.parent
    tree = Path(tempfile.mkdtemp(prefix="scale-baseline-")) / "tree"
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), commit], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return tree


def _remove_tree(tree: Path) -> None:
    subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(tree)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(tree.parent, ignore_errors=True)


def _dask_cluster(tree: Path):
    """A LocalCluster of two single-threaded worker processes, their libraries imported (the
    preload a deployment gives ``dask worker``, see the README), this tree first on their path."""
    from distributed import Client, LocalCluster

    byte_compile(tree)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(tree), str(HERE)])   # inherited by the workers (HERE: `timeline`)
    sys.path.insert(0, str(tree))
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, worker_dashboard_address=None)
    with Client(cluster) as client:
        client.wait_for_workers(2)
        client.run(_warm_worker)
    return cluster


def _process_cpu() -> float:
    """CPU seconds (user + system) of the calling process (run on each Dask worker)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _workers_cpu(address: str) -> float:
    """Sum of the CPU seconds the cluster's worker processes have used so far."""
    from distributed import Client

    with Client(address) as client:
        return sum(client.run(_process_cpu).values())


def _warm_worker(dask_worker=None) -> None:
    """What ``dask worker --preload tilpheno.daskworker`` does at a worker's start (README); ``client.run``
    passes the worker (for the preload's profiler stop, where the tree has it)."""
    import inspect

    try:
        from tilpheno.daskworker import dask_setup
    except ImportError:   # an older tree: import what its first product would
        import importlib

        for name in ("tilpheno.pipeline", "tilpheno.phenotype", "tilpheno.report.product", "sklearn.mixture"):
            importlib.import_module(name)
        return
    if inspect.signature(dask_setup).parameters:
        dask_setup(dask_worker)   # as the preload calls it (this tree's profiler stop too, where it has one)
    else:
        dask_setup()


def everything(args) -> None:
    """The one command for the lead: every speed ratio of issue 18 in one run (module docstring)."""
    import pandas as pd

    from run import bench_gating

    cohort = args.cohort
    if not (cohort / "manifest.csv").exists():
        subprocess.run([sys.executable, str(HERE / "make_cohort.py"), "--out", str(cohort), "--products", "4",
                        "--events", "200000"], check=True, env={**os.environ, "PYTHONPATH": str(args.tree)})
    work = Path(tempfile.mkdtemp(prefix="scale-all-"))
    baseline = args.baseline or (_baseline_tree(args.baseline_commit) if args.baseline_commit else None)
    t_start = time.perf_counter()
    runs: dict[str, list[dict]] = {}
    spins: list[dict] = []
    try:
        halves = split_cohort(cohort, work / "halves")
        for r in range(args.rounds):
            for name, tree, extra in [("baseline --jobs 1", baseline, ()), ("now --jobs 1", args.tree, ("--no-cache",)),
                                      ("now --jobs 2", args.tree, ("--no-cache", "--jobs", "2"))]:
                if tree is not None:
                    runs.setdefault(name, []).append(run_process(tree, cohort, work / f"{name.replace(' ', '_')}-{r}", *extra))
            runs.setdefault(HALVES, []).append(two_halves_at_once(args.tree, halves, work / f"halves-{r}"))
            spins.append(spin_capacity())
        cluster = _dask_cluster(args.tree)
        try:
            for r in range(args.rounds):
                before_cpu = _workers_cpu(cluster.scheduler_address)
                result = run_process(args.tree, cohort, work / f"dask-{r}", "--no-cache", "--executor", "dask",
                                     "--scheduler", cluster.scheduler_address)
                result["workers_cpu"] = _workers_cpu(cluster.scheduler_address) - before_cpu
                runs.setdefault("now dask, 2 workers", []).append(result)
        finally:
            cluster.close()
        same_jobs = outputs(work / "now_--jobs_1-0") == outputs(work / "now_--jobs_2-0")
        same_dask = outputs(work / "now_--jobs_1-0") == outputs(work / "dask-0")
        from tilpheno.gates.strategy import load_strategy
        from tilpheno.study import default_study

        strategies = [load_strategy(p) for p in default_study().strategy_paths]
        manifest = pd.read_csv(cohort / "manifest.csv")
        manifest["file"] = [str(cohort / f) for f in manifest["file"]]
        load_fk = load()
        gating = bench_gating(manifest, strategies, args.repeat, work)
    finally:
        if baseline is not None and args.baseline is None:
            _remove_tree(baseline)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    def least(name: str, key: str) -> dict:
        return min(runs[name], key=lambda r: r[key])

    lines = ["| run | least wall of the rounds | least CPU (process tree) | load before | notes |", "|---|---|---|---|---|"]
    for name, rs in runs.items():
        w, c = least(name, "wall"), least(name, "cpu")
        cpu_note = (f"client process only; the 2 workers: {min(r['workers_cpu'] for r in rs):.1f} s CPU"
                    if "dask" in name else "")
        loads = ", ".join(f"{r['load']:.1f}" for r in rs)
        lines.append(f"| {name} | {w['wall']:.1f} s | {c['cpu']:.1f} s | {loads} | {cpu_note} |")
    one = least("now --jobs 1", "wall")["wall"]
    lines += ["", "| Done when | target | measured |", "|---|---|---|"]
    if "baseline --jobs 1" in runs:
        b_cpu, n_cpu = least("baseline --jobs 1", "cpu")["cpu"], least("now --jobs 1", "cpu")["cpu"]
        b_wall = least("baseline --jobs 1", "wall")["wall"]
        lines.append(f"| whole pipeline (gating + reports), throughput per core vs {args.baseline_commit or args.baseline} "
                     f"| >= 2x | **{b_cpu / n_cpu:.2f}x** (CPU s {b_cpu:.1f} / {n_cpu:.1f}); wall {b_wall / one:.2f}x |")
    lines.append(f"| --jobs 2 vs --jobs 1 (wall) | >= 1.8x | **{one / least('now --jobs 2', 'wall')['wall']:.2f}x**; "
                 f"outputs identical: {same_jobs} |")
    lines.append(f"| (reference) {ceiling_line(runs['now --jobs 1'], runs['now --jobs 2'], runs[HALVES])} | | |")
    lines.append("| (reference) the machine: two pure-Python CPU loops at once / one alone (`spin_capacity`, each round) | | "
                 + ", ".join(f"{c['ratio']:.2f}x (CPU per wall s {c['cpu_share']:.2f})" for c in spins) + " |")
    lines.append(f"| Dask, 2 worker processes vs --jobs 1 (wall) | >= 1.7x | "
                 f"**{one / least('now dask, 2 workers', 'wall')['wall']:.2f}x**; outputs identical: {same_dask} |")
    lines.append(gating_row(gating, args.repeat, load_fk))
    lines.append(f"\n{len(runs.get('now --jobs 1', []))} round(s), {time.perf_counter() - t_start:.0f} s in all; "
                 f"cohort {cohort}; {os.cpu_count()} CPUs; load average now {load():.1f}")
    print("\n".join(lines))


def gating_row(gating: dict, repeat: int, load_before: float) -> str:
    """The FlowKit comparison's row of the ``all`` table (``run.bench_gating``'s result)."""
    return (f"| gating alone, same {gating['n_gates']} fixed gates, per file ({gating['events']} events: read + "
            f"compensate + transform + gates) vs FlowKit Sample + gate_sample (CPU s, median of {repeat}) | >= 10x | "
            f"**{gating['t_flowkit_file'] / gating['t_ours_file']:.1f}x** ({gating['t_ours_file']:.4f} vs "
            f"{gating['t_flowkit_file']:.4f}); + SHA-256 of the file: {gating['t_flowkit_file'] / gating['t_ours_file_digest']:.1f}x "
            f"({gating['t_ours_file_digest']:.4f}); counts max abs difference {gating['count_max_abs_diff']}; "
            f"load {load_before:.1f} |")


def gating(args) -> None:
    """Only the FlowKit comparison of ``all`` (``run.bench_gating``) on ``--cohort``."""
    import pandas as pd

    from run import bench_gating
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.study import default_study

    strategies = [load_strategy(p) for p in default_study().strategy_paths]
    manifest = pd.read_csv(args.cohort / "manifest.csv")
    manifest["file"] = [str(args.cohort / f) for f in manifest["file"]]
    work = Path(tempfile.mkdtemp(prefix="scale-gating-"))
    try:
        before = load()
        result = bench_gating(manifest, strategies, args.repeat, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| Done when | target | measured |\n|---|---|---|\n" + gating_row(result, args.repeat, before))
    print(f"tilpheno parts: whole analyze_product {result['t_analyze_product']:.2f} s; the {result['n_gates']} gates as masks "
          f"{result['t_masks']:.4f} s; FlowKit gate_sample without Sample {result['t_flowkit_gate_sample']:.4f} s")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("incremental", "memory", "throughput", "analysis", "parallel", "timeline", "contention",
                                       "stages", "capacity", "scan", "gating", "all"))
    ap.add_argument("--cohort", type=Path, help="folder from benchmarks/make_cohort.py")
    ap.add_argument("--make-cohort", type=Path, help="`all`: the issue's folder here (written first if missing)")
    ap.add_argument("--baseline-commit", default=None, help="`all`: commit to compare against (git worktree)")
    ap.add_argument("--repeat", type=int, default=5, help="`all`, `gating`: repeats of the FlowKit comparison")
    ap.add_argument("--tree", type=Path, default=HERE.parent, help="tilpheno checkout to run (default: this one)")
    ap.add_argument("--baseline", type=Path, default=None, help="older tilpheno checkout for `throughput`, `analysis`")
    ap.add_argument("--small", type=int, default=20, help="products of the small memory run")
    ap.add_argument("--rounds", type=int, default=2,
                    help="interleaved rounds of `throughput`, `analysis`, `parallel`, `contention` and `all`")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--jobs", type=int, default=2, help="`timeline`: --jobs of the traced run")
    ap.add_argument("--dask", action="store_true", help="`timeline`: trace a run on a 2-worker LocalCluster instead")
    ap.add_argument("--files", type=int, default=10_000, help="files for `scan`")
    ap.add_argument("--product-repeat", type=int, default=3, help="`stages`: times each product is run in a process")
    args = ap.parse_args(argv)
    args.cohort = args.cohort or args.make_cohort
    if args.cohort is None:
        ap.error("--cohort (or, for `all`, --make-cohort) is required")
    args.cohort, args.tree = args.cohort.resolve(), args.tree.resolve()   # the runs' working directory is the tree
    args.baseline = args.baseline.resolve() if args.baseline else None
    {"incremental": incremental, "memory": memory, "throughput": throughput, "parallel": parallel,
     "timeline": timeline, "contention": contention, "stages": stages, "capacity": capacity, "scan": scan, "gating": gating, "analysis": analysis, "all": everything}[args.what](args)


if __name__ == "__main__":
    main()
