"""Where our FlowAtlas populations disagree with the expert's, event by event (run by hand; reads ../shared/realdata).

    .venv/bin/python benchmarks/realdata_f1_census.py [--realdata ../shared/realdata] [--csv out.csv] [--gating DIR]

For CD4 / CD8 / CD4+CD8+ / CD4-CD8- (% of T cells, the CD4 x CD8 plane) and Treg (of CD4, the
FoxP3 x CD127 plane), each sample gated as ``validate_realdata.py`` gates it (``gated_samples``),
every event that is in our population and not in the expert's, or the reverse, falls in one class,
tested in this order:

- ``upstream``: our parent gate and the expert's disagree on it (T cells for the CD4/CD8 plane;
  CD4 for Treg, which carries the T-cell and CD4 disagreements);
- ``gap`` (the expert's gate shape): both parents hold it and the expert put it in none of the
  plane's sibling gates (the margins between the expert's CD4/CD8/DP/DN gates, or outside both
  Treg and non-Treg), so no pair of cuts can agree on it;
- ``shape`` (the expert's gate shape): the best axis-parallel pair of cuts for this sample
  (``best_cuts``: fitted to the expert's labels of the events both parents hold, on our transform,
  0.005 grid; a yardstick, never a rule) disagrees with the expert on it too: the expert's boundary
  is not a pair of 1-D thresholds there (a diagonal or polygon edge);
- ``boundary``: the best cuts agree with the expert, and the event lies within ``NEAR`` (0.02
  transformed units) of our cut on every axis where our call differs from theirs;
- ``cut``: the best cuts agree with the expert and the event lies further from our cut (our 1-D
  cut misplaced; ``cut_delta_*`` = our cut - the best cut, transformed units).

Per sample and population it also gives F1 (ours vs the expert's, as ``validate_realdata.py``),
``f1_on_expert_parent`` (our cuts on the expert's parent: the plane alone), ``f1_best_cuts`` (the
best axis-parallel cuts on the expert's parent: what no 1-D cut pair can beat) and
``f1_two_experts``: the F1 of our population against itself with its cuts moved by ``NEAR``
(each cut alone and both together, either way: 8 shifts, mean), the agreement two experts drawing
the same gate 0.02 apart on the transform would reach at this population size and density.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validate_realdata import ROOT, STRATEGIES, f1, gated_samples  # noqa: E402

NEAR = 0.02
"""Transformed units (logicle, 0..1 over the scale): the width of the ``boundary`` class and the
two experts' shift."""

GRID = 0.005
"""Transformed units: the step of the best-cut search."""

PLANES = {
    # plane -> (x marker, y marker, x gate, y gate, our parent, expert parent, {class id: population})
    "CD4 x CD8": ("CD4", "CD8", "CD4+", "CD8+", "T cells", "T cells",
                  {0: "CD4- CD8-", 1: "CD4", 2: "CD8", 3: "CD4+ CD8+"}),
    "FoxP3 x CD127": ("FoxP3", "CD127", "FoxP3+", "CD127lo", "CD4", "CD4", {0: "non-Treg", 1: "Treg"}),
}
"""The two planes: class ids of the CD4 x CD8 plane = 1 * (x above its cut) + 2 * (y above its cut);
of the FoxP3 x CD127 plane 1 = FoxP3 above and CD127 below its cuts (Treg), 0 = any other."""

CLASSES = ("upstream", "gap", "shape", "boundary", "cut")


def plane_class(x: np.ndarray, y: np.ndarray, cx: float, cy: float, plane: str) -> np.ndarray:
    """Class id of every event (see ``PLANES``) for the cuts ``cx`` on x and ``cy`` on y."""
    if plane == "CD4 x CD8":
        return (x >= cx).astype(int) + 2 * (y >= cy).astype(int)
    return ((x >= cx) & (y < cy)).astype(int)


def best_cuts(x: np.ndarray, y: np.ndarray, label: np.ndarray, plane: str, step: float = GRID) -> tuple[float, float]:
    """The pair of axis-parallel cuts (x, y; transformed units, on a ``step`` grid) that agree with
    the expert's class ``label`` (-1 = in none of the expert's gates, never agreed with) on the most
    events; ties to the lowest cuts."""
    lo = min(np.nanmin(x), np.nanmin(y)) - step
    hi = max(np.nanmax(x), np.nanmax(y)) + step
    edges = np.arange(np.floor(lo / step) * step, hi + step, step)
    k = len(edges) - 1
    counts = {c: np.histogram2d(x[label == c], y[label == c], bins=[edges, edges])[0]
              for c in np.unique(label[label >= 0])}
    # cut i on x = edges[i]: bins < i are below. cum[i, j] = events of a class in bins x < i, y < j
    def below(h):
        out = np.zeros((k + 1, k + 1))
        out[1:, 1:] = h.cumsum(0).cumsum(1)
        return out
    total = {c: h.sum() for c, h in counts.items()}
    cum = {c: below(h) for c, h in counts.items()}
    col = {c: np.concatenate([[0.0], h.sum(1).cumsum()]) for c, h in counts.items()}   # x < i
    row = {c: np.concatenate([[0.0], h.sum(0).cumsum()]) for c, h in counts.items()}   # y < j
    agree = np.zeros((k + 1, k + 1))
    for c in counts:
        xl_yl = cum[c]
        xl = np.broadcast_to(col[c][:, None], xl_yl.shape)
        yl = np.broadcast_to(row[c][None, :], xl_yl.shape)
        if plane == "CD4 x CD8":
            region = {0: xl_yl, 1: yl - xl_yl, 2: xl - xl_yl, 3: total[c] - xl - yl + xl_yl}[c]
        else:
            treg = yl - xl_yl          # x >= cut, y < cut
            region = treg if c == 1 else total[c] - treg
        agree += region
    i, j = np.unravel_index(np.argmax(agree), agree.shape)
    return float(edges[i]), float(edges[j])


def shifted_f1(x, y, cx, cy, plane, target: int, parent: np.ndarray, near: float = NEAR) -> float:
    """Mean F1 of class ``target`` within ``parent`` against itself with the cuts moved by ``near``
    (x alone, y alone, both; either way: 8 shifts)."""
    base = parent & (plane_class(x, y, cx, cy, plane) == target)
    shifts = [(dx, dy) for dx in (-near, 0, near) for dy in (-near, 0, near) if (dx, dy) != (0, 0)]
    return float(np.mean([f1(base, parent & (plane_class(x, y, cx + dx, cy + dy, plane) == target))
                          for dx, dy in shifts]))


def census(g, plane: str) -> list[dict]:
    """Rows (one per population of ``plane``) of the sample ``g`` (``validate_realdata.GatedSample``)."""
    xm, ym, xg, yg, o_par, e_par, pops = PLANES[plane]
    tube = g.result.tubes[0]
    x, y = tube.data[xm], tube.data[ym]
    cx, cy = tube.diagnostics[xg]["threshold"], tube.diagnostics[yg]["threshold"]
    ours_parent, expert_parent = tube.masks[o_par], g.expert[e_par]
    prefix = next(p for p in g.workspace if p.split("/")[-1] == "T cells")
    if plane == "CD4 x CD8":
        expert_pop = {c: g.expert[p] for c, p in pops.items()}
        ours_pop = {c: tube.masks[p] for c, p in pops.items()}
    else:
        expert_pop = {0: g.workspace[f"{prefix}/CD4/non-Treg"], 1: g.expert["Treg"]}
        ours_pop = {1: tube.masks["Treg"]}
    label = np.full(g.events, -1)
    for c, m in expert_pop.items():
        label[m & (label < 0)] = c
    both = ours_parent & expert_parent
    bx, by = best_cuts(x[both], y[both], label[both], plane)
    ours_cls = plane_class(x, y, cx, cy, plane)
    best_cls = plane_class(x, y, bx, by, plane)
    rows = []
    for c, pop in pops.items():
        if plane == "FoxP3 x CD127" and c == 0:
            continue
        o, e = ours_pop[c], expert_pop[c]
        off = o ^ e
        upstream = off & (ours_parent ^ expert_parent)
        gap = off & both & (label < 0)
        shape = off & both & (label >= 0) & (best_cls != label)
        rest = off & both & (label >= 0) & (best_cls == label)
        x_differs = (x >= cx) != (x >= bx)
        y_differs = (y >= cy) != (y >= by)
        near = (~x_differs | (np.abs(x - cx) < NEAR)) & (~y_differs | (np.abs(y - cy) < NEAR))
        counts = {"upstream": upstream, "gap": gap, "shape": shape, "boundary": rest & near, "cut": rest & ~near}
        assert sum(np.count_nonzero(m) for m in counts.values()) == np.count_nonzero(off)
        row = {"sample": g.sample, "plane": plane, "population": pop,
               "ours": int(np.count_nonzero(o)), "expert": int(np.count_nonzero(e)), "f1": f1(o, e),
               "f1_on_expert_parent": f1(expert_parent & (ours_cls == c), e),
               "f1_best_cuts": f1(expert_parent & (best_cls == c), e),
               "f1_two_experts": shifted_f1(x, y, cx, cy, plane, c, ours_parent),
               "cut_x": cx, "cut_y": cy, "best_x": bx, "best_y": by,
               "cut_delta_x": cx - bx, "cut_delta_y": cy - by}
        for name, m in counts.items():
            row[f"{name}_ours_only"] = int(np.count_nonzero(m & o))
            row[f"{name}_expert_only"] = int(np.count_nonzero(m & e))
        rows.append(row)
    return rows


def t_cell_census(g, cd3_transform) -> list[dict]:
    """The T-cell events of the sample ``g`` that are ours only or the expert's only (the
    ``upstream`` class of the CD4 x CD8 plane), by where they lie against the expert's T-cell
    rectangle (on the compensated linear scale): CD3 below its lower edge, CD3 above its upper
    edge, outside it on its other marker (CD45 or CD8), or inside it (then an earlier gate of the
    expert's, e.g. non-B, or our gates above T cells decided); ``in_dn``: of those, in our or the
    expert's CD4- CD8- population; ``cd3_cut`` our T-cell cut and ``expert_cd3_edge`` the expert's
    lower CD3 edge, both in transformed units (``cd3_transform``: the strategies' CD3 scale)."""
    gate = next(p.gate for p in g.flowjo.populations if p.name == "T cells")
    events = {d: g.fcs.events[:, g.fcs.channel_names.index(d)] for d in gate.dims}
    cd3 = next(i for i, d in enumerate(gate.dims) if "379_28" in d)   # CD3 (BUV395) in every panel
    other = 1 - cd3
    tube = g.result.tubes[0]
    ours, expert = tube.masks["T cells"], g.expert["T cells"]
    dn = tube.masks["CD4- CD8-"] | g.expert["CD4- CD8-"]
    rows = []
    for side, m in (("ours_only", ours & ~expert), ("expert_only", expert & ~ours)):
        c3, co = events[gate.dims[cd3]], events[gate.dims[other]]
        below, above = m & (c3 < gate.lows[cd3]), m & (c3 > gate.highs[cd3])
        off_other = m & ~below & ~above & ((co < gate.lows[other]) | (co > gate.highs[other]))
        rows.append({"sample": g.sample, "side": side, "events": int(np.count_nonzero(m)),
                     "in_dn": int(np.count_nonzero(m & dn)), "cd3_below_expert": int(np.count_nonzero(below)),
                     "cd3_above_expert": int(np.count_nonzero(above)), "outside_on_other": int(np.count_nonzero(off_other)),
                     "inside_rectangle": int(np.count_nonzero(m & ~below & ~above & ~off_other)),
                     "other_marker": gate.dims[other], "cd3_cut": tube.diagnostics["T cells"]["threshold"],
                     "expert_cd3_edge": float(cd3_transform.apply(np.array([gate.lows[cd3]]))[0])})
    return rows


def expert_gate_kinds(g) -> dict[str, str]:
    """The expert's gate kind of each population of the two planes (``rectangle`` / ``polygon`` ...,
    ``display`` when drawn on FlowJo's display scale rather than the linear one)."""
    wanted = {"CD4", "CD8", "CD4+ CD8+", "CD4- CD8-", "Treg", "non-Treg"}
    return {p.name: p.kind + (" (display)" if p.display else " (linear)")
            for p in g.flowjo.populations if p.name in wanted}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realdata", default=next((str(p / "shared" / "realdata") for p in ROOT.parents
                                                    if (p / "shared" / "realdata").exists()), "../shared/realdata"))
    parser.add_argument("--gating", default=str(ROOT / "gating"))
    parser.add_argument("--csv", default="")
    args = parser.parse_args(argv)

    from tilpheno.gates.strategy import load_strategy
    from tilpheno.panel import read_panel_file

    base = Path(args.realdata) / "flowatlas_tissue_tcell"
    strategies = {name: load_strategy(Path(args.gating) / f"{name}.yaml") for name in STRATEGIES.values()}
    test_panel = read_panel_file(ROOT / "tests" / "data" / "realdata_flowatlas" / "panel.csv")
    cd3 = strategies["flowatlas_tcell"].transform_for("CD3")
    assert all(st.transform_for("CD3") == cd3 for st in strategies.values()), "one CD3 scale for the three panels"
    rows, kinds, t_rows = [], [], []
    for g in gated_samples(base, strategies, test_panel):
        kinds.append({"sample": g.sample, **expert_gate_kinds(g)})
        t_rows.extend(t_cell_census(g, cd3))
        for plane in PLANES:
            rows.extend(census(g, plane))
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    print("the expert's gates:")
    print(pd.DataFrame(kinds).to_string(index=False))
    print("\nT cells ours only / the expert's only, against the expert's T-cell rectangle:")
    print(pd.DataFrame(t_rows).round(3).to_string(index=False))
    print("\nper sample and population (events; *_ours_only = ours and not the expert's):")
    print(table.round(3).to_string(index=False))
    cols = [f"{c}_{side}" for c in CLASSES for side in ("ours_only", "expert_only")]
    summary = table.groupby("population", sort=False).agg(
        median_f1=("f1", "median"), median_f1_on_expert_parent=("f1_on_expert_parent", "median"),
        median_f1_best_cuts=("f1_best_cuts", "median"), median_f1_two_experts=("f1_two_experts", "median"),
        **{c: (c, "sum") for c in cols})
    print("\nper population (events summed over the samples; F1 medians):")
    print(summary.round(3).T.to_string())
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
