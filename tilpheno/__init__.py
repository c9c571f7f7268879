"""tilpheno: flow cytometry phenotyping and biomarker analysis of TIL infusion products.

The data flow, one module each: read (``tilpheno.io``), map detectors to markers
(``tilpheno.panel``), compensate (``tilpheno.compensation``), transform
(``tilpheno.transforms``), gate (``tilpheno.gates``), measure (``tilpheno.phenotype``),
report (``tilpheno.report``); then cohort, endpoints, cut-points and models
(``tilpheno.biomarkers``).

Heavy libraries are imported lazily so ``import tilpheno`` and the CLI start fast.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "read_fcs": ("tilpheno.io.fcs", "read_fcs"),
    "read_fcs_metadata": ("tilpheno.io.fcs", "read_fcs_metadata"),
    "FCSFile": ("tilpheno.io.fcs", "FCSFile"),
    "FCSReadError": ("tilpheno.errors", "FCSReadError"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'tilpheno' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
