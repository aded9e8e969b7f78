"""One JSON object a line in the logs (``AMOCRM_LOG_JSON``), for log collectors.

Each line carries ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` and,
when the line is about events, their ids: ``event_id`` (one) and ``event_ids`` (all),
from the log call's ``extra`` or from the events the worker is delivering at that
moment (:data:`flask_amocrm.hooks.call_events`). An exception adds its type and its
stack (file, line, function), never its message, which may quote what a visitor sent.

The package's log lines are written not to hold personal data (the request log keeps
bodies, the Python log keeps sizes); as a second guard, every line is scrubbed here of
what looks like an e-mail address or a phone number, of a bearer token and of the
configured secrets.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .hooks import call_events

#: The loggers that write JSON: this package's and RQ's (its worker's lines name jobs,
#: whose arguments are event ids).
LOGGERS = ("flask_amocrm", "rq")

_EMAIL = re.compile(r"[^\s@\"'<>(),;:]+@[^\s@\"'<>(),;:]+\.[A-Za-z]{2,}")
# Ten digits or more, with the separators people write phones with: shorter numbers
# (ids, counts, ports) are kept; ISO dates are not phones (only one space allowed
# after the year-month-day).
_PHONE = re.compile(r"(?<![\w-])\+?\d(?:[\s().-]{0,2}\d){9,}(?![\w-])")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_BEARER = re.compile(r"(?i)(bearer\s+)[\w.~+/=-]+")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line (see the module)."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self.secrets: set[str] = set()
        self.add_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str | None]) -> None:
        """Mask these values too, wherever they appear."""
        self.secrets.update(s for s in secrets if s and len(s) >= 6)

    def scrub(self, text: str) -> str:
        """``text`` without secrets, bearer tokens, e-mail addresses and phones."""
        for secret in self.secrets:
            text = text.replace(secret, "[secret]")
        text = _BEARER.sub(r"\1[secret]", text)
        text = _EMAIL.sub("[email]", text)
        return _PHONE.sub(_phone, text)

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": self.scrub(record.getMessage()),
        }
        ids = _event_ids(record)
        if ids:
            if len(ids) == 1:
                out["event_id"] = ids[0]
            out["event_ids"] = ids
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["stack"] = [
                f"{frame.filename}:{frame.lineno} in {frame.name}"
                for frame in traceback.extract_tb(record.exc_info[2])
            ]
        return json.dumps(out, ensure_ascii=False, default=str)


def _phone(match: re.Match[str]) -> str:
    found = match.group(0)
    return found if _DATE.match(found) else "[phone]"


def _event_ids(record: logging.LogRecord) -> list[int]:
    one = getattr(record, "event_id", None)
    many = getattr(record, "event_ids", None)
    ids = [one] if isinstance(one, int) else []
    if isinstance(many, list | tuple):
        ids += [i for i in many if isinstance(i, int) and i not in ids]
    return ids or list(call_events.get())


def use_json_logs(secrets: Iterable[str | None] = ()) -> JsonFormatter:
    """Make :data:`LOGGERS` write one JSON object a line to standard error (once per
    process; a second app adds its secrets). They no longer pass their lines on to
    the root logger, so nothing is written twice; a logger without a level gets
    ``INFO``, so every delivery is told."""
    formatter: JsonFormatter | None = None
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if isinstance(handler.formatter, JsonFormatter):
                formatter = handler.formatter
    if formatter is None:
        formatter = JsonFormatter()
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        for name in LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            logger.propagate = False
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.INFO)
    formatter.add_secrets(secrets)
    return formatter
