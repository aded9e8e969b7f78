"""Finding a lead again that amoCRM created but we never heard about.

A worker can die, or the connection drop, after amoCRM created a lead and before its id
was saved on the event. A plain retry would create a second lead. So every lead we
create carries its event's ``uid`` in an API-only text field (``AMOCRM_EVENT_FIELD``,
created in the account on first use, API-only: amoCRM's interface does not show it),
and an event that was sent before without an answer is first looked up by that value
(a lead search with ``query=<uid>``). amoCRM's ``query`` is full-text, so a hit counts
only when the field really holds the uid.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .. import shared
from ..amo.client import AmoClient
from ..state import AppState
from ..vocabulary import fold

if TYPE_CHECKING:
    from .delivery import Delivery

log = logging.getLogger("flask_amocrm.worker")

#: Seconds a worker waits for another one that is creating the marker field.
FIELD_LOCK_WAIT = 60.0


def marker_field_id(
    state: AppState, client: AmoClient, *, remember: bool = True
) -> int | None:
    """The id of the lead field that holds event uids, or ``None`` when
    ``AMOCRM_EVENT_FIELD`` is off.

    The id is kept as a shared flag; only on a fresh install (or after the flag was
    lost) is the account asked, under a shared lock, and the field created if
    missing. A lock another process holds for over a minute raises
    :class:`~flask_amocrm.errors.LockTimeoutError` (the batch is tried again later).
    ``remember=False`` (a preview) neither takes the lock nor keeps the id.
    """
    name = state.settings.event_field
    if not name:
        return None
    flag = f"marker-field:{name}"
    known = shared.get(state, flag, account=True)
    if known:
        return int(known)
    if not remember:
        return _find_or_create_field(client, name)
    lock = shared.lock(
        state, "marker-field", ttl=60, wait=FIELD_LOCK_WAIT, account=True
    )
    with lock:
        known = shared.get(state, flag, account=True)  # set by the holder before us
        if known:
            return int(known)
        field_id = _find_or_create_field(client, name)
        shared.put(state, flag, str(field_id), account=True)
        return field_id


def known_marker_field(state: AppState) -> int | None:
    """The marker field's id if a worker has found or created it (no API call):
    ``None`` when ``AMOCRM_EVENT_FIELD`` is off or no lead was marked yet."""
    name = state.settings.event_field
    known = shared.get(state, f"marker-field:{name}", account=True) if name else None
    return int(known) if known else None


def forget_marker_field(state: AppState) -> None:
    """Forget the cached marker field id (``flask amocrm sync``, or amoCRM said the
    field is gone): the next lead looks the field up again, or creates it."""
    name = state.settings.event_field
    if name:
        shared.clear(state, f"marker-field:{name}", account=True)


def _find_or_create_field(client: AmoClient, name: str) -> int:
    """The id of the lead field ``name``, created API-only if the account has none."""
    wanted = fold(name)
    for field in client.fields("leads"):
        if fold(field.get("name", "")) == wanted:
            return int(field["id"])
    created = client.create_field(
        "leads",
        {
            "name": name,
            "type": "text",
            "is_api_only": True,
            "sort": 100000,
            "request_id": "marker",
        },
    )
    field_id = int(created["id"])
    log.info("Created the API-only lead field %r (id %s) for event ids", name, field_id)
    return field_id


def marker_value(field_id: int, uid: str) -> dict[str, Any]:
    """The ``custom_fields_values`` item that marks a lead with its event's uid."""
    return {"field_id": field_id, "values": [{"value": uid}]}


def find_marked_lead(
    client: AmoClient, field_id: int, uid: str
) -> dict[str, Any] | None:
    """The lead whose marker field holds ``uid``, with its contacts, or ``None``."""
    for lead in client.search("leads", uid, with_="contacts"):
        for item in lead.get("custom_fields_values") or []:
            if item.get("field_id") == field_id and any(
                str(v.get("value")) == uid for v in item.get("values") or []
            ):
                return lead
    return None


def found_ids(lead: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~flask_amocrm.progress.Progress` ids of a lead found again."""
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

    An event whose progress says ``sending`` was sent before and no answer was
    saved: amoCRM may or may not have created its lead.
    """
    for delivery in deliveries:
        if delivery.marker is None or not delivery.progress.sending:
            continue
        lead = find_marked_lead(client, delivery.marker, delivery.event.uid)
        if lead is not None:
            log.warning(
                "Event %s: found lead %s that an unanswered attempt created; "
                "not creating another",
                delivery.event.id,
                lead["id"],
            )
            delivery.record("create", **found_ids(lead))
    pending = [
        d
        for d in deliveries
        if d.marker is not None and d.pending("create") and not d.progress.sending
    ]
    for delivery in pending:
        delivery.record(sending=True)  # inside execute: saved with the batch
    if pending:
        pending[0].save()  # one commit for the batch: they share the session


def mark(
    state: AppState,
    client: AmoClient,
    deliveries: list[Delivery],
    *,
    remember: bool = True,
) -> None:
    """Give every lead this batch creates its event's marker. ``remember=False``
    (a preview) keeps no marker field id it had to find or create."""
    new = [
        d
        for d in deliveries
        if d.error is None
        and d.plan.lead is not None
        and d.plan.lead.id is None
        and not d.plan.done(d.progress)
    ]
    if not new:
        return
    field_id = marker_field_id(state, client, remember=remember)
    if field_id is None:
        return
    for delivery in new:
        lead = delivery.plan.lead
        assert lead is not None
        delivery.marker = field_id
        lead.payload.setdefault("custom_fields_values", []).append(
            marker_value(field_id, delivery.event.uid)
        )
        # Only a lead this event creates carries its uid; one that duplicate control
        # reuses keeps the uid of the event that created it.
        lead.lock.add(field_id)
