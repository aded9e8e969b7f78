"""Duplicate control: a section's ``duplicates`` rendered into a :class:`DuplicateRule`.

Each ``match`` item becomes a :class:`~flask_amocrm.dedup.Criterion` carrying this
event's values, already normalised the way :mod:`flask_amocrm.dedup` compares them
(phones in E.164, e-mails lower-cased, texts folded, list values by enum id), and the
texts to search amoCRM with. The worker's lookup step does the searching.
"""

from __future__ import annotations

from typing import Any

from ...dedup import (
    Criterion,
    DuplicateRule,
    normalize_email,
    normalize_phone,
    normalize_text,
    parse_within,
    phone_query,
)
from ...vocabulary import CORE_KEYS, STANDARD_FIELDS
from ..fields import ENUM_TYPES
from .builder import PlanBuilder

#: The payload key a core ``match`` item compares (``name`` is compared apart).
_CORE_PAYLOAD = {"price": "price", "pipeline": "pipeline_id", "status": "status_id"}


def duplicates(
    b: PlanBuilder,
    key: str,
    section: dict[str, Any],
    where: str,
    payload: dict[str, Any],
) -> DuplicateRule | None:
    """The section's ``duplicates``, with this event's values to compare."""
    setting = section.get("duplicates")
    if not setting:
        return None
    where = f"{where}.duplicates"
    criteria = [
        criterion(b, key, item, f"{where}.match", payload) for item in setting["match"]
    ]
    return DuplicateRule(
        key=key,
        criteria=criteria,
        require=setting.get("require", "any"),
        strategy=setting["strategy"],
        scope=setting.get("scope", "contact"),
        open_only=bool(setting.get("open_only", False)),
        within=parse_within(setting["within"]) if "within" in setting else None,
        now=b.env.timestamp(),
        region=b.env.phone_region,
    )


def criterion(
    b: PlanBuilder, key: str, item: Any, where: str, payload: dict[str, Any]
) -> Criterion:
    """One ``match`` item: a core key (``name``, ``price``, ``pipeline``,
    ``status``), a standard key (``phone``, ``email`` ...) or a field."""
    text = str(item)
    if text in CORE_KEYS[key]:
        return _core(text, payload)
    code = STANDARD_FIELDS[key].get(text.lower(), item)
    fdef = b.resolve_field(key, code, where)
    assert fdef is not None
    field_id = fdef.get("id")
    field_code = fdef.get("code")
    compare = (
        "phone"
        if field_code == "PHONE"
        else "email"
        if field_code == "EMAIL"
        else "enum"
        if fdef.get("type") in ENUM_TYPES
        else "text"
    )
    region = b.env.phone_region
    values: list[str] = []
    queries: list[str] = []
    for have in payload.get("custom_fields_values") or []:
        same = (field_id is not None and have.get("field_id") == field_id) or (
            field_code is not None and have.get("field_code") == field_code
        )
        if not same:
            continue
        for v in have.get("values") or []:
            raw = v.get("value")
            query: str | None
            if compare == "phone":
                norm, query = normalize_phone(raw, region), phone_query(raw, region)
            elif compare == "email":
                norm = query = normalize_email(raw)
            elif compare == "enum":
                norm = (
                    f"enum:{v['enum_id']}"
                    if v.get("enum_id") is not None
                    else normalize_text(raw)
                )
                query = None
            else:
                norm = normalize_text(raw)
                query = (
                    " ".join(str(raw).split())
                    if isinstance(raw, str) and norm
                    else None
                )
            if norm and norm not in values:
                values.append(norm)
                if query:
                    queries.append(query)
    return Criterion(
        text,
        "field",
        compare,
        field_id,
        str(field_code) if field_code else None,
        tuple(values),
        tuple(queries),
    )


def _core(text: str, payload: dict[str, Any]) -> Criterion:
    if text == "name":
        name = payload.get("name") or " ".join(
            str(payload[k]) for k in ("first_name", "last_name") if payload.get(k)
        )
        value = normalize_text(name)
        return Criterion(
            text,
            "name",
            values=(value,) if value else (),
            queries=(" ".join(name.split()),) if value else (),
        )
    raw = payload.get(_CORE_PAYLOAD[text])
    value = normalize_text(raw) if raw is not None else None
    return Criterion(text, text, values=(value,) if value else ())


__all__ = ["criterion", "duplicates"]
