"""``/api/v4/webhooks`` (subscribe, list, unsubscribe) and ``/api/v4/events``.

Shapes from the two-way reference §1.1 and §2.1-2.2. Webhooks are identified by
their destination: ``POST`` upserts by it (the settings are replaced) and ``DELETE``
takes it in a JSON body.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlparse

from flask import Blueprint, Response, request

from .. import events
from ..errors import INVALID_TYPE, NOT_BLANK, ApiError, FieldError
from ..search import envelope, paging, with_options
from ..store import now
from .common import hal, json_body, link, no_content, raise_if_errors, store

bp = Blueprint("sandbox_events", __name__, url_prefix="/api/v4")

# amocrm.ru caps the events page at 100 (Kommo at 250): reference §2.1, §2.6.
EVENTS_MAX_LIMIT = 100
MAX_FILTER_IDS = 10
EVENT_ENTITIES = {"lead", "contact", "company", "customer", "task"}
ENTITY_MAPS = {"lead": "leads", "contact": "contacts", "company": "companies"}
_INDEX = re.compile(r"^\[(\d*)\]$")


def _render_hook(hook: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in hook.items() if not k.startswith("_")}


def _valid_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parsed = urlparse(value)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


@bp.get("/webhooks")
def list_webhooks() -> Response:
    """The account's webhooks; ``filter[destination]`` matches exactly."""
    s = store()
    wanted = request.args.get("filter[destination]")
    with s.lock:
        hooks = [
            _render_hook(h)
            for h in events.webhooks(s)
            if wanted is None or h["destination"] == wanted
        ]
    if not hooks:
        return no_content()  # unconfirmed in the reference; as every other list
    return hal({"_total_items": len(hooks), "_embedded": {"webhooks": hooks}})


@bp.post("/webhooks")
def subscribe() -> Response:
    """Subscribe ``destination`` to ``settings``; an existing one is updated."""
    s = store()
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be an object")
    errors: list[FieldError] = []
    destination = body.get("destination")
    if not destination:
        errors.append(
            FieldError(NOT_BLANK, "destination", "This value should not be blank.")
        )
    elif not _valid_url(destination):
        errors.append(
            FieldError(INVALID_TYPE, "destination", "This value is not a valid URL.")
        )
    settings = body.get("settings")
    if not isinstance(settings, list) or not settings:
        errors.append(
            FieldError(NOT_BLANK, "settings", "This value should not be blank.")
        )
    else:
        for i, code in enumerate(settings):
            if code not in events.WEBHOOK_CODES:
                errors.append(FieldError.not_a_choice(f"settings.{i}"))
    sort = body.get("sort", 1)
    if not isinstance(sort, int) or isinstance(sort, bool):
        errors.append(
            FieldError(INVALID_TYPE, "sort", "This value should be of type int.")
        )
    raise_if_errors([("0", errors)])
    with s.lock:
        hooks = events.webhooks(s)
        hook = next((h for h in hooks if h["destination"] == destination), None)
        ts = now()
        if hook is None:
            if len(hooks) >= events.MAX_WEBHOOKS:
                raise ApiError(
                    400, f"An account has at most {events.MAX_WEBHOOKS} webhooks"
                )
            s.data["counters"].setdefault("webhooks", 1056949)
            hook = {
                "id": s.next_id("webhooks"),
                "destination": destination,
                "created_at": ts,
                "updated_at": ts,
                "account_id": s.account_id,
                "created_by": s.data["account"]["current_user_id"],
                "sort": sort,
                "disabled": False,
                "settings": [],
            }
            hooks.append(hook)
        hook["settings"] = list(dict.fromkeys(settings))
        hook["sort"] = sort
        hook["updated_at"] = ts
        # A re-POST enables a hook again (unconfirmed in the reference).
        hook["disabled"] = False
        hooks.sort(key=lambda h: (h["sort"], h["id"]))
        s.touch()
        return hal(_render_hook(hook), 201)


@bp.delete("/webhooks")
def unsubscribe() -> Response:
    """Remove the webhook of ``destination`` (JSON body) from every event."""
    s = store()
    body = json_body()
    if not isinstance(body, dict) or not body.get("destination"):
        raise_if_errors(
            [
                (
                    "0",
                    [
                        FieldError(
                            NOT_BLANK, "destination", "This value should not be blank."
                        )
                    ],
                )
            ]
        )
    with s.lock:
        hooks = events.webhooks(s)
        kept = [h for h in hooks if h["destination"] != body["destination"]]
        if len(kept) == len(hooks):
            raise ApiError(404, "Webhook not found")
        hooks[:] = kept
        s.touch()
    return no_content()


# -- the events log ----------------------------------------------------------------


def _multi(name: str) -> list[str] | None:
    """``filter[name]`` as a list: ``=a,b``, ``[]=a&[]=b`` and ``[0]=a&[1]=b`` alike."""
    prefix = f"filter[{name}]"
    found: list[str] | None = None
    for key, value in request.args.items(multi=True):
        if key == prefix or (
            key.startswith(prefix) and _INDEX.match(key[len(prefix) :])
        ):
            found = found or []
            found += [part.strip() for part in value.split(",") if part.strip()]
    return found


def _ints(name: str, cap: int | None = None) -> set[int] | None:
    values = _multi(name)
    if values is None:
        return None
    try:
        out = {int(v) for v in values}
    except ValueError:
        raise ApiError(400, f"filter[{name}] must hold integers") from None
    if cap is not None and len(out) > cap:
        raise ApiError(400, f"filter[{name}] takes at most {cap} values")
    return out


def _created_range() -> tuple[int | None, int | None]:
    args = request.args
    raw_from = args.get("filter[created_at][from]")
    raw_to = args.get("filter[created_at][to]")
    single = args.get("filter[created_at]")
    if single is not None:
        parts = [p.strip() for p in single.split(",")]
        raw_from = parts[0] or None
        if len(parts) > 1:
            raw_to = parts[1] or None
    try:
        return (
            int(raw_from) if raw_from else None,
            int(raw_to) if raw_to else None,
        )
    except ValueError:
        raise ApiError(400, "filter[created_at] must hold Unix timestamps") from None


def _render_event(event: dict[str, Any], with_: set[str]) -> dict[str, Any]:
    out = dict(event)
    out["_links"] = link(f"/api/v4/events/{event['id']}")
    entity: dict[str, Any] = {"id": event["entity_id"]}
    name_option = f"{event['entity_type']}_name"
    if name_option in with_ and event["entity_type"] in ENTITY_MAPS:
        obj = (
            store().entities(ENTITY_MAPS[event["entity_type"]]).get(event["entity_id"])
        )
        if obj is not None:
            entity["name"] = obj.get("name", "")
    entity["_links"] = link(
        f"/api/v4/{ENTITY_MAPS.get(event['entity_type'], event['entity_type'] + 's')}"
        f"/{event['entity_id']}"
    )
    out["_embedded"] = {"entity": entity}
    return out


@bp.get("/events")
def list_events() -> Response:
    """The events log, newest first, with the reference's filters; 204 when empty."""
    s = store()
    page, limit = paging(EVENTS_MAX_LIMIT)
    ids = _multi("id")
    types = _multi("type")
    entities = _multi("entity")
    if entities is not None:
        unknown = [
            e
            for e in entities
            if e not in EVENT_ENTITIES and not re.fullmatch(r"catalog_\d+", e)
        ]
        if unknown:
            raise ApiError(400, f"filter[entity]: unknown entity {unknown[0]}")
    entity_ids = _ints("entity_id", MAX_FILTER_IDS)
    if entity_ids is not None and (entities is None or len(set(entities)) != 1):
        raise ApiError(400, "filter[entity_id] needs filter[entity] naming one entity")
    created_by = _ints("created_by", MAX_FILTER_IDS)
    since, until = _created_range()
    with_ = with_options()
    with s.lock:
        found = [
            e
            for e in reversed(events.log(s))
            if (ids is None or e["id"] in ids)
            and (types is None or e["type"] in types)
            and (entities is None or e["entity_type"] in entities)
            and (entity_ids is None or e["entity_id"] in entity_ids)
            and (created_by is None or e["created_by"] in created_by)
            and (since is None or e["created_at"] >= since)
            and (until is None or e["created_at"] <= until)
        ]
        rendered = [_render_event(e, with_) for e in found]
    body = envelope("events", rendered, page, limit)
    if body is None:
        return no_content()
    return hal(body)


@bp.get("/events/<event_id>")
def get_event(event_id: str) -> Response:
    """One event by its id; 204 when there is none (as entities by id)."""
    s = store()
    with s.lock:
        for event in events.log(s):
            if event["id"] == event_id:
                return hal(_render_event(event, with_options()))
    return no_content()


__all__ = ["bp"]
