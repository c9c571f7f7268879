"""Product phenotype: end to end on simulated FCS files, QC paths, determinism, doses."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phenotype_support import result_digest
from tilpheno.gates.strategy import default_strategy_paths, load_strategy
from tilpheno.io.fcs_write import write_fcs
from tilpheno.phenotype import analyze_product
from tilpheno.study import default_study
from tilpheno.simulate import instrument as ins
from tilpheno.simulate.cohort import manifest_rows, simulate_product, write_product

SEED = 321  # development seed (the accuracy test uses its own, unseen seeds)
N_EVENTS = 12000


@pytest.fixture(scope="module")
def strategies():
    return {s.tube: s for s in map(load_strategy, default_strategy_paths())}


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    out = tmp_path_factory.mktemp("product")
    prod = simulate_product("TIL900", SEED, N_EVENTS)
    write_product(prod, out)
    rows = pd.DataFrame(manifest_rows(prod))
    rows["file"] = [str(out / f) for f in rows["file"]]
    return prod, rows, out


def run(rows, strategies, **kw):
    return analyze_product("TIL900", rows, strategies, **kw)


@pytest.fixture(scope="module")
def default_run(product, strategies):
    """The product analyzed once with the default options, shared by the tests that only read it (a
    test that counts reads or decodes, or changes an option, runs its own)."""
    return run(product[1], strategies)


def test_result_structure_and_accuracy(product, strategies):
    prod, rows, _ = product
    result = run(rows, strategies, til_dose_cells=5e9)
    ph = result.phenotype
    assert ph["product_id"] == "TIL900"
    for v in default_study().variables:
        assert np.isfinite(ph[v]), v
    for v in ("viability_pct", "cd3_pct_of_live_lymph", "cd4_pct_of_cd3", "cd8_pct_of_cd3", "nk_pct_of_live_lymph",
              "nkt_pct_of_live_lymph"):
        assert abs(ph[v] - prod.truth[v]) < 2.0, v
    for v in ("pd1_pct_of_live_lymph", "cd8pd1_pct_of_cd8", "cd8pd1_pct_of_cd3", "cd4foxp3_pct_of_cd4"):
        assert abs(ph[v] - prod.truth[f"ref_{v}"]) < 1.5, v
    # one TubeResult per gated file (the unstained tube has no strategy)
    assert sorted(Path(t.file).name for t in result.tubes) == sorted(
        f for f in (Path(x).name for x in rows["file"]) if "unstained" not in f)
    assert not [f for f in result.qc if f.severity == "error"]
    assert result.strategy_sha256 == {s.name: s.sha256 for s in strategies.values()}
    # doses: TILs counted as live lymphocytes
    assert ph["cd3_dose_cells"] == pytest.approx(5e9 * ph["cd3_pct_of_live_lymph"] / 100)
    assert ph["cd8_dose_cells"] == pytest.approx(5e9 * ph["cd3_pct_of_live_lymph"] / 100 * ph["cd8_pct_of_cd3"] / 100)
    assert ph["treg_dose_cells"] == pytest.approx(ph["cd4_dose_cells"] * ph["cd4foxp3_pct_of_cd4"] / 100)


def test_tables_thresholds_and_masks(product, default_run):
    prod, rows, out = product
    result = default_run
    stain = next(t for t in result.tubes if t.tube == "surface" and t.role == "stain")
    pops = stain.populations.set_index("population")
    assert pops.loc["CD3+", "parent"] == "live_lymph"
    assert pops.loc["CD3+", "count"] == int(stain.masks["CD3+"].sum())
    assert pops.loc["CD4+", "pct_of_parent"] == pytest.approx(100 * stain.masks["CD4+"].sum() / stain.masks["CD3+"].sum())
    assert pops.loc["live_lymph", "pct_of_live_lymph"] == 100.0 and np.isnan(pops.loc["cells", "pct_of_live_lymph"])
    assert pops.loc["CD3+", "median_CD3"] > 1000  # compensated linear units; CD3 median ~6000 at lymphocyte size
    # every mask lies inside its parent's mask
    for population, parent, _, _ in stain.gates:
        if parent != "root":
            assert not np.any(stain.masks[population] & ~stain.masks[parent]), population
    th = stain.thresholds.set_index("population")
    assert th.loc["PD1+", "source_file"] == str(out / "TIL900_surface_FMO_PD1.fcs")
    assert th.loc["CD8+PD1+", "parent"] == "CD8+" and th.loc["CD8+PD1+", "percentile"] == 99.5
    # positive = strictly above the threshold, on the transformed scale
    pd1 = stain.data["PD1"]
    expected = (pd1 > th.loc["PD1+", "value_transformed"]) & stain.masks["live_lymph"]
    assert np.array_equal(stain.masks["PD1+"], expected)
    # the threshold is the 99.5th percentile of the FMO file's own live lymphocytes
    fmo = next(t for t in result.tubes if t.fmo_marker == "PD1")
    assert th.loc["PD1+", "value_transformed"] == np.percentile(fmo.data["PD1"][fmo.masks["live_lymph"]], 99.5)
    assert fmo.thresholds.equals(stain.thresholds)


def test_fmo_percentile_parameter(product, strategies):
    _, rows, _ = product
    lo = run(rows, strategies, fmo_percentile=98.0).phenotype
    hi = run(rows, strategies, fmo_percentile=99.9).phenotype
    assert lo["pd1_pct_of_live_lymph"] > hi["pd1_pct_of_live_lymph"]


@pytest.mark.parametrize("unstained", [True, False])
def test_missing_fmo_falls_back_with_flags(product, strategies, unstained):
    """Without the CD56 FMO the gate falls back on the product's unstained control (its file recorded), or
    without that on the stained tube's valley (no file)."""
    _, rows, _ = product
    result = run(rows[(rows["fmo_marker"] != "CD56") & (unstained | (rows["role"] != "unstained"))], strategies)
    codes = {(f.code, f.file) for f in result.qc}
    assert ("missing_fmo", "TIL900_surface_stain.fcs") in codes and ("fallback_gate", "TIL900_surface_stain.fcs") in codes
    stain = next(t for t in result.tubes if t.tube == "surface" and t.role == "stain")
    row = stain.thresholds.set_index("population").loc["CD56+"]
    assert row["method"].startswith("fallback_")
    assert row["source_file"].endswith("TIL900_unstained.fcs") if unstained else row["source_file"] == ""
    assert np.isfinite(result.phenotype["nk_pct_of_live_lymph"])


def test_unreadable_and_missing_files_give_flags_and_nans(product, strategies, tmp_path):
    _, rows, _ = product
    bad = rows.copy()
    broken = tmp_path / "TIL900_treg_stain.fcs"
    broken.write_bytes(b"FCS3.1    garbage")
    bad.loc[bad["file"].str.endswith("TIL900_treg_stain.fcs"), "file"] = str(broken)
    result = run(bad, strategies)
    assert ("unreadable_file", "TIL900_treg_stain.fcs") in {(f.code, f.file) for f in result.qc}
    assert "missing_stain" in {f.code for f in result.qc}
    assert np.isnan(result.phenotype["cd4foxp3_pct_of_cd4"])
    assert np.isfinite(result.phenotype["cd3_pct_of_live_lymph"])
    # the FoxP3 FMO has no stained file to read its panel against: said once, not as a panel error
    fmo = {(f.code, f.severity) for f in result.qc if f.file == "TIL900_treg_FMO_FoxP3.fcs"}
    assert fmo == {("not_gated", "info")}


def test_each_stained_file_is_decoded_once(product, strategies, decodes):
    """The stained file that resolves its FMO files' panels was decoded twice (its events read for
    the readability check, discarded, read again when gated): 2 decodes of 12,000 events per stained
    file. Now its TEXT and DATA placement are checked without decoding: every file once."""
    _, rows, _ = product
    decoded = decodes
    result = run(rows, strategies)
    stained = [Path(f).name for f, role in zip(rows["file"], rows["role"]) if role == "stain"]
    assert stained and all(decoded[name] == 1 for name in stained), decoded
    assert np.isfinite(result.phenotype["cd3_pct_of_live_lymph"]) and np.isfinite(result.phenotype["cd4foxp3_pct_of_cd4"])


def test_a_stained_file_cut_inside_its_data_is_unreadable(product, strategies, tmp_path):
    """Without the full decode, a stained file cut short inside DATA is still refused when checked
    (read_fcs's own message, the DATA placed against the file's size) and its tube kind not gated."""
    from tilpheno.io.fcs import FCSReadError, read_fcs

    _, rows, _ = product
    source = next(f for f in rows["file"] if f.endswith("TIL900_treg_stain.fcs"))
    cut = tmp_path / "TIL900_treg_stain.fcs"
    cut.write_bytes(Path(source).read_bytes()[:-1000])
    with pytest.raises(FCSReadError) as refused:
        read_fcs(cut)
    bad = rows.copy()
    bad.loc[bad["file"] == source, "file"] = str(cut)
    result = run(bad, strategies)
    flags = [f for f in result.qc if f.code == "unreadable_file"]
    assert [(f.file, f.message) for f in flags] == [("TIL900_treg_stain.fcs", refused.value.problem)]
    assert np.isnan(result.phenotype["cd4foxp3_pct_of_cd4"])
    assert np.isfinite(result.phenotype["cd3_pct_of_live_lymph"])


def test_spillover_override_and_no_compensation(product, strategies, tmp_path):
    prod, rows, _ = product
    # rewrite the surface files without $SPILLOVER
    plain = rows.copy()
    for t in prod.tubes:
        if t.data.spec.tube == "surface":
            write_fcs(tmp_path / t.file, t.data.events, t.channels, t.keywords, spillover=None)
            plain.loc[plain["file"].str.endswith("/" + t.file), "file"] = str(tmp_path / t.file)
    plain = plain[plain["tube"] == "surface"]
    reference = run(rows[rows["tube"] == "surface"], strategies)
    uncompensated = run(plain, strategies)
    assert "no_compensation" in {f.code for f in uncompensated.qc}
    csv = tmp_path / "spill.csv"
    ins.true_spillover().to_dataframe().to_csv(csv)
    override = run(plain, strategies, spillover_override=csv)
    assert "no_compensation" not in {f.code for f in override.qc}
    for v in ("cd3_pct_of_live_lymph", "pd1_pct_of_live_lymph", "cd8pd1_pct_of_cd8"):
        assert override.phenotype[v] == reference.phenotype[v]


def test_a_flowjo_export_of_compensated_data_is_used_as_it_is(product, strategies, default_run, tmp_path):
    """Every file rewritten as FlowJo 10 exports compensated data: the fluorescence parameters
    renamed FJComp-<detector> and holding the compensated values, the raw ones dropped, the raw
    $SPILLOVER kept (naming detectors the file no longer has). The phenotype must equal the one of
    the raw files compensated by tilpheno (no second compensation, no failure), with an info flag
    instead of a warning."""
    from tilpheno.compensation import compensate
    from tilpheno.io.fcs_write import format_spillover

    prod, rows, _ = product
    spill = ins.true_spillover()
    exported = rows.copy()
    for t in prod.tubes:
        names = [c[0] for c in t.channels]
        values = compensate(t.data.events, names, spill)
        channels = [(f"FJComp-{n}" if n in spill.detectors else n, s, r) for n, s, r in t.channels]
        # the raw matrix as a plain keyword: the writer itself refuses a $SPILLOVER naming absent channels
        write_fcs(tmp_path / t.file, values, channels, {**t.keywords, "$SPILLOVER": format_spillover(spill)})
        exported.loc[exported["file"].str.endswith("/" + t.file), "file"] = str(tmp_path / t.file)
    reference = default_run
    result = run(exported, strategies)
    codes = {(f.code, f.severity) for f in result.qc}
    assert ("precompensated", "info") in codes
    assert not {c for c, s in codes if c in ("no_compensation", "compensation_error", "product_failed")}
    flag = next(f for f in result.qc if f.code == "precompensated")
    assert "FJComp-" in flag.message and "$SPILLOVER not applied again" in flag.message
    for t in result.tubes:
        assert t.compensation.exported and t.compensation.spillover is None, t.file
    for v in default_study().variables:
        # the same values compensated once (equal on this machine; the tolerance lets one event of a
        # 2,000-event parent cross a cut after the float32 rounding of the exported values)
        assert result.phenotype[v] == pytest.approx(reference.phenotype[v], abs=0.05), v
    # an override matrix on such a file is refused, naming what the file holds
    csv = tmp_path / "spill.csv"
    spill.to_dataframe().to_csv(csv)
    refused = run(exported, strategies, spillover_override=csv)
    errors = [f for f in refused.qc if f.code == "compensation_error"]
    assert errors and all("already compensated" in f.message and "FJComp-" in f.message for f in errors)


def test_two_stained_files_of_one_tube_need_review_and_are_named(product, strategies, default_run, tmp_path):
    """A product with a second surface stained file (a re-acquired tube, or another sample's file
    under the same product id): the variables come from the first by name, and the flag names both
    files and makes the product 'needs review' (release not evaluable until a reviewer signs)."""
    import shutil

    from tilpheno.pipeline.release import release_decision
    from tilpheno.qc import NEEDS_REVIEW, needs_review, review_status
    from tilpheno.release import DEFAULT_SPEC

    prod, rows, _ = product
    stain = rows[(rows["tube"] == "surface") & (rows["role"] == "stain")].iloc[0]
    again = tmp_path / "TIL900_surface_stain_z_reacquired.fcs"
    shutil.copy(stain["file"], again)
    doubled = pd.concat([rows, stain.to_frame().T.assign(file=str(again))], ignore_index=True)
    single, result = default_run, run(doubled, strategies)
    flags = [f for f in result.qc if f.code == "duplicate_tube"]
    assert len(flags) == 1 and needs_review(flags[0])
    assert "TIL900_surface_stain.fcs" in flags[0].message and again.name in flags[0].message
    assert "from the first gated by name, TIL900_surface_stain.fcs" in flags[0].message
    assert not [f for f in single.qc if f.code == "duplicate_tube"]
    assert review_status(result.qc) == NEEDS_REVIEW
    assert result.phenotype["cd3_pct_of_live_lymph"] == single.phenotype["cd3_pct_of_live_lymph"]
    assert release_decision(DEFAULT_SPEC, result.phenotype, result.qc, usable=True)[1] == "not evaluable"
    assert release_decision(DEFAULT_SPEC, single.phenotype, single.qc, usable=True)[1] != "not evaluable"


def _copied(rows, folder: Path):
    """``rows`` with their files copied into ``folder``."""
    import shutil

    folder.mkdir()
    for f in rows["file"]:
        shutil.copy(f, folder / Path(f).name)
    return rows.assign(file=[str(folder / Path(f).name) for f in rows["file"]])


def test_two_stained_files_of_one_name_are_told_apart(product, strategies, tmp_path):
    """The same file name in two folders (run1/, run2/): the duplicate_tube flag named each by its
    absolute path, every other flag by its path relative to the product's folder -> one rule
    (io.files.file_labels): run1/TIL900_surface_stain.fcs, run2/TIL900_surface_stain.fcs, in this flag
    as in the files' own flags and the populations table."""
    import shutil

    from tilpheno.gating import analyze

    rows = _copied(product[1], tmp_path / "run1")
    stain = rows[(rows["tube"] == "surface") & (rows["role"] == "stain")].iloc[0]
    (tmp_path / "run2").mkdir()
    shutil.copy(stain["file"], tmp_path / "run2" / "TIL900_surface_stain.fcs")
    doubled = pd.concat([rows, stain.to_frame().T.assign(file=str(tmp_path / "run2" / "TIL900_surface_stain.fcs"))],
                        ignore_index=True)
    result = run(doubled, strategies)
    (flag,) = [f for f in result.qc if f.code == "duplicate_tube"]
    assert ("2 surface stained files (run1/TIL900_surface_stain.fcs, run2/TIL900_surface_stain.fcs); the variables "
            "come from the first gated by name, run1/TIL900_surface_stain.fcs") in flag.message
    names = {t.shown_name for t in result.tubes if t.role == "stain" and t.tube == "surface"}
    assert names == {"run1/TIL900_surface_stain.fcs", "run2/TIL900_surface_stain.fcs"}
    assert {f.file for f in result.qc if f.file} <= {t.shown_name for t in result.tubes} | {"TIL900_unstained.fcs"}
    gated = analyze("TIL900", doubled, strategies)
    assert set(gated.populations["file"]) >= names
    # the product-level flags of the stained tube (low_events here: a study asking for more events than
    # it has; low viability) name the file used as every other flag does, not by its bare name
    from dataclasses import replace

    from tilpheno.study import ExpectedRange, default_study

    study = default_study()
    strict = replace(study, qc=replace(study.qc, min_events=10**9,
                                       expected=(ExpectedRange("viability_pct", "low_viability", low=100.0),)))
    flagged = run(doubled, strategies, study=strict).qc
    product_level = [f for f in flagged if f.code in ("low_events", "low_viability")]
    assert {f.code for f in product_level} == {"low_events", "low_viability"}
    assert {f.file for f in product_level} == {"run1/TIL900_surface_stain.fcs", "TIL900_treg_stain.fcs"}
    assert {f.file for f in product_level if f.code == "low_viability"} == {"run1/TIL900_surface_stain.fcs"}


def test_two_fmo_files_of_one_marker_need_review_and_name_the_one_used(product, strategies, tmp_path):
    """The same FMO file name in two folders (here another product's PD1 FMO, misfiled): its
    thresholds came silently from one of them. Now a duplicate_control flag (review) names both as
    every flag names a file (run1/..., run2/...: io.files.file_labels) and the one used, and that is the one the PD1 gates were placed from: the result equals a
    run with that file as the only PD1 FMO."""
    import shutil

    from tilpheno.qc import NEEDS_REVIEW, needs_review, review_status

    rows = _copied(product[1], tmp_path / "run1")
    write_product(simulate_product("TIL901", SEED + 1, N_EVENTS), tmp_path)
    is_pd1 = (rows["tube"] == "surface") & (rows["role"] == "fmo") & (rows["fmo_marker"] == "PD1")
    fmo = rows[is_pd1].iloc[0]
    (tmp_path / "run2").mkdir()
    misfiled = tmp_path / "run2" / Path(fmo["file"]).name
    shutil.copy(tmp_path / "TIL901_surface_FMO_PD1.fcs", misfiled)
    doubled = pd.concat([rows, fmo.to_frame().T.assign(file=str(misfiled))], ignore_index=True)
    result = run(doubled, strategies)
    (flag,) = [f for f in result.qc if f.code == "duplicate_control"]
    assert needs_review(flag) and review_status(result.qc) == NEEDS_REVIEW
    assert flag.message.startswith("2 surface FMO files for PD1 (run1/TIL900_surface_FMO_PD1.fcs, "
                                   "run2/TIL900_surface_FMO_PD1.fcs); its thresholds come from the last, "
                                   "run2/TIL900_surface_FMO_PD1.fcs:")
    alone = run(rows.assign(file=[str(misfiled) if pd1 else f for f, pd1 in zip(rows["file"], is_pd1)]), strategies)
    single = run(rows, strategies)
    for v in ("pd1_pct_of_live_lymph", "cd8pd1_pct_of_cd8", "cd4foxp3_pct_of_cd4"):
        assert result.phenotype[v] == alone.phenotype[v], v
    assert result.phenotype["cd8pd1_pct_of_cd8"] != single.phenotype["cd8pd1_pct_of_cd8"]   # the file matters
    assert not [f for f in single.qc if f.code == "duplicate_control"]


def test_deterministic_bit_for_bit_across_runs_and_thread_counts(product, strategies, default_run, tmp_path):
    _, rows, _ = product
    first = result_digest(default_run)   # a run of its own, earlier in this process
    assert result_digest(run(rows, strategies)) == first
    rows.to_csv(tmp_path / "rows.csv", index=False)
    script = textwrap.dedent(
        f"""
        import sys, pandas as pd
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from phenotype_support import result_digest
        from tilpheno.gates.strategy import default_strategy_paths, load_strategy
        from tilpheno.phenotype import analyze_product
        rows = pd.read_csv({str(tmp_path / 'rows.csv')!r}, keep_default_na=False)
        s = [load_strategy(p) for p in default_strategy_paths()]
        print(result_digest(analyze_product("TIL900", rows, s)))
        """
    )
    # a fresh process limited to one thread (this process runs with the default thread count)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == first


@pytest.mark.parametrize("n", [1, 2, 3, 4, 101, 1000, 20001, 200000])
def test_population_median_is_numpys_median(n):
    """The population table's median (one in-place selection) is ``np.median`` bit for bit: odd and
    even counts, ties, a NaN (-> NaN), values of both signs (seed 93070)."""
    from tilpheno.phenotype import _median_selecting

    rng = np.random.default_rng(93070 + n)
    for kind in ("normal", "ties", "nan"):
        x = rng.normal(0.0, 1000.0, n)
        if kind == "ties":
            x = np.round(x / 100.0)
        if kind == "nan" and n > 1:
            x[rng.integers(n)] = np.nan
        expected = np.median(x)
        got = _median_selecting(x.copy())
        assert (np.isnan(expected) and np.isnan(got)) or got == expected, (n, kind, got, expected)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 101, 1000, 20001, 200000])
def test_bucketed_population_median_is_numpys_median(n):
    """The population table's median from value buckets (``_bucketed``) is ``np.median`` of the
    population's values bit for bit: odd and even counts, ties, a narrow peak beside a far tail (many
    values in one bucket), a constant column, spans too small or too large for the bucket width,
    populations of every size down to one event (seed 93071)."""
    from tilpheno.phenotype import _bucketed

    rng = np.random.default_rng(93071 + n)
    columns = {
        "normal": rng.normal(0.0, 1000.0, n),
        "ties": np.round(rng.normal(0.0, 10.0, n)) + 0.0,   # + 0.0: no -0.0 beside 0.0 (below)
        "peak and tail": np.where(rng.random(n) < 0.9, rng.normal(1.0, 1e-6, n), rng.normal(1e6, 1.0, n)),
        "constant": np.full(n, 2.5),
        "tiny span": 1.0 + rng.integers(0, 3, n) * 1e-300,
        "huge span": rng.choice([-1.7e308, 0.0, 1.7e308], n),
    }
    for kind, x in columns.items():
        column = _bucketed(x)
        assert column is not None, kind
        for share in (1.0, 0.5, 0.01, 0.0):
            index = np.flatnonzero(rng.random(n) < share)
            if index.size == 0:
                index = np.array([rng.integers(n)])
            expected, got = np.median(x[index]), column.median(index)
            assert got == expected and str(got) == str(expected), (n, kind, share, got, expected)
    with_nan = rng.normal(size=n)
    with_nan[0] = np.nan
    assert _bucketed(with_nan) is None   # a column with a NaN: the selection in a gathered copy says NaN
    both_zeros = np.round(rng.normal(0.0, 10.0, max(n, 2)))
    both_zeros[:2] = (-0.0, 0.0)
    assert _bucketed(both_zeros) is None   # which zero is the median: the gathered copy's selection decides


def test_unstained_control_acquisition_checked_once(product, strategies, monkeypatch):
    """The unstained control is loaded for each stained tube (surface, treg) to look for positives;
    its acquisition QC (its raw events, the same settings) was computed on each load, now once per
    product; every other file once. The unstained check's flags are unchanged (the same result)."""
    import tilpheno.acquisition as acq

    _, rows, _ = product
    before = run(rows, strategies)
    checked: list[int] = []
    real = acq.check_acquisition
    monkeypatch.setattr(acq, "check_acquisition", lambda events, *a, **k: checked.append(len(events)) or real(events, *a, **k))
    after = run(rows, strategies)
    assert strategies["surface"].acquisition == strategies["treg"].acquisition
    assert len(checked) == len(rows)   # one check per file of the product, the unstained control's included
    assert [(f.file, f.code, f.message) for f in after.qc] == [(f.file, f.code, f.message) for f in before.qc]


@pytest.mark.parametrize("budget", [None, 0])
def test_fmo_files_are_read_once_and_give_the_results_of_all_in_memory(product, strategies, default_run, monkeypatch, budget):
    """With bounded memory (``plot_events``) each FMO file was read, compensated and transformed
    twice: for its threshold (pass 1), released for the next file, and again for its own result
    (pass 2). Now it keeps the columns its populations table and remaining gates read (its plot
    events and compensation check taken first), within ``CONTROLS_KEEP_BYTES`` (0: read again, as
    before). Truth: the run that keeps every file in memory (``plot_events=None``)."""
    import tilpheno.io.fcs as fcs
    import tilpheno.phenotype as phenotype

    _, rows, _ = product
    truth = default_run
    if budget is not None:
        monkeypatch.setattr(phenotype, "CONTROLS_KEEP_BYTES", budget)
    reads: list[str] = []
    real = fcs.read_fcs
    monkeypatch.setattr(fcs, "read_fcs", lambda path, *a, **k: reads.append(Path(path).name) or real(path, *a, **k))
    bounded = run(rows, strategies, plot_events=1000)
    fmo = [Path(f).name for f, role in zip(rows["file"], rows["role"]) if role == "fmo"]
    twice = sorted(f for f in fmo if reads.count(f) > 1)
    assert len(fmo) >= 2 and all(f in reads for f in fmo)
    if budget is None:
        assert twice == []
    else:   # no room: released whole and read again
        assert twice
    assert pd.Series(bounded.phenotype).equals(pd.Series(truth.phenotype))   # NaN where NaN
    assert [(f.file, f.code, f.message) for f in bounded.qc] == [(f.file, f.code, f.message) for f in truth.qc]
    assert len(bounded.tubes) == len(truth.tubes)
    for got, want in zip(bounded.tubes, truth.tubes):
        assert got.file == want.file and got.subsample is not None
        pd.testing.assert_frame_equal(got.populations, want.populations)
        pd.testing.assert_frame_equal(got.thresholds, want.thresholds)
        if want.compensation is not None and want.compensation.residual is not None:
            pd.testing.assert_frame_equal(got.compensation.residual, want.compensation.residual)
        else:
            assert got.compensation is None or got.compensation.residual is None
        assert list(got.data) == list(want.data)
        for d, values in want.data.items():
            np.testing.assert_array_equal(got.data[d], values[got.subsample])
        for p, mask in want.masks.items():
            np.testing.assert_array_equal(got.masks[p], mask[got.subsample])


def test_low_events_flags_say_what_the_few_events_affect_and_what_to_check(product, strategies):
    """A study asking for more events than the tubes have: low_events said '12000 events in the treg stained tube
    (< 1000000000)', the limit but not what rests on those events nor what to look at. Now each flag counts the
    variables whose denominator lies within the short population (the whole tube, or its lymphocyte gate), names the
    one on the fewest events with that count (read here from the populations table) and says what to check."""
    from dataclasses import replace

    study = default_study()
    strict = replace(study, qc=replace(study.qc, min_events=10**9, min_lymph_events=10**9))
    result = run(product[1], strategies, study=strict)
    flags = [f for f in result.qc if f.code == "low_events"]
    stained = {t.tube: t for t in result.tubes if t.role == "stain"}
    assert len(flags) == 2 * len(stained)   # the tube and its lymphocyte gate
    for tube, t in stained.items():
        strategy = strategies[tube]
        counts = dict(zip(t.populations.population, t.populations["count"]))
        lymph = next(p.name for p in strategy.populations if p.method == "lymphocytes")
        ancestors = {p.name: p.parent for p in strategy.populations}

        def within(name, ancestor):
            while name in ancestors and name != ancestor:
                name = ancestors[name]
            return name == ancestor

        for population, check in ((None, "check the acquisition"), (lymph, f"check the {lymph} gate on the scatter")):
            variables = [v for v in strategy.variables if population is None or within(v.denominator, population)]
            fewest = min(variables, key=lambda v: counts[v.denominator])
            shown = f"{t.n_events} events in the {tube} stained tube" if population is None else \
                f"{counts[lymph]} events in {lymph}"
            (flag,) = [f for f in flags if f.file == t.shown_name and f.message.startswith(shown)]
            assert (f": its {len(variables)} variables rest on them, the fewest {fewest.name} on "
                    f"{counts[fewest.denominator]} {fewest.denominator} events; the percentages are imprecise: "
                    f"{check}") in flag.message, flag.message
