"""One request budget per amoCRM account, shared by every process on every machine.

amoCRM allows 7 requests per second per integration and answers 429, then blocks the
account with 403, when a client keeps going over. RQ forks a work horse per job, so
the budget cannot live in a process (nor can RQ's own limits, which cap concurrency,
not requests per second): with Redis it is kept in
keys ``amocrm:rl:<host>:*`` updated by a small Lua script; without Redis (one process
delivering inline or from cron) it is a thread-safe object in the process.

The algorithm is amoCRM's own: at most ``rate`` requests in any window of one second
(a moving window, as its gateway counts them), kept as the times of the last
``rate`` requests granted. A request is granted the moment it may go, and the
caller sends it at once, so nothing reserved in advance can arrive late and crowd
the next one. The window is :data:`MARGIN` longer than a second, room for the
network's jitter between our clock and amoCRM's gateway; and two requests are never
closer than half the even spacing, so a gateway that counts more strictly than a
moving window (or a limit lower than configured) sees a steady stream, not bursts
of seven. The clock is Redis's own ``TIME``, so the clocks of the machines never
matter. Callers waiting for a grant sleep until the earliest moment one could come
and ask again.

While Redis is down each process keeps to :data:`FALLBACK_RATE` on its own, after
waiting out the window Redis kept. Every request the fallbacks grant is sent before
Redis answers again, and Redis comes back without them (empty, after a restart):
so the first process that reaches it again holds everybody back one window before
anything more is granted.

After a 429 the limiter holds everybody back: nothing is granted for the back-off
delay, and the window and the spacing are widened (doubling, up to ``MAX_SLOWDOWN``
times) for ``SLOWDOWN_SECONDS``. That is what keeps a 429 storm from turning into a
403 block.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("flask_amocrm.amo")

#: Seconds added to amoCRM's one-second window (7 requests in 1.1 s: 6.36 a second):
#: room for the time between our grant and the gateway's count (the network, a
#: busy machine), which can crowd two windows' requests into one.
MARGIN = 0.1
#: A request that leaves this long after its grant (a busy machine: the thread waited
#: for a CPU) is counted at the moment it left instead, so the requests granted after
#: it keep a window's distance from the moment amoCRM saw it.
LATE = 0.01
#: Two requests are never closer than this share of the even spacing.
MIN_SPACING = 0.5
#: Requests a second each process keeps to while Redis is down (the budget cannot be
#: shared then): seven processes still stay within amoCRM's 7.
FALLBACK_RATE = 1.0
#: How long the window stays widened after a 429.
SLOWDOWN_SECONDS = 60.0
#: The most the window is widened after repeated 429s.
MAX_SLOWDOWN = 8.0


def window_of(rate: float) -> tuple[int, float, float]:
    """How many requests a window holds, the window and the least spacing (seconds)
    for ``rate`` requests a second: 7 → 7 requests in 1.1 s, at least 79 ms apart;
    0.5 → 1 request in 2.1 s."""
    count = max(1, math.floor(rate))
    window = count / rate + MARGIN
    return count, window, window / count * MIN_SPACING


# KEYS[1] the times granted, KEYS[2] slowdown factor, KEYS[3] hold-until;
# ARGV[1] count, ARGV[2] window, ARGV[3] spacing (seconds). Returns the seconds to
# wait before asking again, or '=' and the time granted (strings: Lua numbers would
# be truncated to integers).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local hold = tonumber(redis.call('GET', KEYS[3]) or '0')
if hold > now then return string.format('%.6f', hold - now) end
local factor = tonumber(redis.call('GET', KEYS[2]) or '1')
local count = tonumber(ARGV[1])
local window = tonumber(ARGV[2]) * factor
local last = tonumber(redis.call('LINDEX', KEYS[1], -1) or '0')
local ready = last + tonumber(ARGV[3]) * factor
if redis.call('LLEN', KEYS[1]) >= count then
  local oldest = tonumber(redis.call('LINDEX', KEYS[1], -count)) + window
  if oldest > ready then ready = oldest end
end
if ready > now then return string.format('%.6f', ready - now) end
local stamp = string.format('%.6f', now)
redis.call('RPUSH', KEYS[1], stamp)
redis.call('LTRIM', KEYS[1], -count, -1)
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 1000)
return '=' .. stamp
"""

# KEYS[1] the times granted; ARGV[1] a time granted, ARGV[2] the time its request
# left, ARGV[3] the list's lifetime (ms). The list stays in order.
_LATE = """
local times = redis.call('LRANGE', KEYS[1], 0, -1)
for i, v in ipairs(times) do
  if v == ARGV[1] then
    times[i] = ARGV[2]
    table.sort(times, function(a, b) return tonumber(a) < tonumber(b) end)
    redis.call('DEL', KEYS[1])
    redis.call('RPUSH', KEYS[1], unpack(times))
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return 1
  end
end
return 0
"""

# KEYS as above; ARGV[1] pause in seconds. Nothing is granted for the pause (a hold
# already longer stays).
_HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local hold = tonumber(redis.call('GET', KEYS[3]) or '0')
local pause = now + tonumber(ARGV[1])
if hold < pause then
  redis.call('SET', KEYS[3], string.format('%.6f', pause),
             'PX', math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
end
return '0'
"""

# KEYS as above; ARGV[1] pause in seconds, ARGV[2] max slowdown, ARGV[3] its lifetime.
_PENALIZE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local hold = tonumber(redis.call('GET', KEYS[3]) or '0')
local pause = now + tonumber(ARGV[1])
if hold < pause then hold = pause end
redis.call('SET', KEYS[3], string.format('%.6f', hold),
           'PX', math.ceil((hold - now) * 1000) + 1000)
local factor = tonumber(redis.call('GET', KEYS[2]) or '1') * 2
if factor > tonumber(ARGV[2]) then factor = tonumber(ARGV[2]) end
redis.call('SET', KEYS[2], tostring(factor), 'PX', math.ceil(tonumber(ARGV[3]) * 1000))
return tostring(factor)
"""


class RateLimiter(Protocol):
    """What the client needs from a limiter."""

    def acquire(self) -> float:
        """Wait for this request's slot; return the seconds waited."""

    def sent(self) -> None:
        """The request this thread was granted last leaves now."""

    def penalize(self, pause: float) -> None:
        """amoCRM said 429: hold everybody back ``pause`` seconds and slow down."""


class LocalRateLimiter:
    """The budget of one process (no Redis): thread-safe, not shared."""

    def __init__(self, rate: float) -> None:
        self.count, self.window, self.spacing = window_of(rate)
        self._lock = threading.Lock()
        self._granted: deque[float] = deque(maxlen=self.count)
        self._factor = 1.0
        self._slow_until = 0.0
        self._hold = 0.0
        self._mine = threading.local()

    def acquire(self) -> float:
        """Wait until a request may go; the seconds waited."""
        waited = 0.0
        while (wait := self.try_acquire()) > 0:
            time.sleep(wait)
            waited += wait
        return waited

    def try_acquire(self) -> float:
        """0 when a request may go now (it is counted), else the seconds until one
        could."""
        with self._lock:
            now = time.monotonic()
            wait = self._wait(now)
            if wait <= 0:
                self._granted.append(now)
                self._mine.granted = now
                return 0.0
            return wait

    def sent(self) -> None:
        """Count this thread's last grant when its request left, if that was late."""
        granted = getattr(self._mine, "granted", None)
        self._mine.granted = None
        if granted is None:
            return
        now = time.monotonic()
        if now - granted < LATE:
            return
        with self._lock:
            if granted in self._granted:
                times = sorted(now if t == granted else t for t in self._granted)
                self._granted.clear()
                self._granted.extend(times)

    def _wait(self, now: float) -> float:
        if now >= self._slow_until:
            self._factor = 1.0
        ready = self._hold
        if self._granted:
            ready = max(ready, self._granted[-1] + self.spacing * self._factor)
            if len(self._granted) >= self.count:
                ready = max(ready, self._granted[0] + self.window * self._factor)
        return ready - now

    def hold(self, pause: float) -> None:
        """Grant nothing for ``pause`` seconds (the window is not widened)."""
        with self._lock:
            self._hold = max(self._hold, time.monotonic() + pause)

    def penalize(self, pause: float) -> None:
        """Hold every request back ``pause`` seconds and widen the window a while."""
        with self._lock:
            now = time.monotonic()
            self._hold = max(self._hold, now + pause)
            self._factor = min(self._factor * 2, MAX_SLOWDOWN)
            self._slow_until = now + SLOWDOWN_SECONDS


class RedisRateLimiter:
    """The budget shared through Redis by every process using the same key."""

    def __init__(self, redis: Redis, key: str, rate: float) -> None:
        self.redis = redis
        self.rate = rate
        self.count, self.window, self.spacing = window_of(rate)
        # ``<key>:granted`` is a list (the times granted); the ``<key>`` of earlier
        # versions held a string, and both may run side by side while upgrading.
        self.keys = [f"{key}:granted", f"{key}:slow", f"{key}:hold"]
        self._acquire = redis.register_script(_ACQUIRE)
        self._hold = redis.register_script(_HOLD)
        self._late = redis.register_script(_LATE)
        self._mine = threading.local()
        self._penalize = redis.register_script(_PENALIZE)
        self._fallback: LocalRateLimiter | None = None
        self._lock = threading.Lock()
        #: The fallback granted requests Redis does not know of.
        self._unshared = False

    def acquire(self) -> float:
        """Wait until a request may go (one EVALSHA a try); the seconds waited."""
        from redis.exceptions import RedisError

        args = [str(self.count), repr(self.window), repr(self.spacing)]
        waited = 0.0
        while True:
            try:
                if self._unshared:
                    # Back from the fallback. What the fallbacks (this process's
                    # and the others') granted was sent before Redis answered
                    # again, and is still in amoCRM's window: one window from now
                    # covers it all.
                    self._hold(keys=self.keys, args=[repr(self.window)])
                    self._unshared = False
                # Asked at this moment: Redis granted at it or after, and the
                # thread may wait for a CPU before it reads the answer.
                asked = time.monotonic()
                answer = self._acquire(keys=self.keys, args=args)
                if isinstance(answer, bytes):
                    answer = answer.decode()
                if answer.startswith("="):
                    self._mine.granted = (answer[1:], asked)
                    return waited
                wait = float(answer)
            except RedisError as exc:
                self._mine.granted = None
                wait = self._alone(exc)
            if wait <= 0:
                return waited
            time.sleep(wait)
            waited += wait

    def _alone(self, exc: Exception) -> float:
        """Redis failed: the budget cannot be shared, so this process keeps to a
        share small enough that several of them stay within amoCRM's limit (a batch
        in hand goes on; the RQ side waits for Redis). 0 when granted, else the
        seconds to wait before asking (Redis first) again."""
        with self._lock:
            if self._fallback is None or not self._unshared:
                log.warning(
                    "Rate limiter: Redis failed (%s); limiting in-process to %s a"
                    " second",
                    type(exc).__name__,
                    min(self.rate, FALLBACK_RATE),
                )
                if self._fallback is None:
                    self._fallback = LocalRateLimiter(min(self.rate, FALLBACK_RATE))
                # The window Redis kept is gone with it: let it pass before this
                # process's first request, or every process sends one at once.
                self._fallback.hold(self.window)
                self._unshared = True
            return self._fallback.try_acquire()

    def sent(self) -> None:
        """Count this thread's last grant when its request left, if that was late:
        one more round trip to Redis then, none otherwise."""
        from redis.exceptions import RedisError

        granted = getattr(self._mine, "granted", None)
        self._mine.granted = None
        if granted is None:
            if self._fallback is not None:
                self._fallback.sent()
            return
        stamp, at = granted
        late = time.monotonic() - at
        if late < LATE:
            return
        try:
            self._late(
                keys=self.keys[:1],
                args=[
                    stamp,
                    f"{float(stamp) + late:.6f}",
                    str(math.ceil(self.window * MAX_SLOWDOWN * 1000) + 1000),
                ],
            )
        except RedisError:
            pass  # the grant stays counted when it was given

    def penalize(self, pause: float) -> None:
        """Hold every process back ``pause`` seconds and widen the shared window."""
        from redis.exceptions import RedisError

        try:
            self._penalize(
                keys=self.keys,
                args=[repr(pause), repr(MAX_SLOWDOWN), repr(SLOWDOWN_SECONDS)],
            )
        except RedisError:
            if self._fallback is not None:
                self._fallback.penalize(pause)
