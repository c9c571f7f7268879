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

Refused requests (HTTP 403) are counted in the database, not here: :mod:`tilpheno.review.refusals`.
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
