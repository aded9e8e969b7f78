"""An app on a real HTTP server in a thread, for tests a test client cannot serve
(a browser, the sandbox posting webhooks, an HTTP library's own cookie parsing)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from werkzeug.serving import make_server


@contextmanager
def serving(app: Any, *, threaded: bool = True) -> Iterator[str]:
    """``app`` on a werkzeug server on a free port of 127.0.0.1; yields its base
    URL, and stops the server (and its thread) on the way out."""
    server = make_server("127.0.0.1", 0, app, threaded=threaded)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
