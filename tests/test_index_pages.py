"""The cohort index in pages for thousands of products: script-free links, whole-cohort counts."""
import re

from tilpheno.pipeline import ProcessOptions, ProductOutcome, product_slug
from tilpheno.release import DEFAULT_SPEC, evaluate, overall
from tilpheno.report.html import SORTER_JS, csp, render_index, render_index_pages


def _outcome(i: int) -> ProductOutcome:
    pid = f"TIL{i:05d}"
    phen = {"product_id": pid, "viability_pct": 60.0 + i % 40, "cd3_pct_of_live_lymph": 95.0, "qc_status": "ok"}
    rel = evaluate(DEFAULT_SPEC, phen)
    return ProductOutcome(pid, product_slug(pid), True, "", phen, None, [], rel, overall(rel), [])


def test_pages_split_the_cohort_and_link_each_other():
    outcomes = [_outcome(i) for i in range(7)]
    pages = render_index_pages(outcomes, ProcessOptions(), page_rows=3)
    assert [name for name, _ in pages] == ["index.html", "index-2.html", "index-3.html"]
    released = sum(o.release_status == "pass" for o in outcomes)
    seen = []
    for number, (name, page) in enumerate(pages, start=1):
        ids = re.findall(r'<a href="products/(TIL\d+)/report.html">', page)
        seen += ids
        assert len(ids) == (3 if number < 3 else 1)
        verb = "meets" if released == 1 else "meet"
        assert "<title>TIL infusion products, cohort index: 7 products</title>" in page and f"{released} {verb} the release spec" in page
        assert f"Products {3 * number - 2}–{3 * number - 2 + len(ids) - 1} of 7" in page
        assert f'<strong aria-current="page">{number}</strong>' in page
        assert all(f'<a href="{other}">' in page for other, _ in pages if other != name)
        # still one script, the hashed sorter: the links need none
        assert page.count("<script>") == 1 and re.search(r"'(sha256-[^']+)'", csp(SORTER_JS)).group(1) in page
    assert seen == [o.product_id for o in outcomes]


def test_one_page_has_no_navigation_and_equals_render_index():
    outcomes = [_outcome(i) for i in range(3)]
    pages = render_index_pages(outcomes, ProcessOptions(), page_rows=3)
    assert len(pages) == 1 and 'class="pages"' not in pages[0][1]
    assert pages[0][1] == render_index(outcomes, ProcessOptions())
