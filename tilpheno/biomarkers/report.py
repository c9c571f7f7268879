"""report.html for the biomarker analysis: figures (inline base64 PNG), tables and methods.

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
from .survival import KaplanMeier

TEMPLATE_DIR = Path(__file__).parent / "templates"
ENDPOINT_NAMES = {"pfs": "Progression-free survival", "os": "Overall survival"}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _plain(text: str) -> str:
    """Text for matplotlib with '$' escaped, so names from the inputs are never parsed as mathtext."""
    return str(text).replace("$", r"\$")


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _risk_ticks(max_time: float) -> np.ndarray:
    step = max(1.0, 10 ** math.floor(math.log10(max(max_time, 1.0) / 4)))
    for mult in (1, 2, 2.5, 5, 10):
        if max_time / (step * mult) <= 6:
            step *= mult
            break
    return np.arange(0, max_time + 1e-9, step)


def km_panel(ax, curves: list[tuple[str, np.ndarray, np.ndarray]], title: str, settings) -> None:
    """KM curves on ``ax`` with a numbers-at-risk table below the x axis."""
    fits = [KaplanMeier(settings.conf_type, settings.conf_level).fit(t, e, label) for label, t, e in curves]
    tmax = max(float(np.max(t)) for _, t, _ in curves)
    ticks = _risk_ticks(tmax)
    for fit, color in zip(fits, COLORS):
        fit.plot(ax, color=color)
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, ticks[-1] if ticks[-1] >= tmax else tmax)
    ax.set_xticks(ticks)
    ax.set_xlabel("months")
    ax.set_ylabel("survival probability")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right", frameon=False)
    ax.grid(alpha=0.2)
    for row, (fit, color) in enumerate(zip(fits, COLORS)):
        y = -0.28 - 0.09 * row
        ax.text(-0.06, y, fit.label.split(" ")[0], transform=ax.transAxes, ha="right", va="center", fontsize=7,
                color=color)
        for tick, n in zip(ticks, fit.at_risk(ticks)):
            ax.text(tick, y, str(n), transform=ax.get_xaxis_transform(), ha="center", va="center", fontsize=7)
    ax.text(-0.06, -0.19, "at risk", transform=ax.transAxes, ha="right", va="center", fontsize=7, style="italic")


def km_figures(results) -> list[dict]:
    """One figure for the whole cohort per endpoint, one per endpoint x marker (all groupings)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cohort, settings = results.cohort, results.settings
    figures = []
    for endpoint in settings.endpoints:
        tcol, ecol = ENDPOINTS[endpoint]
        fig, ax = plt.subplots(figsize=(4.6, 3.6))
        km_panel(ax, [("all", cohort.outcomes[tcol].to_numpy(float), cohort.outcomes[ecol].to_numpy(float))],
                 f"{ENDPOINT_NAMES[endpoint]}: all patients", settings)
        figures.append({"title": f"{ENDPOINT_NAMES[endpoint]}, all patients", "png": _png(fig)})
        cuts = results.cutpoints[results.cutpoints.endpoint == endpoint]
        for marker in cohort.markers:
            rows = cuts[cuts.marker == marker]
            if rows.empty:
                continue
            d = cohort.data.dropna(subset=[marker])
            x, t, e = d[marker].to_numpy(float), d[tcol].to_numpy(float), d[ecol].to_numpy(float)
            fig, axes = plt.subplots(1, len(rows), figsize=(4.4 * len(rows), 3.6), squeeze=False)
            for ax, rec in zip(axes[0], rows.itertuples(index=False)):
                low = x <= rec.cutpoint
                curves = [(f"low (<= {rec.cutpoint:.4g})", t[low], e[low]), (f"high (> {rec.cutpoint:.4g})", t[~low], e[~low])]
                p_text = f"log-rank p={rec.logrank_p:.3g}"
                if rec.method == "maxstat":
                    p_text = f"raw p={rec.p_raw:.3g}, Lau94 p={rec.p_lau94:.3g}"
                km_panel(ax, [c for c in curves if c[1].size], f"{rec.method} cut; {p_text}", settings)
            fig.suptitle(_plain(f"{ENDPOINT_NAMES[endpoint]} by {marker}"), fontsize=10)
            fig.subplots_adjust(bottom=0.35, wspace=0.45)
            figures.append({"title": f"{ENDPOINT_NAMES[endpoint]} by {marker}", "png": _png(fig)})
    return figures


def forest_figure(table: pd.DataFrame, title: str) -> str | None:
    """Forest plot of marker hazard ratios (log scale), continuous and dichotomised."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table[table.coding != "covariate"].copy()
    hr_columns = ["hr", "hr_ci_low", "hr_ci_high"]
    # a table whose models all failed (e.g. too few patients) holds only None: object dtype
    values = rows[hr_columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    rows = rows[np.isfinite(values).all(axis=1) & (values[:, 1] > 0)].astype({c: float for c in hr_columns})
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 0.28 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    colors = np.where(rows.coding == "continuous", COLORS[0], COLORS[1])
    ax.errorbar(rows.hr, y, xerr=[rows.hr - rows.hr_ci_low, rows.hr_ci_high - rows.hr], fmt="none",
                ecolor=colors, elinewidth=1)
    ax.scatter(rows.hr, y, c=colors, s=14, zorder=3)
    ax.axvline(1, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yticks(y)
    ax.set_yticklabels([_plain(f"{r.endpoint.upper()} {r.variable} ({r.coding})") for r in rows.itertuples()],
                       fontsize=7)
    ax.set_xlabel("hazard ratio (95% CI, log scale)")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(value)


def table_view(frame: pd.DataFrame) -> dict:
    """Header and formatted cells of a DataFrame (the template escapes every cell)."""
    return {"columns": [str(c) for c in frame.columns],
            "rows": [[_fmt(v) for v in row] for row in frame.itertuples(index=False)]}


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


def render_report(results) -> str:
    """The full HTML page as a string."""
    from jinja2 import Environment, FileSystemLoader

    env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True)
    forests = []
    for name, table in (("Univariable", results.cox_univariable), ("Multivariable", results.cox_multivariable)):
        png = forest_figure(table, f"{name} Cox models: hazard ratios of the markers")
        if png:
            forests.append({"title": f"{name} hazard ratios", "png": png})
    tables = [
        ("Response rates (response.csv)", results.response),
        ("Kaplan-Meier summaries (km.csv)", results.km),
        ("Cut-points (cutpoints.csv)", results.cutpoints),
        ("Univariable Cox models (cox_univariable.csv)", results.cox_univariable),
        ("Multivariable Cox models (cox_multivariable.csv)", results.cox_multivariable),
        ("Responders vs non-responders (responders.csv)", results.responders),
        ("Unmatched ids (unmatched.csv)", results.cohort.unmatched()),
    ]
    return env.get_template("biomarkers.html.j2").render(
        methods=methods_text(results), warnings=results.warnings, settings=results.settings,
        km_figures=km_figures(results), forests=forests,
        tables=[{"title": t, **table_view(f)} for t, f in tables],
        unmatched=results.cohort.unmatched().to_dict("records"),
    )
