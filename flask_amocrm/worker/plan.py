"""Planning: render an event's rule into the amoCRM payload it becomes.

Pure functions: no Flask, no network. :func:`build_plan` returns a :class:`Plan` whose
``lead`` is one item of ``POST /api/v4/leads/complex`` (the lead with its contact and
company embedded), plus the warnings gathered on the way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import RuleError
from ..rules.templates import render_value

#: Standard field codes that are multitext (a value with an enum code).
_MULTITEXT = {"PHONE", "EMAIL", "IM"}
#: Campaign tags and the lead tracking field (``tracking_data``) each one fills.
TRACKING_FIELDS = {
    "utm_source": "UTM_SOURCE",
    "utm_medium": "UTM_MEDIUM",
    "utm_campaign": "UTM_CAMPAIGN",
    "utm_content": "UTM_CONTENT",
    "utm_term": "UTM_TERM",
    "utm_referrer": "UTM_REFERRER",
    "gclid": "GCLID",
    "yclid": "YCLID",
    "fbclid": "FBCLID",
    "roistat": "ROISTAT",
    "_ym_uid": "_YM_UID",
}


@dataclass
class Plan:
    """What one event becomes in amoCRM."""

    lead: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def template_variables(event: Any) -> dict[str, Any]:
    """The names a rule's templates see (DESIGN.md 3.1)."""
    context = event.context or {}
    data = event.data or {}
    return {
        "data": data,
        "form": event.source if event.kind == "form" else None,
        "event": event.source if event.kind == "mail" else None,
        "mail": data.get("mail", {}) if event.kind == "mail" else {},
        "utm": context.get("utm", {}),
        "utm_first": context.get("utm_first", {}),
        "page": context.get("page", {}),
        "site": context.get("site", {}),
        "client": context.get("client", {}),
        "cookies": context.get("cookies", {}),
        "files": event.files or [],
    }


def _field_values(
    fields: dict[str, Any], variables: dict[str, Any], where: str
) -> list[dict[str, Any]]:
    result = []
    for key, template in fields.items():
        value = render_value(template, variables, where=f"{where}.fields.{key}")
        values = value if isinstance(value, list) else [value]
        values = [v.strip() if isinstance(v, str) else v for v in values]
        values = [v for v in values if v not in (None, "")]
        if not values:
            continue  # amoCRM rejects empty values; an unfilled field is left alone
        if isinstance(values[0], dict):
            raise RuleError(f"{where}.fields.{key}: list values and enums by label need "
                            "the account metadata, which this version does not read yet")
        item: dict[str, Any]
        if str(key).isdigit():
            item = {"field_id": int(key)}
        elif str(key).upper() == key and " " not in str(key):
            item = {"field_code": key}
        else:
            raise RuleError(f"{where}.fields.{key}: fields by name need the account "
                            "metadata; give the field's numeric id or its code")
        if key in _MULTITEXT:
            item["values"] = [{"value": str(v), "enum_code": "WORK"} for v in values]
        else:
            item["values"] = [{"value": v} for v in values]
        result.append(item)
    return result


def _id(value: Any, where: str) -> int:
    text = str(value).strip()
    if not text.isdigit():
        raise RuleError(f"{where}: give the numeric id ({text!r} is a name, and names "
                        "need the account metadata, which this version does not read)")
    return int(text)


def _price(value: Any, variables: dict[str, Any], where: str,
           warnings: list[str]) -> int | None:
    parts = render_value(value if isinstance(value, list) else [value], variables,
                         where=where)
    total = 0.0
    seen = False
    for part in parts:
        text = str(part).strip().replace(" ", "").replace(",", ".")
        if not text:
            continue
        try:
            number = float(text)
        except ValueError:
            warnings.append(f"{where}: {part!r} is not a number and was left out")
            continue
        if not math.isfinite(number):
            warnings.append(f"{where}: {part!r} is not a number and was left out")
            continue
        total += number
        seen = True
    if not seen:
        return None
    rounded = round(total)
    if rounded != total:
        warnings.append(f"{where}: {total:g} was rounded to {rounded}")
    return int(rounded)


def _person(section: dict[str, Any], variables: dict[str, Any],
            where: str) -> dict[str, Any]:
    entity: dict[str, Any] = {}
    for key in ("name", "first_name", "last_name"):
        if key in section:
            text = str(render_value(section[key], variables, where=f"{where}.{key}"))
            if text.strip():
                entity[key] = text.strip()[:255]
    if "responsible" in section:
        entity["responsible_user_id"] = _id(section["responsible"],
                                            f"{where}.responsible")
    values = _field_values(section.get("fields", {}), variables, where)
    if values:
        entity["custom_fields_values"] = values
    return entity


def build_plan(rule: dict[str, Any], event: Any, *, where: str) -> Plan:
    """Render ``rule`` for ``event``. Raises :class:`RuleError` naming the key."""
    variables = template_variables(event)
    warnings: list[str] = []
    section = rule.get("lead", {})
    lead: dict[str, Any] = {}
    name = render_value(section.get("name", f"{event.source}"), variables,
                        where=f"{where}.lead.name")
    lead["name"] = str(name).strip()[:255] or str(event.source)
    if "price" in section:
        price = _price(section["price"], variables, f"{where}.lead.price", warnings)
        if price is not None:
            lead["price"] = price
    for key, api_key in (("pipeline", "pipeline_id"), ("status", "status_id"),
                         ("responsible", "responsible_user_id")):
        if key in section:
            lead[api_key] = _id(section[key], f"{where}.lead.{key}")
    visitor_uid = (variables["client"] or {}).get("visitor_uid")
    if section.get("visitor_uid"):
        visitor_uid = render_value(section["visitor_uid"], variables,
                                   where=f"{where}.lead.visitor_uid")
    if visitor_uid:
        lead["visitor_uid"] = str(visitor_uid)

    values = _field_values(section.get("fields", {}), variables, f"{where}.lead")
    if rule.get("tracking", True):
        present = {v.get("field_code") for v in values}
        for tag, code in TRACKING_FIELDS.items():
            tag_value = variables["utm"].get(tag)
            if tag_value and code not in present:
                values.append({"field_code": code, "values": [{"value": tag_value}]})
        referrer = variables["page"].get("landing_referrer") or variables["page"].get(
            "referrer"
        )
        if referrer and "REFERRER" not in present:
            values.append({"field_code": "REFERRER",
                           "values": [{"value": str(referrer)[:255]}]})
    if values:
        lead["custom_fields_values"] = values

    embedded: dict[str, Any] = {}
    tags = section.get("tags", [])
    tags = render_value(tags if isinstance(tags, list) else [tags], variables,
                        where=f"{where}.lead.tags")
    tag_names = []
    for tag in tags:
        text = str(tag).strip()[:100]
        if text and text not in tag_names:
            tag_names.append(text)
    if tag_names:
        embedded["tags"] = [{"name": t} for t in tag_names]
    if "contact" in rule:
        contact = _person(rule["contact"], variables, f"{where}.contact")
        if contact:
            embedded["contacts"] = [contact]
    if "company" in rule:
        company = _person(rule["company"], variables, f"{where}.company")
        if company:
            embedded["companies"] = [company]
    if embedded:
        lead["_embedded"] = embedded
    return Plan(lead=lead, warnings=warnings)
