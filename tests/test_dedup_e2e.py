"""Duplicate control end to end: events delivered to the sandbox, what it holds then."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask import Flask

from flask_amocrm.progress import Progress
from flask_amocrm.rules.signing import sign_id
from flask_amocrm.state import get_state
from flask_amocrm.testing import deliver_pending
from tests.helpers.e2e import (
    INDEX_MODES,
    field_values,
    form_site,
    index_mode,
    stored_events,
)
from tests.helpers.sandbox import sandbox_api


@pytest.fixture(params=INDEX_MODES)
def make_app(make_app: Any, request: pytest.FixtureRequest) -> Any:
    """Every test here runs searching amoCRM and with a complete contact index:
    the answers must be the same."""
    return index_mode(make_app, request.param)


def _send(app: Flask, form: str, **data: str) -> dict[str, int]:
    """Submit one form and deliver it at once."""
    app.test_client().post(f"/form/{form}", data=data)
    return deliver_pending(app)


def _notes(sandbox: Any, entity: str) -> list[tuple[int, str]]:
    return [(n["entity_id"], n["params"]["text"]) for n in sandbox.notes(entity)]


def _linked(sandbox: Any, entity: str, entity_id: int, to: str) -> list[int]:
    links = sandbox.state()["links"].get(f"{entity}:{entity_id}", [])
    return [link["to_entity_id"] for link in links if link["to_entity_type"] == to]


def _contact_rule(
    strategy: str,
    *,
    require: str = "any",
    match: list[str] | None = None,
    lock: list[str] | None = None,
) -> dict[str, Any]:
    contact: dict[str, Any] = {
        "name": "{{ data.name }}",
        "phone": "{{ data.phone | default('') }}",
        "email": "{{ data.email | default('') }}",
        "position": "{{ data.pos | default('') }}",
        "duplicates": {
            "match": match or ["PHONE", "EMAIL"],
            "require": require,
            "strategy": strategy,
        },
    }
    if lock:
        contact["lock"] = lock
    return {
        "forms": {
            "callback": {"contact": contact, "lead": {"name": "Call {{ data.name }}"}}
        }
    }


# -- contacts --------------------------------------------------------------------------


def test_use_reuses_the_earliest_contact_as_it_is(
    make_app: Any, fast_sandbox: Any
) -> None:
    sandbox = fast_sandbox
    app = form_site(make_app, _contact_rule("use"))
    _send(app, "callback", name="Ann", phone="+7 912 345-67-89", pos="CTO")
    time.sleep(1.1)  # created_at has seconds: the second contact is later
    _send(
        app,
        "callback",
        name="Ann Two",
        phone="+7 999 000-00-00",
        email="ann@example.com",
        pos="CEO",
    )
    # the phone of the first, the e-mail of the second, written another way
    assert (
        _send(
            app,
            "callback",
            name="Anna",
            phone="8 (912) 345 67 89",
            email=" ANN@example.com",
            pos="Boss",
        )["delivered"]
        == 1
    )
    first, _second, third = stored_events(app)
    contacts = {c["id"]: c for c in sandbox.contacts()}
    assert len(contacts) == 2
    assert third.remote["found"] == {"contact": first.remote["contact_id"]}
    assert third.remote["duplicates"] == {"contact": [first.remote["contact_id"]]}
    assert third.remote["done"] == ["lookup", "create"]
    kept = contacts[first.remote["contact_id"]]
    assert kept["name"] == "Ann" and field_values(kept, "POSITION") == ["CTO"]
    [lead] = [x for x in sandbox.leads() if x["id"] == third.remote["lead_id"]]
    assert _linked(sandbox, "leads", lead["id"], "contacts") == [kept["id"]]
    assert any("contact" in line and "used as it is" in line for line in third.log)


def test_update_changes_the_duplicate_but_not_locked_fields(
    make_app: Any, fast_sandbox: Any
) -> None:
    sandbox = fast_sandbox
    app = form_site(make_app, _contact_rule("update", lock=["name"]))
    _send(app, "callback", name="Ann", phone="+79123456789", pos="CTO")
    assert (
        _send(
            app,
            "callback",
            name="Someone",
            phone="912 345 67 89",
            email="ann@example.com",
            pos="CEO",
        )["delivered"]
        == 1
    )
    first, second = stored_events(app)
    [contact] = sandbox.contacts()
    assert second.remote["contact_id"] == first.remote["contact_id"] == contact["id"]
    assert second.remote["done"] == ["lookup", "update", "create"]
    assert contact["name"] == "Ann"  # locked
    assert field_values(contact, "POSITION") == ["CEO"]
    assert field_values(contact, "PHONE") == ["+79123456789"]  # the same number, once
    assert field_values(contact, "EMAIL") == ["ann@example.com"]
    assert len(sandbox.leads()) == 2


def test_note_creates_a_contact_and_links_every_duplicate(
    make_app: Any, fast_sandbox: Any
) -> None:
    sandbox = fast_sandbox
    app = form_site(make_app, _contact_rule("note"))
    _send(app, "callback", name="A", phone="+79123456789")
    _send(app, "callback", name="B", phone="89123456789")
    assert (
        _send(app, "callback", name="C", phone="9123456789", email="c@example.com")[
            "delivered"
        ]
        == 1
    )
    first, second, third = stored_events(app)
    assert len(sandbox.contacts()) == 3
    old = [first.remote["contact_id"], second.remote["contact_id"]]
    assert third.remote["duplicates"] == {"contact": old}
    assert Progress.from_json(third.remote).found == {}
    notes = dict(_notes(sandbox, "contacts"))
    text = notes[third.remote["contact_id"]]
    assert text.splitlines() == ["Possible duplicates:"] + [
        f"- contact {i}: {sandbox.url}/contacts/detail/{i} (same PHONE)" for i in old
    ]


def test_all_needs_every_field_to_match(make_app: Any, fast_sandbox: Any) -> None:
    sandbox = fast_sandbox
    app = form_site(make_app, _contact_rule("use", require="all"))
    _send(app, "callback", name="A", phone="+79123456789", email="a@example.com")
    _send(app, "callback", name="B", phone="+79123456789", email="b@example.com")
    _send(app, "callback", name="C", phone="+79123456789")  # no e-mail: no match
    _send(app, "callback", name="D", phone="8 912 345 67 89", email="A@example.com")
    first, _b, _c, fourth = stored_events(app)
    assert len(sandbox.contacts()) == 3
    assert fourth.remote["contact_id"] == first.remote["contact_id"]


def test_a_phone_in_a_note_or_a_name_is_no_duplicate(
    make_app: Any, fast_sandbox: Any
) -> None:
    sandbox = fast_sandbox
    rules = _contact_rule("use", match=["PHONE"])
    rules["forms"]["callback"]["contact"]["note"] = (
        "Call {{ data.other | default('') }}"
    )
    app = form_site(make_app, rules)
    _send(
        app,
        "callback",
        name="Partner 8 912 345 67 89",
        phone="+79990000000",
        other="+79123456789",
    )
    assert _send(app, "callback", name="Ann", phone="+79123456789")["delivered"] == 1
    first, second = stored_events(app)
    # amoCRM's full-text search finds the first contact by its name; it is no
    # duplicate, since its phone is another one
    assert len(sandbox.contacts()) == 2
    assert Progress.from_json(second.remote).duplicates == {}
    assert second.remote["contact_id"] != first.remote["contact_id"]


def test_match_on_name_and_a_custom_field(make_app: Any, fast_sandbox: Any) -> None:
    sandbox = fast_sandbox
    rules = {
        "forms": {
            "f": {
                "contact": {
                    "name": "{{ data.name }}",
                    "fields": {"Contact Comment": "{{ data.code }}"},
                    "duplicates": {
                        "match": ["name", "Contact Comment"],
                        "require": "all",
                        "strategy": "use",
                    },
                }
            }
        }
    }
    app = form_site(make_app, rules)
    _send(app, "f", name="Ann  Lee", code="A-1")
    _send(app, "f", name="ann lee", code="A-2")
    _send(app, "f", name="ANN LEE", code="a-1")
    first, second, third = stored_events(app)
    assert len(sandbox.contacts()) == 2
    assert third.remote["contact_id"] == first.remote["contact_id"]
    assert second.remote["contact_id"] != first.remote["contact_id"]


def test_company_duplicates(make_app: Any, fast_sandbox: Any) -> None:
    sandbox = fast_sandbox
    rules = {
        "forms": {
            "f": {
                "contact": {"name": "{{ data.name }}"},
                "company": {
                    "name": "{{ data.company }}",
                    "web": "{{ data.web }}",
                    "duplicates": {"match": ["name"], "strategy": "update"},
                },
                "lead": {"name": "L"},
            }
        }
    }
    app = form_site(make_app, rules)
    _send(app, "f", name="Ann", company="ACME", web="https://a.example")
    assert (
        _send(app, "f", name="Bob", company=" acme ", web="https://b.example")[
            "delivered"
        ]
        == 1
    )
    _first, second = stored_events(app)
    [company] = sandbox.companies()
    assert second.remote["company_id"] == company["id"]
    assert field_values(company, "WEB") == ["https://b.example"]
    bob = second.remote["contact_id"]
    assert _linked(sandbox, "contacts", bob, "companies") == [company["id"]]
    assert _linked(sandbox, "leads", second.remote["lead_id"], "companies") == [
        company["id"]
    ]


# -- leads -----------------------------------------------------------------------------

NEW, QUALIFIED, WON = 7100002, 7100003, 142


def _lead(
    sandbox: Any,
    name: str,
    *,
    status: int = NEW,
    age: int = 0,
    contact: int | None = None,
) -> int:
    """A lead made in amoCRM by hand, ``age`` seconds ago."""
    item: dict[str, Any] = {
        "name": name,
        "pipeline_id": 7000001,
        "status_id": status,
        "created_at": int(time.time()) - age,
    }
    if contact is not None:
        item["_embedded"] = {"contacts": [{"id": contact}]}
    answer = sandbox_api(sandbox, "POST", "/leads", [item])
    return int(answer["_embedded"]["leads"][0]["id"])


STAGES = {"order": "New", "paid": "Qualified", "shipped": "Успешно реализовано"}


def _pipeline_rules(strategy: str = "update", **lead_dups: Any) -> dict[str, Any]:
    forms = {}
    for form, status in STAGES.items():
        forms[form] = {
            "contact": {
                "name": "{{ data.name }}",
                "phone": "{{ data.phone }}",
                "duplicates": {"match": ["PHONE"], "strategy": "use"},
            },
            "lead": {
                "name": "Order {{ data.order }}",
                "pipeline": "Sales",
                "status": status,
                "price": "{{ data.sum | default('') }}",
                "lock": ["price"] if form != "order" else [],
                "duplicates": {"match": ["name"], "strategy": strategy, **lead_dups},
            },
        }
    return {"forms": forms}


def test_events_move_a_deal_through_the_pipeline(
    make_app: Any, fast_sandbox: Any
) -> None:
    sandbox = fast_sandbox
    app = form_site(make_app, _pipeline_rules(open_only=True))
    ann = {"name": "Ann", "phone": "+79123456789"}
    _send(app, "order", order="7", sum="1000", **ann)
    _send(app, "order", order="8", sum="50", **ann)
    [order7, order8] = stored_events(app)
    assert order7.remote["lead_id"] != order8.remote["lead_id"]
    assert order8.remote["contact_id"] == order7.remote["contact_id"]

    # "payment received" for order 7, the phone written another way
    assert (
        _send(app, "paid", order="7", sum="1", name="Ann", phone="8 912 345 67 89")[
            "delivered"
        ]
        == 1
    )
    paid = stored_events(app)[-1]
    assert paid.remote["found"] == {
        "contact": order7.remote["contact_id"],
        "lead": order7.remote["lead_id"],
    }
    # nothing created, nothing linked: the lead was found among Ann's own leads
    assert paid.remote["done"] == ["lookup", "update"]
    leads = {x["id"]: x for x in sandbox.leads()}
    assert len(leads) == 2 and len(sandbox.contacts()) == 1
    assert leads[order7.remote["lead_id"]]["status_id"] == QUALIFIED
    assert leads[order7.remote["lead_id"]]["price"] == 1000  # locked
    assert leads[order8.remote["lead_id"]]["status_id"] == NEW

    _send(app, "shipped", order="7", **ann)
    assert {x["id"]: x for x in sandbox.leads()}[order7.remote["lead_id"]][
        "status_id"
    ] == WON
    # order 7 is closed: open_only leaves it out, and a new order 7 is a new deal
    _send(app, "order", order="7", sum="300", **ann)
    again = stored_events(app)[-1]
    assert again.remote["lead_id"] not in (
        order7.remote["lead_id"],
        order8.remote["lead_id"],
    )
    assert again.remote["contact_id"] == order7.remote["contact_id"]
    assert len(sandbox.leads()) == 3


def test_scope_contact_ignores_other_peoples_leads(
    make_app: Any, fast_sandbox: Any
) -> None:
    sandbox = fast_sandbox
    app = form_site(make_app, _pipeline_rules("use"))
    _lead(sandbox, "Order 7")  # somebody else's order 7
    assert (
        _send(app, "order", order="7", name="Ann", phone="+79123456789")["delivered"]
        == 1
    )
    assert len(sandbox.leads()) == 2
    [event] = stored_events(app)
    assert Progress.from_json(event.remote).duplicates == {}


def test_scope_all_with_a_time_window_and_a_note(
    make_app: Any, fast_sandbox: Any
) -> None:
    sandbox = fast_sandbox
    rules = {
        "forms": {
            "callback": {
                "contact": {"name": "{{ data.name }}", "phone": "{{ data.phone }}"},
                "lead": {
                    "name": "Callback {{ data.phone }}",
                    "pipeline": "Sales",
                    "note": "Wants a call",
                    "duplicates": {
                        "match": ["name"],
                        "scope": "all",
                        "within": "1d",
                        "open_only": True,
                        "strategy": "note",
                    },
                },
            }
        }
    }
    app = form_site(make_app, rules)
    stale = _lead(sandbox, "Callback 100", age=2 * 86400)
    won = _lead(sandbox, "Callback 100", status=WON, age=600)
    yesterday = _lead(sandbox, "CALLBACK 100", age=20 * 3600)
    recent = _lead(sandbox, "Callback 100", age=60)
    _lead(sandbox, "Callback 1000", age=60)  # found by the text search, no match
    assert _send(app, "callback", name="Bob", phone="100")["delivered"] == 1
    [event] = stored_events(app)
    assert event.remote["duplicates"] == {"lead": [yesterday, recent]}
    assert stale not in event.remote["duplicates"]["lead"]
    assert won not in event.remote["duplicates"]["lead"]
    notes = [
        text
        for entity_id, text in _notes(sandbox, "leads")
        if entity_id == event.remote["lead_id"]
    ]
    assert notes[0] == "Wants a call"
    assert notes[1].splitlines() == ["Possible duplicates:"] + [
        f"- lead {i}: {sandbox.url}/leads/detail/{i} (same name)"
        for i in (yesterday, recent)
    ]


def test_lead_matched_on_price_and_status(make_app: Any, fast_sandbox: Any) -> None:
    sandbox = fast_sandbox
    rules = {
        "forms": {
            "f": {
                "lead": {
                    "name": "{{ data.name }}",
                    "price": "{{ data.sum }}",
                    "pipeline": "Sales",
                    "status": "New",
                    "duplicates": {
                        "match": ["price", "status"],
                        "require": "all",
                        "scope": "all",
                        "strategy": "update",
                    },
                }
            }
        }
    }
    app = form_site(make_app, rules)
    _send(app, "f", name="first", sum="500")
    _send(app, "f", name="second", sum="700")
    _send(app, "f", name="third", sum="500")
    first, _second, third = stored_events(app)
    assert third.remote["lead_id"] == first.remote["lead_id"]
    names = sorted(x["name"] for x in sandbox.leads())
    assert names == ["second", "third"]


def test_the_rule_names_the_contact_and_its_leads_are_searched(
    make_app: Any, fast_sandbox: Any
) -> None:
    sandbox = fast_sandbox
    contact = sandbox_api(sandbox, "POST", "/contacts", [{"name": "Known"}])[
        "_embedded"
    ]["contacts"][0]["id"]
    mine = _lead(sandbox, "Renewal", contact=contact)
    rules = {
        "forms": {
            "renew": {
                "contact": {"id": "{{ data.cid | signed }}"},
                "lead": {
                    "name": "Renewal",
                    "tags": ["again"],
                    "duplicates": {"match": ["name"], "strategy": "update"},
                },
            }
        }
    }
    app = form_site(make_app, rules)
    assert (
        _send(app, "renew", cid=sign_id("contact", contact, "test"))["delivered"] == 1
    )
    [event] = stored_events(app)
    assert event.remote["lead_id"] == mine
    [lead] = sandbox.leads()
    assert [t["name"] for t in lead["_embedded"]["tags"]] == ["again"]


# -- incoming leads, amoCRM's own duplicate control ----------------------------------


def test_incoming_leads_always_note_the_duplicates(
    make_app: Any, fast_sandbox: Any
) -> None:
    sandbox = fast_sandbox
    rules = _contact_rule("use", match=["PHONE"])
    rules["forms"]["callback"]["unsorted"] = True
    app = form_site(make_app, rules)
    _send(app, "callback", name="Ann", phone="+79123456789")
    # accepted by a manager: its contact becomes visible to searches
    [item] = sandbox.unsorted()
    sandbox_api(sandbox, "POST", f"/leads/unsorted/{item['uid']}/accept", {})
    assert _send(app, "callback", name="Ann", phone="89123456789")["delivered"] == 1
    first, second = stored_events(app)
    assert len(sandbox.unsorted()) == 2 and len(sandbox.contacts()) == 2
    # incoming leads are always new
    assert Progress.from_json(second.remote).found == {}
    assert second.remote["duplicates"] == {"contact": [first.remote["contact_id"]]}
    [(lead_id, text)] = _notes(sandbox, "leads")
    assert lead_id == second.remote["lead_id"]
    assert f"/contacts/detail/{first.remote['contact_id']}" in text


def test_amocrm_merging_is_recorded_and_not_doubled(
    make_app: Any, fast_sandbox: Any
) -> None:
    sandbox = fast_sandbox
    sandbox.config(duplicate_control=True)
    app = form_site(make_app, _contact_rule("note", match=["PHONE"]))
    _send(app, "callback", name="Ann", phone="+79123456789")
    assert _send(app, "callback", name="Ann", phone="+79123456789")["delivered"] == 1
    first, second = stored_events(app)
    # our lookup saw the duplicate; amoCRM merged the new contact and lead into it
    assert second.remote["duplicates"] == {"contact": [first.remote["contact_id"]]}
    assert second.remote["merged"] is True
    assert second.remote["lead_id"] == first.remote["lead_id"]
    assert second.remote["contact_id"] == first.remote["contact_id"]
    assert len(sandbox.contacts()) == 1 and len(sandbox.leads()) == 1
    assert _notes(sandbox, "contacts") == []  # no note pointing at itself
    assert any("merged" in line for line in second.log)


# -- batches ---------------------------------------------------------------------------


GET_CONTACTS = ("GET", "/api/v4/contacts")


def test_a_batch_looks_up_first_and_keeps_one_person_apart(
    make_app: Any, fast_sandbox: Any
) -> None:
    sandbox = fast_sandbox
    rules = _pipeline_rules("use")
    app = form_site(make_app, rules)
    _send(app, "order", order="1", name="Warm", phone="+79990000000")  # marker field
    client = app.test_client()
    for n, phone in enumerate(["+79120000001", "+79120000002", "8 912 000 00 01"]):
        client.post(
            "/form/order", data={"order": str(10 + n), "name": f"p{n}", "phone": phone}
        )
    before = len(sandbox.requests())
    assert deliver_pending(app)["delivered"] == 3
    calls = [(r["method"], r["path"]) for r in sandbox.requests()[before:]]
    # round one: two searches (with their leads), then one complex call for both;
    # round two: the third event finds the first one's contact and reads its leads.
    # With the complete contact index round one needs no search (nobody is known
    # by those phones), and round two reads the contact the index names instead
    # of searching for it.
    searches = [] if get_state(app).settings.index_interval else [GET_CONTACTS] * 2
    assert calls == [
        *searches,
        ("POST", "/api/v4/leads/complex"),
        GET_CONTACTS,
        ("GET", "/api/v4/leads"),
        ("POST", "/api/v4/leads/complex"),
    ]
    if not searches:
        [verify] = [r for r in sandbox.requests()[before:] if r["method"] == "GET"][:1]
        assert "filter%5Bid%5D" in verify["query"] and "query=" not in verify["query"]
    _warm, first, _second, third = stored_events(app)
    assert third.remote["contact_id"] == first.remote["contact_id"]
    assert len(sandbox.contacts()) == 3 and len(sandbox.leads()) == 4
