"""Fixtures of the review-app tests: a processed output folder (two sample products) and a
database per backend: SQLite always, PostgreSQL when reachable (``TILPHENO_TEST_PG_URL``, else the
URL that ``.ci/review-services.sh`` wrote to ``.ci/pg_url``). In CI (``TILPHENO_REQUIRE_PG=1``)
an unreachable PostgreSQL fails the tests instead of skipping them. Also a login on a Flask test client and
the certificate of analysis as pdftotext reads it."""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_fcs"
PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-12", "carol": "carol-password-1", "root": "root-password-1",
             "dave": "dave-password-12"}
ROLES = {"alice": "reviewer", "bob": "analyst", "carol": "reviewer", "root": "admin", "dave": "reviewer"}
PRODUCTS = ("TIL001", "TIL002")
OOS_REASON = "released out of specification at the treating physician's request (QA rationale QA-OOS-7)"
"""An approval's out-of-specification justification (``oos_justification``): TIL001 fails CD3+ > 90 % (87.74)."""


def cheap_password_hashing() -> None:
    """argon2's CHEAPEST profile (made for tests) instead of RFC 9106's 64 MiB default: the same
    algorithm and checks, ~100x less CPU per login. Production code is not changed."""
    from argon2 import PasswordHasher, profiles

    from tilpheno.review import auth

    auth._HASHER = PasswordHasher.from_parameters(profiles.CHEAPEST)
    auth._DUMMY_HASH = ""


def approval_resolutions(service, pid: str) -> dict[str, str]:
    """A resolution of each warning or error QC flag of ``pid``, as an approval for release needs them."""
    flags = [f for f in service.source.qc_flags(pid) if f["severity"] in ("warning", "error")]
    return {f"{f['code']}:{f['file']}:{i}": "gate plots checked" for i, f in enumerate(flags)}


def standing_approval_id(service, pid: str) -> int | None:
    """The signature id of ``pid``'s standing approval for release (None: none): a save over it
    states that it voids that approval (``void_approval``), as the page does once the user agreed."""
    with service.factory() as db:
        sig = service.standing(db, pid, "approved for release")
    return sig.id if sig is not None else None


def pg_url() -> str | None:
    url = os.environ.get("TILPHENO_TEST_PG_URL")
    if not url and (ROOT / ".ci" / "pg_url").exists():
        url = (ROOT / ".ci" / "pg_url").read_text().strip()
    return url or None


def _admin(url: str, sql: str) -> None:
    from sqlalchemy import create_engine, text

    from tilpheno.review.db import normalise_url

    engine = create_engine(normalise_url(url.split("?")[0]))
    with engine.begin() as conn:
        conn.execute(text(sql))
    engine.dispose()


def fresh_schema(url: str) -> str:
    """A new, empty PostgreSQL schema for one test module (concurrent test runs on one machine do
    not see each other); the returned URL puts it first on the search path."""
    schema = "t_" + uuid.uuid4().hex[:16]
    _admin(url, f"CREATE SCHEMA {schema}")
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def drop_schema(url: str) -> None:
    if url.startswith("postgres") and "search_path%3D" in url:
        _admin(url, f"DROP SCHEMA IF EXISTS {url.split('search_path%3D')[1]} CASCADE")


def database_url(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'review.sqlite'}"
    url = pg_url()
    reason = "PostgreSQL not available: no TILPHENO_TEST_PG_URL and no .ci/pg_url (run `make services` as root)"
    if url:
        try:
            url = fresh_schema(url)
        except Exception as exc:  # connection refused, ...
            reason = f"PostgreSQL at {url.split('@')[-1]} not reachable: {type(exc).__name__}"
            url = None
    if url is None:
        if os.environ.get("TILPHENO_REQUIRE_PG"):
            pytest.fail(reason)
        pytest.skip(reason)
    return url


def processed_out(tmp: Path, products: tuple[str, ...], without_fmo: str = "") -> Path:
    """``tilpheno process`` of ``products`` of the sample (tables only) into ``tmp/out``; without
    their FMO files of marker ``without_fmo``, if given (its gates fall back: flagged for review)."""
    from tilpheno.pipeline import process_folder

    manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
    subset = manifest[manifest["product_id"].isin(products)].copy()
    if without_fmo:
        subset = subset[subset["fmo_marker"] != without_fmo]
    subset["file"] = [str(SAMPLE / f) for f in subset["file"]]
    subset.to_csv(tmp / "manifest.csv", index=False)
    out = tmp / "out"
    summary = process_folder(SAMPLE, out, manifest_csv=tmp / "manifest.csv", outcomes_path=SAMPLE / "outcomes.csv",
                             allow_unmatched=True, make_reports=False)
    assert summary.ok, summary.failed
    return out


def processed_with_stained_control(tmp: Path, pid: str) -> tuple[Path, Path, pd.DataFrame]:
    """``pid``'s sample files copied into ``tmp/in``, its unstained control replaced by a copy of its
    stained surface tube (its events lie above the positive cuts: flagged ``unstained_positive``),
    processed (tables only) into ``tmp/out``: (the output folder, the inputs folder, the product's
    manifest rows, files by name)."""
    from tilpheno.pipeline import process_folder

    inputs = tmp / "in"
    inputs.mkdir()
    manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
    manifest = manifest[manifest["product_id"] == pid].copy()
    for name, role in zip(manifest["file"], manifest["role"]):
        shutil.copy(SAMPLE / (f"{pid}_surface_stain.fcs" if role == "unstained" else name), inputs / name)
    manifest.to_csv(tmp / "manifest.csv", index=False)
    summary = process_folder(inputs, tmp / "out", manifest_csv=tmp / "manifest.csv", make_reports=False)
    assert summary.ok, summary.failed
    return tmp / "out", inputs, manifest


@pytest.fixture(scope="session")
def review_out(tmp_path_factory):
    """``tilpheno process`` of two sample products (tables only), as the review app reads it."""
    return processed_out(tmp_path_factory.mktemp("review"), PRODUCTS)


@pytest.fixture(scope="session")
def flagged_out(tmp_path_factory):
    """TIL002 processed without its CD3 FMO file: its CD3+ gate falls back (missing_fmo,
    fallback_gate: needs review) and every release criterion passes on the automatic gates."""
    return processed_out(tmp_path_factory.mktemp("flagged"), ("TIL002",), without_fmo="CD3")


@pytest.fixture(scope="session")
def review_source(review_out):
    """The output folder loaded once (its automatic gates and loaded tubes are shared by every database)."""
    from tilpheno.review.regate import ReviewSource

    return ReviewSource(review_out)


@pytest.fixture(scope="module")
def processed_once(tmp_path_factory):
    """``processed_once(name, process)``: a folder that ``process(folder)`` fills (a pipeline run),
    made once per module, not once per test and backend: each later call first puts it back as the
    run left it, at the same path (from a copy taken after the run), so its run.json, cache and every
    recorded path are that run's own and a test may change it (replace an input, process it again)
    without another test seeing that."""
    made: dict[str, tuple[Path, Path]] = {}

    def folder(name, process):
        if name in made:
            work, kept = made[name]
            shutil.rmtree(work)
            shutil.copytree(kept, work, symlinks=True)
            return work
        work = tmp_path_factory.mktemp(name)
        process(work)
        kept = tmp_path_factory.mktemp(f"{name}_as_run")
        shutil.copytree(work, kept, symlinks=True, dirs_exist_ok=True)
        made[name] = (work, kept)
        return work
    return folder


def make_service(out: Path, url: str, source=None, clock=None):
    """A review service (its clock ``clock``, :class:`tilpheno.review.audit.Clock`; default the servers')
    with the users of :func:`service_on` and TIL001 assigned to bob."""
    from tilpheno.review.auth import create_user
    from tilpheno.review.models import ProductAssignment
    from tilpheno.review.server import build_service
    from tilpheno.review.service import transaction

    cheap_password_hashing()
    service = build_service(out, url, source=source, **({} if clock is None else {"clock": clock}))

    def add(db):
        for name, role in ROLES.items():
            create_user(db, name, name.capitalize() + " Tester", role, PASSWORDS[name], service.clock)
            service.append(db, "test", "user_added", after={"username": name, "role": role})
        db.flush()
        db.add(ProductAssignment(product_id="TIL001", username="bob", assigned_by="test",
                                 assigned_at=service.clock.stamp(db)))
    transaction(service.factory, add)
    return service


@contextmanager
def service_on(kind: str, tmp_path: Path, source, clock=None):
    """A review service over ``source`` (a loaded output folder) with a new ``kind`` database ("sqlite" in
    ``tmp_path``, or "postgresql") holding users alice/carol (reviewer), bob (analyst), root (admin) and dave
    (a reviewer who never saves gates: the second person of the four-eyes rule); the database dropped after.
    ``clock``: the service's (:func:`make_service`)."""
    url = database_url(kind, tmp_path)
    svc = make_service(source.out_dir, url, source, clock)
    try:
        yield svc
    finally:
        svc.factory.kw["bind"].dispose()
        drop_schema(url)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service(request, review_source, tmp_path_factory):
    """A review service over ``review_out`` (:func:`service_on`), shared by a module's tests."""
    with service_on(request.param, tmp_path_factory.mktemp("db"), review_source) as svc:
        yield svc


@pytest.fixture(scope="session")
def source3(tmp_path_factory):
    """Three processed sample products (TIL001-TIL003: a batch's source and two targets), loaded once."""
    from tilpheno.review.regate import ReviewSource

    return ReviewSource(processed_out(tmp_path_factory.mktemp("three"), PRODUCTS + ("TIL003",)))


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_service(request, source3, tmp_path):
    """A review service over :func:`source3` with a new, empty database per test (users as :func:`service_on`)."""
    with service_on(request.param, tmp_path, source3) as svc:
        yield svc


def logged_in_client(app, name):
    """A Flask test client of ``app`` logged in as ``name`` through the login form (its CSRF token posted, the
    password checked, the session made and audited by the app): (the client, the login's answer)."""
    import re

    c = app.test_client()
    page = c.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = c.post("/login", data={"username": name, "password": PASSWORDS[name], "csrf_token": csrf, "next": "/"})
    assert r.status_code == 302, r.text
    return c, r


def login(app, name):
    """``name`` logged in on a Flask test client of ``app`` (:func:`logged_in_client`): (the client, the header
    carrying the session's CSRF token, the login's answer)."""
    import re

    c, r = logged_in_client(app, name)
    home = c.get("/")
    token = re.search(r'name="csrf_token" value="([^"]+)"', home.text).group(1)
    return c, {"X-CSRF-Token": token}, r


def certificate_text(service, tmp_path: Path, issued=None, pid: str = "TIL001") -> tuple[str, str]:
    """The certificate of ``pid`` as pdftotext reads it: ``(flowing text with the lines that end in
    '_', '-', '.' or '/' joined to the next, the text laid out as printed, pages split by form
    feeds)``; skips without poppler-utils."""
    import re
    import subprocess

    from tilpheno.review import certificate

    if not shutil.which("pdftotext"):
        pytest.skip("poppler-utils not installed (`make services` installs it): the PDF's text not checked")
    pdf = tmp_path / "c.pdf"
    pdf.write_bytes(certificate.certificate_pdf(service, pid, issued))
    flowing, layout = (subprocess.run(["pdftotext", *options, str(pdf), "-"], check=True, capture_output=True,
                                      text=True).stdout for options in ([], ["-layout"]))
    return re.sub(r"(?<=[_\-./])\n", "", flowing), layout
