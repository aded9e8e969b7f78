"""Finding a lead again that amoCRM created but we never heard about.

A worker can die, or the connection drop, after amoCRM created a lead and before its id
was saved on the event. A plain retry would create a second lead. So every lead we
create carries its event's ``uid`` in an API-only text field (``AMOCRM_EVENT_FIELD``,
created in the account on first use, API-only: amoCRM's interface does not show it),
and an event that was sent before without an answer is first looked up by that value
(``GET /api/v4/leads?query=<uid>``). amoCRM's ``query`` is full-text, so a hit counts
only when the field really holds the uid.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .. import shared
from ..amo.client import AmoClient
from ..state import AppState

if TYPE_CHECKING:
    from .delivery import Delivery

log = logging.getLogger("flask_amocrm.worker")

#: Seconds a worker waits for another one that is creating the marker field.
FIELD_LOCK_WAIT = 60.0


def marker_field_id(state: AppState, client: AmoClient) -> int | None:
    """The id of the lead field that holds event uids, or ``None`` when
    ``AMOCRM_EVENT_FIELD`` is off.

    The id is kept as a shared flag; only on a fresh install (or after the flag was
    lost) is the account asked, under a shared lock, and the field created if
    missing. A lock another process holds for over a minute raises
    :class:`~flask_amocrm.errors.LockTimeoutError` (the batch is tried again later).
    """
    name = state.settings.event_field
    if not name:
        return None
    flag = f"marker-field:{name}"
    known = shared.get(state, flag)
    if known:
        return int(known)
    with shared.lock(state, "marker-field", ttl=60, wait=FIELD_LOCK_WAIT):
        known = shared.get(state, flag)  # set by whoever held the lock before us
        if known:
            return int(known)
        field_id = _find_field(client, name)
        if field_id is None:
            answer = client.post(
                "/api/v4/leads/custom_fields",
                [
                    {
                        "name": name,
                        "type": "text",
                        "is_api_only": True,
                        "sort": 100000,
                        "request_id": "marker",
                    }
                ],
            )
            field_id = int(answer["_embedded"]["custom_fields"][0]["id"])
            log.info(
                "Created the API-only lead field %r (id %s) for event ids",
                name,
                field_id,
            )
        shared.put(state, flag, str(field_id))
        return field_id


def _find_field(client: AmoClient, name: str) -> int | None:
    wanted = " ".join(name.split()).casefold()
    for field in client.get_all("/api/v4/leads/custom_fields", "custom_fields"):
        if " ".join(str(field.get("name", "")).split()).casefold() == wanted:
            return int(field["id"])
    return None


def marker_value(field_id: int, uid: str) -> dict[str, Any]:
    """The ``custom_fields_values`` item that marks a lead with its event's uid."""
    return {"field_id": field_id, "values": [{"value": uid}]}


def find_marked_lead(
    client: AmoClient, field_id: int, uid: str
) -> dict[str, Any] | None:
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
    main = next(
        (c for c in contacts if c.get("is_main")), contacts[0] if contacts else {}
    )
    companies = embedded.get("companies") or []
    return {
        "lead_id": lead["id"],
        "contact_id": main.get("id"),
        "company_id": companies[0]["id"] if companies else None,
        "found_again": True,
    }


def find_again_or_mark(client: AmoClient, deliveries: list[Delivery]) -> None:
    """Before a create call: adopt the leads that an earlier, unanswered attempt did
    create (found by their marker), and note on the others that they are being sent.

    An event whose ``remote`` says ``sending`` was sent before and no answer was
    saved: amoCRM may or may not have created its lead.
    """
    for delivery in deliveries:
        remote = delivery.event.remote or {}
        if delivery.marker is None or not remote.get("sending"):
            continue
        lead = find_marked_lead(client, delivery.marker, delivery.event.uid)
        if lead is not None:
            log.warning(
                "Event %s: found lead %s that an unanswered attempt created; "
                "not creating another",
                delivery.event.id,
                lead["id"],
            )
            delivery.record("create", **remote_ids(lead))
    pending = [
        d
        for d in deliveries
        if d.marker is not None
        and d.pending("create")
        and not (d.event.remote or {}).get("sending")
    ]
    for delivery in pending:
        delivery.event.remote = {**(delivery.event.remote or {}), "sending": True}
    if pending:
        pending[0].save()  # one commit for the batch: they share the session
