"""State shared by every process of a site: flags, locks, counters, the periodic
tick; in Redis, and in the database when there is no Redis."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from rq.registry import ScheduledJobRegistry

from flask_amocrm import shared
from flask_amocrm.errors import LockTimeoutError
from flask_amocrm.state import get_state
from flask_amocrm.testing import deliver_pending
from flask_amocrm.worker import markers
from flask_amocrm.worker.queue import get_queue
from flask_amocrm.worker.schedule import ensure_tick
from tests.helpers.e2e import stored_events


@pytest.fixture(params=["redis", "database"])
def shared_app(request: pytest.FixtureRequest, make_app: Any) -> Flask:
    """An app whose shared state lives in Redis, or in its database."""
    if request.param == "redis":
        request.getfixturevalue("redis_conn")
        return make_app(AMOCRM_REDIS_URL=request.getfixturevalue("redis_url"))  # type: ignore[no-any-return]
    return make_app()  # type: ignore[no-any-return]


def test_flags_locks_and_counters(shared_app: Flask) -> None:
    with shared_app.app_context():
        state = get_state()
        assert shared.set_once(state, "outage", "down", seconds=60)
        assert not shared.set_once(state, "outage", "again", seconds=60)
        assert shared.get(state, "outage") == "down"
        assert shared.clear(state, "outage") == "down"
        assert shared.get(state, "outage") is None

        assert [shared.incr(state, "turn") for _ in range(3)] == [1, 2, 3]
        assert shared.peek(state, "turn") == 3

        held = shared.acquire(state, "person", ttl=30, wait=0.1)
        assert held is not None
        assert shared.acquire(state, "person", ttl=30, wait=0.2) is None
        with pytest.raises(LockTimeoutError, match="'person'"):
            with shared.lock(state, "person", ttl=30, wait=0.2):
                pass
        shared.release(state, held)
        with shared.lock(state, "person", ttl=30, wait=0.2):
            assert shared.acquire(state, "person", ttl=30, wait=0.1) is None


def test_keys_carry_the_account_and_the_queue(make_app: Any) -> None:
    first, second = make_app(), make_app(AMOCRM_QUEUE="other_site")
    with first.app_context():
        one = shared.key(get_state(), "outage")
    with second.app_context():
        two = shared.key(get_state(), "outage")
    assert one != two
    assert one.endswith(":amocrm:outage") and two.endswith(":other_site:outage")
    with first.app_context():
        assert len(shared.key(get_state(), "x" * 500)) <= shared.KEY_LIMIT


def test_two_sites_on_one_redis_each_get_their_tick(
    make_app: Any, redis_conn: Any, redis_url: str
) -> None:
    sites = [
        make_app(AMOCRM_DELIVERY="rq", AMOCRM_REDIS_URL=redis_url, AMOCRM_QUEUE=name)
        for name in ("shop", "blog")
    ]
    for app in sites:
        with app.app_context():
            ensure_tick(get_state())
            ensure_tick(get_state())  # idempotent
    for app in sites:
        with app.app_context():
            queue = get_queue(get_state())
            ticks = ScheduledJobRegistry(queue=queue).get_job_ids()
            assert len(ticks) == 1, ticks
            assert ticks[0].startswith(f"{queue.name}-tick-")


def test_a_marker_field_lock_that_cannot_be_had_retries_the_event(
    make_app: Any,
    sandbox: Any,
    redis_conn: Any,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(markers, "FIELD_LOCK_WAIT", 0.3)
    app = make_app(AMOCRM_REDIS_URL=redis_url)
    with app.app_context():
        # Another worker is creating the field and holds the lock.
        other = shared.acquire(
            get_state(), "marker-field", ttl=60, wait=0.1, account=True
        )
        assert other is not None
        app.extensions["amocrm"].extension.submit(
            "callback", {"name": "Ann", "phone": "+79120001122"}
        )
    assert deliver_pending(app) == {"spooled": 0, "retrying": 1}
    [event] = stored_events(app)
    assert "lock 'marker-field'" in (event.last_error or "")
    assert sandbox.leads() == []
    with app.app_context():
        shared.release(get_state(), other)
        with get_state().session() as session:
            session.get(type(event), event.id).next_attempt_at = None  # due now
            session.commit()
    assert deliver_pending(app) == {"spooled": 0, "delivered": 1}
    assert [lead["name"] for lead in sandbox.leads()] == ["Callback: Ann"]


def test_what_belongs_to_the_account_is_shared_by_every_site_on_it(
    make_app: Any, redis_conn: Any, redis_url: str
) -> None:
    from flask_amocrm.errors import AccountBlockedError
    from flask_amocrm.worker.outage import note_failure, paused

    shop = make_app(AMOCRM_REDIS_URL=redis_url, AMOCRM_QUEUE="shop")
    blog = make_app(AMOCRM_REDIS_URL=redis_url, AMOCRM_QUEUE="blog")
    with shop.app_context():
        person = shared.acquire(get_state(), "dup:ann", ttl=30, wait=0.1, account=True)
        site = shared.acquire(get_state(), "tick", ttl=30, wait=0.1)
        note_failure(get_state(), AccountBlockedError("HTTP 403", status=403))
    assert person is not None and site is not None
    with blog.app_context():
        # The same person is being created by the shop: the blog waits for it.
        assert (
            shared.acquire(get_state(), "dup:ann", ttl=30, wait=0.2, account=True)
            is None
        )
        # A site's own lock is its own.
        assert shared.acquire(get_state(), "tick", ttl=30, wait=0.1) is not None
        # amoCRM blocked the account: the blog pauses too.
        assert paused(get_state()) is not None


def test_redis_failing_mid_call_falls_back_to_the_database(make_app: Any) -> None:
    import redis

    app = make_app(AMOCRM_REDIS_URL="redis://127.0.0.1:9/0")  # nothing listens
    dead = redis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)
    with app.app_context():
        state = get_state()
        # Redis answered the last health check, then died.
        state.live_redis = lambda: dead  # type: ignore[method-assign]
        assert shared.set_once(state, "outage", "down")
        assert shared.incr(state, "turn") == 1
        held = shared.acquire(state, "person", ttl=30, wait=0.1)
        assert held is not None
        del state.live_redis  # the health check now says it is down
        assert shared.get(state, "outage") == "down"
        assert not shared.set_once(state, "outage", "again")
        assert shared.acquire(state, "person", ttl=30, wait=0.1) is None
        shared.release(state, held)
