"""The ideal-FMO reference's parents and its own sampling noise (shared by ``validate_gating.py`` and
``pd1_reference_noise.py``).

The reference of a PD1/FoxP3 variable (``truth.stained_negative_reference``) is the % of its
label-defined parent above the 99.5th percentile of that parent's label-negative events: a cut
estimated from ``n`` events. Its sampling SD (:func:`reference_sampling_sd`) is the order-statistic (binomial)
one: the count of negatives above the population cut is Binomial(``n``, ``q``) with ``q`` = 0.005,
so the cut moves by about ``s`` = sqrt(``n q (1 - q)``) order statistics, and the reference's %
moves by the parent's events (negatives and positives) between the negatives' order statistics
``s`` below and ``s`` above the cut's, halved, over the denominator. This is the delta-method SD
(``s (1 + N_pos f_pos / (N_neg f_neg))`` events at the cut) without a density estimate; it needs
``n q`` of several events (below 1 it is rough).
"""
from __future__ import annotations

import numpy as np

from tilpheno.simulate import instrument as ins
from tilpheno.simulate.products import TubeEvents
from tilpheno.simulate.truth import FMO_PERCENTILE, compensated_detector, live_lymphocytes, lymphocytes

def pd1_parents(tube: TubeEvents) -> dict[str, np.ndarray]:
    """The PD1 gates' label-defined parents in a stained surface tube (as ``truth.stained_negative_reference``)."""
    live = live_lymphocytes(tube)
    cd3 = live & tube.labels["cd3"]
    return {"PD1+": live, "CD8+PD1+": cd3 & tube.labels["cd8"], "CD4+PD1+": cd3 & tube.labels["cd4"]}


def pd1_values(tube: TubeEvents) -> np.ndarray:
    """The compensated PE detector (PD1 in the surface tube, FoxP3 in the Treg tube)."""
    return compensated_detector(tube, "PE-A", ins.true_spillover())


def percentile_cut_sd(values: np.ndarray, parent: np.ndarray, negative: np.ndarray, denominator: np.ndarray,
                      percentile: float = FMO_PERCENTILE) -> float:
    """The SD (percentage points) of the % of ``denominator`` that is ``parent`` above the
    ``percentile`` of ``parent & negative`` events, from that cut's own sampling (module docstring)."""
    neg = np.sort(values[parent & negative])
    n = neg.size
    if n < 2 or not np.any(denominator):
        return float("nan")
    q = 1.0 - percentile / 100.0
    rank = (n - 1) * percentile / 100.0
    s = np.sqrt(n * q * (1.0 - q))
    low, high = np.interp([max(rank - s, 0.0), min(rank + s, n - 1.0)], np.arange(n), neg)
    v = values[parent]
    between = np.count_nonzero((v > low) & (v <= high))
    return 100.0 * between / (2.0 * np.count_nonzero(denominator))


def reference_parents(surface: TubeEvents, treg: TubeEvents) -> dict[str, tuple[np.ndarray, ...]]:
    """Per PD1/FoxP3 variable: (compensated PE values, the label-defined parent, its
    label negatives, the denominator) in the stained tubes, as ``truth.stained_negative_reference``
    takes them (the reference is the % of the denominator that is parent above the negatives' cut)."""
    pe, neg, parents = pd1_values(surface), ~surface.labels["pd1"], pd1_parents(surface)
    cd3 = live_lymphocytes(surface) & surface.labels["cd3"]
    cd4_treg = lymphocytes(treg) & treg.labels["cd3"] & treg.labels["cd4"]
    return {"pd1_pct_of_live_lymph": (pe, parents["PD1+"], neg, parents["PD1+"]),
            "cd8pd1_pct_of_cd8": (pe, parents["CD8+PD1+"], neg, parents["CD8+PD1+"]),
            "cd8pd1_pct_of_cd3": (pe, parents["CD8+PD1+"], neg, cd3),
            "cd4pd1_pct_of_cd4": (pe, parents["CD4+PD1+"], neg, parents["CD4+PD1+"]),
            "cd4foxp3_pct_of_cd4": (pd1_values(treg), cd4_treg, ~treg.labels["foxp3"], cd4_treg)}


def reference_sampling_sd(surface: TubeEvents, treg: TubeEvents) -> dict[str, float]:
    """Per PD1/FoxP3 variable: the ideal-FMO reference's own sampling SD (points) on
    these stained tubes (:func:`percentile_cut_sd` of :func:`reference_parents`)."""
    return {v: percentile_cut_sd(*spec) for v, spec in reference_parents(surface, treg).items()}
