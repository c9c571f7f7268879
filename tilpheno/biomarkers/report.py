"""report.html for the biomarker analysis: figures (inline SVG, also exported as figures/*.svg and
figures.pdf), tables rounded for reading (machine tables keep full precision), methods, REMARK
checklist and provenance.

Every value from the inputs is escaped: the page is rendered by jinja2 with autoescape on
and no value is marked safe except the inline SVG figures this module draws itself (matplotlib
escapes their text; ``report.plots._svg`` drops <style> and metadata and prefixes ids).
"""
from __future__ import annotations

import functools
import io
import math
import re
from typing import Any, Literal
from pathlib import Path

import numpy as np
import pandas as pd

from .cohort import ENDPOINTS, endpoint_cohort
from .codebook import COLUMNS as CODEBOOK_COLUMNS
from .formatting import cell, dose, fmt_hr_ci, fmt_level, fmt_p, is_dose, sig, whole_number_columns
from .survival import KaplanMeier

TEMPLATE_DIR = Path(__file__).parent / "templates"
ENDPOINT_NAMES = {"pfs": "Progression-free survival", "os": "Overall survival"}
ENDPOINT_YLABEL = {"pfs": "progression-free probability", "os": "survival probability"}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _plain(text: str) -> str:
    """Text for matplotlib with '$' escaped, so names from the inputs are never parsed as mathtext."""
    return str(text).replace("$", r"\$")


class FigureExport:
    """Collects each figure as SVG bytes and, with ``pdf=True``, as a page of one PDF. Both are
    the same bytes for the same figures: no creation date (matplotlib writes the local time) and
    SVG ids from a fixed salt (``matplotlib_rc``), not random ones."""

    def __init__(self, pdf: bool = False):
        from matplotlib.backends.backend_pdf import PdfPages

        self.svgs: list[tuple[str, bytes]] = []
        self._pdf_buffer = io.BytesIO()
        self._pdf = PdfPages(self._pdf_buffer, metadata={"CreationDate": None}) if pdf else None

    def add(self, name: str, svg: bytes, fig, box) -> None:
        """``svg``: the figure's exported file, drawn and cropped to ``box`` (its tight box, a ``Bbox`` in
        inches: ``_drawn_svg``). The PDF page is the same drawing's layout cropped to the same box: the figure's
        layout engine is turned off first (the SVG drawing ran it), so the page is drawn once, with no dry
        drawing and no layout of its own."""
        self.svgs.append((name, svg))
        if self._pdf is not None:
            fig.set_layout_engine(None)
            with matplotlib_rc():
                self._pdf.savefig(fig, bbox_inches=box)

    def pdf_bytes(self) -> bytes | None:
        if self._pdf is None:
            return None
        self._pdf.close()
        return self._pdf_buffer.getvalue()


def _short(value: float) -> str:
    """A length as matplotlib's SVG writer prints it (``%f`` without trailing zeros)."""
    return f"{value:f}".rstrip("0").rstrip(".")


def _drawn_svg(fig) -> tuple[str, Any]:
    """``fig`` drawn once as an SVG document, the bytes ``savefig(format="svg", metadata={"Date": None})`` writes
    (matplotlib's print_svg: an SVG canvas, 72 dpi, SVG user units = points, the layout engine run at the start
    of the drawing with the SVG writer's text metrics), and its tight box: the ``Bbox`` in inches that
    ``savefig(bbox_inches="tight")`` crops to (``get_tightbbox`` padded by ``savefig.pad_inches``), measured with
    the drawing's own renderer (its text metrics cached) instead of a second, dry drawing."""
    import matplotlib
    from matplotlib.backends.backend_mixed import MixedModeRenderer
    from matplotlib.backends.backend_svg import FigureCanvasSVG, RendererSVG

    buf = io.StringIO()
    canvas, dpi = fig.canvas, fig.dpi
    FigureCanvasSVG(fig)   # the figure's canvas while it is drawn: the layout engine measures text with it
    fig.dpi = 72
    try:
        width, height = fig.get_size_inches()
        renderer = MixedModeRenderer(fig, width, height, dpi,
                                     RendererSVG(width * 72, height * 72, buf, image_dpi=dpi, metadata={"Date": None}))
        fig.draw(renderer)
        renderer.finalize()
        box = fig.get_tightbbox(renderer).padded(matplotlib.rcParams["savefig.pad_inches"])
    finally:
        fig.dpi = dpi
        fig.set_canvas(canvas)
    return buf.getvalue(), box


_SVG_ROOT_SIZE = re.compile(r'(<svg[^>]*?) width="[^"]*" height="[^"]*" viewBox="[^"]*"')
_FIGURE_PATCH = re.compile(r'(<g id="patch_1">\s*<path d=")[^"]*"')


def _cropped(document: str, box, height_in: float) -> str:
    """The SVG document of a whole figure (``_drawn_svg``) showing only ``box`` (inches from the figure's bottom
    left), as ``savefig(bbox_inches="tight")`` writes it: the document's size is the box's, in points, its
    viewBox the box in the drawing's user units (points from the figure's top left), and the figure's
    background (its first patch) fills the box, as matplotlib's tight drawing moves it (the box reaches past the
    figure by the padding). The paths and texts are the whole figure's, at its own coordinates."""
    x0, y0 = _short(72 * box.x0), _short(72 * (height_in - box.y1))
    x1, y1 = _short(72 * box.x1), _short(72 * (height_in - box.y0))
    w, h = _short(72 * box.width), _short(72 * box.height)
    document = _SVG_ROOT_SIZE.sub(lambda m: f'{m.group(1)} width="{w}pt" height="{h}pt" viewBox="{x0} {y0} {w} {h}"',
                                  document, count=1)
    return _FIGURE_PATCH.sub(lambda m: f'{m.group(1)}M {x0} {y1} \nL {x1} {y1} \nL {x1} {y0} \nL {x0} {y0} \nz\n"',
                             document, count=1)


def _svg(fig, alt: str, export: FigureExport | None = None, name: str | None = None) -> dict:
    """The figure for the page: ``{"svg": inline <svg> markup, "width": natural width in CSS px}``
    (``report.plots`` conventions: text kept as text, ids prefixed, no <style>); added to ``export``
    as a standalone SVG file (and a PDF page) when given. The figure is drawn once for both: the page
    shows the whole figure, the file the same drawing cropped to its tight box (``_cropped``). The
    figure is closed."""
    import matplotlib.pyplot as plt

    from tilpheno.report.plots import inline_svg

    with matplotlib_rc():
        document, box = _drawn_svg(fig)
    if export is not None and name:
        export.add(name, _cropped(document, box, fig.get_figheight()).encode("utf-8"), fig, box)
    width_px = fig.get_figwidth() * 96
    plt.close(fig)
    return {"svg": inline_svg(document, alt), "width": round(width_px)}


def matplotlib_rc():
    import matplotlib

    return matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "tilpheno", "font.size": 9, "axes.titlesize": 10,
                                  "axes.labelsize": 9, "legend.fontsize": 8, "pdf.fonttype": 42})


def _risk_ticks(max_time: float) -> np.ndarray:
    step = max(1.0, 10 ** math.floor(math.log10(max(max_time, 1.0) / 4)))
    for mult in (1, 2, 2.5, 5, 10):
        if max_time / (step * mult) <= 6:
            step *= mult
            break
    return np.arange(0, max_time + 1e-9, step)


RISK_FONT = 9.0  # numbers-at-risk text, points (12 CSS px at the figure's natural size)


def km_figure(curves: list[tuple[str, np.ndarray, np.ndarray]], title: str, ylabel: str, settings,
              p_text: str = "", breaks=None):
    """Survminer-style figure: step curves with CI bands, censoring ticks, dashed median lines,
    the p-value on the plot, the legend above the plot (never over a curve) and a numbers-at-risk
    table under the x axis at the break times.

    What tests and readers look for carries ids: ``tp-legend``, ``tp-axes`` (the plot area),
    ``tp-pvalue``, ``tp-risk-<curve>-<break>``, ``tp-curve-<curve>``, ``tp-ci-<curve>``, ``tp-median-<curve>``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fits = [KaplanMeier(settings.conf_type, settings.conf_level).fit(t, e, label) for label, t, e in curves]
    tmax = max(float(np.max(t)) for _, t, _ in curves)
    ticks = np.asarray(breaks, dtype=float) if breaks is not None else _risk_ticks(tmax)
    ticks = ticks[ticks <= max(tmax, ticks[0])] if ticks.size else _risk_ticks(tmax)
    with matplotlib_rc():
        fig = plt.figure(figsize=(6.0, 4.3 + 0.25 * len(fits)), layout="constrained")
        gs = fig.add_gridspec(2, 1, height_ratios=[4.0, 0.5 + 0.32 * len(fits)])
        ax = fig.add_subplot(gs[0])
        tab = fig.add_subplot(gs[1], sharex=ax)
        ax.patch.set_gid("tp-axes")
        for row, (fit, color) in enumerate(zip(fits, COLORS)):
            fit.plot(ax, color=color, ci=True).set_gid(f"tp-curve-{row}")
            ax.collections[-1].set_gid(f"tp-ci-{row}")   # the CI band fit.plot just drew
            med = fit.median().estimate
            if np.isfinite(med):
                ax.plot([0, med, med], [0.5, 0.5, 0], ls="--", lw=0.8, color=color, gid=f"tp-median-{row}")
            y = len(fits) - row
            for i, (tick, n) in enumerate(zip(ticks, fit.at_risk(ticks))):
                tab.text(tick, y, str(n), ha="center", va="center", fontsize=RISK_FONT, gid=f"tp-risk-{row}-{i}")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(0, max(ticks[-1], tmax, 1.0) * 1.02)   # every time 0: a month wide, not a singular axis
        ax.set_xticks(ticks)
        ax.tick_params(labelbottom=True)
        ax.set_xlabel("months")
        ax.set_ylabel(ylabel)
        fig.suptitle(_plain(title), x=0.02, ha="left", fontsize=10)
        ax.grid(alpha=0.2)
        legend = ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), frameon=False, ncol=len(fits),
                           borderaxespad=0.2, handlelength=1.6, columnspacing=1.2)
        legend.set_gid("tp-legend")
        if p_text:
            _place_p_text(ax, fits, p_text)
        tab.set_ylim(0.4, len(fits) + 0.6)
        tab.set_yticks([len(fits) - i for i in range(len(fits))])
        tab.set_yticklabels([_plain(f.label) for f in fits], fontsize=RISK_FONT)
        for label, color in zip(tab.get_yticklabels(), COLORS):
            label.set_color(color)
        tab.tick_params(labelbottom=False, bottom=False, left=False, pad=14)  # clear of the numbers at 0
        for side in ("top", "right", "left", "bottom"):
            tab.spines[side].set_visible(False)
        tab.set_title("Number at risk", fontsize=RISK_FONT, loc="left")
    return fig


P_CORNERS: tuple[tuple[float, float, Literal["left", "right"], Literal["bottom", "top", "center"]], ...] = (
    (0.02, 0.03, "left", "bottom"), (0.98, 0.97, "right", "top"), (0.98, 0.5, "right", "center"))
"""Where the p text may go, in order of preference: (x, y) in axes fractions and its alignment."""


def _curve_cloud(ax, fits) -> np.ndarray:
    """Points along the curves, their bands and median lines, in axes fractions (x over the axis limits, y over
    0-1.02): what the p text should cover least. Independent of the figure's layout."""
    x0, x1 = ax.get_xlim()
    grid = np.linspace(x0, x1, 200)
    points = []
    for fit in fits:
        table = fit.table_
        idx = np.searchsorted(table.time.to_numpy(float), grid, side="right") - 1
        for column in ("surv", "lower", "upper"):
            values = np.r_[1.0, table[column].to_numpy(float)][idx + 1]
            points.append(np.c_[(grid - x0) / (x1 - x0), values / 1.02])
        med = fit.median().estimate
        if np.isfinite(med):
            ys = np.linspace(0, 0.5, 50)
            points.append(np.c_[np.full(50, (med - x0) / (x1 - x0)), ys / 1.02])
            xs = np.linspace(x0, med, 50)
            points.append(np.c_[(xs - x0) / (x1 - x0), np.full(50, 0.5 / 1.02)])
    cloud = np.vstack(points)
    return cloud[np.isfinite(cloud).all(axis=1)]


@functools.cache
def _p_text_class():
    """The p text's artist class (matplotlib imported when a figure is drawn, not with this module)."""
    from matplotlib.text import Text

    class PValueText(Text):
        """The p-value text, placed at its first drawing in the corner of ``P_CORNERS`` covering the fewest
        points of ``cloud`` (axes fractions): the layout engine has sized the axes by then, in the drawing's
        own text metrics, so no drawing of its own is needed. Later drawings (the PDF page) keep the corner."""

        def __init__(self, ax, text: str, cloud: np.ndarray, **kwargs):
            x, y, ha, va = P_CORNERS[0]
            super().__init__(x, y, text, transform=ax.transAxes, clip_on=False, horizontalalignment=ha,
                             verticalalignment=va, **kwargs)
            self._ax = ax
            self._cloud = cloud
            self._placed = False

        def draw(self, renderer) -> None:
            if not self._placed:
                self._place(renderer)
            super().draw(renderer)

        def _place(self, renderer) -> None:
            best = None
            inverse, cloud = self._ax.transAxes.inverted(), self._cloud
            for x, y, ha, va in P_CORNERS:
                self.set_position((x, y))
                self.set_horizontalalignment(ha)
                self.set_verticalalignment(va)
                box = self.get_window_extent(renderer).transformed(inverse)
                inside = int(((cloud[:, 0] >= box.x0) & (cloud[:, 0] <= box.x1) & (cloud[:, 1] >= box.y0)
                              & (cloud[:, 1] <= box.y1)).sum())
                if best is None or inside < best[0]:
                    best = (inside, x, y, ha, va)
                if inside == 0:
                    break
            assert best is not None   # the loop above runs at least once
            _, x, y, ha, va = best
            self.set_position((x, y))
            self.set_horizontalalignment(ha)
            self.set_verticalalignment(va)
            self._placed = True

    return PValueText


def _place_p_text(ax, fits, text: str) -> None:
    """The p-value text in the corner of the plot where it covers the least of the curves, their
    bands and median lines (survminer puts it bottom left; a curve may run there); the corner is chosen when
    the figure is first drawn (``PValueText``)."""
    ax.add_artist(_p_text_class()(ax, text, _curve_cloud(ax, fits), fontsize=8.5, gid="tp-pvalue",
                                  bbox={"facecolor": "white", "edgecolor": "#cccccc", "alpha": 0.9,
                                        "boxstyle": "round,pad=0.3"}))


def km_figures(results, export: FigureExport | None = None) -> list[dict]:
    """The whole cohort per endpoint, then one figure per endpoint x marker x grouping."""
    settings = results.settings
    breaks = settings.break_times
    names = marker_labels(results.cohort.markers)
    figures = []
    for endpoint in settings.endpoints:
        tcol, ecol = ENDPOINTS[endpoint]
        cohort = endpoint_cohort(results.cohort, endpoint)   # its patients with the endpoint's time and event
        ylabel = ENDPOINT_YLABEL[endpoint]
        fig = km_figure([("all patients", cohort.outcomes[tcol].to_numpy(float), cohort.outcomes[ecol].to_numpy(float))],
                        f"{ENDPOINT_NAMES[endpoint]}: all patients", ylabel, settings, breaks=breaks)
        name = f"km_{endpoint}_all"
        title = f"{ENDPOINT_NAMES[endpoint]}, all patients"
        figures.append({"title": title, **_svg(fig, title, export, name), "id": name})
        cuts = results.cutpoints[results.cutpoints.endpoint == endpoint]
        for marker in cohort.markers:
            rows = cuts[cuts.marker == marker]
            d = cohort.data.dropna(subset=[marker])
            x, t, e = d[marker].to_numpy(float), d[tcol].to_numpy(float), d[ecol].to_numpy(float)
            for rec in rows.itertuples(index=False):
                low = x <= rec.cutpoint
                cut = fmt_cut(marker, rec.cutpoint)
                curves = [(f"low (≤ {cut})", t[low], e[low]), (f"high (> {cut})", t[~low], e[~low])]
                p_text = f"log-rank p = {fmt_p(rec.logrank_p)}"
                if rec.method == "maxstat":
                    p_text = (f"data-derived cut: raw p = {fmt_p(rec.p_raw)}\n"
                              f"corrected: permutation p = {fmt_p(rec.p_perm)}, Lau92 p = {fmt_p(rec.p_lau92)}")
                fig = km_figure([c for c in curves if c[1].size], f"{ENDPOINT_NAMES[endpoint]} by {names[marker]} "
                                f"({rec.method} cut)", ylabel, settings, p_text, breaks)
                name = f"km_{endpoint}_{_slug(marker)}_{rec.method}"
                title = f"{ENDPOINT_NAMES[endpoint]} by {names[marker]} ({marker}), {rec.method} cut"
                figures.append({"title": title, **_svg(fig, title, export, name), "id": name})
    return figures


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(text))[:60]


def fmt_cut(marker: str, value: float) -> str:
    return dose(value) if is_dose(marker) else sig(value, 4)


def marker_labels(markers) -> dict[str, str]:
    """Readable name of each marker column (the process codebook's label, e.g. "CD8+ % CD3+")."""
    from tilpheno.report.codebook import labels

    return labels(markers)


def _marker_unit(marker: str) -> str:
    """What one unit of a continuous marker's hazard ratio is, for the forest plot."""
    from tilpheno.report.codebook import build_codebook

    if is_dose(marker):
        return "per 10⁹ cells"
    unit = str(build_codebook({"": [marker]}).loc[0, "unit"])
    return "per 1 %-point" if unit.startswith("%") else "per 1 unit"


FOREST_ROW = 0.24      # inches per row
FOREST_COLUMNS: dict[str, Any] = {"marker": 0.012, "level": 0.215, "n": 0.415, "plot": (0.44, 0.715), "hr": 0.735, "p": 0.985}


def _forest_lines(part: pd.DataFrame, coding: str, names: dict[str, str]) -> list[dict[str, Any]]:
    """The rows of one forest panel: continuous markers one row each; a dichotomised marker its
    reference level (low, at or below the cut) then the compared level (high)."""
    lines = []
    for r in part.itertuples():
        count = (lambda v: str(int(v)) if pd.notna(v) else "–")
        est = (r.hr, r.hr_ci_low, r.hr_ci_high) if r.estimable else NOT_ESTIMABLE
        if coding == "continuous":
            lines.append(dict(marker=names.get(r.variable, r.variable), level=_marker_unit(r.variable), n=count(getattr(r, "n", None)),
                              est=est, p=getattr(r, "p", None), group=r.variable))
        else:
            cut = fmt_cut(r.variable, getattr(r, "cut", float("nan")))
            lines.append(dict(marker=names.get(r.variable, r.variable), level=f"≤ {cut} (low)",
                              n=count(getattr(r, "n_low", None)), est=None, p=None, group=r.variable))
            lines.append(dict(marker="", level=f"> {cut} (high)", n=count(getattr(r, "n_high", None)),
                              est=est, p=getattr(r, "p", None), group=r.variable))
    return lines


NOT_ESTIMABLE = "not estimable"
"""The forest plot's text for a model that could not be fitted (its reason: the Cox table's ``warning``)."""


def _forest_ticks(lo: float, hi: float) -> list[float]:
    """Log-axis ticks for an HR range: the round values (0.1, 0.2, 0.5, 1, 2, 5 ...) within it,
    finer ones (0.8, 1.25 ...) when fewer than three fall inside."""
    coarse = [v * 10.0 ** k for k in range(-3, 4) for v in (1, 2, 5)]
    fine = sorted(set(coarse) | {0.67, 0.8, 0.9, 1.1, 1.25, 1.5, 0.25, 4.0, 3.0, 0.33})
    for pool in (coarse, fine):
        ticks = [v for v in pool if lo <= v <= hi]
        if len(ticks) >= 3:
            return ticks
    return [v for v in fine if lo <= v <= hi] or [1.0]


def _thin_tick_labels(fig, ax) -> None:
    """Drop x tick labels that would overlap a neighbour (the label at 1 kept first)."""
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    keep = sorted(labels, key=lambda t: (abs(np.log(max(t.get_position()[0], 1e-12))), t.get_position()[0]))
    placed: list[Any] = []
    for t in keep:
        box = t.get_window_extent(renderer).expanded(1.15, 1.0)
        if any(box.overlaps(other) for other in placed):
            t.set_visible(False)
        else:
            placed.append(box)


def forest_figure(table: pd.DataFrame, title: str, export: FigureExport | None = None,
                  name: str | None = None, conf_level: float = 0.95) -> dict | None:
    """ggforest-style forest plot of the markers' hazard ratios from a Cox table (one endpoint, one
    model kind): per row the marker's readable name, its level or unit, N, the estimate and CI on a
    log axis, "HR (95% CI)" (at the table's ``conf_level``) and p as text. Continuous markers (HR per
    unit) and dichotomised ones (high vs the low level, shown as a "reference" row with its N) are
    separate panels with their own axes. A row whose model could not be fitted says "not estimable"
    (why: the table's ``warning``).
    Returns ``_svg``'s dict, or None when no row has an estimate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import FixedLocator, NullFormatter
    from matplotlib.transforms import blended_transform_factory

    rows = table[table.coding != "covariate"].copy()
    hr_columns = ["hr", "hr_ci_low", "hr_ci_high"]
    # a table whose models all failed (e.g. too few patients) holds only None: object dtype
    values = rows[hr_columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        estimable = np.isfinite(values).all(axis=1) & (values[:, 1] > 0)
    if not estimable.any():
        return None
    rows = rows.assign(**{c: values[:, k] for k, c in enumerate(hr_columns)}, estimable=estimable)
    names = marker_labels(rows.variable.unique())
    panels = [(c, _forest_lines(rows[rows.coding == c], c, names)) for c in ("continuous", "dichotomized")
              if (rows.coding == c).any()]
    head_in, title_in, axis_in = 0.62, 0.34, 0.62
    height = head_in + sum(title_in + FOREST_ROW * len(lines) + axis_in for _, lines in panels) + 0.1
    col = FOREST_COLUMNS
    text: dict[str, Any] = dict(fontsize=8.5, va="center", parse_math=False)
    with matplotlib_rc():
        fig = plt.figure(figsize=(9.0, height))
        fig.text(col["marker"], 1 - 0.12 / height, title, ha="left", va="top", fontsize=10, weight="bold",
                 parse_math=False, gid="tp-title")
        header_y = 1 - (head_in - 0.1) / height
        for key, label, ha in (("marker", "Marker", "left"), ("level", "Level / unit", "left"), ("n", "N", "right"),
                               ("hr", f"HR ({fmt_level(conf_level)} CI)", "left"), ("p", "p", "right")):
            fig.text(col[key], header_y, label, ha=ha, va="bottom", fontsize=8.5, weight="bold", gid=f"tp-head-{key}")
        fig.add_artist(plt.Line2D([0.01, 0.99], [header_y - 0.03 / height] * 2, color="#555555", lw=0.8))
        top = 1 - head_in / height
        for coding, lines in panels:
            n = len(lines)
            bottom = top - (title_in + FOREST_ROW * n) / height
            ax = fig.add_axes((col["plot"][0], bottom, col["plot"][1] - col["plot"][0], FOREST_ROW * n / height))
            ax.set_gid(f"tp-panel-{coding}")
            ax.set_ylim(n - 0.5, -0.5)
            rowt = blended_transform_factory(fig.transFigure, ax.transData)
            heading = ("Continuous markers: hazard ratio per unit" if coding == "continuous" else
                       "Dichotomised markers: high vs low (reference) at the cut")
            fig.text(col["marker"], top - 0.16 / height, heading, ha="left", va="center", fontsize=9, weight="bold",
                     color=COLORS[0] if coding == "continuous" else COLORS[1], gid=f"tp-heading-{coding}")
            groups = list(dict.fromkeys(line["group"] for line in lines))
            color = COLORS[0] if coding == "continuous" else COLORS[1]
            estimates = [line["est"] for line in lines if isinstance(line["est"], tuple)] or [(1.0, 0.5, 2.0)]
            lo = max(min(e[1] for e in estimates), 1e-2)
            hi = min(max(e[2] for e in estimates), 1e2)
            lo, hi = min(lo, 1.0), max(hi, 1.0)
            span = max(hi / lo, 1.2)
            xlim = (lo / span ** 0.08, hi * span ** 0.08)
            for i, line in enumerate(lines):
                if groups.index(line["group"]) % 2 == 0:
                    fig.add_artist(Rectangle((0.005, i - 0.5), 0.99, 1.0, transform=rowt, facecolor="#f1f4f8",
                                             edgecolor="none", zorder=-1))
                fig.text(col["marker"], i, _plain(line["marker"]), ha="left", transform=rowt, **text)
                fig.text(col["level"], i, _plain(line["level"]), ha="left", transform=rowt, **text)
                fig.text(col["n"], i, line["n"], ha="right", transform=rowt, **text)
                if not isinstance(line["est"], tuple):   # the reference level, or a model not fitted
                    fig.text(col["hr"], i, "reference" if line["est"] is None else NOT_ESTIMABLE, ha="left",
                             transform=rowt, style="italic", color="#555555", **text)
                    continue
                hr, low, high = line["est"]
                ax.plot([max(low, xlim[0]), min(high, xlim[1])], [i, i], color=color, lw=1.3, solid_capstyle="butt")
                if xlim[0] <= hr <= xlim[1]:
                    ax.plot([hr], [i], "s", color=color, ms=5)
                for edge, beyond, marker in ((xlim[0], low < xlim[0], "<"), (xlim[1], high > xlim[1], ">")):
                    if beyond:
                        ax.plot([edge], [i], marker, color=color, ms=5, clip_on=False)
                fig.text(col["hr"], i, fmt_hr_ci(hr, low, high), ha="left", transform=rowt, **text)
                fig.text(col["p"], i, fmt_p(line["p"]), ha="right", transform=rowt, **text)
            ax.axvline(1, color="#777777", lw=0.8, ls="--")
            ax.set_xscale("log")
            ax.set_xlim(*xlim)
            ax.xaxis.set_major_locator(FixedLocator(_forest_ticks(*xlim)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_yticks([])
            ax.tick_params(axis="x", labelsize=8)
            for side in ("top", "right", "left"):
                ax.spines[side].set_visible(False)
            ax.patch.set_alpha(0)
            ax.set_xlabel("hazard ratio (log scale); < 1 lower hazard", fontsize=8, labelpad=2)
            _thin_tick_labels(fig, ax)
            top = bottom - axis_in / height
    return _svg(fig, f"Forest plot: {title}", export, name)


def spline_figure(results, endpoint: str, marker: str, export: FigureExport | None = None) -> dict[str, Any] | None:
    """log HR (vs the median) against the marker with its pointwise band (the analysis' conf_level) and a rug of the
    observed values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cur = results.spline_curves
    if cur.empty:
        return None
    c = cur[(cur.endpoint == endpoint) & (cur.marker == marker)]
    if c.empty:
        return None
    row = results.splines[(results.splines.endpoint == endpoint) & (results.splines.marker == marker)].iloc[0]
    x = results.cohort.data[marker].dropna().to_numpy(float)
    scale = 1e9 if is_dose(marker) else 1.0
    with matplotlib_rc():
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        ax.fill_between(c.x / scale, c.ci_low, c.ci_high, color=COLORS[0], alpha=0.2, lw=0)
        ax.plot(c.x / scale, c.log_hr, color=COLORS[0])
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.plot(x / scale, np.full(x.size, 0), "|", color="black", ms=8, transform=ax.get_xaxis_transform())
        for k in str(row.knots).split(";"):
            ax.axvline(float(k) / scale, color="grey", lw=0.5, ls=":")
        ax.set_xlabel(_plain(marker + (" (×10⁹ cells)" if scale != 1 else "")))
        ax.set_ylabel("log hazard ratio vs median")
        ax.set_title(_plain(f"{ENDPOINT_NAMES[endpoint]}: {marker}\noverall p = {fmt_p(row.overall_p)}, "
                            f"nonlinearity p = {fmt_p(row.nonlinear_p)}"), fontsize=9)
    return _svg(fig, f"{ENDPOINT_NAMES[endpoint]}: {marker} as a restricted cubic spline", export,
                f"spline_{endpoint}_{_slug(marker)}")


_MARKER_UNIT = frozenset(c for c, (_, unit, _) in CODEBOOK_COLUMNS.items() if unit == "marker unit")


def _row_cells(columns: list[str], row, whole: set[str]) -> list[str]:
    """One table row for reading: formatting.cell by column; in a dose marker's row the columns in the marker's
    unit (codebook ``marker unit``: cut, knots, responders' means, quartiles, differences) in 10⁹ cells; spline
    knots each as a cut (fmt_cut); the ``whole`` columns (formatting.whole_number_columns) without decimals."""
    marker = next((str(v) for c, v in zip(columns, row) if c in ("variable", "marker")), "")
    return ["; ".join(fmt_cut(marker, float(k)) for k in v.split(";")) if c == "knots" and isinstance(v, str) and v
            else dose(v) if c in _MARKER_UNIT and is_dose(marker) and isinstance(v, (float, np.floating))
            and np.isfinite(v) else str(int(v)) if c in whole and np.isfinite(v) else cell(c, v, columns)
            for c, v in zip(columns, row)]


def table_view(frame: pd.DataFrame) -> dict:
    """Header and cells rounded for reading (formatting.cell); the template escapes every cell."""
    columns = [str(c) for c in frame.columns]
    whole = {str(c) for c in whole_number_columns(frame)}
    return {"columns": columns, "rows": [_row_cells(columns, row, whole) for row in frame.itertuples(index=False)]}


NO_LOGRANK_NOTE = ("A blank (–) log-rank chi-square and p: no test for that grouping, each named in the warnings: no "
                   "events, one group only, or a statistic without variance (at every event time one group alone is "
                   "at risk, or everyone at risk has the event). R survdiff then prints chisq 0 on 0 df, p 1 (an error "
                   "when everyone at risk has the event): a test of nothing, so no p-value is given here.")


def table_note(frame: pd.DataFrame, column: str) -> str:
    """The note under a table whose log-rank ``column`` is blank in some row (else ""): why, once."""
    return NO_LOGRANK_NOTE if column in frame.columns and frame[column].isna().any() else ""


def methods_text(results) -> list[str]:
    """The methods paragraph: every convention used, REMARK items 10 and 11."""
    s = results.settings
    pct = round(100 * s.minprop)
    covs = ", ".join(results.cohort.covariates) or "none"
    return [
        f"Patients: {len(results.cohort.outcomes)} in the outcomes table, {len(results.cohort.data)} with a "
        "phenotyped TIL product (joined on product_id). Products without outcomes and patients without a "
        "product are listed below and in unmatched.csv. Response rates and whole-cohort survival use every "
        "patient with outcomes, complete cases per analysis (a patient without a PFS time or event is left out of "
        "the PFS analyses and kept in the OS ones, one without a best response left out of the response analyses; "
        "the warnings name them, with their rows, and the list below); marker analyses use patients with the marker measured (complete cases per "
        "marker; the multivariable models, their validation and calibration also need every covariate: the "
        "warnings name the patients they leave out; each row gives its n).",
        "Response: objective response rate (ORR) = CR + PR, disease control rate (DCR) = CR + PR + SD, over all "
        "patients with a best response (not evaluable counted as non-responders), with exact Clopper-Pearson "
        f"{fmt_level(s.conf_level)} confidence intervals.",
        "Survival (PFS, OS; months from the start of TIL therapy): Kaplan-Meier estimates with R survival's "
        f"conventions. Pointwise confidence intervals use the '{s.conf_type}' transformation with the Greenwood "
        "variance. The median is the first time the curve reaches 0.5; when it equals 0.5 exactly over a flat "
        "step, the midpoint of that step. Its confidence interval is where the pointwise band crosses 0.5 "
        "(Brookmeyer-Crowley). The 12-month rate is the curve's value at 12 months with its pointwise CI; it is "
        "left blank when 12 months lies beyond the group's last observed time, even if the curve has reached 0 "
        "(as R's summary(survfit, times = 12) without extend). "
        "Median follow-up is estimated by the reverse Kaplan-Meier method (censoring as the event); it is blank where "
        "that curve does not reach 0.5, e.g. in a group where every patient had the event (no one censored). Groups "
        "are compared by the log-rank (Mantel-Haenszel) test.",
        "REMARK item 10 (how markers were handled): every marker was analysed as a continuous variable (Cox "
        "hazard ratio per unit as measured; per 1e9 cells for cell doses) and dichotomised (high = above the "
        "cut, low = at or below it) at a pre-specified cut-point where one was given, otherwise at the cohort "
        "median. No marker was transformed.",
        "REMARK item 11 (how cut-points were chosen): for each endpoint and marker, (a) the median split; "
        "(b) pre-specified cut-points read from the cut-points file, if any; (c) the maximally selected "
        "log-rank statistic (as R maxstat.test with smethod='LogRank'): log-rank scores, every distinct marker "
        f"value as a candidate cut with about {pct}% of patients or more in each group (minprop {s.minprop:g}: at "
        "least max(1, floor(n minprop)) at or below the cut and n - floor(n maxprop) above it, as maxstat), "
        "low group = values at or below the cut, the standardised statistic maximised over the candidates. "
        "For (c) the raw p (the minimum p over candidates, 2(1 - Phi(M))) is shown beside p-values corrected "
        "for the search: Lausen and Schumacher (1992), Lausen, Sauerbrei and Schumacher (1994, an upper "
        "bound that can fall below 0 or exceed 1: p_lau94 is the bound clipped to [0, 1], the unclipped value is in "
        f"p_lau94_bound){_permutation_text(s)}. For (a) and (b), statistic and p_raw are that standardised statistic "
        "at the one cut (no search, nothing to correct). The log-rank columns (logrank_chisq, logrank_p) are the "
        "Mantel-Haenszel test of the same two groups (R survdiff), whose variance is the hypergeometric one, not the "
        "log-rank scores' permutation variance: the two p-values of a split differ, and neither accounts for the "
        "search. Hazard ratios are never estimated at the data-derived cut.",
        "Cox models: partial likelihood with Efron's method for ties, fitted with lifelines and polished by "
        "Newton-Raphson on the exact likelihood to R coxph's optimum (convergence recorded per model: converged, "
        "iterations, max_scaled_score). Global likelihood-ratio, Wald and score tests; Harrell's concordance as R "
        "computes it (pairs tied on the linear predictor count 1/2) with R's standard error. lifelines' warnings, "
        "non-convergence, near-infinite coefficients and cox.zph p < 0.05 are written in the 'warning' column. "
        "A model is not fitted, its row kept with 'not fitted: why', when a covariate has no information (one value "
        "among the patients at risk at every event time; R coxph: NA) or, alone in the model, a monotone likelihood "
        "(at every event time the patients with the event have its highest, or lowest, value at risk, e.g. every "
        "event in one group: the hazard ratio is infinite, or 0; R coxph prints a huge coefficient and standard "
        "error with a warning), or when a combination of covariates has one (found by linear programming: the "
        "events have the highest value of a weighted sum of them at every event time; R: huge coefficients). In a "
        "multivariable model a single covariate with a monotone likelihood has its coefficient left blank as not "
        "estimable and the others are estimated at its limit (each event's risk set keeps the patients with the "
        "event's value of it), as R coxph reports them beside its huge coefficient; the Wald and cox.zph tests "
        "of that model are blank. "
        f"Univariable: the marker alone; "
        f"multivariable: the marker adjusted for {covs} (categorical covariates as indicators against their "
        "first level). Wald p-values and confidence intervals; per model the likelihood-ratio test and "
        "Harrell's concordance; per variable the proportional-hazards test of R survival's cox.zph with the "
        "'km' time transform (score test, chi-square on the term's degrees of freedom), and a warning when "
        "there are fewer than 10 events per model variable.",
        "Responders (CR + PR) vs non-responders (SD, PD, NE): numeric variables as mean ± SD and median (IQR), "
        "compared by Welch's t-test and the Mann-Whitney test (exact without ties when both groups have fewer "
        "than 50 patients, else the normal approximation with continuity correction); categorical variables "
        "(and numeric ones with at most 3 values) as counts, compared by the chi-square test (Yates-corrected "
        "for 2x2) or Fisher's exact test when an expected count is below 5 (estimated from 20,000 random "
        "tables with the same margins when a variable has too many levels to enumerate; the table says "
        f"which); the difference in means with its Welch {fmt_level(s.conf_level)} CI, for a two-level variable the "
        f"conditional maximum-likelihood odds ratio with its exact {fmt_level(s.conf_level)} CI (R fisher.test). "
        "Where several markers are tested, Holm (family-wise) and Benjamini-Hochberg (false discovery "
        "rate) adjusted p-values (R p.adjust) are given beside the raw p across the markers of one endpoint, model "
        f"and coding (cut-points: the {'permutation' if s.n_perm > 0 else 'Lausen-Schumacher (1992)'} p of the "
        "maximally selected statistic, else the log-rank p).",
    ]


def _permutation_text(s) -> str:
    """The permutation p-value's clause of the cut-point methods; none with ``--permutations 0``."""
    if s.n_perm == 0:
        return "; no permutation p-value (0 permutations asked for)"
    return f", and a permutation p-value ({s.n_perm} permutations of the scores, seed {s.seed}, (1 + #{{M* >= M}})/(1 + B))"


def _bootstrap_methods(s) -> list[str]:
    """The validation, calibration and time-dependent AUC paragraphs; one sentence when none was run (0 samples)."""
    if s.n_boot == 0:
        return ["Internal validation, calibration and time-dependent AUC: not done (0 bootstrap samples asked for)."]
    return [
        f"Internal validation (REMARK item 15): each multivariable continuous model was refitted in {s.n_boot} "
        f"bootstrap samples (seed {s.seed}); optimism = mean(training - test) Somers' Dxy and calibration slope "
        "(rms::validate method 'boot', with its refits: a sample whose refit fails in R, at 10 iterations or singular, "
        "is left out; B is the number used); the optimism-corrected values are in validation.csv. Calibration at "
        f"{s.calibration_time:g} months: patients in 4 groups of the predicted survival (Cox with the Efron baseline "
        "hazard, as R survfit.coxph) cut at the quartiles of the predictions with 0 and 1 added, as rms::calibrate "
        "(cmethod 'KM', m = n/4; Hmisc::cut2 intervals, so not equal-size groups), mean predicted against Kaplan-Meier "
        f"observed with its pointwise CI ('{s.conf_type}' transformation, as above; apparent, calibration.csv; "
        f"observed blank, as the {s.calibration_time:g}-month rate, where the group's last time is before "
        f"{s.calibration_time:g} months, or, as rms::groupkm, the group has fewer than 2 patients).",
        f"Time-dependent discrimination: cumulative/dynamic AUC at {', '.join(f'{t:g}' for t in s.roc_times)} months "
        "with inverse-probability-of-censoring weights (cases: an event at or before t, each weighted by 1/G(T-), G the "
        "Kaplan-Meier curve of the censoring times just before the case's time; controls: event-free after t; tied "
        "marker values count 1/2; equal to R riskRegression::Score, cens.model 'km'), "
        "the marker as measured taken as the risk score (AUC below 0.5: higher values, lower risk); "
        f"{fmt_level(s.conf_level)} percentile bootstrap CIs ({s.n_boot} resamples); each marker compared with the "
        "first marker on the same resamples (z test of the difference, and its percentile CI at the same level).",
    ]


def extra_methods(results) -> list[str]:
    """Methods of the analyses past the study's (splines, validation, time-dependent AUC, response)."""
    s = results.settings
    return [
        f"Continuous markers without cut-points: each marker as a restricted cubic spline with {s.spline_knots} "
        "knots at Harrell's quantiles (rms::rcs conventions; outer knots at the 5th smallest and largest values "
        "below 100 patients; a floor or ceiling value shared by 5% of the patients or more moves the outer knot to the "
        "next value, as Hmisc rcspline.eval) in a univariable Cox model; Wald tests of any association and of nonlinearity "
        "(as rms anova); the log hazard ratio against the marker's median is plotted with its pointwise "
        f"{fmt_level(s.conf_level)} band "
        "and a rug of the observed values. A spline whose model has no finite estimate (a monotone likelihood: at every "
        "event time the patients with the event have the highest, or lowest, marker value at risk; R coxph and cph: "
        "huge coefficients and 'Ran out of iterations') is not fitted, its row kept with 'not fitted: why': the splines "
        "are unadjusted, so, as for the univariable Cox model, no other covariate is left to estimate at that limit.",
        *_bootstrap_methods(s),
        f"Response and survival without guarantee-time bias: landmark analysis at {s.landmark:g} months (patients "
        "with the endpoint or censored by then excluded; survival counted from the landmark), and with "
        "response_months in the outcomes a Cox model with response as a time-dependent covariate. The naive "
        "comparison of responders and non-responders from the start of therapy is not reported: it is biased "
        "in favour of responders.",
        f"Multiplicity: {n_tests(results)} marker-level tests were run; Holm and Benjamini-Hochberg adjusted "
        "p-values are given beside each raw p.",
        "Numbers in this page are rounded for reading (p to 2 significant digits, '< 0.001'; hazard-ratio CIs with "
        "enough digits that a bound excluding 1 never reads 1; rates in %; doses in 10⁹ cells); the CSV files keep "
        "full precision.",
    ]


def n_tests(results) -> int:
    """Marker-level hypothesis tests in the tables: the rows given Holm/BH adjusted p-values (Cox marker
    rows of fitted models, cut-point rows with a p-value, fitted spline rows, AUC comparisons, and the
    responders table's marker rows). A row without a p-value (a model not fitted, a log-rank split
    without variance) is no test and is not counted, as R ``p.adjust`` does not count it."""
    tables = (results.cox_univariable, results.cox_multivariable, results.cutpoints, results.splines,
              results.auc_comparisons, results.responders)
    return sum(int(frame.p_holm.notna().sum()) for frame in tables if "p_holm" in frame.columns)


REMARK = [
    ("1", "Marker examined, study objectives, hypotheses", "methods"),
    ("2", "Patient characteristics, inclusion, treatments", "tables"),
    ("5", "Assay methods (flow cytometry gating, per product)", "provenance"),
    ("6", "Study design: follow-up, endpoints (PFS, OS in months from TIL therapy)", "methods"),
    ("7", "Clinical endpoints defined", "methods"),
    ("9", "Sample size / power: `tilpheno plan` (Schoenfeld, Hsieh-Lavori)", "methods"),
    ("10", "Handling of marker values (continuous, dichotomised, splines)", "methods"),
    ("11", "Statistical methods, cut-point choice, multiplicity", "methods"),
    ("12", "Flow of patients: numbers with phenotypes and outcomes, unmatched ids", "warnings"),
    ("13", "Distribution of demographic and prognostic variables (responders table)", "tables"),
    ("14", "Marker relation to prognostic variables", "tables"),
    ("15", "Univariable and multivariable analyses with CIs; internal validation", "forest"),
    ("16", "Results for all markers examined (no selective reporting)", "tables"),
    ("18", "Limitations: data-derived cut-points, events per variable, PH checks (warnings)", "warnings"),
]


def _provenance(record) -> dict[str, str]:
    """The footer's short record: version, Python, the command, the parameters (no times, so the
    page is reproducible); run.json holds the full record."""
    import shlex

    if record is None:
        return {}
    short = record.short()
    command = shlex.join(record.command_line) if record.command_line else "library call (tilpheno.biomarkers.run_biomarkers)"
    return {"tilpheno": short["tilpheno"], "python": short["python"], "command": command,
            "parameters": short["parameters"], "full record": "run.json in the output folder"}


def _inputs_section(results) -> list[dict]:
    record = results.run_record
    if record is None:
        return []
    return [{"path": d.path, "sha256": d.sha256} for d in record.inputs]


def render_report(results, export: FigureExport | None = None) -> str:
    """The full HTML page as a string; the figures drawn also go to ``export``."""
    from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader

    # the product reports' stylesheet (_style.css.j2) is shared: one look for every tilpheno page
    env = Environment(loader=ChoiceLoader([FileSystemLoader(str(TEMPLATE_DIR)), PackageLoader("tilpheno.report", "templates")]),
                      autoescape=True)
    forests = []
    covs = ", ".join(results.cohort.covariates)
    for name, table in (("Univariable", results.cox_univariable), ("Multivariable", results.cox_multivariable)):
        for endpoint in results.settings.endpoints:
            part = table[table.endpoint == endpoint] if not table.empty else table
            title = f"{ENDPOINT_NAMES[endpoint]}: {name.lower()} Cox models" + (
                f" (each marker adjusted for {covs})" if name == "Multivariable" and covs else "")
            fig = (forest_figure(part, title, export, f"forest_{name.lower()}_{endpoint}", results.settings.conf_level)
                   if not part.empty else None)
            if fig:
                forests.append({"title": title, "id": f"forest_{name.lower()}_{endpoint}", **fig})
    splines = []
    for endpoint in results.settings.endpoints:
        for marker in results.cohort.markers:
            fig = spline_figure(results, endpoint, marker, export)
            if fig:
                splines.append({"title": f"{ENDPOINT_NAMES[endpoint]}: {marker} (spline)", **fig})
    tables: list[tuple] = [   # title, frame[, note under the table]
        ("Response rates (response.csv)", results.response),
        ("Kaplan-Meier summaries (km.csv)", results.km),
        ("Log-rank observed and expected events (logrank.csv)", results.logrank, table_note(results.logrank, "chisq")),
        ("Cut-points (cutpoints.csv)", results.cutpoints, table_note(results.cutpoints, "logrank_chisq")),
        ("Univariable Cox models (cox_univariable.csv)", results.cox_univariable),
        ("Multivariable Cox models (cox_multivariable.csv)", results.cox_multivariable),
        ("Restricted cubic splines (splines.csv)", results.splines),
        ("Bootstrap internal validation (validation.csv)", results.validation),
        ("Calibration at a time: predicted vs Kaplan-Meier by group of predicted survival, as rms::calibrate (calibration.csv)",
         results.calibration),
        ("Time-dependent AUC (time_auc.csv)", results.time_auc),
        ("Time-dependent AUC comparisons (time_auc_comparisons.csv)", results.auc_comparisons),
        ("Responders and survival without guarantee-time bias (response_survival.csv)", results.response_survival),
        ("Responders vs non-responders (responders.csv)", results.responders),
        ("Unmatched ids (unmatched.csv)", results.cohort.unmatched()),
    ]
    record = results.run_record
    return env.get_template("biomarkers.html.j2").render(
        methods=methods_text(results) + extra_methods(results), warnings=results.warnings,
        settings=results.settings, ci_level=fmt_level(results.settings.conf_level), km_figures=km_figures(results, export), forests=forests, splines=splines,
        tables=[{"title": t, "id": f"table{i}", "note": note[0] if note else "", **table_view(f)}
                for i, (t, f, *note) in enumerate(tables)],
        unmatched=results.cohort.unmatched().to_dict("records"), remark=REMARK,
        provenance=_provenance(record), inputs=_inputs_section(results),
        n_tests=n_tests(results),
    )
