"""The release decision of one product: the release spec's criteria, each held while a gate it
depends on needs review.

A criterion is *determined* when no gate its column depends on carries a review flag
(``qc.needs_review``): an event count of a file (``n_events_<tube>``) or the infused cell number
depends on no gate; a study variable (``100 x numerator / denominator``) on the gates of its
numerator and denominator and everything they are gated from (``Strategy.variable_gates``); a
population's count on that population's gates (``Strategy.population_gates``); a dose on its
base and its variable (``tilpheno.gating_path``). A review flag on no gate (``duplicate_tube``,
``duplicate_control``), and a column no strategy or dose defines, hold every criterion.

A criterion is *not applicable* when its column belongs to a tube kind the study declares optional
and the product has no file of (its row's :data:`ABSENT_COLUMN`): the kind's variables, its
``n_events_<kind>`` and ``n_<population>_<kind>`` counts, and the doses built on them. A blank
value for any other reason (a required kind's column, a column no strategy defines) stays ``not
evaluable``. The product's release is decided on the applicable criteria:

* ``pass``: every applicable criterion passed and no flag needs review;
* ``fail``: a determined criterion failed (reviewing the gates cannot change it), whatever the
  criteria held for review would give;
* ``not evaluable``: otherwise (a criterion held for review, a value missing, or no criterion applicable).

A variable resting on an *undetermined* gate (one population and no FMO or unstained control of
its marker: ``tilpheno.phenotype.undetermined_flags``) has no value: its criterion is ``not
evaluable (undetermined: <gates>, no FMO or unstained control)`` and so is the release
(:func:`not_evaluable_reason`), signed or not, until a control, the strategy's ``one_population`` or
a reviewer's cut on that gate (``tilpheno.review.regate.recompute``) decides the side.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

from tilpheno.gating_path import GateKey, column_gates, column_resting_on, column_source
from tilpheno.qc import NEEDS_REVIEW, UNDETERMINED_CODE, QCFlag, needs_review, review_status
from tilpheno.release import (FAIL, NOT_APPLICABLE, NOT_EVALUABLE, CriterionResult, ReleaseSpec, evaluate,
                              overall)

ABSENT_COLUMN = "absent_tubes"
"""The phenotype column, in a study with optional tube kinds, naming those the product has no file
of (``; ``-separated, empty when none; ``tilpheno.pipeline.product.absent_tubes``)."""


def absent_in(row: Mapping) -> tuple[str, ...]:
    """The optional tube kinds a phenotype row's :data:`ABSENT_COLUMN` names (none when blank or missing)."""
    value = row.get(ABSENT_COLUMN)
    return tuple(k for k in (p.strip() for p in value.split(";")) if k) if isinstance(value, str) else ()


def not_applicable(results: Sequence[CriterionResult], absent: Sequence[str], strategies: Sequence,
                   doses: Sequence = ()) -> list[CriterionResult]:
    """``results`` with each criterion whose value is missing because its column belongs to a tube
    kind of ``absent`` (optional in the study, no file of it in the product: :func:`absent_in`)
    made ``not applicable``, naming those kinds (``absent``); every other one as it was."""
    out = []
    for r in results:
        source = column_source(r.criterion.column, strategies, doses) if absent and r.outcome == NOT_EVALUABLE else None
        lacking = tuple(k for k in absent if source is not None and k in source.tubes)
        out.append(replace(r, outcome=NOT_APPLICABLE, absent=lacking) if lacking else r)
    return out


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
        if r.outcome == NOT_APPLICABLE:   # its gates are of a tube the product has no file of
            out.append(r)
            continue
        needs = column_gates(r.criterion.column, strategies, doses)
        holding = [f"{f.code} ({f.gate})" if f.gate else f.code for f, gates in on
                   if gates is None or needs is None or gates & needs]
        out.append(replace(r, held_by=tuple(dict.fromkeys(holding))))
    return out


def undetermined_criteria(results: Sequence[CriterionResult], undetermined: frozenset[GateKey], strategies: Sequence,
                          doses: Sequence = ()) -> list[CriterionResult]:
    """``results`` with ``undetermined`` set on each ``not evaluable`` criterion whose column rests on
    a gate of ``undetermined`` (one population, no FMO or unstained control: the value was left blank,
    ``tilpheno.phenotype.undetermined_flags``), naming those gates' populations in gating order
    (``tilpheno.gating_path.column_resting_on``)."""
    out = []
    for r in results:
        on = column_resting_on(r.criterion.column, undetermined, strategies, doses) if r.outcome == NOT_EVALUABLE else ()
        out.append(replace(r, undetermined=on) if on else r)
    return out


def flagged_undetermined(flags: Sequence[QCFlag], strategies: Sequence,
                         tube_of: Mapping[str, str] | None = None) -> frozenset[GateKey]:
    """The undetermined gates the ``undetermined`` flags name (:func:`flag_gates`)."""
    gates: set[GateKey] = set()
    for f in flags:
        on = flag_gates(f, strategies, tube_of or {}) if f.code == UNDETERMINED_CODE else None
        gates |= on or set()
    return frozenset(gates)


def held_overall(results: Sequence[CriterionResult], flags: Sequence[QCFlag]) -> str:
    """The release status under the module's rule: ``tilpheno.release.overall`` (on the applicable
    criteria) when no flag needs review; else ``fail`` when a criterion no flag holds (``held_by``
    empty) failed, else ``not evaluable``."""
    if review_status(flags) != NEEDS_REVIEW:
        return overall(list(results))
    return FAIL if any(r.outcome == FAIL and not r.held_by for r in results) else NOT_EVALUABLE


AWAITING_REVIEW, VALUE_MISSING, NONE_APPLICABLE, FAILED_PROCESSING, UNDETERMINED = (
    "awaiting review", "value missing", "no criterion applicable", "failed processing",
    "undetermined gate, no FMO or unstained control")


def not_evaluable_reason(results: Sequence[CriterionResult], *, usable: bool = True) -> str:
    """Why a release that is ``not evaluable`` is so, in short (the run's summary line, the
    certificate's release decision): ``failed processing`` (a product not usable), ``no criterion
    applicable``, ``undetermined gate, no FMO or unstained control`` (a criterion whose value was
    left blank because it rests on an undetermined gate, ``CriterionResult.undetermined``: a control,
    the strategy's ``one_population`` or a reviewer's cut on that gate gives it one), ``value
    missing`` (a criterion without a value that no review flag holds: no review gives it one), else
    ``awaiting review`` (a criterion held by a review flag, or every one passed and a flag on another
    gate needs review: the report's ``review_hold``)."""
    applicable = [r for r in results if r.outcome != NOT_APPLICABLE]
    if not usable:
        return FAILED_PROCESSING
    if not applicable:
        return NONE_APPLICABLE
    if any(r.undetermined for r in applicable):
        return UNDETERMINED
    if any(r.outcome == NOT_EVALUABLE and not r.held_by for r in applicable):
        return VALUE_MISSING
    return AWAITING_REVIEW


def release_decision(spec: ReleaseSpec, phenotype: Mapping, flags: Sequence[QCFlag], *, usable: bool,
                     strategies: Sequence = (), doses: Sequence = (),
                     tube_of: Mapping[str, str] | None = None) -> tuple[list[CriterionResult], str]:
    """``(criterion results, release status)`` of a product (module docstring for the rule).

    A product that is not usable (failed, or not gated) is not evaluated: ``([], not evaluable)``.
    ``strategies``: the product's strategies (without them, a review flag holds every criterion and
    none is not applicable); ``doses``: the study's; ``tube_of``: the product's files, as flags name
    them, to their tube kind. The optional tube kinds the product lacks: ``phenotype``'s :data:`ABSENT_COLUMN`.
    """
    if not usable:
        return [], NOT_EVALUABLE
    results = not_applicable(evaluate(spec, phenotype), absent_in(phenotype), strategies, doses)
    results = undetermined_criteria(results, flagged_undetermined(flags, strategies, tube_of), strategies, doses)
    release = held_criteria(results, flags, strategies, doses, tube_of)
    return release, held_overall(release, flags)
