"""One reading, one verdict: a check that finds a shared reference reading wrong or unsure flags every gate carrying it.

A strategy's ``skew_reference`` gates read the marker's nonspecific signal once per tube on a marker-poor
population (``placement.reference_binding``; with ``reference_carry: quantile`` the reference's own percentile
move, ``placement.reference_quantile_cut``) and carry that reading over to each gate's own parent's FMO
events (``relative_reference``). The TIL surface tube has three such gates: PD1+ of the live lymphocytes,
CD4+PD1+ of CD4+ and CD8+PD1+ of CD8+, one PD1 FMO, one reading on ``non_T``. A gate *carries* the
reading when its cut is that carry-over (``winner`` ``fmo_relative``, ``relative_carry`` ``reference``);
gates carrying readings of one key (:func:`reading_key`: the marker, the control file, the reference
population, ``reference_carry`` and ``max_shift``; with ``quantile`` also the percentile) carry one reading.

Some self-checks (``tilpheno.gates.checks``) judge the reading, others the gate's own parent; the checks that
judge the reading and fired on a gate are its ``reading_verdict`` diagnostic (a tuple in ``READING_CHECKS`` order:
``reference_above_points`` of either carry and ``reference_positive_points`` find the reading wrong, the
additive carry's tail-shape check ``tail_points`` finds that it leaves the binding tail's shape open, and the
reading's sampling interval ``candidate_points`` (either carry, where ``reference_error`` could be measured; since stop
54) finds it unsure: the interval is the reference's noise, the same for every gate carrying the reading, which each
gate's bootstrap resamples estimate (V171804: PD1+'s read +/- 0.075 and flagged, CD8+PD1+'s +/- 0.024 and, 3.2
points over the ideal-FMO reference, not flagged before; ``tests/test_shared_reading.py``); under either
carry both of its checks (``reference_above_points`` and ``tail_points``; ``reference_above_points`` and
``reference_positive_points``) can fire on one gate, and its flag names both).
Every other gate carrying that reading then gets one ``uncertain_threshold`` (warning; :func:`shared_reading_flags`)
naming each gate where a check fired, every check that fired there, what it found, its size there (points of that
gate's parent) and the same number on its own parent (the check's number recorded on it, measured on every gate
carrying the reading whatever else flagged it; "not measured" when it could not be: ``reference_positive_points``
with fewer than 20 of the parent's events above the cut). That own number may stay under the limit. The threshold record's
``reading_verdict`` column (:func:`reading_verdicts`) names, on every gate carrying the reading, each gate where a
check fired, its checks and their sizes, its own included. Neither quotes a size on a gate whose parent rests on
an undetermined gate (its counts are not reported, ``tilpheno.phenotype.resting_on``): 'over its limit' where its
check fired, 'not quoted' for its own number. A parent with many positives next to its
negatives (CD8+ T cells for PD1) raises its own carry-over, which ``reference_above_points`` compares against,
and hides the same wrong reading (V153826 with the binding read on a reference that binds more than the
parents: CD8+PD1+ 22 points under, its own comparison 0 points; ``tests/test_shared_reading.py``). The read
fixes no tail shape for any gate it carries, and a gate's own ``tail_points`` are a lower bound of the shape's
effect (the log-normal cut is taken at the carry-over's 32 quantiles): V153138 under heavy PD1 binding, PD1+
5.4 points over the ideal-FMO reference with 2.5 tail points while CD8+PD1+ of the same read had 3.3
(``tests/test_fmo_gates_simulated.py``; benchmarks/README.md, stop 48). A gate whose own check fired keeps its
own flag, and gets one from this pass only when another gate carrying the reading found what its own checks did
not (a check that did not fire on it; its own checks then said "too (this gate's own flag)"): two gates whose
tail-shape checks both fired (V155994 under heavy PD1 binding, PD1+ 3.1 and CD8+PD1+ 4.3 points) are not told
each other's finding twice; the record names both.
"""
from __future__ import annotations

import math
from typing import Any, Hashable, Mapping, NamedTuple, Sequence

from tilpheno.gates import placement as pl


class ReadingCheck(NamedTuple):
    """What a check that judges the shared reading says when it fires (``READING_CHECKS``)."""
    found: str   # what it found the reading: "... that PD1+'s check (...) found <found>"
    says: str    # what its number above ``uncertain_points`` says
    own: str     # what the same number on another gate carrying the reading is worth


_HIDDEN = "which a parent with positives next to its negatives can hide"
READING_CHECKS = {
    "reference_above_points": ReadingCheck(
        "wrong", "the cut lies above that parent's own carry-over of the FMO percentile: the reference reads more "
                 "binding (or marker+ cells) than the parent shows (under-call)", _HIDDEN),
    "reference_positive_points": ReadingCheck("wrong", "the reference's own marker+ cells move the cut", _HIDDEN),
    "tail_points": ReadingCheck(
        "unable to fix the shape of the binding's tail",
        "a log-normal signal of the read median and SD would move that gate's % by so many points: the read does not "
        "fix the tail's shape for any gate it carries",
        "a lower bound (the log-normal cut is taken at the carry-over's 32 quantiles)"),
    "candidate_points": ReadingCheck(
        "unsure within its sampling interval",
        "the reading's 95 % sampling interval (the binding re-read on bootstrap resamples of the reference's events "
        "and that parent's FMO events, reference_error) could move that gate's % by so many points: the interval is "
        "the reference's noise, the same for every gate carrying the reading",
        "this gate's own estimate of the same interval (each gate's bootstrap resamples estimate it)"),
}
"""The ``tilpheno.gates.checks`` numbers that judge the shared reading (diagnostic key -> what it says); every
other check judges the gate's own parent or FMO parent."""


def reading_key(marker: str, control_file: str, params: Mapping[str, Any], percentile: float) -> Hashable | None:
    """What identifies the reading an ``fmo`` gate's reference carry-over rests on (module docstring): None
    without a ``skew_reference`` or a control file (a fallback gate reads no control)."""
    reference = params.get("skew_reference")
    if not reference or not control_file:
        return None
    carry = params.get("reference_carry", "additive")
    return (marker, control_file, reference, carry, float(params.get("max_shift", pl.MAX_SHIFT)),
            float(params.get("percentile", percentile)) if carry == "quantile" else None)


def carries_reading(diagnostics: Mapping[str, Any]) -> bool:
    """The gate's cut is its reference carry-over (not a stained valley, the FMO percentile or a fit)."""
    return diagnostics.get("winner") == "fmo_relative" and diagnostics.get("relative_carry") == "reference"


def _judged(gates: Sequence[tuple[str, str, Hashable | None, Mapping[str, Any]]]
            ) -> list[tuple[str, Hashable, Mapping[str, Any], tuple[str, ...]]]:
    """(population, its :func:`reading_key`, its diagnostics, the checks that fired on its reading, in
    ``READING_CHECKS`` order) of each gate of ``gates`` carrying a reading on which a check fired, in their order."""
    out = []
    for name, _, key, d in gates:
        fired = tuple(c for c in READING_CHECKS if c in d.get("reading_verdict", ()))
        if key is not None and carries_reading(d) and fired:
            out.append((name, key, d, fired))
    return out


def _size(check: str, d: Mapping[str, Any], held: tuple[str, ...], unit: str = "") -> str:
    """A fired ``check``'s size on a gate (diagnostics ``d``) as a message or the record quotes it: its number
    (``unit`` after it), or, when that gate's parent rests on the undetermined gates ``held`` (counts no output
    reports, ``tilpheno.phenotype.resting_on``), 'over its limit'."""
    return f"{check} over its limit" if held else f"{check} {float(d[check]):.1f}{unit}"


def reading_verdicts(gates: Sequence[tuple[str, str, Hashable | None, Mapping[str, Any]]],
                     held: Mapping[str, tuple[str, ...]] | None = None) -> dict[str, str]:
    """The threshold record's ``reading_verdict`` (``tilpheno.gates.checks.RECORD_COLUMNS``) of each gate of
    ``gates`` (as :func:`shared_reading_flags`) carrying a reading on which a check fired, on it or on another
    gate carrying it: every such gate with each check that fired there and its size (points of that gate's
    parent), ``"PD1+: reference_above_points 7.6, tail_points 3.4; CD4+PD1+: tail_points 3.1"``, in the order
    of ``gates`` and ``READING_CHECKS``; gates without one are left out. ``held``: as :func:`shared_reading_flags`'s
    (such a gate's size reads 'over its limit')."""
    held = held or {}
    judged = _judged(gates)
    out = {}
    for name, _, key, d in gates:
        found = [(where, other, fired) for where, k, other, fired in judged if k == key]
        if key is not None and carries_reading(d) and found:
            out[name] = "; ".join(f"{where}: " + ", ".join(_size(c, other, held.get(where, ())) for c in fired)
                                  for where, other, fired in found)
    return out


def shared_reading_flags(gates: Sequence[tuple[str, str, Hashable | None, Mapping[str, Any]]],
                         held: Mapping[str, tuple[str, ...]] | None = None) -> list[pl.Flag]:
    """The ``uncertain_threshold`` warnings of the module docstring. ``gates``: (population, marker, its
    :func:`reading_key`, its placement's diagnostics) of the placed ``fmo`` gates; one flag for each gate carrying a
    reading on which a check fired on another gate carrying it, and that check not on this one (naming each such gate,
    every check that fired there with its size and what it found, ``READING_CHECKS``, and the same numbers on the
    gate's own parent), in the order of ``gates``. ``held``: population -> the undetermined gates its checks' parents
    rest on (``tilpheno.gates.checks.place_and_check``'s ``held``; none when absent), whose counts no output reports:
    a size on such a gate is not quoted ('over its limit' where its check fired)."""
    held = held or {}
    judged = _judged(gates)
    out = []
    for name, marker, key, d in gates:
        sources = [(where, other, fired) for where, k, other, fired in judged if k == key and where != name]
        if key is None or not carries_reading(d) or not sources:
            continue
        found = [(where, other, c) for where, other, fired in sources for c in fired]
        checks = list(dict.fromkeys(c for _, _, c in found))
        mine = next((fired for where, k, _, fired in judged if where == name and k == key), ())
        if set(checks) <= set(mine):   # its own flag already says what the others found
            continue
        findings = list(dict.fromkeys(READING_CHECKS[c].found for c in checks))
        where = ", and that ".join(" and ".join(
            f"{w}'s check ({_size(c, other, held.get(w, ()), ' points of its parent')})"
            for w, other, c in found if READING_CHECKS[c].found == finding) + f" found {finding}"
            for finding in findings)
        own = [(check, float(d.get(check, float("nan"))), check in mine) for check in checks]
        mine_held = held.get(name, ())
        here = "; ".join(f"here {check} is over its limit too (this gate's own flag)" if fired and mine_held
                         else f"here {check} is {value:.1f} points of the parent too (this gate's own flag)" if fired
                         else f"here {check} is not quoted, the parent resting on {', '.join(mine_held)} (undetermined)"
                         if mine_held and math.isfinite(value)
                         else f"here {check} is {value:.1f} points of the parent, {READING_CHECKS[check].own}"
                         if math.isfinite(value)
                         else f"here {check} was not measured on this parent"
                         for check, value, fired in own)
        out.append(pl.Flag(
            "uncertain_threshold", "warning",
            f"{name} ({marker}): the threshold {float(d['threshold']):.3f} carries the reference reading that "
            f"{where}, above the limit ({'; '.join(f'{c}: {READING_CHECKS[c].says}' for c in checks)}); "
            f"{here}; one reading, one verdict: look at "
            f"the {marker} histogram of the parent and of the reference population, stained vs FMO", name))
    return out
