"""Signals: a receiver that raises never reaches the site, and never stops delivery."""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, request

from flask_amocrm import (
    event_captured,
    event_delivered,
    event_failed,
    form_submitted,
    mail_sent,
)
from flask_amocrm.testing import deliver_pending
from tests.helpers.e2e import stored_events


def _boom(sender: Flask, **extra: Any) -> None:
    raise RuntimeError("a receiver of the site broke")


def _site(make_app: Any, **config: Any) -> Flask:
    app: Flask = make_app(**config)

    @app.post("/callback")
    def callback() -> str:
        form_submitted.send(
            current_app._get_current_object(), form="callback", data=request.form
        )
        return "thanks"

    @app.post("/order")
    def order() -> str:
        mail_sent.send(
            current_app._get_current_object(),
            event="ORDER_NEW",
            data=request.get_json(),
        )
        return "ordered"

    return app


def test_raising_receivers_never_reach_the_view_nor_stop_delivery(
    make_app: Any, sandbox: Any
) -> None:
    app = _site(make_app)
    heard: list[str] = []

    def delivered(sender: Flask, event: Any, **extra: Any) -> None:
        heard.append(f"delivered {event.data['name']}")

    # A site's receiver that raises, before and after ones that work, on every
    # signal: the view still answers, the event is stored and delivered, and the
    # receivers after the broken one still hear about it.
    for signal in (form_submitted, event_captured, event_delivered):
        signal.connect(_boom, sender=app)
    event_delivered.connect(delivered, sender=app)
    try:
        response = app.test_client().post(
            "/callback", data={"name": "Ann", "phone": "+79120001122"}
        )
        assert response.status_code == 200
        assert response.text == "thanks"
        assert deliver_pending(app) == {"spooled": 0, "delivered": 1}
    finally:
        for signal in (form_submitted, event_captured, event_delivered):
            signal.disconnect(_boom, sender=app)
        event_delivered.disconnect(delivered, sender=app)
    [event] = stored_events(app)
    assert event.status == "delivered"
    assert heard == ["delivered Ann"]
    assert [lead["name"] for lead in sandbox.leads()] == ["Callback: Ann"]


def test_a_raising_receiver_of_event_failed_does_not_stop_the_batch(
    make_app: Any, sandbox: Any
) -> None:
    rules = {"forms": {"callback": {"lead": {"name": "{{ data.missing.key }}"}}}}
    app = _site(make_app, AMOCRM_RULES=rules)
    event_failed.connect(_boom, sender=app)
    try:
        client = app.test_client()
        assert client.post("/callback", data={"name": "Ann"}).status_code == 200
        assert client.post("/callback", data={"name": "Bob"}).status_code == 200
        assert deliver_pending(app) == {"spooled": 0, "failed": 2}
    finally:
        event_failed.disconnect(_boom, sender=app)
    assert [e.status for e in stored_events(app)] == ["failed", "failed"]
    assert all("missing" in (e.last_error or "") for e in stored_events(app))


def test_mail_sent_with_data_that_is_not_a_mapping_is_kept_as_value(
    make_app: Any,
) -> None:
    app = _site(make_app)
    response = app.test_client().post("/order", json=[1, 2, 3])
    assert response.status_code == 200
    with app.app_context():
        # Sent from outside a request too: never raises into the caller.
        mail_sent.send(app, event="ORDER_NEW", data="a plain string")
        mail_sent.send(app, event="ORDER_NEW", data=42)
    assert [(e.kind, e.source, e.data) for e in stored_events(app)] == [
        ("mail", "ORDER_NEW", {"value": [1, 2, 3]}),
        ("mail", "ORDER_NEW", {"value": "a plain string"}),
        ("mail", "ORDER_NEW", {"value": 42}),
    ]


class _Lazy:
    """A text that is not a str until asked (as Flask-Babel's lazy_gettext)."""

    def __str__(self) -> str:
        return "Order 42"


def test_a_mail_message_whose_fields_are_not_plain_text_is_stored(
    make_app: Any,
) -> None:
    from types import SimpleNamespace

    app = _site(make_app)
    message = SimpleNamespace(
        subject=_Lazy(),
        sender=("Shop", "shop@example.com"),
        recipients=["ann@example.com"],
        body=_Lazy(),
        html=None,
    )
    with app.app_context():
        mail_sent.send(app, event="ORDER_NEW", data={"total": 5}, message=message)
    [event] = stored_events(app)
    assert event.data["total"] == 5
    assert event.data["mail"]["subject"] == "Order 42"
    assert event.data["mail"]["sender"] == "Shop <shop@example.com>"
