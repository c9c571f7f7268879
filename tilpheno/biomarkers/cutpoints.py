"""Cut-points for a continuous marker against a survival endpoint.

The maximally selected log-rank statistic follows R ``maxstat.test(Surv(time, event) ~ x,
smethod = "LogRank", minprop = 0.1, maxprop = 0.9)`` exactly:

- Log-rank scores (``exactRankTests::cscores``): ``a_i = event_i - sum_{j: r_j <= r_i}
  event_j / (N - r_j + 1)`` where ``r`` is the rank of the time with ties given the maximum rank.
- Patients are ordered by the marker; a candidate cut is a distinct marker value ``c`` with
  ``m`` = #(x <= c) and ``max(1, floor(N minprop)) <= m <= floor(N maxprop)``. The low group is
  ``x <= c``.
- Statistic at a cut: ``|S_m - E_m| / sqrt(V_m)`` with ``S_m`` the sum of the low group's scores,
  ``E_m = m/N sum a``, ``V_m = m (N - m) / (N^2 (N - 1)) (N sum a^2 - (sum a)^2)``.
  ``M`` is the maximum; the estimated cut-point is the smallest cut attaining it.
- ``p_raw`` = ``2 (1 - Phi(M))``: the minimum p-value over the candidate cuts, uncorrected.
- ``p_lau92``: Lausen & Schumacher (1992) approximation for the maximum of a standardised
  Brownian bridge over [minprop, maxprop] (1 when ``M < 1``).
- ``p_lau94``: Lausen, Sauerbrei & Schumacher (1994) improved Bonferroni bound over the actual
  candidate cuts.
- ``p_perm``: conditional Monte Carlo permutation p-value, ``(1 + #{M* >= M}) / (1 + B)``,
  permuting the scores over patients ``B`` times (fixed seed), the cut search repeated in each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


def logrank_scores(time, event) -> np.ndarray:
    """Log-rank scores of ``exactRankTests::cscores(Surv(time, event), type = "LogRank")``."""
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float)
    n = t.size
    rank_max = stats.rankdata(t, method="max")
    order = np.argsort(t, kind="stable")
    fact = e / (n - rank_max + 1)
    cum = np.cumsum(fact[order])
    return e - cum[rank_max.astype(int) - 1]


def candidate_cuts(x, minprop: float = 0.1, maxprop: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Sorted order of ``x`` and the low-group sizes ``m`` of the admissible cuts."""
    x = np.asarray(x, dtype=float)
    n = x.size
    order = np.argsort(x, kind="stable")
    xs = x[order]
    # 0-based start of each distinct value = number of observations strictly below it; the cut
    # for that m is the previous distinct value, so the low group (x <= cut) has m members.
    m = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    lo = max(1, math.floor(n * minprop))
    hi = math.floor(n * maxprop)
    m = m[(m >= lo) & (m <= hi)]
    return order, m


def _standardised(cum_low: np.ndarray, total: float, sum_sq: float, m: np.ndarray, n: int) -> np.ndarray:
    expected = m / n * total
    var = m * (n - m) / (n**2 * (n - 1)) * (n * sum_sq - total**2)
    return np.abs((cum_low - expected) / np.sqrt(var))


def p_lausen92(b: float, minprop: float = 0.1, maxprop: float = 0.9) -> float:
    """Lausen & Schumacher (1992) p-value of a maximally selected statistic ``b``."""
    if b < 1:
        return 1.0
    db = stats.norm.pdf(b)
    p = 4 * db / b + db * (b - 1 / b) * math.log((maxprop * (1 - minprop)) / ((1 - maxprop) * minprop))
    return max(p, 0.0)


def p_lausen94(b: float, n: int, m: np.ndarray) -> float:
    """Lausen, Sauerbrei & Schumacher (1994) improved Bonferroni p-value over cuts ``m``."""
    m = np.asarray(m, dtype=float)
    if m.size <= 1:
        d = 0.0
    else:
        m1, m2 = m[:-1], m[1:]
        t = np.sqrt(1 - m1 * (n - m2) / ((n - m1) * m2))
        d = float(np.sum(1 / math.pi * math.exp(-b**2 / 2) * (t - (b**2 / 4 - 1) * t**3 / 6)))
    return 1 - (stats.norm.cdf(b) - stats.norm.cdf(-b)) + d


@dataclass(frozen=True)
class MaxstatResult:
    """Maximally selected log-rank statistic; ``cuts``/``stats`` are every admissible cut."""

    statistic: float
    cutpoint: float
    n_low: int
    n_high: int
    p_raw: float
    p_lau92: float
    p_lau94: float
    p_perm: float
    n_perm: int
    cuts: np.ndarray
    stats: np.ndarray


def maxstat_logrank(
    x, time, event, *, minprop: float = 0.1, maxprop: float = 0.9, n_perm: int = 10_000, seed: int = 20240601
) -> MaxstatResult:
    """Maximally selected log-rank statistic for marker ``x`` (see the module docstring)."""
    x = np.asarray(x, dtype=float)
    scores = logrank_scores(time, event)
    n = x.size
    order, m = candidate_cuts(x, minprop, maxprop)
    if m.size == 0:
        raise ValueError("no admissible cut-point between minprop and maxprop")
    ys = scores[order]
    total, sum_sq = ys.sum(), (ys**2).sum()
    if n * sum_sq - total**2 <= 0:
        raise ValueError("log-rank scores are constant (no events, or every patient's event at one time): "
                         "survival does not differ between patients")
    test = _standardised(np.cumsum(ys)[m - 1], total, sum_sq, m, n)
    best = int(np.flatnonzero(test == test.max())[0])
    statistic = float(test[best])
    cut = float(x[order][m[best] - 1])
    p_perm = permutation_pvalue(ys, m, statistic, n_perm, seed) if n_perm > 0 else float("nan")
    return MaxstatResult(
        statistic=statistic, cutpoint=cut, n_low=int(m[best]), n_high=int(n - m[best]),
        p_raw=float(2 * stats.norm.sf(statistic)), p_lau92=p_lausen92(statistic, minprop, maxprop),
        p_lau94=float(p_lausen94(statistic, n, m)), p_perm=p_perm, n_perm=int(n_perm),
        cuts=x[order][m - 1], stats=test,
    )


def permutation_max(scores_in_x_order: np.ndarray, m: np.ndarray, n_perm: int, seed: int,
                    chunk: int = 2_000) -> np.ndarray:
    """Maximum standardised statistic over cuts ``m`` for ``n_perm`` random permutations of the scores.

    Vectorised: each chunk of permutations is a (chunk x N) matrix, cumulated along patients.
    The mean and variance of the statistic do not change under permutation.
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(scores_in_x_order, dtype=float)
    n = y.size
    total, sum_sq = y.sum(), (y**2).sum()
    expected = m / n * total
    sd = np.sqrt(m * (n - m) / (n**2 * (n - 1)) * (n * sum_sq - total**2))
    out = np.empty(n_perm)
    for start in range(0, n_perm, chunk):
        b = min(chunk, n_perm - start)
        idx = rng.permuted(np.broadcast_to(np.arange(n), (b, n)), axis=1)
        cum = np.cumsum(y[idx], axis=1)[:, m - 1]
        out[start:start + b] = np.max(np.abs(cum - expected) / sd, axis=1)
    return out


def permutation_pvalue(scores_in_x_order: np.ndarray, m: np.ndarray, statistic: float, n_perm: int,
                       seed: int) -> float:
    """``(1 + #{M* >= M}) / (1 + B)``; a relative tolerance of 1e-12 absorbs rounding in ties."""
    null = permutation_max(scores_in_x_order, m, n_perm, seed)
    return float((1 + np.sum(null >= statistic * (1 - 1e-12))) / (1 + n_perm))


@dataclass(frozen=True)
class SplitResult:
    """A two-group split of a marker at a fixed cut (low group = values <= cut)."""

    cutpoint: float
    n_low: int
    n_high: int
    statistic: float
    p_raw: float


def fixed_cut_statistic(x, time, event, cut: float) -> SplitResult:
    """Standardised log-rank-score statistic and its normal p for a pre-specified cut."""
    x = np.asarray(x, dtype=float)
    scores = logrank_scores(time, event)
    n = x.size
    low = x <= cut
    m = int(low.sum())
    total, sum_sq = scores.sum(), (scores**2).sum()
    if m == 0 or m == n or n * sum_sq - total**2 <= 0:
        return SplitResult(cut, m, n - m, float("nan"), float("nan"))
    stat = float(_standardised(np.array([scores[low].sum()]), total, sum_sq, np.array([m]), n)[0])
    return SplitResult(cut, m, n - m, stat, float(2 * stats.norm.sf(stat)))
