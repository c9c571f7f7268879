"""The review web application (Flask; served by waitress in ``tilpheno serve``).

Security model (stated in the README too):

* Session: a random token in the cookie ``tilpheno_session`` (httpOnly, SameSite=Strict,
  Secure under HTTPS); the database keeps its SHA-256. A cookie that matches no live session
  (tampered, expired, logged out) gets 401 "session invalid or expired" (a login posted with one,
  from a login page left open too long: back to the login page, saying so). A new session is made
  at login (no session fixation).
* CSRF: every POST must carry the session's CSRF token (header ``X-CSRF-Token`` or form field
  ``csrf_token``), else 403 and nothing happens. A POST other than the login's from a session of
  no one (logged out since its page was loaded) gets 401 "not logged in" first, and nothing
  happens ("Log out" goes to the login page).
* Input: product ids must name a product of the output folder (404 otherwise); reasons are plain
  text (no ``<``/``>``); gates are validated (:mod:`regate`); bodies are JSON of at most 1 MiB.
  Every page is autoescaped Jinja2 with a Content-Security-Policy allowing only this server's own
  script and style files, so nothing a user typed can run.
"""
from __future__ import annotations

import json
import logging
import math
from functools import wraps
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping

import numpy as np
import pandas as pd
from flask import Flask, Response, g, jsonify, redirect, render_template, request, url_for
from sqlalchemy import delete, select
from werkzeug.exceptions import HTTPException

from tilpheno.release import FAIL, NOT_EVALUABLE, PASS, overall
from tilpheno.review.auth import (SESSION_HOURS, AuthError, PasswordEntry, check_password, csrf_ok, find_session,
                                  new_session)
from tilpheno.review.db import ReviewError
from tilpheno.review.models import LoginSession, Product, User
from tilpheno.review.regate import (GateSetError, candidate_gates, evaluate, recompute, release_rows,
                                    undetermined_named, validate_gate_set)
from tilpheno.review.service import (APPROVED, REJECTED, ApprovalsWouldBeVoided, AuditedRefusal, DeviationRequired,
                                     Forbidden, NotFound, ReviewService, VersionConflict, approved_of, deciding,
                                     decision_of, failed_criteria,
                                     failed_words, oos_of, record_trail_export, replaced_words, run_software_note,
                                     transaction, voided)
from tilpheno.review.throttle import LoginNotice, LoginNotices, LoginThrottle

log = logging.getLogger(__name__)

COOKIE = "tilpheno_session"
PLOT_POINTS = 2500
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
PAGE_SIZE, PAGE_SIZES, MAX_PAGE_SIZE = 50, (25, 50, 100, 200), 500   # products per page of the list
STATUS = {NotFound: 404, Forbidden: 403, VersionConflict: 409, GateSetError: 400, AuthError: 403}
REPORT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; base-uri 'none'; "
              "form-action 'none'; sandbox")
"""A product report's policy: the pipeline's self-contained HTML (inline styles, figures as inline SVG
or data: images) and nothing that runs: no script, no request, sandboxed."""


def create_app(service: ReviewService) -> Flask:
    app = Flask(__name__, template_folder=str(Path(__file__).with_name("templates")),
                static_folder=str(Path(__file__).with_name("static")))
    app.config["MAX_CONTENT_LENGTH"] = 1 << 20
    app.extensions["tilpheno_review"] = service
    app.jinja_env.globals["words"] = words = service.source.study.with_noun   # "product" in the study's words
    factory = service.factory

    # -- sessions, CSRF, headers -----------------------------------------------------------------
    @app.before_request
    def _session():
        service.write_due_refusals()   # refusals counted in a window whose time is over since: to the trail
        token = request.cookies.get(COOKIE)
        g.user, g.new_token = None, None
        with factory() as db:
            g.sess = find_session(db, token, service.clock)
            if g.sess is not None and g.sess.user_id is not None:
                g.user = db.get(User, g.sess.user_id)
                if g.user is not None and not g.user.active:
                    g.user = None
        g.bad_cookie = token is not None and g.sess is None
        if g.bad_cookie and request.endpoint == "logout":   # "Log out" on a page whose session already ended
            resp = redirect(url_for("login"))
            resp.delete_cookie(COOKIE, path="/")
            return resp
        if g.bad_cookie and request.endpoint == "login_post":   # a login page left open past its session's hours
            anonymous_csrf()   # a new session of no one (its cookie set), which the login page's notice is kept for
            return refused(LoginNotice(f"the login page had expired (open longer than {SESSION_HOURS} h): log in again",
                                       str(request.form.get("username", ""))[:64]))
        if g.bad_cookie and request.endpoint not in ("login", "static", "healthz"):
            return _error(401, "session invalid or expired: log in again")
        if request.method == "POST" and g.sess is not None and g.sess.user_id is None and request.endpoint not in (
                "login_post", "static"):   # logged out since the page was loaded (in another tab: its login page's session)
            if request.endpoint == "logout":
                return redirect(url_for("login"))
            return _error(401, "not logged in (logged out since this page was loaded): log in again")
        if request.method == "POST" and request.endpoint != "static":
            sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token")
            if not csrf_ok(g.sess, sent):
                return _refused("CSRF token missing or wrong: reload the page and try again (nothing was changed)")
        superseded = service.source.superseded() if request.endpoint not in ("static", "healthz") else ""
        if superseded:   # never show, recompute or sign another run's results as this folder's
            return _error(503, f"{superseded} (nothing was changed)")

    @app.after_request
    def _headers(resp: Response):
        resp.headers["Content-Security-Policy"] = g.get("csp", CSP)
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        if g.get("new_token"):
            resp.set_cookie(COOKIE, g.new_token, httponly=True, samesite="Strict", secure=request.is_secure, path="/")
        return resp

    def _error(status: int, message: str):
        if request.path.startswith("/api/") or request.method == "POST" or not request.accept_mimetypes.accept_html:
            return jsonify(error=message), status
        sess = g.get("sess")   # the header's log-out button posts the session's CSRF token
        return render_template("error.html", status=status, message=message, user=g.get("user"),
                               csrf=sess.csrf_token if sess is not None else "", asked_for=_asked_for()), status

    def _refused(message: str):
        """HTTP 403 with ``message``, audited ``access_refused`` (who, the request, why) when a user is
        logged in (an anonymous request names no one: its refusal is logged only). When the database
        refused the write at every run ("database busy"), the refusal stands and the server holds it,
        written at its next successful write (:meth:`ReviewService.record_access_refused`)."""
        if g.get("user") is not None:
            asked = (request.view_args or {}).get("product_id", "")
            service.record_access_refused(g.user.username, asked if service.source.has_product(asked) else "",
                                          f"{request.method} {request.path}", message)
        else:
            log.info("refused %s %s (no one logged in): %s", request.method, request.path, message)
        return _error(403, message)

    @app.errorhandler(ReviewError)
    def _review_error(exc: ReviewError):
        if isinstance(exc, Forbidden) and not isinstance(exc, AuditedRefusal):
            return _refused(str(exc))
        return _error(next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 400), str(exc))

    @app.errorhandler(AuthError)
    def _auth_error(exc: AuthError):
        return _error(403, f"signature refused: {exc}")

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        return _error(exc.code or 500, exc.description or exc.name)

    def login_required(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            if g.user is None:
                if g.bad_cookie:
                    return _error(401, "session invalid or expired: log in again")
                if request.path.startswith("/api/") or request.method == "POST":
                    return _error(401, "not logged in")
                return redirect(url_for("login", next=_asked_for()))
            return view(*args, **kwargs)
        return wrapped

    def anonymous_csrf() -> str:
        if g.sess is None:
            def make(db):
                token, row = new_session(db, None, service.clock)
                return token, row
            token, row = transaction(factory, make)
            g.new_token, g.sess = token, row
        return g.sess.csrf_token

    def opened(product_id: str) -> None:
        """Check that this user may see ``product_id`` and import it on their behalf when it is first
        used before the server's background import (``import_product`` audited as this user; the
        background import is audited as ``system``)."""
        service.require_access(g.user, product_id)
        service.ensure_imported(product_id, g.user.username)

    def body() -> dict:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise GateSetError("request body: a JSON object is required")
        return data

    # -- login -----------------------------------------------------------------------------------------
    throttle = app.extensions["tilpheno_login_throttle"] = LoginThrottle()
    notices = LoginNotices()

    @app.get("/login")
    def login():
        """The login form; after a refused login (a redirect here) with why, and the name typed, once.
        While this address is throttled (:class:`LoginThrottle`) it says for how long, as HTTP 429
        with ``Retry-After`` (seconds, rounded up)."""
        notice = notices.pop(g.sess.token_sha256) if g.sess is not None else None
        wait = throttle.retry_after(request.remote_addr or "-")
        error = notice.error if notice else ""
        if wait > 0:
            error = f"too many refused logins from this address; try again in {math.ceil(wait)} s"
        page = render_template("login.html", csrf=anonymous_csrf(), error=error,
                               username=notice.username if notice else "", next=_safe_next(request.args.get("next")))
        return (page, 429, {"Retry-After": str(math.ceil(wait))}) if wait > 0 else page

    @app.post("/login")
    def login_post():
        username = str(request.form.get("username", ""))[:64]
        address = request.remote_addr or "-"
        if throttle.retry_after(address) > 0:   # no password check, no audit entry: a script's flood would fill the trail
            log.warning("login from %s refused without a password check: %d refused logins in %.0f s",
                        address, throttle.limit, throttle.window)
            return refused(LoginNotice("", username))
        password = PasswordEntry(str(request.form.get("password", "")))   # verified once, even if retried

        def attempt(db):
            user = db.query(User).filter(User.username == username).one_or_none()
            try:
                check_password(db, user, password, service.clock)
            except AuthError as exc:
                service.append(db, username or "-", "login_failed", reason=exc.audited())
                return None, str(exc)
            old = db.get(LoginSession, g.sess.token_sha256)
            if old is not None:
                db.delete(old)
            _, now = service.clock.in_statement(db)
            db.execute(delete(LoginSession).where(LoginSession.expires_at < now))   # forget expired sessions
            token, _row = new_session(db, user.id, service.clock)
            service.append(db, user.username, "login")
            return token, ""

        token, problem = transaction(factory, attempt)
        if token is None:
            throttle.failed(address)
            return refused(LoginNotice(problem, username))
        g.new_token = token
        return redirect(_safe_next(request.form.get("next")) or url_for("index"))

    def refused(notice: LoginNotice):
        """A refused login's answer, throttled or not: POST/redirect/GET to the login page, which shows
        ``notice`` once (and the throttle's wait, as 429): reloading that page does not post the
        password again, which counted as another wrong password and another audited refusal."""
        notices.put(g.sess.token_sha256, notice)
        back = _safe_next(request.form.get("next"))
        return redirect(url_for("login", next=back) if back else url_for("login"), code=303)

    def end_session(reason: str = "") -> None:
        """Delete this request's login session, audited: ``logout``, or ``session_ended`` with why."""
        def out(db):
            row = db.get(LoginSession, g.sess.token_sha256)
            if row is not None:
                db.delete(row)
            service.append(db, g.user.username, "session_ended" if reason else "logout", reason=reason)
        transaction(factory, out)

    @app.post("/logout")
    @login_required
    def logout():
        end_session()
        resp = redirect(url_for("login"))
        resp.delete_cookie(COOKIE, path="/")
        return resp

    # -- pages -----------------------------------------------------------------------------------------
    @app.get("/")
    @login_required
    def index():
        """One page of the products this user may see (:func:`_list_request`: ``page``, ``size``,
        ``q``), sorted by id; the search applies to the whole run, and the counts above the table are
        of every product this user may see, not of the page."""
        page, size, query = _list_request(request.args)
        with factory() as db:
            imported = {p.product_id: p.current_version for p in db.scalars(select(Product))}
        allowed = service.accessible(g.user)
        visible = [pid for pid in service.source.product_ids() if allowed is None or pid in allowed]
        found = [pid for pid in visible if query.casefold() in pid.casefold()] if query else visible
        pages = max(1, math.ceil(len(found) / size))
        if page > pages:
            raise NotFound(f"page {page}: the list has {pages} page(s) of {size} {words('product(s)')}"
                           + (f" matching {query!r}" if query else ""))
        shown = found[(page - 1) * size:page * size]
        listed = service.listed_decisions(g.user)   # the imported products this user may see
        decisions, refused = listed.decisions, listed.refused
        approvals = approved_of(decisions)
        rows = []
        for pid in shown:
            row = service.source.phenotype_row(pid)
            approved, decided = approvals.get(pid), decisions.get(pid)
            results = service.version_criteria(pid, approved) if approved else []   # memoised by the gates' SHA-256
            # an approval of gates that fail: its approval is the standing decision's signature (no query more)
            oos = oos_of(decided.signature, results) if approved and decided else None
            rows.append({"id": pid, "version": imported.get(pid, "not opened yet"), "refused": pid in refused,
                         "approved": approved.version if approved else None, "voided": listed.voided.get(pid, ""),
                         "unbound": listed.unbound.get(pid, ""),   # what the decision's older-form signature does not bind
                         "rejected": decided.version.version if decided and decided.meaning == REJECTED else None,
                         "approved_release": overall(results) if approved
                         else "refused" if pid in refused else "not approved",
                         # the out-of-specification release it is: the failed criteria (the page's words: the title)
                         "oos": oos.cell() if oos else "", "oos_words": oos.words() if oos else "",
                         # the run's determined fails the approved gates pass, each with its justification's entry
                         "deviations": "; ".join(d.cell() for d in service.deviations(pid, approved, results)) if approved else "",
                         "run_release": row.get("release_status", ""), "qc": row.get("qc_status", ""),
                         "review": row.get("review_status", "")})
        return render_template("index.html", rows=rows, user=g.user, csrf=g.sess.csrf_token,
                               out_dir=str(service.source.out_dir), page=page, pages=pages, size=size,
                               sizes=PAGE_SIZES, query=query, n_found=len(found), first=(page - 1) * size + 1,
                               counts=_run_counts(service, visible, decisions, refused, listed.rerun),
                               failed=service.source.failed_products() if allowed is None else {},
                               refused=refused)

    @app.get("/products/<path:product_id>")
    @login_required
    def product_page(product_id: str):
        service.require_access(g.user, product_id)
        allowed = service.accessible(g.user)
        others = [p for p in service.source.product_ids() if p != product_id and (allowed is None or p in allowed)]
        return render_template("product.html", product_id=product_id, user=g.user, csrf=g.sess.csrf_token,
                               others=others, tubes=service.source.stained_kinds(product_id), can_approve=g.user.role in ("reviewer", "admin"),
                               spec=service.source.release_spec.name,   # in the page: a product whose state fails keeps it
                               run_software=run_software_note(service.source.run))

    # -- API ---------------------------------------------------------------------------------------------
    @app.get("/api/products/<path:product_id>/state")
    @login_required
    def state(product_id: str):
        opened(product_id)
        service.automatic_version(product_id, g.user.username)   # first: it may add the current version
        read = service.product_state(product_id)   # versions and signatures of one moment
        current, signatures = read.current, read.signatures
        replaced = replaced_words(read.versions, read.reruns)
        cur_set, auto_set = json.loads(current.gates_json), json.loads(read.automatic.gates_json)
        auto_res = recompute(service.source, product_id, auto_set, medians=False)
        cur_res = recompute(service.source, product_id, cur_set, medians=False)
        run_release = service.source.run_release(product_id)
        decided = decision_of(signatures)
        rejection = next((v for v in reversed(signatures) if v.valid and v.row.meaning == REJECTED), None)
        # a valid signature is one of the current version: the standing approval is the deciding signature
        deciding_sig = deciding(signatures)
        oos = oos_of(deciding_sig, cur_res.release) if decided == (APPROVED, current.version) and deciding_sig else None
        deviations = service.deviations(product_id, current)
        return jsonify({
            "product_id": product_id,
            "current_version": current.version,
            "approved_version": decided[1] if decided and decided[0] == APPROVED else None,
            "rejected_version": decided[1] if decided and decided[0] == REJECTED else None,
            # no standing decision, its newest approval or rejection void: why, as the product list says it
            "voided": voided(signatures, read.versions)[0],
            # the standing rejection an approval of the current version would overrule
            "rejection": _signature(rejection) if rejection and decided == (REJECTED, current.version) else None,
            # each version but the current one names the version that replaced it (a re-run's: the files it replaced)
            "versions": [{"version": v.version, "based_on": v.based_on, "source": v.source, "reason": v.reason,
                          "created_by": v.created_by, "created_at": v.created_at, "gates_sha256": v.gates_sha256,
                          "replaced_by": dict(zip(("version", "words"), replaced[v.version])) if v.version in replaced else None}
                         for v in read.versions],
            "automatic": auto_set, "current": cur_set,
            "plots": _plots(service, product_id, cur_set, auto_set),
            "populations": {"automatic": _tables(auto_res), "current": _tables(cur_res)},
            "phenotype": {"automatic": _clean(auto_res.phenotype), "current": _clean(cur_res.phenotype)},
            "release": {"automatic": release_rows(auto_res.release), "automatic_status": auto_res.release_status,
                        "current": release_rows(cur_res.release), "current_status": cur_res.release_status,
                        # the run's release (phenotypes.csv), its review flags unresolved: the gates' statuses above
                        # are what release becomes once those gates are approved (a signature resolves the flags)
                        "run_status": run_release.status, "run_review": run_release.review,
                        "run_held": [{"criterion": name, "held_by": list(by)} for name, by in run_release.held],
                        # the current version's overturns of the run's determined fails, with their justification
                        "deviations": [{"criterion": d.overturn.criterion, "text": d.words(), "justified": bool(d.reason)}
                                       for d in deviations],
                        "spec": service.source.release_spec.name,
                        # approving the current version releases it out of specification: its failed criteria
                        "oos_current": failed_words(failed_criteria(cur_res.release)),
                        # the standing approval's out-of-specification release, with its justification
                        "oos_approved": oos.words() if oos else ""},
            "qc_flags": service.source.qc_flags(product_id),
            "signatures": [_signature(v) for v in signatures],
            # why this user may not approve the current version by the four-eyes rule ("": they may)
            "four_eyes": service.four_eyes(g.user.username, product_id, current, deviations),
            # the current version's gates still undetermined (one population, no FMO or unstained control, neither
            # accepted nor moved): release stays not evaluable on the criteria resting on them, whatever is signed
            "undetermined": undetermined_named(cur_set),
            # each undetermined gate at the negative call's cut: where judging its one population negative puts it
            "negative_calls": service.source.negative_calls(product_id),
        })

    @app.get("/api/products/<path:product_id>/candidates")
    @login_required
    def candidates(product_id: str):
        """The candidate cuts of each threshold gate (``ReviewSource.candidates``), each with the % of
        its parent it would give under the current version's other gates; a separate request, as a
        product imported by an earlier server is re-gated for them (a few seconds, once). ``left_out``:
        why an unstained control gave no candidate (``ReviewSource.controls_left_out``), one line each."""
        opened(product_id)
        current = service.version(product_id)
        gate_set = json.loads(current.gates_json)
        stained = service.source.stained(product_id)
        out: dict[str, dict[str, list[dict]]] = {}
        for tube_kind, by_population in service.source.candidates(product_id).items():
            st = stained.get(tube_kind)
            if st is None:
                continue
            gates = gate_set["tubes"].get(tube_kind, {}).get("gates", {})
            masks = evaluate(st.strategy, st.tube, gates)   # once per tube: every gate's parent
            for population, cuts in by_population.items():
                placed = candidate_gates(st, gates, masks, population, cuts)
                if placed:
                    out.setdefault(tube_kind, {})[population] = placed
        return jsonify({"version": current.version, "tubes": out,
                        "left_out": service.source.controls_left_out(product_id)})

    @app.post("/api/products/<path:product_id>/preview")
    @login_required
    def preview(product_id: str):
        opened(product_id)
        data = body()
        current = service.version(product_id)
        stained = service.source.stained(product_id)
        draft = validate_gate_set(json.loads(current.gates_json), data.get("gates"), stained,
                                  lambda: service.source.negative_calls(product_id))
        res = recompute(service.source, product_id, draft, medians=False)
        out = {"populations": _tables(res), "phenotype": _clean(res.phenotype), "release": release_rows(res.release),
               "release_status": res.release_status,
               # what saving the draft would overturn of the run's determined fails: a save needs a justification
               "overturns": [o.words() for o in service.introduced_overturns(
                   product_id, service.version_criteria(product_id, current), res.release)]}
        if data.get("plots"):
            out["plots"] = _plots(service, product_id, draft, json.loads(service.automatic_version(product_id).gates_json))
        return jsonify(out)

    @app.post("/api/products/<path:product_id>/versions")
    @login_required
    def save(product_id: str):
        opened(product_id)
        data = body()
        try:
            row = service.save_version(product_id, g.user, data.get("base_version"), data.get("gates"), data.get("reason"),
                                       void_approval=data.get("void_approval"), deviation=data.get("deviation"))
        except ApprovalsWouldBeVoided as exc:   # signed since the page loaded: the page asks, naming it
            return jsonify(error=str(exc), approved=exc.products, approval=exc.signature_ids[0]), 409
        except DeviationRequired as exc:   # the page asks for the justification, naming what is overturned
            return jsonify(error=str(exc), overturns=[o.words() for o in exc.overturns]), 400
        return jsonify({"version": row.version, "gates_sha256": row.gates_sha256,
                        "message": f"saved version {row.version} of {product_id}"}), 201

    @app.post("/api/products/<path:product_id>/deviations")
    @login_required
    def justify(product_id: str):
        """A deviation justification added to the current version (``version``, ``deviation``) for
        its overturns that have none (:meth:`ReviewService.justify_deviations`)."""
        opened(product_id)
        data = body()
        done = service.justify_deviations(product_id, g.user, data.get("version"), data.get("deviation"))
        return jsonify({"message": f"deviation justification recorded for version {data.get('version')} of {product_id}: "
                                   + "; ".join(o.criterion for o in done)}), 201

    @app.post("/api/products/<path:product_id>/sign")
    @login_required
    def sign(product_id: str):
        opened(product_id)
        data = body()
        try:
            sig = service.sign(product_id, g.user.id, data.get("password"), data.get("meaning"), data.get("version"),
                               data.get("qc_resolutions"), data.get("comment", ""), data.get("overrule_rejection"),
                               data.get("qc_kind_resolutions"), data.get("oos_justification"))
        except AuthError as exc:
            if not exc.locked_now:
                raise
            end_session("the account was locked by wrong passwords at a signature's password re-entry in this session")
            resp, status = _error(403, f"signature refused: {exc}; this session is ended: log in again")
            resp.delete_cookie(COOKIE, path="/")
            return resp, status
        left = undetermined_named(json.loads(service.version(product_id, sig.version).gates_json))
        stays = (f"; undetermined gates left ({', '.join(left)}: no FMO or unstained control): release stays not evaluable "
                 "on the criteria resting on them") if left else ""
        kept = ("; the out-of-specification justification sent is not needed (only an approval for release of a "
                "version that fails a release criterion has one): not signed, kept in the signature's audit entry"
                if data.get("oos_justification") not in (None, "") and not sig.oos_justification else "")
        return jsonify({"message": f"signed version {sig.version} as '{sig.meaning}'{stays}{kept}",
                        "signature_sha256": sig.signature_sha256}), 201

    @app.post("/api/products/<path:product_id>/apply")
    @login_required
    def apply(product_id: str):
        opened(product_id)
        data = body()
        try:
            result = service.apply_to_batch(product_id, g.user, data.get("tube"), data.get("population"),
                                            data.get("products"), data.get("reason"), data.get("void_approvals"))
        except ApprovalsWouldBeVoided as exc:   # the page asks, naming them, and repeats the request
            return jsonify(error=str(exc), approved=exc.products, approvals=exc.signature_ids), 409
        parts = [f"applied to {len(result.saved)} {words('product(s)')}: " +
                 ", ".join(f"{r.product_id} v{r.version}" for r in result.saved)] if result.saved or not result.unchanged else []
        if result.unchanged:
            parts.append(f"unchanged (already this gate): {', '.join(result.unchanged)}")
        return jsonify({"message": "; ".join(parts), "unchanged": result.unchanged}), 201

    # -- downloads ----------------------------------------------------------------------------------------
    @app.get("/products/<path:product_id>/certificate.pdf")
    @login_required
    def certificate(product_id: str):
        from tilpheno.review.certificate import certificate_pdf

        opened(product_id)
        issued = service.release_approval(product_id)
        pdf = certificate_pdf(service, product_id, issued)
        service.record_certificates(g.user.username, {product_id: issued})   # refused if the approval changed meanwhile
        return Response(pdf, mimetype="application/pdf",
                        headers={"Content-Disposition": f'attachment; filename="certificate_{_ascii(product_id)}.pdf"'})

    @app.get("/products/<path:product_id>/report.html")
    @login_required
    def report(product_id: str):
        """The product's report of the run (published, else drawn now: ``ReviewSource.report_html``),
        shown under its own policy: no script at all, its inline styles and figures allowed."""
        service.require_access(g.user, product_id)
        html = service.source.report_html(product_id)
        g.csp = REPORT_CSP
        return Response(html, mimetype="text/html")

    @app.get("/products/<path:product_id>/gates/<tube>.xml")
    @login_required
    def gatingml(product_id: str, tube: str):
        from tilpheno.review.export import approved_gatingml

        opened(product_id)
        issued = service.release_approval(product_id, "approved gates are exported")
        text = approved_gatingml(service, product_id, tube, version=issued.version.version)
        name = f"gates_{_ascii(product_id)}_{_ascii(tube)}.xml"
        service.record_gatingml_export(g.user.username, product_id, tube, name, text, issued)   # refused if the approval changed
        return Response(text, mimetype="application/xml", headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/export/<any(phenotypes, populations):table>.csv")
    @login_required
    def export_table(table: str):
        from tilpheno.review.export import approved_tables

        if g.user.role not in ("reviewer", "admin"):
            raise Forbidden(f"role {g.user.role} cannot export every {service.noun}'s results (reviewer or admin)")

        listed = service.export_decisions()
        decisions = listed.decisions
        phenotypes, populations = approved_tables(service, listed)
        frame = phenotypes if table == "phenotypes" else populations
        from tilpheno.io.csvcells import csv_text

        text, name = csv_text(frame), f"{table}_approved.csv"
        service.record_table_export(g.user.username, name, text, len(frame), decisions)   # refused if an approval changed
        return Response(text, mimetype="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/audit.csv")
    @login_required
    def audit_csv():
        if g.user.role not in ("reviewer", "admin"):
            raise Forbidden(f"role {g.user.role} cannot export the audit trail")
        copy = service.copy_trail()   # held refusals written first; the entries, the open windows' counts, what is still held
        record_trail_export(factory, g.user.username, "audit.csv", copy, service.clock)   # after the copy: it holds not its own entry
        return Response(copy.text, mimetype="text/csv", headers={"Content-Disposition": 'attachment; filename="audit.csv"'})

    @app.get("/healthz")
    def healthz():
        return jsonify(ok=True)

    return app


def _list_request(args) -> tuple[int, int, str]:
    """``(page, size, query)`` of the product list's URL: ``page`` from 1, ``size`` products a page
    (1-``MAX_PAGE_SIZE``; the page offers ``PAGE_SIZES``; default ``PAGE_SIZE``), ``q`` a part of the
    product id (case-insensitive). ReviewError (HTTP 400) naming the parameter otherwise."""
    def whole(name: str, default: int, high: int) -> int:
        text = str(args.get(name, default)).strip()
        if not text.isdigit() or not 1 <= int(text) <= high:
            raise ReviewError(f"{name}={text[:20]!r}: a whole number from 1 to {high}")
        return int(text)

    return (whole("page", 1, 10**6), whole("size", PAGE_SIZE, MAX_PAGE_SIZE),
            str(args.get("q", "")).strip()[:200])


def _run_counts(service: ReviewService, visible: list[str], decisions: dict,
                refused: Mapping[str, str], rerun: frozenset[str]) -> dict[str, int]:
    """Counts over every product in ``visible`` (the whole run a user may see, not one page): all,
    approved (a valid approval) and rejected (a valid rejection, no approval after it) by their
    standing QA decision (``decisions``, :meth:`ReviewService.decisions`), refused (held by the
    database from another output folder, ``refused``: neither approved, rejected nor undecided
    here), ``neither`` the others (``rerun``: those whose approval or rejection a new run voided,
    :attr:`ListedDecisions.rerun`), the run's release
    (phenotypes.csv's, held while gating needs review) pass / fail / not evaluable, and those the run's gating
    marks ``needs review``."""
    frame = service.source.phenotypes
    frame = frame[frame["product_id"].astype(str).isin(set(visible))].drop_duplicates("product_id")

    def n(column: str, value: str) -> int:
        return int((frame[column].astype(str) == value).sum()) if column in frame else 0

    meanings = [d.meaning for pid in visible if (d := decisions.get(pid)) is not None]
    n_refused = sum(pid in refused for pid in visible)
    return {"products": len(visible), "approved": meanings.count(APPROVED), "rejected": meanings.count(REJECTED),
            "refused": n_refused, "neither": len(visible) - len(meanings) - n_refused,
            "rerun": sum(pid in rerun for pid in visible),
            "pass": n("release_status", PASS), "fail": n("release_status", FAIL),
            "not_evaluable": n("release_status", NOT_EVALUABLE), "needs_review": n("review_status", "needs review")}


def _asked_for() -> str:
    """The path and query string of this request (``/?page=3&q=TIL``): where a login sends back to."""
    return request.full_path.rstrip("?")


def _safe_next(value) -> str:
    value = str(value or "")
    return value if value.startswith("/") and not value.startswith("//") and "\\" not in value else ""


def _ascii(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:80]


def _num(v):
    if v is pd.NA:   # a count left blank: its population rests on an undetermined gate
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return None if math.isnan(f) or math.isinf(f) else f


def _clean(d: dict) -> dict:
    return {k: _num(v) if k != "product_id" else v for k, v in d.items()}


def _tables(res) -> dict:
    return {tube: [{k: v if k in ("population", "parent") else bool(v) if k == "within_lymph" else _num(v) for k, v in row.items()}
                   for row in table.to_dict("records")] for tube, table in res.populations.items()}


def _signature(view) -> dict:
    s = view.row
    return {"id": s.id, "version": s.version, "meaning": s.meaning, "username": s.username, "full_name": s.full_name,
            "role": s.role, "signed_at": s.signed_at, "data_sha256": s.data_sha256, "comment": s.comment,
            "oos_justification": s.oos_justification, "valid": view.valid,
            "void_reason": view.void_reason, "note": view.note}


def _plots(service: ReviewService, product_id: str, gate_set: dict, auto_set: dict) -> list[dict]:
    """One plot per editable gate, and one per gate the run could not place (:func:`failed_gate`:
    ``type`` ``none``, no gate drawn): a subsample of its parent's events (under ``gate_set``), axis
    ranges and labelled ticks (``[[position, label], ...]`` per axis on the transformed scale: raw
    decades on logicle/arcsinh axes), and the run's flags on that gate (``qc.flags_naming_gate``;
    for a threshold gate also those on the gates of its control files, :func:`control_flags`, each
    with its ``file``, which the page names where it is not the plot's ``file``):
    ``flags`` those that need review, ``notes`` the others (info: e.g. a self-check sized below
    its review limit). Ranges as in the reports (``report.plots.display_limits``: the whole
    scale up to the detector's ``$PnR``), widened to hold every threshold of either gate and the
    other gates' coordinates where events lie: a polygon's far corners beyond every event (the
    cells gate's open sides, the singlet band's ends) stay out of view, the shape drawn to the
    frame's edge. ``whole_ranges`` / ``whole_ticks``: the view that holds every coordinate of
    both gates (the page's "whole gate" button, to drag such a corner). The page drags handles
    within the view shown. The plots of flagged gates come first, the others after them, each
    group in gating order (tube kinds by name)."""
    from tilpheno.qc import flags_naming_gate, needs_review
    from tilpheno.report.plots import display_limits

    out = []
    flags = [SimpleNamespace(**f) for f in service.source.qc_flags(product_id)]
    files = service.source.product_files(product_id)
    for tube_kind, st in sorted(service.source.stained(product_id).items()):
        gates = gate_set["tubes"].get(tube_kind, {}).get("gates", {})
        masks = evaluate(st.strategy, st.tube, gates)
        for pop in st.strategy.populations:
            gate = gates.get(pop.name)
            on_gate = flags_naming_gate(flags, pop.name, st.name) + control_flags(
                flags, pop, st.strategy, [f for f in files if f.tube == tube_kind or f.role == "unstained"],
                service.source.study.vocabulary)
            if gate is not None:
                dims = [gate["dim"]] if gate["type"] == "range" else list(gate["dims"])
            elif failed_gate(pop, on_gate, st.tube.data):   # nothing to drag: the parent's events beside the flag
                dims = list(pop.dims)
            else:
                continue
            parent = masks[pop.parent] if pop.parent in masks else np.ones(st.tube.n_events, dtype=bool)
            index = np.flatnonzero(parent)
            if index.size > PLOT_POINTS:
                index = index[:: -(-index.size // PLOT_POINTS)]
            auto = auto_set["tubes"].get(tube_kind, {}).get("gates", {}).get(pop.name)
            coords: list[list[float]] = []
            ranges: list[list[float]] = []
            whole: list[list[float]] = []
            ticks: list[list[list]] = []
            whole_ticks: list[list[list]] = []
            for axis, d in enumerate(dims):
                shown = st.tube.data[d][index]
                finite = st.tube.data[d][parent]
                finite = finite[np.isfinite(finite)]
                transform = st.tube.transforms.get(d)
                points = [(g["type"], v) for g in (gate, auto) if g for v in _gate_coordinates(g, axis)]
                lo, hi = display_limits(transform, st.tops.get(d))
                if finite.size:
                    first, last = float(finite.min()), float(finite.max())
                    inside = [v for kind, v in points if kind == "range" or first <= v <= last]
                    lo, hi = min([lo, *inside]), max([hi, *inside])
                lo, hi = max(lo, st.bounds[d][0]), min(hi, st.bounds[d][1])
                # the whole gate: also the coordinates beyond every event, 5 % of the span beyond them
                wlo, whi = min([lo, *(v for _, v in points)]), max([hi, *(v for _, v in points)])
                pad = 0.05 * (whi - wlo)
                wlo, whi = (wlo - pad if wlo < lo else lo), (whi + pad if whi > hi else hi)
                wlo, whi = max(wlo, st.bounds[d][0]), min(whi, st.bounds[d][1])
                decimals = max(0, 4 - int(math.floor(math.log10(max(hi - lo, 1e-12)))))   # ~1/10000 of the axis
                coords.append(np.round(shown, decimals).tolist())
                ranges.append([float(lo), float(hi)])
                ticks.append(_labelled_ticks(transform, lo, hi))
                whole.append([float(wlo), float(whi)])
                whole_ticks.append(ticks[-1] if (wlo, whi) == (lo, hi) else _labelled_ticks(transform, wlo, whi))
            out.append({"tube": tube_kind, "file": st.name, "population": pop.name, "parent": pop.parent,
                        "type": gate["type"] if gate is not None else "none",
                        "dims": dims, "events": coords, "ranges": ranges, "ticks": ticks,
                        "whole_ranges": whole, "whole_ticks": whole_ticks,
                        "bounds": [list(st.bounds[d]) for d in dims],
                        "automatic": auto,
                        "flags": [dict(vars(f)) for f in on_gate if needs_review(f)],
                        "notes": [dict(vars(f)) for f in on_gate if not needs_review(f)]})
    out.sort(key=lambda plot: not plot["flags"])   # the flagged gates first (stable: in gating order)
    return out


def control_flags(flags: list, pop, strategy, files: list, vocabulary) -> list:
    """The flags raised on the gates of the control files whose events set ``pop``'s threshold (an
    ``fmo`` gate: the FMO files of its marker, or the unstained control with ``control:
    unstained``; ``files``: the ProductFiles of the tube kind and the unstained controls) that name a gate above ``pop`` (its parent and
    theirs, :func:`tilpheno.qc.flags_naming_gate` on each control): a wrong gate of the control
    moves the control's events the threshold is taken from. Empty for other gates."""
    from tilpheno.qc import flags_naming_gate

    if pop.method != "fmo" or not pop.dims:
        return []
    unstained = pop.params.get("control") == "unstained"
    controls = [f.name for f in files if (f.role == "unstained" if unstained else
                                          f.role == "fmo" and vocabulary.same(f.fmo_marker, pop.dims[0]))]
    above = [p.name for p in strategy.lineage(pop.parent)]
    return [f for c in controls for a in above for f in flags_naming_gate(flags, a, c) if f.file == c]


def failed_gate(pop, on_gate: list, data) -> bool:
    """True when ``pop`` is a geometric gate that the run could not place (a ``gate_failed`` flag
    among ``on_gate``, its flags) on dimensions the stained tube has (``data``: dimension ->
    events): its plot shows the parent's events without a gate (``type`` ``none``), so that the
    flag has something to be looked at beside."""
    return (pop.boolean is None and bool(pop.dims) and all(d in data for d in pop.dims)
            and any(f.code == "gate_failed" for f in on_gate))


def _labelled_ticks(transform, lo: float, hi: float) -> list[list]:
    """``[[position, label], ...]`` of an axis from ``lo`` to ``hi`` (``report.plots.axis_ticks``)."""
    from tilpheno.report.plots import axis_ticks

    major, labels, _ = axis_ticks(transform, (float(lo), float(hi)))
    return [[float(v), str(label)] for v, label in zip(np.asarray(major, float).tolist(), labels)]


def _gate_coordinates(gate: dict, axis: int) -> list[float]:
    """A gate's coordinates on plot axis ``axis`` (thresholds, vertices, the ellipse's extent)."""
    if gate["type"] == "range":
        return [v for v in (gate["low"], gate["high"]) if v is not None] if axis == 0 else []
    if gate["type"] == "polygon":
        return [v[axis] for v in gate["vertices"]]
    if gate["type"] == "ellipsoid":
        half = math.sqrt(gate["distance_square"] * gate["covariance"][axis][axis])
        return [gate["mean"][axis] - half, gate["mean"][axis] + half]
    return []
