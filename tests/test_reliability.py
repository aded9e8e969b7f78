"""Delivery that never loses or doubles an event: outages, batches, poisoned events,
Redis lost, workers killed, import, replay, retention, the agent."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from flask_amocrm import Event
from flask_amocrm.models import utcnow
from flask_amocrm.testing import deliver_pending
from tests.helpers.e2e import CALLBACK_NOTE_TASK, stored_events


def _submit(
    app: Flask, n: int, form: str = "callback", start: int = 0, **extra: Any
) -> list[int]:
    amocrm = app.extensions["amocrm"].extension
    ids = []
    with app.app_context():  # as from a CLI command: handed on at once
        for i in range(start, start + n):
            data = {"name": f"Visitor {i}", "phone": f"+7912{i:07d}", **extra}
            event = amocrm.submit(form, data)
            assert event is not None
            ids.append(event.id)
    return ids


def _make_due(app: Flask) -> None:
    with app.app_context(), app.extensions["amocrm"].session() as session:
        for event in session.query(Event).filter(Event.status == "retrying"):
            event.next_attempt_at = utcnow() - timedelta(seconds=1)
        session.commit()


def _complex_calls(sandbox: Any) -> list[dict[str, Any]]:
    return [
        r
        for r in sandbox.requests()
        if r["path"] == "/api/v4/leads/complex" and r["method"] == "POST"
    ]


def test_a_burst_shares_calls_fifty_leads_each(make_app: Any, sandbox: Any) -> None:
    app = make_app(AMOCRM_BATCH_SIZE=50)
    _submit(app, 120)
    result = deliver_pending(app)
    assert result["delivered"] == 120
    calls = _complex_calls(sandbox)
    assert sorted(len(c["body"]) for c in calls) == [20, 50, 50]
    assert len(sandbox.leads()) == 120
    assert len({lead["name"] for lead in sandbox.leads()}) == 120
    assert all(e.status == "delivered" for e in stored_events(app))


def _writes(sandbox: Any, path: str) -> list[tuple[int, int]]:
    """``(items, status)`` of every ``POST path`` the sandbox answered, in order."""
    return [
        (len(r["body"]), r["status"])
        for r in sandbox.requests()
        if r["path"] == path and r["method"] == "POST"
    ]


def _full_rule_site(make_app: Any, sandbox: Any) -> Flask:
    """A site with the lead + contact + note + task rule whose first event was
    delivered (the metadata and the marker field are known), the request log
    cleared; ``AMOCRM_BATCH_SIZE`` is left at its default."""
    app: Flask = make_app(AMOCRM_RULES=CALLBACK_NOTE_TASK, AMOCRM_RATE_LIMIT=50)
    _submit(app, 1, start=1000)
    assert deliver_pending(app)["delivered"] == 1
    sandbox.clear_requests()
    return app


def test_a_burst_sends_leads_fifty_a_call_and_its_notes_and_tasks_in_one(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _full_rule_site(make_app, fast_sandbox)
    ids = _submit(app, 120)
    result = deliver_pending(app)
    assert result["delivered"] == 120
    # One batch: its leads go 50 a call (amoCRM's limit of leads/complex), its
    # notes and tasks (up to 250 a call) in one call each; nothing is read.
    assert [
        (r["method"], r["path"], len(r["body"]) if r["body"] else 0)
        for r in fast_sandbox.requests()
        if r["path"].startswith("/api/v4")
    ] == [
        ("POST", "/api/v4/leads/complex", 50),
        ("POST", "/api/v4/leads/complex", 50),
        ("POST", "/api/v4/leads/complex", 20),
        ("POST", "/api/v4/leads/notes", 120),
        ("POST", "/api/v4/tasks", 120),
    ]
    events = {e.id: e for e in stored_events(app)}
    leads = {lead["id"]: lead for lead in fast_sandbox.leads()}
    notes = {n["entity_id"]: n for n in fast_sandbox.notes("leads")}
    tasks = {t["entity_id"]: t for t in fast_sandbox.tasks()}
    for event_id in ids:
        event = events[event_id]
        assert event.status == "delivered", event.last_error
        lead_id = event.remote["lead_id"]
        name = event.data["name"]
        assert leads[lead_id]["name"] == f"Callback: {name}"
        assert notes[lead_id]["params"]["text"] == "Called from the site"
        assert event.remote["note_ids"]["leads"] == [notes[lead_id]["id"]]
        assert tasks[lead_id]["text"] == f"Call {name} back"
        assert event.remote["task_ids"] == [tasks[lead_id]["id"]]


def test_a_rejected_note_fails_its_event_and_the_others_get_theirs(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = _full_rule_site(make_app, fast_sandbox)
    ids = _submit(app, 120)
    # The leads are made, then amoCRM fails the notes call: all 120 wait.
    fast_sandbox.faults(status=503, count=1, path="/api/v4/leads/notes")
    assert deliver_pending(app).get("retrying") == 120
    # Meanwhile someone deletes one lead: amoCRM refuses a note on it.
    gone = {e.id: e for e in stored_events(app)}[ids[57]]
    fast_sandbox.delete("leads", gone.remote["lead_id"])
    fast_sandbox.clear_requests()
    _make_due(app)
    result = deliver_pending(app)
    assert result["delivered"] == 119 and result["failed"] == 1, result
    # amoCRM refuses the call of 120 notes for the one on the deleted lead; the
    # other 119 go again in one call. The refused event is planned once more after
    # the account's metadata was read again (a refused id may be a stale cache),
    # and refused again.
    assert _writes(fast_sandbox, "/api/v4/leads/notes") == [
        (120, 400),
        (119, 200),
        (1, 400),
    ]
    assert _writes(fast_sandbox, "/api/v4/tasks") == [(119, 200)]
    # Before adding them again, a retry reads the notes and tasks its leads have,
    # 100 leads a call (their ids are in the URL): two reads for the batch of 120
    # (and one for the event sent alone).
    reads = Counter(r["path"] for r in fast_sandbox.requests() if r["method"] == "GET")
    assert reads["/api/v4/leads/notes"] == 3 and reads["/api/v4/tasks"] == 2
    events = {e.id: e for e in stored_events(app)}
    failed = events[ids[57]]
    assert failed.status == "failed"
    assert "notes" in (failed.last_error or "")
    assert "entity_id" in (failed.last_error or "")
    delivered = [events[i] for i in ids if i != ids[57]]
    assert all(e.status == "delivered" for e in delivered)
    noted = sorted(n["entity_id"] for n in fast_sandbox.notes("leads"))
    tasked = sorted(t["entity_id"] for t in fast_sandbox.tasks())
    first = [stored_events(app)[0].remote["lead_id"]]  # the site's first event
    assert noted == tasked == sorted(first + [e.remote["lead_id"] for e in delivered])


def test_a_poisoned_event_fails_alone(make_app: Any, sandbox: Any) -> None:
    rules = {
        "forms": {
            "callback": {
                "contact": {
                    "name": "{{ data.name }}",
                    "fields": {"PHONE": "{{ data.phone }}"},
                },
                # a field id the account does not have: amoCRM rejects the item
                "lead": {
                    "name": "{{ data.name }}",
                    "fields": {"999999": "{{ data.bad | default('') }}"},
                },
            }
        }
    }
    app = make_app(AMOCRM_RULES=rules)
    _submit(app, 3)
    _submit(app, 1, bad="poison")
    _submit(app, 2)
    result = deliver_pending(app)
    assert result["delivered"] == 5
    assert result["failed"] == 1
    events = stored_events(app)
    [poisoned] = [e for e in events if e.status == "failed"]
    assert poisoned.data["bad"] == "poison"
    assert "999999" in poisoned.last_error or "custom_fields_values" in (
        poisoned.last_error
    )
    assert sorted(lead["name"] for lead in sandbox.leads()) == sorted(
        e.data["name"] for e in events if e.status == "delivered"
    )


def test_an_outage_mails_once_when_it_starts_and_once_when_it_ends(
    make_app: Any, sandbox: Any
) -> None:
    from flask_mail import Mail

    app = make_app(
        AMOCRM_ADMIN_EMAILS=["ops@example.com"],
        MAIL_SUPPRESS_SEND=True,
        MAIL_DEFAULT_SENDER="site@example.com",
    )
    mail = Mail(app)
    _submit(app, 4)
    sandbox.faults(status=503, count=1000)
    with mail.record_messages() as outbox:
        for _ in range(3):  # three rounds of retries, all refused
            assert deliver_pending(app).get("retrying") == 4
            _make_due(app)
        assert len(outbox) == 1
        assert "not answering" in outbox[0].subject
        assert "4 event(s) are waiting" in outbox[0].body
        assert outbox[0].extra_headers["X-AmoCRM-Alert"] == "1"
        sandbox.faults(clear=True)
        assert deliver_pending(app)["delivered"] == 4
        assert deliver_pending(app) == {"spooled": 0}
        assert len(outbox) == 2
        assert "answers again" in outbox[1].subject
    assert len(sandbox.leads()) == 4
    # the alert mails were not captured as mail events
    assert all(e.kind == "form" for e in stored_events(app))


def test_redis_restarted_empty_loses_nothing(
    make_app: Any, sandbox: Any, redis_conn: Any, redis_url: str
) -> None:
    from rq import SimpleWorker

    from flask_amocrm.state import get_state
    from flask_amocrm.worker.queue import get_queue
    from flask_amocrm.worker.schedule import tick

    app = make_app(AMOCRM_DELIVERY="rq", AMOCRM_REDIS_URL=redis_url)
    _submit(app, 5)
    assert redis_conn.llen("rq:queue:amocrm") == 5
    redis_conn.flushdb()  # Redis restarted without its data
    with app.app_context():
        # events younger than the grace period still have their job on the way
        assert tick(get_state())["queued"] == 0
        with app.extensions["amocrm"].session() as session:
            for event in session.query(Event):
                event.created_at -= timedelta(minutes=1)
            session.commit()
        assert tick(get_state())["queued"] == 5
        assert tick(get_state())["queued"] == 0  # already queued: not twice
        queue = get_queue(get_state(), for_worker=True)
        SimpleWorker(
            [queue], connection=queue.connection, job_class=queue.job_class
        ).work(burst=True)
    assert [e.status for e in stored_events(app)] == ["delivered"] * 5
    assert len(sandbox.leads()) == 5


def test_an_event_held_by_a_dead_worker_is_taken_over(
    make_app: Any, sandbox: Any
) -> None:
    app = make_app()
    [event_id] = _submit(app, 1)
    with app.app_context(), app.extensions["amocrm"].session() as session:
        event = session.get(Event, event_id)
        event.status = "processing"  # a worker claimed it, then was SIGKILLed
        event.locked_until = utcnow() + timedelta(minutes=5)
        session.commit()
    assert deliver_pending(app) == {"spooled": 0}  # its lease still runs
    assert sandbox.leads() == []
    with app.app_context(), app.extensions["amocrm"].session() as session:
        session.get(Event, event_id).locked_until = utcnow() - timedelta(seconds=1)
        session.commit()
    assert deliver_pending(app)["delivered"] == 1
    assert len(sandbox.leads()) == 1


def test_import_delivers_past_results_once(
    make_app: Any, sandbox: Any, tmp_path: Any
) -> None:
    app = make_app(AMOCRM_DELIVERY="inline")
    csv_file = tmp_path / "results.csv"
    csv_file.write_text(
        "source,time,name,phone\n"
        "callback,2026-10-01 10:00:00,Old One,+79120000001\n"
        "callback,01.10.2026 11:30,Old Two,+79120000002\n"
        "nosuchform,2026-10-02T09:00:00Z,Nobody,+79120000003\n"
    )
    runner = app.test_cli_runner()
    result = runner.invoke(args=["amocrm", "import", str(csv_file)])
    assert result.exit_code == 0, result.output
    assert "3 event(s) imported, 0 already" in result.output
    assert sorted(lead["name"] for lead in sandbox.leads()) == [
        "Callback: Old One",
        "Callback: Old Two",
    ]
    events = stored_events(app)
    assert [e.status for e in events] == ["delivered", "delivered", "ignored"]
    assert events[0].created_at.isoformat() == "2026-10-01T10:00:00"
    assert events[2].created_at.isoformat() == "2026-10-02T09:00:00"

    again = runner.invoke(args=["amocrm", "import", str(csv_file)])
    assert "0 event(s) imported, 3 already imported before" in again.output
    assert len(sandbox.leads()) == 2

    jsonl = tmp_path / "mails.jsonl"
    jsonl.write_text(
        json.dumps(
            {
                "source": "callback",
                "id": "m-1",
                "time": 1790000000,
                "fields": {"name": "Json", "phone": "1"},
            }
        )
        + "\n"
    )
    assert (
        "1 event(s) imported"
        in runner.invoke(args=["amocrm", "import", str(jsonl)]).output
    )
    assert (
        "0 event(s) imported, 1 already"
        in runner.invoke(args=["amocrm", "import", str(jsonl)]).output
    )
    assert len(sandbox.leads()) == 3


def test_import_reports_a_bad_row_by_line(make_app: Any, tmp_path: Any) -> None:
    app = make_app()
    path = tmp_path / "bad.csv"
    path.write_text("source,time,name\ncallback,yesterday-ish,Ann\n")
    result = app.test_cli_runner().invoke(args=["amocrm", "import", str(path)])
    assert result.exit_code == 1
    assert "line 2: cannot read the time 'yesterday-ish'" in result.output
    assert stored_events(app) == []


def test_ignored_events_are_replayed_once_a_rule_exists(
    make_app: Any, sandbox: Any
) -> None:
    app = make_app()
    _submit(app, 2, form="order")
    assert deliver_pending(app)["ignored"] == 2
    rules = app.extensions["amocrm"].settings.rules
    rules["forms"]["order"] = {"lead": {"name": "Order from {{ data.name }}"}}
    result = app.test_cli_runner().invoke(args=["amocrm", "retry", "--ignored"])
    assert "2 event(s) will be retried" in result.output
    assert deliver_pending(app)["delivered"] == 2
    assert sorted(lead["name"] for lead in sandbox.leads()) == [
        "Order from Visitor 0",
        "Order from Visitor 1",
    ]


def test_retention_purges_old_delivered_events_only(
    make_app: Any, sandbox: Any
) -> None:
    from flask_amocrm.worker.retention import purge_events

    app = make_app(AMOCRM_RETENTION_DAYS=30)
    _submit(app, 2)
    _submit(app, 1, form="unknown")
    deliver_pending(app)
    with app.app_context(), app.extensions["amocrm"].session() as session:
        for event in session.query(Event):
            event.delivered_at = event.delivered_at and utcnow() - timedelta(days=31)
            event.created_at = utcnow() - timedelta(days=31)
        session.commit()
    with app.app_context():
        assert purge_events(app.extensions["amocrm"]) == 2
    assert [e.status for e in stored_events(app)] == ["ignored"]


def test_the_agent_delivers_one_batch_per_interval(
    make_app: Any, sandbox: Any, redis_conn: Any, redis_url: str
) -> None:
    from flask_amocrm.state import get_state
    from flask_amocrm.worker.schedule import tick

    app = make_app(
        AMOCRM_DELIVERY="deferred",
        AMOCRM_REDIS_URL=redis_url,
        AMOCRM_BATCH_SIZE=3,
        AMOCRM_AGENT_INTERVAL=300,
    )
    _submit(app, 5)
    assert sandbox.leads() == []  # capture only stores
    with app.app_context():
        assert tick(get_state())["delivered"] == 3
        assert "delivered" not in tick(get_state())  # the interval has not passed
    assert len(sandbox.leads()) == 3
    result = app.test_cli_runner().invoke(args=["amocrm", "process", "--now"])
    assert "delivered: 2" in result.output.splitlines()
    assert len(sandbox.leads()) == 5


@pytest.mark.parametrize("use_redis", [False, True])
def test_housekeeping_runs_once_an_hour(
    make_app: Any, sandbox: Any, redis_conn: Any, redis_url: str, use_redis: bool
) -> None:
    from flask_amocrm.worker.schedule import housekeeping

    config = {"AMOCRM_REDIS_URL": redis_url} if use_redis else {}
    app = make_app(**config)
    with app.app_context():
        state = app.extensions["amocrm"]
        assert "purged_events" in housekeeping(state)
        assert housekeeping(state) == {}


def test_a_block_pauses_every_request_and_alerts_once(
    make_app: Any, sandbox: Any
) -> None:
    from flask_mail import Mail

    app = make_app(
        AMOCRM_ADMIN_EMAILS=["ops@example.com"],
        MAIL_SUPPRESS_SEND=True,
        MAIL_DEFAULT_SENDER="site@example.com",
    )
    mail = Mail(app)
    _submit(app, 3)
    sandbox.faults(status=403, count=1, method="POST")
    with mail.record_messages() as outbox:
        assert deliver_pending(app)["retrying"] == 3
        sent = len(sandbox.requests())
        _make_due(app)
        assert deliver_pending(app)["retrying"] == 3
        assert len(sandbox.requests()) == sent  # paused: nothing was sent
    assert len(outbox) == 1
    assert "not answering" in outbox[0].subject
    assert "blocked" in outbox[0].body
    [event] = stored_events(app)[:1]
    assert "paused, no request sent" in event.last_error
    assert sandbox.leads() == []


@pytest.mark.parametrize(
    "step", ["/api/v4/leads/complex", "/api/v4/leads/notes", "/api/v4/tasks"]
)
def test_a_lost_answer_never_doubles_what_amocrm_created(
    make_app: Any, sandbox: Any, step: str
) -> None:
    """amoCRM does the work, the answer never arrives (a cut connection, a killed
    worker): the retry finds what was made instead of making it again."""
    rules = {
        "forms": {
            "callback": {
                "contact": {
                    "name": "{{ data.name }}",
                    "fields": {"PHONE": "{{ data.phone }}"},
                },
                "lead": {"name": "Callback: {{ data.name }}", "note": "From the site"},
                "task": {"text": "Call {{ data.name }}", "deadline": "+1h"},
            }
        }
    }
    app = make_app(AMOCRM_RULES=rules)
    _submit(app, 3)
    sandbox.faults(lose_answer=True, count=1, method="POST", path=step)
    assert deliver_pending(app)["retrying"] == 3
    _make_due(app)
    assert deliver_pending(app)["delivered"] == 3
    leads = sandbox.leads()
    assert sorted(lead["name"] for lead in leads) == [
        "Callback: Visitor 0",
        "Callback: Visitor 1",
        "Callback: Visitor 2",
    ]
    assert len(sandbox.contacts()) == 3
    assert sorted(n["entity_id"] for n in sandbox.notes("leads")) == sorted(
        lead["id"] for lead in leads
    )
    assert sorted(t["entity_id"] for t in sandbox.tasks()) == sorted(
        lead["id"] for lead in leads
    )
