"""Which gates a phenotype column rests on: its gating path.

A study variable (``100 x numerator / denominator``) rests on the gates of its numerator and
denominator and everything they are gated from (``Strategy.variable_gates``); a population's
event count on that population's gates (``Strategy.population_gates``); an event count of a file
(``n_events_<tube>``) and the infused cell number on no gate; a dose (``Study.doses``) on its
base's and its variable's. The release decision (``tilpheno.pipeline.release``) holds a criterion
on these gates; pure functions of the strategies and doses (duck-typed), importing nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

GateKey = tuple[str, str]
"""(tube kind, population): a gate of a tube kind's strategy."""

NO_GATE_COLUMNS = frozenset({"til_dose_cells", "dose"})
"""Columns from the manifest or the outcomes table (the infused cell number): no gate's."""


@dataclass(frozen=True)
class ColumnSource:
    """Where a phenotype column's value comes from: the gates it depends on, as (tube kind,
    population) pairs, and the tube kinds whose files give it (an event count of a file depends on
    no gate but on its kind's file; the infused cell number on neither)."""

    gates: frozenset[GateKey]
    tubes: frozenset[str]


def column_source(column: str, strategies: Sequence, doses: Sequence = ()) -> ColumnSource | None:
    """The :class:`ColumnSource` of phenotype column ``column``: a strategy's variable
    (``Strategy.variable_gates``) or event count (``Strategy.population_gates``; ``n_events_<tube>``
    none), a dose (``Study.doses``) its base's and variable's. None when no strategy or dose
    defines the column: it may depend on any gate."""
    if column in NO_GATE_COLUMNS:
        return ColumnSource(frozenset(), frozenset())
    for strategy in strategies:
        tube = frozenset({strategy.tube})
        if any(v.name == column for v in strategy.variables):
            return ColumnSource(frozenset((strategy.tube, p) for p in strategy.variable_gates(column)), tube)
        counted = strategy.count_columns().get(column)
        if counted is not None:
            return ColumnSource(frozenset((strategy.tube, p) for p in strategy.population_gates(counted)), tube)
    dose = next((d for d in doses if d.name == column), None)
    if dose is None:
        return None
    base, variable = column_source(dose.base, strategies, doses), column_source(dose.variable, strategies, doses)
    if base is None or variable is None:
        return None
    return ColumnSource(base.gates | variable.gates, base.tubes | variable.tubes)


def column_gates(column: str, strategies: Sequence, doses: Sequence = ()) -> frozenset[GateKey] | None:
    """The gates phenotype column ``column`` depends on (:func:`column_source`); None when no
    strategy or dose defines the column."""
    source = column_source(column, strategies, doses)
    return None if source is None else source.gates


def column_resting_on(column: str, gates: frozenset[GateKey], strategies: Sequence, doses: Sequence = ()) -> tuple[str, ...]:
    """The populations of ``gates`` (the undetermined ones: one population, no FMO or unstained
    control) that phenotype column ``column`` rests on (:func:`column_gates`), in gating order (the
    strategies' order, then each one's populations), each named once; empty when none, or when no
    strategy or dose defines ``column``."""
    needs = column_gates(column, strategies, doses) if gates else None
    if not needs or not needs & gates:
        return ()
    order = {(s.tube, p.name): i for i, (s, p) in enumerate((s, p) for s in strategies for p in s.populations)}
    return tuple(dict.fromkeys(p for _, p in sorted(needs & gates, key=order.__getitem__)))
