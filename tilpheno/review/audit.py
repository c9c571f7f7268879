"""The audit trail: append-only entries (who, when, what, before, after, why), chained by SHA-256.

Entry ``n`` stores ``prev_sha256`` = entry ``n-1``'s hash (64 zeros for the first) and
``entry_sha256`` = SHA-256 of the canonical JSON list
``[seq, at, username, action, product_id, before_json, after_json, reason, prev_sha256]``
(UTF-8, ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))``). ``audit_head`` holds
the newest ``(seq, hash)``. :func:`verify` recomputes the chain: an edited entry changes its
hash, a deleted entry leaves a gap in ``seq`` and a broken link, re-ordered entries break the
links, and deleting the newest entries disagrees with the head; a signature row that no ``sign``
entry holds was not made by the app (:func:`signature_problems`). The database also refuses
UPDATE and DELETE on the table (triggers), so tampering needs direct, deliberate access;
someone who can rewrite the whole database can rewrite the whole chain: keep the head hash
printed by ``tilpheno audit verify`` elsewhere (it is the digest of the entire history).

An entry is written in the same transaction as the change it records. Writers take the next
``seq`` one after the other: :func:`append` locks the head row (``SELECT ... FOR UPDATE`` on
PostgreSQL; SQLite's write lock), so a second writer waits for the first to commit and appends
after it; one that read the head before another's commit without the lock (SQLite) collides on the
head update and retries (:class:`ChainConflict`).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from sqlalchemy import ColumnElement, func, select, text, update
from sqlalchemy.orm import Session

from tilpheno.review.models import AuditEntry, AuditHead, Signature, utc

GENESIS = "0" * 64
CSV_COLUMNS = ("seq", "at", "username", "action", "product_id", "before_json", "after_json", "reason",
               "prev_sha256", "entry_sha256")


def rowcount(result: Any) -> int:
    """Rows matched by an UPDATE (``CursorResult.rowcount``)."""
    return int(result.rowcount)


class ChainConflict(Exception):
    """Another writer appended first: the transaction is rolled back and retried."""


def canonical(value: Any) -> str:
    """Canonical JSON text (sorted keys, no spaces) used inside entries and hashes."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)


def entry_hash(seq: int, at: str, username: str, action: str, product_id: str, before_json: str, after_json: str,
               reason: str, prev_sha256: str) -> str:
    payload = json.dumps([seq, at, username, action, product_id, before_json, after_json, reason, prev_sha256],
                         ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Clock:
    """The clock of the GMP record: the time of every new audit entry (:func:`append`), signature,
    gate-set version, product import, assignment and account, and of the refusal windows
    (:mod:`tilpheno.review.refusals`), read in seconds since the epoch. PostgreSQL:
    its ``clock_timestamp()``, one clock for every server process on the database, whatever their
    machines' clocks say (skewed, or jumped by NTP). SQLite: ``machine``, this machine's clock
    (``time.time``), the one every process using the file reads (SQLite's own ``'now'`` is that
    clock too): a jump of it still moves the times of what is written after it. A server is given
    its clock (``ReviewService(clock=...)``): a test injects a machine clock running ahead or behind,
    or with ``database=False`` one clock that every service of the test reads on PostgreSQL too."""
    machine: Callable[[], float] = time.time
    database: bool = True

    @classmethod
    def shared(cls, read: Callable[[], float]) -> "Clock":
        """A clock read from ``read`` on every database (tests: one clock all their services share)."""
        return cls(read, database=False)

    def reads_database(self, db: Session) -> bool:
        """Whether this clock is the database's (PostgreSQL) rather than ``machine``."""
        return self.database and db.get_bind().dialect.name == "postgresql"

    def now(self, db: Session) -> float:
        """Now, in seconds since the epoch (one query on PostgreSQL)."""
        if self.reads_database(db):
            return float(db.scalar(text("SELECT EXTRACT(EPOCH FROM clock_timestamp())")))
        return self.machine()

    def in_statement(self, db: Session) -> tuple[float | ColumnElement[Any], str | ColumnElement[Any]]:
        """Now for a statement to use, costing no query of its own: in seconds since the epoch and as
        stored text (:meth:`stamp`). PostgreSQL: SQL the statement evaluates, ``statement_timestamp()``,
        the database's clock at the statement's start (one instant for both); else ``machine``, read
        once here (plain values: bound parameters)."""
        if self.reads_database(db):
            return (func.extract("epoch", func.statement_timestamp()),
                    func.to_char(func.timezone("UTC", func.statement_timestamp()), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
        now = self.machine()
        return now, utc(now)

    def stamp(self, db: Session) -> str:
        """Now as the record stores times (:func:`~tilpheno.review.models.utc`): a signature's
        ``signed_at``, a version's ``created_at``, an assignment's ``assigned_at``."""
        return utc(self.now(db))


DATABASE_CLOCK = Clock()   # a server's clock unless it is given another (tests)


def head_seq(db: Session) -> int:
    """The newest entry's number (0 before the first). A change that depends on rows read after it
    passes it to :func:`append` as ``expect_seq``: an audited change committed meanwhile that could
    have changed those rows (a save of the same product, a role change, a disabled account; every
    change unless ``relevant`` says which) then makes the append a :class:`ChainConflict`, and the
    transaction re-runs on the rows as they are now."""
    return db.scalar(select(AuditHead.seq).where(AuditHead.id == 1)) or 0


def locked_head(db: Session) -> AuditHead | None:
    """The head row (None before the first entry), locked until the caller's transaction ends
    (PostgreSQL; SQLite's write lock serialises writers anyway): a writer taking it waits for every
    other writer of the trail to commit, and reads what they committed."""
    return db.execute(select(AuditHead).where(AuditHead.id == 1).with_for_update()
                      .execution_options(populate_existing=True)).scalar_one_or_none()


def append(db: Session, username: str, action: str, *, product_id: str = "", before: Any = None, after: Any = None,
           reason: str = "", expect_seq: int | None = None,
           relevant: Callable[[AuditEntry], bool] | None = None, clock: Clock = DATABASE_CLOCK,
           now: float | None = None) -> AuditEntry:
    """Add one entry to the chain inside the caller's transaction (flushes; the caller commits).
    With ``expect_seq`` (:func:`head_seq`): ChainConflict when an entry added after it is
    ``relevant`` (any entry when None); others (another product's save, a login) do not make the
    caller re-run. The entries checked are those up to the head read here, and the head update
    below succeeds only if no entry was added since: one committed later is ordered after this one.
    The entry's ``at`` is ``clock`` (:class:`Clock`), read once the head is locked: on PostgreSQL one
    clock for all servers, so entries' times follow the chain's order and agree with the refusal
    windows' times whatever a server's own clock says (entries written before this was so keep the
    ``at`` their server's clock gave, and their hashes). ``now``: that time, when the caller read
    ``clock`` itself once this transaction held the head (:func:`locked_head`), so as not to read it
    twice."""
    head = locked_head(db)
    seq, prev = (head.seq, head.entry_sha256) if head is not None else (0, GENESIS)
    if expect_seq is not None and seq != expect_seq and (relevant is None or any(
            relevant(e) for e in db.scalars(select(AuditEntry).where(AuditEntry.seq > expect_seq, AuditEntry.seq <= seq)))):
        raise ChainConflict("audit head moved since the change's rows were read")
    at = utc(clock.now(db) if now is None else now)   # read with the head locked: in chain order on PostgreSQL
    before_json, after_json = canonical(before), canonical(after)
    digest = entry_hash(seq + 1, at, username, action, product_id, before_json, after_json, reason, prev)
    entry = AuditEntry(seq=seq + 1, at=at, username=username, action=action, product_id=product_id,
                       before_json=before_json, after_json=after_json, reason=reason, prev_sha256=prev,
                       entry_sha256=digest)
    if head is None:
        db.add(AuditHead(id=1, seq=seq + 1, entry_sha256=digest))
    else:
        moved = rowcount(db.execute(update(AuditHead).where(AuditHead.id == 1, AuditHead.seq == seq)
                                    .values(seq=seq + 1, entry_sha256=digest)))
        if moved != 1:
            raise ChainConflict("audit head moved")
    db.add(entry)
    db.flush()
    return entry


@dataclass
class Verification:
    ok: bool
    n_entries: int
    head_sha256: str
    problems: list[str]


def signature_content(sig: Signature) -> dict:
    """What a signature signs (its ``signature_sha256`` is the SHA-256 of this, canonical JSON), and
    what its ``sign`` entry of the trail holds as ``after``. Its out-of-specification justification
    and the software it was made under only when it has them, so a signature made before they were
    recorded hashes as it did."""
    content = {"product_id": sig.product_id, "version": sig.version, "meaning": sig.meaning, "username": sig.username,
               "full_name": sig.full_name, "signed_at": sig.signed_at, "data_sha256": sig.data_sha256,
               "gates_sha256": sig.gates_sha256, "qc_resolutions": json.loads(sig.qc_resolutions_json),
               "comment": sig.comment}
    if sig.oos_justification:
        content["oos_justification"] = sig.oos_justification
    if sig.software:
        content["software"] = json.loads(sig.software)
    return content


def signature_sha256(content: dict) -> str:
    """A signature's ``signature_sha256``: the SHA-256 of its content's canonical JSON, the text its
    ``sign`` entry stores as ``after_json``."""
    return hashlib.sha256(canonical(content).encode("utf-8")).hexdigest()


def signed_in_trail(db: Session, product_id: str | None = None) -> set[str]:
    """The ``signature_sha256`` of every signature the trail's ``sign`` entries hold (of one product,
    or all): a signature row without one was not made by the app (the table accepts INSERT)."""
    query = select(AuditEntry.after_json).where(AuditEntry.action == "sign")
    if product_id is not None:
        query = query.where(AuditEntry.product_id == product_id)
    return {hashlib.sha256(after.encode("utf-8")).hexdigest() for after in db.scalars(query)}


def signature_problems(db: Session) -> list[str]:
    """One line per signature whose content does not match its hash, or that no ``sign`` entry of
    the trail holds (inserted outside the app)."""
    problems = []
    signed = signed_in_trail(db)
    for sig in db.scalars(select(Signature).order_by(Signature.id)):
        name = f"signature {sig.id} ({sig.product_id} version {sig.version}, {sig.meaning!r} by {sig.username})"
        if signature_sha256(signature_content(sig)) != sig.signature_sha256:
            problems.append(f"{name}: content does not match its hash (edited)")
        elif sig.signature_sha256 not in signed:
            problems.append(f"{name}: no 'sign' entry of the audit trail holds it (inserted outside the app)")
    return problems


def verify(db: Session) -> Verification:
    """Recompute the chain in ``seq`` order, then check every signature against it
    (:func:`signature_problems`); every problem is one line naming the entry or signature."""
    problems: list[str] = []
    prev, expected_seq, n = GENESIS, 1, 0
    for e in db.scalars(select(AuditEntry).order_by(AuditEntry.seq)):
        n += 1
        if e.seq != expected_seq:
            problems.append(f"entry {e.seq}: expected entry {expected_seq} here (entries {expected_seq}-{e.seq - 1} "
                            "deleted or renumbered)")
        if e.prev_sha256 != prev:
            problems.append(f"entry {e.seq}: link to the previous entry broken (deleted, re-ordered or edited entries)")
        digest = entry_hash(e.seq, e.at, e.username, e.action, e.product_id, e.before_json, e.after_json, e.reason,
                            e.prev_sha256)
        if digest != e.entry_sha256:
            problems.append(f"entry {e.seq}: content does not match its hash (edited)")
        prev, expected_seq = e.entry_sha256, e.seq + 1
    head = db.get(AuditHead, 1)
    if head is None and n:
        problems.append("audit head missing")
    elif head is not None and (head.seq != expected_seq - 1 or head.entry_sha256 != prev):
        problems.append(f"head says entry {head.seq} is the newest but the table ends at entry {expected_seq - 1} "
                        "(newest entries deleted or replaced)")
    problems += signature_problems(db)
    return Verification(not problems, n, prev, problems)


@dataclass(frozen=True)
class TrailCopy:
    """A copy of the trail (:func:`export_csv`): its CSV text, the entries it holds, ``first`` to
    ``last`` (``seq``; 0 and 0 when the trail is empty), and the rows after them that are not
    entries (``open_windows``: the open refusal windows' counts so far; ``held``: the refusals
    servers still hold, not yet written)."""
    text: str
    first: int
    last: int
    open_windows: int = 0
    held: int = 0


def export_csv(db: Session, open_windows: Sequence[Mapping[str, str]] = (),
               held: Sequence[Mapping[str, str]] = ()) -> TrailCopy:
    """Every entry, oldest first, as CSV text (cells starting with = + - @ are prefixed with '),
    then the rows ``open_windows``, then ``held`` (:data:`CSV_COLUMNS` each; no ``seq``: not
    entries of the chain)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    first = last = 0
    for e in db.scalars(select(AuditEntry).order_by(AuditEntry.seq)):
        writer.writerow([_cell(getattr(e, c)) for c in CSV_COLUMNS])
        first, last = first or e.seq, e.seq
    for row in [*open_windows, *held]:
        writer.writerow([_cell(row[c]) for c in CSV_COLUMNS])
    return TrailCopy(buf.getvalue(), first, last, len(open_windows), len(held))


def _cell(value):
    from tilpheno.io.csvcells import neutralise_cell   # the one OWASP rule of every tilpheno CSV

    return neutralise_cell(value)
