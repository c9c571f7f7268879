"""Report plots of the acquisition and compensation QC (built on ``report.plots``' canvas and axes).

- :func:`acquisition_png`: events per second vs time (top) and each checked channel's bin median vs
  time on the QC logicle scale (bottom), anomalous stretches shaded (removed in ``remove`` mode).
  Without a time channel the x axis is the event number.
- :func:`compensation_pair_png`: pseudo-colour density of a compensated stained tube on two
  detectors (logicle axes), the residual slope of the target's negatives written on it.
Deterministic PNG bytes, as ``report.plots``.
"""
from __future__ import annotations

import numpy as np

from tilpheno.report import plots

SHADE = "#f4a261"


def acquisition_png(qc, channels: list[str], labels: dict[str, str] | None = None, title: str = "") -> bytes:
    """Flow rate and channel medians over acquisition time with anomalous stretches shaded.

    ``qc``: ``tilpheno.acquisition.AcquisitionQC``; ``channels``: the checked channels to draw (at
    most 8 lines); ``labels``: channel -> legend text (e.g. "CD3 (FITC-A)").
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = labels or {}
    fig = Figure(figsize=(6.0, 3.6), dpi=plots.DPI)
    FigureCanvasAgg(fig)
    top = fig.add_axes((0.10, 0.58, 0.62, 0.32))
    bottom = fig.add_axes((0.10, 0.12, 0.62, 0.40), sharex=top)
    timed = qc.time_channel is not None and not qc.rate.empty
    signal = qc.signal
    x = signal["t_mid"].to_numpy() if timed else ((signal["first_event"] + signal["last_event"]) / 2).to_numpy()
    for ax in (top, bottom):
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.tick_params(labelsize=7, length=3)
        for start, end in qc.removed_intervals:
            ax.axvspan(start, end if end > start else start + 1e-9, color=SHADE, alpha=0.35, linewidth=0)
    if timed:
        rate = qc.rate
        top.step(rate["t_start"], rate["rate_per_s"], where="post", color="#264653", linewidth=1)
        top.set_ylabel("events/s", fontsize=8)
    else:
        top.text(0.5, 0.5, "no time channel: flow rate not checked", ha="center", va="center", fontsize=8,
                 transform=top.transAxes)
        top.set_yticks([])
    for i, c in enumerate([c for c in channels if c in signal.columns][:8]):
        bottom.plot(x, signal[c].to_numpy(), linewidth=1, color=plots._PALETTE[i % len(plots._PALETTE)],
                    label=labels.get(c, c))
    bottom.set_ylabel("bin median (logicle)", fontsize=8)
    bottom.set_xlabel("time (s)" if timed else "event", fontsize=8)
    handles, names = bottom.get_legend_handles_labels()
    if handles:
        bottom.legend(handles, names, fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    removed = f"{qc.removed_pct:.1f}% anomalous" + (", removed" if qc.settings.mode == "remove" else ", kept (flag mode)")
    top.set_title(f"{title}  ({removed}; shaded)" if title else removed, fontsize=8)
    return plots._png(fig)


def compensation_pair_png(x: np.ndarray, y: np.ndarray, xaxis: "plots.Axis", yaxis: "plots.Axis", *, title: str,
                          note: str = "") -> bytes:
    """Density of a compensated tube on two logicle dimensions (no gate), ``note`` in a corner."""
    xlim, ylim = plots._limits(x, (), xaxis), plots._limits(y, (), yaxis)
    fig, ax = plots._density_axes(x, y, xaxis, yaxis, xlim, ylim)
    if note:
        ax.text(0.98, 0.02, note, ha="right", va="bottom", fontsize=6.5, transform=ax.transAxes,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5})
    ax.set_title(title, fontsize=8)
    return plots._png(fig)
