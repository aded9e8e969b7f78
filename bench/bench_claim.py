"""Claiming due events at scale: 100,000 event rows, most of them delivered, a
backlog waiting, and 8 processes claiming it at once, on PostgreSQL and on SQLite.

What it prints, per database:

- the plan of the query that finds due events (:func:`flask_amocrm.outbox.due_ids`:
  the sweeper, the agent, a job's first batch) and of the claim a delivery lane makes
  (:func:`~flask_amocrm.outbox.claim_due`: the oldest due events nobody holds, in one
  statement), with the buffers read: it must read the
  waiting events only, never the delivered ones (PostgreSQL: the partial index
  ``ix_amocrm_events_waiting``; SQLite: an index on status); beside it, the query
  as it was before (PostgreSQL: the index dropped; SQLite: the old statement);
- 8 processes (``BENCH_CLAIMERS``) each looping as a delivery lane does: claim up to
  50 due events, mark them delivered; claims a second, the claims that came
  back empty (another process had them), the slowest claim, "database is locked"
  errors, and whether any event was claimed twice (must be none) or left; and a
  web process capturing a form every 20 ms meanwhile: how long a capture takes and
  how many were spooled because the database was busy.

``BENCH_ROWS`` (100,000) and ``BENCH_BACKLOG`` (5,000) change the sizes. PostgreSQL
is ``BENCH_POSTGRES_URL`` (its ``amocrm_*`` tables are dropped); its rows are skipped
when it does not answer.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

from _common import POSTGRES_URL, percentile, postgres_available  # noqa: E402
from flask import Flask  # noqa: E402
from sqlalchemy import create_engine, event, text  # noqa: E402
from sqlalchemy.exc import OperationalError  # noqa: E402

from flask_amocrm import (
    AmoCRM,  # noqa: E402
    models,  # noqa: E402
)
from flask_amocrm.models import metadata  # noqa: E402
from flask_amocrm.outbox import claim_due, due_ids  # noqa: E402
from flask_amocrm.state import get_state  # noqa: E402

ROWS = int(os.environ.get("BENCH_ROWS", "100000"))
BACKLOG = int(os.environ.get("BENCH_BACKLOG", "5000"))
CLAIMERS = int(os.environ.get("BENCH_CLAIMERS", "8"))
BATCH = 50


def make_app(database: str) -> Flask:
    # a capture the database refuses is spooled to the instance folder: a temporary one
    app = Flask(
        "bench_claim", instance_path=os.path.join(tempfile.gettempdir(), "bench_claim")
    )
    app.config.update(
        AMOCRM_BASE_URL="https://example.amocrm.ru",
        AMOCRM_TOKEN="bench-token",
        AMOCRM_DATABASE_URI=database,
        AMOCRM_DELIVERY="deferred",
        AMOCRM_BATCH_SIZE=BATCH,
    )
    AmoCRM(app)
    return app


def fill(database: str) -> None:
    """``ROWS`` events: the newest ``BACKLOG`` pending, 2 % retrying later (not due),
    1 % failed, the rest delivered; then the statistics the planner reads."""
    engine = create_engine(database)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    old = ROWS - BACKLOG
    postgres = engine.dialect.name == "postgresql"
    series = (
        f"generate_series(1, {ROWS}) AS n"
        if postgres
        else f"(WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r "
        f"WHERE n < {ROWS}) SELECT n FROM r)"
    )
    later = "now() + interval '1 hour'" if postgres else "datetime('now', '+1 hour')"
    now = "now()" if postgres else "datetime('now')"
    status = (
        f"CASE WHEN n > {old} THEN 'pending' WHEN n % 50 = 0 THEN 'retrying' "
        "WHEN n % 100 = 1 THEN 'failed' ELSE 'delivered' END"
    )
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO amocrm_events (id, uid, kind, source, data, files, "
                "context, status, attempts, next_attempt_at, remote, log, "
                "created_at, updated_at, delivered_at) "
                f"SELECT n, 'u' || n, 'form', 'callback', '{{}}', '[]', '{{}}', "
                f"{status}, 1, CASE WHEN n % 50 = 0 AND n <= {old} THEN {later} END, "
                f"'{{}}', '[]', {now}, {now}, "
                f"CASE WHEN n <= {old} AND n % 50 != 0 AND n % 100 != 1 "
                f"THEN {now} END FROM {series}"
            )
        )
        if postgres:  # the ids were given: the next capture takes the one after
            conn.execute(
                text(
                    "SELECT setval(pg_get_serial_sequence('amocrm_events', 'id'), "
                    f"{ROWS})"
                )
            )
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text("VACUUM ANALYZE amocrm_events" if postgres else "ANALYZE"))
    engine.dispose()


def plans(app: Flask) -> None:
    """The plans of the statements ``due_ids`` and ``claim_due`` send (caught on their
    way to the database, run again under ``EXPLAIN``), and of the due query as it
    was before (PostgreSQL: without the partial index; SQLite: ordered by id)."""
    state = get_state(app)
    engine = state.engine
    postgres = engine.dialect.name == "postgresql"
    sent: list[tuple[str, Any]] = []

    def catch(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        sent.append((statement, params))

    event.listen(engine, "before_cursor_execute", catch)
    ids = due_ids(state, BATCH)
    due_sql = next(x for x in sent if "ORDER BY amocrm_events.id" in x[0])
    sent.clear()
    ids = claim_due(state, BATCH)
    claim_sql = next(x for x in sent if x[0].lstrip().startswith("UPDATE"))
    event.remove(engine, "before_cursor_execute", catch)
    listed = ", ".join(str(i) for i in ids)
    with engine.begin() as conn:  # as they were: due
        conn.exec_driver_sql(
            "UPDATE amocrm_events SET status = 'pending', locked_until = NULL, "
            f"attempts = attempts - 1 WHERE id IN ({listed})"
        )

    def explain(statement: tuple[str, Any]) -> list[str]:
        sql, params = statement
        verb = (
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "
            if postgres
            else "EXPLAIN QUERY PLAN "
        )
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(verb + sql, params).all()
            conn.rollback()  # an analysed UPDATE ran: undo it
        return [str(r[0] if postgres else r[-1]) for r in rows]

    index = "ix_amocrm_events_waiting" if postgres else "an index on status"
    for title, statement in (("due events", due_sql), ("the claim", claim_sql)):
        print(f"\n{title}:")
        for line in explain(statement):
            print("    " + line)
    if postgres:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX ix_amocrm_events_waiting")
            conn.exec_driver_sql("ANALYZE amocrm_events")
        print("\ndue events without ix_amocrm_events_waiting (the indexes before it):")
        for line in explain(due_sql):
            print("    " + line)
        with engine.begin() as conn:
            models.upgrade_tables(conn)  # creates it again, as on an existing install
            conn.exec_driver_sql("ANALYZE amocrm_events")
    else:
        waiting = (
            "unlikely(amocrm_events.status IN ('pending', 'retrying', 'processing'))"
        )
        before = (
            due_sql[0]
            .replace(waiting + " AND ", "")
            .replace("amocrm_events.id + ?", "amocrm_events.id")
        )
        params = list(due_sql[1])
        del params[-3]  # the 0 of "id + 0"
        print("\ndue events, the query before (ordered by id, no unlikely()):")
        for line in explain((before, tuple(params))):
            print("    " + line)
    print(f"(the due events must be read through {index})")


def claimer(database: str, started: float, queue: Any) -> None:
    """One process, as a delivery lane: claim the oldest due events nobody holds,
    mark them delivered, until none are due; report what it claimed and how long
    each claim took."""
    app = make_app(database)
    state = get_state(app)
    claimed: list[int] = []
    times: list[float] = []
    empty = locked = full = 0
    while time.time() < started:
        time.sleep(0.001)
    while True:
        try:
            began = time.perf_counter()
            got = claim_due(state, BATCH)
            times.append(time.perf_counter() - began)
            if not got and not due_ids(state, 1):
                break
        except OperationalError as exc:
            if "locked" not in str(exc):
                raise
            locked += 1
            continue
        if not got:
            empty += 1
            continue
        claimed.extend(got)
        full += 1
        with state.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE amocrm_events SET status = 'delivered', "
                    "delivered_at = updated_at WHERE id IN "
                    f"({', '.join(str(i) for i in got)})"
                )
            )
    queue.put((claimed, times, empty, locked, full))


def capturer(database: str, started: float, stop: Any, queue: Any) -> None:
    """A web process meanwhile: capture a form every 20 ms while the claimers work;
    report how long each capture took and how many the database refused (spooled)."""
    app = make_app(database)
    amocrm = app.extensions["amocrm"].extension
    times: list[float] = []
    spooled = 0
    while time.time() < started:
        time.sleep(0.001)
    with app.app_context():
        while not stop.is_set():
            began = time.perf_counter()
            if amocrm.submit("callback", {"name": "Visitor", "phone": "+79161234567"}):
                times.append(time.perf_counter() - began)
            else:
                spooled += 1
            time.sleep(0.02)
    queue.put((times, spooled))


def run_claimers(database: str) -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    captures = context.Queue()
    stop = context.Event()
    started = time.time() + 3  # every process started and its app loaded
    procs = [
        context.Process(target=claimer, args=(database, started, queue))
        for _ in range(CLAIMERS)
    ]
    web = context.Process(target=capturer, args=(database, started, stop, captures))
    for proc in [*procs, web]:
        proc.start()
    results = [queue.get() for _ in procs]
    took = time.time() - started
    stop.set()
    capture_times, spooled = captures.get()
    for proc in [*procs, web]:
        proc.join()
    every = [i for claimed, *_ in results for i in claimed]
    times = [t for _, t, *_ in results for t in t]
    twice = len(every) - len(set(every))
    empty = sum(r[2] for r in results)
    locked = sum(r[3] for r in results)
    engine = create_engine(database)
    with engine.connect() as conn:
        left = conn.execute(
            text(
                "SELECT count(*) FROM amocrm_events WHERE status = 'pending' "
                f"AND id <= {ROWS}"  # not the captures made meanwhile
            )
        ).scalar_one()
    engine.dispose()
    print(
        f"\n{CLAIMERS} processes claimed {len(set(every))} due events ({BACKLOG} "
        f"of the fill, the rest captured meanwhile) in {took:.1f} s: "
        f"{len(set(every)) / took:.0f} events/s, "
        f"{sum(r[4] for r in results)} claims with events, {empty} empty "
        f"(another process had them), {locked} 'database is locked' errors"
    )
    if times:
        print(
            f"one claim: median {percentile(times, 50) * 1000:.1f} ms, p99 "
            f"{percentile(times, 99) * 1000:.1f} ms, slowest {max(times) * 1000:.0f} ms"
        )
    if capture_times:
        print(
            f"a web process capturing meanwhile: {len(capture_times)} forms stored, "
            f"median {percentile(capture_times, 50) * 1000:.1f} ms, p99 "
            f"{percentile(capture_times, 99) * 1000:.1f} ms, slowest "
            f"{max(capture_times) * 1000:.0f} ms; {spooled} spooled (the database "
            "was busy longer than capture waits)"
        )
    ok = twice == 0 and left == 0
    print(
        f"claimed twice: {twice} (goal 0); still pending: {left} (goal 0)  "
        + ("ok" if ok else "MISSED"),
        flush=True,
    )


def main() -> int:
    print(
        f"Claiming at scale: {ROWS} events, {BACKLOG} of them due, "
        f"{CLAIMERS} processes, batches of {BATCH}; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    databases = []
    if postgres_available():
        databases.append(("PostgreSQL", POSTGRES_URL))
    else:
        print(f"PostgreSQL at {POSTGRES_URL} does not answer: its rows are skipped")
    tmp = tempfile.TemporaryDirectory()
    databases.append(("SQLite (WAL)", f"sqlite:///{tmp.name}/claim.sqlite3"))
    for name, database in databases:
        print(f"\n== {name}")
        began = time.time()
        fill(database)
        print(f"filled in {time.time() - began:.1f} s")
        plans(make_app(database))
        run_claimers(database)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
