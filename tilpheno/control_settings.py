"""Acquisition settings of a control (FMO, unstained, single-stain) against its stained tube's.

A control stands for its stained tube only when it was acquired with the same instrument settings:
the same detectors at the same voltages, ranges and amplification, on the same instrument. A
threshold read on an FMO acquired at another PMT voltage is carried to the stained tube on
another intensity scale; an unstained control at another voltage says nothing about the stained
tube's autofluorescence; a single-stain control at another voltage gives spillover fractions
that are not the stained tube's (:func:`compensation_control_flags`). This check compares the
TEXT segments only (``FCSFile.keywords`` and ``FCSFile.channels``; no events), once per (control,
stained file) pair; another instrument or day is said once per control, naming its stained files.

Per detector (``$PnN``, matched by name: a control's ``$PnN`` is the stained tube's detector),
each setting that both files state is compared:

* voltage ``$PnV`` (volts; BD writes it in FCS 3.0 files too): a difference larger than
  :data:`VOLTAGE_TOLERANCE_V` (0: **any difference**) counts;
* range ``$PnR``, amplifier gain ``$PnG`` and amplification ``$PnE`` (log decades, value at 0):
  any difference counts, on the values the reader reads (``tilpheno.io.fcs``: ``"1.0"`` = ``"1"``,
  ``$PnG`` absent = 1, ``$PnE`` absent = ``0,0``).

A voltage absent from either file is not compared (a FlowJo export drops ``$PnV``); one that is
not a number (an Attune's ``NA``) is compared as text. The time channel is not compared. A file
with no ``$PnV`` on any detector both files have (every FlowAtlas file: FlowJo exports) is said
once per control (``info``): its voltages were not recorded, so they were not compared.

A range is not compared when either file was written by FlowJo (:data:`EXPORT_KEYWORDS`): FlowJo
writes its own ``$PnR`` on export, not the instrument's range. The FlowAtlas unstained controls
(FlowJo exports, same instrument serial, same cytometer set-up and, for 412C, the same experiment
and day as their stained files) carry ``$PnR`` 82897 and 26214 beside 262144: 262144 / 10**0.5 and
262144 / 10, the tops of FlowJo's display scales (``transforms:maxRange`` in the study's
workspaces), which no cytometer's converter has. Such a difference is listed (``info``), not
counted as another acquisition; the voltage, gain and amplification are compared as above.

Codes (raised on the control's file, naming the stained file):

``control_settings_differ``  ``warning`` (review, ``tilpheno.qc.REVIEW_CODES``): a setting differs on a
    detector the tube kind's gates read (the strategy's markers' detectors and its scatter
    channels): the message names the detector, the keyword and both values. ``info`` for the other
    detectors both files have (nothing the gates read, but the files were not acquired alike), and
    ``info`` for the ranges not compared in a FlowJo export, naming the file(s) and the keyword, and
    ``info`` once per control for the voltages not compared, not recorded in the control or in
    stained files (no ``$PnV``), naming them.
``control_instrument_differs``  ``warning`` (review): another instrument: the serial number
    (``$CYTSN``, else BD's ``CYTNUM``, else Beckman Coulter's ``@CYTOMETERID``) differs, or, without a
    serial in both files, the instrument name ``$CYT``.
``control_date_differs``  ``info``: another acquisition day (``$DATE``); many labs acquire FMOs
    the same day, but a control of another day (another session, perhaps another cytometer set-up)
    is worth a look, not an error. The message says when both files name the same experiment
    (BD's ``EXPERIMENT NAME``: a session that ran past midnight).
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Sequence

from tilpheno.acquisition import find_time_channel
from tilpheno.qc import QCFlag

VOLTAGE_TOLERANCE_V = 0.0
"""A voltage (``$PnV``) difference larger than this many volts between a control and its stained
tube is flagged: 0, any difference (cytometers are set in whole volts; a control at another
voltage is on another scale)."""

SETTINGS = (("voltage", "$PnV"), ("range", "$PnR"), ("gain", "$PnG"), ("amplification", "$PnE"))
"""The settings compared, with their keywords (named so in messages)."""

EXPORT_KEYWORDS = ("FJ_FCS_VERSION",)
"""Keywords FlowJo writes into the FCS files it exports: a file with one has FlowJo's ``$PnR``, not
the instrument's (module docstring), so its ranges are not compared. Not others the real files
show: flowCore's ``flowCore_$PnRmax`` / ``flowCore_$PnRmin`` (FlowAtlas stained files, FlowSOM's
68983.fcs) come with ``$PnR`` equal to ``flowCore_$PnRmax``, the instrument's 262144: flowCore keeps
the range; ``FJ_$PnR`` is also written by FlowJo Collector's Edition, an acquisition program (the
Cytek xP5 file of the reader corpus: ``$P1R`` = ``FJ_$P1R``, ADC ranges 1024)."""

SERIAL_KEYWORDS = ("$CYTSN", "CYTNUM", "@CYTOMETERID")
"""Keywords that hold the instrument's serial number, the first a file has counting."""

DATE_FORMATS = ("%d-%b-%Y", "%d-%b-%y", "%Y-%b-%d", "%Y-%m-%d")
"""``$DATE`` as instruments write it (FCS 3.x ``dd-mmm-yyyy``, FCS 2.0 ``dd-mmm-yy``, Miltenyi's
``yyyy-Mmm-dd``); a date in none of them is compared as text."""


@dataclass(frozen=True)
class SettingDifference:
    """One setting of one detector that differs: ``keyword`` as ``$PnV``, its values in both files;
    ``shown``: the detector with the stained tube's ``$PnS`` (``APC-H7-A (CD8 APC-H7)``)."""

    detector: str
    shown: str
    keyword: str
    what: str
    control: str
    stained: str


@dataclass(frozen=True)
class SettingsComparison:
    """What differs between a control's and its stained tube's acquisition (:func:`compare_settings`).

    ``used`` / ``other``: differences on detectors the gates read / on the others; ``instrument``:
    (control's, stained's) serial or ``$CYT`` when they differ, else None; ``date``: (control's,
    stained's) ``$DATE`` when another day, else None; ``experiment``: the experiment both name, else '';
    ``ranges_exported``: the ``$PnR`` differences not compared, every detector, because ``exported``
    (``"control"``, ``"stained tube"``, with the keyword that says so: ``"control (FJ_FCS_VERSION)"``)
    were written by FlowJo; ``voltages_unrecorded``: which of ``"control"``, ``"stained tube"`` has
    no ``$PnV`` on any detector both files have (the time channel aside), so no voltage was compared."""

    used: tuple[SettingDifference, ...]
    other: tuple[SettingDifference, ...]
    instrument: tuple[str, str] | None
    date: tuple[str, str] | None
    experiment: str = ""
    ranges_exported: tuple[SettingDifference, ...] = ()
    exported: tuple[str, ...] = ()
    voltages_unrecorded: tuple[str, ...] = ()


def _text(keywords: Mapping[str, str], key: str) -> str:
    """A keyword's value stripped; '' when absent or blank."""
    return str(keywords.get(key, "")).strip()


def _voltage_differs(control: str, stained: str) -> bool:
    """True when two ``$PnV`` texts differ by more than :data:`VOLTAGE_TOLERANCE_V` (as numbers;
    texts that are not numbers, an Attune's ``NA``, as text)."""
    try:
        a, b = float(control), float(stained)
    except ValueError:
        return control.casefold() != stained.casefold()
    if not (math.isfinite(a) and math.isfinite(b)):
        return control.casefold() != stained.casefold()
    return abs(a - b) > VOLTAGE_TOLERANCE_V


def _detector_settings(fcs) -> dict[str, dict[str, str]]:
    """Detector ($PnN) -> {setting name: its value as text}: ``voltage`` when ``$PnV`` is stated,
    and ``range``, ``gain``, ``amplification`` as the reader reads them (``$PnG`` absent = 1,
    ``$PnE`` absent = linear 0,0, ``f1,0`` = ``f1,1``: :mod:`tilpheno.io.fcs`). The first of two
    parameters of one name counts."""
    out: dict[str, dict[str, str]] = {}
    ch = fcs.channels
    for n, name, pnr, png, pne in zip(ch["n"], ch["pnn"], ch["pnr"], ch["png"], ch["pne"]):
        settings = {"range": f"{float(pnr):g}", "gain": f"{float(png):g}",
                    "amplification": f"{float(pne[0]):g},{float(pne[1]):g}"}
        voltage = _text(fcs.keywords, f"$P{int(n)}V")
        if voltage:
            settings["voltage"] = voltage
        out.setdefault(str(name), settings)
    return out


def _export_keyword(keywords: Mapping[str, str]) -> str:
    """The first of :data:`EXPORT_KEYWORDS` the file has, '' when none."""
    return next((k for k in EXPORT_KEYWORDS if k in keywords), "")


def _serial(keywords: Mapping[str, str]) -> str:
    return next((v for v in (_text(keywords, k) for k in SERIAL_KEYWORDS) if v), "")


def _day(text: str) -> str:
    """``$DATE`` as an ISO date when it reads as one (:data:`DATE_FORMATS`), else its text upper-cased."""
    for form in DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, form).date().isoformat()
        except ValueError:
            continue
    return text.upper()


def compare_settings(control, stained, used: Collection[str]) -> SettingsComparison:
    """Compare a control's acquisition settings with its stained tube's (module docstring).

    ``control``, ``stained``: FCSFile-like (``keywords``, ``channels`` with ``n``, ``pnn``, ``pnr``,
    ``png``, ``pne``); ``used``: the detectors ($PnN) the tube kind's gates read."""
    mine, theirs = _detector_settings(control), _detector_settings(stained)
    time_channel = find_time_channel(list(theirs))
    stains = {str(n): str(s).strip() for n, s in zip(stained.channels["pnn"], stained.channels["pns"])}
    used_set = set(used)
    ck, sk = control.keywords, stained.keywords
    exported = tuple(f"{who} ({k})" for who, k in (("control", _export_keyword(ck)), ("stained tube", _export_keyword(sk)))
                     if k)
    on_used: list[SettingDifference] = []
    on_other: list[SettingDifference] = []
    not_compared: list[SettingDifference] = []
    common = [d for d in mine if d in theirs and d != time_channel]
    for detector in common:
        settings = mine[detector]
        for what, keyword in SETTINGS:
            a, b = settings.get(what, ""), theirs[detector].get(what, "")
            if a and b and (_voltage_differs(a, b) if what == "voltage" else a != b):
                kept = not_compared if what == "range" and exported else on_used if detector in used_set else on_other
                kept.append(SettingDifference(
                    detector, f"{detector} ({stains[detector]})" if stains.get(detector) else detector, keyword, what, a, b))
    instrument = None
    serials = (_serial(ck), _serial(sk))
    names = (_text(ck, "$CYT"), _text(sk, "$CYT"))
    if all(serials):
        instrument = serials if serials[0] != serials[1] else None
    elif all(names) and names[0].casefold() != names[1].casefold():
        instrument = names
    dates = (_text(ck, "$DATE"), _text(sk, "$DATE"))
    date = dates if all(dates) and _day(dates[0]) != _day(dates[1]) else None
    experiments = (_text(ck, "EXPERIMENT NAME"), _text(sk, "EXPERIMENT NAME"))
    unrecorded = tuple(who for who, settings in (("control", mine), ("stained tube", theirs))
                       if common and not any("voltage" in settings[d] for d in common))
    return SettingsComparison(tuple(on_used), tuple(on_other), instrument, date,
                              experiments[0] if experiments[0] and experiments[0] == experiments[1] else "",
                              tuple(not_compared), exported if not_compared else (), unrecorded)


def _listed(differences) -> str:
    return "; ".join(f"{d.shown} {d.what} ({d.keyword}) {d.control} in the control, {d.stained} in the stained tube"
                     for d in differences)


def _against(control_name: str, stained: Sequence[str]) -> str:
    """``control X vs stained tube Y`` / ``control X vs stained tubes Y, Z``."""
    return f"control {control_name} vs stained tube{'s' if len(stained) > 1 else ''} {', '.join(stained)}"


def _values_in_stained(pairs: Sequence[tuple[str, str]]) -> str:
    """(stained file, its value) pairs as ``v in the stained tube(s)`` when one value, else
    ``v1 in Y; v2 in Z``."""
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        values.setdefault(value, []).append(name)
    if len(values) == 1:
        return f"{next(iter(values))} in the stained tube{'s' if len(pairs) > 1 else ''}"
    return "; ".join(f"{value} in {', '.join(names)}" for value, names in values.items())


def _voltages_unrecorded(control_name: str, compared: Sequence[tuple[str, str, SettingsComparison]]) -> str:
    """The one line saying which files of a control's pairs record no voltage (``$PnV``), '' when
    every pair's voltages were compared: ``control X vs stained tubes Y, Z: detector voltages ($PnV)
    not compared, not recorded in the control nor in the stained tubes``."""
    pairs = [(name, c.voltages_unrecorded) for name, _, c in compared if c.voltages_unrecorded]
    if not pairs:
        return ""
    names = [name for name, _ in pairs]
    lacking = [name for name, who in pairs if "stained tube" in who]
    where = ["the control"] if any("control" in who for _, who in pairs) else []
    if lacking:
        plural = "s" if len(lacking) > 1 else ""
        where.append(f"the stained tube{plural}" if lacking == names else f"stained tube{plural} {', '.join(lacking)}")
    return f"{_against(control_name, names)}: detector voltages ($PnV) not compared, not recorded in {' nor in '.join(where)}"


def control_flags(product_id: str, control_name: str, compared: Sequence[tuple[str, str, SettingsComparison]], *,
                  matrix: bool = False) -> list[QCFlag]:
    """The QC flags of one control compared with each of its stained files (``compared``: (stained
    file's name, its tube kind, :func:`compare_settings` of the pair)), raised on the control
    (module docstring): the settings per stained file (their values may differ), then one
    instrument flag and one day flag for the control, naming every stained file concerned.
    ``matrix``: the control is a compensation control and ``used`` the detectors of the spillover
    matrix estimated from it (:func:`compensation_control_flags`)."""
    flags = []
    for stained_name, tube_kind, comparison in compared:
        pair = _against(control_name, [stained_name])
        used, unused = (("of the spillover matrix", "outside the spillover matrix") if matrix else
                        (f"the {tube_kind} gates read", f"the {tube_kind} gates do not read"))
        if comparison.used:
            flags.append(QCFlag(product_id, control_name, "control_settings_differ", "warning",
                                f"{pair}: acquired with other settings on detectors {used}: "
                                f"{_listed(comparison.used)}; a control is valid only with the stained tube's settings"))
        if comparison.other:
            flags.append(QCFlag(product_id, control_name, "control_settings_differ", "info",
                                f"{pair}: other settings on detectors {unused}: {_listed(comparison.other)}"))
        if comparison.ranges_exported:
            flags.append(QCFlag(product_id, control_name, "control_settings_differ", "info",
                                f"{pair}: range ($PnR) not compared, {' and '.join(comparison.exported)} written by "
                                "FlowJo, which writes its own $PnR on export, not the instrument's: "
                                f"{_listed(comparison.ranges_exported)}"))
    unrecorded = _voltages_unrecorded(control_name, compared)
    if unrecorded:
        flags.append(QCFlag(product_id, control_name, "control_settings_differ", "info", unrecorded))
    instrument = [(name, c.instrument) for name, _, c in compared if c.instrument is not None]
    if instrument:
        mine = instrument[0][1][0]
        flags.append(QCFlag(product_id, control_name, "control_instrument_differs", "warning",
                            f"{_against(control_name, [n for n, _ in instrument])}: acquired on another instrument "
                            f"({mine} in the control, {_values_in_stained([(n, i[1]) for n, i in instrument])}); "
                            "a control is valid only on the stained tube's instrument"))
    dated = [(name, c.date, c.experiment) for name, _, c in compared if c.date is not None]
    if dated:
        experiments = {e for _, _, e in dated}
        same = f" (both of experiment '{experiments.pop()}')" if len(experiments) == 1 and "" not in experiments else ""
        flags.append(QCFlag(product_id, control_name, "control_date_differs", "info",
                            f"{_against(control_name, [n for n, _, _ in dated])}: acquired on another day ($DATE "
                            f"{dated[0][1][0]} in the control, {_values_in_stained([(n, d[1]) for n, d, _ in dated])}){same}"))
    return flags


def compensation_control_flags(product_id: str, controls: Mapping[str, Any], stained: Mapping[str, Any],
                               matrix_detectors: Collection[str]) -> list[QCFlag]:
    """The compensation controls a product's spillover matrix was estimated from (``controls``:
    name -> FCSFile, its single-stain controls and their unstained control), each compared with
    each stained file it compensates (``stained``: name -> FCSFile), as an FMO is with its stained
    tube: a setting that differs on a detector of the matrix (``matrix_detectors``) needs review, a
    spillover fraction read at another voltage is not the stained tube's; elsewhere info."""
    return [flag for c_name, control in controls.items()
            for flag in control_flags(product_id, c_name, [(s_name, "", compare_settings(control, fcs, matrix_detectors))
                                                           for s_name, fcs in stained.items()], matrix=True)]
