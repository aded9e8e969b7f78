"""Reconciliation: reading amoCRM's events log for the changes no webhook brought.

amoCRM's webhooks can be lost (a receiver that was down, a hook amoCRM switched
off). Every ``AMOCRM_RECONCILE_INTERVAL`` seconds the tick (:mod:`.schedule`)
reads ``GET /api/v4/events`` for the types the site's receivers listen to
(:data:`~flask_amocrm.changes.EVENT_TYPES`), from the high-water mark minus
:data:`OVERLAP` seconds to now, and stores what it finds through the inbox: a
change that came by webhook already has its key there and is not stored again.

The high-water mark (the end of the last window read) is a shared flag
(:mod:`flask_amocrm.shared`); when it is missing (first run, Redis emptied) the
newest change stored from the events log stands in for it, and on a fresh
install the read starts :data:`FIRST_LOOKBACK` seconds back. The overlap covers
entries amoCRM writes into its log a little late. A long gap is read in windows of
:data:`WINDOW` seconds, one per run, so a site catches up without one huge read.

The leads, tasks and contacts of what was found are read back (one request per
50): the events log does not say who is responsible for a lead, nor carry the
marker field that names the site's own event.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from .. import shared
from ..amo.clients import client_for
from ..changes import Change, event_change, event_types
from ..inbox import newest_change_at, store_changes
from ..signals import INBOUND_SIGNALS
from ..state import AppState

log = logging.getLogger("flask_amocrm.worker")

#: Seconds each read goes back before the high-water mark.
OVERLAP = 120
#: How far back the first read goes, in seconds (besides the interval).
FIRST_LOOKBACK = 600
#: The longest time span one run reads, in seconds.
WINDOW = 6 * 3600
_MARK = "reconcile-mark"


def listened(state: AppState) -> list[str]:
    """The inbound signals this app has receivers for."""
    app = state.app
    return [
        name
        for name, signal in INBOUND_SIGNALS.items()
        if any(True for _ in signal.receivers_for(app))
    ]


def read_until(state: AppState) -> int | None:
    """The high-water mark: the end of the events log window last read (Unix
    seconds), or ``None`` before the first read."""
    mark = shared.get(state, _MARK)
    return int(mark) if mark else None


def reconcile(state: AppState, *, now: int | None = None) -> list[int]:
    """Read one window of the events log; store its changes; return the ids of
    the rows stored now (the caller hands them on)."""
    types = event_types(listened(state))
    if not types:
        return []
    now = int(now if now is not None else time.time())
    mark = read_until(state)
    if mark is not None:
        start = mark
    else:
        newest = newest_change_at(state, "events")
        start = (
            newest
            if newest is not None
            else now - state.settings.reconcile_interval - FIRST_LOOKBACK
        )
    since = max(start - OVERLAP, 0)
    until = min(now, since + WINDOW)
    client = client_for(state)
    found = [c for e in client.events(types, since, until) if (c := event_change(e))]
    changes = _read_back(client, found)
    stored = store_changes(state, changes)
    shared.put(state, _MARK, str(until))
    if stored:
        log.info("Reconciliation stored %d change(s) no webhook brought", len(stored))
    return stored


def _read_back(client: Any, changes: list[Change]) -> list[Change]:
    """The changes with what the events log leaves out, read from the entities:
    a lead's stage, responsible user and custom fields (the marker), a task's
    entity, text and result, a contact's responsible user."""
    wanted: dict[str, set[int]] = {"leads": set(), "tasks": set(), "contacts": set()}
    for change in changes:
        if change.entity == "lead":
            wanted["leads"].add(change.entity_id)
        elif change.entity == "task":
            wanted["tasks"].add(change.entity_id)
        elif change.entity == "contact" and change.signal == "contact_added":
            wanted["contacts"].add(change.entity_id)
    found = {
        entity: {int(item["id"]): item for item in client.read(entity, sorted(ids))}
        if ids
        else {}
        for entity, ids in wanted.items()
    }
    result = []
    for change in changes:
        values = dict(change.values)
        fields: dict[int, str] = {}
        if change.entity == "lead" and change.entity_id in found["leads"]:
            lead = found["leads"][change.entity_id]
            values["responsible_user_id"] = lead.get("responsible_user_id")
            if change.signal == "lead_added":
                values["pipeline_id"] = lead.get("pipeline_id")
                values["status_id"] = lead.get("status_id")
            fields = _fields(lead)
        elif change.entity == "task" and change.entity_id in found["tasks"]:
            task = found["tasks"][change.entity_id]
            entity_type = str(task.get("entity_type") or "")
            values["entity_type"] = {
                "leads": "lead",
                "contacts": "contact",
                "companies": "company",
            }.get(entity_type)
            values["entity_id"] = task.get("entity_id")
            values["text"] = task.get("text")
            result_ = task.get("result")
            values["result"] = (
                result_.get("text") if isinstance(result_, dict) else None
            )
        elif change.entity == "contact" and change.entity_id in found["contacts"]:
            contact = found["contacts"][change.entity_id]
            values["responsible_user_id"] = contact.get("responsible_user_id")
        result.append(dataclasses.replace(change, values=values, fields=fields))
    return result


def _fields(entity: dict[str, Any]) -> dict[int, str]:
    """``{field id: first value}`` of an entity's text-like custom fields."""
    found: dict[int, str] = {}
    for item in entity.get("custom_fields_values") or []:
        values = item.get("values") or []
        if item.get("field_id") and values and isinstance(values[0], dict):
            value = values[0].get("value")
            if isinstance(value, str):
                found[int(item["field_id"])] = value
    return found
