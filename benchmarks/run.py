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
4. per file, FlowKit (Sample + gate_sample) against tilpheno (read + compensate + transform + masks);
5. the whole ``tilpheno process`` (gate placement, reports, tables) with ``--jobs 1`` and ``--jobs 2``
   in subprocesses: seconds per product, events per second, peak RSS of the largest process;
6. CLI import time (``python -X importtime -c "import tilpheno.cli"``).

Timings of steps are the best of ``--repeat`` runs in CPU seconds (``time.process_time``), which other
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
    """Minimum CPU time (``time.process_time``: this process, all threads) over ``repeat`` calls.

    CPU time, not wall time, so that other work on a shared machine does not distort the ratios.
    """
    times, value = [], None
    for _ in range(repeat):
        t = time.process_time()
        value = fn()
        times.append(time.process_time() - t)
    return min(times), value


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
    return {p: int(m.sum()) for p, m in masks.items()}


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
    export_tube_gatingml(tube, xml, {d: strategy.transform_for(d) for d in strategy.dims})
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

    def ours_per_file():
        fcs = read_fcs(fcs_path)
        loaded = load_tube(fcs, tube.detectors, strategy, tube="surface", role="stain")
        return _apply_masks(tube.gates, loaded.data, fcs.n_events)

    t_ours_file, _ = best(ours_per_file, repeat)
    return {
        "product": pid, "t_analyze_product": t_product, "n_gates": len(tube.gates), "events": tube.n_events,
        "t_masks": t_masks, "t_flowkit_gate_sample": t_fk - t_fk_read, "t_flowkit_file": t_fk,
        "t_ours_file": t_ours_file, "count_max_abs_diff": max(diffs.values()) if diffs else None,
        "n_compared": len(diffs),
    }


def _watch(proc: subprocess.Popen, interval: float = 0.05) -> dict:
    """Sample the process tree until ``proc`` exits: peak RSS of any one process and of the whole
    tree, and CPU seconds (user + system, last value seen per process)."""
    import psutil

    root = psutil.Process(proc.pid)
    peak_one = peak_tree = 0
    cpu: dict[int, float] = {}
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
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


def bench_memory(folder: Path, work: Path) -> dict:
    """Peak RSS of ``process --jobs 1`` on one product vs on the whole ``folder`` (e.g. 500 files)."""
    manifest = pd.read_csv(folder / "manifest.csv")
    first = sorted(manifest["product_id"].unique())[0]
    one = work / "one_product.csv"
    manifest[manifest["product_id"] == first].to_csv(one, index=False)
    small = bench_process(folder, one, 1, work / "mem_one")
    full = bench_process(folder, folder / "manifest.csv", 1, work / "mem_all")
    largest = max((folder / f).stat().st_size for f in manifest["file"])
    return {"n_files": len(manifest), "one": small, "all": full, "largest_file_mb": largest / 2**20,
            "events": manifest_events(folder / manifest["file"].iloc[0])}


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
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-process", action="store_true")
    ap.add_argument("--memory-folder", type=Path, default=None,
                    help="cohort folder (e.g. 56 products = 504 files) for the memory-scaling run")
    ap.add_argument("--read-file", type=Path, default=None, help="FCS file for the read benchmark (e.g. a 1M-event file)")
    args = ap.parse_args(argv)

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
        mem = bench_memory(args.memory_folder, work)
        array_mb = mem["events"] * rd["channels"] * 8 / 2**20
        lines.append(
            f"| memory: process --jobs 1, peak RSS, 1 product vs {mem['n_files']} files | "
            f"{mem['one']['peak_one_mb']:.0f} MB vs {mem['all']['peak_one_mb']:.0f} MB | largest file "
            f"{mem['largest_file_mb']:.1f} MB on disk, {array_mb:.1f} MB as a float64 event array | "
            f"growth {mem['all']['peak_one_mb'] - mem['one']['peak_one_mb']:+.0f} MB |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
