"""The review web app's HTTP contract on SQLite and PostgreSQL: login, cookies, CSRF, roles and bad input
(4xx with a clear message, nothing stored, nothing executed)."""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update

from review_support import OOS_REASON, PASSWORDS, approval_resolutions, flagged_out, fresh_service, processed_once, review_out, review_source, service, source3, standing_approval_id  # noqa: F401  (fixtures)
from review_support import login
from tilpheno.review.audit import Clock
from tilpheno.review.db import ReviewError
from tilpheno.review.web import COOKIE, create_app

PID = "TIL001"


@pytest.fixture(scope="module")
def app(service):
    return create_app(service)


def close_refusal_windows(service):
    """Close every open refusal window as if its time were over: an identical refusal of an earlier
    test or case is then not counted against this one."""
    from tilpheno.review import refusals
    from tilpheno.review.service import transaction

    rule = service.refusals
    return transaction(service.factory, lambda db: refusals.close(db, rule, rule.now(db) + rule.window))


def counts(service):
    with service.factory() as db:
        return (db.execute(text("SELECT count(*) FROM audit_entries")).scalar(),
                db.execute(text("SELECT count(*) FROM gate_set_versions")).scalar(),
                db.execute(text("SELECT count(*) FROM signatures")).scalar())


def cd3_body(client, delta, base=None):
    state = client.get(f"/api/products/{PID}/state").json
    gate = state["current"]["tubes"]["surface"]["gates"]["CD3+"]
    gate["low"] += delta
    return state, {"base_version": base or state["current_version"],
                   "gates": {"tubes": {"surface": {"gates": {"CD3+": gate}}}}, "reason": "dim tail trimmed"}


def test_login_cookie_flags_headers_and_session_rotation(app):
    c = app.test_client()
    anon = c.get("/login")
    cookie = anon.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "script-src 'self'" in anon.headers["Content-Security-Policy"]
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', anon.text).group(1)
    r = c.post("/login", data={"username": "alice", "password": PASSWORDS["alice"], "csrf_token": csrf})
    assert r.status_code == 302
    assert r.headers["Set-Cookie"].split(";")[0] != cookie.split(";")[0]   # new session id at login
    assert c.get("/").status_code == 200
    assert app.test_client().get("/").status_code == 302                # not logged in -> login page


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_lock_outs_and_login_sessions_are_timed_by_the_record_clock(kind, review_source, tmp_path):
    """A lock-out's end and a login session's start and expiry were the machine's clock
    (``datetime.now``) while the login entries are the record's clock (``audit.Clock``: PostgreSQL's;
    SQLite the machine's): of servers on one database, one whose machine ran ahead locked an account
    for less than 15 minutes by the record and kept sessions past their end. Now they are the
    server's record clock; injected a day ahead of the machine: five wrong passwords lock root until
    that clock's now + 15 min, alice's session starts at its now and ends 8 h later, and a session
    still 1 h from its end by the machine but over by that clock is refused (HTTP 401)."""
    import time

    from review_support import service_on
    from tilpheno.review.auth import LOCKOUT_MINUTES, MAX_FAILURES, SESSION_HOURS
    from tilpheno.review.models import LoginSession, User, utc

    ahead = 86400.0
    with service_on(kind, tmp_path, review_source, Clock.shared(lambda: time.time() + ahead)) as svc:
        app = create_app(svc)
        c = app.test_client()
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
        before = time.time() + ahead
        for _ in range(MAX_FAILURES):
            c.post("/login", data={"username": "root", "password": "wrong", "csrf_token": csrf})
        c_alice, _, _ = login(app, "alice")
        after = time.time() + ahead
        with svc.factory() as db:
            locked_until = db.scalar(select(User.locked_until).where(User.username == "root"))
            (session,) = db.scalars(select(LoginSession).join(User, User.id == LoginSession.user_id)
                                    .where(User.username == "alice")).all()
        assert utc(before + LOCKOUT_MINUTES * 60) <= locked_until <= utc(after + LOCKOUT_MINUTES * 60), locked_until
        assert utc(before) <= session.created_at <= utc(after), session.created_at
        assert utc(before + SESSION_HOURS * 3600) <= session.expires_at <= utc(after + SESSION_HOURS * 3600)
        assert c_alice.get("/").status_code == 200
        with svc.factory() as db:   # 1 h left by the machine's clock, a day over by the record's
            db.execute(update(LoginSession).where(LoginSession.token_sha256 == session.token_sha256)
                       .values(expires_at=utc(time.time() + 3600.0)))
            db.commit()
        r = c_alice.get("/")
        assert r.status_code == 401 and "session invalid or expired" in r.text


def test_wrong_password_and_lockout_over_http(app, service):
    c = app.test_client()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
    for i in range(5):
        r = c.post("/login", data={"username": "root", "password": "wrong", "csrf_token": csrf}, follow_redirects=True)
        assert [h.status_code for h in r.history] == [303] and r.request.path == "/login"   # POST/redirect/GET
    assert "locked" in r.text
    assert "locked" not in c.get("/login").text   # the login page says it once
    r = c.post("/login", data={"username": "root", "password": PASSWORDS["root"], "csrf_token": csrf}, follow_redirects=True)
    assert r.history[0].status_code == 303 and "is locked until" in r.text


def test_preview_changes_pct_and_save_needs_a_reason(app, service):
    c, h, _ = login(app, "alice")
    state, body = cd3_body(c, 0.15)   # from the CD3 valley into the CD3+ population
    auto = {r["population"]: r for r in state["populations"]["automatic"]["surface"]}
    prev = c.post(f"/api/products/{PID}/preview", json={"gates": body["gates"]}, headers=h)
    assert prev.status_code == 200
    new = {r["population"]: r for r in prev.json["populations"]["surface"]}
    assert new["CD3+"]["pct_of_parent"] < auto["CD3+"]["pct_of_parent"]
    assert new["live_lymph"]["count"] == auto["live_lymph"]["count"]
    before = counts(service)
    r = c.post(f"/api/products/{PID}/versions", json={**body, "reason": ""}, headers=h)
    assert r.status_code == 400 and "reason: required" in r.json["error"]
    assert counts(service) == before
    r = c.post(f"/api/products/{PID}/versions", json=body, headers=h)
    assert r.status_code == 201 and r.json["version"] == state["current_version"] + 1
    # a second reviewer who loaded the old version: conflict, nothing lost
    c2, h2, _ = login(app, "carol")
    _, stale = cd3_body(c2, -0.02, base=state["current_version"])
    r = c2.post(f"/api/products/{PID}/versions", json=stale, headers=h2)
    assert r.status_code == 409 and "conflict" in r.json["error"] and "alice" in r.json["error"]
    assert c2.get(f"/api/products/{PID}/state").json["current_version"] == state["current_version"] + 1


@pytest.mark.parametrize("case", ["tampered_cookie", "no_csrf", "wrong_csrf", "unknown_product", "script_product",
                                  "script_reason", "out_of_range", "analyst_approves", "bad_password", "not_json",
                                  "other_users_product"])
def test_bad_requests_are_refused_and_store_nothing(app, service, case):
    c, h, _ = login(app, "bob" if case in ("analyst_approves", "other_users_product") else "alice")
    current = service.version(PID)
    gate = json.loads(current.gates_json)["tubes"]["surface"]["gates"]["CD3+"]
    gate["low"] += 0.01
    state = {"current_version": current.version}
    body = {"base_version": current.version, "gates": {"tubes": {"surface": {"gates": {"CD3+": gate}}}},
            "reason": "dim tail trimmed"}
    url, payload, headers = f"/api/products/{PID}/versions", body, h
    expect = {"tampered_cookie": (401, "session invalid or expired"), "no_csrf": (403, "CSRF token missing or wrong"),
              "wrong_csrf": (403, "CSRF token missing or wrong"), "unknown_product": (404, "no product 'TIL999'"),
              "script_product": (404, "no product"), "script_reason": (400, "plain text only"),
              "out_of_range": (400, "surface/CD3+.low: 99 is outside the allowed range"),
              "analyst_approves": (403, "cannot sign 'approved for release'"),
              "bad_password": (403, "signature refused: wrong user name or password"),
              "not_json": (400, "a JSON object is required"),
              "other_users_product": (403, "product TIL002 is not assigned to you (bob, analyst)")}[case]
    if case == "tampered_cookie":
        cookie = c.get_cookie(COOKIE)
        c.set_cookie(COOKIE, cookie.value[:-4] + "AAAA")
    elif case == "no_csrf":
        headers = {}
    elif case == "wrong_csrf":
        headers = {"X-CSRF-Token": "x" * 43}
    elif case == "unknown_product":
        url = "/api/products/TIL999/versions"
    elif case == "other_users_product":
        url = "/api/products/TIL002/versions"
    elif case == "script_product":
        url = "/api/products/<script>alert(1)<%2Fscript>/versions"
    elif case == "script_reason":
        payload = {**body, "reason": "ok <script>alert('x')</script>"}
    elif case == "out_of_range":
        payload["gates"]["tubes"]["surface"]["gates"]["CD3+"]["low"] = 99
    elif case in ("analyst_approves", "bad_password"):
        url = f"/api/products/{PID}/sign"
        payload = {"version": state["current_version"], "meaning": "approved for release", "qc_resolutions": {},
                   "password": PASSWORDS["bob"] if case == "analyst_approves" else "not-my-password"}
    close_refusal_windows(service)   # the identical refusal of another case is not counted against this one
    before = counts(service)
    if case == "not_json":
        r = c.post(url, data="gates=1", headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
    else:
        r = c.post(url, json=payload, headers=headers)
    assert (r.status_code, r.is_json) == (expect[0], True), r.text
    assert expect[1] in r.json["error"], r.json["error"]
    after = counts(service)
    assert after[1:] == before[1:]                       # no version, no signature stored
    if case in ("bad_password", "analyst_approves"):
        assert after[0] == before[0] + 1                 # the refused signature is audited, with its reason
        with service.factory() as db:
            action, reason = db.execute(text("SELECT action, reason FROM audit_entries ORDER BY seq DESC")).first()
        assert action == "signature_refused" and expect[1].removeprefix("signature refused: ") in reason, reason
    elif case in ("no_csrf", "wrong_csrf", "other_users_product"):   # a logged-in user's 403: audited, with why
        assert after[0] == before[0] + 1
        with service.factory() as db:
            action, reason = db.execute(text("SELECT action, reason FROM audit_entries ORDER BY seq DESC")).first()
        assert action == "access_refused" and expect[1] in reason, reason
    else:
        assert after[0] == before[0]


def test_script_in_product_id_page_is_escaped(app):
    c, _, _ = login(app, "alice")
    r = c.get("/products/<script>alert(1)<%2Fscript>", headers={"Accept": "text/html"})
    assert r.status_code == 404
    assert "<script>alert" not in r.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text


def test_exports_and_audit_csv(fresh_service):
    """/audit.csv for a reviewer holds the trail's entries, alice's gate save among them; the download is
    itself audited, after the copy (``audit_export``: who, the file, the entries it holds, the SHA-256 of
    the bytes sent): the copy does not hold its own entry. An analyst is refused (403), and the refusal is
    audited (``access_refused``: who, the request, the product it named, why): a 403 used to leave no
    trace, while refused signatures and logins did; the analyst's attempts to read the audit trail,
    export every product or open a product not assigned to them, or a POST without a CSRF token, were
    nowhere in the trail. A database of its own: the save it exports is its own (it read an earlier
    test's save on the module's database, and failed run alone)."""
    import csv
    import hashlib
    import io

    from tilpheno.review.models import AuditEntry

    service = fresh_service
    app = create_app(service)
    c, h, _ = login(app, "alice")
    _, body = cd3_body(c, 0.15)
    assert c.post(f"/api/products/{PID}/versions", json=body, headers=h).status_code == 201
    r = c.get("/audit.csv")
    assert r.status_code == 200 and r.text.startswith("seq,at,username,action")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(e["username"], e["product_id"], json.loads(e["after_json"])["version"]) for e in rows
            if e["action"] == "save_gates"] == [("alice", PID, 2)]
    with service.factory() as db:
        newest = db.scalar(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1))
    assert (newest.username, newest.action, newest.seq) == ("alice", "audit_export", int(rows[-1]["seq"]) + 1)
    assert json.loads(newest.after_json) == {"file": "audit.csv", "sha256": hashlib.sha256(r.data).hexdigest(),
                                             "first_seq": 1, "last_seq": int(rows[-1]["seq"]), "open_windows": 0,
                                             "held_refusals": 0}
    c_bob, h_bob, _ = login(app, "bob")

    def refused(url, method="get", **kw):
        """bob's request to ``url``, refused 403; the newest audit entries since it was sent."""
        close_refusal_windows(service)   # an identical refusal of another test is not counted against it
        with service.factory() as db:
            head = db.scalar(select(func.max(AuditEntry.seq)))
        r = getattr(c_bob, method)(url, **kw)
        assert r.status_code == 403, r.text
        with service.factory() as db:
            new = list(db.scalars(select(AuditEntry).where(AuditEntry.seq > head).order_by(AuditEntry.seq)))
        return r.json["error"] if r.is_json else r.text, [(e.username, e.action, e.product_id, json.loads(e.after_json),
                                                           e.reason) for e in new]

    error, entries = refused("/audit.csv")
    assert entries == [("bob", "access_refused", "", {"request": "GET /audit.csv"}, error)]
    assert error == "role analyst cannot export the audit trail"
    error, entries = refused("/export/phenotypes.csv")
    assert entries == [("bob", "access_refused", "", {"request": "GET /export/phenotypes.csv"}, error)]
    home = c_bob.get("/").text
    assert "TIL001" in home and "TIL002" not in home          # an analyst sees the products assigned to them
    error, entries = refused("/api/products/TIL002/state")
    assert entries == [("bob", "access_refused", "TIL002", {"request": "GET /api/products/TIL002/state"}, error)]
    assert error.startswith("product TIL002 is not assigned to you (bob, analyst)")
    error, entries = refused(f"/api/products/{PID}/sign", "post", json={"meaning": "reviewed"})   # no CSRF token
    assert entries == [("bob", "access_refused", PID, {"request": f"POST /api/products/{PID}/sign"}, error)]
    assert error.startswith("CSRF token missing or wrong")
    error, entries = refused(f"/api/products/{PID}/sign", "post", headers=h_bob, json={   # audited once, as before
        "meaning": "approved for release", "version": service.current_version(PID), "password": PASSWORDS["bob"]})
    assert [e[:3] for e in entries] == [("bob", "signature_refused", PID)]
    r = c.get("/export/phenotypes.csv")
    assert r.status_code == 200 and "review_status" in r.text.splitlines()[0]
    r = c.get(f"/products/{PID}/certificate.pdf")
    assert r.status_code == 409 and "approved" in json.loads(r.text)["error"]


def test_a_script_refused_in_a_loop_adds_one_entry_per_window(app, service, monkeypatch):
    """A logged-in script hitting a forbidden URL in a loop added one ``access_refused`` entry per
    request (the trail flooded). Identical refusals (same user, request and reason) within the window
    of the one written are counted, not written; once the window has closed (the next request after
    its time) one ``access_refused_repeated`` entry gives their count, the entry they repeat and when
    the window closed. Nothing is changed in the trail, which still verifies; another request's refusal is
    written in its own right."""
    from tilpheno.review import audit
    from tilpheno.review.models import AuditEntry, utc
    from tilpheno.review.refusals import RefusalRule

    close_refusal_windows(service)
    now = [1000.0]
    counter = RefusalRule(clock=Clock.shared(lambda: now[0]))
    monkeypatch.setattr(service, "refusals", counter)
    c_bob, _, _ = login(app, "bob")
    with service.factory() as db:
        start = audit.head_seq(db)

    def new_entries():
        with service.factory() as db:
            rows = db.scalars(select(AuditEntry).where(AuditEntry.seq > start).order_by(AuditEntry.seq))
            return [(e.seq, e.username, e.action, e.product_id, json.loads(e.after_json), e.reason, e.at) for e in rows]

    for _ in range(50):   # 50 refusals within the window, 1 s apart
        r = c_bob.get("/audit.csv")
        assert r.status_code == 403
        now[0] += 1.0
    error = "role analyst cannot export the audit trail"
    assert c_bob.get("/api/products/TIL002/state").status_code == 403   # another request: its own entry
    first, other = new_entries()
    assert first[1:6] == ("bob", "access_refused", "", {"request": "GET /audit.csv"}, error)
    assert other[2:4] == ("access_refused", "TIL002")
    now[0] = 1000.0 + counter.window          # the first window has closed: any request writes its count
    assert c_bob.get("/").status_code == 200
    entries = new_entries()
    assert len(entries) == 3
    seq, user, action, product, after, reason, at = entries[2]
    assert (user, action, product, reason) == ("bob", "access_refused_repeated", "", error)
    assert after.pop("last_at") == utc(1049.0)   # the 50th refusal's time, by the windows' clock
    assert after == {"request": "GET /audit.csv", "count": 49, "repeats_entry": first[0], "window_s": counter.window,
                     "closed_at": utc(1000.0 + counter.window)}
    for _ in range(4):   # a new window: one entry, three counted, written once its time is over
        assert c_bob.get("/audit.csv").status_code == 403
    assert service.write_repeated_refusals() == []
    now[0] += counter.window
    service.write_repeated_refusals()
    entries = new_entries()
    assert [e[2] for e in entries[3:]] == ["access_refused", "access_refused_repeated"]   # TIL002's counted none
    assert entries[4][4]["count"] == 3 and entries[4][4]["repeats_entry"] == entries[3][0]
    assert entries[4][4]["closed_at"] == utc(1000.0 + 2 * counter.window)
    with service.factory() as db:
        assert audit.verify(db).ok


def test_an_audit_copy_shows_the_open_refusal_windows_counts_marked_open(app, service, monkeypatch):
    """A copy of the trail held only the entries: refusals counted in a window still open (bob
    refused 3 times: one ``access_refused`` entry, 2 counted) were in no copy until the window's
    time was over, and with no server running none wrote them (a copy in that gap lacked them).
    Now /audit.csv shows each open window after the entries, as it stands: its entry-to-be's action
    with ``_open``, no ``seq`` or hashes (not an entry of the chain), ``at`` the copy's time, its
    count so far, ``open`` and ``closes_at``; nothing is written for it (the window keeps counting;
    its entry comes once its time is over), the copy's ``audit_export`` entry says how many such
    rows it held, and the trail verifies."""
    import csv
    import io

    from tilpheno.review import audit
    from tilpheno.review.models import utc
    from tilpheno.review.refusals import RefusalRule

    close_refusal_windows(service)
    now = [1000.0]
    monkeypatch.setattr(service, "refusals", RefusalRule(clock=Clock.shared(lambda: now[0])))
    c_bob, _, _ = login(app, "bob")
    for _ in range(3):
        assert c_bob.get("/audit.csv").status_code == 403
        now[0] += 1.0
    c_alice, _, _ = login(app, "alice")
    r = c_alice.get("/audit.csv")
    assert r.status_code == 200
    rows = list(csv.DictReader(io.StringIO(r.text)))
    written = [row for row in rows if row["action"] == "access_refused" and row["username"] == "bob"][-1]
    assert all(row["seq"] for row in rows[:-1]) and rows[-1]["action"] == "access_refused_repeated_open"
    assert {k: rows[-1][k] for k in ("seq", "at", "username", "product_id", "before_json", "reason", "prev_sha256",
                                     "entry_sha256")} == {
        "seq": "", "at": utc(1003.0), "username": "bob", "product_id": "", "before_json": "null",
        "reason": "role analyst cannot export the audit trail", "prev_sha256": "", "entry_sha256": ""}
    assert json.loads(rows[-1]["after_json"]) == {
        "request": "GET /audit.csv", "count": 2, "repeats_entry": int(written["seq"]), "window_s": 300.0,
        "last_at": utc(1002.0), "open": True, "closes_at": utc(1300.0)}
    assert [e for e in entries_of(service, "access_refused_repeated") if e[0] > int(written["seq"])] == []   # none written
    export = entries_of(service, "audit_export")[-1]
    assert (export[1], export[4]["last_seq"], export[4]["open_windows"]) == ("alice", int(rows[-2]["seq"]), 1)
    now[0] = 1300.0   # its time over: the next request writes its entry, with the count the copy showed
    assert c_bob.get("/audit.csv").status_code == 403
    close_refusal_windows(service)
    closed = entries_of(service, "access_refused_repeated")[-1]
    assert (closed[4]["count"], closed[4]["repeats_entry"], closed[4]["closed_at"]) == (2, int(written["seq"]), utc(1300.0))
    with service.factory() as db:
        assert audit.verify(db).ok


def test_a_refusal_whose_window_another_server_opened_meanwhile_is_counted_there(app, service, monkeypatch):
    """A refused request that finds no open window of its key opens one; when another server opened
    that window between this request's read and its insert, the insert collided (IntegrityError), the
    whole transaction re-ran, and a request whose key collided at each of the 8 runs
    (``service.transaction``) ended in HTTP 500, its refusal counted nowhere. Forced here at every
    run: right after the request found no window, another server's identical refusal (the same code,
    in the request's transaction) opens it. Now the request is counted in that window, in the same
    transaction: HTTP 403, one ``access_refused`` entry (the other server's), and once the window is
    over one ``access_refused_repeated`` counting this request; the trail verifies."""
    from tilpheno.review import audit, refusals

    close_refusal_windows(service)
    c_bob, _, _ = login(app, "bob")
    error, others, inside = "role analyst cannot export the audit trail", [], [False]
    real_close = refusals.close

    def close(db, rule, until=None, *, now=None):   # reached by a refusal whose UPDATE found no open window
        closed = real_close(db, rule, until, now=now)
        if now is not None and not inside[0]:   # the request's own run, not the other server's refusal
            inside[0] = True
            try:
                others.append(refusals.record(db, rule, "bob", "GET /audit.csv", "", error))
            finally:
                inside[0] = False
        return closed

    monkeypatch.setattr(refusals, "close", close)
    with service.factory() as db:
        start = audit.head_seq(db)
    r = c_bob.get("/audit.csv")
    assert r.status_code == 403 and json.loads(r.text)["error"] == error, r.text
    assert len(others) == 1   # one run: the transaction did not re-run
    monkeypatch.setattr(refusals, "close", real_close)
    close_refusal_windows(service)
    entries = [e for e in entries_of(service, "access_refused", "access_refused_repeated") if e[0] > start]
    assert [(e[1], e[2], e[4].get("count"), e[5]) for e in entries] == [
        ("bob", "access_refused", None, error), ("bob", "access_refused_repeated", 1, error)]
    assert entries[1][4]["repeats_entry"] == entries[0][0]
    with service.factory() as db:
        assert audit.verify(db).ok


@contextmanager
def two_servers_on_one_database(kind, review_source, tmp_path, second_clock=None):
    """A service on a new ``kind`` database (users as :func:`review_support.service_on`) and a second
    opened on the same database (``tilpheno serve`` run again: a restart, or another process), its
    clock ``second_clock`` (:class:`tilpheno.review.audit.Clock`; default: the servers' own)."""
    from review_support import database_url, drop_schema, make_service
    from tilpheno.review.server import build_service

    url = database_url(kind, tmp_path)
    first = make_service(review_source.out_dir, url, review_source)
    second = None
    try:
        second = build_service(review_source.out_dir, url, source=review_source,
                               **({} if second_clock is None else {"clock": second_clock}))
        yield first, second
    finally:
        for svc in (first, second):
            if svc is not None:
                svc.factory.kw["bind"].dispose()
        drop_schema(url)


def entries_of(service, *actions):
    """``(seq, username, action, product_id, after, reason)`` of the trail's entries of ``actions``, oldest first."""
    from tilpheno.review.models import AuditEntry

    with service.factory() as db:
        return [(e.seq, e.username, e.action, e.product_id, json.loads(e.after_json), e.reason)
                for e in db.scalars(select(AuditEntry).where(AuditEntry.action.in_(actions)).order_by(AuditEntry.seq))]


def test_the_due_check_and_a_refusal_read_the_clock_once(service):
    """Every request's check for refusal windows whose time is over read the database's clock (a
    query on PostgreSQL) and then the windows: two round trips; a refused request read the clock at
    its start and again for its entry: two queries of the clock. Now the check is one statement
    that reads the clock itself; a refusal counted in its open window is one statement (its UPDATE
    reads the clock); one opening a window reads the clock once (a query on PostgreSQL, none on
    SQLite). Statements counted as SQLAlchemy sends them (``before_cursor_execute``); the count's
    ``last_at``, stamped by the database on PostgreSQL, is stored as every time is (microseconds, Z)."""
    from sqlalchemy import event

    from tilpheno.review.models import RefusalWindow

    close_refusal_windows(service)
    engine, sent = service.factory.kw["bind"], []

    def note(conn, cursor, statement, *args):
        sent.append(statement)

    def taken(fn):
        sent.clear()
        result = fn()
        return result, list(sent)

    event.listen(engine, "before_cursor_execute", note)
    try:
        written, due_sent = taken(service.write_due_refusals)
        first, opening = taken(lambda: service.record_access_refused("bob", "", "GET /clock-reads", "test refusal"))
        again, counting = taken(lambda: service.record_access_refused("bob", "", "GET /clock-reads", "test refusal"))
    finally:
        event.remove(engine, "before_cursor_execute", note)
    clock_queries = [q for q in opening if "clock_timestamp()" in q]
    assert written == [] and first is not None and again is None
    assert len(due_sent) == 1, due_sent
    assert len(counting) == 1 and counting[0].lstrip().upper().startswith("UPDATE"), counting
    assert len(clock_queries) == (1 if engine.dialect.name == "postgresql" else 0), opening
    with service.factory() as db:
        (window,) = db.scalars(select(RefusalWindow).where(RefusalWindow.request == "GET /clock-reads")).all()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", window.last_at) and window.count == 1
    assert window.opened_at <= window.last_at


def test_a_refusal_the_database_would_not_take_is_held_and_written_at_the_next_write(app, service, monkeypatch,
                                                                                     caplog):
    """A refusal whose transaction hit "database busy" at each of its 8 runs stood (HTTP 403) but was
    only logged: neither written nor counted in the trail. Now the server holds it (at most its
    ``limit``, here 2: a third is counted as lost, its warning saying how many) and writes it at its
    next successful write, the next request's: one ``access_refused_delayed`` entry per refused
    request (its count, first and last times by the server's clock, the database's error) and one
    ``access_refused_lost`` entry of ``system`` with the count lost; a copy of the trail
    (``/audit.csv``) holds them, the trail verifies, and nothing stays held. While the database
    stays busy a request's attempt to write them fails and they stay held, in order."""
    import logging
    import time

    from tilpheno.review import audit, refusals
    from tilpheno.review.models import utc

    def busy(*args, **kwargs):   # the database would not take it, at any run
        raise audit.ChainConflict("audit head moved")

    error = "role analyst cannot export the audit trail"
    close_refusal_windows(service)
    monkeypatch.setattr(service, "delayed", refusals.DelayedRefusals(service.delayed.directory, service.delayed.database, limit=2))
    c_bob, _, _ = login(app, "bob")
    with service.factory() as db:
        start = audit.head_seq(db)
    with monkeypatch.context() as database_busy:
        database_busy.setattr(refusals, "record", busy)
        database_busy.setattr(refusals, "write_delayed", busy)
        began = time.time()
        with caplog.at_level(logging.WARNING, logger="tilpheno.review.service"):
            assert [c_bob.get("/audit.csv").status_code for _ in range(3)] == [403] * 3
        ended = time.time()
    said = [r.getMessage() for r in caplog.records if r.name == "tilpheno.review.service" and "refusal of" in r.getMessage()]
    held = ("refusal of GET /audit.csv to user bob not written (database busy: please retry): held by this server, "
            f"written to the audit trail at its next successful write; refused because: {error}")
    assert said == [held, held, "refusal of GET /audit.csv to user bob not written (database busy: please retry) and "
                    "not held: this server holds 2 already; lost, 1 lost so far (their count written to the audit trail "
                    f"at its next successful write); refused because: {error}"], said
    with service.factory() as db:
        assert audit.head_seq(db) == start   # nothing written while the database was busy
    c_alice, _, _ = login(app, "alice")   # its first request writes them
    copy = c_alice.get("/audit.csv").text
    entries = [e for e in entries_of(service, "access_refused_delayed", "access_refused_lost") if e[0] > start]
    assert [(e[1], e[2], e[4]["count"]) for e in entries] == [("bob", "access_refused_delayed", 2),
                                                              ("system", "access_refused_lost", 1)], entries
    delayed, lost = entries[0][4], entries[1][4]
    assert (delayed["request"], delayed["clock"], delayed["error"], entries[0][5]) == (
        "GET /audit.csv", "server", "database busy: please retry", error)
    assert utc(began) <= delayed["first_at"] < delayed["last_at"] < lost["first_at"] == lost["last_at"] <= utc(ended)
    assert (lost["max_held"], lost["clock"]) == (2, "server") and "neither written nor held" in entries[1][5]
    assert ",access_refused_delayed," in copy and ",access_refused_lost," in copy
    assert not service.delayed.pending() and not list(service.delayed.directory.glob(f"{service.delayed.database}.*"))
    with service.factory() as db:
        assert audit.verify(db).ok


CHILD_HOLDS = """
import os, sys, time
from tilpheno.review import service as service_module
from tilpheno.review.db import ReviewError
from tilpheno.review.server import build_service

def busy(*args, **kwargs):   # the database would not take it, at any run
    raise ReviewError("database busy: please retry")

service = build_service(sys.argv[1], sys.argv[2])
service_module.transaction = busy
for request in ("GET /audit.csv", "GET /audit.csv", "GET /export/phenotypes.csv"):
    service.record_access_refused("bob", "", request, "role analyst cannot export")
print("held", flush=True)
time.sleep(600)
"""


def test_refusals_a_killed_server_held_are_written_by_the_next_to_start(service, caplog):
    """A refusal the database would not take was held in its server's memory only: a server killed
    (SIGKILL) before its next successful write lost it, only its warning line remained. Now each is
    one fsync'd line of the server's spool file beside OUT, and the next server to start writes it:
    a server process holding three refusals (two identical) is killed; a new server's start writes
    them (two ``access_refused_delayed`` entries: counts 2 and 1, naming the spool file) and
    removes the file; a second start writes nothing more; a copy of the file put back (a kill
    between the commit and the removal) is not written twice; a torn last line is reported,
    naming the file and the line, and the lines before it written. The trail verifies."""
    import logging
    import os
    import shutil
    import signal
    import subprocess
    import sys

    from tilpheno.review import audit

    url = service.factory.kw["bind"].url.render_as_string(hide_password=False)
    out = str(service.source.out_dir)
    spool = service.delayed.directory
    with service.factory() as db:
        start = audit.head_seq(db)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def killed_server() -> Path:
        child = subprocess.Popen([sys.executable, "-c", CHILD_HOLDS, out, url], stdout=subprocess.PIPE, text=True,
                                 env=env)
        try:
            assert child.stdout.readline().strip() == "held"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        (left,) = spool.glob(f"{service.delayed.database}.*.jsonl")
        return left

    left = killed_server()
    assert len(left.read_text().splitlines()) == 3
    kept = left.with_name("kept")
    shutil.copy(left, kept)
    written = service.write_due_refusals(replay=True)   # as serve starts
    entries = [e for e in entries_of(service, "access_refused_delayed", "access_refused_lost") if e[0] > start]
    assert [e[0] for e in entries] == written and len(written) == 2, entries
    token = left.name.split(".")[1]
    assert [(e[1], e[4]["request"], e[4]["count"], e[4]["spool"], e[5]) for e in entries] == [
        ("bob", "GET /audit.csv", 2, [token], "role analyst cannot export"),
        ("bob", "GET /export/phenotypes.csv", 1, [token], "role analyst cannot export")]
    assert not left.exists()
    assert service.write_due_refusals(replay=True) == []   # nothing twice
    os.replace(kept, left)   # killed after the commit, before the removal
    assert service.write_due_refusals(replay=True) == [] and not left.exists()
    left = killed_server()
    with left.open("ab") as fh:
        fh.write(b'{"at":1.5,"error":"database bu')   # killed while writing a fourth
    with caplog.at_level(logging.WARNING, logger="tilpheno.review.service"):
        written = service.write_due_refusals(replay=True)
    assert len(written) == 2 and not left.exists()
    torn = [r.getMessage() for r in caplog.records if "torn" in r.getMessage()]
    assert torn == [f"{left}: line 4 torn (30 bytes without a line end): that refusal's record is incomplete, "
                    "not written"], torn
    with service.factory() as db:
        assert audit.verify(db).ok


def test_a_copy_of_the_trail_writes_or_lists_the_refusals_servers_hold(service, tmp_path):
    """A copy of the trail did not hold the refusals servers held (the database would not take them):
    a killed server's were in no copy at all, a running server's in none until its next write. Now
    ``tilpheno audit export`` writes what a killed server held first (entries in the copy), and lists
    what a running server still holds after the entries, one row per entry to be, marked held
    (``access_refused_delayed_held``: no ``seq``, ``"held": true``), counted in its ``audit_export``
    entry (``held_refusals``) and said in its output line; nothing is written for them, and once
    that server is gone the next copy holds them as entries, not held rows. The trail verifies."""
    import csv
    import os
    import signal
    import subprocess
    import sys

    from typer.testing import CliRunner

    from tilpheno.cli import app as cli_app
    from tilpheno.review import audit

    url = service.factory.kw["bind"].url.render_as_string(hide_password=False)
    out = str(service.source.out_dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def holding_server() -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-c", CHILD_HOLDS, out, url], stdout=subprocess.PIPE, text=True, env=env)
        assert child.stdout.readline().strip() == "held"
        return child

    def export(name: str) -> tuple[str, list[dict[str, str]]]:
        r = CliRunner().invoke(cli_app, ["audit", "export", out, "-o", str(tmp_path / name), "--db", url])
        assert r.exit_code == 0, r.output
        return r.output, list(csv.DictReader((tmp_path / name).open(encoding="utf-8", newline="")))

    def kill(child: subprocess.Popen) -> None:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)

    close_refusal_windows(service)
    kill(holding_server())
    running = holding_server()
    try:
        said, rows = export("while_held.csv")
        kept = [r for r in rows if r["seq"]]
        held = [r for r in rows if not r["seq"]]
        # the killed server's: written first, entries of the copy; the running server's: listed, held
        assert [(r["action"], json.loads(r["after_json"])["count"]) for r in kept[-2:]] == [
            ("access_refused_delayed", 2), ("access_refused_delayed", 1)]
        assert [(r["action"], r["username"], json.loads(r["after_json"])["count"], json.loads(r["after_json"])["held"],
                 r["entry_sha256"]) for r in held] == [("access_refused_delayed_held", "bob", 2, True, ""),
                                                       ("access_refused_delayed_held", "bob", 1, True, "")], held
        assert "2 row(s) after the entries are refusals servers still hold" in said
        (entry,) = entries_of(service, "audit_export")[-1:]
        assert (entry[4]["last_seq"], entry[4]["held_refusals"]) == (int(kept[-1]["seq"]), 2)
    finally:
        kill(running)
    said, rows = export("after.csv")   # the running server killed since: its refusals written by this copy
    assert all(r["seq"] for r in rows) and "still hold" not in said
    assert [(r["action"], json.loads(r["after_json"])["count"]) for r in rows[-2:]] == [
        ("access_refused_delayed", 2), ("access_refused_delayed", 1)]
    with service.factory() as db:
        assert audit.verify(db).ok


def test_a_database_error_writing_due_refusal_windows_is_logged_and_the_server_still_stops(review_source, tmp_path,
                                                                                          monkeypatch, caplog):
    """As a server started and stopped it wrote the refusal windows whose time was over; an error doing so at
    the start was logged, at the stop it escaped ``serve`` (a stopping server ended with a traceback, though
    nothing is lost: the windows stay in the database). Now both are logged as warnings and ``serve`` returns."""
    import logging

    from review_support import database_url, make_service
    from tilpheno.review import server
    from tilpheno.review.db import ReviewError

    monkeypatch.setattr(server, "import_all", lambda service: None)   # the products are not needed here
    monkeypatch.setattr("waitress.serve", lambda *args, **kwargs: None)   # the server stops at once
    service = make_service(review_source.out_dir, database_url("sqlite", tmp_path), review_source)
    try:
        def broken():
            raise ReviewError("database is locked")
        monkeypatch.setattr(service, "write_repeated_refusals", broken)
        with caplog.at_level(logging.WARNING, logger="tilpheno.review.service"):
            server.serve(service)
        said = [r.getMessage() for r in caplog.records if r.name == "tilpheno.review.service"]
        assert len(said) == 2 and all("not audited yet" in m and "database is locked" in m for m in said), said
    finally:
        service.factory.kw["bind"].dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_refusals_counted_before_a_crash_reach_the_trail_when_the_server_starts_again(kind, review_source, tmp_path,
                                                                                     monkeypatch):
    """The counts of identical refusals lived in the server process's memory until their window
    closed: a crash or ``kill -9`` lost them, and the trail under-stated what was refused (bob
    refused 4 times: one entry, no count). Now the open windows are rows of the database: a server
    restarted while the window is open leaves it open, and one restarted after its time (a day
    later) writes its count with the time it closed (``closed_at``); the trail verifies."""
    from tilpheno.review import audit, server
    from tilpheno.review.models import utc
    from tilpheno.review.refusals import RefusalRule

    monkeypatch.setattr(server, "import_all", lambda service: None)   # the products are not needed here
    monkeypatch.setattr("waitress.serve", lambda *args, **kwargs: None)   # the server stops at once
    error = "role analyst cannot export the audit trail"
    now = [1000.0]
    with two_servers_on_one_database(kind, review_source, tmp_path) as (crashed, restarted):
        crashed.refusals = restarted.refusals = RefusalRule(clock=Clock.shared(lambda: now[0]))
        seqs = [crashed.record_access_refused("bob", "", "GET /audit.csv", error) for _ in range(4)]
        assert seqs[0] is not None and seqs[1:] == [None] * 3
        crashed.factory.kw["bind"].dispose()   # killed: its open window never closed
        now[0] += 60.0
        server.serve(restarted)   # within the window: still open, its count kept in the database
        assert entries_of(restarted, "access_refused_repeated") == []
        now[0] += 86400.0
        server.serve(restarted)
        entries = entries_of(restarted, "access_refused", "access_refused_repeated")
        assert [e[1:4] for e in entries] == [("bob", "access_refused", ""), ("bob", "access_refused_repeated", "")]
        after = entries[1][4]
        assert after.pop("last_at") == utc(1000.0)
        assert after == {"request": "GET /audit.csv", "count": 3, "repeats_entry": seqs[0], "window_s": 300.0,
                         "closed_at": utc(1300.0)}
        assert entries[1][5] == error
        with restarted.factory() as db:
            assert audit.verify(db).ok


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_server_processes_on_one_database_count_into_one_window(kind, review_source, tmp_path):
    """Server processes sharing one database (a lab's PostgreSQL) counted identical refusals apart:
    each wrote the first it saw as ``access_refused`` and counted the rest in its own memory (a
    script spread over two processes: two entries, two counts). Now both count into the window in
    the database: one ``access_refused`` entry, and once the window has closed one
    ``access_refused_repeated`` entry counting the refusals of both, written once although both
    servers close it."""
    from tilpheno.review import audit
    from tilpheno.review.models import utc
    from tilpheno.review.refusals import RefusalRule

    now = [1000.0]
    rule = RefusalRule(clock=Clock.shared(lambda: now[0]))
    error = "product TIL002 is not assigned to you (bob, analyst)"
    with two_servers_on_one_database(kind, review_source, tmp_path) as (one, other):
        one.refusals = other.refusals = rule
        seqs = [svc.record_access_refused("bob", "TIL002", "GET /api/products/TIL002/state", error)
                for svc in (one, other, other, one, other)]
        assert seqs[0] is not None and seqs[1:] == [None] * 4
        assert one.write_repeated_refusals() == other.write_repeated_refusals() == []   # still open
        now[0] += rule.window
        closed = one.write_repeated_refusals() + other.write_repeated_refusals()
        entries = entries_of(one, "access_refused", "access_refused_repeated")
        assert [e[0] for e in entries] == [seqs[0]] + closed and len(closed) == 1
        assert entries[1][1:4] == ("bob", "access_refused_repeated", "TIL002")
        assert {k: entries[1][4][k] for k in ("count", "repeats_entry", "closed_at")} == {
            "count": 4, "repeats_entry": seqs[0], "closed_at": utc(1000.0 + rule.window)}
        with one.factory() as db:
            assert audit.verify(db).ok


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_server_starting_or_stopping_leaves_a_live_peers_window_open(kind, review_source, tmp_path, monkeypatch):
    """A server process starting or stopping closed every open refusal window on the database,
    including those another live server was counting into, and wrote them early saying ``closed:
    server started (left open by a server that stopped without writing it)`` or ``server stopped``:
    untrue of a live peer's window, and the peer's next refusal opened a new window (a second
    ``access_refused`` entry). Now a server starts and stops leaving open windows open: the peer's
    window goes on counting (the restarted server's refusals too) and is written once, after its
    time, with the time it closed."""
    from tilpheno.review import audit, server
    from tilpheno.review.models import utc
    from tilpheno.review.refusals import RefusalRule

    monkeypatch.setattr(server, "import_all", lambda service: None)   # the products are not needed here
    monkeypatch.setattr("waitress.serve", lambda *args, **kwargs: None)   # the server stops at once
    now = [1000.0]
    rule = RefusalRule(clock=Clock.shared(lambda: now[0]))
    error = "role analyst cannot export the audit trail"
    with two_servers_on_one_database(kind, review_source, tmp_path) as (peer, restarted):
        peer.refusals = restarted.refusals = rule
        seqs = [peer.record_access_refused("bob", "", "GET /audit.csv", error) for _ in range(3)]
        now[0] += 100.0
        server.serve(restarted)   # starts and stops while the peer's window is open
        assert entries_of(peer, "access_refused_repeated") == []
        seqs += [svc.record_access_refused("bob", "", "GET /audit.csv", error) for svc in (peer, restarted)]
        assert seqs[0] is not None and seqs[1:] == [None] * 4   # one window still: one written, four counted
        now[0] = 1000.0 + rule.window
        closed = restarted.write_repeated_refusals() + peer.write_repeated_refusals()
        entries = entries_of(peer, "access_refused", "access_refused_repeated")
        assert [e[0] for e in entries] == [seqs[0]] + closed and len(closed) == 1
        after = entries[1][4]
        assert after.pop("last_at") == utc(1100.0)   # the last refusal, after the restart
        assert after == {"request": "GET /audit.csv", "count": 4, "repeats_entry": seqs[0], "window_s": rule.window,
                         "closed_at": utc(1000.0 + rule.window)}
        with peer.factory() as db:
            assert audit.verify(db).ok


def test_a_server_whose_clock_runs_ahead_counts_into_its_peers_window(review_source, tmp_path):
    """The windows' times were each server's wall clock: of two servers on one PostgreSQL database,
    one whose clock ran 10 minutes ahead found its peer's window (opened a minute ago) over, wrote
    its count early and opened a second window (a second ``access_refused`` entry); one running
    behind kept a window open past its time. Now the windows' times are the database's clock: the
    server ahead counts into the peer's window, whose ``opened``, first and last times are
    PostgreSQL's ``clock_timestamp()``, within 5 s of it (this test's steps); the trail verifies.
    The entries' ``at`` were each server's clock too (the one ahead wrote entries 10 minutes after
    its peer's next ones, out of time order along the chain): an entry the server ahead writes is
    within 5 s of the database's clock, and the entries' times follow the chain's order."""
    import time

    from tilpheno.review import audit
    from tilpheno.review.models import AuditEntry, RefusalWindow, utc

    error = "role analyst cannot export the audit trail"
    ahead_clock = audit.Clock(lambda: time.time() + 600.0)   # its machine's clock; the database's is the database's
    with two_servers_on_one_database("postgresql", review_source, tmp_path, ahead_clock) as (peer, ahead):
        seqs = [peer.record_access_refused("bob", "", "GET /audit.csv", error) for _ in range(2)]
        seqs += [ahead.record_access_refused("bob", "", "GET /audit.csv", error) for _ in range(2)]
        assert ahead.write_repeated_refusals() == []
        assert seqs[0] is not None and seqs[1:] == [None] * 3, seqs
        assert entries_of(peer, "access_refused_repeated") == []
        ahead_seq = ahead.record_access_refused("bob", "", "GET /users", "role analyst cannot manage users")
        peer_seq = peer.record_access_refused("carol", "", "GET /users", "role reviewer cannot manage users")
        with peer.factory() as db:
            (window,) = db.scalars(select(RefusalWindow).where(RefusalWindow.request == "GET /audit.csv")).all()
            database_now = float(db.scalar(text("SELECT EXTRACT(EPOCH FROM clock_timestamp())")))
            ats = {e.seq: e.at for e in db.scalars(select(AuditEntry).order_by(AuditEntry.seq))}
            assert audit.verify(db).ok
        assert window.count == 3 and window.repeats_entry == seqs[0]
        assert 0.0 <= database_now - window.opened < 5.0
        assert window.opened_at <= window.last_at <= utc(database_now)
        assert ahead_seq is not None and peer_seq == ahead_seq + 1
        assert utc(database_now - 5.0) <= ats[ahead_seq] <= ats[peer_seq] <= utc(database_now), ats
        assert list(ats.values()) == sorted(ats.values())   # ISO 8601 UTC text sorts as time


def test_a_server_whose_clock_runs_behind_writes_a_window_once_its_time_is_over(review_source, tmp_path, monkeypatch):
    """A server whose clock ran 10 minutes behind its peer's (or jumped back) kept the peer's window
    open 10 minutes past its time: it found the window not over by its own clock, went on counting
    into it and wrote no count. Now the windows' times are the database's: with 2 s windows, a
    window the peer opened and the server behind counted into is written by the server behind once
    2 s have passed by the database's clock (polled, at most 30 s), ``closed_at`` its opened + 2 s, the
    entry's ``at`` within 5 s of the database's clock; its next identical refusal opens a new window
    (a new ``access_refused`` entry). The trail verifies."""
    import time

    from tilpheno.review import audit
    from tilpheno.review.models import AuditEntry, RefusalWindow, utc
    from tilpheno.review.refusals import RefusalRule

    error = "role analyst cannot export the audit trail"
    behind_clock = audit.Clock(lambda: time.time() - 600.0)   # its machine's clock
    with two_servers_on_one_database("postgresql", review_source, tmp_path, behind_clock) as (peer, behind):
        for svc in (peer, behind):
            monkeypatch.setattr(svc, "refusals", RefusalRule(window=2.0, clock=svc.clock))
        rule = behind.refusals
        first = peer.record_access_refused("bob", "", "GET /audit.csv", error)
        assert behind.record_access_refused("bob", "", "GET /audit.csv", error) is None   # counted in the peer's window
        with peer.factory() as db:
            (window,) = db.scalars(select(RefusalWindow)).all()
        deadline = time.time() + 30.0
        while not (written := behind.write_repeated_refusals()) and time.time() < deadline:
            time.sleep(0.2)
        again = behind.record_access_refused("bob", "", "GET /audit.csv", error)
        with peer.factory() as db:
            database_now = float(db.scalar(text("SELECT EXTRACT(EPOCH FROM clock_timestamp())")))
            assert audit.verify(db).ok
        ((seq, user, action, _, after, _),) = entries_of(peer, "access_refused_repeated")
        assert written == [seq] and (user, action) == ("bob", "access_refused_repeated")
        assert after["count"] == 1 and after["repeats_entry"] == first
        assert after["closed_at"] == utc(window.opened + rule.window)
        assert again is not None and again > seq
        with peer.factory() as db:
            at = db.get(AuditEntry, seq).at
        assert utc(database_now - 5.0) <= at <= utc(database_now)


def test_two_servers_refused_at_once_open_one_window(review_source, tmp_path, monkeypatch):
    """Two server processes on one PostgreSQL database refusing the same request at the same moment
    both find no window open (their UPDATEs match no row): the second's new window collides with the
    first's (its key), and the second counts it there (in the same transaction). Each service's thread waits, after
    its first UPDATE, for the other's; 10 refusals each: one ``access_refused`` entry and one
    ``access_refused_repeated`` counting the other 19. (SQLite's write lock, taken by the UPDATE,
    lets one writer at a time.)"""
    import threading

    from tilpheno.review import audit, refusals

    error = "role analyst cannot export the audit trail"
    both_missed, waited = threading.Barrier(2, timeout=60), set()
    real_count = refusals._count

    def count(db, key, at, opened_after=None):   # the request's UPDATE of its open window, if any
        counted = real_count(db, key, at, opened_after)
        if (not counted and threading.current_thread().name.startswith("server")
                and threading.current_thread().name not in waited):   # found none: wait for the other's
            waited.add(threading.current_thread().name)
            both_missed.wait()
        return counted

    monkeypatch.setattr(refusals, "_count", count)
    with two_servers_on_one_database("postgresql", review_source, tmp_path) as services:
        seqs: list[int | None] = []

        def refuse(svc):
            seqs.extend(svc.record_access_refused("bob", "", "GET /audit.csv", error) for _ in range(10))

        threads = [threading.Thread(target=refuse, args=(svc,), name=f"server{i}") for i, svc in enumerate(services)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert waited == {"server0", "server1"}
        assert len(seqs) == 20 and len([seq for seq in seqs if seq is not None]) == 1, seqs
        close_refusal_windows(services[0])
        entries = entries_of(services[0], "access_refused", "access_refused_repeated")
        assert [(e[2], e[4].get("count")) for e in entries] == [("access_refused", None), ("access_refused_repeated", 19)]
        with services[0].factory() as db:
            assert audit.verify(db).ok


def test_a_script_varying_the_path_folds_into_one_window_beyond_the_cap(app, service, monkeypatch):
    """A script varying the path (or the product) opened a new window per request: every refusal
    was written (bob POSTing without a CSRF token to 30 paths: 30 ``access_refused`` entries), so
    the trail could still be flooded. Now a user with ``MAX_OPEN_PER_USER`` windows open has each
    further refused request folded into one window of that user, written once it has closed as one
    ``access_refused_folded`` entry naming how many distinct requests it holds and how often they
    were refused; another user's refusals are written as before, and a written window's repeats are
    counted as before."""
    from tilpheno.review import audit
    from tilpheno.review.models import utc
    from tilpheno.review.refusals import FOLDED_NAMED, MAX_OPEN_PER_USER, RefusalRule

    close_refusal_windows(service)
    now = [1000.0]
    monkeypatch.setattr(service, "refusals", RefusalRule(clock=Clock.shared(lambda: now[0])))
    with service.factory() as db:
        start = audit.head_seq(db)
    c_bob, _, _ = login(app, "bob")
    paths = [f"/api/flood/{i:02d}" for i in range(MAX_OPEN_PER_USER + 10)]
    for path in paths + paths[:1] + paths[-1:] * 3:   # the first (written) once more, the last (folded) thrice more
        assert c_bob.post(path, json={}).status_code == 403
        now[0] += 1.0
    c_alice, _, _ = login(app, "alice")
    assert c_alice.post("/api/flood/00", json={}).status_code == 403   # another user: written
    new = [e for e in entries_of(service, "access_refused", "access_refused_repeated", "access_refused_folded")
           if e[0] > start]
    assert [(e[1], e[4]["request"]) for e in new] == [("bob", f"POST {p}") for p in paths[:MAX_OPEN_PER_USER]] + [
        ("alice", "POST /api/flood/00")]
    now[0] = 1000.0 + MAX_OPEN_PER_USER + service.refusals.window   # the folded window (opened then) has closed
    assert c_bob.get("/").status_code == 200
    new = [e for e in entries_of(service, "access_refused_repeated", "access_refused_folded") if e[0] > start]
    assert [e[1:3] for e in new] == [("bob", "access_refused_repeated"), ("bob", "access_refused_folded")]
    assert new[0][4]["request"] == f"POST {paths[0]}" and new[0][4]["count"] == 1
    assert new[0][4]["closed_at"] == utc(1000.0 + service.refusals.window)
    folded = new[1][4]
    assert {k: folded[k] for k in ("distinct_requests", "count", "max_open", "closed_at")} == {
        "distinct_requests": 10, "count": 13, "max_open": MAX_OPEN_PER_USER,
        "closed_at": utc(1000.0 + MAX_OPEN_PER_USER + service.refusals.window)}
    assert folded["requests"][0] == f"POST {paths[-1]}" and len(folded["requests"]) == FOLDED_NAMED
    assert set(folded["requests"]) == {f"POST {p}" for p in paths[MAX_OPEN_PER_USER:]}
    assert new[1][5].startswith(f"10 distinct requests of bob refused 13 times within 300 s, beyond the "
                                f"{MAX_OPEN_PER_USER} windows")
    close_refusal_windows(service)
    with service.factory() as db:
        assert audit.verify(db).ok


def test_apply_gate_to_other_products_over_http(app, service):
    c, h, _ = login(app, "carol")
    before = service.current_version("TIL002")
    r = c.post(f"/api/products/{PID}/apply", json={"tube": "surface", "population": "CD3+", "products": ["TIL002"],
                                                  "reason": "same CD3 valley across the batch"}, headers=h)
    assert r.status_code == 201 and f"TIL002 v{before + 1}" in r.json["message"]
    r = c.post(f"/api/products/{PID}/apply", json={"tube": "surface", "population": "CD3+", "products": ["TIL002"],
                                                  "reason": "same CD3 valley across the batch"}, headers=h)
    assert r.status_code == 201 and r.json["unchanged"] == ["TIL002"] and r.json["message"] == "unchanged (already this gate): TIL002"
    assert service.current_version("TIL002") == before + 1
    r = c.post(f"/api/products/{PID}/apply", json={"tube": "surface", "population": "CD3+", "products": ["TIL404"],
                                                  "reason": "x" * 5}, headers=h)
    assert r.status_code == 404 and "TIL404" in r.json["error"]
    # the source product alone (a hand-made request: the page leaves it out): refused, not "applied to 0"
    r = c.post(f"/api/products/{PID}/apply", json={"tube": "surface", "population": "CD3+", "products": [PID],
                                                  "reason": "same CD3 valley across the batch"}, headers=h)
    assert r.status_code == 400 and f"only {PID}, whose gate this is" in r.json["error"], r.json
    assert service.current_version("TIL002") == before + 1


VALUES = [None, 1, -1.5, True, "x", [], [1, [2]], {}, {"tubes": []}, {"tubes": {"surface": []}},
          {"tubes": {"surface": {"gates": {"CD3+": {"type": "range", "dim": "CD3", "low": [1]}}}}}]


def test_any_json_value_in_any_field_is_a_4xx_never_a_crash(app, service):
    c, h, _ = login(app, "alice")
    assert c.get(f"/api/products/{PID}/state").status_code == 200   # opened: its first version stored, not counted below
    before = counts(service)
    for value in VALUES:
        for path, fields in (("preview", ("gates",)), ("versions", ("base_version", "gates", "reason")),
                             ("sign", ("version", "meaning", "password", "qc_resolutions", "qc_kind_resolutions", "comment")),
                             ("apply", ("tube", "population", "products", "reason")),
                             ("deviations", ("version", "deviation"))):
            for field in fields:
                r = c.post(f"/api/products/{PID}/{path}", json={field: value}, headers=h)
                assert 400 <= r.status_code < 500 and r.json["error"], (path, field, value, r.status_code)
    assert counts(service)[1:] == before[1:]


def test_candidate_cuts_are_the_runs_and_give_what_the_preview_gives(app, service):
    """Every threshold gate of the stained tubes lists the cuts its placement weighed, the one in use
    first (version 1's cut), each with the % of its parent that the server's preview then computes
    from every event when the draft's cut is moved there."""
    c, h, _ = login(app, "alice")
    state = c.get(f"/api/products/{PID}/state").json
    r = c.get(f"/api/products/{PID}/candidates")
    assert r.status_code == 200, r.text
    tubes = r.json["tubes"]
    assert r.json["version"] == state["current_version"]
    strategies = service.source.strategies
    for tube, entry in state["automatic"]["tubes"].items():
        # every 1-D gate placed from the data: the FMO thresholds and the density (valley) gates
        # (and the singlets wedge, whose doublet valley TIL001 records below the band's edge)
        placed = [p.name for p in strategies[tube].populations
                  if p.method in ("fmo", "valley", "singlets") and p.name in entry["gates"]]
        assert placed and sorted(tubes[tube]) == sorted(placed), (tube, sorted(tubes[tube]))
        for population in placed:
            cuts = tubes[tube][population]
            automatic = entry["gates"][population]
            side = "vertices" if automatic["type"] == "polygon" else "low" if automatic["low"] is not None else "high"
            value = "vertices" if side == "vertices" else "value"
            assert cuts[0]["rule"] == "automatic" and cuts[0][value] == automatic[side]
            values = [cut["cut"] for cut in cuts]
            assert all(abs(a - b) > 5e-4 for i, a in enumerate(values) for b in values[:i])   # no repeats
            current = state["current"]["tubes"][tube]["gates"][population]
            for cut in cuts:
                moved = {**current, side: cut[value]}
                prev = c.post(f"/api/products/{PID}/preview",
                              json={"gates": {"tubes": {tube: {"gates": {population: moved}}}}}, headers=h)
                assert prev.status_code == 200, prev.text
                rows = {row["population"]: row for row in prev.json["populations"][tube]}
                assert cut["pct_of_parent"] == pytest.approx(rows[population]["pct_of_parent"], abs=1e-9), (tube, population, cut)
    # the study's FMO gates weigh more than their own cut (TIL001: the CD3 valley against the FMO percentile)
    assert {cut["rule"] for cut in tubes["surface"]["CD3+"]} >= {"automatic", "fmo_threshold", "relative_threshold"}
    # the live/dead gate (rule lower: the valley, but never more than k SDs above the live peak) offers
    # the valley it weighed: the same rule applied anew to the singlets' events gives both cuts
    from tilpheno.gates.placement import place_valley
    from tilpheno.review.regate import evaluate

    st = service.source.stained(PID)["surface"]
    live = st.strategy.population("live")
    parent = evaluate(st.strategy, st.tube, state["automatic"]["tubes"]["surface"]["gates"])[live.parent]
    zero = float(st.tube.transforms[live.dims[0]].apply([0.0])[0])
    truth = place_valley(st.tube.data[live.dims[0]][parent], live.dims[0], zero=zero, **live.params).diagnostics
    by_rule = {cut["rule"]: cut for cut in tubes["surface"]["live"]}
    assert truth["winner"] == "negative_sd" and by_rule["automatic"]["cut"] == pytest.approx(truth["sd_threshold"], abs=1e-12)
    assert by_rule["valley_threshold"]["cut"] == pytest.approx(truth["valley_threshold"], abs=1e-12)
    assert by_rule["valley_threshold"]["label"] == "density valley" and "density minimum" in by_rule["valley_threshold"]["meaning"]
    # the singlets gate offers the doublet valley of the FSC-H/FSC-A ratio (below its band here): the
    # same rule applied anew to the cells' events gives it, and the wedge with that lower edge
    from tilpheno.gates.placement import place_singlets

    singlets = st.strategy.population("singlets")
    cells = evaluate(st.strategy, st.tube, state["automatic"]["tubes"]["surface"]["gates"])[singlets.parent]
    truth = place_singlets(*(st.tube.data[d][cells] for d in singlets.dims), tuple(singlets.dims), **singlets.params)
    assert truth.diagnostics["doublet_valley"] < truth.diagnostics["ratio_low"]
    valley = next(cut for cut in tubes["surface"]["singlets"] if cut["rule"] == "doublet_valley")
    assert valley["cut"] == pytest.approx(truth.diagnostics["doublet_valley"], abs=1e-12)
    far = truth.gate.vertices[1][0]
    assert valley["vertices"][1] == pytest.approx([far, truth.diagnostics["doublet_valley"] * far], rel=1e-12)
    # each cut also in compensated linear units (the buttons show it): the gate dimension's transform
    # takes it back to the cut (within 1e-6: the logicle is table-interpolated to 1e-6 of the exact
    # function, transforms.py), and a higher cut is a higher linear value
    stained = service.source.stained(PID)
    for tube, by_population in tubes.items():
        for population, cuts in by_population.items():
            if state["automatic"]["tubes"][tube]["gates"][population]["type"] != "range":
                continue   # the singlets wedge: its cut is a ratio, not a coordinate
            transform = stained[tube].tube.transforms[state["automatic"]["tubes"][tube]["gates"][population]["dim"]]
            for cut in cuts:
                assert float(transform.apply([cut["raw"]])[0]) == pytest.approx(cut["cut"], abs=1e-6), (tube, population, cut)
            ordered = sorted(cuts, key=lambda cut: cut["cut"])
            assert [cut["raw"] for cut in ordered] == sorted(cut["raw"] for cut in cuts)
    c_bob, _, _ = login(app, "bob")
    assert c_bob.get("/api/products/TIL002/candidates").status_code == 403
    assert app.test_client().get(f"/api/products/{PID}/candidates").status_code in (302, 401)


def test_threshold_candidates_order_repeats_and_missing_numbers():
    import pandas as pd

    from tilpheno.review.regate import threshold_candidates

    table = pd.DataFrame([
        {"population": "PD1+", "value_transformed": 0.40, "percentile": 99.5, "winner": "fmo_relative",
         "fmo_threshold": 0.35, "relative_threshold": 0.40, "relative_low": 0.39, "relative_high": 0.46,
         "valley_threshold": float("nan"), "relative_lognormal": 0.4604},
        {"population": "CD3+", "value_transformed": 0.42, "percentile": float("nan"), "method": "fallback_valley",
         "winner": "", "fmo_threshold": float("nan"), "relative_threshold": float("nan"), "relative_low": float("nan"),
         "relative_high": float("nan"), "valley_threshold": float("nan"), "relative_lognormal": float("nan")},
    ])
    out = threshold_candidates(table, 99.0)
    assert [c["rule"] for c in out["PD1+"]] == ["automatic", "fmo_threshold", "relative_low", "relative_high"]
    assert [c["cut"] for c in out["PD1+"]] == [0.40, 0.35, 0.39, 0.46]
    assert "fmo_relative" in out["PD1+"][0]["meaning"] and "99.5th" in out["PD1+"][1]["meaning"]
    assert [c["rule"] for c in out["CD3+"]] == ["automatic"] and "fallback_valley" in out["CD3+"][0]["meaning"]


def test_a_one_population_gate_suggests_the_cut_its_flag_was_sized_with():
    """A valley gate that found one population only (flag no_second_peak) suggests, besides its own
    cut, the alternative the flag's size was measured at (midway between the cut and the peak),
    named after the flag; the ±smoothing-scale cuts of flags that did not fire are not offered."""
    import numpy as np
    import pandas as pd

    from tilpheno.gates.checks import check_valley
    from tilpheno.gates.placement import place_valley
    from tilpheno.review.regate import gate_candidates

    x = np.random.default_rng(3).normal(0.3, 0.03, 20000)   # negatives only
    placed = check_valley("live", place_valley(x, "LD", keep="low", zero=0.2), x)
    assert [f.code for f in placed.flags] == ["no_second_peak"]
    d = placed.diagnostics
    flags = [(f.code, "live") for f in placed.flags]
    out = gate_candidates(pd.DataFrame(), {"live": d}, [("live", "cells", placed.gate, placed.method)], flags, 99.5)
    assert [c["rule"] for c in out["live"]] == ["automatic", "no_second_peak:0"]
    assert out["live"][0]["cut"] == placed.gate.high and "single_population_sd" in out["live"][0]["meaning"]
    assert out["live"][1]["cut"] == pytest.approx(0.5 * (d["threshold"] + d["highest_negative_peak"]), abs=1e-12)
    assert "no_second_peak flag" in out["live"][1]["meaning"]
    # one population the unstained control called negative (rule unstained_carry): the flag's size is the carry
    # with the upper-side spread, and the candidate says so (it said 'half the robust SDs', a cut never measured)
    from tilpheno.transforms import Logicle

    t = Logicle()
    rng = np.random.default_rng(50)
    stained, control = t.apply(rng.normal(300, 160, 10000)), t.apply(rng.normal(0, 60, 10000))
    placed = check_valley("FoxP3+", place_valley(stained, "FoxP3", keep="high", zero=float(t.apply(np.zeros(1))[0]),
                                                 unstained=control, transform=t), stained)
    d = placed.diagnostics
    out = gate_candidates(pd.DataFrame(), {"FoxP3+": d}, [("FoxP3+", "CD4+", placed.gate, placed.method)],
                          [(f.code, "FoxP3+") for f in placed.flags], 99.5)
    [other] = [c for c in out["FoxP3+"] if c["rule"] == "no_second_peak:0"]
    assert other["cut"] == d["carried_high"] and "upper-side spread" in other["meaning"], other
    assert out["FoxP3+"][0]["meaning"] == "the cut the run placed (rule: unstained_carry)"


def test_an_undetermined_one_population_gate_offers_the_negative_call():
    """One population 0.54 above the transformed zero and no control: the gate is undetermined, held
    as positive, its flag sized with the negative call's cut as well; the review app offered that cut
    as 'other one-population cut', meaning 'half the robust SDs: midway between the cut and the one
    population's peak', which it is not -> it is the 'negative call', said to be undetermined without
    an FMO or unstained control; the midway cut keeps its label."""
    import numpy as np
    import pandas as pd

    from tilpheno.gates.checks import check_valley
    from tilpheno.gates.placement import place_valley
    from tilpheno.review.regate import gate_candidates

    x = np.random.default_rng(4).normal(0.65, 0.05, 20000)
    placed = check_valley("CD3+", place_valley(x, "CD3", keep="high", zero=0.11), x)
    d = placed.diagnostics
    assert d["undetermined"] and [f.code for f in placed.flags] == ["no_second_peak"]
    out = gate_candidates(pd.DataFrame(), {"CD3+": d}, [("CD3+", "lymph", placed.gate, placed.method)],
                          [("no_second_peak", "CD3+")], 99.5)["CD3+"]
    assert [c["rule"] for c in out] == ["automatic", "no_second_peak:0", "no_second_peak:1"]
    assert out[1]["label"] == "other one-population cut" and "midway" in out[1]["meaning"]
    assert out[2]["cut"] == d["negative_side_cut"] and out[2]["label"] == "negative call"
    assert "called negative" in out[2]["meaning"] and "undetermined without an FMO or unstained control" in out[2]["meaning"]
    assert (x > out[2]["cut"]).mean() < 0.001   # the negative call: none of the one population positive


def test_a_flagged_gate_is_marked_on_its_plot(app, service, monkeypatch):
    """The run's review flags land on the plot of the gate they name (the self-checks open their
    message with "<gate> ("): a warning on PD1+ marks PD1+ only; an info flag is a note on its gate
    (it marks nothing); flags of another file land nowhere."""
    import pandas as pd

    qc = service.source.qc
    rows = [{"product_id": PID, "file": "TIL001_surface_stain.fcs", "code": "uncertain_threshold", "severity": "warning",
             "needs_review": "True", "gate": "PD1+", "message": "PD1+ (PD1 in live_lymph): the cut moved 7.0 points of the parent"},
            {"product_id": PID, "file": "TIL001_surface_stain.fcs", "code": "negative_shift", "severity": "info",
             "needs_review": "False", "gate": "CD3+", "message": "CD3+ (CD3 in live_lymph): stained negatives sit +0.010"},
            {"product_id": PID, "file": "TIL001_surface_FMO_CD4.fcs", "code": "cut_in_dense_region", "severity": "warning",
             "needs_review": "True", "gate": "CD4+", "message": "CD4+ (CD4 in CD3+): the threshold lies inside the negative peak"}]
    monkeypatch.setattr(service.source, "qc", pd.concat([qc, pd.DataFrame(rows)], ignore_index=True))
    c, _, _ = login(app, "alice")
    shown = c.get(f"/api/products/{PID}/state").json["plots"]
    plots = {(p["tube"], p["population"]): p["flags"] for p in shown}
    assert [f["code"] for f in plots[("surface", "PD1+")]] == ["uncertain_threshold"]
    assert not [k for k, flags in plots.items() if flags and k != ("surface", "PD1+")]
    # the info flag (no review) is shown on its gate too, apart, as a note; the other file's on none
    notes = {(p["tube"], p["population"]): p["notes"] for p in shown}
    assert [f["code"] for f in notes[("surface", "CD3+")]] == ["negative_shift"]
    assert not [k for k, found in notes.items() if found and k != ("surface", "CD3+")]
    # the flagged gate's plot comes first; the others keep the gating order
    unflagged = [("surface", p.name) for p in service.source.strategies["surface"].populations]
    assert (shown[0]["tube"], shown[0]["population"]) == ("surface", "PD1+")
    rest = [(p["tube"], p["population"]) for p in shown[1:] if p["tube"] == "surface"]
    assert rest == [k for k in unflagged if k in rest]


def test_a_flag_is_on_the_plot_of_the_gate_qc_csv_names_whatever_its_wording(app, service, monkeypatch):
    """qc.csv's ``gate`` column names the gate a flag is about; the page found a gate's flags by the
    message opening with '<population> (' instead, so a flag worded otherwise ('the PD1 cut moved
    ...', gate PD1+) framed no plot and one whose message merely opened with a population's name
    (a file-level note, gate '') marked that gate. Now the page follows the ``gate`` column."""
    import pandas as pd

    base = {"product_id": PID, "file": "TIL001_surface_stain.fcs", "severity": "warning", "needs_review": "True"}
    rows = [{**base, "code": "uncertain_threshold", "gate": "PD1+", "message": "the PD1 cut moved 7.0 points of the parent"},
            {**base, "code": "cut_in_dense_region", "gate": "", "message": "CD3+ (a note on the file, on no gate)"}]
    monkeypatch.setattr(service.source, "qc", pd.concat([service.source.qc, pd.DataFrame(rows)], ignore_index=True))
    c, _, _ = login(app, "alice")
    shown = c.get(f"/api/products/{PID}/state").json["plots"]
    flagged = {(p["tube"], p["population"]): [f["message"] for f in p["flags"]] for p in shown if p["flags"]}
    assert flagged == {("surface", "PD1+"): [rows[0]["message"]]}


def test_the_product_list_says_which_products_need_review(app, service, monkeypatch):
    """The home page shows each product's gating review status from the run (phenotypes.csv), the
    products that need review marked."""
    phen = service.source.phenotypes.copy()
    assert set(phen["review_status"]) == {"no gating flags"}   # the sample products: nothing flagged
    phen.loc[phen["product_id"] == "TIL002", "review_status"] = "needs review"
    monkeypatch.setattr(service.source, "phenotypes", phen)
    c, _, _ = login(app, "alice")
    rows = {m.group(1): m.group(0) for m in re.finditer(r'<tr><td><a href="/products/(TIL\d+)">.*?</tr>', c.get("/").text, re.S)}
    assert sorted(rows) == ["TIL001", "TIL002"]
    assert '<td class="needs-review">needs review</td>' in rows["TIL002"]
    assert "<td>no gating flags</td>" in rows["TIL001"]


def test_the_product_lists_release_counts_include_the_products_not_evaluable(app, service, monkeypatch):
    """The counts above the product list gave the run's release as 'N pass, N fail' only: a product
    held 'not evaluable' (gating needs review, or no criterion applies) was in neither number ->
    it is counted too, each count phenotypes.csv's release_status, their sum the products listed."""
    phen = service.source.phenotypes.copy()
    phen.loc[phen["product_id"] == "TIL002", "release_status"] = "not evaluable"
    monkeypatch.setattr(service.source, "phenotypes", phen)
    c, _, _ = login(app, "alice")
    page = c.get("/").text
    listed = re.findall(r'<a href="/products/(TIL\d+)">', page)
    counts = " ".join(re.search(r'<p id="run-counts">(.*?)</p>', page, re.S).group(1).split())
    said = re.search(r"the run's release: (\d+) pass, (\d+) fail, (\d+) not evaluable;", counts)
    assert said, counts
    truth = phen.set_index("product_id").loc[listed, "release_status"].value_counts()
    assert [int(x) for x in said.groups()] == [truth.get(s, 0) for s in ("pass", "fail", "not evaluable")]
    assert sum(int(x) for x in said.groups()) == len(listed) == 2


def test_the_product_list_is_paged_with_the_whole_runs_counts_and_search(app, service):
    """The product list shows one page (``size`` products, ``page`` in the URL, first/previous/next/
    last links keeping the page size and the search); the search (a part of the product id) applies
    to the whole run, and the counts above the table are of every product the user may see, not of
    the page; a page beyond the last is a 404 naming the number of pages, a malformed one a 400."""
    c, _, _ = login(app, "alice")

    def listed(url):
        r = c.get(url, headers={"Accept": "text/html"})
        assert r.status_code == 200, r.text[:300]
        counts = re.search(r'<p id="run-counts">(.*?)</p>', r.text, re.S).group(1)
        where = re.search(r'<span class="where">(.*?)</span>', r.text).group(1)
        links = dict((rel, href.replace("&amp;", "&")) for href, rel in re.findall(r'<a href="([^"]+)" rel="(\w+)">', r.text))
        return re.findall(r'<a href="/products/(TIL\d+)">', r.text), " ".join(counts.split()), where, links

    decided = [d.meaning for d in service.decisions(None).values() if d is not None]
    approved, rejected = decided.count("approved for release"), decided.count("rejected")
    whole = f"2 product(s): {approved} approved, {rejected} rejected, {2 - approved - rejected} neither;"
    ids, counts, where, links = listed("/")
    assert ids == ["TIL001", "TIL002"] and where == "1-2 of 2 (page 1 of 1)" and links == {}
    assert counts.startswith(whole)
    ids, counts, where, links = listed("/?size=1")
    assert ids == ["TIL001"] and where == "1-1 of 2 (page 1 of 2)" and counts.startswith(whole)
    assert links == {"next": "/?page=2&size=1", "last": "/?page=2&size=1"}
    ids, counts, where, links = listed(links["next"])
    assert ids == ["TIL002"] and where == "2-2 of 2 (page 2 of 2)" and counts.startswith(whole)
    assert links == {"first": "/?page=1&size=1", "prev": "/?page=1&size=1"}
    ids, counts, where, links = listed("/?size=1&q=l002")   # the whole run searched, not page 1
    assert ids == ["TIL002"] and where == "1-1 of 1 matching &ldquo;l002&rdquo; (page 1 of 1)"
    assert counts.startswith(whole)
    ids, _, where, _ = listed("/?q=nothing")
    assert ids == [] and where == "0 of 0 matching &ldquo;nothing&rdquo; (page 1 of 1)"
    r = c.get("/?page=3&size=1")
    assert r.status_code == 404 and r.json["error"] == "page 3: the list has 2 page(s) of 1 product(s)"
    for bad, problem in (("page=0", "page='0'"), ("page=x", "page='x'"), ("size=501", "size='501'")):
        r = c.get(f"/?{bad}")
        assert r.status_code == 400 and r.json["error"].startswith(f"{problem}: a whole number from 1 to"), r.text
    c_bob, _, _ = login(app, "bob")
    r = c_bob.get("/?size=1")
    assert re.findall(r'<a href="/products/(TIL\d+)">', r.text) == ["TIL001"]
    assert re.search(r'<p id="run-counts">1 product\(s\) assigned to you:', r.text) and 'rel="next"' not in r.text


def test_plot_axes_carry_raw_decades_like_the_reports(app, service):
    """Each plot's ticks are on the transformed scale the events are drawn on and labelled in raw
    units: a logicle marker axis at 0 and ±10^k (label -> raw value -> the strategy's transform
    gives the position), a linear scatter axis at round numbers ("100K" = 100,000); all inside the
    axis range."""
    c, _, _ = login(app, "alice")
    plots = {(p["tube"], p["population"]): p for p in c.get(f"/api/products/{PID}/state").json["plots"]}
    transforms = service.source.stained(PID)["surface"].tube.transforms
    digits = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")

    def raw(label):
        if label == "0":
            return 0.0
        if label.endswith("K"):
            return float(label[:-1]) * 1000
        sign = -1.0 if label.startswith("-") else 1.0
        return sign * 10.0 ** int(label.lstrip("-")[2:].translate(digits))

    cd3 = plots[("surface", "CD3+")]
    labelled = [(pos, label) for pos, label in cd3["ticks"][0] if label]
    assert {"0", "10³", "10⁴"} <= {label for _, label in labelled}
    for pos, label in labelled:
        assert pos == pytest.approx(float(transforms["CD3"].apply([raw(label)])[0]), abs=1e-9)
        assert cd3["ranges"][0][0] <= pos <= cd3["ranges"][0][1]
    scatter = next(p for p in plots.values() if p["dims"] == ["FSC-A", "SSC-A"])
    for axis in (0, 1):
        labels = [label for _, label in scatter["ticks"][axis] if label]
        assert labels and all(label == "0" or label.endswith("K") for label in labels)
        for pos, label in scatter["ticks"][axis]:
            assert pos == pytest.approx(raw(label)) if label else True


def test_plot_ranges_are_the_reports_and_the_whole_gate_is_one_click_away(app, service):
    """Each plot shows the report's fixed range (``report.plots.display_limits``: the scale up to
    the detector's $PnR), widened only to hold the gates' thresholds and the corners that lie
    among the events; a polygon's corners beyond every event (the cells gate's open sides at
    -$PnR, the singlet band's far ends) are in ``whole_ranges`` instead, the page's "whole gate"
    view. Before, every corner widened the plot and squeezed the events into a corner."""
    from tilpheno.report.plots import display_limits

    c, _, _ = login(app, "alice")
    plots = {(p["tube"], p["population"]): p for p in c.get(f"/api/products/{PID}/state").json["plots"]}
    stained = service.source.stained(PID)
    for (tube, population), p in plots.items():
        st = stained[tube]
        for axis, dim in enumerate(p["dims"]):
            lo, hi = display_limits(st.tube.transforms[dim], st.tops[dim])
            shown, whole = p["ranges"][axis], p["whole_ranges"][axis]
            assert shown[0] <= lo + 1e-9 and shown[1] >= hi - 1e-9, (population, dim, shown, (lo, hi))
            assert whole[0] <= shown[0] and whole[1] >= shown[1], (population, dim)
            if p["type"] == "range":
                assert shown == whole and all(shown[0] <= v <= shown[1] for v in (p["automatic"]["low"], p["automatic"]["high"])
                                              if v is not None)
    cells = plots[("surface", "cells")]
    assert cells["type"] == "polygon" and min(v[1] for v in cells["automatic"]["vertices"]) < 0
    assert cells["ranges"][1] == [0.0, stained["surface"].tops["SSC-A"]]                # the report's SSC range
    assert cells["whole_ranges"][1][0] <= min(v[1] for v in cells["automatic"]["vertices"])   # the open side's corner
    page = c.get(f"/products/{PID}").text
    script = c.get("/static/review.js").text
    assert 'class: "zoom"' in script and "whole_ranges" in script and "review.js" in page


def test_an_expired_session_page_leads_to_the_login(app, service):
    """A browser whose session expired gets the 401 page with a link to log in again (back to the
    page it asked for), not a link to the product list, which would be the same 401 again."""
    c, _h, _ = login(app, "carol")
    with service.factory() as db:
        db.execute(text("UPDATE login_sessions SET expires_at = '2000-01-01T00:00:00.000000Z' WHERE user_id = "
                        "(SELECT id FROM users WHERE username = 'carol')"))
        db.commit()
    page = c.get(f"/products/{PID}", headers={"Accept": "text/html"})
    assert page.status_code == 401 and "session invalid or expired" in page.text
    link = re.search(r'<a href="([^"]+)" id="login-link">Log in again</a>', page.text)
    assert link and link.group(1) == f"/login?next=/products/{PID}", page.text
    again = c.get(link.group(1))
    assert again.status_code == 200 and 'id="login-button"' in again.text


def test_a_login_returns_to_the_page_of_the_list_asked_for(app, service):
    """Logging in (first, or again after the session expired) from page 2 of a searched list returns
    to that page, search and page size (the query string), not to the list's first page."""
    from urllib.parse import parse_qs, urlsplit

    asked = "/?page=2&size=1&q=TIL"
    c = app.test_client()
    r = c.get(asked)
    assert r.status_code == 302 and parse_qs(urlsplit(r.headers["Location"]).query)["next"] == [asked]
    form = c.get(r.headers["Location"]).text
    assert re.search(r'name="next" value="([^"]+)"', form).group(1).replace("&amp;", "&") == asked
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    r = c.post("/login", data={"username": "carol", "password": PASSWORDS["carol"], "csrf_token": csrf, "next": asked})
    assert r.status_code == 302 and r.headers["Location"] == asked
    with service.factory() as db:
        db.execute(text("UPDATE login_sessions SET expires_at = '2000-01-01T00:00:00.000000Z' WHERE user_id = "
                        "(SELECT id FROM users WHERE username = 'carol')"))
        db.commit()
    page = c.get(asked, headers={"Accept": "text/html"})
    link = re.search(r'<a href="([^"]+)" id="login-link">', page.text).group(1).replace("&amp;", "&")
    assert page.status_code == 401 and parse_qs(urlsplit(link).query)["next"] == [asked]


def test_a_server_whose_folder_was_processed_again_stops_showing_the_old_run(tmp_path):
    """process --overwrite while the server runs: every page and API call answers 503 naming the
    folder and asking for a restart (nothing shown, recomputed or signed from the run it loaded);
    a server started afterwards serves the new run."""
    import pandas as pd

    from review_support import SAMPLE, database_url, make_service
    from tilpheno.pipeline import process_folder
    from tilpheno.review.server import build_service

    manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
    one = manifest[manifest["product_id"] == PID].assign(file=lambda m: [str(SAMPLE / f) for f in m["file"]])
    one.to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "out"

    def run(**settings):
        assert process_folder(SAMPLE, out, manifest_csv=tmp_path / "manifest.csv", outcomes_path=SAMPLE / "outcomes.csv",
                              allow_unmatched=True, make_reports=False, **settings).ok

    run()
    url = database_url("sqlite", tmp_path)
    service = make_service(out, url)
    app = create_app(service)
    c, h, _ = login(app, "dave")
    state = c.get(f"/api/products/{PID}/state")
    assert state.status_code == 200
    before = counts(service)

    run(overwrite=True, fmo_percentile=99.0)
    for response in (c.get(f"/api/products/{PID}/state"), c.get("/", headers={"Accept": "text/html"}),
                     c.post(f"/api/products/{PID}/sign", headers=h, json={
                         "password": PASSWORDS["dave"], "meaning": "reviewed", "version": state.json["current_version"],
                         "qc_resolutions": {}})):
        assert response.status_code == 503, response.text
        assert f"{out} was processed again" in response.text and "restart the server" in response.text
    assert c.get("/healthz").status_code == 200
    assert counts(service) == before

    fresh = create_app(build_service(out, url))
    c2, _h2, _ = login(fresh, "dave")
    assert c2.get(f"/api/products/{PID}/state").status_code == 200


def moved_away(monkeypatch, source, name: str) -> None:
    """``source`` as if run.json recorded the file named ``name`` at /moved/away/ (its ``inputs``,
    by name, and each product's ``product_files``): a file no longer where the run read it."""
    moved = [{**i, "path": f"/moved/away/{name}"} for i in source._inputs[name]]
    monkeypatch.setattr(source, "_inputs", {**source._inputs, name: moved})
    monkeypatch.setattr(source, "_inputs_by_path", {**source._inputs_by_path, **{i["path"]: i for i in moved}})
    files = {pid: {label: f"/moved/away/{name}" if label == name else path for label, path in by_label.items()}
             for pid, by_label in source.run["product_files"].items()}
    monkeypatch.setattr(source, "run", {**source.run, "product_files": files})


def test_a_moved_input_file_of_one_product_leaves_the_product_list_and_exports_working(app, service, monkeypatch):
    """One FMO file of TIL002 is no longer where the run read it: the product list still shows every
    product (it was a 400 naming that file instead of the list) and the approved-table export still
    runs; only what re-gates TIL002 from its files needs the file back."""
    from tilpheno.review.export import approved_tables

    for pid in ("TIL001", "TIL002"):
        service.ensure_imported(pid)   # as the server does at start
    c, _, _ = login(app, "alice")
    name = next(f.name for f in service.source.product_files("TIL002") if f.role == "fmo")
    moved_away(monkeypatch, service.source, name)
    with pytest.raises(ReviewError, match=f"input file /moved/away/{name} of the run not found"):
        service.source.product_files("TIL002")
    page = c.get("/")
    assert page.status_code == 200, page.text[:300]
    assert re.findall(r'<a href="/products/(TIL\d+)">', page.text) == ["TIL001", "TIL002"]
    phenotypes, _ = approved_tables(service)
    assert list(phenotypes["product_id"]) == ["TIL001", "TIL002"]


def test_a_product_never_opened_with_an_input_gone_leaves_the_export_working(review_out, tmp_path, monkeypatch):
    """The approved export looked every product's approval up product by product, importing (so
    re-gating from its files) each product never opened: one such product with an input file gone
    stopped the export of all. A product never opened has no signature; it is 'not approved'."""
    from review_support import make_service
    from tilpheno.review.export import approved_tables
    from tilpheno.review.regate import ReviewSource

    source = ReviewSource(review_out)   # a source of its own: its record is patched below
    service = make_service(review_out, f"sqlite:///{tmp_path / 'fresh.sqlite'}", source)
    service.ensure_imported("TIL001")
    stain = next(f.name for f in source.product_files("TIL002") if f.role == "stain")
    moved_away(monkeypatch, source, stain)
    phenotypes, _ = approved_tables(service)
    assert list(phenotypes["product_id"]) == ["TIL001", "TIL002"]
    assert list(phenotypes["review_status"]) == ["not approved", "not approved"]
    with service.factory() as db:   # TIL002 was not imported for the export
        assert db.execute(text("SELECT count(*) FROM products WHERE product_id = 'TIL002'")).scalar() == 0


def test_the_product_list_and_page_use_the_studys_noun(service):
    """With `product_label: Lot` the reports said "lots" but the review app's list and product page
    said "Products", "2 product(s)", "Product id contains", "No products.", "Apply a gate to other
    products": every text of them now uses the study's noun (Study.product_noun); the default
    study's pages are unchanged (test_the_product_list_is_paged_...)."""
    import copy
    import html
    from dataclasses import replace

    from tilpheno.review.service import ReviewService

    source = copy.copy(service.source)
    source.study = replace(service.source.study, product_label="Lot")
    lots = create_app(ReviewService(source, service.factory))

    def text(page):   # what a reader sees: no tags (nor their URLs), no product ids
        shown = re.sub(r"<[^>]*>", " ", re.sub(r"<(title|style|script)>.*?</\1>", "", page, flags=re.S))
        return re.sub(r"TIL\d+", "", html.unescape(shown))

    c, _, _ = login(lots, "alice")
    pages = {url: c.get(url, headers={"Accept": "text/html"}) for url in
             ("/", "/?q=none", f"/products/{PID}", "/?page=9", "/products/nowhere")}
    assert [r.status_code for r in pages.values()] == [200, 200, 200, 404, 404]
    for url, r in pages.items():
        assert not re.search(r"\bproducts?\b", text(r.text), re.I), (url, re.findall(r".{40}\bproducts?\b.{40}", text(r.text), re.I))
    home = " ".join(text(pages["/"].text).split())
    assert home.startswith("tilpheno review Alice Tester (alice, reviewer) Log out Lots Output folder:")
    assert "Version 1 of every lot is its automatic gate set. Exports use each lot's approved gates:" in home
    assert "2 lot(s):" in home and "Lot id contains" in home
    assert "No lot id contains" in text(pages["/?q=none"].text) and "all lots" in text(pages["/?q=none"].text)
    page = " ".join(text(pages[f"/products/{PID}"].text).split())
    assert "Lot " in page and "approved lots" in page and "Apply a gate to other lots Gate Lots" in page
    assert 'data-noun="lot"' in pages[f"/products/{PID}"].text
    assert "page 9: the list has 1 page(s) of 50 lot(s)" in pages["/?page=9"].text
    bob, _, _ = login(lots, "bob")   # an analyst, assigned TIL001 only
    r = bob.get("/products/TIL002", headers={"Accept": "text/html"})
    assert r.status_code == 403 and "lot TIL002 is not assigned to you (bob, analyst)" in r.text


def test_a_refused_login_tells_the_audit_trail_why_but_not_the_page(app, service):
    """A login to a disabled account, or to a name with no account, was audited as "wrong user name
    or password", as the page says: an admin reading the trail could not tell a disabled account
    from a mistyped name or password. The page still says the same for all three (it names no
    account); the audit trail now says which."""
    from tilpheno.review import audit
    from tilpheno.review.auth import get_user
    from tilpheno.review.service import transaction

    def disable(db, active=False):
        get_user(db, "dave").active = active
    transaction(service.factory, disable)
    c = app.test_client()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
    with service.factory() as db:
        start = audit.head_seq(db)
    try:
        for name, password in (("dave", PASSWORDS["dave"]), ("nobody", "some-password-1"), ("carol", "wrong password")):
            r = c.post("/login", data={"username": name, "password": password, "csrf_token": csrf}, follow_redirects=True)
            assert r.history[0].status_code == 303 and "wrong user name or password" in r.text
            assert "disabled" not in r.text and "no such account" not in r.text
            # the name typed is kept (escaped) for the next try, the password is not
            assert f'value="{name}"' in r.text and password not in r.text
    finally:
        transaction(service.factory, lambda db: disable(db, True))
        with service.factory() as db:   # carol's wrong password must not count towards later tests' lock-outs
            get_user(db, "carol").failed_logins = 0
            db.commit()
    with service.factory() as db:
        rows = db.execute(text("SELECT username, action, reason FROM audit_entries WHERE seq > :s ORDER BY seq"),
                          {"s": start}).all()
    assert [tuple(r) for r in rows] == [
        ("dave", "login_failed", "wrong user name or password (account disabled)"),
        ("nobody", "login_failed", "wrong user name or password (no such account)"),
        ("carol", "login_failed", "wrong user name or password")]


def test_a_flood_of_refused_logins_from_one_address_is_throttled(service):
    """Each refused login costs an argon2 check, names with no account too, and one account's lock-out
    never trips when a script guesses across names: the server could be kept busy and passwords
    guessed without limit. After LIMIT refused logins from one address within the window, its logins
    are refused at once (429, Retry-After), without a password check or an audit entry, until the
    window has passed; then a right password logs in."""
    from tilpheno.review import audit

    app = create_app(service)   # its own throttle, untouched by the other tests' refused logins
    throttle = app.extensions["tilpheno_login_throttle"]
    now = [1000.0]
    throttle.clock = lambda: now[0]
    c = app.test_client()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
    with service.factory() as db:
        start = audit.head_seq(db)
    for i in range(throttle.limit):
        r = c.post("/login", data={"username": f"nobody{i}", "password": "guess-password-1", "csrf_token": csrf})
        assert r.status_code == 303
        now[0] += 1.0
    r = c.post("/login", data={"username": "dave", "password": PASSWORDS["dave"], "csrf_token": csrf})
    assert r.status_code == 303   # POST/redirect/GET, as any refused login: a reload does not post again
    r = c.get(r.headers["Location"])
    assert r.status_code == 429 and "too many refused logins from this address" in r.text
    assert r.headers["Retry-After"] == str(int(throttle.window - throttle.limit))   # the first failure leaves the window then
    assert 'value="dave"' in r.text   # the name typed is kept
    with service.factory() as db:
        rows = db.execute(text("SELECT action FROM audit_entries WHERE seq > :s"), {"s": start}).scalars().all()
    assert rows == ["login_failed"] * throttle.limit   # the throttled attempt left no entry
    now[0] += throttle.window
    r = c.post("/login", data={"username": "dave", "password": PASSWORDS["dave"], "csrf_token": csrf})
    assert r.status_code == 302, r.text


def test_the_throttle_forgets_old_failures_and_bounds_its_memory(monkeypatch):
    from tilpheno.review import throttle as module

    now = [0.0]
    t = module.LoginThrottle(limit=2, window=10.0, clock=lambda: now[0])
    t.failed("a")
    now[0] = 9.0
    t.failed("a")
    assert t.retry_after("a") == pytest.approx(1.0) and t.retry_after("b") == 0.0
    now[0] = 10.0   # the first failure is 10 s old: one in the window, under the limit
    assert t.retry_after("a") == 0.0
    monkeypatch.setattr(module, "MAX_ADDRESSES", 3)
    for address in "wxyz":
        t.failed(address)
    assert set(t._failures) == {"x", "y", "z"}


def _new_reviewer(service, name):
    from tilpheno.review import audit
    from tilpheno.review.auth import create_user
    from tilpheno.review.service import transaction

    def add(db):
        create_user(db, name, name.capitalize(), "reviewer", name + "-password-1")
        audit.append(db, "test", "user_added", after={"username": name, "role": "reviewer"})
    transaction(service.factory, add)
    PASSWORDS[name] = name + "-password-1"


def test_a_lock_out_typed_at_a_signature_ends_that_session_not_the_owners_others(app, service):
    """The lock-out rule of open sessions. Wrong passwords at the login page lock the account (the
    guesser is stopped) but do not end its owner's open sessions: someone else's guesses must not
    throw the owner out mid-review (they cannot sign until the lock ends). Wrong passwords typed at
    a signature's password re-entry are typed in a logged-in session: when they lock the account,
    the person at that keyboard has failed to show they are its owner, and the session kept saving
    gate versions in the owner's name. That session now ends (audited), its other sessions do not."""
    from tilpheno.review.auth import MAX_FAILURES, get_user
    from tilpheno.review.service import transaction

    _new_reviewer(service, "erin")
    at_desk, h_desk, _ = login(app, "erin")
    elsewhere, _, _ = login(app, "erin")
    # 1. guesses at the login page lock erin; her sessions keep working
    guesser = app.test_client()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', guesser.get("/login").text).group(1)
    for _ in range(MAX_FAILURES):
        guesser.post("/login", data={"username": "erin", "password": "a guess 123", "csrf_token": csrf})
    assert "account erin is now locked" in guesser.get("/login").text
    assert at_desk.get(f"/api/products/{PID}/state").status_code == 200
    version = at_desk.get(f"/api/products/{PID}/state").json["current_version"]
    r = at_desk.post(f"/api/products/{PID}/sign", headers=h_desk,
                     json={"version": version, "meaning": "reviewed", "password": PASSWORDS["erin"]})
    assert r.status_code == 403 and "erin is locked until" in r.json["error"]
    assert at_desk.get(f"/api/products/{PID}/state").status_code == 200   # refused, not logged out

    def unlock(db):
        user = get_user(db, "erin")
        user.locked_until, user.failed_logins = None, 0
    transaction(service.factory, unlock)
    # 2. wrong passwords at a signature lock erin: that session ends, the other one goes on
    token = at_desk.get_cookie(COOKIE).value
    for i in range(MAX_FAILURES):
        r = at_desk.post(f"/api/products/{PID}/sign", headers=h_desk,
                         json={"version": version, "meaning": "reviewed", "password": f"wrong-{i}-password"})
        assert r.status_code == 403
    assert r.json["error"] == ("signature refused: wrong password; account erin is now locked for 15 minutes; "
                               "this session is ended: log in again")
    assert f"{COOKIE}=;" in r.headers["Set-Cookie"]   # the browser forgets the cookie
    assert at_desk.get(f"/api/products/{PID}/state").status_code == 401
    at_desk.set_cookie(COOKIE, token)   # a browser that kept the cookie: the session is gone in the database
    gone = at_desk.get(f"/api/products/{PID}/state")
    assert gone.status_code == 401 and "session invalid or expired" in gone.json["error"]
    assert elsewhere.get(f"/api/products/{PID}/state").status_code == 200
    with service.factory() as db:
        last = db.execute(text("SELECT username, action, reason FROM audit_entries ORDER BY seq DESC LIMIT 2")).all()
    assert [tuple(r) for r in last] == [
        ("erin", "session_ended", "the account was locked by wrong passwords at a signature's password re-entry "
                                  "in this session"),
        ("erin", "signature_refused", f"reviewed of version {version}: wrong password; account erin is now locked "
                                      "for 15 minutes")]
    transaction(service.factory, unlock)


def test_a_rejection_says_why_and_a_refused_signature_says_what_was_refused(app, service):
    """The audit trail's "why" of a QA decision. A rejection could be signed without a word (its
    entry's reason was just "rejected"), and a signature refused for a wrong password was audited
    as "wrong user name or password" without the meaning or the version it was for (other refusals
    name both). Now a rejection needs a comment (400 naming the field, audited, nothing stored), which the
    entry holds as its reason, and a refused signature's entry names the meaning and version."""
    from tilpheno.review.service import transaction

    c, h, _ = login(app, "carol")
    version = c.get(f"/api/products/{PID}/state").json["current_version"]
    before = counts(service)
    r = c.post(f"/api/products/{PID}/sign", headers=h,
               json={"version": version, "meaning": "rejected", "password": PASSWORDS["carol"]})
    assert r.status_code == 400 and r.json["error"] == "comment: say why you reject (at least 3 characters)"
    assert counts(service) == (before[0] + 1, *before[1:])   # no signature; the refusal audited
    r = c.post(f"/api/products/{PID}/sign", headers=h,
               json={"version": version, "meaning": "rejected", "password": "not carol's", "comment": "CD3 cut too high"})
    assert r.status_code == 403
    r = c.post(f"/api/products/{PID}/sign", headers=h, json={"version": version, "meaning": "rejected",
                                                            "password": PASSWORDS["carol"], "comment": "CD3 cut too high"})
    assert r.status_code == 201, r.json
    with service.factory() as db:
        last = db.execute(text("SELECT username, action, product_id, reason, after_json FROM audit_entries "
                               "ORDER BY seq DESC LIMIT 2")).all()
    assert [tuple(e[:4]) for e in last] == [
        ("carol", "sign", PID, "CD3 cut too high"),
        ("carol", "signature_refused", PID, f"rejected of version {version}: wrong user name or password")]
    signed = json.loads(last[0][4])
    assert (signed["meaning"], signed["version"], signed["comment"]) == ("rejected", version, "CD3 cut too high")

    def forget(db):   # carol's wrong password must not count towards later tests' lock-outs
        from tilpheno.review.auth import get_user
        get_user(db, "carol").failed_logins = 0
    transaction(service.factory, forget)


def test_the_report_of_a_run_that_deferred_it_is_drawn_on_demand(app, service, review_out):
    """review_out was processed with --reports none: the product page links the report, which the
    server draws when first asked for (without writing into OUT, so it is not superseded), under a
    policy that runs nothing; an analyst sees only the reports of products assigned to them."""
    from tilpheno.pipeline import report_path
    from tilpheno.review.web import REPORT_CSP

    assert not report_path(review_out, PID).exists()
    run_json = (review_out / "run.json").stat()
    c, _, _ = login(app, "alice")
    assert f'href="/products/{PID}/report.html"' in c.get(f"/products/{PID}").text
    r = c.get(f"/products/{PID}/report.html")
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert f"TIL infusion product {PID}" in r.text and "<script" not in r.text
    assert r.headers["Content-Security-Policy"] == REPORT_CSP and "script-src" not in REPORT_CSP
    assert not report_path(review_out, PID).exists()
    assert (review_out / "run.json").stat().st_mtime_ns == run_json.st_mtime_ns
    assert c.get("/").status_code == 200                                   # not superseded
    analyst, _, _ = login(app, "bob")
    assert analyst.get(f"/products/{PID}/report.html").status_code == 200
    assert analyst.get("/products/TIL002/report.html").status_code == 403


def test_a_product_first_opened_before_the_background_import_is_imported_by_whoever_opened_it(review_out, review_source,
                                                                                               tmp_path):
    """The server imports every product in the background (audited as ``system``, which did it);
    a product a reviewer opens before that (the page's state request), or a batch apply reaches
    first, is imported on that user's behalf: its ``import_product`` entry names them, not
    ``system``."""
    from review_support import make_service
    from tilpheno.review.server import import_all

    service = make_service(review_out, f"sqlite:///{tmp_path / 'fresh.sqlite'}", review_source)
    c, h, _ = login(create_app(service), "alice")
    assert c.get(f"/api/products/{PID}/state").status_code == 200
    gate = c.get(f"/api/products/{PID}/state").json["current"]["tubes"]["surface"]["gates"]["CD3+"]
    r = c.post(f"/api/products/{PID}/apply", headers=h, json={"tube": "surface", "population": "CD3+",
                                                              "products": ["TIL002"], "reason": "same CD3 valley"})
    assert r.status_code == 201, r.text
    assert gate == json.loads(service.version("TIL002").gates_json)["tubes"]["surface"]["gates"]["CD3+"]
    import_all(service)   # the background import finds both imported: it adds nothing
    with service.factory() as db:
        rows = db.execute(text("SELECT product_id, username FROM audit_entries WHERE action = 'import_product' "
                               "ORDER BY seq")).all()
    assert [tuple(r) for r in rows] == [(PID, "alice"), ("TIL002", "alice")]


def test_log_out_works_from_an_error_page(app, service):
    """An error page (a product id mistyped: 404) has the header's "Log out" button like every page;
    it posted no CSRF token, so logging out there was refused (403) and the session stayed live."""
    c, _, _ = login(app, "alice")
    page = c.get("/products/NO-SUCH-PRODUCT", headers={"Accept": "text/html"})
    assert page.status_code == 404 and 'id="error-message"' in page.text
    csrf = re.search(r'name="csrf_token" value="([^"]*)"', page.text).group(1)
    r = c.post("/logout", data={"csrf_token": csrf})
    assert r.status_code == 302, r.text
    assert c.get("/", headers={"Accept": "text/html"}).status_code in (302, 401)   # logged out


def test_applying_a_gate_to_an_approved_product_names_the_approval_it_voids_first(app, service):
    """Applying a gate to other products saves a new version of each, voiding a standing approval
    for release without a word. Now the request is refused (409, nothing applied) naming each
    approval it would void (product, version, who, when); repeated with those products
    acknowledged (the page asks the reviewer), it applies and the approval is void."""
    from tilpheno.review.models import User

    with service.factory() as db:
        dave = db.query(User).filter(User.username == "dave").one()
    target = "TIL002"
    v = service.current_version(target)
    approval = service.sign(target, dave.id, PASSWORDS["dave"], "approved for release", v,
                            approval_resolutions(service, target), oos_justification=OOS_REASON)
    c, h, _ = login(app, "alice")
    gate = c.get(f"/api/products/{PID}/state").json["current"]["tubes"]["surface"]["gates"]["CD3+"]
    gate["low"] += 0.013
    r = c.post(f"/api/products/{PID}/versions", headers=h, json={
        "base_version": service.current_version(PID), "gates": {"tubes": {"surface": {"gates": {"CD3+": gate}}}},
        "reason": "CD3 valley for the batch"})
    assert r.status_code == 201, r.text
    body = {"tube": "surface", "population": "CD3+", "products": [target], "reason": "same CD3 valley across the batch"}
    before = counts(service)
    r = c.post(f"/api/products/{PID}/apply", json=body, headers=h)
    when = approval.signed_at[:19].replace("T", " ")
    assert r.status_code == 409 and r.json["approved"] == [target]
    assert (f"applying voids the approval for release of {target} version {v} by Dave Tester (dave) at {when} UTC"
            in r.json["error"]), r.json
    assert counts(service) == before and service.decision(target) == ("approved for release", v)
    assert r.json["approvals"] == [approval.id]
    for wrong in ([target], [approval.id + 1000], [[approval.id]], [True], approval.id):   # not its id in a list: refused
        assert c.post(f"/api/products/{PID}/apply", json={**body, "void_approvals": wrong}, headers=h).status_code == 409
    r = c.post(f"/api/products/{PID}/apply", json={**body, "void_approvals": [approval.id]}, headers=h)
    assert r.status_code == 201 and f"{target} v{v + 1}" in r.json["message"]
    assert service.decision(target) is None


def test_a_save_over_an_approval_signed_since_the_page_loaded_is_refused_unless_acknowledged(app, service):
    """alice loads TIL001 and edits; dave approves the version she loaded meanwhile. Her save used
    to void that approval without anyone being asked (the page asked only from the state it had
    loaded: no approval then). Now the server refuses (409, nothing stored) naming the approval and
    its id; an acknowledgement of another approval is refused too; repeated with that approval's id
    (the page asks alice), it saves, and the save_gates entry records the voided approval."""
    from tilpheno.review.models import AuditEntry, User

    c, h, _ = login(app, "alice")
    r = c.post(f"/api/products/{PID}/versions", headers=h, json=cd3_body(c, 0.011)[1])   # a version no one signed
    assert r.status_code == 201, r.text
    state, body = cd3_body(c, 0.004)   # alice's page: version v, not approved
    v = state["current_version"]
    assert state["approved_version"] is None
    with service.factory() as db:
        dave = db.query(User).filter(User.username == "dave").one()
    approval = service.sign(PID, dave.id, PASSWORDS["dave"], "approved for release", v, approval_resolutions(service, PID),
                            oos_justification=OOS_REASON)
    before = counts(service)
    r = c.post(f"/api/products/{PID}/versions", headers=h, json=body)   # what the page saw: no approval
    when = approval.signed_at[:19].replace("T", " ")
    assert r.status_code == 409, r.text
    assert r.json["approval"] == approval.id and r.json["approved"] == [PID]
    assert r.json["error"] == (f"saving voids the approval for release of {PID} version {v} by Dave Tester (dave) at "
                               f"{when} UTC: confirm to save anyway (nothing was saved)")
    for wrong in (approval.id + 1000, True, str(approval.id)):   # another approval, or not its id: still refused
        assert c.post(f"/api/products/{PID}/versions", headers=h, json={**body, "void_approval": wrong}).status_code == 409
    assert counts(service) == before and service.decision(PID) == ("approved for release", v)
    r = c.post(f"/api/products/{PID}/versions", headers=h, json={**body, "void_approval": approval.id})
    assert r.status_code == 201 and r.json["version"] == v + 1
    assert service.decision(PID) is None
    with service.factory() as db:
        entry = db.query(AuditEntry).filter(AuditEntry.action == "save_gates").order_by(AuditEntry.seq.desc()).first()
    voided = json.loads(entry.before_json)["voids_approval"]
    assert (voided["signature_id"], voided["signature_sha256"], voided["username"]) == (
        approval.id, approval.signature_sha256, "dave")


def test_the_state_of_a_product_is_one_reading_even_while_someone_saves(app, service):
    """Carol saves TIL001 just as alice's page reads its state (before its versions are listed): the
    state used to read the current version, the signatures and the versions in separate sessions,
    so it listed carol's new version beside a current version one lower. Now one reading: the
    versions end at the current version, and the signatures are judged against it."""
    from sqlalchemy import event

    from tilpheno.review.models import User

    c, _, _ = login(app, "alice")
    with service.factory() as db:
        carol = db.query(User).filter(User.username == "carol").one()
    engine, done = service.factory.kw["bind"], []

    def carol_saves(conn, cursor, statement, *args):
        if not done and "ORDER BY gate_set_versions.version" in statement and "DESC" not in statement:   # the list
            done.append(True)
            gate = json.loads(service.version(PID).gates_json)["tubes"]["surface"]["gates"]["CD3+"]
            service.save_version(PID, carol, service.current_version(PID),
                                 {"tubes": {"surface": {"gates": {"CD3+": {**gate, "low": gate["low"] + 0.003}}}}},
                                 "carol trims CD3", void_approval=standing_approval_id(service, PID))

    before = service.current_version(PID)
    event.listen(engine, "before_cursor_execute", carol_saves)
    try:
        state = c.get(f"/api/products/{PID}/state").json
    finally:
        event.remove(engine, "before_cursor_execute", carol_saves)
    assert done and service.current_version(PID) == before + 1
    assert state["current_version"] == before and [v["version"] for v in state["versions"]][-1] == before, state["versions"]
    assert c.get(f"/api/products/{PID}/state").json["current_version"] == before + 1


def test_log_out_after_the_session_expired_goes_to_the_login(app, service):
    """A page left open past the session's 8 hours: its "Log out" button answered a raw JSON error
    ({"error": "session invalid or expired: ..."}, 401) as the page, and kept the dead cookie. Now it
    goes to the login page and forgets the cookie."""
    from sqlalchemy import update

    from tilpheno.review.models import LoginSession, User

    c, h, _ = login(app, "carol")
    with service.factory() as db:
        carol = db.query(User).filter(User.username == "carol").one()
        db.execute(update(LoginSession).where(LoginSession.user_id == carol.id)
                   .values(expires_at="2000-01-01T00:00:00.000000Z"))
        db.commit()
    r = c.post("/logout", data={"csrf_token": h["X-CSRF-Token"]}, headers={"Accept": "text/html"})
    assert r.status_code == 302 and r.headers["Location"].endswith("/login"), (r.status_code, r.text)
    assert c.get_cookie(COOKIE) is None
    assert c.get("/login").status_code == 200


def test_a_batch_acknowledges_the_approvals_it_was_shown_not_whatever_stands_later(app, service):
    """Alice's batch apply to TIL002 names Dave's approval (409); while she reads the question Gwen
    approves TIL002 too. Her "OK" acknowledged the product (void_approvals: ["TIL002"]) and so
    voided Gwen's approval unseen. Now it names the approvals by signature id: the repeated
    request is refused naming Gwen's approval, and applies once that one is acknowledged."""
    from tilpheno.review.models import User

    target = "TIL002"
    _new_reviewer(service, "gwen")
    with service.factory() as db:
        dave, gwen = (db.query(User).filter(User.username == n).one() for n in ("dave", "gwen"))
    v = service.current_version(target)
    service.sign(target, dave.id, PASSWORDS["dave"], "approved for release", v, approval_resolutions(service, target),
                 oos_justification=OOS_REASON)
    c, h, _ = login(app, "alice")
    body = {"tube": "surface", "population": "CD3+", "products": [target], "reason": "same CD3 valley across the batch"}
    gate = c.get(f"/api/products/{PID}/state").json["current"]["tubes"]["surface"]["gates"]["CD3+"]
    gate["low"] += 0.007
    assert c.post(f"/api/products/{PID}/versions", headers=h, json={
        "base_version": service.current_version(PID), "gates": {"tubes": {"surface": {"gates": {"CD3+": gate}}}},
        "reason": "CD3 valley for the batch", "void_approval": standing_approval_id(service, PID)}).status_code == 201
    asked = c.post(f"/api/products/{PID}/apply", json=body, headers=h)
    assert asked.status_code == 409
    later = service.sign(target, gwen.id, "gwen-password-1", "approved for release", v, approval_resolutions(service, target),
                         oos_justification=OOS_REASON)
    r = c.post(f"/api/products/{PID}/apply", json={**body, "void_approvals": asked.json["approvals"]}, headers=h)
    assert r.status_code == 409 and r.json["approvals"] == [later.id] and "Gwen (gwen)" in r.json["error"], r.json
    assert service.current_version(target) == v
    r = c.post(f"/api/products/{PID}/apply", json={**body, "void_approvals": r.json["approvals"]}, headers=h)
    assert r.status_code == 201 and service.current_version(target) == v + 1 and service.decision(target) is None


def test_two_stained_files_of_one_name_open_with_each_files_own_flags(tmp_path):
    """TIL001's surface stain in sub1/ and TIL002's under the same name in sub2/: populations.csv and
    qc.csv name them sub1/..., sub2/... (file_labels); the app looked both up by their bare name ->
    'not listed in run.json inputs' (the product could not be opened), and a gate's flags were
    matched by the bare name (none shown). Now the product opens on sub1's file (its SHA-256),
    each gate shows the flags of sub1's file only (and the approved export names it so)."""
    import hashlib
    import shutil

    import pandas as pd

    from review_support import SAMPLE, database_url, make_service
    from tilpheno.pipeline import process_folder

    folder = tmp_path / "in"
    for sub in ("sub1", "sub2"):
        (folder / sub).mkdir(parents=True)
    stain = f"{PID}_surface_stain.fcs"
    for f in SAMPLE.glob(f"{PID}_*.fcs"):
        shutil.copy(f, folder / ("sub1" if f.name == stain else "") / f.name)
    shutil.copy(SAMPLE / "TIL002_surface_stain.fcs", folder / "sub2" / stain)
    out = tmp_path / "out"
    assert process_folder(folder, out, make_reports=False).ok
    qc = pd.read_csv(out / "qc.csv", dtype=str, keep_default_na=False)
    flag = {"product_id": PID, "code": "uncertain_threshold", "severity": "warning", "needs_review": "True"}
    qc = pd.concat([qc, pd.DataFrame([
        {**flag, "file": f"sub1/{stain}", "gate": "PD1+", "message": "PD1+ (PD1 in live_lymph): the cut moved 7.0 points"},
        {**flag, "file": f"sub2/{stain}", "gate": "CD4+", "message": "CD4+ (CD4 in CD3+): the cut moved 9.0 points"}])])
    qc.to_csv(out / "qc.csv", index=False)

    service = make_service(out, database_url("sqlite", tmp_path))
    c, _, _ = login(create_app(service), "alice")
    state = c.get(f"/api/products/{PID}/state")
    assert state.status_code == 200, state.text
    auto = service.source.automatic(PID)["tubes"]["surface"]
    assert auto["file"] == f"sub1/{stain}"
    assert auto["sha256"] == hashlib.sha256((SAMPLE / stain).read_bytes()).hexdigest()
    assert service.source.stained(PID)["surface"].name == f"sub1/{stain}"   # the export's file column
    flagged = {(p["tube"], p["population"]): [f["message"] for f in p["flags"]] for p in state.json["plots"] if p["flags"]}
    assert flagged == {("surface", "PD1+"): ["PD1+ (PD1 in live_lymph): the cut moved 7.0 points"]}


def test_a_gate_the_run_could_not_place_has_a_plot_of_its_parents_events(service, monkeypatch):
    """A gate_failed flag (CD4+: the run placed no gate, the automatic gate set has none) was shown
    on no plot: the page drew plots of the gates it has only, so the reviewer saw the flag in the QC
    list and nothing to look at. Now the failed gate has a plot of type 'none': every CD3+ event
    (its parent, as many as the populations table counts, up to the plot's subsample) on CD4, the
    flag in full, no gate; it comes first with the other flagged plots."""
    import pandas as pd

    from tilpheno.review.regate import counts_table, evaluate
    from tilpheno.review.web import PLOT_POINTS, _plots

    message = "CD4+ (CD4): the CD4 FMO has no events in CD3+; no threshold"
    flag = {"product_id": PID, "file": "TIL001_surface_stain.fcs", "code": "gate_failed", "severity": "error",
            "needs_review": "True", "gate": "CD4+", "message": message}
    monkeypatch.setattr(service.source, "qc", pd.concat([service.source.qc, pd.DataFrame([flag])], ignore_index=True))
    failed = service.source.automatic(PID)
    del failed["tubes"]["surface"]["gates"]["CD4+"]
    plots = _plots(service, PID, failed, failed)
    (plot,) = [p for p in plots if (p["tube"], p["population"]) == ("surface", "CD4+")]
    assert plots[0] is plot
    assert plot["type"] == "none" and plot["automatic"] is None and plot["dims"] == ["CD4"] and plot["parent"] == "CD3+"
    assert [f["message"] for f in plot["flags"]] == [message]
    st = service.source.stained(PID)["surface"]
    masks = evaluate(st.strategy, st.tube, failed["tubes"]["surface"]["gates"])
    n_parent = {r["population"]: r["count"] for r in counts_table(st.strategy, st.tube, masks)}["CD3+"]
    stride = -(-n_parent // PLOT_POINTS) if n_parent > PLOT_POINTS else 1
    assert n_parent > 1000 and len(plot["events"][0]) == -(-n_parent // stride)
    assert not [p for p in plots if p["population"] == "CD4+CD8+"]   # a boolean population has no gate to fail


def test_flags_on_an_fmo_files_gates_are_shown_on_the_threshold_they_set(service, monkeypatch):
    """A flag raised on the CD4 FMO file's own live gate (its events are the control the CD4+ cut is
    the percentile of) was shown on no plot: the page matched flags to the stained file's gates
    only. Now it is on the stained tube's CD4+ plot, with its file (the page names it), and on no
    other; an info flag on the PD1 FMO's singlets gate is a note on each gate whose cut that FMO
    sets (PD1+, CD8+PD1+, CD4+PD1+); a flag on an FMO gate below the threshold's parent is not."""
    import pandas as pd

    from tilpheno.review.web import _plots

    base = {"product_id": PID, "needs_review": "True"}
    cd4 = {**base, "file": "TIL001_surface_FMO_CD4.fcs", "code": "no_second_peak", "severity": "warning", "gate": "live",
           "message": "live (7AAD): no positive density peak; all peaks taken as negative"}
    pd1 = {**base, "file": "TIL001_surface_FMO_PD1.fcs", "code": "cut_in_dense_region", "severity": "info",
           "needs_review": "False", "gate": "singlets", "message": "singlets (FSC-A/FSC-H): the edge lies where events are dense"}
    below = {**base, "file": "TIL001_surface_FMO_CD8.fcs", "code": "few_events", "severity": "warning",
             "gate": "CD8+", "message": "CD8+ (CD8): 12 events"}
    monkeypatch.setattr(service.source, "qc", pd.concat([service.source.qc, pd.DataFrame([cd4, pd1, below])],
                                                        ignore_index=True))
    gates = service.source.automatic(PID)
    plots = {(p["tube"], p["population"]): p for p in _plots(service, PID, gates, gates)}
    flagged = {k: [(f["file"], f["message"]) for f in p["flags"]] for k, p in plots.items() if p["flags"]}
    assert flagged == {("surface", "CD4+"): [(cd4["file"], cd4["message"])]}
    noted = {k for k, p in plots.items() if any(f["file"] == pd1["file"] for f in p["notes"])}
    assert noted == {("surface", "PD1+"), ("surface", "CD8+PD1+"), ("surface", "CD4+PD1+")}
    assert plots[("surface", "CD4+")]["file"] == "TIL001_surface_stain.fcs"


def stained_control_run(processed_once):
    """``PID`` processed (tables only) with its unstained control a copy of its stained surface tube
    (:func:`review_support.processed_with_stained_control`), once per module (:func:`processed_once`):
    ``(the output folder, the inputs folder, the manifest)``, which the test may change."""
    import pandas as pd

    from review_support import processed_with_stained_control

    work = processed_once("stained_control", lambda folder: processed_with_stained_control(folder, PID))
    return work / "out", work / "in", pd.read_csv(work / "manifest.csv", dtype=str, keep_default_na=False)


def test_unstained_positive_names_the_stained_file_whose_gate_it_is_in_a_field(processed_once):
    """``unstained_positive`` is raised on the unstained control about a stained file's gate; the
    review page and the report found that file by the text "the stained tube <file>" in its message.
    Now qc.csv's ``gate_file`` names it (the control here: a copy of the surface stained tube, so
    each tube kind's positive gates let its events through), the app finds the flag on that file's
    gate by the field and on no other file's, and a qc.csv from before the column is read as those
    versions attached the flag (the message's stained file). Each flagged gate is offered the
    lowest cut that clears the flag among its candidates (none was): on the stained tube the
    control copies, at most 1 % of the events the flag counts lie above it, more than 1 % at or above."""
    from types import SimpleNamespace

    import pandas as pd

    import numpy as np

    from tilpheno.qc import flags_naming_gate
    from tilpheno.review.regate import ReviewSource, evaluate

    out, _, manifest = stained_control_run(processed_once)
    stained = dict(zip(manifest.loc[manifest["role"] == "stain", "tube"], manifest.loc[manifest["role"] == "stain", "file"]))
    control = manifest.loc[manifest["role"] == "unstained", "file"].iloc[0]
    source = ReviewSource(out)
    raised = source.qc[source.qc["code"] == "unstained_positive"]
    assert set(raised["file"]) == {control}
    assert set(raised["gate_file"]) == set(stained.values())   # both tube kinds' gates let the copy through
    for gate_file, gates in raised.groupby("gate_file")["gate"]:
        tube = next(t for t, f in stained.items() if f == gate_file)
        assert set(gates) <= {p.name for p in source.strategies[tube].populations}
    flags = [SimpleNamespace(**f) for f in source.qc_flags(PID)]
    for gate in set(raised["gate"]):
        for file in (*stained.values(), control):
            found = [f.message for f in flags_naming_gate(flags, gate, file) if f.code == "unstained_positive"]
            assert found == raised.loc[(raised["gate"] == gate) & (raised["gate_file"] == file), "message"].tolist()
    candidates, automatic = source.candidates(PID), source.automatic(PID)["tubes"]
    for flag in raised.itertuples():
        tube = next(t for t, f in stained.items() if f == flag.gate_file)
        [offered] = [c for c in candidates[tube][flag.gate] if c["rule"] == "unstained_cut"]
        if flag.gate_file != "TIL001_surface_stain.fcs":
            continue   # the control is a copy of this file: its events are the control's
        st = source.stained(PID)[tube]
        base, n = re.search(r"of the unstained control's (.+) events \((\d+)\)", flag.message).groups()
        inside = evaluate(st.strategy, st.tube, automatic[tube]["gates"])[base] if base != "root" else \
            np.ones(st.tube.n_events, dtype=bool)
        values = st.tube.data[automatic[tube]["gates"][flag.gate]["dim"]][inside]
        assert values.size == int(n)
        assert np.count_nonzero(values > offered["cut"]) <= 0.01 * values.size < np.count_nonzero(values >= offered["cut"])
    written = pd.read_csv(out / "qc.csv", dtype=str, keep_default_na=False)
    written.drop(columns=["gate_file"]).to_csv(out / "qc.csv", index=False)   # as before the column
    assert ReviewSource(out).qc["gate_file"].tolist() == written["gate_file"].tolist()


def test_a_qc_csv_from_before_the_gate_column_is_read_as_those_versions_attached_flags(review_out, tmp_path):
    """An output folder written before qc.csv had its ``gate`` column (reviews may be under way on it)
    is not refused: each flag's gate is read from the message's opening '<population> (' as the app
    did then, the longest population name first ('CD56+ (bright) (CD56): ...' is CD56+ (bright)'s, not
    CD56+'s); the gates agree with the column ``process`` writes now."""
    import shutil

    import pandas as pd

    from tilpheno.review.regate import ReviewSource, gates_named_by_messages

    old = tmp_path / "old"
    shutil.copytree(review_out, old)
    qc = pd.read_csv(old / "qc.csv", dtype=str, keep_default_na=False)
    base = {"product_id": PID, "file": "TIL001_surface_stain.fcs", "severity": "warning", "needs_review": "True"}
    gated = [{**base, "code": "cut_in_dense_region", "gate": "CD4+", "message": "CD4+ (CD4): the cut is in a dense region"},
             {**base, "code": "no_second_peak", "gate": "", "message": "the file has one peak on CD3"}]
    qc = pd.concat([qc, pd.DataFrame(gated)], ignore_index=True)
    qc.drop(columns=["gate"]).to_csv(old / "qc.csv", index=False)   # as written before the column
    source = ReviewSource(old)
    assert source.qc["gate"].tolist() == qc["gate"].tolist()
    assert [f for f in source.qc_flags(PID) if f["gate"]] == [{**{k: gated[0][k] for k in ("file", "gate", "code",
                                                                                          "severity", "message")},
                                                                  "gate_file": ""}]

    flags = pd.DataFrame({"product_id": ["P", "P", "P"], "message": [
        "CD56+ (bright) (CD56): no FMO", "CD56+ (CD56): dense cut", "the PD1 cut moved"]})
    pops = pd.DataFrame({"product_id": ["P", "P"], "population": ["CD56+", "CD56+ (bright)"]})
    assert gates_named_by_messages(flags, pops).tolist() == ["CD56+ (bright)", "CD56+", ""]


def test_a_page_left_open_after_log_out_elsewhere_says_so(app, service):
    """Alice logs out in one tab, and the login page that follows gives the browser a session of no
    one. Her product page still open in another tab answered every change with 'CSRF token missing
    or wrong' (403) and its 'Log out' button with that error page. Now a change says she is not
    logged in (401, nothing stored) and 'Log out' goes to the login page."""
    c, h, _ = login(app, "alice")
    state, body = cd3_body(c, 0.05)
    assert c.post("/logout", data={"csrf_token": h["X-CSRF-Token"]}).status_code == 302
    assert c.get("/login").status_code == 200        # the other tab's login page: a session of no one
    before = counts(service)
    r = c.post(f"/api/products/{PID}/versions", json=body, headers=h)
    assert r.status_code == 401 and r.json["error"].startswith("not logged in"), (r.status_code, r.text)
    assert c.post(f"/api/products/{PID}/preview", json={"gates": body["gates"]}, headers=h).status_code == 401
    assert counts(service) == before
    r = c.post("/logout", data={"csrf_token": h["X-CSRF-Token"]}, headers={"Accept": "text/html"})
    assert r.status_code == 302 and r.headers["Location"].endswith("/login"), (r.status_code, r.text)
    # a login from that page still needs its own CSRF token
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
    assert c.post("/login", data={"username": "alice", "password": PASSWORDS["alice"], "csrf_token": "x"}).status_code == 403
    assert c.post("/login", data={"username": "alice", "password": PASSWORDS["alice"], "csrf_token": csrf}).status_code == 302


def test_a_login_page_left_open_past_its_session_logs_in_after_one_notice(app, service):
    """The login page's session of no one lasts 8 hours like any other. A login page left open
    overnight answered the morning's login with the raw JSON {"error": "session invalid or expired:
    log in again"} as the page. Now it goes back to the login page, which says the form had expired
    and keeps the name typed, and the next login (its new CSRF token) goes in."""
    from sqlalchemy import update

    from tilpheno.review.models import LoginSession

    c = app.test_client()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
    with service.factory() as db:   # the night is over: the login page's session has ended
        db.execute(update(LoginSession).where(LoginSession.csrf_token == csrf)
                   .values(expires_at="2000-01-01T00:00:00.000000Z"))
        db.commit()
    before = counts(service)
    r = c.post("/login", data={"username": "alice", "password": PASSWORDS["alice"], "csrf_token": csrf, "next": "/"},
               headers={"Accept": "text/html"})
    assert r.status_code == 303 and "/login" in r.headers["Location"], (r.status_code, r.text)
    page = c.get(r.headers["Location"])
    assert page.status_code == 200 and "login page had expired" in page.text and 'value="alice"' in page.text
    assert counts(service) == before                  # no password checked, nothing audited
    fresh = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert fresh != csrf
    r = c.post("/login", data={"username": "alice", "password": PASSWORDS["alice"], "csrf_token": fresh, "next": "/"})
    assert r.status_code == 302 and c.get("/").status_code == 200


def test_an_analyst_with_no_product_is_told_how_one_is_assigned(fresh_service):
    """A new lab's first login as an analyst: '0 product(s) assigned to you ... No products', and
    'Analysts see the products assigned to them' with no word of how -> the page names the command
    an admin runs (with this output folder and this account); an analyst with products is not told."""
    from tilpheno.review.models import ProductAssignment

    app = create_app(fresh_service)
    command = f"tilpheno users assign {fresh_service.source.out_dir} bob PRODUCT ..."
    c, _, _ = login(app, "bob")
    assert command not in " ".join(c.get("/").text.split())   # bob has TIL001
    with fresh_service.factory() as db:
        db.query(ProductAssignment).filter_by(username="bob").delete()
        db.commit()
    c, _, _ = login(app, "bob")
    home = " ".join(c.get("/").text.split())
    assert "0 product(s) assigned to you" in home and command in home


def test_an_unstained_control_changed_since_the_run_gives_no_candidate_and_says_why(tmp_path, caplog, processed_once):
    """The re-run that offers each ``unstained_positive`` gate its ``unstained_cut`` read the control
    without checking it against run.json's SHA-256 (the stained files are checked): a control
    replaced since the run gave a candidate computed from the new file, silently. It is now left
    out of the re-run, logged, and the candidates' answer names it (the page shows that line)."""
    import logging
    import shutil

    from review_support import SAMPLE, database_url, make_service

    out, inputs, manifest = stained_control_run(processed_once)   # the control: a copy of a stained tube (flagged)
    control = manifest.loc[manifest["role"] == "unstained", "file"].iloc[0]
    shutil.copy(SAMPLE / "TIL002_surface_stain.fcs", inputs / control)   # another copy, still flagged, after the run
    service = make_service(out, database_url("sqlite", tmp_path))
    c, _, _ = login(create_app(service), "alice")
    with caplog.at_level(logging.WARNING, logger="tilpheno.review.regate"):
        r = c.get(f"/api/products/{PID}/candidates")
    assert r.status_code == 200, r.text
    assert not [cut for by_pop in r.json["tubes"].values() for cuts in by_pop.values() for cut in cuts
                if cut["rule"] == "unstained_cut"]
    [reason] = r.json["left_out"]
    assert reason.startswith(f"{inputs / control}: SHA-256 differs from run.json (the file changed since the run)")
    assert [rec.getMessage() for rec in caplog.records if control in rec.getMessage()] == [
        f"product {PID}: unstained control left out of the re-run (no unstained_cut candidates): {reason}"]
    service.factory.kw["bind"].dispose()


@pytest.mark.parametrize("role", ["stain", "fmo"])
def test_a_stained_or_fmo_file_changed_since_the_run_is_named_when_the_product_is_opened(tmp_path, processed_once, role):
    """Walkthrough of the FlowAtlas lab (audit_49): a product's stained file replaced after the run made
    its page answer 'product TIL001: re-gating gives viability_pct = 83.7567, phenotypes.csv says
    78.4001; inputs or software changed since the run', naming neither the file nor the check that
    finds it (run.json's SHA-256, compared only after the numbers) -> the re-run names the changed
    file, as for a control; the same for an FMO file, which moves its gate."""
    import shutil

    from review_support import SAMPLE, database_url, make_service

    out, inputs, manifest = stained_control_run(processed_once)
    surface = manifest[(manifest["tube"] == "surface") & (manifest["role"] == role)]
    changed = surface["file"].iloc[0]
    kept = (inputs / changed).read_bytes()
    try:
        shutil.copy(SAMPLE / ("TIL002_surface_stain.fcs" if role == "stain" else changed.replace(PID, "TIL002")),
                    inputs / changed)
        service = make_service(out, database_url("sqlite", tmp_path))
        c, _, _ = login(create_app(service), "alice")
        r = c.get(f"/api/products/{PID}/state")
        assert r.status_code == 400, r.text
        assert r.json["error"] == f"{inputs / changed}: SHA-256 differs from run.json (the file changed since the run)"
        service.factory.kw["bind"].dispose()
    finally:
        (inputs / changed).write_bytes(kept)   # the module's run, as other tests read it


def test_an_unstained_control_replaced_after_its_check_is_left_out_as_one_replaced_before(tmp_path, monkeypatch, caplog,
                                                                                          processed_once):
    """The re-run hashed each flagged unstained control (against run.json) and then read it again
    to re-gate: a control replaced between the hash and the read gave an ``unstained_cut``
    candidate computed from the new file, and said nothing. The re-run now checks the digest of
    the bytes it read: the control is left out as one replaced before the check is (logged, named
    in the candidates' answer, no candidate from it)."""
    import logging
    import shutil

    import tilpheno.provenance

    from review_support import SAMPLE, database_url, make_service

    out, inputs, manifest = stained_control_run(processed_once)   # the control: a copy of a stained tube (flagged)
    control = inputs / manifest.loc[manifest["role"] == "unstained", "file"].iloc[0]
    service = make_service(out, database_url("sqlite", tmp_path))
    hashed = tilpheno.provenance.sha256_file

    def hash_then_replace(path, *args, **kwargs):   # the file is replaced just after its check hashed it
        digest = hashed(path, *args, **kwargs)
        if Path(path) == control:
            shutil.copy(SAMPLE / "TIL002_surface_stain.fcs", control)   # another stained tube: still flagged
        return digest

    monkeypatch.setattr(tilpheno.provenance, "sha256_file", hash_then_replace)
    c, _, _ = login(create_app(service), "alice")
    with caplog.at_level(logging.WARNING, logger="tilpheno.review.regate"):
        r = c.get(f"/api/products/{PID}/candidates")
    assert r.status_code == 200, r.text
    assert control.read_bytes() == (SAMPLE / "TIL002_surface_stain.fcs").read_bytes()   # replaced before the re-run read it
    assert not [cut for by_pop in r.json["tubes"].values() for cuts in by_pop.values() for cut in cuts
                if cut["rule"] == "unstained_cut"]
    assert r.json["left_out"] == [f"{control}: SHA-256 differs from run.json (the file changed since the run)"]
    assert [rec.getMessage() for rec in caplog.records if control.name in rec.getMessage()] == [
        f"product {PID}: unstained control left out of the re-run (no unstained_cut candidates): {r.json['left_out'][0]}"]
    service.factory.kw["bind"].dispose()


def test_a_flagged_product_carries_the_runs_release_beside_the_criteria_on_its_gates(flagged_out, tmp_path, caplog):
    """TIL002 without its CD3 FMO: every criterion passes on the automatic gates while the run's
    release is 'not evaluable' (its CD3+ gate needs review). The product's state gave only the
    criteria on the gates ('automatic: pass' on the page); now it carries the run's release as
    phenotypes.csv records it and the criteria its flags held, as the run's own outcome records them
    (the cache's outcome.json). A phenotypes.csv whose status its flags no longer give (a run before
    criteria were held one by one) is shown as recorded, without held criteria."""
    import pandas as pd

    from review_support import database_url, make_service

    pid = "TIL002"
    phen = pd.read_csv(flagged_out / "phenotypes.csv", dtype=str, keep_default_na=False).set_index("product_id")
    recorded = [json.loads(f.read_text()) for f in flagged_out.glob(".cache/entries/*/*/outcome.json")]
    outcome = next(o for o in recorded if o["product_id"] == pid)
    service = make_service(flagged_out, database_url("sqlite", tmp_path))
    try:
        c, _, _ = login(create_app(service), "alice")
        release = c.get(f"/api/products/{pid}/state").json["release"]
        assert phen.loc[pid, "review_status"] == release["run_review"] == "needs review"
        assert release["automatic_status"] == "pass"
        assert release["run_status"] == phen.loc[pid, "release_status"] == outcome["release_status"] == "not evaluable"
        held = [{"criterion": r["criterion"]["name"], "held_by": r["held_by"]} for r in outcome["release"] if r["held_by"]]
        assert release["run_held"] == held and held[0]["held_by"][0] == "missing_fmo (CD3+)"

        older = service.source.phenotypes.copy()
        older.loc[older["product_id"] == pid, "release_status"] = "fail"
        service.source.phenotypes = older
        with caplog.at_level("INFO", logger="tilpheno.review.regate"):
            release = c.get(f"/api/products/{pid}/state").json["release"]
        assert release["run_status"] == "fail" and release["run_held"] == []
        assert f"{pid}: phenotypes.csv's release_status 'fail' is not what" in caplog.text
    finally:
        service.factory.kw["bind"].dispose()


def test_the_product_list_labels_the_runs_release_as_the_runs(flagged_out, tmp_path):
    """The list's column 'Release (automatic gates)' and its count 'release on the automatic gates'
    showed phenotypes.csv's release_status: for TIL002 without its CD3 FMO, 'not evaluable' (held for
    review) under 'automatic gates', on which every criterion passes (its page: 'criteria on the
    automatic gates: pass'). Now both are labelled the run's release."""
    import pandas as pd

    from review_support import database_url, make_service

    phen = pd.read_csv(flagged_out / "phenotypes.csv", dtype=str, keep_default_na=False).set_index("product_id")
    service = make_service(flagged_out, database_url("sqlite", tmp_path))
    try:
        c, _, _ = login(create_app(service), "alice")
        page = c.get("/").text
        heads = re.findall(r"<th>(.*?)</th>", re.search(r'<table class="grid" id="products">.*?</thead>', page, re.S).group(0))
        row = re.search(r'<tr><td><a href="/products/TIL002">.*?</tr>', page, re.S).group(0)
        cells = dict(zip(heads, re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)))
        assert cells["Release (run)"] == phen.loc["TIL002", "release_status"] == "not evaluable"
        held = int((phen["release_status"] == "not evaluable").sum())
        assert f"the run's release: 0 pass, 0 fail, {held} not evaluable;" in re.search(r'<p id="run-counts">.*?</p>', page, re.S).group(0)
        assert c.get("/api/products/TIL002/state").json["release"]["automatic_status"] == "pass"
    finally:
        service.factory.kw["bind"].dispose()


def test_the_page_asks_for_a_deviation_justification_and_shows_it(fresh_service):
    """Over HTTP: the preview of a draft that passes TIL001's determined CD3 fail says so
    (``overturns``), a save without a justification is refused (400, the criterion named, nothing
    saved), one with it is saved, and the product's state shows the overturn with the justification."""
    app = create_app(fresh_service)
    c, h, _ = login(app, "alice")
    state, body = cd3_body(c, -0.2)
    preview = c.post(f"/api/products/{PID}/preview", json={"gates": body["gates"]}, headers=h).json
    assert preview["release_status"] == "pass" and state["release"]["run_status"] == "fail"
    [said] = preview["overturns"]
    assert said.startswith("CD3+ T cells (cd3_pct_of_live_lymph > 90 % of live lymphocytes: 87.74 in the run, ")
    before = counts(fresh_service)
    r = c.post(f"/api/products/{PID}/versions", json={**body, "reason": "CD3 dim cells are T cells"}, headers=h)
    assert r.status_code == 400 and r.json["overturns"] == [said] and "(nothing was saved)" in r.json["error"]
    assert counts(fresh_service) == before
    r = c.post(f"/api/products/{PID}/versions", json={**body, "reason": "CD3 dim cells are T cells",
                                                     "deviation": "FMO overlay: CD3-dim are T cells (DV-17)"}, headers=h)
    assert r.status_code == 201, r.text
    [shown] = c.get(f"/api/products/{PID}/state").json["release"]["deviations"]
    assert shown["criterion"] == "CD3+ T cells" and shown["justified"]
    assert shown["text"].startswith(f"release overturns the run's determined fail on {said}: reason "
                                    "'FMO overlay: CD3-dim are T cells (DV-17)', by Alice Tester (alice), at ")


def test_a_version_overturning_a_determined_fail_without_a_justification_is_not_approved_until_one_is_added(fresh_service):
    """A version saved before deviations were recorded (stored as saves stored it then: no
    ``deviation`` entry) whose lowered CD3 cut passes TIL001's determined CD3 fail was approved for
    release (201) with the page saying "no deviation justification recorded". Now its approval is
    refused (403 naming the criterion, audited as ``signature_refused``, nothing signed) until a
    justification is added to that version as its own ``deviation`` entry (POST .../deviations);
    its author does not approve it (four eyes), someone else does."""
    from sqlalchemy import select

    from tilpheno.review.models import AuditEntry
    from tilpheno.review.service import transaction

    service = fresh_service
    app = create_app(service)
    carol, hc, _ = login(app, "carol")
    _, body = cd3_body(carol, -0.2)
    change = service._gate_change(PID, 1, body["gates"])
    transaction(service.factory, lambda db: service._store(db, "alice", change, "CD3 dim cells are T cells", "adjusted",
                                                            expect_seq=None, relevant=None))
    state = carol.get(f"/api/products/{PID}/state").json
    [open_] = state["release"]["deviations"]
    assert state["current_version"] == 2 and not open_["justified"] and state["release"]["run_status"] == "fail"
    dave, hd, _ = login(app, "dave")

    def approve(client, headers, name):
        return client.post(f"/api/products/{PID}/sign", headers=headers, json={
            "version": 2, "meaning": "approved for release", "password": PASSWORDS[name],
            "qc_resolutions": approval_resolutions(service, PID)})

    before = counts(service)
    r = approve(dave, hd, "dave")
    assert r.status_code == 403, r.text
    assert r.json["error"].startswith("version 2 of TIL001 overturns the run's determined fail on CD3+ T cells "
                                      "(cd3_pct_of_live_lymph > 90 % of live lymphocytes: 87.74 in the run, ")
    assert r.json["error"].endswith("with no deviation justification recorded: a justification must be added to this "
                                    "version before it is approved for release")
    assert counts(service)[2] == before[2] and service.decision(PID) is None
    with service.factory() as db:
        refused = db.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).one()
    assert (refused.action, refused.username) == ("signature_refused", "dave")

    # adding one: refused blank or for a stale version; recorded apart; a second has nothing to justify
    url = f"/api/products/{PID}/deviations"
    assert carol.post(url, headers=hc, json={"version": 2, "deviation": "  "}).json["error"] == \
        "deviation: required (at least 3 characters)"
    assert carol.post(url, headers=hc, json={"version": 1, "deviation": "DV-17"}).status_code == 409
    why = "FMO overlay shows the CD3-dim cells are T cells; QA deviation DV-17"
    r = carol.post(url, headers=hc, json={"version": 2, "deviation": why})
    assert r.status_code == 201, r.text
    with service.factory() as db:
        entry = db.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).one()
    assert (entry.action, entry.username, entry.reason) == ("deviation", "carol", why)
    assert [c["criterion"] for c in json.loads(entry.after_json)["criteria"]] == ["CD3+ T cells"]
    again = carol.post(url, headers=hc, json={"version": 2, "deviation": why})
    assert again.status_code == 400 and "nothing to justify" in again.json["error"]
    [shown] = carol.get(f"/api/products/{PID}/state").json["release"]["deviations"]
    assert shown["justified"] and f"reason '{why}', by Carol Tester (carol), at " in shown["text"]
    assert service.current_version(PID) == 2   # the version is unchanged

    r = approve(carol, hc, "carol")   # four eyes: the justification's author does not approve it
    assert r.status_code == 403 and r.json["error"].startswith("four-eyes rule: carol justified the deviation on "
                                                               "CD3+ T cells of TIL001"), r.text
    r = approve(dave, hd, "dave")
    assert r.status_code == 201, r.text
    assert service.approved_version(PID).version == 2


def test_the_approved_export_and_the_product_list_name_the_determined_fails_a_release_overturns(fresh_service):
    """TIL001 fails CD3+ T cells in the run on gates no flag asked to review; alice lowers its CD3 cut
    with a deviation justification and dave approves. phenotypes_approved.csv said only 'approved',
    'pass' and the product list 'pass': a QA reviewer reading them could not tell that this lot's
    release overturns the run's determined fail. Now its ``deviations`` cell names the criterion and
    the audit entry holding the justification (the trail's own ``deviation`` entry, read here from
    audit.csv), a product not approved has it empty, and the list's 'Release (approved gates)' says it."""
    import csv
    import io

    service = fresh_service
    app = create_app(service)
    alice, ha, _ = login(app, "alice")
    _, body = cd3_body(alice, -0.2)
    why = "FMO overlay: CD3-dim are T cells (DV-17)"
    assert alice.post(f"/api/products/{PID}/versions", headers=ha,
                      json={**body, "reason": "CD3 dim cells are T cells", "deviation": why}).status_code == 201
    dave, hd, _ = login(app, "dave")
    r = dave.post(f"/api/products/{PID}/sign", headers=hd, json={
        "version": 2, "meaning": "approved for release", "password": PASSWORDS["dave"],
        "qc_resolutions": approval_resolutions(service, PID)})
    assert r.status_code == 201, r.text
    trail = list(csv.DictReader(io.StringIO(dave.get("/audit.csv").text)))
    [entry] = [e for e in trail if e["action"] == "deviation"]
    assert (entry["product_id"], entry["reason"]) == (PID, why)

    rows = {r["product_id"]: r for r in csv.DictReader(io.StringIO(dave.get("/export/phenotypes.csv").text))}
    assert (rows[PID]["review_status"], rows[PID]["release_status"]) == ("approved", "pass")
    assert rows[PID]["deviations"] == f"CD3+ T cells: deviation audit entry {entry['seq']}"
    assert rows["TIL003"]["review_status"] == "not approved" and rows["TIL003"]["deviations"] == ""

    page = dave.get("/").text
    heads = re.findall(r"<th>(.*?)</th>", re.search(r'<table class="grid" id="products">.*?</thead>', page, re.S).group(0))
    row = re.search(rf'<tr><td><a href="/products/{PID}">.*?</tr>', page, re.S).group(0)
    cells = dict(zip(heads, re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)))
    assert cells["Release (approved gates)"] == (f"pass (overturns the run's determined fail: CD3+ T cells: "
                                                 f"deviation audit entry {entry['seq']})")


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    """The sample's TIL001 and TIL002, TIL002's surface stain cut short (unreadable): the run fails
    TIL002 (phenotypes.csv status failed, with its error) and completes TIL001."""
    import shutil

    import pandas as pd

    from review_support import SAMPLE
    from tilpheno.pipeline import process_folder

    tmp = tmp_path_factory.mktemp("failed")
    inputs = tmp / "in"
    inputs.mkdir()
    manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
    manifest = manifest[manifest["product_id"].isin(["TIL001", "TIL002"])]
    for name in manifest["file"]:
        shutil.copy(SAMPLE / name, inputs / name)
    stain = inputs / "TIL002_surface_stain.fcs"
    stain.write_bytes(stain.read_bytes()[:5000])
    manifest.to_csv(tmp / "manifest.csv", index=False)
    summary = process_folder(inputs, tmp / "out", manifest_csv=tmp / "manifest.csv", make_reports=False)
    assert list(summary.failed) == ["TIL002"], summary.failed
    return tmp / "out"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_product_that_failed_processing_is_shown_not_hidden(kind, failed_run, tmp_path):
    """A product the run failed (TIL002: its surface stain unreadable) was missing from the review
    app: the list said '1 product(s)' for a run of 2, its page said "no product 'TIL002' in this
    output folder", and phenotypes_approved.csv had no row for it, so the QA reviewer never learnt
    that the batch had a product without results. Now the list names it with phenotypes.csv's error,
    its page says it failed processing and why (HTTP 404: nothing to review), the approved table has
    its row, 'failed processing', never released, and `users assign` says the same."""
    import pandas as pd
    from typer.testing import CliRunner

    from review_support import database_url, drop_schema, make_service
    from tilpheno.cli import app as cli

    url = database_url(kind, tmp_path)
    service = make_service(failed_run, url)
    try:
        phen = pd.read_csv(failed_run / "phenotypes.csv", dtype=str, keep_default_na=False).set_index("product_id")
        assert phen.loc["TIL002", "status"] == "failed" and phen.loc["TIL001", "status"] == "done"
        error = phen.loc["TIL002", "error"]
        c, _, _ = login(create_app(service), "alice")
        page = c.get("/", headers={"Accept": "text/html"}).text
        failed = " ".join(re.search(r'<p id="failed-products"[^>]*>(.*?)</p>', page, re.S).group(1).split())
        assert "1 product(s) of the run failed processing" in failed and "TIL002" in failed
        assert " ".join(error.split()) in failed.replace("&#39;", "'")
        assert re.findall(r'<a href="/products/(TIL\d+)">', page) == ["TIL001"]   # nothing to open
        r = c.get("/products/TIL002", headers={"Accept": "application/json"})
        assert r.status_code == 404 and r.json["error"].startswith("product TIL002 failed processing in this run (")
        assert error in r.json["error"]
        table = pd.read_csv(__import__("io").StringIO(c.get("/export/phenotypes.csv").text), dtype=str,
                            keep_default_na=False).set_index("product_id")
        assert list(table.index) == ["TIL001", "TIL002"]
        assert tuple(table.loc["TIL002", ["review_status", "release_status"]]) == (
            "failed processing", "not released (failed processing)")
        r = CliRunner().invoke(cli, ["users", "assign", str(failed_run), "bob", "TIL002", "--db", url])
        assert r.exit_code == 2 and "product TIL002 failed processing in this run" in r.output, r.output
        r = CliRunner().invoke(cli, ["export-approved", str(failed_run), "-o", str(tmp_path / "approved"), "--db", url])
        assert r.exit_code == 0 and "0 approved product(s) of 2 exported" in r.output, r.output
        assert "(1 failed processing: not released)" in r.output
        exported = pd.read_csv(tmp_path / "approved" / "phenotypes_approved.csv", dtype=str, keep_default_na=False)
        assert exported.set_index("product_id").loc["TIL002", "review_status"] == "failed processing"
        service.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory):
    """TIL001 and TIL002 of the sample processed (tables only) into ``out`` and into ``other``, where
    TIL001's CD8 FMO file is TIL002's (TIL001 processed from other files, TIL002 from the same):
    ``(out, other)``. The outputs do not depend on the database, so both backends' runs of the test
    below read the same two folders (they only read them)."""
    import shutil

    import pandas as pd

    from review_support import SAMPLE
    from tilpheno.pipeline import process_folder

    tmp = tmp_path_factory.mktemp("two_folders")
    manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
    two = manifest[manifest["product_id"].isin(["TIL001", "TIL002"])]
    two.to_csv(tmp / "manifest.csv", index=False)

    def run(folder, replace=None):
        inputs = tmp / f"in_{folder}"
        inputs.mkdir()
        for name in two["file"]:
            shutil.copy(SAMPLE / (replace or {}).get(name, name), inputs / name)
        summary = process_folder(inputs, tmp / folder, manifest_csv=tmp / "manifest.csv", make_reports=False)
        assert summary.ok, summary.failed
        return tmp / folder

    return run("out"), run("other", replace={"TIL001_surface_FMO_CD8.fcs": "TIL002_surface_FMO_CD8.fcs"})


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_product_of_another_folder_is_refused_on_its_row_not_the_whole_list(kind, tmp_path, two_folders):
    """A database holding TIL001 and TIL002 from one output folder, served with another folder whose
    TIL001 was processed from other files (its CD8 FMO re-acquired) and whose TIL002 from the same:
    the product list answered HTTP 400 with TIL001's refusal, so TIL002 could not be reached from
    it either. Now the list shows TIL002 and names TIL001 with its refusal (both folders); TIL001
    itself is still refused, and the counts above the table say it is refused (it was counted among
    the products neither approved nor rejected, as if it awaited a decision here)."""
    from review_support import database_url, drop_schema, make_service
    from tilpheno.review.server import build_service

    out, other = two_folders
    url = database_url(kind, tmp_path)
    first = make_service(out, url)
    try:
        for pid in ("TIL001", "TIL002"):
            first.ensure_imported(pid)
        first.factory.kw["bind"].dispose()
        foreign = build_service(other, url)
        c, _, _ = login(create_app(foreign), "alice")
        r = c.get("/", headers={"Accept": "text/html"})
        assert r.status_code == 200, r.text
        assert re.findall(r'<a href="/products/(TIL\d+)">', r.text) == ["TIL001", "TIL002"]
        refused = " ".join(re.search(r'<p id="refused-products"[^>]*>(.*?)</p>', r.text, re.S).group(1).split())
        assert "TIL001" in refused and "TIL002" not in refused
        assert "other input files" in refused and str(out) in refused and str(other) in refused
        row = re.search(r'<tr><td><a href="/products/TIL001">.*?</tr>', r.text, re.S).group(0)
        assert "refused" in row and "not approved" not in row
        # the totals: TIL001 is neither approved, rejected nor undecided here (it counted as 'neither')
        said = " ".join(re.search(r'<p id="run-counts">(.*?)</p>', r.text, re.S).group(1).split())
        assert said.startswith("2 product(s): 0 approved, 0 rejected, 1 neither, 1 refused (another output folder: below);"), said
        assert c.get("/api/products/TIL001/state").status_code == 400
        assert c.get("/api/products/TIL002/state").status_code == 200
        foreign.factory.kw["bind"].dispose()
    finally:
        drop_schema(url)


def test_a_double_click_on_sign_stores_one_signature(fresh_service):
    """dave's approval of TIL001 version 1 sent twice (a double-click on Sign; here once in turn,
    then twice at once): both were stored, and the certificate listed dave's approval twice. Now
    the repeat is refused (409 naming the signature that stands, audited ``signature_refused``) and
    one signature is stored; signing again with something new (a comment) is still a signature."""
    import threading

    from tilpheno.review.models import AuditEntry, Signature
    from tilpheno.review.service import RepeatedSignature

    service = fresh_service
    app = create_app(service)
    dave, hd, _ = login(app, "dave")
    body = {"version": 1, "meaning": "approved for release", "password": PASSWORDS["dave"],
            "qc_resolutions": approval_resolutions(service, PID), "oos_justification": OOS_REASON}
    assert dave.post(f"/api/products/{PID}/sign", headers=hd, json=body).status_code == 201
    before = counts(service)[2]
    r = dave.post(f"/api/products/{PID}/sign", headers=hd, json=body)
    assert r.status_code == 409, r.text
    [first] = [v.row for v in service.signatures(PID)]
    assert r.json["error"].startswith(f"you already signed version 1 of {PID} as 'approved for release' "
                                      f"(signature {first.id}, Dave Tester (dave) at ")
    assert counts(service)[2] == before
    with service.factory() as db:
        last = db.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc())).first()
    assert (last.action, last.username) == ("signature_refused", "dave") and f"signature {first.id}" in last.reason
    assert [s.username for s in service.release_approval(PID).signatures] == ["dave"]   # the certificate's list

    # carol's 'reviewed' sent twice at once: one is stored, the other refused
    carol = user_id(service, "carol")
    outcomes: list[object] = []

    def sign():
        try:
            outcomes.append(service.sign(PID, carol, PASSWORDS["carol"], "reviewed", 1, {}))
        except RepeatedSignature as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=sign) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(type(o).__name__ for o in outcomes) == ["RepeatedSignature", "Signature"]
    with service.factory() as db:
        assert db.scalar(select(func.count()).select_from(Signature).where(Signature.username == "carol")) == 1
    # not identical: a comment is new, so it is signed
    service.sign(PID, carol, PASSWORDS["carol"], "reviewed", 1, {}, comment="plots checked again after the FMO review")
    assert [v.row.username for v in service.signatures(PID) if v.valid] == ["dave", "carol", "carol"]


def user_id(service, name: str) -> int:
    from tilpheno.review.models import User

    with service.factory() as db:
        return db.scalar(select(User.id).where(User.username == name))


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_analyst_signing_a_qa_decision_is_refused_for_the_role_first(flagged_out, tmp_path, kind):
    """bob (analyst, TIL002 assigned) posts 'approved for release' of TIL002, whose CD3+ gate carries
    review warnings, with no resolutions, and 'rejected' with no comment: he was told to resolve
    missing_fmo first (HTTP 400), or to say why he rejects, as if his approval would then be
    taken; after typing the resolutions he learnt that his role cannot approve at all. Now the
    role is refused first (HTTP 403 naming it, audited signature_refused), nothing signed."""
    from review_support import database_url, drop_schema, make_service
    from tilpheno.review.models import ProductAssignment
    from tilpheno.review.service import transaction

    pid = "TIL002"
    url = database_url(kind, tmp_path)
    service = make_service(flagged_out, url)
    try:
        transaction(service.factory, lambda db: db.add(ProductAssignment(product_id=pid, username="bob",
                                                                         assigned_by="test", assigned_at=service.clock.stamp(db))))
        assert [f for f in service.source.qc_flags(pid) if f["severity"] in ("warning", "error")]
        c, h, _ = login(create_app(service), "bob")
        version = c.get(f"/api/products/{pid}/state").json["current_version"]
        for meaning in ("approved for release", "rejected"):
            before = counts(service)
            r = c.post(f"/api/products/{pid}/sign", headers=h, json={"version": version, "meaning": meaning,
                                                                       "qc_resolutions": {}, "password": PASSWORDS["bob"]})
            assert (r.status_code, r.json["error"]) == (403, f"role analyst cannot sign '{meaning}'")
            after = counts(service)
            assert after[1:] == before[1:] and after[0] == before[0] + 1
            with service.factory() as db:
                action, reason = db.execute(text("SELECT action, reason FROM audit_entries ORDER BY seq DESC")).first()
            assert (action, reason) == ("signature_refused", f"{meaning} of version {version}: role analyst cannot sign '{meaning}'")
    finally:
        service.factory.kw["bind"].dispose()
        drop_schema(url)


def run_fails(service, pid: str) -> list:
    """The release criteria ``pid``'s values in the run's phenotypes.csv fail (version 1 = the run's
    gates), independently of the review service's own results."""
    import operator

    ops = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
    row = service.source.phenotype_row(pid)
    return [c for c in service.source.release_spec.criteria if not ops[c.op](row[c.column], c.limit)]


def test_the_product_list_says_an_out_of_specification_release(fresh_service, monkeypatch):
    """TIL001 fails CD3+ T cells > 90 % on its gates (the run's phenotypes.csv against the spec) and
    dave approves it for release with a justification; TIL003, failing too, was approved before a
    justification was needed (none recorded); TIL002 passes. The list's 'Release (approved gates)'
    said only 'fail' for both failing lots, so a QA reviewer scanning it could not tell that they
    were released out of specification. Now it says 'fail: out-of-specification release (<failed
    criteria>)', '; no justification recorded' when none is, the cell's title the product page's words
    (criteria, values, justification); a passing approval still says 'pass'. Each row on a page of
    one says the same as on the whole list."""
    import html

    from tilpheno.review import service as module

    service = fresh_service
    failing = {p: run_fails(service, p) for p in ("TIL001", "TIL002", "TIL003")}
    assert failing["TIL001"] and failing["TIL003"] and not failing["TIL002"], failing
    app = create_app(service)
    dave, hd, _ = login(app, "dave")

    def approve(pid: str, justification: str) -> None:
        dave.get(f"/api/products/{pid}/state")   # opened: imported
        r = dave.post(f"/api/products/{pid}/sign", headers=hd, json={
            "version": 1, "meaning": "approved for release", "password": PASSWORDS["dave"],
            "qc_resolutions": approval_resolutions(service, pid), "oos_justification": justification})
        assert r.status_code == 201, r.text

    approve("TIL001", OOS_REASON)
    approve("TIL002", "")
    monkeypatch.setattr(module, "_oos_refusal", lambda *args: "")   # the old code: no justification asked for
    approve("TIL003", "")
    monkeypatch.undo()

    def cells(page: str) -> dict[str, tuple[str, str]]:
        """Each listed product's 'Release (approved gates)' cell: (its text, its title)."""
        heads = re.findall(r"<th>(.*?)</th>", re.search(r'<table class="grid" id="products">.*?</thead>', page, re.S).group(0))
        col = heads.index("Release (approved gates)")
        out = {}
        for m in re.finditer(r'<tr><td><a href="/products/(TIL\d+)">.*?</tr>', page, re.S):
            attrs, text = re.findall(r"<td([^>]*)>(.*?)</td>", m.group(0), re.S)[col]
            title = re.search(r'title="([^"]*)"', attrs)
            out[m.group(1)] = (html.unescape(text), html.unescape(title.group(1)) if title else "")
        return out

    listed = cells(dave.get("/").text)
    for pid, justification in (("TIL001", f"; justification {OOS_REASON!r} by Dave Tester (dave) at "),
                               ("TIL003", "; no justification recorded (approved by Dave Tester (dave) at ")):
        text, title = listed[pid]
        assert text == f"fail: out-of-specification release ({'; '.join(c.name for c in failing[pid])})" + (
            "; no justification recorded" if pid == "TIL003" else ""), text
        values = "; ".join(f"{c.name} ({c.describe()}: {service.source.phenotype_row(pid)[c.column]:.2f})"
                           for c in failing[pid])
        assert title.startswith(f"out-of-specification release of version 1: fails {values}{justification}"), title
    assert listed["TIL002"] == ("pass", "")
    for n, pid in enumerate(("TIL001", "TIL002", "TIL003"), 1):   # paged: the same on a page of one
        assert cells(dave.get(f"/?page={n}&size=1").text) == {pid: listed[pid]}


def test_a_drafted_study_whose_valley_gates_read_the_unstained_control_opens_for_review(tmp_path):
    """A lab's own panel, as the README has it run: FlowAtlas's 412C mLN export (no $PnS; a panel
    file names CD3, CD4, CD127 and FoxP3) with its donor's unstained control, `new-study --panel`
    drafts valley gates, `process` gates them. Where a valley gate sees one population, the run
    calls it against the unstained control's median (two peaks near it are paired by it: FoxP3 here);
    this control raised no unstained_positive
    flag, and the review re-run read only flagged controls: it called FoxP3+ otherwise (0 % of CD4+
    against the run's 20.35 %), so the product's page answered HTTP 400 "re-gating gives
    foxp3_pct_of_cd4 = 0, phenotypes.csv says 20.3506; inputs or software changed since the run"
    for a run nothing had changed. The page's state must open, its automatic gates giving the run's
    numbers (independent truth: phenotypes.csv and populations.csv as `process` wrote them)."""
    import shutil

    import pandas as pd
    from typer.testing import CliRunner

    from review_support import make_service
    from tilpheno.cli import app as cli

    atlas = Path(__file__).parent / "data" / "realdata_flowatlas"
    pid = "412C_mLN_026"
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(atlas / "fcs" / f"{pid}.fcs", inputs / f"{pid}.fcs")
    shutil.copy(atlas / "unstained" / "412C__412C_unst_022.cleaned.fcs", inputs / f"{pid}_unstained.fcs")
    (tmp_path / "panel.csv").write_text("tube,detector,marker\n,FJComp-355 379_28-A,CD3\n,FJComp-355 820_60-A,CD4\n"
                                        ",FJComp-561 780_60-A,CD127\n,FJComp-561 585_15-A,FoxP3\n")
    runner = CliRunner()
    r = runner.invoke(cli, ["new-study", str(inputs), "-o", str(tmp_path / "study"), "--panel", str(tmp_path / "panel.csv")])
    assert r.exit_code in (0, 1) and (tmp_path / "study" / "study.yaml").exists(), r.output
    (tmp_path / "manifest.csv").write_text(f"file,product_id,tube,role,fmo_marker\n{pid}.fcs,{pid},mln,stain,\n"
                                           f"{pid}_unstained.fcs,{pid},unstained,unstained,\n")
    out = tmp_path / "out"
    r = runner.invoke(cli, ["process", str(inputs), "-o", str(out), "--study", str(tmp_path / "study" / "study.yaml"),
                            "--panel", str(tmp_path / "panel.csv"), "--manifest", str(tmp_path / "manifest.csv"),
                            "--reports", "none"])
    assert r.exit_code == 0, r.output
    qc = pd.read_csv(out / "qc.csv")
    assert "unstained_positive" not in set(qc["code"])            # the case: a control no flag names
    recorded = pd.read_csv(out / "phenotypes.csv").set_index("product_id").loc[pid]
    assert recorded["foxp3_pct_of_cd4"] > 5      # two peaks the control tells apart (without it: one, negative)
    service = make_service(out, f"sqlite:///{tmp_path / 'r.sqlite'}")
    c, _h, _ = login(create_app(service), "alice")
    r = c.get(f"/api/products/{pid}/state")
    assert r.status_code == 200, r.json
    shown = {row["population"]: row for row in r.json["populations"]["automatic"]["mln"]}
    populations = pd.read_csv(out / "populations.csv")
    run = populations[(populations["file"] == f"{pid}.fcs")].set_index("population")
    for population in ("CD3+", "CD4+", "FoxP3+", "CD127+"):
        assert shown[population]["count"] == run.loc[population, "count"], population
    assert abs(100 * shown["FoxP3+"]["count"] / shown["CD4+"]["count"] - recorded["foxp3_pct_of_cd4"]) < 1e-9
    service.factory.kw["bind"].dispose()


def test_a_product_page_offers_gating_ml_only_for_the_tube_kinds_it_has(tmp_path):
    """A study of two panels, each product stained with one (FlowAtlas 390C liver: the T-cell panel;
    412C mLN: the T+B panel; `new-study` drafts both kinds optional): each product page offered
    "approved gates as Gating-ML 2.0" for every tube kind of the study, and the link of the kind the
    product lacks answered HTTP 404 "product ... has no stained ... tube". The page now links the
    kinds the run gated a stained file of for it (the manifest's), no other."""
    import shutil

    import pandas as pd
    from typer.testing import CliRunner

    from review_support import make_service
    from tilpheno.cli import app as cli

    atlas = Path(__file__).parent / "data" / "realdata_flowatlas"
    folder = tmp_path / "fcs"
    folder.mkdir()
    for name in ("390C_Liver_026.fcs", "412C_mLN_026.fcs"):
        shutil.copy(atlas / "fcs" / name, folder / name)
    runner = CliRunner()
    r = runner.invoke(cli, ["new-study", str(folder), "-o", str(tmp_path / "study"), "--panel", str(atlas / "panel.csv")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["process", str(folder), "-o", str(tmp_path / "out"), "--study", str(tmp_path / "study" / "study.yaml"),
                            "--manifest", str(tmp_path / "study" / "manifest.csv"), "--panel", str(atlas / "panel.csv"),
                            "--reports", "none"])
    assert r.exit_code == 0, r.output
    manifest = pd.read_csv(tmp_path / "study" / "manifest.csv", dtype=str, keep_default_na=False)
    kinds = dict(zip(manifest["product_id"], manifest["tube"]))
    assert len(set(kinds.values())) == 2
    service = make_service(tmp_path / "out", f"sqlite:///{tmp_path / 'r.sqlite'}")
    c, _h, _ = login(create_app(service), "alice")
    for pid, kind in kinds.items():
        page = c.get(f"/products/{pid}")
        assert page.status_code == 200
        assert re.findall(r'data-gatingml="([^"]+)"', page.text) == [kind], pid
        other = next(k for k in kinds.values() if k != kind)
        assert f"/gates/{other}.xml" not in page.text
    service.factory.kw["bind"].dispose()


def assign_as_told(app, service):
    """bob (an analyst assigned TIL001) opens TIL002: the 403 names the command an admin runs to assign
    it; that command, run as given (``***`` put back as the database's password), lets bob open it;
    withdrawn again after. The command's words."""
    import shlex

    from typer.testing import CliRunner

    from tilpheno.cli import app as cli

    bob, _, _ = login(app, "bob")
    r = bob.get("/api/products/TIL002/state")
    assert r.status_code == 403, r.text
    said = r.json["error"]
    assert said.startswith("product TIL002 is not assigned to you (bob, analyst); an admin can run: "), said
    words = shlex.split(said.split("an admin can run: ", 1)[1])
    url = service.factory.kw["bind"].url
    secret = url.render_as_string(hide_password=False)
    given = [secret if w == url.render_as_string(hide_password=True) else w for w in words]
    assert given[0] == "tilpheno"
    r = CliRunner().invoke(cli, given[1:])
    assert r.exit_code == 0 and "assigned TIL002 to bob" in r.output, r.output
    try:
        assert bob.get("/api/products/TIL002/state").status_code == 200
    finally:
        r = CliRunner().invoke(cli, [*given[1:], "--remove"])
        assert r.exit_code == 0 and "withdrew TIL002 from bob" in r.output, r.output
    return words


def test_the_403_of_an_unassigned_product_names_the_command_that_assigns_it(app, service):
    """An analyst opening a product not assigned to them was told 'an admin can run: tilpheno users
    assign OUT bob TIL002' with the word OUT, not the folder the server reviews, and no word of the
    database (a server started with --db: the command as given assigns nothing there). Now the
    command names the output folder and this server's --db (password as ***): run as given, it
    assigns the product."""
    words = assign_as_told(app, service)
    assert words[:6] == ["tilpheno", "users", "assign", str(service.source.out_dir), "bob", "TIL002"], words
    assert words[6:] == ["--db", service.factory.kw["bind"].url.render_as_string(hide_password=True)], words
    assert service.factory.kw["bind"].url.password is None or "***" in words[7]


def test_the_403_names_no_db_when_the_server_uses_the_folders_own_database(review_source):
    """The same, served with the folder's own database (OUT.review.sqlite beside it, `serve OUT`
    without --db): the command names the folder alone, as an admin runs it there."""
    from review_support import make_service
    from tilpheno.review.db import default_db_path, default_db_url

    out = review_source.out_dir
    assert not default_db_path(out).exists()
    service = make_service(out, default_db_url(out), review_source)
    try:
        words = assign_as_told(create_app(service), service)
        assert words == ["tilpheno", "users", "assign", str(out), "bob", "TIL002"], words
    finally:
        service.factory.kw["bind"].dispose()
        default_db_path(out).unlink()


def test_an_out_of_specification_justification_sent_with_an_approval_in_specification_is_kept(fresh_service):
    """dave approves TIL002 (it passes its release criteria) over HTTP with an out-of-specification
    justification an API client sent anyway. It used to be dropped without a word: neither the
    signature, nor its audit entry, nor the reply held it. Now the reply says it is not needed and
    where it is kept, the signature holds none (nothing is released out of specification), and the
    ``sign`` entry keeps it (``before.oos_justification_not_needed``)."""
    from tilpheno.review.models import AuditEntry
    from tilpheno.review.service import failed_criteria

    service, pid = fresh_service, "TIL002"
    c, h, _ = login(create_app(service), "dave")
    version = c.get(f"/api/products/{pid}/state").json["current_version"]
    assert failed_criteria(service.version_criteria(pid, service.version(pid, version))) == []   # in specification
    r = c.post(f"/api/products/{pid}/sign", headers=h, json={
        "version": version, "meaning": "approved for release", "password": PASSWORDS["dave"],
        "qc_resolutions": approval_resolutions(service, pid), "oos_justification": OOS_REASON})
    assert r.status_code == 201, r.json
    assert r.json["message"].endswith("; the out-of-specification justification sent is not needed (only an approval "
                                      "for release of a version that fails a release criterion has one): not signed, "
                                      "kept in the signature's audit entry"), r.json
    sig = [v for v in service.signatures(pid) if v.valid][-1].row
    assert (sig.meaning, sig.oos_justification) == ("approved for release", "")
    with service.factory() as db:
        entry = db.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc())).first()
    assert (entry.action, entry.username) == ("sign", "dave")
    assert json.loads(entry.before_json) == {"oos_justification_not_needed": OOS_REASON}
