"""Re-gate a processed product with a reviewed gate set (the science behind the review app).

A processed output folder OUT (``tilpheno process``) names its inputs, strategies and release
spec in ``run.json``. For one product:

* **Automatic gate set (version 1)**: :meth:`ReviewSource.automatic` re-runs
  ``tilpheno.phenotype.analyze_product`` on the product's files (paths from ``run.json``'s
  ``product_files``, SHA-256 from its ``inputs``, tube/role/FMO marker from ``populations.csv``)
  with the run's study (its variables, doses, vocabulary; ``parameters.study`` of run.json, SHA-256 checked), panel override,
  strategies and FMO percentile, and keeps every geometric gate of each tube kind's stained tube (the tube the study
  variables come from; FMO thresholds are the FMO-derived gates applied to it). The re-run must
  reproduce ``phenotypes.csv`` (study variables within ``REPRODUCE_TOLERANCE`` percentage points)
  or the product is refused: the inputs or the software changed since the run.
* **Any gate set**: :func:`evaluate` walks the strategy's population tree over *every* event of
  the stained tube, each population = its gate AND its parent (boolean populations from their
  expressions, as in the strategy). Counts, % of parent, % of live lymphocytes and medians
  follow ``tilpheno.phenotype.population_table``; the study variables ``tube_variables``; doses
  ``doses`` with the infused cell number recovered from the run (the study's first dose on the
  infused cells: TIL study ``cd3_dose_cells / cd3_pct_of_live_lymph * 100``); release ``tilpheno.release.evaluate`` with the run's spec.

A gate set is JSON: ``{"tubes": {tube kind: {"file": stained file name, "sha256": its digest,
"gates": {population: gate.to_dict()}}}}``. A reviewed gate must keep the automatic gate's type,
dimensions and open bounds; coordinates must be finite numbers inside ``coordinate_bounds``
(logicle dims -0.5..1.5 on Gating-ML's 0-1 scale, other dims the transform of -PnR..2 PnR: linear
in raw units, arcsinh asinh(-PnR / cofactor)..asinh(2 PnR / cofactor)), polygons 3-200
vertices, ellipses a positive-definite covariance and 0 < distance_square <= 100.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from tilpheno.cache import FileIdentity
from tilpheno.errors import GatingError, TilphenoError
from tilpheno.gates.checks import UNSTAINED_LIMIT
from tilpheno.gates.geometry import PolygonGate, RangeGate, gate_from_dict
from tilpheno.gates.strategy import ROOT, Strategy, default_strategy_paths, load_strategy
from tilpheno.phenotype import TubeData, doses, population_table, resting_on, tube_variables, undetermined_gates
from tilpheno.pipeline.release import absent_in, not_applicable, undetermined_criteria
from tilpheno.study import Study
from tilpheno.release import (DEFAULT_SPEC, FAIL, CriterionResult, evaluate as evaluate_release, load_spec_source,
                              overall, spec_path)
from tilpheno.review.db import ReviewError
from tilpheno.transforms import Logicle

log = logging.getLogger(__name__)
REPRODUCE_TOLERANCE = 1e-6   # percentage points between phenotypes.csv and the re-run
MAX_VERTICES = 200
MAX_DISTANCE_SQUARE = 100.0
CACHE_PRODUCTS = 6
CACHE_REPORTS = 8
"""Reports drawn on demand (:meth:`ReviewSource.report_html`) kept in memory, the newest (about 0.4 MB each)."""


class GateSetError(ReviewError):
    """A submitted gate set is malformed or out of range (the message names tube, population, field)."""


def gates_sha256(gate_set: Mapping) -> str:
    text = json.dumps(gate_set, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class StainedTube:
    """A stained tube loaded for review: every event, compensated and transformed."""

    tube: TubeData
    strategy: Strategy
    bounds: dict[str, tuple[float, float]]   # dimension -> allowed gate coordinates
    tops: dict[str, float]                   # dimension -> the top of its raw scale ($PnR)
    name: str                                # the file as populations.csv and the flags name it (ProductFile.name)


@dataclass
class ProductFile:
    path: Path
    name: str
    sha256: str
    tube: str
    role: str
    fmo_marker: str


def inputs_by_name(inputs: list[dict]) -> dict[str, list[dict]]:
    """run.json's ``inputs`` by file name (several where files of one name sit in several folders)."""
    out: dict[str, list[dict]] = {}
    for entry in inputs:
        out.setdefault(Path(str(entry["path"])).name, []).append(entry)
    return out


def product_inputs(labels: list[str], recorded: Mapping[str, str], inputs: Mapping[str, dict],
                   run_json: Path) -> dict[str, dict]:
    """Each of one product's file ``labels`` (populations.csv's ``file``) -> its entry of run.json's
    ``inputs`` (``inputs``: by path) whose path is the one the run recorded for it (``recorded``:
    the product's ``product_files``, label -> path). ReviewError naming the label when the record
    lacks it or ``inputs`` lists no such path."""
    out = {}
    for label in labels:
        path = recorded.get(label)
        entry = inputs.get(path) if path is not None else None
        if entry is None:
            raise ReviewError(f"{label}: not among the product's files recorded in {run_json} "
                              f"({'product_files' if path is None else 'inputs'}) (edited by hand?)")
        out[label] = entry
    return out


def recorded_inputs(labels: list[str], inputs: Mapping[str, list[dict]], run_json: Path) -> dict[str, dict]:
    """Each of one product's file ``labels`` (populations.csv's ``file``: the file's name, or
    ``sub/X.fcs`` where two of its files share a name, :func:`tilpheno.io.files.file_labels`) ->
    its entry of run.json's ``inputs`` (``path``, ``sha256``; ``inputs`` by name,
    :func:`inputs_by_name`): the input whose path ends in the label. Where several do (files of
    one name in other products' folders), the one in a folder of the product's other files.
    ReviewError naming the label when none or still several do. For a run.json without
    ``product_files`` (written before they were recorded; :func:`product_inputs` reads them)."""
    def base(entry: dict, label: str) -> Path:   # the folder the label is relative to
        return Path(str(entry["path"])).parents[len(Path(label).parts) - 1]

    def ending_in(label: str) -> list[dict]:
        parts = Path(label).parts
        return [i for i in inputs.get(parts[-1], []) if Path(str(i["path"])).parts[-len(parts):] == parts]

    found = {label: ending_in(label) for label in labels}
    folders = {base(c[0], label) for label, c in found.items() if len(c) == 1}
    out = {}
    for label, candidates in found.items():
        if len(candidates) > 1:
            candidates = [c for c in candidates if base(c, label) in folders] or candidates
        if not candidates:
            raise ReviewError(f"{label}: not listed in {run_json} inputs")
        if len(candidates) > 1:
            raise ReviewError(f"{label}: {len(candidates)} inputs of {run_json} end in this name "
                              f"({', '.join(str(c['path']) for c in candidates)}); none in the folders of the "
                              "product's other files tells which the product's is, and this run.json is older than "
                              "the record of each product's files: run `tilpheno process` again")
        out[label] = candidates[0]
    return out


@dataclass
class Recomputed:
    """A gate set's results: per tube kind the population table; the phenotype and release."""

    populations: dict[str, pd.DataFrame]
    phenotype: dict[str, Any]            # product_id and the variables (floats)
    release: list            # tilpheno.release.CriterionResult
    release_status: str
    masks: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunRelease:
    """A product's release as its run decided it (``tilpheno.pipeline.release``): ``status`` is
    phenotypes.csv's ``release_status``; ``held``: each criterion a review flag held, as (criterion
    name, its flags as ``"<code> (<gate>)"``), in the spec's order, decided again from what the run
    recorded (the phenotype row, qc.csv's flags, populations.csv's tube kinds, the run's strategies
    and spec). Empty when that decision does not give ``status`` (a run before criteria were held
    one by one held them all). ``review``: phenotypes.csv's ``review_status`` (``needs review`` while
    a flag holds release). ``determined_fails``: each criterion that failed in the run on no flagged
    gate (a *determined* fail, ``tilpheno.pipeline.release``: no review was asked to change it), as
    the run's criteria give it, in the spec's order."""

    status: str
    review: str
    held: tuple[tuple[str, tuple[str, ...]], ...] = ()
    determined_fails: tuple[CriterionResult, ...] = ()


REVIEW_COLUMNS = {"phenotypes.csv": ("product_id",),
                  "populations.csv": ("product_id", "file", "tube", "role", "fmo_marker"),
                  "qc.csv": ("product_id", "file", "gate", "code", "severity", "message")}
"""The columns of each table of OUT that the review app reads (``process`` writes them all)."""


def missing_columns(frame: pd.DataFrame, path: Path) -> str:
    """Why ``frame``, read from ``path`` (a table of :data:`REVIEW_COLUMNS`), cannot be reviewed
    ('' when it can): the columns it lacks, named with the file."""
    missing = [c for c in REVIEW_COLUMNS[path.name] if c not in frame.columns]
    return (f"{path}: missing column(s) {', '.join(missing)} (the table was edited or written by another program; "
            "run `tilpheno process` again)") if missing else ""


def gates_named_by_messages(qc: pd.DataFrame, populations: pd.DataFrame) -> pd.Series:
    """Each flag's gate for a qc.csv written before its ``gate`` column (tilpheno before stop 39), read
    as those versions attached flags to gates: the message opens with ``"<population> ("`` (the longest
    population name of the product that does, so ``CD56+ (bright)`` is not taken for ``CD56+``);
    ``''`` when none does. ``populations``: populations.csv (``product_id``, ``population``)."""
    names: dict[str, list[str]] = {}
    for pid, pop in zip(populations["product_id"].astype(str), populations["population"].astype(str)):
        names.setdefault(pid, []).append(pop)
    for pid in names:
        names[pid] = sorted(set(names[pid]), key=len, reverse=True)

    def gate(pid: str, message: str) -> str:
        return next((pop for pop in names.get(pid, []) if message.startswith(pop + " (")), "")

    return pd.Series([gate(str(pid), str(m)) for pid, m in zip(qc["product_id"], qc["message"])], index=qc.index,
                     dtype=object)


def read_output_csv(path: Path, **read_csv_args) -> pd.DataFrame:
    """A table the pipeline wrote (phenotypes.csv, populations.csv, qc.csv) as it was before writing:
    ``pd.read_csv(path, **read_csv_args)`` with the formula-neutralising quote taken off each text cell
    and column name (``'+TIL001`` -> ``+TIL001``, :func:`tilpheno.io.csvcells.restore_frame`)."""
    from tilpheno.io.csvcells import restore_frame

    return restore_frame(pd.read_csv(path, **read_csv_args))


def gate_files_named_by_messages(qc: pd.DataFrame) -> pd.Series:
    """Each flag's ``gate_file`` for a qc.csv written before that column (tilpheno before stop 40), read
    as those versions did: an ``unstained_positive`` flag's message ends ``"the stained tube <file>"``;
    ``''`` for every other flag (its gate is its own file's). ``qc``: ``code`` and ``message`` columns."""
    def gate_file(code: str, message: str) -> str:
        found = re.search(r"the stained tube (.+)$", message) if code == "unstained_positive" else None
        return found.group(1) if found else ""

    return pd.Series([gate_file(str(c), str(m)) for c, m in zip(qc["code"], qc["message"])], index=qc.index, dtype=object)


def changed_since_run(file: str | Path) -> str:
    """The one line naming an input ``file`` whose bytes no longer have run.json's SHA-256."""
    return f"{file}: SHA-256 differs from run.json (the file changed since the run)"


class ReviewSource:
    """Read access to a processed output folder and its inputs (thread-safe cache of loaded tubes)."""

    def __init__(self, out_dir: str | Path, inputs_dir: str | Path | None = None):
        self.out_dir = Path(out_dir).resolve()
        self.inputs_dir = Path(inputs_dir).resolve() if inputs_dir else None
        from tilpheno.io.outdir import INCOMPLETE_NAME
        from tilpheno.pipeline.record import check_run_record

        if (self.out_dir / INCOMPLETE_NAME).exists():
            raise ReviewError(f"{self.out_dir}: a run was stopped while publishing its outputs ({INCOMPLETE_NAME}): its "
                              "tables may mix two runs; run `tilpheno process` again (overwrite=True) before reviewing")
        run_json = self.out_dir / "run.json"
        try:
            # before reading: a run published meanwhile reads as a change (a new run.json is renamed into place)
            self._run_identity: FileIdentity | None = FileIdentity.of(os.stat(run_json))
            self.run = check_run_record(json.loads(run_json.read_text(encoding="utf-8")), run_json)
            self.phenotypes = read_output_csv(self.out_dir / "phenotypes.csv", dtype={"product_id": str},
                                              keep_default_na=False, na_values=[""])
            self.populations_csv = read_output_csv(self.out_dir / "populations.csv",
                                                   dtype={"product_id": str, "fmo_marker": str},
                                                   keep_default_na=False, na_values=[""])
            qc_path = self.out_dir / "qc.csv"
            self.qc = (read_output_csv(qc_path, dtype=str, keep_default_na=False) if qc_path.exists()
                       else pd.DataFrame(columns=list(REVIEW_COLUMNS["qc.csv"])))
            if "gate" not in self.qc.columns and {"product_id", "message"} <= set(self.qc.columns) \
                    and {"product_id", "population"} <= set(self.populations_csv.columns):   # an older run
                self.qc.insert(min(2, len(self.qc.columns)), "gate", gates_named_by_messages(self.qc, self.populations_csv))
            if "gate_file" not in self.qc.columns and {"code", "message"} <= set(self.qc.columns):   # before stop 40
                self.qc.insert(min(3, len(self.qc.columns)), "gate_file", gate_files_named_by_messages(self.qc))
            for name, frame in (("phenotypes.csv", self.phenotypes), ("populations.csv", self.populations_csv),
                                ("qc.csv", self.qc)):
                problem = missing_columns(frame, self.out_dir / name)
                if problem:
                    raise ReviewError(problem)
        except TilphenoError as exc:
            raise ReviewError(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise ReviewError(f"{self.out_dir}: not a processed output folder (run.json, phenotypes.csv, populations.csv "
                              f"from `tilpheno process`): {exc}") from None
        self.fmo_percentile = float(self.run.get("parameters", {}).get("fmo_percentile", 99.5))
        self.study = self._study()
        self.panel = self._panel()
        self.strategies = self._strategies()
        self.release_spec = self._release_spec()
        self._inputs = inputs_by_name(self.run.get("inputs", []))
        self._inputs_by_path = {str(i["path"]): i for i in self.run.get("inputs", [])}
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, dict[str, StainedTube]] = OrderedDict()
        self._automatic: dict[str, dict] = {}
        self._candidates: dict[str, dict] = {}
        self._negative_calls: dict[str, dict[str, dict[str, dict]]] = {}
        self._left_out: dict[str, list[str]] = {}
        self._row_index: dict[str, tuple[pd.DataFrame, dict[str, np.ndarray]]] = {}
        self._done: tuple[pd.DataFrame, list[str], set[str]] | None = None
        self._files_by_product: tuple[pd.DataFrame, dict[str, list[tuple[str, str, str, str]]]] | None = None
        self._reports: OrderedDict[str, str] = OrderedDict()
        self._report_lock = threading.Lock()

    def report_html(self, product_id: str) -> str:
        """The product's HTML report of this run: the one ``process`` or ``tilpheno report`` published
        in OUT, else (reports deferred with ``--reports later`` or ``none``) drawn now by
        ``tilpheno.pipeline.draw_report``, which writes nothing into OUT (its ``run.json`` stays, so
        this server is not superseded) and equals the report ``tilpheno report OUT PRODUCT`` would
        publish. Drawn reports are kept in memory (:data:`CACHE_REPORTS`, the newest), one drawn at a
        time. ReviewError (one line) when the run cannot be drawn again, e.g. an input changed since."""
        from tilpheno.errors import TilphenoError
        from tilpheno.pipeline import draw_report, report_path

        published = report_path(self.out_dir, product_id)
        if published.is_file():
            return published.read_text(encoding="utf-8")
        with self._report_lock:
            if product_id not in self._reports:
                try:
                    self._reports[product_id] = draw_report(self.out_dir, product_id)
                except TilphenoError as exc:
                    raise ReviewError(f"report of {product_id}: {exc}{self._moved_note()}") from None
                while len(self._reports) > CACHE_REPORTS:
                    self._reports.popitem(last=False)
            self._reports.move_to_end(product_id)
            return self._reports[product_id]

    def _moved_note(self) -> str:
        """What a refused report draw adds when this source reads the run's files from an inputs
        folder (they moved): the gates are re-read from there, a deferred report is not drawn from there."""
        if self.inputs_dir is None:
            return ""
        return (f" (this server reads the run's files from {self.inputs_dir} for its gates, but a report the run "
                "deferred is drawn only from the files where the run read them: draw it with `tilpheno report "
                f"{self.out_dir}` while they lie there, or process the files again where they are now)")

    # -- run.json ----------------------------------------------------------------------------
    def superseded(self) -> str:
        """Empty while OUT holds the run this source loaded; else why not (``process`` published a new
        run into OUT, or removed it): what this source shows is no longer that folder's run."""
        try:
            now: FileIdentity | None = FileIdentity.of(os.stat(self.out_dir / "run.json"))
        except OSError:
            now = None
        if now == self._run_identity:
            return ""
        return (f"{self.out_dir} was processed again (or its run removed) after this review server started; "
                "restart the server to review the folder's current run")

    def _study(self) -> Study:
        """The study the run used (``parameters.study`` of run.json, checked against its SHA-256)."""
        from tilpheno.errors import TilphenoError
        from tilpheno.pipeline.record import run_study

        try:
            return run_study(self.run, self.out_dir / "run.json")
        except TilphenoError as exc:
            raise ReviewError(str(exc)) from None

    def _panel(self):
        """The run's panel override (``parameters.panel``: ``tilpheno.panel.read_panel_file``), or None;
        checked against ``parameters.panel_sha256`` where the run recorded it."""
        from tilpheno.errors import TilphenoError
        from tilpheno.panel import read_panel_file
        from tilpheno.provenance import sha256_file

        params = self.run.get("parameters", {})
        path = str(params.get("panel") or "")
        if not path:
            return None
        try:
            panel = read_panel_file(path)
            same = not params.get("panel_sha256") or sha256_file(path) == params["panel_sha256"]
        except (TilphenoError, OSError) as exc:
            raise ReviewError(f"{self.out_dir / 'run.json'}: the run's panel file cannot be read ({exc})") from None
        if not same:
            raise ReviewError(f"{self.out_dir / 'run.json'}: the run's panel file {path} changed since the run "
                              "(its SHA-256 differs); the review needs the panel the run used")
        return panel

    def _strategies(self) -> dict[str, Strategy]:
        out: dict[str, Strategy] = {}
        bundled = {}
        for p in [*default_strategy_paths(), *self.study.strategy_paths]:
            s = load_strategy(p)
            bundled[s.sha256] = s
        for entry in self.run.get("strategies", []):
            path = Path(entry["path"])
            strategy = None
            if path.exists():
                s = load_strategy(path)
                if s.sha256 == entry["sha256"]:
                    strategy = s
            strategy = strategy or bundled.get(entry["sha256"])
            if strategy is None:
                raise ReviewError(f"{self.out_dir / 'run.json'}: strategy {path} (sha256 {entry['sha256'][:12]}...) not "
                                  "found with the same content; the review needs the strategy the run used")
            out[strategy.tube] = strategy
        if not out:
            raise ReviewError(f"{self.out_dir / 'run.json'}: field strategies lists none; the review needs the "
                              "strategies the run used (run `tilpheno process` again)")
        return out

    def _release_spec(self):
        spec = self.run.get("release_spec") or {}
        source = spec.get("source", "built-in default")
        if source in ("", "built-in default", DEFAULT_SPEC.source):
            return DEFAULT_SPEC
        loaded = load_spec_source(source)
        if spec.get("sha256") and hashlib.sha256(spec_path(source).read_bytes()).hexdigest() != spec["sha256"]:
            raise ReviewError(f"release spec {source} changed since the run (sha256 differs from run.json)")
        return loaded

    # -- products ------------------------------------------------------------------------------
    def _rows(self, table: str, product_id: str) -> pd.DataFrame:
        """The rows of one product in the table ``self.<table>`` (phenotypes, qc; populations.csv's
        files: :meth:`_file_rows`).
        Each table's row positions per product are found once (again only when the attribute is
        replaced by another frame): the product list and every call look up products one by one,
        and scanning a large run's tables for each (2000 products: 200,000 population rows) made
        the list take minutes."""
        frame = getattr(self, table)
        cached = self._row_index.get(table)
        if cached is None or cached[0] is not frame:
            cached = (frame, frame.groupby(frame["product_id"].astype(str), sort=False).indices)
            self._row_index[table] = cached
        return frame.iloc[cached[1].get(product_id, np.empty(0, dtype=np.intp))]

    def product_ids(self) -> list[str]:
        return list(self._products()[0])

    def has_product(self, product_id: str) -> bool:
        return product_id in self._products()[1]

    def _products(self) -> tuple[list[str], set[str]]:
        """The ids of the products the run completed (``status`` done), sorted and as a set; found once
        per phenotypes frame, like :meth:`_rows`."""
        frame = self.phenotypes
        if self._done is None or self._done[0] is not frame:
            done = frame[frame["status"] == "done"] if "status" in frame else frame
            ids = sorted(done["product_id"].astype(str))
            self._done = (frame, ids, set(ids))
        return self._done[1], self._done[2]

    def failed_products(self) -> dict[str, str]:
        """The products the run did not complete (``status`` other than done: failed on bad input, or
        an internal error), sorted by id, each with phenotypes.csv's ``error`` (else its status): the
        review has no gates of theirs to show or sign, but says that they failed, and why."""
        frame = self.phenotypes
        if "status" not in frame:
            return {}
        failed = frame[frame["status"].astype(str) != "done"]
        errors = failed["error"] if "error" in failed else failed["status"]
        return {str(pid): str(error if isinstance(error, str) and error.strip() else status)
                for pid, error, status in sorted(zip(failed["product_id"].astype(str), errors, failed["status"].astype(str)))}

    def not_reviewable(self, product_id: str) -> str:
        """Why ``product_id`` is not a product of this run to review, in one line: it failed
        processing (and why, :meth:`failed_products`), or the run has no such product."""
        error = self.failed_products().get(product_id)
        if error is not None:
            return (f"{self.study.product_noun} {product_id} failed processing in this run ({error}): it has nothing to "
                    "review; correct its input and run tilpheno process again")
        return f"no {self.study.product_noun} {product_id[:80]!r} in this output folder"

    def phenotype_row(self, product_id: str) -> dict:
        rows = self._rows("phenotypes", product_id)
        if rows.empty:
            raise ReviewError(f"no product {product_id!r} in {self.out_dir}")
        return rows.iloc[0].to_dict()

    def qc_flags(self, product_id: str) -> list[dict]:
        rows = self._rows("qc", product_id)
        return [dict(r) for r in rows[["file", "gate", "gate_file", "code", "severity", "message"]].fillna("")
                .to_dict("records")]

    def run_release(self, product_id: str) -> RunRelease:
        """The product's release as the run recorded it, with the criteria its review flags held
        (:class:`RunRelease`); the release a review can change is the gates' (:func:`recompute`)."""
        from tilpheno.pipeline.release import release_decision
        from tilpheno.qc import QCFlag

        row = self.phenotype_row(product_id)
        status, review = (v if isinstance(v, str) else "" for v in (row.get("release_status"), row.get("review_status")))
        flags = [QCFlag(product_id, **f) for f in self.qc_flags(product_id)]
        tube_of = {name: tube for name, tube, role, _ in self._file_rows(product_id) if role in ("stain", "fmo")}
        release, decided = release_decision(self.release_spec, row, flags, usable=True, tube_of=tube_of,
                                            strategies=list(self.strategies.values()), doses=self.study.doses)
        determined = tuple(r for r in release if r.outcome == FAIL and not r.held_by)
        if decided != status:
            log.info("%s: phenotypes.csv's release_status %r is not what its criteria and flags give now (%r): "
                     "the criteria held by review are not shown", product_id, status, decided)
            return RunRelease(status, review, determined_fails=determined)
        return RunRelease(status, review, tuple((r.criterion.name, r.held_by) for r in release if r.held_by), determined)

    def til_dose_cells(self, product_id: str) -> float | None:
        """The infused cell number the run used, from the first of the study's doses on the infused
        cells (``base: dose``): ``dose cells / variable x 100``; None when not recoverable."""
        row = self.phenotype_row(product_id)
        for d in self.study.doses:
            if d.base != "dose":
                continue
            try:
                value = float(row[d.name]) / float(row[d.variable]) * 100.0
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                continue
            if math.isfinite(value):
                return value
        return None

    def product_files(self, product_id: str) -> list[ProductFile]:
        """The product's files, each found where the run read it (or under ``inputs_dir``); ReviewError
        naming a file that is not there."""
        return [ProductFile(self._resolve(path, name), name, sha256, tube, role, marker)
                for name, path, sha256, tube, role, marker in self._recorded_files(product_id)]

    def stained_kinds(self, product_id: str) -> list[str]:
        """The tube kinds of the run's strategies whose stained file the run gated for the product
        (populations.csv), sorted: those its gates can be exported for; a product without a kind the
        study declares optional, or one that failed, lacks it. Reads no FCS file."""
        return sorted({tube for _name, tube, role, _marker in self._file_rows(product_id)
                       if role == "stain" and tube in self.strategies})

    def _recorded_files(self, product_id: str) -> list[tuple[str, str, str, str, str, str]]:
        """``(name, recorded path, sha256, tube, role, fmo_marker)`` of each of the product's files, from
        populations.csv and run.json alone."""
        files = self._file_rows(product_id)
        if not files:
            raise ReviewError(f"no product {product_id!r} in {self.out_dir / 'populations.csv'}")
        entries = self._entries(product_id, [name for name, *_ in files])
        return [(name, str(entries[name]["path"]), str(entries[name]["sha256"]), tube, role, marker)
                for name, tube, role, marker in files]

    def _entries(self, product_id: str, labels: list[str]) -> dict[str, dict]:
        """Each of the product's file ``labels`` -> its entry of run.json's ``inputs`` (``path``,
        ``sha256``): :func:`product_inputs`, or :func:`recorded_inputs` for a run.json without
        ``product_files``."""
        recorded = self.run.get("product_files")
        return (product_inputs(labels, recorded.get(product_id) or {}, self._inputs_by_path, self.out_dir / "run.json")
                if recorded is not None else recorded_inputs(labels, self._inputs, self.out_dir / "run.json"))

    def unstained_controls(self, product_id: str) -> list[ProductFile]:
        """The product's unstained controls that were not gated (populations.csv lists the gated
        files, :meth:`product_files`): each that run.json records with role ``unstained``
        (``product_file_roles``) and each whose check flagged a stained gate (qc.csv's
        ``unstained_positive`` flags are raised on them; the only ones a run.json without roles
        names). The run's gating read them: a valley gate that sees one population calls it against
        the control (``unstained_median``), so a re-run without it may place another gate; and the
        check records the cut that clears each such flag (``unstained_cut``). One that cannot be
        found, or whose bytes differ from run.json's SHA-256 (changed since the run: its cut would
        not be the run's), is left out, logged and listed by :meth:`controls_left_out`: the gates
        are reviewed without it, or not at all when they then differ from the run's."""
        from tilpheno.provenance import sha256_file

        gated = {name for name, *_ in self._file_rows(product_id)}
        recorded = (self.run.get("product_file_roles") or {}).get(product_id)
        roles = {str(k): v for k, v in recorded.items() if isinstance(v, dict)} if isinstance(recorded, dict) else {}
        flags = self._rows("qc", product_id)
        labels = list(dict.fromkeys([*(label for label, r in roles.items() if r.get("role") == "unstained"),
                                     *(str(f) for f, code in zip(flags["file"], flags["code"]) if code == "unstained_positive")]))
        out, left_out = [], []
        for label in (label for label in labels if label not in gated):
            try:
                entry = self._entries(product_id, [label])[label]
                path = self._resolve(str(entry["path"]), label)
                try:
                    same = sha256_file(path) == str(entry["sha256"])
                except OSError as exc:
                    raise ReviewError(f"{path}: cannot be read ({exc.strerror or exc})") from None
                if not same:
                    raise ReviewError(changed_since_run(path))
                tube = str(roles.get(label, {}).get("tube") or "unstained")
                out.append(ProductFile(path, label, str(entry["sha256"]), tube, "unstained", ""))
            except ReviewError as exc:
                log.warning("product %s: unstained control left out of the re-run (no unstained_cut candidates): %s",
                            product_id, exc)
                left_out.append(str(exc))
        self._left_out[product_id] = left_out
        return out

    def controls_left_out(self, product_id: str) -> list[str]:
        """Why each unstained control of the product was left out of its re-run (:meth:`unstained_controls`),
        one line each; empty when none was (or the product was not re-run yet)."""
        return list(self._left_out.get(product_id, []))

    def _file_rows(self, product_id: str) -> list[tuple[str, str, str, str]]:
        """``(file, tube, role, fmo_marker)`` of each of the product's files in populations.csv, in
        its order; the whole table is read into a per-product map once (per populations frame, as
        :meth:`_rows`): the product list and the export ask for every product's files."""
        frame = self.populations_csv
        if self._files_by_product is None or self._files_by_product[0] is not frame:
            unique = frame.drop_duplicates(["product_id", "file"])
            table: dict[str, list[tuple[str, str, str, str]]] = {}
            for pid, name, tube, role, marker in zip(unique["product_id"].astype(str), unique["file"].astype(str),
                                                     unique["tube"].astype(str), unique["role"].astype(str),
                                                     unique["fmo_marker"]):
                table.setdefault(pid, []).append((name, tube, role, marker if isinstance(marker, str) else ""))
            self._files_by_product = (frame, table)
        return self._files_by_product[1].get(product_id, [])

    def _resolve(self, recorded: str, label: str) -> Path:
        """The file the run read as ``recorded``: there, or under ``inputs_dir`` by its path in the
        run's input folder (``parameters.input_folder``: ``P1/X.fcs``), its ``label`` (``sub/X.fcs``
        where two of the product's files share a name) or its name."""
        p = Path(recorded)
        candidates = [p] if p.is_absolute() else []
        if self.inputs_dir is not None:
            candidates += list(dict.fromkeys([*self._in_input_folder(p), self.inputs_dir / label, self.inputs_dir / p.name]))
        if not p.is_absolute():
            candidates += [Path.cwd() / p, self.out_dir.parent / p, self.out_dir / p]
        for c in candidates:
            if c.is_file():
                return c
        raise ReviewError(f"input file {recorded} of the run not found (looked in: {', '.join(map(str, candidates))}); "
                          "give the folder that holds the run's inputs (inputs=FOLDER)")

    def _in_input_folder(self, recorded: Path) -> list[Path]:
        """``recorded`` moved under ``inputs_dir`` as it lay in the run's input folder (none when it
        lay outside it)."""
        folder = str(self.run.get("parameters", {}).get("input_folder") or "")
        try:
            return [self.inputs_dir / recorded.relative_to(folder)] if folder and self.inputs_dir is not None else []
        except ValueError:
            return []

    def inputs_digest(self, product_id: str) -> list[dict]:
        """The product's files as recorded by the run: name, tube, role, SHA-256 (signatures bind to these).
        From the run's record alone: a file moved or deleted since the run fails only what reads it
        (re-gating that product), not the product list, signatures' status or exports of the others."""
        return [{"file": name, "tube": tube, "role": role, "sha256": sha256}
                for name, _path, sha256, tube, role, _marker in self._recorded_files(product_id)]

    def fmo_markers(self, product_id: str) -> list[list[str]]:
        """``[file, marker]`` of each of the product's gated files with an FMO marker (the marker the
        control omits, as the manifest's ``fmo_marker`` named it; populations.csv), in its order:
        which FMO anchors which marker's gate (signatures bind these)."""
        return [[name, marker] for name, _tube, _role, marker in self._file_rows(product_id) if marker]

    def other_inputs(self, product_id: str) -> list[dict]:
        """What else the run read for the product, as :meth:`inputs_digest` records the gated files
        (``file``, ``tube``, ``role``, ``sha256``, from run.json alone): each of its files that
        populations.csv does not list (its unstained control, single-stain compensation controls:
        ``product_files`` names them, ``inputs`` holds their SHA-256; tube '' and role ``not gated``,
        which run.json does not record), in name order, then the compensation matrix the run wrote
        for it (``compensation_matrices``: role ``compensation matrix``) when it has one. A run.json
        older than ``product_files`` names no controls."""
        recorded = (self.run.get("product_files") or {}).get(product_id) or {}
        gated = {name for name, *_ in self._file_rows(product_id)}
        labels = sorted(label for label in recorded if label not in gated)
        entries = self._entries(product_id, labels)
        out = [{"file": label, "tube": "", "role": "not gated", "sha256": str(entries[label]["sha256"])}
               for label in labels]
        matrix = (self.run.get("compensation_matrices") or {}).get(product_id)
        if matrix:
            out.append({"file": str(matrix["file"]), "tube": "", "role": "compensation matrix",
                        "sha256": str(matrix["sha256"])})
        return out

    def file_roles(self, product_id: str) -> dict[str, str]:
        """What each file the run read for the product was, in words, by its label (the certificate's
        "Inputs and software"): the gated ones from populations.csv, ``surface, fmo CD3``; the others
        from run.json's ``product_file_roles`` (:meth:`other_inputs`), ``unstained control, not gated``
        (its tube named where it is not its role: ``compensation, single_stain control, detector
        FITC-A, not gated``); ``not gated`` alone where run.json records no role (a run before they
        were recorded)."""
        words = {name: ", ".join(filter(None, (tube, f"{role} {marker}".strip())))
                 for name, tube, role, marker in self._file_rows(product_id)}
        recorded = (self.run.get("product_file_roles") or {}).get(product_id) or {}
        for f in self.other_inputs(product_id):
            if f["role"] != "not gated":
                continue
            r = recorded.get(f["file"]) if isinstance(recorded, dict) else None
            if not isinstance(r, dict):
                words[f["file"]] = "not gated"
                continue
            role = " ".join(filter(None, (str(r.get("role", "")), str(r.get("fmo_marker", "")))))
            tube = str(r.get("tube", ""))
            words[f["file"]] = ", ".join(filter(None, (tube if tube != role else "", f"{role} control" if role else "control",
                                                       f"detector {r['detector']}" if r.get("detector") else "", "not gated")))
        return words

    def spillover(self, product_id: str):
        """The matrix the run compensated the product with when it was not its files' own
        ``$SPILLOVER`` (``run.json`` ``compensation_matrices``: ``process --compensation`` or
        single-stain controls), checked against its recorded SHA-256; None otherwise."""
        from tilpheno.compensation import read_spillover_csv
        from tilpheno.errors import TilphenoError
        from tilpheno.provenance import sha256_file

        entry = (self.run.get("compensation_matrices") or {}).get(product_id)
        if not entry:
            return None
        path = self.out_dir / entry["file"]
        try:
            if sha256_file(path) != entry["sha256"]:
                raise ReviewError(f"{path}: compensation matrix changed since the run (SHA-256 differs from run.json)")
            return read_spillover_csv(path)
        except OSError as exc:
            raise ReviewError(f"{path}: the run's compensation matrix for product {product_id} cannot be read "
                              f"({exc.strerror or exc})") from None
        except TilphenoError as exc:
            raise ReviewError(f"{path}: {exc}") from None

    # -- automatic gates ---------------------------------------------------------------------------
    def automatic(self, product_id: str) -> dict:
        """Version 1: the pipeline's own gates on each stained tube (re-run, checked against phenotypes.csv)."""
        if product_id not in self._automatic:
            self._rerun(product_id)
        return json.loads(json.dumps(self._automatic[product_id]))

    def candidates(self, product_id: str) -> dict[str, dict[str, list[dict]]]:
        """Tube kind -> threshold population -> the candidate cuts the run weighed for it
        (:func:`threshold_candidates`); from the same re-run as :meth:`automatic` (once per product
        and process: a product imported by an earlier server is re-gated on first use)."""
        if product_id not in self._candidates:
            self._rerun(product_id)
        return json.loads(json.dumps(self._candidates[product_id]))

    def negative_calls(self, product_id: str) -> dict[str, dict[str, dict]]:
        """Tube kind -> undetermined population -> its gate at the negative call's cut (the one population
        called negative: ``placement``'s ``negative_side_cut``, the cut ``one_population: negative`` places),
        the held gate's open side kept (:func:`candidate_coordinate`); from the same re-run as :meth:`automatic`;
        a cut off the scale left out (:func:`negative_calls_on_scale`)."""
        if product_id not in self._negative_calls:
            self._rerun(product_id)
        return json.loads(json.dumps(negative_calls_on_scale(self._negative_calls[product_id], self.stained(product_id))))

    def _rerun(self, product_id: str) -> None:
        """Re-gate the product's files and its unstained controls (:meth:`unstained_controls`),
        keeping the automatic gates and the candidate cuts. A control is checked on the bytes the
        re-run read (:func:`replaced_controls`): one replaced after :meth:`unstained_controls`
        hashed it is left out as that check leaves it out (logged, :meth:`controls_left_out`) and the
        product re-gated without it."""
        controls = self.unstained_controls(product_id)
        while True:   # each pass leaves out at least one more control, or ends
            files = self.product_files(product_id) + controls
            result = self._analyzed(product_id, files)
            replaced = replaced_controls(result.controls, controls)
            if not replaced:
                break
            for reason in replaced.values():
                log.warning("product %s: unstained control left out of the re-run (no unstained_cut candidates): %s",
                            product_id, reason)
            self._left_out[product_id] = self._left_out.get(product_id, []) + list(replaced.values())
            controls = [c for c in controls if c.name not in replaced]
        by_name = {f.name: f for f in files}
        changed = next((by_name[t.shown_name].path for t in result.tubes
                        if t.shown_name in by_name and t.sha256 != by_name[t.shown_name].sha256), None)
        if changed is not None:   # the file, not only the numbers it moved (the comparison below)
            raise ReviewError(changed_since_run(changed))
        recorded = self.phenotype_row(product_id)
        for var in self.study.variables:
            a, b = float(result.phenotype.get(var, math.nan)), float(recorded.get(var, math.nan))
            if not (math.isnan(a) and math.isnan(b)) and not abs(a - b) <= REPRODUCE_TOLERANCE:
                left_out = "".join(f"; left out of the re-run: {why}" for why in self._left_out.get(product_id, []))
                raise ReviewError(f"product {product_id}: re-gating gives {var} = {a:.6g}, phenotypes.csv says {b:.6g}; "
                                  f"inputs or software changed since the run, re-run `tilpheno process`{left_out}")
        tubes: dict[str, dict] = {}
        candidates: dict[str, dict[str, list[dict]]] = {}
        negative: dict[str, dict[str, dict]] = {}
        for t in result.tubes:
            name = t.shown_name
            if t.role != "stain" or t.tube in tubes:
                continue
            tubes[t.tube] = {"file": name, "sha256": t.sha256,
                             "gates": {pop: gate.to_dict() for pop, _parent, gate, method in t.gates if method != "boolean"},
                             "methods": {pop: method for pop, _parent, _gate, method in t.gates}}
            undetermined = undetermined_gates(t.diagnostics)
            if undetermined:   # each with the gate it was held at: a reviewer's other cut decides it (undetermined_in)
                tubes[t.tube]["undetermined"] = {p: g for p, g in tubes[t.tube]["gates"].items() if p in undetermined}
                negative[t.tube] = negative_call_gates(tubes[t.tube]["undetermined"], t.diagnostics)
            flagged = [(f.code, f.gate) for f in result.qc if (f.gate_file or f.file) in (name, "")]   # qc.flags_naming_gate
            candidates[t.tube] = gate_candidates(t.thresholds, t.diagnostics, t.gates, flagged, self.fmo_percentile)
        self._automatic[product_id] = {"tubes": tubes}
        self._candidates[product_id] = candidates
        self._negative_calls[product_id] = negative

    def _analyzed(self, product_id: str, files: list[ProductFile]):
        """``tilpheno.phenotype.analyze_product`` of ``files`` with the run's study, strategies, panel,
        compensation, FMO percentile and infused cell number."""
        from tilpheno.phenotype import PLOT_EVENTS, analyze_product

        rows = pd.DataFrame([{"file": str(f.path), "tube": f.tube, "role": f.role, "fmo_marker": f.fmo_marker} for f in files])
        return analyze_product(product_id, rows, self.strategies, fmo_percentile=self.fmo_percentile,
                               til_dose_cells=self.til_dose_cells(product_id), plot_events=PLOT_EVENTS,
                               study=self.study, panel_override=self.panel,
                               spillover_override=self.spillover(product_id),
                               labels={str(f.path): f.name for f in files})

    # -- stained tubes (all events) ------------------------------------------------------------------
    def stained(self, product_id: str) -> dict[str, StainedTube]:
        with self._lock:
            if product_id in self._cache:
                self._cache.move_to_end(product_id)
                return self._cache[product_id]
        loaded = {}
        matrix = self.spillover(product_id)
        for f in self.product_files(product_id):
            if f.role != "stain" or f.tube not in self.strategies or f.tube in loaded:
                continue
            loaded[f.tube] = self._load(f, self.strategies[f.tube], matrix)
        with self._lock:
            self._cache[product_id] = loaded
            while len(self._cache) > CACHE_PRODUCTS:
                self._cache.popitem(last=False)
        return loaded

    def _load(self, f: ProductFile, strategy: Strategy, spillover=None) -> StainedTube:
        from tilpheno.io.fcs import read_fcs
        from tilpheno.panel import panel_from_fcs, require
        from tilpheno.phenotype import load_tube

        fcs = read_fcs(f.path)
        if fcs.sha256 != f.sha256:
            raise ReviewError(changed_since_run(f.path))
        detectors = require(panel_from_fcs(fcs, override=self.panel, tube=f.tube, study=self.study,
                                           compensating=spillover is not None), strategy.markers, self.study.vocabulary)
        tube = load_tube(fcs, detectors, strategy, tube=f.tube, role=f.role, spillover=spillover)
        pnr = dict(zip(fcs.channels["pnn"], fcs.channels["pnr"]))
        bounds, tops = {}, {}
        for dim in tube.data:
            transform = tube.transforms[dim]
            r = float(pnr.get(detectors.get(dim, dim), 262144.0) or 262144.0)
            tops[dim] = r
            bounds[dim] = coordinate_bounds(transform, r)
        fcs.events = None
        return StainedTube(tube, strategy, bounds, tops, f.name)


def coordinate_bounds(transform, top: float) -> tuple[float, float]:
    """The coordinates a reviewed gate may take on a dimension whose raw scale ends at ``top`` (its
    ``$PnR``), in the dimension's transformed units: logicle -0.5..1.5 (Gating-ML's 0-1 scale and half
    a scale beyond either end); any other transform maps raw -``top``..2 ``top`` (linear: those raw
    units; arcsinh: asinh(-top / cofactor)..asinh(2 top / cofactor), about -8.2..8.9 for 262,144 and
    cofactor 150)."""
    if isinstance(transform, Logicle):
        return -0.5, 1.5
    lo, hi = transform.apply(np.array([-top, 2.0 * top]))
    return float(lo), float(hi)


def replaced_controls(read: list[tuple[str, Any]], controls: list[ProductFile]) -> dict[str, str]:
    """Each of ``controls`` (name -> why, one line) whose bytes a re-run read (``read``:
    ``ProductResult.controls``, name and FCSFile) are not those run.json records: their SHA-256
    differs, or the file changed after the read (its digest is then not the read bytes')."""
    from tilpheno.errors import FCSReadError

    recorded = {c.name: c for c in controls}
    out: dict[str, str] = {}
    for name, fcs in read:
        control = recorded.get(name)
        if control is None or name in out:
            continue
        try:
            same = fcs.sha256 == control.sha256
        except FCSReadError as exc:
            out[name] = str(exc)
            continue
        if not same:
            out[name] = changed_since_run(control.path)
    return out


# -- candidate cuts of the threshold gates ---------------------------------------------------------

CANDIDATE_RULES = (
    ("fmo_threshold", "control percentile", "the {pct:g}th percentile of the control (FMO or unstained) in the same parent"),
    ("relative_threshold", "carried over", "the control percentile carried over to the stained tube's negatives "
                                           "(their peak and spread)"),
    ("relative_low", "carried over, lower side", "the carry-over with the spread of the negative peak's lower side "
                                                 "(free of positives, blind to a skewed nonspecific tail)"),
    ("relative_high", "carried over, upper side", "the carry-over with the spread of the negative peak's upper side "
                                                  "(follows a skewed tail, widened by positives next to the negatives)"),
    ("valley_threshold", "stained valley", "the density minimum between the stained tube's negative and positive peaks"),
    ("relative_lognormal", "log-normal tail", "the carry-over if the nonspecific signal had a log-normal shape "
                                              "(the tail-shape check)"),
    ("fit_lognormal", "log-normal fit", "the cut with a log-normal binding (plus normal spreading) fitted to the same "
                                        "stained negatives as the additive fit (the fit's tail-shape check)"),
    ("fit_normal", "normal fit", "the cut with the additive (normal) binding fitted to the same stained negatives, "
                                 "which a log-normal fit of the bulk replaced (the fit's tail-shape check)"),
)
"""``thresholds`` column -> (short label, meaning) of the cuts a threshold gate's placement weighed
(``tilpheno.gates.checks.RECORD_COLUMNS``; the report's FMO table shows the same numbers)."""


CANDIDATE_TOLERANCE = 5e-4
"""Candidate cuts closer than this on the transformed scale (half the 0.001 the app shows) are one."""


def threshold_candidates(thresholds: pd.DataFrame, percentile: float) -> dict[str, list[dict]]:
    """Population -> candidate cuts of each threshold gate of a stained tube (``cut``: transformed
    scale, positive = above it, as ``thresholds.value_transformed``): first the cut in use (``rule``
    ``automatic``, with the rule that won), then every other finite candidate of
    :data:`CANDIDATE_RULES` and, where a fitted cut's uncertainty was measured (``fit_error``,
    transformed units), the two ends of its 95 % interval, each kept when it differs from the cuts
    before it by more than :data:`CANDIDATE_TOLERANCE`. A gate without a control (fallback) has
    only its cut."""
    out: dict[str, list[dict]] = {}
    if thresholds is None or len(thresholds) == 0:
        return out
    for row in thresholds.to_dict("records"):
        used = float(row["value_transformed"])
        if not math.isfinite(used):
            continue
        winner = str(row.get("winner") or row.get("method") or "")
        pct = row.get("percentile")
        pct = float(pct) if pct is not None and math.isfinite(float(pct)) else percentile
        cuts: list[dict[str, Any]] = [{"rule": "automatic", "label": "automatic",
                                       "meaning": f"the cut the run placed (rule: {winner})", "cut": used}]
        more = []
        for column, label, meaning in CANDIDATE_RULES:
            value = row.get(column)
            if value is not None and math.isfinite(float(value)):
                more.append({"rule": column, "label": label, "meaning": meaning.format(pct=pct), "cut": float(value)})
        error = row.get("fit_error")
        if error is not None and math.isfinite(float(error)):
            for sign, end in ((-1, "lower"), (1, "upper")):
                more.append({"rule": f"fit_error_{end}", "label": f"fit interval, {end} end", "cut": used + sign * float(error),
                             "meaning": f"the cut {'-' if sign < 0 else '+'} {float(error):.3f} transformed units: the "
                                        f"{end} end of the fit's 95 % interval (fit_error, the fit repeated on folds of "
                                        "the events)"})
        out[str(row["population"])] = _distinct(cuts, more)
    return out


def _valley_meanings(d: Mapping[str, Any]) -> dict[str, str]:
    """Rule -> one-line meaning of each cut a ``valley`` gate's placement recorded
    (``placement.place_valley``, ``checks.check_valley``; ``d``: its diagnostics)."""
    k = float(d.get("k_sd", math.nan))
    if "negative_mode" in d:
        sd = (f"{k:g} robust SDs ({d.get('sd_side', 'lower')}-half RMS {float(d.get('negative_width', math.nan)):.3f}) "
              f"above the main peak at {float(d['negative_mode']):.3f} (rules negative_sd, lower)"
              + (f", raised from {float(d['sd_raised_from']):.3f} to the unstained control's percentile carried to "
                 "the peak (rule lower's floor: the live cells' own autofluorescence)" if "sd_raised_from" in d else ""))
    else:
        sd = (f"{k:g} robust SDs (upper-half RMS {float(d.get('positive_width', math.nan)):.3f}) below the positive peak "
              f"at {float(d.get('positive_peak', math.nan)):.3f}, the foot of the positive cluster (rules positive_sd, higher)")
    return {"valley_threshold": "the density minimum between the negative and the positive peak (or, with one "
                                "population only, the rule's cut beside its peaks)",
            "sd_threshold": sd}


DENSITY_LABELS = {"valley_threshold": "density valley", "sd_threshold": "k SDs from the peak"}
"""``valley`` gate diagnostics -> short label of the cut (meanings: :func:`_valley_meanings`)."""


def density_candidates(d: Mapping[str, Any], flagged: list[str]) -> list[dict]:
    """The cuts a density gate (``valley``, or an ``fmo`` gate's density fallback) recorded besides
    the one in use, from its placement diagnostics ``d`` (transformed scale): the density valley
    (``valley_threshold``), the cut k robust SDs from a peak (``sd_threshold``), and for each of
    ``flagged`` (the codes of the self-check flags raised on the gate) the alternative cuts the
    flag was sized with (``alternative_cuts``, ``checks.check_valley``: rule
    ``<code>:<i>``; ``no_second_peak``'s second, the other side's call, is labelled ``negative
    call`` or ``positive call``). Non-finite numbers are left out."""
    meanings = _valley_meanings(d)
    out: list[dict[str, Any]] = []
    for column, label in DENSITY_LABELS.items():
        value = d.get(column)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.append({"rule": column, "label": label, "meaning": meanings[column], "cut": float(value)})
    cut = float(d.get("threshold", math.nan))
    for code in dict.fromkeys(flagged):
        for i, value in enumerate(d.get("alternative_cuts", {}).get(code, ())):
            if not math.isfinite(float(value)):
                continue
            if code == "no_second_peak" and i > 0:   # the other side's call (checks.check_valley)
                side = "negative" if "negative_side_cut" in d else "positive"
                label = f"{side} call"
                how = (f"the one population called {side}, its cut beside the peaks: "
                       + ("undetermined without an FMO or unstained control" if d.get("undetermined") else
                          "the side the strategy's one_population did not state"))
            elif code == "no_second_peak":
                label = "other one-population cut"
                how = ("the same rule on the parent the gate is applied to" if d.get("reference") else
                       "the unstained control's percentile carried with the population's upper-side spread: its "
                       "whole upper flank taken for background, the binding and spreading the control lacks"
                       if d.get("winner") == "unstained_carry" else
                       "half the robust SDs: midway between the cut and the one population's peak")
            else:
                label = f"cut {float(value) - cut:+.3f}"
                how = "the cut moved by the smoothing scale"
            out.append({"rule": f"{code}:{i}", "label": label, "cut": float(value),
                        "meaning": f"the cut the {code} flag was sized with ({how})"})
    return out


def unstained_candidates(d: Mapping[str, Any], flagged: list[str]) -> list[dict]:
    """The cut that would clear an ``unstained_positive`` flag on the gate (``flagged``: the codes
    of the flags on it; ``d``: its diagnostics, ``unstained_cut``, transformed scale), as a
    candidate; empty when the gate was not flagged so."""
    cut = d.get("unstained_cut")
    if "unstained_positive" not in flagged or not isinstance(cut, (int, float)) or not math.isfinite(cut):
        return []
    return [{"rule": "unstained_cut", "label": "unstained control", "cut": float(cut),
             "meaning": f"the lowest cut leaving at most {UNSTAINED_LIMIT:g} % of the unstained control's events "
                        "(those the unstained_positive flag counts) above it"}]


def _distinct(cuts: list[dict], more: list[dict]) -> list[dict]:
    """``cuts`` followed by each of ``more`` that differs from every cut before it by more than
    :data:`CANDIDATE_TOLERANCE`."""
    out = list(cuts)
    for c in more:
        if all(abs(c["cut"] - o["cut"]) > CANDIDATE_TOLERANCE for o in out):
            out.append(c)
    return out


def gate_candidates(thresholds: pd.DataFrame, diagnostics: Mapping[str, Mapping[str, Any]], gates: list,
                    flags: list[tuple[str, str]], percentile: float) -> dict[str, list[dict]]:
    """Population -> candidate cuts of every 1-D gate of a stained tube: the threshold gates'
    (:func:`threshold_candidates`), then for every range gate whose placement recorded a cut
    (``diagnostics[population]["threshold"]``; ``gates``: the tube's ``(population, parent, gate,
    method)``) the cut in use first, its :func:`density_candidates` and :func:`unstained_candidates`,
    repeats left out as in :func:`threshold_candidates`. ``flags``: ``(code, gate)`` of the flags on
    the file's gates (``QCFlag.gate``: the population whose gate a flag is about)."""
    out = threshold_candidates(thresholds, percentile)
    for population, _parent, gate, method in gates:
        d = diagnostics.get(population, {})
        if method == "ratio_band" and isinstance(gate, PolygonGate):
            band = singlet_candidates(d, gate)
            if len(band) > 1:
                out[population] = band
            continue
        used = d.get("threshold")
        if not isinstance(gate, RangeGate) or not isinstance(used, (int, float)) or not math.isfinite(used):
            continue
        first = out.get(population) or [{"rule": "automatic", "label": "automatic", "cut": float(used),
                                         "meaning": f"the cut the run placed (rule: {method})"}]
        codes = [code for code, on in flags if on == population]
        out[population] = _distinct(first, density_candidates(d, codes) + unstained_candidates(d, codes))
    return out


def singlet_candidates(d: Mapping[str, Any], gate: PolygonGate) -> list[dict]:
    """The lower edges a singlets gate (``placement.place_singlets``: the wedge of FSC-H/FSC-A
    ratios ``[ratio_low, ratio_high]`` through the origin) recorded, as candidate gates: the edge in
    use (``automatic``); the doublet valley (``doublet_valley``) where it did not set the edge; the
    band's own edge (mode - (ratio_high - mode), k robust SDs below the mode) where the doublet
    valley raised it. Each ``cut`` is the lower ratio, ``vertices`` the wedge with that edge (the
    automatic gate's far end kept)."""
    mode, low, high = (float(d.get(k, math.nan)) for k in ("ratio_mode", "ratio_low", "ratio_high"))
    valley = d.get("doublet_valley")
    (x0, y0), (far, _), top = gate.vertices
    if not all(math.isfinite(v) for v in (mode, low, high)) or len(gate.vertices) != 3 or far <= 0:
        return []

    def wedge(rule: str, label: str, ratio: float, meaning: str) -> dict:
        return {"rule": rule, "label": label, "cut": ratio, "meaning": meaning,
                "vertices": [[x0, y0], [far, ratio * far], list(top)]}

    named = f"{gate.dims[1]}/{gate.dims[0]}"
    out = [wedge("automatic", "automatic", low, f"the lower edge the run placed: {named} ratio {low:.3f} (the band "
                                                f"{mode:.3f} +- {high - mode:.3f}, raised to a doublet valley above it)")]
    if isinstance(valley, (int, float)) and math.isfinite(valley):
        if valley < low:
            out.append(wedge("doublet_valley", "doublet valley", float(valley),
                             f"the density valley between the doublet and the singlet peak of the {named} ratio (keeps the "
                             "events between it and the band's edge)"))
        else:
            own = mode - (high - mode)
            out.append(wedge("band_edge", "band edge", own, "the band's own lower edge, as many robust SDs below the "
                                                            "ratio's mode as its upper edge lies above (the doublet "
                                                            "valley raised it)"))
    return _distinct(out[:1], out[1:])


def candidate_coordinate(side: str, cut: float) -> float:
    """The range gate coordinate of a candidate ``cut`` (transformed scale) on ``side``: ``low``
    just above the cut (positive = above it, as the pipeline places it), ``high`` at the cut."""
    return float(np.nextafter(cut, np.inf)) if side == "low" else float(cut)


def negative_call_gates(held: Mapping[str, Mapping], diagnostics: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """Population -> each ``held`` range gate (an undetermined one, as the run held it) at the negative call's cut
    its placement recorded (``negative_side_cut``, transformed scale), on the gate's own side; a gate without
    that cut is left out."""
    out = {}
    for population, gate in held.items():
        cut = diagnostics.get(population, {}).get("negative_side_cut")
        if gate.get("type") == "range" and isinstance(cut, (int, float)) and math.isfinite(cut):
            side = "low" if gate.get("low") is not None else "high"
            out[population] = {**gate, side: candidate_coordinate(side, float(cut))}
    return out


def applied_candidates(diff: Mapping[str, Mapping], candidates: Mapping[str, Mapping[str, list[dict]]]) -> dict[str, dict]:
    """``tube/population`` -> ``{rule, label, cut}`` of the candidate (:meth:`ReviewSource.candidates`)
    each changed gate of ``diff`` (:func:`changed_gates`) was moved to exactly: its one moved
    coordinate is the candidate's (:func:`candidate_coordinate`), everything else as before. Gates
    moved anywhere else (a drag) are not named."""
    out: dict[str, dict] = {}
    for tube, by_population in candidates.items():
        for population, cuts in by_population.items():
            change = diff.get(f"{tube}/{population}") or {}
            before, after = change.get("before"), change.get("after")
            if not before or before.get("type") not in ("range", "polygon"):
                continue
            side = "low" if before.get("low") is not None else "high"
            hit = next((c for c in cuts if after == ({**before, "vertices": c["vertices"]} if "vertices" in c else
                                                     {**before, side: candidate_coordinate(side, c["cut"])})), None)
            if hit is not None:
                out[f"{tube}/{population}"] = {"rule": hit["rule"], "label": hit["label"], "cut": hit["cut"]}
    return out


def candidate_gates(st: StainedTube, gates: Mapping[str, Mapping], masks: Mapping[str, np.ndarray], population: str,
                    cuts: list[dict]) -> list[dict]:
    """``cuts`` (:func:`threshold_candidates`) as ``population``'s range gate would take them, each
    with ``value`` (the gate coordinate: ``low`` just above the cut for a positive gate, as the
    pipeline places it, so that the automatic cut reproduces its gate exactly; else ``high`` at the
    cut), ``raw`` (the cut in compensated linear units: the dimension's inverse transform) and
    ``pct_of_parent`` (% of the parent inside the moved gate; ``masks`` =
    :func:`evaluate` of ``gates``; None without a parent event). Cuts whose coordinate falls outside
    the dimension's bounds are left out (a submitted gate must stay inside them), and so is every cut
    but the run's own (``automatic``) above the top of the detector's range (``$PnR``,
    ``StainedTube.tops``): a rule's cut beyond the parent's events, from which the gate's own cut was
    clamped (``unclamped_threshold``), is no place on the instrument's scale. Empty when the gate is
    not a range gate."""
    gate = gates.get(population)
    if not gate or gate.get("type") not in ("range", "polygon"):
        return []
    pop = st.strategy.population(population)
    parent = masks[pop.parent] if pop.parent != ROOT else np.ones(st.tube.n_events, dtype=bool)
    n_parent = int(np.count_nonzero(parent))
    if gate["type"] == "polygon":
        return [_polygon_candidate(st, gate, parent, n_parent, cut) for cut in cuts
                if "vertices" in cut and all(st.bounds[d][0] <= v[i] <= st.bounds[d][1]
                                             for v in cut["vertices"] for i, d in enumerate(gate["dims"]))]
    side = "low" if gate.get("low") is not None else "high"
    out = []
    for cut in cuts:
        value, raw = candidate_coordinate(side, cut["cut"]), raw_value(st, gate["dim"], cut["cut"])
        if not on_scale(st, gate["dim"], value, raw if cut["rule"] != "automatic" else None):
            continue
        moved = gate_from_dict({**gate, side: value})
        inside = int(np.count_nonzero(moved.membership(st.tube.data) & parent))
        out.append({**cut, "value": value, "raw": raw, "pct_of_parent": 100.0 * inside / n_parent if n_parent else None})
    return out


def raw_value(st: StainedTube, dim: str, cut: float) -> float:
    """``cut`` (transformed units) in compensated linear units: ``dim``'s inverse transform."""
    return float(st.tube.transforms[dim].inverse(np.array([cut]))[0])


def on_scale(st: StainedTube, dim: str, value: float, raw: float | None) -> bool:
    """Whether a range gate coordinate ``value`` (transformed units: :func:`candidate_coordinate`) lies inside
    ``dim``'s bounds (a submitted gate must stay inside them) and its cut's ``raw`` value (:func:`raw_value`;
    None: not checked) not above the top of the detector's range (``$PnR``, ``StainedTube.tops``): no place
    on the instrument's scale."""
    low, high = st.bounds[dim]
    return low <= value <= high and (raw is None or raw <= st.tops.get(dim, math.inf))


def negative_calls_on_scale(calls: Mapping[str, Mapping[str, dict]], stained: Mapping[str, StainedTube]) -> dict[str, dict[str, dict]]:
    """``calls`` (tube -> population -> the gate at the negative call's cut: :func:`negative_call_gates`)
    without those whose cut lies off the scale (:func:`on_scale`, as :func:`candidate_gates` leaves such
    cuts out): neither the page's 'judge the one population negative' nor a ``negative`` decision
    (:func:`_decide`) can put a gate there."""
    out: dict[str, dict[str, dict]] = {}
    for tube, by_population in calls.items():
        st = stained.get(tube)
        for population, gate in by_population.items():
            value = float(gate["low"] if gate.get("low") is not None else gate["high"])
            if st is not None and on_scale(st, gate["dim"], value, raw_value(st, gate["dim"], value)):
                out.setdefault(tube, {})[population] = gate
    return out


def _polygon_candidate(st: StainedTube, gate: Mapping, parent: np.ndarray, n_parent: int, cut: dict) -> dict:
    """A polygon candidate (:func:`singlet_candidates`) with ``pct_of_parent`` (its wedge in place
    of ``gate``)."""
    moved = gate_from_dict({**gate, "vertices": cut["vertices"]})
    inside = int(np.count_nonzero(moved.membership(st.tube.data) & parent))
    return {**cut, "pct_of_parent": 100.0 * inside / n_parent if n_parent else None}


# -- evaluating a gate set -----------------------------------------------------------------------


def evaluate(strategy: Strategy, tube: TubeData, gates: Mapping[str, Mapping]) -> dict[str, np.ndarray]:
    """Population -> mask over every event of ``tube`` (each mask ANDed with its parent)."""
    n = tube.n_events
    masks: dict[str, np.ndarray] = {}
    for pop in strategy.populations:
        parent = np.ones(n, dtype=bool) if pop.parent == ROOT else masks[pop.parent]
        if pop.boolean is not None:
            masks[pop.name] = pop.boolean.evaluate(masks) & parent
        elif pop.name in gates:
            gate: Any = gate_from_dict(gates[pop.name])   # geometric (range, rectangle, polygon, ellipsoid)
            masks[pop.name] = gate.contains(tube.data) & parent
        else:   # the automatic gate could not be placed (gate_failed): an empty population, as in the run
            masks[pop.name] = np.zeros(n, dtype=bool)
    return masks


def counts_table(strategy: Strategy, tube: TubeData, masks: Mapping[str, np.ndarray],
                 undetermined: frozenset[str] = frozenset()) -> list[dict]:
    """Fast counts and percentages (no medians) for interactive previews; a count or percentage resting on
    an ``undetermined`` gate None, as ``population_table`` leaves it blank, and ``undetermined`` the gates
    it rests on, in gating order (the reason the page shows in its place; empty when none); ``within_lymph``:
    the population has a % of live lymphocytes (none otherwise, whatever its gates)."""
    counts = {name: int(np.count_nonzero(m)) for name, m in masks.items()}
    lymph = next((p.name for p in strategy.populations if p.method == "lymphocytes"), None)
    below_lymph = _descendants(strategy, lymph)
    lymph_on = resting_on(strategy, undetermined, lymph) if lymph else ()
    rows = []
    for pop in strategy.populations:
        parent_count = tube.n_events if pop.parent == ROOT else counts.get(pop.parent, 0)
        c = counts.get(pop.name, 0)
        on = resting_on(strategy, undetermined, pop.name)
        rows.append({"population": pop.name, "parent": pop.parent, "count": None if on else c, "undetermined": list(on),
                     "within_lymph": pop.name in below_lymph,
                     "pct_of_parent": 100.0 * c / parent_count if parent_count and not on else None,
                     "pct_of_live_lymph": (100.0 * c / counts[lymph] if lymph and counts.get(lymph) and pop.name in below_lymph
                                           and not (on or lymph_on) else None)})
    return rows


def _descendants(strategy: Strategy, ancestor: str | None) -> set[str]:
    out: set[str] = set()
    if ancestor is None:
        return out
    for pop in strategy.populations:   # parents first
        if pop.name == ancestor or pop.parent in out:
            out.add(pop.name)
    return out


def undetermined_in(entry: Mapping) -> frozenset[str]:
    """The undetermined gates of a gate set's tube ``entry`` (one population, no FMO or unstained
    control: ``tilpheno.phenotype.undetermined_gates``): those the automatic gate set records under
    ``undetermined`` whose gate is still the one held there and that no reviewer decided (``decided``:
    population -> ``positive``, the held call accepted as it stands, :func:`validate_gate_set`); a
    reviewer's other cut decides the gate too."""
    held, decided = entry.get("undetermined") or {}, entry.get("decided") or {}
    return frozenset(p for p, gate in held.items() if entry.get("gates", {}).get(p) == gate and p not in decided)


def undetermined_named(gate_set: Mapping) -> list[str]:
    """``tube/population`` of every gate of ``gate_set`` still undetermined (:func:`undetermined_in`),
    tube by tube, each tube's sorted: release stays not evaluable on the criteria resting on them."""
    return [f"{tube}/{pop}" for tube, entry in gate_set["tubes"].items() for pop in sorted(undetermined_in(entry))]


def recompute(source: ReviewSource, product_id: str, gate_set: Mapping, *, medians: bool = True) -> Recomputed:
    """Populations (every event), phenotype (study variables, counts, doses) and release of a gate set
    (a criterion on an optional tube kind the run found no file of: not applicable, ``tilpheno.pipeline.release``).
    A percentage resting on a gate still undetermined (:func:`undetermined_in`) is NaN, as in the run,
    and a criterion on it ``not evaluable`` for that reason; once a reviewer moves that gate it has a value."""
    stained = source.stained(product_id)
    phenotype: dict[str, Any] = {v: math.nan for v in source.study.variables}
    tables, all_masks = {}, {}
    undetermined: set[tuple[str, str]] = set()
    for tube_kind in sorted(stained):
        st = stained[tube_kind]
        entry = gate_set["tubes"].get(tube_kind, {})
        masks = evaluate(st.strategy, st.tube, entry.get("gates", {}))
        held = undetermined_in(entry)
        state: Any = SimpleNamespace(tube=st.tube, masks=masks)   # what population_table/tube_variables read
        tables[tube_kind] = (population_table(st.strategy, state, held) if medians
                             else pd.DataFrame(counts_table(st.strategy, st.tube, masks, held)))
        phenotype.update(tube_variables(st.strategy, state, held))
        all_masks[tube_kind] = masks
        undetermined |= {(tube_kind, p) for p in held}
    phenotype.update(doses(phenotype, source.til_dose_cells(product_id), source.study))
    strategies = list(source.strategies.values())
    release = not_applicable(evaluate_release(source.release_spec, phenotype), absent_in(source.phenotype_row(product_id)),
                             strategies, source.study.doses)
    release = undetermined_criteria(release, frozenset(undetermined), strategies, source.study.doses)
    return Recomputed(tables, {"product_id": product_id, **phenotype}, release, overall(release), all_masks)


# -- validating a submitted gate set ---------------------------------------------------------------


def _number(value: Any, where: str, bounds: tuple[float, float]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GateSetError(f"{where}: {value!r} is not a number")
    v = float(value)
    if not math.isfinite(v):
        raise GateSetError(f"{where}: {value!r} is not a finite number")
    if not bounds[0] <= v <= bounds[1]:
        raise GateSetError(f"{where}: {v:.6g} is outside the allowed range {bounds[0]:.6g} to {bounds[1]:.6g}")
    return v


def validate_gate(auto: Mapping, submitted: Any, where: str, bounds: Mapping[str, tuple[float, float]]) -> dict:
    """A submitted gate checked against its automatic counterpart; returns the clean dict."""
    if not isinstance(submitted, Mapping):
        raise GateSetError(f"{where}: a gate must be a JSON object")
    kind = auto["type"]
    if submitted.get("type") != kind:
        raise GateSetError(f"{where}: gate type must stay {kind!r} (got {submitted.get('type')!r})")
    if kind == "range":
        if submitted.get("dim") != auto["dim"]:
            raise GateSetError(f"{where}: dimension must stay {auto['dim']!r}")
        clean = {"type": "range", "dim": auto["dim"]}
        for key in ("low", "high"):
            if (auto[key] is None) != (submitted.get(key) is None):
                raise GateSetError(f"{where}.{key}: must stay {'open' if auto[key] is None else 'a number'} as in the automatic gate")
            clean[key] = None if auto[key] is None else _number(submitted[key], f"{where}.{key}", bounds[auto["dim"]])
    elif kind == "polygon":
        if list(submitted.get("dims") or []) != list(auto["dims"]):
            raise GateSetError(f"{where}: dimensions must stay {auto['dims']}")
        vertices = submitted.get("vertices")
        if not isinstance(vertices, list) or not 3 <= len(vertices) <= MAX_VERTICES:
            raise GateSetError(f"{where}.vertices: 3 to {MAX_VERTICES} [x, y] pairs required")
        clean_v = []
        for i, v in enumerate(vertices):
            if not isinstance(v, list) or len(v) != 2:
                raise GateSetError(f"{where}.vertices[{i}]: an [x, y] pair required")
            clean_v.append([_number(v[j], f"{where}.vertices[{i}][{j}]", bounds[auto["dims"][j]]) for j in range(2)])
        clean = {"type": "polygon", "dims": list(auto["dims"]), "vertices": clean_v}
    elif kind == "ellipsoid":
        dims = list(auto["dims"])
        if list(submitted.get("dims") or []) != dims:
            raise GateSetError(f"{where}: dimensions must stay {dims}")
        mean = submitted.get("mean")
        cov = submitted.get("covariance")
        if not isinstance(mean, list) or len(mean) != len(dims):
            raise GateSetError(f"{where}.mean: {len(dims)} numbers required")
        if not isinstance(cov, list) or len(cov) != len(dims) or any(not isinstance(r, list) or len(r) != len(dims) for r in cov):
            raise GateSetError(f"{where}.covariance: a {len(dims)}x{len(dims)} matrix required")
        clean_cov = [[_number(x, f"{where}.covariance", (-1e12, 1e12)) for x in r] for r in cov]
        c = np.array(clean_cov)
        if not np.allclose(c, c.T) or np.any(np.linalg.eigvalsh((c + c.T) / 2) <= 0):
            raise GateSetError(f"{where}.covariance: must be symmetric positive definite")
        clean = {"type": "ellipsoid", "dims": dims,
                 "mean": [_number(m, f"{where}.mean[{i}]", bounds[dims[i]]) for i, m in enumerate(mean)],
                 "covariance": clean_cov,
                 "distance_square": _number(submitted.get("distance_square"), f"{where}.distance_square",
                                            (1e-9, MAX_DISTANCE_SQUARE))}
    elif kind == "rectangle":
        dims = list(auto["dims"])
        if list(submitted.get("dims") or []) != dims:
            raise GateSetError(f"{where}: dimensions must stay {dims}")
        clean = {"type": "rectangle", "dims": dims, "lows": [], "highs": []}
        for key in ("lows", "highs"):
            vals = submitted.get(key)
            if not isinstance(vals, list) or len(vals) != len(dims):
                raise GateSetError(f"{where}.{key}: {len(dims)} values required")
            for i, v in enumerate(vals):
                if (auto[key][i] is None) != (v is None):
                    raise GateSetError(f"{where}.{key}[{i}]: must stay {'open' if auto[key][i] is None else 'a number'}")
                clean[key].append(None if v is None else _number(v, f"{where}.{key}[{i}]", bounds[dims[i]]))
    else:
        raise GateSetError(f"{where}: {kind} gates cannot be edited in the review app")
    try:
        gate_from_dict(clean)
    except GatingError as exc:
        raise GateSetError(f"{where}: {exc}") from None
    return clean


def validate_gate_set(base: Mapping, submitted: Any, stained: Mapping[str, StainedTube],
                      negative_calls: Callable[[], Mapping[str, Mapping[str, dict]]] = dict) -> dict:
    """The base version's gate set with the submitted gates replaced (each validated).

    ``submitted``: ``{"tubes": {tube: {"gates": {population: gate}[, "decided": {population: decision}]}}}``;
    tubes or populations not named keep the base gates; unknown tubes or populations are refused.
    ``decided``: a reviewer's decision on an undetermined gate (one population, no FMO or unstained
    control, held as positive: the base records it under ``undetermined``): ``"positive"``, the held
    positive call stands, the gate determined without moving its cut; ``"negative"``, the one population
    is negative: the gate at the negative call's cut (``negative_calls()``: tube -> population -> that gate,
    :meth:`ReviewSource.negative_calls`, asked for only then), as ``one_population: negative`` places it, so that the numbers
    are always those of the gates saved; ``"undecided"`` withdraws either (:func:`_decide`)."""
    if not isinstance(submitted, Mapping) or not isinstance(submitted.get("tubes"), Mapping):
        raise GateSetError("gates: a JSON object {\"tubes\": {tube: {\"gates\": {population: gate}}}} is required")
    out = json.loads(json.dumps(base))
    for tube_kind, entry in submitted["tubes"].items():
        if tube_kind not in out["tubes"] or tube_kind not in stained:
            raise GateSetError(f"gates: unknown tube {str(tube_kind)[:60]!r}; this product has {sorted(out['tubes'])}")
        gates = entry.get("gates") if isinstance(entry, Mapping) else None
        if not isinstance(gates, Mapping):
            raise GateSetError(f"gates.{tube_kind}: a JSON object of population -> gate is required")
        for pop, gate in gates.items():
            auto = out["tubes"][tube_kind]["gates"].get(pop)
            if auto is None:
                raise GateSetError(f"gates.{tube_kind}: unknown or non-editable population {str(pop)[:60]!r}")
            if gate == auto:   # the base's own gate, sent back unchanged (the page sends every gate): kept as it is
                continue   # (an automatic polygon may reach beyond the bounds a moved gate must keep to)
            out["tubes"][tube_kind]["gates"][pop] = validate_gate(auto, gate, f"{tube_kind}/{pop}", stained[tube_kind].bounds)
        _decide(out["tubes"][tube_kind], entry.get("decided"), tube_kind, lambda: negative_calls().get(tube_kind, {}))
    return out


DECISIONS = ("positive", "negative", "undecided")
"""A reviewer's decisions on an undetermined gate (:func:`validate_gate_set`): the held positive call
accepted, the one population called negative (the negative call's cut), or the decision withdrawn."""


def _decide(entry: dict, decided: Any, tube_kind: str, negative_calls: Callable[[], Mapping[str, dict]]) -> None:
    """``entry`` (a tube of the new gate set, its submitted gates applied) with the submitted ``decided``
    applied (None: unchanged). A ``negative`` decision has its gate at the negative call's cut
    (``negative_calls()``: population -> that gate): a gate still as held is moved there; withdrawn, a gate still
    at the negative call's cut is held again. A ``positive`` decision keeps the held gate. Either decision, sent
    or kept from the base, with a cut of the reviewer's own is refused (one rule, one message, after the
    decisions are applied): the reviewer's cut decides the gate by itself (the page withdraws either on a drag)."""
    if decided is None:
        decided = {}
    if not isinstance(decided, Mapping):
        raise GateSetError(f"gates.{tube_kind}.decided: a JSON object of population -> one of {list(DECISIONS)} is required")
    held = entry.get("undetermined") or {}
    out = dict(entry.get("decided") or {})
    for pop, decision in decided.items():
        if pop not in held:
            raise GateSetError(f"gates.{tube_kind}.decided: {str(pop)[:60]!r} is no undetermined gate of this product "
                               f"(those are: {', '.join(held) or 'none'})")
        if decision not in DECISIONS:
            raise GateSetError(f"gates.{tube_kind}.decided.{pop}: {str(decision)[:60]!r} must be one of {list(DECISIONS)}")
        gates = entry["gates"]
        negative = negative_calls() if "negative" in (decision, out.get(pop)) else {}
        if decision == "negative":
            if pop not in negative:
                raise GateSetError(f"gates.{tube_kind}.decided.{pop}: 'negative' needs the negative call's cut, which "
                                   "the run did not record for this gate or which lies off the scale (outside the gate's "
                                   "bounds or above the detector's top, $PnR): move its cut instead")
            if gates[pop] == held[pop]:
                gates[pop] = negative[pop]
        elif out.get(pop) == "negative" and gates[pop] == negative.get(pop):
            gates[pop] = held[pop]   # a negative call withdrawn: the gate as held again
        if decision == "undecided":
            out.pop(pop, None)
        else:
            out[pop] = decision
    for pop, decision in out.items():   # a decision sent or kept from the base, with a gate of the reviewer's own
        if entry["gates"][pop] != (held[pop] if decision == "positive" else negative_calls().get(pop)):
            kept = "the held positive call's cut" if decision == "positive" else "the negative call's cut"
            raise GateSetError(f"gates.{tube_kind}.decided.{pop}: {decision!r} keeps {kept}, but the gate sent has a cut "
                               "of its own: send the gate as held, or withdraw the decision")
    if out:
        entry["decided"] = out
    else:
        entry.pop("decided", None)


def changed_gates(before: Mapping, after: Mapping) -> dict:
    """``{tube/population: {"before": gate, "after": gate}}`` for every gate that differs, and
    ``{tube/population decided: {"before": decision, "after": decision}}`` for every reviewer's decision
    on an undetermined gate that differs (None: none; :func:`validate_gate_set`)."""
    diff = {}
    for tube_kind, entry in after["tubes"].items():
        for pop, gate in entry["gates"].items():
            old = before["tubes"].get(tube_kind, {}).get("gates", {}).get(pop)
            if old != gate:
                diff[f"{tube_kind}/{pop}"] = {"before": old, "after": gate}
        was, now = before["tubes"].get(tube_kind, {}).get("decided") or {}, entry.get("decided") or {}
        for pop in sorted(set(was) | set(now)):
            if was.get(pop) != now.get(pop):
                diff[f"{tube_kind}/{pop} decided"] = {"before": was.get(pop), "after": now.get(pop)}
    return diff


def check_reason(text: Any, what: str = "reason") -> str:
    """Plain text, 3-2000 characters, no markup or control characters (refused, never stored)."""
    if not isinstance(text, str) or len(text.strip()) < 3:
        raise GateSetError(f"{what}: required (at least 3 characters)")
    text = text.strip()
    if len(text) > 2000:
        raise GateSetError(f"{what}: at most 2000 characters")
    if "<" in text or ">" in text:
        raise GateSetError(f"{what}: plain text only ('<' and '>' are refused so no markup or script is stored)")
    if any(ord(c) < 32 and c not in "\n\t" for c in text):
        raise GateSetError(f"{what}: control characters are not allowed")
    return text


def release_rows(results) -> list[dict]:
    """The review app's release rows; ``outcome``: as every output words it (``CriterionResult.result``)."""
    return [{"criterion": r.criterion.name, "rule": r.criterion.describe(),
             "value": None if math.isnan(r.value) else r.value, "shown": r.shown() or "NA", "outcome": r.result()}
            for r in results]

