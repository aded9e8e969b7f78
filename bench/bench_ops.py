"""Operations: what the metrics cost a worker, and what a probe or a scrape costs the
web process, printed beside floors measured in the same run:

- Counting one request to amoCRM (``Meter.api_call``: one pipelined ``HINCRBY`` call)
  beside one Redis round trip (``PING``) on the same connection. Goal: the median
  within 0.2 ms of it. Without Redis (SQLite), beside one ``UPDATE`` + commit of a
  counter row through ``sqlite3`` itself on the same file: goal within 1 ms of it.
- Counting a delivered batch of 50 events (``count_outcomes``: one pipelined call)
  beside the same ``PING``. Goal: within 0.3 ms of it.
- The health endpoint and the metrics page over an events table of ``BENCH_EVENTS``
  events (10,000; a few hundred open) on SQLite, through the Flask test client. Goal:
  under 50 ms each (a monitor probes every few seconds).

``BENCH_N`` repetitions per case (2,000), in alternating rounds (``BENCH_ROUNDS``, 10).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta

sys.path.insert(0, os.path.dirname(__file__))

import redis  # noqa: E402
from _common import bench_redis, header, percentile, row  # noqa: E402
from flask import Flask  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from flask_amocrm import AmoCRM  # noqa: E402
from flask_amocrm.meter import Meter, count_outcomes  # noqa: E402
from flask_amocrm.models import Event, utcnow  # noqa: E402
from flask_amocrm.state import AppState, get_state  # noqa: E402

N = int(os.environ.get("BENCH_N", "2000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "10"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "10000"))
QUEUE = "bench-ops"


def site(tmp: str, name: str, redis_url: str | None) -> Flask:
    app = Flask(name, instance_path=tmp)
    app.config.update(
        AMOCRM_BASE_URL="http://127.0.0.1:9",
        AMOCRM_TOKEN="t",
        AMOCRM_DELIVERY="rq" if redis_url else "deferred",
        AMOCRM_REDIS_URL=redis_url,
        AMOCRM_QUEUE=QUEUE,
        AMOCRM_DATABASE_URI=f"sqlite:///{tmp}/{name}.sqlite3",
        AMOCRM_RULES={"forms": {"callback": {}}},
        AMOCRM_HEALTH_PATH="/health",
        AMOCRM_METRICS_PATH="/metrics",
    )
    AmoCRM(app)
    with app.app_context():
        get_state().create_tables()
    return app


def timed(func: Callable[[], object], samples: list[float]) -> None:
    for _ in range(N // ROUNDS):
        started = time.perf_counter()
        func()
        samples.append((time.perf_counter() - started) * 1000)


def compare(what: str, cases: dict[str, Callable[[], object]], goal: float) -> None:
    """Time each case in alternating rounds; the first is the floor."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(ROUNDS):
        for name, func in cases.items():
            timed(func, samples[name])
    floor_name, *others = cases
    floor = percentile(samples[floor_name], 50)
    for name in others:
        median = percentile(samples[name], 50)
        row(
            f"{what}: {name}",
            f"{median:.3f} median, {percentile(samples[name], 99):.3f} p99",
            f"{floor_name} {floor:.3f} median",
            f"within {goal} of the floor",
            median - floor <= goal,
        )


def sqlite_counter_floor(path: str) -> Callable[[], None]:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE IF NOT EXISTS floor (name TEXT PRIMARY KEY, v)")
    connection.execute("INSERT OR IGNORE INTO floor VALUES ('x', 0)")

    def update() -> None:
        connection.execute("BEGIN")
        connection.execute("UPDATE floor SET v = v + 1 WHERE name = 'x'")
        connection.execute("COMMIT")

    return update


def batch_of(state: AppState, n: int) -> list[Event]:
    now = utcnow()
    return [
        Event(
            id=i,
            status="delivered",
            created_at=now - timedelta(seconds=i),
            delivered_at=now,
        )
        for i in range(n)
    ]


def fill(app: Flask) -> None:
    now = utcnow()
    rows = [
        {
            "uid": f"{i:032x}",
            "kind": "form",
            "source": "callback",
            "data": {},
            "files": [],
            "context": {},
            "remote": {},
            "log": [],
            "status": "delivered" if i % 40 else "pending",
            "created_at": now - timedelta(minutes=i % 600),
            "updated_at": now,
            "delivered_at": now if i % 40 else None,
        }
        for i in range(EVENTS)
    ]
    with app.app_context(), get_state().session() as session:
        session.execute(insert(Event), rows)
        session.commit()


def probe(app: Flask, path: str) -> None:
    client = app.test_client()
    samples: list[float] = []
    for _ in range(200):
        started = time.perf_counter()
        answer = client.get(path)
        samples.append((time.perf_counter() - started) * 1000)
        assert answer.status_code in (200, 503)
    median = percentile(samples, 50)
    row(
        f"GET {path} over {EVENTS} events",
        f"{median:.1f} median, {percentile(samples, 99):.1f} p99",
        "—",
        "under 50 ms",
        median < 50,
    )


def main() -> None:
    with bench_redis() as redis_url, tempfile.TemporaryDirectory() as tmp:
        connection = redis.Redis.from_url(redis_url)
        connection.flushdb()
        print(f"operations, {N} calls per case in {ROUNDS} rounds; Redis {redis_url}")
        with_redis = site(tmp, "redis_site", redis_url)
        without = site(tmp, "db_site", None)
        header("counting for the metrics (ms)")
        with with_redis.app_context():
            state = get_state()
            meter = Meter(state)
            ping = state.redis().ping
            compare(
                "one request counted, Redis",
                {
                    "PING": ping,
                    "api_call": lambda: meter.api_call(
                        "POST", "/api/v4/leads/complex", 200, 0.01
                    ),
                },
                0.2,
            )
            events = batch_of(state, 50)
            compare(
                "a batch of 50 counted, Redis",
                {"PING": ping, "count_outcomes": lambda: count_outcomes(state, events)},
                0.3,
            )
        with without.app_context():
            db_meter = Meter(get_state())
            compare(
                "one request counted, no Redis (SQLite)",
                {
                    "UPDATE+commit": sqlite_counter_floor(f"{tmp}/floor.sqlite3"),
                    "api_call": lambda: db_meter.api_call(
                        "POST", "/api/v4/leads/complex", 200, 0.01
                    ),
                },
                1.0,
            )
        header("probes and scrapes (ms)")
        fill(with_redis)
        probe(with_redis, "/health")
        probe(with_redis, "/metrics")
        connection.flushdb()


if __name__ == "__main__":
    main()
