"""Simulated TIL infusion products: per-product composition, and raw events with labels per tube.

A product's composition (``Composition``) is drawn around study-like means (Beta/Dirichlet
draws): CD3 ~90% of live lymphocytes, CD8 ~60% and CD4 ~30% of CD3 (a few CD4+CD8+ double
positives, the rest double negative), NK (CD3-CD56+) ~5%, NKT (CD3+CD56+) ~3%, PD1+ ~20% of live
lymphocytes, mostly on CD8 (CD8+PD1+ ~25% of CD8), Treg (FoxP3+) ~8% of CD4, viability 70-95%.

Each tube is an independent sample of ``n_events`` events from that composition:

- debris (low FSC/SSC, some 7AAD+ fragments), doublets (two cells: FSC-A about doubled, FSC-H only
  a little higher, fluorescence summed), large non-lymphoid cells (high FSC/SSC, high
  autofluorescence), dead cells (7AAD bright, FSC ~25% lower, SSC higher, some nonspecific
  antibody binding in unfixed tubes) and live lymphocytes with their marker labels.
- Stained markers get a log-normal intensity on positive cells (scaled by cell size); PD1+ cells
  are a mixture of bright and dim, the dim part overlapping the unstained cells.
- Treg tubes (intracellular staining) have fixed cells: no 7AAD, smaller FSC, larger SSC, about
  twice the autofluorescence.

Intensities are linear 0..262144 detector units before spillover; ``instrument.detect`` adds
spillover, autofluorescence and noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tilpheno.simulate import instrument as ins
from tilpheno.simulate.phenomena import Phenomena, add_binding, debris_shelf_fsc, degrade_tandem

KIND_DEBRIS, KIND_DOUBLET, KIND_LARGE, KIND_LYMPH = 0, 1, 2, 3

# Marker -> (fluorochrome column index, $PnS text) in the surface and Treg panels.
SURFACE_PANEL = {"CD3": (0, "CD3 FITC"), "PD1": (1, "PD1 PE"), "7AAD": (2, "7AAD"),
                 "CD56": (3, "CD56 APC"), "CD4": (4, "CD4 BV421"), "CD8": (5, "CD8 APC-H7")}
TREG_PANEL = {"CD3": (0, "CD3 FITC"), "FoxP3": (1, "FoxP3 PE"), "CD4": (4, "CD4 BV421")}

# Positive-population intensities: (median, log-sd) in linear units at lymphocyte size.
INTENSITY = {
    "CD3": (6000.0, 0.35),
    "CD4": (9000.0, 0.35),
    "CD8": (7000.0, 0.40),
    "CD56_NK": (5000.0, 0.50),
    "CD56_NKT": (2500.0, 0.55),
    "PD1_BRIGHT": (2600.0, 0.50),
    "PD1_DIM": (450.0, 0.45),
    "FoxP3": (1300.0, 0.45),
    "7AAD": (15000.0, 0.50),
}
DP_CD8_FACTOR = 0.6      # CD8 is dimmer on CD4+CD8+ double positives
FIXED_CD4_FACTOR = 0.7   # fixation/permeabilisation dims surface CD4
LYMPH_FSC, LYMPH_SSC = 70000.0, 22000.0


@dataclass(frozen=True)
class Composition:
    """One product's expected composition (fractions 0-1).

    ``lymph``: live-lymphocyte classes (T = CD3+CD56-, NKT = CD3+CD56+, NK = CD3-CD56+,
    other = CD3-CD56-). ``tsub``: CD3+ subsets (CD4+CD8-, CD4-CD8+, CD4+CD8+, CD4-CD8-).
    PD1 probabilities: ``pd1_cd8`` on CD8+ (incl. double positives), ``pd1_cd4`` on CD4+CD8-,
    ``pd1_other`` on every other lymphocyte; ``pd1_dim`` = share of PD1+ cells that are dim.
    ``treg`` = FoxP3+ share of CD3+CD4+ cells. ``viability`` = live share of singlet cells;
    ``debris``, ``doublets`` = shares of all events; ``large`` = share of singlet cells that are
    large non-lymphoid cells.
    """

    viability: float
    debris: float
    doublets: float
    large: float
    lymph: tuple[float, float, float, float]
    tsub: tuple[float, float, float, float]
    pd1_cd8: float
    pd1_cd4: float
    pd1_other: float
    pd1_dim: float
    treg: float

    def expected_variables(self) -> dict[str, float]:
        """Expected study variables (percent), ignoring sampling noise of a finite tube."""
        t, nkt, nk, _ = self.lymph
        cd4s, cd8s, dp, dn = self.tsub
        cd3 = t + nkt
        cd8 = cd8s + dp
        pd1 = cd3 * (cd8 * self.pd1_cd8 + cd4s * self.pd1_cd4 + dn * self.pd1_other) + (1 - cd3) * self.pd1_other
        return {
            "viability_pct": 100 * self.viability,
            "cd3_pct_of_live_lymph": 100 * cd3,
            "cd4_pct_of_cd3": 100 * (cd4s + dp),
            "cd8_pct_of_cd3": 100 * cd8,
            "nk_pct_of_live_lymph": 100 * nk,
            "nkt_pct_of_live_lymph": 100 * nkt,
            "pd1_pct_of_live_lymph": 100 * pd1,
            "cd8pd1_pct_of_cd8": 100 * self.pd1_cd8,
            "cd8pd1_pct_of_cd3": 100 * cd8 * self.pd1_cd8,
            "cd4foxp3_pct_of_cd4": 100 * self.treg,
        }


def _beta(rng: np.random.Generator, mean: float, concentration: float) -> float:
    return float(rng.beta(mean * concentration, (1 - mean) * concentration))


def _four(values) -> tuple[float, float, float, float]:
    """Four shares (a Dirichlet draw) as a tuple of floats."""
    a, b, c, d = (float(x) for x in values)
    return a, b, c, d


def draw_composition(rng: np.random.Generator) -> Composition:
    """Draw one product's composition around the study-like means (see the module docstring).

    Between-product SDs (approximately): viability 5 pts, CD3 3 pts, CD8 of CD3 10 pts,
    CD8+PD1+ of CD8 10 pts, Treg of CD4 4 pts.
    """
    lymph = rng.dirichlet(np.array([0.87, 0.03, 0.05, 0.05]) * 100.0)
    tsub = rng.dirichlet(np.array([0.285, 0.59, 0.015, 0.11]) * 23.0)
    return Composition(
        viability=0.70 + 0.25 * float(rng.beta(3.0, 2.0)),
        debris=_beta(rng, 0.08, 60.0),
        doublets=_beta(rng, 0.05, 80.0),
        large=_beta(rng, 0.03, 60.0),
        lymph=_four(lymph),
        tsub=_four(tsub),
        pd1_cd8=_beta(rng, 0.25, 17.75),
        pd1_cd4=_beta(rng, 0.15, 20.0),
        pd1_other=_beta(rng, 0.06, 40.0),
        pd1_dim=_beta(rng, 0.30, 20.0),
        treg=_beta(rng, 0.08, 45.0),
    )


@dataclass(frozen=True)
class TubeSpec:
    """One tube of a product: ``tube`` (surface | treg | unstained), ``role`` (stain | fmo |
    unstained), ``fmo_marker`` (the omitted marker, or ``None``)."""

    tube: str
    role: str
    fmo_marker: str | None = None

    @property
    def panel(self) -> dict[str, tuple[int, str]]:
        """Marker -> (fluorochrome column, $PnS) of the markers actually stained in this tube."""
        if self.role == "unstained":
            return {}
        base = SURFACE_PANEL if self.tube == "surface" else TREG_PANEL
        return {m: v for m, v in base.items() if m != self.fmo_marker}

    @property
    def fixed(self) -> bool:
        return self.tube == "treg"

    def file_name(self, product_id: str) -> str:
        """``<product>_<tube>_<role>[_<marker>].fcs`` (``<product>_unstained.fcs`` for the unstained tube)."""
        if self.role == "unstained":
            return f"{product_id}_unstained.fcs"
        suffix = f"FMO_{self.fmo_marker}" if self.role == "fmo" else "stain"
        return f"{product_id}_{self.tube}_{suffix}.fcs"

    @property
    def tube_name(self) -> str:
        """FACSDiva ``TUBE NAME`` keyword."""
        if self.role == "unstained":
            return "Unstained"
        if self.role == "fmo":
            return f"FMO {self.fmo_marker}"
        return "Surface stain" if self.tube == "surface" else "Treg stain"


TUBES = (
    TubeSpec("surface", "stain"),
    *(TubeSpec("surface", "fmo", m) for m in ("CD3", "CD4", "CD8", "CD56", "PD1")),
    TubeSpec("treg", "stain"),
    TubeSpec("treg", "fmo", "FoxP3"),
    TubeSpec("unstained", "unstained"),
)


@dataclass
class TubeEvents:
    """Raw events of one tube: ``events`` (n x 11, float32, ``instrument.CHANNEL_NAMES`` order,
    uncompensated) and per-event ground truth: ``kind`` (KIND_* codes) and boolean ``labels``
    (``dead``, ``cd3``, ``cd4``, ``cd8``, ``cd56``, ``pd1``, ``foxp3``; marker labels are False on
    everything but lymphocytes, ``dead`` is False on debris and doublets)."""

    spec: TubeSpec
    events: np.ndarray
    kind: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)


def _lognormal(rng: np.random.Generator, median: float, sigma: float, n: int) -> np.ndarray:
    return median * np.exp(sigma * rng.standard_normal(n))


def _lymph_labels(comp: Composition, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cls = rng.choice(4, size=n, p=np.asarray(comp.lymph))           # T, NKT, NK, other
    sub = rng.choice(4, size=n, p=np.asarray(comp.tsub))            # CD4, CD8, DP, DN
    cd3 = cls <= 1
    cd4 = cd3 & ((sub == 0) | (sub == 2))
    cd8 = cd3 & ((sub == 1) | (sub == 2))
    cd56 = (cls == 1) | (cls == 2)
    p_pd1 = np.where(cd8, comp.pd1_cd8, np.where(cd4, comp.pd1_cd4, comp.pd1_other))
    pd1 = rng.random(n) < p_pd1
    foxp3 = cd4 & (rng.random(n) < comp.treg)
    return {"cd3": cd3, "cd4": cd4, "cd8": cd8, "cd56": cd56, "pd1": pd1, "foxp3": foxp3}


def _singlets(comp: Composition, spec: TubeSpec, kind: np.ndarray, rng: np.random.Generator,
              phen: Phenomena | None = None, prng: np.random.Generator | None = None):
    """Singlet cells (large or lymphocyte) -> labels, amounts (n x 6), AF (n x 6), FSC-A, SSC-A.

    ``phen``/``prng``: phenomena applied with their own stream (``phenomena.py``); None = base model.
    """
    n = kind.size
    lymph = kind == KIND_LYMPH
    dead = rng.random(n) >= comp.viability
    labels = {k: v & lymph for k, v in _lymph_labels(comp, n, rng).items()}
    labels["dead"] = dead

    fsc = np.where(lymph, _lognormal(rng, LYMPH_FSC, 0.12, n), _lognormal(rng, 150000.0, 0.15, n))
    ssc = np.where(lymph, _lognormal(rng, LYMPH_SSC, 0.25, n), _lognormal(rng, 90000.0, 0.30, n))
    fsc = np.where(dead, fsc * 0.75, fsc)
    ssc = np.where(dead, ssc * 1.3, ssc)
    if spec.fixed:
        fsc, ssc = fsc * 0.85, ssc * 1.25
    size = fsc / LYMPH_FSC

    af_factor = np.where(lymph, 1.0, 4.0) * np.where(dead, 1.5, 1.0) * (1.8 if spec.fixed else 1.0)
    af = (ins.AUTOFLUORESCENCE[None, :] * (af_factor * size)[:, None]
          * np.exp(0.3 * rng.standard_normal((n, 1))))

    amounts = np.zeros((n, 6))
    panel = spec.panel
    def put(marker, mask, values):
        if marker in panel:
            col = panel[marker][0]
            amounts[:, col] += np.where(mask, values * size, 0.0)

    put("CD3", labels["cd3"], _lognormal(rng, *INTENSITY["CD3"], n))
    cd4_scale = FIXED_CD4_FACTOR if spec.fixed else 1.0
    put("CD4", labels["cd4"], cd4_scale * _lognormal(rng, *INTENSITY["CD4"], n))
    dp = labels["cd4"] & labels["cd8"]
    put("CD8", labels["cd8"], np.where(dp, DP_CD8_FACTOR, 1.0) * _lognormal(rng, *INTENSITY["CD8"], n))
    nkt = labels["cd3"] & labels["cd56"]
    cd56 = np.where(nkt, _lognormal(rng, *INTENSITY["CD56_NKT"], n), _lognormal(rng, *INTENSITY["CD56_NK"], n))
    put("CD56", labels["cd56"], cd56)
    dim = rng.random(n) < comp.pd1_dim
    pd1 = np.where(dim, _lognormal(rng, *INTENSITY["PD1_DIM"], n), _lognormal(rng, *INTENSITY["PD1_BRIGHT"], n))
    foxp3 = _lognormal(rng, *INTENSITY["FoxP3"], n)
    dye = _lognormal(rng, *INTENSITY["7AAD"], n)
    if phen is not None and prng is not None:   # both or neither (simulate_tube checks)
        pd1 = np.where(dim, pd1 * phen.pd1_dim_scale, pd1)
        foxp3 = foxp3 * phen.foxp3_scale
        dye = np.where(prng.random(n) < phen.dim_dead, dye / prng.uniform(5.0, 15.0, n), dye)
    put("PD1", labels["pd1"], pd1)
    put("FoxP3", labels["foxp3"], foxp3)
    put("7AAD", dead, dye)
    # Unfixed dead cells bind antibodies nonspecifically (a little, in every antibody channel).
    for marker, (col, _) in panel.items():
        if marker != "7AAD" and not spec.fixed:
            amounts[:, col] += np.where(dead, _lognormal(rng, 150.0, 0.6, n), 0.0)
    if phen is not None and prng is not None:
        add_binding(phen, {m: v for m, v in panel.items() if m != "7AAD"}, amounts, size, kind == KIND_LARGE,
                    dead, spec.fixed, prng)
        degrade_tandem(phen, panel, amounts)
    return labels, amounts, af, fsc, ssc


def _heights(area: np.ndarray, ratio: float, sd: float, rng: np.random.Generator) -> np.ndarray:
    return area * (ratio + sd * rng.standard_normal(area.size))


def simulate_tube(
    comp: Composition,
    spec: TubeSpec,
    n_events: int,
    rng: np.random.Generator,
    phenomena: Phenomena | None = None,
    phenomena_rng: np.random.Generator | None = None,
) -> TubeEvents:
    """Simulate one tube of ``n_events`` raw events (see the module docstring).

    ``phenomena`` (with its own ``phenomena_rng``): the bench phenomena of ``phenomena.py`` (a
    compensation error and an FMO tube's detector drift applied at detection; ``n_events`` is the
    tube's own, an FMO's few events already taken: ``Phenomena.tube_events``); None draws exactly
    the base model's streams.
    """
    phen, prng = phenomena, phenomena_rng
    if phen is not None and prng is None:
        raise ValueError("simulate_tube: phenomena need their own random generator (phenomena_rng)")
    debris = comp.debris if phen is None else comp.debris + phen.debris_extra
    shares = np.array([debris, comp.doublets, 0.0, 0.0])
    rest = 1.0 - shares.sum()
    shares[2], shares[3] = rest * comp.large, rest * (1.0 - comp.large)
    counts = rng.multinomial(n_events, shares)
    n_debris, n_doublet, n_large, n_lymph = (int(c) for c in counts)

    # Singlet cells, plus 2 source cells for every doublet (drawn the same way).
    n_cells = n_large + n_lymph
    n_src = 2 * n_doublet
    src_kind = np.where(rng.random(n_src) < comp.large, KIND_LARGE, KIND_LYMPH)
    kind_cells = np.concatenate([np.full(n_large, KIND_LARGE), np.full(n_lymph, KIND_LYMPH), src_kind])
    labels, amounts, af, fsc, ssc = _singlets(comp, spec, kind_cells, rng, phen, prng)
    fsc_h = _heights(fsc, 0.78, 0.025, rng)
    ssc_h = _heights(ssc, 0.80, 0.04, rng)

    # Doublets: areas and fluorescence add; heights grow only a little over the taller cell.
    a, b = slice(n_cells, n_cells + n_doublet), slice(n_cells + n_doublet, n_cells + n_src)
    grow = rng.uniform(1.02, 1.25, n_doublet)
    d_fsc, d_ssc = fsc[a] + fsc[b], ssc[a] + ssc[b]
    d_fsc_h = np.maximum(fsc_h[a], fsc_h[b]) * grow
    d_ssc_h = np.maximum(ssc_h[a], ssc_h[b]) * rng.uniform(1.05, 1.4, n_doublet)
    d_amounts, d_af = amounts[a] + amounts[b], af[a] + af[b]

    # Debris: small, irregular, dim; some 7AAD+ membrane fragments with nuclear material.
    deb_fsc = np.exp(rng.uniform(np.log(1500.0), np.log(26000.0), n_debris))
    deb_ssc = _lognormal(rng, 7000.0, 0.7, n_debris)
    if phen is not None and prng is not None and phen.debris_shelf:
        deb_fsc = debris_shelf_fsc(n_debris, prng)
        deb_ssc = deb_ssc * (deb_fsc / 8000.0) ** 0.5
    deb_af = ins.AUTOFLUORESCENCE[None, :] * 0.3 * np.exp(0.5 * rng.standard_normal((n_debris, 1)))
    deb_amounts = np.zeros((n_debris, 6))
    for marker, (col, _) in spec.panel.items():
        if marker == "7AAD":
            deb_amounts[:, col] = np.where(rng.random(n_debris) < 0.4, _lognormal(rng, 5000.0, 0.9, n_debris), 0.0)
        else:
            deb_amounts[:, col] = np.where(rng.random(n_debris) < 0.5, _lognormal(rng, 80.0, 1.0, n_debris), 0.0)

    kind = np.concatenate([kind_cells[:n_cells], np.full(n_doublet, KIND_DOUBLET), np.full(n_debris, KIND_DEBRIS)])
    lab = {k: np.concatenate([v[:n_cells], np.zeros(n_doublet + n_debris, bool)]) for k, v in labels.items()}
    amounts_all = np.vstack([amounts[:n_cells], d_amounts, deb_amounts])
    af_all = np.vstack([af[:n_cells], d_af, deb_af])
    scatter = np.column_stack([
        np.concatenate([fsc[:n_cells], d_fsc, deb_fsc]),
        np.concatenate([fsc_h[:n_cells], d_fsc_h, _heights(deb_fsc, 0.85, 0.08, rng)]),
        np.concatenate([ssc[:n_cells], d_ssc, deb_ssc]),
        np.concatenate([ssc_h[:n_cells], d_ssc_h, _heights(deb_ssc, 0.85, 0.08, rng)]),
    ])
    scatter = np.clip(scatter + 150.0 * rng.standard_normal(scatter.shape), 0.0, ins.SATURATION)
    fluor = (ins.detect(amounts_all, af_all, rng) if phen is None else
             ins.detect(amounts_all, af_all, rng, phen.acquisition_spillover(), phen.detector_gain(spec.role)))

    # Acquisition order is random; Time in $TIMESTEP units at ~2,500 events/s.
    order = rng.permutation(n_events)
    time = np.cumsum(rng.exponential(1.0 / 2500.0, n_events)) / ins.TIMESTEP
    events = np.column_stack([scatter, fluor])[order]
    events = np.column_stack([events, time]).astype(np.float32)
    return TubeEvents(spec, events, kind[order], {k: v[order] for k, v in lab.items()})
