"""The admin's events pages: the list (filters, search, pages), one event, and the
actions (retry, retry every failed, cancel, deliver now), over the test client and
in a real browser."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import create_engine, inspect, select, text, update

from flask_amocrm import Event
from flask_amocrm.models import ApiLog
from flask_amocrm.outbox import add
from flask_amocrm.state import get_state
from flask_amocrm.testing import deliver_pending
from tests.conftest import CALLBACK_RULES
from tests.helpers.browser import SCREENSHOTS, shoot
from tests.helpers.e2e import stored_events
from tests.helpers.xss import CORPUS, assert_inert, watch

EVENTS = "/amocrm/admin/events"


def _admin(make_app: Any, **config: Any) -> Flask:
    config.setdefault("AMOCRM_ADMIN_AUTH", lambda: True)
    config.setdefault("AMOCRM_RATE_LIMIT", 50)
    return make_app(**config)


def _submit(app: Flask, data: dict[str, Any], form: str = "callback", **kw: Any) -> int:
    """Capture one form as the site would, from a page with ``query_string``."""
    with app.test_request_context(
        "/contacts", query_string=kw.get("query_string"), headers=kw.get("headers")
    ):
        event = app.extensions["amocrm"].extension.submit(form, data)
    assert event is not None
    return int(event.id)


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def _ids(html: str) -> list[int]:
    """The event ids listed on an events page, in order."""
    return [
        int(i)
        for i in re.findall(
            r'<td class="num am-head"><a href="[^"]*/events/(\d+)"', html
        )
    ]


def _event(app: Flask, event_id: int) -> Event:
    [event] = [e for e in stored_events(app) if e.id == event_id]
    return event


# -- the list --------------------------------------------------------------------


def test_search_finds_a_phone_in_any_spelling_an_email_and_a_name(
    make_app: Any, database_uri: str
) -> None:
    app = _admin(make_app, AMOCRM_DATABASE_URI=database_uri)
    ivan = _submit(
        app,
        {"name": "Иван Петров", "phone": "+7 916 123 45 67", "email": "Ivan@Mail.RU"},
    )
    anna = _submit(app, {"name": "Anna Smith", "phone": "8 (903) 000-11-22"})
    mail = _submit(
        app, {"mail": {"from": "Boss <Boss@Shop.example>", "subject": "Order"}}, "x"
    )
    client = app.test_client()

    def found(q: str) -> list[int]:
        page = client.get(EVENTS, query_string={"q": q})
        assert page.status_code == 200
        return _ids(page.get_data(as_text=True))

    assert found("8 (916) 123-45-67") == [ivan]
    assert found("+79161234567") == [ivan]
    assert found("916 123 45 67") == [ivan]
    assert found("45 67") == [ivan]  # a part of the digits
    assert found("IVAN@mail.ru") == [ivan]
    assert found("@mail.ru") == [ivan]
    assert found("иван") == [ivan]
    assert found("ПЕТР") == [ivan]  # the beginning of a word
    assert found("etrov") == []  # not the middle of one
    assert found("anna smith") == [anna]
    assert found("+7 903 000 11 22") == [anna]
    assert found("boss@shop.example") == [mail]
    assert found("nobody") == []
    assert found("") == [mail, anna, ivan]


def test_an_event_stored_before_search_existed_is_listed_not_found(
    make_app: Any,
) -> None:
    app = _admin(make_app)
    old = _submit(app, {"name": "Old Timer", "phone": "+79160000001"})
    with app.app_context(), get_state(app).session() as session:
        session.execute(update(Event).where(Event.id == old).values(search=None))
        session.commit()
    client = app.test_client()
    assert _ids(client.get(EVENTS).get_data(as_text=True)) == [old]
    assert (
        _ids(client.get(EVENTS, query_string={"q": "old"}).get_data(as_text=True)) == []
    )


def test_filters_by_status_kind_source_and_local_dates(make_app: Any) -> None:
    app = _admin(make_app, AMOCRM_TIMEZONE="Europe/Moscow")
    a = _submit(app, {"name": "A"}, "callback")
    b = _submit(app, {"name": "B"}, "order")
    with app.app_context():
        state = get_state(app)
        with state.session() as session:
            c = add(session, kind="mail", source="ORDER_NEW", data={"name": "C"})
            session.commit()
            c_id = c.id
            # a: 2026-03-01 23:30 in Moscow is 20:30 UTC the same day
            session.execute(
                update(Event)
                .where(Event.id == a)
                .values(created_at=datetime(2026, 3, 1, 20, 30), status="failed")
            )
            # b: 2026-03-02 00:30 in Moscow is 21:30 UTC on March 1st
            session.execute(
                update(Event)
                .where(Event.id == b)
                .values(created_at=datetime(2026, 3, 1, 21, 30))
            )
            session.commit()
    client = app.test_client()

    def listed(**args: str) -> list[int]:
        page = client.get(EVENTS, query_string=args)
        assert page.status_code == 200
        return _ids(page.get_data(as_text=True))

    assert listed(status="failed") == [a]
    assert listed(status="pending") == [c_id, b]
    assert listed(kind="mail") == [c_id]
    assert listed(kind="form") == [b, a]
    assert listed(source="order") == [b]
    assert listed(since="2026-03-01", until="2026-03-01") == [a]
    assert listed(since="2026-03-02", until="2026-03-02") == [b]
    assert listed(since="2026-03-02") == [c_id, b]
    assert listed(until="2026-03-01", kind="form") == [a]
    assert listed(since="garbage", status="<script>") == []  # never a 500
    page = client.get(EVENTS).get_data(as_text=True)
    # counts per status at the top, each a link that filters
    assert re.search(
        r'href="/amocrm/admin/events\?status=failed"[^>]*>.*?<b>1</b>', page
    )
    assert re.search(
        r'href="/amocrm/admin/events\?status=pending"[^>]*>.*?<b>2</b>', page
    )


def test_pages_by_keyset_newest_first(make_app: Any) -> None:
    app = _admin(make_app)
    with app.app_context(), get_state(app).session() as session:
        for n in range(120):
            add(session, kind="form", source="callback", data={"name": f"N{n}"})
        session.commit()
    client = app.test_client()
    first = client.get(EVENTS).get_data(as_text=True)
    ids = _ids(first)
    assert ids == list(range(120, 70, -1))
    assert "Newer" not in first
    older = re.search(r'href="([^"]*before=71[^"]*)"', first)
    assert older is not None
    second = client.get(older.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert _ids(second) == list(range(70, 20, -1))
    third = client.get(EVENTS, query_string={"before": 21}).get_data(as_text=True)
    assert _ids(third) == list(range(20, 0, -1))
    assert "Older" not in third
    newer = re.search(r'href="([^"]*after=20[^"]*)"', third)
    assert newer is not None
    back = client.get(newer.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert _ids(back) == list(range(70, 20, -1))
    # filters carry over to the next page
    searched = client.get(EVENTS, query_string={"q": "n1"}).get_data(as_text=True)
    assert _ids(searched)[:3] == [120, 119, 118]


# -- older tables ----------------------------------------------------------------------


def test_tables_of_an_earlier_version_get_the_search_column(
    make_app: Any, database_uri: str
) -> None:
    app = _admin(make_app, AMOCRM_DATABASE_URI=database_uri)
    first = _submit(app, {"name": "Before", "phone": "+79161112233"})
    engine = create_engine(database_uri)
    with engine.begin() as conn:  # as an earlier version created it
        conn.execute(text("DROP INDEX ix_amocrm_events_status_id"))
        conn.execute(text("ALTER TABLE amocrm_events DROP COLUMN search"))
    assert "search" not in {
        c["name"] for c in inspect(engine).get_columns("amocrm_events")
    }
    again = _admin(make_app, AMOCRM_DATABASE_URI=database_uri)
    result = again.test_cli_runner().invoke(args=["amocrm", "init-db"])
    assert result.exit_code == 0, result.output
    inspector = inspect(engine)
    assert "search" in {c["name"] for c in inspector.get_columns("amocrm_events")}
    assert "ix_amocrm_events_status_id" in {
        i["name"] for i in inspector.get_indexes("amocrm_events")
    }
    engine.dispose()
    # the old row is listed, not found; a new one is found
    second = _submit(again, {"name": "After", "phone": "+79161112233"})
    client = again.test_client()
    assert _ids(client.get(EVENTS).get_data(as_text=True)) == [second, first]
    found = client.get(EVENTS, query_string={"q": "8 916 111-22-33"})
    assert _ids(found.get_data(as_text=True)) == [second]


def test_the_first_use_adds_the_column_without_init_db(
    make_app: Any, tmp_path: Any
) -> None:
    uri = f"sqlite:///{tmp_path}/old.sqlite3"
    app = _admin(make_app, AMOCRM_DATABASE_URI=uri)
    _submit(app, {"name": "Before"})
    engine = create_engine(uri)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE amocrm_events DROP COLUMN search"))
    again = _admin(make_app, AMOCRM_DATABASE_URI=uri)
    _submit(again, {"name": "After Upgrade"})
    found = again.test_client().get(EVENTS, query_string={"q": "upgrade"})
    assert len(_ids(found.get_data(as_text=True))) == 1
    engine.dispose()


# -- one event -------------------------------------------------------------------------


def test_an_event_shows_its_data_visit_preview_progress_and_api_calls(
    make_app: Any, sandbox: Any
) -> None:
    app = _admin(make_app)
    event_id = _submit(
        app,
        {"name": "Ann Lee", "phone": "+79161234567", "email": "ann@example.com"},
        query_string={"utm_source": "yandex", "utm_campaign": "spring"},
        headers={"Referer": "https://search.example/q"},
    )
    with app.app_context():
        assert deliver_pending(app) == {"delivered": 1, "spooled": 0}
    event = _event(app, event_id)
    lead_id = event.remote["lead_id"]
    contact_id = event.remote["contact_id"]
    page = app.test_client().get(f"{EVENTS}/{event_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Ann Lee" in html and "+79161234567" in html
    assert "yandex" in html and "spring" in html  # the campaign
    assert "https://search.example/q" in html  # the referrer
    assert f'href="{sandbox.url}/leads/detail/{lead_id}"' in html
    assert f'href="{sandbox.url}/contacts/detail/{contact_id}"' in html
    # the preview: the calls the rule makes of it, bodies included
    assert "/api/v4/leads/complex" in html
    assert "Callback: Ann Lee" in html
    # every request made for it, with its answer; the token is nowhere
    with app.app_context(), get_state(app).session() as session:
        logged = list(
            session.scalars(select(ApiLog).where(ApiLog.event_id == event_id))
        )
    assert logged
    for row in logged:
        assert row.path.split("?")[0] in html
    assert str(lead_id) in html
    assert sandbox.token not in html
    assert "delivered" in html
    assert client_404(app)


def client_404(app: Flask) -> bool:
    return app.test_client().get(f"{EVENTS}/999999").status_code == 404


def test_secrets_in_stored_bodies_are_masked_on_display(
    make_app: Any, sandbox: Any
) -> None:
    app = _admin(make_app)
    event_id = _submit(app, {"name": "Ann"})
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    with app.app_context(), get_state(app).session() as session:
        session.add(
            ApiLog(
                event_id=event_id,
                method="POST",
                path="/oauth2/access_token",
                status=200,
                request_body='{"client_secret": "s3cr3t-value", "code": "x"}',
                response_body=f'{{"access_token": "{jwt}", "note": "{sandbox.token}"}}',
                error=f"Authorization: Bearer {sandbox.token}",
            )
        )
        session.commit()
    html = app.test_client().get(f"{EVENTS}/{event_id}").get_data(as_text=True)
    assert "s3cr3t-value" not in html
    assert jwt not in html
    assert sandbox.token not in html
    assert "[redacted]" in html


# -- actions ---------------------------------------------------------------------------


def test_retry_in_a_browser_is_delivered_by_a_worker(
    make_app: Any, sandbox: Any, redis_conn: Any, redis_url: str, serve: Any, page: Any
) -> None:
    from rq import SimpleWorker

    from flask_amocrm.worker.queue import get_queue

    app, ids = _office(make_app, AMOCRM_DELIVERY="rq", AMOCRM_REDIS_URL=redis_url)
    failed = _event(app, ids["failed"])
    assert failed.status == "failed" and "400" in (failed.last_error or "")
    leads_before = len(sandbox.leads())
    base = serve(app)
    page.goto(f"{base}{EVENTS}/{failed.id}")
    assert "400" in page.locator("main").inner_text()
    # it was tried alone: its calls are its own, none of the batch before it
    calls = page.locator("table.am-apicalls tbody tr")
    assert calls.count() >= 1
    assert page.locator("table.am-apicalls tr.am-for-event").count() == calls.count()
    page.click("text=Retry")
    assert "will be retried" in page.locator(".am-flash").inner_text()
    assert page.locator("h1 .am-badge").inner_text() == "retrying"
    assert _event(app, failed.id).status == "retrying"
    assert redis_conn.llen("rq:queue:amocrm") == 1
    with app.app_context():
        queue = get_queue(get_state(app), for_worker=True)
        SimpleWorker(
            [queue], connection=queue.connection, job_class=queue.job_class
        ).work(burst=True)
    delivered = _event(app, failed.id)
    assert delivered.status == "delivered"
    leads = sandbox.leads()
    assert len(leads) == leads_before + 1
    [lead] = [lead for lead in leads if lead["id"] == delivered.remote["lead_id"]]
    assert lead["name"] == "Order 1042: Ольга Смирнова"
    page.reload()
    assert page.locator("h1 .am-badge").inner_text() == "delivered"
    assert page.locator(f'a[href$="/leads/detail/{lead["id"]}"]').count() == 1


def test_retry_all_failed_in_inline_mode_delivers_after_the_response(
    make_app: Any, sandbox: Any
) -> None:
    app = _admin(make_app, AMOCRM_DELIVERY="deferred")
    ids = [
        _submit(app, {"name": f"F{n}", "phone": f"+7916000001{n}"}) for n in range(3)
    ]
    with app.app_context(), get_state(app).session() as session:
        session.execute(
            update(Event)
            .where(Event.id.in_(ids[:2]))
            .values(status="failed", last_error="x")
        )
        session.commit()
    inline = _admin(
        make_app,
        AMOCRM_DELIVERY="inline",
        AMOCRM_DATABASE_URI=app.config["AMOCRM_DATABASE_URI"],
    )
    client = inline.test_client()
    token = _csrf(client.get(EVENTS).get_data(as_text=True))
    answer = client.post(f"{EVENTS}/retry-failed", data={"csrf_token": token})
    assert answer.status_code == 302
    answer.close()  # the response went out: the delivery runs
    statuses = {e.id: e.status for e in stored_events(inline)}
    assert statuses == {ids[0]: "delivered", ids[1]: "delivered", ids[2]: "pending"}
    assert len(sandbox.leads()) == 2
    # deliver due events now: the pending one goes too
    answer = client.post(f"{EVENTS}/process", data={"csrf_token": token})
    assert answer.status_code == 302
    assert "delivered: 1" in client.get(EVENTS).get_data(as_text=True)
    assert _event(inline, ids[2]).status == "delivered"
    assert len(sandbox.leads()) == 3


def test_a_post_without_csrf_is_refused_and_changes_nothing(make_app: Any) -> None:
    app = _admin(make_app)
    event_id = _submit(app, {"name": "Keep"})
    client = app.test_client()
    for path, data in [
        (f"{EVENTS}/{event_id}/cancel", {"who": "Eve", "reason": "spam"}),
        (f"{EVENTS}/{event_id}/retry", {}),
        (f"{EVENTS}/retry-failed", {}),
        (f"{EVENTS}/process", {}),
        (
            f"{EVENTS}/{event_id}/cancel",
            {"who": "Eve", "reason": "x", "csrf_token": "forged"},
        ),
    ]:
        assert client.post(path, data=data).status_code == 400
    event = _event(app, event_id)
    assert event.status == "pending" and event.attempts == 0 and not event.last_error


def test_cancel_ends_the_event_ignored_with_who_and_why(make_app: Any) -> None:
    app = _admin(make_app)
    event_id = _submit(app, {"name": "Spammer"})
    client = app.test_client()
    page = client.get(f"{EVENTS}/{event_id}").get_data(as_text=True)
    token = _csrf(page)
    # without a name or a reason: refused, said why
    answer = client.post(
        f"{EVENTS}/{event_id}/cancel", data={"csrf_token": token, "reason": "spam"}
    )
    assert answer.status_code == 302
    assert _event(app, event_id).status == "pending"
    answer = client.post(
        f"{EVENTS}/{event_id}/cancel",
        data={"csrf_token": token, "who": "Olga", "reason": "a test from the office"},
    )
    assert answer.status_code == 302
    event = _event(app, event_id)
    assert event.status == "ignored"
    assert event.last_error == "Cancelled by Olga: a test from the office"
    assert event.log[-1] == event.last_error
    # a delivered or already cancelled event is not cancelled again
    answer = client.post(
        f"{EVENTS}/{event_id}/cancel",
        data={"csrf_token": token, "who": "Olga", "reason": "again"},
    )
    shown = client.get(answer.location).get_data(as_text=True)
    assert "was not cancelled" in shown
    assert (
        _event(app, event_id).last_error == "Cancelled by Olga: a test from the office"
    )


def test_cancel_names_the_signed_in_user_of_flask_login(make_app: Any) -> None:
    flask_login = pytest.importorskip("flask_login")

    class User(flask_login.UserMixin):
        id = "7"
        name = "Maria Admin"

    app = _admin(make_app)
    manager = flask_login.LoginManager(app)
    manager.user_loader(lambda user_id: User() if user_id == "7" else None)

    @app.get("/login")
    def login() -> str:
        flask_login.login_user(User())
        return "ok"

    event_id = _submit(app, {"name": "X"})
    client = app.test_client()
    client.get("/login")
    page = client.get(f"{EVENTS}/{event_id}").get_data(as_text=True)
    assert 'name="who"' not in page
    client.post(
        f"{EVENTS}/{event_id}/cancel",
        data={"csrf_token": _csrf(page), "who": "Forged Name", "reason": "duplicate"},
    )
    assert _event(app, event_id).last_error == "Cancelled by Maria Admin: duplicate"


ORDER_RULES: dict[str, Any] = {
    "forms": {
        "callback": CALLBACK_RULES["forms"]["callback"],
        "order": {
            "contact": {
                "name": "{{ data.name }}",
                "fields": {"PHONE": "{{ data.phone }}"},
            },
            "lead": {"name": "Order {{ data.order }}: {{ data.name }}"},
        },
    }
}


def _office(make_app: Any, **config: Any) -> tuple[Flask, dict[str, int]]:
    """A site with a few days' events: delivered ones, one that amoCRM refused
    (``failed``), one not yet delivered."""
    config.setdefault("AMOCRM_LOG_REQUESTS", True)
    app = _admin(make_app, AMOCRM_RULES=ORDER_RULES, **config)
    sandbox = app.config["AMOCRM_BASE_URL"]
    ids: dict[str, int] = {}
    people = [
        ("anna", "callback", {"name": "Анна Кузнецова", "phone": "8 903 555-01-02"}),
        ("boris", "order", {"name": "Boris Volkov", "phone": "+7 903 555 00 07"}),
        (
            "maria",
            "callback",
            {"name": "Мария Иванова", "phone": "", "email": "m.ivanova@mail.ru"},
        ),
    ]
    for key, form, data in people:
        ids[key] = _submit(app, {**data, "order": "1041"}, form)
    ids["ivan"] = _submit(
        app,
        {
            "name": "Иван Петров",
            "phone": "+7 916 123 45 67",
            "email": "ivan@example.ru",
        },
        query_string={"utm_source": "yandex", "utm_medium": "cpc"},
        headers={"Referer": "https://yandex.ru/search"},
    )
    deliver_pending(app)
    ids["failed"] = _submit(
        app,
        {"name": "Ольга Смирнова", "phone": "+79161110000", "order": "1042"},
        "order",
    )
    _fault(sandbox, status=400, count=1, method="POST")
    deliver_pending(app)
    ids["spam"] = _submit(app, {"name": "Spam Bot", "email": "bot@spam.example"})
    return app, ids


def _shoot_top(page: Any, name: str, height: int) -> None:
    """A screenshot of the top ``height`` pixels of ``page`` (for the docs)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    width = page.viewport_size["width"]
    page.screenshot(
        path=str(SCREENSHOTS / f"{name}.png"),
        clip={"x": 0, "y": 0, "width": width, "height": height},
        full_page=True,
    )


def _fault(base_url: str, **spec: Any) -> None:
    import json
    import urllib.request

    request = urllib.request.Request(
        f"{base_url}/_sandbox/faults",
        data=json.dumps(spec).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).close()


# -- in a real browser -----------------------------------------------------------


def _hostile_site(make_app: Any) -> tuple[Flask, int]:
    """An app with events that carry the XSS corpus everywhere the pages show."""
    app = _admin(make_app)
    for value in CORPUS:
        event_id = _submit(
            app,
            {"name": value, "phone": "+7 916 123 45 67", "comment": value},
            query_string={"utm_source": value, "utm_campaign": value},
        )
    with app.app_context(), get_state(app).session() as session:
        session.execute(
            update(Event)
            .where(Event.id == event_id)
            .values(
                status="failed",
                last_error=CORPUS[0],
                files=[{"field": "cv", "name": v, "url": v} for v in CORPUS],
                log=list(CORPUS),
            )
        )
        for value in CORPUS:
            session.add(
                ApiLog(
                    event_id=event_id,
                    method="POST",
                    path="/api/v4/leads/complex",
                    status=400,
                    request_body=f'{{"name": "{value.replace(chr(34), chr(39))}"}}',
                    response_body=value,
                    error=value,
                )
            )
        session.commit()
    return app, event_id


def test_the_pages_in_a_browser_with_hostile_values(
    make_app: Any, serve: Any, page: Any, browser: Any
) -> None:
    app, event_id = _hostile_site(make_app)
    base = serve(app)
    opened = watch(page)
    page.goto(f"{base}{EVENTS}")
    assert_inert(page, opened)
    shoot(page, "events-hostile")
    body = page.locator("table.am-events").inner_text()
    for value in CORPUS:
        assert value.strip().split("\n")[0][:20] in body
    page.goto(f"{base}{EVENTS}/{event_id}")
    page.locator("details summary").first.click()
    for summary in page.locator("details > summary").all():
        summary.click()
    assert_inert(page, opened)
    text = page.locator("main").inner_text()
    for value in CORPUS:
        assert value[:20] in text
    # a javascript: address is never a link
    assert page.locator('a[href^="javascript"]').count() == 0
    shoot(page, "event-hostile")
    assert_inert(page, opened)


def test_list_search_detail_and_cancel_in_a_browser(
    make_app: Any, sandbox: Any, serve: Any, page: Any
) -> None:
    app, ids = _office(make_app)
    base = serve(app)
    page.goto(f"{base}{EVENTS}")
    assert page.locator("table.am-events tbody tr").count() == len(ids)
    shoot(page, "events-list")
    page.fill('input[name="q"]', "8 (916) 123-45-67")
    page.click('form.am-filters button[type="submit"]')
    rows = page.locator("table.am-events tbody tr")
    assert rows.count() == 1 and "Иван Петров" in rows.inner_text()
    assert page.locator('input[name="q"]').input_value() == "8 (916) 123-45-67"
    page.goto(f"{base}{EVENTS}")
    page.select_option('select[name="status"]', "failed")
    page.select_option('select[name="kind"]', "form")
    page.click('form.am-filters button[type="submit"]')
    rows = page.locator("table.am-events tbody tr")
    assert rows.count() == 1 and "Ольга Смирнова" in rows.inner_text()
    page.click("nav.am-counts >> text=pending")
    rows = page.locator("table.am-events tbody tr")
    assert rows.count() == 1 and "Spam Bot" in rows.inner_text()
    # the detail of a delivered event, with its API calls and amoCRM cards
    ivan = _event(app, ids["ivan"])
    page.goto(f"{base}{EVENTS}/{ivan.id}")
    assert page.locator("h1").inner_text().startswith(f"Event {ivan.id}")
    calls = page.locator("table.am-apicalls tbody tr")
    assert calls.count() >= 1
    assert "/api/v4/leads/complex" in calls.last.inner_text()
    shoot(page, "event-detail")
    _shoot_top(page, "event-detail-top", 1250)
    calls.last.locator("summary", has_text="Response body").click()
    assert str(ivan.remote["lead_id"]) in calls.last.locator("pre").last.inner_text()
    lead_link = page.locator('a[href*="/leads/detail/"]')
    assert lead_link.get_attribute("href") == (
        f"{sandbox.url}/leads/detail/{ivan.remote['lead_id']}"
    )
    assert "yandex" in page.locator("main").inner_text()
    # cancel, in the browser: a name and a reason
    page.goto(f"{base}{EVENTS}/{ids['spam']}")
    page.locator("details.am-cancel summary").click()
    page.fill('input[name="who"]', "Olga")
    page.fill('textarea[name="reason"]', "a bot")
    page.click("details.am-cancel button")
    assert "is cancelled" in page.locator(".am-flash").inner_text()
    assert page.locator("h1 .am-badge").inner_text() == "ignored"
    assert _event(app, ids["spam"]).last_error == "Cancelled by Olga: a bot"
    assert page.locator("details.am-cancel").count() == 0  # not twice
    # a form whose CSRF token is gone (or forged) is refused, and changes nothing
    failed = ids["failed"]
    page.goto(f"{base}{EVENTS}/{failed}")
    page.evaluate(
        "document.querySelectorAll('input[name=csrf_token]')"
        ".forEach(i => i.value = 'forged')"
    )
    with page.expect_navigation() as answer:
        page.click("text=Retry")
    assert answer.value.status == 400
    assert page.locator("h1").inner_text() == "The form has expired"
    assert _event(app, failed).status == "failed"


def test_the_pages_in_russian_and_on_a_phone(
    make_app: Any, sandbox: Any, serve: Any, page_ru: Any, browser: Any
) -> None:
    app, ids = _office(make_app)
    base = serve(app)
    page_ru.goto(f"{base}{EVENTS}")
    assert page_ru.locator("h1").inner_text() == "События"
    counts = page_ru.locator(".am-counts").inner_text()
    assert "доставлено" in counts and "ошибка" in counts
    assert "Доставить ожидающие сейчас" in page_ru.locator("main").inner_text()
    shoot(page_ru, "events-list-ru")
    page_ru.goto(f"{base}{EVENTS}/{ids['ivan']}")
    text = page_ru.locator("main").inner_text()
    assert "Данные события" in text and "Запросы к amoCRM" in text
    assert "Сделка" in text
    shoot(page_ru, "event-detail-ru")
    phone = browser.new_context(
        locale="ru-RU", viewport={"width": 375, "height": 800}, is_mobile=True
    )
    try:
        small = phone.new_page()
        for path, name in [
            (EVENTS, "events-list-phone"),
            (f"{EVENTS}/{ids['ivan']}", "event-detail-phone"),
            (f"{EVENTS}/{ids['failed']}", "event-failed-phone"),
        ]:
            small.goto(f"{base}{path}")
            # nothing is wider than the screen: the tables become cards
            width = small.evaluate("document.documentElement.scrollWidth")
            assert width <= 375, (path, width)
            shoot(small, name)
    finally:
        phone.close()


def test_an_event_page_during_an_outage_does_not_wait_for_amocrm(
    make_app: Any, sandbox: Any
) -> None:
    app = _admin(make_app)
    event_id = _submit(app, {"name": "Ann", "phone": "+79160000003"})
    sandbox.faults(status=503, count=1000)
    try:
        assert deliver_pending(app)["retrying"] == 1
        sandbox.faults(clear=True)
        requests_before = len(sandbox.requests())
        page = app.test_client().get(f"{EVENTS}/{event_id}")
        assert page.status_code == 200
        html = page.get_data(as_text=True)
        assert "Not shown while amoCRM does not answer" in html
        assert "503" in html  # the attempt's error
        assert len(sandbox.requests()) == requests_before  # the page asked nothing
    finally:
        sandbox.faults(clear=True)


def test_imported_events_are_found_by_search_in_the_sites_region(
    make_app: Any, tmp_path: Any
) -> None:
    app = _admin(make_app, AMOCRM_PHONE_REGION="DE")
    rows = tmp_path / "old.csv"
    rows.write_text("source,id,name,phone\ncallback,1,Dana Old,030 12345678\n")
    result = app.test_cli_runner().invoke(args=["amocrm", "import", str(rows)])
    assert result.exit_code == 0, result.output
    # the site's region: a number without a country is read as German
    client = app.test_client()
    found = client.get(EVENTS, query_string={"q": "+49 30 1234 5678"})
    [imported] = _ids(found.get_data(as_text=True))
    assert _event(app, imported).search == " dana old +493012345678 "
