"""PD1's additive reference carry: the weight towards the log-normal cut each gate's ideal-FMO cut needs (run by hand).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/pd1_carry_weight.py "/tmp/cap/190*.pkl" --csv /tmp/w.csv \\
        --set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8

Reads ``fmo_gate_replay.py capture`` pickles (``--set`` as given to the capture: the simulated truth's binding is
drawn again from each seed, ``validate_gating.set_phenomena``). Every PD1 gate (PD1+, CD8+PD1+, CD4+PD1+) is placed
again with the code on ``PYTHONPATH`` (``checks.place_and_check``); where its cut is the additive carry of the
``non_T`` reference's reading (winner ``fmo_relative``, ``relative_carry: reference``, not moved down by
``placement.reference_capped_cut``) the script reads, in percentage points of the gate's stained parent:

- ``error``: % above the cut - % above the ideal-FMO cut (the simulator's ``ref_*_threshold``); > 0 an over-call;
- ``w_needed``: the weight w at which the cut ``normal + w (log-normal - normal)`` (linear units; the normal and
  log-normal signals of the read median and SD at the 32 ``placement.SIGNAL_QUANTILES``, as
  ``placement.reference_carried`` and ``placement.reference_lognormal_cut``) meets the ideal cut, from the error at
  each w in steps of 1/12 moved by what the gate's error is at the reading's own weight (0 for the normal carry,
  ``placement.SKEWED_WEIGHT`` for a ``right_skewed`` read); -0.01 / 1.26 where it lies below 0 / above 1.25;
- ``band_weight``: the same weight read on the reference's own events, the grid value in -0.5..2 (steps of 0.05)
  whose cut-blend of its FMO + the two signals best matches its stained 50th-90th percentiles (least squares,
  transformed units): how log-normal its upper side looks (stop 60: confounded by the reference's PD1+ cells);
- the simulated truth: ``pd1_other`` (the PD1+ share of the non-T lymphocytes, the reference's positives),
  ``binding_log_sd`` (the drawn log-SD of the PD1 binding per cell) and ``spreading`` (PD1's spreading SD, linear
  units).

Prints, per carry (normal / skewed) and the reference's PD1+ share (<= 5, 5-10, > 10 %), the gates, their mean error,
median ``w_needed`` and the gates beyond 1.5 points, and the Spearman correlations of ``error`` and ``w_needed``
with the reads and the truth. Development seeds only (see ``validate_gating.py`` for the seeds already used).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmo_gate_replay as fr  # noqa: E402
import validate_gating as vg  # noqa: E402

IDEAL = {"PD1+": "ref_pd1_threshold", "CD8+PD1+": "ref_cd8pd1_threshold", "CD4+PD1+": "ref_cd4pd1_threshold"}
"""The PD1 gates and their ideal-FMO cuts in the simulated truth (linear units)."""
WEIGHTS = np.arange(0.0, 1.3, 1.0 / 12.0)
"""Weights towards the log-normal cut at which each gate's error is read."""
BAND = np.arange(50.0, 91.0, 5.0)
"""The reference's stained percentiles ``band_weight`` matches."""
BAND_WEIGHTS = np.arange(-0.5, 2.01, 0.05)


def _above(values: np.ndarray, cut: float) -> float:
    """% of the finite ``values`` above ``cut``."""
    v = values[np.isfinite(values)]
    return 100.0 * np.count_nonzero(v > cut) / v.size


def band_weight(reference_fmo: np.ndarray, reference_stained: np.ndarray, binding, transform) -> float:
    """The weight of the cut-blend normal -> log-normal signal (the read median and SD) that best reproduces the
    reference's own stained :data:`BAND` percentiles from its FMO events (least squares, transformed units); NaN
    without a log-normal signal (no positive shift)."""
    from tilpheno.gates import placement as pl
    lognormal = pl.lognormal_offsets(binding.shift, binding.total_spread)
    if lognormal is None:
        return float("nan")
    normal = binding.shift + binding.total_spread * pl.SIGNAL_QUANTILES
    events = pl._all_sorted(np.sort(pl._finite_linear(reference_fmo, transform)))
    stained = np.asarray(reference_stained, dtype=np.float64)
    observed = np.percentile(stained[np.isfinite(stained)], BAND)
    n = np.array([pl.upper_offset_threshold(events, normal, p) for p in BAND])
    ln = np.array([pl.upper_offset_threshold(events, lognormal, p) for p in BAND])
    sse = [float(np.sum((transform.apply(n + w * (ln - n)) - observed) ** 2)) for w in BAND_WEIGHTS]
    return float(BAND_WEIGHTS[int(np.argmin(sse))])


def truth_binding(seed: int, sets) -> dict[str, float]:
    """The product's PD1+ share of the non-T lymphocytes and its PD1 binding log-SD and spreading, as simulated."""
    from tilpheno.simulate.cohort import simulate_product
    product = simulate_product(f"V{seed}", seed, 1, phenomena=True)
    phen = vg.set_phenomena(product.phenomena, seed, sets) if sets else product.phenomena
    return {"pd1_other": product.composition.pd1_other, "binding_log_sd": phen.nsb_sd.get("PD1", 0.0),
            "spreading": phen.spread.get("PD1", 0.0)}


def gate_rows(captured: dict, sets) -> list[dict]:
    """One row per PD1 gate of one captured product whose cut is the additive reference carry (module docstring)."""
    from tilpheno.gates import checks
    from tilpheno.gates import placement as pl
    truth, rows = captured["truth"], []
    calls = [c for c in captured["calls"] if c["population"] in IDEAL and "residual_slopes" not in c]
    if not calls:
        return rows
    kw = calls[0]["kw"]
    transform = kw["transform"]
    binding = pl.reference_binding(kw["reference_fmo"], kw["reference_stained"], transform)
    if binding is None:
        return rows
    shape = band_weight(kw["reference_fmo"], kw["reference_stained"], binding, transform)
    own = pl.SKEWED_WEIGHT if binding.right_skewed else 0.0
    simulated = truth_binding(captured["seed"], sets)
    for call in calls:
        d = checks.place_and_check(call["population"], "PD1", call["fmo"], call["stained"], **call["kw"]).diagnostics
        if not (d.get("winner") == "fmo_relative" and d.get("relative_carry") == "reference"
                and "reference_capped_from" not in d):
            continue
        stained = np.asarray(call["stained"], dtype=np.float64)
        ideal = float(transform.apply(np.array([truth[IDEAL[call["population"]]]]))[0])
        percentile = call["kw"]["percentile"]
        upper = pl.upper_events(pl._finite_linear(call["fmo"], transform), percentile)
        normal = pl.carried_threshold(upper, binding.shift, binding.total_spread, percentile)
        lognormal = pl.reference_lognormal_cut(call["fmo"], binding, transform, percentile)
        lognormal = float(transform.inverse(np.array([lognormal]))[0]) if np.isfinite(lognormal) else normal

        def above(w: float) -> float:
            return _above(stained, float(transform.apply(np.array([normal + w * (lognormal - normal)]))[0]))

        error = _above(stained, float(d["threshold"])) - _above(stained, ideal)
        at_own = above(own)
        errors = np.array([error + above(w) - at_own for w in WEIGHTS])
        needed = float(np.interp(0.0, -errors, WEIGHTS, left=-0.01, right=1.26))
        rows.append({"seed": captured["seed"], "gate": call["population"],
                     "carry": "skewed" if binding.right_skewed else "normal", "read_log_sd": binding.log_sd,
                     "read_share": binding.skew / binding.total_spread if binding.total_spread > 0 else 0.0,
                     "band_weight": shape, "error": error, "w_needed": needed, **simulated})
    return rows


def summary(table: pd.DataFrame) -> str:
    """The classes and correlations the module docstring names."""
    share = pd.cut(table.pd1_other, [0.0, 0.05, 0.10, 1.0], labels=["<=5%", "5-10%", ">10%"])
    by = table.assign(reference_pd1=share).groupby(["carry", "reference_pd1"], observed=True).agg(
        gates=("error", "size"), mean_error=("error", "mean"), median_w_needed=("w_needed", "median"),
        beyond_1_5=("error", lambda e: int((e.abs() > 1.5).sum())))
    columns = ["error", "w_needed", "read_log_sd", "read_share", "band_weight", "pd1_other", "binding_log_sd",
               "spreading"]
    corr = table[columns].corr(method="spearman").loc[["error", "w_needed"]]
    return f"{by.round(2).to_string()}\n\nSpearman\n{corr.round(2).to_string()}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pattern", help="glob of captured .pkl files")
    parser.add_argument("--csv", help="write the per-gate rows here")
    parser.add_argument("--set", dest="sets", action="append", type=vg.parse_set, default=[], metavar="NAME=LOW-HIGH",
                        help="as given to the capture (the simulated truth's binding)")
    args = parser.parse_args(argv)
    rows = []
    for _, record in fr.captures(args.pattern):
        rows += gate_rows(record, tuple(args.sets))
    table = pd.DataFrame(rows)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(f"{len(table)} PD1 gates on the reference carry, {table.seed.nunique() if len(table) else 0} products\n")
    if len(table):
        print(summary(table))


if __name__ == "__main__":
    main()
