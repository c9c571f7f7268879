"""The whole biomarker analysis: ``run_biomarkers(phenotypes, outcomes, out_dir) -> BiomarkerResults``.

Per endpoint (PFS, OS) and marker:

- cut-point groupings: the median split (low = values <= the median), any pre-specified cut
  (``--cutpoints`` file), and the maximally selected log-rank cut (see ``cutpoints``), each with
  Kaplan-Meier medians per group and the log-rank test of the grouping;
- Cox models: univariable (marker alone) and multivariable (marker + covariates), the marker
  coded continuous (HR per unit; per 10^9 cells for dose columns ``*_dose_cells``) and dichotomised
  (high vs low at the pre-specified cut when given, else the median; never the data-optimised
  cut, whose HR would be biased away from 1).

Files written to ``out_dir`` (a folder of its own, see :func:`run_biomarkers`): response.csv,
km.csv, km_table.csv (survfit-style, every curve), at_risk.csv (numbers at risk at the break
times), logrank.csv (observed/expected per group), cutpoints.csv, cox_univariable.csv,
cox_multivariable.csv (one ``model_id`` per model, numeric ``cut``; a model that could not be
fitted keeps its marker row, without estimates), responders.csv, unmatched.csv,
analysis_dataset.csv, report.html.
Tables where several markers are tested carry Holm and Benjamini-Hochberg adjusted p-values
(``p_holm``, ``p_bh``; R ``p.adjust``) across markers within an endpoint x model x coding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tilpheno.errors import TableError
from tilpheno.io import atomic
from tilpheno.io.outcomes import EVENT_COLUMNS, EXCEL_SUFFIXES, csv_rows, locale_numbers, number, table_bytes
from tilpheno.io.workbook import place, table_frame

from .cohort import ENDPOINTS, Cohort, build_cohort, endpoint_cohort, missing_outcome_note, require_frames
from .cox import ZPH_ONE_EVENT_TIME, fit_cox
from .cutpoints import MaxstatResult, fixed_cut_statistic, maxstat_logrank
from .endpoints import is_responder, response_rates
from .multiplicity import p_adjust
from .responders import responders_table
from .landmark import landmark_analysis, responders_in_model, time_dependent_cox
from .splines import SPLINE_COLUMNS, fit_spline, spline_rows, unfitted_spline_row
from .survival import PH_NOT_COMPUTABLE, KaplanMeier, degenerate_note, logrank_test, median_followup
from .tdroc import time_roc
from .validation import calibration_at, validate_cox

LANDMARK_MONTHS = 12.0
CUTPOINT_COLUMNS = ("marker", "cutpoint")
"""The columns a pre-specified cut-points file must have (:func:`read_cutpoints`; ``endpoint`` is optional)."""
MIN_PATIENTS = 2
"""Fewest patients (phenotypes joined to outcomes) :func:`run_biomarkers` runs on; small cohorts
run, with each model's warnings (too few events, no convergence) in the results."""
MAX_PERMUTATIONS = 10_000_000
"""Most permutations of a cut-point p-value (resolution 1e-7; about 40 s per marker and endpoint);
more would hold every permuted maximum in memory (10^11 needs 745 GiB)."""
MAX_BOOTSTRAP = 100_000
"""Most bootstrap samples of the validation and time-dependent AUC (hours of computing already)."""
KM_COLUMNS = ["endpoint", "grouping", "group", "n", "events", "median", "median_ci_low", "median_ci_high",
              "rate_12m", "rate_12m_ci_low", "rate_12m_ci_high", "median_followup"]
CUT_COLUMNS = ["endpoint", "marker", "method", "cutpoint", "n_low", "n_high", "statistic", "p_raw", "p_lau92",
               "p_lau94", "p_lau94_bound", "p_perm", "n_perm", "median_low", "median_high", "logrank_chisq",
               "logrank_p", "p_for_adjustment", "p_holm", "p_bh"]
COX_COLUMNS = ["model_id", "endpoint", "model", "variable", "coding", "unit", "cut", "cut_method", "n", "events",
               "n_low", "n_high", "coef", "se", "hr", "hr_ci_low", "hr_ci_high", "z", "p", "p_holm", "p_bh", "zph_chisq", "zph_df",
               "zph_p", "zph_global_chisq", "zph_global_df", "zph_global_p", "lr_chisq", "lr_df", "lr_p",
               "wald_chisq", "wald_p", "score_chisq", "score_p", "concordance", "concordance_se", "loglik",
               "converged", "iterations", "max_scaled_score", "events_per_variable", "warning"]
KM_TABLE_COLUMNS = ["endpoint", "grouping", "group", "time", "n.risk", "n.event", "n.censor", "surv", "std.err",
                    "lower", "upper"]
ATRISK_COLUMNS = ["endpoint", "grouping", "group", "time", "n.risk"]
LOGRANK_COLUMNS = ["endpoint", "grouping", "group", "n", "observed", "expected", "o_over_e", "chisq", "df", "p"]


@dataclass(frozen=True)
class Settings:
    """Analysis options recorded in the report's methods paragraph."""

    endpoints: tuple[str, ...] = ("pfs", "os")
    conf_type: str = "log"
    conf_level: float = 0.95
    minprop: float = 0.1
    maxprop: float = 0.9
    n_perm: int = 10_000
    seed: int = 20240601
    break_times: tuple[float, ...] | None = None  # numbers at risk; None = every 6 months to the end
    spline_knots: int = 4
    n_boot: int = 200  # bootstrap validation and time-dependent AUC CIs
    roc_times: tuple[float, ...] = (6.0, 12.0)
    landmark: float = 3.0
    calibration_time: float = 12.0


@dataclass
class BiomarkerResults:
    """Every table of the analysis as a DataFrame, plus the cohort and the warnings raised."""

    cohort: Cohort
    settings: Settings
    response: pd.DataFrame
    km: pd.DataFrame
    cutpoints: pd.DataFrame
    cox_univariable: pd.DataFrame
    cox_multivariable: pd.DataFrame
    responders: pd.DataFrame
    prespecified: pd.DataFrame
    splines: pd.DataFrame = field(default_factory=pd.DataFrame)
    spline_curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    validation: pd.DataFrame = field(default_factory=pd.DataFrame)
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)
    time_auc: pd.DataFrame = field(default_factory=pd.DataFrame)
    auc_comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)
    response_survival: pd.DataFrame = field(default_factory=pd.DataFrame)
    km_table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=KM_TABLE_COLUMNS))
    at_risk: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ATRISK_COLUMNS))
    logrank: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LOGRANK_COLUMNS))
    warnings: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    run_record: object = None  # tilpheno.provenance.RunRecord of run_biomarkers
    removed: list[str] = field(default_factory=list)  # a previous run's outputs this run removed (paths relative to out_dir)


def read_cutpoints(path) -> pd.DataFrame:
    """Pre-specified cut-points: CSV with ``marker, cutpoint`` and optional ``endpoint`` (blank = all).

    Read as the outcomes table's text is (:mod:`tilpheno.io.outcomes`): comma-, semicolon- or tab-separated (a
    European Excel's ``25,5`` in semicolon text is 25.5), UTF-8, UTF-16 or Windows-1252, a title or blank lines
    above the header skipped; a missing, empty or too large file (:func:`tilpheno.io.outcomes.table_bytes`) is a
    TableError as the outcomes table's. One cut per marker and endpoint: a marker listed twice for the same endpoint (or twice
    with a blank endpoint) is a TableError naming both rows; a row for one endpoint overrides a blank one.
    """
    path = Path(path)
    source = str(path)
    data = table_bytes(path, "a cut-points table")
    if data[:4] == b"PK\x03\x04" or path.suffix.lower() in (*EXCEL_SUFFIXES, ".xls"):
        # an Excel workbook's bytes read as text were 'not a CSV or Excel (.xlsx) file (binary content)'
        raise TableError(f"{source}: an Excel workbook; a cut-points file is text: save the sheet as CSV UTF-8 "
                         f"(columns {', '.join(CUTPOINT_COLUMNS)}, optional endpoint)")
    header_line, separator, rows = csv_rows(data, source, CUTPOINT_COLUMNS)
    frame = table_frame(rows, header_line, lambda line: place(source, line), lower=(*CUTPOINT_COLUMNS, "endpoint"))
    for col in CUTPOINT_COLUMNS:
        if col not in frame.columns:
            raise TableError(f"{place(source, header_line, col)}: missing required column")
    if separator in (";", "\t"):
        frame["cutpoint"] = locale_numbers(frame["cutpoint"], source, "cutpoint", separator)
    endpoints = frame["endpoint"] if "endpoint" in frame.columns else pd.Series("", index=frame.index)
    out: list[tuple[str, str, float, int]] = []
    for row, marker, value, endpoint in zip(frame.index, frame["marker"], frame["cutpoint"], endpoints):
        cut = number(value, source, row, "cutpoint")
        if np.isnan(cut):
            raise TableError(f"{place(source, row, 'cutpoint')}: missing cut-point")
        marker, ep = str(marker or "").strip(), str(endpoint or "").strip().lower()
        if ep and ep not in ENDPOINTS:
            raise TableError(f"{place(source, row, 'endpoint')}: unknown endpoint '{ep}' (pfs or os)")
        first = next((r for m, e, _, r in out if (m, e) == (marker, ep)), None)
        if first is not None:
            raise TableError(f"{place(source, row, 'marker')}: a second cut-point for '{marker}'"
                             f"{f' ({ep})' if ep else ''} (first in row {first}); one pre-specified cut per marker "
                             "and endpoint")
        out.append((marker, ep, cut, row))
    return pd.DataFrame([o[:3] for o in out], columns=["marker", "endpoint", "cutpoint"])


def break_times(settings: Settings, max_time: float) -> np.ndarray:
    """Times of the numbers-at-risk table: the chosen ones, else 0, 6, 12, ... months past the last time."""
    if settings.break_times:
        return np.asarray(sorted(settings.break_times), dtype=float)
    return np.arange(0.0, max_time + 6.0, 6.0)


def _km_row(endpoint, grouping, group, time, event, settings: Settings, curves: list | None = None) -> dict:
    km = KaplanMeier(settings.conf_type, settings.conf_level).fit(time, event)
    if curves is not None:
        tab = km.survfit_table()
        tab.insert(0, "group", group)
        tab.insert(0, "grouping", grouping)
        tab.insert(0, "endpoint", endpoint)
        times = break_times(settings, float(np.max(time)))
        risk = pd.DataFrame({"endpoint": endpoint, "grouping": grouping, "group": group, "time": times,
                             "n.risk": km.at_risk(times)})
        curves.append((tab, risk))
    med = km.median()
    lm = km.survival_at(LANDMARK_MONTHS)
    return dict(endpoint=endpoint, grouping=grouping, group=group, n=km.n, events=km.events, median=med.estimate,
                median_ci_low=med.ci_low, median_ci_high=med.ci_high, rate_12m=lm.surv, rate_12m_ci_low=lm.ci_low,
                rate_12m_ci_high=lm.ci_high, median_followup=median_followup(time, event).estimate)


def _prespecified_cut(pre: pd.DataFrame, marker: str, endpoint: str) -> float | None:
    rows = pre[(pre.marker == marker) & ((pre.endpoint == endpoint) | (pre.endpoint == ""))]
    if rows.empty:
        return None
    exact = rows[rows.endpoint == endpoint]
    return float((exact if not exact.empty else rows).cutpoint.iloc[0])


def _grouping(x: np.ndarray, cut: float) -> np.ndarray:
    return np.where(x <= cut, "low", "high")


def _cox_rows(fit, endpoint, model, coding, unit, marker_col, marker, cut=np.nan, cut_method="",
              n_low=np.nan, n_high=np.nan) -> list[dict]:
    """One row per model term; ``n_low``/``n_high``: patients of the model at or below / above the cut
    (dichotomised marker rows; the forest plot's reference and compared levels)."""
    zph = fit.zph.set_index("term")
    rows = []
    n_vars = len(fit.coefficients)
    model_id = f"{endpoint}:{model}:{coding}:{marker}"
    for rec in fit.coefficients.itertuples(index=False):
        term = next((t for t in zph.index if rec.variable == t or rec.variable.startswith(f"{t}[")), None)
        is_marker = rec.variable == marker_col
        rows.append(dict(model_id=model_id, endpoint=endpoint, model=model, variable=marker if is_marker else rec.variable,
                         coding=coding if is_marker else "covariate", unit=unit if is_marker else "",
                         cut=cut if is_marker else np.nan, cut_method=cut_method if is_marker else "",
                         n=fit.n, events=fit.events, n_low=n_low if is_marker else np.nan,
                         n_high=n_high if is_marker else np.nan, coef=rec.coef, se=rec.se, hr=rec.hr, hr_ci_low=rec.hr_ci_low,
                         hr_ci_high=rec.hr_ci_high, z=rec.z, p=rec.p, p_holm=np.nan, p_bh=np.nan,
                         zph_chisq=zph.at[term, "chisq"] if term else np.nan,
                         zph_df=zph.at[term, "df"] if term else np.nan, zph_p=zph.at[term, "p"] if term else np.nan,
                         zph_global_chisq=zph.at["GLOBAL", "chisq"], zph_global_df=zph.at["GLOBAL", "df"],
                         zph_global_p=zph.at["GLOBAL", "p"], lr_chisq=fit.lr_chisq, lr_df=fit.lr_df, lr_p=fit.lr_p,
                         wald_chisq=fit.wald_chisq, wald_p=fit.wald_p, score_chisq=fit.score_chisq,
                         score_p=fit.score_p, concordance=fit.concordance, concordance_se=fit.concordance_se,
                         loglik=fit.loglik, converged=fit.converged, iterations=fit.iterations,
                         max_scaled_score=fit.max_scaled_score, events_per_variable=fit.events / n_vars,
                         warning="; ".join(fit.warnings)))
    return rows


def _unfitted_row(frame, duration, event, variables, endpoint, model, coding, unit, marker, cut, cut_method,
                  reason) -> dict:
    """The marker's row of a Cox model that could not be fitted: who was in it (complete cases),
    no estimate, and why in ``warning``; so the table lists every model, as the forest plot does."""
    data = frame[[duration, event, *variables]].dropna()
    dich = data[variables[0]] if coding == "dichotomized" else None
    row: dict = dict.fromkeys(COX_COLUMNS, np.nan)
    row.update(model_id=f"{endpoint}:{model}:{coding}:{marker}", endpoint=endpoint, model=model, variable=marker,
               coding=coding, unit=unit, cut=cut, cut_method=cut_method, n=len(data), events=int(data[event].sum()),
               n_low=int((dich == 0).sum()) if dich is not None else np.nan,
               n_high=int((dich == 1).sum()) if dich is not None else np.nan,
               converged=False, warning=f"not fitted: {reason}")
    return row


def _one_sided(high: pd.Series, values: pd.Series, cut: float, cut_label: str, cut_text: str) -> str | None:
    """Why a dichotomised marker (1 = above the cut) cannot be modelled when every patient of the model
    falls on one side of the cut (``values``: their marker values), else None: values tied at the cut (e.g. a
    binary marker whose median is its upper value), or a cut beyond every value."""
    sides = set(high.unique())
    if sides == {0.0}:
        why = "values tied at the cut" if values.max() == cut else "every value lies below it"
        return f"every patient at or below the {cut_label} cut {cut_text} ({why}): no high group"
    if sides == {1.0}:
        return f"every patient above the {cut_label} cut {cut_text}: no low group"
    return None


def cuts_outside_range(pre: pd.DataFrame, data: pd.DataFrame) -> list[str]:
    """One warning per pre-specified cut that leaves every patient on one side: at or above the marker's largest
    value, or below its smallest (a cut in another unit than the marker's, e.g. 20 for 20 x 10^9 cells)."""
    out = []
    for rec in pre.drop_duplicates(["marker", "cutpoint"]).itertuples(index=False):
        if rec.marker not in data.columns or data[rec.marker].isna().all():
            continue
        low, high = float(data[rec.marker].min()), float(data[rec.marker].max())
        if low <= rec.cutpoint < high:
            continue
        side = "at or above every value" if rec.cutpoint >= high else "below every value"
        unit = " (cells, e.g. 2e10 for 20 x 10^9)" if rec.marker.endswith("_dose_cells") else ""
        out.append(f"pre-specified cut {rec.cutpoint:g} for {rec.marker} lies {side} ({low:.4g} to {high:.4g}): "
                   f"one group only; cut-points are in the marker's unit as measured{unit}")
    return out


def adjust_markers(table: pd.DataFrame, p_column: str, by: list[str], mask=None) -> pd.DataFrame:
    """Holm and BH adjusted ``p_column`` across the rows of each ``by`` group (``mask`` = rows tested)."""
    table = table.copy()
    table["p_holm"] = np.nan
    table["p_bh"] = np.nan
    if table.empty:
        return table
    rows = table[mask] if mask is not None else table
    for _, grp in rows.groupby(by, sort=False):
        p = pd.to_numeric(grp[p_column], errors="coerce").to_numpy(float)
        table.loc[grp.index, "p_holm"] = p_adjust(p, "holm")
        table.loc[grp.index, "p_bh"] = p_adjust(p, "BH")
    return table


def _marker_analyses(cohort: Cohort, endpoint: str, marker: str, pre: pd.DataFrame, settings: Settings,
                     warnings: list[str], curves: list, logrank_rows: list):
    tcol, ecol = ENDPOINTS[endpoint]
    d = cohort.data.dropna(subset=[marker])
    x, t, e = d[marker].to_numpy(float), d[tcol].to_numpy(float), d[ecol].to_numpy(float)
    km_rows: list[dict] = []
    cut_rows: list[dict] = []
    uni: list[dict] = []
    multi: list[dict] = []
    splits: list[tuple[str, float, MaxstatResult | None]] = [("median", float(np.median(x)), None)]
    pre_cut = _prespecified_cut(pre, marker, endpoint)
    if pre_cut is not None:
        splits.append(("prespecified", pre_cut, None))
    try:
        ms = maxstat_logrank(x, t, e, minprop=settings.minprop, maxprop=settings.maxprop,
                             n_perm=settings.n_perm, seed=settings.seed)
        splits.append(("maxstat", ms.cutpoint, ms))
    except ValueError as exc:
        warnings.append(f"{endpoint} {marker}: maximally selected cut-point not computed ({exc})")
    for method, cut, ms_res in splits:
        groups = _grouping(x, cut)
        grouping = f"{marker}:{method}"
        medians = {}
        for g in ("low", "high"):
            k = groups == g
            if k.any():
                row = _km_row(endpoint, grouping, g, t[k], e[k], settings, curves)
                km_rows.append(row)
                medians[g] = row["median"]
        lr = logrank_test(t, e, groups)
        if lr.note:
            warnings.append(f"{endpoint} {grouping}: {lr.note}")
        for rec in lr.table.itertuples(index=False):
            logrank_rows.append(dict(endpoint=endpoint, grouping=grouping, group=rec.group, n=rec.n,
                                     observed=rec.observed, expected=rec.expected,
                                     o_over_e=rec.observed / rec.expected if rec.expected > 0 else np.nan,
                                     chisq=lr.chisq, df=lr.df, p=lr.p))
        if ms_res is not None:
            stat, p_raw, p92, p_perm = ms_res.statistic, ms_res.p_raw, ms_res.p_lau92, ms_res.p_perm
            p94_bound = ms_res.p_lau94
            p94 = min(max(p94_bound, 0.0), 1.0)
            p_adj_basis = p_perm if settings.n_perm > 0 else p92
        else:
            fixed = fixed_cut_statistic(x, t, e, cut)
            stat, p_raw, p92, p94, p94_bound, p_perm = fixed.statistic, fixed.p_raw, np.nan, np.nan, np.nan, np.nan
            p_adj_basis = lr.p
        cut_rows.append(dict(endpoint=endpoint, marker=marker, method=method, cutpoint=cut,
                             n_low=int((groups == "low").sum()), n_high=int((groups == "high").sum()),
                             statistic=stat, p_raw=p_raw, p_lau92=p92, p_lau94=p94, p_lau94_bound=p94_bound,
                             p_perm=p_perm,
                             n_perm=settings.n_perm if ms_res is not None else 0,
                             median_low=medians.get("low", np.nan), median_high=medians.get("high", np.nan),
                             logrank_chisq=lr.chisq, logrank_p=lr.p, p_for_adjustment=p_adj_basis))
    dich_cut = pre_cut if pre_cut is not None else splits[0][1]
    scale, unit = (1e9, "per 1e9 cells") if marker.endswith("_dose_cells") else (1.0, "per unit")
    frame = d.assign(_cont=d[marker] / scale, _dich=(d[marker] > dich_cut).astype(float))
    cut_label = "prespecified" if pre_cut is not None else "median"
    cut_text = f"{dich_cut / 1e9:.3g} ×10⁹ cells" if scale != 1.0 else f"{dich_cut:.4g}"
    codings = [("continuous", "_cont", unit), ("dichotomized", "_dich", f"high vs low ({cut_label} cut {cut_text})")]
    one_time: dict[str, tuple[int, int, float]] = {}
    for coding, col, unit_text in codings:
        for model, variables, sink in [("univariable", [col], uni),
                                       ("multivariable", [col, *cohort.covariates], multi)]:
            if model == "multivariable" and not cohort.covariates:
                continue
            try:
                fit = fit_cox(frame, tcol, ecol, variables, settings.conf_level, at_limit=True)
            except (ValueError, np.linalg.LinAlgError, ArithmeticError) as exc:
                reason = _name_marker(str(exc), col, marker, cut_text if coding == "dichotomized" else None)
                if coding == "dichotomized":
                    complete = frame[[tcol, ecol, *variables]].dropna()
                    reason = _one_sided(complete[col], frame.loc[complete.index, marker], dich_cut, cut_label,
                                        cut_text) or reason
                warnings.append(f"{endpoint} {marker} {model} {coding}: Cox model not fitted ({reason})")
                sink.append(_unfitted_row(frame, tcol, ecol, variables, endpoint, model, coding, unit_text, marker,
                                          dich_cut if coding == "dichotomized" else np.nan,
                                          cut_label if coding == "dichotomized" else "", reason))
                continue
            fit.warnings = [_name_marker(w, col, marker, cut_text if coding == "dichotomized" else None)
                            for w in fit.warnings]
            if ZPH_ONE_EVENT_TIME in fit.warnings:   # said once for the marker below, not once per model
                complete = frame[[tcol, ecol, *variables]].dropna()
                one_time[model] = (fit.n, fit.events, float(complete[tcol][complete[ecol] == 1].iloc[0]))
            warnings.extend(f"{endpoint} {model} {coding} ({marker}): {w}" for w in fit.warnings
                            if w != ZPH_ONE_EVENT_TIME)
            dich = None
            if coding == "dichotomized":  # the model's complete cases, as fit_cox selects them
                dich = frame[[tcol, ecol, *variables]].dropna()[col]
            sink.extend(_cox_rows(fit, endpoint, model, coding, unit_text, col, marker,
                                  dich_cut if dich is not None else np.nan, cut_label if dich is not None else "",
                                  int((dich == 0).sum()) if dich is not None else np.nan,
                                  int((dich == 1).sum()) if dich is not None else np.nan))
    warnings += _one_event_time_lines(endpoint, marker, one_time)
    return km_rows, cut_rows, uni, multi


def _one_event_time_lines(endpoint: str, marker: str, one_time: dict[str, tuple[int, int, float]]) -> list[str]:
    """One line per set of patients for the marker's Cox models whose events all fall at one time (``one_time``:
    model -> its patients, events and that time, months): their proportional-hazards test is not
    computable. Its two codings share their patients, so this is one line where it was a line per model."""
    by_cases: dict[tuple[int, int, float], list[str]] = {}
    for model, cases in one_time.items():
        by_cases.setdefault(cases, []).append(model)
    return [f"{endpoint} {marker}: every event ({events}) among the {n} patients of its {' and '.join(models)} Cox "
            f"models at {at:g} months: {PH_NOT_COMPUTABLE} (R cox.zph stops with an error); zph columns blank" for (n, events, at), models in by_cases.items()]


def _name_marker(text: str, col: str, marker: str, cut_text: str | None) -> str:
    """A model's message with its internal column ``col`` named as the marker; the dichotomised marker's values
    (``col = 1``: above the cut ``cut_text``, 0: at or below it) said as such."""
    if cut_text is not None and f"{col} = " in text:
        text = (text.replace(f"{col} = 1", f"{marker} above {cut_text}")
                .replace(f"{col} = 0", f"{marker} at or below {cut_text}").replace("(1 vs 0)", "(high vs low)"))
    return text.replace(col, marker)


NO_MARKER_EVENTS = ("no marker is analysed beyond its Kaplan-Meier summaries: the cut-point search, log-rank tests, Cox "
                    "models and splines (each keeps its row, 'not fitted: no events'), validation and time-dependent AUC "
                    "need events")


def _marker_events(cohort: Cohort, endpoint: str) -> bool:
    """Whether any patient with a phenotyped product (the marker analyses' patients) had the endpoint's event."""
    return bool((cohort.data[ENDPOINTS[endpoint][1]] == 1).any())


def _not_said_in(note: str, model_warnings: list[str]) -> list[str]:
    """``model_warnings`` less each marker's 'proportional-hazards test is not computable' line
    (:func:`_one_event_time_lines`) where the endpoint's ``note`` already says so (every event at one time): one line
    per endpoint, not one per marker. The models' ``warning`` column keeps its own."""
    if PH_NOT_COMPUTABLE not in note:
        return model_warnings
    return [w for w in model_warnings if PH_NOT_COMPUTABLE not in w]


def _analysed_one_time_note(cohort: Cohort, endpoint: str) -> str:
    """The note that every event of the marker analyses' patients (those with a phenotyped product) falls at one
    time, so the models' proportional-hazards test is not computable, or "" (none, or events at several times)."""
    tcol, ecol = ENDPOINTS[endpoint]
    t, e = cohort.data[tcol].to_numpy(float), cohort.data[ecol].to_numpy(float)
    at = np.unique(t[e == 1])
    if at.size != 1:
        return ""
    return (f"every event ({int((e == 1).sum())}) among the {len(cohort.data)} patients with a phenotyped product at "
            f"time {at[0]:g}: {PH_NOT_COMPUTABLE} in their Cox models")


def _endpoint_note(cohort: Cohort, endpoint: str) -> str:
    """The endpoint's one warning when its survival is degenerate (:func:`degenerate_note`, every patient with
    outcomes), or "": without events among the marker analyses' patients it also says, once for every marker,
    model and test, that none is estimated (each would otherwise fail with its own 'no events' line); with their
    events at one time (only theirs), that the models' proportional-hazards test is not computable."""
    tcol, ecol = ENDPOINTS[endpoint]
    note = degenerate_note(cohort.outcomes[tcol].to_numpy(float), cohort.outcomes[ecol].to_numpy(float))
    if not _marker_events(cohort, endpoint):
        if not note:   # events only among patients without a phenotyped product
            note = f"no events among the {len(cohort.data)} patients with a phenotyped product"
        note = f"{note}; {NO_MARKER_EVENTS}"
    elif PH_NOT_COMPUTABLE not in note:
        note = "; ".join(filter(None, [note, _analysed_one_time_note(cohort, endpoint)]))
    return f"{endpoint} ({tcol}, {ecol}): {note}" if note else ""


def analyse(cohort: Cohort, settings: Settings = Settings(), prespecified: pd.DataFrame | None = None) -> BiomarkerResults:
    """All tables for a joined cohort (no files written)."""
    pre = prespecified if prespecified is not None else pd.DataFrame(columns=["marker", "endpoint", "cutpoint"])
    unknown = sorted(set(pre.marker) - set(cohort.markers))
    warnings = list(cohort.notes)
    if unknown:
        warnings.append(f"pre-specified cut-point(s) for marker(s) not analysed: {', '.join(unknown)}")
    warnings += cuts_outside_range(pre[pre.marker.isin(cohort.markers)], cohort.data)
    km_rows: list[dict] = []
    cut_rows: list[dict] = []
    uni: list[dict] = []
    multi: list[dict] = []
    curves: list = []
    logrank_rows: list[dict] = []
    for endpoint in settings.endpoints:
        tcol, ecol = ENDPOINTS[endpoint]
        others = " and ".join(e for e in ENDPOINTS if e != endpoint)
        analysed = "".join(f"the {e} and " for e in settings.endpoints if e != endpoint)   # kept where it is analysed
        warnings += missing_outcome_note(cohort.outcomes, (tcol, ecol), f"the {endpoint} analyses",
                                         f"{analysed or 'the '}response analyses")
        known = endpoint_cohort(cohort, endpoint)
        if len(known.data) < MIN_PATIENTS:
            raise TableError(f"{endpoint} ({tcol}, {ecol}): {len(known.data)} patient(s) with a phenotyped product "
                             f"and both cells filled; the {endpoint} analyses need at least {MIN_PATIENTS}: fill them "
                             f"in, or analyse the {others} endpoint only")
        note = _endpoint_note(known, endpoint)
        if note:
            warnings.append(note)
        km_rows.append(_km_row(endpoint, "all", "all", known.outcomes[tcol].to_numpy(float),
                               known.outcomes[ecol].to_numpy(float), settings, curves))
        said: list[str] = []
        for marker in cohort.markers:
            k, c, u, m = _marker_analyses(known, endpoint, marker, pre, settings, said, curves, logrank_rows)
            km_rows += k
            cut_rows += c
            uni += u
            multi += m
        if _marker_events(known, endpoint):   # else all said once, in the endpoint's note
            warnings += _not_said_in(note, said)
    resp = response_rates(cohort.outcomes["best_response"].dropna(), settings.conf_level)
    responder_vars = [v for v in [*cohort.markers, *cohort.covariates] if v in cohort.data.columns]
    evaluated = cohort.data[cohort.data["best_response"].notna()]   # a blank response: named in the notes
    responders = responders_table(evaluated, is_responder(evaluated["best_response"]), responder_vars,
                                  settings.conf_level)
    marker_rows = responders.variable.isin(cohort.markers) & (responders.kind == "numeric")
    responders = adjust_markers(responders.assign(_all=0), "p", ["_all"], marker_rows).drop(columns="_all")
    cuts = adjust_markers(pd.DataFrame(cut_rows, columns=CUT_COLUMNS), "p_for_adjustment", ["endpoint", "method"])
    cox_tables = []
    for rows in (uni, multi):
        frame = pd.DataFrame(rows, columns=COX_COLUMNS)
        frame = adjust_markers(frame, "p", ["endpoint", "model", "coding"], frame.coding != "covariate")
        cox_tables.append(frame[COX_COLUMNS])
    extra = _continuous_marker_analyses(cohort, settings, warnings)
    km_table = pd.concat([c[0] for c in curves], ignore_index=True) if curves else None
    at_risk = pd.concat([c[1] for c in curves], ignore_index=True) if curves else None
    return BiomarkerResults(
        cohort=cohort, settings=settings, response=resp, km=pd.DataFrame(km_rows, columns=KM_COLUMNS),
        cutpoints=cuts[CUT_COLUMNS], cox_univariable=cox_tables[0], cox_multivariable=cox_tables[1],
        responders=responders, prespecified=pre, km_table=km_table if km_table is not None else
        pd.DataFrame(columns=KM_TABLE_COLUMNS), at_risk=at_risk if at_risk is not None else
        pd.DataFrame(columns=ATRISK_COLUMNS), logrank=pd.DataFrame(logrank_rows, columns=LOGRANK_COLUMNS),
        warnings=_collapse(warnings), **extra,
    )


def _continuous_marker_analyses(cohort: Cohort, settings: Settings, warnings: list[str]) -> dict:
    """Splines, bootstrap validation, time-dependent AUC and response-without-bias tables."""
    spl_rows, curves, val_rows, auc_tables, comparisons, resp_rows, cal = [], [], [], [], [], [], []
    every = cohort   # the splines' knots: every marker value, also of patients without the endpoint (as rms)
    for endpoint in settings.endpoints:
        tcol, ecol = ENDPOINTS[endpoint]
        cohort = endpoint_cohort(every, endpoint)   # complete cases of the endpoint (said in analyse)
        sink = warnings if _marker_events(cohort, endpoint) else []   # else said once in the endpoint's note
        for marker in cohort.markers:
            try:
                fit = fit_spline(every.data, tcol, ecol, marker, settings.spline_knots)
                spl_rows.append(spline_rows(fit, endpoint))
                curve = fit.curve(conf_level=settings.conf_level)
                if curve.se.isna().any():
                    sink.append(f"{endpoint} {marker}: spline curve's confidence band not estimable at "
                                f"{int(curve.se.isna().sum())} of {len(curve)} points (the coefficients' covariance "
                                "is not positive definite): left blank there")
                curves.append(curve.assign(endpoint=endpoint, marker=marker))
            except (ValueError, np.linalg.LinAlgError) as exc:
                sink.append(f"{endpoint} {marker}: spline model not fitted ({exc})")
                spl_rows.append(unfitted_spline_row(every.data, tcol, ecol, marker, settings.spline_knots, endpoint,
                                                    str(exc)))
            if settings.n_boot > 0:
                variables = [marker, *cohort.covariates]
                try:
                    v = validate_cox(cohort.data, tcol, ecol, variables, settings.n_boot, settings.seed)
                    if v.left_out:   # as rms::validate, the optimism is averaged over the samples used
                        sink.append(f"{endpoint} {marker}: bootstrap validation used {v.B} of {v.B_asked} samples "
                                    f"({v.left_out}); the optimism is their mean")
                    model_id = f"{endpoint}:multivariable:continuous:{marker}"
                    val_rows.append(dict(endpoint=endpoint, model_id=model_id, variables=" + ".join(variables),
                                         **v.row()))
                    last = float(cohort.data[tcol].max())
                    if settings.calibration_time < last:
                        cal.append(calibration_at(cohort.data, tcol, ecol, variables, settings.calibration_time,
                                                  conf_type=settings.conf_type, conf_level=settings.conf_level)
                                   .assign(endpoint=endpoint, model_id=model_id))
                    else:
                        sink.append(f"{endpoint} calibration ({marker}): not computed at "
                                        f"{settings.calibration_time:g} months, at or beyond the last time "
                                        f"({last:g} months)")
                except (ValueError, np.linalg.LinAlgError) as exc:
                    sink.append(f"{endpoint} {marker}: bootstrap validation not done ({exc})")
        complete = cohort.data.dropna(subset=[tcol, ecol, *cohort.markers])
        times = [t for t in settings.roc_times if t < complete[tcol].max()]
        if settings.n_boot > 0:
            sink += _auc_not_computed(endpoint, settings.roc_times, complete[tcol])
        if settings.n_boot > 0 and times and len(complete) >= 10:
            roc = time_roc(complete[tcol], complete[ecol], {m: complete[m].to_numpy(float) for m in cohort.markers},
                           times, settings.n_boot, settings.seed, settings.conf_level)
            auc_tables.append(roc.table.assign(endpoint=endpoint))
            first = cohort.markers[0]
            for m in cohort.markers[1:]:
                for t in times:
                    comparisons.append(dict(endpoint=endpoint, **roc.compare(m, first, t)))
        resp_rows += _response_survival(cohort, endpoint, settings, warnings)
    auc = pd.concat(auc_tables, ignore_index=True) if auc_tables else pd.DataFrame()
    spl = pd.DataFrame(spl_rows, columns=list(SPLINE_COLUMNS)) if spl_rows else pd.DataFrame()
    if not spl.empty:
        spl = adjust_markers(spl, "overall_p", ["endpoint"])
    comp = pd.DataFrame(comparisons)
    if not comp.empty:
        comp = adjust_markers(comp, "p", ["endpoint", "time"])
    return dict(splines=spl, spline_curves=pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
                validation=pd.DataFrame(val_rows), time_auc=auc,
                calibration=pd.concat(cal, ignore_index=True) if cal else pd.DataFrame(), auc_comparisons=comp,
                response_survival=pd.DataFrame(resp_rows))


def check_times(name: str, times, *, zero: bool) -> None:
    """ValueError naming ``name`` and the first of ``times`` (months since the start of the endpoint's follow-up)
    that is not a finite time above 0 (``zero``: at or above 0, as a numbers-at-risk table's first column):
    a negative time was taken as asked, an AUC at -6 months blank, an at-risk column at -5 months of every patient."""
    for t in times:
        if not np.isfinite(t) or t < 0 or (t == 0 and not zero):
            raise ValueError(f"{name}: {t:g} is not a time in months ({'0 or more' if zero else 'more than 0'})")


def _auc_not_computed(endpoint: str, roc_times, time: pd.Series) -> list[str]:
    """Why the time-dependent AUC is missing at some asked times (months): fewer than 10 patients with every
    marker, or a time at or beyond their last time (``time``: those patients' times)."""
    if len(time) < 10:
        return [f"{endpoint}: time-dependent AUC not computed: {len(time)} patients with every marker (needs 10)"]
    last = float(time.max())
    beyond = [t for t in roc_times if not t < last]
    if not beyond:
        return []
    return [f"{endpoint}: time-dependent AUC not computed at {', '.join(f'{t:g}' for t in beyond)} months: at or "
            f"beyond the last time of the patients with every marker ({last:g} months)"]


def _response_survival(cohort: Cohort, endpoint: str, settings: Settings, warnings: list[str]) -> list[dict]:
    """Responders vs non-responders by landmark and (with ``response_months``) time-dependent Cox, among the
    patients with a best response (``cohort``: the endpoint's)."""
    tcol, ecol = ENDPOINTS[endpoint]
    o = cohort.outcomes[cohort.outcomes["best_response"].notna()].reset_index(drop=True)
    responder = is_responder(o["best_response"]).to_numpy()
    L = settings.landmark
    if "response_months" in o.columns:
        rt = pd.to_numeric(o["response_months"], errors="coerce").to_numpy(float)
        by_landmark = responder & (np.nan_to_num(rt, nan=np.inf) <= L)
        assumption = None
    else:
        rt = None
        by_landmark = responder
        assumption = (f"no response_months column: responders (CR/PR) taken as responding by the {L:g}-month "
                      "landmark (the first tumour assessment); give response_months for an exact landmark")
    rows = []
    lm = landmark_analysis(o[tcol], o[ecol], by_landmark, L, endpoint, assumption, settings.conf_level,
                           ids=o["patient_id"])
    rows.append(lm.row())
    if rt is None:
        return rows
    responses = np.where(responder, rt, np.nan)
    in_model = responders_in_model(o[tcol], responses)
    if not (o[ecol] == 1).any():   # lifelines: 'singular matrix'; the endpoint's note says why
        followed = int((o[tcol] > 0).sum())   # the patients the model would have (time_dependent_cox)
        rows.append(dict(analysis="time-dependent Cox", endpoint=endpoint, landmark=np.nan, n=followed, events=0,
                         n_excluded=len(o) - followed, n_responders=in_model, hr=np.nan, hr_ci_low=np.nan, hr_ci_high=np.nan,
                         p_cox=np.nan, warning="not fitted: no events"))
    else:
        try:
            td = time_dependent_cox(o[tcol], o[ecol], responses, endpoint=endpoint, conf_level=settings.conf_level,
                                    ids=o["patient_id"])
            rec = td.iloc[0]
            rows.append(dict(analysis="time-dependent Cox", endpoint=endpoint, landmark=np.nan, n=int(rec.n),
                             events=int(rec.events), n_excluded=len(o) - int(rec.n), n_responders=in_model, hr=rec.hr, hr_ci_low=rec.hr_ci_low,
                             hr_ci_high=rec.hr_ci_high, p_cox=rec.p, warning=rec.warning))
        except Exception as exc:  # lifelines raises its own convergence errors
            warnings.append(f"{endpoint}: time-dependent Cox for response not fitted ({type(exc).__name__}: {exc})")
    return rows


def _collapse(warnings: list[str]) -> list[str]:
    """Merge model warnings that differ only in the marker: 'pfs univariable continuous (a, b): text'."""
    merged: dict[tuple[str, str], list[str]] = {}
    order: list[tuple[str, str]] = []
    for w in warnings:
        head, sep, text = w.partition("): ")
        prefix, paren, marker = head.partition(" (")
        key = (prefix, text) if sep and paren else (w, "")
        if key not in merged:
            merged[key] = []
            order.append(key)
        if sep and paren:
            merged[key].append(marker)
    return [f"{k[0]} ({', '.join(merged[k])}): {k[1]}" if merged[k] else k[0] for k in order]


def analysis_dataset(cohort: Cohort) -> pd.DataFrame:
    """The merged phenotypes + outcomes that the marker analyses used (one row per patient)."""
    outcome_cols = [c for c in cohort.outcomes.columns if c not in cohort.covariates]
    cols = [*outcome_cols, *[c for c in cohort.covariates if c not in outcome_cols],
            *[m for m in cohort.markers if m not in outcome_cols]]
    data = cohort.data[[c for c in dict.fromkeys(cols) if c in cohort.data.columns]]
    # an event column with a blank cell (missing: that endpoint's complete cases) is read as floats;
    # written as read, 0/1 and blank, not 0.0/1.0
    events = {c: data[c].astype("Int64") for c in EVENT_COLUMNS if c in data.columns and data[c].dtype.kind == "f"}
    return data.assign(**events) if events else data


def run_biomarkers(phenotypes: pd.DataFrame, outcomes: pd.DataFrame, out_dir, markers=None, covariates=None,
                   endpoints=("pfs", "os"), cutpoints=None, n_perm: int = 10_000, seed: int = 20240601,
                   conf_type: str = "log", minprop: float = 0.1, break_times=None, n_boot: int = 200,
                   spline_knots: int = 4, roc_times=(6.0, 12.0), landmark: float = 3.0, inputs=(),
                   command_line=None, pdf: bool = False, study=None,
                   sources: tuple[str, str] = ("phenotypes", "outcomes"), reports: str = "now") -> BiomarkerResults:
    """Join, analyse and write every output file to ``out_dir``.

    ``phenotypes`` and ``outcomes`` are DataFrames (a path is a TypeError naming the argument and its reader:
    :func:`tilpheno.biomarkers.cohort.read_phenotypes`); ``outcomes`` must be validated
    (:func:`tilpheno.io.outcomes.read_outcomes`); ``cutpoints``
    is a DataFrame from :func:`read_cutpoints`, a path to such a CSV, or None. ``inputs``: paths
    of the input files, recorded with their SHA-256 in ``run.json`` and the report's footer.
    Every figure is written to ``figures/<name>.svg``; ``pdf=True`` also writes ``figures.pdf``.
    ``out_dir`` is claimed as ``tilpheno process`` claims OUT (:class:`tilpheno.io.outdir.OutputFolder`:
    locked, outputs staged and published at the end, so a failed run leaves the folder as it was);
    the files a previous biomarker run there wrote (``outputs`` of its ``run.json``) are replaced,
    and those this run does not write (e.g. ``validation.csv`` after ``n_boot=0``) are removed; other
    files are kept. A folder holding another command's ``run.json`` (``tilpheno process``) is refused.
    ``study`` (a ``tilpheno.study.Study``; default the bundled one): its ``biomarkers`` are the
    markers analysed when ``markers`` is None. ``sources``: how errors name the two tables (the
    command line passes their files).
    ``reports``: ``"now"`` draws ``report.html`` and the figures; ``"none"`` writes every table and
    ``run.json`` (recorded there as ``parameters.reports``) but no report, figure or PDF (most of a small
    run's time), as ``tilpheno process --reports none``; a previous run's report and figures in
    ``out_dir`` are then removed with its tables, as they describe another analysis.
    """
    import time as _time

    from tilpheno.cache import code_digest
    from tilpheno.provenance import FileDigest, sha256_file, start_record

    from .codebook import codebook
    from .report import FigureExport, render_report

    started = _time.monotonic()
    require_frames(phenotypes, outcomes)
    bad = [e for e in endpoints if e not in ENDPOINTS]
    if not endpoints:
        raise ValueError("no endpoint given; choose from pfs, os")
    if bad:
        from tilpheno.errors import did_you_mean

        raise ValueError(f"unknown endpoint(s) {', '.join(bad)}{did_you_mean(bad[0], ENDPOINTS)}; choose from pfs, os")
    if not 0 <= n_perm <= MAX_PERMUTATIONS or not 0 <= n_boot <= MAX_BOOTSTRAP:
        raise ValueError(f"permutations must lie in 0-{MAX_PERMUTATIONS:,} (got {n_perm:,}) and bootstrap samples "
                         f"in 0-{MAX_BOOTSTRAP:,} (got {n_boot:,})")
    check_times("roc_times", roc_times, zero=False)
    check_times("break_times", break_times or (), zero=True)
    check_reports(reports, pdf)
    out = Path(out_dir)
    previous_record = _biomarker_folder_record(out)
    cohort = build_cohort(phenotypes, outcomes, markers, covariates, study=study, sources=sources)
    if len(cohort.data) < MIN_PATIENTS:
        hints = [n for n in cohort.notes if n.startswith("outcomes product_id ")]
        example = (f"; e.g. {hints[0]}" if hints else
                   f"; e.g. outcomes '{cohort.outcomes['product_id'].iloc[0]}', phenotypes "
                   f"'{cohort.products_without_outcomes[0]}'" if cohort.products_without_outcomes else "")
        raise TableError(f"{sources[0]}, {sources[1]}: {len(cohort.data)} patient(s) with both a phenotyped product and "
                         f"outcomes (product_id in both tables); the analysis needs at least {MIN_PATIENTS}{example}")
    pre = read_cutpoints(cutpoints) if isinstance(cutpoints, (str, Path)) else cutpoints
    settings = Settings(endpoints=tuple(endpoints), conf_type=conf_type, minprop=minprop, maxprop=1 - minprop,
                        n_perm=n_perm, seed=seed, break_times=tuple(break_times) if break_times else None,
                        n_boot=n_boot, spline_knots=spline_knots, roc_times=tuple(roc_times), landmark=landmark)
    record = start_record(command_line=command_line, parameters={**settings.__dict__, "reports": reports},
                          strategy_paths=[], release_spec={}, code_sha256=code_digest())
    results = analyse(cohort, settings, pre)
    record.finish([FileDigest(str(p), sha256_file(p)) for p in inputs if p is not None], 0.0)
    results.run_record = record
    from tilpheno.io.outdir import RECORD_NAME, OutputFolder, unwritable

    tables = {"response.csv": results.response, "km.csv": results.km, "cutpoints.csv": results.cutpoints,
              "cox_univariable.csv": results.cox_univariable, "cox_multivariable.csv": results.cox_multivariable,
              "responders.csv": results.responders, "unmatched.csv": cohort.unmatched(),
              "km_table.csv": results.km_table, "at_risk.csv": results.at_risk, "logrank.csv": results.logrank,
              "analysis_dataset.csv": analysis_dataset(cohort), "splines.csv": results.splines,
              "spline_curves.csv": results.spline_curves, "validation.csv": results.validation,
              "calibration.csv": results.calibration,
              "time_auc.csv": results.time_auc, "time_auc_comparisons.csv": results.auc_comparisons,
              "response_survival.csv": results.response_survival}
    tables["codebook.csv"] = codebook(tables)
    created = not Path(out).exists()
    try:
        with OutputFolder.claim(out, overwrite=True, run_id=record.started_at) as folder:
            if previous_record is not None and not isinstance(previous_record.get("outputs"), list):
                # a biomarker run.json without `outputs` (tilpheno 0.1): its files are the fixed names
                folder.previous = sorted(n for n in [*tables, "report.html", "figures.pdf", RECORD_NAME] if (out / n).is_file())
            stage = folder.staging
            for name, frame in tables.items():
                if frame.shape[1] == 0:  # an analysis not run (e.g. --bootstrap 0): no file rather than an empty one
                    continue
                atomic.write_csv(stage / name, frame)
                results.files[name] = out / name
            if reports == "now":
                figures = FigureExport(pdf)
                atomic.write_text(stage / "report.html", render_report(results, figures))
                results.files["report.html"] = out / "report.html"
                _export_figures(stage, figures)
                if pdf:
                    results.files["figures.pdf"] = out / "figures.pdf"
            record.finish(record.inputs, _time.monotonic() - started)
            record.extra.update(folder.record())
            results.removed = sorted(set(folder.previous) - set(record.extra["outputs"]))
            atomic.write_text(stage / RECORD_NAME, record.to_json())
            folder.publish()
    except OSError as exc:   # a full or read-only disk: the system names no file, the folder is named
        raise unwritable(exc, out, created=created) from None
    results.files["run.json"] = out / RECORD_NAME
    return results


REPORT_MODES = ("now", "none")
"""``reports`` of :func:`run_biomarkers`: draw the report and figures now, or none (tables only)."""


def check_reports(reports: str, pdf: bool) -> None:
    """A ValueError naming ``reports`` when it is not one of :data:`REPORT_MODES`, or when ``pdf``
    asks for figures a run without reports does not draw."""
    if reports not in REPORT_MODES:
        raise ValueError(f"reports: {reports!r} is not one of {', '.join(REPORT_MODES)}")
    if pdf and reports == "none":
        raise ValueError("reports: 'none' draws no figures, so pdf=True has no figures.pdf to write; drop pdf=True "
                         "or draw the report")


def _biomarker_folder_record(out: Path) -> dict | None:
    """The ``run.json`` of a previous biomarker run in ``out`` (None when there is none); a
    ``run.json`` of another command (``tilpheno process``: its record would be lost) or an
    unreadable one is a TableError naming the folder."""
    import json

    path = out / "run.json"
    if not path.is_file() and not path.is_symlink():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not (isinstance(data, dict) and isinstance(data.get("parameters"), dict) and "n_perm" in data["parameters"]):
        raise TableError(f"{out}: holds the run.json of another tilpheno run (e.g. `tilpheno process`), not of a "
                         "biomarker analysis; write the biomarker analysis to a folder of its own")
    return data


def _export_figures(out: Path, figures) -> None:
    """figures/<name>.svg for each figure and figures.pdf with one page per figure."""
    folder = out / "figures"
    folder.mkdir(exist_ok=True)
    for name, svg in figures.svgs:
        atomic.write_bytes(folder / f"{name}.svg", svg)
    pdf = figures.pdf_bytes()
    if pdf is not None:
        atomic.write_bytes(out / "figures.pdf", pdf)
