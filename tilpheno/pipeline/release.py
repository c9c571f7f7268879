"""The release decision of one product: the release spec's criteria, each held while a gate it
depends on needs review.

A criterion is *determined* when no gate its column depends on carries a review flag
(``qc.needs_review``): an event count of a file (``n_events_<tube>``) or the infused cell number
depends on no gate; a study variable (``100 x numerator / denominator``) on the gates of its
numerator and denominator and everything they are gated from (``Strategy.variable_gates``); a
population's count on that population's gates (``Strategy.population_gates``); a dose on its
base and its variable. A review flag on no gate (``duplicate_tube``, ``duplicate_control``), and
a column no strategy or dose defines, hold every criterion. The product's release is:

* ``pass``: every criterion passed and no flag needs review;
* ``fail``: a determined criterion failed (reviewing the gates cannot change it), whatever the
  criteria held for review would give;
* ``not evaluable``: otherwise (a criterion held for review, or a value missing).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

from tilpheno.qc import NEEDS_REVIEW, QCFlag, needs_review, review_status
from tilpheno.release import FAIL, NOT_EVALUABLE, CriterionResult, ReleaseSpec, evaluate, overall

GateKey = tuple[str, str]
"""(tube kind, population): a gate of a tube kind's strategy."""

NO_GATE_COLUMNS = frozenset({"til_dose_cells", "dose"})
"""Columns from the manifest or the outcomes table (the infused cell number): no gate's."""


def column_gates(column: str, strategies: Sequence, doses: Sequence = ()) -> frozenset[GateKey] | None:
    """The gates phenotype column ``column`` depends on, as (tube kind, population) pairs; an
    event count of a whole file (``n_events_<tube>``) or the infused cell number: none. None when
    no strategy or dose (``Study.doses``) defines the column: it may depend on any gate."""
    if column in NO_GATE_COLUMNS:
        return frozenset()
    for strategy in strategies:
        if any(v.name == column for v in strategy.variables):
            return frozenset((strategy.tube, p) for p in strategy.variable_gates(column))
        counted = strategy.count_columns().get(column)
        if counted is not None:
            return frozenset((strategy.tube, p) for p in strategy.population_gates(counted))
    dose = next((d for d in doses if d.name == column), None)
    if dose is None:
        return None
    base, variable = column_gates(dose.base, strategies, doses), column_gates(dose.variable, strategies, doses)
    return None if base is None or variable is None else base | variable


def flag_gates(flag: QCFlag, strategies: Sequence, tube_of: Mapping[str, str]) -> frozenset[GateKey] | None:
    """The gates a review flag is on: its ``gate`` in the tube kind of its file (``gate_file``,
    else ``file``; ``tube_of``: file as flags name it -> tube kind), in every tube kind when the
    file's is not known. None for a flag on no gate (it may concern any gate)."""
    if not flag.gate:
        return None
    file = flag.gate_file or flag.file
    tubes = [tube_of[file]] if file in tube_of else [s.tube for s in strategies]
    return frozenset((tube, flag.gate) for tube in tubes)


def held_criteria(results: Sequence[CriterionResult], flags: Sequence[QCFlag], strategies: Sequence,
                  doses: Sequence = (), tube_of: Mapping[str, str] | None = None) -> list[CriterionResult]:
    """``results`` with ``held_by`` set on each criterion a review flag holds: the flags on the
    gates its column depends on (:func:`column_gates`, :func:`flag_gates`), as ``"<code> (<gate>)"``,
    or ``"<code>"`` for a flag on no gate (which holds every criterion)."""
    review = [f for f in flags if needs_review(f)]
    on = [(f, flag_gates(f, strategies, tube_of or {})) for f in review]
    out = []
    for r in results:
        needs = column_gates(r.criterion.column, strategies, doses)
        holding = [f"{f.code} ({f.gate})" if f.gate else f.code for f, gates in on
                   if gates is None or needs is None or gates & needs]
        out.append(replace(r, held_by=tuple(dict.fromkeys(holding))))
    return out


def held_overall(results: Sequence[CriterionResult], flags: Sequence[QCFlag]) -> str:
    """The release status under the module's rule: ``tilpheno.release.overall`` when no flag needs
    review; else ``fail`` when a criterion no flag holds (``held_by`` empty) failed, else ``not evaluable``."""
    if review_status(flags) != NEEDS_REVIEW:
        return overall(list(results))
    return FAIL if any(r.outcome == FAIL and not r.held_by for r in results) else NOT_EVALUABLE


def release_decision(spec: ReleaseSpec, phenotype: Mapping, flags: Sequence[QCFlag], *, usable: bool,
                     strategies: Sequence = (), doses: Sequence = (),
                     tube_of: Mapping[str, str] | None = None) -> tuple[list[CriterionResult], str]:
    """``(criterion results, release status)`` of a product (module docstring for the rule).

    A product that is not usable (failed, or not gated) is not evaluated: ``([], not evaluable)``.
    ``strategies``: the product's strategies (without them, a review flag holds every criterion);
    ``doses``: the study's; ``tube_of``: the product's files, as flags name them, to their tube kind.
    """
    if not usable:
        return [], NOT_EVALUABLE
    release = held_criteria(evaluate(spec, phenotype), flags, strategies, doses, tube_of)
    return release, held_overall(release, flags)
