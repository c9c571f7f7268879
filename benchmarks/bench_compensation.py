"""Compensation from single-stain controls against a known matrix (issue 15), run by hand.

1. Simulated single-stain controls (cells with an unstained control, and beads with internal
   negatives) made with the simulated Fortessa's matrix: the largest |recovered - true| coefficient.
2. Simulated products gated with the true and with the recovered matrix (acquisition QC off, so
   only the matrix differs): the largest difference of any study variable, in percentage points.
   The same products with the true matrix: false alarms (any compensation flag).
3. A deliberately wrong matrix, one off-diagonal coefficient +0.1 or -0.1 at a time (all 30 pairs,
   60 cases) on the first ``--wrong-products`` products: is that pair flagged (``compensation_residual``
   on the surface stained tube or one of its FMO controls, or ``compensation_negative_spillover``)?

    PYTHONPATH=. .venv/bin/python benchmarks/bench_compensation.py --products 20 --events 20000 --wrong-products 2
"""
from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tilpheno.compensation import Spillover
from tilpheno.gates.strategy import default_strategy_paths, parse_strategy
from tilpheno.phenotype import PLOT_EVENTS, analyze_product
from tilpheno.simulate import instrument as ins
from tilpheno.simulate.cohort import manifest_rows, simulate_product, write_product
from tilpheno.simulate.controls import simulate_controls
from tilpheno.spillover import controls_in_folder, estimate_spillover
from tilpheno.study import default_study


FLAGS = ("compensation_residual", "compensation_negative_spillover")   # the compensation flags


def strategies_without_step0():
    return [parse_strategy(re.sub(r"^  mode: remove\b", "  mode: flag", p.read_text(), flags=re.MULTILINE), str(p))
            for p in default_strategy_paths()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--products", type=int, default=6)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--control-events", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--skip-wrong", action="store_true")
    ap.add_argument("--wrong-products", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_comp_"))
    true = ins.true_spillover()

    for kind, unstained in (("cells", True), ("beads", False)):
        cs = simulate_controls(work / f"controls_{kind}", args.seed, n_events=args.control_events, kind=kind,
                               unstained=unstained)
        t0 = time.process_time()
        est = estimate_spillover(controls_in_folder(cs.out_dir))
        err = np.abs(est.spillover.matrix - cs.matrix)
        i, j = np.unravel_index(int(err.argmax()), err.shape)
        print(f"{kind:<5} controls ({'unstained control' if unstained else 'internal negatives'}): max |recovered - true| "
              f"= {err.max():.5f} ({ins.DETECTORS[i]} -> {ins.DETECTORS[j]}); {time.process_time() - t0:.2f} CPU s")
        if kind == "cells":
            recovered = est.spillover

    strategies = strategies_without_step0()
    diffs, rows, false_alarms = [], [], []
    for k in range(args.products):
        sim = simulate_product(f"TIL{k + 1:03d}", args.seed + k, args.events)
        folder = work / sim.product_id
        folder.mkdir()
        write_product(sim, folder)
        manifest = pd.DataFrame(manifest_rows(sim))
        manifest["file"] = [str(folder / f) for f in manifest["file"]]
        a = analyze_product(sim.product_id, manifest, strategies, spillover_override=true, plot_events=PLOT_EVENTS)
        b = analyze_product(sim.product_id, manifest, strategies, spillover_override=recovered, plot_events=PLOT_EVENTS)
        d = {v: abs(a.phenotype[v] - b.phenotype[v]) for v in default_study().variables}
        diffs.append(max(d.values()))
        false_alarms.append([f"{f.file}: {f.message}" for f in a.qc if f.code in FLAGS])
        rows.append((sim.product_id, manifest))
    print(f"phenotypes, recovered vs true matrix, {args.products} products x {args.events} events: "
          f"largest |difference| of a study variable per product {np.round(diffs, 3).tolist()} points; max {max(diffs):.3f}")
    print(f"false alarms with the true matrix: {sum(bool(f) for f in false_alarms)} of {args.products} products "
          f"with a compensation flag ({sum(len(f) for f in false_alarms)} flags)")
    for f in (x for fa in false_alarms for x in fa):
        print(f"  {f}")

    if args.skip_wrong:
        return
    found = []
    for pid, manifest in rows[: args.wrong_products]:
        for i in range(6):
            for j in range(6):
                if i == j:
                    continue
                for delta in (0.1, -0.1):
                    m = ins.SPILLOVER_MATRIX.copy()
                    m[i, j] += delta
                    r = analyze_product(pid, manifest, strategies,
                                        spillover_override=Spillover(ins.DETECTORS, m, "wrong"), plot_events=PLOT_EVENTS)
                    pair = f"{ins.DETECTORS[i]} -> {ins.DETECTORS[j]}"
                    hits = [f for f in r.qc if f.code in FLAGS and "surface" in f.file and pair in f.message]
                    found.append((pid, ins.DETECTORS[i], ins.DETECTORS[j], delta, bool(hits),
                                  ", ".join(sorted({f"{f.code}@{f.file.split('_')[-1].removesuffix('.fcs')}" for f in hits})),
                                  any(f.code in FLAGS for f in r.qc)))
    table = pd.DataFrame(found, columns=["product", "source", "target", "delta", "pair_flagged", "by", "any_flag"])
    print(table.to_string(index=False))
    print(f"wrong coefficient flagged on its own pair: {int(table['pair_flagged'].sum())} of {len(table)} "
          f"({args.wrong_products} products x 60 cases); some compensation flag raised: {int(table['any_flag'].sum())} of {len(table)}")

if __name__ == "__main__":
    main()
