"""Responders (CR + PR) versus non-responders (SD, PD, NE): the study's Table 3.

Numeric variables: mean +- SD (n - 1 denominator), median (IQR by numpy's linear
interpolation, R type 7), Welch's unequal-variance t-test and the Mann-Whitney U test as R
``wilcox.test``: exact when both groups have fewer than 50 values and there are no ties,
otherwise the normal approximation with continuity and tie corrections.
Categorical variables: counts per level; Pearson's chi-square test (Yates-corrected for 2x2
tables, as R ``chisq.test``) unless an expected count is below 5, then Fisher's exact test
(for r x 2 tables: all tables with the observed margins, p = sum of probabilities not above
the observed one, with R's relative tolerance 1e-7; estimated from 20,000 random tables with
the same margins when there are too many levels to enumerate).
A numeric column with at most 3 distinct values (e.g. ECOG 0/1/2) is treated as categorical.
Effect sizes (responders minus non-responders): Welch's t statistic and df, the difference in
means with its Welch CI (R ``t.test``), the difference in medians, the Mann-Whitney W (R's
statistic: pairs with the responder value larger, ties 1/2); for two-level categorical variables
the conditional maximum-likelihood odds ratio of response (second level vs first) with its exact
CI (R ``fisher.test``); both CIs at the analysis' ``conf_level`` (R ``conf.level``).
Missing values are left out per variable; ``n_resp``/``n_nonresp`` say how many were used.
The ``*_summary`` texts follow the report's reading convention (formatting.spread: a cell dose in 10⁹ cells); the
numeric columns keep the variable's own unit (codebook: ``marker unit``).
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import special, stats

from .formatting import spread

MAX_EXACT_TABLES = 200_000
MC_TABLES = 20_000
COLUMNS = ["variable", "kind", "level", "n_resp", "n_nonresp", "resp_summary", "nonresp_summary",
           "resp_mean", "resp_sd", "resp_median", "resp_q1", "resp_q3",
           "nonresp_mean", "nonresp_sd", "nonresp_median", "nonresp_q1", "nonresp_q3",
           "test", "p", "welch_p", "mannwhitney_p", "t_statistic", "t_df", "mean_diff", "mean_diff_ci_low",
           "mean_diff_ci_high", "median_diff", "w_statistic", "odds_ratio", "or_ci_low", "or_ci_high"]


def mann_whitney_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Mann-Whitney p with R ``wilcox.test``'s choice of exact or normal method."""
    ties = np.unique(np.r_[a, b]).size < a.size + b.size
    exact = a.size < 50 and b.size < 50 and not ties
    return float(stats.mannwhitneyu(a, b, alternative="two-sided",
                                    method="exact" if exact else "asymptotic", use_continuity=True).pvalue)


def fisher_rx2(table: np.ndarray) -> float:
    """Fisher's exact p for an r x 2 table (rows = levels, columns = responder, non-responder)."""
    table = np.asarray(table, dtype=int)
    rows = table.sum(axis=1)
    k = int(table[:, 0].sum())
    n = int(rows.sum())

    def logp(x) -> float:
        return float(np.sum(special.gammaln(rows + 1) - special.gammaln(np.asarray(x) + 1)
                            - special.gammaln(rows - np.asarray(x) + 1))
                     - (special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)))

    observed = logp(table[:, 0])
    total = 0.0
    for head in itertools.product(*[range(r + 1) for r in rows[:-1]]):
        last = k - sum(head)
        if 0 <= last <= rows[-1]:
            lp = logp((*head, last))
            if lp <= observed + np.log1p(1e-7):
                total += np.exp(lp)
    return float(min(total, 1.0))


def _summary(name: str, x: np.ndarray) -> tuple:
    if x.size == 0:
        return ("", *[np.nan] * 5)
    mean, sd = float(np.mean(x)), float(np.std(x, ddof=1)) if x.size > 1 else float("nan")
    med, q1, q3 = (float(v) for v in np.percentile(x, [50, 25, 75]))
    return spread(name, mean, sd, med, q1, q3), mean, sd, med, q1, q3


def _numeric_row(name: str, x: np.ndarray, responder: np.ndarray, conf_level: float) -> dict:
    ok = ~np.isnan(x)
    a, b = x[ok & responder], x[ok & ~responder]
    sa, sb = _summary(name, a), _summary(name, b)
    effects = dict(t_statistic=np.nan, t_df=np.nan, mean_diff=np.nan, mean_diff_ci_low=np.nan,
                   mean_diff_ci_high=np.nan, median_diff=np.nan, w_statistic=np.nan)
    welch = np.nan
    if a.size > 1 and b.size > 1:
        tt = stats.ttest_ind(a, b, equal_var=False)
        ci = tt.confidence_interval(confidence_level=conf_level)
        welch = float(tt.pvalue)
        effects.update(t_statistic=float(tt.statistic), t_df=float(tt.df), mean_diff=float(a.mean() - b.mean()),
                       mean_diff_ci_low=float(ci.low), mean_diff_ci_high=float(ci.high))
    mw = mann_whitney_p(a, b) if a.size and b.size else np.nan
    if a.size and b.size:
        effects.update(median_diff=float(np.median(a) - np.median(b)),
                       w_statistic=float(stats.mannwhitneyu(a, b, method="asymptotic").statistic))
    return dict(variable=name, kind="numeric", level="", n_resp=a.size, n_nonresp=b.size,
                resp_summary=sa[0], nonresp_summary=sb[0],
                resp_mean=sa[1], resp_sd=sa[2], resp_median=sa[3], resp_q1=sa[4], resp_q3=sa[5],
                nonresp_mean=sb[1], nonresp_sd=sb[2], nonresp_median=sb[3], nonresp_q1=sb[4], nonresp_q3=sb[5],
                test="Welch t / Mann-Whitney", p=welch, welch_p=welch, mannwhitney_p=mw, **effects)


def categorical_test(table: np.ndarray) -> tuple[str, float]:
    """Chi-square, or Fisher's exact test when an expected count is below 5.

    Exact enumeration is used up to ``MAX_EXACT_TABLES`` candidate tables; beyond (many levels)
    the Fisher p-value is estimated from ``MC_TABLES`` random tables with the same margins (seed 1).
    """
    table = table[table.sum(axis=1) > 0]
    if table.shape[0] < 2 or (table.sum(axis=0) == 0).any():
        return "none", float("nan")
    expected = stats.contingency.expected_freq(table)
    if (expected < 5).any():
        if np.prod(table.sum(axis=1)[:-1] + 1.0) <= MAX_EXACT_TABLES:
            return "Fisher exact", fisher_rx2(table)
        method = stats.MonteCarloMethod(n_resamples=MC_TABLES, rng=np.random.default_rng(1))
        return f"Fisher (Monte Carlo, {MC_TABLES} tables)", float(stats.fisher_exact(table, method=method).pvalue)
    return "chi-square", float(stats.chi2_contingency(table, correction=True).pvalue)


def _categorical_rows(name: str, values: pd.Series, responder: np.ndarray, conf_level: float) -> list[dict]:
    ok = values.notna().to_numpy()
    levels = sorted(values[ok].astype(str).unique())
    v = values.astype(str).to_numpy()
    table = np.array([[np.sum(ok & (v == lev) & responder), np.sum(ok & (v == lev) & ~responder)] for lev in levels])
    test, p = categorical_test(table)
    n_r, n_n = table.sum(axis=0)
    odds = dict(odds_ratio=np.nan, or_ci_low=np.nan, or_ci_high=np.nan)
    if table.shape == (2, 2) and (table.sum(axis=0) > 0).all() and (table.sum(axis=1) > 0).all():
        res = stats.contingency.odds_ratio(table[:, ::-1], kind="conditional")
        ci = res.confidence_interval(confidence_level=conf_level)
        odds = dict(odds_ratio=float(res.statistic), or_ci_low=float(ci.low), or_ci_high=float(ci.high))
    rows = []
    for lev, (cr, cn) in zip(levels, table):
        rows.append(dict(variable=name, kind="categorical", level=lev, n_resp=int(n_r), n_nonresp=int(n_n),
                         resp_summary=f"{cr} ({100 * cr / n_r:.0f}%)" if n_r else "0",
                         nonresp_summary=f"{cn} ({100 * cn / n_n:.0f}%)" if n_n else "0",
                         test=test, p=p, **odds))
    return rows


def responders_table(data: pd.DataFrame, responder: pd.Series, variables: list[str],
                     conf_level: float = 0.95) -> pd.DataFrame:
    """Table 3: one row per numeric variable, one row per level of a categorical one; the CIs (of the
    difference in means, of the odds ratio) at ``conf_level``."""
    r = responder.to_numpy(dtype=bool)
    rows: list[dict] = []
    for var in variables:
        col = data[var]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col) and col.nunique() > 3:
            rows.append(_numeric_row(var, col.to_numpy(dtype=float), r, conf_level))
        else:
            rows.extend(_categorical_rows(var, col, r, conf_level))
    return pd.DataFrame(rows, columns=COLUMNS)
