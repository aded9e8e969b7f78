"""``/api/v4/leads/unsorted``: incoming leads."""

from __future__ import annotations

import json
import uuid
from typing import Any

from flask import Blueprint, Response, request

from ..errors import (
    INVALID_TYPE,
    NOT_BLANK,
    NOT_EXPECTED,
    ApiError,
    FieldError,
    ValidationFailed,
)
from ..records import (
    apply_item,
    check_item,
    first_stage,
    is_int,
    render,
    unsorted_stage,
)
from ..search import apply_filters, envelope, order_items, paging, parse_nested
from ..store import Store, now
from .common import (
    hal,
    json_array,
    json_body,
    link,
    no_content,
    raise_if_errors,
    request_id,
    store,
)

bp = Blueprint("sandbox_unsorted", __name__, url_prefix="/api/v4/leads/unsorted")

ITEM_KEYS = {
    "source_uid",
    "source_name",
    "pipeline_id",
    "created_at",
    "metadata",
    "_embedded",
    "request_id",
}
FORMS_KEYS = {
    "form_id",
    "form_name",
    "form_page",
    "form_sent_at",
    "ip",
    "referer",
    "form_type",
    "visitor_uid",
    "category",
}
FORMS_REQUIRED = ("form_id", "form_name", "form_page", "form_sent_at")
SIP_KEYS = {
    "from",
    "phone",
    "called_at",
    "duration",
    "link",
    "service_code",
    "uniq",
    "is_call_event_needed",
    "category",
}
SIP_REQUIRED = (
    "uniq",
    "duration",
    "service_code",
    "link",
    "phone",
    "called_at",
    "from",
)
# An identical incoming lead is refused (Kommo doc). "Identical" is not defined
# there; source_uid names the source, not the submission, so we compare the
# whole submitted item (request_id aside) against incoming leads still pending.
DUPLICATE = "NotUnique"


def fingerprint(category: str, item: dict[str, Any]) -> str:
    """A canonical form of an incoming-lead item, to spot identical ones."""
    data = {k: v for k, v in item.items() if k != "request_id"}
    return category + ":" + json.dumps(data, sort_keys=True, ensure_ascii=False)


def check_metadata(
    category: str, metadata: Any, path: str = "metadata"
) -> list[FieldError]:
    """Validate forms or sip metadata."""
    if not isinstance(metadata, dict):
        return [FieldError(NOT_BLANK, path, "metadata is required.")]
    keys, required = (
        (FORMS_KEYS, FORMS_REQUIRED)
        if category == "forms"
        else (SIP_KEYS, SIP_REQUIRED)
    )
    errors = [
        FieldError(NOT_EXPECTED, f"{path}.{k}", "This field was not expected.")
        for k in metadata
        if k not in keys
    ]
    errors += [
        FieldError(NOT_BLANK, f"{path}.{k}", "This value should not be blank.")
        for k in required
        if metadata.get(k) in (None, "")
    ]
    return errors


def create_unsorted(
    s: Store,
    category: str,
    *,
    source_uid: str,
    source_name: str,
    pipeline_id: int,
    metadata: dict[str, Any],
    lead_ids: list[int],
    contact_ids: list[int],
    company_ids: list[int],
    created_at: int | None = None,
    fp: str | None = None,
) -> dict[str, Any]:
    """Store an incoming lead over already created (hidden) entities."""
    item = {
        "uid": str(uuid.uuid4()),
        "source_uid": source_uid,
        "source_name": source_name,
        "category": category,
        "pipeline_id": pipeline_id,
        "created_at": created_at or now(),
        "metadata": {k: v for k, v in metadata.items() if k != "category"},
        "account_id": s.account_id,
        "_lead_ids": lead_ids,
        "_contact_ids": contact_ids,
        "_company_ids": company_ids,
        "_state": "pending",
        "_processed_at": None,
        "_fingerprint": fp,
    }
    s.data["unsorted"][item["uid"]] = item
    for lead_id in lead_ids:
        s.entities("leads")[lead_id]["_unsorted_uid"] = item["uid"]
    s.touch()
    return item


def _ids(entity: str, ids: list[int]) -> list[dict[str, Any]]:
    return [{"id": i, "_links": link(f"/api/v4/{entity}/{i}")} for i in ids]


def render_unsorted(
    s: Store, item: dict[str, Any], full: bool = True
) -> dict[str, Any]:
    """An incoming lead as the API returns it."""
    out = {k: v for k, v in item.items() if not k.startswith("_")}
    out["_links"] = link(f"/api/v4/leads/unsorted/{item['uid']}")
    embedded: dict[str, Any] = {}
    for entity, key in (
        ("leads", "_lead_ids"),
        ("contacts", "_contact_ids"),
        ("companies", "_company_ids"),
    ):
        if full:
            embedded[entity] = [
                render(s, entity, s.entities(entity)[i], set(), link)
                for i in item[key]
                if i in s.entities(entity)
            ]
        else:
            embedded[entity] = _ids(entity, item[key])
    out["_embedded"] = embedded
    return out


def _create(category: str) -> Response:
    s = store()
    items = json_array()
    with s.lock:
        rids = [request_id(item, i) for i, item in enumerate(items)]
        pending = {
            u["_fingerprint"]
            for u in s.data["unsorted"].values()
            if u["_state"] == "pending" and u.get("_fingerprint")
        }
        checked = []
        fps = []
        for rid, item in zip(rids, items, strict=True):
            errors = _check_item(s, category, item)
            fp = fingerprint(category, item) if isinstance(item, dict) else ""
            if not errors and fp in pending:
                errors.append(
                    FieldError(DUPLICATE, "", "This incoming lead already exists.")
                )
            pending.add(fp)
            fps.append(fp)
            checked.append((rid, errors))
        raise_if_errors(checked)
        out = []
        for rid, item, fp in zip(rids, items, fps, strict=True):
            created = _apply_item(s, category, item, fp)
            entry = render_unsorted(s, created, full=False)
            entry = {
                "uid": created["uid"],
                "account_id": s.account_id,
                "request_id": rid,
                "_embedded": entry["_embedded"],
                "_links": entry["_links"],
            }
            out.append(entry)
        return hal({"_total_items": len(out), "_embedded": {"unsorted": out}})


def _check_item(s: Store, category: str, item: Any) -> list[FieldError]:
    if not isinstance(item, dict):
        return [FieldError(INVALID_TYPE, "", "This value should be of type object.")]
    errors = [
        FieldError(NOT_EXPECTED, k, "This field was not expected.")
        for k in item
        if k not in ITEM_KEYS
    ]
    for key in ("source_uid", "source_name"):
        if not isinstance(item.get(key), str) or not item[key]:
            errors.append(FieldError(NOT_BLANK, key, "This value should not be blank."))
    pid = item.get("pipeline_id")
    if pid is not None and (not is_int(pid) or s.pipeline(pid) is None):
        errors.append(FieldError.not_a_choice("pipeline_id"))
    errors += check_metadata(category, item.get("metadata"))
    embedded = item.get("_embedded") or {}
    if not isinstance(embedded, dict):
        return errors + [
            FieldError(
                INVALID_TYPE, "_embedded", "This value should be of type object."
            )
        ]
    for key in embedded:
        if key not in ("leads", "contacts", "companies"):
            errors.append(
                FieldError(
                    NOT_EXPECTED, f"_embedded.{key}", "This field was not expected."
                )
            )
    limits = {"leads": 1, "contacts": 10, "companies": 1}
    for entity, most in limits.items():
        group = embedded.get(entity) or []
        if not isinstance(group, list):
            errors.append(
                FieldError(
                    INVALID_TYPE,
                    f"_embedded.{entity}",
                    "This value should be of type array.",
                )
            )
            continue
        if len(group) > most:
            errors.append(
                FieldError(
                    INVALID_TYPE,
                    f"_embedded.{entity}",
                    f"At most {most} {entity} per incoming lead.",
                )
            )
        for i, sub in enumerate(group):
            # A lead may name the integration's source, as in leads/complex.
            allowed = {"tags", "source"} if entity == "leads" else {"tags"}
            for err in check_item(s, entity, sub, embedded_allowed=allowed):
                err.path = f"_embedded.{entity}.{i}.{err.path}".rstrip(".")
                errors.append(err)
    return errors


def _apply_item(
    s: Store, category: str, item: dict[str, Any], fp: str
) -> dict[str, Any]:
    pipeline = s.pipeline(item.get("pipeline_id")) or s.main_pipeline()
    embedded = item.get("_embedded") or {}
    leads = embedded.get("leads") or [{}]
    lead_ids, contact_ids, company_ids = [], [], []
    for sub in leads:
        sub = {k: v for k, v in sub.items() if k not in ("status_id", "pipeline_id")}
        sub["pipeline_id"] = pipeline["id"]
        sub["status_id"] = unsorted_stage(pipeline)
        if not sub.get("name"):
            sub["name"] = item["source_name"]
        lead = apply_item(s, "leads", sub, link_embedded=False)
        lead_ids.append(lead["id"])
    for sub in embedded.get("contacts") or []:
        contact = apply_item(s, "contacts", sub, link_embedded=False)
        contact["is_unsorted"] = True
        contact_ids.append(contact["id"])
    for sub in embedded.get("companies") or []:
        company = apply_item(s, "companies", sub, link_embedded=False)
        company_ids.append(company["id"])
    link_group(s, lead_ids, contact_ids, company_ids)
    created_at = item.get("created_at") if is_int(item.get("created_at")) else None
    return create_unsorted(
        s,
        category,
        source_uid=item["source_uid"],
        source_name=item["source_name"],
        pipeline_id=pipeline["id"],
        metadata=item["metadata"],
        lead_ids=lead_ids,
        contact_ids=contact_ids,
        company_ids=company_ids,
        created_at=created_at,
        fp=fp,
    )


def link_group(
    s: Store, lead_ids: list[int], contact_ids: list[int], company_ids: list[int]
) -> None:
    """Link a lead with its contacts and company, and the contacts with the company."""
    from ..records import add_link

    for lead_id in lead_ids:
        for i, contact_id in enumerate(contact_ids):
            add_link(
                s, "leads", lead_id, "contacts", contact_id, {"main_contact": i == 0}
            )
        for company_id in company_ids[:1]:
            add_link(s, "leads", lead_id, "companies", company_id)
    for contact_id in contact_ids:
        for company_id in company_ids[:1]:
            add_link(s, "contacts", contact_id, "companies", company_id)


@bp.post("/forms")
def create_forms() -> Response:
    """Create incoming leads from site forms."""
    return _create("forms")


@bp.post("/sip")
def create_sip() -> Response:
    """Create incoming leads from calls."""
    return _create("sip")


@bp.get("")
def list_unsorted() -> Response:
    """Pending incoming leads; 204 when there are none."""
    s = store()
    with s.lock:
        page, limit = paging()
        items = [u for u in s.data["unsorted"].values() if u["_state"] == "pending"]
        filters = parse_nested(request.args, "filter")
        items = apply_filters(items, filters, {"uid", "category", "pipeline_id"})
        items = order_items(
            items, parse_nested(request.args, "order"), ("created_at", "updated_at")
        )
        body = envelope("unsorted", items, page, limit)
        if body is None:
            return no_content()
        body["_embedded"]["unsorted"] = [
            render_unsorted(s, u) for u in body["_embedded"]["unsorted"]
        ]
        return hal(body)


@bp.get("/summary")
def summary() -> Response:
    """Counts of incoming leads: total, accepted, declined, per category."""
    s = store()
    with s.lock:
        filters = parse_nested(request.args, "filter")
        items = apply_filters(
            list(s.data["unsorted"].values()),
            filters,
            {"uid", "created_at", "pipeline_id"},
        )
        processed = [u for u in items if u["_processed_at"]]
        sort_times = [u["_processed_at"] - u["created_at"] for u in processed]
        categories = {"forms": 0, "sip": 0, "chats": 0, "mail": 0}
        for u in items:
            if u["_state"] == "pending":
                categories[u["category"]] = categories.get(u["category"], 0) + 1
        return hal(
            {
                "total": len(items),
                "accepted": sum(1 for u in items if u["_state"] == "accepted"),
                "declined": sum(1 for u in items if u["_state"] == "declined"),
                "average_sort_time": (
                    int(sum(sort_times) / len(sort_times)) if sort_times else 0
                ),
                "categories": categories,
            }
        )


@bp.get("/<uid>")
def get_unsorted(uid: str) -> Response:
    """One incoming lead by uid."""
    s = store()
    with s.lock:
        item = s.data["unsorted"].get(uid)
        if item is None:
            return no_content()
        return hal(render_unsorted(s, item))


def _pending(s: Store, uid: str) -> dict[str, Any]:
    item = s.data["unsorted"].get(uid)
    if item is None:
        raise ApiError(404, "Unsorted not found")
    if item["_state"] != "pending":
        raise ApiError(400, f"Unsorted is already {item['_state']}")
    return item


def _optional_body() -> dict[str, Any]:
    if not request.get_data(cache=True).strip():
        return {}
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be an object")
    return body


def _processed(s: Store, item: dict[str, Any]) -> Response:
    return hal(
        {
            "uid": item["uid"],
            "category": item["category"],
            "pipeline_id": item["pipeline_id"],
            "created_at": item["created_at"],
            "_embedded": {
                "leads": _ids("leads", item["_lead_ids"]),
                "contacts": _ids("contacts", item["_contact_ids"]),
                "companies": _ids("companies", item["_company_ids"]),
            },
            "_links": link(f"/api/v4/leads/unsorted/{item['uid']}"),
        }
    )


@bp.post("/<uid>/accept")
def accept(uid: str) -> Response:
    """Accept: the lead leaves Incoming leads, its contacts become visible."""
    s = store()
    body = _optional_body()
    with s.lock:
        item = _pending(s, uid)
        errors = []
        user_id = body.get("user_id")
        if user_id is not None and (not is_int(user_id) or s.user(user_id) is None):
            errors.append(FieldError.not_a_choice("user_id"))
        pipeline = s.pipeline(item["pipeline_id"]) or s.main_pipeline()
        status_id = body.get("status_id")
        if status_id is not None and not any(
            st["id"] == status_id and st["type"] == 0 for st in pipeline["statuses"]
        ):
            errors.append(FieldError.not_a_choice("status_id"))
        if errors:
            raise ValidationFailed([("0", errors)])
        ts = now()
        for lead_id in item["_lead_ids"]:
            lead = s.entities("leads")[lead_id]
            lead["status_id"] = status_id or first_stage(pipeline)
            lead["updated_at"] = ts
            if user_id:
                lead["responsible_user_id"] = user_id
        for contact_id in item["_contact_ids"]:
            contact = s.entities("contacts")[contact_id]
            contact["is_unsorted"] = False
            if user_id:
                contact["responsible_user_id"] = user_id
        item["_state"] = "accepted"
        item["_processed_at"] = ts
        s.touch()
        return _processed(s, item)


@bp.delete("/<uid>/decline")
def decline(uid: str) -> Response:
    """Decline: the incoming lead and what it created are deleted."""
    s = store()
    _optional_body()
    with s.lock:
        item = _pending(s, uid)
        ts = now()
        for entity, key in (
            ("leads", "_lead_ids"),
            ("contacts", "_contact_ids"),
            ("companies", "_company_ids"),
        ):
            for entity_id in item[key]:
                obj = s.entities(entity)[entity_id]
                obj["is_deleted"] = True
                obj["updated_at"] = ts
        item["_state"] = "declined"
        item["_processed_at"] = ts
        s.touch()
        return _processed(s, item)


@bp.post("/<uid>/link")
def link_unsorted(uid: str) -> Response:
    """Linking works for chats and mail only; forms and sip are refused."""
    s = store()
    with s.lock:
        item = _pending(s, uid)
        if item["category"] not in ("chats", "mail"):
            raise ApiError(400, "Linking is available for chats and mail only")
        return _processed(s, item)
