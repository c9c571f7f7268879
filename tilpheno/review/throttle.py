"""Failed-login throttle of the review app: a client address that keeps failing is made to wait.

Every refused login costs the server an argon2 check (about 0.1 s of CPU by design), for a name
with no account too (the same work, so that the answer tells nothing). Without a limit, a script
can guess passwords across accounts without ever tripping one account's lock-out, and keep the
server's threads busy. Rule: after ``limit`` refused logins from one client address within
``window`` seconds, further logins from that address are refused without a password check (HTTP
429, ``Retry-After``) until the oldest of those failures is ``window`` seconds old. State is per
server process and in memory (a restart forgets it); behind a reverse proxy every client has the
proxy's address, so the limit is then shared.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from typing import Callable

LIMIT = 20          # refused logins per address ...
WINDOW_S = 300.0    # ... within this many seconds
MAX_ADDRESSES = 10_000   # addresses remembered at once (the least recently failing are forgotten first)


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
