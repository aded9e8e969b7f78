"""Capturing events: the outbox row, the visit's context, campaign tags, failures."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask, current_app, request
from werkzeug.datastructures import MultiDict

from flask_amocrm import event_captured, form_submitted, mail_sent
from flask_amocrm.testing import record_events
from tests.helpers.e2e import stored_events


def _with_form_view(app: Flask) -> Flask:
    @app.route("/")
    def landing() -> str:
        return "landing"

    @app.route("/about")
    def about() -> str:
        return "about"

    @app.post("/callback")
    def callback() -> str:
        form_submitted.send(
            current_app._get_current_object(), form="callback", data=request.form
        )
        return "thanks"

    return app


def test_form_signal_stores_the_event_with_its_context(make_app: Any) -> None:
    app = _with_form_view(make_app())
    client = app.test_client()
    response = client.post(
        "/callback?utm_source=google&gclid=abc123",
        data=MultiDict(
            [
                ("name", "Ann"),
                ("phone", "+7 912 000-11-22"),
                ("interest", "a"),
                ("interest", "b"),
            ]
        ),
        headers={"User-Agent": "TestBrowser/1.0", "Referer": "https://search.example/"},
        environ_base={"REMOTE_ADDR": "203.0.113.7"},
    )
    assert response.status_code == 200
    [event] = stored_events(app)
    assert event.kind == "form"
    assert event.source == "callback"
    assert event.status == "pending"
    assert event.data == {
        "name": "Ann",
        "phone": "+7 912 000-11-22",
        "interest": ["a", "b"],
    }
    context = event.context
    assert context["utm"] == {"utm_source": "google", "gclid": "abc123"}
    assert context["client"]["ip"] == "203.0.113.7"
    assert context["client"]["user_agent"] == "TestBrowser/1.0"
    assert context["page"]["url"].startswith("http://localhost/callback")
    assert context["page"]["referrer"] == "https://search.example/"
    assert context["site"]["domain"] == "localhost"
    assert len(event.uid) == 32
    assert event.created_at is not None


def test_campaign_tags_survive_three_pages_by_cookie(make_app: Any) -> None:
    app = _with_form_view(make_app(AMOCRM_SITE_NAME="Shop"))
    client = app.test_client()
    landing = client.get(
        "/?utm_source=yandex&utm_medium=cpc&utm_campaign=winter",
        headers={"Referer": "https://ya.ru/search"},
    )
    assert "amocrm_utm=" in landing.headers["Set-Cookie"]
    client.get("/about")
    client.get("/about")
    client.post("/callback", data={"name": "Bob", "phone": "89120001122"})
    [event] = stored_events(app)
    assert event.context["utm"]["utm_source"] == "yandex"
    assert event.context["utm"]["utm_campaign"] == "winter"
    assert event.context["page"]["landing"] == "http://localhost/"
    assert event.context["page"]["landing_referrer"] == "https://ya.ru/search"
    assert event.context["site"]["name"] == "Shop"


def test_first_touch_is_kept_and_last_touch_follows(make_app: Any) -> None:
    app = _with_form_view(make_app())
    client = app.test_client()
    client.get("/?utm_source=google&utm_campaign=first")
    client.get("/about?utm_source=facebook&fbclid=fb1")
    client.post("/callback", data={"name": "Cid"})
    [event] = stored_events(app)
    assert event.context["utm_first"]["utm_source"] == "google"
    assert event.context["utm_first"]["utm_campaign"] == "first"
    assert event.context["utm"] == {"utm_source": "facebook", "fbclid": "fb1"}


def test_session_and_csrf_cookies_are_not_copied(make_app: Any) -> None:
    app = _with_form_view(make_app())
    client = app.test_client()
    client.set_cookie("session", "secret-session")
    client.set_cookie("csrf_token", "secret")
    client.set_cookie("_ym_uid", "1700000000123")
    client.post("/callback", data={"name": "Dee"})
    [event] = stored_events(app)
    assert event.context["cookies"] == {"_ym_uid": "1700000000123"}
    assert event.context["utm"]["_ym_uid"] == "1700000000123"


def test_garbage_campaign_cookie_is_ignored(make_app: Any) -> None:
    app = _with_form_view(make_app())
    client = app.test_client()
    client.set_cookie("amocrm_utm", "{not json")
    assert (
        client.post("/callback?utm_source=x", data={"name": "Eve"}).status_code == 200
    )
    [event] = stored_events(app)
    assert event.context["utm"] == {"utm_source": "x"}


def test_capture_outside_a_request(make_app: Any) -> None:
    app = make_app(AMOCRM_SITE_NAME="Shop")
    with app.app_context():
        mail_sent.send(app, event="ORDER_NEW", data={"order": 17, "total": "990.50"})
    [event] = stored_events(app)
    assert event.kind == "mail"
    assert event.source == "ORDER_NEW"
    assert event.data == {"order": 17, "total": "990.50"}
    assert event.context["site"]["name"] == "Shop"
    assert event.context["utm"] == {}
    assert event.context["page"] == {}


def test_submit_is_the_same_as_the_signal(make_app: Any) -> None:
    app = make_app()
    amocrm = app.extensions["amocrm"].extension
    with app.test_request_context("/x?utm_term=sofa"), record_events(app) as events:
        event = amocrm.submit(
            "callback", {"name": "Fay"}, files={"cv": "https://cdn.example/cv.pdf"}
        )
    assert event is not None and [e.id for e in events] == [event.id]
    assert event.files == [
        {"field": "cv", "name": "cv.pdf", "url": "https://cdn.example/cv.pdf"}
    ]
    assert event.context["utm"] == {"utm_term": "sofa"}


def test_flask_mail_messages_tagged_for_amocrm_are_captured(make_app: Any) -> None:
    from flask_mail import Mail, Message

    app = make_app(MAIL_SUPPRESS_SEND=True, MAIL_DEFAULT_SENDER="shop@example.com")
    mail = Mail(app)
    with app.app_context():
        tagged = Message(
            "Order 17",
            recipients=["boss@example.com"],
            body="Sofa",
            extra_headers={"X-AmoCRM-Event": "ORDER_NEW"},
        )
        mail.send(tagged)
        mail.send(Message("Newsletter", recipients=["a@example.com"], body="Hi"))
        mail.send(
            Message(
                "amoCRM is down",
                recipients=["admin@example.com"],
                body="...",
                extra_headers={"X-AmoCRM-Alert": "1", "X-AmoCRM-Event": "ORDER_NEW"},
            )
        )
    [event] = stored_events(app)
    assert event.source == "ORDER_NEW"
    assert event.data["mail"]["subject"] == "Order 17"
    assert event.data["mail"]["recipients"] == ["boss@example.com"]
    assert event.data["mail"]["body"] == "Sofa"


def test_other_apps_do_not_hear_the_signal(make_app: Any) -> None:
    first, second = make_app(), make_app()
    with first.app_context():
        form_submitted.send(first, form="callback", data={"name": "Only first"})
    assert len(stored_events(first)) == 1
    assert stored_events(second) == []


def test_a_broken_database_never_breaks_the_view(
    make_app: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    app = _with_form_view(
        make_app(AMOCRM_DATABASE_URI=f"sqlite:///{tmp_path}/a-file/y.db")
    )
    client = app.test_client()
    response = client.post("/callback", data={"name": "Gus", "phone": "123"})
    assert response.status_code == 200
    assert response.text == "thanks"
    assert "could not store an event" in caplog.text
    # the lead is not lost: it waits in the spool file for 'flask amocrm process'
    spool = (tmp_path / "instance0" / "amocrm-spool.jsonl").read_text().splitlines()
    assert json.loads(spool[0])["data"] == {"name": "Gus", "phone": "123"}


def test_spooled_events_are_stored_by_process(make_app: Any, tmp_path: Any) -> None:
    app = make_app()
    instance = tmp_path / "instance0"
    instance.mkdir()
    record = {
        "kind": "form",
        "source": "callback",
        "data": {"name": "Hal"},
        "files": [],
        "context": {},
        "dedupe_key": None,
    }
    (instance / "amocrm-spool.jsonl").write_text(json.dumps(record) + "\n")
    result = app.test_cli_runner().invoke(args=["amocrm", "process", "--limit", "0"])
    assert result.exit_code == 0, result.output
    assert "spooled: 1" in result.output.splitlines()
    assert [e.data for e in stored_events(app)] == [{"name": "Hal"}]
    assert not (instance / "amocrm-spool.jsonl").exists()


def test_receivers_of_event_captured_may_fail(make_app: Any) -> None:
    app = _with_form_view(make_app())

    def broken(sender: Flask, **extra: Any) -> None:
        raise ValueError("receiver bug")

    with event_captured.connected_to(broken, sender=app):
        response = app.test_client().post("/callback", data={"name": "Ivy"})
    assert response.status_code == 200
    assert len(stored_events(app)) == 1


def test_campaign_cookie_survives_a_real_http_client(make_app: Any) -> None:
    """Browsers and HTTP libraries parse cookies differently from the test client."""
    import requests

    from tests.helpers.http import serving

    app = _with_form_view(make_app())
    with serving(app, threaded=False) as base, requests.Session() as session:
        session.get(f"{base}/?utm_source=vk&utm_content=banner").close()
        session.get(f"{base}/about").close()
        session.post(f"{base}/callback", data={"name": "Kim"}).close()
    [event] = stored_events(app)
    assert event.context["utm"] == {"utm_source": "vk", "utm_content": "banner"}


def test_a_mail_rule_can_pick_mails_by_subject(make_app: Any) -> None:
    from flask_mail import Mail, Message

    rules = {
        "mails": {
            "ORDER_NEW": {
                "subject": "New order #*",
                "lead": {"name": "{{ mail.subject }}"},
            }
        }
    }
    app = make_app(
        AMOCRM_RULES=rules,
        MAIL_SUPPRESS_SEND=True,
        MAIL_DEFAULT_SENDER="shop@example.com",
    )
    mail = Mail(app)
    with app.app_context():
        mail.send(Message("new ORDER #17", recipients=["boss@example.com"], body="x"))
        mail.send(Message("Your password", recipients=["a@example.com"], body="y"))
    [event] = stored_events(app)
    assert (event.kind, event.source) == ("mail", "ORDER_NEW")
    assert event.data["mail"]["subject"] == "new ORDER #17"


def test_a_bad_subject_pattern_is_refused_at_init(make_app: Any) -> None:
    with pytest.raises(RuntimeError, match="mails.ORDER_NEW.subject must be"):
        make_app(AMOCRM_RULES={"mails": {"ORDER_NEW": {"subject": 5}}})
