"""Adjusted p-values across markers, exactly as R ``p.adjust`` (``"holm"``, ``"BH"``).

Missing p-values stay missing and are not counted (R's default ``n = length(p[!is.na(p)])``).
"""
from __future__ import annotations

import numpy as np


def p_adjust(p, method: str) -> np.ndarray:
    """Holm (step-down, family-wise error) or Benjamini-Hochberg (step-up, false discovery rate)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    n = q.size
    if n == 0:
        return out
    if method == "holm":
        order = np.argsort(q, kind="stable")
        adj = np.minimum(1.0, np.maximum.accumulate((n - np.arange(n)) * q[order]))
    elif method == "BH":
        order = np.argsort(q, kind="stable")[::-1]
        adj = np.minimum(1.0, np.minimum.accumulate(n / np.arange(n, 0, -1) * q[order]))
    else:
        raise ValueError(f"method must be 'holm' or 'BH', not {method!r}")
    res = np.empty(n)
    res[order] = adj
    out[ok] = res
    return out
