"""`tilpheno new-study` on simulated products: the drafted PD1 and CD56 FMO gates against the truth
(run by hand).

    .venv/bin/python benchmarks/draft_fmo_truth.py --first-seed 140001 --products 20 [--pd1-rule anchored]

The products (``simulate_product(..., phenomena=True)``, unless ``--base``) are written into one
folder and drafted twice: with the vocabulary's lineage table (PD1 and CD56 gated on live cells)
and with PD1 nested within CD8+ (a ``--lineage`` file ``{PD1: CD8}``); each product is gated with
the drafted surface strategy, its PD1 gate's ``rule`` replaced by ``--pd1-rule`` when given.
Truth, from the event labels and the true spillover matrix (``tilpheno.simulate.truth``): PD1, the
ideal FMO gate of the drafted parent (live singlet cells, or live singlet lymphocytes when the draft
has a lymphocyte gate (``method: lymphocytes``), or CD3+CD8+ of them): the 99.5th
percentile of the stained tube's label-negative parent events (with phenomena: the ideal FMO
carries the stained tube's nonspecific binding) or of the PD1 FMO tube's parent (``--base``),
applied to the stained parent; CD56, the label share of that parent. Prints the signed
error (drafted - truth, percentage points) per product, its mean, median and largest |error|, and
how many products lie within 1.5 points.
"""
from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd


def errors(first_seed: int, products: int, events: int, phenomena: bool, pd1_rule: str | None) -> pd.DataFrame:
    from tilpheno.gates.strategy import parse_strategy
    from tilpheno.phenotype import analyze_product
    from tilpheno.scaffold import draft_study, write_study
    from tilpheno.simulate import instrument as ins
    from tilpheno.simulate.cohort import manifest_rows, simulate_product, write_product
    from tilpheno.simulate.truth import compensated_detector, lymphocytes, percent, singlet_cells

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prods = [simulate_product(f"P{s}", s, events, phenomena=phenomena) for s in range(first_seed, first_seed + products)]
        for p in prods:
            write_product(p, work / "fcs")
        (work / "nested.yaml").write_text("lineage: {PD1: CD8}\n")
        for nested in (False, True):
            draft = draft_study(work / "fcs", lineage=work / "nested.yaml" if nested else None)
            write_study(draft, work / str(nested))
            text = (work / str(nested) / "surface.yaml").read_text()
            if pd1_rule:
                text = re.sub(r"(dims: \[PD1\], method: fmo)(, params: \{[^}]*\})?\}", rf"\1, params: {{rule: {pd1_rule}}}}}", text)
            strategy = parse_strategy(text, "drafted surface.yaml")
            lymph = next((pop.name for pop in strategy.populations if pop.method == "lymphocytes"), None)
            cells = lymphocytes if lymph else singlet_cells
            for p in prods:
                manifest = pd.DataFrame(manifest_rows(p))
                manifest = manifest[manifest["tube"] == "surface"].assign(file=lambda m: [str(work / "fcs" / f) for f in m["file"]])
                stained = next(t for t in analyze_product(p.product_id, manifest, [strategy]).tubes if t.role == "stain")
                events_s, fmo = p.tube("surface", "stain").data, p.tube("surface", "fmo", "PD1").data

                def parent(tube, nested=nested, cells=cells):
                    live = cells(tube) & ~tube.labels["dead"]
                    return live & tube.labels["cd3"] & tube.labels["cd8"] if nested else live

                pe = compensated_detector(events_s, "PE-A", ins.true_spillover())
                negatives = pe[parent(events_s) & ~events_s.labels["pd1"]] if phenomena else \
                    compensated_detector(fmo, "PE-A", ins.true_spillover())[parent(fmo)]
                truth = percent(pe > np.percentile(negatives, 99.5), parent(events_s))
                gated = "CD8+" if nested else lymph or "live"
                rows.append({"product_id": p.product_id, "gate": f"PD1+ of {'CD8+' if nested else 'base'}",
                             "error": percent(stained.masks["PD1+"], stained.masks[gated]) - truth})
                if not nested:
                    rows.append({"product_id": p.product_id, "gate": "CD56+ of base",
                                 "error": percent(stained.masks["CD56+"], stained.masks[gated])
                                 - percent(events_s.labels["cd56"], parent(events_s))})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-seed", type=int, default=140001)
    parser.add_argument("--products", type=int, default=20)
    parser.add_argument("--events", type=int, default=20000, help="events per tube")
    parser.add_argument("--base", action="store_true", help="the base model, no bench phenomena")
    parser.add_argument("--pd1-rule", choices=("anchored", "relative", "percentile"), help="replace the drafted PD1 rule")
    args = parser.parse_args(argv)
    table = errors(args.first_seed, args.products, args.events, not args.base, args.pd1_rule)
    print(table.pivot(index="product_id", columns="gate", values="error").round(2).to_string())
    summary = table.groupby("gate")["error"].agg(mean="mean", median_abs=lambda e: e.abs().median(),
                                                  max_abs=lambda e: e.abs().max(), within_1_5=lambda e: int((e.abs() <= 1.5).sum()))
    print(summary.round(2).to_string())


if __name__ == "__main__":
    main()
