"""Many processes, many rows: what ``bench/fault_soak.py`` and ``bench/bench_claim.py``
found, kept as tests (docs/scaling.md).

- Finding the due events reads the waiting ones only, never the delivered ones:
  PostgreSQL through the partial index ``ix_amocrm_events_waiting`` (it walked the
  primary key past every delivered event before it), SQLite by status (it could
  walk the whole table in rowid order); an install made before the index gets it
  from ``upgrade_tables`` (and from the migration 0002).
- The request budget stays shared while Redis is down (it did not: every process
  fell back to the whole budget of its own), and when Redis comes back empty (the
  fallbacks' requests were not in its window, and a process waiting in its fallback
  sent when Redis was back).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, inspect, text

from flask_amocrm import models
from flask_amocrm.outbox import due_ids
from flask_amocrm.state import get_state
from tests.helpers.client import app_config, busiest_second, run_children
from tests.helpers.redis_server import RedisServer, free_port

DELIVERED = 3000


def _fill(app: Any) -> None:
    """``DELIVERED`` delivered events, then two waiting: one due, one not yet."""
    engine = get_state(app).engine
    now = "now()" if engine.dialect.name == "postgresql" else "datetime('now')"
    later = (
        "now() + interval '1 hour'"
        if engine.dialect.name == "postgresql"
        else "datetime('now', '+1 hour')"
    )
    rows = ", ".join(
        f"({n}, 'u{n}', 'form', 'callback', '{{}}', '[]', '{{}}', 'delivered', 1, "
        f"NULL, '{{}}', '[]', {now}, {now})"
        for n in range(1, DELIVERED + 1)
    )
    with engine.begin() as conn:
        columns = (
            "(id, uid, kind, source, data, files, context, status, attempts, "
            "next_attempt_at, remote, log, created_at, updated_at)"
        )
        conn.execute(text(f"INSERT INTO amocrm_events {columns} VALUES {rows}"))
        conn.execute(
            text(
                f"INSERT INTO amocrm_events {columns} VALUES "
                f"({DELIVERED + 1}, 'due', 'form', 'callback', '{{}}', '[]', '{{}}', "
                f"'pending', 0, NULL, '{{}}', '[]', {now}, {now}), "
                f"({DELIVERED + 2}, 'later', 'form', 'callback', '{{}}', '[]', '{{}}',"
                f" 'retrying', 1, {later}, '{{}}', '[]', {now}, {now})"
            )
        )
        conn.execute(text("ANALYZE"))


def _plan_of_due_ids(app: Any) -> tuple[list[int], str]:
    """What ``due_ids`` answers, and the plan of the query it sent."""
    state = get_state(app)
    sent: list[tuple[str, Any]] = []

    def catch(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "ORDER BY amocrm_events.id" in statement:
            sent.append((statement, params))

    event.listen(state.engine, "before_cursor_execute", catch)
    try:
        ids = due_ids(state, 50)
    finally:
        event.remove(state.engine, "before_cursor_execute", catch)
    statement, params = sent[-1]
    postgres = state.engine.dialect.name == "postgresql"
    with state.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            ("EXPLAIN " if postgres else "EXPLAIN QUERY PLAN ") + statement, params
        ).all()
    return ids, "\n".join(str(r[0] if postgres else r[-1]) for r in rows)


def test_due_events_are_found_without_reading_the_delivered_ones(
    make_app: Any, database_uri: str
) -> None:
    app = make_app(AMOCRM_DATABASE_URI=database_uri)
    get_state(app).create_tables()
    _fill(app)
    ids, plan = _plan_of_due_ids(app)
    assert ids == [DELIVERED + 1]  # the retrying one is not due yet
    if database_uri.startswith("sqlite"):
        assert "SEARCH amocrm_events USING INDEX" in plan, plan
    else:
        assert "ix_amocrm_events_waiting" in plan, plan


def test_an_earlier_install_gets_the_waiting_index(
    make_app: Any, database_uri: str
) -> None:
    app = make_app(AMOCRM_DATABASE_URI=database_uri)
    state = get_state(app)
    state.create_tables()
    with state.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_amocrm_events_waiting"))
    with state.engine.begin() as conn:
        added = models.upgrade_tables(conn)
    assert "ix_amocrm_events_waiting" in added
    with state.engine.connect() as conn:
        names = {i["name"] for i in inspect(conn).get_indexes("amocrm_events")}
    assert "ix_amocrm_events_waiting" in names
    _fill(app)
    ids, plan = _plan_of_due_ids(app)
    assert ids == [DELIVERED + 1]
    if not database_uri.startswith("sqlite"):
        assert "ix_amocrm_events_waiting" in plan, plan


def test_the_budget_stays_shared_while_redis_is_down(
    sandbox: Any, tmp_path: Any
) -> None:
    config = app_config(
        sandbox,
        str(tmp_path / "events.sqlite3"),
        # nothing listens there: Redis is down for the whole test
        AMOCRM_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        AMOCRM_LOG_REQUESTS=False,
    )
    results = run_children(config, str(tmp_path / "instance"), processes=4, calls=6)
    log = [r for r in sandbox.requests() if r["path"] == "/api/v4/account"]
    assert all(r == ["ok"] * 6 for r in results), results
    # found by bench/fault_soak.py: each process fell back to the whole budget
    busiest = busiest_second(log)
    assert busiest <= 7, f"{busiest} requests within one second"


def test_the_budget_holds_when_redis_comes_back_empty(
    sandbox: Any, tmp_path: Any
) -> None:
    server = RedisServer(tmp_path).start()
    config = app_config(
        sandbox,
        str(tmp_path / "events.sqlite3"),
        AMOCRM_REDIS_URL=f"{server.url}/0",
        AMOCRM_LOG_REQUESTS=False,
    )
    sandbox.clear_requests()

    def restart_redis(start_at: float) -> None:
        # a second into the run (a window's worth of requests granted by Redis),
        # Redis dies; it comes back empty 2.5 s later, while the processes wait in
        # their fallbacks
        time.sleep(max(0.0, start_at + 1.0 - time.time()))
        port = server.port
        server.stop()
        time.sleep(2.5)
        server.start(port=port)

    try:
        results = run_children(
            config,
            str(tmp_path / "instance"),
            processes=4,
            calls=10,
            meanwhile=restart_redis,
        )
    finally:
        server.stop()
    log = [r for r in sandbox.requests() if r["path"] == "/api/v4/account"]
    assert all(r == ["ok"] * 10 for r in results), results
    busiest = busiest_second(log)
    assert busiest <= 7, f"{busiest} requests within one second"
