"""Automatic gating against an expert on real files (FlowAtlas tissue T cells, MIT licence).

tests/data/realdata_flowatlas/ holds 5 of the 14 FlowAtlas samples, one unstained control, the
counts FlowJo stored for the expert's gates (``stored_counts_from_wsp_2021-08-06.csv``) and the
licence. ``gating/flowatlas_tcell.yaml`` gates them (density valleys: the set has no FMOs);
``panel.csv`` names the detectors the 412C exports left without $PnS. The full comparison (14
samples, event-level F1 against the workspace's gates) is ``benchmarks/validate_realdata.py``.
Tolerances are the agreement measured when the strategy was written, with a margin; they are
not the issue's targets (see the benchmark's tables for those).
"""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tilpheno.gates.strategy import load_strategy
from tilpheno.panel import read_panel_file
from tilpheno.phenotype import analyze_product

DATA = Path(__file__).parent / "data" / "realdata_flowatlas"


@pytest.fixture(scope="module")
def gated():
    strategy = load_strategy(Path(__file__).resolve().parents[1] / "gating" / "flowatlas_tcell.yaml")
    panel = read_panel_file(DATA / "panel.csv")
    out = {}
    for f in sorted((DATA / "fcs").glob("*.fcs")) + sorted((DATA / "unstained").glob("*.fcs")):
        rows = pd.DataFrame([{"file": str(f), "product_id": f.stem, "tube": "tcell", "role": "stain", "fmo_marker": ""}])
        out[f.stem] = analyze_product(f.stem, rows, [strategy], panel_override=panel)
    return out


def expert_pct(sample_file: str, population: str) -> float:
    """The expert's % of parent for ``population`` under the T-cell node (FlowJo's stored counts)."""
    manifest = pd.read_csv(DATA / "fcs_manifest.csv")
    name = manifest.loc[manifest["file"] == f"fcs/{sample_file}", "$FIL"].iloc[0]
    counts = pd.read_csv(DATA / "stored_counts_from_wsp_2021-08-06.csv")
    rows = counts[counts["sample_name"] == name]
    t_path = rows.loc[rows["population"] == "T cells", "population_path"].iloc[0]
    row = rows[rows["population_path"] == f"{t_path}/{population}"].iloc[0]
    return 100.0 * row["count"] / row["parent_count"]


def test_cd4_cd8_of_t_cells_agree_with_the_expert(gated):
    deltas = {"CD4": [], "CD8": []}
    for stem, result in gated.items():
        if "unst" in stem:
            continue
        pops = result.tubes[0].populations.set_index("population")
        for pop in deltas:
            deltas[pop].append(abs(pops.loc[pop, "pct_of_parent"] - expert_pct(f"{stem}.fcs", pop)))
    for pop, d in deltas.items():
        assert len(d) == 5
        assert np.median(d) <= 3.0, (pop, np.round(d, 2))
        assert max(d) <= 10.0, (pop, np.round(d, 2))


def test_unstained_control_has_no_t_cells_and_says_one_population(gated):
    control = gated["412C__412C_unst_022.cleaned"]
    pops = control.tubes[0].populations.set_index("population")
    assert pops.loc["T cells", "pct_of_parent"] < 1.0
    assert any(f.code == "no_second_peak" and f.message.startswith("CD3") for f in control.qc)


def test_every_gate_records_its_rule(gated):
    result = gated["423_Donor_Lung_032"]
    placed = {name: method for name, _, _, method in result.tubes[0].gates}
    assert placed["FoxP3+"] == "negative_sd"          # the strategy's stated rule for a dim shoulder
    assert placed["T cells"] in ("density_valley", "single_population_sd")
