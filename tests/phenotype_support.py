"""The digest of a product's gating (``tests/test_phenotype.py``), in a module of its own so that the
fresh process of the thread-count test imports it without the test module (pytest, the simulator)."""
from __future__ import annotations

import hashlib

import numpy as np


def result_digest(result) -> str:
    """SHA-256 (hex) of a ``ProductResult``'s phenotype values (``repr``, sorted by name), each tube's
    population and threshold tables (CSV) and its masks (bit-packed, sorted by population name)."""
    h = hashlib.sha256()
    for k in sorted(result.phenotype):
        h.update(f"{k}={result.phenotype[k]!r};".encode())
    for t in result.tubes:
        h.update(t.populations.to_csv().encode() + t.thresholds.to_csv().encode())
        for name in sorted(t.masks):
            h.update(name.encode() + np.packbits(t.masks[name]).tobytes())
    return h.hexdigest()
