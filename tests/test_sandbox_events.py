"""Sandbox webhooks (``/api/v4/webhooks``) and events log (``/api/v4/events``).

Shapes from the two-way reference §1 (registration, the form-encoded POST amoCRM
sends) and §2 (the events log and its filters), over real HTTP.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import pytest
import requests

ULID = re.compile(r"[0-9a-z]{26}")


class Receiver:
    """A local HTTP server that records what is POSTed to it."""

    def __init__(self, status: int = 200) -> None:
        received = self.received = []
        answer = status

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                received.append(
                    (
                        self.path,
                        self.headers.get("Content-Type"),
                        self.rfile.read(length).decode(),
                    )
                )
                self.send_response(answer)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def forms(self, count: int, timeout: float = 5.0) -> list[dict[str, str]]:
        deadline = time.time() + timeout
        while len(self.received) < count and time.time() < deadline:
            time.sleep(0.02)
        return [
            dict(parse_qsl(body, keep_blank_values=True))
            for _, _, body in self.received
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver():
    r = Receiver()
    yield r
    r.close()


def _wait_deliveries(sandbox, count, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = sandbox.webhook_deliveries()
        if len(got) >= count:
            return got
        time.sleep(0.02)
    return sandbox.webhook_deliveries()


def test_webhook_subscribe_list_upsert_and_delete(sandbox, amo):
    assert amo.get("/webhooks").status_code == 204
    r = amo.post(
        "/webhooks",
        json={
            "destination": "https://hooks.test/a",
            "settings": ["add_lead"],
            "sort": 10,
        },
    )
    assert r.status_code == 201, r.text
    hook = r.json()
    assert set(hook) == {
        "id", "destination", "created_at", "updated_at", "account_id",
        "created_by", "sort", "disabled", "settings",
    }  # fmt: skip
    assert hook["destination"] == "https://hooks.test/a"
    assert hook["settings"] == ["add_lead"] and hook["disabled"] is False
    # Upsert by destination: the settings are replaced, the id stays.
    r = amo.post(
        "/webhooks",
        json={
            "destination": "https://hooks.test/a",
            "settings": ["status_lead", "note_lead"],
        },
    )
    assert r.status_code == 201
    assert r.json()["id"] == hook["id"]
    assert r.json()["settings"] == ["status_lead", "note_lead"]
    amo.post(
        "/webhooks",
        json={"destination": "https://hooks.test/b", "settings": ["add_task"]},
    )
    listed = amo.get("/webhooks").json()
    assert listed["_total_items"] == 2 and "_page" not in listed
    assert {h["destination"] for h in listed["_embedded"]["webhooks"]} == {
        "https://hooks.test/a",
        "https://hooks.test/b",
    }
    one = amo.get("/webhooks", params={"filter[destination]": "https://hooks.test/b"})
    assert [h["settings"] for h in one.json()["_embedded"]["webhooks"]] == [
        ["add_task"]
    ]
    # DELETE takes the destination in a JSON body.
    r = amo.delete("/webhooks", json={"destination": "https://hooks.test/a"})
    assert r.status_code == 204 and not r.content
    assert (
        amo.delete(
            "/webhooks", json={"destination": "https://hooks.test/a"}
        ).status_code
        == 404
    )
    assert (
        amo.get(
            "/webhooks", params={"filter[destination]": "https://hooks.test/a"}
        ).status_code
        == 204
    )


def test_webhook_subscribe_validation(sandbox, amo):
    for body in (
        {"settings": ["add_lead"]},
        {"destination": "not a url", "settings": ["add_lead"]},
        {"destination": "https://hooks.test/a", "settings": []},
        {"destination": "https://hooks.test/a", "settings": ["add_nothing"]},
    ):
        r = amo.post("/webhooks", json=body)
        assert r.status_code == 400, body
        assert r.headers["Content-Type"].startswith("application/problem+json")
        assert r.json()["validation-errors"]


def test_webhooks_are_form_posts_in_amocrm_shape(sandbox, amo, receiver):
    amo.post(
        "/webhooks",
        json={
            "destination": receiver.url + "/hook?secret=s",
            "settings": [
                "add_lead",
                "update_lead",
                "status_lead",
                "responsible_lead",
                "note_lead",
            ],
        },
    )
    lead = amo.post("/leads", json=[{"name": "Ivan", "price": 500}]).json()
    lead_id = lead["_embedded"]["leads"][0]["id"]
    forms = receiver.forms(1)
    assert receiver.received[0][0] == "/hook?secret=s"
    assert receiver.received[0][1] == "application/x-www-form-urlencoded"
    added = forms[0]
    assert added["leads[add][0][id]"] == str(lead_id)
    assert added["leads[add][0][name]"] == "Ivan"
    assert added["leads[add][0][price]"] == "500"
    for key in ("status_id", "pipeline_id", "responsible_user_id", "date_create",
                "last_modified", "created_user_id", "account_id"):  # fmt: skip
        assert added[f"leads[add][0][{key}]"].isdigit(), key
    assert added["account[subdomain]"] and added["account[id]"].isdigit()
    old_status = added["leads[add][0][status_id]"]
    pipeline = amo.get("/leads/pipelines").json()["_embedded"]["pipelines"][0]
    status = next(
        s["id"]
        for s in pipeline["_embedded"]["statuses"]
        if str(s["id"]) != old_status and s["id"] not in (142, 143)
    )
    amo.patch(
        f"/leads/{lead_id}", json={"status_id": status, "pipeline_id": pipeline["id"]}
    )
    forms = receiver.forms(3)
    update, moved = forms[1], forms[2]
    assert update["leads[update][0][old_status_id]"] == old_status
    assert moved["leads[status][0][status_id]"] == str(status)
    assert moved["leads[status][0][old_status_id]"] == old_status
    amo.post(
        f"/leads/{lead_id}/notes",
        json=[{"note_type": "common", "params": {"text": "hi"}}],
    )
    note = receiver.forms(4)[3]
    assert note["leads[note][0][note][element_id]"] == str(lead_id)
    assert note["leads[note][0][note][element_type]"] == "2"
    assert note["leads[note][0][note][note_type]"] == "4"
    assert note["leads[note][0][note][text]"] == "hi"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", note["leads[note][0][note][date_create]"]
    )
    # A contact is not subscribed: nothing more arrives.
    amo.post("/contacts", json=[{"name": "Anna"}])
    time.sleep(0.2)
    assert len(receiver.received) == 4
    assert [d["event"] for d in sandbox.webhook_deliveries()] == [
        "add_lead", "update_lead", "status_lead", "note_lead",
    ]  # fmt: skip


def test_companies_and_tasks_hooks(sandbox, amo, receiver):
    amo.post(
        "/webhooks",
        json={
            "destination": receiver.url + "/",
            "settings": ["add_company", "add_task", "update_task"],
        },
    )
    company = amo.post("/companies", json=[{"name": "Acme"}]).json()["_embedded"][
        "companies"
    ][0]
    task = amo.post(
        "/tasks",
        json=[
            {
                "text": "Call",
                "complete_till": int(time.time()) + 3600,
                "entity_id": company["id"],
                "entity_type": "companies",
            }
        ],  # fmt: skip
    ).json()["_embedded"]["tasks"][0]
    amo.patch(
        f"/tasks/{task['id']}", json={"is_completed": True, "result": {"text": "done"}}
    )
    forms = receiver.forms(3)
    assert forms[0]["contacts[add][0][type]"] == "company"  # companies come as contacts
    assert forms[0]["contacts[add][0][name]"] == "Acme"
    assert forms[1]["task[add][0][id]"] == str(task["id"])
    assert forms[1]["task[add][0][element_type]"] == "3"
    assert forms[1]["task[add][0][status]"] == "0"
    assert forms[2]["task[update][0][status]"] == "1"
    assert forms[2]["task[update][0][action_close]"] == "1"
    assert forms[2]["task[update][0][result][text]"] == "done"


def test_dropped_webhooks_and_a_slow_receiver_do_not_hold_requests(
    sandbox, amo, receiver
):
    amo.post(
        "/webhooks", json={"destination": receiver.url + "/", "settings": ["add_lead"]}
    )
    sandbox.config(drop_webhooks=2)
    for name in ("a", "b", "c"):
        amo.post("/leads", json=[{"name": name}])
    got = _wait_deliveries(sandbox, 3)
    assert [d["dropped"] for d in got] == [True, True, False]
    assert [f["leads[add][0][name]"] for f in receiver.forms(1)] == ["c"]
    assert got[2]["status"] == 200
    # The events log still has all three: reconciliation can find what was lost.
    events = amo.get("/events", params={"filter[type]": "lead_added"}).json()
    assert len(events["_embedded"]["events"]) == 3
    # A destination that takes the connection and never answers: the API request
    # is not held up; the sender gives up after 2 s and records no answer (0).
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        host, port = silent.getsockname()
        amo.post(
            "/webhooks",
            json={"destination": f"http://{host}:{port}/", "settings": ["add_contact"]},
        )
        started = time.time()
        assert amo.post("/contacts", json=[{"name": "x"}]).status_code == 200
        assert time.time() - started < 1.0
        got = _wait_deliveries(sandbox, 4, timeout=6)
        assert got[3]["event"] == "add_contact" and got[3]["status"] == 0
    finally:
        silent.close()


def test_events_log_and_filters(sandbox, amo):
    before = int(time.time()) - 1
    leads = amo.post("/leads", json=[{"name": "one"}, {"name": "two"}]).json()[
        "_embedded"
    ]["leads"]
    one, two = leads[0]["id"], leads[1]["id"]
    contact = amo.post("/contacts", json=[{"name": "Anna"}]).json()["_embedded"][
        "contacts"
    ][0]
    pipeline = amo.get("/leads/pipelines").json()["_embedded"]["pipelines"][0]
    lead = amo.get(f"/leads/{one}").json()
    won = 142
    amo.patch(f"/leads/{one}", json={"status_id": won, "pipeline_id": pipeline["id"]})
    users = [u["id"] for u in amo.get("/users").json()["_embedded"]["users"]]
    other = next(u for u in users if u != lead["responsible_user_id"])
    amo.patch(f"/leads/{two}", json={"responsible_user_id": other})
    amo.post(
        f"/leads/{one}/notes", json=[{"note_type": "common", "params": {"text": "n"}}]
    )
    task = amo.post(
        "/tasks", json=[{"text": "t", "complete_till": int(time.time()) + 60}]
    ).json()["_embedded"]["tasks"][0]
    amo.patch(f"/tasks/{task['id']}", json={"is_completed": True})

    r = amo.get("/events")
    assert r.status_code == 200
    body = r.json()
    assert body["_page"] == 1 and "self" in body["_links"]
    events = body["_embedded"]["events"]
    assert [e["type"] for e in events] == [
        "task_completed",
        "task_added",
        "common_note_added",
        "entity_responsible_changed",
        "lead_status_changed",
        "contact_added",
        "lead_added",
        "lead_added",
    ]  # fmt: skip  (newest first)
    for e in events:
        assert ULID.fullmatch(e["id"])
        assert set(e) >= {
            "id", "type", "entity_id", "entity_type", "created_by", "created_at",
            "value_after", "value_before", "account_id", "_links", "_embedded",
        }  # fmt: skip
        assert e["_embedded"]["entity"]["id"] == e["entity_id"]
    status = events[4]
    assert status["entity_type"] == "lead" and status["entity_id"] == one
    assert status["value_after"] == [
        {"lead_status": {"id": won, "pipeline_id": pipeline["id"]}}
    ]
    assert status["value_before"] == [
        {"lead_status": {"id": lead["status_id"], "pipeline_id": lead["pipeline_id"]}}
    ]
    assert events[3]["value_after"] == [{"responsible_user": {"id": other}}]
    assert events[2]["value_after"][0]["note"]["id"]
    assert (
        events[5]["entity_type"] == "contact"
        and events[5]["entity_id"] == contact["id"]
    )

    def types(**params):
        r = amo.get("/events", params=params)
        return (
            []
            if r.status_code == 204
            else [e["type"] for e in r.json()["_embedded"]["events"]]
        )

    # Both multi-value syntaxes: comma list and [] / [N] arrays.
    assert types(**{"filter[type]": "lead_added,contact_added"}) == [
        "contact_added",
        "lead_added",
        "lead_added",
    ]
    assert types(**{"filter[type][]": ["lead_added", "contact_added"]}) == types(
        **{"filter[type][0]": "lead_added", "filter[type][1]": "contact_added"}
    )
    assert types(**{"filter[entity]": "task"}) == ["task_completed", "task_added"]
    assert types(**{"filter[entity]": "lead", "filter[entity_id][]": [two]}) == [
        "entity_responsible_changed", "lead_added",
    ]  # fmt: skip
    # entity_id needs exactly one entity type.
    assert amo.get("/events", params={"filter[entity_id]": one}).status_code == 400
    assert (
        amo.get(
            "/events",
            params={"filter[entity]": "lead,contact", "filter[entity_id]": one},
        ).status_code
        == 400
    )
    assert (
        len(
            types(
                **{
                    "filter[created_at][from]": before,
                    "filter[created_at][to]": int(time.time()) + 1,
                }
            )
        )
        == 8
    )
    assert types(**{"filter[created_at]": int(time.time()) + 100}) == []
    assert (
        amo.get(
            "/events", params={"filter[created_at]": f"{before},{before}"}
        ).status_code
        == 204
    )
    assert amo.get("/events", params={"filter[created_by]": 12345}).status_code == 204
    # Paging, at most 100 a page.
    page = amo.get("/events", params={"limit": 3, "page": 2}).json()
    assert page["_page"] == 2 and len(page["_embedded"]["events"]) == 3
    assert "next" in page["_links"] and "prev" in page["_links"]
    assert amo.get("/events", params={"limit": 101}).status_code == 400
    # One event by id; with=lead_name adds the name.
    one_event = amo.get(f"/events/{status['id']}", params={"with": "lead_name"}).json()
    assert one_event["id"] == status["id"]
    assert one_event["_embedded"]["entity"]["name"] == "one"
    assert (
        amo.get("/events", params={"filter[id]": status["id"]}).json()["_embedded"][
            "events"
        ][0]["id"]
        == status["id"]
    )


def test_webhook_custom_fields_in_the_legacy_shape(sandbox, amo, receiver):
    amo.post(
        "/webhooks", json={"destination": receiver.url + "/", "settings": ["add_lead"]}
    )
    fields = amo.get("/leads/custom_fields", params={"limit": 250}).json()
    fields = fields["_embedded"]["custom_fields"]
    date = next(f for f in fields if f["type"] == "date")
    select = next(f for f in fields if f["type"] == "select")
    enum = select["enums"][0]
    amo.post(
        "/leads",
        json=[
            {
                "name": "Fields",
                "custom_fields_values": [
                    {"field_id": date["id"], "values": [{"value": 1700000000}]},
                    {"field_id": select["id"], "values": [{"enum_id": enum["id"]}]},
                ],
            }
        ],
    )
    [form] = receiver.forms(1)
    by_id = {
        form[k]: k[: -len("[id]")]
        for k in form
        if k.startswith("leads[add][0][custom_fields][") and k.endswith("][id]")
    }
    d, s = by_id[str(date["id"])], by_id[str(select["id"])]
    assert form[f"{d}[name]"] == date["name"]
    assert form[f"{d}[values][0]"] == "1700000000"  # dates: a bare value
    assert form[f"{s}[values][0][value]"] == enum["value"]
    assert form[f"{s}[values][0][enum]"] == str(enum["id"])


def test_a_manager_moves_a_lead_without_an_api_request(sandbox, amo, receiver):
    amo.post(
        "/webhooks",
        json={"destination": receiver.url + "/", "settings": ["status_lead"]},
    )
    lead = amo.post("/leads", json=[{"name": "Sofa"}]).json()["_embedded"]["leads"][0]
    start = amo.get(f"/leads/{lead['id']}").json()
    requests_before = len(sandbox.requests())

    moved = sandbox.move_lead(lead["id"], 142)

    assert moved["status_id"] == 142 and moved["pipeline_id"] == start["pipeline_id"]
    assert moved["closed_at"] is not None
    manager = moved["updated_by"]
    users = {u["id"]: u for u in sandbox.state()["users"]}
    assert not users[manager]["rights"]["is_admin"]
    assert users[manager]["rights"]["is_active"]
    assert len(sandbox.requests()) == requests_before  # no API request was made
    [form] = receiver.forms(1)
    assert form["leads[status][0][id]"] == str(lead["id"])
    assert form["leads[status][0][status_id]"] == "142"
    assert form["leads[status][0][old_status_id]"] == str(start["status_id"])
    [event] = amo.get("/events", params={"filter[type]": "lead_status_changed"}).json()[
        "_embedded"
    ]["events"]
    assert event["created_by"] == manager
    assert event["value_before"] == [
        {"lead_status": {"id": start["status_id"], "pipeline_id": start["pipeline_id"]}}
    ]
    # A chosen user, another pipeline; mistakes are 400 or 404.
    moved = sandbox.move_lead(lead["id"], 7200002, user_id=8000003)
    assert (moved["pipeline_id"], moved["status_id"]) == (7000002, 7200002)
    assert moved["updated_by"] == 8000003
    for path, body, status in [
        (f"/_sandbox/leads/{lead['id']}/status", {"status_id": 999}, 400),
        (f"/_sandbox/leads/{lead['id']}/status", {"status_id": "142"}, 400),
        (f"/_sandbox/leads/{lead['id']}/status", {"status_id": 142, "user_id": 1}, 400),
        ("/_sandbox/leads/99999999/status", {"status_id": 142}, 404),
    ]:
        answer = requests.post(sandbox.url + path, json=body, timeout=5)
        assert answer.status_code == status, (body, answer.text)


def test_webhooks_can_be_delayed(sandbox, amo, receiver):
    amo.post(
        "/webhooks", json={"destination": receiver.url + "/", "settings": ["add_lead"]}
    )
    assert sandbox.config(webhook_delay_ms=400)["webhook_delay_ms"] == 400
    started = time.time()
    amo.post("/leads", json=[{"name": "late"}])
    assert time.time() - started < 0.3  # the API request does not wait for it
    # In the events log at once, the webhook only later.
    assert amo.get("/events", params={"filter[type]": "lead_added"}).status_code == 200
    assert receiver.received == []
    [form] = receiver.forms(1)
    assert form["leads[add][0][name]"] == "late"
    assert time.time() - started >= 0.4
    sandbox.reset()
    assert sandbox.config()["webhook_delay_ms"] == 0
