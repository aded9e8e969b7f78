"""The admin's events pages over 100,000 events in PostgreSQL: server time of the list
(first page, a status filter, searches, a date range, page 50 by keyset) and of one
event's page, through the Flask test client. Goal: under 200 ms each.

The events are bulk-inserted as capture would have stored them (their search terms
included), most delivered, a few per cent failed, with an API log row each.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

from _common import (  # noqa: E402
    POSTGRES_URL,
    header,
    percentile,
    postgres_available,
    row,
    sandbox_process,
)
from flask import Flask  # noqa: E402
from sqlalchemy import create_engine, func, insert, select  # noqa: E402

from flask_amocrm import AmoCRM  # noqa: E402
from flask_amocrm.models import ApiLog, Event, metadata  # noqa: E402
from flask_amocrm.outbox import search_text  # noqa: E402

N = int(os.environ.get("BENCH_EVENTS", "100000"))
RUNS = int(os.environ.get("BENCH_RUNS", "15"))
GOAL_MS = 200.0
CHUNK = 5000
RULES: dict[str, Any] = {
    "forms": {
        "callback": {
            "contact": {
                "name": "{{ data.name }}",
                "fields": {"PHONE": "{{ data.phone }}", "EMAIL": "{{ data.email }}"},
            },
            "lead": {"name": "Callback: {{ data.name }}", "tags": ["site"]},
        }
    }
}
FIRST = ["Анна", "Иван", "Мария", "Пётр", "Ольга", "Sergey", "Elena", "John", "Dmitry"]
LAST = ["Петрова", "Иванов", "Смирнова", "Кузнецов", "Popov", "Smith", "Волкова"]
SOURCES = ["callback", "callback", "callback", "order", "quiz", "ORDER_NEW"]
#: status, share of events
STATUS_MIX = [
    ("delivered", 0.93),
    ("failed", 0.03),
    ("ignored", 0.02),
    ("retrying", 0.01),
    ("pending", 0.01),
]


def _status(rng: random.Random) -> str:
    roll = rng.random()
    for status, share in STATUS_MIX:
        if roll < share:
            return status
        roll -= share
    return "delivered"


def _phone(rng: random.Random, n: int) -> str:
    digits = f"9{n % 1_000_000_000:09d}"
    spelled = rng.choice(["+7 {} {} {} {}", "8 ({}) {}-{}-{}", "+7{}{}{}{}"])
    return spelled.format(digits[:3], digits[3:6], digits[6:8], digits[8:])


def fill(engine: Any) -> None:
    """Insert :data:`N` events and one API log row each."""
    rng = random.Random(12)
    start = datetime(2026, 9, 1)
    span = timedelta(days=90).total_seconds()
    for base in range(0, N, CHUNK):
        events, logs = [], []
        for n in range(base, min(N, base + CHUNK)):
            status = _status(rng)
            source = rng.choice(SOURCES)
            name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
            data = {
                "name": name,
                "phone": _phone(rng, n * 7919),
                "email": f"client{n}@example.{rng.choice(['ru', 'com'])}",
                "comment": "Перезвоните после 18:00, пожалуйста",
            }
            created = start + timedelta(seconds=span * n / N)
            delivered = status == "delivered"
            events.append(
                {
                    "id": n + 1,
                    "uid": f"{n:032x}",
                    "kind": "mail" if source == "ORDER_NEW" else "form",
                    "source": source,
                    "data": data,
                    "files": [],
                    "context": {
                        "site": {"name": "shop", "domain": "shop.example", "ip": None},
                        "utm": {"utm_source": rng.choice(["yandex", "google", "vk"])},
                        "utm_first": {"utm_source": "yandex"},
                        "page": {
                            "url": "https://shop.example/contacts",
                            "referrer": None,
                        },
                        "client": {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0"},
                        "cookies": {},
                        "captured_at": int(created.timestamp()),
                    },
                    "status": status,
                    "attempts": 1 if status != "pending" else 0,
                    "last_error": "amoCRM refused the lead: 400 validation error"
                    if status == "failed"
                    else None,
                    "remote": {"lead_id": 10_000_000 + n, "done": ["create"]}
                    if delivered
                    else {},
                    "log": [],
                    "created_at": created,
                    "updated_at": created,
                    "delivered_at": created + timedelta(seconds=2)
                    if delivered
                    else None,
                    "search": search_text(data),
                }
            )
            logs.append(
                {
                    "event_id": n + 1,
                    "created_at": created,
                    "method": "POST",
                    "path": "/api/v4/leads/complex",
                    "status": 200 if delivered else 400,
                    "duration_ms": 80.0,
                    "request_body": '[{"name": "Callback", "_embedded": {}}]',
                    "response_body": '[{"id": 1, "contact_id": 2, "merged": false}]',
                }
            )
        with engine.begin() as conn:
            conn.execute(insert(Event), events)
            conn.execute(insert(ApiLog), logs)
    # as autovacuum leaves a table that has settled (the counts per status are then
    # read from an index alone)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE amocrm_events")
        conn.exec_driver_sql("VACUUM ANALYZE amocrm_api_log")


def timed(
    client: Any, path: str, query: dict[str, Any] | None = None
) -> tuple[float, float]:
    """The median and p95 server time of ``RUNS`` GETs of ``path``, in ms (after
    one warm-up)."""
    answer = client.get(path, query_string=query)
    assert answer.status_code == 200, (path, answer.status_code)
    times = []
    for _ in range(RUNS):
        began = time.perf_counter()
        answer = client.get(path, query_string=query)
        times.append((time.perf_counter() - began) * 1000)
        assert answer.status_code == 200
    return percentile(times, 50), percentile(times, 95)


def main() -> None:
    if not postgres_available():
        print(f"PostgreSQL does not answer at {POSTGRES_URL}: nothing measured.")
        return
    engine = create_engine(POSTGRES_URL)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    began = time.perf_counter()
    fill(engine)
    took = time.perf_counter() - began
    print(f"{N} events and {N} API log rows inserted in {took:.0f} s")
    with sandbox_process() as sandbox_url, tempfile.TemporaryDirectory() as tmp:
        app = Flask("bench_admin", instance_path=tmp)
        app.config.update(
            SECRET_KEY="bench",
            AMOCRM_BASE_URL=sandbox_url,
            AMOCRM_TOKEN="sandbox-token",
            AMOCRM_DELIVERY="deferred",
            AMOCRM_DATABASE_URI=POSTGRES_URL,
            AMOCRM_RULES=RULES,
            AMOCRM_ADMIN_AUTH=lambda: True,
        )
        AmoCRM(app)
        client = app.test_client()
        with engine.connect() as conn:
            top = conn.scalar(select(func.max(Event.id)))
            failed = conn.scalar(
                select(func.max(Event.id)).where(
                    Event.status == "failed", Event.source == "callback"
                )
            )
            some = conn.execute(
                select(Event.data).where(Event.id == N // 3)
            ).scalar_one()
        digits = "".join(c for c in some["phone"] if c.isdigit())[-10:]
        other_spelling = f"8 ({digits[:3]}) {digits[3:6]}-{digits[6:8]}-{digits[8:]}"
        cases = [
            ("list, first page", "/amocrm/admin/events", None),
            ("list, status failed", "/amocrm/admin/events", {"status": "failed"}),
            (
                "list, phone search (another spelling)",
                "/amocrm/admin/events",
                {"q": other_spelling},
            ),
            (
                "list, part of a phone (no index)",
                "/amocrm/admin/events",
                {"q": f"{digits[-4:-2]} {digits[-2:]}"},
            ),
            (
                "list, e-mail search",
                "/amocrm/admin/events",
                {"q": some["email"].upper()},
            ),
            ("list, name search", "/amocrm/admin/events", {"q": "ольга кузнецов"}),
            (
                "list, one form, one week",
                "/amocrm/admin/events",
                {"source": "order", "since": "2026-10-01", "until": "2026-10-07"},
            ),
            (
                "list, page 50 by keyset",
                "/amocrm/admin/events",
                {"before": top - 49 * 50 + 1},
            ),
            (
                "one event (failed, with preview)",
                f"/amocrm/admin/events/{failed}",
                None,
            ),
        ]
        header(
            f"admin pages, server time through the test client, median / p95 of "
            f"{RUNS} runs (ms)"
        )
        for label, path, query in cases:
            median, p95 = timed(client, path, query)
            row(
                label,
                f"{median:.1f} / {p95:.1f}",
                "-",
                f"< {GOAL_MS:.0f} at the median",
                median < GOAL_MS,
            )
        app.extensions["amocrm"].engine.dispose()
    metadata.drop_all(engine)
    engine.dispose()


if __name__ == "__main__":
    main()
