"""The contact index: duplicate control from a local index, verified against amoCRM.

Everything runs against the sandbox over HTTP; the calls are counted from its own
request log.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
from flask import Flask
from sqlalchemy import delete, select

from flask_amocrm.amo import client_for
from flask_amocrm.models import EntityKey
from flask_amocrm.progress import Progress
from flask_amocrm.state import get_state
from flask_amocrm.testing import deliver_pending
from flask_amocrm.worker import index
from flask_amocrm.worker.schedule import tick
from tests.helpers.e2e import fill_index, form_site, stored_events
from tests.helpers.sandbox import sandbox_api

RULES: dict[str, Any] = {
    "forms": {
        "callback": {
            "contact": {
                "name": "{{ data.name }}",
                "phone": "{{ data.phone | default('') }}",
                "email": "{{ data.email | default('') }}",
                "duplicates": {"match": ["PHONE", "EMAIL"], "strategy": "use"},
            },
            "lead": {"name": "Callback {{ data.name }}"},
        }
    }
}


def _site(make_app: Any, *, interval: int = 300, **config: Any) -> Flask:
    return form_site(make_app, RULES, AMOCRM_INDEX_INTERVAL=interval, **config)


def _contact(sandbox: Any, name: str, phone: str) -> int:
    body = [
        {
            "name": name,
            "custom_fields_values": [
                {"field_code": "PHONE", "values": [{"value": phone}]}
            ],
        }
    ]
    return int(
        sandbox_api(sandbox, "POST", "/contacts", body)["_embedded"]["contacts"][0][
            "id"
        ]
    )


def _send(app: Flask, **data: str) -> Any:
    app.test_client().post("/form/callback", data=data)
    deliver_pending(app)
    return stored_events(app)[-1]


def _lookups(requests_log: list[dict[str, Any]]) -> tuple[int, int]:
    """(searches, verification reads) of contacts and companies in a request log."""
    searches = verifications = 0
    for r in requests_log:
        if r["method"] != "GET" or r["path"] not in (
            "/api/v4/contacts",
            "/api/v4/companies",
        ):
            continue
        query = parse_qs(r["query"])
        searches += "query" in query
        verifications += "filter[id][]" in query
    return searches, verifications


def _keys(app: Flask, entity_id: int) -> set[tuple[str, str]]:
    with app.app_context(), get_state(app).session() as session:
        rows = session.execute(
            select(EntityKey.kind, EntityKey.key).where(
                EntityKey.entity_id == entity_id
            )
        ).all()
    return {(kind, key) for kind, key in rows}


# -- the sandbox's seeding and list filters ------------------------------------------


def test_the_sandbox_seeds_an_account_and_lists_it_as_amocrm_does(
    fast_sandbox: Any,
) -> None:
    added = fast_sandbox.seed(600, 40)
    assert added["contacts"] == 600 and added["companies"] == 40
    assert 0 < added["duplicates"] < 100
    page = sandbox_api(
        fast_sandbox, "GET", "/contacts?limit=250&page=3&order[id]=asc"
    )  # 600 = 250 + 250 + 100
    items = page["_embedded"]["contacts"]
    assert len(items) == 100 and "next" not in page["_links"]
    assert [c["id"] for c in items] == sorted(c["id"] for c in items)
    phones = [
        v["value"]
        for c in items
        for f in c["custom_fields_values"] or []
        if f["field_code"] == "PHONE"
        for v in f["values"]
    ]
    assert any(p.startswith("8") for p in phones) and any("+" in p for p in phones)
    ids = [items[0]["id"], items[5]["id"], 99999999]
    listed = sandbox_api(
        fast_sandbox,
        "GET",
        "/contacts?" + "&".join(f"filter[id][]={i}" for i in ids),
    )
    assert [c["id"] for c in listed["_embedded"]["contacts"]] == ids[:2]
    # the seed is spread over two years: few changed within the last hours
    recent = sandbox_api(
        fast_sandbox,
        "GET",
        f"/contacts?limit=250&order[updated_at]=asc"
        f"&filter[updated_at][from]={items[-1]['updated_at'] - 3600}",
    )
    times = [c["updated_at"] for c in recent["_embedded"]["contacts"]]
    assert times == sorted(times) and len(times) < 10
    older = sandbox_api(
        fast_sandbox,
        "GET",
        f"/contacts?limit=250&order[updated_at]=desc&filter[updated_at][to]={times[0]}",
    )
    before = [c["updated_at"] for c in older["_embedded"]["contacts"]]
    assert len(before) == 250 and before == sorted(before, reverse=True)
    assert before[0] <= times[0]
    fast_sandbox.delete("contacts", ids[0])
    listed = sandbox_api(fast_sandbox, "GET", f"/contacts?filter[id][]={ids[0]}")
    assert listed is None  # 204: a deleted contact is listed no more


# -- the fill, the poll, the tick ----------------------------------------------------


def test_the_fill_goes_in_small_steps_then_the_poll_keeps_it_fresh(
    make_app: Any, fast_sandbox: Any
) -> None:
    fast_sandbox.seed(1100, 10)  # 5 pages of contacts, 1 of companies
    app = _site(make_app)
    state = get_state(app)
    with app.app_context():
        fast_sandbox.clear_requests()
        assert tick(state)["index_fill_pages"] == index.FILL_PAGES
        assert index.complete_since(state) is None
        assert tick(state)["index_fill_pages"] == 2
        since = index.complete_since(state)
        assert since is not None
        pages = [
            parse_qs(r["query"])
            for r in fast_sandbox.requests()
            if r["path"] in ("/api/v4/contacts", "/api/v4/companies")
        ]
        assert len(pages) == 6 and all(p["limit"] == ["250"] for p in pages)
        with state.session() as session:
            held = {
                (entity, entity_id)
                for entity, entity_id in session.execute(
                    select(EntityKey.entity, EntityKey.entity_id)
                )
                if entity in index.ENTITIES
            }
        assert len(held) == 1110
        # changed in amoCRM: the poll (every AMOCRM_INDEX_INTERVAL) reads it
        contact = _contact(fast_sandbox, "Fresh Person", "+7 903 111-22-33")
        assert tick(state)["index_poll_pages"] == 2  # contacts and companies
        assert ("phone", "+79031112233") in _keys(app, contact)
        assert "index_poll_pages" not in tick(state)  # not due again yet
        poll = [
            parse_qs(r["query"])
            for r in fast_sandbox.requests()
            if r["path"] == "/api/v4/contacts"
        ][-1]
        assert poll["order[updated_at]"] == ["asc"]
        assert int(poll["filter[updated_at][from]"][0]) == since - index.OVERLAP


def test_cron_fills_it_too(make_app: Any, fast_sandbox: Any) -> None:
    """Sites without a worker run ``flask amocrm process`` from cron: it does the
    index's share of a tick as well."""
    app = _site(make_app)
    result = app.test_cli_runner().invoke(args=["amocrm", "process"])
    assert result.exit_code == 0, result.output
    assert "index fill pages: 2" in result.output.splitlines()
    with app.app_context():
        assert index.complete_since(get_state(app)) is not None


def test_the_index_off_reads_nothing(make_app: Any, fast_sandbox: Any) -> None:
    app = _site(make_app, interval=0)
    with app.app_context():
        assert "index_fill_pages" not in tick(get_state(app))
    assert _lookups(fast_sandbox.requests()) == (0, 0)
    assert not [r for r in fast_sandbox.requests() if r["path"].endswith("contacts")]


def test_the_interval_is_checked_at_init(make_app: Any, sandbox: Any) -> None:
    with pytest.raises(RuntimeError, match="AMOCRM_INDEX_INTERVAL"):
        make_app(AMOCRM_INDEX_INTERVAL=10)
    with pytest.raises(RuntimeError, match="AMOCRM_INDEX_INTERVAL"):
        make_app(AMOCRM_INDEX_INTERVAL="often")


# -- the same answers as the search ---------------------------------------------------


def test_the_index_answers_as_the_search_does(make_app: Any, fast_sandbox: Any) -> None:
    added = fast_sandbox.seed(800, 20, seed=7)
    searching = _site(make_app, interval=0)
    indexed = _site(make_app)
    fill_index(indexed)
    people = [p for p in added["sample"] if p["phone"]]
    assert len(people) >= 3
    for person in people:
        # the phone as the seed wrote it, the e-mail in capitals
        data = {"name": "Visitor", "phone": person["phone"]}
        if person["email"]:
            data["email"] = person["email"].upper()
        fast_sandbox.clear_requests()
        by_search = Progress.from_json(_send(searching, **data).remote)
        searched = _lookups(fast_sandbox.requests())
        fast_sandbox.clear_requests()
        by_index = Progress.from_json(_send(indexed, **data).remote)
        assert by_index.found == by_search.found != {}
        assert by_index.duplicates == by_search.duplicates
        assert searched[0] >= 1
        assert _lookups(fast_sandbox.requests()) == (0, 1)  # one read, no search


def test_a_contact_changed_a_moment_ago_is_judged_on_its_current_phone(
    make_app: Any, fast_sandbox: Any
) -> None:
    ann = _contact(fast_sandbox, "Ann", "+7 912 345-67-89")
    app = _site(make_app)
    fill_index(app)
    assert ("phone", "+79123456789") in _keys(app, ann)
    # a manager changes Ann's phone in amoCRM; no poll has run since
    sandbox_api(
        fast_sandbox,
        "PATCH",
        "/contacts",
        [
            {
                "id": ann,
                "custom_fields_values": [
                    {"field_code": "PHONE", "values": [{"value": "+79990001122"}]}
                ],
            }
        ],
    )
    old = _send(app, name="Visitor", phone="8 912 345 67 89")
    # the index named Ann; the verification read her as she is now: no match
    assert Progress.from_json(old.remote).found == {}
    assert old.remote["contact_id"] != ann
    assert ("phone", "+79123456789") not in _keys(app, ann)
    assert ("phone", "+79990001122") in _keys(app, ann)
    new = _send(app, name="Visitor", phone="+7 999 000-11-22")
    assert new.remote["found"] == {"contact": ann}


def test_a_contact_deleted_in_amocrm_is_not_reused(
    make_app: Any, fast_sandbox: Any
) -> None:
    ann = _contact(fast_sandbox, "Ann", "+7 912 345-67-89")
    app = _site(make_app)
    fill_index(app)
    fast_sandbox.delete("contacts", ann)
    event = _send(app, name="Ann again", phone="+79123456789")
    assert event.status == "delivered"
    assert Progress.from_json(event.remote).found == {}
    assert event.remote["contact_id"] != ann
    assert _keys(app, ann) == set()  # forgotten
    [alive] = [c for c in fast_sandbox.contacts() if not c["is_deleted"]]
    assert alive["id"] == event.remote["contact_id"]


def test_an_incomplete_index_falls_back_to_the_search(
    make_app: Any, fast_sandbox: Any
) -> None:
    fast_sandbox.seed(600, seed=3)
    ann = _contact(fast_sandbox, "Ann", "+7 912 345-67-89")  # the last id: page 3
    app = _site(make_app)
    with app.app_context():
        state = get_state(app)
        assert index.fill_step(state, client_for(state), pages=1) == 1
        assert index.complete_since(state) is None
    assert _keys(app, ann) == set()  # not read yet
    fast_sandbox.clear_requests()
    event = _send(app, name="Visitor", phone="89123456789")
    assert event.remote["found"] == {"contact": ann}
    assert _lookups(fast_sandbox.requests())[0] == 1  # found by the search
    assert ("phone", "+79123456789") in _keys(app, ann)  # and kept since


def test_a_replaced_database_is_not_taken_for_a_complete_index(
    make_app: Any, fast_sandbox: Any, redis_conn: Any, redis_url: str
) -> None:
    ann = _contact(fast_sandbox, "Ann", "+7 912 345-67-89")
    app = _site(make_app, AMOCRM_REDIS_URL=redis_url)
    fill_index(app)
    # the events database is replaced; Redis still says "complete"
    with app.app_context(), get_state(app).session() as session:
        session.execute(delete(EntityKey))
        session.commit()
    event = _send(app, name="Ann", phone="+79123456789")
    assert event.remote["found"] == {"contact": ann}  # searched: not a new person
    with app.app_context():
        assert index.complete_since(get_state(app)) is None
    assert fill_index(app) == 2  # filled again


# -- what it costs --------------------------------------------------------------------


def test_a_burst_of_new_visitors_costs_no_searches(
    make_app: Any, fast_sandbox: Any
) -> None:
    fast_sandbox.seed(2000, 100)
    app = _site(make_app, AMOCRM_BATCH_SIZE=50)
    fill_index(app)
    _send(app, name="Warm", phone="+79990000000")  # the event-id field, once
    fast_sandbox.clear_requests()
    client = app.test_client()
    for n in range(100):
        client.post(
            "/form/callback",
            data={
                "name": f"New {n}",
                "phone": f"+7 915 {n:03d}-00-00",
                "email": f"new{n}@example.org",
            },
        )
    assert deliver_pending(app)["delivered"] == 100
    log = fast_sandbox.requests()
    searches, verifications = _lookups(log)
    assert (searches + verifications) / 100 <= 0.15
    creates = [r for r in log if r["method"] == "POST"]
    assert len(creates) == 2  # two leads/complex calls of 50
    assert len({e.remote["contact_id"] for e in stored_events(app)}) == 101


@pytest.mark.parametrize("interval", [0, 300])
def test_one_new_visitor_alone(make_app: Any, fast_sandbox: Any, interval: int) -> None:
    fast_sandbox.seed(300)
    app = _site(make_app, interval=interval)
    if interval:
        fill_index(app)
    _send(app, name="Warm", phone="+79990000000")
    fast_sandbox.clear_requests()
    event = _send(app, name="Ann", phone="+79161112233", email="ann@example.org")
    assert event.status == "delivered"
    calls = len(fast_sandbox.requests())
    searches, _ = _lookups(fast_sandbox.requests())
    if interval:
        assert calls <= 3 and searches == 0
    else:
        assert searches == 2  # one per phone and e-mail: what the index saves


# -- what the webhooks will call ------------------------------------------------------


def test_changes_from_amocrm_update_the_index(make_app: Any, fast_sandbox: Any) -> None:
    app = _site(make_app)
    fill_index(app)
    item = {
        "id": 777,
        "name": "Boris",
        "updated_at": 1,
        "custom_fields_values": [
            {"field_code": "EMAIL", "values": [{"value": " Boris@Example.COM"}]},
            {"field_code": "PHONE", "values": [{"value": "8 (916) 111-22-33"}]},
        ],
    }
    with app.app_context():
        index.entity_changed(get_state(app), "contacts", item)
    assert _keys(app, 777) == {
        ("name", "boris"),
        ("email", "boris@example.com"),
        ("phone", "+79161112233"),
    }
    with app.app_context():
        index.entity_deleted(get_state(app), "contacts", 777)
    assert _keys(app, 777) == set()
    # as the webhook sends it: custom_fields in the old shape, lists by position
    hook = {
        "id": "778",
        "name": "Vera",
        "last_modified": "1700000000",
        "custom_fields": {
            "0": {
                "id": "1",
                "code": "PHONE",
                "values": {"0": {"value": "89161112244"}},
            },
            "1": {"id": "2", "name": "Birthday", "values": {"0": "1542067200"}},
        },
    }
    with app.app_context():
        index.entity_changed(get_state(app), "contacts", hook)
    assert _keys(app, 778) == {("name", "vera"), ("phone", "+79161112244")}


def test_a_webhook_from_amocrm_updates_the_index(
    make_app: Any, fast_sandbox: Any
) -> None:
    """A manager changes a contact's phone: amoCRM's webhook tells the site, and
    the index knows the new phone before any poll."""
    ann = _contact(fast_sandbox, "Ann", "+7 912 345-67-89")
    secret = "a-webhook-secret-0123456789"
    app = _site(make_app, AMOCRM_WEBHOOK_SECRET=secret)
    fill_index(app)
    body = urlencode(
        [
            ("contacts[update][0][id]", str(ann)),
            ("contacts[update][0][name]", "Ann"),
            ("contacts[update][0][type]", "contact"),
            ("contacts[update][0][last_modified]", "1700000000"),
            ("contacts[update][0][custom_fields][0][id]", "600001"),
            ("contacts[update][0][custom_fields][0][code]", "PHONE"),
            ("contacts[update][0][custom_fields][0][values][0][value]", "89990001122"),
            ("contacts[update][0][custom_fields][0][values][0][enum]", "900001"),
            ("account[id]", "31000001"),
        ]
    )
    answer = app.test_client().post(
        f"/amocrm/webhook/{secret}",
        data=body,
        content_type="application/x-www-form-urlencoded",
    )
    assert answer.status_code == 200
    assert _keys(app, ann) == {("name", "ann"), ("phone", "+79990001122")}
    deleted = urlencode([("contacts[delete][0][id]", str(ann)), ("account[id]", "1")])
    app.test_client().post(
        f"/amocrm/webhook/{secret}",
        data=deleted,
        content_type="application/x-www-form-urlencoded",
    )
    assert _keys(app, ann) == set()
