"""The public object model (tilpheno.gating): the README's five lines, one engine for every kind of
strategy, results that agree with the pipeline's and with independent references."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tilpheno as tp
from tilpheno.errors import StrategyError
from tilpheno.gates.geometry import GATE_TYPES, Gate
from tilpheno.gates.gatingml import apply_gatingml, read_gatingml
from tilpheno.io.fcs import read_fcs
from tilpheno.phenotype import analyze_product

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_fcs"
GML = ROOT / "tests" / "data" / "gatingml"


def test_readme_five_lines():
    """The object model behind the README's five lines (the same calls on the repository root's files): the
    summary's columns, the fallback flags, a gate's plot and diagnostics. tests/test_docs.py runs the README's
    block itself, as written."""
    strategy = tp.GatingStrategy.from_yaml(tp.default_study().tubes["surface"].strategy)
    sample = tp.Sample.from_fcs(SAMPLE / "TIL001_surface_stain.fcs", strategy)
    result = tp.gate_sample(strategy, sample)   # no FMO controls: density fallback, flagged
    summary = result.summary
    assert list(summary.columns) == ["variable", "numerator", "denominator", "numerator_count", "denominator_count", "percent",
                                     "undetermined"]
    assert set(summary["variable"]) >= {"viability_pct", "cd3_pct_of_live_lymph", "cd8pd1_pct_of_cd8"}
    assert {f.code for f in result.flags} >= {"missing_fmo", "fallback_gate"}
    svg = result.plot("CD3+")
    assert svg.lstrip().startswith("<svg") and "CD3+" in svg
    assert "threshold" in result.diagnostics["CD3+"]


def test_sample_with_fmo_controls_matches_the_pipeline():
    """gate_sample with every FMO control gives the stained tube's table that analyze_product gives."""
    strategy = tp.GatingStrategy.from_yaml(tp.default_study().tubes["surface"].strategy)
    stained = tp.Sample.from_fcs(SAMPLE / "TIL001_surface_stain.fcs", strategy)
    assert stained.panel["PD1"] == "PE-A" and stained.spillover is not None and stained.n_events == 10000
    controls = [tp.Sample.from_fcs(SAMPLE / f"TIL001_surface_FMO_{m}.fcs", strategy, fmo=m, stained=stained)
                for m in ("CD3", "CD4", "CD8", "CD56", "PD1")]
    result = tp.gate_sample(strategy, stained, controls)
    assert not [f for f in result.flags if f.code in ("missing_fmo", "fallback_gate")]
    manifest = pd.read_csv(SAMPLE / "manifest.csv")
    rows = manifest[manifest["product_id"] == "TIL001"].assign(file=lambda f: [str(SAMPLE / x) for x in f["file"]])
    product = tp.analyze("TIL001", rows, [tp.GatingStrategy.from_yaml(p) for p in tp.default_study().strategy_paths])
    expected = product.result("surface").populations
    pd.testing.assert_frame_equal(result.populations, expected)
    thresholds = result.thresholds.assign(source_file=result.thresholds["source_file"].map(lambda p: Path(p).name))
    expected_thr = product.result("surface").thresholds
    expected_thr = expected_thr.assign(source_file=expected_thr["source_file"].map(lambda p: Path(p).name))
    pd.testing.assert_frame_equal(thresholds, expected_thr)
    summary = result.summary.set_index("variable")["percent"]
    for variable in ("cd3_pct_of_live_lymph", "cd8pd1_pct_of_cd8", "viability_pct"):
        assert summary[variable] == product.phenotype[variable]
    assert len(product.results) == 9 - 1   # the unstained tube is not gated
    assert set(product.populations["tube"]) == {"surface", "treg"}


def test_strategy_from_code_is_validated_like_a_file():
    doc = {
        "strategy": "coded", "tube": "surface", "markers": ["CD3", "7AAD"],
        "populations": [
            {"name": "cells", "parent": "root", "dims": ["FSC-A", "SSC-A"], "method": "cells"},
            {"name": "live", "parent": "cells", "dims": ["7AAD"], "method": "valley", "params": {"keep": "low"}},
            {"name": "CD3+", "parent": "live", "dims": ["CD3"], "method": "fixed",
             "params": {"gate": {"type": "range", "dim": "CD3", "low": 0.45, "high": None}}},
        ],
        "variables": {"cd3_pct_of_live": {"numerator": "CD3+", "denominator": "live"}},
    }
    strategy = tp.GatingStrategy.from_dict(doc)
    sample = tp.Sample.from_fcs(SAMPLE / "TIL001_surface_stain.fcs", strategy)
    result = tp.gate_sample(strategy, sample)
    cd3 = sample.data["CD3"]
    expected = result.masks["live"] & (cd3 >= 0.45)
    assert np.array_equal(result.masks["CD3+"], expected)
    assert result.summary["percent"].iloc[0] == pytest.approx(100 * expected.sum() / result.masks["live"].sum())
    with pytest.raises(StrategyError, match="unknown parent 'nowhere'") as info:
        tp.GatingStrategy.from_dict({**doc, "populations": [{**doc["populations"][0], "parent": "nowhere"}]})
    assert str(info.value).startswith("<code>: "), str(info.value)   # no line of a YAML text nobody wrote


@pytest.mark.parametrize("xml", sorted((GML / "gml").glob("*.xml")), ids=lambda p: p.name)
def test_gatingml_through_the_one_engine_equals_apply_gatingml(xml):
    """A Gating-ML document as a GatingStrategy, applied by gate_sample, gives apply_gatingml's masks
    (themselves checked against the Gating-ML reference results in test_gatingml.py)."""
    strategy = tp.GatingStrategy.from_gatingml(xml)
    fcs = read_fcs(GML / "data1.fcs")
    direct = apply_gatingml(read_gatingml(xml), fcs.events, fcs.channel_names, fcs.spillover)
    result = tp.gate_sample(strategy, tp.Sample.from_fcs(read_fcs(GML / "data1.fcs"), strategy))
    assert set(direct) == set(result.masks)
    for pid, mask in direct.items():
        assert np.array_equal(result.masks[pid], mask), pid
    assert result.counts == {pid: int(m.sum()) for pid, m in direct.items()}


def test_flowjo_workspace_through_the_one_engine():
    from tilpheno.gates.flowjo import apply_workspace, read_workspace

    wsp = ROOT / "tests" / "data" / "flowjo" / "simple_poly_and_rect.wsp"
    fcs_path = ROOT / "tests" / "data" / "flowjo" / "data_set_simple_line_100.fcs"
    strategy = tp.GatingStrategy.from_flowjo(wsp)
    fcs = read_fcs(fcs_path)
    direct = apply_workspace(read_workspace(wsp), fcs.events, fcs.channel_names)
    result = tp.gate_sample(strategy, tp.Sample.from_fcs(fcs_path, strategy))
    for path, mask in direct.items():
        assert np.array_equal(result.masks[path], mask), path


def test_every_gate_implements_the_protocol():
    from tilpheno.gates.geometry import (BooleanGate, Divider, EllipsoidGate, PolygonGate, QuadrantGate, RangeGate,
                                         RectangleGate)

    gates = [RangeGate("x", 0, 1), RectangleGate(("x", "y"), (0, None), (1, 2)), PolygonGate(("x", "y"), ((0, 0), (1, 0), (0, 1))),
             EllipsoidGate(("x", "y"), (0, 0), ((1, 0), (0, 1)), 1.0),
             QuadrantGate((Divider("d", "x", (0.5,)),), {"lo": {"d": 0.0}, "hi": {"d": 1.0}}), BooleanGate("not", ("a",))]
    assert {type(g) for g in gates} == set(GATE_TYPES)
    data = {"x": np.array([0.25, 0.75, 2.0]), "y": np.array([0.25, 0.25, 0.25])}
    for g in gates:
        assert isinstance(g, Gate)
        mask = g.membership(data, {"a": np.array([True, False, True])})
        assert mask.dtype == bool and mask.shape == (3,)
        assert g.drawing().shape in ("intervals", "polygon", "ellipse", "dividers", "none")
        assert all(np.isfinite(v) for v in g.extent("x"))


def _gated_as_the_api_would(rows: pd.DataFrame, strategy, product_id: str, panel=None) -> "tp.GatingResult":
    """``strategy``'s stained file of the manifest ``rows`` gated by ``gate_sample`` with its FMO
    files and the product's unstained control, each read by ``Sample.from_fcs`` (``panel``: an override)."""
    kind = rows[rows["tube"] == strategy.tube]
    stained = tp.Sample.from_fcs(kind.loc[kind["role"] == "stain", "file"].iloc[0], strategy, panel=panel)
    fmos = kind[kind["role"] == "fmo"]
    controls = [tp.Sample.from_fcs(f, strategy, fmo=m, stained=stained, panel=panel)
                for f, m in zip(fmos["file"], fmos["fmo_marker"])]
    controls += [tp.Sample.from_fcs(f, strategy, unstained=True, stained=stained, panel=panel)
                 for f in rows.loc[rows["role"] == "unstained", "file"]]
    return tp.gate_sample(strategy, stained, controls, product_id=product_id)


def test_gate_sample_checks_the_unstained_control_as_process_does(tmp_path):
    """TIL001 with a copy of its stained surface tube as its unstained control (events above every
    positive cut): ``tilpheno process`` flags ``unstained_positive`` on both tube kinds' positive gates,
    while ``gate_sample`` of each stained tube with its FMO files and that control raised none (the
    self-check ran only in the pipeline) -> the same unstained_positive and unstained_control flags
    as qc.csv (file, gate, gate_file, severity, message) and the same ``unstained_cut`` per flagged
    gate as ``analyze``."""
    from review_support import processed_with_stained_control

    out, inputs, manifest = processed_with_stained_control(tmp_path, "TIL001")
    qc = pd.read_csv(out / "qc.csv", dtype=str, keep_default_na=False)
    qc = qc[qc["code"].str.startswith("unstained")]
    expected = set(zip(qc["file"], qc["gate"], qc["gate_file"], qc["code"], qc["severity"], qc["message"]))
    rows = manifest.assign(file=[str(inputs / f) for f in manifest["file"]])
    strategies = [tp.GatingStrategy.from_yaml(p) for p in tp.default_study().strategy_paths]
    product = tp.analyze("TIL001", rows, strategies)
    got = set()
    for strategy in strategies:
        result = _gated_as_the_api_would(rows, strategy, "TIL001")
        flags = [f for f in result.flags if f.code.startswith("unstained")]
        assert "unstained_positive" in {f.code for f in flags}, strategy.tube
        got |= {(f.file, f.gate, f.gate_file, f.code, f.severity, f.message) for f in flags}
        pipeline = product.result(strategy.tube).diagnostics
        cuts = {p: d["unstained_cut"] for p, d in result.diagnostics.items() if "unstained_cut" in d}
        assert cuts and cuts == {p: d["unstained_cut"] for p, d in pipeline.items() if "unstained_cut" in d}
    assert got == expected


def _sample_product():
    manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
    rows = manifest[manifest["product_id"] == "TIL001"].assign(file=lambda f: [str(SAMPLE / x) for x in f["file"]])
    return "TIL001", rows, [tp.GatingStrategy.from_yaml(p) for p in tp.default_study().strategy_paths], None


def _flowatlas_pair():
    from tilpheno.panel import read_panel_file

    atlas = ROOT / "tests" / "data" / "realdata_flowatlas"
    rows = pd.DataFrame([
        {"file": str(atlas / "fcs" / "412C_mLN_026.fcs"), "tube": "tcell", "role": "stain", "fmo_marker": ""},
        {"file": str(atlas / "unstained" / "412C__412C_unst_022.cleaned.fcs"), "tube": "tcell", "role": "unstained",
         "fmo_marker": ""}])
    return "412C", rows, [tp.GatingStrategy.from_yaml(ROOT / "gating" / "flowatlas_tcell.yaml")], \
        read_panel_file(atlas / "panel.csv")


PRODUCT_LEVEL = ("low_events", "out_of_expected_range")
"""Codes the pipeline raises on a product's phenotype row (``phenotype._product_flags``), not in a file's gating."""


@pytest.mark.parametrize("case", [_sample_product, _flowatlas_pair], ids=["sample TIL001", "FlowAtlas 412C pair"])
def test_gate_sample_gives_the_pipelines_gates_cuts_and_flags(case):
    """The same product through ``Sample.from_fcs`` + ``gate_sample`` and through ``analyze_product``
    (what ``tilpheno process`` runs): each stained file's gates, thresholds, population table,
    placement diagnostics, compensation and every flag about it (its own, and those raised on its
    controls naming it: the unstained self-check, the controls' settings) are the same. Before,
    the API gave none of the compensation flags (412C: precompensated), nor the controls' flags."""
    pid, rows, strategies, panel = case()
    pipeline = analyze_product(pid, rows, strategies, panel_override=panel)
    for strategy in strategies:
        result = _gated_as_the_api_would(rows, strategy, pid, panel)
        expected = next(t for t in pipeline.tubes if t.tube == strategy.tube and t.role == "stain")
        name = expected.shown_name
        assert [(p, parent, repr(g), m) for p, parent, g, m in result.gates] == \
            [(p, parent, repr(g), m) for p, parent, g, m in expected.gates]
        pd.testing.assert_frame_equal(result.thresholds.assign(source_file=result.thresholds["source_file"].map(
            lambda p: Path(p).name)), expected.thresholds.assign(source_file=expected.thresholds["source_file"].map(
                lambda p: Path(p).name)))
        pd.testing.assert_frame_equal(result.populations, expected.populations)
        assert repr(result.diagnostics) == repr(expected.diagnostics)
        about = [f for f in pipeline.qc if f.code not in PRODUCT_LEVEL
                 and (f.file == name or f.gate_file == name or (f.file and name in f.message))]
        assert [dataclasses.astuple(f) for f in result.flags] == [dataclasses.astuple(f) for f in about]
        assert (result.compensation.source, result.compensation.exported) == \
            (expected.compensation.source, expected.compensation.exported)
        assert (result.compensation.residual is None) == (expected.compensation.residual is None)
        if expected.compensation.residual is not None:
            pd.testing.assert_frame_equal(result.compensation.residual, expected.compensation.residual)
