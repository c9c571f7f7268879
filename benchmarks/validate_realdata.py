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
upstream gate (``GATE_NAMES``: the flag's message opens with the gate's population or marker);
``within_5_flagged`` counts the flags on samples within 5 points (the price of the flags: a
flagged product needs review). The flag table gives, per review-flag code, the population-sample
rows and the samples it flags beyond and within 5 points. Each sample is gated with its donor's
unstained control (role ``unstained``; ``--no-controls`` leaves it out): the sample's gates applied
to the control (``unstained_positive`` / ``unstained_control`` / ``unstained_unusable``).
Unstained controls gated on their own: % "T cells" (should be 0).

The GPL FlowSOM mouse file (``flowsom_68983``, read from ../shared, never copied): gated with
``gating/flowsom_mouse.yaml`` (cells, singlets, T cells = the CD3+ cluster, ab T cells on TCRb,
CD4/CD8 valleys within ab T cells, as the expert's CD4/CD8 quadrants; the expert also gated
NK1.1 and CD19 before CD3 and two singlet gates), against the expert's own gates (``gating.wsp``
re-applied by FlowKit, all 15 counts within one event of FlowJo's): T cells = the expert's
T cells (NK1.1-, with its DN/DP ab T cells) and NK T cells, % of the expert's last singlet gate;
CD4 / CD8 T cells % of those T cells; ``f1_labels`` against the per-event labels
(``gatingResult.csv``, where the expert's 272 DN/DP ab T cells carry no label).

``--gating <folder>`` measures a variant of the strategies (same file names).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

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


MOUSE_UPSTREAM = ("cells", "FSC-A", "singlets", "lymphocytes", "T cells", "CD3")
MOUSE_GATES = {"T cells": MOUSE_UPSTREAM,
               "CD4 T cells": MOUSE_UPSTREAM + ("ab T cells", "TCRb", "CD4+", "CD4", "CD8+", "CD8"),
               "CD8 T cells": MOUSE_UPSTREAM + ("ab T cells", "TCRb", "CD4+", "CD4", "CD8+", "CD8")}

STRATEGIES = {"CD19": "flowatlas_tcell_cd19", "CD45": "flowatlas_tcell_cd45", "": "flowatlas_tcell"}
"""The FlowAtlas strategy of a file's panel: T+B panel (CD19), CD45 panel, else the CD3 panel."""


def strategy_for(path: Path, panel) -> str:
    """The strategy name of ``STRATEGIES`` for the panel of the file at ``path`` (override applied)."""
    from tilpheno.io.fcs import read_fcs
    from tilpheno.panel import panel_from_fcs

    markers = set(panel_from_fcs(read_fcs(path), override=panel, tube="tcell").markers)
    return next(name for marker, name in STRATEGIES.items() if not marker or marker in markers)


@dataclass
class GatedSample:
    """One FlowAtlas sample gated by its panel's strategy, with the expert's gates re-applied.

    ``expert``: our population name (``EXPERT``) -> the expert's mask over the file's events;
    ``workspace``: every population path of the expert's tree -> its mask; ``fcs``: the file read;
    ``control``: the donor's unstained control (None when absent; given to the analysis only when
    ``controls``)."""

    sample: str
    events: int
    result: Any                     # tilpheno.phenotype.ProductResult
    expert: dict[str, np.ndarray]
    workspace: dict[str, np.ndarray]
    flowjo: Any                     # tilpheno.gates.flowjo.FlowJoSample (the expert's gate geometry)
    control: Path | None
    fcs: Any                        # tilpheno.io.fcs.FCSFile: the compensated events the expert gated


def gated_samples(base: Path, strategies, test_panel, controls: bool = True) -> Iterator[GatedSample]:
    """The 14 FlowAtlas samples of ``base`` (``flowatlas_tissue_tcell``) in the manifest's order, each
    gated by the strategy of its panel (``strategies``: name -> Strategy) with ``test_panel`` for the
    detectors FlowJo left unlabelled, and with its donor's unstained control when ``controls``."""
    from tilpheno.gates.flowjo import apply_workspace, read_workspace
    from tilpheno.io.fcs import read_fcs
    from tilpheno.panel import PanelOverrides
    from tilpheno.phenotype import analyze_product

    manifest = pd.read_csv(base / "fcs_manifest.csv")
    workspace = base / "workspace_2021-08-06_12a14ca.wsp"
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
        control = next((base / "unstained_controls_2020").glob(f"{stem.split('_')[0].rstrip('C')}C__*.fcs"), None)
        m = pd.DataFrame([{"file": str(path), "product_id": stem, "tube": "tcell", "role": "stain", "fmo_marker": ""}]
                         + ([{"file": str(control), "product_id": stem, "tube": "unstained", "role": "unstained",
                              "fmo_marker": ""}] if control is not None and controls else []))
        result = analyze_product(stem, m, [strategies[strategy_for(path, panel)]], panel_override=panel)
        fcs = read_fcs(path)
        sample = read_workspace(workspace, sample=str(rec["$FIL"]))   # $FIL: the workspace's name for it
        masks = apply_workspace(sample, fcs.events, fcs.channel_names)
        t_path = next(p for p in masks if p.split("/")[-1] == "T cells")
        expert = {ours: masks[t_path if not sub else f"{t_path}/{sub}"] for ours, (sub, _, _) in EXPERT.items()}
        yield GatedSample(stem, fcs.events.shape[0], result, expert, masks, sample, control, fcs)


def names_gate(message: str, gates) -> bool:
    """True when a flag's message opens with one of ``gates`` (``"<population> (<marker>): ..."``,
    ``"<marker>: ..."``)."""
    return any(message.startswith((f"{k}:", f"{k} (")) for k in gates)


def flag_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per review-flag code: population-sample rows it flags with |delta| > 5 and <= 5 points, and
    the samples (any population) it flags that are beyond 5 on some population vs within 5 on all."""
    codes = sorted({c for cell in table["flags"] for c in cell.split(";") if c})
    worst = table.groupby("sample")["abs_delta"].max()
    out = []
    for code in codes:
        hit = table["flags"].str.split(";").apply(lambda cs, code=code: code in cs)
        samples = set(table.loc[hit, "sample"])
        out.append({"flag": code, "rows_beyond_5": int((hit & (table["abs_delta"] > 5)).sum()),
                    "rows_within_5": int((hit & (table["abs_delta"] <= 5)).sum()),
                    "samples_beyond_5": sum(worst[s] > 5 for s in samples),
                    "samples_within_5": sum(worst[s] <= 5 for s in samples)})
    any_flag = set(table.loc[table["flagged"], "sample"])
    out.append({"flag": "any", "rows_beyond_5": int((table["flagged"] & (table["abs_delta"] > 5)).sum()),
                "rows_within_5": int((table["flagged"] & (table["abs_delta"] <= 5)).sum()),
                "samples_beyond_5": sum(worst[s] > 5 for s in any_flag),
                "samples_within_5": sum(worst[s] <= 5 for s in any_flag)})
    out.append({"flag": "(all rows / samples)", "rows_beyond_5": int((table["abs_delta"] > 5).sum()),
                "rows_within_5": int((table["abs_delta"] <= 5).sum()), "samples_beyond_5": int((worst > 5).sum()),
                "samples_within_5": int((worst <= 5).sum())})
    return pd.DataFrame(out).set_index("flag")


def f1(ours: np.ndarray, expert: np.ndarray) -> float:
    tp = np.count_nonzero(ours & expert)
    denominator = np.count_nonzero(ours) + np.count_nonzero(expert)
    return 2.0 * tp / denominator if denominator else float("nan")


def expert_flowsom_gates(base: Path) -> dict[str, np.ndarray]:
    """The expert's FlowJo gates of the FlowSOM file, re-applied event by event by FlowKit
    (``gating.wsp``; FlowKit reproduces all 15 stored counts within one event)."""
    import flowkit as fk

    ws = fk.Workspace(str(base / "gating.wsp"), fcs_samples=str(base / "68983.fcs"))
    ws.analyze_samples(sample_id="68983.fcs")
    gated = ws.get_gating_results("68983.fcs")
    return {row.gate_name: np.asarray(gated.get_gate_membership(row.gate_name, gate_path=row.gate_path), bool)
            for row in gated.report.itertuples()}


def flowsom_rows(base: Path, analyze_product, load_strategy, gating: Path = ROOT / "gating"):
    """Our populations vs the expert's gates and per-event labels of the FlowSOM example file (or None).

    Expert populations (FlowJo gates re-applied by FlowKit): T cells = the expert's ``T cells``
    (NK1.1- CD3+, with its DN/DP ab T cells) and ``NK T cells`` (NK1.1+ CD3+: our CD3+ gate
    includes them), % of the expert's last singlet gate (``Singlets2``); CD4 / CD8 T cells % of
    that T-cell set. Ours: % of our own parent (singlets, T cells). ``f1``: against those gates;
    ``f1_labels``: against the per-event labels (``gatingResult.csv``: CD4 T, CD8 T, gd T and
    NK T cells for T cells; the expert's 272 DN/DP ab T cells carry no label there).
    """
    from tilpheno.gates.checks import needs_review

    if not (base / "68983.fcs").exists():
        return None
    labels = pd.read_csv(base / "gatingResult.csv", header=None)[0].to_numpy()
    gates = expert_flowsom_gates(base)
    strategy = load_strategy(gating / "flowsom_mouse.yaml")
    m = pd.DataFrame([{"file": str(base / "68983.fcs"), "product_id": "68983", "tube": "mouse", "role": "stain",
                       "fmo_marker": ""}])
    result = analyze_product("68983", m, [strategy])
    tube = result.tubes[0]
    t_cells = gates["T cells"] | gates["NK T cells"]
    expert = {"T cells": (t_cells, gates["Singlets2"]),
              "CD4 T cells": (gates["CD4 T cells"], t_cells), "CD8 T cells": (gates["CD8 T cells"], t_cells)}
    by_label = {"T cells": np.isin(labels, ["CD4 T cells", "CD8 T cells", "gd T cells", "NK T cells"]),
                "CD4 T cells": labels == "CD4 T cells", "CD8 T cells": labels == "CD8 T cells"}
    review = [f for f in result.qc if needs_review(f)]
    out = []
    for pop, (e, e_parent) in expert.items():
        o = tube.masks[pop]
        o_parent = tube.masks[strategy.population(pop).parent if pop == "T cells" else "T cells"]
        out.append({"population": pop, "ours_pct_of_parent": 100 * np.count_nonzero(o) / max(1, np.count_nonzero(o_parent)),
                    "expert_pct_of_parent": 100 * np.count_nonzero(e & e_parent) / max(1, np.count_nonzero(e_parent)),
                    "f1": f1(o, e), "f1_labels": f1(o, by_label[pop]),
                    "flags": ";".join(sorted({f.code for f in review if names_gate(f.message, MOUSE_GATES[pop])}))})
    out_frame = pd.DataFrame(out)
    out_frame["abs_delta"] = (out_frame["ours_pct_of_parent"] - out_frame["expert_pct_of_parent"]).abs()
    return out_frame


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realdata", default=next((str(p / "shared" / "realdata") for p in ROOT.parents if (p / "shared" / "realdata").exists()), "../shared/realdata"))
    parser.add_argument("--out", default="")
    parser.add_argument("--no-controls", action="store_true", help="gate the samples without their donor's unstained control")
    parser.add_argument("--gating", default=str(ROOT / "gating"), help="folder of the strategies (to measure a variant)")
    args = parser.parse_args(argv)

    from tilpheno.gates.checks import needs_review
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.panel import PanelOverrides, read_panel_file
    from tilpheno.phenotype import analyze_product

    base = Path(args.realdata) / "flowatlas_tissue_tcell"
    if not base.exists():
        raise SystemExit(f"{base}: not found (the real data live in ../shared/realdata)")
    strategies = {name: load_strategy(Path(args.gating) / f"{name}.yaml") for name in STRATEGIES.values()}
    test_panel = read_panel_file(ROOT / "tests" / "data" / "realdata_flowatlas" / "panel.csv")

    rows, control_rows, unstained_rows = [], [], []
    for g in gated_samples(base, strategies, test_panel, controls=not args.no_controls):
        stem, result, tube, control, n = g.sample, g.result, g.result.tubes[0], g.control, g.events
        expert = g.expert
        review = [f for f in result.qc if needs_review(f)]
        unstained_rows.append({"sample": stem, "control": control.name if control is not None else "",
                               "unstained_flags": " | ".join(f.message for f in result.qc
                                                             if f.code in ("unstained_positive", "unstained_unusable",
                                                                           "unstained_control"))})
        ours_masks = tube.masks
        for pop, (_, parent, _) in EXPERT.items():
            o_parent = ours_masks[parent] if parent != "root" else np.ones(n, bool)
            e_parent = expert[parent] if parent != "root" else np.ones(n, bool)
            o_pct = 100.0 * np.count_nonzero(ours_masks[pop]) / max(1, np.count_nonzero(o_parent))
            e_pct = 100.0 * np.count_nonzero(expert[pop]) / max(1, np.count_nonzero(e_parent))
            codes = sorted({f.code for f in review if names_gate(f.message, GATE_NAMES[pop])})
            rows.append({"sample": stem, "events": n, "population": pop, "ours_pct": o_pct, "expert_pct": e_pct,
                         "abs_delta": abs(o_pct - e_pct), "f1": f1(ours_masks[pop], expert[pop]),
                         "flagged": bool(codes), "flags": ";".join(codes)})
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

    flowsom = flowsom_rows(Path(args.realdata) / "flowsom_68983", analyze_product, load_strategy, Path(args.gating))
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
    print("\nreview flags on the populations' gates (rows = sample x population; a sample is 'beyond 5' when any"
          " of its populations is):")
    flags = flag_table(table)
    print(flags.to_string())
    print("\nthe samples' gates applied to their donor's unstained control (flag unstained_positive above "
          "1 % of a parent; empty = none):")
    print(pd.DataFrame(unstained_rows).to_string(index=False))
    print("\nunstained controls gated on their own (expected 0 % T cells):")
    print(pd.DataFrame(control_rows).round(2).to_string(index=False))
    if flowsom is not None:
        print("\nFlowSOM 68983 (GPL, per-event expert labels):")
        print(flowsom.round(3).to_string(index=False))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "realdata_flowatlas.csv", index=False)
        summary.to_csv(out / "realdata_flowatlas_summary.csv")
        flags.to_csv(out / "realdata_flowatlas_flags.csv")


if __name__ == "__main__":
    main()
