"""The sandbox's account, metadata and entity endpoints over real HTTP."""

from __future__ import annotations

from typing import Any

import requests


def _lead(amo: Any, **fields: Any) -> int:
    r = amo.post("/leads", json=[fields])
    assert r.status_code == 200, r.text
    return r.json()["_embedded"]["leads"][0]["id"]


def _contact(
    amo: Any, name: str, phone: str | None = None, email: str | None = None
) -> int:
    cfv = []
    if phone:
        cfv.append(
            {"field_code": "PHONE", "values": [{"value": phone, "enum_code": "WORK"}]}
        )
    if email:
        cfv.append(
            {"field_code": "EMAIL", "values": [{"value": email, "enum_code": "WORK"}]}
        )
    r = amo.post("/contacts", json=[{"name": name, "custom_fields_values": cfv}])
    assert r.status_code == 200, r.text
    return r.json()["_embedded"]["contacts"][0]["id"]


def test_account_with_options(amo):
    r = amo.get("/account", params={"with": "task_types,amojo_id,version"})
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/hal+json")
    assert r.headers["X-Request-Id"]
    body = r.json()
    assert body["subdomain"] == "sandbox"
    assert body["amojo_id"] and body["version"]
    assert {t["id"] for t in body["_embedded"]["task_types"]} >= {1, 2}
    assert body["_links"]["self"]["href"].endswith("/api/v4/account")


def test_users_pipelines_and_fields(amo):
    users = amo.get("/users").json()
    assert users["_total_items"] >= 4 and users["_page_count"] == 1
    assert any(not u["rights"]["is_active"] for u in users["_embedded"]["users"])
    pipelines = amo.get("/leads/pipelines").json()["_embedded"]["pipelines"]
    assert len(pipelines) == 2 and sum(p["is_main"] for p in pipelines) == 1
    for p in pipelines:
        ids = {s["id"]: s["type"] for s in p["_embedded"]["statuses"]}
        assert 142 in ids and 143 in ids and 1 in ids.values()
    assert amo.get("/leads/pipelines/1").status_code == 404
    assert amo.get("/leads/pipelines/1").json()["detail"] == "Pipeline not found"
    fields = amo.get("/contacts/custom_fields").json()["_embedded"]["custom_fields"]
    by_code = {f["code"]: f for f in fields if f["code"]}
    assert {e["code"] for e in by_code["PHONE"]["enums"]} == {
        "WORK",
        "WORKDD",
        "MOB",
        "FAX",
        "HOME",
        "OTHER",
    }
    assert {e["code"] for e in by_code["EMAIL"]["enums"]} == {"WORK", "PRIV", "OTHER"}
    assert "POSITION" in by_code
    lead_fields = amo.get("/leads/custom_fields", params={"limit": 250}).json()
    assert len(lead_fields["_embedded"]["custom_fields"]) <= 50
    codes = {f["code"] for f in lead_fields["_embedded"]["custom_fields"]}
    assert {"UTM_SOURCE", "GCLID", "_YM_UID", "ROISTAT", "REFERRER"} <= codes
    assert amo.get("/leads/custom_fields/1").status_code == 404


def test_create_get_update_lead(amo):
    lead_id = _lead(
        amo,
        name="Order",
        price=1000,
        custom_fields_values=[
            {"field_code": "UTM_SOURCE", "values": [{"value": "google"}]}
        ],
        _embedded={"tags": [{"name": "site"}]},
    )
    lead = amo.get(f"/leads/{lead_id}").json()
    assert lead["price"] == 1000 and lead["pipeline_id"] == 7000001
    assert lead["custom_fields_values"][0]["values"] == [{"value": "google"}]
    assert [t["name"] for t in lead["_embedded"]["tags"]] == ["site"]
    r = amo.patch(
        f"/leads/{lead_id}",
        json={
            "status_id": 142,
            "pipeline_id": 7000001,
            "tags_to_add": [{"name": "won"}],
        },
    )
    assert r.status_code == 200 and r.json()["id"] == lead_id
    lead = amo.get(f"/leads/{lead_id}").json()
    assert lead["status_id"] == 142 and lead["closed_at"]
    assert {t["name"] for t in lead["_embedded"]["tags"]} == {"site", "won"}
    assert amo.get("/leads/999").status_code == 204


def test_validation_errors(amo):
    r = amo.post(
        "/leads",
        json=[
            {"name": "ok"},
            {
                "name": "bad",
                "custom_fields_values": [{"field_id": 1, "values": [{"value": "x"}]}],
            },
        ],
    )
    assert r.status_code == 400
    assert r.headers["Content-Type"].startswith("application/problem+json")
    body = r.json()
    assert {"title", "type", "status", "detail"} <= set(body)
    [item] = body["validation-errors"]
    assert item["request_id"] == "1"
    assert item["errors"][0] == {
        "code": "NotSupportedChoice",
        "path": "custom_fields_values.0.field_id",
        "detail": "The value you selected is not a valid choice.",
    }
    assert amo.get("/leads").status_code == 204  # nothing created from the batch
    fields = amo.get("/leads/custom_fields", params={"page": 1}).json()
    select = next(
        f for f in fields["_embedded"]["custom_fields"] if f["type"] == "select"
    )
    r = amo.post(
        "/leads",
        json=[
            {
                "request_id": "x",
                "custom_fields_values": [
                    {"field_id": select["id"], "values": [{"value": "courier"}]}
                ],
            }
        ],
    )
    err = r.json()["validation-errors"][0]
    assert err["request_id"] == "x"
    assert err["errors"][0]["path"] == "custom_fields_values.0.values.0.value"
    assert err["errors"][0]["code"] == "NotSupportedChoice"
    r = amo.post(
        "/leads",
        json=[
            {
                "custom_fields_values": [
                    {
                        "field_id": select["id"],
                        "values": [{"value": "Courier", "color": 1}],
                    }
                ]
            }
        ],
    )
    assert r.json()["validation-errors"][0]["errors"][0]["code"] == "FieldNotExpected"
    r = amo.post("/leads", json=[{"name": "x", "bogus": 1}])
    assert r.json()["validation-errors"][0]["errors"][0] == {
        "code": "FieldNotExpected",
        "path": "bogus",
        "detail": "This field was not expected.",
    }


def test_wrong_shapes_and_references(amo):
    fields = amo.get("/leads/custom_fields", params={"page": 1}).json()
    by_type = {f["type"]: f for f in fields["_embedded"]["custom_fields"]}
    cases = [
        ("numeric", [{"value": "abc"}]),
        ("checkbox", [{"value": "yes"}]),
        ("date", [{"value": "yesterday"}]),
        ("text", [{"value": {"a": 1}}]),
        ("legal_entity", [{"value": "ACME"}]),
    ]
    for type_, values in cases:
        r = amo.post(
            "/leads",
            json=[
                {
                    "custom_fields_values": [
                        {"field_id": by_type[type_]["id"], "values": values}
                    ]
                }
            ],
        )
        assert r.status_code == 400, type_
    good = [
        ("numeric", [{"value": 12.5}]),
        ("checkbox", [{"value": True}]),
        ("date", [{"value": "2024-01-02T00:00:00+00:00"}]),
        ("date_time", [{"value": 1700000000}]),
        (
            "multiselect",
            [{"value": "Doors"}, {"enum_id": by_type["multiselect"]["enums"][0]["id"]}],
        ),
        ("smart_address", [{"value": "Moscow", "enum_code": "city"}]),
        ("legal_entity", [{"value": {"name": "ACME", "vat_id": "123"}}]),
        ("chained_list", [{"catalog_id": 1, "catalog_element_id": 2}]),
    ]
    for type_, values in good:
        r = amo.post(
            "/leads",
            json=[
                {
                    "custom_fields_values": [
                        {"field_id": by_type[type_]["id"], "values": values}
                    ]
                }
            ],
        )
        assert r.status_code == 200, (type_, r.text)
    lead = amo.get("/leads", params={"order[id]": "desc", "limit": 8}).json()
    date_lead = lead["_embedded"]["leads"][5]
    assert date_lead["custom_fields_values"][0]["values"][0]["value"] == 1704153600
    for bad in (
        {"responsible_user_id": 1},
        {"pipeline_id": 1},
        {"status_id": 1},
        {"pipeline_id": 7000002, "status_id": 7100002},
    ):
        r = amo.post("/leads", json=[bad])
        assert r.status_code == 400, bad
        assert (
            r.json()["validation-errors"][0]["errors"][0]["code"]
            == "NotSupportedChoice"
        )
    assert amo.post("/leads", json=[{}] * 251).status_code == 400
    assert amo.post("/leads", json={"name": "x"}).status_code == 400
    r = amo.post(
        "/leads", data="{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["status"] == 400


def test_pagination_and_204(amo):
    assert amo.get("/leads").status_code == 204
    assert amo.get("/leads").content == b""
    amo.post("/leads", json=[{"name": f"L{i}"} for i in range(5)])
    first = amo.get("/leads", params={"limit": 2}).json()
    assert first["_page"] == 1 and "next" in first["_links"]
    assert "prev" not in first["_links"]
    last = amo.get("/leads", params={"limit": 2, "page": 3}).json()
    assert len(last["_embedded"]["leads"]) == 1 and "next" not in last["_links"]
    assert "prev" in last["_links"]
    exact = amo.get("/leads", params={"limit": 5}).json()
    assert "next" not in exact["_links"]
    assert amo.get("/leads", params={"limit": 2, "page": 4}).status_code == 204
    nxt = requests.get(
        first["_links"]["next"]["href"],
        headers={"Authorization": "Bearer sandbox-token"},
    )
    assert nxt.json()["_page"] == 2
    nxt.close()
    assert amo.get("/leads", params={"limit": 251}).status_code == 400
    names = [
        lead["name"]
        for lead in amo.get("/leads", params={"order[id]": "desc"}).json()["_embedded"][
            "leads"
        ]
    ]
    assert names == ["L4", "L3", "L2", "L1", "L0"]


def test_query_search_phones_emails_not_notes(amo):
    c1 = _contact(amo, "Ivan", phone="+7 912 345-67-89")
    c2 = _contact(amo, "Petr", phone="89001112233", email="Petr@Example.COM")
    amo.post(
        "/contacts/notes",
        json=[
            {
                "entity_id": c1,
                "note_type": "common",
                "params": {"text": "call 89557776655"},
            }
        ],
    )

    def found(q: str) -> set[int]:
        r = amo.get("/contacts", params={"query": q})
        if r.status_code == 204:
            return set()
        return {c["id"] for c in r.json()["_embedded"]["contacts"]}

    for q in ("+7 912 345-67-89", "89123456789", "9123456789", "+79123456789"):
        assert found(q) == {c1}, q
    assert found("+7 (900) 111-22-33") == {c2}
    assert found("petr@example.com") == {c2}
    assert found("PETR@EXAMPLE.COM") == {c2}
    assert found("89557776655") == set()
    assert found("ivan") == {c1}


def test_filters_and_with(amo):
    contact = _contact(amo, "Anna", phone="111222333")
    a = _lead(amo, name="A", price=100, _embedded={"contacts": [{"id": contact}]})
    b = _lead(amo, name="B", price=500, pipeline_id=7000002)
    r = amo.get("/leads", params=[("filter[id][]", a), ("filter[id][]", b)])
    assert len(r.json()["_embedded"]["leads"]) == 2
    r = amo.get("/leads", params={"filter[price][from]": 200, "filter[price][to]": 900})
    assert [x["id"] for x in r.json()["_embedded"]["leads"]] == [b]
    r = amo.get(
        "/leads",
        params={
            "filter[statuses][0][pipeline_id]": 7000002,
            "filter[statuses][0][status_id]": 7200002,
        },
    )
    assert [x["id"] for x in r.json()["_embedded"]["leads"]] == [b]
    r = amo.get("/leads", params={"filter[pipeline_id]": 7000001})
    assert [x["id"] for x in r.json()["_embedded"]["leads"]] == [a]
    lead = amo.get(f"/leads/{a}", params={"with": "contacts"}).json()
    assert lead["_embedded"]["contacts"][0]["id"] == contact
    assert lead["_embedded"]["contacts"][0]["is_main"] is True
    assert "contacts" not in amo.get(f"/leads/{a}").json()["_embedded"]
    c = amo.get(f"/contacts/{contact}", params={"with": "leads"}).json()
    assert [x["id"] for x in c["_embedded"]["leads"]] == [a]


def test_contacts_companies_patch_and_tags(amo):
    contact = _contact(amo, "Old")
    r = amo.patch(
        "/contacts",
        json=[
            {
                "id": contact,
                "first_name": "New",
                "last_name": "Name",
                "_embedded": {"tags": [{"name": "vip"}]},
            }
        ],
    )
    assert r.status_code == 200
    assert r.json()["_embedded"]["contacts"][0]["request_id"] == "0"
    got = amo.get(f"/contacts/{contact}").json()
    assert got["first_name"] == "New" and got["_embedded"]["tags"][0]["name"] == "vip"
    amo.patch(f"/contacts/{contact}", json={"tags_to_delete": [{"name": "vip"}]})
    assert amo.get(f"/contacts/{contact}").json()["_embedded"]["tags"] == []
    r = amo.post(
        "/companies",
        json=[
            {
                "name": "ACME",
                "custom_fields_values": [
                    {"field_code": "WEB", "values": [{"value": "https://acme.test"}]},
                    {"field_code": "ADDRESS", "values": [{"value": "Moscow"}]},
                ],
            }
        ],
    )
    company = r.json()["_embedded"]["companies"][0]["id"]
    assert amo.patch("/companies", json=[{"id": 1, "name": "x"}]).status_code == 400
    r = amo.post("/companies/tags", json=[{"name": "partner"}])
    assert r.json()["_embedded"]["tags"][0]["name"] == "partner"
    tags = amo.get("/companies/tags", params={"filter[name]": "partner"}).json()
    assert len(tags["_embedded"]["tags"]) == 1
    assert amo.get("/leads/tags").status_code == 204
    assert amo.get(f"/companies/{company}").json()["name"] == "ACME"


def test_create_custom_field(amo):
    r = amo.post(
        "/leads/custom_fields",
        json=[
            {
                "name": "Source site",
                "type": "select",
                "code": "SITE",
                "enums": [{"value": "a.test"}, {"value": "b.test"}],
            }
        ],
    )
    assert r.status_code == 200, r.text
    field = r.json()["_embedded"]["custom_fields"][0]
    assert field["code"] == "SITE" and len(field["enums"]) == 2
    assert (
        amo.post(
            "/leads",
            json=[
                {
                    "custom_fields_values": [
                        {"field_code": "SITE", "values": [{"value": "b.test"}]}
                    ]
                }
            ],
        ).status_code
        == 200
    )
    bad = amo.post("/leads/custom_fields", json=[{"name": "x", "type": "multitext"}])
    assert bad.status_code == 400
    total = amo.get("/leads/custom_fields").json()["_total_items"]
    pages = [amo.get("/leads/custom_fields", params={"page": p}) for p in (1, 2)]
    seen = sum(
        len(p.json()["_embedded"]["custom_fields"])
        for p in pages
        if p.status_code == 200
    )
    assert seen == total


def test_notes_tasks_and_links_take_250_a_call_and_complex_50(amo):
    lead = _lead(amo, name="Many")
    contact = _contact(amo, "Ann")
    for path, item, key in (
        (
            "/leads/notes",
            {"entity_id": lead, "note_type": "common", "params": {"text": "n"}},
            "notes",
        ),
        (
            "/tasks",
            {
                "entity_id": lead,
                "entity_type": "leads",
                "text": "t",
                "complete_till": 1900000000,
            },
            "tasks",
        ),
        (
            "/leads/link",
            {"entity_id": lead, "to_entity_id": contact, "to_entity_type": "contacts"},
            "links",
        ),
    ):
        ok = amo.post(path, json=[item] * 250)
        assert ok.status_code == 200, (path, ok.text)
        assert len(ok.json()["_embedded"][key]) == 250
        refused = amo.post(path, json=[item] * 251)
        assert refused.status_code == 400, path
        assert "at most 250" in refused.json()["detail"]
    listed = amo.get("/leads/notes", params={"limit": 250}).json()
    assert len(listed["_embedded"]["notes"]) == 250
    # Leads with their contact: at most 50 a call.
    leads = [{"name": "x", "_embedded": {"contacts": [{"first_name": "A"}]}}]
    assert amo.post("/leads/complex", json=leads * 50).status_code == 200
    refused = amo.post("/leads/complex", json=leads * 51)
    assert refused.status_code == 400
    assert "at most 50" in refused.json()["detail"]
