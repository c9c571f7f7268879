"""tilpheno: flow cytometry phenotyping and biomarker analysis of TIL infusion products.

The public objects (``tilpheno.gating``; gate one file in five lines)::

    import tilpheno as tp
    strategy = tp.GatingStrategy.from_yaml(tp.default_study().tubes["surface"].strategy)
    sample = tp.Sample.from_fcs("sample_fcs/TIL001_surface_stain.fcs", strategy)
    result = tp.gate_sample(strategy, sample)   # controls=[FMO Samples] for FMO thresholds
    print(result.summary)                       # also .populations, .thresholds, .flags, .plot("CD3+")

* ``Sample``: an FCS file + panel + compensation + transformed dimensions;
* ``GatingStrategy``: from YAML, code (``from_dict``), Gating-ML or a FlowJo workspace;
* ``gate_sample``: the one engine; returns a ``GatingResult`` (masks, counts, thresholds,
  placement diagnostics, flags, ``populations``/``summary`` DataFrames, ``plot()``);
* ``Product`` / ``analyze``: an infusion product = the GatingResults of its files + phenotype + QC;
* ``Study`` / ``load_study`` / ``default_study``: the study's vocabulary in YAML;
* ``read_fcs``, ``process_folder`` (the ``process`` command), ``run_biomarkers``.

The data flow, one module each: read (``tilpheno.io``), map detectors to markers
(``tilpheno.panel``), compensate (``tilpheno.compensation``), transform
(``tilpheno.transforms``), gate (``tilpheno.gates``), measure (``tilpheno.phenotype``),
report (``tilpheno.report``); then cohort, endpoints, cut-points and models
(``tilpheno.biomarkers``). Layers import only downwards (``tests/test_layers.py``).

Heavy libraries are imported lazily so ``import tilpheno`` and the CLI start fast.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "read_fcs": ("tilpheno.io.fcs", "read_fcs"),
    "read_fcs_metadata": ("tilpheno.io.fcs", "read_fcs_metadata"),
    "FCSFile": ("tilpheno.io.fcs", "FCSFile"),
    "FCSReadError": ("tilpheno.errors", "FCSReadError"),
    "Sample": ("tilpheno.gating", "Sample"),
    "GatingStrategy": ("tilpheno.gating", "GatingStrategy"),
    "GatingResult": ("tilpheno.gating", "GatingResult"),
    "gate_sample": ("tilpheno.gating", "gate_sample"),
    "Product": ("tilpheno.gating", "Product"),
    "analyze": ("tilpheno.gating", "analyze"),
    "Study": ("tilpheno.study", "Study"),
    "load_study": ("tilpheno.study", "load_study"),
    "default_study": ("tilpheno.study", "default_study"),
    "process_folder": ("tilpheno.pipeline", "process_folder"),
    "run_biomarkers": ("tilpheno.biomarkers", "run_biomarkers"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'tilpheno' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
