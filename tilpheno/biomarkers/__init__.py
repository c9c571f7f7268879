"""Biomarker analysis: cohort join, endpoints, Kaplan-Meier, cut-points, Cox models, report.

``run_biomarkers`` does everything and writes the files; the building blocks live in
``cohort``, ``endpoints``, ``survival``, ``cutpoints``, ``cox``, ``responders`` and ``report``.
Names are imported lazily so ``import tilpheno.biomarkers`` stays cheap.
"""
from __future__ import annotations

_LAZY = {
    "run_biomarkers": "analysis",
    "BiomarkerResults": "analysis",
    "read_cutpoints": "analysis",
    "build_cohort": "cohort",
    "read_phenotypes": "cohort",
    "KaplanMeier": "survival",
    "logrank_test": "survival",
    "median_followup": "survival",
    "maxstat_logrank": "cutpoints",
    "fit_cox": "cox",
    "cox_zph": "cox",
    "response_rates": "endpoints",
    "responders_table": "responders",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
