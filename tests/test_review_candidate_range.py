"""The review page's candidate cuts stay on the instrument's scale: a rule's cut above the top of
the detector's range ($PnR) is no place to move a gate to."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from tilpheno.cli import app
from tilpheno.review.regate import ReviewSource, candidate_gates, evaluate

DIVA = Path(__file__).resolve().parent / "data" / "fcs" / "fcsparser_instruments" / "FACS_Diva" / "facs_diva_test.fcs"


def test_no_candidate_cut_lies_above_the_detectors_range(tmp_path):
    """facs_diva_test.fcs drafted by new-study (no FMO, no control): its CD20+ gate sees one
    population; the valley rule's cut (1.373 logicle) lay beyond the parent's events and was clamped
    for the gate, but the review page still offered it as 'density valley 12,536,619 (0.0%)',
    48 times the detector's $PnR (262,144). Every candidate but the run's own cut now lies at or
    below its detector's top; the unclamped cut is still recorded in the diagnostics."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    shutil.copy(DIVA, folder / DIVA.name)
    study, out = tmp_path / "study", tmp_path / "out"
    runner = CliRunner()
    assert runner.invoke(app, ["new-study", str(folder), "-o", str(study)]).exit_code == 0
    result = runner.invoke(app, ["process", str(folder), "--study", str(study / "study.yaml"),
                                 "--manifest", str(study / "manifest.csv"), "-o", str(out), "--reports", "none"])
    assert result.exit_code == 0, result.output
    source = ReviewSource(out)
    pid = source.product_ids()[0]
    recorded = source.candidates(pid)
    beyond = []
    for tube_kind, st in source.stained(pid).items():
        gates = source.automatic(pid)["tubes"][tube_kind]["gates"]
        masks = evaluate(st.strategy, st.tube, gates)
        for population, cuts in recorded.get(tube_kind, {}).items():
            dim = gates[population].get("dim")
            # the situation exists: a rule's cut above the detector's top among the recorded candidates
            beyond += [(population, c["rule"]) for c in cuts if dim is not None and c["rule"] != "automatic"
                       and float(st.tube.transforms[dim].inverse(np.array([c["cut"]]))[0]) > st.tops[dim]]
            for c in candidate_gates(st, gates, masks, population, cuts):
                assert c["rule"] == "automatic" or c["raw"] <= st.tops[dim], (population, c["label"], c["raw"], st.tops[dim])
    assert ("CD20+", "valley_threshold") in beyond
