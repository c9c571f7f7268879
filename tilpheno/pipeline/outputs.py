"""Outputs of a process run: product folder names, report paths, QC severity, the cohort tables.

Pure functions of the outcomes (``tilpheno.pipeline.jobs.ProductOutcome``), so every output is
identical across executors and re-runs: ``phenotypes.csv``/``.parquet`` (one row per product),
``populations.csv`` (population x file), ``qc.csv``; ``product_slug`` and ``report_path`` never
leave the output folder.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from tilpheno.errors import TableError
from tilpheno.gates.checks import needs_review
from tilpheno.qc import QCFlag

if TYPE_CHECKING:   # the outcomes' type only; jobs imports this module
    from tilpheno.pipeline.jobs import ProductOutcome


SEVERITY_ORDER = {"info": 0, "warning": 1, "error": 2}


_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


_DOTS = re.compile(r"\.{2,}")


def product_slug(product_id: str) -> str:
    """A file-system-safe folder name for a product id; never escapes its parent folder.

    Characters outside ``[A-Za-z0-9._-]`` and runs of dots become ``_``; leading dots are dropped; when anything
    changed, 8 hex digits of the id's SHA-256 are appended so distinct ids stay distinct.
    ``"../../x" -> "____x-<hash>"``: never ``..``, a separator or an absolute path.
    """
    import hashlib

    text = str(product_id)
    safe = _DOTS.sub("_", _SAFE_CHARS.sub("_", text)).lstrip(".")[:80] or "_"
    if safe != text:
        safe = f"{safe}-{hashlib.sha256(text.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
    return safe


def report_path(out_dir: Path, product_id: str) -> Path:
    """``OUT/products/<slug>/report.html``; raises if the result would not be inside OUT."""
    out_dir = Path(out_dir).resolve()
    path = (out_dir / "products" / product_slug(product_id) / "report.html").resolve()
    if out_dir not in path.parents:
        raise TableError(f"product id {product_id!r}: report path escapes the output folder")
    return path


def worst_severity(flags: Iterable) -> str:
    """``ok`` when there are no flags, else the highest severity (info < warning < error)."""
    worst, rank = "ok", -1
    for f in flags:
        r = SEVERITY_ORDER.get(str(f.severity).lower(), 1)
        if r > rank:
            worst, rank = str(f.severity).lower(), r
    return worst


def _ordered_union(dicts: Iterable[Mapping]) -> list[str]:
    cols: dict[str, None] = {}
    for d in dicts:
        for k in d:
            cols.setdefault(k, None)
    return list(cols)


def _tables(outcomes: Sequence[ProductOutcome], run_flags: Sequence[QCFlag] = ()):
    """phenotypes, populations and qc DataFrames from outcomes sorted by product id (the run's own
    flags first in qc)."""
    import pandas as pd

    phen_cols = _ordered_union(o.phenotype for o in outcomes)
    phenotypes = pd.DataFrame([o.phenotype for o in outcomes], columns=phen_cols)
    pops = [o.populations for o in outcomes if o.populations is not None and len(o.populations)]
    populations = pd.concat(pops, ignore_index=True) if pops else pd.DataFrame(
        columns=["product_id", "file", "tube", "role", "fmo_marker", "population", "parent", "count"])
    qc = pd.DataFrame(
        [{"product_id": f.product_id, "file": Path(str(f.file)).name if f.file else "", "code": f.code,
          "severity": f.severity, "needs_review": needs_review(f), "message": f.message}
         for f in [*run_flags, *(f for o in outcomes for f in o.qc)]],
        columns=["product_id", "file", "code", "severity", "needs_review", "message"],
    )
    return phenotypes, populations, qc


def _populations_long(product_id: str, tubes) -> object:
    import pandas as pd

    frames = []
    for t in tubes:
        pops = t.populations.copy()
        head = {"product_id": product_id, "file": Path(t.file).name, "tube": t.tube, "role": t.role,
                "fmo_marker": t.fmo_marker or ""}
        for i, (k, v) in enumerate(head.items()):
            pops.insert(i, k, v)
        frames.append(pops)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
