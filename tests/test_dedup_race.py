"""Duplicate control under concurrency: two real processes, one person, one contact."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
from flask import Flask

from flask_amocrm import AmoCRM
from flask_amocrm.testing import deliver_pending
from tests.helpers.e2e import INDEX_MODES, fill_index
from tests.helpers.process import child_env

RULES: dict[str, Any] = {
    "forms": {
        "callback": {
            "contact": {
                "name": "{{ data.name }}",
                "phone": "{{ data.phone }}",
                "duplicates": {"match": ["PHONE"], "strategy": "update"},
            },
            "lead": {"name": "Callback {{ data.name }}"},
        }
    }
}

CHILD = r"""
import json, os, pathlib, sys, time
from flask import Flask
from flask_amocrm import AmoCRM
from flask_amocrm.worker.deliver import deliver_event
spec = json.loads(sys.argv[1])
app = Flask("race_site", instance_path=spec["instance"])
app.config.update(spec["config"])
AmoCRM(app)
with app.app_context():
    if spec.get("no_locks"):  # the control run: what happens without the locks
        from flask_amocrm.worker import deliver, execute
        from flask_amocrm.worker.lookup import NoLocks
        deliver.key_locks = lambda state: NoLocks()
        # A barrier between lookup and create: every process has looked up (and
        # found no one) before any creates, whatever the timing of this machine.
        barrier = pathlib.Path(spec["barrier"])
        real_lookup = execute.lookup

        def lookup_then_wait(client, deliveries, *index):
            real_lookup(client, deliveries, *index)
            if not deliveries:
                return
            (barrier / str(os.getpid())).touch()
            deadline = time.monotonic() + 30
            while len(list(barrier.iterdir())) < spec["parties"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("barrier: the other process never looked up")
                time.sleep(0.01)

        execute.lookup = lookup_then_wait
    delay = spec["start_at"] - time.time()
    if delay > 0:
        time.sleep(delay)
    print(json.dumps(deliver_event(spec["event_id"])))
"""


def _config(
    sandbox: Any, tmp_path: Any, redis_url: str | None, mode: str
) -> dict[str, Any]:
    config = {
        "TESTING": True,
        "SECRET_KEY": "test",
        "AMOCRM_BASE_URL": sandbox.url,
        "AMOCRM_TOKEN": sandbox.token,
        "AMOCRM_DELIVERY": "deferred",
        "AMOCRM_DATABASE_URI": f"sqlite:///{tmp_path}/race.sqlite3",
        "AMOCRM_RULES": RULES,
        "AMOCRM_RATE_LIMIT": 50,
        "AMOCRM_INDEX_INTERVAL": 0 if mode == "search" else 300,
    }
    if redis_url:
        config["AMOCRM_REDIS_URL"] = redis_url
    return config


def race(
    sandbox: Any,
    tmp_path: Any,
    redis_url: str | None,
    mode: str,
    *,
    no_locks: bool = False,
) -> list[dict[str, Any]]:
    """Two processes deliver one event each, both of the same person, at the same
    moment; return the sandbox's contacts afterwards.

    ``no_locks``: the control run, without the duplicate-control locks, and with a
    barrier that holds each process between its lookup and its create until both have
    looked up: the interleaving the locks exist to prevent, every time.
    ``mode``: searching amoCRM, or with a complete contact index."""
    config = _config(sandbox, tmp_path, redis_url, mode)
    app = Flask("race_site", instance_path=str(tmp_path / "instance"))
    app.config.update(config)
    AmoCRM(app)
    if mode == "index":
        fill_index(app)
    with app.app_context():
        amocrm = app.extensions["amocrm"].extension
        # Someone else first: the account gets its event-id field before the race.
        amocrm.submit("callback", {"name": "Warm", "phone": "+79990000000"})
    assert deliver_pending(app)["delivered"] == 1
    with app.app_context():
        ids = [
            amocrm.submit("callback", {"name": "Ann", "phone": phone}).id
            for phone in ("+7 912 345-67-89", "8 (912) 345 67 89")
        ]
    # Slow answers: both lookups would be over before either create.
    sandbox.config(latency_ms=150)
    start_at = time.time() + 1.5
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    children = []
    for event_id in ids:
        spec = {
            "config": config,
            "instance": str(tmp_path / "instance"),
            "event_id": event_id,
            "start_at": start_at,
            "no_locks": no_locks,
            "barrier": str(barrier),
            "parties": len(ids),
        }
        children.append(
            subprocess.Popen(
                [sys.executable, "-c", CHILD, json.dumps(spec)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=child_env(),
            )
        )
    outcomes = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        outcomes.append(json.loads(out.strip().splitlines()[-1]))
    sandbox.config(latency_ms=0)
    assert outcomes == ["delivered", "delivered"], outcomes
    return [c for c in sandbox.contacts() if c["name"] != "Warm"]


@pytest.mark.parametrize("mode", INDEX_MODES)
@pytest.mark.parametrize("backend", ["redis", "database"])
def test_two_workers_one_person_one_contact(
    sandbox: Any,
    tmp_path: Any,
    redis_conn: Any,
    redis_url: str,
    backend: str,
    mode: str,
) -> None:
    sandbox.config(rate_limit=0)
    contacts = race(sandbox, tmp_path, redis_url if backend == "redis" else None, mode)
    assert len(contacts) == 1, contacts
    assert len(sandbox.leads()) == 3  # the warm-up's and one per event


@pytest.mark.parametrize("mode", INDEX_MODES)
def test_without_the_locks_the_race_makes_two_contacts(
    sandbox: Any, tmp_path: Any, mode: str
) -> None:
    """The control arm: the same race with the locks taken out (and both lookups
    over before either create) makes two contacts, so the test above can fail."""
    sandbox.config(rate_limit=0)
    contacts = race(sandbox, tmp_path, None, mode, no_locks=True)
    assert len(contacts) == 2, contacts
