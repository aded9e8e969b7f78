"""Capture overhead: a form POST handler with Flask-AmoCRM (rq mode) against the same
handler without it. Goal: under 1 ms added at the median, 3 ms at p99."""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

import redis  # noqa: E402
from _common import POSTGRES_URL, REDIS_URL, percentile, postgres_available  # noqa: E402
from flask import Flask, current_app, request  # noqa: E402
from sqlalchemy import create_engine  # noqa: E402

from flask_amocrm import AmoCRM, form_submitted  # noqa: E402
from flask_amocrm.models import metadata  # noqa: E402

N = int(os.environ.get("BENCH_N", "2000"))
FORM = {
    "name": "Anna Petrova",
    "phone": "+7 912 345-67-89",
    "email": "a@example.com",
    "comment": "Please call after 6 pm" * 5,
}


def make_app(database_uri: str | None, tmp: str) -> Flask:
    app = Flask("bench", instance_path=tmp)

    @app.post("/callback")
    def callback() -> str:
        if database_uri is not None:
            form_submitted.send(
                current_app._get_current_object(), form="callback", data=request.form
            )
        return "thanks"

    if database_uri is not None:
        app.config.update(
            AMOCRM_BASE_URL="http://127.0.0.1:9",
            AMOCRM_TOKEN="t",
            AMOCRM_REDIS_URL=REDIS_URL,
            AMOCRM_DELIVERY="rq",
            AMOCRM_QUEUE="bench-capture",
            AMOCRM_DATABASE_URI=database_uri,
            AMOCRM_RULES={"forms": {"callback": {}}},
        )
        AmoCRM(app)
        with app.app_context():
            app.extensions["amocrm"].create_tables()
    return app


def measure(app: Flask) -> tuple[list[float], list[float]]:
    """Per request: the time until the response is ready (what the visitor waits
    for) and the time until it is closed (the enqueue runs after the response)."""
    client = app.test_client()
    for _ in range(50):  # warm up
        client.post("/callback?utm_source=bench", data=FORM).close()
    waits, busy = [], []
    for _ in range(N):
        started = time.perf_counter()
        response = client.post("/callback?utm_source=bench", data=FORM)
        answered = time.perf_counter()
        response.close()
        closed = time.perf_counter()
        waits.append((answered - started) * 1000)
        busy.append((closed - started) * 1000)
    return waits, busy


def main() -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()
    with tempfile.TemporaryDirectory() as tmp:
        base, _ = measure(make_app(None, tmp))
        cases = {"SQLite": f"sqlite:///{tmp}/bench.sqlite3"}
        if postgres_available():
            engine = create_engine(POSTGRES_URL)
            metadata.drop_all(engine)
            cases["PostgreSQL"] = POSTGRES_URL
        else:
            print("PostgreSQL not available: skipped")
        base_median, base_p99 = percentile(base, 50), percentile(base, 99)
        print(f"capture overhead, {N} form POSTs each, rq mode")
        print(
            f"  without the extension: median {base_median:.3f} ms, "
            f"p99 {base_p99:.3f} ms"
        )
        for name, uri in cases.items():
            waits, busy = measure(make_app(uri, tmp))
            median, p99 = percentile(waits, 50), percentile(waits, 99)
            print(
                f"  with it, {name:<10}: median {median:.3f} ms, p99 {p99:.3f} ms"
                f"  -> the visitor waits {median - base_median:.3f} ms more at the "
                f"median, {p99 - base_p99:.3f} ms at p99"
            )
            print(
                f"  {'':<20}the enqueue after the response keeps the worker thread "
                f"{percentile(busy, 50) - median:.3f} ms longer (median)"
            )
            queued = redis.Redis.from_url(REDIS_URL).llen("rq:queue:bench-capture")
            print(f"  {'':<20}{queued} jobs queued")
            redis.Redis.from_url(REDIS_URL).flushdb()
        if "PostgreSQL" in cases:
            metadata.drop_all(create_engine(POSTGRES_URL))
    redis.Redis.from_url(REDIS_URL).flushdb()


if __name__ == "__main__":
    main()
