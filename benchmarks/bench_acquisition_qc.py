"""Acquisition QC accuracy against simulated faults (issue 15), run by hand.

For each fault kind (clog, rate change, drift) and for clean files, simulate surface stained tubes
(``simulate.products.simulate_tube``), inject one random fault (``simulate.acquisition``), run
``tilpheno.acquisition.check_acquisition`` and score the anomalous events against the truth:
balanced accuracy = (sensitivity + specificity) / 2 per file; clean files: % of events removed.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_acquisition_qc.py --files 20 --events 20000 100000
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from tilpheno.acquisition import AcquisitionSettings, check_acquisition
from tilpheno.simulate import instrument as ins
from tilpheno.simulate.acquisition import random_faults, inject
from tilpheno.simulate.products import TUBES, draw_composition, simulate_tube


def balanced_accuracy(truth: np.ndarray, called: np.ndarray) -> float:
    sens = np.mean(called[truth]) if truth.any() else 1.0
    spec = np.mean(~called[~truth]) if (~truth).any() else 1.0
    return 0.5 * (sens + spec)


def run(n_files: int, n_events: int, seed: int, settings: AcquisitionSettings) -> dict:
    rng = np.random.default_rng(seed)
    ranges = [ins.RANGE] * len(ins.CHANNEL_NAMES)
    out = {}
    for kind in ("clean", "clog", "rate", "drift"):
        scores, removed, secs = [], [], []
        for _ in range(n_files):
            comp = draw_composition(rng)
            tube = simulate_tube(comp, TUBES[0], n_events, rng)
            events = tube.events.astype(np.float64)
            faults = [] if kind == "clean" else random_faults(rng, kind)
            events, truth = inject(events, faults)
            events[:, -1] *= ins.TIMESTEP   # seconds, as read_fcs gives them
            t0 = time.process_time()
            qc = check_acquisition(events, ins.CHANNEL_NAMES, ranges, settings)
            secs.append(time.process_time() - t0)
            removed.append(qc.removed_pct)
            if kind != "clean":
                scores.append(balanced_accuracy(truth, qc.anomalous))
        out[kind] = (scores, removed, secs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--events", type=int, nargs="+", default=[20000])
    ap.add_argument("--seed", type=int, default=15)
    args = ap.parse_args()
    settings = AcquisitionSettings()
    print(f"settings: {settings.to_dict()}")
    for n in args.events:
        res = run(args.files, n, args.seed, settings)
        for kind, (scores, removed, secs) in res.items():
            line = f"{n:>8} events  {kind:<6} files {len(removed):>3}  removed % median {np.median(removed):5.2f} max {np.max(removed):5.2f}"
            if scores:
                line += f"  balanced accuracy mean {np.mean(scores):.3f} min {np.min(scores):.3f}"
            line += f"  QC CPU s/file {np.median(secs):.3f}"
            print(line)


if __name__ == "__main__":
    main()
