"""Panels: which detector ($PnN) carries which marker in one tube (see docs/design.md, Panel).

Conventions
-----------
* Marker names are free text read through a :class:`~tilpheno.vocabulary.Vocabulary` (the
  study's; default ``tilpheno/studies/vocabulary.yaml``): ``"CD3 BV421"``, ``"hCD3"``,
  ``"anti-CD3"`` -> ``CD3``; ``"PD-1"``, ``"CD279"`` -> ``PD1``; ``"7-AAD"`` -> ``7AAD``; an
  unknown marker keeps its own name (``"CD38 BV605"`` -> ``CD38``, ``"Zombie NIR"`` -> ``Zombie``).
* Markers come from $PnS (a $PnS equal to its $PnN, or the detector's other name with its signal,
  MACSQuant's ``V2-A`` on ``FL2-A``, counts as no label: :func:`labelled`); a channel without $PnS
  whose $PnN names a *known* marker (channels renamed ``CD3`` etc.) counts too. Scatter and time
  channels (``FSC*``, ``SSC*``, ``Time``) never do.
* Attune NxT writes a label with its parameter's signal (``KLRG1-A`` on ``BL1-A``): read without
  it (:func:`label_marker`).
* A detector named after a viability dye (``PI-A``, ``7-AAD-A``, ``488/552nm PI (615/30) LogH``:
  the instrument's filter, named whether or not the dye was added) counts as that dye only in a
  file that labels none of its fluorescence channels in $PnS (a lab that labels by detector). A
  file that labels its panel in $PnS and leaves that detector unlabelled did not use it: the dye
  is set aside (:attr:`Panel.dyes`), no marker of the file, and taken only when a strategy gates
  it (:func:`require`).
* A marker labelled on several detectors (FACSDiva repeats $PnS on -A, -H and -W) maps to the
  ``-A`` detector, else the first one.
* FMO tubes: the omitted marker's detector is present without $PnS; ``panel_from_fcs`` resolves
  it from the stained tube of the same product and tube kind (``reference=`` its Panel or
  ``stained=`` its FCSFile). The same detector may carry different markers in different tubes
  (PE-A = PD1 in the surface tube, FoxP3 in the Treg tube), so panels are per file.
* Override panel files (CSV or YAML, ``tilpheno process --panel FILE``) have columns/keys
  ``tube, detector, marker``; a row applies to files whose tube kind, TUBE NAME keyword or file
  name (without ``.fcs``), or a word of the TUBE NAME or file name, equals ``tube``
  (case-insensitive: ``surface`` applies to ``TIL001 Surface stain.fcs``); ``tube`` empty or ``*``
  applies to every file. Its markers count as the file's own labels everywhere: a file with no
  $PnS that a row names markers on is a stained file (:func:`file_markers`).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from tilpheno.errors import PanelError, TableError
from tilpheno.io.files import path_problem
from tilpheno.io.spill import COMPENSATED_PREFIXES
from tilpheno.vocabulary import Vocabulary, default_vocabulary, key


def normalize_marker(text: str | None, vocabulary: Vocabulary | None = None) -> str | None:
    """The marker named in ``text`` ($PnS, a panel file cell, a tube name), or None.

    Known markers come back in their canonical spelling; other labels as free text (the first
    word that is not a fluorochrome), see :meth:`tilpheno.vocabulary.Vocabulary.marker_in`.
    """
    return (vocabulary or default_vocabulary()).marker_in(text)


TIME_NAMES = ("time", "hdr-t")   # Miltenyi MACSQuant calls its time channel HDR-T
DERIVED_NAMES = ("doublet",)
"""Parameters an instrument derives per event that are no detector's light (case ignored):
Sysmex-Partec CyFlow's ``DOUBLET``, its doublet-discrimination parameter, written after ``TIME``
as an 8-bit value ($PnB 8, $PnR 255; all 0 in ``fcs_corpus/fcsparser_instruments/cyflow_cube_8``)."""


def is_derived(detector: str) -> bool:
    """True for an instrument's derived parameter (:data:`DERIVED_NAMES`): like time, not a signal
    whose level, drift or scale margins mean anything."""
    return detector.strip().lower() in DERIVED_NAMES


def is_scatter_or_time(detector: str) -> bool:
    """True for FSC*/SSC* scatter channels, the time channel (:data:`TIME_NAMES`) and derived
    parameters (:func:`is_derived`), case ignored: never markers nor fluorescence detectors."""
    name = detector.strip().upper()
    return name.startswith(("FSC", "SSC")) or name.lower() in TIME_NAMES or is_derived(name)


@dataclass(frozen=True)
class Panel(Mapping):
    """Marker -> detector ($PnN) for one file; behaves as a read-only mapping over ``markers``.

    ``channels``: the file's (``$PnN``, ``$PnS``) pairs, for error messages.
    ``resolved``: markers not labelled in this file and where they came from (FMO resolution or
    an override), marker -> description.
    ``dyes``: viability dyes named only by an unlabelled detector of a file that labels its panel
    in $PnS (:func:`set_aside_dyes`), dye -> detector: no marker of the file, taken by
    :func:`require` when a strategy gates the dye.
    """

    source: str
    markers: dict[str, str]
    channels: tuple[tuple[str, str], ...] = ()
    resolved: dict[str, str] = field(default_factory=dict)
    dyes: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, marker: str) -> str:
        return self.markers[marker]

    def __iter__(self) -> Iterator[str]:
        return iter(self.markers)

    def __len__(self) -> int:
        return len(self.markers)

    def __hash__(self) -> int:  # Mapping sets __hash__ = None; panels are immutable values
        return hash((self.source, tuple(sorted(self.markers.items()))))

    @property
    def detectors(self) -> dict[str, str]:
        """Detector ($PnN) -> marker: the reverse mapping."""
        return {d: m for m, d in self.markers.items()}

    def marker_of(self, detector: str) -> str | None:
        return self.detectors.get(detector)

    def describe_channels(self) -> str:
        """``FITC-A (CD3 FITC), PE-A (-), ...`` for messages."""
        return describe_channels(self.channels)


def describe_channels(channels: Iterable[tuple[str, str]]) -> str:
    """``$PnN ($PnS)`` pairs joined for messages; ``-`` for an absent $PnS."""
    return ", ".join(f"{n} ({s.strip() or '-'})" for n, s in channels)


def _prefer(current: str, candidate: str, exported_first: bool = False) -> str:
    """Of two detectors labelled with one marker: for a raw detector ``X`` and its compensated
    export parameter (``FJComp-X``, ``Comp-X``: a FlowJo export with both), the export parameter
    when ``exported_first`` (no spillover matrix, the file's or an override, so ``X`` could not be
    compensated), else ``X`` (compensated here with that matrix); otherwise the area (-A)
    one, else the first."""
    for prefix in COMPENSATED_PREFIXES:
        for raw, exported in ((current, candidate), (candidate, current)):
            if exported == prefix + raw:
                return exported if exported_first else raw
    if not current.upper().endswith("-A") and candidate.upper().endswith("-A"):
        return candidate
    return current


_SIGNAL = re.compile(r"^(?P<stem>.+)-(?P<signal>[AHW])$", re.IGNORECASE)
_LETTER_DETECTOR = re.compile(r"^[A-Z]\d{1,2}$", re.IGNORECASE)   # MACSQuant's V2, B1, Y2 (as $PnS of FL2-A ...)


def _same_signal(pnn: str, pns: str) -> re.Match | None:
    """The match of ``pns`` as ``<stem>-<signal>`` when ``pnn`` ends in the same signal, else None."""
    suffixed = _SIGNAL.match(pns.strip())
    return suffixed if suffixed and pnn.strip().upper().endswith("-" + suffixed["signal"].upper()) else None


def labelled(pnn: str, pns: str) -> bool:
    """True when the channel carries a $PnS label of its own: not empty, not a copy of $PnN, not the
    detector's other name with its signal (MACSQuant 3.1 writes ``V2-A`` as $PnS of ``FL2-A``, its
    FCS 2.0 export ``V2-A`` as both: neither labels a stain)."""
    label = pns.strip()
    if not label or label.upper() == pnn.strip().upper():
        return False
    suffixed = _same_signal(pnn, label)
    return not (suffixed and _LETTER_DETECTOR.match(suffixed["stem"].strip()))


def label_marker(pnn: str, pns: str, vocabulary: Vocabulary) -> str | None:
    """The marker the $PnS label ``pns`` of detector ``pnn`` names. Attune NxT writes its label with
    the parameter's signal, as the detector's (``BL1-A`` labelled ``KLRG1-A``, ``GFP-A``): a label
    naming no marker whole is read without that suffix when ``pnn`` ends in the same one."""
    marker = vocabulary.marker_in(pns)
    suffixed = _same_signal(pnn, pns)
    return vocabulary.marker_in(suffixed["stem"].strip()) if marker is None and suffixed else marker


def labels_its_panel(channels: Iterable[tuple[str, str]]) -> bool:
    """True when some fluorescence channel (not scatter or time) has a $PnS label of its own."""
    return any(labelled(pnn, pns) for pnn, pns in channels if not is_scatter_or_time(pnn))


def detector_dyes(channels: Iterable[tuple[str, str]], vocabulary: Vocabulary) -> dict[str, str]:
    """Viability dye -> detector, for each unlabelled fluorescence detector whose $PnN names a
    viability dye of the vocabulary (``PI-A``, ``7-AAD-A``): a name the instrument gives its filter."""
    dyes: dict[str, str] = {}
    for pnn, pns in channels:
        if is_scatter_or_time(pnn) or labelled(pnn, pns):
            continue
        dye = vocabulary.marker_in(pnn, free=False)
        if dye is not None and vocabulary.is_viability_dye(dye):
            dyes[dye] = _prefer(dyes[dye], pnn) if dye in dyes else pnn
    return dyes


def set_aside_dyes(channels: Iterable[tuple[str, str]], vocabulary: Vocabulary) -> dict[str, str]:
    """The :func:`detector_dyes` of a file that labels its panel in $PnS (:func:`labels_its_panel`):
    detectors it left unlabelled, unused, so not its markers (module docstring); {} otherwise."""
    channels = tuple(channels)
    return detector_dyes(channels, vocabulary) if labels_its_panel(channels) else {}


def _labelled_markers(channels: Iterable[tuple[str, str]], vocabulary: Vocabulary | None = None,
                      exported_first: bool = False) -> dict[str, str]:
    """Marker -> detector from $PnS, or from $PnN itself when it names a known marker (renamed
    channels) but for :func:`set_aside_dyes`; a marker on two detectors: :func:`_prefer`."""
    vocab = vocabulary or default_vocabulary()
    channels = tuple(channels)
    aside = set(set_aside_dyes(channels, vocab).values())
    markers: dict[str, str] = {}
    for pnn, pns in channels:
        if is_scatter_or_time(pnn) or pnn in aside:
            continue
        marker = label_marker(pnn, pns, vocab) if labelled(pnn, pns) else vocab.marker_in(pnn, free=False)
        if marker is None:
            continue
        markers[marker] = _prefer(markers[marker], pnn, exported_first) if marker in markers else pnn
    return markers


def _detector_stem(pnn: str) -> str:
    """One detector's name for all its parameters: without its signal (-A, -H, -W) and without the
    prefix of a compensated export parameter (``Comp-PE-A`` -> ``PE``)."""
    name = pnn.strip()
    for prefix in COMPENSATED_PREFIXES:
        name = name[len(prefix):] if name.startswith(prefix) else name
    signal = _SIGNAL.match(name)
    return (signal["stem"] if signal else name).upper()


def repeated_markers(channels: Iterable[tuple[str, str]], markers: Mapping[str, str],
                     vocabulary: Vocabulary) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """``(marker, ((detector, label), ...))``, the detector used first, for each marker that the
    $PnS labels of two detectors or more name (not one detector's -A/-H/-W, nor a compensated export
    parameter beside its detector: data1.fcs labels FL2-H 'CD8 B PE' and FL4-H 'CD8 APC'), where
    ``markers`` (marker -> detector, the file's, panel file rows applied) took one of them: the others are
    gated nowhere (a detector a row gave another marker is not one of them)."""
    channels = tuple(channels)
    owner = {d: m for m, d in markers.items()}   # a panel file row may have put another marker on a labelled detector
    labels: dict[str, list[tuple[str, str]]] = {}
    for pnn, pns in channels:
        if not is_scatter_or_time(pnn) and labelled(pnn, pns) and owner.get(pnn) in (None, label_marker(pnn, pns, vocabulary)):
            marker = label_marker(pnn, pns, vocabulary)
            if marker is not None:
                labels.setdefault(marker, []).append((pnn, pns.strip()))
    found = []
    for marker, named in labels.items():
        used = markers.get(marker)
        stems = {_detector_stem(d) for d, _ in named}
        if used in {d for d, _ in named} and len(stems) > 1:
            mine = next(pair for pair in named if pair[0] == used)
            found.append((marker, (mine, *((d, label) for d, label in named if _detector_stem(d) != _detector_stem(used)))))
    return found


def _fcs_channels(fcs) -> tuple[tuple[str, str], ...]:
    return tuple(zip((str(x) for x in fcs.channels["pnn"]), (str(x) for x in fcs.channels["pns"])))


def panel_from_fcs(fcs, *, reference: Panel | None = None, stained=None, override=None, tube: str | None = None,
                   study=None, compensating: bool = False) -> Panel:
    """The Panel of one FCSFile from its $PnS labels.

    ``reference`` (a Panel) or ``stained`` (the FCSFile of the stained tube of the same product
    and tube kind) resolves FMO-omitted markers: a reference marker missing here is mapped to the
    reference's detector when this file has that detector without a $PnS.
    ``override``: ``{detector: marker}`` applied to every file, a ``PanelOverrides`` from
    ``read_panel_file``, or the path of such a file. Override rows win over $PnS.
    ``tube``: the file's tube kind, for override rows (default: inferred by the study from the
    TUBE NAME, file name and markers). ``study``: a :class:`tilpheno.study.Study` (its vocabulary
    reads the labels; default the bundled study). ``compensating``: a spillover matrix is supplied
    for the file (an override), so of a raw detector and its compensated export parameter the raw
    one is used, as with the file's own matrix (:func:`_prefer`).
    """
    if study is None:
        from tilpheno.study import default_study

        study = default_study()
    vocab = study.vocabulary
    channels = _fcs_channels(fcs)
    markers = _labelled_markers(channels, vocab, exported_first=not compensating and getattr(fcs, "spillover", None) is None)
    resolved: dict[str, str] = {}
    if reference is None and stained is not None:
        reference = panel_from_fcs(stained, override=override, tube=tube, study=study, compensating=compensating)
    if reference is not None:
        unlabelled = {n for n, s in channels if not labelled(n, s) and not is_scatter_or_time(n)
                      and vocab.marker_in(n, free=False) is None}
        taken = set(markers.values())
        for marker, detector in reference.markers.items():
            if marker not in markers and detector in unlabelled and detector not in taken:
                markers[marker] = detector
                resolved[marker] = f"unlabelled detector resolved from {reference.source}"
    if isinstance(override, (str, os.PathLike)):
        override = read_panel_file(override)
    rows = _override_rows(override, fcs, markers, tube, study)
    for marker in _apply_rows(fcs, markers, rows, channels, strict=True,
                              source=override if isinstance(override, PanelOverrides) else None):
        resolved[marker] = "override"
    taken = set(markers.values())
    dyes = {d: n for d, n in set_aside_dyes(channels, vocab).items() if d not in markers and n not in taken}
    return Panel(str(fcs.path), markers, channels, resolved, dyes)


def require(panel: Panel, markers: Iterable[str], vocabulary: Vocabulary | None = None) -> dict[str, str]:
    """``{marker: detector}`` for ``markers`` (names as the caller spells them; matched through the
    vocabulary, so ``PD-1`` finds ``PD1``; a gated dye the file set aside, :attr:`Panel.dyes`, on the
    detector named after it); PanelError listing the file's channels if any is missing."""
    vocab = vocabulary or default_vocabulary()
    by_key = {key(vocab.canonical_name(m)): d for m, d in {**panel.dyes, **panel.markers}.items()}
    wanted = list(markers)
    found = {m: by_key.get(key(vocab.canonical_name(m))) for m in wanted}
    missing = [m for m, d in found.items() if d is None]
    if missing:
        shared = _shared_labels(panel, missing, vocab)
        raise PanelError.at(panel.source, f"marker(s) {', '.join(missing)} not found{shared}",
                            " (a panel file, columns tube, detector, marker, names the marker of an unlabelled "
                            f"detector); channels ($PnN ($PnS)): {panel.describe_channels()}")
    return {m: d for m, d in found.items() if d is not None}


def panel_error_headline(error: PanelError, file: str) -> str:
    """A panel error as a one-line failure names it on the flag of ``file`` (a file's label): its
    ``problem``, without the file's channels and the panel-file hint (``marker(s) CD56, PD1, 7AAD not
    found``), after the path of the file it is about when that is another (an unstained control read
    with its stained file's markers); the whole message when it names no file. The flag
    (``qc.csv``) keeps the whole message."""
    if not error.problem:
        return str(error)
    return error.problem if Path(error.path).name == Path(file).name else f"{error.path}: {error.problem}"


@dataclass(frozen=True)
class SharedLabel:
    """A detector whose label names several markers (``"Foxp3-IgM"``, ``"CD8-TIGIT"``: one detector
    shared by two stains), read as no marker (:mod:`tilpheno.vocabulary`), and left so by the panel file."""

    detector: str
    label: str
    markers: tuple[str, ...]
    dye: str = ""   # the viability dye among the markers: a dump channel ("VIVID / CD14")

    def describe(self) -> str:
        """``detector X's label 'Foxp3-IgM' names FoxP3 and IgM, ...: a panel file row ... says which``;
        for a dump channel (a viability dye and markers), what naming the dye does."""
        dump = (f"; a dump channel: a row naming {self.dye} gates it as the live gate, leaving the "
                f"{', '.join(m + '+' for m in self.markers if m != self.dye)} cells out with the dead ones "
                "(viability_pct counts them as dead)" if self.dye else "")
        rows = " or ".join(f"',{self.detector},{m}'" for m in self.markers if m != self.dye)
        return (f"detector {self.detector}'s label {self.label!r} names {' and '.join(self.markers)}, one detector shared "
                f"by two stains: a panel file row (tube, detector, marker) says which this tube carries, e.g. {rows} "
                f"(an empty tube: every file; a file's name or a word of it: that file){dump}")


def shared_labels(channels: Iterable[tuple[str, str]], markers: Mapping[str, str],
                  vocabulary: Vocabulary) -> list[SharedLabel]:
    """The channels (``$PnN``, ``$PnS``) whose label names several markers and whose detector
    carries none of ``markers`` (marker -> detector: a panel file row resolves it)."""
    taken = set(markers.values())
    found = ((pnn, pns, vocabulary.named_markers(pns)) for pnn, pns in channels)
    return [SharedLabel(pnn, pns.strip(), named, next((m for m in named if vocabulary.is_viability_dye(m)), ""))
            for pnn, pns, named in found if len(named) > 1 and pnn not in taken]


def _shared_labels(panel: Panel, missing: Iterable[str], vocab: Vocabulary) -> str:
    """``; detector X's label 'Foxp3-IgM' names FoxP3 and IgM: ...`` for each shared label
    (:func:`shared_labels`) that names one of ``missing``."""
    wanted = {key(vocab.canonical_name(m)) for m in missing}
    return "".join(f"; {shared.describe()}" for shared in shared_labels(panel.channels, panel.markers, vocab)
                   if wanted & {key(m) for m in shared.markers})


# --------------------------------------------------------------------------- override files


@dataclass(frozen=True)
class PanelOverride:
    """One override row: in tubes matching ``tube`` ('' = all), ``detector`` carries ``marker``."""

    tube: str
    detector: str
    marker: str
    where: str = field(default="", compare=False, repr=False)   # its place in the file, for messages


@dataclass(frozen=True)
class PanelOverrides:
    """The rows of an override panel file, in file order (later rows win)."""

    source: str
    rows: tuple[PanelOverride, ...]

    def for_file(self, tube_kind: str, tube_name: str, file_stem: str) -> dict[str, str]:
        """Detector -> marker (as written) of the rows that apply to a file (module docstring)."""
        keys = _file_keys(tube_kind, tube_name, file_stem)
        return {r.detector: r.marker for r in self.rows if r.tube in ("", "*") or r.tube.lower() in keys}

    def place_of(self, detector: str) -> str:
        """Where the last row naming ``detector`` lies (``panel.csv: row 19``; the row that wins), else the file."""
        return next((r.where for r in reversed(self.rows) if r.detector == detector and r.where), self.source)

    def applying_to_none(self, files: Iterable[tuple[str, str, str]]) -> list[PanelOverride]:
        """The rows whose ``tube`` applies to none of ``files`` (each ``(tube kind, TUBE NAME, file
        stem)``, as :meth:`for_file` takes them): a misspelt tube word labels nothing, and the files
        it was meant for then lack its marker."""
        keys: set[str] = set()
        for kind, name, stem in files:
            keys |= _file_keys(kind, name, stem)
        return [r for r in self.rows if r.tube not in ("", "*") and r.tube.lower() not in keys]


def _file_keys(tube_kind: str, tube_name: str, file_stem: str) -> set[str]:
    """The words a panel row's ``tube`` is matched against for one file (module docstring)."""
    return {tube_kind.lower(), tube_name.strip().lower(), file_stem.lower(),
            *(w for w in _NAME_WORDS.split(f"{tube_name} {file_stem}".lower()) if w)}


_NAME_WORDS = re.compile(r"[^a-z0-9]+")
_PANEL_COLUMNS = ("tube", "detector", "marker")


def file_markers(fcs, vocabulary: Vocabulary, overrides: PanelOverrides | None, tube_kind: str = "", *,
                 strict: bool = False) -> dict[str, str]:
    """Marker -> detector of one file as far as its TEXT and a panel file tell: its labels
    (:func:`_labelled_markers`), then the rows of ``overrides`` that apply to it (``tube_kind``:
    its kind when known) on detectors it has, a row's marker replacing whatever its detector or
    that marker had. Markers in the vocabulary's spelling. Without FMO resolution (see
    :func:`panel_from_fcs`): what a scan of the folder knows of each file. A row naming a detector
    the file lacks is passed over, or with ``strict`` refused (PanelError, as
    :func:`panel_from_fcs` refuses it when the file is gated)."""
    channels = _fcs_channels(fcs)
    markers = _labelled_markers(channels, vocabulary)
    if overrides is None:
        return markers
    rows = overrides.for_file(tube_kind, str(fcs.keywords.get("TUBE NAME", "")), Path(str(fcs.path)).stem)
    _apply_rows(fcs, markers, {d: vocabulary.marker_in(m) or m.strip() for d, m in rows.items()}, channels,
                strict=strict, source=overrides)
    return markers


def _apply_rows(fcs, markers: dict[str, str], rows: Mapping[str, str], channels, *, strict: bool,
                source: PanelOverrides | None = None) -> list[str]:
    """Put a panel file's ``rows`` (detector -> marker, in the vocabulary's spelling) into ``markers``
    (marker -> detector, in place): each row's marker replaces whatever its detector or that marker
    had. A row on a detector the file lacks is refused (PanelError naming it, its place in
    ``source``, the panel file, and the channels) with ``strict``, else passed over. Returns the
    markers put in, in row order."""
    names = {n for n, _ in channels}
    applied = []
    for detector, marker in rows.items():
        if detector not in names:
            if strict:
                where = f" ({source.place_of(detector)})" if source is not None else ""
                raise PanelError.at(fcs.path, f"override maps {marker} to detector {detector!r}{where}, not among the "
                                              f"channels {describe_channels(channels)}")
            continue
        for old in [m for m, d in markers.items() if d == detector or m == marker]:
            del markers[old]
        markers[marker] = detector
        applied.append(marker)
    return applied


def _override_rows(override, fcs, markers: dict[str, str], tube: str | None, study: Any) -> dict[str, str]:
    if override is None:
        return {}
    vocab = study.vocabulary
    if isinstance(override, (str, os.PathLike)):
        override = read_panel_file(override)
    if isinstance(override, PanelOverrides):
        tube_name = str(fcs.keywords.get("TUBE NAME", ""))
        stem = Path(str(fcs.path)).stem
        kind = tube or study.tube_kind_of(f"{tube_name} {stem}", markers) or ""
        rows = override.for_file(kind, tube_name, stem)
    elif isinstance(override, Mapping):
        rows = {str(d): str(m) for d, m in override.items()}
    else:
        raise PanelError(f"panel override must be a mapping, PanelOverrides or a file path, got {type(override).__name__}")
    return {d: vocab.marker_in(m) or m.strip() for d, m in rows.items()}


def read_panel_file(path: str | os.PathLike) -> PanelOverrides:
    """Read an override panel (CSV, or YAML: a list of {tube, detector, marker} or a mapping with
    key ``panel`` holding that list). Markers are kept as written (read through the study's
    vocabulary when applied, ``panel_from_fcs``).
    Raises TableError naming the file, row and column at fault."""
    import csv

    import pandas as pd
    import yaml

    from tilpheno.io.workbook import decode_text, place, table_frame, text_rows
    from tilpheno.io.yamlsafe import load_file

    path = Path(path)
    if not path.is_file():
        raise TableError(path_problem(path))
    yaml_file = path.suffix.lower() in (".yaml", ".yml")
    try:
        if yaml_file:
            doc = load_file(path)[1]   # size and alias expansion bounded (tilpheno.io.yamlsafe)
            if isinstance(doc, dict):
                doc = doc.get("panel")
            if not isinstance(doc, list) or not all(isinstance(r, dict) for r in doc):
                raise TableError(f"{path}: YAML panel must be a list of {{tube, detector, marker}} mappings")
            frame = pd.DataFrame(doc, dtype=str, index=range(1, len(doc) + 1))
            frame.columns = [str(c).strip().lower() for c in frame.columns]
        else:   # read as the manifest's text: a title line, blank lines, ; or tab, Windows-1252 (rows = lines)
            header_line, _, lines = text_rows(decode_text(path.read_bytes(), str(path)), _PANEL_COLUMNS)
            frame = table_frame(lines, header_line, lambda line: place(str(path), line), _PANEL_COLUMNS)
    except TableError:
        raise
    except (yaml.YAMLError, ValueError, OSError, csv.Error) as exc:
        raise TableError(f"{path}: cannot read panel file ({str(exc).splitlines()[0]})") from None
    for column in ("detector", "marker"):
        if column not in frame.columns:
            raise TableError(f"{path}: missing column '{column}' (need tube, detector, marker)")
    if "tube" not in frame.columns:
        frame["tube"] = ""
    rows = []
    for i, rec in zip(frame.index, frame.fillna("").to_dict("records")):
        where = f"{path}: entry {i}" if yaml_file else place(str(path), i)
        detector, marker = str(rec["detector"]).strip(), str(rec["marker"]).strip()
        if not detector:
            raise TableError(f"{where}, column 'detector': empty")
        if not marker:
            raise TableError(f"{where}, column 'marker': empty")
        rows.append(PanelOverride(str(rec["tube"]).strip(), detector, marker, where))
    return PanelOverrides(str(path), tuple(rows))
