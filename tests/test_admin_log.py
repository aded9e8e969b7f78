"""The admin's API log: every request, filtered by status and path, paged by keyset
newest first; a request's bodies on a page of their own, credentials masked."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask

from flask_amocrm.amo import client_for
from flask_amocrm.errors import NotFoundError
from flask_amocrm.models import ApiLog
from flask_amocrm.state import get_state
from flask_amocrm.testing import deliver_pending
from tests.helpers.admin import PREFIX, allow_access, start_connect
from tests.helpers.browser import shoot
from tests.helpers.client import OAUTH
from tests.helpers.xss import CORPUS, assert_inert, watch

ADMIN = {"AMOCRM_ADMIN_AUTH": lambda: True}


def _rows(html: str) -> list[int]:
    """The ids of the log rows a page lists, in order."""
    return [int(i) for i in re.findall(r'href="/amocrm/admin/log/(\d+)"', html)]


def _calls(app: Flask) -> None:
    """Real calls: a delivered event (2xx) and a lead that does not exist (404)."""
    amocrm = app.extensions["amocrm"].extension
    with app.app_context():
        amocrm.submit("callback", {"name": "Anna", "phone": "+79120000001"})
    assert deliver_pending(app)["delivered"] == 1
    with app.app_context():
        try:
            client_for(get_state()).get("/api/v4/leads/custom_fields/987654")
        except NotFoundError:
            pass  # the client may raise or answer None: the log row is what counts


def test_filters_by_status_and_path(make_app: Any) -> None:
    app = make_app(**ADMIN)
    _calls(app)
    with get_state(app).session() as session:
        rows = {r.id: r for r in session.query(ApiLog)}
    missing = [i for i, r in rows.items() if r.status == 404]
    assert len(missing) == 1
    client = app.test_client()
    log = f"{PREFIX}/log"
    assert _rows(client.get(log).get_data(as_text=True)) == sorted(rows, reverse=True)
    for value in ("4xx", "404", "errors"):
        html = client.get(log, query_string={"status": value}).get_data(as_text=True)
        assert _rows(html) == missing, value
    ok = _rows(client.get(log, query_string={"status": "2xx"}).get_data(as_text=True))
    assert ok and set(ok) == {
        i for i, r in rows.items() if 200 <= (r.status or 0) < 300
    }
    html = client.get(
        log, query_string={"path": "/api/v4/leads/custom_fields/98"}
    ).get_data(as_text=True)
    assert _rows(html) == missing
    # a LIKE wildcard in the prefix is a character, not "anything"
    html = client.get(log, query_string={"path": "/api/v4/%"}).get_data(as_text=True)
    assert _rows(html) == []
    answer = client.get(log, query_string={"status": "teapot"})
    assert answer.status_code == 200
    assert "is not a status filter" in answer.get_data(as_text=True)


def test_pages_by_keyset_newest_first(make_app: Any) -> None:
    app = make_app(**ADMIN)
    with get_state(app).session() as session:
        session.add_all(
            ApiLog(method="GET", path=f"/api/v4/leads/{i}", status=200)
            for i in range(120)
        )
        session.commit()
        ids = sorted((r.id for r in session.query(ApiLog)), reverse=True)
    client = app.test_client()
    seen: list[int] = []
    url = f"{PREFIX}/log"
    pages = 0
    while url:
        html = client.get(url).get_data(as_text=True)
        seen += _rows(html)
        pages += 1
        older = re.search(r'href="([^"]*before=\d+[^"]*)"', html)
        url = older.group(1).replace("&amp;", "&") if older else ""
    assert pages == 3 and seen == ids


def test_bodies_are_masked_again_when_shown(make_app: Any, sandbox: Any) -> None:
    app = make_app(**OAUTH, **ADMIN)
    client = app.test_client()
    # a real connect: the code and the tokens went through the token endpoint
    done = client.get(allow_access(sandbox, start_connect(client).location))
    assert done.status_code == 200
    # and a row as an older version wrote it, secrets in clear
    with get_state(app).session() as session:
        session.add(
            ApiLog(
                method="POST",
                path="/oauth2/access_token?code=querysecret1",
                status=200,
                request_body='{"client_id": "sandbox-client", "client_secret": '
                '"sandbox-secret", "code": "authcode123456", "refresh_token": '
                '"def502refresh"}',
                response_body='{"token_type": "Bearer", "access_token": '
                '"eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl", "refresh_token": "def502new',
                error="Authorization: Bearer abcdef123456",
            )
        )
        session.commit()
        ids = [r.id for r in session.query(ApiLog).order_by(ApiLog.id)]
    for entry in ids:
        html = client.get(f"{PREFIX}/log/{entry}").get_data(as_text=True)
        for secret in (
            "sandbox-secret",
            "authcode123456",
            "querysecret1",
            "def502refresh",
            "def502new",
            "eyJhbGciOi",
            "abcdef123456",
        ):
            assert secret not in html, (entry, secret)
    assert "[redacted]" in html and "sandbox-client" in html
    assert client.get(f"{PREFIX}/log/999999").status_code == 404


def test_the_log_in_a_browser_filtered_with_a_masked_body(
    make_app: Any, serve: Any, page: Any, page_ru: Any
) -> None:
    app = make_app(**ADMIN)
    _calls(app)
    with get_state(app).session() as session:
        session.add(
            ApiLog(
                method="POST",
                path="/oauth2/access_token",
                status=400,
                request_body='{"client_secret": "very-secret-1", "code": "abc123456"}',
                response_body='{"hint": "Authorization code has expired"}',
            )
        )
        session.commit()
    base = serve(app)
    page.goto(f"{base}{PREFIX}/log")
    page.fill("input[name=status]", "4xx")
    page.click("button[type=submit]")
    assert "status=4xx" in page.url
    statuses = page.locator("table.am-log tbody tr td:nth-child(2)").all_inner_texts()
    assert sorted(statuses) == ["400", "404"]
    shoot(page, "log-4xx-en")
    page.locator("table.am-log tbody tr").first.locator("a").first.click()
    body = page.locator("#am-request-body").inner_text()
    assert "very-secret-1" not in body and "abc123456" not in body
    assert body.count("[redacted]") == 2
    shoot(page, "log-entry-en")
    page_ru.set_viewport_size({"width": 375, "height": 800})
    page_ru.goto(f"{base}{PREFIX}/log?status=errors")
    assert page_ru.locator("h1").inner_text() == "Журнал API"
    shoot(page_ru, "log-errors-ru-375")
    width = page_ru.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page is {width}px wide on a 375px phone"


def test_hostile_paths_and_answers_are_shown_as_text(
    make_app: Any, serve: Any, page: Any
) -> None:
    app = make_app(**ADMIN)
    with get_state(app).session() as session:
        for value in CORPUS:
            session.add(
                ApiLog(
                    method="GET",
                    path=f"/api/v4/leads?query={value}",
                    status=400,
                    response_body=f'{{"title": "{value}"}}',
                    error=value,
                )
            )
        session.commit()
        last = max(r.id for r in session.query(ApiLog))
    base = serve(app)
    opened = watch(page)
    page.goto(f"{base}{PREFIX}/log")
    assert_inert(page, opened)
    text = page.locator("table.am-log").inner_text()
    for value in CORPUS:
        assert value in text
    page.goto(f"{base}{PREFIX}/log/{last}")
    assert_inert(page, opened)
    assert CORPUS[-1] in page.locator("#am-response-body").inner_text()
