"""The admin's landing page: amoCRM reachable or not since when, the token, the 403
pause, the request budget, the queue and its workers, the oldest due event, and the
charts counted by the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import re
from datetime import UTC, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
from flask import Flask
from sqlalchemy import func, select

from flask_amocrm.i18n import format_datetime
from flask_amocrm.models import ApiLog, Event, utcnow
from flask_amocrm.state import get_state
from flask_amocrm.testing import deliver_pending
from tests.helpers.admin import PREFIX, jwt_expiry
from tests.helpers.browser import shoot
from tests.helpers.xss import CORPUS, assert_inert, watch

ADMIN = {"AMOCRM_ADMIN_AUTH": lambda: True}


def _submit(app: Flask, n: int, **data: Any) -> list[int]:
    amocrm = app.extensions["amocrm"].extension
    ids = []
    with app.app_context():
        for i in range(n):
            event = amocrm.submit(
                "callback", {"name": f"Visitor {i}", "phone": f"+7912{i:07d}", **data}
            )
            assert event is not None
            ids.append(event.id)
    return ids


def _make_due(app: Flask) -> None:
    with app.app_context(), get_state(app).session() as session:
        for event in session.query(Event).filter(Event.status == "retrying"):
            event.next_attempt_at = utcnow() - timedelta(minutes=3)
        session.commit()


def _tips(html: str) -> list[str]:
    """The tooltips of the charts' bars and dots: ``label · series: value``."""
    return [
        t.replace("&middot;", "·") for t in re.findall(r"<title>([^<]*)</title>", html)
    ]


# -- the charts: counted by the database -----------------------------------------------


def test_charts_count_by_hour_and_day_in_the_sites_timezone(
    make_app: Any, database_uri: str
) -> None:
    app = make_app(
        AMOCRM_DATABASE_URI=database_uri, AMOCRM_TIMEZONE="Asia/Yekaterinburg", **ADMIN
    )
    now = utcnow()
    # well inside an hour three hours ago, so no bucket edge is near
    base = now.replace(minute=10, second=0, microsecond=0) - timedelta(hours=3)
    old = base - timedelta(days=2)
    with get_state(app).session() as session:
        for delay in range(1, 11):  # ten delivered, 1..10 seconds after capture
            session.add(
                Event(
                    kind="form",
                    source="callback",
                    status="delivered",
                    created_at=base,
                    delivered_at=base + timedelta(seconds=delay),
                )
            )
        for _ in range(2):
            session.add(
                Event(kind="form", source="callback", status="failed", created_at=base)
            )
        session.add(
            Event(
                kind="form",
                source="callback",
                status="delivered",
                created_at=old,
                delivered_at=old + timedelta(seconds=30),
            )
        )
        for i in range(25):  # 25 requests for the ten delivered in that hour
            session.add(
                ApiLog(
                    method="POST",
                    path="/api/v4/leads/complex",
                    status=200,
                    created_at=base + timedelta(seconds=i),
                )
            )
        session.commit()
    client = app.test_client()
    hour = f"{(base.replace(tzinfo=UTC).astimezone(ZoneInfo('Asia/Yekaterinburg'))):%H}"
    tips = _tips(client.get(f"{PREFIX}/").get_data(as_text=True))
    assert f"{hour} · delivered: 10" in tips
    assert f"{hour} · failed: 2" in tips
    # nearest rank: the 5th and the 10th of ten delays
    assert f"{hour} · p50: 5" in tips
    assert f"{hour} · p95: 10" in tips
    assert f"{hour} · calls: 2.5" in tips
    # the event two days ago is outside 24 hours ...
    assert sum(int(t.rsplit(": ", 1)[1]) for t in tips if "delivered:" in t) == 10
    # ... and in the 7-day chart, on its own day
    tips = _tips(client.get(f"{PREFIX}/?span=7d").get_data(as_text=True))
    local = old.replace(tzinfo=UTC).astimezone(ZoneInfo("Asia/Yekaterinburg"))
    assert f"{local:%d.%m} · delivered: 1" in tips
    assert f"{local:%d.%m} · p50: 30" in tips
    # an unknown span is the default one, not an error
    assert client.get(f"{PREFIX}/?span=x").status_code == 200


# -- the state of delivery ----------------------------------------------------------


def test_the_long_lived_tokens_expiry_and_the_request_budget(
    make_app: Any, sandbox: Any
) -> None:
    token = sandbox.long_lived_token(days=30)
    app = make_app(AMOCRM_TOKEN=token, AMOCRM_RATE_LIMIT=5, **ADMIN)
    _submit(app, 2)
    assert deliver_pending(app)["delivered"] == 2
    with get_state(app).session() as session:
        sent = session.scalar(select(func.count()).select_from(ApiLog))
    assert sent
    html = app.test_client().get(f"{PREFIX}/").get_data(as_text=True)
    assert "long-lived token" in html
    assert format_datetime(jwt_expiry(token), "UTC") in html
    assert f"{sent} of 300" in html
    assert "nothing is due" in html
    app = make_app(AMOCRM_LOG_REQUESTS=False, **ADMIN)
    html = app.test_client().get(f"{PREFIX}/").get_data(as_text=True)
    assert "AMOCRM_LOG_REQUESTS is off" in html


def test_queue_depth_and_the_workers_in_rqs_registry(
    make_app: Any, redis_conn: Any, redis_url: str
) -> None:
    from rq import Worker

    from flask_amocrm.worker.queue import get_queue

    app = make_app(AMOCRM_DELIVERY="rq", AMOCRM_REDIS_URL=redis_url, **ADMIN)
    client = app.test_client()
    html = client.get(f"{PREFIX}/").get_data(as_text=True)
    assert "events wait until" in html  # no worker yet
    _submit(app, 3)
    with app.app_context():
        worker = Worker(
            [get_queue(get_state())], connection=redis_conn, name="<b>w1</b>"
        )
    worker.register_birth()
    worker.set_state("idle")
    worker.heartbeat()
    try:
        html = client.get(f"{PREFIX}/").get_data(as_text=True)
    finally:
        worker.register_death()
    assert re.search(r"Jobs in the queue</dt><dd>3<", html)
    assert "&lt;b&gt;w1&lt;/b&gt;" in html and "<b>w1" not in html
    assert "<td>idle</td>" in html


def test_what_is_switched_off_is_said_and_its_events_are_not_due(
    make_app: Any,
) -> None:
    app = make_app(AMOCRM_ENABLED=False, **ADMIN)
    _submit(app, 2)
    html = app.test_client().get(f"{PREFIX}/").get_data(as_text=True)
    assert "Switched off: AMOCRM_ENABLED = False. 2 events wait" in html
    assert "nothing is due" in html
    app = make_app(**ADMIN)
    _submit(app, 1)
    html = app.test_client().get(f"{PREFIX}/").get_data(as_text=True)
    assert "Switched off" not in html and "waiting 0 s" in html


def test_a_403_block_shows_the_pause(make_app: Any, sandbox: Any) -> None:
    app = make_app(**ADMIN)
    client = app.test_client()
    assert 'am-s-failed">paused' not in client.get(f"{PREFIX}/").get_data(as_text=True)
    _submit(app, 2)
    sandbox.faults(status=403, count=1, method="POST")
    assert deliver_pending(app)["retrying"] == 2
    html = client.get(f"{PREFIX}/").get_data(as_text=True)
    assert 'am-s-failed">paused' in html
    assert "AccountBlockedError" in html and "unreachable" in html


def test_redis_that_does_not_answer_is_said_not_a_500(make_app: Any) -> None:
    app = make_app(
        AMOCRM_DELIVERY="rq", AMOCRM_REDIS_URL="redis://127.0.0.1:1/0", **ADMIN
    )
    answer = app.test_client().get(f"{PREFIX}/")
    assert answer.status_code == 200
    assert "Redis does not answer" in answer.get_data(as_text=True)


def test_an_oauth_token_shows_its_expiry_refresh_and_revocation(
    make_app: Any, sandbox: Any
) -> None:
    from flask_amocrm.amo.connect import exchange_code
    from flask_amocrm.models import Token
    from tests.helpers.client import OAUTH

    app = make_app(**OAUTH, **ADMIN)
    client = app.test_client()
    assert "not connected" in client.get(f"{PREFIX}/").get_data(as_text=True)
    with app.app_context():
        row = exchange_code(get_state(), sandbox.auth_code())
    html = client.get(f"{PREFIX}/").get_data(as_text=True)
    assert "OAuth" in html and "in use" in html
    assert format_datetime(row.expires_at, "UTC") in html
    assert row.refreshed_at is not None
    assert format_datetime(row.refreshed_at, "UTC") in html
    with get_state(app).session() as session:
        session.get(Token, row.id).revoked_at = utcnow()  # type: ignore[union-attr]
        session.commit()
    assert "revoked" in client.get(f"{PREFIX}/").get_data(as_text=True)


# -- in a real browser: an outage and after -----------------------------------------


def _outage(app: Flask, sandbox: Any) -> None:
    """amoCRM answers 503 for a minute and events fail to be delivered: the outage
    state is set as a worker sets it."""
    answer = requests.post(
        f"{sandbox.url}/_sandbox/faults", json={"status": 503, "seconds": 60}, timeout=5
    )
    assert answer.status_code == 200
    _submit(app, 3)
    assert deliver_pending(app).get("retrying") == 3
    _make_due(app)


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_health_during_an_outage_and_after_in_a_browser(
    make_app: Any, sandbox: Any, serve: Any, browser: Any, lang: str
) -> None:
    app = make_app(AMOCRM_RATE_LIMIT=50, AMOCRM_TIMEZONE="Europe/Moscow", **ADMIN)
    _submit(app, 4)
    assert deliver_pending(app)["delivered"] == 4
    _outage(app, sandbox)
    base = serve(app)
    context = browser.new_context(
        locale="ru-RU" if lang == "ru" else "en-US",
        viewport={"width": 1280, "height": 900},
    )
    page = context.new_page()
    try:
        page.goto(f"{base}{PREFIX}/")
        reach = page.locator("#am-reach").inner_text()
        if lang == "en":
            assert "unreachable" in reach and "since" in reach
            assert "waiting 3 min" in page.locator("#am-delivery").inner_text()
        else:
            assert "недоступна" in reach and "с " in reach
            assert "ждёт 3 мин" in page.locator("#am-delivery").inner_text()
        assert "ServerError" in reach
        assert page.locator(".am-chart svg").count() == 3
        shoot(page, f"health-outage-{lang}")
        page.set_viewport_size({"width": 375, "height": 800})
        shoot(page, f"health-outage-{lang}-375")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"the page is {width}px wide on a 375px phone"
        # amoCRM answers again: the next delivery ends the outage
        requests.post(f"{sandbox.url}/_sandbox/faults", json={"clear": True}, timeout=5)
        assert deliver_pending(app)["delivered"] == 3
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(f"{base}{PREFIX}/?span=24h")
        reach = page.locator("#am-reach").inner_text()
        assert ("reachable" if lang == "en" else "доступна") in reach
        assert "unreachable" not in reach and "недоступна" not in reach
        assert (
            page.locator("#am-delivery")
            .inner_text()
            .count("nothing is due" if lang == "en" else "ничего не ждёт")
        )
        shoot(page, f"health-after-{lang}")
        page.click("text=7 дней" if lang == "ru" else "text=7 days")
        assert "span=7d" in page.url
        shoot(page, f"health-7d-{lang}")
    finally:
        context.close()


def test_hostile_text_on_the_health_page_is_shown_as_text(
    make_app: Any, sandbox: Any, serve: Any, page: Any
) -> None:
    app = make_app(AMOCRM_SITE_NAME=CORPUS[0], **ADMIN)
    # an outage whose reason carries the corpus, as a worker stores it
    from flask_amocrm import shared

    with app.app_context():
        shared.set_once(
            get_state(),
            "outage",
            json.dumps({"since": 0, "reason": " ".join(CORPUS)}),
        )
    with get_state(app).session() as session:
        for value in CORPUS:
            session.add(ApiLog(method="GET", path=f"/api/v4/{value}", status=500))
        session.commit()
    opened = watch(page)
    page.goto(f"{serve(app)}{PREFIX}/")
    assert_inert(page, opened)
    assert CORPUS[-1] in page.locator("#am-reach").inner_text()
    assert CORPUS[0] in page.locator(".am-brand").inner_text()
