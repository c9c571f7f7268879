"""A control-based live/dead cut (``fmo`` gate with ``control: unstained``) on simulated products
(seeds 93050-93051, not used elsewhere; ground truth: the simulator's dead-cell labels).

``dead`` = 7AAD above the unstained control's 99.5th percentile in the same parent, carried to the
stained tube's live peak (``rule: relative``: the stained live cells carry the spillover spreading
of the other dyes, which the unstained control lacks); ``live`` = ``!dead``. Dead cells that take up
5-15x less 7AAD (``dim_dead``) sit between the live peak and the bright dead cells; the cut counts
them dead. (``rule: anchored`` would take the stained valley between live and bright dead cells when
it is deep, which leaves dim dead cells in the live gate: 6 of 40 development products more than 3
points off, ``benchmarks/validate_gating.py --live anchored``.)
"""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from control_support import CONTROL, VIABILITY, live_dead_product, live_dead_strategy
from tilpheno.errors import StrategyError
from tilpheno.gates.checks import needs_review
from tilpheno.gates.strategy import default_strategy_paths, load_strategy
from tilpheno.phenotype import analyze_product


def test_unstained_control_sets_the_dead_cut_and_counts_dim_dead_cells(tmp_path):
    prod, manifest = live_dead_product(tmp_path, 93050)
    result = analyze_product(prod.product_id, manifest, [live_dead_strategy()])
    error = result.phenotype["viability_pct"] - prod.truth["viability_pct"]
    assert abs(error) < 1.0, error   # 40 development products (91001-91040): mean |error| 0.36, worst 0.80
    stained = next(t for t in result.tubes if t.role == "stain")
    row = stained.thresholds.set_index("population").loc["dead"]
    assert row["source_file"].endswith("_unstained.fcs")
    # the control is gated with the tube kind's files (its own cells and singlets) and reported like an FMO
    control = next(t for t in result.tubes if t.role == "unstained")
    pops = control.populations.set_index("population")
    assert 0.0 < pops.loc["dead", "pct_of_parent"] <= 0.5 + 0.3   # its 99.5th percentile, carried upwards
    counts = stained.populations.set_index("population")["count"]
    assert counts["live"] + counts["dead"] == counts["singlets"]


def test_without_an_unstained_control_the_cut_falls_back_and_asks_for_review(tmp_path):
    prod, manifest = live_dead_product(tmp_path, 93051, unstained=False)
    result = analyze_product(prod.product_id, manifest, [live_dead_strategy()])
    codes = {f.code for f in result.qc if needs_review(f) and f.message.startswith("dead (7AAD)")}
    assert codes == {"missing_control", "fallback_gate"}
    message = next(f.message for f in result.qc if f.code == "missing_control")
    assert "no usable unstained control in the product" in message
    assert np.isfinite(result.phenotype["viability_pct"])


def test_the_bundled_strategies_do_not_gate_the_unstained_control(tmp_path):
    """Only a strategy that names the unstained control as a gate's control gates it."""
    prod, manifest = live_dead_product(tmp_path, 93051, phen=None)
    result = analyze_product(prod.product_id, manifest, [load_strategy(p) for p in default_strategy_paths()])
    assert {t.role for t in result.tubes} == {"stain", "fmo"}


def test_an_unknown_control_is_refused_with_the_line():
    with pytest.raises(StrategyError, match=r"viability.yaml:\d+: .*'control' must be one of \['fmo', 'unstained'\]"):
        live_dead_strategy("{control: beads}")


SAMPLE = Path(__file__).resolve().parents[1] / "sample_fcs"


def _process_til001(tmp_path, strategies: dict[str, str]):
    """``process_folder`` of sample_fcs TIL001 (tables only) with these strategy texts (file name ->
    YAML); returns the output folder and TIL001's manifest rows."""
    from tilpheno.pipeline import process_folder

    manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
    manifest = manifest[manifest["product_id"] == "TIL001"].copy()
    manifest["file"] = [str(SAMPLE / f) for f in manifest["file"]]
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    for name, text in strategies.items():
        (tmp_path / name).write_text(text)
    out = tmp_path / "out"
    summary = process_folder(SAMPLE, out, manifest_csv=tmp_path / "manifest.csv", make_reports=False,
                             strategy_paths=[tmp_path / name for name in strategies])
    assert summary.ok, summary.failed
    return out, manifest


def test_the_review_app_reproduces_a_control_gated_run_and_moves_its_dead_cut(tmp_path):
    """The review app re-runs the product (the unstained control, now among its gated files, keeps its
    role and is read once), reproduces phenotypes.csv, and a reviewer's higher ``dead`` cut counts
    more live cells, every event counted again."""
    from tilpheno.review.regate import ReviewSource, evaluate, recompute

    out, _ = _process_til001(tmp_path, {"viability.yaml": VIABILITY.format(params=CONTROL)})
    populations = pd.read_csv(out / "populations.csv")
    assert set(populations.loc[populations["role"] == "unstained", "file"]) == {"TIL001_unstained.fcs"}

    source = ReviewSource(out)
    rows = pd.DataFrame([{"file": str(f.path), "tube": f.tube, "role": f.role, "fmo_marker": f.fmo_marker}
                         for f in source.product_files("TIL001")])   # as the app re-runs it
    assert [t.role for t in analyze_product("TIL001", rows, source.strategies).tubes].count("unstained") == 1
    auto = source.automatic("TIL001")   # raises unless the re-run reproduces phenotypes.csv
    gates = auto["tubes"]["surface"]["gates"]
    assert set(gates) == {"cells", "singlets", "dead"}
    gates["dead"]["low"] += 0.1
    result = recompute(source, "TIL001", auto)
    tube = source.stained("TIL001")["surface"]
    masks = evaluate(tube.strategy, tube.tube, gates)
    expected = 100.0 * np.count_nonzero(masks["singlets"] & (tube.tube.data["7AAD"] < gates["dead"]["low"]))
    assert result.phenotype["viability_pct"] == pytest.approx(expected / np.count_nonzero(masks["singlets"]), rel=1e-12)
    recorded = pd.read_csv(out / "phenotypes.csv").set_index("product_id").loc["TIL001", "viability_pct"]
    assert result.phenotype["viability_pct"] > recorded


def test_a_control_of_two_tube_kinds_is_one_input_of_the_run(tmp_path):
    """Both tube kinds name the unstained control (7AAD in the surface tube, CD3 in the Treg tube):
    it is gated with each, and run.json lists it once, with one SHA-256; n_events_total counts it once."""
    import json

    from tilpheno.io.fcs import read_fcs

    treg = (VIABILITY.format(params="{control: unstained}").replace("tube: surface", "tube: treg")
            .replace("strategy: viability", "strategy: treg_cd3").replace("7AAD", "CD3")
            .replace("viability_pct:", "cd3_pct_of_singlets:"))
    out, manifest = _process_til001(tmp_path, {"viability.yaml": VIABILITY.format(params=CONTROL), "treg.yaml": treg})
    populations = pd.read_csv(out / "populations.csv")
    assert set(populations.loc[populations["role"] == "unstained", "tube"]) == {"surface", "treg"}
    inputs = [Path(e["path"]).name for e in json.loads((out / "run.json").read_text())["inputs"]]
    assert inputs.count("TIL001_unstained.fcs") == 1
    events = sum(read_fcs(f).n_events for f in manifest["file"])   # every file is gated here, each once
    phenotypes = pd.read_csv(out / "phenotypes.csv").set_index("product_id")
    assert phenotypes.loc["TIL001", "n_events_total"] == events


def test_the_object_model_takes_the_unstained_control_and_agrees_with_the_pipeline():
    """``Sample.from_fcs(..., unstained=True)`` as a control of ``gate_sample``: the same dead cut and
    viability as ``analyze_product`` on the same files."""
    import tilpheno as tp

    strategy = live_dead_strategy()
    stained = tp.Sample.from_fcs(SAMPLE / "TIL001_surface_stain.fcs", strategy)
    control = tp.Sample.from_fcs(SAMPLE / "TIL001_unstained.fcs", strategy, unstained=True, stained=stained)
    assert control.role == "unstained"
    result = tp.gate_sample(strategy, stained, controls=[control])
    assert not [f for f in result.flags if f.code in ("missing_control", "fallback_gate")]
    manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
    rows = manifest[manifest["product_id"] == "TIL001"].assign(file=lambda m: [str(SAMPLE / f) for f in m["file"]])
    pipeline = analyze_product("TIL001", rows, [strategy])
    tube = next(t for t in pipeline.tubes if t.role == "stain")
    cut = tube.thresholds.set_index("population").loc["dead", "value_transformed"]
    assert result.thresholds.set_index("population").loc["dead", "value_transformed"] == pytest.approx(cut, abs=1e-12)
    counts = result.populations.set_index("population")["count"]
    assert 100.0 * counts["live"] / counts["singlets"] == pytest.approx(pipeline.phenotype["viability_pct"], abs=1e-9)
    with pytest.raises(ValueError, match="not both"):
        tp.Sample.from_fcs(SAMPLE / "TIL001_unstained.fcs", strategy, fmo="7AAD", unstained=True, stained=stained)


def test_the_checks_on_a_control_gated_cut_name_the_unstained_control(tmp_path):
    """A ``control: unstained`` gate's checks spoke of 'the FMO' (negative_shift: 'stained negatives sit ... from the
    FMO's ... the threshold carried over from the FMO', 'stained vs FMO'), though no FMO set its cut -> they name
    the unstained control. D93050's dead cut with shift_warning 0 (every shift of the live peak beyond it, so
    negative_shift fires as on a real shift; its code and the cut unchanged by the wording)."""
    prod, manifest = live_dead_product(tmp_path, 93050)
    result = analyze_product(prod.product_id, manifest, [live_dead_strategy("{control: unstained, rule: relative, shift_warning: 0.0}")])
    [flag] = [f for f in result.qc if f.gate == "dead" and f.code == "negative_shift"]
    assert "FMO" not in flag.message, flag
    assert "transformed units from the unstained control's and" in flag.message, flag
    assert "the threshold carried over from the unstained control" in flag.message, flag
    assert flag.message.endswith("look at nonspecific binding / spreading in 7AAD, stained vs unstained control"), flag
