"""End to end in headless Chromium (Selenium + Debian's chromium-driver), on SQLite and PostgreSQL:
log in, drag the CD3 threshold and see the % change, lose a race to a second reviewer (clear
conflict, nothing lost), reload, drag again, save with a reason, sign with the password, download
the certificate of analysis and read it; move a cut to one of the candidates the run weighed in one
click and save it; a day of review (correct, sign, approve, reject, re-open, approve, audit CSV)
checked against the public gating library and the audit trail."""
from __future__ import annotations

import json
import logging
import math
import re
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select

from review_support import PASSWORDS, database_url, drop_schema, flagged_out, make_service, processed_once, review_out, review_source  # noqa: F401
from review_support import OOS_REASON, approval_resolutions, logged_in_client
from tilpheno.review.models import AuditEntry, User

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium")
PID = "TIL001"
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    if not (CHROMEDRIVER and CHROMIUM):
        pytest.skip("chromium / chromium-driver not installed (`make services` installs Debian's packages)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1500,1100",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(30)
    yield d
    d.quit()


SERVED: dict[str, object] = {}
"""The app :func:`serving` serves at each base URL now (:func:`signed_in` logs in on it)."""


@contextmanager
def serving(app, driver, port: int = 0):
    """``app`` on a threaded HTTP server at a free port of 127.0.0.1 that stops cleanly (`tilpheno
    serve` uses waitress: test_review_cli): yields its base URL (``port`` 0: a free one). ``driver``'s storage for that origin
    is cleared first: the port may be one an earlier test's server had, and a draft that test left in
    the browser's localStorage would be restored on this server's page (a preview, the plots and their
    candidates drawn again under the test: stop 58's CI saw a candidate button go stale so)."""
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{srv.server_port}"
    driver.execute_cdp_cmd("Storage.clearDataForOrigin", {"origin": base, "storageTypes": "local_storage"})
    SERVED[base] = app
    try:
        yield base
    finally:
        del SERVED[base]
        srv.shutdown()
        thread.join(5)


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request, driver, review_out, review_source, tmp_path):
    from tilpheno.review.web import create_app

    url = database_url(request.param, tmp_path)
    service = make_service(review_out, url, review_source)
    with serving(create_app(service), driver) as base:
        yield service, base
    service.factory.kw["bind"].dispose()
    drop_schema(url)


def wait(driver, predicate, what, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            value = predicate(driver)
            if value:
                return value
        except Exception:  # element not there yet / re-rendered
            pass
        time.sleep(0.1)
    shown = [e.text for e in driver.find_elements("id", "message")]   # none on the login page
    raise AssertionError(f"timed out waiting for {what}; message: {shown[0] if shown else None!r}")


def left(driver, page, what: str) -> None:
    """Wait until ``page`` (the <html> element of the page before a click or a reload) is gone: the
    next page may show the same ids (the login form, its error), so a wait on them alone may read the
    old page while the browser has not started to leave it (chromedriver's click and refresh can
    return before that navigation starts, under load)."""
    from selenium.webdriver.support.expected_conditions import staleness_of

    wait(driver, staleness_of(page), what)


def reload(driver) -> None:
    """Reload the page and wait for the new one (:func:`left`)."""
    page = driver.find_element("tag name", "html")
    driver.refresh()
    left(driver, page, "the page reloaded")


def draft_pct(driver) -> float:
    text = driver.find_element("css selector", '[data-pct="surface|CD3+"]').text
    return float(re.search(r"draft ([0-9.]+)%", text).group(1))


def drag_cd3(driver, dx: int) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    # the suggested cuts arrive after the plots and lengthen the cards above CD3+ (cells, singlets,
    # live): grab the knob once they are there, not while the page moves it
    wait(driver, lambda d: d.find_element("css selector", '[data-candidate="surface|CD3+|automatic"]'), "the suggested cuts")
    knob = wait(driver, lambda d: d.find_element("css selector", '[data-handle="surface|CD3+|low-knob"]'), "the CD3 knob")
    ActionChains(driver).click_and_hold(knob).move_by_offset(dx // 2, 0).move_by_offset(dx - dx // 2, 0).release().perform()


def dragged_and_shown(driver, dx: int) -> None:
    """:func:`drag_cd3` by ``dx`` pixels, then wait until the drag's last preview is on the page: the one sent
    as the knob is released re-draws the plots (their <svg> replaced) after it has put its counts, % and release
    status in the tables, and earlier previews answered later are dropped (review.js ``sendPreview``)."""
    old = driver.find_element("css selector", '[data-svg="surface|CD3+"]')
    drag_cd3(driver, dx)
    wait(driver, lambda d: d.find_element("css selector", '[data-svg="surface|CD3+"]') != old, "the drag's last preview")


def assert_no_script_errors(driver) -> None:
    """No script error or CSP violation in the browser's log since it was last read (a network
    entry, the app's own 4xx answer to a refused request, is not one)."""
    problems = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and e.get("source") != "network"]
    assert not problems, problems


def kept_draft(driver, user: str, pid: str = PID) -> str | None:
    """What the page keeps in the browser's storage for ``user``'s unsigned work on ``pid`` (JSON), or None."""
    return driver.execute_script("return window.localStorage.getItem(arguments[0]);", f"tilpheno-draft|{user}|{pid}")


def justification_typed(driver, base: str) -> str:
    """Dave opens the product (PID fails CD3+ > 90 %), chooses "approved for release" and types the
    out-of-specification justification, not yet signed: the draft the browser keeps then."""
    from selenium.webdriver.support.ui import Select

    open_product(driver, base, "dave")
    Select(driver.find_element("id", "meaning")).select_by_value("approved for release")
    driver.find_element("id", "oos-justification").send_keys(OOS_REASON)
    return wait(driver, lambda d: kept_draft(d, "dave"), "the justification kept in the browser")


def signed_in(driver, base: str, user: str) -> None:
    """The browser holds a fresh session of ``user`` at ``base``: the app's own login made it (its form posted by
    a test client of the app: password checked, session made and audited, :func:`review_support.logged_in_client`)
    and the browser's cookie is set to it, as the login's answer sets it, with no page loaded: the login page and
    its post cost Chromium as much CPU as the product page. The tests of logging in and out, of a session's
    expiry and of reloads log in on the page (:func:`log_in`)."""
    from tilpheno.review.web import COOKIE

    client, _ = logged_in_client(SERVED[base], user)
    driver.delete_all_cookies()   # cookies are per host, not per port: forget the previous server's session
    driver.execute_cdp_cmd("Network.setCookie", {"name": COOKIE, "value": client.get_cookie(COOKIE).value,
                                                 "url": base + "/", "httpOnly": True, "sameSite": "Strict"})


def product_shown(driver, version: int = 1) -> None:
    """Wait for a product's page at gate version ``version``."""
    wait(driver, lambda d: f"gate version {version}" in d.find_element("id", "version-badge").text, "the product page")


def open_product(driver, base: str, user: str = "alice", version: int = 1, pid: str = PID) -> None:
    """``user`` on a fresh session (:func:`signed_in`) and product ``pid``'s page at ``version`` loaded."""
    signed_in(driver, base, user)
    driver.get(base + f"/products/{pid}")
    product_shown(driver, version)


def log_in(driver, base: str, user: str = "alice", version: int = 1, pid: str = PID) -> None:
    """Log in as ``user`` on the login page on a fresh session and wait for product ``pid``'s page at ``version``."""
    driver.delete_all_cookies()   # cookies are per host, not per port: forget the previous server's session
    driver.get(base + f"/products/{pid}")
    driver.find_element("id", "username").send_keys(user)
    driver.find_element("id", "password").send_keys(PASSWORDS[user])
    driver.find_element("id", "login-button").click()
    product_shown(driver, version)


def test_review_flow_in_chromium(driver, server, tmp_path):
    from selenium.webdriver.support.ui import Select

    service, base = server
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    log_in(driver, base)   # the login page (the other tests sign in without it: signed_in)
    start = wait(driver, lambda d: draft_pct(d), "the CD3+ % label")
    # the CD3 axis is labelled in raw decades, as in the reports
    ticks = [e.text for e in driver.find_elements("css selector", '[data-svg="surface|CD3+"] text[data-tick="x"]')]
    assert {"10³", "10⁴"} <= set(ticks), ticks

    dragged_and_shown(driver, 40)
    mine = draft_pct(driver)   # the % of the drag's last preview
    assert mine < start - 0.5
    assert driver.find_elements("css selector", 'tr.changed[data-row="surface|CD3+"]')
    assert mine > 1

    # a second reviewer saves first (another session): the browser's save is refused, and alice's
    # draft is kept over carol's newer version (her CD3 cut, carol's drawn dotted), nothing lost
    with service.factory() as db:
        carol = db.scalar(select(User).where(User.username == "carol"))
    g = json.loads(service.version(PID).gates_json)["tubes"]["surface"]["gates"]["CD3+"]
    g["low"] -= 0.02
    service.save_version(PID, carol, 1, {"tubes": {"surface": {"gates": {"CD3+": g}}}}, "carol: CD3 valley lower")
    driver.find_element("id", "reason").send_keys("CD3 dim tail is debris")
    driver.find_element("id", "save-button").click()
    msg = wait(driver, lambda d: d.find_element("id", "message").text if "conflict" in d.find_element("id", "message").text
               else None, "the conflict message")
    assert "now at version 2" in msg and "carol" in msg and "Nothing was saved" in msg
    assert "Your draft is kept over version 2 (your changes: surface/CD3+); version 2 changed surface/CD3+ too" in msg, msg
    assert [v.version for v in service.versions(PID)] == [1, 2]
    assert service.version(PID).created_by == "carol"
    wait(driver, lambda d: "gate version 2" in d.find_element("id", "version-badge").text, "version 2 under the draft")
    wait(driver, lambda d: draft_pct(d) == mine, "alice's draft % over version 2")
    assert driver.find_elements("css selector", '[data-svg="surface|CD3+"] .saved')   # carol's cut, dotted
    assert driver.find_element("id", "reason").get_attribute("value") == "CD3 dim tail is debris"

    driver.find_element("id", "save-button").click()
    wait(driver, lambda d: "saved version 3" in d.find_element("id", "message").text, "saved version 3")
    wait(driver, lambda d: "gate version 3" in d.find_element("id", "version-badge").text, "version badge 3")
    v3 = service.version(PID)
    assert v3.created_by == "alice" and v3.based_on == 2 and "debris" in v3.reason
    from tilpheno.review.regate import recompute

    cd3 = recompute(service.source, PID, json.loads(v3.gates_json), medians=False).populations["surface"]
    assert round(float(cd3.set_index("population").loc["CD3+", "pct_of_parent"]), 2) == mine   # the % alice saw

    # four eyes: neither alice (version 3) nor carol (version 2) may approve it; dave does
    open_product(driver, base, "dave", version=3)
    Select(driver.find_element("id", "meaning")).select_by_value("approved for release")
    for field in driver.find_elements("css selector", "[data-resolution]"):
        field.send_keys("reviewed on the plots")
    driver.find_element("id", "oos-justification").send_keys(OOS_REASON)   # version 3 fails CD3+ > 90 %: out of specification
    driver.find_element("id", "sign-password").send_keys(PASSWORDS["dave"])
    driver.find_element("id", "sign-button").click()
    wait(driver, lambda d: "signed version 3" in d.find_element("id", "message").text, "the signature")
    sig = wait(driver, lambda d: d.find_element("css selector", "[data-signature]").text, "the signature line")
    assert "approved for release" in sig and "VALID" in sig and "UTC" in sig
    assert "approved: version 3" in driver.find_element("id", "approved-badge").text

    driver.find_element("id", "certificate-link").click()
    pdf = wait(driver, lambda d: next(iter(tmp_path.glob("certificate_*.pdf")), None), "the certificate download")
    time.sleep(0.3)
    if shutil.which("pdftotext"):
        words = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
        assert f"product {PID}" in words and "gate-set version 3" in words and "Dave Tester" in words
        from tilpheno.review.regate import recompute

        res = recompute(service.source, PID, json.loads(v3.gates_json))
        assert f"{res.phenotype['cd3_pct_of_live_lymph']:.2f}" in words
    # script errors and CSP violations only (the expected 409 of the conflict is logged as a network error)
    assert_no_script_errors(driver)


def test_a_candidate_cut_in_one_click(driver, server):
    """The CD3+ gate's FMO-percentile candidate: one click moves the draft there, the server's %
    follows (the same as the candidate's own, computed independently of the page), a reason is
    proposed, and the saved version holds exactly the candidate's gate coordinate."""
    from tilpheno.review.regate import candidate_gates, evaluate

    service, base = server
    driver.get_log("browser")   # drop what earlier pages logged (e.g. a request cut off when their server stopped)
    open_product(driver, base)
    button = wait(driver, lambda d: d.find_element("css selector", '[data-candidate="surface|CD3+|fmo_threshold"]'),
                  "the CD3+ candidate cuts")
    stained = service.source.stained(PID)["surface"]
    gates = json.loads(service.version(PID).gates_json)["tubes"]["surface"]["gates"]
    masks = evaluate(stained.strategy, stained.tube, gates)
    want = next(c for c in candidate_gates(stained, gates, masks, "CD3+", service.source.candidates(PID)["surface"]["CD3+"])
                if c["rule"] == "fmo_threshold")
    start = wait(driver, lambda d: draft_pct(d), "the CD3+ % label")
    assert abs(start - want["pct_of_parent"]) > 0.05   # the click has something to show
    button.click()
    wait(driver, lambda d: abs(draft_pct(d) - want["pct_of_parent"]) <= 0.0051, "the draft % at the candidate cut")
    assert "CD3+: cut moved to the control percentile candidate" in driver.find_element("id", "reason").get_attribute("value")
    driver.find_element("id", "save-button").click()
    wait(driver, lambda d: "saved version 2" in d.find_element("id", "message").text, "saved version 2")
    saved = json.loads(service.version(PID).gates_json)["tubes"]["surface"]["gates"]["CD3+"]
    assert saved["low"] == want["value"] and "control percentile" in service.version(PID).reason
    assert_no_script_errors(driver)   # script errors and CSP violations


def test_the_whole_gate_is_one_click_away(driver, server):
    """The cells plot shows the report's SSC range (from 0): the gate's open side, a corner at
    -$PnR, lies out of view; "whole gate" widens the axes to it (negative SSC ticks appear), a
    corner dragged there moves the %, the view stays when the drag end re-draws the plots, and
    "report view" returns."""
    service, base = server
    driver.get_log("browser")
    open_product(driver, base)

    def y_ticks(d):
        return [e.text for e in d.find_elements("css selector", '[data-svg="surface|cells"] text[data-tick="y"]')]

    before = wait(driver, y_ticks, "the cells plot's SSC ticks")
    assert not [t for t in before if t.startswith("-")], before
    button = driver.find_element("css selector", '[data-zoom="surface|cells"]')
    assert button.text == "whole gate"
    button.click()
    after = wait(driver, lambda d: [t for t in y_ticks(d) if t.startswith("-")], "negative SSC ticks")
    assert after and button.text == "report view"
    # drag a corner of the FSC-A cut in this view: the server's % follows, and the drag end's
    # preview re-draws every plot in the view the reviewer chose
    from selenium.webdriver.common.action_chains import ActionChains

    pct = lambda d: d.find_element("css selector", '[data-pct="surface|cells"]').text   # noqa: E731
    start, old = pct(driver), driver.find_element("css selector", '[data-svg="surface|cells"]')
    gate = json.loads(service.version(PID).gates_json)["tubes"]["surface"]["gates"]["cells"]
    cut = min(range(len(gate["vertices"])), key=lambda i: gate["vertices"][i][0])
    corner = driver.find_element("css selector", f'[data-handle="surface|cells|v{cut}"]')
    ActionChains(driver).click_and_hold(corner).move_by_offset(10, 20).move_by_offset(10, 20).release().perform()
    wait(driver, lambda d: pct(d) != start, "the recomputed cells %")
    wait(driver, lambda d: d.find_element("css selector", '[data-svg="surface|cells"]') != old, "the plots re-drawn")
    # read again until the page settles (a late re-draw replaces the button: a stale element is
    # no failure); the view the reviewer chose must hold after the re-draw, or this times out
    zoom = lambda d: d.find_element("css selector", '[data-zoom="surface|cells"]')   # noqa: E731
    wait(driver, lambda d: zoom(d).text == "report view" and [t for t in y_ticks(d) if t.startswith("-")],
         "the whole-gate view kept after the re-draw")
    wait(driver, lambda d: zoom(d).click() or True, "the zoom button clicked")
    wait(driver, lambda d: not [t for t in y_ticks(d) if t.startswith("-")], "the report's range again")
    assert_no_script_errors(driver)


def test_a_study_without_lymphocyte_gate_shows_no_empty_lymph_column(driver, tmp_path):
    """The review page's population table of the new lab's product (no lymphocyte gate in its
    strategies) has no '% live lymph' column, which would be empty on every row; the TIL
    product's page keeps it (test_review_flow_in_chromium)."""
    from pathlib import Path

    from typer.testing import CliRunner

    from tilpheno.cli import app
    from tilpheno.review.web import create_app

    newlab = Path(__file__).parent / "data" / "newlab"
    out = tmp_path / "out"
    run = CliRunner().invoke(app, ["process", str(newlab / "fcs"), "--study", str(newlab / "study.yaml"), "--panel",
                                   str(newlab / "panel.csv"), "-o", str(out), "--reports", "later"])
    assert run.exit_code == 0, run.output
    service = make_service(out, database_url("sqlite", tmp_path))
    pid = service.source.product_ids()[0]
    try:
        with serving(create_app(service), driver) as base:
            signed_in(driver, base, "alice")
            driver.get(f"{base}/products/{pid}")
            table = wait(driver, lambda d: d.find_element("id", "population-table"), "the population table")
            heads = [th.text for th in table.find_elements("css selector", "th")]
            assert heads == ["tube / population", "auto n", "auto % parent", "draft n", "draft % parent"], heads
            assert all(len(tr.find_elements("css selector", "td")) == 5 for tr in table.find_elements("css selector", "tr")[1:])
    finally:
        service.factory.kw["bind"].dispose()


def test_reloading_a_refused_login_does_not_send_the_password_again(driver, server):
    """A refused login answers with a redirect to the login page (POST/redirect/GET): reloading the
    page that says "wrong user name or password" shows the form again, it does not post the
    password again (which counted as a second wrong password towards the lock-out, and a second
    audited refused login)."""
    from tilpheno.review.auth import get_user

    service, base = server
    driver.delete_all_cookies()
    driver.get(base + f"/products/{PID}")
    driver.find_element("id", "username").send_keys("carol")
    driver.find_element("id", "password").send_keys("not carol's password")
    driver.find_element("id", "login-button").click()
    wait(driver, lambda d: "wrong user name or password" in d.find_element("id", "login-error").text, "the refusal")
    assert driver.find_element("id", "username").get_attribute("value") == "carol"   # kept for the next try
    for _ in range(3):
        reload(driver)
        wait(driver, lambda d: d.find_element("id", "login-button"), "the login page again")
    with service.factory() as db:
        assert get_user(db, "carol").failed_logins == 1
        refused = db.scalars(select(AuditEntry).where(AuditEntry.action == "login_failed")).all()
    assert [e.username for e in refused] == ["carol"]
    # the login still returns to the page asked for
    driver.find_element("id", "username").clear()
    driver.find_element("id", "username").send_keys("carol")
    driver.find_element("id", "password").send_keys(PASSWORDS["carol"])
    driver.find_element("id", "login-button").click()
    wait(driver, lambda d: "gate version 1" in d.find_element("id", "version-badge").text, "the product page")


def test_reloading_the_throttled_login_page_does_not_send_the_password_again(driver, review_out, review_source,
                                                                             tmp_path, caplog):
    """A login refused by the address's throttle (HTTP 429) also answers with a redirect to the
    login page: reloading that page once the throttle has ended shows the form, it does not post
    the password typed again (a wrong one counted towards the account's lock-out, a second audited
    refusal)."""
    from tilpheno.review.auth import get_user
    from tilpheno.review.web import create_app

    service = make_service(review_out, database_url("sqlite", tmp_path), review_source)
    app = create_app(service)
    throttle = app.extensions["tilpheno_login_throttle"]
    now = [1000.0]
    throttle.clock = lambda: now[0]
    for _ in range(throttle.limit):   # a flood of refused logins from this address a moment ago
        throttle.failed("127.0.0.1")
    caplog.set_level(logging.WARNING, logger="tilpheno.review.web")
    try:
        with serving(app, driver) as base:
            driver.delete_all_cookies()
            driver.get(f"{base}/login")   # the form says so already (wait for the answer to the login, not this)
            assert "too many refused logins" in driver.find_element("id", "login-error").text
            driver.find_element("id", "username").send_keys("carol")
            driver.find_element("id", "password").send_keys("not carol's password")
            form = driver.find_element("tag name", "html")
            driver.find_element("id", "login-button").click()
            left(driver, form, "the answer to the login")
            wait(driver, lambda d: "too many refused logins" in d.find_element("id", "login-error").text, "the throttle")
            assert driver.find_element("id", "username").get_attribute("value") == "carol"
            refused = [r.getMessage() for r in caplog.records if "without a password check" in r.getMessage()]
            assert len(refused) == 1, refused   # the login was posted, and refused by the throttle
            now[0] += throttle.window   # the throttle has ended: the reviewer reloads the page
            reload(driver)
            wait(driver, lambda d: d.find_element("id", "login-button"), "the login page again")
            assert not driver.find_elements("id", "login-error")
        with service.factory() as db:
            assert get_user(db, "carol").failed_logins == 0
            assert not db.scalars(select(AuditEntry).where(AuditEntry.action == "login_failed")).all()
    finally:
        service.factory.kw["bind"].dispose()


def test_a_request_the_server_does_not_answer_is_said_on_the_page(driver, review_out, review_source, tmp_path):
    """The server stops (or the network drops) while a product's page is open: a request the page
    then makes fails in the browser ("Failed to fetch"). That was an uncaught error in review.js and
    the page said nothing (a save clicked looked ignored; a lost preview left the drags unpreviewed;
    a page still open as a browser test's server stopped put the error in the next test's log). Now
    the page says the server did not answer, and the draft and the reason stay on the page."""
    from tilpheno.review.web import create_app

    service = make_service(review_out, database_url("sqlite", tmp_path), review_source)
    try:
        with serving(create_app(service), driver) as base:
            open_product(driver, base)
            start = wait(driver, lambda d: draft_pct(d), "the CD3+ % label")
            dragged_and_shown(driver, 40)
            moved = draft_pct(driver)
            assert moved != start
            driver.find_element("id", "reason").send_keys("CD3 dim tail is debris")
            driver.get_log("browser")
        driver.find_element("id", "save-button").click()   # the server has stopped
        msg = wait(driver, lambda d: d.find_element("id", "message").text if "no answer" in d.find_element("id", "message").text
                   else None, "the failed save")
        assert msg.startswith("no answer from the server (") and msg.endswith("check that it runs and try again"), msg
        assert draft_pct(driver) == moved
        assert driver.find_element("id", "reason").get_attribute("value") == "CD3 dim tail is debris"
        assert_no_script_errors(driver)
        assert [v.version for v in service.versions(PID)] == [1]
    finally:
        service.factory.kw["bind"].dispose()


def independent_counts(service, gate_set: dict) -> dict[str, int]:
    """The surface tube's counts under ``gate_set`` from the public gating library: the study's
    strategy with each gate made a fixed gate at the version's coordinates, the stained file read and
    gated by ``tilpheno.gate_sample`` (none of the review app's code)."""
    import yaml

    import tilpheno as tp

    doc = yaml.safe_load(open(service.source.strategies["surface"].path))
    for pop in doc["populations"]:
        if "expression" not in pop:
            pop["method"], pop["params"] = "fixed", {"gate": gate_set["tubes"]["surface"]["gates"][pop["name"]]}
    strategy = tp.GatingStrategy.from_dict(doc)
    sample = tp.Sample.from_fcs(service.source.stained(PID)["surface"].tube.file, strategy)
    return tp.gate_sample(strategy, sample).counts


def page_rows(driver) -> dict[str, list[str]]:
    return {r.get_attribute("data-row"): [td.text for td in r.find_elements("css selector", "td")]
            for r in driver.find_elements("css selector", "#population-table tr[data-row]")}


def sign(driver, meaning: str, user: str, comment: str = "") -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "meaning")).select_by_value(meaning)
    for field in driver.find_elements("css selector", "[data-resolution]"):
        field.send_keys("reviewed on the plots")
    driver.find_element("id", "comment").send_keys(comment)
    driver.find_element("id", "sign-password").send_keys(PASSWORDS[user])
    driver.find_element("id", "sign-button").click()


def test_a_day_of_review_in_the_browser(driver, server, tmp_path):
    """The scientist's and QA's path as a user walks it: from the product list open a product, move
    the CD3 cut down until the release status turns (fail -> pass), save with a reason and, as that
    overturns the run's determined fail, a deviation justification (refused without one); the numbers
    shown are those of the public gating library for the saved cut, and the status is the release
    spec's on them. The scientist signs "reviewed", a second reviewer approves, a third rejects
    (a rejection without a reason is refused in one line), the scientist corrects again (every
    earlier signature shown VOID), the second reviewer approves the new version; the audit trail
    downloaded from the list holds each step: who, when, what before and after, why."""
    import csv

    from tilpheno.release import evaluate as evaluate_release, overall
    from tilpheno.review import audit

    service, base = server
    driver.get_log("browser")
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    driver.delete_all_cookies()
    driver.get(base + "/")
    driver.find_element("id", "username").send_keys("alice")
    driver.find_element("id", "password").send_keys(PASSWORDS["alice"])
    driver.find_element("id", "login-button").click()
    wait(driver, lambda d: d.find_element("link text", PID), "the product list").click()
    wait(driver, lambda d: "gate version 1" in d.find_element("id", "version-badge").text, "the product page")
    status = lambda d: d.find_element("id", "release-status").text   # noqa: E731
    assert wait(driver, status, "the release status") == ("draft release status: fail once these gates are approved "
                                                          "(criteria on the automatic gates: fail)")
    assert driver.find_element("id", "run-release").text == "the run's release: fail"
    start = wait(driver, lambda d: draft_pct(d), "the CD3+ % label")
    for _ in range(8):   # the CD3 cut down, a few pixels at a time, until the lot would pass
        dragged_and_shown(driver, -12)
        if "status: pass" in status(driver):
            break
    shown = wait(driver, lambda d: status(d) if "status: pass" in status(d) else None, "the status after the drags")
    assert shown == "draft release status: pass once these gates are approved (criteria on the automatic gates: fail)"
    assert wait(driver, lambda d: draft_pct(d), "the CD3+ % label") > start
    # the run failed CD3+ T cells on gates no flag asked to review: the page asks why release may overturn it
    asked = wait(driver, lambda d: d.find_element("id", "deviation-what").text if d.find_element("id", "deviation-box")
                 .is_displayed() else None, "the deviation question")
    assert asked.startswith("These gates overturn the run's determined fail on CD3+ T cells (cd3_pct_of_live_lymph > 90 % "
                            "of live lymphocytes: 87.74 in the run, "), asked
    driver.find_element("id", "reason").send_keys("CD3 dim cells are T cells (FMO overlays)")
    driver.find_element("id", "save-button").click()   # without the justification: refused, nothing saved
    msg = wait(driver, lambda d: d.find_element("id", "message").text if "deviation" in d.find_element("id", "message").text
               else None, "the refusal without a justification")
    assert msg.startswith("deviation: these gates overturn the run's determined fail on CD3+ T cells") and \
        msg.endswith("(nothing was saved)"), msg
    assert service.current_version(PID) == 1
    deviation = "CD3-dim cells are T cells on the FMO overlay; deviation DV-17 opened"
    driver.find_element("id", "deviation").send_keys(deviation)
    driver.find_element("id", "save-button").click()
    wait(driver, lambda d: "gate version 2" in d.find_element("id", "version-badge").text, "version 2")
    shown = wait(driver, lambda d: d.find_element("css selector", '[data-deviation="CD3+ T cells"]').text, "the deviation line")
    assert shown.startswith("version 2: release overturns the run's determined fail on CD3+ T cells (") and \
        f": reason '{deviation}', by Alice Tester (alice), at " in shown, shown
    assert not driver.find_element("id", "deviation-box").is_displayed()
    v2 = service.version(PID)
    saved = json.loads(v2.gates_json)
    truth = independent_counts(service, saved)
    rows = wait(driver, page_rows, "the population table")
    for population, n in truth.items():
        assert rows[f"surface|{population}"][3] == str(n), (population, rows[f"surface|{population}"], n)
    pheno = {"viability_pct": 100 * truth["live"] / truth["singlets"],
             "cd3_pct_of_live_lymph": 100 * truth["CD3+"] / truth["live_lymph"]}
    assert overall(evaluate_release(service.source.release_spec, pheno)) == "pass"
    assert rows["surface|CD3+"][5] == f"{pheno['cd3_pct_of_live_lymph']:.2f}"

    sign(driver, "reviewed", "alice")
    wait(driver, lambda d: "signed version 2 as 'reviewed'" in d.find_element("id", "message").text, "alice's signature")
    open_product(driver, base, "dave", version=2)
    sign(driver, "approved for release", "dave")
    wait(driver, lambda d: "approved: version 2" in d.find_element("id", "approved-badge").text, "the approval")
    # the release section states the approved version's release, no longer what it would be once approved
    assert wait(driver, status, "the release status") == ("release status: pass (version 2 approved for release; "
                                                          "criteria on the automatic gates: fail)")
    open_product(driver, base, "carol", version=2)
    sign(driver, "rejected", "carol")
    msg = wait(driver, lambda d: d.find_element("id", "message").text if "reject" in d.find_element("id", "message").text
               else None, "the refusal")
    assert msg == "comment: say why you reject (at least 3 characters)"
    assert "approved: version 2" in driver.find_element("id", "approved-badge").text
    sign(driver, "rejected", "carol", "CD3 cut lowered into the CD3- shoulder")
    wait(driver, lambda d: d.find_element("id", "approved-badge").text == "rejected: version 2", "the rejection")
    approved, rejected_by = [v.row for v in service.signatures(PID) if v.row.meaning != "reviewed"]
    line = driver.find_element("css selector", f'[data-signature="{approved.id}"]').text   # dave's approval: valid, not the decision
    assert f" VALID - not the decision: rejected after it by Carol Tester (carol) on " in line and \
        line.endswith(f" UTC (signature {rejected_by.id})"), line
    # the release section states the rejection (it said "draft release status: pass once these gates are approved")
    rejected = wait(driver, lambda d: status(d) if "rejected" in status(d) else None, "the release status after the rejection")
    assert re.fullmatch(r"release status: rejected \(version 2 rejected by Carol Tester \(carol\) on \d{4}-\d\d-\d\d "
                        r"\d\d:\d\d:\d\d UTC: \u201cCD3 cut lowered into the CD3- shoulder\u201d; criteria on its gates: pass; "
                        r"criteria on the automatic gates: fail\)", rejected), rejected
    driver.get(base + "/")   # the list tells a rejected product from one not decided yet
    cells = [td.text for td in driver.find_element("link text", PID).find_elements("xpath", "../../td")]
    assert cells[2] == "rejected: version 2", cells
    assert "0 approved, 1 rejected, 1 neither;" in " ".join(driver.find_element("id", "run-counts").text.split())

    open_product(driver, base, "alice", version=2)   # re-opened: alice raises the cut a little
    wait(driver, lambda d: draft_pct(d), "the CD3+ % label")
    drag_cd3(driver, 6)
    wait(driver, lambda d: d.find_elements("css selector", 'tr.changed[data-row="surface|CD3+"]'), "the draft")
    driver.find_element("id", "reason").send_keys("CD3 cut raised above the shoulder (carol's rejection)")
    driver.find_element("id", "save-button").click()
    wait(driver, lambda d: "gate version 3" in d.find_element("id", "version-badge").text, "version 3")
    lines = [e.text for e in driver.find_elements("css selector", "[data-signature]")]
    assert len(lines) == 3 and all("VOID - void: gates changed to version 3 after signing" in t for t in lines), lines
    # the versions signed before name the version that replaced them, linked
    link = driver.find_element("css selector", '#version-2 a[data-replaced-by="3"]')
    assert link.text == "replaced by version 3" and link.get_attribute("href").endswith("#version-3")
    assert driver.find_element("id", "version-3").text.endswith("(current version)")
    open_product(driver, base, "dave", version=3)
    sign(driver, "approved for release", "dave", "checked against the FMO")
    wait(driver, lambda d: "approved: version 3" in d.find_element("id", "approved-badge").text, "the new approval")

    driver.get(base + "/")
    driver.find_element("link text", "audit trail (CSV)").click()
    path = wait(driver, lambda d: next(iter(tmp_path.glob("audit.csv")), None), "the audit trail download")
    time.sleep(0.3)
    entries = [e for e in csv.DictReader(path.open(encoding="utf-8")) if e["product_id"] == PID]
    steps = [(e["username"], e["action"], e["reason"]) for e in entries if e["action"] != "import_product"]
    assert steps == [
        ("alice", "save_gates", "CD3 dim cells are T cells (FMO overlays)"),
        ("alice", "deviation", deviation),
        ("alice", "sign", "reviewed"),
        ("dave", "sign", "approved for release"),
        # her first try, without a comment: refused after her password, audited (authenticate, authorise, then content)
        ("carol", "signature_refused", "rejected of version 2: comment: say why you reject (at least 3 characters)"),
        ("carol", "sign", "CD3 cut lowered into the CD3- shoulder"),
        ("alice", "save_gates", "CD3 cut raised above the shoulder (carol's rejection)"),
        ("dave", "sign", "checked against the FMO")]
    saves = [e for e in entries if e["action"] == "save_gates"]
    v1_low = json.loads(service.version(PID, 1).gates_json)["tubes"]["surface"]["gates"]["CD3+"]["low"]
    v3_low = json.loads(service.version(PID, 3).gates_json)["tubes"]["surface"]["gates"]["CD3+"]["low"]
    lows = [(json.loads(e["before_json"])["gates"]["surface/CD3+"]["low"], json.loads(e["after_json"])["gates"]["surface/CD3+"]["low"])
            for e in saves]
    assert lows == [(v1_low, saved["tubes"]["surface"]["gates"]["CD3+"]["low"]),
                    (saved["tubes"]["surface"]["gates"]["CD3+"]["low"], v3_low)]
    signs = [json.loads(e["after_json"]) for e in entries if e["action"] == "sign"]
    assert [(s["username"], s["meaning"], s["version"]) for s in signs] == [
        ("alice", "reviewed", 2), ("dave", "approved for release", 2), ("carol", "rejected", 2),
        ("dave", "approved for release", 3)]
    assert all(e["at"].endswith("Z") and len(e["at"]) == 27 for e in entries)
    with service.factory() as db:
        assert audit.verify(db).ok
    assert_no_script_errors(driver)


def test_a_flagged_product_says_its_runs_release_is_held_not_only_automatic_pass(driver, flagged_out, tmp_path):
    """TIL002 without its CD3 FMO: its CD3+ gate needs review, every criterion passes on the automatic
    gates, and the run's release (phenotypes.csv, the index, the report) is 'not evaluable'. The page
    said 'draft release status: pass (automatic: pass)', as if the lot passed; now it says the draft's
    status is the release once these gates are approved, labels the automatic gates' criteria as such,
    and states the run's release with the criterion its flags hold."""
    import pandas as pd

    from tilpheno.review.web import create_app

    pid = "TIL002"
    phen = pd.read_csv(flagged_out / "phenotypes.csv", dtype=str, keep_default_na=False).set_index("product_id")
    assert phen.loc[pid, "release_status"] == "not evaluable"
    service = make_service(flagged_out, database_url("sqlite", tmp_path))
    try:
        with serving(create_app(service), driver) as base:
            open_product(driver, base, pid=pid)
            status = wait(driver, lambda d: d.find_element("id", "release-status").text, "the release status")
            assert status == "draft release status: pass once these gates are approved (criteria on the automatic gates: pass)"
            assert driver.find_element("id", "run-release").text == (
                f"the run's release: {phen.loc[pid, 'release_status']} (gating needs review; "
                "CD3+ T cells awaits review of missing_fmo (CD3+), fallback_gate (CD3+))")
    finally:
        service.factory.kw["bind"].dispose()


def test_approving_a_rejected_version_shows_the_rejection_and_needs_it_acknowledged(driver, server):
    """Carol rejected version 1 saying why. Dave, opening it to approve, sees her rejection (who,
    when, why) where he signs; approving without ticking that he has read it is refused, naming
    the rejection, and the product stays rejected; ticked, with his reason, it is approved, and
    the audit trail holds both: the rejection, and the approval naming the rejection it overrules."""
    service, base = server
    driver.get_log("browser")
    with service.factory() as db:
        carol = db.scalar(select(User).where(User.username == "carol"))
    rejection = service.sign(PID, carol.id, PASSWORDS["carol"], "rejected", 1, {}, "CD3 valley too high")
    open_product(driver, base, "dave")
    assert driver.find_element("id", "approved-badge").text == "rejected: version 1"
    notice = wait(driver, lambda d: d.find_element("id", "rejection-notice").text, "the rejection where dave signs")
    assert "Version 1 was rejected by Carol Tester (carol) on" in notice and "CD3 valley too high" in notice
    sign(driver, "approved for release", "dave")
    msg = wait(driver, lambda d: d.find_element("id", "message").text if "overrules" in d.find_element("id", "message").text
               else None, "the refusal")
    assert "version 1 was rejected by Carol Tester (carol)" in msg and "'CD3 valley too high'" in msg, msg
    assert service.decision(PID) == ("rejected", 1)
    driver.find_element("id", "overrule-check").click()
    driver.find_element("id", "comment").send_keys("valley at the FMO's 99.5th percentile: cut is right")
    driver.find_element("id", "oos-justification").send_keys(OOS_REASON)   # TIL001 fails CD3+ > 90 %: its own field
    driver.find_element("id", "sign-password").send_keys(PASSWORDS["dave"])
    driver.find_element("id", "sign-button").click()
    wait(driver, lambda d: d.find_element("id", "approved-badge").text == "approved: version 1", "the approval")
    assert not driver.find_elements("id", "rejection-notice")
    lines = {int(e.get_attribute("data-signature")): e.text for e in driver.find_elements("css selector", "[data-signature]")}
    approval = service.signatures(PID)[-1].row
    # the rejection stays valid (bound to these data) but is no longer the decision: its line says so, naming the approval
    assert re.search(r" VALID - not the decision: approved for release over it by Dave Tester \(dave\) on \d{4}-\d\d-\d\d "
                     rf"\d\d:\d\d:\d\d UTC \(signature {approval.id}\); comment: \u201cCD3 valley too high\u201d$",
                     lines[rejection.id]), lines
    assert "not the decision" not in lines[approval.id], lines
    with service.factory() as db:
        entries = db.scalars(select(AuditEntry).where(AuditEntry.product_id == PID, AuditEntry.action.in_(
            ["sign", "signature_refused"])).order_by(AuditEntry.seq)).all()
    assert [(e.username, e.action) for e in entries] == [("carol", "sign"), ("dave", "signature_refused"),
                                                         ("dave", "sign")]
    assert json.loads(entries[-1].before_json)["overrules"]["signature_sha256"] == rejection.signature_sha256
    assert entries[-1].reason == "valley at the FMO's 99.5th percentile: cut is right"
    assert json.loads(entries[-1].before_json)["out_of_specification"]["justification"] == OOS_REASON
    assert_no_script_errors(driver)


def test_a_save_that_would_void_an_approval_asks_first_naming_it(driver, server):
    """Dave approved version 1 for release. Alice moves the CD3 cut and saves: before anything is
    sent the page asks whether to void Dave's approval, naming it (who, when, which version);
    "cancel" saves nothing and the approval stands; "OK" saves version 2 and the approval is void."""
    service, base = server
    driver.get_log("browser")
    with service.factory() as db:
        dave = db.scalar(select(User).where(User.username == "dave"))
    approval = service.sign(PID, dave.id, PASSWORDS["dave"], "approved for release", 1, approval_resolutions(service, PID),
                            oos_justification=OOS_REASON)
    open_product(driver, base, "alice")
    assert driver.find_element("id", "approved-badge").text == "approved: version 1"
    start = wait(driver, lambda d: draft_pct(d), "the CD3+ % label")
    drag_cd3(driver, 40)
    wait(driver, lambda d: draft_pct(d) != start, "the recomputed CD3+ %")
    driver.find_element("id", "reason").send_keys("CD3 dim tail is debris")
    driver.find_element("id", "save-button").click()
    alert = wait(driver, lambda d: d.switch_to.alert, "the question before the approval is voided")
    when = approval.signed_at[:19].replace("T", " ")
    assert (f"voids the approval for release of version 1 by Dave Tester (dave) on {when} UTC" in alert.text), alert.text
    alert.dismiss()
    wait(driver, lambda d: "Not saved" in d.find_element("id", "message").text, "the cancelled save")
    assert [v.version for v in service.versions(PID)] == [1] and service.decision(PID) == ("approved for release", 1)
    driver.find_element("id", "save-button").click()
    wait(driver, lambda d: d.switch_to.alert, "the question again").accept()
    wait(driver, lambda d: "saved version 2" in d.find_element("id", "message").text, "saved version 2")
    assert service.decision(PID) is None
    assert_no_script_errors(driver)


def test_a_draft_with_unsaved_changes_is_not_signed_as_if_it_were_the_saved_version(driver, server):
    """Alice moves the CD3 cut: the tables and release status now show the draft's numbers. A
    signature signs the saved version, not the draft, so signing now would put her name under
    numbers other than those on her screen: the page refuses, naming the unsaved gate, and stores
    nothing; after "reset draft" she signs the saved version."""
    service, base = server
    driver.get_log("browser")
    open_product(driver, base, "alice")
    start = wait(driver, lambda d: draft_pct(d), "the CD3+ % label")
    drag_cd3(driver, 40)
    wait(driver, lambda d: draft_pct(d) != start, "the draft's CD3+ %")
    sign(driver, "reviewed", "alice")
    msg = wait(driver, lambda d: d.find_element("id", "message").text if "Not signed" in d.find_element("id", "message").text
               else None, "the refusal")
    assert "unsaved changes (surface/CD3+)" in msg and "saved version 1" in msg, msg
    assert service.signatures(PID) == []
    driver.find_element("id", "reset-button").click()
    wait(driver, lambda d: draft_pct(d) == start, "the draft reset")
    driver.find_element("id", "sign-password").send_keys(PASSWORDS["alice"])
    driver.find_element("id", "sign-button").click()
    wait(driver, lambda d: "signed version 1 as 'reviewed'" in d.find_element("id", "message").text, "the signature")
    assert [(v.row.username, v.row.version, v.valid) for v in service.signatures(PID)] == [("alice", 1, True)]
    assert_no_script_errors(driver)


def test_applying_a_gate_to_an_approved_product_asks_first_naming_the_approval(driver, server):
    """Dave approved TIL002 for release. Alice applies TIL001's CD3+ gate to TIL002 from the page:
    she is asked first, the question naming Dave's approval; "cancel" applies nothing and the
    approval stands; "OK" applies it (a new version of TIL002, the approval void)."""
    from selenium.webdriver.support.ui import Select

    service, base = server
    driver.get_log("browser")
    target = "TIL002"
    with service.factory() as db:
        dave = db.scalar(select(User).where(User.username == "dave"))
    service.ensure_imported(target)
    service.sign(target, dave.id, PASSWORDS["dave"], "approved for release", 1, approval_resolutions(service, target))
    open_product(driver, base, "alice")
    Select(driver.find_element("id", "apply-gate")).select_by_value("surface|CD3+")
    Select(driver.find_element("id", "apply-products")).select_by_value(target)
    driver.find_element("id", "apply-reason").send_keys("same CD3 valley across the batch")
    driver.find_element("id", "apply-button").click()
    alert = wait(driver, lambda d: d.switch_to.alert, "the question before the approval is voided")
    assert f"the approval for release of {target} version 1 by Dave Tester (dave)" in alert.text, alert.text
    alert.dismiss()
    wait(driver, lambda d: "Not applied" in d.find_element("id", "message").text, "the cancelled apply")
    assert [v.version for v in service.versions(target)] == [1] and service.decision(target) == ("approved for release", 1)
    driver.find_element("id", "apply-button").click()
    wait(driver, lambda d: d.switch_to.alert, "the question again").accept()
    wait(driver, lambda d: f"{target} v2" in d.find_element("id", "message").text, "the applied gate")
    assert service.decision(target) is None and service.version(target).created_by == "alice"
    assert_no_script_errors(driver)


def test_an_approval_signed_while_the_page_was_open_is_named_before_a_save_voids_it(driver, server):
    """Alice opens version 1 (not approved) and moves the CD3 cut; Dave approves version 1 meanwhile.
    Her save used to void his approval unasked (the page asked only from the state it had loaded).
    Now the server refuses it and the page asks, naming Dave's approval; "cancel" saves nothing and
    keeps her draft on the page; "OK" saves version 2, the trail naming the approval it voided."""
    service, base = server
    driver.get_log("browser")
    open_product(driver, base, "alice")
    assert driver.find_element("id", "approved-badge").text == "not approved"
    start = wait(driver, lambda d: draft_pct(d), "the CD3+ % label")
    drag_cd3(driver, 40)
    moved = wait(driver, lambda d: draft_pct(d) if draft_pct(d) != start else None, "the recomputed CD3+ %")
    with service.factory() as db:
        dave = db.scalar(select(User).where(User.username == "dave"))
    approval = service.sign(PID, dave.id, PASSWORDS["dave"], "approved for release", 1, approval_resolutions(service, PID),
                            oos_justification=OOS_REASON)
    driver.find_element("id", "reason").send_keys("CD3 dim tail is debris")
    driver.find_element("id", "save-button").click()
    alert = wait(driver, lambda d: d.switch_to.alert, "the question before the approval is voided")
    when = approval.signed_at[:19].replace("T", " ")
    assert f"saving voids the approval for release of {PID} version 1 by Dave Tester (dave) at {when} UTC" in alert.text
    alert.dismiss()
    msg = wait(driver, lambda d: d.find_element("id", "message").text if "Not saved" in d.find_element("id", "message").text
               else None, "the cancelled save")
    assert "Dave Tester (dave)" in msg and "draft is kept" in msg, msg
    assert draft_pct(driver) == moved and driver.find_element("id", "reason").get_attribute("value")
    assert [v.version for v in service.versions(PID)] == [1] and service.decision(PID) == ("approved for release", 1)
    driver.find_element("id", "save-button").click()
    wait(driver, lambda d: d.switch_to.alert, "the question again").accept()
    wait(driver, lambda d: "saved version 2" in d.find_element("id", "message").text, "saved version 2")
    assert service.decision(PID) is None
    with service.factory() as db:
        entry = db.scalars(select(AuditEntry).where(AuditEntry.action == "save_gates")).one()
    assert json.loads(entry.before_json)["voids_approval"]["signature_id"] == approval.id
    assert_no_script_errors(driver)


def test_a_flagged_gate_is_the_first_plot_with_its_flag_in_full(driver, server, monkeypatch):
    """A self-check flag on a gate (here the live gate's no_second_peak, with its size and what to
    look at) is shown in full on that gate's plot, and that plot is the first on the page; an info
    flag (sized below its review limit) is shown in full on its gate's plot as a note; a flag on an
    FMO file's gate is shown on the threshold that FMO sets, naming the file."""
    import pandas as pd

    service, base = server
    message = ("live (7AAD): no positive density peak; all peaks taken as negative, cut 4 SD above them at 0.3791; "
               "size: moving the cut to 0.420 changes cd3_pct_of_live_lymph by 2.4 points (review above 2); "
               "look at the 7AAD histogram of the parent for a positive population")
    flag = {"product_id": PID, "file": "TIL001_surface_stain.fcs", "gate": "live", "code": "no_second_peak",
            "severity": "warning", "needs_review": "True", "message": message}
    note = {**flag, "gate": "CD3+", "code": "cut_in_dense_region", "severity": "info", "needs_review": "False",
            "message": "CD3+ (CD3): the cut 0.422 lies where events are dense; size: moving the cut to 0.392, 0.452 "
                       "changes cd3_pct_of_live_lymph by 0.8 points (review above 2)"}
    fmo = {**flag, "file": "TIL001_surface_FMO_CD4.fcs", "message": "live (7AAD): no positive density peak"}
    monkeypatch.setattr(service.source, "qc", pd.concat([service.source.qc, pd.DataFrame([flag, note, fmo])],
                                                        ignore_index=True))
    driver.get_log("browser")
    open_product(driver, base)
    first = wait(driver, lambda d: d.find_element("css selector", "#plots [data-plot]"), "the first plot")
    assert first.get_attribute("data-plot") == "surface|live"
    shown = first.find_element("css selector", '[data-flag="no_second_peak"]')
    assert shown.is_displayed() and shown.text == "warning no_second_peak: " + message
    # a flag that needs no review is shown in full on its gate's plot, as a note (the plot not marked)
    cd3 = driver.find_element("css selector", '[data-plot="surface|CD3+"]')
    assert cd3.find_element("css selector", '[data-note="cut_in_dense_region"]').text == "info cut_in_dense_region: " + note["message"]
    assert "flagged" not in cd3.get_attribute("class")
    # a flag on the CD4 FMO's own live gate: on the CD4+ threshold it sets, naming the FMO file
    cd4 = driver.find_element("css selector", '[data-plot="surface|CD4+"]')
    assert cd4.find_element("css selector", '[data-flag="no_second_peak"]').text == (
        "warning no_second_peak (on TIL001_surface_FMO_CD4.fcs): live (7AAD): no positive density peak")
    assert_no_script_errors(driver)


def test_a_draft_outlives_an_expired_session(driver, server):
    """Alice moves the CD3 cut and types a reason; her 8-hour session ends before she saves. The
    save used to answer 'session invalid or expired' and the login after it lost the draft. Now the
    page says the draft is kept in this browser; carol, logging in at the same browser, is offered
    nothing; alice, logging in again, gets her draft and reason back with a notice and saves them
    (the kept draft is then forgotten)."""
    from sqlalchemy import update

    from tilpheno.review.models import LoginSession

    service, base = server
    driver.get_log("browser")
    open_product(driver, base, "alice")
    start = wait(driver, lambda d: draft_pct(d), "the CD3+ % label")
    dragged_and_shown(driver, 40)
    moved = draft_pct(driver)
    assert moved != start
    driver.find_element("id", "reason").send_keys("CD3 dim tail is debris")
    with service.factory() as db:   # the session's 8 hours are over
        alice = db.scalar(select(User).where(User.username == "alice"))
        db.execute(update(LoginSession).where(LoginSession.user_id == alice.id).values(expires_at="2000-01-01T00:00:00.000000Z"))
        db.commit()
    driver.find_element("id", "save-button").click()
    msg = wait(driver, lambda d: d.find_element("id", "message").text if "expired" in d.find_element("id", "message").text
               else None, "the expired session")
    assert "draft is kept in this browser" in msg, msg
    log_in(driver, base, "carol")   # another user at this browser: nothing of alice's
    time.sleep(1.0)
    assert "Restored" not in driver.find_element("id", "message").text and draft_pct(driver) == start
    log_in(driver, base, "alice")
    msg = wait(driver, lambda d: d.find_element("id", "message").text if "Restored" in d.find_element("id", "message").text
               else None, "the restored draft")
    assert "(surface/CD3+)" in msg and "not saved" in msg, msg
    wait(driver, lambda d: draft_pct(d) == moved, "the restored draft's CD3+ %")
    assert driver.find_element("id", "reason").get_attribute("value") == "CD3 dim tail is debris"
    driver.find_element("id", "save-button").click()
    wait(driver, lambda d: "saved version 2" in d.find_element("id", "message").text, "saved version 2")
    saved = service.version(PID, 2)
    assert saved.created_by == "alice" and saved.reason == "CD3 dim tail is debris"
    res = json.loads(saved.gates_json)["tubes"]["surface"]["gates"]["CD3+"]
    assert res != json.loads(service.version(PID, 1).gates_json)["tubes"]["surface"]["gates"]["CD3+"]
    wait(driver, lambda d: kept_draft(d, "alice") is None, "the saved draft forgotten")
    assert_no_script_errors(driver)


@pytest.mark.parametrize("population, rule, label, reason", [
    ("live", "valley_threshold", "density valley ", "live: cut moved to the density valley candidate"),
    ("singlets", "doublet_valley", "doublet valley ratio ", "singlets: lower edge moved to the doublet valley candidate"),
])
def test_a_density_gate_suggestion_in_one_click(driver, server, population, rule, label, reason):
    """A density gate's recorded alternative, one click away: the live/dead gate (kept side below
    its cut) offers the valley its rule weighed, the singlets wedge (a polygon) the doublet valley of
    its ratio as its lower edge. One click puts the candidate's gate in the draft, the server's % of
    parent follows (the candidate's own %, computed independently of the page), a reason is
    proposed, and the saved version holds exactly the candidate's gate."""
    from tilpheno.review.regate import candidate_gates, evaluate

    service, base = server
    driver.get_log("browser")
    open_product(driver, base)
    button = wait(driver, lambda d: d.find_element("css selector", f'[data-candidate="surface|{population}|{rule}"]'),
                  f"the {population} gate's suggestions")
    stained = service.source.stained(PID)["surface"]
    gates = json.loads(service.version(PID).gates_json)["tubes"]["surface"]["gates"]
    masks = evaluate(stained.strategy, stained.tube, gates)
    want = next(c for c in candidate_gates(stained, gates, masks, population,
                                           service.source.candidates(PID)["surface"][population]) if c["rule"] == rule)
    assert button.text.startswith(label)

    def pct(d):
        text = d.find_element("css selector", f'[data-pct="surface|{population}"]').text
        return float(re.search(r"draft ([0-9.]+)%", text).group(1))

    # (TIL001's doublet valley moves the singlets % by 0.008 points only: still beyond the label's rounding)
    assert abs(wait(driver, pct, f"the {population} % label") - want["pct_of_parent"]) > 0.0051
    button.click()
    wait(driver, lambda d: abs(pct(d) - want["pct_of_parent"]) <= 0.0051, "the draft % at the candidate")
    assert reason in driver.find_element("id", "reason").get_attribute("value")
    driver.find_element("id", "save-button").click()
    wait(driver, lambda d: "saved version 2" in d.find_element("id", "message").text, "saved version 2")
    moved = {"vertices": want["vertices"]} if "vertices" in want else {"high": want["value"]}
    assert json.loads(service.version(PID).gates_json)["tubes"]["surface"]["gates"][population] == {**gates[population], **moved}
    assert_no_script_errors(driver)


def test_a_gate_the_run_could_not_place_is_shown_with_its_flag(driver, review_out, tmp_path, monkeypatch):
    """A gate_failed flag (CD4+: no gate placed) had no plot on the page; now its card comes first
    with the flag in full, the note that there is no gate, CD3+'s events drawn and nothing to drag;
    it is not offered to apply to other products; the page raises no script error."""
    import pandas as pd

    from tilpheno.review.regate import ReviewSource
    from tilpheno.review.web import create_app

    source = ReviewSource(review_out)
    message = "CD4+ (CD4): the CD4 FMO has no events in CD3+; no threshold"
    flag = {"product_id": PID, "file": "TIL001_surface_stain.fcs", "gate": "CD4+", "code": "gate_failed",
            "severity": "error", "needs_review": "True", "message": message}
    monkeypatch.setattr(source, "qc", pd.concat([source.qc, pd.DataFrame([flag])], ignore_index=True))
    automatic = source.automatic

    def without_cd4(pid):
        gates = automatic(pid)
        del gates["tubes"]["surface"]["gates"]["CD4+"]
        return gates
    monkeypatch.setattr(source, "automatic", without_cd4)
    url = database_url("sqlite", tmp_path)
    service = make_service(review_out, url, source)
    with serving(create_app(service), driver) as base:
        driver.get_log("browser")
        open_product(driver, base)
        first = wait(driver, lambda d: d.find_element("css selector", "#plots [data-plot]"), "the first plot")
        assert first.get_attribute("data-plot") == "surface|CD4+"
        assert first.find_element("css selector", '[data-flag="gate_failed"]').text == "error gate_failed: " + message
        assert "could not place this gate" in first.find_element("css selector", '[data-no-gate="surface|CD4+"]').text
        assert not first.find_elements("css selector", "[data-handle]")
        painted = driver.execute_script(
            "const c = arguments[0].querySelector('canvas'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] === 91 && d[i + 2] === 168) n++; return n;", first)
        assert painted > 500   # the histogram's bars (#5b7fa8)
        options = [o.get_attribute("value") for o in driver.find_elements("css selector", "#apply-gate option")]
        assert "surface|CD4+" not in options and "surface|CD8+" in options
        wait(driver, lambda d: d.find_element("css selector", '[data-handle="surface|CD3+|low-knob"]'), "the other plots")
        assert_no_script_errors(driver)
    service.factory.kw["bind"].dispose()


def test_a_server_on_an_earlier_servers_port_restores_none_of_its_drafts(driver, review_out, review_source, tmp_path):
    """Two review apps served one after the other on the same port of 127.0.0.1 are one origin to the
    browser: a draft alice left on the first (a moved CD3 cut, kept in localStorage) must not be
    restored on the second's product page (its database knows nothing of it, and a restored draft
    re-draws the plots under a test's feet: stop 58's CI failed on a candidate button gone stale so).
    :func:`serving` clears the origin's storage before it serves."""
    from tilpheno.review.web import create_app

    url = database_url("sqlite", tmp_path)
    with serving(create_app(make_service(review_out, url, review_source)), driver) as base:
        open_product(driver, base, "alice")
        start = wait(driver, lambda d: draft_pct(d), "the CD3+ % label")
        dragged_and_shown(driver, 40)
        assert draft_pct(driver) != start
        wait(driver, lambda d: kept_draft(d, "alice"), "alice's draft kept in the browser")
    port = int(base.rsplit(":", 1)[1])
    again = database_url("sqlite", tmp_path / "again")
    (tmp_path / "again").mkdir()
    with serving(create_app(make_service(review_out, again, review_source)), driver, port=port) as base:
        open_product(driver, base, "alice")
        assert wait(driver, lambda d: draft_pct(d), "the CD3+ % label") == start
        time.sleep(1.0)   # a restored draft would have said so by now
        assert "Restored" not in driver.find_element("id", "message").text
        assert kept_draft(driver, "alice") is None


def test_log_out_forgets_the_users_kept_drafts_but_not_anothers(driver, server):
    """A draft kept in the browser's storage (for an expired session) stayed there after alice logged
    out: the next person at the browser's profile could read it, and alice's next login restored it.
    Now 'Log out' (on the product page, or on the list) removes alice's kept drafts, not carol's
    (hers survive, as after an expiry); alice's next login restores nothing."""
    service, base = server
    hers = "tilpheno-draft|carol|TIL002"
    for page in ("product", "list"):
        open_product(driver, base, "alice")
        driver.execute_script("window.localStorage.setItem(arguments[0], arguments[1]);", hers, '{"edited": []}')
        start = wait(driver, lambda d: draft_pct(d), "the CD3+ % label")
        drag_cd3(driver, 40)
        wait(driver, lambda d: kept_draft(d, "alice"), "the draft kept in the browser")
        driver.execute_script("window.localStorage.setItem(arguments[0], '{}');", "tilpheno-draft|alice|TIL002")
        if page == "list":
            driver.get(base + "/")
            wait(driver, lambda d: d.find_element("css selector", 'a[href="/products/TIL001"]'), "the product list")
        driver.find_element("css selector", 'form[action="/logout"] button').click()
        wait(driver, lambda d: d.find_element("id", "login-button"), "the login page")
        assert kept_draft(driver, "alice") is None and kept_draft(driver, "alice", "TIL002") is None
        assert kept_draft(driver, "carol", "TIL002") == '{"edited": []}'
        log_in(driver, base, "alice")
        time.sleep(1.0)
        assert "Restored" not in driver.find_element("id", "message").text and draft_pct(driver) == start
    driver.execute_script("window.localStorage.clear();")


def test_a_tab_left_open_after_log_out_keeps_no_draft(driver, server):
    """Alice has the product open in one tab and logs out in another. 'Log out' removed her kept
    drafts, but the first tab's next edit kept its draft in the browser's storage again (and said
    so). Now a page loaded before her logout keeps nothing and says why; once she logs in again, a
    product page she opens keeps its draft as before."""
    service, base = server
    open_product(driver, base, "alice")
    start = wait(driver, lambda d: draft_pct(d), "the CD3+ % label")
    first = driver.current_window_handle
    driver.switch_to.new_window("tab")
    driver.get(base + "/")
    driver.find_element("css selector", 'form[action="/logout"] button').click()
    wait(driver, lambda d: d.find_element("id", "login-button"), "the login page")
    second = driver.current_window_handle
    driver.switch_to.window(first)
    drag_cd3(driver, 40)
    msg = wait(driver, lambda d: d.find_element("id", "message").text if "bad" in d.find_element("id", "message").get_attribute(
        "class") else None, "the refused preview")
    assert kept_draft(driver, "alice") is None
    assert "draft is not kept in this browser" in msg, msg
    driver.switch_to.window(second)
    driver.close()
    driver.switch_to.window(first)
    log_in(driver, base, "alice")   # logged in again: a page loaded now keeps its draft
    assert draft_pct(driver) == start
    drag_cd3(driver, 40)
    wait(driver, lambda d: kept_draft(d, "alice"), "the draft kept in the browser")
    driver.execute_script("window.localStorage.clear();")


def test_every_flag_of_one_kind_is_resolved_with_one_resolution(driver, server, monkeypatch):
    """A FlowJo export has no time channel, so each of a product's files gets a no_time_channel
    warning, and approving needed the same resolution typed once per file. Now the page offers one
    field for all flags of a kind; the signature still records one resolution per flag (keyed by
    its code, file and place), and a flag of another kind left unresolved still refuses the approval.
    A flag's own field holding only spaces counts as empty (it was sent as that flag's resolution,
    overriding the one for all, and the server refused naming it): it gets the one for all."""
    import pandas as pd
    from selenium.webdriver.support.ui import Select

    service, base = server
    files = sorted(set(service.source.populations_csv.query("product_id == @PID")["file"]))[:3]
    timeless = [{"product_id": PID, "file": f, "gate": "", "code": "no_time_channel", "severity": "warning",
                 "needs_review": "True", "message": "no Time channel: event order may not be acquisition order (e.g. a "
                 "FlowJo export); flow rate and signal over time not checked, no events removed"} for f in files]
    fallback = {**timeless[0], "gate": "CD3+", "code": "fallback_gate", "message": "CD3+ (CD3): threshold from the stained tube"}
    monkeypatch.setattr(service.source, "qc", pd.concat([service.source.qc, pd.DataFrame([*timeless, fallback])],
                                                        ignore_index=True))
    flags = [f for f in service.source.qc_flags(PID) if f["severity"] in ("warning", "error")]
    open_product(driver, base, "dave")
    Select(driver.find_element("id", "meaning")).select_by_value("approved for release")
    box = driver.find_element("css selector", '[data-resolve-all="no_time_channel"]')
    assert "all 3 no_time_channel flags" in box.find_element("xpath", "..").text
    assert not driver.find_elements("css selector", '[data-resolve-all="fallback_gate"]')   # one flag: its own field
    box.send_keys("FlowJo export: acquisition checked in FlowJo")
    driver.find_element("id", "sign-password").send_keys(PASSWORDS["dave"])
    driver.find_element("id", "sign-button").click()
    wait(driver, lambda d: "resolution of QC flag fallback_gate" in d.find_element("id", "message").text, "the refusal")
    assert service.signatures(PID) == []
    for field in driver.find_elements("css selector", "[data-resolution]"):
        if field.get_attribute("data-code") != "no_time_channel":
            field.send_keys("threshold checked on the plot")
    driver.find_element("css selector", '[data-code="no_time_channel"]').send_keys("   ")
    driver.find_element("id", "oos-justification").send_keys(OOS_REASON)   # TIL001 fails CD3+ > 90 %: out of specification
    driver.find_element("id", "sign-password").send_keys(PASSWORDS["dave"])
    driver.find_element("id", "sign-button").click()
    wait(driver, lambda d: "signed version 1" in d.find_element("id", "message").text, "the approval")
    [sig] = service.signatures(PID)
    assert json.loads(sig.row.qc_resolutions_json) == {
        f"{f['code']}:{f['file']}:{i}": "FlowJo export: acquisition checked in FlowJo" if f["code"] == "no_time_channel"
        else "threshold checked on the plot" for i, f in enumerate(flags)}
    assert sum(f["code"] == "no_time_channel" for f in flags) == 3


def stained_control_run(processed_once) -> tuple[Path, Path, pd.DataFrame]:
    """:func:`review_support.processed_with_stained_control` of PID, run once per module
    (``processed_once``: each call gets the folder back as the run left it, at the same path, so
    run.json's recorded input paths hold and a test may replace an input): (the output folder, the
    inputs folder, the product's manifest rows)."""
    from review_support import processed_with_stained_control

    work = processed_once("stained_control", lambda folder: processed_with_stained_control(folder, PID))
    return work / "out", work / "in", pd.read_csv(work / "manifest.csv", dtype=str, keep_default_na=False)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_unstained_control_changed_since_the_run_is_said_on_the_page(driver, tmp_path, kind, processed_once):
    """TIL001's unstained control is a copy of a stained tube (flagged unstained_positive); after the
    run it is replaced by another. The re-run that offers the unstained_cut candidates leaves it out
    (test_review_web); the page's message bar says so, naming the file and the reason, and no
    'unstained' candidate button is offered."""
    from review_support import SAMPLE
    from tilpheno.review.web import create_app

    out, inputs, manifest = stained_control_run(processed_once)
    qc = pd.read_csv(out / "qc.csv", dtype=str, keep_default_na=False)
    assert "unstained_positive" in set(qc["code"])
    control = manifest.loc[manifest["role"] == "unstained", "file"].iloc[0]
    shutil.copy(SAMPLE / "TIL002_surface_stain.fcs", inputs / control)   # changed since the run

    url = database_url(kind, tmp_path)
    service = make_service(out, url)
    driver.get_log("browser")
    try:
        with serving(create_app(service), driver) as base:
            open_product(driver, base)
            wait(driver, lambda d: d.find_element("css selector", '[data-candidate="surface|CD3+|automatic"]'),
                 "the suggested cuts")
            text = wait(driver, lambda d: d.find_element("id", "message").text
                        if "unstained-control" in d.find_element("id", "message").text else None,
                        "the left-out control in the message bar")
            assert text == (f"No unstained-control candidate: {inputs / control}: SHA-256 differs from run.json "
                            "(the file changed since the run)")
            assert "bad" in driver.find_element("id", "message").get_attribute("class")
            time.sleep(1.0)   # nothing the page does next (plots, preview) replaces it
            assert driver.find_element("id", "message").text == text
            assert not driver.find_elements("css selector", '[data-candidate$="|unstained_cut"]')
            assert_no_script_errors(driver)
    finally:
        service.factory.kw["bind"].dispose()
        drop_schema(url)


def store_unjustified_version_2(service) -> None:
    """TIL001's version 2 by alice: its CD3 cut lowered past the run's determined CD3 fail, stored as
    a save before deviations were recorded (no justification)."""
    from tilpheno.review.service import transaction

    gate = json.loads(service.version(PID).gates_json)["tubes"]["surface"]["gates"]["CD3+"]
    gate["low"] -= 0.2
    change = service._gate_change(PID, 1, {"tubes": {"surface": {"gates": {"CD3+": gate}}}})
    transaction(service.factory, lambda db: service._store(db, "alice", change, "CD3 dim cells are T cells", "adjusted",
                                                            expect_seq=None, relevant=None))


def test_a_version_overturning_a_determined_fail_without_a_justification_gets_one_on_the_page(driver, server):
    """TIL001's version 2 lowers its CD3 cut past the run's determined CD3 fail and was stored before
    deviations were recorded: the page said "no deviation justification recorded" and offered no way
    to add one, while its approval is refused until one is added. The page now asks for it where
    one signs; carol records it (its own ``deviation`` entry), the line then names her reason, the
    question goes, and dave approves."""
    service, base = server
    driver.get_log("browser")
    store_unjustified_version_2(service)
    open_product(driver, base, "carol", version=2)
    asked = wait(driver, lambda d: d.find_element("id", "justify-what").text if d.find_element("id", "justify-form")
                 .is_displayed() else None, "the question for a justification")
    assert asked.startswith("Version 2 overturns the run's determined fail on CD3+ T cells with no deviation "
                            "justification recorded"), asked
    why = "FMO overlay shows the CD3-dim cells are T cells; QA deviation DV-17"
    driver.find_element("id", "justify").send_keys(why)
    driver.find_element("id", "justify-button").click()
    wait(driver, lambda d: not d.find_element("id", "justify-form").is_displayed(), "the question gone")
    line = wait(driver, lambda d: d.find_element("css selector", '[data-deviation="CD3+ T cells"]').text, "the deviation line")
    assert f"reason '{why}', by Carol Tester (carol), at " in line, line
    with service.factory() as db:
        entry = db.scalars(select(AuditEntry).where(AuditEntry.action == "deviation")).one()
    assert (entry.username, entry.reason, json.loads(entry.after_json)["version"]) == ("carol", why, 2)
    open_product(driver, base, "dave", version=2)
    assert not driver.find_element("id", "justify-form").is_displayed()
    sign(driver, "approved for release", "dave")
    wait(driver, lambda d: d.find_element("id", "approved-badge").text == "approved: version 2", "the approval")
    assert_no_script_errors(driver)


def test_an_approval_that_binds_no_control_says_so_beside_valid(driver, server, monkeypatch):
    """An approval made before the controls were bound (its data hash without them) stands VALID and
    is not voided by a replaced control (nothing recorded which control it was made over); the page
    said only VALID. Now its line says 'control digests not recorded at approval', naming TIL001's
    unstained control; a signature made now, which binds it, says nothing more."""
    service, base = server
    old = older_approval(service, monkeypatch, "dose")
    new = service.sign(PID, service_user(service, "carol"), PASSWORDS["carol"], "approved for release", 1,
                       approval_resolutions(service, PID), oos_justification=OOS_REASON)
    open_product(driver, base)
    lines = wait(driver, lambda d: {int(p.get_attribute("data-signature")): p.text
                                    for p in d.find_elements("css selector", "#signatures p[data-signature]")} or None,
                 "the signatures")
    assert (f"VALID - control digests not recorded at approval (signed before they were bound: a replaced "
            f"{PID}_unstained.fcs would not void it)") in lines[old.id]
    assert "VALID; out-of-specification justification: " in lines[new.id] and "not recorded" not in lines[new.id], lines[new.id]   # VALID, nothing beside it


def test_the_product_list_says_what_an_older_approval_does_not_bind(driver, server, monkeypatch):
    """dave's approval of TIL001 made before the panel file and FMO markers were bound (form
    ``study_doses``) is its standing decision: the page said beside VALID what it does not bind, the
    product list said only its approved version. Now the list's row says it too, in the page's words."""
    service, base = server
    old = older_approval(service, monkeypatch, "study_doses")
    note = next(v.note for v in service.signatures(PID) if v.row.id == old.id)
    assert note.startswith("panel file and FMO control markers not recorded at approval"), note
    open_product(driver, base, "carol")
    line = wait(driver, lambda d: d.find_element("css selector", f'#signatures p[data-signature="{old.id}"]').text,
                "the signature")
    assert f"VALID - {note}" in " ".join(line.split()), line
    driver.get(base + "/")
    cell = wait(driver, lambda d: d.find_element("link text", PID), "the product list").find_elements("xpath", "../../td")[2]
    assert " ".join(cell.text.split()) == f"1 (signed approval: {note})", cell.text
    assert_no_script_errors(driver)


def older_approval(service, monkeypatch, form: str):
    """dave's approval of version 1 of TIL001 signed with its data hash of the older ``form``
    (service.data_sha256's), as one made before what that form leaves out was bound."""
    from tilpheno.review import service as module

    hashed = module.data_sha256
    monkeypatch.setattr(module, "data_sha256", lambda *args, **kw: hashed(*args, form=form))
    signed = service.sign(PID, service_user(service, "dave"), PASSWORDS["dave"], "approved for release", 1,
                          approval_resolutions(service, PID), oos_justification=OOS_REASON)
    monkeypatch.setattr(module, "data_sha256", hashed)
    return signed


def service_user(service, name: str) -> int:
    with service.factory() as db:
        return db.scalars(select(User).where(User.username == name)).one().id


def test_approving_a_failing_version_names_what_fails_and_needs_a_justification(driver, server):
    """TIL001 fails CD3+ T cells > 90 % on its gates (87.74 in the run's phenotypes.csv); dave
    approved it for release in one click, the page saying nothing. Now choosing "approved for
    release" names the failed criterion and its value where he signs, with a field of its own for
    the out-of-specification justification (hidden for "reviewed"); signing with only a comment is
    refused saying so (nothing stored); with his justification it is approved, and the page's
    release section says "out-of-specification release" with the criterion and the justification."""
    from selenium.webdriver.support.ui import Select

    service, base = server
    driver.get_log("browser")
    cd3 = service.source.phenotype_row(PID)["cd3_pct_of_live_lymph"]   # the run's value on version 1's gates
    assert cd3 < 90
    named = f"CD3+ T cells (cd3_pct_of_live_lymph > 90 % of live lymphocytes: {cd3:.2f})"
    open_product(driver, base, "dave")
    assert not driver.find_element("id", "oos-notice").is_displayed()   # "reviewed" releases nothing
    assert not driver.find_element("id", "oos-justification").is_displayed()
    Select(driver.find_element("id", "meaning")).select_by_value("approved for release")
    notice = driver.find_element("id", "oos-notice")
    assert notice.is_displayed() and named in notice.text and "out-of-specification release" in notice.text, notice.text
    assert driver.find_element("id", "oos-justification").is_displayed()
    sign(driver, "approved for release", "dave", "plots checked")   # a comment is not the justification
    msg = wait(driver, lambda d: d.find_element("id", "message").text if "out-of-specification" in
               d.find_element("id", "message").text else None, "the refusal")
    assert msg.startswith(f"version 1 of {PID} fails the release criteria {named}"), msg
    assert service.signatures(PID) == [] and not driver.find_elements("id", "oos-release")
    driver.find_element("id", "comment").clear()
    driver.find_element("id", "oos-justification").send_keys(OOS_REASON)
    driver.find_element("id", "sign-password").send_keys(PASSWORDS["dave"])
    driver.find_element("id", "sign-button").click()
    wait(driver, lambda d: d.find_element("id", "approved-badge").text == "approved: version 1", "the approval")
    shown = wait(driver, lambda d: d.find_element("id", "oos-release").text, "the out-of-specification release")
    assert shown.startswith(f"out-of-specification release of version 1: fails {named}; justification {OOS_REASON!r} "
                            "by Dave Tester (dave) at "), shown
    # approved: the release section states the released status (it said "draft release status: fail once these
    # gates are approved"); a draft moved from the approved gates is again what release would be once approved
    status = lambda d: d.find_element("id", "release-status").text   # noqa: E731
    assert status(driver) == ("release status: fail, released out of specification (version 1 approved for release; "
                              "criteria on the automatic gates: fail)")
    drag_cd3(driver, 40)
    assert wait(driver, lambda d: status(d) if status(d).startswith("draft ") else None, "the draft's status") == (
        "draft release status: fail once these gates are approved (criteria on the automatic gates: fail)")
    assert_no_script_errors(driver)


def test_an_unsigned_out_of_specification_justification_is_kept_in_the_browser(driver, server):
    """The reason and the deviation justification are kept in the browser's storage as they are
    typed; the out-of-specification justification (typed to approve TIL001, which fails CD3+ > 90 %)
    was not, so a crash or a closed tab before signing lost it. Now it is kept under the user and
    the product, put back in its field when the product is opened again (saying so, nothing
    signed), and forgotten once the approval is signed."""
    service, base = server
    driver.get_log("browser")
    kept = justification_typed(driver, base)
    assert json.loads(kept)["oos_justification"] == OOS_REASON and json.loads(kept)["edited"] == []
    driver.get(base + f"/products/{PID}")   # the tab closed and opened again: same session, nothing signed
    msg = wait(driver, lambda d: d.find_element("id", "message").text if "Restored" in d.find_element("id", "message").text
               else None, "the restored justification")
    assert msg.startswith("Restored your unsigned out-of-specification justification of ") and "nothing is signed" in msg, msg
    assert driver.find_element("id", "oos-justification").get_attribute("value") == OOS_REASON
    assert service.signatures(PID) == [] and service.current_version(PID) == 1
    sign(driver, "approved for release", "dave")   # the restored justification, nothing typed again
    wait(driver, lambda d: d.find_element("id", "approved-badge").text == "approved: version 1", "the approval")
    [sig] = service.signatures(PID)
    assert sig.valid and sig.row.oos_justification == OOS_REASON
    wait(driver, lambda d: kept_draft(d, "dave") is None, "the signed justification forgotten")
    assert_no_script_errors(driver)


def test_a_reviewed_signature_keeps_the_unsent_out_of_specification_justification(driver, server):
    """Dave types the out-of-specification justification to approve TIL001 (fails CD3+ > 90 %), then
    signs "reviewed" first (the justification's field hidden, not sent). The signature emptied the
    field and forgot its kept copy in the browser: the justification, never signed, was lost. Now a
    signature clears only what it sent: the comment goes, the justification stays in its field and in
    the browser, and the approval signed after it is made with it."""
    service, base = server
    driver.get_log("browser")
    justification_typed(driver, base)
    sign(driver, "reviewed", "dave", "plots checked")
    wait(driver, lambda d: d.find_element("css selector", "#signatures p.valid"), "the reviewed signature")
    [reviewed] = service.signatures(PID)
    assert reviewed.row.meaning == "reviewed" and reviewed.row.comment == "plots checked"
    assert not reviewed.row.oos_justification   # not sent with "reviewed"
    assert driver.find_element("id", "comment").get_attribute("value") == ""   # sent: cleared
    assert driver.find_element("id", "oos-justification").get_attribute("value") == OOS_REASON
    assert json.loads(kept_draft(driver, "dave"))["oos_justification"] == OOS_REASON
    sign(driver, "approved for release", "dave")   # the justification typed before, nothing typed again
    wait(driver, lambda d: d.find_element("id", "approved-badge").text == "approved: version 1", "the approval")
    approval = [s for s in service.signatures(PID) if s.row.meaning == "approved for release"]
    assert len(approval) == 1 and approval[0].valid and approval[0].row.oos_justification == OOS_REASON
    wait(driver, lambda d: kept_draft(d, "dave") is None, "the signed justification forgotten")
    assert_no_script_errors(driver)


def test_an_unsigned_comment_is_kept_in_the_browser(driver, server):
    """The reason, the deviation and the out-of-specification justification are kept in the browser's
    storage as they are typed; the sign form's comment was not, so a closed tab lost a typed comment.
    Now it is kept the same way: put back in its field when the product is opened again (saying so,
    nothing signed), forgotten once a signature with it is made, and forgotten by "Log out"."""
    service, base = server
    driver.get_log("browser")
    comment = "CD3 valley checked against the FMO"
    for leave in ("reload", "log out"):
        open_product(driver, base, "alice")
        driver.find_element("id", "comment").send_keys(comment)
        kept = wait(driver, lambda d: kept_draft(d, "alice"), "the comment kept in the browser")
        assert json.loads(kept)["comment"] == comment and json.loads(kept)["edited"] == []
        if leave == "log out":
            driver.find_element("css selector", 'form[action="/logout"] button').click()
            wait(driver, lambda d: d.find_element("id", "login-button"), "the login page")
            assert kept_draft(driver, "alice") is None
            log_in(driver, base, "alice")
            time.sleep(1.0)
            assert "Restored" not in driver.find_element("id", "message").text
            assert driver.find_element("id", "comment").get_attribute("value") == ""
            continue
        driver.get(base + f"/products/{PID}")   # the tab closed and opened again: same session, nothing signed
        msg = wait(driver, lambda d: d.find_element("id", "message").text if "Restored" in d.find_element("id", "message").text
                   else None, "the restored comment")
        assert msg.startswith("Restored your unsigned comment of ") and "nothing is signed" in msg, msg
        assert driver.find_element("id", "comment").get_attribute("value") == comment
        assert service.signatures(PID) == []
        sign(driver, "reviewed", "alice")   # the restored comment, nothing typed again
        wait(driver, lambda d: d.find_element("css selector", "#signatures p.valid"), "the reviewed signature")
        [sig] = service.signatures(PID)
        assert sig.valid and sig.row.comment == comment
        wait(driver, lambda d: kept_draft(d, "alice") is None, "the signed comment forgotten")
    assert_no_script_errors(driver)


def test_typed_qc_resolutions_and_the_overrule_tick_outlive_a_closed_tab(driver, server, monkeypatch):
    """The browser kept the comment and the out-of-specification justification of an unsigned
    approval, but not the QC flag resolutions nor the tick acknowledging a standing rejection: a
    closed tab (or a crash) lost them. Dave,
    approving TIL001 over carol's rejection, types a resolution for each flag (one for all three
    no_time_channel flags), ticks the rejection and types his comment; the tab closes; opened again
    the page puts each back (saying so, nothing signed) and the approval signed without typing
    anything again holds each resolution. A "reviewed" signature in between keeps the resolutions
    (it does not sign them)."""
    import pandas as pd
    from selenium.webdriver.support.ui import Select

    service, base = server
    driver.get_log("browser")
    files = sorted(set(service.source.populations_csv.query("product_id == @PID")["file"]))[:3]
    timeless = [{"product_id": PID, "file": f, "gate": "", "code": "no_time_channel", "severity": "warning",
                 "needs_review": "True", "message": "no Time channel"} for f in files]
    fallback = {**timeless[0], "gate": "CD3+", "code": "fallback_gate", "message": "CD3+ (CD3): threshold from the stained tube"}
    monkeypatch.setattr(service.source, "qc", pd.concat([service.source.qc, pd.DataFrame([*timeless, fallback])],
                                                        ignore_index=True))
    flags = [f for f in service.source.qc_flags(PID) if f["severity"] in ("warning", "error")]
    service.sign(PID, service_user(service, "carol"), PASSWORDS["carol"], "rejected", 1, {}, "CD3 valley too high")
    open_product(driver, base, "dave")
    Select(driver.find_element("id", "meaning")).select_by_value("approved for release")
    driver.find_element("css selector", '[data-resolve-all="no_time_channel"]').send_keys("FlowJo export: checked in FlowJo")
    own = {f.get_attribute("data-resolution"): f"{f.get_attribute('data-code')} checked on the plot"
           for f in driver.find_elements("css selector", "[data-resolution]") if f.get_attribute("data-code") != "no_time_channel"}
    for k, text in own.items():
        driver.find_element("css selector", f'[data-resolution="{k}"]').send_keys(text)
    wait(driver, lambda d: d.find_element("id", "overrule-check"), "the rejection's tick").click()
    comment = "valley at the FMO's 99.5th percentile: cut is right"
    driver.find_element("id", "comment").send_keys(comment)
    driver.find_element("id", "oos-justification").send_keys(OOS_REASON)
    wait(driver, lambda d: json.loads(kept_draft(d, "dave") or "{}").get("oos_justification"), "the draft kept")
    for leave in ("closed tab", "reviewed signature"):
        if leave == "closed tab":
            driver.get(base + f"/products/{PID}")   # the tab closed and opened again: same session, nothing signed
            msg = wait(driver, lambda d: d.find_element("id", "message").text if "Restored" in d.find_element("id", "message").text
                       else None, "the restored fields")
            assert msg.startswith("Restored your unsigned comment, out-of-specification justification, 2 QC flag resolutions "
                                  "and tick acknowledging the rejection of ") and "nothing is signed" in msg, msg
        else:   # a "reviewed" signature signs no resolution: they stay in their fields (and in the browser)
            Select(driver.find_element("id", "meaning")).select_by_value("reviewed")
            driver.find_element("id", "sign-password").send_keys(PASSWORDS["dave"])
            driver.find_element("id", "sign-button").click()
            wait(driver, lambda d: "signed version 1 as 'reviewed'" in d.find_element("id", "message").text, "the reviewed signature")
            driver.find_element("id", "comment").send_keys(comment)
            Select(driver.find_element("id", "meaning")).select_by_value("approved for release")
        assert driver.find_element("css selector", '[data-resolve-all="no_time_channel"]').get_attribute("value") == \
            "FlowJo export: checked in FlowJo"
        for k, text in own.items():
            assert driver.find_element("css selector", f'[data-resolution="{k}"]').get_attribute("value") == text
        assert driver.find_element("id", "overrule-check").is_selected()
    assert service.decision(PID) == ("rejected", 1)
    driver.find_element("id", "sign-password").send_keys(PASSWORDS["dave"])
    driver.find_element("id", "sign-button").click()
    wait(driver, lambda d: d.find_element("id", "approved-badge").text == "approved: version 1", "the approval")
    approval = service.signatures(PID)[-1].row
    assert (approval.meaning, approval.comment, approval.oos_justification) == ("approved for release", comment, OOS_REASON)
    assert json.loads(approval.qc_resolutions_json) == {
        f"{f['code']}:{f['file']}:{i}": "FlowJo export: checked in FlowJo" if f["code"] == "no_time_channel"
        else own[f"{f['code']}:{f['file']}:{i}"] for i, f in enumerate(flags)}
    wait(driver, lambda d: kept_draft(d, "dave") is None, "the signed fields forgotten")
    assert all(not f.get_attribute("value") for f in driver.find_elements("css selector", "[data-resolution], [data-resolve-all]"))
    assert_no_script_errors(driver)


def test_a_typed_deviation_justification_of_a_saved_version_outlives_a_closed_tab(driver, server):
    """TIL001's version 2 overturns the run's determined CD3 fail with no justification recorded
    (saved before deviations were); carol types one where the page asks for it and the tab closes:
    it was lost. Now it is put back in its field when she opens the product again (saying so,
    nothing recorded), recorded with one click, and then forgotten by the browser."""
    service, base = server
    driver.get_log("browser")
    get = "return window.localStorage.getItem(arguments[0]);"
    store_unjustified_version_2(service)
    open_product(driver, base, "carol", version=2)
    why = "FMO overlay shows the CD3-dim cells are T cells; QA deviation DV-17"
    wait(driver, lambda d: d.find_element("id", "justify-form").is_displayed(), "the question for a justification")
    driver.find_element("id", "justify").send_keys(why)
    wait(driver, lambda d: json.loads(kept_draft(d, "carol") or "{}").get("justify"), "kept")
    driver.get(base + f"/products/{PID}")
    msg = wait(driver, lambda d: d.find_element("id", "message").text if "Restored" in d.find_element("id", "message").text
               else None, "the restored justification")
    assert msg.startswith("Restored your unsigned deviation justification of version 2 of ") and \
        "nothing is signed or recorded until you sign or record it" in msg, msg
    assert driver.find_element("id", "justify").get_attribute("value") == why
    driver.find_element("id", "justify-button").click()
    wait(driver, lambda d: not d.find_element("id", "justify-form").is_displayed(), "the justification recorded")
    with service.factory() as db:
        entry = db.scalars(select(AuditEntry).where(AuditEntry.action == "deviation")).one()
    assert (entry.username, entry.reason) == ("carol", why)
    wait(driver, lambda d: kept_draft(d, "carol") is None, "the recorded justification forgotten")
    assert_no_script_errors(driver)


def processed_100715(tmp, edit=lambda strategy: strategy):
    """100715.fcs (a FACSAria file, no FMO, no unstained control) drafted by new-study, with a release
    criterion on CD4+ of CD3+ (both gates undetermined: one population each), its strategy's text changed by
    ``edit``, processed (tables only) into ``tmp/out``."""
    from typer.testing import CliRunner

    from undetermined_support import FILE, RELEASE
    from tilpheno.cli import app

    (tmp / "fcs").mkdir()
    shutil.copy(FILE, tmp / "fcs" / FILE.name)
    assert CliRunner().invoke(app, ["new-study", str(tmp / "fcs"), "-o", str(tmp / "study")]).exit_code == 0
    (tmp / "study" / "release.yaml").write_text(RELEASE)
    strategy = tmp / "study" / "tube025.yaml"
    strategy.write_text(edit(strategy.read_text()))
    result = CliRunner().invoke(app, ["process", str(tmp / "fcs"), "--study", str(tmp / "study" / "study.yaml"), "--manifest",
                                      str(tmp / "study" / "manifest.csv"), "-o", str(tmp / "out"), "--reports", "none"])
    assert result.exit_code == 0, result.output
    return tmp / "out"


@pytest.fixture(scope="module")
def undetermined_out(tmp_path_factory):
    """:func:`processed_100715` as new-study drafted it."""
    return processed_100715(tmp_path_factory.mktemp("undetermined"))


@pytest.fixture(scope="module")
def undetermined_source(undetermined_out):
    """:func:`undetermined_out` loaded once for the module's databases (as ``review_source`` is for
    ``server``): its tube, automatic gates and suggested cuts are read, not changed, by the tests."""
    from tilpheno.review.regate import ReviewSource

    return ReviewSource(undetermined_out)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_reviewer_accepts_the_held_positive_call(driver, undetermined_source, backend, tmp_path):
    """An undetermined gate (one population, no FMO or unstained control, held as positive) reported no
    number until a reviewer moved its cut: one who agreed with the held call had to move it anyway
    (signing left the values blank). -> each such gate's plot has 'accept the held positive call': the
    draft's tables show the numbers at once, the cut unchanged; saved with a reason it is version 2, its
    gate set recording the decision, the audit's save_gates entry naming it; cd4_pct_of_cd3 is then the
    share of the held gates' events (their masks counted here) and its criterion is tested. Before
    signing, the sign form says which gates stay undetermined (CD8+ ...) and that release stays not
    evaluable on them; the signature's message says so too."""
    from selenium.webdriver.support.ui import Select

    from tilpheno.release import NOT_EVALUABLE
    from tilpheno.review.regate import evaluate, recompute
    from tilpheno.review.web import create_app

    url = database_url(backend, tmp_path)
    service = make_service(undetermined_source.out_dir, url, undetermined_source)
    pid = "Specimen_001"
    try:
        with serving(create_app(service), driver) as base:
            open_product(driver, base, "alice", pid=pid)
            notice = wait(driver, lambda d: d.find_element("id", "undetermined-notice").text, "the undetermined notice")
            assert "tube025/CD3+" in notice and "tube025/CD4+" in notice and "release stays not evaluable" in notice, notice
            for population in ("CD3+", "CD4+"):
                found = f'[data-decide="tube025|{population}"]'
                wait(driver, lambda d: "accept the held positive call" in d.find_element("css selector", found).text,
                     f"{population}'s decision button")
                # the plots are drawn again when the suggested cuts arrive: click the button found then (stale: again)
                wait(driver, lambda d: d.find_element("css selector", found).click() or True, f"{population}'s click")
                wait(driver, lambda d: "withdraw" in d.find_element("css selector", f'[data-decide="tube025|{population}"]').text,
                     f"{population} accepted in the draft")
            driver.find_element("id", "reason").send_keys("one CD3 and one CD4 population: T cells of a T-cell product")
            driver.find_element("id", "save-button").click()
            wait(driver, lambda d: "saved version 2" in d.find_element("id", "message").text, "saved version 2")
            wait(driver, lambda d: "gate version 2" in d.find_element("id", "version-badge").text, "version badge 2")
            saved, automatic = (json.loads(v.gates_json) for v in (service.version(pid), service.automatic_version(pid)))
            assert saved["tubes"]["tube025"]["decided"] == {"CD3+": "positive", "CD4+": "positive"}
            assert saved["tubes"]["tube025"]["gates"] == automatic["tubes"]["tube025"]["gates"]   # no cut moved
            stained = service.source.stained(pid)["tube025"]
            masks = evaluate(stained.strategy, stained.tube, saved["tubes"]["tube025"]["gates"])
            res = recompute(service.source, pid, saved)
            assert res.phenotype["cd4_pct_of_cd3"] == pytest.approx(100 * masks["CD4+"].sum() / masks["CD3+"].sum(), abs=1e-9)
            assert math.isnan(res.phenotype["cd8_pct_of_cd3"])   # CD8+ still undetermined
            [criterion] = [r for r in res.release if r.criterion.column == "cd4_pct_of_cd3"]
            assert criterion.outcome != NOT_EVALUABLE and not criterion.undetermined
            with service.factory() as db:
                entry = db.scalars(select(AuditEntry).where(AuditEntry.action == "save_gates")
                                   .order_by(AuditEntry.seq.desc())).first()
            after = json.loads(entry.after_json)["gates"]
            assert after == {"tube025/CD3+ decided": "positive", "tube025/CD4+ decided": "positive"}, after
            notice = wait(driver, lambda d: d.find_element("id", "undetermined-notice").text, "the notice of version 2")
            assert "tube025/CD8+" in notice and "CD3+" not in notice and "CD4+" not in notice, notice
            Select(driver.find_element("id", "meaning")).select_by_value("reviewed")
            driver.find_element("id", "sign-password").send_keys(PASSWORDS["alice"])
            driver.find_element("id", "sign-button").click()
            said = wait(driver, lambda d: d.find_element("id", "message").text if "signed version 2" in
                        d.find_element("id", "message").text else None, "the signature")
            assert "release stays not evaluable" in said and "tube025/CD8+" in said, said
            assert_no_script_errors(driver)
    finally:
        service.factory.kw["bind"].dispose()
        drop_schema(url)


def test_a_product_that_cannot_be_opened_names_its_release_spec_in_the_heading(driver, tmp_path, processed_once):
    """A product whose state the server refuses (its stained file changed since the run: re-gating
    would not give the run's numbers) showed the refusal, and above the empty release table the
    heading 'Release ()': the spec's name came only with the state -> the page names the run's
    release spec (run.json) itself."""
    from review_support import SAMPLE
    from tilpheno.review.web import create_app

    out, inputs, manifest = stained_control_run(processed_once)
    stained = manifest.loc[(manifest["role"] == "stain") & (manifest["tube"] == "surface"), "file"].iloc[0]
    shutil.copy(SAMPLE / "TIL002_surface_stain.fcs", inputs / stained)   # changed since the run
    spec = json.loads((out / "run.json").read_text())["release_spec"]["name"]
    assert spec
    url = database_url("sqlite", tmp_path)
    service = make_service(out, url)
    driver.get_log("browser")
    try:
        with serving(create_app(service), driver) as base:
            signed_in(driver, base, "alice")
            driver.get(base + f"/products/{PID}")
            message = wait(driver, lambda d: d.find_element("id", "message").text, "the refusal in the message bar")
            assert f"{inputs / stained}: SHA-256 differs from run.json" in message, message
            headings = [h.text for h in driver.find_elements("css selector", ".side h2")]
            assert f"Release ({spec})" in headings, headings
    finally:
        service.factory.kw["bind"].dispose()


def held_counts(service, pid: str, gate_set: dict) -> dict[str, int]:
    """Events per population of tube025 under ``gate_set``'s gates (its masks counted here)."""
    from tilpheno.review.regate import evaluate

    stained = service.source.stained(pid)["tube025"]
    masks = evaluate(stained.strategy, stained.tube, gate_set["tubes"]["tube025"]["gates"])
    return {population: int(mask.sum()) for population, mask in masks.items()}


UNDETERMINED_PID = "Specimen_001"   # 100715.fcs's product


@contextmanager
def undetermined_page(driver, source, backend: str, tmp_path):
    """A review server on ``source`` (a ReviewSource: undetermined_source) with a fresh ``backend`` database,
    alice on its product's page: the service; the database dropped afterwards."""
    from tilpheno.review.web import create_app

    url = database_url(backend, tmp_path)
    service = make_service(source.out_dir, url, source)
    try:
        with serving(create_app(service), driver) as base:
            open_product(driver, base, "alice", pid=UNDETERMINED_PID)
            yield service
    finally:
        service.factory.kw["bind"].dispose()
        drop_schema(url)


def click_decision(driver, found: str, population: str) -> None:
    """Click the decision button ``found`` (a CSS selector) once it is drawn and wait for it to say withdraw
    (the plots are drawn again when the suggested cuts arrive: a stale button is found again)."""
    wait(driver, lambda d: d.find_element("css selector", found).text, f"{population}'s decision button")
    wait(driver, lambda d: d.find_element("css selector", found).click() or True, f"{population}'s click")
    wait(driver, lambda d: "withdraw" in d.find_element("css selector", found).text, f"{population} decided in the draft")


def test_an_undetermined_gates_counts_are_not_shown_on_the_page(driver, undetermined_source, tmp_path):
    """The page's live table and each plot's label showed an undetermined gate's held events as its count
    ('n=52983' for CD4+ of 100715.fcs) where every output leaves it blank, and 'null' once the server left
    it blank -> 'undetermined: no FMO or unstained control (CD3+, CD4+)' in their place, as the report
    says; lymph's count, resting on no such gate, is its mask's events (counted here). A page behaviour:
    SQLite only (the database plays no part)."""
    pid = UNDETERMINED_PID
    with undetermined_page(driver, undetermined_source, "sqlite", tmp_path) as service:
        counts = held_counts(service, pid, json.loads(service.version(pid).gates_json))
        rows = wait(driver, lambda d: page_rows(d) if "tube025|CD4+" in page_rows(d) else None, "the population table")
        said = "undetermined: no FMO or unstained control (CD3+, CD4+)"
        assert rows["tube025|CD4+"][1:] == [said] * 5, rows["tube025|CD4+"]
        assert rows["tube025|lymph"][1] == rows["tube025|lymph"][3] == str(counts["lymph"]), rows["tube025|lymph"]
        label = driver.find_element("css selector", '[data-pct="tube025|CD4+"]').text
        assert label == f"automatic {said} -> draft {said}", label
        assert str(counts["CD4+"]) not in driver.find_element("id", "population-table").text and "null" not in label
        assert_no_script_errors(driver)


def reloaded_with_the_decision(driver, found: str) -> None:
    """Reload the page and wait for the draft kept in the browser to be restored with CD3+'s accepted held call
    (its message names it; the decision button ``found`` says withdraw)."""
    reload(driver)
    said = wait(driver, lambda d: d.find_element("id", "message").text
                if "Restored your unsaved draft" in d.find_element("id", "message").text else None, "the restored draft")
    assert "(tube025/CD3+ decided)" in said, said
    wait(driver, lambda d: "withdraw" in d.find_element("css selector", found).text, "the decision restored")


def test_an_unsaved_decision_on_an_undetermined_gate_outlives_a_reload(driver, undetermined_source, tmp_path):
    """The draft kept in the browser holds an accepted held call ('tube025/CD3+ decided'), but a reload put
    back only moved cuts: the acceptance was lost without a word. -> restored with the draft and named in
    its message; the button says withdraw, CD3+'s count is its held gate's events (counted here), and
    saved with a reason the version records the decision. SQLite only (a page behaviour)."""
    pid = UNDETERMINED_PID
    found = '[data-decide="tube025|CD3+"]'
    with undetermined_page(driver, undetermined_source, "sqlite", tmp_path) as service:
        counts = held_counts(service, pid, json.loads(service.version(pid).gates_json))
        click_decision(driver, found, "CD3+")
        wait(driver, lambda d: "CD3+ decided" in (kept_draft(d, "alice", pid) or ""), "the decision kept in the browser")
        reloaded_with_the_decision(driver, found)
        wait(driver, lambda d: page_rows(d)["tube025|CD3+"][3] == str(counts["CD3+"]), "CD3+'s count in the draft")
        driver.find_element("id", "reason").send_keys("one CD3 population: T cells of a T-cell product")
        driver.find_element("id", "save-button").click()
        wait(driver, lambda d: "saved version 2" in d.find_element("id", "message").text, "saved version 2")
        assert json.loads(service.version(pid).gates_json)["tubes"]["tube025"]["decided"] == {"CD3+": "positive"}
        assert_no_script_errors(driver)


def test_a_cut_of_the_reviewers_own_withdraws_an_accepted_positive_call(driver, undetermined_source, tmp_path):
    """A reviewer who accepted CD19+'s held positive call and then moved its cut (a suggested cut here) sent
    both, 'positive' and a cut of their own, which the server now refuses (the held call's cut unchanged is
    what 'positive' means) -> the page withdraws the acceptance on a drag or a suggested cut, as it did a
    negative call: the button offers to accept again, and the save keeps the reviewer's cut, no decision.
    SQLite only (a page behaviour)."""
    pid = UNDETERMINED_PID
    found = '[data-decide="tube025|CD19+"]'
    with undetermined_page(driver, undetermined_source, "sqlite", tmp_path) as service:
        click_decision(driver, found, "CD19+")
        button = '[data-candidate="tube025|CD19+|no_second_peak:0"]'
        wait(driver, lambda d: d.find_element("css selector", button).click() or True, "the suggested cut")
        wait(driver, lambda d: "accept the held positive call" in d.find_element("css selector", found).text, "the acceptance withdrawn")
        driver.find_element("id", "reason").send_keys("CD19: the cut at the lower valley")
        driver.find_element("id", "save-button").click()
        wait(driver, lambda d: "saved version 2" in d.find_element("id", "message").text, "saved version 2")
        saved = json.loads(service.version(pid).gates_json)["tubes"]["tube025"]
        [cut] = [c["cut"] for c in service.source.candidates(pid)["tube025"]["CD19+"] if c["rule"] == "no_second_peak:0"]
        assert "decided" not in saved and saved["gates"]["CD19+"]["low"] == pytest.approx(cut, abs=1e-12)
        assert_no_script_errors(driver)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_reviewer_judges_the_one_population_negative(driver, undetermined_source, backend, tmp_path):
    """A reviewer who judged an undetermined gate's one population negative (CD19 in a T-cell product)
    could only move its cut (the 'negative call' candidate), no decision recorded -> the plot's 'judge the
    one population negative' puts the draft's gate at the negative call's cut at once (its count shown,
    counted here); saved with a reason, version 2 records decided: negative with that gate and the audit's
    save_gates entry names both; withdrawn in the draft, the gate is as held again. The sign form no longer
    names CD19+."""
    pid = UNDETERMINED_PID
    found = '[data-decide-negative="tube025|CD19+"]'
    with undetermined_page(driver, undetermined_source, backend, tmp_path) as service:
        automatic = json.loads(service.automatic_version(pid).gates_json)
        negative = service.source.negative_calls(pid)["tube025"]["CD19+"]
        judged = json.loads(json.dumps(automatic))
        judged["tubes"]["tube025"]["gates"]["CD19+"] = negative
        counts = held_counts(service, pid, judged)
        assert counts["CD19+"] < held_counts(service, pid, automatic)["CD19+"]
        click_decision(driver, found, "CD19+")
        wait(driver, lambda d: page_rows(d)["tube025|CD19+"][3] == str(counts["CD19+"]), "CD19+'s count at the negative call")
        wait(driver, lambda d: d.find_element("css selector", found).click() or True, "the withdrawal")   # the gate as held
        wait(driver, lambda d: page_rows(d)["tube025|CD19+"][3].startswith("undetermined"), "CD19+ undetermined again")
        click_decision(driver, found, "CD19+")
        driver.find_element("id", "reason").send_keys("CD19: B cells, none in a T-cell product")
        driver.find_element("id", "save-button").click()
        wait(driver, lambda d: "saved version 2" in d.find_element("id", "message").text, "saved version 2")
        wait(driver, lambda d: "gate version 2" in d.find_element("id", "version-badge").text, "version badge 2")
        saved = json.loads(service.version(pid).gates_json)["tubes"]["tube025"]
        assert saved["decided"] == {"CD19+": "negative"} and saved["gates"]["CD19+"] == negative
        assert {p: g for p, g in saved["gates"].items() if p != "CD19+"} == \
            {p: g for p, g in automatic["tubes"]["tube025"]["gates"].items() if p != "CD19+"}
        with service.factory() as db:
            entry = db.scalars(select(AuditEntry).where(AuditEntry.action == "save_gates")
                               .order_by(AuditEntry.seq.desc())).first()
        assert set(json.loads(entry.after_json)["gates"]) == {"tube025/CD19+", "tube025/CD19+ decided"}
        notice = wait(driver, lambda d: d.find_element("id", "undetermined-notice").text, "the notice of version 2")
        assert "tube025/CD8+" in notice and "CD19+" not in notice, notice
        assert_no_script_errors(driver)


def test_a_population_outside_lymph_has_no_share_of_it_on_the_page(driver, tmp_path):
    """Ki67+ gated on singlets (beside lymph) and undetermined: the live table said 'undetermined: no FMO or
    unstained control (Ki67+)' in its 'draft % live lymph' cell, a share no population outside lymph has
    (singlets': NA) -> NA there, as the report leaves it blank; its counts and % of parent still say
    undetermined, and so does every cell of CD3+ (within lymph). A page behaviour: SQLite only."""
    from tilpheno.review.regate import ReviewSource

    out = processed_100715(tmp_path, lambda strategy: strategy.replace(
        "{name: Ki67+, parent: lymph,", "{name: Ki67+, parent: singlets,", 1).replace(
        "{numerator: Ki67+, denominator: lymph}", "{numerator: Ki67+, denominator: singlets}", 1))
    with undetermined_page(driver, ReviewSource(out), "sqlite", tmp_path):
        rows = wait(driver, lambda d: page_rows(d) if "tube025|Ki67+" in page_rows(d) else None, "the population table")
        ki67, cd3 = "undetermined: no FMO or unstained control (Ki67+)", "undetermined: no FMO or unstained control (CD3+)"
        assert rows["tube025|Ki67+"][1:] == [ki67] * 4 + ["NA"], rows["tube025|Ki67+"]
        assert rows["tube025|singlets"][5] == "NA" and rows["tube025|CD3+"][1:] == [cd3] * 5, rows
        assert_no_script_errors(driver)


def test_a_decision_drafted_over_a_refused_save_outlives_a_reload(driver, undetermined_source, tmp_path):
    """A save refused because carol saved version 2 first keeps the reviewer's draft over version 2
    (keepDraftOver): an accepted held call (CD3+) is named among the changes and still drafted (the button
    says withdraw); reloaded, the draft kept in the browser puts it back over version 2, and saved with a
    reason version 3 records the decision beside carol's CCR5 cut. SQLite only (a page behaviour)."""
    pid = UNDETERMINED_PID
    found = '[data-decide="tube025|CD3+"]'
    with undetermined_page(driver, undetermined_source, "sqlite", tmp_path) as service:
        click_decision(driver, found, "CD3+")
        wait(driver, lambda d: "CD3+ decided" in (kept_draft(d, "alice", pid) or ""), "the decision kept in the browser")
        with service.factory() as db:
            carol = db.scalar(select(User).where(User.username == "carol"))
        ccr5 = json.loads(service.version(pid).gates_json)["tubes"]["tube025"]["gates"]["CCR5+"]
        ccr5["low"] += 0.01
        service.save_version(pid, carol, 1, {"tubes": {"tube025": {"gates": {"CCR5+": ccr5}}}}, "carol: CCR5 cut higher")
        driver.find_element("id", "reason").send_keys("one CD3 population: T cells of a T-cell product")
        driver.find_element("id", "save-button").click()
        said = wait(driver, lambda d: d.find_element("id", "message").text if "conflict" in d.find_element("id", "message").text
                    else None, "the conflict message")
        assert "Your draft is kept over version 2 (your changes: tube025/CD3+ decided)" in said, said
        wait(driver, lambda d: "gate version 2" in d.find_element("id", "version-badge").text, "version 2 under the draft")
        wait(driver, lambda d: "withdraw" in d.find_element("css selector", found).text, "the decision still drafted")
        wait(driver, lambda d: '"version":2' in (kept_draft(d, "alice", pid) or ""), "the draft kept over version 2")
        reloaded_with_the_decision(driver, found)
        driver.find_element("id", "reason").send_keys("one CD3 population: T cells of a T-cell product")
        driver.find_element("id", "save-button").click()
        wait(driver, lambda d: "saved version 3" in d.find_element("id", "message").text, "saved version 3")
        saved = json.loads(service.version(pid).gates_json)["tubes"]["tube025"]
        assert saved["decided"] == {"CD3+": "positive"} and saved["gates"]["CCR5+"] == ccr5
        assert_no_script_errors(driver)


def test_a_reviewer_who_saved_the_version_is_told_before_approving_it(driver, server):
    """Alice saved version 2; choosing 'approved for release' she was asked for the out-of-specification
    justification (PID fails CD3+ > 90 %), typed it, her QC resolutions and password, and only then read the
    refusal 'four-eyes rule: alice saved version(s) 2 ...' -> the sign form says it as soon as she chooses
    to approve (the server's own words); dave, who saved nothing, is told nothing; signing, alice gets the same
    refusal."""
    from selenium.webdriver.support.ui import Select

    service, base = server
    with service.factory() as db:
        alice = db.scalar(select(User).where(User.username == "alice"))
    g = json.loads(service.version(PID).gates_json)["tubes"]["surface"]["gates"]["CD3+"]
    g["low"] += 0.15
    service.save_version(PID, alice, 1, {"tubes": {"surface": {"gates": {"CD3+": g}}}}, "alice: CD3 cut higher")
    rule = f"four-eyes rule: alice saved version(s) 2 of {PID}, so another reviewer must approve version 2 for release"
    open_product(driver, base, "alice", version=2)
    assert not driver.find_element("id", "four-eyes-notice").is_displayed()
    Select(driver.find_element("id", "meaning")).select_by_value("approved for release")
    notice = wait(driver, lambda d: d.find_element("id", "four-eyes-notice").text, "the four-eyes notice")
    assert notice.startswith(rule + ": your approval would be refused"), notice
    driver.find_element("id", "oos-justification").send_keys(OOS_REASON)
    driver.find_element("id", "sign-password").send_keys(PASSWORDS["alice"])
    driver.find_element("id", "sign-button").click()
    refused = wait(driver, lambda d: d.find_element("id", "message").text if "four-eyes" in d.find_element("id", "message").text
                   else None, "the refusal")
    assert rule in refused, refused
    Select(driver.find_element("id", "meaning")).select_by_value("reviewed")
    assert not driver.find_element("id", "four-eyes-notice").is_displayed()
    open_product(driver, base, "dave", version=2)
    Select(driver.find_element("id", "meaning")).select_by_value("approved for release")
    wait(driver, lambda d: d.find_element("id", "oos-box").is_displayed(), "dave's out-of-specification box")
    assert not driver.find_element("id", "four-eyes-notice").is_displayed()
    assert_no_script_errors(driver)


def test_the_product_list_says_a_product_was_re_run_after_signing(driver, tmp_path):
    """TIL001 approved for release, then `tilpheno process --overwrite` with another FMO percentile:
    the approval was void (right), but the product list Chromium shows said only 'not approved' and
    '0 approved, 0 rejected, 1 neither', as for a product never reviewed. Now its cell, marked like
    gating that needs review, says the approval of version 1 is void because the folder was re-run
    after signing, and the counts above the table count it."""
    from review_support import SAMPLE
    from tilpheno.pipeline import process_folder
    from tilpheno.review.server import build_service
    from tilpheno.review.web import create_app

    import pandas as pd

    rows = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
    manifest = tmp_path / "manifest.csv"
    rows[rows["product_id"] == PID].assign(file=lambda m: [str(SAMPLE / f) for f in m["file"]]).to_csv(manifest, index=False)
    url = f"sqlite:///{tmp_path / 'review.sqlite'}"

    def run(**settings):
        summary = process_folder(SAMPLE, tmp_path / "out", manifest_csv=manifest, make_reports=False, **settings)
        assert summary.ok, summary.failed

    run()
    first = make_service(tmp_path / "out", url)
    first.sign(PID, service_user(first, "dave"), PASSWORDS["dave"], "approved for release", 1,
               approval_resolutions(first, PID), oos_justification=OOS_REASON)
    first.factory.kw["bind"].dispose()
    run(overwrite=True, fmo_percentile=99.0)
    service = build_service(tmp_path / "out", url)
    try:
        with serving(create_app(service), driver) as base:
            signed_in(driver, base, "dave")
            driver.get(base + "/")
            counts = wait(driver, lambda d: " ".join(d.find_element("id", "run-counts").text.split()), "the product list")
            cell = driver.find_element("link text", PID).find_elements("xpath", "../../td")[2]
            assert cell.text == ("not approved: approval for release of version 1 void: re-run after signing: needs "
                                 "review (input data, infused cell number, strategy, FMO percentile, study dose "
                                 "definitions, panel file, FMO control markers (manifest fmo_marker) or release spec "
                                 "changed after signing)"), cell.text
            assert cell.get_attribute("class") == "needs-review"
            assert "0 approved, 0 rejected, 1 neither (1 re-run after signing: approval or rejection void, needs review);" \
                in counts, counts
            assert_no_script_errors(driver)

            # the product page's badge said only 'not approved' (its signatures VOID with the reason): now it
            # says what the list says, marked alike, once opened (the new run's gates imported: version 2)
            driver.find_element("link text", PID).click()
            badge = wait(driver, lambda d: d.find_element("id", "approved-badge").text, "the product page")
            assert badge.startswith("not approved: approval for release of version 1 void: re-run after signing: needs "
                                    "review (gates changed to version 2 after signing"), badge
            assert "needs-review" in driver.find_element("id", "approved-badge").get_attribute("class").split()
            void = wait(driver, lambda d: [e.text for e in d.find_elements("css selector", "#signatures .void")],
                        "the signature list")
            assert len(void) == 1 and f"VOID - void: {badge.split(' needs review (', 1)[1][:-1]}" in void[0], (badge, void)
            assert_no_script_errors(driver)
            driver.get(base + "/")
            cell = wait(driver, lambda d: d.find_element("link text", PID).find_elements("xpath", "../../td")[2].text,
                        "the product list")
            assert cell == badge, (cell, badge)
    finally:
        service.factory.kw["bind"].dispose()
