"""Bootstrap internal validation of a Cox model, as ``rms::validate(cph(...), B)`` (method "boot").

For each of B bootstrap samples (patients drawn with replacement, fixed seed) the model is
refitted; its linear predictor is evaluated on the bootstrap sample (training) and on the
original data (test). Indexes:

- Somers' Dxy = 2 (C - 1/2), C Harrell's concordance of the linear predictor as R computes it
  (sign: a higher predictor means a shorter time, positive Dxy = discrimination), and
- the calibration slope: the coefficient of the linear predictor in a Cox model refitted on it
  (1 in the training data by construction).

Optimism = mean(training index - test index) over the samples whose fit succeeded;
optimism-corrected index = apparent index - optimism (Harrell, Lee & Mark 1996). The number of
samples used is recorded. Every refit (the bootstrap model and the calibration slope) is fitted as
rms' ``coxphFit`` does: R ``coxph.fit`` from 0, stopping at a relative log-likelihood change of at
most 1e-4; a fit that needs 10 iterations, or whose design has a constant column (singular), fails
and its sample is left out. A sample whose partial likelihood has no finite maximum (monotone
likelihood, frequent in small cohorts) is kept with the large coefficients it stops at, as in R:
leaving it out would understate the optimism. Given the same bootstrap samples the indexes equal
``rms::validate``'s; with different random streams they agree within Monte Carlo error: see
tests/test_biomarkers_validation.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .cox import (NewtonFit, collinear_reason, concordance_index, constant_reason, design_matrix, efron_derivatives,
                  linear_predictor, newton_cox, no_finite_maximum_reason)


@dataclass(frozen=True)
class Validation:
    """Apparent, optimism and corrected Dxy and calibration slope; ``B`` samples used of ``B_asked``;
    ``left_out``: why the others were not used, counted (e.g. '3 without an event'; '' when all were)."""

    dxy_apparent: float
    dxy_optimism: float
    dxy_corrected: float
    c_apparent: float
    c_corrected: float
    slope_optimism: float
    slope_corrected: float
    B: int
    B_asked: int
    seed: int
    left_out: str = ""

    def row(self) -> dict:
        """The validation table's columns (``left_out`` is said in the analysis' warnings)."""
        return {k: v for k, v in self.__dict__.items() if k != "left_out"}


RMS_EPS = 1e-4      # rms coxphFit: relative log-likelihood change that ends the iterations
RMS_ITER_MAX = 10   # ... and the iteration count at which the fit counts as failed


def _dxy(time, event, lp) -> float:
    return 2 * concordance_index(time, event, lp).concordance - 1


def rms_refit(time, event, X, eps: float = RMS_EPS, iter_max: int = RMS_ITER_MAX) -> np.ndarray | None:
    """Coefficients of R ``coxph.fit`` (Efron) as rms' ``coxphFit`` calls it in ``validate``, or None where
    rms counts the fit as failed (a constant column, or ``iter_max`` iterations reached).

    Newton-Raphson from 0; done when ``|1 - best loglik / new loglik| <= eps`` at a finite point; a step
    that lowers the log-likelihood (or overflows) is pulled back towards the last accepted point,
    ``(new + h old) / (h + 1)`` after the h-th consecutive failure, as survival's coxfit6.
    """
    X = np.asarray(X, dtype=float).reshape(len(time), -1)
    if np.any(X.std(axis=0) == 0):
        return None
    beta = np.zeros(X.shape[1])
    cur = efron_derivatives(time, event, X, beta)
    best = cur.loglik
    try:
        new = beta + np.linalg.solve(cur.information, cur.score)
        halving = 0
        for iteration in range(1, iter_max + 1):
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                nxt = efron_derivatives(time, event, X, new)
            finite = np.isfinite(nxt.loglik) and np.isfinite(nxt.score).all() and np.isfinite(nxt.information).all()
            if finite and abs(1 - best / nxt.loglik) <= eps:
                return new if iteration < iter_max else None
            if not finite or nxt.loglik < best:
                halving += 1
                new = (new + halving * beta) / (halving + 1)
            else:
                halving, best, beta = 0, nxt.loglik, new
                new = new + np.linalg.solve(nxt.information, nxt.score)
    except np.linalg.LinAlgError:
        return None
    return None


def _slope(time, event, lp) -> float:
    fit = rms_refit(time, event, lp)
    return float(fit[0]) if fit is not None else float("nan")


def _no_full_fit(time, event, X: pd.DataFrame, singular: bool) -> str:
    """Why ``Surv(time, event) ~ X`` has no estimate on the full data (its information matrix ``singular``, else no
    convergence): a column or combination of columns without a finite maximum, e.g. a marker with a monotone
    likelihood (:func:`no_finite_maximum_reason`, as the Cox models say), unless the events are too few for the
    coefficients; else too few events or collinear covariates, or no convergence."""
    events, k = int(np.sum(event)), X.shape[1]
    why = no_finite_maximum_reason(time, event, X) if events > k else None
    if why:
        return f"the model has no finite estimate on the full data: {why}"
    if singular:
        return (f"the model cannot be fitted on the full data: its information matrix is singular ({events} events "
                f"for {k} coefficients, or collinear covariates)")
    return "the model does not converge on the full data"


def validate_cox(frame: pd.DataFrame, duration: str, event: str, variables: list[str], B: int = 200,
                 seed: int = 20240601, resamples=None) -> Validation:
    """Optimism-corrected Dxy, concordance and calibration slope of ``Surv ~ variables`` (complete cases).

    ``resamples``: the B bootstrap samples as arrays of 0-based row indexes of the complete cases
    (default: drawn with replacement from ``seed``)."""
    data = frame[[duration, event, *variables]].dropna().reset_index(drop=True)
    terms = design_matrix(data, variables)
    design = terms.X
    X = design.to_numpy(float)
    t = data[duration].to_numpy(float)
    e = data[event].to_numpy(float)
    unfit = constant_reason(terms) or collinear_reason(design)
    if unfit:
        raise ValueError(f"the model cannot be fitted on the full data: {unfit}")
    try:
        full: NewtonFit | None = newton_cox(t, e, X)
    except np.linalg.LinAlgError:
        full = None
    if full is None or not full.converged:
        raise ValueError(_no_full_fit(t, e, design, singular=full is None))
    apparent = _dxy(t, e, linear_predictor(X, full.beta))
    if resamples is None:
        rng = np.random.default_rng(seed)
        resamples = [rng.integers(0, t.size, t.size) for _ in range(B)]
    d_opt, s_opt = [], []
    unused = {"without an event": 0, "not fitted (rms counts the fit as failed)": 0,
              "calibration slope not estimable": 0}
    for idx in resamples:
        tb, eb, Xb = t[idx], e[idx], X[idx]
        if eb.sum() == 0:
            unused["without an event"] += 1
            continue
        beta = rms_refit(tb, eb, Xb)
        if beta is None:
            unused["not fitted (rms counts the fit as failed)"] += 1
            continue
        lp_test = linear_predictor(X, beta)
        slope = _slope(t, e, lp_test)
        if not np.isfinite(slope):
            unused["calibration slope not estimable"] += 1
            continue
        d_opt.append(_dxy(tb, eb, linear_predictor(Xb, beta)) - _dxy(t, e, lp_test))
        s_opt.append(1.0 - slope)
    left_out = ", ".join(f"{n} {why}" for why, n in unused.items() if n)
    if not d_opt:
        raise ValueError(f"none of the {len(resamples)} bootstrap samples could be used ({left_out})")
    do, so = float(np.mean(d_opt)), float(np.mean(s_opt))
    return Validation(apparent, do, apparent - do, (apparent + 1) / 2, (apparent - do + 1) / 2, so, 1 - so,
                      len(d_opt), len(resamples), seed, left_out)


def baseline_cumhaz(time, event, lp) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative baseline hazard at the distinct event times for risk scores ``exp(lp)``, with Efron's
    correction for tied deaths (R ``survfit.coxph`` for an Efron fit): each of d tied deaths adds
    ``1 / (sum_risk r - j/d sum_dead r)``, j = 0..d-1."""
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float)
    r = np.exp(np.asarray(lp, dtype=float))
    times = np.unique(t[e == 1])
    steps = []
    for tk in times:
        risk = r[t >= tk].sum()
        dead = r[(t == tk) & (e == 1)]
        d = dead.size
        steps.append(sum(1.0 / (risk - j / d * dead.sum()) for j in range(d)))
    return times, np.cumsum(steps)


def predicted_survival(time, event, lp, lp_new, u: float) -> np.ndarray:
    """S(u | x) = exp(-H0(u) exp(lp_new)) from a fitted Cox model's linear predictors ``lp``."""
    times, H = baseline_cumhaz(time, event, lp)
    k = np.searchsorted(times, u, side="right")
    H0 = H[k - 1] if k > 0 else 0.0
    return np.exp(-H0 * np.exp(np.asarray(lp_new, dtype=float)))


def calibration_groups(pred: np.ndarray, groups: int) -> tuple[np.ndarray, int]:
    """Group (1, 2, ...) of each predicted S(u) and the number of groups, as ``rms::calibrate(cmethod = "KM")``: cuts
    ``unique(quantile(c(0, 1, pred), seq(0, 1, length = groups + 1)))`` (R type 7), ``Hmisc::cut2`` intervals
    ``[cut_i, cut_i+1)``, the last closed (cut2 moves each cut but the last down by half the smallest gap between
    the predictions and cuts, then R ``cut``'s right-closed intervals). Not equal-size groups: with ties, or as the
    quantiles take 0 and 1 in (lung, 227 patients: 54, 58, 58, 57). A group may be empty (tied predictions)."""
    cuts = np.unique(np.quantile(np.r_[0.0, 1.0, pred], np.linspace(0, 1, groups + 1)))
    edges = cuts - np.min(np.diff(np.unique(np.r_[pred, cuts]))) / 2
    edges[-1] = cuts[-1]
    return np.searchsorted(edges, pred, side="left"), cuts.size - 1


def calibration_at(frame: pd.DataFrame, duration: str, event: str, variables: list[str], u: float,
                   groups: int = 4, conf_type: str = "log", conf_level: float = 0.95) -> pd.DataFrame:
    """Apparent calibration at time ``u``, as ``rms::calibrate(cph(..., surv = TRUE, time.inc = u), cmethod = "KM",
    u = u, m = n %/% groups)`` without the bootstrap (its mean.predicted and KM columns; rms::groupkm): patients in
    ``groups`` groups of predicted S(u) (:func:`calibration_groups`); per group the mean predicted S(u) and the
    Kaplan-Meier S(u) with its pointwise CI (``conf_type``, as the analysis' Kaplan-Meier summaries; missing when
    the group's follow-up ends before u, or, as groupkm, when the group has fewer than 2 patients)."""
    from .survival import KaplanMeier

    data = frame[[duration, event, *variables]].dropna().reset_index(drop=True)
    X = design_matrix(data, variables).X.to_numpy(float)
    t = data[duration].to_numpy(float)
    e = data[event].to_numpy(float)
    fit = newton_cox(t, e, X)
    lp = linear_predictor(X, fit.beta)
    pred = predicted_survival(t, e, lp, lp, u)
    group, n_groups = calibration_groups(pred, groups)
    rows = []
    for g in range(1, n_groups + 1):
        idx = np.flatnonzero(group == g)
        lm = KaplanMeier(conf_type, conf_level).fit(t[idx], e[idx]).survival_at(u) if idx.size >= 2 else None
        rows.append(dict(time=u, group=g, n=idx.size, predicted=float(pred[idx].mean()) if idx.size else np.nan,
                         observed=lm.surv if lm is not None else np.nan,
                         observed_ci_low=lm.ci_low if lm is not None else np.nan,
                         observed_ci_high=lm.ci_high if lm is not None else np.nan))
    return pd.DataFrame(rows)
