"""The sandbox's account, metadata and entity endpoints over real HTTP."""

from __future__ import annotations

from typing import Any

import requests


def _lead(amo: Any, **fields: Any) -> int:
    r = amo.post("/leads", json=[fields])
    assert r.status_code == 200, r.text
    return r.json()["_embedded"]["leads"][0]["id"]


def _contact(amo: Any, name: str, phone: str | None = None,
             email: str | None = None) -> int:
    cfv = []
    if phone:
        cfv.append({"field_code": "PHONE", "values": [{"value": phone,
                                                       "enum_code": "WORK"}]})
    if email:
        cfv.append({"field_code": "EMAIL", "values": [{"value": email,
                                                       "enum_code": "WORK"}]})
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
        "WORK", "WORKDD", "MOB", "FAX", "HOME", "OTHER"}
    assert {e["code"] for e in by_code["EMAIL"]["enums"]} == {"WORK", "PRIV", "OTHER"}
    assert "POSITION" in by_code
    lead_fields = amo.get("/leads/custom_fields", params={"limit": 250}).json()
    assert len(lead_fields["_embedded"]["custom_fields"]) <= 50
    codes = {f["code"] for f in lead_fields["_embedded"]["custom_fields"]}
    assert {"UTM_SOURCE", "GCLID", "_YM_UID", "ROISTAT", "REFERRER"} <= codes
    assert amo.get("/leads/custom_fields/1").status_code == 404


def test_create_get_update_lead(amo):
    lead_id = _lead(amo, name="Order", price=1000,
                    custom_fields_values=[{"field_code": "UTM_SOURCE",
                                           "values": [{"value": "google"}]}],
                    _embedded={"tags": [{"name": "site"}]})
    lead = amo.get(f"/leads/{lead_id}").json()
    assert lead["price"] == 1000 and lead["pipeline_id"] == 7000001
    assert lead["custom_fields_values"][0]["values"] == [{"value": "google"}]
    assert [t["name"] for t in lead["_embedded"]["tags"]] == ["site"]
    r = amo.patch(f"/leads/{lead_id}", json={"status_id": 142, "pipeline_id": 7000001,
                                             "tags_to_add": [{"name": "won"}]})
    assert r.status_code == 200 and r.json()["id"] == lead_id
    lead = amo.get(f"/leads/{lead_id}").json()
    assert lead["status_id"] == 142 and lead["closed_at"]
    assert {t["name"] for t in lead["_embedded"]["tags"]} == {"site", "won"}
    assert amo.get("/leads/999").status_code == 204
