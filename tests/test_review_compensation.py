"""The review app re-gates with the matrix the run compensated with (``process --compensation``),
not the files' own $SPILLOVER: the matrix is written to ``products/<slug>/compensation.csv`` and
recorded with its SHA-256 in ``run.json``."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from review_support import SAMPLE

PID = "TIL001"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """TIL001 processed twice: with its files' own matrix, and with a matrix whose CD4 -> CD8
    spillover coefficient is 0.15 higher (``compensation_path``)."""
    from tilpheno.io.fcs import read_fcs
    from tilpheno.io.spill import Spillover
    from tilpheno.pipeline import process_folder
    from tilpheno.spillover import write_spillover_csv

    tmp = tmp_path_factory.mktemp("review_comp")
    manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
    subset = manifest[manifest["product_id"] == PID].copy()
    subset["file"] = [str(SAMPLE / f) for f in subset["file"]]
    subset.to_csv(tmp / "manifest.csv", index=False)
    stain = read_fcs(SAMPLE / "TIL001_surface_stain.fcs")
    own = stain.spillover
    detectors = list(own.detectors)
    pnn = list(stain.channels["pnn"])
    pns = [str(s) for s in stain.channels["pns"]]
    cd4 = detectors.index(pnn[next(i for i, s in enumerate(pns) if "CD4" in s)])
    cd8 = detectors.index(pnn[next(i for i, s in enumerate(pns) if "CD8" in s)])
    matrix = np.array(own.matrix, dtype=float)
    matrix[cd4, cd8] += 0.15
    write_spillover_csv(Spillover(tuple(detectors), matrix, "edited"), tmp / "matrix.csv")
    outs = {}
    for name, comp in (("own", None), ("override", tmp / "matrix.csv")):
        out = tmp / name
        summary = process_folder(SAMPLE, out, manifest_csv=tmp / "manifest.csv", make_reports=False,
                                 compensation_path=comp)
        assert summary.ok, summary.failed
        outs[name] = out
    return outs, tmp / "matrix.csv"


def test_the_override_changes_the_phenotype(runs):
    """Without this, the reproduction check below could pass with the wrong matrix: the review
    re-gates and refuses a result more than ``REPRODUCE_TOLERANCE`` points from phenotypes.csv."""
    from tilpheno.review.regate import REPRODUCE_TOLERANCE
    from tilpheno.study import default_study

    outs, _ = runs
    own = pd.read_csv(outs["own"] / "phenotypes.csv").iloc[0]
    override = pd.read_csv(outs["override"] / "phenotypes.csv").iloc[0]
    changed = [v for v in default_study().variables if abs(float(own[v]) - float(override[v])) > 100 * REPRODUCE_TOLERANCE]
    assert changed, "the edited CD4->CD8 coefficient should move some variable"
    qc = pd.read_csv(outs["override"] / "qc.csv")
    assert "compensation_residual" in set(qc["code"])   # the run saw the over-compensation


def test_run_records_the_matrix_and_the_review_regates_with_it(runs):
    from tilpheno.compensation import read_spillover_csv
    from tilpheno.provenance import sha256_file
    from tilpheno.review.regate import ReviewSource

    outs, matrix_csv = runs
    run = json.loads((outs["override"] / "run.json").read_text())
    entry = run["compensation_matrices"][PID]
    written = outs["override"] / entry["file"]
    assert written.name == "compensation.csv" and sha256_file(written) == entry["sha256"]
    np.testing.assert_allclose(read_spillover_csv(written).matrix, read_spillover_csv(matrix_csv).matrix, rtol=0, atol=1e-12)
    assert json.loads((outs["own"] / "run.json").read_text())["compensation_matrices"] == {}

    source = ReviewSource(outs["override"])
    np.testing.assert_allclose(source.spillover(PID).matrix, read_spillover_csv(matrix_csv).matrix, rtol=0, atol=1e-12)
    automatic = source.automatic(PID)   # raises ReviewError unless the re-run reproduces phenotypes.csv
    assert "surface" in automatic["tubes"]
    assert source.stained(PID)["surface"].tube.compensated
    assert ReviewSource(outs["own"]).spillover(PID) is None


def test_an_edited_matrix_is_refused(runs, tmp_path):
    import shutil

    from tilpheno.review.regate import ReviewError, ReviewSource

    outs, _ = runs
    copy = tmp_path / "out"
    shutil.copytree(outs["override"], copy)
    run = json.loads((copy / "run.json").read_text())
    path = copy / run["compensation_matrices"][PID]["file"]
    path.write_text(path.read_text().replace("0.", "0.0", 1))
    with pytest.raises(ReviewError, match="compensation matrix changed since the run"):
        ReviewSource(copy).automatic(PID)
