"""`tilpheno process` end to end on simulated products: outputs, truth, determinism, executors, browser."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from tilpheno.gates import checks
from tilpheno.qc import FAILURE_CODES
import pytest
from typer.testing import CliRunner

from tilpheno.cli import app
from tilpheno.pipeline import process_folder

LINEAGE = ("viability_pct", "cd3_pct_of_live_lymph", "cd4_pct_of_cd3", "cd8_pct_of_cd3")


def _files(out: Path) -> dict[str, bytes]:
    """Output files and their bytes (not OUT/.cache, the incremental-run store: it records file identities)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".cache" not in p.relative_to(out).parts}


def _same_outputs(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        if name == "run.json":
            continue
        assert fa[name] == fb[name], f"{name} differs"


def test_outputs_and_tables(processed, small_cohort):
    out, summary = processed
    manifest = pd.read_csv(small_cohort.manifest)
    assert summary.ok and summary.n_products == manifest["product_id"].nunique()
    for name in ("phenotypes.csv", "phenotypes.parquet", "populations.csv", "qc.csv", "index.html", "run.json"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.part"))  # no temporary files left behind
    phen = pd.read_csv(out / "phenotypes.csv")
    assert list(phen["product_id"]) == sorted(manifest["product_id"].unique())
    pq = pd.read_parquet(out / "phenotypes.parquet")
    pd.testing.assert_frame_equal(phen.fillna(""), pq.fillna(""), check_dtype=False)  # CSV reads "" as NaN
    for pid in phen["product_id"]:
        assert (out / "products" / pid / "report.html").is_file()
    # every stained/FMO file gated appears in populations.csv, and % of parent is count / parent count
    pops = pd.read_csv(out / "populations.csv")
    gated_files = set(manifest.loc[manifest["role"] != "unstained", "file"])
    assert set(pops["file"]) == gated_files
    for (_, file), g in pops.groupby(["product_id", "file"]):
        counts = dict(zip(g["population"], g["count"]))
        for row in g.itertuples():
            parent = counts.get(row.parent)
            if parent:
                assert math.isclose(row.pct_of_parent, 100 * row.count / parent, rel_tol=1e-9, abs_tol=1e-9)
    # 2500 events per tube is below the 5000-event QC limit: every product is flagged, in qc.csv too
    qc = pd.read_csv(out / "qc.csv")
    assert list(qc.columns) == ["product_id", "file", "gate", "gate_file", "code", "severity", "needs_review", "message"]
    assert set(qc.loc[qc["needs_review"], "code"]) <= set(checks.REVIEW_CODES | FAILURE_CODES)
    assert set(qc.loc[qc["code"] == "low_events", "product_id"]) == set(phen["product_id"])


def test_phenotypes_match_simulation_truth(processed, small_cohort):
    out, _ = processed
    phen = pd.read_csv(out / "phenotypes.csv").set_index("product_id")
    truth = pd.read_csv(small_cohort.truth).set_index("product_id")
    for col in LINEAGE:
        err = (phen[col] - truth[col]).abs()
        assert err.max() < 4.0, f"{col}: max abs error {err.max():.2f} points (2500 events per tube)"


def test_release_status_follows_the_default_spec(processed):
    out, _ = processed
    phen = pd.read_csv(out / "phenotypes.csv")
    expected = np.where((phen["viability_pct"] > 70) & (phen["cd3_pct_of_live_lymph"] > 90), "pass", "fail")
    # a product whose gates may be wrong is not evaluable until reviewed
    expected = np.where(phen["review_status"] == checks.NEEDS_REVIEW, "not evaluable", expected)
    assert list(phen["release_status"]) == list(expected)
    qc = pd.read_csv(out / "qc.csv")
    flagged = set(qc.loc[qc["needs_review"], "product_id"])
    assert set(phen.loc[phen["review_status"] == checks.NEEDS_REVIEW, "product_id"]) == flagged


def test_run_json_provenance(processed, small_cohort):
    out, _ = processed
    run = json.loads((out / "run.json").read_text())
    manifest = pd.read_csv(small_cohort.manifest)
    inputs = {Path(d["path"]).name: d["sha256"] for d in run["inputs"]}
    assert set(inputs) == set(manifest["file"])
    for name, digest in inputs.items():
        assert digest == hashlib.sha256((small_cohort.out_dir / name).read_bytes()).hexdigest()
    assert {Path(s["path"]).name for s in run["strategies"]} == {"til_surface.yaml", "til_treg.yaml"}
    for s in run["strategies"]:
        assert s["sha256"] == hashlib.sha256(Path(s["path"]).read_bytes()).hexdigest()
    assert run["parameters"]["fmo_percentile"] == 99.5
    assert run["started_at"] <= run["finished_at"] and run["dependencies"]["numpy"]
    report = (out / "products" / "TIL001" / "report.html").read_text()
    assert run["strategies"][0]["sha256"][:12] in report and "run.json" in report


def test_process_pool_gives_identical_outputs(processed, small_cohort, tmp_path):
    out, _ = processed
    summary = process_folder(small_cohort.out_dir, tmp_path / "jobs2", manifest_csv=small_cohort.manifest, n_jobs=2)
    assert summary.ok
    _same_outputs(out, tmp_path / "jobs2")


@pytest.mark.slow   # starts a multi-process Dask cluster
def test_dask_local_cluster_gives_identical_outputs(processed, small_cohort, tmp_path):
    distributed = pytest.importorskip("distributed")
    out, _ = processed
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as cluster:
        summary = process_folder(small_cohort.out_dir, tmp_path / "dask", manifest_csv=small_cohort.manifest,
                                 executor="dask", scheduler=cluster.scheduler_address)
    assert summary.ok
    _same_outputs(out, tmp_path / "dask")  # tables and every report, byte for byte


@pytest.mark.browser
def test_report_and_index_render_in_chromium(processed, browser):
    out, _ = processed
    session, index = browser.load((out / "index.html").as_uri())
    assert index.loaded and index.problems == []
    links = browser.evaluate(session, "Array.from(document.querySelectorAll('#products a')).map(a => a.href)")
    assert len(links) == len(pd.read_csv(out / "phenotypes.csv"))
    session, page = browser.load(links[0])
    assert page.loaded and page.problems == []
    sizes = browser.evaluate(session, "Array.from(document.querySelectorAll('svg.plot')).map(s => s.getBoundingClientRect().width)")
    assert len(sizes) >= 10 and min(sizes) > 200
    release = browser.evaluate(session, "document.getElementById('release-status').textContent")
    phen = pd.read_csv(out / "phenotypes.csv")
    assert release == phen["release_status"].iloc[0]
    axis_texts = browser.evaluate(session, "Array.from(document.querySelectorAll('svg.plot')).map(s => s.getAttribute('aria-label')).join(' | ')")
    assert "CD3" in axis_texts and "FSC-A" in axis_texts


def test_cli_rerun_into_same_out_is_identical(processed, small_cohort, tmp_path):
    import shutil

    out, _ = processed
    again = tmp_path / "again"
    shutil.copytree(out, again)
    before = {p: p.read_bytes() for p in again.rglob("*") if p.is_file()}
    args = ["process", str(small_cohort.out_dir), "-o", str(again), "--manifest", str(small_cohort.manifest)]
    refused = CliRunner().invoke(app, args)   # a reused output folder is refused without --overwrite
    assert refused.exit_code == 2 and "pass --overwrite" in refused.output, refused.output
    assert {p: p.read_bytes() for p in again.rglob("*") if p.is_file()} == before
    result = CliRunner().invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "3 of 3 products done, 0 failed" in result.output and "low_events" in result.output
    phen = pd.read_csv(again / "phenotypes.csv")
    counts = phen["release_status"].value_counts()
    expected = ", ".join(f"{status} {counts[status]}" for status in sorted(counts.index))
    assert f"release (TIL lot release (default: viability > 70 %, CD3+ > 90 % of live lymphocytes)): {expected}" in result.output
    _same_outputs(out, again)
