"""Simulated single-stain compensation controls made with a known spillover matrix.

One FCS file per fluorochrome of the simulated Fortessa (``instrument.FLUOROCHROMES``) plus an
unstained control, FACSDiva-style names (``Compensation Controls_FITC Stained Control.fcs``,
``Compensation Controls_Unstained Control.fcs``), no ``$SPILLOVER`` (an uncompensated export),
and ``controls.csv`` (``file,detector``; empty detector = the unstained control) beside them.

Two kinds:

- ``cells``: lymphocyte-like scatter and autofluorescence (as ``products``); ``positive_fraction``
  (default 0.4) of the cells carry the fluorochrome, log-normal with median ``brightness``
  (default 20,000 linear units) and log-SD 0.5.
- ``beads``: capture beads, tight scatter, low autofluorescence; half negative, half positive at
  ``brightness`` with a CV of 5 %.

Raw detector values follow ``instrument``'s noise model with the given ``matrix`` in place of the
instrument's: ``raw = af + amounts @ matrix + photon noise + electronic noise``, clipped at
saturation. The same seed gives identical files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tilpheno.io.atomic import write_csv
from tilpheno.io.fcs_write import write_fcs
from tilpheno.simulate import instrument as ins

KINDS = ("cells", "beads")


@dataclass(frozen=True)
class ControlSet:
    """Where :func:`simulate_controls` wrote: the folder, the files, ``controls.csv``, the true matrix."""

    out_dir: Path
    files: tuple[Path, ...]
    controls_csv: Path
    matrix: np.ndarray


def control_file_name(fluorochrome: str | None) -> str:
    """``Compensation Controls_<fluorochrome> Stained Control.fcs`` (``Unstained Control`` for None)."""
    what = "Unstained Control" if fluorochrome is None else f"{fluorochrome} Stained Control"
    return f"Compensation Controls_{what}.fcs"


def detect_with(matrix: np.ndarray, amounts: np.ndarray, af: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``instrument.detect`` with another spillover ``matrix`` (fixed-order sums, no BLAS)."""
    mean = af.copy()
    for i in range(matrix.shape[0]):
        mean += amounts[:, i : i + 1] * matrix[i]
    shot = np.sqrt(ins.PHOTON_FACTOR * np.clip(mean, 0.0, None)) * rng.standard_normal(mean.shape)
    electronic = ins.ELECTRONIC_SD * rng.standard_normal(mean.shape)
    return np.minimum(mean + shot + electronic, ins.SATURATION)


def simulate_control(
    fluorochrome: int | None,
    n_events: int,
    rng: np.random.Generator,
    *,
    matrix: np.ndarray = ins.SPILLOVER_MATRIX,
    kind: str = "cells",
    brightness: float = 20000.0,
    positive_fraction: float = 0.4,
) -> np.ndarray:
    """Raw events (n x 11, ``instrument.CHANNEL_NAMES``) of one control: ``fluorochrome`` is the
    column index in ``instrument.FLUOROCHROMES`` (None = unstained)."""
    if kind not in KINDS:
        raise ValueError(f"control kind {kind!r}: must be one of {KINDS}")
    n = n_events
    if kind == "cells":
        fsc = 70000.0 * np.exp(0.12 * rng.standard_normal(n))
        ssc = 22000.0 * np.exp(0.25 * rng.standard_normal(n))
        size = fsc / 70000.0
        af = ins.AUTOFLUORESCENCE[None, :] * size[:, None] * np.exp(0.3 * rng.standard_normal((n, 1)))
        positive = rng.random(n) < positive_fraction
        level = brightness * np.exp(0.5 * rng.standard_normal(n)) * size
    else:
        fsc = 120000.0 * np.exp(0.04 * rng.standard_normal(n))
        ssc = 60000.0 * np.exp(0.05 * rng.standard_normal(n))
        af = 0.3 * ins.AUTOFLUORESCENCE[None, :] * np.exp(0.05 * rng.standard_normal((n, 1)))
        positive = rng.random(n) < 0.5
        level = brightness * (1.0 + 0.05 * rng.standard_normal(n))
    amounts = np.zeros((n, len(ins.FLUOROCHROMES)))
    if fluorochrome is not None:
        amounts[:, fluorochrome] = np.where(positive, level, 0.0)
    fluor = detect_with(np.asarray(matrix, dtype=np.float64), amounts, af, rng)
    scatter = np.column_stack([fsc, fsc * 0.78, ssc, ssc * 0.8])
    scatter = np.clip(scatter + 150.0 * rng.standard_normal(scatter.shape), 0.0, ins.SATURATION)
    time = np.cumsum(rng.exponential(1.0 / 2500.0, n)) / ins.TIMESTEP
    return np.column_stack([scatter, fluor, time]).astype(np.float32)


def simulate_controls(
    out_dir: str | Path,
    seed: int,
    *,
    n_events: int = 20000,
    matrix: np.ndarray = ins.SPILLOVER_MATRIX,
    kind: str = "cells",
    unstained: bool = True,
    brightness: float = 20000.0,
) -> ControlSet:
    """Write one single-stain control per fluorochrome (and the unstained control) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = [(name, None, ins.RANGE) for name in ins.CHANNEL_NAMES]
    files, rows = [], []
    which: list[int | None] = list(range(len(ins.FLUOROCHROMES))) + ([None] if unstained else [])
    for i in which:
        name = control_file_name(None if i is None else ins.FLUOROCHROMES[i])
        events = simulate_control(i, n_events, rng, matrix=matrix, kind=kind, brightness=brightness)
        keywords = {"$CYT": "LSRFortessa", "$TIMESTEP": str(ins.TIMESTEP), "$FIL": name,
                    "TUBE NAME": name[len("Compensation Controls_"):-4], "$SRC": "Compensation Controls",
                    "CREATOR": "tilpheno simulate controls", **ins.voltage_keywords()}
        write_fcs(out / name, events, channels, keywords)
        files.append(out / name)
        rows.append({"file": name, "detector": "" if i is None else ins.DETECTORS[i]})
    csv = out / "controls.csv"
    write_csv(csv, pd.DataFrame(rows, columns=["file", "detector"]))
    return ControlSet(out, tuple(files), csv, np.asarray(matrix, dtype=np.float64).copy())
