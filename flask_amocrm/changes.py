"""What changed in amoCRM, read from a webhook or from the events log: pure.

amoCRM tells a site about its changes in two ways: a webhook (a form-encoded
``POST``, ``leads[status][0][id]=...``) that may never come, and the events log
(``GET /api/v4/events``) that the site reads every ``AMOCRM_RECONCILE_INTERVAL``
seconds. Both are turned here into the same :class:`Change`, with the same key
whichever way the change came (a timed one: the same key before its ``@`` and a
shared slot of time), so that the inbound table stores it once and the site's
receivers hear it once.

The key is built from what both carry (``@<time>``: timed, see below):

- ``lead_added``: ``lead:<id>:added``
- ``lead_status_changed``: ``lead:<id>:status:<old status>><pipeline>:<status>@<time>``
- ``lead_updated``: ``lead:<id>:updated:<updated_at>``
- ``lead_deleted``: ``lead:<id>:deleted@<time>``
- ``contact_added``: ``contact:<id>:added``
- ``contact_updated``: ``contact:<id>:updated:<updated_at>``
- ``note_added``: ``<entity>:<id>:note:<note id>``
- ``task_completed``: ``task:<id>:completed``

A lead can make the same move twice (to "won", back, to "won" again), so a
*timed* key also carries the time of the change (``@<unix seconds>``): the
webhook's ``updated_at`` (or ``last_modified``), the events log's ``created_at``.
The two clocks need not agree to the second, so a timed change also *claims* two
slots of :data:`TOLERANCE` seconds (:attr:`Change.claims`: the one its time falls
in and the next), each stored under a unique key: two changes with the same base
at most :data:`TOLERANCE` seconds apart always share a slot, so the second is
refused as the same change; two at least twice that far apart never do. An update
(``lead_updated``) has no single counterpart in the events log (it shows up as
several field events), so it comes by webhook only and its key is exact.

The payload parser refuses, with :class:`PayloadError`, whatever is not an
amoCRM webhook within the bounds below; nothing of a refused payload is kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

#: The largest webhook body read, in bytes (amoCRM sends one item, a few KB).
MAX_BYTES = 256 * 1024
#: The most ``key=value`` pairs in one body.
MAX_FIELDS = 5000
#: The most items under one ``<entity>[<action>]``.
MAX_ITEMS = 100
#: The deepest bracket nesting of a key (``leads[note][0][note][metadata][x]``).
MAX_DEPTH = 8
#: The longest key, in characters.
MAX_KEY = 300
#: Two timed changes with the same base this many seconds apart or less are one;
#: twice as far apart or more, two (see :attr:`Change.claims`).
TOLERANCE = 60

#: The signals of changes, in the order they are documented.
SIGNALS = (
    "lead_added",
    "lead_status_changed",
    "lead_updated",
    "lead_deleted",
    "contact_added",
    "contact_updated",
    "note_added",
    "task_completed",
)
#: The signals whose key carries the time of the change.
TIMED = frozenset({"lead_status_changed", "lead_deleted"})

#: The webhook settings codes (``/api/v4/webhooks``) each signal needs.
WEBHOOK_CODES: dict[str, tuple[str, ...]] = {
    "lead_added": ("add_lead",),
    "lead_status_changed": ("status_lead",),
    "lead_updated": ("update_lead",),
    "lead_deleted": ("delete_lead",),
    "contact_added": ("add_contact",),
    "contact_updated": ("update_contact",),
    "note_added": ("note_lead", "note_contact", "note_company"),
    "task_completed": ("update_task",),
}
#: The events log types (``filter[type]``) each signal is reconciled from; the
#: updates have no counterpart there (see the module docstring).
EVENT_TYPES: dict[str, tuple[str, ...]] = {
    "lead_added": ("lead_added",),
    "lead_status_changed": ("lead_status_changed",),
    "lead_deleted": ("lead_deleted",),
    "contact_added": ("contact_added",),
    "note_added": (
        "common_note_added",
        "attachment_note_added",
        "service_note_added",
        "geo_note_added",
    ),
    "task_completed": ("task_completed",),
}
_NOTE_ENTITIES = {"1": "contact", "2": "lead", "3": "company", "4": "task"}
_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[[^\[\]]*\])*)$")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")
#: Where a scalar goes when a nested value shares its path (the reference saw
#: ``...[note][type]=3`` and ``...[note][type][message_uuid]=...`` in one body).
SCALAR = ""


class PayloadError(ValueError):
    """A webhook body that is not amoCRM's, or past the bounds: refused (400)."""


@dataclass(frozen=True)
class Change:
    """One change in amoCRM, as the site's signals hear it."""

    #: The signal it is sent as (a name in :data:`SIGNALS`).
    signal: str
    #: ``lead``, ``contact``, ``company`` or ``task``: what changed (for a note,
    #: the entity it was added to).
    entity: str
    entity_id: int
    #: The signal's keyword arguments besides ``event`` and ``change``.
    values: dict[str, Any]
    #: When it happened (Unix seconds), as the source says.
    at: int
    #: ``webhook`` or ``events``.
    origin: str
    #: The key without the time (see the module docstring).
    base: str
    #: The lead's custom field values as ``{field id: first value}`` when the
    #: source carried them (a webhook does): the marker field names our event.
    fields: dict[int, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The key the inbound table stores the change under."""
        return f"{self.base}@{self.at}" if self.signal in TIMED else self.base

    @property
    def claims(self) -> tuple[str, ...]:
        """The slots a timed change takes (none for the others): the
        :data:`TOLERANCE`-second slot its time falls in, and the next one."""
        if self.signal not in TIMED:
            return ()
        slot = self.at // TOLERANCE
        return (f"{self.base}~{slot}", f"{self.base}~{slot + 1}")


def _int(value: Any, what: str) -> int:
    text = str(value).strip() if value is not None else ""
    if not text.isdigit() or len(text) > 18:
        raise PayloadError(f"{what} is not an id: {text[:30]!r}")
    return int(text)


def _maybe_int(value: Any) -> int | None:
    text = str(value).strip() if value is not None else ""
    return int(text) if text.isdigit() and len(text) <= 18 else None


# -- the form-encoded webhook ---------------------------------------------------


def parse_form(body: bytes) -> dict[str, Any]:
    """The nested structure of a form-encoded body, every value a string.

    Numeric segments stay dict keys (``linked_leads_id[9982719][ID]`` would make
    a huge sparse list otherwise). Raises :class:`PayloadError` for a body past
    the bounds, not UTF-8, or with a key outside PHP's bracket grammar."""
    if len(body) > MAX_BYTES:
        raise PayloadError(f"the body is larger than {MAX_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("the body is not UTF-8") from None
    try:
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=bool(text),
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeDecodeError:
        raise PayloadError("a value is not UTF-8 once decoded") from None
    except ValueError as exc:
        raise PayloadError(f"not form-encoded: {str(exc)[:100]}") from None
    tree: dict[str, Any] = {}
    for name, value in pairs:
        if len(name) > MAX_KEY:
            raise PayloadError(f"a key is longer than {MAX_KEY} characters")
        match = _KEY.match(name)
        if match is None:
            raise PayloadError(f"not a webhook key: {name[:60]!r}")
        path = [match.group(1), *_SEGMENT.findall(match.group(2))]
        if len(path) > MAX_DEPTH:
            raise PayloadError(f"a key is nested deeper than {MAX_DEPTH} levels")
        node = tree
        for segment in path[:-1]:
            inner = node.get(segment)
            if not isinstance(inner, dict):
                inner = {} if inner is None else {SCALAR: inner}
                node[segment] = inner
            node = inner
        last = path[-1]
        if isinstance(node.get(last), dict):
            node[last][SCALAR] = value
        else:
            node[last] = value
    return tree


def _items(tree: Mapping[str, Any], entity: str, action: str) -> list[dict[str, Any]]:
    block = tree.get(entity)
    if not isinstance(block, dict):
        return []
    items = block.get(action)
    if items is None:
        return []
    if not isinstance(items, dict):
        raise PayloadError(f"{entity}[{action}] is not a list of items")
    if len(items) > MAX_ITEMS:
        raise PayloadError(f"{entity}[{action}] has more than {MAX_ITEMS} items")
    found = []
    for item in items.values():
        if not isinstance(item, dict):
            raise PayloadError(f"an item of {entity}[{action}] is not an object")
        found.append(item)
    return found


def _fields(item: Mapping[str, Any]) -> dict[int, str]:
    """``custom_fields[K][id]`` and the first ``values[0][value]`` (or the bare
    ``values[0]`` of a date field)."""
    found: dict[int, str] = {}
    block = item.get("custom_fields")
    if not isinstance(block, dict):
        return found
    for entry in block.values():
        if not isinstance(entry, dict):
            continue
        field_id = _maybe_int(entry.get("id"))
        values = entry.get("values")
        if field_id is None or not isinstance(values, dict) or not values:
            continue
        first = next(iter(values.values()))
        value = first.get("value") if isinstance(first, dict) else first
        if isinstance(value, str):
            found[field_id] = value
    return found


def _when(item: Mapping[str, Any], received_at: int) -> int:
    for name in ("updated_at", "last_modified"):
        value = _maybe_int(item.get(name))
        if value:
            return value
    return received_at


def _lead_values(item: Mapping[str, Any], lead_id: int) -> dict[str, Any]:
    return {
        "lead_id": lead_id,
        "pipeline_id": _maybe_int(item.get("pipeline_id")),
        "status_id": _maybe_int(item.get("status_id")),
        "responsible_user_id": _maybe_int(item.get("responsible_user_id")),
    }


def _status_change(
    lead_id: int,
    values: dict[str, Any],
    old_status: Any,
    old_pipeline: Any,
    at: int,
    origin: str,
    fields: dict[int, str] | None = None,
) -> Change:
    values = {
        **values,
        "old_status_id": _maybe_int(old_status),
        "old_pipeline_id": _maybe_int(old_pipeline),
    }
    base = (
        f"lead:{lead_id}:status:{values['old_status_id'] or ''}>"
        f"{values['pipeline_id'] or ''}:{values['status_id'] or ''}"
    )
    return Change(
        "lead_status_changed", "lead", lead_id, values, at, origin, base, fields or {}
    )


def webhook_changes(body: bytes, *, received_at: int) -> list[Change]:
    """The changes one webhook body carries (``[]`` for a valid webhook about
    something the site has no signal for). ``received_at`` stands in for a change
    time the body does not carry. Raises :class:`PayloadError`."""
    tree = parse_form(body)
    if not isinstance(tree.get("account"), dict):
        raise PayloadError("not an amoCRM webhook: no account[...] keys")
    changes: list[Change] = []
    for action in ("add", "update", "status", "responsible", "restore", "delete"):
        for item in _items(tree, "leads", action):
            lead_id = _int(item.get("id"), f"leads[{action}] id")
            at = _when(item, received_at)
            values = _lead_values(item, lead_id)
            fields = _fields(item)

            simple = {
                "add": ("lead_added", f"lead:{lead_id}:added", values),
                "delete": (
                    "lead_deleted",
                    f"lead:{lead_id}:deleted",
                    {"lead_id": lead_id},
                ),
                "update": ("lead_updated", f"lead:{lead_id}:updated:{at}", values),
                "responsible": ("lead_updated", f"lead:{lead_id}:updated:{at}", values),
                "restore": ("lead_updated", f"lead:{lead_id}:updated:{at}", values),
            }.get(action)
            if simple is not None:
                signal, base, vals = simple
                changes.append(
                    Change(signal, "lead", lead_id, vals, at, "webhook", base, fields)
                )
            if action == "status" or (
                action == "update" and item.get("old_status_id") not in (None, "")
            ):
                changes.append(
                    _status_change(
                        lead_id,
                        values,
                        item.get("old_status_id"),
                        item.get("old_pipeline_id"),
                        at,
                        "webhook",
                        fields,
                    )
                )
    for action in ("add", "update", "responsible", "restore"):
        for item in _items(tree, "contacts", action):
            if str(item.get("type") or "contact") != "contact":
                continue  # companies arrive under ``contacts`` too
            contact_id = _int(item.get("id"), f"contacts[{action}] id")
            at = _when(item, received_at)
            values = {
                "contact_id": contact_id,
                "responsible_user_id": _maybe_int(item.get("responsible_user_id")),
            }
            if action == "add":
                signal, base = "contact_added", f"contact:{contact_id}:added"
            else:
                signal, base = "contact_updated", f"contact:{contact_id}:updated:{at}"
            changes.append(
                Change(signal, "contact", contact_id, values, at, "webhook", base)
            )
    for key in ("leads", "contacts"):
        for item in _items(tree, key, "note"):
            note = item.get("note")
            if not isinstance(note, dict):
                raise PayloadError(f"{key}[note] has no note")
            note_id = _int(note.get("id"), f"{key}[note] id")
            entity = _NOTE_ENTITIES.get(str(note.get("element_type")), "lead")
            entity_id = _int(note.get("element_id"), f"{key}[note] element_id")
            changes.append(
                _note_added(
                    entity,
                    entity_id,
                    note_id,
                    str(note.get("note_type") or ""),
                    str(note.get("text") or ""),
                    _maybe_int(note.get("created_at")) or received_at,
                    "webhook",
                )
            )
    for item in _items(tree, "task", "update"):
        if str(item.get("status")) != "1" or item.get("action_close") in (None, ""):
            continue  # an update of an open task, or of one closed before
        task_id = _int(item.get("id"), "task[update] id")
        changes.append(
            _task_completed(
                task_id,
                item.get("element_type"),
                item.get("element_id"),
                str(item.get("text") or ""),
                (item.get("result") or {}).get("text")
                if isinstance(item.get("result"), dict)
                else None,
                _when(item, received_at),
                "webhook",
            )
        )
    return changes


def _note_added(
    entity: str,
    entity_id: int,
    note_id: int,
    note_type: str | None,
    text: str | None,
    at: int,
    origin: str,
) -> Change:
    return Change(
        "note_added",
        entity,
        entity_id,
        {
            "note_id": note_id,
            "entity_type": entity,
            "entity_id": entity_id,
            "note_type": note_type,
            "text": text,
        },
        at,
        origin,
        f"{entity}:{entity_id}:note:{note_id}",
    )


def _task_completed(
    task_id: int,
    element_type: Any,
    element_id: Any,
    text: str | None,
    result: Any,
    at: int,
    origin: str,
) -> Change:
    entity = _NOTE_ENTITIES.get(str(element_type))
    return Change(
        "task_completed",
        "task",
        task_id,
        {
            "task_id": task_id,
            "entity_type": entity,
            "entity_id": _maybe_int(element_id),
            "text": text,
            "result": result if isinstance(result, str) else None,
        },
        at,
        origin,
        f"task:{task_id}:completed",
    )


# -- the events log ----------------------------------------------------------------


def event_types(signals: Iterable[str]) -> list[str]:
    """The events log types to read for these signals."""
    return sorted({t for s in signals for t in EVENT_TYPES.get(s, ())})


def webhook_codes(signals: Iterable[str]) -> list[str]:
    """The webhook settings codes to subscribe for these signals."""
    return sorted({c for s in signals for c in WEBHOOK_CODES.get(s, ())})


def _first(values: Any, root: str) -> dict[str, Any]:
    if isinstance(values, list):
        for entry in values:
            if isinstance(entry, dict) and isinstance(entry.get(root), dict):
                inner: dict[str, Any] = entry[root]
                return inner
    return {}


def event_change(event: Mapping[str, Any]) -> Change | None:
    """The change one events log entry is, or ``None`` for a type the site has no
    signal for (or an entry without the ids it needs)."""
    type_ = str(event.get("type") or "")
    entity = str(event.get("entity_type") or "")
    entity_id = _maybe_int(event.get("entity_id"))
    at = _maybe_int(event.get("created_at"))
    if entity_id is None or at is None:
        return None
    if type_ == "lead_added" and entity == "lead":
        return Change(
            "lead_added",
            "lead",
            entity_id,
            {
                "lead_id": entity_id,
                "pipeline_id": None,
                "status_id": None,
                "responsible_user_id": None,
            },  # fmt: skip
            at,
            "events",
            f"lead:{entity_id}:added",
        )
    if type_ == "lead_status_changed" and entity == "lead":
        after = _first(event.get("value_after"), "lead_status")
        before = _first(event.get("value_before"), "lead_status")
        return _status_change(
            entity_id,
            {
                "lead_id": entity_id,
                "pipeline_id": _maybe_int(after.get("pipeline_id")),
                "status_id": _maybe_int(after.get("id")),
                "responsible_user_id": None,
            },
            before.get("id"),
            before.get("pipeline_id"),
            at,
            "events",
        )
    if type_ == "lead_deleted" and entity == "lead":
        return Change(
            "lead_deleted",
            "lead",
            entity_id,
            {"lead_id": entity_id},
            at,
            "events",
            f"lead:{entity_id}:deleted",
        )
    if type_ == "contact_added" and entity == "contact":
        return Change(
            "contact_added",
            "contact",
            entity_id,
            {"contact_id": entity_id, "responsible_user_id": None},
            at,
            "events",
            f"contact:{entity_id}:added",
        )
    if type_ in EVENT_TYPES["note_added"] and entity in ("lead", "contact", "company"):
        note_id = _maybe_int(_first(event.get("value_after"), "note").get("id"))
        if note_id is None:
            return None
        return _note_added(entity, entity_id, note_id, None, None, at, "events")
    if type_ == "task_completed" and entity == "task":
        return _task_completed(entity_id, None, None, None, None, at, "events")
    return None
