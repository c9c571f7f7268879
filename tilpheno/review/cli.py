"""CLI of the review app: ``serve``, ``users ...``, ``audit ...``, ``export-approved`` (registered by tilpheno.cli)."""
from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Optional

import typer

users_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown",
                        help="Review-app accounts (roles: analyst, reviewer, admin).")
audit_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown",
                        help="The review audit trail: verify the SHA-256 chain, export CSV.")

DB_HELP = "Database URL: sqlite:///FILE or postgresql://USER:PASS@HOST/DB (default: SQLite file `OUT.review.sqlite`, beside the output folder OUT)."
PASSWORD_STDIN_HELP = "Read the password from the first line of standard input (else it is asked for twice at a prompt)."


def _fail(exc: Exception) -> None:
    """The command line's one line (``tilpheno.cli._fail``: a file-system error as path and cause), exit 2."""
    from tilpheno.cli import _fail as fail

    fail(exc)


def _existing_folder(param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """The command line's check of a folder that must exist (``tilpheno.cli._existing_folder``: one
    line naming the argument or option and the path, exit 2)."""
    from tilpheno.cli import _existing_folder as existing

    return existing(param, value)


def _factory(out: Path, db: Optional[str]):
    from tilpheno.review.db import open_database

    return open_database(_database_url(out, db))


def _database_url(out: Path, db: Optional[str]) -> str:
    """``--db``, else the default database beside OUT (``default_db_url``: a mistyped OUT is refused).
    When that default is about to be made, say so (stderr): after OUT was moved, its review (users,
    versions, signatures) is still in the database beside OUT's old place."""
    from tilpheno.review.db import default_db_path, default_db_url, holds_review_database

    if db is not None:
        return db
    url, path = default_db_url(out), default_db_path(out)
    if not holds_review_database(path):   # a file a failed first command left is no database yet
        typer.secho(f"note: no review database beside {out}; a new, empty one is made: {path}. If this run was "
                    f"reviewed before and OUT moved since, move its {path.name} beside it (or pass --db) instead",
                    fg=typer.colors.YELLOW, err=True)
    return url


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _password(stdin: bool) -> str:
    """The password typed twice at a prompt, or the first line of standard input without its line
    end (``\n`` or a Windows file's ``\r\n``: a kept ``\r`` made a password no one can type)."""
    if stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


def serve(
    out: Path = typer.Argument(..., help="A processed output folder (`tilpheno process ... -o OUT`).", callback=_existing_folder),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (default: this machine only)."),
    port: int = typer.Option(8765, "--port", min=1, max=65535, help="Port to listen on (the address is http://HOST:PORT/)."),
    inputs: Optional[Path] = typer.Option(None, "--inputs", help="Folder holding the run's FCS files if they moved (the gates are re-read from there; a report the run deferred is not drawn from there).", callback=_existing_folder),
) -> None:
    """Review, correct, sign and release the products of OUT in the browser (http://HOST:PORT/)."""
    import logging

    from tilpheno.errors import TilphenoError
    from tilpheno.review.regate import ReviewSource
    from tilpheno.review.server import build_service
    from tilpheno.review.server import serve as run

    try:
        source = ReviewSource(out, inputs)   # first: an OUT it refuses gets no note of a database made for it
        service = build_service(out, _database_url(out, db), inputs, source=source)
    except TilphenoError as exc:
        _fail(exc)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: listening on {host}: plain HTTP, put it behind an HTTPS proxy (cookies are Secure only "
                    "under HTTPS)", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"tilpheno review of {out}: http://{host}:{port}/  (Ctrl-C stops)")
    run(service, host, port)


@users_app.command("add")
def users_add(
    out: Path = typer.Argument(..., help="The output folder (locates the default database)."),
    username: str = typer.Argument(...),
    role: str = typer.Option(..., "--role", help="analyst, reviewer or admin"),
    full_name: str = typer.Option("", "--full-name", help="Name shown on signatures."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help=PASSWORD_STDIN_HELP),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Create an account (argon2id password hash). The name, role and full name are checked, and the
    name looked up, before the password is asked for."""
    from tilpheno.errors import TilphenoError
    from tilpheno.review import audit
    from tilpheno.review.auth import create_user, require_new, validate_account, validate_password
    from tilpheno.review.service import transaction

    try:
        validate_account(username, role, full_name)
        factory = _factory(out, db)
        with factory() as s:
            require_new(s, username)
        password = _password(password_stdin)
        validate_password(password)

        def add(s):
            user = create_user(s, username, full_name, role, password)
            audit.append(s, _actor(), "user_added", after={"username": user.username, "role": role, "full_name": user.full_name})
        transaction(factory, add)
    except TilphenoError as exc:
        _fail(exc)
    typer.echo(f"user {username} ({role}) added")


def _account(user) -> dict:
    """What the audit trail records of an account before and after a change (never its password hash)."""
    return {"username": user.username, "role": user.role, "active": user.active, "locked_until": user.locked_until,
            "failed_logins": user.failed_logins}


def _change(out: Path, db: Optional[str], username: str, action: str, change, done: str, unchanged: str) -> None:
    """Apply ``change(db, user)`` to one account, audited as ``action`` with the account before and
    after, and say ``user NAME: done``. An account the change leaves as it was (disabling a disabled
    account, a role it has, unlocking an account neither locked nor counting wrong passwords) is not
    audited: ``user NAME: unchanged, unchanged``. A new password is always a change."""
    from tilpheno.errors import TilphenoError
    from tilpheno.review import audit
    from tilpheno.review.auth import get_user
    from tilpheno.review.service import transaction

    try:
        factory = _factory(out, db)

        def do(s):
            user = get_user(s, username)
            before, password_hash = _account(user), user.password_hash
            ended = change(s, user)
            after = _account(user)
            if before == after and user.password_hash == password_hash:
                return False
            audit.append(s, _actor(), action, before=before, after={**after, **({"sessions_ended": ended} if ended else {})})
            return True
        changed = transaction(factory, do)
    except TilphenoError as exc:
        _fail(exc)
    typer.echo(f"user {username}: {done if changed else 'unchanged, ' + unchanged}")


def _end_sessions(s, user) -> int:
    """Log ``user`` out of every browser (their login sessions are deleted): a disabled account, or
    one whose password an admin reset, keeps no session that an enable would bring back to life."""
    from sqlalchemy import delete

    from tilpheno.review.audit import rowcount
    from tilpheno.review.models import LoginSession

    return rowcount(s.execute(delete(LoginSession).where(LoginSession.user_id == user.id)))


@users_app.command("list")
def users_list(out: Path = typer.Argument(...), db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """List accounts, one a line, tab-separated: user name, role, active or disabled, full name,
    locked until (empty unless locked now: a lock-out that ran out is not shown), and the products the account may open: an analyst's
    assigned products (`users assign`), "every product" for reviewers and admins. No account: one
    line on standard error says so (standard output stays empty)."""
    from sqlalchemy import select

    from tilpheno.errors import TilphenoError
    from tilpheno.review.audit import DATABASE_CLOCK
    from tilpheno.review.auth import locked
    from tilpheno.review.models import ProductAssignment, User

    try:
        factory = _factory(out, db)
    except TilphenoError as exc:
        _fail(exc)
    with factory() as s:
        assigned: dict[str, list[str]] = {}
        for a in s.scalars(select(ProductAssignment).order_by(ProductAssignment.product_id)):
            assigned.setdefault(a.username, []).append(a.product_id)
        accounts = list(s.scalars(select(User).order_by(User.username)))
        now = DATABASE_CLOCK.stamp(s)   # the record's clock, as the lock-outs were set
        if not accounts:
            typer.echo(f"no accounts in this database yet; add one: tilpheno users add {out} NAME --role "
                       "analyst|reviewer|admin", err=True)
        for u in accounts:
            typer.echo(f"{u.username}\t{u.role}\t{'active' if u.active else 'disabled'}\t{u.full_name}"
                       f"\t{'locked until ' + str(u.locked_until)[:19] + ' UTC' if locked(u, now) else ''}"
                       f"\t{_products(u.role, assigned.get(u.username, []))}")


def _products(role: str, assigned: list[str]) -> str:
    """The products column of ``users list``: an analyst's assigned products (or none); reviewers
    and admins see every product, and any assignment they hold counts only if made an analyst again."""
    if role == "analyst":
        return "products: " + (", ".join(assigned) if assigned else "none")
    return "every product" + (f" (assigned, counting only as an analyst: {', '.join(assigned)})" if assigned else "")


@users_app.command("unlock")
def users_unlock(out: Path = typer.Argument(...), username: str = typer.Argument(...),
                 db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """End a lock-out after repeated wrong passwords (and forget the wrong passwords counted so far)."""
    def change(s, u):
        u.locked_until, u.failed_logins = None, 0
    _change(out, db, username, "user_unlocked", change, "unlocked", "not locked")


@users_app.command("disable")
def users_disable(out: Path = typer.Argument(...), username: str = typer.Argument(...),
                  db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Disable an account (kept for the audit trail and signatures) and log it out of every browser;
    `users enable` makes it usable again."""
    def change(s, u):
        u.active = False
        return _end_sessions(s, u)
    _change(out, db, username, "user_disabled", change, "disabled", "disabled already")


@users_app.command("enable")
def users_enable(out: Path = typer.Argument(...), username: str = typer.Argument(...),
                 db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Enable a disabled account again (same role, password and products as before it was disabled)."""
    _change(out, db, username, "user_enabled", lambda s, u: setattr(u, "active", True), "enabled", "active already")


@users_app.command("set-role")
def users_set_role(out: Path = typer.Argument(...), username: str = typer.Argument(...), role: str = typer.Argument(...),
                   db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Change an account's role."""
    from tilpheno.review.db import ReviewError
    from tilpheno.review.models import ROLES

    if role not in ROLES:
        _fail(ReviewError(f"role {role!r}: one of {', '.join(ROLES)}"))
    _change(out, db, username, "user_role_changed", lambda s, u: setattr(u, "role", role), f"role {role}",
            f"role {role} already")


@users_app.command("set-password")
def users_set_password(out: Path = typer.Argument(...), username: str = typer.Argument(...),
                       password_stdin: bool = typer.Option(False, "--password-stdin", help=PASSWORD_STDIN_HELP),
                       db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Set a new password (also ends a lock-out, and logs the account out of every browser). A name
    with no account is refused before the password is asked for."""
    from tilpheno.errors import TilphenoError
    from tilpheno.review.auth import get_user, set_password

    try:
        with _factory(out, db)() as s:
            get_user(s, username)
    except TilphenoError as exc:
        _fail(exc)
    password = _password(password_stdin)

    def change(s, u):
        set_password(u, password)
        u.locked_until, u.failed_logins = None, 0
        return _end_sessions(s, u)
    _change(out, db, username, "user_password_set", change, "password set", "")


@users_app.command("assign")
def users_assign(out: Path = typer.Argument(...), username: str = typer.Argument(...),
                 products: list[str] = typer.Argument(..., help="Product ids of OUT."),
                 remove: bool = typer.Option(False, "--remove", help="Withdraw the assignment instead."),
                 db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Assign products to an analyst (reviewers and admins see every product). Only what changes is
    done, audited and reported: a product assigned already (or, with --remove, not assigned) is named
    as unchanged."""
    from sqlalchemy import delete, select

    from tilpheno.errors import TilphenoError
    from tilpheno.review import audit
    from tilpheno.review.auth import get_user
    from tilpheno.review.db import ReviewError
    from tilpheno.review.models import ProductAssignment
    from tilpheno.review.regate import ReviewSource
    from tilpheno.review.service import transaction

    try:
        source = ReviewSource(out)
        known = set(source.product_ids())
        unknown = [p for p in products if p not in known]
        failed = [p for p in unknown if p in source.failed_products()]
        if failed:
            raise ReviewError(source.not_reviewable(failed[0]))
        if unknown:
            raise ReviewError(f"no product(s) {', '.join(map(repr, unknown))} in {out}")
        factory = _factory(out, db)

        def do(s):
            user = get_user(s, username)
            changed = []
            for pid in dict.fromkeys(products):
                exists = s.scalar(select(ProductAssignment).where(ProductAssignment.product_id == pid,
                                                                  ProductAssignment.username == user.username))
                if remove and exists is not None:
                    s.execute(delete(ProductAssignment).where(ProductAssignment.id == exists.id))
                    changed.append(pid)
                elif not remove and exists is None:
                    s.add(ProductAssignment(product_id=pid, username=user.username, assigned_by=_actor(),
                                            assigned_at=audit.DATABASE_CLOCK.stamp(s)))
                    changed.append(pid)
            if changed:
                audit.append(s, _actor(), "unassign" if remove else "assign",
                             after={"username": username, "products": changed})
            return user.role, changed
        role, changed = transaction(factory, do)
    except TilphenoError as exc:
        _fail(exc)
    unchanged = [p for p in dict.fromkeys(products) if p not in changed]
    if changed:
        typer.echo(f"{'withdrew' if remove else 'assigned'} {', '.join(changed)} {'from' if remove else 'to'} {username}")
    if unchanged:
        typer.echo(f"unchanged: {', '.join(unchanged)} {'not' if remove else 'already'} assigned to {username}")
    if role != "analyst":
        typer.echo(f"note: {username}'s role is {role}: reviewers and admins see every product; assignments count "
                   "only while the account is an analyst")


@audit_app.command("verify")
def audit_verify(out: Path = typer.Argument(...), db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Recompute the SHA-256 chain; exit 1 and name every edited, deleted or re-ordered entry."""
    from tilpheno.errors import TilphenoError
    from tilpheno.review.audit import verify

    try:
        factory = _factory(out, db)
    except TilphenoError as exc:
        _fail(exc)
    with factory() as s:
        result = verify(s)
    if result.ok:
        typer.echo(f"audit trail intact: {result.n_entries} entries, head SHA-256 {result.head_sha256}")
        return
    for problem in result.problems:
        typer.secho(f"audit: {problem}", fg=typer.colors.RED, err=True)
    typer.secho(f"audit trail BROKEN: {len(result.problems)} problem(s) in {result.n_entries} entries", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


@audit_app.command("export")
def audit_export(out: Path = typer.Argument(...), csv_path: Path = typer.Option(..., "-o", "--out", help="CSV file to write."),
                 db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Write every audit entry (oldest first) as CSV, then record the copy in the trail (action
    `audit_export`: who, the file, the entries it holds and its SHA-256; the copy holds not its own
    entry, the next copy does). The refusal windows whose time is over (no server ran since) are
    written first: the copy holds their counts; those still open follow the entries, their counts
    so far marked open (action `..._open`, no `seq`: not entries of the chain). Refused requests a
    killed server held (its spool file beside OUT) are written first too; those a running server
    still holds follow, marked held (action `..._held`, no `seq`)."""
    from tilpheno.cli import _write_or_fail
    from tilpheno.errors import TilphenoError
    from tilpheno.io.atomic import write_text
    from tilpheno.review import refusals
    from tilpheno.review.db import ReviewError
    from tilpheno.review.service import record_trail_export, spool_of, trail_copy, transaction, write_spooled

    try:
        factory = _factory(out, db)
        rule = refusals.RefusalRule()
        transaction(factory, lambda s: refusals.close(s, rule))
        spool = spool_of(out, factory)
        try:
            write_spooled(factory, rule, spool)   # what killed servers held
        except ReviewError as exc:
            typer.echo(f"warning: refusals servers held not written ({exc}): the copy lists them, marked held", err=True)
        copy = trail_copy(factory, rule, spool)
    except (TilphenoError, OSError) as exc:
        _fail(exc)
    # -o a folder, no permission, a full disk (whose error names no file): one line naming -o
    _write_or_fail(csv_path, lambda path: write_text(path, copy.text))
    try:
        seq = record_trail_export(factory, _actor(), str(csv_path), copy)
    except TilphenoError as exc:
        _fail(ReviewError(f"{csv_path}: written, but recording its export in the audit trail failed: {exc}"))
    typer.echo(f"audit trail written to {csv_path}; this export is audited as entry {seq} (audit_export)"
               + (f"; {copy.held} row(s) after the entries are refusals servers still hold, not yet written (action "
                  "..._held, no seq)" if copy.held else ""))


def export_approved(
    out: Path = typer.Argument(..., help="The processed output folder.", callback=_existing_folder),
    dest: Path = typer.Option(..., "-o", "--out", help="Folder for the approved tables, Gating-ML and certificates."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    inputs: Optional[Path] = typer.Option(None, "--inputs", help="Folder holding the run's FCS files if they moved.", callback=_existing_folder),
) -> None:
    """phenotypes_approved.csv, populations_approved.csv, and per approved product its Gating-ML and
    certificate, all made from one approval per product (an approval changed during the export:
    nothing is written). The files are written beside the folder first; each certificate is
    recorded in the audit trail (action `certificate`, user `cli:` and your login name, e.g. cli:root) only
    once all were written, with each table (`export_table`: its rows and the SHA-256 of the file),
    then they are moved into it."""
    from tilpheno.errors import TilphenoError
    from tilpheno.io.outdir import describe_os_error
    from tilpheno.review.db import ReviewError
    from tilpheno.review.export import approved_export, write_approved_export
    from tilpheno.review.server import build_service

    try:
        service = build_service(out, db, inputs)
        export = approved_export(service)
        left_out = write_approved_export(service, export, dest, _actor())
    except TilphenoError as exc:
        _fail(exc)
    except OSError as exc:   # a full disk names no file: the folder is named
        _fail(ReviewError(f"cannot export: {describe_os_error(exc, dest)}; nothing was exported and no certificate was audited"))
    failed = int((export.phenotypes["review_status"] == "failed processing").sum())
    rerun = len(export.rerun)
    unbound = sorted(pid for pid, a in export.approvals.items() if a.approval.id in a.notes)
    typer.echo(f"{len(export.approvals)} approved product(s) of {len(export.phenotypes)} exported to {dest}"
               + (f" ({failed} failed processing: not released)" if failed else "")
               + (f" ({len(unbound)} approved by a signature of an older form or other software: "
                  f"{', '.join(unbound[:4])}{' ...' if len(unbound) > 4 else ''}; its unbound column says what the "
                  "signature does not bind)"
                  if unbound else "")
               + (f" ({rerun} re-run after signing: approval or rejection void, needs review; release_status says why)"
                  if rerun else "")
               + (f"; removed the previous export's {', '.join(left_out[:4])}{' ...' if len(left_out) > 4 else ''} "
                  f"({len(left_out)} file(s) of products no longer approved)" if left_out else ""))


def register(app: typer.Typer) -> None:
    """Add the review commands to the main CLI."""
    app.command("serve")(serve)
    app.command("export-approved")(export_approved)
    app.add_typer(users_app, name="users")
    app.add_typer(audit_app, name="audit")
