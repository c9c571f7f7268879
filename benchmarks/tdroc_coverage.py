"""Coverage of the bootstrap percentile CI of the time-dependent AUC (tilpheno.biomarkers.tdroc), by simulation.

    .venv/bin/python benchmarks/tdroc_coverage.py [--studies 1000] [--n 120] [--bootstrap 200]

Marker X ~ N(0, 1); event time exponential with hazard exp(X); censoring uniform(0, 3); AUC at
t = 0.5. The true AUC(t) = P(X_i > X_j | T_i <= t < T_j) comes from 2,000,000 uncensored draws.
Prints the share of studies whose 95% CI covers the truth with its binomial standard error.
"""
from __future__ import annotations

import argparse

import numpy as np

from tilpheno.biomarkers.tdroc import time_roc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=1000)
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--bootstrap", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(2024)
    bx = rng.normal(size=2_000_000)
    bt = rng.exponential(1 / np.exp(bx))
    xc = np.sort(bx[bt > 0.5])
    truth = float(np.mean(np.searchsorted(xc, bx[bt <= 0.5]) / xc.size))
    hits = 0
    for i in range(args.studies):
        x = rng.normal(size=args.n)
        t = rng.exponential(1 / np.exp(x))
        c = rng.uniform(0, 3, args.n)
        res = time_roc(np.minimum(t, c), (t <= c).astype(float), {"x": x}, [0.5], args.bootstrap, seed=i).table.iloc[0]
        hits += res.ci_low <= truth <= res.ci_high
    cov = hits / args.studies
    print(f"true AUC(0.5) = {truth:.4f}; coverage of the 95% CI: {cov:.3f} "
          f"(+- {np.sqrt(cov * (1 - cov) / args.studies):.3f}) over {args.studies} studies of n = {args.n}, "
          f"B = {args.bootstrap}")


if __name__ == "__main__":
    main()
