"""Co-expression plausibility: two gates of one parent on markers one cell rarely carries together.

A strategy declares the pair (``checks: [{kind: co_expression, populations: [CD4+, CD8+], limit:
10}]``, ``tilpheno.gates.strategy.CoExpressionCheck``). Convention: the double positives' share is
the events in both populations over the parent's events, in %. Above the limit both gates get a
``co_expression`` review warning: CD4+ and CD8+ each ~95 % of CD3+ (a one-population gate held as
positive, a cut inside the negatives) cannot both be right, and nothing else says so. A share resting on an
undetermined gate (one population, no FMO or unstained control; counts no output reports) is not quoted: the
warning says 'more than' the limit and names those gates.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from tilpheno.gates import placement as pl

CODE = "co_expression"


def co_expression_flags(first: str, second: str, parent: str, masks: Mapping[str, np.ndarray], limit: float,
                        dims: tuple[str, str], held: tuple[str, ...] = ()) -> list[pl.Flag]:
    """The ``co_expression`` warnings on ``first`` and ``second`` (gates of ``parent`` on markers
    ``dims``; ``masks``: population -> events, each ANDed with its parent) when their double positives
    are more than ``limit`` % of ``parent`` (module docstring); none otherwise or for an empty parent.
    ``held``: the undetermined gates the two populations rest on (``tilpheno.phenotype.resting_on``), whose
    counts no output reports: then the warning quotes no share ('more than' the limit) and names them."""
    n_parent = int(np.count_nonzero(masks[parent]))
    if not n_parent:
        return []
    a, b = masks[first], masks[second]
    n_a, n_b, n_both = int(np.count_nonzero(a)), int(np.count_nonzero(b)), int(np.count_nonzero(a & b))
    share = 100.0 * n_both / n_parent
    if share <= limit:
        return []

    def pct(n: int) -> str:
        return f"{100.0 * n / n_parent:.1f} %"

    shares = (f"more than the {limit:g} % of {parent} the strategy allows are both {first} and {second} (double "
              f"positives; checks: co_expression; the shares rest on {', '.join(held)}, undetermined, not quoted)"
              if held else
              f"{share:.1f} % of {parent} are both {first} and {second} (double positives; {first} only "
              f"{pct(n_a - n_both)}, {second} only {pct(n_b - n_both)}, {first} {pct(n_a)}, {second} {pct(n_b)} "
              f"of {parent}), above the {limit:g} % the strategy allows (checks: co_expression)")
    message = (f"{shares}: one cell rarely "
               f"carries {dims[0]} and {dims[1]}, so at least one of the two gates holds the other's negatives (a "
               "one population held as positive, a cut inside the negatives); look at both on one plot")
    return [pl.Flag(CODE, "warning", f"{population} ({dim}): {message}", population)
            for population, dim in ((first, dims[0]), (second, dims[1]))]
