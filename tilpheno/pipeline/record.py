"""Provenance of a ``process`` run: the parameters recorded in ``run.json`` when it starts, the
record completed and written last, and the arguments read back from it (``tilpheno report``)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from tilpheno.errors import TilphenoError
from tilpheno.provenance import RunRecord
from tilpheno.release import ReleaseSpec
from tilpheno.study import Study


def start_run_record(*, folder: str | Path, manifest_csv: str | Path | None, outcomes_path: str | Path | None,
                     fmo_percentile: float, include_identifiers: bool, executor: str, n_jobs: int,
                     overwrite: bool, allow_unmatched: bool, allow_outside: bool, reports: str | None,
                     make_reports: bool, use_cache: bool, compensation_path: str | Path | None, study: Study,
                     panel_path: str | Path | None, strategy_paths: Sequence[Path], spec: ReleaseSpec,
                     command_line: list[str] | None) -> RunRecord:
    """The run's record (:func:`tilpheno.provenance.start_record`) with the ``process`` parameters
    :func:`rerun_arguments` reads back, the strategies and the release spec, and
    ``parameter_files``: the SHA-256 of the manifest, outcomes and compensation files given, which
    :func:`rerun_arguments` checks. They are kept out of ``parameters`` (whose short form every
    report shows, and so every product's cache key holds): a manifest or outcomes table that
    gained another product's rows must not make the unchanged products new ones."""
    from tilpheno.cache import code_digest
    from tilpheno.provenance import sha256_file, start_record

    record = start_record(
        command_line=command_line, code_sha256=code_digest(),
        parameters={
            "input_folder": str(folder), "manifest": str(manifest_csv or ""),
            "outcomes": str(outcomes_path or ""), "fmo_percentile": fmo_percentile,
            "include_identifiers": include_identifiers, "executor": executor, "jobs": n_jobs,
            "overwrite": overwrite, "allow_unmatched": allow_unmatched, "allow_outside": allow_outside,
            "reports": reports or ("now" if make_reports else "none"), "cache": use_cache,
            "compensation": str(compensation_path or ""),
            "study": study.source, "study_sha256": study.sha256, "panel": str(panel_path or ""),
            "panel_sha256": sha256_file(panel_path) if panel_path else "",
        },
        strategy_paths=strategy_paths,
        release_spec={"name": spec.name, "source": spec.source, "sha256": spec.sha256,
                      "criteria": [c.describe() for c in spec.criteria]},
    )
    record.extra["parameter_files"] = {name: sha256_file(path) for name, path in (
        ("manifest", manifest_csv), ("outcomes", outcomes_path), ("compensation", compensation_path)) if path}
    return record


def run_result(outcomes: Sequence, run_flags: Sequence = ()) -> dict:
    """What the run came to, for ``run.json``'s ``result``: ``ok`` (every product done, every input
    file read and used, no error of the run itself: ``process`` exits 0), the products ``done``, the
    ``failed`` ones with their reasons, the run's own ``errors`` (e.g. a folder it could not list),
    the ``unreadable`` input files (:func:`unreadable_inputs`) and the ``unusable`` ones
    (:func:`unusable_inputs`)."""
    failed = {o.product_id: o.error for o in outcomes if not o.ok}
    errors = [f.message for f in run_flags if f.severity == "error"]
    unreadable, unusable = unreadable_inputs(outcomes), unusable_inputs(outcomes)
    return {"ok": not failed and not errors and not unreadable and not unusable,
            "done": [o.product_id for o in outcomes if o.ok], "failed": failed, "errors": errors,
            "unreadable": unreadable, "unusable": unusable}


def unreadable_inputs(outcomes: Sequence) -> list[str]:
    """Each input file of a product that could not be read (``unreadable_file``), as
    ``'<product>: <file>: <problem>'``: the product may be done without it (an FMO file: its gate
    falls back, flagged), but the run did not read every input it was given, so it is not ``ok``."""
    return [f"{f.product_id}: {f.file}: {f.message}" for o in outcomes for f in o.qc if f.code == "unreadable_file"]


def unusable_inputs(outcomes: Sequence) -> list[str]:
    """Each input file that was read but dropped by a product done without it, for an input error
    (``FILE_ERROR_CODES`` but ``unreadable_file``: a panel or compensation error, an FMO that is its
    stained file copied), as ``'<product>: <file>: <code>: <problem>'``: its gates fell back (flagged,
    release not evaluable), but the run did not use every input it was given, so it is not ``ok``,
    as with an unreadable file. A failed product's dropped files are named by its failure."""
    from tilpheno.pipeline.product import FILE_ERROR_CODES

    return [f"{f.product_id}: {f.file}: {f.code}: {f.message}" for o in outcomes if o.ok for f in o.qc
            if f.code in FILE_ERROR_CODES and f.code != "unreadable_file"]


def write_run_record(path: Path, record: RunRecord, outcomes: Sequence, *, cache: dict, folder: Any,
                     t0: float, run_flags: Sequence = ()) -> None:
    """Complete ``record`` (what the run came to, :func:`run_result`; what the cache did, every
    input's digest, the duration since ``t0`` in ``time.perf_counter`` seconds, the output folder's
    changes) and write it atomically to ``path``."""
    from tilpheno.io import atomic

    record.extra["result"] = run_result(outcomes, run_flags)
    record.extra["cache"] = cache
    record.finish({d.path: d for o in outcomes for d in o.files}.values(),   # shared control files once
                  time.perf_counter() - t0)
    record.extra.update(folder.record())
    atomic.write_text(path, record.to_json())


_RUN_FIELDS: dict[str, type] = {"parameters": dict, "strategies": list, "release_spec": dict, "inputs": list,
                                "parameter_files": dict, "report_commands": list, "command_line": list,
                                "product_files": dict, "product_file_roles": dict}
"""The shape of the ``run.json`` fields read back (:func:`check_run_record`); a field may be absent."""
_PARAMETER_TYPES: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(("input_folder", "manifest", "outcomes", "study", "study_sha256", "panel", "panel_sha256",
                     "compensation", "executor", "reports"), str),
    "fmo_percentile": (int, float), "jobs": int,
    **dict.fromkeys(("include_identifiers", "overwrite", "allow_unmatched", "allow_outside", "cache"), bool)}
"""The type of each ``parameters`` entry of ``run.json`` read back; an entry may be absent."""
_KIND_NAMES = {str: "text", bool: "true or false", int: "an integer", dict: "an object", list: "a list"}
_FILE_ENTRIES = ("strategies", "inputs")
"""The ``run.json`` lists whose items are files: each a dict with a text ``path`` and ``sha256``."""
_HAND_EDITED = "(edited by hand? `tilpheno process` writes it)"


def _type_problem(value: Any, kind: type | tuple[type, ...]) -> bool:
    """True when ``value`` (read from JSON) is not of ``kind``; a JSON true/false is a number of no kind."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)


def check_run_record(run: Any, where: str | Path) -> dict:
    """``run`` (a ``run.json`` as parsed) when each field that :func:`rerun_arguments`, the review
    app and the biomarker commands read back has the type ``process`` writes (:data:`_RUN_FIELDS`,
    :data:`_PARAMETER_TYPES`, the files of :data:`_FILE_ENTRIES`, ``release_spec`` and
    ``parameter_files`` entries text); absent fields are left to the reader (an older run may lack
    some). Raises ``TilphenoError`` naming ``where`` and the first wrong field (a hand-edited record)."""
    def wrong(field: str, value: Any, expected: str) -> TilphenoError:
        return TilphenoError(f"{where}: field {field} is {type(value).__name__} {_json_text(value)}, not {expected} "
                             f"{_HAND_EDITED}")

    if not isinstance(run, dict):
        raise wrong("(the whole record)", run, "an object")
    for name, kind in _RUN_FIELDS.items():
        if name in run and _type_problem(run[name], kind):
            raise wrong(name, run[name], _KIND_NAMES[kind])
    for name, kinds in _PARAMETER_TYPES.items():
        value = run.get("parameters", {}).get(name)
        if value is not None and _type_problem(value, kinds):
            raise wrong(f"parameters.{name}", value, "a number" if isinstance(kinds, tuple) else _KIND_NAMES[kinds])
    for name in _FILE_ENTRIES:
        for i, entry in enumerate(run.get(name, [])):
            if not isinstance(entry, dict) or _type_problem(entry.get("path"), str):
                raise wrong(f"{name}[{i}]", entry, "an object with a text path")
            if _type_problem(entry.get("sha256"), str):
                raise wrong(f"{name}[{i}].sha256", entry.get("sha256"), "text")
    for pid, files in run.get("product_files", {}).items():
        if not isinstance(files, dict) or any(_type_problem(p, str) for p in files.values()):
            raise wrong(f"product_files.{pid}", files, "an object of file label -> text path")
    for name, value in [*((f"release_spec.{k}", run.get("release_spec", {}).get(k, "")) for k in ("source", "sha256")),
                        *((f"parameter_files.{k}", v) for k, v in run.get("parameter_files", {}).items())]:
        if _type_problem(value, str):
            raise wrong(name, value, "text")
    return run


def _json_text(value: Any, limit: int = 40) -> str:
    """``value`` as JSON, cut to ``limit`` characters (for an error line)."""
    import json

    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _unreadable_run(exc: Exception) -> str:
    """Why a run folder's ``run.json`` or ``phenotypes.parquet`` could not be read, in words: a field
    missing, a file missing or not a file (its path and the cause, not Python's ``[Errno 2] ...``),
    a run.json cut short or not JSON."""
    import json

    from tilpheno.io.outdir import describe_os_error

    if isinstance(exc, KeyError):
        return f"run.json has no field {exc}"
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    if isinstance(exc, json.JSONDecodeError):
        return f"run.json is not complete JSON: {exc}"
    return str(exc)


def rerun_arguments(out_dir: str | Path) -> tuple[dict, set[str]]:
    """The arguments of the ``process`` run recorded in ``OUT/run.json`` (input folder, manifest,
    outcomes, strategies, release spec, FMO percentile, identifiers, local jobs, and its input
    files as ``run_inputs``: no other file may join the run; its command lines as ``rerun_of``, for
    :func:`keep_run_command`), and the run's product ids; for ``tilpheno report``. Raises
    ``TilphenoError`` when OUT holds no readable run or an input file, the study, a strategy,
    release spec, panel, manifest, outcomes or compensation file changed since (the results would
    no longer be that run's)."""
    import json

    import pandas as pd

    from tilpheno.provenance import sha256_file
    from tilpheno.release import spec_path
    from tilpheno.vocabulary import STUDIES_DIR

    out_dir = Path(out_dir)
    try:
        run = json.loads((out_dir / "run.json").read_text(encoding="utf-8"))
        params = check_run_record(run, out_dir / "run.json")["parameters"]
        known = set(pd.read_parquet(out_dir / "phenotypes.parquet", columns=["product_id"])["product_id"].astype(str))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TilphenoError(f"{out_dir}: no readable run of `tilpheno process` here ({_unreadable_run(exc)})") from None
    folder = params.get("input_folder")
    if folder is None:
        raise TilphenoError(f"{out_dir / 'run.json'}: field parameters.input_folder is missing {_HAND_EDITED}")
    if "inputs" not in run:   # written before run.json listed the input files: which files were the run's is unknown
        raise TilphenoError(f"{out_dir / 'run.json'}: field inputs (the run's input files) is missing: a record of an "
                            "older tilpheno, whose run cannot be drawn again as it was; run `tilpheno process` again")
    for what, path, digest in [("strategy", s["path"], s["sha256"]) for s in run.get("strategies", [])] + (
            [("release spec", run["release_spec"]["source"], run["release_spec"]["sha256"])]
            if run.get("release_spec", {}).get("sha256") else []) + (
            [("study", params["study"], params["study_sha256"])] if params.get("study_sha256") else []) + (
            [("panel file", params["panel"], params["panel_sha256"])] if params.get("panel_sha256") else []) + [
            (f"{name} file", params.get(name, ""), digest) for name, digest in (run.get("parameter_files") or {}).items()]:
        try:
            same = sha256_file(spec_path(path) if what in ("release spec", "study") else path) == digest
        except OSError:
            same = False
        if not same:
            raise TilphenoError(f"{path}: {what} changed or missing since the run in {out_dir}; run `tilpheno process` again")
    changed = changed_inputs(out_dir, run)
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise TilphenoError(f"{changed[0]}: input file changed or missing since the run in {out_dir}{more}; "
                            "run `tilpheno process` again")
    jobs = int(params.get("jobs", 1)) if params.get("executor", "local") == "local" else 1
    kwargs = {
        "folder": Path(folder), "manifest": Path(params["manifest"]) if params.get("manifest") else None,
        "outcomes": Path(params["outcomes"]) if params.get("outcomes") else None,
        "strategy": [Path(s["path"]) for s in run.get("strategies", [])] or None,
        # a bundled spec came with the (bundled) study; a spec file given on its own is passed again
        "release_spec": (Path(run["release_spec"]["source"]) if run.get("release_spec", {}).get("sha256")
                         and not str(run["release_spec"]["source"]).endswith(" (bundled)") else None),
        "study": (str(STUDIES_DIR / params["study"].removesuffix(" (bundled)")) if str(params.get("study", "")).endswith(" (bundled)")
                  else params.get("study") or None),
        "panel": Path(params["panel"]) if params.get("panel") else None,
        "fmo_percentile": float(params.get("fmo_percentile", 99.5)),
        "include_identifiers": bool(params.get("include_identifiers", False)), "jobs": max(jobs, 1),
        "compensation": Path(params["compensation"]) if params.get("compensation") else None,
        "allow_unmatched": bool(params.get("allow_unmatched", False)),
        "allow_outside": bool(params.get("allow_outside", False)),
        "run_inputs": [str(i["path"]) for i in run.get("inputs", [])],
        "rerun_of": {"command_line": run.get("command_line"), "report_commands": run.get("report_commands", []),
                     "parameters": {k: params[k] for k in ("overwrite", "reports") if k in params}},
    }
    return kwargs, known


def keep_run_command(record: RunRecord, rerun_of: Mapping[str, Any], products: Iterable[str] | None) -> None:
    """A run drawn again (``tilpheno report``; ``rerun_of`` from :func:`rerun_arguments`) keeps the
    ``process`` command line and its ``overwrite``/``reports`` parameters in ``record``; this
    call's command line, start time and products (``all`` for every one) are added to
    ``report_commands``, after those of earlier draws."""
    this = {"command_line": record.command_line, "started_at": record.started_at,
            "products": sorted(map(str, products)) if products else "all"}
    record.command_line = list(rerun_of.get("command_line") or record.command_line)
    record.parameters.update(rerun_of.get("parameters") or {})
    record.extra["report_commands"] = [*(rerun_of.get("report_commands") or []), this]


def changed_inputs(out_dir: Path, run: Mapping[str, Any]) -> list[str]:
    """The input files a ``process`` run recorded (``inputs`` of its ``run.json`` dict ``run``) whose
    SHA-256 differs now, or that are no longer readable regular files; a file whose stat identity is
    unchanged keeps the digest OUT's cache recorded (not hashed again). A file the run could not
    open (recorded :data:`~tilpheno.provenance.UNREADABLE`: a manifest's missing file) and still
    cannot is unchanged."""
    from tilpheno.cache import ProductStore
    from tilpheno.provenance import UNREADABLE

    digests = ProductStore(out_dir, read=True).inputs()
    return [str(i["path"]) for i in run.get("inputs", [])
            if (digests.sha256(str(i["path"])) or UNREADABLE) != i.get("sha256")]


def run_study(run: Mapping[str, Any], where: str | Path = "run.json") -> Study:
    """The study a ``process`` run used (``parameters.study`` of its ``run.json`` dict ``run``),
    checked against the recorded SHA-256; the bundled default for a run that recorded none.
    ``TilphenoError`` naming ``where`` when it cannot be loaded or changed since the run."""
    from tilpheno.study import default_study, load_study
    from tilpheno.vocabulary import STUDIES_DIR

    params = run.get("parameters", {})
    source = str(params.get("study") or "")
    if not source:
        return default_study()
    bundled = source.endswith(" (bundled)")
    try:
        study = load_study(STUDIES_DIR / source.removesuffix(" (bundled)") if bundled else Path(source))
    except TilphenoError as exc:
        raise TilphenoError(f"{where}: the run's study {source} cannot be loaded ({exc})") from None
    if params.get("study_sha256") and study.sha256 != params["study_sha256"]:
        raise TilphenoError(f"{where}: study {source} changed since the run (its SHA-256 differs)")
    return study
