"""Duplicate control with the contact index, on an account of 20,000 contacts.

The sandbox runs with its 7 requests/second limit and 100 ms latency and is seeded
with ``BENCH_CONTACTS`` contacts (20,000) and a tenth as many companies. Then:

- the fill: pages read (250 a call) and the time it took, beside its floor (the
  pages at 7 requests a second);
- one new visitor alone, with duplicate control on (phone + e-mail): API calls
  (goal <= 3), with the index and searching;
- a burst of ``BENCH_DEDUP_BURST`` (100) new visitors, then as many returning ones:
  lookup calls (searches and verification reads) per event beside the goal (<= 0.15),
  all calls per event, and events/s beside the ceiling those calls allow at 7
  requests a second (goal >= 80 events/s);
- the same burst searching (``AMOCRM_INDEX_INTERVAL = 0``): today's figure.

Counts come from the sandbox's own request log and are exact; timings depend on the
machine (see README.md).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any
from urllib.parse import parse_qs

sys.path.insert(0, os.path.dirname(__file__))

import redis  # noqa: E402
import requests  # noqa: E402
from _common import (  # noqa: E402
    POSTGRES_URL,
    bench_redis,
    header,
    postgres_available,
    row,
    sandbox_process,
)
from flask import Flask  # noqa: E402
from sqlalchemy import create_engine  # noqa: E402

from flask_amocrm import AmoCRM  # noqa: E402
from flask_amocrm.amo import client_for  # noqa: E402
from flask_amocrm.state import get_state  # noqa: E402
from flask_amocrm.testing import deliver_pending  # noqa: E402
from flask_amocrm.worker import index  # noqa: E402

CONTACTS = int(os.environ.get("BENCH_CONTACTS", "20000"))
BURST = int(os.environ.get("BENCH_DEDUP_BURST", "100"))
RATE = 7.0
#: The Redis of this run (:func:`_common.bench_redis`).
REDIS_URL = ""
GOAL_CALLS = 0.15
GOAL_RATE = 80
RULES = {
    "forms": {
        "order": {
            "contact": {
                "name": "{{ data.name }}",
                "fields": {"PHONE": "{{ data.phone }}", "EMAIL": "{{ data.email }}"},
                "duplicates": {"match": ["PHONE", "EMAIL"], "strategy": "update"},
            },
            "lead": {
                "name": "Order {{ data.order }} from {{ data.name }}",
                "tags": ["site"],
                "note": "Comment: {{ data.comment }}",
                "duplicates": {"match": ["name"], "strategy": "use", "open_only": True},
            },
            "task": {
                "entity": "lead",
                "text": "Call {{ data.name }} back",
                "deadline": "+1h",
            },
        }
    }
}


def log(sandbox: str) -> list[dict[str, Any]]:
    entries = requests.get(sandbox + "/_sandbox/requests", timeout=60).json()
    return [r for r in entries if r["path"].startswith("/api/v4")]


def forget(sandbox: str) -> None:
    requests.delete(sandbox + "/_sandbox/requests", json={}, timeout=10)


def lookups(entries: list[dict[str, Any]]) -> int:
    """Searches and verification reads of contacts and companies."""
    count = 0
    for r in entries:
        if r["method"] == "GET" and r["path"] in (
            "/api/v4/contacts",
            "/api/v4/companies",
        ):
            query = parse_qs(r["query"])
            count += "query" in query or "filter[id][]" in query
    return count


def make_site(sandbox: str, tmp: str, name: str, interval: int) -> Flask:
    if postgres_available():
        from flask_amocrm.models import metadata

        metadata.drop_all(create_engine(POSTGRES_URL))
        database = POSTGRES_URL
    else:
        database = f"sqlite:///{tmp}/{name}.sqlite3"
    redis.Redis.from_url(REDIS_URL).flushdb()
    app = Flask(f"bench_{name}", instance_path=os.path.join(tmp, name))
    app.config.update(
        AMOCRM_BASE_URL=sandbox,
        AMOCRM_TOKEN="sandbox-token",
        AMOCRM_REDIS_URL=REDIS_URL,
        AMOCRM_DELIVERY="deferred",
        AMOCRM_QUEUE="bench",
        AMOCRM_DATABASE_URI=database,
        AMOCRM_RULES=RULES,
        AMOCRM_LOG_REQUESTS=False,
        AMOCRM_INDEX_INTERVAL=interval,
    )
    AmoCRM(app)
    return app


def submit(app: Flask, people: list[dict[str, Any]], start: int) -> None:
    with app.app_context():
        amocrm = app.extensions["amocrm"].extension
        for n, person in enumerate(people):
            amocrm.submit(
                "order",
                {
                    "name": person["name"],
                    "phone": person["phone"] or "",
                    "email": person["email"] or "",
                    "order": start + n,
                    "comment": "leave at the door",
                },
            )


def deliver(app: Flask) -> dict[str, int]:
    with app.app_context():
        return deliver_pending(app)


def new_people(n: int, start: int) -> list[dict[str, Any]]:
    return [
        {
            "name": f"Buyer {i}",
            "phone": f"+7 915 {i // 10000 % 1000:03d}-{i % 10000:04d}",
            "email": f"buyer{i}@example.org",
        }
        for i in range(start, start + n)
    ]


def known_people(sandbox: str, n: int) -> list[dict[str, Any]]:
    """``n`` different people of the seeded account, with their phones as stored."""
    answer = requests.get(
        sandbox + "/api/v4/contacts",
        params={"limit": 250, "page": 7},
        headers={"Authorization": "Bearer sandbox-token"},
        timeout=30,
    ).json()
    people: dict[str, dict[str, Any]] = {}
    for contact in answer["_embedded"]["contacts"]:
        values = {
            item["field_code"]: item["values"][0]["value"]
            for item in contact["custom_fields_values"] or []
        }
        if values.get("PHONE") and contact["name"] not in people:
            people[contact["name"]] = {
                "name": contact["name"],
                "phone": values["PHONE"],
                "email": values.get("EMAIL"),
            }
    return list(people.values())[:n]


def burst(
    sandbox: str,
    app: Flask,
    people: list[dict[str, Any]],
    start: int,
    label: str,
    goal_rate: int | None = GOAL_RATE,
) -> None:
    """A burst of ``people``'s events: lookup calls and events/s. The goal of
    events/s is the issue's for new visitors; returning ones cost more calls (the
    verification read, their leads, the updates), so theirs is only shown."""
    submit(app, people, start)
    forget(sandbox)
    began = time.monotonic()
    outcome = deliver(app)
    took = time.monotonic() - began
    assert outcome.get("delivered") == len(people), outcome
    entries = log(sandbox)
    n = len(people)
    per_event = len(entries) / n
    lookup = lookups(entries) / n
    ceiling = RATE / per_event if per_event else float("inf")
    row(
        f"{label}: lookup calls per event",
        f"{lookup:.2f}",
        f"{per_event:.2f} calls per event in all",
        f"<= {GOAL_CALLS}",
        lookup <= GOAL_CALLS,
    )
    row(
        f"{label}: events/s",
        f"{n / took:.1f}",
        f"ceiling {ceiling:.0f} ({RATE:g} requests/s over {per_event:.2f})",
        "-" if goal_rate is None else f">= {goal_rate}",
        None if goal_rate is None else n / took >= goal_rate,
    )


def one_visitor(sandbox: str, app: Flask, number: int, label: str) -> None:
    submit(app, new_people(1, number), number)
    forget(sandbox)
    assert deliver(app).get("delivered") == 1
    entries = log(sandbox)
    row(
        f"{label}: one new visitor alone",
        f"{len(entries)} calls",
        f"{lookups(entries)} of them lookups; 3 without",
        "<= 3",
        len(entries) <= 3,
    )


def main() -> None:
    global REDIS_URL
    with (
        tempfile.TemporaryDirectory(prefix="amocrm-bench-") as tmp,
        bench_redis() as REDIS_URL,
        sandbox_process("--rate-limit", str(RATE), "--latency-ms", "100") as sandbox,
    ):
        began = time.monotonic()
        seeded = requests.post(
            sandbox + "/_sandbox/seed",
            json={"contacts": CONTACTS, "companies": CONTACTS // 10},
            timeout=600,
        ).json()
        seeding = time.monotonic() - began
        header(
            f"The contact index: sandbox at {RATE:g} requests/s, 100 ms latency; "
            f"{seeded['contacts']} contacts ({seeded['duplicates']} duplicates) and "
            f"{seeded['companies']} companies seeded in {seeding:.1f} s; database: "
            f"{'PostgreSQL' if postgres_available() else 'SQLite'}"
        )
        returning = known_people(sandbox, BURST)

        app = make_site(sandbox, tmp, "indexed", 300)
        forget(sandbox)
        began = time.monotonic()
        with app.app_context():
            state = get_state(app)
            client = client_for(state)
            while index.complete_since(state) is None:
                index.fill_step(state, client)
        took = time.monotonic() - began
        pages = len(log(sandbox))
        row(
            "fill, 250 a call",
            f"{pages} calls in {took:.1f} s",
            f"floor {pages / RATE:.1f} s at {RATE:g} requests/s",
            f"in the worker {index.FILL_PAGES} pages a tick",
            None,
        )
        submit(app, new_people(1, 0), 0)
        deliver(app)  # the event-id field and the metadata, once
        one_visitor(sandbox, app, 900_000, "index on")
        burst(
            sandbox,
            app,
            new_people(BURST, 1000),
            1000,
            f"index on, a burst of {BURST} new visitors",
        )
        burst(
            sandbox,
            app,
            returning,
            5000,
            f"index on, a burst of {len(returning)} returning visitors",
            goal_rate=None,
        )

        app = make_site(sandbox, tmp, "searching", 0)
        submit(app, new_people(1, 0), 0)
        deliver(app)
        one_visitor(sandbox, app, 900_001, "index off (today)")
        burst(
            sandbox,
            app,
            new_people(BURST, 2000),
            2000,
            f"index off (today), a burst of {BURST} new visitors",
        )
        redis.Redis.from_url(REDIS_URL).flushdb()


if __name__ == "__main__":
    main()
