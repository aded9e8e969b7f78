"""``/api/v4/sources``: the integration's sources (two-way reference, section 3).

A source labels where leads come from; a lead names one on create with
``_embedded.source = {"external_id": ..., "type": "widget"}`` and shows it with
``with=source``. ``external_id`` is unique; at most :data:`MAX_SOURCES` exist; only
one may be ``default``. Deleting one answers 204 and a deleted or unknown id reads
as 204.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from ..errors import INVALID_TYPE, NOT_BLANK, NOT_EXPECTED, ApiError, FieldError
from ..records import find_source, is_int
from ..store import Store
from .common import (
    base_url,
    hal,
    json_array,
    json_object,
    link,
    no_content,
    raise_if_errors,
    request_id,
    store,
)

bp = Blueprint("sandbox_sources", __name__, url_prefix="/api/v4")

#: Active sources per integration (the newer documentation's limit).
MAX_SOURCES = 100
#: Keys a source item may carry.
SOURCE_KEYS = {
    "id",
    "name",
    "external_id",
    "pipeline_id",
    "default",
    "origin_code",
    "services",
    "request_id",
}


def _render(source: dict[str, Any]) -> dict[str, Any]:
    out = dict(source)
    out["_links"] = link(f"/api/v4/sources/{source['id']}")
    return out


def _check(
    s: Store, item: Any, existing: dict[str, Any] | None, taken: set[str]
) -> list[FieldError]:
    if not isinstance(item, dict):
        return [FieldError(INVALID_TYPE, "", "This value should be of type object.")]
    errors = [
        FieldError(NOT_EXPECTED, k, "This field was not expected.")
        for k in item
        if k not in SOURCE_KEYS
    ]
    for key in ("name", "external_id"):
        if key in item or existing is None:
            value = item.get(key)
            if not isinstance(value, str) or not value.strip():
                errors.append(
                    FieldError(NOT_BLANK, key, "This value should not be blank.")
                )
    ext = item.get("external_id")
    if isinstance(ext, str) and ext:
        other = find_source(s, ext)
        if (other is not None and other is not existing) or ext in taken:
            errors.append(
                FieldError(
                    "Unique", "external_id", "A source with this external_id exists."
                )
            )
        taken.add(ext)
    pid = item.get("pipeline_id")
    if pid is not None and (not is_int(pid) or s.pipeline(pid) is None):
        errors.append(FieldError.not_a_choice("pipeline_id"))
    if "default" in item and not isinstance(item["default"], bool | None):
        errors.append(
            FieldError(INVALID_TYPE, "default", "This value should be of type bool.")
        )
    return errors


def _apply(
    s: Store, item: dict[str, Any], source: dict[str, Any] | None
) -> dict[str, Any]:
    if source is None:
        source = {
            "id": s.next_id("sources"),
            "name": "",
            "pipeline_id": s.main_pipeline()["id"],
            "external_id": "",
            "services": [],
            "default": False,
            "origin_code": None,
        }
    for key in ("name", "external_id", "pipeline_id", "origin_code", "services"):
        if key in item and item[key] is not None:
            source[key] = item[key]
    if item.get("default"):
        for other in s.data["sources"].values():
            other["default"] = False
        source["default"] = True
    elif "default" in item:
        source["default"] = False
    s.data["sources"][source["id"]] = source
    s.touch()
    return source


@bp.get("/sources")
def list_sources() -> Response:
    """The sources, ``filter[external_id]`` one value or several; 204 if none."""
    s = store()
    wanted = request.args.getlist("filter[external_id]") + request.args.getlist(
        "filter[external_id][]"
    )
    with s.lock:
        items = [
            _render(src)
            for src in s.data["sources"].values()
            if not wanted or src["external_id"] in wanted
        ]
    if not items:
        return no_content()
    return hal(
        {
            "_total_items": len(items),
            "_links": {"self": {"href": f"{base_url()}/api/v4/sources"}},
            "_embedded": {"sources": items},
        }
    )


@bp.get("/sources/<int:source_id>")
def get_source(source_id: int) -> Response:
    """One source; a deleted or unknown one answers 204."""
    s = store()
    with s.lock:
        source = s.data["sources"].get(source_id)
        return hal(_render(source)) if source is not None else no_content()


def _answer(items: list[tuple[dict[str, Any], str]]) -> Response:
    return hal(
        {
            "_total_items": len(items),
            "_embedded": {
                "sources": [dict(_render(src), request_id=rid) for src, rid in items]
            },
        }
    )


@bp.post("/sources")
def create_sources() -> Response:
    """Create sources from an array; ``external_id`` must be new."""
    s = store()
    items = json_array()
    with s.lock:
        rids = [request_id(item, i) for i, item in enumerate(items)]
        taken: set[str] = set()
        raise_if_errors(
            [
                (rid, _check(s, item, None, taken))
                for rid, item in zip(rids, items, strict=True)
            ]
        )
        if len(s.data["sources"]) + len(items) > MAX_SOURCES:
            raise ApiError(400, f"An integration has at most {MAX_SOURCES} sources")
        return _answer(
            [
                (_apply(s, item, None), rid)
                for item, rid in zip(items, rids, strict=True)
            ]
        )


@bp.patch("/sources")
def update_sources() -> Response:
    """Change sources; each item names its ``id``."""
    s = store()
    items = json_array()
    with s.lock:
        rids = [request_id(item, i) for i, item in enumerate(items)]
        taken: set[str] = set()
        checked = []
        targets = []
        for rid, item in zip(rids, items, strict=True):
            source = (
                s.data["sources"].get(item.get("id"))
                if isinstance(item, dict) and is_int(item.get("id"))
                else None
            )
            errors = (
                [FieldError.not_a_choice("id")]
                if source is None
                else _check(s, item, source, taken)
            )
            checked.append((rid, errors))
            targets.append(source)
        raise_if_errors(checked)
        return _answer(
            [
                (_apply(s, item, src), rid)
                for item, src, rid in zip(items, targets, rids, strict=True)
            ]
        )


@bp.patch("/sources/<int:source_id>")
def update_source(source_id: int) -> Response:
    """Change one source."""
    s = store()
    item = json_object()
    with s.lock:
        source = s.data["sources"].get(source_id)
        if source is None:
            raise ApiError(404, "Source not found")
        raise_if_errors([("0", _check(s, item, source, set()))])
        return hal(_render(_apply(s, item, source)))


@bp.delete("/sources/<int:source_id>")
def delete_source(source_id: int) -> Response:
    """Delete one source: 204 (an unknown id too)."""
    s = store()
    with s.lock:
        if s.data["sources"].pop(source_id, None) is not None:
            s.touch()
    return no_content()
