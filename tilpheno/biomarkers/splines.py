"""A continuous marker without cut-points: restricted cubic splines in Cox (as ``rms::rcs``).

Conventions (``rms``/``Hmisc::rcspline.eval`` with ``norm = 2``):

- Knots at Harrell's quantiles of the marker: 3 knots .10 .50 .90; 4 knots .05 .35 .65 .95;
  5 knots .05 .275 .50 .725 .95 (R quantile type 7). With fewer than 100 values the outer knots
  are the 5th smallest and 5th largest values. Tied knots are dropped. rcspline.eval's special
  cases are followed (``harrell_knots``): few distinct values, a floor or ceiling value held by 5 % or
  more of the patients (``fractied``), tied quantiles; fewer knots than asked is said in ``note``.
  The knots come from every non-missing marker value, also of patients the fit leaves out for a missing
  time or covariate (rms evaluates ``rcs(x, k)`` in the model frame before the incomplete rows are dropped).
- Basis: ``x`` and, for ``j = 1..k-2``, ``(x - t_j)+^3 - (x - t_{k-1})+^3 (t_k - t_j)/(t_k - t_{k-1})
  + (x - t_k)+^3 (t_{k-1} - t_j)/(t_k - t_{k-1})``, each divided by ``(t_k - t_1)^2`` (linear beyond
  the outer knots).
- Tests (Wald, as ``anova(cph)``): overall association (all k-1 coefficients) and nonlinearity
  (the k-2 nonlinear coefficients).
- The log hazard-ratio curve is ``f(x) - f(reference)`` (reference: the marker's median) with a
  pointwise Wald confidence band.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .cox import CoxResult, fit_cox

FRACTIED = 0.05   # rms' options(fractied): an end value this frequent is treated as a floor or ceiling


def r_seq(start: float, stop: float, length: int) -> np.ndarray:
    """R ``seq(start, stop, length.out = length)`` to the last bit (ends exact, steps of (stop - start)/(length - 1))."""
    if length == 1:
        return np.array([start])
    by = (stop - start) / (length - 1)
    return np.array([start, *(start + i * by for i in range(1, length - 1)), stop])


def r_quantile(sorted_x: np.ndarray, probs) -> np.ndarray:
    """R ``quantile(x, probs)`` (type 7) of sorted values, with R's arithmetic: the 1-based index
    ``1 + (n - 1) p`` (its rounding can land exactly on a value: p = 0.49999999999999994 of 9 values
    is the 5th), then ``(1 - h) x[lo] + h x[hi]``."""
    index = 1 + (sorted_x.size - 1) * np.asarray(probs, dtype=float)
    lo = np.floor(index).astype(int) - 1   # 0-based
    hi = np.ceil(index).astype(int) - 1
    h = index - (lo + 1)
    q = sorted_x[lo]
    move = (h > 0) & (sorted_x[hi] != q)
    return np.where(move, (1 - h) * q + h * sorted_x[hi], q)


@dataclass(frozen=True)
class Knots:
    """Knot locations and, when rcspline.eval would warn (fewer knots than asked), its reason."""

    knots: np.ndarray
    note: str = ""


def harrell_knots(x, k: int, fractied: float = FRACTIED) -> Knots:
    """Knot locations of ``Hmisc::rcspline.eval(x, nk = k, knots.only = TRUE)`` (the knots ``rms::rcs(x, k)`` uses).

    The quantiles ``seq(outer, 1 - outer, length = k)`` of the marker (outer .10 for 3 knots, else .05;
    R type 7), the outer two moved to the 5th smallest and 5th largest value below 100 values, with
    rcspline.eval's special cases: with at most k + 2 distinct values the knots are the distinct values
    less the smallest and largest; when the smallest (largest) value holds at least ``fractied`` of the
    values and no other value does, the first (last) knot is the next distinct value and the other knots
    come from the values beyond it; when the quantiles tie, the alternate algorithm (2k quantiles), an error
    when those give fewer than 3 distinct knots (e.g. a floor held by most patients and a value in the middle by
    5 %: no floor rule, every quantile at the floor), before the outer knots move. Tied knots are dropped. At least 6 values are required, as R: below 10 R's "5th smallest" outer knot
    lies at or above its "5th largest"; the knots are sorted all the same (or, tied, too few: an error).
    """
    if k not in (3, 4, 5):
        raise ValueError(f"number of knots must be 3, 4 or 5 (got {k})")
    xx = np.asarray(x, dtype=float)
    xx = np.sort(xx[~np.isnan(xx)])
    if xx.size < 6:
        raise ValueError(f"{xx.size} values: too few for a {k}-knot spline (needs at least 6, as rcspline.eval)")
    values, counts = np.unique(xx, return_counts=True)
    if values.size - 2 <= k:
        return _distinct_knots(values[1:-1], f"{k} knots asked for, the marker has {values.size} distinct values: "
                                            f"knots at the {values.size - 2} inner ones (as rcspline.eval)")
    outer = 0.05 if k > 3 else 0.10
    f = counts / xx.size
    first = last = None
    nke = k
    if f[1:-1].max() < fractied:
        if f[0] >= fractied:
            first = xx[xx > xx[0]][0]
            xx, nke = xx[xx > first], nke - 1
        if f[-1] >= fractied:
            last = xx[xx < xx[-1]][-1]
            xx, nke = xx[xx < last], nke - 1
    note = ""
    if nke == 1:
        inner = np.array([np.median(xx)])
    else:
        inner = r_quantile(xx, r_seq(0.5, 1 - outer, 2) if nke == 2 else r_seq(outer, 1 - outer, nke))
        if np.unique(inner).size < min(nke, 3):
            inner = r_quantile(xx, r_seq(outer, 1 - outer, 2 * nke))
            if first is not None and np.unique(inner).size < 3:
                mid = (first + last) / 2 if last is not None else float(np.median(xx))
                inner = np.sort([first, mid, last if last is not None else r_quantile(xx, [1 - outer])[0]])
            if np.unique(inner).size < 3:   # R stops here, before the outer knots move to the 5th values
                raise ValueError(f"marker has too few distinct values for a spline: its quantiles tie (fewer than 3 "
                                 f"distinct knots from 2 x {nke} quantiles, as rcspline.eval)")
            note = f"{k} knots asked for: the marker's quantiles tie, knots from 2 x {nke} quantiles (as rcspline.eval)"
        if xx.size < 100:   # R grows the vector on assignment past its end; its NAs, like indexes past xx's end, are dropped
            inner = np.r_[inner, np.full(max(0, nke - inner.size), np.nan)]
            if first is None:
                inner[0] = xx[4] if xx.size > 4 else np.nan
            if last is None:
                inner[nke - 1] = xx[-5] if xx.size > 4 else np.nan
    placed = _distinct_knots(np.r_[inner, [v for v in (first, last) if v is not None]], note)
    if placed.knots.size < k and not note:
        return Knots(placed.knots, f"{k} knots asked for, {placed.knots.size} placed (tied knots dropped)")
    return placed


def _distinct_knots(knots: np.ndarray, note: str) -> Knots:
    """Sorted distinct knots (R ``sort(unique(knots))``, missing dropped); fewer than 3 is an error."""
    knots = np.unique(knots[~np.isnan(knots)])
    if knots.size < 3:
        raise ValueError("marker has too few distinct values for a spline (fewer than 3 distinct knots)")
    return Knots(knots, note)


def _covariance(cox) -> np.ndarray:
    """The fit's coefficient covariance (``fit_cox`` always sets it; a ``CoxResult`` built by hand may not)."""
    if cox.covariance is None:
        raise ValueError("the Cox fit carries no covariance matrix")
    return cox.covariance


def rcs_basis(x, knots) -> np.ndarray:
    """Columns ``x, x', x'', ...`` of ``rcspline.eval(x, knots, inclx = TRUE)`` (norm = 2)."""
    x = np.asarray(x, dtype=float)
    t = np.asarray(knots, dtype=float)
    k = t.size
    kd = (t[-1] - t[0]) ** (2 / 3)
    cols = [x]
    for j in range(k - 2):
        cols.append(np.maximum((x - t[j]) / kd, 0) ** 3
                    + ((t[k - 2] - t[j]) * np.maximum((x - t[k - 1]) / kd, 0) ** 3
                       - (t[k - 1] - t[j]) * np.maximum((x - t[k - 2]) / kd, 0) ** 3) / (t[k - 1] - t[k - 2]))
    return np.column_stack(cols)


@dataclass
class SplineFit:
    """Cox model with the marker as a restricted cubic spline."""

    marker: str
    knots: np.ndarray
    knots_note: str   # why fewer knots than asked were placed, else ""
    cox: CoxResult
    overall_chisq: float
    overall_df: int
    overall_p: float
    nonlinear_chisq: float
    nonlinear_df: int
    nonlinear_p: float
    reference: float
    x: np.ndarray  # the marker values used (for the rug)

    def curve(self, grid=None, conf_level: float = 0.95) -> pd.DataFrame:
        """log HR vs the reference value with its pointwise CI: columns x, log_hr, se, ci_low, ci_high (se and CI
        blank where the coefficients' covariance, not positive definite, gives a negative variance)."""
        grid = np.linspace(self.x.min(), self.x.max(), 101) if grid is None else np.asarray(grid, dtype=float)
        coef = self.cox.coefficients.coef.to_numpy()[: self.knots.size - 1]
        V = _covariance(self.cox)[: coef.size, : coef.size]
        B = rcs_basis(grid, self.knots) - rcs_basis([self.reference], self.knots)
        lp = B @ coef
        variance = np.einsum("ij,jk,ik->i", B, V, B)
        se = np.sqrt(np.where(variance >= 0, variance, np.nan))   # negative: V not positive definite, not estimable
        z = stats.norm.ppf(1 - (1 - conf_level) / 2)
        return pd.DataFrame({"x": grid, "log_hr": lp, "se": se, "ci_low": lp - z * se, "ci_high": lp + z * se})


def _wald(coef: np.ndarray, V: np.ndarray) -> tuple[float, int, float]:
    chisq = float(coef @ np.linalg.solve(V, coef))
    return chisq, coef.size, float(stats.chi2.sf(chisq, coef.size))


def fit_spline(frame: pd.DataFrame, duration: str, event: str, marker: str, k: int = 4,
               covariates: list[str] | tuple = (), conf_level: float = 0.95) -> SplineFit:
    """``cph(Surv(duration, event) ~ rcs(marker, k) + covariates)`` on complete cases, with rms' knots: from every
    non-missing marker value of ``frame`` (rms evaluates ``rcs`` before the incomplete rows are dropped).

    A covariate with a monotone likelihood (e.g. every event in one of its groups) has its coefficient left blank,
    with the reason in ``cox.warnings``, and the spline is estimated at its limit, as the multivariable Cox models
    (:func:`~tilpheno.biomarkers.cox.fit_cox_at_limit`; R coxph reports these beside a huge coefficient). ValueError
    when the spline itself has no finite estimate (a monotone likelihood of the marker or a curve of it)."""
    data = frame[[duration, event, marker, *covariates]].dropna().reset_index(drop=True)
    placed = harrell_knots(frame[marker], k)
    knots = placed.knots
    basis = rcs_basis(data[marker], knots)
    names = [marker + "'" * j for j in range(basis.shape[1])]
    spl = pd.DataFrame(basis, columns=names)
    work = pd.concat([data[[duration, event, *covariates]], spl], axis=1)
    try:
        cox = fit_cox(work, duration, event, [*names, *covariates], conf_level, start="zero",
                      groups={f"rcs({marker})": names},   # one PH test for the spline, df = k - 1
                      at_limit=True, not_at_limit=names)
    except ValueError as exc:
        raise ValueError(_basis_glossed(str(exc), marker, names)) from None
    coef = cox.coefficients.coef.to_numpy()[: len(names)]
    V = _covariance(cox)[: len(names), : len(names)]
    overall = _wald(coef, V)
    nonlin = _wald(coef[1:], V[1:, 1:]) if len(names) > 1 else (np.nan, 0, np.nan)
    x = data[marker].to_numpy(float)
    return SplineFit(marker, knots, placed.note, cox, *overall, *nonlin, float(np.median(x)), x)


def _basis_glossed(reason: str, marker: str, names: list[str]) -> str:
    """A Cox model's reason that names the spline's nonlinear basis columns (``x'``, ``x''``: e.g. a combination of
    them separating the events, a curve of the marker high at both ends), with what those columns are."""
    if len(names) < 2 or names[1] not in reason:
        return reason
    return (f"{reason}; {', '.join(names[1:])}: the nonlinear basis columns of {marker}'s spline (rms' names), so a "
            f"combination of them with {marker} is a curve of {marker}")


def spline_rows(fit: SplineFit, endpoint: str) -> dict:
    """One summary row for ``splines.csv`` (columns :data:`SPLINE_COLUMNS`)."""
    return dict(endpoint=endpoint, marker=fit.marker, knots=";".join(f"{k:.10g}" for k in fit.knots),
                n_knots=fit.knots.size, n=fit.cox.n, events=fit.cox.events, overall_chisq=fit.overall_chisq,
                overall_df=fit.overall_df, overall_p=fit.overall_p, nonlinear_chisq=fit.nonlinear_chisq,
                nonlinear_df=fit.nonlinear_df, nonlinear_p=fit.nonlinear_p, reference=fit.reference,
                loglik=fit.cox.loglik, converged=fit.cox.converged, warning="; ".join(w for w in (fit.knots_note, *fit.cox.warnings) if w))


SPLINE_COLUMNS = ("endpoint", "marker", "knots", "n_knots", "n", "events", "overall_chisq", "overall_df", "overall_p",
                  "nonlinear_chisq", "nonlinear_df", "nonlinear_p", "reference", "loglik", "converged", "warning")
"""The columns of :func:`spline_rows` and :func:`unfitted_spline_row`."""


def unfitted_spline_row(frame: pd.DataFrame, duration: str, event: str, marker: str, k: int, endpoint: str,
                        reason: str) -> dict:
    """``splines.csv``'s row for a spline model that could not be fitted (e.g. a monotone likelihood): its patients and
    events (complete cases), the knots where they can be placed, no estimate, and ``not fitted: reason`` in
    ``warning``; so the table lists every marker, as the Cox tables keep a row per model."""
    data = frame[[duration, event, marker]].dropna()
    try:
        knots: np.ndarray | None = harrell_knots(frame[marker], k).knots
    except ValueError:   # too few values: the reason says so
        knots = None
    row: dict = dict.fromkeys(SPLINE_COLUMNS, np.nan)
    row.update(endpoint=endpoint, marker=marker, knots=";".join(f"{v:.10g}" for v in knots) if knots is not None else "",
               n_knots=knots.size if knots is not None else np.nan, n=len(data), events=int(data[event].sum()),
               converged=False, warning=f"not fitted: {reason}")
    return row
