"""What published amoCRM clients call and the sandbox lacked (issue 17), via HTTP."""

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


# -- item 4: PATCH and DELETE a custom field, the field groups -------------


def test_custom_field_patch_delete_and_groups(amo):
    r = amo.post(
        "/leads/custom_fields",
        json=[
            {
                "name": "Size",
                "type": "select",
                "enums": [{"value": "S"}, {"value": "M"}],
            }
        ],
    )
    field = r.json()["_embedded"]["custom_fields"][0]
    small, medium = field["enums"]
    # a single object on /{id}: rename, keep S (renamed), drop M, add L
    r = amo.patch(
        f"/leads/custom_fields/{field['id']}",
        json={
            "name": "Shirt size",
            "sort": 7,
            "enums": [{"id": small["id"], "value": "Small"}, {"value": "L"}],
        },
    )
    assert r.status_code == 200, r.text
    got = amo.get(f"/leads/custom_fields/{field['id']}").json()
    assert got["name"] == "Shirt size" and got["sort"] == 7
    assert [(e["value"]) for e in got["enums"]] == ["Small", "L"]
    assert got["enums"][0]["id"] == small["id"]
    assert medium["id"] not in [e["id"] for e in got["enums"]]
    # the collection form, an array naming ids, echoing request_id
    r = amo.patch("/leads/custom_fields", json=[{"id": field["id"], "name": "Size"}])
    assert r.status_code == 200, r.text
    assert r.json()["_embedded"]["custom_fields"][0]["request_id"] == "0"
    assert amo.get(f"/leads/custom_fields/{field['id']}").json()["name"] == "Size"
    # the type is fixed; a fetched field sent back whole is accepted
    got = amo.get(f"/leads/custom_fields/{field['id']}").json()
    assert amo.patch(f"/leads/custom_fields/{field['id']}", json=got).status_code == 200
    # a lead holding a value loses it when the field goes
    lead = amo.post(
        "/leads",
        json=[
            {
                "name": "With size",
                "custom_fields_values": [
                    {"field_id": field["id"], "values": [{"value": "L"}]}
                ],
            }
        ],
    ).json()["_embedded"]["leads"][0]["id"]
    r = amo.delete(f"/leads/custom_fields/{field['id']}")
    assert r.status_code == 204 and r.content == b""
    r = amo.get(f"/leads/custom_fields/{field['id']}")
    assert r.status_code == 404
    assert r.json()["detail"] == "Custom field not found"
    assert amo.delete(f"/leads/custom_fields/{field['id']}").status_code == 404
    assert amo.get(f"/leads/{lead}").json()["custom_fields_values"] is None
    # a predefined field (PHONE) cannot be deleted
    fields = amo.get("/contacts/custom_fields").json()["_embedded"]["custom_fields"]
    phone = next(f for f in fields if f["code"] == "PHONE")
    r = amo.delete(f"/contacts/custom_fields/{phone['id']}")
    assert r.status_code == 400
    assert r.headers["Content-Type"].startswith("application/problem+json")
    # groups: the default group holds the fields
    for entity in ("leads", "contacts", "companies"):
        r = amo.get(f"/{entity}/custom_fields/groups")
        assert r.status_code == 200, (entity, r.status_code)
        body = r.json()
        assert body["_page"] == 1 and body["_total_items"] >= 1
        groups = body["_embedded"]["custom_field_groups"]
        default = groups[0]
        assert default["is_predefined"] is True and default["entity_type"] == entity
        assert isinstance(default["id"], str) and default["fields"]


# -- item 5: pipelines and statuses: create, change, delete ------------------


def test_pipeline_and_status_writes(amo):
    r = amo.post(
        "/leads/pipelines",
        json=[
            {
                "name": "Wholesale",
                "sort": 30,
                "is_main": False,
                "is_unsorted_on": True,
                "_embedded": {
                    "statuses": [
                        {"name": "New order", "sort": 10, "color": "#fffeb2"},
                        {"name": "Invoice sent", "sort": 20, "color": "#fffd7f"},
                        {"id": 142, "name": "Paid"},
                    ]
                },
            }
        ],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["_total_items"] == 1
    created = body["_embedded"]["pipelines"][0]
    assert created["request_id"] == "0" and created["name"] == "Wholesale"
    pid = created["id"]
    statuses = created["_embedded"]["statuses"]
    assert statuses[0]["type"] == 1
    assert [st["name"] for st in statuses[1:3]] == ["New order", "Invoice sent"]
    assert [st["id"] for st in statuses[-2:]] == [142, 143]
    assert statuses[-2]["name"] == "Paid"
    assert all(st["pipeline_id"] == pid for st in statuses)
    assert pid in [
        p["id"] for p in amo.get("/leads/pipelines").json()["_embedded"]["pipelines"]
    ]
    # statuses: add, change, delete
    r = amo.post(
        f"/leads/pipelines/{pid}/statuses",
        json=[{"name": "Shipped", "sort": 30, "color": "#ffcc66"}],
    )
    assert r.status_code == 200, r.text
    shipped = r.json()["_embedded"]["statuses"][0]
    assert shipped["request_id"] == "0" and shipped["pipeline_id"] == pid
    r = amo.patch(
        f"/leads/pipelines/{pid}/statuses/{shipped['id']}", json={"name": "Sent out"}
    )
    assert r.status_code == 200, r.text
    got = amo.get(f"/leads/pipelines/{pid}/statuses/{shipped['id']}").json()
    assert got["name"] == "Sent out"
    ids = [
        st["id"]
        for st in amo.get(f"/leads/pipelines/{pid}/statuses").json()["_embedded"][
            "statuses"
        ]
    ]
    assert ids[-2:] == [142, 143] and shipped["id"] in ids
    # a lead in the new status: the status cannot go while it holds it
    lead = amo.post(
        "/leads",
        json=[{"name": "Order", "pipeline_id": pid, "status_id": shipped["id"]}],
    ).json()["_embedded"]["leads"][0]["id"]
    assert (
        amo.delete(f"/leads/pipelines/{pid}/statuses/{shipped['id']}").status_code
        == 400
    )
    amo.patch(f"/leads/{lead}", json={"status_id": 142, "pipeline_id": pid})
    r = amo.delete(f"/leads/pipelines/{pid}/statuses/{shipped['id']}")
    assert r.status_code == 204
    assert (
        amo.get(f"/leads/pipelines/{pid}/statuses/{shipped['id']}").status_code == 404
    )
    # 142, 143 and Incoming leads cannot be deleted
    for system in (142, 143, statuses[0]["id"]):
        r = amo.delete(f"/leads/pipelines/{pid}/statuses/{system}")
        assert r.status_code == 400, system
        assert r.headers["Content-Type"].startswith("application/problem+json")
    # fetched objects sent back whole are accepted; 142 cannot move
    won = amo.get(f"/leads/pipelines/{pid}/statuses/142").json()
    r = amo.patch(f"/leads/pipelines/{pid}/statuses/142", json=won)
    assert r.status_code == 200, r.text
    r = amo.patch(f"/leads/pipelines/{pid}/statuses/142", json={"sort": 5})
    assert r.status_code == 400
    fetched = amo.get(f"/leads/pipelines/{pid}").json()
    assert amo.patch(f"/leads/pipelines/{pid}", json=fetched).status_code == 200
    # the pipeline: change, make main, delete
    r = amo.patch(f"/leads/pipelines/{pid}", json={"name": "Wholesale B2B"})
    assert r.status_code == 200 and r.json()["name"] == "Wholesale B2B"
    assert amo.delete(f"/leads/pipelines/{pid}").status_code == 400  # holds a lead
    amo.patch(f"/leads/{lead}", json={"pipeline_id": 7000001, "status_id": 142})
    assert (
        amo.patch(f"/leads/pipelines/{pid}", json={"is_main": True}).status_code == 200
    )
    pipelines = amo.get("/leads/pipelines").json()["_embedded"]["pipelines"]
    assert [p["id"] for p in pipelines if p["is_main"]] == [pid]
    assert amo.delete(f"/leads/pipelines/{pid}").status_code == 400  # the main one
    amo.patch("/leads/pipelines/7000001", json={"is_main": True})
    r = amo.delete(f"/leads/pipelines/{pid}")
    assert r.status_code == 204
    assert amo.get(f"/leads/pipelines/{pid}").status_code == 404
    # a pipeline needs a name and statuses
    r = amo.post("/leads/pipelines", json=[{"name": ""}])
    assert r.status_code == 400
    paths = {e["path"] for e in r.json()["validation-errors"][0]["errors"]}
    assert paths == {"name", "_embedded.statuses"}
