"""Importing past form results and mail events (``flask amocrm import FILE``).

A file is CSV (columns ``source`` and ``time``, optional ``kind`` — ``form`` or
``mail`` — and ``id``; every other column is a field) or JSON lines
(``{"source": ..., "time": ..., "kind": ..., "id": ..., "fields": {...}}``). Each row
becomes an event, delivered like a live one. A row's key (its ``id``, or a hash of
its content) is stored as the event's ``dedupe_key``, so importing the same file
again adds nothing.

The file is read as a stream, a chunk of rows at a time. A row that cannot be
imported (no source, a time that cannot be read, JSON nested too deep...) is
reported with its line number and skipped; the rows after it are imported. Values
are stored within the same caps as live events (``AMOCRM_MAX_VALUE_LENGTH``,
``AMOCRM_MAX_EVENT_SIZE``).

An imported event gets the site's context (``site``, and empty ``page``, ``client``,
``utm``), so rules written for live events work; a row's own ``page_url``,
``page_title``, ``referrer``, ``ip``, ``user_agent`` and campaign tags
(``utm_source``...) fill it where given.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from flask import current_app

from .errors import ImportRowError
from .i18n import N_, _, localize
from .outbox import add, append_log, bounded, known_keys
from .state import AppState
from .visit import display_domain, read_visit
from .vocabulary import CAMPAIGN_KEYS

#: A row's own context: column -> (section, key).
_CONTEXT_COLUMNS = {
    "page_url": ("page", "url"),
    "page_title": ("page", "title"),
    "referrer": ("page", "referrer"),
    "ip": ("client", "ip"),
    "user_agent": ("client", "user_agent"),
}
_RESERVED = {"source", "time", "kind", "id", *_CONTEXT_COLUMNS}
_CHUNK = 200
#: The longest source (form id or mail event) an event stores.
_MAX_SOURCE = 200
#: The longest CSV field read (longer ones are cut when stored, with a note).
_CSV_FIELD_LIMIT = 64 * 1024 * 1024

#: Called with ``"line N: reason"`` for each row that is skipped.
OnError = Callable[[str], None]


def read_rows(path: str, on_error: OnError | None = None) -> Iterator[dict[str, Any]]:
    """Yield ``{"source", "time", "kind", "id", "fields", "context", "line"}`` for
    each row, reading the file as it goes. A bad row is passed to ``on_error`` and
    skipped; without ``on_error`` it raises :class:`ImportRowError`."""

    def bad(message: str) -> None:
        if on_error is None:
            raise ImportRowError(message)
        on_error(message)

    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fp:
        if path.endswith((".jsonl", ".ndjson", ".json")):
            for number, line in enumerate(fp, 1):
                if not line.strip():
                    continue
                try:
                    yield _json_row(line, number)
                except ImportRowError as exc:
                    bad(localize(exc))
        else:
            yield from _csv_rows(fp, bad)


def _json_row(line: str, number: int) -> dict[str, Any]:
    try:
        raw = json.loads(line)
    except RecursionError:
        raise ImportRowError(
            N_("line %(line)s: nested too deeply", line=number)
        ) from None
    except ValueError as exc:
        raise ImportRowError(
            N_("line %(line)s: not JSON (%(error)s)", line=number, error=exc)
        ) from None
    if not isinstance(raw, dict):
        raise ImportRowError(N_("line %(line)s: expected an object", line=number))
    fields = raw.get("fields", raw.get("data", {}))
    return _row(raw, fields, number)


def _csv_rows(fp: Any, bad: Callable[[str], None]) -> Iterator[dict[str, Any]]:
    previous = csv.field_size_limit()
    csv.field_size_limit(min(_CSV_FIELD_LIMIT, sys.maxsize))
    try:
        reader = csv.DictReader(fp)
        while True:
            try:
                raw = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                bad(_("line %(line)s: %(error)s", line=reader.line_num, error=exc))
                continue
            fields = {
                k: v
                for k, v in raw.items()
                if k is not None and k not in _RESERVED and v not in (None, "")
            }
            try:
                yield _row(raw, fields, reader.line_num)
            except ImportRowError as exc:
                bad(localize(exc))
    finally:
        csv.field_size_limit(previous)


def _row(raw: dict[str, Any], fields: Any, number: int) -> dict[str, Any]:
    source = str(raw.get("source") or "").strip()
    if not source:
        raise ImportRowError(N_("line %(line)s: 'source' is empty", line=number))
    if len(source) > _MAX_SOURCE:
        raise ImportRowError(
            N_(
                "line %(line)s: 'source' is %(length)s characters, at most %(max)s",
                line=number,
                length=len(source),
                max=_MAX_SOURCE,
            )
        )
    kind = str(raw.get("kind") or "form").strip()
    if kind not in {"form", "mail"}:
        raise ImportRowError(
            N_(
                "line %(line)s: 'kind' must be form or mail, not %(kind)s",
                line=number,
                kind=repr(kind[:50]),
            )
        )
    if not isinstance(fields, dict):
        raise ImportRowError(
            N_("line %(line)s: 'fields' must be an object", line=number)
        )
    return {
        "source": source,
        "kind": kind,
        "time": _parse_time(raw.get("time"), number),
        "id": raw.get("id"),
        "fields": fields,
        "context": _row_context(raw, fields),
        "line": number,
    }


def _row_context(raw: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """What the row says of its own visit."""
    own: dict[str, Any] = {}
    for column, (section, key) in _CONTEXT_COLUMNS.items():
        value = raw.get(column)
        if isinstance(value, str | int | float) and str(value).strip():
            own.setdefault(section, {})[key] = str(value).strip()[:2000]
    for key in CAMPAIGN_KEYS:
        value = raw.get(key, fields.get(key))
        if isinstance(value, str | int) and str(value).strip():
            own.setdefault("utm", {})[key] = str(value).strip()[:250]
    return own


def _parse_time(value: Any, number: int) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        return _read_time(value)
    except (ValueError, OverflowError, OSError):
        shown = str(value)[:50]
        raise ImportRowError(
            N_(
                "line %(line)s: cannot read the time %(value)s",
                line=number,
                value=repr(shown),
            )
        ) from None


def _read_time(value: Any) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("not a time")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("not a number")
        return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
    text = value.strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text[:20]), UTC).replace(tzinfo=None)
    for fmt in ("%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%d.%m.%Y"):
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            pass
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def row_key(row: dict[str, Any]) -> str:
    """The row's de-duplication key: its id (hashed when the key would be longer
    than the column, so two long ids never share a key), or a hash of what it
    says."""
    if row.get("id") not in (None, ""):
        key = f"import:{row['kind']}:{row['source']}:{row['id']}"
        if len(key) <= 200:
            return key
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return f"import:{row['kind']}:id:{digest}"
    body = json.dumps(
        [row["kind"], row["source"], str(row["time"]), row["fields"]],
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return "import:" + hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


def site_context(state: AppState) -> dict[str, Any]:
    """The context an imported event starts with: the site's, as for an event
    captured outside a request, with empty ``page`` and ``client`` values."""
    context = read_visit(site_name=state.settings.site_name, cookie="")
    server = current_app.config.get("SERVER_NAME")
    if server:
        host = str(server).split(":")[0]
        context["site"]["domain"] = display_domain(host)
        context["site"]["host"] = host
    context["page"] = dict.fromkeys(
        ("url", "referrer", "title", "landing", "landing_referrer"), ""
    )
    context["client"] = dict.fromkeys(("ip", "user_agent", "visitor_uid"), "")
    return context


def import_rows(
    state: AppState, rows: Iterable[dict[str, Any]]
) -> tuple[list[int], int]:
    """Store the rows as events, a chunk at a time; return the new events' ids and
    how many rows were already imported."""
    added: list[int] = []
    skipped = 0
    chunk: list[dict[str, Any]] = []
    settings = state.settings
    base = site_context(state)

    def flush() -> None:
        nonlocal skipped
        keyed = {row_key(r): r for r in chunk}
        skipped += len(chunk) - len(keyed)  # the same row twice in one file
        with state.session() as session:
            known = known_keys(session, keyed)
            events = []
            for key, row in keyed.items():
                if key in known:
                    skipped += 1
                    continue
                notes: list[str] = []
                data = bounded(
                    row["fields"],
                    max_value=settings.max_value_length,
                    max_size=settings.max_event_size,
                    notes=notes,
                )
                context = json.loads(json.dumps(base))
                for section, values in row.get("context", {}).items():
                    context.setdefault(section, {}).update(values)
                context.update(imported=True, line=row["line"])
                if row["time"] is not None:
                    context["captured_at"] = int(
                        row["time"].replace(tzinfo=UTC).timestamp()
                    )
                events.append(
                    add(
                        session,
                        state.settings.phone_region,
                        kind=row["kind"],
                        source=row["source"],
                        data=data,
                        context=context,
                        dedupe_key=key,
                        log=append_log([], notes) or None,
                        created_at=row["time"],
                    )
                )
            session.commit()
            added.extend(e.id for e in events)
        chunk.clear()

    for row in rows:
        chunk.append(row)
        if len(chunk) >= _CHUNK:
            flush()
    if chunk:
        flush()
    return added, skipped
