"""Which control stands in for a missing PD1 FMO? Measured on the simulator's labels (run by hand).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/pd1_cross_control.py --first-seed 197001 --products 30 --out /tmp/cross.csv

Products as ``validate_gating.py`` simulates them (bench phenomena, 20,000 events per tube), their PD1 parents gated
by the labels (live singlet lymphocytes; CD3+CD8+ and CD3+CD4+ of them), compensated with the true matrix and
transformed with the surface strategy's PD1 logicle. Per parent, the error (points of the stained parent above the
cut minus above the ideal-FMO cut, ``truth.stained_negative_reference``) of each candidate control's cut:

- ``pct_*``: the candidate's own 99.5th percentile on PE: the unstained control's live lymphocytes
  (``unstained``), the Treg stain tube's cells in the parent's counterpart (``treg_stain``: all lymphocytes, CD3+CD4-
  for CD8+, CD3+CD4+ for CD4+; FoxP3 PE is stained on PD1's detector there), the Treg tube's FoxP3 FMO's
  (``foxp3_fmo``: nothing stained on PE, CD3 FITC kept);
- ``placed_*``: the gate placed by ``checks.place_and_check`` as the pipeline places a PD1 gate without its FMO:
  ``unstained`` main's fallback (the unstained control as the FMO, non_T's binding tail raising it), ``foxp3_fmo``
  the FoxP3 FMO's counterpart as the parent's FMO and the unstained control as non_T's (the with-FMO rule,
  ``phenotype.cross_fmo_control``), ``treg_stain`` the same with the Treg stain tube's counterpart, ``spread`` (stop
  62) the same with the unstained control's live lymphocytes spread by CD3 FITC's spreading into PE as the parent's
  FMO: event i plus s x the (i mod 32)-th of the 32 fixed normal quantiles (``placement.SIGNAL_QUANTILES``), s the
  added lower-side spread (``placement.reference_binding``) of the Treg stain tube's CD3+ cells of the parent's
  lineage (CD3+ for PD1+, CD3+CD4- for CD8+, CD3+CD4+ for CD4+) over its CD3- lymphocytes, both FoxP3 PE-stained
  and fixed alike (``spread_*`` the value, linear units): a stand-in without the PD1 and the FoxP3 FMO.

The labels stand in for the gates, so the errors are the controls' and the rules', not the lineage gates'. Seeds:
development seeds only (``validate_gating.py``'s list).
"""
from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd

CANDIDATES = ("unstained", "treg_stain", "foxp3_fmo", "spread")
PARENTS = {"PD1+": "ref_pd1_threshold", "CD8+PD1+": "ref_cd8pd1_threshold", "CD4+PD1+": "ref_cd4pd1_threshold"}


def _pct(values: np.ndarray, cut: float) -> float:
    return 100.0 * np.count_nonzero(values > cut) / values.size


def one_product(seed: int) -> list[dict]:
    from tilpheno.gates import checks
    from tilpheno.gates.strategy import default_strategy_paths, load_strategy
    from tilpheno.simulate import instrument as ins
    from tilpheno.simulate.cohort import simulate_product
    from tilpheno.simulate.truth import compensated_detector, live_lymphocytes, lymphocytes

    transform = load_strategy(default_strategy_paths()[0]).transform_for("PD1")
    prod = simulate_product(f"V{seed}", seed, 20000, phenomena=True)
    tubes = {"surface": prod.tube("surface", "stain").data, "treg_stain": prod.tube("treg", "stain").data,
             "unstained": prod.tube("unstained", "unstained").data, "foxp3_fmo": prod.tube("treg", "fmo", "FoxP3").data}
    pe = {k: transform.apply(compensated_detector(t, "PE-A", ins.true_spillover())) for k, t in tubes.items()}
    surface = tubes["surface"]
    live, lab = live_lymphocytes(surface), surface.labels
    parents = {"PD1+": live, "CD8+PD1+": live & lab["cd3"] & lab["cd8"], "CD4+PD1+": live & lab["cd3"] & lab["cd4"]}
    non_t = pe["surface"][live & ~lab["cd3"]]
    control = pe["unstained"][live_lymphocytes(tubes["unstained"])]

    def counterpart(kind: str, gate: str) -> np.ndarray:
        t = tubes[kind]
        lymph, cd3, cd4 = lymphocytes(t), t.labels["cd3"], t.labels["cd4"]
        mask = {"PD1+": lymph, "CD8+PD1+": lymph & cd3 & ~cd4, "CD4+PD1+": lymph & cd3 & cd4}[gate]
        return pe[kind][mask]

    from tilpheno.gates import placement as pl

    def spread(gate: str) -> tuple[float, np.ndarray]:
        """The Treg stain tube's CD3+ cells of ``gate``'s lineage over its CD3- lymphocytes (added lower-side spread,
        linear units) and the unstained control's events spread by it (transformed)."""
        t = tubes["treg_stain"]
        lymph, cd3, cd4 = lymphocytes(t), t.labels["cd3"], t.labels["cd4"]
        lineage = {"PD1+": lymph & cd3, "CD8+PD1+": lymph & cd3 & ~cd4, "CD4+PD1+": lymph & cd3 & cd4}[gate]
        binding = pl.reference_binding(pe["treg_stain"][lymph & ~cd3], pe["treg_stain"][lineage], transform)
        s = binding.spread if binding is not None else 0.0
        linear = transform.inverse(control)
        return s, transform.apply(linear + s * pl.SIGNAL_QUANTILES[np.arange(linear.size) % pl.SIGNAL_QUANTILES.size])

    def placed(gate: str, fmo: np.ndarray, stained: np.ndarray, **kw) -> float:
        p = checks.place_and_check(gate, "PD1", fmo, stained, percentile=99.5, source_file="-", min_events=200,
                                   transform=transform, control_name="unstained control", rule="relative", **kw)
        return float(p.diagnostics["threshold"])

    rows = []
    for gate, parent in parents.items():
        x = pe["surface"][parent]
        ideal = float(transform.apply(np.array([prod.truth[PARENTS[gate]]]))[0])
        row_spread, spread_control = spread(gate)
        own = {"unstained": control, "treg_stain": counterpart("treg_stain", gate), "foxp3_fmo": counterpart("foxp3_fmo", gate),
               "spread": spread_control}
        row = {"seed": seed, "gate": gate, "phen_nsb_PD1": prod.truth["phen_nsb_PD1"],
               "phen_nsb_FoxP3": prod.truth["phen_nsb_FoxP3"], "spread_linear": row_spread}
        for name, values in own.items():
            row[f"pct_{name}"] = _pct(x, float(np.percentile(values, 99.5))) - _pct(x, ideal)
        cuts = {"unstained": placed(gate, control, x, skew_stained=non_t),
                "foxp3_fmo": placed(gate, own["foxp3_fmo"], x, reference_fmo=control, reference_stained=non_t),
                "treg_stain": placed(gate, own["treg_stain"], x, reference_fmo=control, reference_stained=non_t),
                "spread": placed(gate, spread_control, x, reference_fmo=control, reference_stained=non_t)}
        row.update({f"placed_{name}": _pct(x, cut) - _pct(x, ideal) for name, cut in cuts.items()})
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-seed", type=int, required=True)
    parser.add_argument("--products", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", help="per parent and product errors (CSV)")
    args = parser.parse_args(argv)
    seeds = range(args.first_seed, args.first_seed + args.products)
    with ProcessPoolExecutor(args.jobs) as pool:
        table = pd.DataFrame([r for rows in pool.map(one_product, seeds) for r in rows])
    if args.out:
        table.to_csv(args.out, index=False)
    print(f"{len(seeds)} products; error against the ideal-FMO cut, points of the parent: "
          "signed mean / mean |error| / worst |error| / beyond 1.5")
    for gate, d in table.groupby("gate", sort=False):
        for column in [c for c in table.columns if c.startswith(("pct_", "placed_"))]:
            e = d[column]
            print(f"  {gate:9s} {column:18s} {e.mean():+6.2f} {e.abs().mean():6.2f} {e.abs().max():6.2f} {int((e.abs() > 1.5).sum()):3d}")


if __name__ == "__main__":
    main()
