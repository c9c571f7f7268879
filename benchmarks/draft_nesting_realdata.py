"""`tilpheno new-study` on real data, nested vs flat: the drafted CD4+ and CD8+ gates against the
expert's FlowJo gates (run by hand; reads ../shared/realdata when present).

    .venv/bin/python benchmarks/draft_nesting_realdata.py [--realdata ../shared/realdata]

Each FlowAtlas tissue T-cell file (14; the 412C exports carry no ``$PnS``: their detectors from
``tests/data/realdata_flowatlas/panel.csv`` as ``validate_realdata.py`` names them) is drafted on
its own, twice: with the vocabulary's lineage table (CD4 and CD8 within CD3+) and with a
``--lineage`` file that un-nests every marker (the draft before the table: every gate on all
events), then gated with the drafted strategy. The expert's gates are the workspace's
(``apply_workspace``); the expert's CD4+ T cells are its ``CD4`` and ``CD4+ CD8+`` gates under
``T cells`` (a CD4+ gate includes double positives), CD8+ likewise. Per population, % of T cells:

* ``nested``: the draft's CD4+ % of its CD3+ (the variable ``cd4_pct_of_cd3``: thresholds placed
  on the CD3+ events);
* ``flat_within_cd3``: the flat draft's CD4+ and CD3+ gates intersected, % of its CD3+ (thresholds
  placed on all events, the population a lab gets by an expression without re-drafting);
* ``flat_as_reported``: the flat draft's variable, CD4+ % of all events, against the expert's
  % of T cells (what a lab compared before the lineage table).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

POPULATIONS = {"CD4": ("CD4", "CD4+ CD8+"), "CD8": ("CD8", "CD4+ CD8+")}
"""Our marker -> the expert's gates under T cells whose union is that marker's positive T cells."""
UNNESTED = "lineage: {CD3: ~, CD19: ~, CD4: ~, CD8: ~, FoxP3: ~, CD25: ~, CD127: ~}\n"


def draft_masks(path: Path, panel_csv: Path | None, lineage: Path | None, work: Path) -> dict[str, np.ndarray]:
    """The masks of the strategy drafted from ``path`` alone (one tube kind), gated on it."""
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.panel import read_panel_file
    from tilpheno.phenotype import analyze_product
    from tilpheno.scaffold import draft_study, write_study

    folder = work / "fcs"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, folder / path.name)
    draft = draft_study(folder, panel=panel_csv, lineage=lineage)
    write_study(draft, work / "study")
    [tube] = draft.tubes
    strategy = load_strategy(work / "study" / f"{tube.kind}.yaml")
    m = pd.DataFrame([{"file": str(folder / path.name), "product_id": path.stem, "tube": tube.kind, "role": "stain",
                       "fmo_marker": ""}])
    result = analyze_product(path.stem, m, [strategy], panel_override=read_panel_file(panel_csv) if panel_csv else None)
    return result.tubes[0].masks


def pct(part: np.ndarray, whole: np.ndarray) -> float:
    return 100.0 * np.count_nonzero(part & whole) / max(1, np.count_nonzero(whole))


def realdata_folder(argv, description: str) -> Path:
    """The ``--realdata`` folder of a FlowAtlas draft benchmark's command line (default: ../shared/realdata)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--realdata", default=next((str(p / "shared" / "realdata") for p in ROOT.parents
                                                    if (p / "shared" / "realdata").exists()), "../shared/realdata"))
    return Path(parser.parse_args(argv).realdata)


def main(argv=None) -> None:
    realdata = realdata_folder(argv, __doc__.splitlines()[0])

    from tilpheno.gates.flowjo import apply_workspace, read_workspace
    from tilpheno.io.fcs import read_fcs

    base = realdata / "flowatlas_tissue_tcell"
    manifest = pd.read_csv(base / "fcs_manifest.csv")
    test_panel = pd.read_csv(ROOT / "tests" / "data" / "realdata_flowatlas" / "panel.csv", dtype=str, keep_default_na=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        unnested = work / "unnested.yaml"
        unnested.write_text(UNNESTED)
        for _, rec in manifest[manifest["file"].str.startswith("fcs/")].iterrows():
            path = base / rec["file"]
            panel_csv = None
            if path.stem.startswith("412C"):   # no $PnS: the detectors as validate_realdata.py names them
                rows_412c = test_panel[test_panel["tube"].isin(["*", "412C_mLN_026"])].assign(tube="")
                panel_csv = work / f"{path.stem}_panel.csv"
                rows_412c.to_csv(panel_csv, index=False)
            fcs = read_fcs(path)
            masks = apply_workspace(read_workspace(base / "workspace_2021-08-06_12a14ca.wsp", sample=str(rec["$FIL"])),
                                    fcs.events, fcs.channel_names)
            t_path = next(p for p in masks if p.split("/")[-1] == "T cells")
            nested = draft_masks(path, panel_csv, None, work / path.stem / "nested")
            flat = draft_masks(path, panel_csv, unnested, work / path.stem / "flat")
            every = np.ones(fcs.events.shape[0], bool)
            for marker, subsets in POPULATIONS.items():
                expert = np.logical_or.reduce([masks[f"{t_path}/{s}"] for s in subsets])
                truth = pct(expert, masks[t_path])
                gate = f"{marker}+"
                rows.append({"sample": path.stem, "population": f"{marker}+ % of T cells", "expert": truth,
                             "nested": pct(nested[gate], nested["CD3+"]),
                             "flat_within_cd3": pct(flat[gate], flat["CD3+"]),
                             "flat_as_reported": pct(flat[gate], every)})
    table = pd.DataFrame(rows)
    for column in ("nested", "flat_within_cd3", "flat_as_reported"):
        table[f"d_{column}"] = (table[column] - table["expert"]).abs()
    pd.set_option("display.width", 200)
    print(table.round(2).to_string(index=False))
    summary = table.groupby("population").agg(**{f"{stat}_{c}": (f"d_{c}", stat) for c in
                                                 ("nested", "flat_within_cd3", "flat_as_reported")
                                                 for stat in ("median", "max")})
    print("\n|delta| vs the expert, points of % of T cells:")
    print(summary.round(2).T.to_string())


if __name__ == "__main__":
    main()
