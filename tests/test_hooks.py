"""Hooks in the worker (issue 13, section 1): ``before_push`` changing or cancelling a
push, ``after_push``, the API-call hooks around every request, against the sandbox over
HTTP through the public API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from flask_amocrm import (
    AmoIds,
    ApiCall,
    Cancel,
    EntityDraft,
    Event,
    NoteDraft,
    PushPlan,
    TaskDraft,
    event_cancelled,
    mail_sent,
)
from flask_amocrm.testing import deliver_pending
from tests.helpers.e2e import field_values, form_site, stored_events
from tests.helpers.sandbox import api_requests

RULES: dict[str, Any] = {
    "forms": {
        "callback": {
            "contact": {"name": "{{ data.name }}", "phone": "{{ data.phone }}"},
            "lead": {"name": "Callback: {{ data.name }}", "tags": ["site"]},
        },
        "order": {"lead": {"name": "Order: {{ data.name }}"}},
    },
    "mails": {"ORDER_NEW": {"lead": {"name": "Mail: {{ data.name }}"}}},
}


def _site(make_app: Any, **config: Any) -> Flask:
    return form_site(make_app, RULES, **config)


def _amocrm(app: Flask) -> Any:
    return app.extensions["amocrm"].extension


def _post(app: Flask, form: str, **data: str) -> None:
    app.test_client().post(f"/form/{form}", data=data).close()


def test_a_before_push_hook_changes_the_lead_contact_notes_and_tasks(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app)
    seen: list[PushPlan] = []

    @_amocrm(app).before_push
    def adjust(event: Event, plan: PushPlan) -> None:
        seen.append(plan)
        assert plan.lead is not None and plan.contact is not None
        assert plan.lead.name == "Callback: Ann" and plan.lead.tags == ["site"]
        assert plan.contact.get_field("PHONE") == ["+79120001122"]
        plan.lead.name = f"VIP {event.data['name']}"
        plan.lead.price = 500
        plan.lead.tags.append("vip")
        plan.contact.set_field("EMAIL", "ann@example.com")
        plan.notes.append(NoteDraft("Called from the hook", entity="contact"))
        plan.tasks.append(
            TaskDraft("Call Ann", deadline=datetime.now(UTC) + timedelta(hours=2))
        )

    _post(app, "callback", name="Ann", phone="+79120001122")
    assert deliver_pending(app) == {"spooled": 0, "delivered": 1}
    [lead] = fast_sandbox.leads()
    assert lead["name"] == "VIP Ann"
    assert lead["price"] == 500
    assert sorted(t["name"] for t in lead["_embedded"]["tags"]) == ["site", "vip"]
    [contact] = fast_sandbox.contacts()
    assert field_values(contact, "EMAIL") == ["ann@example.com"]
    assert field_values(contact, "PHONE") == ["+79120001122"]
    assert [n["params"]["text"] for n in fast_sandbox.notes("contacts")] == [
        "Called from the hook"
    ]
    [task] = fast_sandbox.tasks()
    assert task["text"] == "Call Ann" and task["entity_id"] == lead["id"]
    assert len(seen) == 1


def test_a_before_push_hook_that_cancels_sends_nothing(
    make_app: Any, fast_sandbox: Any, database_uri: str
) -> None:
    app = _site(make_app, AMOCRM_DATABASE_URI=database_uri)
    cancelled: list[tuple[Event, str]] = []

    @_amocrm(app).before_push
    def no_tests(event: Event, plan: PushPlan) -> None:
        if event.data["name"] == "Test":
            raise Cancel("a test order from the shop's own staff")

    def on_cancelled(sender: Flask, event: Event, reason: str, **extra: Any) -> None:
        cancelled.append((event, reason))

    _post(app, "callback", name="Test", phone="+79120001122")
    with event_cancelled.connected_to(on_cancelled, sender=app):
        assert deliver_pending(app) == {"spooled": 0, "cancelled": 1}
    [event] = stored_events(app)
    assert event.status == "cancelled"
    assert event.last_error == "a test order from the shop's own staff"
    assert event.attempts == 1 and event.remote == {}
    assert [(e.id, r) for e, r in cancelled] == [
        (event.id, "a test order from the shop's own staff")
    ]
    assert fast_sandbox.leads() == [] and fast_sandbox.contacts() == []
    assert not [m for m, _ in api_requests(fast_sandbox) if m != "GET"]
    # never due again by itself
    assert deliver_pending(app) == {"spooled": 0}
    status = app.test_cli_runner().invoke(args=["amocrm", "status"])
    assert "cancelled  1" in status.output
    assert "a test order from the shop's own staff" in status.output


def test_a_raising_hook_fails_only_its_own_event_of_the_batch(
    make_app: Any, fast_sandbox: Any, database_uri: str
) -> None:
    app = _site(make_app, AMOCRM_DATABASE_URI=database_uri)

    @_amocrm(app).before_push
    def picky(event: Event, plan: PushPlan) -> None:
        if event.data["name"] == "Bad":
            raise ValueError("no bad names")

    _post(app, "callback", name="Bad", phone="+79120001122")
    _post(app, "callback", name="Ann", phone="+79120003344")
    assert deliver_pending(app) == {"spooled": 0, "failed": 1, "delivered": 1}
    bad, ann = stored_events(app)
    assert bad.status == "failed"
    assert bad.last_error is not None
    assert bad.last_error.endswith("raised: ValueError: no bad names")
    assert "picky" in bad.last_error
    assert ann.status == "delivered"
    assert [lead["name"] for lead in fast_sandbox.leads()] == ["Callback: Ann"]
    # one batch: both were claimed by the same run, each tried once
    assert bad.attempts == ann.attempts == 1


def test_hooks_narrowed_to_a_form_or_a_mail_event(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app)
    calls: list[str] = []
    amocrm = _amocrm(app)

    @amocrm.before_push(form="callback")
    def callback_only(event: Event, plan: PushPlan) -> None:
        calls.append(f"form:{event.source}")
        assert plan.lead is not None
        plan.lead.name = "From the callback hook"

    @amocrm.before_push(mail="ORDER_NEW")
    def mail_only(event: Event, plan: PushPlan) -> None:
        calls.append(f"mail:{event.source}")
        assert plan.lead is not None
        plan.lead.name = "From the mail hook"

    @amocrm.after_push(form="order")
    def after_order(event: Event, ids: AmoIds) -> None:
        calls.append(f"after:{event.source}")

    _post(app, "callback", name="Ann", phone="+79120001122")
    _post(app, "order", name="Bob")
    with app.app_context():
        mail_sent.send(app, event="ORDER_NEW", data={"name": "Eve"})
    assert deliver_pending(app)["delivered"] == 3
    names = sorted(lead["name"] for lead in fast_sandbox.leads())
    assert names == ["From the callback hook", "From the mail hook", "Order: Bob"]
    assert sorted(calls) == ["after:order", "form:callback", "mail:ORDER_NEW"]
    with pytest.raises(TypeError, match="not both"):
        amocrm.before_push(form="callback", mail="ORDER_NEW")


def test_after_push_gets_the_ids_and_a_raising_one_keeps_the_delivery(
    make_app: Any, fast_sandbox: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = _site(make_app)
    got: list[tuple[int, AmoIds]] = []

    @_amocrm(app).after_push
    def remember(event: Event, ids: AmoIds) -> None:
        got.append((event.id, ids))

    @_amocrm(app).after_push
    def broken(event: Event, ids: AmoIds) -> None:
        raise RuntimeError(f"crm sync down for {event.data['phone']}")

    _post(app, "callback", name="Ann", phone="+79120001122")
    assert deliver_pending(app)["delivered"] == 1
    [event] = stored_events(app)
    [lead] = fast_sandbox.leads()
    [contact] = fast_sandbox.contacts()
    [(event_id, ids)] = got
    assert event_id == event.id
    assert (ids.lead_id, ids.contact_id, ids.company_id) == (
        lead["id"],
        contact["id"],
        None,
    )
    assert event.status == "delivered"
    assert any(
        "after_push hook" in line and "RuntimeError" in line for line in event.log
    )
    # the Python log names the hook and the error's type, never the visitor's data
    assert "+79120001122" not in caplog.text
    assert "broken" in caplog.text


def test_api_call_hooks_see_every_request_and_may_add_to_the_body(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app)
    before: list[ApiCall] = []
    after: list[ApiCall] = []
    amocrm = _amocrm(app)

    @amocrm.before_api_call
    def audit(call: ApiCall) -> None:
        before.append(call)
        if call.path == "/api/v4/leads/complex":
            call.body[0]["price"] = 777  # what the rules cannot express

    @amocrm.after_api_call
    def answered(call: ApiCall) -> None:
        after.append(call)

    _post(app, "callback", name="Ann", phone="+79120001122")
    [event] = stored_events(app)
    assert deliver_pending(app)["delivered"] == 1
    sent = api_requests(fast_sandbox)
    assert sent and [(c.method, c.path) for c in before] == sent
    assert [(c.method, c.path) for c in after] == sent
    assert [c.status for c in after] == [
        r["status"] for r in fast_sandbox.requests() if r["path"].startswith("/api")
    ]
    complex_call = next(c for c in after if c.path == "/api/v4/leads/complex")
    assert complex_call.events == (event.id,)
    assert complex_call.answer[0]["id"] == fast_sandbox.leads()[0]["id"]
    assert fast_sandbox.leads()[0]["price"] == 777


def test_a_veto_in_before_api_call_cancels_the_events_of_that_call(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app)

    @_amocrm(app).before_api_call
    def no_orders(call: ApiCall) -> None:
        if call.method == "POST" and call.path == "/api/v4/leads/complex":
            names = [item["name"] for item in call.body]
            if any(name.startswith("Order") for name in names):
                raise Cancel("orders are entered by hand")

    _post(app, "order", name="Bob")
    assert deliver_pending(app) == {"spooled": 0, "cancelled": 1}
    [event] = stored_events(app)
    assert event.status == "cancelled"
    assert event.last_error is not None
    assert "orders are entered by hand" in event.last_error
    assert "POST /api/v4/leads/complex" in event.last_error
    assert fast_sandbox.leads() == []
    assert ("POST", "/api/v4/leads/complex") not in api_requests(fast_sandbox)

    # a callback later on is sent as usual: the veto was for that call only
    _post(app, "callback", name="Ann", phone="+79120001122")
    assert deliver_pending(app) == {"spooled": 0, "delivered": 1}
    assert [lead["name"] for lead in fast_sandbox.leads()] == ["Callback: Ann"]


def test_a_veto_of_one_events_request_leaves_the_rest_of_the_batch(
    make_app: Any, fast_sandbox: Any
) -> None:
    rules = {
        "forms": {
            "callback": {
                "contact": {
                    "name": "{{ data.name }}",
                    "phone": "{{ data.phone }}",
                    "duplicates": {"match": ["PHONE"], "strategy": "use"},
                },
                "lead": {"name": "Callback: {{ data.name }}"},
            }
        }
    }
    app = form_site(make_app, rules)
    ids: dict[str, int] = {}

    @_amocrm(app).before_api_call
    def no_lookup_for_bad(call: ApiCall) -> None:
        # the duplicate search is one request per event: veto Bad's
        if call.method == "GET" and call.path == "/api/v4/contacts":
            if call.events == (ids["Bad"],):
                raise Cancel("Bad is on the stop list")

    _post(app, "callback", name="Bad", phone="+79120001122")
    _post(app, "callback", name="Ann", phone="+79120003344")
    bad, ann = stored_events(app)
    ids.update(Bad=bad.id, Ann=ann.id)
    assert deliver_pending(app) == {"spooled": 0, "cancelled": 1, "delivered": 1}
    bad, ann = stored_events(app)
    assert bad.status == "cancelled" and "stop list" in (bad.last_error or "")
    assert ann.status == "delivered"
    assert [lead["name"] for lead in fast_sandbox.leads()] == ["Callback: Ann"]


def test_a_retried_event_runs_its_hook_again_without_a_second_lead(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app)
    runs: list[int] = []

    @_amocrm(app).before_push
    def count(event: Event, plan: PushPlan) -> None:
        runs.append(event.attempts)
        assert plan.lead is not None
        plan.lead.name = "Hooked"
        plan.notes.append(NoteDraft("from the hook"))

    # the lead goes out, then amoCRM fails on the note
    fast_sandbox.faults(status=503, count=1, path="/api/v4/leads/notes")
    _post(app, "callback", name="Ann", phone="+79120001122")
    assert deliver_pending(app)["retrying"] == 1
    with app.app_context(), app.extensions["amocrm"].session() as session:
        event = session.get(Event, stored_events(app)[0].id)
        assert event is not None
        event.next_attempt_at = None  # due now
        session.commit()
    assert deliver_pending(app)["delivered"] == 1
    assert runs == [1, 2]  # once per attempt
    [lead] = fast_sandbox.leads()
    assert lead["name"] == "Hooked"
    assert [n["params"]["text"] for n in fast_sandbox.notes("leads")] == [
        "from the hook"
    ]


def test_a_hook_that_adds_a_company_and_removes_the_contact(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app)

    @_amocrm(app).before_push(form="callback")
    def company_instead(event: Event, plan: PushPlan) -> None:
        plan.contact = None
        plan.company = EntityDraft(name="Ann's shop")

    _post(app, "callback", name="Ann", phone="+79120001122")
    assert deliver_pending(app)["delivered"] == 1
    assert fast_sandbox.contacts() == []
    [company] = fast_sandbox.companies()
    assert company["name"] == "Ann's shop"
    [lead] = fast_sandbox.leads()
    assert [c["id"] for c in lead["_embedded"]["companies"]] == [company["id"]]


def test_a_hook_that_sets_a_wrong_type_fails_its_event_with_the_reason(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app)

    @_amocrm(app).before_push
    def wrong(event: Event, plan: PushPlan) -> None:
        assert plan.lead is not None
        plan.lead.price = "a lot"  # type: ignore[assignment]

    _post(app, "callback", name="Ann", phone="+79120001122")
    assert deliver_pending(app)["failed"] == 1
    [event] = stored_events(app)
    assert event.last_error == (
        "before_push hook: plan.lead.price must be a whole number or None"
    )
    assert fast_sandbox.leads() == []


def test_preview_shows_what_the_hooks_make_of_an_event(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app, AMOCRM_SOURCE="shop-site")

    @_amocrm(app).before_push
    def rename(event: Event, plan: PushPlan) -> None:
        if event.data["name"] == "Test":
            raise Cancel("tests are not sent")
        assert plan.lead is not None
        plan.lead.name = "Previewed"

    runner = app.test_cli_runner()
    data = '{"name": "Ann", "phone": "+79120001122"}'
    result = runner.invoke(args=["amocrm", "preview", "callback", "--data", data])
    assert result.exit_code == 0, result.output
    assert '"name": "Previewed"' in result.output
    assert '"external_id": "shop-site"' in result.output
    result = runner.invoke(
        args=["amocrm", "preview", "callback", "--data", data.replace("Ann", "Test")]
    )
    assert result.exit_code == 1
    assert "a before_push hook would end it cancelled: tests are not sent" in (
        result.output
    )
    # a preview registers nothing and sends nothing
    assert (
        not [r for r in fast_sandbox.requests() if r["method"] != "GET"]
        and fast_sandbox.state()["sources"] == []
    )


def test_a_plan_rendered_again_in_the_same_attempt_keeps_the_hooks_changes(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app, AMOCRM_SOURCE="shop-site")
    runs: list[str] = []

    @_amocrm(app).before_push
    def rename(event: Event, plan: PushPlan) -> None:
        runs.append(event.data["name"])
        assert plan.lead is not None
        plan.lead.name = f"Hooked {event.data['name']}"

    _post(app, "callback", name="Ann", phone="+79120001122")
    assert deliver_pending(app)["delivered"] == 1
    # the sandbox restarts without its state: the marker field and the source are
    # gone, amoCRM refuses their ids, and the worker renders Bob's plan again
    fast_sandbox.reset()
    _post(app, "callback", name="Bob", phone="+79120003344")
    assert deliver_pending(app)["delivered"] == 1
    assert runs == ["Ann", "Bob"]  # not twice for Bob
    [lead] = fast_sandbox.leads()
    assert lead["name"] == "Hooked Bob"
    [source] = fast_sandbox.state()["sources"]
    assert lead["source_id"] == source["id"]
    assert any(
        r["method"] == "POST"
        and r["path"] == "/api/v4/leads/complex"
        and r["status"] == 400
        for r in fast_sandbox.requests()
    )


def test_a_veto_of_a_request_for_the_whole_batch_cancels_its_events(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app, AMOCRM_SOURCE="shop-site")
    seen: list[tuple[int, ...]] = []

    @_amocrm(app).before_api_call
    def no_sources(call: ApiCall) -> None:
        if call.path == "/api/v4/sources":
            seen.append(call.events)
            raise Cancel("no sources from this site")

    _post(app, "callback", name="Ann", phone="+79120001122")
    _post(app, "order", name="Bob")
    assert deliver_pending(app) == {"spooled": 0, "cancelled": 2}
    ann, bob = stored_events(app)
    assert seen == [(ann.id, bob.id)]
    for event in (ann, bob):
        assert event.status == "cancelled"
        assert "vetoed GET /api/v4/sources: no sources from this site" in (
            event.last_error or ""
        )
    assert fast_sandbox.leads() == [] and fast_sandbox.state()["sources"] == []


def test_a_note_on_an_entity_the_plan_lacks_fails_the_event(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _site(make_app)

    @_amocrm(app).before_push(form="order")
    def note_on_contact(event: Event, plan: PushPlan) -> None:
        plan.notes.append(NoteDraft("for nobody", entity="contact"))

    _post(app, "order", name="Bob")
    assert deliver_pending(app)["failed"] == 1
    [event] = stored_events(app)
    assert event.last_error == (
        "before_push hook: plan.notes[0].entity is the contact, which the plan no "
        "longer has"
    )
    assert fast_sandbox.leads() == []
