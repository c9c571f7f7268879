"""The ``process`` pipeline: gate every product of a folder, report each one, write the cohort tables.

Modules, in the order a run uses them:

* ``run``: :func:`process_folder` (the library form of ``tilpheno process``) and :func:`run_process`;
* ``jobs``: one product's job (:class:`ProductJob` -> :func:`process_product` -> :class:`ProductOutcome`);
* ``executors``: where jobs run (in-process, a process pool, Dask) and outcomes of dead workers;
* ``outputs``: product folders, report paths, QC severity, the cohort tables;
* release criteria are ``tilpheno.release``, provenance (``run.json``) ``tilpheno.provenance``.

Determinism: products are processed in any order but collected and written sorted by product id;
every output except the times in ``run.json`` is a pure function of the inputs and options, so
``--jobs N``, Dask and re-runs give byte-identical files.
"""
from __future__ import annotations

from tilpheno.pipeline.executors import EXECUTORS, crashed_outcome, iter_outcomes, run_isolated
from tilpheno.pipeline.jobs import (
    FILE_ERROR_CODES,
    ProcessOptions,
    ProductJob,
    ProductOutcome,
    StrategySource,
    _analyze,
    _read_metadata,
    failure_reason,
    job_strategies,
    process_product,
    strategy_sources,
    ungated_tube_flags,
)
from tilpheno.pipeline.outputs import SEVERITY_ORDER, product_slug, report_path, worst_severity
from tilpheno.pipeline.run import (
    RunSummary,
    attach_doses,
    group_products,
    load_manifest,
    process_folder,
    run_process,
    unmatched_outcomes,
)

__all__ = [
    "EXECUTORS", "FILE_ERROR_CODES", "SEVERITY_ORDER", "ProcessOptions", "ProductJob", "ProductOutcome", "RunSummary",
    "StrategySource", "attach_doses", "crashed_outcome", "failure_reason", "group_products", "iter_outcomes",
    "job_strategies", "load_manifest", "process_folder", "process_product", "product_slug", "report_path",
    "run_isolated", "run_process", "strategy_sources", "ungated_tube_flags", "unmatched_outcomes", "worst_severity",
    "_analyze", "_read_metadata",
]
