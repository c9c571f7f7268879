"""Review app core, on SQLite and PostgreSQL: re-gating, versions, conflicts, signatures, audit chain,
Gating-ML round trip, certificate PDF, approved exports, CLI."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select, text

from review_support import OOS_REASON, PASSWORDS, approval_resolutions, review_out, review_source, service_on, standing_approval_id  # noqa: F401  (fixtures)
from review_support import fresh_service, processed_once, source3  # noqa: F401  (fixtures)
from tspeed2_support import Regates, Reruns
from tilpheno.review import audit
from tilpheno.review.auth import MAX_FAILURES, AuthError, check_password
from tilpheno.review.models import AuditEntry, User
from tilpheno.review.regate import GateSetError, evaluate, recompute
from tilpheno.review.service import Forbidden, VersionConflict

DATA_CHANGED = ("input data, infused cell number, strategy, FMO percentile, study dose definitions, panel file, "
                "FMO control markers (manifest fmo_marker) or release spec")
"""What a signature's data hash binds, as a signature voided by a change there says it
(test_a_rerun_with_another_infused_dose_voids_the_approval) and as ``process`` names it in its note
on a review database's decisions (test_process_over_signed_work_says_the_review_database_holds_decisions)."""


@pytest.fixture(params=["sqlite", "postgresql"])
def service(request, review_source, tmp_path):
    """A review service over ``review_out`` with a new database per test (:func:`service_on`): each test sets
    up the versions and signatures it reads, so any of them passes alone or in any order."""
    with service_on(request.param, tmp_path, review_source) as svc:
        yield svc


@pytest.fixture(scope="module")
def reruns(tmp_path_factory):
    """The module's pipeline re-runs (:class:`tspeed2_support.Reruns`), made once each: the re-run of a
    :func:`review_support.processed_once` folder after the same change (TIL001's unstained control or
    stained surface tube replaced by TIL002's; another FMO percentile) is the same run in every test and
    on both databases; the sample folder, which the runs read by path, is part of what must be the same."""
    from review_support import SAMPLE

    return Reruns(tmp_path_factory.mktemp, (SAMPLE,))


@pytest.fixture(scope="module", autouse=True)
def regates():
    """The module's review sources share their re-gates (:class:`tspeed2_support.Regates`): a service over a
    folder holding the same bytes at the same path as one an earlier test (or the other backend) re-gated
    takes that re-gate's automatic gates and candidates instead of gating the product again; the sample folder,
    which the runs read by path, is part of what must be the same. No test here counts or patches a re-gate."""
    from review_support import SAMPLE

    with Regates((SAMPLE,)).installed():
        yield


def user(service, name):
    with service.factory() as db:
        return db.scalar(select(User).where(User.username == name))


def gates(service, pid, version=None):
    return json.loads(service.version(pid, version).gates_json)


def shifted_cd3(service, pid, delta):
    g = gates(service, pid)
    g["tubes"]["surface"]["gates"]["CD3+"]["low"] += delta
    return {"tubes": {"surface": {"gates": {"CD3+": g["tubes"]["surface"]["gates"]["CD3+"]}}}}


def test_automatic_version_reproduces_the_run(service):
    src = service.source
    pops = src.populations_csv
    for pid in src.product_ids():
        res = recompute(src, pid, gates(service, pid, 1))
        for tube, table in res.populations.items():
            ref = pops[(pops["product_id"] == pid) & (pops["tube"] == tube) & (pops["role"] == "stain")].set_index("population")
            mine = table.set_index("population")
            assert (mine["count"] == ref.loc[mine.index, "count"]).all(), (pid, tube)
            np.testing.assert_allclose(mine["pct_of_parent"], ref.loc[mine.index, "pct_of_parent"], rtol=1e-12, atol=1e-12)
        row = src.phenotype_row(pid)
        for var in ("viability_pct", "cd3_pct_of_live_lymph", "cd8pd1_pct_of_cd8", "cd4foxp3_pct_of_cd4", "cd8_dose_cells"):
            assert math.isclose(res.phenotype[var], float(row[var]), rel_tol=1e-9), var
        if row.get("review_status") == "needs review":
            # the run holds release until a reviewer signs (gates.checks); the app recomputes the criteria
            assert row["release_status"] == "not evaluable"
        else:
            assert res.release_status == row["release_status"]


class ScanCountingFrame(pd.DataFrame):
    """A table that counts how often its ``product_id`` column is read (each read is a scan of the whole
    table when a product's rows are found by comparing that column); frames derived from it are plain."""

    _metadata = ["scans"]

    @property
    def _constructor(self):
        return pd.DataFrame

    def __getitem__(self, key):
        if isinstance(key, str) and key == "product_id":
            self.scans.append(key)
        return super().__getitem__(key)


def test_a_products_rows_are_found_without_scanning_the_run_tables_each_time(review_source, monkeypatch):
    """The product list looks every product up in phenotypes.csv, populations.csv and qc.csv (row, input
    files, flags): each table is scanned once, not once per look-up (2000 products: the list took
    minutes, each look-up scanning 200,000 population rows)."""
    frames = {}
    for table in ("phenotypes", "populations_csv", "qc"):
        frame = ScanCountingFrame(getattr(review_source, table))
        frame.scans = []
        frames[table] = frame
        monkeypatch.setattr(review_source, table, frame)
    def look_up(pid):   # repr: a missing value (nan) of the phenotype row compares equal
        return repr((review_source.phenotype_row(pid), review_source.inputs_digest(pid), review_source.qc_flags(pid)))

    expected = {pid: look_up(pid) for pid in review_source.product_ids()}
    for _ in range(50):
        for pid in expected:
            assert review_source.has_product(pid) and look_up(pid) == expected[pid]
    scans = {table: len(frame.scans) for table, frame in frames.items()}
    assert max(scans.values()) <= 3, scans   # once per table (pandas' groupby reads the column twice), not per look-up
    assert not review_source.has_product("TIL999") and review_source.qc_flags("TIL999") == []


def test_adjusted_threshold_counts_every_event(service):
    """Raising the CD3 threshold: CD3+ = live lymphocytes with CD3 >= the new low, counted independently."""
    pid = "TIL001"
    st = service.source.stained(pid)["surface"]
    g = gates(service, pid, 1)
    g["tubes"]["surface"]["gates"]["CD3+"]["low"] += 0.15   # from the CD3 valley into the CD3+ population
    masks = evaluate(st.strategy, st.tube, g["tubes"]["surface"]["gates"])
    res = recompute(service.source, pid, g)
    cd3 = st.tube.data["CD3"]
    expected = int(np.count_nonzero(masks["live_lymph"] & (cd3 >= g["tubes"]["surface"]["gates"]["CD3+"]["low"])))
    row = res.populations["surface"].set_index("population").loc["CD3+"]
    assert row["count"] == expected
    assert row["pct_of_parent"] == pytest.approx(100 * expected / np.count_nonzero(masks["live_lymph"]), rel=1e-12)
    auto = recompute(service.source, pid, gates(service, pid, 1)).populations["surface"].set_index("population")
    assert expected < auto.loc["CD3+", "count"]
    assert res.phenotype["cd3_pct_of_live_lymph"] == pytest.approx(row["pct_of_live_lymph"], rel=1e-12)


@pytest.mark.parametrize("gate, problem", [
    ({"type": "range", "dim": "CD3", "low": 7.5, "high": None}, "outside the allowed range"),
    ({"type": "range", "dim": "CD3", "low": float("nan"), "high": None}, "not a finite number"),
    ({"type": "range", "dim": "CD3", "low": "0.3", "high": None}, "is not a number"),
    ({"type": "range", "dim": "CD4", "low": 0.3, "high": None}, "dimension must stay"),
    ({"type": "polygon", "dims": ["CD3", "CD4"], "vertices": [[0, 0], [1, 1], [0, 1]]}, "gate type must stay"),
    ({"type": "range", "dim": "CD3", "low": 0.3, "high": 0.9}, "must stay open"),
])
def test_invalid_gates_are_refused(service, gate, problem):
    before = service.current_version("TIL001")
    with pytest.raises(GateSetError, match=problem):
        service.save_version("TIL001", user(service, "alice"), before,
                             {"tubes": {"surface": {"gates": {"CD3+": gate}}}}, "a valid reason")
    assert service.current_version("TIL001") == before


def test_polygon_vertex_out_of_range_and_script_reason_refused(service):
    g = gates(service, "TIL001")["tubes"]["surface"]["gates"]["cells"]
    g["vertices"][0] = [1e9, g["vertices"][0][1]]
    with pytest.raises(GateSetError, match=r"surface/cells.vertices\[0\]\[0\]"):
        service.save_version("TIL001", user(service, "alice"), service.current_version("TIL001"),
                             {"tubes": {"surface": {"gates": {"cells": g}}}}, "reason")
    with pytest.raises(GateSetError, match="plain text only"):
        service.save_version("TIL001", user(service, "alice"), service.current_version("TIL001"),
                             shifted_cd3(service, "TIL001", 0.01), "<script>alert(1)</script>")


def test_concurrent_saves_one_wins_the_other_gets_a_conflict(service):
    pid = "TIL002"
    base = service.current_version(pid)
    results, barrier = [], threading.Barrier(2)

    def edit(name, delta):
        body = shifted_cd3(service, pid, delta)
        barrier.wait()
        try:
            results.append(("ok", service.save_version(pid, user(service, name), base, body, f"{name} adjusts CD3").version))
        except VersionConflict as exc:
            results.append(("conflict", str(exc)))

    threads = [threading.Thread(target=edit, args=(n, d)) for n, d in (("alice", 0.15), ("carol", -0.15))]  # out of the CD3 valley
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kinds = sorted(k for k, _ in results)
    assert kinds == ["conflict", "ok"], results
    message = next(m for k, m in results if k == "conflict")
    assert f"is now at version {base + 1}" in message and "Nothing was saved" in message
    assert [v.version for v in service.versions(pid)][-1] == base + 1   # exactly one new version
    with service.factory() as db:
        assert db.execute(text("SELECT count(*) FROM gate_set_versions WHERE product_id = :p AND version > :b"),
                          {"p": pid, "b": base}).scalar() == 1


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_imports_versions_and_signatures_are_timed_by_the_records_clock(kind, source3, tmp_path):
    """A product's ``imported_at``, its versions' ``created_at`` and its signatures' ``signed_at`` came
    from the writing server's wall clock while the audit entries' ``at`` was the database's: on one
    PostgreSQL database a server whose clock ran 10 minutes ahead signed 10 minutes after its own
    ``sign`` entry. Now every one of them is the server's record clock (``audit.Clock``): the
    database's ``clock_timestamp()`` on PostgreSQL, whatever the server's machine says; on SQLite the
    machine's, here injected 10 minutes ahead. Each time lies within 5 s before that clock's now, the
    record's times follow its order (import, version 1, its entry; version 2, its entry; the
    signature, its entry) and the trail verifies."""
    import time

    from tilpheno.review.models import GateSetVersion, Product, Signature, utc

    ahead = audit.Clock(lambda: time.time() + 600.0)   # this server's machine clock
    with service_on(kind, tmp_path, source3, ahead) as svc:
        pid = "TIL001"
        v = svc.save_version(pid, user(svc, "bob"), svc.current_version(pid), shifted_cd3(svc, pid, 0.01),
                             "analyst trims the CD3 dim tail").version
        svc.sign(pid, user(svc, "bob").id, PASSWORDS["bob"], "reviewed", v, {})
        with svc.factory() as db:
            now = (float(db.scalar(text("SELECT EXTRACT(EPOCH FROM clock_timestamp())"))) if kind == "postgresql"
                   else time.time() + 600.0)
            product = db.get(Product, pid)
            versions = db.scalars(select(GateSetVersion).where(GateSetVersion.product_id == pid)
                                  .order_by(GateSetVersion.version)).all()
            (signature,) = db.scalars(select(Signature).where(Signature.product_id == pid)).all()
            entries = {e.action: e.at for e in db.scalars(select(AuditEntry).where(AuditEntry.product_id == pid))}
            assert audit.verify(db).ok
    record = [product.imported_at, versions[0].created_at, entries["import_product"], versions[1].created_at,
              entries["save_gates"], signature.signed_at, entries["sign"]]
    assert [v.version for v in versions] == [1, 2]
    assert utc(now - 5.0) <= record[0] and record[-1] <= utc(now), (utc(now), record)
    assert record == sorted(record), record   # ISO 8601 UTC text sorts as time


def test_signature_is_void_after_a_later_change_and_roles_are_enforced(service):
    pid = "TIL001"
    v = service.save_version(pid, user(service, "bob"), service.current_version(pid), shifted_cd3(service, pid, 0.01),
                             "analyst trims the CD3 dim tail").version
    with pytest.raises(Forbidden):
        service.sign(pid, user(service, "bob").id, PASSWORDS["bob"], "approved for release", v, {})
    service.sign(pid, user(service, "bob").id, PASSWORDS["bob"], "reviewed", v, {})
    sig = service.sign(pid, user(service, "alice").id, PASSWORDS["alice"], "approved for release", v, {}, oos_justification=OOS_REASON)
    assert service.approved_version(pid).version == v
    views = service.signatures(pid)
    assert all(s.valid for s in views if s.row.version == v)
    assert sig.signed_at.endswith("Z") and len(sig.data_sha256) == 64
    rejection = service.sign(pid, user(service, "carol").id, PASSWORDS["carol"], "rejected", v, {}, "CD3 valley too high")
    assert service.approved_version(pid) is None           # a later valid rejection withdraws the approval
    approval = service.sign(pid, user(service, "alice").id, PASSWORDS["alice"], "approved for release", v, {},
                            "FMO overlay checked", overrules=rejection.id, oos_justification=OOS_REASON)   # over it, saying why (test_an_approval_over_...)
    assert service.approved_version(pid).version == v
    service.save_version(pid, user(service, "carol"), v, shifted_cd3(service, pid, 0.01), "carol moves it again",
                         void_approval=approval.id)   # carol was told it voids alice's approval
    views = service.signatures(pid)
    assert not any(s.valid for s in views)
    assert all("void: gates changed to version" in s.void_reason for s in views)
    assert service.approved_version(pid) is None
    with pytest.raises(VersionConflict, match="signing version"):
        service.sign(pid, user(service, "alice").id, PASSWORDS["alice"], "approved for release", v, {})


def test_wrong_passwords_lock_the_account(service):
    for _ in range(MAX_FAILURES - 1):
        with service.factory() as db, pytest.raises(AuthError, match="wrong user name or password"):
            try:
                check_password(db, db.scalar(select(User).where(User.username == "root")), "nope")
            finally:
                db.commit()
    with service.factory() as db, pytest.raises(AuthError, match="now locked"):
        try:
            check_password(db, db.scalar(select(User).where(User.username == "root")), "nope")
        finally:
            db.commit()
    with service.factory() as db, pytest.raises(AuthError, match="is locked until"):
        check_password(db, db.scalar(select(User).where(User.username == "root")), PASSWORDS["root"])


def _new_account(service, name):
    from tilpheno.review.auth import create_user
    from tilpheno.review.service import transaction

    transaction(service.factory, lambda db: create_user(db, name, name, "reviewer", f"{name}-password-1"))
    return name


def test_wrong_passwords_typed_at_once_each_count(service):
    """Two wrong passwords checked at the same time (two browsers, a scripted guesser) each wrote
    back the count read before the check, so together they counted once and the lock-out came
    later than MAX_FAILURES guesses: each now counts (the database adds one)."""
    name = _new_account(service, "gus")
    first, second = service.factory(), service.factory()
    try:
        rows = [db.scalar(select(User).where(User.username == name)) for db in (first, second)]
        for db, row in zip((first, second), rows):   # both read 0 failures before either commits
            with pytest.raises(AuthError):
                check_password(db, row, "wrong password")
            db.commit()
    finally:
        first.close(), second.close()
    assert user(service, name).failed_logins == 2


def test_a_retried_login_verifies_the_password_once_and_counts_it_once(service, monkeypatch):
    """A login whose transaction re-runs (another writer took the audit chain's next number) ran
    argon2 again on every re-run (the slow part, by design): it now verifies the password once, and
    the wrong password counts once, with one ``login_failed`` entry."""
    import re

    from tilpheno.review import auth
    from tilpheno.review.web import create_app

    name = _new_account(service, "hal")
    verified = []
    hasher = auth._HASHER

    class CountingHasher:
        def verify(self, password_hash, password):
            verified.append(password)
            return hasher.verify(password_hash, password)

        def __getattr__(self, attr):
            return getattr(hasher, attr)

    real_append, conflicts = audit.append, [1]

    def append_once_in_conflict(db, *args, **kwargs):
        if conflicts:
            conflicts.pop()
            raise audit.ChainConflict("another writer was first")
        return real_append(db, *args, **kwargs)

    client = create_app(service).test_client()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    with service.factory() as db:
        before = len(audit.export_csv(db).text.splitlines())
    monkeypatch.setattr(auth, "_HASHER", CountingHasher())
    monkeypatch.setattr(audit, "append", append_once_in_conflict)
    r = client.post("/login", data={"username": name, "password": "wrong password", "csrf_token": csrf},
                    follow_redirects=True)
    assert r.history[0].status_code == 303 and "wrong user name or password" in r.text
    assert verified == ["wrong password"] and not conflicts
    assert user(service, name).failed_logins == 1
    with service.factory() as db:
        added = audit.export_csv(db).text.splitlines()[before:]
    assert [line.split(",")[3] for line in added] == ["login_failed"], added


def _tamper(service, sql, params=None):
    """Bypass the append-only triggers as an attacker with DDL rights would, run ``sql``, restore them."""
    with service.factory() as db:
        dialect = db.bind.dialect.name
    with service.factory.kw["bind"].begin() as conn:
        if dialect == "postgresql":
            conn.execute(text("ALTER TABLE audit_entries DISABLE TRIGGER USER"))
            conn.execute(text(sql), params or {})
            conn.execute(text("ALTER TABLE audit_entries ENABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER audit_entries_no_update"))
            conn.execute(text("DROP TRIGGER audit_entries_no_delete"))
            conn.execute(text(sql), params or {})
            for what in ("UPDATE", "DELETE"):
                conn.execute(text(f"CREATE TRIGGER audit_entries_no_{what.lower()} BEFORE {what} ON audit_entries "
                                  "BEGIN SELECT RAISE(ABORT, 'audit_entries is append-only'); END"))


def approve_adjusted_til002_and_void_til001s_approval(service):
    """TIL002's CD3 cut moved into the CD3+ population (alice's version 2) and approved for release by dave (four
    eyes: not alice); TIL001's automatic version approved by dave, then voided by carol's save (version 2)."""
    v = service.save_version("TIL002", user(service, "alice"), 1, shifted_cd3(service, "TIL002", 0.15), "alice adjusts CD3").version
    service.sign("TIL002", user(service, "dave").id, PASSWORDS["dave"], "approved for release", v,
                 approval_resolutions(service, "TIL002"), "QA release review", oos_justification=OOS_REASON)
    service.sign("TIL001", user(service, "dave").id, PASSWORDS["dave"], "approved for release", 1,
                 approval_resolutions(service, "TIL001"), "QA release review", oos_justification=OOS_REASON)
    service.save_version("TIL001", user(service, "carol"), 1, shifted_cd3(service, "TIL001", 0.01), "carol moves CD3",
                         void_approval=standing_approval_id(service, "TIL001"))
    assert service.approved_version("TIL002").version == 2 and service.approved_version("TIL001") is None


def test_audit_chain_detects_edit_delete_reorder(service):
    approve_adjusted_til002_and_void_til001s_approval(service)
    with service.factory() as db:
        assert audit.verify(db).ok, audit.verify(db).problems
        n = audit.verify(db).n_entries
        assert n >= 6
        rows = list(db.scalars(select(AuditEntry).order_by(AuditEntry.seq)))
        actions = {r.action for r in rows}
        assert {"import_product", "save_gates", "sign", "user_added"} <= actions
        saved = next(r for r in rows if r.action == "save_gates")
        assert json.loads(saved.before_json)["gates"] and json.loads(saved.after_json)["gates"] and saved.reason
    # the database refuses edits and deletions
    with pytest.raises(Exception, match="append-only"):
        with service.factory.kw["bind"].begin() as conn:
            conn.execute(text("UPDATE audit_entries SET reason = 'x' WHERE seq = 2"))
    with pytest.raises(Exception, match="append-only"):
        with service.factory.kw["bind"].begin() as conn:
            conn.execute(text("DELETE FROM audit_entries WHERE seq = 2"))
    # an edited reason
    _tamper(service, "UPDATE audit_entries SET reason = 'nothing to see' WHERE seq = 3")
    with service.factory() as db:
        result = audit.verify(db)
    assert not result.ok and any("entry 3: content does not match" in p for p in result.problems)
    # a deleted entry
    _tamper(service, "DELETE FROM audit_entries WHERE seq = 2")
    with service.factory() as db:
        problems = audit.verify(db).problems
    assert any("entry 3: expected entry 2" in p for p in problems)
    assert any("entry 3: link to the previous entry broken" in p for p in problems)
    # swap two entries' positions (re-order): renumber 4 <-> 5
    _tamper(service, "UPDATE audit_entries SET seq = -1 WHERE seq = 4")
    _tamper(service, "UPDATE audit_entries SET seq = 4 WHERE seq = 5")
    _tamper(service, "UPDATE audit_entries SET seq = 5 WHERE seq = -1")
    with service.factory() as db:
        problems = audit.verify(db).problems
    assert any(p.startswith("entry 4:") for p in problems) and any(p.startswith("entry 5:") for p in problems)
    # the newest entry removed
    _tamper(service, "DELETE FROM audit_entries WHERE seq = :n", {"n": n})
    with service.factory() as db:
        assert any("newest entries deleted" in p for p in audit.verify(db).problems)


def test_gatingml_export_reimports_to_the_same_memberships(service):
    from tilpheno.gates.gatingml import apply_gatingml, gatingml_id, parse_gatingml
    from tilpheno.io.fcs import read_fcs
    from tilpheno.review.export import approved_gatingml

    pid = "TIL002"
    version = service.save_version(pid, user(service, "alice"), 1, shifted_cd3(service, pid, 0.15), "alice adjusts CD3").version
    st = service.source.stained(pid)["surface"]
    g = gates(service, pid)
    doc = parse_gatingml(approved_gatingml(service, pid, "surface", version=version))
    fcs = read_fcs(next(f.path for f in service.source.product_files(pid) if f.role == "stain" and f.tube == "surface"))
    theirs = apply_gatingml(doc, fcs.events, fcs.channel_names, fcs.spillover)
    mine = evaluate(st.strategy, st.tube, g["tubes"]["surface"]["gates"])
    for pop, mask in mine.items():
        assert np.array_equal(mask, theirs[gatingml_id(pop)]), pop
    assert np.count_nonzero(mine["CD3+"]) > 1000


def test_certificate_pdf_renders_with_the_approved_values(service, tmp_path):
    from tilpheno.review.certificate import certificate_pdf

    pid = "TIL002"
    v = service.save_version(pid, user(service, "alice"), 1, shifted_cd3(service, pid, 0.15), "alice adjusts CD3").version
    with pytest.raises(VersionConflict, match="no valid 'approved for release'"):
        certificate_pdf(service, pid)
    resolutions = approval_resolutions(service, pid)
    service.sign(pid, user(service, "dave").id, PASSWORDS["dave"], "approved for release", v, resolutions,
                 "QA release review", oos_justification=OOS_REASON)   # not alice or carol: one of them saved TIL002's version (four eyes)
    pdf = tmp_path / "c.pdf"
    pdf.write_bytes(certificate_pdf(service, pid))
    assert pdf.read_bytes().startswith(b"%PDF-")
    if not (shutil.which("pdftoppm") and shutil.which("pdftotext")):
        pytest.skip("poppler-utils not installed (`make services` installs it): the PDF's pages and text not checked")
    subprocess.run(["pdftoppm", "-png", "-r", "60", str(pdf), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page*.png"))
    assert pages and pages[0].stat().st_size > 5000
    words = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True).stdout
    res = recompute(service.source, pid, gates(service, pid))
    assert f"Certificate of analysis: product {pid}" in words
    assert f"gate-set version {v}" in words and "Dave Tester" in words
    assert "QA release review" in words   # the approval's comment (a rejection's why, an approval's over it)
    assert f"{res.phenotype['cd3_pct_of_live_lymph']:.2f}" in words
    assert f"{res.phenotype['viability_pct']:.2f}" in words
    decision = {"pass": "RELEASE CRITERIA MET", "fail": "OUT-OF-SPECIFICATION RELEASE"}.get(res.release_status,
                                                                                            "RELEASE CRITERIA NOT MET")
    assert decision in words
    stained = next(f for f in service.source.inputs_digest(pid) if f["role"] == "stain")
    assert stained["sha256"] in words.replace("\n", "")


def test_approved_tables_follow_the_approved_version(service):
    from tilpheno.review.export import approved_tables

    approve_adjusted_til002_and_void_til001s_approval(service)
    phenotypes, populations = approved_tables(service)
    by_id = phenotypes.set_index("product_id")
    assert by_id.loc["TIL001", "review_status"] == "not approved"      # its approval was voided
    assert math.isnan(float(by_id.loc["TIL001", "cd3_pct_of_live_lymph"]))
    assert by_id.loc["TIL002", "review_status"] == "approved"
    approved = service.approved_version("TIL002")
    res = recompute(service.source, "TIL002", json.loads(approved.gates_json))
    assert by_id.loc["TIL002", "cd3_pct_of_live_lymph"] == pytest.approx(res.phenotype["cd3_pct_of_live_lymph"], rel=1e-12)
    assert by_id.loc["TIL002", "cd3_pct_of_live_lymph"] != pytest.approx(
        float(service.source.phenotype_row("TIL002")["cd3_pct_of_live_lymph"]), rel=1e-9)
    assert set(populations["product_id"]) == {"TIL002"}
    from tilpheno.io.csvcells import csv_text

    cells = {row.split(",")[0]: row.split(",")[2] for row in csv_text(phenotypes).splitlines()[1:]}
    assert cells == {"TIL001": "", "TIL002": str(approved.version)}   # the version as written: 2, not 2.0


def test_approved_counts_are_written_as_whole_numbers(service):
    """Beside a product not approved (its cells empty) every count of an approved one was written
    36948.0 in phenotypes_approved.csv (a float column), where phenotypes.csv writes 36948 -> whole
    numbers, as recomputed from the approved gates."""
    from tilpheno.io.csvcells import csv_text
    from tilpheno.review.export import approved_tables

    approve_adjusted_til002_and_void_til001s_approval(service)
    phenotypes = approved_tables(service)[0]
    lines = csv_text(phenotypes).splitlines()
    header, rows = lines[0].split(","), {line.split(",")[0]: line.split(",") for line in lines[1:]}
    assert rows["TIL001"][header.index("review_status")] == "not approved"
    approved = service.approved_version("TIL002")
    res = recompute(service.source, "TIL002", json.loads(approved.gates_json))
    counts = [c for c in header if c.startswith("n_") and c in res.phenotype]
    assert "n_events_surface" in counts
    for column in counts:
        assert rows["TIL002"][header.index(column)] == str(int(res.phenotype[column])), column
        assert rows["TIL001"][header.index(column)] == "", column


def test_apply_gate_to_batch_makes_a_version_per_product(service):
    src_v = service.current_version("TIL002")
    target_before = service.current_version("TIL001")
    with pytest.raises(Forbidden):
        service.apply_to_batch("TIL002", user(service, "bob"), "surface", "CD3+", ["TIL001"], "group gate")
    rows = service.apply_to_batch("TIL002", user(service, "alice"), "surface", "CD3+", ["TIL001"], "group gate").saved
    assert [r.product_id for r in rows] == ["TIL001"] and rows[0].version == target_before + 1
    assert rows[0].source == f"batch from TIL002 v{src_v}"
    copied = gates(service, "TIL001")["tubes"]["surface"]["gates"]["CD3+"]
    assert copied == gates(service, "TIL002")["tubes"]["surface"]["gates"]["CD3+"]
    assert service.approved_version("TIL001") is None   # each product is still reviewed on its own


def test_approval_requires_a_resolution_of_each_warning_flag(service, tmp_path):
    """A warning QC flag must be resolved in words to approve; the certificate shows the resolution."""
    import pandas as pd

    from tilpheno.review.certificate import certificate_pdf

    src = service.source
    original = src.qc
    flag = {"product_id": "TIL001", "file": "TIL001_surface_stain.fcs", "code": "fallback_gate", "severity": "warning",
            "message": "CD3+ (CD3): threshold from the density of the stained tube"}
    src.qc = pd.concat([original, pd.DataFrame([flag])], ignore_index=True)
    try:
        v = service.current_version("TIL001")
        qa = user(service, "dave")   # not alice: she applied TIL002's CD3 gate to TIL001 (four eyes)
        before = len(service.signatures("TIL001"))
        with pytest.raises(GateSetError, match="resolution of QC flag fallback_gate"):
            service.sign("TIL001", qa.id, PASSWORDS["dave"], "approved for release", v, {})
        assert len(service.signatures("TIL001")) == before
        key = "fallback_gate:TIL001_surface_stain.fcs:0"
        service.sign("TIL001", qa.id, PASSWORDS["dave"], "approved for release", v,
                     {key: "threshold checked against the FMO-free valley by eye"}, oos_justification=OOS_REASON)
        if shutil.which("pdftotext"):
            pdf = tmp_path / "c.pdf"
            pdf.write_bytes(certificate_pdf(service, "TIL001"))
            words = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
            assert "fallback_gate" in words and "FMO-free valley" in " ".join(words.split())
    finally:
        src.qc = original


def test_a_blank_resolution_of_a_flag_leaves_it_the_one_typed_for_its_kind(service):
    """Two no_time_channel flags resolved at once (``kind_resolutions``) and one of them given a
    field of spaces: the approval was refused naming that flag (the spaces overrode the kind's
    resolution); now spaces count as nothing typed and both flags get the kind's resolution (stored
    once per flag). A kind's resolution of spaces still refuses, naming the flag."""

    src = service.source
    original = src.qc
    files = sorted(set(src.populations_csv.query("product_id == 'TIL001'")["file"]))[:2]
    timeless = [{"product_id": "TIL001", "file": f, "gate": "", "code": "no_time_channel", "severity": "warning",
                 "needs_review": "True", "message": "no Time channel"} for f in files]
    src.qc = pd.concat([original, pd.DataFrame(timeless)], ignore_index=True)
    try:
        flags = [f for f in src.qc_flags("TIL001") if f["severity"] in ("warning", "error")]
        keys = [f"{f['code']}:{f['file']}:{i}" for i, f in enumerate(flags)]
        timeless_keys = [k for k, f in zip(keys, flags) if f["code"] == "no_time_channel"]
        own = {k: "gate plots checked" for k, f in zip(keys, flags) if f["code"] != "no_time_channel"}
        own[timeless_keys[0]] = "  \t "
        v = service.current_version("TIL001")
        dave = user(service, "dave")
        with pytest.raises(GateSetError, match=rf"resolution of QC flag no_time_channel \({files[0]}\): required"):
            service.sign("TIL001", dave.id, PASSWORDS["dave"], "approved for release", v, own,
                         oos_justification=OOS_REASON, kind_resolutions={"no_time_channel": "   "})
        sig = service.sign("TIL001", dave.id, PASSWORDS["dave"], "approved for release", v, own,
                           oos_justification=OOS_REASON, kind_resolutions={"no_time_channel": "FlowJo export, order checked "})
        stored = json.loads(sig.qc_resolutions_json)
        assert sorted(stored) == sorted(keys) and len(timeless_keys) == 2
        assert {stored[k] for k in timeless_keys} == {"FlowJo export, order checked"}
    finally:
        src.qc = original


def test_four_eyes_no_one_approves_a_correction_they_saved(service):
    """A reviewer who moved a gate cannot approve that gate set for release (also not after someone
    else's later save on top of it); rejecting it is allowed, and a second person approves it."""
    pid = "TIL002"
    resolutions = approval_resolutions(service, pid)
    alice, carol = user(service, "alice"), user(service, "carol")
    v = service.save_version(pid, alice, service.current_version(pid), shifted_cd3(service, pid, -0.01),
                             "alice lowers the CD3 cut", void_approval=standing_approval_id(service, pid)).version
    before = len(service.signatures(pid))
    with pytest.raises(Forbidden, match=rf"four-eyes rule: alice saved version\(s\) (.*, )?{v} of {pid}"):
        service.sign(pid, alice.id, PASSWORDS["alice"], "approved for release", v, resolutions)
    assert len(service.signatures(pid)) == before and service.approved_version(pid) is None
    with service.factory() as db:   # the refusal is in the audit trail, with what was refused and why
        entry = db.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc())).first()
    assert (entry.action, entry.username, entry.product_id) == ("signature_refused", "alice", pid)
    assert entry.reason.startswith(f"approved for release of version {v}: four-eyes rule: alice saved"), entry.reason
    service.sign(pid, alice.id, PASSWORDS["alice"], "rejected", v, {}, "my own cut: second opinion wanted")
    w = service.save_version(pid, carol, v, shifted_cd3(service, pid, 0.005), "carol nudges it back a little").version
    for name in ("alice", "carol"):
        with pytest.raises(Forbidden, match=f"four-eyes rule: {name} saved"):
            service.sign(pid, user(service, name).id, PASSWORDS[name], "approved for release", w, resolutions)
    assert service.approved_version(pid) is None
    service.sign(pid, user(service, "dave").id, PASSWORDS["dave"], "approved for release", w, resolutions, oos_justification=OOS_REASON)
    assert service.approved_version(pid).version == w


def test_a_save_committed_while_an_approval_is_stored_makes_it_a_conflict(service, monkeypatch):
    """Alice saves a new version just after Dave's approval checked the product's version and before
    it is stored: the approval is refused (409, reload), never stored for the version just replaced
    and answered "signed" while void at birth."""
    pid = "TIL002"
    v = service.current_version(pid)
    alice, dave = user(service, "alice"), user(service, "dave")
    hash_signature, saved, standing = audit.signature_sha256, [], standing_approval_id(service, pid)

    def save_meanwhile(content):
        if not saved:
            saved.append(service.save_version(pid, alice, v, shifted_cd3(service, pid, 0.002), "alice saves meanwhile",
                                              void_approval=standing))
        return hash_signature(content)

    monkeypatch.setattr(audit, "signature_sha256", save_meanwhile)
    before = len(service.signatures(pid))
    with pytest.raises(VersionConflict, match=f"product {pid} changed while you were signing"):
        service.sign(pid, dave.id, PASSWORDS["dave"], "approved for release", v, approval_resolutions(service, pid),
                     "approved once more for this test", oos_justification=OOS_REASON)   # not a repeat of the approval an earlier test left standing
    assert saved and service.current_version(pid) == v + 1
    assert len(service.signatures(pid)) == before


def test_an_approval_racing_an_account_change_is_refused(service, monkeypatch):
    """An admin makes a reviewer an analyst, or disables the account, while the approval's password
    is being verified (the slow part): the approval is refused (403) with the account as it is now,
    not stored under the role it had when the request came in."""
    from tilpheno.review import service as service_module
    from tilpheno.review.auth import create_user, get_user
    from tilpheno.review.service import transaction

    pid = "TIL001"
    transaction(service.factory, lambda db: create_user(db, "erin", "Erin Tester", "reviewer", "erin-password-1"))
    erin = user(service, "erin")
    verify_password = service_module.check_password
    for field, value, refusal in (("role", "analyst", "role analyst cannot sign 'approved for release'"),
                                  ("active", False, "account erin was disabled while signing")):
        def change(db, field=field, value=value):
            account = get_user(db, "erin")
            setattr(account, field, value)
            audit.append(db, "cli:admin", "user_changed", after={"username": "erin", field: value})

        def check_then_admin_changes(db, account, password, clock, change=change):
            checked = verify_password(db, account, password, clock)
            transaction(service.factory, change)   # committed while the signature is on its way
            return checked

        monkeypatch.setattr(service_module, "check_password", check_then_admin_changes)
        before = len(service.signatures(pid))
        with pytest.raises(Forbidden, match=refusal):
            service.sign(pid, erin.id, "erin-password-1", "approved for release", service.current_version(pid),
                         approval_resolutions(service, pid))
        assert len(service.signatures(pid)) == before
        monkeypatch.setattr(service_module, "check_password", verify_password)

        def restore(db):
            account = get_user(db, "erin")
            account.role, account.active = "reviewer", True
        transaction(service.factory, restore)


@pytest.mark.parametrize("when", ["before the save's transaction", "after the save's checks"])
def test_a_save_racing_an_assignment_withdrawal_a_role_change_or_a_disable_is_refused(service, monkeypatch, when):
    """An admin withdraws the analyst's assignment, makes the account a role that cannot edit, or
    disables it, while a gate correction is on its way (after the request's access check, while the
    gates are validated; or after the save's own checks, before it is stored): nothing is saved
    (403 naming why), as for a signature, instead of a version saved under an access just taken."""
    from sqlalchemy import delete

    from tilpheno.review import service as service_module
    from tilpheno.review.auth import create_user, get_user
    from tilpheno.review.models import ProductAssignment
    from tilpheno.review.service import transaction

    pid = "TIL001"

    def set_gus(role, assigned):
        def do(db):
            if db.scalar(select(User).where(User.username == "gus")) is None:
                create_user(db, "gus", "Gus Tester", role, "gus-password-12")
            account = get_user(db, "gus")
            account.role, account.active = role, True
            db.execute(delete(ProductAssignment).where(ProductAssignment.username == "gus"))
            if assigned:
                db.add(ProductAssignment(product_id=pid, username="gus", assigned_by="test",
                                         assigned_at=service.clock.stamp(db)))
            audit.append(db, "test", "user_reset", after={"username": "gus", "role": role, "assigned": assigned})
        transaction(service.factory, do)

    def withdraw(db):
        db.execute(delete(ProductAssignment).where(ProductAssignment.username == "gus"))
        audit.append(db, "cli:admin", "unassign", after={"username": "gus", "products": [pid]})

    def demote(db):
        get_user(db, "gus").role = "analyst"
        audit.append(db, "cli:admin", "user_role_changed", after={"username": "gus", "role": "analyst"})

    def disable(db):
        get_user(db, "gus").active = False
        audit.append(db, "cli:admin", "user_disabled", after={"username": "gus", "active": False})

    changed_gates, refusal_of = service_module.changed_gates, service._editing_refusal
    edit, batch = service_module.EDIT_ROLES, service_module.BATCH_ROLES
    for role, assigned, change, roles, refusal in (
            ("analyst", True, withdraw, edit, f"product {pid} is not assigned to you \\(gus, analyst\\) any more"),
            ("reviewer", False, demote, edit, f"product {pid} is not assigned to you \\(gus, analyst\\) any more"),
            ("reviewer", False, demote, batch, "role analyst cannot save gates"),   # apply to batch
            ("analyst", True, disable, edit, "account gus was disabled while saving")):
        set_gus(role, assigned)
        gus, v, done = user(service, "gus"), service.current_version(pid), []

        def admin_changes(change=change):
            if not done:
                transaction(service.factory, change)   # committed while the save is on its way
                done.append(True)

        if when == "before the save's transaction":
            def validate_then_change(*args):
                admin_changes()
                return changed_gates(*args)
            monkeypatch.setattr(service_module, "changed_gates", validate_then_change)
        else:
            def check_then_change(*args):
                found = refusal_of(*args)
                admin_changes()
                return found
            monkeypatch.setattr(service, "_editing_refusal", check_then_change)
        with pytest.raises(Forbidden, match=refusal):
            service.save_version(pid, gus, v, shifted_cd3(service, pid, 0.003), "gus trims CD3", roles=roles,
                                 void_approval=standing_approval_id(service, pid))   # told it voids an approval
        assert done and service.current_version(pid) == v
        monkeypatch.undo()


def test_an_account_disabled_just_before_the_signature_is_stored_is_told_so(service, monkeypatch):
    """The admin disables the account after the signature's checks passed and before it is stored:
    the signature re-runs on the account as it is now and is refused as a disabled account (403,
    audited so), not answered "wrong user name or password" as if the password had been mistyped."""
    from tilpheno.review.auth import create_user, get_user
    from tilpheno.review.service import transaction

    pid = "TIL001"
    transaction(service.factory, lambda db: create_user(db, "fay", "Fay Tester", "reviewer", "fay-password-12"))
    fay = user(service, "fay")
    refusal_of, disabled = service._signing_refusal, []

    def checks_pass_then_admin_disables(db, account, *args):
        refusal = refusal_of(db, account, *args)
        if not disabled:
            def disable(s):
                get_user(s, "fay").active = False
                audit.append(s, "cli:admin", "user_disabled", after={"username": "fay", "active": False})
            transaction(service.factory, disable)
            disabled.append(True)
        return refusal

    monkeypatch.setattr(service, "_signing_refusal", checks_pass_then_admin_disables)
    before = len(service.signatures(pid))
    with pytest.raises(Forbidden, match="account fay was disabled while signing"):
        service.sign(pid, fay.id, "fay-password-12", "reviewed", service.current_version(pid), {})
    assert disabled and len(service.signatures(pid)) == before
    with service.factory() as db:
        last = db.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).one()
    assert (last.username, last.action) == ("fay", "signature_refused")
    assert last.reason.endswith("account fay was disabled while signing"), last.reason


def til001_run(processed_once, outcomes_copy=False, products=("TIL001",), panel="", reruns=None):
    """``(out, run)``: the sample's ``products`` (TIL001 unless named) processed into ``out`` (tables
    only; :func:`processed_once`) with the manifest ``out.parent / "manifest.csv"`` and the sample's
    outcomes table or, ``outcomes_copy``, a copy of it at ``out.parent / "outcomes.csv"``, and with
    ``panel`` (a panel file's text) the panel file ``out.parent / "panel.csv"`` (each of which the
    test may change); ``run(**settings)`` processes them again, as often as a test re-runs it: with
    ``reruns`` (:class:`tspeed2_support.Reruns`), a re-run another test made from the same files and
    settings is put back, not made again."""
    from review_support import SAMPLE
    from tilpheno.pipeline import process_folder

    def run_in(work, **settings):
        outcomes_path = work / "outcomes.csv" if outcomes_copy else SAMPLE / "outcomes.csv"
        summary = process_folder(SAMPLE, work / "out", manifest_csv=work / "manifest.csv", outcomes_path=outcomes_path,
                                 allow_unmatched=True, make_reports=False,
                                 panel_path=work / "panel.csv" if panel else None, **settings)
        assert summary.ok, summary.failed

    def first(work):
        manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
        one = manifest[manifest["product_id"].isin(products)].assign(file=lambda m: [str(SAMPLE / f) for f in m["file"]])
        one.to_csv(work / "manifest.csv", index=False)
        if outcomes_copy:
            pd.read_csv(SAMPLE / "outcomes.csv").to_csv(work / "outcomes.csv", index=False)
        if panel:
            (work / "panel.csv").write_text(panel)
        run_in(work)

    work = processed_once(f"run_{'_'.join(products)}{'_outcomes' if outcomes_copy else ''}{'_panel' if panel else ''}", first)

    def run(**settings):
        if reruns is None:
            run_in(work, **settings)
        else:
            reruns.run(work, lambda: run_in(work, **settings), repr(sorted(settings.items())))
    return work / "out", run


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_rerun_with_other_settings_becomes_the_current_automatic_version(kind, tmp_path, processed_once, reruns):
    """process --overwrite on the same files with another FMO percentile: the app's automatic gates
    follow the new run (a new automatic version, audited), not the first run's version 1; the
    correction and approval made on the first run's gates stay in the history, void."""
    from review_support import database_url, drop_schema, make_service
    from tilpheno.review.server import build_service

    pid = "TIL001"
    out, run = til001_run(processed_once, reruns=reruns)
    url = database_url(kind, tmp_path)
    first = make_service(out, url)
    try:
        assert first.automatic_version(pid).version == 1          # the run's own gates: nothing added
        first.save_version(pid, user(first, "alice"), 1, shifted_cd3(first, pid, 0.05), "CD3 cut into the valley")
        first.sign(pid, user(first, "dave").id, PASSWORDS["dave"], "approved for release", 2, {}, oos_justification=OOS_REASON)
        assert first.approved_version(pid).version == 2
        first.factory.kw["bind"].dispose()

        run(overwrite=True, fmo_percentile=99.0)
        again = build_service(out, url)
        auto = again.automatic_version(pid, "alice")
        assert (auto.version, auto.based_on, auto.source, auto.created_by) == (3, None, "automatic", "tilpheno")
        assert again.current_version(pid) == 3 and again.automatic_version(pid).version == 3   # once
        assert json.loads(auto.gates_json) == again.source.automatic(pid)
        new_row = again.source.phenotype_row(pid)
        res = recompute(again.source, pid, json.loads(auto.gates_json))
        for var in ("cd8pd1_pct_of_cd8", "pd1_pct_of_live_lymph", "cd4foxp3_pct_of_cd4"):
            assert res.phenotype[var] == pytest.approx(float(new_row[var]), rel=1e-9), var
        old = recompute(again.source, pid, gates(again, pid, 1))
        assert old.phenotype["cd8pd1_pct_of_cd8"] != pytest.approx(res.phenotype["cd8pd1_pct_of_cd8"], abs=1e-6)
        assert again.approved_version(pid) is None
        assert [v.valid for v in again.signatures(pid)] == [False]
        with again.factory() as db:
            entry = db.scalars(select(AuditEntry).where(AuditEntry.action == "reimport_product")).one()
            assert audit.verify(db).ok
        assert (entry.username, entry.product_id) == ("alice", pid)
        assert json.loads(entry.before_json)["version"] == 1 and json.loads(entry.after_json)["version"] == 3
        again.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_batch_apply_after_a_rerun_with_other_settings_builds_on_the_new_run(kind, tmp_path, processed_once, reruns):
    """TIL001 and TIL002 opened on a first run, then process --overwrite on the same files with
    another FMO percentile: a batch apply of TIL001's CD3+ to TIL002 built on TIL002's version 1
    (the first run's gates: its CD8/PD-1 cuts and the rest undone, nothing said) because only a
    change of input files made the new run's automatic gates current. Now TIL002 first gets the
    new run's gates as its current automatic version (as opening it does), and the batch version
    holds them beside the copied gate."""
    from review_support import database_url, drop_schema, make_service
    from tilpheno.review.server import build_service

    out, run = til001_run(processed_once, reruns=reruns, products=("TIL001", "TIL002"))
    url = database_url(kind, tmp_path)
    first = make_service(out, url)
    try:
        assert [first.current_version(p) for p in ("TIL001", "TIL002")] == [1, 1]   # both opened
        first.factory.kw["bind"].dispose()

        run(overwrite=True, fmo_percentile=99.0)
        again = build_service(out, url)
        new_auto = again.source.automatic("TIL002")
        assert new_auto != gates(again, "TIL002", 1)   # the settings moved TIL002's gates
        again.automatic_version("TIL001", "alice")     # the source's page opened
        [saved] = again.apply_to_batch("TIL001", user(again, "alice"), "surface", "CD3+", ["TIL002"], "group gate").saved
        versions = again.versions("TIL002")
        auto = [v for v in versions if v.source == "automatic"][-1]
        assert json.loads(auto.gates_json) == new_auto and auto.version == 2
        assert (saved.version, saved.based_on) == (3, 2)
        expected = json.loads(json.dumps(new_auto))
        expected["tubes"]["surface"]["gates"]["CD3+"] = gates(again, "TIL001")["tubes"]["surface"]["gates"]["CD3+"]
        assert json.loads(saved.gates_json) == expected
        again.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_product_re_run_after_signing_is_said_to_need_review(kind, tmp_path, processed_once, reruns):
    """`tilpheno process --overwrite` with another FMO percentile over a folder whose products QA had
    approved: the approvals were void (right), but the product list said 'not approved', counted them
    with the products never reviewed ('2 neither'), and `export-approved` said '0 approved product(s)
    of 2' with 'not released (not approved)': nothing told the lab that signed work had been re-run.
    Now the list, its counts, phenotypes_approved.csv's release_status and export-approved's summary
    say 're-run after signing: needs review' with the void reason, before and after the product is
    opened; an approval a reviewer's own later save voided is named as that, not as a re-run. The
    re-run (`process` with `--overwrite --fmo-percentile 99`, tables only) is the library call
    :func:`til001_run` makes, made once for both backends (``reruns``); the command line's own words
    over signed work are `test_process_over_signed_work_says_the_review_database_holds_decisions`'s."""
    import re
    import sys

    from review_support import database_url, drop_schema, make_service
    from tilpheno.review.server import build_service
    from tilpheno.review.web import create_app

    out, run = til001_run(processed_once, products=("TIL001", "TIL002"), reruns=reruns)
    url = database_url(kind, tmp_path)
    first = make_service(out, url)
    try:
        dave, alice = user(first, "dave"), user(first, "alice")
        for pid in ("TIL001", "TIL002"):
            first.sign(pid, dave.id, PASSWORDS["dave"], "approved for release", 1, approval_resolutions(first, pid),
                       oos_justification=OOS_REASON if pid == "TIL001" else None)
        first.save_version("TIL002", alice, 1, shifted_cd3(first, "TIL002", 0.02), "CD3 cut into the valley",
                           void_approval=standing_approval_id(first, "TIL002"))
        saved = "approval for release of version 1 void (gates changed to version 2 after signing)"
        assert first.listed_decisions().voided == {"TIL002": saved}
        first.factory.kw["bind"].dispose()

        def cli(*args):
            r = subprocess.run([sys.executable, "-m", "tilpheno", *map(str, args)], capture_output=True, text=True,
                               timeout=600)
            assert r.returncode == 0, r.stderr
            return r.stdout

        run(overwrite=True, fmo_percentile=99.0)
        rerun = ("approval for release of version 1 void: re-run after signing: needs review (input data, infused cell "
                 "number, strategy, FMO percentile, study dose definitions, panel file, FMO control markers (manifest "
                 "fmo_marker) or release spec changed after signing)")
        said = cli("export-approved", out, "-o", tmp_path / "approved", "--db", url)
        assert said.strip().endswith("0 approved product(s) of 2 exported to " + str(tmp_path / "approved")
                                     + " (1 re-run after signing: approval or rejection void, needs review; "
                                       "release_status says why)"), said
        table = pd.read_csv(tmp_path / "approved" / "phenotypes_approved.csv").set_index("product_id")
        assert list(table["review_status"]) == ["not approved", "not approved"]
        assert table.loc["TIL001", "release_status"] == f"not released (not approved: {rerun})"
        assert table.loc["TIL002", "release_status"] == f"not released (not approved: {saved})"

        again = build_service(out, url)
        client = create_app(again).test_client()
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
        client.post("/login", data={"username": "dave", "password": PASSWORDS["dave"], "csrf_token": csrf})

        def listed():
            page = client.get("/").text
            rows = {re.search(r">(TIL00\d)</a>", r).group(1): r for r in re.findall(r"<tr><td><a .*?</tr>", page, re.S)}
            return re.search(r'<p id="run-counts">(.*?)</p>', page, re.S).group(1), rows

        counts, rows = listed()
        assert ("0 approved, 0 rejected, 2 neither (<span class=\"needs-review\">1 re-run after signing: approval or "
                "rejection void, needs review</span>)") in counts, counts
        assert f'<td class="needs-review">not approved: {rerun}</td>' in rows["TIL001"], rows["TIL001"]
        assert f'<td class="needs-review">not approved: {saved}</td>' in rows["TIL002"], rows["TIL002"]
        assert again.automatic_version("TIL001", "dave").version == 2   # opened: the new run's gates, version 2
        _, rows = listed()
        assert ("not approved: approval for release of version 1 void: re-run after signing: needs review (gates "
                "changed to version 2 after signing)") in rows["TIL001"], rows["TIL001"]
        again.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


def test_a_re_export_leaves_out_the_certificate_of_an_approval_a_re_run_voided(tmp_path, processed_once, reruns):
    """TIL001 approved and exported (`export-approved OUT -o DIR`: its certificate and Gating-ML),
    then processed again with another FMO percentile (the approval void) and exported into DIR again:
    phenotypes_approved.csv said 'not approved', but DIR still held TIL001/certificate.pdf, a
    certificate of analysis approving the lot, and its Gating-ML: _keep_others kept every file the new
    export did not write. Now a previous export's certificate and Gating-ML of a product of the run
    that the new export does not write are left out, and the summary line names them; the lab's own
    files in DIR stay."""
    import sys

    from review_support import make_service

    out, run = til001_run(processed_once, reruns=reruns)
    url = f"sqlite:///{tmp_path / 'review.sqlite'}"
    service = make_service(out, url)
    service.sign("TIL001", user(service, "dave").id, PASSWORDS["dave"], "approved for release", 1,
                 approval_resolutions(service, "TIL001"), oos_justification=OOS_REASON)
    service.factory.kw["bind"].dispose()
    dest = tmp_path / "approved"

    def export():
        r = subprocess.run([sys.executable, "-m", "tilpheno", "export-approved", str(out), "-o", str(dest), "--db", url],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def files():
        return sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())

    assert export() == f"1 approved product(s) of 1 exported to {dest}"
    exported = ["TIL001/certificate.pdf", "TIL001/gates_surface.xml", "TIL001/gates_treg.xml"]
    assert files() == [*exported, "phenotypes_approved.csv", "populations_approved.csv"]
    (dest / "notes.txt").write_text("the lab's own\n")
    (dest / "TIL001" / "lab_notes.txt").write_text("the lab's own\n")
    run(overwrite=True, fmo_percentile=99.0)
    assert export().endswith(f"; removed the previous export's {', '.join(exported)} (3 file(s) of products no "
                             "longer approved)")
    assert files() == ["TIL001/lab_notes.txt", "notes.txt", "phenotypes_approved.csv", "populations_approved.csv"]
    table = pd.read_csv(dest / "phenotypes_approved.csv")
    assert list(table["review_status"]) == ["not approved"]


def test_process_over_signed_work_says_the_review_database_holds_decisions(tmp_path, processed_once):
    """`tilpheno process OUT --overwrite` over a folder whose products QA had approved in the default
    review database (OUT.review.sqlite, beside OUT) said nothing of it: the operator re-ran over signed
    work without a word. Now a note on stderr names the products it holds decisions of, that the
    database is kept, and which changes void them, in the words a signature voided by such a change
    gives (the CLI kept its own list: 'input files, strategies, ..., infused dose, ...'); a run with no
    such database, or one holding no approval or rejection, prints none."""
    import sys

    from review_support import SAMPLE, make_service
    from tilpheno.review.db import default_db_path
    from tilpheno.review.server import build_service

    out, _ = til001_run(processed_once)
    database = default_db_path(out)

    def process():
        r = subprocess.run([sys.executable, "-m", "tilpheno", "process", SAMPLE, "-o", out, "--manifest",
                            out.parent / "manifest.csv", "--outcomes", SAMPLE / "outcomes.csv", "--allow-unmatched",
                            "--reports", "none", "--overwrite", "--fmo-percentile", "99"],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        return r.stderr

    assert "note:" not in process()                              # no database beside OUT
    service = make_service(out, f"sqlite:///{database}")
    service.sign("TIL001", user(service, "alice").id, PASSWORDS["alice"], "reviewed", 1, {})
    service.factory.kw["bind"].dispose()
    assert "note:" not in process()                              # a 'reviewed' signature decides nothing
    again = build_service(out, f"sqlite:///{database}")
    again.sign("TIL001", user(again, "dave").id, PASSWORDS["dave"], "approved for release", again.current_version("TIL001"),
               approval_resolutions(again, "TIL001"), oos_justification=OOS_REASON)
    again.factory.kw["bind"].dispose()
    before = database.read_bytes()
    said = process().strip().splitlines()[-1]   # after the outcomes table's line
    assert said == (f"note: {database} holds QA decisions (approvals or rejections) of TIL001: kept; one on a "
                            f"product whose {DATA_CHANGED} this run changed is void, as is one "
                            "whose automatic gates it changed once "
                            "the product is opened: "
                            f"`tilpheno serve {out}` lists them as 're-run after signing: needs review'"), said
    assert database.read_bytes() == before                       # read, not changed


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_rerun_with_another_infused_dose_voids_the_approval(kind, tmp_path, processed_once, reruns):
    """process --overwrite on the same files with a corrected outcomes table (TIL001's infused cells
    doubled): the gates are the same, so no new version, and the approval stayed valid while the
    approved export's doses (cd3_dose_cells, ...) doubled under it: approved numbers changed with
    nothing void and nothing audited. The signature now binds the infused cell number: it is void,
    saying why, and the product is approved again only by a new signature."""
    from review_support import database_url, drop_schema, make_service
    from tilpheno.review.export import approved_tables
    from tilpheno.review.server import build_service

    pid = "TIL001"
    out, run = til001_run(processed_once, reruns=reruns, outcomes_copy=True)
    outcomes = pd.read_csv(out.parent / "outcomes.csv")
    url = database_url(kind, tmp_path)
    first = make_service(out, url)
    try:
        first.sign(pid, user(first, "dave").id, PASSWORDS["dave"], "approved for release", 1, {}, oos_justification=OOS_REASON)
        dose = approved_tables(first)[0].set_index("product_id").loc[pid, "cd3_dose_cells"]
        first.factory.kw["bind"].dispose()

        outcomes.loc[outcomes["product_id"] == pid, "til_dose_cells"] *= 2
        outcomes.to_csv(out.parent / "outcomes.csv", index=False)
        run(overwrite=True)
        again = build_service(out, url)
        assert again.current_version(pid) == 1   # the same gates: no new version
        row = approved_tables(again)[0].set_index("product_id").loc[pid]
        assert row["review_status"] == "not approved" and math.isnan(row.get("cd3_dose_cells", math.nan))
        [view] = again.signatures(pid)
        assert not view.valid and view.void_reason == f"void: {DATA_CHANGED} changed after signing"
        again.sign(pid, user(again, "dave").id, PASSWORDS["dave"], "approved for release", 1, {}, oos_justification=OOS_REASON)
        row = approved_tables(again)[0].set_index("product_id").loc[pid]
        assert row["review_status"] == "approved" and row["cd3_dose_cells"] == pytest.approx(2 * dose, rel=1e-9)
        again.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_rerun_with_another_dose_definition_voids_the_approval(kind, tmp_path, processed_once, reruns):
    """process --overwrite on the same files with a copy of the study whose treg_dose_cells is based
    on cd3_dose_cells instead of cd4_dose_cells: gates, inputs, strategies, release spec and infused
    cells unchanged, so the approval stayed valid while the approved export's treg_dose_cells grew
    under it (TIL001: 2.57e8 -> 6.21e8 cells, `export-approved` still '2 approved'). The signature
    now binds the study's dose definitions: it is void, saying so, and the product is approved
    again only by a new signature, whose doses are the new run's."""
    from review_support import database_url, drop_schema, make_service
    from tilpheno.review.export import approved_tables
    from tilpheno.review.server import build_service

    pid = "TIL001"
    out, run = til001_run(processed_once, reruns=reruns)
    url = database_url(kind, tmp_path)
    first = make_service(out, url)
    try:
        first.sign(pid, user(first, "dave").id, PASSWORDS["dave"], "approved for release", 1, {}, oos_justification=OOS_REASON)
        signed = approved_tables(first)[0].set_index("product_id").loc[pid]
        first.factory.kw["bind"].dispose()

        study = tmp_path / "study"
        shutil.copytree(Path(__file__).resolve().parents[1] / "tilpheno" / "studies" / "til", study)
        text_before = (study / "study.yaml").read_text()
        edited = text_before.replace("treg_dose_cells:   {base: cd4_dose_cells", "treg_dose_cells:   {base: cd3_dose_cells")
        assert edited != text_before
        (study / "study.yaml").write_text(edited)
        run(overwrite=True, study=study / "study.yaml")
        again = build_service(out, url)
        assert again.current_version(pid) == 1   # the same gates: no new version
        run_row = pd.read_csv(out / "phenotypes.csv", dtype={"product_id": str}).set_index("product_id").loc[pid]
        moved = signed["treg_dose_cells"] * signed["cd3_dose_cells"] / signed["cd4_dose_cells"]   # the new base
        assert run_row["treg_dose_cells"] == pytest.approx(moved, rel=1e-9)
        row = approved_tables(again)[0].set_index("product_id").loc[pid]
        assert row["review_status"] == "not approved" and math.isnan(row.get("treg_dose_cells", math.nan))
        [view] = again.signatures(pid)
        assert not view.valid and "study dose definitions" in view.void_reason, view.void_reason
        again.sign(pid, user(again, "dave").id, PASSWORDS["dave"], "approved for release", 1, {}, oos_justification=OOS_REASON)
        row = approved_tables(again)[0].set_index("product_id").loc[pid]
        assert row["review_status"] == "approved" and row["treg_dose_cells"] == pytest.approx(moved, rel=1e-9)
        again.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


SAMPLE_PANEL = "tube,detector,marker\nsurface,PE-A,PD1\nsurface,APC-A,CD56\n"
"""A panel file naming the detectors of the sample's surface PD1 and CD56 as its files' $PnS do."""


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
@pytest.mark.parametrize("change", ["panel row", "fmo_marker"])
def test_a_rerun_with_a_corrected_panel_row_or_fmo_label_voids_the_approval(change, kind, tmp_path, processed_once, reruns):
    """TIL001 processed with the panel file's PD1 and CD56 rows swapped (which detector carries which
    marker), or with the manifest's fmo_marker of its PD1 and CD56 FMO controls swapped (which FMO
    anchors which gate), approved with its QC flags resolved; the lab corrects the row or the label
    and processes the same files again (inputs, strategies, release spec, doses unchanged; the
    new run raises no flag): the approval stayed valid (the list, export-approved: approved) until
    the product was opened and its new automatic gates imported. The signature binds the panel
    file's rows and the FMO controls' markers: void at once, the reason naming them."""
    from review_support import database_url, drop_schema, make_service
    from tilpheno.review.export import approved_tables
    from tilpheno.review.server import build_service

    pid = "TIL001"
    out, run = til001_run(processed_once, reruns=reruns, panel=SAMPLE_PANEL)
    if change == "panel row":
        path = out.parent / "panel.csv"
        swapped = SAMPLE_PANEL.replace("PE-A,PD1", "PE-A,CD56").replace("APC-A,CD56", "APC-A,PD1")
    else:
        path = out.parent / "manifest.csv"
        manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
        swapped = manifest.assign(fmo_marker=manifest["fmo_marker"].replace({"PD1": "CD56", "CD56": "PD1"})).to_csv(index=False)
    correct = path.read_text()
    assert swapped != correct
    path.write_text(swapped)
    run(overwrite=True)
    signed = pd.read_csv(out / "populations.csv", dtype=str, keep_default_na=False)
    url = database_url(kind, tmp_path)
    first = make_service(out, url)
    try:
        first.sign(pid, user(first, "dave").id, PASSWORDS["dave"], "approved for release", 1,
                   approval_resolutions(first, pid), oos_justification=OOS_REASON)
        assert approved_tables(first)[0].set_index("product_id").loc[pid, "review_status"] == "approved"
        first.factory.kw["bind"].dispose()

        path.write_text(correct)
        run(overwrite=True)
        assert not pd.read_csv(out / "populations.csv", dtype=str, keep_default_na=False).equals(signed)   # gates moved
        again = build_service(out, url)
        assert not [f for f in again.source.qc_flags(pid) if f["severity"] in ("warning", "error")]
        listed = again.listed_decisions()   # the product not opened: its new gates not imported
        assert listed.decisions[pid] is None, listed.decisions
        assert listed.voided[pid] == (
            "approval for release of version 1 void: re-run after signing: needs review (input data, infused cell "
            "number, strategy, FMO percentile, study dose definitions, panel file, FMO control markers (manifest "
            "fmo_marker) or release spec changed after signing)"), listed.voided[pid]
        assert approved_tables(again)[0].set_index("product_id").loc[pid, "review_status"] == "not approved"
        [view] = again.signatures(pid)   # opened: still void
        assert not view.valid, view
        again.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_rerun_with_a_reacquired_file_is_reviewed_again(kind, tmp_path, processed_once, reruns):
    """process --overwrite in the same output folder after one input file was replaced (TIL001's CD8
    FMO re-acquired: here TIL002's): the database held TIL001 with the first run's files, so the
    product list, the product and its certificate answered 'the database holds it with other input
    files ... use one database per output folder' (HTTP 400) for every user, and the product could
    never be reviewed again in its own database. Now the approval made on the first files is void
    (the list says not approved), opening the product records the new files (``reimport_product``,
    naming the file that changed) and the new run's automatic gates become the current version,
    reproducing the new phenotypes.csv. Another output folder served with that database is still
    refused, naming both folders."""
    from review_support import SAMPLE, database_url, drop_schema, make_service
    from tilpheno.pipeline import process_folder
    from tilpheno.review.db import ReviewError
    from tilpheno.review.server import build_service

    pid, changed = "TIL001", "TIL001_surface_FMO_CD8.fcs"
    manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
    one = manifest[manifest["product_id"] == pid]

    def run(folder, overwrite=False):
        inputs = tmp_path / f"in_{folder}"
        inputs.mkdir(exist_ok=True)
        for name in one["file"]:
            if not (inputs / name).exists():
                shutil.copy(SAMPLE / name, inputs / name)
        one.to_csv(tmp_path / "manifest.csv", index=False)
        summary = process_folder(inputs, tmp_path / folder, manifest_csv=tmp_path / "manifest.csv",
                                 make_reports=False, overwrite=overwrite)
        assert summary.ok, summary.failed
        return tmp_path / folder, inputs

    out, inputs, rerun = copied_and_processed(processed_once, reruns, pid)
    url = database_url(kind, tmp_path)
    first = make_service(out, url)
    try:
        first.sign(pid, user(first, "dave").id, PASSWORDS["dave"], "approved for release", 1, {}, oos_justification=OOS_REASON)
        assert first.approved_version(pid).version == 1
        old_inputs = first.source.inputs_digest(pid)
        first.factory.kw["bind"].dispose()

        shutil.copy(SAMPLE / "TIL002_surface_FMO_CD8.fcs", inputs / changed)   # re-acquired
        rerun()
        again = build_service(out, url)
        assert again.decisions()[pid] is None                   # the product list: not approved, no error
        [view] = again.signatures(pid)                           # opening the product
        assert not view.valid and "input data" in view.void_reason
        auto = again.automatic_version(pid, "alice")
        assert json.loads(auto.gates_json) == again.source.automatic(pid) and again.current_version(pid) == auto.version
        res = recompute(again.source, pid, json.loads(auto.gates_json))
        row = again.source.phenotype_row(pid)
        for var in ("cd8_pct_of_cd3", "cd8pd1_pct_of_cd8", "viability_pct"):
            assert res.phenotype[var] == pytest.approx(float(row[var]), rel=1e-9), var
        with again.factory() as db:
            entry = db.scalars(select(AuditEntry).where(AuditEntry.action == "reimport_product")
                               .order_by(AuditEntry.seq)).first()
            assert audit.verify(db).ok
        assert json.loads(entry.before_json)["inputs"] == old_inputs
        assert json.loads(entry.after_json)["inputs"] == again.source.inputs_digest(pid)
        assert changed in entry.reason and "TIL001_surface_stain.fcs" not in entry.reason
        again.sign(pid, user(again, "dave").id, PASSWORDS["dave"], "approved for release", again.current_version(pid), {},
                   oos_justification=OOS_REASON)
        assert again.approved_version(pid).version == again.current_version(pid)
        again.factory.kw["bind"].dispose()

        other, _ = run("other")   # the same files, now in another output folder served with this database
        shutil.copy(SAMPLE / changed, tmp_path / "in_other" / changed)
        run("other", overwrite=True)
        foreign = build_service(other, url)
        with pytest.raises(ReviewError, match="other input files") as refused:
            foreign.ensure_imported(pid)
        assert str(out) in str(refused.value) and str(other) in str(refused.value)
        foreign.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


@pytest.mark.parametrize("form", ["legacy", "dose", "controls", "study_doses"])
def test_a_signature_made_before_the_dose_was_bound_stays_valid(form, service, monkeypatch):
    """A database's signatures made before the infused cell number (``legacy``), the controls
    (``dose``), the dose definitions (``controls``) or the panel file and FMO markers
    (``study_doses``) were part of the signed data (their data SHA-256 lacks them) stay valid while
    their product is unchanged; a signature made now binds them."""
    from tilpheno.review import service as module

    pid = "TIL002"
    hashed = module.data_sha256
    monkeypatch.setattr(module, "data_sha256", lambda *args, **kw: hashed(*args, form=form))
    old = service.sign(pid, user(service, "carol").id, PASSWORDS["carol"], "reviewed", service.current_version(pid), {})
    monkeypatch.setattr(module, "data_sha256", hashed)
    new = service.sign(pid, user(service, "carol").id, PASSWORDS["carol"], "reviewed", service.current_version(pid), {})
    assert old.data_sha256 != new.data_sha256
    views = {v.row.id: v for v in service.signatures(pid)}
    assert views[old.id].valid and views[new.id].valid


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_signature_inserted_outside_the_app_is_void_and_named(kind, review_out, review_source, tmp_path):
    """The signatures table refuses UPDATE and DELETE but must accept INSERT: a row written there
    directly (a forged approval, its own hash consistent) has no 'sign' entry in the chained trail,
    so it approves nothing and `audit verify` names it; the app's own signatures stay valid. The
    product list names it void, not re-run after signing: the signature's view carries that it is
    outside the trail (``in_trail``; service.voided read it back from the reason's words)."""
    import hashlib

    from review_support import database_url, drop_schema, make_service
    from tilpheno.review.models import Signature

    url = database_url(kind, tmp_path)
    svc = make_service(review_out, url, review_source)
    pid = "TIL002"
    try:
        v = svc.current_version(pid)
        genuine = svc.sign(pid, user(svc, "dave").id, PASSWORDS["dave"], "reviewed", v, {})
        with svc.factory() as db:
            forged = Signature(product_id=pid, version=v, meaning="approved for release", username="carol",
                               full_name="Carol Tester", role="reviewer", signed_at=genuine.signed_at,
                               data_sha256=genuine.data_sha256, gates_sha256=genuine.gates_sha256,
                               qc_resolutions_json="{}", comment="")
            forged.signature_sha256 = hashlib.sha256(audit.canonical(audit.signature_content(forged)).encode()).hexdigest()
            db.add(forged)
            db.commit()
            forged_id = forged.id
        views = {view.row.id: view for view in svc.signatures(pid)}
        assert views[genuine.id].valid and not views[forged_id].valid
        assert "not in the audit trail" in views[forged_id].void_reason
        assert not views[forged_id].in_trail and views[genuine.id].in_trail
        listed = svc.listed_decisions()   # void, and no re-run voided it: the product list says so
        assert listed.voided[pid] == (f"approval for release of version {v} void (not in the audit trail (a signature "
                                      "the app did not make))") and pid not in listed.rerun, listed
        assert svc.approved_version(pid) is None
        with svc.factory() as db:
            result = audit.verify(db)
        assert not result.ok
        assert result.problems == [f"signature {forged_id} ({pid} version {v}, 'approved for release' by carol): no "
                                   "'sign' entry of the audit trail holds it (inserted outside the app)"]
        svc.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


def test_the_product_lists_approvals_are_each_products_own(service):
    """approved_of(listed_decisions) (the product list: a few queries for the whole run) gives, for every
    product a user may see, what approved_version works out product by product: after an
    approval, an approval then a rejection, and an approval voided by a later save."""
    from sqlalchemy import event

    from tilpheno.review.service import approved_of

    dave, carol = user(service, "dave"), user(service, "carol")
    first, second = service.source.product_ids()[:2]

    def resolutions(pid):
        return approval_resolutions(service, pid)

    def check(expect):
        engine = service.factory.kw["bind"]
        queries = []
        listen = lambda *args: queries.append(1)   # noqa: E731
        event.listen(engine, "before_cursor_execute", listen)
        try:
            bulk = approved_of(service.listed_decisions(dave).decisions)
        finally:
            event.remove(engine, "before_cursor_execute", listen)
        assert len(queries) <= 5, len(queries)   # not several per product
        for pid, approved in bulk.items():
            own = service.approved_version(pid)
            assert (approved.version if approved else None) == (own.version if own else None), pid
        assert {pid: bool(bulk[pid]) for pid in expect} == expect

    approvals = {}
    for pid in (first, second):
        service.ensure_imported(pid)
        approvals[pid] = service.sign(pid, dave.id, PASSWORDS["dave"], "approved for release",
                                      service.current_version(pid), resolutions(pid),
                                      "approved for the list test", oos_justification=OOS_REASON)   # not a repeat of an earlier test's approval
    check({first: True, second: True})
    service.sign(first, carol.id, PASSWORDS["carol"], "rejected", service.current_version(first), {}, "second look")
    v = service.current_version(second)
    service.save_version(second, carol, v, shifted_cd3(service, second, 0.004), "carol moves CD3 after the approval",
                         void_approval=approvals[second].id)
    check({first: False, second: False})
    assert set(approved_of(service.listed_decisions(user(service, "bob")).decisions)) <= {"TIL001"}   # an analyst: assigned products only


def test_a_save_or_signature_is_not_held_up_by_other_products_saves_signatures_and_logins(service, monkeypatch):
    """While Alice's save of TIL001 (then her signature) is on its way, each attempt sees Carol save
    and sign TIL002 and log in: changes that cannot alter Alice's access to TIL001. Both are stored
    at the first attempt, instead of re-running on every audited change anywhere and ending in
    "database busy: please retry" when other users keep working."""
    from tilpheno.review import service as service_module

    pid, other = "TIL001", "TIL002"
    alice, carol = user(service, "alice"), user(service, "carol")
    editing_refusal, signing_refusal = service._editing_refusal, service._signing_refusal
    attempts = {"save": 0, "sign": 0}

    def carol_works():
        v = service.current_version(other)
        service.save_version(other, carol, v, shifted_cd3(service, other, 0.001 * (1 - 2 * (v % 2))), "carol trims CD3",
                             void_approval=standing_approval_id(service, other))
        service.sign(other, carol.id, PASSWORDS["carol"], "reviewed", v + 1, {})
        service_module.transaction(service.factory, lambda db: audit.append(db, "carol", "login"))

    def editing_then_others(account, product_id, roles):
        refusal = editing_refusal(account, product_id, roles)
        if product_id == pid:
            attempts["save"] += 1
            carol_works()
        return refusal

    def signing_then_others(db, account, product_id, meaning, version):
        refusal = signing_refusal(db, account, product_id, meaning, version)
        if product_id == pid:
            attempts["sign"] += 1
            carol_works()
        return refusal

    monkeypatch.setattr(service, "_editing_refusal", editing_then_others)
    monkeypatch.setattr(service, "_signing_refusal", signing_then_others)
    v = service.current_version(pid)
    saved = service.save_version(pid, alice, v, shifted_cd3(service, pid, 0.004), "alice trims CD3")
    assert saved.version == v + 1 and attempts["save"] == 1
    sig = service.sign(pid, alice.id, PASSWORDS["alice"], "reviewed", v + 1, {})
    assert sig.version == v + 1 and attempts["sign"] == 1


def test_a_writer_waiting_for_the_audit_head_appends_after_the_other_without_a_retry(service):
    """PostgreSQL: while one transaction holds the audit head (appended, not yet committed), a second
    writer waits for it and then appends the next entry at its first attempt, instead of failing its
    head update after the wait and re-running (every concurrent save, signature or login used to
    retry, and under load end "database busy"). SQLite orders writers with its database lock."""
    import time

    from tilpheno.review.service import transaction

    if service.factory.kw["bind"].dialect.name != "postgresql":
        pytest.skip("PostgreSQL row locks")
    holding, release, attempts = threading.Event(), threading.Event(), []

    def first(db):
        audit.append(db, "alice", "login")
        holding.set()
        release.wait(10)

    def second(db):
        attempts.append(1)
        audit.append(db, "carol", "login")

    one = threading.Thread(target=transaction, args=(service.factory, first))
    one.start()
    assert holding.wait(10)
    two = threading.Thread(target=transaction, args=(service.factory, second))
    two.start()
    time.sleep(0.3)   # the second writer reaches the head and waits
    release.set()
    one.join()
    two.join()
    assert attempts == [1]
    with service.factory() as db:
        newest, before = db.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(2))
    assert (newest.username, before.username) == ("carol", "alice") and newest.prev_sha256 == before.entry_sha256


def test_a_right_password_in_flight_does_not_undo_a_lock_out_set_meanwhile(service):
    """A wrong password checked at the same time as a right one (a guesser's requests in parallel)
    locked the account, and the right one, read before the lock, then cleared it and logged in: the
    lock-out let a guess in flight through. The account now stays locked and the right password is
    refused as locked."""
    from tilpheno.review.auth import get_user

    name = _new_account(service, "ivo")
    with service.factory() as db:
        row = db.scalar(select(User).where(User.username == name))   # read before the lock-out
        for _ in range(MAX_FAILURES):   # meanwhile, in other requests (each stores its failure)
            with service.factory() as other, pytest.raises(AuthError):
                try:
                    check_password(other, get_user(other, name), "wrong password")
                finally:
                    other.commit()
        assert row.locked_until is None and user(service, name).locked_until is not None
        with pytest.raises(AuthError, match="is locked until"):
            check_password(db, row, f"{name}-password-1")
        db.commit()
    assert user(service, name).locked_until is not None


def test_an_approval_over_a_rejection_names_it_and_says_why(service):
    """A version another reviewer rejected is approved without a change only by a reviewer who has
    seen that rejection (the request names it: its id, shown with who, when and why) and says why
    in a comment; otherwise the approval is refused, naming the rejection, and the refusal is
    audited. The approval's audit entry holds the rejection it overrules: the trail shows both."""
    pid = "TIL002"
    carol, dave = user(service, "carol"), user(service, "dave")
    v = service.current_version(pid)
    resolutions = approval_resolutions(service, pid)
    rejection = service.sign(pid, carol.id, PASSWORDS["carol"], "rejected", v, {}, "CD3 valley too high")
    for overrules, comment in ((None, "looks fine to me"), (rejection.id + 1000, "looks fine"), (True, "looks fine"),
                               (rejection.id, "")):
        with pytest.raises(GateSetError, match=rf"version {v} was rejected by Carol Tester \(carol\) at .* UTC: "
                                            r"'CD3 valley too high'"):
            service.sign(pid, dave.id, PASSWORDS["dave"], "approved for release", v, resolutions, comment, overrules)
        assert service.decision(pid) == ("rejected", v)
        with service.factory() as db:
            entry = db.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc())).first()
        assert (entry.action, entry.username) == ("signature_refused", "dave")
        assert "rejected by Carol Tester (carol)" in entry.reason
    service.sign(pid, dave.id, PASSWORDS["dave"], "reviewed", v, {})   # a "reviewed" signature decides nothing
    sig = service.sign(pid, dave.id, PASSWORDS["dave"], "approved for release", v, resolutions,
                       "the valley is at the FMO's 99.5th percentile", rejection.id, oos_justification=OOS_REASON)
    assert service.decision(pid) == ("approved for release", v)
    with service.factory() as db:
        entries = db.scalars(select(AuditEntry).where(AuditEntry.product_id == pid, AuditEntry.action == "sign")
                             .order_by(AuditEntry.seq)).all()
    assert [json.loads(e.after_json)["meaning"] for e in entries][-3:] == ["rejected", "reviewed", "approved for release"]
    assert json.loads(entries[-1].before_json)["overrules"] == {
        "signature_id": rejection.id, "signature_sha256": rejection.signature_sha256, "version": v, "username": "carol",
        "signed_at": rejection.signed_at, "comment": "CD3 valley too high"}
    assert entries[-1].reason == "the valley is at the FMO's 99.5th percentile"
    assert json.loads(entries[-1].after_json)["version"] == sig.version == v


def test_the_audit_trail_names_the_suggested_cut_a_save_applied(fresh_service):
    """A save whose gate sits exactly at a suggested cut (the page's candidate button: the live gate
    at the density valley its rule weighed) names that suggestion in its save_gates entry; a gate
    dragged elsewhere names none."""
    svc = fresh_service
    svc.automatic_version("TIL001", "alice")
    live = json.loads(svc.version("TIL001").gates_json)["tubes"]["surface"]["gates"]["live"]
    valley = next(c for c in svc.source.candidates("TIL001")["surface"]["live"] if c["rule"] == "valley_threshold")
    assert live["high"] != valley["cut"]

    def save(base, high, reason):
        return svc.save_version("TIL001", user(svc, "alice"), base,
                                {"tubes": {"surface": {"gates": {"live": {**live, "high": high}}}}}, reason)

    save(1, valley["cut"], "live cut at the valley")
    save(2, valley["cut"] + 0.01, "dragged a little higher")
    with svc.factory() as db:
        saved = [json.loads(r.after_json) for r in db.scalars(select(AuditEntry).where(AuditEntry.action == "save_gates")
                                                              .order_by(AuditEntry.seq))]
    assert saved[0]["suggestions"] == {"surface/live": {"rule": "valley_threshold", "label": "density valley",
                                                         "cut": valley["cut"]}}
    assert saved[0]["gates"]["surface/live"]["high"] == valley["cut"]
    assert "suggestions" not in saved[1]
    # a 2-D gate's suggestion: the singlets wedge with its lower edge at the doublet valley
    wedge = next(c for c in svc.source.candidates("TIL001")["surface"]["singlets"] if c["rule"] == "doublet_valley")
    singlets = json.loads(svc.version("TIL001").gates_json)["tubes"]["surface"]["gates"]["singlets"]
    svc.save_version("TIL001", user(svc, "alice"), 3, {"tubes": {"surface": {"gates": {
        "singlets": {**singlets, "vertices": wedge["vertices"]}}}}}, "singlets down to the doublet valley")
    with svc.factory() as db:
        last = json.loads(db.scalars(select(AuditEntry).where(AuditEntry.action == "save_gates")
                                     .order_by(AuditEntry.seq.desc())).first().after_json)
    assert last["suggestions"] == {"surface/singlets": {"rule": "doublet_valley", "label": "doublet valley",
                                                         "cut": wedge["cut"]}}


def test_a_products_file_labels_find_its_own_inputs_of_the_run(tmp_path):
    """run.json lists every product's inputs; populations.csv names a product's files by their name,
    or sub/X.fcs where two share one. Each label finds the input whose path ends in it; a name that
    other products' folders hold too, the one in the folder of the product's other files; where
    nothing tells, one line naming the label and the candidates (never another product's file)."""
    from tilpheno.review.db import ReviewError
    from tilpheno.review.regate import inputs_by_name, recorded_inputs

    def entry(path):
        return {"path": path, "sha256": path}

    inputs = inputs_by_name([entry(p) for p in ("/d/P1/stain.fcs", "/d/P1/fmo_a.fcs", "/d/P2/stain.fcs", "/d/P2/fmo_b.fcs",
                                                "/d/P3/sub1/X.fcs", "/d/P3/sub2/X.fcs", "/d/P3/ctl.fcs")])
    run = tmp_path / "run.json"
    assert recorded_inputs(["stain.fcs", "fmo_a.fcs"], inputs, run) == {
        "stain.fcs": entry("/d/P1/stain.fcs"), "fmo_a.fcs": entry("/d/P1/fmo_a.fcs")}
    assert recorded_inputs(["fmo_b.fcs", "stain.fcs"], inputs, run)["stain.fcs"] == entry("/d/P2/stain.fcs")
    assert recorded_inputs(["sub1/X.fcs", "sub2/X.fcs", "ctl.fcs"], inputs, run) == {
        "sub1/X.fcs": entry("/d/P3/sub1/X.fcs"), "sub2/X.fcs": entry("/d/P3/sub2/X.fcs"), "ctl.fcs": entry("/d/P3/ctl.fcs")}
    with pytest.raises(ReviewError, match=r"^stain.fcs: 2 inputs of .*run.json end in this name \(/d/P1/stain.fcs, "
                                          r"/d/P2/stain.fcs\)"):
        recorded_inputs(["stain.fcs"], inputs, run)
    with pytest.raises(ReviewError, match=r"^gone.fcs: not listed in .*run.json inputs$"):
        recorded_inputs(["gone.fcs"], inputs, run)


def test_products_in_folders_of_identically_named_files_open_on_their_own_files(tmp_path):
    """P1/ holds TIL001's files and P2/ TIL002's, under the same names (surface_stain.fcs, ...): the
    review app told the two products' files apart by folder alone and had nothing to go by (each
    product's files all share names with the other's) -> one line '2 inputs ... end in this name'
    and neither product could be reviewed. run.json now records each product's files
    (product_files), so each product opens on its own stained file (its SHA-256), also with the
    inputs moved to another folder (inputs=); a run.json without that record (an older run) gives
    one line saying so."""
    import hashlib

    from review_support import SAMPLE
    from tilpheno.pipeline import process_folder
    from tilpheno.review.db import ReviewError
    from tilpheno.review.regate import ReviewSource

    manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
    rows = manifest[manifest["product_id"].isin(["TIL001", "TIL002"])].copy()
    folder = tmp_path / "in"
    for pid, sub in (("TIL001", "P1"), ("TIL002", "P2")):
        (folder / sub).mkdir(parents=True)
        for f in rows.loc[rows["product_id"] == pid, "file"]:
            shutil.copy(SAMPLE / f, folder / sub / f.removeprefix(f"{pid}_"))
    rows["file"] = [f"{'P1' if pid == 'TIL001' else 'P2'}/{f.split('_', 1)[1]}" for pid, f in zip(rows["product_id"], rows["file"])]
    rows.to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "out"
    assert process_folder(folder, out, manifest_csv=tmp_path / "manifest.csv", outcomes_path=SAMPLE / "outcomes.csv",
                          allow_unmatched=True, make_reports=False).ok
    moved = tmp_path / "moved"
    for inputs in (None, moved):
        if inputs is not None:
            folder.rename(moved)
        source = ReviewSource(out, inputs)
        for pid in ("TIL001", "TIL002"):
            auto = source.automatic(pid)["tubes"]["surface"]
            assert auto["file"] == "surface_stain.fcs"
            assert auto["sha256"] == hashlib.sha256((SAMPLE / f"{pid}_surface_stain.fcs").read_bytes()).hexdigest()
    old = json.loads((out / "run.json").read_text())
    del old["product_files"]
    (out / "run.json").write_text(json.dumps(old))
    with pytest.raises(ReviewError, match=r"^surface_\w+\.fcs: 2 inputs .* older than the record of each product's "
                                          r"files: run `tilpheno process` again$"):
        ReviewSource(out, moved).product_files("TIL001")


def test_each_products_files_are_found_by_their_recorded_paths_at_once():
    """run.json's product_files (label -> path) find each product's entry of inputs by its path. They
    were first looked for among the inputs of the same name, which for 2000 product folders of
    identically named files scanned 2000 entries per file: 5 s per pass over the products (the
    product list, the export); by path, a dict look-up. A label the record lacks, or a path inputs
    does not list, is one line naming the label."""
    import time
    from pathlib import Path

    from tilpheno.review.db import ReviewError
    from tilpheno.review.regate import product_inputs

    names = [f"f{i}.fcs" for i in range(9)]
    inputs = {f"/d/P{p}/{n}": {"path": f"/d/P{p}/{n}", "sha256": f"{p}{n}"} for p in range(2000) for n in names}
    recorded = {f"P{p}": {n: f"/d/P{p}/{n}" for n in names} for p in range(2000)}
    run = Path("/out/run.json")
    start = time.perf_counter()
    found = [product_inputs(names, recorded[f"P{p}"], inputs, run) for p in range(2000)]
    assert time.perf_counter() - start < 1.0
    assert all(found[p][n]["sha256"] == f"{p}{n}" for p in (0, 1234, 1999) for n in names)
    with pytest.raises(ReviewError, match=r"^gone.fcs: not among the product's files recorded in /out/run.json "
                                          r"\(product_files\)"):
        product_inputs(["gone.fcs"], recorded["P1"], inputs, run)
    with pytest.raises(ReviewError, match=r"^f0.fcs: not among .* \(inputs\)"):
        product_inputs(["f0.fcs"], {"f0.fcs": "/elsewhere/f0.fcs"}, inputs, run)


def test_a_product_whose_id_starts_with_a_formula_character_opens(tmp_path):
    """The pipeline writes a text cell starting with = + - @ with a leading ' (CSV injection), so a
    product "+TIL001" is "'+TIL001" in phenotypes.csv, populations.csv and qc.csv. The review app read
    the tables raw: its product list showed "'+TIL001", which matched none of run.json's product
    files ("not among the product's files"), and "+TIL001" was no product. Read back, each table is
    as the run had it: the product opens, re-gates to phenotypes.csv and lists every qc.csv flag."""
    from review_support import SAMPLE
    from tilpheno.pipeline import process_folder
    from tilpheno.review.regate import ReviewSource

    manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
    manifest = manifest[manifest["product_id"] == "TIL001"].copy()
    manifest["file"] = [str(SAMPLE / f) for f in manifest["file"]]
    manifest["product_id"] = "+TIL001"
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "out"
    assert process_folder(SAMPLE, out, manifest_csv=tmp_path / "manifest.csv", allow_unmatched=True,
                          make_reports=False).ok
    assert pd.read_csv(out / "phenotypes.csv", dtype=str)["product_id"].tolist() == ["'+TIL001"]   # as written
    source = ReviewSource(out)
    assert source.product_ids() == ["+TIL001"]
    assert source.automatic("+TIL001")          # re-gated and checked against phenotypes.csv
    written = pd.read_csv(out / "qc.csv", dtype=str, keep_default_na=False)
    assert len(source.qc_flags("+TIL001")) == len(written) > 0
    assert {f.name for f in source.product_files("+TIL001")} == set(
        pd.read_csv(out / "populations.csv", dtype=str)["file"])


def overturning_cd3(service, pid):
    """``pid``'s CD3+ cut lowered 0.2 (logicle) from its current version: TIL001's CD3+ % of live
    lymphocytes goes from 87.74 (the run's fail, no flag on its gates) to above the spec's 90."""
    return shifted_cd3(service, pid, -0.2)


def test_a_save_overturning_a_determined_fail_needs_a_deviation_justification_recorded_apart(fresh_service):
    """TIL001 fails CD3+ T cells in the run on gates no QC flag asked to review (a determined fail).
    A save that moved its CD3 cut until the criterion passed was stored like any correction (a
    reason), and the approval released a lot the run had failed, with nothing saying so. Now such a
    save needs a deviation justification (refused without one, nothing saved), which a ``deviation``
    entry of the trail records apart (the run's value, the new one, why); a later save that keeps the
    pass needs none, and the version still names the first one's justification; a batch apply that
    would overturn a determined fail is refused."""
    from tilpheno.release import evaluate as evaluate_release
    from tilpheno.review.service import DeviationRequired

    service, pid = fresh_service, "TIL001"
    src = service.source
    run_row = src.phenotype_row(pid)
    assert src.run_release(pid).status == run_row["release_status"] == "fail"
    assert run_row["review_status"] == "no gating flags"   # no flag holds any criterion: the fail is determined
    alice = user(service, "alice")
    moved = overturning_cd3(service, pid)
    g = gates(service, pid)
    g["tubes"]["surface"]["gates"]["CD3+"] = moved["tubes"]["surface"]["gates"]["CD3+"]
    # independent truth: the spec applied to the counts of every event under the moved gates
    tube = src.stained(pid)["surface"]
    masks = evaluate(tube.strategy, tube.tube, g["tubes"]["surface"]["gates"])
    cd3 = 100.0 * masks["CD3+"].sum() / masks["live_lymph"].sum()
    [crit] = [r for r in evaluate_release(src.release_spec, {"cd3_pct_of_live_lymph": cd3}) if r.criterion.column
              == "cd3_pct_of_live_lymph"]
    assert crit.outcome == "pass" and float(run_row["cd3_pct_of_live_lymph"]) < crit.criterion.limit

    with pytest.raises(DeviationRequired, match=r"^deviation: these gates overturn the run's determined fail on CD3\+ T "
                                                r"cells \(cd3_pct_of_live_lymph > 90 % of live lymphocytes: 87.74 in the "
                                                r"run, [0-9.]+ on these gates\)"):
        service.save_version(pid, alice, 1, moved, "CD3 dim cells are T cells")
    with pytest.raises(DeviationRequired):
        service.save_version(pid, alice, 1, moved, "CD3 dim cells are T cells", deviation="  ")
    with pytest.raises(GateSetError, match=r"^deviation: required \(at least 3 characters\)$"):
        service.save_version(pid, alice, 1, moved, "CD3 dim cells are T cells", deviation="ok")
    assert service.current_version(pid) == 1
    v2 = service.save_version(pid, alice, 1, moved, "CD3 dim cells are T cells",
                              deviation="FMO overlay shows the CD3-dim cells are T cells; QA deviation DV-17")
    with service.factory() as db:
        entries = list(db.scalars(select(AuditEntry).where(AuditEntry.product_id == pid).order_by(AuditEntry.seq)))
    assert [e.action for e in entries] == ["import_product", "save_gates", "deviation"]
    dev = entries[-1]
    assert (dev.username, dev.reason) == ("alice", "FMO overlay shows the CD3-dim cells are T cells; QA deviation DV-17")
    [c] = json.loads(dev.after_json)["criteria"]
    assert json.loads(dev.after_json)["version"] == v2.version == 2
    assert c["criterion"] == "CD3+ T cells" and c["run_outcome"] == "fail" and c["outcome"] == "pass"
    assert math.isclose(c["run_value"], float(run_row["cd3_pct_of_live_lymph"]), rel_tol=1e-9)
    assert math.isclose(c["value"], cd3, rel_tol=1e-12)

    # a later correction that keeps the pass: no new justification; the version names the first
    v3 = service.save_version(pid, user(service, "carol"), 2, shifted_cd3(service, pid, 0.002), "carol trims CD3")
    [d] = service.deviations(pid, v3)
    assert (d.reason, d.by, d.version) == (dev.reason, "Alice Tester (alice)", 2)
    assert d.words().startswith("release overturns the run's determined fail on CD3+ T cells (")
    assert d.words().endswith(f": reason {dev.reason!r}, by Alice Tester (alice), at {dev.at[:19].replace('T', ' ')} UTC "
                              "(version 2)")
    assert service.deviations(pid, service.version(pid, 1)) == []   # the automatic gates overturn nothing

    # TIL003 fails CD3+ in the run too (determined); TIL001's lowered cut would pass it: refused, nothing applied
    target = "TIL003"
    t_gates = gates(service, target)
    t_gates["tubes"]["surface"]["gates"]["CD3+"] = gates(service, pid)["tubes"]["surface"]["gates"]["CD3+"]
    assert src.run_release(target).determined_fails[0].criterion.name == "CD3+ T cells"
    assert recompute(src, target, t_gates, medians=False).release[1].outcome == "pass"
    with pytest.raises(GateSetError, match=r"^TIL003: surface/CD3\+ from TIL001 overturns the run's determined fail on "
                                           r"CD3\+ T cells .*correct TIL003 on its own page, with a deviation justification "
                                           r"\(nothing was applied\)$"):
        service.apply_to_batch(pid, alice, "surface", "CD3+", [target], "same CD3 cut")
    assert service.current_version(target) == 1
    with service.factory() as db:
        assert audit.verify(db).ok


def copied_and_processed(processed_once, reruns, pid: str):
    """``pid``'s sample files copied into ``WORK/in`` and processed (tables only) into ``WORK/out``
    (:func:`processed_once`): ``(WORK/out, inputs folder, rerun)``, ``rerun()`` processing it again
    with ``--overwrite`` (after a test replaced a file there; a re-run of ``reruns``,
    :class:`tspeed2_support.Reruns`: made once for the same files)."""
    from review_support import SAMPLE
    from tilpheno.pipeline import process_folder

    def run(work, overwrite=False):
        summary = process_folder(work / "in", work / "out", manifest_csv=work / "manifest.csv",
                                 make_reports=False, overwrite=overwrite)
        assert summary.ok, summary.failed

    def first(work):
        manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
        one = manifest[manifest["product_id"] == pid]
        (work / "in").mkdir()
        for name in one["file"]:
            shutil.copy(SAMPLE / name, work / "in" / name)
        one.to_csv(work / "manifest.csv", index=False)
        run(work)

    work = processed_once(f"copied_{pid}", first)
    return work / "out", work / "in", lambda: reruns.run(work, lambda: run(work, overwrite=True), "overwrite")


def imported_copy(kind, tmp_path, processed_once, reruns, pid: str):
    """:func:`copied_and_processed` of ``pid``, and a service on a fresh database of ``kind`` (in
    ``tmp_path``) over its output with ``pid`` opened (imported): ``(output folder, inputs folder,
    rerun, database url, service)``; the caller drops the schema (``drop_schema(url)``)."""
    from review_support import database_url, drop_schema, make_service

    out, inputs, rerun = copied_and_processed(processed_once, reruns, pid)
    url = database_url(kind, tmp_path)
    service = make_service(out, url)
    try:
        service.ensure_imported(pid)
    except BaseException:
        drop_schema(url)
        raise
    return out, inputs, rerun, url, service


def processed_again(first, out: Path, inputs: Path, rerun, url: str, name: str):
    """``name`` in the ``inputs`` copy replaced by TIL002's file of that name (``TIL001`` ->
    ``TIL002``), the folder processed again (``rerun``) and a new service over its output ``out`` on
    the database of ``first``, whose connections are closed first."""
    from review_support import SAMPLE
    from tilpheno.review.server import build_service

    first.factory.kw["bind"].dispose()
    shutil.copy(SAMPLE / name.replace("TIL001", "TIL002"), inputs / name)
    rerun()
    return build_service(out, url)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_approval_does_not_cover_qc_flags_raised_after_it(kind, tmp_path, monkeypatch, processed_once, reruns):
    """TIL001 approved for release, then processed again with its unstained control replaced (here by
    a copy of its stained surface tube): the new run raises unstained_positive review warnings on
    the control, which the signature's data hash did not bind (the control is not a gated file; an
    approval made before controls were bound, as here, still does not).
    The approval stayed valid, the approved export said pass and the certificate 'RELEASE CRITERIA
    MET' beside warnings no one resolved, though an approval needs a resolution of each. Now an
    approval that holds no resolution of a warning/error flag of the current run is void, naming
    them; a new approval resolving them stands."""
    from review_support import SAMPLE, database_url, drop_schema, make_service
    from tilpheno.review import service as module
    from tilpheno.review.export import approved_tables
    from tilpheno.review.server import build_service

    pid = "TIL001"
    out, inputs, rerun = copied_and_processed(processed_once, reruns, pid)
    url = database_url(kind, tmp_path)
    first = make_service(out, url)
    try:
        assert not [f for f in first.source.qc_flags(pid) if f["severity"] in ("warning", "error")]
        hashed = module.data_sha256   # signed as before the controls were bound: its hash lacks them
        monkeypatch.setattr(module, "data_sha256", lambda *args, **kw: hashed(*args, form="dose"))
        first.sign(pid, user(first, "dave").id, PASSWORDS["dave"], "approved for release", 1, {}, oos_justification=OOS_REASON)
        monkeypatch.setattr(module, "data_sha256", hashed)
        first.factory.kw["bind"].dispose()

        shutil.copy(SAMPLE / f"{pid}_surface_stain.fcs", inputs / f"{pid}_unstained.fcs")
        rerun()
        again = build_service(out, url)
        qc = pd.read_csv(out / "qc.csv", dtype=str, keep_default_na=False)
        raised = qc[(qc["product_id"] == pid) & qc["severity"].isin(["warning", "error"])]
        assert len(raised) > 0 and set(raised["code"]) == {"unstained_positive"}
        [view] = again.signatures(pid)
        assert not view.valid and view.void_reason.startswith(
            f"void: {len(raised)} QC flag(s) of the current run have no resolution in it (unstained_positive")
        assert set(raised["file"]) == {f"{pid}_unstained.fcs"}
        assert f"(unstained_positive ({pid}_unstained.fcs) x{len(raised)}): a re-run raised them" in view.void_reason
        assert again.decisions()[pid] is None
        assert approved_tables(again)[0].set_index("product_id").loc[pid, "review_status"] == "not approved"
        again.sign(pid, user(again, "dave").id, PASSWORDS["dave"], "approved for release", again.current_version(pid),
                   approval_resolutions(again, pid), oos_justification=OOS_REASON)
        assert approved_tables(again)[0].set_index("product_id").loc[pid, "review_status"] == "approved"
        again.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_replaced_control_voids_an_approval_that_binds_it(kind, tmp_path, monkeypatch, processed_once, reruns):
    """TIL001's unstained control (read by the run, not gated) replaced after approval by another
    product's control, which raises no flag, and the folder processed again: the signature's data
    hash held only the gated files, so the approval stayed valid and nothing told QA. Now a new
    approval binds the SHA-256 of the files the run read but did not gate, as run.json records them,
    and is void after the replacement; an approval made as the old code made it (its hash without
    them) stays valid while nothing changed, and (not binding the control) after the replacement too."""
    import hashlib

    from review_support import SAMPLE, database_url, drop_schema, make_service
    from tilpheno.review import service as module

    pid, control = "TIL001", "TIL001_unstained.fcs"
    out, inputs, rerun = copied_and_processed(processed_once, reruns, pid)
    url = database_url(kind, tmp_path)
    first = make_service(out, url)
    try:
        assert first.source.other_inputs(pid) == [{"file": control, "tube": "", "role": "not gated",
                                                   "sha256": hashlib.sha256((SAMPLE / control).read_bytes()).hexdigest()}]
        hashed = module.data_sha256
        monkeypatch.setattr(module, "data_sha256", lambda *args, **kw: hashed(*args, form="dose"))   # the old code's hash
        old = first.sign(pid, user(first, "dave").id, PASSWORDS["dave"], "approved for release", 1, {}, oos_justification=OOS_REASON)
        monkeypatch.setattr(module, "data_sha256", hashed)
        new = first.sign(pid, user(first, "carol").id, PASSWORDS["carol"], "approved for release", 1, {}, oos_justification=OOS_REASON)
        assert old.data_sha256 != new.data_sha256
        views = {v.row.id: v for v in first.signatures(pid)}
        assert views[old.id].valid and views[new.id].valid

        again = processed_again(first, out, inputs, rerun, url, control)
        assert not [f for f in again.source.qc_flags(pid) if f["severity"] in ("warning", "error")]
        assert again.current_version(pid) == 1   # the same gates: only the control's digest changed
        views = {v.row.id: v for v in again.signatures(pid)}
        assert not views[new.id].valid and views[new.id].void_reason.startswith("void: input data")
        assert views[old.id].valid
        again.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


def test_gate_coordinates_on_an_arcsinh_axis_are_bounded_on_that_scale(tmp_path):
    """A lab's strategy drawing CD56 on arcsinh (cofactor 150): the app allowed a reviewed CD56+
    cut anywhere in -PnR..2 PnR *transformed* units (the linear rule), so a cut of 50 (raw
    150 sinh(50), about 4e23) was saved. Now the bounds are the arcsinh of raw -PnR..2 PnR
    (truth: numpy's arcsinh of the file's own $PnR), a cut of 50 is refused naming the gate, and
    one inside the scale is kept."""
    import tilpheno
    from review_support import SAMPLE
    from tilpheno.io.fcs import read_fcs
    from tilpheno.pipeline import process_folder
    from tilpheno.review.regate import ReviewSource, validate_gate_set

    study = tmp_path / "study"
    shutil.copytree(Path(tilpheno.__file__).parent / "studies" / "til", study)
    surface = study / "til_surface.yaml"
    text_before = surface.read_text()
    surface.write_text(text_before.replace("  CD56: {kind: logicle, t: 262144, w: 0.5, m: 4.5, a: 0}",
                                           "  CD56: {kind: arcsinh, cofactor: 150}"))
    assert surface.read_text() != text_before
    manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
    manifest = manifest[manifest["product_id"] == "TIL001"].copy()
    manifest["file"] = [str(SAMPLE / f) for f in manifest["file"]]
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    summary = process_folder(SAMPLE, tmp_path / "out", manifest_csv=tmp_path / "manifest.csv",
                             study=study / "study.yaml", allow_unmatched=True, make_reports=False)
    assert summary.ok, summary.failed

    source = ReviewSource(tmp_path / "out")
    stained = source.stained("TIL001")
    st = stained["surface"]
    fcs = read_fcs(SAMPLE / st.name)
    pnr = dict(zip(fcs.channels["pns"], fcs.channels["pnr"]))
    top = float(next(r for s, r in pnr.items() if "CD56" in str(s)))
    assert st.bounds["CD56"] == pytest.approx((np.arcsinh(-top / 150), np.arcsinh(2 * top / 150)), rel=1e-12)
    base = source.automatic("TIL001")
    cut = base["tubes"]["surface"]["gates"]["CD56+"]
    assert cut["type"] == "range" and st.bounds["CD56"][0] < cut["low"] < st.bounds["CD56"][1]
    with pytest.raises(GateSetError, match=r"surface/CD56\+\.low: 50 is outside the allowed range"):
        validate_gate_set(base, {"tubes": {"surface": {"gates": {"CD56+": {**cut, "low": 50.0}}}}}, stained)
    kept = validate_gate_set(base, {"tubes": {"surface": {"gates": {"CD56+": {**cut, "low": cut["low"] + 0.5}}}}}, stained)
    assert kept["tubes"]["surface"]["gates"]["CD56+"]["low"] == cut["low"] + 0.5


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_replaced_control_is_recorded_and_an_approval_that_does_not_bind_it_says_so(kind, tmp_path, monkeypatch, processed_once, reruns):
    """TIL001 opened (imported), approved as the code before the controls were bound signed, then its
    unstained control (read, not gated) replaced by TIL002's and the folder processed again: the
    product's stored input list held the gated files only, so the trail recorded no re-import (a
    replaced FMO, a gated file, is one), and the approval, which cannot be voided (nothing recorded
    which control it was made over), stood as VALID on the page and on the certificate without a
    word. Now the import records the controls (their SHA-256, as run.json has them), a re-run with
    one replaced is a reimport_product naming it, before and after, and such an approval carries
    'control digests not recorded at approval' (state API, certificate)."""
    import hashlib

    from review_support import SAMPLE, drop_schema
    from review_support import certificate_text
    from tilpheno.review import service as module
    from tilpheno.review.models import AuditEntry

    pid, control = "TIL001", "TIL001_unstained.fcs"
    out, inputs, rerun, url, first = imported_copy(kind, tmp_path, processed_once, reruns, pid)
    try:
        hashed = module.data_sha256
        monkeypatch.setattr(module, "data_sha256", lambda *args, **kw: hashed(*args, form="dose"))
        old = first.sign(pid, user(first, "dave").id, PASSWORDS["dave"], "approved for release", 1, {}, oos_justification=OOS_REASON)
        monkeypatch.setattr(module, "data_sha256", hashed)
        [view] = first.signatures(pid)
        assert view.valid and view.note.startswith("control digests not recorded at approval") and control in view.note

        again = processed_again(first, out, inputs, rerun, url, control)
        assert again.current_version(pid) == 1   # opened: the same gates
        with again.factory() as db:
            [entry] = db.scalars(select(AuditEntry).where(AuditEntry.action == "reimport_product"))
            before, after = json.loads(entry.before_json), json.loads(entry.after_json)
        digest = {name: hashlib.sha256((SAMPLE / name).read_bytes()).hexdigest()
                  for name in (control, "TIL002_unstained.fcs")}
        assert [c["sha256"] for c in before["controls"] if c["file"] == control] == [digest[control]]
        assert [c["sha256"] for c in after["controls"] if c["file"] == control] == [digest["TIL002_unstained.fcs"]]
        assert before["inputs"] == after["inputs"] and f"read other input files: {control};" in entry.reason
        [view] = again.signatures(pid)
        assert view.row.id == old.id and view.valid and view.note.startswith("control digests not recorded at approval")
        flowing = " ".join(certificate_text(again, tmp_path)[0].split())
        assert "Dave Tester (dave), approved for release: control digests not recorded at approval" in flowing
        again.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_approval_voided_by_a_replaced_control_names_it(kind, tmp_path, processed_once, reruns):
    """TIL001 approved for release (binding its controls), then its unstained control replaced by
    TIL002's and the folder processed again: the reimport_product entry named the control, but the
    page's VOID said only 'input data, infused cell number, strategy or release spec changed after
    signing', leaving QA to find which in the trail. Now the void reason names the replaced file and
    the entry recording it."""
    from review_support import drop_schema
    from tilpheno.review.models import AuditEntry

    pid, control = "TIL001", "TIL001_unstained.fcs"
    out, inputs, rerun, url, first = imported_copy(kind, tmp_path, processed_once, reruns, pid)
    try:
        first.sign(pid, user(first, "dave").id, PASSWORDS["dave"], "approved for release", 1, {}, oos_justification=OOS_REASON)
        again = processed_again(first, out, inputs, rerun, url, control)
        [view] = again.signatures(pid)
        with again.factory() as db:
            [entry] = db.scalars(select(AuditEntry).where(AuditEntry.action == "reimport_product"))
        assert not view.valid and view.void_reason == (
            "void: input data changed after signing: the folder was processed again with other input files: "
            f"{control} (reimport_product, audit entry {entry.seq})"), view.void_reason
        again.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_approval_voided_by_a_rerun_that_changed_the_gates_names_the_replaced_file(kind, tmp_path, processed_once, reruns):
    """TIL001 approved for release (version 1), then its stained surface tube replaced (by TIL002's)
    and the folder processed again: the new run's automatic gates became version 2, and the page's
    VOID said only 'gates changed to version 2 after signing', though the trail records which file
    the re-run replaced (a replaced control that leaves the gates as they were is named). Now the
    reason names the file and its reimport_product entry, and the version its gates became."""
    from review_support import drop_schema
    from tilpheno.review.models import AuditEntry

    pid, stain = "TIL001", "TIL001_surface_stain.fcs"
    out, inputs, rerun, url, first = imported_copy(kind, tmp_path, processed_once, reruns, pid)
    try:
        first.sign(pid, user(first, "dave").id, PASSWORDS["dave"], "approved for release", 1, {}, oos_justification=OOS_REASON)
        again = processed_again(first, out, inputs, rerun, url, stain)
        [view] = again.signatures(pid)
        with again.factory() as db:
            replaced, made = db.scalars(select(AuditEntry).where(AuditEntry.action == "reimport_product")
                                        .order_by(AuditEntry.seq))
        assert stain in replaced.reason and json.loads(made.after_json)["version"] == 2 == again.current_version(pid)
        assert json.loads(again.version(pid, 2).gates_json) == again.source.automatic(pid)
        assert not view.valid and view.void_reason == (
            "void: gates changed to version 2 after signing: the folder was processed again with other input files: "
            f"{stain} (reimport_product, audit entry {replaced.seq}; its automatic gates became version 2)"), view.void_reason
        again.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_version_a_rerun_replaced_names_the_rerun_that_replaced_it(kind, tmp_path, processed_once, reruns):
    """TIL001's version 2 (alice's CD3 cut) was replaced by the automatic gates of a re-run with its
    stained surface tube replaced (version 3). The page's list of versions said nothing on version 1
    or 2 of what replaced them: a reviewer reading an older version could not tell it was no longer
    the current one, nor get to the version or the re-run that replaced it. Now the state answer
    gives each version but the current one the version that replaced it, in words naming, for a
    re-run's, the replaced file and its reimport_product entry (the page links it to that version)."""
    import re

    from review_support import SAMPLE, drop_schema
    from tilpheno.review.models import AuditEntry
    from tilpheno.review.server import build_service
    from tilpheno.review.web import create_app

    pid, stain = "TIL001", "TIL001_surface_stain.fcs"
    out, inputs, rerun, url, first = imported_copy(kind, tmp_path, processed_once, reruns, pid)
    try:
        first.save_version(pid, user(first, "alice"), 1, shifted_cd3(first, pid, 0.15), "CD3 cut raised above the shoulder")
        first.factory.kw["bind"].dispose()
        shutil.copy(SAMPLE / "TIL002_surface_stain.fcs", inputs / stain)
        rerun()
        again = build_service(out, url)
        client = create_app(again).test_client()
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
        assert client.post("/login", data={"username": "dave", "password": PASSWORDS["dave"], "csrf_token": token,
                                           "next": "/"}).status_code == 302
        state = client.get(f"/api/products/{pid}/state").json
        with again.factory() as db:
            replaced = db.scalars(select(AuditEntry).where(AuditEntry.action == "reimport_product")
                                  .order_by(AuditEntry.seq)).first()
        assert stain in replaced.reason and state["current_version"] == 3
        assert [(v["version"], v["source"], v["replaced_by"]) for v in state["versions"]] == [
            (1, "automatic", {"version": 2, "words": "replaced by version 2"}),
            (2, "adjusted", {"version": 3, "words": "replaced by version 3, the automatic gates of the folder processed "
                                                    f"again with other input files: {stain} (reimport_product, audit entry "
                                                    f"{replaced.seq})"}),
            (3, "automatic", None)]
        again.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_product_imported_before_controls_were_recorded_records_them_when_opened(kind, tmp_path, processed_once, reruns):
    """A database made before the controls were recorded holds each product's gated files only
    (here: TIL001's row set back to that list): its controls were never recorded, so its unstained
    control replaced and the folder processed again went unrecorded in the trail for good. Now
    opening such a product records them (``record_controls``, the control's SHA-256 as run.json has
    it), once, and a later re-run with the control replaced is a reimport_product naming it."""
    import hashlib

    from review_support import SAMPLE, drop_schema
    from tilpheno.review.models import AuditEntry, Product
    from tilpheno.review.service import transaction

    pid, control = "TIL001", "TIL001_unstained.fcs"
    out, inputs, rerun, url, first = imported_copy(kind, tmp_path, processed_once, reruns, pid)
    try:
        def legacy(db):   # the row as the code before wrote it: the gated files only
            db.get(Product, pid).inputs_json = json.dumps(first.source.inputs_digest(pid))
        transaction(first.factory, legacy)

        def actions():
            with first.factory() as db:
                return [(e.action, json.loads(e.after_json)) for e in db.scalars(
                    select(AuditEntry).where(AuditEntry.product_id == pid).order_by(AuditEntry.seq))]

        first.current_version(pid)
        first.current_version(pid)
        recorded = [after for action, after in actions() if action == "record_controls"]
        digest = hashlib.sha256((SAMPLE / control).read_bytes()).hexdigest()
        assert len(recorded) == 1 and [c["sha256"] for c in recorded[0]["controls"] if c["file"] == control] == [digest]

        again = processed_again(first, out, inputs, rerun, url, control)
        again.current_version(pid)
        [after] = [after for action, after in actions() if action == "reimport_product"]
        assert [c["sha256"] for c in after["controls"] if c["file"] == control] == [
            hashlib.sha256((SAMPLE / "TIL002_unstained.fcs").read_bytes()).hexdigest()]
        again.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


def test_approving_gates_that_fail_the_release_spec_is_an_out_of_specification_release(fresh_service, tmp_path):
    """TIL001 fails CD3+ T cells > 90 % on its gates (87.74 in the run's phenotypes.csv). A reviewer
    approved it for release in one click, with no warning and no justification: only the
    certificate said "RELEASE CRITERIA NOT MET". Now that approval is refused, naming the product,
    the version and the failed criterion with its value (audited ``signature_refused``, nothing
    stored), until a written out-of-specification justification (its own field, checked as any
    reason) is given; the signature stores it and the ``sign`` entry records the failed criteria and
    it (``before.out_of_specification``), and the approved export and the certificate say "out-of-specification
    release" with both. TIL002, which passes, is approved without a comment as before."""
    import operator

    from tilpheno.review.export import approved_tables
    from tilpheno.review.service import Signature

    service, pid = fresh_service, "TIL001"
    src = service.source
    spec = src.release_spec
    ops = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
    # independent truth: the run's phenotypes.csv values against the spec (version 1 = the run's gates)
    rows = {p: src.phenotype_row(p) for p in (pid, "TIL002")}
    failing = [c for c in spec.criteria if not ops[c.op](rows[pid][c.column], c.limit)]
    assert [c.name for c in failing] == ["CD3+ T cells"]
    assert all(ops[c.op](rows["TIL002"][c.column], c.limit) for c in spec.criteria)
    cd3 = rows[pid][failing[0].column]
    named = f"CD3+ T cells ({failing[0].describe()}: {cd3:.2f})"
    dave = user(service, "dave")
    v = service.current_version(pid)

    def count() -> int:
        with service.factory() as db:
            return len(db.scalars(select(Signature).where(Signature.product_id == pid)).all())

    with pytest.raises(GateSetError) as refused:
        service.sign(pid, dave.id, PASSWORDS["dave"], "approved for release", v, {})
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"version {v} of {pid} fails the release criteria {named}: approving it is an "
                              "out-of-specification release"), message
    assert count() == 0 and service.approved_version(pid) is None
    with service.factory() as db:
        entry = db.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc())).first()
    assert (entry.action, entry.username, entry.product_id) == ("signature_refused", "dave", pid)
    assert entry.reason == f"approved for release of version {v}: {message}"
    for bad, why in (("ok", "at least 3 characters"), ("<b>physician</b>", "plain text only")):
        with pytest.raises(GateSetError, match=f"out-of-specification justification: .*{why}"):
            service.sign(pid, dave.id, PASSWORDS["dave"], "approved for release", v, {}, oos_justification=bad)
    assert count() == 0
    # "reviewed" and "rejected" decide no release: no justification asked for
    service.sign(pid, user(service, "alice").id, PASSWORDS["alice"], "reviewed", v, {})

    sig = service.sign(pid, dave.id, PASSWORDS["dave"], "approved for release", v, {}, oos_justification=OOS_REASON)
    assert service.approved_version(pid).version == v and (sig.oos_justification, sig.comment) == (OOS_REASON, "")
    with service.factory() as db:
        signed = db.scalars(select(AuditEntry).where(AuditEntry.action == "sign", AuditEntry.product_id == pid)
                            .order_by(AuditEntry.seq.desc())).first()
    assert signed.reason == "approved for release"
    assert json.loads(signed.before_json)["out_of_specification"]["justification"] == OOS_REASON
    assert json.loads(signed.after_json)["oos_justification"] == OOS_REASON   # bound by the signature's SHA-256
    [recorded] = json.loads(signed.before_json)["out_of_specification"]["criteria"]
    assert json.loads(signed.before_json)["out_of_specification"]["release"] == "fail"
    assert (recorded["criterion"], recorded["rule"], recorded["outcome"]) == ("CD3+ T cells", failing[0].describe(), "fail")
    assert recorded["value"] == pytest.approx(cd3, abs=1e-9)
    service.sign("TIL002", dave.id, PASSWORDS["dave"], "approved for release", service.current_version("TIL002"),
                 approval_resolutions(service, "TIL002"))   # passes: no comment needed

    words = (f"out-of-specification release of version {v}: fails {named}; justification {OOS_REASON!r} by "
             f"Dave Tester (dave) at {sig.signed_at[:19].replace('T', ' ')} UTC")
    table = approved_tables(service)[0].set_index("product_id")
    assert table.loc[pid, "release_status"] == "fail" and table.loc[pid, "out_of_specification"] == words
    assert table.loc["TIL002", "release_status"] == "pass" and table.loc["TIL002", "out_of_specification"] == ""
    if shutil.which("pdftotext"):
        from tilpheno.review.certificate import certificate_pdf

        pdf = tmp_path / "c.pdf"
        pdf.write_bytes(certificate_pdf(service, pid))
        text_ = " ".join(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True,
                                        check=True).stdout.split())
        assert "Release decision: OUT-OF-SPECIFICATION RELEASE (fail)" in text_
        assert " ".join(words.split()) in text_


def test_an_out_of_specification_approval_signed_before_justifications_were_required_says_it_has_none(fresh_service,
                                                                                                     monkeypatch):
    """An approval of TIL001 (fails CD3+ > 90 %) stored without a comment by the code before
    out-of-specification releases needed one stays valid (its signature is unchanged), and the export
    says it is an out-of-specification release with no justification recorded, naming who approved it."""
    from tilpheno.review import service as module
    from tilpheno.review.export import approved_tables

    service, pid = fresh_service, "TIL001"
    monkeypatch.setattr(module, "_oos_refusal", lambda *args: "")   # the old code: no justification asked for
    sig = service.sign(pid, user(service, "dave").id, PASSWORDS["dave"], "approved for release", 1, {})
    monkeypatch.undo()
    assert sig.comment == "" and service.approved_version(pid).version == 1
    cell = approved_tables(service)[0].set_index("product_id").loc[pid, "out_of_specification"]
    assert cell.startswith("out-of-specification release of version 1: fails CD3+ T cells (") and cell.endswith(
        f"; no justification recorded (approved by Dave Tester (dave) at {sig.signed_at[:19].replace('T', ' ')} UTC, "
        "before an out-of-specification release needed one)"), cell


def test_a_comment_overruling_a_rejection_is_not_an_out_of_specification_justification(fresh_service):
    """carol rejects TIL001 version 1 (it fails CD3+ > 90 %); dave approves it over her rejection,
    his comment saying why he overrules it. That one comment was taken as the out-of-specification
    justification too: the lot was released out of specification with no one having confirmed
    that deviation, and the certificate and export quoted the overrule comment as its
    justification. Now the approval is refused (audited) until the justification is given in its
    own field; the signature then holds both apart, and the export quotes the justification."""
    from tilpheno.review.export import approved_tables
    from tilpheno.review.models import AuditEntry

    service, pid = fresh_service, "TIL001"
    dave = user(service, "dave")
    rejection = service.sign(pid, user(service, "carol").id, PASSWORDS["carol"], "rejected", 1, {},
                             "CD3 cut in the dim tail")
    overrule = "re-gated CD3 by eye: the cut sits in the valley, the rejection's concern does not hold"
    with pytest.raises(GateSetError, match="out-of-specification release; say why .* out-of-specification justification"):
        service.sign(pid, dave.id, PASSWORDS["dave"], "approved for release", 1, approval_resolutions(service, pid),
                     overrule, overrules=rejection.id)
    assert service.approved_version(pid) is None
    with service.factory() as db:
        last = db.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc())).first()
    assert (last.action, last.username) == ("signature_refused", "dave")
    sig = service.sign(pid, dave.id, PASSWORDS["dave"], "approved for release", 1, approval_resolutions(service, pid),
                       overrule, overrules=rejection.id, oos_justification=OOS_REASON)
    assert (sig.comment, sig.oos_justification) == (overrule, OOS_REASON) and service.approved_version(pid).version == 1
    cell = approved_tables(service)[0].set_index("product_id").loc[pid, "out_of_specification"]
    assert f"; justification {OOS_REASON!r} by Dave Tester (dave)" in cell and overrule not in cell, cell


def test_an_out_of_specification_approval_justified_by_its_comment_before_it_had_a_field_says_so(fresh_service,
                                                                                              monkeypatch):
    """An approval of TIL001 (fails CD3+ > 90 %) signed by the code before the field existed, its
    comment being the justification then asked for: still valid (its SHA-256 unchanged: an empty
    justification is not part of its content) and quoted as the approval's comment."""
    from tilpheno.review import audit
    from tilpheno.review import service as module
    from tilpheno.review.export import approved_tables

    service, pid = fresh_service, "TIL001"
    monkeypatch.setattr(module, "_oos_refusal", lambda *args: "")   # the old code: the comment was the justification
    sig = service.sign(pid, user(service, "dave").id, PASSWORDS["dave"], "approved for release", 1, {}, OOS_REASON)
    monkeypatch.undo()
    assert sig.oos_justification == "" and "oos_justification" not in audit.signature_content(sig)
    assert service.approved_version(pid).version == 1
    cell = approved_tables(service)[0].set_index("product_id").loc[pid, "out_of_specification"]
    assert (f"; justification (the approval's comment: signed before an out-of-specification release had one of its "
            f"own) {OOS_REASON!r} by Dave Tester (dave)") in cell, cell


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_certificate_names_the_panel_file_the_run_read(kind, tmp_path, processed_once, monkeypatch):
    """TIL001 processed with a panel file (which detector carries which marker: the approval binds
    its rows) and approved: the certificate's "Inputs and software" listed the input files, the
    strategies and the data hash, but not the panel file, though run.json records it and its SHA-256
    (``parameters.panel``, ``panel_sha256``). Now it names it with the SHA-256 of the file (hashed
    here from the file itself); a run without a panel file says 'no panel file'; a run.json that
    recorded no SHA-256 says so."""
    import hashlib

    from review_support import database_url, drop_schema, make_service
    from review_support import certificate_text

    pid = "TIL001"
    for panel in (SAMPLE_PANEL, ""):
        out, _ = til001_run(processed_once, panel=panel)
        (where := tmp_path / ("panel" if panel else "none")).mkdir()
        url = database_url(kind, where)
        svc = make_service(out, url)
        try:
            svc.sign(pid, user(svc, "dave").id, PASSWORDS["dave"], "approved for release", 1,
                     approval_resolutions(svc, pid), oos_justification=OOS_REASON)
            inputs = certificate_text(svc, tmp_path)[1].split("Inputs and software")[1]
            named = [line.split() for line in inputs.splitlines() if "panel file" in line]
            if panel:
                digest = hashlib.sha256((out.parent / "panel.csv").read_bytes()).hexdigest()
                assert named == [["panel", "file", "panel.csv", digest]], named
                monkeypatch.setitem(svc.source.run["parameters"], "panel_sha256", "")   # an older run.json
                inputs = certificate_text(svc, tmp_path)[1].split("Inputs and software")[1]
                assert [line.split() for line in inputs.splitlines() if "panel file" in line] == [
                    ["panel", "file", "panel.csv", "SHA-256", "not", "recorded"]]
            else:
                assert named == [["panel", "file", "no", "panel", "file"]], named
            svc.factory.kw["bind"].dispose()
        finally:
            drop_schema(url)


def last_entry(service):
    """The newest audit entry: (username, action, reason)."""
    with service.factory() as db:
        e = db.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc())).first()
    return e.username, e.action, e.reason


def test_a_signature_is_authenticated_then_authorised_then_its_content_refused_at_once(fresh_service, monkeypatch):
    """A signature request is judged in one order: the password (authenticate), then whether this
    user may sign it (role, assignment, four eyes), then what it says, all of it in one refusal.
    The form used to be checked first, the password and the rules after: an API client sending
    dave's approval of TIL001 (it fails CD3+ > 90 %) with no QC resolutions and no
    out-of-specification justification was refused for the first resolution alone (unaudited),
    then for the justification; a wrong password or an analyst's approval with a markup comment
    was refused for the comment, the password unchecked and the role unsaid."""
    service, pid = fresh_service, "TIL001"
    dave, bob = user(service, "dave"), user(service, "bob")
    flags = [{"product_id": pid, "file": f"{pid}_surface_stain.fcs", "code": code, "severity": "warning",
              "message": "test flag"} for code in ("fallback_gate", "no_time_channel")]
    monkeypatch.setattr(service.source, "qc", pd.concat([service.source.qc, pd.DataFrame(flags)], ignore_index=True))
    flags = [f for f in service.source.qc_flags(pid) if f["severity"] in ("warning", "error")]
    assert len(flags) >= 2   # more than one thing an approval must resolve
    with pytest.raises(AuthError, match="wrong"):   # authenticate first
        service.sign(pid, dave.id, "not dave's", "approved for release", 1, {}, "<b>ok</b>")
    assert last_entry(service)[:2] == ("dave", "signature_refused")
    with pytest.raises(Forbidden, match="^role analyst cannot sign 'approved for release'$"):   # then authorise
        service.sign(pid, bob.id, PASSWORDS["bob"], "approved for release", 1, {}, "<b>ok</b>")
    with pytest.raises(GateSetError) as refused:   # then everything wrong with the content, at once
        service.sign(pid, dave.id, PASSWORDS["dave"], "approved for release", 1, {}, "<b>ok</b>")
    wanted = ([f"resolution of QC flag {f['code']} ({f['file']}): required (at least 3 characters)" for f in flags]
              + ["comment: plain text only ('<' and '>' are refused so no markup or script is stored)",
                 "version 1 of TIL001 fails the release criteria"])
    said = str(refused.value).split("; ")
    assert len(said) >= len(wanted) and all(s.startswith(w) for s, w in zip(said, wanted)), said
    assert last_entry(service) == ("dave", "signature_refused", f"approved for release of version 1: {refused.value}")
    assert service.approved_version(pid) is None
    sig = service.sign(pid, dave.id, PASSWORDS["dave"], "approved for release", 1, approval_resolutions(service, pid),
                       "QA release review", oos_justification=OOS_REASON)
    assert sig.oos_justification == OOS_REASON and service.approved_version(pid).version == 1
