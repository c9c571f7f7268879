"""The open vocabulary: another lab's panel, tubes and variables run through `process` with no code change.

tests/data/newlab/ holds a study nobody wrote code for (CD45, CD3, CD4, CD8, CD39, CD103, LAG3 and
DAPI viability; tubes tcell / exhaustion / residency; one FMO per marker), its strategies, release
spec and panel file, and raw FCS files simulated with per-event labels by make_newlab.py
(truth.csv = the label truth). The phenotype tilpheno computes is compared with that truth.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tilpheno.cli import app
from tilpheno.errors import StudyError
from tilpheno.study import bundled_studies, default_study, load_study

from undetermined_support import blank_variables

ROOT = Path(__file__).resolve().parents[1]
NEWLAB = ROOT / "tests" / "data" / "newlab"
TOLERANCE_PCT = 2.5   # percentage points between the gated phenotype and the label truth (3000 events/tube)


def test_bundled_study_is_the_til_study():
    study = default_study()
    assert bundled_studies() == ["til"] and study.name == "til"
    assert list(study.tubes) == ["surface", "treg"]
    assert all(p.is_file() and p.is_relative_to(ROOT / "tilpheno" / "studies") for p in study.strategy_paths)
    assert study.variables[0] == "viability_pct" and "cd4foxp3_pct_of_cd4" in study.variables
    assert study.release is not None and study.release.criteria[0].column == "viability_pct"
    assert study.tube_kind_of("Specimen_001_Treg stain") == "treg"
    assert study.tube_kind_of("tube 3", ["CD3", "CD4", "FoxP3"]) == "treg"
    assert study.tube_kind_of("tube 1", ["CD3", "PD1"]) == "surface"


def test_study_by_name_folder_or_file():
    for ref in ("til", ROOT / "tilpheno" / "studies" / "til", ROOT / "tilpheno" / "studies" / "til" / "study.yaml"):
        assert load_study(ref).sha256 == default_study().sha256
    lab = load_study(NEWLAB / "study.yaml")
    assert list(lab.tubes) == ["tcell", "exhaustion", "residency"]
    assert lab.vocabulary.same("LAG-3", "CD223") and lab.vocabulary.same("lag3", "LAG3")


@pytest.mark.parametrize(
    "edit, message",
    [
        (("tubes:", "tubez:"), "unknown key"),
        (("strategy: tcell.yaml", "strategy: nope.yaml"), "tubes.tcell.strategy: .*nope.yaml not found"),
        (("{base: t_dose_cells,", "{base: x_dose,"), "doses.cd8_dose_cells.base: 'x_dose'"),
        (("min: 60, flag", "min: sixty, flag"), "qc.expected.viability_pct.min: 'sixty' is not a finite number"),
        (("min_events: 2000", "min_events: [1]"), "qc.min_events"),
        (("release: release.yaml", "release: release.yaml\nproduct_label: [x]"), "product_label: must be a non-empty text"),
        (("release: release.yaml", "release: release.yaml\ncodebook: {cd3_pct_of_cd45: {lable: T cells}}"),
         r"codebook.cd3_pct_of_cd45: unknown field\(s\) \['lable'\]"),
        (("release: release.yaml", "release: release.yaml\ncodebook: {cd3_pct_of_cd45: {label: ''}}"),
         "codebook.cd3_pct_of_cd45.label: must be a non-empty text"),
        (("release: release.yaml", "release: release.yaml\nrelease: other.yaml"), "duplicate key 'release'"),
        (("names: [tcell, lineage]}", "names: [tcell, lineage], optional: sometimes}"),
         "tubes.tcell.optional: 'sometimes' is not true or false"),
    ],
)
def test_study_errors_name_file_and_key(tmp_path, edit, message):
    """Each mistake is named by file, line (the edited one) and key; a repeated key is refused, not
    silently the last one."""
    for f in NEWLAB.glob("*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    text = (tmp_path / "study.yaml").read_text()
    assert edit[0] in text
    (tmp_path / "study.yaml").write_text(text.replace(edit[0], edit[1]))
    with pytest.raises(StudyError, match=message) as info:
        load_study(tmp_path / "study.yaml")
    line = text.split(edit[0])[0].count("\n") + 1 + edit[1].count("\n")   # the edit's last line
    assert str(info.value).startswith(f"{tmp_path / 'study.yaml'}:{line}: "), (line, str(info.value))


@pytest.mark.parametrize(
    "file, edit, message",
    [
        ("study.yaml", ("  - cd103_pct_of_cd8", "  - cd103_pct_of_cd88"),
         r"study.yaml:\d+: variables: cd103_pct_of_cd88 \(did you mean cd103_pct_of_cd8\?\) is defined by none"),
        ("study.yaml", ("variable: cd103_pct_of_cd8}", "variable: cd103_pct_cd8}"),
         r"study.yaml:\d+: doses.cd8cd103_dose_cells.variable: cd103_pct_cd8 \(did you mean"),
        ("study.yaml", ("    viability_pct: {min: 60", "    viabilty_pct: {min: 60"),
         r"study.yaml:\d+: qc.expected: viabilty_pct \(did you mean viability_pct\?\)"),
        ("release.yaml", ("column: cd3_pct_of_cd45", "column: cd3_pct_of_cd54"),
         r"release.yaml:\d+: criteria\[1\].column: criterion 'T cells': column cd3_pct_of_cd54 \(did you mean cd3_pct_of_cd45\?\) is no variable"),
    ],
)
def test_study_names_no_strategy_defines_are_refused(tmp_path, file, edit, message):
    """A study variable, dose variable, expected range or release criterion naming a variable none
    of the study's strategies defines is refused before any product runs (it was NaN for every
    product: a release 'not evaluable' everywhere, an expected range never checked)."""
    for f in [*NEWLAB.glob("*.yaml"), NEWLAB / "panel.csv"]:
        shutil.copy(f, tmp_path / f.name)
    text = (tmp_path / file).read_text()
    assert edit[0] in text
    (tmp_path / file).write_text(text.replace(edit[0], edit[1]))
    result = CliRunner().invoke(app, ["process", str(NEWLAB / "fcs"), "--study", str(tmp_path / "study.yaml"),
                                      "--panel", str(tmp_path / "panel.csv"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output), result.output
    line = text.split(edit[0])[0].count("\n") + 1   # the edited line, named in the message
    assert f"{file}:{line}: " in result.output, (line, result.output)
    assert not (tmp_path / "out").exists()
    # scan, which reads the same study, refuses it too, with the same line (it listed the files as if all was well)
    scanned = CliRunner().invoke(app, ["scan", str(NEWLAB / "fcs"), "--study", str(tmp_path / "study.yaml"),
                                       "--panel", str(tmp_path / "panel.csv"), "-o", str(tmp_path / "manifest.csv")])
    assert scanned.exit_code == 2, scanned.output
    assert re.search(message, scanned.output) and f"{file}:{line}: " in scanned.output, scanned.output
    assert not (tmp_path / "manifest.csv").exists()


def test_unknown_study_lists_the_bundled_ones():
    with pytest.raises(StudyError, match="bundled studies: til"):
        load_study("no-such-study")


@pytest.fixture(scope="module")
def newlab_run(tmp_path_factory):
    """`tilpheno process` of the new lab's files with its study, panel and outcomes, run once for the
    tests that only read its outputs: (the CLI's result, the output folder)."""
    out = tmp_path_factory.mktemp("newlab") / "out"
    result = CliRunner().invoke(app, [
        "process", str(NEWLAB / "fcs"), "--study", str(NEWLAB / "study.yaml"), "--panel", str(NEWLAB / "panel.csv"),
        "-o", str(out), "--outcomes", str(NEWLAB / "outcomes.csv"),
    ])
    return result, out


def test_new_lab_panel_runs_through_process(newlab_run):
    result, out = newlab_run
    assert result.exit_code == 0, result.output
    phenotypes = pd.read_csv(out / "phenotypes.csv")
    truth = pd.read_csv(NEWLAB / "truth.csv")
    row = phenotypes.iloc[0]
    assert row["status"] == "done" and row["release_status"] == "pass"
    for column in truth.columns[1:]:
        assert abs(row[column] - truth[column].iloc[0]) < TOLERANCE_PCT, column
    # the study's doses from the outcomes table's infused cell number
    dose = pd.read_csv(NEWLAB / "outcomes.csv")["til_dose_cells"].iloc[0]
    assert row["t_dose_cells"] == pytest.approx(dose * row["cd3_pct_of_cd45"] / 100, rel=1e-12)
    assert row["cd8cd103_dose_cells"] == pytest.approx(row["cd8_dose_cells"] * row["cd103_pct_of_cd8"] / 100, rel=1e-12)
    # the TIL study's vocabulary is nowhere: no TIL variables, no TIL tube kinds
    assert "cd4foxp3_pct_of_cd4" not in phenotypes.columns
    populations = pd.read_csv(out / "populations.csv")
    assert set(populations["tube"]) == {"tcell", "exhaustion", "residency"}
    assert set(populations.loc[populations["role"] == "fmo", "fmo_marker"]) == {"CD45", "CD3", "CD4", "CD8", "CD39", "LAG3", "CD103"}
    # every FMO-gated marker's threshold came from its FMO file (no fallback), no gating problem; the
    # only flags are informational: "acquisition QC skipped" of these short (3000-event) files, and
    # each control's line that its detector voltages were not compared (no $PnV in these files)
    qc = pd.read_csv(out / "qc.csv")
    assert set(qc["code"]) <= {"acquisition_qc_skipped", "control_settings_differ"} and set(qc["severity"]) <= {"info"}
    assert all("($PnV) not compared" in m for m in qc.loc[qc["code"] == "control_settings_differ", "message"])
    index = (out / "index.html").read_text()
    assert "cd103_pct_of_cd8" in index and "cd4foxp3" not in index
    run = (out / "run.json").read_text()
    assert "newlab" in run and "tcell.yaml" in run


def test_without_the_panel_file_the_unlabelled_detector_is_reported(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["process", str(NEWLAB / "fcs"), "--study", str(NEWLAB / "study.yaml"), "-o", str(out)])
    assert result.exit_code == 1, result.output   # a tube kind without a usable stained file fails the product
    qc = pd.read_csv(out / "qc.csv")
    errors = qc[qc["code"] == "panel_error"]
    assert set(errors["file"]) == {"LAB7_residency_stain.fcs", "LAB7_residency_FMO_CD103.fcs"}
    assert errors["message"].str.contains("CD103").all() and errors["message"].str.contains("FITC-A").all()
    row = pd.read_csv(out / "phenotypes.csv").iloc[0]
    assert row["status"] == "failed" and "CD103 not found" in row["error"] and pd.isna(row["cd103_pct_of_cd8"])


def test_no_code_names_the_new_labs_vocabulary():
    """Adding this lab touched no code: none of its markers, dyes or tube kinds appear in tilpheno's Python."""
    words = re.compile(r"\b(CD39|CD103|LAG-?3|DAPI|CD45|tcell|exhaustion|residency)\b")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "tilpheno").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if words.search(line)]
    assert not hits, hits


def test_review_biomarkers_and_plots_use_the_runs_study(tmp_path):
    """After a new lab's run nothing falls back to the TIL study: the review re-gates with the study
    and panel recorded in run.json (reproducing phenotypes.csv; its doses are the study's), the
    biomarker defaults are the study's, plots use the generic palette (the study names no colours),
    and a study edited after the run is refused."""
    from tilpheno.biomarkers.cohort import build_cohort
    from tilpheno.cli import _biomarker_study
    from tilpheno.io.outcomes import read_outcomes
    from tilpheno.report import plots
    from tilpheno.review.db import ReviewError
    from tilpheno.review.regate import ReviewSource, recompute

    lab = tmp_path / "lab"
    shutil.copytree(NEWLAB, lab)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["process", str(lab / "fcs"), "--study", str(lab / "study.yaml"), "--panel",
                                      str(lab / "panel.csv"), "-o", str(out), "--outcomes", str(lab / "outcomes.csv")])
    assert result.exit_code == 0, result.output
    row = pd.read_csv(out / "phenotypes.csv").iloc[0]
    source = ReviewSource(out)
    assert source.study.name == "newlab" and source.panel is not None
    auto = source.automatic("LAB7")   # refused unless re-gating reproduces every variable of phenotypes.csv
    assert set(auto["tubes"]) == {"tcell", "exhaustion", "residency"}
    again = recompute(source, "LAB7", auto)
    for variable in source.study.variables:
        assert again.phenotype[variable] == pytest.approx(row[variable], abs=1e-6), variable
    assert again.phenotype["t_dose_cells"] == pytest.approx(row["t_dose_cells"], rel=1e-9)
    assert not any(k.startswith(("cd3_dose", "cd4foxp3")) for k in again.phenotype)

    study = _biomarker_study(None, out / "phenotypes.csv")   # the study of the run that wrote phenotypes.csv
    assert study.name == "newlab" and study.biomarkers == ("til_dose_cells", *study.variables)
    cohort = build_cohort(pd.read_csv(out / "phenotypes.csv"), read_outcomes(lab / "outcomes.csv"), study=study)
    assert cohort.markers == list(study.biomarkers)
    assert default_study().biomarkers[1] == "cd3_pct_of_live_lymph" and "viability_pct" not in default_study().biomarkers

    assert study.colours == {} and plots.population_colour("CD39+", study.colours) in plots._PALETTE

    (lab / "study.yaml").write_text((lab / "study.yaml").read_text() + "\n# edited after the run\n")
    with pytest.raises(ReviewError, match="changed since the run"):
        ReviewSource(out)


def test_a_run_json_beside_the_phenotypes_that_gives_no_study_is_said(tmp_path, capsys):
    """biomarkers without --study takes the study of the run.json beside PHENOTYPES; one that could not
    be read (not JSON) or is no run's record fell back on the bundled study without a word, so a lab
    study's run analysed the TIL study's default markers silently. Now one line on stderr names the file
    and why; without a run.json nothing is said."""
    from tilpheno.cli import _biomarker_study

    phenotypes = tmp_path / "phenotypes.csv"
    phenotypes.write_text("product_id\nTIL001\n")
    assert _biomarker_study(None, phenotypes).name == default_study().name
    assert capsys.readouterr().err == ""
    for content, why in (('{"parameters": ', "not read (JSONDecodeError: "), ('["a list"]', "not the record of a process run")):
        (tmp_path / "run.json").write_text(content)
        assert _biomarker_study(None, phenotypes).name == default_study().name
        err = capsys.readouterr().err
        assert err.startswith(f"{tmp_path / 'run.json'}: {why}") and err.count("\n") == 1, err
        assert "the biomarker defaults are the bundled study's (til): --study names the study of the run" in err, err


@pytest.mark.slow
def test_wheel_install_processes_sample_fcs(tmp_path):
    """`pip install .` (not editable) into a fresh venv, then `tilpheno process sample_fcs -o X` from
    elsewhere: the strategies, study and templates are package data. Dependencies come from the test
    environment (a .pth file) so the test needs no network; tilpheno itself only from the wheel. One
    product of sample_fcs (its 9 files, through a manifest of its rows) gates every tube, draws its report
    and the index from the installed templates: the other five would only repeat that."""
    import site
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
    Path(target, "test_dependencies.pth").write_text("\n".join(deps) + "\n")
    build = tmp_path / "src"
    shutil.copytree(ROOT, build, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "__pycache__",
                                                               "demo_out", "sample_fcs", "tests"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, str(build)],
                   check=True)
    shutil.rmtree(build)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run([str(python), "-c", "import tilpheno.study as s; print(s.default_study().strategy_paths[0])"],
                           cwd=work, env=env, check=True, capture_output=True, text=True).stdout
    assert where.startswith(target), where
    manifest = pd.read_csv(ROOT / "sample_fcs" / "manifest.csv")
    one = manifest[manifest["product_id"] == manifest["product_id"].iloc[0]]
    one.to_csv(work / "manifest.csv", index=False)
    done = subprocess.run([str(python), "-m", "tilpheno.cli", "process", str(ROOT / "sample_fcs"), "-o", str(work / "X"),
                           "--manifest", str(work / "manifest.csv")],
                          cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    phenotypes = pd.read_csv(work / "X" / "phenotypes.csv")
    assert list(phenotypes["product_id"]) == [one["product_id"].iloc[0]] and phenotypes["status"].eq("done").all()
    assert (work / "X" / "index.html").is_file()
    assert (work / "X" / "products" / one["product_id"].iloc[0] / "report.html").is_file()


def test_another_labs_outputs_carry_its_words_not_the_til_studys(newlab_run):
    """The index, the reports and codebook.csv of the new lab's run name its products and
    variables in its own words: no TIL title, no TIL conventions, no TIL definition of a variable
    the lab defines in its own strategy (viability_pct, from DAPI here)."""
    result, out = newlab_run
    assert result.exit_code == 0, result.output
    pages = {"index.html": (out / "index.html").read_text(),
             "report.html": next((out / "products").glob("*/report.html")).read_text()}
    # the pages' words, not the base64 of their embedded images (where "TIL" can be a run of characters)
    pages = {name: re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "data:", page) for name, page in pages.items()}
    for name, page in pages.items():
        for til_word in ("TIL", "7AAD", "FoxP3", "PD1"):
            assert til_word not in page, (name, til_word)
    assert "<h1>Products: cohort index</h1>" in pages["index.html"]
    assert "% of live lymph" not in pages["report.html"]   # no lymphocyte gate here: the column would be empty
    assert re.search(r"<h1>Product \S+</h1>", pages["report.html"])
    book = pd.read_csv(out / "codebook.csv", keep_default_na=False).set_index("column")
    assert "7AAD" not in book.at["viability_pct", "meaning"] and "DAPI" in book.at["viability_pct", "method"]
    assert "TIL" not in " ".join(book.loc[book.index.str.endswith("_dose_cells"), "method"])


def test_the_til_study_keeps_its_words():
    """The bundled study names its products and conventions, and its curated column text."""
    study = default_study()
    assert study.product_label == "TIL infusion product" and "7AAD" in study.conventions
    assert study.codebook["viability_pct"]["unit"] == "% of singlet cells"
    assert study.codebook["til_dose_cells"]["label"] == "TIL dose"


REALDATA = ROOT / "tests" / "data" / "realdata_flowatlas"


def _two_panel_draft(tmp_path):
    """FlowAtlas 390C Liver (the T-cell panel) and 412C mLN (a T+B panel, CD19, named by the data
    set's panel file): two tube kinds, each product with one of them. Returns (folder, study, panel,
    {kind: the product that has it})."""
    folder = tmp_path / "fcs"
    folder.mkdir()
    for name in ("390C_Liver_026.fcs", "412C_mLN_026.fcs"):
        shutil.copy(REALDATA / "fcs" / name, folder / name)
    panel = tmp_path / "panel.csv"
    shutil.copy(REALDATA / "panel.csv", panel)
    study = tmp_path / "study"
    CliRunner().invoke(app, ["new-study", str(folder), "-o", str(study), "--panel", str(panel)])
    manifest = pd.read_csv(study / "manifest.csv", dtype=str, keep_default_na=False)
    return folder, study, panel, dict(zip(manifest["tube"], manifest["product_id"]))


def _process(folder, study, panel, out, *extra):
    return CliRunner().invoke(app, ["process", str(folder), "--study", str(study / "study.yaml"), "--manifest",
                                    str(study / "manifest.csv"), "--panel", str(panel), "-o", str(out), *extra])


def test_a_product_without_an_optional_tube_kind_is_processed(tmp_path):
    """A study whose products are stained with one of two panels (FlowAtlas: 390C's T-cell panel,
    412C's T+B panel): process failed every product for lacking the other kind's stained file, and
    nothing let the study say a kind is optional -> `optional: true` on a kind (study.yaml): a
    product with no file of it is done, that kind's variables and counts blank, the kind named in
    its row (absent_tubes) and in an info flag; its own kind's numbers are those of a run of its
    files alone under a study of that kind only, and its stained file's events its $TOT (the data
    set's manifest). Without `optional` the product lacking the kind still fails as before."""
    import yaml

    folder, study, panel, owner = _two_panel_draft(tmp_path)
    assert len(owner) == 2
    doc = yaml.safe_load((study / "study.yaml").read_text())
    for entry in doc["tubes"].values():
        entry.pop("optional", None)
    required = dict(doc, tubes={k: dict(v) for k, v in doc["tubes"].items()})
    (study / "study.yaml").write_text(yaml.safe_dump(required, sort_keys=False))
    result = _process(folder, study, panel, tmp_path / "required", "--reports", "none")
    assert result.exit_code == 1, result.output
    row = pd.read_csv(tmp_path / "required" / "phenotypes.csv", dtype=str, keep_default_na=False).set_index("product_id")
    for kind, product in owner.items():
        other = next(k for k in owner if k != kind)
        assert row.loc[product, "status"] == "failed", product
        assert f"no usable {other} stained file (no {other} stained file in the manifest)" in row.loc[product, "error"]
    assert "absent_tubes" not in row.columns

    for entry in doc["tubes"].values():
        entry["optional"] = True
    (study / "study.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    result = _process(folder, study, panel, tmp_path / "out")
    assert result.exit_code == 0, result.output
    got = pd.read_csv(tmp_path / "out" / "phenotypes.csv").set_index("product_id")
    qc = pd.read_csv(tmp_path / "out" / "qc.csv", dtype=str, keep_default_na=False)
    events = pd.read_csv(REALDATA / "fcs_manifest.csv").set_index("file")["$TOT"]
    strategies = {kind: yaml.safe_load((study / f"{kind}.yaml").read_text()) for kind in owner}
    files = {"390C": "390C_Liver_026.fcs", "Specimen_001": "412C_mLN_026.fcs"}
    for kind, product in owner.items():
        other = next(k for k in owner if k != kind)
        own, theirs = list(strategies[kind]["variables"]), list(strategies[other]["variables"])
        assert got.loc[product, "status"] == "done" and got.loc[product, "absent_tubes"] == other
        # a variable resting on a gate undetermined without a control (the drafted CD45+: one population, no FMO
        # or unstained control) is blank, its qc.csv `undetermined` flag naming it; the others have values
        blank = blank_variables(qc, product)
        counts = {c for c in got.columns if c.startswith("n_") and c.endswith(f"_{kind}")}
        assert blank <= set(own) | counts and got.loc[product, sorted(blank)].isna().all(), (product, blank)
        assert got.loc[product, [v for v in own if v not in blank]].notna().all() and got.loc[product, theirs].isna().all()
        assert got.loc[product, f"n_events_{kind}"] == events[f"fcs/{files[product]}"]
        assert pd.isna(got.loc[product, f"n_events_{other}"])
        [flag] = qc.loc[(qc["product_id"] == product) & (qc["code"] == "absent_tube"), "message"]
        assert flag.startswith(f"no {other} file: tube kind {other} is optional") and theirs[0] in flag
        # the product's own numbers: its file alone, under a study of its kind alone
        alone = tmp_path / f"alone_{kind}"
        alone.mkdir()
        shutil.copy(folder / files[product], alone / files[product])
        single = dict(doc, tubes={kind: doc["tubes"][kind]}, variables=own)
        single_study = tmp_path / f"study_{kind}"
        shutil.copytree(study, single_study)
        (single_study / "study.yaml").write_text(yaml.safe_dump(single, sort_keys=False))
        (single_study / "release.yaml").write_text(
            f"name: alone\ncriteria:\n  - {{column: n_events_{kind}, op: '>=', limit: 1, unit: events}}\n")
        manifest = pd.read_csv(study / "manifest.csv", dtype=str, keep_default_na=False)
        manifest[manifest["tube"] == kind].to_csv(single_study / "manifest.csv", index=False)
        assert _process(alone, single_study, panel, tmp_path / f"out_{kind}", "--reports", "none").exit_code == 0
        reference = pd.read_csv(tmp_path / f"out_{kind}" / "phenotypes.csv").set_index("product_id")
        pd.testing.assert_series_equal(got.loc[product, own].astype(float), reference.loc[product, own].astype(float))
    book = pd.read_csv(tmp_path / "out" / "codebook.csv", dtype=str, keep_default_na=False).set_index("column")
    kind = next(iter(owner))
    column = list(strategies[kind]["variables"])[0]
    assert book.loc[column, "meaning"].endswith(f"blank for a product with no {kind} tube (optional in the study)")
    assert book.loc["absent_tubes", "meaning"] != "not documented"


def test_an_fmo_without_its_stained_tube_of_an_optional_kind_says_what_to_do(tmp_path):
    """FlowAtlas two-panel draft (both kinds optional); product 390C (liver) also has an FMO of the
    other kind (a copy of 412C's mLN file), no stained file of it: process failed 390C with 'no
    usable mln stained file (no mln stained file in the manifest)', which names neither the FMO nor
    that the kind is optional -> the message names the file and the three ways out (its stained
    file, the FMO's specimen, or no file of the optional kind). Done as it says (the row deleted),
    390C is done, its mln variables blank."""
    folder, study, panel, owner = _two_panel_draft(tmp_path)
    other = next(k for k, p in owner.items() if p != "390C")   # the kind 390C has no stained file of
    shutil.copy(folder / "412C_mLN_026.fcs", folder / f"390C_{other}_FMO_CD19.fcs")
    manifest = pd.read_csv(study / "manifest.csv", dtype=str, keep_default_na=False)
    row = {"file": f"390C_{other}_FMO_CD19.fcs", "product_id": "390C", "tube": other, "role": "fmo", "fmo_marker": "CD19"}
    pd.concat([manifest, pd.DataFrame([row])]).to_csv(study / "manifest.csv", index=False)
    assert _process(folder, study, panel, tmp_path / "out", "--reports", "none").exit_code == 1
    got = pd.read_csv(tmp_path / "out" / "phenotypes.csv", dtype=str, keep_default_na=False).set_index("product_id")
    error = got.loc["390C", "error"]
    assert error == (f"no usable {other} stained file (no {other} stained file in the manifest, only "
                     f"390C_{other}_FMO_CD19.fcs (fmo): add the product's {other} stained file to the folder and "
                     f"manifest, or give its manifest row the product_id of the specimen it was acquired with; tube "
                     f"kind {other} is optional: with no {other} file at all (its manifest row deleted) the product is "
                     f"done, its {other} variables blank): {other} variables unknowable"), error
    manifest.to_csv(study / "manifest.csv", index=False)   # the row deleted
    assert _process(folder, study, panel, tmp_path / "again", "--reports", "none").exit_code == 0
    again = pd.read_csv(tmp_path / "again" / "phenotypes.csv", dtype=str, keep_default_na=False).set_index("product_id")
    assert again.loc["390C", "status"] == "done" and again.loc["390C", "absent_tubes"] == other


def _release_cells(html: str, table_id: str) -> dict[str, str]:
    """A report's release table: criterion name -> its result cell's text."""
    body = html[html.index(f'<table id="{table_id}">'):]
    body = body[:body.index("</table>")]
    rows = re.findall(r"<tr><td>([^<]*)</td>.*?<span class=\"badge [^\"]*\">([^<]*)</span>", body, re.S)
    return dict(rows)


def test_release_of_a_product_without_an_optional_tube_kind_is_decided_on_its_own_kinds_criteria(tmp_path):
    """FlowAtlas two-panel draft (390C: liver kind only, Specimen_001: mln kind only, both optional),
    the drafted spec's criterion per kind on n_events_<kind>: the other kind's criterion was 'not
    evaluable' for every product, so no product could ever pass (the review app's release on the
    approved gates, the certificate: 'not evaluable' forever) -> it is 'not applicable (no <kind>
    tube; optional)' in the report, index, outcome records, review rows and certificate, and release
    is decided on the product's own kind's criterion. Truth: each stained file's $TOT (the data set's
    manifest) against the spec's limit, by hand. A blank column of a kind the product has stays
    'not evaluable'; a spec with no criterion applicable to a product leaves it 'not evaluable'."""
    import json

    from tilpheno.pipeline.jobs import outcome_from_record
    from tilpheno.pipeline.release import release_decision
    from tilpheno.review.regate import ReviewSource, recompute, release_rows

    folder, study, panel, owner = _two_panel_draft(tmp_path)
    limit = 6000
    (study / "release.yaml").write_text("name: events\ncriteria:\n" + "".join(
        f"  - {{name: Events {k}, column: n_events_{k}, op: '>=', limit: {limit}, unit: events}}\n" for k in owner))
    out = tmp_path / "out"
    assert _process(folder, study, panel, out).exit_code == 0
    got = pd.read_csv(out / "phenotypes.csv", dtype={"product_id": str}).set_index("product_id")
    events = pd.read_csv(REALDATA / "fcs_manifest.csv").set_index("file")["$TOT"]
    files = {"390C": "390C_Liver_026.fcs", "Specimen_001": "412C_mLN_026.fcs"}
    index = (out / "index.html").read_text()
    records = {json.loads(p.read_text())["product_id"]: outcome_from_record(json.loads(p.read_text()))
               for p in (out / ".cache").rglob("outcome.json")}
    source = ReviewSource(out)
    decided = {}
    for kind, product in owner.items():
        other = next(k for k in owner if k != kind)
        own = "pass" if events[f"fcs/{files[product]}"] >= limit else "fail"
        expected = {f"Events {kind}": own, f"Events {other}": f"not applicable (no {other} tube; optional)"}
        report = (out / "products" / product / "report.html").read_text()
        assert _release_cells(report, "release") == expected, product
        assert f"Events {other}: not applicable (no {other} tube; optional)" in index
        assert {r.criterion.name: r.result() for r in records[product].release} == expected
        # the run's release: the own criterion's outcome; a pass is held while a gate needs review
        needs_review = got.loc[product, "review_status"] == "needs review"
        assert got.loc[product, "release_status"] == ("fail" if own == "fail" else
                                                      "not evaluable" if needs_review else "pass")
        # the review app on the automatic gates (what an approval of them releases) and the certificate
        res = recompute(source, product, source.automatic(product), medians=False)
        assert {r["criterion"]: r["outcome"] for r in release_rows(res.release)} == expected
        decided[product] = res.release_status
        assert res.release_status == own
        # a blank value of the product's own kind (not optional-absent) stays not evaluable
        row = dict(got.loc[product].drop(["release_status"]), **{f"n_events_{kind}": float("nan")})
        strategies = list(source.strategies.values())
        release, status = release_decision(source.release_spec, row, [], usable=True, strategies=strategies,
                                           doses=source.study.doses)
        assert [r.outcome for r in release] == ["not evaluable" if k == kind else "not applicable" for k in owner]
        assert status == "not evaluable"
    assert sorted(decided.values()) == ["fail", "pass"]   # the limit splits the two files' $TOT
    _certificate_says_not_applicable(out, source, next(p for p, s in decided.items() if s == "pass"), owner, tmp_path)

    # a spec no criterion of which applies to a product: not evaluable, and the report says why
    kind = next(iter(owner))
    other = next(k for k in owner if k != kind)
    (study / "release.yaml").write_text(
        f"name: one\ncriteria:\n  - {{name: Events {other}, column: n_events_{other}, op: '>=', limit: 1, unit: events}}\n")
    assert _process(folder, study, panel, tmp_path / "one").exit_code == 0
    one = pd.read_csv(tmp_path / "one" / "phenotypes.csv", dtype={"product_id": str}).set_index("product_id")
    assert one.loc[owner[kind], "release_status"] == "not evaluable"
    report = (tmp_path / "one" / "products" / owner[kind] / "report.html").read_text()
    assert 'id="release-none-applicable">Not evaluable: no criterion applies' in report
    single = ReviewSource(tmp_path / "one")
    assert recompute(single, owner[kind], single.automatic(owner[kind]), medians=False).release_status == "not evaluable"
    assert recompute(single, owner[other], single.automatic(owner[other]), medians=False).release_status == "pass"


def _certificate_says_not_applicable(out, source, product, owner, tmp_path):
    """The certificate of ``product`` approved on its automatic gates: release criteria met, the
    other kind's criterion 'NOT APPLICABLE (no <kind> tube; optional)'."""
    from review_support import PASSWORDS, approval_resolutions, make_service
    from sqlalchemy import select

    from tilpheno.review.certificate import certificate_pdf
    from tilpheno.review.models import User

    if not shutil.which("pdftotext"):
        pytest.skip("poppler-utils not installed (`make services` installs it): the certificate's text not checked")
    service = make_service(out, f"sqlite:///{tmp_path / 'review.sqlite'}", source)
    with service.factory() as db:
        dave = db.scalar(select(User).where(User.username == "dave"))
    service.sign(product, dave.id, PASSWORDS["dave"], "approved for release", service.current_version(product),
                 approval_resolutions(service, product))
    pdf = tmp_path / "certificate.pdf"
    pdf.write_bytes(certificate_pdf(service, product))
    service.factory.kw["bind"].dispose()
    words = " ".join(subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True,
                                    text=True).stdout.split())
    other = next(k for k, p in owner.items() if p != product)
    assert "Release decision: RELEASE CRITERIA MET" in words
    assert f"NOT APPLICABLE (no {other} tube; optional)" in words


def test_a_study_folder_without_its_study_yaml_names_the_missing_file(tmp_path, monkeypatch):
    """A study folder that is there but holds no study.yaml (saved as study.yml, or not yet written) or whose
    study.yaml is a folder was "mystudy: no such study (a study.yaml, its folder, or one of the bundled studies:
    til)", as if the folder were not there -> the file missing or not a file, with a near name the folder holds;
    a name that is nothing still lists the bundled studies, and a folder named like a bundled study in the working
    directory still leaves that study found."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "yml").mkdir()
    (tmp_path / "yml" / "study.yml").write_text("study: x\n")
    (tmp_path / "dir" / "study.yaml").mkdir(parents=True)
    for given, said in (("empty", "empty/study.yaml: no such file"),
                        ("yml", "yml/study.yaml: no such file (yml holds study.yml: a study folder's file is "
                                "study.yaml)"),
                        ("dir", "dir/study.yaml: not a file"),
                        ("nothing", "nothing: no such study (a study.yaml, its folder, or one of the bundled "
                                    f"studies: {', '.join(bundled_studies())})")):
        with pytest.raises(StudyError) as info:
            load_study(given)
        assert str(info.value) == said
        result = CliRunner().invoke(app, ["scan", str(tmp_path / "empty"), "--study", given])
        assert result.exit_code == 2 and " ".join(result.output.split()) == f"error: {said}", result.output
    (tmp_path / "til").mkdir()
    assert load_study("til").name == default_study().name
