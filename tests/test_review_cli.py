"""Review CLI on SQLite (and PostgreSQL where a test says): users (stdin passwords, list, unlock), audit verify (exit 1 on tampering) and
export, export-approved; the Alembic migration creates exactly the ORM's schema."""
from __future__ import annotations

import json
from contextlib import contextmanager
import sqlite3
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from review_support import database_url, drop_schema, review_out  # noqa: F401  (fixture)
from tilpheno.cli import app

runner = CliRunner()


def run(*args, stdin=None):
    return runner.invoke(app, [str(a) for a in args], input=stdin)


def test_users_audit_and_export_commands(review_out, tmp_path):
    db = f"sqlite:///{tmp_path / 'r.sqlite'}"
    r = run("users", "add", review_out, "dana", "--role", "reviewer", "--full-name", "Dana QA", "--password-stdin", "--db", db,
            stdin="dana-password-1\n")
    assert r.exit_code == 0, r.output
    r = run("users", "add", review_out, "eve", "--role", "boss", "--password-stdin", "--db", db, stdin="eve-password-1\n")
    assert r.exit_code == 2 and "role 'boss': one of analyst, reviewer, admin" in r.output
    r = run("users", "add", review_out, "eve", "--role", "analyst", "--password-stdin", "--db", db, stdin="short\n")
    assert r.exit_code == 2 and "at least 10 characters" in r.output
    r = run("users", "list", review_out, "--db", db)
    assert r.output.splitlines() == ["dana\treviewer\tactive\tDana QA\t\tevery product"], r.output
    r = run("users", "unlock", review_out, "dana", "--db", db)   # never locked: nothing to do, nothing audited
    assert r.exit_code == 0 and r.output.splitlines() == ["user dana: unchanged, not locked"], r.output
    r = run("users", "assign", review_out, "dana", "TIL001", "TIL404", "--db", db)
    assert r.exit_code == 2 and "no product(s) 'TIL404'" in r.output
    r = run("users", "assign", review_out, "dana", "TIL001", "--db", db)
    # the note named the role after an article ('is a admin' for an admin): the role is named without one
    assert r.exit_code == 0 and "note: dana's role is reviewer: reviewers and admins see every product" in r.output, r.output
    assert "no user 'zed'" in run("users", "unlock", review_out, "zed", "--db", db).output
    r = run("audit", "verify", review_out, "--db", db)
    assert r.exit_code == 0 and "audit trail intact: 2 entries" in r.output
    r = run("audit", "export", review_out, "-o", tmp_path / "audit.csv", "--db", db)
    assert r.exit_code == 0
    lines = (tmp_path / "audit.csv").read_text().splitlines()
    assert lines[0].startswith("seq,at,username,action") and "user_added" in lines[1]
    assert ",assign," in lines[2]
    r = run("export-approved", review_out, "-o", tmp_path / "approved", "--db", db)
    assert r.exit_code == 0 and "0 approved product(s) of 2" in r.output
    assert "not approved" in (tmp_path / "approved" / "phenotypes_approved.csv").read_text()
    # tamper with the first entry behind the triggers' back
    con = sqlite3.connect(tmp_path / "r.sqlite")
    con.execute("DROP TRIGGER audit_entries_no_update")
    con.execute("UPDATE audit_entries SET username = 'mallory' WHERE seq = 1")
    con.commit()
    con.close()
    r = run("audit", "verify", review_out, "--db", db)
    assert r.exit_code == 1 and "entry 1: content does not match its hash (edited)" in r.output


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_trail_written_by_servers_clocks_still_verifies_with_entries_timed_by_the_database(kind, review_out, tmp_path):
    """Entries' ``at`` came from the writing server's clock; new entries' ``at`` is the database's
    clock (PostgreSQL's ``clock_timestamp()``; SQLite: the machine's, as before). A trail written
    before the change (here: its entry's ``at`` read from a machine clock 10 minutes ahead, as a
    skewed server wrote it) keeps its hashes: with a new entry after it, 10 minutes earlier by its
    ``at``, ``tilpheno audit verify`` still passes. On PostgreSQL the new entry's ``at`` is within
    5 s of the database's clock."""
    from sqlalchemy import select, text

    from tilpheno.review import audit
    from tilpheno.review.db import open_database
    from tilpheno.review.models import AuditEntry, utc
    from tilpheno.review.service import transaction

    db = database_url(kind, tmp_path)
    try:
        factory = open_database(db)   # the old code: each entry's time by its server's clock, here 10 min ahead
        transaction(factory, lambda s: audit.append(s, "root", "user_added", after={"username": "dana"},
                                                    clock=audit.Clock.shared(lambda: time.time() + 600.0)))
        assert run("users", "add", review_out, "kim", "--role", "analyst", "--password-stdin", "--db", db,
                   stdin="kim-password-12\n").exit_code == 0
        with factory() as s:
            old, new = s.scalars(select(AuditEntry).order_by(AuditEntry.seq)).all()
            now = float(s.scalar(text("SELECT EXTRACT(EPOCH FROM clock_timestamp())"))) if kind == "postgresql" else time.time()
        factory.kw["bind"].dispose()
        assert (old.action, new.action) == ("user_added", "user_added") and new.at < old.at
        assert utc(now - 5.0) <= new.at <= utc(now)
        r = run("audit", "verify", review_out, "--db", db)
        assert r.exit_code == 0 and "audit trail intact: 2 entries" in r.output, r.output
    finally:
        drop_schema(db)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_audit_export_is_itself_audited_after_the_copy(kind, review_out, tmp_path):
    """`audit export` handed out a copy of the whole trail and recorded nothing (a copy of records
    given out is itself a record in GMP). Now, once the file is written, an ``audit_export`` entry:
    who (cli:LOGIN), the file, the entries it holds and the SHA-256 of its bytes. The copy does not
    hold its own entry; the next copy does; the chain still verifies."""
    import csv
    import hashlib

    from sqlalchemy import select

    from tilpheno.review import audit
    from tilpheno.review.cli import _actor
    from tilpheno.review.db import open_database
    from tilpheno.review.models import AuditEntry

    db = database_url(kind, tmp_path)
    try:
        assert run("users", "add", review_out, "dana", "--role", "reviewer", "--password-stdin", "--db", db,
                   stdin="dana-password-1\n").exit_code == 0
        copies = []
        for name in ("first.csv", "second.csv"):
            r = run("audit", "export", review_out, "-o", tmp_path / name, "--db", db)
            assert r.exit_code == 0, r.output
            copies.append(list(csv.DictReader((tmp_path / name).open(encoding="utf-8", newline=""))))
            seq = int(copies[-1][-1]["seq"]) + 1
            assert r.output == f"audit trail written to {tmp_path / name}; this export is audited as entry {seq} (audit_export)\n"
        assert [row["action"] for row in copies[0]] == ["user_added"]
        assert [row["action"] for row in copies[1]] == ["user_added", "audit_export"]
        factory = open_database(db)
        with factory() as s:
            entries = list(s.scalars(select(AuditEntry).where(AuditEntry.action == "audit_export").order_by(AuditEntry.seq)))
            assert audit.verify(s).ok
        factory.kw["bind"].dispose()
        assert [(e.seq, e.username) for e in entries] == [(2, _actor()), (3, _actor())]
        for entry, name, rows in zip(entries, ("first.csv", "second.csv"), copies):
            assert json.loads(entry.after_json) == {
                "file": str(tmp_path / name), "sha256": hashlib.sha256((tmp_path / name).read_bytes()).hexdigest(),
                "first_seq": int(rows[0]["seq"]), "last_seq": int(rows[-1]["seq"]), "open_windows": 0,
                "held_refusals": 0}
        assert copies[1][1]["after_json"] == entries[0].after_json   # the second copy holds the first's entry
    finally:
        drop_schema(db)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_audit_export_holds_the_counts_of_refusal_windows_over_since_the_server_stopped(kind, review_out, tmp_path):
    """A server stopping leaves its open refusal windows in the database (another server may still
    count into them); with no server running, `audit export` handed out a copy without the counts of
    the windows whose time was over since. Now it writes those first (``access_refused_repeated``,
    ``closed_at``: their time over); a window still open stays open, its count in the database, and
    the copy, which lacked that count, shows it after the entries, marked open (no ``seq``, action
    ``access_refused_repeated_open``, ``open``, ``closes_at``), written as no entry."""
    import csv

    from sqlalchemy import select

    from tilpheno.review import audit, refusals
    from tilpheno.review.db import open_database
    from tilpheno.review.models import AuditEntry, RefusalWindow, utc
    from tilpheno.review.service import transaction

    db = database_url(kind, tmp_path)
    opened = time.time() - refusals.WINDOW_S - 60.0   # refused a minute longer ago than a window lasts
    error = "role analyst cannot export the audit trail"
    factory = open_database(db)
    try:
        for clock, request in ((time.time, "GET /export/phenotypes.csv"), (lambda: opened, "GET /audit.csv")):
            rule = refusals.RefusalRule(clock=audit.Clock.shared(clock))
            for _ in range(3):
                transaction(factory, lambda s: refusals.record(s, rule, "bob", request, "", error))
        r = run("audit", "export", review_out, "-o", tmp_path / "audit.csv", "--db", db)
        assert r.exit_code == 0, r.output
        rows = list(csv.DictReader((tmp_path / "audit.csv").open(encoding="utf-8", newline="")))
        assert [(row["action"], json.loads(row["after_json"])["request"]) for row in rows] == [
            ("access_refused", "GET /export/phenotypes.csv"), ("access_refused", "GET /audit.csv"),
            ("access_refused_repeated", "GET /audit.csv"), ("access_refused_repeated_open", "GET /export/phenotypes.csv")]
        after = json.loads(rows[2]["after_json"])
        assert (after["count"], after["repeats_entry"], after["closed_at"]) == (
            2, int(rows[1]["seq"]), utc(opened + refusals.WINDOW_S))
        still = json.loads(rows[3]["after_json"])
        assert (rows[3]["seq"], rows[3]["entry_sha256"], still["count"], still["repeats_entry"], still["open"]) == (
            "", "", 2, int(rows[0]["seq"]), True)
        with factory() as s:
            (window,) = s.scalars(select(RefusalWindow)).all()   # the open window, still counting
            assert (window.count, still["closes_at"]) == (2, utc(window.opened + refusals.WINDOW_S))
            assert audit.verify(s).ok
            export = s.scalar(select(AuditEntry).where(AuditEntry.action == "audit_export"))
            assert json.loads(export.after_json)["open_windows"] == 1
    finally:
        factory.kw["bind"].dispose()
        drop_schema(db)


def test_audit_export_to_a_folder_is_one_line_naming_it(review_out, tmp_path):
    """`audit export OUT -o DIR` (a folder where the CSV should go) printed a Python traceback ending
    "IsADirectoryError: ... '/tmp/.x.part' -> 'DIR'" -> one line naming DIR, exit 2, nothing left in its folder."""
    db = f"sqlite:///{tmp_path / 'r.sqlite'}"
    assert run("users", "list", review_out, "--db", db).exit_code == 0
    target = tmp_path / "exports"
    target.mkdir()
    r = run("audit", "export", review_out, "-o", target, "--db", db)
    assert r.exit_code == 2 and r.output == f"error: {target}: Is a directory\n", r.output
    assert not any(p.name.endswith(".part") for p in tmp_path.iterdir()) and not any(target.iterdir())


def test_a_disk_full_while_exporting_is_one_line_naming_the_target(review_out, tmp_path, monkeypatch):
    """The disk fills while `audit export` or `export-approved` writes (simulated: fsync answers
    ENOSPC naming no file, as the system does). They said 'error: No space left on device (disk
    full)', naming nothing, and 'export to DEST: [Errno 28] No space left on device; ...' (Python's
    repr); now one line names -o and the cause in the words of every other command, nothing is
    left behind."""
    import errno
    import os

    db = f"sqlite:///{tmp_path / 'r.sqlite'}"
    assert run("users", "list", review_out, "--db", db).exit_code == 0
    target = tmp_path / "exports"
    target.mkdir()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    r = run("audit", "export", review_out, "-o", target / "audit.csv", "--db", db)
    assert r.exit_code == 2 and r.output == f"error: {target / 'audit.csv'}: No space left on device (disk full)\n", r.output
    r = run("export-approved", review_out, "-o", target / "approved", "--db", db)
    assert r.exit_code == 2 and r.output == (f"error: cannot export: {target / 'approved'}: No space left on device "
                                             "(disk full); nothing was exported and no certificate was audited\n"), r.output
    assert not any(target.iterdir())


def test_bad_database_url_is_one_line(review_out):
    r = run("users", "list", review_out, "--db", "mysql://x")
    assert r.exit_code == 2 and "use sqlite:///FILE or postgresql://" in r.output
    r = run("audit", "verify", review_out, "--db", "postgresql://nobody:pw@127.0.0.1:1/none")
    assert r.exit_code == 2 and "error: database postgresql+psycopg://nobody:***@127.0.0.1:1/none" in r.output


def test_assign_does_audits_and_reports_only_what_changes(review_out, tmp_path):
    """Withdrawing a product never assigned said "withdrew ..." and wrote an ``unassign`` entry for
    it, as did assigning one assigned already: the command, and the audit trail, now name only the
    assignments that changed, and the others as unchanged."""
    import csv

    db = f"sqlite:///{tmp_path / 'a.sqlite'}"
    assert run("users", "add", review_out, "ivy", "--role", "analyst", "--password-stdin", "--db", db,
               stdin="ivy-password-12\n").exit_code == 0
    r = run("users", "assign", review_out, "ivy", "TIL001", "--db", db)
    assert r.exit_code == 0 and r.output.splitlines() == ["assigned TIL001 to ivy"], r.output
    r = run("users", "assign", review_out, "ivy", "TIL001", "TIL002", "--db", db)
    assert r.output.splitlines() == ["assigned TIL002 to ivy", "unchanged: TIL001 already assigned to ivy"], r.output
    r = run("users", "assign", review_out, "ivy", "TIL002", "--remove", "--db", db)
    assert r.output.splitlines() == ["withdrew TIL002 from ivy"], r.output
    r = run("users", "assign", review_out, "ivy", "TIL002", "--remove", "--db", db)
    assert r.exit_code == 0 and r.output.splitlines() == ["unchanged: TIL002 not assigned to ivy"], r.output
    assert run("audit", "export", review_out, "-o", tmp_path / "audit.csv", "--db", db).exit_code == 0
    rows = list(csv.DictReader((tmp_path / "audit.csv").open()))
    assert [(row["action"], json.loads(row["after_json"]).get("products")) for row in rows] == [
        ("user_added", None), ("assign", ["TIL001"]), ("assign", ["TIL002"]), ("unassign", ["TIL002"])]



def test_users_list_shows_which_products_each_analyst_may_open(review_out, tmp_path):
    """`users list` showed no assignments: which analyst may open which product was only in the
    audit export. Each account's line now ends with its products: an analyst's assigned ones (none
    too), "every product" for reviewers and admins (with any assignment they hold, which counts only
    if made an analyst again); a withdrawal shows at once, and a disabled analyst keeps its list."""
    db = f"sqlite:///{tmp_path / 'l.sqlite'}"
    for name, role in (("ann", "analyst"), ("ben", "analyst"), ("rex", "reviewer")):
        assert run("users", "add", review_out, name, "--role", role, "--password-stdin", "--db", db,
                   stdin=f"{name}-password-12\n").exit_code == 0
    assert run("users", "assign", review_out, "ann", "TIL002", "TIL001", "--db", db).exit_code == 0
    assert run("users", "assign", review_out, "rex", "TIL001", "--db", db).exit_code == 0

    def products():
        r = run("users", "list", review_out, "--db", db)
        assert r.exit_code == 0, r.output
        return {line.split("\t")[0]: line.split("\t")[-1] for line in r.output.splitlines()}

    assert products() == {"ann": "products: TIL001, TIL002", "ben": "products: none",
                          "rex": "every product (assigned, counting only as an analyst: TIL001)"}
    assert run("users", "assign", review_out, "ann", "TIL002", "--remove", "--db", db).exit_code == 0
    assert run("users", "disable", review_out, "ann", "--db", db).exit_code == 0
    r = run("users", "list", review_out, "--db", db)
    assert "ann\tanalyst\tdisabled\tann\t\tproducts: TIL001" in r.output.splitlines(), r.output

def test_migration_creates_the_orm_schema(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from tilpheno.review.db import open_database
    from tilpheno.review.models import Base

    factory = open_database(f"sqlite:///{tmp_path / 'm.sqlite'}")
    with factory.kw["bind"].connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff


def test_serve_binds_localhost_by_default(review_out, tmp_path):
    """`tilpheno serve OUT` listens on 127.0.0.1 only (the port in /proc/net/tcp, local address 0100007F)."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "tilpheno.cli", "serve", str(review_out), "--port", str(port),
                             "--db", f"sqlite:///{tmp_path / 's.sqlite'}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(150):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError("serve did not answer")
        assert b'"ok":true' in body
        listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        local = {f[1] for f in listening if f[3] == "0A" and int(f[1].split(":")[1], 16) == port}
        assert local == {f"0100007F:{port:04X}"}
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def _at_revision(engine, revision: str):
    """A connection (one transaction) to ``engine``'s database migrated to ``revision`` only."""
    from alembic import command
    from alembic.config import Config

    from tilpheno.review.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        yield conn


def test_an_old_database_is_upgraded_by_the_migrations(tmp_path):
    """A database at revision 0001 gains the assignments table (0002), the signatures' out-of-specification
    justification (0003), the software they were made under (0004) and the open windows of refused requests
    (0005) when opened; data kept."""
    from sqlalchemy import inspect, text

    from tilpheno.review.db import make_engine, open_database

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = make_engine(url)
    with _at_revision(engine, "0001") as conn:
        conn.execute(text("INSERT INTO users (username, full_name, role, password_hash, failed_logins, active, created_at) "
                          "VALUES ('old', 'Old User', 'analyst', 'x', 0, 1, '2026-01-01T00:00:00.000000Z')"))
    assert "product_assignments" not in inspect(engine).get_table_names()
    engine.dispose()
    factory = open_database(url)
    with factory() as db:
        assert {"product_assignments", "refusal_windows"} <= set(inspect(db.bind).get_table_names())
        assert db.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0005"
        assert db.execute(text("SELECT full_name FROM users")).scalar() == "Old User"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_upgrades_assignments_are_timed_by_the_record_clock(kind, tmp_path):
    """The 0002 migration's assignments took the machine's clock (``datetime.now``) while every other
    time of the record, its ``schema_upgrade`` entry's too, is the record's clock (``audit.Clock``:
    PostgreSQL's; SQLite the machine's). Now the migration reads the clock ``open_database`` is
    given: injected at an instant the machine is not at, every assignment's ``assigned_at`` and the
    upgrade entry's ``at`` are that instant; the trail verifies."""
    from sqlalchemy import text

    from tilpheno.review import audit
    from tilpheno.review.db import make_engine, open_database
    from tilpheno.review.models import utc

    at = 1_900_000_000.25   # 2030-03-17: not the machine's now
    url = database_url(kind, tmp_path)
    try:
        engine = make_engine(url)
        with _at_revision(engine, "0001") as conn:
            conn.execute(text("INSERT INTO users (username, full_name, role, password_hash, failed_logins, active, "
                              "created_at) VALUES ('ann', 'Ann', 'analyst', 'x', 0, true, '2026-01-01T00:00:00.000000Z')"))
            for pid in ("TIL001", "TIL002"):
                conn.execute(text("INSERT INTO products (product_id, current_version, inputs_json, imported_at) "
                                  "VALUES (:p, 1, '[]', '2026-01-01T00:00:00.000000Z')"), {"p": pid})
        engine.dispose()
        factory = open_database(url, audit.Clock.shared(lambda: at))
        with factory() as db:
            assigned = db.execute(text("SELECT assigned_at FROM product_assignments")).scalars().all()
            upgraded = db.execute(text("SELECT at FROM audit_entries WHERE action = 'schema_upgrade'")).scalars().all()
            assert audit.verify(db).ok
        factory.kw["bind"].dispose()
        assert assigned == [utc(at)] * 2 and upgraded == [utc(at)], (assigned, upgraded)
    finally:
        drop_schema(url)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_upgrade_to_assignments_keeps_what_analysts_saw_and_is_audited(kind, review_out, tmp_path):
    """A database at revision 0001 (every analyst saw every product) upgraded to 0002 (analysts see
    their assignments): each analyst is assigned every product the database holds, so the upgrade
    takes nothing away, and the upgrade is one audit entry of user ``system`` naming both revisions,
    the assignments it made and what an admin still has to do; the chain stays intact."""
    from sqlalchemy import select, text
    from sqlalchemy.orm import Session

    from tilpheno.review import audit
    from tilpheno.review.db import make_engine, open_database
    from tilpheno.review.models import AuditEntry, User
    from tilpheno.review.regate import ReviewSource
    from tilpheno.review.service import ReviewService

    url = database_url(kind, tmp_path)
    try:
        engine = make_engine(url)
        with _at_revision(engine, "0001") as conn:
            for name, role in (("ann", "analyst"), ("rex", "reviewer"), ("abe", "analyst")):
                conn.execute(text("INSERT INTO users (username, full_name, role, password_hash, failed_logins, active, "
                                  "created_at) VALUES (:u, :u, :r, 'x', 0, true, '2026-01-01T00:00:00.000000Z')"),
                             {"u": name, "r": role})
            for pid in ("TIL001", "TIL002"):
                conn.execute(text("INSERT INTO products (product_id, current_version, inputs_json, imported_at) "
                                  "VALUES (:p, 1, '[]', '2026-01-01T00:00:00.000000Z')"), {"p": pid})
            with Session(bind=conn) as db:
                audit.append(db, "cli:admin", "user_added", after={"username": "ann"})
        engine.dispose()
        factory = open_database(url)
        with factory() as db:
            assert db.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0005"
            entries = list(db.scalars(select(AuditEntry).order_by(AuditEntry.seq)))
            assert audit.verify(db).ok
            ann = db.scalar(select(User).where(User.username == "ann"))
        assert [(e.username, e.action) for e in entries] == [("cli:admin", "user_added"), ("system", "schema_upgrade")]
        upgrade = entries[-1]
        assert json.loads(upgrade.before_json) == {"revision": "0001"}
        assert json.loads(upgrade.after_json) == {"revision": "0005", "assignments_added": [
            {"username": u, "product_id": p} for u in ("abe", "ann") for p in ("TIL001", "TIL002")]}
        assert upgrade.reason.startswith("review database schema upgraded from revision 0001 to 0005; analysts saw "
                                         "every product before revision 0002, so 4 assignment(s) keep what abe, ann saw")
        assert "tilpheno users assign OUT NAME PRODUCT" in upgrade.reason
        assert ReviewService(ReviewSource(review_out), factory).accessible(ann) == {"TIL001", "TIL002"}
        factory.kw["bind"].dispose()
        factory = open_database(url)   # at head already: no second entry
        with factory() as db:
            assert db.execute(text("SELECT count(*) FROM audit_entries")).scalar() == 2
        factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_upgrade_to_out_of_specification_justifications_keeps_every_signature_valid(kind, review_out, tmp_path,
                                                                                       monkeypatch):
    """A database at revision 0002 holding an out-of-specification approval justified in its comment
    (as signed then) gains the signatures' own justification field (0003) and the software they were
    made under (0004) when opened: the append-only signatures are not rewritten, the chain and every
    signature verify, the approval stands and is quoted with its comment, and says that the software
    it was made under was not recorded."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect, text

    from review_support import OOS_REASON, PASSWORDS, make_service
    from tilpheno.review import audit
    from tilpheno.review import service as module
    from tilpheno.review.db import MIGRATIONS, make_engine
    from tilpheno.review.server import build_service

    url = database_url(kind, tmp_path)
    try:
        service = make_service(review_out, url)
        monkeypatch.setattr(module, "_oos_refusal", lambda *args: "")   # the code at 0002: the comment justified it
        monkeypatch.setattr(module, "software_now", lambda: "")   # and recorded no software
        with service.factory() as db:
            dave = db.execute(text("SELECT id FROM users WHERE username = 'dave'")).scalar()
        sig = service.sign("TIL001", dave, PASSWORDS["dave"], "approved for release", 1, {}, OOS_REASON)
        monkeypatch.undo()
        service.factory.kw["bind"].dispose()
        engine = make_engine(url)
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:   # back to 0002: the table as that code made it
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0002")
            assert "oos_justification" not in {c["name"] for c in inspect(conn).get_columns("signatures")}
        engine.dispose()

        again = build_service(review_out, url)   # opened: upgraded to 0005
        with again.factory() as db:
            assert db.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0005"
            assert audit.verify(db).ok, audit.verify(db).problems
        [view] = again.signatures("TIL001")
        assert view.valid and view.row.signature_sha256 == sig.signature_sha256 and view.row.oos_justification == ""
        assert view.row.software == "" and view.note.startswith(
            f"{module.SOFTWARE_UNRECORDED} (signed before it was recorded; now tilpheno "), view.note
        assert again.approved_version("TIL001").version == 1
        again.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


def test_the_login_pages_users_add_command_runs_as_shown(review_out, tmp_path):
    """The login page tells how accounts are made; its command, with OUT and NAME filled in, works."""
    import re

    from tilpheno.review.server import build_service
    from tilpheno.review.web import create_app

    db = f"sqlite:///{tmp_path / 'r.sqlite'}"
    page = create_app(build_service(review_out, db)).test_client().get("/login").text
    shown = re.search(r"<code>tilpheno (users add [^<]+)</code>", page).group(1)
    args = shown.replace("analyst|reviewer|admin", "analyst").split()
    args = [str(review_out) if a == "OUT" else "fran" if a == "NAME" else a for a in args]
    r = run(*args, "--password-stdin", "--db", db, stdin="fran-password-1\n")
    assert r.exit_code == 0 and "user fran (analyst) added" in r.output, (shown, r.output)


def test_a_mistyped_output_folder_starts_no_database(review_out, tmp_path):
    """Without --db the database is OUT.review.sqlite beside OUT: a folder that holds no run (and has
    no database yet) is refused in one line, and no stray database file is made."""
    typo = tmp_path / "otu"
    typo.mkdir()
    r = run("users", "add", typo, "gil", "--role", "analyst", "--password-stdin", stdin="gil-password-12\n")
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines()[-1].startswith(f"error: {typo}: not a processed output folder (no run.json)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["otu"]
    r = run("audit", "verify", tmp_path / "nowhere")
    assert r.exit_code == 2 and not (tmp_path / "nowhere.review.sqlite").exists(), r.output


def test_a_new_default_database_is_announced(review_out, tmp_path):
    """The default database stays beside OUT's old place when OUT moves: a command that has to make
    a new one says so, naming it, so a moved run's review is not silently started afresh."""
    import shutil

    moved = tmp_path / "moved_out"
    shutil.copytree(review_out, moved)
    r = run("audit", "verify", moved)
    assert r.exit_code == 0 and "audit trail intact: 0 entries" in r.output, r.output
    assert f"note: no review database beside {moved}; a new, empty one is made: {moved}.review.sqlite" in r.output
    r = run("audit", "verify", moved)   # it exists now: no note
    assert r.exit_code == 0 and "note:" not in r.output, r.output


def test_a_database_file_left_by_a_full_disk_is_still_announced_as_new(review_out, tmp_path, monkeypatch):
    """The disk fills while ``users add`` makes the default database (simulated: SQLite has made
    the file, the schema's write answers ENOSPC). The file it left used to silence the note on the
    next run, which does make the new, empty database; the note now depends on the schema. And it
    left that file, with no table in it, beside OUT: a new database is now made whole (its schema in
    a temporary file, linked into place) or not at all, so nothing is left."""
    import errno
    import os
    import shutil

    import tilpheno.review.db as db

    out = tmp_path / "out"   # a copy: the shared fixture keeps no default database
    shutil.copytree(review_out, out)

    def full(engine):
        with engine.connect():   # SQLite makes the file
            pass
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    note = f"note: no review database beside {out}; a new, empty one is made: {out}.review.sqlite"
    with monkeypatch.context() as m:
        m.setattr(db, "upgrade", full)
        r = run("users", "add", out, "ann", "--role", "admin", "--password-stdin", stdin="ann-password-1\n")
    assert r.exit_code == 2 and note in r.output and "No space left on device" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]   # no database file, no temporary
    r = run("users", "add", out, "ann", "--role", "admin", "--password-stdin", stdin="ann-password-1\n")
    assert r.exit_code == 0 and note in r.output and "user ann (admin) added" in r.output, r.output
    r = run("users", "list", out)
    assert r.exit_code == 0 and "note:" not in r.output and "ann" in r.output, r.output


def test_a_new_database_is_made_on_a_file_system_without_hard_links(review_out, tmp_path, monkeypatch):
    """The new database is linked into place (os.link); where the file system has no hard links
    (some network shares answer EPERM) the first command failed on it -> renamed into place; the
    database holds its schema and the user, no temporary is left."""
    import errno
    import os
    import shutil

    out = tmp_path / "out"
    shutil.copytree(review_out, out)

    def no_links(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM), str(src), None, str(dst))

    monkeypatch.setattr(os, "link", no_links)
    r = run("users", "add", out, "ann", "--role", "admin", "--password-stdin", stdin="ann-password-1\n")
    assert r.exit_code == 0 and "user ann (admin) added" in r.output, r.output
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "out.review.sqlite" in left and not [n for n in left if "creating" in n], left
    assert "ann" in run("users", "list", out).output


def test_two_creators_on_a_file_system_without_hard_links_keep_one_database(tmp_path):
    """Where the file system has no hard links (os.link: EPERM) the new database was renamed into
    place if ``not path.exists()``: two commands making it at once could both find it missing, and
    the second's rename replaced the first's database after the first had audited into it (here:
    the first waits up to 3 s at its rename for the second's, and the second's waits until the
    first's entry is committed). The check and the rename are now under a lock beside it: one
    database, both entries in its chain, nothing else left beside it."""
    from tilpheno.review import audit
    from tilpheno.review.db import open_database

    folder, sync = tmp_path / "db", tmp_path / "sync"
    folder.mkdir()
    sync.mkdir()
    path = folder / "out.review.sqlite"
    code = """if True:
        import errno, os, sys, time
        from pathlib import Path
        from tilpheno.review import audit
        from tilpheno.review.db import open_database
        from tilpheno.review.service import transaction
        path, sync, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
        real_replace = os.replace

        def no_links(src, dst, *args, **kwargs):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM), str(src), None, str(dst))

        def wait_for(marker, seconds):
            end = time.monotonic() + seconds
            while not (sync / marker).exists() and time.monotonic() < end:
                time.sleep(0.02)

        def rename(src, dst, *args, **kwargs):
            if Path(dst) == path:
                try:
                    os.close(os.open(sync / "first", os.O_CREAT | os.O_EXCL))
                    wait_for("second", 3)   # the other creator's rename too (never, when it waits on the lock)
                except FileExistsError:
                    (sync / "second").touch()
                    wait_for("audited", 30)   # the first's entry committed into the database it renamed
            real_replace(src, dst, *args, **kwargs)

        os.link, os.replace = no_links, rename
        print("ready", flush=True)
        sys.stdin.readline()   # both started: they make the database at once
        sessions = open_database(f"sqlite:///{path}")
        # as the app and the CLI write: retried when the other writer took the chain's next number
        transaction(sessions, lambda db: audit.append(db, name, "test_entry", reason=f"written by {name}"))
        sessions.kw["bind"].dispose()   # its last connection closed: the entry is in the database file
        (sync / "audited").touch()
    """
    procs = {name: subprocess.Popen([sys.executable, "-c", code, str(path), str(sync), name], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")}
    assert all(proc.stdout.readline().strip() == "ready" for proc in procs.values())
    for proc in procs.values():
        proc.stdin.write("\n")
        proc.stdin.flush()
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (name, err.strip().splitlines()[-1:])
    with open_database(f"sqlite:///{path}")() as db:
        assert audit.verify(db).ok
        assert sorted(e.username for e in db.query(audit.AuditEntry).filter_by(action="test_entry")) == ["a", "b"]
    assert sorted(p.name for p in sync.iterdir()) == ["audited", "first"]   # one creator renamed, the other used it
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(("-wal", "-shm"))) == ["out.review.sqlite"]


def test_a_killed_first_command_s_temporary_database_is_removed_once_its_process_is_gone(review_out, tmp_path):
    """A first command killed (SIGKILL) while it made the new database left its hidden temporary
    ``.out.review.sqlite.<pid>.creating`` (and its -wal, -shm) beside OUT, and nothing ever removed
    it. A later command now removes those of a process no longer running, saying so in one line,
    and never those of a running process (its database being made): removed once that one ended."""
    import shutil
    import signal

    out = tmp_path / "out"
    shutil.copytree(review_out, out)
    url = f"sqlite:///{tmp_path / 'out.review.sqlite'}"
    code = ("import sys, time; import tilpheno.review.db as db; made = db.upgrade\n"
            "def upgrade(engine):\n    made(engine); print('made', flush=True); time.sleep(120)\n"
            "db.upgrade = upgrade; db.open_database(sys.argv[1])")

    def making():
        """A process inside the first command's creation of the database: its schema made, not yet linked."""
        proc = subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "made"
        return proc, sorted(tmp_path.glob(f".out.review.sqlite.{proc.pid}.*creating*"))

    running, live = making()   # first: the other's creation would remove what the killed one left
    try:
        killed, dead = making()
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert dead and live and not (tmp_path / "out.review.sqlite").exists()
        r = run("users", "add", out, "ann", "--role", "admin", "--password-stdin", stdin="ann-password-1\n")
        assert r.exit_code == 0 and "user ann (admin) added" in r.output, r.output
        said = [line for line in r.output.splitlines() if "no longer running" in line]
        assert len(said) == 1 and f"process {killed.pid} " in said[0], r.output
        assert all(path.name in said[0] for path in dead) and str(running.pid) not in said[0], said
        assert not any(path.exists() for path in dead) and all(path.exists() for path in live)
        r = run("users", "list", out)
        assert r.exit_code == 0 and "no longer running" not in r.output and all(path.exists() for path in live), r.output
    finally:
        running.send_signal(signal.SIGKILL)
        running.wait()
    r = run("users", "list", out)
    assert r.exit_code == 0 and f"process {running.pid} " in r.output and "ann" in r.output, r.output
    assert (tmp_path / "out.review.sqlite").exists() and not [p for p in tmp_path.iterdir() if "creating" in p.name]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_processes_opening_a_new_database_at_once_both_start(kind, tmp_path, monkeypatch):
    """This process is creating the tables of a new database (migration run, not yet committed) when
    another process (a second server, ``users add``) opens it: that one waits and finds it migrated,
    instead of failing on "table ... already exists"."""
    from alembic import command

    from tilpheno.review.db import make_engine, upgrade

    url = database_url(kind, tmp_path)
    code = "import sys; from tilpheno.review.db import open_database; print('ready', flush=True); open_database(sys.argv[1]); print('opened')"
    migrate, other = command.upgrade, []

    def migrate_while_another_opens(cfg, revision):
        migrate(cfg, revision)
        other.append(subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
        assert other[0].stdout.readline().strip() == "ready"
        time.sleep(1.0)   # the other process reaches the database before this one commits

    monkeypatch.setattr(command, "upgrade", migrate_while_another_opens)
    try:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        out, err = other[0].communicate(timeout=120)
        assert other[0].returncode == 0 and out.strip() == "opened", err.strip().splitlines()[-1:]
    finally:
        drop_schema(url)


def _actions(review_out, db, tmp_path):
    """``(action, before, after)`` of every audit entry, oldest first (``audit export``)."""
    import csv

    assert run("audit", "export", review_out, "-o", tmp_path / "audit.csv", "--db", db).exit_code == 0
    return [(row["action"], json.loads(row["before_json"]), json.loads(row["after_json"]))
            for row in csv.DictReader((tmp_path / "audit.csv").open(encoding="utf-8"))]


def test_a_disabled_account_is_enabled_again_and_no_change_is_named(review_out, tmp_path):
    """There was no way back from `users disable` but editing the database; disabling a disabled
    account (or giving a role it has) said "disabled" and wrote an audit entry that changed nothing.
    `users enable` now restores the account (audited, before and after); a command that changes
    nothing says so and is not audited."""
    db = f"sqlite:///{tmp_path / 'e.sqlite'}"
    assert run("users", "add", review_out, "kim", "--role", "analyst", "--password-stdin", "--db", db,
               stdin="kim-password-12\n").exit_code == 0

    def says(*args):
        r = run("users", *args[:1], review_out, "kim", *args[1:], "--db", db)
        assert r.exit_code == 0, r.output
        return r.output.strip()

    def state():
        return run("users", "list", review_out, "--db", db).output.split("\t")[2]

    assert (says("disable"), state()) == ("user kim: disabled", "disabled")
    assert says("disable") == "user kim: unchanged, disabled already"
    assert (says("enable"), state()) == ("user kim: enabled", "active")
    assert says("enable") == "user kim: unchanged, active already"
    assert says("set-role", "analyst") == "user kim: unchanged, role analyst already"
    assert says("set-role", "reviewer") == "user kim: role reviewer"
    entries = _actions(review_out, db, tmp_path)
    assert [e[0] for e in entries] == ["user_added", "user_disabled", "user_enabled", "user_role_changed"]
    assert (entries[2][1]["active"], entries[2][2]["active"]) == (False, True)
    assert (entries[3][1]["role"], entries[3][2]["role"]) == ("analyst", "reviewer")
    assert run("audit", "verify", review_out, "--db", db).exit_code == 0


def test_disabling_an_account_logs_it_out_so_enabling_revives_no_session(review_out, tmp_path):
    """A disabled account's browser sessions stayed in the database (only refused while disabled), so
    `users enable` brought a session opened before the disable (a shared PC, a stolen cookie) back to
    life without a login; `users set-password` left the old sessions open likewise. Both now log the
    account out of every browser (audited: sessions_ended)."""
    import re

    from tilpheno.review.server import build_service
    from tilpheno.review.web import create_app

    db = f"sqlite:///{tmp_path / 's.sqlite'}"
    assert run("users", "add", review_out, "lea", "--role", "reviewer", "--password-stdin", "--db", db,
               stdin="lea-password-12\n").exit_code == 0
    app = create_app(build_service(review_out, db))

    def logged_in_browser(password):
        c = app.test_client()
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
        assert c.post("/login", data={"username": "lea", "password": password, "csrf_token": csrf}).status_code == 302
        assert c.get("/").status_code == 200
        return c

    browser = logged_in_browser("lea-password-12")
    assert run("users", "disable", review_out, "lea", "--db", db).exit_code == 0
    assert run("users", "enable", review_out, "lea", "--db", db).exit_code == 0
    assert browser.get("/").status_code == 401   # logged out: the session was ended at the disable
    browser = logged_in_browser("lea-password-12")
    assert run("users", "set-password", review_out, "lea", "--password-stdin", "--db", db,
               stdin="lea-password-new\n").exit_code == 0
    assert browser.get("/").status_code == 401
    logged_in_browser("lea-password-new")
    ended = {e[0]: (e[2] or {}).get("sessions_ended") for e in _actions(review_out, db, tmp_path)}
    assert (ended["user_disabled"], ended["user_password_set"]) == (1, 1)


def test_users_list_shows_only_a_lock_out_in_force_and_unlock_is_audited(review_out, tmp_path):
    """`users list` kept showing "locked until" a time long past (the lock-out had ended, but the
    column stays set until the next login); it now shows only a lock-out in force. Unlocking a locked
    account is audited with the lock it ended."""
    from datetime import datetime, timedelta, timezone

    from tilpheno.review.auth import MAX_FAILURES, AuthError, check_password, get_user
    from tilpheno.review.db import open_database

    db = f"sqlite:///{tmp_path / 'k.sqlite'}"
    assert run("users", "add", review_out, "max", "--role", "reviewer", "--password-stdin", "--db", db,
               stdin="max-password-12\n").exit_code == 0
    factory = open_database(db)
    for _ in range(MAX_FAILURES):
        with factory() as s, pytest.raises(AuthError):
            try:
                check_password(s, get_user(s, "max"), "wrong password")
            finally:
                s.commit()

    def lock_column():
        return run("users", "list", review_out, "--db", db).output.splitlines()[0].split("\t")[4]

    with factory() as s:
        until = get_user(s, "max").locked_until
    assert lock_column() == f"locked until {until[:19]} UTC"
    r = run("users", "unlock", review_out, "max", "--db", db)
    assert r.output.strip() == "user max: unlocked" and lock_column() == ""
    action, before, after = _actions(review_out, db, tmp_path)[-1]
    assert (action, before["locked_until"], after["locked_until"]) == ("user_unlocked", until, None)
    with factory() as s:   # a lock-out that ran out an hour ago
        get_user(s, "max").locked_until = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        s.commit()
    assert lock_column() == ""
    factory.kw["bind"].dispose()


def test_bad_account_input_is_one_line_naming_the_field(review_out, tmp_path):
    """A full name with a tab or a line break was stored and split `users list`'s tab-separated line
    (and the certificate's signer line); one over the column's 200 characters was stored by SQLite and
    a traceback on PostgreSQL. A password piped from a Windows file kept its \\r, so the password typed
    at the login page never matched; a full name of spaces signed as blank. Now: one line naming the
    full name; the line end is not part of the password; a blank full name is the user name."""
    from tilpheno.review.auth import check_password, get_user
    from tilpheno.review.db import open_database

    db = f"sqlite:///{tmp_path / 'f.sqlite'}"
    for full_name in ("Ned\tQA", "Ned\nQA", "N" * 201):
        r = run("users", "add", review_out, "ned", "--role", "analyst", "--full-name", full_name, "--password-stdin",
                "--db", db, stdin="ned-password-12\n")
        assert r.exit_code == 2, r.output
        assert r.output.strip().splitlines()[-1].startswith(f"error: full name {full_name[:40]!r}: at most 200"), r.output
    assert run("users", "list", review_out, "--db", db).stdout == ""
    r = run("users", "add", review_out, "ned", "--role", "analyst", "--full-name", "Ned Ödegaard", "--password-stdin",
            "--db", db, stdin="ned-password-12\r\n")
    assert r.exit_code == 0, r.output
    r = run("users", "add", review_out, "oli", "--role", "analyst", "--full-name", "   ", "--password-stdin",
            "--db", db, stdin="oli-password-12\n")   # a blank full name signed as "   "; now as the user name
    assert r.exit_code == 0, r.output
    assert [line.split("\t")[3] for line in run("users", "list", review_out, "--db", db).output.splitlines()] == [
        "Ned Ödegaard", "oli"]
    factory = open_database(db)
    with factory() as s:
        check_password(s, get_user(s, "ned"), "ned-password-12")
    factory.kw["bind"].dispose()


def test_a_mistyped_account_is_refused_before_the_password_is_asked(review_out, tmp_path):
    """`users add` with a mistyped role (or a name taken already) and `set-password` for a name with no
    account asked for the password twice, then refused it: the admin typed a password for nothing.
    They are now refused at once, naming the field, without a password prompt."""
    db = f"sqlite:///{tmp_path / 'p.sqlite'}"
    assert run("users", "add", review_out, "pia", "--role", "analyst", "--password-stdin", "--db", db,
               stdin="pia-password-12\n").exit_code == 0
    for args, error in ((("add", "rob", "--role", "analsyt"), "error: role 'analsyt': one of analyst, reviewer, admin"),
                        (("add", "pia", "--role", "analyst"), "error: user 'pia' exists already"),
                        (("add", "Pia", "--role", "analyst"),
                         "error: user 'Pia': 'pia' exists already (user names that differ only in case are refused)"),
                        (("set-password", "pya"), "error: no user 'pya'")):
        r = run("users", args[0], review_out, *args[1:], "--db", db)   # interactive: no --password-stdin
        assert r.exit_code == 2 and "Password" not in r.output, r.output
        assert r.output.strip() == error, r.output
    assert [line.split("\t")[0] for line in run("users", "list", review_out, "--db", db).output.splitlines()] == ["pia"]


def test_users_list_with_no_account_says_so(review_out, tmp_path):
    """`users list` of a database with no account printed nothing at all (did it work? is it the
    right database?). Now one line says so, on standard error: a script reading the tab-separated
    lines still reads none."""
    r = run("users", "list", review_out, "--db", f"sqlite:///{tmp_path / 'empty.sqlite'}")
    assert r.exit_code == 0 and r.stdout == "", r.output
    assert r.stderr == (f"no accounts in this database yet; add one: tilpheno users add {review_out} NAME --role "
                        "analyst|reviewer|admin\n")
