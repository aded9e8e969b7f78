"""Leads, contacts and companies: validation, writes, links, tags and rendering.

Views validate a whole batch first and then apply it, so a batch with one bad item
changes nothing (the real API answers such a batch with 400 and creates nothing).
Internal keys of stored objects start with ``_`` and are never rendered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import events
from .errors import INVALID_TYPE, NOT_BLANK, NOT_EXPECTED, FieldError
from .fields import apply_values, validate_values
from .store import Store, now

ENTITIES = ("leads", "contacts", "companies")
SINGULAR = {"leads": "lead", "contacts": "contact", "companies": "company"}
WON, LOST = 142, 143

COMMON_KEYS = {
    "id",
    "request_id",
    "custom_fields_values",
    "responsible_user_id",
    "created_by",
    "updated_by",
    "created_at",
    "updated_at",
    "_embedded",
    "tags_to_add",
    "tags_to_delete",
}
# Read-only keys a client may echo back from a GET; the API ignores them. The
# same rule holds on every entity (leads, contacts, companies, tasks, notes):
# a fetched object sent back whole is accepted, its read-only keys unchanged;
# a key the entity never has is refused with ``NotExpected``.
IGNORED_KEYS = {
    "account_id",
    "_links",
    "is_deleted",
    "closest_task_at",
    "group_id",
    "score",
    "labor_cost",
    "is_unsorted",
    "is_price_modified_by_robot",
    "is_pinned",
}


def echoed_key_errors(item: dict[str, Any], writable: set[str]) -> list[FieldError]:
    """``NotExpected`` for the keys of ``item`` that are neither writable nor the
    read-only keys a GET returns. ``_embedded`` (an object) is accepted; each key
    inside it must be writable-embedded, and an entity with none refuses them."""
    errors = []
    for key in item:
        if key in writable or key in IGNORED_KEYS:
            continue
        if key == "_embedded":
            embedded = item[key]
            if embedded is not None and not isinstance(embedded, dict):
                errors.append(
                    FieldError(
                        INVALID_TYPE, key, "This value should be of type object."
                    )
                )
            for inner in embedded or {}:
                errors.append(
                    FieldError(
                        NOT_EXPECTED,
                        f"_embedded.{inner}",
                        "This field was not expected.",
                    )
                )
            continue
        errors.append(FieldError(NOT_EXPECTED, key, "This field was not expected."))
    return errors


ENTITY_KEYS = {
    "leads": COMMON_KEYS
    | {
        "name",
        "price",
        "status_id",
        "pipeline_id",
        "loss_reason_id",
        "closed_at",
        "visitor_uid",
        "source_id",
    },
    "contacts": COMMON_KEYS | {"name", "first_name", "last_name"},
    "companies": COMMON_KEYS | {"name"},
}
EMBEDDED_KEYS = {
    "leads": {"tags", "contacts", "companies", "source", "metadata"},
    # Contacts may name their company on create (amoCRM links it); amoCRM only
    # documents links for that, so this is a lenient guess.
    "contacts": {"tags", "companies"},
    "companies": {"tags"},
}
INT_KEYS = {
    "responsible_user_id",
    "created_by",
    "updated_by",
    "created_at",
    "updated_at",
    "status_id",
    "pipeline_id",
    "loss_reason_id",
    "closed_at",
    "price",
    "source_id",
}
STR_KEYS = {"name", "first_name", "last_name", "visitor_uid"}

# What may link to what, catalog elements and customers aside.
LINKABLE = {
    "leads": {"contacts", "companies"},
    "contacts": {"companies", "leads"},
    "companies": {"contacts", "leads"},
}


def is_int(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


# -- links ---------------------------------------------------------------------


def _key(entity: str, entity_id: int) -> str:
    return f"{entity}:{entity_id}"


def links_of(store: Store, entity: str, entity_id: int) -> list[dict[str, Any]]:
    """The links of one entity: ``[{to_entity_type, to_entity_id, metadata}]``."""
    return store.data["links"].get(_key(entity, entity_id), [])


def linked_ids(store: Store, entity: str, entity_id: int, to: str) -> list[int]:
    """IDs of ``to`` entities linked to ``entity`` ``entity_id``."""
    return [
        link["to_entity_id"]
        for link in links_of(store, entity, entity_id)
        if link["to_entity_type"] == to
    ]


def add_link(
    store: Store,
    entity: str,
    entity_id: int,
    to: str,
    to_id: int,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Link two entities both ways and return the forward link.

    A lead and a contact have at most one company each: a
    new company link replaces the old one, as the interface does.
    """
    metadata = dict(metadata or {})
    for a, a_id, b in ((entity, entity_id, to), (to, to_id, entity)):
        if b == "companies" and a in ("leads", "contacts"):
            for old in linked_ids(store, a, a_id, "companies"):
                if not (a == entity and old == to_id) and not (
                    a == to and old == entity_id
                ):
                    remove_link(store, a, a_id, "companies", old)
    forward = _put_link(store, entity, entity_id, to, to_id, metadata)
    _put_link(store, to, to_id, entity, entity_id, metadata)
    # The first contact of a lead is its main contact unless told otherwise.
    lead_side = None
    if entity == "leads" and to == "contacts":
        lead_side = (entity_id, to_id)
    elif entity == "contacts" and to == "leads":
        lead_side = (to_id, entity_id)
    if lead_side is not None:
        lead_id, contact_id = lead_side
        contact_links = [
            lk
            for lk in links_of(store, "leads", lead_id)
            if lk["to_entity_type"] == "contacts"
        ]
        wants_main = metadata.get("main_contact") is True or metadata.get("is_main")
        if wants_main or len(contact_links) == 1:
            _set_main(store, lead_id, contact_id)
    store.touch()
    return forward


def _set_main(store: Store, lead_id: int, contact_id: int) -> None:
    for lk in links_of(store, "leads", lead_id):
        if lk["to_entity_type"] == "contacts":
            lk["metadata"]["main_contact"] = lk["to_entity_id"] == contact_id
    for lk in links_of(store, "contacts", contact_id):
        if lk["to_entity_type"] == "leads" and lk["to_entity_id"] == lead_id:
            lk["metadata"]["main_contact"] = True


def _put_link(
    store: Store,
    entity: str,
    entity_id: int,
    to: str,
    to_id: int,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    items = store.data["links"].setdefault(_key(entity, entity_id), [])
    for link in items:
        if link["to_entity_type"] == to and link["to_entity_id"] == to_id:
            link["metadata"].update(metadata)
            return link
    link = {"to_entity_id": to_id, "to_entity_type": to, "metadata": dict(metadata)}
    items.append(link)
    return link


def remove_link(store: Store, entity: str, entity_id: int, to: str, to_id: int) -> None:
    """Unlink two entities both ways."""
    for a, a_id, b, b_id in (
        (entity, entity_id, to, to_id),
        (to, to_id, entity, entity_id),
    ):
        key = _key(a, a_id)
        items = store.data["links"].get(key, [])
        items[:] = [
            lk
            for lk in items
            if not (lk["to_entity_type"] == b and lk["to_entity_id"] == b_id)
        ]
        if not items:
            store.data["links"].pop(key, None)
    store.touch()


# -- tags ----------------------------------------------------------------------


def find_tag(
    store: Store, entity: str, tag_id: Any = None, name: Any = None
) -> dict[str, Any] | None:
    """A tag of ``entity`` by id or exact name."""
    tags = store.data["tags"][entity]
    if tag_id is not None:
        return tags.get(tag_id) if is_int(tag_id) else None
    for tag in tags.values():
        if tag["name"] == name:
            return tag
    return None


def create_tag(
    store: Store, entity: str, name: str, color: str | None = None
) -> dict[str, Any]:
    """Create a tag (or return the one with that name: names are unique)."""
    existing = find_tag(store, entity, name=name)
    if existing is not None:
        return existing
    tag = {"id": store.next_id("tags"), "name": name, "color": color}
    store.data["tags"][entity][tag["id"]] = tag
    store.touch()
    return tag


def check_tag_refs(store: Store, entity: str, refs: Any, path: str) -> list[FieldError]:
    """Validate ``[{id}|{name}]`` tag references."""
    if refs is None:
        return []
    if not isinstance(refs, list):
        return [FieldError(INVALID_TYPE, path, "This value should be of type array.")]
    errors = []
    for i, ref in enumerate(refs):
        p = f"{path}.{i}"
        if not isinstance(ref, dict) or ("id" not in ref and "name" not in ref):
            errors.append(FieldError(INVALID_TYPE, p, "A tag needs an id or a name."))
            continue
        for key in ref:
            if key not in ("id", "name", "color"):
                errors.append(
                    FieldError(
                        NOT_EXPECTED, f"{p}.{key}", "This field was not expected."
                    )
                )
        if "id" in ref and ref["id"] is not None:
            if find_tag(store, entity, tag_id=ref["id"]) is None:
                errors.append(FieldError.not_a_choice(f"{p}.id"))
        elif not isinstance(ref.get("name"), str) or not ref["name"].strip():
            errors.append(
                FieldError(
                    INVALID_TYPE, f"{p}.name", "This value should be of type string."
                )
            )
    return errors


def resolve_tags(store: Store, entity: str, refs: list[dict[str, Any]]) -> list[int]:
    """Tag ids for references, creating tags given by new names."""
    ids = []
    for ref in refs:
        if ref.get("id") is not None:
            tag_id = ref["id"]
        else:
            tag_id = create_tag(store, entity, ref["name"].strip())["id"]
        if tag_id not in ids:
            ids.append(tag_id)
    return ids


def render_tags(store: Store, entity: str, tag_ids: list[int]) -> list[dict[str, Any]]:
    """``_embedded.tags`` of an entity."""
    tags = store.data["tags"][entity]
    return [
        {"id": t, "name": tags[t]["name"], "color": tags[t].get("color")}
        for t in tag_ids
        if t in tags
    ]


# -- validation ----------------------------------------------------------------


def check_item(
    store: Store,
    entity: str,
    item: Any,
    *,
    existing: dict[str, Any] | None = None,
    creating: bool = True,
    embedded_allowed: set[str] | None = None,
) -> list[FieldError]:
    """All validation errors of one create/update item of ``entity``."""
    if not isinstance(item, dict):
        return [FieldError(INVALID_TYPE, "", "This value should be of type object.")]
    errors: list[FieldError] = []
    allowed = ENTITY_KEYS[entity]
    for key, value in item.items():
        if key in IGNORED_KEYS:
            continue
        if key not in allowed:
            errors.append(FieldError(NOT_EXPECTED, key, "This field was not expected."))
            continue
        if key in INT_KEYS and value is not None and not is_int(value):
            errors.append(
                FieldError(INVALID_TYPE, key, "This value should be of type int.")
            )
        if key in STR_KEYS and value is not None and not isinstance(value, str):
            errors.append(
                FieldError(INVALID_TYPE, key, "This value should be of type string.")
            )
    if creating and "id" in item:
        errors.append(FieldError(NOT_EXPECTED, "id", "This field was not expected."))
    for key in ("responsible_user_id", "created_by", "updated_by"):
        value = item.get(key)
        if is_int(value) and value != 0 and store.user(value) is None:
            errors.append(FieldError.not_a_choice(key))
        if key == "responsible_user_id" and value == 0:
            errors.append(FieldError.not_a_choice(key))
    if entity == "leads":
        errors += _check_pipeline(store, item, existing)
    _, field_errors = validate_values(
        store.fields(entity), item.get("custom_fields_values")
    )
    errors += field_errors
    embedded = item.get("_embedded")
    if embedded is not None:
        if not isinstance(embedded, dict):
            errors.append(
                FieldError(
                    INVALID_TYPE, "_embedded", "This value should be of type object."
                )
            )
        else:
            ok_keys = embedded_allowed or EMBEDDED_KEYS[entity]
            for key in embedded:
                if key not in ok_keys:
                    errors.append(
                        FieldError(
                            NOT_EXPECTED,
                            f"_embedded.{key}",
                            "This field was not expected.",
                        )
                    )
            errors += check_tag_refs(
                store, entity, embedded.get("tags"), "_embedded.tags"
            )
            if entity == "leads" and "source" in embedded and creating:
                errors += check_source(store, embedded["source"], "_embedded.source")
            if creating:
                for target in ("contacts", "companies"):
                    if (
                        target in embedded
                        and target in ok_keys
                        and embedded_allowed is None
                    ):
                        errors += _check_refs(
                            store, target, embedded[target], f"_embedded.{target}"
                        )
    for key in ("tags_to_add", "tags_to_delete"):
        if key in item:
            errors += check_tag_refs(store, entity, item[key], key)
    return errors


def _check_refs(store: Store, target: str, refs: Any, path: str) -> list[FieldError]:
    if not isinstance(refs, list):
        return [FieldError(INVALID_TYPE, path, "This value should be of type array.")]
    errors = []
    for i, ref in enumerate(refs):
        ref_id = ref.get("id") if isinstance(ref, dict) else None
        if not is_int(ref_id) or ref_id not in store.entities(target):
            errors.append(FieldError.not_a_choice(f"{path}.{i}.id"))
    if target == "companies" and len(refs) > 1:
        errors.append(FieldError(INVALID_TYPE, path, "A lead has at most one company."))
    return errors


def resolve_status(
    store: Store, item: dict[str, Any], existing: dict[str, Any] | None
) -> tuple[int | None, int | None]:
    """``(pipeline_id, status_id)`` a lead ends up with, or None where invalid."""
    pipeline_id = item.get("pipeline_id")
    status_id = item.get("status_id")
    if pipeline_id is None and status_id is None:
        if existing is not None:
            return existing["pipeline_id"], existing["status_id"]
        pipeline = store.main_pipeline()
        return pipeline["id"], first_stage(pipeline)
    if pipeline_id is not None:
        pipeline = store.pipeline(pipeline_id)
        if pipeline is None:
            return None, None
        if status_id is None:
            if existing is not None and existing["pipeline_id"] == pipeline_id:
                return pipeline_id, existing["status_id"]
            return pipeline_id, first_stage(pipeline)
        if any(s["id"] == status_id for s in pipeline["statuses"]):
            return pipeline_id, status_id
        return pipeline_id, None
    # status_id alone: 142/143 stay in the lead's pipeline (or the main one);
    # other status ids are unique, so they name their pipeline.
    if status_id in (WON, LOST):
        pid = existing["pipeline_id"] if existing else store.main_pipeline()["id"]
        return pid, status_id
    for pipeline in store.data["pipelines"]:
        if any(s["id"] == status_id for s in pipeline["statuses"]):
            return pipeline["id"], status_id
    return None, None


def first_stage(pipeline: dict[str, Any]) -> int:
    """The first regular stage (type 0) of a pipeline, where new leads land."""
    regular = [
        s for s in pipeline["statuses"] if s["type"] == 0 and s["id"] not in (WON, LOST)
    ]
    return sorted(regular, key=lambda s: s["sort"])[0]["id"]


def unsorted_stage(pipeline: dict[str, Any]) -> int:
    """The Incoming-leads stage (type 1) of a pipeline."""
    for status in pipeline["statuses"]:
        if status["type"] == 1:
            return status["id"]
    return first_stage(pipeline)


def _check_pipeline(
    store: Store, item: dict[str, Any], existing: dict[str, Any] | None
) -> list[FieldError]:
    pid = item.get("pipeline_id")
    sid = item.get("status_id")
    if (pid is not None and not is_int(pid)) or (sid is not None and not is_int(sid)):
        return []  # already reported as InvalidType
    pipeline_id, status_id = resolve_status(store, item, existing)
    if pipeline_id is None and pid is not None:
        return [FieldError.not_a_choice("pipeline_id")]
    if status_id is None:
        return [FieldError.not_a_choice("status_id")]
    return []


# -- writes --------------------------------------------------------------------


# -- sources -------------------------------------------------------------------


def find_source(store: Store, external_id: Any) -> dict[str, Any] | None:
    """The integration's source with this ``external_id``, or None."""
    for source in store.data["sources"].values():
        if source["external_id"] == external_id:
            return source
    return None


def check_source(store: Store, ref: Any, path: str) -> list[FieldError]:
    """A lead's ``_embedded.source``: ``{"external_id": ..., "type": "widget"}``
    naming one of the integration's sources."""
    if not isinstance(ref, dict):
        return [FieldError(INVALID_TYPE, path, "This value should be of type object.")]
    if not isinstance(ref.get("external_id"), str) or not ref["external_id"]:
        return [
            FieldError(
                NOT_BLANK, f"{path}.external_id", "This value should not be blank."
            )
        ]
    if find_source(store, ref["external_id"]) is None:
        return [FieldError.not_a_choice(f"{path}.external_id")]
    return []


def set_source(store: Store, lead: dict[str, Any], ref: dict[str, Any]) -> None:
    """Give a new lead the source its ``_embedded.source`` names."""
    source = find_source(store, ref.get("external_id"))
    if source is not None:
        lead["source_id"] = source["id"]


def new_entity(store: Store, entity: str, ts: int) -> dict[str, Any]:
    """A blank stored entity with amoCRM's defaults."""
    admin = store.data["account"]["current_user_id"]
    obj: dict[str, Any] = {
        "id": store.next_id(entity),
        "name": "",
        "responsible_user_id": admin,
        "group_id": 0,
        "created_by": admin,
        "updated_by": admin,
        "created_at": ts,
        "updated_at": ts,
        "is_deleted": False,
        "custom_fields_values": None,
        "account_id": store.account_id,
        "_tags": [],
    }
    if entity == "leads":
        obj.update(
            {
                "price": 0,
                "status_id": None,
                "pipeline_id": None,
                "loss_reason_id": None,
                "closed_at": None,
                "score": None,
                "labor_cost": None,
                "source_id": None,
            }
        )
    if entity == "contacts":
        obj.update({"first_name": "", "last_name": "", "is_unsorted": False})
    return obj


def apply_item(
    store: Store,
    entity: str,
    item: dict[str, Any],
    existing: dict[str, Any] | None = None,
    *,
    link_embedded: bool = True,
) -> dict[str, Any]:
    """Create or update an entity from a validated item; returns the stored object."""
    ts = now()
    creating = existing is None
    before = events.snapshot(existing)
    obj = new_entity(store, entity, ts) if creating else existing
    for key in (
        "name",
        "first_name",
        "last_name",
        "price",
        "responsible_user_id",
        "loss_reason_id",
        "source_id",
    ):
        if key in item and key in ENTITY_KEYS[entity]:
            obj[key] = (
                item[key]
                if item[key] is not None
                else (0 if key == "price" else None if key != "name" else "")
            )
    for key in ("created_by", "updated_by", "created_at", "updated_at", "closed_at"):
        if item.get(key) is not None and key in ENTITY_KEYS[entity]:
            if key == "created_at" and not creating:
                continue
            obj[key] = item[key]
    if "updated_at" not in item:
        obj["updated_at"] = ts
    if creating and "created_by" in item and "updated_by" not in item:
        obj["updated_by"] = item["created_by"]
    if (
        entity == "contacts"
        and not item.get("name")
        and ("first_name" in item or "last_name" in item)
    ):
        obj["name"] = " ".join(
            p for p in (obj.get("first_name"), obj.get("last_name")) if p
        )
    if entity == "leads":
        if "visitor_uid" in item:
            obj["_visitor_uid"] = item["visitor_uid"]
        pipeline_id, status_id = resolve_status(store, item, existing)
        was_closed = obj.get("status_id") in (WON, LOST)
        obj["pipeline_id"], obj["status_id"] = pipeline_id, status_id
        if status_id in (WON, LOST):
            if not was_closed and item.get("closed_at") is None:
                obj["closed_at"] = ts
        elif was_closed and "closed_at" not in item:
            obj["closed_at"] = None
    updates, _ = validate_values(store.fields(entity), item.get("custom_fields_values"))
    if updates:
        obj["custom_fields_values"] = apply_values(
            obj.get("custom_fields_values"), updates
        )
    embedded = item.get("_embedded") or {}
    if (
        "_embedded" in item
        and isinstance(item["_embedded"], dict)
        and "tags" in item["_embedded"]
    ):
        # _embedded.tags replaces the whole set; null removes every tag.
        obj["_tags"] = resolve_tags(store, entity, embedded.get("tags") or [])
    if item.get("tags_to_add"):
        for tag_id in resolve_tags(store, entity, item["tags_to_add"]):
            if tag_id not in obj["_tags"]:
                obj["_tags"].append(tag_id)
    if item.get("tags_to_delete"):
        for ref in item["tags_to_delete"]:
            tag = find_tag(store, entity, tag_id=ref.get("id"), name=ref.get("name"))
            if tag is not None and tag["id"] in obj["_tags"]:
                obj["_tags"].remove(tag["id"])
    if creating and entity == "leads" and isinstance(embedded.get("source"), dict):
        set_source(store, obj, embedded["source"])
    store.entities(entity)[obj["id"]] = obj
    if creating and link_embedded:
        for target in ("contacts", "companies"):
            for ref in embedded.get(target) or []:
                meta = {}
                if target == "contacts" and ref.get("is_main"):
                    meta["main_contact"] = True
                add_link(store, entity, obj["id"], target, ref["id"], meta)
    events.entity_saved(store, entity, obj, before)
    store.touch()
    return obj


# -- reads ---------------------------------------------------------------------


def closest_task_at(store: Store, entity: str, entity_id: int) -> int | None:
    """The deadline of the entity's nearest open task."""
    times = [
        t["complete_till"]
        for t in store.data["tasks"].values()
        if t["entity_type"] == entity
        and t["entity_id"] == entity_id
        and not t["is_completed"]
    ]
    return min(times) if times else None


def render(
    store: Store,
    entity: str,
    obj: dict[str, Any],
    with_: set[str],
    link_fn: Callable[[str], dict[str, Any]],
) -> dict[str, Any]:
    """An entity as the API returns it."""
    out = {k: v for k, v in obj.items() if not k.startswith("_")}
    out["closest_task_at"] = closest_task_at(store, entity, obj["id"])
    if entity == "leads":
        if "source_id" not in with_:
            out.pop("source_id", None)
        if "is_price_modified_by_robot" in with_:
            out["is_price_modified_by_robot"] = False
    out["_links"] = link_fn(f"/api/v4/{entity}/{obj['id']}")
    embedded: dict[str, Any] = {"tags": render_tags(store, entity, obj["_tags"])}
    companies = linked_ids(store, entity, obj["id"], "companies")
    if entity in ("leads", "contacts"):
        embedded["companies"] = [
            {"id": c, "_links": link_fn(f"/api/v4/companies/{c}")}
            for c in companies[:1]
        ]
    if entity in ("leads", "companies") and "contacts" in with_:
        contacts = []
        for lk in links_of(store, entity, obj["id"]):
            if lk["to_entity_type"] == "contacts":
                entry = {"id": lk["to_entity_id"]}
                if entity == "leads":
                    entry["is_main"] = bool(lk["metadata"].get("main_contact"))
                entry["_links"] = link_fn(f"/api/v4/contacts/{lk['to_entity_id']}")
                contacts.append(entry)
        embedded["contacts"] = contacts
    if entity in ("contacts", "companies") and "leads" in with_:
        embedded["leads"] = [
            {"id": lid, "_links": link_fn(f"/api/v4/leads/{lid}")}
            for lid in linked_ids(store, entity, obj["id"], "leads")
        ]
    if entity == "leads":
        if "loss_reason" in with_:
            embedded["loss_reason"] = []
        source = store.data["sources"].get(obj.get("source_id"))
        if "source" in with_ and obj.get("source_id"):
            # As amoCRM answers with=source: the source's id and name.
            embedded["source"] = {
                "id": obj["source_id"],
                "name": source["name"] if source else None,
            }
    out["_embedded"] = embedded
    return out
