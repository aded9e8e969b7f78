"""A private ``redis-server`` for one test session, on a free port.

The tests flush databases of the Redis they use; this keeps them off whatever Redis
the machine runs on 6379 (the pallets-eco/flask-rq pattern).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

#: A port the tests never take, even when the system hands it out as free.
SHARED_REDIS_PORT = 6379


class RedisServerError(RuntimeError):
    """``redis-server`` is missing, or did not start."""


def free_port() -> int:
    """A TCP port nothing listens on now on 127.0.0.1 (never 6379)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port != SHARED_REDIS_PORT:
            return port


class RedisServer:
    """A ``redis-server`` subprocess without persistence, its files in
    ``directory``; :meth:`start` returns once it answers PING."""

    def __init__(self, directory: Path, bind: str = "127.0.0.1") -> None:
        self.directory = directory
        #: The addresses it listens on, space separated (``127.0.0.1`` first: it is
        #: pinged there); more than loopback turns Redis's protected mode off.
        self.bind = bind
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>``, without a database number."""
        return f"redis://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis-server.log"

    def start(
        self, *, attempts: int = 5, timeout: float = 10.0, port: int | None = None
    ) -> RedisServer:
        """Start on a free port, or on ``port`` (one attempt: a server started again
        where an earlier one was, as after a restart)."""
        executable = shutil.which("redis-server")
        if executable is None:
            raise RedisServerError(
                "redis-server is not installed: the tests start their own on a free"
                " port. 'make test' installs it (Debian: apt-get install"
                " redis-server). Or set AMOCRM_TEST_REDIS_URL and"
                " AMOCRM_TEST_CLIENT_REDIS_URL to Redis databases the tests may flush."
            )
        for _ in range(1 if port else attempts):
            # Another process may take the port between our probe and the server's
            # bind: the server then exits, and we try another port.
            self.port = port or free_port()
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [
                        executable,
                        "--port",
                        str(self.port),
                        "--bind",
                        *self.bind.split(),
                        "--protected-mode",
                        "yes" if self.bind == "127.0.0.1" else "no",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(self.directory),
                    ],
                    cwd=self.directory,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_for_ping(timeout):
                return self
            self.stop()
        raise RedisServerError(
            f"redis-server did not start after {attempts} attempts; its log"
            f" ({self.log_path}) ends with:\n{self._log_tail()}"
        )

    def _wait_for_ping(self, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        conn = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False  # exited: most likely the port was taken
                try:
                    if conn.ping():
                        return True
                except redis.ConnectionError:
                    time.sleep(0.05)
            return False
        finally:
            conn.close()

    def stop(self) -> None:
        """Terminate the server and wait for it (kill it if it lingers)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
