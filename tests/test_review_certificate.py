"""The certificate of analysis download on SQLite and PostgreSQL: made from one reading of the
approval, and issued (audited) only if that approval still stands when it is recorded."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from review_support import OOS_REASON, PASSWORDS, approval_resolutions, fresh_service, service_on, source3, standing_approval_id  # noqa: F401  (fixtures)
from review_support import certificate_text, login
from tilpheno.review import certificate
from tilpheno.review.models import AuditEntry, User
from tilpheno.review.web import create_app

PID = "TIL001"


def user(service, name):
    with service.factory() as db:
        return db.scalar(select(User).where(User.username == name))


def approve(service):
    """``service`` with TIL001's version 1 approved for release by dave (it fails CD3+ > 90 %: an
    out-of-specification release, justified)."""
    service.sign(PID, user(service, "dave").id, PASSWORDS["dave"], "approved for release", 1,
                 approval_resolutions(service, PID), oos_justification=OOS_REASON)
    return service


@pytest.fixture
def approved(fresh_service):
    """:func:`approve` on a new database per test (the tests that download, export or sign: they write to it)."""
    return approve(fresh_service)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def approved_read(request, source3, tmp_path_factory):
    """:func:`approve` once per module and backend, for the tests that only read the certificate
    (``certificate.certificate_pdf`` reads the approval, writes nothing: no audit entry, no
    signature); what a test changes of the shared ``source3`` it changes with ``monkeypatch``."""
    with service_on(request.param, tmp_path_factory.mktemp("db"), source3) as service:
        yield approve(service)


def certificate_entries(service):
    with service.factory() as db:
        return list(db.scalars(select(AuditEntry).where(AuditEntry.action == "certificate")))


def while_recomputing(monkeypatch, action, module=certificate, name="recompute"):
    """Run ``action`` once, after ``module`` (the certificate, the export) recomputed approved values
    (``name``: or read another part of what it makes): what another user does while it is being
    made. Returns the list that says it ran."""
    original, done = getattr(module, name), []

    def recompute(*args, **kwargs):
        result = original(*args, **kwargs)
        if not done:
            done.append(True)
            action()
        return result

    monkeypatch.setattr(module, name, recompute)
    return done


def test_the_certificate_entry_records_what_was_certified(approved):
    c, _, _ = login(create_app(approved), "carol")
    r = c.get(f"/products/{PID}/certificate.pdf")
    assert r.status_code == 200 and r.data.startswith(b"%PDF")
    (entry,) = certificate_entries(approved)
    sig = approved.signatures(PID)[-1].row
    assert json.loads(entry.after_json) == {"version": 1, "gates_sha256": approved.version(PID, 1).gates_sha256,
                                            "approval_sha256": sig.signature_sha256}


def test_an_analyst_downloads_the_certificate_of_an_assigned_approved_product_audited(approved):
    """As the README's roles say: an analyst (bob, assigned TIL001 only) may download the certificate
    of an approved product assigned to them, a copy of what QA approved, audited under their name;
    another product's is refused (403) and audits nothing."""
    c, _, _ = login(create_app(approved), "bob")
    r = c.get(f"/products/{PID}/certificate.pdf")
    assert r.status_code == 200 and r.data.startswith(b"%PDF")
    assert [e.username for e in certificate_entries(approved)] == ["bob"]
    r = c.get("/products/TIL002/certificate.pdf")
    assert r.status_code == 403 and "not assigned to you" in r.json["error"], r.data[:200]
    assert len(certificate_entries(approved)) == 1


def test_no_certificate_for_a_version_rejected_while_it_was_made(approved, monkeypatch):
    """Carol rejects version 1 while the certificate is being made: refused naming the rejection, nothing
    audited (it used to be issued and audited for a product whose standing decision was a rejection)."""
    carol = user(approved, "carol")
    while_recomputing(monkeypatch, lambda: approved.sign(PID, carol.id, PASSWORDS["carol"], "rejected", 1, {},
                                                         "CD3 cut in the dim tail"))
    c, _, _ = login(create_app(approved), "alice")
    r = c.get(f"/products/{PID}/certificate.pdf")
    assert r.status_code == 409 and "rejected by Carol Tester (carol)" in r.json["error"], r.data[:200]
    assert certificate_entries(approved) == []


def test_no_certificate_for_a_version_replaced_while_it_was_made(approved, monkeypatch):
    """Alice saves version 2 while the certificate of version 1 is being made: a one-line refusal naming
    the new version (it used to fail with an IndexError, a traceback)."""
    alice = user(approved, "alice")

    def alice_saves():
        gate = json.loads(approved.version(PID).gates_json)["tubes"]["surface"]["gates"]["CD3+"]
        approved.save_version(PID, alice, 1, {"tubes": {"surface": {"gates": {"CD3+": {**gate, "low": gate["low"] + 0.01}}}}},
                              "trim the dim tail", void_approval=standing_approval_id(approved, PID))

    while_recomputing(monkeypatch, alice_saves)
    c, _, _ = login(create_app(approved), "carol")
    r = c.get(f"/products/{PID}/certificate.pdf")
    assert r.status_code == 409 and "version 2" in r.json["error"] and "\n" not in r.json["error"], r.data[:200]
    assert certificate_entries(approved) == []


def test_a_downloaded_approved_table_is_audited(approved):
    """A reviewer downloads /export/phenotypes.csv and /export/populations.csv: nothing in the audit
    trail said so (a certificate download and export-approved audit what they issue). Now one
    ``export_table`` entry each: who, the file, its rows, the SHA-256 of the bytes sent and each
    approved product's version, gates' and approval's SHA-256; the chain still verifies. A role
    that may not export is refused (403) and audits nothing."""
    import csv
    import hashlib
    import io

    from tilpheno.review import audit

    bob, _, _ = login(create_app(approved), "bob")
    assert bob.get("/export/phenotypes.csv").status_code == 403
    c, _, _ = login(create_app(approved), "carol")
    sent = {}
    for table in ("phenotypes", "populations"):
        r = c.get(f"/export/{table}.csv")
        assert r.status_code == 200, r.data[:200]
        sent[f"{table}_approved.csv"] = r.data
    sig = approved.signatures(PID)[-1].row
    with approved.factory() as db:
        entries = list(db.scalars(select(AuditEntry).where(AuditEntry.action == "export_table").order_by(AuditEntry.seq)))
        assert audit.verify(db).ok
    assert [e.username for e in entries] == ["carol", "carol"]
    for entry, (name, data) in zip(entries, sent.items()):
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
        assert json.loads(entry.after_json) == {
            "file": name, "rows": len(rows), "sha256": hashlib.sha256(data).hexdigest(),
            "approved": {PID: {"version": 1, "gates_sha256": approved.version(PID, 1).gates_sha256,
                               "approval_sha256": sig.signature_sha256}}}
        assert {row["product_id"] for row in rows} >= {PID}
    assert len(list(csv.DictReader(io.StringIO(sent["phenotypes_approved.csv"].decode())))) == 3   # TIL001-TIL003


def test_no_table_export_of_an_approval_rejected_while_it_was_made(approved, monkeypatch):
    """Carol rejects TIL001's approved version 1 while the approved table is recomputed: refused (409)
    naming the rejection, nothing audited, as a certificate is."""
    from tilpheno.review import export

    carol = user(approved, "carol")
    done = while_recomputing(monkeypatch, lambda: approved.sign(PID, carol.id, PASSWORDS["carol"], "rejected", 1, {},
                                                                "CD3 cut in the dim tail"), export)
    c, _, _ = login(create_app(approved), "alice")
    r = c.get("/export/phenotypes.csv")
    assert done and r.status_code == 409 and "rejected by Carol Tester (carol)" in r.json["error"], r.data[:200]
    with approved.factory() as db:
        assert list(db.scalars(select(AuditEntry).where(AuditEntry.action == "export_table"))) == []


def gatingml_entries(service):
    with service.factory() as db:
        return list(db.scalars(select(AuditEntry).where(AuditEntry.action == "export_gatingml").order_by(AuditEntry.seq)))


def test_a_downloaded_approved_gatingml_is_audited(approved):
    """An analyst (bob, assigned TIL001) downloads TIL001's approved Gating-ML of each tube: nothing in
    the audit trail said so, while a certificate and an approved table are audited. Now one
    ``export_gatingml`` entry on the product each: who, the file, the tube, the SHA-256 of the bytes
    sent, the version, its gates' and the approval's SHA-256; the chain still verifies. An unknown
    tube (404) or a product not approved (409) audits nothing."""
    import hashlib

    from tilpheno.review import audit

    c, _, _ = login(create_app(approved), "bob")
    sent = {}
    for tube in ("surface", "treg"):
        r = c.get(f"/products/{PID}/gates/{tube}.xml")
        assert r.status_code == 200 and b"gating:Gating-ML" in r.data, r.data[:200]
        sent[tube] = r.data
    assert c.get(f"/products/{PID}/gates/nosuch.xml").status_code == 404
    sig = approved.signatures(PID)[-1].row
    entries = gatingml_entries(approved)
    with approved.factory() as db:
        assert audit.verify(db).ok
    assert [(e.username, e.product_id) for e in entries] == [("bob", PID), ("bob", PID)]
    for entry, (tube, data) in zip(entries, sent.items()):
        assert json.loads(entry.after_json) == {
            "file": f"gates_{PID}_{tube}.xml", "tube": tube, "sha256": hashlib.sha256(data).hexdigest(),
            "version": 1, "gates_sha256": approved.version(PID, 1).gates_sha256, "approval_sha256": sig.signature_sha256}
    carol, _, _ = login(create_app(approved), "carol")
    r = carol.get("/products/TIL002/gates/surface.xml")
    assert r.status_code == 409 and "approved gates are exported only for approved products" in r.json["error"], r.data[:200]
    assert len(gatingml_entries(approved)) == 2


def test_no_gatingml_of_an_approval_rejected_while_it_was_made(approved, monkeypatch):
    """Carol rejects TIL001's approved version 1 while its Gating-ML is being made: refused (409)
    naming the rejection, nothing audited, as a certificate is (it used to be sent, unaudited)."""
    from tilpheno.review import export

    carol = user(approved, "carol")
    done = while_recomputing(monkeypatch, lambda: approved.sign(PID, carol.id, PASSWORDS["carol"], "rejected", 1, {},
                                                                "CD3 cut in the dim tail"), export, "tube_gates")
    c, _, _ = login(create_app(approved), "alice")
    r = c.get(f"/products/{PID}/gates/surface.xml")
    assert done and r.status_code == 409 and "rejected by Carol Tester (carol)" in r.json["error"], r.data[:200]
    assert "\n" not in r.json["error"] and gatingml_entries(approved) == []


def export_approved(service, dest):
    from typer.testing import CliRunner

    from tilpheno.cli import app

    url = service.factory.kw["bind"].url.render_as_string(hide_password=False)
    return CliRunner().invoke(app, ["export-approved", str(service.source.out_dir), "-o", str(dest), "--db", url])


def test_export_approved_writes_one_approval_per_product_and_audits_its_certificates(approved, tmp_path):
    r = export_approved(approved, tmp_path / "x")
    assert r.exit_code == 0 and "1 approved product(s) of 3" in r.output, r.output
    table = (tmp_path / "x" / "phenotypes_approved.csv").read_text()
    assert (tmp_path / "x" / PID / "certificate.pdf").read_bytes().startswith(b"%PDF") and ",approved,1," in table
    (entry,) = certificate_entries(approved)
    assert entry.username.startswith("cli") and json.loads(entry.after_json)["version"] == 1


def test_export_approved_audits_the_sha256_of_each_table_it_writes(approved, tmp_path):
    """export-approved wrote phenotypes_approved.csv and populations_approved.csv and audited only
    the certificates, while the same tables downloaded from the app are audited with the SHA-256 of
    the bytes sent. Now one ``export_table`` entry each, in the certificates' transaction: the file,
    its rows, the SHA-256 of the file as written, each approved product's version, gates' and
    approval's SHA-256, as a download records; the chain still verifies."""
    import csv
    import hashlib

    from tilpheno.review import audit

    r = export_approved(approved, tmp_path / "x")
    assert r.exit_code == 0, r.output
    sig = approved.signatures(PID)[-1].row
    entries = _entries(approved, "export_table")
    with approved.factory() as db:
        assert audit.verify(db).ok
    assert [e.username for e in entries] == [certificate_entries(approved)[0].username] * 2
    assert [e.seq for e in entries] == [certificate_entries(approved)[0].seq + 1, certificate_entries(approved)[0].seq + 2]
    for entry, name in zip(entries, ("phenotypes_approved.csv", "populations_approved.csv")):
        data = (tmp_path / "x" / name).read_bytes()
        with open(tmp_path / "x" / name, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        assert rows and json.loads(entry.after_json) == {
            "file": name, "rows": len(rows), "sha256": hashlib.sha256(data).hexdigest(),
            "approved": {PID: {"version": 1, "gates_sha256": approved.version(PID, 1).gates_sha256,
                               "approval_sha256": sig.signature_sha256}}}


def test_export_approved_refuses_an_approval_changed_during_the_export(approved, monkeypatch, tmp_path):
    """While export-approved recomputes TIL001's approved version 1, alice saves version 2 and dave
    approves it: refused naming TIL001, nothing written (the tables used to say version 1 while the
    Gating-ML and certificate beside them were version 2's, exit 0)."""
    from tilpheno.review import export

    alice, dave = user(approved, "alice"), user(approved, "dave")

    def save_and_approve():
        gate = json.loads(approved.version(PID).gates_json)["tubes"]["surface"]["gates"]["CD3+"]
        approved.save_version(PID, alice, 1, {"tubes": {"surface": {"gates": {"CD3+": {**gate, "low": gate["low"] + 0.01}}}}},
                              "trim the dim tail", void_approval=standing_approval_id(approved, PID))
        approved.sign(PID, dave.id, PASSWORDS["dave"], "approved for release", 2, approval_resolutions(approved, PID),
                      oos_justification=OOS_REASON)

    done = while_recomputing(monkeypatch, save_and_approve, export)
    r = export_approved(approved, tmp_path / "x")
    assert done and r.exit_code == 2, r.output
    assert "TIL001" in r.output and "changed during the export" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    assert certificate_entries(approved) == []


def test_export_approved_refuses_a_second_approval_signed_during_the_export(approved, monkeypatch, tmp_path):
    """While export-approved recomputes TIL001's approved version 1 (dave's out-of-specification
    approval), carol approves version 1 too, with another justification: the table's
    out_of_specification cell quoted dave's justification while the certificate beside it, made
    from the approval read later, quoted carol's (exit 0, both audited as one export). Now the
    certificates must come from the approval the table was computed with: refused naming TIL001,
    nothing written, nothing audited."""
    from tilpheno.review import export

    carol = user(approved, "carol")
    done = while_recomputing(monkeypatch, lambda: approved.sign(
        PID, carol.id, PASSWORDS["carol"], "approved for release", 1, approval_resolutions(approved, PID),
        oos_justification="released out of specification: second QA opinion (QA-OOS-8)"), export)
    r = export_approved(approved, tmp_path / "x")
    assert done and r.exit_code == 2, r.output
    assert "TIL001" in r.output and "changed during the export" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    assert certificate_entries(approved) == []


def _entries(service, action):
    with service.factory() as db:
        return list(db.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.seq)))


def test_a_disk_full_during_export_approved_writes_nothing_and_audits_no_certificate(approved, monkeypatch, tmp_path):
    """The disk fills while export-approved writes TIL001's certificate: it used to leave the two tables
    in the folder (saying TIL001 approved) with no certificate beside them, the certificate audited as
    issued, and a traceback. Now: one line naming the file, nothing in the folder, nothing audited."""
    import errno

    from tilpheno.io import atomic

    original = atomic.write_bytes

    def full(path, data):
        if str(path).endswith("certificate.pdf"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        original(path, data)

    monkeypatch.setattr(atomic, "write_bytes", full)
    r = export_approved(approved, tmp_path / "exports" / "x")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.output.strip().count("\n") == 0 and "No space left on device" in r.output and "certificate.pdf" in r.output
    assert list((tmp_path / "exports").iterdir()) == [] and certificate_entries(approved) == []   # no folder, no staging


def test_a_re_export_blocked_by_a_folder_writes_nothing_and_a_failed_move_is_audited(approved, monkeypatch, tmp_path):
    """A folder where the export writes TIL001/certificate.pdf: refused naming it before anything is
    audited, the previous export's files kept (it used to fail after the certificates were audited,
    with a traceback, the tables already replaced). A move into place that fails after the audit is
    audited (export_failed) and said in one line."""
    from tilpheno.review import export

    dest = tmp_path / "exports" / "x"
    (dest / PID / "certificate.pdf").mkdir(parents=True)
    (dest / "phenotypes_approved.csv").write_text("previous export\n")
    r = export_approved(approved, dest)
    assert r.exit_code == 2 and "certificate.pdf: a folder where the export writes a file" in r.output, r.output
    assert (dest / "phenotypes_approved.csv").read_text() == "previous export\n" and certificate_entries(approved) == []
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x"]

    def refused(*args):
        raise PermissionError(13, "Permission denied", str(args[0]))

    monkeypatch.setattr(export.os, "rename", refused)
    r = export_approved(approved, dest.parent / "y")
    assert r.exit_code == 2 and "audited (export_failed)" in r.output and "Permission denied" in r.output, r.output
    (failed,) = _entries(approved, "export_failed")
    assert json.loads(failed.after_json)["certificates"][PID]["version"] == 1 and len(certificate_entries(approved)) == 1
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x"]


def _tree(folder):
    """``folder``'s files -> their bytes (None: no such folder)."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_re_export_into_an_existing_folder_replaces_it_all_at_once(approved, monkeypatch, tmp_path):
    """export-approved into the folder of a previous export (and a file of the user's beside it): it
    replaced the files one by one, so that between two moves (or after a failed one) the folder held
    the new tables beside the previous certificates. Now at every move the folder is the previous
    export or the new one whole (a moment absent); the user's file is kept; no folder left beside it."""
    from tilpheno.review import export

    dest = tmp_path / "exports" / "x"
    (dest / PID).mkdir(parents=True)
    for name in ("phenotypes_approved.csv", "populations_approved.csv", f"{PID}/certificate.pdf", "notes.txt"):
        (dest / name).write_text(f"previous {name}\n")
    previous = _tree(dest)
    seen = []
    for name in ("rename", "replace"):
        def move(src, dst, _move=getattr(export.os, name)):
            seen.append(_tree(dest))
            return _move(src, dst)
        monkeypatch.setattr(export.os, name, move)
    r = export_approved(approved, dest)
    assert r.exit_code == 0, r.output
    now = _tree(dest)
    assert now["notes.txt"] == b"previous notes.txt\n" and now[f"{PID}/certificate.pdf"].startswith(b"%PDF")
    assert set(now) == set(previous) | {f"{PID}/gates_surface.xml", f"{PID}/gates_treg.xml"}
    assert seen and all(s in (previous, None, now) for s in seen), [sorted(s or {}) for s in seen]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x"]


def _exports_seen(monkeypatch, dest):
    """A list that gets, after each move the export makes (rename, replace, exchange), whether
    ``dest`` is then a folder: what a reader of ``dest`` could find at that moment."""
    from tilpheno.review import export

    seen = []
    for module, name in ((export.os, "rename"), (export.os, "replace"), (export.atomic, "exchange")):
        def move(src, dst, _move=getattr(module, name)):
            result = _move(src, dst)
            seen.append(dest.is_dir())
            return result
        monkeypatch.setattr(module, name, move)
    return seen


def test_a_re_export_never_leaves_the_folder_absent(approved, monkeypatch, tmp_path):
    """Between its two renames a re-export left DIR absent (renamed away, the new one not yet in
    place): a reader or a sync job at that instant found no folder. Now, where the system swaps two
    folders in one step (Linux), DIR is a folder after every move; the previous export is removed."""
    from tilpheno.io import atomic

    if atomic._renameat2() is None:
        pytest.skip("no renameat2 on this system: the export moves in two renames")
    dest = tmp_path / "exports" / "x"
    dest.mkdir(parents=True)
    (dest / "phenotypes_approved.csv").write_text("previous export\n")
    seen = _exports_seen(monkeypatch, dest)
    r = export_approved(approved, dest)
    assert r.exit_code == 0, r.output
    assert seen and all(seen), seen
    assert (dest / PID / "certificate.pdf").read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x"]


def test_a_re_export_into_a_symbolic_link_keeps_the_link(approved, monkeypatch, tmp_path):
    """DIR a symbolic link to the lab's export share: a re-export renamed the link away and put a
    real folder in its place (the link gone, the share still holding the previous export). Now the
    link stays, its target holds the new export (the user's file kept), nothing is left beside
    either; a link to a folder not there yet gets it."""
    share = tmp_path / "share" / "current"
    share.mkdir(parents=True)
    (share / "phenotypes_approved.csv").write_text("previous export\n")
    (share / "notes.txt").write_text("mine\n")
    dest = tmp_path / "exports" / "x"
    dest.parent.mkdir()
    dest.symlink_to(share)
    r = export_approved(approved, dest)
    assert r.exit_code == 0, r.output
    assert dest.is_symlink() and dest.resolve() == share.resolve()
    assert (share / PID / "certificate.pdf").read_bytes().startswith(b"%PDF")
    assert "previous export" not in (share / "phenotypes_approved.csv").read_text()
    assert (share / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x"] and sorted(p.name for p in share.parent.iterdir()) == ["current"]
    later = tmp_path / "exports" / "later"
    later.symlink_to(tmp_path / "share" / "next")
    r = export_approved(approved, later)
    assert r.exit_code == 0, r.output
    assert later.is_symlink() and (tmp_path / "share" / "next" / PID / "certificate.pdf").is_file()


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
@pytest.mark.parametrize("database_down", [False, True])
def test_a_failed_swap_keeps_the_previous_export_and_says_what_the_trail_holds(approved, monkeypatch, tmp_path,
                                                                               database_down, swap):
    """The move of the new export into place fails (the one-step exchange, or, where the system has
    none, the second of two renames): the previous export stays as it was, and the line says the
    failure is audited (export_failed). With the database down when that is recorded, its error used
    to replace the 'not delivered' message: now both, in one line."""
    from tilpheno.review import export
    from tilpheno.review.service import ReviewService

    dest = tmp_path / "exports" / "x"
    dest.mkdir(parents=True)
    (dest / "phenotypes_approved.csv").write_text("previous export\n")
    original = export.os.rename

    def rename(src, dst):
        if Path(dst) == dest and ".partial-" in str(src):
            raise PermissionError(13, "Permission denied", str(dst))
        return original(src, dst)

    def exchange(a, b):
        if swap == "two renames":
            return False   # as where the system offers no exchange
        rename(a, b)   # refused: the exchange fails as the rename would
        raise AssertionError("not refused")

    monkeypatch.setattr(export.os, "rename", rename)
    monkeypatch.setattr(export.atomic, "exchange", exchange)
    if database_down:
        def down(*args, **kwargs):
            raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly\nmore"))
        monkeypatch.setattr(ReviewService, "record_export_failure", down)   # the command's own service
    r = export_approved(approved, dest)
    assert r.exit_code == 2 and "Traceback" not in r.output and r.output.strip().count("\n") == 0, r.output
    assert "moving the export into place failed" in r.output and "Permission denied" in r.output, r.output
    if database_down:
        assert "recording this in the audit trail failed too (OperationalError" in r.output, r.output
        assert "server closed the connection unexpectedly" in r.output and _entries(approved, "export_failed") == []
    else:
        assert "audited (export_failed)" in r.output and len(_entries(approved, "export_failed")) == 1
    assert _tree(dest) == {"phenotypes_approved.csv": b"previous export\n"}
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x"]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_certificate_is_issued_at_the_record_clocks_time(kind, source3, tmp_path):
    """The certificate's issue time came from the machine's clock (``models.utcnow``) while the
    approval it prints and its audit entry are the record's clock (``audit.Clock``: PostgreSQL's;
    SQLite the machine's). Now it is the server's record clock too: injected a day ahead of the
    machine, the printed ``Issued ... UTC`` lies between that clock's readings before and after."""
    import re
    import time

    from tilpheno.review.audit import Clock
    from tilpheno.review.models import utc

    ahead = 86400.0
    with service_on(kind, tmp_path, source3, Clock.shared(lambda: time.time() + ahead)) as svc:
        approve(svc)
        before = time.time() + ahead
        flowing, _ = certificate_text(svc, tmp_path)
        after = time.time() + ahead
    issued = re.search(r"Issued (\S+) UTC", flowing).group(1)
    assert utc(before)[:19] <= issued <= utc(after)[:19], (issued, utc(before))


@pytest.mark.parametrize("criteria, why", [
    ((("Dose", "no_such_column", ">=", 1.0, "cells"),), "value missing"),   # a column the phenotype lacks: no value
    ((), "no criterion applicable"),
])
def test_the_certificates_release_decision_names_why_it_is_not_evaluable(approved_read, tmp_path, monkeypatch, criteria, why):
    """The certificate's release decision said a bare 'RELEASE CRITERIA NOT MET (not evaluable)' where
    the report names the reason; now in short: a criterion whose column the product has no value of
    ('value missing'), a spec with no criterion ('no criterion applicable')."""
    import dataclasses

    from tilpheno.release import Criterion

    issued = approved_read.release_approval(PID)   # read before the spec changes (a changed spec voids the approval)
    spec = dataclasses.replace(approved_read.source.release_spec, criteria=tuple(Criterion(*c) for c in criteria))
    monkeypatch.setattr(approved_read.source, "release_spec", spec)
    flowing, _ = certificate_text(approved_read, tmp_path, issued)
    assert f"Release decision: RELEASE CRITERIA NOT MET (not evaluable: {why})" in " ".join(flowing.split())


def test_certificate_keeps_flag_codes_and_file_names_whole(approved_read, tmp_path, monkeypatch):
    """Flag codes and file names wider than their column were broken mid-word by reportlab
    ('cut_in_dense_regio' / 'n', 'compensation_negative_spillove' / 'r'); now only after an
    underscore (or - . /): the PDF's text, lines ending in one joined to the next, holds every code
    and file name whole. The product's own flags plus two of the pipeline's longest codes."""
    flags = approved_read.source.qc_flags(PID) + [
        {"severity": "warning", "code": "cut_in_dense_region", "file": "TIL001_surface_stain.fcs", "gate": "CD3+",
         "gate_file": "", "message": "CD3+: cut in a dense region"},
        {"severity": "warning", "code": "compensation_negative_spillover", "file": "TIL001_surface_FMO_PD1.fcs", "gate": "",
         "gate_file": "", "message": "m"},
    ]
    monkeypatch.setattr(approved_read.source, "qc_flags", lambda pid: flags)
    # two warnings added after the approval, for the layout only: not flags a re-run raised since it
    monkeypatch.setattr("tilpheno.review.service.unresolved_flags", lambda flags, approval: [])
    words = set(certificate_text(approved_read, tmp_path)[0].split())
    for f in flags:
        assert f["code"] in words, f["code"]
        assert f["file"] in words, f["file"]


def test_certificate_keeps_every_sha256_whole_on_one_line(approved_read, tmp_path):
    """The signatures' SHA-256 (64 hex digits) did not fit their column and reportlab broke them
    mid-hash over two lines (a QA reviewer comparing a hash with the audit trail reads two pieces);
    now every hash the certificate shows (signatures, data and gate set, input files, strategies) is
    one word of one line of the PDF's text, a signature's on the page of the signature it belongs to."""
    issued = approved_read.release_approval(PID)
    src = approved_read.source
    hashes = {s.signature_sha256 for s in issued.signatures} | {issued.approval.data_sha256, issued.version.gates_sha256}
    hashes |= {f["sha256"] for f in src.inputs_digest(PID)} | {s.sha256 for s in src.strategies.values()}
    assert all(len(h) == 64 for h in hashes)
    text = certificate_text(approved_read, tmp_path, issued)[1]
    words = {w for line in text.splitlines() for w in line.split()}
    assert sorted(h for h in hashes if h not in words) == []
    pages = text.split("\f")
    for s in issued.signatures:
        assert any(s.signed_at[:19] in page and s.signature_sha256 in page for page in pages), s.full_name
    # a section's heading on the page of its table (it stood alone at the foot of page 1)
    heading = next(page for page in pages if "Electronic signatures" in page)
    assert "signature SHA-256:" in heading.split("Electronic signatures")[1]


def test_certificate_lists_the_controls_the_run_read_with_their_sha256(approved_read, tmp_path):
    """TIL001's unstained control (read by the run: one-population cuts, self-checks; not gated) was
    missing from the certificate's "Inputs and software", which listed only the gated files. Now it
    is there with the SHA-256 of the file the run read (hashed here from the sample file itself),
    and the data hash the approval is bound to is the one a signature made now binds."""
    import hashlib

    from review_support import SAMPLE
    from tilpheno.review.service import data_sha256

    control = "TIL001_unstained.fcs"
    digest = hashlib.sha256((SAMPLE / control).read_bytes()).hexdigest()
    inputs = certificate_text(approved_read, tmp_path)[1].split("Inputs and software")[1]
    assert [line.split() for line in inputs.splitlines() if control in line] == [
        [control, "(unstained", "control,", "not", "gated)", digest]]
    issued = approved_read.release_approval(PID)
    assert issued.approval.data_sha256 == data_sha256(approved_read.source, PID, 1, issued.version.gates_sha256)


def test_certificate_names_each_control_with_its_tube_and_role(approved_read, tmp_path, monkeypatch):
    """The controls the run read but did not gate stood on the certificate as '(not gated)', with no
    tube or role (run.json did not record them), and the gated FMO files as '(surface, fmo)', without
    the marker each omits. Now run.json records each file's tube and role as the manifest gave them
    (``product_file_roles``) and the certificate names them: the unstained control's role,
    each FMO's marker (the sample's manifest); a run.json without them still says 'not gated'."""
    import json

    import pandas as pd

    from review_support import SAMPLE

    manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
    mine = manifest[manifest["product_id"] == PID]
    recorded = json.loads((approved_read.source.out_dir / "run.json").read_text())["product_file_roles"][PID]
    assert recorded == {r["file"]: {"tube": r["tube"], "role": r["role"], "fmo_marker": r["fmo_marker"]}
                        for r in mine.to_dict("records")}
    lines = [" ".join(line.split()[:-1]) for line in
             certificate_text(approved_read, tmp_path)[1].split("Inputs and software")[1].splitlines() if ".fcs" in line]
    expected = {f"{r['file']} ({r['tube']}, {r['role']} {r['fmo_marker']})" if r["role"] == "fmo"
                else f"{r['file']} ({r['tube']}, {r['role']})" for r in mine.to_dict("records") if r["role"] != "unstained"}
    assert set(lines) == expected | {f"{PID}_unstained.fcs (unstained control, not gated)"}
    monkeypatch.setitem(approved_read.source.run, "product_file_roles", {})   # a run.json from before they were recorded
    assert approved_read.source.file_roles(PID)[f"{PID}_unstained.fcs"] == "not gated"


def test_certificate_names_each_flags_gate(approved_read, tmp_path, monkeypatch):
    """The certificate's QC flags table had no gate column (qc.csv and the product report have one):
    a flag whose message does not open with its gate could not be told to hold which gate. Now the
    gate of each flag stands in its row (the PDF's text, line by line), with its file when the flag
    was raised on another (unstained_positive)."""
    flags = approved_read.source.qc_flags(PID) + [
        {"severity": "info", "code": "cut_in_dense_region", "file": "TIL001_surface_stain.fcs", "gate": "CD56+",
         "gate_file": "", "message": "the edge lies where events are dense"},
        {"severity": "info", "code": "few_events", "file": "TIL001_treg_stain.fcs", "gate": "FoxP3+",
         "gate_file": "", "message": "placed on 800 events"},
        {"severity": "info", "code": "unstained_positive", "file": "TIL001_unstained.fcs", "gate": "CD4+",
         "gate_file": "TIL001_treg_stain.fcs", "message": "1.5% of the control above"}]
    monkeypatch.setattr(approved_read.source, "qc_flags", lambda pid: flags)
    flowing, layout = certificate_text(approved_read, tmp_path)
    lines = layout.splitlines()
    header = next(line for line in lines if line.split()[:4] == ["severity", "code", "file", "gate"])
    assert header
    for f in flags[-3:]:
        row = next(line for line in lines if " ".join(f["message"].split()[:3]) in line)   # the row's first line
        assert f["gate"] in row.split(), row
    # unstained_positive's gate is the stained file's: named with it
    assert "CD4+ (of TIL001_treg_stain.fcs)" in " ".join(flowing.split())


def test_the_certificate_says_which_determined_fail_the_release_overturns_and_why(fresh_service, tmp_path):
    """TIL001 fails CD3+ T cells in the run on gates no flag asked to review; alice lowers its CD3
    cut until it passes (with a deviation justification) and dave approves. The certificate said
    "RELEASE CRITERIA MET" with nothing about the run's fail it overturned; it now has a line per
    such criterion: the run's value and the approved one, the justification, who and when (the
    ``deviation`` entry of the trail). A version stored without one (saved before deviations were
    recorded) is named as having none."""
    from tilpheno.review.service import transaction

    service = fresh_service
    alice = user(service, "alice")
    g = json.loads(service.version(PID).gates_json)["tubes"]["surface"]["gates"]["CD3+"]
    g["low"] -= 0.2
    reason = "FMO overlay shows the CD3-dim cells are T cells; QA deviation DV-17"
    v2 = service.save_version(PID, alice, 1, {"tubes": {"surface": {"gates": {"CD3+": g}}}}, "CD3 dim cells are T cells",
                              deviation=reason)
    service.sign(PID, user(service, "dave").id, PASSWORDS["dave"], "approved for release", 2,
                 approval_resolutions(service, PID))
    with service.factory() as db:
        [entry] = db.scalars(select(AuditEntry).where(AuditEntry.action == "deviation"))
    value = json.loads(entry.after_json)["criteria"][0]["value"]
    run = float(service.source.phenotype_row(PID)["cd3_pct_of_live_lymph"])
    flowing, _ = certificate_text(service, tmp_path)
    text = " ".join(flowing.split())
    assert "Release decision: RELEASE CRITERIA MET" in text
    assert ("Deviations: the run's determined fails this release overturns release overturns the run's determined fail "
            f"on CD3+ T cells (cd3_pct_of_live_lymph > 90 % of live lymphocytes: {run:.2f} in the run, {value:.2f} on these "
            f"gates): reason '{reason}', by Alice Tester (alice), at {entry.at[:19].replace('T', ' ')} UTC (version 2)") in text

    # a version stored as saves stored it before deviations were recorded: the overturn is named, unjustified
    change = service._gate_change("TIL003", 1, {"tubes": {"surface": {"gates": {"CD3+": g}}}})
    old = transaction(service.factory, lambda db: service._store(db, "carol", change, "CD3 as TIL001", "adjusted",
                                                                 expect_seq=None, relevant=None))
    [d] = service.deviations("TIL003", old)
    assert d.words().endswith("on these gates): no deviation justification recorded") and v2.version == 2


def test_a_rejection_the_approval_overruled_is_said_so_on_the_certificate(fresh_service, tmp_path):
    """Carol rejected TIL001's version 1; Dave approved it over her rejection. The certificate of
    analysis listed her signature under "Electronic signatures (valid for this version)" as
    'rejected', beside the approval, with nothing saying which decision stands: a released lot's
    certificate read as rejected. Now her signature's meaning, in both tables, says the approval
    overruled it."""
    service = fresh_service
    rejection = service.sign(PID, user(service, "carol").id, PASSWORDS["carol"], "rejected", 1, {}, "CD3 valley too high")
    service.sign(PID, user(service, "dave").id, PASSWORDS["dave"], "approved for release", 1,
                 approval_resolutions(service, PID), "valley at the FMO's 99.5th percentile", overrules=rejection.id,
                 oos_justification=OOS_REASON)
    flowing = " ".join(certificate_text(service, tmp_path)[0].split())
    overruled = "rejected (overruled by Dave Tester's approval)"
    assert flowing.count(overruled) == 2, flowing   # the signatures and the comments
    assert flowing.count("approved for release") >= 2


def test_the_certificates_phenotype_names_each_variable_in_the_reports_words(approved_read, tmp_path):
    """The certificate's phenotype table listed the study's variables by column name only
    ('cd3_pct_of_live_lymph'; a drafted study's 'hladr_pct_of_root'), where the report, the index and
    codebook.csv use the study's words ('CD3+ % live lymph'); QA signs the certificate. Each row now
    gives the label codebook.csv holds for the column (the run's own file: independent of the
    certificate's code), then the column, then the value."""
    import pandas as pd

    book = pd.read_csv(approved_read.source.out_dir / "codebook.csv", dtype=str, keep_default_na=False).set_index("column")
    _, layout = certificate_text(approved_read, tmp_path)
    lines = [" ".join(line.split()) for line in layout.splitlines()]
    for variable in approved_read.source.study.variables:
        label = book.loc[variable, "label"]
        assert label != variable
        assert any(line.startswith(f"{label} {variable} ") for line in lines), (variable, label)


UNBOUND_BY_FORM = {   # what a signature of each older form does not bind, the newest form's signature binding all
    "study_doses": ["panel file and FMO control markers not recorded at approval"],
    "controls": ["study dose definitions not recorded at approval",
                 "panel file and FMO control markers not recorded at approval"],
    "dose": ["control digests not recorded at approval", "study dose definitions not recorded at approval",
             "panel file and FMO control markers not recorded at approval"],
    "legacy": ["control digests not recorded at approval", "infused cell number not recorded at approval",
               "study dose definitions not recorded at approval",
               "panel file and FMO control markers not recorded at approval"],
}


@pytest.mark.parametrize("form", sorted(UNBOUND_BY_FORM))
def test_an_approval_of_an_older_form_says_what_it_does_not_bind(fresh_service, tmp_path, monkeypatch, capsys, form):
    """An approval made before the panel file and FMO markers (``study_doses``), the study's dose
    definitions (``controls``) or the infused cell number (``legacy``) were bound stands VALID and a
    change there would not void it; only one made before the controls were bound said so (the
    controls), the others said only VALID, on the page (state API) and on the certificate. Now each
    says every thing it does not bind, with the change that would not void it; a signature made now
    says nothing. The product list, ``phenotypes_approved.csv`` (``unbound``) and ``export-approved``'s
    summary said none of it: now they say the note of the approval that is the standing decision
    (the summary names the product)."""
    import html

    from tilpheno.review import service as module
    from tilpheno.review.cli import export_approved
    from tilpheno.review.export import approved_tables

    svc, hashed = fresh_service, module.data_sha256
    monkeypatch.setattr(module, "data_sha256", lambda *args, **kw: hashed(*args, form=form))
    old = svc.sign(PID, user(svc, "dave").id, PASSWORDS["dave"], "approved for release", 1,
                   approval_resolutions(svc, PID), oos_justification=OOS_REASON)
    monkeypatch.setattr(module, "data_sha256", hashed)
    new = svc.sign(PID, user(svc, "carol").id, PASSWORDS["carol"], "reviewed", 1, {})
    c, _, _ = login(create_app(svc), "carol")
    shown = {s["id"]: s for s in c.get(f"/api/products/{PID}/state").json["signatures"]}
    assert shown[old.id]["valid"] and shown[new.id]["valid"] and shown[new.id]["note"] == ""
    note = shown[old.id]["note"]
    said = [part.split(" (")[0] for part in note.split("; ")]
    assert said == UNBOUND_BY_FORM[form], note
    assert all(part.endswith("would not void it)") for part in note.split("; ")), note
    if "panel file and FMO control markers not recorded at approval" in said:
        assert "panel file row" in note and "fmo_marker" in note
    if "control digests not recorded at approval" in said:
        assert f"a replaced {PID}_unstained.fcs" in note
    flowing = " ".join(certificate_text(svc, tmp_path)[0].split())
    assert f"Dave Tester (dave), approved for release: {note}" in flowing
    assert svc.release_approval(PID).notes == {old.id: note}
    # the product list and the approved table say it too (they said only the approved version)
    assert f"1<span class=\"unbound\"> (signed approval: {html.escape(note)})</span>" in c.get("/").text
    assert approved_tables(svc)[0].set_index("product_id").loc[PID, "unbound"] == note
    export_approved(svc.source.out_dir, tmp_path / "approved", svc.factory.kw["bind"].url.render_as_string(False), None)
    assert ("(1 approved by a signature of an older form or other software: TIL001; its unbound column says what the "
            "signature does not bind)") in capsys.readouterr().out


def test_a_run_made_by_other_software_says_so_on_the_page_and_certificate(fresh_service, tmp_path, monkeypatch):
    """The numbers the product page and the certificate show are recomputed by the server's code;
    run.json names the tilpheno version and code that made the run (its report and tables), and
    nothing said when those were not the server's. Now the page and the certificate say so, once;
    a run of the server's own software says nothing."""
    import html

    from tilpheno import __version__
    from tilpheno.cache import code_digest

    svc = fresh_service
    svc.sign(PID, user(svc, "dave").id, PASSWORDS["dave"], "approved for release", 1,
             approval_resolutions(svc, PID), oos_justification=OOS_REASON)
    c, _, _ = login(create_app(svc), "carol")
    assert (svc.source.run["tilpheno_version"], svc.source.run["tilpheno_code_sha256"]) == (__version__, code_digest())
    assert 'id="run-software"' not in c.get(f"/products/{PID}").text
    assert "The run in this folder" not in certificate_text(svc, tmp_path)[0]
    monkeypatch.setitem(svc.source.run, "tilpheno_version", "0.0.9")
    monkeypatch.setitem(svc.source.run, "tilpheno_code_sha256", "ab" * 32)
    note = (f"The run in this folder was made by tilpheno 0.0.9 (code abababababab); this server runs tilpheno "
            f"{__version__} (code {code_digest()[:12]}): the numbers shown are recomputed by the server's code from "
            "the run's files and may differ from the run's report and tables.")
    page = html.unescape(c.get(f"/products/{PID}").text)
    assert page.count(note) == 1 and page.count("The run in this folder") == 1
    flowing = " ".join(certificate_text(svc, tmp_path)[0].split())
    assert flowing.count(note) == 1
    monkeypatch.setitem(svc.source.run, "tilpheno_version", __version__)   # same version, other code: said too
    assert "(code abababababab)" in c.get(f"/products/{PID}").text
    monkeypatch.setitem(svc.source.run, "tilpheno_code_sha256", "")   # same version, no code recorded: nothing to say
    assert 'id="run-software"' not in c.get(f"/products/{PID}").text


def test_an_approval_made_under_other_software_stands_and_says_so(fresh_service, tmp_path, monkeypatch):
    """dave approved TIL001 under another tilpheno (its version and code digest), then the server was
    upgraded. No signature recorded the software it was made under, so nothing told QA that the
    approved numbers, computed anew from the approved gates by the code running now, may differ from
    those signed. Now the signature records it (part of its signed content: the chain and every
    signature verify) and, the code not being bound, the approval stands and says so beside VALID on
    the page, on the certificate, in the product list and in ``phenotypes_approved.csv``; a signature
    made under the software running now says nothing."""
    import html

    from tilpheno import __version__
    from tilpheno.cache import code_digest
    from tilpheno.review import audit
    from tilpheno.review import service as module
    from tilpheno.review.export import approved_tables

    svc = fresh_service
    other = {"tilpheno": "0.0.9", "code_sha256": "ab" * 32}
    monkeypatch.setattr(module, "software_now", lambda: audit.canonical(other))
    old = svc.sign(PID, user(svc, "dave").id, PASSWORDS["dave"], "approved for release", 1,
                   approval_resolutions(svc, PID), oos_justification=OOS_REASON)
    monkeypatch.undo()
    new = svc.sign(PID, user(svc, "carol").id, PASSWORDS["carol"], "reviewed", 1, {})
    assert json.loads(old.software) == other and json.loads(new.software) == {"tilpheno": __version__,
                                                                             "code_sha256": code_digest()}
    with svc.factory() as db:
        assert audit.verify(db).ok, audit.verify(db).problems
        signed = [json.loads(e.after_json) for e in db.scalars(select(AuditEntry).where(AuditEntry.action == "sign"))]
    assert [s["software"] for s in signed] == [other, json.loads(new.software)]
    note = (f"signed under tilpheno 0.0.9 (code abababababab); now tilpheno {__version__} (code {code_digest()[:12]}) "
            "(the code is not bound: not void: a re-run whose automatic gates differ voids it; numbers computed anew "
            "from the same gates may differ)")
    c, _, _ = login(create_app(svc), "carol")
    shown = {s["id"]: s for s in c.get(f"/api/products/{PID}/state").json["signatures"]}
    assert shown[old.id]["valid"] and shown[old.id]["note"] == note
    assert shown[new.id]["valid"] and shown[new.id]["note"] == ""
    assert svc.approved_version(PID).version == 1   # not void
    assert f"1<span class=\"unbound\"> (signed approval: {html.escape(note)})</span>" in c.get("/").text
    assert approved_tables(svc)[0].set_index("product_id").loc[PID, "unbound"] == note
    flowing = " ".join(certificate_text(svc, tmp_path)[0].split())
    assert f"Dave Tester (dave), approved for release: {note}" in flowing
