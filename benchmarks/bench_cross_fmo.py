"""CPU of reading another tube kind's FMO for gates without their own (``cross_fmo``), per product (run by hand).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_cross_fmo.py --first-seed 202181 --products 10

Products as ``validate_gating.py`` simulates them (bench phenomena, 20,000 events per tube), written to a scratch
folder. For each, the surface strategy's ``cross_fmo`` specs (TIL: ``treg:lymph``, ``treg:non_CD4_T``,
``treg:CD4+``, the Treg tube's FoxP3 FMO on PD1's PE-A) read two ways: once per spec, each reading the file and
gating it down to its own population (``phenotype.cross_fmo_control``, the engine before stop 62), and once per
product, the file read and gated down to the union of the populations and each spec's events carved from it
(``phenotype.cross_fmo_gated``, the engine since stop 62). CPU seconds (``time.process_time``, the fewest of
``--repeat`` runs) per product and their ratio, measured in one run; the two ways' events must be identical (the
script stops otherwise). A CPU ratio, not a timed test.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _fewest_cpu(call, repeat: int) -> tuple[float, object]:
    """The fewest CPU seconds of ``repeat`` calls of ``call`` and its last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.process_time()
        out = call()
        best = min(best, time.process_time() - start)
    return best, out


def one_product(seed: int, repeat: int) -> dict:
    """Per-spec and once-per-product CPU seconds of product ``V<seed>``'s cross-tube FMO reading."""
    from tilpheno.gates.strategy import default_strategy_paths, load_strategy
    from tilpheno.phenotype import cross_fmo_control, cross_fmo_gated
    from tilpheno.simulate.cohort import manifest_rows, simulate_product, write_product
    from tilpheno.study import default_study

    strategies = {s.tube: s for s in (load_strategy(p) for p in default_strategy_paths())}
    surface = strategies["surface"]
    specs = [str(p.params["cross_fmo"]) for p in surface.populations if p.params.get("cross_fmo")]
    transform = surface.transform_for("PD1")
    with tempfile.TemporaryDirectory() as folder:
        prod = simulate_product(f"V{seed}", seed, 20000, phenomena=True)
        write_product(prod, folder)
        rows = pd.DataFrame(manifest_rows(prod))
        rows["file"] = [str(Path(folder) / f) for f in rows["file"]]
        args = (rows, strategies, default_study(), None, None, 99.5)
        per_spec_s, each = _fewest_cpu(lambda: [cross_fmo_control(s, "PE-A", transform, *args) for s in specs], repeat)
        (kind,) = {s.partition(":")[0] for s in specs}   # one tube kind stands in (TIL: the Treg tube)
        populations = [s.partition(":")[2] for s in specs]
        once_s, gated = _fewest_cpu(lambda: cross_fmo_gated(kind, populations, "PE-A", transform, *args), repeat)
    for spec, control in zip(specs, each):
        carved = gated.control(spec.partition(":")[2])
        if not np.array_equal(control.values, carved.values):
            raise SystemExit(f"V{seed} {spec}: the union's events differ from the spec's own reading")
    return {"seed": seed, "specs": len(specs), "per_spec_cpu_s": per_spec_s, "once_cpu_s": once_s}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-seed", type=int, required=True)
    parser.add_argument("--products", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", help="per-product CPU seconds (CSV)")
    args = parser.parse_args(argv)
    table = pd.DataFrame([one_product(s, args.repeat) for s in range(args.first_seed, args.first_seed + args.products)])
    if args.out:
        table.to_csv(args.out, index=False)
    per, once = table["per_spec_cpu_s"].median(), table["once_cpu_s"].median()
    print(f"{len(table)} products, {int(table['specs'].iloc[0])} cross_fmo specs each; events identical both ways")
    print(f"CPU s per product, median: once per spec {per:.3f}, once per product {once:.3f}; "
          f"ratio {per / once:.2f}x, saved {per - once:.3f} s")


if __name__ == "__main__":
    main()
