"""Hardening of the delivery side (issue 11): one bad event fails alone, stale
caches heal, a lost refresh answer, a burst worker, logs without personal data,
tokens encrypted at rest, rules reloaded, alerts that fit the token."""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask, current_app, request
from sqlalchemy import select, text

from flask_amocrm import Event, form_submitted
from flask_amocrm.models import Token, utcnow
from flask_amocrm.state import get_state
from flask_amocrm.testing import deliver_pending
from tests.helpers.client import OAUTH
from tests.helpers.e2e import stored_events
from tests.helpers.process import flask_command


def _json_site(make_app: Any, rules: dict[str, Any], **config: Any) -> Flask:
    """A site whose ``POST /api/<form>`` passes the JSON body (as Flask reads it)."""
    config.setdefault("AMOCRM_RATE_LIMIT", 50)
    app: Flask = make_app(AMOCRM_RULES=rules, **config)

    @app.post("/api/<name>")
    def api(name: str) -> str:
        form_submitted.send(
            current_app._get_current_object(), form=name, data=request.get_json()
        )
        return "ok"

    return app


def _post_json(app: Flask, body: str, form: str = "callback") -> None:
    with app.test_client() as client:
        response = client.post(
            f"/api/{form}", data=body, content_type="application/json"
        )
        assert response.status_code == 200
        response.close()


def _make_due(app: Flask) -> None:
    with app.app_context(), get_state(app).session() as session:
        for event in session.query(Event).filter(Event.status == "retrying"):
            event.next_attempt_at = utcnow() - timedelta(seconds=1)
        session.commit()


def _by_name(app: Flask) -> dict[str, Event]:
    return {e.data.get("name"): e for e in stored_events(app)}


# -- item 3: a lone surrogate fails its own event only ------------------------------


def test_a_lone_surrogate_fails_its_event_only(
    make_app: Any, fast_sandbox: Any, database_uri: str
) -> None:
    rules = {
        "forms": {
            "callback": {"lead": {"name": "Callback: {{ data.name }}"}},
            # The sandbox's chained_list field: its table is sent as written.
            "product": {
                "lead": {
                    "name": "Product: {{ data.name }}",
                    "fields": {
                        "Product list": {
                            "catalog_id": 1,
                            "catalog_element_id": "{{ data.product }}",
                        }
                    },
                }
            },
        }
    }
    app = _json_site(make_app, rules, AMOCRM_DATABASE_URI=database_uri)
    _post_json(app, '{"name": "Ann", "product": "7"}')
    _post_json(app, '{"name": "Mallory", "product": "\\ud800"}', form="product")
    _post_json(app, '{"name": "Bob", "product": "8"}')
    assert len(stored_events(app)) == 3
    for _ in range(2):
        deliver_pending(app)
        _make_due(app)
    events = _by_name(app)
    assert events["Ann"].status == "delivered", events["Ann"].last_error
    assert events["Bob"].status == "delivered", events["Bob"].last_error
    # Capture cleans the lone surrogate (U+FFFD); what is left is not a catalog
    # element id, so that event alone fails, with the reason stored.
    assert events["Mallory"].data["product"] == "\ufffd"
    assert events["Mallory"].status == "failed"
    assert "catalog_element_id" in (events["Mallory"].last_error or "")
    assert sorted(lead["name"] for lead in fast_sandbox.leads()) == [
        "Callback: Ann",
        "Callback: Bob",
    ]
    get_state(app).engine.dispose()


# -- item 5: value errors fail their event; a 400 naming no item splits ------------


def test_out_of_range_dates_and_huge_numbers_fail_their_event(
    make_app: Any, fast_sandbox: Any
) -> None:
    rules = {
        "forms": {
            "callback": {
                "lead": {
                    "name": "Callback: {{ data.name }}",
                    "fields": {
                        "Lead Visit date": "{{ data.visit | default('') }}",
                        "Lead Quantity": "{{ data.qty | default(1) | float }}",
                    },
                }
            }
        }
    }
    app = _json_site(make_app, rules)
    _post_json(app, '{"name": "Ann", "visit": "2024-05-17", "qty": 3}')
    _post_json(app, '{"name": "Early", "visit": "0001-01-01T00:00:00+14:00"}')
    _post_json(app, '{"name": "Late", "visit": "9999-12-31T23:59:59-23:59"}')
    _post_json(app, '{"name": "Huge", "qty": 1' + "0" * 400 + "}")
    _post_json(app, '{"name": "Bob", "qty": 5}')
    deliver_pending(app)
    _make_due(app)
    deliver_pending(app)
    events = _by_name(app)
    assert events["Ann"].status == "delivered", events["Ann"].last_error
    assert events["Bob"].status == "delivered", events["Bob"].last_error
    for name in ("Early", "Late", "Huge"):
        assert events[name].status == "failed", (name, events[name].last_error)
        assert "unexpected" not in (events[name].last_error or "")
        assert events[name].attempts == 1


def test_a_400_that_names_no_item_splits_the_batch(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = make_app(AMOCRM_RATE_LIMIT=50)
    amocrm = app.extensions["amocrm"].extension
    with app.app_context():
        for name in ("Ann", "Bob", "Cid", "Dan"):
            assert amocrm.submit("callback", {"name": name, "phone": "+79120001122"})
    fast_sandbox.faults(status=400, count=1, path="/api/v4/leads/complex")
    result = deliver_pending(app)
    assert result.get("delivered") == 4, result
    assert len(fast_sandbox.leads()) == 4


def test_a_400_on_one_event_alone_fails_only_that_event(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = make_app(AMOCRM_RATE_LIMIT=50)
    amocrm = app.extensions["amocrm"].extension
    with app.app_context():
        for name in ("Ann", "Bob"):
            assert amocrm.submit("callback", {"name": name, "phone": "+79120001122"})
    # The whole batch, then its first half (Ann alone) are refused.
    fast_sandbox.faults(status=400, count=2, path="/api/v4/leads/complex")
    deliver_pending(app)
    events = _by_name(app)
    assert events["Ann"].status == "failed"
    assert "400" in (events["Ann"].last_error or "")
    assert events["Bob"].status == "delivered", events["Bob"].last_error


# -- item 4: a deleted marker field, stale caches -------------------------------------


def test_a_deleted_marker_field_is_found_again(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = make_app(AMOCRM_RATE_LIMIT=50)
    amocrm = app.extensions["amocrm"].extension
    with app.app_context():
        amocrm.submit("callback", {"name": "Ann", "phone": "+79120001122"})
    assert deliver_pending(app).get("delivered") == 1
    fast_sandbox.reset()  # the sandbox restarted without state: the field is gone
    with app.app_context():
        amocrm.submit("callback", {"name": "Bob", "phone": "+79120001133"})
    result = deliver_pending(app)
    assert result.get("delivered") == 1, stored_events(app)[-1].last_error
    [lead] = fast_sandbox.leads()
    assert lead["name"] == "Callback: Bob"
    marker = [
        f
        for f in lead.get("custom_fields_values") or []
        if f.get("field_name") == "Site event id"
    ]
    assert marker and marker[0]["values"][0]["value"] == stored_events(app)[-1].uid


def test_sync_clears_every_cache_marker_field_included(
    make_app: Any, fast_sandbox: Any
) -> None:
    from flask_amocrm import shared

    app = make_app(AMOCRM_RATE_LIMIT=50)
    amocrm = app.extensions["amocrm"].extension
    with app.app_context():
        amocrm.submit("callback", {"name": "Ann", "phone": "+79120001122"})
    assert deliver_pending(app).get("delivered") == 1
    with app.app_context():
        assert shared.get(get_state(), "marker-field:Site event id", account=True)
    fast_sandbox.reset()
    result = app.test_cli_runner().invoke(args=["amocrm", "sync"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert (
            shared.get(get_state(), "marker-field:Site event id", account=True) is None
        )


# -- item 6: a lost answer on the refresh call ----------------------------------------


def _oauth_app(amo_app: Any, sandbox: Any, **config: Any) -> Flask:
    from flask_amocrm.amo import exchange_code

    app: Flask = amo_app(
        **OAUTH,
        AMOCRM_RULES={"forms": {"callback": {"lead": {"name": "{{ data.name }}"}}}},
        **config,
    )
    with app.app_context():
        exchange_code(get_state(), sandbox.auth_code())
    return app


def _expire(app: Flask) -> None:
    with get_state(app).session() as session:
        row = session.scalar(select(Token))
        assert row is not None
        row.expires_at = utcnow() + timedelta(minutes=1)
        session.commit()


def test_a_dropped_refresh_call_is_sent_once_more(sandbox: Any, amo_app: Any) -> None:
    app = _oauth_app(amo_app, sandbox)
    _expire(app)
    with app.app_context():
        app.extensions["amocrm"].extension.submit("callback", {"name": "Ann"})
    sandbox.faults(drop=True, count=1, path="/oauth2/access_token")
    assert deliver_pending(app).get("delivered") == 1
    with get_state(app).session() as session:
        row = session.scalar(select(Token))
        assert row is not None and row.revoked_at is None and row.version == 2


def test_a_lost_refresh_answer_reads_the_row_again(
    sandbox: Any, amo_app: Any, monkeypatch: Any
) -> None:
    """amoCRM spent the refresh token but the answer was lost; meanwhile another
    process stored a good pair: that pair is used, nothing is marked revoked."""
    from flask_amocrm.amo import auth
    from flask_amocrm.amo.auth import store_pair

    app = _oauth_app(amo_app, sandbox)
    _expire(app)
    with app.app_context():
        app.extensions["amocrm"].extension.submit("callback", {"name": "Ann"})
    sandbox.faults(lose_answer=True, count=1, path="/oauth2/access_token")
    real = getattr(auth.OAuthTokens, "_refresh_call", None)
    calls: list[int] = []

    def other_process_stores(self: Any, body: dict[str, Any]) -> Any:
        calls.append(1)
        if len(calls) == 2:
            # Another process connected again between our two tries.
            with app.app_context():
                code = sandbox.auth_code()
                pair = self.token_client.request(
                    "POST",
                    auth.TOKEN_PATH,
                    json_body={
                        "client_id": "sandbox-client",
                        "client_secret": "sandbox-secret",
                        "grant_type": "authorization_code",
                        "code": code,
                        "redirect_uri": OAUTH["AMOCRM_REDIRECT_URI"],
                    },
                    auth=False,
                    oauth=True,
                )
                store_pair(get_state(), pair)
        assert real is not None
        return real(self, body)

    # (raising=False: before the fix there was no such method to replace.)
    monkeypatch.setattr(
        auth.OAuthTokens, "_refresh_call", other_process_stores, raising=False
    )
    assert deliver_pending(app).get("delivered") == 1
    assert len(calls) == 2
    with get_state(app).session() as session:
        row = session.scalar(select(Token))
        assert row is not None and row.revoked_at is None


# -- item 7: a burst worker delivers what has no job ----------------------------------


def test_burst_worker_delivers_pending_events_without_a_job(
    make_app: Any, fast_sandbox: Any, redis_conn: Any, redis_url: str, tmp_path: Any
) -> None:
    db = f"sqlite:///{tmp_path}/burst.sqlite3"
    config = {
        "TESTING": True,
        "SECRET_KEY": "test",
        "AMOCRM_BASE_URL": fast_sandbox.url,
        "AMOCRM_TOKEN": fast_sandbox.token,
        "AMOCRM_DELIVERY": "rq",
        "AMOCRM_REDIS_URL": redis_url,
        "AMOCRM_DATABASE_URI": db,
        "AMOCRM_RULES": {"forms": {"callback": {"lead": {"name": "{{ data.name }}"}}}},
    }
    app = make_app(**{k: v for k, v in config.items() if k.startswith("AMOCRM_")})

    @app.post("/callback")
    def callback() -> str:
        form_submitted.send(
            current_app._get_current_object(), form="callback", data=request.form
        )
        return "ok"

    # Flask's test client: the response is never closed, so no job is queued.
    response = app.test_client().post("/callback", data={"name": "Ann"})
    assert response.status_code == 200
    assert redis_conn.llen("rq:queue:amocrm") == 0
    [event] = stored_events(app)
    assert event.status == "pending"
    done = flask_command(tmp_path, config, "worker", "--burst", "--without-scheduler")
    assert done.returncode == 0, done.stderr
    [event] = stored_events(app)
    assert event.status == "delivered", (event.last_error, done.stderr[-2000:])
    assert [lead["name"] for lead in fast_sandbox.leads()] == ["Ann"]


# -- item 16: no phones or e-mails in Python logs --------------------------------------


def test_search_queries_keep_phones_and_emails_out_of_logs(
    make_app: Any, fast_sandbox: Any, caplog: Any
) -> None:
    rules = {
        "forms": {
            "callback": {
                "contact": {
                    "name": "{{ data.name }}",
                    "fields": {
                        "PHONE": "{{ data.phone }}",
                        "EMAIL": "{{ data.email }}",
                    },
                    "duplicates": {"match": ["PHONE", "EMAIL"], "strategy": "use"},
                },
                "lead": {"name": "Callback"},
            }
        }
    }
    app = make_app(AMOCRM_RULES=rules, AMOCRM_RATE_LIMIT=50)
    with app.app_context():
        app.extensions["amocrm"].extension.submit(
            "callback",
            {
                "name": "Ivan",
                "phone": "+7 912 555-44-33",
                "email": "ivan.p@example.com",
            },
        )
    with caplog.at_level(logging.DEBUG, logger="flask_amocrm"):
        assert deliver_pending(app).get("delivered") == 1
    searches = [
        r for r in fast_sandbox.requests() if "query=" in (r.get("query") or "")
    ]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert searches and "GET /api/v4/contacts?" in logged  # the searches are logged
    for secret in ("9125554433", "5554433", "ivan.p", "example.com"):
        assert secret not in logged, secret  # ... without what was searched for
    del searches


def test_a_failed_insert_logs_no_form_data(
    make_app: Any, sandbox: Any, caplog: Any, tmp_path: Any
) -> None:
    app = make_app()
    with app.app_context(), get_state(app).session() as session:
        session.execute(text("DROP TABLE amocrm_events"))
        session.commit()
    with caplog.at_level(logging.DEBUG), app.app_context():
        app.extensions["amocrm"].extension.submit(
            "callback", {"name": "Secret Person", "phone": "+79161234567"}
        )
    logged = "\n".join(
        r.getMessage()
        + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
        for r in caplog.records
    )
    assert "could not store" in logged
    assert "79161234567" not in logged and "Secret Person" not in logged


# -- item 17: tokens encrypted at rest, secrets out of reprs ---------------------------


def test_oauth_tokens_are_encrypted_at_rest(sandbox: Any, amo_app: Any) -> None:
    app = _oauth_app(amo_app, sandbox, AMOCRM_TOKEN_KEY="a key only the site knows")
    with get_state(app).session() as session:
        stored = session.execute(
            text("SELECT access_token, refresh_token FROM amocrm_tokens")
        ).one()
    with app.app_context():
        from flask_amocrm.amo import client_for
        from flask_amocrm.amo.auth import OAuthTokens

        client = client_for(get_state())
        assert client.get("/api/v4/account")["id"]
        tokens = client.tokens
        assert isinstance(tokens, OAuthTokens)
        access = tokens.access_token()
        refresh = tokens._load().refresh_token
    assert access and refresh
    assert stored[0].startswith("fernet:") and access not in stored[0]
    assert stored[1].startswith("fernet:") and refresh not in stored[1]


def test_clear_text_tokens_still_read_and_are_encrypted(
    sandbox: Any, amo_app: Any, database_uri: str
) -> None:
    app = _oauth_app(
        amo_app, sandbox, AMOCRM_TOKEN_KEY="k", AMOCRM_DATABASE_URI=database_uri
    )
    with app.app_context():
        from flask_amocrm.amo import client_for
        from flask_amocrm.amo.auth import OAuthTokens

        tokens = client_for(get_state()).tokens
        assert isinstance(tokens, OAuthTokens)
        plain_access = tokens.access_token()
        refresh = tokens._load().refresh_token
    with get_state(app).session() as session:  # as an older version stored them
        session.execute(
            text("UPDATE amocrm_tokens SET access_token=:a, refresh_token=:r"),
            {"a": plain_access, "r": refresh},
        )
        session.commit()
    with app.app_context():
        tokens.forget()
        assert tokens.access_token() == plain_access
    with get_state(app).session() as session:
        stored = session.execute(
            text("SELECT access_token, refresh_token FROM amocrm_tokens")
        ).one()
    assert all(v.startswith("fernet:") for v in stored)
    get_state(app).engine.dispose()


def test_the_token_key_can_be_rotated(sandbox: Any, amo_app: Any) -> None:
    from flask_amocrm.amo import client_for
    from flask_amocrm.errors import AuthError

    old_app = _oauth_app(amo_app, sandbox, AMOCRM_TOKEN_KEY="old key")
    with get_state(old_app).session() as session:
        sealed = session.execute(text("SELECT access_token FROM amocrm_tokens")).one()
    # A new key alone cannot read the rows: events wait with a clear reason.
    wrong = amo_app(**OAUTH, AMOCRM_TOKEN_KEY="new key")
    with wrong.app_context(), pytest.raises(AuthError) as info:
        client_for(get_state()).get("/api/v4/account")
    assert "cannot be decrypted" in str(info.value)
    # The new key first, the old one after it: read with the old, written with new.
    rotated = amo_app(**OAUTH, AMOCRM_TOKEN_KEY=["new key", "old key"])
    with rotated.app_context():
        assert client_for(get_state()).get("/api/v4/account")["id"]
    _expire(rotated)
    with rotated.app_context():
        tokens = client_for(get_state()).tokens
        tokens.forget()  # type: ignore[attr-defined]
        assert client_for(get_state()).get("/api/v4/account")["id"]  # refreshed
    with get_state(rotated).session() as session:
        resealed = session.execute(text("SELECT access_token FROM amocrm_tokens")).one()
    assert resealed[0] != sealed[0] and resealed[0].startswith("fernet:")
    newest = amo_app(**OAUTH, AMOCRM_TOKEN_KEY="new key")
    with newest.app_context():
        assert client_for(get_state()).get("/api/v4/account")["id"]


def test_settings_repr_keeps_secrets_out(make_app: Any) -> None:
    app = make_app(
        AMOCRM_TOKEN=None,
        AMOCRM_CLIENT_ID="client",
        AMOCRM_CLIENT_SECRET="TOP-SECRET-CLIENT-SECRET",
        AMOCRM_REDIRECT_URI="https://site.example/cb",
        AMOCRM_TOKEN_KEY="TOP-SECRET-KEY",
        AMOCRM_DATABASE_URI="sqlite:///:memory:",
    )
    state = get_state(app)
    shown = repr(state.settings) + repr(state)
    assert "TOP-SECRET" not in shown
    app2 = make_app(AMOCRM_TOKEN="LONG-LIVED-SECRET")
    assert "LONG-LIVED-SECRET" not in repr(get_state(app2).settings)


# -- item 27: a running worker notices a changed rules file ----------------------------


def test_a_changed_rules_file_is_reloaded(
    make_app: Any, fast_sandbox: Any, tmp_path: Any
) -> None:
    path = tmp_path / "rules.json"
    path.write_text(
        json.dumps(
            {"forms": {"callback": {"lead": {"name": "Old {{ data.nosuch.x }}"}}}}
        )
    )
    app = make_app(AMOCRM_RULES=str(path), AMOCRM_RATE_LIMIT=50)
    with app.app_context():
        app.extensions["amocrm"].extension.submit("callback", {"name": "Ann"})
    assert deliver_pending(app).get("failed") == 1
    path.write_text(
        json.dumps({"forms": {"callback": {"lead": {"name": "New {{ data.name }}"}}}})
    )
    os.utime(path, (os.path.getmtime(path) + 5, os.path.getmtime(path) + 5))
    result = app.test_cli_runner().invoke(args=["amocrm", "retry", "--failed"])
    assert result.exit_code == 0, result.output
    assert deliver_pending(app).get("delivered") == 1
    assert [lead["name"] for lead in fast_sandbox.leads()] == ["New Ann"]
    status = app.test_cli_runner().invoke(args=["amocrm", "status"])
    assert "rules" in status.output.lower()


# -- item 29: the "token refused" alert fits the kind of token -------------------------


def test_a_refused_long_lived_token_alert_says_to_make_a_new_token(
    make_app: Any, sandbox: Any
) -> None:
    from flask_mail import Mail

    app = make_app(
        AMOCRM_TOKEN="not-a-valid-token",
        AMOCRM_ADMIN_EMAILS=["ops@example.com"],
        MAIL_SUPPRESS_SEND=True,
        MAIL_DEFAULT_SENDER="site@example.com",
    )
    mail = Mail(app)
    with app.app_context():
        app.extensions["amocrm"].extension.submit(
            "callback", {"name": "Ann", "phone": "+79120001122"}
        )
    with mail.record_messages() as outbox:
        deliver_pending(app)
    [message] = outbox
    assert "flask amocrm auth" not in message.body
    assert "AMOCRM_TOKEN" in message.body


# -- item 24: JWT-shaped tokens, and the token's api_domain ------------------------


def test_the_sandbox_issues_jwt_long_lived_tokens_that_deliver(
    make_app: Any, fast_sandbox: Any
) -> None:
    from urllib.parse import urlsplit

    from flask_amocrm.amo.client import token_claims

    token = fast_sandbox.long_lived_token(days=30)
    claims = token_claims(token)
    assert claims["exp"] % 86400 == 0  # midnight UTC, as amoCRM's long-lived tokens
    assert 29 * 86400 < claims["exp"] - utcnow().timestamp() <= 31 * 86400
    assert claims["api_domain"] == urlsplit(fast_sandbox.url).netloc
    app = make_app(AMOCRM_TOKEN=token, AMOCRM_RATE_LIMIT=50)
    with app.app_context():
        app.extensions["amocrm"].extension.submit(
            "callback", {"name": "Ann", "phone": "+79120001122"}
        )
    assert deliver_pending(app).get("delivered") == 1


def test_an_expired_long_lived_jwt_is_not_sent(make_app: Any, sandbox: Any) -> None:
    import base64

    def part(value: dict[str, Any]) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    expired = ".".join(
        [part({"typ": "JWT", "alg": "RS256"}), part({"exp": 1700000000}), "sig"]
    )
    app = make_app(AMOCRM_TOKEN=expired)
    with app.app_context():
        app.extensions["amocrm"].extension.submit(
            "callback", {"name": "Ann", "phone": "+79120001122"}
        )
    assert deliver_pending(app).get("retrying") == 1
    [event] = stored_events(app)
    assert "expired at 2023-11-14" in (event.last_error or "")
    assert [r for r in sandbox.requests() if r["path"].startswith("/api/v4")] == []


def test_a_moved_account_is_found_through_the_tokens_api_domain(
    sandbox: Any, amo_app: Any
) -> None:
    app = _oauth_app(amo_app, sandbox)
    _expire(app)
    with app.app_context():
        app.extensions["amocrm"].extension.submit("callback", {"name": "Ann"})
    sandbox.config(moved_to="renamed.amocrm.ru")
    assert deliver_pending(app).get("retrying") == 1
    [event] = stored_events(app)
    assert "renamed.amocrm.ru" in (event.last_error or "")
    assert "AMOCRM_BASE_URL" in (event.last_error or "")
    with get_state(app).session() as session:
        row = session.scalar(select(Token))
        assert row is not None and row.revoked_at is None  # not spent, not revoked
    lookups = [
        r
        for r in sandbox.requests()
        if r["path"] == "/oauth2/account/current/subdomain"
    ]
    assert [r["status"] for r in lookups] == [200]
