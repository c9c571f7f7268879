"""Helpers of the tests of fmo gates on a toy tube kind (CD3 and PD1, linear scales): the strategy, a tube of
given events and the engine run on a stained tube and its PD1 FMO (``tests/test_undetermined.py``,
``tests/test_report_plots.py``); the FoxP3 tubes of the quantile-carry tests, linear units
(``tests/test_fmo_gates_simulated.py``, ``tests/test_undetermined.py``)."""
from __future__ import annotations

from typing import Callable

import numpy as np

HELD_FMO_STRATEGY = """\
strategy: toy
tube: surface
markers: [CD3, PD1]
transforms: {CD3: {kind: linear}, PD1: {kind: linear}}
populations:
  - {name: CD3+, parent: root, dims: [CD3], method: valley, params: {keep: high}}
  - {name: PD1+, parent: CD3+, dims: [PD1], method: fmo, params: {max_shift: 0.3}}
variables:
  pd1_pct_of_cd3: {numerator: PD1+, denominator: CD3+}
"""


def toy_tube(role: str, fmo_marker: str | None, cd3: np.ndarray, pd1: np.ndarray):
    """A tube of HELD_FMO_STRATEGY's kind holding the given CD3 and PD1 events (transformed units, linear scales):
    the stained file (``role`` "stain", ``fmo_marker`` None) or an FMO (``role`` "fmo", the marker left out)."""
    from tilpheno.phenotype import TubeData
    from tilpheno.transforms import Linear

    data = {"CD3": cd3, "PD1": pd1}
    return TubeData(f"{role}.fcs", "0" * 64, "surface", role, fmo_marker, data, {"CD3": "FITC-A", "PD1": "PE-A"},
                    {k: Linear() for k in data}, True)


def fmo_toy(stained_pd1: Callable[[np.random.Generator, int], np.ndarray]):
    """HELD_FMO_STRATEGY gated on a stained tube and its PD1 FMO (5000 events each), CD3 two populations in both
    (CD3+ determined), the FMO's PD1 normal(0.2, 0.03), the stained tube's from ``stained_pd1(rng, n)``: (the
    engine's state of the stained file, its CD3+ events' PD1, the FMO's, the one threshold record)."""
    from tilpheno.gates.strategy import parse_strategy
    from tilpheno.phenotype import gate_tube_kind

    rng = np.random.default_rng(8)
    n = 5000

    def cd3() -> np.ndarray:
        return np.where(rng.random(n) < 0.7, rng.normal(1.0, 0.05, n), rng.normal(0.0, 0.05, n))

    stained = toy_tube("stain", None, cd3(), stained_pd1(rng, n))
    fmo = toy_tube("fmo", "PD1", cd3(), rng.normal(0.2, 0.03, n))
    state, control = gate_tube_kind(parse_strategy(HELD_FMO_STRATEGY, "toy.yaml"), [stained, fmo])
    [threshold] = state.thresholds
    return state, stained.data["PD1"][state.masks["CD3+"]], fmo.data["PD1"][control.masks["CD3+"]], threshold


def treg_populations(rng, binding=(150.0, 0.7), treg_median=900.0):
    """A simulator of FoxP3 tubes for the quantile-carry tests: ``population(n, share)`` draws n cells,
    ``share`` of them FoxP3+ (log-normal, median ``treg_median`` linear units, log-SD 0.45), every cell
    with the same background (autofluorescence SD 60 plus spillover spread SD 100) and the same heavy
    right-skewed binding in the stained tube (log-normal, ``binding`` = (median, log-SD)); returns (FMO
    events, stained events, the stained negatives)."""
    added = lambda n: binding[0] * np.exp(binding[1] * rng.standard_normal(n))   # noqa: E731
    background = lambda n: rng.normal(0.0, 60.0, n) + rng.normal(0.0, 100.0, n)   # noqa: E731

    def population(n, share):
        k = int(n * share)
        stained = np.concatenate([background(n - k) + added(n - k),
                                  rng.lognormal(np.log(treg_median), 0.45, k) + background(k) + added(k)])
        return background(n), stained, stained[: n - k]

    return population


def treg_parent(seed):
    """The CD4+ parent of the quantile-carry self-check tests, drawn first from ``treg_populations``
    (8000 cells, 10 % FoxP3+): (the logicle, ``population`` for the references drawn next, the parent's
    FMO events, its stained events transformed, ``points(cut)`` = percentage points of the parent
    above ``cut`` minus above the ideal cut, the 99.5th percentile of its stained negatives)."""
    from tilpheno.transforms import Logicle

    tr = Logicle()
    population = treg_populations(np.random.default_rng(seed))
    fmo, stained, neg = population(8000, 0.10)
    ideal = tr.apply(np.array([np.percentile(neg, 99.5)]))[0]
    s = tr.apply(stained)
    return tr, population, fmo, s, lambda cut: 100.0 * (np.mean(s > cut) - np.mean(s > ideal))
