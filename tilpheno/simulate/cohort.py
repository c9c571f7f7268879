"""Simulated products and cohorts on disk: FCS files, ``manifest.csv``, ``truth.csv``, ``outcomes.csv``.

Determinism: everything derives from ``numpy.random.SeedSequence``. A cohort seed spawns one child
sequence per product (product ``i`` is ``TIL{i+1:03d}``) plus one for the outcomes; a product's
sequence spawns one stream for its composition and acquisition times and one per tube. Keywords
such as ``$DATE``/``$BTIM``/``$ETIM`` come from these streams, never from the clock, so the same
seed and arguments give bit-identical files.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from tilpheno import __version__
from tilpheno.io.atomic import write_csv
from tilpheno.io.fcs_write import write_fcs
from tilpheno.simulate import instrument as ins
from tilpheno.simulate.outcomes import draw_outcomes
from tilpheno.simulate.phenomena import Phenomena, draw_phenomena
from tilpheno.simulate.products import TUBES, Composition, TubeEvents, draw_composition, simulate_tube
from tilpheno.simulate.truth import fmo_reference, label_truth, stained_negative_reference

MANIFEST_COLUMNS = ("file", "product_id", "tube", "role", "fmo_marker")
FIRST_DAY = dt.date(2016, 6, 1)  # study enrolment June 2016 - March 2018
ENROLMENT_DAYS = 640
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


@dataclass
class SimulatedTube:
    """One tube ready to write: file name, raw events with labels, channels and TEXT keywords."""

    file: str
    data: TubeEvents
    channels: list[tuple[str, str | None, int]]
    keywords: dict[str, str]


@dataclass
class SimulatedProduct:
    """A product's tubes, its drawn composition and its ground truth (``truth.py`` columns)."""

    product_id: str
    composition: Composition
    tubes: list[SimulatedTube]
    truth: dict[str, float | str]   # product_id, then the truth.py columns (percent, thresholds)
    phenomena: Phenomena | None = None

    def tube(self, tube: str, role: str, fmo_marker: str | None = None) -> SimulatedTube:
        for t in self.tubes:
            s = t.data.spec
            if (s.tube, s.role, s.fmo_marker) == (tube, role, fmo_marker):
                return t
        raise KeyError(f"{self.product_id}: no tube {tube}/{role}/{fmo_marker}")


@dataclass(frozen=True)
class CohortPaths:
    """Where ``simulate_cohort`` wrote things."""

    out_dir: Path
    files: tuple[Path, ...]
    manifest: Path
    truth: Path
    outcomes: Path


def _channels(spec) -> list[tuple[str, str | None, int]]:
    stains = {ins.DETECTORS[col]: pns for col, pns in spec.panel.values()}
    return [(name, stains.get(name), ins.RANGE) for name in ins.CHANNEL_NAMES]


def _keywords(product_id: str, spec, file: str, start: dt.datetime, events: np.ndarray, seed_note: str) -> dict[str, str]:
    end = start + dt.timedelta(seconds=float(events[-1, -1]) * ins.TIMESTEP)
    kw = {
        "$CYT": "LSRFortessa", "$CYTSN": "H6470012", "$DATE": f"{start.day:02d}-{MONTHS[start.month - 1]}-{start.year}",
        "$BTIM": start.strftime("%H:%M:%S"), "$ETIM": end.strftime("%H:%M:%S"),
        "$SRC": product_id, "$FIL": file, "$OP": "tilpheno simulator", "$TIMESTEP": str(ins.TIMESTEP),
        "CREATOR": f"tilpheno {__version__} simulate (FACSDiva 8 style export)",
        "EXPERIMENT NAME": "TIL infusion product phenotyping", "SPECIMEN NAME": product_id,
        "TUBE NAME": spec.tube_name, "APPLY COMPENSATION": "TRUE", "THRESHOLD": "FSC,5000",
        "FSC ASF": "0.78", "AUTOBS": "TRUE", "TILPHENO SIMULATION": seed_note,
    }
    volts = ins.voltage_keywords()
    for n, name in enumerate(ins.CHANNEL_NAMES, start=1):
        if f"$P{n}V" in volts:
            kw[f"$P{n}V"] = volts[f"$P{n}V"]
        kw[f"P{n}DISPLAY"] = "LOG" if name in ins.DETECTORS else "LIN"
    return kw


def simulate_product(
    product_id: str,
    seed: int | np.random.SeedSequence,
    n_events: int = 20000,
    composition: Composition | None = None,
    phenomena: bool | Phenomena = False,
) -> SimulatedProduct:
    """Simulate all tubes of one product (``products.TUBES``) and compute its ground truth.

    ``seed``: an int or a SeedSequence (``simulate_cohort`` passes spawned children).
    ``composition``: fixed composition, or ``None`` to draw one from the product's stream.
    ``phenomena``: True draws the product's bench phenomena (``phenomena.py``) from a stream of
    its own (spawned after the base streams, which stay unchanged); a ``Phenomena`` uses that one;
    False is the base model. With phenomena the truth has ``phen_*`` columns and the ideal-FMO
    reference is ``truth.stained_negative_reference``; ``n_events`` is the stained tubes' (an FMO tube
    holds fewer with ``Phenomena.fmo_events``). The files' ``$SPILLOVER`` is always the instrument's
    written matrix, also when the phenomena acquire the tubes with another (``spill_error``).
    """
    if n_events < 1:
        raise ValueError(f"{product_id}: need at least one event per tube, got {n_events}")
    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    meta_seq, *tube_seqs = seq.spawn(1 + len(TUBES))
    meta = np.random.default_rng(meta_seq)
    comp = composition if composition is not None else draw_composition(meta)
    start = dt.datetime.combine(FIRST_DAY + dt.timedelta(days=int(meta.integers(ENROLMENT_DAYS))), dt.time(9, 0))
    start += dt.timedelta(minutes=int(meta.integers(0, 240)))
    note = f"seed entropy {seq.entropy}, spawn key {list(seq.spawn_key)}, {n_events} events/tube"
    phen: Phenomena | None = None
    phen_seqs: Sequence[np.random.SeedSequence | None] = [None] * len(TUBES)
    if phenomena is not False:
        phen_seq = seq.spawn(1)[0]
        draw_seq, *phen_seqs = phen_seq.spawn(1 + len(TUBES))
        phen = phenomena if isinstance(phenomena, Phenomena) else draw_phenomena(np.random.default_rng(draw_seq))
        note += ", bench phenomena"

    tubes: list[SimulatedTube] = []
    for spec, tube_seq, phen_tube_seq in zip(TUBES, tube_seqs, phen_seqs):
        prng = np.random.default_rng(phen_tube_seq) if phen is not None else None
        n_tube = phen.tube_events(spec.role, n_events) if phen is not None else n_events
        data = simulate_tube(comp, spec, n_tube, np.random.default_rng(tube_seq), phen, prng)
        file = spec.file_name(product_id)
        tubes.append(SimulatedTube(file, data, _channels(spec), _keywords(product_id, spec, file, start, data.events, note)))
        start += dt.timedelta(seconds=float(data.events[-1, -1]) * ins.TIMESTEP + 30 + int(meta.integers(0, 60)))

    product = SimulatedProduct(product_id, comp, tubes, {})
    surface, treg = product.tube("surface", "stain").data, product.tube("treg", "stain").data
    truth: dict[str, float | str] = {"product_id": product_id, **label_truth(surface, treg)}
    if phen is None:
        truth.update(fmo_reference(surface, product.tube("surface", "fmo", "PD1").data, treg,
                                   product.tube("treg", "fmo", "FoxP3").data, ins.true_spillover()))
    else:
        truth.update(stained_negative_reference(surface, treg, ins.true_spillover()))
        truth.update(phen.describe())
    product.truth = truth
    product.phenomena = phen
    return product


def write_product(product: SimulatedProduct, out_dir: str | Path) -> list[Path]:
    """Write a product's FCS files (with the true ``$SPILLOVER``) into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    spill = ins.true_spillover()
    paths = []
    for t in product.tubes:
        write_fcs(out / t.file, t.data.events, t.channels, t.keywords, spillover=spill)
        paths.append(out / t.file)
    return paths


def manifest_rows(product: SimulatedProduct) -> list[dict[str, str]]:
    """``file, product_id, tube, role, fmo_marker`` per tube (``fmo_marker`` empty unless FMO)."""
    return [{"file": t.file, "product_id": product.product_id, "tube": t.data.spec.tube,
             "role": t.data.spec.role, "fmo_marker": t.data.spec.fmo_marker or ""} for t in product.tubes]


def product_name(index: int) -> str:
    """``TIL001`` for index 0."""
    return f"TIL{index + 1:03d}"


def simulate_cohort(out_dir: str | Path, n_products: int, seed: int, n_events: int = 20000,
                    phenomena: bool = False) -> CohortPaths:
    """Simulate ``n_products`` products and their patients' outcomes into ``out_dir``.

    Writes every product's FCS files, ``manifest.csv``, ``truth.csv`` (one row per product) and
    ``outcomes.csv`` (``outcomes.draw_outcomes`` on the label truth); ``phenomena`` as in
    :func:`simulate_product`. Products are simulated
    one at a time, so memory stays that of one product.
    """
    if n_products < 1 or n_events < 1:
        raise ValueError(f"need at least one product and one event, got {n_products} products, {n_events} events")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    *product_seqs, outcome_seq = np.random.SeedSequence(seed).spawn(n_products + 1)
    files: list[Path] = []
    manifest: list[dict[str, str]] = []
    truth: list[dict[str, float | str]] = []
    for i, seq in enumerate(product_seqs):
        product = simulate_product(product_name(i), seq, n_events, phenomena=phenomena)
        files += write_product(product, out)
        manifest += manifest_rows(product)
        truth.append(product.truth)
    truth_frame = pd.DataFrame(truth)
    outcomes = draw_outcomes(truth_frame, np.random.default_rng(outcome_seq))
    paths = CohortPaths(out, tuple(files), out / "manifest.csv", out / "truth.csv", out / "outcomes.csv")
    write_csv(paths.manifest, pd.DataFrame(manifest, columns=list(MANIFEST_COLUMNS)))
    write_csv(paths.truth, truth_frame)
    write_csv(paths.outcomes, outcomes)
    return paths
