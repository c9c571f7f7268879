"""What issue 15 adds to per-product gating time, run by hand.

``analyze_product`` (as the pipeline calls it, ``plot_events=PLOT_EVENTS``) on simulated products,
CPU seconds (``time.process_time``, single-threaded BLAS), median of ``--repeats`` runs, three ways:

- baseline: ``acquisition_qc: {mode: "off"}`` and the residual-spillover check disabled (the gating
  of before issue 15);
- + acquisition QC: step 0 in ``remove`` mode (the default);
- + acquisition QC + residual-spillover check (the default pipeline).

The end-to-end ratios carry the noise of a shared machine (several percent between repeats of the
same run), so the CPU seconds spent inside step 0 itself (``phenotype.acquisition_step``, summed
over the product's files) are also measured directly, and reported as a share of the baseline.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_acquisition_overhead.py --products 3 --events 20000 100000
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from tilpheno import phenotype
from tilpheno.gates.strategy import default_strategy_paths, parse_strategy
from tilpheno.simulate.cohort import manifest_rows, simulate_product, write_product


def strategies(mode: str):
    return [parse_strategy(re.sub(r"^  mode: remove\b", f"  mode: {mode}", p.read_text(), flags=re.MULTILINE), str(p))
            for p in default_strategy_paths()]


def cpu(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--products", type=int, default=3)
    ap.add_argument("--events", type=int, nargs="+", default=[20000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=15)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_acq_"))
    print(f"load average at start (1, 5, 15 min): {os.getloadavg()}")
    off, on = strategies('"off"'), strategies("remove")
    real_check = phenotype.compensation_check
    real_step = phenotype.acquisition_step
    inside = [0.0]

    def timed_step(*a, **k):
        t0 = time.process_time()
        try:
            return real_step(*a, **k)
        finally:
            inside[0] += time.process_time() - t0

    phenotype.acquisition_step = timed_step
    with threadpool_limits(1):
        for n in args.events:
            rows = {"baseline": [], "+ acquisition QC": [], "+ acquisition QC + residual check": []}
            step0 = []
            for k in range(args.products):
                sim = simulate_product(f"TIL{k + 1:03d}", args.seed + k, n)
                folder = work / f"{n}_{sim.product_id}"
                folder.mkdir()
                write_product(sim, folder)
                m = pd.DataFrame(manifest_rows(sim))
                m["file"] = [str(folder / f) for f in m["file"]]

                def run(strats):
                    phenotype.analyze_product(sim.product_id, m, strats, plot_events=phenotype.PLOT_EVENTS)

                phenotype.compensation_check = lambda *a, **k: None
                rows["baseline"].append(cpu(lambda: run(off), args.repeats))
                inside[0] = 0.0
                rows["+ acquisition QC"].append(cpu(lambda: run(on), args.repeats))
                step0.append(inside[0] / args.repeats)
                phenotype.compensation_check = real_check
                rows["+ acquisition QC + residual check"].append(cpu(lambda: run(on), args.repeats))
            base = np.array(rows["baseline"])
            for name, values in rows.items():
                v = np.array(values)
                print(f"{n:>8} events/tube  {name:<36} CPU s per product {np.round(v, 3).tolist()}  "
                      f"ratio to baseline {np.round(v / base, 3).tolist()} (median {np.median(v / base):.3f})")
            share = np.array(step0) / base
            print(f"{n:>8} events/tube  step 0 alone (CPU s inside acquisition_step per product) {np.round(step0, 3).tolist()}  "
                  f"share of baseline {np.round(share, 3).tolist()} (median {np.median(share):.3f})")

    print(f"load average at end (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()
