"""Who may open the admin pages: the site's hook decides, and nothing is open by
default."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, Response, redirect

from flask_amocrm import AmoCRM
from tests.helpers.browser import shoot
from tests.helpers.client import OAUTH

CONNECT = "/amocrm/admin/connect"


class _User:
    def is_admin(self) -> bool:
        return True


def test_the_decorator_switches_the_pages_on(amo_app: Any) -> None:
    app = amo_app(**OAUTH)
    assert not [r for r in app.url_map.iter_rules() if r.rule.startswith("/amocrm")]
    amocrm = app.extensions["amocrm"].extension

    @amocrm.admin_auth
    def may_enter() -> bool:
        return True

    assert app.test_client().get(CONNECT).status_code == 200


def test_the_decorator_works_in_the_factory_style(sandbox: Any, tmp_path: Any) -> None:
    amocrm = AmoCRM()

    @amocrm.admin_auth
    def may_enter() -> bool:
        return False

    app = Flask("factory_site", instance_path=str(tmp_path))
    app.config.update(
        SECRET_KEY="test",
        AMOCRM_BASE_URL=sandbox.url,
        AMOCRM_DATABASE_URI=f"sqlite:///{tmp_path}/events.sqlite3",
        AMOCRM_DELIVERY="deferred",
        AMOCRM_ADMIN_URL_PREFIX="/crm",
        **OAUTH,
    )
    amocrm.init_app(app)
    client = app.test_client()
    assert client.get("/crm/connect").status_code == 403
    assert client.get(CONNECT).status_code == 404


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(False, id="False"),
        pytest.param(None, id="None"),
        pytest.param(1, id="a truthy number"),
        pytest.param("yes", id="a truthy string"),
        pytest.param(_User().is_admin, id="a bound method, not called"),
    ],
)
def test_only_true_admits(amo_app: Any, answer: Any) -> None:
    app = amo_app(**OAUTH, AMOCRM_ADMIN_AUTH=lambda: answer)
    assert app.test_client().get(CONNECT).status_code == 403


def test_a_response_from_the_hook_is_sent_as_it_is(amo_app: Any) -> None:
    challenge = Response(
        "login", status=401, headers={"WWW-Authenticate": 'Basic realm="crm"'}
    )
    app = amo_app(**OAUTH, AMOCRM_ADMIN_AUTH=lambda: challenge)
    answer = app.test_client().get(CONNECT)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="crm"'
    app = amo_app(**OAUTH, AMOCRM_ADMIN_AUTH=lambda: redirect("/login?next=crm"))
    answer = app.test_client().get(CONNECT)
    assert answer.status_code == 302 and answer.location == "/login?next=crm"


def test_bad_settings_are_refused_naming_the_key(amo_app: Any) -> None:
    with pytest.raises(RuntimeError, match="AMOCRM_ADMIN_URL_PREFIX"):
        amo_app(AMOCRM_ADMIN_URL_PREFIX="amocrm/")
    with pytest.raises(RuntimeError, match="AMOCRM_LOCALE"):
        amo_app(AMOCRM_LOCALE="de")
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        amo_app(SECRET_KEY=None, AMOCRM_ADMIN_AUTH=lambda: True)


def test_the_gate_in_a_real_browser(amo_app: Any, serve: Any, page: Any) -> None:
    state = {"admin": False}
    app = amo_app(AMOCRM_ADMIN_AUTH=lambda: state["admin"])
    base = serve(app)
    refused = page.goto(f"{base}{CONNECT}")
    assert refused is not None and refused.status == 403
    state["admin"] = True
    page.goto(f"{base}{CONNECT}")
    # a long-lived token account: the page says so, and offers no OAuth connect
    assert page.locator("h1").inner_text() == "Connection"
    assert "long-lived token" in page.locator("#am-connection").inner_text()
    assert page.get_by_role("button", name="Connect amoCRM").count() == 0
    assert page.locator("header nav a").count() >= 1
    shoot(page, "gate-connect-long-lived")
