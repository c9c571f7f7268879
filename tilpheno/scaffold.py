"""Draft a study for a lab's own panel from its FCS files (``tilpheno new-study``), so that a first
run needs no hand-written YAML.

:func:`draft_study` reads every file's HEADER/TEXT only, once (:func:`tilpheno.io.manifest.scan_files`), and infers:

* **products, roles, FMO markers** as :func:`tilpheno.io.manifest.scan_folder` does (``$SRC``,
  ``TUBE NAME``, file names; ``FMO <marker>``, ``unstained``; a file with no marker label, from
  ``$PnS`` or the panel file, is an unstained control);
* **tube kinds**: one per distinct set of markers on the stained files (``$PnS`` read through the
  vocabulary; a ``--panel`` file names unlabelled detectors), named by the first word of the files'
  ``TUBE NAME`` / file name that is neither the product id, a role word, a marker nor a number
  (a word that every stained file of the kind has and no other kind's has, so that it tells the
  kinds apart), else the ``TUBE NAME`` they all share, whole, lower case, without separators, when
  it starts with a letter and no other kind's files have it (FACSDiva's ``Tube_025`` -> ``tube025``),
  else ``tube1``, ``tube2``...; stained files whose marker sets no product has
  together and that share at least 2/3 of their markers are versions of one tube (a marker swapped
  between exports) and make one kind with the markers they all have;
  an FMO file belongs to the kind whose stained markers are its own plus the one it omits;
  a kind no product has together with another kind (the kinds' products disjoint: products
  stained with one of two panels) is drafted ``optional: true`` (``tilpheno.study``): a product
  without it is processed, its variables blank; a kind that only some products have, beside a
  kind those products share, stays required (a missing tube fails its product);
* **gates** per kind, in this order: ``cells`` (FSC-A x SSC-A, ``ceiling`` = the scatter channels'
  ``$PnR`` - 1; none when the files have no scatter channels, e.g. a FlowJo export of gated
  fluorescence), ``singlets`` (FSC-A x FSC-H, when the files have FSC-H), ``nucleated`` (a DNA dye
  that enters every cell, the vocabulary's ``nucleic_acid:`` list, e.g. SYTO 41, kept high at its
  density valley), ``live`` (the viability
  dye, the vocabulary's ``viability:`` list, kept low at its density valley), ``live_lymph``
  (``lymph`` without a viability dye; when the files have scatter: ``method: lymphocytes`` on
  FSC-A x SSC-A, the main scatter cluster's ellipse, as the TIL strategies' lymphocyte gate; large
  cells bind antibodies nonspecifically and moved the drafted FMO cuts, benchmarks/README.md), then
  **one gate per other marker**, parents before their children: ``fmo`` when the folder holds an FMO for the
  marker (products without it get the flagged fallback gate; ``rule: relative`` for a marker of the
  vocabulary's ``dim:`` list, else the default anchored rule), else ``valley`` (keep high). A marker
  is gated within the positive gate of its parent in the vocabulary's ``lineage:`` table (``CD4+``
  within ``CD3+``, ``FoxP3+`` within ``CD4+``; ``lineage`` of :func:`draft_study` overrides entries)
  when that marker is gated in the same tube kind, else within the nearest one up the table's chain
  that is; every other marker gate sits directly under the lymphocyte gate (else ``live``, or the
  last gate before it, or ``root``), but a marker of the vocabulary's ``all_cells:`` list (a pan-leukocyte
  marker: its negatives are the larger non-leukocytes) under the gate above the lymphocyte gate, and the
  lymphocyte gate within the first such marker's positive gate (``live -> <marker>+ -> live_lymph``), so
  that markers nested within it (a T-cell marker of the pan-leukocyte one) sit in the lymphocyte gate as the others;
* **variables**: ``nucleated_pct`` (nucleated % of singlets), ``viability_pct`` (live % of singlets, or of nucleated) and ``<marker>_pct_of_<parent>`` per marker,
  ``<parent>`` the marker it is nested within (``cd4_pct_of_cd3``) or the gate it sits under
  (``cd3_pct_of_live_lymph``); ``_<kind>`` appended where two kinds would give the same name.

:func:`write_study` writes ``study.yaml``, one strategy per kind, and ``manifest.csv`` (every file
used, paths relative to the folder): ``tilpheno process FOLDER --study OUT/study.yaml --manifest
OUT/manifest.csv`` runs as written. Files left out (unreadable, an FMO or stained file that fits no
kind, a stained file on whose detectors no marker is named) are listed in :attr:`StudyDraft.skipped` with the reason and in ``study.yaml``'s comments.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import pandas as pd

from tilpheno.errors import TableError
from tilpheno.io.files import display_name
from tilpheno.io.manifest import read_lab_manifest, scan_files
from tilpheno.panel import SharedLabel, file_markers, read_panel_file, repeated_markers, set_aside_dyes, shared_labels
from tilpheno.study import default_study
from tilpheno.vocabulary import Vocabulary, key, read_lineage

ROLE_WORDS = frozenset({"stain", "stained", "fmo", "unstained", "unstain", "blank", "tube", "sample", "specimen",
                        "control", "minus", "all", "full", "panel", "compensation", "fcs"})
"""Words of a tube or file name that say a file's role, never its tube kind."""
UNNAMED = "no detector's $PnS names a marker (a panel file, columns tube, detector, marker, names them)"
"""Why a stained file with no marker is left out: a tube kind is its markers."""
CONTROLS = ("no $PnS label on their fluorescence detectors, or their names say so; a panel file (--panel, columns "
            "tube, detector, marker) naming their markers makes them stained files")
"""Why files count as unstained controls, and how a lab whose exports carry no labels drafts them."""
_WORDS = re.compile(r"[^A-Za-z0-9]+")
_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class TubeDraft:
    """One tube kind of the draft: its stained markers (in the first stained file's detector
    order), the viability dye among them (None: none), the markers an FMO of the folder omits,
    the scatter dimensions (None: the files have none), FSC-H (None: absent), the ``cells`` gate's
    ceiling (linear scatter units), the top of the markers' scale (the largest ``$PnR``), how
    many products have a stained file of it, the markers only some of its files have (panel
    versions; not gated), the nesting of its marker gates (marker -> the marker within whose
    positive gate it is gated, from the lineage table; markers not listed sit under :attr:`base`),
    the FMO-gated markers the vocabulary calls dim (``dim:``; gated with ``rule: relative``), and
    the markers it gates on all cells (``all_cells:``; unless nested, they sit under :attr:`above_lymph`,
    not within the lymphocyte gate), whether a product may lack it (:func:`disjoint_kinds`), and the
    pairs of its markers a cell does not normally carry together (``exclusive:``; a co-expression check
    drafted for each pair gated within one parent), and its DNA dye (``nucleic_acid:``, gated as
    ``nucleated`` before ``live``; None: none)."""

    kind: str
    markers: tuple[str, ...]
    viability: str | None
    fmo_markers: tuple[str, ...]
    scatter: tuple[str, str] | None
    height: str | None
    ceiling: float
    scale_top: float
    products: int
    partial: tuple[str, ...] = ()
    nested: tuple[tuple[str, str], ...] = ()
    dim: tuple[str, ...] = ()
    all_cells: tuple[str, ...] = ()
    optional: bool = False
    exclusive: tuple[tuple[str, str], ...] = ()
    dna: str | None = None

    @property
    def lymph(self) -> str | None:
        """The drafted lymphocyte scatter gate (``method: lymphocytes`` on the scatter dimensions,
        under ``live`` or the last scatter gate): ``live_lymph`` with a viability dye, else
        ``lymph``; None when the files have no scatter channels."""
        if self.scatter is None:
            return None
        return "live_lymph" if self.viability else "lymph"

    @property
    def base(self) -> str:
        """The population every marker gate of the draft that is not nested sits directly under:
        the lymphocyte gate (:attr:`lymph`) when the files have scatter, else ``live`` with a
        viability dye, else ``root``."""
        return self.lymph or self.above_lymph

    @property
    def above_lymph(self) -> str:
        """The population above the lymphocyte gate, where the :meth:`outside_lymph` markers are gated
        (and the lymphocyte gate itself when there are none): ``live`` with a viability dye, else
        the last scatter gate (``singlets`` or ``cells``), else ``root``."""
        return "live" if self.viability else _before_live(self)

    def parent_marker(self, marker: str) -> str | None:
        """The marker within whose positive gate ``marker`` is gated, or None (under :attr:`base`).
        A marker the lineage table nests within :attr:`leukocytes` has None: the lymphocyte gate
        lies between (``CD3`` of a pan-leukocyte ``L``: ``L+ -> live_lymph -> CD3+``)."""
        above = dict(self.nested).get(marker)
        return None if above is not None and above == self.leukocytes else above

    def parent(self, marker: str) -> str:
        """The population ``marker``'s gate is drawn in: ``<parent marker>+``, else :attr:`above_lymph`
        for a marker of :attr:`all_cells`, else :attr:`base`."""
        above = self.parent_marker(marker)
        return f"{above}+" if above else self.above_lymph if marker in self.outside_lymph() else self.base

    def nesting(self) -> list[tuple[str, str]]:
        """(marker, the marker within whose positive gate it is drawn) for every nested gate."""
        return [(m, above) for m, _ in self.nested if (above := self.parent_marker(m)) is not None]

    def outside_lymph(self) -> list[str]:
        """The markers of :attr:`all_cells` whose gate the draft draws on :attr:`above_lymph`, not within
        the lymphocyte gate: not nested, and only when there is a lymphocyte gate."""
        return [m for m in self.all_cells if self.lymph and m not in dict(self.nested)]

    @property
    def leukocytes(self) -> str | None:
        """The marker within whose positive gate the lymphocyte gate is drawn: the first of
        :meth:`outside_lymph` (a pan-leukocyte marker; lymphocytes are leukocytes), or None."""
        return next(iter(self.outside_lymph()), None)

    @property
    def lymph_parent(self) -> str:
        """The population the lymphocyte gate is drawn in: ``<leukocytes>+``, else :attr:`above_lymph`."""
        return f"{self.leukocytes}+" if self.leukocytes else self.above_lymph


@dataclass
class StudyDraft:
    """Result of :func:`draft_study`: the study's name, its tube kinds, the manifest of the files
    used (``file`` relative to ``folder``), the files left out with the reason (``unreadable``: the
    names of those left out because they could not be read, a failure rather than a choice), the
    folders that could not be listed (``unlistable``: folder, reason; their files are in neither
    list), the labels read as no marker because they name several (``shared``: each with the
    names of its files), and the detectors named after a viability dye that stained files labelling
    their panel in $PnS leave unlabelled, taken as unused (``unused_dyes``, :func:`tilpheno.panel.set_aside_dyes`:
    (detector, dye) -> the names of those files), and the markers stained files label on two detectors, one
    gated, the others not (``repeated``, :func:`tilpheno.panel.repeated_markers`: (marker, (detector, label)
    of each, the one gated first) -> the names of those files)."""

    name: str
    folder: Path
    tubes: list[TubeDraft]
    manifest: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)
    shared: dict[SharedLabel, list[str]] = field(default_factory=dict)
    case_merged: list[str] = field(default_factory=list)   # product ids merged across case (scan's warnings)
    unreadable: list[str] = field(default_factory=list)
    unlistable: list[tuple[str, str]] = field(default_factory=list)
    unused_dyes: dict[tuple[str, str], list[str]] = field(default_factory=dict)   # (detector, dye) -> stained files
    repeated: dict[tuple[str, tuple[tuple[str, str], ...]], list[str]] = field(default_factory=dict)   # -> stained files
    panel_unmatched: list[str] = field(default_factory=list)   # panel rows whose tube applies to no file (scan's lines)

    @property
    def folder_name(self) -> str:
        """The name of the folder drafted from, links and ``.`` resolved (``new-study .`` names the
        folder it is run in); the folder as given when it has none (``/``)."""
        return self.folder.resolve().name or str(self.folder)

    def variables(self) -> dict[str, dict[str, tuple[str, str]]]:
        """Per kind: variable name -> (numerator, denominator) population."""
        plain: dict[str, dict[str, tuple[str, str]]] = {}
        for tube in self.tubes:
            own = {"nucleated_pct": ("nucleated", _scatter_end(tube))} if tube.dna else {}
            if tube.viability:
                own["viability_pct"] = ("live", _before_live(tube))
            for marker in _gated(tube):
                above = tube.parent_marker(marker)
                own[f"{_slug(marker)}_pct_of_{_slug(above) if above else tube.parent(marker)}"] = (f"{marker}+", tube.parent(marker))
            plain[tube.kind] = own
        counts = Counter(name for own in plain.values() for name in own)
        return {kind: {(name if counts[name] == 1 else f"{name}_{_slug(kind)}"): pops for name, pops in own.items()}
                for kind, own in plain.items()}


def _slug(text: str) -> str:
    return _SLUG.sub("", str(text).lower()) or "x"


def _gated(tube: TubeDraft) -> list[str]:
    """The marker gates' markers (not the viability or DNA dye), parents before their children, else in
    the tube's order."""
    return _parents_first([m for m in tube.markers if m not in (tube.viability, tube.dna)], dict(tube.nested))


def _parents_first(markers: Sequence[str], parents: dict[str, str]) -> list[str]:
    """``markers`` in their order, each moved after its parent (``parents``: marker -> parent)."""
    ordered: list[str] = []

    def add(marker: str) -> None:
        if marker not in ordered:
            if marker in parents:
                add(parents[marker])
            ordered.append(marker)

    for marker in markers:
        add(marker)
    return ordered


def nesting(markers: Sequence[str], viability: str | None, vocabulary: Vocabulary) -> tuple[tuple[str, str], ...]:
    """Marker -> the marker within whose positive gate the draft gates it: the nearest one up its
    lineage chain (:meth:`Vocabulary.lineage_chain`) that the tube gates too (not its viability
    dye); markers with none are left out. In the order the draft writes the gates (parents first)."""
    gated = [m for m in markers if m != viability]
    pairs = {}
    for marker in gated:
        for above in vocabulary.lineage_chain(marker):
            found = next((m for m in gated if vocabulary.same(m, above)), None)
            if found is not None and found != marker:
                pairs[marker] = found
                break
    return tuple((m, pairs[m]) for m in _parents_first(gated, pairs) if m in pairs)


def _scatter_gates(tube: TubeDraft) -> list[str]:
    return [] if tube.scatter is None else ["cells", *(["singlets"] if tube.height else [])]


def _scatter_end(tube: TubeDraft) -> str:
    """The last scatter gate (``root`` without scatter channels): the DNA dye's gate is drawn in it."""
    return (_scatter_gates(tube) or ["root"])[-1]


def _before_live(tube: TubeDraft) -> str:
    """The population the live gate is drawn in: ``nucleated`` with a DNA dye, else the last scatter gate."""
    return "nucleated" if tube.dna else _scatter_end(tube)


def _name_words(fcs, path: Path, product: str, vocabulary: Vocabulary) -> list[str]:
    """Candidate kind names of a file: words of its TUBE NAME, then of its file name, lower case,
    without the product id, role words, markers and numbers."""
    product_words = {w.lower() for w in _WORDS.split(product) if w}
    words = []
    for text in (str(fcs.keywords.get("TUBE NAME", "")) if fcs is not None else "", path.stem):
        for word in _WORDS.split(text):
            low = word.lower()
            if (not word or low in ROLE_WORDS or low in product_words or low.isdigit()
                    or vocabulary.known(word) is not None):
                continue
            words.append(low)
    return words


def _channel(channels: Sequence[str], *names: str) -> str | None:
    by_key = {key(c): c for c in channels}
    return next((by_key[key(n)] for n in names if key(n) in by_key), None)


def draft_study(folder: str | Path, *, name: str | None = None, panel: str | Path | None = None,
                lineage: str | Path | None = None, manifest: str | Path | None = None) -> StudyDraft:
    """Draft a study from the FCS files under ``folder`` (module docstring). ``panel``: a panel file
    (``tube, detector, marker``; ``tube`` a word of the files' TUBE NAME or file names, or empty for
    every file) naming markers on detectors the export left unlabelled; its markers are the files'
    labels in the scan too, so that an export without ``$PnS`` (labels kept in a FlowJo workspace)
    drafts as stained files, not unstained controls. ``lineage``: a lab's lineage file (a YAML
    ``lineage:`` mapping, :func:`tilpheno.vocabulary.read_lineage`) whose entries win over the
    vocabulary's table (StudyError naming the file and entry when invalid). ``manifest``: a lab's own
    manifest (:func:`tilpheno.io.manifest.read_lab_manifest`) giving each file's product, role, FMO
    marker and tube, whose name names the tube kind of its stained files (:func:`_lab_kinds`); a file
    it does not list is left out. Raises TableError when no file can be used
    (no readable stained file), PanelError when a panel row names a detector that a stained or FMO
    file it applies to does not have (``process`` would fail the file's product)."""
    folder = Path(folder)
    study = default_study()
    vocabulary = study.vocabulary
    if lineage is not None:
        vocabulary = vocabulary.with_lineage(read_lineage(lineage), str(lineage))
    overrides = read_panel_file(panel) if panel is not None else None
    lab = read_lab_manifest(manifest, base=folder) if manifest is not None else None
    listed = {} if lab is None else {str((folder / r["file"]).resolve()): r for r in lab.to_dict("records")}
    scanned, metadata = scan_files(folder, study=study, panel=overrides)
    skipped: list[tuple[str, str]] = []
    shared: dict[SharedLabel, list[str]] = {}
    unused: dict[tuple[str, str], list[str]] = {}
    repeated: dict[tuple[str, tuple[tuple[str, str], ...]], list[str]] = {}
    files = []
    for row in scanned.to_dict("records"):
        path = Path(row["file"])
        if row["problem"]:
            skipped.append((path.name, row["problem"]))
            continue
        if lab is not None:
            entry = listed.get(str(path.resolve()))
            if entry is None:
                skipped.append((path.name, f"not in the manifest {display_name(str(manifest))}"))
                continue
            row = {**row, **{k: entry[k] for k in ("product_id", "tube", "role", "fmo_marker")}, "lab": entry}
        fcs = metadata[row["file"]]
        words = _name_words(fcs, path, row["product_id"], vocabulary)
        # process refuses a stained or FMO file (not a control) on whose channels a row of the panel is not
        markers = file_markers(fcs, vocabulary, overrides, strict=row["role"] in ("stain", "fmo"))
        channels = list(zip(map(str, fcs.channels["pnn"]), map(str, fcs.channels["pns"])))
        # a control is read on its stained file's detectors: its labels name nothing the run reads
        for label in shared_labels(channels, markers, vocabulary) if row["role"] in ("stain", "fmo") else ():
            shared.setdefault(label, []).append(path.name)
        for repeat in repeated_markers(channels, markers, vocabulary) if row["role"] == "stain" else ():
            repeated.setdefault(repeat, []).append(path.name)
        for dye, detector in set_aside_dyes(channels, vocabulary).items() if row["role"] == "stain" else ():
            if dye not in markers and detector not in markers.values():   # a panel file row may name it
                unused.setdefault((detector, dye), []).append(path.name)
        files.append({**row, "path": path, "fcs": fcs, "words": words, "markers": markers,
                      "tube_name": _SLUG.sub("", str(fcs.keywords.get("TUBE NAME", "")).lower())})
    stained = [f for f in files if f["role"] == "stain" and f["markers"]]
    unnamed = sum(f["role"] == "stain" and not f["markers"] for f in files)
    controls = sum(f["role"] == "unstained" for f in files)
    if not stained:
        raise TableError(f"{folder}: no readable stained FCS file to draft a study from "
                         f"({len(scanned)} file(s), {int((scanned['problem'] != '').sum())} unreadable"
                         f"{f', {len(scanned) - len(lab)} not in the manifest' if lab is not None and len(scanned) > len(lab) else ''}"
                         f"{f', {unnamed} stained with no marker named: {UNNAMED}' if unnamed else ''}"
                         f"{f', {controls} taken as unstained controls: {CONTROLS}' if controls else ''})")
    kinds = _kinds(stained) if lab is None else _lab_kinds(_kinds(stained))
    tubes, rows = [], []
    for kind, members in kinds.items():
        markers = shared_markers(members)
        versions = sorted({frozenset(f["markers"]) for f in members}, key=sorted)
        fmo_markers = []
        for f in [f for f in files if f["role"] == "fmo" and not f.get("placed")]:
            omitted = _fmo_omits(set(f["markers"]), f["fmo_marker"], versions)
            if omitted in markers:
                f.update(tube=kind, fmo_marker=omitted, placed=True)
                fmo_markers.append(omitted)
        for f in members:
            f.update(tube=kind, placed=True)
        first = members[0]["fcs"]
        pnn = [str(c) for c in first.channels["pnn"]]
        fsc, ssc = _channel(pnn, "FSC-A", "FSC", "FS", "FSC-H"), _channel(pnn, "SSC-A", "SSC", "SS", "SSC-H")
        scatter = (fsc, ssc) if fsc is not None and ssc is not None else None
        height = _channel(pnn, "FSC-H") if scatter and fsc != _channel(pnn, "FSC-H") else None
        ranges = {str(n): float(r) for n, r in zip(first.channels["pnn"], first.channels["pnr"])}
        ceiling = min(ranges[scatter[0]], ranges[scatter[1]]) - 1 if scatter else 0.0
        top = max(ranges.get(d, 0.0) for d in markers.values()) or 262144.0
        order = [m for m, _ in sorted(markers.items(), key=lambda kv: pnn.index(kv[1]) if kv[1] in pnn else 0)]
        viability = next((m for m in order if vocabulary.is_viability_dye(m)), None)
        dna = next((m for m in order if vocabulary.is_nucleic_acid_dye(m)), None)
        fmo_gated = tuple(m for m in order if m in set(fmo_markers))
        gated = [m for m in order if m != dna]
        tubes.append(TubeDraft(kind, tuple(order), viability, fmo_gated,
                               scatter, height, ceiling, top, len({f["product_id"] for f in members}),
                               tuple(sorted(set().union(*versions) - set(markers))),
                               nesting(gated, viability, vocabulary), tuple(m for m in fmo_gated if vocabulary.is_dim(m)),
                               tuple(m for m in gated if m != viability and vocabulary.is_all_cells(m)), dna=dna))
    optional = disjoint_kinds({kind: {f["product_id"] for f in members} for kind, members in kinds.items()})
    tubes = [replace(t, optional=t.kind in optional, exclusive=tuple(vocabulary.exclusive_pairs(t.markers))) for t in tubes]
    for f in files:
        if f["role"] == "unstained":
            f.update(tube="unstained", placed=True)
        elif f["role"] == "single_stain" or f["tube"] == "compensation":
            f.update(tube="compensation", placed=True)
        if not f.get("placed"):
            why = ("an FMO whose markers, with the one it omits"
                   f"{' (' + f['fmo_marker'] + ')' if f['fmo_marker'] else ''}, are no stained tube's"
                   if f["role"] == "fmo" else UNNAMED if not f["markers"] else "fits no tube kind")
            skipped.append((f["path"].name, why))
            continue
        rows.append({"file": str(f["path"].relative_to(folder)), "product_id": f["product_id"], "tube": f["tube"],
                         "role": f["role"], "fmo_marker": f["fmo_marker"]})
    default = re.sub(r"[^a-z0-9]+", "_", folder.resolve().name.lower()).strip("_") or "lab"
    unreadable = [Path(f).name for f in scanned.loc[scanned["problem"] != "", "file"]]
    return StudyDraft(name or default, folder, tubes, pd.DataFrame(rows, columns=["file", "product_id", "tube", "role", "fmo_marker"]), skipped,
                      shared, list(scanned.attrs.get("case_merged", [])), unreadable,
                      [(display_name(str(where)), reason) for where, reason in scanned.attrs.get("unlistable", [])],
                      unused, repeated, list(scanned.attrs.get("panel_unmatched", [])))


def _lab_kinds(kinds: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The tube kinds of a draft from a lab's manifest: each kind (one panel, :func:`_kinds`) named by
    the ``tube`` its manifest gives its stained files, written as a kind name (lower case, runs of
    other characters than letters and digits as ``_``: ``T cell`` -> ``t_cell``). TableError naming
    the rows when one panel's files are in two tubes, or one tube holds two panels."""
    named: dict[str, list[dict]] = {}
    for members in kinds.values():
        first: dict[str, dict] = {}
        for f in members:
            first.setdefault(f["lab"]["tube"], f)
        if len(first) > 1:
            (a, fa), (b, fb) = list(first.items())[:2]
            raise TableError(f"{fa['lab']['row']}, column 'tube': {fa['path'].name} is in tube {a!r} and "
                             f"{fb['lab']['row']}: {fb['path'].name} in tube {b!r}, with the same markers "
                             f"({', '.join(sorted(fa['markers']))}): a tube kind is one panel; give them one tube name")
        tube, f = next(iter(first.items()))
        kind = re.sub(r"[^a-z0-9]+", "_", tube.lower()).strip("_") or "tube"
        if kind in named:
            other = named[kind][0]
            raise TableError(f"{f['lab']['row']}, column 'tube': tube {tube!r} holds {f['path'].name}, stained for "
                             f"{', '.join(sorted(f['markers']))}, and ({other['lab']['row']}) {other['path'].name}, stained "
                             f"for {', '.join(sorted(other['markers']))}: a tube kind is one panel; give each panel its "
                             "own tube name")
        named[kind] = members
    return named


def disjoint_kinds(products: dict[str, set[str]]) -> set[str]:
    """The tube kinds (``products``: kind -> the products with a stained file of it) whose products
    are disjoint from another kind's: alternatives (one panel or the other), drafted optional."""
    return {kind for kind, own in products.items()
            if any(other != kind and not own & theirs for other, theirs in products.items())}


VERSION_OVERLAP = 2 / 3
"""Two marker sets that no product has together are versions of one tube when their common markers
are at least this share of the larger set (a marker swapped or added between exports)."""


def _panel_versions(groups: list[list[dict]]) -> list[list[dict]]:
    """Groups of stained files (one per marker set, largest first) merged when they are versions of
    one tube (:data:`VERSION_OVERLAP`, and no product has a file in both): one kind per product's
    tube, not one per export's spelling of the panel."""
    merged: list[list[dict]] = []
    for group in groups:
        markers, products = set(group[0]["markers"]), {f["product_id"] for f in group}
        for kind in merged:
            common = markers & set.intersection(*(set(f["markers"]) for f in kind))
            larger = max(len(markers), *(len(f["markers"]) for f in kind))
            if not products & {f["product_id"] for f in kind} and len(common) >= VERSION_OVERLAP * larger:
                kind.extend(group)
                break
        else:
            merged.append(list(group))
    return merged


def shared_markers(members: list[dict]) -> dict[str, str]:
    """The markers every stained file of a kind has (marker -> the first file's detector), in the
    first file's order: a drafted gate needs its marker in every file."""
    common = set.intersection(*(set(f["markers"]) for f in members))
    return {m: d for m, d in members[0]["markers"].items() if m in common}


def _fmo_omits(own: set[str], named: str, versions: list[frozenset]) -> str:
    """The marker an FMO file omits from one of a kind's marker sets (``versions``): the one its
    name gives (``named``), else the one missing; '' when its markers are no version's but one."""
    for version in versions:
        missing = version - own
        omitted = named or (next(iter(missing)) if len(missing) == 1 else "")
        if omitted and own | {omitted} == version:
            return omitted
    return ""


def _kinds(stained: list[dict]) -> dict[str, list[dict]]:
    """Stained files grouped by their marker set, panel versions merged, each group named (module docstring)."""
    groups: dict[frozenset, list[dict]] = {}
    for f in stained:
        groups.setdefault(frozenset(f["markers"]), []).append(f)
    ordered = _panel_versions(sorted(groups.values(), key=lambda m: -len(m)))
    named: dict[str, list[dict]] = {}
    for i, members in enumerate(ordered, start=1):
        others = {w for group in ordered if group is not members for f in group for w in f["words"]}
        words = Counter(w for f in members for w in dict.fromkeys(f["words"]))
        # a name tells kinds apart: in every stained file of this kind, in none of another kind's
        choice = next((w for w, n in words.most_common() if n == len(members) and w not in named and w not in others
                       and not w[0].isdigit()), None)
        # else the TUBE NAME all its stained files share, whole ('Tube_025' -> tube025: its words are a role
        # word and a number), when no other kind's files have it
        tube_names = {f.get("tube_name", "") for f in members}
        whole = next(iter(tube_names)) if len(tube_names) == 1 else ""
        if choice is None and whole[:1].isalpha() and whole not in named and all(
                f.get("tube_name") != whole for group in ordered if group is not members for f in group):
            choice = whole
        named[choice or f"tube{i}"] = members
    return named


def _scalar(text: str) -> str:
    """``text`` as a YAML scalar: plain when YAML reads it back as the same string, else quoted."""
    import json

    import yaml

    plain = str(text)
    try:
        same = yaml.safe_load(plain) == plain and "#" not in plain and ": " not in plain
    except yaml.YAMLError:
        same = False
    return plain if same and not plain.startswith(("[", "{", "&", "*", "!", "|", ">", "'", '"', "%", "@", "`")) \
        else json.dumps(plain, ensure_ascii=False)


def _list(items) -> str:
    return "[" + ", ".join(_scalar(i) for i in items) + "]"


def _marker_method(marker: str, fmo: set[str], dim: set[str], unstained: bool) -> str:
    """A drafted marker gate's method, params and the comment saying which rule it uses and why
    (``unstained``: the folder has unstained controls, against which a valley gate decides one
    population, ``tilpheno.gates.placement.place_valley``)."""
    if marker not in fmo:
        one = ("is called against the product's unstained control" if unstained else
               "near the scale's zero is negative, above it undetermined, held as positive and flagged (no unstained "
               "control in the folder; one_population: positive or negative states it)")
        return f"method: valley, params: {{keep: high}}}}   # no FMO in the folder: the density valley; one population {one}"
    if marker in dim:
        return ("method: fmo, params: {rule: relative}}   # its FMO is in the folder; rule relative: a dim marker "
                "(vocabulary `dim:`), its FMO percentile carried over to the stained negatives, never the valley")
    return ("method: fmo}   # its FMO is in the folder; rule anchored (the default): the valley when clearly "
            "bimodal, else its FMO percentile (carried over when the stained negatives moved)")


def _marker_line(tube: TubeDraft, marker: str, unstained: bool) -> str:
    """A drafted marker gate's population line, its comment saying where it is drawn and why."""
    above, lineage = tube.parent_marker(marker), dict(tube.nested).get(marker)
    why = f"; within {above}+ (lineage: {marker} of {above})" if above else \
        f"; within `{tube.lymph}`, itself within {lineage}+ (lineage: {marker} of {lineage})" if lineage else \
        f"; on every `{tube.above_lymph}` event (vocabulary `all_cells:`), not only the lymphocytes" \
        if marker in tube.outside_lymph() else ""
    head = f"  - {{name: {_scalar(marker + '+')}, parent: {_scalar(tube.parent(marker))}, dims: {_list([marker])}, "
    return head + _marker_method(marker, set(tube.fmo_markers), set(tube.dim), unstained) + why


def strategy_yaml(draft: StudyDraft, tube: TubeDraft) -> str:
    """The drafted strategy of one tube kind (module docstring), with comments saying what was
    inferred and how to nest gates."""
    base = tube.base
    lines = [
        f"# Drafted by `tilpheno new-study` from {tube.products} product(s)' stained '{tube.kind}' files in "
        f"{draft.folder_name}/.",
        f"# A marker gate sits directly under `{base}` unless the marker vocabulary's lineage table",
        "# (tilpheno/studies/vocabulary.yaml, `lineage:`; new-study --lineage FILE) nests it within another",
        f"# marker's positive gate (its comment says which). To un-nest a gate, set its `parent:` to `{base}`",
        "# and its variable's denominator with it; to nest one, the reverse. Variables are",
        "# 100 x count(numerator) / count(denominator). Methods and parameters: tilpheno/gates/strategy.py.",
        *([f"# `{base}` is the lymphocyte scatter gate (its comment says how to remove it); markers of the",
           f"# vocabulary's `all_cells:` list sit under `{tube.above_lymph}`"
           f"{f', and `{base}` within `{tube.lymph_parent}`' if tube.leukocytes else ''}."] if tube.lymph else []),
        f"strategy: {_scalar(draft.name + '_' + tube.kind)}",
        f"tube: {_scalar(tube.kind)}",
        f"markers: {_list(tube.markers)}",
        "populations:",
    ]
    if tube.scatter is not None:
        fsc, ssc = tube.scatter
        lines.append(f"  - {{name: cells, parent: root, dims: {_list([fsc, ssc])}, method: cells, params: {{ceiling: {tube.ceiling:.0f}}}}}")
        if tube.height:
            lines.append(f"  - {{name: singlets, parent: cells, dims: {_list([fsc, tube.height])}, method: singlets, "
                         f"params: {{ceiling: {tube.ceiling:.0f}}}}}")
    else:
        lines.append("  # the files have no forward/side scatter channels: the gates start from all events (root)")
    if tube.partial:
        lines.append(f"  # not gated: {', '.join(tube.partial)}, which only some of the files' panels have")
    if tube.dna:
        lines.append(f"  - {{name: nucleated, parent: {_scatter_end(tube)}, dims: {_list([tube.dna])}, method: valley, "
                     "params: {keep: high, one_population: positive}}   # a DNA dye that enters every cell, live or dead "
                     "(vocabulary `nucleic_acid:`): nucleated cells are bright, debris, red cells and platelets dim; one "
                     "population alone is the nucleated cells, flagged for review")
    if tube.viability:
        lines.append(f"  - {{name: live, parent: {_before_live(tube)}, dims: {_list([tube.viability])}, method: valley, "
                     "params: {keep: low, one_population: negative}}   # the viability dye: dead cells are bright; "
                     "one population alone is the live cells (dim in the dye), flagged for review")
    outside = tube.outside_lymph()
    unstained = bool((draft.manifest["role"] == "unstained").any())
    lines += [_marker_line(tube, m, unstained) for m in _gated(tube) if m in outside]
    if tube.lymph is not None:
        outer = tube.lymph_parent
        within = f"; within {outer}: lymphocytes are leukocytes (vocabulary `all_cells:`)" if tube.leukocytes else ""
        lines.append(f"  - {{name: {tube.lymph}, parent: {_scalar(outer)}, dims: {_list(tube.scatter or ())}, method: lymphocytes, "
                     f"params: {{ceiling: {tube.ceiling:.0f}}}}}   # lymphocytes: the main scatter cluster's ellipse{within}; "
                     f"large cells (myeloid, tumour) bind antibodies nonspecifically. To gate every `{outer}` event "
                     f"instead, delete this line and write `{outer}` for `{tube.lymph}` below")
    lines += [_marker_line(tube, m, unstained) for m in _gated(tube) if m not in outside]
    lines.append("variables:")
    for name, (numerator, denominator) in draft.variables()[tube.kind].items():
        lines.append(f"  {_scalar(name)}: {{numerator: {_scalar(numerator)}, denominator: {_scalar(denominator)}}}")
    return "\n".join(lines + _co_expression_lines(tube)) + "\n"


def _co_expression_lines(tube: TubeDraft) -> list[str]:
    """The drafted ``checks:`` section: a co-expression check for each pair of the vocabulary's
    ``exclusive:`` list whose gates the tube draws within one parent, its limit the default, its
    comment saying the limit is the lab's to set; none when no such pair."""
    gated = _gated(tube)
    pairs = [(a, b) for a, b in tube.exclusive if a in gated and b in gated and tube.parent(a) == tube.parent(b)]
    if not pairs:
        return []
    return ["checks:", *(f"  - {{kind: co_expression, populations: {_list([a + '+', b + '+'])}, limit: 10}}   # vocabulary "
                         f"`exclusive:`: few cells carry both {a} and {b}; more than the limit (% of {tube.parent(a)} in "
                         "both gates) flags both for review. The limit is the lab's to set: its products' double "
                         "positives, as its experts gate them" for a, b in pairs)]


OPTIONAL_COMMENT = ("   # no product has it with another kind: a product without it is processed, its variables "
                    "blank (delete `optional: true` to fail such a product instead)")
"""The drafted ``study.yaml``'s comment on an optional tube kind."""


def study_yaml(draft: StudyDraft) -> str:
    """The drafted ``study.yaml``: tube kinds (with the markers that tell them apart), every variable,
    the QC defaults written out, and the files left out as comments."""
    marker_sets = {t.kind: set(t.markers) for t in draft.tubes}
    lines = [
        f"# Drafted by `tilpheno new-study` from {draft.folder}: {draft.manifest['product_id'].nunique() if len(draft.manifest) else 0} "
        f"product(s), {len(draft.manifest)} file(s) (manifest.csv). Edit freely: see README, 'Another lab's panel'.",
        f"study: {_scalar(draft.name)}",
        f"description: {_scalar('drafted from the FCS files of ' + draft.folder_name)}",
        "tubes:",
    ]
    for tube in draft.tubes:
        own = sorted(marker_sets[tube.kind] - set().union(*(s for k, s in marker_sets.items() if k != tube.kind)))
        entry = f"strategy: {_scalar(tube.kind + '.yaml')}, names: {_list([tube.kind])}"
        entry += f", markers: {_list(own)}" if own and len(draft.tubes) > 1 else ""
        entry += ", optional: true" if tube.optional else ""
        lines.append(f"  {_scalar(tube.kind)}: {{{entry}}}" + (OPTIONAL_COMMENT if tube.optional else ""))
    lines.append("variables:")
    lines += [f"  - {_scalar(name)}" for own in draft.variables().values() for name in own]
    lines.append("release: release.yaml   # drafted: replace its criterion with your lab's")
    lines += ["qc:", "  min_events: 5000             # fewer events in a stained tube -> low_events",
              "  fmo_threshold_range: [0, %.0f]   # an FMO threshold outside (compensated linear units) -> threshold_out_of_range"
              % max(t.scale_top for t in draft.tubes)]
    if draft.skipped:
        lines.append("# files left out of manifest.csv:")
        lines += [f"#   {name}: {why}" for name, why in draft.skipped]
    if draft.unlistable:
        lines.append("# folders that could not be listed (their files are in no list here):")
        lines += [f"#   {where}: {why}" for where, why in draft.unlistable]
    return "\n".join(lines) + "\n"


def _viability_criterion(draft: StudyDraft, tube: TubeDraft) -> str:
    """The bundled TIL spec's viability criterion (> 70 %) on ``tube``'s viability variable."""
    column, (_, denominator) = next((n, pops) for n, pops in draft.variables()[tube.kind].items() if pops[0] == "live")
    return (f"  - {{name: {_scalar(f'Viability ({tube.viability}- of {denominator})')}, "
            f"column: {_scalar(column)}, op: \">\", limit: 70, unit: \"%\"}}")


def _events_criterion(tube: TubeDraft) -> str:
    """The QC minimum of events in ``tube``'s stained file (the study's ``qc.min_events``)."""
    return (f"  - {{name: {_scalar(f'Events acquired ({tube.kind} stained file)')}, "
            f"column: {_scalar('n_events_' + tube.kind)}, op: \">=\", limit: 5000, unit: events}}")


def release_yaml(draft: StudyDraft) -> str:
    """The drafted release spec: every run judges its products against one. With a viability dye
    in a required tube kind, the bundled TIL spec's viability criterion (> 70 %) on the first such
    kind's viability; else one criterion per tube kind, so that every product has one that applies
    to it (a criterion on an optional kind the product lacks does not): the viability criterion on
    a kind with a viability dye, the QC minimum of events in its stained file on one without
    (``n_events_<kind> >= 5000``, the study's ``qc.min_events``). Either is the lab's to replace; a
    comment says that a criterion on an optional kind's column is not applicable to a product
    without that kind."""
    tube = next((t for t in draft.tubes if t.viability and not t.optional), None)
    if tube is not None:
        criterion = _viability_criterion(draft, tube)
    else:
        criterion = "\n".join(_viability_criterion(draft, t) if t.viability else _events_criterion(t) for t in draft.tubes)
    dyes = {bool(t.viability) for t in draft.tubes}
    why = ("the QC minimum of events (no viability dye in the panel)" if dyes == {False}
           else "the bundled TIL study's viability criterion (viability > 70 %)" if tube is not None or dyes == {True}
           else "the bundled TIL study's viability criterion (viability > 70 %), on a tube kind without a viability dye the QC minimum of events")
    optional = [t.kind for t in draft.tubes if t.optional]
    blank = ([f"# A product without an optional tube kind ({', '.join(optional)}) has its columns blank: a criterion on "
              "them is 'not applicable' to it, its release decided on the others ('not evaluable' when none applies)."]
             if optional else [])
    return "\n".join([
        f"# Drafted by `tilpheno new-study`: {why}. Replace it with your lab's lot-release criteria",
        "# (columns: the study's variables and doses, or a stained file's events n_events_<tube kind>; see tilpheno/release.py).",
        *blank,
        f"name: {_scalar(draft.name + ' release (drafted)')}",
        "criteria:",
        criterion,
    ]) + "\n"


DRAFT_LOCK = ".new-study.lock"   # in the study folder while a draft is written (tilpheno.io.atomic.held_lock)


def write_study(draft: StudyDraft, out: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write ``study.yaml``, ``<kind>.yaml`` per tube kind, ``release.yaml`` and ``manifest.csv``
    into ``out`` (created); all files or none: each is written to a temporary sibling, and the
    temporaries are renamed over their targets only once all are written, so a failed write (a
    full disk) leaves ``out`` as it was (an OutputFolderError naming it) rather than a study.yaml
    without its strategies that the next draft refuses to replace; a Ctrl-C or SIGTERM while they
    are renamed is acted on once all are (``uninterrupted``). A ``kill -9`` cannot be held: study.yaml
    is removed before the first rename and renamed last, so a study.yaml in ``out`` is always a whole
    draft's; one killed meanwhile, or whose rename the system refused (its files not renamed are kept,
    and this call's OutputFolderError says so), is named (TableError, :func:`_killed_draft`) and
    finished by ``overwrite``, which removes its temporaries. Another draft into ``out`` at once waits
    (the lock file ``.new-study.lock``). Refuses (TableError) to replace an existing file unless
    ``overwrite``. Returns the paths written."""
    import contextlib

    from tilpheno.io.atomic import discard, held_lock, make_folder, publish, staged_open, uninterrupted
    from tilpheno.io.csvcells import csv_text
    from tilpheno.io.outdir import OutputFolderError, describe_os_error, unwritable

    out = Path(out)
    texts = {out / "study.yaml": study_yaml(draft), out / "release.yaml": release_yaml(draft)}
    texts.update({out / f"{t.kind}.yaml": strategy_yaml(draft, t) for t in draft.tubes})
    texts[out / "manifest.csv"] = csv_text(draft.manifest)
    targets = list(texts)
    created, renaming = not out.exists(), False
    staged: list[tuple[str, Path]] = []   # (temporary, target) written
    try:
        make_folder(out)
        # another draft into out waits here: its temporaries are never taken for a killed draft's
        with held_lock(out / DRAFT_LOCK):
            temporaries = _refused_unless_overwrite(out, targets, overwrite)
            with uninterrupted():   # a signal meanwhile held until every file is in place
                try:
                    for path, text in texts.items():
                        # non-UTF-8 file names are written as their bytes, to read back as written
                        errors = "surrogateescape" if path.name == "manifest.csv" else "backslashreplace"
                        with staged_open(path, "w", errors=errors) as fh:   # on the disk when the block ends
                            fh.write(text)
                        staged.append((fh.name, path))
                    # study.yaml, first in, is renamed last: until then none is there, not an older draft's
                    (out / "study.yaml").unlink(missing_ok=True)
                except BaseException:
                    discard(*(tmp for tmp, _ in staged))
                    raise
                # from here a failure leaves the files not renamed: the draft is named incomplete, as a killed one's
                renaming = True
                for tmp, path in reversed(staged):
                    publish(tmp, path)
            for leftover in temporaries:
                (out / leftover).unlink(missing_ok=True)
    except OSError as exc:
        if renaming:
            raise OutputFolderError(f"cannot write the study: {describe_os_error(exc, out)}; "
                                    f"{_incomplete_draft(out, targets)}") from None
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise unwritable(exc, out, "the study") from None
    return targets


def _refused_unless_overwrite(out: Path, targets: list[Path], overwrite: bool) -> list[str]:
    """The temporaries a stopped draft left in ``out`` (:func:`_killed_draft`), for ``overwrite`` to
    remove; without ``overwrite`` a TableError naming that draft, or the study's files ``out`` holds."""
    temporaries = _killed_draft(out, targets)
    if temporaries and not overwrite and not (out / "study.yaml").exists():
        raise TableError(_incomplete_draft(out, targets))
    existing = [p.name for p in targets if p.exists()]
    if existing and not overwrite:
        raise TableError(f"{out}: already holds {', '.join(existing)} (pass overwrite=True to replace)")
    return temporaries


def _incomplete_draft(out: Path, targets: list[Path]) -> str:
    """The line naming the incomplete draft in ``out``: its files in place, its temporaries not renamed."""
    existing = ", ".join(p.name for p in targets if p.exists()) or "none of its files"
    return (f"{out}: holds an incomplete draft, a new-study stopped while writing it (killed, or a rename refused; no "
            f"study.yaml; {existing} in place; {', '.join(_killed_draft(out, targets))} not renamed): "
            "draft again with overwrite=True to finish it (its temporaries are removed), or remove them")


def _killed_draft(out: Path, targets: list[Path]) -> list[str]:
    """The hidden temporaries (``.<file>.<8 characters>.part``, :func:`tilpheno.io.atomic.staged`)
    of the study's files in ``out`` that a draft killed (or refused a rename) before renaming them left, sorted."""
    if not out.is_dir():
        return []
    pattern = re.compile(rf"\.(?:{'|'.join(re.escape(p.name) for p in targets)})\.\w{{8}}\.part")
    return sorted(p.name for p in out.iterdir() if pattern.fullmatch(p.name))


def check_draft(out: str | Path, folder: str | Path, *, panel: str | Path | None = None) -> str:
    """The checks ``process`` makes before gating (:func:`tilpheno.pipeline.run.load_run_inputs`, the
    same function), on the written draft run as printed (``--study OUT/study.yaml --manifest
    OUT/manifest.csv``, ``--panel`` when given): its study, strategies and release spec load and
    agree, and its manifest reads (a data problem the draft carries over, e.g. product ids that
    differ only in case, is the lab's to settle). Returns the problem, or ''."""
    from tilpheno.errors import TilphenoError
    from tilpheno.pipeline.run import load_run_inputs

    out = Path(out)
    try:
        load_run_inputs(folder, manifest_csv=out / "manifest.csv", study=out / "study.yaml", panel_path=panel)
    except TilphenoError as exc:
        return str(exc)
    return ""
