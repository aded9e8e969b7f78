"""Duplicate control end to end: events delivered to the sandbox, what it holds then."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask import Flask, current_app, request

from flask_amocrm import Event, form_submitted
from flask_amocrm.amo.metadata import forget_local_metadata
from flask_amocrm.testing import deliver_pending


@pytest.fixture()
def fast_sandbox(sandbox: Any) -> Any:
    """The sandbox without its rate limit, and this process's metadata dropped."""
    sandbox.config(rate_limit=0)
    forget_local_metadata()
    return sandbox


def _app(make_app: Any, rules: dict[str, Any], **config: Any) -> Flask:
    config.setdefault("AMOCRM_RATE_LIMIT", 50)
    app: Flask = make_app(AMOCRM_RULES=rules, **config)

    @app.post("/form/<name>")
    def form(name: str) -> str:
        form_submitted.send(current_app._get_current_object(), form=name,
                            data=request.form)
        return "ok"

    return app


def _send(app: Flask, form: str, **data: str) -> dict[str, int]:
    """Submit one form and deliver it at once."""
    app.test_client().post(f"/form/{form}", data=data)
    return deliver_pending(app)


def _events(app: Flask) -> list[Event]:
    with app.app_context(), app.extensions["amocrm"].session() as session:
        return list(session.query(Event).order_by(Event.id))


def _values(entity: dict[str, Any], name: str) -> list[Any]:
    for item in entity.get("custom_fields_values") or []:
        if name in (item.get("field_name"), item.get("field_code")):
            return [v.get("value") for v in item["values"]]
    return []


def _notes(sandbox: Any, entity: str) -> list[tuple[int, str]]:
    return [(n["entity_id"], n["params"]["text"]) for n in sandbox.notes(entity)]


def _linked(sandbox: Any, entity: str, entity_id: int, to: str) -> list[int]:
    links = sandbox.state()["links"].get(f"{entity}:{entity_id}", [])
    return [link["to_entity_id"] for link in links if link["to_entity_type"] == to]


def _contact_rule(strategy: str, *, require: str = "any",
                  match: list[str] | None = None, lock: list[str] | None = None
                  ) -> dict[str, Any]:
    contact: dict[str, Any] = {
        "name": "{{ data.name }}", "phone": "{{ data.phone | default('') }}",
        "email": "{{ data.email | default('') }}", "position": "{{ data.pos | default('') }}",
        "duplicates": {"match": match or ["PHONE", "EMAIL"], "require": require,
                       "strategy": strategy},
    }
    if lock:
        contact["lock"] = lock
    return {"forms": {"callback": {"contact": contact,
                                   "lead": {"name": "Call {{ data.name }}"}}}}


# -- contacts --------------------------------------------------------------------------


def test_use_reuses_the_earliest_contact_as_it_is(make_app: Any,
                                                  fast_sandbox: Any) -> None:
    sandbox = fast_sandbox
    app = _app(make_app, _contact_rule("use"))
    _send(app, "callback", name="Ann", phone="+7 912 345-67-89", pos="CTO")
    time.sleep(1.1)  # created_at has seconds: the second contact is later
    _send(app, "callback", name="Ann Two", phone="+7 999 000-00-00",
          email="ann@example.com", pos="CEO")
    # the phone of the first, the e-mail of the second, written another way
    assert _send(app, "callback", name="Anna", phone="8 (912) 345 67 89",
                 email=" ANN@example.com", pos="Boss")["delivered"] == 1
    first, second, third = _events(app)
    contacts = {c["id"]: c for c in sandbox.contacts()}
    assert len(contacts) == 2
    assert third.remote["found"] == {"contact": first.remote["contact_id"]}
    assert third.remote["duplicates"] == {"contact": [first.remote["contact_id"]]}
    assert third.remote["done"] == ["lookup", "create"]
    kept = contacts[first.remote["contact_id"]]
    assert kept["name"] == "Ann" and _values(kept, "POSITION") == ["CTO"]
    [lead] = [x for x in sandbox.leads() if x["id"] == third.remote["lead_id"]]
    assert _linked(sandbox, "leads", lead["id"], "contacts") == [kept["id"]]
    assert any("contact" in line and "used as it is" in line for line in third.log)


def test_update_changes_the_duplicate_but_not_locked_fields(
    make_app: Any, fast_sandbox: Any
) -> None:
    sandbox = fast_sandbox
    app = _app(make_app, _contact_rule("update", lock=["name"]))
    _send(app, "callback", name="Ann", phone="+79123456789", pos="CTO")
    assert _send(app, "callback", name="Someone", phone="912 345 67 89",
                 email="ann@example.com", pos="CEO")["delivered"] == 1
    first, second = _events(app)
    [contact] = sandbox.contacts()
    assert second.remote["contact_id"] == first.remote["contact_id"] == contact["id"]
    assert second.remote["done"] == ["lookup", "update", "create"]
    assert contact["name"] == "Ann"  # locked
    assert _values(contact, "POSITION") == ["CEO"]
    assert _values(contact, "PHONE") == ["+79123456789"]  # the same number, once
    assert _values(contact, "EMAIL") == ["ann@example.com"]
    assert len(sandbox.leads()) == 2


def test_note_creates_a_contact_and_links_every_duplicate(
    make_app: Any, fast_sandbox: Any
) -> None:
    sandbox = fast_sandbox
    app = _app(make_app, _contact_rule("note"))
    _send(app, "callback", name="A", phone="+79123456789")
    _send(app, "callback", name="B", phone="89123456789")
    assert _send(app, "callback", name="C", phone="9123456789",
                 email="c@example.com")["delivered"] == 1
    first, second, third = _events(app)
    assert len(sandbox.contacts()) == 3
    old = [first.remote["contact_id"], second.remote["contact_id"]]
    assert third.remote["duplicates"] == {"contact": old}
    assert third.remote["found"] == {}
    notes = dict(_notes(sandbox, "contacts"))
    text = notes[third.remote["contact_id"]]
    assert text.splitlines() == ["Possible duplicates:"] + [
        f"- contact {i}: {sandbox.url}/contacts/detail/{i} (same PHONE)" for i in old]


def test_all_needs_every_field_to_match(make_app: Any, fast_sandbox: Any) -> None:
    sandbox = fast_sandbox
    app = _app(make_app, _contact_rule("use", require="all"))
    _send(app, "callback", name="A", phone="+79123456789", email="a@example.com")
    _send(app, "callback", name="B", phone="+79123456789", email="b@example.com")
    _send(app, "callback", name="C", phone="+79123456789")  # no e-mail: no match
    _send(app, "callback", name="D", phone="8 912 345 67 89", email="A@example.com")
    first, _b, _c, fourth = _events(app)
    assert len(sandbox.contacts()) == 3
    assert fourth.remote["contact_id"] == first.remote["contact_id"]


def test_a_phone_in_a_note_or_a_name_is_no_duplicate(
    make_app: Any, fast_sandbox: Any
) -> None:
    sandbox = fast_sandbox
    rules = _contact_rule("use", match=["PHONE"])
    rules["forms"]["callback"]["contact"]["note"] = "Call {{ data.other | default('') }}"
    app = _app(make_app, rules)
    _send(app, "callback", name="Partner 8 912 345 67 89", phone="+79990000000",
          other="+79123456789")
    assert _send(app, "callback", name="Ann", phone="+79123456789")["delivered"] == 1
    first, second = _events(app)
    # amoCRM's full-text search finds the first contact by its name; it is no
    # duplicate, since its phone is another one
    assert len(sandbox.contacts()) == 2
    assert second.remote["duplicates"] == {}
    assert second.remote["contact_id"] != first.remote["contact_id"]


def test_match_on_name_and_a_custom_field(make_app: Any, fast_sandbox: Any) -> None:
    sandbox = fast_sandbox
    rules = {"forms": {"f": {"contact": {
        "name": "{{ data.name }}", "fields": {"Contact Comment": "{{ data.code }}"},
        "duplicates": {"match": ["name", "Contact Comment"], "require": "all",
                       "strategy": "use"}}}}}
    app = _app(make_app, rules)
    _send(app, "f", name="Ann  Lee", code="A-1")
    _send(app, "f", name="ann lee", code="A-2")
    _send(app, "f", name="ANN LEE", code="a-1")
    first, second, third = _events(app)
    assert len(sandbox.contacts()) == 2
    assert third.remote["contact_id"] == first.remote["contact_id"]
    assert second.remote["contact_id"] != first.remote["contact_id"]


def test_company_duplicates(make_app: Any, fast_sandbox: Any) -> None:
    sandbox = fast_sandbox
    rules = {"forms": {"f": {
        "contact": {"name": "{{ data.name }}"},
        "company": {"name": "{{ data.company }}", "web": "{{ data.web }}",
                    "duplicates": {"match": ["name"], "strategy": "update"}},
        "lead": {"name": "L"}}}}
    app = _app(make_app, rules)
    _send(app, "f", name="Ann", company="ACME", web="https://a.example")
    assert _send(app, "f", name="Bob", company=" acme ",
                 web="https://b.example")["delivered"] == 1
    first, second = _events(app)
    [company] = sandbox.companies()
    assert second.remote["company_id"] == company["id"]
    assert _values(company, "WEB") == ["https://b.example"]
    bob = second.remote["contact_id"]
    assert _linked(sandbox, "contacts", bob, "companies") == [company["id"]]
    assert _linked(sandbox, "leads", second.remote["lead_id"], "companies") == [
        company["id"]]
