"""Cox proportional-hazards models (lifelines) and R's ``cox.zph`` proportional-hazards test.

Conventions:

- Partial likelihood with Efron's method for tied event times (as R ``coxph`` and lifelines).
- ``p`` in the coefficient table is the Wald p-value; hazard-ratio CIs are ``exp(coef +- z se)``.
- Coefficients are polished by Newton-Raphson on the exact Efron likelihood after lifelines'
  fit, so they sit at R ``coxph``'s optimum (not lifelines' stopping point); the convergence
  check (steps, last step, largest score component) is recorded per model.
- Per model: likelihood-ratio, Wald and score tests against the null model, and Harrell's
  concordance computed as R ``concordance`` does (tied predictors count 1/2) with R's
  infinitesimal-jackknife standard error.
- lifelines' warnings are recorded in ``warnings`` (never silenced), as are non-convergence,
  near-infinite coefficients and a cox.zph p < 0.05.
- Non-numeric covariates are coded as indicator columns against their first level (sorted);
  the PH test treats their indicators as one term, as R does with ``terms = TRUE``.
- The PH test is R survival (>= 3.0) ``cox.zph(fit, transform = "km", terms = TRUE)``: a score
  test, at the fitted coefficients, for adding ``x * (g(t) - mean g)`` for each term, where
  ``g(t) = 1 - S(t-)`` is one minus the left-continuous Kaplan-Meier estimate over all
  patients and the mean is over event times. The information matrix is the full 2p x 2p
  matrix with Efron tie weights; the per-term chi-square uses the p model columns plus the
  term's time-interaction columns; GLOBAL uses all. Where that information matrix is singular
  (every event at one time), R stops with an error; here the test is left blank, with a warning.
- A warning is raised in ``warnings`` when events per model variable fall below 10.
"""
from __future__ import annotations

import warnings as _warnings
from collections.abc import Collection
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


def _grouped_terms(terms: dict[str, list[int]], groups: dict[str, list[str]]) -> dict[str, list[int]]:
    """``terms`` with each group's variables merged into one term named by the group, placed where
    its first variable was."""
    member = {v: name for name, variables in groups.items() for v in variables}
    out: dict[str, list[int]] = {}
    for var, cols in terms.items():
        out.setdefault(member.get(var, var), []).extend(cols)
    return out


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


ZPH_ONE_EVENT_TIME = ("proportional-hazards test (cox.zph) not computable: every event at one time (R cox.zph stops "
                      "with an error); chisq and p left blank")
"""The model warning of :func:`_zph_or_blank` when the model's events all fall at one time (callers that say so
once per endpoint or marker drop it from the run's warnings)."""
ZPH_SINGULAR = ("proportional-hazards test (cox.zph) not computable: its information matrix is singular "
                "(e.g. a near-infinite coefficient); chisq and p left blank")
"""The model warning of :func:`_zph_or_blank` when its events fall at several times."""


def _zph_or_blank(time, event, X: pd.DataFrame, beta, terms: dict[str, list[int]], notes: list[str]) -> pd.DataFrame:
    """:func:`cox_zph`, or its table with blank chi-squares and p-values (and a note) when its information
    matrix is singular: every event at one time (the time transform is then constant: :data:`ZPH_ONE_EVENT_TIME`)
    or a coefficient running off to infinity (:data:`ZPH_SINGULAR`). R's ``cox.zph`` stops with an error there; the
    model itself is still reported."""
    try:
        return cox_zph(time, event, X, beta, terms)
    except np.linalg.LinAlgError:
        one_time = np.unique(np.asarray(time, dtype=float)[np.asarray(event, dtype=float) == 1]).size == 1
        notes.append(ZPH_ONE_EVENT_TIME if one_time else ZPH_SINGULAR)
        return pd.DataFrame({"term": [*terms, "GLOBAL"], "chisq": np.nan,
                             "df": [*(len(c) for c in terms.values()), X.shape[1]], "p": np.nan})


def risk_set_extremes(time, event, x, entry=None) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per distinct event time (ascending): the smallest and largest ``x`` among the patients (rows) at risk
    (time >= the event time, and entry < it when ``entry`` is given: start-stop rows) and the ``x`` of the rows
    with the event there."""
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float) == 1
    x = np.asarray(x, dtype=float)
    start = np.full(t.size, -np.inf) if entry is None else np.asarray(entry, dtype=float)
    event_times = np.unique(t[e])
    low, high = np.empty(event_times.size), np.empty(event_times.size)
    dead = []
    for k, tk in enumerate(event_times):
        at_risk = x[(t >= tk) & (start < tk)]
        low[k], high[k] = at_risk.min(), at_risk.max()
        dead.append(x[e & (t == tk)])
    return low, high, dead


@dataclass(frozen=True)
class Degenerate:
    """A column of a Cox model without a finite estimate: ``kind`` "no information" or "monotone"; ``direction``
    +1 when the events have the highest value at risk (coefficient +infinity), -1 the lowest, 0 no information;
    ``reason``: the sentence naming it and what R does."""

    column: str
    kind: str
    direction: int
    reason: str


def degenerate_column(time, event, X: pd.DataFrame, entry=None) -> Degenerate | None:
    """The first column of ``Surv(time, event) ~ X`` with no finite maximum or no information, else None (read from
    the data, not from where Newton-Raphson stops):

    - no information: the column takes one value among the patients at risk at every event time (the risk sets
      are nested, so: among those followed to the first event; it varies only among patients censored before
      it): the partial likelihood does not depend on its coefficient (R coxph: NA);
    - monotone likelihood: at every event time the patients with the event have the highest (or every one the
      lowest) value among those at risk, e.g. every event in one of two groups: the likelihood grows without
      bound as the coefficient goes to +infinity (-infinity; hazard ratio infinite, or 0). R coxph gives a large
      coefficient with a huge standard error and warns that it may be infinite or did not converge.

    Columns are checked one at a time (a combination of columns: :func:`monotone_combination`).
    ``entry``: the start times of start-stop rows (a time-dependent covariate), at risk after their start."""
    for name in X.columns:
        low, high, dead = risk_set_extremes(time, event, X[name], entry)
        if np.array_equal(low, high):
            return Degenerate(name, "no information", 0, (
                f"no information on {name}: it has one value among the patients at risk at every "
                "event time (it varies only among patients censored before the first event), so the data say "
                "nothing of its hazard ratio (R coxph: NA)"))
        up = all(np.all(d == h) for d, h in zip(dead, high))
        down = all(np.all(d == lo) for d, lo in zip(dead, low))
        if up or down:
            return Degenerate(name, "monotone", 1 if up else -1, _monotone_sentence(name, up, X[name]))
    return None


def _monotone_sentence(name: str, up: bool, x: pd.Series) -> str:
    """The monotone-likelihood reason for column ``name`` (events at its highest value at risk when ``up``), worded
    for a 0/1 column by its values."""
    hr = "infinite" if up else "0"
    r_says = "(R coxph: a huge coefficient and standard error, with a warning that it may be infinite or did not converge)"
    if set(np.unique(x.to_numpy(float))) == {0.0, 1.0}:
        value = 1 if up else 0
        return (f"monotone likelihood: at every event time the patients with the event had {name} = {value}, or no one "
                f"at risk did (every event in that group while it was followed), so its hazard ratio (1 vs 0) is {hr} "
                f"{r_says}")
    side = "highest" if up else "lowest"
    return (f"monotone likelihood: at every event time the patients with the event have the {side} {name} among those "
            f"at risk (e.g. every event in one of two groups), so its hazard ratio is {hr} {r_says}")


def _risk_set_pairs(time, event, X: np.ndarray, entry=None) -> np.ndarray:
    """Rows ``x_i - x_j`` for every event i and every other row j at risk at its time (time >= it, entry < it)."""
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float) == 1
    start = np.full(t.size, -np.inf) if entry is None else np.asarray(entry, dtype=float)
    blocks = [X[i] - X[(t >= t[i]) & (start < t[i]) & (np.arange(t.size) != i)] for i in np.flatnonzero(e)]
    return np.concatenate(blocks) if blocks else np.empty((0, X.shape[1]))


def monotone_combination(time, event, X: pd.DataFrame, entry=None) -> pd.Series | None:
    """A direction ``b`` (coefficients per column, the largest 1 in absolute value) along which the partial
    likelihood grows without bound, else None: at every event time the patients with the event have the highest
    ``X b`` among those at risk (tied events equal), and not every one ties with all at risk. The likelihood then has
    no finite maximum (Bryson and Johnson 1981), whether or not one column does so alone (:func:`degenerate_column`).
    Found by linear programming (scipy's HiGHS): maximise the sum of ``b (x_i - x_j)`` over events i and the j at
    risk with them, each at least 0, ``|b| <= 1`` on standardised columns; a positive maximum is such a direction.
    ``entry``: delayed entry, as :func:`degenerate_column`."""
    from scipy.optimize import linprog

    A = X.to_numpy(float)
    scale = A.std(axis=0)
    scale[scale == 0] = 1.0
    D = _risk_set_pairs(time, event, A / scale, entry)
    if D.shape[0] == 0:
        return None
    res = linprog(-D.sum(axis=0), A_ub=-D, b_ub=np.zeros(D.shape[0]), bounds=[(-1, 1)] * A.shape[1], method="highs")
    if res.status != 0 or -res.fun <= 1e-7 * D.shape[0]:
        return None
    b = res.x / scale
    score = D @ res.x
    if score.min() < -1e-7 * np.abs(score).max():   # a solver tolerance, not a direction: no claim
        return None
    return pd.Series(b / np.abs(b).max(), index=X.columns)


def combination_text(direction: pd.Series) -> str:
    """A direction from :func:`monotone_combination` as a score: '1 x1 + 0.85 x2'."""
    terms = " ".join(f"{'-' if b < 0 else '+'} {'' if abs(b) == 1 else f'{abs(b):.3g} '}{name}"
                     for name, b in direction.items() if b != 0)
    return terms[2:] if terms.startswith("+ ") else terms


def combination_reason(direction: pd.Series) -> str:
    """The monotone-likelihood sentence for a direction from :func:`monotone_combination`."""
    return (f"monotone likelihood: at every event time the patients with the event have the highest "
            f"{combination_text(direction)} among "
            f"those at risk, though no one of {', '.join(direction.index)} does so alone (a combination separating the "
            "events), so the model has no finite maximum (R coxph: huge coefficients and standard errors, with a "
            "warning that they may be infinite or did not converge)")


def constant_reason(design: Design) -> str | None:
    """The covariates of ``design`` (the patients analysed) with one value, named with the number of patients
    analysed (as :func:`collinear_reason`: a covariate that varies in the cohort may not among the complete cases of
    one model), else None: a numeric column with one value, or a categorical one with a single level (it has no
    indicator column, so it would be left out silently)."""
    X = design.X
    constant = [c for c in X.columns if X[c].nunique() < 2] + [v for v, cols in design.terms.items() if not cols]
    if not constant:
        return None
    return f"covariate(s) constant among the {len(X)} patients analysed: {', '.join(constant)}"


COLLINEAR_TOLERANCE = 1e-9
"""A column is collinear with the columns before it when, all centred and scaled to norm 1, its residual on them
has a norm below this (exact in the data, up to rounding; a near-collinear column is fitted, with wide CIs)."""


def collinear_reason(X: pd.DataFrame) -> str | None:
    """The first column of ``X`` (a design matrix of the patients analysed) that is an exact linear combination of
    the columns before it, with an intercept (a constant column is not one), named with that combination in the
    columns' own units (``age_months = 12 age``; ``female = 1 - sex[M]``), else None. R coxph leaves such a
    column's coefficient NA ('X matrix deemed to be singular'); its information matrix is singular, so no
    estimate is given here. Columns past the patients' count less one are not checked: too few patients."""
    A = X.to_numpy(float)
    mean = A.mean(axis=0)
    norm = np.linalg.norm(A - mean, axis=0)
    Z = (A - mean) / np.where(norm > 0, norm, 1.0)
    for j in range(1, min(A.shape[1], len(A) - 1)):   # beyond: any column is one, for want of patients
        if norm[j] == 0:   # constant: said as such by the callers
            continue
        c = np.linalg.lstsq(Z[:, :j], Z[:, j], rcond=None)[0]
        if np.linalg.norm(Z[:, j] - Z[:, :j] @ c) >= COLLINEAR_TOLERANCE:
            continue
        used = np.abs(c) > 1e-6   # standardised coefficients: the columns it is a combination of
        b = np.array([float(f"{v:.6g}") for v in c[used] * norm[j] / norm[:j][used]])
        intercept = mean[j] - b @ mean[:j][used]
        terms = combination_text(pd.Series(b, index=X.columns[:j][used]))
        if abs(intercept) > COLLINEAR_TOLERANCE * (abs(mean[j]) + norm[j]):
            terms = f"{intercept:.4g} {terms if terms.startswith('-') else '+ ' + terms}"
        return (f"covariates collinear among the {len(A)} patients analysed: {X.columns[j]} = {terms} in every one, so "
                f"the model cannot separate their effects (R coxph: NA for {X.columns[j]}, 'X matrix deemed to be "
                "singular')")
    return None


def no_estimate_reason(time, event, X: pd.DataFrame, entry=None) -> str | None:
    """Why ``Surv(time, event) ~ X`` has no finite maximum or no information on a column (:func:`degenerate_column`),
    else None."""
    found = degenerate_column(time, event, X, entry)
    return found.reason if found else None


def separating_combination_reason(time, event, X: pd.DataFrame) -> str | None:
    """With several columns, the reason (:func:`combination_reason`) of a combination of them with a monotone
    likelihood (:func:`monotone_combination`), else None. For a fit that diverged: the linear program has a
    constraint per event and patient at risk with it, seconds for a thousand patients."""
    if X.shape[1] < 2:
        return None
    direction = monotone_combination(time, event, X)
    return combination_reason(direction) if direction is not None else None


def no_finite_maximum_reason(time, event, X: pd.DataFrame) -> str | None:
    """Why ``Surv(time, event) ~ X`` has no finite maximum or no information on a column: a column's reason
    (:func:`no_estimate_reason`), else a separating combination's (:func:`separating_combination_reason`), else
    None."""
    return no_estimate_reason(time, event, X) or separating_combination_reason(time, event, X)


def limit_entry(time, event, x, direction: int) -> np.ndarray:
    """Entry times of the limit model as ``x``'s coefficient goes to ``direction`` x infinity (x with a monotone
    likelihood, nested risk sets): each event's risk set keeps only the patients with the event's value of x, the
    extreme one at risk. As that extreme value at risk only moves towards each patient's own x while the patient is
    at risk, a patient is in the kept risk sets from the last event time at which the extreme was another value
    (entry, exclusive) to its own time; -inf when it is in them from the start."""
    t = np.asarray(time, dtype=float)
    x = np.asarray(x, dtype=float)
    low, high, _ = risk_set_extremes(t, event, direction * x)
    event_times = np.unique(t[np.asarray(event, dtype=float) == 1])
    entry = np.full(t.size, -np.inf)
    for tk, extreme in zip(event_times, high):
        other = (t >= tk) & (direction * x != extreme)
        entry[other] = tk
    return entry


@dataclass(frozen=True)
class EfronDerivatives:
    """Log partial likelihood (Efron ties), its gradient (score) and the information matrix."""

    loglik: float
    score: np.ndarray
    information: np.ndarray


def efron_derivatives(time, event, X, beta, entry=None) -> EfronDerivatives:
    """Efron log partial likelihood, score vector and information at ``beta`` (vectorised over event times).

    Risk-set sums are reverse cumulative sums over patients sorted by time; tied deaths at one
    time are handled with Efron's weights ``j / d`` (j = 0..d-1), looping over the largest tie size.
    ``entry``: delayed entry (at risk at an event time only when entry < it; R ``Surv(entry, time, event)``).
    """
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float)
    X = np.asarray(X, dtype=float).reshape(t.size, -1)
    start = np.full(t.size, -np.inf) if entry is None else np.asarray(entry, dtype=float)
    order = np.argsort(t, kind="stable")
    t, e, X, start = t[order], e[order], X[order] - X.mean(axis=0), start[order]
    p = X.shape[1]
    eta = X @ np.asarray(beta, dtype=float)
    shift = eta.max()
    r = np.exp(eta - shift)
    dead = e == 1
    event_times, k = np.unique(t[dead], return_inverse=True)
    first = np.searchsorted(t, event_times, side="left")
    rx = r[:, None] * X
    rxx = rx[:, :, None] * X[:, None, :]
    s0 = np.cumsum(r[::-1])[::-1][first]
    s1 = np.cumsum(rx[::-1], axis=0)[::-1][first]
    s2 = np.cumsum(rxx[::-1], axis=0)[::-1][first]
    if entry is not None:   # less the rows not yet entered (entry >= the event time; their time is later)
        by_entry = np.argsort(start, kind="stable")
        later = np.searchsorted(start[by_entry], event_times, side="left")
        pad = np.zeros((1, *rxx.shape[1:]))
        s0 = s0 - np.r_[np.cumsum(r[by_entry][::-1])[::-1], 0.0][later]
        s1 = s1 - np.r_[np.cumsum(rx[by_entry][::-1], axis=0)[::-1], pad[:, :, 0]][later]
        s2 = s2 - np.r_[np.cumsum(rxx[by_entry][::-1], axis=0)[::-1], pad][later]
    K = event_times.size
    d = np.bincount(k, minlength=K).astype(float)
    d0 = np.bincount(k, weights=r[dead], minlength=K)
    onehot = np.zeros((K, int(dead.sum())))
    onehot[k, np.arange(k.size)] = 1.0
    d1 = onehot @ rx[dead]
    d2 = np.einsum("ki,iab->kab", onehot, rxx[dead])
    loglik = float(eta[dead].sum() - shift * dead.sum())
    score = X[dead].sum(axis=0)
    info = np.zeros((p, p))
    for j in range(int(d.max()) if K else 0):
        m = d > j
        frac = j / d[m]
        den = s0[m] - frac * d0[m]
        mean = (s1[m] - frac[:, None] * d1[m]) / den[:, None]
        loglik -= float(np.log(den).sum())
        score = score - mean.sum(axis=0)
        info += ((s2[m] - frac[:, None, None] * d2[m]) / den[:, None, None]).sum(axis=0) - mean.T @ mean
    return EfronDerivatives(loglik, score, info)


@dataclass(frozen=True)
class NewtonFit:
    """Result of Newton-Raphson on the partial likelihood, with its convergence check."""

    beta: np.ndarray
    derivatives: EfronDerivatives
    iterations: int
    converged: bool
    last_step: float


def newton_cox(time, event, X, beta0=None, max_iter: int = 50, tol: float = 1e-11, entry=None) -> NewtonFit:
    """Maximise the Efron partial likelihood by Newton-Raphson with step halving (as R ``coxph.fit``).

    Converged when the largest Newton step is below ``tol * (1 + |beta|)`` (elementwise), both in
    units of each covariate's spread (the step times the column's mean absolute deviation, as R's
    ``coxfit6`` scales the covariates): the test does not depend on a covariate's unit (a dose in cells,
    coefficients near 1e-11, was taken as converged after one step 4 % short of R's optimum); the
    derivatives returned are evaluated at the final ``beta`` (R's ``imat``). A step along which 30
    halvings find no finite log-likelihood ends the iterations, not converged, at the last finite
    point (the risk sets underflow on the way to an infinite coefficient). ``entry``: delayed entry, as
    :func:`efron_derivatives`.
    """
    X = np.asarray(X, dtype=float).reshape(len(time), -1)
    beta = np.zeros(X.shape[1]) if beta0 is None else np.asarray(beta0, dtype=float).copy()
    spread = np.mean(np.abs(X - X.mean(axis=0)), axis=0)
    spread = np.where(spread > 0, spread, 1.0)   # a constant column: its own units
    cur = efron_derivatives(time, event, X, beta, entry)
    last = float("inf")
    for it in range(1, max_iter + 1):
        step = np.linalg.solve(cur.information, cur.score)
        last = float(np.max(np.abs(step) * spread / (1 + np.abs(beta) * spread)))
        halvings = 0
        while True:
            cand = beta + step
            # a trial step so long that the risk sets underflow gives a non-finite log-likelihood:
            # it is rejected just below and halved (handled, so numpy's divide warnings would only alarm)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                nxt = efron_derivatives(time, event, X, cand, entry)
            if np.isfinite(nxt.loglik) and nxt.loglik >= cur.loglik - 1e-12 * abs(cur.loglik) or halvings >= 30:
                break
            step = step / 2
            halvings += 1
        if not np.isfinite(nxt.loglik):   # no finite point along the step: stop at the last finite one
            return NewtonFit(beta, cur, it, False, last)
        beta, cur = cand, nxt
        if last < tol:
            return NewtonFit(beta, cur, it, True, last)
    return NewtonFit(beta, cur, max_iter, False, last)


@dataclass(frozen=True)
class Concordance:
    """Harrell's concordance as R ``concordance`` for a Cox model, with R's standard error and counts."""

    concordance: float
    std_err: float
    concordant: float
    discordant: float
    tied_x: float
    tied_y: float


def concordance_index(time, event, risk) -> Concordance:
    """Concordance of a risk score (higher = shorter survival) as R survival's ``concordance(fit)``.

    A pair is comparable when the shorter time is an event; a censored time equal to an event
    time counts as later (censored after the death). Pairs tied on the risk score count 1/2
    (``tied.x``); pairs of deaths at the same time (``tied.y``) are not comparable. The standard
    error is R's infinitesimal-jackknife ``sqrt(var)``: ``var = sum(dfbeta^2) / 4`` with
    ``dfbeta_i = (C_i - D_i)/npair - somers/npair (C_i + D_i + T_i)`` and ``C_i, D_i, T_i`` the
    comparable pairs patient i is part of.
    """
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float) == 1
    x = np.asarray(risk, dtype=float)
    later = (t[None, :] > t[:, None]) | ((t[None, :] == t[:, None]) & ~e[None, :])
    comp = e[:, None] & later  # row i: death, column j: still at risk after it
    conc = comp & (x[:, None] > x[None, :])
    disc = comp & (x[:, None] < x[None, :])
    tied = comp & (x[:, None] == x[None, :])
    tied_y = e[:, None] & e[None, :] & (t[:, None] == t[None, :])
    np.fill_diagonal(tied_y, False)
    C, D, T = conc.sum(), disc.sum(), tied.sum()
    npair = C + D + T
    if npair == 0:
        return Concordance(float("nan"), float("nan"), 0.0, 0.0, 0.0, float(tied_y.sum() / 2))
    somers = (C - D) / npair
    ci = conc.sum(axis=0) + conc.sum(axis=1)
    di = disc.sum(axis=0) + disc.sum(axis=1)
    ti = tied.sum(axis=0) + tied.sum(axis=1)
    dfbeta = (ci - di) / npair - somers / npair * (ci + di + ti)
    return Concordance(float((somers + 1) / 2), float(np.sqrt(np.sum(dfbeta**2) / 4)), float(C), float(D),
                       float(T), float(tied_y.sum() / 2))


def linear_predictor(X: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """``X beta`` summed column by column, so identical covariate rows get bit-identical scores.

    (A BLAS matrix-vector product may round rows differently depending on their position,
    which would split ties in the concordance.)
    """
    X = np.asarray(X, dtype=float)
    out = np.zeros(X.shape[0])
    for j, b in enumerate(np.asarray(beta, dtype=float)):
        out = out + X[:, j] * b
    return out


@dataclass
class CoxResult:
    """One fitted Cox model: per-column coefficients, per-term PH tests and model statistics.

    Global tests against the null model, as R ``summary(coxph)``: likelihood ratio
    ``2 (l(b) - l(0))``, Wald ``b' I(b) b`` and score ``U(0)' I(0)^-1 U(0)``, each chi-square on
    the number of coefficients. ``converged``/``iterations``/``max_scaled_score`` record the
    Newton convergence check (``max_scaled_score`` is the largest score component at the solution
    times its coefficient's standard error: scale-free, about 1e-10 or less when converged).
    """

    coefficients: pd.DataFrame  # variable, coef, se, hr, hr_ci_low, hr_ci_high, z, p
    zph: pd.DataFrame  # term, chisq, df, p (+ GLOBAL)
    n: int
    events: int
    loglik: float
    lr_chisq: float
    lr_df: int
    lr_p: float
    concordance: float
    wald_chisq: float = float("nan")
    wald_p: float = float("nan")
    score_chisq: float = float("nan")
    score_p: float = float("nan")
    concordance_se: float = float("nan")
    converged: bool = True
    iterations: int = 0
    max_scaled_score: float = float("nan")
    covariance: np.ndarray | None = None
    linear_predictor: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)


def _lifelines_start(fit_frame: pd.DataFrame, duration: str, event: str, conf_level: float, notes: list[str]):
    """lifelines' fit as the starting point; every warning it raises is recorded in ``notes``."""
    from lifelines import CoxPHFitter

    cph = CoxPHFitter(alpha=1 - conf_level)
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        try:
            cph.fit(fit_frame, duration_col=duration, event_col=event,
                    fit_options={"precision": 1e-12, "r_precision": 1e-12, "max_steps": 200})
        except Exception as exc:  # lifelines raises ConvergenceError and LinAlgError subclasses
            notes.append(f"lifelines: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            return None
    for w in caught:
        text = " ".join(str(w.message).split())
        notes.append(f"lifelines {w.category.__name__}: {text[:300]}")
    return cph.params_.to_numpy(dtype=float)


def _few_events(n_events: int, k: int) -> list[str]:
    """The note on fewer than ``EPV_MIN`` events per model variable, or none."""
    if n_events / k >= EPV_MIN:
        return []
    return [f"{n_events} events for {k} variable(s): fewer than {EPV_MIN} events per variable, estimates may be "
            "unstable"]


def _score_test(null: EfronDerivatives) -> float:
    """The score test's chi-square ``U(0)' I(0)^-1 U(0)`` from the derivatives at 0; NaN when I(0) is singular."""
    try:
        return float(null.score @ np.linalg.solve(null.information, null.score))
    except np.linalg.LinAlgError:
        return float("nan")


def coefficient_table(names: list[str], coef: np.ndarray, cov: np.ndarray, conf_level: float,
                      notes: list[str]) -> pd.DataFrame:
    """variable, coef, se, hr, hr_ci_low, hr_ci_high, z, p (Wald; CI ``exp(coef +- z se)``) from the coefficients
    and their covariance; a variance that is not positive (the fit is not at a maximum) leaves se, CI, z and p
    blank, with a note."""
    variance = np.diag(cov)
    bad = ~(variance > 0) & np.isfinite(coef)   # a coefficient left blank (infinite) has no variance to report
    if bad.any():
        notes.append(f"variance of {', '.join(n for n, b in zip(names, bad) if b)} not estimable (the information "
                     "matrix is not positive definite at the last Newton step): standard error, CI, z and Wald p "
                     "left blank")
    se = np.sqrt(np.where(bad, np.nan, variance))
    z = stats.norm.ppf(1 - (1 - conf_level) / 2)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return pd.DataFrame({
            "variable": names, "coef": coef, "se": se, "hr": np.exp(coef),
            "hr_ci_low": np.exp(coef - z * se), "hr_ci_high": np.exp(coef + z * se),
            "z": coef / se, "p": 2 * stats.norm.sf(np.abs(coef / se)),
        })


def fit_cox_at_limit(time: np.ndarray, event: np.ndarray, X: pd.DataFrame, monotone: Degenerate,
                     conf_level: float = 0.95, terms: dict[str, list[int]] | None = None) -> CoxResult:
    """The Cox model of ``X`` when its column ``monotone.column`` has a monotone likelihood: that coefficient is
    infinite (left blank, with the reason), the others are estimated at its limit, the model of the other columns
    in which each event's risk set keeps the patients with the event's (the extreme) value of the column
    (:func:`limit_entry`). R coxph stops at a large finite coefficient, warns that it may be infinite, and reports
    the others' estimates, equal to these to within about exp(-|coefficient|). Log-likelihood and the LR test (df:
    every column, as R) are the limit's; the score test is at 0 as usual; the Wald test and the cox.zph test are
    blank (``terms``: its rows, as :func:`cox_zph`'s); concordance ranks patients by the column first (its
    direction), then by the others' linear predictor. ValueError when the other columns have no finite estimate at that limit either."""
    entry = limit_entry(time, event, X[monotone.column], monotone.direction)
    rest = X.drop(columns=monotone.column)
    again = degenerate_column(time, event, rest, entry)
    direction = None if again or rest.shape[1] < 2 else monotone_combination(time, event, rest, entry)
    if again or direction is not None:
        what = (f"{again.column} has no information" if again and again.kind == "no information" else
                f"{again.column} has a monotone likelihood" if again else
                f"the score {combination_text(direction)} has a monotone likelihood")
        raise ValueError(f"{monotone.reason}; and with its coefficient infinite (each event's risk set keeps only the "
                         f"patients with the event's {monotone.column}), {what} there too")
    R = rest.to_numpy(float)
    try:
        nf = newton_cox(time, event, R, entry=entry)
        cov_rest = np.linalg.inv(nf.derivatives.information)
    except np.linalg.LinAlgError:
        raise ValueError(f"{monotone.reason}; and with its coefficient infinite, the other covariates' information "
                         "matrix is singular (collinear, or a combination separating the events)") from None
    k = X.shape[1]
    keep = [i for i, c in enumerate(X.columns) if c != monotone.column]
    coef = np.full(k, np.nan)
    coef[keep] = nf.beta
    cov = np.full((k, k), np.nan)
    cov[np.ix_(keep, keep)] = cov_rest
    notes = [f"coefficient of {monotone.column} not estimable: {monotone.reason}; the other covariates are estimated "
             "at that limit (R coxph reports them, to within exp(-|coefficient|), beside a huge one for "
             f"{monotone.column})"]
    table = coefficient_table(list(X.columns), coef, cov, conf_level, notes)
    if not nf.converged:
        notes.append(f"Newton-Raphson did not converge in {nf.iterations} steps (last relative step {nf.last_step:.2g})")
    n_events = int(event.sum())
    notes += _few_events(n_events, k)
    null = efron_derivatives(time, event, X.to_numpy(float), np.zeros(k))
    lr = float(2 * (nf.derivatives.loglik - null.loglik))
    score = _score_test(null)
    order = np.c_[monotone.direction * X[monotone.column].to_numpy(float), linear_predictor(R, nf.beta)]
    rank = np.unique(order, axis=0, return_inverse=True)[1].ravel().astype(float)
    conc = concordance_index(time, event, rank)
    terms = terms or {c: [i] for i, c in enumerate(X.columns)}
    zph = pd.DataFrame({"term": [*terms, "GLOBAL"], "chisq": np.nan, "df": [*(len(c) for c in terms.values()), k],
                        "p": np.nan})
    return CoxResult(
        coefficients=table, zph=zph, n=len(time), events=n_events, loglik=nf.derivatives.loglik, lr_chisq=lr,
        lr_df=k, lr_p=float(stats.chi2.sf(lr, k)), concordance=conc.concordance, score_chisq=score,
        score_p=float(stats.chi2.sf(score, k)), concordance_se=conc.std_err, converged=nf.converged,
        iterations=nf.iterations, max_scaled_score=float(np.max(np.abs(nf.derivatives.score) * table.se.iloc[keep])),
        covariance=cov, warnings=notes)


DIVERGING_STANDARDISED_COEF = 10.0
"""A fitted coefficient times its covariate's SD beyond which :func:`fit_cox` looks for a combination of covariates
separating the events (a hazard ratio of e^10 per SD: no finite-sample estimate of a real effect comes near it; on
a monotone likelihood Newton-Raphson stops far beyond it, R coxph at about 18-20)."""


def _refuse_a_separating_combination(time, event, X: pd.DataFrame) -> None:
    """ValueError naming a combination of the columns of ``X`` with a monotone likelihood, if there is one
    (:func:`separating_combination_reason`). Called only when a fit diverged (no convergence, a singular
    information, a coefficient beyond :data:`DIVERGING_STANDARDISED_COEF`), which a fit that converged need not pay."""
    reason = separating_combination_reason(time, event, X)
    if reason:
        raise ValueError(reason)


def fit_cox(frame: pd.DataFrame, duration: str, event: str, variables: list[str],
            conf_level: float = 0.95, start: str = "lifelines",
            groups: dict[str, list[str]] | None = None, at_limit: bool = False,
            not_at_limit: Collection[str] = ()) -> CoxResult:
    """Fit ``Surv(duration, event) ~ variables`` (Efron ties) on complete cases of ``frame``.

    lifelines fits the model (its warnings go to ``warnings``); Newton steps on the exact
    Efron likelihood then polish the coefficients to R ``coxph``'s optimum (step < 1e-11
    relative). ``start="zero"`` skips lifelines (used inside bootstrap loops). ``groups``: name ->
    variables that form one term of the PH test (a spline's basis columns: ``rcs(x)``, as R's
    ``cox.zph(terms = TRUE)`` tests it), in place of a test per variable. ValueError when
    there is nothing to fit: no complete case, no event, a constant covariate (a categorical one with
    a single level included: it has no indicator column, so it is not silently left out), a covariate without
    information or with a monotone likelihood (:func:`degenerate_column`: the reason names it and what R does), a
    combination of covariates with a monotone likelihood (:func:`monotone_combination`: named with its direction),
    a covariate that is an exact linear function of the ones before it (:func:`collinear_reason`: named with that
    function), or an information matrix that turns singular (near-collinear covariates).
    ``at_limit``: a column with a monotone likelihood among others is not an error: as R coxph reports the other
    covariates, they are estimated at its limit (:func:`fit_cox_at_limit`) and its coefficient is left blank; unless
    the column is one of ``not_at_limit`` (a spline's basis columns, whose tests need every coefficient): an error.
    """
    data = frame[[duration, event, *variables]].dropna()
    if data.empty:
        raise ValueError("no patient with complete data")
    design = design_matrix(data, variables)
    X = design.X
    if data[event].sum() == 0:
        raise ValueError("no events")
    unfit = constant_reason(design) or collinear_reason(X)
    if unfit:
        raise ValueError(unfit)
    t = data[duration].to_numpy(float)
    ev = data[event].to_numpy(float)
    found = degenerate_column(t, ev, X)
    if found and found.kind == "monotone" and at_limit and X.shape[1] > 1 and found.column not in not_at_limit:
        return fit_cox_at_limit(t, ev, X, found, conf_level, _grouped_terms(design.terms, groups or {}))
    if found:
        raise ValueError(found.reason)
    Xa = X.to_numpy(float)
    notes: list[str] = []
    beta0 = None
    if start == "lifelines":
        fit_frame = pd.concat([data[[duration, event]].astype(float), X], axis=1)
        beta0 = _lifelines_start(fit_frame, duration, event, conf_level, notes)
    try:
        nf = newton_cox(t, ev, Xa, beta0)
        if not nf.converged:
            nf = newton_cox(t, ev, Xa, None)
    except np.linalg.LinAlgError:  # the information underflowed to 0 on the way to an infinite coefficient
        _refuse_a_separating_combination(t, ev, X)
        raise ValueError("information matrix singular: covariates collinear, or a combination of them separating "
                         "the events (monotone likelihood: a coefficient is infinite)") from None
    coef = nf.beta
    if not nf.converged or np.any(np.abs(coef * Xa.std(axis=0)) > DIVERGING_STANDARDISED_COEF):
        _refuse_a_separating_combination(t, ev, X)
    info = nf.derivatives.information
    try:
        cov = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        cov = np.full_like(info, np.nan)
    table = coefficient_table(list(X.columns), coef, cov, conf_level, notes)
    se = table.se.to_numpy()
    k = len(coef)
    null = efron_derivatives(t, ev, Xa, np.zeros(k))
    lr = float(2 * (nf.derivatives.loglik - null.loglik))
    wald = float(coef @ info @ coef)
    score = _score_test(null)
    n_events = int(ev.sum())
    max_score = float(np.max(np.abs(nf.derivatives.score) * se))
    if not nf.converged:
        notes.append(f"Newton-Raphson did not converge in {nf.iterations} steps (last relative step "
                     f"{nf.last_step:.2g}): a coefficient may be infinite (monotone likelihood, e.g. a "
                     "covariate that separates events)")
    big = [name for name, b, s in zip(X.columns, coef, se) if abs(b) > 10 and s > 5 * abs(b)]
    if big and nf.converged:
        notes.append(f"coefficient(s) of {', '.join(big)} near-infinite with a huge standard error "
                     "(monotone likelihood suspected)")
    notes += _few_events(n_events, k)
    zph = _zph_or_blank(t, ev, X, coef, _grouped_terms(design.terms, groups or {}), notes)
    violated = zph[(zph.term != "GLOBAL") & (zph.p < 0.05)]
    for rec in violated.itertuples(index=False):
        notes.append(f"proportional hazards doubtful for {rec.term} (cox.zph p = {rec.p:.3g})")
    lp = linear_predictor(Xa, coef)
    conc = concordance_index(t, ev, lp)
    return CoxResult(
        coefficients=table, zph=zph, n=len(data), events=n_events, loglik=nf.derivatives.loglik,
        lr_chisq=lr, lr_df=k, lr_p=float(stats.chi2.sf(lr, k)), concordance=conc.concordance,
        wald_chisq=wald, wald_p=float(stats.chi2.sf(wald, k)), score_chisq=score,
        score_p=float(stats.chi2.sf(score, k)), concordance_se=conc.std_err, converged=nf.converged,
        iterations=nf.iterations, max_scaled_score=max_score, covariance=cov, linear_predictor=lp, warnings=notes,
    )
