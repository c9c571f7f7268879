"""Kaplan-Meier estimates, quantiles, follow-up and the log-rank test, as R's survival package.

Conventions (they match R ``survfit``/``quantile.survfit``/``summary.survfit``/``survdiff``):

- The curve has one row per distinct observed time (events and censorings), sorted.
  ``surv`` is the product-limit estimate; ``std_err`` is the Greenwood standard error of the
  cumulative hazard, ``sqrt(sum d / (n (n - d)))``, infinite once the curve reaches 0.
- Pointwise confidence intervals (``conf_type``): ``"log"`` (default) ``exp(log S +- z se)``
  with the upper limit capped at 1; ``"log-log"`` ``S ** exp(-+ z se / log S)``; ``"plain"``
  ``S +- z se S`` clipped to [0, 1]. Where S is 0 (and, for log-log, 1) the limits are missing.
- Quantile ``p`` of the time distribution: the first time where ``1 - S`` reaches ``p``. When
  ``S`` equals ``1 - p`` exactly (within ``sqrt(machine eps)``) over a flat step, the quantile
  is the midpoint of that step (from the time it is reached to the next time the curve drops,
  or to the last observed time when the curve never drops again). Missing when never reached.
- The confidence interval of a quantile is where the pointwise band crosses the same level
  (Brookmeyer-Crowley as implemented in R): the lower limit from the lower band, the upper
  limit from the upper band, with the same midpoint rule.
- The survival at a landmark time ``t`` is the curve's value at the last observed time
  ``<= t`` (1 before the first time); missing beyond the last observed time.
- Median follow-up is the median of the reverse Kaplan-Meier curve (censoring as the event).
- The log-rank test is the Mantel-Haenszel test of ``survdiff`` (rho = 0): observed minus
  expected events per group with the hypergeometric covariance, chi-square on k - 1 df. A statistic
  without variance (no events; one group alone at risk at every event time; everyone at risk has the
  event) is no test: chisq and p blank with a note (R stops with an error in the last case, else
  prints chisq 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

CONF_TYPES = ("log", "log-log", "plain")
TOLERANCE = float(np.sqrt(np.finfo(float).eps))


@dataclass(frozen=True)
class Quantile:
    """A time quantile of a survival curve with its confidence interval (NaN = not reached)."""

    estimate: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Landmark:
    """Survival probability at a landmark time with its pointwise confidence interval."""

    time: float
    surv: float
    ci_low: float
    ci_high: float


def _as_arrays(time, event) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float)
    if t.shape != e.shape or t.ndim != 1:
        raise ValueError("time and event must be 1-d arrays of the same length")
    if np.isnan(t).any() or np.isnan(e).any():
        raise ValueError("time and event must not contain missing values")
    if not np.isin(e, (0.0, 1.0)).all():
        raise ValueError("event must be 0 or 1")
    return t, e


def risk_table(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The risk sets of right-censored data (float arrays, one entry a patient: ``time``, ``event`` 1 or 0):
    the distinct observed times (sorted), the events and the censorings at each, and the number at risk
    just before each (the patients whose time is not earlier), as R ``survfit``'s ``n.risk``."""
    times, inverse = np.unique(time, return_inverse=True)
    events = np.bincount(inverse, weights=event, minlength=times.size)
    censored = np.bincount(inverse, weights=1 - event, minlength=times.size)
    at_risk = time.size - np.concatenate(([0.0], np.cumsum(events + censored)[:-1]))
    return times, events, censored, at_risk


def _pointwise_ci(surv: np.ndarray, se: np.ndarray, conf_type: str, conf_level: float):
    """Confidence limits of S(t) from the standard error of the cumulative hazard (R survfit_confint)."""
    z = stats.norm.ppf(1 - (1 - conf_level) / 2)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if conf_type == "plain":
            half = se * surv * z
            half = np.where(se == 0, 0.0, half)
            return np.maximum(surv - half, 0.0), np.minimum(surv + half, 1.0)
        if conf_type == "log":
            xx = np.where(surv == 0, np.nan, surv)
            return np.exp(np.log(xx) - z * se), np.minimum(np.exp(np.log(xx) + z * se), 1.0)
        if conf_type == "log-log":
            xx = np.where((surv == 0) | (surv == 1), np.nan, surv)
            half = z * se / np.log(xx)
            return np.exp(-np.exp(np.log(-np.log(xx)) - half)), np.exp(-np.exp(np.log(-np.log(xx)) + half))
    raise ValueError(f"conf_type must be one of {CONF_TYPES}, not {conf_type!r}")


def _first_reaching(levels: np.ndarray, p: float) -> int | None:
    """Index of the first non-missing level >= p (R ``approx(method='constant', f=1)``)."""
    hits = np.flatnonzero(~np.isnan(levels) & (levels >= p))
    return int(hits[0]) if hits.size else None


def find_quantile(times: np.ndarray, cumulative: np.ndarray, p: float, tol: float = TOLERANCE) -> float:
    """Time at which a non-decreasing curve ``cumulative`` (0 at ``times[0]``) reaches ``p``.

    Implements the midpoint rule of R's ``quantile.survfit`` (see the module docstring).
    ``cumulative`` may hold NaN (missing confidence limits); those points are skipped.
    """
    if np.all(np.isnan(cumulative)) or np.nanmax(cumulative) < p:
        return float("nan")
    last_time = times[-1]
    _, first = np.unique(np.where(np.isnan(cumulative), np.inf, cumulative), return_index=True)
    keep = np.sort(first)
    x, y = times[keep], cumulative[keep]
    i1 = _first_reaching(y + tol, p)
    i2 = _first_reaching(y - tol, p)
    if p == 0:
        return float(x[0])
    if not np.isnan(y[-1]) and abs(p - y[-1]) < tol and i1 is not None:
        return float((x[i1] + last_time) / 2)
    if i1 is None or i2 is None:
        return float("nan")
    return float((x[i1] + x[i2]) / 2)


class KaplanMeier:
    """Product-limit estimator with R survival's conventions (see the module docstring).

    ``KaplanMeier(conf_type="log").fit(time, event)`` then ``.table_``, ``.median()``,
    ``.quantile(p)``, ``.survival_at(t)``, ``.summary`` and ``.plot(ax)``.
    """

    def __init__(self, conf_type: str = "log", conf_level: float = 0.95):
        if conf_type not in CONF_TYPES:
            raise ValueError(f"conf_type must be one of {CONF_TYPES}, not {conf_type!r}")
        self.conf_type = conf_type
        self.conf_level = conf_level

    def fit(self, time, event, label: str = "all") -> "KaplanMeier":
        t, e = _as_arrays(time, event)
        if t.size == 0:
            raise ValueError("no observations")
        self.label = label
        self.n = int(t.size)
        self.events = int(e.sum())
        uniq, d, c, n_risk = risk_table(t, e)
        surv = np.cumprod(1 - d / n_risk)
        with np.errstate(divide="ignore"):
            var_terms = np.where(d > 0, d / (n_risk * (n_risk - d)), 0.0)
        se = np.sqrt(np.cumsum(var_terms))
        lower, upper = _pointwise_ci(surv, se, self.conf_type, self.conf_level)
        self.table_ = pd.DataFrame(
            {"time": uniq, "n_risk": n_risk.astype(int), "n_event": d.astype(int),
             "n_censor": c.astype(int), "surv": surv, "std_err": se, "lower": lower, "upper": upper}
        )
        return self

    def _curve(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        times = np.concatenate(([0.0], self.table_["time"].to_numpy()))
        return times, np.concatenate(([0.0], 1 - self.table_[column].to_numpy()))

    def quantile(self, p: float) -> Quantile:
        """Time by which a fraction ``p`` has had the event, with its band-crossing CI."""
        est = find_quantile(*self._curve("surv"), p)
        low = find_quantile(*self._curve("lower"), p)
        high = find_quantile(*self._curve("upper"), p)
        return Quantile(est, low, high)

    def median(self) -> Quantile:
        return self.quantile(0.5)

    def survival_at(self, time: float) -> Landmark:
        """S(time) and its pointwise CI; NaN beyond the last observed time."""
        tab = self.table_
        if time > tab["time"].iloc[-1]:
            return Landmark(time, np.nan, np.nan, np.nan)
        idx = np.searchsorted(tab["time"].to_numpy(), time, side="right") - 1
        if idx < 0:
            return Landmark(time, 1.0, 1.0, 1.0)
        row = tab.iloc[idx]
        return Landmark(time, float(row["surv"]), float(row["lower"]), float(row["upper"]))

    def at_risk(self, times) -> np.ndarray:
        """Numbers at risk just before each of ``times`` (for the table under a KM plot)."""
        tab = self.table_
        out = []
        for t in np.asarray(times, dtype=float):
            later = tab["time"].to_numpy() >= t
            out.append(int(tab["n_risk"].to_numpy()[later][0]) if later.any() else 0)
        return np.array(out, dtype=int)

    @property
    def summary(self) -> pd.DataFrame:
        return self.table_.copy()

    def survfit_table(self) -> pd.DataFrame:
        """R ``summary(survfit(...), censored = TRUE)``: time, n.risk, n.event, n.censor, surv, std.err,
        lower, upper; ``std.err`` is the standard error of S(t) (Greenwood), as R's summary prints it."""
        tab = self.table_
        with np.errstate(invalid="ignore"):
            se_surv = tab["std_err"].to_numpy() * tab["surv"].to_numpy()
        se_surv = np.where(np.isinf(tab["std_err"].to_numpy()), np.nan, se_surv)
        return pd.DataFrame({"time": tab["time"], "n.risk": tab["n_risk"], "n.event": tab["n_event"],
                             "n.censor": tab["n_censor"], "surv": tab["surv"], "std.err": se_surv,
                             "lower": tab["lower"], "upper": tab["upper"]})

    def plot(self, ax, color=None, ci: bool = False):
        """Draw the step curve on a matplotlib axis (censorings as '+' ticks)."""
        tab = self.table_
        x = np.concatenate(([0.0], tab["time"].to_numpy()))
        y = np.concatenate(([1.0], tab["surv"].to_numpy()))
        (line,) = ax.step(x, y, where="post", color=color, label=f"{self.label} (n={self.n})")
        cens = tab[tab["n_censor"] > 0]
        ax.plot(cens["time"], cens["surv"], "+", color=line.get_color(), markersize=6)
        if ci:
            lo = np.concatenate(([1.0], tab["lower"].to_numpy()))
            hi = np.concatenate(([1.0], tab["upper"].to_numpy()))
            ax.fill_between(x, lo, hi, step="post", alpha=0.15, color=line.get_color())
        return line


PH_NOT_COMPUTABLE = "the proportional-hazards test is not computable"
"""What :func:`degenerate_note` says of the PH test when every event is at one time (R cox.zph stops there)."""


def degenerate_note(time, event) -> str:
    """Why a survival endpoint cannot show a curve over time, else "": no events, every time equal (e.g. all 0),
    or every event at one time. Times in the endpoint's unit, as given; the caller names the endpoint."""
    t, e = _as_arrays(time, event)
    if t.size == 0:
        return ""
    if t.min() == t.max():
        ph = f" and {PH_NOT_COMPUTABLE}" if e.any() else ""
        return (f"every time is {t[0]:g} ({t.size} patients, {int(e.sum())} events): the Kaplan-Meier curves are "
                f"a single step at that time{ph} (check the times and their unit)")
    if not e.any():
        return f"no events among {t.size} patients: no median, log-rank test or hazard ratio can be estimated"
    at = np.unique(t[e == 1])
    if at.size == 1:
        return (f"every event ({int(e.sum())}) at time {at[0]:g}: the Kaplan-Meier curves have one step and "
                f"{PH_NOT_COMPUTABLE}")
    return ""


def median_followup(time, event) -> Quantile:
    """Median follow-up by the reverse Kaplan-Meier method (censoring treated as the event)."""
    t, e = _as_arrays(time, event)
    return KaplanMeier().fit(t, 1 - e).median()


@dataclass(frozen=True)
class LogRankResult:
    """Log-rank (Mantel-Haenszel) test; ``table`` has group, n, observed, expected; ``note`` says why there is
    no test when chisq and p are missing."""

    chisq: float
    df: int
    p: float
    table: pd.DataFrame
    note: str = ""


NO_EVENTS = "no log-rank test: no events (R survdiff: chisq 0 on -1 df, no p)"
NO_VARIANCE = ("no log-rank test: at every event time one group alone is at risk or everyone at risk has the event, "
               "so the statistic has no variance (R survdiff: an error when everyone at risk has the event, else "
               "chisq 0 on 0 df, p = 1)")


def logrank_test(time, event, group) -> LogRankResult:
    """k-sample log-rank test as R ``survdiff(..., rho = 0)``; groups in sorted order."""
    t, e = _as_arrays(time, event)
    g = np.asarray(group)
    if g.shape != t.shape:
        raise ValueError("group must have the same length as time")
    levels, gi = np.unique(g, return_inverse=True)
    k = levels.size
    if k < 2:  # nothing to compare: no test, but the table keeps its columns (expected = observed)
        events = float(e.sum())
        return LogRankResult(np.nan, 0, np.nan, pd.DataFrame(
            {"group": levels, "n": [t.size], "observed": [events], "expected": [events]}),
            "no log-rank test: only one group has patients")
    times = np.unique(t[e == 1])
    # n_risk[j, g] and d[j, g] at each event time
    at_risk = (t[None, :] >= times[:, None])
    dies = (t[None, :] == times[:, None]) & (e[None, :] == 1)
    onehot = np.eye(k)[gi]
    n_jg = at_risk @ onehot
    d_jg = dies @ onehot
    n_j = n_jg.sum(axis=1)
    d_j = d_jg.sum(axis=1)
    expected = (n_jg * (d_j / n_j)[:, None]).sum(axis=0)
    observed = d_jg.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(n_j > 1, d_j * (n_j - d_j) / (n_j**2 * (n_j - 1)), 0.0)
    var = np.einsum("j,jg,gh->gh", factor * n_j, n_jg, np.eye(k)) - np.einsum("j,jg,jh->gh", factor, n_jg, n_jg)
    oe = (observed - expected)[:-1]
    v = var[:-1, :-1]
    df = int(np.linalg.matrix_rank(v))
    table = pd.DataFrame(
        {"group": levels, "n": np.bincount(gi, minlength=k), "observed": observed, "expected": expected}
    )
    if df == 0:
        return LogRankResult(np.nan, 0, np.nan, table, NO_VARIANCE if e.any() else NO_EVENTS)
    chisq = float(oe @ np.linalg.pinv(v) @ oe)
    return LogRankResult(chisq, df, float(stats.chi2.sf(chisq, df)), table)
