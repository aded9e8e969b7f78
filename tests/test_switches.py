"""Switches (issue 13, section 1): ``AMOCRM_ENABLED = False`` and a rule's ``enabled =
false`` keep capturing events and hold their delivery; switching back on delivers
them. Against the sandbox over HTTP."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from flask import Flask

from flask_amocrm.testing import deliver_pending
from tests.helpers.e2e import form_site, stored_events
from tests.helpers.process import flask_command

RULES: dict[str, Any] = {
    "forms": {
        "callback": {
            "contact": {"name": "{{ data.name }}", "phone": "{{ data.phone }}"},
            "lead": {"name": "Callback: {{ data.name }}"},
        },
        "order": {"lead": {"name": "Order: {{ data.name }}"}},
    }
}


def _post(app: Flask, form: str, **data: str) -> None:
    app.test_client().post(f"/form/{form}", data=data).close()


def _api_requests(sandbox: Any) -> list[dict[str, Any]]:
    return [r for r in sandbox.requests() if r["path"].startswith("/api/v4")]


def _status(app: Flask) -> str:
    result = app.test_cli_runner().invoke(args=["amocrm", "status"])
    assert result.exit_code == 0, result.output
    return str(result.output)


def test_amocrm_enabled_false_holds_every_event_until_switched_on(
    make_app: Any, fast_sandbox: Any, database_uri: str
) -> None:
    database = database_uri  # SQLite and PostgreSQL: the claim's condition differs
    app = form_site(make_app, RULES, AMOCRM_ENABLED=False, AMOCRM_DATABASE_URI=database)
    _post(app, "callback", name="Ann", phone="+79120001122")
    _post(app, "order", name="Bob")
    for _ in range(3):  # cron runs, again and again: nothing is taken
        assert deliver_pending(app) == {"spooled": 0}
    events = stored_events(app)
    assert [(e.status, e.attempts, e.last_error) for e in events] == [
        ("pending", 0, None),
        ("pending", 0, None),
    ]
    assert _api_requests(fast_sandbox) == []
    status = _status(app)
    assert "Switched off: AMOCRM_ENABLED = False: 2 event(s) wait" in status
    assert "Stuck" not in status

    # the site switches it on again (config change and restart)
    again = form_site(make_app, RULES, AMOCRM_DATABASE_URI=database)
    assert deliver_pending(again)["delivered"] == 2
    assert sorted(lead["name"] for lead in fast_sandbox.leads()) == [
        "Callback: Ann",
        "Order: Bob",
    ]
    assert [e.attempts for e in stored_events(again)] == [1, 1]
    assert "Switched off" not in _status(again)


def test_a_disabled_rule_holds_only_its_events_until_the_file_switches_it_on(
    make_app: Any, fast_sandbox: Any, tmp_path: Any, database_uri: str
) -> None:
    path = tmp_path / "rules.json"
    rules = json.loads(json.dumps(RULES))
    rules["forms"]["callback"]["enabled"] = False
    path.write_text(json.dumps(rules))
    app = form_site(make_app, str(path), AMOCRM_DATABASE_URI=database_uri)
    _post(app, "callback", name="Ann", phone="+79120001122")
    _post(app, "order", name="Bob")
    assert deliver_pending(app) == {"spooled": 0, "delivered": 1}
    held, order = stored_events(app)
    assert (held.status, held.attempts) == ("pending", 0)
    assert order.status == "delivered"
    assert [lead["name"] for lead in fast_sandbox.leads()] == ["Order: Bob"]
    assert "Switched off: forms.callback (enabled = false): 1 event(s) wait" in (
        _status(app)
    )
    assert deliver_pending(app) == {"spooled": 0}

    rules["forms"]["callback"]["enabled"] = True
    path.write_text(json.dumps(rules))
    stamp = os.path.getmtime(path) + 5
    os.utime(path, (stamp, stamp))
    assert deliver_pending(app) == {"spooled": 0, "delivered": 1}
    assert stored_events(app)[0].status == "delivered"
    assert sorted(lead["name"] for lead in fast_sandbox.leads()) == [
        "Callback: Ann",
        "Order: Bob",
    ]


def _burst(tmp_path: Any, config: dict[str, Any]) -> None:
    done = flask_command(tmp_path, config, "worker", "--burst")
    assert done.returncode == 0, done.stderr


def test_a_switched_off_site_under_rq_leaves_events_pending_and_the_worker_idle(
    make_app: Any, fast_sandbox: Any, redis_conn: Any, redis_url: str, tmp_path: Any
) -> None:
    app = form_site(
        make_app,
        RULES,
        AMOCRM_DELIVERY="rq",
        AMOCRM_REDIS_URL=redis_url,
        AMOCRM_ENABLED=False,
    )
    _post(app, "callback", name="Ann", phone="+79120001122")
    config = {k: v for k, v in app.config.items() if k.startswith("AMOCRM_")}
    _burst(tmp_path, config)  # takes the job, holds the event, stops: no loop
    [event] = stored_events(app)
    assert (event.status, event.attempts) == ("pending", 0)
    assert _api_requests(fast_sandbox) == []
    assert redis_conn.llen("rq:queue:amocrm") == 0

    _burst(tmp_path, {**config, "AMOCRM_ENABLED": True})
    [event] = stored_events(app)
    assert event.status == "delivered", event.last_error
    assert [lead["name"] for lead in fast_sandbox.leads()] == ["Callback: Ann"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"AMOCRM_ENABLED": "perhaps"}, "AMOCRM_ENABLED must be true or false"),
        (
            {"AMOCRM_RULES": {"defaults": {"enabled": False}}},
            "defaults.enabled switches one rule off",
        ),
        (
            {"AMOCRM_RULES": {"forms": {"x": {"enabled": "no", "lead": {}}}}},
            "forms.x.enabled must be true or false",
        ),
    ],
)
def test_bad_switches_fail_at_init_naming_the_key(
    make_app: Any, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(RuntimeError, match=message):
        make_app(**config)
