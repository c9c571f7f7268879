"""`tilpheno apply-gates`: Gating-ML (0/1 column per gate) and FlowJo workspaces (population counts)."""
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tilpheno.cli import app

DATA = Path(__file__).parent / "data"
GML = DATA / "gatingml"
WSP = DATA / "flowjo"


def truth(name):
    return np.loadtxt(GML / "truth" / f"Results_{name}.txt", dtype=int)


def run(*args):
    result = CliRunner().invoke(app, ["apply-gates", *map(str, args)])
    return result


def test_gatingml_columns_per_gate_and_quadrant(tmp_path):
    out = tmp_path / "m.csv"
    result = run(GML / "data1.fcs", "--gatingml", GML / "gml" / "gml_all_gates.xml", "-o", out)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert len(table) == 13367
    assert "Quadrant1" not in table.columns  # quadrant gates give one column per quadrant id
    for name in ("Range1", "Polygon1", "Ellipse1", "FL2N-FL4N", "FSCD-FL1P", "And3", "ScaleRect1", "RatRange1a"):
        assert np.array_equal(table[name].to_numpy(), truth(name)), name
    assert set(np.unique(table.to_numpy())) <= {0, 1}


def stored_counts(wsp):
    """Independent of tilpheno: the count FlowJo stored for each population under the sample node (-1: never computed)."""
    node = ET.parse(wsp).getroot().find(".//Sample/SampleNode")
    return {p.get("name"): int(p.get("count")) for p in node.iter("Population")}


@pytest.mark.parametrize("wsp,group", [("single_ellipse_51_events.wsp", "All Samples"),
                                       ("simple_poly_and_rect_v2_poly50.wsp", "my_group"),
                                       ("simple_poly_and_rect.wsp", "my_group")])
def test_workspace_counts_beside_flowjo_stored_counts(tmp_path, wsp, group):
    """The workspace table has FlowJo's stored count and the near-boundary tolerance beside tilpheno's
    count (they were only in the library's population_counts; the CLI wrote population,parent,count)."""
    out = tmp_path / "c.csv"
    result = run(WSP / "data_set_simple_line_100.fcs", "--wsp", WSP / wsp, "--group", group, "-o", out)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["population", "parent", "count", "flowjo_count", "near_boundary", "gate"]
    stored = {name: "" if n < 0 else n for name, n in stored_counts(WSP / wsp).items()}
    assert dict(zip(table["population"], table["flowjo_count"])) == stored
    for row in table.to_dict("records"):
        if row["flowjo_count"] != "":
            assert abs(row["count"] - row["flowjo_count"]) <= row["near_boundary"], row
    if wsp.startswith("single_ellipse"):   # 51 also by the ellipse's focal definition (test_flowjo)
        assert table[["population", "parent", "count", "gate"]].to_dict("records") == [
            {"population": "ellipse1", "parent": "", "count": 51, "gate": "ellipse"}]


def test_workspace_group_option(tmp_path):
    out = tmp_path / "c.csv"
    result = run(WSP / "data_set_simple_line_100.fcs", "--wsp", WSP / "simple_poly_and_rect_v2_poly50.wsp",
                 "--group", "my_group", "-o", out)
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out).set_index("population")["count"].to_dict() == {"poly1": 50, "rect1": 0}


def test_errors_are_one_line_exit_2(tmp_path):
    result = run(WSP / "data_set_simple_line_100.fcs", "--wsp", WSP / "simple_poly_and_rect.wsp",
                 "--group", "no such group", "-o", tmp_path / "x.csv")
    assert result.exit_code == 2
    assert "no such group" in result.output and "my_group" in result.output
    assert not (tmp_path / "x.csv").exists()
    result = run(GML / "data1.fcs", "-o", tmp_path / "x.csv")
    assert result.exit_code != 0


def test_gates_on_missing_channel(tmp_path):
    result = run(WSP / "data_set_simple_line_100.fcs", "--gatingml", GML / "gml" / "gml_rect1_gate.xml", "-o", tmp_path / "x.csv")
    assert result.exit_code == 2
    assert "SSC-H" in result.output or "FL1-H" in result.output


def test_gatingml_dimension_named_by_pns(tmp_path):
    """data1.fcs names FL1-H 'CD4 FITC' ($P3S): a gate on 'CD4 FITC' is a gate on FL1-H (it was refused)."""
    doc = tmp_path / "pns.xml"
    doc.write_text((GML / "gml" / "gml_rect1_gate.xml").read_text().replace('"FL1-H"', '"CD4 FITC"'))
    out = tmp_path / "m.csv"
    result = run(GML / "data1.fcs", "--gatingml", doc, "-o", out)
    assert result.exit_code == 0, result.output
    assert np.array_equal(pd.read_csv(out)["Rectangle1"].to_numpy(), truth("Rectangle1"))


@pytest.mark.parametrize("command,options,named", [
    ("apply-gates", ["-o", "OUT"], ["--gatingml", "--wsp"]),
    ("apply-gates", ["--gatingml", GML / "gml" / "gml_rect1_gate.xml", "--wsp", WSP / "single_ellipse_51_events.wsp",
                     "-o", "OUT"], ["gml_rect1_gate.xml", "single_ellipse_51_events.wsp", "both given"]),
    ("export-events", ["--fcs", "OUT"], ["--gatingml", "--wsp"]),
    ("export-events", ["--gatingml", GML / "gml" / "gml_rect1_gate.xml", "--wsp", WSP / "single_ellipse_51_events.wsp",
                       "--h5ad", "OUT"], ["both given"]),
    ("export-events", ["--gatingml", GML / "gml" / "gml_rect1_gate.xml"], ["--fcs", "--h5ad"]),
])
def test_missing_or_conflicting_gate_and_output_options_are_one_line(tmp_path, command, options, named):
    """apply-gates / export-events without --gatingml or --wsp, with both, or (export-events) without
    --fcs and --h5ad printed Typer's multi-line usage box ('Invalid value: give exactly one of ...')
    -> one line 'error: ...' naming the options, exit status 2, nothing written."""
    out = tmp_path / "out.x"
    args = [str(out) if o == "OUT" else str(o) for o in options]
    result = CliRunner().invoke(app, [command, str(GML / "data1.fcs"), *args])
    assert result.exit_code == 2
    (line,) = [x for x in result.output.splitlines() if x.strip()]
    assert line.startswith("error: ") and all(n in line for n in named), line
    assert not out.exists()
