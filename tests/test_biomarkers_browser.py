"""The biomarker report as a reader sees it, in headless Chromium at 1280 px (issue 16).

One analysis of the committed TIL cohort (tests/reference) is rendered once. Checked in the page:
the Kaplan-Meier and forest figures are inline vector SVG that fit the window; no text of any
figure is clipped or overlaps another; the numbers-at-risk are readable (font size in CSS px as
displayed) and equal at_risk.csv; the KM legend sits above the plot area, not over a curve; the
forest plots keep continuous and dichotomised markers in separate panels, show the low level of
each dichotomised marker as a "reference" row and N per level from the Cox table, and HR (95% CI)
and p as text rounded by ``formatting``; every figure is exported as SVG and as a PDF page; the
page uses the product reports' stylesheet, its tables are not cut off, and the provenance footer
names the version, the command and each input with its SHA-256 (as run.json does).
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest

from tilpheno.biomarkers.analysis import run_biomarkers
from tilpheno.biomarkers.formatting import fmt_hr_ci, fmt_p
from tilpheno.io.outcomes import read_outcomes

pytestmark = [pytest.mark.browser, pytest.mark.slow]   # slow: a 60-product biomarker run then Chromium (about 2 min)

REF = Path(__file__).parent / "reference"
PHENOTYPES, OUTCOMES = REF / "til_cohort_phenotypes.csv", REF / "til_cohort_outcomes.csv"
MARKERS = ["til_dose_cells", "cd8_pct_of_cd3", "cd4foxp3_pct_of_cd4"]
BREAKS = [0, 6, 12, 24]

# per figure (by the <figure> id): every <text> box relative to the figure's <svg>, its font size in
# CSS px as displayed (font-size in SVG user units x the displayed scale) and the id of its group
TEXTS = """
(sel => Array.from(document.querySelectorAll(sel)).map(fig => {
  const svg = fig.querySelector('svg.plot'), f = svg.getBoundingClientRect();
  const scale = f.width / svg.viewBox.baseVal.width;
  return {id: fig.id, width: f.width, right: f.right, texts: Array.from(svg.querySelectorAll('text')).map(t => {
    const r = t.getBoundingClientRect(), g = t.closest('g[id]');
    return {text: t.textContent, gid: g ? g.id.replace(/^p[0-9a-f]{8}-/, '') : '',
            left: r.left - f.left, right: r.right - f.left, top: r.top - f.top, bottom: r.bottom - f.top,
            fw: f.width, fh: f.height, px: parseFloat(getComputedStyle(t).fontSize) * scale};
  })};
}))
"""


@pytest.fixture(scope="module")
def bio(tmp_path_factory):
    out = tmp_path_factory.mktemp("bio_browser")
    res = run_biomarkers(pd.read_csv(PHENOTYPES), read_outcomes(OUTCOMES), out, markers=MARKERS, n_perm=99, seed=5,
                         break_times=BREAKS, n_boot=5, inputs=[PHENOTYPES, OUTCOMES], pdf=True,
                         command_line=["tilpheno", "biomarkers", "--phenotypes", str(PHENOTYPES)])
    return out, res


@pytest.fixture(scope="module")
def page(bio, browser):
    out, _ = bio
    session, report = browser.load((out / "report.html").as_uri())
    figures = {f["id"]: f for f in browser.evaluate(session, TEXTS.strip() + "('figure[id]')")}
    return session, report, figures


def _km(figures):
    return {k: f for k, f in figures.items() if k.startswith("km_")}


def _forest(figures):
    return {k: f for k, f in figures.items() if k.startswith("forest_")}


def test_figures_inline_vector_and_fit_1280(bio, page, browser):
    out, res = bio
    session, report, figures = page
    assert report.loaded and report.problems == []
    assert browser.evaluate(session, "window.innerWidth") == 1280
    assert browser.evaluate(session, "document.documentElement.scrollWidth") <= 1280
    km, forest = _km(figures), _forest(figures)
    n_cuts = len(res.cutpoints)
    assert len(km) == 2 + n_cuts                       # whole cohort per endpoint + one per endpoint x marker x cut
    assert sorted(forest) == sorted(f"forest_{m}_{e}" for m in ("univariable", "multivariable") for e in ("pfs", "os"))
    for f in figures.values():
        assert f["right"] <= 1280 - 16, f["id"]           # inside the window, no sideways scroll
    # KM figures two per row at 1280 px (not one narrow figure per row)
    tops = browser.evaluate(session, "Array.from(document.querySelectorAll('figure[id^=km_]')).map(f => "
                                     "Math.round(f.getBoundingClientRect().top))")
    assert len(tops) == len(km) and len(set(tops)) <= (len(km) + 1) // 2
    # no <img>: every figure is inline SVG with its text as text
    assert browser.evaluate(session, "document.images.length") == 0
    assert all(len(f["texts"]) > 10 for f in figures.values())


def test_no_text_clipped_or_overlapping_in_km_and_forest(page):
    _, _, figures = page
    checked = 0
    for fid, f in {**_km(figures), **_forest(figures)}.items():
        boxes = [t for t in f["texts"] if t["text"].strip() and t["right"] - t["left"] > 0]
        for t in boxes:
            assert t["left"] >= -0.5 and t["top"] >= -0.5 and t["right"] <= t["fw"] + 0.5 and t["bottom"] <= t["fh"] + 0.5, \
                (fid, t["text"])
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                overlap_x = min(a["right"], b["right"]) - max(a["left"], b["left"])
                overlap_y = min(a["bottom"], b["bottom"]) - max(a["top"], b["top"])
                assert overlap_x <= 0.5 or overlap_y <= 0.5, (fid, a["text"], b["text"])
                checked += 1
    assert checked > 5000


def test_km_risk_table_readable_and_equal_to_at_risk_csv(bio, page):
    out, _ = bio
    _, _, figures = page
    at_risk = pd.read_csv(out / "at_risk.csv")
    for fid, f in _km(figures).items():
        risk = [t for t in f["texts"] if t["gid"].startswith("tp-risk-")]
        assert risk and min(t["px"] for t in risk) >= 11.0, fid     # 9 pt at about natural size: ~12 px
        ticks = [t for t in f["texts"] if t["gid"] == "" and t["text"] in {str(b) for b in BREAKS}]
        assert ticks and min(t["px"] for t in ticks) >= 10.0, fid
    whole = _km(figures)["km_pfs_all"]
    shown = {t["gid"]: int(t["text"]) for t in whole["texts"] if t["gid"].startswith("tp-risk-")}
    want = at_risk[(at_risk.endpoint == "pfs") & (at_risk.grouping == "all")].sort_values("time")["n.risk"].tolist()
    assert [shown[f"tp-risk-0-{i}"] for i in range(len(BREAKS))] == want


def test_km_legend_above_the_curves_and_p_value_inside(page, browser):
    session, _, figures = page
    boxes = browser.evaluate(session, """Array.from(document.querySelectorAll('figure[id^="km_"] svg.plot')).map(s => {
        const g = id => { const e = s.querySelector(`g[id$="-${id}"]`); if (!e) return null;
                          const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
        return {legend: g('tp-legend'), axes: g('tp-axes'), p: g('tp-pvalue')}; })""")
    assert len(boxes) == len(_km(figures))
    with_p = 0
    for b in boxes:
        assert b["legend"] and b["axes"]
        assert b["legend"][3] <= b["axes"][1] + 0.5            # legend bottom above the plot area's top
        if b["p"]:
            with_p += 1
            p, a = b["p"], b["axes"]
            assert a[0] <= p[0] and p[2] <= a[2] + 0.5 and a[1] <= p[1] and p[3] <= a[3] + 0.5
    assert with_p == len(boxes) - 2                            # every grouped figure, not the whole-cohort ones


def _rows(figure):
    """The forest figure's text rows: y centre (rounded) -> texts left to right."""
    rows: list[list] = []
    for t in sorted(figure["texts"], key=lambda t: (t["top"] + t["bottom"]) / 2):
        y = (t["top"] + t["bottom"]) / 2
        if rows and y - rows[-1][0] < 3:   # same baseline within 3 px (italic and upright text differ a little)
            rows[-1][1].append(t)
        else:
            rows.append([y, [t]])
    return {y: [t["text"] for t in sorted(ts, key=lambda t: t["left"])] for y, ts in rows}


@pytest.mark.parametrize("model", ["univariable", "multivariable"])
def test_forest_reference_rows_n_and_text_columns_from_the_cox_table(bio, page, browser, model):
    out, _ = bio
    session, _, figures = page
    cox = pd.read_csv(out / f"cox_{model}.csv")
    for endpoint in ("pfs", "os"):
        fig = figures[f"forest_{model}_{endpoint}"]
        lines = list(_rows(fig).values())
        texts = [t["text"] for t in fig["texts"]]
        assert {"Marker", "Level / unit", "N", "HR (95% CI)", "p"} <= set(texts)
        table = cox[(cox.endpoint == endpoint) & (cox.coding != "covariate")]
        dich = table[table.coding == "dichotomized"]
        assert texts.count("reference") == len(dich) == len(MARKERS)
        for r in table.itertuples():
            hr = fmt_hr_ci(r.hr, r.hr_ci_low, r.hr_ci_high)
            row = next(line for line in lines if hr in line)
            assert row[-1] == fmt_p(r.p)
            if r.coding == "continuous":
                assert str(int(r.n)) in row
            else:  # the compared level (> cut) with its N, just below the reference level (<= cut) with its N
                assert row[-3] == str(int(r.n_high)) and row[-4].startswith("> ")
                ref = lines[lines.index(row) - 1]
                assert ref[-1] == "reference" and ref[-2] == str(int(r.n_low)) and ref[-3].startswith("≤ ")
                assert int(r.n_low) + int(r.n_high) == int(r.n)
        # continuous and dichotomised in separate panels (own axes), continuous first
        panels = browser.evaluate(session, f"""Array.from(document.querySelectorAll('#forest_{model}_{endpoint} g[id*="-tp-panel-"]'))
            .map(g => {{ const r = g.getBoundingClientRect(); return [g.id.split('-tp-panel-')[1], r.top, r.bottom]; }})""")
        assert [p[0] for p in panels] == ["continuous", "dichotomized"] and panels[0][2] <= panels[1][1]
        headings = [t["text"] for t in fig["texts"] if t["gid"].startswith("tp-heading-")]
        assert headings[0].startswith("Continuous") and headings[1].startswith("Dichotomised")


def test_forest_text_readable(page):
    _, _, figures = page
    for fid, f in _forest(figures).items():
        assert min(t["px"] for t in f["texts"] if t["text"].strip()) >= 10.0, fid
        assert not any("_pct_of_" in t["text"] for t in f["texts"]), fid   # readable names, not snake_case


def test_every_figure_exported_as_svg_and_pdf_page(bio, page):
    pypdf = pytest.importorskip("pypdf")
    out, _ = bio
    _, _, figures = page
    exported = {p.stem for p in (out / "figures").glob("*.svg")}
    assert set(figures) <= exported
    for name in ("km_pfs_all", "forest_univariable_pfs"):
        text = (out / "figures" / f"{name}.svg").read_text()
        assert text.lstrip().startswith("<?xml") and "<text" in text   # text kept as text
    reader = pypdf.PdfReader(io.BytesIO((out / "figures.pdf").read_bytes()))
    assert len(reader.pages) == len(exported)
    assert any("HR (95% CI)" in p.extract_text().replace("\x00", "") for p in reader.pages)   # Type 42 text


def test_shared_style_tables_not_cut_off_and_provenance_footer(bio, page, browser):
    out, res = bio
    session, _, _ = page
    style = browser.evaluate(session, "[getComputedStyle(document.body).fontSize, getComputedStyle(document.body).fontFamily]")
    assert style[0] == "13px" and "DejaVu Sans" in style[1]        # the product reports' stylesheet
    wraps = browser.evaluate(session, """Array.from(document.querySelectorAll('#tables ~ .table-wrap')).map(w => {
        const t = w.querySelector('table'); return [t.id, t.tBodies[0].rows.length, w.clientHeight >= t.offsetHeight - 1,
        getComputedStyle(w).maxHeight, t.rows.length > 1 ? getComputedStyle(t.rows[1].cells[0]).position : '']; })""")
    rows = {w[0]: w[1] for w in wraps}
    assert all(w[2] and w[3] == "none" for w in wraps)            # every row shown: no fixed-height box
    assert all(w[4] == "sticky" for w in wraps if w[1])           # the first column stays while scrolling sideways
    assert rows["table4-table"] == len(pd.read_csv(out / "cox_univariable.csv"))
    footer = browser.evaluate(session, """Object.fromEntries(Array.from(document.querySelectorAll('#provenance tr')).map(
        (r, i) => [r.cells[0].textContent + (r.cells[0].textContent === 'input' ? i : ''), r.cells[1].textContent]))""")
    run = json.loads((out / "run.json").read_text())
    from tilpheno import __version__

    assert footer["tilpheno"] == __version__ == run["tilpheno_version"]
    assert footer["command"].startswith("tilpheno biomarkers --phenotypes") and run["command_line"][1] == "biomarkers"
    inputs = [v for k, v in footer.items() if k.startswith("input")]
    for path in (PHENOTYPES, OUTCOMES):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"{path} (SHA-256 {digest})" in inputs
        assert {"path": str(path), "sha256": digest, "role": "input"} in run["inputs"]


def test_km_ci_bands_and_median_lines_at_the_km_csv_median(bio, page, browser):
    """Every curve has its CI band; the dashed median line ends at km.csv's median (x mapped through the
    positions of the break-time tick labels), and is absent when the median is not reached."""
    out, _ = bio
    session, _, figures = page
    km = pd.read_csv(out / "km.csv")
    found = browser.evaluate(session, """Array.from(document.querySelectorAll('figure[id^="km_"]')).map(fig => {
        const svg = fig.querySelector('svg.plot'), part = id => svg.querySelector(`g[id$="-${id}"]`);
        const curves = Array.from(svg.querySelectorAll('g[id*="-tp-curve-"]')).map(g => g.id.split('-tp-curve-')[1]);
        const ticks = Array.from(svg.querySelectorAll('text')).filter(t => !t.closest('g[id]') || !t.closest('g[id]').id.includes('tp-'))
            .map(t => { const r = t.getBoundingClientRect(); return [t.textContent, (r.left + r.right) / 2, r.top]; });
        return {id: fig.id, curves: curves.map(c => ({ci: !!part('tp-ci-' + c), median: part('tp-median-' + c) ?
            part('tp-median-' + c).getBoundingClientRect().right : null})), ticks: ticks}; })""")
    assert len(found) == len(_km(figures))
    checked = 0
    for f in found:
        endpoint = f["id"].split("_")[1]
        rows = km[km.endpoint == endpoint]
        if f["id"].endswith("_all"):
            rows = rows[rows.grouping == "all"]
        else:
            marker_method = f["id"][len(f"km_{endpoint}_"):]
            rows = rows[rows.grouping.str.replace(":", "_") == marker_method]
        rows = rows.set_index("group").reindex(["all"] if f["id"].endswith("_all") else ["low", "high"])
        assert len(f["curves"]) == len(rows) and all(c["ci"] for c in f["curves"]), f["id"]
        # x axis: the break-time tick labels (the lowest row of numbers that match the breaks, under the plot)
        xticks = {}
        for text, x, top in f["ticks"]:
            if text in {str(b) for b in BREAKS}:
                xticks.setdefault(float(text), (x, top))
        (t0, (x0, _)), (t1, (x1, _)) = min(xticks.items()), max(xticks.items())
        for curve, median in zip(f["curves"], rows["median"]):
            if pd.isna(median):
                assert curve["median"] is None, f["id"]
            else:
                assert curve["median"] == pytest.approx(x0 + (median - t0) * (x1 - x0) / (t1 - t0), abs=1.5), f["id"]
                checked += 1
    assert checked >= 4


def test_html_rounded_for_reading_csv_at_full_precision(bio, page, browser):
    """The page's Cox table: HR to 4 significant digits, p by fmt_p, doses in 10⁹; the CSV holds the exact floats."""
    from tilpheno.biomarkers.formatting import cell, dose, sig

    out, res = bio
    session, _, _ = page
    csv = pd.read_csv(out / "cox_univariable.csv", float_precision="round_trip")
    assert (csv["hr"].to_numpy() == res.cox_univariable["hr"].to_numpy(float)).all()   # every digit kept
    table = browser.evaluate(session, """(() => { const t = document.getElementById('table4-table');
        return {head: Array.from(t.tHead.rows[0].cells).map(c => c.textContent),
                rows: Array.from(t.tBodies[0].rows).map(r => Array.from(r.cells).map(c => c.textContent))}; })()""")
    col = {h: i for i, h in enumerate(table["head"])}
    assert len(table["rows"]) == len(csv)
    for shown, rec in zip(table["rows"], csv.itertuples()):
        assert shown[col["hr"]] == sig(rec.hr, 4) and shown[col["p"]] == fmt_p(rec.p)
        assert shown[col["cut"]] == (dose(rec.cut) if rec.variable.endswith("_dose_cells") else cell("cut", rec.cut))
        readable = [v for h, v in zip(table["head"], shown) if h != "max_scaled_score"]   # a convergence diagnostic
        assert not any("e+" in v or "e-" in v for v in readable), shown   # no scientific notation for readers
        assert len(shown[col["hr"]].replace(".", "").lstrip("0")) <= 4
    km = browser.evaluate(session, """(() => { const t = document.getElementById('table1-table');
        const head = Array.from(t.tHead.rows[0].cells).map(c => c.textContent);
        return Array.from(t.tBodies[0].rows).map(r => r.cells[head.indexOf('rate_12m')].textContent); })()""")
    assert km and all(v.endswith(" %") or v == "–" for v in km)          # rates as %
