"""``POST /api/v4/leads/complex``: a lead with its contact and company in one call.

Limits: 50 leads per call, one contact and one company per lead,
40 field values per entity. The answer is a bare array with ``merged`` flags.
Duplicate control is an account setting (off by default, switched with
``/_sandbox/config``); it looks only at data that existed before the request.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from ..errors import INVALID_TYPE, FieldError
from ..fields import apply_values, validate_values
from ..records import (
    LOST,
    WON,
    add_link,
    apply_item,
    check_item,
    is_int,
    linked_ids,
    set_source,
    unsorted_stage,
)
from ..search import digits
from ..store import Store
from .common import hal, json_array, raise_if_errors, request_id, store
from .unsorted import check_metadata, create_unsorted

bp = Blueprint("sandbox_complex", __name__, url_prefix="/api/v4")

MAX_COMPLEX = 50
MAX_VALUES = 40
# Symfony's Count constraint is what amoCRM's validator most likely reports here.
TOO_MANY = "Count"
LEAD_EMBEDDED = {"tags", "contacts", "companies", "metadata", "source"}


def _check_sub(s: Store, entity: str, sub: Any, prefix: str) -> list[FieldError]:
    """A contact or company inside a complex lead: ``{id}`` or a full object."""
    if not isinstance(sub, dict):
        return [
            FieldError(INVALID_TYPE, prefix, "This value should be of type object.")
        ]
    if "id" in sub:
        if not is_int(sub["id"]) or sub["id"] not in s.entities(entity):
            return [FieldError.not_a_choice(f"{prefix}.id")]
        errors = check_item(
            s,
            entity,
            sub,
            existing=s.entities(entity)[sub["id"]],
            creating=False,
            embedded_allowed={"tags"},
        )
    else:
        errors = check_item(s, entity, sub, embedded_allowed={"tags"})
    for err in errors:
        err.path = f"{prefix}.{err.path}".rstrip(".")
    return errors + _count_values(sub, prefix)


def _count_values(item: dict[str, Any], prefix: str = "") -> list[FieldError]:
    values = item.get("custom_fields_values")
    if isinstance(values, list) and len(values) > MAX_VALUES:
        path = f"{prefix}.custom_fields_values" if prefix else "custom_fields_values"
        return [
            FieldError(
                TOO_MANY,
                path,
                f"This collection should contain {MAX_VALUES} elements or less.",
            )
        ]
    return []


def _check_lead(s: Store, item: Any) -> list[FieldError]:
    if not isinstance(item, dict):
        return [FieldError(INVALID_TYPE, "", "This value should be of type object.")]
    errors = check_item(s, "leads", item, embedded_allowed=LEAD_EMBEDDED)
    errors += _count_values(item)
    embedded = item.get("_embedded") or {}
    if not isinstance(embedded, dict):
        return errors
    for entity in ("contacts", "companies"):
        group = embedded.get(entity)
        if group is None:
            continue
        if not isinstance(group, list):
            errors.append(
                FieldError(
                    INVALID_TYPE,
                    f"_embedded.{entity}",
                    "This value should be of type array.",
                )
            )
            continue
        if len(group) > 1:
            errors.append(
                FieldError(
                    TOO_MANY,
                    f"_embedded.{entity}",
                    "This collection should contain 1 element or less.",
                )
            )
        for i, sub in enumerate(group[:1]):
            errors += _check_sub(s, entity, sub, f"_embedded.{entity}.{i}")
    metadata = embedded.get("metadata")
    if metadata is not None:
        category = metadata.get("category") if isinstance(metadata, dict) else None
        if category not in ("forms", "sip"):
            errors.append(FieldError.not_a_choice("_embedded.metadata.category"))
        else:
            errors += check_metadata(category, metadata, "_embedded.metadata")
    return errors


def _keys_of(obj: dict[str, Any]) -> tuple[set[str], set[str]]:
    """Phone tails and lower-cased e-mails of a contact (stored or submitted)."""
    phones, emails = set(), set()
    for item in obj.get("custom_fields_values") or []:
        code = item.get("field_code")
        for value in item.get("values") or []:
            raw = value.get("value") if isinstance(value, dict) else None
            if not isinstance(raw, (str, int)):
                continue
            if code == "PHONE":
                d = digits(str(raw))
                if len(d) >= 5:
                    phones.add(d[-10:])
            elif code == "EMAIL":
                emails.add(str(raw).strip().lower())
    return phones, emails


def _field_codes(s: Store, entity: str, item: dict[str, Any]) -> dict[str, Any]:
    """A submitted contact with field_id references resolved to field codes."""
    out = dict(item)
    values = []
    for cfv in item.get("custom_fields_values") or []:
        cfv = dict(cfv)
        if cfv.get("field_code") is None:
            field = next(
                (f for f in s.fields(entity) if f["id"] == cfv.get("field_id")), None
            )
            cfv["field_code"] = field["code"] if field else None
        values.append(cfv)
    out["custom_fields_values"] = values
    return out


def _find_duplicate(
    s: Store, contact: dict[str, Any], existing_ids: set[int]
) -> dict[str, Any] | None:
    phones, emails = _keys_of(_field_codes(s, "contacts", contact))
    if not phones and not emails:
        return None
    for cid in sorted(existing_ids):
        obj = s.entities("contacts").get(cid)
        if obj is None or obj.get("is_deleted") or obj.get("is_unsorted"):
            continue
        o_phones, o_emails = _keys_of(obj)
        if phones & o_phones or emails & o_emails:
            return obj
    return None


def _merge_contact(s: Store, obj: dict[str, Any], sub: dict[str, Any]) -> None:
    """Add a duplicate's new phones and e-mails to the existing contact.

    amoCRM merges into the existing contact instead of overwriting it; we add
    multitext values that are not there yet and set the other fields sent.
    """
    updates, _ = validate_values(s.fields("contacts"), sub.get("custom_fields_values"))
    merged = []
    current = {i["field_id"]: i for i in obj.get("custom_fields_values") or []}
    for field, values in updates:
        if field["type"] == "multitext" and field["id"] in current and values:
            have = {v["value"] for v in current[field["id"]]["values"]}
            values = current[field["id"]]["values"] + [
                v for v in values if v["value"] not in have
            ]
        merged.append((field, values))
    obj["custom_fields_values"] = apply_values(obj.get("custom_fields_values"), merged)
    rest = {k: v for k, v in sub.items() if k != "custom_fields_values"}
    apply_item(s, "contacts", rest, obj, link_embedded=False)


@bp.post("/leads/complex")
def create_complex() -> Response:
    """Create leads with one contact and one company each (bare-array answer)."""
    s = store()
    items = json_array(MAX_COMPLEX)
    with s.lock:
        rids = [request_id(item, i) for i, item in enumerate(items)]
        raise_if_errors(
            [(rid, _check_lead(s, item)) for rid, item in zip(rids, items, strict=True)]
        )
        existing_contacts = set(s.entities("contacts"))
        duplicate_control = bool(s.data["settings"].get("duplicate_control"))
        results = []
        for rid, item in zip(rids, items, strict=True):
            results.append(_apply(s, item, rid, existing_contacts, duplicate_control))
        return hal(results)


def _apply(
    s: Store,
    item: dict[str, Any],
    rid: str,
    existing_contacts: set[int],
    duplicate_control: bool,
) -> dict[str, Any]:
    embedded = item.get("_embedded") or {}
    contact_sub = (embedded.get("contacts") or [None])[0]
    company_sub = (embedded.get("companies") or [None])[0]
    metadata = embedded.get("metadata")
    lead_item = {k: v for k, v in item.items() if k != "_embedded"}
    lead_item["_embedded"] = {k: v for k, v in embedded.items() if k in ("tags",)}
    merged = False
    contact = company = lead = None

    if (
        contact_sub is not None
        and "id" not in contact_sub
        and duplicate_control
        and metadata is None
    ):
        contact = _find_duplicate(s, contact_sub, existing_contacts)
        if contact is not None:
            merged = True
            _merge_contact(s, contact, contact_sub)
    if contact is None and contact_sub is not None:
        existing = s.entities("contacts").get(contact_sub.get("id"))
        sub = {k: v for k, v in contact_sub.items() if k != "id"}
        contact = apply_item(s, "contacts", sub, existing, link_embedded=False)
    if company_sub is not None:
        existing = s.entities("companies").get(company_sub.get("id"))
        sub = {k: v for k, v in company_sub.items() if k != "id"}
        company = apply_item(s, "companies", sub, existing, link_embedded=False)
    elif merged and contact is not None:
        ids = linked_ids(s, "contacts", contact["id"], "companies")
        company = s.entities("companies").get(ids[0]) if ids else None

    if merged and contact is not None:
        # The duplicate's open lead is updated instead of creating another one.
        open_leads = [
            s.entities("leads")[lid]
            for lid in linked_ids(s, "contacts", contact["id"], "leads")
            if lid in s.entities("leads")
            and not s.entities("leads")[lid].get("is_deleted")
            and s.entities("leads")[lid]["status_id"] not in (WON, LOST)
        ]
        if open_leads:
            lead = max(open_leads, key=lambda o: (o["created_at"], o["id"]))
            apply_item(s, "leads", lead_item, lead, link_embedded=False)
    if lead is None:
        if metadata is not None:
            pipeline = s.pipeline(lead_item.get("pipeline_id")) or s.main_pipeline()
            lead_item["pipeline_id"] = pipeline["id"]
            # Metadata sends the lead to Incoming leads; any status_id is ignored.
            lead_item["status_id"] = unsorted_stage(pipeline)
        lead = apply_item(s, "leads", lead_item, link_embedded=False)
    if isinstance(embedded.get("source"), dict):
        set_source(s, lead, embedded["source"])
    if contact is not None:
        add_link(
            s, "leads", lead["id"], "contacts", contact["id"], {"main_contact": True}
        )
    if company is not None:
        add_link(s, "leads", lead["id"], "companies", company["id"])
        if contact is not None:
            add_link(s, "contacts", contact["id"], "companies", company["id"])
    if metadata is not None:
        if contact is not None and "id" not in contact_sub:
            contact["is_unsorted"] = True
        category = metadata.get("category", "forms")
        create_unsorted(
            s,
            category,
            source_uid=str(metadata.get("form_id") or metadata.get("uniq") or "api"),
            source_name=str(metadata.get("form_name") or "API"),
            pipeline_id=lead["pipeline_id"],
            metadata=metadata,
            lead_ids=[lead["id"]],
            contact_ids=[contact["id"]] if contact is not None else [],
            company_ids=[company["id"]] if company is not None else [],
        )
    return {
        "id": lead["id"],
        "contact_id": contact["id"] if contact is not None else None,
        "company_id": company["id"] if company is not None else None,
        "request_id": [rid],
        "merged": merged,
    }
