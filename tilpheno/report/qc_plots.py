"""Report plots of the acquisition and compensation QC, on ``report.plots``' canvas, axes and SVG output.

- :func:`acquisition_plot`: events per second vs time (top) and each checked channel's bin median
  vs time on the QC logicle scale (bottom), anomalous stretches shaded (removed in ``remove`` mode).
  Without a time channel the x axis is the event number.
- :func:`compensation_pair_plot`: pseudo-colour density of a compensated stained tube on two
  detectors, the spillover coefficient and the residual slope of the target's negatives written on it.
Both return inline SVG (deterministic, as ``report.plots``); text is never parsed as mathtext.
"""
from __future__ import annotations

import numpy as np

from tilpheno.report import plots

SHADE = "#f4a261"


def acquisition_plot(qc, channels: list[str], labels: dict[str, str] | None = None, title: str = "") -> str:
    """Flow rate and channel medians over acquisition time with anomalous stretches shaded.

    ``qc``: ``tilpheno.acquisition.AcquisitionQC``; ``channels``: the checked channels to draw (at
    most 8 lines); ``labels``: channel -> legend text (e.g. "CD3 (FITC-A)").
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = labels or {}
    fig = Figure(figsize=(6.6, 3.6), dpi=72)
    FigureCanvasAgg(fig)
    top = fig.add_axes((0.10, 0.60, 0.60, 0.28))
    bottom = fig.add_axes((0.10, 0.13, 0.60, 0.40), sharex=top)
    timed = qc.time_channel is not None and not qc.rate.empty
    signal = qc.signal
    x = signal["t_mid"].to_numpy() if timed else ((signal["first_event"] + signal["last_event"]) / 2).to_numpy()
    for ax in (top, bottom):
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.tick_params(labelsize=plots.FONT, length=3)
        for start, end in qc.removed_intervals:
            ax.axvspan(start, end if end > start else start + 1e-9, color=SHADE, alpha=0.35, linewidth=0)
    if timed:
        rate = qc.rate
        top.step(rate["t_start"], rate["rate_per_s"], where="post", color="#264653", linewidth=1)
        top.set_ylabel("events/s", fontsize=plots.FONT)
    else:
        top.text(0.5, 0.5, "no time channel: flow rate not checked", ha="center", va="center", fontsize=plots.FONT,
                 transform=top.transAxes, parse_math=False)
        top.set_yticks([])
    for i, c in enumerate([c for c in channels if c in signal.columns][:8]):
        bottom.plot(x, signal[c].to_numpy(), linewidth=1, color=plots._PALETTE[i % len(plots._PALETTE)],
                    label=labels.get(c, c))
    bottom.set_ylabel("bin median (logicle)", fontsize=plots.FONT)
    bottom.set_xlabel("time (s)" if timed else "event", fontsize=plots.FONT)
    handles, names = bottom.get_legend_handles_labels()
    if handles:
        legend = bottom.legend(handles, names, fontsize=6.5, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        for text in legend.get_texts():
            text.set_parse_math(False)
    removed = f"{qc.removed_pct:.1f}% anomalous" + (", removed" if qc.settings.mode == "remove" else ", kept (flag mode)")
    fig.text(0.4, 0.975, f"{title} ({removed}; shaded)" if title else removed, ha="center", va="top",
             fontsize=plots.TITLE_FONT, parse_math=False)
    return plots._svg(fig, f"{title}: events per second and channel medians over time; {removed}")


def compensation_pair_plot(x: np.ndarray, y: np.ndarray, xaxis: "plots.Axis", yaxis: "plots.Axis", *, title: str,
                           note: str = "") -> str:
    """Density of a compensated tube on two dimensions (no gate), ``note`` in the lower right corner."""
    xlim, ylim = plots._limits(xaxis, x), plots._limits(yaxis, y)
    fig, ax = plots._figure()
    plots._density(ax, x, y, xlim, ylim)
    plots._style_axis(ax, xaxis, xlim, "x")
    plots._style_axis(ax, yaxis, ylim, "y")
    if note:
        plots._text(ax, 0.98, 0.03, note, "#333333", ha="right", va="bottom", transform=ax.transAxes, size=6.5)
    plots._title(fig, ax, title)
    return plots._svg(fig, f"compensated {yaxis.label} vs {xaxis.label}; {note}".replace("\n", "; "))
