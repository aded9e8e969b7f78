"""A backlog: one job delivers batch after batch, several at once; workers and their
threads take different events in full batches and share amoCRM's 7 requests a
second."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from flask_amocrm import Event
from flask_amocrm.outbox import claim_due
from flask_amocrm.state import get_state
from tests.helpers.client import busiest_second
from tests.helpers.e2e import CALLBACK_NOTE_TASK
from tests.helpers.process import FLASK, child_env, site_module

RULES = CALLBACK_NOTE_TASK


def _submit(app: Flask, n: int) -> None:
    amocrm = app.extensions["amocrm"].extension
    with app.app_context():
        for i in range(n):
            amocrm.submit(
                "callback", {"name": f"Visitor {i:03d}", "phone": f"+7912{i:07d}"}
            )


def _rq_app(make_app: Any, redis_url: str, **config: Any) -> Flask:
    """A site queueing its events (unless ``config`` says otherwise), delivered 5 a
    batch, 3 batches at once."""
    defaults = {
        "AMOCRM_DELIVERY": "rq",
        "AMOCRM_REDIS_URL": redis_url,
        "AMOCRM_RULES": RULES,
        "AMOCRM_BATCH_SIZE": 5,
        "AMOCRM_WORKER_THREADS": 3,
    }
    app: Flask = make_app(**{**defaults, **config})
    return app


def _statuses(app: Flask) -> Counter[str]:
    with app.app_context(), app.extensions["amocrm"].session() as session:
        return Counter(e.status for e in session.query(Event))


def _complex_sizes(sandbox: Any) -> list[int]:
    return [
        len(r["body"])
        for r in sandbox.requests()
        if r["path"] == "/api/v4/leads/complex" and r["status"] == 200
    ]


def test_one_job_drains_the_backlog_in_full_batches(
    make_app: Any, sandbox: Any, redis_conn: Any, redis_url: str
) -> None:
    from rq.registry import FinishedJobRegistry

    from flask_amocrm.worker import AmoWorker
    from flask_amocrm.worker.queue import get_queue

    sandbox.config(rate_limit=0, latency_ms=30)
    app = _rq_app(make_app, redis_url, AMOCRM_RATE_LIMIT=50)
    _submit(app, 40)  # a job each
    with app.app_context():
        queue = get_queue(get_state(), for_worker=True)
        assert queue.count == 40
        AmoWorker([queue], apps=[app], connection=queue.connection).work(
            burst=True, with_scheduler=False
        )
        finished = FinishedJobRegistry(queue=queue).get_job_ids()

    assert _statuses(app) == {"delivered": 40}
    leads = Counter(lead["name"] for lead in sandbox.leads())
    assert len(leads) == 40 and set(leads.values()) == {1}
    # The first job took every batch; the jobs of the events it took were dropped
    # unrun, and no batch was split between its threads.
    assert len(finished) == 1, finished
    assert queue.count == 0
    assert _complex_sizes(sandbox) == [5] * 8


def test_workers_and_their_threads_share_the_limit_and_deliver_once(
    make_app: Any, sandbox: Any, redis_conn: Any, redis_url: str, tmp_path: Any
) -> None:
    sandbox.config(rate_limit=7, latency_ms=50)
    app = _rq_app(make_app, redis_url, AMOCRM_LOG_REQUESTS=False)
    _submit(app, 60)
    config = {k: v for k, v in app.config.items() if k.startswith("AMOCRM_")}
    env = child_env(site_module(tmp_path, config), FLASK_APP="site_app")
    workers = [
        subprocess.Popen(
            [FLASK, "amocrm", "worker", "--burst"],
            env=env,
            cwd=str(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    for worker in workers:
        assert worker.wait(timeout=120) == 0

    assert _statuses(app) == {"delivered": 60}
    leads = Counter(lead["name"] for lead in sandbox.leads())
    assert len(leads) == 60 and set(leads.values()) == {1}
    assert len(sandbox.tasks()) == 60
    log = [r for r in sandbox.requests() if r["path"].startswith("/api/v4")]
    busiest = busiest_second(log)
    print(f"2 workers x 3 threads, {len(log)} requests: at most {busiest} a second")
    assert busiest <= 7


def test_threads_claiming_at_once_take_different_events(
    make_app: Any, database_uri: str
) -> None:
    app = make_app(AMOCRM_DATABASE_URI=database_uri)
    _submit(app, 60)
    taken: list[list[int]] = []
    lock = threading.Lock()

    def claimer() -> None:
        with app.app_context():
            state = get_state()
            while batch := claim_due(state, 7):
                with lock:
                    taken.append(batch)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    ids = [i for batch in taken for i in batch]
    assert len(ids) == len(set(ids)) == 60
    assert all(batch == sorted(batch) for batch in taken)
    with app.app_context(), app.extensions["amocrm"].session() as session:
        events = list(session.query(Event))
    assert {e.status for e in events} == {"processing"}
    assert {e.attempts for e in events} == {1}


def test_a_job_stops_draining_when_amocrm_takes_nothing(
    make_app: Any, sandbox: Any, redis_conn: Any, redis_url: str
) -> None:
    from flask_amocrm.worker.jobs import deliver

    app = _rq_app(
        make_app,
        redis_url,
        AMOCRM_DELIVERY="deferred",
        AMOCRM_WORKER_THREADS=1,
        AMOCRM_RATE_LIMIT=50,
    )
    _submit(app, 20)
    with app.app_context(), app.extensions["amocrm"].session() as session:
        first = min(e.id for e in session.query(Event))
    sandbox.faults(status=503, seconds=30)
    with app.app_context():
        assert deliver(first) == "retrying"
    sandbox.faults(clear=True)
    # amoCRM is down: the job tried its own batch and left the rest to their jobs.
    assert _statuses(app) == {"retrying": 5, "pending": 15}


def test_an_in_memory_database_is_delivered_from_one_thread(
    make_app: Any, sandbox: Any
) -> None:
    """A site's own tests often run on Flask-SQLAlchemy's in-memory SQLite: one
    connection, which threads cannot share."""
    from flask_sqlalchemy import SQLAlchemy

    from flask_amocrm.testing import deliver_pending

    db = SQLAlchemy()
    app = make_app(
        db=db,
        SQLALCHEMY_DATABASE_URI="sqlite://",
        AMOCRM_RULES=RULES,
        AMOCRM_BATCH_SIZE=5,
        AMOCRM_RATE_LIMIT=50,
    )
    db.init_app(app)
    with app.app_context():
        db.create_all()
    _submit(app, 12)
    assert deliver_pending(app).get("delivered") == 12
    assert _statuses(app) == {"delivered": 12}
    assert len(sandbox.leads()) == 12


def test_a_run_delivers_what_was_due_when_it_began(make_app: Any, sandbox: Any) -> None:
    """``flask amocrm process`` (and ``deliver_pending``) takes the events due when
    it began: what comes in meanwhile waits for the next run, so a busy site's run
    ends."""
    from flask_amocrm import event_delivered
    from flask_amocrm.testing import deliver_pending

    app = make_app(AMOCRM_RULES=RULES, AMOCRM_BATCH_SIZE=5, AMOCRM_RATE_LIMIT=50)
    _submit(app, 10)
    more = iter(range(1000, 1040))

    def another_comes_in(sender: Flask, event: Event) -> None:
        number = next(more, None)
        if number is not None:  # every delivery brings a new event, 40 in all
            sender.extensions["amocrm"].extension.submit(
                "callback", {"name": f"Later {number}", "phone": f"+7913{number:07d}"}
            )

    with event_delivered.connected_to(another_comes_in, sender=app):
        assert deliver_pending(app).get("delivered") == 10
    assert _statuses(app) == {"delivered": 10, "pending": 10}
    assert deliver_pending(app).get("delivered") == 10  # the next run takes those


def test_a_worker_asked_to_stop_takes_no_new_batch(
    make_app: Any, sandbox: Any, redis_conn: Any, redis_url: str, tmp_path: Any
) -> None:
    """SIGTERM is RQ's warm shutdown: the job in hand finishes its batches and
    takes no new one, so the worker stops in seconds, not after the backlog."""
    import time

    from tests.helpers.process import start_worker, stop

    sandbox.config(rate_limit=0, latency_ms=150)
    app = _rq_app(make_app, redis_url, AMOCRM_WORKER_THREADS=1, AMOCRM_RATE_LIMIT=50)
    _submit(app, 100)  # 20 batches of three calls: several seconds
    config = {k: v for k, v in app.config.items() if k.startswith("AMOCRM_")}
    worker = start_worker(tmp_path, config)
    deadline = time.monotonic() + 60
    while _statuses(app)["delivered"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _statuses(app)["delivered"], "the worker delivered nothing"
    stop(worker)  # SIGTERM, then SIGKILL if it has not stopped within 20 s
    assert worker.returncode == 0
    statuses = _statuses(app)
    assert statuses["pending"] > 0, statuses  # it stopped before the backlog
    assert "processing" not in statuses, statuses  # every batch taken was finished
    assert len(sandbox.leads()) == statuses["delivered"]


def test_worker_threads_are_bounded(make_app: Any) -> None:
    with pytest.raises(RuntimeError, match="AMOCRM_WORKER_THREADS must be at most 10"):
        make_app(AMOCRM_WORKER_THREADS=11)


def test_a_batch_slower_than_its_lease_keeps_its_events(
    make_app: Any, sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch can outlast the claim's lease (a 429 storm slows every request down
    for minutes): its worker renews the lease while it sends, so another worker
    never takes the events over and creates their leads a second time."""
    from flask_amocrm import outbox
    from flask_amocrm.worker.deliver import deliver_due

    monkeypatch.setattr(outbox, "LEASE", timedelta(seconds=2))
    sandbox.config(rate_limit=0, latency_ms=1000)  # the batch takes 5 s or more
    app = make_app(AMOCRM_RULES=RULES, AMOCRM_BATCH_SIZE=5, AMOCRM_RATE_LIMIT=50)
    _submit(app, 5)
    first: dict[int, str] = {}

    def worker() -> None:
        with app.app_context():
            first.update(deliver_due(5))

    sending = threading.Thread(target=worker)
    sending.start()
    time.sleep(2.6)  # the first claim's lease would have run out
    with app.app_context():
        taken = deliver_due(5)  # another worker
    sending.join()
    assert taken == {}
    assert sorted(first.values()) == ["delivered"] * 5
    names = Counter(lead["name"] for lead in sandbox.leads())
    assert len(names) == 5 and set(names.values()) == {1}, names


def test_the_first_batch_of_a_run_is_one_call_of_leads(
    make_app: Any, sandbox: Any
) -> None:
    """A run's first batch is 50 events, so its first request leaves once those are
    planned; the batches after it are full (their notes go 250 a call)."""
    from flask_amocrm.testing import deliver_pending

    sandbox.config(rate_limit=0)
    app = make_app(
        AMOCRM_RULES=RULES,
        AMOCRM_BATCH_SIZE=250,
        AMOCRM_WORKER_THREADS=1,
        AMOCRM_RATE_LIMIT=50,
    )
    _submit(app, 300)
    assert deliver_pending(app).get("delivered") == 300
    notes = [
        len(r["body"])
        for r in sandbox.requests()
        if r["path"] == "/api/v4/leads/notes" and r["method"] == "POST"
    ]
    assert notes == [50, 250]
    assert _complex_sizes(sandbox) == [50] * 6
