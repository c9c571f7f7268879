"""A continuous marker without cut-points: restricted cubic splines in Cox (as ``rms::rcs``).

Conventions (``rms``/``Hmisc::rcspline.eval`` with ``norm = 2``):

- Knots at Harrell's quantiles of the marker: 3 knots .10 .50 .90; 4 knots .05 .35 .65 .95;
  5 knots .05 .275 .50 .725 .95 (R quantile type 7). With fewer than 100 values the outer knots
  are the 5th smallest and 5th largest values. Tied knots are dropped.
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

HARRELL_QUANTILES = {3: (0.10, 0.50, 0.90), 4: (0.05, 0.35, 0.65, 0.95), 5: (0.05, 0.275, 0.50, 0.725, 0.95)}


def harrell_knots(x, k: int) -> np.ndarray:
    """Knot locations of ``rcspline.eval(x, nk = k, knots.only = TRUE)``."""
    if k not in HARRELL_QUANTILES:
        raise ValueError(f"number of knots must be 3, 4 or 5 (got {k})")
    x = np.sort(np.asarray(x, dtype=float)[~np.isnan(np.asarray(x, dtype=float))])
    if x.size < 10:   # below 100 values the outer knots are the 5th smallest and 5th largest value
        raise ValueError(f"{x.size} values: too few for a {k}-knot spline (needs at least 10)")
    knots = np.quantile(x, HARRELL_QUANTILES[k])
    if x.size < 100:
        knots[0], knots[-1] = x[4], x[-5]
    knots = np.unique(knots)
    if knots.size < 3:
        raise ValueError(f"marker has too few distinct values for a {k}-knot spline")
    return knots


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
        """log HR vs the reference value with its pointwise CI: columns x, log_hr, se, ci_low, ci_high."""
        grid = np.linspace(self.x.min(), self.x.max(), 101) if grid is None else np.asarray(grid, dtype=float)
        coef = self.cox.coefficients.coef.to_numpy()[: self.knots.size - 1]
        V = _covariance(self.cox)[: coef.size, : coef.size]
        B = rcs_basis(grid, self.knots) - rcs_basis([self.reference], self.knots)
        lp = B @ coef
        se = np.sqrt(np.einsum("ij,jk,ik->i", B, V, B))
        z = stats.norm.ppf(1 - (1 - conf_level) / 2)
        return pd.DataFrame({"x": grid, "log_hr": lp, "se": se, "ci_low": lp - z * se, "ci_high": lp + z * se})


def _wald(coef: np.ndarray, V: np.ndarray) -> tuple[float, int, float]:
    chisq = float(coef @ np.linalg.solve(V, coef))
    return chisq, coef.size, float(stats.chi2.sf(chisq, coef.size))


def fit_spline(frame: pd.DataFrame, duration: str, event: str, marker: str, k: int = 4,
               covariates: list[str] | tuple = (), conf_level: float = 0.95) -> SplineFit:
    """``cph(Surv(duration, event) ~ rcs(marker, k) + covariates)`` on complete cases."""
    data = frame[[duration, event, marker, *covariates]].dropna().reset_index(drop=True)
    knots = harrell_knots(data[marker], k)
    basis = rcs_basis(data[marker], knots)
    names = [marker + "'" * j for j in range(basis.shape[1])]
    spl = pd.DataFrame(basis, columns=names)
    work = pd.concat([data[[duration, event, *covariates]], spl], axis=1)
    cox = fit_cox(work, duration, event, [*names, *covariates], conf_level, start="zero",
                  groups={f"rcs({marker})": names})   # one PH test for the spline, df = k - 1
    coef = cox.coefficients.coef.to_numpy()[: len(names)]
    V = _covariance(cox)[: len(names), : len(names)]
    overall = _wald(coef, V)
    nonlin = _wald(coef[1:], V[1:, 1:]) if len(names) > 1 else (np.nan, 0, np.nan)
    x = data[marker].to_numpy(float)
    return SplineFit(marker, knots, cox, *overall, *nonlin, float(np.median(x)), x)


def spline_rows(fit: SplineFit, endpoint: str) -> dict:
    """One summary row for ``splines.csv``."""
    return dict(endpoint=endpoint, marker=fit.marker, knots=";".join(f"{k:.10g}" for k in fit.knots),
                n_knots=fit.knots.size, n=fit.cox.n, events=fit.cox.events, overall_chisq=fit.overall_chisq,
                overall_df=fit.overall_df, overall_p=fit.overall_p, nonlinear_chisq=fit.nonlinear_chisq,
                nonlinear_df=fit.nonlinear_df, nonlinear_p=fit.nonlinear_p, reference=fit.reference,
                loglik=fit.cox.loglik, converged=fit.cox.converged, warning="; ".join(fit.cox.warnings))
