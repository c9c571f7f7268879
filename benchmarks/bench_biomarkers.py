"""Full biomarker analysis of a 60-patient, 10-marker, 2-endpoint cohort (issue 17's speed target: < 30 s on 2 cores).

    .venv/bin/python benchmarks/bench_biomarkers.py [--bootstrap 200] [--permutations 10000] [--repeats 3]

The cohort is tests/reference/til_cohort_*.csv (60 patients; the dose and the 9 study phenotype
columns). Prints wall and CPU seconds of `run_biomarkers` (all tables, figures, report, run.json)
per repeat, their medians, the machine's load average, and the ratio to the 30 s target.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from tilpheno.biomarkers.analysis import run_biomarkers
from tilpheno.study import default_study
from tilpheno.io.outcomes import read_outcomes

REF = Path(__file__).resolve().parents[1] / "tests" / "reference"
TARGET_S = 30.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--permutations", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    pheno = pd.read_csv(REF / "til_cohort_phenotypes.csv")
    outcomes = read_outcomes(REF / "til_cohort_outcomes.csv")
    walls, cpus = [], []
    for i in range(args.repeats):
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            w0, c0 = time.perf_counter(), time.process_time()
            res = run_biomarkers(pheno, outcomes, tmp, markers=list(default_study().biomarkers), n_boot=args.bootstrap,
                                 n_perm=args.permutations)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        walls.append(wall)
        cpus.append(cpu)
        print(f"run {i + 1}: {len(res.cohort.data)} patients, {len(res.cohort.markers)} markers, "
              f"{len(res.settings.endpoints)} endpoints, B={args.bootstrap}, permutations={args.permutations}: "
              f"wall {wall:.1f} s, CPU {cpu:.1f} s (load average before {load:.1f})")
    w, c = statistics.median(walls), statistics.median(cpus)
    print(f"median wall {w:.1f} s, CPU {c:.1f} s; target {TARGET_S:.0f} s: wall/target {w / TARGET_S:.2f}, "
          f"CPU/target {c / TARGET_S:.2f}")


if __name__ == "__main__":
    main()
