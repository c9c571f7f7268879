"""Automatic gating vs experts on real data (run by hand; reads ../shared/realdata when present).

    .venv/bin/python benchmarks/validate_realdata.py [--realdata ../shared/realdata] [--out /tmp/realdata]

FlowAtlas tissue T cells (MIT; 14 samples, 5 unstained controls): the strategy of each file's
panel, following the expert's FlowJo hierarchy (``STRATEGIES``: T+B panel ``gating/flowatlas_tcell_cd19.yaml``,
non-B then T cells; CD45 panel ``flowatlas_tcell_cd45.yaml``, CD45+ then T cells; else
``flowatlas_tcell.yaml``; density valleys, no FMOs exist) with
``tests/data/realdata_flowatlas/panel.csv`` for the detectors FlowJo left unlabelled, against the
expert's FlowJo gates of
``workspace_2021-08-06_12a14ca.wsp``, re-applied event by event with
``tilpheno.gates.flowjo.apply_workspace`` (FlowKit reproduces FlowJo's counts for 311 of 327
populations within 1 % or 2 events). Per population and sample: % of parent (ours vs the
expert's), |delta|, and event-level F1 of our population against the expert's. The expert's
Treg gate is Foxp3+ CD127-low of CD4, and so is the strategies' (``Treg`` = FoxP3+ & CD127lo).
Every sample beyond 5 points on a population is checked for a review flag on that gate or on an
upstream gate (``GATE_NAMES``); ``within_5_flagged`` counts the flags on samples within 5 points
(the price of the flags: a flagged product needs review).
Unstained controls: % "T cells" (should be 0).

The GPL FlowSOM mouse file (``flowsom_68983``, read from ../shared, never copied): gated with
``gating/flowsom_mouse.yaml`` (cells, singlets, T cells = the CD3+ cluster, ab T cells on TCRb,
CD4/CD8 valleys within ab T cells, as the expert's CD4/CD8 quadrants; the expert also gated
NK1.1 and CD19 before CD3 and two singlet gates), against the expert's per-event labels
(``gatingResult.csv``): T cells = CD4 T, CD8 T, gd T and NK T labels (our CD3+ includes them;
the expert's few DN/DP ab T cells are unlabelled, so they count as misses), CD4 T and CD8 T.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
EXPERT = {  # our population -> (expert population name under the T-cell node, our parent, expert parent)
    "T cells": ("", "root", "root"),
    "CD4": ("CD4", "T cells", "T cells"),
    "CD8": ("CD8", "T cells", "T cells"),
    "CD4+ CD8+": ("CD4+ CD8+", "T cells", "T cells"),
    "CD4- CD8-": ("CD4- CD8-", "T cells", "T cells"),
    "Treg": ("CD4/Treg", "CD4", "CD4"),
}

UPSTREAM = ("non-B", "CD19", "CD45+", "CD45", "T cells", "CD3")   # the T cells' gate and its parents'
GATE_NAMES = {  # a review flag on any of these gates (population or marker named in the message) counts
    "T cells": UPSTREAM,
    "CD4": UPSTREAM + ("CD4+", "CD4", "CD8+", "CD8"),
    "CD8": UPSTREAM + ("CD4+", "CD4", "CD8+", "CD8"),
    "CD4+ CD8+": UPSTREAM + ("CD4+", "CD4", "CD8+", "CD8"),
    "CD4- CD8-": UPSTREAM + ("CD4+", "CD4", "CD8+", "CD8"),
    "Treg": UPSTREAM + ("CD4+", "CD4", "CD8+", "CD8", "FoxP3+", "FoxP3", "CD127lo", "CD127", "Treg"),
}


STRATEGIES = {"CD19": "flowatlas_tcell_cd19", "CD45": "flowatlas_tcell_cd45", "": "flowatlas_tcell"}
"""The FlowAtlas strategy of a file's panel: T+B panel (CD19), CD45 panel, else the CD3 panel."""


def strategy_for(path: Path, panel) -> str:
    """The strategy name of ``STRATEGIES`` for the panel of the file at ``path`` (override applied)."""
    from tilpheno.io.fcs import read_fcs
    from tilpheno.panel import panel_from_fcs

    markers = set(panel_from_fcs(read_fcs(path), override=panel, tube="tcell").markers)
    return next(name for marker, name in STRATEGIES.items() if not marker or marker in markers)


def f1(ours: np.ndarray, expert: np.ndarray) -> float:
    tp = np.count_nonzero(ours & expert)
    denominator = np.count_nonzero(ours) + np.count_nonzero(expert)
    return 2.0 * tp / denominator if denominator else float("nan")


def flowsom_rows(base: Path, analyze_product, load_strategy):
    """Our populations vs the expert's per-event labels of the FlowSOM example file (or None)."""
    if not (base / "68983.fcs").exists():
        return None
    labels = pd.read_csv(base / "gatingResult.csv", header=None)[0].to_numpy()
    strategy = load_strategy(ROOT / "gating" / "flowsom_mouse.yaml")
    m = pd.DataFrame([{"file": str(base / "68983.fcs"), "product_id": "68983", "tube": "mouse", "role": "stain",
                       "fmo_marker": ""}])
    result = analyze_product("68983", m, [strategy])
    tube = result.tubes[0]
    expert = {
        "T cells": np.isin(labels, ["CD4 T cells", "CD8 T cells", "gd T cells", "NK T cells"]),
        "CD4 T cells": labels == "CD4 T cells",
        "CD8 T cells": labels == "CD8 T cells",
    }
    parents = {"T cells": ("singlets", None), "CD4 T cells": ("T cells", "T cells"), "CD8 T cells": ("T cells", "T cells")}
    out = []
    singlets = tube.masks["singlets"]
    for pop, e in expert.items():
        o = tube.masks[pop]
        o_parent = tube.masks[parents[pop][0]]
        e_parent = expert[parents[pop][1]] if parents[pop][1] else singlets
        out.append({"population": pop, "ours_pct_of_parent": 100 * np.count_nonzero(o) / max(1, np.count_nonzero(o_parent)),
                    "expert_pct_of_parent": 100 * np.count_nonzero(e & e_parent) / max(1, np.count_nonzero(e_parent)),
                    "f1": f1(o, e), "flags": ";".join(sorted({q.code for q in result.qc if q.severity != "info"}))})
    out_frame = pd.DataFrame(out)
    out_frame["abs_delta"] = (out_frame["ours_pct_of_parent"] - out_frame["expert_pct_of_parent"]).abs()
    return out_frame


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realdata", default=next((str(p / "shared" / "realdata") for p in ROOT.parents if (p / "shared" / "realdata").exists()), "../shared/realdata"))
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)

    from tilpheno.gates.checks import needs_review
    from tilpheno.gates.flowjo import apply_workspace, read_workspace
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.io.fcs import read_fcs
    from tilpheno.panel import PanelOverrides, read_panel_file
    from tilpheno.phenotype import analyze_product

    base = Path(args.realdata) / "flowatlas_tissue_tcell"
    if not base.exists():
        raise SystemExit(f"{base}: not found (the real data live in ../shared/realdata)")
    strategies = {name: load_strategy(ROOT / "gating" / f"{name}.yaml") for name in STRATEGIES.values()}
    test_panel = read_panel_file(ROOT / "tests" / "data" / "realdata_flowatlas" / "panel.csv")
    manifest = pd.read_csv(base / "fcs_manifest.csv")
    workspace = base / "workspace_2021-08-06_12a14ca.wsp"

    rows, control_rows = [], []
    for _, rec in manifest.iterrows():
        path = base / rec["file"]
        if not rec["file"].startswith("fcs/"):
            continue
        stem = path.stem
        # the 412C files carry no $PnS: their detectors as the other donors' (README), per file
        rows_412c = [r for r in test_panel.rows if r.tube in ("", "*")]
        if stem.startswith("412C"):
            template = [r for r in test_panel.rows if r.tube == "412C_mLN_026"]
            rows_412c += [type(r)(stem, r.detector, r.marker) for r in template]
        panel = PanelOverrides(test_panel.source, tuple(rows_412c))
        m = pd.DataFrame([{"file": str(path), "product_id": stem, "tube": "tcell", "role": "stain", "fmo_marker": ""}])
        strategy = strategies[strategy_for(path, panel)]
        result = analyze_product(stem, m, [strategy], panel_override=panel)
        tube = result.tubes[0]
        review = " ".join(f.message for f in result.qc if needs_review(f))
        fcs = read_fcs(path)
        sample = read_workspace(workspace, sample=str(rec["$FIL"]))   # $FIL: the workspace's name for it
        masks = apply_workspace(sample, fcs.events, fcs.channel_names)
        t_path = next(p for p in masks if p.split("/")[-1] == "T cells")
        expert = {ours: masks[t_path if not sub else f"{t_path}/{sub}"] for ours, (sub, _, _) in EXPERT.items()}
        n = fcs.events.shape[0]
        ours_masks = tube.masks
        for pop, (_, parent, _) in EXPERT.items():
            o_parent = ours_masks[parent] if parent != "root" else np.ones(n, bool)
            e_parent = expert[parent] if parent != "root" else np.ones(n, bool)
            o_pct = 100.0 * np.count_nonzero(ours_masks[pop]) / max(1, np.count_nonzero(o_parent))
            e_pct = 100.0 * np.count_nonzero(expert[pop]) / max(1, np.count_nonzero(e_parent))
            rows.append({"sample": stem, "events": n, "population": pop, "ours_pct": o_pct, "expert_pct": e_pct,
                         "abs_delta": abs(o_pct - e_pct), "f1": f1(ours_masks[pop], expert[pop]),
                         "flagged": any(f"{k}:" in review or f"{k} (" in review for k in GATE_NAMES[pop])})
    for f in sorted((base / "unstained_controls_2020").glob("*.fcs")):
        # unstained controls carry no $PnS: CD4 on 355 670_30 for donor 390C, 355 820_60 otherwise (README)
        cd4 = "FJComp-355 670_30-A" if f.name.startswith("390C") else "FJComp-355 820_60-A"
        rows_u = [r for r in test_panel.rows if r.tube in ("", "*")]
        template = type(rows_u[0])
        rows_u += [template("", "FJComp-355 379_28-A", "CD3"), template("", "FJComp-355 560_40-A", "CD8"),
                   template("", cd4, "CD4")]
        panel = PanelOverrides(test_panel.source, tuple(rows_u))
        m = pd.DataFrame([{"file": str(f), "product_id": f.stem, "tube": "tcell", "role": "stain", "fmo_marker": ""}])
        try:
            result = analyze_product(f.stem, m, [strategies[strategy_for(f, panel)]], panel_override=panel)
            pops = result.tubes[0].populations.set_index("population")
            control_rows.append({"control": f.name, "t_cells_pct": pops.loc["T cells", "pct_of_parent"],
                                 "flags": ";".join(sorted({q.code for q in result.qc}))})
        except Exception as exc:  # report, do not stop the table
            control_rows.append({"control": f.name, "t_cells_pct": float("nan"), "flags": f"error: {exc}"})

    flowsom = flowsom_rows(Path(args.realdata) / "flowsom_68983", analyze_product, load_strategy)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print("per sample (% of parent):")
    print(table.round(2).to_string(index=False))
    summary = table.groupby("population", sort=False).agg(
        samples=("sample", "size"), median_abs_delta=("abs_delta", "median"), max_abs_delta=("abs_delta", "max"),
        median_f1=("f1", "median"), min_f1=("f1", "min"),
        beyond_5=("abs_delta", lambda s: int((s > 5).sum())),
        beyond_5_flagged=("abs_delta", lambda s: int(((s > 5) & table.loc[s.index, "flagged"]).sum())),
        within_5_flagged=("abs_delta", lambda s: int(((s <= 5) & table.loc[s.index, "flagged"]).sum())),
    )
    print("\nper population (targets: median |delta| <= 2 points, F1 >= 0.95, every sample beyond 5 points flagged):")
    print(summary.round(3).to_string())
    print("\nunstained controls (expected 0 % T cells):")
    print(pd.DataFrame(control_rows).round(2).to_string(index=False))
    if flowsom is not None:
        print("\nFlowSOM 68983 (GPL, per-event expert labels):")
        print(flowsom.round(3).to_string(index=False))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "realdata_flowatlas.csv", index=False)
        summary.to_csv(out / "realdata_flowatlas_summary.csv")


if __name__ == "__main__":
    main()
