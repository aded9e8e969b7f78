"""Request logging: the logger and the amocrm_api_log table, free of secrets."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from flask_amocrm.amo import client_for, event_context, exchange_code, purge_api_log
from flask_amocrm.amo.apilog import Redactor
from flask_amocrm.models import ApiLog, Token, utcnow
from flask_amocrm.state import get_state
from tests.helpers.client import OAUTH


def test_logs_and_rows_never_hold_secrets(
    sandbox: Any, amo_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flask_amocrm")
    app = amo_app(**OAUTH)
    secrets: list[str] = ["sandbox-secret"]
    with app.app_context():
        state = get_state()
        code = sandbox.auth_code()
        secrets.append(code)
        row = exchange_code(state, code)
        secrets += [row.access_token, row.refresh_token or ""]
        with state.session() as session:  # force a refresh on the next call
            session.execute(update(Token).values(expires_at=utcnow()))
            session.commit()
        client = client_for(state)
        with event_context(42):
            client.get("/api/v4/account")
            client.post("/api/v4/leads", [{"name": "Logged lead"}])
        with state.session() as session:
            fresh = session.scalar(select(Token))
            rows = list(session.scalars(select(ApiLog).order_by(ApiLog.id)))
        secrets += [fresh.access_token, fresh.refresh_token or ""]
    stored = " ".join(
        f"{r.path} {r.request_body} {r.response_body} {r.error}" for r in rows
    )
    for secret in secrets:
        assert secret not in caplog.text
        assert secret not in stored
    assert "Bearer " not in stored and "Authorization" not in caplog.text
    paths = [(r.method, r.path.split("?")[0], r.status) for r in rows]
    assert paths == [
        ("POST", "/oauth2/access_token", 200),
        ("POST", "/oauth2/access_token", 200),
        ("GET", "/api/v4/account", 200),
        ("POST", "/api/v4/leads", 200),
    ]
    assert [r.event_id for r in rows] == [None, 42, 42, 42]
    assert rows[3].request_id and rows[3].duration_ms is not None
    assert "Logged lead" in (rows[3].request_body or "")
    assert "-> 200" in caplog.text  # INFO line per call


def test_logging_off_writes_no_rows(sandbox: Any, amo_app: Any) -> None:
    app = amo_app(AMOCRM_LOG_REQUESTS=False)
    with app.app_context():
        client_for(get_state()).get("/api/v4/account")
        with get_state().session() as session:
            assert session.scalars(select(ApiLog)).all() == []


def test_purge_keeps_recent_rows(sandbox: Any, amo_app: Any) -> None:
    app = amo_app()
    with app.app_context():
        state = get_state()
        client_for(state).get("/api/v4/account")
        client_for(state).get("/api/v4/account")
        with state.session() as session:
            oldest = session.scalars(select(ApiLog)).first()
            assert oldest is not None
            oldest.created_at = utcnow() - timedelta(days=100)
            session.commit()
        assert purge_api_log(state, 90) == 1
        assert purge_api_log(state) == 0
        with state.session() as session:
            assert len(session.scalars(select(ApiLog)).all()) == 1


def test_redactor_masks_oauth_bodies_jwts_and_headers() -> None:
    redactor = Redactor(["very-secret-value"])
    body = {
        "code": "abc123xyz",
        "refresh_token": "r",
        "client_secret": "s",
        "custom_fields_values": [{"field_code": "PHONE", "code": "WORK"}],
    }
    assert redactor.value(body, oauth=True)["code"] == "[redacted]"
    kept = redactor.value(body)
    assert kept["code"] == "abc123xyz"  # a field's code is not a secret
    assert kept["custom_fields_values"][0]["code"] == "WORK"
    assert kept["refresh_token"] == "[redacted]"
    text = redactor.dump(
        "Authorization: Bearer abc.def and eyJhbGci.eyJzdWIi.c2ln "
        "very-secret-value\r\nforged"
    )
    assert "abc.def" not in text and "eyJ" not in text and "very-secret" not in text
    assert "\n" not in text
