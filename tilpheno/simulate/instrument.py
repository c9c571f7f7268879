"""The simulated instrument: a BD LSRFortessa with a FACSDiva 8 style FCS 3.1 export.

Channel layout, stains and file naming follow docs/design.md ("Demo instrument layout").
All intensities are on the linear 0..262144 scale of the Fortessa's 18-bit area channels.

Optical model, per event and fluorescence detector ``d``::

    signal   = (true fluorochrome amounts) @ SPILLOVER           # raw = true @ S
    mean_d   = signal_d + autofluorescence_d
    raw_d    = mean_d + sqrt(PHOTON_FACTOR * max(mean_d, 0)) * N(0, 1) + ELECTRONIC_SD_d * N(0, 1)

clipped above at 262143 (saturation). Photon (Poisson-like) noise scales with the square root
of the light collected, so cells bright in one fluorochrome spread in the detectors it spills
into; after compensation with the true matrix, unstained populations sit a little above 0 (their
autofluorescence, partly compensated away) with a spread of a few tens to a few hundred units,
including negative values, as real compensated data look on a logicle display.
"""
from __future__ import annotations

import numpy as np

from tilpheno.compensation import Spillover

RANGE = 262144
SATURATION = RANGE - 1
TIMESTEP = 0.01  # seconds per Time-channel unit ($TIMESTEP)

SCATTER = ("FSC-A", "FSC-H", "SSC-A", "SSC-H")
# Fluorescence detectors, in $PnN order; each is the primary detector of one fluorochrome.
DETECTORS = ("FITC-A", "PE-A", "PerCP-Cy5-5-A", "APC-A", "BV421-A", "APC-H7-A")
FLUOROCHROMES = ("FITC", "PE", "PerCP-Cy5.5", "APC", "BV421", "APC-H7")
CHANNEL_NAMES = (*SCATTER, *DETECTORS, "Time")

# Spillover S[i, j]: fraction of fluorochrome i (row) seen in detector j (column); 7AAD is read
# in the PerCP-Cy5.5 detector and spills like it (broad emission into PE and the far-red).
# Values are typical of a 4-laser Fortessa (488 nm for FITC/PE/PerCP-Cy5.5, 640 nm for
# APC/APC-H7, 405 nm for BV421).
SPILLOVER_MATRIX = np.array(
    [
        #  FITC    PE      PerCP   APC     BV421   APC-H7
        [1.0000, 0.2150, 0.0310, 0.0000, 0.0020, 0.0000],  # FITC
        [0.0120, 1.0000, 0.1450, 0.0060, 0.0000, 0.0040],  # PE
        [0.0000, 0.0820, 1.0000, 0.0540, 0.0000, 0.0950],  # PerCP-Cy5.5 / 7AAD
        [0.0000, 0.0000, 0.0120, 1.0000, 0.0000, 0.1380],  # APC
        [0.0210, 0.0030, 0.0000, 0.0000, 1.0000, 0.0000],  # BV421
        [0.0000, 0.0020, 0.0090, 0.0260, 0.0000, 1.0000],  # APC-H7
    ]
)

# Autofluorescence of a resting-size live lymphocyte per detector (linear units); scaled by cell
# size and by the cell-type factors in products.py.
AUTOFLUORESCENCE = np.array([110.0, 55.0, 45.0, 18.0, 95.0, 14.0])
PHOTON_FACTOR = 9.0  # variance / mean of the photon noise, linear units
ELECTRONIC_SD = np.array([22.0, 25.0, 28.0, 20.0, 24.0, 26.0])

VOLTAGES = {"FSC-A": 320, "SSC-A": 245, "FITC-A": 480, "PE-A": 460, "PerCP-Cy5-5-A": 560,
            "APC-A": 590, "BV421-A": 400, "APC-H7-A": 610}


def voltage_keywords() -> dict[str, str]:
    """``$PnV`` (volts) of each parameter of ``CHANNEL_NAMES`` (n from 1) whose detector has a
    voltage (``VOLTAGES``): a detector's -A and -H share it, as every file of the instrument
    (stained tube or control) records it."""
    out = {}
    for n, name in enumerate(CHANNEL_NAMES, start=1):
        base = name[:-2] if name.endswith(("-A", "-H")) else name
        if f"{base}-A" in VOLTAGES:
            out[f"$P{n}V"] = str(VOLTAGES[f"{base}-A"])
    return out


def true_spillover() -> Spillover:
    """The instrument's spillover matrix over ``DETECTORS`` (what the file's $SPILLOVER carries)."""
    return Spillover(DETECTORS, SPILLOVER_MATRIX.copy(), "simulated Fortessa")


def spill(amounts: np.ndarray, matrix: np.ndarray = SPILLOVER_MATRIX) -> np.ndarray:
    """``amounts @ matrix`` (the instrument's ``SPILLOVER_MATRIX`` unless a product is acquired with
    another: a compensation error, ``phenomena.Phenomena.spill_error``) as elementwise sums in a fixed order.

    Not BLAS: BLAS results may differ in the last bit between CPUs and thread counts (breaking
    bit-identical files for a seed), and its threads crawl on a shared 2-core machine.
    """
    out = np.zeros((amounts.shape[0], matrix.shape[1]))
    for i in range(matrix.shape[0]):
        out += amounts[:, i : i + 1] * matrix[i]
    return out


def detect(amounts: np.ndarray, autofluorescence: np.ndarray, rng: np.random.Generator,
           matrix: np.ndarray = SPILLOVER_MATRIX, gain: np.ndarray | None = None) -> np.ndarray:
    """Raw detector values (n x 6) from true fluorochrome amounts and per-event autofluorescence.

    ``amounts`` and ``autofluorescence`` are n x 6, linear units, columns in ``FLUOROCHROMES`` /
    ``DETECTORS`` order. Implements the noise model of the module docstring with the spillover
    ``matrix`` the tube is acquired with; ``gain`` (per detector, 1 = the instrument's): a drifted
    detector's whole signal (light, photon and electronic noise) scaled before the 18-bit ceiling.
    """
    mean = autofluorescence + spill(amounts, matrix)
    shot = np.sqrt(PHOTON_FACTOR * np.clip(mean, 0.0, None)) * rng.standard_normal(mean.shape)
    electronic = ELECTRONIC_SD * rng.standard_normal(mean.shape)
    signal = mean + shot + electronic
    return np.minimum(signal if gain is None else signal * gain, SATURATION)
