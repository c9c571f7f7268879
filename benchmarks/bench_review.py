"""Review app speed: dragging a gate on a 100,000-event product, and loading the product page.

Run by hand (not a test):

    .venv/bin/python benchmarks/bench_review.py [--events 100000] [--repeats 25] [--db postgresql://...]

Simulates one product (9 tubes x N events, `tilpheno.simulate`), processes it (tables only),
starts the review app on 127.0.0.1 (waitress, a real HTTP server, SQLite beside OUT unless --db)
and measures over HTTP with a logged-in session, wall clock, after one warm-up request:

* drag: ``POST /api/products/P/preview`` with the CD3+ threshold moved (a new value each time),
  what the browser sends while a gate is dragged: every population of both stained tubes
  recomputed from all events (counts, % of parent, % of live lymphocytes, phenotype, release);
* drag end: the same with ``plots: true`` (the parents' event subsamples for redrawing the plots);
* product page: ``GET /products/P`` (HTML) + ``GET /api/products/P/state`` (everything the page
  draws: plots, automatic and current populations, release, QC, signatures, versions);
* candidate cuts: ``GET /api/products/P/candidates`` (the cuts each threshold gate weighed, with the %
  of its parent each gives), the page's second request;
* the per-request check for refusal windows whose time is over (``ReviewService.write_due_refusals``
  with none due, in process: what every request pays before its own work; ``refusals.due``), beside
  ``GET /healthz``, the lightest request (which pays it too), with no window open and with 1,000;
* a refused request recorded (``refusals.record`` in its transaction, in process): counted in its
  open window, and opening a window of its own (a new user each time: its ``access_refused`` entry);
  with the SQL statements each sends (its round trips to the database), counted once;
* the due-window check's query alone (``refusals.due`` in a session) against the check as it was
  before stop 54 (the clock read by a query of its own, then the windows), called alternately in one
  run so that the machine's load weighs on both alike: their ratio;
* the login session's lookup every request makes (``auth.find_session``: one SELECT with the record
  clock's now in it) against the lookup as it was before stop 55 (the row by its key, its expiry
  compared with the machine's clock in Python), alternately in one run: their ratio and statements;
* first open of a product (version 1 made by re-running the automatic gating), once; and the
  first candidates request of a server started after the product was imported (a fresh
  ``ReviewSource`` re-gates the product for them), once.

Prints medians and maximums in ms and the machine's load average (other processes inflate wall time).
"""
from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import re
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def statements(engine, fn) -> int:
    """The SQL statements ``fn()`` sends through ``engine`` (its round trips to the database)."""
    from sqlalchemy import event

    sent = []

    def count(*_args):
        sent.append(1)

    event.listen(engine, "before_cursor_execute", count)
    try:
        fn()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return len(sent)


def alternately(a, b, repeats: int) -> tuple[list[float], list[float]]:
    """``a`` and ``b`` timed (ms) one after the other ``repeats`` times, after one warm-up call each."""
    a(), b()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((a, times[0]), (b, times[1])):
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1000)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--db", default=None, help="database URL (default: SQLite beside OUT)")
    args = ap.parse_args()

    import pandas as pd
    from waitress.server import create_server

    from tilpheno.pipeline import process_folder
    from tilpheno.review.auth import create_user
    from tilpheno.review.server import build_service
    from tilpheno.review.service import transaction
    from tilpheno.review.web import create_app
    from tilpheno.simulate.cohort import manifest_rows, simulate_product, write_product

    tmp = Path(tempfile.mkdtemp(prefix="bench_review_"))
    product = simulate_product("TIL001", 20240601, args.events)
    write_product(product, tmp / "fcs")
    pd.DataFrame(manifest_rows(product)).to_csv(tmp / "fcs" / "manifest.csv", index=False)
    t = time.perf_counter()
    process_folder(tmp / "fcs", tmp / "out", manifest_csv=tmp / "fcs" / "manifest.csv", make_reports=False)
    print(f"process 1 product x 9 tubes x {args.events} events: {time.perf_counter() - t:.1f} s")

    service = build_service(tmp / "out", args.db)
    transaction(service.factory, lambda db: create_user(db, "bench", "Bench Reviewer", "reviewer", "bench-password-1"))
    t = time.perf_counter()
    service.ensure_imported("TIL001")
    first_open = (time.perf_counter() - t) * 1000
    srv = create_server(create_app(service), host="127.0.0.1", port=0, threads=4)
    threading.Thread(target=srv.run, daemon=True).start()
    base = f"http://127.0.0.1:{srv.effective_port}"

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(base + "/login").read().decode()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    data = urllib.parse.urlencode({"username": "bench", "password": "bench-password-1", "csrf_token": csrf}).encode()
    home = opener.open(base + "/login", data=data).read().decode()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', home).group(1)
    state = json.loads(opener.open(base + "/api/products/TIL001/state").read())
    gate = state["current"]["tubes"]["surface"]["gates"]["CD3+"]
    low0 = gate["low"]
    step = iter(range(10_000))

    def post(path: str, body: dict) -> dict:
        req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "X-CSRF-Token": csrf})
        return json.loads(opener.open(req).read())

    def drag(plots: bool):
        gate["low"] = low0 + 0.002 * (next(step) % 40 - 20)
        res = post("/api/products/TIL001/preview", {"gates": {"tubes": {"surface": {"gates": {"CD3+": gate}}}}, "plots": plots})
        assert res["populations"]["surface"]

    def product_page():
        opener.open(base + "/products/TIL001").read()
        opener.open(base + "/api/products/TIL001/state").read()

    def candidates():
        assert json.loads(opener.open(base + "/api/products/TIL001/candidates").read())["tubes"]["surface"]

    def due_check():
        assert service.write_due_refusals() == []

    from tilpheno.review import refusals

    def refuse(username: str, request: str) -> None:
        transaction(service.factory, lambda db: refusals.record(db, service.refusals, username, request, "",
                                                                "bench refusal"))

    users = (f"bench{i}" for i in range(10**6))

    def due_query():
        with service.factory() as db:
            assert not refusals.due(db, service.refusals)

    def due_query_before():   # stop 53's refusals.due: the clock by a query of its own, then the windows
        from sqlalchemy import select

        from tilpheno.review.models import RefusalWindow

        with service.factory() as db:
            now = service.refusals.clock.now(db)
            assert db.scalar(select(RefusalWindow.key_sha256).where(
                RefusalWindow.opened <= now - service.refusals.window).limit(1)) is None

    from tilpheno.review.auth import find_session, new_session, token_digest

    token = transaction(service.factory, lambda db: new_session(db, None, service.clock)[0])

    def session_lookup():
        with service.factory() as db:
            assert find_session(db, token, service.clock) is not None

    def session_lookup_before():   # stop 54's find_session: the row by its key, its expiry against the machine's clock
        from datetime import datetime, timezone

        from tilpheno.review.models import LoginSession

        with service.factory() as db:
            row = db.get(LoginSession, token_digest(token))
            assert row is not None and datetime.strptime(row.expires_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=timezone.utc) > datetime.now(timezone.utc)

    def open_windows(n: int) -> None:
        """``n`` refused requests of one user, each its own window (beyond the cap: folded), all open."""
        transaction(service.factory, lambda db: [refusals.record(db, service.refusals, "bench", f"GET /flood/{i}", "",
                                                                 "bench refusal") for i in range(n)])

    rows = [("drag (preview, all populations)", timed(lambda: drag(False), args.repeats)),
            ("drag end (preview + plot data)", timed(lambda: drag(True), args.repeats)),
            ("product page (HTML + state JSON)", timed(product_page, args.repeats)),
            ("candidate cuts (JSON)", timed(candidates, args.repeats)),
            ("GET /healthz (the lightest request)", timed(lambda: opener.open(base + "/healthz").read(), args.repeats)),
            ("due-window check alone, none open", timed(due_check, 10 * args.repeats)),
            ("refusal counted in its open window", timed(lambda: refuse("bench", "GET /counted"), 10 * args.repeats)),
            ("refusal opening a window (+ its entry)", timed(lambda: refuse(next(users), "GET /new"), 10 * args.repeats))]
    one, two = alternately(due_query, due_query_before, 20 * args.repeats)
    rows += [("due query, one statement (now)", one), ("due query, clock query + windows (before)", two)]
    s_now, s_before = alternately(session_lookup, session_lookup_before, 20 * args.repeats)
    rows += [("session lookup, record clock (now)", s_now), ("session lookup, machine clock (before)", s_before)]
    engine = service.factory.kw["bind"]
    sent = {"due-window check": statements(engine, due_check),
            "refusal counted": statements(engine, lambda: refuse("bench", "GET /counted")),
            "refusal opening a window": statements(engine, lambda: refuse(next(users), "GET /new")),
            "session lookup": statements(engine, session_lookup),
            "session lookup before": statements(engine, session_lookup_before)}
    open_windows(1000)
    rows += [("due-window check alone, 1000 open", timed(due_check, 10 * args.repeats)),
             ("GET /healthz, 1000 windows open", timed(lambda: opener.open(base + "/healthz").read(), args.repeats))]
    from tilpheno.review.regate import ReviewSource

    service.source = ReviewSource(tmp / "out")   # as a server started later: the product is in the database
    t = time.perf_counter()
    candidates()
    first_candidates = (time.perf_counter() - t) * 1000
    print(f"load average before: {os.getloadavg()[0]:.2f}; events per stained tube: {args.events}; "
          f"database: {service.factory.kw['bind'].url.render_as_string(hide_password=True)}")
    print(f"{'request':40s} {'median ms':>10s} {'max ms':>10s}")
    for name, ms in rows:
        print(f"{name:40s} {statistics.median(ms):10.1f} {max(ms):10.1f}")
    print(f"{'first open (re-gate, version 1)':40s} {first_open:10.1f}")
    print(f"{'first candidates of a later server':40s} {first_candidates:10.1f}")
    print(f"due query now / before (ratio of medians, one run): {statistics.median(one) / statistics.median(two):.2f}")
    print(f"session lookup now / before (ratio of medians, one run): "
          f"{statistics.median(s_now) / statistics.median(s_before):.2f}")
    print("SQL statements sent (round trips): " + ", ".join(f"{k} {n}" for k, n in sent.items()))
    srv.close()


if __name__ == "__main__":
    main()
