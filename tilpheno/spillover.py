"""Spillover from single-stain controls: which control is which, the matrix, its spreading (SSM).

Convention as :mod:`tilpheno.compensation`: ``S[i, j]`` = fraction of fluorochrome ``i``'s signal
(row; named by its primary detector) seen in detector ``j`` (column), diagonal 1, so that
``compensated = raw @ inv(S)``. Written in the FlowJo/FlowKit CSV layout (a header row of detector
names, one row per fluorochrome in the same order), which ``process --compensation`` reads.

Which control stains which detector (:func:`identify_controls`): a ``--controls`` CSV
(``file,detector``; an empty detector marks the unstained control) wins; else the file name or
``TUBE NAME`` ("Compensation Controls_FITC Stained Control", "unstained"/"blank"/"no stain" for the
unstained control): the detector ($PnN without ``-A``/``-H``/``-W``) whose name appears there as a
whole word, the longest such name winning ("PE-Cy7" over "PE"); else the one fluorescence detector
with a ``$PnS`` label.

Estimation (:func:`estimate_spillover`), per control with primary detector ``p``:

1. **Events used**: the control's (and the unstained control's) main scatter population: events
   within ``SCATTER_SD`` (2.5) robust SDs (1.4826 x MAD) of the median of log10 FSC-A and of
   log10 SSC-A (when those channels exist), without events at the top of any detector's range
   (>= ``$PnR`` - 1: saturated).
2. **Negative population**: the unstained control's events when there is one (universal negative,
   as FlowJo's); else the control's own events below Otsu's threshold of ``asinh(x_p / 150)``
   (bead files and cells with a negative part).
3. **Positive population**: events with ``x_p`` above the 99.5th percentile of the negative
   population (and above Otsu's threshold when the negative is internal). Checks: fewer than
   ``min_positive`` (100) events -> error "too small"; stain index ``(median_pos(x_p) -
   median_neg(x_p)) / (2 rSD_neg(x_p))`` below ``min_stain_index`` (3) -> error "too dim"
   (rSD = half the 15.87th-84.13th percentile distance).
4. **Spillover slope** into every other detector ``j``: the median over the positive events of
   ``(y_j - median_neg(y_j)) / (x_p - median_neg(x_p))`` (median of per-event ratios: robust to
   outliers and to the spread of the positive population). Its standard error:
   ``1.2533 x 1.4826 x MAD(ratios) / sqrt(n_pos)`` (asymptotic SE of a median). A slope below
   ``-max(neg_tolerance, 4 SE)`` (default tolerance 0.01) is an error: "negative spillover beyond
   noise".
5. **Matrix**: rows/columns = the controls' primary detectors in the files' ``$PnN`` order. Two
   controls on one detector, or a matrix whose condition number exceeds ``MAX_CONDITION`` (100:
   compensation would amplify noise more than 100-fold; real matrices are near 1-10),
   are errors naming the controls.
6. **Spillover spreading matrix** (Nguyen et al. 2013, Cytometry A 83:306): the controls'
   positive and negative events compensated with the new matrix; ``SSM[i, j] = sqrt(max(0,
   rSD_pos(j)^2 - rSD_neg(j)^2)) / sqrt(median_pos(i) - median_neg(i))`` with rSD = the 84.13th
   minus the 50th percentile; units sqrt(linear units); diagonal NaN.

Every problem raises :class:`tilpheno.errors.CompensationError` with a one-line message naming the
control file.
"""
from __future__ import annotations

import csv
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from tilpheno.compensation import Spillover, compensate
from tilpheno.errors import CompensationError, FCSReadError, TableError
from tilpheno.quantiles import OrderStatistics, sorted_median

SCATTER_SD = 2.5
MAX_CONDITION = 100.0
ASINH_COFACTOR = 150.0
_UNSTAINED = re.compile(r"(?:^|[^A-Za-z])(unstained|unstain|blank|no[ _-]?stain|negative control)(?:[^A-Za-z]|$)",
                        re.IGNORECASE)
_SUFFIX = re.compile(r"-[AHW]$")


@dataclass(frozen=True)
class Control:
    """A control file and the detector its fluorochrome is measured in (None = unstained)."""

    file: str
    detector: str | None
    given_at: str = field(default="", compare=False)
    """Where ``detector`` was given: a controls CSV's cell (``controls.csv: row 3, column 'detector'``);
    empty when it was inferred from the file."""


@dataclass(frozen=True, eq=False)
class ControlText:
    """What a control's TEXT segment said when the estimate read it: its ``keywords`` and its
    ``channels`` table (``n``, ``pnn``, ``pnr``, ``png``, ``pne``, ...: :class:`tilpheno.io.fcs.FCSFile`),
    the acquisition settings :func:`tilpheno.control_settings.compare_settings` compares (no events)."""

    keywords: dict[str, str]
    channels: pd.DataFrame

    @classmethod
    def of(cls, fcs) -> "ControlText":
        return cls(dict(fcs.keywords), fcs.channels.copy())


@dataclass
class SpilloverEstimate:
    """Result of :func:`estimate_spillover`.

    ``spillover``: the matrix (``source`` names the controls' folder). ``standard_errors``: SE of
    each coefficient (DataFrame like the matrix, diagonal 0). ``ssm``: spillover spreading matrix
    (sqrt(linear units), diagonal NaN). ``controls``: one row per control: ``file, detector,
    n_events, n_used, negative`` (``unstained`` or ``internal``), ``n_negative, n_positive,
    median_negative, median_positive, stain_index``.
    """

    spillover: Spillover
    standard_errors: pd.DataFrame
    ssm: pd.DataFrame
    controls: pd.DataFrame
    digests: dict[str, str] = field(default_factory=dict)   # control file -> SHA-256 of the bytes read (digest_of_read)
    texts: dict[str, ControlText] = field(default_factory=dict)   # control file -> its TEXT as read here


def write_spillover_csv(spillover: Spillover, path: str | Path) -> None:
    """Write ``spillover`` in the FlowJo/FlowKit CSV layout (header row of detector names, one row
    per fluorochrome in the same order), atomically; ``compensation.read_spillover_csv`` reads it."""
    from tilpheno.io.atomic import write_csv

    write_csv(path, pd.DataFrame(spillover.matrix, columns=list(spillover.detectors)))


# --------------------------------------------------------------------------------------------
# which control is which
# --------------------------------------------------------------------------------------------


def _detector_pattern(detector: str) -> re.Pattern:
    base = _SUFFIX.sub("", detector)
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", base) if p]
    body = r"[-. ]?".join(re.escape(p) for p in parts)
    return re.compile(rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])", re.IGNORECASE)


def detector_from_text(text: str, detectors: Sequence[str]) -> str | None:
    """The detector named in ``text`` as a whole word ("FITC" -> ``FITC-A``), longest name first;
    ``-A`` detectors are preferred over ``-H``/``-W`` ones of the same name."""
    text = text.replace("_", " ")
    hits = [d for d in detectors if _detector_pattern(d).search(text)]
    if not hits:
        return None
    return max(hits, key=lambda d: (len(_SUFFIX.sub("", d)), d.endswith("-A")))


def fluorescence_detectors(fcs) -> list[str]:
    """$PnN of the fluorescence channels (not scatter, not time)."""
    from tilpheno.panel import is_scatter_or_time

    return [n for n in fcs.channel_names if not is_scatter_or_time(n)]


def identify_control(fcs) -> Control:
    """A control's role from its file name, ``TUBE NAME`` and ``$PnS`` (module docstring; a ``$PnS``
    copying its ``$PnN``, as MACSQuant and CyFlow write, is no label)."""
    from tilpheno.panel import labelled as panel_labelled

    path = Path(fcs.path)
    texts = [path.stem, fcs.keywords.get("TUBE NAME", ""), Path(fcs.keywords.get("$FIL", "")).stem]
    if any(_UNSTAINED.search(t.replace("_", " ")) for t in texts if t):
        return Control(str(path), None)
    detectors = fluorescence_detectors(fcs)
    for t in texts:
        if t:
            found = detector_from_text(t, detectors)
            if found:
                return Control(str(path), found)
    labelled = [str(r.pnn) for r in fcs.channels.itertuples()
                if str(r.pnn) in detectors and panel_labelled(str(r.pnn), str(r.pns))]
    if len(labelled) == 1:
        return Control(str(path), labelled[0])
    raise CompensationError(
        f"{path}: cannot tell which detector this single-stain control stains (no detector name in the file"
        f" name or TUBE NAME, {len(labelled)} labelled detectors); list it in a controls CSV (file,detector)")


def read_controls_csv(path: str | Path, base: str | Path | None = None) -> list[Control]:
    """``file,detector`` rows (an empty detector = the unstained control); relative files under
    ``base`` (default the CSV's folder). Read as the manifest's text is
    (:func:`tilpheno.io.workbook.text_rows`: a title above the header, blank lines, semicolons or
    tabs, UTF-8/UTF-16/Windows-1252), and every error is a TableError naming the place as the
    other tables do: ``<file>: row R, column 'C'``, R the line of the file."""
    from tilpheno.io.workbook import decode_text, place, table_frame, text_rows

    path = Path(path)
    base = Path(base) if base is not None else path.parent
    source = str(path)
    try:
        header_line, _, rows = text_rows(decode_text(path.read_bytes(), source), ("file", "detector"))
    except (OSError, csv.Error) as exc:
        raise TableError(f"{path}: cannot read the controls CSV ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    frame = table_frame(rows, header_line, lambda line: place(source, line), ("file", "detector"), keep_bytes=["file"],
                        codes=["detector"])
    missing = [c for c in ("file", "detector") if c not in frame.columns]
    if missing:
        raise TableError(f"{place(source, header_line)}: missing column(s) {missing}; found {list(frame.columns)}")
    out = []
    for line, row in zip(frame.index, frame.itertuples(index=False)):
        written = str(row.file).strip()
        if not written:
            raise TableError(f"{place(source, line, 'file')}: empty value")
        file = Path(written)
        resolved = file if file.is_absolute() else base / file
        if not resolved.is_file():
            raise TableError(f"{place(source, line, 'file')}: {written!r} does not exist (looked for {resolved})")
        detector = str(row.detector).strip()
        out.append(Control(str(resolved), detector or None, place(source, line, "detector")))
    if not out:
        raise TableError(f"{place(source, header_line)}: no control below the header (one row per control: file, detector)")
    if not any(c.detector for c in out):
        raise TableError(f"{path}: no single-stain control: the detector of every row ({len(out)}) is empty, which "
                         "marks the unstained control; give each single-stain control's detector")
    return out


def identify_controls(files: Sequence[str | Path], controls_csv: str | Path | None = None) -> list[Control]:
    """Controls for ``files`` (or exactly the rows of ``controls_csv`` when given)."""
    from tilpheno.io.fcs import read_fcs_metadata

    if controls_csv is not None:
        return read_controls_csv(controls_csv)
    out = []
    for f in files:
        try:
            fcs = read_fcs_metadata(f, checksum=False)
        except FCSReadError as exc:
            raise CompensationError(str(exc)) from None
        out.append(identify_control(fcs))
    return out


def controls_in_folder(folder: str | Path, controls_csv: str | Path | None = None) -> list[Control]:
    """The controls of a folder: the ``--controls`` CSV's rows (relative to the CSV), else every FCS file found."""
    from tilpheno.io.manifest import list_fcs_files

    folder = Path(folder)
    if controls_csv is not None:
        return read_controls_csv(controls_csv, base=Path(controls_csv).parent)
    if not folder.is_dir():
        raise TableError(f"{folder}: not a folder")
    files = list_fcs_files(folder)
    if not files:
        raise TableError(f"{folder}: no FCS files")
    return identify_controls(files)


# --------------------------------------------------------------------------------------------
# estimation
# --------------------------------------------------------------------------------------------


def _rsd(x: np.ndarray) -> float:
    lo, hi = np.percentile(x, [15.87, 84.13])
    return float(hi - lo) / 2.0


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (maximal between-class variance) of ``values`` on a histogram of ``bins``."""
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = np.divide(m0, w0, out=np.zeros_like(m0, dtype=float), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0, dtype=float), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def _main_scatter(fcs, detectors: Sequence[str]) -> np.ndarray:
    """Bool mask: the main scatter population, no saturated events (step 1)."""
    names = list(fcs.channel_names)
    ev = fcs.events
    keep = np.all(np.isfinite(ev), axis=1)
    ranges = dict(zip(map(str, fcs.channels["pnn"]), fcs.channels["pnr"].astype(float)))
    for d in detectors:
        top = ranges.get(d, 0.0)
        if top and top > 1:
            keep &= ev[:, names.index(d)] < top - 1
    for s in ("FSC-A", "SSC-A"):
        if s in names:
            x = np.log10(np.clip(ev[:, names.index(s)], 1.0, None))
            med = np.median(x[keep]) if keep.any() else 0.0
            mad = 1.4826 * np.median(np.abs(x[keep] - med)) if keep.any() else 0.0
            if mad > 0:
                keep &= np.abs(x - med) <= SCATTER_SD * mad
    return keep


def _not_a_channel(control: Control, fcs) -> CompensationError:
    """The error for a control whose detector is not a channel of its own file ``fcs``: named where
    the detector was given (the controls CSV's row and column), with the file's fluorescence channels."""
    name = Path(control.file).name
    return CompensationError(f"{control.given_at or name}: detector {control.detector!r} is not a channel of {name} "
                             f"(its fluorescence channels: {', '.join(fluorescence_detectors(fcs))})")


def _read(control: Control, detectors: Sequence[str]):
    """The control's FCS file; CompensationError when its own detector or one of ``detectors`` is not a channel."""
    from tilpheno.io.fcs import read_fcs

    try:
        fcs = read_fcs(control.file)
    except FCSReadError as exc:
        raise CompensationError(str(exc)) from None
    if control.detector and control.detector not in fcs.channel_names:
        raise _not_a_channel(control, fcs)
    missing = [d for d in detectors if d not in fcs.channel_names]
    if missing:
        raise CompensationError(f"{control.file}: control lacks detector(s) {missing}; channels are {fcs.channel_names}")
    return fcs


def _columns(fcs, mask: np.ndarray, detectors: Sequence[str]) -> np.ndarray:
    names = list(fcs.channel_names)
    return fcs.events[np.ix_(mask, np.array([names.index(d) for d in detectors], dtype=np.intp))]


def estimate_spillover(
    controls: Sequence[Control],
    *,
    min_positive: int = 100,
    min_stain_index: float = 3.0,
    neg_tolerance: float = 0.01,
    source: str = "single-stain controls",
) -> SpilloverEstimate:
    """The spillover matrix (and SSM) from single-stain controls (module docstring for the method).
    ``digests`` of the result: each control file's SHA-256, of the bytes read here (hashed just after
    its read: ``changed: ...`` if it was replaced meanwhile); ``texts``: each one's TEXT as read here."""
    from tilpheno.io.fcs import digest_of_read

    digests: dict[str, str] = {}
    texts: dict[str, ControlText] = {}

    def read(control: Control, detectors: Sequence[str]):
        fcs = _read(control, detectors)
        digests[str(control.file)] = digest_of_read(fcs)
        texts[str(control.file)] = ControlText.of(fcs)
        return fcs

    stained = [c for c in controls if c.detector]
    unstained = [c for c in controls if not c.detector]
    if not stained:
        raise CompensationError(f"{source}: no single-stain control among {len(controls)} file(s)")
    if len(unstained) > 1:
        raise CompensationError(f"{source}: more than one unstained control: {', '.join(Path(c.file).name for c in unstained)}")
    by_detector: dict[str, Control] = {}
    for detector, c in [(c.detector, c) for c in stained if c.detector]:
        if detector in by_detector:
            raise CompensationError(f"{Path(c.file).name}: detector {detector} already has control "
                                    f"{Path(by_detector[detector].file).name}; one control per detector")
        by_detector[detector] = c
    first = read(stained[0], [d for d in [stained[0].detector] if d])
    order = [n for n in first.channel_names if n in by_detector]
    unknown = [d for d in by_detector if d not in order]
    if unknown:
        _read(by_detector[unknown[0]], [])   # not a channel of its own file either: named where it was given
        raise CompensationError(f"{Path(by_detector[unknown[0]].file).name}: detector {unknown[0]} is not a channel of "
                                f"{Path(first.path).name} ({first.channel_names})")
    k = len(order)
    negative_ref = None
    if unstained:
        fcs = read(unstained[0], order)
        negative_ref = _columns(fcs, _main_scatter(fcs, order), order)
        if len(negative_ref) < min_positive:
            raise CompensationError(f"{unstained[0].file}: only {len(negative_ref)} events in the unstained control's main "
                                    f"scatter population (< {min_positive})")
    matrix = np.eye(k)
    se = np.zeros((k, k))
    rows, populations = [], {}
    for i, det in enumerate(order):
        control = by_detector[det]
        fcs = first if control is stained[0] else read(control, order)
        mask = _main_scatter(fcs, order)
        data = _columns(fcs, mask, order)
        name = Path(control.file).name
        x = data[:, i]
        if negative_ref is not None:
            neg = negative_ref
            cut = float(np.percentile(neg[:, i], 99.5))
            kind = "unstained"
        else:
            scaled = np.arcsinh(x / ASINH_COFACTOR)
            otsu = float(np.sinh(otsu_threshold(scaled)) * ASINH_COFACTOR) if x.size else 0.0
            neg = data[x <= otsu]
            cut = max(otsu, float(np.percentile(neg[:, i], 99.5))) if len(neg) else otsu
            kind = "internal"
        pos = data[x > cut]
        if len(neg) < min_positive:
            raise CompensationError(f"{control.file}: only {len(neg)} negative events ({kind}) (< {min_positive}); "
                                    "add an unstained control or use beads with a negative population")
        if len(pos) < min_positive:
            raise CompensationError(f"{control.file}: positive population too small: {len(pos)} events above "
                                    f"{cut:.0f} in {det} (< {min_positive})")
        neg_med = np.median(neg, axis=0)
        pos_med = np.median(pos, axis=0)
        rsd = _rsd(neg[:, i])
        stain_index = float((pos_med[i] - neg_med[i]) / (2.0 * rsd)) if rsd > 0 else float("inf")
        if stain_index < min_stain_index:
            # without an unstained control a control with no negative events (every cell stained)
            # is split in two by Otsu's threshold: its "negative" half is bright, its stain index low
            hint = (f" (its negative population is its own events below Otsu's threshold: {len(neg)} events, median "
                    f"{neg_med[i]:.0f}; a control without negative events needs an unstained control)"
                    if kind == "internal" else "")
            raise CompensationError(f"{control.file}: positive population too dim in {det}: stain index "
                                    f"{stain_index:.2f} < {min_stain_index:g}{hint}")
        dx = pos[:, i] - neg_med[i]
        keep = dx > 0
        for j in range(k):
            if j == i:
                continue
            ratio = (pos[keep, j] - neg_med[j]) / dx[keep]
            slope = float(np.median(ratio))
            err = 1.2533 * 1.4826 * float(np.median(np.abs(ratio - slope))) / math.sqrt(ratio.size)
            if slope < -max(neg_tolerance, 4.0 * err):
                raise CompensationError(f"{control.file}: negative spillover beyond noise into {order[j]}: {slope:.4f} "
                                        f"(SE {err:.4f}); check the control's negative population and the detector it stains")
            matrix[i, j], se[i, j] = slope, err
        populations[i] = (pos, neg)
        rows.append({"file": name, "detector": det, "n_events": int(fcs.n_events), "n_used": int(mask.sum()),
                     "negative": kind, "n_negative": int(len(neg)), "n_positive": int(len(pos)),
                     "median_negative": float(neg_med[i]), "median_positive": float(pos_med[i]),
                     "stain_index": stain_index})
    condition = float(np.linalg.cond(matrix))
    if not np.isfinite(condition) or condition > MAX_CONDITION:
        names = ", ".join(Path(by_detector[d].file).name for d in order)
        raise CompensationError(f"{source}: spillover matrix is singular (condition number {condition:.3g}) from controls {names}")
    spill = Spillover(tuple(order), matrix, source)
    ssm = _spreading(spill, populations)
    return SpilloverEstimate(spill, pd.DataFrame(se, index=order, columns=order), ssm,
                             pd.DataFrame(rows), digests, texts)


def _spreading(spill: Spillover, populations: dict[int, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """Spillover spreading matrix (module docstring, step 6)."""
    order = list(spill.detectors)
    k = len(order)
    ssm = np.full((k, k), np.nan)
    for i, (pos, neg) in populations.items():
        cp, cn = compensate(pos, order, spill), compensate(neg, order, spill)
        delta = float(np.median(cp[:, i]) - np.median(cn[:, i]))
        if delta <= 0:
            continue
        for j in range(k):
            if j == i:
                continue
            sp = float(np.percentile(cp[:, j], 84.13) - np.median(cp[:, j]))
            sn = float(np.percentile(cn[:, j], 84.13) - np.median(cn[:, j]))
            ssm[i, j] = math.sqrt(max(0.0, sp * sp - sn * sn)) / math.sqrt(delta)
    return pd.DataFrame(ssm, index=order, columns=order)


# --------------------------------------------------------------------------------------------
# checking a matrix on a compensated stained tube
# --------------------------------------------------------------------------------------------


RESIDUAL_TOLERANCE = 0.04
RESIDUAL_MIN_LEVER = 1000.0   # compensated linear units
RESIDUAL_MAX_EVENTS = 20_000


NEGATIVE_COEFFICIENT = -0.01   # as estimate_spillover's neg_tolerance


def negative_coefficients(spillover: Spillover, limit: float = NEGATIVE_COEFFICIENT) -> list[tuple[str, str, float]]:
    """``(source, target, coefficient)`` of the off-diagonal matrix coefficients below ``limit``:
    light cannot be negative, so such a coefficient is an error in the matrix (a stained tube may
    not show it: the residual check needs negatives of the target that are bright in the source)."""
    m = np.asarray(spillover.matrix, dtype=np.float64)
    det = list(spillover.detectors)
    return [(det[i], det[j], float(m[i, j])) for i in range(m.shape[0]) for j in range(m.shape[1])
            if i != j and m[i, j] < limit]


def _lever(x: np.ndarray, *, low_fraction: float, bright_fraction: float) -> float:
    """Difference of the source medians of the brightest ``bright_fraction`` and the dimmest
    ``low_fraction`` of ``x`` (finite; the events' span in that source): ``np.median`` of the values
    at or above, and at or below, their ``np.quantile`` cuts, read off ``x``'s order (its values at or
    below a cut are a head of it, at or above one a tail): the cuts' and the two medians' order
    statistics each selected when asked (:class:`OrderStatistics`; 1.5-2x less CPU at 20,000 values
    than one sort, itself 3-4x less than ``np.quantile``'s two-cut selection and two masked medians)."""
    order = OrderStatistics.of(x)
    lo_cut, hi_cut = order.quantile([low_fraction, 1.0 - bright_fraction])
    bright = order.middle(order.count_below(hi_cut), order.size)
    dim = order.middle(0, order.count_at_or_below(lo_cut))
    return float(sorted_median(bright) - sorted_median(dim))


def residual_events(n_events: int, mask: np.ndarray | None = None, max_events: int = RESIDUAL_MAX_EVENTS) -> np.ndarray:
    """Indices of the events :func:`residual_spillover` uses: those of ``mask`` (default all
    ``n_events``), every k-th of them when more than ``max_events`` (k the smallest that leaves at
    most that many; deterministic)."""
    index = np.arange(n_events) if mask is None else np.flatnonzero(mask)
    if index.size > max_events:
        index = index[:: -(-index.size // max_events)]
    return index


def union_events(n_events: int, *indices: np.ndarray) -> np.ndarray:
    """The sorted union of event indices into ``n_events`` events, as ``np.union1d`` gives it, by one
    bool mask instead of sorting the concatenated indices."""
    chosen = np.zeros(n_events, dtype=bool)
    for index in indices:
        chosen[index] = True
    return np.flatnonzero(chosen)


def events_within(index: np.ndarray, events: np.ndarray) -> np.ndarray:
    """Bool mask over ``index`` (ascending event indices) of ``events`` (ascending, each one of
    ``index``): the positions at which :func:`residual_spillover` finds those events when given
    the values at ``index`` only."""
    chosen = np.zeros(index.size, dtype=bool)
    chosen[np.searchsorted(index, events)] = True
    return chosen


def residual_spillover(
    compensated: dict[str, np.ndarray],
    *,
    negative_cuts: dict[str, float] | None = None,
    targets: Sequence[str] | None = None,
    mask: np.ndarray | None = None,
    source_masks: Mapping[str, np.ndarray] | None = None,
    tolerance: float = RESIDUAL_TOLERANCE,
    low_fraction: float = 0.2,
    bright_fraction: float = 0.05,
    min_events: int = 100,
    min_lever: float = RESIDUAL_MIN_LEVER,
    max_events: int = RESIDUAL_MAX_EVENTS,
) -> pd.DataFrame:
    """Residual spillover left after compensation, per ordered pair of detectors (source, target).

    ``compensated``: detector -> compensated linear values of one tube (``mask``: the events to
    use, e.g. the live lymphocytes). ``source_masks``: detector -> the events on which that
    detector is checked as a source instead (e.g. the singlets for a viability dye, bright only on
    the dead cells ``mask`` leaves out). ``targets``: the detectors checked as targets (default
    all). For each target its *negative* events: values below ``negative_cuts[target]`` (the
    tube's own gate threshold, linear units; ``inf`` in an FMO control's omitted detector, where
    every event is negative; without a cut, Otsu's threshold of ``asinh(y / 150)``). A source is
    testable when, among them, the dim group (lowest ``low_fraction`` of the source) and the bright
    group (highest ``bright_fraction``) have at least ``min_events`` events each and ``lever`` (the
    difference of their source medians) is at least ``min_lever``; other pairs are skipped (the
    tube cannot show that coefficient). The statistic ``slope``: the least-squares coefficient of
    the source when the target is regressed on **every testable source at once** (and an
    intercept) over those negatives: a partial slope, so spillover left by one source is not
    attributed to another source whose bright cells carry it (a degraded APC-H7 tandem leaves
    APC signal on CD8+ cells; PD1 is bright mostly on CD8+ cells, so a per-pair statistic also
    named PE -> APC). About 0 when the compensation is right, ``+delta`` when the spillover
    coefficient is too small by ``delta`` (under-compensated: negatives lean up with the source),
    ``-delta`` when it is too large (over-compensated). ``shift = slope * lever``: the target
    shift the source explains across its lever; ``slope_se`` its least-squares standard error
    (homoscedastic, the same regression). A large under-compensation can lift the bright
    negatives over the stained tube's cut; an FMO tube's omitted detector has no cut (every event
    is negative), so it still shows the pair, as it shows the pairs whose source is bright only on
    target-positive cells. ``flagged`` = ``|slope| > tolerance`` (default 0.04: 4 % of the
    source's signal left in, or taken out of, the target).
    At most ``max_events`` events per event set are used (every k-th: deterministic).
    Columns ``source, target, n_negative, lever, shift, slope, flagged, slope_se``.
    """
    cuts = dict(negative_cuts or {})
    names = list(compensated)
    n = len(next(iter(compensated.values()))) if compensated else 0
    # the event sets: the mask, and each source mask (with the sources checked on it); each set's
    # values and the events finite in every detector, taken once for all targets
    sets: list[tuple[dict[str, np.ndarray], np.ndarray, list[str]]] = []
    special = dict(source_masks or {})
    for m, srcs in [(mask, [d for d in names if d not in special])] + [(special[d], [d]) for d in names if d in special]:
        index = residual_events(n, m, max_events)
        values = {d: compensated[d][index] for d in names}
        finite = np.logical_and.reduce([np.isfinite(v) for v in values.values()])
        sets.append((values, finite, srcs))
    rows = []
    for tgt in (names if targets is None else [t for t in targets if t in compensated]):
        cut = cuts.get(tgt)
        if cut is None:
            y_all = sets[0][0][tgt]
            y_ok = y_all[np.isfinite(y_all)]
            if not y_ok.size:
                continue
            cut = float(np.sinh(otsu_threshold(np.arcsinh(y_ok / ASINH_COFACTOR))) * ASINH_COFACTOR)
        for values, finite, reported in sets:
            if all(src == tgt for src in reported):
                continue
            negative = finite & (values[tgt] < cut)
            n_neg = int(np.count_nonzero(negative))
            if n_neg * min(low_fraction, bright_fraction) < min_events:
                continue
            levers = {src: _lever(values[src][negative], low_fraction=low_fraction, bright_fraction=bright_fraction)
                      for src in names if src != tgt}
            testable = [src for src, lever in levers.items() if lever >= min_lever]
            if not any(src in reported for src in testable):
                continue
            design = np.column_stack([values[src][negative] for src in testable] + [np.ones(n_neg)])
            coef = np.linalg.lstsq(design, values[tgt][negative], rcond=None)[0]
            se = _slope_standard_errors(design, values[tgt][negative], coef)
            for src, slope, slope_se in zip(testable, coef, se):
                if src in reported:
                    rows.append({"source": src, "target": tgt, "n_negative": n_neg, "lever": levers[src],
                                 "shift": float(slope) * levers[src], "slope": float(slope),
                                 "flagged": bool(abs(slope) > tolerance), "slope_se": float(slope_se)})
    return pd.DataFrame(rows, columns=["source", "target", "n_negative", "lever", "shift", "slope", "flagged",
                                       "slope_se"])


def _slope_standard_errors(design: np.ndarray, y: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """The ordinary least-squares standard errors of ``coef`` (``y`` regressed on the columns of ``design``):
    ``sqrt(s^2 diag((X'X)^-1))``, ``s^2`` the residual sum of squares over ``n - p`` (units of ``coef``)."""
    n, p = design.shape
    residual = y - design @ coef
    s2 = float(residual @ residual) / max(n - p, 1)
    return np.sqrt(s2 * np.clip(np.diag(np.linalg.pinv(design.T @ design)), 0.0, None))


# --------------------------------------------------------------------------------------------
# which matrix each product of a manifest uses
# --------------------------------------------------------------------------------------------

CONTROL_TUBE = "compensation"   # manifest tube of a control set's files (role single_stain, or its unstained control)


@dataclass(frozen=True)
class CompensationChoice:
    """The matrix one product is compensated with: ``spillover`` (None = each file's own
    ``$SPILLOVER``), the control ``files`` it was estimated from, or the ``error`` that made the
    estimate fail (the product then fails with it); ``digests``: each file's SHA-256 of the bytes the
    estimate read (``SpilloverEstimate.digests``, file -> it; empty when it failed);
    ``texts``: each file's TEXT as the estimate read it (``SpilloverEstimate.texts``, file -> it),
    the settings compared with the stained files'; ``read_from_ns``: a moment (this machine's wall
    clock, ns) before the estimate read the files, the moment ``digests`` hold from (0: unknown)."""

    spillover: Spillover | None = None
    files: tuple[str, ...] = ()
    error: str = ""
    digests: Mapping[str, str] = field(default_factory=dict)
    texts: Mapping[str, ControlText] = field(default_factory=dict, compare=False)
    read_from_ns: int = field(default=0, compare=False)


def _is_control_row(row) -> bool:
    return row.role == "single_stain" or (row.role == "unstained" and str(row.tube) == CONTROL_TUBE)


def _control_of(row) -> Control:
    """The control of a manifest row (a namedtuple): its ``detector`` cell, given at the cell
    ``read_manifest`` recorded (``DETECTOR_AT``), else the detector found from the file."""
    from tilpheno.io.manifest import DETECTOR_AT

    if row.role == "unstained":
        return Control(str(row.file), None)
    detector = str(getattr(row, "detector", "") or "").strip()
    if detector and detector.lower() != "nan":
        return Control(str(row.file), detector, str(getattr(row, DETECTOR_AT, "") or ""))
    return identify_controls([row.file])[0]


def _estimate_set(name: str, rows) -> CompensationChoice:
    files = tuple(str(f) for f in rows["file"])
    read_from_ns = time.time_ns()
    try:
        controls = [_control_of(r) for r in rows.itertuples(index=False)]
        names = ", ".join(Path(f).name for f in files)
        est = estimate_spillover(controls, source=f"single-stain controls of {name} ({names})")
    except (CompensationError, TableError) as exc:
        return CompensationChoice(None, files, f"compensation from single-stain controls of {name} failed: {exc}")
    return CompensationChoice(est.spillover, files, digests={f: est.digests[f] for f in files if f in est.digests},
                              texts={f: est.texts[f] for f in files if f in est.texts}, read_from_ns=read_from_ns)


def plan_compensation(manifest: pd.DataFrame, override: str | Path | None = None) -> tuple[pd.DataFrame, dict[str, CompensationChoice]]:
    """Split control rows off a manifest and choose each product's matrix.

    Control rows: role ``single_stain``, and role ``unstained`` with tube ``compensation`` (the
    control set's unstained control). Precedence: ``override`` (a matrix CSV, ``process
    --compensation``) for every product; else the product's own control rows; else the one control
    set of a group without stained tubes (e.g. FACSDiva's "Compensation Controls" specimen); else
    each file's ``$SPILLOVER``. Returns the manifest without control rows and control-only groups,
    and ``{product_id: CompensationChoice}`` for products not using their files' own matrix.
    A bad override CSV raises CompensationError; two control-only sets with products left to
    choose raise TableError.
    """
    from tilpheno.compensation import read_spillover_csv
    from tilpheno.io.manifest import DETECTOR_AT

    frame = manifest.copy()
    frame["product_id"] = frame["product_id"].astype(str)
    is_control = pd.Series([_is_control_row(r) for r in frame.itertuples(index=False)], index=frame.index, dtype=bool)
    controls, products = frame[is_control], frame[~is_control].drop(columns=DETECTOR_AT, errors="ignore")
    has_stain = set(products.loc[products["role"] == "stain", "product_id"])
    products = products[products["product_id"].isin(has_stain) | ~products["product_id"].isin(set(controls["product_id"]))]
    ids = sorted(products["product_id"].unique())
    if override is not None:
        matrix = read_spillover_csv(override)
        return products.reset_index(drop=True), {pid: CompensationChoice(matrix) for pid in ids}
    sets = {pid: rows for pid, rows in controls.groupby("product_id", sort=True)}
    shared = [pid for pid in sets if pid not in has_stain]
    choices: dict[str, CompensationChoice] = {}
    for pid in ids:
        if pid in sets:
            choices[pid] = _estimate_set(pid, sets[pid])
    rest = [pid for pid in ids if pid not in choices]
    if shared and rest:
        if len(shared) > 1:
            raise TableError(f"manifest: {len(shared)} control sets without a product ({', '.join(shared)}); "
                             "give each product its own single_stain rows or pass compensation=MATRIX")
        choice = _estimate_set(shared[0], sets[shared[0]])
        choices.update({pid: choice for pid in rest})
    return products.reset_index(drop=True), choices
