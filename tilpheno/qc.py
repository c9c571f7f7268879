"""QC flags: one record per finding, raised by gating (``tilpheno.phenotype``) or by the pipeline."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class QCFlag:
    """A QC finding: ``severity`` info | warning | error; ``file`` is the file name ('' = product);
    ``gate`` the population whose gate the finding is about ('' = a file- or product-level finding):
    the field by which reports and the review app put a flag beside its gate (:func:`flags_naming_gate`);
    ``gate_file`` the file whose gate that is when the flag is raised on another file ('' = ``file``):
    ``unstained_positive``, raised on the unstained control, names the stained file whose gate let
    the control's events through. ``headline``: the finding as a product's failure names it, on one
    line ('' = ``message``): a panel error's problem without the file's channels
    (:func:`tilpheno.panel.panel_error_headline`); qc.csv holds ``message``."""

    product_id: str
    file: str
    code: str
    severity: str
    message: str
    gate: str = ""
    gate_file: str = ""
    headline: str = field(default="", compare=False)


REVIEW_CODES = frozenset({
    "cut_in_dense_region", "fmo_excess_positive", "negative_shift", "cut_at_scale_edge",
    "out_of_expected_range", "tube_disagreement", "no_second_peak", "fallback_gate", "missing_fmo",
    "missing_control", "gate_failed", "few_events", "uncertain_threshold", "dim_subset_events", "unstained_positive",
    "duplicate_tube", "duplicate_control", "control_settings_differ", "control_instrument_differs", "co_expression",
})
"""QC codes of a gate that may be wrong (raised by ``tilpheno.gates.checks`` and the gating engine),
or of variables that may come from the wrong file (``duplicate_tube``: two stained files of one
tube kind in a product; ``duplicate_control``: two FMO files of one marker), or of a control
acquired with other settings than its stained tube (``control_settings_differ``,
``control_instrument_differs``: ``tilpheno.control_settings``): after one of them at severity warning or error a product "needs review"
and its release is "not evaluable" until a reviewer signs it, unless a criterion whose value rests
on no flagged gate fails (``tilpheno.pipeline.release``): then it is "fail"."""

FAILURE_CODES = frozenset({"product_failed", "internal_error"})
"""QC codes of a product that failed (bad input, or a bug): it has no gates to trust, so it "needs
review" as well, and this flag is the one that says why."""

NEEDS_REVIEW, NO_REVIEW_FLAGS = "needs review", "no gating flags"

UNDETERMINED_CODE = "undetermined"
"""QC code of an undetermined gate (one population, no FMO or unstained control of its marker) on
which variables rest: they are left blank (``tilpheno.phenotype.undetermined_flags``). Not a review
code: the gate's ``no_second_peak`` holds release; a criterion on such a variable is ``not
evaluable`` for that reason (``tilpheno.pipeline.release.undetermined_criteria``)."""


def needs_review(flag) -> bool:
    """True for a warning/error flag whose code is in :data:`REVIEW_CODES` (a gate that may be
    wrong) or :data:`FAILURE_CODES` (the product failed): the flags that hold release."""
    return flag.code in REVIEW_CODES | FAILURE_CODES and flag.severity in ("warning", "error")


def review_status(flags) -> str:
    """``"needs review"`` when any flag :func:`needs_review`, else ``"no gating flags"``."""
    return NEEDS_REVIEW if any(needs_review(f) for f in flags) else NO_REVIEW_FLAGS


def review_reasons(flags) -> list[str]:
    """What holds a product's release, in words: one line per code of the flags that
    :func:`needs_review`, in their order, naming the gates they are on (their ``gate`` field, as
    :func:`flags_naming_gate` reads it), ``"no_second_peak: CCR4+, PD1+"``; a code raised on no gate
    (``duplicate_tube``, ``product_failed``) is its code alone."""
    gates: dict[str, list[str]] = {}
    for flag in (f for f in flags if needs_review(f)):
        named = gates.setdefault(flag.code, [])
        if flag.gate and flag.gate not in named:
            named.append(flag.gate)
    return [f"{code}: {', '.join(named)}" if named else code for code, named in gates.items()]


def flags_naming_gate(flags, population: str, file: str) -> list:
    """The flags on ``population``'s gate in ``file``, whatever their severity: those whose ``gate``
    is ``population`` and whose ``gate_file`` is ``file`` (``unstained_positive``, raised on the
    unstained control), or, without a ``gate_file``, raised on that file or on the product (file '').
    Any objects with ``code``, ``severity``, ``file``, ``gate``, ``gate_file`` and ``message``."""
    return [f for f in flags if f.gate == population and (f.gate_file or f.file) in (file, "")]


def flags_on_gate(flags, population: str, file: str) -> list:
    """The flags on ``population``'s gate in ``file`` (:func:`flags_naming_gate`) that :func:`needs_review`."""
    return [f for f in flags_naming_gate(flags, population, file) if needs_review(f)]
