"""Page model of the product report's acquisition-QC and compensation sections (issue 15).

``acquisition_section(result)``: one row per gated file (mode, time channel, events, % anomalous,
events removed, drifting channels, flags), the method's parameters, and per stained tube a plot of
the flow rate and the channel medians over time with the anomalous stretches shaded.
``compensation_section(result)``: per stained tube the matrix used and its source, density plots of
the compensated tube for the ``PAIRS`` largest spillover coefficients among its markers' detectors
(the residual slope of the target's negatives written on each), and the residual-spillover table.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tilpheno.report.product import Figure, _axis, _strategy_for

PAIRS = 6
METHOD = ("Acquisition QC (gating step 0, per file, raw events in acquisition order; PeacoQC/flowCut-like): "
          "bins of consecutive events; flow rate = events per equal time interval; per bin and channel the "
          "50th and 90th percentiles on a logicle scale; binary change-point segmentation of each series "
          "(split when the two-sample statistic exceeds t_crit, noise from bin-to-bin differences or split "
          "halves); a segment is anomalous when its level departs from the majority level by more than "
          "rate_tolerance (relative) or min_shift (logicle units); short good stretches between anomalous "
          "ones are anomalous too. Remove mode drops the anomalous events before compensation.")
RESIDUAL_METHOD = ("Residual spillover: among each target detector's negative events (below the tube's own gate "
                   "threshold, lymphocytes), the shift of the target's half-sample mode between the brightest 5 % "
                   "and the dimmest 20 % of a source detector, per unit of the source (slope); |slope| > 0.04 "
                   "raises compensation_residual (negative = over-, positive = under-compensated).")


def _fmt(v) -> str:
    from tilpheno.report.html import fmt

    return fmt(v)


def acquisition_section(result, strategies=()) -> dict:
    """``{rows, columns, settings, figures}`` for the report (empty rows when step 0 did not run)."""
    from tilpheno.report import plots
    from tilpheno.report.qc_plots import acquisition_png

    rows, figures, settings = [], [], {}
    for t in result.tubes:
        qc = getattr(t, "acquisition", None)
        if qc is None:
            continue
        s = qc.summary()
        rows.append([Path(str(t.file)).name, f"{t.tube} {t.role}" + (f" {t.fmo_marker}" if t.fmo_marker else ""),
                     s["mode"], s["time_channel"] or "none", str(s["n_events"]), f"{s['anomalous_pct']:.2f}",
                     str(s["n_removed"]), s["drift_channels"], s["flags"]])
        settings.setdefault(t.tube, qc.settings.to_dict())
        if t.role == "stain" and not qc.signal.empty:
            detectors = dict(t.detectors)
            labels = {det: f"{m} ({det})" for m, det in detectors.items()}
            channels = [c for c in ("FSC-A", "SSC-A") if c in qc.signal.columns] + list(detectors.values())
            png = acquisition_png(qc, channels, labels, title=f"{t.tube} stained tube")
            figures.append(Figure(f"{t.tube} tube: flow rate and channel medians over time", plots.to_data_uri(png),
                                  f"events per second and bin medians over time for {Path(str(t.file)).name}; "
                                  f"{qc.removed_pct:.1f}% of events in anomalous stretches (shaded)"))
    columns = ["file", "tube", "mode", "time channel", "events", "% anomalous", "removed", "drift channels", "flags"]
    return {"columns": columns, "rows": rows, "settings": sorted(settings.items()), "figures": figures,
            "method": METHOD}


def compensation_section(result, strategies=()) -> list[dict]:
    """One entry per stained tube: ``title, source, matrix {columns, rows}, figures, residual {columns, rows}``."""
    from tilpheno.report import plots
    from tilpheno.report.qc_plots import compensation_pair_png

    out = []
    for t in result.tubes:
        used = getattr(t, "compensation", None)
        if t.role != "stain" or used is None:
            continue
        entry = {"title": f"{t.tube} tube ({Path(str(t.file)).name})", "source": used.source,
                 "matrix": {"columns": [], "rows": []}, "figures": [], "residual": {"columns": [], "rows": []},
                 "method": RESIDUAL_METHOD}
        spill = used.spillover
        if spill is not None:
            frame = spill.to_dataframe()
            entry["matrix"] = {"columns": ["fluorochrome \\ detector", *frame.columns],
                               "rows": [[idx, *(f"{v:.4f}" for v in row)] for idx, row in zip(frame.index, frame.to_numpy())]}
            marker_of = {d: m for m, d in t.detectors.items() if m in t.data}
            pairs = [(frame.loc[a, b], a, b) for a in frame.index for b in frame.columns
                     if a != b and a in marker_of and b in marker_of]
            residual = used.residual
            strategy = _strategy_for(strategies, t.tube)
            for coef, a, b in sorted(pairs, key=lambda p: (-p[0], p[1], p[2]))[:PAIRS]:
                xm, ym = marker_of[a], marker_of[b]
                note = f"spillover {coef:.3f}"
                if residual is not None and len(residual):
                    hit = residual[(residual["source"] == a) & (residual["target"] == b)]
                    if len(hit):
                        note += f"\nresidual slope {hit['slope'].iloc[0]:+.3f}"
                png = compensation_pair_png(t.data[xm], t.data[ym], _axis(xm, t.detectors, strategy),
                                            _axis(ym, t.detectors, strategy), title=f"{xm} vs {ym}", note=note)
                entry["figures"].append(Figure(f"{xm} ({a}) vs {ym} ({b}), compensated", plots.to_data_uri(png),
                                               f"compensated {t.tube} tube, {xm} vs {ym}; {note}"))
            if residual is not None and len(residual):
                shown = residual.reindex(residual["slope"].abs().sort_values(ascending=False).index)
                entry["residual"] = {"columns": list(shown.columns),
                                     "rows": [[_fmt(v) for v in r] for r in shown.itertuples(index=False)]}
        out.append(entry)
    return out
