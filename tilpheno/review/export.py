"""Exports that follow each product's approved gate set.

* :func:`approved_tables`: ``phenotypes_approved.csv`` (one row per product: the study variables,
  counts, doses and release recomputed with the approved gates, plus ``review_status``
  (approved | not approved), ``gate_version``, ``gates_sha256``, ``deviations`` (each release
  criterion the run failed on no flagged gate that the approved gates pass, with the ``seq`` of the
  audit entry holding its justification: ``CD3+ T cells: deviation audit entry 7``, ``; ``
  between two; ``...: no deviation justification recorded`` for an approval signed without one;
  empty when the release overturns none), ``out_of_specification`` (an approval of gates whose
  ``release_status`` is fail: ``out-of-specification release of version <n>: fails <criteria with
  rule and value>; justification '...' by <name> (<user>) at <UTC>``; empty otherwise); a product
  without a valid approval has its values left
  empty and ``release_status`` "not released (not approved)", or, when its approval or rejection
  is void, "not released (not approved: approval for release of version 1 void: re-run after
  signing: needs review (...))", :func:`tilpheno.review.service.voided`) and
  ``populations_approved.csv`` (every population of each approved product's stained tubes).
* :func:`approved_export`: everything ``export-approved`` writes, each product's files made from
  the one approval its table row was computed with (refused when it changed during the export).
* :func:`write_approved_export`: writes it into a folder: all files, or none, and the
  certificates audited only when every file was written.
* :func:`approved_gatingml`: the approved gates of one tube kind as a Gating-ML 2.0 document
  (``tilpheno.gates.gatingml.export_tube_gatingml``); applying it to the stained FCS file with
  ``apply_gatingml`` gives the same memberships as the review app (thresholds written on the
  linear scale, see ``export_tube_gatingml``), but for an event within
  ``tilpheno.transforms.LOGICLE_TOLERANCE`` (1e-6 on the 0..1 scale) of a polygon's or ellipse's
  edge on a logicle axis: the app's table logicle and the exact one of a reader may put it on opposite sides.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd

from tilpheno.gates.geometry import gate_from_dict
from tilpheno.gates.strategy import ROOT
from tilpheno.review.regate import recompute
from tilpheno.io import atomic
from tilpheno.io import csvcells
from tilpheno.io.csvcells import counts_as_integers
from tilpheno.review.db import ReviewError
from tilpheno.review.service import (APPROVED, Approval, Decision, ListedDecisions, NotFound, ReviewService,
                                     VersionConflict, oos_of)

NOT_APPROVED = "not released (not approved)"
FAILED_PROCESSING = "not released (failed processing)"
log = logging.getLogger(__name__)


def approved_tables(service: ReviewService,
                    listed: ListedDecisions | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two approved tables, from ``listed`` (:meth:`ReviewService.export_decisions`, read now when
    not given): each approved row from its product's standing decision, whose approval's
    justification the ``out_of_specification`` cell quotes; a product whose approval or rejection
    is void says so in its ``release_status``."""
    phen_rows: list[dict[str, Any]] = []
    pop_frames: list[pd.DataFrame] = []
    if listed is None:
        listed = service.export_decisions()   # a product never opened has none: not re-gated for it
    for pid in service.source.product_ids():
        decision = listed.decisions.get(pid)
        if decision is None or decision.meaning != APPROVED:
            voided = listed.voided.get(pid)
            phen_rows.append({"product_id": pid, "review_status": "not approved", "gate_version": None,
                              "gates_sha256": "", "deviations": "", "out_of_specification": "", "unbound": "",
                              "release_status": f"not released (not approved: {voided})" if voided else NOT_APPROVED})
            continue
        approved = decision.version
        res = recompute(service.source, pid, json.loads(approved.gates_json))
        phen_rows.append({**res.phenotype, "review_status": "approved", "gate_version": approved.version,
                          "gates_sha256": approved.gates_sha256, "release_status": res.release_status,
                          "deviations": "; ".join(d.cell() for d in service.deviations(pid, approved, res.release)),
                          # an approval of gates that fail: the standing decision's signature (as the product list)
                          "out_of_specification": oos.words() if (oos := oos_of(decision.signature, res.release))
                          else "",
                          # what the approval, signed in an older form, does not bind (the page's words beside VALID)
                          "unbound": listed.unbound.get(pid, "")})
        for tube, table in res.populations.items():
            stained = service.source.stained(pid)[tube]
            frame = table.copy()
            head: dict[str, Any] = {"product_id": pid, "file": stained.name, "tube": tube,
                                    "gate_version": approved.version}
            for i, (k, v) in enumerate(head.items()):
                frame.insert(i, k, v)
            pop_frames.append(frame)
    phen_rows += [{"product_id": pid, "review_status": "failed processing", "gate_version": None, "gates_sha256": "",
                   "release_status": FAILED_PROCESSING} for pid in service.source.failed_products()]
    phen_rows.sort(key=lambda row: row["product_id"])
    phenotypes = pd.DataFrame(phen_rows)
    phenotypes["gate_version"] = phenotypes["gate_version"].astype("Int64")   # 3, not 3.0 beside a not-approved row
    phenotypes = counts_as_integers(phenotypes)   # 36948 events, not 36948.0, likewise
    first = ["product_id", "review_status", "gate_version", "gates_sha256", "release_status", "deviations",
             "out_of_specification", "unbound"]
    phenotypes = phenotypes[first + [c for c in phenotypes.columns if c not in first]]
    populations = pd.concat(pop_frames, ignore_index=True) if pop_frames else pd.DataFrame(
        columns=["product_id", "file", "tube", "gate_version", "population", "parent", "count", "pct_of_parent"])
    return phenotypes, populations


@dataclass(frozen=True)
class ApprovedExport:
    """What ``export-approved`` writes: the two tables (:func:`approved_tables`), and per approved
    product its Gating-ML per tube kind and certificate (``files``: path relative to the export
    folder -> content), made from ``approvals`` (per product: the approval of the table's version)."""
    phenotypes: pd.DataFrame
    populations: pd.DataFrame
    files: dict[str, bytes]
    approvals: dict[str, Approval]
    rerun: frozenset[str] = frozenset()
    """The run's products whose approval or rejection a new run voided (:attr:`ListedDecisions.rerun`; their
    ``release_status`` says why)."""

    def tables(self) -> dict[str, tuple[str, int]]:
        """The two tables' files: name -> the CSV text written (``csvcells.csv_text``) and its rows."""
        return {name: (csvcells.csv_text(frame), len(frame)) for name, frame in
                (("phenotypes_approved.csv", self.phenotypes), ("populations_approved.csv", self.populations))}


def approved_export(service: ReviewService) -> ApprovedExport:
    """Everything ``export-approved`` writes, in memory (nothing is written if a product fails).
    VersionConflict naming the product when its standing approval is no longer the one its table
    row was computed with (a save, a rejection or another approval during the export): a table of
    one version, or quoting one approval's justification, beside the Gating-ML and certificate of
    another."""
    from tilpheno.pipeline import product_slug
    from tilpheno.review.certificate import certificate_pdf

    listed = service.export_decisions()
    phenotypes, populations = approved_tables(service, listed)
    files: dict[str, bytes] = {}
    approvals: dict[str, Approval] = {}
    for pid, decision in sorted(listed.decisions.items()):   # the table's approved rows
        if decision is None or decision.meaning != APPROVED:
            continue
        issued = _still_approved(service, pid, decision)
        folder = product_slug(pid)
        for tube in sorted(service.source.stained(pid)):
            files[f"{folder}/gates_{tube}.xml"] = approved_gatingml(service, pid, tube,
                                                                   version=issued.version.version).encode("utf-8")
        files[f"{folder}/certificate.pdf"] = certificate_pdf(service, pid, issued)
        approvals[pid] = issued
    return ApprovedExport(phenotypes, populations, files, approvals,
                          frozenset(listed.rerun & set(service.source.product_ids())))


class ExportNotDelivered(ReviewError):
    """The export's certificates were audited, then moving its files into place failed (audited too)."""


def write_approved_export(service: ReviewService, export: ApprovedExport, dest: Path, username: str) -> list[str]:
    """Write ``export`` into ``dest``, all at once: every file is first written into a new hidden
    folder beside it (:func:`_stage`), with the other files of an existing ``dest`` linked in
    (:func:`_keep_others`; an OSError there removes it: nothing written, nothing audited) but for
    the files a previous export wrote for a product of the run that this one does not write (its
    certificate and Gating-ML: a product whose approval is void since, :func:`_exported_for`), then the
    certificates and the two tables (``export_table``: the SHA-256 of the bytes written) are audited
    (:meth:`ReviewService.record_certificates`: refused, nothing written, when an approval changed
    meanwhile), then that folder takes ``dest``'s place (:func:`_publish`).
    A ``dest`` that is a symbolic link stays one: its target's folder is what is replaced
    (:func:`_real_folder`), the staging folder made beside it.
    Should that last move fail (OSError, rare: the same file system), ``dest`` is as it was, an
    ``export_failed`` entry records it and :class:`ExportNotDelivered` says so (and, in the same
    line, when the database could not record it either). Returns the previous export's files left
    out (paths relative to ``dest``)."""
    from tilpheno.pipeline import product_slug

    place, tables = _real_folder(dest), export.tables()
    folders = {product_slug(pid) for pid in [*service.source.product_ids(), *service.source.failed_products()]}
    staged = _stage(export, tables, place)
    try:
        _check_publishable(staged, dest)
        left_out = _keep_others(staged, place, folders)
        service.record_certificates(username, export.approvals, tables)
        try:
            _publish(staged, place)
        except OSError as exc:
            raise ExportNotDelivered(f"{dest}: the certificates were audited, then moving the export into place failed "
                                     f"({exc}); {_record_failure(service, username, export, dest, exc)}: "
                                     "run export-approved again") from exc
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    return left_out


def _record_failure(service: ReviewService, username: str, export: ApprovedExport, dest: Path, exc: OSError) -> str:
    """Audit ``export_failed``; what the trail now says, in words (the database's error when it
    could not be recorded: the trail then shows the certificates issued, not that they were not
    delivered)."""
    try:
        service.record_export_failure(username, export.approvals, str(dest), str(exc))
    except Exception as problem:   # the database down: said with the failed move, not instead of it
        log.debug("export_failed of %s not recorded", dest, exc_info=True)   # said in the error line
        first = str(problem).splitlines()[0] if str(problem) else ""
        return (f"recording this in the audit trail failed too ({type(problem).__name__}: {first}), so the trail shows "
                "the certificates issued")
    return "this is audited (export_failed)"


def _real_folder(dest: Path) -> Path:
    """The folder an export into ``dest`` replaces: ``dest``, or where it leads when it is a
    symbolic link (links followed to the end; the target need not exist yet), so that the link
    stays and shows the new export."""
    return Path(os.path.realpath(dest)) if dest.is_symlink() else dest


def _stage(export: ApprovedExport, tables: dict[str, tuple[str, int]], dest: Path) -> Path:
    """Every file of ``export`` (its ``tables``: :meth:`ApprovedExport.tables`) written into a new
    hidden folder beside ``dest`` (``.NAME.partial-XXXX``, the same file system); removed again if a
    write fails (re-raised)."""
    atomic.make_folder(dest.parent)
    staged = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        for name, (text, _rows) in tables.items():
            atomic.write_text(staged / name, text)   # UTF-8: the bytes whose SHA-256 the audit records
        for name, content in export.files.items():
            atomic.write_bytes(staged / name, content)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def _staged_files(staged: Path) -> list[Path]:
    return sorted(p.relative_to(staged) for p in staged.rglob("*") if p.is_file())


def _check_publishable(staged: Path, dest: Path) -> None:
    """NotADirectoryError / IsADirectoryError naming the path when ``dest`` or a folder in it is a
    file, or a file to write is a folder there: found before anything is audited."""
    for path in [Path("."), *{p.parent for p in _staged_files(staged)}]:
        if (dest / path).exists() and not (dest / path).is_dir():
            raise NotADirectoryError(f"{dest / path}: not a folder")
    for path in _staged_files(staged):
        if (dest / path).is_dir():
            raise IsADirectoryError(f"{dest / path}: a folder where the export writes a file")


def _exported_for(path: Path, folders: set[str]) -> bool:
    """Whether ``path`` (relative to the export folder) is a file an export writes for a product
    whose folder is one of ``folders``: ``<product>/certificate.pdf`` or ``<product>/gates_<tube>.xml``."""
    return (len(path.parts) == 2 and path.parts[0] in folders
            and (path.name == "certificate.pdf" or (path.name.startswith("gates_") and path.name.endswith(".xml"))))


def _keep_others(staged: Path, dest: Path, folders: set[str]) -> list[str]:
    """The files of an existing ``dest`` that the export does not replace, hard-linked (else
    copied; symbolic links as links) into ``staged`` at the same places, and ``dest``'s folders'
    permissions: ``staged`` is then what ``dest`` becomes. A previous export's certificate or
    Gating-ML of a product of the run (``folders``: :func:`_exported_for`) that this export does
    not write is left out, never shown beside a table that no longer approves it: returned
    (relative paths, sorted)."""
    if not dest.exists():
        return []
    replaced = {str(p) for p in _staged_files(staged)}
    left_out: list[str] = []

    def ignore(folder: str, names: list[str]) -> set[str]:
        here = Path(folder).relative_to(dest)
        stale = {n for n in names if str(here / n) not in replaced and _exported_for(here / n, folders)
                 and not (Path(folder) / n).is_dir()}
        left_out.extend(str(here / n) for n in stale)
        return {n for n in names if str(here / n) in replaced} | stale

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(dest, staged, symlinks=True, ignore=ignore, copy_function=link_or_copy, dirs_exist_ok=True)
    return sorted(left_out)


def _publish(staged: Path, dest: Path) -> None:
    """``staged`` becomes ``dest`` in one rename. An existing ``dest`` is swapped with it in one step
    where the system offers it (:func:`tilpheno.io.atomic.exchange`: a reader of ``dest`` sees the
    previous export or the new one, never no folder), then the previous one is removed; elsewhere
    it is first renamed away beside it (``.NAME.old-XXXX``: absent for an instant between the two
    renames), then removed; should the second rename fail, it is put back (the OSError, naming
    where the previous folder is kept if that fails too)."""
    if not dest.exists():
        os.chmod(staged, atomic.default_mode(directory=True))   # mkdtemp makes 0700; an output folder is ordinary
        os.rename(staged, dest)
        return
    if atomic.exchange(staged, dest):
        shutil.rmtree(staged, onerror=lambda _f, path, err: log.warning("%s: not removed: %s", path, err[1]))
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.rename(dest, backup)   # onto the empty folder just made: a name no one else takes
    try:
        os.rename(staged, dest)
    except OSError as exc:
        try:
            os.rename(backup, dest)
        except OSError as put_back:
            raise OSError(exc.errno, f"{exc.strerror or exc}; the previous {dest.name} is kept as {backup} "
                                     f"(putting it back failed: {put_back.strerror or put_back})") from exc
        raise
    shutil.rmtree(backup, onerror=lambda _f, path, err: log.warning("%s: not removed: %s", path, err[1]))


def _still_approved(service: ReviewService, product_id: str, decision: Decision) -> Approval:
    """The product's standing approval, which must still be ``decision``'s (the table row's)."""
    try:
        issued = service.release_approval(product_id)
    except VersionConflict:
        issued = None
    if issued is None or issued.approval.id != decision.signature.id:
        then = f"version {decision.version.version} approved by {decision.signature.full_name}"
        now = ("no approval" if issued is None
               else f"version {issued.version.version} approved by {issued.approval.full_name} at "
                    f"{issued.approval.signed_at[:19].replace('T', ' ')} UTC")
        raise VersionConflict(f"{service.noun} {product_id}: its approval changed during the export ({then} when its "
                              f"table row was computed, now {now}); nothing was written: run export-approved again")
    return issued


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


def approved_gatingml(service: ReviewService, product_id: str, tube: str, *, version: int) -> str:
    """Gating-ML 2.0 text of a tube kind's gates of ``version`` (its approved one: the caller's
    approval, which the download's or export's audit entry finds still standing)."""
    from tilpheno.gates.gatingml import export_tube_gatingml

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

