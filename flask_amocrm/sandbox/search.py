"""List parameters: ``query``, ``filter[...]``, ``order[...]``, ``page``, ``limit``.

Also the HAL collection envelope with ``_page`` and ``_links``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

from flask import request
from werkzeug.datastructures import MultiDict

from .errors import ApiError

DEFAULT_LIMIT = 50
MAX_LIMIT = 250
_BRACKETS = re.compile(r"\[([^\]]*)\]")

# How many trailing digits identify a phone. amoCRM's search finds a contact
# stored as "+7 912 345-67-89" by "89123456789" or "9123456789": it compares the
# national number, i.e. the last 10 digits for Russian numbers. We do the same
# for queries of 10 or more digits, and a digit substring match for shorter ones.
PHONE_TAIL = 10
MIN_PHONE_DIGITS = 5


_APPEND = "\x00"
# Keys under which numeric keys are ids, not list positions.
_ID_KEYED = {"custom_fields_values"}


def parse_nested(args: MultiDict[str, str], root: str) -> dict[str, Any]:
    """``filter[a][b]=1&filter[c][]=2`` → ``{"a": {"b": "1"}, "c": ["2"]}``.

    The one place every list reads ``filter[...]`` and ``order[...]``. A list may
    be sent as ``[]=…&[]=…`` or indexed, ``[0]=…&[1]=…`` (amoCRM's own PHP SDK
    sends the indexed form): both give the same list. Index groups such as
    ``filter[statuses][0][pipeline_id]=…&filter[statuses][0][status_id]=…`` give
    a list of objects. Only the level under ``custom_fields_values`` keeps
    numeric keys, since there they are field ids.
    """
    out: dict[str, Any] = {}
    appended = 0
    for key, value in args.items(multi=True):
        if not key.startswith(root + "["):
            continue
        parts = _BRACKETS.findall(key[len(root) :])
        if not parts:
            continue
        node: dict[str, Any] = out
        for i, part in enumerate(parts):
            if part == "":
                appended += 1
                part = f"{_APPEND}{appended}"
            if i == len(parts) - 1:
                node[part] = value
                break
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
    return _listify(out, None)


def _listify(node: Any, parent: str | None) -> Any:
    if not isinstance(node, dict):
        return node
    positional = bool(node) and parent not in _ID_KEYED
    positional = positional and all(k.isdigit() or k[0] == _APPEND for k in node)
    if positional:
        return [_listify(v, None) for v in node.values()]
    return {k: _listify(v, k) for k, v in node.items()}


def digits(text: str) -> str:
    """The digits of ``text``."""
    return "".join(ch for ch in text if ch.isdigit())


def phone_matches(stored: str, query: str) -> bool:
    """Whether a stored phone matches a query the way amoCRM's search does."""
    q = digits(query)
    s = digits(stored)
    if len(q) < MIN_PHONE_DIGITS or not s:
        return False
    if len(q) >= PHONE_TAIL and len(s) >= PHONE_TAIL:
        return s[-PHONE_TAIL:] == q[-PHONE_TAIL:]
    return q in s


def text_matches(entity: dict[str, Any], query: str) -> bool:
    """Full-text match over an entity's filled fields (name, field values, id).

    Notes are not searched: they belong to the entity but are not its fields.
    """
    q = query.strip().lower()
    if not q:
        return True
    if q.isdigit() and str(entity.get("id")) == q:
        return True
    for key in ("name", "first_name", "last_name"):
        value = entity.get(key)
        if isinstance(value, str) and q in value.lower():
            return True
    for item in entity.get("custom_fields_values") or []:
        for value in item.get("values") or []:
            raw = value.get("value")
            if isinstance(raw, dict):
                raw = " ".join(str(v) for v in raw.values())
            if raw is None or isinstance(raw, bool):
                continue
            text = str(raw)
            if item.get("field_code") == "PHONE" or (
                item.get("field_type") == "multitext"
                and item.get("field_code") != "EMAIL"
                and digits(text)
            ):
                if phone_matches(text, q):
                    return True
            if q in text.lower():
                return True
    return False


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return list(value.values())
    return [value]


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def match_value(actual: Any, wanted: Any) -> bool:
    """A filter condition: one value, a list (OR) or a ``{from, to}`` range."""
    if isinstance(wanted, dict) and ("from" in wanted or "to" in wanted):
        a = _num(actual)
        if a is None:
            return False
        lo, hi = _num(wanted.get("from")), _num(wanted.get("to"))
        return (lo is None or a >= lo) and (hi is None or a <= hi)
    for option in _as_list(wanted):
        if isinstance(actual, bool):
            if str(option).lower() in (("1", "true") if actual else ("0", "false")):
                return True
        elif actual is not None and str(actual).lower() == str(option).lower():
            return True
    return False


def match_custom_fields(entity: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """``filter[custom_fields_values][{field_id}]...`` conditions, all of them."""
    if not isinstance(wanted, dict):
        return True
    for field_id, condition in wanted.items():
        item = next(
            (
                i
                for i in entity.get("custom_fields_values") or []
                if str(i["field_id"]) == str(field_id)
            ),
            None,
        )
        if item is None:
            return False
        ok = False
        for value in item["values"]:
            if match_value(value.get("value"), condition) or (
                "enum_id" in value and match_value(value["enum_id"], condition)
            ):
                ok = True
        if not ok:
            return False
    return True


def apply_filters(
    items: Iterable[dict[str, Any]],
    filters: dict[str, Any],
    simple: Iterable[str],
    special: dict[str, Callable[[dict[str, Any], Any], bool]] | None = None,
) -> list[dict[str, Any]]:
    """Keep the items that pass every known filter.

    ``simple`` names keys compared directly (value, list or range). Unknown filter
    keys are ignored, as the real API ignores filters it does not support.
    """
    special = special or {}
    simple = set(simple)
    out = []
    for item in items:
        ok = True
        for key, wanted in filters.items():
            if key in special:
                ok = special[key](item, wanted)
            elif key in simple:
                ok = match_value(item.get(key), wanted)
            if not ok:
                break
        if ok:
            out.append(item)
    return out


def order_items(
    items: list[dict[str, Any]], order: dict[str, Any], allowed: Iterable[str]
) -> list[dict[str, Any]]:
    """Sort by the first allowed ``order[field]=asc|desc``; default is by id."""
    for field, direction in order.items():
        if field in allowed and isinstance(direction, str):
            reverse = direction.lower() == "desc"
            return sorted(
                items,
                key=lambda i: (i.get(field) or 0, i.get("id") or 0),
                reverse=reverse,
            )
    return items


def paging(max_limit: int = MAX_LIMIT, clamp: bool = False) -> tuple[int, int]:
    """``page`` (from 1) and ``limit`` from the query string.

    A ``limit`` above 250 is refused with 400; for custom fields (``clamp``) the
    API silently returns at most 50 per page, so there it is clamped instead.
    """
    try:
        page = int(request.args.get("page", 1))
        limit = int(request.args.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise ApiError(400, "page and limit must be integers") from None
    page = max(page, 1)
    if limit < 1:
        raise ApiError(400, "limit must be at least 1")
    if limit > max_limit:
        if clamp:
            limit = max_limit
        else:
            raise ApiError(400, f"limit must be at most {max_limit}")
    return page, limit


def page_url(page: int) -> str:
    """The current URL with ``page`` replaced."""
    args = [(k, v) for k, v in request.args.items(multi=True) if k != "page"]
    args.append(("page", str(page)))
    return f"{request.base_url}?{urlencode(args)}"


def envelope(
    name: str,
    items: list[dict[str, Any]],
    page: int,
    limit: int,
    *,
    total: bool = False,
    page_count: bool = False,
) -> dict[str, Any] | None:
    """The HAL page of ``items`` (already filtered), or None when it is empty."""
    start = (page - 1) * limit
    chunk = items[start : start + limit]
    if not chunk:
        return None
    links: dict[str, Any] = {"self": {"href": page_url(page)}}
    if start + limit < len(items):
        links["next"] = {"href": page_url(page + 1)}
    if page > 1:
        links["first"] = {"href": page_url(1)}
        links["prev"] = {"href": page_url(page - 1)}
    body: dict[str, Any] = {}
    if total:
        body["_total_items"] = len(items)
    body["_page"] = page
    if page_count:
        body["_page_count"] = (len(items) + limit - 1) // limit
    body["_links"] = links
    body["_embedded"] = {name: chunk}
    return body


def with_options() -> set[str]:
    """The comma-separated ``with=`` options of the request."""
    raw = request.args.get("with", "")
    return {part.strip() for part in raw.split(",") if part.strip()}
