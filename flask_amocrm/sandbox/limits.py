"""The per-token rate limit and the block that follows abuse.

amoCRM allows 7 requests per second per integration. Over that the gateway answers
429 with an HTML page and no Retry-After; an integration that keeps going over is
blocked and every request gets 403 until support lifts it. Here the block lasts
``block_seconds`` and comes after ``block_after`` rejected requests within
``VIOLATION_WINDOW`` seconds.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque

VIOLATION_WINDOW = 60.0
WINDOW = 1.0
#: The WSGI environ key of the moment a request's first line was read (the server's
#: request handler sets it): the gateway counts a request when it arrives.
ARRIVED = "amocrm_sandbox.arrived"


class RateLimiter:
    """A sliding one-second window per token, violation counting and blocking."""

    def __init__(
        self, rate_limit: float, block_after: int, block_seconds: float
    ) -> None:
        self.rate_limit = rate_limit
        self.block_after = block_after
        self.block_seconds = block_seconds
        self._lock = threading.Lock()
        self._hits: dict[str, list[float]] = {}
        self._violations: dict[str, deque[float]] = {}
        self._blocked_until: dict[str, float] = {}

    def reset(self) -> None:
        """Forget all windows, violations and blocks."""
        with self._lock:
            self._hits.clear()
            self._violations.clear()
            self._blocked_until.clear()

    def check(self, key: str, at: float | None = None) -> int | None:
        """Count a request for ``key`` that arrived ``at`` (``time.monotonic()``,
        default now): None to serve it, else 429 or 403. Requests are counted in
        the order they arrived, whichever thread gets here first."""
        now = time.monotonic() if at is None else at
        with self._lock:
            until = self._blocked_until.get(key)
            if until is not None:
                if now < until:
                    return 403
                del self._blocked_until[key]
                self._violations.pop(key, None)
            if not self.rate_limit or self.rate_limit <= 0:
                return None
            hits = self._hits.setdefault(key, [])
            while hits and hits[0] <= max(now, hits[-1]) - 2 * WINDOW:
                hits.pop(0)
            if _busiest(hits, now) < self.rate_limit:
                bisect.insort(hits, now)
                return None
            violations = self._violations.setdefault(key, deque())
            while violations and violations[0] <= now - VIOLATION_WINDOW:
                violations.popleft()
            violations.append(now)
            if self.block_after and len(violations) >= self.block_after:
                self._blocked_until[key] = now + self.block_seconds
                hits.clear()
                violations.clear()
                return 403
            return 429

    def blocked(self) -> list[str]:
        """Keys blocked right now."""
        now = time.monotonic()
        with self._lock:
            return [k for k, until in self._blocked_until.items() if until > now]


def _busiest(hits: list[float], at: float) -> int:
    """The most of the sorted ``hits`` in any one-second window that holds ``at``:
    slid left or right, such a window meets a hit (or ``at``) at one of its ends."""
    lefts = [
        at,
        *hits[bisect.bisect_right(hits, at - WINDOW) : bisect.bisect_right(hits, at)],
    ]
    rights = [
        at,
        *hits[bisect.bisect_left(hits, at) : bisect.bisect_left(hits, at + WINDOW)],
    ]
    return max(
        *(
            bisect.bisect_left(hits, s + WINDOW) - bisect.bisect_left(hits, s)
            for s in lefts
        ),
        *(
            bisect.bisect_right(hits, e) - bisect.bisect_right(hits, e - WINDOW)
            for e in rights
        ),
    )
