"""Finding a lead again that amoCRM created but we never heard about.

A worker can die, or the connection drop, after amoCRM created a lead and before its id
was saved on the event. A plain retry would create a second lead. So every lead we
create carries its event's ``uid`` in an API-only text field (``AMOCRM_EVENT_FIELD``,
created in the account on first use, invisible in amoCRM's interface), and an event
that was sent before without an answer is first looked up by that value
(``GET /api/v4/leads?query=<uid>``). amoCRM's ``query`` is full-text, so a hit counts
only when the field really holds the uid.
"""

from __future__ import annotations

import logging
from typing import Any

from ..amo.client import AmoClient
from ..amo.metadata import metadata_for
from ..extension import _State

log = logging.getLogger("flask_amocrm.worker")


def marker_field_id(state: _State, client: AmoClient) -> int | None:
    """The id of the lead field that holds event uids (created if missing), or
    ``None`` when ``AMOCRM_EVENT_FIELD`` is off."""
    name = state.settings.event_field
    if not name:
        return None
    field = metadata_for(state).field("leads", name)
    if field is not None:
        return int(field["id"])
    lock: Any = None
    if state.settings.redis_url:
        lock = state.redis().lock(f"amocrm:{state.settings.base_url}:marker-field",
                                  timeout=60, blocking_timeout=60)
        lock.acquire()
    try:
        field = metadata_for(state, refresh=True).field("leads", name)
        if field is None:
            client.post("/api/v4/leads/custom_fields", [{
                "name": name, "type": "text", "is_api_only": True, "sort": 100000,
                "request_id": "marker",
            }])
            log.info("Created the lead field %r for event ids", name)
            field = metadata_for(state, refresh=True).field("leads", name)
    finally:
        if lock is not None:
            lock.release()
    return int(field["id"]) if field else None


def marker_value(field_id: int, uid: str) -> dict[str, Any]:
    """The ``custom_fields_values`` item that marks a lead with its event's uid."""
    return {"field_id": field_id, "values": [{"value": uid}]}


def find_marked_lead(client: AmoClient, field_id: int, uid: str) -> dict[str, Any] | None:
    """The lead whose marker field holds ``uid``, with its contacts, or ``None``."""
    answer = client.get("/api/v4/leads", **{"query": uid, "with": "contacts"})
    for lead in (answer or {}).get("_embedded", {}).get("leads", []):
        for item in lead.get("custom_fields_values") or []:
            if item.get("field_id") == field_id and any(
                str(v.get("value")) == uid for v in item.get("values") or []
            ):
                return lead  # type: ignore[no-any-return]
    return None


def remote_ids(lead: dict[str, Any]) -> dict[str, Any]:
    """The ``event.remote`` ids of a lead found again."""
    embedded = lead.get("_embedded") or {}
    contacts = embedded.get("contacts") or []
    main = next((c for c in contacts if c.get("is_main")), contacts[0] if contacts else {})
    companies = embedded.get("companies") or []
    return {
        "lead_id": lead["id"],
        "contact_id": main.get("id"),
        "company_id": companies[0]["id"] if companies else None,
        "found_again": True,
    }
