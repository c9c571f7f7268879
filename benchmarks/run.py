"""Benchmarks of the whole chain, with FlowKit on the same files and gates (run by hand).

    .venv/bin/python benchmarks/make_cohort.py --out /tmp/bench --products 12 --events 100000
    .venv/bin/python benchmarks/run.py --cohort /tmp/bench --products 12   # or `make bench` (generates one)

Measures, on the cohort's files:
1. reading: ``read_fcs`` against ``np.fromfile`` of the DATA segment (the practical limit);
2. compensation + transform: ``phenotype.load_tube`` against FlowKit ``Sample.apply_compensation``
   + ``apply_transform(LogicleTransform)``;
3. gating with the same gates: one product is gated by tilpheno; its resolved stained-tube gates
   (same thresholds, polygons, ellipses) are applied as numpy masks and, exported as Gating-ML 2.0
   (``gatingml.export_tube_gatingml``), by FlowKit ``GatingStrategy.gate_sample`` (which includes FlowKit's compensation + transform);
   population counts are compared;
4. per file, FlowKit (Sample + gate_sample) against tilpheno (read + compensate + transform + masks;
   the file's SHA-256, which the pipeline records for provenance and FlowKit does not compute, is
   timed separately: ``t_ours_file_digest``);
5. the whole ``tilpheno process`` (gate placement, reports, tables) with ``--jobs 1`` and ``--jobs 2``
   in subprocesses: seconds per product, events per second, peak RSS of the largest process;
   memory (``--memory-folder``, repeatable): ``process --jobs 1`` on the folder's first product and on
   the whole folder, each in a fresh process that first imports every module the pipeline uses
   (``PIPELINE_MODULES``; the RSS then is the libraries' baseline) and reports the kernel's peak RSS
   (``VmHWM``) and the increment above the baseline, against 3x the largest file's float64 event
   array (``--memory-only`` runs just these);
6. CLI import time (``python -X importtime -c "import tilpheno.cli"``).

Timings of steps are the median of ``--repeat`` runs in CPU seconds (``time.process_time``), which other
work on a shared machine does not inflate; the ``process`` runs report wall and CPU time and the load
average before each run. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

VENV_BIN = Path(sys.executable).parent


def best(fn, repeat: int) -> tuple[float, object]:
    """Median CPU time (``time.process_time``: this process, all threads) over ``repeat`` calls.

    CPU time, not wall time, so that other work on a shared machine does not distort the ratios;
    the median, not the minimum, so that one lucky run does not decide a ratio.
    """
    times, value = [], None
    for _ in range(repeat):
        t = time.process_time()
        value = fn()
        times.append(time.process_time() - t)
    return float(np.median(times)), value


def manifest_events(path: Path) -> int:
    from tilpheno.io.fcs import read_fcs_metadata

    return int(read_fcs_metadata(path).keywords["$TOT"])


def bench_read(path: Path, repeat: int) -> dict:
    from tilpheno.io.fcs import read_fcs, read_fcs_metadata

    meta = read_fcs_metadata(path)
    begin, n_par, n_tot = int(meta.keywords["$BEGINDATA"]), int(meta.keywords["$PAR"]), int(meta.keywords["$TOT"])
    dtype = "<f4" if meta.keywords.get("$BYTEORD", "1,2,3,4").startswith("1") else ">f4"
    t_np, raw = best(lambda: np.fromfile(path, dtype=dtype, count=n_par * n_tot, offset=begin).reshape(n_tot, n_par), repeat)
    t_read, fcs = best(lambda: read_fcs(path), repeat)
    cols = [i for i, n in enumerate(fcs.channel_names) if n != "Time"]  # Time is scaled by $TIMESTEP
    assert np.array_equal(fcs.events[:, cols], raw[:, cols].astype(np.float64)), "read_fcs disagrees with np.fromfile"
    t_hashed, _ = best(lambda: read_fcs(path).sha256, repeat)  # process records every input's digest
    return {"events": n_tot, "channels": n_par, "t_fromfile": t_np, "t_read_fcs": t_read, "t_read_sha": t_hashed}


def bench_comp_transform(path: Path, strategy, repeat: int) -> dict:
    import flowkit as fk

    from tilpheno.io.fcs import read_fcs
    from tilpheno.panel import panel_from_fcs
    from tilpheno.phenotype import load_tube

    fcs = read_fcs(path)
    panel = panel_from_fcs(fcs)
    detectors = {m: panel[m] for m in strategy.markers if m in panel}
    t_ours, _ = best(lambda: load_tube(fcs, detectors, strategy, tube=strategy.tube, role="stain"), repeat)
    logicle = fk.transforms.LogicleTransform(262144, 0.5, 4.5, 0)

    def flowkit():
        s = fk.Sample(str(path))
        s.apply_compensation(s.metadata["spillover"])
        s.apply_transform(logicle)
        return s.get_events("xform")

    t_fk_total, _ = best(flowkit, repeat)
    t_fk_read, _ = best(lambda: fk.Sample(str(path)), repeat)
    return {"t_ours": t_ours, "t_flowkit": max(t_fk_total - t_fk_read, 1e-9), "t_flowkit_read": t_fk_read}


def _apply_masks(gates, data, n_events: int) -> dict[str, int]:
    """Population counts from resolved gates applied as numpy masks down the tree."""
    from tilpheno.gates.geometry import BooleanGate

    masks = {}
    everything = np.ones(n_events, dtype=bool)
    for pop, parent, gate, _ in gates:
        own = gate.evaluate(masks) if isinstance(gate, BooleanGate) else gate.contains(data)
        masks[pop] = own & masks.get(parent, everything)
    return {p: int(np.count_nonzero(m)) for p, m in masks.items()}


def bench_gating(manifest: pd.DataFrame, strategies, repeat: int, workdir: Path) -> dict:
    import flowkit as fk

    from tilpheno.gates.gatingml import export_tube_gatingml, gatingml_id
    from tilpheno.io.fcs import read_fcs
    from tilpheno.phenotype import analyze_product, load_tube

    pid = sorted(manifest["product_id"].unique())[0]
    rows = manifest[manifest["product_id"] == pid]
    t_product, result = best(lambda: analyze_product(pid, rows, strategies), 1)
    tube = next(t for t in result.tubes if t.role == "stain" and t.tube == "surface")
    strategy = next(s for s in strategies if s.tube == "surface")
    xml = workdir / "surface_gates.xml"
    # on the transformed scale (logicle/arcsinh with their transformation, as the issue's FlowKit
    # figure): with thresholds on the linear scale FlowKit would skip the transforms the pipeline does
    export_tube_gatingml(tube, xml, {d: strategy.transform_for(d) for d in strategy.dims}, linear_thresholds=False)
    ids = {pop: gatingml_id(pop) for pop, *_ in tube.gates}
    t_masks, ours = best(lambda: _apply_masks(tube.gates, tube.data, tube.n_events), repeat)
    gs = fk.parse_gating_xml(str(xml))

    def flowkit_gate():
        return gs.gate_sample(fk.Sample(tube.file))

    t_fk, res = best(flowkit_gate, repeat)
    t_fk_read, _ = best(lambda: fk.Sample(tube.file), repeat)
    report = res.report
    theirs = {}
    for pop, gid in ids.items():
        hit = report[report["gate_name"] == gid]
        if len(hit):
            theirs[pop] = int(hit["count"].iloc[0])
    diffs = {p: abs(ours[p] - theirs[p]) for p in theirs}
    fcs_path = Path(tube.file)

    def ours_per_file(digest: bool = False):
        # like for like with FlowKit's Sample + gate_sample: read (events decoded and scaled),
        # compensate, transform, apply the gates. The file's SHA-256 (provenance, which the
        # pipeline records and FlowKit does not compute) is left out unless ``digest``.
        fcs = read_fcs(fcs_path)
        if not digest:
            fcs.sha256 = ""
        loaded = load_tube(fcs, tube.detectors, strategy, tube="surface", role="stain")
        return _apply_masks(tube.gates, loaded.data, fcs.n_events)

    t_ours_file, _ = best(ours_per_file, repeat)
    t_ours_digest, _ = best(lambda: ours_per_file(digest=True), repeat)
    return {
        "product": pid, "t_analyze_product": t_product, "n_gates": len(tube.gates), "events": tube.n_events,
        "t_masks": t_masks, "t_flowkit_gate_sample": t_fk - t_fk_read, "t_flowkit_file": t_fk,
        "t_ours_file": t_ours_file, "t_ours_file_digest": t_ours_digest,
        "count_max_abs_diff": max(diffs.values()) if diffs else None,
        "n_compared": len(diffs),
    }


def _watch(proc: subprocess.Popen, interval: float = 0.05, tree_every: int = 5) -> dict:
    """Sample the process tree until ``proc`` exits: peak RSS of any one process and of the whole
    tree, and CPU seconds (user + system, last value seen per process).

    The tree's members are looked up every ``tree_every`` samples (every 0.25 s by default), their
    memory and CPU read at every sample: psutil finds a process's descendants by reading the parent
    of every process on the machine, and doing it at every sample cost the watcher 53 ms of CPU per
    second of the run with 141 processes on the machine (13 ms every 0.25 s; stop 61), taken from the
    two cores a ``--jobs 2`` run (and the two halves' two watchers) keeps busy, not from ``--jobs 1``'s
    idle second core. A process that lives less than that between two look-ups may be missed."""
    import psutil

    root = psutil.Process(proc.pid)
    peak_one = peak_tree = 0
    cpu: dict[int, float] = {}
    procs: list = []
    samples = 0
    while proc.poll() is None:
        if samples % tree_every == 0:
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
        samples += 1
        total = 0
        for p in procs:
            try:
                rss = p.memory_info().rss
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            cpu[p.pid] = t.user + t.system
            total += rss
            peak_one = max(peak_one, rss)
        peak_tree = max(peak_tree, total)
        time.sleep(interval)
    return {"peak_one_mb": peak_one / 2**20, "peak_tree_mb": peak_tree / 2**20, "cpu_s": sum(cpu.values())}


def bench_process(cohort: Path, manifest_csv: Path, jobs: int, out: Path) -> dict:
    """``tilpheno process`` in a subprocess: wall time, CPU time and peak RSS of the process tree."""
    cmd = [str(VENV_BIN / "tilpheno"), "process", str(cohort), "-o", str(out), "--manifest", str(manifest_csv),
           "--jobs", str(jobs)]
    load = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    usage = _watch(proc)
    _, err = proc.communicate()
    seconds = time.perf_counter() - t
    if proc.returncode not in (0, 1):
        raise RuntimeError(err[-2000:])
    return {"jobs": jobs, "seconds": seconds, "load_before": load, "exit": proc.returncode, **usage}


# Everything `tilpheno process --jobs 1` imports (checked: `memory_child` reports any module first
# imported while data are processed); importing them first gives the libraries' baseline RSS.
PIPELINE_MODULES = (
    "tilpheno.cli", "tilpheno.pipeline", "tilpheno.phenotype", "tilpheno.io.fcs", "tilpheno.io.manifest",
    "tilpheno.io.atomic", "tilpheno.panel", "tilpheno.compensation", "tilpheno.transforms",
    "tilpheno.gates.strategy", "tilpheno.gates.placement", "tilpheno.gates.geometry", "tilpheno.release",
    "tilpheno.provenance", "tilpheno.report.product", "tilpheno.report.plots", "tilpheno.report.html",
    "threadpoolctl", "numpy", "pandas", "pyarrow", "pyarrow.parquet", "jinja2", "yaml",
    "matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg", "matplotlib.colors",
    "matplotlib.patches", "matplotlib.ticker", "matplotlib.font_manager",
    "PIL.Image", "PIL.PngImagePlugin", "PIL.BmpImagePlugin", "PIL.GifImagePlugin", "PIL.JpegImagePlugin",
    "PIL.PpmImagePlugin", "concurrent.futures.thread", "email.parser", "encodings.unicode_escape",
    "encodings.utf_8_sig", "pandas.io.formats.csvs", "pandas.core.arrays.arrow.extension_types", "pyarrow.pandas_compat",
)


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """This process's peak RSS (``VmHWM``, of its own address space). Not ``ru_maxrss``: Linux carries
    that over ``exec`` from the forked copy of the parent, so a big parent would set the child's peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_child(folder: Path, manifest_csv: Path, out: Path) -> dict:
    """In a fresh process: import the pipeline's modules (baseline RSS), then ``process_folder``
    with one job (what ``tilpheno process --jobs 1`` runs); peak RSS is the kernel's high-water
    mark of the process (``VmHWM``), so no sampling interval can miss a short peak."""
    import importlib
    import sys

    for name in PIPELINE_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    baseline = _rss()
    peak_before = _peak_rss()
    modules = set(sys.modules)
    from tilpheno.pipeline import process_folder

    t = time.perf_counter()
    summary = process_folder(folder, out, manifest_csv=manifest_csv, n_jobs=1)
    seconds = time.perf_counter() - t
    peak = _peak_rss()
    late = sorted(set(sys.modules) - modules)
    return {"baseline": baseline, "peak": peak, "peak_before_run": peak_before, "seconds": seconds,
            "done": len(summary.done), "failed": len(summary.failed), "late_imports": late}


def _memory_run(folder: Path, manifest_csv: Path, out: Path) -> dict:
    import json

    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(folder), str(manifest_csv), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                                    "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_memory(folder: Path, work: Path, products: int | None = None) -> dict:
    """Peak RSS of ``process --jobs 1`` above the libraries' baseline: the folder's first product
    alone vs the whole folder (or its first ``products`` products); each run in a fresh process."""
    from tilpheno.io.fcs import read_fcs_metadata

    manifest = pd.read_csv(folder / "manifest.csv")
    ids = sorted(manifest["product_id"].unique())
    one = work / f"{folder.name}_one.csv"
    manifest[manifest["product_id"] == ids[0]].to_csv(one, index=False)
    every = work / f"{folder.name}_all.csv"
    manifest[manifest["product_id"].isin(ids[:products])].to_csv(every, index=False)
    sizes = {}
    for f in manifest["file"]:
        meta = read_fcs_metadata(folder / f, checksum=False)
        sizes[f] = int(meta.keywords["$TOT"]) * int(meta.keywords["$PAR"]) * 8
    largest = max(sizes.values())
    runs = {name: _memory_run(folder, csv, work / f"mem_{folder.name}_{name}") for name, csv in (("one", one), ("all", every))}
    n_all = len(pd.read_csv(every))
    return {"folder": str(folder), "n_files_one": int((manifest["product_id"] == ids[0]).sum()), "n_files_all": n_all,
            "largest_array": largest, "runs": runs}


def memory_lines(mem: dict) -> list[str]:
    mb = 2**20
    limit = 3 * mem["largest_array"]
    lines = []
    for name, n in (("one", mem["n_files_one"]), ("all", mem["n_files_all"])):
        r = mem["runs"][name]
        inc = r["peak"] - r["baseline"]
        lines.append(
            f"| memory: process --jobs 1, {mem['folder']}, {n} files | baseline {r['baseline'] / mb:.0f} MiB, peak "
            f"{r['peak'] / mb:.0f} MiB, increment {inc / mb:.0f} MiB | 3x largest event array {limit / mb:.0f} MiB "
            f"(array {mem['largest_array'] / mb:.1f} MiB) | {'met' if inc <= limit else 'NOT met'} ({inc / limit:.2f} of the limit); "
            f"{r['seconds']:.0f} s, late imports: {', '.join(r['late_imports']) or 'none'} |"
        )
    return lines


def bench_import(repeat: int) -> dict:
    py = sys.executable
    best_s = min(
        (lambda t0: (subprocess.run([py, "-c", "import tilpheno.cli"], check=True), time.perf_counter() - t0)[1])(time.perf_counter())
        for _ in range(repeat)
    )
    err = subprocess.run([py, "-X", "importtime", "-c", "import tilpheno.cli"], capture_output=True, text=True).stderr
    cumulative = [int(m.group(1)) for m in re.finditer(r"import time:\s+\d+ \|\s+(\d+) \| tilpheno\.cli$", err, re.M)]
    heavy = [name for name in ("pandas", "matplotlib", "scipy", "flowkit", "dask", "sklearn")
             if re.search(rf"\| {name}$", err, re.M)]
    return {"wall_s": best_s, "tilpheno_cli_cumulative_us": cumulative[0] if cumulative else None, "heavy_imported": heavy}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="tilpheno benchmarks (see module docstring)")
    ap.add_argument("--cohort", type=Path, default=None,
                    help="folder from benchmarks/make_cohort.py (default: generate 12 products x 100k events)")
    ap.add_argument("--products", type=int, default=None, help="products for the process runs (default all)")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--skip-process", action="store_true")
    ap.add_argument("--memory-folder", type=Path, action="append", default=None,
                    help="cohort folder (e.g. 56 products = 504 files) for the memory-scaling run (repeatable)")
    ap.add_argument("--read-file", type=Path, default=None, help="FCS file for the read benchmark (e.g. a 1M-event file)")
    ap.add_argument("--memory-products", type=int, default=None,
                    help="products of --memory-folder for the 'all' memory run (default all)")
    ap.add_argument("--memory-only", action="store_true", help="only the memory runs (needs --memory-folder)")
    ap.add_argument("--memory-child", nargs=3, metavar=("FOLDER", "MANIFEST", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        import json

        print(json.dumps(memory_child(*map(Path, args.memory_child))))
        return
    if args.memory_only:
        work = Path(tempfile.mkdtemp(prefix="tilpheno-bench-"))
        for folder in args.memory_folder:
            print("\n".join(memory_lines(bench_memory(folder, work, args.memory_products))))
        return

    from tilpheno.gates.strategy import default_strategy_paths, load_strategy

    if args.cohort is None:  # `make bench`
        from tilpheno.simulate.cohort import simulate_cohort

        args.cohort = simulate_cohort(Path(tempfile.mkdtemp(prefix="tilpheno-cohort-")), 12, 7, 100_000).out_dir
    strategies = [load_strategy(p) for p in default_strategy_paths()]
    surface = next(s for s in strategies if s.tube == "surface")
    manifest = pd.read_csv(args.cohort / "manifest.csv")
    manifest["file"] = [str(args.cohort / f) for f in manifest["file"]]
    keep = sorted(manifest["product_id"].unique())[: args.products]
    manifest = manifest[manifest["product_id"].isin(keep)].reset_index(drop=True)
    stained = Path(manifest.loc[(manifest["role"] == "stain") & (manifest["tube"] == "surface"), "file"].iloc[0])
    work = Path(tempfile.mkdtemp(prefix="tilpheno-bench-"))

    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # as in the pipeline's workers; keeps BLAS spin time out of the CPU times
    rd = bench_read(args.read_file or stained, args.repeat)
    ct = bench_comp_transform(stained, surface, args.repeat)
    gt = bench_gating(manifest, strategies, args.repeat, work)
    imp = bench_import(args.repeat)
    n_ev, n_files = int(manifest_events(stained)), len(manifest)
    total_events = n_files * n_ev
    lines = [
        f"cohort: {args.cohort} ({len(keep)} products, {n_files} files, {n_ev} events x {rd['channels']} channels per file); "
        f"{os.cpu_count()} CPUs",
        "",
        "| measure | tilpheno | reference | ratio |",
        "|---|---|---|---|",
        f"| read one file of {rd['events']} events (CPU s) | {rd['t_read_fcs']:.4f} | np.fromfile {rd['t_fromfile']:.4f} | {rd['t_read_fcs'] / rd['t_fromfile']:.2f}x of the limit |",
        f"| read + SHA-256 of the file, as process does (CPU s) | {rd['t_read_sha']:.4f} | np.fromfile {rd['t_fromfile']:.4f} | {rd['t_read_sha'] / rd['t_fromfile']:.2f}x |",
        f"| read throughput (events/s) | {rd['events'] / rd['t_read_fcs']:.3g} | np.fromfile {rd['events'] / rd['t_fromfile']:.3g} | |",
        f"| compensation + transform (CPU s) | {ct['t_ours']:.4f} | FlowKit {ct['t_flowkit']:.4f} | {ct['t_flowkit'] / ct['t_ours']:.1f}x faster |",
        f"| apply the same {gt['n_gates']} gates (CPU s) | numpy masks {gt['t_masks']:.4f} | FlowKit gate_sample {gt['t_flowkit_gate_sample']:.4f} | {gt['t_flowkit_gate_sample'] / gt['t_masks']:.1f}x faster |",
        f"| per file: read + comp + transform + gates (CPU s) | {gt['t_ours_file']:.4f} | FlowKit Sample + gate_sample {gt['t_flowkit_file']:.4f} | {gt['t_flowkit_file'] / gt['t_ours_file']:.1f}x throughput |",
        f"| same-gate population counts, max abs difference | {gt['count_max_abs_diff']} over {gt['n_compared']} populations | | |",
        f"| analyze_product with gate placement, 1 product of 8 gated tubes (CPU s) | {gt['t_analyze_product']:.3f} | | |",
        f"| CLI import (s, wall) | {imp['wall_s']:.3f} | tilpheno.cli cumulative {imp['tilpheno_cli_cumulative_us']} us; heavy modules imported: {imp['heavy_imported'] or 'none'} | |",
    ]
    if not args.skip_process:
        sub = work / "manifest.csv"
        manifest.to_csv(sub, index=False)
        runs = [bench_process(args.cohort, sub, j, work / f"out{j}") for j in (1, 2)]
        for r in runs:
            lines.append(
                f"| process --jobs {r['jobs']}: wall s/product, events/s; peak RSS one process / whole tree | "
                f"{r['seconds'] / len(keep):.3f} s, {total_events / r['seconds']:.3g} ev/s; "
                f"{r['peak_one_mb']:.0f} MB / {r['peak_tree_mb']:.0f} MB | total {r['seconds']:.1f} s wall, "
                f"{r['cpu_s']:.1f} s CPU; load average before {r['load_before']:.1f} | |"
            )
        lines.append(f"| --jobs 2 speed-up over --jobs 1 | {runs[0]['seconds'] / runs[1]['seconds']:.2f}x | | |")
        lines.append(f"| largest file's event array (float64) | {n_ev * rd['channels'] * 8 / 2**20:.1f} MB | | |")
    if args.memory_folder:
        for folder in args.memory_folder:
            lines.extend(memory_lines(bench_memory(folder, work, args.memory_products)))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
