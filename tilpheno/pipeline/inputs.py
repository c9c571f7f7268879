"""The inputs of a ``process`` run: the manifest, the infused doses from an outcomes table, and the
manifest grouped into products."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from tilpheno.errors import TableError, closest_match
from tilpheno.study import Study
from tilpheno.vocabulary import Vocabulary

log = logging.getLogger(__name__)


def group_products(manifest) -> list[tuple[str, object]]:
    """Split a manifest DataFrame into (product_id, rows) pairs, sorted by product id (as text)."""
    required = {"file", "product_id", "tube", "role"}
    missing = sorted(required - set(manifest.columns))
    if missing:
        raise TableError(f"manifest: missing column(s) {', '.join(missing)}")
    frame = manifest.copy()
    frame["product_id"] = frame["product_id"].astype(str)
    groups = []
    for pid in sorted(frame["product_id"].unique()):
        rows = frame[frame["product_id"] == pid].sort_values(["tube", "role", "file"], kind="stable")
        groups.append((pid, rows.reset_index(drop=True)))
    return groups


def load_manifest(folder: str | Path, manifest_csv: str | Path | None = None, *, allow_outside: bool = False,
                  study: Study | None = None, tubes: Iterable[str] | None = None,
                  markers: Mapping[str, Iterable[str]] | None = None, panel=None, scan_rows=None,
                  detectors: Mapping[str, Sequence[str]] | None = None):
    """The manifest: ``read_manifest(csv)`` when given (relative file paths are under ``folder``;
    ``tubes``: the tube kinds it may name, default the study's; ``markers``: tube kind -> the
    markers its FMO rows may name; an FMO of another marker whose product's stained files fit no
    tube kind is refused with :func:`describe_unfit`'s line, ``detectors`` as :func:`unfit_stains`'s),
    else ``scan_folder(folder)`` (``panel``: the run's panel file rows, labels of the files). ``file`` holds paths usable from the working directory. Files
    must lie under ``folder`` (after resolving links) unless ``allow_outside``. A file that cannot
    be used (scanned: unreadable; a manifest's: missing) keeps its row, its reason in ``problem``:
    its product fails, the others are processed. ``scan_rows``: the rows of an earlier scan
    (``tilpheno.cache.ScanIndex``; ``scan_folder(rows=)``)."""
    from tilpheno.io.manifest import read_manifest, scan_folder

    folder = Path(folder)
    if manifest_csv is None:
        return scan_folder(folder, allow_outside=allow_outside, study=study, panel=panel, rows=scan_rows)
    explain = (listed_unfit(study, (markers, detectors or {}), panel, folder)
               if study is not None and markers is not None else None)
    frame = read_manifest(manifest_csv, base=folder, allow_outside=allow_outside, study=study, tubes=tubes,
                          markers=markers, keep_missing=True, unfit=explain)
    frame["file"] = [str(p if Path(p).is_absolute() else folder / p) for p in frame["file"]]
    return frame


def strategy_markers(strategies: Iterable) -> dict[str, tuple[str, ...]]:
    """Tube kind -> the markers of its strategies (each once, in order): the markers an FMO row of
    a manifest may name (``read_manifest(markers=)``)."""
    markers: dict[str, dict[str, None]] = {}
    for strategy in strategies:
        markers.setdefault(strategy.tube, {}).update(dict.fromkeys(strategy.markers))
    return {kind: tuple(names) for kind, names in markers.items()}


@dataclass(frozen=True)
class UnfitStain:
    """A stained file that does not fit the tube kind a scan gave it: its labels name markers the
    kind's strategies do not gate (``extra``) and lack some they do (``missing``), so ``process``
    fails it (marker not found); its panel is not the study's. ``kind``: the scanned tube kind."""

    file: str
    kind: str
    extra: tuple[str, ...]
    missing: tuple[str, ...]


def strategy_detectors(strategies: Iterable) -> dict[str, tuple[str, ...]]:
    """Tube kind -> the detectors its strategies gate as they are (a strategy's ``detectors``, e.g.
    a viability dye's ``BV421-A``: the marker a file's label names there is no strategy marker)."""
    detectors: dict[str, dict[str, None]] = {}
    for strategy in strategies:
        detectors.setdefault(strategy.tube, {}).update(dict.fromkeys(strategy.detectors))
    return {kind: tuple(names) for kind, names in detectors.items()}


def stained_file_markers(files: Iterable[str], vocabulary: Vocabulary, panel=None,
                         base: str | Path | None = None) -> dict[str, tuple[str, ...]]:
    """File -> the markers its labels name (sorted), read from its TEXT with ``panel`` (the run's
    panel file rows, :func:`tilpheno.panel.file_markers`), as ``scan`` reads them: the input of
    :func:`unfit_stains` for files listed rather than scanned. A relative path is read under
    ``base`` (a manifest's folder), keyed as given. A file that cannot be read is left out (logged:
    its own read error is said where the file is used)."""
    from tilpheno.errors import FCSReadError
    from tilpheno.io.fcs import read_fcs_metadata
    from tilpheno.io.files import display_name
    from tilpheno.panel import file_markers

    markers: dict[str, tuple[str, ...]] = {}
    for file in files:
        try:
            fcs = read_fcs_metadata(Path(base or "", file), checksum=False)
        except FCSReadError as exc:
            log.info("%s: markers not read for the tube-kind check: %s", display_name(file), exc)
            continue
        markers[file] = tuple(sorted(file_markers(fcs, vocabulary, panel)))
    return markers


def unfit_stains(manifest, file_markers: Mapping[str, Iterable[str]], kind_markers: Mapping[str, Iterable[str]],
                 vocabulary: Vocabulary, kind_detectors: Mapping[str, Sequence[str]] | None = None) -> list[UnfitStain]:
    """The stained files of ``manifest`` (role ``stain``) whose markers (``file_markers``: file ->
    markers its labels name, as ``scan_folder`` reads them) are not those of their tube kind
    (``kind_markers``: each tube kind of the study -> its strategies' markers,
    :func:`strategy_markers`): the file names a marker its kind does not gate and lacks one it does,
    or its kind is none of the study's (``unknown``: every marker it names is ``extra``). A kind
    whose strategies name no marker (a Gating-ML or FlowJo tree) fits any file. A file whose labels
    name no marker is left out (an export without $PnS: its markers are a panel file's to name, not
    another study's). ``kind_detectors`` (:func:`strategy_detectors`): a kind that gates N
    detectors as they are may see N markers on them that it does not name, so a file with no more
    than N such markers fits it (a missing label of that kind is a panel file's case). In manifest order."""
    unfit = []
    for row in manifest[manifest["role"] == "stain"].itertuples(index=False):
        own = tuple(file_markers.get(row.file, ()))
        wanted = tuple(kind_markers.get(row.tube, ()))
        extra = tuple(m for m in own if not any(vocabulary.same(m, w) for w in wanted))
        missing = tuple(w for w in wanted if not any(vocabulary.same(w, m) for m in own))
        unnamed = len((kind_detectors or {}).get(row.tube, ()))   # detectors gated as they are
        if own and len(extra) > unnamed and (missing or row.tube not in kind_markers):
            unfit.append(UnfitStain(str(row.file), str(row.tube), extra, missing))
    return unfit


def describe_unfit(unfit: Sequence[UnfitStain], study: Study, folder: str | Path, refused: bool = False,
                   written: tuple[str, Sequence[str]] | None = None) -> str:
    """One line on stained files that fit no tube kind of ``study`` (:func:`unfit_stains`), as
    ``scan`` and ``process`` say it ('' for none): how many, the first three with the markers each
    has that its kind does not gate and those it lacks, what ``process`` does (fails their products;
    ``refused``: the manifest listing them is refused by ``scan`` and ``process``, nothing run;
    ``written``: the manifest ``scan -o`` writes and the FMO markers it lists that their kinds do not
    gate, for which ``process --manifest`` of it refuses it), and the way out:
    ``tilpheno new-study FOLDER -o DIR`` (``folder`` as the user named it), then ``--study DIR/study.yaml``."""
    if not unfit:
        return ""
    shown = "; ".join(f"{Path(u.file).name} ({f'read as {u.kind}: has' if u.missing else 'no tube kind:'} "
                      f"{', '.join(u.extra)}{', not gated there; lacks ' + ', '.join(u.missing) if u.missing else ''})"
                      for u in unfit[:3])
    more = f"; and {len(unfit) - 3} more" if len(unfit) > 3 else ""
    them = "them" if len(unfit) > 1 else "it"
    fate = "scan and process refuse this manifest" if refused else f"process fails {them}"
    if written is not None and written[1]:
        fate = (f"process {folder} fails {them}; process --manifest {written[0]} refuses the manifest written here "
                f"(nothing run): it lists FMO controls of {', '.join(written[1])}, which study {study.name} does not gate")
    return (f"{len(unfit)} stained file{'s' if len(unfit) > 1 else ''} fit{'' if len(unfit) > 1 else 's'} no tube "
            f"kind of study {study.name} ({', '.join(study.tubes)}): {shown}{more}; {fate}. Another lab's panel: tilpheno new-study "
            f"{folder} -o DIR drafts a study of the files' own tube kinds, then scan or process with --study "
            "DIR/study.yaml")


Kinds = tuple[Mapping[str, Iterable[str]], Mapping[str, Sequence[str]]]
"""A study's tube kinds as its strategies gate them: kind -> its strategies' markers
(:func:`strategy_markers`), and kind -> the detectors they gate as they are (:func:`strategy_detectors`)."""


def listed_unfit_stains(rows, study: Study, kinds: Kinds, panel, base: str | Path | None = None) -> list[UnfitStain]:
    """:func:`unfit_stains` of the stained files among a manifest's ``rows`` (files as listed, a
    relative one under ``base``), their labels read from their TEXT with ``panel``
    (:func:`stained_file_markers`; a file that cannot be read is left out, logged)."""
    kind_markers, kind_detectors = kinds
    stains = rows[rows["role"] == "stain"]
    labels = stained_file_markers(map(str, stains["file"]), study.vocabulary, panel, base=base)
    return unfit_stains(stains, labels, kind_markers, study.vocabulary, kind_detectors)


def listed_unfit(study: Study, kinds: Kinds, panel, folder: str | Path):
    """``read_manifest(unfit=)``: a function of a manifest's rows (files as listed, under ``folder``)
    giving :func:`describe_unfit`'s line on those of its stained files that fit no tube kind of
    ``study`` ('' when all fit; saying the manifest is refused: it is): :func:`listed_unfit_stains`."""
    return lambda rows: describe_unfit(listed_unfit_stains(rows, study, kinds, panel, folder), study, folder,
                                       refused=True)


def unmatched_outcomes(manifest, outcomes) -> list[str]:
    """Product ids of the outcomes table that match no product of the manifest (sorted)."""
    products = set(manifest["product_id"].astype(str))
    return sorted({str(p) for p in outcomes["product_id"].dropna()} - products)


def _did_you_mean(ids: Sequence[str], choices: Iterable[str]) -> str:
    """``a (did you mean b?), c``: each id with the closest of ``choices`` (:func:`closest_match`)."""
    choices = set(map(str, choices))
    hints = []
    for pid in ids:
        close = closest_match(pid, choices)
        hints.append(f"{pid} (did you mean {close}?)" if close else pid)
    return ", ".join(hints)


def products_without_dose(manifest) -> list[str]:
    """Product ids of ``manifest`` (with :func:`attach_doses`'s ``til_dose_cells``, cells) that have
    no dose on any of their rows, sorted: their absolute doses (``*_dose_cells``) stay empty."""
    import pandas as pd

    dosed = pd.to_numeric(manifest["til_dose_cells"], errors="coerce").notna()
    return sorted(set(manifest["product_id"].astype(str)) - set(manifest.loc[dosed, "product_id"].astype(str)))


def attach_doses(manifest, outcomes):
    """Add each product's infused TIL number (``til_dose_cells``, cells) from an outcomes table.

    ``outcomes`` is a validated outcomes DataFrame (``tilpheno.io.outcomes.read_outcomes``). A
    dose already in the manifest wins; products without a dose stay NaN (no absolute doses).
    """
    import pandas as pd

    doses = outcomes.dropna(subset=["til_dose_cells"]).set_index("product_id")["til_dose_cells"]
    frame = manifest.copy()
    from_outcomes = frame["product_id"].astype(str).map(doses)
    if "til_dose_cells" in frame.columns:
        given = pd.to_numeric(frame["til_dose_cells"], errors="coerce")
        frame["til_dose_cells"] = given.where(given.notna(), from_outcomes)
    else:
        frame["til_dose_cells"] = from_outcomes
    return frame
