"""report.html for the biomarker analysis: figures (inline SVG, also exported as figures/*.svg and
figures.pdf), tables rounded for reading (machine tables keep full precision), methods, REMARK
checklist and provenance.

Every value from the inputs is escaped: the page is rendered by jinja2 with autoescape on
and no value is marked safe except the base64 images this module draws itself.
"""
from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .cohort import ENDPOINTS
from .formatting import cell, dose, fmt_hr_ci, fmt_p, sig
from .survival import KaplanMeier

TEMPLATE_DIR = Path(__file__).parent / "templates"
ENDPOINT_NAMES = {"pfs": "Progression-free survival", "os": "Overall survival"}
ENDPOINT_YLABEL = {"pfs": "progression-free probability", "os": "survival probability"}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _plain(text: str) -> str:
    """Text for matplotlib with '$' escaped, so names from the inputs are never parsed as mathtext."""
    return str(text).replace("$", r"\$")


class FigureExport:
    """Collects each figure as SVG bytes and, with ``pdf=True``, as a page of one PDF."""

    def __init__(self, pdf: bool = False):
        from matplotlib.backends.backend_pdf import PdfPages

        self.svgs: list[tuple[str, bytes]] = []
        self._pdf_buffer = io.BytesIO()
        self._pdf = PdfPages(self._pdf_buffer) if pdf else None

    def add(self, name: str, svg: bytes, fig) -> None:
        self.svgs.append((name, svg))
        if self._pdf is not None:
            with matplotlib_rc():
                self._pdf.savefig(fig, bbox_inches="tight")

    def pdf_bytes(self) -> bytes | None:
        if self._pdf is None:
            return None
        self._pdf.close()
        return self._pdf_buffer.getvalue()


def _svg(fig, export: FigureExport | None = None, name: str | None = None) -> str:
    """The figure as base64 SVG (text kept as text), added to ``export`` when given; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    with matplotlib_rc():
        fig.savefig(buf, format="svg", bbox_inches="tight")
    if export is not None and name:
        export.add(name, buf.getvalue(), fig)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def matplotlib_rc():
    import matplotlib

    return matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
                                  "axes.labelsize": 9, "legend.fontsize": 8, "pdf.fonttype": 42})


def _risk_ticks(max_time: float) -> np.ndarray:
    step = max(1.0, 10 ** math.floor(math.log10(max(max_time, 1.0) / 4)))
    for mult in (1, 2, 2.5, 5, 10):
        if max_time / (step * mult) <= 6:
            step *= mult
            break
    return np.arange(0, max_time + 1e-9, step)


def km_figure(curves: list[tuple[str, np.ndarray, np.ndarray]], title: str, ylabel: str, settings,
              p_text: str = "", breaks=None):
    """Survminer-style figure: step curves with CI bands, censoring ticks, dashed median lines,
    the p-value on the plot and a numbers-at-risk table under the x axis at the break times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fits = [KaplanMeier(settings.conf_type, settings.conf_level).fit(t, e, label) for label, t, e in curves]
    tmax = max(float(np.max(t)) for _, t, _ in curves)
    ticks = np.asarray(breaks, dtype=float) if breaks is not None else _risk_ticks(tmax)
    ticks = ticks[ticks <= max(tmax, ticks[0])] if ticks.size else _risk_ticks(tmax)
    with matplotlib_rc():
        fig = plt.figure(figsize=(6.2, 4.4 + 0.22 * len(fits)))
        gs = fig.add_gridspec(2, 1, height_ratios=[4.0, 0.45 + 0.3 * len(fits)], hspace=0.32)
        ax = fig.add_subplot(gs[0])
        tab = fig.add_subplot(gs[1], sharex=ax)
        for row, (fit, color) in enumerate(zip(fits, COLORS)):
            fit.plot(ax, color=color, ci=True)
            med = fit.median().estimate
            if np.isfinite(med):
                ax.plot([0, med, med], [0.5, 0.5, 0], ls="--", lw=0.8, color=color)
            y = len(fits) - row
            for tick, n in zip(ticks, fit.at_risk(ticks)):
                tab.text(tick, y, str(n), ha="center", va="center", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_xlim(0, max(ticks[-1], tmax) * 1.02)
        ax.set_xticks(ticks)
        ax.tick_params(labelbottom=True)
        ax.set_xlabel("months")
        ax.set_ylabel(ylabel)
        ax.set_title(_plain(title))
        ax.grid(alpha=0.2)
        ax.legend(loc="upper right", frameon=False)
        if p_text:
            ax.text(0.02, 0.03, p_text, transform=ax.transAxes, ha="left", va="bottom", fontsize=8.5,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85})
        tab.set_ylim(0.4, len(fits) + 0.6)
        tab.set_yticks([len(fits) - i for i in range(len(fits))])
        tab.set_yticklabels([_plain(f.label) for f in fits], fontsize=8)
        for label, color in zip(tab.get_yticklabels(), COLORS):
            label.set_color(color)
        tab.tick_params(labelbottom=False, bottom=False, left=False)
        for side in ("top", "right", "left", "bottom"):
            tab.spines[side].set_visible(False)
        tab.set_title("Number at risk", fontsize=8, loc="left")
    return fig


def km_figures(results, export: FigureExport | None = None) -> list[dict]:
    """The whole cohort per endpoint, then one figure per endpoint x marker x grouping."""
    cohort, settings = results.cohort, results.settings
    breaks = settings.break_times
    figures = []
    for endpoint in settings.endpoints:
        tcol, ecol = ENDPOINTS[endpoint]
        ylabel = ENDPOINT_YLABEL[endpoint]
        fig = km_figure([("all patients", cohort.outcomes[tcol].to_numpy(float), cohort.outcomes[ecol].to_numpy(float))],
                        f"{ENDPOINT_NAMES[endpoint]}: all patients", ylabel, settings, breaks=breaks)
        name = f"km_{endpoint}_all"
        figures.append({"title": f"{ENDPOINT_NAMES[endpoint]}, all patients", "svg": _svg(fig, export, name),
                        "id": name})
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
                fig = km_figure([c for c in curves if c[1].size], f"{ENDPOINT_NAMES[endpoint]} by {marker} "
                                f"({rec.method} cut)", ylabel, settings, p_text, breaks)
                name = f"km_{endpoint}_{_slug(marker)}_{rec.method}"
                figures.append({"title": f"{ENDPOINT_NAMES[endpoint]} by {marker}, {rec.method} cut",
                                "svg": _svg(fig, export, name), "id": name})
    return figures


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(text))[:60]


def fmt_cut(marker: str, value: float) -> str:
    return dose(value) if marker.endswith("_dose_cells") else sig(value, 4)


def forest_figure(table: pd.DataFrame, title: str, export: FigureExport | None = None, name: str | None = None) -> str | None:
    """ggforest-style forest plot of the markers' hazard ratios: label and N, estimate and CI on a log
    axis, "HR (95% CI)" and p as text; continuous and dichotomised markers in separate panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FuncFormatter

    rows = table[table.coding != "covariate"].copy()
    hr_columns = ["hr", "hr_ci_low", "hr_ci_high"]
    # a table whose models all failed (e.g. too few patients) holds only None: object dtype
    values = rows[hr_columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    rows = rows[np.isfinite(values).all(axis=1) & (values[:, 1] > 0)].astype({c: float for c in hr_columns})
    if rows.empty:
        return None
    panels = [(c, rows[rows.coding == c]) for c in ("continuous", "dichotomized") if (rows.coding == c).any()]
    n_rows = sum(len(p) for _, p in panels) + 2 * len(panels)
    with matplotlib_rc():
        fig, axes = plt.subplots(len(panels), 1, figsize=(9.5, 0.26 * n_rows + 1.0), squeeze=False,
                                 gridspec_kw={"height_ratios": [len(p) + 1 for _, p in panels]})
        for ax, (coding, part) in zip(axes[:, 0], panels):
            y = np.arange(len(part))[::-1]
            color = COLORS[0] if coding == "continuous" else COLORS[1]
            ax.errorbar(part.hr, y, xerr=[part.hr - part.hr_ci_low, part.hr_ci_high - part.hr], fmt="s", ms=4,
                        color=color, ecolor=color, elinewidth=1.2, capsize=2)
            ax.axvline(1, color="grey", lw=0.8, ls="--")
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
            ax.set_ylim(-0.7, len(part) - 0.3)
            ax.set_yticks(y)
            labels = []
            for r in part.itertuples():
                cut = getattr(r, "cut", float("nan"))
                unit = (getattr(r, "unit", "") if coding == "continuous"
                        else f"high vs low (cut {fmt_cut(r.variable, cut)})")
                counts = (f"; N={int(r.n)}, events={int(r.events)}"
                          if pd.notna(getattr(r, "n", None)) and pd.notna(getattr(r, "events", None)) else "")
                labels.append(_plain(f"{r.endpoint.upper()}  {r.variable}\n{unit}{counts}"))
            ax.set_yticklabels(labels, fontsize=7.5)
            lo, hi = float(part.hr_ci_low.min()), float(part.hr_ci_high.max())
            span = max(hi / lo, 1.5)
            ax.set_xlim(lo / span**0.15, hi * span**0.15)
            for yy, r in zip(y, part.itertuples()):
                ax.text(1.02, yy, f"{fmt_hr_ci(r.hr, r.hr_ci_low, r.hr_ci_high)}   p = {fmt_p(getattr(r, 'p', None))}",
                        transform=ax.get_yaxis_transform(), va="center", fontsize=8)
            ax.text(1.02, len(part) - 0.4, "HR (95% CI)            p", transform=ax.get_yaxis_transform(),
                    va="bottom", fontsize=8, weight="bold")
            ax.set_title(f"{title}: {'continuous markers' if coding == 'continuous' else 'dichotomised markers'}",
                         fontsize=9, loc="left")
            ax.set_xlabel("hazard ratio (log scale); left of 1 = lower hazard")
        fig.subplots_adjust(right=0.66, hspace=0.6)
    return _svg(fig, export, name)


def spline_figure(results, endpoint: str, marker: str, export: FigureExport | None = None) -> str | None:
    """log HR (vs the median) against the marker with its 95% band and a rug of the observed values."""
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
    scale = 1e9 if marker.endswith("_dose_cells") else 1.0
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
    return _svg(fig, export, f"spline_{endpoint}_{_slug(marker)}")


def table_view(frame: pd.DataFrame) -> dict:
    """Header and cells rounded for reading (formatting.cell); the template escapes every cell."""
    return {"columns": [str(c) for c in frame.columns],
            "rows": [[cell(str(c), v) for c, v in zip(frame.columns, row)] for row in frame.itertuples(index=False)]}


def methods_text(results) -> list[str]:
    """The methods paragraph: every convention used, REMARK items 10 and 11."""
    s = results.settings
    pct = round(100 * s.minprop)
    covs = ", ".join(results.cohort.covariates) or "none"
    return [
        f"Patients: {len(results.cohort.outcomes)} in the outcomes table, {len(results.cohort.data)} with a "
        "phenotyped TIL product (joined on product_id). Products without outcomes and patients without a "
        "product are listed below and in unmatched.csv. Response rates and whole-cohort survival use every "
        "patient with outcomes; marker analyses use patients with the marker measured (complete cases per "
        "marker; each row gives its n).",
        "Response: objective response rate (ORR) = CR + PR, disease control rate (DCR) = CR + PR + SD, over all "
        "patients (not evaluable counted as non-responders), with exact Clopper-Pearson "
        f"{round(100 * s.conf_level)}% confidence intervals.",
        "Survival (PFS, OS; months from the start of TIL therapy): Kaplan-Meier estimates with R survival's "
        f"conventions. Pointwise confidence intervals use the '{s.conf_type}' transformation with the Greenwood "
        "variance. The median is the first time the curve reaches 0.5; when it equals 0.5 exactly over a flat "
        "step, the midpoint of that step. Its confidence interval is where the pointwise band crosses 0.5 "
        "(Brookmeyer-Crowley). The 12-month rate is the curve's value at 12 months with its pointwise CI. "
        "Median follow-up is estimated by the reverse Kaplan-Meier method. Groups are compared by the "
        "log-rank (Mantel-Haenszel) test.",
        "REMARK item 10 (how markers were handled): every marker was analysed as a continuous variable (Cox "
        "hazard ratio per unit as measured; per 1e9 cells for cell doses) and dichotomised (high = above the "
        "cut, low = at or below it) at a pre-specified cut-point where one was given, otherwise at the cohort "
        "median. No marker was transformed.",
        "REMARK item 11 (how cut-points were chosen): for each endpoint and marker, (a) the median split; "
        "(b) pre-specified cut-points read from the cut-points file, if any; (c) the maximally selected "
        "log-rank statistic (as R maxstat.test with smethod='LogRank'): log-rank scores, every distinct marker "
        f"value as a candidate cut with at least {pct}% of patients in each group (minprop {s.minprop:g}), "
        "low group = values at or below the cut, the standardised statistic maximised over the candidates. "
        "For (c) the raw p (the minimum p over candidates, 2(1 - Phi(M))) is shown beside p-values corrected "
        "for the search: Lausen and Schumacher (1992), Lausen, Sauerbrei and Schumacher (1994, an upper "
        "bound that can fall below 0 or exceed 1: p_lau94 is the bound clipped to [0, 1], the unclipped value is in "
        f"p_lau94_bound), and a permutation p-value ({s.n_perm} permutations of the scores, seed "
        f"{s.seed}, (1 + #{{M* >= M}})/(1 + B)). Hazard ratios are never estimated at the data-derived cut.",
        "Cox models: partial likelihood with Efron's method for ties, fitted with lifelines and polished by "
        "Newton-Raphson on the exact likelihood to R coxph's optimum (convergence recorded per model: converged, "
        "iterations, max_scaled_score). Global likelihood-ratio, Wald and score tests; Harrell's concordance as R "
        "computes it (pairs tied on the linear predictor count 1/2) with R's standard error. lifelines' warnings, "
        "non-convergence, near-infinite coefficients and cox.zph p < 0.05 are written in the 'warning' column. "
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
        "which). Where several markers are tested, Holm (family-wise) and Benjamini-Hochberg (false discovery "
        "rate) adjusted p-values (R p.adjust) are given beside the raw p across the markers of one endpoint, model "
        "and coding (cut-points: the permutation p of the maximally selected statistic, else the log-rank p).",
    ]


def extra_methods(results) -> list[str]:
    """Methods of the analyses past the study's (splines, validation, time-dependent AUC, response)."""
    s = results.settings
    return [
        f"Continuous markers without cut-points: each marker as a restricted cubic spline with {s.spline_knots} "
        "knots at Harrell's quantiles (rms::rcs conventions; outer knots at the 5th smallest and largest values "
        "below 100 patients) in a univariable Cox model; Wald tests of any association and of nonlinearity "
        "(as rms anova); the log hazard ratio against the marker's median is plotted with its pointwise 95% band "
        "and a rug of the observed values.",
        f"Internal validation (REMARK item 15): each multivariable continuous model was refitted in {s.n_boot} "
        f"bootstrap samples (seed {s.seed}); optimism = mean(training - test) Somers' Dxy and calibration slope "
        "(rms::validate method 'boot'); the optimism-corrected values are in validation.csv. Calibration at "
        f"{s.calibration_time:g} months: patients in quartiles of the predicted survival (Cox with the Efron baseline "
        "hazard, as R survfit.coxph), mean predicted against Kaplan-Meier observed (apparent, calibration.csv).",
        f"Time-dependent discrimination: cumulative/dynamic AUC at {', '.join(f'{t:g}' for t in s.roc_times)} months "
        "with inverse-probability-of-censoring weights (Uno; equal to scikit-survival's cumulative_dynamic_auc), "
        "the marker as measured taken as the risk score (AUC below 0.5: higher values, lower risk); 95% "
        f"percentile bootstrap CIs ({s.n_boot} resamples); each marker compared with the first marker on the same "
        "resamples (z test of the difference).",
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
    """Marker-level hypothesis tests in the tables (Cox marker rows, cut-point rows, spline rows, AUC comparisons)."""
    count = 0
    for frame in (results.cox_univariable, results.cox_multivariable):
        count += int((frame.coding != "covariate").sum()) if not frame.empty else 0
    count += len(results.cutpoints) + len(results.splines) + len(results.auc_comparisons)
    return count


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


def _inputs_section(results) -> list[dict]:
    record = results.run_record
    if record is None:
        return []
    return [{"path": d.path, "sha256": d.sha256} for d in record.inputs]


def render_report(results, export: FigureExport | None = None) -> str:
    """The full HTML page as a string; the figures drawn also go to ``export``."""
    from jinja2 import Environment, FileSystemLoader

    env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True)
    forests = []
    for name, table in (("Univariable", results.cox_univariable), ("Multivariable", results.cox_multivariable)):
        svg = forest_figure(table, f"{name} Cox models", export, f"forest_{name.lower()}")
        if svg:
            forests.append({"title": f"{name} hazard ratios", "svg": svg})
    splines = []
    for endpoint in results.settings.endpoints:
        for marker in results.cohort.markers:
            svg = spline_figure(results, endpoint, marker, export)
            if svg:
                splines.append({"title": f"{ENDPOINT_NAMES[endpoint]}: {marker} (spline)", "svg": svg})
    tables = [
        ("Response rates (response.csv)", results.response),
        ("Kaplan-Meier summaries (km.csv)", results.km),
        ("Log-rank observed and expected events (logrank.csv)", results.logrank),
        ("Cut-points (cutpoints.csv)", results.cutpoints),
        ("Univariable Cox models (cox_univariable.csv)", results.cox_univariable),
        ("Multivariable Cox models (cox_multivariable.csv)", results.cox_multivariable),
        ("Restricted cubic splines (splines.csv)", results.splines),
        ("Bootstrap internal validation (validation.csv)", results.validation),
        ("Calibration at a time: predicted vs Kaplan-Meier by quartile of predicted survival (calibration.csv)",
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
        settings=results.settings, km_figures=km_figures(results, export), forests=forests, splines=splines,
        tables=[{"title": t, "id": f"table{i}", **table_view(f)} for i, (t, f) in enumerate(tables)],
        unmatched=results.cohort.unmatched().to_dict("records"), remark=REMARK,
        provenance=record.short() if record is not None else {}, inputs=_inputs_section(results),
        n_tests=n_tests(results),
    )
