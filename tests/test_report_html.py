"""Cohort index and HTML helpers: escaping, CSP, the inline sorter (in headless Chromium)."""
import html
import re

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
