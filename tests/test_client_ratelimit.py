"""The shared rate limit, measured by the sandbox's own request log."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from flask_amocrm.amo import client_for
from flask_amocrm.amo.ratelimit import LocalRateLimiter, RedisRateLimiter
from flask_amocrm.state import get_state
from tests.helpers.client import (
    app_config,
    busiest_second,
    fast,
    run_children,
)


def test_four_processes_share_one_budget(
    sandbox: Any, redis14: str, tmp_path: Any
) -> None:
    config = app_config(
        sandbox,
        str(tmp_path / "events.sqlite3"),
        AMOCRM_REDIS_URL=redis14,
        AMOCRM_LOG_REQUESTS=False,
    )
    results = run_children(config, str(tmp_path / "instance"), processes=4, calls=6)
    assert all(r == ["ok"] * 6 for r in results), results
    log = [r for r in sandbox.requests() if r["path"] == "/api/v4/account"]
    assert len(log) >= 24  # ours; other parts of the app may call it too
    busiest = busiest_second(log)
    print(f"4 processes, 24 requests: at most {busiest} in any second")
    assert busiest <= 7


def test_threads_share_the_local_budget_without_redis(
    sandbox: Any, amo_app: Any
) -> None:
    app = amo_app(AMOCRM_LOG_REQUESTS=False)
    with app.app_context():
        client = client_for(get_state())
        assert isinstance(client.limiter, LocalRateLimiter)
        errors: list[Exception] = []

        def work() -> None:
            try:
                for _ in range(3):
                    client.get("/api/v4/account")
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    log = sandbox.requests()
    assert busiest_second(log) <= 7


def test_429_storm_slows_down_without_a_block(
    sandbox: Any, redis14: str, amo_app: Any
) -> None:
    # amoCRM allows less than we were told: the client must learn from the 429s
    # before the sandbox's block (5 rejections a minute) kicks in.
    sandbox.config(rate_limit=2)
    app = amo_app(AMOCRM_REDIS_URL=redis14, AMOCRM_LOG_REQUESTS=False)
    with app.app_context():
        client = fast(client_for(get_state()))
        client.rate_limit_backoff = 0.3
        errors: list[Exception] = []

        def work() -> None:
            try:
                for _ in range(2):
                    client.get("/api/v4/account")
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(3)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    statuses = [r["status"] for r in sandbox.requests()]
    print(
        f"429 storm: {statuses.count(429)} rejections, "
        f"{time.monotonic() - started:.1f} s"
    )
    assert not errors, errors
    assert 403 not in statuses
    assert statuses.count(200) == 6
    assert statuses.count(429) < 5


def test_429_gives_up_with_rate_limit_error(sandbox: Any, amo_app: Any) -> None:
    from flask_amocrm.errors import RateLimitError

    sandbox.faults(status=429, count=10)
    app = amo_app(AMOCRM_LOG_REQUESTS=False)
    with app.app_context():
        client = fast(client_for(get_state()))
        try:
            client.get("/api/v4/account")
        except RateLimitError as exc:
            assert exc.retryable and exc.status == 429
        else:  # pragma: no cover
            raise AssertionError("no RateLimitError")
    assert len(sandbox.requests()) == 1 + client.retries
    sandbox.faults(clear=True)


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "in-process"])
def test_a_request_that_left_late_is_counted_when_it_left(
    shared: bool, redis14: str
) -> None:
    """A thread granted a slot can wait for a CPU before its request leaves (a busy
    machine): amoCRM counts it when it arrives, so the seventh request after it
    must keep a window's distance from that moment, not from the grant."""
    limiter = (
        RedisRateLimiter(redis.Redis.from_url(redis14), "amocrm:rl:late", 7)
        if shared
        else LocalRateLimiter(7)
    )
    limiter.acquire()
    time.sleep(0.3)  # descheduled between the grant and the send
    left = time.monotonic()
    limiter.sent()
    for _ in range(6):
        limiter.acquire()
        limiter.sent()
    limiter.acquire()  # the eighth: a window after the first request left
    assert time.monotonic() - left >= limiter.window - 0.01


def test_a_grant_read_late_is_counted_when_its_request_left(redis14: str) -> None:
    """The thread that asked Redis for a slot may read the answer late (it waited for
    a CPU): the request is counted from when it left, not from Redis's grant."""
    limiter = RedisRateLimiter(redis.Redis.from_url(redis14), "amocrm:rl:late", 7)
    asking = limiter._acquire

    def read_late(**kwargs: Any) -> Any:
        answer = asking(**kwargs)
        time.sleep(0.3)  # granted, but the answer is read 0.3 s later
        return answer

    limiter._acquire = read_late  # type: ignore[assignment]
    limiter.acquire()
    limiter._acquire = asking  # type: ignore[method-assign]
    left = time.monotonic()
    limiter.sent()
    for _ in range(6):
        limiter.acquire()
        limiter.sent()
    limiter.acquire()
    assert time.monotonic() - left >= limiter.window - 0.01


def test_without_redis_a_process_keeps_to_its_fallback_rate() -> None:
    """Redis down: the first request waits out the window Redis kept, then the
    process keeps to one request a second (the fallback is not slowed down further
    on each new outage)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from flask_amocrm.amo.ratelimit import FALLBACK_RATE, window_of
    from tests.helpers.redis_server import free_port

    nobody = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    limiter = RedisRateLimiter(nobody, "amocrm:rl:down", 7)
    first = limiter.acquire()
    assert first == pytest.approx(limiter.window, abs=0.05)
    _, window, _ = window_of(FALLBACK_RATE)
    for _ in range(2):
        limiter._unshared = False  # as if Redis had answered in between
        limiter.sent()
        waited = limiter.acquire()
        assert waited == pytest.approx(window, abs=0.05), waited
