"""Spam kept out of amoCRM (issue 14, section 4): the honeypot, the signed form
stamp and its fill time, the per-IP and per-phone rates, the ``spam_check`` hook, and
a person's release (CLI, admin button, real browser), against the sandbox over
HTTP."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from flask import Flask, render_template_string
from itsdangerous import TimestampSigner

from flask_amocrm import Event
from flask_amocrm.testing import deliver_pending
from tests.helpers.browser import shoot
from tests.helpers.e2e import form_site, stored_events
from tests.helpers.sandbox import api_requests
from tests.helpers.xss import CORPUS, assert_inert, watch

RULES: dict[str, Any] = {
    "forms": {
        "callback": {
            "contact": {"name": "{{ data.name }}", "phone": "{{ data.phone }}"},
            "lead": {
                "name": "Callback: {{ data.name }}",
                "note": "{{ data_text }}",
            },
        },
    },
}
PAGE = """<!doctype html><title>Call me</title>
<form method="post" action="/form/callback">
{{ amocrm_form_stamp() }}
<label>Name <input name="name"></label>
<label>Phone <input name="phone"></label>
<button type="submit">Send</button>
</form>"""
EVENTS = "/amocrm/admin/events"


def _site(make_app: Any, **config: Any) -> Flask:
    app = form_site(make_app, RULES, **config)

    @app.get("/call-me")
    def call_me() -> str:
        return render_template_string(PAGE)

    return app


def _hidden(app: Flask) -> dict[str, str]:
    """The inputs ``{{ amocrm_form_stamp() }}`` put in the page, by name."""
    html = app.test_client().get("/call-me").get_data(as_text=True)
    return dict(re.findall(r'name="([^"]+)" value="([^"]*)"', html))


def _post(app: Flask, ip: str = "198.51.100.1", **data: str) -> None:
    app.test_client().post(
        "/form/callback", data=data, environ_base={"REMOTE_ADDR": ip}
    ).close()


def _event(app: Flask, event_id: int) -> Event:
    return next(e for e in stored_events(app) if e.id == event_id)


def test_the_helper_renders_a_signed_stamp_and_a_hidden_honeypot(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app)
    html = app.test_client().get("/call-me").get_data(as_text=True)
    hidden = _hidden(app)
    assert set(hidden) == {"amocrm_stamp", "amocrm_website"}
    assert hidden["amocrm_website"] == ""
    assert 'tabindex="-1"' in html and 'aria-hidden="true"' in html
    # the stamp is the signed time the page was shown, with the app's key
    value = hidden["amocrm_stamp"]
    signer = TimestampSigner("test", salt="flask-amocrm.form-stamp")
    _, when = signer.unsign(value, return_timestamp=True)
    assert abs(when.timestamp() - time.time()) < 60


def test_a_honeypot_bot_is_spam_and_nothing_reaches_amocrm(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app)
    _post(app, name="Bot", phone="+79120000001", amocrm_website="http://casino.example")
    assert deliver_pending(app) == {"spooled": 0, "spam": 1}
    [event] = stored_events(app)
    assert event.status == "spam"
    assert "amocrm_website" in (event.last_error or "")
    assert (
        event.context["spam"]["reasons"] and event.context["spam"]["verdict"] == "spam"
    )
    # the honeypot is kept for the record, out of what the rules see
    assert "amocrm_website" not in event.data
    assert event.context["spam"]["fields"]["amocrm_website"] == "http://casino.example"
    assert api_requests(fast_sandbox) == []
    assert fast_sandbox.leads() == []
    # judged once: another run sends nothing either
    assert deliver_pending(app) == {"spooled": 0}
    assert api_requests(fast_sandbox) == []


def test_a_one_second_submission_is_spam_a_slow_human_is_delivered(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app)  # AMOCRM_MIN_FILL_SECONDS: 3 by default
    bot = _hidden(app)
    human = _hidden(app)
    time.sleep(1.0)
    _post(app, name="Quick", phone="+79120000002", **bot)
    time.sleep(2.5)
    _post(app, name="Olga", phone="+79120000003", **human)
    assert deliver_pending(app) == {"spooled": 0, "spam": 1, "delivered": 1}
    quick, olga = stored_events(app)
    assert quick.status == "spam"
    assert "after the form was shown" in (quick.last_error or "")
    assert olga.status == "delivered"
    [lead] = fast_sandbox.leads()
    assert lead["name"] == "Callback: Olga"
    # the stamp and the honeypot never reach amoCRM
    [note] = fast_sandbox.notes("leads")
    text = note["params"]["text"]
    assert "Olga" in text
    assert "amocrm_stamp" not in text and "amocrm_website" not in text
    assert human["amocrm_stamp"] not in str(fast_sandbox.requests())
    assert "Quick" not in str(fast_sandbox.requests())


def test_a_forged_stamp_and_a_missing_required_one_are_spam(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app, AMOCRM_FORM_STAMP_REQUIRED=["callback"])
    other_key = TimestampSigner("not-the-site-key", salt="flask-amocrm.form-stamp")
    old = str(int(time.time()) - 600)
    _post(app, name="Forger", amocrm_stamp=other_key.sign(b"form").decode())
    _post(app, name="Nostamp", phone="+79120000004")
    _post(app, name="Garbage", amocrm_stamp=f"form.{old}.x")
    assert deliver_pending(app) == {"spooled": 0, "spam": 3}
    forger, nostamp, garbage = stored_events(app)
    assert "forged" in (forger.last_error or "")
    assert "no stamp" in (nostamp.last_error or "")
    assert "forged" in (garbage.last_error or "")
    assert api_requests(fast_sandbox) == []


def test_without_a_stamp_or_honeypot_in_the_form_nothing_is_judged(
    make_app: Any, fast_sandbox: Any
) -> None:
    # the defaults never hold a plain form that does not carry the helper
    app = _site(make_app)
    _post(app, name="Plain", phone="+79120000005")
    assert deliver_pending(app) == {"spooled": 0, "delivered": 1}
    [event] = stored_events(app)
    assert event.context["spam"]["verdict"] == "passed"


def test_a_burst_from_one_ip_is_spam_past_the_limit(
    make_app: Any, fast_sandbox: Any, database_uri: str
) -> None:
    app = _site(make_app, AMOCRM_DATABASE_URI=database_uri, AMOCRM_SPAM_MAX_PER_IP=3)
    for i in range(5):
        _post(app, ip="203.0.113.9", name=f"Burst{i}", phone=f"+7912100000{i}")
    _post(app, ip="203.0.113.10", name="Neighbour", phone="+79121000009")
    counts = deliver_pending(app)
    assert counts == {"spooled": 0, "delivered": 4, "spam": 2}
    events = stored_events(app)
    assert [e.status for e in events] == [
        "delivered",
        "delivered",
        "delivered",
        "spam",
        "spam",
        "delivered",
    ]
    assert "4 forms from this IP within 60 min (at most 3)" in (
        events[3].last_error or ""
    )
    assert "5 forms from this IP" in (events[4].last_error or "")
    names = sorted(lead["name"] for lead in fast_sandbox.leads())
    assert names == [
        "Callback: Burst0",
        "Callback: Burst1",
        "Callback: Burst2",
        "Callback: Neighbour",
    ]
    # judged again (a retry), the event is not counted twice: the same answer
    runner = app.test_cli_runner()
    result = runner.invoke(args=["amocrm", "retry", str(events[3].id)])
    assert result.exit_code == 0, result.output
    assert deliver_pending(app) == {"spooled": 0, "spam": 1}
    again = _event(app, events[3].id)
    assert again.status == "spam"
    assert "4 forms from this IP within 60 min (at most 3)" in (again.last_error or "")
    assert len(fast_sandbox.leads()) == 4


def test_the_same_phone_from_many_ips_is_spam_past_the_limit(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app, AMOCRM_SPAM_MAX_PER_PHONE=2)
    for i, phone in enumerate(["+7 912 200-00-01", "8 (912) 200-00-01", "89122000001"]):
        _post(app, ip=f"192.0.2.{i + 1}", name=f"Caller{i}", phone=phone)
    assert deliver_pending(app) == {"spooled": 0, "delivered": 2, "spam": 1}
    third = stored_events(app)[2]
    assert "3 forms with this phone within 60 min (at most 2)" in (
        third.last_error or ""
    )


def test_the_spam_check_hook(make_app: Any, fast_sandbox: Any, caplog: Any) -> None:
    app = _site(make_app)
    amocrm = app.extensions["amocrm"].extension

    @amocrm.spam_check
    def captcha(event: Event) -> str | None:
        return "the captcha was not solved" if event.data.get("name") == "Bot" else None

    @amocrm.spam_check(form="callback")
    def flaky(event: Event) -> bool:
        if event.data.get("name") == "Flaky":
            raise ValueError("the spam service is down")
        return event.data.get("name") == "Yes"

    _post(app, name="Bot", phone="+79120000006")
    _post(app, name="Flaky", phone="+79120000007")
    _post(app, name="Yes", phone="+79120000008")
    _post(app, name="Fine", phone="+79120000009")
    caplog.set_level("WARNING", logger="flask_amocrm.worker")
    assert deliver_pending(app) == {"spooled": 0, "spam": 2, "delivered": 2}
    bot, flaky_event, yes, fine = stored_events(app)
    assert bot.status == "spam"
    assert bot.last_error == "Spam: the captcha was not solved"
    # a hook that raises is logged and does not make the event spam
    assert flaky_event.status == "delivered"
    assert any("spam_check hook" in line for line in flaky_event.log)
    assert "raised ValueError" in caplog.text
    assert "the spam service is down" not in caplog.text
    assert yes.status == "spam" and "flaky" in (yes.last_error or "")
    assert fine.status == "delivered"
    assert sorted(lead["name"] for lead in fast_sandbox.leads()) == [
        "Callback: Fine",
        "Callback: Flaky",
    ]


def test_release_from_the_cli_delivers_it_once(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app, AMOCRM_DELIVERY="inline")
    _post(app, name="Real person", phone="+79120000010", amocrm_website="oops")
    [event] = stored_events(app)
    assert event.status == "spam"
    assert api_requests(fast_sandbox) == []
    runner = app.test_cli_runner()
    status = runner.invoke(args=["amocrm", "status"])
    assert "spam       1" in status.output
    assert "Held as spam (1)" in status.output and "amocrm_website" in status.output
    result = runner.invoke(args=["amocrm", "release", str(event.id), "--by", "Olga"])
    assert result.exit_code == 0, result.output
    assert f"Event {event.id} released: delivered" in result.output
    released = _event(app, event.id)
    assert released.status == "delivered"
    assert released.context["spam"]["released"]["by"] == "Olga"
    assert any("Released from spam by Olga" in line for line in released.log)
    [lead] = fast_sandbox.leads()
    assert lead["name"] == "Callback: Real person"
    # the honeypot's content never went to amoCRM, even released
    assert "oops" not in str(fast_sandbox.requests())
    # once: a second release and another run change nothing
    again = runner.invoke(args=["amocrm", "release", str(event.id)])
    assert again.exit_code != 0 and "not spam" in again.output
    assert deliver_pending(app) == {"spooled": 0}
    assert len(fast_sandbox.leads()) == 1
    missing = runner.invoke(args=["amocrm", "release", "999"])
    assert missing.exit_code != 0 and "no event 999" in missing.output


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def test_release_from_the_admin_with_the_test_client(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app, AMOCRM_ADMIN_AUTH=lambda: True)
    _post(app, name="Anna", phone="+79120000011", amocrm_website="x")
    assert deliver_pending(app) == {"spooled": 0, "spam": 1}
    [event] = stored_events(app)
    client = app.test_client()
    listing = client.get(f"{EVENTS}?status=spam").get_data(as_text=True)
    assert f"/events/{event.id}" in listing and "am-s-spam" in listing
    page = client.get(f"{EVENTS}/{event.id}").get_data(as_text=True)
    assert "Release" in page and "amocrm_website" in page
    # without the CSRF token: refused, still spam
    bad = client.post(f"{EVENTS}/{event.id}/release", data={"who": "Olga"})
    assert bad.status_code == 400
    assert _event(app, event.id).status == "spam"
    answer = client.post(
        f"{EVENTS}/{event.id}/release",
        data={"who": "Olga", "csrf_token": _csrf(page)},
        follow_redirects=True,
    )
    assert "is released" in answer.get_data(as_text=True)
    assert _event(app, event.id).status == "retrying"
    assert deliver_pending(app) == {"spooled": 0, "delivered": 1}
    assert [lead["name"] for lead in fast_sandbox.leads()] == ["Callback: Anna"]
    assert deliver_pending(app) == {"spooled": 0}
    assert len(fast_sandbox.leads()) == 1


@pytest.mark.parametrize("locale", ["en", "ru"])
def test_release_in_a_browser(
    make_app: Any,
    fast_sandbox: Any,
    serve: Any,
    page: Any,
    page_ru: Any,
    locale: str,
) -> None:
    tab = page if locale == "en" else page_ru
    app = _site(make_app, AMOCRM_ADMIN_AUTH=lambda: True, AMOCRM_DELIVERY="inline")
    base = serve(app)
    # a person fills the real form in the browser, slowly: delivered
    tab.goto(f"{base}/call-me")
    tab.fill("input[name=name]", "Slow human")
    tab.fill("input[name=phone]", "+79120000012")
    # the honeypot is off the screen: a person never sees it
    box = tab.locator("input[name=amocrm_website]").bounding_box()
    assert box is None or box["x"] + box["width"] <= 0
    time.sleep(3.2)
    tab.click("text=Send")
    # a bot fills every field it finds, the hidden one too, at once: spam
    tab.goto(f"{base}/call-me")
    tab.fill("input[name=name]", "Bot")
    tab.fill("input[name=amocrm_website]", "http://casino.example", force=True)
    tab.click("text=Send")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        statuses = [e.status for e in stored_events(app)]
        if statuses == ["delivered", "spam"]:
            break
        time.sleep(0.1)
    human, bot = stored_events(app)
    assert (human.status, bot.status) == ("delivered", "spam")
    assert [lead["name"] for lead in fast_sandbox.leads()] == ["Callback: Slow human"]
    tab.goto(f"{base}{EVENTS}?status=spam")
    assert tab.locator(f'a[href$="/events/{bot.id}"]').count() >= 1
    tab.goto(f"{base}{EVENTS}/{bot.id}")
    badge = tab.locator("h1 .am-badge").inner_text()
    assert badge == ("spam" if locale == "en" else "спам")
    shoot(tab, f"event-spam-{locale}")
    tab.fill("input[name=who]", "Olga")
    tab.click(
        "button:has-text('Release')" if locale == "en" else "button:has-text('Не спам')"
    )
    assert tab.locator(".am-flash").count() == 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _event(app, bot.id).status != "delivered":
        time.sleep(0.1)
    released = _event(app, bot.id)
    assert released.status == "delivered", (released.last_error, released.log)
    names = sorted(lead["name"] for lead in fast_sandbox.leads())
    assert names == ["Callback: Bot", "Callback: Slow human"]
    assert "casino" not in str(fast_sandbox.requests())


def test_hostile_reasons_and_honeypot_values_are_inert_on_the_admin_page(
    make_app: Any, fast_sandbox: Any, serve: Any, page: Any
) -> None:
    app = _site(make_app, AMOCRM_ADMIN_AUTH=lambda: True)

    @app.extensions["amocrm"].extension.spam_check
    def hostile(event: Event) -> str:
        return " | ".join(CORPUS)

    _post(app, name=CORPUS[1], amocrm_website=CORPUS[0])
    assert deliver_pending(app) == {"spooled": 0, "spam": 1}
    [event] = stored_events(app)
    opened = watch(page)
    page.goto(f"{serve(app)}{EVENTS}/{event.id}")
    assert_inert(page, opened)
    shown = page.locator("main").inner_text()
    for value in CORPUS:
        assert value.strip() in shown
    shoot(page, "event-spam-hostile")


def test_without_a_secret_key_the_page_still_renders_with_the_honeypot(
    make_app: Any, fast_sandbox: Any, caplog: Any
) -> None:
    app = _site(make_app, SECRET_KEY=None, AMOCRM_HONEYPOT_FIELD="fax_number")
    answer = app.test_client().get("/call-me")
    assert answer.status_code == 200
    assert set(_hidden(app)) == {"fax_number"}
    assert "no SECRET_KEY" in caplog.text
    _post(app, name="Bot", fax_number="+1 555 0100")
    _post(app, name="Person", phone="+79120000013", fax_number="")
    assert deliver_pending(app) == {"spooled": 0, "spam": 1, "delivered": 1}
    bot, person = stored_events(app)
    assert "fax_number" in (bot.last_error or "")
    assert "fax_number" not in person.data
    assert [lead["name"] for lead in fast_sandbox.leads()] == ["Callback: Person"]
