"""Custom-field values in the shape amoCRM wants for each field type.

A rule gives a field's value as a rendered template (text), a number, a boolean, a
list (several values) or a table (``{enum = "Courier"}``, an address, a legal entity).
:func:`field_item` turns that into one ``custom_fields_values`` item for the field's
type. A value that cannot go into the field (an enum label that matches
nothing, a date or number that does not parse) never rejects the entity: it is left out
and reported in ``warnings``, whose lines end up in a note on the entity.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, tzinfo
from typing import Any

from ..errors import RuleError
from ..i18n import N_
from ..vocabulary import TRACKING_TAGS, fold
from .clean import LONG_LIMIT, TEXT_LIMIT, clean_text, parse_number

#: Types written as one line of text.
TEXT_TYPES = {"text", "url", "tracking_data", "streetaddress"}
#: Types written as a number.
NUMBER_TYPES = {"numeric", "monetary", "price"}
#: Types written as a timestamp.
DATE_TYPES = {"date", "birthday", "date_time"}
#: Types that pick one or several values of the field's list.
ENUM_TYPES = {"select", "radiobutton", "multiselect", "category"}
#: The parts of a ``smart_address`` value (its enum codes).
ADDRESS_PARTS = ("address_line_1", "address_line_2", "city", "state", "zip", "country")
#: The keys of a ``legal_entity`` value.
LEGAL_ENTITY_KEYS = (
    "name",
    "entity_type",
    "vat_id",
    "kpp",
    "tax_registration_reason_code",
    "address",
    "real_address",
    "bank_code",
    "bank_account_number",
    "external_uid",
    "unp",
    "bin",
    "egrpou",
    "mfo",
    "oked",
    "director",
)

#: Predefined field codes whose type is the same in every account, so a rule that uses
#: only these needs no account metadata. The lead's are the tracking fields
#: (``tracking_data``): the campaign tags' fields and Google's client id.
KNOWN_CODES: dict[str, dict[str, str]] = {
    "contacts": {
        "PHONE": "multitext",
        "EMAIL": "multitext",
        "IM": "multitext",
        "POSITION": "text",
    },
    "companies": {
        "PHONE": "multitext",
        "EMAIL": "multitext",
        "WEB": "url",
        "ADDRESS": "textarea",
    },
    "leads": {code: "tracking_data" for code in (*TRACKING_TAGS.values(), "GCLIENTID")},
}
#: The enum codes a multitext value takes when the rule names none.
DEFAULT_ENUM_CODE = {"PHONE": "WORK", "EMAIL": "WORK", "IM": "OTHER"}

_TRUE = {"1", "true", "yes", "y", "on", "checked", "да", "+", "x"}
_FALSE = {"0", "false", "no", "n", "off", "нет", "-", ""}


def known_field(entity: str, key: Any) -> dict[str, Any] | None:
    """A field description for a predefined code, without asking the account."""
    code = str(key)
    ftype = KNOWN_CODES.get(entity, {}).get(code)
    if ftype is None:
        return None
    return {"id": None, "code": code, "name": code, "type": ftype, "enums": None}


def label(field: dict[str, Any]) -> str:
    """How warnings name a field."""
    return str(field.get("name") or field.get("code") or field.get("id"))


def field_item(
    field: dict[str, Any],
    value: Any,
    *,
    where: str,
    warnings: list[str],
    tz: tzinfo,
) -> dict[str, Any] | None:
    """One ``custom_fields_values`` item for ``field`` (as
    :meth:`~flask_amocrm.amo.metadata.AccountMetadata.field` returns it), or ``None``
    when nothing usable is left of ``value`` (reasons go to ``warnings``)."""
    values = _values(field, value, where=where, warnings=warnings, tz=tz)
    if not values:
        return None
    item: dict[str, Any] = (
        {"field_id": int(field["id"])}
        if field.get("id") is not None
        else {"field_code": field["code"]}
    )
    item["values"] = values
    return item


def is_empty(value: Any) -> bool:
    """Whether a rendered value means "nothing": amoCRM rejects empty values, and an
    unfilled form field should leave the entity's field alone."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | tuple):
        return all(is_empty(v) for v in value)
    if isinstance(value, dict):
        return all(is_empty(v) for v in value.values())
    return False


def _listify(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return [v for v in value if not is_empty(v)]
    return [] if is_empty(value) else [value]


def _values(
    field: dict[str, Any], value: Any, *, where: str, warnings: list[str], tz: tzinfo
) -> list[dict[str, Any]]:
    ftype = field.get("type") or "text"
    name = label(field)
    items = _listify(value)
    if not items:
        return []
    single = ftype not in {"multiselect", "category", "multitext", "smart_address"}
    if single and len(items) > 1 and ftype not in TEXT_TYPES | {"textarea"}:
        warnings.append(
            N_(
                "%(field)s: takes one value; %(values)s left out",
                field=name,
                values=repr(items[1:]),
            )
        )
        items = items[:1]

    if ftype in TEXT_TYPES or ftype == "textarea":
        if len(items) > 1:  # several parts of one text field: join them
            items = [", ".join(str(_plain(v)) for v in items)]
        multiline = ftype == "textarea"
        limit = LONG_LIMIT if multiline else TEXT_LIMIT
        text = clean_text(
            _plain(items[0]),
            limit=limit,
            multiline=multiline,
            where=f"{name}",
            warnings=warnings,
        )
        return [{"value": text}] if text else []

    if ftype in NUMBER_TYPES:
        raw = _plain(items[0])
        number = parse_number(raw)
        if number is None:
            warnings.append(
                N_(
                    "%(field)s: %(value)s is not a number; it was not written",
                    field=name,
                    value=repr(raw),
                )
            )
            return []
        return [{"value": int(number) if number.is_integer() else number}]

    if ftype == "checkbox":
        raw = _plain(items[0])
        flag = to_bool(raw)
        if flag is None:
            warnings.append(
                N_(
                    "%(field)s: %(value)s is not yes or no; it was not written",
                    field=name,
                    value=repr(raw),
                )
            )
            return []
        return [{"value": flag}]

    if ftype in DATE_TYPES:
        raw = _plain(items[0])
        stamp = parse_when(raw, tz=tz, with_time=ftype == "date_time")
        if stamp is None:
            warnings.append(
                N_(
                    "%(field)s: %(value)s is not a date; it was not written",
                    field=name,
                    value=repr(raw),
                )
            )
            return []
        return [{"value": stamp}]

    if ftype in ENUM_TYPES:
        out: list[dict[str, Any]] = []
        for raw in items:
            enum = find_enum(field, raw)
            if enum is None:
                shown = _plain(raw)
                options = ", ".join(
                    str(e.get("value")) for e in field.get("enums") or []
                )
                warnings.append(
                    N_(
                        "%(field)s: %(value)s is not one of its values "
                        "(%(options)s); it was not written",
                        field=name,
                        value=repr(shown),
                        options=options,
                    )
                )
                continue
            if {"enum_id": enum} not in out:
                out.append({"enum_id": enum})
        return out

    if ftype == "multitext":
        out = []
        for raw in items:
            code = None
            if isinstance(raw, dict):
                code = raw.get("enum_code") or raw.get("enum") or raw.get("type")
                raw = raw.get("value")
            text = clean_text(raw, where=name, warnings=warnings)
            if not text:
                continue
            out.append({"value": text, **_multitext_enum(field, code, name, warnings)})
        return out

    if ftype == "smart_address":
        parts = items[0] if isinstance(items[0], dict) else {"address_line_1": items[0]}
        out = []
        for part, raw in parts.items():
            if part not in ADDRESS_PARTS:
                raise RuleError(
                    N_(
                        "%(where)s.%(part)s: an address has the parts %(parts)s",
                        where=where,
                        part=part,
                        parts=", ".join(ADDRESS_PARTS),
                    )
                )
            text = clean_text(raw, where=f"{name}.{part}", warnings=warnings)
            if text:
                out.append({"value": text, "enum_code": part})
        return out

    if ftype == "legal_entity":
        raw = items[0] if isinstance(items[0], dict) else {"name": items[0]}
        entity: dict[str, Any] = {}
        for key, part in raw.items():
            if key not in LEGAL_ENTITY_KEYS:
                raise RuleError(
                    N_(
                        "%(where)s.%(key)s: a legal entity has the keys %(keys)s",
                        where=where,
                        key=key,
                        keys=", ".join(LEGAL_ENTITY_KEYS),
                    )
                )
            if key == "entity_type":
                number = parse_number(part)
                if number in (1.0, 2.0):
                    entity[key] = int(number)
                else:
                    warnings.append(
                        N_(
                            "%(field)s: entity_type %(value)s is not 1 or 2",
                            field=name,
                            value=repr(part),
                        )
                    )
            elif not is_empty(part):
                entity[key] = clean_text(part, where=f"{name}.{key}", warnings=warnings)
        return [{"value": entity}] if entity else []

    if ftype == "file":
        warnings.append(
            N_(
                "%(field)s: file fields take amoCRM Drive files; the value "
                "%(value)s was not written",
                field=name,
                value=repr(_plain(items[0])),
            )
        )
        return []

    # chained_list, items, linked_entity ... : a table is sent as written.
    if isinstance(items[0], dict):
        return [dict(v) for v in items if isinstance(v, dict)]
    text = clean_text(_plain(items[0]), where=name, warnings=warnings)
    return [{"value": text}] if text else []


def _plain(value: Any) -> Any:
    """The value inside ``{value = ...}`` / ``{enum = ...}``, else the value."""
    if isinstance(value, dict):
        for key in ("value", "enum", "enum_id", "enum_code"):
            if key in value:
                return value[key]
    return value


def find_enum(field: dict[str, Any], raw: Any) -> int | None:
    """The id of the value of list ``field`` that ``raw`` names: an id, a label or a
    code (a table ``{enum = ...}`` too), compared without case; else ``None``."""
    enums = field.get("enums") or []
    if isinstance(raw, dict):
        if "enum_id" in raw:
            raw = raw["enum_id"]
        else:
            raw = raw.get("enum", raw.get("enum_code", raw.get("value")))
    if isinstance(raw, bool) or raw is None:
        return None
    text = " ".join(str(raw).split())
    if text.isdigit():
        for enum in enums:
            if enum.get("id") == int(text):
                return int(enum["id"])
    folded = fold(text)
    for attr in ("value", "code"):
        for enum in enums:
            if enum.get(attr) is not None and fold(enum[attr]) == folded:
                return int(enum["id"])
    return None


def _multitext_enum(
    field: dict[str, Any], code: Any, name: str, warnings: list[str]
) -> dict[str, Any]:
    enums = field.get("enums") or []
    wanted = (
        str(code).strip()
        if code
        else DEFAULT_ENUM_CODE.get(str(field.get("code")), "WORK")
    )
    if not enums:
        return {"enum_code": wanted.upper()}
    for enum in enums:
        for attr in ("code", "value"):
            if enum.get(attr) and str(enum[attr]).casefold() == wanted.casefold():
                return {"enum_id": int(enum["id"])}
    if code:
        warnings.append(
            N_(
                "%(field)s: there is no kind %(kind)s; written as %(value)s",
                field=name,
                kind=repr(code),
                value=enums[0].get("value"),
            )
        )
    return {"enum_id": int(enums[0]["id"])}


def to_bool(value: Any) -> bool | None:
    """``True``/``False`` for what a form sends for a checkbox, ``None`` if unclear."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    text = str(value).strip().casefold()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


_DATE_FORMATS = (
    "%Y-%m-%d",
    "%d.%m.%Y",
    "%d.%m.%y",
    "%d/%m/%Y",
    "%d-%m-%Y",
    "%Y/%m/%d",
    "%Y.%m.%d",
    "%d %m %Y",
)
_TIME_FORMATS = ("%H:%M", "%H:%M:%S", "%H.%M")
_STAMP = re.compile(r"^\d{9,11}$")
_SPACED_DAY = re.compile(r"^(\d{1,2} \d{1,2} \d{4})(?= |$)")


def parse_when(value: Any, *, tz: tzinfo, with_time: bool = True) -> int | None:
    """Unix seconds for a date or date-time written in a common way, read in ``tz``
    (the account's time zone): ``2024-05-17``, ``17.05.2024 14:30``, ``17/05/24``,
    ISO 8601 with an offset, or Unix seconds. A date alone means midnight.
    ``with_time=False`` drops the time of day (date and birthday fields)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, datetime):
        parsed: datetime | None = value
    elif isinstance(value, date):
        parsed = datetime.combine(value, time())
    elif isinstance(value, int | float):
        return int(value)
    else:
        text = " ".join(str(value).replace("T", " ").split())
        if _STAMP.match(text):
            return int(text)
        parsed = _parse_text(text)
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    if not with_time:
        local = parsed.astimezone(tz)
        parsed = datetime.combine(local.date(), time(), tzinfo=tz)
    return int(parsed.timestamp())


def _parse_text(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    spaced = _SPACED_DAY.match(text)  # "17 05 2024": the day's own spaces
    if spaced:
        day_part, time_part = spaced.group(1), text[spaced.end() :].strip()
    else:
        day_part, _, time_part = text.partition(" ")
    day = _parse_day(day_part)
    if day is None:
        return None
    if not time_part:
        return datetime.combine(day, time())
    for fmt in _TIME_FORMATS:
        try:
            clock = datetime.strptime(time_part, fmt).time()
        except ValueError:
            continue
        return datetime.combine(day, clock)
    return None


def _parse_day(text: str) -> date | None:
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    # 05/17/2024: the American order, when the day-first reading is impossible.
    try:
        return datetime.strptime(text, "%m/%d/%Y").date()
    except ValueError:
        return None
