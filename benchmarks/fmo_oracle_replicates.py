"""The oracle's miss of the ideal-FMO yardstick over replicates of one product: systematic or sampling (run by hand).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/fmo_oracle_replicates.py 204351,204294 --replicates 30 --csv /tmp/rep.csv

``pd1_tail_census.py`` calls a gate's miss ``FMO vs stained`` when its oracle (the parent's FMO events each plus
draws of the product's true added signal) misses the yardstick by more than 2.5 of its sampling SDs, read by a
bootstrap on the one capture. This script asks the product itself: each replicate keeps product ``V<seed>``'s
composition and drawn phenomena (then ``--set``, as ``validate_gating.py``) and draws every tube again from a new
stream (replicate 0 is the product as ``validate_gating.py`` simulates it). Per replicate and gate (PD1+,
CD8+PD1+, CD4+PD1+, CD4+FoxP3+) the *label oracle*: the 99.5th percentile of the FMO tube's label-defined parent
(compensated linear units, as ``simulate.truth``: live singlet lymphocytes of the lineage; the Treg tube's
lymphocytes, dead ones too) each plus :data:`DRAWS` draws of ``pd1_tail_census.added_signal``; ``error`` = % of the
stained tube's label-defined parent above it - % above the yardstick (the truth's ``ref_*_threshold``, the stained
label negatives' 99.5th percentile), points. Over the replicates, a mean away from 0 is a difference between the
FMO tube and the stained tube beyond the signal; their SD is the sampling SD of both percentiles together.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pd1_tail_census as tc  # noqa: E402
import validate_gating as vg  # noqa: E402

DRAWS = 32
LINEAGE = {"PD1+": (), "CD8+PD1+": ("cd3", "cd8"), "CD4+PD1+": ("cd3", "cd4"), "CD4+FoxP3+": ("cd3", "cd4")}
"""Gate -> the labels its parent needs besides the tube's lymphocytes (live ones in the surface tube)."""


def label_parent(tube, gate: str) -> np.ndarray:
    """The gate's label-defined parent in ``tube`` (``simulate.truth``'s reference parents)."""
    from tilpheno.simulate.truth import live_lymphocytes, lymphocytes

    parent = lymphocytes(tube) if tube.spec.fixed else live_lymphocytes(tube)
    for label in LINEAGE[gate]:
        parent = parent & tube.labels[label]
    return parent


def replicate_rows(seed: int, replicates: int, sets: tuple, events: int = 20000) -> list[dict]:
    """One row per replicate and gate of product ``V<seed>`` (module docstring)."""
    from tilpheno.simulate import instrument as ins
    from tilpheno.simulate.cohort import simulate_product
    from tilpheno.simulate.truth import compensated_detector

    phen = vg.drawn_phenomena(seed, sets)
    composition = simulate_product(f"V{seed}", seed, 1, phenomena=phen).composition
    rows = []
    for r in range(replicates):
        stream = np.random.SeedSequence(seed) if r == 0 else np.random.SeedSequence([seed, 9000 + r])
        prod = simulate_product(f"V{seed}", stream, events, composition=composition, phenomena=phen)
        rng = np.random.default_rng([seed, r])
        for gate, (marker, ideal_key, _) in tc.GATES.items():
            kind = "surface" if marker == "PD1" else "treg"
            stained, fmo = prod.tube(kind, "stain").data, prod.tube(kind, "fmo", marker).data
            s_pe = compensated_detector(stained, "PE-A", ins.true_spillover())[label_parent(stained, gate)]
            f_pe = compensated_detector(fmo, "PE-A", ins.true_spillover())[label_parent(fmo, gate)]
            oracle = np.percentile(f_pe[:, None] + tc.added_signal(phen, marker, (f_pe.size, DRAWS), rng), 99.5)
            ideal = float(prod.truth[ideal_key])
            rows.append({"seed": seed, "replicate": r, "gate": gate, "fmo_events": f_pe.size,
                         "error": 100.0 * (np.mean(s_pe > oracle) - np.mean(s_pe > ideal))})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seeds", help="comma-separated product seeds")
    parser.add_argument("--replicates", type=int, default=20)
    parser.add_argument("--csv", help="write the per-replicate rows here")
    parser.add_argument("--set", dest="sets", action="append", type=vg.parse_set, default=[], metavar="NAME=LOW-HIGH",
                        help="set this phenomenon per product, as validate_gating.py --set (repeatable)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    table = pd.DataFrame([row for s in seeds for row in replicate_rows(s, args.replicates, tuple(args.sets))])
    if args.csv:
        table.to_csv(args.csv, index=False)
    summary = table.groupby(["seed", "gate"])["error"].agg(["mean", "std", "min", "max", "count"])
    summary["product"] = table[table["replicate"] == 0].set_index(["seed", "gate"])["error"]
    print("label oracle - yardstick, points of the stained parent: replicate mean, SD, range; the product itself")
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
