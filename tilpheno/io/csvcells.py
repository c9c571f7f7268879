"""CSV formula neutralisation (OWASP "CSV injection"), applied to every CSV tilpheno writes.

A spreadsheet runs a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return
as a formula (``=cmd|' -c calc'!A1``). Product ids (from file names or ``$SRC``), population
names, outcome ids and covariate values come from outside, so before writing, every text cell and
column name that starts with one of those characters gets a leading single quote, as OWASP
recommends; the CSV writer then quotes it as needed. Exempt: text that is a plain decimal number
(``-1.5``, ``+3e-2``), which no spreadsheet reads as a formula. A text cell that itself starts with
a quote followed by a trigger or another quote gets one more quote, so :func:`restore_cell`
recovers every original value exactly (tilpheno's own readers of its tables use it).
Numeric columns are written as numbers, unchanged. Parquet files keep the raw values.
"""
from __future__ import annotations

import re

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def neutralise_cell(value):
    """``value`` with a leading ``'`` when a spreadsheet would read it as a formula (text only)."""
    if not isinstance(value, str) or not value:
        return value
    first = value[0]
    if first in FORMULA_TRIGGERS:
        return value if _PLAIN_NUMBER.fullmatch(value) else "'" + value
    if first == "'" and len(value) > 1 and (value[1] in FORMULA_TRIGGERS or value[1] == "'"):
        return "'" + value
    return value


def restore_cell(value):
    """Inverse of :func:`neutralise_cell` for a value read back from a tilpheno CSV."""
    if isinstance(value, str) and len(value) > 1 and value[0] == "'" and (
            value[1] in FORMULA_TRIGGERS or value[1] == "'"):
        return value[1:]
    return value


def neutralise_frame(frame):
    """A copy of a DataFrame with every text cell and column name neutralised (numbers unchanged)."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or str(out[column].dtype) in ("string", "str", "category"):
            out[column] = out[column].astype(object).map(neutralise_cell)
    out.columns = [neutralise_cell(c) if isinstance(c, str) else c for c in out.columns]
    return out


def restore_frame(frame):
    """Inverse of :func:`neutralise_frame` on a table read back with text columns as ``str``."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].map(restore_cell)
    out.columns = [restore_cell(c) if isinstance(c, str) else c for c in out.columns]
    return out


def csv_text(frame) -> str:
    """A pandas DataFrame as the CSV text :func:`tilpheno.io.atomic.write_csv` writes (no index,
    ``\\n`` line ends, every text cell and column name neutralised against spreadsheet formulas):
    also for CSV served or hashed rather than written."""
    return neutralise_frame(frame).to_csv(index=False, lineterminator="\n")


def counts_as_integers(frame):
    """``frame`` with each count column (a name starting ``n_``: events, flags, files) whose values
    are all whole numbers as nullable integers (pandas ``Int64``), so that a row with no counts (a
    failed product, one not approved) leaves its cells empty instead of turning every other row's
    ``36948`` into ``36948.0`` in the CSV. Other columns, and a count column holding a fraction,
    unchanged; a copy."""
    import pandas as pd

    out = frame.copy()
    for column in out.columns:
        values = out[column]
        if not str(column).startswith("n_") or not pd.api.types.is_float_dtype(values):
            continue
        known = values.dropna()
        if (known == known.round()).all():
            out[column] = values.astype("Int64")
    return out
