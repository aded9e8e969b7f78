"""The example site: its callback form becomes an event with the visit's context, and
its rules validate against the sandbox's account."""

from __future__ import annotations

import os
from typing import Any

import pytest

from flask_amocrm import Event
from flask_amocrm.testing import deliver_pending, record_events


@pytest.fixture()
def site(sandbox: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    from example_app.site import create_app

    # The site reads every AMOCRM_* variable as a setting: not the runner's own
    # (AMOCRM_TEST_REDIS_URL and the like are not settings).
    for name in list(os.environ):
        if name.startswith("AMOCRM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AMOCRM_BASE_URL", sandbox.url)
    monkeypatch.setenv("AMOCRM_TOKEN", sandbox.token)
    monkeypatch.setenv("AMOCRM_DELIVERY", "deferred")
    monkeypatch.setenv("EXAMPLE_INSTANCE_PATH", str(tmp_path))
    app = create_app()
    app.config.update(TESTING=True, WTF_CSRF_ENABLED=False)
    return app


def test_the_callback_form_becomes_a_lead_with_note_and_task(
    site: Any, sandbox: Any
) -> None:
    client = site.test_client()
    client.get("/?utm_source=yandex&utm_campaign=sofas")
    with record_events(site) as events:
        response = client.post("/", data={"name": "Anna", "phone": "+79123456789"})
    assert response.status_code == 302
    [event] = events
    assert event.data == {"name": "Anna", "phone": "+79123456789", "email": ""}
    assert event.context["utm"]["utm_source"] == "yandex"
    assert deliver_pending(site)["delivered"] == 1
    [lead] = sandbox.leads()
    assert lead["name"] == "Callback: Anna"
    assert [t["name"] for t in lead["_embedded"]["tags"]] == ["site", "yandex"]
    [task] = sandbox.tasks()
    assert task["text"] == "Call Anna back: +79123456789"
    assert task["task_type_id"] == 1
    [note] = [n for n in sandbox.notes("leads") if n["entity_id"] == lead["id"]]
    assert "Campaign: sofas" in note["params"]["text"]


def test_an_invalid_form_is_not_captured(site: Any) -> None:
    with record_events(site) as events:
        response = site.test_client().post("/", data={"name": "", "phone": ""})
    assert response.status_code == 200
    assert b"This field is required" in response.data
    assert events == []
    with site.app_context(), site.extensions["amocrm"].session() as session:
        assert session.query(Event).count() == 0


def test_the_example_rules_pass_check(site: Any) -> None:
    result = site.test_cli_runner().invoke(args=["amocrm", "check"])
    assert result.exit_code == 0, result.output


def test_an_order_is_paid_when_its_deal_is_won_in_amocrm(
    site: Any, sandbox: Any
) -> None:
    client = site.test_client()
    answer = client.post("/order", data={"name": "Anna", "phone": "+79123456789"})
    assert answer.status_code == 302 and answer.location.endswith("/orders/1001")
    assert client.get("/orders/1001").json["status"] == "new"
    assert deliver_pending(site)["delivered"] == 1
    [lead] = sandbox.leads()
    assert lead["name"] == "Order 1001: Chesterfield"

    sandbox.move_lead(lead["id"], 142)  # a manager wins the deal
    # No webhook reaches this test client: the events log does (reconciliation).
    result = site.test_cli_runner().invoke(args=["amocrm", "process"])
    assert result.exit_code == 0, result.output
    assert client.get("/orders/1001").json == {
        "number": 1001,
        "product": "Chesterfield",
        "name": "Anna",
        "status": "paid",
    }


def test_a_callback_lead_won_pays_no_order(site: Any, sandbox: Any) -> None:
    client = site.test_client()
    client.post("/order", data={"name": "Anna", "phone": "+79123456789"})
    client.post("/", data={"name": "Boris", "phone": "+79120000000"})
    assert deliver_pending(site)["delivered"] == 2
    callback = next(lead for lead in sandbox.leads() if lead["name"].startswith("Call"))
    sandbox.move_lead(callback["id"], 142)
    assert site.test_cli_runner().invoke(args=["amocrm", "process"]).exit_code == 0
    assert client.get("/orders/1001").json["status"] == "new"
