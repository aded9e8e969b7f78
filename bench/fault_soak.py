"""The soak: a small cluster on this machine, form events for a compressed "hour",
and faults while they flow. What must hold: nothing lost, nothing doubled, the rate
limit shared, one alert mail per outage and one per recovery.

The cluster: two "machines", each a network namespace joined to this one by a bridge
(``ip netns``, root only) or, where that cannot be made, a process group with its own
environment (the output says which); each runs gunicorn serving a site (2 web
processes) and 2 ``flask amocrm worker`` processes, with its own instance folder (the
capture spool is per machine). One PostgreSQL cluster and one ``redis-server`` of the
run's own (never the machine's shared ones: both are restarted), the sandbox with its
7 requests/second limit and 100 ms latency, OAuth tokens, and an SMTP sink for the
alert mails (``fault_outage.py``'s).

The load: ``--events`` forms (default 10,000; ``--events 100000`` for the long run)
over ``--minutes`` of bursts and quiet, a share of them (``--dedup-share``) on a form
whose rule has duplicate control, half of those from returning visitors. Each form
carries an order number; the lead's name carries it into amoCRM.

The faults, at fixed points of the schedule: RQ workers killed with SIGKILL (their work
horse too; restarted as a supervisor would), gunicorn's web processes killed with
SIGKILL (gunicorn starts others), Redis restarted empty, PostgreSQL restarted
(``pg_ctl restart -m immediate``: a crash and its recovery), the sandbox answering 503
for a minute, a 429 storm, and the access token expiring at the sandbox while the site
believes it good for a day (so workers get 401 and one of them refreshes it).

The table at the end is counted from the sandbox's own state (leads by order number),
its request log (the worst one-second window), the event rows (capture to delivery)
and the SMTP sink. ``--lease`` shortens the claim lease (15 minutes) for the run so a
killed worker's events come back within it; the output says so.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import random
import re
import shutil
import signal
import socketserver
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil  # noqa: E402
import requests  # noqa: E402
from _common import free_port, percentile, sandbox_process  # noqa: E402
from bench_delivery import RULES as DELIVERY_RULES  # noqa: E402
from fault_outage import MAILS, SMTPSink  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from tests.helpers.process import ROOT  # noqa: E402
from tests.helpers.redis_server import RedisServer  # noqa: E402

BIN = os.path.dirname(sys.executable)
#: The bridge's address on this side: PostgreSQL, Redis, the sandbox and the SMTP
#: sink listen here (and on 127.0.0.1) so both machines reach them at one address.
#: (Names and subnet carry this run's number: two runs on one machine keep apart.)
RUN = os.getpid() % 250 + 1
HOST_IP = f"10.231.{RUN}.1"
BRIDGE = f"soakbr{RUN}"
NAMESPACES = (f"soak{RUN}-a", f"soak{RUN}-b")
RATE = 7
LATENCY_MS = 100
OUTAGE_SECONDS = 60
STORM_SECONDS = 30
WEB_PER_MACHINE = 2
WORKERS_PER_MACHINE = 2

SITE = '''
"""The soak's site: one form view, the extension, the settings from the environment."""
import json
import os
from datetime import timedelta

from flask import Flask, request

import flask_amocrm.outbox
from flask_amocrm import AmoCRM

# The run's claim lease (``--lease``): a killed worker's events come back after it.
flask_amocrm.outbox.LEASE = timedelta(seconds=int(os.environ["SOAK_LEASE"]))

app = Flask("soak_site", instance_path=os.environ["SOAK_INSTANCE"])
app.config.update(json.loads(os.environ["SOAK_CONFIG"]))
amocrm = AmoCRM(app)


@app.post("/order")
def order():
    data = request.form.to_dict()
    form = data.pop("form", "order")
    event = amocrm.submit(form, data)
    # None: the database refused it and it was spooled on this machine
    return {"event": None if event is None else event.id}
'''

#: ``order``: bench_delivery.py's rule (contact, lead with a note, task); the lead's
#: name carries the order number. ``callback``: duplicate control by phone.
RULES: dict[str, Any] = {
    "forms": {
        "order": DELIVERY_RULES["forms"]["order"],
        "callback": {
            "contact": {
                "name": "{{ data.name }}",
                "fields": {"PHONE": "{{ data.phone }}"},
                "duplicates": {"match": ["PHONE"], "strategy": "update"},
            },
            "lead": {
                "name": "Order {{ data.order }} from {{ data.name }}",
                "tags": ["callback"],
            },
        },
    }
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the services --------------------------------------------------------------------


def _as_postgres(command: list[str]) -> list[str]:
    """Run a PostgreSQL tool as ``postgres`` when we are root (it refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def postgres_server() -> str | None:
    """Debian's ``pg_ctl`` of the newest PostgreSQL installed, if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return found[-1] if found else None


class Postgres:
    """A private PostgreSQL cluster in ``directory`` on a free port."""

    def __init__(self, directory: Path, listen: str) -> None:
        self.bin = os.path.dirname(postgres_server() or "")
        self.data = directory / "pgdata"
        self.port = free_port()
        self.listen = listen

    def start(self) -> Postgres:
        self.data.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.data.parent, "postgres")
            shutil.chown(self.data, "postgres")
        subprocess.run(
            _as_postgres(
                [f"{self.bin}/initdb", "-D", str(self.data), "-U", "postgres"]
                + ["--auth=trust", "-E", "UTF8", "--no-instructions"]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        conf = textwrap.dedent(f"""
            port = {self.port}
            listen_addresses = '{self.listen}'
            unix_socket_directories = '{self.data.parent}'
            max_connections = 300
            shared_buffers = 128MB
        """)
        for name, extra in (
            ("postgresql.conf", conf),
            ("pg_hba.conf", "host all all 10.231.0.0/16 trust\n"),
        ):
            with open(self.data / name, "a") as fp:
                fp.write(extra)
        self._ctl("start")
        return self

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres(
                [f"{self.bin}/pg_ctl", "-D", str(self.data), "-w", "-t", "60"]
                + ["-l", str(self.data.parent / "postgres.log"), *args]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def restart(self) -> None:
        """A crash (``immediate``: no checkpoint) and the recovery after it."""
        self._ctl("-m", "immediate", "restart")

    def stop(self) -> None:
        with suppress(subprocess.CalledProcessError):
            self._ctl("-m", "fast", "stop")

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def url(self, host: str) -> str:
        return f"postgresql+psycopg://postgres@{host}:{self.port}/postgres"


class Redis:
    """Our own ``redis-server`` (the tests' helper), restarted empty on its port."""

    def __init__(self, directory: Path, bind: str) -> None:
        self.directory = directory
        self.bind = bind
        self.server = RedisServer(directory, bind=bind).start()
        self.port = self.server.port

    def restart_empty(self, down: float) -> None:
        assert self.server.process is not None
        self.server.process.kill()  # no persistence: it comes back empty
        self.server.process.wait()
        time.sleep(down)
        self.server = RedisServer(self.directory, bind=self.bind).start(port=self.port)

    def pid(self) -> int | None:
        return self.server.process.pid if self.server.process else None


# -- the two machines ------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _drop_namespaces() -> None:
    for name in NAMESPACES:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{name}-h"], capture_output=True)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


def make_namespaces() -> list[tuple[str, str]] | None:
    """Two network namespaces on a bridge with this side at :data:`HOST_IP`; their
    names and addresses, or ``None`` when they cannot be made here."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        return None
    _drop_namespaces()
    try:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{HOST_IP}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        made = []
        for n, name in enumerate(NAMESPACES, start=2):
            address = f"10.231.{RUN}.{n}"
            _ip("netns", "add", name)
            _ip("link", "add", f"{name}-h", "type", "veth", "peer", "name", f"{name}-n")
            _ip("link", "set", f"{name}-n", "netns", name)
            _ip("-n", name, "link", "set", f"{name}-n", "name", "eth0")
            _ip("link", "set", f"{name}-h", "master", BRIDGE)
            _ip("link", "set", f"{name}-h", "up")
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")
            made.append((name, address))
        return made
    except (subprocess.CalledProcessError, OSError):
        _drop_namespaces()
        return None


@dataclass
class Machine:
    name: str
    netns: str | None
    #: Where its web processes answer, seen from here.
    web_url: str
    env: dict[str, str]
    web_port: int
    gunicorn: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, *args: str) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, *args]

    def popen(self, *args: str, log_name: str) -> subprocess.Popen[bytes]:
        logfile = open(Path(self.env["SOAK_INSTANCE"]).parent / log_name, "ab")  # noqa: SIM115
        return subprocess.Popen(
            self.command(*args),
            env=self.env,
            cwd=self.env["SOAK_SITE_DIR"],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as one
        )

    def start_web(self) -> None:
        self.gunicorn = self.popen(
            f"{BIN}/gunicorn",
            "-w",
            str(WEB_PER_MACHINE),
            "-b",
            f"0.0.0.0:{self.web_port}",
            "--graceful-timeout",
            "5",
            "soak_site:app",
            log_name="gunicorn.log",
        )

    def start_worker(self, slot: int | None = None) -> None:
        proc = self.popen(f"{BIN}/flask", "amocrm", "worker", log_name="worker.log")
        if slot is None:
            self.workers.append(proc)
        else:
            self.workers[slot] = proc

    def web_processes(self) -> list[psutil.Process]:
        if self.gunicorn is None:
            return []
        try:
            return psutil.Process(self.gunicorn.pid).children()
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        for proc in [*self.workers, *([self.gunicorn] if self.gunicorn else [])]:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in [*self.workers, *([self.gunicorn] if self.gunicorn else [])]:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)


# -- what is watched -------------------------------------------------------------------


class MemoryWatch:
    """Peak RSS of every process of the cluster, by role, sampled every second."""

    def __init__(self) -> None:
        self.roots: dict[str, Callable[[], list[int]]] = {}
        self.peak: dict[str, tuple[int, int]] = {}  # role -> (bytes, pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, role: str, pids: Callable[[], list[int]]) -> None:
        self.roots[role] = pids

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _note(self, role: str, proc: psutil.Process) -> None:
        with suppress(psutil.Error):
            rss = proc.memory_info().rss
            if rss > self.peak.get(role, (0, 0))[0]:
                self.peak[role] = (rss, proc.pid)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for role, pids in list(self.roots.items()):
                for pid in pids():
                    try:
                        root = psutil.Process(pid)
                        children = root.children(recursive=True) if "|" in role else []
                    except psutil.Error:
                        continue
                    head, _, tail = role.partition("|")
                    self._note(head, root)
                    for child in children if tail else ():
                        self._note(tail, child)


@dataclass
class Sent:
    machine: str = ""
    #: the site's answer: the event id, "spooled", or the error that stopped it
    answer: str = ""
    answered: bool = False


def schedule(events: int, seconds: float, rng: random.Random) -> list[float]:
    """Send times of ``events`` forms over ``seconds``: twelve stretches of bursts and
    quiet (weights below), uniform within each."""
    weights = [0.3, 1.0, 2.5, 0.6, 0.1, 2.0, 1.0, 0.2, 2.5, 1.2, 0.4, 1.5]
    total = sum(weights)
    span = seconds / len(weights)
    times: list[float] = []
    for n, weight in enumerate(weights):
        count = round(events * weight / total)
        times.extend(n * span + rng.random() * span for _ in range(count))
    times = sorted(times)[:events]
    while len(times) < events:
        times.append(seconds * rng.random())
    return sorted(times)


def send_all(
    machines: list[Machine],
    times: list[float],
    dedup_share: float,
    rng: random.Random,
    threads: int,
) -> list[Sent]:
    """Send the forms at their times, round-robin over the machines (a load balancer:
    a refused connection goes to the other machine; a request that got no answer is
    not sent again, as a visitor's browser would show an error)."""
    sent = [Sent() for _ in times]
    forms = []
    returning = max(1, int(len(times) * dedup_share / 2))
    for i in range(len(times)):
        if rng.random() < dedup_share:
            phone = f"+7913{rng.randrange(returning):07d}"
            forms.append({"form": "callback", "phone": phone, "name": f"Caller {i}"})
        else:
            forms.append(
                {
                    "form": "order",
                    "phone": f"+7912{i:07d}",
                    "email": f"buyer{i}@example.com",
                    "name": f"Buyer {i}",
                    "sum": "1990.50",
                    "comment": "leave at the door",
                }
            )
    lock = threading.Lock()
    cursor = [0]
    started = time.monotonic()

    def run() -> None:
        session = requests.Session()
        while True:
            with lock:
                i = cursor[0]
                cursor[0] += 1
            if i >= len(times):
                return
            wait = started + times[i] - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            data = dict(forms[i], order=str(i))
            for attempt in range(len(machines) * 3):
                machine = machines[(i + attempt) % len(machines)]
                sent[i].machine = machine.name
                try:
                    answer = session.post(
                        machine.web_url + "/order", data=data, timeout=30
                    )
                except requests.ConnectionError as exc:
                    reason = exc.args[0] if exc.args else None
                    refused = "NewConnectionError" in repr(reason) or (
                        "Connection refused" in str(exc)
                    )
                    if refused:
                        time.sleep(0.2)
                        continue  # nothing was sent: the balancer tries another
                    sent[i].answer = "no answer: " + type(exc).__name__
                    break
                except requests.RequestException as exc:
                    sent[i].answer = "no answer: " + type(exc).__name__
                    break
                if answer.status_code == 200:
                    event = answer.json()["event"]
                    sent[i].answer = "spooled" if event is None else str(event)
                    sent[i].answered = True
                else:
                    sent[i].answer = f"HTTP {answer.status_code}"
                break

    pool = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sent


# -- the run ---------------------------------------------------------------------------


@contextmanager
def smtp_sink(host: str) -> Iterator[int]:
    port = free_port()
    server = socketserver.ThreadingTCPServer((host, port), SMTPSink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield port
    finally:
        server.shutdown()


def status_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT status, count(*) FROM amocrm_events GROUP BY status")
        )
        return {status: int(count) for status, count in rows}


def worst_window(times: list[float], width: float = 1.0) -> tuple[int, float]:
    """The most requests within any ``width`` seconds (a sliding window), and when
    that window starts."""
    ordered = sorted(times)
    worst, start, at = 0, 0, 0.0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= width:
            start += 1
        if end - start + 1 > worst:
            worst, at = end - start + 1, ordered[start]
    return worst, at


def main() -> int:  # noqa: C901 (one run, told in order)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="the send schedule's length (default: events / 45 per second)",
    )
    parser.add_argument("--dedup-share", type=float, default=0.2)
    parser.add_argument("--lease", type=int, default=120, help="seconds (default 120)")
    parser.add_argument(
        "--drain",
        type=float,
        default=None,
        help="seconds to wait for delivery after the sending (default: 900, or"
        " 0.04 s an event where that is longer: about 25 events a second, what the"
        " faults leave of amoCRM's budget)",
    )
    parser.add_argument(
        "--until",
        default=None,
        metavar="HH:MM",
        help="stop waiting for delivery at this time (UTC) whatever is left",
    )
    parser.add_argument("--threads", type=int, default=12)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's folder (logs) afterwards"
    )
    args = parser.parse_args()
    seconds = args.minutes * 60 if args.minutes else args.events / 45
    if postgres_server() is None:
        print(
            "soak skipped: it starts (and restarts) a PostgreSQL server of its own, "
            "and none is installed here (/usr/lib/postgresql/*/bin/pg_ctl)"
        )
        return 0
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    os.chmod(tmp, 0o755)
    namespaces = make_namespaces()
    host = HOST_IP if namespaces else "127.0.0.1"
    listen = f"127.0.0.1,{HOST_IP}" if namespaces else "127.0.0.1"
    log(
        f"soak: {args.events} form events over {seconds / 60:.1f} min, "
        f"{args.dedup_share:.0%} with duplicate control; run folder {tmp}"
    )
    if namespaces:
        log(
            "machines: 2 network namespaces (ip netns) on a bridge, "
            + ", ".join(f"{name} at {address}" for name, address in namespaces)
            + f"; PostgreSQL, Redis, the sandbox and the SMTP sink at {HOST_IP}"
        )
    else:
        log(
            "machines: 2 process groups with their own environment and instance "
            "folder on 127.0.0.1 (network namespaces could not be made here)"
        )
    postgres = Postgres(tmp / "pg", listen).start()
    redis_server = Redis(tmp, bind=listen.replace(",", " "))
    database = postgres.url(host)
    engine = create_engine(postgres.url("127.0.0.1"), pool_pre_ping=True)
    memory = MemoryWatch()
    machines: list[Machine] = []
    token_expires_in = max(60.0, 0.8 * seconds)
    outcome = 1
    try:
        with (
            smtp_sink(host) as smtp_port,
            sandbox_process(
                "--host",
                "0.0.0.0" if namespaces else "127.0.0.1",
                "--rate-limit",
                str(RATE),
                "--latency-ms",
                str(LATENCY_MS),
                "--access-token-ttl",
                str(int(token_expires_in + 60)),
            ) as control,
        ):
            sandbox_port = control.rsplit(":", 1)[1]
            api = f"http://{host}:{sandbox_port}"
            config = {
                "AMOCRM_BASE_URL": api,
                "AMOCRM_CLIENT_ID": "sandbox-client",
                "AMOCRM_CLIENT_SECRET": "sandbox-secret",
                "AMOCRM_REDIRECT_URI": "http://localhost/amocrm/admin/oauth/callback",
                "AMOCRM_REDIS_URL": f"redis://{host}:{redis_server.port}/0",
                "AMOCRM_DATABASE_URI": database,
                "AMOCRM_RULES": RULES,
                "AMOCRM_ADMIN_EMAILS": ["ops@example.com"],
                "AMOCRM_RETRY_MAX_DELAY": 20,
                "MAIL_SERVER": host,
                "MAIL_PORT": smtp_port,
                "MAIL_DEFAULT_SENDER": "site@example.com",
                "SECRET_KEY": "soak-" + str(args.seed),
            }
            site_dir = tmp / "site"
            site_dir.mkdir()
            (site_dir / "soak_site.py").write_text(SITE)
            for n, name in enumerate(("a", "b")):
                instance = tmp / f"machine-{name}" / "instance"
                instance.mkdir(parents=True)
                env = dict(
                    os.environ,
                    FLASK_APP="soak_site",
                    PYTHONPATH=os.pathsep.join([str(site_dir), ROOT]),
                    SOAK_MACHINE=name,
                    SOAK_INSTANCE=str(instance),
                    SOAK_SITE_DIR=str(site_dir),
                    SOAK_LEASE=str(args.lease),
                    SOAK_CONFIG=json.dumps(config),
                )
                if namespaces:
                    netns, address = namespaces[n]
                    machines.append(
                        Machine(name, netns, f"http://{address}:8000", env, 8000)
                    )
                else:
                    port = free_port()
                    machines.append(
                        Machine(name, None, f"http://127.0.0.1:{port}", env, port)
                    )

            def flask(*command: str) -> str:
                done = subprocess.run(
                    [f"{BIN}/flask", *command],
                    env=machines[0].env,
                    cwd=site_dir,
                    capture_output=True,
                    text=True,
                )
                if done.returncode:
                    raise SystemExit(f"flask {' '.join(command)}: {done.stderr}")
                return done.stdout

            flask("amocrm", "init-db")
            code = requests.post(control + "/_sandbox/oauth/code", json={}, timeout=5)
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys; from soak_site import app\n"
                    "from flask_amocrm.amo.connect import exchange_code\n"
                    "from flask_amocrm.state import get_state\n"
                    "with app.app_context(): exchange_code(get_state(), sys.argv[1])",
                    code.json()["code"],
                ],
                env=machines[0].env,
                cwd=site_dir,
                check=True,
            )
            # The token dies at the sandbox mid-run while the stored expiry says a
            # day: no refresh ahead of time, a 401, then one refresh (the new
            # tokens live a day).
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "UPDATE amocrm_tokens SET expires_at = now() at time zone "
                        "'utc' + interval '1 day'"
                    )
                )
            requests.post(
                control + "/_sandbox/config",
                json={"access_token_ttl": 86400},
                timeout=5,
            )
            token_dies = time.monotonic() + token_expires_in + 60
            flask("amocrm", "sync")
            log(f"PostgreSQL {postgres.port}, Redis {redis_server.port}, sandbox {api}")
            for machine in machines:
                machine.start_web()
                for _ in range(WORKERS_PER_MACHINE):
                    machine.start_worker()
            for machine in machines:
                for _ in range(100):
                    with suppress(requests.RequestException):
                        requests.get(machine.web_url + "/", timeout=1)
                        break
                    time.sleep(0.2)
            memory.watch(
                "gunicorn master|web process",
                lambda: [m.gunicorn.pid for m in machines if m.gunicorn],
            )
            memory.watch(
                "RQ worker|work horse",
                lambda: [w.pid for m in machines for w in m.workers],
            )
            memory.watch(
                "postmaster|PostgreSQL backend",
                lambda: [p for p in [postgres.pid()] if p],
            )
            memory.watch("redis-server", lambda: [p for p in [redis_server.pid()] if p])
            sandbox_pids = [
                p.pid
                for p in psutil.Process().children()
                if "flask_amocrm.sandbox" in " ".join(p.cmdline())
            ]
            memory.watch("sandbox", lambda: sandbox_pids)
            memory.watch("load generator (this script)", lambda: [os.getpid()])
            memory.start()

            restarts = Counter()
            killed: set[int] = set()
            stop_supervisor = threading.Event()

            def supervise() -> None:
                """Restart a worker that exited, as systemd would; count those that
                exited without being killed by the soak."""
                while not stop_supervisor.wait(1.0):
                    for machine in machines:
                        for slot, proc in enumerate(machine.workers):
                            if proc.poll() is None:
                                continue
                            if proc.pid in killed:
                                restarts["after a kill"] += 1
                            else:
                                restarts["on its own"] += 1
                                log(f"worker {proc.pid} on {machine.name} exited")
                            machine.start_worker(slot)

            threading.Thread(target=supervise, daemon=True).start()

            def kill_worker() -> str:
                machine = rng.choice(machines)
                proc = rng.choice(machine.workers)
                killed.add(proc.pid)
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                return (
                    f"RQ worker {proc.pid} on {machine.name} (and its horse) SIGKILLed"
                )

            def kill_web() -> str:
                machine = rng.choice(machines)
                procs = machine.web_processes()
                if not procs:
                    return "no web process to kill"
                proc = rng.choice(procs)
                with suppress(psutil.Error):
                    proc.send_signal(signal.SIGKILL)
                return f"web process {proc.pid} on {machine.name} SIGKILLed"

            def restart_redis() -> str:
                redis_server.restart_empty(down=3)
                return "Redis killed, back empty after 3 s"

            def restart_postgres() -> str:
                began = time.monotonic()
                postgres.restart()
                return (
                    "PostgreSQL crashed (immediate) and recovered in "
                    f"{time.monotonic() - began:.1f} s"
                )

            def answer(status: int, seconds: int, what: str) -> Callable[[], str]:
                def fault() -> str:
                    requests.post(
                        control + "/_sandbox/faults",
                        json={"status": status, "seconds": seconds},
                        timeout=5,
                    )
                    return what

                fault.__name__ = f"answer_{status}"
                return fault

            outage = answer(
                503, OUTAGE_SECONDS, f"the sandbox answers 503 for {OUTAGE_SECONDS} s"
            )
            storm = answer(
                429,
                STORM_SECONDS,
                f"a 429 storm: every request answered 429 for {STORM_SECONDS} s",
            )

            plan: list[tuple[float, Callable[[], str]]] = [
                (0.08, kill_worker),
                (0.15, kill_web),
                (0.20, restart_redis),
                (0.28, kill_worker),
                (0.35, outage),
                (0.45, kill_web),
                (0.52, restart_postgres),
                (0.60, kill_worker),
                (0.62, kill_worker),
                (0.68, storm),
                (0.75, kill_web),
                (0.88, kill_worker),
                (0.92, kill_web),
            ]
            injected: list[str] = []

            def inject(started: float) -> None:
                for at, fault in plan:
                    wait = started + at * seconds - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    try:
                        what = fault()
                    except Exception as exc:  # noqa: BLE001 (a fault that failed is said)
                        what = f"{fault.__name__} failed: {exc!r}"
                    injected.append(f"+{time.monotonic() - started:.0f} s: {what}")
                    log(what)

            times = schedule(args.events, seconds, rng)
            log(
                f"sending; the token dies at the sandbox at "
                f"+{token_dies - time.monotonic():.0f} s"
            )
            started = time.monotonic()
            injector = threading.Thread(target=inject, args=(started,), daemon=True)
            injector.start()
            progress_stop = threading.Event()

            def progress() -> None:
                while not progress_stop.wait(30):
                    with suppress(Exception):
                        log(f"events by status: {status_counts(engine)}")

            threading.Thread(target=progress, daemon=True).start()
            sent = send_all(machines, times, args.dedup_share, rng, args.threads)
            send_took = time.monotonic() - started
            log(f"sent {len(sent)} forms in {send_took:.0f} s")
            injector.join()
            answered = [s for s in sent if s.answered]
            drain = (
                args.drain if args.drain is not None else max(900, args.events * 0.04)
            )
            deadline = time.monotonic() + drain
            if args.until:
                hour, minute = (int(x) for x in args.until.split(":"))
                now = time.gmtime()
                left = (hour * 60 + minute) * 60 - (
                    now.tm_hour * 3600 + now.tm_min * 60 + now.tm_sec
                )
                deadline = min(deadline, time.monotonic() + left)
            counts: dict[str, int] = {}
            while time.monotonic() < deadline:
                with suppress(Exception):
                    counts = status_counts(engine)
                    waiting = sum(
                        counts.get(s, 0) for s in ("pending", "retrying", "processing")
                    )
                    if (
                        waiting == 0
                        and sum(counts.values()) >= len(answered)
                        and len(MAILS) >= 2
                    ):
                        break
                time.sleep(5)
            time.sleep(10)  # a late copy would show now
            drained = time.monotonic() - started
            progress_stop.set()
            stop_supervisor.set()
            counts = status_counts(engine)
            memory.stop()

            # 100,000 leads and their contacts are more than a gigabyte of JSON,
            # which a loaded sandbox took over ten minutes to write.
            state = requests.get(control + "/_sandbox/state", timeout=3600).json()
            leads = Counter()
            for lead in state["leads"]:
                found = re.match(r"Order (\d+) from ", lead["name"])
                if found:
                    leads[int(found.group(1))] += 1
            contacts = len(state["contacts"])
            del state
            log_entries = requests.get(
                control + "/_sandbox/requests", timeout=120
            ).json()
            for r in log_entries:
                # when the sandbox read the request (when it counts it against
                # its limit), where it says so; else when it answered
                r["at"] = r.get("received") or r["time"]
            api_times = [
                r["at"]
                for r in log_entries
                if r["path"].startswith(("/api/v4", "/oauth2"))
            ]
            statuses = Counter(
                r["status"] for r in log_entries if r["path"].startswith("/api/v4")
            )
            wall_start = time.time() - (time.monotonic() - started)
            refreshes = sum(
                1
                for r in log_entries
                if r["path"] == "/oauth2/access_token"
                and r["status"] == 200
                and r["time"] > wall_start  # not the code's exchange before the run
            )
            storm_at = next(
                (float(x[1:].split(" ")[0]) for x in injected if "429 storm" in x), None
            )
            limiter_429 = [
                r["time"] - wall_start
                for r in log_entries
                if r["status"] == 429
                and (
                    storm_at is None
                    or not storm_at - 1
                    <= r["time"] - wall_start
                    <= storm_at + STORM_SECONDS + 1
                )
            ]
            with engine.connect() as conn:
                delays = [
                    float(d)
                    for (d,) in conn.execute(
                        text(
                            "SELECT extract(epoch FROM delivered_at - created_at) "
                            "FROM amocrm_events WHERE delivered_at IS NOT NULL"
                        )
                    )
                ]
            unanswered = [i for i, s in enumerate(sent) if not s.answered]
            with engine.connect() as conn:
                waiting = {
                    int(order)
                    for (order,) in conn.execute(
                        text(
                            "SELECT data->>'order' FROM amocrm_events WHERE status IN "
                            "('pending', 'retrying', 'processing')"
                        )
                    )
                }
            lost = [
                i
                for i, s in enumerate(sent)
                if s.answered and leads[i] == 0 and i not in waiting
            ]
            doubled = [i for i, n in leads.items() if n > 1]
            unanswered_delivered = sum(1 for i in unanswered if leads[i])
            window, window_at = worst_window(api_times)
            with engine.connect() as conn:
                # when each request left the client: logged after its answer, with
                # how long it took
                sent_times = [
                    float(t)
                    for (t,) in conn.execute(
                        text(
                            "SELECT extract(epoch FROM created_at) - duration_ms "
                            "/ 1000.0 FROM amocrm_api_log WHERE duration_ms IS NOT NULL"
                        )
                    )
                ]
            sent_window, sent_window_at = worst_window(sent_times)
            outage_mails = [m for m in MAILS if "not answering" in m]
            recovery_mails = [m for m in MAILS if "answers again" in m]

            load = os.getloadavg()
            print()
            print(
                f"Soak, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                f"{platform.node()}, {os.cpu_count()} cores, load average "
                f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
                + (
                    "machines: network namespaces"
                    if namespaces
                    else "machines: process groups"
                )
                + f"; claim lease {args.lease} s for the run (15 min by default)"
            )
            print("| what | figure | goal |\n|---|---|---|")

            def line(
                what: str, figure: Any, goal: str = "", ok: bool | None = None
            ) -> None:
                mark = "" if ok is None else ("  ok" if ok else "  MISSED")
                print(f"| {what} | {figure} | {goal}{mark} |", flush=True)

            line("events sent", len(sent))
            line(
                "answered by the site",
                f"{len(answered)} ({sum(1 for s in answered if s.answer == 'spooled')} "
                "of them spooled while PostgreSQL was down)",
            )
            line(
                "not answered (web process killed mid-request)",
                f"{len(unanswered)}, of which {unanswered_delivered} delivered anyway",
                "",
            )
            line("event rows by status", dict(sorted(counts.items())))
            line(
                "delivered (leads in amoCRM with an order number)",
                sum(1 for n in leads.values() if n),
            )
            line(
                "still waiting for delivery when the run ended",
                len(waiting),
                "0",
                not waiting,
            )
            line("lost (answered, no lead, not waiting)", len(lost), "0", not lost)
            line("doubled (more than one lead)", len(doubled), "0", not doubled)
            line(
                "worst one-second window of requests",
                window,
                f"<= {RATE}",
                window <= RATE,
            )
            line(
                "worst one-second window as sent (API log: answered at, less duration)",
                sent_window,
                f"<= {RATE}",
                sent_window <= RATE,
            )
            line(
                "429 answers outside the storm (the sandbox's own limit)",
                f"{len(limiter_429)}"
                + (
                    f" at +{', +'.join(f'{t:.0f}' for t in limiter_429[:10])} s"
                    if limiter_429
                    else ""
                ),
                "0",
                not limiter_429,
            )
            if delays:
                line(
                    "capture to delivery, p50 / p95 / p99 / max",
                    " / ".join(
                        f"{percentile(delays, p):.1f} s" for p in (50, 95, 99, 100)
                    ),
                )
            for role, (rss, pid) in sorted(memory.peak.items()):
                line(f"peak RSS, {role}", f"{rss / 2**20:.0f} MiB (pid {pid})")
            line(
                "alert mails",
                f"{len(outage_mails)} outage, {len(recovery_mails)} recovery, "
                f"{len(MAILS) - len(outage_mails) - len(recovery_mails)} other",
                "1 outage, 1 recovery",
                len(outage_mails) == 1 and len(recovery_mails) == 1 and len(MAILS) == 2,
            )
            line(
                "token refreshes (the token died at the sandbox)",
                refreshes,
                "1",
                refreshes == 1,
            )
            line(
                "API answers",
                ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
            )
            line("contacts in amoCRM", contacts)
            line(
                "workers restarted",
                ", ".join(f"{k}: {v}" for k, v in restarts.items()) or "none",
            )
            line("send / drain", f"{send_took:.0f} s / {drained:.0f} s")
            print("\nfaults injected:\n" + "\n".join(f"- {x}" for x in injected))
            print(f"mails: {MAILS}")
            print(
                f"the worst one-second window, from +{window_at - wall_start:.1f} s "
                "(at the sandbox):"
            )
            for r in log_entries:
                if window_at <= r["at"] < window_at + 1:
                    print(
                        f"  +{r['at'] - wall_start:.3f} s {r['method']} {r['path']} "
                        f"{r['status']} token {r['token']}"
                    )
            print("token calls:")
            for r in log_entries:
                if r["path"].startswith("/oauth2"):
                    print(
                        f"  +{r['time'] - wall_start:.1f} s {r['path']} {r['status']}"
                    )
            first_401 = [r["time"] for r in log_entries if r["status"] == 401]
            if first_401:
                print(
                    f"401 answers: {len(first_401)}, from "
                    f"+{first_401[0] - wall_start:.1f} to "
                    f"+{first_401[-1] - wall_start:.1f} s"
                )
            if lost[:20]:
                print(f"lost orders (first 20): {lost[:20]}")
            if doubled[:20]:
                print(f"doubled orders (first 20): {doubled[:20]}")
            ok = (
                not lost
                and not doubled
                and window <= RATE
                and len(outage_mails) == 1
                and len(recovery_mails) == 1
            )
            print("OK" if ok else "FAILED")
            outcome = 0 if ok else 1
    finally:
        for machine in machines:
            machine.stop()
        redis_server.server.stop()
        postgres.stop()
        engine.dispose()
        if namespaces:
            _drop_namespaces()
        if args.keep:
            print(f"run folder kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return outcome


if __name__ == "__main__":
    sys.exit(main())
