"""The yardsticks of ``benchmarks/realdata_f1_census.py`` against geometry known in advance.

``best_cuts`` must find the pair of axis-parallel cuts that generated an expert's labels (to one
grid step, 0.005 transformed units) and ``shifted_f1`` must give the F1 that the areas of a
uniform square give for a quadrant moved by 0.02 (to 0.005: 200,000 events, sampling SD of the
mean F1 about 0.001).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import realdata_f1_census as census  # noqa: E402


def _uniform(n: int = 200_000, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, n), rng.uniform(0.0, 1.0, n)


@pytest.mark.parametrize("plane, cuts", [("CD4 x CD8", (0.41, 0.57)), ("CD4 x CD8", (0.62, 0.33)),
                                         ("FoxP3 x CD127", (0.35, 0.62))])
def test_best_cuts_finds_the_cuts_that_drew_the_labels(plane, cuts):
    x, y = _uniform()
    label = census.plane_class(x, y, *cuts, plane)
    label[::50] = -1   # events the expert left in no gate are agreed with by no cut
    label[(label == 0) & (np.arange(x.size) % 10 > 0)] = -1   # few labelled events in the lower-left class,
    # so that the other classes, not that corner alone, must place the cuts
    bx, by = census.best_cuts(x, y, label, plane)
    assert abs(bx - cuts[0]) <= census.GRID and abs(by - cuts[1]) <= census.GRID


def _quadrant_f1(dx: float, dy: float, c: float = 0.5) -> float:
    """F1 of the upper-right quadrant of the unit square (cuts c, c) against it moved by (dx, dy)."""
    area = (1 - c) ** 2
    moved = (1 - c - dx) * (1 - c - dy)
    overlap = (1 - c - max(dx, 0)) * (1 - c - max(dy, 0))
    return 2 * overlap / (area + moved)


def test_two_experts_f1_is_the_mean_over_the_eight_shifts_of_a_quadrant():
    x, y = _uniform()
    parent = np.ones(x.size, bool)
    d = census.NEAR
    expected = np.mean([_quadrant_f1(dx, dy) for dx in (-d, 0, d) for dy in (-d, 0, d) if (dx, dy) != (0, 0)])
    got = census.shifted_f1(x, y, 0.5, 0.5, "CD4 x CD8", 3, parent)
    assert got == pytest.approx(expected, abs=0.005)
    assert expected < 0.98   # the shift costs F1 even on a quarter of the events
