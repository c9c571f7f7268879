"""Quadrants from sibling threshold gates: which gate pairs form a FlowJo quadrant view, and the
percentage of the parent's events in each quadrant.

Measured here (gate stage, numpy only) so the measure stage (``tilpheno.phenotype``, which keeps
the all-event percentages when a report draws a subsample) and the report both import it downward.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def sibling_range_pairs(gates: Sequence[tuple]) -> list[tuple[tuple, tuple]]:
    """Pairs of 1-D interval gates with the same parent on different dimensions (first two per
    parent, in strategy order): CD4+/CD8+ under CD3+, CD3+/CD56+ under live lymphocytes.

    ``gates``: ``(population, parent, gate, method)`` entries, parents first.
    """
    by_parent: dict[str, list[tuple]] = {}
    for entry in gates:
        gate = entry[2]
        if len(gate.dims) == 1 and gate.drawing().shape == "intervals":
            siblings = by_parent.setdefault(entry[1], [])
            if all(g[2].dims[0] != gate.dims[0] for g in siblings):
                siblings.append(entry)
    return [(s[0], s[1]) for s in by_parent.values() if len(s) >= 2]


def quadrant_percentages(x: np.ndarray, y: np.ndarray, xgate, ygate, xdim: str, ydim: str) -> dict:
    """% of the events with finite (x, y) in each quadrant, keyed (inside xgate, inside ygate).

    Membership is the gates' own (``membership``: Gating-ML ``low <= v < high``); the four values
    sum to 100 (or are all 0 when no event has finite coordinates).
    """
    ok = np.isfinite(x) & np.isfinite(y)
    xin = xgate.membership({xdim: x})
    yin = ygate.membership({ydim: y})
    n = int(ok.sum())
    return {(xs, ys): (100.0 * int(np.sum(ok & (xin == xs) & (yin == ys))) / n if n else 0.0)
            for xs in (True, False) for ys in (True, False)}
