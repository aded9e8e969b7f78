"""The lead, the contact and the company: names, price, fields, tracking, tags, lock.

A section's fields are its standard keys (``phone``, ``email`` ...: fields with a
predefined code) plus its ``fields`` table; a value left empty is not sent, so an
unfilled form field leaves the entity's field as it is. Campaign tags (``utm_*``,
``gclid`` ...) go to the lead's tracking fields the account has. ``lock`` names what
an update of an existing entity never changes.
"""

from __future__ import annotations

from typing import Any

from ...errors import RuleError
from ...i18n import N_
from ...vocabulary import LOCK_KEYS, STANDARD_FIELDS, TRACKING_TAGS
from ..clean import NAME_LIMIT, TAG_LIMIT, clean_text, parse_number
from ..fields import field_item, is_empty
from ..plan import EntityPlan
from ..signing import CHECK_VARIABLE, IdCheck, unsigned_id
from ..templates import render_value, signed_only
from .builder import PlanBuilder
from .duplicates import duplicates
from .people import pipeline_status, responsible

#: ``leads/complex`` refuses an entity with more field values than this.
MAX_FIELD_VALUES = 40


# -- what a section names (shared with ``flask amocrm check``) ----------------------


def section_fields(
    key: str, section: dict[str, Any], where: str
) -> dict[Any, tuple[str, Any]]:
    """The fields section ``key`` fills: field code or name → (its path in the
    rules, its value). The ``fields`` table wins over a standard key."""
    table = section.get("fields") or {}
    wanted: dict[Any, tuple[str, Any]] = {
        code: (f"{where}.{std}", section[std])
        for std, code in STANDARD_FIELDS[key].items()
        if std in section
    }
    for name, value in table.items():
        wanted[name] = (f"{where}.fields.{name}", value)
    return wanted


def lock_field(key: str, name: Any) -> Any | None:
    """The field a ``lock`` item of section ``key`` names (a standard key becomes
    its code), or ``None`` for a payload key (:data:`LOCK_KEYS`)."""
    if name in LOCK_KEYS:
        return None
    return STANDARD_FIELDS[key].get(str(name), name)


def tracking_targets(setting: Any) -> dict[str, tuple[Any, bool]]:
    """Campaign tag → (the lead field it fills, ``"note"`` or ``False``, whether the
    rule's ``tracking`` table names it). Tags the rule leaves out fill their
    standard tracking field when the account has it; marks without one go to a line
    of the lead's note (:func:`tracking`)."""
    if setting is False:
        return {}
    table = setting if isinstance(setting, dict) else {}
    targets: dict[str, tuple[Any, bool]] = {
        tag: (code, False) for tag, code in TRACKING_TAGS.items()
    }
    for tag, target in table.items():
        targets[tag] = (target, True)
    return targets


# -- sections ------------------------------------------------------------------------


def lead(b: PlanBuilder) -> EntityPlan | None:
    """The lead section (in unsorted mode there is always a lead)."""
    section = b.rule.get("lead")
    if section is None and not b.unsorted:
        return None
    section = section or {}
    where = f"{b.where}.lead"
    payload: dict[str, Any] = {}
    unsorted = b.rule.get("unsorted")
    name_template = section.get("name")
    if isinstance(unsorted, dict) and "name" in unsorted:
        name_template = unsorted["name"]
    if name_template is not None:
        payload["name"] = b.text(name_template, f"{where}.name", "lead")
    if not payload.get("name"):
        subject = (b.vars["mail"] or {}).get("subject")
        payload["name"] = clean_text(subject or b.event.source, limit=NAME_LIMIT)
    if "price" in section:
        amount = price(b, section["price"], f"{where}.price")
        if amount is not None:
            payload["price"] = amount
    pipeline_id, status_id = pipeline_status(b, section, where)
    if pipeline_id is not None:
        payload["pipeline_id"] = pipeline_id
    if status_id is not None:
        payload["status_id"] = status_id
    user_id = responsible(b, section, where, "lead")
    if user_id:
        payload["responsible_user_id"] = user_id
    visitor_uid = (b.vars["client"] or {}).get("visitor_uid")
    if "visitor_uid" in section:
        visitor_uid = b.render(section["visitor_uid"], f"{where}.visitor_uid")
    if not is_empty(visitor_uid):
        payload["visitor_uid"] = clean_text(visitor_uid, limit=100)
    values = fields(b, "lead", section, where)
    tracking(b, values)
    if values:
        payload["custom_fields_values"] = values
    tag_items = tags(b, section, where)
    if tag_items:
        payload["_embedded"] = {"tags": tag_items}
    return EntityPlan(
        "lead",
        payload,
        entity_id(b, section, where),
        lock(b, "lead", section, where),
        duplicates(b, "lead", section, where, payload),
    )


def person(b: PlanBuilder, key: str) -> EntityPlan | None:
    """The contact or company section; ``None`` when the visitor left all of it
    empty."""
    section = b.rule[key]
    where = f"{b.where}.{key}"
    payload: dict[str, Any] = {}
    names = ("name", "first_name", "last_name") if key == "contact" else ("name",)
    for name in names:
        if name in section:
            text = b.text(section[name], f"{where}.{name}", key)
            if text:
                payload[name] = text
    values = fields(b, key, section, where)
    if values:
        payload["custom_fields_values"] = values
    existing = entity_id(b, section, where)
    if not payload and existing is None:
        return None  # the visitor left everything about it empty
    user_id = responsible(b, section, where, key)
    if user_id:
        payload["responsible_user_id"] = user_id
    tag_items = tags(b, section, where)
    if tag_items:
        payload["_embedded"] = {"tags": tag_items}
    return EntityPlan(
        key,
        payload,
        existing,
        lock(b, key, section, where),
        duplicates(b, key, section, where, payload),
    )


def price(b: PlanBuilder, value: Any, where: str) -> int | None:
    """The lead's price: the sum of the parts that are numbers, rounded."""
    parts = b.render(value if isinstance(value, list) else [value], where)
    total = 0.0
    seen = False
    for part in parts:
        if is_empty(part):
            continue
        number = parse_number(part)
        if number is None:
            b.warn(
                "lead",
                N_(
                    "%(where)s: %(value)s is not a number and was not added to the "
                    "price",
                    where=where,
                    value=repr(part),
                ),
            )
            continue
        total += number
        seen = True
    if not seen:
        return None
    rounded = round(total)
    if rounded != total:
        b.plan.warnings.append(
            N_(
                "%(where)s: %(total)s was rounded to %(rounded)s",
                where=where,
                total=format(total, "g"),
                rounded=rounded,
            )
        )
    return int(rounded)


def entity_id(b: PlanBuilder, section: dict[str, Any], where: str) -> int | None:
    """The existing entity the section's ``id`` names, to update (not in unsorted
    mode)."""
    if "id" not in section or b.unsorted:
        return None
    key = where.rsplit(".", 1)[-1]
    template = section["id"]
    if isinstance(template, str) and "{" in template and not signed_only(template):
        raise RuleError(N_("%(where)s.id: %(why)s", where=where, why=unsigned_id(key)))
    variables = {**b.vars, CHECK_VARIABLE: IdCheck(key, b.env.secret_key)}
    value = render_value(template, variables, where=f"{where}.id")
    if is_empty(value):
        return None
    text = str(value).strip()
    if not text.isdigit():
        raise RuleError(
            N_(
                "%(where)s.id: %(value)s is not an entity id",
                where=where,
                value=repr(text),
            )
        )
    return int(text)


def tags(b: PlanBuilder, section: dict[str, Any], where: str) -> list[dict[str, str]]:
    """The section's ``tags``, each once."""
    value = section.get("tags") or []
    rendered = b.render(value if isinstance(value, list) else [value], f"{where}.tags")
    names: list[str] = []
    for tag in rendered:
        for part in tag if isinstance(tag, list) else [tag]:
            text = clean_text(part, limit=TAG_LIMIT)
            if text and text not in names:
                names.append(text)
    return [{"name": n} for n in names]


def fields(
    b: PlanBuilder, key: str, section: dict[str, Any], where: str
) -> list[dict[str, Any]]:
    """The section's ``custom_fields_values`` items, each field once."""
    items: list[dict[str, Any]] = []
    seen: set[Any] = set()
    for name, (path, template) in section_fields(key, section, where).items():
        value = b.render(template, path)
        if is_empty(value):
            continue  # amoCRM rejects empty values; an unfilled field stays as is
        fdef = b.resolve_field(key, name, path)
        assert fdef is not None
        notes: list[str] = []
        item = field_item(fdef, value, where=path, warnings=notes, tz=b.env.tz)
        for note in notes:
            b.warn(key, note)
        ident = item and (item.get("field_id") or item.get("field_code"))
        if item is not None and ident not in seen:
            seen.add(ident)
            items.append(item)
    return items


def tracking(b: PlanBuilder, items: list[dict[str, Any]]) -> None:
    """Add the visit's campaign tags to the lead's field ``items`` (a field the
    section fills itself is left as the section says)."""
    utm = b.vars["utm"] or {}
    page = b.vars["page"] or {}
    values = dict(utm)
    referrer = page.get("landing_referrer") or page.get("referrer")
    if referrer:
        values.setdefault("referrer", referrer)
    present = {i.get("field_id") for i in items} | {i.get("field_code") for i in items}
    setting = b.rule.get("tracking", True)
    targets = tracking_targets(setting)
    if setting is not False and b.rule.get("visit_note", True):
        for tag in values.keys() - targets.keys():
            targets[tag] = ("note", False)  # no standard field: the note's line
    for tag, (target, explicit) in targets.items():
        if target is False or is_empty(values.get(tag)):
            continue
        if target == "note":
            b.mark_lines.append((tag, str(values[tag])))
            continue
        where = f"{b.where}.tracking.{tag}"
        fdef = b.resolve_field("lead", target, where, required=explicit)
        if fdef is None:
            continue  # the account lacks this tracking field: nothing to fill
        notes: list[str] = []
        item = field_item(fdef, values[tag], where=where, warnings=notes, tz=b.env.tz)
        for note in notes:
            b.warn("lead", note)
        if item and (item.get("field_id") or item.get("field_code")) not in present:
            items.append(item)
    b.mark_lines.sort()


def lock(b: PlanBuilder, key: str, section: dict[str, Any], where: str) -> set[Any]:
    """What an update never sends: payload key names and field ids (or codes)."""
    out: set[Any] = set()
    for name in section.get("lock") or []:
        code = lock_field(key, name)
        if code is None:
            out.add(name)
            continue
        fdef = b.resolve_field(key, code, f"{where}.lock")
        assert fdef is not None
        out.add(fdef["id"] if fdef.get("id") is not None else fdef["code"])
    return out


def cap_fields(b: PlanBuilder) -> None:
    """amoCRM takes at most :data:`MAX_FIELD_VALUES` field values per entity in
    ``leads/complex``; what is over goes into the entity's note instead of getting
    the whole lead rejected. Room is kept for a file link and, on the lead, the
    event-id marker that delivery adds."""
    for entity in b.plan.entities():
        values = entity.payload.get("custom_fields_values") or []
        room = MAX_FIELD_VALUES - 1 - (entity.key == "lead")
        for item in values[room:]:
            ident = item.get("field_code") or item.get("field_id")
            shown = ", ".join(
                str(v.get("value", v.get("enum_id"))) for v in item.get("values") or []
            )
            b.warn(
                entity.key,
                N_(
                    "field %(field)s not sent (amoCRM takes at most %(max)s values "
                    "per entity): %(values)s",
                    field=ident,
                    max=MAX_FIELD_VALUES,
                    values=shown,
                ),
            )
        if len(values) > room:
            entity.payload["custom_fields_values"] = values[:room]


__all__ = [
    "MAX_FIELD_VALUES",
    "cap_fields",
    "fields",
    "lead",
    "lock",
    "lock_field",
    "person",
    "section_fields",
    "tracking",
    "tracking_targets",
]
