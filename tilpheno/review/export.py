"""Exports that follow each product's approved gate set.

* :func:`approved_tables`: ``phenotypes_approved.csv`` (one row per product: the study variables,
  counts, doses and release recomputed with the approved gates, plus ``review_status``
  (approved | not approved), ``gate_version``, ``gates_sha256``; a product without a valid
  approval has its values left empty and ``release_status`` "not released (not approved)") and
  ``populations_approved.csv`` (every population of each approved product's stained tubes).
* :func:`approved_gatingml`: the approved gates of one tube kind as a Gating-ML 2.0 document
  (``tilpheno.gates.gatingml.export_tube_gatingml``); applying it to the stained FCS file with
  ``apply_gatingml`` gives the same memberships as the review app, but for an event within
  ``tilpheno.transforms.LOGICLE_TOLERANCE`` (1e-6 on the 0..1 scale) of a threshold on a logicle
  axis: the app's table logicle and the exact one of a Gating-ML reader may put it on opposite sides.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd

from tilpheno.gates.geometry import gate_from_dict
from tilpheno.gates.strategy import ROOT
from tilpheno.review.regate import recompute
from tilpheno.review.service import NotFound, ReviewService, VersionConflict

NOT_APPROVED = "not released (not approved)"


def approved_tables(service: ReviewService) -> tuple[pd.DataFrame, pd.DataFrame]:
    phen_rows: list[dict[str, Any]] = []
    pop_frames: list[pd.DataFrame] = []
    approvals = service.approved_versions()   # a product never opened has none: not re-gated for it
    for pid in service.source.product_ids():
        approved = approvals.get(pid)
        if approved is None:
            phen_rows.append({"product_id": pid, "review_status": "not approved", "gate_version": None,
                              "gates_sha256": "", "release_status": NOT_APPROVED})
            continue
        res = recompute(service.source, pid, json.loads(approved.gates_json))
        phen_rows.append({**res.phenotype, "review_status": "approved", "gate_version": approved.version,
                          "gates_sha256": approved.gates_sha256, "release_status": res.release_status})
        for tube, table in res.populations.items():
            stained = service.source.stained(pid)[tube]
            frame = table.copy()
            head: dict[str, Any] = {"product_id": pid, "file": Path(stained.tube.file).name, "tube": tube,
                                    "gate_version": approved.version}
            for i, (k, v) in enumerate(head.items()):
                frame.insert(i, k, v)
            pop_frames.append(frame)
    phenotypes = pd.DataFrame(phen_rows)
    phenotypes["gate_version"] = phenotypes["gate_version"].astype("Int64")   # 3, not 3.0 beside a not-approved row
    first = ["product_id", "review_status", "gate_version", "gates_sha256", "release_status"]
    phenotypes = phenotypes[first + [c for c in phenotypes.columns if c not in first]]
    populations = pd.concat(pop_frames, ignore_index=True) if pop_frames else pd.DataFrame(
        columns=["product_id", "file", "tube", "gate_version", "population", "parent", "count", "pct_of_parent"])
    return phenotypes, populations


def tube_gates(service: ReviewService, product_id: str, tube: str, gate_set: dict) -> list[tuple]:
    """``(population, parent, gate, method)`` in gating order for one tube kind of a gate set."""
    st = service.source.stained(product_id).get(tube)
    if st is None or tube not in gate_set["tubes"]:
        raise NotFound(f"product {product_id} has no stained {str(tube)[:40]!r} tube")
    gates = gate_set["tubes"][tube]["gates"]
    out: list[tuple[str, str, Any, str]] = []
    for pop in st.strategy.populations:
        if pop.method == "boolean":
            out.append((pop.name, pop.parent, pop.boolean, "boolean"))
        elif pop.name in gates:
            out.append((pop.name, pop.parent if pop.parent != ROOT else "root", gate_from_dict(gates[pop.name]), pop.method))
    return out


def approved_gatingml(service: ReviewService, product_id: str, tube: str, *, version: int | None = None) -> str:
    """Gating-ML 2.0 text of a tube kind's approved gates (or of ``version``)."""
    from tilpheno.gates.gatingml import export_tube_gatingml

    if version is None:
        approved = service.approved_version(product_id)
        if approved is None:
            raise VersionConflict(f"product {product_id} has no valid 'approved for release' signature: no approved gates to export")
    else:
        approved = service.version(product_id, version)
    gates = tube_gates(service, product_id, tube, json.loads(approved.gates_json))   # NotFound for an unknown tube
    st = service.source.stained(product_id)[tube]
    result = SimpleNamespace(gates=gates, detectors=st.tube.detectors)
    transforms = {d: st.strategy.transform_for(d) for d in st.tube.data}
    # the run's override or control-estimated matrix is written into the file; else the FCS's own
    matrix = service.source.spillover(product_id)
    compensation = matrix if matrix is not None else ("FCS" if st.tube.compensated else "uncompensated")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gates.xml"
        export_tube_gatingml(result, path, transforms, compensation=compensation)
        return path.read_text(encoding="utf-8")

