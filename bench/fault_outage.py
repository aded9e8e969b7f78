"""Fault run: amoCRM answers 503 for a minute while a site keeps sending forms.

A real RQ worker (with its scheduler) delivers against the sandbox; an SMTP sink
catches the alert mails. Expected: exactly one "not answering" mail, exactly one
"answers again" mail, and every event delivered exactly once afterwards. Takes a few
minutes (retries back off); OUTAGE_SECONDS shortens it.
"""

from __future__ import annotations

import os
import socketserver
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

import redis  # noqa: E402
import requests  # noqa: E402
from _common import REDIS_URL, free_port, sandbox_process, search_path  # noqa: E402

OUTAGE = float(os.environ.get("OUTAGE_SECONDS", "60"))
EVENTS = 30
BIN = os.path.dirname(sys.executable)
MAILS: list[str] = []


class SMTPSink(socketserver.StreamRequestHandler):
    """Just enough SMTP to take a message and keep its subject."""

    def handle(self) -> None:
        self.wfile.write(b"220 sink\r\n")
        data = False
        lines: list[str] = []
        for raw in self.rfile:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if data:
                if line == ".":
                    data = False
                    subject = next(
                        (x[9:] for x in lines if x.startswith("Subject: ")), "?"
                    )
                    MAILS.append(subject)
                    self.wfile.write(b"250 ok\r\n")
                else:
                    lines.append(line)
                continue
            verb = line[:4].upper()
            if verb == "DATA":
                data, lines = True, []
                self.wfile.write(b"354 go\r\n")
            elif verb == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


def main() -> int:
    redis.Redis.from_url(REDIS_URL).flushdb()
    smtp_port = free_port()
    smtp = socketserver.ThreadingTCPServer(("127.0.0.1", smtp_port), SMTPSink)
    threading.Thread(target=smtp.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp, sandbox_process() as sandbox:
        config: dict[str, Any] = {
            "AMOCRM_BASE_URL": sandbox,
            "AMOCRM_TOKEN": "sandbox-token",
            "AMOCRM_REDIS_URL": REDIS_URL,
            "AMOCRM_QUEUE": "outage",
            "AMOCRM_DATABASE_URI": f"sqlite:///{tmp}/events.sqlite3",
            "AMOCRM_ADMIN_EMAILS": ["ops@example.com"],
            "AMOCRM_RETRY_MAX_DELAY": 20,
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": smtp_port,
            "AMOCRM_RULES": {
                "forms": {
                    "callback": {
                        "contact": {
                            "name": "{{ data.name }}",
                            "fields": {"PHONE": "{{ data.phone }}"},
                        },
                        "lead": {"name": "Callback: {{ data.name }}"},
                    }
                }
            },
        }
        with open(os.path.join(tmp, "outage_site.py"), "w") as fp:
            fp.write(
                textwrap.dedent(f"""
                from flask import Flask
                from flask_amocrm import AmoCRM
                app = Flask("outage_site", instance_path={tmp!r})
                app.config.update({config!r})
                AmoCRM(app)
            """)
            )
        env = dict(os.environ, FLASK_APP="outage_site", PYTHONPATH=search_path(tmp))
        worker = subprocess.Popen(
            [f"{BIN}/flask", "amocrm", "worker"],
            env=env,
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            requests.post(
                sandbox + "/_sandbox/faults",
                json={"status": 503, "seconds": OUTAGE},
                timeout=5,
            )
            started = time.monotonic()
            submit = textwrap.dedent(f"""
                import time
                from outage_site import app
                with app.app_context():
                    amocrm = app.extensions["amocrm"].extension
                    for i in range({EVENTS}):
                        amocrm.submit("callback", {{"name": f"Visitor {{i}}",
                                                    "phone": f"+7912{{i:07d}}"}})
                        time.sleep({OUTAGE / EVENTS / 2})
            """)
            subprocess.run([sys.executable, "-c", submit], env=env, cwd=tmp, check=True)
            print(f"outage: {OUTAGE:.0f} s of 503; {EVENTS} forms sent during it")
            deadline = started + OUTAGE + 300
            leads: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                leads = requests.get(sandbox + "/_sandbox/state", timeout=10).json()[
                    "leads"
                ]
                if len(leads) >= EVENTS and len(MAILS) >= 2:
                    break
                time.sleep(2)
            took = time.monotonic() - started
        finally:
            worker.terminate()
            worker.wait(30)
        names = Counter(lead["name"] for lead in leads)
        print(
            f"after {took:.0f} s: {len(names)} of {EVENTS} events in amoCRM, "
            f"largest copy count {max(names.values(), default=0)}"
        )
        print(f"alert mails: {MAILS}")
        ok = (
            len(names) == EVENTS
            and set(names.values()) == {1}
            and len(MAILS) == 2
            and "not answering" in MAILS[0]
            and "answers again" in MAILS[1]
        )
        print("OK" if ok else "FAILED")
        smtp.shutdown()
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
