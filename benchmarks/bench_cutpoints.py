"""Benchmark: permutation p-values of the maximally selected log-rank statistic.

10 markers x 2 endpoints x 10,000 permutations on 60 patients (the issue's target: < 5 s).
Also the null simulation behind the report's warning: how often the uncorrected minimum p of
the cut-point search, and the corrected p-values, fall below 0.05 when no marker has an effect.

Run: ``.venv/bin/python benchmarks/bench_cutpoints.py [--null-datasets 2000]``
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from tilpheno.biomarkers.cutpoints import maxstat_logrank


def permutation_timing(n_patients: int = 60, n_markers: int = 10, n_endpoints: int = 2, n_perm: int = 10_000,
                       seed: int = 1) -> float:
    rng = np.random.default_rng(seed)
    markers = rng.normal(size=(n_markers, n_patients))
    outcomes = [(rng.exponential(8, n_patients).round(1), (rng.uniform(size=n_patients) < 0.85).astype(float))
                for _ in range(n_endpoints)]
    start = time.perf_counter()
    for time_, event in outcomes:
        for x in markers:
            maxstat_logrank(x, time_, event, n_perm=n_perm, seed=seed)
    return time.perf_counter() - start


def null_rejection(n_datasets: int, n_patients: int = 60, seed: int = 7) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    hits = {"p_raw": 0, "p_lau92": 0, "p_lau94": 0}
    for _ in range(n_datasets):
        res = maxstat_logrank(rng.normal(size=n_patients), rng.exponential(8, n_patients),
                              (rng.uniform(size=n_patients) < 0.85).astype(float), n_perm=0)
        for key in hits:
            hits[key] += getattr(res, key) < 0.05
    return {k: v / n_datasets for k, v in hits.items()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--null-datasets", type=int, default=2000)
    args = ap.parse_args()
    seconds = permutation_timing()
    print(f"permutation p-values, 10 markers x 2 endpoints x 10,000 permutations, n=60: {seconds:.2f} s "
          f"({'OK' if seconds < 5 else 'SLOWER THAN'} target 5 s)")
    rates = null_rejection(args.null_datasets)
    print(f"null simulation ({args.null_datasets} datasets, n=60, minprop 0.1): fraction with p < 0.05: "
          + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))
