"""Pipeline helpers: path sanitising, grouping, severities, provenance record."""
import json
from pathlib import Path

import pandas as pd
import pytest

from tilpheno.errors import TableError
from tilpheno.pipeline import group_products, product_slug, report_path, worst_severity
from tilpheno.qc import QCFlag
from tilpheno.provenance import sha256_file, start_record


@pytest.mark.parametrize("pid", ["../../x", "/etc/passwd", "..", ".", "a/b", "a\\b", "", "TIL 01", "é<script>", "\x00x"])
def test_report_paths_stay_inside_out(tmp_path, pid):
    out = tmp_path / "out"
    path = report_path(out, pid)
    assert out.resolve() in path.parents
    assert path.parent.parent == (out / "products").resolve()
    assert path.parent.name not in (".", "..") and "/" not in path.parent.name


def test_slug_keeps_clean_ids_and_separates_colliding_ones():
    assert product_slug("TIL001") == "TIL001"
    assert product_slug("TIL-01.a_b") == "TIL-01.a_b"
    assert product_slug("a/b") != product_slug("a_b")
    assert product_slug("a/b") != product_slug("a\\b")
    assert product_slug("a/b") == product_slug("a/b")


def test_group_products_sorted_and_complete():
    manifest = pd.DataFrame({
        "file": ["b1.fcs", "a2.fcs", "a1.fcs", "c.fcs"],
        "product_id": ["TIL2", "TIL1", "TIL1", "TIL10"],
        "tube": ["surface", "surface", "surface", "treg"],
        "role": ["stain", "fmo", "stain", "stain"],
        "fmo_marker": ["", "PD1", "", ""],
    })
    groups = group_products(manifest)
    assert [pid for pid, _ in groups] == ["TIL1", "TIL10", "TIL2"]
    assert sorted(groups[0][1]["file"]) == ["a1.fcs", "a2.fcs"]
    assert sum(len(rows) for _, rows in groups) == len(manifest)


def test_group_products_requires_columns():
    with pytest.raises(TableError, match="missing column"):
        group_products(pd.DataFrame({"file": ["x.fcs"]}))


def test_worst_severity():
    assert worst_severity([]) == "ok"
    flags = [QCFlag("p", "f", "low_events", "warning", "m"), QCFlag("p", "f", "x", "info", "m")]
    assert worst_severity(flags) == "warning"
    assert worst_severity(flags + [QCFlag("p", "f", "unreadable_file", "error", "m")]) == "error"


def test_provenance_record(tmp_path):
    strategy = tmp_path / "s.yaml"
    strategy.write_bytes(b"strategy: x\n")
    import hashlib

    assert sha256_file(strategy) == hashlib.sha256(b"strategy: x\n").hexdigest()
    rec = start_record(command_line=["tilpheno", "process"], parameters={"fmo_percentile": 99.5, "jobs": 2},
                       strategy_paths=[strategy], release_spec={"name": "default"})
    rec.finish([], 1.23456)
    d = json.loads(rec.to_json())
    assert d["strategies"][0]["sha256"] == hashlib.sha256(b"strategy: x\n").hexdigest()
    assert d["dependencies"]["numpy"] != "not installed"
    assert d["started_at"].endswith("Z") and d["duration_s"] == 1.235
    assert "jobs" not in rec.short()["parameters"] and "fmo_percentile=99.5" in rec.short()["parameters"]


def test_unknown_executor_and_unreachable_scheduler(tmp_path):
    from tilpheno.errors import TilphenoError
    from tilpheno.pipeline import iter_outcomes

    with pytest.raises(TableError, match="executor"):
        list(iter_outcomes([], executor="spark"))
    with pytest.raises(TableError, match="scheduler address"):
        list(iter_outcomes([], executor="dask"))
    dask = pytest.importorskip("dask")
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), pytest.raises(TilphenoError, match="cannot connect"):
        list(iter_outcomes([], executor="dask", scheduler="tcp://127.0.0.1:9"))


def test_a_scheduler_without_the_dask_executor_is_refused(tmp_path):
    """`process --scheduler tcp://HOST:8786` without `--executor dask` ran every product locally, the
    address unused and nothing said (exit 0): a user who forgot the executor believed the cluster ran
    it -> refused in one line before anything runs (exit 2, OUT not made)."""
    from typer.testing import CliRunner

    from tilpheno.cli import app
    from tilpheno.simulate.cohort import simulate_product, write_product

    folder = tmp_path / "in"
    folder.mkdir()
    write_product(simulate_product("P1", 4, 2000), folder)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["process", str(folder), "-o", str(out), "--scheduler", "tcp://127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    assert result.output == ("error: --scheduler: 'tcp://127.0.0.1:9' is a Dask scheduler's address, but the executor "
                             "is local: give executor dask too, or no scheduler\n")
    assert not out.exists()


def test_report_failure_keeps_the_product(small_cohort, monkeypatch):
    """A plotting error becomes a ``report_failed`` flag and a plain report; the tables survive."""
    from tilpheno.gates.strategy import default_strategy_paths, load_strategy
    from tilpheno.pipeline import ProcessOptions, ProductJob, load_manifest, process_product, strategy_sources
    from tilpheno.report import plots

    def broken(*args, **kwargs):
        raise ValueError("plotting exploded")

    monkeypatch.setattr(plots, "density_plot", broken)
    pid, rows = group_products(load_manifest(small_cohort.out_dir, small_cohort.manifest))[0]
    sources = strategy_sources([load_strategy(p) for p in default_strategy_paths()])
    outcome = process_product(ProductJob(pid, rows, sources, ProcessOptions()))
    assert outcome.ok and outcome.phenotype["qc_status"] == "error"
    assert [f.code for f in outcome.qc if f.severity == "error"] == ["report_failed"]
    assert "plotting exploded" in outcome.report_html and "<svg" not in outcome.report_html
    assert outcome.phenotype["viability_pct"] > 0


class _KillsWorker:
    """Unpickling this object ends the process: a stand-in for a worker killed mid-job (OOM, signal)."""

    def __reduce__(self):
        import os

        return (os._exit, (3,))


def test_dead_worker_fails_its_product_not_the_batch(small_cohort):
    from tilpheno.gates.strategy import default_strategy_paths, load_strategy
    from tilpheno.pipeline import ProcessOptions, ProductJob, iter_outcomes, load_manifest, strategy_sources

    (pid, rows), = group_products(load_manifest(small_cohort.out_dir, small_cohort.manifest))[:1]
    sources = strategy_sources([load_strategy(p) for p in default_strategy_paths()])
    options = ProcessOptions(make_reports=False)
    poisoned = rows.assign(poison=[_KillsWorker()] + [None] * (len(rows) - 1))
    # A kills every worker that unpickles it; B and C are sound but share A's pool, which breaks
    jobs = [ProductJob("A", poisoned, sources, options), ProductJob("B", rows, sources, options),
            ProductJob("C", rows, sources, options)]
    outcomes = {o.product_id: o for o in iter_outcomes(jobs, n_jobs=2)}
    assert set(outcomes) == {"A", "B", "C"}
    a = outcomes["A"]
    assert not a.ok and a.error.startswith("worker died while processing this product (exited with status 3)")
    assert [f.code for f in a.qc] == ["product_failed"] and a.phenotype["status"] == "failed"
    assert {d.path for d in a.files} == set(rows["file"])
    for pid in ("B", "C"):   # each product has a process of its own: B and C run on
        assert outcomes[pid].ok and outcomes[pid].phenotype["status"] == "done", outcomes[pid].error
    # a worker killed (out of memory, say) is the machine's failure, not the product's: never
    # cached, so the next run processes A again instead of re-using "worker died" for good
    from tilpheno.cache import job_key

    assert job_key(jobs[0], a) is None
    assert job_key(jobs[1], outcomes["B"]) is not None


FREEZE_PROBE = """
import gc, json, weakref
import pandas as pd
import tilpheno.pipeline.product as product
import tilpheno.phenotype, tilpheno.report.product   # what a product imports
from tilpheno.pipeline.jobs import ProcessOptions, ProductJob
job = ProductJob("P1", pd.DataFrame({"file": ["/nonexistent/P1_stain.fcs"], "product_id": ["P1"], "tube": ["surface"],
                                     "role": ["stain"], "fmo_marker": [""]}), (), ProcessOptions(make_reports=False))
walked = []   # the objects a full collection walks, when each product starts
analyze = product._process_product
def spy(job):
    walked.append(len(gc.get_objects()))
    return analyze(job)
product._process_product = spy
walked_before = len(gc.get_objects())
first = product.process_product(job)
walked_after, frozen = len(gc.get_objects()), gc.get_freeze_count()
class Node:
    pass
a, b = Node(), Node()
a.other, b.other = b, a                  # cyclic garbage of a later product
gone = weakref.ref(a)
del a, b
product.process_product(job)
print(json.dumps({"walked_before": walked_before, "walked_at_start": walked[0], "walked_after": walked_after,
                  "frozen": frozen, "frozen_later": gc.get_freeze_count(), "cycle_freed": gone() is None,
                  "failed": not first.ok}))
"""


def test_collections_after_the_first_product_skip_the_libraries():
    """The collection after each product walked every object of the libraries again (0.065 s per
    200,000-event product of the benchmark folder), and so did the first product's automatic ones;
    they are frozen before the first product and after its collection, and later cyclic garbage is
    still collected. In a subprocess: freezing is for the whole process."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", FREEZE_PROBE], env={"PYTHONPATH": str(root), "PATH": ""},
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["failed"] and r["walked_before"] > 50_000, r
    assert r["walked_at_start"] < r["walked_before"] / 20 and r["walked_after"] < r["walked_before"] / 20, r
    assert r["frozen"] > r["walked_before"] / 2 and r["frozen_later"] == r["frozen"], r
    assert r["cycle_freed"], r


def test_a_stained_files_text_is_read_once_before_its_events(small_cohort, monkeypatch):
    """The pipeline's TEXT read of a stained file also places its DATA (``data_check``), which is the
    readability check ``analyze_product`` makes: its HEADER and TEXT are read once for both, then once
    with its events (was: three times). The outcome equals the one of ``analyze_product`` reading
    the file itself for the check."""
    from tilpheno.gates.strategy import default_strategy_paths, load_strategy
    from tilpheno.io import fcs
    from tilpheno.pipeline import ProcessOptions, ProductJob, load_manifest, process_product, strategy_sources
    from tilpheno.pipeline import product

    pid, rows = group_products(load_manifest(small_cohort.out_dir, small_cohort.manifest))[0]
    sources = strategy_sources([load_strategy(p) for p in default_strategy_paths()])
    job = ProductJob(pid, rows, sources, ProcessOptions(make_reports=False))
    reads: dict[str, int] = {}
    real = fcs._header_and_text

    def counted(read_at, base, file_size, path, problems):
        reads[str(path)] = reads.get(str(path), 0) + 1
        return real(read_at, base, file_size, path, problems)

    monkeypatch.setattr(fcs, "_header_and_text", counted)
    outcome = process_product(job)
    stained = [str(f) for f, role in zip(rows["file"], rows["role"]) if role == "stain"]
    assert len(stained) == 2 and outcome.ok
    assert {f: reads[f] for f in stained} == {f: 2 for f in stained}

    read_metadata = product._read_metadata
    monkeypatch.setattr(product, "_read_metadata", lambda *a: (*read_metadata(*a)[:4], {}))
    again = process_product(job)
    assert {f: reads[f] for f in stained} == {f: 5 for f in stained}   # the check read them itself
    assert json.dumps(again.phenotype, default=str) == json.dumps(outcome.phenotype, default=str)
    assert again.qc == outcome.qc and again.files == outcome.files


def test_the_background_imports_compile_the_index_templates():
    """Issue 18, ``--jobs 2`` and Dask: the dispatching process compiled the index page's templates
    (Jinja2, 13-18 ms of CPU) after the last product, in the run's serial tail; the thread that
    imports the tail's modules while the products run (``outputs.import_in_background``) compiles
    them too: rendering the index afterwards compiles none."""
    from tilpheno.pipeline.outputs import import_in_background
    from tilpheno.report.html import INDEX_TEMPLATES, environment

    environment.cache_clear()   # a fresh environment: nothing compiled before the thread runs
    import_in_background().join()
    env, compiled = environment(), []
    compile_now = env.compile
    env.compile = lambda *a, **k: compiled.append(a) or compile_now(*a, **k)
    try:
        for name in INDEX_TEMPLATES:
            env.get_template(name)
    finally:
        del env.compile
    assert compiled == []
