"""Exports of gated events for other tools: FCS 3.1 with membership channels, AnnData ``.h5ad``.

Both take an ``FCSFile`` (``tilpheno.read_fcs``) and population masks (``{population: bool array
over all events}``, e.g. from ``apply_gatingml``, ``apply_workspace`` or the gating engine).

FCS (for re-analysis in FlowJo and similar): the file's channels as read (``FCSFile.events``:
``$PnG``/``$PnE`` and ``$TIMESTEP`` already applied, so the file is written with ``$PnE 0,0``,
``$PnG 1`` and no ``$TIMESTEP``, and reading it back gives the same values to float32 rounding),
followed by one channel per population holding 0 or 1 (``$PnN`` = the population name, ``$PnS``
"membership", ``$PnR`` 2). Each channel's ``$PnR`` is the range of its decoded values. The source's ``$SPILLOVER`` is kept so compensation still works, and a
few descriptive keywords are copied (``KEPT_KEYWORDS``); ``TILPHENO SOURCE SHA256`` records the
source file.

AnnData (for the scverse tools; needs the optional ``anndata`` package): ``X`` = events (float32,
n_events x n_channels, as read), ``var`` indexed by ``$PnN`` with columns ``pns`` and ``marker``,
``obs`` indexed by event number ("0", "1", ...) with one boolean column per population, ``uns``
with the source path, its SHA-256 and the kept keywords.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from tilpheno.errors import TilphenoError
from tilpheno.io.atomic import atomic_path

KEPT_KEYWORDS = ("$SRC", "$DATE", "$BTIM", "$ETIM", "$CYT", "$CYTSN", "$INST", "$OP", "$PROJ", "$FIL",
                 "TUBE NAME", "EXPERIMENT NAME")


class ExportError(TilphenoError):
    """Events could not be exported (the message names the output file and the problem)."""


def _checked_masks(fcs, masks: Mapping[str, np.ndarray], out: Path) -> dict[str, np.ndarray]:
    if fcs.events is None:
        raise ExportError(f"{out}: {fcs.path} was read without events (metadata only)")
    checked = {}
    for name, mask in masks.items():
        m = np.asarray(mask)
        if m.shape != (fcs.events.shape[0],) or m.dtype != bool:
            raise ExportError(f"{out}: population {name!r} mask must be a bool array of {fcs.events.shape[0]} events, got {m.dtype} {m.shape}")
        checked[str(name)] = m
    return checked


def _kept_keywords(fcs) -> dict[str, str]:
    kept = {k: fcs.keywords[k] for k in KEPT_KEYWORDS if fcs.keywords.get(k, "").strip()}
    kept["TILPHENO SOURCE SHA256"] = fcs.sha256
    return kept


def export_fcs(fcs, masks: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write ``fcs``'s events plus one 0/1 membership channel per population as FCS 3.1 (atomically).

    Population names become ``$PnN`` and must not clash with the file's channel names.
    """
    from tilpheno.io.fcs_write import write_fcs

    path = Path(path)
    checked = _checked_masks(fcs, masks, path)
    clash = sorted(set(checked) & set(fcs.channel_names))
    if clash:
        raise ExportError(f"{path}: population name(s) {clash} equal channel names; rename them")
    try:
        timestep = float(fcs.keywords.get("$TIMESTEP", "1"))
    except ValueError:
        timestep = 1.0
    channels = [
        (row.pnn, row.pns or None, _decoded_range(row, timestep)) for row in fcs.channels.itertuples(index=False)
    ] + [(name, "membership", 2) for name in checked]
    columns = [np.asarray(fcs.events, dtype=np.float64)] + [m.astype(np.float64)[:, None] for m in checked.values()]
    try:
        write_fcs(path, np.hstack(columns), channels, _kept_keywords(fcs), spillover=fcs.spillover)
    except ValueError as exc:
        raise ExportError(f"{path}: {exc}") from None
    return path


def _decoded_range(row, timestep: float) -> float:
    """``$PnR`` for the decoded values: ``10**f1 * f2`` for log channels (``$PnE f1,f2``, f1 > 0),
    ``$PnR / $PnG`` for gained channels, ``$PnR * $TIMESTEP`` for Time; 262144 when unreadable."""
    try:
        pnr = float(row.pnr)
        f1, f2 = (float(v) for v in row.pne)
        png = float(row.png) or 1.0
    except (TypeError, ValueError):
        return 262144
    if not pnr > 0:
        return 262144
    if row.pnn.lower() == "time":
        value = pnr * timestep
    elif f1 > 0:
        value = 10 ** f1 * (f2 if f2 > 0 else 1.0)
    else:
        value = pnr / png
    return int(value) if float(value).is_integer() else value


def export_h5ad(
    fcs,
    masks: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    markers: Mapping[str, str] | None = None,
) -> Path:
    """Write events and population membership as an AnnData ``.h5ad`` file (atomically).

    ``markers``: detector ($PnN) -> marker name (a tube's Panel); detectors not in it get ``""``.
    """
    try:
        import anndata
    except ImportError:
        raise ExportError(f"{path}: AnnData export needs the optional 'anndata' package (pip install tilpheno[anndata])") from None
    import pandas as pd

    path = Path(path)
    checked = _checked_masks(fcs, masks, path)
    markers = dict(markers or {})
    var = pd.DataFrame(
        {"pns": [str(p or "") for p in fcs.channels["pns"]], "marker": [markers.get(n, "") for n in fcs.channel_names]},
        index=pd.Index(fcs.channel_names, name="pnn"),
    )
    obs = pd.DataFrame(checked, index=pd.Index([str(i) for i in range(fcs.events.shape[0])], name="event"))
    adata = anndata.AnnData(
        X=np.asarray(fcs.events, dtype=np.float32),
        obs=obs,
        var=var,
        uns={"source_file": str(fcs.path), "source_sha256": fcs.sha256, "keywords": _kept_keywords(fcs)},
    )
    with atomic_path(path) as tmp:   # the mode of every other output (mkstemp's is 0600)
        adata.write_h5ad(tmp)
    return path
