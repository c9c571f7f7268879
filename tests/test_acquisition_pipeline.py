"""Step 0 (acquisition QC) and compensation wired into gating, process and the product report."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from tilpheno.compensation import Spillover
from tilpheno.errors import StrategyError, TableError
from tilpheno.gates.strategy import default_strategy_paths, load_strategy, parse_strategy
from tilpheno.phenotype import analyze_product
from tilpheno.simulate import instrument as ins
from tilpheno.simulate.acquisition import clog, inject
from tilpheno.simulate.cohort import manifest_rows, simulate_product, write_product
from tilpheno.simulate.controls import simulate_controls
from tilpheno.spillover import CompensationChoice, plan_compensation

EVENTS = 6000


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    """One simulated product whose surface stained tube has a clog at 50-60 % of its events."""
    folder = tmp_path_factory.mktemp("product")
    sim = simulate_product("TIL001", 21, EVENTS)
    stained = sim.tube("surface", "stain").data
    faulty, truth = inject(stained.events.astype(np.float64), [clog(0.5, 0.1)])
    stained.events = faulty.astype(np.float32)
    write_product(sim, folder)
    rows = pd.DataFrame(manifest_rows(sim))
    rows["file"] = [str(folder / f) for f in rows["file"]]
    return folder, rows, truth


MODE_LINE = re.compile(r"^  mode: remove\b", re.MULTILINE)


def _with(text: str, replacement: str) -> str:
    """The bundled strategy text with its ``acquisition_qc`` mode line replaced."""
    assert MODE_LINE.search(text)
    return MODE_LINE.sub(replacement, text)


def _strategies(mode: str = ""):
    out = []
    for path in default_strategy_paths():
        text = path.read_text()
        out.append(parse_strategy(_with(text, f"  mode: {mode}"), str(path)) if mode else load_strategy(path))
    return out


def _codes(result, file_part: str) -> set[str]:
    return {f.code for f in result.qc if file_part in f.file}


def test_step0_removes_the_clog_and_flags_it(product):
    _, rows, truth = product
    removed = analyze_product("TIL001", rows, _strategies())
    stained = next(t for t in removed.tubes if t.role == "stain" and t.tube == "surface")
    assert {"flow_rate_anomaly", "acquisition_removed_pct"} <= _codes(removed, "surface_stain")
    assert EVENTS - stained.n_events == stained.acquisition.n_removed >= 0.8 * truth.sum()
    assert stained.acquisition.removed_pct < 2 * 100 * truth.mean()
    flagged = analyze_product("TIL001", rows, _strategies("flag"))
    kept = next(t for t in flagged.tubes if t.role == "stain" and t.tube == "surface")
    assert kept.n_events == EVENTS and "flow_rate_anomaly" in _codes(flagged, "surface_stain")
    # clean files (every other tube) lose nothing
    assert all(t.acquisition.n_removed == 0 for t in removed.tubes if t is not stained)


def test_wrong_matrix_raises_compensation_residual(product):
    _, rows, _ = product
    right = analyze_product("TIL001", rows, _strategies("off"))
    assert "compensation_residual" not in {f.code for f in right.qc}
    assert all(t.acquisition is None for t in right.tubes)
    wrong = ins.SPILLOVER_MATRIX.copy()
    wrong[0, 1] += 0.1     # FITC -> PE too large: PD1 negatives over-compensated along CD3
    result = analyze_product("TIL001", rows, _strategies("off"),
                             spillover_override=Spillover(ins.DETECTORS, wrong, "wrong test matrix"))
    messages = [f.message for f in result.qc if f.code == "compensation_residual"]
    assert any("per unit of CD3" in m and "FITC-A -> PE-A" in m and "over-compensated" in m for m in messages)
    stained = next(t for t in result.tubes if t.role == "stain" and t.tube == "surface")
    assert stained.compensation.source == "wrong test matrix"


def test_nonspecific_binding_on_dead_and_large_cells_is_no_residual_spillover(tmp_path):
    """Heavy nonspecific binding (x3 on dead and on large cells, in every antibody channel) leans the
    channels of those cells together; with the true matrix the check (on the live lymphocytes, the
    viability dye as a source on the singlets) flags nothing. On the singlets it flagged CD4 and CD8
    into CD3 at slopes of about 0.7."""
    from tilpheno.simulate.phenomena import Phenomena

    markers = ("CD3", "CD4", "CD8", "CD56", "PD1")
    phen = Phenomena(nsb={"CD3": 300.0, "CD4": 300.0, "CD8": 300.0, "CD56": 150.0, "PD1": 150.0},
                     nsb_sd={m: 0.5 for m in markers})
    sim = simulate_product("TIL001", 3, 20000, phenomena=phen)
    write_product(sim, tmp_path)
    rows = pd.DataFrame(manifest_rows(sim))
    rows["file"] = [str(tmp_path / f) for f in rows["file"]]
    result = analyze_product("TIL001", rows, _strategies())
    assert [f.message for f in result.qc if f.code == "compensation_residual"] == []
    stained = next(t for t in result.tubes if t.role == "stain" and t.tube == "surface")
    residual = stained.compensation.residual
    assert "PerCP-Cy5-5-A" in set(residual["source"])   # the viability dye is still checked as a source


def test_strategy_section_is_validated():
    text = default_strategy_paths()[0].read_text()
    bare = re.sub(r"^acquisition_qc:.*?\n\n", "", text, flags=re.MULTILINE | re.DOTALL)
    assert "acquisition_qc" not in bare and parse_strategy(bare, "s.yaml").acquisition.mode == "remove"
    assert parse_strategy(_with(text, "  mode: flag"), "s.yaml").acquisition.mode == "flag"
    line = text[: MODE_LINE.search(text).start()].count("\n") + 1
    with pytest.raises(StrategyError, match=rf"s.yaml:{line}: acquisition_qc: mode: must be one of"):
        parse_strategy(_with(text, "  mode: delete"), "s.yaml")
    with pytest.raises(StrategyError, match=r"acquisition_qc: bins: unknown key"):
        parse_strategy(_with(text, "  bins: 3\n  mode: remove"), "s.yaml")


def test_plan_compensation_precedence(tmp_path):
    controls = simulate_controls(tmp_path / "controls", 5, n_events=3000)
    rows = [{"file": str(f), "product_id": "Compensation Controls", "tube": "compensation",
             "role": "unstained" if "Unstained" in f.name else "single_stain", "fmo_marker": ""} for f in controls.files]
    rows += [{"file": "a.fcs", "product_id": "P1", "tube": "surface", "role": "stain", "fmo_marker": ""}]
    manifest = pd.DataFrame(rows)
    products, choices = plan_compensation(manifest)
    assert list(products["product_id"]) == ["P1"] and set(choices) == {"P1"}
    assert np.abs(choices["P1"].spillover.matrix - ins.SPILLOVER_MATRIX).max() <= 0.005
    assert len(choices["P1"].files) == 7
    csv = tmp_path / "m.csv"
    pd.DataFrame(np.eye(6), columns=list(ins.DETECTORS)).to_csv(csv, index=False)
    _, override = plan_compensation(manifest, csv)
    assert override["P1"] == CompensationChoice(override["P1"].spillover) and override["P1"].spillover.matrix[0, 1] == 0
    two = pd.concat([manifest, manifest.iloc[:7].assign(product_id="Other controls")], ignore_index=True)
    with pytest.raises(TableError, match="2 control sets without a product"):
        plan_compensation(two)
    broken = manifest[manifest["role"] != "unstained"].copy()
    broken.loc[broken.index[0], "file"] = str(tmp_path / "missing.fcs")
    _, failed = plan_compensation(broken)
    assert "missing.fcs" in failed["P1"].error


def test_process_uses_controls_in_the_folder_and_reports_both_steps(product, tmp_path):
    from tilpheno.pipeline import process_folder

    folder, rows, _ = product
    simulate_controls(folder / "controls", 6, n_events=4000)
    (folder / "controls" / "controls.csv").unlink()
    summary = process_folder(folder, tmp_path / "out")
    assert summary.ok and summary.n_products == 1
    qc = pd.read_csv(tmp_path / "out" / "qc.csv")
    assert "flow_rate_anomaly" in set(qc["code"])
    html = (tmp_path / "out" / "products" / "TIL001" / "report.html").read_text()
    assert "Acquisition QC over time" in html and "single-stain controls of Compensation Controls" in html
    # the report's figures: rate and medians over time (removed stretches shaded), the matrix and its
    # source, density plots of the largest-spillover pairs (FITC -> PE is the largest, 0.215)
    assert "surface stained tube: flow rate and channel medians over time" in html and "shaded" in html
    assert "Spillover matrix (single-stain controls of Compensation Controls" in html
    assert "CD3 vs PD1 (FITC-A -&gt; PE-A), compensated" in html or "CD3 vs PD1 (FITC-A -> PE-A), compensated" in html
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    controls = [i["path"] for i in run["inputs"] if "Stained Control" in i["path"]]
    assert len(controls) == len(set(controls)) == 6


def test_a_control_with_an_acquisition_finding_gets_its_plot(tmp_path):
    """An acquisition finding on an FMO file (a signal drift in its 488 nm channels) was listed in
    the QC flags and the acquisition table, but the report drew the flow rate and channel medians
    of the stained tubes only: the flag pointed at no plot. Now every file with a finding has its
    plot, the drifting channels among its lines; a clean control still has none."""
    from types import SimpleNamespace

    from tilpheno.report.qc_sections import acquisition_section
    from tilpheno.simulate.acquisition import drift

    sim = simulate_product("TIL001", 21, EVENTS)
    fmo = sim.tube("surface", "fmo", "CD4").data
    faulty, _ = inject(fmo.events.astype(np.float64), [drift(0.4, 0.3)])
    fmo.events = faulty.astype(np.float32)
    write_product(sim, tmp_path)
    rows = pd.DataFrame(manifest_rows(sim))
    rows["file"] = [str(tmp_path / f) for f in rows["file"]]
    result = analyze_product("TIL001", rows, _strategies())
    found = {t.shown_name: t.acquisition for t in result.tubes if t.acquisition.findings}
    assert "TIL001_surface_FMO_CD4.fcs" in found and found["TIL001_surface_FMO_CD4.fcs"].drift_channels
    assert {f.file for f in result.qc if f.code == "signal_drift"} >= {"TIL001_surface_FMO_CD4.fcs"}
    section = acquisition_section(SimpleNamespace(result=result))
    plotted = {fig.alt.split(": ")[0]: fig for fig in section.figures}
    stained = {t.shown_name for t in result.tubes if t.role == "stain"}
    assert set(plotted) == stained | set(found)
    for name, qc in found.items():
        for channel in qc.drift_channels:
            assert f">{channel}</text>" in plotted[name].svg or f"({channel})</text>" in plotted[name].svg, (name, channel)


def test_a_manifest_detector_that_is_not_a_channel_names_its_row(product, tmp_path):
    """process --manifest whose ``detector`` cell of a single-stain row has a typo (FITC-H) failed
    the product with 'compensation ... failed: <control>.fcs: detector 'FITC-H' is not a channel of
    <control>.fcs ...': the control's file, not the manifest row to fix -> the manifest, its row and
    column, as `compensate --controls` names its CSV's cell."""
    import shutil
    from pathlib import Path

    from typer.testing import CliRunner

    from tilpheno.cli import app

    folder, rows, _ = product
    inputs = tmp_path / "in"
    shutil.copytree(folder, inputs, ignore=shutil.ignore_patterns("controls"))
    controls = simulate_controls(inputs / "controls", 6, n_events=3000)
    manifest = rows.assign(file=[str(Path(f).relative_to(folder)) for f in rows["file"]],
                           detector="")
    table = pd.read_csv(controls.controls_csv, dtype=str, keep_default_na=False)
    manifest = pd.concat([manifest, pd.DataFrame({
        "file": ["controls/" + f for f in table["file"]], "product_id": "TIL001", "tube": "compensation",
        "role": ["single_stain" if d else "unstained" for d in table["detector"]], "fmo_marker": "",
        "detector": table["detector"].str.replace("FITC-A", "FITC-H")})], ignore_index=True)
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    row = 2 + manifest.index[manifest["detector"] == "FITC-H"][0]   # the header is line 1
    file = manifest.loc[row - 2, "file"].split("/")[-1]
    result = CliRunner().invoke(app, ["process", str(inputs), "-o", str(tmp_path / "out"),
                                      "--manifest", str(tmp_path / "manifest.csv"), "--reports", "none"],
                                terminal_width=400)
    assert result.exit_code == 1, result.output
    [line] = [x for x in result.output.splitlines() if "failed TIL001: " in x]   # once, as it failed
    assert line == (f"failed TIL001: compensation from single-stain controls of TIL001 failed: {tmp_path / 'manifest.csv'}: "
                    f"row {row}, column 'detector': detector 'FITC-H' is not a channel of {file} "
                    f"(its fluorescence channels: {', '.join(ins.DETECTORS)})"), line


def test_a_relative_matrix_path_is_recorded_absolute(product, tmp_path, monkeypatch):
    """The library's ``analyze_product(spillover_override="rel.csv")`` and ``Sample.from_fcs(spillover=
    "rel.csv")`` recorded the matrix as typed ('rel.csv', meaningless once the working directory
    changes; the CLI records it absolute) -> its absolute path, as ``process --compensation`` does."""
    from tilpheno.gating import Sample
    from tilpheno.spillover import write_spillover_csv

    _, rows, _ = product
    monkeypatch.chdir(tmp_path)
    write_spillover_csv(Spillover(tuple(ins.DETECTORS), ins.SPILLOVER_MATRIX), "rel.csv")
    expected = str(tmp_path / "rel.csv")
    result = analyze_product("TIL001", rows, _strategies(), spillover_override="rel.csv")
    stained = [t for t in result.tubes if t.role == "stain"]
    assert stained and {t.compensation.source for t in stained} == {expected}
    surface = next(s for s in _strategies() if s.tube == "surface")
    file = rows.loc[(rows["tube"] == "surface") & (rows["role"] == "stain"), "file"].iloc[0]
    assert Sample.from_fcs(file, surface, spillover="rel.csv").spillover.source == expected


def test_the_object_model_removes_the_clog_as_the_pipeline_does(product):
    """``Sample.from_fcs`` skipped step 0: on the clogged surface tube the API gated all 6000 events
    (clog kept, no acquisition flag) while ``analyze_product`` removed the clog, so the two gave
    other percentages for the same file -> the Sample runs the strategy's step 0 as the pipeline
    does: the same events removed (most of the injected clog), the same population table and
    variables, the same acquisition flags."""
    import tilpheno as tp

    _, rows, truth = product
    strategies = _strategies()
    pipeline = analyze_product("TIL001", rows, strategies)
    strategy = next(s for s in strategies if s.tube == "surface")
    kind = rows[rows["tube"] == "surface"]
    stained = tp.Sample.from_fcs(kind.loc[kind["role"] == "stain", "file"].iloc[0], strategy)
    fmos = kind[kind["role"] == "fmo"]
    controls = [tp.Sample.from_fcs(f, strategy, fmo=m, stained=stained) for f, m in zip(fmos["file"], fmos["fmo_marker"])]
    result = tp.gate_sample(strategy, stained, controls, product_id="TIL001")
    expected = next(t for t in pipeline.tubes if t.role == "stain" and t.tube == "surface")
    assert result.n_events == expected.n_events
    assert EVENTS - result.n_events == stained.acquisition.n_removed >= 0.8 * truth.sum()
    pd.testing.assert_frame_equal(result.populations, expected.populations)
    percent = result.summary.set_index("variable")["percent"]
    assert all(percent[v] == pipeline.phenotype[v] for v in percent.index)
    step0 = {"flow_rate_anomaly", "acquisition_removed_pct", "signal_drift"}
    assert {(f.code, f.message) for f in result.flags if f.code in step0} == \
        {(f.code, f.message) for f in pipeline.qc if f.code in step0 and f.file == expected.shown_name} != set()
