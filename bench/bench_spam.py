"""The spam checks' rates over 100,000 stored events: how long judging one event takes
(its per-IP and per-phone counts within the window), beside a primary-key read of the
same event (the floor), SQLite always and PostgreSQL when it answers. Goal: under
20 ms at the median, since the worker judges each form event once.

The events are bulk-inserted as capture would have stored them, spread over 30 days,
from 5,000 IPs with 20,000 phones; the judged event is the newest.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from datetime import timedelta
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

from _common import POSTGRES_URL, percentile, postgres_available  # noqa: E402
from flask import Flask  # noqa: E402
from sqlalchemy import create_engine, func, insert, select  # noqa: E402

from flask_amocrm import AmoCRM  # noqa: E402
from flask_amocrm.models import Event, metadata, utcnow  # noqa: E402
from flask_amocrm.outbox import search_text  # noqa: E402
from flask_amocrm.state import get_state  # noqa: E402
from flask_amocrm.worker.spam import judge  # noqa: E402

N = int(os.environ.get("BENCH_EVENTS", "100000"))
RUNS = int(os.environ.get("BENCH_RUNS", "30"))
GOAL_MS = 20.0
CHUNK = 5000


def fill(engine: Any) -> None:
    rng = random.Random(14)
    now = utcnow()
    step = timedelta(days=30) / N
    for start in range(0, N, CHUNK):
        rows = []
        for i in range(start, min(start + CHUNK, N)):
            phone = f"+7916{rng.randrange(20000):07d}"
            data = {"name": "Anna", "phone": phone}
            rows.append(
                {
                    "uid": f"{i:032x}",
                    "kind": "form",
                    "source": "callback",
                    "data": data,
                    "files": [],
                    "context": {
                        "client": {"ip": f"10.0.{rng.randrange(20)}.{i % 250}"}
                    },
                    "status": "delivered",
                    "attempts": 1,
                    "remote": {},
                    "log": [],
                    "search": search_text(data),
                    "created_at": now - timedelta(days=30) + step * i,
                    "updated_at": now,
                }
            )
        with engine.begin() as conn:
            conn.execute(insert(Event), rows)


def measure(uri: str, label: str) -> None:
    engine = create_engine(uri)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    began = time.perf_counter()
    fill(engine)
    print(f"{label}: {N} events inserted in {time.perf_counter() - began:.0f} s")
    with tempfile.TemporaryDirectory() as tmp:
        app = Flask("bench_spam", instance_path=tmp)
        app.config.update(
            SECRET_KEY="bench",
            AMOCRM_BASE_URL="https://bench.amocrm.ru",
            AMOCRM_TOKEN="bench-token",
            AMOCRM_DELIVERY="deferred",
            AMOCRM_DATABASE_URI=uri,
            AMOCRM_RULES={"forms": {"callback": {"lead": {"name": "x"}}}},
            AMOCRM_SPAM_MAX_PER_IP=10,
            AMOCRM_SPAM_MAX_PER_PHONE=3,
        )
        AmoCRM(app)
        with app.app_context():
            state = get_state(app)
            with state.session() as session:
                top = session.scalar(select(func.max(Event.id)))
                event = session.get(Event, top)
                assert event is not None
            floor, judged = [], []
            for _ in range(RUNS):
                began = time.perf_counter()
                with state.session() as session:
                    session.get(Event, top)
                floor.append((time.perf_counter() - began) * 1000)
                began = time.perf_counter()
                judge(state, event, {})
                judged.append((time.perf_counter() - began) * 1000)
        state_engine = getattr(app.extensions["amocrm"], "_engine", None)
        if state_engine is not None:
            state_engine.dispose()
    median = percentile(judged, 50)
    verdict = "ok" if median < GOAL_MS else "OVER"
    print(
        f"  judge one event (IP and phone rates): {median:6.2f} / "
        f"{percentile(judged, 95):6.2f} ms median / p95 (goal < {GOAL_MS:.0f} ms: "
        f"{verdict}); floor, a primary-key read: {percentile(floor, 50):.2f} ms"
    )
    metadata.drop_all(engine)
    engine.dispose()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        measure(f"sqlite:///{tmp}/bench.sqlite3", "SQLite")
    if postgres_available():
        measure(POSTGRES_URL, "PostgreSQL")
    else:
        print(f"PostgreSQL does not answer at {POSTGRES_URL}: not measured.")


if __name__ == "__main__":
    main()
