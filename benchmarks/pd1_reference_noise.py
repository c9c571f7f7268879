"""The PD1 variables' errors split into the gate's own and the ideal reference's sampling noise (run by hand).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/pd1_reference_noise.py "/tmp/cap/1414*.pkl" --csv /tmp/noise.csv

Input: ``fmo_gate_replay.py capture`` files (each product's phenotype, truth and PD1 gates' inputs).
``validate_gating.py`` scores the PD1 variables against the ideal-FMO reference
(``truth.stained_negative_reference``): the 99.5th percentile of the stained tube's label-negative
events of the label-defined parent, i.e. of a sample of 1,000-12,000 events, whose upper tail is
thin exactly where the cut sits. Per product (those with a PD1 variable beyond ``--beyond`` points;
0 = every product):

- **population cut** (compensated linear units): the product's surface stain tube simulated again
  ``--reps`` times with ``--events`` events and other noise seeds (the same composition and
  phenomena: ``simulate_product`` draws them from streams that do not depend on the event count),
  the label negatives' 99.5th percentile per parent, averaged (``pop_se``: its standard error);
- ``ref_noise`` = the reference's % - the % of the same label parent above the population cut (the
  reference's own sampling error on this product's events; percentage points);
- ``vs_population`` = the gate's value - that same % (the error with the reference's noise taken
  out); ``error`` = ``vs_population`` - ``ref_noise``;
- ``ref_sd``: the SD of ``ref_noise`` over ``--noise-reps`` further 20,000-event tubes of the product;
- the gate's winning rule and its cut, the reference's and the population's cuts (linear units),
  and the drawn PD1 phenomena (binding median and log-SD, spreading SD, dim-PD1 scale, PD1+ share of
  the non-T lymphocytes).

Development seeds only (``validate_gating.py`` lists the seeds already used).
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from fmo_gate_replay import captures
from reference_noise import pd1_parents, pd1_values
from tilpheno.gates import checks
from tilpheno.simulate.cohort import SimulatedProduct, simulate_product
from tilpheno.simulate.products import TUBES, TubeEvents, simulate_tube
from tilpheno.simulate.truth import FMO_PERCENTILE

VARIABLES = {"pd1_pct_of_live_lymph": ("PD1+", "ref_pd1_threshold"),
             "cd8pd1_pct_of_cd8": ("CD8+PD1+", "ref_cd8pd1_threshold"),
             "cd8pd1_pct_of_cd3": ("CD8+PD1+", "ref_cd8pd1_threshold"),
             "cd4pd1_pct_of_cd4": ("CD4+PD1+", "ref_cd4pd1_threshold")}
"""Variable -> (its PD1 gate, the truth column of its reference cut)."""
SURFACE_STAIN = TUBES[0]


@dataclass(frozen=True)
class Split:
    """One PD1 variable of one product (module docstring; points, linear units)."""

    product_id: str
    variable: str
    error: float
    vs_population: float
    ref_noise: float
    ref_sd: float
    winner: str
    cut: float
    reference_cut: float
    population_cut: float
    pop_se: float
    flagged: bool
    binding: float
    binding_log_sd: float
    spreading: float
    dim_scale: float
    pd1_other: float


def resimulated_tube(product: SimulatedProduct, seed: int, stream: int, rep: int, events: int) -> TubeEvents:
    """The product's surface stain tube again, with noise seeds of its own (``stream``, ``rep``)."""
    base, phen = np.random.SeedSequence([seed, stream, rep]).spawn(2)
    return simulate_tube(product.composition, SURFACE_STAIN, events, np.random.default_rng(base),
                         product.phenomena, np.random.default_rng(phen))


def above(values: np.ndarray, parent: np.ndarray, cut: float) -> float:
    """% of ``parent`` with ``values`` above ``cut``."""
    return 100.0 * np.count_nonzero(values[parent] > cut) / np.count_nonzero(parent)


def population_cuts(product: SimulatedProduct, seed: int, reps: int, events: int) -> dict[str, tuple[float, float]]:
    """Per PD1 gate: the label negatives' 99.5th percentile over ``reps`` re-simulated tubes (mean, standard error)."""
    cuts: dict[str, list[float]] = {g: [] for g in ("PD1+", "CD8+PD1+", "CD4+PD1+")}
    for rep in range(reps):
        tube = resimulated_tube(product, seed, 1, rep, events)
        pe, neg = pd1_values(tube), ~tube.labels["pd1"]
        for gate, parent in pd1_parents(tube).items():
            cuts[gate].append(float(np.percentile(pe[parent & neg], FMO_PERCENTILE)))
    return {g: (float(np.mean(c)), float(np.std(c, ddof=1) / np.sqrt(reps)) if reps > 1 else float("nan"))
            for g, c in cuts.items()}


def reference_sd(product: SimulatedProduct, seed: int, population: dict[str, float], reps: int, events: int) -> dict[str, float]:
    """Per PD1 gate: the SD of the reference's sampling error (its % minus the % above the
    population cut, same events) over ``reps`` re-simulated ``events``-event tubes."""
    diffs: dict[str, list[float]] = {g: [] for g in population}
    for rep in range(reps):
        tube = resimulated_tube(product, seed, 2, rep, events)
        pe, neg = pd1_values(tube), ~tube.labels["pd1"]
        for gate, parent in pd1_parents(tube).items():
            own = float(np.percentile(pe[parent & neg], FMO_PERCENTILE))
            diffs[gate].append(above(pe, parent, own) - above(pe, parent, population[gate]))
    return {g: float(np.std(d, ddof=1)) for g, d in diffs.items()}


def split_product(record: dict, reps: int, events: int, noise_reps: int) -> list[Split]:
    """The :class:`Split` of each PD1 variable of one captured product."""
    seed = record["seed"]
    product = simulate_product(f"V{seed}", seed, 20000, phenomena=True)
    tube = product.tube("surface", "stain").data
    pe, parents = pd1_values(tube), pd1_parents(tube)
    population = population_cuts(product, seed, reps, events)
    sd = reference_sd(product, seed, {g: c for g, (c, _) in population.items()}, noise_reps, 20000)
    calls = {c["population"]: c for c in record["calls"]}
    flagged = {message.split(" (")[0] for _, message in record["review"]}
    phen, comp = product.phenomena, product.composition
    assert phen is not None
    out = []
    for variable, (gate, cut_key) in VARIABLES.items():
        call = calls[gate]
        placed = checks.place_and_check(call["population"], call["marker"], call["fmo"], call["stained"], **call["kw"])
        cut = float(call["kw"]["transform"].inverse(np.array([placed.diagnostics["threshold"]]))[0])
        scale = record["phenotype"]["cd8_pct_of_cd3"] / 100.0 if variable == "cd8pd1_pct_of_cd3" else 1.0
        at_population = above(pe, parents[gate], population[gate][0]) * scale
        reference = record["truth"]["ref_" + variable]
        value = record["phenotype"][variable]
        out.append(Split(f"V{seed}", variable, value - reference, value - at_population, reference - at_population,
                         sd[gate] * scale, str(placed.diagnostics.get("winner", "")), cut, record["truth"][cut_key],
                         population[gate][0], population[gate][1], gate in flagged, phen.nsb.get("PD1", 0.0),
                         phen.nsb_sd.get("PD1", float("nan")), phen.spread.get("PD1", 0.0), phen.pd1_dim_scale,
                         comp.pd1_other))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pattern", help="glob of fmo_gate_replay.py capture files")
    parser.add_argument("--beyond", type=float, default=1.5, help="only products with a PD1 variable beyond this (points); 0 = all")
    parser.add_argument("--reps", type=int, default=4, help="re-simulated tubes for the population cut")
    parser.add_argument("--events", type=int, default=400000, help="events per re-simulated tube for the population cut")
    parser.add_argument("--noise-reps", type=int, default=40, help="20,000-event tubes for the reference's SD")
    parser.add_argument("--csv", help="write one row per product and variable here")
    args = parser.parse_args(argv)
    rows = []
    for _, record in captures(args.pattern):
        errors = [record["phenotype"][v] - record["truth"]["ref_" + v] for v in VARIABLES]
        if max(abs(e) for e in errors) > args.beyond:
            rows += [asdict(s) for s in split_product(record, args.reps, args.events, args.noise_reps)]
    table = pd.DataFrame(rows)
    if args.csv:
        table.to_csv(args.csv, index=False)
    pd.set_option("display.width", 250)
    print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
