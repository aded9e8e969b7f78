"""Validation of ``custom_fields_values`` per field type.

A request names each field by ``field_id`` or ``field_code`` and gives ``values``.
This module checks every value against the field's type and returns the values in
the shape the API later reads back (with ``field_name``, ``field_type``, enum ids
and codes filled in). Errors carry amoCRM's codes and dotted paths.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .errors import INVALID_TYPE, NOT_BLANK, NOT_EXPECTED, FieldError

TEXT_TYPES = {"text", "textarea", "streetaddress", "tracking_data", "url"}
NUMBER_TYPES = {"numeric", "monetary"}
DATE_TYPES = {"date", "date_time", "birthday"}
ENUM_TYPES = {"select", "radiobutton", "multiselect", "multitext", "smart_address"}
OBJECT_TYPES = {"legal_entity", "file"}

# The keys a value object may carry, per type.
VALUE_KEYS: dict[str, set[str]] = {
    "select": {"value", "enum_id", "enum_code"},
    "multiselect": {"value", "enum_id", "enum_code"},
    # Only select is documented with enum_code; radiobutton enums have no codes.
    "radiobutton": {"value", "enum_id"},
    "multitext": {"value", "enum_id", "enum_code"},
    "smart_address": {"value", "enum_id", "enum_code"},
    "chained_list": {"catalog_id", "catalog_element_id"},
}
LEGAL_ENTITY_KEYS = {
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
}
FILE_KEYS = {"file_uuid", "version_uuid", "file_name", "file_size"}
# Keys of a custom_fields_values item. field_name/field_type/is_computed are what
# the API returns on reads; clients that send a read value back are accepted.
ITEM_KEYS = {
    "field_id",
    "field_code",
    "values",
    "field_name",
    "field_type",
    "is_computed",
}
SINGLE_VALUE_TYPES = (
    TEXT_TYPES
    | NUMBER_TYPES
    | DATE_TYPES
    | {"checkbox", "select", "radiobutton"}
    | OBJECT_TYPES
)


def find_field(
    fields: list[dict[str, Any]], field_id: Any = None, code: Any = None
) -> dict[str, Any] | None:
    """The field with ``field_id`` or ``code`` among ``fields``."""
    for field in fields:
        if field_id is not None and field["id"] == field_id:
            return field
        if field_id is None and code is not None and field["code"] == code:
            return field
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_time(value: Any, path: str) -> int:
    """Unix seconds from an int or an RFC 3339 string."""
    if _is_int(value):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                # Without an offset the account's timezone (UTC here) applies.
                parsed = parsed.replace(tzinfo=UTC)
            return int(parsed.timestamp())
    raise FieldError(
        INVALID_TYPE, path, "This value should be a timestamp or an RFC 3339 date."
    )


def _match_enum(
    field: dict[str, Any], value: dict[str, Any], path: str, ftype: str
) -> dict[str, Any]:
    enums = field.get("enums") or []
    if "enum_id" in value:
        for enum in enums:
            if enum["id"] == value["enum_id"]:
                return enum
        raise FieldError.not_a_choice(f"{path}.enum_id")
    if "enum_code" in value:
        for enum in enums:
            if enum.get("code") is not None and enum["code"] == value["enum_code"]:
                return enum
        raise FieldError.not_a_choice(f"{path}.enum_code")
    if ftype in ("multitext", "smart_address"):
        if ftype == "smart_address":
            raise FieldError(
                NOT_BLANK,
                f"{path}.enum_code",
                "Address values need an enum_code or enum_id.",
            )
        # A phone or e-mail without a type gets the first enum (WORK), as the
        # interface does when a value is typed without choosing its kind.
        return enums[0]
    if "value" in value:
        # Labels must match exactly: case and spaces count (as in amoCRM).
        for enum in enums:
            if enum["value"] == value["value"]:
                return enum
        raise FieldError.not_a_choice(f"{path}.value")
    raise FieldError(NOT_BLANK, path, "A value, enum_id or enum_code is required.")


def _check_value(field: dict[str, Any], value: Any, path: str) -> dict[str, Any]:
    """One value object → its stored form, or raise :class:`FieldError`."""
    ftype = field["type"]
    if not isinstance(value, dict):
        raise FieldError(INVALID_TYPE, path, "This value should be of type object.")
    allowed = VALUE_KEYS.get(ftype, {"value"})
    for key in value:
        if key not in allowed:
            raise FieldError(
                NOT_EXPECTED, f"{path}.{key}", "This field was not expected."
            )
    raw = value.get("value")
    vpath = f"{path}.value"
    if ftype in TEXT_TYPES:
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise FieldError(
                INVALID_TYPE, vpath, "This value should be of type string."
            )
        return {"value": str(raw)}
    if ftype in NUMBER_TYPES:
        if isinstance(raw, bool):
            raise FieldError(INVALID_TYPE, vpath, "This value should be a number.")
        if isinstance(raw, (int, float)):
            return {"value": str(raw)}
        if isinstance(raw, str):
            try:
                float(raw.replace(",", "."))
            except ValueError:
                pass
            else:
                return {"value": raw}
        raise FieldError(INVALID_TYPE, vpath, "This value should be a number.")
    if ftype == "checkbox":
        if isinstance(raw, bool):
            return {"value": raw}
        if raw in (0, 1):
            return {"value": bool(raw)}
        raise FieldError(INVALID_TYPE, vpath, "This value should be of type bool.")
    if ftype in DATE_TYPES:
        return {"value": _parse_time(raw, vpath)}
    if ftype in ("select", "radiobutton", "multiselect"):
        enum = _match_enum(field, value, path, ftype)
        out = {"value": enum["value"], "enum_id": enum["id"]}
        if ftype != "radiobutton":
            out["enum_code"] = enum.get("code")
        return out
    if ftype in ("multitext", "smart_address"):
        if not isinstance(raw, (str, int)) or isinstance(raw, bool) or raw == "":
            raise FieldError(
                INVALID_TYPE, vpath, "This value should be of type string."
            )
        enum = _match_enum(field, value, path, ftype)
        return {"value": str(raw), "enum_id": enum["id"], "enum_code": enum.get("code")}
    if ftype == "legal_entity":
        return {"value": _check_object(raw, vpath, LEGAL_ENTITY_KEYS)}
    if ftype == "file":
        obj = _check_object(raw, vpath, FILE_KEYS)
        if "file_uuid" not in obj:
            raise FieldError(NOT_BLANK, f"{vpath}.file_uuid", "file_uuid is required.")
        return {"value": obj}
    if ftype == "chained_list":
        for key in ("catalog_id", "catalog_element_id"):
            if not _is_int(value.get(key)):
                raise FieldError(
                    INVALID_TYPE, f"{path}.{key}", "This value should be of type int."
                )
        return {
            "catalog_id": value["catalog_id"],
            "catalog_element_id": value["catalog_element_id"],
        }
    # Types the sandbox does not seed (items, price, category ...): keep as sent.
    return dict(value)


def _check_object(raw: Any, path: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise FieldError(INVALID_TYPE, path, "This value should be of type object.")
    for key in raw:
        if key not in keys:
            raise FieldError(
                NOT_EXPECTED, f"{path}.{key}", "This field was not expected."
            )
    return dict(raw)


def validate_values(
    fields: list[dict[str, Any]], items: Any, prefix: str = "custom_fields_values"
) -> tuple[list[tuple[dict[str, Any], list[dict[str, Any]] | None]], list[FieldError]]:
    """Check a ``custom_fields_values`` array against the entity's ``fields``.

    Returns ``(updates, errors)``: ``updates`` pairs each field with its new stored
    values (None clears the field).
    """
    updates: list[tuple[dict[str, Any], list[dict[str, Any]] | None]] = []
    errors: list[FieldError] = []
    if items is None:
        return updates, errors
    if not isinstance(items, list):
        return updates, [
            FieldError(INVALID_TYPE, prefix, "This value should be of type array.")
        ]
    for i, item in enumerate(items):
        path = f"{prefix}.{i}"
        try:
            updates.append(_validate_item(fields, item, path))
        except FieldError as exc:
            errors.append(exc)
    return updates, errors


def _validate_item(
    fields: list[dict[str, Any]], item: Any, path: str
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    if not isinstance(item, dict):
        raise FieldError(INVALID_TYPE, path, "This value should be of type object.")
    for key in item:
        if key not in ITEM_KEYS:
            raise FieldError(
                NOT_EXPECTED, f"{path}.{key}", "This field was not expected."
            )
    field_id = item.get("field_id")
    code = item.get("field_code")
    if field_id is None and code is None:
        raise FieldError(
            NOT_BLANK, f"{path}.field_id", "field_id or field_code is required."
        )
    if field_id is not None:
        field = find_field(fields, field_id=field_id) if _is_int(field_id) else None
        if field is None:
            raise FieldError.not_a_choice(f"{path}.field_id")
        if code is not None and field["code"] != code:
            raise FieldError.not_a_choice(f"{path}.field_code")
    else:
        field = find_field(fields, code=code)
        if field is None:
            raise FieldError.not_a_choice(f"{path}.field_code")
    if "values" not in item:
        raise FieldError(NOT_BLANK, f"{path}.values", "values is required.")
    values = item["values"]
    if values is None:
        return field, None
    if not isinstance(values, list):
        raise FieldError(
            INVALID_TYPE, f"{path}.values", "This value should be of type array."
        )
    if not values:
        # amoCRM's documentation advises against empty arrays without saying what
        # the API answers; rejecting them makes a client's mistake visible here.
        raise FieldError(
            NOT_BLANK,
            f"{path}.values",
            "This value should not be blank. Send null to clear.",
        )
    if field["type"] in SINGLE_VALUE_TYPES and len(values) > 1:
        raise FieldError(
            INVALID_TYPE, f"{path}.values", "This field takes a single value."
        )
    stored = [
        _check_value(field, v, f"{path}.values.{j}") for j, v in enumerate(values)
    ]
    return field, stored


def apply_values(
    current: list[dict[str, Any]] | None,
    updates: list[tuple[dict[str, Any], list[dict[str, Any]] | None]],
) -> list[dict[str, Any]] | None:
    """Merge validated updates into an entity's ``custom_fields_values``.

    Fields not mentioned keep their values; a mentioned field's values are replaced.
    The API returns ``null`` rather than an empty array when nothing is filled.
    """
    by_id = {item["field_id"]: item for item in (current or [])}
    order = [item["field_id"] for item in (current or [])]
    for field, values in updates:
        if values is None:
            by_id.pop(field["id"], None)
            continue
        if field["id"] not in by_id:
            order.append(field["id"])
        by_id[field["id"]] = {
            "field_id": field["id"],
            "field_name": field["name"],
            "field_code": field["code"],
            "field_type": field["type"],
            "values": values,
        }
    result = [by_id[fid] for fid in order if fid in by_id]
    return result or None
