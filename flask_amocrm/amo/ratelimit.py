"""One request budget per amoCRM account, shared by every process on every machine.

amoCRM allows 7 requests per second per integration and answers 429, then blocks the
account with 403, when a client keeps going over. RQ forks a work horse per job, so
the budget cannot live in a process (nor can RQ's own limits, which cap concurrency,
not requests per second): with Redis it is a
key ``amocrm:rl:<host>`` updated by a small Lua script; without Redis (one process
delivering inline or from cron) it is a thread-safe object in the process.

The algorithm is GCRA without a burst, used as a scheduler: every caller reserves the
next free slot (the "theoretical arrival time") and sleeps until it, so slots are at
least ``1 / rate`` seconds apart. Any window of one second then holds at most
``ceil(rate)`` requests. The rate is ``HEADROOM`` times the configured limit, which
leaves room for network jitter between our clock and amoCRM's gateway. The slot clock is
Redis's own ``TIME``, so the clocks of the machines never matter.

After a 429 the limiter slows everybody down: the next slot moves back by the back-off
delay and the spacing doubles (up to ``MAX_SLOWDOWN`` times) for ``SLOWDOWN_SECONDS``.
A caller that reserved its slot before the 429 notices it when it wakes up and takes a
new slot. That is what keeps a 429 storm from turning into a 403 block.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("flask_amocrm.amo")

#: Fraction of ``AMOCRM_RATE_LIMIT`` actually used (7 → 5.95 requests per second).
HEADROOM = 0.85
#: How long the spacing stays widened after a 429.
SLOWDOWN_SECONDS = 60.0
#: The most the spacing is widened after repeated 429s.
MAX_SLOWDOWN = 8.0

# KEYS[1] slot key, KEYS[2] slowdown key, KEYS[3] penalty counter; ARGV[1] interval
# in seconds. Returns the seconds to wait (a string: Lua numbers would be truncated to
# integers) and the penalty counter, to notice a 429 that came while we slept.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1]) * tonumber(redis.call('GET', KEYS[2]) or '1')
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local nxt = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', nxt),
           'PX', math.ceil((nxt - now) * 1000) + 1000)
return {string.format('%.6f', tat - now), redis.call('GET', KEYS[3]) or '0'}
"""

# KEYS as above; ARGV[1] pause in seconds, ARGV[2] max slowdown, ARGV[3] its lifetime.
_PENALIZE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local pause = now + tonumber(ARGV[1])
if tat < pause then tat = pause end
redis.call('SET', KEYS[1], string.format('%.6f', tat),
           'PX', math.ceil((tat - now) * 1000) + 1000)
local factor = tonumber(redis.call('GET', KEYS[2]) or '1') * 2
if factor > tonumber(ARGV[2]) then factor = tonumber(ARGV[2]) end
redis.call('SET', KEYS[2], tostring(factor), 'PX', math.ceil(tonumber(ARGV[3]) * 1000))
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], math.ceil(tonumber(ARGV[3]) * 1000))
return tostring(factor)
"""


class RateLimiter(Protocol):
    """What the client needs from a limiter."""

    def acquire(self) -> float:
        """Wait for this request's slot; return the seconds waited."""

    def penalize(self, pause: float) -> None:
        """amoCRM said 429: hold everybody back ``pause`` seconds and slow down."""


class LocalRateLimiter:
    """The budget of one process (no Redis): thread-safe, not shared."""

    def __init__(self, rate: float, *, headroom: float = HEADROOM) -> None:
        self.interval = 1.0 / (rate * headroom)
        self._lock = threading.Lock()
        self._tat = 0.0
        self._factor = 1.0
        self._slow_until = 0.0
        self._penalties = 0

    def acquire(self) -> float:
        """Reserve the next slot and sleep until it."""
        waited = 0.0
        while True:
            with self._lock:
                now = time.monotonic()
                if now >= self._slow_until:
                    self._factor = 1.0
                slot = max(self._tat, now)
                self._tat = slot + self.interval * self._factor
                penalties = self._penalties
            wait = slot - now
            if wait <= 0:
                return waited
            time.sleep(wait)
            waited += wait
            if self._penalties == penalties:
                return waited

    def penalize(self, pause: float) -> None:
        """Move the next slot back and widen the spacing for a while."""
        with self._lock:
            now = time.monotonic()
            self._tat = max(self._tat, now + pause)
            self._factor = min(self._factor * 2, MAX_SLOWDOWN)
            self._slow_until = now + SLOWDOWN_SECONDS
            self._penalties += 1


class RedisRateLimiter:
    """The budget shared through Redis by every process using the same key."""

    def __init__(
        self, redis: Redis, key: str, rate: float, *, headroom: float = HEADROOM
    ) -> None:
        self.redis = redis
        self.key = key
        self.slow_key = f"{key}:slow"
        self.penalty_key = f"{key}:penalties"
        self.interval = 1.0 / (rate * headroom)
        self._acquire = redis.register_script(_ACQUIRE)
        self._penalize = redis.register_script(_PENALIZE)
        self._fallback: LocalRateLimiter | None = None

    def acquire(self) -> float:
        """Reserve the next shared slot (one EVALSHA) and sleep until it."""
        from redis.exceptions import RedisError

        keys = [self.key, self.slow_key, self.penalty_key]
        waited = 0.0
        try:
            while True:
                wait_text, penalties = self._acquire(
                    keys=keys, args=[repr(self.interval)]
                )
                wait = float(wait_text)
                if wait <= 0:
                    return waited
                time.sleep(wait)
                waited += wait
                if _text(self.redis.get(self.penalty_key)) == _text(penalties):
                    return waited
        except RedisError as exc:
            # Without Redis the RQ side is down anyway; an inline delivery still
            # deserves a limit, so keep one in this process until Redis is back.
            log.warning(
                "Rate limiter: Redis failed (%s); limiting in-process",
                type(exc).__name__,
            )
            if self._fallback is None:
                self._fallback = LocalRateLimiter(1.0 / self.interval, headroom=1.0)
            return waited + self._fallback.acquire()

    def penalize(self, pause: float) -> None:
        """Move the shared next slot back and widen the shared spacing."""
        from redis.exceptions import RedisError

        try:
            self._penalize(
                keys=[self.key, self.slow_key, self.penalty_key],
                args=[repr(pause), repr(MAX_SLOWDOWN), repr(SLOWDOWN_SECONDS)],
            )
        except RedisError:
            if self._fallback is not None:
                self._fallback.penalize(pause)


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return value or "0"
