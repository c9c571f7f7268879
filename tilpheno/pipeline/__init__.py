"""The ``process`` job: gate every product of a manifest, report each one, write the cohort tables.

One *job* per infusion product (all its tubes). Modules, one job each (layers point one way, in
this order):

* :mod:`~tilpheno.pipeline.jobs`: ``ProcessOptions``, ``ProductJob``, ``ProductOutcome`` and the
  outcome's JSON form;
* :mod:`~tilpheno.pipeline.inputs`: the manifest, doses joined from an outcomes table, products;
* :mod:`~tilpheno.pipeline.release`: a product's release decision;
* :mod:`~tilpheno.pipeline.product`: one product end to end (read, gate, release, report), never
  raising for bad input;
* :mod:`~tilpheno.pipeline.executors`: in-process, one process per product, Dask;
* :mod:`~tilpheno.pipeline.record`: ``run.json`` (parameters, completion, ``rerun_arguments``);
* :mod:`~tilpheno.pipeline.outputs`: cache re-use, staging, cohort tables, report publication;
* :mod:`~tilpheno.pipeline.run`: ``process_folder`` and ``run_process``.

Determinism: products are processed in any order but collected and written sorted by product id;
every output except the times in ``run.json`` is a pure function of the inputs and options, so
``--jobs N``, Dask and re-runs give byte-identical files.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tilpheno.pipeline.executors import EXECUTORS, iter_outcomes
    from tilpheno.pipeline.inputs import attach_doses, group_products, load_manifest, unmatched_outcomes
    from tilpheno.pipeline.jobs import (ProcessOptions, ProductJob, ProductOutcome, StrategySource, job_strategies,
                                        outcome_from_record, outcome_record, product_slug, strategy_sources)
    from tilpheno.pipeline.outputs import REPORT_MODES, report_path
    from tilpheno.pipeline.product import (FILE_ERROR_CODES, crashed_outcome, failure_reason, process_product,
                                           ungated_tube_flags, worst_severity)
    from tilpheno.pipeline.record import rerun_arguments
    from tilpheno.pipeline.release import release_decision
    from tilpheno.pipeline.run import RunSummary, draw_report, process_folder, run_process

_HOME = {
    "executors": ("EXECUTORS", "iter_outcomes"),
    "inputs": ("attach_doses", "group_products", "load_manifest", "unmatched_outcomes"),
    "jobs": ("ProcessOptions", "ProductJob", "ProductOutcome", "StrategySource", "job_strategies",
             "outcome_from_record", "outcome_record", "product_slug", "strategy_sources"),
    "outputs": ("REPORT_MODES", "report_path"),
    "product": ("FILE_ERROR_CODES", "crashed_outcome", "failure_reason", "process_product", "ungated_tube_flags",
                "worst_severity"),
    "record": ("rerun_arguments",),
    "release": ("release_decision",),
    "run": ("RunSummary", "draw_report", "process_folder", "run_process"),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    """The public names, each imported from its module on first use (PEP 562): importing
    ``tilpheno.pipeline.run`` or ``.pool`` does not import the gating and report libraries (numpy's,
    pandas' and scipy's second of start-up), so ``process --jobs N`` starts its fork server first
    and the dispatching process never imports what only the workers use."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'tilpheno.pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tilpheno.pipeline.{module}"), name)
    globals()[name] = value
    return value
