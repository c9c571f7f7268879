"""QC flags: one record per finding, raised by gating (``tilpheno.phenotype``) or by the pipeline."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QCFlag:
    """A QC finding: ``severity`` info | warning | error; ``file`` is the file name ('' = product)."""

    product_id: str
    file: str
    code: str
    severity: str
    message: str
