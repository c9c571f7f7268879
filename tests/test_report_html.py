"""Cohort index and HTML helpers: escaping, CSP, the inline sorter (in headless Chromium)."""
import html
import re
from pathlib import Path

import numpy as np
import pytest

from tilpheno.pipeline import ProcessOptions, ProductOutcome, product_slug
from tilpheno.qc import QCFlag
from tilpheno.release import DEFAULT_SPEC, evaluate, overall
from tilpheno.report.html import SORTER_JS, csp, fmt, render_index

EVIL = '<script>alert("x")</script>"><img src=x onerror=alert(1)>'


def _outcome(pid, viability, cd3, error=""):
    phen = {"product_id": pid, "viability_pct": viability, "cd3_pct_of_live_lymph": cd3}
    rel = evaluate(DEFAULT_SPEC, phen)
    flags = [QCFlag(pid, "f.fcs", "low_events", "warning", EVIL)] if error else []
    phen.update(qc_status="warning" if flags else "ok", status="failed" if error else "done")
    return ProductOutcome(pid, product_slug(pid), not error, error, phen, None, flags, rel, overall(rel), [])


@pytest.fixture
def outcomes():
    return [_outcome("TIL001", 88.5, 95.0), _outcome("TIL002", 65.0, 97.0), _outcome(EVIL, 9.0, 100.5, error=EVIL),
            _outcome("TIL010", 91.25, 93.0)]


def test_fmt():
    assert fmt(None) == "" and fmt(float("nan")) == "" and fmt(3) == "3"
    assert fmt(12.3456) == "12.35" and fmt("<b>") == "<b>" and fmt(2.5e6) == "2500000"


def test_index_escapes_input_strings(outcomes):
    page = render_index(outcomes, ProcessOptions())
    assert "<script>alert" not in page and "onerror=alert(1)>" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    # the only script element is the sorter, allowed by its hash in the CSP
    assert page.count("<script>") == 1 and SORTER_JS in page
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert html.unescape(policy) == csp(SORTER_JS)


def test_index_links_use_sanitised_slugs(outcomes):
    page = render_index(outcomes, ProcessOptions())
    hrefs = re.findall(r'href="([^"]+)"', page)
    assert "products/TIL001/report.html" in hrefs
    assert all(h.startswith("products/") and ".." not in h.split("/")[1] for h in hrefs)


@pytest.mark.browser
def test_index_in_chromium_runs_nothing_injected_and_sorts(tmp_path, browser, outcomes):
    page = tmp_path / "index.html"
    page.write_text(render_index(outcomes, ProcessOptions()))
    session, report = browser.load(page.as_uri())
    assert report.loaded and report.problems == []
    rows = browser.evaluate(session, "Array.from(document.querySelectorAll('#products tbody tr')).map(r => r.cells[0].textContent)")
    assert rows == ["TIL001", "TIL002", EVIL, "TIL010"]  # the planted text is shown as text
    header = "Array.from(document.querySelectorAll('#products th')).findIndex(h => h.title.startsWith('viability_pct'))"
    col = browser.evaluate(session, header)
    assert col > 0
    browser.evaluate(session, f"document.querySelectorAll('#products th')[{col}].click()")
    values = browser.evaluate(session, f"Array.from(document.querySelectorAll('#products tbody tr')).map(r => r.cells[{col}].textContent)")
    assert values == ["9.00", "65.00", "88.50", "91.25"]  # numeric, not lexicographic order
    browser.evaluate(session, f"document.querySelectorAll('#products th')[{col}].click()")
    values = browser.evaluate(session, f"Array.from(document.querySelectorAll('#products tbody tr')).map(r => r.cells[{col}].textContent)")
    assert values == ["91.25", "88.50", "65.00", "9.00"]
    browser.settle(session)
    assert browser.collect(session, page.as_uri()).problems == []


def test_failed_criteria_are_named():
    from tilpheno.report.html import failed_criteria

    phen = {"viability_pct": 65.0, "cd3_pct_of_live_lymph": float("nan")}
    assert failed_criteria(evaluate(DEFAULT_SPEC, phen)) == [
        "Viability (7AAD- of singlets): 65.00 (needs > 70 %)",
        "CD3+ T cells: not evaluable (no value; needs > 90 % of live lymphocytes)",
    ]
    assert failed_criteria(evaluate(DEFAULT_SPEC, {"viability_pct": 80, "cd3_pct_of_live_lymph": 95})) == []


def test_event_count_criteria_read_as_whole_events(tmp_path):
    """A release criterion on an event count: the index said 'Enough events: 10000.00 (needs >= 1e+06
    events)' and the report's table '10000.00' -> whole events, the limit written out: 'Enough events:
    10000 (needs >= 1000000 events)'; percentages keep their 2 decimals. The count is the product's
    own (phenotypes.csv), from the bundled sample files."""
    import shutil
    from pathlib import Path

    import pandas as pd

    from tilpheno.pipeline import process_folder

    folder = tmp_path / "in"
    folder.mkdir()
    for f in (Path(__file__).resolve().parents[1] / "sample_fcs").glob("TIL001_*.fcs"):
        shutil.copy(f, folder / f.name)
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: events\ncriteria:\n"
                    "  - {name: Enough events, column: n_events_surface, op: '>=', limit: 1000000, unit: events}\n"
                    "  - {name: Viable, column: viability_pct, op: '>', limit: 99.5, unit: '%'}\n")
    out = tmp_path / "out"
    process_folder(folder, out, release_spec_path=spec)
    row = pd.read_csv(out / "phenotypes.csv").iloc[0]
    index = html.unescape((out / "index.html").read_text())
    assert f"Enough events: {int(row.n_events_surface)} (needs >= 1000000 events)" in index
    assert f"Viable: {row.viability_pct:.2f} (needs > 99.5 %)" in index
    report = html.unescape((out / "products" / "TIL001" / "report.html").read_text())
    assert (f"<td>n_events_surface >= 1000000 events</td><td class=\"num\">{int(row.n_events_surface)}</td>"
            in report)


def test_css_string_cannot_leave_the_string_or_the_style():
    from tilpheno.report.html import css_string

    out = str(css_string(EVIL + "\n\\'"))
    assert not set(out) & set("<>\"'\n/") and out.count("\\") == len(re.findall(r"\\[0-9a-f]{6}", out))
    assert css_string("TIL 001-a.b") == "TIL 001-a.b"


def test_failed_product_report_escapes_its_id_in_html_and_print_css():
    from tilpheno.report.product import render_product

    outcome = _outcome(EVIL, 9.0, 100.5, error=EVIL)
    page = render_product(outcome, None, {}, ProcessOptions())
    assert "<script>" not in page and "onerror=alert(1)>" not in page
    style = page[page.index("<style>"):page.index("</style>")]
    assert "@top-left" in style and "alert" in style and "<" not in style[len("<style>"):]
    assert "could not be processed" in page


def test_failed_product_report_says_why_release_was_not_evaluated():
    """A product failed on one tube kind still shows the other tube's gates; its release section said
    "the product was not gated" beside those plots. It names the failure instead."""
    from dataclasses import replace

    from tilpheno.report.product import render_product

    failed = replace(_outcome("TIL007", 77.1, 92.4, error="no usable treg stained file"), release=[],
                     release_status="not evaluable")
    page = render_product(failed, None, {}, ProcessOptions())
    section = page[page.index("<h2>Release criteria</h2>"):page.index("<h2>QC flags</h2>")]
    assert "was not gated" not in section
    assert "Not evaluated: the product failed (reason above)" in section


def test_failed_product_header_does_not_blame_a_gate():
    """A failed product is "needs review" (phenotypes.csv) with no flag that needs review (qc.csv):
    its header badge names the failure, not "a gate may be wrong (see QC flags)"."""
    from dataclasses import replace

    from tilpheno.report.product import render_product

    failed = replace(_outcome("TIL007", 77.1, 92.4, error="no usable treg stained file"), release=[],
                     release_status="not evaluable")
    failed.phenotype.update(review_status="needs review")
    page = render_product(failed, None, {}, ProcessOptions())
    badge = re.search(r'id="review-status">(.*?)</span>', page).group(1)
    assert badge == "needs review: the product failed (reason below); release not evaluable"
    done = replace(_outcome("TIL003", 80.4, 91.1), release_status="not evaluable")
    done.phenotype.update(review_status="needs review")
    badge = re.search(r'id="review-status">(.*?)</span>', render_product(done, None, {}, ProcessOptions())).group(1)
    assert badge.startswith("needs review: a gate may be wrong (see QC flags)")


def test_report_qc_table_marks_the_flags_that_hold_release_as_qc_csv_does():
    """The header says "needs review ... (see QC flags)"; the QC table marks which flags those are,
    as qc.csv's needs_review column (two warnings looked alike: a drift that holds nothing and a
    missing FMO that holds release)."""
    from dataclasses import replace

    from tilpheno.qc import needs_review
    from tilpheno.report.product import render_product

    flags = [QCFlag("TIL008", "a_FMO_CD4.fcs", "signal_drift", "warning", "drift in PerCP-Cy5-5-A"),
             QCFlag("TIL008", "a_stain.fcs", "missing_fmo", "warning", "PD1+ (PD1): no FMO file for this marker"),
             QCFlag("TIL008", "a_unstained.fcs", "unstained_control", "info", "0.00% above")]
    outcome = replace(_outcome("TIL008", 92.7, 85.4), qc=flags, release_status="not evaluable")
    outcome.phenotype.update(review_status="needs review")
    page = render_product(outcome, None, {}, ProcessOptions())
    table = page[page.index('<table id="qc">'):]
    table = table[:table.index("</table>")]
    assert "<th>needs review</th>" in table
    rows = re.findall(r"<tr><td>(.*?)</tr>", table, re.S)
    assert len(rows) == len(flags)
    marked = ['<span class="badge needs-review">yes</span>' in row for row in rows]
    assert marked == [needs_review(f) for f in flags] == [False, True, False]


def test_report_qc_table_names_each_flags_gate_as_qc_csv_does():
    """The QC table has qc.csv's gate column, read from each flag's gate field (blank for a file- or
    product-level flag; with the gate's file when the flag was raised on another, unstained_positive's
    gate_file): a QA reviewer sees which gate a flag holds without parsing its message."""
    from dataclasses import replace

    from tilpheno.report.product import render_product

    flags = [QCFlag("TIL008", "a_stain.fcs", "no_second_peak", "warning", "PD1+ (PD1 in CD4+): one peak", gate="PD1+"),
             QCFlag("TIL008", "a_stain.fcs", "signal_drift", "warning", "drift in PerCP-Cy5-5-A"),
             QCFlag("TIL008", "a_stain.fcs", "uncertain_threshold", "warning", "CD4+ CD8+ (CD4, CD8): moved",
                    gate="CD4+ CD8+"),
             QCFlag("TIL008", "a_unstained.fcs", "unstained_positive", "warning", "CD3+ (CD3): 3.0% above",
                    gate="CD3+", gate_file="a_stain.fcs")]
    page = render_product(replace(_outcome("TIL008", 92.7, 85.4), qc=flags), None, {}, ProcessOptions())
    table = page[page.index('<table id="qc">'):]
    table = table[:table.index("</table>")]
    header = [re.sub(r"<.*?>", "", h) for h in re.findall(r"<th[^>]*>(.*?)</th>", table)]
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(<td>.*?)</tr>", table, re.S)]
    assert [html.unescape(row[header.index("gate")]) for row in rows] == ["PD1+", "", "CD4+ CD8+", "CD3+ (of a_stain.fcs)"]


@pytest.mark.browser
def test_every_status_badge_is_legible_in_chromium(tmp_path, browser, outcomes):
    """Every badge the index and a product report show (processing, release, QC, needs review) has a
    background of its own: the badges' text is white, so a badge without one is invisible (the
    "needs review" badge was, in both pages)."""
    from tilpheno.qc import NEEDS_REVIEW
    from tilpheno.report.product import render_product

    flagged = _outcome("TIL020", 88.0, 95.0)
    flagged.qc.append(QCFlag("TIL020", "TIL020_surface_stain.fcs", "uncertain_threshold", "warning",
                             "PD1+ (PD1 in live_lymph): the cut moved 7 points of the parent"))
    flagged.phenotype.update(qc_status="warning", review_status=NEEDS_REVIEW)
    flagged.release_status = "not evaluable"
    pages = {"index.html": render_index([*outcomes, flagged], ProcessOptions()),
             "report.html": render_product(flagged, None, {}, ProcessOptions())}
    for name, text in pages.items():
        page = tmp_path / name
        page.write_text(text)
        session, report = browser.load(page.as_uri())
        assert report.loaded and report.problems == []
        badges = browser.evaluate(session, "Array.from(document.querySelectorAll('.badge')).map(b => "
                                           "[b.className, getComputedStyle(b).backgroundColor, getComputedStyle(b).color])")
        assert any("needs-review" in cls for cls, _, _ in badges), (name, badges)
        for cls, background, colour in badges:
            assert background not in ("rgba(0, 0, 0, 0)", "transparent") and background != colour, (name, cls, background)


def test_index_counts_read_in_the_singular_for_one():
    one = render_index([_outcome("TIL001", 88.5, 95.0)], ProcessOptions())
    assert "<title>TIL infusion products, cohort index: 1 product</title>" in one and "1 product; 0 failed; 1 meets the release spec" in one
    two = render_index([_outcome("TIL001", 88.5, 95.0), _outcome("TIL002", 65.0, 97.0)], ProcessOptions())
    assert "<title>TIL infusion products, cohort index: 2 products</title>" in two and "2 products; 0 failed; 1 meets the release spec" in two


def test_study_variables_name_the_review_flags_on_their_gates():
    """Each study variable lists the review flags on the gates it depends on (its numerator,
    denominator and what they are gated from) in the stained file its counts come from; a flag on
    another gate, an info flag, or a flag raised on an FMO file marks nothing."""
    from types import SimpleNamespace

    from tilpheno.gates.strategy import default_strategy_paths, load_strategy
    from tilpheno.report.product import variable_review

    strategies = [load_strategy(p) for p in default_strategy_paths()]
    def tube(kind, role, file):   # a TubeResult's fields that variable_review reads (shown_name: the file's name)
        return SimpleNamespace(tube=kind, role=role, file=file, shown_name=file.rsplit("/", 1)[1])

    result = SimpleNamespace(tubes=[tube("surface", "stain", "/d/b_surface_stain.fcs"),
                                    tube("surface", "stain", "/d/c_surface_stain.fcs"),
                                    tube("surface", "fmo", "/d/a_FMO_PD1.fcs"),
                                    tube("treg", "stain", "/d/t_treg_stain.fcs")])
    flags = [QCFlag("P", "b_surface_stain.fcs", "uncertain_threshold", "warning", "CD8+PD1+ (PD1 in CD8+): moved 4 points", "CD8+PD1+"),
             QCFlag("P", "b_surface_stain.fcs", "negative_shift", "warning", "CD56+ (CD56 in live_lymph): shifted", "CD56+"),
             QCFlag("P", "b_surface_stain.fcs", "unstained_control", "info", "CD3+ (CD3): 0.01 %", "CD3+"),
             QCFlag("P", "a_FMO_PD1.fcs", "fmo_events_above", "warning", "PD1+ (PD1 in live_lymph): 3 % above", "PD1+"),
             QCFlag("P", "c_surface_stain.fcs", "uncertain_threshold", "warning", "CD4+ (CD4 in CD3+): moved 5 points", "CD4+")]
    marked = variable_review(flags, result, strategies)
    assert marked == {
        "cd8pd1_pct_of_cd8": ["uncertain_threshold (CD8+PD1+)"],
        "cd8pd1_pct_of_cd3": ["uncertain_threshold (CD8+PD1+)"],
        "nk_pct_of_live_lymph": ["negative_shift (CD56+)"],
        "nkt_pct_of_live_lymph": ["negative_shift (CD56+)"],
    }
    assert load_strategy(default_strategy_paths()[0]).variable_gates("cd8pd1_pct_of_cd3") == (
        "cells", "singlets", "live", "live_lymph", "CD3+", "CD8+", "non_T", "CD8+PD1+")   # non_T: the PD1 cut's reference


def test_counts_and_words_follow_the_product_label(outcomes):
    """With `product_label: Lot` the index said "Lots: cohort index" but "4 products", "Product"
    and a failed lot's report "This product could not be processed": every count and word uses
    the label's noun (the TIL study's "TIL infusion product" still counts "products")."""
    from dataclasses import replace

    from tilpheno.report.html import render_index_pages
    from tilpheno.report.product import render_product
    from tilpheno.study import default_study

    options = ProcessOptions(study=replace(default_study(), product_label="Lot"))
    page = render_index(outcomes, options)
    assert "<title>Lots, cohort index: 4 lots</title>" in page and "<p>4 lots; 1 failed;" in page
    assert 'cohort index: 4 lots"' in page and '<th title="product_id">Lot</th>' in page
    assert not re.search(r"\bproducts?\b", re.sub(r"<style>.*?</style>|<script>.*?</script>|<[^>]*>", "", page, flags=re.S))
    nav = render_index_pages(outcomes, options, page_rows=3)[0][1]
    assert "Lots 1–3 of 4 (sorting orders this page; every lot is in" in nav
    # the column headers' tooltips (the codebook's meanings) said "of the product" too
    titles = re.findall(r'<th title="([^"]*)"', page)
    assert "n_events_total: Events in all gated files of the lot (events)" in titles
    assert not [t for t in titles if re.search(r"\bproducts?\b", t)], titles
    lot = _outcome("TIL007", 77.1, 92.4, error="no usable treg stained file")
    lot.phenotype.update(review_status="needs review")
    failed = render_product(lot, None, {}, options)
    assert "<strong>This lot could not be processed:</strong>" in failed and "the lot failed (reason below)" in failed
    dosed = _outcome("TIL008", 80.0, 95.0)   # a study without the TIL codebook: the pipeline's generic meaning
    dosed.phenotype["til_dose_cells"] = 2.0e10
    done = render_product(dosed, None, {}, ProcessOptions(study=replace(options.study, codebook={})))
    assert re.search(r'<td class="muted">Infused cell number of the lot\b', done), "the meaning column said 'product'"


def test_population_values_are_read_without_filtering_the_table(monkeypatch):
    """A report looks up a population's count or % of parent about 60 times (gate titles, FMO
    overlays, the FMO table); each look-up filtered the whole population table with a boolean mask
    (about 10 % of a report's CPU on the benchmark folder). The values are those of the table's
    first row of that name, as the filter gave them, None where the population or column is absent,
    and the table is no longer filtered by a mask."""
    from types import SimpleNamespace

    import numpy as np
    import pandas as pd

    from tilpheno.report.product import _pct_of_parent, _pop_value

    pops = pd.DataFrame({"population": ["lymphocytes", "CD3+", "CD4+", "CD3+"], "count": [900, 600, 350, 1],
                         "pct_of_parent": [90.0, 66.66666666666667, 58.333333333333336, 0.1]})
    tube = SimpleNamespace(populations=pops)

    def filtered(population, column):   # what the report read before: the first row of a boolean filter
        row = pops[pops["population"] == population]
        return float(row[column].iloc[0]) if len(row) else None

    expected = {(p, c): filtered(p, c) for p in ("lymphocytes", "CD3+", "CD4+", "NK") for c in ("count", "pct_of_parent")}

    def no_mask(self, key):
        raise AssertionError("population table filtered by a boolean mask")

    monkeypatch.setattr(pd.DataFrame, "_getitem_bool_array", no_mask)
    for (population, column), value in expected.items():
        assert _pop_value(tube, population, column) == value
    assert expected[("CD3+", "count")] == 600.0 and expected[("NK", "count")] is None
    assert _pop_value(tube, "CD3+", "median_CD3") is None
    assert _pop_value(SimpleNamespace(populations=pops.drop(columns="population")), "CD3+", "count") is None
    assert _pct_of_parent(tube, "CD4+", {}, None) == 58.333333333333336
    masks = {"CD8+": np.array([True, False, True, False])}   # not in the table: from the masks drawn
    assert _pct_of_parent(tube, "CD8+", masks, np.array([True, True, True, False])) == 100.0 * 2 / 3


@pytest.fixture(scope="module")
def til001():
    """The sample's TIL001 gated with the bundled strategies: (strategies, ProductResult)."""
    from strategy_support import bundled_strategies, sample_rows
    from tilpheno.phenotype import analyze_product

    strategies = bundled_strategies("fsc")
    return strategies, analyze_product("TIL001", sample_rows("TIL001"), list(strategies))


def test_residual_spillover_table_defines_its_columns_and_shows_slopes_to_the_limit(til001):
    """The compensation section's residual table (TIL001's stained tubes) showed n_negative, lever,
    shift without saying what they are or their unit, and its caption described a half-sample-mode
    contrast where the check is a least-squares partial slope; the slope was shown to 2 decimals,
    too coarse to read against the 0.04 limit (0.036 and 0.044 both '0.04', one flagged). Now the
    caption defines every column, and each shown slope reads back within 0.0005 of the computed
    one (the tube's residual table, tilpheno.spillover.residual_spillover)."""
    from types import SimpleNamespace

    from tilpheno.report.qc_sections import compensation_sections

    strategies, result = til001
    sections = compensation_sections(SimpleNamespace(result=result, strategies=tuple(strategies), axes={}))
    tables = [(t, s) for s in sections for t in s.tables if t.id.startswith("residual-")]
    assert len(tables) == 2   # surface and treg
    for table, _ in tables:
        for column in table.columns:
            assert f"{column} = " in table.caption or column in ("source", "target"), column
        tube = next(t for t in result.tubes if t.role == "stain" and table.id == f"residual-{t.tube}")
        computed = tube.compensation.residual
        shown = {(r[0], r[1]): float(r[table.columns.index("slope")]) for r in table.rows}
        assert len(shown) == len(computed)
        for source, target, slope in zip(computed["source"], computed["target"], computed["slope"]):
            assert abs(shown[source, target] - slope) <= 0.0005, (source, target, slope)


def test_fmo_table_defines_its_numbers_and_their_scales(til001):
    """The FMO table's 'threshold (raw)' was in compensated linear units (not raw, uncompensated
    values) and neither it, 'threshold (scale)' nor the % columns were defined -> 'threshold
    (linear)', and the caption defines every number column; truth: each linear threshold is the
    strategy's transform of its marker inverted at the scale threshold (to the digits shown)."""
    from tilpheno.report.product import fmo_table

    strategies, result = til001
    table = fmo_table(result, 99.5)
    for column in table.columns[4:-1]:
        assert f"{column} = " in table.caption, column
    by_tube = {s.tube: s for s in strategies}
    col = {c: i for i, c in enumerate(table.columns)}
    assert len(table.rows) == 8
    for row in table.rows:
        tube = next(t.tube for t in result.tubes if t.role == "stain" and row[0] in set(t.populations["population"]))
        scale = float(row[col["threshold (scale)"]])
        linear = float(by_tube[tube].transform_for(row[col["marker"]]).inverse(np.array([scale]))[0])
        slope = float(by_tube[tube].transform_for(row[col["marker"]]).inverse(np.array([scale + 0.0005]))[0]) - linear
        assert abs(float(row[col["threshold (linear)"]]) - linear) <= abs(slope) + 0.05, row


def test_compensation_section_names_the_file_by_its_label(til001):
    """TIL001's stained tubes use their own $SPILLOVER: the section said 'matrix used:
    /.../sample_fcs/TIL001_surface_stain.fcs keyword $SPILLOVER', the absolute input path, where every
    other table names the file by its label (relative to the input folder)."""
    from types import SimpleNamespace

    from tilpheno.report.qc_sections import compensation_sections

    strategies, result = til001
    sections = compensation_sections(SimpleNamespace(result=result, strategies=tuple(strategies), axes={}))
    stained = [t for t in result.tubes if t.role == "stain"]
    assert len(sections) == len(stained) == 2
    for section, tube in zip(sections, stained):
        assert "/" not in tube.shown_name and str(tube.file) != tube.shown_name
        assert section.intro.startswith(f"{tube.shown_name}: matrix used: {tube.shown_name} keyword $SPILLOVER. "), \
            section.intro
        assert str(tube.file) not in section.intro
        assert section.tables[0].caption == f"Spillover matrix ({tube.shown_name} keyword $SPILLOVER)"


def test_report_conventions_name_the_strategies_scales(tmp_path):
    """The report's conventions line said 'fluorescence logicle (T=262144, W=0.5, M=4.5, A=0)' for
    every study: a strategy drawing CD56 on arcsinh and PD1 on logicle W=1 was reported on the
    bundled scale. Now the line names the scales of the strategies' transforms (truth: the YAML's
    own ``transforms:`` entries), and the bundled study's line is unchanged."""
    import yaml

    from tilpheno.gates.strategy import load_strategy
    from tilpheno.report.product import render_product
    from tilpheno.study import default_study

    def conventions(strategies):
        page = render_product(_outcome("TIL001", 88.5, 95.0), None, {}, ProcessOptions(), strategies)
        return re.search(r"scatter on a linear scale, (.*?);? (?:with )?ticks at raw-scale decades", page).group(1)

    bundled = [load_strategy(kind.strategy) for kind in default_study().tubes.values()]
    given = {tuple(sorted(spec.items())) for s in default_study().tubes.values()
             for dim, spec in yaml.safe_load(open(s.strategy))["transforms"].items() if spec["kind"] == "logicle"}
    assert len(given) == 1
    spec = dict(next(iter(given)))
    assert conventions(bundled) == (f"fluorescence logicle (T={spec['t']:g}, W={spec['w']:g}, "
                                    f"M={spec['m']:g}, A={spec['a']:g})")

    surface = default_study().tubes["surface"].strategy
    text = open(surface).read()
    lab = tmp_path / "surface.yaml"
    lab.write_text(text.replace("  CD56: {kind: logicle, t: 262144, w: 0.5, m: 4.5, a: 0}", "  CD56: {kind: arcsinh, cofactor: 150}")
                   .replace("  PD1:  {kind: logicle, t: 262144, w: 0.5, m: 4.5, a: 0}", "  PD1:  {kind: logicle, t: 262144, w: 1, m: 4.5, a: 0}"))
    transforms = yaml.safe_load(lab.read_text())["transforms"]
    assert transforms["CD56"] == {"kind": "arcsinh", "cofactor": 150} and transforms["PD1"]["w"] == 1
    line = conventions([load_strategy(lab)])
    assert "CD56: arcsinh (cofactor 150)" in line and "PD1: logicle (T=262144, W=1, M=4.5, A=0)" in line
    assert line.startswith("CD3, CD4, CD8, 7AAD: logicle (T=262144, W=0.5, M=4.5, A=0)"), line


def test_the_fmo_footnote_states_the_limits_the_strategy_used(tmp_path):
    """The report's FMO footnote said uncertain_threshold fires when a cut moved '> 3 points' and
    could change the % by '> 3 points', whatever ``shift_points`` / ``uncertain_points`` the lab set
    on its gates -> it states the values the strategies used: the one most FMO gates use (the
    defaults, 3, for the bundled strategies) and, in a sentence after, each gate's own (truth: the
    values written into the strategy files here)."""
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.report.product import render_product
    from tilpheno.study import default_study

    def footnote(strategies) -> str:
        page = render_product(_outcome("TIL001", 88.5, 95.0), None, {}, ProcessOptions(), strategies)
        return html.unescape(re.search(r"FMO rule \(README\):(.*?)</p>", page, re.S).group(1))

    def edited(kind: str, old: str, new: str) -> list:
        source = Path(default_study().tubes[kind].strategy)
        text = source.read_text()
        assert text.count(old) == 1
        path = tmp_path / source.name
        path.write_text(text.replace(old, new))
        return [load_strategy(path)]

    text = footnote([load_strategy(p) for p in default_study().strategy_paths])
    assert "moved > 3 points of the parent from the FMO percentile and could change the % by > 3 points" in text
    assert "own limits" not in text
    # the Treg tube's one FMO gate (FoxP3+) with uncertain_points 4: every > 3 of that limit reads > 4
    treg = edited("treg", "reference_carry: quantile}", "reference_carry: quantile, uncertain_points: 4}")
    text = footnote(treg)
    assert "moved > 3 points of the parent from the FMO percentile and could change the % by > 4 points" in text, text
    assert "lies > 4 points above the parent's own mid carry-over" in text and "by > 3 points" not in text, text
    # two of the surface tube's five FMO gates with their own limits: the other three's, and a sentence naming them
    pd1 = "    parent: live_lymph\n    dims: [PD1]\n    method: fmo\n    params: {rule: relative, skew_reference: non_T"
    surface = edited("surface", pd1 + ', cross_fmo: "treg:lymph"}', pd1 + ', cross_fmo: "treg:lymph", uncertain_points: 5, '
                     'shift_points: 2.5}')
    source = Path(surface[0].path).read_text().replace("    dims: [CD3]\n    method: fmo\n",
                                                      "    dims: [CD3]\n    method: fmo\n    params: {shift_points: 2.5}\n")
    Path(surface[0].path).write_text(source)
    text = footnote([load_strategy(surface[0].path)])
    assert "moved > 3 points of the parent from the FMO percentile and could change the % by > 3 points" in text, text
    assert "Gates with their own limits: shift_points 2.5 on CD3+, PD1+; uncertain_points 5 on PD1+." in text, text
