"""Failed-login throttle of the review app: a client address that keeps failing is made to wait.

Every refused login costs the server an argon2 check (about 0.1 s of CPU by design), for a name
with no account too (the same work, so that the answer tells nothing). Without a limit, a script
can guess passwords across accounts without ever tripping one account's lock-out, and keep the
server's threads busy. Rule: after ``limit`` refused logins from one client address within
``window`` seconds, further logins from that address are refused without a password check (HTTP
429, ``Retry-After``) until the oldest of those failures is ``window`` seconds old. State is per
server process and in memory (a restart forgets it); behind a reverse proxy every client has the
proxy's address, so the limit is then shared.

:class:`LoginNotices` keeps why a login was refused until the login page shows it once: a refused
login answers with a redirect to that page (POST/redirect/GET), so reloading it does not post the
password again (which counted as another wrong password towards the account's lock-out).

:class:`RefusalCounter` keeps the audit trail from being flooded by refused requests: a logged-in
script hitting a forbidden URL in a loop would add one ``access_refused`` entry per request. Rule:
the first refusal of a (user, method, path, reason) is written; identical refusals within
``window`` seconds of it are counted, not written; when that window has closed, one
``access_refused_repeated`` entry gives their count (ReviewService.record_access_refused,
ReviewService.write_repeated_refusals). The trail stays append-only: no entry is changed.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable

LIMIT = 20          # refused logins per address ...
WINDOW_S = 300.0    # ... within this many seconds
MAX_ADDRESSES = 10_000   # addresses remembered at once (the least recently failing are forgotten first)
MAX_NOTICES = 10_000     # refused logins whose notice waits to be shown (the oldest are forgotten first)
REFUSAL_WINDOW_S = 300.0   # identical refused requests within this many seconds of the written one are counted
MAX_REFUSALS = 10_000      # open windows at once (beyond: the oldest is closed early, its count written)


class LoginThrottle:
    """Refused logins per client address (module docstring). Thread-safe (waitress serves from threads)."""

    def __init__(self, limit: int = LIMIT, window: float = WINDOW_S, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address, deque())
        while times and now - times[0] >= self.window:
            times.popleft()
        return times

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again (0: it may try now)."""
        with self._lock:
            now = self.clock()
            times = self._recent(address, now)
            if not times:
                self._failures.pop(address, None)
                return 0.0
            return max(0.0, times[0] + self.window - now) if len(times) >= self.limit else 0.0

    def failed(self, address: str) -> None:
        """Record a refused login from ``address``."""
        with self._lock:
            now = self.clock()
            times = self._recent(address, now)
            times.append(now)
            self._failures[address] = times
            self._failures.move_to_end(address)
            while len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)


@dataclass(frozen=True)
class LoginNotice:
    """What the login page shows after a refused login: why (``error``) and the user name typed."""
    error: str
    username: str


class LoginNotices:
    """One notice per browser session (the anonymous session's token SHA-256), shown once: the
    login page pops it. Per server process, in memory, at most :data:`MAX_NOTICES` (a notice
    forgotten or lost in a restart only leaves the login form without its message). Thread-safe."""

    def __init__(self) -> None:
        self._notices: OrderedDict[str, LoginNotice] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, session: str, notice: LoginNotice) -> None:
        with self._lock:
            self._notices[session] = notice
            self._notices.move_to_end(session)
            while len(self._notices) > MAX_NOTICES:
                self._notices.popitem(last=False)

    def pop(self, session: str) -> LoginNotice | None:
        with self._lock:
            return self._notices.pop(session, None)


RefusalKey = tuple[str, str, str, str]   # (username, "METHOD /path", product_id, refusal)


@dataclass
class RefusalWindow:
    """Identical refusals after the written one (``seq``) within the window opened at ``opened``:
    ``count`` of them, the last at ``last_at`` (UTC text)."""
    opened: float
    seq: int = 0
    count: int = 0
    last_at: str = ""


class RefusalCounter:
    """Open windows of identical refused requests (module docstring). Per server process, in memory,
    thread-safe; windows close in the order they opened (one length for all)."""

    def __init__(self, window: float = REFUSAL_WINDOW_S, clock: Callable[[], float] = time.monotonic,
                 max_open: int = MAX_REFUSALS):
        self.window, self.clock, self.max_open = window, clock, max_open
        self._open: OrderedDict[RefusalKey, RefusalWindow] = OrderedDict()
        self._due: list[tuple[RefusalKey, RefusalWindow]] = []   # closed by counted(), to be written
        self._lock = threading.Lock()

    def counted(self, key: RefusalKey, at: str) -> bool:
        """True (counted, not to be written) when ``key``'s window is open; else False: the caller
        writes this refusal and then calls :meth:`opened` with its entry (or :meth:`forget`)."""
        with self._lock:
            now = self.clock()
            win = self._open.get(key)
            if win is not None and now - win.opened < self.window:
                win.count += 1
                win.last_at = at
                return True
            self._open.pop(key, None)   # a closed window still open here: its count is due (see closed())
            if win is not None and win.count:
                self._due.append((key, win))
            self._open[key] = RefusalWindow(now)
            return False

    def opened(self, key: RefusalKey, seq: int) -> None:
        with self._lock:
            if key in self._open:
                self._open[key].seq = seq

    def forget(self, key: RefusalKey) -> None:
        """The refusal that opened ``key``'s window was not written: count nothing against it."""
        with self._lock:
            self._open.pop(key, None)

    def put_back(self, closed: list[tuple[RefusalKey, RefusalWindow]]) -> None:
        """Windows :meth:`closed` returned whose counts could not be written: due again next call."""
        with self._lock:
            self._due[:0] = closed

    def closed(self, everything: bool = False) -> list[tuple[RefusalKey, RefusalWindow]]:
        """The windows closed since the last call that counted refusals (all open ones with
        ``everything``, as the server stops), oldest first, taken out of the counter."""
        with self._lock:
            now = self.clock()
            due, self._due = self._due, []
            while self._open:
                key, win = next(iter(self._open.items()))
                if not (everything or now - win.opened >= self.window or len(self._open) > self.max_open):
                    break
                del self._open[key]
                due.append((key, win))
            return [(key, win) for key, win in due if win.count]
