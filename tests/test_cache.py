"""Incremental runs (tilpheno.cache): re-use, invalidation, corruption, stat pre-check, deferred reports."""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tilpheno.cache import CACHE_DIR, InputDigests, ProductStore, product_key
from tilpheno.cli import app
from tilpheno.pipeline import ProcessOptions, ProductJob, process_folder, strategy_sources

OUTPUTS = ("phenotypes.csv", "phenotypes.parquet", "populations.csv", "qc.csv", "index.html")


def _outputs(out: Path) -> dict[str, bytes]:
    """Every output file's bytes except run.json and the cache (which records times and identities)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "run.json" and CACHE_DIR not in p.relative_to(out).parts}


def _cache_record(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())["cache"]


@pytest.fixture(scope="module")
def cohort(small_cohort, tmp_path_factory):
    """A private copy of the small cohort (tests here modify files), its manifest and a first run."""
    folder = tmp_path_factory.mktemp("cache_cohort") / "fcs"
    shutil.copytree(small_cohort.out_dir, folder)
    return folder


@pytest.fixture(scope="module")
def first(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache_first") / "out"
    summary = process_folder(cohort, out, manifest_csv=cohort / "manifest.csv", overwrite=True)
    assert summary.ok
    return out


def test_rerun_reuses_every_product_and_gives_identical_outputs(first, cohort, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(first, again)
    before = _outputs(again)
    summary = process_folder(cohort, again, manifest_csv=cohort / "manifest.csv", overwrite=True)
    assert summary.ok and summary.n_products == 3
    record = _cache_record(again)
    assert record["reused"] == ["TIL001", "TIL002", "TIL003"] and record["processed"] == []
    assert _outputs(again) == before
    assert set(before) >= {*OUTPUTS, "products/TIL001/report.html"}
    # run.json still lists every input with its digest (taken from the entries)
    first_run, second_run = (json.loads((o / "run.json").read_text()) for o in (first, again))
    assert first_run["inputs"] == second_run["inputs"] and len(first_run["inputs"]) == 27


def test_changed_fmo_file_reprocesses_only_its_product(cohort, tmp_path):
    folder = tmp_path / "fcs"
    shutil.copytree(cohort, folder)
    manifest = folder / "manifest.csv"
    out = tmp_path / "out"
    process_folder(folder, out, manifest_csv=manifest, make_reports=False, overwrite=True)
    # TIL002's PD1 FMO replaced by TIL001's (a valid FCS file with other events)
    target = folder / "TIL002_surface_FMO_PD1.fcs"
    target.write_bytes((folder / "TIL001_surface_FMO_PD1.fcs").read_bytes())
    summary = process_folder(folder, out, manifest_csv=manifest, make_reports=False, overwrite=True)
    assert summary.ok
    record = _cache_record(out)
    assert record["processed"] == ["TIL002"] and record["reused"] == ["TIL001", "TIL003"]
    incremental = _outputs(out)
    # --no-cache: every product processed again (entries not read), every input hashed again
    process_folder(folder, out, manifest_csv=manifest, make_reports=False, use_cache=False, overwrite=True)
    record = _cache_record(out)
    assert record["reused"] == [] and record["processed"] == ["TIL001", "TIL002", "TIL003"]
    assert record["inputs_hashed"] == 0 and record["inputs_digest_reused"] == 0  # nothing looked up, nothing hashed here
    assert _outputs(out) == incremental
    # the PD1 threshold of TIL002 changed with its FMO, so the product really was gated again
    pops = pd.read_csv(out / "populations.csv")
    assert "TIL002_surface_FMO_PD1.fcs" in set(pops["file"])
    # entries of this run only: one per product
    entries = [p for p in (out / CACHE_DIR / "entries").glob("*/*") if p.is_dir()]
    assert len(entries) == 3


def test_corrupt_entry_is_ignored_with_a_log_line(first, cohort, tmp_path, caplog):
    again = tmp_path / "again"
    shutil.copytree(first, again)
    victim = sorted((again / CACHE_DIR / "entries").glob("*/*/outcome.json"))[0]
    pid = json.loads(victim.read_text())["product_id"]
    victim.write_text(victim.read_text().replace('"ok": true', '"ok": false'))  # bytes no longer match entry.json
    with caplog.at_level(logging.WARNING, logger="tilpheno.cache"):
        process_folder(cohort, again, manifest_csv=cohort / "manifest.csv", overwrite=True)
    assert any("ignoring entry" in r.getMessage() and "SHA-256 does not match" in r.getMessage() for r in caplog.records)
    record = _cache_record(again)
    assert record["processed"] == [pid] and len(record["reused"]) == 2
    assert _outputs(again) == _outputs(first)


def test_truncated_entry_json_is_one_log_line_and_recomputed(first, cohort, tmp_path, caplog):
    """An entry whose entry.json was cut short (a disk full, an edit by hand) logged two warnings
    for the one damaged entry ("ignoring cache entry .../entry.json (...)" then "ignoring entry ...
    (entry.json missing, unreadable or for another key)"); now one line naming the entry and why."""
    again = tmp_path / "again"
    shutil.copytree(first, again)
    victim = sorted((again / CACHE_DIR / "entries").glob("*/*/entry.json"))[0]
    pid = json.loads((victim.parent / "outcome.json").read_text())["product_id"]
    victim.write_text(victim.read_text()[:20])
    with caplog.at_level(logging.WARNING, logger="tilpheno.cache"):
        process_folder(cohort, again, manifest_csv=cohort / "manifest.csv", overwrite=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "tilpheno.cache"]
    assert len(lines) == 1 and lines[0].startswith(f"cache: ignoring entry {victim.parent} (entry.json: "), lines
    assert _cache_record(again)["processed"] == [pid]
    assert _outputs(again) == _outputs(first)


def test_report_link_or_edit_never_changes_the_cache(first, cohort, tmp_path):
    """A published report edited in place (it may share the cache entry's inode) invalidates only that entry."""
    again = tmp_path / "again"
    shutil.copytree(first, again)
    report = again / "products" / "TIL001" / "report.html"
    with open(report, "r+b") as fh:  # in-place edit, as an editor that does not replace files would
        fh.write(b"<!-- edited -->")
    process_folder(cohort, again, manifest_csv=cohort / "manifest.csv", overwrite=True)
    assert _outputs(again) == _outputs(first)


@pytest.mark.slow   # two full runs with reports
def test_reports_later_then_report_command_equals_a_clean_run(first, cohort, tmp_path):
    out = tmp_path / "later"
    runner = CliRunner()
    result = runner.invoke(app, ["process", str(cohort), "-o", str(out), "--manifest", str(cohort / "manifest.csv"),
                                 "--reports", "later"])
    assert result.exit_code == 0, result.output
    assert not (out / "products").exists() and "report.html" not in (out / "index.html").read_text()
    result = runner.invoke(app, ["report", str(out), "TIL002"])
    assert result.exit_code == 0, result.output
    assert sorted(p.parent.name for p in (out / "products").glob("*/report.html")) == ["TIL002"]
    assert _cache_record(out)["processed"] == ["TIL002"]  # gated again to draw it; the others re-used
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert _cache_record(out)["processed"] == ["TIL001", "TIL003"]
    assert _outputs(out) == _outputs(first)
    result = runner.invoke(app, ["report", str(out), "NOPE"])
    assert result.exit_code == 2 and "no product 'NOPE'" in result.output


def test_report_command_keeps_the_run_command_line(first, tmp_path, monkeypatch):
    """`tilpheno report OUT` rewrote run.json's command line (and overwrite/reports) with its own:
    the command that made the run was lost. It is kept; each report call is listed after it."""
    import sys

    out = tmp_path / "out"
    shutil.copytree(first, out)
    run = json.loads((out / "run.json").read_text())
    for argv, products in ((["tilpheno", "report", str(out), "TIL002"], ["TIL002"]), (["tilpheno", "report", str(out)], "all")):
        monkeypatch.setattr(sys, "argv", argv)
        result = CliRunner().invoke(app, argv[1:])
        assert result.exit_code == 0, result.output
    after = json.loads((out / "run.json").read_text())
    assert after["command_line"] == run["command_line"] and after["parameters"] == run["parameters"]
    assert [(c["command_line"], c["products"]) for c in after["report_commands"]] == [
        (["tilpheno", "report", str(out), "TIL002"], ["TIL002"]), (["tilpheno", "report", str(out)], "all")]


def test_input_digests_reuse_only_settled_unchanged_files(tmp_path):
    f = tmp_path / "a.fcs"
    f.write_bytes(b"x" * 1000)
    index = tmp_path / "inputs.json"
    d1 = InputDigests(index)
    digest = d1.sha256(f)
    d1.save()
    # written just now: within the racy window, so hashed again
    d2 = InputDigests(index)
    assert d2.sha256(f) == digest and (d2.hashed, d2.reused) == (1, 0)
    # settled: modified long before the digest was recorded -> re-used
    old = time.time() - 60
    os.utime(f, (old, old))
    d3 = InputDigests(index)
    d3.sha256(f)
    d3.save()
    rec = json.loads(index.read_text())[str(f)]
    rec["recorded_ns"] = time.time_ns() + 10**10  # as if recorded well after the file settled (ctime is now)
    index.write_text(json.dumps({str(f): rec}))
    d4 = InputDigests(index)
    assert d4.sha256(f) == digest and (d4.hashed, d4.reused) == (0, 1)
    # same size, mtime put back: ctime moved, so the new bytes are hashed
    f.write_bytes(b"y" * 1000)
    os.utime(f, (old, old))
    d5 = InputDigests(index)
    assert d5.sha256(f) != digest and d5.hashed == 1
    assert InputDigests(index, verify=True).sha256(f) == d5.sha256(f)
    # not a regular file: no digest (never a hang on a FIFO)
    fifo = tmp_path / "pipe.fcs"
    os.mkfifo(fifo)
    assert InputDigests(None).sha256(fifo) is None


def test_product_key_depends_on_inputs_strategies_and_options(small_cohort):
    from tilpheno.gates.strategy import default_strategy_paths, load_strategy

    manifest = pd.read_csv(small_cohort.manifest)
    rows = manifest[manifest["product_id"] == "TIL001"].reset_index(drop=True)
    rows["file"] = [str(small_cohort.out_dir / f) for f in rows["file"]]
    sources = strategy_sources([load_strategy(p) for p in default_strategy_paths()])
    job = ProductJob("TIL001", rows, sources, ProcessOptions())
    digests = {f: "0" * 64 for f in rows["file"]}
    key = product_key(job, digests)
    assert key == product_key(ProductJob("TIL001", rows.copy(), sources, ProcessOptions()), dict(digests))
    changed_file = {**digests, rows["file"][0]: "1" * 64}
    other_strategy = (sources[0].__class__(sources[0].path, sources[0].text + "\n# edited\n"), *sources[1:])
    variants = [
        product_key(job, changed_file),
        product_key(ProductJob("TIL001", rows, other_strategy, ProcessOptions()), digests),
        product_key(ProductJob("TIL001", rows, sources, ProcessOptions(fmo_percentile=99.0)), digests),
        product_key(ProductJob("TIL001", rows, sources, ProcessOptions(include_identifiers=True)), digests),
        product_key(ProductJob("TIL001", rows.assign(til_dose_cells=1e9), sources, ProcessOptions()), digests),
    ]
    assert len({key, *variants}) == 1 + len(variants)
    # drawing a report or not is not part of the key (an entry may hold a report or not)
    assert product_key(ProductJob("TIL001", rows, sources, ProcessOptions(make_reports=False)), digests) == key
    # nor the release spec (decided again from the stored outcome), its name in the short provenance included
    from tilpheno.release import ReleaseSpec

    other_spec = ProcessOptions(release_spec=ReleaseSpec("other", ()), provenance_short=(("release spec", "other"),))
    assert product_key(ProductJob("TIL001", rows, sources, other_spec), digests) == key


def test_store_round_trip_and_prune(tmp_path):
    store = ProductStore(tmp_path)
    frame = pd.DataFrame({"population": ["a", "b"], "count": [1, 2], "pct": [float("nan"), 0.1]})
    entry = store.store("ab" * 32, {"product_id": "P", "phenotype": {"x": float("nan")}}, frame, "<html>")
    loaded = store.load("ab" * 32, need_report=True)
    assert loaded is not None and loaded.has_report and loaded.report_path.read_text() == "<html>"
    pd.testing.assert_frame_equal(pd.read_parquet(loaded.populations_path), frame)
    assert store.load("cd" * 32) is None
    assert ProductStore(tmp_path, read=False).load("ab" * 32) is None
    store.store("ef" * 32, {"product_id": "Q"}, None, None)
    assert store.load("ef" * 32, need_report=True) is None and store.load("ef" * 32) is not None
    assert store.prune(["ef" * 32]) == 1 and store.load("ab" * 32) is None and entry.folder.exists() is False


@pytest.mark.parametrize("umask", [0o077, 0o002])
def test_stored_and_published_reports_follow_the_umask(tmp_path, umask):
    """A report re-used from the cache is published as a hard link to the entry's copy, so the
    entry's files get the umask's permissions, as every other output (atomic.write_*): under
    umask 077 a report was world-readable (0644) beside tables of 0600."""
    import stat

    from tilpheno.pipeline.outputs import _publish_report

    old = os.umask(umask)
    try:
        entry = ProductStore(tmp_path / "out").store("ab" * 32, {"product_id": "P"}, None, "<html>")
        _publish_report(entry.report_path, tmp_path / "out" / "products" / "P" / "report.html")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in entry.folder.iterdir()}
    assert set(modes.values()) == {0o666 & ~umask} and len(modes) == 4, modes
    assert stat.S_IMODE(entry.folder.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "out" / "products" / "P" / "report.html").stat().st_mode) == 0o666 & ~umask


def test_report_refuses_files_added_to_the_folder_since_the_run(small_cohort, tmp_path):
    """``tilpheno report OUT`` draws that run's results: a product (or a file of a product) added to
    the scanned folder since would have joined the re-made tables; it is refused in one line."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    for f in small_cohort.out_dir.glob("TIL00[12]_*.fcs"):
        shutil.copy(f, folder)
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(app, ["process", str(folder), "-o", str(out), "--reports", "later"])
    assert result.exit_code == 0, result.output
    added = [shutil.copy(f, folder) for f in sorted(small_cohort.out_dir.glob("TIL003_*.fcs"))]
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 2 and "input file added since the run in" in result.output, result.output
    assert f"(and {len(added) - 1} more)" in result.output
    for f in added:
        os.unlink(f)
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(pd.read_csv(out / "phenotypes.csv")["product_id"]) == ["TIL001", "TIL002"]


def test_a_rewritten_compensation_control_is_not_reused_with_its_old_digest(small_cohort, tmp_path):
    """A single-stain control rewritten without changing the estimated matrix (a re-exported header)
    still makes its product new: run.json then records the control's current digest, as a clean
    run's does, never the one of the bytes an earlier run read."""
    from tilpheno.provenance import sha256_file
    from tilpheno.simulate.controls import simulate_controls

    folder = tmp_path / "fcs"
    folder.mkdir()
    for f in small_cohort.out_dir.glob("TIL001_*.fcs"):
        shutil.copy2(f, folder / f.name)
    controls = simulate_controls(folder / "controls", 6, n_events=3000)
    (folder / "controls" / "controls.csv").unlink()
    out = tmp_path / "out"
    assert process_folder(folder, out, make_reports=False).ok
    control = next(f for f in controls.files if "FITC" in f.name)
    data = control.read_bytes()
    assert b"CREATOR/tilpheno simulate controls/" in data
    control.write_bytes(data.replace(b"simulate controls/", b"simulate CONTROLS/", 1))   # TEXT only: same matrix
    assert process_folder(folder, out, make_reports=False, overwrite=True).ok
    assert _cache_record(out)["processed"] == ["TIL001"]
    recorded = {i["path"]: i["sha256"] for i in json.loads((out / "run.json").read_text())["inputs"]}
    assert recorded[str(control)] == sha256_file(control)


def test_digests_are_recorded_as_of_each_products_own_start(small_cohort, tmp_path, monkeypatch):
    """Files copied just before a run: each product's digests count as settled once its own job
    started RACY_SECONDS after the copy (as the later products of a long run do), so the next run
    hashes none of them again (it hashed all: the run's start was the reference); a file touched
    after the run is still hashed again, and the outputs are those of the first run."""
    import types

    import tilpheno.pipeline.executors as executors

    folder = tmp_path / "fcs"
    shutil.copytree(small_cohort.out_dir, folder)   # ctime: now
    out = tmp_path / "out"
    real = time.time_ns
    # the workers' clock: their jobs start 10 s from now (the run's own clock is untouched)
    monkeypatch.setattr(executors, "time", types.SimpleNamespace(time_ns=lambda: real() + 10**10))
    assert process_folder(folder, out, manifest_csv=folder / "manifest.csv").ok
    monkeypatch.undo()
    first = _outputs(out)
    assert process_folder(folder, out, manifest_csv=folder / "manifest.csv", overwrite=True).ok
    record = _cache_record(out)
    assert (record["inputs_hashed"], record["inputs_digest_reused"]) == (0, 27)
    assert len(record["reused"]) == 3 and _outputs(out) == first
    touched = sorted(folder.glob("*.fcs"))[0]
    os.utime(touched)
    assert process_folder(folder, out, manifest_csv=folder / "manifest.csv", overwrite=True).ok
    record = _cache_record(out)
    assert (record["inputs_hashed"], record["inputs_digest_reused"]) == (1, 26)
    assert len(record["reused"]) == 3 and _outputs(out) == first


def test_importing_the_pipeline_reads_no_study_and_versions_are_looked_up_once(monkeypatch):
    """Issue 18, a re-run's fixed cost: importing ``tilpheno.pipeline.run`` loaded the bundled
    study (its YAML files, through a default ``ProcessOptions()`` argument) that a run with a
    study of its own then loaded again; and every run looked each dependency's version up twice
    (run record, cache key), each a scan of the installed distributions."""
    import subprocess
    import sys
    from importlib import metadata

    from tilpheno import provenance

    script = ("import tilpheno.pipeline.run\nfrom tilpheno.study import default_study\n"
              "print('STUDIES', default_study.cache_info().misses)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert "STUDIES 0" in run.stdout, run.stdout + run.stderr
    first = provenance.dependency_versions()
    calls = []
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: calls.append(name) or real(name))
    assert provenance.dependency_versions() == first and calls == []


def _settle_scan_index(index: Path) -> None:
    """Every row of ``index`` as if recorded well after its file settled (the files were written
    just now: within the racy window, so not trusted yet; their ctime cannot be set back)."""
    data = json.loads(index.read_text())
    for rec in data["files"].values():
        rec["recorded_ns"] = time.time_ns() + 10**10
    index.write_text(json.dumps(data))


def _counting_reads(monkeypatch) -> list:
    """The files ``scan_folder`` reads from now on (HEADER and TEXT: ``read_fcs_metadata``)."""
    import tilpheno.io.fcs as fcs

    reads = []
    real = fcs.read_fcs_metadata
    monkeypatch.setattr(fcs, "read_fcs_metadata", lambda path, **kw: reads.append(Path(path).name) or real(path, **kw))
    return reads


def test_scan_rows_are_reused_only_for_files_unchanged_since(small_cohort, tmp_path, monkeypatch):
    """Issue 18: a run without a manifest reads every file's HEADER and TEXT to infer its row
    (108 files: 0.13 s CPU, 10,000 files: 12 s). ``ScanIndex`` keeps the rows by file identity: a
    re-scan reads no unchanged file; a file changed (another size), touched (same bytes) or replaced
    by another file of the same size and mtime (another inode) is read again; the manifest is
    always the one a scan without the index gives (here: an unreadable replacement's problem)."""
    from tilpheno.cache import ScanIndex
    from tilpheno.io.manifest import scan_folder

    folder = tmp_path / "fcs"
    shutil.copytree(small_cohort.out_dir, folder)
    index = tmp_path / "scan.json"
    first = ScanIndex(index)
    truth = scan_folder(folder)
    pd.testing.assert_frame_equal(scan_folder(folder, rows=first), truth)
    first.save()
    reads = _counting_reads(monkeypatch)

    def rescan() -> pd.DataFrame:
        reads.clear()
        rows = ScanIndex(index)
        frame = scan_folder(folder, rows=rows)
        rows.save()
        _settle_scan_index(index)
        return frame

    assert len(rescan()) == 27 and len(reads) == 27   # written just now: racy, read again
    pd.testing.assert_frame_equal(rescan(), truth)
    assert reads == []
    files = sorted(folder.glob("*.fcs"))
    changed, touched, replaced = files[0], files[1], files[2]
    changed.write_bytes(changed.read_bytes()[:-100])
    os.utime(touched)
    st = replaced.stat()
    fresh = replaced.with_suffix(".new")
    fresh.write_bytes(b"\0" * st.st_size)   # same size, unreadable
    os.utime(fresh, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(fresh, replaced)
    assert (replaced.stat().st_size, replaced.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    reads.clear()
    truth = scan_folder(folder)
    assert truth.set_index("file").loc[str(replaced), "problem"] != ""
    pd.testing.assert_frame_equal(rescan(), truth)
    assert sorted(reads) == sorted(f.name for f in (changed, touched, replaced))


def test_a_process_rerun_without_manifest_reads_no_unchanged_file(small_cohort, tmp_path, monkeypatch):
    """The scan's rows live in ``OUT/.cache/scan.json``: an unchanged re-run of ``process`` without
    a manifest reads no file's TEXT (it read all 27) and gives the first run's outputs; with
    ``use_cache=False`` every file is read by the scan again."""
    folder = tmp_path / "fcs"
    shutil.copytree(small_cohort.out_dir, folder)
    (folder / "manifest.csv").unlink()
    out = tmp_path / "out"
    assert process_folder(folder, out).ok
    first = _outputs(out)
    _settle_scan_index(out / CACHE_DIR / "scan.json")
    reads = _counting_reads(monkeypatch)
    assert process_folder(folder, out, overwrite=True).ok
    assert reads == [] and _outputs(out) == first and len(_cache_record(out)["reused"]) == 3
    _settle_scan_index(out / CACHE_DIR / "scan.json")
    assert process_folder(folder, out, overwrite=True, use_cache=False).ok
    # read by the scan, then by the products' jobs, whose read of each stained file also places its DATA
    # (the gating's readability check: since f4f6805 not a read of its own)
    assert len(reads) == 2 * 27 and _outputs(out) == first


def _counting_gatings(monkeypatch) -> list:
    """Every product gated in this process (``--jobs 1`` runs products here), by id."""
    from tilpheno.pipeline import product

    gated: list = []
    real = product._analyze
    monkeypatch.setattr(product, "_analyze", lambda job, rows, checked=None: gated.append(job.product_id) or real(job, rows, checked))
    return gated


@pytest.mark.slow   # five runs of the small cohort, one report drawn
def test_a_release_spec_change_gates_nothing_again_and_equals_a_clean_run(cohort, tmp_path, monkeypatch):
    import tilpheno

    study = tmp_path / "study"
    shutil.copytree(Path(tilpheno.__file__).parent / "studies" / "til", study)
    manifest = cohort / "manifest.csv"
    out = tmp_path / "out"
    gated = _counting_gatings(monkeypatch)
    before = process_folder(cohort, out, manifest_csv=manifest, study=study / "study.yaml", make_reports=False)
    assert gated == ["TIL001", "TIL002", "TIL003"]
    row = pd.read_csv(out / "phenotypes.csv").set_index("product_id")
    # release.yaml edited: the viability limit between the products' values, a new criterion
    middle = float(row["viability_pct"].median())
    spec = (study / "release.yaml").read_text()
    assert "limit: 70\n" in spec
    spec = spec.replace("limit: 70\n", f"limit: {middle}\n") + (
        "  - name: CD4\n    column: cd4_pct_of_cd3\n    op: \">=\"\n    limit: 1\n    unit: \"% of CD3+\"\n")
    (study / "release.yaml").write_text(spec)
    gated.clear()
    after = process_folder(cohort, out, manifest_csv=manifest, study=study / "study.yaml", reports="none",
                           overwrite=True)
    assert gated == []
    record = _cache_record(out)
    assert record["reused"] == record["release_decided_again"] == ["TIL001", "TIL002", "TIL003"]
    assert record["processed"] == [] and after.release_counts != before.release_counts
    clean = tmp_path / "clean"
    process_folder(cohort, clean, manifest_csv=manifest, study=study / "study.yaml", reports="none", use_cache=False)
    assert _outputs(out) == _outputs(clean)
    # a report shows the verdict: the product whose report is drawn is gated again, the others not
    gated.clear()
    process_folder(cohort, out, manifest_csv=manifest, study=study / "study.yaml", reports="now",
                   report_products=["TIL002"], overwrite=True)
    assert gated == ["TIL002"] and _cache_record(out)["release_decided_again"] == ["TIL001", "TIL003"]
    process_folder(cohort, clean, manifest_csv=manifest, study=study / "study.yaml", reports="now",
                   report_products=["TIL002"], use_cache=False, overwrite=True)
    assert _outputs(out) == _outputs(clean) and (out / "products" / "TIL002" / "report.html").is_file()
    # a strategy change still gates every product again
    strategy = study / "til_treg.yaml"
    strategy.write_text(strategy.read_text() + "\n# edited\n")
    gated.clear()
    process_folder(cohort, out, manifest_csv=manifest, study=study / "study.yaml", reports="none", overwrite=True)
    assert sorted(gated) == ["TIL001", "TIL002", "TIL003"] and _cache_record(out)["reused"] == []


def test_a_release_decided_again_from_the_stored_outcome_equals_gating_again(small_cohort):
    """Under another spec (a limit moved, a criterion on a column the phenotype row gains only after
    the decision: ``n_events_total``), the stored outcome's release decided again equals the
    product gated again under that spec."""
    import dataclasses

    from tilpheno.gates.strategy import default_strategy_paths, load_strategy
    from tilpheno.pipeline import outcome_from_record, outcome_record
    from tilpheno.pipeline.product import decide_release_again, process_product
    from tilpheno.release import DEFAULT_SPEC, Criterion

    manifest = pd.read_csv(small_cohort.manifest)
    rows = manifest[manifest["product_id"] == "TIL002"].reset_index(drop=True)
    rows["file"] = [str(small_cohort.out_dir / f) for f in rows["file"]]
    sources = strategy_sources([load_strategy(p) for p in default_strategy_paths()])
    stored = process_product(ProductJob("TIL002", rows, sources, ProcessOptions(make_reports=False)))
    viability = float(stored.phenotype["viability_pct"])
    other = dataclasses.replace(DEFAULT_SPEC, name="other", criteria=(
        Criterion("Viability", "viability_pct", ">", viability - 1), *DEFAULT_SPEC.criteria[1:],
        Criterion("Events", "n_events_total", ">=", 1, "events")))
    again = process_product(ProductJob("TIL002", rows, sources, ProcessOptions(make_reports=False, release_spec=other)))
    outcome = outcome_from_record(json.loads(json.dumps(outcome_record(stored))))
    decide_release_again(outcome, other, ProductJob("TIL002", rows, sources, ProcessOptions(make_reports=False)))
    truth = outcome_from_record(json.loads(json.dumps(outcome_record(again))))
    assert outcome.release_status != stored.release_status or outcome.release != stored.release
    def decided(o) -> str:   # JSON: a missing value (NaN) equals itself
        rec = outcome_record(o)
        return json.dumps([rec["release"], rec["release_status"], rec["phenotype"]])

    assert decided(outcome) == decided(truth)


def test_report_command_says_which_reports_it_draws(first, tmp_path):
    """`tilpheno report OUT TIL002` showed 'gating 3 products (27 files)', as if it gated the whole
    run again: it draws TIL002's report and takes the other products from OUT/.cache. The line says so."""
    out = tmp_path / "out"
    shutil.copytree(first, out)
    result = CliRunner().invoke(app, ["report", str(out), "TIL002"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "gating" not in result.output
    assert "drawing the report of TIL002 (the other 2 products from the cache)" in result.output
    result = CliRunner().invoke(app, ["report", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "gating" not in result.output and "drawing the reports of 3 products (27 files)" in result.output


def test_report_written_to_a_file_says_what_it_draws_in_whole_lines(first, tmp_path):
    """`tilpheno report OUT TIL002 > log` wrote rich's progress bar as the run ended, cut at 80 columns
    ('drawing the report of TIL002 (the other 2 products from the cache) ━━ 1/1 0:…'): on an output that
    is no terminal the line is whole and no bar is drawn; the summary follows."""
    import subprocess

    out = tmp_path / "out"
    shutil.copytree(first, out)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    log = tmp_path / "report.log"
    with log.open("w") as fh:
        done = subprocess.run([sys.executable, "-m", "tilpheno", "report", str(out), "TIL002"], stdout=fh,
                              stderr=subprocess.STDOUT, env=env, timeout=300)
    lines = log.read_text(encoding="utf-8").splitlines()
    assert done.returncode == 0, lines
    assert lines[0] == "drawing the report of TIL002 (the other 2 products from the cache)", lines
    assert lines[1].startswith("3 of 3 products done, 0 failed in "), lines
    assert not any("…" in line or "━" in line for line in lines), lines


def test_a_control_replaced_after_its_estimate_is_hashed_again_next_run(tmp_path, monkeypatch):
    """The PE single-stain control is replaced (its PE-A $PnR 262144 -> 131072, TEXT only) after
    the run's compensation estimate read it, before the product's job started RACY_SECONDS later.
    The job recorded the estimate's digest against the new file's identity as of its own start, so
    the next run took the old digest for the new file: the product was re-used without the review
    flag the new control raises, and run.json gave the control a digest its bytes do not have ->
    the control is hashed again, and the next run's outputs are those of a clean run."""
    import types

    import tilpheno.pipeline.executors as executors
    import tilpheno.spillover as spillover
    from tilpheno.provenance import sha256_file
    from tilpheno.simulate.cohort import simulate_product, write_product
    from tilpheno.simulate.controls import simulate_controls
    from control_support import edited_copy, raw_text

    folder = tmp_path / "in"
    write_product(simulate_product("TIL001", 21, 4000), folder)
    simulate_controls(folder / "controls", 6, n_events=3000)
    pe = folder / "controls" / "Compensation Controls_PE Stained Control.fcs"
    kw = raw_text(pe)
    n = next(i for i in range(1, int(kw["$PAR"]) + 1) if kw[f"$P{i}N"] == "PE-A")
    replacement = edited_copy(pe, tmp_path / "edited", f"$P{n}R", "262144", "131072").read_bytes()
    plan = spillover.plan_compensation

    def estimate_then_replace(*args, **kwargs):
        planned = plan(*args, **kwargs)
        pe.write_bytes(replacement)   # replaced after the estimate read it
        return planned

    real = time.time_ns
    monkeypatch.setattr(spillover, "plan_compensation", estimate_then_replace)
    # the product's job starts 10 s from now (RACY_SECONDS after the replacement)
    monkeypatch.setattr(executors, "time", types.SimpleNamespace(time_ns=lambda: real() + 10**10))
    out = tmp_path / "out"
    assert process_folder(folder, out, make_reports=False).ok
    monkeypatch.undo()
    qc = pd.read_csv(out / "qc.csv").fillna("")
    assert not qc["code"].eq("control_settings_differ").any()   # the estimate's control: the stained tubes' range

    assert process_folder(folder, out, make_reports=False, overwrite=True).ok
    clean = tmp_path / "clean"
    assert process_folder(folder, clean, make_reports=False).ok

    assert _cache_record(out)["processed"] == ["TIL001"]
    recorded = {i["path"]: i["sha256"] for i in json.loads((out / "run.json").read_text())["inputs"]}
    assert recorded[str(pe)] == sha256_file(pe)
    assert (out / "qc.csv").read_bytes() == (clean / "qc.csv").read_bytes()
    assert pd.read_csv(clean / "qc.csv")["code"].eq("control_settings_differ").sum() == 2


def test_the_controls_of_a_failed_estimate_are_not_hashed_again_next_run(tmp_path, monkeypatch):
    """The single-stain controls' estimate fails (30 events: too few in the unstained control), so
    the product fails and its job hashes the controls itself. Their digests were recorded as of the
    failed estimate's ``read_from_ns``, 0 (it never read them), so the next run took every control
    as possibly rewritten since and hashed the seven again, though nothing had changed -> the
    digests the job took are recorded as of the job's start, as the stained files' are."""
    import types

    import tilpheno.pipeline.executors as executors
    from tilpheno.simulate.cohort import simulate_product, write_product
    from tilpheno.simulate.controls import simulate_controls

    folder = tmp_path / "in"
    write_product(simulate_product("TIL001", 21, 4000), folder)
    simulate_controls(folder / "controls", 6, n_events=30)
    real = time.time_ns
    # the product's job starts 10 s from now: RACY_SECONDS after every file was written
    monkeypatch.setattr(executors, "time", types.SimpleNamespace(time_ns=lambda: real() + 10**10))
    out = tmp_path / "out"
    assert not process_folder(folder, out, make_reports=False).ok
    monkeypatch.undo()
    assert "compensation from single-stain controls" in pd.read_csv(out / "qc.csv")["message"].iloc[0]
    recorded = json.loads((out / "run.json").read_text())["inputs"]
    assert sum("Compensation Controls_" in i["path"] for i in recorded) == 7

    process_folder(folder, out, make_reports=False, overwrite=True)
    cache = _cache_record(out)
    assert cache["reused"] == ["TIL001"]
    assert (cache["inputs_hashed"], cache["inputs_digest_reused"]) == (0, len(recorded))
