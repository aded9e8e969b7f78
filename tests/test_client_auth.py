"""OAuth against the sandbox: code exchange, refresh races, revocation, keep-alive."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import select

from flask_amocrm import Event
from flask_amocrm.amo import client_for, exchange_code, keep_alive
from flask_amocrm.errors import AuthError, TokenRevokedError
from flask_amocrm.models import Token, utcnow
from flask_amocrm.state import get_state
from flask_amocrm.testing import deliver_pending
from tests.helpers.client import (
    OAUTH,
    app_config,
    build_app,
    run_children,
)


def _token_calls(sandbox: Any) -> list[dict[str, Any]]:
    return [r for r in sandbox.requests() if r["path"] == "/oauth2/access_token"]


def _row(app: Any) -> Token:
    with get_state(app).session() as session:
        row = session.scalar(select(Token))
    assert row is not None
    return row


def _set(app: Any, **values: Any) -> None:
    with get_state(app).session() as session:
        row = session.scalar(select(Token))
        for key, value in values.items():
            setattr(row, key, value)
        session.commit()


def _connect(sandbox: Any, app: Any) -> Token:
    with app.app_context():
        return exchange_code(get_state(), sandbox.auth_code())


@pytest.mark.parametrize("with_redis", [True, False], ids=["redis-lock", "row-lease"])
def test_refresh_race_in_four_processes_refreshes_once(
    sandbox: Any, redis14: str, tmp_path: Any, with_redis: bool
) -> None:
    config = app_config(
        sandbox,
        str(tmp_path / "events.sqlite3"),
        **OAUTH,
        AMOCRM_REDIS_URL=redis14 if with_redis else None,
    )
    app = build_app(config, str(tmp_path / "instance"))
    _connect(sandbox, app)
    # The stored access token is dead: every process gets a 401 and wants to refresh.
    _set(
        app, access_token="expired." + "x" * 20, expires_at=utcnow() + timedelta(days=1)
    )
    before = len(_token_calls(sandbox))
    sandbox.faults(latency_ms=400, count=1, path="/oauth2/access_token")
    results = run_children(config, str(tmp_path / "instance"), processes=4, calls=2)
    assert all(r == ["ok", "ok"] for r in results), results
    assert len(_token_calls(sandbox)) - before == 1
    row = _row(app)
    assert row.version == 2 and row.revoked_at is None


def test_refresh_ahead_of_expiry(sandbox: Any, amo_app: Any) -> None:
    app = amo_app(**OAUTH)
    first = _connect(sandbox, app)
    _set(app, expires_at=utcnow() + timedelta(minutes=5))
    with app.app_context():
        assert client_for(get_state()).get("/api/v4/account")["id"]
    assert _row(app).access_token != first.access_token
    assert len(_token_calls(sandbox)) == 2  # the code, then one refresh
    assert [
        r["status"] for r in sandbox.requests() if r["path"] == "/api/v4/account"
    ] == [200]


def test_revoked_refresh_token_stops_delivery_and_alerts_once(
    sandbox: Any, amo_app: Any
) -> None:
    from flask_mail import Mail

    app = amo_app(
        **OAUTH,
        AMOCRM_ADMIN_EMAILS="admin@example.com",
        MAIL_DEFAULT_SENDER="site@example.com",
        AMOCRM_RULES={"forms": {"callback": {"lead": {"name": "{{ data.name }}"}}}},
    )
    mail = Mail(app)
    row = _connect(sandbox, app)
    # Someone else used our refresh token: amoCRM now calls it revoked.
    requests.post(
        f"{sandbox.url}/oauth2/access_token",
        json={
            "client_id": "sandbox-client",
            "client_secret": "sandbox-secret",
            "grant_type": "refresh_token",
            "refresh_token": row.refresh_token,
        },
        timeout=5,
    )
    _set(app, access_token="expired." + "x" * 20)
    with app.app_context(), mail.record_messages() as outbox:
        # The client raises; it mails nobody.
        with pytest.raises(TokenRevokedError) as info:
            client_for(get_state()).get("/api/v4/account")
        assert info.value.retryable
        assert outbox == []
        # The worker decides who is told: once, however many events wait.
        event = app.extensions["amocrm"].extension.submit("callback", {"name": "Ann"})
        assert event is not None
        for _ in range(3):
            _make_due(app)
            assert deliver_pending(app) == {"spooled": 0, "retrying": 1}
    assert _row(app).revoked_at is not None
    assert len(outbox) == 1
    assert "connect amoCRM again" in outbox[0].subject
    assert outbox[0].extra_headers["X-AmoCRM-Alert"] == "1"
    assert row.refresh_token not in outbox[0].body
    api_calls = [r for r in sandbox.requests() if r["path"] == "/api/v4/account"]
    assert len(api_calls) == 1  # after the revocation nobody calls amoCRM
    # A person reconnects: delivery resumes.
    _connect(sandbox, app)
    assert _row(app).revoked_at is None
    _make_due(app)
    assert deliver_pending(app) == {"spooled": 0, "delivered": 1}
    assert [lead["name"] for lead in sandbox.leads()] == ["Ann"]


def _make_due(app: Any) -> None:
    with get_state(app).session() as session:
        for event in session.query(Event):
            event.next_attempt_at = utcnow()
        session.commit()


def test_not_connected_is_a_retryable_auth_error(sandbox: Any, amo_app: Any) -> None:
    app = amo_app(**OAUTH)
    with app.app_context(), pytest.raises(AuthError) as info:
        client_for(get_state()).get("/api/v4/account")
    assert info.value.retryable and "flask amocrm auth" in str(info.value)
    assert sandbox.requests() == []


def test_keep_alive_refreshes_an_old_pair_once(
    sandbox: Any, amo_app: Any, redis14: str
) -> None:
    app = amo_app(**OAUTH, AMOCRM_REDIS_URL=redis14, AMOCRM_KEEPALIVE_DAYS=14)
    _connect(sandbox, app)
    with app.app_context():
        assert keep_alive(get_state()) is False  # fresh
        _set(app, refreshed_at=utcnow() - timedelta(days=20))
        assert keep_alive(get_state()) is True
        assert keep_alive(get_state()) is False
        assert client_for(get_state()).get("/api/v4/account")["id"]
    assert len(_token_calls(sandbox)) == 2


def test_cli_auth_prints_the_url_and_exchanges_a_code(
    sandbox: Any, amo_app: Any
) -> None:
    app = amo_app(**OAUTH)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["amocrm", "auth"])
    assert result.exit_code == 0 and f"{sandbox.url}/oauth?client_id=" in result.output
    result = runner.invoke(args=["amocrm", "auth", sandbox.auth_code()])
    assert result.exit_code == 0, result.output
    assert "Connected" in result.output
    result = runner.invoke(args=["amocrm", "auth", "bad-code"])
    assert result.exit_code != 0 and "refused" in result.output
