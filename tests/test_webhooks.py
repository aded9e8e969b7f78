"""amoCRM -> site: the webhook endpoint, the signals, reconciliation from the events
log, and ``flask amocrm webhooks``; against the sandbox over real HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from flask import Flask
from sqlalchemy import update

from flask_amocrm import (
    contact_added,
    lead_added,
    lead_status_changed,
    note_added,
    task_completed,
)
from flask_amocrm.changes import event_change, webhook_changes
from flask_amocrm.models import ApiLog, InboundChange, utcnow
from flask_amocrm.state import get_state
from flask_amocrm.worker import AmoWorker
from flask_amocrm.worker.queue import get_queue
from flask_amocrm.worker.reconcile import reconcile
from tests.conftest import CALLBACK_RULES
from tests.helpers.e2e import form_site, stored_events
from tests.helpers.http import serving

SECRET = "s3cret-webhook-path-0123456789"
WON = 142


class Calls:
    """A receiver that records what it was sent (and may raise, ``fail`` times)."""

    def __init__(self, fail: int = 0) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        with self.lock:
            if self.fail:
                self.fail -= 1
                raise RuntimeError("the shop's database is down")
            self.calls.append(kwargs)

    def wait(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.calls


@contextmanager
def listening(app: Flask, **signals: Calls) -> Iterator[None]:
    """Connect each :class:`Calls` to the signal of its name, for ``app``."""
    known = {
        "lead_added": lead_added,
        "lead_status_changed": lead_status_changed,
        "note_added": note_added,
        "task_completed": task_completed,
        "contact_added": contact_added,
    }
    with ExitStack() as stack:
        for name, receiver in signals.items():
            stack.enter_context(known[name].connected_to(receiver, sender=app))
        yield


def inbound_rows(app: Flask) -> list[InboundChange]:
    with app.app_context(), get_state(app).session() as session:
        return list(session.query(InboundChange).order_by(InboundChange.id))


def cli(app: Flask, *args: str) -> Any:
    result = app.test_cli_runner().invoke(args=["amocrm", *args])
    return result


def site(make_app: Any, **config: Any) -> Flask:
    config.setdefault("AMOCRM_WEBHOOK_SECRET", SECRET)
    return form_site(make_app, CALLBACK_RULES, **config)


def status_body(lead_id: int, old: int, new: int, at: int = 1700000000) -> bytes:
    """A status webhook as amoCRM sends it (two-way reference §1.2)."""
    return urlencode(
        [
            ("leads[status][0][id]", str(lead_id)),
            ("leads[status][0][name]", "Sofa"),
            ("leads[status][0][status_id]", str(new)),
            ("leads[status][0][old_status_id]", str(old)),
            ("leads[status][0][pipeline_id]", "7000001"),
            ("leads[status][0][responsible_user_id]", "8000002"),
            ("leads[status][0][last_modified]", str(at)),
            ("leads[status][0][updated_at]", str(at)),
            ("account[subdomain]", "example"),
            ("account[id]", "29085955"),
        ]
    ).encode()


FORM = "application/x-www-form-urlencoded"


def submit_callback(app: Flask, base: str | None = None) -> int:
    """Submit the callback form (``inline`` delivery), return the lead id amoCRM
    gave it."""
    data = {"name": "Ivan", "phone": "+79990001122"}
    if base is None:
        answer = app.test_client().post("/form/callback", data=data)
        assert answer.status_code == 200
        answer.close()  # inline delivery runs once the response is closed
    else:
        assert requests.post(f"{base}/form/callback", data=data, timeout=10).ok
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = stored_events(app)
        if events and events[-1].status == "delivered":
            return int(events[-1].remote["lead_id"])
        time.sleep(0.05)
    raise AssertionError(f"the event was not delivered: {stored_events(app)}")


# -- the acceptance paths ------------------------------------------------------------


def test_a_lead_won_in_amocrm_reaches_lead_status_changed_once_with_the_sites_event(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = site(make_app, AMOCRM_DELIVERY="inline")
    won = Calls()
    with serving(app) as base, listening(app, lead_status_changed=won):
        lead_id = submit_callback(app, base)
        event = stored_events(app)[-1]
        installed = cli(app, "webhooks", "install", "--url", base)
        assert installed.exit_code == 0, installed.output
        before = next(lead for lead in fast_sandbox.leads() if lead["id"] == lead_id)

        fast_sandbox.move_lead(lead_id, WON)  # a manager drags it to "won"
        assert len(won.wait(1)) == 1, (
            inbound_rows(app),
            fast_sandbox.webhook_deliveries(),
        )
        # The events log has the same move: reading it gives no second signal.
        with app.app_context():
            assert reconcile(get_state()) == []
        assert cli(app, "process").exit_code == 0
        time.sleep(0.3)

    assert len(won.calls) == 1
    call = won.calls[0]
    assert call["event"].id == event.id and call["event"].uid == event.uid
    assert call["event"].source == "callback"
    assert call["lead_id"] == lead_id
    assert (call["status_id"], call["pipeline_id"]) == (WON, before["pipeline_id"])
    assert call["old_status_id"] == before["status_id"]
    assert call["responsible_user_id"] == before["responsible_user_id"]
    assert call["change"].origin == "webhook"
    [row] = inbound_rows(app)
    assert row.status == "done" and row.signal == "lead_status_changed"
    # The sandbox sent it to the endpoint, with the secret in the path.
    hooks = [
        d for d in fast_sandbox.webhook_deliveries() if d["event"] == "status_lead"
    ]
    assert [d["status"] for d in hooks] == [200]


def test_with_every_webhook_dropped_reconciliation_delivers_each_change_once(
    make_app: Any, fast_sandbox: Any, amo: Any, database_uri: str
) -> None:
    app = site(
        make_app,
        AMOCRM_DELIVERY="inline",
        AMOCRM_RECONCILE_INTERVAL=60,
        AMOCRM_DATABASE_URI=database_uri,
    )
    receivers = {
        name: Calls()
        for name in (
            "lead_added",
            "lead_status_changed",
            "note_added",
            "task_completed",
            "contact_added",
        )
    }
    fast_sandbox.config(drop_webhooks=-1)
    with listening(app, **receivers):
        assert (
            cli(app, "webhooks", "install", "--url", "http://127.0.0.1:9").exit_code
            == 0
        )
        lead_id = submit_callback(app)
        event = stored_events(app)[-1]
        first_status = amo.get(f"/leads/{lead_id}").json()["status_id"]
        # A manager works the deal: moves it, writes a note, completes a task.
        assert amo.patch(f"/leads/{lead_id}", json={"status_id": WON}).ok
        note = amo.post(
            f"/leads/{lead_id}/notes",
            json=[{"note_type": "common", "params": {"text": "paid by card"}}],
        ).json()["_embedded"]["notes"][0]
        task = amo.post(
            "/tasks",
            json=[
                {
                    "text": "Ship it",
                    "complete_till": int(time.time()) + 3600,
                    "entity_id": lead_id,
                    "entity_type": "leads",
                }
            ],
        ).json()["_embedded"]["tasks"][0]
        assert amo.patch(
            f"/tasks/{task['id']}",
            json={"is_completed": True, "result": {"text": "shipped"}},
        ).ok

        result = cli(app, "process")
        assert result.exit_code == 0, result.output
        assert "reconciled: " in result.output
        assert "events log read up to" in cli(app, "webhooks", "status").output
        # A second read of the same window (the overlap) stores nothing new.
        with app.app_context():
            assert reconcile(get_state()) == []
        assert cli(app, "process").exit_code == 0

    assert all(d["dropped"] for d in fast_sandbox.webhook_deliveries())
    assert fast_sandbox.webhook_deliveries(), "the sandbox had webhooks to drop"
    calls = {name: r.calls for name, r in receivers.items()}
    assert [c["lead_id"] for c in calls["lead_added"]] == [lead_id]
    assert calls["lead_added"][0]["event"].id == event.id
    [moved] = calls["lead_status_changed"]
    assert (moved["old_status_id"], moved["status_id"]) == (first_status, WON)
    assert moved["event"].id == event.id and moved["change"].origin == "events"
    assert moved["responsible_user_id"] is not None
    [noted] = calls["note_added"]
    assert (noted["note_id"], noted["entity_type"], noted["entity_id"]) == (
        note["id"],
        "lead",
        lead_id,
    )
    assert noted["event"].id == event.id
    [done] = calls["task_completed"]
    assert (done["task_id"], done["entity_id"], done["result"]) == (
        task["id"],
        lead_id,
        "shipped",
    )
    assert done["event"].id == event.id
    [contact] = calls["contact_added"]
    assert contact["contact_id"] == event.remote["contact_id"]
    assert contact["event"].id == event.id
    assert {r.status for r in inbound_rows(app)} == {"done"}


def test_a_late_webhook_after_reconciliation_is_no_second_signal(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = site(make_app, AMOCRM_DELIVERY="inline")
    won = Calls()
    with serving(app) as base, listening(app, lead_status_changed=won):
        lead_id = submit_callback(app, base)
        assert cli(app, "webhooks", "install", "--url", base).exit_code == 0
        fast_sandbox.config(webhook_delay_ms=1500)  # amoCRM is slow today
        fast_sandbox.move_lead(lead_id, WON)
        assert cli(app, "process").exit_code == 0  # the events log has it already
        assert len(won.calls) == 1 and won.calls[0]["change"].origin == "events"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not fast_sandbox.webhook_deliveries():
            time.sleep(0.05)
        assert [d["status"] for d in fast_sandbox.webhook_deliveries()] == [200]
        time.sleep(0.3)
    assert len(won.calls) == 1
    assert [r.origin for r in inbound_rows(app)] == ["events"]


def test_the_same_webhook_posted_twice_is_one_signal(
    make_app: Any, fast_sandbox: Any
) -> None:
    app = site(make_app)
    won = Calls()
    body = status_body(10000001, 7000011, WON)
    with listening(app, lead_status_changed=won):
        client = app.test_client()
        for _ in range(2):
            answer = client.post(
                f"/amocrm/webhook/{SECRET}", data=body, content_type=FORM
            )
            assert answer.status_code == 200
        assert cli(app, "process").exit_code == 0
        assert cli(app, "process").exit_code == 0
    assert len(won.calls) == 1
    assert won.calls[0]["event"] is None  # not a lead of this site
    assert (won.calls[0]["old_status_id"], won.calls[0]["status_id"]) == (7000011, WON)
    assert len(inbound_rows(app)) == 1


def test_a_webhook_and_the_events_log_give_one_key_for_one_move() -> None:
    [hook] = webhook_changes(status_body(5, 7000011, WON, at=1700000000), received_at=0)
    entry = {
        "id": "01pz58t6p04ymgsgfbmfyfy1mf",
        "type": "lead_status_changed",
        "entity_id": 5,
        "entity_type": "lead",
        "created_by": 8000002,
        "created_at": 1700000001,  # the log's clock, a second later
        "value_after": [{"lead_status": {"id": WON, "pipeline_id": 7000001}}],
        "value_before": [{"lead_status": {"id": 7000011, "pipeline_id": 7000001}}],
        "account_id": 29085955,
    }
    logged = event_change(entry)
    assert logged is not None
    assert hook.base == logged.base == "lead:5:status:7000011>7000001:142"
    assert hook.values["old_pipeline_id"] is None  # the hook does not say it
    assert logged.values["old_pipeline_id"] == 7000001


@pytest.mark.parametrize(
    ("webhook_at", "logged_at", "rows"),
    [
        (1700000059, 1700000061, 1),  # across a minute's boundary: still one
        (1700000000, 1700000060, 1),  # a minute apart: one
        (1700000000, 1700000120, 2),  # two minutes apart: the same move twice
    ],
)
def test_one_move_seen_by_two_clocks_is_stored_once(
    make_app: Any,
    sandbox: Any,
    database_uri: str,
    webhook_at: int,
    logged_at: int,
    rows: int,
) -> None:
    from flask_amocrm.inbox import store_changes

    app = site(make_app, AMOCRM_DATABASE_URI=database_uri)
    [hook] = webhook_changes(status_body(5, 7000011, WON, at=webhook_at), received_at=0)
    logged = event_change(
        {
            "type": "lead_status_changed",
            "entity_id": 5,
            "entity_type": "lead",
            "created_at": logged_at,
            "value_after": [{"lead_status": {"id": WON, "pipeline_id": 7000001}}],
            "value_before": [{"lead_status": {"id": 7000011, "pipeline_id": 7000001}}],
        }
    )
    assert logged is not None
    with app.app_context():
        stored = store_changes(get_state(), [logged, hook, logged, hook])
    assert len(stored) == rows == len(inbound_rows(app))
    assert inbound_rows(app)[0].origin == "events"


def test_one_move_stored_by_many_threads_at_once_is_one_row(
    make_app: Any, sandbox: Any, database_uri: str
) -> None:
    from flask_amocrm.inbox import store_changes

    app = site(make_app, AMOCRM_DATABASE_URI=database_uri)
    variants = [
        webhook_changes(
            status_body(5, 7000011, WON, at=1700000059 + i % 3), received_at=0
        )[0]
        for i in range(8)
    ]
    with app.app_context():
        get_state().create_tables()
    start = threading.Barrier(len(variants))
    stored: list[int] = []

    def store(change: Any) -> None:
        with app.app_context():
            start.wait()
            stored.extend(store_changes(get_state(), [change]))

    threads = [threading.Thread(target=store, args=(v,)) for v in variants]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(stored) == 1 and len(inbound_rows(app)) == 1


def test_a_wrong_secret_is_404_and_stores_nothing(make_app: Any, sandbox: Any) -> None:
    app = site(make_app)
    client = app.test_client()
    body = status_body(10000001, 7000011, WON)
    for path in (
        "/amocrm/webhook/wrong-secret-0123456789",
        f"/amocrm/webhook/{SECRET}x",
        f"/amocrm/webhook/{SECRET[:-1]}",
        "/amocrm/webhook/",
    ):
        assert client.post(path, data=body, content_type=FORM).status_code == 404
    assert inbound_rows(app) == []
    # Without a secret there is no endpoint at all.
    bare = form_site(make_app, CALLBACK_RULES)
    answer = bare.test_client().post(
        f"/amocrm/webhook/{SECRET}", data=body, content_type=FORM
    )
    assert answer.status_code == 404


HOSTILE: dict[str, tuple[bytes, str]] = {
    "huge": (b"leads[add][0][name]=" + b"a" * 300_000 + b"&account[id]=1", FORM),
    "malformed key": (b"leads[status[0][id]=1&account[id]=1", FORM),
    "not form-encoded": (b"just some text", FORM),
    "not UTF-8": (
        b"leads[add][0][id]=1&leads[add][0][name]=\xff\xfe&account[id]=1",
        FORM,
    ),
    "percent-escaped bytes that are not UTF-8": (
        b"leads[add][0][id]=1&leads[add][0][name]=%FF%FE&account[id]=1",
        FORM,
    ),
    "JSON": (b'{"leads": {"add": [{"id": 1}]}}', "application/json"),
    "no account": (b"leads[add][0][id]=1", FORM),
    "id not a number": (b"leads[status][0][id]=1;drop&account[id]=1", FORM),
    "too many items": (
        "&".join(f"leads[add][{i}][id]={i + 1}" for i in range(101)).encode()
        + b"&account[id]=1",
        FORM,
    ),
    "too many fields": (
        "&".join(f"x{i}=1" for i in range(6000)).encode() + b"&account[id]=1",
        FORM,
    ),
    "too deep": (b"leads[a][b][c][d][e][f][g][h][i]=1&account[id]=1", FORM),
    "item not an object": (b"leads[add][0]=1&account[id]=1", FORM),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_payload_is_refused_with_400_and_stores_nothing(
    make_app: Any, sandbox: Any, name: str
) -> None:
    app = site(make_app)
    body, content_type = HOSTILE[name]
    answer = app.test_client().post(
        f"/amocrm/webhook/{SECRET}", data=body, content_type=content_type
    )
    assert answer.status_code == 400, answer.data[:200]
    assert answer.data.startswith(b"refused: ")
    assert inbound_rows(app) == []


def test_a_webhook_about_what_the_site_does_not_hear_is_200_and_stores_nothing(
    make_app: Any, sandbox: Any
) -> None:
    app = site(make_app)
    body = b"talk[add][0][talk_id]=5&account[subdomain]=example"
    answer = app.test_client().post(
        f"/amocrm/webhook/{SECRET}", data=body, content_type=FORM
    )
    assert answer.status_code == 200
    assert inbound_rows(app) == []


def test_a_receiver_that_raises_is_retried_and_the_other_is_not_run_twice(
    make_app: Any, sandbox: Any
) -> None:
    app = site(make_app)
    flaky, steady = Calls(fail=1), Calls()
    with (
        listening(app, lead_status_changed=flaky),
        lead_status_changed.connected_to(steady, sender=app),
    ):
        client = app.test_client()
        body = status_body(10000001, 7000011, WON)
        assert (
            client.post(
                f"/amocrm/webhook/{SECRET}", data=body, content_type=FORM
            ).status_code
            == 200
        )
        assert cli(app, "process").exit_code == 0
        [row] = inbound_rows(app)
        assert row.status == "retrying" and row.next_attempt_at is not None
        assert "RuntimeError: the shop's database is down" in (row.last_error or "")
        assert len(steady.calls) == 1 and flaky.calls == []
        # Not due yet: a run now calls nobody.
        assert cli(app, "process").exit_code == 0
        assert len(steady.calls) == 1 and flaky.calls == []
        # Its backoff has passed.
        with app.app_context(), get_state(app).session() as session:
            session.execute(update(InboundChange).values(next_attempt_at=utcnow()))
            session.commit()
        assert cli(app, "process").exit_code == 0
    assert len(flaky.calls) == 1 and len(steady.calls) == 1
    [row] = inbound_rows(app)
    assert row.status == "done" and row.attempts == 2 and row.last_error is None
    assert len(row.receivers_done) == 2


def test_changes_are_handled_by_an_rq_worker_job(
    make_app: Any, sandbox: Any, redis_conn: Any, redis_url: str, tmp_path: Any
) -> None:
    app = site(make_app, AMOCRM_DELIVERY="rq", AMOCRM_REDIS_URL=redis_url)
    heard = tmp_path / "heard.txt"

    def write_down(sender: Any, **kwargs: Any) -> None:
        # The job runs in a forked work horse: what it heard goes to a file.
        from flask import current_app

        with open(heard, "a") as fp:
            fp.write(f"{current_app.name} {kwargs['lead_id']} {kwargs['status_id']}\n")

    with lead_status_changed.connected_to(write_down, sender=app):
        answer = app.test_client().post(
            f"/amocrm/webhook/{SECRET}",
            data=status_body(10000001, 7000011, WON),
            content_type=FORM,
        )
        assert answer.status_code == 200
        answer.close()  # the hand-off runs once the response is closed
        with app.app_context():
            queue = get_queue(get_state(), for_worker=True)
            assert len(queue) == 1
        AmoWorker([queue], apps=[app], connection=queue.connection).work(
            burst=True, with_scheduler=False
        )
    assert heard.read_text().splitlines() == [f"{app.name} 10000001 {WON}"]
    [row] = inbound_rows(app)
    assert row.status == "done"
    assert row.receivers_done == [f"{__name__}.{write_down.__qualname__}"]


# -- flask amocrm webhooks -------------------------------------------------------------


def test_webhooks_install_status_and_uninstall_against_the_sandbox(
    make_app: Any, fast_sandbox: Any, amo: Any
) -> None:
    app = site(make_app, AMOCRM_WEBHOOK_URL="https://shop.example.com/")
    destination = f"https://shop.example.com/amocrm/webhook/{SECRET}"
    with listening(app, lead_status_changed=Calls(), note_added=Calls()):
        result = cli(app, "webhooks", "install")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output and "/amocrm/webhook/***" in result.output
    [hook] = amo.get("/webhooks").json()["_embedded"]["webhooks"]
    assert hook["destination"] == destination
    assert sorted(hook["settings"]) == [
        "note_company",
        "note_contact",
        "note_lead",
        "status_lead",
    ]
    amo.post(
        "/webhooks",
        json={"destination": "https://other.test/x?k=v", "settings": ["add_lead"]},
    )

    shown = cli(app, "webhooks", "status")
    assert shown.exit_code == 0, shown.output
    assert SECRET not in shown.output
    assert "(this site)" in shown.output and "status_lead" in shown.output
    assert "other.test" in shown.output and "k=v" not in shown.output
    assert "changes from amoCRM: pending 0" in shown.output
    assert "reconciliation: every 300 s; not read yet" in shown.output

    # --event overrides what the receivers say.
    again = cli(app, "webhooks", "install", "--event", "add_lead")
    assert again.exit_code == 0
    hooks = amo.get("/webhooks", params={"filter[destination]": destination}).json()[
        "_embedded"
    ]["webhooks"]
    assert [h["settings"] for h in hooks] == [["add_lead"]]

    removed = cli(app, "webhooks", "uninstall")
    assert removed.exit_code == 0, removed.output
    assert [
        h["destination"] for h in amo.get("/webhooks").json()["_embedded"]["webhooks"]
    ] == ["https://other.test/x?k=v"]
    gone = cli(app, "webhooks", "uninstall")
    assert gone.exit_code != 0 and "has no webhook" in gone.output
    assert "not registered" in cli(app, "webhooks", "status").output


def test_webhooks_install_says_what_is_missing(make_app: Any, sandbox: Any) -> None:
    bare = form_site(make_app, CALLBACK_RULES)
    out = cli(bare, "webhooks", "install", "--url", "https://shop.example.com")
    assert out.exit_code != 0 and "AMOCRM_WEBHOOK_SECRET" in out.output
    app = site(make_app)
    out = cli(app, "webhooks", "install")
    assert out.exit_code != 0 and "--url" in out.output
    out = cli(app, "webhooks", "install", "--url", "https://shop.example.com")
    assert out.exit_code != 0 and "No receiver" in out.output


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("AMOCRM_WEBHOOK_SECRET", "short"),
        ("AMOCRM_WEBHOOK_SECRET", "has/slash-0123456789abcdef"),
        ("AMOCRM_WEBHOOK_PATH", "no-leading-slash"),
        ("AMOCRM_WEBHOOK_PATH", "/"),
        ("AMOCRM_WEBHOOK_URL", "shop.example.com"),
        ("AMOCRM_RECONCILE_INTERVAL", 10),
        ("AMOCRM_RECONCILE_INTERVAL", -1),
    ],
)
def test_bad_webhook_settings_fail_at_init_app_naming_the_key(
    make_app: Callable[..., Flask], sandbox: Any, key: str, value: Any
) -> None:
    with pytest.raises(RuntimeError, match=key):
        make_app(**{key: value})


def test_the_webhook_path_is_configurable(make_app: Any, sandbox: Any) -> None:
    app = site(make_app, AMOCRM_WEBHOOK_PATH="/hooks/amo/")
    client = app.test_client()
    body = status_body(1, 2, WON)
    assert (
        client.post(f"/hooks/amo/{SECRET}", data=body, content_type=FORM).status_code
        == 200
    )
    assert (
        client.post(
            f"/amocrm/webhook/{SECRET}", data=body, content_type=FORM
        ).status_code
        == 404
    )
    assert len(inbound_rows(app)) == 1


def test_handled_changes_are_purged_after_the_retention_days(
    make_app: Any, sandbox: Any
) -> None:
    from datetime import timedelta

    from flask_amocrm.worker.retention import purge_changes

    app = site(make_app, AMOCRM_RETENTION_DAYS=30)
    client = app.test_client()
    for lead_id in (1, 2):
        body = status_body(lead_id, 7000011, WON)
        assert client.post(f"/amocrm/webhook/{SECRET}", data=body, content_type=FORM)
    with listening(app, lead_status_changed=Calls(fail=1)):
        assert cli(app, "process").exit_code == 0  # one done, one retrying
    with app.app_context(), get_state(app).session() as session:
        session.execute(
            update(InboundChange).values(
                created_at=utcnow() - timedelta(days=31),
                done_at=InboundChange.done_at - timedelta(days=31),
            )
        )
        session.commit()
        assert purge_changes(get_state(app)) == 1  # the hourly housekeeping's
    assert [r.status for r in inbound_rows(app)] == ["retrying"]


def test_the_webhook_secret_is_masked_in_the_api_log_and_its_pages(
    make_app: Any, sandbox: Any, caplog: Any
) -> None:
    """Installing, listing and removing the webhook send its address (with the
    secret) to amoCRM: the API log rows, the admin's log pages and the client's
    log lines mask the secret, as they mask a token."""
    app = site(make_app, AMOCRM_LOG_REQUESTS=True, AMOCRM_ADMIN_AUTH=lambda: True)
    caplog.set_level("DEBUG", logger="flask_amocrm.amo")
    with listening(app, lead_status_changed=Calls()):
        assert (
            cli(app, "webhooks", "install", "--url", "http://127.0.0.1:9").exit_code
            == 0
        )
        assert (
            cli(app, "webhooks", "status", "--url", "http://127.0.0.1:9").exit_code == 0
        )
        assert (
            cli(app, "webhooks", "uninstall", "--url", "http://127.0.0.1:9").exit_code
            == 0
        )
    with app.app_context(), get_state(app).session() as session:
        rows = list(session.query(ApiLog).where(ApiLog.path.contains("webhooks")))
    assert len(rows) >= 3
    for row in rows:
        for text in (row.path, row.request_body, row.response_body, row.error):
            assert SECRET not in (text or ""), row.path
    assert any("[redacted]" in (row.request_body or "") for row in rows)
    client = app.test_client()
    pages = [client.get("/amocrm/admin/log")] + [
        client.get(f"/amocrm/admin/log/{row.id}") for row in rows
    ]
    for page in pages:
        assert page.status_code == 200
        assert SECRET not in page.get_data(as_text=True)
    assert SECRET not in caplog.text


def test_a_stored_change_that_cannot_be_read_holds_up_no_other(
    make_app: Any, sandbox: Any
) -> None:
    """A row whose values are not what the parser writes (an older version's, a
    hand-made one) is retried later with its reason; the change after it in the
    same run reaches its receivers now."""
    app = site(make_app)
    notes, moves = Calls(), Calls()
    with listening(app, note_added=notes, lead_status_changed=moves):
        with app.app_context(), get_state(app).session() as session:
            now = utcnow()
            common = {"origin": "webhook", "occurred_at": 1700000000,
                      "created_at": now, "updated_at": now}  # fmt: skip
            session.add(
                InboundChange(
                    key="task:1:note:2",
                    base="task:1:note:2",
                    signal="note_added",
                    entity="note",
                    entity_id=2,
                    values={"entity_type": "lead", "entity_id": "not a number"},
                    **common,
                )  # fmt: skip
            )
            session.commit()
        body = status_body(10000001, 7000011, WON)
        answer = app.test_client().post(
            f"/amocrm/webhook/{SECRET}", data=body, content_type=FORM
        )
        assert answer.status_code == 200
        assert cli(app, "process").exit_code == 0
    bad, good = inbound_rows(app)
    assert good.status == "done" and len(moves.calls) == 1
    assert bad.status == "retrying" and bad.next_attempt_at is not None
    assert "ValueError" in (bad.last_error or "")
    assert notes.calls == []
