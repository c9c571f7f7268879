"""Time-dependent ROC: cumulative/dynamic AUC at a time t with inverse-probability-of-censoring weights.

Definition (Uno et al. 2007; Blanche et al. 2013; as R ``riskRegression::Score(metrics = "auc",
cens.model = "km")``): cases are patients with an event at or before t, controls those still event-free
after t. Each case is weighted by ``1 / G(T_i-)``, G the Kaplan-Meier curve of the censoring times (deaths
leave the risk set before censorings at the same time), taken just before T_i: the probability of being
still uncensored at T_i, when a censoring at T_i comes after the event (R timeROC and pec::ipcw's
``subjectTimesLag = 1``; scikit-survival's ``cumulative_dynamic_auc`` takes G at T_i, which weighs a case
more when a censoring falls at its time, as with whole-month times). G(T_i-) is above 0 at every event time.
``AUC(t) = sum_i sum_j w_i [1(s_i > s_j) + 1/2 1(s_i = s_j)] / (sum_i w_i x #controls)`` for a risk score s
(higher = higher risk); scores within 1e-8 of each other (in sorted order) are ties. (R timeROC 0.4 counts
an event at exactly t neither as a case nor as a control; its code takes T < t.)

Confidence intervals and the comparison of two markers (R ``timeROC`` and ``Score`` use an iid
representation): nonparametric bootstrap of patients (B resamples, fixed seed) with
G re-estimated in each resample; the CI is the percentile interval; two markers are compared
on the same resamples, ``z = (AUC_1 - AUC_2) / SD_boot(AUC_1 - AUC_2)``, two-sided normal p.
Their coverage is checked by simulation (benchmarks/tdroc_coverage.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from tilpheno.biomarkers.survival import risk_table

TIED_TOL = 1e-8


def censoring_survival(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier of the censoring distribution: (unique times, G at those times)."""
    uniq, d, c, n_risk = risk_table(time, event)
    at_risk = n_risk - d   # deaths leave the risk set before the censorings at their time
    ratio = np.divide(c, at_risk, out=np.zeros_like(c), where=c != 0)
    return uniq, np.cumprod(1 - ratio)


def ipcw_weights(time, event) -> np.ndarray:
    """``event_i / G(T_i-)`` (0 for censored patients): G just before the patient's time. G reaches 0 only at a
    time when everyone still at risk is censored, after the last event, so every event's weight is finite."""
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float)
    uniq, G = censoring_survival(t, e)
    before = np.concatenate(([1.0], G[:-1]))[np.searchsorted(uniq, t)]
    return np.where(e == 1, 1.0 / np.where(e == 1, before, 1.0), 0.0)


def _tie_ranks(score: np.ndarray) -> np.ndarray:
    """Ranks (higher = higher score) with chains of scores within TIED_TOL merged into one rank."""
    order = np.argsort(-score, kind="stable")
    s = score[order]
    new_group = np.r_[True, np.abs(np.diff(s)) > TIED_TOL]
    ranks = np.empty(score.size)
    ranks[order] = -np.cumsum(new_group)
    return ranks


def auc_at(time, event, score, t: float, weights=None) -> float:
    """Cumulative/dynamic AUC(t) of ``score`` (see the module docstring)."""
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=float)
    w = ipcw_weights(time, event) if weights is None else weights
    r = _tie_ranks(np.asarray(score, dtype=float))
    case = (time <= t) & (event == 1)
    control = time > t
    if not case.any() or not control.any():
        return float("nan")
    rc, rn = r[case], np.sort(r[control])
    greater = np.searchsorted(rn, rc, side="left")
    equal = np.searchsorted(rn, rc, side="right") - greater
    wc = w[case]
    return float(np.sum(wc * (greater + 0.5 * equal)) / (wc.sum() * rn.size))


@dataclass
class TimeROC:
    """AUC(t) of each marker at each time with bootstrap percentile CIs at ``conf_level``; ``boot`` holds the
    resamples."""

    table: pd.DataFrame  # marker, time, n, cases, controls, auc, ci_low, ci_high, se_boot
    boot: dict[tuple[str, float], np.ndarray]
    n_boot: int
    conf_level: float

    def compare(self, marker_a: str, marker_b: str, t: float) -> dict:
        """Paired bootstrap comparison of two markers' AUC(t); the percentile CI of the difference at the
        ``conf_level`` of the AUCs' own CIs."""
        tab = self.table.set_index(["marker", "time"])
        diff = tab.at[(marker_a, t), "auc"] - tab.at[(marker_b, t), "auc"]
        d = self.boot[(marker_a, t)] - self.boot[(marker_b, t)]
        d = d[np.isfinite(d)]
        se = float(np.std(d, ddof=1)) if d.size > 1 else float("nan")
        z = diff / se if se > 0 else float("nan")
        alpha = 1 - self.conf_level
        return dict(marker_a=marker_a, marker_b=marker_b, time=t, auc_a=tab.at[(marker_a, t), "auc"],
                    auc_b=tab.at[(marker_b, t), "auc"], difference=diff, se_boot=se,
                    ci_low=float(np.quantile(d, alpha / 2)) if d.size else np.nan,
                    ci_high=float(np.quantile(d, 1 - alpha / 2)) if d.size else np.nan,
                    z=z, p=float(2 * stats.norm.sf(abs(z))) if np.isfinite(z) else float("nan"))


def time_roc(time, event, scores: dict[str, np.ndarray], times, n_boot: int = 200, seed: int = 20240601,
             conf_level: float = 0.95) -> TimeROC:
    """AUC(t) for several markers (same patients; complete cases) with paired bootstrap resamples."""
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=float)
    names = list(scores)
    S = np.column_stack([np.asarray(scores[m], dtype=float) for m in names])
    times = [float(t) for t in times]
    w = ipcw_weights(time, event)
    rng = np.random.default_rng(seed)
    boot = {(m, t): np.full(n_boot, np.nan) for m in names for t in times}
    n = time.size
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        tb, eb = time[idx], event[idx]
        wb = ipcw_weights(tb, eb)
        for j, m in enumerate(names):
            for t in times:
                boot[(m, t)][b] = auc_at(tb, eb, S[idx, j], t, wb)
    alpha = 1 - conf_level
    rows = []
    for j, m in enumerate(names):
        for t in times:
            bs = boot[(m, t)]
            bs = bs[np.isfinite(bs)]
            rows.append(dict(marker=m, time=t, n=n, cases=int(((time <= t) & (event == 1)).sum()),
                             controls=int((time > t).sum()), auc=auc_at(time, event, S[:, j], t, w),
                             ci_low=float(np.quantile(bs, alpha / 2)) if bs.size else np.nan,
                             ci_high=float(np.quantile(bs, 1 - alpha / 2)) if bs.size else np.nan,
                             se_boot=float(np.std(bs, ddof=1)) if bs.size > 1 else np.nan, n_boot=int(bs.size)))
    return TimeROC(pd.DataFrame(rows), boot, n_boot, conf_level)
