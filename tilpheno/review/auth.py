"""Users, roles, passwords (argon2id), lock-out, login sessions and CSRF tokens.

Roles: ``analyst`` (view, adjust gates, save versions, sign "reviewed"), ``reviewer`` (QA: also
sign "approved for release" / "rejected" and apply a gate to other products of a batch),
``admin`` (everything, and the audit trail in the browser). Accounts are managed with
``tilpheno users ...`` (there is no self-registration).

Lock-out: ``MAX_FAILURES`` consecutive wrong passwords (at login or at a signature's password
re-entry) lock the account for ``LOCKOUT_MINUTES``; ``tilpheno users unlock`` ends it early. A
lock-out stops logins and signatures; it does not end the account's open sessions (someone else's
guesses at the login page must not log the owner out), except the session whose signature
password re-entry set it (the web app ends that one: whoever sits at it failed to show they are
the owner). An admin's ``users disable`` or ``users set-password`` ends every session of the account.
Sessions: a random 256-bit token in an httpOnly, SameSite=Strict cookie; the database stores
only its SHA-256, with a per-session CSRF token and an expiry (``SESSION_HOURS``).
"""
from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from tilpheno.review.audit import DATABASE_CLOCK, Clock
from tilpheno.review.db import ReviewError
from tilpheno.review.models import ROLES, LoginSession, User, utc

MAX_FAILURES = 5
LOCKOUT_MINUTES = 15
SESSION_HOURS = 8
MIN_PASSWORD = 10
_USERNAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HASHER = PasswordHasher()   # argon2id, RFC 9106 low-memory profile (argon2-cffi's default)
_DUMMY_HASH = ""             # made on first use: verified for unknown users so they cost the same time


class AuthError(Exception):
    """Login or password re-entry refused; the message is safe to show. ``detail``: what the audit
    trail records beside it and the message must not tell (no such account, account disabled: the
    login page says the same for both, so it names no account). ``locked_now``: this wrong password
    locked the account."""

    def __init__(self, message: str, detail: str = "", locked_now: bool = False):
        super().__init__(message)
        self.detail, self.locked_now = detail, locked_now

    def audited(self) -> str:
        """The audit trail's reason: the message, and the detail when there is one."""
        return f"{self} ({self.detail})" if self.detail else str(self)


def validate_account(username: str, role: str, full_name: str = "") -> None:
    """ReviewError naming the field of a new account that is not allowed: the user name, the role or
    the full name (printed on signatures, certificates and ``users list``'s tab-separated lines: at
    most 200 characters, no tab, line break or other control character)."""
    if not _USERNAME.match(username):
        raise ReviewError(f"user name {username!r}: use 1-64 letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise ReviewError(f"role {role!r}: one of {', '.join(ROLES)}")
    if len(full_name) > 200 or any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in full_name):
        raise ReviewError(f"full name {full_name[:40]!r}: at most 200 characters, no tab, line break or other "
                          "control character")


def validate_password(password: str) -> None:
    """ReviewError unless a new password has at least ``MIN_PASSWORD`` characters."""
    if len(password) < MIN_PASSWORD:
        raise ReviewError(f"password: at least {MIN_PASSWORD} characters")


def require_new(db: Session, username: str) -> None:
    """ReviewError when an account ``username`` exists already, or one whose name differs only in
    case (``Alice`` beside ``alice``: two people, or one person with two accounts, on the same
    signatures and audit trail; the login matches the exact name)."""
    if db.scalar(select(User).where(User.username == username)) is not None:
        raise ReviewError(f"user {username!r} exists already")
    twin = db.scalar(select(User.username).where(func.lower(User.username) == username.lower()))
    if twin is not None:
        raise ReviewError(f"user {username!r}: {twin!r} exists already (user names that differ only in case are "
                          "refused)")


def create_user(db: Session, username: str, full_name: str, role: str, password: str,
                clock: Clock = DATABASE_CLOCK) -> User:
    """A new active account; its full name (on signatures) trimmed, the user name when blank;
    ``created_at`` by ``clock`` (:class:`~tilpheno.review.audit.Clock`: the database's on PostgreSQL)."""
    validate_account(username, role, full_name)
    validate_password(password)
    require_new(db, username)
    user = User(username=username, full_name=full_name.strip() or username, role=role, password_hash=_HASHER.hash(password),
                failed_logins=0, locked_until=None, active=True, created_at=clock.stamp(db))
    db.add(user)
    db.flush()
    return user


def set_password(user: User, password: str) -> None:
    validate_password(password)
    user.password_hash = _HASHER.hash(password)


def get_user(db: Session, username: str) -> User:
    user = db.scalar(select(User).where(User.username == username))
    if user is None:
        raise ReviewError(f"no user {username!r}")
    return user


def locked(user: User, now: str) -> bool:
    """Whether ``user``'s lock-out is in force at ``now`` (stored text, :func:`~tilpheno.review.models.utc`:
    the record's clock, as ``locked_until`` was set; fixed-width text compares as the times do)."""
    return user.locked_until is not None and user.locked_until > now


class PasswordEntry:
    """A password as typed, once: argon2 (the slow part, by design) verifies it against a stored
    hash once, however often the transaction that records the attempt re-runs (another writer took
    the audit chain's next number, a SQLite lock): a retry repeats only the database part, and the
    failure is counted once (the retried transaction rolled the first count back)."""

    def __init__(self, text: str):
        self.text = text
        self._verdicts: dict[str, bool] = {}

    def matches(self, password_hash: str) -> bool:
        """Whether the password is the one ``password_hash`` was made of (a malformed hash: no)."""
        if password_hash not in self._verdicts:
            try:
                self._verdicts[password_hash] = _HASHER.verify(password_hash, self.text)
            except (VerificationError, InvalidHashError):
                self._verdicts[password_hash] = False
        return self._verdicts[password_hash]


def _count_failure(db: Session, user: User) -> int:
    """Add one to ``user``'s consecutive wrong passwords in the database itself (``SET failed_logins =
    failed_logins + 1``, which waits for a concurrent attempt's commit): wrong passwords typed at the
    same time each count, where writing back the number read before the check kept one of them."""
    count = int(db.execute(update(User).where(User.id == user.id).values(failed_logins=User.failed_logins + 1)
                           .returning(User.failed_logins).execution_options(synchronize_session=False)).scalar_one())
    set_committed_value(user, "failed_logins", count)
    return count


def _clear_failures(db: Session, user: User, now: str) -> bool:
    """After a right password: forget ``user``'s wrong passwords and an ended lock-out, unless the
    database holds a lock-out in force (set by a wrong password checked at the same time, after
    ``user`` was read): False then, and the account stays locked (a right guess in flight used to
    clear a lock-out just set). The row is written (and locked) only when there is something to
    forget, as before. ``now``: stored text by the record's clock."""
    failed, until = db.execute(select(User.failed_logins, User.locked_until).where(User.id == user.id)).one()
    if until is not None and until > now:
        return False
    if failed or until is not None:
        cleared = db.execute(update(User).where(User.id == user.id, or_(User.locked_until.is_(None), User.locked_until <= now))
                             .values(failed_logins=0, locked_until=None).returning(User.id)
                             .execution_options(synchronize_session=False)).scalar_one_or_none()
        if cleared is None:
            return False
    set_committed_value(user, "failed_logins", 0)
    set_committed_value(user, "locked_until", None)
    return True


def _locked_error(user: User) -> AuthError:
    return AuthError(f"account {user.username} is locked until {str(user.locked_until)[:19]} UTC after "
                     f"{MAX_FAILURES} wrong passwords (an admin can run: tilpheno users unlock {user.username})")


def check_password(db: Session, user: User | None, password: str | PasswordEntry, clock: Clock = DATABASE_CLOCK) -> User:
    """The user if ``password`` is right; else count the failure (lock-out) and raise AuthError.

    The caller commits in both cases (a failure must be stored). A caller that may re-run the
    transaction passes a :class:`PasswordEntry` made outside it (the password is verified once).
    A lock-out's start and end are ``clock``'s (:class:`~tilpheno.review.audit.Clock`, read once:
    the database's on PostgreSQL), as the entries that record them."""
    global _DUMMY_HASH
    entry = password if isinstance(password, PasswordEntry) else PasswordEntry(password)
    if user is None or not user.active:
        _DUMMY_HASH = _DUMMY_HASH or _HASHER.hash("not a password of anyone")
        entry.matches(_DUMMY_HASH)   # same work as for a real account
        raise AuthError("wrong user name or password", "no such account" if user is None else "account disabled")
    now = clock.now(db)
    if locked(user, utc(now)):
        raise _locked_error(user)
    if not entry.matches(user.password_hash):
        if _count_failure(db, user) >= MAX_FAILURES:
            user.locked_until = utc(now + LOCKOUT_MINUTES * 60)
            user.failed_logins = 0
            raise AuthError(f"wrong password; account {user.username} is now locked for {LOCKOUT_MINUTES} minutes",
                            locked_now=True)
        raise AuthError("wrong user name or password")
    if not _clear_failures(db, user, utc(now)):
        db.refresh(user)
        raise _locked_error(user)
    if _HASHER.check_needs_rehash(user.password_hash):
        user.password_hash = _HASHER.hash(entry.text)
    return user


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_session(db: Session, user_id: int | None, clock: Clock = DATABASE_CLOCK) -> tuple[str, LoginSession]:
    """A fresh session (anonymous when ``user_id`` is None): ``(cookie token, row)``; its start and
    expiry by ``clock`` (the record's)."""
    token = secrets.token_urlsafe(32)
    now = clock.now(db)
    row = LoginSession(token_sha256=token_digest(token), user_id=user_id, csrf_token=secrets.token_urlsafe(32),
                       created_at=utc(now), expires_at=utc(now + SESSION_HOURS * 3600))
    db.add(row)
    db.flush()
    return token, row


def find_session(db: Session, token: str | None, clock: Clock = DATABASE_CLOCK) -> LoginSession | None:
    """The live session of a cookie token, else None (unknown, tampered or expired by ``clock``, the
    record's: read in the query itself, :meth:`~tilpheno.review.audit.Clock.in_statement`)."""
    if not token or len(token) > 100:
        return None
    _, now = clock.in_statement(db)
    return db.scalar(select(LoginSession).where(LoginSession.token_sha256 == token_digest(token),
                                                LoginSession.expires_at > now))


def csrf_ok(row: LoginSession | None, sent: str | None) -> bool:
    return row is not None and bool(sent) and secrets.compare_digest(row.csrf_token.encode(), str(sent).encode())
