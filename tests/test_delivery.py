"""Delivering events to the sandbox: rq, inline and deferred modes, and outcomes."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from flask import Flask, current_app, request

from flask_amocrm import Event, event_delivered, event_failed, form_submitted
from flask_amocrm.testing import deliver_pending
from tests.helpers.e2e import field_values, stored_events
from tests.helpers.process import child_env, site_module


def _with_form_view(app: Flask) -> Flask:
    @app.post("/callback")
    def callback() -> str:
        form_submitted.send(
            current_app._get_current_object(),
            form=request.args.get("form", "callback"),
            data=request.form,
        )
        return "thanks"

    return app


def _assert_ann_delivered(app: Flask, sandbox: Any) -> Event:
    [event] = stored_events(app)
    assert event.status == "delivered", event.last_error
    [lead] = sandbox.leads()
    assert lead["name"] == "Callback: Ann"
    assert lead["id"] == event.remote["lead_id"]
    [contact] = sandbox.contacts()
    assert contact["id"] == event.remote["contact_id"]
    assert contact["name"] == "Ann"
    assert field_values(contact, "PHONE") == ["+79120001122"]
    assert event.attempts == 1
    assert event.delivered_at is not None
    return event


@pytest.mark.parametrize("command", ["flask", "rq"])
def test_rq_mode_delivers_through_a_real_worker(
    make_app: Any,
    sandbox: Any,
    redis_conn: Any,
    redis_url: str,
    tmp_path: Any,
    command: str,
) -> None:
    app = _with_form_view(make_app(AMOCRM_DELIVERY="rq", AMOCRM_REDIS_URL=redis_url))
    response = app.test_client().post(
        "/callback?utm_source=newsletter", data={"name": "Ann", "phone": "+79120001122"}
    )
    assert response.status_code == 200
    assert redis_conn.llen("rq:queue:amocrm") == 0  # queued once the response is done
    response.close()
    [event] = stored_events(app)
    assert event.status == "pending"
    assert redis_conn.lrange("rq:queue:amocrm", 0, -1) == [
        f"amocrm-event-{event.id}".encode()
    ]

    config = {k: v for k, v in app.config.items() if k.startswith("AMOCRM_")}
    path = site_module(tmp_path, config)
    env = child_env(path, FLASK_APP="site_app")
    bindir = os.path.dirname(sys.executable)
    args = (
        [f"{bindir}/flask", "amocrm", "worker", "--burst"]
        if command == "flask"
        else [f"{bindir}/rq", "worker", "--burst", "--url", redis_url, "amocrm"]
    )
    done = subprocess.run(
        args, env=env, cwd=path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    print("worker output:", done.stdout, done.stderr)  # shown if the test fails
    event = _assert_ann_delivered(app, sandbox)
    [lead] = sandbox.leads()
    assert field_values(lead, "UTM_SOURCE") == ["newsletter"]


def test_inline_mode_delivers_after_the_response(make_app: Any, sandbox: Any) -> None:
    app = _with_form_view(make_app(AMOCRM_DELIVERY="inline"))
    delivered: list[Event] = []

    def on_delivered(sender: Flask, event: Event, **extra: Any) -> None:
        delivered.append(event)

    with event_delivered.connected_to(on_delivered, sender=app):
        response = app.test_client().post(
            "/callback", data={"name": "Ann", "phone": "+79120001122"}
        )
        assert response.status_code == 200
        response.close()
    _assert_ann_delivered(app, sandbox)
    assert [e.source for e in delivered] == ["callback"]


def test_redis_down_at_capture_keeps_the_event_pending(
    make_app: Any, sandbox: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = _with_form_view(
        make_app(AMOCRM_DELIVERY="rq", AMOCRM_REDIS_URL="redis://127.0.0.1:1/0")
    )
    response = app.test_client().post(
        "/callback", data={"name": "Ann", "phone": "+79120001122"}
    )
    assert response.status_code == 200
    response.close()
    [event] = stored_events(app)
    assert event.status == "pending"
    assert "could not hand it on" in caplog.text
    assert sandbox.leads() == []
    result = app.test_cli_runner().invoke(args=["amocrm", "process"])
    assert result.exit_code == 0, result.output
    _assert_ann_delivered(app, sandbox)


def test_deferred_mode_only_stores(make_app: Any, sandbox: Any) -> None:
    app = _with_form_view(make_app(AMOCRM_DELIVERY="deferred"))
    app.test_client().post("/callback", data={"name": "Ann", "phone": "+79120001122"})
    assert sandbox.leads() == []
    assert deliver_pending(app) == {"spooled": 0, "delivered": 1}
    _assert_ann_delivered(app, sandbox)
    # a second run finds nothing due and sends nothing twice
    assert deliver_pending(app) == {"spooled": 0}
    assert len(sandbox.leads()) == 1


def test_an_event_without_a_rule_is_kept_as_ignored(
    make_app: Any, sandbox: Any
) -> None:
    app = _with_form_view(make_app())
    app.test_client().post("/callback?form=unknown", data={"name": "Zed"})
    assert deliver_pending(app)["ignored"] == 1
    [event] = stored_events(app)
    assert event.status == "ignored"
    assert event.data == {"name": "Zed"}
    assert sandbox.leads() == []


def test_a_template_error_fails_the_event_with_a_readable_reason(
    make_app: Any, sandbox: Any
) -> None:
    app = _with_form_view(make_app())
    failures: list[str] = []

    def on_failed(sender: Flask, event: Event, error: str, **extra: Any) -> None:
        failures.append(error)

    app.test_client().post("/callback", data={"name": "NoPhone"})
    with event_failed.connected_to(on_failed, sender=app):
        assert deliver_pending(app)["failed"] == 1
    [event] = stored_events(app)
    assert event.status == "failed"
    assert "forms.callback.contact.fields.PHONE" in event.last_error
    assert "phone" in event.last_error
    assert failures == [event.last_error]
    assert sandbox.leads() == []
    # a person fixes the form data's rule and retries: it is delivered
    app.extensions["amocrm"].settings.rules["forms"]["callback"]["contact"]["fields"][
        "PHONE"
    ] = "{{ data.phone | default('') }}"
    result = app.test_cli_runner().invoke(args=["amocrm", "retry", str(event.id)])
    assert result.exit_code == 0, result.output
    assert deliver_pending(app)["delivered"] == 1
    assert [lead["name"] for lead in sandbox.leads()] == ["Callback: NoPhone"]


def test_amocrm_down_means_retrying_not_lost(make_app: Any, sandbox: Any) -> None:
    app = _with_form_view(make_app())
    app.test_client().post("/callback", data={"name": "Ann", "phone": "+79120001122"})
    sandbox.faults(status=503, count=1, method="POST", path="/api/v4/leads/complex")
    assert deliver_pending(app)["retrying"] == 1
    [event] = stored_events(app)
    assert event.status == "retrying"
    assert "ServerError" in event.last_error and "503" in event.last_error
    assert event.next_attempt_at is not None
    # not due yet: nothing happens
    assert deliver_pending(app) == {"spooled": 0}
    with app.app_context(), app.extensions["amocrm"].session() as session:
        session.get(Event, event.id).next_attempt_at = None
        session.commit()
    assert deliver_pending(app)["delivered"] == 1
    [event] = stored_events(app)
    assert event.attempts == 2
    assert [a.outcome for a in _attempts(app, event.id)] == ["retrying", "delivered"]
    assert len(sandbox.leads()) == 1


def _attempts(app: Flask, event_id: int) -> list[Any]:
    from flask_amocrm.models import EventAttempt

    with app.app_context(), app.extensions["amocrm"].session() as session:
        return list(
            session.query(EventAttempt)
            .filter_by(event_id=event_id)
            .order_by(EventAttempt.id)
        )


def test_status_command_counts_events(make_app: Any, sandbox: Any) -> None:
    app = _with_form_view(make_app())
    client = app.test_client()
    client.post("/callback", data={"name": "Ann", "phone": "1"})
    client.post("/callback?form=other", data={"name": "B"})
    deliver_pending(app)
    output = app.test_cli_runner().invoke(args=["amocrm", "status"]).output
    assert "delivered  1" in output
    assert "ignored    1" in output
    assert "pending    0" in output


def test_inline_mode_retries_due_events_with_the_next_form(
    make_app: Any, sandbox: Any
) -> None:
    app = _with_form_view(make_app(AMOCRM_DELIVERY="inline"))
    client = app.test_client()
    sandbox.faults(status=503, count=1, method="POST", path="/api/v4/leads/complex")
    client.post("/callback", data={"name": "Ann", "phone": "+79120001122"}).close()
    [event] = stored_events(app)
    assert event.status == "retrying"
    with app.app_context(), app.extensions["amocrm"].session() as session:
        session.get(Event, event.id).next_attempt_at = None  # its time has come
        session.commit()
    client.post("/callback", data={"name": "Bob", "phone": "+79120003344"}).close()
    assert [e.status for e in stored_events(app)] == ["delivered", "delivered"]
    assert sorted(lead["name"] for lead in sandbox.leads()) == [
        "Callback: Ann",
        "Callback: Bob",
    ]


def test_a_campaign_tag_the_account_has_no_field_for_is_left_out(
    make_app: Any, sandbox: Any
) -> None:
    app = _with_form_view(make_app())
    app.test_client().post(
        "/callback?utm_source=mail&from=newsletter",
        data={"name": "Ann", "phone": "+79120001122"},
    )
    assert deliver_pending(app)["delivered"] == 1
    [lead] = sandbox.leads()
    assert field_values(lead, "UTM_SOURCE") == ["mail"]
    assert field_values(lead, "FROM") == []  # the sandbox account has no FROM field


def test_retry_of_a_delivered_event_is_refused_and_sends_nothing(
    make_app: Any, sandbox: Any
) -> None:
    """``flask amocrm retry ID`` takes a waiting, failed or ended-early event; a
    delivered one (or one a worker holds) is left as it is: nothing twice."""
    app = _with_form_view(make_app())
    app.test_client().post("/callback", data={"name": "Ann", "phone": "+79120001122"})
    assert deliver_pending(app)["delivered"] == 1
    [event] = stored_events(app)
    result = app.test_cli_runner().invoke(args=["amocrm", "retry", str(event.id)])
    assert result.exit_code != 0
    assert "delivered" in result.output
    [again] = stored_events(app)
    assert again.status == "delivered"
    assert deliver_pending(app).get("delivered", 0) == 0
    assert [lead["name"] for lead in sandbox.leads()] == ["Callback: Ann"]
