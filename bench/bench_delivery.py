"""Delivery against the sandbox with its 7 requests/second limit and 100 ms latency.
Each result is a row: the figure, the ceiling of the same run (the sandbox's limit
over the API calls per event measured in it, and what the limiter's own margin
leaves of it) and the goal.

- API calls of the first event of a fresh install (goal <= 7), and of one event
  alone once the metadata is cached (goal <= 3);
- a burst of 1,000 events queued at once to 1 and to 4 running workers, timed from
  the queueing to the last delivery in the events table: a lead + contact + note +
  task rule (goal >= 105 events/s; batches of 250 events cost 5 ``leads/complex``
  calls of 50 and one call each of notes and tasks, so the ceiling is
  7 / 7 x 250 = 250) and a lead + contact rule (goal >= 300, ceiling 7 x 50 = 350);
  each with the busiest second the sandbox counted and its 429 answers (goal: <= 7,
  none);
- peak worker memory over a 10,000-event backlog;
- API calls per event with and without duplicate control, searching amoCRM
  (``bench_index.py`` measures the contact index).

Sizes can be lowered for a quick look: BENCH_BURST=200 BENCH_BACKLOG=1000;
BENCH_THREADS and BENCH_BATCH set AMOCRM_WORKER_THREADS and AMOCRM_BATCH_SIZE.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

import redis  # noqa: E402
import requests  # noqa: E402
from _common import (  # noqa: E402
    POSTGRES_URL,
    bench_redis,
    header,
    postgres_available,
    row,
    sandbox_process,
    search_path,
)
from sqlalchemy import create_engine, text  # noqa: E402

from flask_amocrm.amo.ratelimit import window_of  # noqa: E402

#: The sandbox's limit, requests a second (``--rate-limit``).
RATE = 7
BURST = int(os.environ.get("BENCH_BURST", "1000"))
#: The Redis of this run (:func:`_common.bench_redis`).
REDIS_URL = ""
DEDUP_BURST = int(os.environ.get("BENCH_DEDUP_BURST", "100"))
BACKLOG = int(os.environ.get("BENCH_BACKLOG", "10000"))
BIN = os.path.dirname(sys.executable)
RULES = {
    "forms": {
        "order": {
            "contact": {
                "name": "{{ data.name }}",
                "fields": {"PHONE": "{{ data.phone }}", "EMAIL": "{{ data.email }}"},
            },
            "lead": {
                "name": "Order {{ data.order }} from {{ data.name }}",
                "price": "{{ data.sum }}",
                "tags": ["site"],
                "note": "Comment: {{ data.comment }}",
            },
            "task": {
                "entity": "lead",
                "text": "Call {{ data.name }} back",
                "deadline": "+1h",
            },
        }
    }
}


def site_module(tmp: str, config: dict[str, Any]) -> None:
    with open(os.path.join(tmp, "bench_site.py"), "w") as fp:
        fp.write(
            textwrap.dedent(f"""
            from flask import Flask
            from flask_amocrm import AmoCRM

            app = Flask("bench_site", instance_path={tmp!r})
            app.config.update({config!r})
            AmoCRM(app)
        """)
        )


def env_for(tmp: str) -> dict[str, str]:
    return dict(os.environ, FLASK_APP="bench_site", PYTHONPATH=search_path(tmp))


def flask(tmp: str, *args: str) -> str:
    done = subprocess.run(
        [f"{BIN}/flask", *args],
        env=env_for(tmp),
        cwd=tmp,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def capture(tmp: str, n: int, start: int = 0) -> None:
    """Capture ``n`` orders in one process (as a CLI command would)."""
    code = textwrap.dedent(f"""
        from bench_site import app
        with app.app_context():
            amocrm = app.extensions["amocrm"].extension
            for i in range({start}, {start + n}):
                amocrm.submit("order", {{"name": f"Buyer {{i}}",
                    "phone": f"+7912{{i:07d}}", "email": f"b{{i}}@example.com",
                    "order": i, "sum": "1990.50", "comment": "leave at the door"}})
    """)
    subprocess.run([sys.executable, "-c", code], env=env_for(tmp), cwd=tmp, check=True)


def api_calls(sandbox: str) -> int:
    log = requests.get(sandbox + "/_sandbox/requests", timeout=10).json()
    return sum(1 for r in log if r["path"].startswith("/api/v4"))


def forget_calls(sandbox: str) -> None:
    requests.delete(sandbox + "/_sandbox/requests", json={}, timeout=10)


def leads(sandbox: str) -> int:
    return len(requests.get(sandbox + "/_sandbox/state", timeout=30).json()["leads"])


def fresh_database(tmp: str, name: str) -> str:
    if postgres_available():
        from flask_amocrm.models import metadata

        metadata.drop_all(create_engine(POSTGRES_URL))
        return POSTGRES_URL
    return f"sqlite:///{tmp}/{name}.sqlite3"


def config_for(sandbox: str, database: str, delivery: str) -> dict[str, Any]:
    return {
        "AMOCRM_BASE_URL": sandbox,
        "AMOCRM_TOKEN": "sandbox-token",
        "AMOCRM_REDIS_URL": REDIS_URL,
        "AMOCRM_DELIVERY": delivery,
        "AMOCRM_QUEUE": "bench",
        "AMOCRM_DATABASE_URI": database,
        "AMOCRM_RULES": RULES,
        "AMOCRM_LOG_REQUESTS": False,
        # duplicate control as it searches amoCRM; bench_index.py measures the index
        "AMOCRM_INDEX_INTERVAL": 0,
        "AMOCRM_WORKER_THREADS": int(os.environ.get("BENCH_THREADS", "3")),
        **(
            {"AMOCRM_BATCH_SIZE": int(os.environ["BENCH_BATCH"])}
            if os.environ.get("BENCH_BATCH")
            else {}
        ),
    }


def calls_per_event(sandbox: str, tmp: str) -> None:
    site_module(tmp, config_for(sandbox, fresh_database(tmp, "calls"), "deferred"))
    flask(tmp, "amocrm", "init-db")
    capture(tmp, 1)
    flask(tmp, "amocrm", "process", "--now")  # warms the metadata and marker field
    forget_calls(sandbox)
    capture(tmp, 1, start=1)
    flask(tmp, "amocrm", "process", "--now")
    calls = api_calls(sandbox)
    row(
        "API calls, one event alone (metadata warm)",
        str(calls),
        "-",
        "<= 3",
        calls <= 3,
    )


#: A lead and its contact only: one ``leads/complex`` call per 50 events.
LEAD_AND_CONTACT = {
    "forms": {
        "order": {
            "contact": RULES["forms"]["order"]["contact"],
            "lead": {
                key: value
                for key, value in RULES["forms"]["order"]["lead"].items()
                if key != "note"
            },
        }
    }
}


def worst_window(entries: list[dict[str, Any]]) -> int:
    """The most requests the sandbox counted (``received``) in any one second."""
    times = sorted(e["received"] for e in entries if e["status"] == 200)
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def workers_idle(tmp: str, count: int) -> bool:
    """Whether ``count`` workers listen on the bench queue, none of them busy."""
    from rq import Worker

    connection = redis.Redis.from_url(REDIS_URL)
    found = [w for w in Worker.all(connection=connection) if "bench" in w.queue_names()]
    return len(found) >= count and all(w.get_state() == "idle" for w in found)


def delivered_by(database: str, count: int, timeout: float) -> float | None:
    """Wait until ``count`` events are delivered; the time of the last delivery
    (seconds since the epoch, from the events table), or None on timeout."""
    from sqlalchemy import text

    engine = create_engine(database)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                done, last = conn.execute(
                    text(
                        "select count(*), max(delivered_at) from amocrm_events "
                        "where status = 'delivered'"
                    )
                ).one()
            if done >= count:
                if isinstance(last, str):  # SQLite
                    from datetime import datetime

                    last = datetime.fromisoformat(last)
                return float(last.replace(tzinfo=UTC).timestamp())
            time.sleep(0.2)
        return None
    finally:
        engine.dispose()


def burst(
    sandbox: str, tmp: str, workers: int, rules: dict[str, Any], label: str, goal: int
) -> None:
    """A burst of ``BURST`` events reaching ``workers`` running workers: stored,
    then queued at once (as the sweeper queues a backlog); timed from the queueing
    to the last delivery, as the events table records it."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    requests.post(sandbox + "/_sandbox/reset", json={}, timeout=10)
    database = fresh_database(tmp, f"burst{workers}")
    config = config_for(sandbox, database, "deferred")
    config["AMOCRM_RULES"] = rules
    site_module(tmp, config)
    flask(tmp, "amocrm", "init-db")
    flask(tmp, "amocrm", "sync")  # metadata once, as a running site has it
    capture(tmp, 1)  # the marker field is created once per account
    flask(tmp, "amocrm", "process", "--now")
    procs = [
        subprocess.Popen(
            [f"{BIN}/flask", "amocrm", "worker"],
            env=env_for(tmp),
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        for _ in range(200):
            if workers_idle(tmp, workers):
                break
            time.sleep(0.1)
        sweeper = ready_to_queue(tmp)
        capture(tmp, BURST, start=1)
        just_captured(database)
        forget_calls(sandbox)
        started = queue_all(sweeper)
        last = delivered_by(database, BURST + 1, timeout=300)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:  # never leave a worker on the queue
                proc.kill()
                proc.wait()
    assert last is not None, "the burst was not delivered in 5 minutes"
    entries = [
        r
        for r in requests.get(sandbox + "/_sandbox/requests", timeout=10).json()
        if r["path"].startswith("/api/v4")
    ]
    # A running worker's periodic sweep may still have queued a few events before
    # the queueing: the clock then starts at the first call.
    started = min([started, *(e["received"] for e in entries)])
    elapsed = last - started
    calls = len(entries)
    rate = BURST / elapsed
    ceiling = RATE * BURST / calls if calls else 0.0
    count, window, spacing = window_of(RATE)
    ours = count / window  # what the limiter grants: its margin for the network
    row(
        f"burst of {BURST}, {label}, {workers} worker(s), events/s",
        f"{rate:.0f} ({BURST} in {elapsed:.1f} s)",
        f"{ceiling:.0f} ({RATE} requests/s / {calls / BURST:.3f} calls per event); "
        f"{ours * BURST / calls:.0f} at the limiter's {ours:.2f} requests/s",
        f">= {goal}",
        rate >= goal,
    )
    received = sorted(e["received"] for e in entries)
    if received:
        # the calls' own spread beside the limiter's tightest schedule for as many:
        # what is left of the elapsed time is start-up (claiming, planning before
        # the first call) and the end (the last answer, saving it)
        tightest = ((calls - 1) // count) * window + ((calls - 1) % count) * spacing
        row(
            f"... {workers} worker(s), where the time went",
            f"first call +{received[0] - started:.2f} s after the queueing, last "
            f"+{received[-1] - started:.2f} s, last delivery +{elapsed:.2f} s",
            f"{calls} calls need {tightest:.2f} s at the limiter's pace",
            "",
            None,
        )
    rejected = sum(1 for e in entries if e["status"] == 429)
    busiest = worst_window(entries)
    row(
        f"burst of {BURST}, {label}, {workers} worker(s), the sandbox's busiest second",
        f"{busiest} requests, {rejected} answered 429",
        f"{RATE} (its limit)",
        "<= 7, no 429",
        busiest <= RATE and not rejected,
    )


def ready_to_queue(tmp: str) -> subprocess.Popen[str]:
    """A process that queues every stored event at once (the sweeper's pass over a
    backlog) when :func:`queue_all` says so. It is started, the app loaded
    and its connections opened first (as a running worker's sweeper has them), so the
    clock starts at the queueing, not at Python's start-up or the first connection's
    (which, with the check of the tables, took 0.25 s)."""
    code = textwrap.dedent("""
        import sys, time
        from bench_site import app
        from flask_amocrm.outbox import due_ids
        from flask_amocrm.state import get_state
        from flask_amocrm.worker.sweeper import sweep
        with app.app_context():
            state = get_state(app)
            state.redis().ping()
            due_ids(state, 1)
            print("ready", flush=True)
            sys.stdin.readline()
            began = time.time()
            sweep(state, include_fresh=True)
            print(began, flush=True)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env_for(tmp),
        cwd=tmp,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def just_captured(database: str) -> None:
    """Stamp the burst's events as captured now: a worker's periodic sweeper queues
    pending events older than ``outbox.GRACE`` (10 s), and capturing a thousand can
    take longer, so a part of the burst would be queued (and delivered) before the
    clock starts."""
    engine = create_engine(database)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE amocrm_events SET created_at = :now WHERE status = 'pending'"),
            {"now": datetime.now(UTC).replace(tzinfo=None)},
        )
    engine.dispose()


def queue_all(proc: subprocess.Popen[str]) -> float:
    """Queue every stored event at once; the time it began (seconds since the
    epoch)."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    began = float(proc.stdout.readline())
    proc.wait(60)
    return began


def fresh_install(sandbox: str, tmp: str) -> None:
    """Every API call of the first event of a new install: nothing cached yet (no
    metadata, no marker field), a new account."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    requests.post(sandbox + "/_sandbox/reset", json={}, timeout=10)
    site_module(tmp, config_for(sandbox, fresh_database(tmp, "fresh"), "deferred"))
    flask(tmp, "amocrm", "init-db")
    forget_calls(sandbox)
    capture(tmp, 1)
    flask(tmp, "amocrm", "process", "--now")
    log = requests.get(sandbox + "/_sandbox/requests", timeout=10).json()
    api = [f"{r['method']} {r['path']}" for r in log if r["path"].startswith("/api/v4")]
    row(
        "API calls, the first event of a fresh install",
        str(len(api)),
        "3 (the event's own)",
        "<= 7",
        len(api) <= 7,
    )
    print("  " + "; ".join(api))


def memory(sandbox: str, tmp: str) -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()
    requests.post(sandbox + "/_sandbox/config", json={"latency_ms": 0}, timeout=10)
    requests.post(sandbox + "/_sandbox/reset", json={}, timeout=10)
    site_module(tmp, config_for(sandbox, fresh_database(tmp, "memory"), "deferred"))
    flask(tmp, "amocrm", "init-db")
    capture(tmp, BACKLOG)
    # A wrapper whose only child is the worker, so its children's peak RSS is the
    # worker's own.
    wrapper = textwrap.dedent(f"""
        import resource, subprocess, sys
        out = subprocess.run([{BIN + "/flask"!r}, "amocrm", "process", "--now"],
                             capture_output=True, text=True, check=True).stdout
        print(out.strip())
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    """)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", wrapper],
        env=env_for(tmp),
        cwd=tmp,
        capture_output=True,
        text=True,
        check=True,
    )
    *lines, peak_kib = done.stdout.strip().splitlines()
    # 'flask amocrm process' prints one 'what: how many' line per count
    counts = dict(line.split(": ", 1) for line in lines if ": " in line)
    row(
        f"backlog of {BACKLOG}, one process, peak RSS",
        f"{int(peak_kib) / 1024:.0f} MiB ({counts.get('delivered', 0)} delivered "
        f"in {time.monotonic() - started:.0f} s)",
        "-",
        "-",
        None,
    )


def duplicate_control_calls(sandbox: str, tmp: str) -> None:
    """API calls per event of the same rule without and with duplicate control
    (contact by phone or e-mail, updated; the lead by name among the contact's open
    leads, reused), searching amoCRM for each person (``AMOCRM_INDEX_INTERVAL = 0``;
    ``bench_index.py`` measures the contact index, which meets the goals)."""
    dedup = json.loads(json.dumps(RULES))
    order = dedup["forms"]["order"]
    order["contact"]["duplicates"] = {"match": ["PHONE", "EMAIL"], "strategy": "update"}
    order["lead"]["duplicates"] = {
        "match": ["name"],
        "strategy": "use",
        "open_only": True,
    }

    def counted() -> tuple[int, int]:
        """API calls since calls were last forgotten, and how many were lookups."""
        log = requests.get(sandbox + "/_sandbox/requests", timeout=10).json()
        api = [r for r in log if r["path"].startswith("/api/v4")]
        return len(api), sum(1 for r in api if r["method"] == "GET")

    for label, rules in (("off", RULES), ("on, searching", dedup)):
        redis.Redis.from_url(REDIS_URL).flushdb()  # the marker field id goes too
        requests.post(sandbox + "/_sandbox/reset", json={}, timeout=10)
        config = config_for(sandbox, fresh_database(tmp, f"dedup-{label}"), "deferred")
        config["AMOCRM_RULES"] = rules
        site_module(tmp, config)
        flask(tmp, "amocrm", "init-db")
        capture(tmp, 1)
        flask(tmp, "amocrm", "process", "--now")  # metadata and marker field warm
        counts = []
        for start in (1, 1):  # a new visitor, then the same visitor again
            forget_calls(sandbox)
            capture(tmp, 1, start=start)
            flask(tmp, "amocrm", "process", "--now")
            counts.append(counted())
        forget_calls(sandbox)
        capture(tmp, DEDUP_BURST, start=10_000)
        flask(tmp, "amocrm", "process", "--now")
        calls, lookups = counted()
        assert leads(sandbox) == 3 + DEDUP_BURST - (rules is dedup), "not delivered"
        row(
            f"duplicate control {label}, one new visitor, API calls",
            f"{counts[0][0]} ({counts[0][1]} lookups)",
            f"{counts[0][0] - counts[0][1]} without lookups",
            "<= 3",
            counts[0][0] <= 3,
        )
        row(
            f"duplicate control {label}, the same visitor again, API calls",
            f"{counts[1][0]} ({counts[1][1]} lookups)",
            "-",
            "-",
            None,
        )
        row(
            f"duplicate control {label}, burst of {DEDUP_BURST} new visitors, "
            "calls per event",
            f"{calls / DEDUP_BURST:.2f} ({lookups / DEDUP_BURST:.2f} lookups)",
            "-",
            "<= 0.15",
            calls / DEDUP_BURST <= 0.15,
        )


def main() -> None:
    global REDIS_URL
    with (
        bench_redis() as REDIS_URL,
        tempfile.TemporaryDirectory(prefix="amocrm-bench-") as tmp,
        sandbox_process("--rate-limit", str(RATE), "--latency-ms", "100") as sandbox,
    ):
        print(
            f"sandbox: {RATE} requests/s, 100 ms latency; database: "
            f"{'PostgreSQL' if postgres_available() else 'SQLite'}"
        )
        header("delivery")
        fresh_install(sandbox, tmp)
        calls_per_event(sandbox, tmp)
        for workers in (1, 4):
            burst(sandbox, tmp, workers, RULES, "lead + contact + note + task", 105)
        for workers in (1, 4):
            burst(sandbox, tmp, workers, LEAD_AND_CONTACT, "lead + contact only", 300)
        memory(sandbox, tmp)
        duplicate_control_calls(sandbox, tmp)
        redis.Redis.from_url(REDIS_URL).flushdb()


if __name__ == "__main__":
    main()
