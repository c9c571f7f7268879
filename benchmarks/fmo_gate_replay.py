"""Capture the FMO gates' inputs once, then re-place them offline with the code on PYTHONPATH (run by hand).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/fmo_gate_replay.py capture --first-seed 91001 --products 120 --out /tmp/cap --jobs 2
    PYTHONPATH=$PWD .venv/bin/python benchmarks/fmo_gate_replay.py replay "/tmp/cap/91*.pkl" --csv /tmp/replay.csv

``capture`` simulates the products as ``validate_gating.py`` does (bench phenomena, 20,000 events
per tube; ``--set NAME=LOW-HIGH`` as there, e.g. ``--set pd1_binding=150-300 --set
pd1_binding_sd=0.6-0.8``), runs ``analyze_product`` once and pickles, per product, every call of
``checks.place_and_check`` (the FMO and stained parents' values, the strategy parameters, the
skew-reference arrays; the residual-spillover check's second placement of a gate, ``phenotype``'s
``_residual_check``, marked with its slopes, ``residual_slopes``; the compensation-misfit check's, ``_misfit_check``,
since stop 63, ``misfit_slopes``), the QC flags, the phenotype and the
truth. ``replay`` places every captured ``fmo`` gate again with the code on ``PYTHONPATH`` (a marked
second placement too, judged by ``checks.residual_impact`` or ``checks.misfit_impact`` against the gate's replayed placement as
the engine does: one placement per gate; a capture from before the mark is refused), moves the FMO-gated variables by the change of
their gate's % of parent (``cd8pd1_pct_of_cd3`` scaled by CD8 % of CD3) and NK and NKT (``CD56+ & !CD3+``,
``CD3+ & CD56+``: both gates are placed on the live lymphocytes, the same events in the same order, so the
two are counted again on the captured values with both gates' replayed cuts; stop 50), replaces the placement
flags of those gates by the new ones (with ``gates.shared_reading.shared_reading_flags`` over the gates
carrying one reference reading, as the engine adds them; the capture keeps the reference's events, not its
name, so they stand for it in the reading's key) and prints ``validate_gating.py``'s tables (the upstream
gates are as captured: a change to the lineage gates needs a new capture). With the capturing code
the replay reproduces ``validate_gating.py``'s figures. Development seeds only (see
``validate_gating.py`` for the seeds already used).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import pickle
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import validate_gating as vg  # noqa: E402

PLACEMENT_CODES = {"uncertain_threshold", "cut_in_dense_region", "negative_shift", "fmo_excess_positive",
                   "cut_at_scale_edge", "low_events"}
EXPRESSION_VARIABLES = {"nk_pct_of_live_lymph": ("CD56+", "CD3+", False), "nkt_pct_of_live_lymph": ("CD56+", "CD3+", True)}
"""Variables of two gates placed on one parent: (gate, other gate, inside the other), as the surface strategy's
``NK`` (``CD56+ & !CD3+``) and ``NKT`` (``CD3+ & CD56+``) of the live lymphocytes."""
VARIABLE_GATE = {"pd1_pct_of_live_lymph": "PD1+", "cd8pd1_pct_of_cd8": "CD8+PD1+", "cd8pd1_pct_of_cd3": "CD8+PD1+",
                 "cd4pd1_pct_of_cd4": "CD4+PD1+", "cd4foxp3_pct_of_cd4": "CD4+FoxP3+"}


def capture_one(args) -> int:
    seed, events, outdir, sets = args
    out = Path(outdir) / f"{seed}.pkl"
    if out.exists():
        return seed
    from tilpheno.gates import checks
    from tilpheno.gates.strategy import default_strategy_paths, load_strategy
    from tilpheno.phenotype import analyze_product

    calls, placed, original, impact, misfit = [], [], checks.place_and_check, checks.residual_impact, checks.misfit_impact

    def recording(population, marker, fmo_values, stained_values, **kw):
        result = original(population, marker, fmo_values, stained_values, **kw)
        calls.append(dict(population=population, marker=marker, fmo=np.array(fmo_values),
                          stained=None if stained_values is None else np.array(stained_values), kw=kw,
                          threshold=float(result.diagnostics["threshold"])))
        placed.append(result)
        return result

    def residual(population, marker, placement, stained, corrected, corrected_stained, slopes, **kw):
        # the call that placed ``corrected`` was the residual check's second placement, not the gate's
        calls[next(i for i, p in enumerate(placed) if p is corrected)]["residual_slopes"] = dict(slopes)
        return impact(population, marker, placement, stained, corrected, corrected_stained, slopes, **kw)

    def misfitted(population, marker, placement, stained, corrected, slopes, **kw):
        # likewise the compensation-misfit check's second placement (stop 63)
        calls[next(i for i, p in enumerate(placed) if p is corrected)]["misfit_slopes"] = dict(slopes)
        return misfit(population, marker, placement, stained, corrected, slopes, **kw)

    checks.place_and_check, checks.residual_impact, checks.misfit_impact = recording, residual, misfitted
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prod, manifest = vg.written_product(seed, events, sets, tmp)
            result = analyze_product(prod.product_id, manifest, [load_strategy(p) for p in default_strategy_paths()])
    finally:
        checks.place_and_check, checks.residual_impact, checks.misfit_impact = original, impact, misfit
    review = [(f.code, f.message) for f in result.qc if checks.needs_review(f)]
    with open(out, "wb") as fh:
        pickle.dump(dict(seed=seed, calls=calls, truth=dict(prod.truth), phenotype=dict(result.phenotype),
                         review=review), fh)
    return seed


def captures(pattern: str) -> Iterator[tuple[str, dict]]:
    """``(path, record)`` for every file :func:`capture_one` wrote that matches the glob ``pattern``, in path
    order: the reader of this script's captures, for ``replay`` and the scripts that read them
    (``pd1_tail_census.py``, ``pd1_carry_weight.py``, ``pd1_reference_noise.py``)."""
    for path in sorted(glob.glob(pattern)):
        with open(path, "rb") as fh:
            record = pickle.load(fh)
        yield path, record


def _pct(values: np.ndarray, cut: float) -> float:
    v = values[np.isfinite(values)]
    return 100.0 * np.count_nonzero(v > cut) / v.size


def _pct_with(values: np.ndarray, other: np.ndarray, cut: float, other_cut: float, inside: bool) -> float:
    """% of the parent above ``cut`` and inside (``inside``) or outside the other gate (above ``other_cut``):
    ``values`` and ``other`` are the two gates' values of the parent's events, in one order."""
    if values.shape != other.shape:
        raise ValueError(f"the two gates' parents differ ({values.size} and {other.size} events)")
    return 100.0 * np.count_nonzero((values > cut) & ((other > other_cut) == inside)) / values.size


def replay_one(record: dict) -> dict:
    from tilpheno.gates import checks
    from tilpheno.gates.shared_reading import reading_key, shared_reading_flags

    moved, final, gate_call = {}, {}, {}
    for c in record["calls"]:
        population, kw = c["population"], c["kw"]
        placed = checks.place_and_check(population, c["marker"], c["fmo"], c["stained"], **kw)
        if "residual_slopes" in c:   # the residual check's second placement of the gate placed before (engine)
            main = gate_call[population]
            final[population] = checks.residual_impact(population, c["marker"], final[population], main["stained"],
                                                       placed, c["stained"], c["residual_slopes"])
            continue
        if "misfit_slopes" in c:   # the compensation-misfit check's second placement (engine, stop 63)
            final[population] = checks.misfit_impact(population, c["marker"], final[population],
                                                     gate_call[population]["stained"], placed, c["misfit_slopes"])
            continue
        if population in final:
            raise ValueError(f"{population} was placed twice: captured before the residual check's second placement "
                             "was marked (stop 49); capture again")
        gate_call[population], final[population] = c, placed
        if c["stained"] is not None:
            moved[population] = _pct(c["stained"], float(placed.diagnostics["threshold"])) - _pct(c["stained"], c["threshold"])
    new_review, read = [], []
    for population, placed in final.items():
        c, kw = gate_call[population], gate_call[population]["kw"]
        new_review += [(f.code, f.message) for f in placed.flags if checks.needs_review(f)]
        reference = kw.get("reference_fmo")   # its events stand for the reference population's name
        params = {**kw, "skew_reference": None if reference is None else hashlib.sha1(reference.tobytes()).hexdigest()}
        read.append((population, c["marker"], reading_key(c["marker"], kw["source_file"], params, kw["percentile"]),
                     placed.diagnostics))
    new_review += [(f.code, f.message) for f in shared_reading_flags(read)]
    replayed = {c["population"] for c in record["calls"]}
    review = [f for f in record["review"]
              if not (f[0] in PLACEMENT_CODES and f[1].split(" (")[0] in replayed)] + new_review
    phenotype = dict(record["phenotype"])
    for v, gate in VARIABLE_GATE.items():
        if gate in moved:
            scale = phenotype["cd8_pct_of_cd3"] / 100.0 if v == "cd8pd1_pct_of_cd3" else 1.0
            phenotype[v] += moved[gate] * scale
    for v, (gate, other, inside) in EXPRESSION_VARIABLES.items():
        if gate in gate_call and other in gate_call:
            cuts = [(float(final[g].diagnostics["threshold"]), gate_call[g]["threshold"]) for g in (gate, other)]
            phenotype[v] += (_pct_with(gate_call[gate]["stained"], gate_call[other]["stained"], *(c[0] for c in cuts), inside)
                             - _pct_with(gate_call[gate]["stained"], gate_call[other]["stained"], *(c[1] for c in cuts), inside))
    row = {"product_id": f"V{record['seed']}", "seed": record["seed"],
           "review_flags": ";".join(sorted({f"{code}:{msg.split(' (')[0]}" for code, msg in review}))}
    flagged = {msg.split(" (")[0] for _, msg in review}
    for v in vg.ALL_VARIABLES:
        # records captured before the simulator's truth had the extras: their errors are NaN
        row[v] = phenotype[v] - record["truth"].get(vg.truth_key(v), float("nan"))
        row[f"flag_{v}"] = bool(flagged & set(vg.VARIABLE_GATES[v]))
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("capture")
    cap.add_argument("--first-seed", type=int, required=True)
    cap.add_argument("--products", type=int, default=60)
    cap.add_argument("--events", type=int, default=20000)
    cap.add_argument("--out", required=True)
    cap.add_argument("--jobs", type=int, default=1)
    cap.add_argument("--set", dest="sets", action="append", type=vg.parse_set, default=[], metavar="NAME=LOW-HIGH",
                     help="set this phenomenon per product, as validate_gating.py --set (repeatable)")
    rep = sub.add_parser("replay")
    rep.add_argument("pattern", help="glob of captured .pkl files")
    rep.add_argument("--csv", help="write the per-product errors here")
    args = parser.parse_args(argv)
    if args.command == "capture":
        Path(args.out).mkdir(parents=True, exist_ok=True)
        work = [(s, args.events, args.out, tuple(args.sets)) for s in range(args.first_seed, args.first_seed + args.products)]
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs) as pool:
                list(pool.map(capture_one, work))
        else:
            for w in work:
                capture_one(w)
        print(f"captured {len(work)} products in {args.out}")
        return
    rows = []
    for path, record in captures(args.pattern):
        try:
            rows.append(replay_one(record))
        except ValueError as exc:
            sys.exit(f"{path}: {exc}")
    table = pd.DataFrame(rows).set_index("product_id")
    if args.csv:
        table.to_csv(args.csv)
    vg.print_tables(table, f"{len(table)} products replayed")


if __name__ == "__main__":
    main()
