"""Batch apply of one gate to other products, on SQLite and PostgreSQL: all targets saved or none,
a target already holding the gate skipped and reported."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from review_support import database_url, drop_schema, make_service, processed_out
from tilpheno.review import audit
from tilpheno.review.models import AuditEntry, User
from tilpheno.review.service import VersionConflict

PRODUCTS = ("TIL001", "TIL002", "TIL003")


@pytest.fixture(scope="module")
def batch_source(tmp_path_factory):
    """Three processed sample products (a source and two targets), loaded once."""
    from tilpheno.review.regate import ReviewSource

    return ReviewSource(processed_out(tmp_path_factory.mktemp("batch"), PRODUCTS))


@pytest.fixture(params=["sqlite", "postgresql"])
def service(request, batch_source, tmp_path):
    url = database_url(request.param, tmp_path)
    svc = make_service(batch_source.out_dir, url, batch_source)
    yield svc
    svc.factory.kw["bind"].dispose()
    drop_schema(url)


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
