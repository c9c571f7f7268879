"""Studies: a lab's vocabulary in configuration, not in code.

A study is a folder with a ``study.yaml`` (see ``tilpheno/studies/til/study.yaml``, the bundled
default) naming:

* ``tubes``: each tube kind (free text: ``surface``, ``treg``, ``lineage``, ...) with its gating
  strategy file, the ``names`` (words) that identify it in file and tube names, optionally
  ``markers`` that identify it from the stained markers when names do not, and ``optional: true``
  for a kind that only some products have (products stained with one of two panels): a product
  with no file of that kind is processed, its variables blank, instead of failed (a product with
  a file of the kind but no usable stained one still fails);
* ``variables``: the variables every phenotype row carries, in order (NaN when not computable;
  each is defined in a strategy's ``variables`` section);
* ``doses``: absolute subset doses ``base x variable / 100`` (base ``dose`` = infused cells);
* ``qc``: minimum event counts, the FMO threshold's expected range, expected variable ranges;
* ``index_columns``: columns of the cohort index page;
* ``biomarkers``: the markers ``tilpheno biomarkers`` analyses by default (columns of
  phenotypes.csv or the outcomes table; default: the infused dose ``til_dose_cells`` and the variables);
* ``colours``: plot colour (``#rrggbb``) of populations and markers (a compound population takes
  its longest matching suffix's colour); others get a generic palette colour;
* ``release``: the lot-release spec file; ``aliases``: marker spellings added to the vocabulary;
* ``product_label``: what the reports, the index and the review app call a product (default ``Product``; the TIL
  study: ``TIL infusion product``); ``conventions``: the study's own conventions, printed in every
  report beside the pipeline's (e.g. what viability is a percentage of);
* ``codebook``: curated text of the study's columns (``{column: {label, meaning, unit, method}}``),
  which ``codebook.csv`` and the reports' headers use instead of the text derived from the strategies.

Studies are chosen by name (a folder under ``tilpheno/studies/``) or by path (a study.yaml or its
folder). Paths inside a study file are relative to it. :func:`load_study` validates everything and
raises :class:`~tilpheno.errors.StudyError` naming the file and key.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from tilpheno.errors import StudyError
from tilpheno.io.files import path_problem
from tilpheno.release import ReleaseSpec, load_release_spec, load_spec_source
from tilpheno.vocabulary import STUDIES_DIR, Vocabulary, default_vocabulary, key, parse_aliases

DEFAULT_STUDY = "til"


@dataclass(frozen=True)
class TubeKind:
    """One tube kind of a study: its strategy file, the words naming it, markers identifying it,
    and whether a product may lack it (``optional``: its variables are then blank, not a failure)."""

    name: str
    strategy: Path
    names: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()
    optional: bool = False


@dataclass(frozen=True)
class Dose:
    """``name = base x variable / 100`` (cells); ``base`` is ``dose`` (infused cells) or another dose."""

    name: str
    base: str
    variable: str


@dataclass(frozen=True)
class ExpectedRange:
    """A variable's expected range; a value outside raises QC flag ``flag`` (warning)."""

    variable: str
    flag: str
    low: float | None = None
    high: float | None = None
    label: str = ""
    unit: str = ""

    def check(self, value: float) -> str | None:
        """The flag message when ``value`` is outside the range, else None (NaN is never flagged)."""
        if not math.isfinite(value):
            return None
        label = self.label or self.variable
        if self.low is not None and value < self.low:
            return f"{label} {value:.1f}{self.unit} < {self.low:g}{self.unit}"
        if self.high is not None and value > self.high:
            return f"{label} {value:.1f}{self.unit} > {self.high:g}{self.unit}"
        return None


@dataclass(frozen=True)
class QCRules:
    """Product QC thresholds (defaults: the TIL study's)."""

    min_events: int = 5000
    min_lymph_events: int = 1000
    fmo_threshold_range: tuple[float, float] = (0.0, 5000.0)
    expected: tuple[ExpectedRange, ...] = ()


@dataclass(frozen=True)
class Study:
    """A validated study configuration (module docstring). Immutable and picklable."""

    name: str
    source: str
    sha256: str
    tubes: Mapping[str, TubeKind]
    variables: tuple[str, ...] = ()
    doses: tuple[Dose, ...] = ()
    qc: QCRules = QCRules()
    index_columns: tuple[str, ...] = ()
    biomarkers: tuple[str, ...] = ()
    colours: Mapping[str, str] = field(default_factory=dict)
    release: ReleaseSpec | None = None
    vocabulary: Vocabulary = field(default_factory=default_vocabulary)
    description: str = ""
    product_label: str = "Product"
    conventions: str = ""
    codebook: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def product_noun(self) -> str:
        """The word that counts products in running text ("6 lots", "every lot"): the last word of
        ``product_label``, lower-cased unless written in capitals (``TIL infusion product`` ->
        ``product``, ``Lot`` -> ``lot``, ``TIL`` -> ``TIL``); its plural adds "s"."""
        word = self.product_label.split()[-1]
        return word if word.isupper() else word.lower()

    def with_noun(self, text: str) -> str:
        """``text`` with each whole word "product" / "products" (either case of its first letter) as
        :attr:`product_noun` (its plural adding "s"; capitalised where the word was): a generic text
        ("Events in all gated files of the product", "Products") in the study's words ("... of the
        lot", "Lots"). Identifiers such as ``product_id`` are left as they are."""
        def word(match: re.Match) -> str:
            noun = self.product_noun + ("s" if match.group(2) else "")
            return noun[:1].upper() + noun[1:] if match.group(1) == "P" else noun

        return re.sub(r"(?<![\w-])([Pp])roduct(s?)(?![\w-])", word, text)

    @property
    def optional_tubes(self) -> frozenset[str]:
        """The tube kinds a product may lack (``optional: true``)."""
        return frozenset(k for k, t in self.tubes.items() if t.optional)

    @property
    def strategy_paths(self) -> list[Path]:
        """The strategy file of every tube kind, in study order."""
        return [t.strategy for t in self.tubes.values()]

    def tube_kind_of(self, text: str = "", markers=()) -> str | None:
        """The tube kind named by ``text`` (a word of a file or tube name) or identified by ``markers``.

        Names first (whole words, case-insensitive); then the first kind whose ``markers`` are all
        among ``markers``; then the only kind without identifying markers (None if ambiguous).
        """
        words = {key(w) for w in _words(text)}
        for kind in self.tubes.values():
            if any(key(n) in words for n in (kind.name, *kind.names)):
                return kind.name
        present = [m for m in markers if m]
        for kind in self.tubes.values():
            if kind.markers and all(any(self.vocabulary.same(k, m) for m in present) for k in kind.markers):
                return kind.name
        plain = [k.name for k in self.tubes.values() if not k.markers]
        return plain[0] if len(plain) == 1 else None


def _words(text: str) -> list[str]:
    import re

    return [w for w in re.split(r"[^A-Za-z0-9+]+", str(text)) if w]


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

_HEX_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
_TOP_KEYS = {"study", "description", "aliases", "tubes", "variables", "doses", "qc", "index_columns", "biomarkers", "colours", "release",
             "product_label", "conventions", "codebook"}
CODEBOOK_FIELDS = ("label", "meaning", "unit", "method")


def bundled_studies() -> list[str]:
    """Names of the studies shipped with the package."""
    return sorted(p.parent.name for p in STUDIES_DIR.glob("*/study.yaml"))


def study_path(name_or_path: str | Path) -> Path:
    """The study.yaml of a bundled study name, a study folder or a study file; a StudyError naming the file
    missing from a folder that is there (``mystudy/study.yaml: no such file``, with a near name it holds:
    ``study.yml``) or a path that is no file, else "no such study" with the bundled studies."""
    text = str(name_or_path)
    candidate = Path(text)
    if candidate.is_dir():
        candidate = candidate / "study.yaml"
    if candidate.is_file():
        return candidate
    bundled = STUDIES_DIR / text / "study.yaml"
    if "/" not in text and bundled.is_file():
        return bundled
    if os.path.lexists(text):   # a folder without study.yaml, or no file: name what is missing
        near = sorted(p.name for p in Path(text).glob("*") if p.name.lower().startswith("study.")
                      and p.name != "study.yaml") if Path(text).is_dir() else []
        holds = f" ({text} holds {', '.join(near)}: a study folder's file is study.yaml)" if near else ""
        raise StudyError(f"{path_problem(candidate)}{holds}")
    raise StudyError(f"{text}: no such study (a study.yaml, its folder, or one of the bundled studies: "
                     f"{', '.join(bundled_studies())})")


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) and str(v).strip() for v in value):
        raise StudyError(f"{where}: must be a list of names")
    return tuple(str(v).strip() for v in value)


def _colours(value: Any, where: str) -> dict[str, str]:
    """``{population or marker: "#rrggbb"}``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(f"{where}: must map population or marker names to colours (#rrggbb)")
    for name, colour in value.items():
        if not isinstance(colour, str) or not _HEX_COLOUR.match(colour):
            raise StudyError(f"{where}.{name}: {colour!r} is not a colour #rrggbb")
    return {str(k): str(v) for k, v in value.items()}


def _text(value: Any, where: str, default: str = "") -> str:
    """A one-line text value (``default`` when absent)."""
    if value is None:
        return default
    if not isinstance(value, str) or not value.strip():
        raise StudyError(f"{where}: must be a non-empty text")
    return " ".join(value.split())


def _codebook(value: Any, where: str) -> dict[str, dict[str, str]]:
    """``{column: {label, meaning, unit, method}}``, each field optional text."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(f"{where}: must map column names to {{{', '.join(CODEBOOK_FIELDS)}}}")
    out: dict[str, dict[str, str]] = {}
    for column, entry in value.items():
        if not isinstance(entry, dict) or not entry:
            raise StudyError(f"{where}.{column}: must be a mapping of {', '.join(CODEBOOK_FIELDS)}")
        unknown = sorted(set(map(str, entry)) - set(CODEBOOK_FIELDS))
        if unknown:
            raise StudyError(f"{where}.{column}: unknown field(s) {unknown}; allowed: {list(CODEBOOK_FIELDS)}")
        out[str(column)] = {k: _text(entry[k], f"{where}.{column}.{k}") for k in CODEBOOK_FIELDS if k in entry}
    return out


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StudyError(f"{where}: {value!r} is not a finite number")
    return float(value)


def _tubes(doc: Mapping, path: Path) -> dict[str, TubeKind]:
    raw = doc.get("tubes")
    if not isinstance(raw, Mapping) or not raw:
        raise StudyError(f"{path}: tubes: must be a mapping 'tube kind: {{strategy: FILE, names: [...]}}'")
    tubes = {}
    for kind, spec in raw.items():
        where = f"{path}: tubes.{kind}"
        kind = str(kind).strip()
        if not kind or key(kind) in ("UNSTAINED", ""):
            raise StudyError(f"{where}: 'unstained' is reserved for the unstained control")
        if not isinstance(spec, Mapping) or "strategy" not in spec:
            raise StudyError(f"{where}: must be a mapping with 'strategy' (and optional names, markers, optional)")
        unknown = sorted(set(spec) - {"strategy", "names", "markers", "optional"})
        if unknown:
            raise StudyError(f"{where}: unknown key(s) {unknown}; allowed: markers, names, optional, strategy")
        optional = spec.get("optional", False)
        if not isinstance(optional, bool):
            raise StudyError(f"{where}.optional: {optional!r} is not true or false")
        strategy = (path.parent / str(spec["strategy"])).resolve()
        if not strategy.is_file():
            raise StudyError(f"{where}.strategy: {strategy} not found")
        tubes[kind] = TubeKind(kind, strategy, _names(spec.get("names"), f"{where}.names"),
                               _names(spec.get("markers"), f"{where}.markers"), optional)
    return tubes


def _doses(doc: Mapping, path: Path) -> tuple[Dose, ...]:
    raw = doc.get("doses") or {}
    if not isinstance(raw, Mapping):
        raise StudyError(f"{path}: doses: must be a mapping 'name: {{base, variable}}'")
    doses: list[Dose] = []
    for name, spec in raw.items():
        where = f"{path}: doses.{name}"
        if not isinstance(spec, Mapping) or set(spec) != {"base", "variable"}:
            raise StudyError(f"{where}: must be {{base: dose | <an earlier dose>, variable: <variable>}}")
        base = str(spec["base"])
        if base != "dose" and base not in {d.name for d in doses}:
            raise StudyError(f"{where}.base: {base!r} is neither 'dose' nor a dose defined above")
        doses.append(Dose(str(name), base, str(spec["variable"])))
    return tuple(doses)


def _qc(doc: Mapping, path: Path) -> QCRules:
    raw = doc.get("qc") or {}
    if not isinstance(raw, Mapping):
        raise StudyError(f"{path}: qc: must be a mapping")
    unknown = sorted(set(raw) - {"min_events", "min_lymph_events", "fmo_threshold_range", "expected"})
    if unknown:
        raise StudyError(f"{path}: qc: unknown key(s) {unknown}")
    defaults = QCRules()
    rng = raw.get("fmo_threshold_range", list(defaults.fmo_threshold_range))
    if not isinstance(rng, list) or len(rng) != 2:
        raise StudyError(f"{path}: qc.fmo_threshold_range: must be [low, high]")
    expected = []
    for variable, spec in (raw.get("expected") or {}).items():
        where = f"{path}: qc.expected.{variable}"
        if not isinstance(spec, Mapping) or "flag" not in spec or not ({"min", "max"} & set(spec)):
            raise StudyError(f"{where}: must be {{min and/or max, flag, [label, unit]}}")
        unknown = sorted(set(spec) - {"min", "max", "flag", "label", "unit"})
        if unknown:
            raise StudyError(f"{where}: unknown key(s) {unknown}")
        expected.append(ExpectedRange(
            str(variable), str(spec["flag"]),
            _number(spec["min"], f"{where}.min") if "min" in spec else None,
            _number(spec["max"], f"{where}.max") if "max" in spec else None,
            str(spec.get("label", "")), str(spec.get("unit", "")),
        ))
    return QCRules(
        min_events=int(_number(raw.get("min_events", defaults.min_events), f"{path}: qc.min_events")),
        min_lymph_events=int(_number(raw.get("min_lymph_events", defaults.min_lymph_events), f"{path}: qc.min_lymph_events")),
        fmo_threshold_range=(_number(rng[0], f"{path}: qc.fmo_threshold_range"), _number(rng[1], f"{path}: qc.fmo_threshold_range")),
        expected=tuple(expected),
    )


def load_study(name_or_path: str | Path = DEFAULT_STUDY) -> Study:
    """Load and validate a study by bundled name (``"til"``) or path (module docstring)."""
    from tilpheno.io.yamlsafe import load_config, with_line

    path = study_path(name_or_path).resolve()
    raw, doc = load_config(path, "study", "study, tubes, variables, ...", StudyError, _TOP_KEYS)
    try:
        return _study(path, raw, doc)
    except StudyError as exc:   # "<path>: qc.expected.x: ..." -> "<path>:<line>: qc.expected.x: ..."
        raise StudyError(with_line(str(exc), path, raw)) from None


def _study(path: Path, raw: bytes, doc: Mapping) -> Study:
    name = str(doc.get("study") or path.parent.name)
    variables = _names(doc.get("variables"), f"{path}: variables")
    release = None
    if doc.get("release"):
        release_file = (path.parent / str(doc["release"])).resolve()
        bundled = release_file.is_relative_to(STUDIES_DIR)
        release = (load_spec_source(f"{release_file.relative_to(STUDIES_DIR)} (bundled)") if bundled
                   else load_release_spec(release_file))
    vocabulary = default_vocabulary().with_aliases(parse_aliases(doc.get("aliases"), f"{path}: aliases"), path.name)
    return Study(
        name=name,
        source=f"{path.relative_to(STUDIES_DIR)} (bundled)" if path.is_relative_to(STUDIES_DIR) else str(path),
        sha256=hashlib.sha256(raw).hexdigest(),
        tubes=_tubes(doc, path),
        variables=variables,
        doses=_doses(doc, path),
        qc=_qc(doc, path),
        index_columns=_names(doc.get("index_columns"), f"{path}: index_columns") or (*variables, "n_events_total"),
        biomarkers=_names(doc.get("biomarkers"), f"{path}: biomarkers") or ("til_dose_cells", *variables),
        colours=_colours(doc.get("colours"), f"{path}: colours"),
        release=release,
        vocabulary=vocabulary,
        description=str(doc.get("description", "")),
        product_label=_text(doc.get("product_label"), f"{path}: product_label", "Product"),
        conventions=_text(doc.get("conventions"), f"{path}: conventions"),
        codebook=_codebook(doc.get("codebook"), f"{path}: codebook"),
    )


@lru_cache(maxsize=1)
def default_study() -> Study:
    """The bundled default study (the TIL study)."""
    return load_study(DEFAULT_STUDY)
