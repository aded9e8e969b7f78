"""The admin's connection page: the token's state, "Connect amoCRM" (the OAuth code
flow end to end, in a real browser), and "Disconnect"."""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import Flask
from sqlalchemy import select

from flask_amocrm.i18n import format_datetime
from flask_amocrm.models import Token
from flask_amocrm.state import get_state
from tests.helpers.admin import (
    PREFIX,
    allow_access,
    csrf_token,
    jwt_expiry,
    start_connect,
)
from tests.helpers.browser import shoot
from tests.helpers.client import OAUTH

ADMIN = {"AMOCRM_ADMIN_AUTH": lambda: True}
CONNECT = f"{PREFIX}/connect"


def _tokens(app: Flask) -> list[Token]:
    with get_state(app).session() as session:
        return list(session.scalars(select(Token)))


def test_connect_starts_only_from_the_pages_form(amo_app: Any) -> None:
    app = amo_app(**OAUTH, **ADMIN)
    client = app.test_client()
    # a link (a GET) from anywhere cannot start a connect
    assert client.get(f"{CONNECT}/start").status_code == 405
    assert client.post(f"{CONNECT}/start").status_code == 400
    assert start_connect(client).status_code == 302


def test_disconnect_forgets_the_tokens_and_needs_the_pages_token(
    sandbox: Any, amo_app: Any
) -> None:
    app = amo_app(**OAUTH, **ADMIN)
    client = app.test_client()
    done = client.get(allow_access(sandbox, start_connect(client).location))
    assert done.status_code == 200 and len(_tokens(app)) == 1
    assert client.post(f"{CONNECT}/disconnect").status_code == 400
    assert len(_tokens(app)) == 1
    answer = client.post(
        f"{CONNECT}/disconnect", data={"csrf_token": csrf_token(client)}
    )
    assert answer.status_code == 302 and _tokens(app) == []
    html = client.get(CONNECT).get_data(as_text=True)
    assert "amoCRM is disconnected" in html and "not connected" in html
    # nothing to forget a second time: said, not an error page
    client.post(f"{CONNECT}/disconnect", data={"csrf_token": csrf_token(client)})
    assert "no stored tokens" in client.get(CONNECT).get_data(as_text=True)


def test_a_denied_grant_says_why_and_links_back(sandbox: Any, amo_app: Any) -> None:
    app = amo_app(**OAUTH, **ADMIN)
    client = app.test_client()
    back = allow_access(sandbox, start_connect(client).location, decision="deny")
    answer = client.get(back)
    html = answer.get_data(as_text=True)
    assert answer.status_code == 400
    assert "amoCRM was not connected" in html and "amoCRM answered" in html
    assert f'href="{CONNECT}"' in html
    assert _tokens(app) == []


def _browser_app(amo_app: Any, serve: Any) -> tuple[Flask, str]:
    """An OAuth app served over HTTP whose redirect URI is its own callback."""
    app = amo_app(**OAUTH, **ADMIN)
    base = serve(app)
    state = get_state(app)
    state.settings = dataclasses.replace(
        state.settings, redirect_uri=f"{base}{PREFIX}/oauth/callback"
    )
    return app, base


def test_connect_and_disconnect_in_a_browser(
    sandbox: Any, amo_app: Any, serve: Any, page: Any
) -> None:
    app, base = _browser_app(amo_app, serve)
    page.goto(f"{base}{CONNECT}")
    assert "not connected" in page.locator("#am-token-state").inner_text()
    shoot(page, "connect-oauth-en")
    page.click("text=Connect amoCRM")
    # amoCRM's grant page (the sandbox's): the admin allows access
    page.click("button[value=allow]")
    assert page.locator("h1").inner_text() == "amoCRM is connected"
    text = page.locator("main").inner_text()
    assert sandbox.url in text and "Connected to" in text
    shoot(page, "connect-done-en")
    page.click("text=Back")
    assert page.locator("#am-token-state").inner_text().strip() == "connected"
    [row] = _tokens(app)
    assert row.refresh_token and row.revoked_at is None
    page.click("text=Disconnect")
    assert "amoCRM is disconnected" in page.locator(".am-flash").inner_text()
    assert "not connected" in page.locator("#am-token-state").inner_text()
    assert _tokens(app) == []


def test_the_connection_page_in_russian_on_a_phone(
    sandbox: Any, amo_app: Any, serve: Any, page_ru: Any
) -> None:
    app, base = _browser_app(amo_app, serve)
    page_ru.set_viewport_size({"width": 375, "height": 800})
    page_ru.goto(f"{base}{CONNECT}")
    assert page_ru.locator("h1").inner_text() == "Подключение"
    page_ru.click("text=Подключить amoCRM")
    page_ru.click("button[value=allow]")
    assert page_ru.locator("h1").inner_text() == "amoCRM подключена"
    shoot(page_ru, "connect-done-ru-375")
    page_ru.click("text=Назад")
    assert page_ru.locator("#am-token-state").inner_text().strip() == "подключена"
    shoot(page_ru, "connect-oauth-ru-375")
    width = page_ru.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page is {width}px wide on a 375px phone"
    page_ru.click("text=Отключить")
    assert "не подключена" in page_ru.locator("#am-token-state").inner_text()
    assert _tokens(app) == []


def test_a_long_lived_tokens_expiry(amo_app: Any, sandbox: Any) -> None:
    token = sandbox.long_lived_token(days=10)
    app = amo_app(AMOCRM_TOKEN=token, **ADMIN)
    html = app.test_client().get(CONNECT).get_data(as_text=True)
    assert format_datetime(jwt_expiry(token), "UTC") in html
    assert "Connect amoCRM" not in html and "Disconnect" not in html


def test_hostile_text_in_the_callback_is_shown_as_text(
    amo_app: Any, serve: Any, page: Any
) -> None:
    from urllib.parse import urlencode

    from tests.helpers.xss import CORPUS, assert_inert, watch

    app = amo_app(**OAUTH, **ADMIN)
    base = serve(app)
    opened = watch(page)
    for value in CORPUS:
        query = urlencode({"error": value, "state": value, "code": value})
        page.goto(f"{base}{PREFIX}/oauth/callback?{query}")
        assert_inert(page, opened)
        assert value in page.locator("main p").first.inner_text()
    page.goto(f"{base}{CONNECT}")
    assert_inert(page, opened)
