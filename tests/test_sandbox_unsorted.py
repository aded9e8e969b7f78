"""Incoming leads, leads/complex with duplicate control, notes, tasks and links."""

from __future__ import annotations

FORM = {
    "form_id": "callback",
    "form_name": "Callback",
    "form_page": "https://s.test/",
    "form_sent_at": 1700000000,
    "ip": "1.2.3.4",
    "referer": "https://g.test/",
}


def _phone(value):
    return [{"field_code": "PHONE", "values": [{"value": value, "enum_code": "MOB"}]}]


def _item(**extra):
    item = {
        "source_uid": "site-1",
        "source_name": "Site",
        "metadata": dict(FORM),
        "_embedded": {
            "leads": [{"name": "Call me"}],
            "contacts": [
                {"name": "Ivan", "custom_fields_values": _phone("+79120000001")}
            ],
            "companies": [{"name": "ACME"}],
        },
    }
    item.update(extra)
    return item


def test_unsorted_create_accept_decline_summary(amo, sandbox):
    r = amo.post("/leads/unsorted/forms", json=[_item(), _item(source_name="Other")])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["_total_items"] == 2
    first = body["_embedded"]["unsorted"][0]
    assert first["request_id"] == "0" and first["_embedded"]["leads"][0]["id"]
    contact_id = first["_embedded"]["contacts"][0]["id"]
    # contacts of pending incoming leads are hidden from lists
    assert amo.get("/contacts").status_code == 204
    lead = amo.get(f"/leads/{first['_embedded']['leads'][0]['id']}").json()
    assert lead["status_id"] == 7100001  # the Incoming-leads stage
    listed = amo.get("/leads/unsorted").json()["_embedded"]["unsorted"]
    assert {u["uid"] for u in listed} == {
        u["uid"] for u in body["_embedded"]["unsorted"]
    }
    assert listed[0]["metadata"]["form_id"] == "callback"
    # identical item → error
    dup = amo.post("/leads/unsorted/forms", json=[_item()])
    assert dup.status_code == 400 and "validation-errors" in dup.json()
    uid1, uid2 = (u["uid"] for u in body["_embedded"]["unsorted"])
    acc = amo.post(
        f"/leads/unsorted/{uid1}/accept",
        json={"user_id": 8000002, "status_id": 7100003},
    )
    assert acc.status_code == 200 and acc.json()["uid"] == uid1
    lead = amo.get(f"/leads/{acc.json()['_embedded']['leads'][0]['id']}").json()
    assert lead["status_id"] == 7100003 and lead["responsible_user_id"] == 8000002
    assert amo.get(f"/contacts/{contact_id}").json()["is_unsorted"] is False
    assert amo.post(f"/leads/unsorted/{uid1}/accept", json={}).status_code == 400
    dec = amo.delete(f"/leads/unsorted/{uid2}/decline", json={"user_id": 8000001})
    assert dec.status_code == 200
    assert (
        amo.get(f"/leads/{dec.json()['_embedded']['leads'][0]['id']}").status_code
        == 204
    )
    summary = amo.get("/leads/unsorted/summary").json()
    assert summary["total"] == 2 and summary["accepted"] == 1
    assert summary["declined"] == 1
    assert amo.get("/leads/unsorted").status_code == 204
    states = {u["uid"]: u["status"] for u in sandbox.unsorted()}
    assert states == {uid1: "accepted", uid2: "declined"}


def test_unsorted_validation(amo):
    bad = _item()
    del bad["metadata"]["form_page"]
    r = amo.post("/leads/unsorted/forms", json=[bad, {"source_name": "x"}])
    errors = {
        e["request_id"]: [x["path"] for x in e["errors"]]
        for e in r.json()["validation-errors"]
    }
    assert "metadata.form_page" in errors["0"] and "source_uid" in errors["1"]
    two = _item()
    two["_embedded"]["leads"].append({"name": "second"})
    assert amo.post("/leads/unsorted/forms", json=[two]).status_code == 400


def test_complex_limits_and_response(amo, sandbox):
    r = amo.post(
        "/leads/complex",
        json=[
            {
                "name": "A",
                "request_id": "a",
                "_embedded": {
                    "contacts": [
                        {
                            "first_name": "Ivan",
                            "custom_fields_values": _phone("+7 912 000-00-02"),
                        }
                    ],
                    "companies": [{"name": "ACME"}],
                    "tags": [{"name": "site"}],
                },
            },
            {"name": "B"},
        ],
    )
    assert r.status_code == 200, r.text
    result = r.json()
    assert isinstance(result, list) and result[0]["request_id"] == ["a"]
    assert result[0]["merged"] is False and result[0]["contact_id"]
    assert result[1]["contact_id"] is None and result[1]["company_id"] is None
    contact = amo.get(f"/contacts/{result[0]['contact_id']}").json()
    assert contact["_embedded"]["companies"][0]["id"] == result[0]["company_id"]
    assert amo.post("/leads/complex", json=[{"name": "x"}] * 51).status_code == 400
    two = {"_embedded": {"contacts": [{"name": "a"}, {"name": "b"}]}}
    assert amo.post("/leads/complex", json=[two]).status_code == 400
    many = [{"field_code": "UTM_SOURCE", "values": [{"value": "x"}]}] * 41
    r = amo.post("/leads/complex", json=[{"custom_fields_values": many}])
    assert r.status_code == 400
    # metadata sends the lead to Incoming leads
    r = amo.post(
        "/leads/complex",
        json=[
            {
                "name": "U",
                "status_id": 7100003,
                "_embedded": {
                    "metadata": dict(FORM, category="forms"),
                    "contacts": [{"name": "Z"}],
                },
            }
        ],
    )
    lead = amo.get(f"/leads/{r.json()[0]['id']}").json()
    assert lead["status_id"] == 7100001
    assert len(sandbox.unsorted()) == 1


def test_complex_duplicate_control(amo, sandbox):
    first = amo.post(
        "/leads/complex",
        json=[
            {
                "name": "A",
                "_embedded": {
                    "contacts": [
                        {"name": "Ivan", "custom_fields_values": _phone("89120000003")}
                    ]
                },
            }
        ],
    )
    first = first.json()[0]
    again = {
        "name": "A2",
        "_embedded": {
            "contacts": [
                {"name": "Ivan", "custom_fields_values": _phone("+7 912 000-00-03")}
            ]
        },
    }
    off = amo.post("/leads/complex", json=[again]).json()[0]
    assert off["merged"] is False and off["contact_id"] != first["contact_id"]
    sandbox.reset()
    sandbox.config(rate_limit=0, duplicate_control=True)
    first = amo.post(
        "/leads/complex",
        json=[
            {
                "name": "A",
                "_embedded": {
                    "contacts": [
                        {"name": "Ivan", "custom_fields_values": _phone("89120000003")}
                    ]
                },
            }
        ],
    ).json()[0]
    # never within one request
    both = amo.post("/leads/complex", json=[again, again]).json()
    assert both[0]["merged"] is True and both[0]["contact_id"] == first["contact_id"]
    assert both[0]["id"] == first["id"]
    assert both[1]["merged"] is True  # matches the pre-existing contact too
    new = amo.post(
        "/leads/complex",
        json=[
            {
                "_embedded": {
                    "contacts": [
                        {"name": "Other", "custom_fields_values": _phone("89990000000")}
                    ]
                }
            }
        ],
    ).json()[0]
    assert new["merged"] is False


def test_notes_all_paths_and_types(amo):
    lead = amo.post("/leads", json=[{"name": "N"}]).json()["_embedded"]["leads"][0][
        "id"
    ]
    typed = [
        {"note_type": "common", "params": {"text": "hello"}},
        {
            "note_type": "call_in",
            "params": {
                "uniq": "u1",
                "duration": 60,
                "source": "pbx",
                "link": "https://x/r.mp3",
                "phone": "+7912",
            },
        },
        {"note_type": "service_message", "params": {"service": "site", "text": "t"}},
        {
            "note_type": "geolocation",
            "params": {"text": "t", "address": "a", "longitude": "1", "latitude": "2"},
        },
        {"note_type": "sms_out", "params": {"text": "t", "phone": "+7912"}},
        {"note_type": "attachment", "params": {"file_uuid": "f", "file_name": "a.pdf"}},
    ]
    r = amo.post(f"/leads/{lead}/notes", json=typed)
    assert r.status_code == 200, r.text
    r = amo.post(
        "/leads/notes",
        json=[{"entity_id": lead, "note_type": "common", "params": {"text": "second"}}],
    )
    note_id = r.json()["_embedded"]["notes"][0]["id"]
    assert len(amo.get(f"/leads/{lead}/notes").json()["_embedded"]["notes"]) == 7
    only = amo.get("/leads/notes", params={"filter[note_type]": "sms_out"}).json()
    assert len(only["_embedded"]["notes"]) == 1
    amo.patch(f"/leads/{lead}/notes/{note_id}", json={"params": {"text": "edited"}})
    assert (
        amo.get(f"/leads/{lead}/notes/{note_id}").json()["params"]["text"] == "edited"
    )
    r = amo.patch("/leads/notes", json=[{"id": note_id, "params": {"text": "again"}}])
    assert r.status_code == 200
    assert amo.post(f"/leads/notes/{note_id}/pin").status_code == 204
    for bad in (
        {"entity_id": 1, "note_type": "common", "params": {"text": "x"}},
        {"entity_id": lead, "note_type": "chat", "params": {}},
        {"entity_id": lead, "note_type": "common", "params": {"txt": "x"}},
    ):
        assert amo.post("/leads/notes", json=[bad]).status_code == 400, bad
    assert amo.get("/contacts/notes").status_code == 204


def test_tasks(amo):
    lead = amo.post("/leads", json=[{"name": "T"}]).json()["_embedded"]["leads"][0][
        "id"
    ]
    r = amo.post(
        "/tasks",
        json=[
            {
                "text": "Call",
                "complete_till": 1900000000,
                "entity_id": lead,
                "entity_type": "leads",
                "task_type_id": 1,
            }
        ],
    )
    task = r.json()["_embedded"]["tasks"][0]["id"]
    assert amo.get(f"/leads/{lead}").json()["closest_task_at"] == 1900000000
    assert amo.post("/tasks", json=[{"text": "x"}]).status_code == 400
    assert (
        amo.post(
            "/tasks", json=[{"text": "x", "complete_till": 1, "task_type_id": 99}]
        ).status_code
        == 400
    )
    amo.patch(
        "/tasks", json=[{"id": task, "is_completed": True, "result": {"text": "done"}}]
    )
    got = amo.get(f"/tasks/{task}").json()
    assert got["is_completed"] is True and got["result"] == {"text": "done"}
    open_ = amo.get("/tasks", params={"filter[is_completed]": 0})
    assert open_.status_code == 204
    r = amo.get(
        "/tasks",
        params={
            "filter[entity_type]": "leads",
            "filter[entity_id]": lead,
            "order[complete_till]": "asc",
        },
    )
    assert r.json()["_embedded"]["tasks"][0]["id"] == task


def test_links(amo):
    lead = amo.post("/leads", json=[{"name": "L"}]).json()["_embedded"]["leads"][0][
        "id"
    ]
    contacts = amo.post("/contacts", json=[{"name": "A"}, {"name": "B"}]).json()
    a, b = (c["id"] for c in contacts["_embedded"]["contacts"])
    r = amo.post(
        f"/leads/{lead}/link",
        json=[
            {"to_entity_id": a, "to_entity_type": "contacts"},
            {
                "to_entity_id": b,
                "to_entity_type": "contacts",
                "metadata": {"main_contact": True},
            },
        ],
    )
    assert r.status_code == 200
    links = amo.get(f"/leads/{lead}/links").json()["_embedded"]["links"]
    assert {x["to_entity_id"] for x in links} == {a, b}
    embedded = amo.get(f"/leads/{lead}", params={"with": "contacts"}).json()
    main = [c["id"] for c in embedded["_embedded"]["contacts"] if c["is_main"]]
    assert main == [b]
    assert (
        amo.post(
            f"/leads/{lead}/unlink",
            json=[{"to_entity_id": a, "to_entity_type": "contacts"}],
        ).status_code
        == 204
    )
    mass = amo.get("/contacts/links", params={"filter[entity_id][]": [a, b]})
    assert [x["entity_id"] for x in mass.json()["_embedded"]["links"]] == [b]
    assert amo.post(
        "/contacts/link",
        json=[{"entity_id": a, "to_entity_id": lead, "to_entity_type": "leads"}],
    ).ok
    assert (
        amo.post(
            f"/leads/{lead}/link",
            json=[{"to_entity_id": 1, "to_entity_type": "contacts"}],
        ).status_code
        == 400
    )
    assert (
        amo.post(
            f"/leads/{lead}/link", json=[{"to_entity_id": a, "to_entity_type": "leads"}]
        ).status_code
        == 400
    )
    assert (
        amo.post(
            "/contacts/unlink",
            json=[{"entity_id": a, "to_entity_id": lead, "to_entity_type": "leads"}],
        ).status_code
        == 204
    )


def test_state_and_page(amo, sandbox):
    import requests

    amo.post(
        "/leads/complex",
        json=[
            {
                "name": "<b>Shown</b>",
                "_embedded": {
                    "contacts": [{"name": "Ivan"}],
                    "tags": [{"name": "web"}],
                },
            }
        ],
    )
    assert sandbox.leads()[0]["name"] == "<b>Shown</b>"
    assert sandbox.contacts()[0]["name"] == "Ivan"
    assert sandbox.companies() == [] and sandbox.tasks() == []
    assert sandbox.notes("leads") == []
    page = requests.get(sandbox.url + "/")
    assert page.status_code == 200
    assert "&lt;b&gt;Shown&lt;/b&gt;" in page.text and "Ivan" in page.text
    assert "web" in page.text
