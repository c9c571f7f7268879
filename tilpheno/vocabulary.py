"""Marker vocabulary: which spellings name the same marker, read as free text.

Marker and dye names are free text. A :class:`Vocabulary` holds the alias table (canonical name ->
other spellings, ``tilpheno/studies/vocabulary.yaml`` plus a study's own ``aliases:``), the
fluorochrome words that are never markers, and the filler words skipped in labels.

Conventions
-----------
* Two spellings are the same marker when their *keys* are equal: upper case with hyphens, dots,
  spaces, underscores, slashes and trade-mark signs removed (``"PD-1"``, ``"pd1"``, ``"PD 1"`` -> ``PD1``;
  ``"Brilliant Violet 421™"``: a fluorochrome and the number 421), after
  mapping aliases to their canonical name (``CD279`` -> ``PD1``).
* :meth:`Vocabulary.marker_in` reads a label (``$PnS``, a panel-file cell, an FMO tube name):
  the first known marker in it (a word, two adjacent words joined, or a hyphen-separated part; two
  words joined that name a marker win over the first alone: ``"CD8 B PE"`` is CD8b, the beta chain, not CD8;
  a species/``anti`` prefix is dropped when the rest is known: ``hCD3``, ``anti-CD3``); if
  none is known and ``free`` is true, the first word that is not a fluorochrome, a filler word
  or a detector name, with a trailing fluorochrome part removed (``"KLRG1 BV605"`` -> ``KLRG1``,
  ``"CD38-BV605"`` -> ``CD38``, Beckman's ``"CD22-PC5"`` -> ``CD22``). Labels that are only
  fluorochromes, filler words (signal and unit words too) or detector names, also joined by
  hyphens (``"FITC"``, ``"FL1-H"``, ``"FSC-A"``, FACSCalibur's ``"FL1-Height"``, Beckman's
  ``"FS INT LIN"``), name no marker.
* A label that names two different known markers (``"Foxp3-IgM"``, ``"CD3-IgD"``, ``"CD8 TIGIT"``:
  one detector shared by two antibodies, one for each of two tubes or cell types), or a known marker
  joined by a hyphen to a word that is no fluorochrome, filler word, prefix or detector name
  (``"CD8-KLRG1"``: KLRG1 unknown), or a known marker after an unknown word (``"KLRG1 CD8"``), or
  parts joined by ``+`` (``"CD8+TIGIT"``, ``"CD45RA+CD62L+"``; ``"CD4+"`` is CD4), names no marker
  (an unknown word after a space is taken for the antibody's clone: ``"CD3 OKT3"`` is CD3, so a
  marker written that way must be in the vocabulary, but a CD name is a molecule, never a clone:
  ``"VIVID / CD14"``, a viability dye and CD14 on one dump detector, names both; before the marker it is another stain, unless
  a prefix, fluorochrome, filler word, number, wavelength or detector name):
  which one the file's tube carries is the lab's to say (a panel file row),
  :meth:`Vocabulary.named_markers`.
* A word of one or two letters after a name continues it (an isoform written apart from its CD name,
  ``RA``, ``RO``; a chain, ``"CD8 b"``; a locus, ``"HLA DR"`` -> ``HLA-DR``), unless it is a
  fluorochrome (or starts one in two words), filler word, prefix, detector family, signal letter
  (``A``, ``H``, ``W``) or known marker; a Greek chain letter is keyed as its Latin one (``CD8β`` =
  ``CD8b``). A word of one letter repeated (``xxxxxxxxx``, an anonymised export's $PnS) names no marker.
* A dye family whose number names the dye (``numbered:``, the SYTO nucleic-acid stains: SYTO 9,
  SYTO 41 and SYTO 62 are other dyes) is known as a whole: the family word followed by a number
  (``"Syto 41"``, ``"SYTO-9"``, ``"syto17"``) is the marker ``SYTO41`` etc.; the word alone or
  followed by letters (``SYTOX Green``, another family) is not.
* A detector family whose number names a detector (``detectors:``: FACSCalibur's ``FL1``, Attune's
  ``BL1``, ``VL3``) names no marker: the family word followed by a number, with an optional signal
  letter (``"BL1"``, ``"FL2H"``), also after a laser's wavelength (``"488-BL1"``); nor does a
  wavelength (``"405nm"``), nor a fluorochrome written in two words (``"CF 405M"``, ``"BV 421"``,
  ``"APC H7"``: the two words joined are a fluorochrome).
* A lineage table (``lineage:``, marker -> the marker within whose positive gate it is gated:
  ``CD4: CD3``) says how ``tilpheno new-study`` nests the gates it drafts
  (:meth:`Vocabulary.lineage_parent`); an entry with no parent (``CD4: ~``) nests nothing.
* A list of dim markers (``dim:``, :meth:`Vocabulary.is_dim`) says which FMO gates
  ``tilpheno new-study`` drafts with ``rule: relative``.
* A list of markers gated on all cells (``all_cells:``, :meth:`Vocabulary.is_all_cells`) says
  which gates ``tilpheno new-study`` draws before its lymphocyte scatter gate (markers that tell
  leukocytes from the large cells that gate leaves out).
* A list of marker pairs a cell does not normally carry together (``exclusive:``,
  :meth:`Vocabulary.exclusive_pairs`) says which co-expression checks ``tilpheno new-study`` drafts
  (two gates of one parent; the limit is the lab's to set).
* The vocabulary is data: adding a marker or a spelling touches no code.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

from tilpheno.errors import StudyError

STUDIES_DIR = Path(__file__).resolve().parent / "studies"
"""The bundled study configurations (package data): ``<name>/study.yaml`` and ``vocabulary.yaml``."""

_SEPARATORS = re.compile(r"[\s_/:;,+()\[\]]+")
_KEY_DROP = re.compile(r"[\s\-._/™®]+")
_GREEK = str.maketrans("αβγδεκ", "abgdek")   # "CD8β" = CD8b, "TCRγδ" = TCRgd: labels write a chain either way
_SUFFIX = re.compile(r"^[^\W\d_]{1,2}$")   # a word of one or two letters: an isoform or chain ("RA", "DR", "b")
_NUMBERED = re.compile(r"^([A-Z]+)(\d+)$")
# a key: "552nm" of "488/552nm PI (615/30)", a laser or filter; "740LP", a long-pass (short-, band-pass) filter
_CD_NAME = re.compile(r"^CD\d+[A-Za-z]{0,2}$", re.IGNORECASE)   # a cluster of differentiation: CD14, CD45RA, CD8a
_WAVELENGTH = re.compile(r"^\d+(?:NM|LP|SP|BP)$")
# scatter (also after its laser's wavelength: "405SSC", violet side scatter), time, a signal suffix
_DETECTOR = re.compile(r"^\d*(?:FSC|SSC|TIME)(?:[-_ ]?[AHW])?$|^.+-[AHW]$", re.IGNORECASE)
_NUMBERED_DETECTOR = re.compile(r"^([A-Z]+)\d+[AHW]?$")   # a key: "BL1", "FL2H" (a family, a number, a signal)


def key(name: str) -> str:
    """The comparison key of a name: upper case without hyphens, dots, spaces, underscores, slashes
    and trade-mark signs (™, ®: vendors' dye names carry them), a Greek chain letter as its Latin one
    (``CD8β`` = ``CD8b``)."""
    return _KEY_DROP.sub("", str(name).translate(_GREEK)).upper()


@dataclass(frozen=True)
class Vocabulary:
    """Alias table and word lists (see the module docstring). Immutable and picklable.

    ``canonical``: key of every spelling -> canonical name. ``fluorochromes``, ``filler``: keys.
    ``prefixes``: keys of prefixes dropped before a known marker. ``viability``: keys of the dyes
    that mark dead cells (the ``viability:`` list). ``source``: where it came from.
    ``numbered``: key of each dye family whose number names the dye -> its spelling (the
    ``numbered:`` list; module docstring). ``lineage``: key of a marker -> the canonical name of
    the marker whose positive gate it is drafted under ('' for none; the ``lineage:`` table).
    ``dim``: keys of the markers whose positives are dim (the ``dim:`` list). ``all_cells``: keys
    of the markers drafted on all live cells, not within the lymphocyte scatter gate (``all_cells:``).
    ``detectors``: keys of the detector families whose number names a detector (``detectors:``).
    ``exclusive``: pairs of canonical marker names a cell does not normally carry together (``exclusive:``).
    ``nucleic_acid``: keys of the DNA dyes that enter every cell, live or dead (``nucleic_acid:``; a
    ``numbered:`` family's key names each of its dyes).
    """

    canonical: Mapping[str, str] = field(default_factory=dict)
    fluorochromes: frozenset[str] = frozenset()
    filler: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    source: str = ""
    viability: frozenset[str] = frozenset()
    numbered: Mapping[str, str] = field(default_factory=dict)
    lineage: Mapping[str, str] = field(default_factory=dict)
    dim: frozenset[str] = frozenset()
    all_cells: frozenset[str] = frozenset()
    detectors: frozenset[str] = frozenset()
    exclusive: tuple[tuple[str, str], ...] = ()
    nucleic_acid: frozenset[str] = frozenset()

    def with_lineage(self, lineage: Mapping[str, str | None], source: str = "") -> "Vocabulary":
        """A new vocabulary whose lineage table has ``marker: parent`` entries added (they win over
        existing ones; a None or '' parent un-nests the marker). Raises StudyError naming ``source``
        when the table then nests a marker within itself (``CD4: CD3`` and ``CD3: CD4``)."""
        table = dict(self.lineage)
        for marker, parent in lineage.items():
            table[key(self.canonical_name(marker))] = self.canonical_name(parent) if parent else ""
        vocabulary = replace(self, lineage=table)
        for marker in lineage:
            chain = vocabulary.lineage_chain(marker)
            if chain and vocabulary.same(chain[-1], marker):
                raise StudyError(f"{source or 'vocabulary'}: lineage.{marker}: "
                                 f"{' -> '.join([str(marker), *chain])} nests a marker within itself")
        return vocabulary

    def lineage_parent(self, marker: str) -> str | None:
        """The marker within whose positive gate ``marker`` (any spelling) is gated, by the lineage
        table (canonical spelling), or None."""
        return self.lineage.get(key(self.canonical_name(marker))) or None

    def lineage_chain(self, marker: str) -> list[str]:
        """``marker``'s lineage parents, nearest first, up to the first without one or the first
        repeated (a cycle ends the chain with ``marker`` or the repeated marker)."""
        chain: list[str] = []
        parent = self.lineage_parent(marker)
        while parent is not None:
            chain.append(parent)
            if self.same(parent, marker) or any(self.same(parent, p) for p in chain[:-1]):
                break
            parent = self.lineage_parent(parent)
        return chain

    def with_aliases(self, aliases: Mapping[str, Iterable[str]], source: str = "") -> "Vocabulary":
        """A new vocabulary with more ``canonical: [spellings]`` entries (they win over existing ones)."""
        table = dict(self.canonical)
        for name, spellings in aliases.items():
            for spelling in (name, *spellings):
                table[key(spelling)] = str(name)
        return replace(self, canonical=table, source="; ".join(s for s in (self.source, source) if s))

    # -- reading labels ------------------------------------------------------------------
    def _words(self, text: str | None) -> list[str]:
        """A label's words (split at spaces and separators), a word of one or two letters joined to the
        name before it (:meth:`_is_suffix`): ``"HLA DR"`` -> ``["HLA-DR"]`` (a hyphen between letters,
        as such names are written), ``"CD8 b PE"`` -> ``["CD8b", "PE"]``; not the start of a
        fluorochrome written in two words (``"CD3 CF 405M"``)."""
        split = [w for w in _SEPARATORS.split(str(text or "").strip()) if w]
        words: list[str] = []
        for i, word in enumerate(split):
            dye = i + 1 < len(split) and key(word + split[i + 1]) in self.fluorochromes
            if words and not dye and self._is_suffix(word) and not self._not_marker(words[-1]) \
                    and key(words[-1]) not in self.prefixes:
                words[-1] += word if words[-1][-1].isdigit() else "-" + word
            else:
                words.append(word)
        return words

    def _is_suffix(self, word: str) -> bool:
        """True for a word that continues the name before it: one or two letters (an isoform written apart
        from its CD name, ``RA`` or ``RO``; a chain, ``CD8 b``, ``TCR gd``; a locus, ``HLA DR``) that is no fluorochrome, filler
        word, prefix, detector family, known marker, nor a signal letter (``A``, ``H``, ``W``)."""
        k = key(word)
        return (bool(_SUFFIX.match(word)) and k not in self.fluorochromes and k not in self.filler
                and k not in self.prefixes and k not in self.detectors and k not in ("A", "H", "W")
                and self.known(word) is None)

    def known(self, token: str) -> str | None:
        """The canonical marker a single token names (aliases, prefixes, a numbered dye), or None."""
        k = key(token)
        if not k:
            return None
        if k in self.canonical:
            return self.canonical[k]
        numbered = _NUMBERED.match(k)
        if numbered and numbered.group(1) in self.numbered:   # "Syto 41" -> SYTO41
            return self.numbered[numbered.group(1)] + str(int(numbered.group(2)))
        for prefix in self.prefixes:
            if k.startswith(prefix) and k[len(prefix):] in self.canonical:
                return self.canonical[k[len(prefix):]]
        return None

    def _known_pair(self, words: list[str], i: int) -> tuple[str | None, int]:
        """The known marker starting at ``words[i]`` and the words it takes: the word and the next
        joined when they name a marker (``"CD8 B"`` -> CD8b, the beta chain; ``"PD 1"`` -> PD1), which
        wins over the first word alone (CD8, another molecule), else the word."""
        joined = self.known(words[i] + words[i + 1]) if i + 1 < len(words) else None
        return (joined, 2) if joined is not None else (self.known(words[i]), 1)

    def _known_in(self, words: list[str]) -> str | None:
        for i, word in enumerate(words):
            found = self._known_pair(words, i)[0]
            if found is None and "-" in word:  # "CD3-FITC", "anti-CD3"
                parts = [p for p in word.split("-") if p]
                for j, part in enumerate(parts):
                    found = self.known(part) or (self.known(part + parts[j + 1]) if j + 1 < len(parts) else None)
                    if found:
                        break
            if found:
                return found
        return None

    def known_markers(self, text: str | None) -> tuple[str, ...]:
        """Every distinct known marker a label names, in order: each word, two adjacent words
        joined and each hyphen-separated part (or two adjacent parts joined) read through
        :meth:`known` (``"Foxp3-IgM"`` -> ``("FoxP3", "IgM")``; ``"CD279 (PD-1) BV605"`` -> ``("PD1",)``)."""
        words = self._words(text)
        found: dict[str, None] = {}
        for tokens in (words, *([p for p in w.split("-") if p] for w in words if "-" in w)):
            i = 0
            while i < len(tokens):
                marker, taken = self._known_pair(tokens, i)
                if marker is not None:
                    found.setdefault(marker, None)
                i += taken
        return tuple(found)

    def named_markers(self, text: str | None) -> tuple[str, ...]:
        """The markers a label names: :meth:`known_markers`, then, in each hyphen-joined word holding
        a known marker, each run of its other parts that is no fluorochrome, filler word, prefix,
        number, single letter or detector name, nor the start of a fluorochrome's name
        (``"CD8-KLRG1"`` -> ``("CD8", "KLRG1")``; ``"CD4-PerCP-Cy5.5"``, ``"anti-CD3"``,
        ``"CD56-PE-Texas Red"`` -> one marker), then the unknown marker before the first known one
        (:meth:`_leading_unknown`, ``"KLRG1 CD8"`` -> ``("CD8", "KLRG1")``) and, in a label of
        ``+``-joined parts, each part's marker (:meth:`marker_in`: ``"CD45RA+CD62L+"`` -> ``("CD45RA",
        "CD62L")``)."""
        found = dict.fromkeys(self.known_markers(text))
        words = self._words(text)
        for word in (w for w in words if "-" in w):
            for run in self._unknown_runs([p for p in word.split("-") if p]):
                found.setdefault(run, None)
        leading = self._leading_unknown(words)
        if leading is not None:
            found.setdefault(leading, None)
        if found:   # a CD name is a molecule, never a clone: "VIVID / CD14" (a dump channel), "CD4 CD45RA"
            for word in words:
                if _CD_NAME.match(word) and self.known(word) is None:
                    found.setdefault(word, None)
        joined = [part for part in str(text or "").split("+") if part.strip()]
        if len(joined) > 1:   # "CD45RA+CD62L": each part a stain, known or not
            for part in joined:
                marker = self.marker_in(part)
                if marker is not None:
                    found.setdefault(marker, None)
        return tuple(found)

    def _leading_unknown(self, words: list[str]) -> str | None:
        """The marker the words before the first one holding a known marker read as (free text,
        :meth:`_free_text`; ``"KLRG1 CD8"`` -> ``KLRG1``), None when they are only prefixes, single
        letters, fluorochromes (or the start of one's name), filler words, numbers, wavelengths
        (``"488/552nm PI"``) or detector names, or when no word holds a known marker. An unknown word
        after the known marker is its clone (``"CD3 OKT3"``); one before it is another stain."""
        first = next((i for i, w in enumerate(words)
                      if self.known_markers(w) or (i + 1 < len(words) and self.known(w + words[i + 1]))), 0)
        lead = [w for w in words[:first] if len(key(w)) >= 2 and key(w) not in self.prefixes and not _WAVELENGTH.match(key(w))]
        if not lead or any(f.startswith(key("".join(lead))) for f in self.fluorochromes):
            return None
        return self._free_text(lead)

    def _unknown_runs(self, parts: list[str]) -> list[str]:
        """The runs of ``parts`` (a hyphen-joined word split) beside a known marker that read as
        another, unknown marker (see :meth:`named_markers`); none when no part is a known marker."""
        known = [False] * len(parts)
        for i in range(len(parts)):
            if self.known(parts[i]):
                known[i] = True
            elif i + 1 < len(parts) and self.known(parts[i] + parts[i + 1]):   # "Ki-67"
                known[i] = known[i + 1] = True
        if not any(known):
            return []
        runs, current = [], []
        for part, is_known in zip([*parts, ""], [*known, True]):
            if not is_known:
                current.append(part)
            elif current:
                runs.append(current)
                current = []

        def plain(part: str) -> bool:
            return len(key(part)) < 2 or key(part) in self.prefixes or self._not_marker(part)

        def fluorochrome(run: list[str]) -> bool:   # "PE-Texas" of "CD56-PE-Texas Red" too
            joined = key("".join(run))
            return any(f.startswith(joined) for f in self.fluorochromes)

        return ["-".join(run) for run in runs if not all(plain(p) for p in run) and not fluorochrome(run)]

    def _is_detector(self, part: str) -> bool:
        """True for a detector name: scatter, time, a parameter with a signal suffix (``-A``, ``-H``,
        ``-W``) or a ``detectors:`` family word and number (``BL1``, ``FL2H``)."""
        numbered = _NUMBERED_DETECTOR.match(key(part))
        return bool(_DETECTOR.match(part)) or bool(numbered and numbered.group(1) in self.detectors)

    def _not_marker(self, word: str) -> bool:
        """True for a word that names no marker: empty, a number, a wavelength, a fluorochrome, a
        filler word or a detector name, or made of such parts joined by hyphens (``FL1-Height``: a
        detector and a signal word; ``488-BL1``: a laser and a detector), or one letter repeated, a
        label masked out (``xxxxxxxxx``: an anonymised export's $PnS)."""
        def plain(part: str) -> bool:
            k = key(part)
            return (not k or k in self.fluorochromes or k in self.filler or self._is_detector(part) or k.isdigit()
                    or bool(_WAVELENGTH.match(k)) or (len(k) >= 3 and len(set(k)) == 1))

        return plain(word) or all(plain(part) for part in word.split("-"))

    def _split_dyes(self, words: list[str]) -> set[int]:
        """The positions of the words that, joined with the next or the previous word, are a
        fluorochrome (``"CF 405M"``, ``"BV 421"``, ``"APC H7"``)."""
        found: set[int] = set()
        for i in range(len(words) - 1):
            if key(words[i] + words[i + 1]) in self.fluorochromes:
                found |= {i, i + 1}
        return found

    def _free_text(self, words: list[str]) -> str | None:
        dyes = self._split_dyes(words)
        for i, word in enumerate(words):
            if i in dyes or self._not_marker(word):
                continue
            parts = word.split("-")
            for cut in range(1, len(parts)):  # "Ki67-BV605" -> "Ki67"; "HLA-DR" stays
                if all(key(p) in self.fluorochromes or not key(p) for p in parts[cut:]) or key("".join(parts[cut:])) in self.fluorochromes:
                    word = "-".join(parts[:cut])
                    break
            return word.strip("-") or None
        return None

    def marker_in(self, text: str | None, *, free: bool = True) -> str | None:
        """The marker a label names: a known marker (canonical spelling), else free text (module docstring)."""
        if text is None:
            return None
        words = self._words(text)
        if not words:
            return None
        whole = self.known("".join(words))
        if whole is not None:
            return whole
        if len(self.named_markers(text)) > 1:   # "Foxp3-IgM", "CD8-TIGIT": a detector shared by two stains
            return None
        found = self._known_in(words)
        if found is not None or not free:
            return found
        return self._free_text(words)

    def canonical_name(self, name: str) -> str:
        """The canonical spelling of a marker name (an alias's canonical name; else the name as written)."""
        return self.known(name) or str(name).strip()

    def is_viability_dye(self, name: str) -> bool:
        """True when ``name`` (any spelling) is a dye that marks dead cells (``viability:`` list)."""
        return key(self.canonical_name(name)) in self.viability

    def is_nucleic_acid_dye(self, name: str) -> bool:
        """True when ``name`` (any spelling) is a DNA dye that enters every cell, live or dead, and
        so marks the nucleated cells, not the dead ones (``nucleic_acid:`` list; a ``numbered:``
        family in it names each of its dyes: SYTO41, SYTO9)."""
        canonical = key(self.canonical_name(name))
        numbered = _NUMBERED.match(canonical)
        return canonical in self.nucleic_acid or bool(numbered and numbered.group(1) in self.nucleic_acid
                                                      and numbered.group(1) in self.numbered)

    def is_dim(self, name: str) -> bool:
        """True when ``name`` (any spelling) is a marker whose positives are dim, a shoulder on the
        negatives (``dim:`` list): ``tilpheno new-study`` drafts its FMO gate with ``rule: relative``."""
        return key(self.canonical_name(name)) in self.dim

    def is_all_cells(self, name: str) -> bool:
        """True when ``name`` (any spelling) is a marker ``tilpheno new-study`` gates on all live cells
        rather than within its lymphocyte scatter gate (``all_cells:`` list): its positives and
        negatives differ in scatter (leukocytes and larger tumour cells)."""
        return key(self.canonical_name(name)) in self.all_cells

    def exclusive_pairs(self, markers: Iterable[str]) -> list[tuple[str, str]]:
        """The ``exclusive:`` pairs both of whose markers are among ``markers`` (any spelling), each as
        ``markers`` spell them, in the list's order."""
        markers = list(markers)
        pairs = []
        for a, b in self.exclusive:
            first, second = (next((m for m in markers if self.same(m, x)), None) for x in (a, b))
            if first is not None and second is not None:
                pairs.append((first, second))
        return pairs

    def same(self, a: str | None, b: str | None) -> bool:
        """True when ``a`` and ``b`` name the same marker."""
        if a is None or b is None:
            return False
        return key(self.canonical_name(a)) == key(self.canonical_name(b))


def _string_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise StudyError(f"{where}: must be a list of names")
    return [str(v) for v in value]


def parse_aliases(value: Any, where: str) -> dict[str, list[str]]:
    """Validate an ``aliases:`` mapping (canonical name -> list of spellings)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise StudyError(f"{where}: must be a mapping 'canonical name: [spellings]'")
    return {str(name): _string_list(spellings, f"{where}.{name}") for name, spellings in value.items()}


def read_vocabulary(path: str | Path) -> Vocabulary:
    """Read a vocabulary YAML file (keys ``aliases``, ``prefixes``, ``filler``, ``fluorochromes``,
    ``viability``, ``nucleic_acid``, ``numbered``, ``detectors``, ``lineage``, ``dim``, ``all_cells``, ``exclusive``)."""
    from tilpheno.io.yamlsafe import load_config

    path = Path(path)
    doc = load_config(path, "vocabulary", "aliases, prefixes, filler, fluorochromes, viability, nucleic_acid, numbered, "
                      "detectors, lineage, dim, all_cells, exclusive",
                      StudyError, ("aliases", "prefixes", "filler", "fluorochromes", "viability", "nucleic_acid", "numbered", "detectors",
                                   "lineage", "dim", "all_cells", "exclusive"),
                      empty_ok=True)[1]
    base = Vocabulary(
        fluorochromes=frozenset(key(f) for f in _string_list(doc.get("fluorochromes"), f"{path}: fluorochromes")),
        filler=frozenset(key(f) for f in _string_list(doc.get("filler"), f"{path}: filler")),
        prefixes=tuple(sorted({key(p) for p in _string_list(doc.get("prefixes"), f"{path}: prefixes")}, key=len, reverse=True)),
        viability=frozenset(key(v) for v in _string_list(doc.get("viability"), f"{path}: viability")),
        numbered={key(f): str(f).strip() for f in _string_list(doc.get("numbered"), f"{path}: numbered")},
        nucleic_acid=frozenset(key(d) for d in _string_list(doc.get("nucleic_acid"), f"{path}: nucleic_acid")),
        detectors=frozenset(key(f) for f in _string_list(doc.get("detectors"), f"{path}: detectors")),
    )
    vocabulary = base.with_aliases(parse_aliases(doc.get("aliases"), f"{path}: aliases"), str(path.name))
    vocabulary = replace(vocabulary, dim=frozenset(key(vocabulary.canonical_name(d))
                                                   for d in _string_list(doc.get("dim"), f"{path}: dim")),
                         all_cells=frozenset(key(vocabulary.canonical_name(m))
                                             for m in _string_list(doc.get("all_cells"), f"{path}: all_cells")),
                         exclusive=_pairs(vocabulary, doc.get("exclusive"), f"{path}: exclusive"))
    return vocabulary.with_lineage(parse_lineage(doc.get("lineage"), f"{path}: lineage"), str(path))


def _pairs(vocabulary: Vocabulary, value: Any, where: str) -> tuple[tuple[str, str], ...]:
    """Validate an ``exclusive:`` list of marker pairs (``[[CD4, CD8], ...]``), canonical names."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise StudyError(f"{where}: must be a list of marker pairs, e.g. [[CD4, CD8]]")
    pairs = []
    for i, item in enumerate(value):
        pair = _string_list(item, f"{where}[{i}]")
        if len(pair) != 2 or vocabulary.same(*pair):
            raise StudyError(f"{where}[{i}]: must be two different markers, e.g. [CD4, CD8]")
        pairs.append((vocabulary.canonical_name(pair[0]), vocabulary.canonical_name(pair[1])))
    return tuple(pairs)


def parse_lineage(value: Any, where: str) -> dict[str, str | None]:
    """Validate a ``lineage:`` mapping (marker -> the marker it is gated within, or empty for none)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise StudyError(f"{where}: must be a mapping 'marker: the marker it is gated within'")
    bad = next((m for m, p in value.items() if p is not None and not isinstance(p, (str, int, float))), None)
    if bad is not None:
        raise StudyError(f"{where}.{bad}: must be one marker name (or empty: not nested)")
    return {str(m): (str(p).strip() or None) if p is not None else None for m, p in value.items()}


def read_lineage(path: str | Path) -> dict[str, str | None]:
    """A lab's lineage file: a YAML mapping with one key, ``lineage:`` (as in the bundled
    vocabulary.yaml), whose entries win over the bundled table."""
    from tilpheno.io.yamlsafe import load_config, with_line

    path = Path(path)
    raw, doc = load_config(path, "lineage file", "lineage", StudyError, ("lineage",), empty_ok=True)
    try:
        return parse_lineage(doc.get("lineage"), f"{path}: lineage")
    except StudyError as exc:
        raise StudyError(with_line(str(exc), path, raw)) from None


@lru_cache(maxsize=1)
def default_vocabulary() -> Vocabulary:
    """The bundled vocabulary (``tilpheno/studies/vocabulary.yaml``)."""
    return read_vocabulary(STUDIES_DIR / "vocabulary.yaml")
