"""Batch apply of one gate to other products, on SQLite and PostgreSQL: all targets saved or none,
a target already holding the gate skipped and reported, approvals checked in the saves' transaction."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from review_support import OOS_REASON, PASSWORDS, approval_resolutions, fresh_service, source3  # noqa: F401  (fixtures)
from tilpheno.review import audit
from tilpheno.review.models import AuditEntry, User
from tilpheno.review.service import ApprovalsWouldBeVoided, VersionConflict


@pytest.fixture
def service(fresh_service):
    return fresh_service


def user(service, name):
    with service.factory() as db:
        return db.scalar(select(User).where(User.username == name))


def cd3(service, pid):
    return json.loads(service.version(pid).gates_json)["tubes"]["surface"]["gates"]["CD3+"]


def saves(service):
    with service.factory() as db:
        return [(e.product_id, e.username) for e in db.scalars(select(AuditEntry).where(AuditEntry.action == "save_gates")
                                                                 .order_by(AuditEntry.seq))]


def source_with_own_cd3(service):
    """TIL002 with a CD3+ cut of its own (alice lowered it), the gate the batch copies."""
    gate = {**cd3(service, "TIL002")}
    gate["low"] -= 0.01
    service.save_version("TIL002", user(service, "alice"), service.current_version("TIL002"),
                         {"tubes": {"surface": {"gates": {"CD3+": gate}}}}, "lower CD3 cut")
    return gate


def when_loading(service, monkeypatch, pid, action):
    """Run ``action`` once, the first time the batch loads ``pid``'s stained tubes: what another user
    does between the batch apply's start and its saves."""
    original, done = service.source.stained, []

    def stained(product_id):
        if product_id == pid and not done:
            done.append(True)
            action()
        return original(product_id)

    monkeypatch.setattr(service.source, "stained", stained)


def test_a_target_already_holding_the_gate_is_skipped_not_an_error(service):
    """Targets [TIL003, TIL001], TIL001 already at TIL002's gate: TIL003 gets a new version, TIL001
    is reported unchanged (it used to fail 'no gate changed' after TIL003 was saved)."""
    alice = user(service, "alice")
    gate = source_with_own_cd3(service)
    service.apply_to_batch("TIL002", alice, "surface", "CD3+", ["TIL001"], "same CD3 valley")
    v1, v3 = service.current_version("TIL001"), service.current_version("TIL003")
    result = service.apply_to_batch("TIL002", alice, "surface", "CD3+", ["TIL003", "TIL001"], "same CD3 valley")
    assert [(r.product_id, r.version) for r in result.saved] == [("TIL003", v3 + 1)]
    assert result.unchanged == ["TIL001"]
    assert service.current_version("TIL001") == v1 and cd3(service, "TIL003") == gate == cd3(service, "TIL001")
    assert saves(service)[-1] == ("TIL003", "alice")
    with service.factory() as db:
        assert audit.verify(db).ok


def test_batch_apply_saves_every_target_or_none(service, monkeypatch):
    """Carol saves TIL001 while the batch [TIL003, TIL001] is being prepared: the batch is refused
    naming TIL001 and TIL003 keeps its version (it used to be saved before TIL001's conflict)."""
    source_with_own_cd3(service)
    carol = user(service, "carol")

    def carol_saves():
        moved = {**cd3(service, "TIL001"), "low": cd3(service, "TIL001")["low"] + 0.01}
        service.save_version("TIL001", carol, service.current_version("TIL001"),
                             {"tubes": {"surface": {"gates": {"CD3+": moved}}}}, "carol's own cut")

    when_loading(service, monkeypatch, "TIL001", carol_saves)
    before, trail = service.current_version("TIL003"), saves(service)
    with pytest.raises(VersionConflict, match="TIL001 is now at version 2 by carol"):
        service.apply_to_batch("TIL002", user(service, "alice"), "surface", "CD3+", ["TIL003", "TIL001"], "same valley")
    assert service.current_version("TIL003") == before
    assert saves(service) == trail + [("TIL001", "carol")]


def test_an_approval_signed_while_the_batch_runs_is_not_voided_unasked(service, monkeypatch):
    """Dave approves TIL003 after the batch started but before its saves: the batch is refused naming
    that approval and the approval stands (it used to be voided with no warning); applied once
    acknowledged, the save's audit entry names the approval it voided."""
    source_with_own_cd3(service)
    alice, dave = user(service, "alice"), user(service, "dave")

    def dave_approves():
        service.sign("TIL003", dave.id, PASSWORDS["dave"], "approved for release", service.current_version("TIL003"),
                     approval_resolutions(service, "TIL003"), oos_justification=OOS_REASON)

    when_loading(service, monkeypatch, "TIL003", dave_approves)
    with pytest.raises(ApprovalsWouldBeVoided, match=r"approval for release of TIL003 version 1 by Dave Tester \(dave\)") as exc:
        service.apply_to_batch("TIL002", alice, "surface", "CD3+", ["TIL001", "TIL003"], "same valley")
    assert exc.value.products == ["TIL003"]
    assert service.current_version("TIL001") == 1 and service.current_version("TIL003") == 1
    approval = service.approved_version("TIL003")
    assert approval is not None and approval.version == 1

    result = service.apply_to_batch("TIL002", alice, "surface", "CD3+", ["TIL001", "TIL003"], "same valley",
                                    void_approvals=exc.value.signature_ids)
    assert [r.product_id for r in result.saved] == ["TIL001", "TIL003"] and service.approved_version("TIL003") is None
    with service.factory() as db:
        entry = db.scalars(select(AuditEntry).where(AuditEntry.action == "save_gates", AuditEntry.product_id == "TIL003")
                           .order_by(AuditEntry.seq.desc())).first()
        signed = db.scalars(select(AuditEntry).where(AuditEntry.action == "sign")).one()
        assert audit.verify(db).ok
    voided = json.loads(entry.before_json)["voids_approval"]
    assert (voided["username"], voided["version"]) == ("dave", 1)
    assert voided["signature_sha256"] == audit.signature_sha256(json.loads(signed.after_json))


def test_an_approval_committed_after_the_check_inside_the_transaction_is_seen(service, monkeypatch):
    """Dave's approval of TIL003 commits just after the batch's transaction found TIL003 unapproved and
    before its saves: the transaction re-runs (the approval's audit entry concerns a target) and
    refuses naming the approval; nothing is applied."""
    source_with_own_cd3(service)
    alice, dave = user(service, "alice"), user(service, "dave")
    original, done = service.standing, []

    def standing(db, product_id, meaning, current=None):
        found = original(db, product_id, meaning, current)
        if (product_id, meaning) == ("TIL003", "approved for release") and not done:
            done.append(True)
            service.sign("TIL003", dave.id, PASSWORDS["dave"], "approved for release", 1,
                         approval_resolutions(service, "TIL003"), oos_justification=OOS_REASON)
        return found

    monkeypatch.setattr(service, "standing", standing)
    with pytest.raises(ApprovalsWouldBeVoided, match=r"TIL003 version 1 by Dave Tester \(dave\)"):
        service.apply_to_batch("TIL002", alice, "surface", "CD3+", ["TIL001", "TIL003"], "same valley")
    assert done and service.current_version("TIL001") == 1 and service.current_version("TIL003") == 1
    assert service.approved_version("TIL003").version == 1


def test_a_refused_batch_imports_no_target_and_an_applied_one_imports_with_its_saves(service):
    """TIL001 never opened, TIL003 approved: the batch [TIL001, TIL003] is refused (the approval) and
    used to leave TIL001 imported, its import_product entry by alice in the trail for a batch that did
    not happen. Now a refused batch stores nothing; applied, TIL001's import is in the batch's
    transaction, its entry next to the saves and saying why."""
    from tilpheno.review.models import GateSetVersion, Product

    source_with_own_cd3(service)
    alice, dave = user(service, "alice"), user(service, "dave")
    approval = service.sign("TIL003", dave.id, PASSWORDS["dave"], "approved for release", 1,
                            approval_resolutions(service, "TIL003"), oos_justification=OOS_REASON)

    def trail():
        with service.factory() as db:
            return [(e.action, e.product_id, e.username) for e in db.scalars(select(AuditEntry).order_by(AuditEntry.seq))]

    before = trail()
    with pytest.raises(ApprovalsWouldBeVoided):
        service.apply_to_batch("TIL002", alice, "surface", "CD3+", ["TIL001", "TIL003"], "same valley")
    assert trail() == before
    with service.factory() as db:
        assert db.get(Product, "TIL001") is None
    automatic = service.source.automatic("TIL001")
    service.apply_to_batch("TIL002", alice, "surface", "CD3+", ["TIL001", "TIL003"], "same valley",
                           void_approvals=[approval.id])
    assert trail() == before + [("import_product", "TIL001", "alice"), ("save_gates", "TIL001", "alice"),
                                ("save_gates", "TIL003", "alice")]
    with service.factory() as db:
        first = db.scalars(select(GateSetVersion).where(GateSetVersion.product_id == "TIL001")
                           .order_by(GateSetVersion.version)).all()
        entry = db.scalars(select(AuditEntry).where(AuditEntry.action == "import_product",
                                                    AuditEntry.product_id == "TIL001")).one()
        assert audit.verify(db).ok
    assert [(v.version, v.source, v.based_on) for v in first] == [(1, "automatic", None), (2, "batch from TIL002 v2", 1)]
    assert json.loads(first[0].gates_json) == automatic and "batch apply of surface/CD3+ from TIL002 v2" in entry.reason
    assert cd3(service, "TIL001") == cd3(service, "TIL002")


def test_a_batch_the_database_refuses_with_no_version_moved_says_so(service):
    """A stray row of TIL003's next version (stored outside the app: TIL003's current version did not
    move) makes every attempt of the batch [TIL001, TIL003] fail on the unique version; naming 'the
    first target moved' then raised StopIteration (a server error). Now one line naming the
    targets and the database's refusal; nothing of the batch stored."""
    from tilpheno.review.db import ReviewError
    from tilpheno.review.models import GateSetVersion

    source_with_own_cd3(service)
    alice = user(service, "alice")
    service.ensure_imported("TIL001")
    v1, v3 = service.current_version("TIL001"), service.current_version("TIL003")
    with service.factory() as db:
        row = db.scalars(select(GateSetVersion).where(GateSetVersion.product_id == "TIL003",
                                                      GateSetVersion.version == v3)).one()
        db.add(GateSetVersion(product_id="TIL003", version=v3 + 1, based_on=v3, gates_json=row.gates_json,
                              gates_sha256=row.gates_sha256, source="stray", reason="stray", created_by="x",
                              created_at=row.created_at))
        db.commit()
    trail = saves(service)
    with pytest.raises(ReviewError, match=r"^nothing was saved: the database refused the versions of TIL001, TIL003 "
                                          r"and no one's version moved meanwhile \(.+\)$"):
        service.apply_to_batch("TIL002", alice, "surface", "CD3+", ["TIL001", "TIL003"], "same valley")
    assert (service.current_version("TIL001"), service.current_version("TIL003")) == (v1, v3)
    assert saves(service) == trail
