"""Report plots: FlowJo-style gate plots, quadrant plots and FMO overlays as self-contained SVG.

Every plotting function is pure (arrays and geometry in, SVG text out), draws on a matplotlib
``Figure`` of its own thread (no pyplot; one figure per axes rectangle and thread, built once and
emptied before each plot, since building axes costs as much as drawing a plot; no other state
beyond an ``rc_context`` around saving; safe in worker processes and threads) and is
deterministic: same arrays, same bytes, whatever was drawn before.

Output: one inline-ready ``<svg>`` element (no XML prolog, no ``<style>``, no metadata, ids
prefixed so several plots can share a page). Axes, ticks, gates and labels are vector; text
stays text (``svg.fonttype = none``, DejaVu Sans, escaped by matplotlib); a density plot's
cells are one embedded PNG (``data:`` URI, ``image-rendering: pixelated``), so size does not grow
with the event count and print stays sharp.

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
  positive decades first). Linear axes: about 5 ticks, thousands as "K".
- Axis labels read "marker (detector)", e.g. "CD3 (FITC-A)"; scatter axes the detector alone.
- A population keeps one colour everywhere (gate outline, label, histogram), see ``population_colour``.
- Density = events per bin on a 128 x 128 grid, log-scaled colour, empty bins transparent.
- Labels never leave the plot area: every label is measured and moved inside the axes, and put
  where it covers the fewest events among a few candidate places (near its gate; quadrant labels in
  the corners of their quadrant).
"""
from __future__ import annotations

import hashlib
import re
import threading
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from tilpheno.gates.quadrants import quadrant_percentages

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

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
_RC: dict[RcKeyType, Any] = {"svg.fonttype": "none", "svg.image_inline": True, "svg.hashsalt": "tilpheno",
       "font.family": ["DejaVu Sans"], "axes.unicode_minus": True}
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


# --- figure scaffolding -----------------------------------------------------------------


_CANVASES = threading.local()   # per thread: axes rectangle -> (figure, axes), re-used plot after plot


def _figure(rect=AXES_RECT):
    """The figure and axes of a plot with axes at ``rect``: one pair per rectangle and thread, made
    once and emptied for each plot (:func:`_empty`; building matplotlib axes costs as much as
    drawing a plot), so a worker sets up its figures once, not 41 times per product."""
    cached = getattr(_CANVASES, "figures", None)
    if cached is None:
        cached = _CANVASES.figures = {}
    if rect in cached:
        fig, ax = cached[rect]
        _empty(fig, ax)
        return fig, ax
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIG_INCHES, dpi=72)
    FigureCanvasAgg(fig)   # Agg measures text; saving as SVG switches canvas for the output only
    ax = fig.add_axes(rect)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    cached[rect] = fig, ax
    return fig, ax


def _empty(fig, ax) -> None:
    """Back to the state :func:`_figure` made: everything a plot added removed (images, lines,
    patches, texts, collections, the title and legend), data limits forgotten, autoscaling on,
    axis labels empty (every plot sets its own limits, ticks and labels)."""
    for artist in (*ax.images, *ax.lines, *ax.patches, *ax.texts, *ax.collections, *ax.artists,
                   *fig.texts, *fig.legends):
        artist.remove()
    ax.ignore_existing_data_limits = True
    ax.dataLim.set_points(np.array([[np.inf, np.inf], [-np.inf, -np.inf]]))
    ax.set_autoscale_on(True)
    ax.set_xlabel("")
    ax.set_ylabel("")


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


def _svg(fig, alt: str) -> str:
    """The figure as one inline ``<svg>`` element (see the module docstring)."""
    import io

    from markupsafe import escape
    from matplotlib import rc_context

    buf = io.StringIO()
    with rc_context(_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = _DROP.sub("", _SVG_START.sub("", buf.getvalue(), count=1))
    text = _SIZE.sub("", text, count=2)
    text = _GEOMETRY.sub(_compact, _GROUP_ID.sub("<g>", text))
    text = re.sub(r">\s+<", ">\n<", text)
    text = _FONT_FAMILY.sub("font-family: 'DejaVu Sans', sans-serif", _NO_ROTATION.sub("", text))
    prefix = "p" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8] + "-"
    text = _IDS.sub(lambda m: m.group(1) + prefix, text)
    head = f'<svg class="plot" role="img" aria-label="{escape(alt)}"'
    return head + text[len("<svg"):].rstrip() + "\n"


def _text(ax, x, y, s, colour, *, size=FONT, box=True, ha="center", va="center", transform=None, gid=None):
    kw = dict(fontsize=size, color=colour, ha=ha, va=va, fontweight="bold", parse_math=False, linespacing=1.1, gid=gid)
    if box:
        kw["bbox"] = dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor=colour, alpha=0.8, linewidth=0.7)
    if transform is not None:
        kw["transform"] = transform
    return ax.text(x, y, s, **kw)


def _fit_width(fig, text, max_px: float, min_size: float = 5.0) -> None:
    """Shrink ``text`` (a title) until it fits ``max_px``; below ``min_size`` points, elide it."""
    renderer = fig.canvas.get_renderer()
    while text.get_window_extent(renderer).width > max_px and text.get_fontsize() > min_size:
        text.set_fontsize(text.get_fontsize() - 0.5)
    s = text.get_text()
    while text.get_window_extent(renderer).width > max_px and len(s) > 4:
        s = s[:-2]
        text.set_text(s + "…")


def _title(fig, ax, s: str) -> None:
    t = fig.text(0.5, 0.975, s, ha="center", va="top", fontsize=TITLE_FONT, parse_math=False, gid="tp-title")
    _fit_width(fig, t, fig.bbox.width - 2 * _PAD_PX)


def _style_axis(ax, axis: Axis, limits, which: str) -> None:
    """Limits, ticks and label of one axis. Ticks are drawn as one marker line per axis and plain
    texts (matplotlib's per-tick artists cost more than the rest of the plot)."""
    (ax.set_xlim if which == "x" else ax.set_ylim)(*limits)
    ticks = decade_ticks(axis.transform, limits)
    if ticks is None:
        major = _linear_ticks(limits)
        ticks = major, [_linear_label(v, limits) for v in major], ()
    _draw_ticks(ax, which, *ticks, label=axis.label)


def _linear_ticks(limits) -> np.ndarray:
    from matplotlib.ticker import MaxNLocator

    values = MaxNLocator(5).tick_values(*limits)
    return values[(values >= limits[0] - 1e-9 * abs(limits[1])) & (values <= limits[1] + 1e-9 * abs(limits[1]))]


def _linear_label(value: float, limits) -> str:
    if max(abs(limits[0]), abs(limits[1])) >= 1e4:
        return f"{value / 1000:.0f}K" if value else "0"
    return f"{value:g}"


def _draw_ticks(ax, which: str, major, labels, minor=(), *, label: str = "") -> None:
    """Tick marks (major 3.5 pt, minor 2 pt), tick labels and the axis label of axis ``which``."""
    from matplotlib.markers import TICKDOWN, TICKLEFT
    from matplotlib.transforms import offset_copy

    x = which == "x"
    (ax.set_xticks if x else ax.set_yticks)([])
    trans = ax.get_xaxis_transform() if x else ax.get_yaxis_transform()
    for where, size, width in ((np.asarray(major, float), 3.5, 0.8), (np.asarray(minor, float), 2.0, 0.6)):
        if where.size:
            at = (where, np.zeros(where.size)) if x else (np.zeros(where.size), where)
            ax.plot(*at, linestyle="none", marker=TICKDOWN if x else TICKLEFT, markersize=size,
                    markeredgewidth=width, color="black", transform=trans, clip_on=False)
    offset = offset_copy(trans, fig=ax.figure, x=0 if x else -5.0, y=-5.0 if x else 0, units="points")
    texts = [ax.text(p, 0, t, transform=offset, fontsize=FONT - 0.5, parse_math=False, clip_on=False,
                     ha="center", va="top", gid=f"tp-{which}tick-{i}") if x else
             ax.text(0, p, t, transform=offset, fontsize=FONT - 0.5, parse_math=False, clip_on=False,
                     ha="right", va="center_baseline", gid=f"tp-{which}tick-{i}")
             for i, (p, t) in enumerate(zip(major, labels)) if t]
    renderer = ax.figure.canvas.get_renderer()
    to_pt = 72.0 / ax.figure.dpi
    if x:
        height = max((t.get_window_extent(renderer).height for t in texts), default=0.0) * to_pt
        ax.set_xlabel(label, fontsize=FONT + 0.5, parse_math=False, labelpad=5.0 + height + 1.0, gid="tp-xlabel")
    else:
        width = max((t.get_window_extent(renderer).width for t in texts), default=0.0) * to_pt
        ax.set_ylabel(label, fontsize=FONT + 0.5, parse_math=False, labelpad=5.0 + width + 2.0, gid="tp-ylabel")


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


def _draw_gate(ax, gate, xdim: str, ydim: str | None, colour: str) -> None:
    """Draw ``gate`` on axes showing ``xdim`` (and ``ydim``); dimensions not shown are ignored.

    Dispatches on the gate protocol's ``drawing()`` (tilpheno.gates.geometry.Drawing), not on classes."""
    from matplotlib.patches import Ellipse, Polygon, Rectangle

    shape = gate.drawing()
    style: dict[str, Any] = dict(fill=False, edgecolor=colour, linewidth=1.5)
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
                    ax.axvline(v, color=colour, linewidth=1.5)
        if ydim is not None and xdim not in bounds and ydim in bounds:
            for v in bounds[ydim]:
                if v is not None:
                    ax.axhline(v, color=colour, linewidth=1.5)
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


# --- label placement --------------------------------------------------------------------

Candidate = tuple[float, float, str, str]   # x, y (data), ha, va


def _place(ax, text, candidates: Sequence[Candidate], covered: Callable[[tuple], float], *, slack: float = 0.0,
           avoid: Sequence = (), vlines: Sequence[float] = (), hlines: Sequence[float] = ()):
    """Put ``text`` at the best candidate, each first moved inside the axes: fewest boxes of ``avoid``
    (display units) overlapped, then fewest lines crossed (data x in ``vlines``, y in ``hlines``),
    then fewest events under its box (``covered(data box)``); an earlier candidate wins while its
    count is within ``slack`` events of the best. Returns the label's box (display units)."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    inverse = ax.transData.inverted()
    scored = []
    for x, y, ha, va in candidates:
        text.set_position((x, y))
        text.set_ha(ha)
        text.set_va(va)
        box = text.get_window_extent(renderer)
        if text.get_bbox_patch() is not None:   # the rounded box: pad 0.2 x font size, plus its line
            box = box.padded(0.2 * text.get_fontsize() * ax.figure.dpi / 72 + 1.0)
        # a box anchored on a line (a quadrant's inner corner) steps off it, to the side it extends to
        ax_, ay_ = ax.transData.transform((x, y))
        dx = sum(_off_line(box.x0, box.x1, v, ax_, ha, "left", "right") for v in ax.transData.transform(
            np.column_stack([vlines, np.zeros(len(vlines))]))[:, 0]) if len(vlines) else 0.0
        dy = sum(_off_line(box.y0, box.y1, v, ay_, va, "bottom", "top") for v in ax.transData.transform(
            np.column_stack([np.zeros(len(hlines)), hlines]))[:, 1]) if len(hlines) else 0.0
        box = box.translated(dx, dy)
        ix = max(0.0, frame.x0 + _PAD_PX - box.x0) - max(0.0, box.x1 - (frame.x1 - _PAD_PX))
        iy = max(0.0, frame.y0 + _PAD_PX - box.y0) - max(0.0, box.y1 - (frame.y1 - _PAD_PX))
        box = box.translated(ix, iy)
        anchor = ax.transData.transform((x, y)) + (dx + ix, dy + iy)
        (bx0, by0), (bx1, by1) = inverse.transform([(box.x0, box.y0), (box.x1, box.y1)])
        clashes = (sum(box.overlaps(other) for other in avoid),
                   sum(bx0 < v < bx1 for v in vlines) + sum(by0 < v < by1 for v in hlines))
        scored.append((clashes, covered((bx0, bx1, by0, by1)), tuple(inverse.transform(anchor)), ha, va, box))
    fewest = min(c[0] for c in scored)
    usable = [c for c in scored if c[0] == fewest]
    least = min(c[1] for c in usable)
    _, _, pos, ha, va, box = next(c for c in usable if c[1] <= least + slack)
    text.set_position(pos)
    text.set_ha(ha)
    text.set_va(va)
    return box


def _off_line(lo: float, hi: float, line: float, anchor: float, align: str, start: str, end: str) -> float:
    """Shift (display units) that moves a box [lo, hi] anchored on a line (``anchor`` within 3 px of
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


def _density(ax, x: np.ndarray, y: np.ndarray, xlim, ylim) -> np.ndarray:
    """Pseudo-colour density of (x, y) on the current axes; returns the (x bins, y bins) counts.
    Events beyond the display range are piled on its edge (FlowJo)."""
    from matplotlib.colors import LogNorm

    ok = np.isfinite(x) & np.isfinite(y)
    xs = np.clip(x[ok], xlim[0], xlim[1])
    ys = np.clip(y[ok], ylim[0], ylim[1])
    counts, _, _ = np.histogram2d(xs, ys, bins=BINS, range=(xlim, ylim))
    masked = np.ma.masked_equal(counts.T, 0)
    if masked.count():
        ax.imshow(
            masked, origin="lower", extent=(*xlim, *ylim), aspect="auto", interpolation="none",
            cmap="jet", norm=LogNorm(vmin=1, vmax=max(2.0, float(counts.max()))), zorder=0,
        )
    return counts


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
    fig, ax = _figure()
    counts = _density(ax, x, y, xlim, ylim)
    _style_axis(ax, xaxis, xlim, "x")
    _style_axis(ax, yaxis, ylim, "y")
    _draw_gate(ax, gate, xaxis.dim, yaxis.dim, colour)
    label = _text(ax, 0, 0, f"{population} {pct_of_parent:.1f}%", colour, gid="tp-label")
    _place(ax, label, _gate_label_candidates(gate, xaxis.dim, yaxis.dim, xlim, ylim), _grid_cover(counts, xlim, ylim),
           slack=0.02 * float(counts.sum()))   # next to its gate unless that hides 2 % more events
    _title(fig, ax, title)
    return _svg(fig, alt or f"{population} gate on {yaxis.label} vs {xaxis.label}, {pct_of_parent:.1f}%")


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
    fig, ax = _figure()
    finite = x[np.isfinite(x)]
    counts, edges = np.histogram(finite, bins=BINS, range=xlim)
    ax.stairs(counts, edges, fill=True, color="#9aa5b1", alpha=0.85, linewidth=0)
    top = max(1.0, float(counts.max())) * 1.3
    _style_axis(ax, axis, xlim, "x")
    _style_axis(ax, Axis("events", "events"), (0.0, top), "y")
    _draw_gate(ax, gate, axis.dim, None, colour)
    label = _text(ax, 0, 0, f"{population} {pct_of_parent:.1f}%", colour, gid="tp-label")
    lo, hi = _gated_interval(gate, axis.dim, xlim)
    span = xlim[1] - xlim[0]
    candidates = [(c, top, ha, "top") for c, ha in zip(_around(lo, hi, span), ("center", "left", "right"))]
    candidates += [(xlim[1], top, "right", "top"), (xlim[0], top, "left", "top")]
    _place(ax, label, candidates, _curve_cover(edges, [counts]), vlines=_gate_extent(gate, axis.dim))
    _title(fig, ax, title)
    return _svg(fig, alt or f"{population} gate on {axis.label}, {pct_of_parent:.1f}%")


def _gated_interval(gate, dim: str, xlim) -> tuple[float, float]:
    """The part of the x range a 1-D gate keeps (its label goes there)."""
    low, high = xlim
    bounds = gate.drawing().bounds
    if len(gate.dims) == 1 and dim in bounds:
        gate_low, gate_high = bounds[dim]
        low = xlim[0] if gate_low is None else max(xlim[0], gate_low)
        high = xlim[1] if gate_high is None else min(xlim[1], gate_high)
    return (low, high) if high > low else tuple(xlim)


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
) -> str:
    """FMO (grey, filled) vs stained (coloured line) histograms, normalised to mode, with the
    threshold line; the legend sits in a band above the axes, clear of the line and the curves.

    Percentages are of the parent population in each tube with value > threshold; ``colours``:
    the study's (``population_colour``). Returns SVG.
    """
    colour = population_colour(marker, colours)
    xlim = _limits(axis, np.concatenate([stained, fmo]), [threshold])
    fig, ax = _figure(FMO_AXES_RECT)
    handles = []
    for values, kind in ((fmo, "fmo"), (stained, "stained")):
        finite = values[np.isfinite(values)]
        counts, edges = np.histogram(finite, bins=BINS, range=xlim)
        norm = counts / counts.max() * 100 if counts.max() > 0 else counts.astype(float)
        if kind == "fmo":
            handles.append(ax.stairs(norm, edges, fill=True, color="#b0b0b0", alpha=0.9, linewidth=0,
                                     label=f"FMO: {pct_fmo:.1f}% +"))
        else:
            handles.append(ax.stairs(norm, edges, color=colour, linewidth=1.3, label=f"stained: {pct_stained:.1f}% +"))
    handles.append(ax.axvline(threshold, color="black", linestyle="--", linewidth=1.1, label=threshold_note,
                              gid="tp-threshold"))
    ax.set_ylim(0, 105)
    _draw_ticks(ax, "y", [0, 25, 50, 75, 100], ["0", "25", "50", "75", "100"], label="% of mode")
    _style_axis(ax, axis, xlim, "x")
    top = FMO_AXES_RECT[1] + FMO_AXES_RECT[3]
    legend = fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, top + 0.01), ncol=2,
                        fontsize=FONT - 0.5, frameon=False, handlelength=1.6, columnspacing=1.0,
                        borderaxespad=0.2, handletextpad=0.5)
    renderer = fig.canvas.get_renderer()
    if legend.get_window_extent(renderer).width > fig.bbox.width - 2 * _PAD_PX:
        legend.remove()
        legend = fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, top + 0.005), ncol=1,
                            fontsize=FONT - 1.5, frameon=False, handlelength=1.4, borderaxespad=0.1, labelspacing=0.2)
    legend.set_gid("tp-legend")
    _title(fig, ax, title)
    return _svg(fig, alt or f"{marker} FMO vs stained on {axis.label}, threshold {threshold:.3f}")


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
    fig, ax = _figure()
    counts = _density(ax, x, y, xlim, ylim)
    _style_axis(ax, xaxis, xlim, "x")
    _style_axis(ax, yaxis, ylim, "y")
    _draw_gate(ax, xgate, xaxis.dim, yaxis.dim, population_colour(xpopulation))
    _draw_gate(ax, ygate, xaxis.dim, yaxis.dim, population_colour(ypopulation))
    covered = _grid_cover(counts, xlim, ylim)
    xt, yt = _threshold(xgate, xaxis.dim, xlim), _threshold(ygate, yaxis.dim, ylim)
    placed: list = []
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
        label = _text(ax, 0, 0, (f"{name}\n" if name else "") + f"{quadrants[(xs, ys)]:.1f}%", "#222222",
                      size=FONT - 0.5, gid=f"tp-quadrant-{'+' if xs else '-'}{'+' if ys else '-'}")
        label.get_bbox_patch().set_edgecolor("#666666")
        outer = [((x1 if xs else x0), (y1 if ys else y0))]          # the plot's corner first (FlowJo)
        inner = [(cx, cy) for cx in (x0, x1) for cy in (y0, y1) if (cx, cy) != outer[0]]
        candidates = [(cx, cy, "right" if cx == x1 else "left", "top" if cy == y1 else "bottom")
                      for cx, cy in outer + inner]
        placed.append(_place(ax, label, candidates, covered, slack=slack, avoid=placed, vlines=[xt], hlines=[yt]))
    _title(fig, ax, title)
    return _svg(fig, alt or f"{xpopulation} and {ypopulation} quadrants on {yaxis.label} vs {xaxis.label}")
