"""Fault tests: workers killed with SIGKILL in the middle of a batch, repeatedly.

Whatever moment the kill lands on (before a call, while amoCRM is creating the leads,
after it answered but before the ids were saved), every event must end delivered
exactly once: the sandbox must hold one lead per event, no more, no fewer.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from typing import Any

from flask import Flask

from flask_amocrm import Event
from flask_amocrm.models import utcnow
from tests.helpers.e2e import CALLBACK_NOTE_TASK
from tests.helpers.process import child_env, site_module

RULES = CALLBACK_NOTE_TASK


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fp:
                ppid = int(fp.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and its work horse (which runs in a process group of its
    own, so killing the worker's group would miss it)."""
    for pid in [*_descendants(process.pid), process.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def _site(tmp_path: Any, app: Flask) -> dict[str, str]:
    config = {k: v for k, v in app.config.items() if k.startswith("AMOCRM_")}
    return child_env(site_module(tmp_path, config), FLASK_APP="site_app")


def _worker(env: dict[str, str], cwd: str) -> subprocess.Popen[bytes]:
    flask = os.path.join(os.path.dirname(sys.executable), "flask")
    return subprocess.Popen(
        [flask, "amocrm", "worker", "--burst"],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _expire_leases(app: Flask) -> None:
    """What the passing of the lease time does to the events a dead worker held."""
    with app.app_context(), app.extensions["amocrm"].session() as session:
        for event in session.query(Event).filter(Event.status == "processing"):
            event.locked_until = utcnow() - timedelta(seconds=1)
        for event in session.query(Event).filter(Event.status == "retrying"):
            event.next_attempt_at = utcnow() - timedelta(seconds=1)
        for event in session.query(Event):
            event.created_at -= timedelta(minutes=1)  # past the sweeper's grace
        session.commit()


def test_workers_killed_mid_batch_deliver_every_event_exactly_once(
    make_app: Any, sandbox: Any, redis_conn: Any, redis_url: str, tmp_path: Any
) -> None:
    from flask_amocrm.state import get_state
    from flask_amocrm.worker.schedule import tick

    sandbox.config(rate_limit=0, latency_ms=120)  # each call takes a while
    app = make_app(
        AMOCRM_DELIVERY="rq",
        AMOCRM_REDIS_URL=redis_url,
        AMOCRM_RULES=RULES,
        AMOCRM_BATCH_SIZE=4,
        AMOCRM_RATE_LIMIT=50,
    )
    amocrm = app.extensions["amocrm"].extension
    with app.app_context():
        for i in range(40):
            amocrm.submit(
                "callback", {"name": f"Visitor {i:02d}", "phone": f"+7912{i:07d}"}
            )
    env = _site(tmp_path, app)
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        worker = _worker(env, str(tmp_path))
        time.sleep(rng.uniform(1.0, 2.0))
        if worker.poll() is None:
            _kill_tree(worker)
            kills += 1
        _expire_leases(app)
        with app.app_context():
            tick(get_state())  # the sweeper queues what the dead worker left
    assert kills >= 2, "the workers finished before they could be killed"

    for _ in range(3):  # let the survivors finish
        worker = _worker(env, str(tmp_path))
        assert worker.wait(timeout=120) == 0
        _expire_leases(app)
        with app.app_context():
            if not tick(get_state())["queued"]:
                break

    leads = Counter(lead["name"] for lead in sandbox.leads())
    assert len(leads) == 40
    assert set(leads.values()) == {1}, [n for n, c in leads.items() if c > 1]
    contacts = Counter(c["name"] for c in sandbox.contacts())
    assert set(contacts.values()) == {1}
    notes = Counter(n["entity_id"] for n in sandbox.notes("leads"))
    assert set(notes.values()) == {1} and len(notes) == 40
    tasks = Counter(t["entity_id"] for t in sandbox.tasks())
    assert set(tasks.values()) == {1} and len(tasks) == 40
    with app.app_context(), app.extensions["amocrm"].session() as session:
        statuses = Counter(e.status for e in session.query(Event))
    assert statuses == {"delivered": 40}
    with app.app_context(), app.extensions["amocrm"].session() as session:
        found = sum(1 for e in session.query(Event) if e.remote.get("found_again"))
        retried = sum(1 for e in session.query(Event) if e.attempts > 1)
    print(
        f"kills {kills}, events tried more than once {retried}, "
        f"leads found again by their marker {found}"
    )


def test_a_worker_outlives_redis_restarted_under_it(
    make_app: Any, sandbox: Any, tmp_path: Any
) -> None:
    """Redis goes away while the worker watches its work horse (RQ's own worker quits
    then), and comes back empty: the same ``flask amocrm worker`` delivers what is
    captured afterwards, without a supervisor starting it again."""
    from tests.helpers.redis_server import RedisServer

    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis").start()
    sandbox.config(rate_limit=0, latency_ms=1500)  # the horse is busy a while
    app = make_app(
        AMOCRM_DELIVERY="rq",
        AMOCRM_REDIS_URL=f"{server.url}/0",
        AMOCRM_RULES={"forms": {"callback": {"lead": {"name": "{{ data.name }}"}}}},
    )
    amocrm = app.extensions["amocrm"].extension
    env = _site(tmp_path, app)
    flask = os.path.join(os.path.dirname(sys.executable), "flask")
    worker = subprocess.Popen(
        [flask, "amocrm", "worker"],
        env=env,
        cwd=str(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with app.app_context():
            first = amocrm.submit("callback", {"name": "Before"})
        assert first is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with app.app_context():
                event = amocrm.get_event(first.id)
            if event is not None and event.status == "processing":
                break
            time.sleep(0.05)
        assert server.process is not None
        server.process.kill()  # no persistence: it comes back empty
        server.process.wait()
        time.sleep(10)  # down until after the horse ended and the worker looked
        server = RedisServer(tmp_path / "redis").start(port=server.port)
        time.sleep(3)
        with app.app_context():
            amocrm.submit("callback", {"name": "After"})
        deadline = time.monotonic() + 90
        names: set[str] = set()
        while time.monotonic() < deadline and "After" not in names:
            names = {lead["name"] for lead in sandbox.leads()}
            time.sleep(0.5)
        assert worker.poll() is None, "the worker exited when Redis restarted"
        assert names == {"Before", "After"}
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            _kill_tree(worker)
        server.stop()


def test_an_idle_worker_stops_when_asked(
    make_app: Any, sandbox: Any, redis_conn: Any, redis_url: str, tmp_path: Any
) -> None:
    """SIGTERM (``systemctl stop``) stops a worker that has nothing to do at once:
    waiting for Redis to come back is for a worker whose Redis went away."""
    from rq import Worker

    from tests.helpers.process import start_worker, stop

    app = make_app(AMOCRM_DELIVERY="rq", AMOCRM_REDIS_URL=redis_url)
    config = {k: v for k, v in app.config.items() if k.startswith("AMOCRM_")}
    worker = start_worker(tmp_path, config)
    deadline = time.monotonic() + 60
    while not Worker.all(connection=redis_conn) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert Worker.all(connection=redis_conn), "the worker did not start"
    stop(worker)  # SIGTERM, then SIGKILL after 20 s
    assert worker.returncode == 0
