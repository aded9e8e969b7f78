"""Capture at the floor: the insert compiled once writes the row the ORM writes, a
dropped PostgreSQL connection or a locked SQLite file costs no event, and the
hand-off after the response queues a job RQ and the sweeper know, in one round trip,
however Redis comes and goes. (The speed itself is measured in
``bench/bench_capture.py``, never asserted here.)"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from rq.job import Job, JobStatus
from sqlalchemy import create_engine, text

from flask_amocrm.outbox import add, load_spool, store
from flask_amocrm.state import SQLITE_BUSY_MS, get_state
from flask_amocrm.worker.queue import enqueue_event, job_id
from flask_amocrm.worker.sweeper import sweep
from tests.conftest import CALLBACK_RULES
from tests.helpers.e2e import form_site, stored_events
from tests.helpers.process import child_env
from tests.helpers.redis_server import RedisServer

FORM = {"name": 'Анна "Ann" O\'Neil 😀', "phone": "+7 912 000-11-22"}


def _site(make_app: Any, **config: Any) -> Flask:
    """A site whose ``POST /form/callback`` sends the form."""
    return form_site(make_app, CALLBACK_RULES, **config)


def _row(app: Flask, uid: str) -> dict[str, Any]:
    """The event's columns as the database returns them, JSON as its text."""
    state = get_state(app)
    json_text = "::text" if state.engine.dialect.name == "postgresql" else ""
    columns = ", ".join(
        f"{name}{json_text} AS {name}"
        if name in ("data", "files", "context", "remote", "log")
        else name
        for name in (
            "kind source data files context status attempts remote log dedupe_key "
            "search created_at next_attempt_at locked_until last_error delivered_at"
        ).split()
    )
    with state.engine.connect() as connection:
        found = connection.execute(
            text(f"SELECT {columns} FROM amocrm_events WHERE uid = :uid"), {"uid": uid}
        ).mappings()
        return dict(found.one())


def test_the_compiled_insert_writes_the_row_the_orm_writes(
    make_app: Any, database_uri: str
) -> None:
    app = make_app(AMOCRM_DATABASE_URI=database_uri)
    fields: dict[str, Any] = {
        "kind": "mail",
        "source": "ORDER_NEW",
        "data": {
            "name": "Анна",
            "nested": {"list": [1, 2.5, None, True, "x"]},
            "quote": 'he said "hi"',
            "emoji": "😀",
        },
        "files": [{"field": "cv", "name": "cv.pdf", "url": "https://site/u/1"}],
        "context": {"utm": {"utm_source": "google"}, "captured_at": 1700000000},
        "log": ["the uploads could not be read (OSError)"],
        "created_at": datetime(2026, 12, 2, 7, 30, 15, 123456),
    }
    with app.app_context():
        state = get_state(app)
        event = store(state, uid="a" * 32, dedupe_key="key-a", **fields)
        with state.session() as session:
            add(session, uid="b" * 32, dedupe_key="key-b", **fields)
            session.commit()
    compiled, orm = _row(app, "a" * 32), _row(app, "b" * 32)
    assert compiled.pop("dedupe_key") == "key-a"
    assert orm.pop("dedupe_key") == "key-b"
    assert compiled == orm
    # and read back through the ORM, as the worker reads it
    by_uid = {e.uid: e for e in stored_events(app)}
    first, second = by_uid["a" * 32], by_uid["b" * 32]
    assert first.id == event.id
    for name in ("kind", "source", "data", "files", "context", "log", "remote"):
        assert getattr(first, name) == getattr(second, name) == getattr(event, name)
    assert first.status == second.status == "pending"
    assert first.attempts == 0
    assert first.created_at == second.created_at == fields["created_at"]
    assert isinstance(first.updated_at, datetime)


def test_a_new_process_first_capture_returns_the_event_as_stored(
    tmp_path: Path,
) -> None:
    """The event capture returns (to ``submit``, to ``event_captured``) is built
    without the ORM's constructor: in a process where nothing has used the ORM yet
    it reads, column by column, as the row read back does, and a session takes it
    in and changes it."""
    script = textwrap.dedent(f"""
        import json
        from flask import Flask
        from flask_amocrm import AmoCRM
        from flask_amocrm.models import Event
        from flask_amocrm.state import get_state

        app = Flask("site", instance_path={str(tmp_path / "instance")!r})
        app.config.update(
            SECRET_KEY="test", AMOCRM_BASE_URL="http://127.0.0.1:9", AMOCRM_TOKEN="t",
            AMOCRM_DELIVERY="deferred",
            AMOCRM_RULES={{"forms": {{"callback": {{}}}}}},
        )
        amocrm = AmoCRM(app)
        with app.app_context():
            form = {{"name": "Anna", "phone": "89120001122"}}
            event = amocrm.submit("callback", form)
            columns = [c.key for c in Event.__table__.columns]
            returned = {{name: getattr(event, name) for name in columns}}
            with get_state().session() as session:
                row = session.get(Event, event.id)
                stored = {{name: getattr(row, name) for name in columns}}
                attempts = list(event.attempt_rows)
                merged = session.merge(event)
                merged.last_error = "changed"
                session.commit()
            with get_state().session() as session:
                changed = session.get(Event, event.id).last_error
        print(json.dumps([returned == stored, attempts, changed,
                          sorted(k for k in columns if returned[k] != stored[k])],
                         default=str))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [True, [], "changed", []]


# A connection the server drops is PostgreSQL's case (SQLite has no server).
@pytest.mark.parametrize("database_uri", ["postgresql"], indirect=True)
def test_a_dropped_postgresql_connection_costs_no_event(
    make_app: Any, database_uri: str, tmp_path: Path
) -> None:
    app = _site(make_app, AMOCRM_DATABASE_URI=database_uri)
    client = app.test_client()
    assert client.post("/form/callback", data=FORM).status_code == 200
    with app.app_context():  # the connection the next capture takes
        own = get_state(app).own_connections()
        assert own is not None
        held = own.take()
        cursor = held.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
        cursor.close()
        own.give_back(held)
    killer = create_engine(database_uri)
    with killer.begin() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:p)"), {"p": backend})
    killer.dispose()
    assert client.post("/form/callback", data=FORM).status_code == 200
    events = stored_events(app)
    assert [e.data["name"] for e in events] == [FORM["name"], FORM["name"]]
    assert not (tmp_path / "instance0" / "amocrm-spool.jsonl").exists()


def test_capture_spools_rather_than_wait_out_a_long_sqlite_lock(
    make_app: Any, tmp_path: Path
) -> None:
    app = _site(make_app)
    client = app.test_client()
    client.post("/form/callback", data={"name": "first"})  # the pool has its connection
    path = app.config["AMOCRM_DATABASE_URI"][len("sqlite:///") :]
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process's long write transaction
    try:
        response = client.post("/form/callback", data=FORM)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert response.status_code == 200
    assert [e.data["name"] for e in stored_events(app)] == ["first"]
    spool = (tmp_path / "instance0" / "amocrm-spool.jsonl").read_text().splitlines()
    assert json.loads(spool[0])["data"] == FORM
    # the pooled connection waits as long as ever for the other users of the pool
    with app.app_context(), get_state(app).engine.connect() as connection:
        wait = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
    assert wait == SQLITE_BUSY_MS
    # and once the lock is gone, the next form is stored
    assert client.post("/form/callback", data={"name": "after"}).status_code == 200
    assert [e.data["name"] for e in stored_events(app)] == ["first", "after"]


def test_forms_posted_at_once_from_many_threads_are_each_stored_once(
    make_app: Any,
) -> None:
    """Threads storing forms together each get a connection of their own: every
    form is stored once under its own id (or, when the write lock stays busy past
    capture's wait, spooled and loaded later), none lost, none twice."""
    app = _site(make_app, AMOCRM_DELIVERY="deferred")
    returned: list[tuple[int, str]] = []

    def post_forms(thread: int) -> None:
        with app.test_request_context():
            for n in range(10):
                form = {"name": f"{thread}-{n}", "phone": "+7 912 000-11-22"}
                event = app.extensions["amocrm"].extension.submit("callback", form)
                if event is not None:
                    returned.append((event.id, event.data["name"]))

    threads = [threading.Thread(target=post_forms, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with app.app_context():
        load_spool(get_state(app), app.instance_path)
    events = stored_events(app)
    assert sorted(e.data["name"] for e in events) == sorted(
        f"{t}-{n}" for t in range(6) for n in range(10)
    )
    by_id = {e.id: e for e in events}
    assert len(by_id) == 60
    # the id each capture returned is its own row's
    assert returned
    assert all(by_id[i].data["name"] == name for i, name in returned)


def test_the_hand_off_queues_a_job_rq_and_the_sweeper_know(
    make_app: Any, redis_url: str, redis_conn: redis.Redis
) -> None:
    app = _site(make_app, AMOCRM_DELIVERY="rq", AMOCRM_REDIS_URL=redis_url)
    app.test_client().post("/form/callback", data=FORM).close()
    [event] = stored_events(app)
    with app.app_context():
        state = get_state(app)
        jid = job_id(state, event.id)
        assert redis_conn.lrange("rq:queue:amocrm", 0, -1) == [jid.encode()]
        job = Job.fetch(jid, connection=redis_conn)
        assert job.get_status() == JobStatus.QUEUED
        assert job.func_name == "flask_amocrm.worker.jobs.deliver"
        assert job.args == (event.id,)
        assert job.origin == "amocrm"
        assert b"rq:queue:amocrm" in redis_conn.smembers("rq:queues")
        # the sweeper's enqueue sees the job waiting and adds no second one
        assert enqueue_event(state, event.id) is False
    assert redis_conn.llen("rq:queue:amocrm") == 1


def test_the_hand_off_survives_redis_going_away_and_coming_back(
    make_app: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis").start()
    port = server.port
    try:
        app = _site(make_app, AMOCRM_DELIVERY="rq", AMOCRM_REDIS_URL=f"{server.url}/0")
        client = app.test_client()
        client.post("/form/callback", data={"name": "before"}).close()
        server.stop()
        response = client.post("/form/callback", data={"name": "during"})
        assert response.status_code == 200
        response.close()
        assert "could not hand it on" in caplog.text
        server.start(port=port)
        client.post("/form/callback", data={"name": "after"}).close()
        events = {e.data["name"]: e for e in stored_events(app)}
        assert sorted(events) == ["after", "before", "during"]
        assert all(e.status == "pending" for e in events.values())
        conn = redis.Redis(port=port)
        with app.app_context():
            state = get_state(app)
            jobs = {name: job_id(state, e.id).encode() for name, e in events.items()}
            # Redis restarted empty: the job of 'before' went with it and 'during'
            # never had one; 'after' was queued at once, the sweeper queues the two
            assert conn.lrange("rq:queue:amocrm", 0, -1) == [jobs["after"]]
            assert sweep(state, include_fresh=True) == 2
        assert sorted(conn.lrange("rq:queue:amocrm", 0, -1)) == sorted(jobs.values())
        conn.close()
    finally:
        server.stop()
