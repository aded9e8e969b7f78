"""Consent evidence (issue 14, section 3): what the visitor agreed to, the text's
version, the time and the IP kept on the event and put in a note and a field by the
rules; a rule's ``consent = "required"`` ending an event without it ``failed``,
against the sandbox over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import update

from flask_amocrm import Event, event_failed
from flask_amocrm.testing import deliver_pending
from tests.helpers.browser import shoot
from tests.helpers.e2e import field_values, form_site, stored_events
from tests.helpers.xss import CORPUS, assert_inert, watch

CONSENT = {
    "agree_pd": "Privacy policy v3 (2025-09-01)",
    "agree_ads": "Newsletter consent v1",
}


def _rules(**callback: Any) -> dict[str, Any]:
    return {
        "forms": {
            "callback": {
                "contact": {"name": "{{ data.name }}", "phone": "{{ data.phone }}"},
                "lead": {
                    "name": "Callback: {{ data.name }}",
                    "fields": {
                        "Lead Comment": "{% if consent.agree_pd.given %}"
                        "{{ consent.agree_pd.version }} at {{ consent.agree_pd.at }}"
                        " from {{ consent.agree_pd.ip }}{% endif %}"
                    },
                    "note": "{{ consent_text }}",
                },
                **callback,
            },
            "subscribe": {
                "lead": {"name": "Subscribe: {{ data.email }}"},
                "consent": ["agree_ads"],
            },
        },
    }


def _site(make_app: Any, rules: dict[str, Any] | None = None, **config: Any) -> Flask:
    config.setdefault("AMOCRM_CONSENT_FIELDS", CONSENT)
    return form_site(make_app, rules or _rules(), **config)


def _post(app: Flask, form: str = "callback", **data: str) -> None:
    app.test_client().post(
        f"/form/{form}", data=data, environ_base={"REMOTE_ADDR": "203.0.113.5"}
    ).close()


def test_consent_is_kept_on_the_event_and_shown_in_a_note_and_a_field(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app)
    _post(app, name="Ann", phone="+79120001122", agree_pd="on")
    assert deliver_pending(app) == {"spooled": 0, "delivered": 1}
    [event] = stored_events(app)
    evidence = event.context["consent"]
    sent = datetime.fromtimestamp(event.context["captured_at"], UTC)
    assert evidence["agree_pd"]["given"] is True
    assert evidence["agree_pd"]["value"] == "on"
    assert evidence["agree_pd"]["version"] == "Privacy policy v3 (2025-09-01)"
    assert evidence["agree_pd"]["ip"] == "203.0.113.5"
    assert evidence["agree_pd"]["at"] == sent.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert evidence["agree_ads"]["given"] is False
    assert evidence["agree_ads"]["value"] is None
    [lead] = fast_sandbox.leads()
    [comment] = field_values(lead, "Lead Comment")
    assert comment == (
        "Privacy policy v3 (2025-09-01) at "
        f"{evidence['agree_pd']['at']} from 203.0.113.5"
    )
    [note] = fast_sandbox.notes("leads")
    lines = note["params"]["text"].splitlines()
    assert lines[0].startswith("Consent agree_pd: given ")
    assert "IP 203.0.113.5" in lines[0]
    assert "text: Privacy policy v3 (2025-09-01)" in lines[0]
    assert lines[1] == "Consent agree_ads: not given"


def test_the_evidence_is_written_once_and_in_the_sites_language(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app, AMOCRM_LOCALE="ru", AMOCRM_TIMEZONE="Europe/Moscow")
    fast_sandbox.faults(status=503, count=100)
    _post(app, name="Иван", phone="+79120001123", agree_pd="1", agree_ads="да")
    assert deliver_pending(app) == {"spooled": 0, "retrying": 1}
    fast_sandbox.faults(clear=True)
    [first] = stored_events(app)
    kept = first.context["consent"]
    # the site is deployed again with a new version of its text before the retry:
    # the event keeps the version the visitor agreed to
    new = _site(
        make_app,
        AMOCRM_LOCALE="ru",
        AMOCRM_TIMEZONE="Europe/Moscow",
        AMOCRM_DATABASE_URI=app.config["AMOCRM_DATABASE_URI"],
        AMOCRM_CONSENT_FIELDS={"agree_pd": "v4", "agree_ads": "v2"},
    )
    with new.app_context(), new.extensions["amocrm"].session() as session:
        session.execute(update(Event).values(next_attempt_at=None))
        session.commit()
    assert deliver_pending(new) == {"spooled": 0, "delivered": 1}
    [event] = stored_events(new)
    assert event.context["consent"] == kept
    assert kept["agree_ads"]["given"] is True
    [note] = fast_sandbox.notes("leads")
    text = note["params"]["text"]
    assert "Согласие agree_pd: дано" in text
    assert "(Europe/Moscow)" in text
    assert "текст: Privacy policy v3 (2025-09-01)" in text
    assert "v4" not in text


def test_a_required_consent_missing_fails_the_event_and_nothing_is_sent(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app, _rules(consent="required"), AMOCRM_LOCALE="ru")
    reasons: list[str | None] = []

    def failed(sender: Flask, event: Any, error: str | None = None) -> None:
        reasons.append(error)

    _post(app, name="Ann", phone="+79120001124", agree_pd="on")
    _post(app, name="Bob", phone="+79120001125", agree_pd="on", agree_ads="on")
    _post(app, name="Eve", phone="+79120001126", agree_pd="", agree_ads="off")
    with event_failed.connected_to(failed, sender=app):
        assert deliver_pending(app) == {"spooled": 0, "failed": 2, "delivered": 1}
    ann, bob, eve = stored_events(app)
    assert ann.status == "failed"
    assert ann.last_error == ("Нет согласия: agree_ads не дано, а правило его требует.")
    assert bob.status == "delivered"
    assert eve.status == "failed" and "agree_pd, agree_ads" in (eve.last_error or "")
    assert reasons == [ann.last_error, eve.last_error]
    # the evidence is kept on the failed event too
    assert eve.context["consent"]["agree_pd"]["given"] is False
    assert [lead["name"] for lead in fast_sandbox.leads()] == ["Callback: Bob"]
    assert "Ann" not in str(fast_sandbox.requests())
    assert "Eve" not in str(fast_sandbox.requests())


def test_a_list_requires_only_the_fields_it_names(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app, AMOCRM_CONSENT_FIELDS=["agree_pd", "agree_ads"])
    _post(app, "subscribe", email="a@example.com", agree_ads="yes")
    _post(app, "subscribe", email="b@example.com", agree_pd="yes")
    assert deliver_pending(app) == {"spooled": 0, "delivered": 1, "failed": 1}
    good, bad = stored_events(app)
    assert good.status == "delivered"
    assert good.context["consent"]["agree_ads"]["version"] is None
    assert bad.status == "failed" and "agree_ads" in (bad.last_error or "")
    assert [lead["name"] for lead in fast_sandbox.leads()] == [
        "Subscribe: a@example.com"
    ]


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"AMOCRM_CONSENT_FIELDS": None}, "does not name agree_pd"),
        ({"AMOCRM_CONSENT_FIELDS": ["agree_ads"]}, "does not name agree_pd"),
        ({"AMOCRM_CONSENT_FIELDS": 5}, "AMOCRM_CONSENT_FIELDS must be a list"),
        ({"AMOCRM_CONSENT_FIELDS": {"agree_pd": 3}}, "that is not text"),
        ({"AMOCRM_MIN_FILL_SECONDS": -1}, "AMOCRM_MIN_FILL_SECONDS must be 0"),
        ({"AMOCRM_FORM_STAMP_REQUIRED": [1]}, "AMOCRM_FORM_STAMP_REQUIRED must be"),
        ({"AMOCRM_SPAM_WINDOW": 0}, "AMOCRM_SPAM_WINDOW must be at least 1"),
        ({"AMOCRM_SPAM_MAX_PER_IP": "many"}, "AMOCRM_SPAM_MAX_PER_IP must be"),
        ({"AMOCRM_HONEYPOT_FIELD": 7}, "AMOCRM_HONEYPOT_FIELD must be a field"),
    ],
)
def test_bad_settings_fail_at_init_naming_the_key(
    make_app: Any, config: dict[str, Any], words: str
) -> None:
    rules = _rules(consent=["agree_pd"])
    with pytest.raises(RuntimeError, match=words):
        form_site(make_app, rules, **config)


def test_a_bad_consent_value_in_a_rule_is_refused(make_app: Any) -> None:
    with pytest.raises(RuntimeError, match=r"forms.callback.consent must be"):
        _site(make_app, _rules(consent="maybe"))
    with pytest.raises(RuntimeError, match="AMOCRM_CONSENT_FIELDS names no consent"):
        _site(make_app, _rules(consent="required"), AMOCRM_CONSENT_FIELDS=[])


def test_the_admin_event_page_shows_the_consent_in_russian_and_inert(
    make_app: Any, fast_sandbox: Any, serve: Any, page_ru: Any
) -> None:
    app = _site(
        make_app,
        _rules(consent="required"),
        AMOCRM_ADMIN_AUTH=lambda: True,
        AMOCRM_CONSENT_FIELDS={"agree_pd": CORPUS[0], "agree_ads": CORPUS[1]},
    )
    _post(app, name="Ann", phone="+79120001127", agree_pd="on")
    assert deliver_pending(app) == {"spooled": 0, "failed": 1}
    [event] = stored_events(app)
    opened = watch(page_ru)
    page_ru.goto(f"{serve(app)}/amocrm/admin/events/{event.id}")
    assert_inert(page_ru, opened)
    rows = page_ru.locator("table.am-consent tbody tr")
    assert rows.count() == 2
    first, second = (rows.nth(i).inner_text() for i in range(2))
    assert "agree_pd" in first and "да" in first and CORPUS[0] in first
    assert "203.0.113.5" in first
    assert "agree_ads" in second and "нет" in second and CORPUS[1] in second
    assert page_ru.locator("h2", has_text="Согласие").count() == 1
    shoot(page_ru, "event-consent-ru")
