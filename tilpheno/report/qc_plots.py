"""Report plots of the acquisition and compensation QC, written as SVG with ``report.svg`` and
``report.plots``' frames, ticks, density and labels (no matplotlib figure).

- :func:`acquisition_plot`: events per second vs time (top) and each checked channel's bin median
  vs time on the QC logicle scale (bottom), anomalous stretches shaded (removed in ``remove`` mode).
  Without a time channel the x axis is the event number; with time in the instrument's own units
  (no ``$TIMESTEP``) the axes say "time units", not seconds.
- :func:`compensation_pair_plot`: pseudo-colour density of a compensated stained tube on two
  detectors, the spillover coefficient and the residual slope of the target's negatives written on it
  (written directly as SVG, as the gate plots).
Both return inline SVG (deterministic, as ``report.plots``); text is never parsed as mathtext.
"""
from __future__ import annotations

import numpy as np

from tilpheno.report import plots, svg

SHADE = "#f4a261"


def _auto_limits(*arrays, margin: float = 0.05) -> tuple[float, float]:
    """The finite range of the values, widened by ``margin`` of it on each side (matplotlib's autoscale)."""
    values = np.concatenate([np.asarray(a, float).ravel() for a in arrays] or [np.zeros(0)])
    values = values[np.isfinite(values)]
    if not values.size:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = margin * (hi - lo)
    return lo - pad, hi + pad


def _ticks(canvas, frame, which: str, label: str) -> None:
    """Linear ticks at 1, 2, 2.5 or 5 x 10^k, as many as fit (matplotlib's automatic count: one per
    3 font sizes of a horizontal axis, per 2 of a vertical one), no ids (not gate-plot axes)."""
    from matplotlib.ticker import MaxNLocator

    limits = frame.xlim if which == "x" else frame.ylim
    room = frame.box.width / (3 * plots.FONT) if which == "x" else frame.box.height / (2 * plots.FONT)
    major = MaxNLocator(max(1, min(9, int(room))), steps=[1, 2, 2.5, 5, 10]).tick_values(*limits)
    major = major[(major >= limits[0]) & (major <= limits[1])]
    plots._draw_ticks(canvas, frame, which, major, [plots._linear_label(v, limits) for v in major], label=label,
                      ids=False)


def _line(frame, x, y) -> str:
    """Path data through the finite points, broken where a value is missing (as matplotlib draws NaN)."""
    sx, sy = frame.sx(x), frame.sy(y)
    ok = np.isfinite(sx) & np.isfinite(sy)
    xs, ys = svg.nums(np.where(ok, sx, 0.0)), svg.nums(np.where(ok, sy, 0.0))
    out, pen = [], "M"
    for good, a, b in zip(ok.tolist(), xs, ys):
        if good:
            out.append(f"{pen}{a} {b}")
            pen = "L"
        else:
            pen = "M"
    return "".join(out)


def acquisition_plot(qc, channels: list[str], labels: dict[str, str] | None = None, title: str = "") -> str:
    """Flow rate and channel medians over acquisition time with anomalous stretches shaded.

    ``qc``: ``tilpheno.acquisition.AcquisitionQC``; ``channels``: the checked channels to draw (at
    most 8 lines); ``labels``: channel -> legend text (e.g. "CD3 (FITC-A)"). A 475.2 x 259.2 pt
    plot: flow rate on top, medians below, both on one time axis (5 % margins), legend on the right.
    """
    labels = labels or {}
    width, height = 72 * 6.6, 72 * 3.6
    canvas = svg.Canvas(width, height)
    timed = qc.time_channel is not None and not qc.rate.empty
    signal = qc.signal
    x = signal["t_mid"].to_numpy() if timed else ((signal["first_event"] + signal["last_event"]) / 2).to_numpy()
    drawn = [c for c in channels if c in signal.columns][:8]
    spans = np.asarray(qc.removed_intervals, float).reshape(-1, 2)
    rate_x = qc.rate["t_start"].to_numpy(float) if timed else np.zeros(0)
    xlim = _auto_limits(x, rate_x, spans)
    frames = []
    for left, bottom, w, h, ylim in (
            (0.10, 0.60, 0.60, 0.28, _auto_limits(qc.rate["rate_per_s"].to_numpy(float)) if timed else (0.0, 1.0)),
            (0.10, 0.13, 0.60, 0.40, _auto_limits(*(signal[c].to_numpy(float) for c in drawn)))):
        box = svg.Box(left * width, (left + w) * width, (1 - bottom - h) * height, (1 - bottom) * height)
        frames.append(svg.Frame(box, xlim, ylim))
    top, below = frames
    for frame in frames:
        b = frame.box
        for start, end in spans:
            x0, x1 = float(frame.sx(start)), float(frame.sx(end if end > start else start + 1e-9))
            canvas.under.append(svg.path(svg.polyline([x0, x1, x1, x0], [b.y0, b.y0, b.y1, b.y1], close=True),
                                         fill=SHADE, opacity=0.35))
        canvas.frame.append(svg.path(f"M{svg.num(b.x0)} {svg.num(b.y0)}V{svg.num(b.y1)}H{svg.num(b.x1)}",
                                     stroke="#000000", width=0.8, cap="square"))
    if timed:
        rate = qc.rate["rate_per_s"].to_numpy(float)
        canvas.data.append(svg.path(_line(top, np.repeat(rate_x, 2)[1:], np.repeat(rate, 2)[:-1]), stroke="#264653",
                                    width=1.0))   # steps: each rate holds until the next interval starts
        _ticks(canvas, top, "y", "events/s" if qc.time_unit == "s" else "events per time unit")
    else:
        b = top.box
        canvas.text.append(svg.text(0.5 * (b.x0 + b.x1), 0.5 * (b.y0 + b.y1) + 0.5 * svg.ASCENT * plots.FONT,
                                    "no time channel: flow rate not checked", size=plots.FONT))
    _ticks(canvas, top, "x", "")
    legend = []
    for i, c in enumerate(drawn):
        colour = plots._PALETTE[i % len(plots._PALETTE)]
        canvas.data.append(svg.path(_line(below, x, signal[c].to_numpy(float)), stroke=colour, width=1.0))
        legend.append((colour, labels.get(c, c)))
    _ticks(canvas, below, "y", "bin median (logicle)")
    _ticks(canvas, below, "x", ("time (s)" if qc.time_unit == "s" else "time (time units)") if timed else "event")
    if legend:   # right of the medians, top-aligned: 2 em line handles, 0.8 em to the text, rows 0.5 em apart
        size, b = 6.5, below.box
        pitch, x0 = size * (svg.ASCENT + svg.DESCENT + 0.5), b.x1 + 0.01 * b.width + 0.4 * size
        parts = []
        for r, (colour, text) in enumerate(legend):
            y = b.y0 + 0.4 * size + r * pitch
            mid = y + 0.5 * size * (svg.ASCENT + svg.DESCENT)
            parts.append(svg.path(f"M{svg.num(x0)} {svg.num(mid)}H{svg.num(x0 + 2 * size)}", stroke=colour, width=1.0))
            parts.append(svg.text(x0 + 2.8 * size, y + svg.ASCENT * size, text, size=size, anchor="start"))
        canvas.text.append(svg.group(None, *parts))
    removed = f"{qc.removed_pct:.1f}% anomalous" + (", removed" if qc.settings.mode == "remove" else ", kept (flag mode)")
    canvas.text.append(svg.text(0.4 * width, 0.025 * height + svg.ASCENT * plots.TITLE_FONT,
                                f"{title} ({removed}; shaded)" if title else removed, size=plots.TITLE_FONT))
    per = "events per second" if qc.time_unit == "s" else "events per time unit"
    return canvas.svg(f"{title}: {per} and channel medians over time; {removed}")


def compensation_pair_plot(x: np.ndarray, y: np.ndarray, xaxis: "plots.Axis", yaxis: "plots.Axis", *, title: str,
                           note: str = "") -> str:
    """Density of a compensated tube on two dimensions (no gate), ``note`` in the lower right corner."""
    xlim, ylim = plots._limits(xaxis, x), plots._limits(yaxis, y)
    canvas, frame = plots._canvas(xlim, ylim)
    plots._density(canvas, frame, x, y)
    plots._style_axis(canvas, frame, xaxis, "x")
    plots._style_axis(canvas, frame, yaxis, "y")
    if note:
        lines, b = note.split("\n"), frame.box
        box = plots._label_box(lines, 6.5, b.x0 + 0.98 * b.width, b.y1 - 0.03 * b.height, "right", "bottom")
        canvas.text.append(plots._label(lines, box, "right", "#333333", size=6.5))
    plots._title(canvas, title)
    return canvas.svg(f"compensated {yaxis.label} vs {xaxis.label}; {note}".replace("\n", "; "))
