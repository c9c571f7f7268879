"""Refused requests counted in the database, not each written: the audit trail's flood guard.

A logged-in script hitting a forbidden URL in a loop would add one ``access_refused`` entry per
request. Rule: the first refusal of a (user, method and path, product, reason) is written; identical
refusals within :data:`WINDOW_S` seconds of it are counted, not written; once that window has
closed, one ``access_refused_repeated`` entry gives their count.

The open windows are rows of ``refusal_windows`` (:class:`~tilpheno.review.models.RefusalWindow`),
so the counts survive a crash or kill and every server process on one database counts into the
same window. A refusal in an open window is one UPDATE of its row (the count, under the row's lock).
A window is closed by deleting its row (DELETE ... RETURNING: of two servers closing it at once, one
gets it), its entry written in the same transaction; windows close when their time is over (at the
next request to any server, or the next refusal that opens a window), every open one as a server
stops, and those left open (a crash or kill) as the next server starts. Each entry says how it
was closed (``closed``: :data:`WINDOW_OVER`, :data:`SERVER_STOPPED`, :data:`SERVER_STARTED`).
The trail stays append-only: no entry is changed.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from tilpheno.review import audit
from tilpheno.review.models import RefusalWindow, utcnow

WINDOW_S = 300.0          # identical refused requests within this many seconds of the written one are counted
WINDOW_OVER = "window over"
SERVER_STOPPED = "server stopped"
SERVER_STARTED = "server started (left open by a server that stopped without writing it)"


@dataclass(frozen=True)
class RefusalRule:
    """The window's length and the clock (seconds since the epoch: one for every server process on
    the database)."""
    window: float = WINDOW_S
    clock: Callable[[], float] = time.time


def window_key(username: str, request: str, product_id: str, refusal: str) -> str:
    """The SHA-256 naming a refusal's window (the refusal's text may be longer than an index allows)."""
    return hashlib.sha256(audit.canonical([username, request, product_id, refusal]).encode("utf-8")).hexdigest()


def record(db: Session, rule: RefusalRule, username: str, request: str, product_id: str, refusal: str) -> int | None:
    """Count or write one refused request (module docstring), in the caller's transaction: the
    ``seq`` of its ``access_refused`` entry, or None when it was counted in its open window. Windows
    whose time is over are closed first."""
    now, at = rule.clock(), utcnow()
    key = window_key(username, request, product_id, refusal)
    counted = db.execute(update(RefusalWindow).where(RefusalWindow.key_sha256 == key,
                                                     RefusalWindow.opened > now - rule.window)
                         .values(count=RefusalWindow.count + 1, last_at=at))
    if audit.rowcount(counted):
        return None
    close(db, rule, WINDOW_OVER, now)   # this request's own window among them, if its time is over
    seq = audit.append(db, username, "access_refused", product_id=product_id, after={"request": request},
                       reason=refusal).seq
    db.add(RefusalWindow(key_sha256=key, username=username, request=request, product_id=product_id, refusal=refusal,
                         opened=now, opened_at=at, repeats_entry=seq, count=0, last_at=at))
    db.flush()   # a window another server opened meanwhile: IntegrityError, the transaction re-runs and counts
    return seq


def due(db: Session, rule: RefusalRule) -> bool:
    """Whether a window's time is over (one indexed read: what a request costs when none is)."""
    return db.scalar(select(RefusalWindow.key_sha256).where(RefusalWindow.opened <= rule.clock() - rule.window)
                     .limit(1)) is not None


def close(db: Session, rule: RefusalRule, closed: str, now: float | None = None) -> list[int]:
    """Close the windows whose time is over (every open one unless ``closed`` is :data:`WINDOW_OVER`)
    and write their entries, oldest first, in the caller's transaction; returns their ``seq``.
    ``access_refused_repeated``: who, the product, ``after``: the request, ``count`` (the refusals
    counted, not written), ``repeats_entry`` (the ``seq`` of the one written), ``window_s``,
    ``last_at`` (the last one's time) and ``closed``; the refusal as its reason (a window that
    counted none: no entry)."""
    query = delete(RefusalWindow).returning(RefusalWindow)
    if closed == WINDOW_OVER:
        query = query.where(RefusalWindow.opened <= (rule.clock() if now is None else now) - rule.window)
    windows = sorted(db.scalars(query, execution_options={"synchronize_session": False}),
                     key=lambda w: (w.opened, w.opened_at, w.key_sha256))
    return [audit.append(db, w.username, "access_refused_repeated", product_id=w.product_id, reason=w.refusal,
                         after={"request": w.request, "count": w.count, "repeats_entry": w.repeats_entry,
                                "window_s": rule.window, "last_at": w.last_at, "closed": closed}).seq
            for w in windows if w.count]

