"""The per-product report: page model (figures, tables) from a gated product, rendered to HTML.

Layout, top to bottom: release verdict and the spec used; study variables; release criteria;
QC flags; per stained tube a FlowJo-like grid of the gating hierarchy (one density plot per gate,
parent events shown, the gate drawn, population name and % of parent on the plot); FMO vs stained
histograms with the threshold line for every FMO-derived marker; each tube's population table
(the subset table); files with their SHA-256 and allow-listed keywords; provenance short form.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from tilpheno.gates.quadrants import sibling_range_pairs

# FCS keywords shown by default: instrument and acquisition settings only. Anything that can
# identify a patient, operator or site ($SRC, $PATIENTID, $FIL, $OP, $INST, $SMNO, $PROJ,
# $COM, dates, free-text names) is shown only with --include-identifiers.
KEYWORD_ALLOW_LIST = (
    "$CYT", "$CYTSN", "$TOT", "$PAR", "$DATATYPE", "$MODE", "$BYTEORD", "$TIMESTEP", "$VOL",
    "TUBE NAME", "CREATOR", "APPLY COMPENSATION",
)
_PARAMETER_KEYWORD = re.compile(r"^(\$P\d+[A-Z]+|\$?SPILL(OVER)?|\$COMP)$")
ROOT_NAMES = ("", "root", "all", "all events", "none")
COUNT_AND_STATUS = ("status", "error", "release_status", "qc_status")


@dataclass(frozen=True)
class Figure:
    """One inline image of the report: caption, ``data:`` URI of the PNG, alt text."""

    title: str
    uri: str
    alt: str


def _axis(dim: str, detectors: Mapping[str, str], strategy=None):
    """Plot axis for ``dim``: "marker (detector)" label; the strategy's transform sets the tick labels."""
    from tilpheno.report.plots import Axis, axis_label
    from tilpheno.transforms import default_transform

    detector = detectors.get(dim)
    transform = strategy.transform_for(dim) if strategy is not None else default_transform(detector or dim)
    return Axis(dim, axis_label(dim, detector), transform)


def _strategy_for(strategies, tube: str):
    return next((s for s in strategies if getattr(s, "tube", None) == tube), None)


def _pct_of_parent(tube, population: str, masks, parent_mask) -> float:
    pops = tube.populations
    row = pops[pops["population"] == population] if "population" in pops else pops.iloc[0:0]
    if len(row) and "pct_of_parent" in row:
        return float(row["pct_of_parent"].iloc[0])
    n_parent = int(parent_mask.sum())
    return 100.0 * int(masks[population].sum()) / n_parent if n_parent else float("nan")


def _n_plotted(tube) -> int:
    """Events in ``tube.data``/``tube.masks``: all of the file's, or its subsample (``TubeResult.subsample``)."""
    if getattr(tube, "subsample", None) is not None:
        return len(tube.subsample)
    return tube.n_events


def _pct_from_table(tube, population: str) -> float | None:
    """``pct_of_parent`` of ``population`` in the tube's table (all events), None if absent."""
    pops = tube.populations
    if "population" not in pops or "pct_of_parent" not in pops:
        return None
    row = pops[pops["population"] == population]
    return float(row["pct_of_parent"].iloc[0]) if len(row) else None


def _parent_name(parent) -> str:
    return parent if parent and str(parent).lower() not in ROOT_NAMES else "all events"


def _gate_png(tube, population: str, parent, gate, detectors: Mapping[str, str], strategy=None) -> tuple[bytes, float]:
    """PNG of one geometric gate on its parent's events, and the % of parent written on it."""
    from tilpheno.report import plots

    masks = tube.masks
    dims = tuple(gate.dims)
    parent_mask = masks.get(parent, np.ones(_n_plotted(tube), dtype=bool))
    inside = masks[population][parent_mask]
    pct = _pct_of_parent(tube, population, masks, parent_mask)
    title = f"{_parent_name(parent)} → {population}"
    if len(dims) == 1:
        png = plots.histogram_png(
            tube.data[dims[0]][parent_mask], _axis(dims[0], detectors, strategy), gate=gate, inside=inside,
            population=population, pct_of_parent=pct, title=title,
        )
    else:
        x, y = dims[0], dims[1]
        png = plots.density_png(
            tube.data[x][parent_mask], tube.data[y][parent_mask], _axis(x, detectors, strategy), _axis(y, detectors, strategy),
            gate=gate, inside=inside, population=population, pct_of_parent=pct, title=title,
        )
    return png, pct


def gate_figure_png(tube, population: str, detectors: Mapping[str, str], strategy=None) -> bytes:
    """PNG of ``population``'s gate on its parent's events (KeyError naming the gated populations)."""
    for name, parent, gate, _method in tube.gates:
        if name == population and gate.dims:
            return _gate_png(tube, name, parent, gate, detectors, strategy)[0]
    drawable = [name for name, _, gate, _ in tube.gates if gate.dims]
    raise KeyError(f"no drawable gate for population {population!r}; gates: {', '.join(drawable)}")


def gate_figures(tube, detectors: Mapping[str, str], title_prefix: str, strategy=None) -> list[Figure]:
    """One plot per geometric gate: the parent's events, the gate drawn, name and % of parent.

    The events drawn are ``tube.data`` (a subsample when ``tube.subsample`` is set); the
    percentages come from the population table, computed on all events.
    """
    from tilpheno.report import plots

    figures = []
    for population, parent, gate, method in tube.gates:
        dims = tuple(gate.dims)
        if not dims:
            continue
        png, pct = _gate_png(tube, population, parent, gate, detectors, strategy)
        parent_name = _parent_name(parent)
        title = f"{parent_name} → {population}"
        figures.append(Figure(f"{title_prefix}: {title}", plots.to_data_uri(png),
                              f"{population} gate on {' vs '.join(dims)} ({method}), {pct:.1f}% of {parent_name}"))
    return figures + quadrant_figures(tube, detectors, title_prefix, strategy)


def quadrant_figures(tube, detectors: Mapping[str, str], title_prefix: str, strategy=None) -> list[Figure]:
    """FlowJo quadrant plots for sibling threshold gates, with the % of parent in each quadrant."""
    from tilpheno.report import plots

    figures = []
    stored = getattr(tube, "quadrants", None) or {}
    for (xpop, parent, xgate, _), (ypop, _, ygate, _) in sibling_range_pairs(tube.gates):
        parent_mask = tube.masks.get(parent, np.ones(_n_plotted(tube), dtype=bool))
        parent_name = parent if parent and str(parent).lower() not in ROOT_NAMES else "all events"
        xdim, ydim = xgate.dims[0], ygate.dims[0]
        title = f"{parent_name}: {xdim} vs {ydim}"
        png = plots.quadrant_png(
            tube.data[xdim][parent_mask], tube.data[ydim][parent_mask],
            _axis(xdim, detectors, strategy), _axis(ydim, detectors, strategy),
            xgate=xgate, ygate=ygate, xpopulation=xpop, ypopulation=ypop, title=title,
            percentages=stored.get((xpop, ypop)),
        )
        figures.append(Figure(f"{title_prefix}: {title}", plots.to_data_uri(png),
                              f"{xpop} and {ypop} thresholds on {xdim} vs {ydim} in {parent_name}, "
                              "% of parent per quadrant"))
    return figures


def fmo_figures(result, percentile: float, strategies=()) -> list[Figure]:
    """FMO vs stained histograms with the threshold line, for every threshold set from an FMO file."""
    from tilpheno.report import plots

    by_name = {Path(str(t.file)).name: t for t in result.tubes}
    figures = []
    for stain in (t for t in result.tubes if t.role == "stain"):
        th = stain.thresholds
        for row in th.itertuples(index=False):
            source = Path(str(getattr(row, "source_file", "") or "")).name
            fmo = by_name.get(source)
            marker, parent = str(row.marker), str(row.parent)
            if fmo is None or fmo is stain or marker not in stain.data or marker not in fmo.data:
                continue
            s_mask, f_mask = stain.masks.get(parent), fmo.masks.get(parent)
            if s_mask is None or f_mask is None:
                continue
            s_vals, f_vals = stain.data[marker][s_mask], fmo.data[marker][f_mask]
            thr = float(row.value_transformed)
            if getattr(stain, "subsample", None) is None and getattr(fmo, "subsample", None) is None:
                pct_s = 100.0 * float(np.mean(s_vals > thr)) if s_vals.size else float("nan")
                pct_f = 100.0 * float(np.mean(f_vals > thr)) if f_vals.size else float("nan")
            else:
                # drawn from subsamples: the % positive of each tube's table (all events; the
                # population is the parent's events above the same threshold)
                pct_s, pct_f = (_pct_from_table(t, str(row.population)) for t in (stain, fmo))
                pct_s = float("nan") if pct_s is None else pct_s
                pct_f = float("nan") if pct_f is None else pct_f
            detectors = stain.detectors
            pctl = float(getattr(row, "percentile", percentile))
            png = plots.fmo_overlay_png(
                s_vals, f_vals, _axis(marker, detectors, _strategy_for(strategies, stain.tube)), threshold=thr, pct_stained=pct_s, pct_fmo=pct_f,
                marker=marker, threshold_note=f"{pctl:g}th pct of FMO", title=f"{marker} in {parent} ({stain.tube})",
            )
            figures.append(Figure(
                f"{marker} in {parent}: FMO vs stained ({stain.tube} tube)", plots.to_data_uri(png),
                f"{marker} FMO vs stained histogram; threshold {thr:.3f} from {source}; "
                f"stained {pct_s:.1f}% positive, FMO {pct_f:.1f}%",
            ))
    return figures


def _keywords(meta, include_identifiers: bool) -> list[tuple[str, str]]:
    """Keywords to show: the allow-list, or (opt-in) every keyword except per-parameter ($PnX) and spillover ones."""
    kw = meta.keywords
    if include_identifiers:
        return sorted((k, str(v)) for k, v in kw.items() if not _PARAMETER_KEYWORD.match(k))
    return [(k, str(kw[k])) for k in KEYWORD_ALLOW_LIST if k in kw]


def _table(frame) -> dict:
    """A DataFrame as {columns, rows} of display strings."""
    from tilpheno.report.html import fmt

    if frame is None or len(frame) == 0:
        return {"columns": [], "rows": []}
    cols = [str(c) for c in frame.columns]
    rows = [[Path(v).name if c == "source_file" and isinstance(v, str) else fmt(v) for c, v in zip(cols, rec)]
            for rec in frame.itertuples(index=False)]
    return {"columns": cols, "rows": rows}


def render_product(outcome, result, meta: Mapping, options, strategies=()) -> str:
    """The product's self-contained HTML report (a failed product gets the reason and its flags)."""
    from tilpheno.report.html import render

    tubes, fmo = [], []
    if result is not None:
        order = sorted(result.tubes, key=lambda t: (t.role != "stain", str(t.tube), str(t.role), str(t.file)))
        for t in order:
            name = Path(str(t.file)).name
            file_meta = meta.get(str(t.file))
            tubes.append({
                "title": f"{t.tube} tube, {t.role}" + (f" (FMO {t.fmo_marker})" if t.fmo_marker else ""),
                "file": name,
                "sha256": t.sha256,
                "n_events": t.n_events,
                "keywords": _keywords(file_meta, options.include_identifiers) if file_meta is not None else [],
                "figures": (gate_figures(t, t.detectors, t.tube, _strategy_for(strategies, t.tube))
                            if t.role == "stain" else []),
                "populations": _table(t.populations),
                "thresholds": _table(t.thresholds),
            })
        fmo = fmo_figures(result, options.fmo_percentile, strategies)
    study = [(k, v) for k, v in outcome.phenotype.items() if k != "product_id" and k not in COUNT_AND_STATUS
             and not k.startswith("n_")]
    counts = [(k, v) for k, v in outcome.phenotype.items() if k in COUNT_AND_STATUS or k.startswith("n_")]
    return render(
        "product.html.j2",
        o=outcome,
        study=study,
        counts=counts,
        release=outcome.release,
        spec=options.release_spec,
        flags=outcome.qc,
        tubes=tubes,
        fmo=fmo,
        percentile=options.fmo_percentile,
        strategy_sha256=sorted(dict(getattr(result, "strategy_sha256", None) or {}).items()),
        provenance=options.provenance_short,
        include_identifiers=options.include_identifiers,
    )
