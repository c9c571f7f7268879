"""Ground truth of a simulated product: label-based percentages and the ideal-FMO-gate reference.

Label truth (columns named as the study's variables; percent, 0-100), from the event labels of
the stained tubes:

- ``viability_pct``: live (7AAD-) events among singlet cells (lymphocytes and large non-lymphoid
  cells; not debris, not doublets) of the surface stain tube.
- ``cd3_pct_of_live_lymph``, ``nk_pct_of_live_lymph`` (CD3-CD56+), ``nkt_pct_of_live_lymph``
  (CD3+CD56+), ``pd1_pct_of_live_lymph``: among live singlet lymphocytes of the surface stain tube.
- ``cd4_pct_of_cd3``, ``cd8_pct_of_cd3``: among CD3+ live lymphocytes; CD4+ and CD8+ both include
  CD4+CD8+ double positives (``cd4cd8_pct_of_cd3``). ``cd8pd1_pct_of_cd8``: PD1+ among CD3+CD8+ live
  lymphocytes; ``cd8pd1_pct_of_cd3``: CD8+PD1+ among CD3+ live lymphocytes; ``cd4pd1_pct_of_cd4``:
  PD1+ among CD3+CD4+ live lymphocytes.
- ``cd4foxp3_pct_of_cd4``: FoxP3+ among CD3+CD4+ singlet lymphocytes of the Treg stain tube (fixed
  cells, no viability dye, so dead cells are not excluded); ``cd3_pct_of_lymph_treg``: CD3+ among
  its singlet lymphocytes (the Treg tube's check on the surface tube's CD3 %).

Ideal FMO gate reference (``ref_*`` columns), for the dim markers PD1 and FoxP3 whose positive
cells overlap the unstained ones, so label truth is not fully recoverable by any gate:

1. The parent population is taken from the true labels, in both the FMO tube and the stained
   tube: live singlet lymphocytes (``ref_pd1_pct_of_live_lymph``), CD3+CD8+ live singlet
   lymphocytes (``ref_cd8pd1_pct_of_cd8``, ``ref_cd8pd1_pct_of_cd3``), CD3+CD4+ live singlet
   lymphocytes (``ref_cd4pd1_pct_of_cd4``), CD3+CD4+ singlet lymphocytes of the Treg tubes
   (``ref_cd4foxp3_pct_of_cd4``).
2. Both tubes' raw events (as stored: float32) are compensated with the true spillover matrix.
   (The default logicle display transform is monotone, so thresholds and positivity are the same
   on the compensated linear scale.)
3. Threshold = the 99.5th percentile (numpy's default linear interpolation) of the FMO tube's
   parent events on the marker's detector (PE-A for PD1 and FoxP3).
4. Positive = stained-tube parent events strictly above the threshold. ``ref_cd8pd1_pct_of_cd3``
   = CD8+ events above the CD8-parent threshold, as a percentage of CD3+ live lymphocytes.

Products simulated with bench phenomena (``phenomena.py``: nonspecific binding, spreading) take
step 3 on the **stained tube's label-negative parent events** instead of the FMO tube
(:func:`stained_negative_reference`): the ideal FMO differs from the stained tube only by the
marker's specific binding, so it carries the stained tube's nonspecific binding; a real FMO does
not, which is exactly what the gating must cope with. The acquisition phenomena (a compensation error, an
FMO tube's detector drift, few FMO events; ``phenomena.py``) leave this reference as it is: the ideal FMO is
acquired with the stained tube, so it shares its spillover at acquisition and is compensated with the same
written matrix (``instrument.true_spillover``, the files' ``$SPILLOVER``), at the stained tube's gain, with its
number of events.
"""
from __future__ import annotations

import numpy as np

from tilpheno.compensation import Spillover, compensate
from tilpheno.simulate import instrument as ins
from tilpheno.simulate.products import KIND_LARGE, KIND_LYMPH, TubeEvents

FMO_PERCENTILE = 99.5

LABEL_COLUMNS = (
    "viability_pct", "cd3_pct_of_live_lymph", "cd4_pct_of_cd3", "cd8_pct_of_cd3", "cd4cd8_pct_of_cd3",
    "nk_pct_of_live_lymph", "nkt_pct_of_live_lymph", "pd1_pct_of_live_lymph",
    "cd8pd1_pct_of_cd8", "cd8pd1_pct_of_cd3", "cd4pd1_pct_of_cd4", "cd4foxp3_pct_of_cd4", "cd3_pct_of_lymph_treg",
)
"""The columns of :func:`label_truth`: every percentage variable of the bundled TIL strategies."""
REFERENCE_COLUMNS = (
    "ref_pd1_pct_of_live_lymph", "ref_cd8pd1_pct_of_cd8", "ref_cd8pd1_pct_of_cd3", "ref_cd4pd1_pct_of_cd4",
    "ref_cd4foxp3_pct_of_cd4",
)
"""The percentage columns of the ideal-FMO reference (:func:`fmo_reference`, :func:`stained_negative_reference`)."""


def percent(mask: np.ndarray, parent: np.ndarray) -> float:
    """100 * |mask & parent| / |parent|; NaN for an empty parent."""
    n = int(np.count_nonzero(parent))
    return 100.0 * np.count_nonzero(mask & parent) / n if n else float("nan")


def singlet_cells(tube: TubeEvents) -> np.ndarray:
    return (tube.kind == KIND_LYMPH) | (tube.kind == KIND_LARGE)


def lymphocytes(tube: TubeEvents) -> np.ndarray:
    return tube.kind == KIND_LYMPH


def live_lymphocytes(tube: TubeEvents) -> np.ndarray:
    return lymphocytes(tube) & ~tube.labels["dead"]


def label_truth(surface: TubeEvents, treg: TubeEvents) -> dict[str, float]:
    """The study variables from the labels of the surface and Treg stain tubes (module docstring)."""
    lab = surface.labels
    live = live_lymphocytes(surface)
    cd3 = live & lab["cd3"]
    cd8 = cd3 & lab["cd8"]
    cd4 = cd3 & lab["cd4"]
    treg_cd4 = lymphocytes(treg) & treg.labels["cd3"] & treg.labels["cd4"]
    return {
        "viability_pct": percent(~lab["dead"], singlet_cells(surface)),
        "cd3_pct_of_live_lymph": percent(lab["cd3"], live),
        "cd4_pct_of_cd3": percent(lab["cd4"], cd3),
        "cd8_pct_of_cd3": percent(lab["cd8"], cd3),
        "cd4cd8_pct_of_cd3": percent(lab["cd4"] & lab["cd8"], cd3),
        "nk_pct_of_live_lymph": percent(~lab["cd3"] & lab["cd56"], live),
        "nkt_pct_of_live_lymph": percent(lab["cd3"] & lab["cd56"], live),
        "pd1_pct_of_live_lymph": percent(lab["pd1"], live),
        "cd8pd1_pct_of_cd8": percent(lab["pd1"], cd8),
        "cd8pd1_pct_of_cd3": percent(cd8 & lab["pd1"], cd3),
        "cd4pd1_pct_of_cd4": percent(lab["pd1"], cd4),
        "cd4foxp3_pct_of_cd4": percent(treg.labels["foxp3"], treg_cd4),
        "cd3_pct_of_lymph_treg": percent(treg.labels["cd3"], lymphocytes(treg)),
    }


def compensated_detector(tube: TubeEvents, detector: str, spillover: Spillover) -> np.ndarray:
    """One detector's compensated values (float64) of a tube's stored float32 raw events."""
    comp = compensate(tube.events.astype(np.float64), ins.CHANNEL_NAMES, spillover)
    return comp[:, ins.CHANNEL_NAMES.index(detector)]


def fmo_threshold(fmo_values: np.ndarray, percentile: float = FMO_PERCENTILE) -> float:
    """The FMO threshold: numpy's default (linear) percentile of the FMO parent events."""
    return float(np.percentile(fmo_values, percentile)) if fmo_values.size else float("nan")


def fmo_reference(
    surface: TubeEvents,
    fmo_pd1: TubeEvents,
    treg: TubeEvents,
    fmo_foxp3: TubeEvents,
    spillover: Spillover,
    percentile: float = FMO_PERCENTILE,
) -> dict[str, float]:
    """The ideal-FMO-gate reference percentages (module docstring, steps 1-4)."""
    pe_stain = compensated_detector(surface, "PE-A", spillover)
    pe_fmo = compensated_detector(fmo_pd1, "PE-A", spillover)
    live_s, live_f = live_lymphocytes(surface), live_lymphocytes(fmo_pd1)
    cd3_s = live_s & surface.labels["cd3"]
    cd8_s = cd3_s & surface.labels["cd8"]
    cd8_f = live_f & fmo_pd1.labels["cd3"] & fmo_pd1.labels["cd8"]
    cd4_pd1_s = cd3_s & surface.labels["cd4"]
    cd4_pd1_f = live_f & fmo_pd1.labels["cd3"] & fmo_pd1.labels["cd4"]
    thr_live = fmo_threshold(pe_fmo[live_f], percentile)
    thr_cd8 = fmo_threshold(pe_fmo[cd8_f], percentile)
    thr_cd4 = fmo_threshold(pe_fmo[cd4_pd1_f], percentile)

    fox_stain = compensated_detector(treg, "PE-A", spillover)
    fox_fmo = compensated_detector(fmo_foxp3, "PE-A", spillover)
    cd4_s = lymphocytes(treg) & treg.labels["cd3"] & treg.labels["cd4"]
    cd4_f = lymphocytes(fmo_foxp3) & fmo_foxp3.labels["cd3"] & fmo_foxp3.labels["cd4"]
    thr_fox = fmo_threshold(fox_fmo[cd4_f], percentile)
    return _reference_row(pe_stain, fox_stain, live_s, cd3_s, cd8_s, cd4_pd1_s, cd4_s,
                          thr_live, thr_cd8, thr_cd4, thr_fox)


def _reference_row(pd1: np.ndarray, foxp3: np.ndarray, live: np.ndarray, cd3: np.ndarray, cd8: np.ndarray,
                   cd4_surface: np.ndarray, cd4_treg: np.ndarray, thr_live: float, thr_cd8: float, thr_cd4: float,
                   thr_fox: float) -> dict[str, float]:
    """The reference percentages of the stained tubes' label-defined parents at the given FMO
    thresholds (compensated linear units), and the thresholds."""
    return {
        "ref_pd1_pct_of_live_lymph": percent(pd1 > thr_live, live),
        "ref_cd8pd1_pct_of_cd8": percent(pd1 > thr_cd8, cd8),
        "ref_cd8pd1_pct_of_cd3": percent(cd8 & (pd1 > thr_cd8), cd3),
        "ref_cd4pd1_pct_of_cd4": percent(pd1 > thr_cd4, cd4_surface),
        "ref_cd4foxp3_pct_of_cd4": percent(foxp3 > thr_fox, cd4_treg),
        "ref_pd1_threshold": thr_live,
        "ref_cd8pd1_threshold": thr_cd8,
        "ref_cd4pd1_threshold": thr_cd4,
        "ref_foxp3_threshold": thr_fox,
    }


def stained_negative_reference(
    surface: TubeEvents, treg: TubeEvents, spillover: Spillover, percentile: float = FMO_PERCENTILE,
) -> dict[str, float]:
    """The ideal-FMO reference of a product with phenomena (module docstring): thresholds from
    the label-negative events of the stained tubes' label-defined parents."""
    pe = compensated_detector(surface, "PE-A", spillover)
    live = live_lymphocytes(surface)
    neg = ~surface.labels["pd1"]
    cd3 = live & surface.labels["cd3"]
    cd8 = cd3 & surface.labels["cd8"]
    cd4_pd1 = cd3 & surface.labels["cd4"]
    thr_live = fmo_threshold(pe[live & neg], percentile)
    thr_cd8 = fmo_threshold(pe[cd8 & neg], percentile)
    thr_cd4 = fmo_threshold(pe[cd4_pd1 & neg], percentile)
    fox = compensated_detector(treg, "PE-A", spillover)
    cd4 = lymphocytes(treg) & treg.labels["cd3"] & treg.labels["cd4"]
    thr_fox = fmo_threshold(fox[cd4 & ~treg.labels["foxp3"]], percentile)
    return _reference_row(pe, fox, live, cd3, cd8, cd4_pd1, cd4, thr_live, thr_cd8, thr_cd4, thr_fox)
