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
    """What the run came to, for ``run.json``'s ``result``: ``ok`` (every product done and no
    error of the run itself: ``process`` exits 0), the products ``done``, the ``failed`` ones with
    their reasons, and the run's own ``errors`` (e.g. a folder it could not list)."""
    failed = {o.product_id: o.error for o in outcomes if not o.ok}
    errors = [f.message for f in run_flags if f.severity == "error"]
    return {"ok": not failed and not errors, "done": [o.product_id for o in outcomes if o.ok], "failed": failed,
            "errors": errors}


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
        params = run["parameters"]
        known = set(pd.read_parquet(out_dir / "phenotypes.parquet", columns=["product_id"])["product_id"].astype(str))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TilphenoError(f"{out_dir}: no readable run of `tilpheno process` here ({exc})") from None
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
        "folder": Path(params["input_folder"]), "manifest": Path(params["manifest"]) if params.get("manifest") else None,
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
