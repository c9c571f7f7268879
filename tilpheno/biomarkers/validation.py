"""Bootstrap internal validation of a Cox model, as ``rms::validate(cph(...), B)`` (method "boot").

For each of B bootstrap samples (patients drawn with replacement, fixed seed) the model is
refitted; its linear predictor is evaluated on the bootstrap sample (training) and on the
original data (test). Indexes:

- Somers' Dxy = 2 (C - 1/2), C Harrell's concordance of the linear predictor as R computes it
  (sign: a higher predictor means a shorter time, positive Dxy = discrimination), and
- the calibration slope: the coefficient of the linear predictor in a Cox model refitted on it
  (1 in the training data by construction).

Optimism = mean(training index - test index) over the samples whose fit converged;
optimism-corrected index = apparent index - optimism (Harrell, Lee & Mark 1996). The number of
samples used is recorded. Bootstrap refits stop at a relative Newton step below 1e-7 (far below
the Monte Carlo error of the optimism). Agreement with ``rms::validate`` is within Monte Carlo error (different
random streams): see tests/test_biomarkers_validation.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .cox import concordance_index, design_matrix, linear_predictor, newton_cox


@dataclass(frozen=True)
class Validation:
    """Apparent, optimism and corrected Dxy and calibration slope; ``B`` samples used of ``B_asked``."""

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

    def row(self) -> dict:
        return dict(self.__dict__)


def _dxy(time, event, lp) -> float:
    return 2 * concordance_index(time, event, lp).concordance - 1


def _slope(time, event, lp) -> float:
    fit = newton_cox(time, event, lp[:, None], np.ones(1), max_iter=30, tol=1e-7)
    return float(fit.beta[0]) if fit.converged else float("nan")


def validate_cox(frame: pd.DataFrame, duration: str, event: str, variables: list[str], B: int = 200,
                 seed: int = 20240601) -> Validation:
    """Optimism-corrected Dxy, concordance and calibration slope of ``Surv ~ variables`` (complete cases)."""
    data = frame[[duration, event, *variables]].dropna().reset_index(drop=True)
    X = design_matrix(data, variables).X.to_numpy(float)
    t = data[duration].to_numpy(float)
    e = data[event].to_numpy(float)
    full = newton_cox(t, e, X)
    if not full.converged:
        raise ValueError("the model does not converge on the full data")
    apparent = _dxy(t, e, linear_predictor(X, full.beta))
    rng = np.random.default_rng(seed)
    n = t.size
    d_opt, s_opt = [], []
    for _ in range(B):
        idx = rng.integers(0, n, n)
        tb, eb, Xb = t[idx], e[idx], X[idx]
        if eb.sum() == 0 or np.any(Xb.std(axis=0) == 0):
            continue
        try:
            fb = newton_cox(tb, eb, Xb, full.beta, max_iter=30, tol=1e-7)
        except np.linalg.LinAlgError:
            continue
        if not fb.converged:
            continue
        lp_test = linear_predictor(X, fb.beta)
        slope = _slope(t, e, lp_test)
        if not np.isfinite(slope):
            continue
        d_opt.append(_dxy(tb, eb, linear_predictor(Xb, fb.beta)) - _dxy(t, e, lp_test))
        s_opt.append(1.0 - slope)
    if not d_opt:
        raise ValueError("no bootstrap sample could be fitted")
    do, so = float(np.mean(d_opt)), float(np.mean(s_opt))
    return Validation(apparent, do, apparent - do, (apparent + 1) / 2, (apparent - do + 1) / 2, so, 1 - so,
                      len(d_opt), B, seed)


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


def calibration_at(frame: pd.DataFrame, duration: str, event: str, variables: list[str], u: float,
                   groups: int = 4) -> pd.DataFrame:
    """Apparent calibration at time ``u`` (as ``rms::calibrate(cmethod = "KM")`` without the bootstrap):
    patients in ``groups`` equal-size groups of predicted S(u); per group the mean predicted S(u) and the
    Kaplan-Meier S(u) with its log CI (missing when the group's follow-up ends before u)."""
    from .survival import KaplanMeier

    data = frame[[duration, event, *variables]].dropna().reset_index(drop=True)
    X = design_matrix(data, variables).X.to_numpy(float)
    t = data[duration].to_numpy(float)
    e = data[event].to_numpy(float)
    fit = newton_cox(t, e, X)
    lp = linear_predictor(X, fit.beta)
    pred = predicted_survival(t, e, lp, lp, u)
    order = np.argsort(pred, kind="stable")
    rows = []
    for g, idx in enumerate(np.array_split(order, groups), start=1):
        lm = KaplanMeier().fit(t[idx], e[idx]).survival_at(u)
        rows.append(dict(time=u, group=g, n=idx.size, predicted=float(pred[idx].mean()), observed=lm.surv,
                         observed_ci_low=lm.ci_low, observed_ci_high=lm.ci_high))
    return pd.DataFrame(rows)
