"""`tilpheno new-study` on FlowAtlas with each donor's unstained control: the drafted one-population
gates against the expert's FlowJo gates (run by hand; reads ../shared/realdata when present).

    .venv/bin/python benchmarks/draft_control_realdata.py [--realdata ../shared/realdata]

The 14 FlowAtlas tissue T-cell files, each its own product with its donor's unstained control (from
``unstained_controls_2020``; copied once per tissue, as README's new-lab section says), are drafted
at once as the README's lab does: ``new-study --manifest`` (one tube ``T cell``; roles stain and
unstained) and ``--panel`` (FoxP3, PD1 and CD127 on their detectors for every file; the 412C
exports, which carry no ``$PnS``, named as the 423 and 428 files label the same detectors). No FMO
exists in this set, so every marker gate is the density ``valley``. Each product is gated with the
drafted strategy (``analyze_product``, its control included), and the expert's gates are the
workspace's (``apply_workspace``). Printed:

* every gate that saw one population and called it negative against the control (methods
  ``single_population_sd`` and ``unstained_carry``): how many keep 0 % of their parent, how many
  are ``cut_at_scale_edge``, and the distribution of the % they keep;
* per sample, where the expert has the population: the draft's FoxP3+ % of its CD4+ against the
  expert's Treg % of CD4 (a Treg gate is FoxP3+ CD25+ or CD25+ CD127lo: FoxP3+ alone lies at or above
  it), and the draft's CXCR3 cut applied to the expert's memory CD4 T cells against the expert's Th1
  % of memory (Th1 = CXCR3+ CCR6-: the CXCR3+ CCR6+ lie above it), where the sample's workspace gates Th1.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from draft_nesting_realdata import pct, realdata_folder  # noqa: E402

CONTROLS = {"390C": "390C__390C_unst_022", "403C": "403C__donor_unst_021", "412C": "412C__412C_unst_022",
            "423_": "423C__Donor_unst_037", "428_": "428C__Donor_unst_032"}
"""A stained file's first four characters -> its donor's unstained control (unstained_controls_2020)."""
LABELS_412C = ("FJComp-355 379_28-A:CD3 | FJComp-355 560_40-A:CD8 | FJComp-355 740_35-A:CD69 | FJComp-355 820_60-A:CD4 | "
               "FJComp-405 450_50-A:CD103 | FJComp-405 515_20-A:HLA-DR | FJComp-405 585_15-A:CD19 | "
               "FJComp-405 605_40-A:CCR4 | FJComp-405 670_30-A:CCR6 | FJComp-405 780_60-A:CD45RA | "
               "FJComp-488 525_50-A:CCR10 | FJComp-488 715_30-A:CXCR3 | FJComp-561 610_20-A:Helios | "
               "FJComp-640 670_30-A:CD25 | FJComp-640 730_35-A:CXCR5 | FJComp-640 780_60-A:CCR7")
"""The 412C exports' detectors (no $PnS) as the 423 and 428 files of the same panel label them."""
ONE_POPULATION = ("single_population_sd", "unstained_carry")


def build(base: Path, work: Path) -> tuple[Path, Path, Path]:
    """The lab's folder (one subfolder per product: the stained file and its donor's control), its
    manifest and its panel file."""
    folder = work / "fcs"
    rows = []
    for path in sorted((base / "fcs").glob("*.fcs")):
        sub = folder / path.stem
        sub.mkdir(parents=True)
        shutil.copy(path, sub / path.name)
        control = CONTROLS[path.stem[:4]] + ".cleaned.fcs"
        shutil.copy(base / "unstained_controls_2020" / control, sub / control)
        rows += [(f"{path.stem}/{path.name}", path.stem, "T cell", "stain"),
                 (f"{path.stem}/{control}", path.stem, "T cell", "unstained")]
    lab = work / "lab.csv"
    pd.DataFrame(rows, columns=["file", "product_id", "tube", "role"]).to_csv(lab, index=False)
    panel = pd.read_csv(ROOT / "tests" / "data" / "realdata_flowatlas" / "panel.csv", dtype=str, keep_default_na=False)
    panel = panel[panel["tube"] == "*"].assign(tube="")
    extra = pd.DataFrame([("412C", *label.split(":")) for label in LABELS_412C.split(" | ")], columns=panel.columns)
    panel_csv = work / "panel.csv"
    pd.concat([panel, extra]).to_csv(panel_csv, index=False)
    return folder, lab, panel_csv


def main(argv=None) -> None:
    realdata = realdata_folder(argv, __doc__.splitlines()[0])

    from tilpheno.gates.flowjo import apply_workspace, read_workspace
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.io.fcs import read_fcs
    from tilpheno.panel import read_panel_file
    from tilpheno.phenotype import analyze_product
    from tilpheno.scaffold import draft_study, write_study

    base = realdata / "flowatlas_tissue_tcell"
    atlas = pd.read_csv(base / "fcs_manifest.csv")
    gates, samples = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder, lab, panel_csv = build(base, work)
        draft = draft_study(folder, panel=panel_csv, manifest=lab)
        write_study(draft, work / "study")
        [tube] = draft.tubes
        strategy = load_strategy(work / "study" / f"{tube.kind}.yaml")
        manifest = pd.read_csv(work / "study" / "manifest.csv", dtype=str, keep_default_na=False)
        manifest["file"] = [str(folder / f) for f in manifest["file"]]
        panel = read_panel_file(panel_csv)
        for product, rows in manifest.groupby("product_id", sort=True):
            result = analyze_product(str(product), rows, [strategy], panel_override=panel)
            [stained] = [t for t in result.tubes if t.role == "stain"]
            assert stained.subsample is None
            edge = {f.gate for f in result.qc if f.code == "cut_at_scale_edge"}
            for population, parent, _, method in stained.gates:
                d = stained.diagnostics.get(population, {})
                if method in ONE_POPULATION and "negative_peak" in d and "unstained_median" in d:
                    whole = stained.masks[parent] if parent in stained.masks else np.ones(stained.n_events, bool)
                    gates.append({"product": product, "gate": population, "method": method,
                                  "kept_pct": pct(stained.masks[population], whole), "edge": population in edge})
            fil = str(atlas.loc[atlas["file"] == f"fcs/{product}.fcs", "$FIL"].iloc[0])
            fcs = read_fcs(base / "fcs" / f"{product}.fcs")
            expert = apply_workspace(read_workspace(base / "workspace_2021-08-06_12a14ca.wsp", sample=fil),
                                     fcs.events, fcs.channel_names)
            cd4 = next(p for p in expert if p.endswith("T cells/CD4"))
            memory = f"{cd4}/non-Treg/CD4 | Memory"
            cxcr3 = next(g for name, _, g, _ in stained.gates if name == "CXCR3+")
            ours_cxcr3 = cxcr3.contains(stained.data)
            th1 = expert.get(f"{memory}/CD4 | Th1")   # not every sample's workspace gates it
            samples.append({"sample": product,
                            "foxp3_of_cd4": pct(stained.masks["FoxP3+"], stained.masks["CD4+"]),
                            "expert_treg_of_cd4": pct(expert[f"{cd4}/Treg"], expert[cd4]),
                            "cxcr3_of_memory": pct(ours_cxcr3, expert[memory]) if th1 is not None else np.nan,
                            "expert_th1_of_memory": pct(th1, expert[memory]) if th1 is not None else np.nan,
                            "cd4_events": int(np.count_nonzero(expert[cd4]))})
    table = pd.DataFrame(gates)
    pd.set_option("display.width", 200)
    print(f"one population called negative against the unstained control: {len(table)} gates "
          f"({', '.join(f'{m} {n}' for m, n in table['method'].value_counts().sort_index().items())}); "
          f"keeping 0 %: {int((table['kept_pct'] == 0).sum())}; cut_at_scale_edge: {int(table['edge'].sum())}; "
          f"% kept: median {table['kept_pct'].median():.2f}, 90th percentile {table['kept_pct'].quantile(0.9):.2f}, "
          f"max {table['kept_pct'].max():.2f}")
    by_gate = table.groupby("gate")["kept_pct"].agg(["count", "median", "max"])
    print(by_gate.round(2).to_string())
    per_sample = pd.DataFrame(samples)
    print(per_sample.round(2).to_string(index=False))
    for ours, theirs in (("foxp3_of_cd4", "expert_treg_of_cd4"), ("cxcr3_of_memory", "expert_th1_of_memory")):
        delta = (per_sample[ours] - per_sample[theirs]).dropna()
        print(f"{ours} - {theirs}: median {delta.median():.2f}, median |d| {delta.abs().median():.2f}, "
              f"below the expert on {int((delta < 0).sum())} of {len(delta)} samples")


if __name__ == "__main__":
    main()
