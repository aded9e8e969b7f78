"""``make demo``: the main job end to end, on the embedded defaults.

Starts the bundled amoCRM sandbox, the example site and an RQ worker, submits sample
forms over HTTP (one arriving with UTM tags), waits for delivery, prints what the
sandbox holds; then the way back: a customer orders a sofa, the site registers its
webhook with amoCRM (``flask amocrm webhooks install``), a manager wins the deal in
the sandbox and the order turns ``paid``. It stops everything and exits 0 only if
every form became a lead and the order was paid. Without Redis it says so and
delivers inline instead.

The addresses it prints stop working when it exits; ``--keep`` (``make demo KEEP=1``)
keeps the servers up until Ctrl-C, to try the site in a browser. It removes the Redis
keys it made (the queue's, the workers', the extension's) before it exits.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit

import requests

BIN = os.path.dirname(sys.executable)
TOKEN = "demo-token"
FORMS = [
    (
        "/?utm_source=yandex&utm_medium=cpc&utm_campaign=sofas",
        {
            "name": "Anna Petrova",
            "phone": "+7 912 345-67-89",
            "email": "anna@example.com",
        },
    ),
    ("/", {"name": "Boris Ivanov", "phone": "8 (916) 000-11-22", "email": ""}),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_available(url: str) -> bool:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return False
    return True


def wait_for(url: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise SystemExit(f"demo: {url} did not come up")


#: The pages the first visitor looks at before the form (the path in the lead's
#: note), and the analytics cookies their browser carries (the ad marks).
BROWSING = ["/order", "/thanks"]
ANALYTICS = {"_ga": "GA1.2.1234567890.1764650000", "_fbp": "fb.1.1764650000.42"}


def submit(
    site: str,
    path: str,
    fields: dict[str, str],
    form: str = "/",
    browse: tuple[str, ...] = (),
) -> str:
    """Fill in the form at ``form`` (opened via ``path``, then ``browse``, then the
    form page again); where it redirects to."""
    session = requests.Session()
    page = session.get(site + path, timeout=10)
    if browse:
        for name, value in ANALYTICS.items():
            session.cookies.set(name, value)
        for extra in browse:
            session.get(site + extra, timeout=10)
        page = session.get(site + form, timeout=10)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text)
    if not token:
        raise SystemExit("demo: the landing page has no CSRF token")
    answer = session.post(
        site + form,
        data={"csrf_token": token.group(1), **fields},
        timeout=10,
        allow_redirects=False,
    )
    if answer.status_code != 302:
        raise SystemExit(f"demo: the form answered {answer.status_code}")
    print(f"  submitted {fields['name']!r} via {path}")
    return str(answer.headers["Location"])


def order_paid(sandbox: str, site: str, env: dict[str, str]) -> bool:
    """The way back: an order, its deal won in amoCRM, the order paid."""
    print("demo: a customer orders a sofa")
    where = submit(
        site, "/order", {"name": "Vera Sokolova", "phone": "+7 903 111-22-33"}, "/order"
    )
    status_url = site + urlsplit(where).path  # Location may be relative
    order = requests.get(status_url, timeout=5).json()
    print(f"  order {order['number']}: {order['product']}, {order['status']}")
    lead = None
    deadline = time.monotonic() + 30
    while lead is None and time.monotonic() < deadline:
        state = requests.get(sandbox + "/_sandbox/state", timeout=5).json()
        lead = next(
            (
                x
                for x in state["leads"]
                if x["name"].startswith(f"Order {order['number']}")
            ),
            None,
        )
        time.sleep(0.2)
    if lead is None:
        print("demo: FAILED: the order did not become a lead")
        return False
    print(f"  it became lead #{lead['id']} {lead['name']!r}")
    print("demo: the site registers its webhook with amoCRM")
    installed = subprocess.run(
        [f"{BIN}/flask", "amocrm", "webhooks", "install", "--url", site],
        env=env,
        capture_output=True,
        text=True,
    )
    print("  " + installed.stdout.strip().replace("\n", "\n  "))
    if installed.returncode:
        print(f"demo: FAILED: {installed.stderr.strip()}")
        return False
    print(f"demo: a manager moves lead #{lead['id']} to won (142) in amoCRM")
    requests.post(
        f"{sandbox}/_sandbox/leads/{lead['id']}/status",
        json={"status_id": 142},
        timeout=5,
    ).raise_for_status()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        order = requests.get(status_url, timeout=5).json()
        if order["status"] == "paid":
            break
        time.sleep(0.2)
    print(f"  order {order['number']}: {order['status']}")
    if order["status"] != "paid":
        print("demo: FAILED: the order was not paid")
        return False
    print("demo: amoCRM's webhook reached the site; the order is paid.")
    return True


def show(state: dict[str, Any]) -> None:
    contacts = {c["id"]: c for c in state["contacts"]}
    for lead in state["leads"]:
        fields = {
            f.get("field_code") or f.get("field_name"): f["values"][0]["value"]
            for f in lead.get("custom_fields_values") or []
        }
        tags = [t["name"] for t in lead.get("_embedded", {}).get("tags", [])]
        print(
            f"  lead #{lead['id']}: {lead['name']}  tags={tags}"
            f"  UTM_SOURCE={fields.get('UTM_SOURCE', '-')}"
            f"  GCLIENTID={fields.get('GCLIENTID', '-')}"
        )
        for link in lead.get("_embedded", {}).get("contacts", []):
            contact = contacts.get(link["id"], {})
            values = [
                v["value"]
                for f in contact.get("custom_fields_values") or []
                for v in f["values"]
            ]
            print(f"      contact #{link['id']}: {contact.get('name')}  {values}")
        for note in state["notes"]["leads"]:
            if note.get("entity_id") == lead["id"]:
                text = (note.get("params") or {}).get("text", "")
                lines = [line for line in text.splitlines() if line.strip()]
                print("      note: " + " | ".join(lines))
        for task in state["tasks"]:
            if task.get("entity_id") == lead["id"]:
                print(f"      task: {task.get('text')}")


def demo_keys(redis_url: str) -> set[bytes]:
    """The keys the demo may make: RQ's and the extension's (``amocrm:``)."""
    import redis

    conn = redis.Redis.from_url(redis_url)
    return {k for pattern in ("rq:*", "amocrm:*") for k in conn.scan_iter(pattern)}


def clean_redis(redis_url: str, before: set[bytes], queue: str) -> None:
    """Delete the keys the demo made, and its queue from RQ's lists."""
    import redis

    conn = redis.Redis.from_url(redis_url)
    made = demo_keys(redis_url) - before
    if made:
        conn.delete(*made)
    conn.srem("rq:queues", f"rq:queue:{queue}")


def wait_for_ctrl_c(sandbox: str, site: str) -> None:
    print(
        f"demo: the servers stay up until Ctrl-C: open {site} in a browser; "
        f"the sandbox's account is at {sandbox}"
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print()


#: The metrics the demo prints (docs/operations.md lists them all).
SHOWN_METRICS = (
    "amocrm_events_total",
    "amocrm_api_calls_total",
    "amocrm_delivery_delay_seconds_count",
)


def show_operations(site: str) -> None:
    """What a monitor sees: the health endpoint and a few metrics."""
    health = requests.get(site + "/amocrm/health", timeout=5)
    print(
        f"demo: a monitor asks GET /amocrm/health: {health.status_code} "
        f"{health.json()['status']}; GET /amocrm/metrics says"
    )
    for line in requests.get(site + "/amocrm/metrics", timeout=5).text.splitlines():
        if line.startswith(SHOWN_METRICS):
            print("  " + line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the sandbox, the site and the worker up until Ctrl-C",
    )
    keep = parser.parse_args(argv).keep
    redis_url = os.environ.get("DEMO_REDIS_URL", "redis://127.0.0.1:6379/13")
    use_rq = redis_available(redis_url)
    if not use_rq:
        print(
            f"demo: no Redis answers at {redis_url}; delivering inline instead "
            "(install redis-server to see the RQ worker)"
        )
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="amocrm-demo-") as tmp:
        sandbox_port, site_port = free_port(), free_port()
        sandbox = f"http://127.0.0.1:{sandbox_port}"
        site = f"http://127.0.0.1:{site_port}"
        env = dict(
            os.environ,
            AMOCRM_BASE_URL=sandbox,
            AMOCRM_TOKEN=TOKEN,
            AMOCRM_DELIVERY="rq" if use_rq else "inline",
            AMOCRM_QUEUE="amocrm-demo",
            EXAMPLE_INSTANCE_PATH=tmp,
            FLASK_APP="example_app.site",
            AMOCRM_WEBHOOK_SECRET=secrets.token_urlsafe(24),
            AMOCRM_HEALTH_PATH="/amocrm/health",
            AMOCRM_METRICS_PATH="/amocrm/metrics",
        )
        before: set[bytes] = set()
        if use_rq:
            env["AMOCRM_REDIS_URL"] = redis_url
            import redis

            redis.Redis.from_url(redis_url).delete("rq:queue:amocrm-demo")
            before = demo_keys(redis_url)
        try:
            print(f"demo: amoCRM sandbox at {sandbox}")
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "flask_amocrm.sandbox",
                        "--port",
                        str(sandbox_port),
                        "--token",
                        TOKEN,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_for(sandbox + "/_sandbox/state")
            print(f"demo: example site at {site}")
            processes.append(
                subprocess.Popen(
                    [f"{BIN}/flask", "run", "--port", str(site_port)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_for(site + "/thanks")
            if use_rq:
                print("demo: RQ worker on queue amocrm-demo")
                processes.append(
                    subprocess.Popen(
                        [f"{BIN}/flask", "amocrm", "worker", "--with-scheduler"],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            print("demo: a visitor fills in the callback form")
            for i, (path, fields) in enumerate(FORMS):
                submit(site, path, fields, browse=tuple(BROWSING) if i == 0 else ())
            deadline = time.monotonic() + 60
            state: dict[str, Any] = {"leads": [], "tasks": []}
            while time.monotonic() < deadline:
                state = requests.get(sandbox + "/_sandbox/state", timeout=5).json()
                # the task is the last step of each event's delivery
                if len(state["leads"]) >= len(FORMS) and len(state["tasks"]) >= len(
                    FORMS
                ):
                    break
                time.sleep(0.3)
            print("demo: the sandbox amoCRM now holds")
            show(state)
            if len(state["leads"]) != len(FORMS) or len(state["tasks"]) != len(FORMS):
                print(
                    f"demo: FAILED: {len(state['leads'])} of {len(FORMS)} leads "
                    "arrived. The events say:"
                )
                subprocess.run([f"{BIN}/flask", "amocrm", "status"], env=env)
                subprocess.run([f"{BIN}/flask", "amocrm", "check"], env=env)
                return 1
            print("demo: every form became a lead with its contact, note and task.")
            show_operations(site)
            if not order_paid(sandbox, site, env):
                subprocess.run(
                    [f"{BIN}/flask", "amocrm", "webhooks", "status"], env=env
                )
                return 1
            if keep:
                wait_for_ctrl_c(sandbox, site)
            return 0
        finally:
            for process in reversed(processes):
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
            if use_rq:
                clean_redis(redis_url, before, "amocrm-demo")
            print(
                "demo: stopped: the addresses above no longer answer (they stop "
                "working when the demo exits)."
                + ("" if keep else " To keep them up until Ctrl-C: make demo KEEP=1")
            )


if __name__ == "__main__":
    sys.exit(main())
