"""What README.md and docs/design.md state that the code can check: the QC codes a QA reviewer
looks up, and the module layers a developer reads first (the command lines are checked in
tests/test_cli_help.py)."""
import re
from pathlib import Path

from layers_support import LAYERS

from tilpheno.qc import FAILURE_CODES, REVIEW_CODES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DESIGN = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")


def test_readme_names_every_code_that_holds_release():
    """A reviewer who finds a code with needs_review in qc.csv finds it in the README: four review
    codes (fmo_excess_positive, cut_at_scale_edge, out_of_expected_range, tube_disagreement) were
    described there in words only."""
    named = set(re.findall(r"`([a-z_]+)`", README))
    assert sorted((REVIEW_CODES | FAILURE_CODES) - named) == []


def test_a_code_the_docs_call_review_holds_release():
    """`code` (review) in the docs is a code of tilpheno.qc.REVIEW_CODES, and one said to need no
    review is not."""
    for text in (README, DESIGN):
        review = set(re.findall(r"`([a-z_]+)`\s+\(review\b", text))
        no_review = set(re.findall(r"`([a-z_]+)`\s+\([a-z, ]*no review\b", text))
        assert sorted(review - REVIEW_CODES) == []
        assert sorted(no_review & REVIEW_CODES) == []


def _design_layers() -> dict[str, int]:
    """docs/design.md's layer table: module (``tilpheno.io.fcs``) -> layer number."""
    table = DESIGN.split("## Module map and layers", 1)[1].split("\n\n")[2]
    found = {}
    for row in table.splitlines()[2:]:
        cells = row.split("|")
        number = int(cells[1].split()[0])
        for name in re.findall(r"`([a-z_/*]+)`", cells[2]):
            found["tilpheno." + name.strip("/*").replace("/", ".")] = number
    return found


def test_design_layer_table_is_the_tested_layers():
    """Every module tests/layers_support.py places is in docs/design.md's table at that layer (the table
    had lost io/workbook and control_settings, and its row 9 stood outside it)."""
    design = _design_layers()
    tested = {name: int(layer) for name, layer in LAYERS.items()
              if name not in ("tilpheno", "tilpheno.io") and not name.startswith("tilpheno.pipeline.")}
    shown = {name: {n for m, n in design.items() if m == name or m.startswith(name + ".")} for name in tested}
    wrong = {name: (layer, shown[name]) for name, layer in tested.items() if shown[name] != {layer}}
    assert wrong == {}


def test_design_names_every_strategy_key():
    """docs/design.md's strategy-file paragraph names every top-level key a strategy may have
    (`description` and `acquisition_qc` were accepted but not named there)."""
    from tilpheno.gates.strategy import _TOP_KEYS

    section = DESIGN.split("## Gating strategies", 1)[1].split("\n## ", 1)[0]
    assert sorted(k for k in _TOP_KEYS if f"`{k}`" not in section) == []


def _codebook_meaning(column: str) -> str:
    from tilpheno.report.codebook import build_codebook

    book = build_codebook({"phenotypes.csv": ["review_status"], "populations.csv": ["role"]})
    return book.set_index("column").at[column, "meaning"]


def test_codebook_review_status_names_every_kind_of_flag_that_sets_it():
    """codebook.csv (and the report's and index's header text) said review_status is 'needs review
    when a gate may be wrong', but a failed product, a duplicate stained file and a control acquired
    on another instrument set it too (tilpheno.qc.review_status)."""
    from tilpheno.qc import NEEDS_REVIEW, QCFlag, review_status

    meaning = _codebook_meaning("review_status")
    for code, words in (("product_failed", "the product failed"), ("duplicate_tube", "two stained files of one tube kind"),
                        ("duplicate_control", "two FMOs of one marker"),
                        ("control_instrument_differs", "another instrument")):
        assert review_status([QCFlag("P", "f.fcs", code, "warning", "")]) == NEEDS_REVIEW
        assert words in meaning, (code, meaning)


def test_codebook_role_names_every_manifest_role():
    """populations.csv's role listed stain / fmo / unstained; a manifest may also say single_stain."""
    from tilpheno.io.manifest import ROLES

    meaning = _codebook_meaning("role")
    assert [r for r in ROLES if r not in meaning] == []


def test_every_repository_path_the_docs_cite_exists():
    """A file or folder of the repository that README.md, docs/*.md or sample_fcs/README.md cites
    (`tilpheno/...`, `tests/...`, `benchmarks/...`, `gating/...`, a link) exists: a reader sent to a
    renamed file finds nothing."""
    docs = [ROOT / "README.md", ROOT / "sample_fcs" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    pattern = r"[`(]((?:\.ci|tilpheno|tests|benchmarks|docs|gating|sample_fcs)/[A-Za-z0-9_./*-]*)"
    missing = [f"{doc.name}: {path}" for doc in docs for path in re.findall(pattern, doc.read_text(encoding="utf-8"))
               if not any(ROOT.glob(path.rstrip("./")))]
    assert missing == []


def test_readme_names_the_columns_of_the_biomarker_tables():
    """A statistician preparing the outcomes and cut-points tables from the README found no column
    named there (only `tilpheno biomarkers --help` listed the cut-points file's), nor what a blank
    id, time, event or response does (stop 49: a blank time or response is missing, complete cases per endpoint)."""
    from tilpheno.biomarkers.analysis import CUTPOINT_COLUMNS
    from tilpheno.io.outcomes import OPTIONAL_TIME_COLUMNS, REQUIRED, RESPONSE_CODES

    named = set(re.findall(r"`([A-Za-z_]+)`", README))
    columns = (*REQUIRED, *OPTIONAL_TIME_COLUMNS, *CUTPOINT_COLUMNS, "endpoint", *RESPONSE_CODES)
    assert [c for c in columns if c not in named] == []
    text = " ".join(README.split())
    assert "a blank id is an error naming its row and column" in text
    assert "a blank time or event is missing, complete cases per endpoint" in text


def test_readme_library_lines_run_as_written(monkeypatch, capsys):
    """README's Python block ("gate one file in five lines"), run as written from the repository root, prints the
    stained tube's summary, and its lineage percentages lie within the README's 2-point target of the simulator's
    labels (sample_fcs/truth.csv); its comment's FMO control, given as written (`fmo_file`: the PD1 FMO), brings
    PD1+ within the 1.5-point target of the ideal-FMO reference. tests/test_object_model.py runs a copy of these
    lines, so a README edit (a file, argument or attribute renamed) went unseen there."""
    import pandas as pd

    block = README.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(ROOT)
    names: dict = {}
    exec(compile(block, "README.md", "exec"), names)
    assert "cd3_pct_of_live_lymph" in capsys.readouterr().out
    truth = pd.read_csv(ROOT / "sample_fcs" / "truth.csv").set_index("product_id").loc["TIL001"]
    percent = names["result"].summary.set_index("variable")["percent"]
    lineage = ["viability_pct", "cd3_pct_of_live_lymph", "cd4_pct_of_cd3", "cd8_pct_of_cd3", "nk_pct_of_live_lymph",
               "nkt_pct_of_live_lymph"]
    assert {v: round(abs(percent[v] - truth[v]), 2) for v in lineage if abs(percent[v] - truth[v]) > 2} == {}
    comment = block.split("result = tp.gate_sample(strategy, sample)", 1)[1].split("# ", 1)[1].split("\n", 1)[0]
    names["fmo_file"] = "sample_fcs/TIL001_surface_FMO_PD1.fcs"
    with_fmo = eval(f"tp.gate_sample(strategy, sample, {comment})", names)
    pd1 = with_fmo.summary.set_index("variable").at["pd1_pct_of_live_lymph", "percent"]
    assert abs(pd1 - truth["ref_pd1_pct_of_live_lymph"]) <= 1.5, (pd1, truth["ref_pd1_pct_of_live_lymph"])
