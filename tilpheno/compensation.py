"""Compensation: spillover matrices from FCS keywords or CSV files, and their application.

Convention (as FlowJo, FlowKit and flowutils): the spillover matrix ``S`` has one row per
*fluorochrome* and one column per *detector*, ``S[i, j]`` = fraction of fluorochrome ``i``'s
signal seen in detector ``j`` (diagonal 1). Observed detector values are ``raw = true @ S``, so
compensated values are ``raw @ inv(S)``. Only the detectors named in the matrix are changed;
scatter and time channels pass through.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tilpheno.errors import CompensationError


@dataclass(frozen=True)
class Spillover:
    """A square spillover matrix and the detector names ($PnN) its rows and columns refer to."""

    detectors: tuple[str, ...]
    matrix: np.ndarray
    source: str = ""  # where it came from: "keyword $SPILLOVER", a CSV path, ...

    def __post_init__(self):
        m = np.asarray(self.matrix, dtype=np.float64)
        n = len(self.detectors)
        if m.shape != (n, n):
            raise CompensationError(
                f"{self.source or 'spillover'}: matrix is {m.shape[0]}x{m.shape[1] if m.ndim > 1 else 1}"
                f" but names {n} detectors"
            )
        if not np.all(np.isfinite(m)):
            raise CompensationError(f"{self.source or 'spillover'}: matrix has non-finite values")
        if len(set(self.detectors)) != n:
            raise CompensationError(f"{self.source or 'spillover'}: duplicate detector names {list(self.detectors)}")
        object.__setattr__(self, "matrix", m)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.matrix, index=list(self.detectors), columns=list(self.detectors))


def parse_spill_keyword(value: str, source: str = "$SPILLOVER") -> Spillover:
    """Parse the FCS $SPILLOVER / $SPILL / SPILL keyword value: ``n,det1,...,detn,v11,v12,...``."""
    parts = [p.strip() for p in value.strip().split(",")]
    try:
        n = int(float(parts[0]))
    except (ValueError, IndexError):
        raise CompensationError(f"{source}: first field must be the number of detectors, got {parts[:1]}") from None
    if n < 1 or len(parts) != 1 + n + n * n:
        raise CompensationError(f"{source}: expected {1 + n + n * n} comma-separated fields for n={n}, got {len(parts)}")
    names = tuple(parts[1 : n + 1])
    try:
        values = np.array([float(v) for v in parts[n + 1 :]], dtype=np.float64).reshape(n, n)
    except ValueError as exc:
        raise CompensationError(f"{source}: non-numeric matrix value ({exc})") from None
    return Spillover(names, values, source)


def read_spillover_csv(path: str | Path) -> Spillover:
    """Read a spillover matrix CSV in the FlowJo/FlowKit layout.

    The first row holds detector names; the following rows hold the matrix. An optional first
    column of row names (repeating the detector names) is accepted.
    """
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path, header=0)
    except Exception as exc:  # pandas raises many types for unreadable CSV
        raise CompensationError(f"{path}: cannot read spillover CSV ({exc})") from None
    first = frame.columns[0]
    if frame[first].dtype == object:
        frame = frame.set_index(first)
    names = tuple(str(c).strip() for c in frame.columns)
    try:
        matrix = frame.to_numpy(dtype=np.float64)
    except ValueError as exc:
        raise CompensationError(f"{path}: non-numeric value in spillover matrix ({exc})") from None
    return Spillover(names, matrix, str(path))


def compensate(events: np.ndarray, channel_names: Sequence[str], spillover: Spillover) -> np.ndarray:
    """Return a compensated copy of ``events`` (n_events x n_channels, columns named by ``channel_names``).

    Raises ``CompensationError`` naming the missing detector when the matrix refers to a channel
    the file does not have.
    """
    index = {name: i for i, name in enumerate(channel_names)}
    missing = [d for d in spillover.detectors if d not in index]
    if missing:
        raise CompensationError(
            f"{spillover.source or 'spillover'}: detector(s) {missing} not among the file's channels {list(channel_names)}"
        )
    cols = [index[d] for d in spillover.detectors]
    try:
        inverse = np.linalg.inv(spillover.matrix)
    except np.linalg.LinAlgError:
        raise CompensationError(f"{spillover.source or 'spillover'}: matrix is singular") from None
    out = np.array(events, dtype=np.float64, copy=True)
    # A fixed-order sum of column products instead of a BLAS matrix product: the result is the
    # same bit for bit on every CPU and thread count (BLAS kernels may reassociate), and for the
    # few detectors of a panel it is as fast.
    source = [np.asarray(events[:, c], dtype=np.float64) for c in cols]
    for j, c in enumerate(cols):
        acc = source[0] * inverse[0, j]
        for i in range(1, len(cols)):
            acc += source[i] * inverse[i, j]
        out[:, c] = acc
    return out
