"""Lot-release criteria for TIL infusion products: a small YAML spec and its evaluation.

A spec is a named list of criteria, each a comparison of one phenotype column (percent units,
as in ``phenotypes.csv``) against a limit::

    name: Example site spec v2
    criteria:
      - name: Viability
        column: viability_pct
        op: ">"          # one of > >= < <=
        limit: 70
        unit: "%"
      - name: CD3+ T cells
        column: cd3_pct_of_live_lymph
        op: ">"
        limit: 90
        unit: "% of live lymphocytes"

The default spec (the bundled TIL study's ``release.yaml``) follows published TIL lot-release practice: viability > 70 % (7AAD− of singlet
cells) and CD3+ > 90 % of live lymphocytes. A criterion whose value is missing or not a number is
"not evaluable"; the product then does not pass (release is never granted on missing data). A
criterion on a column of a tube kind the study declares optional and the product has no file of is
"not applicable" instead (``tilpheno.pipeline.release``): the product is judged on the others, and
with no applicable criterion its release is "not evaluable".
While a gate needs review, a criterion whose value depends on that gate is held: the product
fails only on a criterion no review can change (``tilpheno.pipeline.release``).
"""
from __future__ import annotations

import hashlib
import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from tilpheno.errors import TableError

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}

PASS, FAIL, NOT_EVALUABLE = "pass", "fail", "not evaluable"
NOT_APPLICABLE = "not applicable"


@dataclass(frozen=True)
class Criterion:
    """One release criterion: ``value <op> limit`` on phenotype column ``column``."""

    name: str
    column: str
    op: str
    limit: float
    unit: str = "%"

    @property
    def is_count(self) -> bool:
        """Whether the column is an event count (``n_events_<tube>``, ``n_<population>_<tube>``): whole events."""
        return self.column.startswith("n_")

    def describe(self) -> str:
        """Human form, e.g. ``viability_pct > 70 %``, ``n_events_surface >= 1000000 events`` (a whole
        limit written out, never ``1e+06``)."""
        return f"{self.column} {self.op} {_limit_text(self.limit)} {self.unit}".rstrip()


def _limit_text(limit: float) -> str:
    """A limit as written in a spec: a whole number in full (``1000000``), else ``:g`` (``0.5``)."""
    return f"{limit:.0f}" if float(limit).is_integer() and abs(limit) < 1e15 else f"{limit:g}"


@dataclass(frozen=True)
class ReleaseSpec:
    """A named set of criteria; ``source`` is the YAML path (or a label for a bundled file), ``sha256`` its digest."""

    name: str
    criteria: tuple[Criterion, ...]
    source: str = ""
    sha256: str = ""


@dataclass(frozen=True)
class CriterionResult:
    """A criterion applied to one product: the observed value (NaN when missing), the outcome of
    the value, ``held_by``: the review flags on the gates the value depends on, as ``"<code>
    (<gate>)"`` (empty: the outcome is determined; ``tilpheno.pipeline.release``), and ``absent``:
    for a ``not applicable`` criterion, the optional tube kinds the product has no file of whose
    columns the value needs, ``undetermined``: for a ``not evaluable`` one, the undetermined gates
    (one population, no FMO or unstained control) its blank value rests on."""

    criterion: Criterion
    value: float
    outcome: str  # PASS | FAIL | NOT_EVALUABLE | NOT_APPLICABLE
    held_by: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    undetermined: tuple[str, ...] = ()

    def result(self) -> str:
        """The outcome as every output words it: ``pass``, ``fail``, ``not evaluable``, ``not evaluable
        (undetermined: <gates>, no FMO or unstained control)`` (a value left blank because it rests on
        those gates, ``undetermined``), or ``not applicable (no <kind> tube; optional)``."""
        if self.outcome == NOT_EVALUABLE and self.undetermined:
            return f"{NOT_EVALUABLE} (undetermined: {', '.join(self.undetermined)}, no FMO or unstained control)"
        if self.outcome != NOT_APPLICABLE:
            return self.outcome
        return f"{NOT_APPLICABLE} (no {' or '.join(self.absent)} tube; optional)"

    def shown(self) -> str:
        """The value as reports print it: an event count as a whole number (``1234``), any other
        value with 2 decimals (``87.82``), ``''`` when missing."""
        if math.isnan(self.value):
            return ""
        return f"{self.value:.0f}" if self.criterion.is_count else f"{self.value:.2f}"

    def needs(self) -> str:
        """What the criterion needs, in words: ``needs > 90 % of live lymphocytes``."""
        c = self.criterion
        return f"needs {c.op} {_limit_text(c.limit)} {c.unit}".rstrip()





def _criterion_from_dict(item, where: str) -> Criterion:
    if not isinstance(item, Mapping):
        raise TableError(f"{where}: each criterion must be a mapping with name, column, op, limit")
    missing = [k for k in ("column", "op", "limit") if k not in item]
    if missing:
        raise TableError(f"{where}: missing key(s) {', '.join(missing)}")
    unknown = sorted(set(item) - {"name", "column", "op", "limit", "unit"})
    if unknown:
        raise TableError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    from tilpheno.io.yamlsafe import YAMLLimitError, scalar_text

    try:   # rendered as text: scalars of bounded length only
        texts = {k: scalar_text(item.get(k), f"{where}.{k}") for k in ("name", "column", "op", "unit")}
    except YAMLLimitError as exc:
        raise TableError(str(exc)) from None
    op = texts["op"].strip()
    if op not in _OPS:
        raise TableError(f"{where}.op: {op!r} is not one of {' '.join(_OPS)}")
    limit = item["limit"]
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit):
        raise TableError(f"{where}.limit: {limit!r} is not a finite number")
    column = texts["column"].strip()
    if not column:
        raise TableError(f"{where}.column: empty")
    return Criterion(texts["name"] if "name" in item else column, column, op, float(limit),
                     texts["unit"] if "unit" in item else "%")


def load_release_spec(path: str | Path, *, label: str | None = None) -> ReleaseSpec:
    """Read and validate a YAML release spec; errors name the file and the offending key.

    ``label``: the ``source`` recorded in the spec (default: the path), e.g. for bundled files."""
    from tilpheno.io.yamlsafe import load_config, with_line

    path = Path(path)
    raw, doc = load_config(path, "release spec", "'name' and 'criteria'", TableError)
    try:
        return _release_spec(path, raw, doc, label)
    except TableError as exc:   # "<path>: criteria[2]: ..." -> "<path>:<line>: criteria[2]: ..."
        raise TableError(with_line(str(exc), path, raw)) from None


def _release_spec(path: Path, raw: bytes, doc: Mapping, label: str | None) -> ReleaseSpec:
    from tilpheno.io.yamlsafe import YAMLLimitError, scalar_text

    criteria = doc.get("criteria")
    if not isinstance(criteria, list) or not criteria:
        raise TableError(f"{path}: 'criteria' must be a non-empty list")
    parsed = tuple(_criterion_from_dict(c, f"{path}: criteria[{i}]") for i, c in enumerate(criteria))
    try:
        name = scalar_text(doc.get("name"), "name", default=path.stem)
    except YAMLLimitError as exc:
        raise TableError(f"{path}: {exc}") from None
    return ReleaseSpec(
        name=name,
        criteria=parsed,
        source=label or str(path),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


_STUDIES = Path(__file__).resolve().parent / "studies"
_BUNDLED = " (bundled)"


def spec_path(source: str) -> Path:
    """The file a spec's ``source`` names: a path, or ``<study>/<file> (bundled)`` under the package."""
    return _STUDIES / source.removesuffix(_BUNDLED) if source.endswith(_BUNDLED) else Path(source)


def load_spec_source(source: str) -> ReleaseSpec:
    """The spec a ``source`` names (as ``run.json`` records it): bundled label or path."""
    return load_release_spec(spec_path(source), label=source if source.endswith(_BUNDLED) else None)


DEFAULT_SPEC = load_spec_source("til/release.yaml" + _BUNDLED)
"""The bundled TIL study's spec (``tilpheno/studies/til/release.yaml``): viability > 70 %, CD3+ > 90 %."""


def _as_float(value) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return math.nan
    return f


def evaluate(spec: ReleaseSpec, phenotype: Mapping[str, object]) -> list[CriterionResult]:
    """Apply every criterion of ``spec`` to one product's phenotype row (column -> value)."""
    results = []
    for c in spec.criteria:
        value = _as_float(phenotype.get(c.column))
        if math.isnan(value):
            outcome = NOT_EVALUABLE
        else:
            outcome = PASS if _OPS[c.op](value, c.limit) else FAIL
        results.append(CriterionResult(c, value, outcome))
    return results


def overall(results: list[CriterionResult]) -> str:
    """On the applicable criteria (``not applicable`` ones left out): ``pass`` only when every one
    passed; ``fail`` when any failed; else ``not evaluable`` (also when none is applicable)."""
    outcomes = [r.outcome for r in results if r.outcome != NOT_APPLICABLE]
    if FAIL in outcomes:
        return FAIL
    if NOT_EVALUABLE in outcomes or not outcomes:
        return NOT_EVALUABLE
    return PASS
