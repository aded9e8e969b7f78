"""Rules hardening (issue 11, items 10, 13, 22, 23) end to end: events posted to a
site, delivered to the sandbox, and what the sandbox and the event rows hold after."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from flask import Flask

from flask_amocrm.rules.clean import LONG_LIMIT
from flask_amocrm.testing import deliver_pending
from tests.helpers.e2e import field_values, form_site, stored_events
from tests.helpers.http import serving


@contextmanager
def served(app: Flask) -> Iterator[Callable[..., int]]:
    """``app`` served over real HTTP; yields ``post(form, data) -> status``."""
    with serving(app) as base, requests.Session() as session:

        def post(form: str, data: dict[str, str]) -> int:
            response = session.post(f"{base}/form/{form}", data=data, timeout=10)
            response.close()
            return response.status_code

        yield post


@pytest.fixture()
def site(make_app: Any, database_uri: str) -> Iterator[Callable[..., Flask]]:
    """``form_site`` on SQLite and PostgreSQL; its engine is closed afterwards."""
    apps: list[Flask] = []

    def make(rules: dict[str, Any]) -> Flask:
        app = form_site(make_app, rules, AMOCRM_DATABASE_URI=database_uri)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["amocrm"].engine.dispose()


def test_a_visitor_number_used_as_a_multiplier_fails_only_its_event(
    site: Any, fast_sandbox: Any
) -> None:
    rules = {"forms": {"f": {"lead": {"name": "{{ 'x' * (data.n | int) }}"}}}}
    app = site(rules)
    with served(app) as post:
        assert post("f", {"n": "200000000"}) == 200
        assert post("f", {"n": "3"}) == 200
    started = time.monotonic()
    outcome = deliver_pending(app)
    assert time.monotonic() - started < 10
    assert outcome["failed"] == 1 and outcome["delivered"] == 1
    big, small = stored_events(app)
    assert big.status == "failed"
    assert "forms.f.lead.name" in big.last_error and "bound" in big.last_error
    assert small.status == "delivered"
    assert [lead["name"] for lead in fast_sandbox.leads()] == ["xxx"]


def test_a_rule_that_breaks_a_bound_is_refused_at_init_app(make_app: Any) -> None:
    rules = {"forms": {"f": {"lead": {"name": "{{ 'a' * 10**9 }}"}}}}
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="forms.f.lead.name.*bound"):
        make_app(AMOCRM_RULES=rules)
    assert time.monotonic() - started < 2


SIGNED_RULES: dict[str, Any] = {
    "forms": {
        "signup": {
            "contact": {"name": "{{ data.name }}", "phone": "{{ data.phone }}"},
            "lead": {"name": "Signup"},
        },
        "again": {
            "contact": {
                "id": "{{ data.contact_id | default('') | signed }}",
                "name": "{{ data.name }}",
                "phone": "{{ data.phone }}",
                "lock": ["name"],
            },
            "lead": {"name": "Again"},
        },
    }
}


def test_an_entity_id_from_a_form_must_carry_the_sites_signature(
    site: Any, fast_sandbox: Any
) -> None:
    from flask_amocrm import sign_id

    sandbox = fast_sandbox
    app = site(SIGNED_RULES)
    with served(app) as post:
        post("signup", {"name": "Ann", "phone": "+79120001122"})
        deliver_pending(app)
        [contact] = sandbox.contacts()
        # A visitor who types someone's (sequential) contact id adds nothing to it.
        for forged in (
            str(contact["id"]),
            sign_id("contact", contact["id"], "another site's key"),
            sign_id("lead", contact["id"], "test"),
        ):
            status = post(
                "again", {"name": "Eve", "phone": "+79995550000", "contact_id": forged}
            )
            assert status == 200
    assert deliver_pending(app)["failed"] == 3
    for event in stored_events(app)[1:]:
        assert event.status == "failed"
        assert "forms.again.contact.id" in event.last_error
        assert "signature" in event.last_error
    [contact] = sandbox.contacts()
    assert field_values(contact, "PHONE") == ["+79120001122"]
    # The id the site signed itself (rendered into its own form) updates the contact.
    with app.app_context():
        signed = sign_id("contact", contact["id"])
    with served(app) as post:
        post("again", {"name": "Ann S", "phone": "+79995556677", "contact_id": signed})
    assert deliver_pending(app)["delivered"] == 1
    [contact] = sandbox.contacts()
    assert contact["name"] == "Ann"
    assert field_values(contact, "PHONE") == ["+79120001122", "+79995556677"]


def test_signed_ids_need_the_apps_secret_key(make_app: Any) -> None:
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        make_app(AMOCRM_RULES=SIGNED_RULES, SECRET_KEY=None)


def test_an_unsigned_id_from_the_event_is_refused_at_init_app(make_app: Any) -> None:
    rules = {"forms": {"f": {"contact": {"id": "{{ data.contact_id }}"}}}}
    with pytest.raises(RuntimeError, match="forms.f.contact.id.*signed"):
        make_app(AMOCRM_RULES=rules)


def test_prices_in_roubles_reach_the_lead(make_app: Any, fast_sandbox: Any) -> None:
    rules = {
        "forms": {
            "f": {
                "lead": {
                    "name": "{{ data.n }}",
                    "price": "{{ data.price }}",
                    "fields": {
                        "Lead Budget": "{{ data.budget }}",
                        "Lead Visit date": "{{ data.visit }}",
                    },
                }
            }
        }
    }
    app = form_site(make_app, rules)
    client = app.test_client()
    client.post(
        "/form/f",
        data={"n": "a", "price": "1500 руб.", "budget": "1 500,50 руб.", "visit": ""},
    )
    client.post(
        "/form/f",
        data={"n": "b", "price": "1500р.", "budget": "20", "visit": "17 05 2024"},
    )
    assert deliver_pending(app)["delivered"] == 2
    a, b = sorted(fast_sandbox.leads(), key=lambda lead: lead["name"])
    assert a["price"] == 1500 and [
        float(v) for v in field_values(a, "Lead Budget")
    ] == [1500.5]
    assert b["price"] == 1500
    assert field_values(b, "Lead Visit date")  # read as a date, so written
    for event in stored_events(app):
        assert not any(
            "not a number" in line or "not a date" in line for line in event.log
        )


@pytest.mark.parametrize("interval", [1, 29])
def test_an_agent_interval_under_the_tick_is_refused(
    make_app: Any, interval: int
) -> None:
    with pytest.raises(RuntimeError) as info:
        make_app(AMOCRM_AGENT_INTERVAL=interval)
    assert "AMOCRM_AGENT_INTERVAL" in str(info.value) and "30" in str(info.value)


def test_an_agent_interval_of_the_tick_or_more_is_taken(make_app: Any) -> None:
    app: Flask = make_app(AMOCRM_AGENT_INTERVAL=30)
    assert app.extensions["amocrm"].settings.agent_interval == 30


@pytest.mark.parametrize("group", [True, False])
def test_notes_reach_amocrm_within_its_limit(
    make_app: Any, fast_sandbox: Any, group: bool
) -> None:
    rules = {
        "forms": {
            "f": {
                "group": group,
                "lead": {
                    "name": "{{ data.name }}",
                    "notes": ["{{ data.a }}", "{{ data.b }}"],
                },
            }
        }
    }
    app = form_site(make_app, rules)
    app.test_client().post(
        "/form/f", data={"name": "N" * 30_000, "a": "a" * 15_000, "b": "b" * 15_000}
    )
    assert deliver_pending(app)["delivered"] == 1
    notes = [n["params"]["text"] for n in fast_sandbox.notes("leads")]
    assert notes and all(len(text) <= LONG_LIMIT for text in notes)
    assert any("characters were cut" in text for text in notes)
    [event] = stored_events(app)
    assert any("was cut to 20000" in line for line in event.log)
