"""Simulate another lab's panel as raw FCS files with per-event ground truth (tests/data/newlab/).

The lab: CD45, CD3, CD4, CD8, CD39, CD103, LAG3 and DAPI (viability) on an instrument with
BUV/BV detectors, three tubes (``tcell``, ``exhaustion``, ``residency``) and one FMO per marker
(7 FMOs; no FMO for the viability dye). Nothing of it is known to tilpheno's code: the study
(``study.yaml``), strategies, release spec and panel file beside this script describe it.

Quirks exercised on purpose: LAG3 is labelled ``CD223 BV786`` (an alias), CD8 ``CD8a APC-Fire750``,
and the residency tube's FITC-A detector carries CD103 without any $PnS label (its marker comes
from ``panel.csv``, ``tilpheno process --panel``).

Event model (per product): debris (small FSC), doublets (FSC-H/FSC-A about 0.55), dead cells (DAPI
bright), live cells: CD45+ leukocytes, of which CD3+ T cells (CD4+ or CD8+ or neither), CD45-
tumour cells (larger). Within CD8+ T cells CD39, LAG3 and CD103 are positive independently with
fixed probabilities. Fluorochrome amounts are log-normal (positives) or zero, spilled with the
matrix written as $SPILLOVER, plus autofluorescence and Gaussian noise.

``truth.csv``: the label truth of each study variable, percent, from the stained tubes' labels.
Run ``python tests/data/newlab/make_newlab.py`` to regenerate (deterministic for a numpy version).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tilpheno.compensation import Spillover  # noqa: E402
from tilpheno.io.fcs_write import write_fcs  # noqa: E402

# marker -> (detector, $PnS label; None = unlabelled on the instrument export)
LABELS = {
    "CD45": ("BUV395-A", "CD45 BUV395"),
    "DAPI": ("BV421-A", "DAPI"),
    "CD3": ("BV510-A", "CD3 BV510"),
    "CD4": ("BV605-A", "CD4 BV605"),
    "CD8": ("APC-Fire750-A", "CD8a APC-Fire750"),
    "CD39": ("PE-A", "CD39 PE"),
    "LAG3": ("BV786-A", "CD223 BV786"),
    "CD103": ("FITC-A", None),
}
TUBES = {
    "tcell": ("CD45", "CD3", "CD4", "CD8", "DAPI"),
    "exhaustion": ("CD45", "CD3", "CD8", "CD39", "LAG3", "DAPI"),
    "residency": ("CD45", "CD3", "CD8", "CD103", "DAPI"),
}
FMOS = {"tcell": ("CD45", "CD3", "CD4", "CD8"), "exhaustion": ("CD39", "LAG3"), "residency": ("CD103",)}
# composition (fractions) of product LAB7
SHARES = {"debris": 0.08, "doublets": 0.06}
VIABILITY = 0.82
CD45 = 0.90
CD3_OF_CD45 = 0.75
CD4_OF_CD3, CD8_OF_CD3 = 0.50, 0.42
CD39_OF_CD8, LAG3_OF_CD8, CD103_OF_CD8 = 0.35, 0.22, 0.45
BRIGHT = {"CD45": 9000, "CD3": 6000, "CD4": 4000, "CD8": 7000, "CD39": 3000, "LAG3": 2500, "CD103": 3500, "DAPI": 30000}
AUTOFLUORESCENCE = 40.0
NOISE_SD = 30.0
N_EVENTS = 3000
RANGE = 262144


def spill_matrix(detectors: list[str]) -> np.ndarray:
    """A fixed, realistic-looking spillover between neighbouring detectors of this instrument."""
    order = ["BUV395-A", "BV421-A", "BV510-A", "BV605-A", "BV786-A", "FITC-A", "PE-A", "APC-Fire750-A"]
    m = np.eye(len(detectors))
    for i, a in enumerate(detectors):
        for j, b in enumerate(detectors):
            gap = order.index(b) - order.index(a)
            if gap == 1:
                m[i, j] = 0.08
            elif gap == -1:
                m[i, j] = 0.02
    return m


def labels_for(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-event labels: kind (debris/doublet/cell), dead, and each marker's positivity."""
    u = rng.random(n)
    debris = u < SHARES["debris"]
    doublet = (u >= SHARES["debris"]) & (u < SHARES["debris"] + SHARES["doublets"])
    cell = ~debris & ~doublet
    dead = cell & (rng.random(n) >= VIABILITY)
    live = cell & ~dead
    cd45 = live & (rng.random(n) < CD45)
    cd3 = cd45 & (rng.random(n) < CD3_OF_CD45)
    lineage = rng.random(n)
    cd4 = cd3 & (lineage < CD4_OF_CD3)
    cd8 = cd3 & (lineage >= CD4_OF_CD3) & (lineage < CD4_OF_CD3 + CD8_OF_CD3)
    return {
        "debris": debris, "doublet": doublet, "cell": cell, "dead": dead, "live": live,
        "CD45": cd45, "CD3": cd3, "CD4": cd4, "CD8": cd8,
        "CD39": cd8 & (rng.random(n) < CD39_OF_CD8), "LAG3": cd8 & (rng.random(n) < LAG3_OF_CD8),
        "CD103": cd8 & (rng.random(n) < CD103_OF_CD8), "DAPI": dead,
    }


def simulate_tube(tube: str, omit: str | None, rng: np.random.Generator):
    """Raw events, channels and labels of one tube (``omit``: the FMO's left-out marker)."""
    n = N_EVENTS
    lab = labels_for(n, rng)
    tumour = lab["live"] & ~lab["CD45"]
    fsc = np.where(lab["debris"], rng.lognormal(np.log(15000), 0.5, n), rng.lognormal(np.log(70000), 0.12, n))
    fsc = np.where(tumour, rng.lognormal(np.log(120000), 0.12, n), fsc)
    fsc = np.where(lab["dead"], fsc * 0.8, fsc)
    ssc = np.where(lab["debris"], rng.lognormal(np.log(12000), 0.6, n), rng.lognormal(np.log(30000), 0.25, n))
    ratio = np.where(lab["doublet"], 0.55, 0.85) + 0.03 * rng.standard_normal(n)
    fsc = np.where(lab["doublet"], fsc * 1.8, fsc)
    fsc_h = fsc * ratio
    markers = [m for m in TUBES[tube]]
    detectors = [LABELS[m][0] for m in markers]
    amounts = np.zeros((n, len(markers)))
    for k, m in enumerate(markers):
        if m == omit:
            continue
        on = lab[m] if m != "DAPI" else lab["dead"]
        amounts[:, k] = np.where(on, rng.lognormal(np.log(BRIGHT[m]), 0.35, n), 0.0)
        if m != "DAPI":  # dead cells bind a little antibody
            amounts[:, k] += np.where(lab["dead"], rng.lognormal(np.log(120), 0.5, n), 0.0)
    matrix = spill_matrix(detectors)
    fluor = amounts @ matrix + AUTOFLUORESCENCE * (fsc / 70000.0)[:, None] + NOISE_SD * rng.standard_normal((n, len(markers)))
    time = np.sort(rng.uniform(0, 6000, n))
    events = np.column_stack([fsc, fsc_h, ssc, fluor, time]).clip(None, RANGE - 1).astype(np.float32)
    channels = [("FSC-A", None, RANGE), ("FSC-H", None, RANGE), ("SSC-A", None, RANGE)]
    for m, det in zip(markers, detectors):
        label = None if m == omit else LABELS[m][1]
        channels.append((det, label, RANGE))
    channels.append(("Time", None, RANGE))
    return events, channels, Spillover(tuple(detectors), matrix, "simulated"), lab


def pct(mask: np.ndarray, parent: np.ndarray) -> float:
    return 100.0 * float(np.count_nonzero(mask & parent)) / float(np.count_nonzero(parent))


def main(out: Path = HERE / "fcs", product: str = "LAB7", seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    truth = {"product_id": product}
    for tube, fmos in FMOS.items():
        for omit in (None, *fmos):
            events, channels, spill, lab = simulate_tube(tube, omit, rng)
            name = f"{product}_{tube}_{'stain' if omit is None else 'FMO_' + omit}.fcs"
            title = "Stain" if omit is None else f"FMO {omit}"
            write_fcs(out / name, events, channels, {"$SRC": product, "TUBE NAME": f"{tube} {title}",
                                                      "$CYT": "Simulated 5-laser cytometer", "$TIMESTEP": "0.01"},
                      spillover=spill)
            if omit is not None:
                continue
            singlet_cells = lab["cell"]
            if tube == "tcell":
                truth["viability_pct"] = pct(lab["live"], singlet_cells)
                truth["cd45_pct_of_live"] = pct(lab["CD45"], lab["live"])
                truth["cd3_pct_of_cd45"] = pct(lab["CD3"], lab["CD45"])
                truth["cd4_pct_of_cd3"] = pct(lab["CD4"], lab["CD3"])
                truth["cd8_pct_of_cd3"] = pct(lab["CD8"], lab["CD3"])
            elif tube == "exhaustion":
                truth["cd39_pct_of_cd8"] = pct(lab["CD39"], lab["CD8"])
                truth["lag3_pct_of_cd8"] = pct(lab["LAG3"], lab["CD8"])
                truth["cd39lag3_pct_of_cd8"] = pct(lab["CD39"] & lab["LAG3"], lab["CD8"])
            else:
                truth["cd103_pct_of_cd8"] = pct(lab["CD103"], lab["CD8"])
    with open(HERE / "truth.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(truth))
        writer.writeheader()
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in truth.items()})


if __name__ == "__main__":
    main()
