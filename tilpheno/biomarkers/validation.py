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
