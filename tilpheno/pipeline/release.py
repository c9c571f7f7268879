"""The release decision of one product: the release spec's criteria, held back while a gate needs review."""
from __future__ import annotations

from typing import Mapping, Sequence

from tilpheno.qc import NEEDS_REVIEW, QCFlag, review_status
from tilpheno.release import NOT_EVALUABLE, CriterionResult, ReleaseSpec, evaluate, overall


def release_decision(spec: ReleaseSpec, phenotype: Mapping, flags: Sequence[QCFlag], *,
                     usable: bool) -> tuple[list[CriterionResult], str]:
    """``(criterion results, release status)`` of a product.

    A product that is not usable (failed, or not gated) is not evaluated: ``([], not evaluable)``.
    A gate that may be wrong (``qc.REVIEW_CODES`` among ``flags``) holds release (``not
    evaluable``) until a reviewer signs; the criteria are still evaluated and reported.
    """
    if not usable:
        return [], NOT_EVALUABLE
    release = evaluate(spec, phenotype)
    status = overall(release) if review_status(flags) != NEEDS_REVIEW else NOT_EVALUABLE
    return release, status
