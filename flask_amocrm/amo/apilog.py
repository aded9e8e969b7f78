"""What the client writes down about each call, and what it never writes.

Every request and answer goes to the ``flask_amocrm.amo`` logger (INFO: method, path,
status, duration, amoCRM's ``X-Request-Id``; DEBUG: the bodies, shortened) and, when
``AMOCRM_LOG_REQUESTS`` is on, to an ``amocrm_api_log`` row linked to the event being
delivered. The delivery code names that event with :func:`event_context` (or by
setting :data:`current_event_id`).

Credentials never reach either place (CWE-532): the Authorization header
is never logged at all, OAuth bodies have ``access_token``, ``refresh_token``,
``client_secret`` and ``code`` masked, and every known secret value and anything that
looks like a JWT is masked wherever it appears. CR and LF in logged text are escaped
(CWE-117).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

if TYPE_CHECKING:
    from ..state import AppState

log = logging.getLogger("flask_amocrm.amo")

#: The id of the event whose delivery is making the current calls, if any.
current_event_id: ContextVar[int | None] = ContextVar(
    "flask_amocrm_current_event_id", default=None
)

#: Keys whose values are secrets in OAuth bodies and query strings.
SECRET_KEYS = frozenset(
    {
        "authorization",
        "access_token",
        "refresh_token",
        "client_secret",
        "code",
        "password",
        "api_key",
        "x-refresh-token",
    }
)
#: Of those, the ones that are secrets in any body. ``code`` is not: custom fields,
#: enums and validation errors all carry harmless codes (``PHONE``,
#: ``NotSupportedChoice``).
ALWAYS_SECRET = SECRET_KEYS - {"code"}
MASK = "[redacted]"
#: The most characters of a body kept in a log line or row.
BODY_LIMIT = 4000
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")
_BEARER = re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]+")
#: A ``key=value`` or ``"key": "value"`` pair in text that is not JSON.
_PAIR = re.compile(r"""([A-Za-z_-]+)(["']?\s*[:=]\s*["']?)((?:[^"'&\s,;}\\]|\\.)+)""")


@contextlib.contextmanager
def event_context(event_id: int | None) -> Iterator[None]:
    """Link the amoCRM calls made inside the block to ``event_id`` in the API log."""
    token = current_event_id.set(event_id)
    try:
        yield
    finally:
        current_event_id.reset(token)


class Redactor:
    """Masks secrets in what is about to be logged or stored."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Mask this value wherever it appears from now on."""
        if secret and len(secret) >= 6:
            self._secrets.add(secret)

    def value(self, body: Any, *, oauth: bool = False) -> Any:
        """``body`` with secret keys masked (``code`` too when ``oauth``)."""
        keys = SECRET_KEYS if oauth else ALWAYS_SECRET
        if isinstance(body, dict):
            return {
                k: (
                    MASK
                    if str(k).lower() in keys and v not in (None, "")
                    else self.value(v, oauth=oauth)
                )
                for k, v in body.items()
            }
        if isinstance(body, list):
            return [self.value(v, oauth=oauth) for v in body]
        if isinstance(body, str):
            return self.text(body)
        return body

    def text(self, text: str) -> str:
        """``text`` with every known secret, bearer token and JWT masked."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _BEARER.sub("Bearer " + MASK, text)
        return _JWT.sub(MASK, text)

    def query(self, params: dict[str, Any] | None) -> str:
        """A query string for the log, secret parameters masked."""
        if not params:
            return ""
        return urlencode(
            [
                (k, MASK if str(k).lower() in SECRET_KEYS else self.text(str(v)))
                for k, v in params.items()
            ]
        )

    def url_query(self, query: str) -> str:
        """A raw query string with secret parameters masked."""
        pairs = parse_qsl(query, keep_blank_values=True)
        return urlencode(
            [(k, MASK if k.lower() in SECRET_KEYS else self.text(v)) for k, v in pairs]
        )

    def stored(self, text: str | None, *, oauth: bool = False) -> str | None:
        """A body as :meth:`dump` stored it, masked again to be shown (a row written
        by an older version, or a secret this process did not know then): JSON has
        its secret keys masked at every depth; text that is not JSON (cut short, or
        form-encoded) has ``key=value`` and ``"key": "value"`` pairs of secret keys
        masked. JSON comes back indented, to be read."""
        if text is None:
            return None
        try:
            parsed = json.loads(text)
        except ValueError:
            keys = SECRET_KEYS if oauth else ALWAYS_SECRET
            return _PAIR.sub(
                lambda m: (
                    m.group(1) + m.group(2) + MASK
                    if m.group(1).lower() in keys
                    else m.group(0)
                ),
                self.text(text),
            )
        return json.dumps(
            self.value(parsed, oauth=oauth), ensure_ascii=False, indent=2, default=str
        )

    def dump(self, body: Any, *, oauth: bool = False) -> str | None:
        """The body as at most :data:`BODY_LIMIT` characters of safe, one-line text."""
        if body is None:
            return None
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        if isinstance(body, str):
            text = self.text(body)
            if oauth:
                # An unparsed OAuth body could hold anything; keep only its size.
                text = f"<{len(text)} characters>"
        else:
            text = json.dumps(
                self.value(body, oauth=oauth), ensure_ascii=False, default=str
            )
        text = text.replace("\r", "\\r").replace("\n", "\\n")
        if len(text) > BODY_LIMIT:
            text = text[:BODY_LIMIT] + f"... ({len(text)} characters)"
        return text


class ApiLogSink:
    """Writes one ``amocrm_api_log`` row per call. Failing to write never fails the
    call: the row is lost and a warning is logged."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def write(self, **row: Any) -> None:
        """Store one call (the fields of :class:`~flask_amocrm.models.ApiLog`)."""
        from ..models import ApiLog

        try:
            with self.state.session() as session:
                session.add(ApiLog(event_id=current_event_id.get(), **row))
                session.commit()
        except Exception as exc:
            log.warning(
                "Could not write the amoCRM API log row: %s", type(exc).__name__
            )


def purge_api_log(state: AppState, days: int | None = None) -> int:
    """Delete API log rows older than ``days`` (default ``AMOCRM_RETENTION_DAYS``);
    return how many went."""
    from sqlalchemy import delete

    from ..models import ApiLog, utcnow

    keep = days if days is not None else state.settings.retention_days
    cutoff = utcnow() - timedelta(days=keep)
    with state.session() as session:
        result = session.execute(delete(ApiLog).where(ApiLog.created_at < cutoff))
        session.commit()
    removed = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if removed:
        log.info("Purged %d amoCRM API log rows older than %d days", removed, keep)
    return removed
