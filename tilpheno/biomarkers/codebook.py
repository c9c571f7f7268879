"""``codebook.csv``: every column of every table the biomarker analysis writes (meaning, unit, method)."""
from __future__ import annotations

import pandas as pd

_P = ("p-value", "", "two-sided")
COLUMNS: dict[str, tuple[str, str, str]] = {
    "endpoint": ("survival endpoint (pfs, os)", "", ""),
    "marker": ("marker column analysed", "", ""),
    "variable": ("model term: the marker, or a covariate (categorical as var[level] vs the first level)", "", ""),
    "model_id": ("one id per fitted model: endpoint:model:coding:marker", "", ""),
    "model": ("univariable (marker alone) or multivariable (marker + covariates)", "", "Cox, Efron ties"),
    "coding": ("continuous, dichotomized (high vs low), or covariate", "", ""),
    "unit": ("unit of the hazard ratio", "", ""),
    "cut": ("cut of a dichotomised marker (high = above)", "marker unit", "pre-specified, else median"),
    "cut_method": ("how the cut was chosen", "", ""),
    "cutpoint": ("cut (low group = values at or below)", "marker unit", ""),
    "method": ("cut-point method: median, prespecified, maxstat", "", ""),
    "grouping": ("marker:method of the patient grouping, or all", "", ""),
    "group": ("group of the grouping", "", ""),
    "n": ("patients used", "patients", "complete cases"),
    "events": ("events among them", "events", ""),
    "coef": ("log hazard ratio", "per unit", "Cox partial likelihood, Efron ties"),
    "se": ("standard error of coef", "", "inverse information"),
    "hr": ("hazard ratio exp(coef)", "", ""),
    "hr_ci_low": ("lower CI limit of the hazard ratio", "", "Wald, exp(coef - z se)"),
    "hr_ci_high": ("upper CI limit of the hazard ratio", "", "Wald, exp(coef + z se)"),
    "z": ("Wald z = coef / se", "", ""),
    "p": ("p-value", "", "two-sided Wald (Cox) / the row's test"),
    "p_holm": ("Holm-adjusted p across the markers of the same endpoint/model/coding", "", "R p.adjust('holm')"),
    "p_bh": ("Benjamini-Hochberg adjusted p (same family as p_holm)", "", "R p.adjust('BH')"),
    "zph_chisq": ("proportional-hazards test statistic of the term", "chi-square", "R cox.zph, transform km"),
    "zph_df": ("degrees of freedom of zph_chisq", "", ""), "zph_p": _P,
    "zph_global_chisq": ("global proportional-hazards statistic", "chi-square", "R cox.zph GLOBAL"),
    "zph_global_df": ("degrees of freedom", "", ""), "zph_global_p": _P,
    "lr_chisq": ("likelihood-ratio test vs the null model", "chi-square", ""), "lr_df": ("df", "", ""), "lr_p": _P,
    "wald_chisq": ("Wald test of all coefficients", "chi-square", "b' I b"), "wald_p": _P,
    "score_chisq": ("score (log-rank) test of all coefficients", "chi-square", "at b = 0"), "score_p": _P,
    "concordance": ("Harrell's C of the linear predictor", "", "R concordance, ties in predictor count 1/2"),
    "concordance_se": ("standard error of C", "", "R infinitesimal jackknife"),
    "loglik": ("log partial likelihood at the estimate", "", ""),
    "converged": ("Newton-Raphson converged (relative step < 1e-11)", "", ""),
    "iterations": ("Newton steps after the starting fit", "", ""),
    "max_scaled_score": ("largest |score| x SE at the estimate (convergence check)", "", ""),
    "events_per_variable": ("events per model coefficient", "", "warning below 10"),
    "warning": ("warnings: lifelines, convergence, PH violation, EPV, assumptions", "", "never silenced"),
    "statistic": ("standardised log-rank statistic (maxstat: maximum over cuts)", "", "R maxstat LogRank"),
    "p_raw": ("uncorrected p of the (maximal) statistic", "", "2(1 - Phi)"),
    "p_lau92": ("Lausen-Schumacher 1992 corrected p", "", ""),
    "p_lau94": ("Lausen-Sauerbrei-Schumacher 1994 bound clipped to [0, 1]", "", ""),
    "p_lau94_bound": ("the raw Lau94 bound (may be < 0 or > 1)", "", ""),
    "p_perm": ("permutation p of the maximal statistic", "", "(1 + #{M* >= M}) / (1 + B)"),
    "n_perm": ("permutations", "", ""), "p_for_adjustment": (
        "p given to Holm/BH: maxstat rows the permutation p (the Lausen-Schumacher 1992 p with 0 permutations), "
        "other rows the log-rank p", "", ""),
    "n_low": ("patients in the low group (at or below the cut; Cox tables: in the model)", "patients", ""),
    "n_high": ("patients in the high group (above the cut; Cox tables: in the model)", "patients", ""),
    "median_low": ("median survival, low group", "months", "Kaplan-Meier"),
    "median_high": ("median survival, high group", "months", "Kaplan-Meier"),
    "logrank_chisq": ("log-rank chi-square", "", "survdiff rho = 0"), "logrank_p": _P,
    "median": ("median survival", "months", "Kaplan-Meier, midpoint rule on flat 0.5"),
    "median_ci_low": ("lower CI of the median", "months", "Brookmeyer-Crowley"),
    "median_ci_high": ("upper CI of the median", "months", "Brookmeyer-Crowley"),
    "rate_12m": ("survival probability at 12 months", "fraction", "Kaplan-Meier"),
    "rate_12m_ci_low": ("lower CI", "fraction", "pointwise, conf_type"), "rate_12m_ci_high": ("upper CI", "fraction", ""),
    "median_followup": ("median follow-up", "months", "reverse Kaplan-Meier"),
    "time": ("time", "months", ""), "n.risk": ("at risk just before time", "patients", "survfit"),
    "n.event": ("events at time", "events", ""), "n.censor": ("censored at time", "patients", ""),
    "surv": ("Kaplan-Meier survival", "fraction", ""), "std.err": ("standard error of surv", "", "Greenwood"),
    "lower": ("lower pointwise CI", "fraction", "conf_type"), "upper": ("upper pointwise CI", "fraction", ""),
    "observed": ("observed events", "events", "log-rank"), "expected": ("expected events", "events", "log-rank"),
    "o_over_e": ("observed / expected", "", ""), "chisq": ("chi-square", "", ""), "df": ("degrees of freedom", "", ""),
    "metric": ("ORR (CR+PR) or DCR (CR+PR+SD)", "", ""), "count": ("patients meeting the metric", "patients", ""),
    "rate": ("rate", "fraction", ""), "ci_low": ("lower CI", "", "see the table's method"),
    "ci_high": ("upper CI", "", "see the table's method"),
    "knots": ("spline knots", "marker unit", "Harrell quantiles"), "n_knots": ("number of knots", "", ""),
    "overall_chisq": ("Wald test of any association (all spline terms)", "chi-square", "rms anova"),
    "overall_df": ("df", "", ""), "overall_p": _P,
    "nonlinear_chisq": ("Wald test of nonlinearity", "chi-square", "rms anova"), "nonlinear_df": ("df", "", ""),
    "nonlinear_p": _P, "reference": ("reference value of the log-HR curve (median)", "marker unit", ""),
    "x": ("marker value", "marker unit", ""), "log_hr": ("log HR vs the reference", "", "spline Cox"),
    "variables": ("model terms", "", ""), "dxy_apparent": ("Somers' Dxy on the data", "", "2(C - 1/2)"),
    "dxy_optimism": ("bootstrap optimism of Dxy", "", "rms::validate"), "dxy_corrected": ("Dxy - optimism", "", ""),
    "c_apparent": ("C on the data", "", ""), "c_corrected": ("optimism-corrected C", "", ""),
    "slope_optimism": ("optimism of the calibration slope", "", ""),
    "slope_corrected": ("optimism-corrected calibration slope", "", ""), "B": ("bootstrap samples used", "", ""),
    "B_asked": ("bootstrap samples asked", "", ""), "seed": ("random seed", "", ""),
    "cases": ("events by time", "patients", ""), "controls": ("event-free after time", "patients", ""),
    "auc": ("cumulative/dynamic AUC", "", "IPCW 1/G(T-); = R riskRegression::Score"),
    "se_boot": ("bootstrap standard error", "", ""), "n_boot": ("bootstrap resamples used", "", ""),
    "marker_a": ("marker compared", "", ""), "marker_b": ("reference marker", "", ""),
    "auc_a": ("AUC of marker_a", "", ""), "auc_b": ("AUC of marker_b", "", ""),
    "difference": ("auc_a - auc_b", "", "paired bootstrap"),
    "analysis": ("landmark or time-dependent Cox", "", "no guarantee-time bias"),
    "landmark": ("landmark time", "months", ""), "n_excluded": ("left out: event/censored at or before the landmark; followed for no time "
                                                                  "(time-dependent Cox)", "patients", ""),
    "n_responders": ("responders", "patients", ""), "p_cox": ("Cox Wald p", "", ""),
    "median_responders": ("median survival of responders", "months", "from time 0"),
    "median_nonresponders": ("median survival of non-responders", "months", "from time 0"),
    "kind": ("numeric or categorical", "", ""), "level": ("category level", "", ""),
    "n_resp": ("responders with a value", "patients", ""), "n_nonresp": ("non-responders with a value", "patients", ""),
    "test": ("test used", "", ""), "welch_p": ("Welch t-test p", "", ""), "mannwhitney_p": ("Mann-Whitney p", "", ""),
    "id": ("unmatched id", "", ""),
    "predicted": ("mean predicted survival at time in the group", "fraction", "Cox, Efron baseline hazard"),
    "observed_ci_low": ("lower CI", "fraction", "pointwise, conf_type"), "observed_ci_high": ("upper CI", "fraction", ""),
    "resp_summary": ("responders: mean ± SD; median (IQR), 3 significant digits", "marker unit; cell doses ×10⁹ cells", ""),
    "nonresp_summary": ("non-responders: mean ± SD; median (IQR), 3 significant digits",
                        "marker unit; cell doses ×10⁹ cells", ""),
    **{f"{group}_{stat}": (f"{group}: {stat}", "marker unit", method)
       for group in ("resp", "nonresp") for stat, method in (("mean", ""), ("sd", "n - 1 denominator"), ("median", ""),
                                                             ("q1", "R quantile type 7"), ("q3", "R quantile type 7"))},
    "t_statistic": ("Welch t statistic", "", "R t.test"), "t_df": ("Welch degrees of freedom", "", "R t.test"),
    "mean_diff": ("difference in means, responders - non-responders", "marker unit", "R t.test"),
    "mean_diff_ci_low": ("lower CI of mean_diff", "marker unit", "Welch"),
    "mean_diff_ci_high": ("upper CI of mean_diff", "marker unit", "Welch"),
    "median_diff": ("difference in medians, responders - non-responders", "marker unit", ""),
    "w_statistic": ("Mann-Whitney W: pairs with the responder value larger, ties 1/2", "", "R wilcox.test"),
    "odds_ratio": ("odds ratio of response, second level vs first", "", "conditional MLE, R fisher.test"),
    "or_ci_low": ("lower CI of odds_ratio", "", "exact, R fisher.test"),
    "or_ci_high": ("upper CI of odds_ratio", "", "exact, R fisher.test"),
}

FILE_COLUMNS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("calibration.csv", "observed"): ("Kaplan-Meier survival at time in the group", "fraction", ""),
    ("responders.csv", "variable"): ("variable compared between responders and non-responders: a marker or a "
                                     "covariate (categorical: one row per level, the level in level)", "", ""),
    ("responders.csv", "p"): ("p-value of the row's test (test), the same on each level's row of a categorical "
                              "variable", "", "two-sided; Welch t for a numeric variable"),
}
"""Columns whose meaning depends on the file (``COLUMNS`` holds one meaning per name)."""


def codebook(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Rows ``file, column, meaning, unit, method`` for every column of ``tables`` (file name -> frame). A column in
    ``marker unit`` is in the unit of its row's marker (cells for ``*_dose_cells``); the report reads those of a cell
    dose in 10⁹ cells (report.table_view)."""
    rows = []
    for name, frame in tables.items():
        for col in frame.columns:
            meaning, unit, method = FILE_COLUMNS.get((name, str(col))) or COLUMNS.get(
                str(col), ("input column (outcomes or phenotypes)", "", ""))
            rows.append((name, col, meaning, unit, method))
    return pd.DataFrame(rows, columns=["file", "column", "meaning", "unit", "method"])
