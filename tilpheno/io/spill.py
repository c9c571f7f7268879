"""Spillover matrices as read from FCS keywords ($SPILLOVER / $SPILL / SPILL) or CSV files.

The read stage's part of compensation (``tilpheno.compensation`` applies the matrices and
re-exports these names). Convention (as FlowJo, FlowKit and flowutils): ``S`` has one row per
*fluorochrome* and one column per *detector*, ``S[i, j]`` = fraction of fluorochrome ``i``'s
signal seen in detector ``j`` (diagonal 1).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from tilpheno.errors import CompensationError
from tilpheno.io.files import column_separator, path_problem

COMPENSATED_PREFIXES = ("FJComp-", "Comp-")
"""Name prefixes of compensated parameters in exported files: FlowJo 10 exports the compensated
values of detector ``355 379_28-A`` as a parameter ``FJComp-355 379_28-A``, FlowJo 9 as
``Comp-355 379_28-A``; such an export normally carries no ``$SPILLOVER`` (its values need none)."""


def exported_compensated(detectors: Iterable[str]) -> bool:
    """True when every detector name in ``detectors`` (at least one) is a compensated export
    parameter (:data:`COMPENSATED_PREFIXES`): the file holds data compensated by the software that
    exported it, to be used as it is, not compensated again."""
    names = list(detectors)
    return bool(names) and all(str(n).startswith(COMPENSATED_PREFIXES) for n in names)


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

    The first row holds detector names; the following rows hold the matrix, one row per
    fluorochrome in the header's order. An optional first column of row names is accepted: when
    they are the header's detector names, rows are put in the header's order by name (a file
    whose rows were sorted apart from its columns stays right); when none is a header name (e.g.
    fluorochromes: ``FITC`` for ``FITC-A``) the rows are taken in the file's order. Row names that
    are partly header names (a row name that is not one, or a header name without a row) are an
    error naming the row. Separators as the outcomes table's: tab- or semicolon-separated text
    when the first line has tabs or semicolons and no comma (semicolons with commas below: the
    comma is the decimal mark, as European Excel writes). Values in percent (every diagonal value
    100, as FlowJo's and FACSDiva's matrix editors show them) are an error: the matrix holds
    fractions. The matrix's ``source`` is the file's absolute path (against the working directory,
    ``..`` folded, links kept: as ``process`` records ``--compensation``), so that what records it
    (a tube's ``CompensationUsed``, ``Sample.spillover``) names the file wherever it is read.
    """
    import pandas as pd

    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as handle:
            first_line, rest = handle.readline(), handle.read()
        sep = column_separator(first_line)
        frame = pd.read_csv(path, header=0, sep=sep, decimal="," if sep == ";" and "," in rest else ".")
    except FileNotFoundError:
        raise CompensationError(path_problem(path)) from None
    except Exception as exc:  # pandas raises many types for unreadable CSV
        raise CompensationError(f"{path}: cannot read spillover CSV ({exc})") from None
    first = frame.columns[0]
    if frame[first].dtype == object:
        frame = frame.set_index(first)
        rows = [str(r).strip() for r in frame.index]
        header = [str(c).strip() for c in frame.columns]
        if sorted(rows) == sorted(header):
            frame = frame.iloc[[rows.index(c) for c in header]]
        elif set(rows) & set(header):
            extra = [(i, r) for i, r in enumerate(rows, start=1) if r not in header]
            lacking = [c for c in header if c not in rows]
            raise CompensationError(
                f"{path}: row {extra[0][0]} (line {extra[0][0] + 1}) is named {extra[0][1]!r}, not a detector of the "
                f"header {header}" if extra else f"{path}: no row named {lacking[0]!r} (a detector of the header)"
                if lacking else f"{path}: a row name is repeated ({rows})")
    names = tuple(str(c).strip() for c in frame.columns)
    if not names or frame.empty:   # one line of text (or a binary file read as one): no matrix, not an empty one
        raise CompensationError(f"{path}: no spillover matrix in the file (a header of detector names, then one row "
                                "of values per detector)")
    try:
        matrix = frame.to_numpy(dtype=np.float64)
    except ValueError as exc:
        raise CompensationError(f"{path}: non-numeric value in spillover matrix ({exc})") from None
    diagonal = np.diag(matrix) if matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1] else np.empty(0)
    if diagonal.size and np.allclose(diagonal, 100.0):
        raise CompensationError(f"{path}: the diagonal is 100, not 1: values in percent? A spillover matrix holds "
                                "fractions (divide every value by 100)")
    return Spillover(names, matrix, os.path.abspath(path))
