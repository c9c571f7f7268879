"""Acquisition faults for simulated tubes: clogs, flow-rate changes and signal drift, with truth.

Faults are laid over a simulated tube's raw events (``products.simulate_tube``: acquisition order,
``instrument.CHANNEL_NAMES`` columns, Time last in ``$TIMESTEP`` units, ~2,500 events/s). Each
fault covers a stretch of consecutive events given as fractions of the file (``start``,
``length``) and marks which events it affects (the truth an acquisition QC is scored against):

- ``clog``: a partial clog. Inter-arrival times in the stretch are divided by ``rate_factor``
  (default 0.2: the rate falls to a fifth) and every scatter and fluorescence value is multiplied
  by ``signal_factor`` (default 0.7: cells pass off-centre, collect less light). All events of the
  stretch are affected.
- ``rate``: a flow-rate change (sample pressure, a nearly empty tube): inter-arrival times divided
  by ``rate_factor`` (e.g. 0.4 or 2.5); signals unchanged. All events of the stretch are affected.
- ``drift``: a laser losing power. The gain of ``channels`` (default the 488 nm laser's: FSC, SSC,
  FITC, PE, PerCP-Cy5.5) falls linearly from 1 at the stretch's start to ``signal_factor`` (default
  0.6) at its end and stays there to the end of the file. Affected = events whose gain differs from
  1 by more than ``DRIFT_TRUTH`` (10 %).

Time is rebuilt from the modified inter-arrival times (cumulative sum), so the Time channel stays
monotonic. Deterministic for a given ``numpy.random.Generator`` state (no draws are made here).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilpheno.simulate import instrument as ins

KINDS = ("clog", "rate", "drift")
DRIFT_TRUTH = 0.10    # |gain - 1| above which a drifting event counts as affected
LASER_488 = ("FSC-A", "FSC-H", "SSC-A", "SSC-H", "FITC-A", "PE-A", "PerCP-Cy5-5-A")


@dataclass(frozen=True)
class Fault:
    """One acquisition fault over events ``[start, start + length)`` (fractions of the file)."""

    kind: str
    start: float
    length: float
    rate_factor: float = 1.0
    signal_factor: float = 1.0
    channels: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"fault kind {self.kind!r}: must be one of {KINDS}")
        if not (0 <= self.start < 1 and 0 < self.length <= 1 - self.start):
            raise ValueError(f"fault {self.kind}: start {self.start} / length {self.length} outside the file")


def clog(start: float, length: float, rate_factor: float = 0.2, signal_factor: float = 0.7) -> Fault:
    return Fault("clog", start, length, rate_factor, signal_factor)


def rate_change(start: float, length: float, rate_factor: float = 0.4) -> Fault:
    return Fault("rate", start, length, rate_factor, 1.0)


def drift(start: float, length: float, signal_factor: float = 0.6, channels: tuple[str, ...] = LASER_488) -> Fault:
    return Fault("drift", start, length, 1.0, signal_factor, channels)


def inject(events: np.ndarray, faults: list[Fault], channel_names=ins.CHANNEL_NAMES) -> tuple[np.ndarray, np.ndarray]:
    """``(faulty events, affected)``: a copy of ``events`` with the faults applied (module docstring)
    and a bool per event, True when a fault affects it. The time channel must be named ``Time``."""
    out = np.array(events, dtype=np.float64, copy=True)
    names = list(channel_names)
    t = names.index("Time")
    signal_cols = [i for i, c in enumerate(names) if c != "Time"]
    n = out.shape[0]
    affected = np.zeros(n, dtype=bool)
    gaps = np.diff(out[:, t], prepend=0.0)
    for f in faults:
        a = int(round(f.start * n))
        b = min(n, a + max(1, int(round(f.length * n))))
        if f.kind in ("clog", "rate"):
            gaps[a:b] /= f.rate_factor
            affected[a:b] = True
        if f.kind == "clog":
            out[a:b, signal_cols] *= f.signal_factor
        if f.kind == "drift":
            gain = np.ones(n)
            gain[a:b] = np.linspace(1.0, f.signal_factor, b - a)
            gain[b:] = f.signal_factor
            cols = [names.index(c) for c in f.channels]
            out[:, cols] *= gain[:, None]
            affected |= np.abs(gain - 1.0) > DRIFT_TRUTH
    out[:, t] = np.cumsum(gaps)
    np.minimum(out[:, signal_cols], ins.SATURATION, out=out[:, signal_cols])
    return out, affected


def random_faults(rng: np.random.Generator, kind: str) -> list[Fault]:
    """One fault of ``kind`` at a random place and size (the benchmark's test set):
    clog 3-10 % of events, factors 0.1-0.35 (rate) and 0.55-0.8 (signal); rate change 10-30 % of
    events, factor 0.3-0.6 or 1.8-3; drift ramp over 10-20 % of events starting at 55-75 % of the
    file (so that the drifted part stays a minority), final gain 0.5-0.75."""
    if kind == "clog":
        length = rng.uniform(0.03, 0.10)
        return [clog(rng.uniform(0.05, 0.95 - length), length, rng.uniform(0.1, 0.35), rng.uniform(0.55, 0.8))]
    if kind == "rate":
        length = rng.uniform(0.10, 0.30)
        factor = rng.uniform(0.3, 0.6) if rng.random() < 0.5 else rng.uniform(1.8, 3.0)
        return [rate_change(rng.uniform(0.05, 0.95 - length), length, factor)]
    if kind == "drift":
        length = rng.uniform(0.10, 0.20)
        return [drift(rng.uniform(0.55, 0.75), length, rng.uniform(0.5, 0.75))]
    raise ValueError(f"fault kind {kind!r}: must be one of {KINDS}")
