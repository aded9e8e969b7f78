"""Run the sandbox on a real port in a background thread (tests, demos, benchmarks)."""

from __future__ import annotations

import io
import json
import socket
import struct
import sys
import threading
import time
import urllib.request
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .app import create_app
from .limits import ARRIVED

#: Linux's ``SO_TIMESTAMPNS`` (and ``SCM_TIMESTAMPNS``), which :mod:`socket` does
#: not name: the kernel stamps each packet when it arrives and ``recvmsg`` hands the
#: stamp over, two 64-bit numbers (seconds, nanoseconds) on 64-bit Linux.
SO_TIMESTAMPNS = 35
_STAMP = struct.Struct("qq")


def stamp_arrivals(sock: socket.socket) -> bool:
    """Have the kernel stamp the packets ``sock`` receives (Linux; a listening
    socket's connections inherit it). False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


class _StampedSocket(io.RawIOBase):
    """The raw reading side of a connection, noting when the kernel received the
    data of the first read since :attr:`stamp` was cleared (``time.time()``)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self._cmsg = socket.CMSG_SPACE(_STAMP.size)
        self.stamp: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size, ancillary, _flags, _address = self._sock.recvmsg_into(
            [buffer], self._cmsg
        )
        if self.stamp is None:
            for level, kind, data in ancillary:
                if (
                    level == socket.SOL_SOCKET
                    and kind == SO_TIMESTAMPNS
                    and len(data) == _STAMP.size
                ):
                    seconds, nanoseconds = _STAMP.unpack(data[: _STAMP.size])
                    self.stamp = seconds + nanoseconds / 1e9
        return size


class ArrivalHandler(WSGIRequestHandler):
    """Notes when each request arrived, as a gateway would, before the request is
    parsed and routed: in a busy Python process those steps wait their turn, and
    the rate limit must not count the wait (:mod:`.limits`). Where the kernel
    stamps the packets (:func:`stamp_arrivals`), that is the moment the request's
    first line reached the machine, however long this process took to read it;
    else the moment it was read."""

    _stamped: _StampedSocket | None = None

    def setup(self) -> None:
        super().setup()
        if stamp_arrivals(self.connection):
            self.rfile.close()
            self._stamped = _StampedSocket(self.connection)
            self.rfile = io.BufferedReader(self._stamped)

    def handle_one_request(self) -> None:
        if self._stamped is not None:
            self._stamped.stamp = None
        super().handle_one_request()

    def parse_request(self) -> bool:
        stamp = self._stamped.stamp if self._stamped is not None else None
        self.arrived = stamp or time.time()
        return bool(super().parse_request())

    def make_environ(self) -> dict[str, Any]:
        environ = dict(super().make_environ())
        environ[ARRIVED] = getattr(self, "arrived", None)
        return environ


class _QuietHandler(ArrivalHandler):
    """No access log on stderr: tests read ``/_sandbox/requests`` instead."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class SandboxServer:
    """A sandbox served by a threaded werkzeug server in a daemon thread.

    ``SandboxServer(**create_app_kwargs, host="127.0.0.1", port=0)``; ``port=0``
    picks a free port. Use as a context manager or call :meth:`start` and
    :meth:`stop`. The helpers talk to the control endpoints over real HTTP.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, **kwargs: Any):
        self.host = host
        self.port = port
        self.app: Flask = create_app(**kwargs)
        self.token: str = kwargs.get("token", "sandbox-token")
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` (no trailing slash)."""
        if self._server is None:
            raise RuntimeError("The sandbox server is not started; call start().")
        return f"http://{self.host}:{self._server.server_port}"

    def start(self) -> SandboxServer:
        """Bind the port and serve in a daemon thread."""
        if self._server is not None:
            return self
        self._server = make_server(
            self.host,
            self.port,
            self.app,
            threaded=True,
            request_handler=_QuietHandler,
        )
        stamp_arrivals(self._server.socket)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name=f"amocrm-sandbox-{self._server.server_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and save the state file if any."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None
        sandbox = self.app.extensions["amocrm_sandbox"]
        if sandbox.store.state_file:
            sandbox.store.save()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control helpers (over HTTP) ---------------------------------------------

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def reset(self) -> None:
        """Restore the seeded account; clear requests, faults and limits."""
        self._call("POST", "/_sandbox/reset", {})

    def faults(self, **spec: Any) -> list[dict[str, Any]]:
        """Add a fault, e.g. ``faults(status=503, count=3)``; ``faults(clear=True)``."""
        return self._call("POST", "/_sandbox/faults", spec)["faults"]

    def config(self, **settings: Any) -> dict[str, Any]:
        """Change run-time settings (rate_limit, latency_ms, access_token_ttl,
        block_after, block_seconds, duplicate_control); returns them all."""
        if settings:
            return self._call("POST", "/_sandbox/config", settings)
        return self._call("GET", "/_sandbox/config")

    def requests(self) -> list[dict[str, Any]]:
        """Every API request received since the last reset."""
        return self._call("GET", "/_sandbox/requests")

    def clear_requests(self) -> None:
        """Forget the logged requests (``DELETE /_sandbox/requests``)."""
        self._call("DELETE", "/_sandbox/requests", {})

    def auth_code(self) -> str:
        """A fresh OAuth authorization code for the configured client."""
        return self._call("POST", "/_sandbox/oauth/code", {})["code"]

    def long_lived_token(self, days: int = 365) -> str:
        """A new long-lived token: a JWT with ``exp`` and ``api_domain``."""
        return str(
            self._call("POST", "/_sandbox/long_lived_token", {"days": days})["token"]
        )

    def seed(self, contacts: int, companies: int = 0, seed: int = 1) -> dict[str, Any]:
        """Add made-up contacts and companies (``POST /_sandbox/seed``)."""
        return self._call(
            "POST",
            "/_sandbox/seed",
            {"contacts": contacts, "companies": companies, "seed": seed},
        )

    def delete(self, entity: str, entity_id: int) -> None:
        """Delete an entity as a person does in amoCRM (``POST /_sandbox/delete``)."""
        self._call("POST", "/_sandbox/delete", {"entity": entity, "id": entity_id})

    def state(self) -> dict[str, Any]:
        """Everything the account holds (``GET /_sandbox/state``)."""
        return self._call("GET", "/_sandbox/state")

    def leads(self) -> list[dict[str, Any]]:
        """All stored leads, deleted ones included, with contacts embedded."""
        return self.state()["leads"]

    def contacts(self) -> list[dict[str, Any]]:
        """All stored contacts, with their leads embedded."""
        return self.state()["contacts"]

    def companies(self) -> list[dict[str, Any]]:
        """All stored companies."""
        return self.state()["companies"]

    def notes(self, entity: str = "leads") -> list[dict[str, Any]]:
        """All notes of ``leads``, ``contacts`` or ``companies``."""
        return self.state()["notes"][entity]

    def tasks(self) -> list[dict[str, Any]]:
        """All tasks."""
        return self.state()["tasks"]

    def unsorted(self) -> list[dict[str, Any]]:
        """All incoming leads, with ``status`` pending, accepted or declined."""
        return self.state()["unsorted"]

    def move_lead(
        self,
        lead_id: int,
        status_id: int,
        *,
        pipeline_id: int | None = None,
        user_id: int | None = None,
    ) -> dict[str, Any]:
        """Move a lead to another stage as a manager would
        (``POST /_sandbox/leads/{id}/status``); the lead afterwards."""
        body: dict[str, Any] = {"status_id": status_id}
        if pipeline_id is not None:
            body["pipeline_id"] = pipeline_id
        if user_id is not None:
            body["user_id"] = user_id
        return self._call("POST", f"/_sandbox/leads/{lead_id}/status", body)

    def webhook_deliveries(self) -> list[dict[str, Any]]:
        """Every webhook sent (or dropped) since the last reset: ``destination``,
        ``event``, ``body`` (form-encoded), ``status`` (0: no answer), ``dropped``."""
        return self._call("GET", "/_sandbox/webhooks")
