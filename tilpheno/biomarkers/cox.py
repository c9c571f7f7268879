"""Cox proportional-hazards models (lifelines) and R's ``cox.zph`` proportional-hazards test.

Conventions:

- Partial likelihood with Efron's method for tied event times (as R ``coxph`` and lifelines).
- ``p`` in the coefficient table is the Wald p-value; hazard-ratio CIs are ``exp(coef +- z se)``.
- Per model: the likelihood-ratio test against the null model and Harrell's concordance.
- Non-numeric covariates are coded as indicator columns against their first level (sorted);
  the PH test treats their indicators as one term, as R does with ``terms = TRUE``.
- The PH test is R survival (>= 3.0) ``cox.zph(fit, transform = "km", terms = TRUE)``: a score
  test, at the fitted coefficients, for adding ``x * (g(t) - mean g)`` for each term, where
  ``g(t) = 1 - S(t-)`` is one minus the left-continuous Kaplan-Meier estimate over all
  patients and the mean is over event times. The information matrix is the full 2p x 2p
  matrix with Efron tie weights; the per-term chi-square uses the p model columns plus the
  term's time-interaction columns; GLOBAL uses all.
- A warning is raised in ``warnings`` when events per model variable fall below 10.
"""
from __future__ import annotations

import warnings as _warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from .survival import KaplanMeier

EPV_MIN = 10


@dataclass(frozen=True)
class Design:
    """Numeric design matrix and, per term (input column), the indices of its columns."""

    X: pd.DataFrame
    terms: dict[str, list[int]]


def design_matrix(frame: pd.DataFrame, variables: list[str]) -> Design:
    """Numeric columns as they are; other columns as indicators vs their first sorted level."""
    cols: list[pd.Series] = []
    names: list[str] = []
    terms: dict[str, list[int]] = {}
    for var in variables:
        s = frame[var]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            terms[var] = [len(names)]
            cols.append(s.astype(float))
            names.append(var)
            continue
        levels = sorted(s.dropna().astype(str).unique())
        terms[var] = []
        for lev in levels[1:]:
            terms[var].append(len(names))
            cols.append((s.astype(str) == lev).astype(float))
            names.append(f"{var}[{lev}]")
    X = pd.concat(cols, axis=1) if cols else pd.DataFrame(index=frame.index)
    X.columns = names
    return Design(X, terms)


def km_transform(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """``1 - S(t-)`` for every patient, S the Kaplan-Meier curve of all patients."""
    km = KaplanMeier().fit(time, event)
    grid = km.table_["time"].to_numpy()
    surv = np.concatenate(([1.0], km.table_["surv"].to_numpy()))
    idx = np.searchsorted(grid, time, side="left")  # number of curve times strictly before t
    return 1 - surv[idx]


def zph_score(time, event, X: np.ndarray, beta: np.ndarray, gtime: np.ndarray):
    """Score vector of the time-interaction terms and the full 2p x 2p information (Efron)."""
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float)
    X = np.asarray(X, dtype=float)
    X = X - X.mean(axis=0)
    p = X.shape[1]
    eta = X @ beta
    r = np.exp(eta - eta.max())
    u2 = np.zeros(p)
    info = np.zeros((2 * p, 2 * p))
    for tk in np.unique(t[e == 1]):
        at_risk = t >= tk
        dead = (t == tk) & (e == 1)
        d = int(dead.sum())
        g = gtime[dead][0]
        rr, xr = r[at_risk], X[at_risk]
        s0, s1, s2 = rr.sum(), rr @ xr, (xr * rr[:, None]).T @ xr
        rd, xd = r[dead], X[dead]
        d0, d1, d2 = rd.sum(), rd @ xd, (xd * rd[:, None]).T @ xd
        vsum = np.zeros((p, p))
        msum = np.zeros(p)
        for j in range(d):
            frac = j / d
            den = s0 - frac * d0
            mean = (s1 - frac * d1) / den
            msum += mean
            vsum += (s2 - frac * d2) / den - np.outer(mean, mean)
        u2 += g * (xd.sum(axis=0) - msum)
        info[:p, :p] += vsum
        info[:p, p:] += g * vsum
        info[p:, p:] += g * g * vsum
    info[p:, :p] = info[:p, p:].T
    return u2, info


def cox_zph(time, event, X: pd.DataFrame, beta, terms: dict[str, list[int]] | None = None) -> pd.DataFrame:
    """R ``cox.zph(fit, transform = "km")`` table: term, chisq, df, p; last row GLOBAL."""
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float)
    Xa = np.asarray(X, dtype=float)
    p = Xa.shape[1]
    if terms is None:
        terms = {name: [i] for i, name in enumerate(X.columns)}
    g = km_transform(t, e)
    gtime = g - g[e == 1].mean()
    u2, info = zph_score(t, e, Xa, np.asarray(beta, dtype=float), gtime)
    rows = []
    for name, cols in terms.items():
        kk = list(range(p)) + [p + c for c in cols]
        u = np.r_[np.zeros(p), u2[cols]]
        chisq = float(u @ np.linalg.solve(info[np.ix_(kk, kk)], u))
        rows.append((name, chisq, len(cols), float(stats.chi2.sf(chisq, len(cols)))))
    u = np.r_[np.zeros(p), u2]
    chisq = float(u @ np.linalg.solve(info, u))
    rows.append(("GLOBAL", chisq, p, float(stats.chi2.sf(chisq, p))))
    return pd.DataFrame(rows, columns=["term", "chisq", "df", "p"])


@dataclass
class CoxResult:
    """One fitted Cox model: per-column coefficients, per-term PH tests and model statistics."""

    coefficients: pd.DataFrame  # variable, coef, se, hr, hr_ci_low, hr_ci_high, z, p
    zph: pd.DataFrame  # term, chisq, df, p (+ GLOBAL)
    n: int
    events: int
    loglik: float
    lr_chisq: float
    lr_df: int
    lr_p: float
    concordance: float
    warnings: list[str] = field(default_factory=list)


def fit_cox(frame: pd.DataFrame, duration: str, event: str, variables: list[str],
            conf_level: float = 0.95) -> CoxResult:
    """Fit ``Surv(duration, event) ~ variables`` (Efron ties) on complete cases of ``frame``."""
    from lifelines import CoxPHFitter

    data = frame[[duration, event, *variables]].dropna()
    if data.empty:
        raise ValueError("no patient with complete data")
    design = design_matrix(data, variables)
    X = design.X
    if data[event].sum() == 0:
        raise ValueError("no events")
    constant = [c for c in X.columns if X[c].nunique() < 2]
    if constant:
        raise ValueError(f"covariate(s) constant in the data: {', '.join(constant)}")
    fit_frame = pd.concat([data[[duration, event]].astype(float), X], axis=1)
    cph = CoxPHFitter(alpha=1 - conf_level)
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        cph.fit(fit_frame, duration_col=duration, event_col=event,
                fit_options={"precision": 1e-12, "max_steps": 200})
    s = cph.summary
    z = stats.norm.ppf(1 - (1 - conf_level) / 2)
    coef = s["coef"].to_numpy()
    se = s["se(coef)"].to_numpy()
    with np.errstate(over="ignore"):
        table = pd.DataFrame({
            "variable": list(X.columns), "coef": coef, "se": se, "hr": np.exp(coef),
            "hr_ci_low": np.exp(coef - z * se), "hr_ci_high": np.exp(coef + z * se),
            "z": coef / se, "p": 2 * stats.norm.sf(np.abs(coef / se)),
        })
    lr = cph.log_likelihood_ratio_test()
    n_events = int(data[event].sum())
    notes = []
    if n_events / X.shape[1] < EPV_MIN:
        notes.append(f"{n_events} events for {X.shape[1]} variable(s): fewer than {EPV_MIN} events "
                     "per variable, estimates may be unstable")
    zph = cox_zph(data[duration], data[event], X, coef, design.terms)
    return CoxResult(
        coefficients=table, zph=zph, n=len(data), events=n_events, loglik=float(cph.log_likelihood_),
        lr_chisq=float(lr.test_statistic), lr_df=int(lr.degrees_freedom), lr_p=float(lr.p_value),
        concordance=float(cph.concordance_index_), warnings=notes,
    )
