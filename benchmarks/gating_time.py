"""Gating time per product: this checkout vs another one (e.g. the code before issue 13), one run.

    git -C /work/main worktree add /tmp/base b929823      # or: git archive b929823 | tar -x -C /tmp/base
    .venv/bin/python benchmarks/gating_time.py --baseline /tmp/base --products 6 --repeats 3

Simulates ``--products`` products with bench phenomena (seeds 80001...; 20,000 events per tube)
once into a temporary folder, then times ``tilpheno.phenotype.analyze_product`` on each product
with each checkout's own strategies (and this checkout's once more with its acquisition QC step,
another stage of analyze_product, switched off), alternating the checkouts (``--repeats`` rounds) in fresh
subprocesses (``PYTHONPATH`` = the checkout) so both see the same machine load. Reported: CPU
seconds per product (``time.process_time``, one BLAS thread), median over products and rounds,
and the ratio new / baseline; plus a check that this checkout's phenotypes are identical between
rounds (deterministic), and both checkouts' mean absolute errors on these products.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VARIABLES = ("viability_pct", "cd3_pct_of_live_lymph", "cd4_pct_of_cd3", "cd8_pct_of_cd3", "nk_pct_of_live_lymph",
             "nkt_pct_of_live_lymph", "pd1_pct_of_live_lymph", "cd8pd1_pct_of_cd8", "cd8pd1_pct_of_cd3",
             "cd4foxp3_pct_of_cd4")

CHILD = r"""
import json, sys, time
import pandas as pd
import re
import tilpheno
from tilpheno.gates.strategy import default_strategy_paths, parse_strategy
from tilpheno.phenotype import analyze_product
folder = sys.argv[1]
manifest = pd.read_csv(folder + "/manifest.csv", dtype=str).fillna("")
manifest["file"] = [folder + "/" + f for f in manifest["file"]]
texts = [(p.read_text(), str(p)) for p in default_strategy_paths()]
if sys.argv[2] == "gating-only":   # the acquisition QC step (another stage, when present) switched off
    texts = [(re.sub(r"(acquisition_qc:[^\n]*\n(?:[ #][^\n]*\n)*?\s+mode:)\s*\w+", r'\1 "off"', t), p) for t, p in texts]
strategies = [parse_strategy(t, p) for t, p in texts]
out = {}
for pid, rows in manifest.groupby("product_id", sort=True):
    start = time.process_time()
    result = analyze_product(pid, rows, strategies)
    seconds = time.process_time() - start
    out[pid] = {"seconds": seconds, "phenotype": {k: (None if v != v else v) for k, v in result.phenotype.items()
                                                  if isinstance(v, float)}}
print(json.dumps({"package": tilpheno.__file__, "products": out}))
"""


def run(checkout: Path, folder: Path, mode: str = "all") -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    # cwd = the data folder: with ``-c`` the working directory comes first on sys.path, before PYTHONPATH
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), mode], env=env, capture_output=True, text=True,
                          check=True, cwd=folder)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["package"].startswith(str(checkout)):
        raise SystemExit(f"{checkout}: the child imported {result['package']} instead")
    return result["products"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="checkout of the code to compare with")
    parser.add_argument("--products", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--events", type=int, default=20000)
    args = parser.parse_args(argv)

    from tilpheno.simulate.cohort import manifest_rows, simulate_product, write_product
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows, truths = [], {}
        for i in range(args.products):
            prod = simulate_product(f"T{80001 + i}", 80001 + i, args.events, phenomena=True)
            write_product(prod, folder)
            rows += manifest_rows(prod)
            truths[prod.product_id] = prod.truth
        pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
        new, old, gating_only, phenotypes, base_phenotypes = [], [], [], [], {}
        for _ in range(args.repeats):
            b = run(Path(args.baseline), folder)
            n = run(ROOT, folder)
            g = run(ROOT, folder, "gating-only")
            old += [v["seconds"] for v in b.values()]
            new += [v["seconds"] for v in n.values()]
            gating_only += [v["seconds"] for v in g.values()]
            phenotypes.append({k: v["phenotype"] for k, v in n.items()})
            base_phenotypes = {k: v["phenotype"] for k, v in b.items()}
    deterministic = all(p == phenotypes[0] for p in phenotypes)
    print(f"{args.products} products x {args.repeats} rounds, {args.events} events per tube")
    print(f"baseline ({args.baseline}): median {np.median(old):.3f} s CPU per product")
    print(f"this checkout ({ROOT}):     median {np.median(new):.3f} s CPU per product")
    print(f"ratio new / baseline: {np.median(new) / np.median(old):.2f}x (target <= 1.5x)")
    print(f"this checkout without the acquisition QC step: median {np.median(gating_only):.3f} s, "
          f"ratio {np.median(gating_only) / np.median(old):.2f}x")
    print(f"phenotypes identical across rounds: {deterministic}")
    print("\nmean |error| on these products, points (lineage vs label truth, PD1/FoxP3 vs ideal-FMO reference):")
    print(f"{'variable':<24}{'baseline':>10}{'this':>10}")
    for v in VARIABLES:
        ref = (lambda t: t[f"ref_{v}"]) if f"ref_{v}" in next(iter(truths.values())) else (lambda t: t[v])
        errs = [[abs(p[pid][v] - ref(truths[pid])) for pid in truths] for p in (base_phenotypes, phenotypes[0])]
        print(f"{v:<24}{np.mean(errs[0]):>10.2f}{np.mean(errs[1]):>10.2f}")


if __name__ == "__main__":
    main()
