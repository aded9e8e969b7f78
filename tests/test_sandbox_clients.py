"""What published amoCRM clients call and the sandbox lacked (issue 17), over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest


def _create(amo: Any, path: str, item: dict[str, Any]) -> int:
    r = amo.post(path, json=[item])
    assert r.status_code == 200, r.text
    embedded = r.json()["_embedded"]
    return next(iter(embedded.values()))[0]["id"]


# -- item 1: a note by id without the parent entity -------------------------


@pytest.mark.parametrize("entity", ["leads", "contacts", "companies"])
def test_note_by_id_without_parent(amo, entity):
    parent = _create(amo, f"/{entity}", {"name": "Parent"})
    note_id = _create(
        amo,
        f"/{entity}/notes",
        {"entity_id": parent, "note_type": "common", "params": {"text": "Hello"}},
    )
    r = amo.get(f"/{entity}/notes/{note_id}")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/hal+json")
    note = r.json()
    assert note["id"] == note_id and note["entity_id"] == parent
    assert note["note_type"] == "common" and note["params"] == {"text": "Hello"}
    assert note["_links"]["self"]["href"].endswith(
        f"/api/v4/{entity}/{parent}/notes/{note_id}"
    )
    # the same note as the parent-scoped read gives it
    assert amo.get(f"/{entity}/{parent}/notes/{note_id}").json() == note
    assert amo.get(f"/{entity}/notes/999999").status_code == 204


# -- item 2: filter[x][] and filter[x][0] alike ------------------------------


def test_links_filter_indexed_form(amo):
    lead = _create(amo, "/leads", {"name": "Linked"})
    contact = _create(amo, "/contacts", {"name": "Ivan"})
    r = amo.post(
        f"/leads/{lead}/link",
        json=[{"to_entity_id": contact, "to_entity_type": "contacts"}],
    )
    assert r.status_code == 200, r.text
    for key in ("filter[entity_id][]", "filter[entity_id][0]"):
        r = amo.get("/leads/links", params={key: lead})
        assert r.status_code == 200, (key, r.status_code)
        links = r.json()["_embedded"]["links"]
        assert [(lk["entity_id"], lk["to_entity_id"]) for lk in links] == [
            (lead, contact)
        ]


def test_every_list_filter_accepts_indexed_lists(amo):
    a = _create(amo, "/leads", {"name": "A", "price": 10})
    b = _create(amo, "/leads", {"name": "B", "price": 20})
    _create(amo, "/leads", {"name": "C", "price": 30})
    for params in (
        [("filter[id][]", a), ("filter[id][]", b)],
        [("filter[id][0]", a), ("filter[id][1]", b)],
    ):
        r = amo.get("/leads", params=params)
        assert r.status_code == 200
        assert sorted(x["id"] for x in r.json()["_embedded"]["leads"]) == [a, b]
    # tasks, notes, tags, custom fields read the same parser
    t = _create(
        amo,
        "/tasks",
        {
            "text": "Call",
            "complete_till": 2_000_000_000,
            "entity_id": a,
            "entity_type": "leads",
        },
    )
    r = amo.get("/tasks", params={"filter[entity_id][0]": a})
    assert [x["id"] for x in r.json()["_embedded"]["tasks"]] == [t]
    n = _create(
        amo,
        "/leads/notes",
        {"entity_id": b, "note_type": "common", "params": {"text": "x"}},
    )
    r = amo.get("/leads/notes", params={"filter[entity_id][0]": b})
    assert [x["id"] for x in r.json()["_embedded"]["notes"]] == [n]
    r = amo.get("/leads/custom_fields", params={"filter[type][0]": "select"})
    assert r.status_code == 200
    assert {f["type"] for f in r.json()["_embedded"]["custom_fields"]} == {"select"}
    # filter[statuses][0][...] is a list of objects, as before
    pipelines = amo.get("/leads/pipelines").json()["_embedded"]["pipelines"]
    main = next(p for p in pipelines if p["is_main"])
    lead = amo.get(f"/leads/{a}").json()
    r = amo.get(
        "/leads",
        params={
            "filter[statuses][0][pipeline_id]": main["id"],
            "filter[statuses][0][status_id]": lead["status_id"],
        },
    )
    assert a in [x["id"] for x in r.json()["_embedded"]["leads"]]


# -- item 3: _page, _page_count, _total_items on custom-field lists -----------


def test_custom_fields_list_pages_by_page_count(amo):
    for i in range(60):
        _create(amo, "/leads/custom_fields", {"name": f"Extra {i}", "type": "text"})
    first = amo.get("/leads/custom_fields").json()
    total = first["_total_items"]
    assert total > 60 and first["_page"] == 1
    assert first["_page_count"] == (total + 49) // 50
    seen = []
    for page in range(1, first["_page_count"] + 1):
        body = amo.get("/leads/custom_fields", params={"page": page}).json()
        assert body["_page"] == page and body["_page_count"] == first["_page_count"]
        seen += [f["id"] for f in body["_embedded"]["custom_fields"]]
    assert len(seen) == len(set(seen)) == total


# -- item 7: read-only keys sent back, the same on every entity --------------


def test_fetched_task_sent_back_whole(amo):
    lead = _create(amo, "/leads", {"name": "L"})
    r = amo.post(
        "/tasks",
        json=[
            {
                "text": "Call",
                "complete_till": 2_000_000_000,
                "entity_id": lead,
                "entity_type": "leads",
                "_embedded": {},
            }
        ],
    )
    assert r.status_code == 200, r.text
    task_id = r.json()["_embedded"]["tasks"][0]["id"]
    fetched = amo.get(f"/tasks/{task_id}").json()
    assert "group_id" in fetched and "account_id" in fetched
    fetched["text"] = "Call again"
    r = amo.patch("/tasks", json=[fetched])
    assert r.status_code == 200, r.text
    again = amo.get(f"/tasks/{task_id}").json()
    assert again["text"] == "Call again"
    assert again["account_id"] == fetched["account_id"]
    # an unknown key is still refused, with the reference's error shape
    r = amo.post(
        "/tasks",
        json=[{"text": "x", "complete_till": 2_000_000_000, "bogus": 1}],
    )
    assert r.status_code == 400
    errors = r.json()["validation-errors"][0]["errors"]
    assert [e["path"] for e in errors] == ["bogus"]
    r = amo.post(
        "/tasks",
        json=[{"text": "x", "complete_till": 2_000_000_000, "_embedded": {"x": []}}],
    )
    assert r.status_code == 400
    assert r.json()["validation-errors"][0]["errors"][0]["path"] == "_embedded.x"


@pytest.mark.parametrize("entity", ["leads", "contacts", "companies"])
def test_fetched_entity_and_note_sent_back_whole(amo, entity):
    parent = _create(amo, f"/{entity}", {"name": "P", "_embedded": {}})
    fetched = amo.get(f"/{entity}/{parent}").json()
    fetched["name"] = "P2"
    r = amo.patch(f"/{entity}", json=[fetched])
    assert r.status_code == 200, r.text
    note_id = _create(
        amo,
        f"/{entity}/notes",
        {
            "entity_id": parent,
            "note_type": "common",
            "params": {"text": "a"},
            "_embedded": {},
        },
    )
    note = amo.get(f"/{entity}/notes/{note_id}").json()
    note["params"] = {"text": "b"}
    r = amo.patch(f"/{entity}/notes", json=[note])
    assert r.status_code == 200, r.text
    assert amo.get(f"/{entity}/notes/{note_id}").json()["params"] == {"text": "b"}
