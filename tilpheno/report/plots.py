"""Report plots: FlowJo-style density plots with the gate drawn, gate histograms, FMO overlays.

Every function returns PNG bytes rendered with matplotlib's Agg canvas (no pyplot, no global
state, safe in worker processes and threads). Rendering is deterministic: same arrays, same bytes
(no timestamps in the PNG metadata).

Conventions:
- Coordinates are the transformed values the gates were placed on (scatter linear in instrument
  units, fluorescence logicle on Gating-ML's 0..1 scale). Logicle axes carry tick labels at the
  raw-scale decades (0, 10^2, 10^3, ...), as FlowJo does.
- Axis labels read "marker (detector)", e.g. "CD3 (FITC-A)"; scatter axes the detector alone.
- A population keeps one colour everywhere (gate outline, label, histogram), see ``population_colour``.
- Density = event count per bin on a 128 x 128 grid, log-scaled colour, empty bins white.
"""
from __future__ import annotations

import base64
import io
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tilpheno.gates.quadrants import quadrant_percentages

_PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    "#e377c2", "#17becf", "#7f7f7f", "#bcbd22",
)
_FIXED_COLOURS = {
    "cells": "#1f77b4", "singlets": "#17becf", "live": "#2ca02c", "lymph": "#9467bd", "livelymph": "#9467bd",
    "lymphocytes": "#9467bd", "cd3": "#d62728", "cd4": "#ff7f0e", "cd8": "#8c564b", "cd56": "#bcbd22",
    "nk": "#e377c2", "nkt": "#7f7f7f", "pd1": "#6a3d9a", "foxp3": "#e7298a", "treg": "#e7298a",
}
_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
BINS = 128
FIG_INCHES = (2.9, 2.7)
DPI = 100


def population_colour(name: str) -> str:
    """Stable colour of a population or marker, the same in every plot and report.

    Standard TIL populations have fixed colours; a compound population takes the colour of its
    last marker (``CD8+PD1+`` -> PD1's); anything else a palette colour by CRC32 of its name.
    """
    key = name.lower().replace("_", "").replace("+", "").replace("-", "").replace(" ", "")
    if key in _FIXED_COLOURS:
        return _FIXED_COLOURS[key]
    suffixes = [k for k in _FIXED_COLOURS if key.endswith(k)]
    if suffixes:
        return _FIXED_COLOURS[max(suffixes, key=len)]
    return _PALETTE[zlib.crc32(name.encode("utf-8")) % len(_PALETTE)]


@dataclass(frozen=True)
class Axis:
    """One plot axis: the data dimension, its label and (optionally) its transform for tick labels."""

    dim: str
    label: str
    transform: object | None = None  # tilpheno.transforms.Logicle/Arcsinh/Linear or None


def axis_label(dim: str, detector: str | None) -> str:
    """``"CD3 (FITC-A)"`` for a marker on a detector; the bare name for scatter/time or unknown detector."""
    if detector and detector != dim:
        return f"{dim} ({detector})"
    return dim


def to_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for inlining an image in HTML."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIG_INCHES, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.21, 0.17, 0.75, 0.72))
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=7, length=3)
    return fig, ax


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _limits(values: np.ndarray, extra: Sequence[float] = (), axis: "Axis | None" = None) -> tuple[float, float]:
    """Display range, padded 5 %: the 0.1st..99.9th percentile of the finite values, widened to hold
    the gate coordinates ``extra`` that lie within one data span of it (a gate edge far off-scale is
    clipped instead). Linear scatter axes (FSC/SSC) start at 0 when the data are non-negative.
    """
    finite = values[np.isfinite(values)]
    lo, hi = (float(v) for v in np.percentile(finite, [0.1, 99.9])) if finite.size else (0.0, 1.0)
    span = max(hi - lo, 1e-12)
    near = [float(e) for e in extra if e is not None and np.isfinite(e) and lo - span <= e <= hi + span]
    if near:
        lo, hi = min(lo, *near), max(hi, *near)
    scatter = axis is not None and axis.dim.upper().startswith(("FSC", "SSC"))
    if scatter and getattr(axis.transform, "kind", "") == "linear" and lo >= 0:
        lo = 0.0
    if hi <= lo:
        hi = lo + 1.0
    pad = 0.05 * (hi - lo)
    return (lo if scatter and lo == 0.0 else lo - pad), hi + pad


def _decade_ticks(axis: Axis, limits: tuple[float, float]):
    """Tick positions and labels at raw-scale decades for a logicle/arcsinh axis; None for linear."""
    kind = getattr(axis.transform, "kind", "linear")
    if kind == "linear" or axis.transform is None:
        return None
    raw = np.array([-1e4, -1e3, 0.0, 1e2, 1e3, 1e4, 1e5, 1e6])
    pos = axis.transform.apply(raw)
    keep = (pos >= limits[0]) & (pos <= limits[1])
    labels = []
    for r in raw[keep]:
        if r == 0:
            labels.append("0")
        else:
            exp = int(round(np.log10(abs(r))))
            labels.append(("-" if r < 0 else "") + "10" + str(exp).translate(_SUPERSCRIPT))
    return pos[keep], labels


def _style_axis(ax, axis: Axis, limits, which: str) -> None:
    set_lim, set_label = (ax.set_xlim, ax.set_xlabel) if which == "x" else (ax.set_ylim, ax.set_ylabel)
    set_lim(*limits)
    set_label(axis.label, fontsize=8)
    ticks = _decade_ticks(axis, limits)
    target = ax.xaxis if which == "x" else ax.yaxis
    if ticks is not None:
        (ax.set_xticks if which == "x" else ax.set_yticks)(ticks[0], ticks[1])
    elif max(abs(limits[0]), abs(limits[1])) >= 1e4:
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        target.set_major_locator(MaxNLocator(5))
        target.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v / 1000:.0f}K" if v else "0"))


def _gate_extent(gate, dim: str) -> list[float]:
    """Gate coordinates on ``dim`` (to keep the whole gate in view): the gate protocol's ``extent``."""
    return list(gate.extent(dim))


def _draw_gate(ax, gate, xdim: str, ydim: str | None, colour: str) -> None:
    """Draw ``gate`` on axes showing ``xdim`` (and ``ydim``); dimensions not shown are ignored.

    Dispatches on the gate protocol's ``drawing()`` (tilpheno.gates.geometry.Drawing), not on classes."""
    from matplotlib.patches import Ellipse, Polygon, Rectangle

    shape = gate.drawing()
    style = dict(fill=False, edgecolor=colour, linewidth=1.6)
    if shape.shape == "polygon" and ydim is not None:
        verts = np.asarray(shape.vertices)
        if tuple(shape.dims) == (ydim, xdim):
            verts = verts[:, ::-1]
        ax.add_patch(Polygon(verts, closed=True, **style))
    elif shape.shape == "ellipse" and ydim is not None and set(shape.dims[:2]) == {xdim, ydim} and len(shape.dims) == 2:
        order = [shape.dims.index(xdim), shape.dims.index(ydim)]
        cov = np.asarray(shape.covariance)[np.ix_(order, order)]
        vals, vecs = np.linalg.eigh(cov)
        width, height = 2 * np.sqrt(vals * shape.distance_square)
        angle = float(np.degrees(np.arctan2(vecs[1, 0], vecs[0, 0])))
        centre = (shape.mean[order[0]], shape.mean[order[1]])
        ax.add_patch(Ellipse(centre, width, height, angle=angle, **style))
    elif shape.shape == "intervals":
        bounds = dict(shape.bounds)
        if ydim is None or ydim not in bounds:
            for v in bounds.get(xdim, (None, None)):
                if v is not None:
                    ax.axvline(v, color=colour, linewidth=1.6)
        if ydim is not None and xdim not in bounds and ydim in bounds:
            for v in bounds[ydim]:
                if v is not None:
                    ax.axhline(v, color=colour, linewidth=1.6)
        if ydim is not None and xdim in bounds and ydim in bounds:
            (x0, x1), (y0, y1) = bounds[xdim], bounds[ydim]
            xl, yl = ax.get_xlim(), ax.get_ylim()
            x0, x1 = xl[0] if x0 is None else x0, xl[1] if x1 is None else x1
            y0, y1 = yl[0] if y0 is None else y0, yl[1] if y1 is None else y1
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, **style))
    elif shape.shape == "dividers":
        for dim, values in shape.cuts.items():
            for v in values:
                if dim == xdim:
                    ax.axvline(v, color=colour, linewidth=1.2, linestyle="--")
                elif dim == ydim:
                    ax.axhline(v, color=colour, linewidth=1.2, linestyle="--")


def _label(ax, x: float, y: float, text: str, colour: str) -> None:
    ax.text(
        x, y, text, fontsize=7.5, color=colour, ha="center", va="center", fontweight="bold",
        bbox=dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor=colour, alpha=0.85, linewidth=0.8),
    )


def _label_position(values: np.ndarray, inside: np.ndarray | None, limits, above: bool = False) -> float:
    """Where a population label goes on one axis, clipped into view: the median of the gated events,
    or (``above``) just beyond their 97.5th percentile, so the label does not hide the gate."""
    sel = values[inside] if inside is not None else values
    sel = sel[np.isfinite(sel)]
    span = limits[1] - limits[0]
    if not sel.size:
        centre = 0.5 * (limits[0] + limits[1])
    elif above:
        centre = float(np.percentile(sel, 97.5)) + 0.1 * span
    else:
        centre = float(np.median(sel))
    return float(np.clip(centre, limits[0] + 0.12 * span, limits[1] - 0.1 * span))


def _density_axes(x: np.ndarray, y: np.ndarray, xaxis: Axis, yaxis: Axis, xlim, ylim):
    """A new figure with the pseudo-colour density of (x, y): events per bin on a log colour scale."""
    from matplotlib.colors import LogNorm

    fig, ax = _figure()
    ok = np.isfinite(x) & np.isfinite(y)
    counts, _, _ = np.histogram2d(x[ok], y[ok], bins=BINS, range=(xlim, ylim))
    masked = np.ma.masked_equal(counts.T, 0)
    if masked.count():
        ax.imshow(
            masked, origin="lower", extent=(*xlim, *ylim), aspect="auto", interpolation="nearest",
            cmap="jet", norm=LogNorm(vmin=1, vmax=max(2.0, float(counts.max()))),
        )
    _style_axis(ax, xaxis, xlim, "x")
    _style_axis(ax, yaxis, ylim, "y")
    return fig, ax


def density_png(
    x: np.ndarray,
    y: np.ndarray,
    xaxis: Axis,
    yaxis: Axis,
    *,
    gate,
    inside: np.ndarray | None,
    population: str,
    pct_of_parent: float,
    title: str,
) -> bytes:
    """Pseudo-colour density of the parent's events on (x, y) with ``gate`` drawn and labelled.

    ``inside`` is the boolean mask (over x/y) of the gated population, used to place the label.
    """
    colour = population_colour(population)
    xlim = _limits(x, _gate_extent(gate, xaxis.dim), xaxis)
    ylim = _limits(y, _gate_extent(gate, yaxis.dim), yaxis)
    fig, ax = _density_axes(x, y, xaxis, yaxis, xlim, ylim)
    _draw_gate(ax, gate, xaxis.dim, yaxis.dim, colour)
    _label(
        ax, _label_position(x, inside, xlim), _label_position(y, inside, ylim, above=True),
        f"{population} {pct_of_parent:.1f}%", colour,
    )
    ax.set_title(title, fontsize=8)
    return _png(fig)


def histogram_png(
    x: np.ndarray,
    axis: Axis,
    *,
    gate,
    inside: np.ndarray | None,
    population: str,
    pct_of_parent: float,
    title: str,
) -> bytes:
    """Histogram (counts) of the parent's events on one dimension with a 1-D gate drawn and labelled."""
    colour = population_colour(population)
    xlim = _limits(x, _gate_extent(gate, axis.dim), axis)
    fig, ax = _figure()
    finite = x[np.isfinite(x)]
    counts, edges = np.histogram(finite, bins=BINS, range=xlim)
    ax.fill_between(edges[:-1], counts, step="post", color="#9aa5b1", alpha=0.8, linewidth=0)
    ax.set_ylim(0, max(1, counts.max()) * 1.25)
    _style_axis(ax, axis, xlim, "x")
    ax.set_ylabel("events", fontsize=8)
    _draw_gate(ax, gate, axis.dim, None, colour)
    ylim = ax.get_ylim()
    _label(ax, _label_position(x, inside, xlim), 0.88 * ylim[1], f"{population} {pct_of_parent:.1f}%", colour)
    ax.set_title(title, fontsize=8)
    return _png(fig)


def fmo_overlay_png(
    stained: np.ndarray,
    fmo: np.ndarray,
    axis: Axis,
    *,
    threshold: float,
    pct_stained: float,
    pct_fmo: float,
    marker: str,
    threshold_note: str,
    title: str,
) -> bytes:
    """FMO (grey, filled) vs stained (coloured line) histograms, normalised to mode, with the threshold line.

    Percentages are of the parent population in each tube with value > threshold.
    """
    colour = population_colour(marker)
    xlim = _limits(np.concatenate([stained, fmo]), [threshold], axis)
    fig, ax = _figure()
    for values, kind in ((fmo, "fmo"), (stained, "stained")):
        finite = values[np.isfinite(values)]
        counts, edges = np.histogram(finite, bins=BINS, range=xlim)
        norm = counts / counts.max() * 100 if counts.max() > 0 else counts.astype(float)
        if kind == "fmo":
            ax.fill_between(edges[:-1], norm, step="post", color="#b0b0b0", alpha=0.9, linewidth=0,
                            label=f"FMO {pct_fmo:.1f}% +")
        else:
            ax.step(edges[:-1], norm, where="post", color=colour, linewidth=1.4, label=f"stained {pct_stained:.1f}% +")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=threshold_note)
    ax.set_ylim(0, 150)
    ax.set_yticks([0, 25, 50, 75, 100])
    _style_axis(ax, axis, xlim, "x")
    ax.set_ylabel("% of mode", fontsize=8)
    ax.legend(fontsize=6.5, loc="upper right", frameon=False)
    ax.set_title(title, fontsize=8)
    return _png(fig)


def quadrant_png(
    x: np.ndarray,
    y: np.ndarray,
    xaxis: Axis,
    yaxis: Axis,
    *,
    xgate,
    ygate,
    xpopulation: str,
    ypopulation: str,
    title: str,
    percentages: dict | None = None,
) -> bytes:
    """Two sibling 1-D gates as a FlowJo quadrant plot: density of the parent's events on (x, y),
    both thresholds drawn, and the % of parent in each quadrant in its corner.

    Quadrant membership uses the gates themselves (``xgate.contains`` / ``ygate.contains``), so
    the corner numbers add up to 100 % of the events with finite values on both axes.
    ``percentages``: the corner numbers when (x, y) are a subsample (``quadrant_percentages`` of
    all events, computed beforehand); None computes them from (x, y).
    """
    quadrants = percentages if percentages is not None else quadrant_percentages(x, y, xgate, ygate, xaxis.dim, yaxis.dim)
    xlim = _limits(x, _gate_extent(xgate, xaxis.dim), xaxis)
    ylim = _limits(y, _gate_extent(ygate, yaxis.dim), yaxis)
    fig, ax = _density_axes(x, y, xaxis, yaxis, xlim, ylim)
    _draw_gate(ax, xgate, xaxis.dim, yaxis.dim, population_colour(xpopulation))
    _draw_gate(ax, ygate, xaxis.dim, yaxis.dim, population_colour(ypopulation))
    corners = {(True, True): (0.97, 0.97, "right", "top"), (False, True): (0.03, 0.97, "left", "top"),
               (False, False): (0.03, 0.03, "left", "bottom"), (True, False): (0.97, 0.03, "right", "bottom")}
    for key, (cx, cy, ha, va) in corners.items():
        ax.text(cx, cy, f"{quadrants[key]:.1f}%", transform=ax.transAxes, ha=ha, va=va, fontsize=7.5, fontweight="bold",
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="#555555", alpha=0.85, linewidth=0.6))
    ax.set_title(title, fontsize=8)
    return _png(fig)
