"""Report plots: FlowJo-style gate plots, quadrant plots and FMO overlays as self-contained SVG.

Every plotting function is pure (arrays and geometry in, SVG text out) and writes its SVG
elements itself with ``report.svg`` (no matplotlib figure, text layout or SVG backend: those cost
as much CPU as gating the product; matplotlib supplies only the jet colour map, the linear tick
locator and, through ``report.svg``, the DejaVu Sans glyph advances). No state is kept between
plots beyond a per-character width cache; safe in worker processes and threads; deterministic:
same arrays, same bytes, whatever was drawn before.

Output: one inline-ready ``<svg>`` element (no XML prolog, no ``<style>``, no metadata, ids
prefixed so several plots can share a page). Axes, ticks, gates and labels are vector; text
stays text (DejaVu Sans, XML-escaped, never parsed as mathtext); a density plot's cells are one
embedded PNG (``data:`` URI, ``image-rendering: pixelated``), so size does not grow with the
event count and print stays sharp. ``inline_svg`` turns a matplotlib SVG document (the biomarker
figures; the acquisition QC plot is drawn as SVG directly, ``report.qc_plots``) into the same kind of element.

Conventions:
- Coordinates are the transformed values the gates were placed on (scatter linear in instrument
  units, fluorescence logicle on Gating-ML's 0..1 scale).
- Fixed axes (FlowJo): ``Axis.limits`` is the display range in transformed units, the same for
  every file of a product (``display_limits``: logicle 0 .. logicle(top of scale), i.e. raw
  -111 .. 262144 for T = 262144, W = 0.5, M = 4.5; linear 0 .. top of scale). Without limits
  the range follows the data (0.1st..99.9th percentile, padded 5 %). In 2-D plots events beyond
  the range are piled on the edge, as FlowJo does; 1-D histograms leave them out.
- Logicle/arcsinh axes: major ticks and labels at the raw decades (-10^3, -10^2, 0, 10^2 ... 10^5),
  minor ticks at 2..9 x each decade; a label too close to a more important one is dropped (0 and
  positive decades first). Linear axes: about 5 ticks (matplotlib's MaxNLocator), thousands as "K".
- Axis labels read "marker (detector)", e.g. "CD3 (FITC-A)"; scatter axes the detector alone.
- A population keeps one colour everywhere (gate outline, label, histogram), see ``population_colour``.
- Density = events per bin on a 128 x 128 grid, jet colours on a log scale (1 .. the fullest
  bin), empty bins transparent.
- Labels never leave the plot area: every label is measured (``report.svg.text_width``: glyph
  advances of DejaVu Sans Bold) and moved inside the axes, and put where it covers the fewest
  events among a few candidate places (near its gate; quadrant labels in the corners of their
  quadrant). A viewer without DejaVu Sans substitutes a sans-serif font of similar width.
"""
from __future__ import annotations

import hashlib
import math
import re
import zlib
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from tilpheno.gates.quadrants import quadrant_percentages
from tilpheno.report import svg
from tilpheno.report.svg import ASCENT, DESCENT, Box, Canvas, Frame, num, nums, text_height, text_width

_PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    "#e377c2", "#17becf", "#7f7f7f", "#bcbd22",
)
_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
BINS = 128
FIG_INCHES = (3.3, 3.1)          # every plot; SVG user units are points (237.6 x 223.2)
AXES_RECT = (0.2, 0.15, 0.75, 0.72)   # left, bottom, width, height (figure fraction)
FMO_AXES_RECT = (0.2, 0.15, 0.75, 0.6)  # room for the legend band above the axes
FONT = 7.5                       # tick and label text, points
TITLE_FONT = 8.5
DEFAULT_TOP = 262144.0           # top of scale when neither the FCS file nor the transform gives one
_PAD_PX = 2.0                    # labels keep this far from the axes edge (points at 72 dpi)


def _colour_key(name: str) -> str:
    return name.lower().replace("_", "").replace("+", "").replace("-", "").replace(" ", "")


def population_colour(name: str, colours: Mapping[str, str] | None = None) -> str:
    """Stable colour of a population or marker, the same in every plot and report.

    ``colours``: the study's ``colours`` (population or marker name -> colour; names compared
    without case, ``+``, ``-``, ``_`` and spaces); a compound population takes the colour of its
    longest matching suffix (``CD8+PD1+`` -> PD1's). Anything else (or no ``colours``): a colour of
    a generic palette chosen by CRC32 of its name.
    """
    fixed = {_colour_key(k): v for k, v in (colours or {}).items()}
    key = _colour_key(name)
    if key in fixed:
        return fixed[key]
    suffixes = [k for k in fixed if key.endswith(k)]
    if suffixes:
        return fixed[max(suffixes, key=len)]
    return _PALETTE[zlib.crc32(name.encode("utf-8")) % len(_PALETTE)]


@dataclass(frozen=True)
class Axis:
    """One plot axis: the data dimension, its label, its transform (tick labels) and, optionally,
    the fixed display range in transformed units (``display_limits``; None = from the data)."""

    dim: str
    label: str
    transform: object | None = None  # tilpheno.transforms.Logicle/Arcsinh/Linear or None
    limits: tuple[float, float] | None = None


def axis_label(dim: str, detector: str | None) -> str:
    """``"CD3 (FITC-A)"`` for a marker on a detector; the bare name for scatter/time or unknown detector."""
    if detector and detector != dim:
        return f"{dim} ({detector})"
    return dim


def display_limits(transform, top: float | None = None) -> tuple[float, float]:
    """FlowJo-style fixed display range, in transformed units, for a dimension whose raw scale ends
    at ``top`` (the detector's ``$PnR``; default the logicle's T, else 262144).

    logicle: 0 .. logicle(top) (the whole logicle scale; 0 is raw -111 for W = 0.5, M = 4.5);
    linear: 0 .. top; arcsinh: arcsinh(-1000) .. arcsinh(top).
    """
    kind = getattr(transform, "kind", "linear")
    if top is None or not np.isfinite(top) or top <= 0:
        top = float(getattr(transform, "t", DEFAULT_TOP))
    if kind == "linear" or transform is None:
        return 0.0, float(top)
    lo, hi = (float(v) for v in transform.apply(np.array([-1000.0, float(top)])))
    return (0.0 if kind == "logicle" else lo), hi


# --- plot scaffolding -------------------------------------------------------------------

_W, _H = 72.0 * FIG_INCHES[0], 72.0 * FIG_INCHES[1]   # SVG user units (points)


def _canvas(xlim, ylim, rect=AXES_RECT) -> tuple[Canvas, Frame]:
    """A plot's canvas and its axes frame at ``rect`` (figure fractions from the bottom left)
    showing xlim x ylim: white background, the data layer clipped to the frame, left and bottom spines."""
    left, bottom, width, height = rect
    box = Box(left * _W, (left + width) * _W, (1 - bottom - height) * _H, (1 - bottom) * _H)
    canvas = Canvas(_W, _H)
    canvas.clip(box)
    canvas.frame.append(svg.path(f"M{num(box.x0)} {num(box.y0)}V{num(box.y1)}H{num(box.x1)}", stroke="#000000",
                                 width=0.8, cap="square"))
    return canvas, Frame(box, (float(xlim[0]), float(xlim[1])), (float(ylim[0]), float(ylim[1])))


_SVG_START = re.compile(r"^.*?(?=<svg)", re.S)
_DROP = re.compile(r"<metadata>.*?</metadata>\s*|<style[^>]*>.*?</style>\s*|<defs>\s*</defs>\s*", re.S)
_SIZE = re.compile(r'\s(width|height)="[^"]*pt"')
_GROUP_ID = re.compile(r'<g id="(?!tp-)[^"]*">')   # keep the ids set on purpose (gid "tp-...")
_GEOMETRY = re.compile(r'\s(d|x|y|width|height|transform)="([^"]*)"')
_DIGITS = re.compile(r"(\d\.\d\d)\d+")
_IDS = re.compile(r'(\sid="|url\(#|href="#)')
_FONT_FAMILY = re.compile(r"font-family: [^;\"]+")
_NO_ROTATION = re.compile(r' transform="rotate\(-0 [^"]*\)"')


def _compact(match) -> str:
    """Coordinates to 0.01 pt (1/7200 inch), path commands on one line."""
    value = _DIGITS.sub(r"\1", match.group(2))
    return f' {match.group(1)}="{" ".join(value.split())}"'


def inline_svg(document: str, alt: str) -> str:
    """A matplotlib SVG document (``savefig(format="svg")``'s text, drawn with ``svg.fonttype`` "none") as one
    inline ``<svg>`` element like the plots' (see the module docstring): no prolog, metadata or <style>, the
    natural size left to the viewBox, coordinates to 0.01 pt, ids prefixed by a hash of the element."""
    from markupsafe import escape

    text = _DROP.sub("", _SVG_START.sub("", document, count=1))
    text = _SIZE.sub("", text, count=2)
    text = _GEOMETRY.sub(_compact, _GROUP_ID.sub("<g>", text))
    text = re.sub(r">\s+<", ">\n<", text)
    text = _FONT_FAMILY.sub("font-family: 'DejaVu Sans', sans-serif", _NO_ROTATION.sub("", text))
    prefix = "p" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8] + "-"
    text = _IDS.sub(lambda m: m.group(1) + prefix, text)
    head = f'<svg class="plot" role="img" aria-label="{escape(alt)}"'
    return head + text[len("<svg"):].rstrip() + "\n"


def _label_box(lines: Sequence[str], size: float, x: float, y: float, ha: str, va: str) -> Box:
    """The box (SVG units) of bold ``lines`` anchored at (x, y) with matplotlib's ha / va."""
    w = max(text_width(s, size, bold=True) for s in lines)
    h = text_height(len(lines), size)
    x0 = x if ha == "left" else x - w if ha == "right" else x - 0.5 * w
    y0 = y if va == "top" else y - h if va == "bottom" else y - 0.5 * h
    return Box(x0, x0 + w, y0, y0 + h)


def _label(lines: Sequence[str], box: Box, ha: str, colour: str, *, size: float = FONT, edge: str | None = None,
           gid: str | None = None) -> str:
    """Bold ``lines`` filling the text box ``box`` (aligned ``ha``) on a rounded white box (pad and
    corner radius 0.2 x size, 80 % opaque, edge ``edge`` or ``colour``)."""
    r = 0.2 * size
    b = box.padded(r)
    x0, x1, y0, y1 = num(b.x0), num(b.x1), num(b.y0), num(b.y1)
    xi0, xi1, yi0, yi1 = num(b.x0 + r), num(b.x1 - r), num(b.y0 + r), num(b.y1 - r)
    d = (f"M{xi0} {y1}L{xi1} {y1}Q{x1} {y1} {x1} {yi1}L{x1} {yi0}Q{x1} {y0} {xi1} {y0}"
         f"L{xi0} {y0}Q{x0} {y0} {x0} {yi0}L{x0} {yi1}Q{x0} {y1} {xi0} {y1}Z")
    x, anchor = {"left": (box.x0, "start"), "right": (box.x1, "end")}.get(ha, (0.5 * (box.x0 + box.x1), "middle"))
    return svg.group(gid, svg.path(d, fill="#ffffff", stroke=edge or colour, width=0.7, opacity=0.8),
                     svg.text(x, box.y0 + ASCENT * size, list(lines), size=size, anchor=anchor, bold=True, fill=colour))


def _title(canvas: Canvas, s: str) -> None:
    """The plot's title centred at the top; shrunk (0.5 pt steps, not below 5 pt), then elided, to fit."""
    size, room = TITLE_FONT, canvas.width - 2 * _PAD_PX
    while text_width(s, size) > room and size > 5.0:
        size -= 0.5
    shown = s
    while text_width(shown, size) > room and len(s) > 4:
        s = s[:-2]
        shown = s + "…"
    canvas.text.append(svg.group("tp-title", svg.text(0.5 * canvas.width, 0.025 * canvas.height + ASCENT * size,
                                                      shown, size=size)))


def axis_ticks(transform, limits: tuple[float, float]):
    """(major positions, labels, minor positions) of an axis on the transformed scale between
    ``limits``: raw decades for a logicle/arcsinh axis (:func:`decade_ticks`), round linear values
    (``50K``, ``100K``) for a linear one. The reports' plots and the review app use it."""
    ticks = decade_ticks(transform, limits)
    if ticks is None:
        major = _linear_ticks(limits)
        ticks = major, [_linear_label(v, limits) for v in major], ()
    return ticks


def _style_axis(canvas: Canvas, frame: Frame, axis: Axis, which: str) -> None:
    """Ticks, tick labels and label of one axis (limits: the frame's)."""
    limits = frame.xlim if which == "x" else frame.ylim
    _draw_ticks(canvas, frame, which, *axis_ticks(axis.transform, limits), label=axis.label)


def _linear_ticks(limits) -> np.ndarray:
    from matplotlib.ticker import MaxNLocator

    values = MaxNLocator(5).tick_values(*limits)
    return values[(values >= limits[0] - 1e-9 * abs(limits[1])) & (values <= limits[1] + 1e-9 * abs(limits[1]))]


def _linear_label(value: float, limits) -> str:
    if max(abs(limits[0]), abs(limits[1])) >= 1e4:
        return f"{value / 1000:.0f}K" if value else "0"
    return f"{value:g}"


def _draw_ticks(canvas: Canvas, frame: Frame, which: str, major, labels, minor=(), *, label: str = "",
                ids: bool = True) -> None:
    """Tick marks outwards (major 3.5 pt, minor 2 pt), tick labels 5 pt off the spine and the axis
    label beyond them, of axis ``which``; ``ids``: tick labels and axis label in groups with ids
    ``tp-xtick-<i>``, ``tp-xlabel`` (...), as a page's checks of the gate plots' axes expect."""
    x = which == "x"
    b = frame.box
    for where, length, width in ((major, 3.5, 0.8), (minor, 2.0, 0.6)):
        at = nums(frame.sx(where) if x else frame.sy(where))
        if at:
            d = "".join(f"M{p} {num(b.y1)}v{num(length)}" if x else f"M{num(b.x0)} {p}h-{num(length)}" for p in at)
            canvas.frame.append(svg.path(d, stroke="#000000", width=width))
    size, label_size = FONT - 0.5, FONT + 0.5
    shown = [(i, float(p), t) for i, (p, t) in enumerate(zip(np.asarray(major, float).tolist(), labels)) if t]
    for i, p, t in shown:
        canvas.text.append(svg.group(f"tp-{which}tick-{i}" if ids else None, svg.text(
            float(frame.sx(p)), b.y1 + 5.0 + ASCENT * size, t, size=size) if x else svg.text(
            b.x0 - 5.0, float(frame.sy(p)) + 0.5 * ASCENT * size, t, size=size, anchor="end")))
    if not label:
        return
    if x:
        height = size * (ASCENT + DESCENT) if shown else 0.0
        canvas.text.append(svg.group("tp-xlabel" if ids else None, svg.text(
            0.5 * (b.x0 + b.x1), b.y1 + 5.0 + height + 1.0 + ASCENT * label_size, label, size=label_size)))
    else:
        width = max((text_width(t, size) for _, _, t in shown), default=0.0)
        canvas.text.append(svg.group("tp-ylabel" if ids else None, svg.text(
            b.x0 - 5.0 - width - 2.0 - DESCENT * label_size, 0.5 * (b.y0 + b.y1), label, size=label_size, rotate=True)))


def decade_ticks(transform, limits: tuple[float, float]):
    """(major positions, labels, minor positions) at raw decades for a logicle/arcsinh axis; None for linear.

    Majors at 0 and ±10^k; a label closer than 7 % of the axis to a more important label
    (0, then positive decades, then negative ones) is left empty, its tick kept.
    """
    kind = getattr(transform, "kind", "linear")
    if kind == "linear" or transform is None:
        return None
    decades = [10.0 ** k for k in range(1, 8)]
    raw = np.array([-d for d in decades[::-1]] + [0.0] + decades)
    pos = transform.apply(raw)
    keep = (pos >= limits[0]) & (pos <= limits[1])
    raw, pos = raw[keep], pos[keep]
    span = limits[1] - limits[0]
    priority = sorted(range(len(raw)), key=lambda i: (raw[i] != 0, raw[i] < 0, abs(raw[i])))
    shown: list[float] = []
    labels = [""] * len(raw)
    for i in priority:
        if all(abs(pos[i] - p) >= 0.07 * span for p in shown):
            shown.append(pos[i])
            r = raw[i]
            labels[i] = "0" if r == 0 else ("-" if r < 0 else "") + "10" + str(int(round(np.log10(abs(r))))).translate(_SUPERSCRIPT)
    minor_raw = np.array([s * m * d for d in decades[:-1] for m in range(2, 10) for s in (1, -1)])
    minor = transform.apply(minor_raw)
    minor = np.sort(minor[(minor >= limits[0]) & (minor <= limits[1])])
    return pos, labels, minor


def _data_limits(values: np.ndarray, extra: Sequence[float] = (), axis: "Axis | None" = None) -> tuple[float, float]:
    """Display range when no fixed one is given: the 0.1st..99.9th percentile of the finite values,
    padded 5 %, widened to hold gate coordinates ``extra`` within one data span of it; linear scatter
    axes (FSC/SSC) start at 0 when the data are non-negative."""
    finite = values[np.isfinite(values)]
    lo, hi = (float(v) for v in np.percentile(finite, [0.1, 99.9])) if finite.size else (0.0, 1.0)
    span = max(hi - lo, 1e-12)
    near = [float(e) for e in extra if e is not None and np.isfinite(e) and lo - span <= e <= hi + span]
    if near:
        lo, hi = min(lo, *near), max(hi, *near)
    scatter = axis is not None and axis.dim.upper().startswith(("FSC", "SSC"))
    if scatter and axis is not None and getattr(axis.transform, "kind", "") == "linear" and lo >= 0:
        lo = 0.0
    if hi <= lo:
        hi = lo + 1.0
    pad = 0.05 * (hi - lo)
    return (lo if scatter and lo == 0.0 else lo - pad), hi + pad


def _limits(axis: Axis, values: np.ndarray, extra: Sequence[float] = ()) -> tuple[float, float]:
    return (axis.limits[0], axis.limits[1]) if axis.limits is not None else _data_limits(values, extra, axis)


# --- gates ------------------------------------------------------------------------------


def _gate_extent(gate, dim: str) -> list[float]:
    """Gate coordinates on ``dim`` (to keep the whole gate in view, and to place its label): the
    gate protocol's ``extent`` (tilpheno.gates.geometry.Gate)."""
    return list(gate.extent(dim))


def _dash(width: float) -> str:
    """matplotlib's "--" pattern (3.7 on, 1.6 off) scaled by the line width, points."""
    return f"{num(3.7 * width)} {num(1.6 * width)}"


def _draw_gate(canvas: Canvas, frame: Frame, gate, xdim: str, ydim: str | None, colour: str) -> None:
    """Draw ``gate`` on a frame showing ``xdim`` (and ``ydim``); dimensions not shown are ignored.
    Lines span the whole frame; everything is clipped to it.

    Dispatches on the gate protocol's ``drawing()`` (tilpheno.gates.geometry.Drawing), not on classes."""
    shape = gate.drawing()
    b = frame.box
    out = canvas.data

    def vline(v, width=1.5, dash=None):
        out.append(svg.path(f"M{num(float(frame.sx(v)))} {num(b.y0)}V{num(b.y1)}", stroke=colour, width=width, dash=dash))

    def hline(v, width=1.5, dash=None):
        out.append(svg.path(f"M{num(b.x0)} {num(float(frame.sy(v)))}H{num(b.x1)}", stroke=colour, width=width, dash=dash))

    def outline(xs, ys):
        out.append(svg.path(svg.polyline(frame.sx(xs), frame.sy(ys), close=True), stroke=colour, width=1.5))

    if shape.shape == "polygon" and ydim is not None:
        verts = np.asarray(shape.vertices, float)
        if tuple(shape.dims) == (ydim, xdim):
            verts = verts[:, ::-1]
        outline(verts[:, 0], verts[:, 1])
    elif shape.shape == "ellipse" and ydim is not None and set(shape.dims[:2]) == {xdim, ydim} and len(shape.dims) == 2:
        order = [shape.dims.index(xdim), shape.dims.index(ydim)]
        cov = np.asarray(shape.covariance)[np.ix_(order, order)]
        vals, vecs = np.linalg.eigh(cov)
        half = np.sqrt(vals * shape.distance_square)            # semi-axes along the eigenvectors
        t = np.linspace(0.0, 2 * np.pi, 97)[:-1]
        pts = np.asarray(shape.mean, float)[order][:, None] + vecs @ (half[:, None] * np.vstack([np.cos(t), np.sin(t)]))
        outline(pts[0], pts[1])
    elif shape.shape == "intervals":
        bounds = dict(shape.bounds)
        if ydim is None or ydim not in bounds:
            for v in bounds.get(xdim, (None, None)):
                if v is not None:
                    vline(v)
        if ydim is not None and xdim not in bounds and ydim in bounds:
            for v in bounds[ydim]:
                if v is not None:
                    hline(v)
        if ydim is not None and xdim in bounds and ydim in bounds:
            (x0, x1), (y0, y1) = bounds[xdim], bounds[ydim]
            (xl0, xl1), (yl0, yl1) = frame.xlim, frame.ylim
            x0, x1 = xl0 if x0 is None else x0, xl1 if x1 is None else x1
            y0, y1 = yl0 if y0 is None else y0, yl1 if y1 is None else y1
            outline([x0, x1, x1, x0], [y0, y0, y1, y1])
    elif shape.shape == "dividers":
        for dim, values in shape.cuts.items():
            for v in values:
                if dim == xdim:
                    vline(v, 1.2, _dash(1.2))
                elif dim == ydim:
                    hline(v, 1.2, _dash(1.2))


# --- label placement --------------------------------------------------------------------

Candidate = tuple[float, float, str, str]   # x, y (data), ha, va


def _place(frame: Frame, lines: Sequence[str], size: float, candidates: Sequence[Candidate],
           covered: Callable[[tuple], float], *, slack: float = 0.0, avoid: Sequence[Box] = (),
           vlines: Sequence[float] = (), hlines: Sequence[float] = ()) -> tuple[Box, str]:
    """The best place for a boxed label of bold ``lines``: each candidate first moved inside the
    frame, then fewest boxes of ``avoid`` overlapped, then fewest lines crossed (data x in
    ``vlines``, y in ``hlines``), then fewest events under its box (``covered(data box)``); an
    earlier candidate wins while its count is within ``slack`` events of the best. Returns the
    label's outer box (rounded box and its line; SVG units) and its alignment."""
    b = frame.box
    pad = 0.2 * size + 1.0            # the rounded box: pad 0.2 x font size, plus its line
    vl = [float(v) for v in np.atleast_1d(frame.sx(np.asarray(vlines, float)))] if len(vlines) else []
    hl = [float(v) for v in np.atleast_1d(frame.sy(np.asarray(hlines, float)))] if len(hlines) else []
    scored = []
    for x, y, ha, va in candidates:
        ax_, ay_ = float(frame.sx(x)), float(frame.sy(y))
        box = _label_box(lines, size, ax_, ay_, ha, va).padded(pad)
        # a box anchored on a line (a quadrant's inner corner) steps off it, to the side it extends to
        dx = sum(_off_line(box.x0, box.x1, v, ax_, ha, "left", "right") for v in vl)
        dy = sum(_off_line(box.y0, box.y1, v, ay_, va, "top", "bottom") for v in hl)   # SVG y grows downwards
        box = box.translated(dx, dy)
        ix = max(0.0, b.x0 + _PAD_PX - box.x0) - max(0.0, box.x1 - (b.x1 - _PAD_PX))
        iy = max(0.0, b.y0 + _PAD_PX - box.y0) - max(0.0, box.y1 - (b.y1 - _PAD_PX))
        box = box.translated(ix, iy)
        bx0, bx1, by0, by1 = frame.data_x(box.x0), frame.data_x(box.x1), frame.data_y(box.y1), frame.data_y(box.y0)
        clashes = (sum(box.overlaps(other) for other in avoid),
                   sum(bx0 < v < bx1 for v in vlines) + sum(by0 < v < by1 for v in hlines))
        scored.append((clashes, covered((bx0, bx1, by0, by1)), box, ha))
    fewest = min(c[0] for c in scored)
    usable = [c for c in scored if c[0] == fewest]
    least = min(c[1] for c in usable)
    _, _, box, ha = next(c for c in usable if c[1] <= least + slack)
    return box, ha


def _placed_label(canvas: Canvas, frame: Frame, lines: Sequence[str], colour: str, candidates: Sequence[Candidate],
                  covered: Callable[[tuple], float], *, size: float = FONT, edge: str | None = None,
                  gid: str | None = None, **place) -> Box:
    """:func:`_place` the label, draw it; returns its outer box (to be avoided by the next)."""
    box, ha = _place(frame, lines, size, candidates, covered, **place)
    canvas.text.append(_label(lines, box.padded(-(0.2 * size + 1.0)), ha, colour, size=size, edge=edge, gid=gid))
    return box


def _off_line(lo: float, hi: float, line: float, anchor: float, align: str, start: str, end: str) -> float:
    """Shift (SVG units) that moves a box [lo, hi] anchored on a line (``anchor`` within 3 px of
    it, aligned ``align``) off that line, to the side it extends to; 0 for any other box."""
    if not lo < line < hi or abs(anchor - line) > 3.0:
        return 0.0
    if align == start:
        return line + 1.5 - lo
    if align == end:
        return line - 1.5 - hi
    return 0.0


def _grid_cover(counts: np.ndarray, xlim, ylim) -> Callable[[tuple], float]:
    """Events under a data box, from the (x bins, y bins) count grid over xlim x ylim."""
    nx, ny = counts.shape
    cum = np.zeros((nx + 1, ny + 1))
    cum[1:, 1:] = counts.cumsum(0).cumsum(1)

    def covered(box):
        x0, x1, y0, y1 = box
        i0, i1 = (int(np.clip(np.floor((v - xlim[0]) / (xlim[1] - xlim[0]) * nx), 0, nx)) for v in (x0, x1))
        j0, j1 = (int(np.clip(np.floor((v - ylim[0]) / (ylim[1] - ylim[0]) * ny), 0, ny)) for v in (y0, y1))
        i1, j1 = min(nx, i1 + 1), min(ny, j1 + 1)
        return float(cum[i1, j1] - cum[i0, j1] - cum[i1, j0] + cum[i0, j0])

    return covered


def _curve_cover(edges: np.ndarray, heights: Sequence[np.ndarray]) -> Callable[[tuple], float]:
    """Area of histogram curves under a data box (how much of the curves a label would hide)."""
    left = edges[:-1]

    def covered(box):
        x0, x1, y0, y1 = box
        sel = (left + (edges[1] - edges[0]) >= x0) & (left <= x1)
        return float(sum(np.clip(h[sel] - y0, 0, y1 - y0).sum() for h in heights))

    return covered


def _around(lo: float, hi: float, span: float) -> list[float]:
    return [0.5 * (lo + hi), lo + 0.08 * span, hi - 0.08 * span]


def _gate_label_candidates(gate, xdim, ydim, xlim, ylim) -> list[Candidate]:
    """Above, below, right and left of the gate's extent, then the four corners of the plot."""
    xs = [v for v in _gate_extent(gate, xdim) if np.isfinite(v)] or list(xlim)
    ys = [v for v in _gate_extent(gate, ydim) if np.isfinite(v)] or list(ylim)
    gx0, gx1 = max(min(xs), xlim[0]), min(max(xs), xlim[1])
    gy0, gy1 = max(min(ys), ylim[0]), min(max(ys), ylim[1])
    cx, cy = 0.5 * (gx0 + gx1), 0.5 * (gy0 + gy1)
    return [
        (cx, gy1, "center", "bottom"), (cx, gy0, "center", "top"), (gx1, cy, "left", "center"),
        (gx0, cy, "right", "center"), (xlim[1], ylim[1], "right", "top"), (xlim[0], ylim[1], "left", "top"),
        (xlim[1], ylim[0], "right", "bottom"), (xlim[0], ylim[0], "left", "bottom"),
    ]


# --- plots ------------------------------------------------------------------------------


def _bins_of(values: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Each value's bin among ``bins`` equal bins over ``[lo, hi]`` (``lo < hi``, every value within),
    as ``np.histogramdd`` puts it: ``edges[i] <= value < edges[i + 1]`` with ``edges =
    np.linspace(lo, hi, bins + 1)``, ``hi`` in the last bin. The position is computed, then moved by
    one bin where the value lies on the other side of the edge it is compared with (``np.histogram``'s
    own path for equal bins), instead of a binary search among the edges for every value."""
    edges = np.linspace(lo, hi, bins + 1)
    index = ((values - lo) / (hi - lo) * bins).astype(np.intp)
    np.minimum(index, bins - 1, out=index)
    index[values < edges[index]] -= 1
    index[(values >= edges[index + 1]) & (index != bins - 1)] += 1
    return index


def _counts_2d(x: np.ndarray, y: np.ndarray, xlim: tuple[float, float], ylim: tuple[float, float]) -> np.ndarray:
    """``np.histogram2d(x, y, bins=BINS, range=(xlim, ylim))[0]`` of finite values within the ranges,
    bit for bit and in the same memory layout (a float view into the counts with one outer bin on each
    side), at a fifth of its CPU (:func:`_bins_of`); a range of zero width goes to numpy."""
    if not (xlim[0] < xlim[1] and ylim[0] < ylim[1]):
        return np.histogram2d(x, y, bins=BINS, range=(xlim, ylim))[0]
    side = BINS + 2
    cell = (_bins_of(np.asarray(x, np.float64), xlim[0], xlim[1], BINS) + 1) * side
    cell += _bins_of(np.asarray(y, np.float64), ylim[0], ylim[1], BINS) + 1
    counts = np.bincount(cell, minlength=side * side).reshape(side, side).astype(float, casting="safe")
    return counts[1:-1, 1:-1]


def _density(canvas: Canvas, frame: Frame, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pseudo-colour density of (x, y) under the frame (jet, log-scaled 1 .. max, empty bins
    transparent); returns the (x bins, y bins) counts. Events beyond the display range are piled on
    its edge (FlowJo)."""
    from matplotlib import colormaps

    xlim, ylim = frame.xlim, frame.ylim
    ok = np.isfinite(x) & np.isfinite(y)
    xs = np.clip(x[ok], xlim[0], xlim[1])
    ys = np.clip(y[ok], ylim[0], ylim[1])
    counts = _counts_2d(xs, ys, xlim, ylim)
    if counts.any():
        image = counts.T[::-1]                       # rows from the top of the plot
        with np.errstate(divide="ignore"):
            level = np.log(image) / np.log(max(2.0, float(counts.max())))
        rgba = colormaps["jet"](np.clip(level, 0.0, 1.0), bytes=True)
        rgba[..., 3] = np.where(image > 0, 255, 0)
        canvas.image(rgba, frame.box)
    return counts


def _stairs(frame: Frame, counts: np.ndarray, edges: np.ndarray) -> str:
    """Path data of a histogram's outline, down to 0 at both ends."""
    xs = np.concatenate([[edges[0]], np.repeat(edges, 2)[1:-1], [edges[-1]]])
    ys = np.concatenate([[0.0], np.repeat(np.asarray(counts, float), 2), [0.0]])
    return svg.polyline(frame.sx(xs), frame.sy(ys))


def pct_text(pct_of_parent: float) -> str:
    """A gate's share as shown, ``"41.2%"``; ``"% not determined"`` for a NaN share (a gate resting on
    an undetermined one, ``tilpheno.phenotype.population_table``), never ``"nan%"``."""
    return f"{pct_of_parent:.1f}%" if math.isfinite(pct_of_parent) else "% not determined"


def pct_label(population: str, pct_of_parent: float) -> str:
    """A gate's label, ``"CD4+ 41.2%"`` (:func:`pct_text`)."""
    return f"{population} {pct_text(pct_of_parent)}"


def density_plot(
    x: np.ndarray,
    y: np.ndarray,
    xaxis: Axis,
    yaxis: Axis,
    *,
    gate,
    population: str,
    pct_of_parent: float,
    title: str,
    alt: str = "",
    colours: Mapping[str, str] | None = None,
) -> str:
    """Pseudo-colour density of the parent's events on (x, y) with ``gate`` drawn and labelled
    "population pct%" where the label hides the fewest events (near the gate); ``colours``: the
    study's (``population_colour``). Returns SVG."""
    colour = population_colour(population, colours)
    xlim = _limits(xaxis, x, _gate_extent(gate, xaxis.dim))
    ylim = _limits(yaxis, y, _gate_extent(gate, yaxis.dim))
    canvas, frame = _canvas(xlim, ylim)
    counts = _density(canvas, frame, x, y)
    _style_axis(canvas, frame, xaxis, "x")
    _style_axis(canvas, frame, yaxis, "y")
    _draw_gate(canvas, frame, gate, xaxis.dim, yaxis.dim, colour)
    _placed_label(canvas, frame, [pct_label(population, pct_of_parent)], colour,
                  _gate_label_candidates(gate, xaxis.dim, yaxis.dim, xlim, ylim), _grid_cover(counts, xlim, ylim),
                  gid="tp-label", slack=0.02 * float(counts.sum()))   # next to its gate unless that hides 2 % more events
    _title(canvas, title)
    return canvas.svg(alt or f"{population} gate on {yaxis.label} vs {xaxis.label}, {pct_text(pct_of_parent)}")


def histogram_plot(
    x: np.ndarray,
    axis: Axis,
    *,
    gate,
    population: str,
    pct_of_parent: float,
    title: str,
    alt: str = "",
    colours: Mapping[str, str] | None = None,
) -> str:
    """Histogram (counts) of the parent's events on one dimension with a 1-D gate drawn and
    labelled on its gated side, above the curve where possible; ``colours``: the study's
    (``population_colour``). Returns SVG."""
    colour = population_colour(population, colours)
    xlim = _limits(axis, x, _gate_extent(gate, axis.dim))
    finite = x[np.isfinite(x)]
    counts, edges = np.histogram(finite, bins=BINS, range=xlim)
    top = max(1.0, float(counts.max())) * 1.3
    canvas, frame = _canvas(xlim, (0.0, top))
    canvas.data.append(svg.path(_stairs(frame, counts, edges) + "Z", fill="#9aa5b1", opacity=0.85))
    _style_axis(canvas, frame, axis, "x")
    _style_axis(canvas, frame, Axis("events", "events"), "y")
    _draw_gate(canvas, frame, gate, axis.dim, None, colour)
    lo, hi = _gated_interval(gate, axis.dim, xlim)
    span = xlim[1] - xlim[0]
    candidates = [(c, top, ha, "top") for c, ha in zip(_around(lo, hi, span), ("center", "left", "right"))]
    candidates += [(xlim[1], top, "right", "top"), (xlim[0], top, "left", "top")]
    _placed_label(canvas, frame, [pct_label(population, pct_of_parent)], colour, candidates,
                  _curve_cover(edges, [counts]), gid="tp-label", vlines=_gate_extent(gate, axis.dim))
    _title(canvas, title)
    return canvas.svg(alt or f"{population} gate on {axis.label}, {pct_text(pct_of_parent)}")


def _gated_interval(gate, dim: str, xlim) -> tuple[float, float]:
    """The part of the x range a 1-D gate keeps (its label goes there)."""
    low, high = xlim
    bounds = gate.drawing().bounds
    if len(gate.dims) == 1 and dim in bounds:
        gate_low, gate_high = bounds[dim]
        low = xlim[0] if gate_low is None else max(xlim[0], gate_low)
        high = xlim[1] if gate_high is None else min(xlim[1], gate_high)
    return (low, high) if high > low else tuple(xlim)


# legend entries: (kind "patch" | "line", colour, line width, dash or None, text)
LegendEntry = tuple[str, str, float, "str | None", str]


def _legend(canvas: Canvas, entries: Sequence[LegendEntry], above: float) -> None:
    """A frameless legend centred in the band above SVG y ``above``: two columns (filled column
    by column) at FONT - 0.5, or one column at FONT - 1.5 when two do not fit the plot's width.
    Sizes in font sizes as matplotlib's legend: handle 1.6 (1.4) long, 0.7 high; text 0.5 (0.8)
    after it; columns 1.0 apart; rows 0.5 (0.2) apart; border 0.4; 0.2 (0.1) clear of ``above``."""
    for ncol, size, handle, textpad, rowgap, lift in ((2, FONT - 0.5, 1.6, 0.5, 0.5, 0.2), (1, FONT - 1.5, 1.4, 0.8, 0.2, 0.1)):
        rows = -(-len(entries) // ncol)
        columns = [entries[i * rows:(i + 1) * rows] for i in range(ncol)]
        widths = [(handle + textpad) * size + max(text_width(e[4], size) for e in col) for col in columns if col]
        total = sum(widths) + 1.0 * size * (len(widths) - 1) + 2 * 0.4 * size
        if total <= canvas.width - 2 * _PAD_PX:
            break
    line_h = size * (ASCENT + DESCENT)
    height = rows * line_h + (rows - 1) * rowgap * size
    top = above - lift * size - 0.4 * size - height
    parts = []
    x = 0.5 * (canvas.width - total) + 0.4 * size
    for col, width in zip(columns, widths):
        for r, (kind, colour, lw, dash, label) in enumerate(col):
            y = top + r * (line_h + rowgap * size)
            mid = y + 0.5 * line_h
            if kind == "patch":
                parts.append(svg.path(svg.polyline([x, x + handle * size, x + handle * size, x],
                                                   [mid - 0.35 * size, mid - 0.35 * size, mid + 0.35 * size, mid + 0.35 * size],
                                                   close=True), fill=colour, opacity=0.9))
            else:
                parts.append(svg.path(f"M{num(x)} {num(mid)}H{num(x + handle * size)}", stroke=colour, width=lw, dash=dash))
            parts.append(svg.text(x + (handle + textpad) * size, y + ASCENT * size, label, size=size, anchor="start"))
        x += width + 1.0 * size
    canvas.text.append(svg.group("tp-legend", *parts))


def fmo_overlay_plot(
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
    alt: str = "",
    colours: Mapping[str, str] | None = None,
    control: str = "FMO",
) -> str:
    """FMO (grey, filled) vs stained (coloured line) histograms, normalised to mode, with the
    threshold line; the legend sits in a band above the axes, clear of the line and the curves.

    Percentages are of the parent population in each tube with value > threshold (NaN, a share
    resting on an undetermined gate: '% + not determined'); ``colours``: the study's (``population_colour``);
    ``control``: the grey histogram's name in the legend (an unstained control standing in for the FMO:
    ``unstained control in live_lymph``, where its events were read). Returns SVG.
    """
    colour = population_colour(marker, colours)
    xlim = _limits(axis, np.concatenate([stained, fmo]), [threshold])
    canvas, frame = _canvas(xlim, (0.0, 105.0), FMO_AXES_RECT)
    for values, kind in ((fmo, "fmo"), (stained, "stained")):
        finite = values[np.isfinite(values)]
        counts, edges = np.histogram(finite, bins=BINS, range=xlim)
        norm = counts / counts.max() * 100 if counts.max() > 0 else counts.astype(float)
        if kind == "fmo":
            canvas.data.append(svg.path(_stairs(frame, norm, edges) + "Z", fill="#b0b0b0", opacity=0.9))
        else:
            canvas.data.append(svg.path(_stairs(frame, norm, edges), stroke=colour, width=1.3))
    sx = num(float(frame.sx(threshold)))
    canvas.data.append(svg.group("tp-threshold", svg.path(f"M{sx} {num(frame.box.y0)}V{num(frame.box.y1)}",
                                                          stroke="#000000", width=1.1, dash=_dash(1.1))))
    _draw_ticks(canvas, frame, "y", [0, 25, 50, 75, 100], ["0", "25", "50", "75", "100"], label="% of mode")
    _style_axis(canvas, frame, axis, "x")
    plus = {kind: f"{pct:.1f}% +" if math.isfinite(pct) else "% + not determined"
            for kind, pct in (("fmo", pct_fmo), ("stained", pct_stained))}
    _legend(canvas, [("patch", "#b0b0b0", 0.0, None, f"{control}: {plus['fmo']}"),
                     ("line", colour, 1.3, None, f"stained: {plus['stained']}"),
                     ("line", "#000000", 1.1, _dash(1.1), threshold_note)],
            frame.box.y0 - 0.01 * canvas.height)
    _title(canvas, title)
    return canvas.svg(alt or f"{marker} {control} vs stained on {axis.label}, threshold {threshold:.3f}")


def _threshold(gate, dim: str, limits) -> float:
    """The dividing value of a 1-D range gate on ``dim`` (its low edge, else its high edge)."""
    values = [v for v in _gate_extent(gate, dim) if v is not None and np.isfinite(v)]
    return float(np.clip(values[0], *limits)) if values else 0.5 * (limits[0] + limits[1])


def quadrant_plot(
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
    names: Mapping[tuple[bool, bool], str] | None = None,
    alt: str = "",
) -> str:
    """Two sibling 1-D gates as a FlowJo quadrant plot: density of the parent's events on (x, y),
    both thresholds drawn, and each quadrant's name (``names[(x inside, y inside)]``, e.g. NK) and
    % of parent in the corner of that quadrant that hides the fewest events. Returns SVG.

    Quadrant membership uses the gates themselves (``xgate.contains`` / ``ygate.contains``), so
    the numbers add up to 100 % of the events with finite values on both axes.
    ``percentages``: the numbers when (x, y) are a subsample (``quadrant_percentages`` of all
    events, computed beforehand); None computes them from (x, y).
    """
    quadrants = percentages if percentages is not None else quadrant_percentages(x, y, xgate, ygate, xaxis.dim, yaxis.dim)
    names = names or {}
    xlim = _limits(xaxis, x, _gate_extent(xgate, xaxis.dim))
    ylim = _limits(yaxis, y, _gate_extent(ygate, yaxis.dim))
    canvas, frame = _canvas(xlim, ylim)
    counts = _density(canvas, frame, x, y)
    _style_axis(canvas, frame, xaxis, "x")
    _style_axis(canvas, frame, yaxis, "y")
    _draw_gate(canvas, frame, xgate, xaxis.dim, yaxis.dim, population_colour(xpopulation))
    _draw_gate(canvas, frame, ygate, xaxis.dim, yaxis.dim, population_colour(ypopulation))
    covered = _grid_cover(counts, xlim, ylim)
    xt, yt = _threshold(xgate, xaxis.dim, xlim), _threshold(ygate, yaxis.dim, ylim)
    placed: list[Box] = []
    slack = 0.005 * float(counts.sum())   # the plot's own corner unless it hides 0.5 % more events
    regions = {(xs, ys): ((xt, xlim[1]) if xs else (xlim[0], xt), (yt, ylim[1]) if ys else (ylim[0], yt))
               for xs in (True, False) for ys in (True, False)}
    # the smallest quadrant chooses first: its label has the fewest places that fit
    def area(key):
        (a0, a1), (b0, b1) = regions[key]
        return (a1 - a0) / (xlim[1] - xlim[0]) * (b1 - b0) / (ylim[1] - ylim[0])

    for xs, ys in sorted(regions, key=area):
        (x0, x1), (y0, y1) = regions[(xs, ys)]
        name = names.get((xs, ys), "")
        lines = ([name] if name else []) + [f"{quadrants[(xs, ys)]:.1f}%"]
        outer = [((x1 if xs else x0), (y1 if ys else y0))]          # the plot's corner first (FlowJo)
        inner = [(cx, cy) for cx in (x0, x1) for cy in (y0, y1) if (cx, cy) != outer[0]]
        candidates = [(cx, cy, "right" if cx == x1 else "left", "top" if cy == y1 else "bottom")
                      for cx, cy in outer + inner]
        placed.append(_placed_label(canvas, frame, lines, "#222222", candidates, covered, size=FONT - 0.5,
                                    edge="#666666", gid=f"tp-quadrant-{'+' if xs else '-'}{'+' if ys else '-'}",
                                    slack=slack, avoid=list(placed), vlines=[xt], hlines=[yt]))
    _title(canvas, title)
    return canvas.svg(alt or f"{xpopulation} and {ypopulation} quadrants on {yaxis.label} vs {xaxis.label}")
