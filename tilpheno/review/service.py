"""Review operations on the database: gate-set versions, e-signatures, batch apply, approved results.

Every operation runs in one transaction together with its audit entry (:mod:`audit`).

* **Versions**: version 1 = the automatic gates (imported on first open). A save names the
  version it was based on; it succeeds only if that is still the product's current version
  (``UPDATE products SET current_version = n+1 WHERE current_version = n``; the unique
  ``(product_id, version)`` constraint backs it), else :class:`VersionConflict`, so a concurrent
  edit is never lost: the second writer is told who saved what and must reload.
* **Signatures**: password re-entry (wrong passwords count towards the lock-out), a meaning
  (``reviewed`` by anyone; ``approved for release`` and ``rejected`` by reviewers and admins),
  UTC time, bound to the gate version and ``data_sha256`` = SHA-256 of the product id, its input
  files' SHA-256, the strategies' SHA-256, the release spec, the gate set's SHA-256, the
  infused cell number (the doses' base: a re-run with a corrected outcomes table voids it) and
  the SHA-256 of the files the run read but did not gate (unstained and compensation controls,
  the compensation matrix: a replaced control voids it) and the study's dose definitions (a re-run
  with another base or variable of a dose voids it), the run's panel file (marker -> detector) and
  the marker each FMO control omits (the manifest's ``fmo_marker``: a swapped row or label voids
  it); a signature made before the panel and FMO markers, the dose definitions, the controls, or
  the dose, were bound is checked without them (:data:`DATA_FORMS`). It records the software it
  was made under (:func:`software_now`), which it does not bind: one made under other software
  stands and says so (:func:`software_note`). A
  signature is valid only while the product is still at its version and the data hash still
  matches; any later save voids it (shown as void, never deleted). The role, account, assignment
  and version are checked as they are after the (slow) password check, and an audited change
  committed before the signature is stored that could change them (a save of this product, a role
  change, a disabled account, an assignment withdrawn: :func:`_concerns`; not another product's
  save, nor a login) re-runs the checks (:func:`audit.head_seq`): a signature is never stored for
  a version just replaced or under a role just revoked. An account disabled before its password
  is checked (a re-run's included) is refused as disabled, not as a wrong password. Four eyes: no
  one approves for release a gate set holding a correction they saved (any version after the
  automatic one).
  A repeat of a user's standing signature (same meaning, version, data hash, QC resolutions and
  comment: a double-click on Sign, the second request checked after the first is stored) is
  refused naming it (:class:`RepeatedSignature`, :func:`repeated_signature`); re-signing with
  something new (a comment, a resolution, a signature of an older data-hash form) is a signature.
  A request is judged in one order: authenticate (the password), authorise (account, role,
  assignment, four eyes, an unjustified deviation: Forbidden), then its content, one refusal
  naming everything wrong with it (:func:`signed_content`; GateSetError).
  Every refused signature is audited (``signature_refused``: the meaning, the version and why).
  A rejection needs a comment saying why (its audit entry's reason). Approving a version whose
  standing decision is a rejection overrules it: the request must name that rejection
  (``overrules``: its signature id, shown to the reviewer with who, when and why) and say why in
  the comment; the approval's ``sign`` entry holds the rejection it overrules as ``before``.
* **Out-of-specification release**: approving for release a version whose release status,
  recomputed on its gates with the run's spec, is ``fail`` releases a lot that fails its
  specification (a documented exceptional release, never one click): the request must give a
  written out-of-specification justification (``oos_justification``, checked as any reason; apart
  from the comment, which may say something else, e.g. why a rejection is overruled), else it is
  refused naming the product, the version and each failed criterion with its value (audited
  ``signature_refused``); the signature stores it (``Signature.oos_justification``, bound by its
  SHA-256) and its ``sign`` entry holds the failed criteria and it as ``before.out_of_specification``.
  One given for a version that fails nothing (or with another meaning) is not needed: not part of
  the signature, kept in its ``sign`` entry (``before.oos_justification_not_needed``). An approval signed
  before the field existed (revision 0003) was justified by its comment: shown as such.
  The page names the failed criteria where the approval is signed,
  and the page, the certificate and the approved export show the release as an
  out-of-specification release with them and the justification (:class:`OutOfSpecification`). A
  ``not evaluable`` version (nothing determined fails) is not one; a version whose gates were
  changed to pass a determined fail of the run is a deviation (below), not this.
* **Approved version**: the version of the newest valid ``approved for release`` signature with
  no valid ``rejected`` after it. Downstream results (exports, certificate) use it.
* **Deviations**: a criterion the run failed on no flagged gate (a *determined* fail,
  ``RunRelease.determined_fails``: no review flag asked for its gates to be changed) that a saved
  gate set passes overturns the run's decision (:class:`Overturn`). The save that first makes a
  version pass it (its base version did not) needs a deviation justification (``deviation``,
  else :class:`DeviationRequired`, nothing saved) and records it in a ``deviation`` entry of the
  trail beside its ``save_gates`` entry (the criteria, the run's and the new values, the reason);
  a batch apply that would overturn one is refused (each such product is corrected on its own).
  The page and the certificate show each overturn of a version with its justification
  (:meth:`ReviewService.deviations`); the four-eyes rule makes someone other than its author approve it.
  A version that overturns one with no justification (saved before deviations were recorded) is
  not approved for release (refused, audited) until one is added to it as its own ``deviation``
  entry (:meth:`ReviewService.justify_deviations`), by someone other than its approver.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import shlex
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tilpheno import __version__
from tilpheno.cache import code_digest
from tilpheno.release import FAIL, PASS, CriterionResult
from tilpheno.review import audit, refusals
from tilpheno.review.auth import AuthError, PasswordEntry, check_password
from tilpheno.review.db import ReviewError, default_db_path
from tilpheno.review.models import AuditEntry, GateSetVersion, Product, ProductAssignment, Signature, User
from tilpheno.review.regate import (GateSetError, ReviewSource, applied_candidates, changed_gates, check_reason,
                                    gates_sha256, recompute, validate_gate_set)

log = logging.getLogger(__name__)

MEANINGS = {"reviewed": ("analyst", "reviewer", "admin"),
            "approved for release": ("reviewer", "admin"),
            "rejected": ("reviewer", "admin")}
EDIT_ROLES = ("analyst", "reviewer", "admin")
BATCH_ROLES = ("reviewer", "admin")
# audited actions that change no account, role or assignment: committed during a save or signature
# of another product (or of none), they cannot change whether it is allowed (:func:`_concerns`)
ACCESS_NEUTRAL = frozenset({"login", "login_failed", "logout", "session_ended", "certificate", "export_table",
                            "export_gatingml", "export_failed", "audit_export", "import_product", "reimport_product", "record_controls", "save_gates", "deviation", "sign", "signature_refused",
                            "access_refused", "access_refused_repeated", "access_refused_folded",
                            "access_refused_delayed", "access_refused_lost"})


class VersionConflict(ReviewError):
    """Someone saved a newer version since the editor loaded the product (HTTP 409)."""


class RepeatedSignature(VersionConflict):
    """The user's identical signature of this version stands already (a double-click on Sign): not
    stored twice (HTTP 409, naming it)."""


class Forbidden(ReviewError):
    """The user's role does not allow this (HTTP 403)."""


class AuditedRefusal(Forbidden):
    """A refusal (HTTP 403) its operation audited itself (a signature's ``signature_refused``): the
    server does not audit it again as ``access_refused`` (:meth:`ReviewService.record_access_refused`)."""


class NotFound(ReviewError):
    """No such product (HTTP 404)."""


class OtherFolder(ReviewError):
    """The database holds a product with other input files, imported from another output folder
    (HTTP 400): one database per output folder."""


class ApprovalsWouldBeVoided(ReviewError):
    """Saving or applying a gate would void the standing approval of ``products`` (HTTP 409):
    nothing was saved; the request repeated with them acknowledged saves it. ``signature_ids``:
    the id of each approval, as a single save acknowledges it (``void_approval``)."""

    def __init__(self, message: str, products: list[str], signature_ids: list[int] | None = None):
        super().__init__(message)
        self.products = products
        self.signature_ids = signature_ids or []


class DeviationRequired(GateSetError):
    """A save would overturn the run's determined fail on ``overturns`` without a deviation
    justification (HTTP 400, nothing saved)."""

    def __init__(self, message: str, overturns: list[Overturn]):
        super().__init__(message)
        self.overturns = overturns


@dataclass(frozen=True)
class Overturn:
    """A release criterion the run failed on no flagged gate (``run``: its result in the run, a
    determined fail) that a gate set passes (``now``: its result on those gates)."""
    run: CriterionResult
    now: CriterionResult

    @property
    def criterion(self) -> str:
        return self.run.criterion.name

    def words(self) -> str:
        """``CD3+ T cells (cd3_pct_of_live_lymph > 90 % of live lymphocytes: 87.74 in the run, 91.20 on
        these gates)``."""
        return (f"{self.criterion} ({self.run.criterion.describe()}: {self.run.shown() or 'NA'} in the run, "
                f"{self.now.shown() or 'NA'} on these gates)")

    def record(self) -> dict:
        """What a ``deviation`` entry records of it (values in the criterion's unit)."""
        return {"criterion": self.criterion, "rule": self.run.criterion.describe(), "run_value": self.run.value,
                "run_outcome": self.run.outcome, "value": self.now.value, "outcome": self.now.outcome}


@dataclass(frozen=True)
class Deviation:
    """An overturn of a version with the justification the trail holds for it: the newest
    ``deviation`` entry naming its criterion from a version up to this one and after the automatic
    version it descends from (``version`` its version, ``reason``, ``by``: full name and user, ``at``:
    UTC, ``username`` its author's account, ``entry`` its ``seq`` in the trail); ``reason`` empty when
    none does (a version saved before deviations were recorded, until
    :meth:`ReviewService.justify_deviations` adds one)."""
    overturn: Overturn
    reason: str = ""
    by: str = ""
    at: str = ""
    version: int = 0
    username: str = ""
    entry: int = 0

    def cell(self) -> str:
        """The export's ``deviations`` cell part: ``<criterion>: deviation audit entry <seq>``, or
        ``<criterion>: no deviation justification recorded``."""
        if not self.reason:
            return f"{self.overturn.criterion}: no deviation justification recorded"
        return f"{self.overturn.criterion}: deviation audit entry {self.entry}"

    def words(self) -> str:
        """``release overturns the run's determined fail on <criterion> (...): reason '...', by <name>
        (<user>), at <YYYY-MM-DD HH:MM:SS> UTC (version <n>)``, as the page and the certificate say it."""
        head = f"release overturns the run's determined fail on {self.overturn.words()}"
        if not self.reason:
            return f"{head}: no deviation justification recorded"
        return f"{head}: reason {self.reason!r}, by {self.by}, at {self.at[:19].replace('T', ' ')} UTC (version {self.version})"


def transaction(factory: sessionmaker, fn: Callable[[Session], Any], retries: int = 8):
    """Run ``fn(db)`` in a transaction; retry when another writer took the audit chain's next number."""
    for attempt in range(retries):
        db = factory()
        try:
            result = fn(db)
            db.commit()
            return result
        except (audit.ChainConflict, IntegrityError, OperationalError) as exc:
            db.rollback()   # another writer was first (audit chain, unique version, SQLite lock): retry
            if attempt == retries - 1:
                if isinstance(exc, IntegrityError):
                    raise
                raise ReviewError("database busy: please retry") from exc
            time.sleep(0.05 * (attempt + 1))
        except BaseException:
            db.rollback()
            raise
        finally:
            db.close()


def trail_copy(factory: sessionmaker, rule: refusals.RefusalRule, spool: refusals.DelayedRefusals) -> audit.TrailCopy:
    """A copy of the audit trail (:func:`audit.export_csv`) with the open refusal windows' counts so
    far after its entries, marked open (:func:`refusals.open_rows`), read at one moment
    (:func:`snapshot`): a window closed meanwhile is either an entry or an open row, never both or
    neither; then the refusals servers still hold in ``spool``'s files, marked held
    (:func:`refusals.held_rows`; the files read before that moment, those written by it left out: a
    file written meanwhile is entries or held rows, never both or neither). Nothing is written:
    the chain stays as it is (the caller writes what it can first, :func:`write_spooled`)."""
    held = spool.read_all()
    with factory() as db:
        snapshot(db)
        return audit.export_csv(db, refusals.open_rows(db, rule), refusals.held_rows(db, rule, held))


def spool_of(out_dir: str | Path, factory: sessionmaker, limit: int = refusals.MAX_DELAYED) -> refusals.DelayedRefusals:
    """The held refusals of OUT's servers on ``factory``'s database (:class:`refusals.DelayedRefusals`:
    their spool files beside OUT, this database's)."""
    url = factory.kw["bind"].url.render_as_string(hide_password=True)
    return refusals.DelayedRefusals(refusals.spool_directory(out_dir), refusals.database_key(url), limit)


def write_spooled(factory: sessionmaker, rule: refusals.RefusalRule, spool: refusals.DelayedRefusals) -> list[int]:
    """Write what ``spool`` holds (its process's files) and what killed servers left in theirs
    (:meth:`refusals.DelayedRefusals.orphans`) in one transaction (:func:`refusals.write_delayed`),
    then remove the files; the entries' ``seq``. A torn or unreadable line is a warning naming the
    file and line. When the database would not take them they stay held (ReviewError raised)."""
    files = spool.take()
    try:
        files += spool.orphans()
    except OSError as exc:   # the spool folder not readable: this process's files only
        log.warning("held refusals of killed servers not looked for in %s: %s", spool.directory, exc)
    if not files:
        return []
    held = []
    for f in files:
        read, problems = refusals.read_spool(f.path, spool.limit)
        for problem in problems:
            log.warning("%s", problem)
        held.append(read)
    try:
        seqs = transaction(factory, lambda db: refusals.write_delayed(db, rule, held))
    except ReviewError:
        spool.release(files)
        raise
    spool.written(files)
    log.info("held refusals of %d spool file(s) written to the audit trail (entries %s)", len(files),
             ", ".join(map(str, seqs)) or "none: written before")
    return seqs


def record_trail_export(factory: sessionmaker, username: str, file: str, copy: audit.TrailCopy,
                        clock: audit.Clock = audit.DATABASE_CLOCK) -> int:
    """Audit (``audit_export``) a copy of the audit trail handed out: who, the file (:func:`_sent`:
    its name and the SHA-256 of its bytes), the entries it holds (``first_seq`` to ``last_seq``;
    0 and 0 when none) and the open refusal windows shown after them (``open_windows``). Written
    after the copy was made: the copy never holds its own entry, the next one does. Returns the
    entry's ``seq`` (its ``at`` by ``clock``); ``held_refusals``: the rows of refusals still held it showed."""
    return transaction(factory, lambda db: audit.append(db, username, "audit_export", after={
        **_sent(file, copy.text), "first_seq": copy.first, "last_seq": copy.last,
        "open_windows": copy.open_windows, "held_refusals": copy.held}, clock=clock).seq)


def _concerns(*product_ids: str) -> Callable[[AuditEntry], bool]:
    """Whether an audit entry committed during a save or signature of ``product_ids`` makes it re-run
    its checks (``audit.append(relevant=...)``): any entry of those products, and any action that may
    change an account, a role or an assignment (every action but :data:`ACCESS_NEUTRAL`, so a new
    kind of change counts until it is listed there). Another product's save or signature, or a
    login, does not: with 5-10 users at work they used to make saves and signatures retry, and
    under load fail "database busy"."""
    return lambda entry: entry.product_id in product_ids or entry.action not in ACCESS_NEUTRAL


APPROVED, REJECTED = "approved for release", "rejected"


def deciding(views: list[SignatureView]) -> Signature | None:
    """The signature of the product's standing QA decision: its newest valid approval or rejection
    (``reviewed`` signatures decide nothing); None when there is none."""
    return next((v.row for v in reversed(views) if v.valid and v.row.meaning in (APPROVED, REJECTED)), None)


def decision_of(views: list[SignatureView]) -> tuple[str, int] | None:
    """The product's standing QA decision: ``(meaning, version)`` of :func:`deciding`; None when there is none."""
    sig = deciding(views)
    return (sig.meaning, sig.version) if sig is not None else None


RERUN_VOIDED = "re-run after signing: needs review"
"""What the product list, its counts and the approved export say of a product whose approval or
rejection a new run of its output folder voided (:func:`voided`)."""


def voided(views: list[SignatureView], versions: list[GateSetVersion]) -> tuple[str, bool]:
    """A product without a standing QA decision whose newest approval or rejection is void, in words
    (``approval for release of version 1 void: re-run after signing: needs review (input data, ...
    changed after signing)``; the words :data:`RERUN_VOIDED` only when a new run voided it), and whether
    a new run voided the decision: its data hash changed, a flag of
    the new run has no resolution in it (both on the version signed), or an automatic version of a later
    run followed the version signed (``versions``: the product's, any order); a reviewer's later save, or
    a signature the app did not make, is named by its void reason alone. ("", False) when the product has
    a standing decision or never had one."""
    if deciding(views) is not None:
        return "", False
    last = next((v for v in reversed(views) if v.row.meaning in (APPROVED, REJECTED)), None)
    if last is None:
        return "", False
    signed, cause = last.row.version, last.void_reason.removeprefix("void: ")
    later = [v for v in versions if v.version > signed]
    rerun = last.in_trail and (not later or any(v.source == "automatic" for v in later))
    what = "approval for release" if last.row.meaning == APPROVED else "rejection"
    return f"{what} of version {signed} void" + (f": {RERUN_VOIDED}" if rerun else "") + f" ({cause})", rerun


def standing_of(views: list[SignatureView], meaning: str, version: int) -> Signature | None:
    """The valid signature of ``views`` with ``meaning`` that is the product's standing QA decision
    on ``version`` (:func:`decision_of`); None when the standing decision is another, or none."""
    if decision_of(views) != (meaning, version):
        return None
    return [v.row for v in views if v.valid and v.row.meaning == meaning][-1]


def _approved_state(views: list[SignatureView]) -> int | None:
    """The approved version: that of the newest valid approval with no valid rejection after it."""
    state = decision_of(views)
    return state[1] if state is not None and state[0] == APPROVED else None


def _overrule_refusal(rejection: Signature | None, overrules: Any, comment: str) -> str:
    """Why an approval may not overrule ``rejection`` (the standing rejection of the version being
    approved; None: nothing to overrule): the request does not name it (``overrules``, its id:
    the reviewer has seen who rejected, when and why) or gives no comment saying why; "" when it may."""
    if rejection is None:
        return ""
    said = f"version {rejection.version} was rejected by {_signed_by(rejection)}: {rejection.comment!r}"
    if isinstance(overrules, bool) or overrules != rejection.id:
        return f"{said}; approving it overrules that rejection: confirm you have read it, and say why in the comment"
    if not comment:
        return f"{said}; say why you overrule it in the comment"
    return ""


def repeated_signature(views: list[SignatureView], username: str, meaning: str, data_digest: str,
                       resolutions_json: str, comment: str, oos_justification: str = "",
                       software: str = "") -> Signature | None:
    """The signature of ``views`` (the product's, in signing order, checked against its current
    version) that a new one by ``username`` with ``meaning`` on that version would repeat: valid,
    theirs, of that meaning, over the same data hash (``data_digest``: one made before the dose or
    controls were bound is re-signed to bind them), QC resolutions (canonical JSON), comment and
    out-of-specification justification, made under the same software (one made before an upgrade is
    signed again to record the software now), and
    with no valid approval or rejection of another meaning after it (approving again after a
    rejection overrules it); None when there is none."""
    repeated = None
    for view in views:
        s = view.row
        if not view.valid:
            continue
        if (s.username, s.meaning, s.data_sha256, s.qc_resolutions_json, s.comment, s.oos_justification or "",
                s.software or "") == (username, meaning, data_digest, resolutions_json, comment, oos_justification,
                                      software):
            repeated = s
        elif s.meaning in (APPROVED, REJECTED) and s.meaning != meaning:
            repeated = None
    return repeated


def resolutions_typed(flags: list[dict], own: Any, by_kind: Any) -> dict[str, Any]:
    """The resolution typed for each of ``flags`` (the product's warning and error QC flags, in
    order), keyed ``code:file:i`` (``i``: the flag's place among them): its own (``own[key]``) when
    that holds more than whitespace, else the one typed for all flags of its code
    (``by_kind[code]``), else None. Not yet checked (:func:`check_reason`); a non-mapping counts as
    nothing typed."""
    own = own if isinstance(own, dict) else {}
    by_kind = by_kind if isinstance(by_kind, dict) else {}
    typed = {}
    for i, f in enumerate(flags):
        key = f"{f['code']}:{f['file']}:{i}"
        mine = own.get(key)
        typed[key] = mine if isinstance(mine, str) and mine.strip() else by_kind.get(f["code"], mine)
    return typed


def unresolved_flags(flags: list[dict], approval: Signature) -> list[str]:
    """The warning and error flags among ``flags`` (the product's QC flags of the current run) that
    ``approval`` holds no resolution of (its keys ``code:file:i``, :func:`resolutions_typed`), as
    ``code (file)``: flags a re-run raised after it was signed (a control file replaced, say), which
    the signed data hash need not bind."""
    held = json.loads(approval.qc_resolutions_json or "{}")
    serious = [f for f in flags if f["severity"] in ("warning", "error")]
    return [f"{f['code']} ({f['file']})" for i, f in enumerate(serious) if f"{f['code']}:{f['file']}:{i}" not in held]


@dataclass(frozen=True)
class SentContent:
    """What a signature request sent, checked (:func:`signed_content`): the QC resolutions
    (``code:file:i`` -> text), the comment and the out-of-specification justification, each
    stripped ("" when none was sent), and everything wrong with them (``wrong``, in the sign
    form's order; empty when nothing is)."""
    resolutions: dict[str, str]
    comment: str
    justification: str
    wrong: list[str]


def signed_content(meaning: str, flags: list[dict], own: Any, by_kind: Any, comment: Any,
                   oos_justification: Any) -> SentContent:
    """The content of a signature with ``meaning`` checked as a whole (:func:`check_reason`), so one
    refusal names every problem: a resolution of each of ``flags`` (the product's warning and error
    QC flags) for an approval (:func:`resolutions_typed`), a comment saying why for a rejection,
    the comment's and the out-of-specification justification's form (read with any meaning: one not
    needed is kept in the ``sign`` entry, never dropped unsaid)."""
    wrong: list[str] = []

    def checked(text: Any, what: str) -> str:
        try:
            return check_reason(text, what)
        except GateSetError as exc:
            wrong.append(str(exc))
            return ""

    resolutions = {}
    if meaning == APPROVED:
        for f, (key, text) in zip(flags, resolutions_typed(flags, own, by_kind).items()):
            resolutions[key] = checked(text, f"resolution of QC flag {f['code']} ({f['file']})")
    if meaning == REJECTED and comment in (None, ""):   # a QA rejection says why (its entry's reason)
        wrong.append("comment: say why you reject (at least 3 characters)")
    said = "" if comment in (None, "") else checked(comment, "comment")
    justification = ("" if oos_justification in (None, "")
                     else checked(oos_justification, "out-of-specification justification"))
    return SentContent(resolutions, said, justification, wrong)


def _justification(product_id: str, base_version: int, overturns: list[Overturn], deviation: Any) -> str:
    """The checked deviation justification of a save from ``base_version`` that introduces
    ``overturns`` (:func:`check_reason`); "" when it introduces none; :class:`DeviationRequired`
    naming them when none is given."""
    if not overturns:
        return ""
    if deviation is None or (isinstance(deviation, str) and not deviation.strip()):
        raise DeviationRequired(
            f"deviation: these gates overturn the run's determined fail on "
            f"{'; '.join(o.words() for o in overturns)}, which no QC flag asked to review; a version of "
            f"{product_id} after version {base_version} that releases on them needs a deviation justification "
            "(nothing was saved)", overturns)
    return check_reason(deviation, "deviation")


def _justified(db: Session, product_id: str, version: int, overturns: list[Overturn]) -> list[Deviation]:
    """Each of ``overturns`` (of ``version``) with the justification the trail holds for it, read in
    ``db``: the newest ``deviation`` entry naming its criterion for a version up to ``version`` and
    after the automatic version it descends from (:class:`Deviation`)."""
    automatic = db.scalar(select(GateSetVersion.version).where(
        GateSetVersion.product_id == product_id, GateSetVersion.source == "automatic",
        GateSetVersion.version <= version).order_by(GateSetVersion.version.desc()).limit(1)) or 0
    entries = list(db.scalars(select(AuditEntry).where(AuditEntry.action == "deviation", AuditEntry.product_id == product_id)
                              .order_by(AuditEntry.seq)))
    names = {u.username: u.full_name for u in db.scalars(select(User))}
    justified: dict[str, tuple[str, str, str, int, str, int]] = {}   # criterion -> Deviation's fields after overturn
    for e in entries:   # oldest first: the newest entry naming a criterion wins
        after = json.loads(e.after_json)
        saved = after.get("version")
        if not isinstance(saved, int) or not automatic < saved <= version:
            continue
        for c in after.get("criteria", []):
            justified[c.get("criterion")] = (e.reason, f"{names.get(e.username, e.username)} ({e.username})", e.at, saved,
                                             e.username, e.seq)
    return [Deviation(o, *justified[o.criterion]) if o.criterion in justified else Deviation(o) for o in overturns]


def _deviation_refusal(product_id: str, username: str, version: int, deviations: list[Deviation]) -> str:
    """Why ``username`` may not approve ``version`` for release given its overturns of the run's
    determined fails (``deviations``): one without a justification (a version saved before they
    were recorded), or one ``username`` justified (four eyes: the justification's author does not
    approve it); "" when they may."""
    open_ = [d for d in deviations if not d.reason]
    if open_:
        return (f"version {version} of {product_id} overturns the run's determined fail on "
                f"{'; '.join(d.overturn.words() for d in open_)} with no deviation justification recorded: "
                "a justification must be added to this version before it is approved for release")
    return _justified_own(product_id, username, version, deviations)


def _justified_own(product_id: str, username: str, version: int, deviations: list[Deviation]) -> str:
    """The four-eyes rule on ``version``'s ``deviations``: ``username`` justified one of them, so they do not
    approve it; "" when they justified none."""
    own = [d.overturn.criterion for d in deviations if d.username == username]
    if own:
        return (f"four-eyes rule: {username} justified the deviation on {'; '.join(own)} of {product_id}, so another "
                f"reviewer must approve version {version} for release")
    return ""


def _saved_own(db: Session, username: str, product_id: str, version: int) -> str:
    """The four-eyes rule on the versions up to ``version``: ``username`` saved one of them (an automatic version
    is no one's), so they do not approve it; "" when they saved none."""
    own = sorted(db.scalars(select(GateSetVersion.version).where(
        GateSetVersion.product_id == product_id, GateSetVersion.based_on.is_not(None),
        GateSetVersion.version <= version, GateSetVersion.created_by == username)))
    if own:
        return (f"four-eyes rule: {username} saved version(s) {', '.join(map(str, own))} of "
                f"{product_id}, so another reviewer must approve version {version} for release")
    return ""


def failed_criteria(results: list[CriterionResult]) -> list[CriterionResult]:
    """The criteria of ``results`` (a version's, on its gates with the run's spec) that fail: those
    that make its release status ``fail`` (empty for a version that passes, or that is only ``not
    evaluable``: nothing determined fails)."""
    return [r for r in results if r.outcome == FAIL]


def failed_words(failed: list[CriterionResult]) -> str:
    """``CD3+ T cells (cd3_pct_of_live_lymph > 90 % of live lymphocytes: 87.74)``, ``; `` between two."""
    return "; ".join(f"{r.criterion.name} ({r.criterion.describe()}: {r.shown() or 'NA'})" for r in failed)


def _oos_refusal(product_id: str, version: int, failed: list[CriterionResult], justification: str) -> str:
    """Why an approval for release of ``version``, which fails ``failed`` (its release criteria on
    its gates), may not be signed: an out-of-specification release needs a written justification of
    its own (``justification``, not the comment); "" when it has one or nothing fails."""
    if not failed or justification:
        return ""
    return (f"version {version} of {product_id} fails the release criteria {failed_words(failed)}: approving it "
            "is an out-of-specification release; say why it is released anyway in the out-of-specification "
            "justification (the comment does not count)")


@dataclass(frozen=True)
class OutOfSpecification:
    """An approval for release (``approval``) of a version that fails release criteria (``failed``:
    on its gates with the run's spec): an out-of-specification release, justified by the approval's
    out-of-specification justification; one signed before that field existed, by its comment (the
    justification then asked for; empty for one signed before any was required)."""
    failed: list[CriterionResult]
    approval: Signature

    @property
    def justification(self) -> str:
        return self.approval.oos_justification or self.approval.comment

    def words(self) -> str:
        """``out-of-specification release of version <n>: fails <criteria>; justification '...' by
        <name> (<user>) at <YYYY-MM-DD HH:MM:SS> UTC``, as the page, the certificate and the export say
        it (``justification (the approval's comment, ...)`` for one signed before it had its own)."""
        head = f"out-of-specification release of version {self.approval.version}: fails {failed_words(self.failed)}"
        if not self.justification:
            return (f"{head}; no justification recorded (approved by {_signed_by(self.approval)}, before an "
                    "out-of-specification release needed one)")
        said = ("justification" if self.approval.oos_justification else
                "justification (the approval's comment: signed before an out-of-specification release had one of its own)")
        return f"{head}; {said} {self.justification!r} by {_signed_by(self.approval)}"

    def cell(self) -> str:
        """What the product list says after the release status: ``out-of-specification release
        (<criterion>; <criterion>)``, ``; no justification recorded`` added when none is (:meth:`words`
        in full: its cell's title)."""
        names = "; ".join(r.criterion.name for r in self.failed)
        return f"out-of-specification release ({names})" + ("" if self.justification else "; no justification recorded")


def _issued_record(version: GateSetVersion, approval: Signature) -> dict:
    """What an entry of something issued from an approval (a certificate, an exported table) records
    of it: the version, its gates' SHA-256 and the approval's."""
    return {"version": version.version, "gates_sha256": version.gates_sha256, "approval_sha256": approval.signature_sha256}


def _sent(file: str, text: str) -> dict:
    """What an entry of a file handed out records of it: its name and the SHA-256 of its bytes
    (``text`` in UTF-8, as sent or written)."""
    return {"file": file, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def _table_record(file: str, text: str, rows: int, approvals: dict[str, tuple[GateSetVersion, Signature]]) -> dict:
    """What an ``export_table`` entry records of an approved table: :func:`_sent`, its ``rows``, and
    per approved product (``approvals``, those its rows were computed from) :func:`_issued_record`."""
    return {**_sent(file, text), "rows": rows, "approved": {pid: _issued_record(v, a) for pid, (v, a) in approvals.items()}}


def oos_of(approval: Signature, results: list[CriterionResult]) -> OutOfSpecification | None:
    """The out-of-specification release ``approval`` (of a version whose criteria are ``results``)
    makes; None when that version fails no criterion."""
    failed = failed_criteria(results)
    return OutOfSpecification(failed, approval) if failed else None


def _criterion_record(result: CriterionResult) -> dict:
    """What an audit entry records of a criterion's result (its value in the criterion's unit)."""
    return {"criterion": result.criterion.name, "rule": result.criterion.describe(), "value": result.value,
            "outcome": result.outcome}


def _signature_record(sig: Signature) -> dict:
    """What an audit entry records of a signature its change ends: the rejection an approval
    overrules, the approval a batch apply voids."""
    return {"signature_id": sig.id, "signature_sha256": sig.signature_sha256, "version": sig.version,
            "username": sig.username, "signed_at": sig.signed_at, "comment": sig.comment}


def _signed_by(sig: Signature) -> str:
    """Who signed ``sig`` and when, in words: ``Full Name (username) at YYYY-MM-DD HH:MM:SS UTC``."""
    return f"{sig.full_name} ({sig.username}) at {sig.signed_at[:19].replace('T', ' ')} UTC"


def _approval_words(product_id: str, approval: Signature) -> str:
    """An approval a save would void, in words: product, version, who and when (UTC)."""
    return f"the approval for release of {product_id} version {approval.version} by {_signed_by(approval)}"


T = TypeVar("T")


def _get(db: Session, model: type[T], key: Any) -> T:
    """The row with primary key ``key`` (it must exist: products are imported, users are never deleted)."""
    row = db.get(model, key)
    if row is None:
        raise NotFound(f"no {model.__name__.lower()} {str(key)[:80]!r}")
    return row


DATA_FORMS = ("panel", "study_doses", "controls", "dose", "legacy")
"""The forms of what a signature signs besides its gates (:func:`data_sha256`), newest first: a
signature made now binds the first; one made before is checked against the form it was made in."""
CONTROLS_BOUND = DATA_FORMS[:3]
"""The forms that bind the product's controls (:meth:`ReviewSource.other_inputs`)."""
DOSES_BOUND = DATA_FORMS[:2]
"""The forms that bind the study's dose definitions."""


def data_sha256(source: ReviewSource, product_id: str, version: int, gates_digest: str, *,
                form: str = DATA_FORMS[0]) -> str:
    """SHA-256 of what a signature signs besides its gates: the product's input files, the
    strategies, the release spec, the FMO percentile, the gate version and set, the infused cell
    number the doses are computed from (cells, 9 significant digits; None when the run has none)
    and the files the run read for it but did not gate (its unstained and compensation controls,
    its compensation matrix: :meth:`ReviewSource.other_inputs`) and the study's dose definitions
    (each absolute dose's base and variable: the approved doses are computed with them, so a re-run
    with another definition voids an approval instead of changing its doses under it), the run's
    panel file (each row's tube, detector and marker, in file order; None without one: which
    detector carries which marker) and the marker each of the product's FMO controls omits, as the
    manifest's ``fmo_marker`` named it (:meth:`ReviewSource.fmo_markers`: which FMO anchors which
    gate). ``form`` (:data:`DATA_FORMS`): ``study_doses`` without the panel and FMO markers, as
    signatures made before they were bound were hashed; ``controls`` without the dose definitions
    either; ``dose`` without the other files either;
    ``legacy`` without the infused cell number either, as signatures made before it was bound were
    (they stay valid, and a changed dose or control does not void them)."""
    spec = source.release_spec
    payload = {
        "product_id": product_id,
        "inputs": source.inputs_digest(product_id),
        "strategies": {tube: s.sha256 for tube, s in sorted(source.strategies.items())},
        "release_spec": {"name": spec.name, "criteria": [c.describe() for c in spec.criteria]},
        "fmo_percentile": source.fmo_percentile,
        "gate_version": version,
        "gates_sha256": gates_digest,
    }
    if form != "legacy":
        dose = source.til_dose_cells(product_id)
        payload["infused_cells"] = None if dose is None else float(f"{dose:.9g}")
    if form in CONTROLS_BOUND:
        payload["other_inputs"] = source.other_inputs(product_id)
    if form in DOSES_BOUND:
        payload["dose_definitions"] = [[d.name, d.base, d.variable] for d in source.study.doses]
    if form == "panel":
        panel = source.panel
        payload["panel"] = None if panel is None else [[r.tube, r.detector, r.marker] for r in panel.rows]
        payload["fmo_markers"] = source.fmo_markers(product_id)
    return hashlib.sha256(audit.canonical(payload).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Decision:
    """A product's standing QA decision: ``meaning`` (approved for release or rejected) of ``version``,
    made by ``signature`` (:func:`deciding`: for an approval, the approval whose out-of-specification
    justification an out-of-specification release quotes, :func:`oos_of`)."""
    meaning: str
    version: GateSetVersion
    signature: Signature


def approved_of(decisions: dict[str, Decision | None]) -> dict[str, GateSetVersion | None]:
    """The approved version of each product of :meth:`ReviewService.decisions` (None: not approved)."""
    return {pid: d.version if d is not None and d.meaning == APPROVED else None for pid, d in decisions.items()}


@dataclass(frozen=True)
class GateChange:
    """A validated new gate set of one product, not stored yet: the version it edits
    (``base_version``), the whole new set, its SHA-256, and the gates that differ
    (:func:`changed_gates`: ``{tube/population: {before, after}}``; empty when none does)."""
    product_id: str
    base_version: int
    gates: dict
    digest: str
    diff: dict


def changed_inputs(before: list[dict], after: list[dict]) -> list[str]:
    """The input files that differ between two :meth:`ReviewSource.inputs_digest` records, in words:
    ``name`` (other bytes, tube or role), ``name (new)``, ``name (no longer read)``."""
    old, new = {f["file"]: f for f in before}, {f["file"]: f for f in after}
    return ([name for name in new if name in old and new[name] != old[name]]
            + [f"{name} (new)" for name in new if name not in old]
            + [f"{name} (no longer read)" for name in old if name not in new])


@dataclass(frozen=True)
class Rerun:
    """A re-run of the output folder that read other input files for a product, as its
    ``reimport_product`` entry records it: when (``at``, UTC), the entry (``entry``, its ``seq``),
    the files that changed, in words (:func:`changed_inputs`), and the gate-set version its automatic
    gates became (``version``: None when they were the newest automatic version's, or when the entry
    recording that version does not name this re-run's, as none made before it was recorded does)."""
    at: str
    entry: int
    files: list[str]
    version: int | None = None


def reruns_of(db: Session, product_id: str) -> list[Rerun]:
    """The re-runs that read other input files for ``product_id`` (its ``reimport_product`` entries
    recording inputs; those recording only new automatic gates are left out, each naming the version
    it made in the re-run's ``version``: :meth:`ReviewService.automatic_version`), oldest first."""
    out, made = [], {}
    for e in db.scalars(select(AuditEntry).where(AuditEntry.action == "reimport_product",
                                                 AuditEntry.product_id == product_id).order_by(AuditEntry.seq)):
        before, after = json.loads(e.before_json) or {}, json.loads(e.after_json) or {}
        if "inputs" not in before or "inputs" not in after:
            if "rerun_entry" in after:
                made[after["rerun_entry"]] = after["version"]
            continue
        controls = before.get("controls")   # a row stored before controls were recorded had none before
        out.append(Rerun(e.at, e.seq, changed_inputs(before["inputs"] + (controls or []),
                                                     after["inputs"] + (after.get("controls", []) if controls is not None else []))))
    return [replace(r, version=made.get(r.entry)) for r in out]


def _rerun_words(rerun: Rerun, *, made: bool = True) -> str:
    """A re-run in a void reason: ``<files> (reimport_product, audit entry <seq>)``, with ``; its
    automatic gates became version <n>`` inside the brackets when they made one (and ``made``)."""
    version = f"; its automatic gates became version {rerun.version}" if made and rerun.version is not None else ""
    return f"{', '.join(rerun.files)} (reimport_product, audit entry {rerun.entry}{version})"


def replaced_words(versions: list[GateSetVersion], reruns: list[Rerun]) -> dict[int, tuple[int, str]]:
    """What replaced each of ``versions`` (a product's, oldest first) but the newest: the next
    version's number and, in words, ``replaced by version <n>``, and where ``n`` holds the automatic gates of the
    folder processed again, ``, the automatic gates of the folder processed again``, naming the
    input files that re-run replaced and its entry when ``reruns`` (:func:`reruns_of`) record them
    (``with other input files: <files> (reimport_product, audit entry <seq>)``)."""
    made = {r.version: r for r in reruns if r.version is not None and r.files}
    out = {}
    for old, new in zip(versions, versions[1:]):
        words = f"replaced by version {new.version}"
        if new.source == "automatic":
            words += ", the automatic gates of the folder processed again"
            rerun = made.get(new.version)
            if rerun is not None:   # the version it made is the one named already
                words += f" with other input files: {_rerun_words(rerun, made=False)}"
        out[old.version] = (new.version, words)
    return out


DATA_BOUND = ("input data, infused cell number, strategy, FMO percentile, study dose definitions, panel file, "
              "FMO control markers (manifest fmo_marker) or release spec")
"""What a signature's data hash binds besides its gates (:func:`data_sha256`), in words: a signature
is void when one of them changed after signing (:func:`_data_void_reason`), and ``process`` says so
of the decisions a review database beside its output folder holds (``cli._note_signed_review``)."""


def _data_void_reason(signed_at: str, reruns: list[Rerun]) -> str:
    """Why a signature made at ``signed_at`` whose data hash no longer matches is void: the files
    each later re-run replaced, named with its audit entry, when ``reruns`` (:func:`reruns_of`)
    hold one; else what the hash binds, in general (:data:`DATA_BOUND`)."""
    later = [r for r in reruns if r.at > signed_at and r.files]
    if not later:
        return f"void: {DATA_BOUND} changed after signing"
    return ("void: input data changed after signing: the folder was processed again with other input files: "
            + "; ".join(_rerun_words(r) for r in later))


def _gates_void_reason(signed_at: str, current_version: int, reruns: list[Rerun]) -> str:
    """Why a signature made at ``signed_at`` on a version before ``current_version`` is void: the
    gates changed, naming the files of each later re-run whose automatic gates made a new version
    (:func:`reruns_of`), with its audit entry."""
    head = f"void: gates changed to version {current_version} after signing"
    made = [r for r in reruns if r.at > signed_at and r.files and r.version is not None]
    if not made:
        return head
    return f"{head}: the folder was processed again with other input files: " + "; ".join(_rerun_words(r) for r in made)


def inputs_record(files: list[dict], controls: list[dict]) -> str:
    """What a product's row records of the files its run read (``Product.inputs_json``): the gated
    files (:meth:`ReviewSource.inputs_digest`) and the others, its controls and compensation matrix
    (:meth:`ReviewSource.other_inputs`), so a re-run with a replaced control is recorded as one
    with a replaced gated file is (``reimport_product``)."""
    return audit.canonical({"files": files, "controls": controls})


def stored_inputs(product: Product) -> tuple[list[dict], list[dict] | None]:
    """``(gated files, controls)`` as ``product``'s row records them (:func:`inputs_record`);
    controls None for a row stored before they were recorded (a list of the gated files only)."""
    stored = json.loads(product.inputs_json)
    if isinstance(stored, dict):
        return stored["files"], stored["controls"]
    return stored, None


@dataclass(frozen=True)
class PendingImport:
    """What importing a product stores: its automatic gates (version 1), their SHA-256, its
    input files' SHA-256 (:meth:`ReviewSource.inputs_digest`) and its controls'
    (:meth:`ReviewSource.other_inputs`)."""
    product_id: str
    gate_set: dict
    digest: str
    inputs: list[dict]
    controls: list[dict]


@dataclass(frozen=True)
class BatchResult:
    """What a batch apply did: the new version of each target it changed (``saved``, in the order
    named) and the targets whose current gate already was the source's (``unchanged``: no version)."""
    saved: list[GateSetVersion]
    unchanged: list[str]


@dataclass(frozen=True)
class ListedDecisions:
    """What the product list shows of the database: the standing decision of each imported product
    (None: neither approved nor rejected) and, apart, each product the database holds from another
    output folder, with its refusal (``refused``: id -> message)."""
    decisions: dict[str, Decision | None]
    refused: dict[str, str]
    voided: dict[str, str] = field(default_factory=dict)
    """Each product with no standing decision whose newest approval or rejection is void, in words
    (:func:`voided`: ``... void: re-run after signing: needs review (...)`` when a new run voided it)."""
    rerun: frozenset[str] = frozenset()
    """The products of ``voided`` whose decision a new run voided (:func:`voided`)."""
    unbound: dict[str, str] = field(default_factory=dict)
    """Each product whose standing decision was signed in an older form or under other software,
    with what that signature does not bind (:attr:`SignatureView.note`: the page's words beside VALID)."""


@dataclass(frozen=True)
class Approval:
    """A product's standing approval for release, from one reading of its signatures: the approved
    ``version``, the valid signatures of that version (signing order), the approval itself, and
    what each signature does not bind (``notes``: signature id -> :attr:`SignatureView.note`, when any)."""
    version: GateSetVersion
    signatures: list[Signature]
    approval: Signature
    notes: dict[int, str] = field(default_factory=dict)


CONTROLS_UNBOUND = "control digests not recorded at approval"
"""What a valid signature made before the controls were bound (:data:`DATA_FORMS`) says: a control
replaced since does not void it, as nothing recorded which control it was made over."""
DOSE_UNBOUND = "infused cell number not recorded at approval"
"""What a valid signature made before the infused cell number was bound (``legacy``) says."""
DOSES_UNBOUND = "study dose definitions not recorded at approval"
"""What a valid signature made before the study's dose definitions were bound says."""
PANEL_UNBOUND = "panel file and FMO control markers not recorded at approval"
"""What a valid signature made before the panel file and FMO markers were bound says."""


SOFTWARE_UNRECORDED = "tilpheno version not recorded at signing"
"""What a valid signature made before the software was recorded (schema revision 0004) says."""


def software_now() -> str:
    """The software a signature made now is made under (``Signature.software``): canonical JSON of
    tilpheno's version and the digest of its source files (:func:`tilpheno.cache.code_digest`: the
    version alone says too little of a development checkout)."""
    return audit.canonical({"tilpheno": __version__, "code_sha256": code_digest()})


def software_words(software: str) -> str:
    """``tilpheno 0.1.0 (code 1a2b3c4d5e6f)``: a :func:`software_now` record in words."""
    record = json.loads(software)
    return f"tilpheno {record.get('tilpheno', '?')} (code {str(record.get('code_sha256', ''))[:12] or '?'})"


def software_note(signed: str, now: str) -> str:
    """What a valid signature made under ``signed`` (its ``software``; "" before it was recorded)
    says when that is not ``now`` (:func:`software_now`), else "": the code is not bound, so an
    upgrade does not void it (lab policy decides whether to sign again), while an upgrade whose
    re-run places other automatic gates makes a new version and voids it, as any re-run does."""
    if signed == now:
        return ""
    tail = ("not void: a re-run whose automatic gates differ voids it; numbers computed anew from the same gates "
            "may differ)")
    if not signed:
        return f"{SOFTWARE_UNRECORDED} (signed before it was recorded; now {software_words(now)}: {tail}"
    return f"signed under {software_words(signed)}; now {software_words(now)} (the code is not bound: {tail}"


def run_software_note(run: Mapping[str, Any]) -> str:
    """What the product page and the certificate say, once, when the run in the output folder was
    made by other software than the server runs (run.json's ``tilpheno_version`` and ``tilpheno_code_sha256``;
    a run that recorded no code is compared on its version), else "": the numbers they show are
    recomputed by the server's code from the run's files, not read from the run's tables."""
    ran = {"tilpheno": str(run.get("tilpheno_version") or "?"), "code_sha256": str(run.get("tilpheno_code_sha256") or "")}
    now = software_now()
    server = json.loads(now)
    if ran["tilpheno"] == server["tilpheno"] and ran["code_sha256"] in ("", server["code_sha256"]):
        return ""
    return (f"The run in this folder was made by {software_words(audit.canonical(ran))}; this server runs "
            f"{software_words(now)}: the numbers shown are recomputed by the server's code from the run's files and "
            "may differ from the run's report and tables.")


def unbound_note(form: str, controls: Callable[[], list[dict]]) -> str:
    """What a valid signature made in ``form`` (:data:`DATA_FORMS`) does not bind, so that a change
    there would not void it ("" for the newest form): the product's controls (``controls()``: its
    :meth:`ReviewSource.other_inputs`, read only for a form that does not bind them; named, when it
    has any), the infused cell number, the study's dose definitions, the panel file and FMO markers."""
    said = []
    if form not in CONTROLS_BOUND and (named := [c["file"] for c in controls()]):
        said.append(f"{CONTROLS_UNBOUND} (signed before they were bound: a replaced {', '.join(named)} would not void it)")
    if form == "legacy":
        said.append(f"{DOSE_UNBOUND} (signed before it was bound: a changed infused cell number would not void it)")
    if form not in DOSES_BOUND:
        said.append(f"{DOSES_UNBOUND} (signed before they were bound: a changed dose definition of the study would "
                    "not void it)")
    if form != DATA_FORMS[0]:
        said.append(f"{PANEL_UNBOUND} (signed before they were bound: a changed panel file row, a panel file added "
                    "or removed, or a changed manifest fmo_marker would not void it)")
    return "; ".join(said)


@dataclass
class SignatureView:
    """A signature (``row``) checked against its product's current version: ``valid`` or void and why
    (``void_reason``); ``note``: what a valid one made in an older form does not bind
    (:func:`unbound_note`: the controls, named, the infused cell number, the dose definitions, the
    panel file and FMO markers), else ""; ``in_trail``: False for a signature the audit trail does not
    hold (one the app did not make: void, and never voided by a re-run, :func:`voided`)."""
    row: Signature
    valid: bool
    void_reason: str
    note: str = ""
    """:func:`unbound_note` and :func:`software_note`, ``; ``-separated."""
    in_trail: bool = True


@dataclass(frozen=True)
class ProductState:
    """One reading of a product's review (:meth:`ReviewService.product_state`): its newest automatic
    version, its current version, every version (oldest first), every signature, valid or void
    against ``current`` (signing order), and the re-runs that read other input files for it
    (:func:`reruns_of`)."""
    automatic: GateSetVersion
    current: GateSetVersion
    versions: list[GateSetVersion]
    signatures: list[SignatureView]
    reruns: list[Rerun]


def snapshot(db: Session) -> None:
    """Make every read of ``db`` (a session that has read nothing yet) see the database as it was at
    its first read: REPEATABLE READ on PostgreSQL (its default READ COMMITTED sees each statement's
    own moment); BEGIN on SQLite (its driver starts no transaction for a SELECT, so each read was
    its own). For reads only: the session is closed without writing."""
    if db.get_bind().dialect.name == "postgresql":
        db.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    else:
        db.connection().exec_driver_sql("BEGIN")


class ReviewService:
    """The review operations over one output folder and one database."""

    def __init__(self, source: ReviewSource, factory: sessionmaker, clock: audit.Clock = audit.DATABASE_CLOCK):
        """``clock``: the time of everything this server records (:class:`audit.Clock`: the
        database's on PostgreSQL, this machine's on SQLite; tests inject one)."""
        self.source, self.factory, self.clock = source, factory, clock
        self.noun = source.study.product_noun   # what the study calls a product, in messages too
        self._criteria: dict[tuple[str, str], list[CriterionResult]] = {}
        self.refusals = refusals.RefusalRule(clock=clock)   # identical refused requests counted, not each written
        self.delayed = spool_of(source.out_dir, factory)   # refusals the database would not take, until it does

    def append(self, db: Session, username: str, action: str, **fields: Any) -> AuditEntry:
        """:func:`audit.append` (``fields``: its keywords) at this server's :attr:`clock`."""
        return audit.append(db, username, action, clock=self.clock, **fields)

    # -- products and versions ---------------------------------------------------------------------
    def require_product(self, product_id: str) -> None:
        if not isinstance(product_id, str) or not self.source.has_product(product_id):
            raise NotFound(self.source.not_reviewable(str(product_id)))

    def can_access(self, user: User, product_id: str) -> bool:
        """Reviewers and admins: every product; analysts: the products assigned to them."""
        if user.role in ("reviewer", "admin"):
            return True
        with self.factory() as db:
            return db.scalar(select(ProductAssignment).where(ProductAssignment.product_id == product_id,
                                                             ProductAssignment.username == user.username)) is not None

    def accessible(self, user: User) -> set[str] | None:
        """The products ``user`` may see in one query: None for every product (reviewers, admins),
        else the ids assigned to this analyst (:meth:`can_access` for all products at once)."""
        if user.role in ("reviewer", "admin"):
            return None
        with self.factory() as db:
            return set(db.scalars(select(ProductAssignment.product_id).where(ProductAssignment.username == user.username)))

    def require_access(self, user: User, product_id: str) -> None:
        """NotFound for an unknown product; Forbidden for a product not assigned to this analyst."""
        self.require_product(product_id)
        if not self.can_access(user, product_id):
            raise Forbidden(f"{self.noun} {product_id} is not assigned to you ({user.username}, {user.role}); "
                            f"an admin can run: {self.assign_command(user.username, product_id)}")

    def record_access_refused(self, username: str, product_id: str, request: str, refusal: str) -> int | None:
        """Audit (``access_refused``) a request of ``username`` the server refused with HTTP 403 for
        their role, assignment or session (``request``: its method and path; ``product_id``: the
        product it asked for, "" for none), with the refusal's message as its reason. Returns the
        entry's ``seq``, or None when it was counted in an open window, to be written with the others
        once that window has closed: an identical refusal (same user, request, product and reason)
        was written less than ``self.refusals.window`` seconds ago, or the user has
        ``self.refusals.max_open`` windows open (:mod:`tilpheno.review.refusals`), or when the database
        would not take it ("database busy" at every run): then it is held by this server
        (:attr:`delayed`) and written at its next successful write (:meth:`write_delayed_refusals`).
        ``request`` is cut to 500 characters."""
        request = request[:500]
        try:
            return transaction(self.factory, lambda db: refusals.record(db, self.refusals, username, request,
                                                                        product_id, refusal))
        except ReviewError as exc:   # "database busy" at every run: held, written at the next successful write
            self._hold_refusal(refusals.DelayedRefusal(username, request, product_id, refusal, self.clock.machine(),
                                                       str(exc)))
            return None

    def _hold_refusal(self, refusal: refusals.DelayedRefusal) -> None:
        """Hold ``refusal``, which the database would not take, in :attr:`delayed` (its spool file;
        or count it lost when that holds its limit); one warning line naming the user, the request,
        the error and the refusal (and the spool file's error when it could not be written)."""
        said = f"refusal of {refusal.request} to user {refusal.username} not written ({refusal.error})"
        try:
            lost = self.delayed.hold(refusal)
        except OSError as exc:
            log.warning("%s and not held: the spool %s cannot be written (%s); lost; refused because: %s", said,
                        self.delayed.directory, exc, refusal.refusal)
            return
        if lost is None:
            log.warning("%s: held by this server, written to the audit trail at its next successful write; refused "
                        "because: %s", said, refusal.refusal)
        else:
            log.warning("%s and not held: this server holds %d already; lost, %d lost so far (their count written "
                        "to the audit trail at its next successful write); refused because: %s", said,
                        self.delayed.limit, lost.count, refusal.refusal)

    def write_delayed_refusals(self, replay: bool = False) -> list[int]:
        """Write the refusals this server held (:meth:`record_access_refused`; ``access_refused_delayed``
        and, for those it lost, ``access_refused_lost``: :func:`~tilpheno.review.refusals.write_delayed`),
        and with them, or with ``replay`` (a server's start), those servers killed before writing theirs
        left in their spool files (:meth:`refusals.DelayedRefusals.orphans`); returns the entries' ``seq``.
        When the database still would not take them they stay held (ReviewError raised). Costs no
        file access when this server holds nothing and ``replay`` is False (every request)."""
        if not (replay or self.delayed.pending()) or not self.delayed.writing.acquire(blocking=False):
            return []   # nothing held, or another of this server's threads is writing them
        try:
            return write_spooled(self.factory, self.refusals, self.delayed)
        finally:
            self.delayed.writing.release()

    def copy_trail(self) -> audit.TrailCopy:
        """A copy of the trail (:func:`trail_copy`) once what servers hold is written, this server's and
        killed servers' (:meth:`write_delayed_refusals`); what the database would not take is
        listed in it, marked held."""
        try:
            self.write_delayed_refusals(replay=True)
        except ReviewError as exc:
            log.warning("held refusals not written before a copy of the audit trail (listed in it as held): %s", exc)
        return trail_copy(self.factory, self.refusals, self.delayed)

    def write_repeated_refusals(self) -> list[int]:
        """Write the counts of the refusal windows whose time is over, whichever server counted them
        (:func:`~tilpheno.review.refusals.close`); the windows still open stay open, for every server.
        Returns the entries' ``seq``; on failure the windows stay in the database for the next call."""
        with self.factory() as db:
            if not refusals.due(db, self.refusals):
                return []
        return transaction(self.factory, lambda db: refusals.close(db, self.refusals))

    def write_due_refusals(self, replay: bool = False) -> list[int]:
        """:meth:`write_delayed_refusals` and :meth:`write_repeated_refusals` as every request and a
        server's start (``replay``: also what killed servers held) and stop run them: a database
        error is logged, not raised (the refusals held stay held, the windows in the database,
        written at the next request, start, or ``tilpheno audit export``), so the request is served
        and a stopping server stops."""
        try:
            return self.write_delayed_refusals(replay) + self.write_repeated_refusals()
        except ReviewError as exc:
            log.warning("refused requests held or counted in a window whose time is over not audited yet (kept "
                        "for the next request or start): %s", exc)
            return []

    def assign_command(self, username: str, product_id: str) -> str:
        """The command an admin runs to assign ``product_id`` to ``username`` here: ``tilpheno users
        assign <this output folder> NAME PRODUCT``, shell-quoted, with ``--db`` naming this database
        (its password shown as ``***``) unless it is the folder's own (:meth:`_folders_own_database`)."""
        words = ["tilpheno", "users", "assign", str(self.source.out_dir), username, product_id]
        if not self._folders_own_database():
            words += ["--db", self.factory.kw["bind"].url.render_as_string(hide_password=True)]
        return shlex.join(words)

    def _inputs_changed(self, product: Product) -> bool:
        """False when the database holds ``product`` with this run's input files; True when this
        output folder was processed again with other files since (a file re-acquired and ``process
        --overwrite``: :meth:`_reimport_inputs` records them when the product is next used, and the
        signatures made on the earlier files are void, as :func:`data_sha256` binds them).
        OtherFolder when the database holds the product from another output folder (the folder its
        import recorded, :meth:`_imported_from`, is not this one and the database is not this
        folder's own ``OUT.review.sqlite``): one database per output folder."""
        files, controls = stored_inputs(product)
        if files == self.source.inputs_digest(product.product_id) and (
                controls is None or controls == self.source.other_inputs(product.product_id)):
            return False
        folder = self._imported_from(product.product_id)
        if folder != str(self.source.out_dir) and not self._folders_own_database():
            raise OtherFolder(f"{self.noun} {product.product_id}: the database holds it with other input files (SHA-256), "
                              f"imported from {folder or 'an output folder it did not record'}, not "
                              f"{self.source.out_dir}; use one database per output folder (db=URL)")
        return True

    def _imported_from(self, product_id: str) -> str | None:
        """The output folder the product's newest ``import_product``/``reimport_product`` entry
        recorded (``after.out_dir``); None when none did (entries made before it was recorded)."""
        with self.factory() as db:
            for after in db.scalars(select(AuditEntry.after_json).where(
                    AuditEntry.product_id == product_id,
                    AuditEntry.action.in_(("import_product", "reimport_product"))).order_by(AuditEntry.seq.desc())):
                folder = (json.loads(after) or {}).get("out_dir")
                if isinstance(folder, str):
                    return folder
        return None

    def _folders_own_database(self) -> bool:
        """True when the database is this output folder's default one (``OUT.review.sqlite`` beside
        it, :func:`default_db_path`), which no other folder uses unless named with ``--db``."""
        url = self.factory.kw["bind"].url
        return (url.get_backend_name() == "sqlite" and bool(url.database)
                and Path(url.database).resolve() == default_db_path(self.source.out_dir))

    def _reimport_inputs(self, product_id: str, username: str) -> None:
        """Record this run's input files and controls for a product whose files changed in this
        output folder (:meth:`_inputs_changed`), audited ``reimport_product`` (the files and controls
        before and after, the changed ones named in its reason; a row stored before controls were
        recorded has none before); then the run's automatic gates become the current version when
        they differ from the newest automatic one (:meth:`automatic_version`)."""
        now, now_controls = self.source.inputs_digest(product_id), self.source.other_inputs(product_id)

        def record(db: Session) -> int | None:
            product = _get(db, Product, product_id)
            before, controls = stored_inputs(product)
            if (before, controls) == (now, now_controls):   # recorded meanwhile by another request
                return None
            product.inputs_json = inputs_record(now, now_controls)
            changed = changed_inputs(before + (controls or []), now + (now_controls if controls is not None else []))
            return self.append(db, username, "reimport_product", product_id=product_id,
                                before={"inputs": before, **({"controls": controls} if controls is not None else {})},
                                after={"inputs": now, "controls": now_controls, "out_dir": str(self.source.out_dir)},
                                reason=f"process re-run in {self.source.out_dir} read other input files: "
                                       f"{', '.join(changed)}; signatures bound to the earlier files are void").seq

        entry = transaction(self.factory, record)
        self.automatic_version(product_id, username, rerun_entry=entry)

    def _record_controls(self, product_id: str, username: str) -> None:
        """Record this run's controls (:meth:`ReviewSource.other_inputs`) for a product whose row was
        stored before they were recorded (:func:`stored_inputs`: its gated files only, which match
        this run's), audited ``record_controls``: a later re-run with one replaced is then recorded
        as a re-import (:meth:`_reimport_inputs`), as for a product imported now."""
        controls = self.source.other_inputs(product_id)

        def record(db: Session) -> None:
            product = _get(db, Product, product_id)
            files, stored = stored_inputs(product)
            if stored is not None:   # recorded meanwhile by another request
                return
            product.inputs_json = inputs_record(files, controls)
            self.append(db, username, "record_controls", product_id=product_id, after={"controls": controls},
                         reason="the controls this run read for it are recorded (it was imported before they were); "
                                "a signature made before binds none of them")

        transaction(self.factory, record)

    def ensure_imported(self, product_id: str, username: str = "system") -> Product:
        """The product's row; on first use its automatic gates become version 1 (audited); after a
        re-run of this folder with other input files, those are recorded first (:meth:`_reimport_inputs`)."""
        pending = self._pending_import(product_id, username)
        if isinstance(pending, Product):
            return pending
        try:
            return transaction(self.factory, lambda db: self._import(db, pending, username))
        except IntegrityError:   # imported concurrently by another request
            with self.factory() as db:
                return _get(db, Product, product_id)

    def _pending_import(self, product_id: str, username: str = "system") -> Product | PendingImport:
        """The product's row when it is imported (its input files checked, and recorded on
        ``username``'s behalf when this folder's run read other files: :meth:`_reimport_inputs`),
        else what importing it stores (read outside any transaction: the automatic gates take a while)."""
        self.require_product(product_id)
        with self.factory() as db:
            product = db.get(Product, product_id)
        if product is not None:
            if self._inputs_changed(product):
                self._reimport_inputs(product_id, username)
            elif stored_inputs(product)[1] is None and self.source.other_inputs(product_id):
                self._record_controls(product_id, username)
            else:
                return product
            with self.factory() as db:
                return _get(db, Product, product_id)
        gate_set = self.source.automatic(product_id)
        return PendingImport(product_id, gate_set, gates_sha256(gate_set), self.source.inputs_digest(product_id),
                             self.source.other_inputs(product_id))

    def _import(self, db: Session, pending: PendingImport, username: str, *, expect_seq: int | None = None,
                relevant: Callable[[AuditEntry], bool] | None = None, reason: str = "") -> Product:
        """Store ``pending`` as the product's version 1 with its ``import_product`` entry, inside the
        caller's transaction (``reason``: why, besides it being the run's automatic gates); the
        existing row when it was imported meanwhile."""
        pid = pending.product_id
        existing = db.get(Product, pid)
        if existing is not None:
            return existing
        now = self.clock.stamp(db)
        product = Product(product_id=pid, current_version=1, inputs_json=inputs_record(pending.inputs, pending.controls),
                          til_dose_cells=self.source.til_dose_cells(pid), imported_at=now)
        db.add(product)
        db.flush()
        db.add(GateSetVersion(product_id=pid, version=1, based_on=None, gates_json=audit.canonical(pending.gate_set),
                              gates_sha256=pending.digest, source="automatic", reason="automatic gates of the run",
                              created_by="tilpheno", created_at=now))
        self.append(db, username, "import_product", product_id=pid,
                     after={"version": 1, "gates_sha256": pending.digest, "inputs": pending.inputs,
                            "controls": pending.controls, "out_dir": str(self.source.out_dir)},
                     reason="automatic gates of the run become version 1" + (f" ({reason})" if reason else ""),
                     expect_seq=expect_seq, relevant=relevant)
        return product

    def automatic_version(self, product_id: str, username: str = "system", rerun_entry: int | None = None) -> GateSetVersion:
        """The newest automatic version. When the run in this output folder placed other automatic
        gates than that version holds (``process --overwrite`` on the same files with other
        strategies, settings or software), the run's gates first become a new automatic version,
        the current one (audited ``reimport_product``): the review starts again from the run's own
        gates; earlier versions stay, and signatures on them are void (the version changed).
        ``rerun_entry``: the ``seq`` of the ``reimport_product`` entry recording the other input files
        this run read (:meth:`_reimport_inputs`), which the new version's entry names (``after.rerun_entry``),
        so a signature it voids names those files (:func:`reruns_of`)."""
        self.ensure_imported(product_id, username)
        gate_set = self.source.automatic(product_id)   # slow part outside the transaction (memoised per process)
        digest = gates_sha256(gate_set)

        def newest(db: Session) -> GateSetVersion:
            return db.scalars(select(GateSetVersion).where(GateSetVersion.product_id == product_id,
                                                           GateSetVersion.source == "automatic")
                              .order_by(GateSetVersion.version.desc()).limit(1)).one()

        with self.factory() as db:
            row = newest(db)
        if row.gates_sha256 == digest:
            return row

        def add(db: Session) -> GateSetVersion:
            stale = newest(db)
            if stale.gates_sha256 == digest:   # added meanwhile by another request
                return stale
            product = _get(db, Product, product_id)
            version, now = product.current_version + 1, self.clock.stamp(db)
            reason = (f"the run's automatic gates differ from version {stale.version}'s (process re-run with other "
                      "input files, strategies, settings or software): they become the current version")
            row = GateSetVersion(product_id=product_id, version=version, based_on=None, gates_json=audit.canonical(gate_set),
                                 gates_sha256=digest, source="automatic", reason=reason, created_by="tilpheno",
                                 created_at=now)
            db.add(row)
            product.current_version = version
            self.append(db, username, "reimport_product", product_id=product_id,
                         before={"version": stale.version, "gates_sha256": stale.gates_sha256},
                         after={"version": version, "gates_sha256": digest,
                                **({"rerun_entry": rerun_entry} if rerun_entry is not None else {})}, reason=reason)
            db.flush()
            return row

        return transaction(self.factory, add)

    def versions(self, product_id: str) -> list[GateSetVersion]:
        self.ensure_imported(product_id)
        with self.factory() as db:
            return list(db.scalars(select(GateSetVersion).where(GateSetVersion.product_id == product_id)
                                   .order_by(GateSetVersion.version)))

    def version(self, product_id: str, version: int | None = None) -> GateSetVersion:
        product = self.ensure_imported(product_id)
        with self.factory() as db:
            v = version if version is not None else _get(db, Product, product_id).current_version
            row = db.scalar(select(GateSetVersion).where(GateSetVersion.product_id == product_id,
                                                         GateSetVersion.version == v))
        if row is None:
            raise NotFound(f"{self.noun} {product_id}: no gate-set version {v} (current is {product.current_version})")
        return row

    def current_version(self, product_id: str) -> int:
        self.ensure_imported(product_id)
        with self.factory() as db:
            return _get(db, Product, product_id).current_version

    def save_version(self, product_id: str, user: User, base_version: Any, submitted: Any, reason: Any,
                     source_label: str = "adjusted", roles: tuple[str, ...] = EDIT_ROLES,
                     void_approval: Any = None, deviation: Any = None) -> GateSetVersion:
        """A new version from ``base_version`` with the submitted gates (validated); VersionConflict if
        stale. The account, its role (one of ``roles``) and the product's assignment are checked again
        inside the save's transaction, as signatures check them: an audited change committed before
        the version is stored that could change them (an assignment withdrawn, a role changed, an
        account disabled, anything on this product: :func:`_concerns`) re-runs the checks
        (:func:`audit.head_seq`), so no one saves under an access just taken away.

        A save voids the standing approval for release of ``base_version``: it is refused
        (:class:`ApprovalsWouldBeVoided`, nothing saved) unless ``void_approval`` is that approval's
        signature id (the one the user was shown and agreed to void). The approval is read inside the
        transaction, so one signed while the user edited (after the page loaded) is never voided
        unseen; the voided approval is recorded in the ``save_gates`` entry (``before.voids_approval``).

        A save that overturns the run's determined fail on a criterion its base version does not
        (:meth:`introduced_overturns`) needs ``deviation``, the justification (:class:`DeviationRequired`
        without one, nothing saved), recorded in a ``deviation`` entry after the ``save_gates`` one; a
        ``deviation`` given where none is overturned is not needed and not stored."""
        if user.role not in roles:
            raise Forbidden(f"role {user.role} cannot save gates")
        self.require_access(user, product_id)
        if isinstance(base_version, bool) or not isinstance(base_version, int):
            raise GateSetError("base_version: the version number you edited is required")
        reason = check_reason(reason)
        change = self._gate_change(product_id, base_version, submitted)
        if not change.diff:
            raise GateSetError("no gate changed: nothing to save")
        base = self.version(product_id, base_version)
        overturns = self.introduced_overturns(product_id, self.version_criteria(product_id, base),
                                              self.criteria(product_id, change.gates, change.digest))
        justification = _justification(product_id, base_version, overturns, deviation)
        # the suggested cuts (the page's candidate buttons) the saved gates are at, named in the audit entry
        suggested = applied_candidates(change.diff, self.source.candidates(product_id))

        def save(db: Session):
            start = self._editable(db, user, product_id, roles, base_version)
            voided = self.standing(db, product_id, APPROVED)
            if voided is not None and (isinstance(void_approval, bool) or void_approval != voided.id):
                raise ApprovalsWouldBeVoided(f"saving voids {_approval_words(product_id, voided)}: confirm to save "
                                             "anyway (nothing was saved)", [product_id], [voided.id])
            row = self._store(db, user.username, change, reason, source_label, expect_seq=start,
                              relevant=_concerns(product_id),
                              before={"voids_approval": _signature_record(voided)} if voided is not None else None,
                              after={"suggestions": suggested} if suggested else None)
            if overturns:   # its own entry: a QA reviewer finds every deviation by its action
                self.append(db, user.username, "deviation", product_id=product_id,
                             before={"version": base_version, "release": "the run's determined fail"},
                             after={"version": row.version, "criteria": [o.record() for o in overturns]},
                             reason=justification)
            return row

        try:
            return transaction(self.factory, save)
        except IntegrityError:
            with self.factory() as db:
                raise self._conflict(db, product_id, base_version) from None

    def _gate_change(self, product_id: str, base_version: int, submitted: Any, base_set: dict | None = None) -> GateChange:
        """``submitted`` validated against version ``base_version`` of ``product_id`` (its gate set
        ``base_set`` when given: a product not imported yet; GateSetError naming the bad field).
        Slow: loads the product's stained tubes; run outside transactions."""
        if base_set is None:
            base_set = json.loads(self.version(product_id, base_version).gates_json)
        new_set = validate_gate_set(base_set, submitted, self.source.stained(product_id),
                                    lambda: self.source.negative_calls(product_id))
        return GateChange(product_id, base_version, new_set, gates_sha256(new_set), changed_gates(base_set, new_set))

    def _store(self, db: Session, username: str, change: GateChange, reason: str, source_label: str, *,
               expect_seq: int | None, relevant: Callable[[AuditEntry], bool] | None,
               before: dict | None = None, after: dict | None = None) -> GateSetVersion:
        """Store ``change`` as the product's next version with its ``save_gates`` entry (``before`` and
        ``after``: more to record in it), inside the caller's transaction; VersionConflict (the
        transaction rolled back) when the product is no longer at ``change.base_version``."""
        pid, base = change.product_id, change.base_version
        moved = audit.rowcount(db.execute(update(Product).where(Product.product_id == pid, Product.current_version == base)
                                          .values(current_version=base + 1)))
        if moved != 1:
            db.rollback()
            raise self._conflict(db, pid, base)
        row = GateSetVersion(product_id=pid, version=base + 1, based_on=base, gates_json=audit.canonical(change.gates),
                             gates_sha256=change.digest, source=source_label, reason=reason, created_by=username,
                             created_at=self.clock.stamp(db))
        db.add(row)
        db.flush()
        self.append(db, username, "save_gates", product_id=pid,
                     before={"version": base, "gates": {k: d["before"] for k, d in change.diff.items()}, **(before or {})},
                     after={"version": base + 1, "gates": {k: d["after"] for k, d in change.diff.items()},
                            "gates_sha256": change.digest, **(after or {})},
                     reason=reason, expect_seq=expect_seq, relevant=relevant)
        return row

    def _editable(self, db: Session, user: User, product_id: str, roles: tuple[str, ...], version: int) -> int:
        """The audit head (:func:`audit.head_seq`) read in ``db`` before checking that ``user``, as the
        database holds the account now, may still edit ``product_id`` (:meth:`_editing_refusal`:
        Forbidden) and that it is still at ``version`` (VersionConflict)."""
        start = audit.head_seq(db)
        refusal = self._editing_refusal(_get(db, User, user.id), product_id, roles)
        if refusal:
            raise Forbidden(refusal)
        if _get(db, Product, product_id).current_version != version:
            raise self._conflict(db, product_id, version)
        return start

    def _editing_refusal(self, user: User, product_id: str, roles: tuple[str, ...]) -> str:
        """Why ``user``, as the database holds the account now, may not save gates of ``product_id``:
        the account disabled, a role not in ``roles``, or the product's assignment withdrawn; "" when
        they may."""
        if not user.active:
            return f"account {user.username} was disabled while saving; nothing was saved"
        if user.role not in roles:
            return f"role {user.role} cannot save gates here (changed while saving); nothing was saved"
        if not self.can_access(user, product_id):
            return (f"{self.noun} {product_id} is not assigned to you ({user.username}, {user.role}) any more; "
                    "nothing was saved")
        return ""

    def _conflict(self, db: Session, product_id: str, base_version: int) -> VersionConflict:
        current = _get(db, Product, product_id).current_version
        latest = db.scalar(select(GateSetVersion).where(GateSetVersion.product_id == product_id,
                                                        GateSetVersion.version == current))
        who = f" by {latest.created_by} at {latest.created_at[:19]} UTC ({latest.reason})" if latest else ""
        return VersionConflict(f"conflict: {self.noun} {product_id} is now at version {current}{who}; you edited "
                               f"version {base_version}. Nothing was saved: apply your change to version {current} and save again.")

    def apply_to_batch(self, from_product: str, user: User, tube: Any, population: Any, targets: Any,
                       reason: Any, void_approvals: Any = None) -> BatchResult:
        """Copy one gate of ``from_product``'s current version to each target's current version (a new
        version each), all in one transaction: every target is saved, or none is (a target saved by
        someone else meanwhile: VersionConflict naming it). A target whose current gate already is
        the source's is left as it is and listed as ``unchanged``. A target approved for release
        (its standing decision, read inside the transaction, so an approval signed while the batch
        was prepared counts) loses that approval: :class:`ApprovalsWouldBeVoided` naming each such
        approval, and nothing applied, unless ``void_approvals`` lists the signature id of each such
        approval (the user was asked, naming them: an approval signed after that is named again);
        each voided approval is recorded in its product's ``save_gates`` entry. A target whose run's
        determined fail the gate would overturn (:meth:`introduced_overturns`) refuses the whole batch
        (GateSetError naming it): that product is corrected on its own, with a deviation justification.
        The source and each imported target first get this run's automatic gates as their current
        version when a re-run placed other ones (:meth:`automatic_version`, as opening a product does)."""
        if user.role not in BATCH_ROLES:
            raise Forbidden(f"role {user.role} cannot apply gates to other products (reviewer or admin)")
        reason = check_reason(reason)
        if not isinstance(tube, str) or not isinstance(population, str):
            raise GateSetError("tube and population: text required")
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise GateSetError("products: a list of product ids is required")
        for t in targets:
            self.require_product(t)
        if set(targets) == {from_product}:   # nothing to apply: said, not answered "applied to 0 product(s)"
            raise GateSetError(f"products: only {from_product}, whose gate this is; name the products to apply it to")
        self.automatic_version(from_product, user.username)   # this run's gates first, as opening it does
        src = self.version(from_product)
        gate = json.loads(src.gates_json)["tubes"].get(tube, {}).get("gates", {}).get(population)
        if gate is None:
            raise GateSetError(f"{tube}/{population}: no such gate in {from_product}")
        acknowledged = ({i for i in void_approvals if isinstance(i, int) and not isinstance(i, bool)}
                        if isinstance(void_approvals, list) else set())
        changes: list[GateChange] = []
        unchanged: list[GateChange] = []
        imports: dict[str, PendingImport] = {}   # targets never opened: imported with the saves, on this user's behalf
        for t in dict.fromkeys(targets):   # a product named twice is applied once
            if t == from_product:
                continue
            pending = self._pending_import(t, user.username)
            submitted = {"tubes": {tube: {"gates": {population: gate}}}}
            if isinstance(pending, Product):
                self.automatic_version(t, user.username)   # built on this run's gates, as opening it does
                change = self._gate_change(t, self.current_version(t), submitted)
            else:
                change = self._gate_change(t, 1, submitted, base_set=pending.gate_set)
                if change.diff:
                    imports[t] = pending
            (changes if change.diff else unchanged).append(change)
        for c in changes:   # a determined fail is overturned on its product's own page, with its justification
            base_set = imports[c.product_id].gate_set if c.product_id in imports else json.loads(self.version(c.product_id).gates_json)
            overturns = self.introduced_overturns(c.product_id, self.criteria(c.product_id, base_set, gates_sha256(base_set)),
                                                  self.criteria(c.product_id, c.gates, c.digest))
            if overturns:
                raise GateSetError(f"{c.product_id}: {tube}/{population} from {from_product} overturns the run's determined "
                                   f"fail on {'; '.join(o.words() for o in overturns)}, which no QC flag asked to review; "
                                   f"correct {c.product_id} on its own page, with a deviation justification "
                                   "(nothing was applied)")
        skipped = [c.product_id for c in unchanged]
        label = f"batch from {from_product} v{src.version}"
        note = f"{reason} (gate {tube}/{population} applied from {from_product} v{src.version})"
        batch = {"batch": {"products": [c.product_id for c in changes], "unchanged": skipped}}

        def apply(db: Session) -> list[GateSetVersion]:
            start = audit.head_seq(db)
            account = _get(db, User, user.id)
            refusal = next(filter(None, (self._editing_refusal(account, c.product_id, BATCH_ROLES) for c in changes)), "")
            if refusal:
                raise Forbidden(refusal)
            voided = {c.product_id: a for c in changes if (a := self.standing(db, c.product_id, APPROVED)) is not None}
            unasked = [(t, a) for t, a in voided.items() if a.id not in acknowledged]
            if unasked:
                raise ApprovalsWouldBeVoided(
                    "applying voids " + "; ".join(_approval_words(t, a) for t, a in unasked)
                    + ": confirm to apply anyway (nothing was applied)", [t for t, _ in unasked], [a.id for _, a in unasked])
            # the first entry checks that nothing relevant was committed since ``start``; it then holds
            # the audit chain (and the write lock) until the commit, so the others need not
            relevant = _concerns(*(c.product_id for c in changes))
            for i, pending in enumerate(imports.values()):
                self._import(db, pending, user.username, expect_seq=None if i else start, relevant=relevant,
                             reason=f"a target of the batch apply of {tube}/{population} from {from_product} v{src.version}")
            return [self._store(db, user.username, c, note, label, expect_seq=None if i or imports else start,
                                relevant=relevant, after=batch,
                                before={"voids_approval": _signature_record(voided[c.product_id])}
                                if c.product_id in voided else None)
                    for i, c in enumerate(changes)]

        try:
            saved = transaction(self.factory, apply) if changes else []
        except IntegrityError as exc:   # a target's next version was stored meanwhile: name the first one moved
            with self.factory() as db:
                moved = [c for c in changes if (p := db.get(Product, c.product_id)) is not None
                         and p.current_version != c.base_version]
                if moved:
                    raise self._conflict(db, moved[0].product_id, moved[0].base_version) from None
            problem = str(exc.orig).splitlines()[0] if str(exc.orig) else type(exc.orig).__name__
            raise ReviewError(f"nothing was saved: the database refused the versions of "
                              f"{', '.join(c.product_id for c in changes)} and no one's version moved meanwhile "
                              f"({problem})") from None
        return BatchResult(saved, skipped)

    # -- signatures --------------------------------------------------------------------------------
    def sign(self, product_id: str, user_id: int, password: Any, meaning: Any, version: Any, qc_resolutions: Any,
             comment: Any = "", overrules: Any = None, kind_resolutions: Any = None,
             oos_justification: Any = None) -> Signature:
        """Sign the current ``version`` with ``meaning`` (module docstring); ``overrules``: the id of
        the standing rejection of that version an approval overrules (required to approve it);
        ``oos_justification``: why a version that fails its release criteria is approved anyway
        (required to approve one; one not needed is kept in the ``sign`` entry only).
        ``qc_resolutions``: {``code:file:i``: text} of each warning or error flag; a flag with none
        (or only whitespace) gets ``kind_resolutions[code]``, typed for all flags of its code
        (:func:`resolutions_typed`)."""
        if not isinstance(meaning, str) or meaning not in MEANINGS:
            raise GateSetError(f"meaning: one of {', '.join(MEANINGS)}")
        current = self.version(product_id)
        if version != current.version:
            raise VersionConflict(f"conflict: you are signing version {version} but {self.noun} {product_id} is at version "
                                  f"{current.version}; reload and review the current gates before signing")
        if not isinstance(password, str) or not password:
            raise AuthError("password: re-enter your password to sign")
        flags = [f for f in self.source.qc_flags(product_id) if f["severity"] in ("warning", "error")]
        gates_digest = current.gates_sha256
        data_digest = data_sha256(self.source, product_id, current.version, gates_digest)
        criteria = self.version_criteria(product_id, current) if meaning == APPROVED else []   # slow: outside
        overturns, failed = self.overturns(product_id, criteria), failed_criteria(criteria)
        entry = PasswordEntry(password)   # a re-run of ``do`` re-checks it without verifying it again
        software = software_now()

        def do(db: Session):
            user = _get(db, User, user_id)

            def refused(why: str) -> str:
                """Audit ``why`` as this request's ``signature_refused`` and commit it; returns ``why``."""
                self.append(db, user.username, "signature_refused", product_id=product_id,
                             reason=f"{meaning} of version {current.version}: {why}")
                db.commit()
                return why

            if not user.active:   # disabled since the request came in (or since a re-run's last read)
                raise AuditedRefusal(refused(f"account {user.username} was disabled while signing"))
            try:
                check_password(db, user, entry, self.clock)
            except AuthError as exc:
                refused(str(exc))
                raise
            # the password check takes a while: the role, account, assignment and version checks read
            # the rows as they are after it, and an audited change committed after this point (a role
            # change, a disabled account, a save) makes the append conflict and this re-run
            db.flush()
            start = audit.head_seq(db)
            db.refresh(user)
            views = self._read_views(db, product_id, current)
            rejection = standing_of(views, REJECTED, current.version) if meaning == APPROVED else None
            refusal = (self._signing_refusal(db, user, product_id, meaning, current.version)
                       or _deviation_refusal(product_id, user.username, current.version,
                                             _justified(db, product_id, current.version, overturns)))
            if refusal:   # authorised only after authenticated; the content is judged only once authorised
                raise AuditedRefusal(refused(refusal))
            sent = signed_content(meaning, flags, qc_resolutions, kind_resolutions, comment, oos_justification)
            wrong = sent.wrong + [w for w in (
                _overrule_refusal(rejection, overrules, sent.comment),
                "" if oos_justification not in (None, "") else _oos_refusal(product_id, current.version, failed, ""))
                if w]
            if wrong:   # one refusal naming everything wrong with what was sent
                raise GateSetError(refused("; ".join(wrong)))
            justification = sent.justification if failed else ""   # a version in specification needs none:
            unneeded = "" if failed else sent.justification            # one sent anyway is kept in the trail only
            if _get(db, Product, product_id).current_version != current.version:
                raise VersionConflict(f"conflict: {self.noun} {product_id} changed while you were signing; reload")
            resolutions = audit.canonical(sent.resolutions)
            repeat = repeated_signature(views, user.username, meaning, data_digest, resolutions, sent.comment,
                                        justification, software)
            if repeat is not None:   # a double-click: the second request finds the first's signature
                said = (f"you already signed version {current.version} of {product_id} as '{meaning}' (signature "
                        f"{repeat.id}, {_signed_by(repeat)}) with the same data, QC resolutions and comment, and it "
                        "stands: an identical signature is not stored twice")
                raise RepeatedSignature(refused(said))
            sig = Signature(product_id=product_id, version=current.version, meaning=meaning, username=user.username,
                            full_name=user.full_name, role=user.role, signed_at=self.clock.stamp(db), data_sha256=data_digest,
                            gates_sha256=gates_digest, qc_resolutions_json=resolutions, comment=sent.comment,
                            oos_justification=justification, software=software)
            content = audit.signature_content(sig)
            sig.signature_sha256 = audit.signature_sha256(content)
            db.add(sig)
            db.flush()
            ends = {**({"overrules": _signature_record(rejection)} if rejection is not None else {}),
                    **({"out_of_specification": {"release": FAIL, "criteria": [_criterion_record(r) for r in failed],
                                                 "justification": justification}} if failed else {}),
                    **({"oos_justification_not_needed": unneeded} if unneeded else {})}
            self.append(db, user.username, "sign", product_id=product_id, after=content, before=ends or None,
                         reason=sent.comment or meaning, expect_seq=start, relevant=_concerns(product_id))
            return sig

        return transaction(self.factory, do)

    def _signing_refusal(self, db: Session, user: User, product_id: str, meaning: str, version: int) -> str:
        """Why ``user`` (whose password was right) may not sign ``version`` with ``meaning``: an
        account disabled meanwhile, their role, the product's assignment, or the four-eyes rule; ""
        when they may."""
        if not user.active:
            return f"account {user.username} was disabled while signing"
        if user.role not in MEANINGS[meaning]:
            return f"role {user.role} cannot sign '{meaning}'"
        if not self.can_access(user, product_id):
            return f"{self.noun} {product_id} is not assigned to you ({user.username}, {user.role})"
        if meaning == "approved for release":
            return _saved_own(db, user.username, product_id, version)
        return ""

    def four_eyes(self, username: str, product_id: str, version: GateSetVersion, deviations: list[Deviation]) -> str:
        """Why the four-eyes rule keeps ``username`` from approving ``version`` for release (they saved a version up
        to it, or justified one of its ``deviations``), as a signature would be refused: the sign form says it
        before they type anything; "" when the rule lets them."""
        with self.factory() as db:
            return (_saved_own(db, username, product_id, version.version)
                    or _justified_own(product_id, username, version.version, deviations))

    def standing(self, db: Session, product_id: str, meaning: str,
                 current: GateSetVersion | None = None) -> Signature | None:
        """The valid signature with ``meaning`` (approved for release or rejected) that is the
        product's standing QA decision on ``current`` (default: its current version), read in
        ``db``; None when the standing decision is another, or none (a product never opened)."""
        if current is None:
            product = db.get(Product, product_id)
            if product is None:
                return None
            current = db.scalars(select(GateSetVersion).where(GateSetVersion.product_id == product_id,
                                                              GateSetVersion.version == product.current_version)).one()
        return standing_of(self._read_views(db, product_id, current), meaning, current.version)

    def _read_views(self, db: Session, product_id: str, current: GateSetVersion) -> list[SignatureView]:
        """:meth:`_views` of the product's signatures as ``db`` reads them now."""
        rows = list(db.scalars(select(Signature).where(Signature.product_id == product_id).order_by(Signature.id)))
        return self._views(product_id, rows, audit.signed_in_trail(db, product_id), current)

    def signatures(self, product_id: str) -> list[SignatureView]:
        """Each signature of the product, valid or void (:meth:`_views`), from one reading."""
        return self.product_state(product_id).signatures

    def product_state(self, product_id: str) -> ProductState:
        """The product's versions and signatures read at once (:func:`snapshot`): a save or a
        signature committed meanwhile is either wholly in it or not at all."""
        self.ensure_imported(product_id)
        with self.factory() as db:
            snapshot(db)
            current_version = _get(db, Product, product_id).current_version
            versions = list(db.scalars(select(GateSetVersion).where(GateSetVersion.product_id == product_id)
                                       .order_by(GateSetVersion.version)))
            rows = list(db.scalars(select(Signature).where(Signature.product_id == product_id).order_by(Signature.id)))
            in_trail = audit.signed_in_trail(db, product_id)
            reruns = reruns_of(db, product_id)
        current = next(v for v in versions if v.version == current_version)
        automatic = [v for v in versions if v.source == "automatic"][-1]
        return ProductState(automatic, current, versions, self._views(product_id, rows, in_trail, current, reruns), reruns)

    def _views(self, product_id: str, rows: list[Signature], in_trail: set[str],
               current: GateSetVersion, reruns: list[Rerun] | None = None) -> list[SignatureView]:
        """Each signature of ``product_id`` (in signing order) valid or void, and why (module
        docstring); ``reruns`` (:func:`reruns_of`): to name the files a re-run replaced in the reason
        of a signature their change voided (the page's list; others need only valid or void)."""
        hashes: dict[str, str] = {}   # form -> the data hash now, made when a signature is first checked

        def data_now(form: str) -> str:
            if form not in hashes:
                hashes[form] = data_sha256(self.source, product_id, current.version, current.gates_sha256, form=form)
            return hashes[form]

        # the run's QC flags and controls, read once, when a signature first needs them
        flags_now = functools.cache(lambda: self.source.qc_flags(product_id))
        controls_now = functools.cache(lambda: self.source.other_inputs(product_id))
        now_software = software_now()

        out = []
        for s in rows:
            if s.signature_sha256 not in in_trail:
                out.append(SignatureView(s, False, "void: not in the audit trail (a signature the app did not make)",
                                         in_trail=False))
            elif s.version != current.version:
                out.append(SignatureView(s, False, _gates_void_reason(s.signed_at, current.version, reruns or [])))
            elif (form := next((f for f in DATA_FORMS if s.data_sha256 == data_now(f)), None)) is None:
                out.append(SignatureView(s, False, _data_void_reason(s.signed_at, reruns or [])))
            elif s.meaning == APPROVED and (unresolved := unresolved_flags(flags_now(), s)):
                named = Counter(unresolved)
                out.append(SignatureView(s, False, f"void: {len(unresolved)} QC flag(s) of the current run have no "
                                                   "resolution in it (" + ", ".join(f"{k} x{n}" if n > 1 else k
                                                                                    for k, n in named.items())
                                                   + "): a re-run raised them after signing"))
            else:
                out.append(SignatureView(s, True, "", "; ".join(filter(None, (
                    unbound_note(form, controls_now), software_note(s.software or "", now_software))))))
        return out

    def decisions(self, user: User | None = None) -> dict[str, Decision | None]:
        """The standing decisions of :meth:`export_decisions`."""
        return self.export_decisions(user).decisions

    def export_decisions(self, user: User | None = None) -> ListedDecisions:
        """:meth:`listed_decisions`; OtherFolder, as :meth:`ensure_imported`, naming each product the
        database holds from another output folder (the approved export: nothing of a mixed-up database)."""
        listed = self.listed_decisions(user)
        if listed.refused:
            raise OtherFolder("; ".join(listed.refused.values()))
        return listed

    def listed_decisions(self, user: User | None = None) -> ListedDecisions:
        """The standing QA decision (:func:`decision_of`: approved or rejected, and which version) of
        every imported product ``user`` may see (None: every one; the product list), read with a
        few queries for the whole run instead of several per product. A product not imported yet
        has no signature, so it is left out (never re-gated here: its input files may be gone). A
        product the database holds from another output folder with other input files is left out
        too, and its refusal (:meth:`_inputs_changed`) kept in ``refused``: the others are listed.
        A product whose approval or rejection is void, with no standing decision, is said in
        ``voided`` (:func:`voided`); one whose standing decision's signature does not bind
        something (an older form), in ``unbound``."""
        allowed = self.accessible(user) if user is not None else None
        with self.factory() as db:
            products = {p.product_id: p for p in db.scalars(select(Product))
                        if (allowed is None or p.product_id in allowed) and self.source.has_product(p.product_id)}
        refused: dict[str, str] = {}
        for pid, product in list(products.items()):   # one of another folder refused; one re-run here: its signatures void
            try:
                self._inputs_changed(product)
            except OtherFolder as exc:
                refused[pid] = str(exc)
                del products[pid]
        with self.factory() as db:
            signed: dict[str, list[Signature]] = {}
            for sig in db.scalars(select(Signature).order_by(Signature.id)):
                if sig.product_id in products:
                    signed.setdefault(sig.product_id, []).append(sig)
            in_trail = audit.signed_in_trail(db) if signed else set()
            versions = {(v.product_id, v.version): v for v in db.scalars(
                select(GateSetVersion).where(GateSetVersion.product_id.in_(list(signed))))} if signed else {}
        out: dict[str, Decision | None] = dict.fromkeys(products)
        void_words: dict[str, str] = {}
        unbound: dict[str, str] = {}
        rerun: set[str] = set()
        of_product: dict[str, list[GateSetVersion]] = {}
        for (pid, _), v in versions.items():
            of_product.setdefault(pid, []).append(v)
        for pid, rows in signed.items():
            current = versions[(pid, products[pid].current_version)]
            views = self._views(pid, rows, in_trail, current)
            sig = deciding(views)
            out[pid] = Decision(sig.meaning, versions[(pid, sig.version)], sig) if sig is not None else None
            if note := next((v.note for v in views if v.row is sig), ""):
                unbound[pid] = note
            if sig is None:
                words, by_rerun = voided(views, of_product[pid])
                if words:
                    void_words[pid] = words
                if by_rerun:
                    rerun.add(pid)
        return ListedDecisions(out, refused, void_words, frozenset(rerun), unbound)

    def version_criteria(self, product_id: str, version: GateSetVersion) -> list[CriterionResult]:
        """The release criteria on a stored version's gates (:meth:`criteria`)."""
        return self.criteria(product_id, json.loads(version.gates_json), version.gates_sha256)

    def criteria(self, product_id: str, gate_set: dict, digest: str) -> list[CriterionResult]:
        """The release criteria on ``gate_set`` (SHA-256 ``digest``; memoised by it: a gate set's
        results never change)."""
        key = (product_id, digest)
        if key not in self._criteria:
            self._criteria[key] = recompute(self.source, product_id, gate_set, medians=False).release
        return self._criteria[key]

    def overturns(self, product_id: str, results: list[CriterionResult]) -> list[Overturn]:
        """Each of the run's determined fails (``RunRelease.determined_fails``) that a gate set whose
        criteria are ``results`` passes, in the spec's order."""
        now = {r.criterion.name: r for r in results}
        return [Overturn(r, now[r.criterion.name]) for r in self.source.run_release(product_id).determined_fails
                if r.criterion.name in now and now[r.criterion.name].outcome == PASS]

    def introduced_overturns(self, product_id: str, base: list[CriterionResult],
                             results: list[CriterionResult]) -> list[Overturn]:
        """The overturns of a gate set whose criteria are ``results`` that its base gate set
        (criteria ``base``) does not have: those a save of it from that base must justify."""
        before = {o.criterion for o in self.overturns(product_id, base)}
        return [o for o in self.overturns(product_id, results) if o.criterion not in before]

    def deviations(self, product_id: str, version: GateSetVersion,
                   results: list[CriterionResult] | None = None) -> list[Deviation]:
        """Each overturn of ``version`` with the justification the audit trail holds for it
        (:class:`Deviation`), in the spec's order (``results``: its criteria, when computed already)."""
        overturns = self.version_overturns(product_id, version) if results is None else self.overturns(product_id, results)
        if not overturns:
            return []
        with self.factory() as db:
            snapshot(db)
            return _justified(db, product_id, version.version, overturns)

    def version_overturns(self, product_id: str, version: GateSetVersion) -> list[Overturn]:
        """The overturns of a stored version (:meth:`overturns` of its criteria; slow the first time)."""
        return self.overturns(product_id, self.version_criteria(product_id, version))

    def justify_deviations(self, product_id: str, user: User, version: Any, deviation: Any) -> list[Overturn]:
        """Record the deviation justification of each overturn of the current ``version`` that has
        none (a version saved before deviations were recorded: its approval is refused until then),
        as its own ``deviation`` entry of the trail (``after``: that version and the criteria, as a
        save records them; ``before.added_to``: the version it justifies after it was saved). Checked
        as a save is (role, account, assignment inside the transaction); VersionConflict when
        ``version`` is no longer the current one; GateSetError when every overturn of it has a
        justification already, or none is given (``deviation: required ...``). Returns the overturns
        justified. The version and its signatures are unchanged."""
        if user.role not in EDIT_ROLES:
            raise Forbidden(f"role {user.role} cannot justify a deviation")
        self.require_access(user, product_id)
        if isinstance(version, bool) or not isinstance(version, int):
            raise GateSetError("version: the version number whose deviation you justify is required")
        reason = check_reason(deviation, "deviation")
        current = self.version(product_id)
        if version != current.version:
            raise VersionConflict(f"conflict: you are justifying version {version} but {self.noun} {product_id} is at "
                                  f"version {current.version}; reload")
        overturns = self.version_overturns(product_id, current)

        def add(db: Session) -> list[Overturn]:
            start = self._editable(db, user, product_id, EDIT_ROLES, version)
            open_ = [d.overturn for d in _justified(db, product_id, version, overturns) if not d.reason]
            if not open_:
                raise GateSetError(f"deviation: version {version} of {product_id} overturns no determined fail of the run "
                                   "without a justification: nothing to justify")
            self.append(db, user.username, "deviation", product_id=product_id,
                         before={"version": version, "release": "the run's determined fail", "added_to": version},
                         after={"version": version, "criteria": [o.record() for o in open_]},
                         reason=reason, expect_seq=start, relevant=_concerns(product_id))
            return open_

        return transaction(self.factory, add)

    def release_approval(self, product_id: str, issued: str = "a certificate of analysis is issued") -> Approval:
        """The product's standing approval for release, read at once (a certificate's content, an
        approved Gating-ML's); VersionConflict when it has none (saying that ``issued`` only for approved products)."""
        views = self.signatures(product_id)
        state = _approved_state(views)
        if state is None:
            raise VersionConflict(f"{self.noun} {product_id} has no valid 'approved for release' signature: "
                                  f"{issued} only for approved products")
        valid = [v for v in views if v.valid and v.row.version == state]
        sigs = [v.row for v in valid]
        return Approval(self.version(product_id, state), sigs, [s for s in sigs if s.meaning == APPROVED][-1],
                        {v.row.id: v.note for v in valid if v.note})

    def record_certificates(self, username: str, issued: dict[str, Approval],
                            tables: Mapping[str, tuple[str, int]] | None = None) -> None:
        """Audit the certificate of each product made from ``issued[product]`` (a ``certificate``
        entry each: the version, its gates' SHA-256 and the approval's), and each approved table
        written beside them (``tables``: file name -> its text and rows; an ``export_table`` entry
        each, as :meth:`record_table_export` records a download, computed from ``issued``), in one
        transaction that finds every one of those approvals still its product's standing decision;
        VersionConflict naming the first that changed, and nothing recorded, when a save, a
        rejection or another approval was committed while the certificates were being made."""
        approvals = {pid: (a.version, a.approval) for pid, a in issued.items()}

        def record(db: Session) -> None:
            start = audit.head_seq(db)
            self._require_standing(db, approvals, "its certificate was made", "nothing was issued")
            for i, (pid, (version, approval)) in enumerate(approvals.items()):
                self.append(db, username, "certificate", product_id=pid, after=_issued_record(version, approval),
                             expect_seq=None if i else start, relevant=_concerns(*issued))
            for file, (text, rows) in (tables or {}).items():
                self.append(db, username, "export_table", after=_table_record(file, text, rows, approvals),
                             expect_seq=None if approvals else start, relevant=_concerns(*issued))

        transaction(self.factory, record)

    def record_table_export(self, username: str, file: str, text: str, rows: int,
                            decisions: dict[str, Decision | None]) -> None:
        """Audit the download of an approved table (``export_table``: the file's name, its ``rows``,
        the SHA-256 of ``text`` as sent, and the version, gates' and approval's SHA-256 of each
        approved product of ``decisions``, the ones the table was computed from), as
        :meth:`_record_download` does (VersionConflict, nothing recorded, when one changed meanwhile)."""
        approvals = {pid: (d.version, d.signature) for pid, d in sorted(decisions.items())
                     if d is not None and d.meaning == APPROVED}
        self._record_download(username, "export_table", file, _table_record(file, text, rows, approvals), approvals)

    def record_gatingml_export(self, username: str, product_id: str, tube: str, file: str, text: str,
                               issued: Approval) -> None:
        """Audit the download of a product's approved Gating-ML of ``tube`` (``export_gatingml`` on
        the product: the file's name, the tube, the SHA-256 of ``text`` as sent, and the version,
        gates' and approval's SHA-256 of ``issued``, the approval it was made from), as
        :meth:`_record_download` does (VersionConflict, nothing recorded, when it changed meanwhile)."""
        self._record_download(username, "export_gatingml", file,
                              {**_sent(file, text), "tube": tube, **_issued_record(issued.version, issued.approval)},
                              {product_id: (issued.version, issued.approval)}, product_id=product_id)

    def _record_download(self, username: str, action: str, file: str, after: dict,
                         approvals: dict[str, tuple[GateSetVersion, Signature]], product_id: str = "") -> None:
        """Audit (``action``, ``after``: what it records of the file, :func:`_sent` and more) a file
        made from ``approvals`` and sent (``file``), in one transaction that finds each of those
        approvals still standing, as :meth:`record_certificates` does (VersionConflict naming the
        first that changed, nothing recorded, when one changed while the file was made)."""
        def record(db: Session) -> None:
            start = audit.head_seq(db)
            self._require_standing(db, approvals, f"{file} was made", "nothing was exported")
            self.append(db, username, action, product_id=product_id, after=after,
                         expect_seq=start, relevant=_concerns(*approvals))

        transaction(self.factory, record)

    def _require_standing(self, db: Session, approvals: dict[str, tuple[GateSetVersion, Signature]],
                          while_: str, outcome: str) -> None:
        """VersionConflict naming the first product whose approval of ``approvals`` is no longer its
        standing decision in ``db`` (changed while ``while_``; ``outcome``: what was not done)."""
        for pid, (version, approval) in approvals.items():
            standing = self.standing(db, pid, APPROVED)
            if standing is None or standing.id != approval.id:
                raise VersionConflict(f"{self.noun} {pid}: the approval of version {version.version} by "
                                      f"{approval.full_name} changed while {while_} "
                                      f"({self._decision_now(db, pid)}); {outcome}: reload")

    def record_export_failure(self, username: str, issued: dict[str, Approval], dest: str, error: str) -> None:
        """Audit (``export_failed``) that the export whose certificates of ``issued`` were just audited
        did not reach ``dest`` (``error``: why), so the trail does not show them delivered."""
        transaction(self.factory, lambda db: self.append(
            db, username, "export_failed", after={"dest": dest, "certificates": {
                pid: {"version": a.version.version, "approval_sha256": a.approval.signature_sha256} for pid, a in issued.items()}},
            reason=f"the export's files could not be moved into place: {error}"))

    def _decision_now(self, db: Session, product_id: str) -> str:
        """The product's state in words, read in ``db``: the version it is at and its standing decision."""
        current = _get(db, Product, product_id).current_version
        for meaning in (APPROVED, REJECTED):
            sig = self.standing(db, product_id, meaning)
            if sig is not None:
                return f"now version {current}, {meaning} by {sig.full_name} ({sig.username})"
        return f"now version {current}, not approved"

    def approved_version(self, product_id: str) -> GateSetVersion | None:
        state = _approved_state(self.signatures(product_id))
        return self.version(product_id, state) if state is not None else None

    def decision(self, product_id: str) -> tuple[str, int] | None:
        """The product's standing QA decision, ``(meaning, version)`` (:func:`decision_of`)."""
        return decision_of(self.signatures(product_id))
