"""Refused requests counted in the database, not each written: the audit trail's flood guard.

A logged-in script hitting a forbidden URL in a loop would add one ``access_refused`` entry per
request. Rule: the first refusal of a (user, method and path, product, reason) is written; identical
refusals within :data:`WINDOW_S` seconds of it are counted, not written; once that window has
closed, one ``access_refused_repeated`` entry gives their count. A script varying the path or the
product would open a window per request: a user with :data:`MAX_OPEN_PER_USER` windows open has
each further refused request folded into one window of that user (opened by the first of them,
as long as the others), written as one ``access_refused_folded`` entry naming how many distinct
requests it holds and how often they were refused.

The open windows are rows of ``refusal_windows`` (:class:`~tilpheno.review.models.RefusalWindow`),
so the counts survive a crash or kill and every server process on one database counts into the
same window. A refusal in an open window is one UPDATE of its row (the count, under the row's lock);
one that finds no window opens it with an INSERT ... ON CONFLICT DO NOTHING, and when another
server opened the same window meanwhile (its key taken) counts there instead, in the same
transaction.
A window is closed only when its time is over, by deleting its row (DELETE ... RETURNING: of two
servers closing it at once, one gets it), its entry written in the same transaction: at the next
request to any server, the next refusal that opens a window, or a server starting or stopping. A
server stopping (or crashing) leaves the windows still open in the database, where the servers
still running go on counting into them; the first server to find one over writes it, and one
started later (a lone server restarted) writes those over at its start, as ``tilpheno audit export``
does before its copy. Each entry gives the time
its window closed (``closed_at``: when its time was over, which may be before the entry was
written). The trail stays append-only: no entry is changed. A copy of the trail shows the windows
still open after its entries, their counts so far marked open (:func:`open_rows`), and writes nothing.

A refusal the database would not take ("database busy" at every run of its transaction) is held by
its server (:class:`DelayedRefusals`, at most :data:`MAX_DELAYED`; beyond, only counted as lost),
durably: one fsync'd line of its spool file beside OUT, and written at that server's next
successful write (:func:`write_delayed`: ``access_refused_delayed`` and ``access_refused_lost``
entries, their times by the server's clock, saying so); what a killed server held, by the next
server of the database to start, once.

A window's times (opened, each refusal's, closed) are the database's clock
(:class:`~tilpheno.review.audit.Clock`, as the
entries' ``at``): on PostgreSQL one clock for every server, so servers on several machines
with skewed clocks, or one whose clock NTP moves, neither stretch nor shrink a window; on SQLite
(one machine's file) that machine's clock.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from tilpheno.review import audit
from tilpheno.review.models import AuditEntry, RefusalWindow, utc

log = logging.getLogger(__name__)

WINDOW_S = 300.0          # identical refused requests within this many seconds of the written one are counted
MAX_OPEN_PER_USER = 20    # windows open at once per user; beyond, a user's refused requests fold into one window
FOLDED_NAMED = 10         # requests an access_refused_folded entry names (the most refused first)
OPEN_SUFFIX = "_open"     # a copy of the trail shows an open window as its entry-to-be's action + this


@dataclass(frozen=True)
class RefusalRule:
    """The window's length, the per-user cap and the clock the windows' times and their entries'
    are read from (:class:`audit.Clock`: the database's on PostgreSQL; the server's own)."""
    window: float = WINDOW_S
    max_open: int = MAX_OPEN_PER_USER
    clock: audit.Clock = audit.DATABASE_CLOCK

    def now(self, db: Session) -> float:
        """Now by this rule's clock, in seconds since the epoch."""
        return self.clock.now(db)


def window_key(username: str, request: str, product_id: str, refusal: str) -> str:
    """The SHA-256 naming a refusal's window (the refusal's text may be longer than an index allows)."""
    return hashlib.sha256(audit.canonical([username, request, product_id, refusal]).encode("utf-8")).hexdigest()


def record(db: Session, rule: RefusalRule, username: str, request: str, product_id: str, refusal: str) -> int | None:
    """Count or write one refused request (module docstring), in the caller's transaction: the
    ``seq`` of its ``access_refused`` entry, or None when it was counted in an open window (its own,
    or its user's folded one). Windows whose time is over are closed first. A window of the same
    key that another server opened (and committed) after this request found none counts it, in this
    transaction: a key taken is never an error, however often it happens (:func:`_open`). The clock
    is read once: by the UPDATE that counts a refusal in its open window (in the statement,
    :meth:`audit.Clock.in_statement`), or, for one that finds none, once the trail's head is locked
    (on PostgreSQL a query), the time of its window, of the windows it closes and of its entry."""
    key = window_key(username, request, product_id, refusal)
    seconds, stamp = rule.clock.in_statement(db)
    if _count(db, key, stamp, opened_after=seconds - rule.window):
        return None
    head = audit.locked_head(db)   # the user's open windows read below stay so until this commits (PostgreSQL)
    now = rule.now(db)   # read with the head locked: the entries' times in chain order
    at = utc(now)
    if close(db, rule, now=now):   # this request's own window among them, if its time is over
        head = audit.locked_head(db)   # moved by the entries written
    open_windows = db.execute(select(RefusalWindow.repeats_entry, RefusalWindow.opened).where(
        RefusalWindow.username == username, RefusalWindow.opened > now - rule.window)).all()
    window = {"key_sha256": key, "username": username, "request": request, "product_id": product_id,
              "refusal": refusal, "opened": now, "opened_at": at, "last_at": at, "count": 0}
    if sum(entry is not None for entry, _ in open_windows) < rule.max_open:
        # the entry this window repeats is the trail's next: the head is locked (PostgreSQL) or the
        # database write-locked (SQLite) since this transaction's first UPDATE
        window["repeats_entry"] = (head.seq if head is not None else 0) + 1
    else:   # folded: counted in the user's one window beyond the cap, opened by its first request
        window.update(repeats_entry=None, count=1,
                      opened=min((opened for entry, opened in open_windows if entry is None), default=now))
    if not _open(db, window):   # another server opened this key's window since this request's UPDATE: counted there
        if not _count(db, key, at):   # and a third closed it since (its time over): the transaction re-runs
            raise audit.ChainConflict(f"refusal window {key[:12]} closed while this refusal was counted")
        return None
    if window["repeats_entry"] is None:
        return None
    entry = audit.append(db, username, "access_refused", product_id=product_id, after={"request": request},
                         reason=refusal, clock=rule.clock, now=now)
    if entry.seq != window["repeats_entry"]:   # another writer appended meanwhile: the transaction re-runs
        raise audit.ChainConflict(f"refusal window {key[:12]}: entry {entry.seq} written, "
                                  f"{window['repeats_entry']} expected")
    return entry.seq


def _count(db: Session, key: str, at: str | ColumnElement[Any], opened_after: float | ColumnElement[Any] | None = None) -> bool:
    """Count one more refusal (``last_at`` = ``at``) in the window of ``key``, if there is one
    (opened after ``opened_after``, seconds since the epoch: still open; None: whatever its time);
    whether one was. ``at`` and ``opened_after`` may be SQL the UPDATE evaluates (:meth:`audit.Clock.in_statement`)."""
    query = update(RefusalWindow).where(RefusalWindow.key_sha256 == key)
    if opened_after is not None:
        query = query.where(RefusalWindow.opened > opened_after)
    return audit.rowcount(db.execute(query.values(count=RefusalWindow.count + 1, last_at=at))) == 1


def _open(db: Session, window: dict) -> bool:
    """Insert the window row ``window`` (its columns), unless a row holds its key already: one that
    another server committed after this transaction's UPDATE found none (PostgreSQL waits for that
    server's transaction to end; SQLite's write lock lets none in). Whether it was inserted. An
    INSERT ... ON CONFLICT DO NOTHING, not a failed INSERT: a collision used to roll the whole
    transaction back and re-run it (:func:`tilpheno.review.service.transaction`), and a request
    whose key collided at each of its 8 runs ended in HTTP 500, its refusal not counted."""
    dialect = db.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    return db.scalar(insert(RefusalWindow).values(**window).on_conflict_do_nothing(index_elements=["key_sha256"])
                     .returning(RefusalWindow.key_sha256)) is not None   # the row inserted (rowcount: -1 on psycopg)


def due(db: Session, rule: RefusalRule) -> bool:
    """Whether a window's time is over: one indexed read, the clock read in it
    (:meth:`audit.Clock.in_statement`; what every request costs when none is)."""
    seconds, _ = rule.clock.in_statement(db)
    return db.scalar(select(RefusalWindow.key_sha256).where(RefusalWindow.opened <= seconds - rule.window)
                     .limit(1)) is not None


def close(db: Session, rule: RefusalRule, until: float | None = None, *, now: float | None = None) -> list[int]:
    """Close the windows whose time is over at ``until`` (default: now) and write their entries
    (:func:`window_counts`), oldest first, in the caller's transaction; returns their ``seq``. Each
    gives ``closed_at``, the time its window's time was over (opened + ``window_s``). The entries'
    time is ``now``: the rule's clock read once the trail's head is locked, here or by the caller."""
    if now is None:
        audit.locked_head(db)
        now = rule.now(db)
    query = delete(RefusalWindow).returning(RefusalWindow).where(
        RefusalWindow.opened <= (now if until is None else until) - rule.window)
    counts = window_counts(db.scalars(query, execution_options={"synchronize_session": False}), rule)
    return [audit.append(db, c.username, c.action, product_id=c.product_id, reason=c.reason,
                         after={**c.after, "closed_at": utc(c.ends)}, clock=rule.clock, now=now).seq for c in counts]


@dataclass(frozen=True)
class WindowCount:
    """What one window's refusals come to: the entry that closes it writes (:func:`close`), or what
    a copy of the trail shows of it while it is open (:func:`open_rows`). ``after`` lacks the
    window's end, ``ends`` (seconds since the epoch: opened + ``window_s``)."""
    action: str   # access_refused_repeated | access_refused_folded
    username: str
    product_id: str
    after: dict[str, Any]
    reason: str
    ends: float


def window_counts(windows: Iterable[RefusalWindow], rule: RefusalRule) -> list[WindowCount]:
    """The counts of ``windows`` (rows of ``refusal_windows``), oldest first.
    ``access_refused_repeated``: who, the product, ``after``: the request, ``count`` (the refusals
    counted, not written), ``repeats_entry`` (the ``seq`` of the one written), ``window_s`` and
    ``last_at`` (the last one's time); the refusal as its reason (a window that counted none: no
    entry). ``access_refused_folded``, one per folded window of a user (its requests' rows share
    ``opened``): ``distinct_requests``, ``count`` (their refusals), ``max_open``, ``window_s``,
    ``first_at``, ``last_at``, and the :data:`FOLDED_NAMED` most refused ``requests`` (method and path)."""
    ordered = sorted(windows, key=lambda w: (w.opened, w.opened_at, w.key_sha256))
    folded: dict[tuple[str, float], list[RefusalWindow]] = {}
    for w in ordered:
        if w.repeats_entry is None:
            folded.setdefault((w.username, w.opened), []).append(w)
    counts = []
    for w in ordered:
        if w.repeats_entry is not None and w.count:
            counts.append(WindowCount("access_refused_repeated", w.username, w.product_id, {
                "request": w.request, "count": w.count, "repeats_entry": w.repeats_entry, "window_s": rule.window,
                "last_at": w.last_at}, w.refusal, w.opened + rule.window))
        elif w.repeats_entry is None and (w.username, w.opened) in folded:
            counts.append(_folded(rule, w.username, folded.pop((w.username, w.opened))))
    return counts


def _folded(rule: RefusalRule, username: str, windows: list[RefusalWindow]) -> WindowCount:
    """The ``access_refused_folded`` count of one folded window of ``username`` (:func:`window_counts`)."""
    count = sum(w.count for w in windows)
    named = sorted(windows, key=lambda w: (-w.count, w.request, w.product_id))[:FOLDED_NAMED]
    return WindowCount("access_refused_folded", username, "", {
        "distinct_requests": len(windows), "count": count, "max_open": rule.max_open, "window_s": rule.window,
        "first_at": min(w.opened_at for w in windows), "last_at": max(w.last_at for w in windows),
        "requests": [w.request for w in named]},
        (f"{len(windows)} distinct requests of {username} refused {count} times within {rule.window:g} s, "
         f"beyond the {rule.max_open} windows of refused requests open at once per user"), windows[0].opened + rule.window)


def open_rows(db: Session, rule: RefusalRule) -> list[dict[str, str]]:
    """What a copy of the trail shows of the windows still open (their time not over; a window that
    counted nothing beyond its written entry: nothing), oldest first: one row per window in the
    trail's CSV columns (:data:`tilpheno.review.audit.CSV_COLUMNS`), not an entry of the trail:
    ``seq``, ``prev_sha256`` and ``entry_sha256`` empty, ``at`` now (the rule's clock), ``action``
    the entry it will be once closed with :data:`OPEN_SUFFIX` (``access_refused_repeated_open``,
    ``access_refused_folded_open``), ``after`` its count so far, ``"open": true`` and
    ``closes_at`` (when its time will be over; a refusal counted after the copy still counts)."""
    now = rule.now(db)
    counts = window_counts(db.scalars(select(RefusalWindow).where(RefusalWindow.opened > now - rule.window)), rule)
    return [{"seq": "", "at": utc(now), "username": c.username, "action": c.action + OPEN_SUFFIX,
             "product_id": c.product_id, "before_json": audit.canonical(None),
             "after_json": audit.canonical({**c.after, "open": True, "closes_at": utc(c.ends)}), "reason": c.reason,
             "prev_sha256": "", "entry_sha256": ""} for c in counts]


MAX_DELAYED = 1000   # refusals a server holds while the database would not take them; beyond, counted as lost
SPOOL_SUFFIX = ".jsonl"   # a held-refusals spool file: <database key>.<token>.jsonl


def spool_directory(out_dir: str | Path) -> Path:
    """``<OUT>.review.held``, beside the output folder (as its SQLite database): where its servers
    spool the refusals they hold (:class:`DelayedRefusals`)."""
    out = Path(out_dir).resolve()
    return out.parent / (out.name + ".review.held")


def database_key(url: str) -> str:
    """The first 16 hex digits of the SHA-256 of a database's URL (its password hidden): a spool file
    names the database it is for, so the servers of one OUT on another database leave it alone."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class DelayedRefusal:
    """A refused request the database would not take ("database busy" at every run of its
    transaction), held by its server: who, the request (method and path), the product it named, the
    refusal, when (``at``: seconds since the epoch by the server's own clock, the database's being
    out of reach) and the database's error."""
    username: str
    request: str
    product_id: str
    refusal: str
    at: float
    error: str


@dataclass(frozen=True)
class Lost:
    """Refused requests a server could neither write nor hold (beyond its ``limit``): how many, the
    first's and the last's time (seconds since the epoch, the server's clock)."""
    count: int = 0
    first: float = 0.0
    last: float = 0.0

    def plus(self, other: "Lost") -> "Lost":
        """These and ``other`` together."""
        if not (self.count and other.count):
            return self if self.count else other
        return Lost(self.count + other.count, min(self.first, other.first), max(self.last, other.last))


@dataclass(frozen=True)
class Held:
    """What spool files held (:func:`read_spool`): their refusals (oldest first), those lost, how
    many a server holds at most, and the files' tokens (each entry written from them names them)."""
    refusals: list[DelayedRefusal]
    lost: Lost
    limit: int
    tokens: tuple[str, ...] = ()

    def merged(self, other: "Held") -> "Held":
        """These and ``other`` together, the refusals by time (the first held first)."""
        return Held(sorted(self.refusals + other.refusals, key=lambda r: r.at), self.lost.plus(other.lost),
                    self.limit, self.tokens + other.tokens)


@dataclass
class SpoolFile:
    """One spool file (:class:`DelayedRefusals`), open and ``flock``-ed by the process holding it
    (``fd``): its ``path``, ``token`` (the random part of its name) and, for a server's own file,
    the refusals it held and lost there."""
    path: Path
    token: str
    fd: int
    held: int = 0
    lost: Lost = Lost()


def spool_token(path: Path) -> str:
    """The random token in a spool file's name (``<database key>.<token>.jsonl``)."""
    return path.name[:-len(SPOOL_SUFFIX)].split(".", 1)[1]


def read_spool(path: Path, limit: int) -> tuple[Held, list[str]]:
    """The refusals the spool file ``path`` holds (one canonical-JSON line each: a held refusal's
    fields, or ``{"lost": at}`` for one counted lost) and one problem line per line that is not whole
    (a server killed while writing it: the file's last line, without its line end) or not such JSON:
    reported, not fatal; the other lines are read."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    refusals_held: list[DelayedRefusal] = []
    lost, problems = Lost(), []
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        if number == len(lines):   # no line end after it: torn by a kill
            problems.append(f"{path}: line {number} torn ({len(line)} bytes without a line end): that refusal's "
                            "record is incomplete, not written")
            continue
        try:
            row = json.loads(line)
            if "lost" in row:
                lost = lost.plus(Lost(1, float(row["lost"]), float(row["lost"])))
            else:
                refusals_held.append(DelayedRefusal(str(row["username"]), str(row["request"]), str(row["product_id"]),
                                                    str(row["refusal"]), float(row["at"]), str(row["error"])))
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{path}: line {number} not a held refusal ({exc}), not written")
    return Held(refusals_held, lost, limit, (spool_token(path),)), problems


class DelayedRefusals:
    """The refusals one server process could not write (:class:`DelayedRefusal`), held until its next
    successful write (:func:`write_delayed`, run before every request's own work, at a server's start
    and at its stop), durably: each is one line appended to the server's spool file in ``directory``
    (:func:`spool_directory`) and fsync'd before the request is answered, so a server killed before
    that write loses none; the next server of the database to start writes what a killed one held (:meth:`orphans`). At most ``limit`` refusals held at once; each one
    more is counted as lost (a ``{"lost": at}`` line). A server's file is ``flock``-ed by it while it
    lives (another process takes only files whose server ended) and named
    ``<database key>.<token>.jsonl`` (:func:`database_key`; a random token); the file being written
    is set aside (:meth:`take`), new refusals going to a new file, and removed once its entries are
    committed, each entry naming the tokens it was written from, so a file whose removal a kill
    prevented is not written twice (:func:`written_tokens`). Thread-safe (a server's requests run in
    threads)."""

    def __init__(self, directory: Path, database: str, limit: int = MAX_DELAYED):
        self.directory, self.database, self.limit = Path(directory), database, limit
        self._lock = threading.Lock()
        self._current: SpoolFile | None = None
        self._pending: list[SpoolFile] = []   # set aside by take, not written yet
        self.writing = threading.Lock()   # one thread of the server writes them at a time

    def hold(self, refusal: DelayedRefusal) -> Lost | None:
        """Hold ``refusal`` (its line written and fsync'd); None when held, else the refusals lost so
        far, this one counted. OSError when its line could not be written."""
        with self._lock:
            if self._current is None:
                self._current = self._create()
            mine = self._pending + [self._current]
            if sum(f.held for f in mine) < self.limit:
                row: dict[str, Any] = {"username": refusal.username, "request": refusal.request,
                                       "product_id": refusal.product_id, "refusal": refusal.refusal,
                                       "at": refusal.at, "error": refusal.error}
                self._append(row)
                self._current.held += 1
                return None
            self._append({"lost": refusal.at})
            self._current.lost = self._current.lost.plus(Lost(1, refusal.at, refusal.at))
            lost = Lost()
            for f in mine:
                lost = lost.plus(f.lost)
            return lost

    def _append(self, row: dict[str, Any]) -> None:
        assert self._current is not None
        os.write(self._current.fd, (audit.canonical(row) + "\n").encode("utf-8"))
        os.fsync(self._current.fd)

    def _create(self) -> SpoolFile:
        """A new spool file of this server, locked before it takes its name (another process
        finding it unlocked would take it for a killed server's)."""
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        path = self.directory / f"{self.database}.{token}{SPOOL_SUFFIX}"
        creating = self.directory / f".{path.name}.creating"
        fd = os.open(creating, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(creating, path)
        _sync_directory(self.directory)
        return SpoolFile(path, token, fd)

    def pending(self) -> bool:
        """Whether this server holds refusals not written yet (no file read)."""
        with self._lock:
            return bool(self._pending) or (self._current is not None and bool(self._current.held or self._current.lost.count))

    def take(self) -> list[SpoolFile]:
        """This server's spool files not yet written, the current one set aside (new refusals go to
        a new file): hand them to :meth:`written` once their entries are committed."""
        with self._lock:
            if self._current is not None and (self._current.held or self._current.lost.count):
                self._pending.append(self._current)
                self._current = None
            return list(self._pending)

    def orphans(self) -> list[SpoolFile]:
        """The spool files of this database whose server ended (killed: their ``flock`` released),
        locked for this process: hand them to :meth:`written` once written, else :meth:`release`."""
        import fcntl

        mine = {f.token for f in self._pending} | ({self._current.token} if self._current else set())
        found = []
        for path in self._spool_paths():
            token = spool_token(path)
            if token in mine:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:   # written and removed by another server meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:   # its server lives and writes it itself
                os.close(fd)
                continue
            found.append(SpoolFile(path, token, fd))
        return found

    def _spool_paths(self) -> list[Path]:
        """Every spool file of this database in :attr:`directory`, live servers' and killed ones', by name."""
        return sorted(self.directory.glob(f"{self.database}.*{SPOOL_SUFFIX}"))

    def read_all(self) -> list[Held]:
        """What every spool file of this database holds now (live servers' too: read, not locked;
        a line still being written is left out, :func:`read_spool`), for a copy of the trail."""
        found = []
        for path in self._spool_paths():
            try:
                held, problems = read_spool(path, self.limit)
            except FileNotFoundError:   # written and removed meanwhile
                continue
            for problem in problems:
                log.debug("%s", problem)
            found.append(held)
        return found

    def written(self, files: list[SpoolFile]) -> None:
        """Remove ``files``, whose refusals are in the trail (committed), and let go of them."""
        with self._lock:
            for f in files:
                f.path.unlink(missing_ok=True)
                os.close(f.fd)
            self._pending = [f for f in self._pending if f not in files]
        if files:
            _sync_directory(self.directory)

    def release(self, files: list[SpoolFile]) -> None:
        """Let go of other servers' ``files`` not written (this server's stay pending)."""
        with self._lock:
            for f in files:
                if f not in self._pending:
                    os.close(f.fd)


def _sync_directory(directory: Path) -> None:
    """fsync ``directory``, so a file's new name or removal survives a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def written_tokens(db: Session, tokens: Iterable[str]) -> set[str]:
    """Which of the spool files ``tokens`` the trail holds entries of (their ``spool``): written
    before, their removal prevented (a kill between the commit and the removal)."""
    found = set()
    for token in tokens:
        query = select(AuditEntry.seq).where(AuditEntry.action.in_(("access_refused_delayed", "access_refused_lost")),
                                             AuditEntry.after_json.contains(f'"{token}"')).limit(1)
        if db.scalar(query) is not None:
            found.add(token)
    return found


def write_delayed(db: Session, rule: RefusalRule, files: list[Held]) -> list[int]:
    """Write what servers held, read from their spool files (one :class:`Held` each), in the
    caller's transaction, but for files whose entries the trail holds already (:func:`written_tokens`);
    returns the entries' ``seq``. One ``access_refused_delayed`` entry per refused request held
    (user, request, product and refusal; the first held first): ``request``, ``count``, ``first_at``
    and ``last_at`` (by the server's clock: ``clock`` "server"), the database's ``error`` (its first)
    and ``spool``, the tokens of the files written; and, when some were lost, one
    ``access_refused_lost`` entry of ``system``: their ``count``, ``first_at``, ``last_at``,
    ``max_held`` and ``spool``. Not counted in the refusal windows: their times are not the record's clock."""
    audit.locked_head(db)   # first: a server writing the same files meanwhile has committed (PostgreSQL)
    done = written_tokens(db, [t for f in files for t in f.tokens])
    if done:
        log.info("held refusals of spool file(s) %s are in the audit trail already: not written again", ", ".join(sorted(done)))
    return [audit.append(db, e.username, e.action, product_id=e.product_id, after=e.after, reason=e.reason,
                         clock=rule.clock).seq for e in delayed_entries([f for f in files if not done.intersection(f.tokens)])]


@dataclass(frozen=True)
class DelayedEntry:
    """An ``access_refused_delayed`` or ``access_refused_lost`` entry to be (:func:`delayed_entries`)."""
    action: str
    username: str
    product_id: str
    after: dict[str, Any]
    reason: str


def delayed_entries(files: list[Held]) -> list[DelayedEntry]:
    """The entries that write what the spool files ``files`` hold, together (:func:`write_delayed`):
    one per refused request (the first held first), then the one of those lost, if any."""
    if not files:
        return []
    held = files[0]
    for more in files[1:]:
        held = held.merged(more)
    spool = sorted(held.tokens)
    groups: dict[tuple[str, str, str, str], list[DelayedRefusal]] = {}
    for r in held.refusals:
        groups.setdefault((r.username, r.request, r.product_id, r.refusal), []).append(r)
    entries = [DelayedEntry("access_refused_delayed", username, product_id, {
        "request": request, "count": len(rs), "first_at": utc(rs[0].at), "last_at": utc(rs[-1].at), "clock": "server",
        "error": rs[0].error, "spool": spool}, refusal) for (username, request, product_id, refusal), rs in groups.items()]
    if held.lost.count:
        entries.append(DelayedEntry("access_refused_lost", "system", "", {
            "count": held.lost.count, "first_at": utc(held.lost.first), "last_at": utc(held.lost.last),
            "clock": "server", "max_held": held.limit, "spool": spool}, (
            f"{held.lost.count} refused requests neither written nor held: the database would not take them and "
            f"the server held {held.limit} already")))
    return entries


HELD_SUFFIX = "_held"   # a copy of the trail shows a refusal still held as its entry-to-be's action + this


def held_rows(db: Session, rule: RefusalRule, files: list[Held]) -> list[dict[str, str]]:
    """What a copy of the trail shows of the refusals servers still hold (``files``: every spool file
    of the database, read before the copy's moment; those whose entries the trail holds at it left
    out, :func:`written_tokens`), after the open windows: one row per entry to be, in the trail's
    CSV columns, not an entry of the trail: ``seq``, ``prev_sha256`` and ``entry_sha256`` empty,
    ``at`` now (the rule's clock), ``action`` the entry's with :data:`HELD_SUFFIX`
    (``access_refused_delayed_held``, ``access_refused_lost_held``), ``after`` the entry's with
    ``"held": true``. One file per row group: each file is written as a whole."""
    done = written_tokens(db, [t for f in files for t in f.tokens])
    entries = [e for f in files if not done.intersection(f.tokens) for e in delayed_entries([f])]
    at = utc(rule.now(db)) if entries else ""
    return [{"seq": "", "at": at, "username": e.username, "action": e.action + HELD_SUFFIX, "product_id": e.product_id,
             "before_json": audit.canonical(None), "after_json": audit.canonical({**e.after, "held": True}),
             "reason": e.reason, "prev_sha256": "", "entry_sha256": ""} for e in entries]
