"""Importing past form results and mail events (``flask amocrm import FILE``).

A file is CSV (columns ``source`` and ``time``, optional ``kind`` — ``form`` or
``mail`` — and ``id``; every other column is a field) or JSON lines
(``{"source": ..., "time": ..., "kind": ..., "id": ..., "fields": {...}}``). Each row
becomes an event, delivered like a live one. A row's key (its ``id``, or a hash of
its content) is stored as the event's ``dedupe_key``, so importing the same file
again adds nothing.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from .errors import ImportRowError
from .outbox import add, known_keys
from .state import AppState

_RESERVED = {"source", "time", "kind", "id"}
_CHUNK = 200


def read_rows(path: str) -> Iterator[dict[str, Any]]:
    """Yield ``{"source", "time", "kind", "id", "fields", "line"}`` for each row."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fp:
        if path.endswith((".jsonl", ".ndjson", ".json")):
            for number, line in enumerate(fp, 1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                except ValueError as exc:
                    raise ImportRowError(f"line {number}: not JSON ({exc})") from None
                if not isinstance(raw, dict):
                    raise ImportRowError(f"line {number}: expected an object")
                fields = raw.get("fields", raw.get("data", {}))
                yield _row(raw, fields, number)
        else:
            for number, raw in enumerate(csv.DictReader(fp), 2):
                fields = {
                    k: v
                    for k, v in raw.items()
                    if k is not None and k not in _RESERVED and v not in (None, "")
                }
                yield _row(raw, fields, number)


def _row(raw: dict[str, Any], fields: Any, number: int) -> dict[str, Any]:
    source = str(raw.get("source") or "").strip()
    if not source:
        raise ImportRowError(f"line {number}: 'source' is empty")
    kind = str(raw.get("kind") or "form").strip()
    if kind not in {"form", "mail"}:
        raise ImportRowError(
            f"line {number}: 'kind' must be form or mail, not {kind!r}"
        )
    if not isinstance(fields, dict):
        raise ImportRowError(f"line {number}: 'fields' must be an object")
    return {
        "source": source,
        "kind": kind,
        "time": _parse_time(raw.get("time"), number),
        "id": raw.get("id"),
        "fields": fields,
        "line": number,
    }


def _parse_time(value: Any, number: int) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
    text = str(value).strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text), UTC).replace(tzinfo=None)
    for fmt in ("%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%d.%m.%Y"):
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ImportRowError(f"line {number}: cannot read the time {text!r}") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def row_key(row: dict[str, Any]) -> str:
    """The row's de-duplication key: its id, or a hash of what it says."""
    if row.get("id") not in (None, ""):
        return f"import:{row['kind']}:{row['source']}:{row['id']}"[:200]
    body = json.dumps(
        [row["kind"], row["source"], str(row["time"]), row["fields"]],
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return "import:" + hashlib.sha256(body.encode("utf-8")).hexdigest()


def import_rows(
    state: AppState, rows: Iterable[dict[str, Any]]
) -> tuple[list[int], int]:
    """Store the rows as events; return the new events' ids and how many rows were
    already imported."""
    added: list[int] = []
    skipped = 0
    chunk: list[dict[str, Any]] = []

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
                context: dict[str, Any] = {"imported": True, "line": row["line"]}
                if row["time"] is not None:
                    context["captured_at"] = int(
                        row["time"].replace(tzinfo=UTC).timestamp()
                    )
                events.append(
                    add(
                        session,
                        kind=row["kind"],
                        source=row["source"],
                        data=row["fields"],
                        context=context,
                        dedupe_key=key,
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
