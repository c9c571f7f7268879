"""The product report's acquisition-QC and compensation sections (issue 15): ``report.product``
section builders (``builder(ReportContext) -> Section | list[Section] | None``).

``acquisition_section``: one row per gated file (mode, time channel, events, % anomalous, events
removed, drifting channels, flags), the method and its parameters, and per stained tube (and per
control file with a finding) a plot of the flow rate and the channel medians over time with the
anomalous stretches shaded (the drifting channels drawn first).
``compensation_sections``: per stained tube the matrix used and its source, density plots of the
compensated tube for the ``PAIRS`` largest spillover coefficients among its markers' detectors (the
residual slope of the target's negatives written on each), and the residual-spillover table.
"""
from __future__ import annotations

from tilpheno.spillover import RESIDUAL_MIN_LEVER, RESIDUAL_TOLERANCE

PAIRS = 6
METHOD = ("Acquisition QC, gating step 0 (per file, raw events in acquisition order, before compensation; "
          "PeacoQC/flowCut-like): bins of consecutive events; flow rate = events per equal time interval; per bin "
          "and channel the 50th and 90th percentiles on a logicle scale; binary change-point segmentation of each "
          "series (a split when the two-sample statistic exceeds t_crit; noise from bin-to-bin differences, split "
          "halves or the spread of each bin's values around the percentile); a segment is anomalous when its level departs from the majority level by more than "
          "rate_tolerance (relative) or min_shift (logicle units) and the two-sample statistic against it exceeds "
          "t_crit; a signal's slow drift (up to max_drift logicle units over the file) is not a fault; short good "
          "stretches between anomalous ones are "
          "anomalous too. Remove mode drops the anomalous events before compensation and gating.")
RESIDUAL_METHOD = (
    "Residual spillover (compensated linear units): among each target detector's negative events (stained tube: "
    "below the tube's own gate threshold; FMO tube: the omitted marker's detector, every event; of the lymphocyte "
    "gate, or of the singlets for a source gated above the lymphocytes, such as a viability dye) the target is "
    "regressed by least squares on every testable source detector at once (and an intercept). n_negative = the "
    "negative events used; lever = the median of the source's brightest 5% minus that of its dimmest 20% among them "
    f"(a source with a lever below {RESIDUAL_MIN_LEVER:g} is not tested); slope = the source's partial coefficient "
    "(target units per source unit; about 0 when the matrix is right, negative = over-, positive = under-compensated); "
    f"shift = slope × lever, the target shift the source explains; flagged = |slope| > {RESIDUAL_TOLERANCE:g}, "
    "which raises compensation_residual; slope_se = the slope's ordinary least-squares standard error (residual "
    "variance over n - p, same units as slope; the compensation-misfit check compares an FMO's slope with its "
    "stained tube's against it).")
ACQUISITION_COLUMNS = ("file", "tube", "mode", "time channel", "events", "% anomalous", "removed", "drift channels",
                       "flags")


def acquisition_section(ctx):
    """The acquisition QC block (None when step 0 did not run on any file)."""
    from tilpheno.report.product import Figure, Section, Table
    from tilpheno.report.qc_plots import acquisition_plot

    if ctx.result is None:
        return None
    rows, figures, settings = [], [], {}
    for t in ctx.result.tubes:
        qc = getattr(t, "acquisition", None)
        if qc is None:
            continue
        s = qc.summary()
        rows.append((t.shown_name, f"{t.tube} {t.role}" + (f" {t.fmo_marker}" if t.fmo_marker else ""),
                     s["mode"], s["time_channel"] or "none", str(s["n_events"]), f"{s['anomalous_pct']:.2f}",
                     str(s["n_removed"]), s["drift_channels"], s["flags"]))
        settings.setdefault(t.tube, qc.settings.to_dict())
        if (t.role == "stain" or qc.findings) and not qc.signal.empty:   # a control's plot when it has a finding
            labels = {det: f"{m} ({det})" for m, det in t.detectors.items()}
            channels = list(dict.fromkeys([*qc.drift_channels, *(c for c in ("FSC-A", "SSC-A") if c in qc.signal.columns),
                                           *t.detectors.values()]))
            kind = "stained tube" if t.role == "stain" else f"{t.role}{' ' + t.fmo_marker if t.fmo_marker else ''}"
            figures.append(Figure(f"{t.tube} {kind}: flow rate and channel medians over time",
                                  acquisition_plot(qc, channels, labels, title=f"{t.tube} {kind}"),
                                  f"{t.shown_name}: {qc.removed_pct:.1f}% of events in anomalous stretches",
                                  wide=True))
    if not rows:
        return None
    params = " ".join(f"Parameters ({tube} strategy): " + ", ".join(f"{k} = {v}" for k, v in p.items()) + "."
                      for tube, p in sorted(settings.items()))
    table = Table("acquisition-qc", ACQUISITION_COLUMNS, tuple(rows), "Acquisition QC of every gated file.")
    return Section("acquisition-qc", "Acquisition QC over time", f"{METHOD} {params}", tuple(figures), (table,))


def compensation_sections(ctx):
    """One compensation block per stained tube."""
    from tilpheno.report.html import fmt
    from tilpheno.report.product import Figure, Section, Table, _axis, _stained, _strategy_for
    from tilpheno.report.qc_plots import compensation_pair_plot

    out = []
    for t in _stained(ctx):
        used = getattr(t, "compensation", None)
        if used is None:
            continue
        name = t.shown_name
        intro = (f"{name}: matrix used: {used.source}. Convention: compensated = raw x inverse(S), "
                 "S[fluorochrome, detector]. ")
        spill, figures, tables = used.spillover, [], []
        if spill is None:
            done = ("Used as exported: the markers' parameters hold compensated values (FJComp-/Comp- names)."
                    if used.exported else "Not compensated.")
            out.append(Section(f"compensation-{t.tube}", f"Compensation: {t.tube} tube", intro + done))
            continue
        frame = spill.to_dataframe()
        tables.append(Table(f"spillover-{t.tube}", ("fluorochrome \\ detector", *map(str, frame.columns)),
                            tuple((str(i), *(f"{v:.4f}" for v in row)) for i, row in zip(frame.index, frame.to_numpy())),
                            f"Spillover matrix ({used.source})"))
        marker_of = {d: m for m, d in t.detectors.items() if m in t.data}
        pairs = [(float(frame.loc[a, b]), a, b) for a in frame.index for b in frame.columns
                 if a != b and a in marker_of and b in marker_of]
        residual = used.residual
        strategy = _strategy_for(ctx.strategies, t.tube)
        for coef, a, b in sorted(pairs, key=lambda p: (-p[0], p[1], p[2]))[:PAIRS]:
            xm, ym = marker_of[a], marker_of[b]
            note = f"spillover {coef:.3f}"
            if residual is not None and len(residual):
                hit = residual[(residual["source"] == a) & (residual["target"] == b)]
                if len(hit):
                    note += f"\nresidual slope {hit['slope'].iloc[0]:+.3f}"
            xaxis = _axis(xm, t.detectors, strategy, ctx.axes.get((t.tube, xm)))
            yaxis = _axis(ym, t.detectors, strategy, ctx.axes.get((t.tube, ym)))
            figures.append(Figure(f"{xm} vs {ym} ({a} -> {b}), compensated",
                                  compensation_pair_plot(t.data[xm], t.data[ym], xaxis, yaxis, title=f"{xm} vs {ym}",
                                                         note=note), note.replace("\n", "; ")))
        if residual is not None and len(residual):
            shown = residual.reindex(residual["slope"].abs().sort_values(ascending=False).index)
            tables.append(Table(f"residual-{t.tube}", tuple(map(str, shown.columns)),
                                tuple(tuple(fmt(v, 3 if c == "slope" else 4 if c == "slope_se" else 2) for c, v in zip(shown.columns, r))
                                      for r in shown.itertuples(index=False)), RESIDUAL_METHOD))
        out.append(Section(f"compensation-{t.tube}", f"Compensation: {t.tube} tube",
                           intro + f"Density plots: the {len(figures)} largest spillover pairs among the tube's markers.",
                           tuple(figures), tuple(tables)))
    return out
