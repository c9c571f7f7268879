"""Generate a large simulated cohort for benchmarks (run by hand).

    .venv/bin/python benchmarks/make_cohort.py --out /tmp/bench_cohort --products 60 --events 100000

Writes ``products`` x 9 tubes (surface stain, 5 surface FMOs, Treg stain, FoxP3 FMO, unstained)
of ``events`` events each as raw FCS 3.1 (float32, 12 parameters), with manifest.csv, truth.csv
and outcomes.csv, through ``tilpheno.simulate.cohort.simulate_cohort`` (deterministic per seed).
File size per tube: about 48 bytes x events (60 x 9 x 1M events = 26 GB: check ``df -h`` first).
"""
from __future__ import annotations

import argparse
import time


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--products", type=int, default=60)
    parser.add_argument("--events", type=int, default=100_000, help="events per tube")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    from tilpheno.simulate.cohort import simulate_cohort

    start = time.perf_counter()
    paths = simulate_cohort(args.out, args.products, args.seed, args.events)
    size = sum(p.stat().st_size for p in paths.files)
    print(f"{len(paths.files)} files, {size / 1e9:.2f} GB in {time.perf_counter() - start:.1f} s -> {paths.out_dir}")


if __name__ == "__main__":
    main()
