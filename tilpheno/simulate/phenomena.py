"""Staining and sample phenomena that make a simulated product look like real bench data.

The base simulator (``products.py``) makes the easy case: the stained tube's negative cells sit
exactly where the same cells sit in their FMO, debris has its own peak, dead cells are bright in
7AAD. Real products are not like that. :class:`Phenomena` is drawn **per product** (nothing is
tuned to one parametrisation) and applied on top of the base events when a product is simulated
with ``simulate_product(..., phenomena=True)``; without it every existing stream and file is
unchanged (``sample_fcs/`` stays bit for bit). Its random numbers come from their own streams.

Phenomena (amounts in linear detector units at lymphocyte size, before spillover):

- **nonspecific binding** (``nsb``): every cell in a tube that contains marker M's antibody binds
  a little of it (median ``nsb[M]``, log-normal per cell with log-sd ``nsb_sd[M]``; large
  non-lymphoid cells x3, dead cells x3). The FMO control of M lacks the antibody, so the stained
  tube's M-negatives sit higher (and wider) than the same cells in M's FMO. Per marker and
  product: none with probability 0.35, else log-uniform 15-300 units.
- **spreading error** (``spread``): Gaussian spread (SD ``spread[M]``) added to M's amount on
  every cell of a tube containing M's antibody: widens the stained negatives, not the FMO's.
- **tandem degradation** (``tandem_loss``): a share of APC-H7 (CD8's tandem) emits as APC
  (CD56's detector); the file's ``$SPILLOVER`` does not know it, so CD8+ cells are
  under-compensated into CD56, in every tube stained for CD8.
- **debris shelf** (``debris_shelf``): debris whose FSC density falls steadily from the bottom of
  the scale into the lymphocytes, without a peak of its own, and more of it.
- **dim dead cells** (``dim_dead``): this share of dead cells takes up 7AAD 5-15x less.
- **activation markers** (``pd1_dim_scale``, ``foxp3_scale``): dim PD1 and FoxP3 intensities
  scaled down (small shifts and dim shoulders overlapping the negatives).

Acquisition phenomena (stop 63, issue 13: what a Fortessa run shows that the phenomena above do not
draw). ``draw_phenomena`` never draws them (the study's files give no evidence for any of them, so
the drawn mix is main's); they are set on a ``Phenomena`` (``benchmarks/validate_gating.py --set``):

- **compensation error** (``spill_error``): (fluorochrome, detector) -> the amount added to that
  ``instrument.SPILLOVER_MATRIX`` coefficient when every tube of the product is acquired, while
  the files' ``$SPILLOVER`` stays the written matrix (one matrix per run, the FMOs' as the stained
  tube's). Positive: more light reaches the detector than the matrix removes (under-compensated);
  negative: over-compensated. E.g. ``("APC-H7", "PE-A"): 0.08``: 8 % of CD8's APC-H7 signal is left
  in PD1's PE detector after compensation.
- **tube-to-tube drift** (``fmo_gain``): detector -> gain factor of the product's FMO tubes only
  (a detector's sensitivity drifted between the stained tube and its controls: the whole raw
  signal of that detector, before the 18-bit ceiling, times the factor; ``$PnV`` unchanged, as for
  a laser or PMT drift the file does not record).
- **few FMO events** (``fmo_events``): each FMO tube holds this fraction of the stained tube's
  events (a control run short or from a small sample), at least one.

Ground truth stays label truth. The ideal-FMO reference of a product simulated with phenomena
is the marker's 99.5th percentile over the **label-negative events of the stained tube's**
label-defined parent: an ideal FMO is a control that differs from the stained tube only by the
marker's specific binding, so it carries the same nonspecific binding (``truth.fmo_reference``).
The acquisition phenomena keep that meaning: the ideal FMO is acquired with the stained tube
(same spillover at acquisition, compensated with the same written ``$SPILLOVER``, so a compensation
error's residual is in it as in the stained tube; the stained tube's gain, not the drifted one; as
many events as the stained tube), which is what the stained tube's label negatives are.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tilpheno.simulate import instrument as ins

NSB_MARKERS = ("CD3", "CD4", "CD8", "CD56", "PD1", "FoxP3")
NSB_NONE_PROBABILITY = 0.35


@dataclass(frozen=True)
class Phenomena:
    """One product's drawn phenomena (module docstring). Zeros / False = the phenomenon is absent."""

    nsb: dict[str, float] = field(default_factory=dict)
    nsb_sd: dict[str, float] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)
    tandem_loss: float = 0.0
    debris_shelf: bool = False
    debris_extra: float = 0.0
    dim_dead: float = 0.0
    pd1_dim_scale: float = 1.0
    foxp3_scale: float = 1.0
    spill_error: dict[tuple[str, str], float] = field(default_factory=dict)
    fmo_gain: dict[str, float] = field(default_factory=dict)
    fmo_events: float = 1.0

    def describe(self) -> dict[str, float]:
        """Flat numbers for a truth table (``phen_*`` columns); the acquisition phenomena's columns
        only where they are present (``phen_spill_<fluorochrome>_<detector>``, ``phen_fmo_gain_<detector>``,
        ``phen_fmo_events``), so a product without them has main's columns."""
        out = {f"phen_nsb_{m}": self.nsb.get(m, 0.0) for m in NSB_MARKERS}
        out.update({f"phen_spread_{m}": self.spread.get(m, 0.0) for m in NSB_MARKERS})
        out.update({
            "phen_tandem_loss": self.tandem_loss, "phen_debris_shelf": float(self.debris_shelf),
            "phen_dim_dead": self.dim_dead, "phen_pd1_dim_scale": self.pd1_dim_scale,
            "phen_foxp3_scale": self.foxp3_scale,
        })
        out.update({f"phen_spill_{source}_{detector}": v for (source, detector), v in self.spill_error.items()})
        out.update({f"phen_fmo_gain_{detector}": v for detector, v in self.fmo_gain.items()})
        if self.fmo_events != 1.0:
            out["phen_fmo_events"] = self.fmo_events
        return out

    def acquisition_spillover(self) -> np.ndarray:
        """The spillover matrix the product's tubes are acquired with (``instrument.SPILLOVER_MATRIX``
        plus ``spill_error``, fractions of the fluorochrome's signal); without a compensation error the
        instrument's own matrix itself (its arithmetic untouched)."""
        if not self.spill_error:
            return ins.SPILLOVER_MATRIX
        matrix = ins.SPILLOVER_MATRIX.copy()
        for (source, detector), error in self.spill_error.items():
            matrix[ins.FLUOROCHROMES.index(source), ins.DETECTORS.index(detector)] += error
        return matrix

    def detector_gain(self, role: str) -> np.ndarray | None:
        """Per-detector gain factors (``instrument.DETECTORS`` order) of a tube of ``role``: ``fmo_gain``
        on FMO tubes, None elsewhere and without drift."""
        if role != "fmo" or not self.fmo_gain:
            return None
        return np.array([self.fmo_gain.get(d, 1.0) for d in ins.DETECTORS])

    def tube_events(self, role: str, n_events: int) -> int:
        """Events of a tube of ``role`` when the stained tube has ``n_events``: ``fmo_events`` of them
        (rounded, at least 1) in an FMO tube."""
        return max(1, round(self.fmo_events * n_events)) if role == "fmo" else n_events


def draw_phenomena(rng: np.random.Generator) -> Phenomena:
    """Draw one product's phenomena (module docstring gives the distributions)."""
    nsb, nsb_sd, spread = {}, {}, {}
    for marker in NSB_MARKERS:
        present = rng.random() >= NSB_NONE_PROBABILITY
        nsb[marker] = float(np.exp(rng.uniform(np.log(15.0), np.log(300.0)))) if present else 0.0
        nsb_sd[marker] = float(rng.uniform(0.2, 0.8))
        spread[marker] = float(rng.uniform(0.0, 80.0)) if rng.random() < 0.5 else 0.0
    shelf = bool(rng.random() < 0.5)
    return Phenomena(
        nsb=nsb, nsb_sd=nsb_sd, spread=spread,
        tandem_loss=float(rng.uniform(0.0, 0.12)) if rng.random() < 0.5 else 0.0,
        debris_shelf=shelf,
        debris_extra=float(rng.uniform(0.05, 0.25)) if shelf else 0.0,
        dim_dead=float(rng.uniform(0.0, 0.35)),
        pd1_dim_scale=float(rng.uniform(0.5, 1.2)),
        foxp3_scale=float(rng.uniform(0.6, 1.1)),
    )


def add_binding(
    phen: Phenomena,
    panel: dict[str, tuple[int, str]],
    amounts: np.ndarray,
    size: np.ndarray,
    large: np.ndarray,
    dead: np.ndarray,
    fixed: bool,
    rng: np.random.Generator,
) -> None:
    """Nonspecific binding and spreading on the antibodies present in the tube (in place).

    ``panel``: marker -> (fluorochrome column, $PnS) of the antibodies in this tube; ``amounts``:
    n x 6 true fluorochrome amounts; ``size``: FSC relative to a lymphocyte; ``large``/``dead``:
    per-event booleans. Fixed (intracellular) tubes bind less to dead cells (no live/dead there,
    the factor is 1.5 instead of 3).
    """
    n = amounts.shape[0]
    factor = np.where(large, 3.0, 1.0) * np.where(dead, 1.5 if fixed else 3.0, 1.0) * size
    for marker, (col, _) in panel.items():
        level = phen.nsb.get(marker, 0.0)
        if level > 0:
            amounts[:, col] += level * factor * np.exp(phen.nsb_sd.get(marker, 0.5) * rng.standard_normal(n))
        sd = phen.spread.get(marker, 0.0)
        if sd > 0:
            amounts[:, col] += sd * size * rng.standard_normal(n)


def degrade_tandem(phen: Phenomena, panel: dict[str, tuple[int, str]], amounts: np.ndarray) -> None:
    """Move ``tandem_loss`` of the APC-H7 amount to APC (in place) when CD8 APC-H7 is in the tube."""
    if phen.tandem_loss <= 0 or "CD8" not in panel:
        return
    col = panel["CD8"][0]
    moved = phen.tandem_loss * amounts[:, col]
    amounts[:, col] -= moved
    amounts[:, 3] += moved   # APC, the donor fluorochrome of APC-H7


def debris_shelf_fsc(n: int, rng: np.random.Generator) -> np.ndarray:
    """FSC-A of shelf debris: log10 density falling linearly from 10^2.7 to 10^4.75 (no peak)."""
    u = rng.random(n)
    return 10.0 ** (2.7 + 2.05 * (1.0 - np.sqrt(u)))
