"""The whole biomarker analysis: ``run_biomarkers(phenotypes, outcomes, out_dir) -> BiomarkerResults``.

Per endpoint (PFS, OS) and marker:

- cut-point groupings: the median split (low = values <= the median), any pre-specified cut
  (``--cutpoints`` file), and the maximally selected log-rank cut (see ``cutpoints``), each with
  Kaplan-Meier medians per group and the log-rank test of the grouping;
- Cox models: univariable (marker alone) and multivariable (marker + covariates), the marker
  coded continuous (HR per unit; per 10^9 cells for dose columns ``*_dose_cells``) and dichotomised
  (high vs low at the pre-specified cut when given, else the median; never the data-optimised
  cut, whose HR would be biased away from 1).

Files written (atomically) to ``out_dir``: response.csv, km.csv, cutpoints.csv,
cox_univariable.csv, cox_multivariable.csv, responders.csv, unmatched.csv, report.html.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tilpheno.errors import TableError
from tilpheno.io import atomic

from .cohort import ENDPOINTS, Cohort, build_cohort
from .cox import fit_cox
from .cutpoints import fixed_cut_statistic, maxstat_logrank
from .endpoints import is_responder, response_rates
from .responders import responders_table
from .survival import KaplanMeier, logrank_test, median_followup

LANDMARK_MONTHS = 12.0
KM_COLUMNS = ["endpoint", "grouping", "group", "n", "events", "median", "median_ci_low", "median_ci_high",
              "rate_12m", "rate_12m_ci_low", "rate_12m_ci_high", "median_followup"]
CUT_COLUMNS = ["endpoint", "marker", "method", "cutpoint", "n_low", "n_high", "statistic", "p_raw", "p_lau92",
               "p_lau94", "p_perm", "n_perm", "median_low", "median_high", "logrank_chisq", "logrank_p"]
COX_COLUMNS = ["endpoint", "model", "variable", "coding", "unit", "n", "events", "coef", "se", "hr", "hr_ci_low",
               "hr_ci_high", "p", "zph_chisq", "zph_p", "zph_global_p", "lr_chisq", "lr_df", "lr_p",
               "concordance", "events_per_variable", "warning"]


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
    warnings: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def read_cutpoints(path) -> pd.DataFrame:
    """Pre-specified cut-points: CSV with ``marker, cutpoint`` and optional ``endpoint`` (blank = all)."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise TableError(f"{path}: not a readable CSV table ({type(exc).__name__})") from None
    frame.columns = [c.strip() for c in frame.columns]
    for col in ("marker", "cutpoint"):
        if col not in frame.columns:
            raise TableError(f"{path}: row 1, column '{col}': missing required column")
    if "endpoint" not in frame.columns:
        frame["endpoint"] = ""
    out = []
    for i, row in frame.iterrows():
        try:
            cut = float(row["cutpoint"])
        except ValueError:
            raise TableError(f"{path}: row {i + 2}, column 'cutpoint': '{row['cutpoint']}' is not a number") from None
        if not np.isfinite(cut):
            raise TableError(f"{path}: row {i + 2}, column 'cutpoint': not a finite number")
        ep = row["endpoint"].strip().lower()
        if ep and ep not in ENDPOINTS:
            raise TableError(f"{path}: row {i + 2}, column 'endpoint': unknown endpoint '{ep}' (pfs or os)")
        out.append((row["marker"].strip(), ep, cut))
    return pd.DataFrame(out, columns=["marker", "endpoint", "cutpoint"])


def _km_row(endpoint, grouping, group, time, event, settings: Settings) -> dict:
    km = KaplanMeier(settings.conf_type, settings.conf_level).fit(time, event)
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


def _cox_rows(fit, endpoint, model, coding, unit, marker_col, marker) -> list[dict]:
    zph = fit.zph.set_index("term")
    rows = []
    n_vars = len(fit.coefficients)
    for rec in fit.coefficients.itertuples(index=False):
        term = next((t for t in zph.index if rec.variable == t or rec.variable.startswith(f"{t}[")), None)
        name = marker if rec.variable == marker_col else rec.variable
        rows.append(dict(endpoint=endpoint, model=model, variable=name,
                         coding=coding if rec.variable == marker_col else "covariate",
                         unit=unit if rec.variable == marker_col else "", n=fit.n, events=fit.events,
                         coef=rec.coef, se=rec.se, hr=rec.hr, hr_ci_low=rec.hr_ci_low, hr_ci_high=rec.hr_ci_high,
                         p=rec.p, zph_chisq=zph.at[term, "chisq"] if term else np.nan,
                         zph_p=zph.at[term, "p"] if term else np.nan, zph_global_p=zph.at["GLOBAL", "p"],
                         lr_chisq=fit.lr_chisq, lr_df=fit.lr_df, lr_p=fit.lr_p, concordance=fit.concordance,
                         events_per_variable=fit.events / n_vars, warning="; ".join(fit.warnings)))
    return rows


def _marker_analyses(cohort: Cohort, endpoint: str, marker: str, pre: pd.DataFrame, settings: Settings,
                     warnings: list[str]):
    tcol, ecol = ENDPOINTS[endpoint]
    d = cohort.data.dropna(subset=[marker])
    x, t, e = d[marker].to_numpy(float), d[tcol].to_numpy(float), d[ecol].to_numpy(float)
    km_rows, cut_rows, uni, multi = [], [], [], []
    splits = [("median", float(np.median(x)), None)]
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
                row = _km_row(endpoint, grouping, g, t[k], e[k], settings)
                km_rows.append(row)
                medians[g] = row["median"]
        lr = logrank_test(t, e, groups)
        if ms_res is not None:
            stat, p_raw, p92, p94, p_perm = ms_res.statistic, ms_res.p_raw, ms_res.p_lau92, min(ms_res.p_lau94, 1.0), ms_res.p_perm
        else:
            fixed = fixed_cut_statistic(x, t, e, cut)
            stat, p_raw, p92, p94, p_perm = fixed.statistic, fixed.p_raw, np.nan, np.nan, np.nan
        cut_rows.append(dict(endpoint=endpoint, marker=marker, method=method, cutpoint=cut,
                             n_low=int((groups == "low").sum()), n_high=int((groups == "high").sum()),
                             statistic=stat, p_raw=p_raw, p_lau92=p92, p_lau94=p94, p_perm=p_perm,
                             n_perm=settings.n_perm if ms_res is not None else 0,
                             median_low=medians.get("low", np.nan), median_high=medians.get("high", np.nan),
                             logrank_chisq=lr.chisq, logrank_p=lr.p))
    dich_cut = pre_cut if pre_cut is not None else splits[0][1]
    scale, unit = (1e9, "per 1e9 cells") if marker.endswith("_dose_cells") else (1.0, "per unit")
    frame = d.assign(_cont=d[marker] / scale, _dich=(d[marker] > dich_cut).astype(float))
    cut_label = "prespecified" if pre_cut is not None else "median"
    codings = [("continuous", "_cont", unit), ("dichotomized", "_dich", f"high vs low ({cut_label} cut {dich_cut:.4g})")]
    for coding, col, unit_text in codings:
        for model, variables, sink in [("univariable", [col], uni),
                                       ("multivariable", [col, *cohort.covariates], multi)]:
            if model == "multivariable" and not cohort.covariates:
                continue
            try:
                fit = fit_cox(frame, tcol, ecol, variables, settings.conf_level)
            except (ValueError, np.linalg.LinAlgError, ArithmeticError) as exc:
                warnings.append(f"{endpoint} {marker} {model} {coding}: Cox model not fitted ({exc})")
                continue
            warnings.extend(f"{endpoint} {model} {coding} ({marker}): {w}" for w in fit.warnings)
            sink.extend(_cox_rows(fit, endpoint, model, coding, unit_text, col, marker))
    return km_rows, cut_rows, uni, multi


def analyse(cohort: Cohort, settings: Settings = Settings(), prespecified: pd.DataFrame | None = None) -> BiomarkerResults:
    """All tables for a joined cohort (no files written)."""
    pre = prespecified if prespecified is not None else pd.DataFrame(columns=["marker", "endpoint", "cutpoint"])
    unknown = sorted(set(pre.marker) - set(cohort.markers))
    warnings = list(cohort.notes)
    if unknown:
        warnings.append(f"pre-specified cut-point(s) for marker(s) not analysed: {', '.join(unknown)}")
    km_rows, cut_rows, uni, multi = [], [], [], []
    for endpoint in settings.endpoints:
        tcol, ecol = ENDPOINTS[endpoint]
        km_rows.append(_km_row(endpoint, "all", "all", cohort.outcomes[tcol].to_numpy(float),
                               cohort.outcomes[ecol].to_numpy(float), settings))
        for marker in cohort.markers:
            k, c, u, m = _marker_analyses(cohort, endpoint, marker, pre, settings, warnings)
            km_rows += k
            cut_rows += c
            uni += u
            multi += m
    resp = response_rates(cohort.outcomes["best_response"], settings.conf_level)
    responder_vars = [v for v in [*cohort.markers, *cohort.covariates] if v in cohort.data.columns]
    responders = responders_table(cohort.data, is_responder(cohort.data["best_response"]), responder_vars)
    return BiomarkerResults(
        cohort=cohort, settings=settings, response=resp, km=pd.DataFrame(km_rows, columns=KM_COLUMNS),
        cutpoints=pd.DataFrame(cut_rows, columns=CUT_COLUMNS), cox_univariable=pd.DataFrame(uni, columns=COX_COLUMNS),
        cox_multivariable=pd.DataFrame(multi, columns=COX_COLUMNS), responders=responders, prespecified=pre,
        warnings=_collapse(warnings),
    )


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


def run_biomarkers(phenotypes: pd.DataFrame, outcomes: pd.DataFrame, out_dir, markers=None, covariates=None,
                   endpoints=("pfs", "os"), cutpoints=None, n_perm: int = 10_000, seed: int = 20240601,
                   conf_type: str = "log", minprop: float = 0.1) -> BiomarkerResults:
    """Join, analyse and write every output file to ``out_dir``.

    ``outcomes`` must be validated (:func:`tilpheno.io.outcomes.read_outcomes`); ``cutpoints``
    is a DataFrame from :func:`read_cutpoints`, a path to such a CSV, or None.
    """
    from .report import render_report

    bad = [e for e in endpoints if e not in ENDPOINTS]
    if bad:
        raise ValueError(f"unknown endpoint(s) {', '.join(bad)}; choose from pfs, os")
    cohort = build_cohort(phenotypes, outcomes, markers, covariates)
    pre = read_cutpoints(cutpoints) if isinstance(cutpoints, (str, Path)) else cutpoints
    settings = Settings(endpoints=tuple(endpoints), conf_type=conf_type, minprop=minprop, maxprop=1 - minprop,
                        n_perm=n_perm, seed=seed)
    results = analyse(cohort, settings, pre)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {"response.csv": results.response, "km.csv": results.km, "cutpoints.csv": results.cutpoints,
              "cox_univariable.csv": results.cox_univariable, "cox_multivariable.csv": results.cox_multivariable,
              "responders.csv": results.responders, "unmatched.csv": cohort.unmatched()}
    for name, frame in tables.items():
        atomic.write_csv(out / name, frame)
        results.files[name] = out / name
    atomic.write_text(out / "report.html", render_report(results))
    results.files["report.html"] = out / "report.html"
    return results
