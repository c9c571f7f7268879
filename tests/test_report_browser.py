"""Product report and cohort index as a reader sees them, in headless Chromium (issue 16).

Checked on the small simulated cohort processed once (``processed`` fixture): inline SVG figures
render under the page's CSP, no text of any figure is clipped, every file of a product is drawn on
the same per-marker axes, quadrants carry the strategy's names, the FMO tubes are one compact
table, the printed PDF names the product and numbers every page, and the index fits 1280 px with
readable headers, a frozen first column and the failed release criteria named.
"""
import io
import re

import pandas as pd
import pytest

from tilpheno.gates.strategy import default_strategy_paths, load_strategy
from tilpheno.report.codebook import UNDOCUMENTED

pytestmark = pytest.mark.browser

# every <text> of every figure: its box on screen against the figure's box (CSS px)
TEXT_BOXES = """
Array.from(document.querySelectorAll('svg.plot')).flatMap((svg, i) => {
  const f = svg.getBoundingClientRect();
  return Array.from(svg.querySelectorAll('text')).map(t => {
    const r = t.getBoundingClientRect();
    return {fig: i, text: t.textContent, left: r.left - f.left, right: f.right - r.right,
            top: r.top - f.top, bottom: f.bottom - r.bottom, width: r.width};
  });
})
"""

# per figure: x-axis label and the x position (fraction of the figure width) of each x tick label
X_TICKS = """
Array.from(document.querySelectorAll('svg.plot')).map(svg => {
  const f = svg.getBoundingClientRect();
  const label = svg.querySelector('g[id$="-tp-xlabel"] text');
  const ticks = Array.from(svg.querySelectorAll('g[id*="-tp-xtick-"] text')).map(t => {
    const r = t.getBoundingClientRect();
    return [t.textContent, Math.round(1000 * ((r.left + r.right) / 2 - f.left) / f.width) / 1000];
  });
  return {label: label ? label.textContent : '', title: svg.getAttribute('aria-label'), ticks: ticks};
})
"""


@pytest.fixture(scope="module")
def product_page(processed, browser):
    out, _ = processed
    phen = pd.read_csv(out / "phenotypes.csv", dtype={"product_id": str})
    pid = phen["product_id"].iloc[0]
    url = (out / "products" / pid / "report.html").as_uri()
    session, report = browser.load(url)
    return out, pid, session, report


def test_figures_render_inline_under_the_csp(product_page, browser):
    _, _, session, report = product_page
    assert report.loaded and report.problems == []   # CSP violations and decode errors land here
    figs = browser.evaluate(session, """Array.from(document.querySelectorAll('figure svg.plot')).map(s => ({
        w: s.getBoundingClientRect().width, h: s.getBoundingClientRect().height,
        images: Array.from(s.querySelectorAll('image')).map(i => i.href.baseVal.slice(0, 22))}))""")
    assert len(figs) >= 15 and min(f["w"] for f in figs) > 300 and min(f["h"] for f in figs) > 250
    rasters = [src for f in figs for src in f["images"]]
    assert rasters and set(rasters) == {"data:image/png;base64,"}
    # each embedded density image decodes (a broken or blocked one has no natural size)
    sizes = browser.evaluate(session, """Promise.all(Array.from(document.querySelectorAll('svg.plot image')).map(i => {
        const img = new Image(); img.src = i.href.baseVal;
        return img.decode().then(() => img.naturalWidth, () => 0); }))""")
    assert sizes and set(sizes) == {128}
    assert browser.evaluate(session, "document.images.length") == 0   # no <img>: figures are inline vector


def test_no_text_is_clipped_in_any_figure(product_page, browser):
    _, _, session, _ = product_page
    boxes = browser.evaluate(session, TEXT_BOXES)
    assert len(boxes) > 300
    clipped = [b for b in boxes if min(b["left"], b["right"], b["top"], b["bottom"]) < -0.5]
    assert clipped == []
    assert all(b["width"] > 0 for b in boxes)


def test_every_file_of_the_product_shares_the_marker_axes(product_page, browser):
    _, _, session, _ = product_page
    figures = browser.evaluate(session, X_TICKS)
    by_label: dict[str, list] = {}
    for f in figures:
        by_label.setdefault(f["label"], []).append(f)
    pd1 = by_label["PD1 (PE-A)"]
    assert any("FMO vs stained" in f["title"] for f in pd1) and any("gate on PD1" in f["title"] for f in pd1)
    for label, figs in by_label.items():
        assert len({tuple(map(tuple, f["ticks"])) for f in figs}) == 1, label
    ticks = dict(by_label["CD3 (FITC-A)"][0]["ticks"])
    assert {"-10²", "0", "10²", "10³", "10⁴", "10⁵"} <= set(ticks)   # decades with negatives, logicle
    assert ticks["-10²"] < ticks["0"] < ticks["10²"] < ticks["10³"]


def test_quadrants_are_named_from_the_strategy(product_page, browser):
    _, _, session, _ = product_page
    # acquisition and compensation figures have no gate-plot axis labels: look only at gate plots
    names = browser.evaluate(session, """Array.from(document.querySelectorAll('svg.plot')).filter(s =>
        (s.querySelector('g[id$="-tp-xlabel"] text') || {textContent: ''}).textContent.startsWith('CD3 ') &&
        (s.querySelector('g[id$="-tp-ylabel"] text') || {textContent: ''}).textContent.startsWith('CD56 ')).map(s =>
        Array.from(s.querySelectorAll('g[id*="-tp-quadrant-"]')).map(g => [g.id.split('-tp-quadrant-')[1],
        Array.from(g.querySelectorAll('text')).map(t => t.textContent).join(' ')]))""")
    assert len(names) == 1
    quadrants = dict(names[0])
    configured = load_strategy(default_strategy_paths()[0]).quadrant_names[("CD3+", "CD56+")]
    for (x_in, y_in), name in configured.items():
        key = ("+" if x_in else "-") + ("+" if y_in else "-")
        assert re.fullmatch(rf"{re.escape(name)} \d+\.\d%", quadrants[key]), quadrants


def test_fmo_tubes_are_one_compact_table(product_page, browser):
    out, pid, session, _ = product_page
    rows = browser.evaluate(session, """Array.from(document.querySelectorAll('#fmo-summary tbody tr')).map(r =>
        Array.from(r.cells).map(c => c.textContent))""")
    headers = browser.evaluate(session, "Array.from(document.querySelectorAll('#fmo-summary th')).map(h => h.textContent)")
    pops = pd.read_csv(out / "populations.csv", dtype={"product_id": str})
    pops = pops[pops["product_id"] == pid]
    stained = pops[pops["role"] == "stain"]
    assert len(rows) == 8   # CD3, CD4, CD8, CD56, PD1 x 3 parents, FoxP3
    col = {h: i for i, h in enumerate(headers)}
    for r in rows:
        population, control = r[col["population"]], r[col["control file"]]
        fmo = pops[pops["file"] == control]
        assert float(r[col["control % +"]]) == pytest.approx(fmo.loc[fmo["population"] == population, "pct_of_parent"].iloc[0], abs=0.006)
        assert float(r[col["stained % +"]]) == pytest.approx(
            stained.loc[stained["population"] == population, "pct_of_parent"].iloc[0], abs=0.006)
    # no FMO tube gets its own subset table any more: subset tables only for the stained tubes
    tables = browser.evaluate(session, "Array.from(document.querySelectorAll('table[id^=\"subsets-\"]')).map(t => t.id)")
    assert sorted(tables) == ["subsets-surface", "subsets-treg"]


def test_print_names_the_product_and_numbers_every_page(product_page, browser):
    pypdf = pytest.importorskip("pypdf")
    _, pid, session, _ = product_page
    reader = pypdf.PdfReader(io.BytesIO(browser.pdf(session)))
    n = len(reader.pages)
    # 9 pages since the acquisition-QC figures span two grid columns and the FMO threshold table
    # shows both candidate cuts (issue 16 found 9 pages of mostly FMO subset tables; those are one table now)
    assert 2 <= n <= 10
    for i, page in enumerate(reader.pages, start=1):
        text = page.extract_text()
        assert f"TIL infusion product {pid}" in text, i
        assert f"page {i} of {n}" in text, i
    # figures stay vector in print: the text of the axes is text in the PDF
    assert "CD3 (FITC-A)" in "".join(p.extract_text() for p in reader.pages)


def test_printed_column_names_break_only_after_an_underscore(product_page, browser):
    """The study table's column names (phenotypes.csv's, a QA reviewer's key to the tables) were
    broken anywhere in print ('viability_pc' / 't', 'cd3_pct_of_l' / 'ive_lymph'): now only after
    an underscore, so the printed text, a line ending in '_' joined to the next, holds each whole."""
    pypdf = pytest.importorskip("pypdf")
    _, _, session, _ = product_page
    names = browser.evaluate(session, "Array.from(document.querySelectorAll('#study tbody tr')).map(r => "
                                      "r.cells[r.cells.length - 1].textContent)")
    assert len(names) >= 10 and all(re.fullmatch(r"[a-z0-9_]+", n) for n in names), names
    reader = pypdf.PdfReader(io.BytesIO(browser.pdf(session)))
    text = "\n".join(page.extract_text() for page in reader.pages)
    words = set(re.sub(r"(?<=_)\n", "", text).split())
    assert [n for n in names if n not in words] == []


def test_index_fits_1280_with_readable_headers_and_named_failures(processed, browser):
    out, _ = processed
    session, report = browser.load((out / "index.html").as_uri())
    assert report.loaded and report.problems == []
    width = browser.evaluate(session, "window.innerWidth")
    assert width == 1280
    fit = browser.evaluate(session, """(() => { const w = document.getElementById('products-wrap');
        const t = document.getElementById('products');
        return [t.getBoundingClientRect().right, w.getBoundingClientRect().right, document.documentElement.scrollWidth]; })()""")
    assert fit[0] <= fit[1] + 0.5 and fit[2] <= 1280
    headers = browser.evaluate(session, "Array.from(document.querySelectorAll('#products th')).map(h => h.textContent)")
    assert all("_" not in h for h in headers) and "Viability" in headers
    sticky = browser.evaluate(session, "getComputedStyle(document.querySelector('#products td')).position")
    assert sticky == "sticky"
    phen = pd.read_csv(out / "phenotypes.csv", dtype={"product_id": str})
    cells = browser.evaluate(session, """Object.fromEntries(Array.from(document.querySelectorAll('#products tbody tr')).map(r =>
        [r.cells[0].textContent, Array.from(r.cells[2].querySelectorAll('.reasons')).map(s => s.textContent)]))""")
    for row in phen.itertuples():
        reasons = cells[row.product_id]
        if row.release_status == "pass":
            assert reasons == []
        else:
            expected = []
            if not row.viability_pct > 70:
                expected.append(f"Viability (7AAD- of singlets): {row.viability_pct:.2f} (needs > 70 %)")
            if not row.cd3_pct_of_live_lymph > 90:
                expected.append(f"CD3+ T cells: {row.cd3_pct_of_live_lymph:.2f} (needs > 90 % of live lymphocytes)")
            assert reasons == expected


def test_codebook_documents_every_output_column(processed):
    out, _ = processed
    book = pd.read_csv(out / "codebook.csv", keep_default_na=False)
    assert list(book.columns) == ["column", "label", "meaning", "unit", "method", "table"]
    for name in ("phenotypes.csv", "populations.csv", "qc.csv"):
        columns = pd.read_csv(out / name, nrows=0).columns
        documented = book[book["table"].str.contains(name, regex=False)]
        assert set(columns) <= set(documented["column"]), name
    assert book["column"].is_unique and not (book["meaning"] == UNDOCUMENTED).any()
    assert (book["label"] != "").all() and (book["meaning"] != "").all()
    row = book.set_index("column").loc["cd8pd1_pct_of_cd8"]
    assert row["unit"] == "% of CD8+" and "PD1" in row["method"]
    percents = book[book["column"].str.endswith("_pct") | book["column"].str.contains("_pct_of_")]
    assert not percents.empty and (percents["unit"].str.startswith("% of ")).all(), \
        percents.loc[~percents["unit"].str.startswith("% of "), ["column", "unit"]]   # every % names its denominator
    counts = book.set_index("column").loc["n_cd3pos_surface"]
    assert counts["unit"] == "events" and "CD3+" in counts["meaning"]


def test_quadrant_labels_never_overlap(product_page, browser):
    _, _, session, _ = product_page
    boxes = browser.evaluate(session, """Array.from(document.querySelectorAll('svg.plot')).map(s =>
        Array.from(s.querySelectorAll('g[id*="-tp-quadrant-"]')).map(g => { const r = g.getBoundingClientRect();
        return [r.left, r.right, r.top, r.bottom]; })).filter(b => b.length)""")
    assert len(boxes) == 2 and all(len(b) == 4 for b in boxes)
    for fig in boxes:
        for i, a in enumerate(fig):
            for b in fig[i + 1:]:
                overlap = min(a[1], b[1]) - max(a[0], b[0]) > 0.5 and min(a[3], b[3]) - max(a[2], b[2]) > 0.5
                assert not overlap, (a, b)


@pytest.fixture(scope="module")
def sample_product_page(tmp_path_factory, browser):
    """sample_fcs TIL001 processed with reports (its files have a time channel and enough events for
    the acquisition-QC figures, which the small simulated cohort lacks)."""
    from pathlib import Path

    from tilpheno.pipeline import process_folder

    sample = Path(__file__).parents[1] / "sample_fcs"
    manifest = pd.read_csv(sample / "manifest.csv", dtype=str, keep_default_na=False)
    tmp = tmp_path_factory.mktemp("sample_report")
    subset = manifest[manifest["product_id"] == "TIL001"].copy()
    subset["file"] = [str(sample / f) for f in subset["file"]]
    subset.to_csv(tmp / "manifest.csv", index=False)
    summary = process_folder(sample, tmp / "out", manifest_csv=tmp / "manifest.csv")
    assert summary.ok
    session, report = browser.load((tmp / "out" / "products" / "TIL001" / "report.html").as_uri())
    assert report.loaded and report.problems == []
    return session


def test_acquisition_qc_figures_span_two_columns_with_readable_text(sample_product_page, browser):
    """The wide flow-rate/medians-over-time figure is not squeezed into one of three grid columns."""
    session = sample_product_page
    found = browser.evaluate(session, """(() => {
        const px = svg => { const s = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
            return Math.min(...Array.from(svg.querySelectorAll('text')).map(t => parseFloat(getComputedStyle(t).fontSize) * s)); };
        const grid = document.querySelector('section#acquisition-qc .grid');
        const gate = document.querySelector('.grid figure:not(.wide) svg.plot');
        return {grid: grid.getBoundingClientRect().width,
                figs: Array.from(grid.querySelectorAll('figure')).map(f => [f.className, f.getBoundingClientRect().width,
                      px(f.querySelector('svg.plot'))]),
                gate: gate.getBoundingClientRect().width, gate_px: px(gate)}; })()""")
    assert len(found["figs"]) == 2   # surface and treg stained tubes
    for cls, width, min_px in found["figs"]:
        assert cls == "wide" and width >= 0.6 * found["grid"] and width >= 1.8 * found["gate"]
        assert min_px >= 9.5   # legend text (6.5 pt) at about 10 px; in one grid column it was about 5 px
    assert found["gate_px"] >= 9.5
