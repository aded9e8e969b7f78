"""The admin's "Connect amoCRM": the OAuth code flow via the sandbox's grant page."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import select

from flask_amocrm.models import Token
from flask_amocrm.state import get_state
from tests.helpers.admin import start_connect
from tests.helpers.client import OAUTH


def test_admin_is_off_without_an_auth_hook(
    amo_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flask_amocrm")
    app = amo_app(**OAUTH)
    assert app.test_client().get("/amocrm/admin/connect").status_code == 404
    assert "AMOCRM_ADMIN_AUTH" in caplog.text


def test_admin_refuses_users_the_hook_refuses(amo_app: Any) -> None:
    app = amo_app(**OAUTH, AMOCRM_ADMIN_AUTH=lambda: False)
    client = app.test_client()
    assert client.get("/amocrm/admin/connect").status_code == 403
    assert client.get("/amocrm/admin/oauth/callback?code=x&state=y").status_code == 403


def test_connect_flow_stores_the_tokens(sandbox: Any, amo_app: Any) -> None:
    app = amo_app(**OAUTH, AMOCRM_ADMIN_AUTH=lambda: True)
    client = app.test_client()
    start = start_connect(client)
    assert start.status_code == 302
    grant = urlsplit(start.location)
    assert f"{grant.scheme}://{grant.netloc}" == sandbox.url
    query = {k: v[0] for k, v in parse_qs(grant.query).items()}
    assert query["client_id"] == "sandbox-client" and query["state"]
    # The admin clicks "Allow" on the grant page.
    answer = requests.post(
        f"{sandbox.url}{grant.path}",
        data={**query, "decision": "allow"},
        allow_redirects=False,
        timeout=5,
    )
    back = urlsplit(answer.headers["Location"])
    assert back.path == "/amocrm/admin/oauth/callback"
    done = client.get(f"{back.path}?{back.query}")
    assert done.status_code == 200 and b"connected" in done.data
    with get_state(app).session() as session:
        row = session.scalar(select(Token))
    assert row is not None and row.refresh_token and row.revoked_at is None


def test_callback_refuses_a_foreign_state(sandbox: Any, amo_app: Any) -> None:
    app = amo_app(**OAUTH, AMOCRM_ADMIN_AUTH=lambda: True)
    client = app.test_client()
    start_connect(client)
    code = sandbox.auth_code()
    answer = client.get(f"/amocrm/admin/oauth/callback?code={code}&state=forged")
    assert answer.status_code == 400 and b"state" in answer.data
    assert not [r for r in sandbox.requests() if r["path"] == "/oauth2/access_token"]


def test_admin_auth_must_be_callable(amo_app: Any) -> None:
    with pytest.raises(RuntimeError, match="AMOCRM_ADMIN_AUTH"):
        amo_app(**OAUTH, AMOCRM_ADMIN_AUTH="yes")
