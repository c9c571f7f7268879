"""HTML rendering: the per-product report and the cohort index, from Jinja2 templates.

Safety: autoescaping is ON for every template (input-derived strings - keywords, file names,
channel names, manifest values - are always escaped). Pages are self-contained (images inline as
``data:`` URIs, CSS inline) and carry a Content-Security-Policy that allows no network access,
no plugins and, in the index, only the one inline sorter script whose SHA-256 is in the policy;
the product report allows no script at all. An injected ``<script>`` could therefore not run
even if escaping failed.
"""
from __future__ import annotations

import base64
import hashlib
import math
import re
from functools import lru_cache
from typing import Sequence

from tilpheno.release import NOT_APPLICABLE

SORTER_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var rows = Array.prototype.slice.call(body.rows);
      var key = function (row) {
        var cell = row.cells[col];
        var raw = cell.getAttribute("data-sort");
        var text = raw !== null ? raw : cell.textContent.trim();
        var num = parseFloat(text);
        return (text !== "" && !isNaN(num) && isFinite(text)) ? [0, num] : [1, text.toLowerCase()];
      };
      rows.sort(function (a, b) {
        var ka = key(a), kb = key(b);
        var c = ka[0] - kb[0] || (ka[1] < kb[1] ? -1 : ka[1] > kb[1] ? 1 : 0);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
""".strip()


def _script_hash(js: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode("ascii")


def csp(script: str | None) -> str:
    """The page's Content-Security-Policy: inline CSS and data: images only; ``script`` by hash."""
    script_src = f"'{_script_hash(script)}'" if script else "'none'"
    return (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src {script_src}; base-uri 'none'; form-action 'none'"
    )


def fmt(value, digits: int = 2) -> str:
    """Numbers to ``digits`` decimals (integers as is), NaN/None as an empty string, text unchanged."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(f):
        return ""
    if f.is_integer() and abs(f) >= 1e5:
        return f"{f:.0f}"
    return f"{f:.{digits}f}"


_NUMERIC = re.compile(r"^[-+−]?\d[\d,]*(\.\d+)?(e[-+]?\d+)?%?$")


def css_string(value) -> str:
    """``value`` for a CSS string literal inside ``<style>``: every character outside
    ``[A-Za-z0-9 _.,:()%+-]`` as a six-digit CSS escape (so no quote, backslash, ``<`` or newline
    can end the string or the style element). Marked safe: HTML escaping would not apply there."""
    from markupsafe import Markup

    ok = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _.,:()%+-")
    return Markup("".join(ch if ch in ok else f"\\{ord(ch):06x}" for ch in str(value)))


def _shown(value):
    """Every value a template prints: text with a file name that is not UTF-8 (surrogate escapes)
    shows it as ``\\xNN`` (``io.files.display_name``), so the page can be written as UTF-8; markup
    stays markup."""
    from markupsafe import Markup

    from tilpheno.io.files import display_name

    if not isinstance(value, str):
        return value
    shown = display_name(value)
    return Markup(shown) if isinstance(value, Markup) else shown


def identifier(name) -> str:
    """``name`` (a column or variable identifier, shown as :func:`_shown` shows text) escaped, with a
    line-break opportunity after each ``_`` (markup): a narrow cell wraps ``cd3_pct_of_`` /
    ``live_lymph``, not ``cd3_pct_of_l`` / ``ive_lymph`` (the ``ident`` style breaks nowhere else)."""
    from markupsafe import Markup, escape

    return Markup("_<wbr>").join(escape(part) for part in str(_shown(str(name))).split("_"))


@lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment over ``tilpheno/report/templates`` (package data), autoescape on."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("tilpheno.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.finalize = _shown
    env.filters["fmt"] = fmt
    env.filters["css_string"] = css_string
    env.filters["identifier"] = identifier
    env.tests["numeric"] = lambda v: bool(_NUMERIC.match(str(v)))
    return env


PRODUCT_TEMPLATES = ("product.html.j2", "_style.css.j2")
"""The templates of a product's report (the page and the style sheet it includes)."""
INDEX_TEMPLATES = ("index.html.j2", "_style.css.j2")
"""The templates of a run's index pages (:func:`render_index_pages`)."""


def compile_templates(names: Sequence[str] = PRODUCT_TEMPLATES) -> None:
    """Compile ``names`` into :func:`environment`'s cache now (Jinja2 parses each template and
    generates its Python code once per process: 24 ms of CPU for the product report's), so that a
    process forked from this one, or its later reports, render them without compiling them again."""
    env = environment()
    for name in names:
        env.get_template(name)


def render(template: str, *, script: str | None = None, **context) -> str:
    """Render ``template`` with ``context``; the CSP (and the sorter, when ``script``) are added."""
    return environment().get_template(template).render(csp=csp(script), script=script, **context)


def failed_criteria(release: Sequence) -> list[str]:
    """Each release criterion a product did not pass, in words: ``"CD3+ T cells: 87.82 (needs > 90 % of
    live lymphocytes)"``, ``"Viability: not evaluable (no value)"``; and each a review flag holds
    (``held_by``), passing or not, saying so: ``"CD3+ T cells: 92.48 (needs > 90 % of live
    lymphocytes; awaits review of no_second_peak (CD3+))"``; one on an optional tube kind the product
    has no file of: ``"Events acquired (mln stained file): not applicable (no mln tube; optional)"``."""
    out = []
    for r in release:
        if r.outcome == "pass" and not r.held_by:
            continue
        if r.outcome == NOT_APPLICABLE:
            out.append(f"{r.criterion.name}: {r.result()}")
            continue
        value, need = r.shown(), r.needs()
        if r.held_by:
            need += f"; awaits review of {', '.join(r.held_by)}"
        out.append(f"{r.criterion.name}: {value} ({need})" if value else f"{r.criterion.name}: {r.outcome} (no value; {need})")
    return out


def review_hold(outcome) -> str:
    """Why a usable product's release is ``not evaluable`` though every release criterion passed and
    no review flag holds one (a flag on a gate no criterion reads: release waits for the review all
    the same, ``tilpheno.pipeline.release``), in words: ``"2 flags need review (first: PD1+: missing_fmo)"``;
    "" otherwise (a criterion not passed or held names the reason itself: :func:`failed_criteria`)."""
    from tilpheno.qc import needs_review
    from tilpheno.release import NOT_EVALUABLE

    review = [f for f in outcome.qc if needs_review(f)]
    if (not outcome.ok or outcome.release_status != NOT_EVALUABLE or not outcome.release or not review
            or failed_criteria(outcome.release)):
        return ""
    first = review[0]
    many = len(review) > 1
    return (f"{len(review)} flag{'s' if many else ''} need{'' if many else 's'} review "
            f"(first: {f'{first.gate}: ' if first.gate else ''}{first.code})")


def _has_report(outcome, options) -> bool:
    """Whether the product's report was published (``has_report``; unset: as ``options.make_reports``)."""
    has = getattr(outcome, "has_report", None)
    return options.make_reports if has is None else bool(has)


def index_columns(outcomes: Sequence, strategies: Sequence = (), study=None) -> list[str]:
    """The index's value columns: the study's ``index_columns`` present in the outcomes (the TIL
    study's variables and ``n_events_total``); without them the strategies' study variables (in
    strategy order) present, then ``n_events_total``; without strategies every ``*_pct*`` column."""
    present: dict[str, None] = {}
    for o in outcomes:
        present.update(dict.fromkeys(o.phenotype))
    if study is not None and study.index_columns:
        columns = [c for c in study.index_columns if c in present or c == "n_events_total"]
        return columns if "n_events_total" in columns else columns + ["n_events_total"]
    if strategies:
        wanted = [v.name for st in strategies for v in st.variables]
    else:
        wanted = [c for c in present if "_pct" in c]
    return [c for c in dict.fromkeys(wanted) if c in present] + ["n_events_total"]


INDEX_PAGE_ROWS = 500
"""Products per index page: a cohort of thousands gets ``index.html`` (page 1), ``index-2.html``, ...
each a static, script-light page (the sorter orders one page; ``phenotypes.csv`` holds them all)."""


def index_page_name(number: int) -> str:
    """``index.html`` for page 1, ``index-<n>.html`` after it."""
    return "index.html" if number == 1 else f"index-{number}.html"


def render_index(outcomes: Sequence, options, strategies: Sequence = (), run_flags: Sequence = ()) -> str:
    """The cohort page (the first one when there are more than ``INDEX_PAGE_ROWS`` products)."""
    return render_index_pages(outcomes, options, strategies, run_flags=run_flags)[0][1]


def render_index_pages(outcomes: Sequence, options, strategies: Sequence = (),
                       page_rows: int = INDEX_PAGE_ROWS, run_flags: Sequence = ()) -> list[tuple[str, str]]:
    """The cohort index as ``(file name, HTML)`` pages of ``page_rows`` products each, in the
    outcomes' order (by id): one sortable row per product, linking to its report.

    Headers are the codebook's labels (``tilpheno.report.codebook``), the column name in a tooltip;
    each product not released lists the criteria it failed, each that needs review the flags that
    hold it and the gates they name (:func:`tilpheno.qc.review_reasons`); the product column stays in view
    while the table scrolls sideways. With more than one page, each page names its range of
    products and links every page (plain links, no script); the counts are the whole cohort's.
    ``run_flags``: the QC flags of the run itself (product_id '': ``no_dose``, ``unmatched_outcome``,
    ``unlistable_folder``, ...) as qc.csv's rows without a product show them (mappings or objects with
    ``severity``, ``code``, ``file``, ``message``), listed on every page above the table, so that a
    run that was not clean does not read as one.
    """
    from tilpheno.report.codebook import build_codebook

    columns = index_columns(outcomes, strategies, getattr(options, "study", None))
    book = build_codebook({"phenotypes.csv": columns}, strategies, options.fmo_percentile,
                          getattr(options, "study", None)).set_index("column")
    study = study_of(options)
    headers = [{"column": c, "label": book.at[c, "label"], "title": f"{c}: {study.with_noun(book.at[c, 'meaning'])}"
                + (f" ({book.at[c, 'unit']})" if book.at[c, "unit"] else "")} for c in columns]
    n_failed = sum(1 for o in outcomes if not o.ok)
    n_released = sum(1 for o in outcomes if o.release_status == "pass")
    n_pages = max(1, math.ceil(len(outcomes) / page_rows))
    pages = []
    for number in range(1, n_pages + 1):
        first = (number - 1) * page_rows
        rows = [_index_row(o, options, columns) for o in outcomes[first:first + page_rows]]
        nav = None
        if n_pages > 1:
            nav = {"first": first + 1, "last": first + len(rows), "pages": [
                {"number": k, "href": index_page_name(k), "current": k == number} for k in range(1, n_pages + 1)]}
        pages.append((index_page_name(number), render(
            "index.html.j2", script=SORTER_JS, rows=rows, headers=headers, n_failed=n_failed,
            n_released=n_released, spec=options.release_spec, provenance=options.provenance_short,
            n_products=len(outcomes), nav=nav, product_label=study.product_label, noun=study.product_noun,
            run_flags=list(run_flags),
        )))
    return pages


def study_of(options):
    """The run's study (``options.study``), else the bundled one."""
    from tilpheno.study import default_study

    return getattr(options, "study", None) or default_study()


def _index_row(o, options, columns) -> dict:
    from tilpheno.qc import review_reasons

    return {
        "product_id": o.product_id,
        "href": f"products/{o.slug}/report.html" if _has_report(o, options) else None,
        "status": "done" if o.ok else "failed",
        "error": o.error,
        "release": o.release_status,
        "reasons": failed_criteria(o.release) or [r for r in (review_hold(o),) if r],
        "qc": o.phenotype.get("qc_status", ""),
        "review": o.phenotype.get("review_status", ""),
        "review_reasons": review_reasons(o.qc),
        "n_flags": len(o.qc),
        "cells": [o.phenotype.get(c) for c in columns],
    }
