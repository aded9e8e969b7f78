"""Capture at the floor: what Flask-AmoCRM adds to a form POST handler (rq mode),
printed beside the floor measured in the same run, on the same machine:

- SQLite (WAL, ``synchronous=FULL``): one insert + commit of an equivalent row (a
  copy of a row capture stored) on the same file with the same pragmas, through
  ``sqlite3`` itself. Goal: the median within 0.5 ms of it, p99 within 1.5 ms.
- PostgreSQL: the same through ``psycopg`` itself, on one open connection. Goal:
  the median within 0.5 ms of it. Skipped, with a line saying so, when it does not
  answer.
- The enqueue after the response (what keeps the worker thread after the visitor
  has the answer): one Redis round trip (``PING``). Goal: at most 0.4 ms.

The figure is the median (p99) of the POST with the extension less the median
(p99) of the same handler without it; both handlers read the form. The plain
handler, the handler with capture and the floor are measured in alternating rounds,
so a machine that gets busier during the run slows all three, and a slower disk
shows as a slower floor, not as our overhead.

``BENCH_N`` POSTs per case (2,000); ``BENCH_ROUNDS`` rounds (10).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

import redis  # noqa: E402
from _common import (  # noqa: E402
    POSTGRES_URL,
    bench_redis,
    header,
    percentile,
    postgres_available,
    row,
)
from flask import Flask, current_app, request  # noqa: E402
from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from werkzeug.test import EnvironBuilder  # noqa: E402

from flask_amocrm import AmoCRM, form_submitted  # noqa: E402
from flask_amocrm.models import metadata  # noqa: E402
from flask_amocrm.state import _sqlite_pragmas  # noqa: E402
from flask_amocrm.visit import CAMPAIGN_SALT, JOURNEY_SALT, SignedCookie  # noqa: E402

N = int(os.environ.get("BENCH_N", "2000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "10"))
QUEUE = "bench-capture"
FORM = {
    "name": "Anna Petrova",
    "phone": "+7 912 345-67-89",
    "email": "a@example.com",
    "comment": "Please call after 6 pm" * 5,
}
PATH = "/callback"
QUERY = "utm_source=bench&utm_campaign=floor"
SECRET = "bench-secret"
#: The campaign cookie a visitor who landed with tags carries (as the extension
#: writes it: signed with the site's secret).
CAMPAIGN = SignedCookie(SECRET, CAMPAIGN_SALT).dumps(
    {
        "first": {
            "utm_source": "bench",
            "landing": "https://example.com/?utm_source=bench",
            "at": "1764650000",
        },
        "last": {
            "utm_source": "bench",
            "utm_campaign": "floor",
            "at": "1764650100",
        },
    }
)
#: The visitor's path after five pages (as the extension writes it).
JOURNEY = SignedCookie(SECRET, JOURNEY_SALT).dumps(
    {
        "s": 1764650000,
        "t": 1764650100,
        "l": "/?utm_source=bench",
        "r": "https://ya.ru/",
        "n": 5,
        "p": [
            ["/?utm_source=bench", "", 0],
            ["/sofas", "Sofas", 20],
            ["/sofas/aurora", "Sofa Aurora", 45],
            ["/cart", "", 80],
            ["/contacts", "Contacts", 100],
        ],
    }
)
HEADERS = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
    "Referer": "https://example.com/contacts",
    "Cookie": (
        f"_ga=GA1.2.1; _ym_uid=1700000000; session=abc; amocrm_utm={CAMPAIGN}; "
        f"amocrm_journey={JOURNEY}"
    ),
}
#: Goals over the floor, in milliseconds.
SQLITE_MEDIAN_OVER = 0.5
SQLITE_P99_OVER = 1.5
POSTGRES_MEDIAN_OVER = 0.5
ENQUEUE_GOAL = 0.4


def make_app(database_uri: str | None, tmp: str, redis_url: str) -> Flask:
    app = Flask("bench", instance_path=tmp)
    app.secret_key = SECRET

    @app.post("/callback")
    def callback() -> str:
        data = request.form  # the site's handler reads its form either way
        data.get("name")
        if database_uri is not None:
            form_submitted.send(
                current_app._get_current_object(), form="callback", data=data
            )
        return "thanks"

    if database_uri is not None:
        app.config.update(
            AMOCRM_BASE_URL="http://127.0.0.1:9",
            AMOCRM_TOKEN="t",
            AMOCRM_REDIS_URL=redis_url,
            AMOCRM_DELIVERY="rq",
            AMOCRM_QUEUE=QUEUE,
            AMOCRM_DATABASE_URI=database_uri,
            AMOCRM_RULES={"forms": {"callback": {}}},
        )
        AmoCRM(app)
        with app.app_context():
            app.extensions["amocrm"].create_tables()
    return app


def form_post() -> dict[str, Any]:
    """The WSGI environ of one form POST, as a server hands it to the app."""
    builder = EnvironBuilder(
        path=PATH, query_string=QUERY, method="POST", data=FORM, headers=HEADERS
    )
    try:
        return builder.get_environ()
    finally:
        builder.close()


def _start_response(status: str, headers: Any, exc_info: Any = None) -> None:
    assert status.startswith("200"), status


class Posts:
    """Form POSTs through the app as a WSGI server calls it (the environs are built
    before the clock starts): per request, the time until the body is read (what
    the visitor waits for) and then until the response is closed (the enqueue runs
    on close, after the response)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.waits: list[float] = []
        self.after: list[float] = []
        self.run(50)  # warm up
        self.waits.clear()
        self.after.clear()

    def run(self, n: int) -> None:
        app = self.app
        for environ in [form_post() for _ in range(n)]:
            started = time.perf_counter()
            response = app(environ, _start_response)
            b"".join(response)
            answered = time.perf_counter()
            response.close()  # type: ignore[attr-defined]
            closed = time.perf_counter()
            self.waits.append((answered - started) * 1000)
            self.after.append((closed - answered) * 1000)


class Timed:
    """A floor: one operation timed ``n`` times a round."""

    def __init__(self, operation: Callable[[], Any]) -> None:
        self.operation = operation
        self.times: list[float] = []
        for _ in range(50):
            operation()

    def run(self, n: int) -> None:
        operation = self.operation
        for _ in range(n):
            started = time.perf_counter()
            operation()
            self.times.append((time.perf_counter() - started) * 1000)


def sqlite_floor(path: str) -> Callable[[], None]:
    """One insert + commit of a copy of the newest event, on the same file with the
    pragmas capture's connections get."""
    connection = sqlite3.connect(path)
    _sqlite_pragmas(connection, None)
    names, newest = _newest(connection)
    uid = names.index("uid")
    sql = (
        f"INSERT INTO amocrm_events ({', '.join(names)}) "
        f"VALUES ({', '.join('?' for _ in names)})"
    )

    def insert() -> None:
        newest[uid] = uuid.uuid4().hex
        connection.execute(sql, newest)
        connection.commit()

    return insert


def _newest(connection: Any) -> tuple[list[str], list[Any]]:
    """The columns (less ``id``) and values of the newest event, as stored."""
    cursor = connection.execute("SELECT * FROM amocrm_events ORDER BY id DESC LIMIT 1")
    names = [column[0] for column in cursor.description]
    found = cursor.fetchone()
    assert found is not None, "capture stored no event"
    keep = [i for i, name in enumerate(names) if name != "id"]
    return [names[i] for i in keep], [_as_stored(found[i]) for i in keep]


def _as_stored(value: Any) -> Any:
    """A value read back, as a driver writes it again (JSON as its text)."""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def postgres_floor(url: str) -> Callable[[], None]:
    """The same on PostgreSQL, through psycopg on one open connection."""
    import psycopg

    conninfo = make_url(url).set(drivername="postgresql")
    connection = psycopg.connect(conninfo.render_as_string(hide_password=False))
    with connection.cursor() as cursor:
        names, newest = _newest(cursor)
    connection.commit()
    uid = names.index("uid")
    sql = (
        f"INSERT INTO amocrm_events ({', '.join(names)}) "
        f"VALUES ({', '.join('%s' for _ in names)}) RETURNING id"
    )

    def insert() -> None:
        newest[uid] = uuid.uuid4().hex
        with connection.cursor() as cursor:
            cursor.execute(sql, newest)
            cursor.fetchone()
        connection.commit()

    return insert


def measure(plain: Posts, captured: Posts, floors: list[Timed], n: int = N) -> None:
    """``n`` of each, in alternating rounds."""
    share = max(1, n // ROUNDS)
    for _ in range(ROUNDS):
        plain.run(share)
        captured.run(share)
        for floor in floors:
            floor.run(share)


def over(values: list[float], base: list[float], p: float) -> float:
    return percentile(values, p) - percentile(base, p)


def main() -> None:
    with bench_redis() as redis_url, tempfile.TemporaryDirectory() as tmp:
        conn = redis.Redis.from_url(redis_url)
        conn.flushdb()
        print(
            f"capture, {N} form POSTs per case in {ROUNDS} alternating rounds, "
            f"rq mode; Redis {redis_url}"
        )
        header("capture added to a form POST (ms)")
        cases = {"SQLite (WAL)": f"sqlite:///{tmp}/bench.sqlite3"}
        if postgres_available():
            metadata.drop_all(create_engine(POSTGRES_URL))
            cases["PostgreSQL"] = POSTGRES_URL
        redis_trip = Timed(redis.Redis.from_url(redis_url).ping)
        for name, uri in cases.items():
            plain = Posts(make_app(None, tmp, redis_url))
            captured = Posts(make_app(uri, tmp, redis_url))
            insert = Timed(
                sqlite_floor(f"{tmp}/bench.sqlite3")
                if uri.startswith("sqlite")
                else postgres_floor(uri)
            )
            measure(plain, captured, [insert, redis_trip])
            floor_median = percentile(insert.times, 50)
            over_median = (
                SQLITE_MEDIAN_OVER if uri.startswith("sqlite") else POSTGRES_MEDIAN_OVER
            )
            added = over(captured.waits, plain.waits, 50)
            row(
                f"capture added, {name}, median",
                f"{added:.3f}",
                f"{floor_median:.3f} (one insert + commit)",
                f"<= floor + {over_median}",
                added <= floor_median + over_median,
            )
            if uri.startswith("sqlite"):
                floor_p99 = percentile(insert.times, 99)
                added_p99 = over(captured.waits, plain.waits, 99)
                row(
                    f"capture added, {name}, p99",
                    f"{added_p99:.3f}",
                    f"{floor_p99:.3f} (its p99)",
                    f"<= floor + {SQLITE_P99_OVER}",
                    added_p99 <= floor_p99 + SQLITE_P99_OVER,
                )
            enqueue = over(captured.after, plain.after, 50)
            trip = percentile(redis_trip.times, 50)
            row(
                f"the enqueue after the response ({name} run), median",
                f"{enqueue:.3f}",
                f"{trip:.3f} (one Redis round trip)",
                f"<= {ENQUEUE_GOAL}",
                enqueue <= ENQUEUE_GOAL,
            )
            queued = conn.llen(f"rq:queue:{QUEUE}")
            expected = len(captured.waits) + 50  # and the warm-up
            if queued != expected:
                print(
                    f"  {queued} jobs queued for {expected} events: a hand-off failed"
                )
            conn.flushdb()
        if "PostgreSQL" in cases:
            metadata.drop_all(create_engine(POSTGRES_URL))
        else:
            print(
                "PostgreSQL does not answer at BENCH_POSTGRES_URL: its row is skipped"
            )
        print(
            f"(without the extension: median {percentile(plain.waits, 50):.3f} ms, "
            f"p99 {percentile(plain.waits, 99):.3f} ms)"
        )
        conn.flushdb()


if __name__ == "__main__":
    main()
