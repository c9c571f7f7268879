"""Response rates: objective response (CR + PR) and disease control (CR + PR + SD).

Convention: the denominator is every patient in the outcomes table with a best response (a blank one is
missing: left out, named by the analysis); not-evaluable (NE) patients count as non-responders. Confidence intervals are exact Clopper-Pearson (as R
``binom.test``): the ``alpha/2`` and ``1 - alpha/2`` beta quantiles, 0 and 1 at the edges.
Rates are fractions (0-1).
"""
from __future__ import annotations

import pandas as pd
from scipy import stats

RESPONSE_SETS = {"ORR": ("CR", "PR"), "DCR": ("CR", "PR", "SD")}


def clopper_pearson(count: int, n: int, conf_level: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval for ``count`` successes out of ``n``."""
    alpha = 1 - conf_level
    low = 0.0 if count == 0 else float(stats.beta.ppf(alpha / 2, count, n - count + 1))
    high = 1.0 if count == n else float(stats.beta.ppf(1 - alpha / 2, count + 1, n - count))
    return low, high


def response_rates(best_response: pd.Series, conf_level: float = 0.95) -> pd.DataFrame:
    """Columns ``metric, n, count, rate, ci_low, ci_high`` for ORR and DCR."""
    codes = best_response.astype(str).str.upper()
    n = int(codes.size)
    rows = []
    for metric, members in RESPONSE_SETS.items():
        count = int(codes.isin(members).sum())
        low, high = clopper_pearson(count, n, conf_level) if n else (float("nan"), float("nan"))
        rows.append((metric, n, count, count / n if n else float("nan"), low, high))
    return pd.DataFrame(rows, columns=["metric", "n", "count", "rate", "ci_low", "ci_high"])


def is_responder(best_response: pd.Series) -> pd.Series:
    """True for CR or PR."""
    return best_response.astype(str).str.upper().isin(RESPONSE_SETS["ORR"])
